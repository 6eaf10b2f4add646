//! Typed configuration: every field has a default and a doc comment, `validate()` runs
//! at load, and `broker print-config` prints [`DEFAULT_CONFIG_TOML`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory: SQLite store, generated admin password, current server chain.
    pub data_dir: PathBuf,
    /// MQTT over mutual TLS listener.
    pub mqtt_listen: SocketAddr,
    /// Admin REST API over HTTPS (same server certificate).
    pub admin_listen: SocketAddr,
    /// Prometheus metrics over plain HTTP.
    pub metrics_listen: SocketAddr,
    /// Backend: `embedded` (rumqttd in this process), `mqtt://HOST:PORT` or
    /// `mqtts://HOST:PORT` (an external broker cluster).
    pub backend: String,
    /// CA file (PEM) to verify an `mqtts://` backend.
    pub backend_ca: Option<PathBuf>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The embedded rumqttd.
    pub embedded: Embedded,
    /// Outbound requests (CRL distribution points of tenants with online CRL checking).
    pub egress: Egress,
    /// The admin HTTPS listener's limits and timeouts.
    pub admin: crate::listener::AdminLimits,
    /// Deployment-wide trust rules.
    pub trust: Trust,
    /// Where the admin API's state is kept (SQLite in `data_dir`, or a shared PostgreSQL).
    pub store: StoreConfig,
}

/// Where tenants, trust anchors, devices, users and the audit log are kept.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `None`: the SQLite file `data_dir/broker.db`. Otherwise a PostgreSQL database
    /// shared by several front-end nodes, `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// (`?sslmode=require&sslrootcert=FILE` for TLS). Redacted in Debug output.
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "url",
                &self
                    .url
                    .as_deref()
                    .map(admin_api::store::postgres::redact_url),
            )
            .finish()
    }
}

/// Deployment-wide trust rules (a tenant's own choices are its settings, over REST).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Trust {
    /// The reference platform's stricter mode: an uploaded trusted certificate verifies
    /// no device until its proof of possession has succeeded (the signed verification
    /// code, or the management admin's `.../trusted-certificates-pop/{fp}/confirmed`).
    /// Default false: an upload is trusted at once.
    pub require_proof_of_possession: bool,
}

/// The egress policy of outbound requests: by default no loopback, private (RFC 1918,
/// ULA), link-local, multicast, CGNAT, documentation or otherwise reserved destination,
/// checked after name resolution and at every redirect ([`certs::egress`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Egress {
    /// Networks (CIDR, e.g. `10.20.0.0/16`; a bare address is one host) that outbound
    /// requests may reach although they are in a refused range. Empty by default.
    pub allow: Vec<String>,
    /// Largest CRL downloaded, bytes.
    pub max_crl_bytes: usize,
    /// CRL downloads (cache misses) per tenant per minute; more are refused.
    pub crl_fetches_per_minute: u32,
}

impl Default for Egress {
    fn default() -> Self {
        let p = certs::egress::EgressPolicy::default();
        Egress {
            allow: Vec::new(),
            max_crl_bytes: p.max_bytes,
            crl_fetches_per_minute: p.fetches_per_minute,
        }
    }
}

impl Egress {
    /// The policy these settings describe.
    pub fn policy(&self) -> Result<certs::egress::EgressPolicy, ConfigError> {
        let allow = certs::egress::EgressPolicy::parse_allow(&self.allow)
            .map_err(|e| ConfigError::Invalid(format!("egress.allow: {e}")))?;
        Ok(certs::egress::EgressPolicy {
            allow,
            max_bytes: self.max_crl_bytes,
            fetches_per_minute: self.crl_fetches_per_minute,
            ..certs::egress::EgressPolicy::default()
        })
    }
}

