//! The MQTT front-end: devices authenticate with an X.509 client certificate only.
//!
//! [`start`] composes everything: the admin API and its SQLite store, the live
//! `TrustStore`, the mTLS MQTT listener, the backend (embedded rumqttd or an external
//! broker), the admin HTTPS listener and the Prometheus endpoint. See
//! `docs/DESIGN.md` for the life of a device connection.
//!
//! - [`config`]: typed configuration and its defaults.
//! - [`listener`]: accept loops.
//! - [`admission`]: handshake rate and concurrency limits.
//! - [`tls`]: the client-certificate verifier and the hot-swappable server certificate.
//! - [`session`]: one device session.
//! - [`mqtt`]: framing and topic mounting.
//! - [`backend`]: embedded rumqttd or an external broker.
//! - [`embedded`]: the embedded rumqttd and what the front-end adds to it.
//! - [`metrics`]: Prometheus metrics.
//! - [`data_dir`]: one broker per data directory.
//! - [`health`]: is the broker ready for clients?
//! - [`refusal_log`]: the rate-limited log of refused connections.

#![forbid(unsafe_code)]

pub mod admission;
pub mod backend;
pub mod config;
pub mod data_dir;
pub mod embedded;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod mqtt;
pub mod refusal_log;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::TrustStore;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use config::Config;

/// A read handle on the live trust store: the latest snapshot the admin API published,
/// with no delay between the publication and the next handshake.
#[derive(Clone)]
pub struct TrustView(watch::Receiver<Arc<TrustStore>>);

impl TrustView {
    /// The current snapshot.
    pub fn load(&self) -> Arc<TrustStore> {
        self.0.borrow().clone()
    }

    /// The current snapshot (alias of [`TrustView::load`]).
    pub fn load_full(&self) -> Arc<TrustStore> {
        self.load()
    }
}

/// State shared by every session (cheap to reach through an `Arc`).
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The live trust store: always the snapshot the admin API published last.
    pub trust: TrustView,
    /// Change notifications of the trust store, for live sessions.
    pub trust_rx: watch::Receiver<Arc<TrustStore>>,
    /// The admin API handle (store, device registry).
    pub admin: admin_api::Admin,
    /// The backend.
    pub backend: backend::BackendPool,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Identities verified during handshakes.
    pub cache: Arc<tls::IdentityCache>,
    /// Per-tenant session and publish-rate quotas.
    pub quotas: Arc<admission::TenantQuotas>,
    /// Feedback from the sessions to handshake admission.
    pub pressure: Arc<admission::Pressure>,
    /// CRL distribution point fetcher (tenants with online CRL checking), with cache.
    pub crl_fetcher: certs::revocation::CrlFetcher,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened.
    #[error("admin store: {0}")]
    Admin(String),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The background runtime's threads could not be started.
    #[error("cannot start the background threads: {0}")]
    Runtime(std::io::Error),
    /// The backend could not be started.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// Another process uses the data directory.
    #[error(transparent)]
    DataDir(#[from] data_dir::LockError),
}

/// A running broker.
pub struct Broker {
    /// Bound MQTT address (useful with port 0).
    pub mqtt_addr: SocketAddr,
    /// Bound admin HTTPS address.
    pub admin_addr: SocketAddr,
    /// Bound metrics address.
    pub metrics_addr: SocketAddr,
    /// The admin handle.
    pub admin: admin_api::Admin,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The server certificate resolver.
    pub resolver: Arc<tls::ServerCertResolver>,
    shutdown_tx: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Dropped last: stops the handshake threads.
    _background: listener::Background,
    _data_dir: data_dir::DataDirLock,
}

