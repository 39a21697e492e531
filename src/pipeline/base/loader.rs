//! The bulk-load command as a process that runs beside the copy.
//!
//! Its start — a JVM, HBase's client classes, a connection — is most of a
//! small load, so a bulk-loading base starts it with the copy and hands it
//! work when there is some: one `DIR TABLE` line on its stdin per table
//! whose HFiles are written (`DIR` a `file://` URL), stdin closed when there
//! is no more. It answers `loaded TABLE` on stdout as each table is loaded
//! and exits 0 when every table it was given is loaded. A loader that exits
//! before it was given everything, or not 0, fails the load: the tables it
//! did not report stay pending, and a `--resume` loads them again.
//!
//! The loader dies with this process (`PR_SET_PDEATHSIG`): one outliving a
//! killed migrator would race the resumed run's loader for the same files.
//! Dropped unfinished (the copy failed or was interrupted), it is killed.
//!
//! Its last lines of output (stderr, and stdout other than the reports: a
//! JVM that cannot start says why on stdout) come back with any error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Lines of its output kept for an error.
const TAIL_LINES: usize = 15;
/// How long an exited loader's output may take to drain.
const DRAIN: Duration = Duration::from_secs(5);

pub struct Loader {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    loaded: Receiver<String>,
    /// Its last lines of output.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// One message per output stream read to its end.
    drained: Receiver<()>,
    streams_open: usize,
}

/// Reads `stream` line by line: `loaded TABLE` lines (stdout only) go to
/// `reports`, every other line to `tail`; signals `done` at its end.
fn read_aside(
    stream: impl Read + Send + 'static,
    reports: Option<Sender<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    done: Sender<()>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
            if let (Some(tx), Some(t)) = (&reports, line.trim().strip_prefix("loaded ")) {
                // The receiver outlives every report it waits for.
                let _ = tx.send(t.to_string());
                continue;
            }
            let mut last = tail.lock().unwrap_or_else(|e| e.into_inner());
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(line);
        }
        let _ = done.send(());
    });
}

impl Loader {
    /// Starts `command` (a program and its arguments).
    pub fn start(command: &[String]) -> Result<Loader> {
        let (prog, args) = command
            .split_first()
            .ok_or_else(|| Error::Usage("--bulk-load-command is empty".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Usage(format!("bulk load: cannot run {prog}: {e}")))?;
        // Both streams are read aside, so a chatty loader never blocks on a
        // full pipe: the reports as they come, the rest as its last words.
        let (tx, loaded) = mpsc::channel();
        let (done, drained) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().expect("piped");
        read_aside(stdout, Some(tx), tail.clone(), done.clone());
        let stderr = child.stderr.take().expect("piped");
        read_aside(stderr, None, tail.clone(), done);
        tracing::info!("bulk loader started: {}", command.join(" "));
        Ok(Loader {
            command: command.join(" "),
            stdin: child.stdin.take(),
            child,
            loaded,
            tail,
            drained,
            streams_open: 2,
        })
    }

    /// Its last lines of output, once both streams are read to their end
    /// (waiting at most [`DRAIN`]: a process it started may hold them).
    fn last_words(&mut self) -> String {
        let deadline = Instant::now() + DRAIN;
        while self.streams_open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.drained.recv_timeout(left).is_err() {
                break;
            }
            self.streams_open -= 1;
        }
        let last = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        Vec::from(last.clone()).join("\n")
    }

