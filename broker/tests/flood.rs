//! One address holding as many sockets as it can open must not keep devices from other
//! addresses out: per-source caps on the MQTT listener's handshakes in progress and on
//! the admin listener's connections, and the timeouts that free the slots.
//!
//! On loopback the attacker is 127.0.0.1 and the legitimate peer 127.0.0.2.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKER: &str = "127.0.0.1";
const DEVICE: &str = "127.0.0.2";

/// Waits until `series` reaches `want` in the metrics (or 20 s pass); returns the last
/// value seen.
async fn wait_counter(env: &Env, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = counter(&env.metrics().await, series);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server has closed `s` (EOF or reset); data or nothing yet: open.
fn closed(s: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_idle_sockets_does_not_keep_other_devices_out() {
    const FLOOD: usize = 600;
    let cap = broker::Config::default().limits.max_handshakes_per_source;
    // Long timeouts: the per-source cap alone must hold the flood off (the timeouts are
    // tested below).
    let env = start_with(|c| {
        c.limits.first_byte_timeout_ms = 120_000;
        c.limits.handshake_timeout_ms = 120_000;
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let addr = env.broker().mqtt_addr;
    let before = device("before", &ca);
    let t0 = Instant::now();
    let connack = raw_connect_v4_from(&env, DEVICE, "before", &before, &[&ca]).await;
    eprintln!("device without flood: {connack:?} after {:?}", t0.elapsed());

    // More sockets than the global cap on handshakes in progress (512): half send
    // nothing, half the first bytes of a TLS record and then nothing.
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut s = tcp_from(ATTACKER, addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        }
        flood.push(s);
    }
    let refused_series = "mqtt_connections_refused_total{reason=\"handshake_per_source\"}";
    let refused = wait_counter(&env, refused_series, (FLOOD - cap) as f64).await;

    // With the flood held open, a device from another address gets its CONNACK.
    let dev = device("dev1", &ca);
    let t0 = Instant::now();
    let connack = raw_connect_v4_from(&env, DEVICE, "dev1", &dev, &[&ca]).await;
    let took = t0.elapsed();
    eprintln!(
        "flood: {FLOOD} sockets from {ATTACKER} (per-source cap {cap}, {refused} refused); device from {DEVICE}: {connack:?} after {took:?}"
    );
    assert_eq!(
        connack,
        Ok(vec![0x20, 0x02, 0x00, 0x00]),
        "CONNACK accepted"
    );

    // Exactly the cap is held; every other attacker socket was closed before TLS and
    // counted under its own reason.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open = flood.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, cap, "attacker sockets still open");
    let metrics = env.metrics().await;
    assert_eq!(counter(&metrics, refused_series), (FLOOD - cap) as f64);
    assert_eq!(
        counter(
            &metrics,
            "mqtt_connections_refused_total{reason=\"handshake_concurrency\"}"
        ),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_sends_nothing_is_closed_after_the_first_byte_timeout() {
    // The handshake timeout stays at its default of 10 s.
    let env = start_with(|c| {
        c.limits.max_handshakes_per_source = 1;
        c.limits.first_byte_timeout_ms = 300;
    })
    .await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let addr = env.broker().mqtt_addr;

    // The only slot of 127.0.0.1, held by a socket that sends nothing...
    let mut idle = tcp_from(ATTACKER, addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed by the first-byte timeout, not the 10 s handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let series = "mqtt_tls_handshakes_total{outcome=\"failed\",reason=\"first_byte_timeout\"}";
    assert_eq!(wait_counter(&env, series, 1.0).await, 1.0);

    // ...is free again: a device from the same address connects.
    let dev = device("dev1", &ca);
    let connack = raw_connect_v4_from(&env, ATTACKER, "dev1", &dev, &[&ca]).await;
    assert_eq!(connack, Ok(vec![0x20, 0x02, 0x00, 0x00]));

    // A peer that has sent its first byte is not cut by the first-byte timeout (the
    // handshake timeout applies).
    let mut slow = tcp_from(ATTACKER, addr).await.unwrap();
    slow.write_all(&[0x16]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!closed(&slow), "closed before the handshake timeout");
}

/// Whether the server closes `s` within `wait` (EOF, TLS close or reset).
async fn closes_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The management admin lists tenants from `from`: the status, and how long it took.
async fn admin_login_from(env: &Env, from: &str) -> (Result<u16, String>, Duration) {
    let http = https_client_from(&env.server_ca, from);
    let t0 = Instant::now();
    let r = http
        .get(format!("{}/tenant/tenants", env.base))
        .basic_auth("management/admin", Some(ADMIN_PW))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"));
    (r, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_admin_connections_does_not_lock_the_admin_out() {
    // More than the admin listener's 1,024 connections, all from one address.
    const FLOOD: usize = 1100;
    // Long TLS and idle timeouts: the per-source cap alone must hold the flood off,
    // however slow the handshakes on a busy machine.
    let admin = broker::listener::AdminLimits {
        header_read_timeout_ms: 500,
        idle_timeout_ms: 120_000,
        tls_handshake_timeout_ms: 60_000,
        ..Default::default()
    };
    let cap = admin.max_connections_per_source;
    let env = start_with(|c| c.admin = admin).await;
    let env = std::sync::Arc::new(env);
    let (status, took) = admin_login_from(&env, DEVICE).await;
    eprintln!("admin without flood: {status:?} after {took:?}");
    assert_eq!(status, Ok(200));

    // Every attacker connection completes TLS if it can, then sends nothing.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let env = env.clone();
        let gate = gate.clone();
        attempts.spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), admin_tls_from(&env, ATTACKER))
                .await
                .ok()
                .and_then(Result::ok)
        });
    }
    let mut held = Vec::new();
    while let Some(r) = attempts.join_next().await {
        if let Some(s) = r.unwrap() {
            held.push(s);
        }
    }
    let refused_series = "admin_api_connections_refused_total{reason=\"per_source\"}";
    let refused = wait_counter(&env, refused_series, (FLOOD - cap) as f64).await;

    // The flood is held open; the admin logs in from another address.
    let (status, took) = admin_login_from(&env, DEVICE).await;
    eprintln!(
        "admin flood: {FLOOD} TLS connections from {ATTACKER}, {} held (cap {cap}), {refused} refused; admin from {DEVICE}: {status:?} after {took:?}",
        held.len()
    );
    assert_eq!(status, Ok(200));
    assert_eq!(held.len(), cap, "attacker connections that got through TLS");
    assert_eq!(refused, (FLOOD - cap) as f64);

    // Half a request line is closed by the header-read timeout; the silent connections
    // stay until the idle timeout.
    let (mut silent, mut half) = (held, Vec::new());
    for _ in 0..cap / 2 {
        let mut s = silent.pop().unwrap();
        s.write_all(b"GET /tenant/tenants HT").await.unwrap();
        half.push(s);
    }
    for s in &mut half {
        assert!(
            closes_within(s, Duration::from_secs(10)).await,
            "half a request line must be closed by the header-read timeout"
        );
    }
    let series = "admin_api_connections_refused_total{reason=\"header_read_timeout\"}";
    assert_eq!(
        wait_counter(&env, series, (cap / 2) as f64).await,
        (cap / 2) as f64
    );
    for s in &mut silent[..2] {
        assert!(!closes_within(s, Duration::from_millis(200)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admin_listener_closes_the_newest_connection_and_keeps_accepting() {
    let env = start_with(|c| {
        c.admin = broker::listener::AdminLimits {
            max_connections: 4,
            ..Default::default()
        }
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(admin_tls_from(&env, ATTACKER).await.unwrap());
    }
    // The fifth, from another address, is accepted and closed at once.
    let mut fifth = tcp_from(DEVICE, env.broker().admin_addr).await.unwrap();
    assert!(closes_within(&mut fifth, Duration::from_secs(5)).await);
    let series = "admin_api_connections_refused_total{reason=\"connections\"}";
    assert_eq!(wait_counter(&env, series, 1.0).await, 1.0);
    // One connection ends: the next one is served (accepting never stopped).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = admin_login_from(&env, DEVICE).await;
        if status == Ok(200) {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_without_requests_and_slow_bodies_are_cut() {
    let env = start_with(|c| {
        c.admin = broker::listener::AdminLimits {
            idle_timeout_ms: 300,
            request_timeout_ms: 800,
            tls_handshake_timeout_ms: 300,
            ..Default::default()
        }
    })
    .await;
    // No TLS at all: closed by the TLS handshake timeout.
    let mut raw = tcp_from(ATTACKER, env.broker().admin_addr).await.unwrap();
    assert!(closes_within(&mut raw, Duration::from_secs(10)).await);
    // TLS, then nothing: closed by the idle timeout.
    let mut silent = admin_tls_from(&env, ATTACKER).await.unwrap();
    assert!(closes_within(&mut silent, Duration::from_secs(10)).await);
    let metrics = env.metrics().await;
    for reason in ["tls_handshake", "idle"] {
        let series = format!("admin_api_connections_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&metrics, &series), 1.0, "{reason}: {metrics}");
    }
    // A body announced but never sent: 408 after the request timeout.
    let mut slow = admin_tls_from(&env, ATTACKER).await.unwrap();
    let auth = "bWFuYWdlbWVudC9hZG1pbjptYW5hZ2VtZW50LXNlY3JldC0x"; // management/admin:management-secret-1
    let head = format!(
        "POST /tenant/tenants HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.contains(r#""error":"request_timeout""#), "{text}");
}
