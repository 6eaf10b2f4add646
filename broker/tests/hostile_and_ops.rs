//! Bad peers on 8883, the server-certificate hot swap, and `mosquitto_pub`/`mosquitto_sub`
//! as an independent client.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_plain_mqtt_http_and_anonymous_tls_are_refused_cleanly() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let addr = env.broker().mqtt_addr;

    let plain_connect: &[u8] = &[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'd',
        b'e', b'v', b'1',
    ];
    let http: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for payload in [plain_connect, http, &garbage[..]] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(payload).await.unwrap();
        let mut buf = vec![0u8; 1024];
        // The server answers with a TLS alert or closes: never an MQTT CONNACK.
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert!(
            n == 0 || buf[0] == 0x15,
            "unexpected answer {:?}",
            &buf[..n.min(8)]
        );
    }

    // A TLS client without a certificate fails the handshake.
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(&env.server_ca))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let res = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    if let Ok(mut s) = res {
        // TLS 1.3: the client learns of the refusal on its first read.
        let _ = s.write_all(plain_connect).await;
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf).await;
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "anonymous client must not get a session"
        );
    }

    // The listener still serves devices.
    let dev = device("dev1", &ca);
    connect_v4(v4_options(
        "dev1",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    ))
    .await
    .unwrap();
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("mqtt_tls_handshakes_total{outcome=\"failed\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_hot_swap() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let dev = device("dev1", &ca);
    let old_ca = env.server_ca.clone();

    // A real server CA and certificate, imported without a restart.
    let server_root = certs::issue::ca(
        &certs::issue::Subject {
            cn: "Ops Root".into(),
            o: Some("Ops".into()),
            ou: Some("IoT".into()),
            c: Some("DE".into()),
        },
        certs::issue::Validity::days(365),
        certs::issue::KeyType::Rsa2048,
        &Default::default(),
        None,
    )
    .unwrap();
    let server = certs::issue::server(
        &certs::issue::Subject {
            cn: "mqtt.example.test".into(),
            o: Some("Ops".into()),
            ou: Some("IoT".into()),
            c: Some("DE".into()),
        },
        &["localhost".into(), "127.0.0.1".into()],
        certs::issue::Validity::days(365),
        certs::issue::KeyType::Rsa2048,
        Some(&server_root.issuer().unwrap()),
        &[],
    )
    .unwrap();
    env.broker()
        .admin
        .import_server_certificate(admin_api::ImportRequest {
            name: "ops".into(),
            crt: server.cert_pem().into_bytes(),
            key: server.key_pem().into_bytes(),
            chain: Some(server_root.cert_pem().into_bytes()),
            passphrase: None,
            validation: true,
            crl_check: false,
            new_passphrase: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_ca = server_root.cert_pem();
    connect_v4(v4_options(
        "dev1",
        env.mqtt_port(),
        device_tls(&new_ca, &dev, &[&ca]),
    ))
    .await
    .expect("new handshakes use the imported certificate");
    assert!(
        connect_v4(v4_options(
            "dev1",
            env.mqtt_port(),
            device_tls(&old_ca, &dev, &[&ca])
        ))
        .await
        .is_err(),
        "the old self-signed certificate is no longer served"
    );
    let written = std::fs::read_to_string(env.dir.path().join("server.crt")).unwrap();
    assert!(written.contains(server.cert_pem().trim()));
}

fn mosquitto(bin: &str) -> std::path::PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = std::path::Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} not found: install mosquitto-clients (.ci/run does)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_as_independent_peers() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let dir = env.dir.path();
    std::fs::write(dir.join("server-ca.pem"), &env.server_ca).unwrap();
    for cn in ["mq-sub", "mq-pub", "rs-sub"] {
        let d = device(cn, &ca);
        std::fs::write(dir.join(format!("{cn}.crt")), d.cert_pem() + &ca.cert_pem()).unwrap();
        std::fs::write(dir.join(format!("{cn}.key")), d.key_pem()).unwrap();
    }
    let port = env.mqtt_port().to_string();
    let tls_args = |cn: &str| {
        vec![
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            port.clone(),
            "--cafile".into(),
            dir.join("server-ca.pem").display().to_string(),
            "--cert".into(),
            dir.join(format!("{cn}.crt")).display().to_string(),
            "--key".into(),
            dir.join(format!("{cn}.key")).display().to_string(),
            "-i".into(),
            cn.to_string(),
        ]
    };

    for version in ["mqttv311", "mqttv5"] {
        // mosquitto_sub receives what mosquitto_pub publishes.
        let sub = tokio::process::Command::new(mosquitto("mosquitto_sub"))
            .args(tls_args("mq-sub"))
            .args(["-V", version, "-t", "fleet/#", "-C", "1", "-W", "10", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = tokio::process::Command::new(mosquitto("mosquitto_pub"))
            .args(tls_args("mq-pub"))
            .args(["-V", version, "-t", "fleet/temp", "-m", "21.5", "-q", "1"])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "mosquitto_pub -V {version}");
        let out = tokio::time::timeout(Duration::from_secs(15), sub.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_sub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "fleet/temp 21.5",
            "{version}"
        );
    }

    // A rumqttc subscriber sees mosquitto_pub's message too, and a ClientId that is not
    // the CN is refused to mosquitto_pub as well.
    let rs = device("rs-sub", &ca);
    let (c, mut el) = connect_v4(v4_options(
        "rs-sub",
        env.mqtt_port(),
        device_tls(&env.server_ca, &rs, &[&ca]),
    ))
    .await
    .unwrap();
    c.subscribe("fleet/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el).await;
    let mut args = tls_args("mq-pub");
    let last = args.len() - 1;
    args[last] = "not-my-cn".into();
    let out = tokio::process::Command::new(mosquitto("mosquitto_pub"))
        .args(&args)
        .args(["-V", "mqttv311", "-t", "fleet/x", "-m", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "wrong ClientId must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("not authori"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = tokio::process::Command::new(mosquitto("mosquitto_pub"))
        .args(tls_args("mq-pub"))
        .args(["-V", "mqttv5", "-t", "fleet/hum", "-m", "40", "-q", "1"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let (topic, payload, _) = next_publish(&mut el, Duration::from_secs(5))
        .await
        .expect("message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("fleet/hum", &b"40"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_holds_no_slot_past_the_timeout_and_excess_handshakes_are_refused() {
    let env = start_with(|c| {
        c.limits.max_concurrent_handshakes = 1;
        c.limits.handshake_timeout_ms = 700;
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let addr = env.broker().mqtt_addr;
    // A peer that trickles nothing holds the only handshake slot...
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(&[0x16, 0x03]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a new connection is closed before any TLS work,
    let dev = device("dev1", &ca);
    let tls = device_tls(&env.server_ca, &dev, &[&ca]);
    assert!(connect_v4(v4_options("dev1", env.mqtt_port(), tls.clone()))
        .await
        .is_err());
    // and once the handshake timeout closes the slow peer, devices get in again.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
        .await
        .expect("slow peer closed by the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    connect_v4(v4_options("dev1", env.mqtt_port(), tls))
        .await
        .unwrap();
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("mqtt_connections_refused_total{reason=\"handshake_concurrency\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mqtt_tls_handshakes_total{outcome=\"failed\",reason=\"timeout\"} 1"),
        "{metrics}"
    );
}

/// A raw MQTT 5 session over the device's mTLS connection, with no MQTT client on it:
/// CONNECT (ClientId = `cn`, clean start, `keep_alive` seconds, no properties) is sent,
/// and the CONNACK's bytes returned; after that the test writes the bytes.
async fn raw_v5_session(
    env: &Env,
    cn: &str,
    ca: &certs::issue::Issued,
    keep_alive: u16,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let dev = device(cn, ca);
    let tcp = tokio::net::TcpStream::connect(env.broker().mqtt_addr)
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(device_tls(&env.server_ca, &dev, &[ca]));
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let id = cn.as_bytes();
    let mut connect = vec![0x10, (13 + id.len()) as u8, 0x00, 0x04];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[0x05, 0x02]);
    connect.extend_from_slice(&keep_alive.to_be_bytes());
    connect.extend_from_slice(&[0x00, 0x00, id.len() as u8]);
    connect.extend_from_slice(id);
    tls.write_all(&connect).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf.truncate(n);
    (tls, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_gets_disconnect_0x95() {
    let env = start_with(|c| c.limits.max_packet_size = 2048).await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    // A raw MQTT 5 client that ignores the advertised maximum packet size.
    let (mut tls, connack) = raw_v5_session(&env, "big", &ca, 60).await;
    assert_eq!(&connack[..1], &[0x20]);
    assert_eq!(connack[3], 0x00, "CONNACK success");
    assert!(
        connack.windows(5).any(|w| w == [0x27, 0, 0, 8, 0]),
        "CONNACK announces Maximum Packet Size 2048: {connack:?}"
    );
    // PUBLISH QoS 0 "blob" with 8 KiB payload: remaining length 2+4+1+8192 = 8199.
    let mut publish = vec![0x30, 0x87, 0x40, 0x00, 0x04, b'b', b'l', b'o', b'b', 0x00];
    publish.extend(std::iter::repeat_n(7u8, 8192));
    tls.write_all(&publish).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    assert_eq!(
        got,
        vec![0xE0, 0x02, 0x95, 0x00],
        "DISCONNECT 0x95 Packet too large"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_is_closed_after_one_and_a_half_keep_alives() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    // A raw MQTT 5 client that asks for a 1 s keep-alive and then sends nothing, not even
    // PINGREQ (a device whose network vanished looks the same from here).
    let (mut tls, connack) = raw_v5_session(&env, "quiet", &ca, 1).await;
    assert_eq!(
        (connack[0], connack[3]),
        (0x20, 0x00),
        "CONNACK success: {connack:?}"
    );
    let silent_since = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("closed within 10 s")
        .unwrap();
    let after = silent_since.elapsed();
    assert_eq!(
        got,
        vec![0xE0, 0x02, 0x8D, 0x00],
        "DISCONNECT 0x8D Keep Alive timeout"
    );
    assert!(
        after >= Duration::from_millis(1400),
        "closed after {after:?}, before 1.5 keep-alive periods"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("reason=\"keep_alive_timeout\"} 1"),
        "{metrics}"
    );
}

/// The value of a metric line without labels.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_back_off_while_connected_devices_lag_then_recover() {
    // Any measurable lag counts as pressure, so the feedback is certain to engage.
    let env = start_with(|c| {
        c.limits.session_lag_target_us = 1;
        c.limits.handshake_rate = 64;
        c.limits.handshake_burst = 64;
        // Refused, not queued, beyond the admitted rate (the queue has its own test,
        // loadtest_e2e::a_storm_beyond_the_handshake_rate_waits_its_turn).
        c.limits.handshake_queue_ms = 0;
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();
    let tls_for = |cn: &str| device_tls(&env.server_ca, &device(cn, &ca), &[&ca]);

    // A connected device keeps publishing.
    let (client, el) = connect_v4(v4_options("pub", port, tls_for("pub")))
        .await
        .unwrap();
    let driver = drive(el);
    let publishing = tokio::spawn(async move {
        loop {
            if client
                .publish("t", rumqttc::QoS::AtMostOnce, false, vec![0u8; 16])
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&env.metrics().await, "handshake_admission_share") > 0.05 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admission never backed off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 1/64 of the rate and burst: about one handshake a second gets through.
    let mut refused = 0;
    for i in 0..8 {
        let cn = format!("new{i}");
        if connect_v4(v4_options(&cn, port, tls_for(&cn)))
            .await
            .is_err()
        {
            refused += 1;
        }
    }
    assert!(refused >= 5, "only {refused} of 8 refused under pressure");
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("mqtt_connections_refused_total{reason=\"handshake_rate\"}"),
        "{metrics}"
    );

    // The traffic stops: the share grows back and devices get in again.
    publishing.abort();
    driver.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&env.metrics().await, "handshake_admission_share") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admission never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    connect_v4(v4_options("late", port, tls_for("late")))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_probe_round_trips_through_the_embedded_broker_unseen_by_tenants() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    // A device subscribed to everything its tenant may see.
    let tls = device_tls(&env.server_ca, &device("spy", &ca), &[&ca]);
    let (spy, mut el) = connect_v4(v4_options("spy", env.mqtt_port(), tls))
        .await
        .unwrap();
    spy.subscribe("#", QoS::AtMostOnce).await.unwrap();
    wait_suback(&mut el).await;

    let mut echo = broker::backend::Echo::connect(&env.broker().shared.backend)
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), echo.round_trip())
            .await
            .expect("the echo comes back")
            .unwrap();
    }
    // Neither this echo nor the broker's own probe reaches a tenant.
    assert_eq!(
        next_publish(&mut el, Duration::from_millis(500)).await,
        None
    );
}

/// The sum of every `mqtt_tls_handshakes_total` series.
fn handshakes_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("mqtt_tls_handshakes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chain_is_one_handshake_with_one_outcome() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    // A device of a CA nobody uploaded.
    let stranger_ca = common::ca("Stranger Root");
    let stranger = device("stranger", &stranger_ca);
    let tls = device_tls(&env.server_ca, &stranger, &[&stranger_ca]);
    assert!(connect_v4(v4_options("stranger", env.mqtt_port(), tls))
        .await
        .is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handshakes_total(&env.metrics().await) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no handshake counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything counted twice would be there by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = env.metrics().await;
    assert_eq!(handshakes_total(&metrics), 1.0, "{metrics}");
    assert!(
        metrics.contains(
            "mqtt_tls_handshakes_total{outcome=\"rejected\",reason=\"unknown_issuer\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("mqtt_tls_handshake_seconds_count{outcome=\"rejected\"} 1"),
        "{metrics}"
    );

    // A device that gets in adds exactly one `ok`.
    let dev = device("dev1", &ca);
    connect_v4(v4_options(
        "dev1",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    ))
    .await
    .unwrap();
    let metrics = env.metrics().await;
    assert_eq!(handshakes_total(&metrics), 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_body_gets_413_over_http2_as_over_http1() {
    let env = start().await;
    let dir = env.dir.path();
    std::fs::write(dir.join("server-ca.pem"), &env.server_ca).unwrap();
    // Twice the admin API's 1 MiB body limit: the handler answers 413 before the
    // client has sent it all.
    let body = format!("{{\"id\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    std::fs::write(dir.join("body.json"), &body).unwrap();
    let url = format!("{}/tenant/tenants", env.base);

    // HTTP/1.1 (reqwest).
    let r = env
        .http
        .post(&url)
        .basic_auth("management/admin", Some(ADMIN_PW))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status().as_u16(), 413);

    // HTTP/2 over TLS (ALPN h2): curl, still uploading when the 413 comes, must see it
    // and not a reset stream.
    let curl = ["/usr/bin/curl", "/usr/local/bin/curl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("curl not found: install curl");
    let out = tokio::process::Command::new(curl)
        .args(["-sS", "--http2", "--cacert"])
        .arg(dir.join("server-ca.pem"))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", env.broker().admin_addr.port()),
        ])
        .args(["-u", &format!("management/admin:{ADMIN_PW}")])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", dir.join("body.json").display()))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(&url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {}: {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("\n2 413"), "{stdout}");
    assert!(
        stdout.starts_with(r#"{"error":"payload_too_large","#),
        "{stdout}"
    );
}
