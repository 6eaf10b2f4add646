//! Where sessions are forwarded: the embedded rumqttd, reached in-process through
//! [`crate::embedded`] (or over several loopback listeners per protocol level, so its
//! per-listener accept pacing is not the limit), or an external broker over `mqtt://` /
//! `mqtts://`.
//!
//! The embedded rumqttd accepts nothing that did not come through the front-end: with
//! the in-process transport it has no listener at all, and with the loopback transport
//! its listeners require a credential generated at random for this process
//! ([`BackendLogin`]), which only the front-end puts in the CONNECT packets it forwards.
//! That credential is also written to [`CREDENTIAL_FILE`] in the data directory (mode
//! 0600, like the admin password and the SQLite store next to it), so that the data
//! directory's owner can reach rumqttd directly, e.g. the benchmark's "direct" runs.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Backend, Config, Transport};
use crate::embedded::{Durable, Hub};
use crate::mqtt::Version;

/// A byte stream to the backend.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why the backend could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Local ports for the embedded broker could not be reserved.
    #[error("cannot reserve loopback ports for the embedded broker: {0}")]
    Ports(std::io::Error),
    /// The embedded broker did not start listening in time.
    #[error("the embedded broker did not start: {0}")]
    Start(String),
    /// The backend CA file is unusable.
    #[error("backend CA: {0}")]
    Ca(String),
    /// The embedded broker's credential file could not be written.
    #[error("cannot write the embedded broker's credential file {}: {source}", path.display())]
    CredentialFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The file, in the data directory, that holds the embedded rumqttd's loopback credential
/// ([`BackendLogin`]) with the loopback transport: the username on the first line, the
/// password on the second, readable by its owner only (mode 0600). Rewritten at every
/// start (the credential is new each time); removed at a start with the in-process
/// transport, which has no listener to reach.
pub const CREDENTIAL_FILE: &str = "backend-credential";

/// The username the front-end presents to the embedded rumqttd's loopback listeners.
pub const EMBEDDED_USERNAME: &str = "!front-end";

/// The credential the embedded rumqttd's loopback listeners require: generated at random
/// when the broker starts, put by the front-end in every CONNECT it forwards, and written
/// nowhere but [`CREDENTIAL_FILE`] in the data directory (mode 0600, its owner's alone;
/// never logged). Devices' own username and password never reach the backend.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendLogin {
    /// Username ([`EMBEDDED_USERNAME`]).
    pub username: String,
    /// 256 random bits, hex.
    pub password: String,
}

impl std::fmt::Debug for BackendLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl BackendLogin {
    /// The login of the CONNECT packets the front-end forwards.
    pub fn connect_login(&self) -> rumqttd::protocol::Login {
        rumqttd::protocol::Login {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    /// A new credential from the crypto provider's random generator.
    pub fn generate() -> Result<BackendLogin, BackendError> {
        let mut bytes = [0u8; 32];
        crate::tls::provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| {
                BackendError::Start("no random numbers for the backend credential".into())
            })?;
        let password = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(BackendLogin {
            username: EMBEDDED_USERNAME.to_string(),
            password,
        })
    }
}

/// Sessions by backend ClientId, with the number of the newest.
#[derive(Default)]
struct LiveSessions {
    map: std::sync::Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

/// Connects sessions to the backend.
pub struct BackendPool {
    /// The embedded rumqttd's router, when sessions reach it in-process.
    hub: Option<Arc<Hub>>,
    /// The embedded broker's durable state (in-process transport).
    durable: Option<Arc<Durable>>,
    /// This node's sessions on a backend reached over TCP, by backend ClientId.
    live: LiveSessions,
    v4: Vec<String>,
    v5: Vec<String>,
    /// The credential of the embedded rumqttd's loopback listeners (loopback transport).
    login: Option<BackendLogin>,
    next: AtomicUsize,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl BackendPool {
    /// Starts the embedded rumqttd or prepares the external backend.
    pub async fn start(config: &Config) -> Result<BackendPool, BackendError> {
        match config
            .backend()
            .map_err(|e| BackendError::Start(e.to_string()))?
        {
            Backend::Embedded => start_embedded(config).await,
            Backend::Mqtt(addr) => Ok(BackendPool {
                durable: None,
                live: LiveSessions::default(),
                hub: None,
                v4: vec![addr.clone()],
                v5: vec![addr],
                login: None,
                next: AtomicUsize::new(0),
                tls: None,
            }),
            Backend::Mqtts(addr) => {
                let ca_path = config
                    .backend_ca
                    .as_ref()
                    .ok_or_else(|| BackendError::Ca("missing backend_ca".into()))?;
                let pem = std::fs::read(ca_path)
                    .map_err(|e| BackendError::Ca(format!("{}: {e}", ca_path.display())))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs::pem::read_certificates(&pem)
                    .map_err(|e| BackendError::Ca(e.to_string()))?
                {
                    roots.add(c).map_err(|e| BackendError::Ca(e.to_string()))?;
                }
                let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| BackendError::Ca(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_string();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| BackendError::Ca(e.to_string()))?;
                Ok(BackendPool {
                    durable: None,
                    live: LiveSessions::default(),
                    hub: None,
                    v4: vec![addr.clone()],
                    v5: vec![addr],
                    login: None,
                    next: AtomicUsize::new(0),
                    tls: Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name)),
                })
            }
        }
    }

