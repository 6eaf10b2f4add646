//! Persistent sessions, their expiry and the embedded broker's state across restarts,
//! with real clients over mTLS (rumqttc 3.1.1 and 5.0) against the real binary where a
//! restart is involved (SIGTERM and SIGKILL), and in-process otherwise.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Event, Packet, QoS};

type El5 = rumqttc::v5::EventLoop;

/// Connects a 3.1.1 client and returns it with its CONNACK's session present flag.
async fn v4(opts: rumqttc::MqttOptions) -> (rumqttc::AsyncClient, rumqttc::EventLoop, bool) {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return (client, el, ack.session_present)
            }
            Ok(Ok(_)) => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

/// Connects a 5.0 client and returns it with its CONNACK's session present flag.
async fn v5(opts: rumqttc::v5::MqttOptions) -> (rumqttc::v5::AsyncClient, El5, bool) {
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(ack)))) => {
                return (client, el, ack.session_present)
            }
            Ok(Ok(_)) => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    }
}

/// The payloads of the PUBLISH packets a 3.1.1 client gets until `wait` passes with
/// nothing new.
async fn drain_v4(el: &mut rumqttc::EventLoop, wait: Duration) -> Vec<(String, String, QoS)> {
    let mut got = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(wait, el.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = ev {
            got.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
            ));
        }
    }
    got
}

/// The PUBLISH packets a 5.0 client gets until `wait` passes with nothing new.
async fn drain_v5(el: &mut El5, wait: Duration) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let mut got = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(wait, el.poll()).await {
        if let rumqttc::v5::Event::Incoming(P5::Publish(p)) = ev {
            got.push(p);
        }
    }
    got
}

/// Polls a 5.0 client until its SUBACK.
async fn suback5(el: &mut El5) {
    until_v5(el, "SUBACK", |p| matches!(p, P5::SubAck(_)).then_some(())).await
}

/// A raw mTLS connection to the MQTT port, for packets rumqttc will not send.
async fn mtls(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Polls a 3.1.1 client until its PUBACK.
async fn puback4(el: &mut rumqttc::EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// Disconnects cleanly (DISCONNECT sent, the connection closed).
async fn bye_v4(client: rumqttc::AsyncClient, mut el: rumqttc::EventLoop) {
    client.disconnect().await.unwrap();
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), el.poll()).await {}
}

async fn bye_v5(client: rumqttc::v5::AsyncClient, mut el: El5) {
    client.disconnect().await.unwrap();
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), el.poll()).await {}
}

/// Publishes `n` QoS 1 messages `<tag>-<i>` to `topic` and waits for every PUBACK:
/// these are the messages the broker acknowledged.
async fn publish_acked(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
    id: &str,
    topic: &str,
    tag: &str,
    n: usize,
) {
    let (client, mut el, _) = v4(v4_options(id, port, tls)).await;
    for i in 0..n {
        client
            .publish(topic, QoS::AtLeastOnce, false, format!("{tag}-{i}"))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publisher: {other:?} after {acked} PUBACKs"),
        }
    }
    bye_v4(client, el).await;
}

struct Pki {
    ca: certs::issue::Issued,
}

impl Pki {
    fn tls(&self, server_ca: &str, cn: &str) -> std::sync::Arc<rustls::ClientConfig> {
        device_tls(server_ca, &device(cn, &self.ca), &[])
    }
}

