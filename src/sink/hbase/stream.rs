//! The byte stream under the gateway's Thrift protocol: plain TCP, TLS, and
//! Thrift over HTTP(S) (the gateway's `hbase.regionserver.thrift.http`, the
//! only mode in which HBase's gateway serves TLS: `hbase.thrift.ssl.enabled`
//! applies to its HTTP server only).
//!
//! One [`GatewayStream`] is cloned into the reading and the writing half of a
//! Thrift client; the two halves are used in turn (call, then reply), so the
//! lock between them is never contended. Over HTTP, everything written until
//! a flush is one POST, and the reply's body is what the next reads return.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslStream};

use crate::tls::PeerCert;

enum Wire {
    Tcp(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Tcp(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

struct Http {
    io: BufReader<Wire>,
    host: String,
    request: Vec<u8>,
    reply: Vec<u8>,
    at: usize,
}

enum Inner {
    Raw(Wire),
    Http(Box<Http>),
}

/// A connection to the gateway; clones share it.
#[derive(Clone)]
pub struct GatewayStream {
    inner: Arc<Mutex<Inner>>,
    peer: Option<PeerCert>,
}

/// How to reach the gateway.
pub struct Dial<'a> {
    pub addr: &'a str,
    /// TLS connector, when the gateway speaks TLS.
    pub tls: Option<&'a SslConnector>,
    pub verify: bool,
    pub http: bool,
}

impl GatewayStream {
    /// Connects (5 s), 120 s per reply; does the TLS handshake when asked.
    pub fn open(d: &Dial<'_>) -> Result<GatewayStream, String> {
        let sock = d
            .addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "no address".to_string())?;
        let s =
            TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        s.set_write_timeout(Some(Duration::from_secs(120))).ok();
        let host = d.addr.rsplit_once(':').map_or(d.addr, |(h, _)| h);
        let (wire, peer) = match d.tls {
            None => (Wire::Tcp(s), None),
            Some(c) => {
                let tls = c
                    .configure()
                    .map_err(|e| e.to_string())?
                    .verify_hostname(d.verify)
                    .connect(host, s)
                    .map_err(|e| format!("TLS handshake failed: {}", handshake_cause(&e)))?;
                let peer = tls.ssl().peer_certificate().map(|c| PeerCert::of(&c));
                (Wire::Tls(Box::new(tls)), peer)
            }
        };
        let inner = if d.http {
            Inner::Http(Box::new(Http {
                io: BufReader::with_capacity(1 << 16, wire),
                host: d.addr.to_string(),
                request: Vec::new(),
                reply: Vec::new(),
                at: 0,
            }))
        } else {
            Inner::Raw(wire)
        };
        Ok(GatewayStream {
            inner: Arc::new(Mutex::new(inner)),
            peer,
        })
    }

    /// The certificate the gateway presented (TLS only).
    pub fn peer_certificate(&self) -> Option<&PeerCert> {
        self.peer.as_ref()
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("gateway connection poisoned"))
    }
}

/// The reason OpenSSL gave (e.g. `certificate verify failed`), without the
/// handshake's internal state.
fn handshake_cause<S: std::fmt::Debug>(e: &openssl::ssl::HandshakeError<S>) -> String {
    match e {
        openssl::ssl::HandshakeError::Failure(m) => {
            let verify = m.ssl().verify_result();
            if verify != openssl::x509::X509VerifyResult::OK {
                format!("certificate verify failed: {}", verify.error_string())
            } else {
                m.error().to_string()
            }
        }
        other => other.to_string(),
    }
}

impl Read for GatewayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.lock()? {
            Inner::Raw(w) => w.read(buf),
            Inner::Http(h) => {
                let n = buf.len().min(h.reply.len() - h.at);
                buf[..n].copy_from_slice(&h.reply[h.at..h.at + n]);
                h.at += n;
                Ok(n)
            }
        }
    }
}

impl Write for GatewayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.lock()? {
            Inner::Raw(w) => w.write(buf),
            Inner::Http(h) => {
                h.request.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.lock()? {
            Inner::Raw(w) => w.flush(),
            Inner::Http(h) if h.request.is_empty() => Ok(()),
            Inner::Http(h) => h.exchange(),
        }
    }
}

impl Http {
    /// POSTs the call written so far and reads the whole reply.
    fn exchange(&mut self) -> io::Result<()> {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-thrift\r\n\
             Accept: application/x-thrift\r\nUser-Agent: falcon-migrate\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.request.len()
        );
        let w = self.io.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(&self.request)?;
        w.flush()?;
        self.request.clear();
        let mut line = String::new();
        if self.io.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the gateway closed the connection",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_reply(format!("not an HTTP reply: {:?}", line.trim_end())))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.io.read_line(&mut line)?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        self.reply.clear();
        self.at = 0;
        if chunked {
            loop {
                line.clear();
                self.io.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad_reply(format!("bad chunk size {:?}", line.trim())))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if self.io.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = self.reply.len();
                self.reply.resize(start + size, 0);
                self.io.read_exact(&mut self.reply[start..])?;
                let mut crlf = [0u8; 2];
                self.io.read_exact(&mut crlf)?;
            }
        } else if let Some(n) = length {
            self.reply.resize(n, 0);
            self.io.read_exact(&mut self.reply)?;
        }
        if status != 200 {
            let body =
                String::from_utf8_lossy(&self.reply[..self.reply.len().min(200)]).into_owned();
            self.reply.clear();
            return Err(bad_reply(format!("HTTP {status} from the gateway: {body}")));
        }
        Ok(())
    }
}

fn bad_reply(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}
