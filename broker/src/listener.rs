//! Accept loops: the MQTT mTLS listener (a permit is taken before accept, admission is
//! decided right after it, the handshake and the session set-up run on the
//! [`Background`] runtime under timeouts, the established session on the sessions'
//! runtime; accept errors back off), the admin HTTPS listener and the plain-HTTP
//! metrics listener.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::Shared;

/// The background runtime: accepting devices, TLS handshakes, session set-up, the admin
/// API and the metrics endpoint run on its own worker threads, a few nice levels below
/// the sessions' runtime. The kernel then gives the CPU to the established sessions
/// (and the embedded broker) first and to new connections what is left, so a reconnect
/// storm slows new connections down instead of every connected device.
pub struct Background {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl Background {
    /// Starts `threads` workers (0: one per core) at `nice` levels below the caller.
    pub fn new(threads: usize, nice: i32) -> io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("background")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Background {
            handle: rt.handle().clone(),
            runtime: Some(rt),
        })
    }

    /// A handle to spawn on.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Dropping a runtime blocks; from inside another runtime it must not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Raises the calling thread's nice value by `by` (capped at 19). Raising needs no
/// privilege; failing only costs the isolation, so it is logged, not fatal.
fn lower_priority(by: i32) {
    if by == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + by).min(19)) {
            tracing::warn!(error = %e, "cannot lower the priority of a background thread");
        }
    }
}

/// A device's TCP socket. It is registered with the runtime that accepted it (the
/// background runtime) and moved to the sessions' runtime once the session is
/// established ([`DeviceSocket::move_to`]), so that its readiness events are handled
/// there.
pub struct DeviceSocket(Option<TcpStream>);

