//! Tenant policies and live trust changes: ClientId override, pre-registration, blocked
//! devices, CRL entries closing live sessions, keep-alive 0, and an external backend
//! (Debian's mosquitto) instead of the embedded rumqttd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS};
use serde_json::json;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, DisconnectReasonCode as V5Reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_override_policy_uses_the_cn() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"settings": {"clientIdPolicy": "override"}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let dev = device("meter-7", &ca);
    let (_c, _el) = connect_v4(v4_options(
        "whatever-the-firmware-says",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    ))
    .await
    .expect("override: accepted under the CN");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, body) = env
        .as_tenant("acme", Method::GET, "/tenant/tenants/acme/devices", None)
        .await;
    assert_eq!(s, 200);
    let text = body.to_string();
    assert!(
        text.contains("meter-7") && !text.contains("whatever"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_registration_only_pre_registered_devices_connect() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, false).await;
    let dev = device("pump-1", &ca);
    let tls = device_tls(&env.server_ca, &dev, &[&ca]);
    let err = connect_v4(v4_options("pump-1", env.mqtt_port(), tls.clone()))
        .await
        .err()
        .expect("unregistered device refused");
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );
    let err = connect_v5(v5_options("pump-1", env.mqtt_port(), tls.clone()))
        .await
        .err()
        .expect("unregistered device refused");
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(V5Code::NotAuthorized)
        ),
        "{err:?}"
    );
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/devices",
            Some(json!({"commonName": "pump-1"})),
        )
        .await;
    assert!((200..300).contains(&s), "{s} {b}");
    connect_v4(v4_options("pump-1", env.mqtt_port(), tls))
        .await
        .expect("pre-registered device accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_a_device_and_revoking_its_certificate_close_live_sessions() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();

    // Blocked: DISCONNECT 0x8A within a second, then refused with Banned.
    let bad = device("bad-actor", &ca);
    let tls = device_tls(&env.server_ca, &bad, &[&ca]);
    let (_c, el) = connect_v5(v5_options("bad-actor", port, tls.clone()))
        .await
        .unwrap();
    let h = watch_v5(el);
    let t0 = Instant::now();
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::DELETE,
            "/tenant/tenants/acme/devices/bad-actor",
            None,
        )
        .await;
    assert!((200..300).contains(&s), "{s} {b}");
    let reason = tokio::time::timeout(Duration::from_secs(1), h)
        .await
        .expect("closed within 1 s")
        .unwrap();
    // 0x8A Banned is not a valid DISCONNECT reason: 0x87 Not authorized is sent.
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
    assert!(t0.elapsed() < Duration::from_secs(2));
    let err = connect_v5(v5_options("bad-actor", port, tls))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(V5Code::Banned)
        ),
        "{err:?}"
    );

    // Revoked by the tenant's CRL list while connected: closed within a second.
    let lost = device("lost-device", &ca);
    let (_c2, el2) = connect_v5(v5_options(
        "lost-device",
        port,
        device_tls(&env.server_ca, &lost, &[&ca]),
    ))
    .await
    .unwrap();
    let h2 = watch_v5(el2);
    let serial = certs::CertInfo::parse(lost.cert_der.as_ref())
        .unwrap()
        .serial_hex;
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/trusted-certificates/settings/crl",
            Some(json!({"crls": [{"serialNumberInHex": serial, "revocationDate": "2026-11-01T00:00:00Z"}]})),
        )
        .await;
    assert!((200..300).contains(&s), "{s} {b}");
    let reason = tokio::time::timeout(Duration::from_secs(1), h2)
        .await
        .expect("closed within 1 s")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_accepted_although_rumqttd_refuses_it() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let dev = device("sleepy", &ca);
    let mut o = v4_options(
        "sleepy",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    );
    o.set_keep_alive(Duration::ZERO);
    let (c, mut el) = connect_v4(o).await.expect("keep-alive 0 accepted");
    c.subscribe("echo", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el).await;
    c.publish("echo", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    let (t, p, _) = next_publish(&mut el, Duration::from_secs(5))
        .await
        .expect("echo");
    assert_eq!((t.as_str(), p.as_slice()), ("echo", &b"hi"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_backend_mosquitto_gets_mounted_sessions() {
    install_provider();
    let mosquitto = start_mosquitto().await;
    let port = mosquitto.port;
    let env = start_in(tempfile::tempdir().unwrap(), |c| {
        c.backend = format!("mqtt://127.0.0.1:{port}");
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;

    // A plain client on the backend sees the mounted topic and the backend ClientId scheme.
    let mut spy_opts = rumqttc::MqttOptions::new("spy", "127.0.0.1", port);
    spy_opts.set_keep_alive(Duration::from_secs(30));
    let (spy, mut spy_el) = rumqttc::AsyncClient::new(spy_opts, 10);
    spy.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut spy_el).await;

    let (sub_d, pub_d) = (device("sub", &ca), device("pub", &ca));
    let (s, mut sel) = connect_v5(v5_options(
        "sub",
        env.mqtt_port(),
        device_tls(&env.server_ca, &sub_d, &[&ca]),
    ))
    .await
    .unwrap();
    s.subscribe("line/+/temp", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (p, pel) = connect_v4(v4_options(
        "pub",
        env.mqtt_port(),
        device_tls(&env.server_ca, &pub_d, &[&ca]),
    ))
    .await
    .unwrap();
    let _d = drive(pel);
    // Wait for SUBACK on the v5 subscriber.
    loop {
        if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)) =
            tokio::time::timeout(Duration::from_secs(5), sel.poll())
                .await
                .unwrap()
                .unwrap()
        {
            break;
        }
    }
    p.publish("line/3/temp", QoS::AtLeastOnce, false, "80.1")
        .await
        .unwrap();

    let (topic, payload, _) = next_publish(&mut spy_el, Duration::from_secs(5))
        .await
        .expect("backend sees the message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/line/3/temp", &b"80.1"[..])
    );
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(5), sel.poll())
            .await
            .unwrap()
            .unwrap()
        {
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => {
                break p
            }
            _ => continue,
        }
    };
    assert_eq!(&got.topic[..], b"line/3/temp", "unmounted on the way back");
    assert_eq!(&got.payload[..], b"80.1");
    drop(mosquitto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_devices_anchors_and_publish_rate() {
    let env = start().await;
    env.tenant("acme").await;
    let ca1 = ca("Acme Root");
    env.upload("acme", &ca1, true).await;
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"settings": {"maxDevices": 1, "maxAnchors": 1, "maxPublishRate": 5}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["settings"]["maxDevices"], 1, "{b}");

    // Anchors: the second upload is refused with the limit in words.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/trusted-certificates",
            Some(
                json!({"status": "ENABLED", "name": "second", "autoRegistrationEnabled": true,
                        "certInPemFormat": ca("Acme Root 2").cert_pem()}),
            ),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(
        b["message"],
        "Tenant acme has reached its limit of 1 trusted certificates (1 trusted)"
    );

    // Devices: one at a time; the second gets CONNACK 0x97 Quota exceeded.
    let port = env.mqtt_port();
    let d1 = device("d1", &ca1);
    let d2 = device("d2", &ca1);
    let (c1, el1) = connect_v5(v5_options(
        "d1",
        port,
        device_tls(&env.server_ca, &d1, &[&ca1]),
    ))
    .await
    .unwrap();
    let err = connect_v5(v5_options(
        "d2",
        port,
        device_tls(&env.server_ca, &d2, &[&ca1]),
    ))
    .await
    .err()
    .expect("second device refused");
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(V5Code::QuotaExceeded)
        ),
        "{err:?}"
    );

    // Publish rate: 5/s for the tenant; a burst of 50 gets DISCONNECT 0x96.
    let h = watch_v5(el1);
    for i in 0..50 {
        if c1
            .publish(
                "burst",
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                false,
                format!("{i}"),
            )
            .await
            .is_err()
        {
            break;
        }
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::MessageRateTooHigh));
    // The slot was released: d2 connects now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect_v5(v5_options(
        "d2",
        port,
        device_tls(&env.server_ca, &d2, &[&ca1]),
    ))
    .await
    .expect("slot released when d1 was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_crl_distribution_points_are_enforced_when_enabled() {
    // The CRL server is on loopback, which the egress policy refuses unless allowed.
    let env = start_with(|c| c.egress.allow = vec!["127.0.0.1/32".into()]).await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"settings": {"crlOnlineEnabled": true}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    let issuer = ca.issuer().unwrap();
    let validity = certs::issue::Validity::days(30);
    let key = certs::issue::KeyType::P256;
    // A loopback HTTP server for the CRL; its body is set once the devices exist.
    let url_holder = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let port = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let holder = url_holder.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let body = holder.lock().unwrap().clone();
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            }
        });
        port
    };
    let url = format!("http://127.0.0.1:{port}/acme.crl");
    let good =
        certs::issue::device("good", validity, key, &issuer, std::slice::from_ref(&url)).unwrap();
    let bad =
        certs::issue::device("bad", validity, key, &issuer, std::slice::from_ref(&url)).unwrap();
    let bad_serial = certs::CertInfo::parse(bad.cert_der.as_ref())
        .unwrap()
        .serial_hex;
    let crl = certs::issue::crl(
        &issuer,
        &[certs::issue::Revocation {
            serial_hex: bad_serial,
            revoked_at: time::OffsetDateTime::now_utc(),
        }],
        1,
        7,
    )
    .unwrap();
    *url_holder.lock().unwrap() = crl;

    let port_mqtt = env.mqtt_port();
    connect_v4(v4_options(
        "good",
        port_mqtt,
        device_tls(&env.server_ca, &good, &[&ca]),
    ))
    .await
    .expect("not revoked");
    let err = connect_v4(v4_options(
        "bad",
        port_mqtt,
        device_tls(&env.server_ca, &bad, &[&ca]),
    ))
    .await
    .err()
    .expect("revoked at its CRL distribution point");
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );
    // Unknown revocation status is denied: a distribution point nobody serves.
    let dead = format!("http://127.0.0.1:{}/none.crl", listener_port_closed().await);
    let orphan = certs::issue::device("orphan", validity, key, &issuer, &[dead]).unwrap();
    assert!(connect_v4(v4_options(
        "orphan",
        port_mqtt,
        device_tls(&env.server_ca, &orphan, &[&ca])
    ))
    .await
    .is_err());
}

