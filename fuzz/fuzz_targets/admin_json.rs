//! The JSON bodies of the admin API's upload endpoints, through the real router over a
//! real SQLite file: trusted-certificate upload, bulk upload and update, tenant create
//! and update, tenant settings, the manual revocation list (CRL settings) and the CRL
//! upload. The first input byte picks the endpoint, the rest is the body.
//!
//! Invariants: nothing a client sends is answered with a 5xx (or a panic, which the
//! router would turn into a 500); every 4xx body is the JSON error shape; a 2xx on a
//! create is the created resource. State stays bounded: what a create made is deleted
//! again, and the revocation list's tenant is recreated after each change.
#![no_main]

use std::sync::OnceLock;

use admin_api::{Admin, AdminConfig, PasswordHashing};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt as _;

const MGMT_PASS: &str = "mgmt-pass-1";
const TENANT: &str = "acme";
/// The tenant whose manual revocation list the CRL-settings endpoint changes.
const REVOKER: &str = "revoker";
const TENANT_PASS: &str = "tenant-pass-1";

struct Env {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    mgmt: String,
    tenant: String,
    revoker: String,
    /// Fingerprint of a CA trusted by `TENANT`, the target of updates.
    fingerprint: String,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn basic(user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {b64}")
}

/// A data directory for this process; directories of processes that are gone are
/// removed (libFuzzer exits without running destructors).
fn data_dir() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("admin-json-fuzz-") {
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    base.join(format!("admin-json-fuzz-{}", std::process::id()))
}

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    auth: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, auth)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("response body");
    (status, bytes.to_vec())
}

async fn create_tenant(router: &axum::Router, mgmt: &str, id: &str) {
    let body = serde_json::json!({
        "id": id, "company": "Fuzz Corp", "adminName": "admin", "adminPass": TENANT_PASS,
    });
    let (s, b) = call(
        router,
        Method::POST,
        "/tenant/tenants",
        mgmt,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
}

fn init() -> Env {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = data_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = AdminConfig::new(&dir);
    config.admin_password = Some(MGMT_PASS.into());
    // Cheap hashes: every request authenticates.
    config.password_hashing = PasswordHashing {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let admin = rt.block_on(Admin::open(config)).expect("admin opens");
    let router = admin.router();
    let mgmt = basic("management/admin", MGMT_PASS);
    let tenant = basic(&format!("{TENANT}/admin"), TENANT_PASS);
    let revoker = basic(&format!("{REVOKER}/admin"), TENANT_PASS);
    let fingerprint = rt.block_on(async {
        create_tenant(&router, &mgmt, TENANT).await;
        create_tenant(&router, &mgmt, REVOKER).await;
        let ca = certs::issue::ca(
            &certs::issue::Subject::cn("Fuzz Anchor CA"),
            certs::issue::Validity::days(3650),
            certs::issue::KeyType::P256,
            &certs::issue::CaOptions::default(),
            None,
        )
        .expect("ca");
        let body = serde_json::json!({ "name": "anchor", "certInPemFormat": ca.cert_pem() });
        let (s, b) = call(
            &router,
            Method::POST,
            &format!("/tenant/tenants/{TENANT}/trusted-certificates"),
            &tenant,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).expect("JSON");
        v["fingerprint"].as_str().expect("fingerprint").to_string()
    });
    Env {
        rt,
        router,
        mgmt,
        tenant,
        revoker,
        fingerprint,
    }
}

/// The error body every 4xx carries.
fn assert_error_body(status: StatusCode, body: &[u8]) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{status}: error body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(
        v["error"].is_string() && v["message"].is_string(),
        "{status}: error body without error/message: {v}"
    );
}

fn fingerprint_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("created certificate is JSON");
    v["fingerprint"]
        .as_str()
        .expect("created certificate has a fingerprint")
        .to_string()
}

async fn one(env: &Env, op: u8, body: &[u8]) {
    let r = &env.router;
    let json = "application/json";
    let certs_path = format!("/tenant/tenants/{TENANT}/trusted-certificates");
    let (method, path, auth, ctype) = match op % 8 {
        0 => (Method::POST, certs_path.clone(), &env.tenant, json),
        1 => (
            Method::POST,
            format!("{certs_path}/bulk"),
            &env.tenant,
            json,
        ),
        2 => (
            Method::PUT,
            format!("{certs_path}/{}", env.fingerprint),
            &env.tenant,
            json,
        ),
        3 => (Method::POST, "/tenant/tenants".into(), &env.mgmt, json),
        4 => (
            Method::PUT,
            format!("/tenant/tenants/{TENANT}"),
            &env.mgmt,
            json,
        ),
        5 => (
            Method::PUT,
            format!("/tenant/tenants/{TENANT}/settings"),
            &env.tenant,
            json,
        ),
        6 => (
            Method::PUT,
            "/tenant/trusted-certificates/settings/crl".into(),
            &env.revoker,
            json,
        ),
        _ => (
            Method::POST,
            format!("/tenant/tenants/{TENANT}/crls"),
            &env.tenant,
            "application/pkix-crl",
        ),
    };
    let (status, resp) = call(r, method, &path, auth, ctype, body.to_vec()).await;
    assert!(
        !status.is_server_error(),
        "{status} for op {op} on {path}: {}",
        String::from_utf8_lossy(&resp)
    );
    if status.is_client_error() {
        assert_error_body(status, &resp);
        return;
    }
    assert!(status.is_success(), "{status} for op {op} on {path}");
    // Undo what a create made, so the state stays small and inputs stay repeatable.
    match op % 8 {
        0 => {
            let fp = fingerprint_of(&resp);
            let (s, b) = call(
                r,
                Method::DELETE,
                &format!("{certs_path}/{fp}"),
                &env.tenant,
                json,
                vec![],
            )
            .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
        }
        1 => {
            let v: Value = serde_json::from_slice(&resp).expect("bulk result is JSON");
            for c in v["certificates"].as_array().expect("certificates") {
                let fp = c["fingerprint"].as_str().expect("fingerprint");
                let (s, b) = call(
                    r,
                    Method::DELETE,
                    &format!("{certs_path}/{fp}"),
                    &env.tenant,
                    json,
                    vec![],
                )
                .await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
            }
        }
        3 => {
            let v: Value = serde_json::from_slice(&resp).expect("tenant is JSON");
            let id = v["id"].as_str().expect("tenant id");
            let (s, b) = call(
                r,
                Method::DELETE,
                &format!("/tenant/tenants/{id}"),
                &env.mgmt,
                json,
                vec![],
            )
            .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
        }
        6 => {
            let (s, b) = call(
                r,
                Method::DELETE,
                &format!("/tenant/tenants/{REVOKER}"),
                &env.mgmt,
                json,
                vec![],
            )
            .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
            create_tenant(r, &env.mgmt, REVOKER).await;
        }
        // 2, 4, 5 change fields in place; 7 replaces the anchor's CRL: bounded.
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, body)) = data.split_first() else {
        return;
    };
    let env = ENV.get_or_init(init);
    env.rt.block_on(one(env, op, body));
});
