//! Command-line front ends. The binaries in `bin/` only call [`run_migrate`]
//! and [`run_fixtures`]; parsing, dispatch and the mapping of errors to exit
//! statuses live here.

pub mod fixtures;
pub mod migrate;

use crate::error::{exit, Error};

/// Logs to stderr; `RUST_LOG` or `--log-level` choose the level.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("falcon_migrate={level},warn"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Prints an error and its causes on one line and returns its exit status.
pub fn report_error(e: &Error) -> i32 {
    let mut line = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !line.contains(&s_text) {
            line.push_str(": ");
            line.push_str(&s_text);
        }
        src = s.source();
    }
    eprintln!("error: {line}");
    e.exit_code()
}

pub fn run_migrate() -> i32 {
    limit_malloc_arenas();
    migrate::main()
}

/// glibc's malloc arenas the migrator may use (unless `MALLOC_ARENA_MAX` says
/// otherwise). glibc's default, eight per core, lets the memory of records
/// allocated on one thread (a worker encoding events) and freed on another
/// (librdkafka's broker threads) spread over many arenas whose free space no
/// other thread reuses: measured on a 6.1M-row base, Kafka only, peak RSS
/// 101 MiB with the default and 65 MiB with 2 arenas, flat from 1.2M rows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any thread of ours starts; mallopt only sets
        // a tunable of the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

pub fn run_fixtures() -> i32 {
    fixtures::main()
}

/// A command line some of whose rules clap's attributes cannot state (a flag
/// allowed in one mode only): [`execute`] runs `check` right after parsing and
/// refuses a failure like any other usage error.
pub(crate) trait Checked: clap::Parser {
    fn check(&self) -> Result<(), clap::Error> {
        Ok(())
    }
}

/// Parses and checks the command line (a usage error exits 2; `--help` and
/// `--version` exit 0), sets up logging, and runs `body` to its exit status.
pub(crate) fn execute<C, F>(log_level: impl Fn(&C) -> String, body: impl FnOnce(C) -> F) -> i32
where
    C: Checked,
    F: std::future::Future<Output = crate::Result<i32>>,
{
    let cli = match C::try_parse().and_then(|c| c.check().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(&log_level(&cli));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(body(cli)) {
        Ok(code) => code,
        Err(e) => report_error(&e),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            exit::FAILURE
        })
}
