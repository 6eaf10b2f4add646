//! Attacks across the tenant boundary, as another tenant's devices and admin would try
//! them, each asserting the exact refusal (docs/SECURITY.md maps them to attacker kinds).
//!
//! Two tenants: `acme` (the victim) and `mallory` (the attacker, a tenant in good
//! standing with its own CA, devices and admin account). Every attempt that expects
//! "nothing crosses" is paired with a control that shows the same path works inside a
//! tenant, so that a broken subscriber cannot make an attempt pass.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use rumqttc::{ConnectReturnCode, ConnectionError, QoS};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
/// How long an attempt waits for something that must not arrive.
const QUIET: Duration = Duration::from_millis(1500);

/// Subscribes a device to every filter; returns its event loop after all SUBACKs.
async fn subscriber(
    env: &Env,
    cn: &str,
    ca: &certs::issue::Issued,
    filters: &[&str],
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let dev = device(cn, ca);
    let (c, mut el) = connect_v4(v4_options(
        cn,
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[ca]),
    ))
    .await
    .unwrap_or_else(|e| panic!("{cn} connects: {e:?}"));
    for f in filters {
        c.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        wait_suback(&mut el).await;
    }
    (c, el)
}

/// Drains what a subscriber received within `QUIET`.
async fn received(el: &mut rumqttc::EventLoop) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Some((t, p, _)) = next_publish(el, QUIET).await {
        got.push((t, String::from_utf8_lossy(&p).into_owned()));
    }
    got
}

async fn two_tenants() -> (Env, certs::issue::Issued, certs::issue::Issued) {
    let env = start().await;
    env.tenant("acme").await;
    env.tenant("mallory").await;
    let acme_ca = ca("Acme Root");
    let mallory_ca = ca("Mallory Root");
    env.upload("acme", &acme_ca, true).await;
    env.upload("mallory", &mallory_ca, true).await;
    (env, acme_ca, mallory_ca)
}

/// Attempts 1-12: a device of another tenant subscribes, publishes, leaves retained
/// messages and wills with topics and filters chosen to reach `acme`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_of_another_tenant_cannot_read_or_write_across_the_boundary() {
    let (env, acme_ca, mallory_ca) = two_tenants().await;

    // acme has a retained message and a live publisher.
    let (acme_pub, acme_pub_el) = subscriber(&env, "acme-pub", &acme_ca, &[]).await;
    let _d = drive(acme_pub_el);
    acme_pub
        .publish("state/door", QoS::AtLeastOnce, true, "acme-retained")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Attempts 1-8: wildcard and prefixed filters that would match acme's topics if the
    // mount could be escaped. Each is granted (within mallory's own tenant) and receives
    // nothing of acme's.
    let filters = [
        "#",
        "+/#",
        "$SYS/#",
        "acme/#",
        "/acme/#",
        "$share/g/#",
        "$share/g/acme/#",
        "+/+/#",
    ];
    let (_spy, mut spy_el) = subscriber(&env, "spy", &mallory_ca, &filters).await;
    acme_pub
        .publish("state/door", QoS::AtLeastOnce, false, "acme-live")
        .await
        .unwrap();
    acme_pub
        .publish("acme/x", QoS::AtLeastOnce, false, "acme-live-2")
        .await
        .unwrap();
    // Control: a message of mallory's own arrives at the same subscriber.
    let (own, own_el) = subscriber(&env, "own", &mallory_ca, &[]).await;
    let _od = drive(own_el);
    own.publish("own/ping", QoS::AtLeastOnce, false, "control")
        .await
        .unwrap();
    let got = received(&mut spy_el).await;
    assert!(
        got.iter().all(|(_, p)| p == "control"),
        "acme's retained or live messages reached another tenant's wildcard subscriber: {got:?}"
    );
    assert!(
        got.iter().any(|(t, p)| t == "own/ping" && p == "control"),
        "control message missing: {got:?}"
    );

    // Attempts 9-12: mallory publishes (live and retained) and leaves a will on topics
    // spelled to land in acme; acme's `#` subscriber sees none of it.
    let (_watch, mut watch_el) = subscriber(&env, "acme-watch", &acme_ca, &["#"]).await;
    // The retained message of acme's own arrives first (control).
    assert_eq!(
        next_publish(&mut watch_el, WAIT).await,
        Some(("state/door".into(), b"acme-retained".to_vec(), true))
    );
    for topic in ["acme/x", "../acme/x", "/acme/x", "acme/state/door"] {
        own.publish(topic, QoS::AtLeastOnce, true, "forged")
            .await
            .unwrap();
    }
    let mortal = device("mortal", &mallory_ca);
    let mut o = v4_options(
        "mortal",
        env.mqtt_port(),
        device_tls(&env.server_ca, &mortal, &[&mallory_ca]),
    );
    o.set_last_will(rumqttc::LastWill::new(
        "acme/state/door",
        "forged-will",
        QoS::AtLeastOnce,
        true,
    ));
    let (_m, mel) = connect_v4(o).await.unwrap();
    drop(mel);
    // Control: acme's own publish reaches the watcher.
    acme_pub
        .publish("state/window", QoS::AtLeastOnce, false, "acme-control")
        .await
        .unwrap();
    let got = received(&mut watch_el).await;
    assert_eq!(
        got,
        vec![("state/window".to_string(), "acme-control".to_string())],
        "only acme's own message reaches acme"
    );
    // And a new acme subscriber finds no forged retained message.
    let (_late, mut late_el) = subscriber(&env, "acme-late", &acme_ca, &["#"]).await;
    let got = received(&mut late_el).await;
    assert_eq!(
        got,
        vec![("state/door".to_string(), "acme-retained".to_string())],
        "no retained message of another tenant"
    );
}