/// Limits and timeouts of the MQTT listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum simultaneous device connections (a permit is taken before accept).
    pub max_connections: usize,
    /// TLS handshake timeout, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Time allowed between handshake and a complete CONNECT, milliseconds.
    pub connect_timeout_ms: u64,
    /// Maximum MQTT packet size in bytes, both directions.
    pub max_packet_size: usize,
    /// Grace period for draining sessions at shutdown, milliseconds.
    pub shutdown_grace_ms: u64,
    /// New TLS handshakes admitted per second, all sources together (token bucket;
    /// excess connections are closed before any TLS work).
    pub handshake_rate: u32,
    /// Burst allowance of the global handshake rate.
    pub handshake_burst: u32,
    /// New TLS handshakes admitted per second from one source address.
    pub handshake_rate_per_source: u32,
    /// Burst allowance per source address.
    pub handshake_burst_per_source: u32,
    /// TLS handshakes in progress at once; excess connections are closed.
    pub max_concurrent_handshakes: usize,
    /// A connection that arrives when the handshake rate is used up waits up to this
    /// long (milliseconds) for its turn, holding one of `max_concurrent_handshakes`,
    /// instead of being closed: a reconnect storm drains at the admitted rate without
    /// sending devices into their back-off. Beyond it, or with every slot held, the
    /// connection is closed as before (`refused{reason="handshake_rate"}`). At most half
    /// of `handshake_timeout_ms` is used (the wait counts against it). 0: no wait.
    pub handshake_queue_ms: u64,
    /// Worker threads of the sessions' runtime, which carries every device's packets
    /// once its session is set up (0: one per CPU core, less one for the embedded
    /// broker's router thread; see [`Config::session_threads`]).
    pub session_threads: usize,
    /// Worker threads of the background runtime, which accepts devices and runs TLS
    /// handshakes, session set-up, the admin API and `/metrics` (0: one per CPU core).
    pub handshake_threads: usize,
    /// How many nice levels below the sessions the background threads run (0..=19).
    /// Under a reconnect storm the kernel then serves the established sessions first;
    /// when the node is otherwise idle, handshakes get every core.
    pub handshake_nice: i32,
    /// glibc malloc arenas (`M_ARENA_MAX`; 0: glibc's default of 8 per core). Threads
    /// that share fewer arenas leave fewer half-used pages behind the allocations of
    /// handshakes: about 10 % less memory per idle device. `MALLOC_ARENA_MAX` in the
    /// environment takes precedence. Other C libraries ignore it.
    pub malloc_arenas: usize,
    /// While devices are forwarding packets and the sessions' runtime runs a ready task
    /// later than this (microseconds), the admitted handshake rate is halved, every
    /// 5 ms, down to 1/64; it grows back by 1/256 every 5 ms. The lag is the longer of
    /// the runtime's own and a message's extra time through the backend, smoothed over
    /// about four probes. 0 turns the feedback off.
    pub session_lag_target_us: u64,
    /// Unacknowledged QoS 1/2 PUBLISH packets a device may have in flight towards the
    /// broker (MQTT 5 devices exceeding it get DISCONNECT 0x93).
    pub max_inflight: u32,
    /// TLS handshakes in progress at once from one source (an IPv4 address or an IPv6
    /// /64); excess connections are closed before any TLS work. 0: no per-source cap.
    pub max_handshakes_per_source: usize,
    /// Time from accept until the first byte of the ClientHello, milliseconds; a socket
    /// that sends nothing is closed then rather than after `handshake_timeout_ms`.
    pub first_byte_timeout_ms: u64,
    /// Threads running admin password checks (argon2id, 19 MiB each while it runs;
    /// 0: one per core, at most 4).
    pub password_check_threads: usize,
    /// Password checks that may wait for a thread; beyond it a login gets 503 with
    /// `Retry-After: 1`.
    pub password_check_queue: usize,
    /// Seconds a successful password check is remembered (under an HMAC with a
    /// per-process key; a password change invalidates it). 0 disables it.
    pub login_cache_ttl_s: u64,
}