impl DeviceSocket {
    /// Re-registers the socket with `runtime`.
    pub fn move_to(&mut self, runtime: &Handle) -> io::Result<()> {
        let Some(s) = self.0.take() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let std = s.into_std()?;
        let _entered = runtime.enter();
        self.0 = Some(TcpStream::from_std(std)?);
        Ok(())
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.0 {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for DeviceSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for DeviceSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Runs the MQTT accept loop until `shutdown` turns true. Run it on the
/// [`Background`] runtime: accepting, the handshake and the session set-up run there;
/// established sessions are spawned on `sessions`.
pub async fn serve_mqtt(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    permits: Arc<Semaphore>,
    sessions: Handle,
    source: crate::admission::SourceLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let admission =
        crate::admission::Admission::new(&shared.config.limits, &source, shared.pressure.clone());
    let first_byte = Duration::from_millis(source.first_byte_timeout_ms);
    let refusals = Arc::new(crate::refusal_log::RefusalLog::default());
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => {
                    backoff = Duration::from_millis(5);
                    s
                }
                Err(e) => {
                    // EMFILE and friends: the loop must survive, slow down instead.
                    tracing::warn!(error = %e, "accept failed, backing off");
                    shared.metrics.refused("accept_error");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        // Admission before any TLS work: refusing costs a close().
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(r) => {
                shared.metrics.refused(r.label());
                drop(sock);
                refusals.refused(peer.ip(), crate::refusal_log::Refused::Admission(r.label()));
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        let sessions = sessions.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let accepted_at = Instant::now();
            let handshake_timeout =
                Duration::from_millis(shared.config.limits.handshake_timeout_ms);
            // Its turn at the handshake rate and free handshake slots, within
            // limits.handshake_queue_ms: the ClientHello waits in the socket meanwhile,
            // and the wait counts against the handshake timeout.
            let admitted = tokio::select! {
                a = ticket.admitted() => a,
                _ = crate::stopped(&mut shutdown) => return,
            };
            let waited = accepted_at.elapsed();
            let hs_permit = match admitted {
                Ok(p) => p,
                Err(r) => {
                    shared.metrics.refused(r.label());
                    drop(sock);
                    refusals.refused(peer.ip(), crate::refusal_log::Refused::Admission(r.label()));
                    return;
                }
            };
            if waited >= Duration::from_millis(1) {
                shared.metrics.handshake_queued(waited.as_secs_f64());
            }
            // A socket that sends nothing gives its slot back after the first-byte
            // timeout, not after the whole handshake timeout.
            if first_byte < handshake_timeout {
                let mut one = [0u8; 1];
                let failed = match tokio::time::timeout(first_byte, sock.peek(&mut one)).await {
                    Ok(Ok(0)) => Some("eof"),
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Some("reset"),
                    Ok(Err(_)) => Some("io"),
                    Err(_) => Some("first_byte_timeout"),
                };
                if let Some(reason) = failed {
                    // The slot first, then the socket: a peer that sees the close
                    // finds its slot free.
                    drop(hs_permit);
                    drop(sock);
                    let elapsed = accepted_at.elapsed().as_secs_f64();
                    shared.metrics.handshake("failed", reason, elapsed);
                    return;
                }
            }
            // Held here (not inside the timeout) so that the socket of a timed-out
            // handshake closes after the slot is released.
            let mut accept = acceptor.accept(DeviceSocket(Some(sock)));
            let (hs, refused) = crate::tls::recording_refusal(tokio::time::timeout(
                handshake_timeout.saturating_sub(accepted_at.elapsed()),
                &mut accept,
            ))
            .await;
            drop(hs_permit);
            drop(accept);
            let elapsed = accepted_at.elapsed().as_secs_f64();
            let stream = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    // One handshake, one outcome: a refused chain is `rejected` with
                    // the verifier's reason, not also `failed`; refusals are logged
                    // (rate-limited), other failures only at debug level.
                    use crate::refusal_log::Refused;
                    match &refused {
                        Some(r) => {
                            shared.metrics.handshake("rejected", r.reason, elapsed);
                            refusals.refused(peer.ip(), Refused::Certificate(r));
                            // The tenant's own view of it (the console's refusals page).
                            if let Some(tenants) = &r.tenant {
                                shared.admin.record_refusal(
                                    tenants,
                                    admin_api::live::HandshakeRefusal {
                                        reason: r.reason.to_string(),
                                        detail: r.detail.clone(),
                                        subject: r.subject.clone(),
                                        fingerprint: r.fingerprint.clone(),
                                        source: peer.ip(),
                                    },
                                );
                            }
                        }
                        None => {
                            let reason = classify(&e);
                            shared.metrics.handshake("failed", reason, elapsed);
                            if reason == "no_client_certificate" {
                                refusals.refused(peer.ip(), Refused::NoCertificate);
                            } else {
                                tracing::debug!(%peer, error = %e, reason, "TLS handshake failed");
                            }
                        }
                    }
                    return;
                }
                Err(_) => {
                    shared.metrics.handshake("failed", "timeout", elapsed);
                    return;
                }
            };
            shared.metrics.handshake("ok", "", elapsed);
            let (_, conn) = stream.get_ref();
            let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
                return;
            };
            let id = match shared.cache.take(leaf.as_ref()) {
                Some(id) => id,
                None => {
                    // Not in the cache (evicted): verify again with the same code.
                    let chain = conn.peer_certificates().unwrap_or_default().to_vec();
                    match shared
                        .trust
                        .load()
                        .verify_device(&chain, certs::UnixTime::now())
                    {
                        Ok(id) => id,
                        Err(_) => return,
                    }
                }
            };
            let chain: Vec<certs::CertificateDer<'static>> = conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let admin = shared.admin.clone();
            let Some(mut session) = crate::session::establish(
                stream,
                id,
                chain,
                shared,
                accepted_at,
                peer.ip(),
                &sessions,
            )
            .await
            else {
                return;
            };
            // Shown as connected (the console's devices page) while the session runs.
            let online = {
                let id = session.identity();
                admin.device_online(&id.tenant, &id.common_name, peer.ip())
            };
            // From here on, the device's packets are handled on the sessions' runtime.
            if let Err(e) = session.device_mut().get_mut().0.move_to(&sessions) {
                tracing::warn!(%peer, error = %e, "cannot hand the session over");
                return;
            }
            sessions.spawn(session.serve(shutdown, (permit, online), Handle::current()));
        });
    }
}

/// A metric label for a failed handshake.
fn classify(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match inner {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(_) => "certificate_rejected",
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::PeerMisbehaved(_) => "misbehaved",
        _ => "tls_error",
    }
}

