//! Test harness: a real broker on loopback port 0 with a real SQLite data dir, a real
//! HTTPS client for the admin API, and real MQTT clients over mTLS.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use serde_json::{json, Value};

pub const ADMIN_PW: &str = "management-secret-1";

pub struct Env {
    pub broker: Option<broker::Broker>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
    pub server_ca: String,
}

pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start() -> Env {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut broker::Config)) -> Env {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, f).await
}

pub async fn start_in(dir: tempfile::TempDir, f: impl FnOnce(&mut broker::Config)) -> Env {
    let mut config = broker::Config {
        data_dir: dir.path().to_path_buf(),
        mqtt_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        est_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.embedded.v4_listeners = 1;
    config.embedded.v5_listeners = 1;
    config.limits.shutdown_grace_ms = 500;
    f(&mut config);
    let b = broker::start(config, Some(ADMIN_PW.into())).await.unwrap();
    let server_ca = b.server_chain_pem();
    let http = https_client(&server_ca);
    let base = format!("https://localhost:{}", b.admin_addr.port());
    Env {
        broker: Some(b),
        dir,
        http,
        base,
        server_ca,
    }
}

pub fn roots(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs::pem::read_certificates(pem.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

pub fn https_client(server_ca: &str) -> reqwest::Client {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(server_ca))
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
}

impl Env {
    pub fn broker(&self) -> &broker::Broker {
        self.broker.as_ref().unwrap()
    }

    /// The Prometheus text exposition.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.broker().metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.broker().mqtt_addr.port()
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
        pass: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(user, Some(pass));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a tenant with admin `admin` / `<tenant>-pw-1`.
    pub async fn tenant(&self, id: &str) {
        let (s, b) = self
            .api(
                reqwest::Method::POST,
                "/tenant/tenants",
                "management/admin",
                ADMIN_PW,
                Some(json!({"id": id, "company": id, "adminName": "admin", "adminPass": format!("{id}-pw-1")})),
            )
            .await;
        assert_eq!(s, 201, "create tenant {id}: {b}");
    }

    pub async fn as_tenant(
        &self,
        tenant: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.api(
            method,
            path,
            &format!("{tenant}/admin"),
            &format!("{tenant}-pw-1"),
            body,
        )
        .await
    }

    /// The tenant's recent refusals (`GET .../refusals`, as its admin), newest first.
    pub async fn refusals(&self, tenant: &str) -> Vec<Value> {
        let (s, body) = self
            .as_tenant(
                tenant,
                reqwest::Method::GET,
                &format!("/tenant/tenants/{tenant}/refusals"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{body}");
        body["refusals"].as_array().unwrap().clone()
    }

    /// Uploads a CA for a tenant; returns its fingerprint.
    pub async fn upload(&self, tenant: &str, ca: &Issued, auto_registration: bool) -> String {
        let (s, b) = self
            .as_tenant(
                tenant,
                reqwest::Method::POST,
                &format!("/tenant/tenants/{tenant}/trusted-certificates"),
                Some(json!({
                    "status": "ENABLED",
                    "name": "ca",
                    "autoRegistrationEnabled": if auto_registration { "true" } else { "false" },
                    "certInPemFormat": ca.cert_pem(),
                })),
            )
            .await;
        assert_eq!(s, 201, "upload: {b}");
        b["fingerprint"].as_str().unwrap().to_string()
    }

    /// Changes a tenant's settings as its admin (expects 200).
    pub async fn settings(&self, tenant: &str, settings: Value) {
        let (s, b) = self
            .as_tenant(
                tenant,
                reqwest::Method::PUT,
                &format!("/tenant/tenants/{tenant}/settings"),
                Some(settings),
            )
            .await;
        assert_eq!(s, 200, "settings: {b}");
    }

    /// Changes a tenant's settings as the management admin (the limits are its own).
    pub async fn settings_as_management(&self, tenant: &str, settings: Value) {
        let (s, b) = self
            .api(
                reqwest::Method::PUT,
                &format!("/tenant/tenants/{tenant}/settings"),
                "management/admin",
                ADMIN_PW,
                Some(settings),
            )
            .await;
        assert_eq!(s, 200, "settings: {b}");
    }

    /// Revokes `dev` by serial number in the tenant's manual list (expects 2xx).
    pub async fn revoke_serial(&self, tenant: &str, dev: &Issued) {
        let serial = certs::CertInfo::parse(dev.cert_der.as_ref())
            .unwrap()
            .serial_hex;
        let (s, b) = self
            .as_tenant(
                tenant,
                reqwest::Method::PUT,
                "/tenant/trusted-certificates/settings/crl",
                Some(json!({"crls": [{"serialNumberInHex": serial}]})),
            )
            .await;
        assert!((200..300).contains(&s), "revoke: {s} {b}");
    }

    pub async fn set_status(&self, tenant: &str, fp: &str, status: &str) {
        let (s, b) = self
            .as_tenant(
                tenant,
                reqwest::Method::PUT,
                &format!("/tenant/tenants/{tenant}/trusted-certificates/{fp}"),
                Some(json!({"status": status})),
            )
            .await;
        assert_eq!(s, 200, "set status: {b}");
    }
}

pub fn ca(cn: &str) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .unwrap()
}

pub fn intermediate(cn: &str, parent: &Issued) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        Some(&parent.issuer().unwrap()),
    )
    .unwrap()
}

pub fn device(cn: &str, ca: &Issued) -> Issued {
    issue::device(
        cn,
        Validity::days(30),
        KeyType::P256,
        &ca.issuer().unwrap(),
        &[],
    )
    .unwrap()
}

/// A device certificate of `ca` that expired yesterday.
pub fn expired_device(cn: &str, ca: &Issued) -> Issued {
    let now = time::OffsetDateTime::now_utc();
    issue::device(
        cn,
        Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        },
        KeyType::P256,
        &ca.issuer().unwrap(),
        &[],
    )
    .unwrap()
}

