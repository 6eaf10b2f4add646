//! Measures the resident memory of a flood of valid logins (items 13.3/13.4).
//!
//! `cargo run -p admin-api --example login_flood -- MODE TOTAL CONCURRENCY`
//!
//! - `pool`: the real router over a real socket and SQLite file, default argon2 cost
//!   (19 MiB), the login cache off (every login runs argon2 on the checker pool).
//! - `cached`: the same with the login cache on (the default).
//! - `blocking`: the previous scheme for comparison, without HTTP: each login does a
//!   blocking-pool hop (as the store lookup does), then argon2 on the blocking pool
//!   under a semaphore of one permit per core.
//!
//! Prints VmRSS and VmHWM (peak) from /proc/self/status before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_api::{Admin, AdminConfig, PasswordHashing};

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn report(when: &str) {
    println!(
        "{when}: VmRSS {}, VmHWM {}, threads {}",
        status("VmRSS:"),
        status("VmHWM:"),
        status("Threads:")
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("pool")
        .to_string();
    let total: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(400);
    let concurrency: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "flood-password-1";
    let mut config = AdminConfig::new(dir.path());
    config.admin_password = Some(password.to_string());
    config.password_hashing = PasswordHashing::default();
    config.password_check_queue = concurrency;
    if mode != "cached" {
        config.login_cache_ttl = Duration::ZERO;
    }
    let admin = Admin::open(config).await.expect("admin opens");
    report("before");
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    match mode.as_str() {
        "blocking" => {
            let hash = admin
                .store()
                .user("management", "admin")
                .await
                .expect("store")
                .expect("admin user")
                .password_hash;
            let checks = Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ));
            for _ in 0..total {
                let (sem, checks, hash) = (sem.clone(), checks.clone(), hash.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire_owned().await.expect("permit");
                    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
                        .await
                        .expect("lookup");
                    let _c = checks.acquire_owned().await.expect("permit");
                    let ok = tokio::task::spawn_blocking(move || {
                        admin_api::auth::verify_password(&hash, password)
                    })
                    .await
                    .expect("check");
                    assert!(ok);
                    200u16
                }));
            }
        }
        _ => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!(
                "http://{}/tenant/tenants",
                listener.local_addr().expect("addr")
            );
            let router = admin.router();
            tokio::spawn(async move {
                let _ = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .await;
            });
            let client = reqwest::Client::new();
            for _ in 0..total {
                let (sem, client, url) = (sem.clone(), client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire_owned().await.expect("permit");
                    let r = client
                        .get(url)
                        .basic_auth("management/admin", Some(password))
                        .send()
                        .await
                        .expect("request");
                    r.status().as_u16()
                }));
            }
        }
    }
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.expect("task")).or_insert(0u32) += 1;
    }
    println!(
        "mode {mode}: {total} logins, {concurrency} at a time, statuses {by_status:?}, argon2 checks run {}, {:.1} s",
        admin.password_checks_run(),
        started.elapsed().as_secs_f64()
    );
    report("after");
}
