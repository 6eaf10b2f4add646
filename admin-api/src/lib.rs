//! The admin API of the MQTT front-end: tenants, users, trusted certificates (the CAs a
//! tenant's devices chain to), revocation, devices, the server certificate and an audit
//! log, over REST with HTTP Basic authentication.
//!
//! [`Admin`] is the cheap-to-clone handle the broker holds: it owns the [`Store`], the
//! failed-login limiter and the two `watch` channels the front-end reads: the live
//! [`certs::TrustStore`] (republished after every change to anchors, CRLs, devices or
//! tenant settings) and the server certificate. [`router`] serves the REST API over it.
//!
//! - [`store`]: the [`Store`] trait and the embedded SQLite implementation.
//! - [`routes`]: one module per resource, and the OpenAPI document.
//! - [`auth`]: Basic authentication, argon2 hashes, the login limiter, tenant scoping.
//! - [`error`]: [`ApiError`], mapped to a status and JSON body in one table.
//! - [`console`]: the web console for tenant admins (pages, cookie sessions, CSRF).
//! - [`live`]: what this node sees live: connected devices, recent refusals.

#![forbid(unsafe_code)]

pub mod acl;
pub mod auth;
pub mod console;
pub mod error;
pub mod est;
pub mod live;
pub mod routes;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use certs::{AnchorSpec, CertificateDer, PrivateKeyDer, TenantPolicy, TrustStore};
use rand::Rng as _;
use tokio::sync::watch;

pub use auth::PasswordHashing;
pub use error::ApiError;
pub use routes::router;
pub use routes::system::ImportRequest;
pub use store::sqlite::SqliteStore;
pub use store::Store;

