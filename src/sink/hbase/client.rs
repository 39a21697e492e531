//! A blocking Thrift2 client for the HBase gateway. One per worker thread: the
//! generated client is synchronous, and a connection per worker keeps batches
//! of different workers independent.

use openssl::ssl::SslConnector;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TInputProtocol, TOutputProtocol,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport,
};

use super::stream::{Dial, GatewayStream};
use super::thrift2::{
    TColumnFamilyDescriptor, TDelete, TGet, THBaseServiceSyncClient, TPut, TResult, TScan,
    TTHBaseServiceSyncClient, TTableDescriptor, TTableName,
};
use crate::config::HbaseConfig;
use crate::error::{Error, Result, Retry};
use crate::tls::PeerCert;

type Client =
    THBaseServiceSyncClient<Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>>;

pub struct HbaseClient {
    client: Client,
    addr: String,
    framed: bool,
    http: bool,
    verify: bool,
    tls: Option<SslConnector>,
    peer: Option<PeerCert>,
    /// Connection for the hand-encoded `putMultiple` (see `wire`).
    raw: Option<super::wire::RawConn>,
}

/// Splits `ns:table` into its Thrift name.
pub fn table_name(name: &str) -> TTableName {
    match name.split_once(':') {
        Some((ns, q)) => TTableName {
            ns: Some(ns.as_bytes().to_vec()),
            qualifier: q.as_bytes().to_vec(),
        },
        None => TTableName {
            ns: None,
            qualifier: name.as_bytes().to_vec(),
        },
    }
}

fn err(context: impl Into<String>) -> impl FnOnce(thrift::Error) -> Error {
    let context = context.into();
    move |e| {
        let (message, retry) = describe(&e);
        Error::hbase(context, message, retry)
    }
}

/// Thrift errors from HBase carry the Java exception text in `TIOError.message`;
/// show it rather than a debug dump, and judge it by its kind.
fn describe(e: &thrift::Error) -> (String, Retry) {
    match e {
        thrift::Error::User(inner) => {
            if let Some(io) = inner.downcast_ref::<super::thrift2::TIOError>() {
                let m = io.message.clone().unwrap_or_else(|| format!("{io:?}"));
                let r = remote_retry(&m, io.can_retry);
                return (m, r);
            }
            if let Some(ia) = inner.downcast_ref::<super::thrift2::TIllegalArgument>() {
                let m = ia.message.clone().unwrap_or_else(|| format!("{ia:?}"));
                return (m, Retry::Never);
            }
            (inner.to_string(), Retry::Never)
        }
        thrift::Error::Application(a) => (format!("{} ({:?})", a.message, a.kind), Retry::Never),
        thrift::Error::Transport(t) => {
            use thrift::TransportErrorKind as K;
            let r = match t.kind {
                K::NegativeSize | K::SizeLimit => Retry::Never,
                _ => Retry::Transient,
            };
            (e.to_string(), r)
        }
        other => (other.to_string(), Retry::Never),
    }
}

/// HBase exceptions a later attempt can get past: the gateway says so in
/// `TIOError.canRetry` when it knows (it is false for `DoNotRetryIOException`
/// and its subclasses); otherwise the Java class that the message names.
pub(crate) fn remote_retry(message: &str, can_retry: Option<bool>) -> Retry {
    if let Some(c) = can_retry {
        return if c { Retry::Transient } else { Retry::Never };
    }
    const RETRYABLE: &[&str] = &[
        "RegionTooBusyException",
        "NotServingRegionException",
        "RegionOpeningException",
        "RegionMovedException",
        "ServerNotRunningYetException",
        "PleaseHoldException",
        "CallTimeoutException",
        "CallQueueTooBigException",
        "RetriesExhaustedException",
        "ConnectionClosingException",
        "SocketTimeoutException",
        "ConnectException",
    ];
    if RETRYABLE.iter().any(|c| message.contains(c)) {
        Retry::Transient
    } else {
        Retry::Never
    }
}

fn unreachable(addr: &str, message: String) -> Error {
    Error::Unreachable {
        what: "HBase Thrift2 gateway",
        target: addr.to_string(),
        message,
    }
}

/// The TLS connector of the gateway's settings: a bad CA file is a config
/// error (exit 2), found before any connection.
fn tls_connector(cfg: &HbaseConfig) -> Result<Option<SslConnector>> {
    if !cfg.tls {
        return Ok(None);
    }
    crate::tls::connector(cfg.tls_ca.as_deref(), cfg.tls_verify)
        .map(Some)
        .map_err(|m| Error::config("hbase.tls_ca", m))
}

fn new_get(row: Vec<u8>) -> TGet {
    TGet::new(
        row,
        None,
        None,
        None,
        Some(1),
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )
}