    /// Opens a connection for a session of the given protocol level: an in-process link,
    /// or a TCP connection (TCP_NODELAY set).
    pub async fn connect(&self, version: Version) -> std::io::Result<Box<dyn Io>> {
        if let Some(link) = self.in_process(version) {
            return Ok(link);
        }
        let tcp = self.connect_tcp(version).await?;
        self.wrap(tcp).await
    }

    /// Like [`BackendPool::connect`], but the socket is registered with `runtime`, the
    /// runtime that will carry the session's packets, while the connect (and the TLS
    /// handshake of an `mqtts://` backend) runs on the caller's.
    pub async fn connect_for(
        &self,
        version: Version,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Box<dyn Io>> {
        if let Some(link) = self.in_process(version) {
            return Ok(link);
        }
        let tcp = self.connect_tcp(version).await?.into_std()?;
        let tcp = {
            let _entered = runtime.enter();
            TcpStream::from_std(tcp)?
        };
        self.wrap(tcp).await
    }

    /// A session's in-process link, when sessions reach the embedded broker that way.
    fn in_process(&self, version: Version) -> Option<Box<dyn Io>> {
        let hub = self.hub.as_ref()?;
        Some(Box::new(hub.session(version == Version::V5)))
    }

    async fn connect_tcp(&self, version: Version) -> std::io::Result<TcpStream> {
        let addrs = match version {
            Version::V4 => &self.v4,
            Version::V5 => &self.v5,
        };
        if addrs.is_empty() {
            return Err(std::io::Error::other(
                "the embedded broker has no listener (in-process transport)",
            ));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        let tcp = TcpStream::connect(addrs[i].as_str()).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn wrap(&self, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let s = connector.connect(name.clone(), tcp).await?;
                Ok(Box::new(s))
            }
        }
    }

    /// The backend listener addresses: the external broker's, or the embedded rumqttd's
    /// loopback listeners with the loopback transport (none with the in-process one).
    pub fn addresses(&self, version: Version) -> &[String] {
        match version {
            Version::V4 => &self.v4,
            Version::V5 => &self.v5,
        }
    }

    /// Registers a session of `client_id` on a backend reached over TCP (`None` for
    /// in-process links, which learn of a takeover from the router itself): its number.
    pub fn session_began(&self, client_id: &str) -> Option<u64> {
        if self.hub.is_some() {
            return None;
        }
        let n = self.live.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_owned(), n);
        Some(n)
    }