async fn listener_port_closed() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// The number of TLS handshakes the broker completed.
async fn handshakes_ok(env: &Env) -> u64 {
    env.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("mqtt_tls_handshakes_total{") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// An mTLS connection whose handshake the broker has finished verifying (its handshake
/// counter went up), with no CONNECT sent yet.
async fn handshake_only(
    env: &Env,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let before = handshakes_ok(env).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.mqtt_port()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshakes_ok(env).await <= before {
        assert!(
            Instant::now() < deadline,
            "the broker never finished the handshake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

/// A CONNECT with ClientId `id`, clean, keep-alive 30 s: MQTT 3.1.1 or 5.
fn raw_connect(id: &str, v5: bool) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        if v5 { 5 } else { 4 },
        0x02,
        0,
        30,
    ];
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    pkt
}

/// Sends `connect` and returns what the broker answered before closing.
async fn connack_after(
    mut s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    connect: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(connect).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_withdrawn_between_handshake_and_connect_refuses_the_connect() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    let fp = env.upload("acme", &ca, true).await;
    let (revoked, blocked, late) = (
        device("revoked-1", &ca),
        device("blocked-1", &ca),
        device("late-1", &ca),
    );

    // A certificate revoked after its handshake: MQTT 5 CONNACK 0x87 Not authorized.
    let s = handshake_only(&env, device_tls(&env.server_ca, &revoked, &[&ca])).await;
    let serial = certs::CertInfo::parse(revoked.cert_der.as_ref())
        .unwrap()
        .serial_hex;
    let (st, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/trusted-certificates/settings/crl",
            Some(json!({"crls": [{"serialNumberInHex": serial, "revocationDate": "2026-11-01T00:00:00Z"}]})),
        )
        .await;
    assert!((200..300).contains(&st), "{st} {b}");
    assert_eq!(
        connack_after(s, &raw_connect("revoked-1", true)).await,
        [0x20, 0x03, 0x00, 0x87, 0x00]
    );

    // A device blocked after its handshake: 0x8A Banned.
    let s = handshake_only(&env, device_tls(&env.server_ca, &blocked, &[&ca])).await;
    let (st, b) = env
        .as_tenant(
            "acme",
            Method::DELETE,
            "/tenant/tenants/acme/devices/blocked-1",
            None,
        )
        .await;
    assert!((200..300).contains(&st), "{st} {b}");
    assert_eq!(
        connack_after(s, &raw_connect("blocked-1", true)).await,
        [0x20, 0x03, 0x00, 0x8A, 0x00]
    );

    // Its CA disabled after the handshake: 3.1.1 CONNACK 5 Not authorized.
    let s = handshake_only(&env, device_tls(&env.server_ca, &late, &[&ca])).await;
    env.set_status("acme", &fp, "DISABLED").await;
    assert_eq!(
        connack_after(s, &raw_connect("late-1", false)).await,
        [0x20, 0x02, 0x00, 0x05]
    );
    let metrics = env.metrics().await;
    for reason in ["anchor_disabled", "revoked", "device_blocked"] {
        assert!(
            metrics.contains(&format!(
                "mqtt_connections_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_closed_when_its_certificate_expires() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::seconds(5);
    let short = certs::issue::device(
        "short-lived",
        certs::issue::Validity {
            not_before: now - time::Duration::hours(1),
            not_after,
        },
        certs::issue::KeyType::P256,
        &ca.issuer().unwrap(),
        &[],
    )
    .unwrap();
    closed_at_expiry(
        &env,
        "short-lived",
        device_tls(&env.server_ca, &short, &[&ca]),
        not_after,
    )
    .await;
    assert!(env
        .metrics()
        .await
        .contains("mqtt_sessions_closed_by_revocation_total{reason=\"expired\"} 1"));
}

/// The session ends when the first certificate of its path expires: here the issuing
/// intermediate, while the device certificate is valid for 30 days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_closed_when_an_intermediate_of_its_path_expires() {
    let env = start().await;
    env.tenant("acme").await;
    let root = ca("Acme Root");
    env.upload("acme", &root, true).await;
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/settings",
            Some(json!({"maxChainLength": 3})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::seconds(5);
    let issuing = certs::issue::ca(
        &certs::issue::Subject::cn("Acme Issuing"),
        certs::issue::Validity {
            not_before: now - time::Duration::hours(1),
            not_after,
        },
        certs::issue::KeyType::P256,
        &certs::issue::CaOptions::default(),
        Some(&root.issuer().unwrap()),
    )
    .unwrap();
    let dev = device("long-lived", &issuing);
    closed_at_expiry(
        &env,
        "long-lived",
        device_tls(&env.server_ca, &dev, &[&issuing]),
        not_after,
    )
    .await;
}

/// Connects a 5.0 device that is valid now and asserts that its session is closed with
/// DISCONNECT 0x87 at `not_after`, not before (second precision, as in certificates).
async fn closed_at_expiry(
    env: &Env,
    cn: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    not_after: time::OffsetDateTime,
) {
    let (_c, el) = connect_v5(v5_options(cn, env.mqtt_port(), tls))
        .await
        .expect("valid for a few more seconds");
    let reason = tokio::time::timeout(Duration::from_secs(15), watch_v5(el))
        .await
        .expect("closed at the notAfter")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
    assert!(time::OffsetDateTime::now_utc().unix_timestamp() >= not_after.unix_timestamp());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_chain_length_limit_closes_longer_chains() {
    let env = start().await;
    env.tenant("acme").await;
    let set_max = |n: i64| {
        let env = &env;
        async move {
            let (s, b) = env
                .api(
                    Method::PUT,
                    "/tenant/tenants/acme",
                    "management/admin",
                    ADMIN_PW,
                    Some(json!({"settings": {"maxChainLength": n}})),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    set_max(3).await;
    let root = ca("Acme Root");
    env.upload("acme", &root, true).await;
    let inter = intermediate("Acme Issuing", &root);
    let (deep, flat) = (device("deep-1", &inter), device("flat-1", &root));
    let port = env.mqtt_port();
    let (_c, el) = connect_v5(v5_options(
        "deep-1",
        port,
        device_tls(&env.server_ca, &deep, &[&inter]),
    ))
    .await
    .expect("3 certificates allowed");
    let deep_watch = watch_v5(el);
    let (_c2, el2) = connect_v5(v5_options(
        "flat-1",
        port,
        device_tls(&env.server_ca, &flat, &[&root]),
    ))
    .await
    .expect("2 certificates allowed");
    let flat_watch = watch_v5(el2);

    set_max(2).await;
    let reason = tokio::time::timeout(Duration::from_secs(2), deep_watch)
        .await
        .expect("the 3-long chain's session closed")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
    assert!(
        !flat_watch.is_finished(),
        "a 2-long chain is still within the limit"
    );
    assert!(env
        .metrics()
        .await
        .contains("mqtt_sessions_closed_by_revocation_total{reason=\"chain_too_long\"} 1"));
}

/// A loopback TCP server that counts the connections it accepts (and answers none).
async fn counting_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_distribution_points_the_egress_policy_refuses_fail_closed() {
    // The default policy: no allow-list.
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"settings": {"crlOnlineEnabled": true}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (port, hits) = counting_server().await;
    let issuer = ca.issuer().unwrap();
    let dev = |cn: &str, url: String| {
        certs::issue::device(
            cn,
            certs::issue::Validity::days(30),
            certs::issue::KeyType::P256,
            &issuer,
            &[url],
        )
        .unwrap()
    };
    let cases = [
        (
            "ssrf-literal",
            format!("http://127.0.0.1:{port}/acme.crl"),
            "crl_egress_refused",
        ),
        (
            "ssrf-name",
            format!("http://localhost:{port}/acme.crl"),
            "crl_egress_refused",
        ),
        (
            "ldap-only",
            "ldap://ldap.example.com/cn=Acme%20Root?certificateRevocationList".to_string(),
            "crl_unsupported_scheme",
        ),
    ];
    for (cn, url, _) in &cases {
        let d = dev(cn, url.clone());
        let err = connect_v4(v4_options(
            cn,
            env.mqtt_port(),
            device_tls(&env.server_ca, &d, &[&ca]),
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("{cn}: admitted although its CRL could not be checked"));
        assert!(
            matches!(
                err,
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
            ),
            "{cn}: {err:?}"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the loopback server saw no request"
    );
    let metrics = env.metrics().await;
    for (reason, n) in [("crl_egress_refused", 2), ("crl_unsupported_scheme", 1)] {
        assert!(
            metrics.contains(&format!(
                "mqtt_connections_refused_total{{reason=\"{reason}\"}} {n}"
            )),
            "{reason}: {metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "mqtt_crl_unknown_status_total{{decision=\"refused\",reason=\"{reason}\"}} {n}"
            )),
            "{reason}: {metrics}"
        );
    }

    // The tenant's own choice: fail-open admits the same devices, counted as admitted,
    // and still fetches nothing the egress policy refuses.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/settings",
            Some(json!({"crlOnlineFailOpen": true})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["crlOnlineFailOpen"], true, "{b}");
    for (cn, url, _) in &cases {
        let d = dev(cn, url.clone());
        let (c, el) = connect_v4(v4_options(
            cn,
            env.mqtt_port(),
            device_tls(&env.server_ca, &d, &[&ca]),
        ))
        .await
        .unwrap_or_else(|e| panic!("{cn}: refused although the tenant chose fail-open: {e:?}"));
        drop((c, el));
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let metrics = env.metrics().await;
    for (reason, n) in [("crl_egress_refused", 2), ("crl_unsupported_scheme", 1)] {
        assert!(
            metrics.contains(&format!(
                "mqtt_crl_unknown_status_total{{decision=\"admitted\",reason=\"{reason}\"}} {n}"
            )),
            "{reason}: {metrics}"
        );
    }
}
