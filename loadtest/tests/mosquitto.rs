//! Runs the load generator against Debian's mosquitto, started here on 127.0.0.1 with
//! mutual TLS (`require_certificate true`, `use_identity_as_username true`).
//!
//! mosquitto is required: without it these tests fail (they do not skip). CI installs the
//! `mosquitto` package; locally: `apt-get install -y mosquitto`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::{Config, MqttVersion, Scenario};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

fn mosquitto_binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed (looked in /usr/sbin, /usr/bin, /usr/local/sbin): \
         these integration tests need it; install it with `apt-get install -y mosquitto`"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("addr").port()
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(cn: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed");
    (params, key, cert.pem())
}

/// Device CA (trusted by mosquitto for clients), server CA, and a server certificate for
/// localhost / 127.0.0.1.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let (device_params, device_key, device_pem) = ca("test device CA");
    std::fs::write(dir.path().join("device-ca.pem"), device_pem).expect("write");
    std::fs::write(dir.path().join("device-ca.key"), device_key.serialize_pem()).expect("write");
    drop(device_params);

    let (server_ca_params, server_ca_key, server_ca_pem) = ca("test server CA");
    std::fs::write(dir.path().join("server-ca.pem"), server_ca_pem).expect("write");
    let issuer = Issuer::new(server_ca_params, server_ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    std::fs::write(dir.path().join("server.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("write");
    Pki { dir }
}

struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn start(pki: &Pki) -> Mosquitto {
        Mosquitto::start_with(pki, false)
    }

    /// `debug`: also log every packet (`log_type debug`).
    fn start_with(pki: &Pki, debug: bool) -> Mosquitto {
        let bin = mosquitto_binary();
        let port = free_port();
        let conf = pki.path("mosquitto.conf");
        let log = pki.path("mosquitto.log");
        let config = format!(
            "per_listener_settings false\n\
             allow_anonymous false\n\
             persistence false\n\
             user root\n\
             max_queued_messages 100000\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {debug}
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             set_tcp_nodelay true\n",
            log = log.display(),
            ca = pki.path("device-ca.pem").display(),
            cert = pki.path("server.crt").display(),
            key = pki.path("server.key").display(),
            debug = if debug { "log_type debug\n" } else { "" },
        );
        std::fs::write(&conf, config).expect("write config");
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mosquitto exited with {status} before listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn base_config(pki: &Pki, broker: &Mosquitto) -> Config {
    Config {
        broker: format!("127.0.0.1:{}", broker.port),
        ca_cert: Some(pki.path("device-ca.pem")),
        ca_key: Some(pki.path("device-ca.key")),
        upload: false,
        server_ca: Some(pki.path("server-ca.pem")),
        source_ips: Some(loadtest::config::parse_source_ips("127.0.0.1-127.0.0.4").expect("range")),
        duration: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

const REQUIRED_KEYS: &[&str] = &[
    "/connect/attempted",
    "/connect/succeeded",
    "/connect/rate_per_s",
    "/connect/latency_ms/p50",
    "/connect/latency_ms/p90",
    "/connect/latency_ms/p99",
    "/connect/latency_ms/max",
    "/publish/sent",
    "/publish/rate_per_s",
    "/messages/received",
    "/messages/lost",
    "/messages/duplicated",
    "/e2e_latency_ms/p50",
    "/e2e_latency_ms/p99",
    "/errors",
    "/broker/rss_kib/before",
    "/broker/rss_kib/after",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_fleet_qos1_against_mosquitto() {
    let pki = make_pki();
    let broker = Mosquitto::start(&pki);
    let config = Config {
        devices: 50,
        messages: 10,
        qos: 1,
        subscribers: 1,
        publish_interval: Duration::from_millis(20),
        connect_rate: 500.0,
        broker_pid: Some(broker.child.id()),
        ..base_config(&pki, &broker)
    };
    let report = loadtest::run(config)
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}\nmosquitto log:\n{}", broker.log()));
    let summary = report.summary_table();
    assert!(
        report.errors.is_empty(),
        "errors: {:?}\n{summary}\nmosquitto log:\n{}",
        report.errors,
        broker.log()
    );
    assert_eq!(report.connect.attempted, 50, "{summary}");
    assert_eq!(report.connect.succeeded, 50, "{summary}");
    assert_eq!(report.connect.failed, 0, "{summary}");
    assert_eq!(report.connect.peak_connected, 50, "{summary}");
    assert_eq!(report.publish.sent, 500, "{summary}");
    assert_eq!(report.publish.acked, 500, "{summary}");
    assert_eq!(report.messages.expected, 500, "{summary}");
    assert_eq!(report.messages.received, 500, "{summary}");
    assert_eq!(report.messages.lost, 0, "{summary}");
    assert_eq!(report.messages.duplicated, 0, "{summary}");
    assert!(!report.timed_out, "{summary}");
    assert_eq!(report.connect.latency_ms.count, 50);
    assert_eq!(report.e2e_latency_ms.count, 500);
    let p50 = report.connect.latency_ms.p50.expect("p50");
    let max = report.connect.latency_ms.max.expect("max");
    assert!(p50 > 0.0 && p50 <= max, "{summary}");
    assert!(report.connect.rate_per_s > 0.0, "{summary}");
    assert!(report.publish.rate_per_s > 0.0, "{summary}");
    // 50 devices paced at 500/s take about 100 ms to arrive.
    assert!(report.connect.rate_per_s < 5000.0, "{summary}");
    let rss = report.broker.rss_kib.as_ref().expect("rss");
    assert!(rss.before.is_some_and(|k| k > 0) && rss.after.is_some_and(|k| k > 0));

    // Connections came from every configured source address (127.0.0.1-127.0.0.4).
    let log = broker.log();
    let sources: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split("New connection from ").nth(1))
        .filter_map(|rest| rest.split(':').next())
        .collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "mosquitto log:\n{log}"
    );

    let json = serde_json::to_value(&report).expect("json");
    for key in REQUIRED_KEYS {
        assert!(json.pointer(key).is_some(), "report lacks {key}: {json}");
    }
    assert_eq!(
        json.pointer("/connect/succeeded"),
        Some(&serde_json::json!(50))
    );
    assert_eq!(
        json.pointer("/messages/received"),
        Some(&serde_json::json!(500))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_mqtt5_qos2_two_subscribers() {
    let pki = make_pki();
    let broker = Mosquitto::start(&pki);
    let config = Config {
        devices: 30,
        messages: 5,
        qos: 2,
        subscribers: 2,
        payload: 200,
        publish_interval: Duration::ZERO,
        mqtt: MqttVersion::V5,
        scenario: Scenario::Storm,
        concurrency: 8,
        ..base_config(&pki, &broker)
    };
    let report = loadtest::run(config)
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}\nmosquitto log:\n{}", broker.log()));
    let summary = report.summary_table();
    assert!(report.errors.is_empty(), "{summary}\n{:?}", report.errors);
    assert_eq!(report.connect.succeeded, 30, "{summary}");
    assert_eq!(report.publish.sent, 150, "{summary}");
    assert_eq!(report.publish.acked, 150, "{summary}");
    assert_eq!(report.messages.received, 300, "{summary}");
    assert_eq!(report.messages.lost, 0, "{summary}");
    assert_eq!(report.messages.duplicated, 0, "{summary}");
    assert!(report.revoke.is_none());
}

/// Sessions that stay idle longer than the keep-alive must ping (mosquitto logs each
/// PINGREQ at debug level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_kept_alive_with_pings() {
    let pki = make_pki();
    let broker = Mosquitto::start_with(&pki, true);
    let config = Config {
        devices: 3,
        messages: 2,
        qos: 1,
        subscribers: 1,
        keep_alive: Duration::from_secs(1),
        publish_interval: Duration::from_millis(2600),
        mqtt: MqttVersion::V5,
        ..base_config(&pki, &broker)
    };
    let report = loadtest::run(config).await.expect("run");
    let summary = report.summary_table();
    let log = broker.log();
    assert!(report.errors.is_empty(), "{summary}\n{log}");
    assert_eq!(report.publish.acked, 6, "{summary}");
    assert_eq!(report.messages.received, 6, "{summary}");
    for client in ["dev-000000", "dev-000001", "dev-000002", "sub-"] {
        assert!(
            log.lines()
                .any(|l| l.contains("Received PINGREQ from") && l.contains(client)),
            "no PINGREQ from {client}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_counted_as_failures() {
    let pki = make_pki();
    let broker = Mosquitto::start(&pki);
    // A CA mosquitto has never heard of.
    let (_, key, pem) = ca("rogue CA");
    std::fs::write(pki.path("rogue.pem"), pem).expect("write");
    std::fs::write(pki.path("rogue.key"), key.serialize_pem()).expect("write");
    let config = Config {
        devices: 10,
        messages: 3,
        subscribers: 0,
        ca_cert: Some(pki.path("rogue.pem")),
        ca_key: Some(pki.path("rogue.key")),
        ..base_config(&pki, &broker)
    };
    let report = loadtest::run(config)
        .await
        .expect("a run with refused devices still reports");
    let summary = report.summary_table();
    assert_eq!(report.connect.attempted, 10, "{summary}");
    assert_eq!(report.connect.succeeded, 0, "{summary}");
    assert_eq!(report.connect.failed, 10, "{summary}");
    assert_eq!(report.publish.sent, 0, "{summary}");
    assert_eq!(report.errors.values().sum::<u64>(), 10, "{summary}");
    assert!(report.connect.latency_ms.p50.is_none());
}

#[tokio::test]
async fn subscriber_that_cannot_connect_is_fatal() {
    let pki = make_pki();
    let broker = Mosquitto::start(&pki);
    let (_, key, pem) = ca("rogue CA");
    std::fs::write(pki.path("rogue.pem"), pem).expect("write");
    std::fs::write(pki.path("rogue.key"), key.serialize_pem()).expect("write");
    let config = Config {
        devices: 1,
        subscribers: 1,
        ca_cert: Some(pki.path("rogue.pem")),
        ca_key: Some(pki.path("rogue.key")),
        ..base_config(&pki, &broker)
    };
    match loadtest::run(config).await {
        Err(loadtest::Error::Subscriber { cn, reason }) => {
            assert!(cn.starts_with("sub-"), "{cn}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a subscriber error, got {other:?}"),
    }
}

#[tokio::test]
async fn non_loopback_targets_are_refused_before_any_traffic() {
    let pki = make_pki();
    for broker in ["10.0.0.1:8883", "192.168.1.1:1883"] {
        let config = Config {
            broker: broker.into(),
            ca_cert: Some(pki.path("device-ca.pem")),
            ca_key: Some(pki.path("device-ca.key")),
            upload: false,
            server_ca: Some(pki.path("server-ca.pem")),
            ..Config::default()
        };
        match loadtest::run(config).await {
            Err(loadtest::Error::NotLoopback { what, .. }) => assert_eq!(what, "--broker"),
            other => panic!("{broker}: expected NotLoopback, got {other:?}"),
        }
    }
    let config = Config {
        broker: "127.0.0.1:8883".into(),
        admin: Some("https://10.1.2.3:8443".into()),
        admin_password: Some("x".into()),
        server_ca: Some(pki.path("server-ca.pem")),
        ..Config::default()
    };
    match loadtest::run(config).await {
        Err(loadtest::Error::NotLoopback { what, .. }) => assert_eq!(what, "--admin"),
        other => panic!("expected NotLoopback for --admin, got {other:?}"),
    }
}

/// mosquitto with two plain-TCP listeners on 127.0.0.1 and anonymous access: the shape of
/// the product's embedded rumqttd (several loopback listeners, neither TLS nor auth).
struct PlainMosquitto {
    child: Child,
    ports: [u16; 2],
    log: PathBuf,
}

impl Drop for PlainMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_plain_mosquitto(dir: &Path) -> PlainMosquitto {
    let bin = mosquitto_binary();
    let ports = [free_port(), free_port()];
    let conf = dir.join("plain.conf");
    let log = dir.join("plain.log");
    let config = format!(
        "per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         user root\n\
         log_dest file {log}\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         listener {a} 127.0.0.1\n\
         listener {b} 127.0.0.1\n\
         set_tcp_nodelay true\n",
        log = log.display(),
        a = ports[0],
        b = ports[1],
    );
    std::fs::write(&conf, config).expect("write config");
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited with {status} before listening");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    PlainMosquitto { child, ports, log }
}

/// `--plain` over two listeners: no certificates at all, devices spread round-robin,
/// unique ClientIds carrying the run id, publishing only once the whole fleet is connected
/// (`sync_start`), idle sessions held before the memory is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_over_two_listeners_with_sync_start_and_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = start_plain_mosquitto(dir.path());
    let config = Config {
        broker: format!(
            "127.0.0.1:{},127.0.0.1:{}",
            broker.ports[0], broker.ports[1]
        ),
        plain: true,
        upload: false,
        server_ca: None,
        devices: 20,
        messages: 5,
        qos: 1,
        subscribers: 1,
        publish_interval: Duration::ZERO,
        scenario: Scenario::Storm,
        concurrency: 8,
        sync_start: true,
        hold: Duration::from_millis(1500),
        broker_pid: Some(broker.child.id()),
        source_ips: Some(loadtest::config::parse_source_ips("127.0.0.1-127.0.0.2").expect("range")),
        duration: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let started = Instant::now();
    let report = loadtest::run(config).await.expect("plain run");
    let summary = report.summary_table();
    let log = std::fs::read_to_string(&broker.log).unwrap_or_default();
    assert!(report.errors.is_empty(), "{summary}\n{log}");
    assert_eq!(report.connect.succeeded, 20, "{summary}");
    assert_eq!(report.publish.acked, 100, "{summary}");
    assert_eq!(report.messages.received, 100, "{summary}");
    assert_eq!(report.messages.lost, 0, "{summary}");
    assert!(report.messages.rate_per_s > 0.0, "{summary}");
    assert!(report.params.plain && report.params.sync_start, "{summary}");
    assert_eq!(report.params.brokers, 2);
    assert_eq!(report.certs.issued, 0, "no certificate in plain mode");
    assert!(report.connect.tls_handshake_ms.p50.is_none(), "{summary}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "held");
    assert!(loadtest::report::rss_per_device_kib(&report).is_some());
    // Every device connected under a ClientId carrying the run id (mosquitto logs them),
    // over both listeners.
    let id = format!("lt-{}-dev-000019", report.run_id);
    assert!(log.contains(&id), "no {id} in:\n{log}");
    for port in broker.ports {
        assert!(
            log.lines()
                .any(|l| l.contains("New connection from")
                    && l.contains(&format!("on port {port}."))),
            "nothing connected on port {port}:\n{log}"
        );
    }
}