    /// The session `n` of `client_id` ended: `true` if a newer session of the same
    /// ClientId on this node took it over (a broker that closes the older connection
    /// without a DISCONNECT, as Mosquitto 2.0 does, says nothing more).
    pub fn session_ended(&self, client_id: &str, n: u64) -> bool {
        let mut map = self.live.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(client_id) {
            Some(&newest) if newest == n => {
                map.remove(client_id);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The embedded broker's durable state, when it has one (its metrics belong in the
    /// product's registry).
    pub fn durable(&self) -> Option<&Arc<Durable>> {
        self.durable.as_ref()
    }

    /// The credential the front-end puts in the CONNECT packets it forwards (the
    /// embedded rumqttd's loopback listeners require it; `None` otherwise).
    pub fn login(&self) -> Option<&BackendLogin> {
        self.login.as_ref()
    }
}

/// Writes `login` to [`CREDENTIAL_FILE`] in `data_dir`: any previous file (or symbolic
/// link) of that name is removed first and the new one is created exclusively with mode
/// 0600, so the password is never readable by anyone but the owner, not even for a moment.
fn write_credential_file(
    data_dir: &std::path::Path,
    login: &BackendLogin,
) -> Result<std::path::PathBuf, BackendError> {
    use std::io::Write as _;
    let path = data_dir.join(CREDENTIAL_FILE);
    let fail = |source| BackendError::CredentialFile {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(fail)?;
    #[cfg(unix)]
    {
        // The mode given at creation is reduced by the umask, never widened; make it exact.
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    f.write_all(format!("{}\n{}\n", login.username, login.password).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    Ok(path)
}

/// Removes a credential file left by an earlier start with the loopback transport (its
/// credential died with that process; nothing listens for it any more).
fn remove_stale_credential_file(data_dir: &std::path::Path) {
    let path = data_dir.join(CREDENTIAL_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "stale backend credential file not removed")
        }
    }
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")?.local_addr()
}

async fn start_embedded(config: &Config) -> Result<BackendPool, BackendError> {
    let e = &config.embedded;
    // In-process sessions need no listener, so there is none: a loopback port without
    // authentication would let any local process read every tenant's traffic.
    let listeners = e.transport == Transport::Loopback;
    let login = if listeners {
        Some(BackendLogin::generate()?)
    } else {
        None
    };
    let conn = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: config.limits.max_packet_size,
        max_inflight_count: e.max_inflight,
        // rumqttd refuses a CONNECT without this exact username and password (both
        // protocol levels; a constant-time comparison) and closes without a CONNACK.
        auth: login
            .as_ref()
            .map(|l| HashMap::from([(l.username.clone(), l.password.clone())])),
        external_auth: None,
        dynamic_filters: true,
    };
    let mut v4 = HashMap::new();
    let mut v5 = HashMap::new();
    let mut v4_addrs = Vec::new();
    let mut v5_addrs = Vec::new();
    let (v4_count, v5_count) = if listeners {
        (e.v4_listeners, e.v5_listeners)
    } else {
        (0, 0)
    };
    for i in 0..v4_count {
        let listen = free_loopback_port().map_err(BackendError::Ports)?;
        v4_addrs.push(listen.to_string());
        v4.insert(
            format!("v4-{i}"),
            rumqttd::ServerSettings {
                name: format!("v4-{i}"),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: conn.clone(),
            },
        );
    }
    for i in 0..v5_count {
        let listen = free_loopback_port().map_err(BackendError::Ports)?;
        v5_addrs.push(listen.to_string());
        v5.insert(
            format!("v5-{i}"),
            rumqttd::ServerSettings {
                name: format!("v5-{i}"),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: conn.clone(),
            },
        );
    }
    let rconfig = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // Plus the front-end's own: the will publisher and the echo probe.
            max_connections: e.max_connections.saturating_add(2),
            max_outgoing_packet_count: 200,
            // Each subscription filter's log is a ring of segments, allocated as it fills:
            // a subscriber that falls further behind than the ring loses the oldest
            // messages, QoS 1 included. 10 MiB lost 2.9 % of a 1,000-device QoS 1 burst
            // to one subscriber (benchmark, 2026-11-24); 128 MiB holds it.
            max_segment_size: 1024 * 1024,
            max_segment_count: 128,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: Some(v5),
        ..Default::default()
    };
    // The mount prefix makes a session's packets longer than the device's.
    let max_packet = config.limits.max_packet_size.saturating_add(64 * 1024);
    // Retained messages and persistent sessions survive a restart with the in-process
    // transport (the front-end sees every packet and every session end there).
    let durable = if listeners {
        None
    } else {
        let d = Durable::load(
            &config.data_dir,
            e.max_queued_messages,
            e.max_retained_per_tenant,
        )
        .map_err(|e| BackendError::Start(e.to_string()))?;
        Some(Arc::new(d))
    };
    let hub = Hub::start(rconfig, max_packet, durable.clone())
        .await
        .map_err(|e| BackendError::Start(e.to_string()))?;
    // Wait until every listener accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in v4_addrs.iter().chain(v5_addrs.iter()) {
        loop {
            match TcpStream::connect(addr.as_str()).await {
                Ok(_) => break,
                Err(err) if Instant::now() > deadline => {
                    return Err(BackendError::Start(format!("{addr}: {err}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    match &login {
        Some(login) => {
            let file = write_credential_file(&config.data_dir, login)?;
            // The file's path, never the password.
            tracing::info!(v4 = ?v4_addrs, v5 = ?v5_addrs, transport = ?e.transport, auth = "front-end credential", credential_file = %file.display(), "embedded rumqttd listening on loopback");
        }
        None => {
            remove_stale_credential_file(&config.data_dir);
            tracing::info!(transport = ?e.transport, "embedded rumqttd reached in-process only (no listener)");
        }
    }
    Ok(BackendPool {
        durable,
        live: LiveSessions::default(),
        hub: (!listeners).then_some(hub),
        v4: v4_addrs,
        v5: v5_addrs,
        login,
        next: AtomicUsize::new(0),
        tls: None,
    })
}

/// A connection of the front-end's own to the backend that measures how long a message
/// takes through it right now: it subscribes to a topic no tenant can reach (tenant
/// prefixes never start with `!`) and times QoS 0 PUBLISH packets to itself. The
/// admission feedback ([`crate::admission::Pressure`]) uses it, because a message's
/// delay through the broker is what connected devices feel.
pub struct Echo {
    io: Box<dyn Io>,
    topic: Vec<u8>,
    buf: bytes::BytesMut,
}

impl Echo {
    /// Connects with MQTT 3.1.1 (clean session, keep-alive 60 s) and subscribes.
    pub async fn connect(pool: &BackendPool) -> std::io::Result<Echo> {
        use tokio::io::AsyncWriteExt;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let client_id = format!("front-end-echo-{nonce:x}");
        let topic = format!("!front-end/echo/{nonce:x}").into_bytes();
        let mut out = bytes::BytesMut::new();
        // Clean session, plus username and password when the backend requires them.
        let flags = if pool.login().is_some() { 0xC2 } else { 0x02 };
        let variable_header = [0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
        let id = client_id.as_bytes();
        let id_len = (id.len() as u16).to_be_bytes();
        let (user, pass) = pool.login().map_or((&[][..], &[][..]), |l| {
            (l.username.as_bytes(), l.password.as_bytes())
        });
        let user_len = (user.len() as u16).to_be_bytes();
        let pass_len = (pass.len() as u16).to_be_bytes();
        let login: [&[u8]; 4] = [&user_len, user, &pass_len, pass];
        let login = if pool.login().is_some() {
            &login[..]
        } else {
            &[]
        };
        let mut parts: Vec<&[u8]> = vec![&variable_header, &id_len, id];
        parts.extend_from_slice(login);
        crate::mqtt::write_packet(&mut out, 0x10, &parts);
        let topic_len = (topic.len() as u16).to_be_bytes();
        crate::mqtt::write_packet(&mut out, 0x82, &[&[0, 1], &topic_len, &topic, &[0]]);
        let mut io = pool.connect(Version::V4).await?;
        io.write_all(&out).await?;
        let mut echo = Echo {
            io,
            topic,
            buf: bytes::BytesMut::with_capacity(256),
        };
        // CONNACK, then SUBACK.
        for expected in [0x20, 0x90] {
            if echo.next_packet().await? & 0xf0 != expected {
                return Err(std::io::Error::other("unexpected answer from the backend"));
            }
        }
        Ok(echo)
    }

    /// Publishes one QoS 0 message to itself and returns how long it took to come back.
    pub async fn round_trip(&mut self) -> std::io::Result<Duration> {
        use tokio::io::AsyncWriteExt;
        let mut publish = bytes::BytesMut::new();
        let topic_len = (self.topic.len() as u16).to_be_bytes();
        crate::mqtt::write_packet(&mut publish, 0x30, &[&topic_len, &self.topic, b"echo"]);
        let sent = Instant::now();
        self.io.write_all(&publish).await?;
        while self.next_packet().await? & 0xf0 != 0x30 {}
        Ok(sent.elapsed())
    }

    /// Reads one packet and returns its first byte.
    async fn next_packet(&mut self) -> std::io::Result<u8> {
        use tokio::io::AsyncReadExt;
        loop {
            match crate::mqtt::frame_len(&self.buf, 4096) {
                Ok(Some(n)) => return Ok(self.buf.split_to(n)[0]),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
