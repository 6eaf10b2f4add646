//! What a refused device and the operator see: the TLS alert the device's TLS stack
//! receives (the most specific one for each reason), and one log line per refusal
//! reason and source address, with the reason, the tenant where known, the
//! certificate's subject and fingerprint. Admission refusals and missing client
//! certificates are logged too.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Everything this test binary's broker logged.
fn logs() -> &'static Mutex<Vec<u8>> {
    captured_logs("warn,rumqttd=off")
}

/// The "handshake refused" lines logged so far with `reason=REASON` from `source`.
fn refusal_lines(reason: &str, source: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("handshake refused"))
        .filter(|l| l.contains(&format!(" reason={reason} ")))
        .filter(|l| l.contains(&format!("peer={source} ")))
        .map(str::to_string)
        .collect()
}

/// The lines of [`refusal_lines`] once there is one (the server logs right after it sent
/// the alert), and after a moment for any that should not come.
async fn logged(reason: &str, source: &str) -> Vec<String> {
    for _ in 0..100 {
        if !refusal_lines(reason, source).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    refusal_lines(reason, source)
}

/// Connects from `from` with `cfg` and writes a CONNECT; the alert the server sent, if
/// the connection ended with one.
async fn alert_from(
    env: &Env,
    from: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Option<AlertDescription> {
    let alert_of =
        |e: &std::io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Some(*a),
            _ => None,
        };
    let tcp = tcp_from(from, env.broker().mqtt_addr).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // TLS 1.3: the client's handshake completes before the server has judged its
    // certificate; the alert comes with the next read.
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return alert_of(&e),
    };
    let connect = [
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x',
    ];
    if let Err(e) = tls.write_all(&connect).await {
        return alert_of(&e);
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Err(e)) => alert_of(&e),
        _ => None,
    }
}

fn no_client_cert(server_ca: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(anonymous_tls(server_ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_gets_its_alert_and_one_log_line() {
    logs();
    let env = start().await;
    env.tenant("acme").await;
    let root = ca("Acme Root");
    env.upload("acme", &root, true).await;
    let fingerprint = |i: &certs::issue::Issued| {
        certs::CertInfo::parse(i.cert_der.as_ref())
            .unwrap()
            .fingerprint_sha1
    };

    // Unknown CA: unknown_ca, and one line for three attempts from one source.
    let stranger = device("stranger", &ca("Nobody's CA"));
    for _ in 0..3 {
        let a = alert_from(
            &env,
            "127.0.0.11",
            device_tls(&env.server_ca, &stranger, &[]),
        )
        .await;
        assert_eq!(a, Some(AlertDescription::UnknownCA));
    }
    let lines = logged("unknown_issuer", "127.0.0.11").await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("subject=CN=stranger"), "{}", lines[0]);
    assert!(lines[0].contains(&fingerprint(&stranger)), "{}", lines[0]);
    assert!(lines[0].contains("tenant=-"), "{}", lines[0]);
    // Another source is logged at once.
    alert_from(
        &env,
        "127.0.0.12",
        device_tls(&env.server_ca, &stranger, &[]),
    )
    .await;
    assert_eq!(logged("unknown_issuer", "127.0.0.12").await.len(), 1);

    // Expired: certificate_expired, with the tenant.
    let expired = expired_device("old", &root);
    let a = alert_from(
        &env,
        "127.0.0.13",
        device_tls(&env.server_ca, &expired, &[]),
    )
    .await;
    assert_eq!(a, Some(AlertDescription::CertificateExpired));
    let lines = logged("expired", "127.0.0.13").await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("tenant=acme"), "{}", lines[0]);

    // Revoked: certificate_revoked.
    let revoked = device("revoked-1", &root);
    env.revoke_serial("acme", &revoked).await;
    let a = alert_from(
        &env,
        "127.0.0.14",
        device_tls(&env.server_ca, &revoked, &[]),
    )
    .await;
    assert_eq!(a, Some(AlertDescription::CertificateRevoked));
    let lines = logged("revoked", "127.0.0.14").await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("tenant=acme"), "{}", lines[0]);
    assert!(lines[0].contains("subject=CN=revoked-1"), "{}", lines[0]);

    // Root -> issuing CA -> device is 3 long, the tenant allows 2: access_denied (a
    // policy refusal of a valid chain), not unknown_ca; the line says what to raise.
    let issuing = intermediate("Acme Issuing", &root);
    let deep = device("deep", &issuing);
    let a = alert_from(
        &env,
        "127.0.0.15",
        device_tls(&env.server_ca, &deep, &[&issuing]),
    )
    .await;
    assert_eq!(a, Some(AlertDescription::AccessDenied));
    let lines = logged("chain_too_long", "127.0.0.15").await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("tenant=acme"), "{}", lines[0]);
    assert!(lines[0].contains("maxChainLength"), "{}", lines[0]);

    // No client certificate: certificate_required, and a line too.
    let a = alert_from(&env, "127.0.0.16", no_client_cert(&env.server_ca)).await;
    assert_eq!(a, Some(AlertDescription::CertificateRequired));
    assert_eq!(logged("no_client_certificate", "127.0.0.16").await.len(), 1);

    // A good device still connects.
    let good = device("good", &root);
    let connack = raw_connect_v4_from(&env, "127.0.0.17", "good", &good, &[]).await;
    assert_eq!(connack, Ok(vec![0x20, 0x02, 0x00, 0x00]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refusals_are_logged() {
    logs();
    let env = start_with(|c| {
        c.limits.handshake_rate_per_source = 1;
        c.limits.handshake_burst_per_source = 1;
    })
    .await;
    for _ in 0..4 {
        let _ = alert_from(&env, "127.0.0.21", no_client_cert(&env.server_ca)).await;
    }
    let lines = logged("handshake_rate_per_source", "127.0.0.21").await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("admission control"), "{}", lines[0]);
}

/// A tenant's recent refusals (the console's page, `GET .../refusals`) and the refusal
/// log's `tenant=` hold only chains that a key of that tenant signed. A stranger who
/// names the tenant's CA (a look-alike with its subject, or the public CA certificate
/// itself sent along) is an unknown issuer, not that tenant's refused device: else
/// anyone could write text of their choosing into the tenant's view, and push its
/// devices' real refusals out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_chains_the_tenant_signed_reach_its_refusals() {
    logs();
    let env = start().await;
    env.tenant("acme").await;
    let root = ca("Acme Root");
    env.upload("acme", &root, true).await;

    // A look-alike of acme's root (same name, another key), its device named as markup,
    // sent with acme's real root certificate too.
    let look_alike = ca("Acme Root");
    let forged = device("<b>forged</b>", &look_alike);
    let a = alert_from(&env, "127.0.0.31", device_tls(&env.server_ca, &forged, &[])).await;
    assert_eq!(a, Some(AlertDescription::UnknownCA));
    let lines = logged("unknown_issuer", "127.0.0.31").await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("tenant=-"), "{}", lines[0]);
    // The same with acme's real root certificate sent along: refused (its signature
    // does not verify under that root), still nobody's.
    let a = alert_from(
        &env,
        "127.0.0.33",
        device_tls(&env.server_ca, &forged, &[&root]),
    )
    .await;
    assert!(a.is_some(), "refused with an alert");
    // And with a real acme device certificate (signed by acme's root) sent along.
    let victim = device("victim", &root);
    let a = alert_from(
        &env,
        "127.0.0.34",
        device_tls(&env.server_ca, &forged, &[&victim]),
    )
    .await;
    assert!(a.is_some(), "refused with an alert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env.refusals("acme").await.is_empty(),
        "{:#?}",
        env.refusals("acme").await
    );

    // acme's own expired device: in acme's refusals, and only it.
    let expired = expired_device("old", &root);
    let a = alert_from(
        &env,
        "127.0.0.32",
        device_tls(&env.server_ca, &expired, &[]),
    )
    .await;
    assert_eq!(a, Some(AlertDescription::CertificateExpired));
    let list = env.refusals("acme").await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["source"], "127.0.0.32", "{list:#?}");
    assert!(
        list[0]["subject"].as_str().unwrap().contains("CN=old"),
        "{list:#?}"
    );
}