/// Attempts 13-16: ClientId games. A device of another tenant with the same CN, or a
/// ClientId spelled like the backend's `<tenant>.<cn>`, never takes over or disturbs
/// acme's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_collisions_never_take_over_another_tenants_session() {
    let (env, acme_ca, mallory_ca) = two_tenants().await;
    let port = env.mqtt_port();
    let (acme_dev, mut acme_el) = subscriber(&env, "dev", &acme_ca, &["inbox"]).await;

    // 13: same CN in the attacker's tenant connects: acme's session stays.
    let twin = device("dev", &mallory_ca);
    let (_t, t_el) = connect_v4(v4_options(
        "dev",
        port,
        device_tls(&env.server_ca, &twin, &[&mallory_ca]),
    ))
    .await
    .expect("the attacker's own device named dev connects in its own tenant");
    let _td = drive(t_el);

    // 14: ClientId spelled as the backend id of acme's device: refused as not the CN.
    let other = device("dev2", &mallory_ca);
    let err = connect_v4(v4_options(
        "acme.dev",
        port,
        device_tls(&env.server_ca, &other, &[&mallory_ca]),
    ))
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

    // 15: a CN that itself reads `acme.dev`: it becomes `mallory.acme.dev`, not acme's.
    let dotted = device("acme.dev", &mallory_ca);
    let (_dc, d_el) = connect_v4(v4_options(
        "acme.dev",
        port,
        device_tls(&env.server_ca, &dotted, &[&mallory_ca]),
    ))
    .await
    .expect("a dotted CN connects within its own tenant");
    let _dd = drive(d_el);

    // 16: a 5.0 client of the attacker with an empty ClientId gets its own CN, and no
    // session of acme's.
    let v5dev = device("dev", &mallory_ca);
    let (_v5, v5_el) = connect_v5(v5_options(
        "",
        port,
        device_tls(&env.server_ca, &v5dev, &[&mallory_ca]),
    ))
    .await
    .expect("5.0 empty ClientId connects as its CN");
    drop(v5_el);

    // acme's device is still connected and served after all of that.
    let (sender, s_el) = subscriber(&env, "sender", &acme_ca, &[]).await;
    let _sd = drive(s_el);
    sender
        .publish("inbox", QoS::AtLeastOnce, false, "still yours")
        .await
        .unwrap();
    assert_eq!(
        next_publish(&mut acme_el, WAIT).await,
        Some(("inbox".into(), b"still yours".to_vec(), false)),
        "acme's session survived every collision"
    );
    drop(acme_dev);
}

