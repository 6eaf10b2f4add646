//! MQTT semantics the front-end owns around the embedded broker, over mTLS with real
//! clients: delivered QoS, the MQTT 5 CONNACK, the client's Maximum Packet Size, and
//! PUBLISH to `$` topics.

mod common;

use std::time::Duration;

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

/// Polls `el` until `f` picks an incoming packet (or `WAIT` passes, or the connection
/// fails: both panic with what happened).
async fn until<T>(el: &mut El5, what: &str, mut f: impl FnMut(&P5) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(E5::Incoming(p))) => {
                if let Some(v) = f(&p) {
                    return v;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for {what}: connection failed: {e:?}"),
            Err(_) => panic!("waiting for {what}: nothing within {WAIT:?}"),
        }
    }
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
