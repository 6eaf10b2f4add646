//! Accept loops: the MQTT mTLS listener (a permit is taken before accept, the handshake
//! and CONNECT run in the spawned task under timeouts, accept errors back off), the
//! admin HTTPS listener and the plain-HTTP metrics listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::Shared;

/// Runs the MQTT accept loop until `shutdown` turns true.
pub async fn serve_mqtt(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let admission = crate::admission::Admission::new(&shared.config.limits);
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
        tokio::spawn(async move {
            let _permit = permit;
            let accepted_at = Instant::now();
            let hs = tokio::time::timeout(
                Duration::from_millis(shared.config.limits.handshake_timeout_ms),
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
            crate::session::run(stream, id, chain, shared, accepted_at, shutdown).await;
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
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
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