/// Attempts 17-31: another tenant's admin against acme's resources, by acme's path and
/// by its own path with acme's identifiers. The answer is always 404 (tenant ids and
/// fingerprints do not leak), or 403 where the resource is not per tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_admin_cannot_read_write_or_list_anything_of_acme() {
    let (env, acme_ca, mallory_ca) = two_tenants().await;
    let acme_fp = certs::info::fingerprint_sha1(&acme_ca.cert_der);
    // acme has a device and a user.
    let (_d, d_el) = subscriber(&env, "dev", &acme_ca, &[]).await;
    drop(d_el);
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/user/acme/users",
            Some(json!({"userName": "ops", "password": "acme-ops-secret-1", "roles": ["ROLE_TENANT_ADMIN"]})),
        )
        .await;
    assert!(s == 201 || s == 200, "create acme user: {s} {b}");

    let upload = json!({
        "status": "ENABLED", "name": "x", "autoRegistrationEnabled": "true",
        "certInPemFormat": mallory_ca.cert_pem(),
    });
    let attempts: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            "list acme's CAs",
            Method::GET,
            "/tenant/tenants/acme/trusted-certificates".into(),
            None,
        ),
        (
            "read acme's CA",
            Method::GET,
            format!("/tenant/tenants/acme/trusted-certificates/{acme_fp}"),
            None,
        ),
        (
            "upload into acme",
            Method::POST,
            "/tenant/tenants/acme/trusted-certificates".into(),
            Some(upload),
        ),
        (
            "disable acme's CA",
            Method::PUT,
            format!("/tenant/tenants/acme/trusted-certificates/{acme_fp}"),
            Some(json!({"status": "DISABLED"})),
        ),
        (
            "delete acme's CA",
            Method::DELETE,
            format!("/tenant/tenants/acme/trusted-certificates/{acme_fp}"),
            None,
        ),
        (
            "acme's CA through own path",
            Method::GET,
            format!("/tenant/tenants/mallory/trusted-certificates/{acme_fp}"),
            None,
        ),
        (
            "disable acme's CA through own path",
            Method::PUT,
            format!("/tenant/tenants/mallory/trusted-certificates/{acme_fp}"),
            Some(json!({"status": "DISABLED"})),
        ),
        (
            "delete acme's CA through own path",
            Method::DELETE,
            format!("/tenant/tenants/mallory/trusted-certificates/{acme_fp}"),
            None,
        ),
        (
            "PoP code for acme's CA",
            Method::POST,
            format!("/tenant/tenants/acme/trusted-certificates-pop/{acme_fp}/verification-code"),
            None,
        ),
        (
            "PoP code for acme's CA through own path",
            Method::POST,
            format!("/tenant/tenants/mallory/trusted-certificates-pop/{acme_fp}/verification-code"),
            None,
        ),
        (
            "list acme's devices",
            Method::GET,
            "/tenant/tenants/acme/devices".into(),
            None,
        ),
        (
            "block acme's device",
            Method::DELETE,
            "/tenant/tenants/acme/devices/dev".into(),
            None,
        ),
        (
            "read acme's settings",
            Method::GET,
            "/tenant/tenants/acme/settings".into(),
            None,
        ),
        (
            "change acme's settings",
            Method::PUT,
            "/tenant/tenants/acme/settings".into(),
            Some(json!({"maxChainLength": 10})),
        ),
        (
            "list acme's users",
            Method::GET,
            "/user/acme/users".into(),
            None,
        ),
        (
            "read acme's user",
            Method::GET,
            "/user/acme/users/ops".into(),
            None,
        ),
        (
            "delete acme's user",
            Method::DELETE,
            "/user/acme/users/ops".into(),
            None,
        ),
        (
            "list acme's CRLs",
            Method::GET,
            "/tenant/tenants/acme/crls".into(),
            None,
        ),
        (
            "read acme",
            Method::GET,
            "/tenant/tenants/acme".into(),
            None,
        ),
        (
            "delete acme",
            Method::DELETE,
            "/tenant/tenants/acme".into(),
            None,
        ),
        (
            "encoded traversal to acme",
            Method::GET,
            "/tenant/tenants/mallory%2F..%2Facme/devices".into(),
            None,
        ),
    ];
    for (what, method, path, body) in attempts {
        let (s, b) = env.as_tenant("mallory", method.clone(), &path, body).await;
        assert_eq!(s, 404, "{what}: {method} {path} answered {s} {b}");
        // The answer may echo what the attacker sent (the fingerprint), nothing more.
        let text = b.to_string();
        assert!(
            !text.contains("Acme Root") && !text.contains("ENABLED") && !text.contains("ops"),
            "{what}: the answer leaks acme's data: {text}"
        );
    }

    // Lists that are not per tenant: refused, or filtered to the caller's own.
    let (s, b) = env
        .as_tenant("mallory", Method::GET, "/tenant/tenants", None)
        .await;
    assert_eq!(s, 403, "list tenants: {b}");
    assert_eq!(
        b["message"], "Only the management tenant can list tenants",
        "{b}"
    );
    let (s, b) = env.as_tenant("mallory", Method::GET, "/audit", None).await;
    assert_eq!(s, 200, "{b}");
    let text = b.to_string();
    assert!(
        !text.contains(&acme_fp) && !text.contains("\"acme\""),
        "audit of another tenant: {text}"
    );
    let (s, b) = env
        .as_tenant("mallory", Method::GET, "/audit?tenant=acme", None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        !b.to_string().contains(&acme_fp) && !b.to_string().contains("\"acme\""),
        "a tenant admin's ?tenant= is ignored, its own records only: {b}"
    );

    // Credentials across tenants: acme's admin name with mallory's password, and the
    // other way round.
    let (s, _) = env
        .api(
            Method::GET,
            "/tenant/tenants/acme/devices",
            "acme/admin",
            "mallory-pw-1",
            None,
        )
        .await;
    assert_eq!(s, 401, "acme/admin with mallory's password");
    let (s, _) = env
        .api(
            Method::GET,
            "/tenant/tenants/mallory/devices",
            "mallory/admin",
            "acme-pw-1",
            None,
        )
        .await;
    assert_eq!(s, 401, "mallory/admin with acme's password");

    // The chain check tells mallory nothing about acme's devices.
    let dev = device("probe", &acme_ca);
    let pem = format!("{}{}", dev.cert_pem(), acme_ca.cert_pem());
    let resp = env
        .http
        .post(format!(
            "{}/tenant/trusted-certificates/verify-cert-chain",
            env.base
        ))
        .basic_auth("mallory/admin", Some("mallory-pw-1"))
        .header("content-type", "application/x-pem-file")
        .body(pem)
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    let b: Value = resp.json().await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["valid"], false, "{b}");
    assert_eq!(b["tenant"], Value::Null, "{b}");
    assert_eq!(b["anchorFingerprint"], Value::Null, "{b}");
    assert_eq!(b["reasonCode"], "unknown_issuer", "{b}");

    // After all of it, acme's CA, device and user are intact.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::GET,
            &format!("/tenant/tenants/acme/trusted-certificates/{acme_fp}"),
            None,
        )
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ENABLED")), "{b}");
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/devices/dev",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = env
        .api(
            Method::GET,
            "/tenant/tenants/acme/devices",
            "acme/ops",
            "acme-ops-secret-1",
            None,
        )
        .await;
    assert_eq!(s, 200, "acme's user still logs in");
}

