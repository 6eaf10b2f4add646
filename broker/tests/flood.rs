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
    let cap = broker::admission::SourceLimits::default().max_handshakes_per_source;
    // Long timeouts: the per-source cap alone must hold the flood off (the timeouts are
    // tested below).
    let edge = broker::Edge {
        source: broker::admission::SourceLimits {
            first_byte_timeout_ms: 120_000,
            ..Default::default()
        },
    };
    let env = start_tuned(edge, |c| c.limits.handshake_timeout_ms = 120_000).await;
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let addr = env.broker().mqtt_addr;

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
    let edge = broker::Edge {
        source: broker::admission::SourceLimits {
            max_handshakes_per_source: 1,
            first_byte_timeout_ms: 300,
        },
    };
    // The handshake timeout stays at its default of 10 s.
    let env = start_tuned(edge, |_| {}).await;
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
