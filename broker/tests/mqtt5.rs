//! MQTT semantics the front-end owns around the embedded broker, over mTLS with real
//! clients: delivered QoS, the MQTT 5 CONNACK, the client's Maximum Packet Size, and
//! PUBLISH to `$` topics.

mod common;

use std::time::Duration;

use common::until_v5 as until;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PubRecReason};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{Event as E5, EventLoop as El5};

const WAIT: Duration = Duration::from_secs(5);

/// A broker with tenant `acme` whose CA auto-registers devices.
async fn acme() -> (Env, certs::issue::Issued) {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    (env, ca)
}

/// MQTT 5 options for device `cn` of `ca`, connecting with ClientId `client_id`.
fn v5(env: &Env, ca: &certs::issue::Issued, cn: &str, client_id: &str) -> rumqttc::v5::MqttOptions {
    let dev = device(cn, ca);
    v5_options(
        client_id,
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[ca]),
    )
}

/// Every PUBLISH `el` receives within `wait`: (topic, payload, QoS). Panics if the
/// connection fails meanwhile.
async fn publishes_v5(el: &mut El5, wait: Duration) -> Vec<(String, Vec<u8>, Q5)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(E5::Incoming(P5::Publish(p)))) => got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
                p.qos,
            )),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed after {got:?}: {e:?}"),
            Err(_) => return got,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_publish_to_a_dollar_topic_gets_0x90_and_the_session_goes_on() {
    let (env, ca) = acme().await;
    let (sub, mut sub_el) = connect_v5(v5(&env, &ca, "watcher", "watcher"))
        .await
        .unwrap();
    sub.subscribe("#", Q5::AtLeastOnce).await.unwrap();
    until(&mut sub_el, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;

    let (c, mut el) = connect_v5(v5(&env, &ca, "dollar", "dollar")).await.unwrap();
    c.publish("$SYS/broker/x", Q5::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let reason = until(&mut el, "PUBACK", |p| match p {
        P5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::TopicNameInvalid, "QoS 1: PUBACK 0x90");
    c.publish("$share", Q5::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let reason = until(&mut el, "PUBREC", |p| match p {
        P5::PubRec(r) => Some(r.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubRecReason::TopicNameInvalid, "QoS 2: PUBREC 0x90");
    c.publish("$x", Q5::AtMostOnce, false, "three")
        .await
        .unwrap();
    // The same connection still publishes: the session was kept.
    c.publish("fleet/ok", Q5::AtLeastOnce, false, "four")
        .await
        .unwrap();
    let reason = until(&mut el, "PUBACK", |p| match p {
        P5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::Success);
    let got = publishes_v5(&mut sub_el, Duration::from_secs(1)).await;
    assert_eq!(
        got,
        vec![("fleet/ok".to_string(), b"four".to_vec(), Q5::AtLeastOnce)],
        "only the message to a valid topic is delivered"
    );

    // mosquitto_pub as an independent peer: its QoS 1 PUBLISH is answered with a
    // PUBACK of reason 144 (0x90), not a DISCONNECT.
    let m = Mosquitto { env: &env, ca: &ca };
    let out = tokio::process::Command::new(mosquitto("mosquitto_pub"))
        .args(m.args("mq-pub"))
        .args(["-V", "mqttv5", "-d", "-t", "$SYS/y", "-q", "1", "-m", "z"])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("received PUBACK (Mid: 1, RC:144)"), "{text}");
    assert!(!text.contains("received DISCONNECT"), "{text}");
}

/// MQTT 3.1.1 cannot refuse one message: a 3.1.1 PUBLISH to a `$` topic closes the
/// session (documented on `mqtt::reserved_topic_ack`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_publish_to_a_dollar_topic_closes_the_session() {
    let (env, ca) = acme().await;
    let dev = device("old", &ca);
    let (c, mut el) = connect_v4(v4_options(
        "old",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    ))
    .await
    .unwrap();
    c.publish("$SYS/x", rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                panic!("a 3.1.1 PUBACK would say the message was accepted")
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => break e,
            Err(_) => panic!("the session was not closed"),
        }
    };
    assert!(
        matches!(
            end,
            rumqttc::ConnectionError::Io(_) | rumqttc::ConnectionError::MqttState(_)
        ),
        "{end:?}"
    );
}

/// Connects `opts` and returns the CONNACK's properties (MQTT 5).
async fn connack_properties(
    opts: rumqttc::v5::MqttOptions,
) -> rumqttc::v5::mqttbytes::v5::ConnAckProperties {
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    until(&mut el, "CONNACK", |p| match p {
        P5::ConnAck(a) => Some(a.properties.clone().expect("CONNACK properties")),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_v5_assigns_the_cn_to_an_empty_client_id_and_announces_the_limits() {
    let env = start_with(|c| {
        c.limits.max_packet_size = 4096;
        c.limits.max_inflight = 20;
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;

    // Empty ClientId: the session is the CN's, and the CONNACK says so.
    let props = connack_properties(v5(&env, &ca, "nameless-7", "")).await;
    assert_eq!(
        props.assigned_client_identifier.as_deref(),
        Some("nameless-7"),
        "{props:?}"
    );
    assert_eq!(props.receive_max, Some(20), "{props:?}");
    assert_eq!(props.topic_alias_max, Some(64), "{props:?}");
    assert_eq!(props.max_packet_size, Some(4096), "{props:?}");
    assert_eq!(
        props.server_keep_alive, None,
        "the device's keep-alive is honoured: no Server Keep Alive"
    );

    // ClientId = CN: nothing assigned (and the backend's `<tenant>.<cn>` never shows).
    let props = connack_properties(v5(&env, &ca, "named-8", "named-8")).await;
    assert_eq!(props.assigned_client_identifier, None, "{props:?}");
    assert_eq!(props.max_packet_size, Some(4096), "{props:?}");
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

/// mosquitto_pub/mosquitto_sub TLS arguments for devices of `ca` (certificates written
/// to the env's directory on first use).
struct Mosquitto<'a> {
    env: &'a Env,
    ca: &'a certs::issue::Issued,
}

impl Mosquitto<'_> {
    fn args(&self, cn: &str) -> Vec<String> {
        let dir = self.env.dir.path();
        let crt = dir.join(format!("{cn}.crt"));
        if !crt.exists() {
            let d = device(cn, self.ca);
            std::fs::write(&crt, d.cert_pem() + &self.ca.cert_pem()).unwrap();
            std::fs::write(dir.join(format!("{cn}.key")), d.key_pem()).unwrap();
            std::fs::write(dir.join("server-ca.pem"), &self.env.server_ca).unwrap();
        }
        [
            "-h",
            "localhost",
            "-p",
            &self.env.mqtt_port().to_string(),
            "--cafile",
            &dir.join("server-ca.pem").display().to_string(),
            "--cert",
            &crt.display().to_string(),
            "--key",
            &dir.join(format!("{cn}.key")).display().to_string(),
            "-i",
            cn,
        ]
        .map(String::from)
        .to_vec()
    }

    async fn publish(&self, version: &str, topic: &str, qos: u8, retain: bool, msg: &str) {
        let q = qos.to_string();
        let mut cmd = tokio::process::Command::new(mosquitto("mosquitto_pub"));
        cmd.args(self.args("mq-pub"))
            .args(["-V", version, "-t", topic, "-q", &q, "-m", msg]);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts mosquitto_sub at QoS `qos` on `filter` for `count` messages, printing
    /// "QoS topic payload" per message.
    async fn subscribe(
        &self,
        version: &str,
        filter: &str,
        qos: u8,
        count: usize,
    ) -> tokio::process::Child {
        let child = tokio::process::Command::new(mosquitto("mosquitto_sub"))
            .args(self.args("mq-sub"))
            .args(["-V", version, "-t", filter, "-q", &qos.to_string()])
            .args(["-C", &count.to_string(), "-W", "10", "-F", "%q %t %p"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // mosquitto_sub prints nothing once subscribed: give it time to get there.
        tokio::time::sleep(Duration::from_millis(700)).await;
        child
    }
}

/// The lines mosquitto_sub printed, sorted.
async fn lines(child: tokio::process::Child) -> Vec<String> {
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut l: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    l.sort();
    assert!(
        out.status.success(),
        "mosquitto_sub: {l:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_gets_the_lower_of_publish_and_subscription_qos_live_and_retained() {
    let (env, ca) = acme().await;
    let m = Mosquitto { env: &env, ca: &ca };
    for version in ["mqttv311", "mqttv5"] {
        // Live, to a QoS 2 subscription and to a QoS 1 one.
        let sub2 = m.subscribe(version, "live2/#", 2, 3).await;
        for q in 0..3u8 {
            m.publish(version, &format!("live2/q{q}"), q, false, "m")
                .await;
        }
        assert_eq!(
            lines(sub2).await,
            ["0 live2/q0 m", "1 live2/q1 m", "2 live2/q2 m"],
            "{version}: QoS 2 subscription"
        );
        let sub1 = m.subscribe(version, "live1/#", 1, 3).await;
        for q in 0..3u8 {
            m.publish(version, &format!("live1/q{q}"), q, false, "m")
                .await;
        }
        assert_eq!(
            lines(sub1).await,
            ["0 live1/q0 m", "1 live1/q1 m", "1 live1/q2 m"],
            "{version}: QoS 1 subscription"
        );

        // Retained, to a QoS 2 subscription made afterwards.
        let ret = format!("ret-{version}");
        for q in 0..3u8 {
            m.publish(version, &format!("{ret}/q{q}"), q, true, "r")
                .await;
        }
        let sub = m.subscribe(version, &format!("{ret}/#"), 2, 3).await;
        assert_eq!(
            lines(sub).await,
            [
                format!("0 {ret}/q0 r"),
                format!("1 {ret}/q1 r"),
                format!("2 {ret}/q2 r")
            ],
            "{version}: retained"
        );
    }
}

/// Messages per QoS in the rumqttc test: more than rumqttd keeps in flight per link
/// (100), so acks the router never got would stall delivery.
const N: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_gets_the_lower_qos_with_overlapping_subscriptions_and_the_router_stays_acked() {
    let (env, ca) = acme().await;
    let port = env.mqtt_port();
    let dev4 = device("sub4", &ca);
    let (sub4, mut el4) = connect_v4(v4_options(
        "sub4",
        port,
        device_tls(&env.server_ca, &dev4, &[&ca]),
    ))
    .await
    .unwrap();
    sub4.subscribe("m/#", rumqttc::QoS::ExactlyOnce)
        .await
        .unwrap();
    wait_suback(&mut el4).await;
    let (sub5, mut el5) = connect_v5(v5(&env, &ca, "sub5", "sub5")).await.unwrap();
    sub5.subscribe("m/#", Q5::ExactlyOnce).await.unwrap();
    until(&mut el5, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;
    // Overlapping: m/over matches both of sub5's filters, one copy per filter.
    sub5.subscribe("m/over", Q5::AtMostOnce).await.unwrap();
    until(&mut el5, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;

    let (publisher, pub_el) = connect_v5(v5(&env, &ca, "pub", "pub")).await.unwrap();
    let driver = tokio::spawn(async move {
        let mut el = pub_el;
        loop {
            if let Err(e) = el.poll().await {
                return e;
            }
        }
    });
    let publishing = tokio::spawn(async move {
        publisher
            .publish("m/over", Q5::AtLeastOnce, false, "o")
            .await
            .unwrap();
        for i in 0..N {
            for (topic, q) in [
                ("m/a", Q5::AtMostOnce),
                ("m/b", Q5::AtLeastOnce),
                ("m/c", Q5::ExactlyOnce),
            ] {
                publisher
                    .publish(topic, q, false, i.to_string())
                    .await
                    .unwrap();
            }
        }
        publisher
    });

    // 3.1.1 subscriber: one copy each.
    let mut got4 = std::collections::BTreeMap::<(String, u8), usize>::new();
    let total = 3 * N + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n4 = 0;
    while n4 < total {
        match tokio::time::timeout_at(deadline, el4.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                *got4.entry((p.topic.clone(), p.qos as u8)).or_default() += 1;
                n4 += 1;
            }
            Ok(Ok(_)) => {}
            other => panic!("3.1.1 subscriber after {got4:?}: {other:?}"),
        }
    }
    let expect = |over: &[(u8, usize)]| {
        let mut e = std::collections::BTreeMap::new();
        e.insert(("m/a".to_string(), 0u8), N);
        e.insert(("m/b".to_string(), 1), N);
        e.insert(("m/c".to_string(), 2), N);
        for (q, n) in over {
            e.insert(("m/over".to_string(), *q), *n);
        }
        e
    };
    assert_eq!(got4, expect(&[(1, 1)]), "3.1.1, QoS 2 subscription");

    // 5.0 subscriber: m/over twice, at QoS 1 (m/#, granted 2) and 0 (m/over, granted 0).
    let mut got5 = std::collections::BTreeMap::<(String, u8), usize>::new();
    let mut n5 = 0;
    while n5 < total + 1 {
        match tokio::time::timeout_at(deadline, el5.poll()).await {
            Ok(Ok(E5::Incoming(P5::Publish(p)))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                *got5.entry((topic, p.qos as u8)).or_default() += 1;
                n5 += 1;
            }
            Ok(Ok(_)) => {}
            other => panic!("5.0 subscriber after {got5:?}: {other:?}"),
        }
    }
    assert_eq!(
        got5,
        expect(&[(0, 1), (1, 1)]),
        "5.0, overlapping subscriptions"
    );
    let _publisher = publishing.await.unwrap();

    // The router took every ack: both sessions still deliver.
    let extra = more_after(&mut el4, &mut el5).await;
    assert_eq!(extra, (0, 0), "nothing beyond what was published");
    assert!(!driver.is_finished(), "the publisher's session is up");
}

/// Polls both subscribers for a second: how many more PUBLISH each got (panics if a
/// connection failed).
async fn more_after(el4: &mut rumqttc::EventLoop, el5: &mut El5) -> (usize, usize) {
    let until_t = tokio::time::Instant::now() + Duration::from_secs(1);
    let (mut a, mut b) = (0, 0);
    loop {
        tokio::select! {
            r = el4.poll() => match r {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => a += 1,
                Ok(_) => {}
                Err(e) => panic!("3.1.1 subscriber: {e:?}"),
            },
            r = el5.poll() => match r {
                Ok(E5::Incoming(P5::Publish(_))) => b += 1,
                Ok(_) => {}
                Err(e) => panic!("5.0 subscriber: {e:?}"),
            },
            _ = tokio::time::sleep_until(until_t) => return (a, b),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_clients_maximum_packet_size_is_not_sent_to_it() {
    let (env, ca) = acme().await;
    let mut opts = v5(&env, &ca, "small", "small");
    opts.set_max_packet_size(Some(1024));
    let (sub, mut el) = connect_v5(opts).await.unwrap();
    sub.subscribe("big/#", Q5::ExactlyOnce).await.unwrap();
    until(&mut el, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;

    let (publisher, pub_el) = connect_v5(v5(&env, &ca, "pub", "pub")).await.unwrap();
    let _driver = tokio::spawn(async move {
        let mut el = pub_el;
        while el.poll().await.is_ok() {}
    });
    // As the device sees a QoS 1/2 PUBLISH on "big/edge" (8 bytes): remaining length
    // 2 + 8 + 2 (packet id) + 1 (no properties) + payload; header 1 + 2 bytes. A
    // 1008-byte payload makes 1024 bytes, at the limit; 1009 bytes one more. At QoS 0
    // (no packet id) the payload may be 2 bytes longer. The tenant prefix the broker
    // stores the topic under is not counted.
    let limit = |q: Q5| if q == Q5::AtMostOnce { 1010 } else { 1008 };
    for q in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce] {
        publisher
            .publish("big/edge", q, false, vec![b'b'; limit(q) + 1])
            .await
            .unwrap();
        publisher
            .publish("big/huge", q, false, vec![b'c'; 100_000])
            .await
            .unwrap();
    }
    for q in [Q5::AtMostOnce, Q5::AtLeastOnce] {
        publisher
            .publish("big/edge", q, false, vec![b'a'; limit(q)])
            .await
            .unwrap();
    }
    let over = vec![b'b'; 1009];
    // More QoS 1/2 messages than rumqttd keeps in flight: the dropped ones were acked.
    for i in 0..N {
        publisher
            .publish("big/over", Q5::ExactlyOnce, false, over.clone())
            .await
            .unwrap();
        publisher
            .publish("big/small", Q5::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < N + 2 {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(E5::Incoming(P5::Publish(p)))) => got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.len(),
            )),
            Ok(Ok(_)) => {}
            other => panic!("subscriber after {} messages: {other:?}", got.len()),
        }
    }
    assert_eq!(
        got[..2],
        [
            ("big/edge".to_string(), 1010),
            ("big/edge".to_string(), 1008)
        ],
        "the messages at the limit, QoS 0 and 1"
    );
    assert!(
        got[2..].iter().all(|(t, _)| t == "big/small"),
        "only small messages after it: {:?}",
        got.iter()
            .filter(|(t, _)| t != "big/small")
            .collect::<Vec<_>>()
    );
    let more = publishes_v5(&mut el, Duration::from_secs(1)).await;
    assert!(more.is_empty(), "{more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_goes_out_at_the_lower_of_its_qos_and_the_subscriptions() {
    let (env, ca) = acme().await;
    let (sub, mut sub_el) = connect_v5(v5(&env, &ca, "heir", "heir")).await.unwrap();
    sub.subscribe("wills/#", Q5::ExactlyOnce).await.unwrap();
    until(&mut sub_el, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;

    let dev = device("mortal", &ca);
    let mut opts = v4_options(
        "mortal",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    );
    opts.set_last_will(rumqttc::LastWill::new(
        "wills/mortal",
        "gone",
        rumqttc::QoS::AtMostOnce,
        false,
    ));
    let (_c, el) = connect_v4(opts).await.unwrap();
    // The connection drops without DISCONNECT: the will is published.
    drop(el);
    let got = until(&mut sub_el, "the will", |p| match p {
        P5::Publish(p) => Some((String::from_utf8_lossy(&p.topic).into_owned(), p.qos)),
        _ => None,
    })
    .await;
    assert_eq!(got, ("wills/mortal".to_string(), Q5::AtMostOnce));
}

/// The front-end carries a message's QoS through rumqttd in a reserved user property:
/// a device that sends that property itself neither lowers nor raises the delivered QoS,
/// and no subscriber ever sees the property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_forge_the_qos_mark_and_never_sees_it() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let (env, ca) = acme().await;
    let (sub, mut sub_el) = connect_v5(v5(&env, &ca, "reader", "reader")).await.unwrap();
    sub.subscribe("forged/#", Q5::ExactlyOnce).await.unwrap();
    until(&mut sub_el, "SUBACK", |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;
    let (publ, pub_el) = connect_v5(v5(&env, &ca, "forger", "forger")).await.unwrap();
    let _d = tokio::spawn(async move {
        let mut el = pub_el;
        while el.poll().await.is_ok() {}
    });
    for (topic, qos, forged) in [
        ("forged/down", Q5::ExactlyOnce, "0"),
        ("forged/up", Q5::AtMostOnce, "2"),
    ] {
        let props = PublishProperties {
            user_properties: vec![
                ("$front-end/qos".into(), forged.into()),
                ("kept".into(), "yes".into()),
            ],
            ..Default::default()
        };
        publ.publish_with_properties(topic, qos, false, "m", props)
            .await
            .unwrap();
        let (t, q, user) = until(&mut sub_el, topic, |p| match p {
            P5::Publish(p) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.qos,
                p.properties
                    .as_ref()
                    .map(|pr| pr.user_properties.clone())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .await;
        assert_eq!((t.as_str(), q), (topic, qos), "the message's own QoS wins");
        assert_eq!(
            user,
            vec![("kept".to_string(), "yes".to_string())],
            "the reserved property never reaches a subscriber; the device's others do"
        );
    }
    // The other marks: a forged publication time (long expired), origin and retain flag
    // change nothing either.
    let props = PublishProperties {
        message_expiry_interval: Some(100),
        user_properties: vec![
            ("$front-end/t".into(), "0:1".into()),
            ("$front-end/origin".into(), "0".into()),
            ("$front-end/retain".into(), "1".into()),
        ],
        ..Default::default()
    };
    publ.publish_with_properties("forged/time", Q5::AtLeastOnce, false, "m", props)
        .await
        .unwrap();
    let (retain, expiry, user) = until(&mut sub_el, "forged/time", |p| match p {
        P5::Publish(p) => Some((
            p.retain,
            p.properties
                .as_ref()
                .and_then(|pr| pr.message_expiry_interval),
            p.properties
                .as_ref()
                .map(|pr| pr.user_properties.clone())
                .unwrap_or_default(),
        )),
        _ => None,
    })
    .await;
    assert_eq!((retain, user), (false, vec![]), "no forged mark survives");
    assert!(
        expiry.is_some_and(|e| (99..=100).contains(&e)),
        "the message's own expiry, not the forged time's: {expiry:?}"
    );
}