use store::{
    AuditEntry, Role, StoreError, TenantRecord, TenantSettings, TrustMaterial, UserRecord,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "broker.db";
/// The file the generated management-admin password is written to (mode 0600).
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// Configuration of the admin API.
#[derive(Clone)]
pub struct AdminConfig {
    /// Directory holding `broker.db` and `admin-password`.
    pub data_dir: PathBuf,
    /// The management admin's password (from `BROKER_ADMIN_PASSWORD`, read by the
    /// caller). When set it is (re)applied at every start; when unset a password is
    /// generated at first start, printed once and written to `admin-password`.
    pub admin_password: Option<String>,
    /// Argon2id cost of new password hashes.
    pub password_hashing: PasswordHashing,
    /// Failed logins of one user name from one source address (an IPv4 address or an
    /// IPv6 /64) before that pair is locked. A source address is locked after ten times
    /// as many, whatever names it tries. A user name that failed ten times as many from
    /// all sources together is slowed down (one check per second), never locked, so no
    /// one can keep an administrator out by failing its password.
    pub login_max_failures: u32,
    /// The window in which failed logins are counted.
    pub login_window: Duration,
    /// How long a (user name, source) pair or a source address stays locked.
    pub login_lockout: Duration,
    /// Threads running argon2 password checks (0: one per core, at most 4). Each check
    /// holds the hash's memory cost (19 MiB by default) while it runs.
    pub password_check_threads: usize,
    /// Password checks that may wait for a thread; beyond it a login is answered 503
    /// with `Retry-After: 1`, so a login flood costs neither memory nor queueing time.
    pub password_check_queue: usize,
    /// How long a successful password check is remembered (keyed by an HMAC, under a
    /// per-process random key, of tenant, user, password and the stored hash, so a
    /// password change invalidates it; the password itself is never stored). Zero
    /// disables the cache. Clients that send Basic credentials with every request then
    /// cost one argon2 check per this period.
    pub login_cache_ttl: Duration,
    /// How often last-seen times of devices are written.
    pub device_seen_flush_interval: Duration,
    /// Timeout fetching a CRL distribution point during a server-certificate import.
    pub crl_fetch_timeout: Duration,
    /// Where CRL distribution points and (on a server-certificate import) the chain
    /// certificates named by Authority Information Access may be fetched from (the
    /// broker's `egress` section); the default refuses loopback, private and link-local
    /// destinations.
    pub crl_egress: certs::egress::EgressPolicy,
    /// The passphrase of a server key stored encrypted (imported with a new
    /// passphrase); `BROKER_SERVER_KEY_PASSPHRASE` for the broker. Never logged.
    pub server_key_passphrase: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a proof-of-possession verification code is accepted.
    pub verification_code_ttl: Duration,
    /// Largest size of the database in bytes (`None`: as much as the disk holds). A
    /// change that needs more space is refused with 507, as on a full disk.
    pub max_database_bytes: Option<u64>,
    /// The reference platform's stricter mode: an uploaded trusted certificate verifies
    /// no device until its proof of possession has succeeded (`proofOfPossessionValid`,
    /// by the signed verification code or the management admin's `.../confirmed` call).
    /// Until then the published trust snapshot holds it as disabled. Default false: an
    /// upload is trusted at once, as before.
    pub require_proof_of_possession: bool,
    /// A shared PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DB`, see
    /// [`store::postgres`]) instead of the SQLite file in the data directory: several
    /// front-end nodes on one database. Never logged (Debug redacts it).
    pub store_url: Option<String>,
    /// Where the key that encrypts tenant CA private keys comes from
    /// (`BROKER_CA_KEY_ENCRYPTION_KEY`, `[est] key_file`, or generated in the data
    /// directory at first use). Never logged (Debug redacts a value).
    pub ca_key_source: est::KeySource,
    /// A console session ends after this long without a request.
    pub console_idle_timeout: Duration,
    /// A console session ends this long after its login, however busy.
    pub console_session_lifetime: Duration,
}

impl AdminConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> AdminConfig {
        AdminConfig {
            data_dir: data_dir.into(),
            admin_password: None,
            password_hashing: PasswordHashing::default(),
            login_max_failures: 5,
            login_window: Duration::from_secs(300),
            login_lockout: Duration::from_secs(60),
            password_check_threads: 0,
            password_check_queue: 16,
            login_cache_ttl: Duration::from_secs(60),
            device_seen_flush_interval: Duration::from_secs(5),
            crl_fetch_timeout: Duration::from_secs(5),
            crl_egress: certs::egress::EgressPolicy::default(),
            server_key_passphrase: None,
            max_body_bytes: 1024 * 1024,
            verification_code_ttl: Duration::from_secs(3600),
            max_database_bytes: None,
            require_proof_of_possession: false,
            store_url: None,
            ca_key_source: est::KeySource::DataDir,
            console_idle_timeout: Duration::from_secs(30 * 60),
            console_session_lifetime: Duration::from_secs(8 * 3600),
        }
    }
}

impl Default for AdminConfig {
    /// Defaults with the data directory `data`.
    fn default() -> Self {
        AdminConfig::new("data")
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("password_hashing", &self.password_hashing)
            .field("login_max_failures", &self.login_max_failures)
            .field("login_window", &self.login_window)
            .field("login_lockout", &self.login_lockout)
            .field("password_check_threads", &self.password_check_threads)
            .field("password_check_queue", &self.password_check_queue)
            .field("login_cache_ttl", &self.login_cache_ttl)
            .field(
                "device_seen_flush_interval",
                &self.device_seen_flush_interval,
            )
            .field("crl_fetch_timeout", &self.crl_fetch_timeout)
            .field("crl_egress", &self.crl_egress)
            .field(
                "server_key_passphrase",
                &self.server_key_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("verification_code_ttl", &self.verification_code_ttl)
            .field("max_database_bytes", &self.max_database_bytes)
            .field(
                "require_proof_of_possession",
                &self.require_proof_of_possession,
            )
            .field(
                "store_url",
                &self.store_url.as_deref().map(store::postgres::redact_url),
            )
            .field("ca_key_source", &self.ca_key_source)
            .field("console_idle_timeout", &self.console_idle_timeout)
            .field("console_session_lifetime", &self.console_session_lifetime)
            .finish()
    }
}

/// Why the admin API could not start or a broker-facing call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A file in the data directory could not be created or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("invalid admin configuration: {0}")]
    Config(String),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError::Internal(e.to_string())
    }
}