/// Limits of the admin HTTPS listener (the `[admin]` section of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminLimits {
    /// Connections open at once. When they are all taken, a new connection is accepted
    /// and closed at once (`admin_api_connections_refused_total{reason="connections"}`):
    /// accepting never stops. Default 1,024.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address or an IPv6 /64);
    /// more are closed at once (`reason="per_source"`). Default 32: a browser opens
    /// six, scripts and a console in one office a few more.
    pub max_connections_per_source: usize,
    /// TLS handshake timeout, milliseconds (`reason="tls_handshake"`). Default 5,000.
    pub tls_handshake_timeout_ms: u64,
    /// HTTP/1.1: time allowed for a request's whole head (request line and headers),
    /// from when the server starts waiting for it, milliseconds (`reason=
    /// "header_read_timeout"`). The wait for the next request on a kept-alive
    /// connection counts too, so an idle HTTP/1.1 connection closes after this long.
    /// Default 10,000.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress for this long is closed (HTTP/1.1
    /// keep-alive, HTTP/2, and a connection that never sends a request), milliseconds
    /// (`reason="idle"`). Default 60,000.
    pub idle_timeout_ms: u64,
    /// Time allowed for one request, body included, until its response starts,
    /// milliseconds; then the answer is `408 Request Timeout`. Default 60,000.
    pub request_timeout_ms: u64,
    /// HTTP/2: PING interval on a connection, milliseconds; a peer that does not answer
    /// within the same time is disconnected. Default 20,000.
    pub h2_keep_alive_interval_ms: u64,
    /// HTTP/2: streams at once on one connection. Default 32.
    pub h2_max_concurrent_streams: u32,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 1024,
            max_connections_per_source: 32,
            tls_handshake_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 60_000,
            h2_keep_alive_interval_ms: 20_000,
            h2_max_concurrent_streams: 32,
        }
    }
}

/// Requests in progress on one admin connection, and since when there has been none.
struct Activity {
    inflight: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.inflight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// When the connection turns idle for too long, if no request is in progress.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.inflight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|t| *t + idle)
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.idle_since.lock() {
            *t = tokio::time::Instant::now();
        }
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The answer to a request that ran out of time (the admin API's JSON error shape).
fn request_timeout() -> axum::response::Response {
    let mut resp = axum::response::Response::new(axum::body::Body::from(
        r#"{"error":"request_timeout","message":"The request took too long","info":null}"#,
    ));
    *resp.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// An HTTP/2 request body that, when the handler drops it unfinished (a 413, an early
/// error), goes on being read and discarded in the background, up to
/// [`DrainOnDrop::MAX_BYTES`] or [`DrainOnDrop::MAX_TIME`].
///
/// Why: a handler that answers before reading the whole body (axum's body limit answers
/// 413 after the first megabyte) drops the body, and h2 then follows the response with
/// RST_STREAM(NO_ERROR). RFC 9113 section 8.1 says clients must keep the response, but
/// curl 7.88 (nghttp2) still uploading reports "Stream error in the HTTP/2 framing
/// layer" (exit 92) and never shows the 413. While the stream is read to its end, h2
/// sends no reset: the client finishes its upload and reads the 413, as over HTTP/1.1.
struct DrainOnDrop(Option<hyper::body::Incoming>);

impl DrainOnDrop {
    /// Bytes read and discarded at most after the handler gave up the body.
    const MAX_BYTES: usize = 16 * 1024 * 1024;
    /// Time spent at most reading and discarding.
    const MAX_TIME: Duration = Duration::from_secs(10);

    async fn drain(mut body: hyper::body::Incoming) {
        use hyper::body::Body as _;
        let mut left = DrainOnDrop::MAX_BYTES;
        let read = async {
            while !body.is_end_stream() {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                match frame {
                    Some(Ok(f)) => {
                        let n = f.data_ref().map_or(0, |d| d.len());
                        match left.checked_sub(n) {
                            Some(l) => left = l,
                            None => return,
                        }
                    }
                    Some(Err(_)) | None => return,
                }
            }
        };
        let _ = tokio::time::timeout(DrainOnDrop::MAX_TIME, read).await;
    }
}

impl hyper::body::Body for DrainOnDrop {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        if let Some(body) = self.0.take() {
            if !body.is_end_stream() {
                if let Ok(rt) = Handle::try_current() {
                    rt.spawn(DrainOnDrop::drain(body));
                }
            }
        }
    }
}

/// Which HTTPS listener [`serve_admin`] runs (for its refusal counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpsListener {
    /// The admin REST API (`admin_api_connections_refused_total`).
    Admin,
    /// EST enrollment (`est_connections_refused_total`).
    Est,
}

impl HttpsListener {
    fn refused(self, metrics: &crate::metrics::Metrics, reason: &str) {
        match self {
            HttpsListener::Admin => metrics.admin_refused(reason),
            HttpsListener::Est => metrics.est_refused(reason),
        }
    }
}

/// The certificate chain the client presented in the TLS handshake (EST
/// `simplereenroll`), as a request extension; `None` without one.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>);

/// Serves the admin router over HTTPS until `shutdown`.
///
/// Accepting never waits: a connection over the global or its source's cap is closed
/// right after accept, and accept errors (EMFILE) back off. Every phase is bounded: the
/// TLS handshake, an HTTP/1.1 request head, a request, and the time without any
/// request; HTTP/2 peers are pinged.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: AdminLimits,
    metrics: crate::metrics::Metrics,
    shutdown: watch::Receiver<bool>,
) {
    serve_https(
        HttpsListener::Admin,
        listener,
        router,
        tls,
        limits,
        metrics,
        shutdown,
    )
    .await
}