impl Broker {
    /// The PEM of the server certificate chain currently served (clients' CA file when
    /// self-signed).
    pub fn server_chain_pem(&self) -> String {
        self.resolver
            .chain()
            .iter()
            .map(|c| certs::pem::to_pem("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// Graceful stop: stop accepting, tell sessions to close (MQTT 5 gets DISCONNECT
    /// 0x8B), wait up to the grace period for them to drain, then stop the rest.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let max = self.shared.config.limits.max_connections;
        let grace = Duration::from_millis(self.shared.config.limits.shutdown_grace_ms);
        let drained = async {
            while self.permits.available_permits() < max {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("grace period over, closing the remaining sessions");
        }
        for t in self.tasks {
            t.abort();
        }
        if let Err(e) = self.admin.flush_device_seen().await {
            tracing::warn!(error = %e, "last-seen times not saved");
        }
        if let Some(durable) = self.shared.backend.durable() {
            // The sessions that just ended hand their places to keepers, which take what
            // the router still had for them: let them, then commit everything.
            tokio::time::sleep(Duration::from_millis(200)).await;
            durable.state.barrier().await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Starts everything and returns once all listeners are bound.
pub async fn start(config: Config, admin_password: Option<String>) -> Result<Broker, StartError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::Admin(format!("{}: {e}", config.data_dir.display())))?;
    let data_dir_lock = data_dir::DataDirLock::acquire(&config.data_dir)?;
    // Listen first: a start that cannot listen (port in use) has changed nothing in the
    // data directory yet (admin password, server certificate).
    let mqtt_l = TcpListener::bind(config.mqtt_listen)
        .await
        .map_err(|e| StartError::Bind(config.mqtt_listen, e))?;
    let admin_l = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| StartError::Bind(config.admin_listen, e))?;
    let metrics_l = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| StartError::Bind(config.metrics_listen, e))?;
    let provider = tls::provider();
    let metrics = metrics::Metrics::new();
    let admin = admin_api::Admin::open(admin_api::AdminConfig {
        admin_password,
        crl_egress: config.egress.policy()?,
        // The passphrase of a server key imported with a new passphrase (stored
        // encrypted); a secret, so from the environment only, never the config file.
        server_key_passphrase: std::env::var("BROKER_SERVER_KEY_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty()),
        require_proof_of_possession: config.trust.require_proof_of_possession,
        password_check_threads: config.limits.password_check_threads,
        password_check_queue: config.limits.password_check_queue,
        login_cache_ttl: Duration::from_secs(config.limits.login_cache_ttl_s),
        store_url: config.store.url.clone(),
        ..admin_api::AdminConfig::new(config.data_dir.clone())
    })
    .await
    .map_err(|e| StartError::Admin(e.to_string()))?;

    // Server certificate: the stored one, or a generated self-signed one.
    let mut cert_rx = admin.server_certificate();
    let current = cert_rx.borrow_and_update().clone();
    let current = match current {
        Some(c) => c,
        None => {
            let host = hostname();
            tracing::warn!(
                "no server certificate: generating a self-signed one for {host}; self-signed certificates are for tests only, import a real one with `broker import-certificate`"
            );
            let issued = certs::issue::server(
                &certs::issue::Subject::cn(&host),
                &[
                    host.clone(),
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "::1".into(),
                ],
                certs::issue::Validity::days(825),
                certs::issue::KeyType::P256,
                None,
                &[],
            )
            .map_err(|e| StartError::Tls(e.to_string()))?;
            admin
                .import_server_certificate(admin_api::ImportRequest {
                    name: "self-signed".into(),
                    crt: issued.cert_pem().into_bytes(),
                    key: issued.key_pem().into_bytes(),
                    chain: None,
                    passphrase: None,
                    validation: false,
                    crl_check: false,
                    new_passphrase: None,
                })
                .await
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let c = cert_rx.borrow_and_update().clone();
            c.ok_or_else(|| StartError::Tls("server certificate not stored".into()))?
        }
    };
    let ck = tls::certified_key(current.chain.clone(), &current.key, &provider)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let resolver = Arc::new(tls::ServerCertResolver::new(ck));
    write_server_chain(&config.data_dir, &current.chain);

    let trust_rx = admin.trust_store();
    metrics.set_anchors(trust_rx.borrow().anchor_count());
    let trust = TrustView(trust_rx.clone());
    let cache = Arc::new(tls::IdentityCache::default());
    let verifier = Arc::new(tls::DeviceVerifier::new(
        trust.clone(),
        provider.clone(),
        cache.clone(),
        metrics.clone(),
    ));
    let mqtt_tls = tls::mqtt_server_config(provider.clone(), verifier, resolver.clone())
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let admin_tls = tls::admin_server_config(provider.clone(), resolver.clone())
        .map_err(|e| StartError::Tls(e.to_string()))?;

    let backend = backend::BackendPool::start(&config).await?;
    for c in backend
        .durable()
        .map(|d| d.collectors())
        .unwrap_or_default()
    {
        metrics.register(c);
    }

    let local = |l: &TcpListener, a: SocketAddr| l.local_addr().unwrap_or(a);
    let mqtt_addr = local(&mqtt_l, config.mqtt_listen);
    let admin_addr = local(&admin_l, config.admin_listen);
    let metrics_addr = local(&metrics_l, config.metrics_listen);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let shared = Arc::new(Shared {
        config: config.clone(),
        trust: trust.clone(),
        trust_rx: trust_rx.clone(),
        admin: admin.clone(),
        backend,
        metrics: metrics.clone(),
        cache,
        quotas: Arc::new(admission::TenantQuotas::default()),
        pressure: Arc::new(admission::Pressure::default()),
        crl_fetcher: certs::revocation::CrlFetcher::with_policy(
            Duration::from_secs(5),
            Duration::from_secs(300),
            config.egress.policy()?,
        ),
    });

    let mut tasks = Vec::new();
    // Trust store changes: the verifier reads the channel directly (a change applies
    // to the very next handshake); here only the anchor gauge follows.
    {
        let mut rx = trust_rx.clone();
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let n = rx.borrow_and_update().anchor_count();
                metrics.set_anchors(n);
            }
        }));
    }
    // Server certificate changes: new handshakes use the new certificate.
    {
        let resolver = resolver.clone();
        let provider = provider.clone();
        let dir = config.data_dir.clone();
        tasks.push(tokio::spawn(async move {
            while cert_rx.changed().await.is_ok() {
                let Some(c) = cert_rx.borrow_and_update().clone() else {
                    continue;
                };
                match tls::certified_key(c.chain.clone(), &c.key, &provider) {
                    Ok(ck) => {
                        resolver.set(ck);
                        write_server_chain(&dir, &c.chain);
                        tracing::info!("server certificate switched");
                    }
                    Err(e) => tracing::error!(error = %e, "new server certificate unusable"),
                }
            }
        }));
    }
    // Certificates imported by `broker import-certificate` from another process land in
    // the shared store: poll it and switch when the stored leaf differs from the served one.
    {
        let admin = admin.clone();
        let resolver = resolver.clone();
        let provider = provider.clone();
        let dir = config.data_dir.clone();
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::stopped(&mut stop) => return,
                }
                let rec = match admin.store().server_certificate().await {
                    Ok(Some(rec)) => rec,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read the server certificate");
                        continue;
                    }
                };
                let served = resolver.chain();
                if served.first().map(|c| c.as_ref()) == rec.chain_der.first().map(|c| c.as_slice()) {
                    continue;
                }
                let served = match admin.served_certificate(&rec) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "stored server certificate unusable");
                        continue;
                    }
                };
                let chain = served.chain.clone();
                match tls::certified_key(chain.clone(), &served.key, &provider) {
                    Ok(ck) => {
                        resolver.set(ck);
                        write_server_chain(&dir, &chain);
                        tracing::info!(name = %rec.name, "server certificate switched (imported by another process)");
                    }
                    Err(e) => tracing::error!(error = %e, "stored server certificate unusable"),
                }
            }
        }));
    }
    // Several nodes on one database: maxDevices counts the other nodes' sessions too,
    // as they reported them at most SESSION_EXCHANGE ago (see the README); the store's
    // reachability and last sync are published as metrics.
    if config.store.url.is_some() {
        let node = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let (admin, quotas, metrics) = (admin.clone(), shared.quotas.clone(), metrics.clone());
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SESSION_EXCHANGE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::stopped(&mut stop) => return,
                }
                if let Some((reachable, synced)) = admin.store().sync_state() {
                    metrics.set_store_sync(reachable, synced);
                }
                let mine = quotas.local_sessions();
                match admin.store().exchange_sessions(&node, mine, 5).await {
                    Ok(elsewhere) => quotas.set_remote_sessions(elsewhere),
                    Err(e) => tracing::debug!(error = %e, "session counts not exchanged"),
                }
            }
        }));
    }
    if config.limits.session_lag_target_us > 0 {
        let target = Duration::from_micros(config.limits.session_lag_target_us);
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(admission::Pressure::probe(
            shared.clone(),
            target,
            async move { stopped(&mut stop).await },
        )));
    }
    let background = listener::Background::new(
        config.limits.handshake_threads,
        config.limits.handshake_nice,
    )
    .map_err(StartError::Runtime)?;
    // The admin API and the metrics endpoint run on the background runtime too: an
    // upload's argon2 check or trust rebuild never delays a device's packets.
    let router = admin_router_with_metrics(admin.router(), metrics.clone());
    tasks.push(background.handle().spawn(listener::serve_admin(
        admin_l,
        router,
        admin_tls,
        config.admin,
        metrics.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(background.handle().spawn(listener::serve_metrics(
        metrics_l,
        metrics.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(background.handle().spawn(listener::serve_mqtt(
        mqtt_l,
        shared.clone(),
        mqtt_tls,
        permits.clone(),
        tokio::runtime::Handle::current(),
        admission::SourceLimits {
            max_handshakes_per_source: config.limits.max_handshakes_per_source,
            first_byte_timeout_ms: config.limits.first_byte_timeout_ms,
        },
        shutdown_rx,
    )));
    tracing::info!(
        %mqtt_addr,
        %admin_addr,
        %metrics_addr,
        session_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        store = if config.store.url.is_some() { "postgresql" } else { "sqlite" },
        "broker listening"
    );
    Ok(Broker {
        mqtt_addr,
        admin_addr,
        metrics_addr,
        admin,
        shared,
        resolver,
        shutdown_tx,
        permits,
        tasks,
        _background: background,
        _data_dir: data_dir_lock,
    })
}

/// How often a node on a shared database reports its sessions per tenant and reads the
/// other nodes' (for `maxDevices` across nodes).
pub const SESSION_EXCHANGE: Duration = Duration::from_millis(500);

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs until `shutdown` resolves, then stops gracefully.
pub async fn run(
    config: Config,
    admin_password: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let broker = start(config, admin_password).await?;
    shutdown.await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

/// Writes the served chain to `<data_dir>/server.crt` so clients can use it as their CA
/// file while the certificate is self-signed.
fn write_server_chain(dir: &std::path::Path, chain: &[certs::CertificateDer<'static>]) {
    let pem: String = chain
        .iter()
        .map(|c| certs::pem::to_pem("CERTIFICATE", c.as_ref()))
        .collect();
    if let Err(e) = std::fs::write(dir.join("server.crt"), pem) {
        tracing::warn!(error = %e, "cannot write server.crt");
    }
}

fn admin_router_with_metrics(router: axum::Router, metrics: metrics::Metrics) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let metrics = metrics.clone();
            async move {
                let method = req.method().to_string();
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "unmatched".into());
                let resp = next.run(req).await;
                metrics.admin_request(&method, &route, resp.status().as_u16());
                resp
            }
        },
    ))
}
