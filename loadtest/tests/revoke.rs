//! The admin-API contract and the revoke scenario, against a small stand-in for the product
//! started here on loopback: an HTTPS admin API (create tenant, upload CA, disable CA) and an
//! mTLS MQTT 3.1.1 listener that trusts the uploaded CA, closes every session once the CA is
//! disabled and refuses new handshakes from then on.
//!
//! The stand-in can be told to "forget" to close sessions, so the measurement is shown to
//! fail when the broker misbehaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsStream};

const MGMT_PASSWORD: &str = "mgmt-secret";

struct ServerPki {
    dir: tempfile::TempDir,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn server_pki() -> ServerPki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "stand-in server CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.path().join("server-ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    ServerPki {
        dir,
        chain: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

/// What the stand-in saw and holds.
#[derive(Default)]
struct Seen {
    tenants: HashMap<String, String>,
    /// (tenant, fingerprint, MQTT server config trusting the CA)
    ca: Option<(String, String, Arc<ServerConfig>)>,
    uploaded_pem_fingerprint: Option<String>,
    requests: Vec<(String, String, u16)>,
}

struct StandIn {
    seen: Mutex<Seen>,
    disabled: watch::Sender<bool>,
    close_on_disable: bool,
    refuse_after_disable: bool,
    pki: ServerPki,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl StandIn {
    fn server_config(
        &self,
        verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> ServerConfig {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("versions");
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(
                self.pki.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pki.key_der.clone())),
            )
            .expect("server config")
    }
}

fn respond(status: u16, body: Value) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        204 => "No Content",
        _ => "Other",
    };
    let body = if status == 204 {
        String::new()
    } else {
        body.to_string()
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (
        status,
        json!({"error": "stand-in", "message": message, "info": null}),
    )
}

fn route(
    state: &StandIn,
    method: &str,
    path: &str,
    auth: Option<(String, String)>,
    body: &[u8],
) -> (u16, Value) {
    let Ok(body): Result<Value, _> = serde_json::from_slice(body) else {
        return error(400, "body is not JSON");
    };
    let Some((user, password)) = auth else {
        return error(401, "authentication required");
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut seen = state.seen.lock().expect("lock");
    match (method, parts.as_slice()) {
        ("POST", ["tenant", "tenants"]) => {
            if user != "management/admin" || password != MGMT_PASSWORD {
                return error(401, "Bad credentials");
            }
            let (Some(id), Some(pass)) = (body["id"].as_str(), body["adminPass"].as_str()) else {
                return error(400, "id and adminPass are required");
            };
            if body["company"].as_str() != Some(id) || body["adminName"].as_str() != Some("admin") {
                return error(400, "company must equal id and adminName must be admin");
            }
            if seen.tenants.contains_key(id) {
                return error(409, "Tenant already exists");
            }
            seen.tenants.insert(id.to_string(), pass.to_string());
            (201, json!({"id": id}))
        }
        ("POST", ["tenant", "tenants", tenant, "trusted-certificates"]) => {
            if user != format!("{tenant}/admin") || seen.tenants.get(*tenant) != Some(&password) {
                return error(401, "Bad credentials");
            }
            if body["status"] != "ENABLED"
                || body["name"].as_str().is_none()
                || body["autoRegistrationEnabled"] != "true"
            {
                return error(400, "status, name and autoRegistrationEnabled are required");
            }
            let Some(pem) = body["certInPemFormat"].as_str() else {
                return error(400, "certInPemFormat is required");
            };
            let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else {
                return error(400, "certInPemFormat is not a PEM certificate");
            };
            let fingerprint: String = Sha1::digest(der.as_ref())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut roots = RootCertStore::empty();
            if roots.add(der).is_err() {
                return error(400, "not a usable CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                state.provider.clone(),
            )
            .build()
            .expect("verifier");
            let config = Arc::new(state.server_config(Some(verifier)));
            seen.ca = Some((tenant.to_string(), fingerprint.clone(), config));
            seen.uploaded_pem_fingerprint = Some(fingerprint.clone());
            (
                201,
                json!({"fingerprint": fingerprint, "status": "ENABLED"}),
            )
        }
        ("PUT", ["tenant", "tenants", tenant, "trusted-certificates", fp]) => {
            if user != format!("{tenant}/admin") || seen.tenants.get(*tenant) != Some(&password) {
                return error(401, "Bad credentials");
            }
            match &seen.ca {
                Some((t, f, _)) if t == tenant && f == fp => {}
                _ => return error(404, "no such trusted certificate"),
            }
            if body["status"] != "DISABLED" {
                return error(400, "only DISABLED is supported here");
            }
            let _ = state.disabled.send(true);
            (200, json!({"fingerprint": fp, "status": "DISABLED"}))
        }
        ("DELETE", ["tenant", "tenants", tenant]) => {
            if user != "management/admin" || password != MGMT_PASSWORD {
                return error(401, "Bad credentials");
            }
            if seen.tenants.remove(*tenant).is_none() {
                return error(404, "no such tenant");
            }
            (204, Value::Null)
        }
        _ => error(404, "no such route"),
    }
}

async fn serve_admin(state: Arc<StandIn>, listener: TcpListener) {
    let acceptor = TlsAcceptor::from(Arc::new(state.server_config(None)));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut reader = BufReader::new(tls);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut it = request_line.split_whitespace();
                let (method, path) = (
                    it.next().unwrap_or("").to_string(),
                    it.next().unwrap_or("").to_string(),
                );
                let mut length = 0usize;
                let mut auth = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                        if k == "content-length" {
                            length = v.parse().unwrap_or(0);
                        } else if k == "authorization" {
                            auth = v
                                .strip_prefix("Basic ")
                                .and_then(|b| {
                                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                                })
                                .and_then(|b| String::from_utf8(b).ok())
                                .and_then(|s| {
                                    s.split_once(':')
                                        .map(|(u, p)| (u.to_string(), p.to_string()))
                                });
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let (status, value) = route(&state, &method, &path, auth, &body);
                state
                    .seen
                    .lock()
                    .expect("lock")
                    .requests
                    .push((method, path, status));
                if reader
                    .get_mut()
                    .write_all(&respond(status, value))
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = reader.get_mut().flush().await;
            }
        });
    }
}

