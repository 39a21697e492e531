//! `falcon-fixtures`: generate the legacy dataset, and churn it live.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{exit, Error, Result};
use crate::fixtures::{churn, generate};

#[derive(Debug, Parser)]
#[command(
    name = "falcon-fixtures",
    version,
    about = "Legacy chat dataset generator and live-load driver"
)]
pub struct Cli {
    /// Admin connection to the source (needs CREATE, DROP, INSERT, UPDATE, DELETE).
    /// Read from the environment so the password stays out of the process list.
    #[arg(
        long,
        env = "FALCON_MYSQL_ADMIN_URL",
        hide_env_values = true,
        default_value = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306/legacy_chat"
    )]
    pub admin_url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// (Re)creates the legacy schema and fills it; prints a JSON report.
    Generate {
        #[arg(long)]
        messages: u64,
        /// Rooms (default: messages / 40).
        #[arg(long)]
        rooms: Option<u64>,
        /// Accounts (default: messages / 100).
        #[arg(long)]
        accounts: Option<u64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Inject legacy dirt (zero dates, invalid UTF-8, mojibake, orphans, NULLs, oversized bodies).
        #[arg(long)]
        dirty: bool,
    },
    /// Applies inserts, edits, soft and hard deletes at a steady rate; prints a JSON report.
    Churn {
        /// Changes per second.
        #[arg(long)]
        rate: f64,
        /// How long, e.g. 30s, 5m.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write one JSON line per applied change to this file.
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

impl super::Checked for Cli {}

pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match &s[i..] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                u => return Err(format!("unknown unit {u:?} (use ms, s, m or h)")),
            };
            (&s[..i], m)
        }
        None => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

pub fn main() -> i32 {
    super::execute(
        |_: &Cli| "info".to_string(),
        |cli| async move { run(cli).await.map(|()| exit::OK) },
    )
}

async fn run(cli: Cli) -> Result<()> {
    let json = match cli.command {
        Command::Generate {
            messages,
            rooms,
            accounts,
            seed,
            dirty,
        } => {
            if messages == 0 {
                return Err(Error::Usage("--messages must be at least 1".into()));
            }
            let opts = generate::GenerateOptions {
                messages,
                rooms,
                accounts,
                seed,
                dirty,
            };
            serde_json::to_string_pretty(&generate::generate(&cli.admin_url, &opts).await?)
        }
        Command::Churn {
            rate,
            duration,
            seed,
            log,
        } => {
            let opts = churn::ChurnOptions {
                rate,
                duration,
                seed,
                log,
            };
            serde_json::to_string_pretty(&churn::churn(&cli.admin_url, &opts).await?)
        }
    };
    println!("{}", json.map_err(|e| Error::Other(e.to_string()))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 weeks").is_err());
    }
}