/// The server's certificate chain and private key, as the TLS listener needs them.
pub struct ServerCertificate {
    /// Leaf first, then the issuers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field(
                "chain",
                &self
                    .chain
                    .iter()
                    .map(|c| certs::info::fingerprint_sha1(c.as_ref()))
                    .collect::<Vec<_>>(),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Whether a device Common Name may connect, as the device registry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Registered at a first connect or in advance.
    Registered,
    /// Blocked by an admin.
    Blocked,
    /// Not known to the tenant.
    Unknown,
}

/// What the REST layer knows about the anchors beyond the [`TrustStore`]: which tenant
/// owns an issuer, for the chain-check tool, and each tenant's settings.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Subject Key Identifier (hex) -> (tenant, fingerprint).
    pub(crate) by_ski: HashMap<String, Vec<(String, String)>>,
    /// Subject DN -> (tenant, fingerprint).
    pub(crate) by_subject: HashMap<String, Vec<(String, String)>>,
    /// Fingerprint -> tenant.
    pub(crate) by_fingerprint: HashMap<String, String>,
    /// Tenant settings.
    pub(crate) settings: HashMap<String, TenantSettings>,
    /// Topic authorization rule sets and assignments per tenant (tenants without rule
    /// sets are absent).
    pub(crate) acl: HashMap<String, acl::TenantAcl>,
}

pub(crate) struct Inner {
    config: AdminConfig,
    store: Arc<dyn Store>,
    trust_tx: watch::Sender<Arc<TrustStore>>,
    server_tx: watch::Sender<Option<Arc<ServerCertificate>>>,
    /// Failed logins per (user name, source address).
    limiter: auth::LoginLimiter,
    /// Failed logins per source address, across user names.
    source_limiter: auth::LoginLimiter,
    /// Failed logins per user name from all sources: slows down, never locks.
    user_slowdown: auth::UserSlowdown,
    /// Argon2 checks on a fixed pool of threads behind a bounded queue, and the cache of
    /// recent successful checks.
    checker: auth::PasswordChecker,
    dummy_hash: String,
    /// A secret hash of [`est::SECRET_HASHING`]'s cost, checked for unknown devices.
    est_dummy_hash: String,
    seen: Mutex<HashMap<(String, String), i64>>,
    rebuild: tokio::sync::Mutex<()>,
    snapshot: RwLock<Arc<Snapshot>>,
    crl_fetcher: certs::revocation::CrlFetcher,
    /// The CA key encryption key, once loaded.
    ca_key: Mutex<Option<Arc<est::KeyEncryption>>>,
    aia_fetcher: certs::aia::AiaFetcher,
    /// Console sessions of this process.
    sessions: console::session::Sessions,
    /// Connected devices and recent refusals seen by this node.
    live: live::Live,
}