async fn serve_mqtt(state: Arc<StandIn>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let config = state
                .seen
                .lock()
                .expect("lock")
                .ca
                .as_ref()
                .map(|c| c.2.clone());
            let Some(config) = config else { return };
            let is_disabled = *state.disabled.borrow();
            if is_disabled && state.refuse_after_disable {
                // A disabled CA: refuse the handshake outright.
                return;
            }
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = TlsAcceptor::from(config).accept(tcp).await else {
                return;
            };
            let mut tls = TlsStream::Server(tls);
            let mut disabled = state.disabled.subscribe();
            let mut buf = BytesMut::new();
            let mut out = BytesMut::new();
            loop {
                loop {
                    match Packet::read(&mut buf, 1 << 20) {
                        Ok(Packet::Connect(_)) => {
                            let _ = ConnAck::new(ConnectReturnCode::Success, false).write(&mut out);
                        }
                        Ok(Packet::Publish(p)) if p.pkid != 0 => {
                            let _ = PubAck::new(p.pkid).write(&mut out);
                        }
                        Ok(Packet::PingReq) => {
                            let _ = rumqttc::mqttbytes::v4::PingResp.write(&mut out);
                        }
                        Ok(Packet::Disconnect) => return,
                        Ok(_) => {}
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(_) => return,
                    }
                }
                if !out.is_empty() {
                    if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    out.clear();
                }
                tokio::select! {
                    r = tls.read_buf(&mut buf) => {
                        if !matches!(r, Ok(n) if n > 0) {
                            return;
                        }
                    }
                    _ = async { let _ = disabled.wait_for(|d| *d).await; }, if state.close_on_disable => {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            }
        });
    }
}

struct Running {
    state: Arc<StandIn>,
    admin: SocketAddr,
    mqtt: SocketAddr,
}

async fn start(close_on_disable: bool, refuse_after_disable: bool) -> Running {
    let (disabled, _) = watch::channel(false);
    let state = Arc::new(StandIn {
        seen: Mutex::new(Seen::default()),
        disabled,
        close_on_disable,
        refuse_after_disable,
        pki: server_pki(),
        provider: loadtest::crypto_provider(),
    });
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (a, m) = (
        admin.local_addr().expect("addr"),
        mqtt.local_addr().expect("addr"),
    );
    tokio::spawn(serve_admin(state.clone(), admin));
    tokio::spawn(serve_mqtt(state.clone(), mqtt));
    Running {
        state,
        admin: a,
        mqtt: m,
    }
}

