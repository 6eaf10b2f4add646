//! Topic authorization (issue 17) with real MQTT clients over mTLS against the embedded
//! broker: a device restricted to `devices/${cn}/...`, refusals with the right codes
//! (3.1.1 and 5.0), wildcards crossing into other devices' topics, forbidden wills, a
//! rule change applied to a live session, a tenant without rules unchanged, and the
//! REST API (tenant scoping, validation, dry run).

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, DisconnectReasonCode as V5Reason, Packet as P5, PubAckReason,
    PubRecReason, SubscribeReasonCode as V5Sub,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::EventLoop as El5;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
/// Long enough for a message that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(700);

/// Devices publish and subscribe under their own `devices/<cn>/`, may publish
/// telemetry at QoS 1 at most and never retained; nothing else.
fn device_rules() -> Value {
    json!({
        "rules": [
            {"access": "allow", "action": "both", "topic": "devices/${cn}/#"},
            {"access": "allow", "action": "publish", "topic": "telemetry/${tenant}/${cn}", "maxQos": 1, "retain": false},
            {"access": "deny", "action": "both", "topic": "devices/#"}
        ],
        "defaultAccess": "deny"
    })
}

/// A broker with tenant `acme` (auto-registering CA) whose `default` rule set is
/// [`device_rules`], and a rule set `observer` (subscribe to everything) assigned to
/// the device `watcher`.
async fn restricted() -> (Env, certs::issue::Issued, String) {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    let fp = env.upload("acme", &ca, true).await;
    put_rules(&env, "default", device_rules(), 201).await;
    put_rules(
        &env,
        "observer",
        json!({"rules": [{"access": "allow", "action": "subscribe", "topic": "#"}], "defaultAccess": "deny"}),
        201,
    )
    .await;
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/acl/assignments/devices/watcher",
            Some(json!({"ruleSet": "observer"})),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    (env, ca, fp)
}

async fn put_rules(env: &Env, name: &str, rules: Value, want: u16) {
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            &format!("/tenant/tenants/acme/acl/rule-sets/{name}"),
            Some(rules),
        )
        .await;
    assert_eq!(s, want, "{b}");
}

fn v4(env: &Env, ca: &certs::issue::Issued, cn: &str) -> rumqttc::MqttOptions {
    v4_options(
        cn,
        env.mqtt_port(),
        device_tls(&env.server_ca, &device(cn, ca), &[ca]),
    )
}

fn v5(env: &Env, ca: &certs::issue::Issued, cn: &str) -> rumqttc::v5::MqttOptions {
    v5_options(
        cn,
        env.mqtt_port(),
        device_tls(&env.server_ca, &device(cn, ca), &[ca]),
    )
}

