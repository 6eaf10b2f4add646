//! The device registry over REST and through the broker's interface.

use std::time::Duration;

use admin_api::DeviceState;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn preregister_list_block_and_unblock() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/devices";

    let (st, d) = s.post(path, a, &json!({"commonName": "pump-1"})).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    assert_eq!(d["commonName"], "pump-1");
    assert_eq!(d["status"], "REGISTERED");
    assert!(d["firstConnection"].is_null());
    assert_error(
        &s.post(path, a, &json!({"commonName": "pump-1"})).await,
        StatusCode::CONFLICT,
        "Device pump-1 is already registered",
    );
    for bad in ["a/b", "wild#", "", "plus+"] {
        assert_error(
            &s.post(path, a, &json!({"commonName": bad})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "commonName must be 1 to 64 characters without control characters or any of + # / $",
        );
    }
    s.post(path, a, &json!({"commonName": "Gerät-2"})).await;
    assert_eq!(
        s.admin.device_admission("t1", "pump-1").await.unwrap(),
        DeviceState::Registered
    );
    assert_eq!(
        s.admin.device_admission("t1", "nobody").await.unwrap(),
        DeviceState::Unknown
    );

    let (st, list) = s.get(&format!("{path}?pageSize=1&currentPage=2"), a).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["devices"][0]["commonName"], "pump-1");
    assert_eq!(list["statistics"]["totalElements"], 2);

    // Blocking publishes a snapshot naming the CN; it also works before first sight.
    let mut rx = s.admin.trust_store();
    rx.mark_unchanged();
    assert_eq!(
        s.delete(&format!("{path}/pump-1"), a).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(rx.has_changed().unwrap());
    assert!(s.admin.trust_store().borrow().is_blocked("t1", "pump-1"));
    assert_eq!(
        s.admin.device_admission("t1", "pump-1").await.unwrap(),
        DeviceState::Blocked
    );
    assert_eq!(
        s.delete(&format!("{path}/stolen-9"), a).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(s.admin.trust_store().borrow().is_blocked("t1", "stolen-9"));
    let (_, d) = s.get(&format!("{path}/pump-1"), a).await;
    assert_eq!(d["status"], "BLOCKED");

    let (st, d) = s
        .put(
            &format!("{path}/pump-1"),
            a,
            &json!({"status": "REGISTERED"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "REGISTERED");
    assert!(!s.admin.trust_store().borrow().is_blocked("t1", "pump-1"));
    assert_error(
        &s.put(&format!("{path}/pump-1"), a, &json!({"status": "GONE"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "status must be REGISTERED or BLOCKED",
    );
    assert_error(
        &s.get(&format!("{path}/nobody"), a).await,
        StatusCode::NOT_FOUND,
        "Device nobody not found",
    );
    assert_error(
        &s.put(&format!("{path}/nobody"), a, &json!({"status": "BLOCKED"}))
            .await,
        StatusCode::NOT_FOUND,
        "Device nobody not found",
    );

    let audit = s.get("/audit?pageSize=100", a).await.1;
    let actions: Vec<&str> = audit["auditRecords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..5],
        [
            "DEVICE_UNBLOCKED",
            "DEVICE_BLOCKED",
            "DEVICE_BLOCKED",
            "DEVICE_PREREGISTERED",
            "DEVICE_PREREGISTERED"
        ]
    );
    assert_eq!(audit["auditRecords"][0]["actor"], "t1/admin");
    assert_eq!(audit["auditRecords"][0]["target"], "pump-1");
}

#[tokio::test]
async fn registration_on_connect_and_last_seen_do_not_rebuild_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Registry CA");
    let fp = s.trust("t1", &login, &root, true).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    s.post(
        "/tenant/tenants/t1/devices",
        a,
        &json!({"commonName": "pre"}),
    )
    .await;

    let mut rx = s.admin.trust_store();
    rx.mark_unchanged();
    s.admin.register_device("t1", "auto-1", &fp).await.unwrap();
    s.admin.register_device("t1", "auto-1", &fp).await.unwrap();
    s.admin.register_device("t1", "pre", &fp).await.unwrap();
    s.delete("/tenant/tenants/t1/devices/blocked", a).await;
    rx.mark_unchanged();
    s.admin.register_device("t1", "blocked", &fp).await.unwrap();
    assert!(!rx.has_changed().unwrap(), "registrations do not publish");
    assert_eq!(
        s.admin.device_admission("t1", "blocked").await.unwrap(),
        DeviceState::Blocked,
        "never unblocks"
    );

    let (_, d) = s.get("/tenant/tenants/t1/devices/auto-1", a).await;
    assert_eq!(d["status"], "REGISTERED");
    assert_eq!(d["anchorFingerprint"], fp);
    assert!(d["firstConnection"].is_string());
    let (_, pre) = s.get("/tenant/tenants/t1/devices/pre", a).await;
    assert!(
        pre["firstConnection"].is_string(),
        "first connection of a pre-registered device is recorded"
    );

    // last-seen: in memory, flushed by the background task.
    let conn = rusqlite::Connection::open(dir.path().join("broker.db")).unwrap();
    conn.execute(
        "UPDATE devices SET last_connection = 5 WHERE common_name = 'auto-1'",
        [],
    )
    .unwrap();
    s.admin.device_seen("t1", "auto-1");
    let mut flushed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last: i64 = conn
            .query_row(
                "SELECT last_connection FROM devices WHERE common_name = 'auto-1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if last > 5 {
            flushed = true;
            break;
        }
    }
    assert!(flushed, "the background task wrote the last-seen time");
    assert!(!rx.has_changed().unwrap());
    let regs = s.get("/audit?pageSize=100", a).await.1["auditRecords"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "DEVICE_REGISTERED")
        .count();
    assert_eq!(
        regs, 2,
        "one record per new registration, none for repeats or blocked devices"
    );
}
