//! The HBase side of the write path: one Thrift connection per worker with
//! one job in flight while the next is prepared, calls of bounded size, and a
//! connection that fails mid-run dropped and made anew (a gateway that
//! refuses connections during a run is restarting: transient).

use tokio::task::JoinHandle;

use super::retry::blocking;
use crate::config::HbaseConfig;
use crate::error::{Error, Result, Retry};
use crate::sink::hbase::thrift2::{TDelete, TPut};
use crate::sink::hbase::wire::PutBuf;
use crate::sink::hbase::HbaseClient;

/// One phase's HBase writes: puts hand-encoded on the hot path, or generated
/// puts and deletes.
pub enum HbaseJob {
    Encoded(Vec<(String, PutBuf)>),
    Mutations {
        puts: Vec<(String, Vec<TPut>)>,
        deletes: Vec<(String, Vec<TDelete>)>,
    },
}

impl HbaseJob {
    fn run(self, c: &mut HbaseClient) -> Result<()> {
        match self {
            HbaseJob::Encoded(work) => {
                for (table, puts) in work {
                    c.put_encoded(&table, &puts)?;
                }
            }
            HbaseJob::Mutations { puts, deletes } => {
                // Calls of bounded size: a large batch never makes one
                // oversized Thrift message.
                for (table, v) in puts {
                    for part in split_by_size(v, |p| {
                        p.column_values
                            .iter()
                            .map(|c| c.qualifier.len() + c.value.len() + 32)
                            .sum::<usize>()
                    }) {
                        c.put_multiple(&table, part)?;
                    }
                }
                for (table, v) in deletes {
                    for part in split_by_size(v, |d| d.row.len() + 64) {
                        c.delete_multiple(&table, part)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Mutations per Thrift call, at most.
const CALL_ROWS: usize = 1000;
const CALL_BYTES: usize = 4 << 20;

/// Splits `v` into runs of at most `CALL_ROWS` items and about `CALL_BYTES`.
fn split_by_size<T>(v: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for x in v {
        let n = size(&x);
        if !cur.is_empty() && (cur.len() >= CALL_ROWS || bytes + n > CALL_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(x);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One HBase connection with one job in flight while the next is prepared.
pub struct HbaseLane {
    gateway: HbaseConfig,
    client: Option<HbaseClient>,
    pending: Option<JoinHandle<(HbaseClient, Result<()>)>>,
}

impl HbaseLane {
    pub fn new(gateway: &HbaseConfig, client: Option<HbaseClient>) -> HbaseLane {
        HbaseLane {
            gateway: gateway.clone(),
            client,
            pending: None,
        }
    }

    /// Waits for the job in flight; its error, if any.
    pub(super) async fn wait(&mut self) -> Result<()> {
        if let Some(h) = self.pending.take() {
            let (c, r) = h
                .await
                .map_err(|e| Error::Other(format!("HBase writer: {e}")))?;
            if r.is_ok() {
                self.client = Some(c);
            }
            r?;
        }
        Ok(())
    }

    pub(super) async fn submit(&mut self, job: HbaseJob) -> Result<()> {
        self.wait().await?;
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let g = self.gateway.clone();
                blocking(move || HbaseClient::connect(&g))
                    .await
                    .map_err(as_transient)?
            }
        };
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let r = job.run(&mut client);
            (client, r)
        }));
        Ok(())
    }

    /// Drops a connection whose state is unknown after an error.
    pub(super) async fn reset(&mut self) {
        if let Some(h) = self.pending.take() {
            let _ = h.await;
        }
        self.client = None;
    }
}

/// A server that refuses connections in the middle of a run is restarting:
/// worth another attempt (at start, the same error is a usage error).
pub(crate) fn as_transient(e: Error) -> Error {
    match e {
        Error::Unreachable {
            what,
            target,
            message,
        } => Error::hbase(
            format!("reconnect to {what} at {target}"),
            message,
            Retry::Transient,
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thrift_calls_are_split_by_rows_and_bytes() {
        let parts = split_by_size((0..2500).collect::<Vec<u32>>(), |_| 10);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let parts = split_by_size(vec![3usize << 20; 3], |x| *x);
        assert_eq!(parts.len(), 3);
        // One item larger than the cap still goes, alone.
        assert_eq!(split_by_size(vec![9usize << 20], |x| *x).len(), 1);
        assert!(split_by_size(Vec::<u8>::new(), |_| 1).is_empty());
    }
}
