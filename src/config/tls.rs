//! TLS settings of the source connection: `ssl_mode`, CA, client certificate
//! and key, from the `[source]` table or the URL's usual parameters
//! (`ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`). Both MySQL drivers (sqlx for
//! queries, mysql_async for the binlog) are configured from this one value.

use std::path::PathBuf;

use serde::Deserialize;

/// How the source connection is secured. The names and meanings are MySQL's
/// `--ssl-mode`: `preferred` encrypts when the server offers TLS, `required`
/// refuses a plain session, `verify_ca` also checks the chain against the CA,
/// `verify_identity` also checks the server's name against its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SslMode {
    Disabled,
    #[default]
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "disabled" => SslMode::Disabled,
            "preferred" => SslMode::Preferred,
            "required" => SslMode::Required,
            "verify_ca" => SslMode::VerifyCa,
            "verify_identity" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify_ca",
            SslMode::VerifyIdentity => "verify_identity",
        }
    }

    /// Whether the server's certificate chain is checked against the CA.
    pub fn verifies_ca(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyIdentity)
    }
}

/// The source's TLS settings, resolved (paths absolute or as given in the URL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceTls {
    pub mode: SslMode,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The TLS parameters of a MySQL URL, and the URL without them (so each
/// driver gets a URL it accepts and the settings are applied in one place).
pub fn split_url_params(url: &str) -> Result<(String, UrlTls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), UrlTls::default()));
    };
    let mut tls = UrlTls::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k.replace('_', "-").to_ascii_lowercase().as_str() {
            "ssl-mode" | "sslmode" => {
                tls.mode = Some(SslMode::parse(&v).ok_or_else(|| {
                    format!(
                    "{k}={v}: expected disabled, preferred, required, verify_ca or verify_identity"
                )
                })?)
            }
            "ssl-ca" | "sslrootcert" => tls.ca = Some(PathBuf::from(v)),
            "ssl-cert" | "sslcert" => tls.cert = Some(PathBuf::from(v)),
            "ssl-key" | "sslkey" => tls.key = Some(PathBuf::from(v)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

/// TLS settings found in a URL; each one given wins over the `[source]` key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlTls {
    pub mode: Option<SslMode>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_taken_out_and_the_rest_kept() {
        let (url, tls) = split_url_params(
            "mysql://u@db:3306/chat?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Fca.pem&ssl_cert=/c.pem&ssl-key=/k.pem&charset=utf8mb4",
        )
        .unwrap();
        assert_eq!(url, "mysql://u@db:3306/chat?charset=utf8mb4");
        assert_eq!(tls.mode, Some(SslMode::VerifyIdentity));
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/k.pem")));
        let (url, tls) = split_url_params("mysql://u@db/chat?sslmode=required").unwrap();
        assert_eq!(
            (url.as_str(), tls.mode),
            ("mysql://u@db/chat", Some(SslMode::Required))
        );
    }

    #[test]
    fn unknown_ssl_mode_is_refused_with_the_choices() {
        let e = split_url_params("mysql://u@db/chat?ssl-mode=sometimes").unwrap_err();
        assert!(
            e.contains("sometimes") && e.contains("verify_identity"),
            "{e}"
        );
    }
}
