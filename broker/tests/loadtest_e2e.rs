//! `loadtest` against the real product: a small fleet, the CA uploaded through the admin
//! API, and the report's numbers checked against what the subscribers and the broker saw.

mod common;

use std::time::Duration;

use common::*;

/// loadtest's defaults pointed at `env`: its MQTT and admin listeners, its server CA.
fn against(env: &Env) -> loadtest::Config {
    let ca_file = env.dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, &env.server_ca).unwrap();
    loadtest::Config {
        broker: env.broker().mqtt_addr.to_string(),
        admin: Some(format!(
            "https://127.0.0.1:{}",
            env.broker().admin_addr.port()
        )),
        admin_password: Some(ADMIN_PW.into()),
        server_ca: Some(ca_file),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_report_matches_what_was_delivered() {
    // The report's accounting is under test, not admission: with the lag feedback on, a
    // slow debug build may refuse a few devices that connect while others publish.
    let env = start_with(|c| c.limits.session_lag_target_us = 0).await;
    let config = loadtest::Config {
        devices: 50,
        messages: 10,
        qos: 1,
        subscribers: 2,
        publish_interval: Duration::from_millis(20),
        connect_rate: 500.0,
        duration: Duration::from_secs(60),
        ..against(&env)
    };
    let report = loadtest::run(config).await.expect("loadtest run");
    assert_eq!(report.connect.attempted, 50);
    assert_eq!(report.connect.succeeded, 50, "{:?}", report.errors);
    assert_eq!(report.publish.sent, 500);
    assert_eq!(
        report.messages.received,
        500 * 2,
        "each subscriber sees every message"
    );
    assert_eq!(report.messages.lost, 0);
    assert_eq!(report.messages.duplicated, 0);
    let json = serde_json::to_value(&report).unwrap();
    for key in ["connect", "publish", "messages", "e2e_latency_ms", "errors"] {
        assert!(json.get(key).is_some(), "report key {key}");
    }
    // The broker agrees: every device and subscriber session was counted.
    let metrics = env.metrics().await;
    let connects: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mqtt_connect_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(connects >= 52.0, "broker counted {connects} sessions");
}

/// A storm beyond the handshake rate: the devices the rate cannot take at once wait for
/// their turn (limits.handshake_queue_ms) instead of being closed, so none of them has
/// to back off and retry; the rate still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_beyond_the_handshake_rate_waits_its_turn() {
    let env = start_with(|c| {
        c.limits.session_lag_target_us = 0;
        c.limits.handshake_rate = 20;
        c.limits.handshake_burst = 5;
        c.limits.handshake_queue_ms = 2_000;
    })
    .await;
    let report = loadtest::run(loadtest::Config {
        devices: 40,
        messages: 0,
        subscribers: 0,
        connect_rate: 1000.0,
        connect_retries: 0,
        duration: Duration::from_secs(60),
        ..against(&env)
    })
    .await
    .expect("run");
    let c = &report.connect;
    assert_eq!(c.succeeded, 40, "{}", report.summary_table());
    assert_eq!(c.admission_refused, 0, "{}", report.summary_table());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // 5 at once, then 20 a second: the last turn comes after (40 - 5) / 20 s.
    assert!(c.window_s >= 1.5, "{}", report.summary_table());
    let metrics = env.metrics().await;
    let queued: f64 = metrics
        .lines()
        .find(|l| l.starts_with("mqtt_handshake_queue_seconds_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no queue histogram in {metrics}"));
    assert!(queued >= 30.0, "{queued} connections waited");
    assert!(
        !metrics.contains("mqtt_connections_refused_total{reason=\"handshake_rate\"}"),
        "{metrics}"
    );
}

/// A broker whose admission control turns devices away: loadtest says so (not "closed by
/// peer"), retries with back-off as devices do and counts the retries apart, and deletes
/// the tenant it created unless told to keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refusals_are_reported_and_retried_and_the_tenant_is_removed() {
    let env = start_with(|c| {
        c.limits.session_lag_target_us = 0;
        c.limits.handshake_rate = 10;
        c.limits.handshake_burst = 5;
        c.limits.handshake_queue_ms = 0;
    })
    .await;
    let config = loadtest::Config {
        devices: 30,
        messages: 1,
        subscribers: 1,
        connect_rate: 1000.0,
        connect_retries: 8,
        duration: Duration::from_secs(60),
        ..against(&env)
    };
    let tenant_status = |tenant: String| {
        let env = &env;
        async move {
            env.api(
                reqwest::Method::GET,
                &format!("/tenant/tenants/{tenant}"),
                "management/admin",
                ADMIN_PW,
                None,
            )
            .await
            .0
        }
    };

    let report = loadtest::run(config.clone()).await.expect("run");
    let c = &report.connect;
    assert_eq!(c.succeeded, 30, "{}", report.summary_table());
    assert!(c.admission_refused > 0, "{}", report.summary_table());
    assert!(
        c.retries >= c.admission_refused,
        "{}",
        report.summary_table()
    );
    assert!(c.succeeded_after_retry > 0, "{}", report.summary_table());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.summary_table().contains("admission control"));
    let tenant = report.certs.tenant.clone().expect("tenant");
    assert!(report.certs.tenant_deleted);
    assert_eq!(tenant_status(tenant).await, 404, "tenant left behind");

    // Without retries the refusals are failures, named as what they are; --keep keeps
    // the tenant.
    let report = loadtest::run(loadtest::Config {
        connect_retries: 0,
        keep_tenant: true,
        ..config
    })
    .await
    .expect("run");
    let c = &report.connect;
    assert!(c.failed > 0, "{}", report.summary_table());
    assert_eq!(c.failed, c.admission_refused, "{:?}", report.errors);
    assert_eq!(c.retries, 0);
    let kinds: Vec<&String> = report.errors.keys().collect();
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    assert!(
        kinds[0].contains("refused by the broker's admission control"),
        "{kinds:?}"
    );
    assert!(!report.certs.tenant_deleted);
    let tenant = report.certs.tenant.clone().expect("tenant");
    assert_eq!(tenant_status(tenant).await, 200, "--keep keeps the tenant");
}
