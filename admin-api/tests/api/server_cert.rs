//! Server-certificate import: the requirements report's exact sentences, storage and
//! publication to the listener.

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::requirements;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

fn subject(cn: &str) -> Subject {
    Subject {
        cn: cn.into(),
        o: Some("ACME".into()),
        ou: Some("Platform".into()),
        c: Some("DE".into()),
    }
}

fn rsa_root(cn: &str) -> Issued {
    issue::ca(
        &subject(cn),
        Validity::days(365),
        KeyType::Rsa2048,
        &CaOptions::default(),
        None,
    )
    .unwrap()
}

fn server_cert(root: &Issued, validity: Validity, crl_urls: &[String]) -> Issued {
    issue::server(
        &subject("broker.example.com"),
        &["broker.example.com".to_string()],
        validity,
        KeyType::Rsa2048,
        Some(&root.issuer().unwrap()),
        crl_urls,
    )
    .unwrap()
}

struct Upload {
    name: &'static str,
    crt: Vec<u8>,
    key: Vec<u8>,
    chain: Option<Vec<u8>>,
    passphrase: &'static str,
    validation: &'static str,
    crl_check: bool,
}

impl Upload {
    fn new(leaf: &Issued, root: &Issued) -> Upload {
        Upload {
            name: "broker",
            crt: leaf.cert_pem().into_bytes(),
            key: leaf.key_pem().into_bytes(),
            chain: Some(root.cert_pem().into_bytes()),
            passphrase: "",
            validation: "Required",
            crl_check: false,
        }
    }
}

async fn import(s: &Server, who: Creds<'_>, u: Upload) -> (StatusCode, Value) {
    use reqwest::multipart::{Form, Part};
    let mut form = Form::new()
        .text("name", u.name)
        .text("passphrase", u.passphrase)
        .part("key", Part::bytes(u.key).file_name("server.key"))
        .part("crt", Part::bytes(u.crt).file_name("server.crt"))
        .text("validation", u.validation)
        .text("crlCheck", u.crl_check.to_string());
    if let Some(c) = u.chain {
        form = form.part("chain", Part::bytes(c).file_name("chain.pem"));
    }
    let r = s
        .client
        .put(s.url("/system/ssl-certificate"))
        .basic_auth(who.0, Some(who.1))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_certificate_is_imported_stored_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("Server Root");
    let leaf = server_cert(&root, Validity::days(90), &[]);
    let mut rx = s.admin.server_certificate();
    assert!(rx.borrow_and_update().is_none());

    let (st, body) = import(&s, MGMT, Upload::new(&leaf, &root)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "broker");
    assert_eq!(body["chainLength"], 2);
    assert_eq!(
        body["certificate"]["subject"],
        "C=DE, O=ACME, OU=Platform, CN=broker.example.com"
    );
    assert!(
        body["report"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["passed"] == true || r["required"] == false),
        "{body}"
    );
    let text = body.to_string();
    assert!(!text.contains("PRIVATE KEY"));

    assert!(rx.has_changed().unwrap());
    let published = rx.borrow_and_update().clone().expect("published");
    assert_eq!(published.chain.len(), 2);
    assert_eq!(published.chain[0].as_ref(), leaf.cert_der.as_ref());
    assert_eq!(published.chain[1].as_ref(), root.cert_der.as_ref());
    assert!(certs::keys::key_matches_certificate(
        &published.key,
        leaf.cert_der.as_ref()
    ));
    let debug = format!("{published:?}");
    assert!(
        debug.contains("<redacted>") && !debug.contains(&leaf.key_pem()[30..60]),
        "{debug}"
    );

    let (st, got) = s.get("/system/ssl-certificate", MGMT).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["certificate"]["fingerprintSha1"], fingerprint_of(&leaf));
    assert!(got["report"].is_null());
    let audit = s.get("/audit", MGMT).await.1;
    assert_eq!(
        audit["auditRecords"][0]["action"],
        "SERVER_CERTIFICATE_IMPORTED"
    );
    assert_eq!(
        audit["auditRecords"][0]["fingerprint"],
        fingerprint_of(&leaf)
    );
    assert_eq!(audit["auditRecords"][0]["actor"], "management/admin");

    // The broker's entry point runs the same code path.
    let leaf2 = server_cert(&root, Validity::days(30), &[]);
    let req = admin_api::ImportRequest {
        name: "from-broker".into(),
        crt: leaf2.cert_pem().into_bytes(),
        key: leaf2.key_pem().into_bytes(),
        chain: Some(root.cert_pem().into_bytes()),
        passphrase: Some("secret-passphrase".into()),
        validation: true,
        crl_check: false,
    };
    let debug = format!("{req:?}");
    assert!(
        !debug.contains("secret-passphrase") && !debug.contains("PRIVATE"),
        "{debug}"
    );
    let info = s
        .admin
        .import_server_certificate(req)
        .await
        .expect("imported");
    assert_eq!(info.fingerprint_sha1, fingerprint_of(&leaf2));
    assert_eq!(
        rx.borrow().as_ref().unwrap().chain[0].as_ref(),
        leaf2.cert_der.as_ref()
    );
}