/// Creates tenant `acme` with an auto-registering CA over the admin API at `admin`.
async fn acme_at(http: &reqwest::Client, admin: std::net::SocketAddr) -> Pki {
    let ca = ca("Sessions CA");
    let base = format!("https://localhost:{}", admin.port());
    let r = http
        .post(format!("{base}/tenant/tenants"))
        .basic_auth("management/admin", Some(ADMIN_PW))
        .json(&serde_json::json!({"id": "acme", "company": "acme", "adminName": "admin", "adminPass": "acme-pw-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = http
        .post(format!("{base}/tenant/tenants/acme/trusted-certificates"))
        .basic_auth("acme/admin", Some("acme-pw-1"))
        .json(&serde_json::json!({
            "status": "ENABLED", "name": "ca", "autoRegistrationEnabled": "true",
            "certInPemFormat": ca.cert_pem(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    Pki { ca }
}

fn server_ca(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("server.crt")).unwrap()
}

fn stop(process: &mut BrokerProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = std::time::Instant::now();
    loop {
        if let Some(s) = process.child.try_wait().unwrap() {
            if signal == "-TERM" {
                assert!(s.success(), "SIGTERM exit: {s:?}");
            }
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "broker did not exit on {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queues_and_retained_messages_survive_sigterm_and_sigkill() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let ca_pem = server_ca(dir.path());
    let http = https_client(&ca_pem);
    let pki = acme_at(&http, broker.addr("admin_addr")).await;
    let port = broker.addr("mqtt_addr").port();

    // Two persistent sessions subscribe and leave: 3.1.1 CleanSession=0, and 5.0 with
    // a Session Expiry Interval of an hour.
    let mut o4 = v4_options("sub-4", port, pki.tls(&ca_pem, "sub-4"));
    o4.set_clean_session(false);
    let (c4, mut el4, present) = v4(o4).await;
    assert!(!present, "a new session");
    c4.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el4).await;
    bye_v4(c4, el4).await;
    let mut o5 = v5_options("sub-5", port, pki.tls(&ca_pem, "sub-5"));
    o5.set_clean_start(true)
        .set_session_expiry_interval(Some(3600));
    let (c5, mut el5, present) = v5(o5).await;
    assert!(!present);
    c5.subscribe("t/#", Q5::AtLeastOnce).await.unwrap();
    suback5(&mut el5).await;
    bye_v5(c5, el5).await;

    // Acknowledged while they are offline: 20 queued messages and a retained one.
    publish_acked(
        port,
        pki.tls(&ca_pem, "pub"),
        "pub",
        "t/a",
        "before-term",
        20,
    )
    .await;
    {
        let (client, mut el, _) = v4(v4_options("pub", port, pki.tls(&ca_pem, "pub"))).await;
        client
            .publish("r/state", QoS::AtLeastOnce, true, "retained-1")
            .await
            .unwrap();
        puback4(&mut el).await;
        bye_v4(client, el).await;
    }

    // SIGTERM, restart: everything is there; more messages go to the restored sessions.
    stop(&mut broker, "-TERM");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("broker-state.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the tenants' messages are the broker's only"
        );
    }
    let mut broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    assert!(
        broker
            .before
            .iter()
            .any(|l| l.contains("embedded broker state restored")
                && l.contains("retained=1")
                && l.contains("sessions=2")),
        "{:#?}",
        broker.before
    );
    let port = broker.addr("mqtt_addr").port();
    publish_acked(
        port,
        pki.tls(&ca_pem, "pub"),
        "pub",
        "t/b",
        "before-kill",
        10,
    )
    .await;
    // Acknowledged more than a second before the kill.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(&mut broker, "-KILL");
    let broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let port = broker.addr("mqtt_addr").port();

    let expected: Vec<String> = (0..20)
        .map(|i| format!("before-term-{i}"))
        .chain((0..10).map(|i| format!("before-kill-{i}")))
        .collect();
    // The 3.1.1 session resumes and gets all 30, in order, at QoS 1.
    let mut o4 = v4_options("sub-4", port, pki.tls(&ca_pem, "sub-4"));
    o4.set_clean_session(false);
    let (c4, mut el4, present) = v4(o4).await;
    assert!(present, "the session survived two restarts");
    let got = drain_v4(&mut el4, Duration::from_secs(2)).await;
    let payloads: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        payloads,
        expected,
        "acknowledged 30, recovered {}",
        got.len()
    );
    assert!(
        got.iter().all(|(_, _, q)| *q == QoS::AtLeastOnce),
        "{got:?}"
    );
    bye_v4(c4, el4).await;
    // The 5.0 session too.
    let mut o5 = v5_options("sub-5", port, pki.tls(&ca_pem, "sub-5"));
    o5.set_clean_start(false)
        .set_session_expiry_interval(Some(3600));
    let (c5, mut el5, present) = v5(o5).await;
    assert!(present);
    let got = drain_v5(&mut el5, Duration::from_secs(2)).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(payloads, expected);
    bye_v5(c5, el5).await;

    // Delivered and acknowledged: gone from the queue.
    let mut o4 = v4_options("sub-4", port, pki.tls(&ca_pem, "sub-4"));
    o4.set_clean_session(false);
    let (c4, mut el4, present) = v4(o4).await;
    assert!(present);
    assert_eq!(drain_v4(&mut el4, Duration::from_secs(1)).await, vec![]);
    bye_v4(c4, el4).await;

    // The retained message survived SIGTERM and SIGKILL.
    let (c, mut el, _) = v4(v4_options("late", port, pki.tls(&ca_pem, "late"))).await;
    c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let got = drain_v4(&mut el, Duration::from_secs(2)).await;
    assert_eq!(
        got,
        vec![(
            "r/state".to_string(),
            "retained-1".to_string(),
            QoS::AtLeastOnce
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_sessions_expire_and_clean_start_discards() {
    expiry_and_clean_start(start().await).await;
}

/// Through `--backend` to Mosquitto, the front-end costs nothing of what Mosquitto does
/// right: the same session expiry and clean start behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_sessions_expire_and_clean_start_discards_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let env = start_with(|c| c.backend = format!("mqtt://127.0.0.1:{}", mosquitto.port)).await;
    expiry_and_clean_start(env).await;
}

async fn expiry_and_clean_start(env: Env) {
    env.tenant("acme").await;
    let ca = ca("Expiry CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let tls = |cn: &str| pki.tls(&env.server_ca, cn);
    let opts = |cn: &str, clean: bool, expiry: u32| {
        let mut o = v5_options(cn, port, tls(cn));
        o.set_clean_start(clean)
            .set_session_expiry_interval(Some(expiry));
        o
    };
    async fn subscribe(c: &rumqttc::v5::AsyncClient, el: &mut El5) {
        c.subscribe("e/#", Q5::AtLeastOnce).await.unwrap();
        suback5(el).await;
    }

    // Expiry 2 s: gone 3.5 s after the disconnect, with what was queued for it.
    let (c, mut el, _) = v5(opts("short", true, 2)).await;
    subscribe(&c, &mut el).await;
    bye_v5(c, el).await;
    // Expiry 0 with CleanStart=0: the session ends with the connection.
    let (c, mut el, _) = v5(opts("zero", false, 0)).await;
    subscribe(&c, &mut el).await;
    bye_v5(c, el).await;
    // Expiry 60, then a CleanStart=1 connection: a new session, nothing queued.
    let (c, mut el, _) = v5(opts("fresh", true, 60)).await;
    subscribe(&c, &mut el).await;
    bye_v5(c, el).await;
    // Expiry 60, resumed: gets what was queued.
    let (c, mut el, _) = v5(opts("kept", true, 60)).await;
    subscribe(&c, &mut el).await;
    bye_v5(c, el).await;

    publish_acked(port, tls("pub"), "pub", "e/x", "m", 3).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let (c, mut el, present) = v5(opts("short", false, 2)).await;
    assert!(!present, "expired after 2 s");
    assert!(drain_v5(&mut el, Duration::from_secs(1)).await.is_empty());
    bye_v5(c, el).await;
    let (c, mut el, present) = v5(opts("zero", false, 0)).await;
    assert!(!present, "ended at disconnect");
    assert!(drain_v5(&mut el, Duration::from_secs(1)).await.is_empty());
    bye_v5(c, el).await;
    let (c, mut el, present) = v5(opts("fresh", true, 60)).await;
    assert!(!present, "CleanStart=1 starts a new session");
    assert!(drain_v5(&mut el, Duration::from_secs(1)).await.is_empty());
    bye_v5(c, el).await;
    let (c, mut el, present) = v5(opts("kept", false, 60)).await;
    assert!(present);
    let got: Vec<_> = drain_v5(&mut el, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, ["m-0", "m-1", "m-2"]);
    bye_v5(c, el).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_expire_and_the_queue_is_bounded() {
    let env = start_with(|c| c.embedded.max_queued_messages = 5).await;
    env.tenant("acme").await;
    let ca = ca("Queue CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let tls = |cn: &str| pki.tls(&env.server_ca, cn);
    let persistent = |cn: &str, clean: bool| {
        let mut o = v5_options(cn, port, tls(cn));
        o.set_clean_start(clean)
            .set_session_expiry_interval(Some(600));
        o
    };
    for (cn, filter) in [("exp", "x/#"), ("lim", "l/#")] {
        let (c, mut el, _) = v5(persistent(cn, true)).await;
        c.subscribe(filter, Q5::AtLeastOnce).await.unwrap();
        suback5(&mut el).await;
        bye_v5(c, el).await;
    }

    let (p, mut pel, _) = v5(v5_options("pub", port, tls("pub"))).await;
    let published = std::time::Instant::now();
    let expiring = |s: u32| PublishProperties {
        message_expiry_interval: Some(s),
        ..Default::default()
    };
    p.publish_with_properties("x/short", Q5::AtLeastOnce, false, "short", expiring(1))
        .await
        .unwrap();
    p.publish_with_properties("x/long", Q5::AtLeastOnce, false, "long", expiring(100))
        .await
        .unwrap();
    // Retained messages with an expiry, held by the router itself.
    p.publish_with_properties("rx/short", Q5::AtLeastOnce, true, "short", expiring(1))
        .await
        .unwrap();
    p.publish_with_properties("rx/long", Q5::AtLeastOnce, true, "long", expiring(100))
        .await
        .unwrap();
    // 3 QoS 0, then 6 QoS 1 messages for a queue of 5: the QoS 0 ones make room
    // first, then the sixth QoS 1 message is dropped.
    for i in 0..3 {
        p.publish("l/q0", Q5::AtMostOnce, false, format!("q0-{i}"))
            .await
            .unwrap();
    }
    for i in 0..6 {
        p.publish("l/q1", Q5::AtLeastOnce, false, format!("q1-{i}"))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 10 {
        match tokio::time::timeout(Duration::from_secs(10), pel.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    bye_v5(p, pel).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let (c, mut el, present) = v5(persistent("exp", false)).await;
    assert!(present);
    let got = drain_v5(&mut el, Duration::from_secs(1)).await;
    assert_eq!(
        got.len(),
        1,
        "the 1 s message expired in the queue: {got:?}"
    );
    assert_eq!(&got[0].payload[..], b"long");
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the remaining expiry interval is forwarded");
    // Whole seconds on both sides, and the drain's last second: within one of the age.
    let age = published.elapsed().as_secs() as u32;
    assert!(
        (99 - age..=101 - age).contains(&left) && left < 100,
        "remaining {left} s of 100, published {age} s ago"
    );
    bye_v5(c, el).await;

    // The expired retained message is not sent; the other one with what it has left.
    let (c, mut el, _) = v5(v5_options("late", port, tls("late"))).await;
    c.subscribe("rx/#", Q5::AtLeastOnce).await.unwrap();
    let got = drain_v5(&mut el, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((&got[0].payload[..], got[0].retain), (&b"long"[..], true));
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the remaining expiry interval is forwarded");
    // Whole seconds on both sides, and the drain's last second: within one of the age.
    let age = published.elapsed().as_secs() as u32;
    assert!(
        (99 - age..=101 - age).contains(&left) && left < 100,
        "remaining {left} s of 100, published {age} s ago"
    );
    bye_v5(c, el).await;

    let (c, mut el, _) = v5(persistent("lim", false)).await;
    let got: Vec<String> = drain_v5(&mut el, Duration::from_secs(1))
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, ["q1-0", "q1-1", "q1-2", "q1-3", "q1-4"]);
    bye_v5(c, el).await;
    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_session_messages_dropped_total{reason="queue_full_oldest_qos0",tenant="acme"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        counter(
            &m,
            r#"mqtt_session_messages_dropped_total{reason="queue_full",tenant="acme"}"#
        ),
        1.0
    );
    assert_eq!(
        counter(
            &m,
            r#"mqtt_session_messages_dropped_total{reason="expired",tenant="acme"}"#
        ),
        1.0,
        "the queued one (rumqttd drops an expired retained message itself): {m}"
    );
}

/// What one publisher had acknowledged: (index, when), for queued and retained messages.
#[derive(Default)]
struct Acked {
    queued: Vec<(usize, std::time::Instant)>,
    retained: Vec<(usize, std::time::Instant)>,
}

/// Publishes QoS 1 messages `p<k>-<i>` to `load/p<k>` one at a time, and every tenth
/// index as the retained message of `r/p<k>`, recording each PUBACK, until the broker
/// goes away.
async fn publish_until_killed(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
    k: usize,
) -> Acked {
    let mut acked = Acked::default();
    let id = format!("p{k}");
    let (client, mut el, _) = v4(v4_options(&id, port, tls)).await;
    let mut i = 0;
    'outer: loop {
        let retained = i % 10 == 0;
        let (topic, payload) = if retained {
            (format!("r/p{k}"), i.to_string())
        } else {
            (format!("load/p{k}"), format!("p{k}-{i}"))
        };
        if client
            .publish(topic, QoS::AtLeastOnce, retained, payload)
            .await
            .is_err()
        {
            break;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
                _ => break 'outer,
            }
        }
        let entry = (i, std::time::Instant::now());
        if retained {
            acked.retained.push(entry);
        } else {
            acked.queued.push(entry);
        }
        i += 1;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_devices_publish_loses_nothing_acknowledged_before_the_last_second() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "[embedded]\nmax_queued_messages = 1000000\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut broker = BrokerProcess::start_with_args(dir.path(), ADMIN_PW, &args);
    let ca_pem = server_ca(dir.path());
    let pki = acme_at(&https_client(&ca_pem), broker.addr("admin_addr")).await;
    let port = broker.addr("mqtt_addr").port();
    let sink = |port| {
        let mut o = v4_options("sink", port, pki.tls(&ca_pem, "sink"));
        o.set_clean_session(false);
        o
    };
    let (c, mut el, _) = v4(sink(port)).await;
    c.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el).await;
    bye_v4(c, el).await;

    const PUBLISHERS: usize = 4;
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|k| {
            tokio::spawn(publish_until_killed(
                port,
                pki.tls(&ca_pem, &format!("p{k}")),
                k,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut broker, "-KILL");
    let killed = std::time::Instant::now();
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let safe = killed - Duration::from_secs(1);

    let broker = BrokerProcess::start_with_args(dir.path(), ADMIN_PW, &args);
    let port = broker.addr("mqtt_addr").port();
    let (c, mut el, present) = v4(sink(port)).await;
    assert!(present);
    let got = drain_v4(&mut el, Duration::from_secs(3)).await;
    bye_v4(c, el).await;
    let mut recovered: Vec<Vec<usize>> = vec![Vec::new(); PUBLISHERS];
    for (topic, payload, _) in &got {
        let (k, i) = payload
            .strip_prefix('p')
            .and_then(|r| r.split_once('-'))
            .and_then(|(k, i)| Some((k.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("unexpected message {topic} {payload}"));
        assert_eq!(topic, &format!("load/p{k}"));
        recovered[k].push(i);
    }
    let (mut total_acked, mut total_recovered, mut lost_last_second) = (0, 0, 0);
    for (k, a) in acked.iter().enumerate() {
        let r = &recovered[k];
        assert!(r.windows(2).all(|w| w[0] < w[1]), "p{k} in order: {r:?}");
        for (i, at) in &a.queued {
            let back = r.binary_search(i).is_ok();
            if *at < safe {
                assert!(
                    back,
                    "p{k}-{i} acknowledged {:?} before the kill, lost",
                    killed - *at
                );
            } else if !back {
                lost_last_second += 1;
            }
        }
        total_acked += a.queued.len();
        total_recovered += r.len();
    }
    eprintln!(
        "SIGKILL: {total_acked} QoS 1 messages acknowledged to offline sessions, {total_recovered} recovered, {lost_last_second} lost (all acknowledged within the last second)"
    );
    assert!(total_acked > 100, "the publishers got going: {total_acked}");

    // Retained: each topic holds at least the last value acknowledged before `safe`.
    let (c, mut el, _) = v4(v4_options("late", port, pki.tls(&ca_pem, "late"))).await;
    c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let got = drain_v4(&mut el, Duration::from_secs(2)).await;
    for (k, a) in acked.iter().enumerate() {
        let want = a
            .retained
            .iter()
            .filter(|(_, at)| *at < safe)
            .map(|(i, _)| *i)
            .max();
        let have = got
            .iter()
            .find(|(t, _, _)| *t == format!("r/p{k}"))
            .map(|(_, p, _)| p.parse::<usize>().unwrap());
        if let Some(want) = want {
            assert!(have.is_some_and(|h| h >= want), "r/p{k}: {have:?} < {want}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_device_with_the_same_cn_gets_nothing_of_a_persistent_session() {
    let env = start().await;
    let port = env.mqtt_port();
    let mut pki = Vec::new();
    for tenant in ["acme", "mallory"] {
        env.tenant(tenant).await;
        let ca = ca(&format!("{tenant} CA"));
        env.upload(tenant, &ca, true).await;
        pki.push(Pki { ca });
    }
    let persistent = |p: &Pki, cn: &str| {
        let mut o = v4_options(cn, port, p.tls(&env.server_ca, cn));
        o.set_clean_session(false);
        o
    };
    let (c, mut el, _) = v4(persistent(&pki[0], "meter")).await;
    c.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el).await;
    bye_v4(c, el).await;
    publish_acked(
        port,
        pki[0].tls(&env.server_ca, "ops"),
        "ops",
        "cmd/open",
        "secret",
        3,
    )
    .await;

    // mallory's device named like acme's: a session of its own, nothing queued.
    let (c, mut el, present) = v4(persistent(&pki[1], "meter")).await;
    assert!(!present, "mallory's 'meter' is not acme's");
    assert_eq!(drain_v4(&mut el, Duration::from_secs(1)).await, vec![]);
    bye_v4(c, el).await;
    // acme's still gets all of it.
    let (c, mut el, present) = v4(persistent(&pki[0], "meter")).await;
    assert!(present);
    let got: Vec<String> = drain_v4(&mut el, Duration::from_secs(1))
        .await
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(got, ["secret-0", "secret-1", "secret-2"]);
    bye_v4(c, el).await;
}

/// Subscribes `c` to `filter` at QoS 1 with the given options and waits for the SUBACK.
async fn subscribe_with(
    c: &rumqttc::v5::AsyncClient,
    el: &mut El5,
    filter: &str,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: rumqttc::v5::mqttbytes::v5::RetainForwardRule,
) {
    let f = rumqttc::v5::mqttbytes::v5::Filter {
        path: filter.into(),
        qos: Q5::AtLeastOnce,
        nolocal: no_local,
        preserve_retain: retain_as_published,
        retain_forward_rule: retain_handling,
    };
    c.subscribe_many([f]).await.unwrap();
    suback5(el).await;
}

/// (payload, retain flag) of what a 5.0 client gets until 1 s passes with nothing new.
async fn got_v5(el: &mut El5) -> Vec<(String, bool)> {
    drain_v5(el, Duration::from_secs(1))
        .await
        .into_iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.retain))
        .collect()
}

async fn subscription_options(env: Env) {
    use rumqttc::v5::mqttbytes::v5::RetainForwardRule as Rh;
    env.tenant("acme").await;
    let ca = ca("Options CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let client = |cn: &str| v5_options(cn, port, pki.tls(&env.server_ca, cn));

    let (other, mut other_el, _) = v5(client("other")).await;
    other
        .publish("so/r/old", Q5::AtLeastOnce, true, "old")
        .await
        .unwrap();
    loop {
        if let Ok(Ok(rumqttc::v5::Event::Incoming(P5::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(10), other_el.poll()).await
        {
            break;
        }
    }
    // No Local: "me" does not get its own message, and gets the other's.
    let (me, mut me_el, _) = v5(client("me")).await;
    subscribe_with(
        &me,
        &mut me_el,
        "so/nl/#",
        true,
        false,
        Rh::OnEverySubscribe,
    )
    .await;
    // Retain As Published 1 and 0 (both get the retained message at subscribe, flag
    // set); Retain Handling 2: none at subscribe.
    let (rap1, mut rap1_el, _) = v5(client("rap1")).await;
    subscribe_with(
        &rap1,
        &mut rap1_el,
        "so/r/#",
        false,
        true,
        Rh::OnEverySubscribe,
    )
    .await;
    let (rap0, mut rap0_el, _) = v5(client("rap0")).await;
    subscribe_with(
        &rap0,
        &mut rap0_el,
        "so/r/#",
        false,
        false,
        Rh::OnEverySubscribe,
    )
    .await;
    let (rh2, mut rh2_el, _) = v5(client("rh2")).await;
    subscribe_with(&rh2, &mut rh2_el, "so/r/#", false, false, Rh::Never).await;
    assert_eq!(got_v5(&mut rap1_el).await, [("old".to_string(), true)]);
    assert_eq!(got_v5(&mut rap0_el).await, [("old".to_string(), true)]);
    assert_eq!(
        got_v5(&mut rh2_el).await,
        [],
        "Retain Handling 2: no retained message"
    );

    me.publish("so/nl/x", Q5::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    // "mine" is on its way (sent before the event loop waits for more) when "theirs" is.
    let _ = tokio::time::timeout(Duration::from_millis(300), me_el.poll()).await;
    other
        .publish("so/nl/x", Q5::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    other
        .publish("so/r/new", Q5::AtLeastOnce, true, "live")
        .await
        .unwrap();
    let _ = drain_v5(&mut other_el, Duration::from_millis(500)).await;
    assert_eq!(
        got_v5(&mut me_el).await,
        [("theirs".to_string(), false)],
        "No Local"
    );
    assert_eq!(
        got_v5(&mut rap1_el).await,
        [("live".to_string(), true)],
        "Retain As Published"
    );
    assert_eq!(got_v5(&mut rap0_el).await, [("live".to_string(), false)]);
    assert_eq!(got_v5(&mut rh2_el).await, [("live".to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_no_local_retain_as_published_retain_handling() {
    subscription_options(start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let env = start_with(|c| c.backend = format!("mqtt://127.0.0.1:{}", mosquitto.port)).await;
    subscription_options(env).await;
}

/// Publishes one QoS 1 message and returns the reason of its PUBACK.
async fn puback_reason(
    c: &rumqttc::v5::AsyncClient,
    el: &mut El5,
    topic: &str,
    retain: bool,
    payload: &str,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    c.publish(topic, Q5::AtLeastOnce, retain, payload.to_owned())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::PubAck(a)))) => return a.reason,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK for {topic}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_retained_messages_are_bounded() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason::{QuotaExceeded, Success};
    let env = start_with(|c| c.embedded.max_retained_per_tenant = 2).await;
    let port = env.mqtt_port();
    let mut pki = Vec::new();
    for tenant in ["acme", "other"] {
        env.tenant(tenant).await;
        let ca = ca(&format!("{tenant} retained CA"));
        env.upload(tenant, &ca, true).await;
        pki.push(Pki { ca });
    }
    let (c, mut el, _) = v5(v5_options("pub5", port, pki[0].tls(&env.server_ca, "pub5"))).await;
    assert_eq!(
        puback_reason(&c, &mut el, "r/1", true, "one").await,
        Success
    );
    assert_eq!(
        puback_reason(&c, &mut el, "r/2", true, "two").await,
        Success
    );
    assert_eq!(
        puback_reason(&c, &mut el, "r/3", true, "three").await,
        QuotaExceeded,
        "a third topic is over the limit of 2"
    );
    assert_eq!(
        puback_reason(&c, &mut el, "r/1", true, "one again").await,
        Success,
        "an update is no new topic"
    );
    assert_eq!(
        puback_reason(&c, &mut el, "r/2", true, "").await,
        Success,
        "deleted"
    );
    assert_eq!(
        puback_reason(&c, &mut el, "r/3", true, "three").await,
        Success,
        "room again"
    );
    assert_eq!(
        puback_reason(&c, &mut el, "live/x", false, "not retained").await,
        Success
    );
    bye_v5(c, el).await;

    // 3.1.1 cannot be refused one message: it goes out live, not retained.
    let (sub, mut sub_el, _) = v4(v4_options(
        "watch",
        port,
        pki[0].tls(&env.server_ca, "watch"),
    ))
    .await;
    sub.subscribe("r/4", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut sub_el).await;
    let (p4, mut p4_el, _) = v4(v4_options("pub4", port, pki[0].tls(&env.server_ca, "pub4"))).await;
    p4.publish("r/4", QoS::AtLeastOnce, true, "four")
        .await
        .unwrap();
    puback4(&mut p4_el).await;
    bye_v4(p4, p4_el).await;
    let live = drain_v4(&mut sub_el, Duration::from_secs(1)).await;
    assert_eq!(
        live,
        [("r/4".to_string(), "four".to_string(), QoS::AtLeastOnce)]
    );

    // Another tenant has a limit of its own.
    let (c, mut el, _) = v5(v5_options("pub5", port, pki[1].tls(&env.server_ca, "pub5"))).await;
    for t in ["r/1", "r/2"] {
        assert_eq!(puback_reason(&c, &mut el, t, true, "theirs").await, Success);
    }
    bye_v5(c, el).await;

    let (c, mut el, _) = v4(v4_options("late", port, pki[0].tls(&env.server_ca, "late"))).await;
    c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let got = drain_v4(&mut el, Duration::from_secs(1)).await;
    let mut got: Vec<(&str, &str)> = got
        .iter()
        .map(|(t, p, _)| (t.as_str(), p.as_str()))
        .collect();
    got.sort();
    assert_eq!(got, [("r/1", "one again"), ("r/3", "three")]);
    let m = env.metrics().await;
    assert_eq!(
        counter(&m, r#"mqtt_retained_refused_total{tenant="acme"}"#),
        2.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, r#"mqtt_retained_refused_total{tenant="other"}"#),
        0.0
    );
}

async fn properties_and_overlapping_subscriptions(env: Env) {
    use rumqttc::v5::mqttbytes::v5::SubscribeProperties;
    env.tenant("acme").await;
    let ca = ca("Properties CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let client = |cn: &str| v5_options(cn, port, pki.tls(&env.server_ca, cn));
    let (sub, mut sub_el, _) = v5(client("sub")).await;
    for (filter, qos, id) in [("pp/#", Q5::AtMostOnce, 1), ("pp/x", Q5::AtLeastOnce, 2)] {
        sub.subscribe_with_properties(
            filter,
            qos,
            SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            },
        )
        .await
        .unwrap();
        suback5(&mut sub_el).await;
    }
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        content_type: Some("text/plain; charset=utf-8".into()),
        ..Default::default()
    };
    let (p, mut pel, _) = v5(client("pub")).await;
    p.publish_with_properties("pp/x", Q5::AtLeastOnce, false, "hello", sent.clone())
        .await
        .unwrap();
    let _ = drain_v5(&mut pel, Duration::from_millis(300)).await;
    let got = drain_v5(&mut sub_el, Duration::from_secs(1)).await;
    assert!(!got.is_empty());
    // One copy per matching subscription, each at the lower of the message's and that
    // subscription's QoS with its identifier, or one copy at the higher with both.
    let mut copies: Vec<(Q5, Vec<usize>)> = Vec::new();
    for m in &got {
        assert_eq!(&m.payload[..], b"hello");
        let props = m.properties.clone().expect("properties arrive");
        let mut ids = props.subscription_identifiers.clone();
        ids.sort();
        copies.push((m.qos, ids));
        let unchanged = PublishProperties {
            subscription_identifiers: Vec::new(),
            ..props
        };
        assert_eq!(unchanged, sent, "properties arrive unchanged");
    }
    copies.sort_by_key(|(q, _)| *q as u8);
    assert!(
        copies == [(Q5::AtMostOnce, vec![1]), (Q5::AtLeastOnce, vec![2])]
            || copies == [(Q5::AtLeastOnce, vec![1, 2])],
        "{copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_arrive_unchanged_and_overlapping_subscriptions_follow_the_spec() {
    properties_and_overlapping_subscriptions(start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_overlapping_subscriptions_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let env = start_with(|c| c.backend = format!("mqtt://127.0.0.1:{}", mosquitto.port)).await;
    properties_and_overlapping_subscriptions(env).await;
}

/// A raw 3.1.1 connection over mTLS that sends CONNECT with an empty ClientId and
/// CleanSession=0 (rumqttc refuses to), and returns the stream and the CONNACK.
async fn empty_id_persistent(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    [u8; 4],
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = mtls(port, tls).await;
    // CONNECT: "MQTT" level 4, flags 0 (CleanSession=0), keep-alive 60, ClientId "".
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0])
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut connack))
        .await
        .expect("CONNACK")
        .unwrap();
    (s, connack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_with_clean_session_0_gets_the_cn_s_persistent_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Empty id CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    // MQTT 3.1.1 3.1.3.1 lets a server refuse this (no identity to keep a session
    // for); here the certificate's CN is the identity, so the session is the CN's.
    let (mut s, connack) = empty_id_persistent(port, pki.tls(&env.server_ca, "dev-e")).await;
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted, no session yet");
    // SUBSCRIBE e/# QoS 1, SUBACK granted 1; DISCONNECT.
    s.write_all(&[0x82, 8, 0, 1, 0, 3, b'e', b'/', b'#', 1])
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 1]);
    s.write_all(&[0xE0, 0]).await.unwrap();
    drop(s);
    publish_acked(
        port,
        pki.tls(&env.server_ca, "pub"),
        "pub",
        "e/1",
        "while-away",
        1,
    )
    .await;

    // Back with an empty ClientId again: the CN's session, with its message.
    let (mut s, connack) = empty_id_persistent(port, pki.tls(&env.server_ca, "dev-e")).await;
    assert_eq!(connack, [0x20, 2, 1, 0], "session present");
    let mut publish = [0u8; 2 + 2 + 3 + 2 + 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut publish))
        .await
        .expect("the queued message")
        .unwrap();
    assert_eq!(publish[0] & 0xF6, 0x32, "PUBLISH QoS 1: {publish:?}");
    assert_eq!(&publish[4..7], b"e/1");
    assert_eq!(&publish[9..], b"while-away-0");
    // And the ClientId equal to the CN resumes the same session.
    let mut o = v4_options("dev-e", port, pki.tls(&env.server_ca, "dev-e"));
    o.set_clean_session(false);
    s.write_all(&[0x40, 2, publish[7], publish[8]])
        .await
        .unwrap();
    s.write_all(&[0xE0, 0]).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, el, present) = v4(o).await;
    assert!(present);
    bye_v4(c, el).await;
}

/// A raw MQTT 5 session of `cn` (CleanStart=1, Session Expiry Interval `expiry`) that
/// subscribes to `d/#` and leaves with a DISCONNECT setting the interval to `at_end`
/// (rumqttc sends no DISCONNECT properties).
async fn v5_leaving_with_expiry(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
    cn: &str,
    expiry: u32,
    at_end: u32,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = mtls(port, tls).await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x11];
    body.extend_from_slice(&expiry.to_be_bytes());
    body.extend_from_slice(&(cn.len() as u16).to_be_bytes());
    body.extend_from_slice(cn.as_bytes());
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    s.write_all(&connect).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest[1], 0, "accepted");
    // SUBSCRIBE d/# QoS 1 (no properties); SUBACK.
    s.write_all(&[0x82, 9, 0, 1, 0, 0, 3, b'd', b'/', b'#', 1])
        .await
        .unwrap();
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x90, "SUBACK");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest.last(), Some(&1), "granted QoS 1");
    // DISCONNECT, normal, Session Expiry Interval `at_end`.
    let mut disconnect = vec![0xE0, 7, 0, 5, 0x11];
    disconnect.extend_from_slice(&at_end.to_be_bytes());
    s.write_all(&disconnect).await.unwrap();
    let mut end = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut end)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_disconnect_changes_the_session_expiry() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Disconnect CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let tls = |cn: &str| pki.tls(&env.server_ca, cn);
    // 3600 s at CONNECT, 0 at DISCONNECT: the session ends now.
    v5_leaving_with_expiry(port, tls("ends"), "ends", 3600, 0).await;
    // 1 s at CONNECT, 3600 s at DISCONNECT: the session outlives the first second.
    v5_leaving_with_expiry(port, tls("stays"), "stays", 1, 3600).await;
    publish_acked(port, tls("pub"), "pub", "d/x", "m", 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (cn, present, messages) in [("ends", false, 0), ("stays", true, 1)] {
        let mut o = v5_options(cn, port, tls(cn));
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(60));
        let (c, mut el, p) = v5(o).await;
        assert_eq!(p, present, "{cn}: session present");
        assert_eq!(
            drain_v5(&mut el, Duration::from_secs(1)).await.len(),
            messages,
            "{cn}"
        );
        bye_v5(c, el).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_survives_a_restart_and_goes_out_once() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let ca_pem = server_ca(dir.path());
    let pki = acme_at(&https_client(&ca_pem), broker.addr("admin_addr")).await;
    let port = broker.addr("mqtt_addr").port();

    let mut o = v5_options("dying", port, pki.tls(&ca_pem, "dying"));
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(LastWill::new(
        "w/dying",
        "gone",
        Q5::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(4),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    ));
    let (c, el, _) = v5(o).await;
    // The connection drops without DISCONNECT: the will waits 4 s.
    drop(el);
    drop(c);
    let dropped = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(&mut broker, "-TERM");
    let broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    assert!(
        broker.before.iter().any(|l| l.contains("delayed_wills=1")),
        "{:#?}",
        broker.before
    );
    let port = broker.addr("mqtt_addr").port();
    let (s, mut el, _) = v5(v5_options("watch", port, pki.tls(&ca_pem, "watch"))).await;
    s.subscribe("w/#", Q5::AtLeastOnce).await.unwrap();
    let got = drain_v5(&mut el, Duration::from_secs(6)).await;
    let got: Vec<_> = got
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(got, [("w/dying".to_string(), "gone".to_string())]);
    assert!(
        dropped.elapsed() >= Duration::from_secs(4),
        "not before its delay"
    );
}

/// The next DISCONNECT a 5.0 client gets (its reason), or `None` if the connection
/// ends without one within 10 s.
async fn disconnect_reason(
    el: &mut El5,
) -> Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::Disconnect(d)))) => return Some(d.reason_code),
            Ok(Ok(_)) => {}
            // rumqttc reports the server's DISCONNECT as an error of its state.
            Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            ))) => return Some(reason_code),
            _ => return None,
        }
    }
}

async fn taken_over(env: Env) {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    env.tenant("acme").await;
    let ca = ca("Takeover CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let (_a, mut a_el, _) = v5(v5_options("twin", port, pki.tls(&env.server_ca, "twin"))).await;
    let (_b, _b_el, _) = v5(v5_options("twin", port, pki.tls(&env.server_ca, "twin"))).await;
    assert_eq!(
        disconnect_reason(&mut a_el).await,
        Some(DisconnectReasonCode::SessionTakenOver)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_taken_over_is_told_so() {
    taken_over(start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_taken_over_is_told_so_through_mosquitto() {
    let mosquitto = start_mosquitto().await;
    let env = start_with(|c| c.backend = format!("mqtt://127.0.0.1:{}", mosquitto.port)).await;
    taken_over(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_external_broker_closes_sessions_and_refuses_devices_until_it_returns() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};
    let mosquitto = start_mosquitto().await;
    let backend_port = mosquitto.port;
    let env = start_with(|c| c.backend = format!("mqtt://127.0.0.1:{backend_port}")).await;
    env.tenant("acme").await;
    let ca = ca("Loss CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let (_c5, mut el5, _) = v5(v5_options("d5", port, pki.tls(&env.server_ca, "d5"))).await;
    let (_c4, mut el4, _) = v4(v4_options("d4", port, pki.tls(&env.server_ca, "d4"))).await;

    drop(mosquitto);
    assert_eq!(
        disconnect_reason(&mut el5).await,
        Some(DisconnectReasonCode::ServerBusy),
        "5.0: DISCONNECT 0x89 (0x88 is a CONNACK code only)"
    );
    // 3.1.1 has no DISCONNECT from the server: the connection closes.
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), el4.poll()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "3.1.1 session closed");
    // New devices are refused cleanly while it is away.
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(
        v5_options("new5", port, pki.tls(&env.server_ca, "new5")),
        10,
    );
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            refused,
            Ok(Err(rumqttc::v5::ConnectionError::ConnectionRefused(
                ConnectReturnCode::ServerUnavailable
            )))
        ),
        "CONNACK 0x88: {refused:?}"
    );
    let (_c, mut el) = rumqttc::AsyncClient::new(
        v4_options("new4", port, pki.tls(&env.server_ca, "new4")),
        10,
    );
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            refused,
            Ok(Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::ServiceUnavailable
            )))
        ),
        "CONNACK 3: {refused:?}"
    );
    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_connections_refused_total{reason="backend_lost"}"#
        ),
        2.0,
        "{m}"
    );

    // Back on its port: devices connect again, by themselves.
    let _mosquitto = start_mosquitto_on(backend_port).await;
    let (c, el, _) = v5(v5_options("d5", port, pki.tls(&env.server_ca, "d5"))).await;
    bye_v5(c, el).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_messages_queued_for_an_offline_session_complete_their_flow() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("QoS 2 CA");
    env.upload("acme", &ca, true).await;
    let pki = Pki { ca };
    let port = env.mqtt_port();
    let opts = |clean: bool| {
        let mut o = v5_options("q2", port, pki.tls(&env.server_ca, "q2"));
        o.set_clean_start(clean)
            .set_session_expiry_interval(Some(600));
        o
    };
    let (c, mut el, _) = v5(opts(true)).await;
    c.subscribe("q2/#", Q5::ExactlyOnce).await.unwrap();
    suback5(&mut el).await;
    bye_v5(c, el).await;

    // QoS 2 from the publisher: PUBREC and PUBCOMP for each.
    let (p, mut pel, _) = v5(v5_options("pub", port, pki.tls(&env.server_ca, "pub"))).await;
    for i in 0..5 {
        p.publish("q2/x", Q5::ExactlyOnce, false, format!("two-{i}"))
            .await
            .unwrap();
    }
    let mut completed = 0;
    while completed < 5 {
        match tokio::time::timeout(Duration::from_secs(10), pel.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::PubComp(_)))) => completed += 1,
            Ok(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    bye_v5(p, pel).await;

    // Delivered at QoS 2 in order; rumqttc answers PUBREC, the front-end PUBREL, the
    // device PUBCOMP.
    let (c, mut el, present) = v5(opts(false)).await;
    assert!(present);
    let got = drain_v5(&mut el, Duration::from_secs(1)).await;
    let got: Vec<(String, Q5)> = got
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.qos))
        .collect();
    let want: Vec<(String, Q5)> = (0..5)
        .map(|i| (format!("two-{i}"), Q5::ExactlyOnce))
        .collect();
    assert_eq!(got, want);
    bye_v5(c, el).await;
    // Completed: not delivered again.
    let (c, mut el, _) = v5(opts(false)).await;
    assert!(drain_v5(&mut el, Duration::from_secs(1)).await.is_empty());
    bye_v5(c, el).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_file_stops_the_start_with_its_name() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    // Something that is no SQLite database where the state file goes.
    std::fs::write(
        dir.path().join("broker-state.db"),
        b"not a database, 32 bytes long..",
    )
    .unwrap();
    let config = broker::Config {
        data_dir: dir.path().to_path_buf(),
        mqtt_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        est_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let err = match broker::start(config, Some(ADMIN_PW.into())).await {
        Ok(_) => panic!("started on a state file it cannot read"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("the embedded broker did not start: ") && err.contains("broker-state.db"),
        "{err}"
    );
    // Nothing was overwritten.
    assert_eq!(
        std::fs::read(dir.path().join("broker-state.db")).unwrap(),
        b"not a database, 32 bytes long.."
    );
}

/// Devices at their first connection (auto-registration), the broker killed with
/// SIGKILL in the middle of the wave: every device that got its CONNACK is in the
/// registry after the restart (the registration commits before the CONNACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_acknowledged_at_its_first_connection_is_registered_after_sigkill() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let ca_pem = server_ca(dir.path());
    let http = https_client(&ca_pem);
    let pki = acme_at(&http, broker.addr("admin_addr")).await;
    let port = broker.addr("mqtt_addr").port();

    // 60 first connections at once; the broker is killed as soon as 20 have their
    // CONNACK, while the others are being registered.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for i in 0..60 {
        let cn = format!("first-{i}");
        let tls = pki.tls(&ca_pem, &cn);
        let acked = acked_tx.clone();
        tokio::spawn(async move {
            let (_client, mut el) = rumqttc::AsyncClient::new(v4_options(&cn, port, tls), 10);
            while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(20), el.poll()).await
            {
                if let Event::Incoming(Packet::ConnAck(ack)) = event {
                    if ack.code == rumqttc::ConnectReturnCode::Success {
                        let _ = acked.send(cn.clone());
                    }
                }
            }
        });
    }
    drop(acked_tx);
    let mut acknowledged = Vec::new();
    while let Some(cn) = acked_rx.recv().await {
        acknowledged.push(cn);
        if acknowledged.len() == 20 {
            broker.child.kill().unwrap();
            let _ = broker.child.wait();
        }
        if acknowledged.len() >= 20 {
            // CONNACKs already on their way before the kill count too; the rest of the
            // clients see the connection fail and stop.
            while let Ok(Some(cn)) =
                tokio::time::timeout(Duration::from_millis(500), acked_rx.recv()).await
            {
                acknowledged.push(cn);
            }
            break;
        }
    }
    assert!(acknowledged.len() >= 20, "{acknowledged:?}");

    let broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let base = format!("https://localhost:{}", broker.addr("admin_addr").port());
    let list: serde_json::Value = http
        .get(format!("{base}/tenant/tenants/acme/devices?pageSize=100"))
        .basic_auth("acme/admin", Some("acme-pw-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let registered: std::collections::BTreeSet<String> = list["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no device list: {list}"))
        .iter()
        .filter_map(|d| d["commonName"].as_str().map(String::from))
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|cn| !registered.contains(*cn))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not registered after SIGKILL: {missing:?} ({} acknowledged, {} registered)",
        acknowledged.len(),
        registered.len()
    );
}
