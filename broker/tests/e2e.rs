//! End to end: CA upload over REST, devices over mTLS with rumqttc, the embedded broker.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_all_qos_and_retained() {
    publish_subscribe_all_qos_and_retained_on(start().await).await;
}

/// The same with sessions reaching the embedded rumqttd over loopback TCP instead of
/// in-process: the path an external broker is reached by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_all_qos_and_retained_over_loopback() {
    let env = start_with(|c| c.embedded.transport = broker::config::Transport::Loopback).await;
    publish_subscribe_all_qos_and_retained_on(env).await;
}

async fn publish_subscribe_all_qos_and_retained_on(env: Env) {
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let (sub_dev, pub_dev) = (device("sensor-sub", &ca), device("sensor-pub", &ca));
    let port = env.mqtt_port();

    let (sub, mut sub_el) = connect_v4(v4_options(
        "sensor-sub",
        port,
        device_tls(&env.server_ca, &sub_dev, &[&ca]),
    ))
    .await
    .unwrap();
    sub.subscribe("data/#", QoS::ExactlyOnce).await.unwrap();
    wait_suback(&mut sub_el).await;

    // ClientId empty: the CN is used.
    let (publ, pub_el) = connect_v4(v4_options(
        "",
        port,
        device_tls(&env.server_ca, &pub_dev, &[&ca]),
    ))
    .await
    .unwrap();
    let _driver = drive(pub_el);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("data/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let (topic, payload, _) = next_publish(&mut sub_el, WAIT).await.expect("message");
        assert_eq!(
            topic,
            format!("data/{i}"),
            "the tenant prefix is never visible"
        );
        assert_eq!(payload, format!("m{i}").into_bytes());
    }

    // Retained: a late subscriber gets it.
    publ.publish("state/door", QoS::AtLeastOnce, true, "open")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = device("late", &ca);
    let (l, mut l_el) = connect_v4(v4_options(
        "late",
        port,
        device_tls(&env.server_ca, &late, &[&ca]),
    ))
    .await
    .unwrap();
    l.subscribe("state/+", QoS::AtLeastOnce).await.unwrap();
    let (topic, payload, retain) = next_publish(&mut l_el, WAIT).await.expect("retained");
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retain),
        ("state/door", &b"open"[..], true)
    );

    // The devices were registered on first connect.
    let (s, body) = env
        .as_tenant("acme", Method::GET, "/tenant/tenants/acme/devices", None)
        .await;
    assert_eq!(s, 200);
    let text = body.to_string();
    assert!(
        text.contains("sensor-sub") && text.contains("sensor-pub"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_must_match_common_name() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let dev = device("dev-1", &ca);
    let tls = device_tls(&env.server_ca, &dev, &[&ca]);

    let err = connect_v4(v4_options("someone-else", env.mqtt_port(), tls.clone()))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );

    let err = connect_v5(v5_options("someone-else", env.mqtt_port(), tls.clone()))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ClientIdentifierNotValid
            )
        ),
        "{err:?}"
    );
    // The right ClientId over MQTT 5 works.
    connect_v5(v5_options("dev-1", env.mqtt_port(), tls))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_length_limit_and_intermediates() {
    let env = start().await;
    env.tenant("acme").await;
    let root = ca("Acme Root");
    let inter = intermediate("Acme Issuing", &root);
    env.upload("acme", &root, true).await;
    let dev = device("dev-int", &inter);
    let tls = device_tls(&env.server_ca, &dev, &[&inter, &root]);

    // Default limit 2 (device + CA): a chain of 3 is refused at the handshake.
    let err = connect_v4(v4_options("dev-int", env.mqtt_port(), tls.clone()))
        .await
        .err();
    assert!(
        err.is_some(),
        "chain of 3 must be refused with the default limit"
    );

    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"maxChainLength": 3})),
        )
        .await;
    assert_eq!(s, 422, "settings live under `settings`: {b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("maxChainLength"),
        "{b}"
    );
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/acme",
            "management/admin",
            ADMIN_PW,
            Some(json!({"settings": {"maxChainLength": 3}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    connect_v4(v4_options("dev-int", env.mqtt_port(), tls))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_devices_are_refused() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let now = time::OffsetDateTime::now_utc();
    let expired = certs::issue::device(
        "old",
        certs::issue::Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        },
        certs::issue::KeyType::P256,
        &ca.issuer().unwrap(),
        &[],
    )
    .unwrap();
    let err = connect_v4(v4_options(
        "old",
        env.mqtt_port(),
        device_tls(&env.server_ca, &expired, &[&ca]),
    ))
    .await
    .err();
    assert!(err.is_some(), "expired device must be refused");

    let dev = device("stolen", &ca);
    let tls = device_tls(&env.server_ca, &dev, &[&ca]);
    connect_v4(v4_options("stolen", env.mqtt_port(), tls.clone()))
        .await
        .unwrap();
    let serial = certs::CertInfo::parse(dev.cert_der.as_ref())
        .unwrap()
        .serial_hex;
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/trusted-certificates/settings/crl",
            Some(json!({"crls": [{"serialNumberInHex": serial.to_uppercase(), "revocationDate": "2026-01-01T00:00:00Z"}]})),
        )
        .await;
    assert!((200..300).contains(&s), "{s} {b}");
    let err = connect_v4(v4_options("stolen", env.mqtt_port(), tls))
        .await
        .err();
    assert!(err.is_some(), "revoked device must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_ca_drops_live_sessions_within_a_second() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    let fp = env.upload("acme", &ca, true).await;
    let d4 = device("d4", &ca);
    let d5 = device("d5", &ca);
    let (_c4, el4) = connect_v4(v4_options(
        "d4",
        env.mqtt_port(),
        device_tls(&env.server_ca, &d4, &[&ca]),
    ))
    .await
    .unwrap();
    let (_c5, mut el5) = connect_v5(v5_options(
        "d5",
        env.mqtt_port(),
        device_tls(&env.server_ca, &d5, &[&ca]),
    ))
    .await
    .unwrap();
    let h4 = drive(el4);
    let h5 = tokio::spawn(async move {
        loop {
            match el5.poll().await {
                Ok(_) => continue,
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => return Some(reason_code),
                Err(_) => return None,
            }
        }
    });
    let t0 = Instant::now();
    env.set_status("acme", &fp, "DISABLED").await;
    let e4 = tokio::time::timeout(Duration::from_secs(1), h4)
        .await
        .expect("v4 session closed within 1 s");
    assert!(e4.unwrap().is_some());
    let reason = tokio::time::timeout(Duration::from_secs(1), h5)
        .await
        .expect("v5 session closed within 1 s")
        .unwrap();
    assert_eq!(
        reason,
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NotAuthorized),
        "MQTT 5 gets DISCONNECT 0x87 first"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    // And new connections are refused.
    assert!(connect_v4(v4_options(
        "d4",
        env.mqtt_port(),
        device_tls(&env.server_ca, &d4, &[&ca])
    ))
    .await
    .is_err());
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("mqtt_sessions_closed_by_revocation_total{reason=\"anchor_disabled\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated() {
    let env = start().await;
    env.tenant("acme").await;
    env.tenant("globex").await;
    let ca_a = ca("Shared Name Root");
    let ca_b = ca("Shared Name Root"); // same subject DN, different key
    env.upload("acme", &ca_a, true).await;
    env.upload("globex", &ca_b, true).await;
    let a = device("dev", &ca_a);
    let b = device("dev", &ca_b); // same CN in both tenants
    let port = env.mqtt_port();

    let (bc, mut bel) = connect_v4(v4_options(
        "dev",
        port,
        device_tls(&env.server_ca, &b, &[&ca_b]),
    ))
    .await
    .unwrap();
    for f in ["#", "+/#", "$SYS/#", "acme/#", "$share/g/#"] {
        bc.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        wait_suback(&mut bel).await;
    }
    let (ac, ael) = connect_v4(v4_options(
        "dev",
        port,
        device_tls(&env.server_ca, &a, &[&ca_a]),
    ))
    .await
    .unwrap();
    let _d = drive(ael);
    for t in ["x", "globex/x", "../globex/x", "acme/x"] {
        ac.publish(t, QoS::AtLeastOnce, true, "secret")
            .await
            .unwrap();
    }
    assert_eq!(
        next_publish(&mut bel, Duration::from_secs(2)).await,
        None,
        "no cross-tenant delivery"
    );
    // Retained messages of acme are not visible to a new globex subscriber either.
    let b2 = device("dev2", &ca_b);
    let (c2, mut el2) = connect_v4(v4_options(
        "dev2",
        port,
        device_tls(&env.server_ca, &b2, &[&ca_b]),
    ))
    .await
    .unwrap();
    c2.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el2).await;
    assert_eq!(next_publish(&mut el2, Duration::from_secs(1)).await, None);

    // Each tenant's admin sees only its own devices; the other tenant's path is a 404.
    let (s, _) = env
        .as_tenant("globex", Method::GET, "/tenant/tenants/acme/devices", None)
        .await;
    assert_eq!(s, 404);
}

/// A device "watcher" subscribed to `status/#` (where the will tests' devices leave their
/// wills).
async fn watch_status(
    env: &Env,
    ca: &certs::issue::Issued,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let watcher = device("watcher", ca);
    let (w, mut wel) = connect_v4(v4_options(
        "watcher",
        env.mqtt_port(),
        device_tls(&env.server_ca, &watcher, &[ca]),
    ))
    .await
    .unwrap();
    w.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut wel).await;
    (w, wel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_and_persistent_session() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();
    let (w, mut wel) = watch_status(&env, &ca).await;

    // Will: published when the device vanishes without DISCONNECT.
    let mortal = device("mortal", &ca);
    let mut o = v4_options("mortal", port, device_tls(&env.server_ca, &mortal, &[&ca]));
    o.set_last_will(rumqttc::LastWill::new(
        "status/mortal",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (_m, mel) = connect_v4(o).await.unwrap();
    drop(mel); // the TCP connection drops
    let (topic, payload, _) = next_publish(&mut wel, WAIT).await.expect("will message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("status/mortal", &b"gone"[..])
    );
    let _watcher = drive(wel);

    // Persistent session: subscribed QoS 1 with clean_session=false, offline, resumed.
    let sleeper = device("sleeper", &ca);
    let tls = device_tls(&env.server_ca, &sleeper, &[&ca]);
    let mut o = v4_options("sleeper", port, tls.clone());
    o.set_clean_session(false);
    let (s, mut sel) = connect_v4(o.clone()).await.unwrap();
    s.subscribe("inbox/sleeper", QoS::AtLeastOnce)
        .await
        .unwrap();
    wait_suback(&mut sel).await;
    s.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while sel.poll().await.is_ok() {}
    })
    .await;
    w.publish("inbox/sleeper", QoS::AtLeastOnce, false, "while you slept")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_s2, mut sel2) = connect_v4(o).await.unwrap();
    let (topic, payload, _) = next_publish(&mut sel2, WAIT).await.expect("queued message");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("inbox/sleeper", &b"while you slept"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_is_honoured_and_a_resumed_or_taken_over_session_cancels_the_will() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();
    let (_w, mut wel) = watch_status(&env, &ca).await;

    // An MQTT 5 device with a persistent session and a will delayed by 2 s.
    let lazarus = device("lazarus", &ca);
    let mut o = v5_options(
        "lazarus",
        port,
        device_tls(&env.server_ca, &lazarus, &[&ca]),
    );
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let props = LastWillProperties {
        delay_interval: Some(2),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(LastWill::new(
        "status/lazarus",
        "gone",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        Some(props),
    ));

    // It vanishes, and resumes its session within the delay: no will.
    let (_l, lel) = connect_v5(o.clone()).await.unwrap();
    drop(lel);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_l, lel) = connect_v5(o.clone()).await.unwrap();
    assert_eq!(
        next_publish(&mut wel, Duration::from_secs(3)).await,
        None,
        "will cancelled by the resumed session"
    );

    // It comes back on a new connection while the old one is still open (its network
    // changed, say): the new session takes the old one over and resumes it. No will.
    let (_l, lel_new) = connect_v5(o.clone()).await.unwrap();
    drop(lel);
    assert_eq!(
        next_publish(&mut wel, Duration::from_secs(3)).await,
        None,
        "no will for a session taken over and resumed"
    );

    // It vanishes for good: the will comes after the delay, not before.
    drop(lel_new);
    let gone = Instant::now();
    let (topic, payload, _) = next_publish(&mut wel, WAIT).await.expect("delayed will");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("status/lazarus", &b"gone"[..])
    );
    let after = gone.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "will published {after:?} after the device vanished, before its 2 s delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_again_takes_its_session_over() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();
    let twin = device("twin", &ca);
    let tls = device_tls(&env.server_ca, &twin, &[&ca]);
    let (_first, first_el) = connect_v4(v4_options("twin", port, tls.clone()))
        .await
        .unwrap();
    let first = drive(first_el);

    // The same device again (say, after a network change the first never noticed).
    let (second, mut second_el) = connect_v4(v4_options("twin", port, tls)).await.unwrap();
    let ended = tokio::time::timeout(WAIT, first)
        .await
        .expect("the first session is closed")
        .unwrap();
    assert!(ended.is_some(), "the first session's event loop ended");

    // The second session works after the first one's end was handled.
    second.subscribe("twin/in", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut second_el).await;
    let sender = device("sender", &ca);
    let (s, sel) = connect_v4(v4_options(
        "sender",
        port,
        device_tls(&env.server_ca, &sender, &[&ca]),
    ))
    .await
    .unwrap();
    let _sender = drive(sel);
    s.publish("twin/in", QoS::AtLeastOnce, false, "for the second")
        .await
        .unwrap();
    let (topic, payload, _) = next_publish(&mut second_el, WAIT)
        .await
        .expect("the second session receives");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("twin/in", &b"for the second"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_embedded_broker_refuses_with_server_unavailable() {
    let env = start_with(|c| c.embedded.max_connections = 2).await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let port = env.mqtt_port();
    let opts = |cn: &str| {
        let dev = device(cn, &ca);
        v4_options(cn, port, device_tls(&env.server_ca, &dev, &[&ca]))
    };
    let (first, first_el) = connect_v4(opts("one")).await.expect("first device");
    let first_el = drive(first_el);
    let (_second, second_el) = connect_v4(opts("two")).await.expect("second device");
    let _second = drive(second_el);

    // The broker's own links (wills, echo probe) do not take the devices' places.
    let third = opts("three");
    match connect_v4(third.clone()).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::ServiceUnavailable)
        }
        Err(other) => panic!("expected CONNACK 3 (server unavailable), got {other:?}"),
        Ok(_) => panic!("a third device connected to a broker full with two"),
    }
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("reason=\"backend_refused\"} 1"),
        "{metrics}"
    );

    // A place frees up when a device leaves.
    first.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, first_el).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect_v4(third)
        .await
        .expect("third device after the first left");
}

/// A device that says DISCONNECT and leaves its socket open: the embedded broker closes
/// its side first, and that is the end of a normal session, not a lost backend (it was
/// counted as `refused{reason="backend_lost"}` and logged as "the broker behind the
/// front-end went away").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_s_disconnect_is_a_normal_end_not_a_lost_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    for i in 0..5 {
        let cn = format!("bye{i}");
        let dev = device(&cn, &ca);
        let (mut tls, connack) = raw_session_v4_from(&env, "127.0.0.1", &cn, &dev, &[&ca])
            .await
            .unwrap();
        assert_eq!(connack, vec![0x20, 0x02, 0x00, 0x00]);
        tls.write_all(&[0xE0, 0x00]).await.unwrap();
        // The front-end closes the session; the device keeps its side open meanwhile.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("closed after DISCONNECT")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing after a DISCONNECT");
    }
    // The session's end is counted right after its socket closes.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let metrics = env.metrics().await;
        if metrics.contains("mqtt_connections_open{tenant=\"acme\"} 0") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "sessions still open: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        counter(
            &metrics,
            "mqtt_connections_refused_total{reason=\"backend_lost\"}"
        ),
        0.0,
        "{metrics}"
    );
}
