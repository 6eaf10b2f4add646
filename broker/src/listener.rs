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
        let hs_permit = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(r) => {
                shared.metrics.refused(r.label());
                drop(sock);
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let accepted_at = Instant::now();
            let handshake_timeout =
                Duration::from_millis(shared.config.limits.handshake_timeout_ms);
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
                    let elapsed = accepted_at.elapsed().as_secs_f64();
                    shared.metrics.handshake("failed", reason, elapsed);
                    return;
                }
            }
            let sock = DeviceSocket(Some(sock));
            let hs = tokio::time::timeout(
                handshake_timeout.saturating_sub(accepted_at.elapsed()),
                acceptor.accept(sock),
            )
            .await;
            drop(hs_permit);
            let elapsed = accepted_at.elapsed().as_secs_f64();
            let stream = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = classify(&e);
                    shared.metrics.handshake("failed", reason, elapsed);
                    tracing::debug!(%peer, error = %e, reason, "TLS handshake failed");
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
            let Some(mut session) =
                crate::session::establish(stream, id, chain, shared, accepted_at, &sessions).await
            else {
                return;
            };
            // From here on, the device's packets are handled on the sessions' runtime.
            if let Err(e) = session.device_mut().get_mut().0.move_to(&sessions) {
                tracing::warn!(%peer, error = %e, "cannot hand the session over");
                return;
            }
            sessions.spawn(async move {
                let _permit = permit;
                session.serve(shutdown).await;
            });
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

/// Serves the admin router over HTTPS until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(1024));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        // The peer's address, for the per-source failed-login limit.
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
            else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
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