/// Serves `router` over HTTPS until `shutdown`, with the limits of [`serve_admin`];
/// each request carries the peer's address (`ConnectInfo`) and the client certificate
/// chain it presented ([`PeerCertificates`]).
pub async fn serve_https(
    kind: HttpsListener,
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: AdminLimits,
    metrics: crate::metrics::Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = crate::admission::PerSource::new(limits.max_connections_per_source);
    let ms = Duration::from_millis;
    let builder = {
        let mut b =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(ms(limits.header_read_timeout_ms));
        b.http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(ms(limits.h2_keep_alive_interval_ms))
            .keep_alive_timeout(ms(limits.h2_keep_alive_interval_ms))
            .max_concurrent_streams(limits.h2_max_concurrent_streams);
        Arc::new(b)
    };
    let mut backoff = ms(5);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => {
                    backoff = ms(5);
                    accepted
                }
                Err(e) => {
                    // EMFILE and friends: the loop must survive, slow down instead.
                    tracing::warn!(error = %e, "admin accept failed, backing off");
                    kind.refused(&metrics, "accept_error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        // The newest connection is the one closed: accept itself never blocks.
        let Some(slot) = per_source.take(peer.ip()) else {
            kind.refused(&metrics, "per_source");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            kind.refused(&metrics, "connections");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        // The peer's address, for the per-source failed-login limit.
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let _held = (permit, slot);
            let tls = match tokio::time::timeout(
                ms(limits.tls_handshake_timeout_ms),
                acceptor.accept(sock),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(_)) => return,
                Err(_) => {
                    kind.refused(&metrics, "tls_handshake");
                    return;
                }
            };
            let peer_chain =
                tls.get_ref().1.peer_certificates().map(|c| {
                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                });
            let router = router.layer(axum::Extension(PeerCertificates(peer_chain)));
            let activity = Arc::new(Activity {
                inflight: Default::default(),
                idle_since: std::sync::Mutex::new(tokio::time::Instant::now()),
            });
            let inner = hyper_util::service::TowerToHyperService::new(router);
            let request_time = ms(limits.request_timeout_ms);
            let svc = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let guard = activity.begin();
                    let req = if req.version() == hyper::Version::HTTP_2 {
                        req.map(|b| axum::body::Body::new(DrainOnDrop(Some(b))))
                    } else {
                        req.map(axum::body::Body::new)
                    };
                    let call = hyper::service::Service::call(&inner, req);
                    async move {
                        let _guard = guard;
                        match tokio::time::timeout(request_time, call).await {
                            Ok(r) => r,
                            Err(_) => Ok(request_timeout()),
                        }
                    }
                })
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let conn = builder.serve_connection(io, svc);
            let mut conn = std::pin::pin!(conn);
            let idle = ms(limits.idle_timeout_ms);
            // After a graceful shutdown, how long the connection may take to finish.
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                let wake = closing
                    .or_else(|| activity.idle_deadline(idle))
                    .unwrap_or_else(|| tokio::time::Instant::now() + idle);
                tokio::select! {
                    r = conn.as_mut() => {
                        let timed_out = r.as_ref().err().and_then(|e| e.downcast_ref::<hyper::Error>()).is_some_and(|e| e.is_timeout());
                        if timed_out {
                            kind.refused(&metrics, "header_read_timeout");
                        }
                        return;
                    }
                    _ = tokio::time::sleep_until(wake) => {
                        if closing.is_some() {
                            return;
                        }
                        if activity
                            .idle_deadline(idle)
                            .is_some_and(|d| d <= tokio::time::Instant::now())
                        {
                            kind.refused(&metrics, "idle");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
        });
    }
}

/// Serves `/metrics` over plain HTTP until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: crate::metrics::Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = crate::stopped(&mut shutdown).await;
        })
        .await;
}
