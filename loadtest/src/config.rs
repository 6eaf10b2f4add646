//! Typed configuration of one load-test run, its validation, and the loopback-only rule.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest fleet one run may simulate.
pub const MAX_DEVICES: usize = 100_000;
/// Largest number of subscribers one run may open.
pub const MAX_SUBSCRIBERS: usize = 100;
/// Upper bound of `devices * messages` (each subscriber keeps one bit per message).
pub const MAX_TOTAL_MESSAGES: u64 = 100_000_000;
/// Longest run allowed.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Largest source-address list.
pub const MAX_SOURCE_IPS: usize = 4096;
/// Bytes at the start of every payload: send time (u64 ns), device index (u32), sequence (u32).
pub const PAYLOAD_HEADER: usize = 16;

/// How devices arrive at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Devices connect at `connect_rate` per second.
    #[default]
    Steady,
    /// Every device connects at once, as after an outage, bounded only by `concurrency`.
    Storm,
    /// Like steady; once all devices have connected, the CA is disabled over REST and the
    /// time until every session is closed (and no reconnect succeeds) is measured.
    Revoke,
    /// The product's EST enrollment: the run's CA is imported as the tenant's certificate
    /// authority (with its key); like steady, and once all devices have connected every
    /// device renews its certificate over EST (`simplereenroll`, authenticated by its
    /// current certificate) while its MQTT session stays open. Reports the renewals, their
    /// latency, and the sessions lost meanwhile (should be 0).
    Rotate,
}

/// Key algorithm of the generated CA and device keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256, one key per device.
    #[default]
    P256,
    /// RSA 2048 with SHA-256. Generating RSA keys is slow, so a pool of at most
    /// [`crate::RSA_KEY_POOL`] keys is shared round-robin between the device
    /// certificates (each certificate is still unique; the broker's work is the same).
    Rsa2048,
}

/// MQTT protocol version spoken by devices and subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0 (protocol level 5).
    #[serde(rename = "5")]
    V5,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Steady => "steady",
            Scenario::Storm => "storm",
            Scenario::Revoke => "revoke",
            Scenario::Rotate => "rotate",
        })
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyType::P256 => "p256",
            KeyType::Rsa2048 => "rsa2048",
        })
    }
}

impl std::fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

/// An MQTT username and password sent in CONNECT. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Login {
    /// Reads a credentials file: the username on the first line, the password on the
    /// second, nothing else (the format of the product's `data/backend-credential`). A
    /// file path rather than the password itself keeps the password out of the process
    /// list.
    pub fn from_file(path: &std::path::Path) -> Result<Login, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        Login::parse(&text).map_err(|what| {
            Error::Config(format!(
                "{}: {what}; expected the username on the first line and the password on the second",
                path.display()
            ))
        })
    }

    fn parse(text: &str) -> Result<Login, &'static str> {
        let mut lines = text.lines();
        let username = lines.next().unwrap_or_default();
        let password = lines.next().ok_or("no password line")?;
        if username.is_empty() {
            return Err("empty username");
        }
        if password.is_empty() {
            return Err("empty password");
        }
        if lines.any(|l| !l.is_empty()) {
            return Err("more than two lines");
        }
        if username.len() > usize::from(u16::MAX) || password.len() > usize::from(u16::MAX) {
            return Err("username or password longer than 65535 bytes");
        }
        Ok(Login {
            username: username.to_string(),
            password: password.to_string(),
        })
    }
}

