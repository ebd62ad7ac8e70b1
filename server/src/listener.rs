//! Serving a listener with bounded connections, so idle or slow clients cannot exhaust the
//! process's file descriptors or hold connections open forever.
//!
//! Every listener (the three HTTP ports and OTLP gRPC) accepts at most
//! [`ConnectionLimits::max_connections`] connections at once, and at most
//! [`ConnectionLimits::max_connections_per_ip`] from one client address (so one client cannot
//! take every slot): past that, a new connection is accepted and closed at once (refused fast, counted in
//! `meshtrace_connections_refused_total`) instead of waiting in the kernel's backlog. HTTP/1
//! connections must send a request's headers within
//! [`ConnectionLimits::header_read_timeout`] of connecting or of their previous response,
//! which also closes keep-alive connections that sit idle; HTTP/2 connections carry at most
//! [`ConnectionLimits::max_streams`] concurrent streams; request bodies must arrive within the
//! header timeout too; any connection older than [`ConnectionLimits::max_connection_age`] is
//! asked to finish and close (which also ends stalled or idle HTTP/2 connections). Accept
//! errors (a full descriptor table) back off briefly instead of spinning. At start-up the soft limit of open files is
//! raised to the hard limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use meshtrace_collector::peer::Peer;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection limits of every listener (`[listen.limits]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Open connections per listener; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections per listener from one client IP address (0: no limit of its own).
    pub max_connections_per_ip: usize,
    /// Time an HTTP/1 client has to send a request's headers (also the keep-alive idle limit).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 (and gRPC) connection.
    pub max_streams: u32,
    /// A connection this old is asked to finish its requests and close (clients reconnect);
    /// this also ends HTTP/2 connections that stall or sit idle.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            header_read_timeout: Duration::from_secs(30),
            max_streams: 256,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// Raises the soft limit of open files to the hard limit (as Go's runtime does), so the
/// connection limits, not the descriptor table, decide when connections are refused.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, soft, hard, "could not raise the open files limit");
            }
        }
    }
}

/// Accepts connections up to the limit (the rest are closed at once and counted) and secures
/// them with TLS when configured.
pub struct Gate {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    per_ip: PerIp,
    refused: Counter,
    tls: Option<TlsAcceptor>,
    /// Time a new connection has to complete its TLS handshake, or to send its first byte.
    first_byte_timeout: Duration,
}

impl Gate {
    pub fn new(
        listener: TcpListener,
        limits: &ConnectionLimits,
        tls: Option<TlsAcceptor>,
        refused: Counter,
    ) -> Gate {
        Gate {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: PerIp::new(limits.max_connections_per_ip),
            refused,
            tls,
            first_byte_timeout: limits.header_read_timeout,
        }
    }

    /// The next connection within the limit.
    pub async fn accept(&self) -> (Limited, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let ip_slot = self.per_ip.take(peer.ip());
            match (self.slots.clone().try_acquire_owned(), ip_slot) {
                (Ok(slot), Some(ip_slot)) => {
                    let _ = stream.set_nodelay(true);
                    let limited = Limited {
                        stream,
                        _slot: slot,
                        _ip_slot: ip_slot,
                    };
                    return (limited, peer);
                }
                _ => {
                    self.refused.inc();
                    drop(stream);
                }
            }
        }
    }

    /// Waits for a new connection to complete its TLS handshake, or without TLS to send its
    /// first byte (the HTTP/1-or-2 sniffing of hyper's auto builder has no timeout of its
    /// own); `None` if it does not in time.
    pub async fn secure(&self, conn: Limited) -> Option<Conn> {
        let deadline = self.first_byte_timeout;
        match &self.tls {
            Some(tls) => match tokio::time::timeout(deadline, tls.accept(conn)).await {
                Ok(Ok(stream)) => Some(Conn::Tls(Box::new(stream))),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => None,
            },
            None => {
                let mut first = [0u8; 1];
                let sent = tokio::time::timeout(deadline, conn.stream.peek(&mut first)).await;
                matches!(sent, Ok(Ok(1))).then_some(Conn::Plain(conn))
            }
        }
    }

    /// The secured connections as a stream, for tonic's `serve_with_incoming_shutdown`;
    /// handshakes run side by side, so a slow client holds up no one else.
    pub fn incoming(
        self,
        shutdown: CancellationToken,
    ) -> impl futures::Stream<Item = io::Result<Conn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let gate = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let (conn, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = gate.accept() => accepted,
                };
                let (gate, tx) = (gate.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(conn) = gate.secure(conn).await {
                        let _ = tx.send(Ok(conn)).await;
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// An accepted connection, plain or TLS.
pub enum Conn {
    Plain(Limited),
    Tls(Box<TlsStream<Limited>>),
}

impl Conn {
    /// Whether TLS negotiated HTTP/2 (`Some(true)`) or HTTP/1.1 (`Some(false)`) by ALPN.
    fn alpn_h2(&self) -> Option<bool> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => s.get_ref().1.alpn_protocol().map(|p| p == b"h2"),
        }
    }

    /// The client: its address and the URI and DNS subject alternative names of the client
    /// certificate the handshake verified (`[tls] client_ca`), for `[[auth.tokens]]`
    /// entries that name a `client_cert`.
    pub fn peer(&self) -> Peer {
        let (limited, names) = match self {
            Conn::Plain(c) => (c, Arc::from([] as [String; 0])),
            Conn::Tls(s) => (s.get_ref().0, cert_names(s.get_ref().1)),
        };
        Peer {
            addr: limited.stream.peer_addr().ok(),
            cert_names: names,
        }
    }
}