    /// Hands it a table whose HFiles are all in `dir`.
    pub fn give(&mut self, dir: &Path, table: &str) -> Result<()> {
        let abs = std::fs::canonicalize(dir)
            .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))?;
        let line = format!("file://{} {table}\n", abs.display());
        let sent = match self.stdin.as_mut() {
            Some(s) => s.write_all(line.as_bytes()).and_then(|_| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        sent.map_err(|e| {
            let tail = self.stop_and_tail();
            Error::Other(format!(
                "bulk load: the load command ({}) stopped reading before it was given {table} ({e}): {tail}",
                self.command,
            ))
        })
    }

    /// Whether it has already exited: how, and its last words.
    pub fn ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                drop(self.stdin.take());
                Some(format!("{status}: {}", self.last_words()))
            }
            _ => None,
        }
    }

    /// Tables reported loaded since the last call; waits up to `wait` for the first.
    pub fn reported(&self, wait: Duration) -> Vec<String> {
        let mut out = Vec::new();
        if wait > Duration::ZERO {
            if let Ok(t) = self.loaded.recv_timeout(wait) {
                out.push(t);
            }
        }
        out.extend(self.loaded.try_iter());
        out
    }

    /// No more tables: closes its stdin and waits for it to exit. Returns
    /// the tables it reported loaded that `reported` did not return yet.
    pub fn finish(mut self) -> Result<(Vec<String>, ExitStatus, String)> {
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .map_err(|e| Error::Other(format!("bulk load: {e}")))?;
        // stdout is at its end once the process is gone (its reader drains it).
        let mut rest = Vec::new();
        while let Ok(t) = self.loaded.recv_timeout(Duration::from_secs(5)) {
            rest.push(t);
        }
        let tail = self.last_words();
        Ok((rest, status, tail))
    }

    /// Kills it (the pipe broke, so it is gone or going) and returns how it
    /// ended and its last words.
    fn stop_and_tail(&mut self) -> String {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        format!("{status}: {}", self.last_words())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Never finished: nothing it did is counted; a --resume loads again.
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("falcon-loader-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tables_are_reported_as_the_loader_loads_them() {
        let d = dir("ok");
        let mut l = Loader::start(&sh("while read d t; do echo \"loaded $t\"; done")).unwrap();
        l.give(&d, "t1").unwrap();
        // The first report arrives while the loader still runs.
        let mut got = l.reported(Duration::from_secs(10));
        assert_eq!(got, ["t1"]);
        l.give(&d, "t2").unwrap();
        let (rest, status, _) = l.finish().unwrap();
        got.extend(rest);
        assert!(status.success());
        assert_eq!(got, ["t1", "t2"]);
        let _ = std::fs::remove_dir_all(d);
    }

    /// Gives `t1` to a loader that is exiting until the write is refused;
    /// returns the error.
    fn refused(mut l: Loader, d: &Path) -> String {
        for _ in 0..100 {
            if let Err(e) = l.give(d, "t1") {
                return e.to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("a loader that exited took the table");
    }

    #[test]
    fn a_loader_that_stops_reading_or_fails_is_an_error() {
        let d = dir("bad");
        // Gone before it was given everything: the write fails, loudly.
        let err = refused(Loader::start(&sh("exit 0")).unwrap(), &d);
        // One that is gone says so before it is given anything.
        let mut l = Loader::start(&sh("exit 4")).unwrap();
        let mut gone = None;
        for _ in 0..100 {
            gone = l.ended();
            if gone.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let gone = gone.expect("an exited loader is seen as ended");
        assert!(gone.contains("exit status: 4"), "{gone}");
        // A JVM that cannot start says why on stdout: that comes back too.
        let l = Loader::start(&sh(
            "echo 'Error occurred during initialization of VM'; echo 'Multiple garbage collectors selected'; exit 1",
        ))
        .unwrap();
        let err2 = refused(l, &d);
        assert!(
            err2.contains("Multiple garbage collectors selected"),
            "{err2}"
        );
        assert!(
            err.contains("stopped reading before it was given t1"),
            "{err}"
        );
        // Fails after reading: its status and its last words come back.
        let mut l = Loader::start(&sh("read x; echo 'no region server' >&2; exit 3")).unwrap();
        l.give(&d, "t1").unwrap();
        let (rest, status, tail) = l.finish().unwrap();
        assert!(rest.is_empty());
        assert_eq!(status.code(), Some(3));
        assert!(tail.contains("no region server"), "{tail}");
        let _ = std::fs::remove_dir_all(d);
    }
}