/// Everything one run needs. Start from [`Config::default`] and set what differs:
///
/// ```
/// let config = loadtest::Config {
///     broker: "127.0.0.1:8883".into(),
///     devices: 100,
///     server_ca: Some("server-ca.pem".into()),
///     ca_cert: Some("ca.pem".into()),
///     ca_key: Some("ca.key".into()),
///     upload: false,
///     ..loadtest::Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// MQTT-over-TLS address of the broker, `HOST:PORT`; must resolve to loopback. Several
    /// comma-separated addresses spread the devices round-robin over them (device `i` goes
    /// to address `i % n`), for brokers with several listeners.
    pub broker: String,
    /// Plain TCP instead of mutual TLS: no certificates, no upload, ClientIds made unique per
    /// run. For reaching a broker's loopback-only plain listener directly (the product's
    /// embedded rumqttd with `embedded.transport = "loopback"`), which has no TLS.
    pub plain: bool,
    /// MQTT username and password put in every CONNECT (`--plain` only), e.g. the
    /// product's embedded rumqttd credential read with [`Login::from_file`].
    pub login: Option<Login>,
    /// Number of simulated devices (1..=[`MAX_DEVICES`]).
    pub devices: usize,
    /// New connections per second in the steady and revoke scenarios.
    pub connect_rate: f64,
    /// Most connection attempts (TCP connect to CONNACK) in flight at once.
    pub concurrency: usize,
    /// Pause between two PUBLISH of one device (zero: as fast as the in-flight window allows).
    pub publish_interval: Duration,
    /// PUBLISH packets each device sends.
    pub messages: u32,
    /// Tenant to create (and upload the CA to); a unique one per run when `None`.
    pub tenant: Option<String>,
    /// Payload size in bytes (at least [`PAYLOAD_HEADER`]).
    pub payload: usize,
    /// QoS of publications and subscriptions (0, 1 or 2).
    pub qos: u8,
    /// Extra clients subscribed to every device topic of the run, timing each message.
    pub subscribers: usize,
    /// Hard limit on the run (connecting, publishing, draining), excluding certificate
    /// generation.
    pub duration: Duration,
    /// Key algorithm of generated certificates.
    pub key_type: KeyType,
    /// MQTT protocol version.
    pub mqtt: MqttVersion,
    /// Source addresses bound round-robin before each connect; `None` picks
    /// 127.0.0.1-127.0.0.16 for an IPv4 broker and lets the kernel choose for IPv6.
    pub source_ips: Option<Vec<IpAddr>>,
    /// Arrival pattern.
    pub scenario: Scenario,
    /// Broker process whose resident memory is reported before and after the run.
    pub broker_pid: Option<u32>,
    /// Admin API base URL (`https://127.0.0.1:PORT`), needed to upload the CA.
    pub admin: Option<String>,
    /// Management user of the admin API.
    pub admin_user: String,
    /// Password of `admin_user`.
    pub admin_password: Option<String>,
    /// Existing CA certificate (PEM) to sign device certificates with instead of a new CA.
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Create a tenant and upload the CA through the admin API (`false`: the broker already
    /// trusts `ca_cert`).
    pub upload: bool,
    /// PEM file with the certificate(s) that verify the broker's TLS certificate (MQTT and
    /// admin API).
    pub server_ca: Option<PathBuf>,
    /// MQTT keep-alive announced in CONNECT; a PINGREQ is sent when a session is idle this long.
    pub keep_alive: Duration,
    /// Limit for one connection attempt (TCP connect, handshake, CONNACK).
    pub connect_timeout: Duration,
    /// How long to wait for subscribers to receive outstanding messages after the last
    /// device finished publishing.
    pub drain_timeout: Duration,
    /// Once every device has connected and published, keep the sessions open (idle) this
    /// long before the broker's memory is read and the run ends.
    pub hold: Duration,
    /// Devices start publishing only once every device's first connection attempt has
    /// resolved, so the publish figures are taken with the whole fleet connected.
    pub sync_start: bool,
    /// Show a live progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// How many times a device tries again, as real devices do, after a connection
    /// attempt the broker turned away before its TLS handshake (admission control: rate
    /// or concurrency limits) or that timed out; waits 250 ms, doubled each time up to
    /// 4 s, between attempts. Refusals of the certificate or the CONNECT are final.
    pub connect_retries: u32,
    /// Keep the tenant the run created (default: deleted at the end of the run, with
    /// everything it owns).
    pub keep_tenant: bool,
    /// EST base URL of the product (`https://127.0.0.1:8444`), for the rotate scenario;
    /// loopback only, verified with `server_ca`.
    pub est: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: "127.0.0.1:8883".into(),
            plain: false,
            login: None,
            devices: 100,
            connect_rate: 500.0,
            concurrency: 256,
            publish_interval: Duration::from_millis(100),
            messages: 10,
            tenant: None,
            payload: 64,
            qos: 1,
            subscribers: 1,
            duration: Duration::from_secs(120),
            key_type: KeyType::P256,
            mqtt: MqttVersion::V311,
            source_ips: None,
            scenario: Scenario::Steady,
            broker_pid: None,
            admin: None,
            admin_user: "management/admin".into(),
            admin_password: None,
            ca_cert: None,
            ca_key: None,
            upload: true,
            server_ca: None,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(3),
            hold: Duration::ZERO,
            sync_start: false,
            progress: false,
            connect_retries: 5,
            keep_tenant: false,
            est: None,
        }
    }
}

