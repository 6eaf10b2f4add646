//! Several front-end nodes: two real `broker` processes on one PostgreSQL (started here
//! from Debian's binaries) and one external broker (Debian's mosquitto, `--backend`).
//! Trust changes made on one node act on the other within a second, messages cross
//! nodes through the external broker, a ClientId taken over on the other node closes
//! the first session, a killed node leaves the other serving, the database can go away
//! and come back, `maxDevices` counts the sessions of both nodes, and topic rules set on
//! one node apply to the other's sessions.

mod common;

#[path = "../../admin-api/tests/support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use certs::issue::Issued;
use common::*;
use postgres::Postgres;
use reqwest::Method;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, DisconnectReasonCode, Filter, Packet, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{ConnectionError, Event};
use serde_json::{json, Value};

/// One front-end process and an admin client for it.
struct Node {
    process: BrokerProcess,
    env: Env,
    mqtt: u16,
}

impl Node {
    fn start(store_url: &str, backend: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let process = BrokerProcess::start_with_args(
            dir.path(),
            ADMIN_PW,
            &["--store", store_url, "--backend", backend],
        );
        assert!(
            process.listening.contains("postgresql"),
            "{}",
            process.listening
        );
        // The database's password never reaches the log.
        for line in process.before.iter().chain([&process.listening]) {
            assert!(!line.contains(postgres::PG_PASSWORD), "{line}");
        }
        let server_ca = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        let env = Env {
            broker: None,
            http: https_client(&server_ca),
            base: format!("https://localhost:{}", process.addr("admin_addr").port()),
            server_ca,
            dir,
        };
        let mqtt = process.addr("mqtt_addr").port();
        Node { process, env, mqtt }
    }

    async fn connect(
        &self,
        cn: &str,
        dev: &Issued,
        ca: &Issued,
    ) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), ConnectionError> {
        connect_v5(v5_options(
            cn,
            self.mqtt,
            device_tls(&self.env.server_ca, dev, &[ca]),
        ))
        .await
    }

    /// Connects until admitted (the trust change has not arrived yet), for up to `within`.
    async fn connect_within(
        &self,
        cn: &str,
        dev: &Issued,
        ca: &Issued,
        within: Duration,
    ) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
        let deadline = Instant::now() + within;
        loop {
            match self.connect(cn, dev, ca).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{cn} not admitted within {within:?}: {e:?}"),
            }
        }
    }
}

/// Connects and expects the CONNACK refusal `code`.
async fn refused(node: &Node, cn: &str, dev: &Issued, ca: &Issued, code: V5Code) {
    let err = node
        .connect(cn, dev, ca)
        .await
        .err()
        .unwrap_or_else(|| panic!("{cn} admitted, expected {code:?}"));
    assert!(
        matches!(err, ConnectionError::ConnectionRefused(c) if c == code),
        "{cn}: {err:?}"
    );
}