/// Embedded rumqttd settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Embedded {
    /// MQTT 3.1.1 loopback listeners with the `loopback` transport (each accepts about
    /// 1,000 connections/s; they require the front-end's per-process credential). The
    /// `in_process` transport starts none.
    pub v4_listeners: usize,
    /// MQTT 5 loopback listeners (`loopback` transport only).
    pub v5_listeners: usize,
    /// Maximum connections of the embedded broker.
    pub max_connections: usize,
    /// Maximum in-flight QoS 1/2 messages per connection.
    pub max_inflight: usize,
    /// How sessions reach it: `in_process` (a link into its router, default; rumqttd
    /// then has no listener at all) or `loopback` (a TCP connection to one of its
    /// listeners, as an external broker would be reached; for comparison).
    pub transport: Transport,
    /// Most messages queued for one offline persistent session (stored in the data
    /// directory). When full, the oldest QoS 0 message makes room; without one, the new
    /// message is dropped. Both are counted in `mqtt_session_messages_dropped_total`.
    pub max_queued_messages: usize,
    /// Most retained messages one tenant holds (kept across restarts). A retained
    /// message on a new topic beyond it is refused: MQTT 5 QoS 1/2 publishers get 0x97
    /// "Quota exceeded", others' messages go out live without being retained; counted in
    /// `mqtt_retained_refused_total`.
    pub max_retained_per_tenant: usize,
}

/// How sessions reach the embedded rumqttd.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A link into rumqttd's router: no second socket per session.
    #[default]
    InProcess,
    /// A loopback TCP connection to one of its listeners.
    Loopback,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            mqtt_listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            backend: "embedded".into(),
            backend_ca: None,
            limits: Limits::default(),
            embedded: Embedded::default(),
            egress: Egress::default(),
            admin: crate::listener::AdminLimits::default(),
            trust: Trust::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            max_packet_size: 1024 * 1024,
            shutdown_grace_ms: 5_000,
            handshake_rate: 10_000,
            handshake_burst: 250,
            handshake_rate_per_source: 1_000,
            handshake_burst_per_source: 1_000,
            max_concurrent_handshakes: 512,
            handshake_queue_ms: 2_000,
            session_threads: 0,
            handshake_threads: 0,
            handshake_nice: 10,
            malloc_arenas: 2,
            session_lag_target_us: 500,
            max_inflight: 100,
            max_handshakes_per_source: 64,
            first_byte_timeout_ms: 2_000,
            password_check_threads: 0,
            password_check_queue: 16,
            login_cache_ttl_s: 60,
        }
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            v4_listeners: 4,
            v5_listeners: 2,
            max_connections: 100_000,
            max_inflight: 100,
            transport: Transport::InProcess,
            max_queued_messages: 1000,
            max_retained_per_tenant: 10_000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Invalid TOML or unknown keys.
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The backend the front-end forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// rumqttd in this process.
    Embedded,
    /// An external broker over plain TCP.
    Mqtt(String),
    /// An external broker over TLS.
    Mqtts(String),
}

