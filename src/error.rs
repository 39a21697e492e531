//! Typed errors with the context an operator needs (which key, which host, which
//! table), and the exit code each maps to.

use std::fmt;

/// Exit statuses, documented in the README.
pub mod exit {
    /// Success: everything copied / identical.
    pub const OK: i32 = 0;
    /// `verify` found differences.
    pub const DIFFERENCES: i32 = 1;
    /// Usage or configuration error, or a server that cannot be reached at start.
    pub const USAGE: i32 = 2;
    /// The run finished but some rows went to the dead-letter file.
    pub const DEAD_LETTERED: i32 = 3;
    /// A failure during the run (a server went away, a write was refused).
    pub const FAILURE: i32 = 4;
    /// Interrupted by Ctrl-C / SIGTERM after checkpointing what was acknowledged.
    pub const INTERRUPTED: i32 = 130;
}

/// What a retry loop should do about a failure. Decided once, where the
/// error is made, from the client library's own error kinds and codes
/// (rdkafka's `RDKafkaErrorCode` and transaction flags, Thrift and I/O kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Worth retrying after a backoff: connection lost, timeout, busy server.
    Transient,
    /// The Kafka transaction must be aborted; the unit of work can then be redone.
    Abort,
    /// The producer is unusable (a fatal error): a new one must be made, and
    /// whether its last commit went through is known only from the marker.
    Rebuild,
    /// Another process took over this transactional id: stop, never fence back.
    Fenced,
    /// Retrying cannot help.
    Never,
}

/// The cause of a Kafka failure: a client error (kept as the source) or a
/// message of our own.
#[derive(Debug)]
pub struct KafkaCause {
    message: String,
    retry: Retry,
    source: Option<Box<rdkafka::error::KafkaError>>,
}

impl From<rdkafka::error::KafkaError> for KafkaCause {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaCause {
            message: e.to_string(),
            retry: classify_kafka(&e),
            source: Some(Box::new(e)),
        }
    }
}

impl From<rdkafka::types::RDKafkaErrorCode> for KafkaCause {
    fn from(code: rdkafka::types::RDKafkaErrorCode) -> Self {
        KafkaCause {
            message: code.to_string(),
            retry: classify_code(code),
            source: None,
        }
    }
}

impl From<&str> for KafkaCause {
    fn from(m: &str) -> Self {
        KafkaCause {
            message: m.to_string(),
            retry: Retry::Never,
            source: None,
        }
    }
}

impl From<String> for KafkaCause {
    fn from(message: String) -> Self {
        KafkaCause {
            message,
            retry: Retry::Never,
            source: None,
        }
    }
}

impl KafkaCause {
    /// A message of our own with an explicit retry decision.
    pub fn new(message: impl Into<String>, retry: Retry) -> Self {
        KafkaCause {
            message: message.into(),
            retry,
            source: None,
        }
    }
}

/// Transaction errors carry librdkafka's own verdict; other errors are
/// judged by their code.
fn classify_kafka(e: &rdkafka::error::KafkaError) -> Retry {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;
    if let KafkaError::Transaction(t) = e {
        return if matches!(
            t.code(),
            C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch
        ) {
            Retry::Fenced
        } else if t.is_fatal() {
            Retry::Rebuild
        } else if t.txn_requires_abort() {
            Retry::Abort
        } else if t.is_retriable() {
            Retry::Transient
        } else {
            classify_code(t.code())
        };
    }
    e.rdkafka_error_code().map_or(Retry::Never, classify_code)
}