/// The admin API's shared state: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Opens (or creates) `data_dir/broker.db`, or connects to the PostgreSQL database
    /// of `store_url`, bootstraps the management admin and builds the first trust
    /// snapshot.
    pub async fn open(config: AdminConfig) -> Result<Admin, AdminError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AdminError::Io {
            context: format!("creating data directory {}", config.data_dir.display()),
            source,
        })?;
        if let Some(url) = &config.store_url {
            let store = store::postgres::PostgresStore::connect(url).await?;
            return Admin::with_store(config, Arc::new(store)).await;
        }
        let path = config.data_dir.join(DATABASE_FILE);
        let max_bytes = config.max_database_bytes;
        let store = tokio::task::spawn_blocking(move || {
            let store = SqliteStore::open(&path)?;
            if let Some(max) = max_bytes {
                store.limit_size(max)?;
            }
            Ok::<_, StoreError>(store)
        })
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))??;
        Admin::with_store(config, Arc::new(store)).await
    }

    /// Like [`Admin::open`] over any [`Store`] (a shared PostgreSQL for several nodes).
    pub async fn with_store(
        config: AdminConfig,
        store: Arc<dyn Store>,
    ) -> Result<Admin, AdminError> {
        let hashing = config.password_hashing;
        let dummy_hash = tokio::task::spawn_blocking(move || hashing.hash("dummy password"))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .map_err(AdminError::Config)?;
        let est_dummy_hash =
            tokio::task::spawn_blocking(|| est::SECRET_HASHING.hash("dummy enrollment secret"))
                .await
                .map_err(|e| AdminError::Internal(e.to_string()))?
                .map_err(AdminError::Config)?;
        let server = match store.server_certificate().await? {
            Some(rec) => Some(Arc::new(server_certificate_from_record(
                &rec,
                config.server_key_passphrase.as_deref(),
            )?)),
            None => None,
        };
        let inner = Inner {
            sessions: console::session::Sessions::new(
                config.console_idle_timeout,
                config.console_session_lifetime,
            ),
            limiter: auth::LoginLimiter::new(
                config.login_max_failures,
                config.login_window,
                config.login_lockout,
            ),
            source_limiter: auth::LoginLimiter::new(
                config
                    .login_max_failures
                    .saturating_mul(auth::SOURCE_FAILURES_FACTOR),
                config.login_window,
                config.login_lockout,
            ),
            user_slowdown: auth::UserSlowdown::new(
                config
                    .login_max_failures
                    .saturating_mul(auth::SOURCE_FAILURES_FACTOR),
                config.login_window,
                auth::SLOWDOWN_INTERVAL,
                auth::SLOWDOWN_MAX_WAIT,
            ),
            checker: auth::PasswordChecker::new(
                match config.password_check_threads {
                    0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
                    n => n,
                },
                config.password_check_queue,
                config.login_cache_ttl,
            ),
            crl_fetcher: certs::revocation::CrlFetcher::with_policy(
                config.crl_fetch_timeout,
                Duration::from_secs(300),
                config.crl_egress.clone(),
            ),
            aia_fetcher: certs::aia::AiaFetcher::new(
                config.crl_egress.clone(),
                config.crl_fetch_timeout,
            ),
            config,
            store,
            trust_tx: watch::Sender::new(Arc::new(TrustStore::default())),
            server_tx: watch::Sender::new(server),
            dummy_hash,
            est_dummy_hash,
            live: live::Live::default(),
            seen: Mutex::new(HashMap::new()),
            rebuild: tokio::sync::Mutex::new(()),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            ca_key: Mutex::new(None),
        };
        let admin = Admin {
            inner: Arc::new(inner),
        };
        admin.bootstrap().await?;
        admin.publish().await?;
        spawn_flusher(Arc::downgrade(&admin.inner));
        spawn_ca_retirer(Arc::downgrade(&admin.inner));
        if let Some(rx) = admin.inner.store.changes() {
            spawn_change_listener(Arc::downgrade(&admin.inner), rx);
        }
        Ok(admin)
    }

    /// The REST API over this handle.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// The live trust snapshot; a new value is sent after every change.
    pub fn trust_store(&self) -> watch::Receiver<Arc<TrustStore>> {
        self.inner.trust_tx.subscribe()
    }

    /// The server certificate; a new value is sent after every import.
    pub fn server_certificate(&self) -> watch::Receiver<Option<Arc<ServerCertificate>>> {
        self.inner.server_tx.subscribe()
    }

    /// The store behind this handle.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &AdminConfig {
        &self.inner.config
    }

    /// A tenant's settings as of the last published snapshot (for the front-end's
    /// online CRL fetching decision, which [`TenantPolicy`] does not carry).
    pub fn tenant_settings(&self, tenant: &str) -> Option<TenantSettings> {
        self.snapshot().settings.get(tenant).cloned()
    }

    /// The topic rule set that applies to a device of `tenant` with Common Name `cn`
    /// verified by the trusted certificate `anchor_fingerprint`, as of the last
    /// published snapshot (published before the [`TrustStore`] it goes with, so a
    /// session woken by a new trust snapshot reads rules at least as new).
    pub fn acl_applies(
        &self,
        tenant: &str,
        cn: &str,
        anchor_fingerprint: Option<&str>,
    ) -> acl::Applies {
        self.snapshot()
            .acl
            .get(tenant)
            .map_or(acl::Applies::NoRules, |t| t.applies(cn, anchor_fingerprint))
    }

    /// The device registry's verdict for a Common Name of a tenant.
    pub async fn device_admission(
        &self,
        tenant: &str,
        cn: &str,
    ) -> Result<DeviceState, AdminError> {
        Ok(match self.inner.store.device(tenant, cn).await? {
            None => DeviceState::Unknown,
            Some(d) => match d.status {
                store::DeviceStatus::Registered => DeviceState::Registered,
                store::DeviceStatus::Blocked => DeviceState::Blocked,
            },
        })
    }

    /// Registers a device at its first connect (autoRegistrationEnabled) or records the
    /// first connection of a pre-registered one. Idempotent; never unblocks; does not
    /// rebuild the trust snapshot.
    pub async fn register_device(
        &self,
        tenant: &str,
        cn: &str,
        anchor_fingerprint: &str,
    ) -> Result<(), AdminError> {
        let audit = AuditEntry::new("device", Some(tenant), "DEVICE_REGISTERED")
            .target(cn)
            .fingerprint(anchor_fingerprint);
        self.inner
            .store
            .register_device(tenant, cn, anchor_fingerprint, certs::now_unix(), audit)
            .await?;
        Ok(())
    }

    /// Notes that a device is connected now. In memory only; a background task writes
    /// the last-seen times every `device_seen_flush_interval` in one transaction.
    pub fn device_seen(&self, tenant: &str, cn: &str) {
        if let Ok(mut seen) = self.inner.seen.lock() {
            seen.insert((tenant.to_string(), cn.to_string()), certs::now_unix());
        }
    }

    /// Writes the pending last-seen times now (the background task calls this; call it
    /// at shutdown too).
    pub async fn flush_device_seen(&self) -> Result<(), AdminError> {
        let pending: Vec<(String, String, i64)> = match self.inner.seen.lock() {
            Ok(mut seen) => seen.drain().map(|((t, c), at)| (t, c, at)).collect(),
            Err(_) => return Err(AdminError::Internal("device-seen lock poisoned".into())),
        };
        self.inner.store.record_last_seen(pending).await?;
        Ok(())
    }

    /// The certificate and key a stored record serves (another process may have
    /// imported it), the key decrypted with [`AdminConfig::server_key_passphrase`] when
    /// it was stored encrypted.
    pub fn served_certificate(
        &self,
        rec: &store::ServerCertRecord,
    ) -> Result<ServerCertificate, AdminError> {
        server_certificate_from_record(rec, self.inner.config.server_key_passphrase.as_deref())
    }

    /// Imports the server certificate: the same code path as `PUT /system/ssl-certificate`.
    pub async fn import_server_certificate(
        &self,
        req: ImportRequest,
    ) -> Result<certs::CertInfo, ApiError> {
        self.import_server_certificate_as("system", req)
            .await
            .map(|imported| imported.info)
    }

    /// Drops what this process holds in memory for a deleted tenant: pending last-seen
    /// times of its devices, its users' failed-login counts and its devices' failed
    /// enrollments, so a tenant created later with the same id inherits none of it.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        if let Ok(mut seen) = self.inner.seen.lock() {
            seen.retain(|(t, _), _| t != tenant);
        }
        self.inner.limiter.forget_prefix(&format!("{tenant}/"));
        self.inner.limiter.forget_prefix(&format!("est:{tenant}/"));
        self.inner
            .user_slowdown
            .forget_prefix(&format!("{tenant}/"));
        self.inner.sessions.end_tenant(tenant);
        self.inner.live.forget_tenant(tenant);
    }

    /// Records a refused handshake for each tenant its chain names (`tenants` as the
    /// refusal log gives them: comma-separated). Only existing tenants are kept, so the
    /// memory stays bounded by the tenants and [`live::REFUSALS_PER_TENANT`].
    pub fn record_refusal(&self, tenants: &str, refusal: live::HandshakeRefusal) {
        let snapshot = self.snapshot();
        let now = certs::now_unix();
        for tenant in tenants
            .split(',')
            .filter(|t| snapshot.settings.contains_key(*t))
        {
            self.inner.live.refused(tenant, now, refusal.clone());
        }
    }

    /// Notes that a device of `tenant` with Common Name `cn` is connected from `source`
    /// until the returned guard is dropped.
    pub fn device_online(
        &self,
        tenant: &str,
        cn: &str,
        source: std::net::IpAddr,
    ) -> live::OnlineGuard {
        self.inner
            .live
            .online(tenant, cn, source, certs::now_unix());
        live::OnlineGuard {
            inner: Arc::downgrade(&self.inner),
            tenant: tenant.to_string(),
            cn: cn.to_string(),
        }
    }

    /// What this node sees live: connected devices and recent refusals.
    pub fn live(&self) -> &live::Live {
        &self.inner.live
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub(crate) fn now(&self) -> i64 {
        certs::now_unix()
    }

    /// Re-reads everything from the store and publishes a new trust snapshot.
    /// Serialised, so snapshots are published in the order of the changes.
    pub async fn publish(&self) -> Result<(), AdminError> {
        let _guard = self.inner.rebuild.lock().await;
        let material = self.inner.store.trust_material().await?;
        let require_pop = self.inner.config.require_proof_of_possession;
        let (trust, snapshot) =
            tokio::task::spawn_blocking(move || build_trust(material, require_pop))
                .await
                .map_err(|e| AdminError::Internal(format!("trust snapshot build failed: {e}")))?;
        if let Ok(mut s) = self.inner.snapshot.write() {
            *s = Arc::new(snapshot);
        }
        self.inner.trust_tx.send_replace(Arc::new(trust));
        Ok(())
    }

    /// Creates the management tenant and its admin, or re-applies the configured
    /// password.
    async fn bootstrap(&self) -> Result<(), AdminError> {
        let store = &self.inner.store;
        let now = self.now();
        store
            .ensure_tenant(TenantRecord {
                id: auth::MANAGEMENT_TENANT.into(),
                company: "Management".into(),
                domain: None,
                created_at: now,
                settings: TenantSettings::default(),
            })
            .await?;
        let configured = self.inner.config.admin_password.clone();
        let existing = store
            .user(auth::MANAGEMENT_TENANT, auth::MANAGEMENT_ADMIN)
            .await?;
        match (existing, configured) {
            (Some(user), Some(password)) => {
                let hash = user.password_hash.clone();
                let p = password.clone();
                let same = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &p))
                    .await
                    .map_err(|e| AdminError::Internal(e.to_string()))?;
                if !same {
                    let hash = self.hash_password(password).await?;
                    let audit =
                        AuditEntry::new("system", Some(auth::MANAGEMENT_TENANT), "PASSWORD_RESET")
                            .target(auth::MANAGEMENT_ADMIN)
                            .detail("password set from BROKER_ADMIN_PASSWORD at start");
                    store
                        .set_password(auth::MANAGEMENT_TENANT, auth::MANAGEMENT_ADMIN, hash, audit)
                        .await?;
                }
            }
            (Some(_), None) => {}
            (None, configured) => {
                let generated = configured.is_none();
                let password = configured.unwrap_or_else(generate_password);
                let hash = self.hash_password(password.clone()).await?;
                let audit =
                    AuditEntry::new("system", Some(auth::MANAGEMENT_TENANT), "USER_CREATED")
                        .target(auth::MANAGEMENT_ADMIN)
                        .detail("bootstrap management admin");
                let created = store
                    .create_user(
                        UserRecord {
                            tenant: auth::MANAGEMENT_TENANT.into(),
                            user_name: auth::MANAGEMENT_ADMIN.into(),
                            password_hash: hash,
                            roles: vec![Role::TenantAdmin],
                            created_at: now,
                        },
                        audit,
                    )
                    .await;
                if let Err(StoreError::Conflict(store::Conflict::UserExists { .. })) = created {
                    // Another node on the same database created it meanwhile: start over
                    // as with an existing admin.
                    return Box::pin(self.bootstrap()).await;
                }
                created?;
                if generated {
                    let path = self.inner.config.data_dir.join(ADMIN_PASSWORD_FILE);
                    write_secret_file(&path, &format!("{password}\n")).map_err(|source| {
                        AdminError::Io {
                            context: format!("writing {}", path.display()),
                            source,
                        }
                    })?;
                    // Printed once, on purpose, to the operator's console (not the log).
                    eprintln!(
                        "Generated password for the management admin management/{}: {password}\n(also written to {}; set BROKER_ADMIN_PASSWORD to choose it)",
                        auth::MANAGEMENT_ADMIN,
                        path.display()
                    );
                    return Ok(());
                }
            }
        }
        self.remove_stale_password_file().await
    }

    /// The store is the one source of truth for the management admin's password:
    /// `admin-password` only records a generated password while it is still the
    /// password. Once it is not (set from `BROKER_ADMIN_PASSWORD`, or changed over the
    /// API), the file is removed rather than left to mislead.
    async fn remove_stale_password_file(&self) -> Result<(), AdminError> {
        let path = self.inner.config.data_dir.join(ADMIN_PASSWORD_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let Some(user) = self
            .inner
            .store
            .user(auth::MANAGEMENT_TENANT, auth::MANAGEMENT_ADMIN)
            .await?
        else {
            return Ok(());
        };
        let written = text.trim_end_matches(['\r', '\n']).to_string();
        let hash = user.password_hash;
        let current = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &written))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        if !current {
            std::fs::remove_file(&path).map_err(|source| AdminError::Io {
                context: format!("removing the outdated {}", path.display()),
                source,
            })?;
            tracing::warn!(
                file = %path.display(),
                "removed the generated admin password file: the management admin's password was changed since (BROKER_ADMIN_PASSWORD or the API)"
            );
        }
        Ok(())
    }

    pub(crate) async fn hash_password(&self, password: String) -> Result<String, AdminError> {
        let hashing = self.inner.config.password_hashing;
        tokio::task::spawn_blocking(move || hashing.hash(&password))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .map_err(AdminError::Internal)
    }
}