impl Config {
    /// Reads a TOML file (missing keys take defaults).
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
    }

    /// Worker threads the sessions' runtime gets: `limits.session_threads`, or when
    /// that is 0, one per CPU core less one for the embedded broker's router (at least
    /// one). The router is a single thread, busy whenever the sessions are; a worker
    /// per core beside it only makes the two take turns on the cores, with a wake-up
    /// and a context switch at every turn. With an external broker every core is the
    /// sessions'.
    pub fn session_threads(&self) -> usize {
        if self.limits.session_threads > 0 {
            return self.limits.session_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.backend == "embedded" {
            cores.saturating_sub(1).max(1)
        } else {
            cores
        }
    }

    /// Checks ranges and the backend URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections must be > 0".into(),
            ));
        }
        if l.max_packet_size < 64 || l.max_packet_size > 256 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_packet_size must be between 64 bytes and 256 MiB".into(),
            ));
        }
        if l.handshake_rate == 0
            || l.handshake_burst == 0
            || l.handshake_rate_per_source == 0
            || l.handshake_burst_per_source == 0
            || l.max_concurrent_handshakes == 0
            || l.max_inflight == 0
        {
            return Err(ConfigError::Invalid(
                "handshake rates, bursts, max_concurrent_handshakes and max_inflight must be > 0"
                    .into(),
            ));
        }
        if l.malloc_arenas > 1024 {
            return Err(ConfigError::Invalid(
                "limits.malloc_arenas must be at most 1024".into(),
            ));
        }
        if l.session_threads > 1024 || l.handshake_threads > 1024 {
            return Err(ConfigError::Invalid(
                "limits.session_threads and limits.handshake_threads must be at most 1024".into(),
            ));
        }
        if l.first_byte_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "limits.first_byte_timeout_ms must be > 0".into(),
            ));
        }
        if l.password_check_threads > 64 || l.password_check_queue > 65_536 {
            return Err(ConfigError::Invalid(
                "limits.password_check_threads must be at most 64 and limits.password_check_queue at most 65536".into(),
            ));
        }
        let a = &self.admin;
        if a.max_connections == 0
            || a.max_connections_per_source == 0
            || a.tls_handshake_timeout_ms == 0
            || a.header_read_timeout_ms == 0
            || a.idle_timeout_ms == 0
            || a.request_timeout_ms == 0
            || a.h2_keep_alive_interval_ms == 0
            || a.h2_max_concurrent_streams == 0
        {
            return Err(ConfigError::Invalid(
                "every [admin] limit and timeout must be > 0".into(),
            ));
        }
        if !(0..=19).contains(&l.handshake_nice) {
            return Err(ConfigError::Invalid(
                "limits.handshake_nice must be between 0 and 19".into(),
            ));
        }
        if l.handshake_timeout_ms == 0 || l.connect_timeout_ms == 0 {
            return Err(ConfigError::Invalid("timeouts must be > 0".into()));
        }
        if self.embedded.v4_listeners == 0 || self.embedded.v5_listeners == 0 {
            return Err(ConfigError::Invalid(
                "embedded.v4_listeners and embedded.v5_listeners must be > 0".into(),
            ));
        }
        self.egress.policy()?;
        if self.egress.max_crl_bytes == 0 || self.egress.crl_fetches_per_minute == 0 {
            return Err(ConfigError::Invalid(
                "egress.max_crl_bytes and egress.crl_fetches_per_minute must be > 0".into(),
            ));
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(
                    "store.url must be postgres://USER:PASSWORD@HOST:PORT/DATABASE".into(),
                ));
            }
        }
        if let Backend::Mqtts(_) = self.backend()? {
            if self.backend_ca.is_none() {
                return Err(ConfigError::Invalid(
                    "an mqtts:// backend needs backend_ca (--backend-ca FILE)".into(),
                ));
            }
        }
        Ok(())
    }

    /// The parsed backend.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let b = self.backend.trim();
        if b == "embedded" {
            Ok(Backend::Embedded)
        } else if let Some(a) = b.strip_prefix("mqtt://") {
            Ok(Backend::Mqtt(a.trim_end_matches('/').to_string()))
        } else if let Some(a) = b.strip_prefix("mqtts://") {
            Ok(Backend::Mqtts(a.trim_end_matches('/').to_string()))
        } else {
            Err(ConfigError::Invalid(format!(
                "backend must be 'embedded', mqtt://HOST:PORT or mqtts://HOST:PORT, got '{b}'"
            )))
        }
    }
}

/// The defaults, with comments, as `broker print-config` prints them.
pub const DEFAULT_CONFIG_TOML: &str = r#"# broker configuration (TOML). Every key is optional; shown values are the defaults.
# Command-line flags (--data-dir, --mqtt-listen, ...) override the file.

# SQLite store, generated admin password (admin-password, mode 0600) and the current
# server certificate chain (server.crt, for clients' --cafile).
data_dir = "./data"
# MQTT over mutual TLS: devices authenticate with their certificate only.
mqtt_listen = "0.0.0.0:8883"
# Admin REST API over HTTPS, same server certificate.
admin_listen = "0.0.0.0:8443"
# Prometheus metrics, plain HTTP: keep it on loopback or a private network.
metrics_listen = "127.0.0.1:9464"
# "embedded" (rumqttd in this process), "mqtt://HOST:PORT" or "mqtts://HOST:PORT".
backend = "embedded"
# CA file (PEM) that verifies an mqtts:// backend.
# backend_ca = "/etc/broker/backend-ca.pem"