/// A TLS client config that trusts the server and has no client certificate.
pub fn anonymous_tls(server_ca: &str) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(server_ca))
    .with_no_client_auth()
}

/// A device's TLS client config: chain = device + `chain` (as devices are told to send).
pub fn device_tls(server_ca: &str, dev: &Issued, chain: &[&Issued]) -> Arc<rustls::ClientConfig> {
    let mut certs_chain = vec![dev.cert_der.clone()];
    certs_chain.extend(chain.iter().map(|c| c.cert_der.clone()));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(server_ca))
        .with_client_auth_cert(certs_chain, dev.private_key())
        .unwrap(),
    )
}

pub fn v4_options(
    client_id: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "localhost", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub fn v5_options(
    client_id: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "localhost", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects a 3.1.1 client; returns the client and its event loop after CONNACK, or
/// the connection error.
pub async fn connect_v4(
    opts: rumqttc::MqttOptions,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                return Ok((client, el))
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(rumqttc::ConnectionError::NetworkTimeout),
        }
    }
}

pub async fn connect_v5(
    opts: rumqttc::v5::MqttOptions,
) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), rumqttc::v5::ConnectionError> {
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                _,
            )))) => return Ok((client, el)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(rumqttc::v5::ConnectionError::RequestsDone),
        }
    }
}

/// Polls until a PUBLISH arrives (or `wait` passes): (topic, payload, retain).
pub async fn next_publish(
    el: &mut rumqttc::EventLoop,
    wait: Duration,
) -> Option<(String, Vec<u8>, bool)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                return Some((p.topic.clone(), p.payload.to_vec(), p.retain))
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// Polls until SUBACK.
pub async fn wait_suback(el: &mut rumqttc::EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => return,
            Ok(Ok(_)) => continue,
            other => panic!("no SUBACK: {other:?}"),
        }
    }
}

/// Polls `el` until `f` picks an incoming packet (or 5 s pass, or the connection fails:
/// both panic with what happened).
pub async fn until_v5<T>(
    el: &mut rumqttc::v5::EventLoop,
    what: &str,
    mut f: impl FnMut(&rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    let wait = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(p))) => {
                if let Some(v) = f(&p) {
                    return v;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for {what}: connection failed: {e:?}"),
            Err(_) => panic!("waiting for {what}: nothing within {wait:?}"),
        }
    }
}

/// Waits for a v5 session to be closed by the server; returns the DISCONNECT reason.
pub fn watch_v5(
    mut el: rumqttc::v5::EventLoop,
) -> tokio::task::JoinHandle<Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode>> {
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(_) => continue,
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => return Some(reason_code),
                Err(_) => return None,
            }
        }
    })
}

/// Drives an event loop in the background (for publishers).
pub fn drive(
    mut el: rumqttc::EventLoop,
) -> tokio::task::JoinHandle<Option<rumqttc::ConnectionError>> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = el.poll().await {
                return Some(e);
            }
        }
    })
}

/// The `broker` flags that put every listener on loopback port 0.
pub const PORT_ZERO_ARGS: [&str; 8] = [
    "--mqtt-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--est-listen",
    "127.0.0.1:0",
];

/// The real `broker` binary (this test target's build) on loopback port 0, killed when
/// dropped while still running: a test that fails half-way leaves no broker behind.
pub struct BrokerProcess {
    pub child: std::process::Child,
    /// Its "broker listening" line.
    pub listening: String,
    /// What it logged before that line.
    pub before: Vec<String>,
}

impl BrokerProcess {
    /// Starts the binary on the data directory `dir` with the admin password
    /// `admin_pw`, and waits up to 60 s for its "broker listening" line.
    pub fn start(dir: &std::path::Path, admin_pw: &str) -> BrokerProcess {
        Self::start_with_args(dir, admin_pw, &[])
    }