fn config(r: &Running) -> loadtest::Config {
    loadtest::Config {
        broker: format!("localhost:{}", r.mqtt.port()),
        admin: Some(format!("https://localhost:{}", r.admin.port())),
        admin_password: Some(MGMT_PASSWORD.into()),
        server_ca: Some(r.state.pki.dir.path().join("server-ca.pem")),
        scenario: loadtest::Scenario::Revoke,
        devices: 20,
        messages: 2,
        subscribers: 0,
        publish_interval: Duration::from_millis(10),
        connect_rate: 1000.0,
        duration: Duration::from_secs(20),
        ..loadtest::Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_measures_until_every_session_is_closed() {
    let r = start(true, true).await;
    let report = loadtest::run(config(&r)).await.expect("run");
    let summary = report.summary_table();
    eprintln!("{summary}");

    let seen = r.state.seen.lock().expect("lock");
    let tenant = report.certs.tenant.clone().expect("tenant");
    assert!(tenant.starts_with("loadtest-"), "{tenant}");
    // Created, used, and deleted at the end of the run (no --keep).
    assert!(!seen.tenants.contains_key(&tenant));
    assert!(report.certs.tenant_deleted);
    assert_eq!(
        report.certs.ca_fingerprint, seen.uploaded_pem_fingerprint,
        "{summary}"
    );
    let methods: Vec<(&str, u16)> = seen
        .requests
        .iter()
        .map(|(m, _, s)| (m.as_str(), *s))
        .collect();
    assert_eq!(
        methods,
        [("POST", 201), ("POST", 201), ("PUT", 200), ("DELETE", 204)],
        "{:?}",
        seen.requests
    );
    drop(seen);

    assert_eq!(report.connect.succeeded, 20, "{summary}");
    assert_eq!(report.publish.sent, 40, "{summary}");
    let revoke = report.revoke.as_ref().expect("revoke section");
    assert_eq!(revoke.sessions_at_disable, 20, "{summary}");
    assert_eq!(revoke.still_connected, 0, "{summary}");
    assert_eq!(revoke.reconnect_succeeded, 0, "{summary}");
    assert!(revoke.reconnect_attempts > 0, "{summary}");
    let closed = revoke.all_closed_after_ms.expect("all closed");
    assert!(closed < 1000.0, "the stand-in closes at once: {summary}");
    assert!(!report.timed_out, "{summary}");
    // Neither the expected closures nor the refused reconnects are run errors.
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let json = serde_json::to_value(&report).expect("json");
    assert!(json
        .pointer("/revoke/all_closed_after_ms")
        .is_some_and(Value::is_number));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reports_sessions_a_broker_failed_to_close() {
    let r = start(false, true).await;
    let report = loadtest::run(loadtest::Config {
        devices: 5,
        duration: Duration::from_secs(4),
        ..config(&r)
    })
    .await
    .expect("run");
    let revoke = report.revoke.as_ref().expect("revoke section");
    assert_eq!(revoke.sessions_at_disable, 5);
    assert_eq!(revoke.still_connected, 5, "{}", report.summary_table());
    assert_eq!(revoke.all_closed_after_ms, None);
    assert!(report
        .errors
        .contains_key("revoke: sessions still open at the end of the observation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reports_reconnects_a_broker_accepted() {
    let r = start(true, false).await;
    let report = loadtest::run(loadtest::Config {
        devices: 5,
        duration: Duration::from_secs(3),
        ..config(&r)
    })
    .await
    .expect("run");
    let revoke = report.revoke.as_ref().expect("revoke section");
    assert!(revoke.reconnect_succeeded > 0, "{}", report.summary_table());
    assert_eq!(revoke.all_closed_after_ms, None);
    assert!(report
        .errors
        .contains_key("revoke: a reconnect succeeded after the CA was disabled"));
}

#[tokio::test]
async fn admin_errors_carry_the_api_message() {
    let r = start(true, true).await;
    let err = loadtest::run(loadtest::Config {
        admin_password: Some("wrong".into()),
        ..config(&r)
    })
    .await
    .expect_err("bad credentials");
    match err {
        loadtest::Error::AdminRejected {
            status,
            message,
            method,
            ..
        } => {
            assert_eq!((status, method), (401, "POST"));
            assert_eq!(message, "Bad credentials");
        }
        other => panic!("expected AdminRejected, got {other:?}"),
    }

    // An existing tenant is refused clearly rather than reused.
    r.state
        .seen
        .lock()
        .expect("lock")
        .tenants
        .insert("taken".into(), "x".into());
    let err = loadtest::run(loadtest::Config {
        tenant: Some("taken".into()),
        ..config(&r)
    })
    .await
    .expect_err("tenant exists");
    let text = err.to_string();
    assert!(
        text.contains("409") && text.contains("already exists"),
        "{text}"
    );
}