impl Config {
    /// Checks ranges and combinations; resolves nothing (see [`resolve_loopback`]).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.devices == 0 || self.devices > MAX_DEVICES {
            return bad(format!(
                "--devices must be between 1 and {MAX_DEVICES}, got {}",
                self.devices
            ));
        }
        if self.subscribers > MAX_SUBSCRIBERS {
            return bad(format!(
                "--subscribers must be at most {MAX_SUBSCRIBERS}, got {}",
                self.subscribers
            ));
        }
        let total = self.devices as u64 * u64::from(self.messages);
        if total > MAX_TOTAL_MESSAGES {
            return bad(format!(
                "--devices x --messages is {total}, more than {MAX_TOTAL_MESSAGES}"
            ));
        }
        if !(self.connect_rate.is_finite() && self.connect_rate > 0.0) {
            return bad(format!(
                "--connect-rate must be a positive number, got {}",
                self.connect_rate
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_DEVICES {
            return bad(format!(
                "--concurrency must be between 1 and {MAX_DEVICES}, got {}",
                self.concurrency
            ));
        }
        if self.qos > 2 {
            return bad(format!("--qos must be 0, 1 or 2, got {}", self.qos));
        }
        if self.payload < PAYLOAD_HEADER || self.payload > 256 * 1024 {
            return bad(format!(
                "--payload must be between {PAYLOAD_HEADER} and 262144 bytes, got {}",
                self.payload
            ));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "--duration must be between 1 and {} seconds",
                MAX_DURATION.as_secs()
            ));
        }
        if self.keep_alive.is_zero() || self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return bad("keep-alive must be between 1 and 65535 seconds".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect timeout must be positive".into());
        }
        if self.hold > MAX_DURATION {
            return bad(format!(
                "--hold must be at most {} seconds",
                MAX_DURATION.as_secs()
            ));
        }
        if self.broker.split(',').any(|b| b.trim().is_empty()) {
            return bad(format!(
                "--broker must be HOST:PORT[,HOST:PORT...], got {:?}",
                self.broker
            ));
        }
        if self.plain {
            if self.upload {
                return bad("--plain has no certificates: it runs without an upload".into());
            }
            if matches!(self.scenario, Scenario::Revoke | Scenario::Rotate) {
                return bad(format!(
                    "--scenario {} needs certificates, not --plain",
                    self.scenario
                ));
            }
            return self.validate_common();
        }
        if self.login.is_some() {
            return bad("--credentials-file is for --plain (over mutual TLS the certificate authenticates the device)".into());
        }
        if self.server_ca.is_none() {
            return bad(
                "--server-ca is required: the PEM that verifies the broker's TLS certificate"
                    .into(),
            );
        }
        match (&self.ca_cert, &self.ca_key) {
            (Some(_), None) | (None, Some(_)) => {
                return bad("--ca-cert and --ca-key go together".into())
            }
            (None, None) if !self.upload => {
                return bad(
                    "--no-upload needs --ca-cert and --ca-key: a CA the broker already trusts"
                        .into(),
                )
            }
            _ => {}
        }
        if self.upload {
            if self.admin.is_none() {
                return bad(
                    "uploading the CA needs --admin URL (or use --ca-cert/--ca-key/--no-upload)"
                        .into(),
                );
            }
            if self.admin_password.as_deref().unwrap_or("").is_empty() {
                return bad(
                    "uploading the CA needs --admin-password or BROKER_ADMIN_PASSWORD".into(),
                );
            }
        }
        if self.scenario == Scenario::Revoke && !self.upload {
            return bad("--scenario revoke disables the uploaded CA over REST, so it cannot run with --no-upload".into());
        }
        if self.scenario == Scenario::Rotate {
            if !self.upload {
                return bad("--scenario rotate imports the CA as the tenant's EST certificate authority over REST, so it cannot run with --no-upload".into());
            }
            if self.est.is_none() || self.server_ca.is_none() {
                return bad("--scenario rotate needs --est URL and --server-ca".into());
            }
        }
        self.validate_common()
    }

    /// Checks that hold with and without TLS: the tenant name and the source addresses.
    fn validate_common(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(t) = &self.tenant {
            // The product's rule for tenant ids.
            let ok = (1..=32).contains(&t.len())
                && t.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                })
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return bad(format!(
                    "--tenant must be 1-32 characters of [a-z0-9_-] starting with a letter or digit, got {t:?}"
                ));
            }
        }
        if let Some(ips) = &self.source_ips {
            if ips.is_empty() {
                return bad("--source-ips is empty".into());
            }
            for ip in ips {
                if !is_loopback(*ip) {
                    return Err(Error::NotLoopback {
                        what: "--source-ips",
                        value: ip.to_string(),
                        addr: *ip,
                    });
                }
            }
        }
        Ok(())
    }
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves `HOST:PORT` and insists that every address it resolves to is loopback.
/// Returns the first address, IPv4 preferred.
pub fn resolve_loopback(what: &'static str, host_port: &str) -> Result<SocketAddr, Error> {
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| Error::Resolve {
            what,
            value: host_port.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Resolve {
            what,
            value: host_port.to_string(),
            reason: "no address".into(),
        });
    }
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(Error::NotLoopback {
            what,
            value: host_port.to_string(),
            addr: bad.ip(),
        });
    }
    let pick = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied();
    pick.ok_or_else(|| Error::Resolve {
        what,
        value: host_port.to_string(),
        reason: "no address".into(),
    })
}