/// The names of a TLS client's verified leaf certificate (none when it sent none).
fn cert_names(tls: &rustls::ServerConnection) -> Arc<[String]> {
    let Some(leaf) = tls.peer_certificates().and_then(|chain| chain.first()) else {
        return Arc::from([]);
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert
            .valid_uri_names()
            .chain(cert.valid_dns_names())
            .map(str::to_string)
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "client certificate names unreadable");
            Arc::from([])
        }
    }
}

macro_rules! delegate_io {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Conn::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Conn::Tls($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_io!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_shutdown(cx))
    }
}

/// gRPC requests find the [`Peer`] in their extensions.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer()
    }
}

/// A connection holding one of its listener's slots until it closes.
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _ip_slot: IpSlot,
}

/// Open connections per client address of one listener.
#[derive(Clone)]
struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for one more connection from `ip`, unless it has `max` open already. IPv6
    /// clients count by their /64 network: one host usually holds a whole /64.
    fn take(&self, ip: IpAddr) -> Option<IpSlot> {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            },
            v4 => v4,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its address's count; given back when the connection closes.
struct IpSlot {
    per_ip: PerIp,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `gate` until `shutdown`, then lets open requests finish (at most 10 s).
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`, and the [`Peer`] (address
/// and verified client certificate names) in the request's extensions.
pub async fn serve_http(
    gate: Gate,
    router: Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    // A request body has as long as its headers had to arrive (a slow-loris body is cut).
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.header_read_timeout,
    ));
    let connections = tokio_util::task::TaskTracker::new();
    let gate = Arc::new(gate);
    let max_age = limits.max_connection_age;
    loop {
        let (conn, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = gate.accept() => accepted,
        };
        let router = router.clone();
        let (builder, gate, shutdown) = (builder.clone(), gate.clone(), shutdown.clone());
        connections.spawn(async move {
            let Some(conn) = gate.secure(conn).await else {
                return;
            };
            let client = Peer {
                addr: Some(peer),
                ..conn.peer()
            };
            let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(client.clone());
                let router = router.clone();
                async move {
                    let response = router.oneshot(req.map(axum::body::Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let builder = match conn.alpn_h2() {
                Some(true) => builder.http2_only(),
                Some(false) => builder.http1_only(),
                None => builder,
            };
            let service = TowerToHyperService::new(service);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
            // At shutdown or past `max_age` (which also ends HTTP/2 connections that stall or
            // idle) the connection is asked to finish its requests and close, and dropped
            // 10 s later if it has not.
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => return log_end(result),
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(max_age) => {}
            }
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(10), conn).await {
                Ok(result) => log_end(result),
                Err(_) => tracing::debug!("connection dropped 10 s after it was asked to close"),
            }
        });
    }
    drop(gate);
    connections.close();
    if tokio::time::timeout(Duration::from_secs(10), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open requests did not finish within 10 s of shutdown");
    }
}

fn log_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_per_host_and_ipv6_per_64() {
        let per_ip = PerIp::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = per_ip.take(ip("10.0.0.1")).unwrap();
        let _b = per_ip.take(ip("10.0.0.1")).unwrap();
        assert!(per_ip.take(ip("10.0.0.1")).is_none());
        assert!(per_ip.take(ip("10.0.0.2")).is_some());
        drop(a);
        assert!(per_ip.take(ip("10.0.0.1")).is_some());
        let _c = per_ip.take(ip("2001:db8::1")).unwrap();
        let _d = per_ip.take(ip("2001:db8::ffff:1")).unwrap();
        assert!(per_ip.take(ip("2001:db8::2")).is_none(), "same /64");
        assert!(per_ip.take(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