fn classify_code(code: rdkafka::types::RDKafkaErrorCode) -> Retry {
    use rdkafka::types::RDKafkaErrorCode as C;
    match code {
        C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch => Retry::Fenced,
        C::BrokerTransportFailure
        | C::Resolve
        | C::MessageTimedOut
        | C::AllBrokersDown
        | C::OperationTimedOut
        | C::QueueFull
        | C::WaitingForCoordinator
        | C::TimedOutQueue
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::RequestTimedOut
        | C::NetworkException
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::ConcurrentTransactions
        | C::KafkaStorageError
        | C::PreferredLeaderNotAvailable
        | C::UnknownTopicOrPartition => Retry::Transient,
        _ => Retry::Never,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {path}: {message}")]
    Config { path: String, message: String },

    #[error("{0}")]
    Usage(String),

    #[error("cannot connect to {what} at {target}: {message}")]
    Unreachable {
        what: &'static str,
        target: String,
        message: String,
    },

    #[error("MySQL {context}: {source}")]
    Mysql {
        context: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("MySQL binlog {context}: {message}")]
    Binlog { context: String, message: String },

    /// The binlog stream broke; `at` is the last transaction boundary read,
    /// and `skip` the changes of the transaction there already handed on.
    #[error("MySQL binlog stream lost after {at}: {message}")]
    BinlogLost {
        at: crate::position::Position,
        skip: u64,
        message: String,
    },

    #[error("Kafka {context}: {message}")]
    Kafka {
        context: String,
        message: String,
        retry: Retry,
        #[source]
        source: Option<Box<rdkafka::error::KafkaError>>,
    },

    #[error("HBase {context}: {message}")]
    Hbase {
        context: String,
        message: String,
        retry: Retry,
    },

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("interrupted")]
    Interrupted,

    #[error("{0}")]
    Other(String),

    /// Source settings that would make a phase skip changes (see `source::preflight`).
    #[error("the source server is not set up for this run (fix each, then run again):{findings}")]
    Preflight { findings: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn mysql(context: impl Into<String>, source: sqlx::Error) -> Self {
        Error::Mysql {
            context: context.into(),
            source,
        }
    }

    /// A Kafka failure; a client error is classified and kept as the source.
    pub fn kafka(context: impl Into<String>, cause: impl Into<KafkaCause>) -> Self {
        let c = cause.into();
        Error::Kafka {
            context: context.into(),
            message: c.message,
            retry: c.retry,
            source: c.source,
        }
    }

    /// An HBase failure the caller has judged (see `sink::hbase::client` for
    /// the classification of Thrift errors).
    pub fn hbase(context: impl Into<String>, message: impl fmt::Display, retry: Retry) -> Self {
        Error::Hbase {
            context: context.into(),
            message: message.to_string(),
            retry,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// What a retry loop should do about this error.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Mysql { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    Retry::Transient
                }
                sqlx::Error::Database(d) => {
                    match d
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .map(|m| m.number())
                    {
                        // Lock wait timeout, deadlock, server shutting down,
                        // too many connections, connection killed, gone away.
                        Some(1205 | 1213 | 1053 | 1040 | 1927 | 2006 | 2013) => Retry::Transient,
                        _ => Retry::Never,
                    }
                }
                _ => Retry::Never,
            },
            Error::Kafka { retry, .. } | Error::Hbase { retry, .. } => *retry,
            Error::BinlogLost { .. } => Retry::Transient,
            Error::Io { source, .. } => io_retry(source.kind()),
            _ => Retry::Never,
        }
    }

    /// Errors worth retrying with backoff (the unit of work is redone).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.retry(),
            Retry::Transient | Retry::Abort | Retry::Rebuild
        )
    }

    /// The process exit status this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. }
            | Error::Usage(_)
            | Error::Unreachable { .. }
            | Error::Preflight { .. } => exit::USAGE,
            Error::Interrupted => exit::INTERRUPTED,
            _ => exit::FAILURE,
        }
    }
}

/// I/O kinds that a reconnect can cure.
pub fn io_retry(kind: std::io::ErrorKind) -> Retry {
    use std::io::ErrorKind as K;
    match kind {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::TimedOut
        | K::WouldBlock
        | K::Interrupted
        | K::UnexpectedEof
        | K::AddrNotAvailable => Retry::Transient,
        _ => Retry::Never,
    }
}

/// Removes the password from a `mysql://user:pass@host/db` URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}://{}@{}", &url[..scheme_end], masked, &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_masks_password_only() {
        assert_eq!(
            redact_url("mysql://falcon:s3cret@db:3306/chat"),
            "mysql://falcon:***@db:3306/chat"
        );
        assert_eq!(
            redact_url("mysql://falcon@db/chat"),
            "mysql://falcon@db/chat"
        );
        assert_eq!(redact_url("mysql://db/chat"), "mysql://db/chat");
        assert_eq!(
            redact_url("mysql://u:p@ss:w@rd@db/chat"),
            "mysql://u:***@db/chat"
        );
    }

    #[test]
    fn config_errors_exit_2_runtime_errors_exit_4() {
        assert_eq!(Error::config("falcon.toml", "bad").exit_code(), 2);
        assert_eq!(Error::kafka("produce", "boom").exit_code(), 4);
    }

    #[test]
    fn kafka_errors_are_classified_by_code() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as C;
        let e = Error::kafka("commit", KafkaError::MessageProduction(C::AllBrokersDown));
        assert_eq!(e.retry(), Retry::Transient);
        assert!(e.is_transient());
        let e = Error::kafka("commit", KafkaError::Global(C::ProducerFenced));
        assert_eq!(e.retry(), Retry::Fenced);
        assert!(!e.is_transient());
        let e = Error::kafka(
            "produce",
            KafkaError::MessageProduction(C::MessageSizeTooLarge),
        );
        assert_eq!(e.retry(), Retry::Never);
        // A message of our own is never retried unless it says so.
        assert_eq!(Error::kafka("read", "timed out").retry(), Retry::Never);
        assert_eq!(
            Error::kafka("read", KafkaCause::new("slow", Retry::Transient)).retry(),
            Retry::Transient
        );
        // The client error stays reachable as the source.
        let e = Error::kafka("begin", KafkaError::Global(C::AllBrokersDown));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn io_kinds_that_a_reconnect_cures_are_transient() {
        use std::io::ErrorKind as K;
        assert_eq!(io_retry(K::ConnectionReset), Retry::Transient);
        assert_eq!(io_retry(K::UnexpectedEof), Retry::Transient);
        assert_eq!(io_retry(K::PermissionDenied), Retry::Never);
    }
}