[limits]
# Simultaneous device connections; a permit is taken before accept.
max_connections = 100000
# TLS handshake must finish within this many milliseconds.
handshake_timeout_ms = 10000
# A complete CONNECT must arrive within this many milliseconds after the handshake.
connect_timeout_ms = 10000
# Largest MQTT packet accepted or forwarded, bytes.
max_packet_size = 1048576
# SIGTERM / Ctrl-C: sessions get this long to drain before a hard stop.
shutdown_grace_ms = 5000
# Admission control: new TLS handshakes per second (token buckets), all sources and
# per source address. Excess connections are closed before any TLS work, so a
# reconnect storm cannot starve the devices already connected. The rate is a ceiling
# for an otherwise idle node: while devices are connected and forwarding, the admitted
# share follows their lag (session_lag_target_us).
handshake_rate = 10000
handshake_burst = 250
handshake_rate_per_source = 1000
handshake_burst_per_source = 1000
# TLS handshakes in progress at once.
max_concurrent_handshakes = 512
# A connection arriving when the handshake rate is used up waits up to this many
# milliseconds for its turn (holding one of max_concurrent_handshakes) instead of being
# closed, so that a reconnect storm drains at the admitted rate without sending devices
# into their back-off. At most half of handshake_timeout_ms is used. 0: closed at once.
handshake_queue_ms = 2000
# Worker threads carrying the devices' packets once their sessions are set up (0: one
# per CPU core, less one for the embedded broker's router, which is busy whenever they
# are: on two cores, one worker forwards ~15% more QoS 1 messages for ~17% less CPU).
session_threads = 0
# Accepting devices, TLS handshakes, session set-up, the admin API and /metrics run on
# background threads (0: one per CPU core), this many nice levels below the sessions,
# so that a storm of new connections takes only the CPU the connected devices leave.
handshake_threads = 0
handshake_nice = 10
# glibc malloc arenas (0: glibc's default, 8 per core). Fewer arenas leave fewer
# half-used pages behind handshakes: about 10 % less memory per idle device.
# MALLOC_ARENA_MAX in the environment takes precedence.
malloc_arenas = 2
# While devices are forwarding packets and the sessions' runtime runs a ready task later
# than this many microseconds, the admitted handshake rate is halved (every 5 ms, down to
# 1/64); it grows back by 1/256 every 5 ms. 0 turns this feedback off.
session_lag_target_us = 500
# Unacknowledged QoS 1/2 PUBLISH packets per device towards the broker.
max_inflight = 100
# TLS handshakes in progress at once from one source (IPv4 address or IPv6 /64): one
# address cannot hold the slots every other device needs. 0: no per-source cap.
max_handshakes_per_source = 64
# A socket that sends no byte of its ClientHello within this many milliseconds is closed.
first_byte_timeout_ms = 2000
# Admin password checks (argon2id, 19 MiB each while it runs): threads (0: one per core,
# at most 4), checks waiting beyond them (more get 503 + Retry-After), and how many
# seconds a successful check is remembered (HMAC-keyed, never the password; 0: never).
password_check_threads = 0
password_check_queue = 16
login_cache_ttl_s = 60

[embedded]
# Sessions reach the embedded rumqttd in-process ("in_process", a link into its router;
# rumqttd then listens on no port at all) or over a loopback TCP connection each
# ("loopback", for comparison).
transport = "in_process"
# Loopback listeners of the embedded rumqttd with the "loopback" transport; each accepts
# about 1,000 connections/s. They accept only the front-end: a CONNECT must carry a
# credential generated at random when the broker starts, written only to
# DATA_DIR/backend-credential (mode 0600) for benchmarks that reach rumqttd directly.
v4_listeners = 4
v5_listeners = 2
max_connections = 100000
max_inflight = 100