fn generate_password() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Writes `contents` to a file readable by its owner only.
fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// The served certificate of a stored record: its key decrypted with `passphrase` when it
/// was stored encrypted (imported with a new passphrase).
pub(crate) fn server_certificate_from_record(
    rec: &store::ServerCertRecord,
    passphrase: Option<&str>,
) -> Result<ServerCertificate, AdminError> {
    if rec.chain_der.is_empty() {
        return Err(AdminError::Internal(
            "stored server certificate has no chain".into(),
        ));
    }
    let passphrase = passphrase.filter(|p| !p.is_empty());
    let key = match certs::pem::read_private_key(&rec.key_pkcs8, passphrase) {
        Ok(key) => key,
        Err(certs::ReadError::PassphraseRequired) => {
            return Err(AdminError::Config(
                "the stored server key is encrypted (imported with a new passphrase): set BROKER_SERVER_KEY_PASSPHRASE to that passphrase".into(),
            ))
        }
        Err(e) => {
            return Err(AdminError::Config(format!(
                "the stored server key cannot be read with BROKER_SERVER_KEY_PASSPHRASE: {e}"
            )))
        }
    };
    Ok(ServerCertificate {
        chain: rec
            .chain_der
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
        key,
    })
}

/// Builds the trust snapshot and the REST-side index from the store's material. An
/// anchor or CRL the builder refuses is skipped with a warning (it was checked at
/// upload; a CRL whose anchor was deleted no longer applies). With `require_pop`, an
/// anchor whose proof of possession has not succeeded is added disabled: it verifies no
/// device, yet still counts towards the tenant's `maxAnchors`.
fn build_trust(m: TrustMaterial, require_pop: bool) -> (TrustStore, Snapshot) {
    let mut revoked: HashMap<&str, HashSet<String>> = HashMap::new();
    for (tenant, s) in &m.revoked {
        revoked
            .entry(tenant.as_str())
            .or_default()
            .insert(s.serial_hex.clone());
    }
    let mut blocked: HashMap<&str, HashSet<String>> = HashMap::new();
    for (tenant, cn) in &m.blocked {
        blocked
            .entry(tenant.as_str())
            .or_default()
            .insert(cn.clone());
    }
    let mut b = TrustStore::builder();
    let mut snap = Snapshot::default();
    for r in &m.acl_rule_sets {
        let set = match serde_json::from_str::<acl::RuleSet>(&r.body) {
            Ok(set) => Some(Arc::new(set)),
            Err(e) => {
                tracing::error!(tenant = %r.tenant, rule_set = %r.name, error = %e, "stored topic rule set unreadable: it refuses everything");
                None
            }
        };
        snap.acl
            .entry(r.tenant.clone())
            .or_default()
            .sets
            .insert(r.name.clone(), set);
    }
    for a in &m.acl_assignments {
        let t = snap.acl.entry(a.tenant.clone()).or_default();
        let map = match a.target {
            store::AclTarget::Anchor => &mut t.by_anchor,
            store::AclTarget::Device => &mut t.by_device,
        };
        map.insert(a.key.clone(), a.rule_set.clone());
    }
    for t in &m.tenants {
        b.tenant(
            &t.id,
            TenantPolicy {
                max_chain_length: t.settings.max_chain_length,
                revoked_serials: revoked.remove(t.id.as_str()).unwrap_or_default(),
                crl_enabled: t.settings.crl_offline_enabled,
                blocked_devices: blocked.remove(t.id.as_str()).unwrap_or_default(),
                client_id_override: t.settings.client_id_policy == store::ClientIdPolicy::Override,
            },
        );
        snap.settings.insert(t.id.clone(), t.settings.clone());
    }
    for a in &m.anchors {
        let spec = AnchorSpec {
            tenant: a.tenant.clone(),
            status: if require_pop && !a.pop_valid {
                certs::AnchorStatus::Disabled
            } else {
                a.status
            },
            auto_registration: a.auto_registration,
            cert_der: a.cert_der.clone(),
        };
        if let Err(e) = b.anchor(spec) {
            tracing::warn!(tenant = %a.tenant, fingerprint = %a.fingerprint, error = %e, "trusted certificate skipped");
            continue;
        }
        let owner = (a.tenant.clone(), a.fingerprint.clone());
        if let Ok(info) = certs::CertInfo::parse(&a.cert_der) {
            if let Some(ski) = info.subject_key_id {
                snap.by_ski.entry(ski).or_default().push(owner.clone());
            }
        }
        snap.by_subject
            .entry(a.subject.clone())
            .or_default()
            .push(owner);
        snap.by_fingerprint
            .insert(a.fingerprint.clone(), a.tenant.clone());
    }
    for c in &m.crls {
        match certs::revocation::Crl::parse(&c.der) {
            Ok(crl) => {
                if let Err(e) = b.crl(&c.tenant, crl) {
                    tracing::warn!(tenant = %c.tenant, issuer = %c.issuer, error = %e, "CRL skipped");
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %c.tenant, issuer = %c.issuer, error = %e, "stored CRL unreadable")
            }
        }
    }
    (b.build(), snap)
}

fn spawn_flusher(weak: Weak<Inner>) {
    let Some(interval) = weak.upgrade().map(|i| i.config.device_seen_flush_interval) else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let admin = Admin { inner };
            if let Err(e) = admin.flush_device_seen().await {
                tracing::warn!(error = %e, "writing device last-seen times failed");
            }
        }
    });
}

/// Disables, once a minute, the anchors of rotated tenant CAs whose overlap ended.
fn spawn_ca_retirer(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            if let Err(e) = (Admin { inner }).retire_due_cas().await {
                tracing::warn!(error = %e, "retiring rotated tenant CAs failed");
            }
        }
    });
}

fn spawn_change_listener(weak: Weak<Inner>, mut rx: tokio::sync::broadcast::Receiver<()>) {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
            // Retried until it succeeds: the change is in the store, and a snapshot
            // left stale would go on admitting what it revoked.
            loop {
                let Some(inner) = weak.upgrade() else { return };
                match (Admin { inner }).publish().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "rebuilding the trust snapshot after a remote change failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    });
}
