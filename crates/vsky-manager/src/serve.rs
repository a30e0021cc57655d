//! The HTTP front door: accepting connections and bounding what a client
//! may hold.
//!
//! `axum::serve` accepts every connection and waits on it forever, so 500
//! clients that send half a request line (or half their headers, or a body
//! that never ends, or a TLS handshake that never finishes) would hold 500
//! sockets and tasks for good, with no token needed. This module runs its
//! own accept loop instead and puts a bound on every wait a client controls:
//!
//! - **Connections**: at most [`ServeLimits::max_connections`] in total and
//!   [`ServeLimits::max_connections_per_source`] per source address (IPv6
//!   sources count per /64, the block one host usually holds). Excess
//!   connections are closed as soon as they are accepted, never queued,
//!   and logged at most every [`REFUSAL_LOG_EVERY`].
//! - **TLS handshake**: must finish within
//!   [`ServeLimits::tls_handshake_timeout`].
//! - **Request head** (request line and headers): must arrive within
//!   [`ServeLimits::header_timeout`] (hyper's `header_read_timeout`). The
//!   same clock closes a keep-alive connection that stays idle that long
//!   between requests.
//! - **Request body**: must arrive whole within
//!   [`ServeLimits::body_timeout`] of its head ([`DeadlineBody`]); the
//!   extractor that reads it answers 408 `request_timeout` and the
//!   connection closes. At shutdown a body still arriving is cut off at
//!   once (503 `shutting_down`).
//! - **Answers**: a client that accepts none of our bytes for
//!   `body_timeout` is dropped ([`FrontIo`]), so a slow reader cannot hold a
//!   connection either.
//!
//! Handlers may still hold a request open on purpose: the long-polls of
//! `/agent/desired-state` and `/events` (`wait_ms`, at most 60 s) are not
//! reads from the client, so none of these clocks runs meanwhile. Every
//! agent keeps one such long-poll open (plus a connection for heartbeats),
//! which is why the total cap must be well above twice the number of
//! servers (`--max-connections` says how to size it).
//!
//! hyper answers a request head it cannot parse by itself, with an empty
//! body: 400, 414 (URI too long) and 431 (head larger than
//! [`limits::HTTP_HEAD_BYTES_MAX`] or more than 100 headers). [`FrontIo`]
//! replaces those answers with the JSON error body every other error has.
//!
//! Graceful shutdown: the loop stops accepting; connections still in their
//! TLS handshake, idle between requests or still sending a request head
//! close at once; requests in flight finish (long-polls wake on shutdown,
//! a body still arriving is cut off) and their connections close after
//! the answer.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use vsky_api::types::ErrorBody;
use vsky_model::limits;
use vsky_sync::LockExt;

/// Default of `--header-timeout`.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// Default of `--body-timeout`.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default of `--tls-handshake-timeout`.
pub const TLS_HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default of `--max-connections`: about 1000 servers' agents (each keeps a
/// long-poll and a heartbeat connection) plus admins and plugins.
pub const MAX_CONNECTIONS_DEFAULT: usize = 4096;
/// Default of `--max-connections-per-source`: an agent, its host's
/// concurrent plugin calls and an admin's CLI fit well below it.
pub const MAX_CONNECTIONS_PER_SOURCE_DEFAULT: usize = 128;
/// File descriptors kept free for the store, etcd and logs when the total
/// cap is fitted to the open-file limit.
const RESERVED_FDS: u64 = 128;
/// Refused connections (and failing accepts) are logged at most this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one client may hold, and for how long (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: HEADER_TIMEOUT_DEFAULT,
            body_timeout: BODY_TIMEOUT_DEFAULT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE_DEFAULT,
        }
    }
}