impl HbaseClient {
    /// Connects to the gateway of `cfg` (TLS and HTTP as configured) and
    /// proves it answers: the one way the tool reaches HBase.
    pub fn connect(cfg: &HbaseConfig) -> Result<HbaseClient> {
        let tls = tls_connector(cfg)?;
        let (addr, framed) = (cfg.thrift.as_str(), cfg.framed);
        let unreachable = |message: String| unreachable(addr, message);
        let stream = GatewayStream::open(&Dial {
            addr,
            tls: tls.as_ref(),
            verify: cfg.tls_verify,
            http: cfg.http,
        })
        .map_err(unreachable)?;
        let peer = stream.peer_certificate().cloned();
        let read = stream.clone();
        let (i, o): (
            Box<dyn TInputProtocol + Send>,
            Box<dyn TOutputProtocol + Send>,
        ) = if framed {
            (
                Box::new(TBinaryInputProtocol::new(
                    TFramedReadTransport::new(read),
                    true,
                )),
                Box::new(TBinaryOutputProtocol::new(
                    TFramedWriteTransport::new(stream),
                    true,
                )),
            )
        } else if cfg.http {
            // The stream buffers the whole call itself and POSTs it on the
            // protocol's flush; a buffered transport would also flush when its
            // buffer fills, cutting a large call into two requests.
            (
                Box::new(TBinaryInputProtocol::new(read, true)),
                Box::new(TBinaryOutputProtocol::new(stream, true)),
            )
        } else {
            (
                Box::new(TBinaryInputProtocol::new(
                    TBufferedReadTransport::with_capacity(1 << 16, read),
                    true,
                )),
                Box::new(TBinaryOutputProtocol::new(
                    TBufferedWriteTransport::with_capacity(1 << 16, stream),
                    true,
                )),
            )
        };
        let mut c = HbaseClient {
            client: THBaseServiceSyncClient::new(i, o),
            addr: addr.to_string(),
            framed,
            http: cfg.http,
            verify: cfg.tls_verify,
            tls,
            peer,
            raw: None,
        };
        // A real request proves the gateway speaks our transport and reaches HBase.
        c.client
            .table_exists(table_name("hbase:meta"))
            .map_err(|e| {
                unreachable(format!(
                    "{}: no Thrift2 reply (is the gateway Thrift2 with framed={framed}, http={}, tls={}? \
                     a TLS gateway drops a plain client)",
                    describe(&e).0,
                    cfg.http,
                    cfg.tls
                ))
            })?;
        Ok(c)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How this connection is protected, for `check`'s report.
    pub fn security(&self) -> crate::tls::Security {
        // The gateway's Thrift and HTTP modes take no client credentials
        // unless it runs with Kerberos (not supported here: see the README).
        let auth = "none (the gateway asks for no credentials)";
        if self.tls.is_none() {
            return crate::tls::Security::plain(auth);
        }
        crate::tls::Security {
            encrypted: true,
            cipher: None,
            verified: if self.verify {
                "chain and name"
            } else {
                "nothing"
            },
            authenticated: auth.into(),
            certificate: self.peer.clone(),
        }
    }

    pub fn table_exists(&mut self, table: &str) -> Result<bool> {
        self.client
            .table_exists(table_name(table))
            .map_err(err(format!("tableExists {table}")))
    }

    /// Creates the namespace of `table` (`ns:name`), unless it has none or it exists.
    fn ensure_namespace(&mut self, table: &str) -> Result<()> {
        if let Some(ns) = table_name(table).ns {
            let ns = String::from_utf8_lossy(&ns).to_string();
            if self.client.get_namespace_descriptor(ns.clone()).is_err() {
                match self
                    .client
                    .create_namespace(super::thrift2::TNamespaceDescriptor::new(ns.clone(), None))
                {
                    Ok(()) => {}
                    // Another shard created it first.
                    Err(e) if describe(&e).0.contains("NamespaceExistException") => {}
                    Err(e) => return Err(err(format!("createNamespace {ns}"))(e)),
                }
            }
        }
        Ok(())
    }

    /// Creates `table` with one column family, pre-split at `splits`, unless it exists.
    /// Returns whether it was created.
    pub fn ensure_table(
        &mut self,
        table: &str,
        family: &str,
        splits: Vec<Vec<u8>>,
    ) -> Result<bool> {
        if self.table_exists(table)? {
            return Ok(false);
        }
        self.ensure_namespace(table)?;
        // Versions are the source's versions; one is all the read model needs,
        // the timestamps keep an older write from winning.
        let cf = TColumnFamilyDescriptor::new(
            family.as_bytes().to_vec(),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(1),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        );
        let desc = TTableDescriptor::new(table_name(table), vec![cf], None, None);
        match self.client.create_table(desc, splits) {
            Ok(()) => Ok(true),
            // Another shard created it first.
            Err(e) if describe(&e).0.contains("TableExistsException") => Ok(false),
            Err(e) => Err(err(format!("createTable {table}"))(e)),
        }
    }

    pub fn drop_table(&mut self, table: &str) -> Result<()> {
        if !self.table_exists(table)? {
            return Ok(());
        }
        let _ = self.client.disable_table(table_name(table));
        self.client
            .delete_table(table_name(table))
            .map_err(err(format!("deleteTable {table}")))
    }

    pub fn put_multiple(&mut self, table: &str, puts: Vec<TPut>) -> Result<()> {
        if puts.is_empty() {
            return Ok(());
        }
        self.client
            .put_multiple(table.as_bytes().to_vec(), puts)
            .map_err(err(format!("putMultiple {table}")))
    }

    /// The hand-encoded connection (see `wire`), opened on first use.
    fn raw(&mut self) -> Result<&mut super::wire::RawConn> {
        if self.raw.is_none() {
            let s = GatewayStream::open(&Dial {
                addr: &self.addr,
                tls: self.tls.as_ref(),
                verify: self.verify,
                http: self.http,
            })
            .map_err(|m| unreachable(&self.addr, m))?;
            self.raw = Some(super::wire::RawConn::new(s, self.framed));
        }
        Ok(self.raw.as_mut().expect("connected above"))
    }

    /// Writes rows encoded by [`super::wire::PutBuf`] in one call.
    pub fn put_encoded(&mut self, table: &str, puts: &super::wire::PutBuf) -> Result<()> {
        if puts.is_empty() {
            return Ok(());
        }
        let r = self.raw()?.put_multiple(table, puts);
        if r.is_err() {
            // The stream may be mid-message: never reuse it.
            self.raw = None;
        }
        r
    }

    pub fn delete_multiple(&mut self, table: &str, deletes: Vec<TDelete>) -> Result<()> {
        if deletes.is_empty() {
            return Ok(());
        }
        let left = self
            .client
            .delete_multiple(table.as_bytes().to_vec(), deletes)
            .map_err(err(format!("deleteMultiple {table}")))?;
        if !left.is_empty() {
            return Err(Error::hbase(
                format!("deleteMultiple {table}"),
                format!("{} deletes not applied", left.len()),
                Retry::Transient,
            ));
        }
        Ok(())
    }

    /// The row's cells, or None when the row does not exist.
    pub fn get(&mut self, table: &str, row: &[u8]) -> Result<Option<TResult>> {
        let r = self
            .client
            .get(table.as_bytes().to_vec(), new_get(row.to_vec()))
            .map_err(err(format!("get {table}")))?;
        Ok((!r.column_values.is_empty()).then_some(r))
    }

    pub fn get_multiple(&mut self, table: &str, rows: Vec<Vec<u8>>) -> Result<Vec<TResult>> {
        let gets = rows.into_iter().map(new_get).collect();
        self.client
            .get_multiple(table.as_bytes().to_vec(), gets)
            .map_err(err(format!("getMultiple {table}")))
    }

    /// Scans `[start, stop)` calling `f` for each row, `batch` rows per
    /// round trip (also the scanner's caching), decoded without the
    /// generated code (see [`super::wire::ScanRows`]).
    pub fn scan_rows(
        &mut self,
        table: &str,
        start: Option<Vec<u8>>,
        stop: Option<Vec<u8>>,
        batch: i32,
        mut f: impl FnMut(super::wire::ScanRow<'_>) -> Result<()>,
    ) -> Result<u64> {
        // Every optional field unset: the generated Default fills some with
        // empty values (an empty filter string) that the gateway rejects.
        let scan = TScan::new(
            start,
            stop,
            None,
            Some(batch),
            Some(1),
            None,
            None,
            None,
            None,
            None,
            None,
            Some(false),
            None,
            None,
            None,
            None,
            None,
            None,
        );
        let mut encoded = Vec::new();
        {
            use thrift::protocol::TSerializable;
            let mut p = TBinaryOutputProtocol::new(&mut encoded, true);
            scan.write_to_out_protocol(&mut p)
                .map_err(err(format!("openScanner {table}")))?;
        }
        let id = match self.raw()?.open_scanner(table, &encoded) {
            Ok(id) => id,
            Err(e) => {
                self.raw = None;
                return Err(e);
            }
        };
        let mut rows = super::wire::ScanRows::default();
        let mut n = 0u64;
        loop {
            if let Err(e) = self.raw()?.scanner_rows(table, id, batch, &mut rows) {
                // The stream may be mid-message (the scanner dies with it).
                self.raw = None;
                return Err(e);
            }
            if rows.is_empty() {
                break;
            }
            for r in rows.iter() {
                n += 1;
                if let Err(e) = f(r) {
                    self.close_scanner(id);
                    return Err(e);
                }
            }
        }
        self.close_scanner(id);
        Ok(n)
    }

    /// Frees a scanner on the gateway (best effort: it expires anyway).
    fn close_scanner(&mut self, id: i32) {
        if let Some(raw) = self.raw.as_mut() {
            if raw.close_scanner(id).is_err() {
                self.raw = None;
            }
        }
    }

    /// [`HbaseClient::scan_rows`] with each row as the generated `TResult`.
    pub fn scan(
        &mut self,
        table: &str,
        start: Option<Vec<u8>>,
        stop: Option<Vec<u8>>,
        batch: i32,
        mut f: impl FnMut(TResult) -> Result<()>,
    ) -> Result<u64> {
        self.scan_rows(table, start, stop, batch, |r| f(r.to_result()))
    }
}
