//! The OpenSSL side of the tool's TLS: the one TLS stack of the binary
//! (librdkafka, sqlx and mysql_async through native-tls, and the Thrift
//! gateway connection all use the system's OpenSSL). Here: the gateway's TLS
//! connector, client identities for mysql_async, and the certificate a server
//! presents, for `check`'s report.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::{X509NameRef, X509Ref};
use serde::Serialize;

/// A TLS client connector: the CA file (or the system's CAs) and, when
/// `verify`, a checked chain and server name.
pub fn connector(ca: Option<&Path>, verify: bool) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    if let Some(ca) = ca {
        b.set_ca_file(ca)
            .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
    }
    if !verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b.build())
}

/// A PKCS#12 archive (no password) of a PEM certificate and key: what
/// native-tls takes as a client identity.
pub fn pkcs12_identity(cert: &Path, key: &Path) -> Result<Vec<u8>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let c = openssl::x509::X509::from_pem(&read(cert)?)
        .map_err(|e| format!("source.ssl_cert {}: {e}", cert.display()))?;
    let k = openssl::pkey::PKey::private_key_from_pem(&read(key)?)
        .map_err(|e| format!("source.ssl_key {}: {e}", key.display()))?;
    openssl::pkcs12::Pkcs12::builder()
        .name("falcon-migrate")
        .pkey(&k)
        .cert(&c)
        .build2("")
        .and_then(|p| p.to_der())
        .map_err(|e| format!("client identity: {e}"))
}

/// What a server's certificate says, for the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerCert {
    pub subject: String,
    pub issuer: String,
    /// `notAfter`, as OpenSSL prints it (`Nov 27 10:00:00 2027 GMT`).
    pub expires: String,
    /// Days left until `expires` (negative once expired).
    pub days_left: i32,
}

impl PeerCert {
    pub fn of(cert: &X509Ref) -> PeerCert {
        let days_left = openssl::asn1::Asn1Time::days_from_now(0)
            .ok()
            .and_then(|now| now.diff(cert.not_after()).ok())
            .map_or(0, |d| d.days);
        PeerCert {
            subject: name(cert.subject_name()),
            issuer: name(cert.issuer_name()),
            expires: cert.not_after().to_string(),
            days_left,
        }
    }
}

fn name(n: &X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let k = e.object().nid().short_name().unwrap_or("?");
            let v = e.data().to_string().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a server starts TLS on a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// TLS from the first byte (Kafka's SSL listeners, HTTPS).
    Immediate,
    /// The MySQL protocol: the server's greeting, then the client's
    /// SSLRequest packet, then TLS.
    Mysql,
}

/// The certificate the server at `addr` presents, without checking it (the
/// real connection checks it as configured; this only reports). `Ok(None)`:
/// a MySQL server that offers no TLS.
pub fn peer_certificate(addr: &str, how: StartTls) -> Result<Option<PeerCert>, String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_string())?;
    let mut s =
        TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    if how == StartTls::Mysql && !mysql_ssl_request(&mut s).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let c = connector(None, false)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let tls = c
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false)
        .connect(host, s)
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(tls.ssl().peer_certificate().map(|c| PeerCert::of(&c)))
}

/// Reads a MySQL server's greeting and, if it offers TLS, asks for it.
fn mysql_ssl_request(s: &mut TcpStream) -> std::io::Result<bool> {
    const CLIENT_PROTOCOL_41: u32 = 0x200;
    const CLIENT_SSL: u32 = 0x800;
    const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut greeting = vec![0u8; len];
    s.read_exact(&mut greeting)?;
    // protocol version, NUL-terminated version string, thread id (4),
    // scramble (8), filler (1), then the low 16 capability bits.
    let at = greeting
        .iter()
        .skip(1)
        .position(|&b| b == 0)
        .map(|p| 1 + p + 1 + 4 + 8 + 1);
    let caps = at
        .and_then(|i| greeting.get(i..i + 2))
        .map_or(0, |b| u32::from(u16::from_le_bytes([b[0], b[1]])));
    if caps & CLIENT_SSL == 0 {
        return Ok(false);
    }
    let mut req = vec![32, 0, 0, 1];
    req.extend_from_slice(
        &(CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION).to_le_bytes(),
    );
    req.extend_from_slice(&(16u32 << 20).to_le_bytes());
    req.push(45); // utf8mb4_general_ci
    req.extend_from_slice(&[0u8; 23]);
    s.write_all(&req)?;
    Ok(true)
}

/// How one server's connection is protected, as `check` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Security {
    pub encrypted: bool,
    /// Protocol and cipher, when the server says (MySQL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// What of the server's certificate the tool checks: `chain and name`,
    /// `chain`, or `nothing`.
    pub verified: &'static str,
    /// How the tool proves who it is.
    pub authenticated: String,
    /// The certificate the server presented.
    pub certificate: Option<PeerCert>,
}

impl Security {
    pub fn plain(authenticated: impl Into<String>) -> Security {
        Security {
            encrypted: false,
            cipher: None,
            verified: "nothing",
            authenticated: authenticated.into(),
            certificate: None,
        }
    }

    /// One line of words: `encrypted (…), certificate …; authenticated: …`.
    pub fn describe(&self) -> String {
        let mut w = if self.encrypted {
            let mut w = "encrypted".to_string();
            if let Some(c) = &self.cipher {
                w += &format!(" ({c})");
            }
            w += &format!(", server certificate checked: {}", self.verified);
            w
        } else {
            "NOT encrypted".to_string()
        };
        w += &format!("; authenticated: {}", self.authenticated);
        if let Some(c) = &self.certificate {
            w += &format!(
                "; certificate {} (issuer {}), expires {} ({} days)",
                c.subject, c.issuer, c.expires, c.days_left
            );
        }
        w
    }
}