/// Serves `app` on `listener` (TLS with `tls`) within `limits` until
/// `shutdown` resolves, then shuts down gracefully.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    mut limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    limits.max_connections = fit_open_file_limit(limits.max_connections);
    let gate = Arc::new(Gate::new(
        limits.max_connections,
        limits.max_connections_per_source,
    ));
    let tls = tls.map(TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Every connection task holds a receiver; `closed()` resolves when the
    // last one has ended.
    let (done_tx, done_rx) = watch::channel(());
    let mut stop = stop_rx.clone();
    let refusals = RateLimitedLog::default();
    let accept_errors = RateLimitedLog::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    if accept_errors.note() {
                        tracing::warn!(error = %e, "accepting a connection failed");
                    }
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                drop(tcp);
                if let Some(count) = refusals.note_count() {
                    tracing::warn!(
                        %peer,
                        refused = count,
                        limit = refusal.limit,
                        "refusing connections: {} (counting since the last such message); see --max-connections and --max-connections-per-source",
                        refusal.what
                    );
                }
                continue;
            }
        };
        tokio::spawn(connection(
            tcp,
            peer,
            admission,
            app.clone(),
            tls.clone(),
            limits,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Resolves once `stop` says so (never if its sender is gone without
/// saying so). It holds no borrow of the value across an await, which keeps
/// the futures that select on it `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One client connection, from the TLS handshake to its close.
#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _admission: Admission,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => http(tcp, peer, app, limits, stop).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stopped(&mut stop) => return,
            };
            http(stream, peer, app, limits, stop).await
        }
    }
}

/// Serves HTTP/1 requests on one (plain or TLS) connection until it ends,
/// or until shutdown.
async fn http<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_timeout = limits.body_timeout;
    let body_stop = stop.clone();
    // Requests between their head and the end of their answer's body.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&in_flight);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut app = app.clone();
        let guard = InFlight::new(&counter);
        let req = req.map(|body| DeadlineBody::new(body, body_timeout, body_stop.clone()));
        async move {
            let response = tower::Service::call(&mut app, req).await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                axum::body::Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        }
    });
    let io = TokioIo::new(FrontIo::new(stream, limits.body_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits::HTTP_HEAD_BYTES_MAX)
        .max_buf_size(limits::HTTP_HEAD_BYTES_MAX);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = stopped(&mut stop), if !stopping => {
                // No request in flight: the connection is idle or still
                // reading a head (hyper would wait for that head), so close
                // it now; no handler has run or will run for it. Otherwise
                // finish the answer, then close.
                if in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// Counts a request as in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, holding its request's [`InFlight`] until hyper has
/// sent it (or given up).
struct GuardedBody {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft open-file limit toward the hard one so that
/// `max_connections` sockets fit beside the store's files, and returns the
/// cap that fits.
fn fit_open_file_limit(max_connections: usize) -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return max_connections;
    }
    // RLIM_INFINITY is the largest value, so plain comparisons hold.
    if let Some(soft) = soft_limit_to_ask(max_connections, rl.rlim_cur, rl.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: soft,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl.rlim_cur = soft;
        }
    }
    let fitted = cap_within(max_connections, rl.rlim_cur);
    if fitted < max_connections {
        tracing::warn!(
            open_file_limit = rl.rlim_cur,
            max_connections,
            serving_at_most = fitted,
            "the open-file limit is too low for --max-connections; raise it (systemd: LimitNOFILE=) or lower --max-connections"
        );
    }
    fitted
}

/// The soft open-file limit to ask for (at most `hard`) when `soft` leaves
/// no room for `max_connections` beside [`RESERVED_FDS`].
fn soft_limit_to_ask(max_connections: usize, soft: u64, hard: u64) -> Option<u64> {
    let wanted = (max_connections as u64).saturating_add(RESERVED_FDS);
    (soft < wanted).then(|| wanted.min(hard))
}

/// The connection cap that fits a soft open-file limit.
fn cap_within(max_connections: usize, soft: u64) -> usize {
    let room = soft.saturating_sub(RESERVED_FDS).max(1);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

// ---- connection caps ---------------------------------------------------------

/// Counts open connections, in total and per source.
struct Gate {
    total_max: usize,
    per_source_max: usize,
    open: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug)]
struct Refusal {
    what: &'static str,
    limit: usize,
}

/// An admitted connection's place under the caps, given back on drop.
struct Admission {
    gate: Arc<Gate>,
    source: IpAddr,
}

