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
    /// Admin connection to the source (needs CREATE, DROP, INSERT, UPDATE, DELETE),
    /// without a password: a password on the command line is refused (it would
    /// show in the process list). Default: FALCON_MYSQL_ADMIN_URL, else the local stack's.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// A file whose first line is the admin password; or FALCON_MYSQL_ADMIN_PASSWORD.
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
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

/// The local stack's admin account.
const DEFAULT_ADMIN_URL: &str = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306/legacy_chat";
pub const ENV_ADMIN_URL: &str = "FALCON_MYSQL_ADMIN_URL";
pub const ENV_ADMIN_PASSWORD: &str = "FALCON_MYSQL_ADMIN_PASSWORD";

/// The admin URL with its password: the URL from the flag (never with a
/// password), the environment or the default; the password from
/// FALCON_MYSQL_ADMIN_PASSWORD or the password file, if given.
fn admin_url(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> Result<String> {
    let url = match &cli.admin_url {
        Some(u) => {
            if has_password(u) {
                return Err(Error::Usage(format!(
                    "--admin-url {}: no password on the command line (it shows in the process \
                     list); give it in {ENV_ADMIN_PASSWORD} or --admin-password-file",
                    crate::error::redact_url(u)
                )));
            }
            u.clone()
        }
        None => env(ENV_ADMIN_URL)
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string()),
    };
    let password = match (env(ENV_ADMIN_PASSWORD), &cli.admin_password_file) {
        (Some(p), _) => Some(p),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Error::Usage(format!("--admin-password-file {}: {e}", f.display())))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
        (None, None) => None,
    };
    Ok(match password {
        Some(p) => with_password(&url, &p),
        None => url,
    })
}

fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |x| x.1);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `url` with its user's password set to `password` (percent-encoded).
fn with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or(""), host),
        None => ("", authority),
    };
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{scheme}://{user}:{encoded}@{host}{path}")
}

async fn run(cli: Cli) -> Result<()> {
    let url = admin_url(&cli, |k| std::env::var(k).ok())?;
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
            serde_json::to_string_pretty(&generate::generate(&url, &opts).await?)
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
            serde_json::to_string_pretty(&churn::churn(&url, &opts).await?)
        }
    };
    println!("{}", json.map_err(|e| Error::Other(e.to_string()))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["falcon-fixtures"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["churn", "--rate", "1", "--duration", "1s"]);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn a_password_on_the_command_line_is_refused_and_not_echoed() {
        let c = cli(&["--admin-url", "mysql://root:s3cret@db:3306/chat"]);
        let e = admin_url(&c, |_| None).unwrap_err().to_string();
        assert!(
            e.contains(ENV_ADMIN_PASSWORD) && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn the_password_comes_from_the_environment_or_a_file() {
        let c = cli(&["--admin-url", "mysql://root@db:3306/chat"]);
        let env = |k: &str| (k == ENV_ADMIN_PASSWORD).then(|| "p@ss:w/rd".to_string());
        assert_eq!(
            admin_url(&c, env).unwrap(),
            "mysql://root:p%40ss%3Aw%2Frd@db:3306/chat"
        );
        let f = std::env::temp_dir().join(format!("falcon-admin-pw-{}", std::process::id()));
        std::fs::write(&f, "from-file\n").unwrap();
        let c = cli(&["--admin-password-file", f.to_str().unwrap()]);
        let env = |k: &str| (k == ENV_ADMIN_URL).then(|| "mysql://adm@h/db".to_string());
        assert_eq!(admin_url(&c, env).unwrap(), "mysql://adm:from-file@h/db");
        std::fs::remove_file(&f).ok();
        // Nothing given: the URL from the environment as it is.
        let env = |k: &str| (k == ENV_ADMIN_URL).then(|| "mysql://a:b@h/db".to_string());
        assert_eq!(admin_url(&cli(&[]), env).unwrap(), "mysql://a:b@h/db");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 weeks").is_err());
    }
}