    /// [`BrokerProcess::start`] with more command-line arguments (`--config FILE`).
    pub fn start_with_args(dir: &std::path::Path, admin_pw: &str, extra: &[&str]) -> BrokerProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(extra)
            .env("BROKER_ADMIN_PASSWORD", admin_pw)
            .env("RUST_LOG", "info")
            .args(["--data-dir"])
            .arg(dir)
            .args(PORT_ZERO_ARGS)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("broker starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stderr until the process dies, so logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut process = BrokerProcess {
            child,
            listening: String::new(),
            before: Vec::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if line.contains("broker listening") {
                    process.listening = line;
                    return process;
                }
                process.before.push(line);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "broker exited with {status} before listening: {:#?}",
                    process.before
                );
            }
        }
        panic!(
            "no 'broker listening' line within 60 s: {:#?}",
            process.before
        );
    }

    /// The address logged as `key=` in the "broker listening" line.
    pub fn addr(&self, key: &str) -> std::net::SocketAddr {
        let line = &self.listening;
        line.find(&format!("{key}="))
            .and_then(|i| line[i + key.len() + 1..].split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP connection to `to` from the loopback address `from` (Linux routes all of
/// 127.0.0.0/8 to `lo`): a second source address on one machine.
pub async fn tcp_from(
    from: &str,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))?;
    s.connect(to).await
}

/// A device connecting from the loopback address `from`: mTLS as `dev` (chain `chain`),
/// then an MQTT 3.1.1 CONNECT with ClientId `cn`. Returns the CONNACK's bytes, or what
/// went wrong.
pub async fn raw_connect_v4_from(
    env: &Env,
    from: &str,
    cn: &str,
    dev: &Issued,
    chain: &[&Issued],
) -> Result<Vec<u8>, String> {
    raw_session_v4_from(env, from, cn, dev, chain)
        .await
        .map(|(_, connack)| connack)
}

/// [`raw_connect_v4_from`], keeping the session's TLS stream.
pub async fn raw_session_v4_from(
    env: &Env,
    from: &str,
    cn: &str,
    dev: &Issued,
    chain: &[&Issued],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tcp_from(from, env.broker().mqtt_addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(device_tls(&env.server_ca, dev, chain));
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let id = cn.as_bytes();
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0x00, 0x04];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[0x04, 0x02, 0x00, 0x3c, 0x00, id.len() as u8]);
    connect.extend_from_slice(id);
    tls.write_all(&connect)
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| "no CONNACK within 10 s".to_string())?
        .map_err(|e| format!("read CONNACK: {e}"))?;
    buf.truncate(n);
    Ok((tls, buf))
}

/// The value of the counter line `series` (name and labels, as rendered), 0 if absent.
pub fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// [`https_client`] whose connections come from the loopback address `from`.
pub fn https_client_from(server_ca: &str, from: &str) -> reqwest::Client {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(server_ca))
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// A TLS connection (no client certificate, ALPN `http/1.1`) to the admin listener
/// from the loopback address `from`.
pub async fn admin_tls_from(
    env: &Env,
    from: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_from(env, from, env.broker().admin_addr).await
}

/// A TLS connection (no client certificate, ALPN `http/1.1`) to the HTTPS listener
/// `to` from the loopback address `from`.
pub async fn tls_from(
    env: &Env,
    from: &str,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(&env.server_ca))
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tcp_from(from, to).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

/// A Mosquitto broker on a free loopback port (anonymous, plain TCP), killed on drop:
/// the external backend of `--backend mqtt://` tests.
pub struct Mosquitto {
    pub port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts [`Mosquitto`] and waits until it accepts connections.
pub async fn start_mosquitto() -> Mosquitto {
    start_mosquitto_on(low_free_port()).await
}

/// A port nothing listens on right now, below Linux's ephemeral range (32768-60999),
/// for a server started (and restarted) by a test: a port handed out by `bind(0)` and
/// released could be given to another socket, even an outgoing connection, before the
/// server binds it.
pub fn low_free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    (0..4000u32)
        .map(|_| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16
        })
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 20000-31999")
}

/// [`start_mosquitto`] on a given port (a broker started again where it was).
pub async fn start_mosquitto_on(port: u16) -> Mosquitto {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto not installed: .ci/run installs Debian's mosquitto");
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Mosquitto {
        port,
        _child: child,
        _dir: dir,
    }
}

/// Everything this test binary logs from the first call on, with the first call's
/// `filter` (tracing's global subscriber is installed once per process).
pub fn captured_logs(filter: &str) -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    struct Sink;
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(Ok(mut l)) = LOGS.get().map(|l| l.lock()) {
                l.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    LOGS.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| Sink)
            .init();
        std::sync::Mutex::new(Vec::new())
    })
}