[egress]
# Outbound requests (the CRL distribution points of tenants with online CRL checking)
# never go to loopback, private (RFC 1918, IPv6 ULA), link-local, multicast, CGNAT,
# documentation or reserved addresses, checked after name resolution and at every
# redirect; http:// and https:// (system roots) only. Networks listed here (CIDR, e.g.
# "10.20.0.0/16") are allowed anyway, e.g. an internal PKI's CRL server.
allow = []
# Largest CRL downloaded, bytes.
max_crl_bytes = 33554432
# CRL downloads (cache misses) per tenant per minute; more are refused (fail closed).
crl_fetches_per_minute = 60

[admin]
# The admin HTTPS listener. Connections at once, in all and from one source (IPv4
# address or IPv6 /64); over a cap the newest connection is closed, accepting never stops.
max_connections = 1024
max_connections_per_source = 32
# Milliseconds: TLS handshake; an HTTP/1.1 request head (also ends idle keep-alive); a
# connection with no request in progress; one request until its answer starts (408).
tls_handshake_timeout_ms = 5000
header_read_timeout_ms = 10000
idle_timeout_ms = 60000
request_timeout_ms = 60000
# HTTP/2: PING interval (milliseconds) and streams at once per connection.
h2_keep_alive_interval_ms = 20000
h2_max_concurrent_streams = 32

[trust]
# An uploaded trusted certificate verifies no device until its proof of possession has
# succeeded (or the management admin confirmed it): the reference platform's strict mode.
require_proof_of_possession = false

[store]
# Tenants, trust anchors, devices, users and the audit log live in the SQLite file
# DATA_DIR/broker.db unless a PostgreSQL database is named here: several front-end nodes
# on one database share them (README "Running several nodes"). TLS to the database with
# "?sslmode=require&sslrootcert=FILE" (the server's certificate is always verified).
# Also --store URL or BROKER_STORE_URL; the password is never logged.
# url = "postgres://frontend:PASSWORD@db.internal:5432/frontend"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_are_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn malloc_arenas_default_to_two_and_are_bounded() {
        let mut c = Config::default();
        assert_eq!(c.limits.malloc_arenas, 2);
        c.limits.malloc_arenas = 0;
        c.validate().unwrap();
        c.limits.malloc_arenas = 1025;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: limits.malloc_arenas must be at most 1024"
        );
    }

    #[test]
    fn the_sessions_get_every_core_but_the_embedded_routers() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut c = Config::default();
        assert_eq!(c.session_threads(), (cores - 1).max(1));
        c.backend = "mqtt://127.0.0.1:1883".into();
        assert_eq!(c.session_threads(), cores);
        c.limits.session_threads = 3;
        assert_eq!(c.session_threads(), 3);
        c.limits.session_threads = 1025;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: limits.session_threads and limits.handshake_threads must be at most 1024"
        );
    }

    #[test]
    fn the_store_url_is_checked_and_its_password_never_printed() {
        let c: Config = toml::from_str(
            "[store]\nurl = \"postgres://fe:hunter2-secret@db:5432/frontend?sslmode=disable\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2-secret"), "{debug}");
        assert!(
            debug.contains("postgres://fe:<redacted>@db:5432/frontend?sslmode=disable"),
            "{debug}"
        );
        let c = Config {
            store: StoreConfig {
                url: Some("mysql://x".into()),
            },
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("store.url"));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = Config {
            backend: "http://x".into(),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backend must be"));
        c.backend = "mqtts://127.0.0.1:8883".into();
        assert!(c.validate().unwrap_err().to_string().contains("backend_ca"));
        assert!(toml::from_str::<Config>("nope = 1").is_err());
        c.backend = "embedded".into();
        c.egress.allow = vec!["10.0.0.0/8".into(), "127.0.0.1".into()];
        c.validate().unwrap();
        c.egress.allow.push("localhost".into());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: egress.allow: 'localhost' is not a network in CIDR form (e.g. 10.1.0.0/16)"
        );
    }
}