async fn until4<T>(
    el: &mut rumqttc::EventLoop,
    what: &str,
    mut f: impl FnMut(&rumqttc::Packet) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(p))) => {
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

async fn puback5(el: &mut El5) -> PubAckReason {
    until_v5(el, "PUBACK", |p| match p {
        P5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await
}

async fn pubrec5(el: &mut El5) -> PubRecReason {
    until_v5(el, "PUBREC", |p| match p {
        P5::PubRec(a) => Some(a.reason),
        _ => None,
    })
    .await
}

async fn suback5(el: &mut El5) -> Vec<V5Sub> {
    until_v5(el, "SUBACK", |p| match p {
        P5::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

async fn suback4(el: &mut rumqttc::EventLoop) -> Vec<SubscribeReasonCode> {
    until4(el, "SUBACK", |p| match p {
        rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

/// Topics `el` receives within `wait` (panics if the connection fails).
async fn topics4(el: &mut rumqttc::EventLoop, wait: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => got.push(p.topic),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection failed after {got:?}: {e:?}"),
            Err(_) => return got,
        }
    }
}

/// The `watcher` device (rule set `observer`), subscribed to `#` over 3.1.1.
async fn watcher(
    env: &Env,
    ca: &certs::issue::Issued,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (c, mut el) = connect_v4(v4(env, ca, "watcher")).await.unwrap();
    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback4(&mut el).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "the observer rule set allows '#'"
    );
    (c, el)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_device_is_held_to_its_own_topics_with_reason_codes() {
    let (env, ca, _) = restricted().await;
    let (_w, mut wel) = watcher(&env, &ca).await;
    let (c, mut el) = connect_v5(v5(&env, &ca, "alice")).await.unwrap();

    // Subscriptions: own topics granted, `#` and filters reaching other devices refused,
    // per filter in one SUBSCRIBE.
    c.subscribe("devices/alice/#", Q5::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback5(&mut el).await,
        vec![V5Sub::Success(Q5::AtLeastOnce)]
    );
    c.subscribe("#", Q5::AtMostOnce).await.unwrap();
    assert_eq!(suback5(&mut el).await, vec![V5Sub::NotAuthorized]);
    c.subscribe_many([
        rumqttc::v5::mqttbytes::v5::Filter::new("devices/+/cmd", Q5::AtLeastOnce),
        rumqttc::v5::mqttbytes::v5::Filter::new("devices/alice/+/x", Q5::ExactlyOnce),
        rumqttc::v5::mqttbytes::v5::Filter::new("+/alice/#", Q5::AtMostOnce),
    ])
    .await
    .unwrap();
    assert_eq!(
        suback5(&mut el).await,
        vec![
            V5Sub::NotAuthorized,
            V5Sub::Success(Q5::ExactlyOnce),
            V5Sub::NotAuthorized
        ]
    );

    // Publishing: elsewhere refused with 0x87 (PUBACK / PUBREC), the session goes on.
    c.publish("devices/bob/cmd", Q5::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    let r = puback5(&mut el).await;
    assert_eq!(r, PubAckReason::NotAuthorized);
    c.publish("elsewhere/x", Q5::ExactlyOnce, false, "forged")
        .await
        .unwrap();
    let r = pubrec5(&mut el).await;
    assert_eq!(r, PubRecReason::NotAuthorized);
    c.publish("devices/bob/cmd", Q5::AtMostOnce, false, "forged")
        .await
        .unwrap();
    // The QoS limit and the retain limit of the telemetry rule.
    c.publish("telemetry/acme/alice", Q5::ExactlyOnce, false, "too high")
        .await
        .unwrap();
    let r = pubrec5(&mut el).await;
    assert_eq!(r, PubRecReason::NotAuthorized);
    c.publish("telemetry/acme/alice", Q5::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    let r = puback5(&mut el).await;
    assert_eq!(r, PubAckReason::NotAuthorized);

    // Own topics: accepted and delivered (to alice's own subscription too).
    c.publish("devices/alice/up", Q5::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    c.publish("telemetry/acme/alice", Q5::AtLeastOnce, false, "t")
        .await
        .unwrap();
    let (mut acks, mut own) = (Vec::new(), Vec::new());
    until_v5(&mut el, "2 PUBACKs and the own PUBLISH", |p| {
        match p {
            P5::PubAck(a) => acks.push(a.reason),
            P5::Publish(p) => own.push(String::from_utf8_lossy(&p.topic).into_owned()),
            _ => {}
        }
        (acks.len() == 2 && !own.is_empty()).then_some(())
    })
    .await;
    assert_eq!(acks, vec![PubAckReason::Success; 2]);
    assert_eq!(own, vec!["devices/alice/up"]);

    // The observer saw only what was allowed.
    let mut seen = topics4(&mut wel, QUIET).await;
    seen.sort();
    assert_eq!(seen, vec!["devices/alice/up", "telemetry/acme/alice"]);

    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="publish",reason="denied",tenant="acme"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="subscribe",reason="denied",tenant="acme"}"#
        ),
        3.0
    );
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="publish",reason="qos",tenant="acme"}"#
        ),
        1.0
    );
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="publish",reason="retain",tenant="acme"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_device_gets_0x80_and_its_refused_publishes_are_dropped() {
    let (env, ca, _) = restricted().await;
    let (_w, mut wel) = watcher(&env, &ca).await;
    let (c, mut el) = connect_v4(v4(&env, &ca, "bob")).await.unwrap();
    c.subscribe("#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(suback4(&mut el).await, vec![SubscribeReasonCode::Failure]);
    c.subscribe("devices/+/cmd", QoS::AtMostOnce).await.unwrap();
    assert_eq!(suback4(&mut el).await, vec![SubscribeReasonCode::Failure]);
    c.subscribe("devices/bob/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback4(&mut el).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // Refused at QoS 0, 1 and 2: acknowledged as Mosquitto does (QoS 2 through
    // PUBREC / PUBREL / PUBCOMP, which the front-end completes), never delivered.
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        c.publish(format!("devices/alice/cmd{i}"), qos, false, "forged")
            .await
            .unwrap();
    }
    until4(&mut el, "PUBACK", |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;
    until4(&mut el, "PUBCOMP", |p| {
        matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
    })
    .await;
    // The session goes on: its own topic is delivered.
    c.publish("devices/bob/status", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    let got = topics4(&mut el, QUIET).await;
    assert_eq!(got, vec!["devices/bob/status"]);
    assert_eq!(topics4(&mut wel, QUIET).await, vec!["devices/bob/status"]);
    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="publish",reason="denied",tenant="acme"}"#
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_to_a_forbidden_topic_refuses_the_connect() {
    let (env, ca, _) = restricted().await;
    let mut o = v4(&env, &ca, "carol");
    o.set_last_will(rumqttc::LastWill::new(
        "devices/alice/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let err = connect_v4(o).await.err().expect("refused");
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );
    let mut o = v5(&env, &ca, "carol");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "devices/alice/status",
        "gone",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    let err = connect_v5(o).await.err().expect("refused");
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(V5Code::NotAuthorized)
        ),
        "{err:?}"
    );
    // Its own status topic is fine.
    let mut o = v5(&env, &ca, "carol");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "devices/carol/status",
        "gone",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    connect_v5(o).await.expect("own will topic accepted");
    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_acl_refused_total{action="will",reason="denied",tenant="acme"}"#
        ),
        2.0
    );
    assert_eq!(
        counter(&m, r#"mqtt_connections_refused_total{reason="acl_will"}"#),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_applies_to_live_sessions_within_a_second() {
    let (env, ca, _) = restricted().await;
    // dave may not publish to `shared/news` yet.
    let (c, mut el) = connect_v5(v5(&env, &ca, "dave")).await.unwrap();
    c.publish("shared/news", Q5::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let r = puback5(&mut el).await;
    assert_eq!(r, PubAckReason::NotAuthorized);
    c.subscribe("devices/dave/#", Q5::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback5(&mut el).await,
        vec![V5Sub::Success(Q5::AtLeastOnce)]
    );

    // Allowed from now on: the same session may publish it.
    let mut rules = device_rules();
    rules["rules"].as_array_mut().unwrap().insert(
        0,
        json!({"access": "allow", "action": "publish", "topic": "shared/news"}),
    );
    put_rules(&env, "default", rules, 200).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        c.publish("shared/news", Q5::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let r = puback5(&mut el).await;
        if r == PubAckReason::Success {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule did not apply within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Its subscription is no longer allowed: the session ends with DISCONNECT 0x87.
    let h = watch_v5(el);
    let t0 = Instant::now();
    put_rules(
        &env,
        "default",
        json!({"rules": [{"access": "allow", "action": "publish", "topic": "devices/${cn}/#"}], "defaultAccess": "deny"}),
        200,
    )
    .await;
    let reason = tokio::time::timeout(Duration::from_secs(1), h)
        .await
        .expect("closed within 1 s")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
    assert!(t0.elapsed() < Duration::from_secs(2));
    let m = env.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"mqtt_sessions_closed_by_revocation_total{reason="acl_subscription_withdrawn"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_rules_allows_everything_as_before() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let (c, mut el) = connect_v4(v4(&env, &ca, "erin")).await.unwrap();
    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback4(&mut el).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut o = v5(&env, &ca, "frank");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "devices/erin/cmd",
        "gone",
        Q5::AtLeastOnce,
        true,
        None,
    ));
    let (p, mut pel) = connect_v5(o).await.unwrap();
    p.publish("devices/erin/cmd", Q5::AtLeastOnce, true, "x")
        .await
        .unwrap();
    let r = puback5(&mut pel).await;
    assert_eq!(r, PubAckReason::Success);
    assert_eq!(topics4(&mut el, QUIET).await, vec!["devices/erin/cmd"]);
    assert!(!env.metrics().await.contains("mqtt_acl_refused_total{"));
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/acl/check",
            Some(json!({"commonName": "erin", "action": "subscribe", "topic": "#", "qos": 2})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"allowed": true, "grantedQos": 2, "decidedBy": "noRules"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_scopes_validates_and_dry_runs() {
    let (env, _ca, fp) = restricted().await;
    env.tenant("other").await;

    // Another tenant's admin sees nothing of acme's rules and changes nothing.
    for (method, path, body) in [
        (Method::GET, "/tenant/tenants/acme/acl/rule-sets", None),
        (
            Method::GET,
            "/tenant/tenants/acme/acl/rule-sets/default",
            None,
        ),
        (
            Method::PUT,
            "/tenant/tenants/acme/acl/rule-sets/default",
            Some(json!({"rules": [], "defaultAccess": "allow"})),
        ),
        (
            Method::DELETE,
            "/tenant/tenants/acme/acl/rule-sets/observer",
            None,
        ),
        (Method::GET, "/tenant/tenants/acme/acl/assignments", None),
        (
            Method::POST,
            "/tenant/tenants/acme/acl/check",
            Some(json!({"commonName": "alice", "action": "publish", "topic": "x"})),
        ),
    ] {
        let (s, b) = env.as_tenant("other", method.clone(), path, body).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
    }
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/acl/rule-sets/default",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rules"], device_rules()["rules"], "unchanged");

    // Validation names the rule and why.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/acl/rule-sets/bad",
            Some(json!({"rules": [
                {"access": "allow", "action": "both", "topic": "ok/${cn}"},
                {"access": "allow", "action": "both", "topic": "a/#/b"}
            ], "defaultAccess": "deny"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["message"].as_str().unwrap().starts_with("rules[1]: "),
        "{b}"
    );
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/acl/rule-sets/bad",
            Some(json!({"rules": [{"access": "allow", "action": "both", "topic": "d/${device}"}], "defaultAccess": "deny"})),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(b["message"].as_str().unwrap().contains("rules[0]"), "{b}");

    // An assigned rule set cannot be deleted; an unknown one cannot be assigned.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::DELETE,
            "/tenant/tenants/acme/acl/rule-sets/observer",
            None,
        )
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            &format!("/tenant/tenants/acme/acl/assignments/trusted-certificates/{fp}"),
            Some(json!({"ruleSet": "nope"})),
        )
        .await;
    assert_eq!(s, 404, "{b}");

    // Dry run: the decision and the rule that decided.
    let check = |body: Value| {
        let env = &env;
        async move {
            let (s, b) = env
                .as_tenant(
                    "acme",
                    Method::POST,
                    "/tenant/tenants/acme/acl/check",
                    Some(body),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            b
        }
    };
    let b = check(json!({"commonName": "alice", "action": "publish", "topic": "devices/bob/cmd"}))
        .await;
    assert_eq!(b["allowed"], false);
    assert_eq!(b["ruleSet"], "default");
    assert_eq!(b["decidedBy"], "rule");
    assert_eq!(b["ruleIndex"], 2);
    assert_eq!(b["rule"]["topic"], "devices/#");
    let b = check(
        json!({"commonName": "alice", "action": "subscribe", "topic": "devices/alice/#", "qos": 2}),
    )
    .await;
    assert_eq!(
        (b["allowed"].clone(), b["grantedQos"].clone()),
        (json!(true), json!(2))
    );
    let b = check(json!({"commonName": "alice", "action": "subscribe", "topic": "#"})).await;
    assert_eq!(b["allowed"], false, "{b}");
    let b = check(json!({"commonName": "watcher", "action": "subscribe", "topic": "#"})).await;
    assert_eq!(
        (b["allowed"].clone(), b["ruleSet"].clone()),
        (json!(true), json!("observer"))
    );
    let b = check(json!({"commonName": "alice", "action": "publish", "topic": "nowhere"})).await;
    assert_eq!(
        (b["allowed"].clone(), b["decidedBy"].clone()),
        (json!(false), json!("defaultAccess"))
    );

    // A rule set assigned to the trusted certificate applies to its devices; a
    // device's own assignment still wins.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::PUT,
            &format!("/tenant/tenants/acme/acl/assignments/trusted-certificates/{fp}"),
            Some(json!({"ruleSet": "observer"})),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    let b = check(
        json!({"commonName": "alice", "fingerprint": fp, "action": "subscribe", "topic": "#"}),
    )
    .await;
    assert_eq!(b["ruleSet"], "observer");
    assert_eq!(b["allowed"], true);

    // Every change is audited.
    let (s, b) = env
        .as_tenant("acme", Method::GET, "/audit?tenant=acme&pageSize=100", None)
        .await;
    assert_eq!(s, 200, "{b}");
    let text = b.to_string();
    for action in ["ACL_RULE_SET_PUT", "ACL_ASSIGNED"] {
        assert!(text.contains(action), "{action} missing from {text}");
    }
}

/// A session resumed with CleanSession=0 holds subscriptions an earlier connection
/// made, which this connection's checks never saw (here `#`, made before the tenant
/// had rules): when the rules are narrowed, it is ended like a live session whose
/// subscription was withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_the_rules_ends_a_resumed_session_whose_old_subscriptions_are_unknown() {
    let env = start().await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let persistent = || {
        let mut o = v5(&env, &ca, "spy");
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(600));
        o
    };
    let (c, mut el) = connect_v5(persistent()).await.unwrap();
    c.subscribe("#", Q5::AtLeastOnce).await.unwrap();
    suback5(&mut el).await;
    c.disconnect().await.unwrap();
    while tokio::time::timeout(WAIT, el.poll())
        .await
        .is_ok_and(|r| r.is_ok())
    {}

    // Back, resuming the session that holds `#`; then the tenant restricts devices.
    let (_c, el) = connect_v5(persistent()).await.unwrap();
    let h = watch_v5(el);
    put_rules(&env, "default", device_rules(), 201).await;
    let reason = tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .expect("closed within 2 s")
        .unwrap();
    assert_eq!(reason, Some(V5Reason::NotAuthorized));
}