/// A device that passes TLS but is refused at CONNECT (its ClientId is not its CN, it
/// is not registered and its CA does not auto-register) is in its own tenant's recent
/// refusals with the CONNACK's reason, subject, fingerprint and source, so that the
/// tenant admin sees why it gets no session; another tenant sees nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_refusals_reach_the_devices_tenant_only() {
    logs();
    let env = start().await;
    env.tenant("acme").await;
    env.tenant("globex").await;
    let root = ca("Acme Root");
    env.upload("acme", &root, false).await;
    let dev = device("sensor-1", &root);
    let fingerprint = certs::CertInfo::parse(dev.cert_der.as_ref())
        .unwrap()
        .fingerprint_sha1;

    // ClientId "impostor" for the certificate of sensor-1: CONNACK 5 (not authorized).
    let ack = raw_connect_v4_from(&env, "127.0.0.41", "impostor", &dev, &[])
        .await
        .unwrap();
    assert_eq!(ack, vec![0x20, 0x02, 0x00, 0x05]);
    // Its own name, but not registered and no auto-registration: CONNACK 5 as well.
    let ack = raw_connect_v4_from(&env, "127.0.0.42", "sensor-1", &dev, &[])
        .await
        .unwrap();
    assert_eq!(ack, vec![0x20, 0x02, 0x00, 0x05]);

    let list = env.refusals("acme").await;
    assert_eq!(list.len(), 2, "{list:#?}");
    let by_reason = |reason: &str| {
        list.iter()
            .find(|r| r["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} in {list:#?}"))
            .clone()
    };
    let mismatch = by_reason("client_id_mismatch");
    assert_eq!(mismatch["source"], "127.0.0.41");
    assert_eq!(
        mismatch["detail"],
        "the ClientId is not the certificate's Common Name"
    );
    assert_eq!(mismatch["fingerprint"], fingerprint.as_str());
    assert!(
        mismatch["subject"]
            .as_str()
            .unwrap()
            .contains("CN=sensor-1"),
        "{mismatch:#?}"
    );
    let unregistered = by_reason("device_not_registered");
    assert_eq!(unregistered["source"], "127.0.0.42");
    assert_eq!(
        unregistered["detail"],
        "the device is not registered and its CA does not auto-register devices"
    );
    assert!(env.refusals("globex").await.is_empty());
    let metrics = env.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "mqtt_connections_refused_total{reason=\"client_id_mismatch\"}"
        ),
        1.0
    );
}