/// Resolves when the server ends the session (DISCONNECT or a closed connection).
fn until_closed(mut el: rumqttc::v5::EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

async fn management(node: &Node, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    node.env
        .api(method, path, "management/admin", ADMIN_PW, body)
        .await
}

/// Starts PostgreSQL, mosquitto and two nodes; creates tenant `acme` on node 1.
async fn cluster() -> (Postgres, Mosquitto, Node, Node) {
    install_provider();
    let pg = Postgres::start();
    let url = pg.create_database("frontend");
    let mosq = start_mosquitto().await;
    let backend = format!("mqtt://127.0.0.1:{}", mosq.port);
    let n1 = Node::start(&url, &backend);
    let n2 = Node::start(&url, &backend);
    assert_eq!(n1.env.server_ca, n2.env.server_ca, "one server certificate");
    n1.env.tenant("acme").await;
    (pg, mosq, n1, n2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_trust_sessions_and_messages() {
    let (_pg, _mosq, mut n1, n2) = cluster().await;

    // An upload on node 1 admits a device on node 2 within a second.
    let ca = ca("Acme Root");
    let fp = n1.env.upload("acme", &ca, true).await;
    let uploaded = Instant::now();
    let dev = device("meter-1", &ca);
    let (_c, el) = n2
        .connect_within("meter-1", &dev, &ca, Duration::from_secs(1))
        .await;
    eprintln!(
        "upload on node 1 -> admitted on node 2: {:?}",
        uploaded.elapsed()
    );
    drop(el);

    // Disabling the CA on node 2 closes a session on node 1 within a second.
    let (_c, el) = n1.connect("meter-1", &dev, &ca).await.unwrap();
    let closed = until_closed(el);
    let disabled = Instant::now();
    n2.env.set_status("acme", &fp, "DISABLED").await;
    tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .expect("node 1 closed the session within 1 s")
        .unwrap();
    eprintln!(
        "disable on node 2 -> closed on node 1: {:?}",
        disabled.elapsed()
    );
    assert!(n1.connect("meter-1", &dev, &ca).await.is_err());
    n2.env.set_status("acme", &fp, "ENABLED").await;

    // A message from a device on node 1 reaches a subscriber on node 2.
    let (sub_dev, pub_dev) = (device("sub", &ca), device("pub", &ca));
    let (sub, mut sub_el) = n2
        .connect_within("sub", &sub_dev, &ca, Duration::from_secs(1))
        .await;
    sub.subscribe("line/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_el.poll().await.unwrap() {
            break;
        }
    }
    let (publisher, pub_el) = n1
        .connect_within("pub", &pub_dev, &ca, Duration::from_secs(1))
        .await;
    let _driver = tokio::spawn(async move {
        let mut el = pub_el;
        while el.poll().await.is_ok() {}
    });
    publisher
        .publish("line/4/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_el.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("the message crossed the nodes");
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"line/4/temp"[..], &b"21.5"[..])
    );

    // ClientId takeover across nodes is the external broker's: the same device on
    // node 2 (backend ClientId acme.dup) ends its session on node 1.
    let dup = device("dup", &ca);
    let (_c1, el1) = n1.connect("dup", &dup, &ca).await.unwrap();
    let first = until_closed(el1);
    let (_c2, el2) = n2.connect("dup", &dup, &ca).await.unwrap();
    let second = until_closed(el2);
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the older session was taken over")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the newer session lives on");

    // The same new device connecting to both nodes at once is registered once.
    let racer = device("racer", &ca);
    let (a, b) = tokio::join!(
        n1.connect("racer", &racer, &ca),
        n2.connect("racer", &racer, &ca)
    );
    assert!(
        a.is_ok() || b.is_ok(),
        "{:?} {:?}",
        a.as_ref().err(),
        b.as_ref().err()
    );
    let registered = |v: &Value| {
        v["auditRecords"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "DEVICE_REGISTERED" && r["target"] == "racer")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (s, audit) = n2
            .env
            .as_tenant("acme", Method::GET, "/audit?pageSize=2000", None)
            .await;
        assert_eq!(s, 200, "{audit}");
        if registered(&audit) >= 1 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, audit) = n1
        .env
        .as_tenant("acme", Method::GET, "/audit?pageSize=2000", None)
        .await;
    assert_eq!(registered(&audit), 1, "{audit}");
    let (s, d) = n1
        .env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/devices/racer",
            None,
        )
        .await;
    assert_eq!((s, d["status"].as_str()), (200, Some("REGISTERED")), "{d}");

    // Killing node 1 leaves node 2 serving: devices and the admin API.
    n1.process.child.kill().unwrap();
    n1.process.child.wait().unwrap();
    let late = device("late", &ca);
    n2.connect("late", &late, &ca)
        .await
        .expect("node 2 admits devices");
    let (s, b) = n2
        .env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/devices?pageSize=100",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

