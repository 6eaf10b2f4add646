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
    new_passphrase: &'static str,
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
            new_passphrase: "",
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
    if !u.new_passphrase.is_empty() {
        form = form.text("newPassphrase", u.new_passphrase);
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
        new_passphrase: None,
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
    // The CRL check is an option of its own: on with validation None, it still refuses.
    let mut u = Upload::new(&revoked, &root);
    u.crl_check = true;
    u.validation = "None";
    assert_error(
        &import(&s, MGMT, u).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "This certificate has been revoked by the CRL and can't be trusted for a secure connection",
    );
    let mut u = Upload::new(&revoked, &root);
    u.validation = "None";
    assert_eq!(
        import(&s, MGMT, u).await.0,
        StatusCode::OK,
        "without crlCheck"
    );

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
        "Expected a multipart/form-data body with the fields name, passphrase, key, crt, chain, validation, crlCheck and newPassphrase",
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

#[tokio::test]
async fn a_failed_requirement_without_its_own_sentence_is_certificate_validation_failed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("Validation Root");
    let leaf = issue::server(
        &Subject::cn("broker.example.com"),
        &["broker.example.com".to_string()],
        Validity::days(90),
        KeyType::Rsa2048,
        Some(&root.issuer().unwrap()),
        &[],
    )
    .unwrap();
    let (st, body) = import(&s, MGMT, Upload::new(&leaf, &root)).await;
    assert_error(
        &(st, body.clone()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Certificate validation failed: The certificate subject must contain CN, C, OU and O; missing: C, OU, O",
    );
    assert_eq!(body["error"], "certificate_validation_failed");
    assert_eq!(body["info"]["row"], requirements::rows::SUBJECT);
    assert!(s.admin.server_certificate().borrow().is_none());
}

/// A leaf signed by `inter` with openssl, naming `aia_url` as its issuer's certificate
/// (Authority Information Access caIssuers): (certificate PEM, key PEM).
fn leaf_with_aia(dir: &std::path::Path, inter: &Issued, aia_url: &str) -> (Vec<u8>, Vec<u8>) {
    std::fs::write(dir.join("inter.crt"), inter.cert_pem()).unwrap();
    std::fs::write(dir.join("inter.key"), inter.key_pem()).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:broker.example.com\nextendedKeyUsage=serverAuth\nauthorityInfoAccess=caIssuers;URI:{aia_url}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-subj",
            "/C=DE/O=ACME/OU=Platform/CN=broker.example.com",
            "-out",
            "leaf.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "inter.crt",
            "-CAkey",
            "inter.key",
            "-set_serial",
            "4660",
            "-days",
            "90",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.crt",
        ],
    );
    (
        std::fs::read(dir.join("leaf.crt")).unwrap(),
        std::fs::read(dir.join("leaf.key")).unwrap(),
    )
}

