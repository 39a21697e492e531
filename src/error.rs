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

    #[error("Kafka {context}: {message}")]
    Kafka { context: String, message: String },

    #[error("HBase {context}: {message}")]
    Hbase { context: String, message: String },

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

    pub fn kafka(context: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Kafka {
            context: context.into(),
            message: message.to_string(),
        }
    }

    pub fn hbase(context: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Hbase {
            context: context.into(),
            message: message.to_string(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Errors worth retrying with backoff: connection resets, timeouts, a busy
    /// server. Everything else fails fast.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Mysql { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            Error::Hbase { message, .. } | Error::Kafka { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("timed out")
                    || m.contains("timeout")
                    || m.contains("connection reset")
                    || m.contains("broken pipe")
                    || m.contains("connection refused")
                    || m.contains("regiontoobusy")
                    || m.contains("notservingregion")
                    || m.contains("temporarily unavailable")
                    || m.contains("transport error")
                    || m.contains("calltimeout")
                    || m.contains("pleaseholdexception")
            }
            _ => false,
        }
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
}