/// Attempts 32-36: revocation aimed at another tenant's devices (a manual serial list, a
/// CRL from a look-alike CA named like acme's), a shared-subscription group of the same
/// name in both tenants, and 5.0 topic aliases that would resolve to acme's topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_shared_groups_and_topic_aliases_stay_within_the_tenant() {
    let (env, acme_ca, mallory_ca) = two_tenants().await;
    let port = env.mqtt_port();
    let victim = device("victim", &acme_ca);

    // 32: mallory revokes the victim's serial in its own manual list.
    let serial = certs::info::CertInfo::parse(&victim.cert_der)
        .unwrap()
        .serial_hex;
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::PUT,
            "/tenant/trusted-certificates/settings/crl",
            Some(json!({"crls": [{"serialNumberInHex": serial}]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::PUT,
            "/tenant/tenants/mallory/settings",
            Some(json!({"crlOfflineEnabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // 33: mallory uploads a CA whose subject is acme's ("Acme Root", its own key) and a
    // CRL from it that lists the victim's serial.
    let look_alike = ca("Acme Root");
    env.upload("mallory", &look_alike, true).await;
    let crl = certs::issue::crl(
        &look_alike.issuer().unwrap(),
        &[certs::issue::Revocation {
            serial_hex: serial.clone(),
            revoked_at: time::OffsetDateTime::now_utc(),
        }],
        1,
        7,
    )
    .unwrap();
    let resp = env
        .http
        .post(format!("{}/tenant/tenants/mallory/crls", env.base))
        .basic_auth("mallory/admin", Some("mallory-pw-1"))
        .header("content-type", "application/pkix-crl")
        .body(crl)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().await.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The victim still connects into acme (with and without its CA in the chain).
    let (_v, v_el) = connect_v4(v4_options(
        "victim",
        port,
        device_tls(&env.server_ca, &victim, &[&acme_ca]),
    ))
    .await
    .expect("a revocation by another tenant does not touch acme's device");
    drop(v_el);
    let (_v, v_el) = connect_v4(v4_options(
        "victim",
        port,
        device_tls(&env.server_ca, &victim, &[]),
    ))
    .await
    .expect("also when the device sends its certificate alone");
    drop(v_el);

    // 34: a shared-subscription group with the same name in both tenants: acme's
    // messages all go to acme's member, none to mallory's.
    let (_am, mut am_el) = subscriber(&env, "acme-member", &acme_ca, &["$share/g/jobs"]).await;
    let (_mm, mut mm_el) =
        subscriber(&env, "mallory-member", &mallory_ca, &["$share/g/jobs"]).await;
    let (acme_pub, p_el) = subscriber(&env, "acme-pub", &acme_ca, &[]).await;
    let _pd = drive(p_el);
    for i in 0..6 {
        acme_pub
            .publish("jobs", QoS::AtLeastOnce, false, format!("job-{i}"))
            .await
            .unwrap();
    }
    let got = received(&mut am_el).await;
    let leaked = received(&mut mm_el).await;
    assert_eq!(leaked, vec![], "mallory's member gets none of acme's jobs");
    assert_eq!(got.len(), 6, "acme's group member gets every job: {got:?}");

    // 35-36: a 5.0 topic alias set on a topic spelled to reach acme, then used alone.
    let (_w, mut w_el) = subscriber(&env, "acme-watch", &acme_ca, &["#"]).await;
    let aliaser = device("aliaser", &mallory_ca);
    let mut o = v5_options(
        "aliaser",
        port,
        device_tls(&env.server_ca, &aliaser, &[&mallory_ca]),
    );
    o.set_topic_alias_max(Some(10));
    let (a, a_el) = connect_v5(o).await.expect("5.0 connects");
    let _ad = tokio::spawn(async move {
        let mut el = a_el;
        while el.poll().await.is_ok() {}
    });
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    a.publish_with_properties(
        "acme/jobs",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "alias-set",
        props.clone(),
    )
    .await
    .unwrap();
    a.publish_with_properties(
        "",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "alias-used",
        props,
    )
    .await
    .unwrap();
    acme_pub
        .publish("jobs", QoS::AtLeastOnce, false, "acme-control")
        .await
        .unwrap();
    let got = received(&mut w_el).await;
    assert_eq!(
        got,
        vec![("jobs".to_string(), "acme-control".to_string())],
        "aliased topics stay in the publisher's tenant"
    );
}

/// Attempts 37-42: capturing or locking out another tenant's devices through its PKI.
/// acme trusts its root; its devices send leaf + acme's issuing CA. mallory tries to
/// upload that (public) intermediate, acme's root itself, and a look-alike self-signed
/// CA with the intermediate's name; and to lift its own limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_capture_or_lock_out_devices_through_their_pki() {
    let env = start().await;
    env.tenant("acme").await;
    env.tenant("mallory").await;
    let root = ca("Acme Root");
    let issuing = intermediate("Acme Issuing", &root);
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
    let dev = device("meter", &issuing);
    let port = env.mqtt_port();
    let tls = device_tls(&env.server_ca, &dev, &[&issuing]);

    let upload = |cert: &certs::issue::Issued| {
        json!({"status": "ENABLED", "name": "x", "autoRegistrationEnabled": "true",
               "certInPemFormat": cert.cert_pem()})
    };
    let issuing_fp = certs::info::fingerprint_sha1(&issuing.cert_der);
    let root_fp = certs::info::fingerprint_sha1(&root.cert_der);
    // 37: acme's intermediate, issued by acme's anchor.
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::POST,
            "/tenant/tenants/mallory/trusted-certificates",
            Some(upload(&issuing)),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(
        b["message"],
        format!(
            "Certificate {issuing_fp} conflicts with a trust anchor of another tenant: it was issued by it"
        ),
        "{b}"
    );
    // 38: acme's root itself.
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::POST,
            "/tenant/tenants/mallory/trusted-certificates",
            Some(upload(&root)),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(
        b["message"],
        format!(
            "Certificate {root_fp} is already trusted: a certificate can be trusted by only one tenant, so that every device maps to exactly one tenant"
        ),
        "the refusal says why and names no tenant: {b}"
    );
    // 39: the same through the bulk upload.
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::POST,
            "/tenant/tenants/mallory/trusted-certificates/bulk",
            Some(json!({"certificates": [upload(&issuing)]})),
        )
        .await;
    assert_eq!(s, 409, "bulk: {b}");

    // 40: a look-alike self-signed CA named like acme's intermediate is mallory's to
    // upload, and changes nothing for acme's devices.
    let look_alike = ca("Acme Issuing");
    env.upload("mallory", &look_alike, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, el) = connect_v4(v4_options("meter", port, tls.clone()))
        .await
        .expect("acme's device connects despite the look-alike");
    drop((c, el));
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/devices/meter",
            None,
        )
        .await;
    assert_eq!(s, 200, "registered in acme: {b}");
    let (s, _) = env
        .as_tenant(
            "mallory",
            Method::GET,
            "/tenant/tenants/mallory/devices/meter",
            None,
        )
        .await;
    assert_eq!(s, 404, "never in mallory");
    assert!(
        !env.metrics().await.contains("reason=\"bad_signature\""),
        "no device of acme was refused"
    );

    // 41-42: a tenant admin cannot lift the limits the management admin set; its trust
    // choices stay its own.
    let (s, b) = env
        .api(
            Method::PUT,
            "/tenant/tenants/mallory/settings",
            "management/admin",
            ADMIN_PW,
            Some(json!({"maxDevices": 10, "maxAnchors": 5, "maxPublishRate": 100})),
        )
        .await;
    assert_eq!(s, 200, "the management admin sets limits: {b}");
    for body in [
        json!({"maxDevices": 0}),
        json!({"maxAnchors": 1000}),
        json!({"maxPublishRate": 0}),
    ] {
        let (s, b) = env
            .as_tenant(
                "mallory",
                Method::PUT,
                "/tenant/tenants/mallory/settings",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 403, "{body}: {b}");
        assert!(
            b["message"].as_str().is_some_and(
                |m| m.starts_with("Only the management administrator can change the limits")
            ),
            "{b}"
        );
    }
    let (_, b) = env
        .as_tenant(
            "mallory",
            Method::GET,
            "/tenant/tenants/mallory/settings",
            None,
        )
        .await;
    assert_eq!(
        (&b["maxDevices"], &b["maxAnchors"], &b["maxPublishRate"]),
        (&json!(10), &json!(5), &json!(100)),
        "limits unchanged: {b}"
    );
    let (s, b) = env
        .as_tenant(
            "mallory",
            Method::PUT,
            "/tenant/tenants/mallory/settings",
            Some(json!({"maxChainLength": 3, "crlOfflineEnabled": true})),
        )
        .await;
    assert_eq!(s, 200, "trust choices are the tenant's: {b}");
}