#[tokio::test]
async fn missing_chain_certificates_are_fetched_through_the_egress_policy() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("AIA Root");
    let inter = issue::ca(
        &subject("AIA Issuing"),
        Validity::days(365),
        KeyType::Rsa2048,
        &CaOptions::default(),
        Some(&root.issuer().unwrap()),
    )
    .unwrap();
    let stranger = rsa_root("AIA Stranger");

    // The issuer publishes its certificate (DER) on loopback, which the tests' policy allows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (inter_der, stranger_der) = (
        inter.cert_der.as_ref().to_vec(),
        stranger.cert_der.as_ref().to_vec(),
    );
    let app = axum::Router::new()
        .route(
            "/inter.crt",
            axum::routing::get(move || {
                let d = inter_der.clone();
                async move { d }
            }),
        )
        .route(
            "/stranger.crt",
            axum::routing::get(move || {
                let d = stranger_der.clone();
                async move { d }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let upload = |crt: Vec<u8>, key: Vec<u8>| Upload {
        name: "aia",
        crt,
        key,
        chain: Some(root.cert_pem().into_bytes()),
        passphrase: "",
        validation: "Required",
        crl_check: false,
        new_passphrase: "",
    };

    // The intermediate is fetched: the served chain is leaf, intermediate, root.
    let tmp = tempfile::tempdir().unwrap();
    let (crt, key) = leaf_with_aia(tmp.path(), &inter, &format!("{base}/inter.crt"));
    let mut rx = s.admin.server_certificate();
    let (st, body) = import(&s, MGMT, upload(crt.clone(), key.clone())).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["chainLength"], 3);
    let published = rx.borrow_and_update().clone().expect("published");
    assert_eq!(published.chain[1].as_ref(), inter.cert_der.as_ref());
    assert_eq!(published.chain[2].as_ref(), root.cert_der.as_ref());

    // Nothing at the URL.
    let (crt2, key2) = leaf_with_aia(tmp.path(), &inter, &format!("{base}/missing.crt"));
    let r = import(&s, MGMT, upload(crt2.clone(), key2.clone())).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Cannot download chain certificates. '{base}/missing.crt' answered HTTP 404"),
    );
    assert_eq!(r.1["error"], "chain_download_failed");
    // With validation None the certificate is imported with the chain as uploaded.
    let mut u = upload(crt2, key2);
    u.validation = "None";
    let (st, body) = import(&s, MGMT, u).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["chainLength"], 1);

    // A certificate, but not the issuer's.
    let (crt3, key3) = leaf_with_aia(tmp.path(), &inter, &format!("{base}/stranger.crt"));
    let r = import(&s, MGMT, upload(crt3, key3)).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Cannot download certificate. '{base}/stranger.crt' did not return the certificate of the issuer of C=DE, O=ACME, OU=Platform, CN=broker.example.com: no certificate in the answer has the issuer's name and key"),
    );
    assert_eq!(r.1["error"], "certificate_download_failed");

    // The default policy refuses loopback: the same upload fails before any connection.
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = config(dir2.path());
    c.crl_egress = certs::egress::EgressPolicy::default();
    let strict = start_with(c).await;
    assert_error(
        &import(&strict, MGMT, upload(crt, key)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Cannot download chain certificates. '{base}/inter.crt' is refused: the address 127.0.0.1 is not allowed by the egress policy (loopback, private, link-local, multicast or reserved)"),
    );
    assert!(strict.admin.server_certificate().borrow().is_none());
}

#[tokio::test]
async fn a_new_passphrase_stores_the_key_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let root = rsa_root("Passphrase Root");
    let leaf = server_cert(&root, Validity::days(90), &[]);
    let mut rx = s.admin.server_certificate();
    let mut u = Upload::new(&leaf, &root);
    u.new_passphrase = "stored secret";
    let (st, body) = import(&s, MGMT, u).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Served at once, with the plain key in memory only.
    let published = rx.borrow_and_update().clone().expect("published");
    assert!(certs::keys::key_matches_certificate(
        &published.key,
        leaf.cert_der.as_ref()
    ));
    // Stored encrypted.
    let rec = s.admin.store().server_certificate().await.unwrap().unwrap();
    assert_eq!(
        certs::pem::read_private_key(&rec.key_pkcs8, None),
        Err(certs::ReadError::PassphraseRequired)
    );
    let stored = certs::pem::read_private_key(&rec.key_pkcs8, Some("stored secret")).unwrap();
    assert!(certs::keys::key_matches_certificate(
        &stored,
        leaf.cert_der.as_ref()
    ));
    s.stop().await;

    // A start without the passphrase, or with a wrong one, is refused with what to do.
    let err = admin_api::Admin::open(config(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid admin configuration: the stored server key is encrypted (imported with a new passphrase): set BROKER_SERVER_KEY_PASSPHRASE to that passphrase"
    );
    let mut c = config(dir.path());
    c.server_key_passphrase = Some("not it".into());
    let err = admin_api::Admin::open(c).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid admin configuration: the stored server key cannot be read with BROKER_SERVER_KEY_PASSPHRASE: Passphrase does not match to the key"
    );
    let mut c = config(dir.path());
    c.server_key_passphrase = Some("stored secret".into());
    let admin = admin_api::Admin::open(c)
        .await
        .expect("opens with the passphrase");
    let served = admin.server_certificate().borrow().clone().expect("served");
    assert!(certs::keys::key_matches_certificate(
        &served.key,
        leaf.cert_der.as_ref()
    ));
    let debug = format!("{:?}", admin);
    assert!(!debug.contains("stored secret"), "{debug}");
}