/// The database goes away: both nodes answer the admin API with 503 and keep admitting
/// the devices they know with their last trust snapshot; it comes back: nothing
/// acknowledged is lost and both nodes recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_and_coming_back() {
    let (mut pg, _mosq, n1, n2) = cluster().await;
    let ca = ca("Acme Root");
    n1.env.upload("acme", &ca, true).await;
    let known = device("known", &ca);
    for n in [&n1, &n2] {
        n.connect_within("known", &known, &ca, Duration::from_secs(1))
            .await;
    }
    // Acknowledged changes, then the database stops at once.
    for i in 0..20 {
        let (s, b) = n1
            .env
            .as_tenant(
                "acme",
                Method::POST,
                "/tenant/tenants/acme/devices",
                Some(json!({"commonName": format!("pre-{i}")})),
            )
            .await;
        assert!((200..300).contains(&s), "{s} {b}");
    }
    pg.stop();

    for n in [&n1, &n2] {
        let resp = n
            .env
            .http
            .get(format!("{}/tenant/tenants/acme", n.env.base))
            .basic_auth("management/admin", Some(ADMIN_PW))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable", "{body}");
        assert!(!body.to_string().contains(postgres::PG_PASSWORD));
        // A device the node knows is admitted; a new one is refused cleanly.
        n.connect("known", &known, &ca)
            .await
            .expect("known device admitted while the database is away");
        // An unknown device is refused while the database is away.
        let fresh = device("fresh", &ca);
        refused(n, "fresh", &fresh, &ca, V5Code::ServerUnavailable).await;
    }

    pg.start_server();
    let back = Instant::now();
    for n in [&n1, &n2] {
        loop {
            let (s, b) = management(n, Method::GET, "/tenant/tenants/acme", None).await;
            if s == 200 {
                break;
            }
            assert_eq!(s, 503, "{b}");
            assert!(back.elapsed() < Duration::from_secs(15), "no recovery");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "admin API answering again {:?} after the restart",
        back.elapsed()
    );
    let (s, b) = n2
        .env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/devices?pageSize=100",
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<&str> = b["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["commonName"].as_str())
        .collect();
    for i in 0..20 {
        assert!(
            names.contains(&format!("pre-{i}").as_str()),
            "pre-{i} lost: {names:?}"
        );
    }
    // Changes flow between the nodes again: a block on node 1 refuses on node 2.
    let blocked = Instant::now();
    let (s, b) = n1
        .env
        .as_tenant(
            "acme",
            Method::DELETE,
            "/tenant/tenants/acme/devices/known",
            None,
        )
        .await;
    assert!((200..300).contains(&s), "{s} {b}");
    loop {
        if n2.connect("known", &known, &ca).await.is_err() {
            break;
        }
        assert!(
            blocked.elapsed() < Duration::from_secs(1),
            "still admitted on node 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// maxDevices counts the tenant's sessions on both nodes (exact once the nodes have
/// exchanged their counts, at most about a second after a change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_devices_counts_the_sessions_of_both_nodes() {
    let (_pg, _mosq, n1, n2) = cluster().await;
    let ca = ca("Acme Root");
    n1.env.upload("acme", &ca, true).await;
    let (s, b) = management(
        &n1,
        Method::PUT,
        "/tenant/tenants/acme",
        Some(json!({"settings": {"maxDevices": 2}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (d1, d2, d3) = (device("d1", &ca), device("d2", &ca), device("d3", &ca));
    let (_c1, el1) = n1
        .connect_within("d1", &d1, &ca, Duration::from_secs(1))
        .await;
    let s1 = until_closed(el1);
    let (_c2, el2) = n2
        .connect_within("d2", &d2, &ca, Duration::from_secs(1))
        .await;
    let _s2 = until_closed(el2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for n in [&n1, &n2] {
        refused(n, "d3", &d3, &ca, V5Code::QuotaExceeded).await;
    }
    // d1 leaves node 1: node 2 admits d3 once it has heard.
    s1.abort();
    drop(_c1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    n2.connect("d3", &d3, &ca)
        .await
        .expect("a slot freed on node 1 is usable on node 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_rules_changed_on_one_node_apply_on_the_other() {
    let (_pg, _mosq, n1, n2) = cluster().await;
    let ca = ca("Acme Root");
    n1.env.upload("acme", &ca, true).await;
    let dev = device("meter-1", &ca);

    // No rules yet: '#' is granted on node 2, as before.
    let (c, mut el) = n2
        .connect_within("meter-1", &dev, &ca, Duration::from_secs(1))
        .await;
    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let codes = loop {
        if let Event::Incoming(Packet::SubAck(a)) = el.poll().await.unwrap() {
            break a.return_codes;
        }
    };
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    // Rules set on node 1 end the '#' session on node 2 within a second (0x87).
    let closed = watch_v5(el);
    let (s, b) = n1
        .env
        .as_tenant(
            "acme",
            Method::PUT,
            "/tenant/tenants/acme/acl/rule-sets/default",
            Some(json!({"rules": [{"access": "allow", "action": "both", "topic": "devices/${cn}/#"}], "defaultAccess": "deny"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let reason = tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .expect("node 2 closed the session within 1 s")
        .unwrap();
    assert_eq!(reason, Some(DisconnectReasonCode::NotAuthorized));

    // Node 2 now refuses '#' and grants the device's own filter in the same SUBSCRIBE,
    // merging its refusal with the external broker's SUBACK.
    let (c, mut el) = n2.connect("meter-1", &dev, &ca).await.unwrap();
    c.subscribe_many([
        Filter::new("#", QoS::AtLeastOnce),
        Filter::new("devices/meter-1/#", QoS::AtLeastOnce),
    ])
    .await
    .unwrap();
    let codes = loop {
        if let Event::Incoming(Packet::SubAck(a)) = el.poll().await.unwrap() {
            break a.return_codes;
        }
    };
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::NotAuthorized,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
}