/// Splits `HOST:PORT` (`[v6]:PORT` too) into the host (without brackets) and the port.
pub fn split_host_port(what: &'static str, s: &str) -> Result<(String, u16), Error> {
    let err = || Error::Config(format!("{what} must be HOST:PORT, got {s:?}"));
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    let port: u16 = port.parse().map_err(|_| err())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(err());
    }
    Ok((host.to_string(), port))
}

/// Parses a source-address list: comma-separated items, each a single address or an
/// inclusive IPv4 range `A-B` (for example `127.0.0.1-127.0.0.20`). Every address must be
/// loopback.
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, Error> {
    let bad = |m: String| Error::Config(format!("--source-ips: {m}"));
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(bad(format!("empty item in {s:?}")));
        }
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| bad(format!("{b:?} is not an IPv4 address")))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if hi < lo {
                return Err(bad(format!("range {item:?} ends before it starts")));
            }
            if (hi - lo) as usize >= MAX_SOURCE_IPS {
                return Err(bad(format!(
                    "range {item:?} has more than {MAX_SOURCE_IPS} addresses"
                )));
            }
            for n in lo..=hi {
                out.push(IpAddr::V4(Ipv4Addr::from(n)));
            }
        } else {
            let ip: IpAddr = item
                .parse()
                .map_err(|_| bad(format!("{item:?} is not an IP address")))?;
            out.push(ip);
        }
        if out.len() > MAX_SOURCE_IPS {
            return Err(bad(format!("more than {MAX_SOURCE_IPS} addresses")));
        }
    }
    if let Some(ip) = out.iter().find(|ip| !is_loopback(**ip)) {
        return Err(Error::NotLoopback {
            what: "--source-ips",
            value: s.to_string(),
            addr: *ip,
        });
    }
    Ok(out)
}