/// The address a source is counted under: IPv6 per /64 (one host usually
/// holds a whole /64), IPv4-mapped IPv6 as IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Gate {
    fn new(total_max: usize, per_source_max: usize) -> Self {
        Gate {
            total_max,
            per_source_max,
            open: Mutex::new(GateState::default()),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let source = source_key(ip);
        let mut open = self.open.lock_unpoisoned();
        if open.total >= self.total_max {
            return Err(Refusal {
                what: "the manager holds its maximum of open connections",
                limit: self.total_max,
            });
        }
        let mine = open.by_source.entry(source).or_insert(0);
        if *mine >= self.per_source_max {
            return Err(Refusal {
                what: "a source holds its maximum of open connections",
                limit: self.per_source_max,
            });
        }
        *mine += 1;
        open.total += 1;
        Ok(Admission {
            gate: Arc::clone(self),
            source,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock_unpoisoned();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Says when a repeated condition is due to be logged again.
#[derive(Default)]
struct RateLimitedLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// Counts one occurrence; `Some(occurrences since the last message)`
    /// when a message is due.
    fn note_count(&self) -> Option<u64> {
        let mut state = self.state.lock_unpoisoned();
        state.1 += 1;
        let due = state
            .0
            .is_none_or(|last| last.elapsed() >= REFUSAL_LOG_EVERY);
        if !due {
            return None;
        }
        let count = state.1;
        *state = (Some(Instant::now()), 0);
        Some(count)
    }

    fn note(&self) -> bool {
        self.note_count().is_some()
    }
}

// ---- the request body's deadline ---------------------------------------------

/// Why a request body was cut off before its end. Extractors find it in a
/// body error's source chain: 408 `request_timeout` or 503
/// `shutting_down`.
#[derive(Debug, thiserror::Error)]
pub enum BodyCut {
    #[error("the request body did not arrive within {} s (--body-timeout)", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("the manager is shutting down")]
    ShuttingDown,
}

/// A request body that fails with [`BodyCut`] once its deadline, counted
/// from the request head, has passed, or once the manager begins to shut
/// down (so a stalled body cannot hold up the shutdown).
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, limit: Duration, mut stop: watch::Receiver<bool>) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            stopping: Box::pin(async move {
                stopped(&mut stop).await;
            }),
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyCut::TimedOut(this.limit)))));
        }
        ready!(this.stopping.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyCut::ShuttingDown))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- the connection's bytes --------------------------------------------------

/// The client connection as hyper sees it: writes that make no progress
/// for `write_stall` fail, and hyper's own bodiless error answers are
/// replaced by JSON ones.
struct FrontIo<S> {
    inner: S,
    write_stall: Duration,
    stalled_since: Option<Pin<Box<Sleep>>>,
    /// A replacement answer still to be written, and how much of it is.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S> FrontIo<S> {
    fn new(inner: S, write_stall: Duration) -> Self {
        FrontIo {
            inner,
            write_stall,
            stalled_since: None,
            replacement: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> FrontIo<S> {
    /// A write could make no progress: fail once that has lasted
    /// `write_stall`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let stall = self.write_stall;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client accepted none of the answer for {} s",
                stall.as_secs_f64()
            ),
        )))
    }

    /// Writes what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    self.stalled_since = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.stalled(cx),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrontIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrontIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        if let Some(answer) = json_answer_for(buf) {
            this.replacement = Some((answer, 0));
            // The rest is written by later calls if the socket is full.
            if let Poll::Ready(Err(e)) = this.poll_replacement(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    // hyper then hands over whole buffers, so one write holds a whole
    // automatic answer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The JSON answer that replaces `buf` when `buf` is one of hyper's
/// automatic answers to a request head it could not parse: status 400, 414
/// or 431 with an empty body. The API's own errors always carry a JSON
/// body (`http::error::ApiError`), so they never match.
fn json_answer_for(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_suffix(b"\r\n\r\n")?;
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (status, code, message) = match rest.get(..4)? {
        b"400 " => (
            "400 Bad Request",
            "invalid_argument",
            "the request is not valid HTTP/1.1".to_string(),
        ),
        b"414 " => (
            "414 URI Too Long",
            "uri_too_long",
            format!(
                "the request's URI is longer than {} bytes",
                limits::HTTP_URI_BYTES_MAX
            ),
        ),
        b"431 " => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            format!(
                "the request line and headers are larger than {} bytes or more than 100 headers; send fewer or smaller headers",
                limits::HTTP_HEAD_BYTES_MAX
            ),
        ),
        _ => return None,
    };
    let empty_body = head
        .split(|&b| b == b'\n')
        .any(|line| line.eq_ignore_ascii_case(b"content-length: 0\r"));
    if !empty_body {
        return None;
    }
    Some(json_answer(status, code, message))
}

fn json_answer(status: &str, code: &str, message: String) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        code: code.to_string(),
        message,
        request_id: None,
        leader: None,
    })
    .unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

#[cfg(test)]
mod tests;
