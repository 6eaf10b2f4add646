//! The harness: the real router on a real socket over a real SQLite file, reqwest as the
//! client, and certificates generated with `certs::issue` (and the `openssl` CLI for what
//! rcgen cannot make).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use admin_api::{Admin, AdminConfig, PasswordHashing};
use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub(crate) const ADMIN_USER: &str = "management/admin";
pub(crate) const ADMIN_PASS: &str = "admin-pass-1";
pub(crate) const TENANT_PASS: &str = "tenant-pass-1";

pub(crate) type Creds<'a> = (&'a str, &'a str);
pub(crate) const MGMT: Creds<'static> = (ADMIN_USER, ADMIN_PASS);

/// Test configuration: cheap argon2, short lockout, fast last-seen flushes.
pub(crate) fn config(dir: &Path) -> AdminConfig {
    let mut c = AdminConfig::new(dir);
    c.admin_password = Some(ADMIN_PASS.to_string());
    c.password_hashing = PasswordHashing {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    c.login_max_failures = 3;
    c.login_lockout = Duration::from_secs(2);
    c.device_seen_flush_interval = Duration::from_millis(100);
    c.crl_fetch_timeout = Duration::from_secs(2);
    // The tests' CRL servers are on loopback, which the egress policy refuses by default.
    c.crl_egress = certs::egress::EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]);
    c
}

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) admin: Admin,
    pub(crate) client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn start(dir: &Path) -> Server {
    start_with(config(dir)).await
}

pub(crate) async fn start_with(config: AdminConfig) -> Server {
    // reqwest (the test client) needs a process-wide rustls provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let admin = Admin::open(config).await.expect("admin opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = admin.router();
    let task = tokio::spawn(async move {
        // With the peer address, as the broker serves it (per-source login limits).
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Server {
        base,
        admin,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl Server {
    /// Stops serving and drops every handle of this process's state.
    pub(crate) async fn stop(mut self) {
        drop(std::mem::take(&mut self.client));
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<Creds<'_>>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some((u, p)) = auth {
            rb = rb.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}"))
        };
        (status, value)
    }

    pub(crate) async fn get(&self, path: &str, auth: Creds<'_>) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(auth), None).await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        auth: Creds<'_>,
        body: &Value,
    ) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(auth), Some(body)).await
    }

    pub(crate) async fn put(
        &self,
        path: &str,
        auth: Creds<'_>,
        body: &Value,
    ) -> (StatusCode, Value) {
        self.send(Method::PUT, path, Some(auth), Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str, auth: Creds<'_>) -> (StatusCode, Value) {
        self.send(Method::DELETE, path, Some(auth), None).await
    }

    /// Creates tenant `id` with admin `admin` / TENANT_PASS; returns the login name.
    pub(crate) async fn tenant(&self, id: &str) -> String {
        let (s, b) = self
            .post(
                "/tenant/tenants",
                MGMT,
                &json!({"id": id, "company": format!("{id} Inc"), "adminName": "admin", "adminPass": TENANT_PASS}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        format!("{id}/admin")
    }

    /// Uploads `ca` to `tenant`; returns the stored object.
    pub(crate) async fn trust(&self, tenant: &str, login: &str, ca: &Issued, auto: bool) -> Value {
        let (s, b) = self
            .post(
                &format!("/tenant/tenants/{tenant}/trusted-certificates"),
                (login, TENANT_PASS),
                &upload_body(ca, "ca", auto),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }
}

/// Asserts a JSON error: status, `error` kind present, exact message.
#[track_caller]
pub(crate) fn assert_error(got: &(StatusCode, Value), status: StatusCode, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["message"], message, "{}", got.1);
    assert!(got.1["error"].is_string(), "{}", got.1);
    assert!(got.1.get("info").is_some(), "{}", got.1);
}

pub(crate) fn upload_body(ca: &Issued, name: &str, auto: bool) -> Value {
    json!({
        "status": "ENABLED",
        "name": name,
        "autoRegistrationEnabled": if auto { "true" } else { "false" },
        "certInPemFormat": ca.cert_pem(),
    })
}

pub(crate) fn ca(cn: &str) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca")
}

pub(crate) fn intermediate(cn: &str, parent: &Issued) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        Some(&parent.issuer().expect("issuer")),
    )
    .expect("intermediate")
}

pub(crate) fn device(cn: &str, ca: &Issued) -> Issued {
    device_with(cn, ca, Validity::days(30))
}

pub(crate) fn device_with(cn: &str, ca: &Issued, validity: Validity) -> Issued {
    issue::device(
        cn,
        validity,
        KeyType::P256,
        &ca.issuer().expect("issuer"),
        &[],
    )
    .expect("device")
}

pub(crate) fn expired() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::days(1),
    }
}

pub(crate) fn pem_chain(parts: &[&Issued]) -> String {
    parts.iter().map(|i| i.cert_pem()).collect()
}

pub(crate) fn serial_of(i: &Issued) -> String {
    certs::CertInfo::parse(i.cert_der.as_ref())
        .expect("parse")
        .serial_hex
}

pub(crate) fn fingerprint_of(i: &Issued) -> String {
    certs::info::fingerprint_sha1(i.cert_der.as_ref())
}

/// Runs `openssl` in `dir`; returns stdout.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a shell pipeline in `dir`; returns stdout.
pub(crate) fn shell(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Verifies a chain against the admin's live trust store.
pub(crate) fn verify(
    admin: &Admin,
    chain: &[&Issued],
) -> Result<certs::DeviceIdentity, certs::VerifyError> {
    let ders: Vec<certs::CertificateDer<'static>> =
        chain.iter().map(|i| i.cert_der.clone()).collect();
    let store = admin.trust_store().borrow().clone();
    store.verify_device(&ders, certs::UnixTime::now())
}