#[tokio::test]
async fn requirement_failures_answer_the_exact_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("Sentence Root");
    let leaf = server_cert(&root, Validity::days(90), &[]);

    // Passphrase.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("key.pem"), leaf.key_pem()).unwrap();
    openssl(
        tmp.path(),
        &[
            "pkey",
            "-in",
            "key.pem",
            "-aes256",
            "-passout",
            "pass:right-one",
            "-out",
            "enc.pem",
        ],
    );
    let encrypted = std::fs::read(tmp.path().join("enc.pem")).unwrap();
    let mut u = Upload::new(&leaf, &root);
    u.key = encrypted.clone();
    u.passphrase = "wrong-one";
    let r = import(&s, MGMT, u).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Passphrase does not match to the key",
    );
    assert_eq!(r.1["info"]["row"], requirements::rows::KEY_READABLE);
    assert!(r.1["info"]["report"].is_array());
    let mut u = Upload::new(&leaf, &root);
    u.key = encrypted;
    u.passphrase = "right-one";
    assert_eq!(import(&s, MGMT, u).await.0, StatusCode::OK);

    // Key of another certificate.
    let other = server_cert(&root, Validity::days(90), &[]);
    let mut u = Upload::new(&leaf, &root);
    u.key = other.key_pem().into_bytes();
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        requirements::KEY_MISMATCH,
    );

    // Expired: refused when validated, accepted with validation None.
    let old = server_cert(&root, expired(), &[]);
    assert_error(
        &import(&s, MGMT, Upload::new(&old, &root)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "This SSL certificate has expired and isn't considered valid.",
    );
    let mut u = Upload::new(&old, &root);
    u.validation = "None";
    assert_eq!(import(&s, MGMT, u).await.0, StatusCode::OK);

    // Chain of trust.
    let stranger = rsa_root("Stranger Root");
    let mut u = Upload::new(&leaf, &root);
    u.chain = Some(stranger.cert_pem().into_bytes());
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Cannot validate chain of trust. The provided Certificate and Root CA don't match.",
    );
}

#[tokio::test]
async fn crl_check_fetches_the_distribution_point() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("CRL Root");

    // A CRL distribution point on loopback.
    let crl_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/root.crl", crl_server.local_addr().unwrap());
    let revoked = server_cert(&root, Validity::days(90), std::slice::from_ref(&url));
    let fine = server_cert(&root, Validity::days(90), std::slice::from_ref(&url));
    let crl = issue::crl(
        &root.issuer().unwrap(),
        &[issue::Revocation {
            serial_hex: serial_of(&revoked),
            revoked_at: time::OffsetDateTime::now_utc(),
        }],
        1,
        7,
    )
    .unwrap();
    let app = axum::Router::new().route(
        "/root.crl",
        axum::routing::get(move || {
            let crl = crl.clone();
            async move { crl }
        }),
    );
    tokio::spawn(async move { axum::serve(crl_server, app).await.unwrap() });

    let mut u = Upload::new(&revoked, &root);
    u.crl_check = true;
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "This certificate has been revoked by the CRL and can't be trusted for a secure connection",
    );
    let mut u = Upload::new(&fine, &root);
    u.crl_check = true;
    let (st, body) = import(&s, MGMT, u).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // A distribution point nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/gone.crl", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = server_cert(&root, Validity::days(90), &[dead]);
    let mut u = Upload::new(&unreachable, &root);
    u.crl_check = true;
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The CRL (Certificate Revocation List) location is not reachable. Verify the URL can be accessed from this appliance",
    );
    // Without crlCheck the same certificate is imported.
    let u = Upload::new(&unreachable, &root);
    assert_eq!(import(&s, MGMT, u).await.0, StatusCode::OK);
}

#[tokio::test]
async fn only_the_management_admin_imports_and_the_form_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let root = rsa_root("Form Root");
    let leaf = server_cert(&root, Validity::days(90), &[]);
    assert_error(
        &import(&s, (&login, TENANT_PASS), Upload::new(&leaf, &root)).await,
        StatusCode::FORBIDDEN,
        "Only the management admin can import the server certificate",
    );
    assert_error(
        &s.get("/system/ssl-certificate", (&login, TENANT_PASS))
            .await,
        StatusCode::FORBIDDEN,
        "Only the management tenant can read the server certificate",
    );
    assert_error(
        &s.get("/system/ssl-certificate", MGMT).await,
        StatusCode::NOT_FOUND,
        "No server certificate has been imported",
    );
    let json_body = s
        .put(
            "/system/ssl-certificate",
            MGMT,
            &serde_json::json!({"crt": "x"}),
        )
        .await;
    assert_error(
        &json_body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Expected a multipart/form-data body with the fields name, passphrase, key, crt, chain, validation and crlCheck",
    );
    let form = reqwest::multipart::Form::new().text("name", "x");
    let r = s
        .client
        .put(s.url("/system/ssl-certificate"))
        .basic_auth(MGMT.0, Some(MGMT.1))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "Missing multipart field 'crt'");
    let mut u = Upload::new(&leaf, &root);
    u.validation = "Sometimes";
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::BAD_REQUEST,
        "validation must be Required or None",
    );
    let mut u = Upload::new(&leaf, &root);
    u.crt = b"garbage".to_vec();
    let r = import(&s, MGMT, u).await;
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert!(
        s.admin.server_certificate().borrow().is_none(),
        "nothing was published"
    );
}