/// The source addresses to use for a broker at `broker`: the configured list (which must
/// match the broker's address family), or the default.
pub(crate) fn effective_source_ips(
    configured: Option<&[IpAddr]>,
    broker: SocketAddr,
) -> Result<Vec<IpAddr>, Error> {
    match configured {
        Some(list) => {
            if let Some(ip) = list.iter().find(|ip| ip.is_ipv4() != broker.is_ipv4()) {
                return Err(Error::Config(format!(
                    "--source-ips {ip} is not of the same address family as the broker {broker}"
                )));
            }
            Ok(list.to_vec())
        }
        None if broker.is_ipv4() => Ok((1..=16u8)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
            .collect()),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            server_ca: Some("ca.pem".into()),
            ca_cert: Some("c.pem".into()),
            ca_key: Some("k.pem".into()),
            upload: false,
            ..Config::default()
        }
    }

    #[test]
    fn source_ip_range_expands_inclusively() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.20").expect("valid range");
        assert_eq!(ips.len(), 20);
        assert_eq!(ips[0], "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(ips[19], "127.0.0.20".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn source_ip_lists_and_single_addresses() {
        let ips = parse_source_ips("127.0.0.5, 127.0.1.254-127.0.2.1,::1").expect("valid");
        let s: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            s,
            [
                "127.0.0.5",
                "127.0.1.254",
                "127.0.1.255",
                "127.0.2.0",
                "127.0.2.1",
                "::1"
            ]
        );
    }

    #[test]
    fn source_ip_errors() {
        assert!(matches!(
            parse_source_ips("127.0.0.9-127.0.0.1"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parse_source_ips("127.0.0.x"),
            Err(Error::Config(_))
        ));
        assert!(matches!(parse_source_ips(""), Err(Error::Config(_))));
        assert!(matches!(
            parse_source_ips("127.0.0.1,"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parse_source_ips("127.0.0.0-127.255.255.255"),
            Err(Error::Config(_))
        ));
        // A range that leaves 127.0.0.0/8 is refused.
        assert!(matches!(
            parse_source_ips("127.255.255.254-128.0.0.1"),
            Err(Error::NotLoopback { .. })
        ));
        assert!(matches!(
            parse_source_ips("10.0.0.1"),
            Err(Error::NotLoopback { .. })
        ));
    }

    #[test]
    fn loopback_rule() {
        assert!(is_loopback("127.0.0.1".parse().expect("ip")));
        assert!(is_loopback("127.200.3.4".parse().expect("ip")));
        assert!(is_loopback("::1".parse().expect("ip")));
        assert!(is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("128.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("10.1.2.3".parse().expect("ip")));
        assert!(!is_loopback("192.168.1.1".parse().expect("ip")));
        assert!(!is_loopback("::".parse().expect("ip")));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().expect("ip")));

        let a = resolve_loopback("--broker", "127.0.0.1:8883").expect("loopback");
        assert_eq!(a, "127.0.0.1:8883".parse().expect("addr"));
        let a = resolve_loopback("--broker", "[::1]:8883").expect("loopback");
        assert_eq!(a, "[::1]:8883".parse().expect("addr"));
        let a = resolve_loopback("--broker", "localhost:8883").expect("localhost is loopback");
        assert!(a.ip().is_loopback());

        for target in [
            "10.0.0.1:8883",
            "8.8.8.8:53",
            "192.168.0.10:1883",
            "[2001:db8::1]:1",
        ] {
            match resolve_loopback("--broker", target) {
                Err(Error::NotLoopback { what, .. }) => assert_eq!(what, "--broker"),
                other => panic!("{target} must be refused, got {other:?}"),
            }
        }
        assert!(matches!(
            resolve_loopback("--broker", "127.0.0.1"),
            Err(Error::Resolve { .. })
        ));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("--broker", "localhost:8883").expect("ok"),
            ("localhost".to_string(), 8883)
        );
        assert_eq!(
            split_host_port("--broker", "[::1]:1").expect("ok"),
            ("::1".to_string(), 1)
        );
        assert!(split_host_port("--broker", "localhost").is_err());
        assert!(split_host_port("--broker", "localhost:0").is_err());
        assert!(split_host_port("--broker", ":80").is_err());
    }

    #[test]
    fn default_source_ips_follow_the_broker_family() {
        let v4: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let v6: SocketAddr = "[::1]:1".parse().expect("addr");
        assert_eq!(effective_source_ips(None, v4).expect("ok").len(), 16);
        assert!(effective_source_ips(None, v6).expect("ok").is_empty());
        let list = parse_source_ips("127.0.0.1-127.0.0.3").expect("ok");
        assert_eq!(effective_source_ips(Some(&list), v4).expect("ok"), list);
        assert!(effective_source_ips(Some(&list), v6).is_err());
    }

    #[test]
    fn plain_mode_needs_no_certificates_and_uploads_nothing() {
        let plain = Config {
            plain: true,
            upload: false,
            server_ca: None,
            ca_cert: None,
            ca_key: None,
            broker: "127.0.0.1:1883,127.0.0.1:1884".into(),
            ..Config::default()
        };
        assert!(plain.validate().is_ok());
        assert!(Config {
            upload: true,
            ..plain.clone()
        }
        .validate()
        .is_err());
        assert!(Config {
            scenario: Scenario::Revoke,
            ..plain.clone()
        }
        .validate()
        .is_err());
        assert!(Config {
            broker: "127.0.0.1:1883,".into(),
            ..plain.clone()
        }
        .validate()
        .is_err());
        assert!(Config {
            source_ips: Some(vec!["10.0.0.1".parse().expect("ip")]),
            ..plain.clone()
        }
        .validate()
        .is_err());
        // Without --plain the server CA is still required.
        assert!(Config {
            plain: false,
            ..plain.clone()
        }
        .validate()
        .is_err());
        // A login is for plain mode only.
        let login = Login {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(Config {
            login: Some(login.clone()),
            ..plain
        }
        .validate()
        .is_ok());
        let err = valid_with_login(login)
            .validate()
            .expect_err("login over TLS");
        assert!(
            err.to_string()
                .contains("--credentials-file is for --plain"),
            "{err}"
        );
    }

    fn valid_with_login(login: Login) -> Config {
        Config {
            login: Some(login),
            ..valid()
        }
    }

    #[test]
    fn credentials_file_is_username_then_password() {
        let ok = Login::parse("!front-end\n0123abcd\n").expect("two lines");
        assert_eq!(ok.username, "!front-end");
        assert_eq!(ok.password, "0123abcd");
        assert!(
            !format!("{ok:?}").contains("0123abcd"),
            "Debug hides the password"
        );
        assert_eq!(Login::parse("u\r\np").expect("CRLF").password, "p");
        assert_eq!(Login::parse("u\n"), Err("no password line"));
        assert_eq!(Login::parse(""), Err("no password line"));
        assert_eq!(Login::parse("\np\n"), Err("empty username"));
        assert_eq!(Login::parse("u\n\n"), Err("empty password"));
        assert_eq!(Login::parse("u\np\nx\n"), Err("more than two lines"));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credential");
        std::fs::write(&path, "u\n").expect("write");
        let err = Login::from_file(&path).expect_err("one line");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid configuration: {}: no password line; expected the username on the first line and the password on the second",
                path.display()
            )
        );
        let err = Login::from_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, Error::File { .. }), "{err}");
    }

    #[test]
    fn validation_bounds() {
        assert!(valid().validate().is_ok());
        let cases: Vec<(&str, Config)> = vec![
            (
                "zero devices",
                Config {
                    devices: 0,
                    ..valid()
                },
            ),
            (
                "too many devices",
                Config {
                    devices: MAX_DEVICES + 1,
                    ..valid()
                },
            ),
            ("qos 3", Config { qos: 3, ..valid() }),
            (
                "tiny payload",
                Config {
                    payload: 8,
                    ..valid()
                },
            ),
            (
                "zero duration",
                Config {
                    duration: Duration::ZERO,
                    ..valid()
                },
            ),
            (
                "long duration",
                Config {
                    duration: Duration::from_secs(7200),
                    ..valid()
                },
            ),
            (
                "no server ca",
                Config {
                    server_ca: None,
                    ..valid()
                },
            ),
            (
                "negative rate",
                Config {
                    connect_rate: -1.0,
                    ..valid()
                },
            ),
            (
                "nan rate",
                Config {
                    connect_rate: f64::NAN,
                    ..valid()
                },
            ),
            (
                "zero concurrency",
                Config {
                    concurrency: 0,
                    ..valid()
                },
            ),
            (
                "key without cert",
                Config {
                    ca_cert: None,
                    ..valid()
                },
            ),
            (
                "no-upload without CA",
                Config {
                    ca_cert: None,
                    ca_key: None,
                    ..valid()
                },
            ),
            (
                "upload without admin",
                Config {
                    upload: true,
                    ..valid()
                },
            ),
            (
                "revoke without upload",
                Config {
                    scenario: Scenario::Revoke,
                    ..valid()
                },
            ),
            (
                "bad tenant",
                Config {
                    tenant: Some("a/b".into()),
                    ..valid()
                },
            ),
            (
                "upper-case tenant",
                Config {
                    tenant: Some("Acme".into()),
                    ..valid()
                },
            ),
            (
                "tenant starting with -",
                Config {
                    tenant: Some("-acme".into()),
                    ..valid()
                },
            ),
            (
                "long tenant",
                Config {
                    tenant: Some("a".repeat(33)),
                    ..valid()
                },
            ),
            (
                "too many messages",
                Config {
                    devices: 100_000,
                    messages: 1001,
                    ..valid()
                },
            ),
            (
                "non-loopback source",
                Config {
                    source_ips: Some(vec!["10.0.0.1".parse().expect("ip")]),
                    ..valid()
                },
            ),
        ];
        for (name, c) in cases {
            assert!(c.validate().is_err(), "{name} must be refused");
        }
        let upload = Config {
            upload: true,
            admin: Some("https://127.0.0.1:8443".into()),
            admin_password: Some("pw".into()),
            scenario: Scenario::Revoke,
            ..valid()
        };
        assert!(upload.validate().is_ok());
        let named = Config {
            tenant: Some("acme_2-x".into()),
            ..upload.clone()
        };
        assert!(named.validate().is_ok());
        assert!(Config {
            admin_password: None,
            ..upload
        }
        .validate()
        .is_err());
    }
}
