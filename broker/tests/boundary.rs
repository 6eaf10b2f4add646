//! The embedded broker's boundary: it accepts nothing that did not come through the
//! front-end. With the in-process transport it listens on no port at all; with the
//! loopback transport its listeners refuse a CONNECT without the front-end's random
//! per-process credential, so a local process cannot subscribe to `acme/#` there.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use broker::mqtt::Version;
use common::*;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ports of the TCP sockets in LISTEN state that process `pid` holds open.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn the_in_process_embedded_broker_listens_on_no_port() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let expected: BTreeSet<u16> = ["mqtt_addr", "admin_addr", "metrics_addr", "est_addr"]
        .into_iter()
        .map(|k| broker.addr(k).port())
        .collect();
    assert_eq!(
        listening_ports(broker.child.id()),
        expected,
        "the broker listens on its four configured ports (MQTT, admin, metrics, EST) and nothing else"
    );
}

/// A 3.1.1 CONNECT (clean session, keep-alive 30 s), with a login when given.
fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
    body.push(if login.is_some() { 0xC2 } else { 0x02 });
    body.extend_from_slice(&[0, 30]);
    let mut string = |s: &[u8]| {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s);
    };
    string(client_id.as_bytes());
    if let Some((u, p)) = login {
        string(u.as_bytes());
        string(p.as_bytes());
    }
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    pkt
}

/// Sends `connect` to `addr` and returns everything the server sent until it closed.
async fn answer_to(addr: &str, connect: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(connect).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    // A CONNACK is 4 bytes; a refusal is a close without one.
    while got.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{addr}: neither a CONNACK nor a close within 5 s"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_listeners_accept_only_the_front_end() {
    let env = start_with(|c| c.embedded.transport = broker::config::Transport::Loopback).await;
    let backend = &env.broker().shared.backend;
    let v4 = backend.addresses(Version::V4).to_vec();
    let v5 = backend.addresses(Version::V5).to_vec();
    assert_eq!((v4.len(), v5.len()), (1, 1), "{v4:?} {v5:?}");

    // A local process without the credential: closed without a CONNACK, at both
    // protocol levels (rumqttd checks the login before anything else).
    assert_eq!(answer_to(&v4[0], &connect_packet("spy", None)).await, b"");
    assert_eq!(
        answer_to(
            &v4[0],
            &connect_packet("spy", Some(("!front-end", "guess")))
        )
        .await,
        b""
    );
    let addr5: std::net::SocketAddr = v5[0].parse().unwrap();
    let mut o5 = rumqttc::v5::MqttOptions::new("spy5", "127.0.0.1", addr5.port());
    o5.set_keep_alive(Duration::from_secs(30));
    let (_c5, mut el5) = rumqttc::v5::AsyncClient::new(o5, 10);
    match tokio::time::timeout(Duration::from_secs(5), el5.poll()).await {
        Ok(Err(_)) => {}
        other => panic!("an MQTT 5 CONNECT without the credential was not refused: {other:?}"),
    }
    let mut o4 = rumqttc::MqttOptions::new(
        "spy4",
        "127.0.0.1",
        v4[0].parse::<std::net::SocketAddr>().unwrap().port(),
    );
    o4.set_keep_alive(Duration::from_secs(30));
    let (c4, mut el4) = rumqttc::AsyncClient::new(o4, 10);
    c4.subscribe("acme/#", QoS::AtMostOnce).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), el4.poll()).await {
        Ok(Err(_)) => {}
        other => panic!("a 3.1.1 CONNECT without the credential was not refused: {other:?}"),
    }

    // The front-end's credential is what opens it: the listener itself works.
    let login = backend
        .login()
        .expect("a credential with the loopback transport");
    assert_eq!(login.password.len(), 64, "256 random bits");
    assert!(!format!("{login:?}").contains(&login.password));
    assert_eq!(
        answer_to(
            &v4[0],
            &connect_packet("own", Some((&login.username, &login.password)))
        )
        .await,
        [0x20, 0x02, 0x00, 0x00]
    );
    // The front-end's own echo probe carries it too.
    let mut echo = broker::backend::Echo::connect(backend).await.unwrap();
    echo.round_trip().await.unwrap();

    // And devices still get through the front-end.
    env.tenant("acme").await;
    let ca = ca("Acme Root");
    env.upload("acme", &ca, true).await;
    let dev = device("d1", &ca);
    let (c, mut el) = connect_v4(v4_options(
        "d1",
        env.mqtt_port(),
        device_tls(&env.server_ca, &dev, &[&ca]),
    ))
    .await
    .unwrap();
    c.subscribe("t", QoS::AtLeastOnce).await.unwrap();
    wait_suback(&mut el).await;
    c.publish("t", QoS::AtLeastOnce, false, "x").await.unwrap();
    let (topic, payload, _) = next_publish(&mut el, Duration::from_secs(5))
        .await
        .expect("message");
    assert_eq!((topic.as_str(), payload.as_slice()), ("t", &b"x"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_transport_has_no_backend_address() {
    let env = start().await;
    let backend = &env.broker().shared.backend;
    assert!(backend.addresses(Version::V4).is_empty());
    assert!(backend.addresses(Version::V5).is_empty());
    assert!(backend.login().is_none());
    // The echo probe runs in-process.
    let mut echo = broker::backend::Echo::connect(backend).await.unwrap();
    echo.round_trip().await.unwrap();
}
