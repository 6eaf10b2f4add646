//! Login floods and lockouts: failures lock a (user, source address) pair, not the user
//! name alone; a user name failing from everywhere is slowed down, not locked; argon2
//! runs on a bounded pool (503 beyond it); recent successful checks are cached, never
//! for a wrong or replaced password.

use std::net::IpAddr;

use admin_api::PasswordHashing;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, last_octet]))
        .build()
        .unwrap()
}

async fn login(
    s: &Server,
    client: &reqwest::Client,
    user: &str,
    pass: &str,
) -> (StatusCode, Option<String>, Value) {
    let r = client
        .get(s.url("/tenant/tenants"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

#[tokio::test]
async fn an_attacker_address_cannot_lock_the_admin_out_from_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Every login runs argon2, so the slowdown below is what answers.
    cfg.login_cache_ttl = std::time::Duration::ZERO;
    let s = start_with(cfg).await;
    let attacker = client_from(2);
    for _ in 0..3 {
        let (st, _, b) = login(&s, &attacker, ADMIN_USER, "guess").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
    }
    // The attacker's pair is locked, even with the right password...
    let (st, retry, b) = login(&s, &attacker, ADMIN_USER, ADMIN_PASS).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{b}");
    let retry: u64 = retry.unwrap().parse().unwrap();
    let unit = if retry == 1 { "second" } else { "seconds" };
    assert_eq!(
        b["message"],
        format!("Too many failed logins; try again in {retry} {unit}")
    );
    // ...the admin at another address is not.
    let (st, _, b) = login(&s, &s.client, ADMIN_USER, ADMIN_PASS).await;
    assert_eq!(st, StatusCode::OK, "{b}");

    // Failing from many addresses (10 x 3 = 30 failures: ten times the pair limit) slows
    // the name down; it does not lock it.
    for octet in 3..13 {
        let c = client_from(octet);
        for _ in 0..3 {
            let (st, _, b) = login(&s, &c, ADMIN_USER, "guess").await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
        }
    }
    let (st, _, b) = login(&s, &s.client, ADMIN_USER, ADMIN_PASS).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, _, b) = login(&s, &client_from(20), ADMIN_USER, ADMIN_PASS).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // A wrong password is still a wrong password.
    let (st, _, b) = login(&s, &client_from(21), ADMIN_USER, "guess").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
}

#[tokio::test]
async fn a_full_password_check_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // One thread, one waiting check, and checks slow enough that 32 simultaneous
    // logins arrive while the first is running.
    cfg.password_check_threads = 1;
    cfg.password_check_queue = 1;
    cfg.password_hashing = PasswordHashing {
        memory_kib: 4 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    let s = start_with(cfg).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let client = s.client.clone();
        let url = s.url("/tenant/tenants");
        tasks.push(tokio::spawn(async move {
            let r = client
                .get(url)
                .basic_auth(format!("management/nobody-{i}"), Some("wrong-pass"))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            (status, retry, body)
        }));
    }
    let mut busy = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(
                    body,
                    serde_json::json!({
                        "error": "service_unavailable",
                        "message": "Too many logins are being checked; try again in 1 second",
                        "info": {"retryAfterSeconds": 1}
                    })
                );
            }
            StatusCode::UNAUTHORIZED => assert_eq!(body["message"], "Invalid credentials"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy >= 1, "no login was refused with 503");
    assert!(
        s.admin.password_checks_run() <= 32 - busy,
        "a refused login ran no check"
    );
}

#[tokio::test]
async fn the_login_cache_never_accepts_a_wrong_or_replaced_password() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let runs = || s.admin.password_checks_run();

    let before = runs();
    assert_eq!(
        s.get("/tenant/tenants/t1", (&login, TENANT_PASS)).await.0,
        StatusCode::OK
    );
    assert_eq!(runs(), before + 1);
    // Cached: no second argon2 check for the same credentials.
    assert_eq!(
        s.get("/tenant/tenants/t1", (&login, TENANT_PASS)).await.0,
        StatusCode::OK
    );
    assert_eq!(runs(), before + 1);
    // A wrong password is checked, and refused, while the right one is cached.
    let wrong = s.get("/tenant/tenants/t1", (&login, "tenant-pass-2")).await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "Invalid credentials");
    assert_eq!(runs(), before + 2);

    // The password changes: the old one is refused although it was cached.
    let hash = PasswordHashing {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    }
    .hash("tenant-pass-new")
    .unwrap();
    s.admin
        .store()
        .set_password(
            "t1",
            "admin",
            hash,
            admin_api::store::AuditEntry::new("system", Some("t1"), "PASSWORD_RESET"),
        )
        .await
        .unwrap();
    let old = s.get("/tenant/tenants/t1", (&login, TENANT_PASS)).await;
    assert_error(&old, StatusCode::UNAUTHORIZED, "Invalid credentials");
    assert_eq!(runs(), before + 3);
    assert_eq!(
        s.get("/tenant/tenants/t1", (&login, "tenant-pass-new"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/tenant/tenants/t1", (&login, "tenant-pass-new"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(runs(), before + 4);
}

#[tokio::test]
async fn simultaneous_identical_logins_share_one_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // One thread and one queue slot: without sharing, most of these would get 503.
    cfg.password_check_threads = 1;
    cfg.password_check_queue = 1;
    cfg.password_hashing = PasswordHashing {
        memory_kib: 4 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    let s = start_with(cfg).await;
    let before = s.admin.password_checks_run();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = s.client.clone();
        let url = s.url("/tenant/tenants");
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .basic_auth(ADMIN_USER, Some(ADMIN_PASS))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(s.admin.password_checks_run(), before + 1);
}
