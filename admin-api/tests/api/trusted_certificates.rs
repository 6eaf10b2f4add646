//! Trusted-certificate uploads: the reference contract, upload rules with their exact
//! sentences, one tenant per certificate, bulk all-or-nothing, changes and deletion.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_reference_upload_call_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("t1").await;
    let root = ca("Fleet Root CA");
    let pem = root.cert_pem();
    // Exactly the documented call: string "true", Basic "tenantId/user:password".
    let body = format!(
        r#"{{ "status": "ENABLED", "name": "certificateName",
      "autoRegistrationEnabled": "true", "certInPemFormat": {} }}"#,
        serde_json::to_string(&pem).unwrap()
    );
    let resp = s
        .client
        .post(s.url("/tenant/tenants/t1/trusted-certificates"))
        .header(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("t1/admin:{TENANT_PASS}"))
            ),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let c: serde_json::Value = resp.json().await.unwrap();
    let info = certs::CertInfo::parse(root.cert_der.as_ref()).unwrap();
    assert_eq!(c["fingerprint"], info.fingerprint_sha1);
    assert_eq!(c["name"], "certificateName");
    assert_eq!(c["status"], "ENABLED");
    assert_eq!(c["autoRegistrationEnabled"], true);
    assert_eq!(
        c["certInPemFormat"],
        base64::engine::general_purpose::STANDARD.encode(root.cert_der.as_ref())
    );
    assert_eq!(c["subject"], "CN=Fleet Root CA");
    assert_eq!(c["issuer"], "CN=Fleet Root CA");
    assert_eq!(c["serialNumber"], info.serial_hex);
    assert_eq!(c["notBefore"], info.not_before_rfc3339());
    assert_eq!(c["notAfter"], info.not_after_rfc3339());
    assert_eq!(c["algorithmName"], "SHA256withECDSA");
    assert_eq!(c["version"], 3);
    assert_eq!(c["proofOfPossessionValid"], false);

    // Published: a device of this CA verifies for t1 right after the 201.
    let dev = device("sensor-1", &root);
    let id = verify(&s.admin, &[&dev]).expect("device verifies");
    assert_eq!(&*id.tenant, "t1");
    assert_eq!(id.anchor_fingerprint, info.fingerprint_sha1);
    assert!(id.auto_registration);

    let (st, list) = s
        .get(
            "/tenant/tenants/t1/trusted-certificates?pageSize=10",
            ("t1/admin", TENANT_PASS),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["trustedCertificates"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["statistics"],
        json!({"pageSize": 10, "currentPage": 1, "totalPages": 1, "totalElements": 1})
    );
    // Fingerprint in any case and with colons.
    let colons: String = info
        .fingerprint_sha1
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let (st, one) = s
        .get(
            &format!("/tenant/tenants/t1/trusted-certificates/{colons}"),
            ("t1/admin", TENANT_PASS),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{one}");
    assert_eq!(one["fingerprint"], info.fingerprint_sha1);
}

#[tokio::test]
async fn pasted_pem_variants_and_boolean_forms_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/trusted-certificates";

    let one_line = ca("One line");
    let flat = one_line.cert_pem().replace('\n', " ");
    let (st, c) = s
        .post(
            path,
            a,
            &json!({"name": "flat", "certInPemFormat": flat, "autoRegistrationEnabled": true}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["autoRegistrationEnabled"], true);
    assert_eq!(c["status"], "ENABLED", "status defaults to ENABLED");

    let escaped = ca("Escaped");
    let text = escaped.cert_pem().replace('\n', "\\n");
    let (st, c) = s.post(path, a, &json!({"name": "esc", "certInPemFormat": text, "autoRegistrationEnabled": "false", "status": "DISABLED"})).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["autoRegistrationEnabled"], false);
    assert_eq!(c["status"], "DISABLED");

    let bare = ca("Bare base64");
    let b64 = base64::engine::general_purpose::STANDARD.encode(bare.cert_der.as_ref());
    let (st, c) = s.post(path, a, &json!({"certInPemFormat": b64})).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["name"], "Bare base64", "name defaults to the CN");

    let unicode = ca("Unicode");
    let (st, c) = s
        .post(
            path,
            a,
            &json!({"name": "Zertifikat für Geräte ✓", "certInPemFormat": unicode.cert_pem()}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["name"], "Zertifikat für Geräte ✓");
}

#[tokio::test]
async fn upload_rules_answer_422_with_the_rule_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/trusted-certificates";
    let sr = &s;
    let post = |pem: String| {
        let body = json!({"name": "x", "status": "ENABLED", "autoRegistrationEnabled": "true", "certInPemFormat": pem});
        async move { sr.post(path, a, &body).await }
    };

    let root = ca("V1 CA");
    let v1 =
        certs::issue::make_v1(root.cert_der.as_ref(), root.key_der.secret_pkcs8_der()).unwrap();
    assert_error(
        &post(certs::pem::to_pem("CERTIFICATE", &v1)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Certificate must be X.509 version 3",
    );

    let not_ca = certs::issue::ca(
        &certs::issue::Subject::cn("Not a CA"),
        certs::issue::Validity::days(10),
        certs::issue::KeyType::P256,
        &certs::issue::CaOptions {
            is_ca: false,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_error(
        &post(not_ca.cert_pem()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Certificate must have BasicConstraints CA:true",
    );

    let old = certs::issue::ca(
        &certs::issue::Subject::cn("Expired CA"),
        expired(),
        certs::issue::KeyType::P256,
        &Default::default(),
        None,
    )
    .unwrap();
    assert_error(
        &post(old.cert_pem()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "This SSL certificate has expired and isn't considered valid.",
    );

    let tmp = tempfile::tempdir().unwrap();
    openssl(
        tmp.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "weak.key",
            "-out",
            "weak.pem",
            "-subj",
            "/CN=Weak CA",
            "-days",
            "30",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let weak = std::fs::read_to_string(tmp.path().join("weak.pem")).unwrap();
    assert_error(
        &post(weak).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Certificate key is too weak or unsupported: RSA 1024 bit (required: RSA >= 2048 bits, EC P-256/P-384 or Ed25519)",
    );

    let garbage =
        post("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----".into())
            .await;
    assert_eq!(garbage.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        garbage.1["message"]
            .as_str()
            .unwrap()
            .starts_with("Certificate could not be parsed: "),
        "{}",
        garbage.1
    );
    // What the parser said is kept for experts, after a sentence for everyone.
    let message = garbage.1["message"].as_str().unwrap();
    assert!(
        message.contains("the data is not an X.509 certificate")
            && message.contains("send the whole certificate as PEM"),
        "{message}"
    );
    // A certificate cut short (a PEM copied in part).
    let whole = ca("Cut").cert_pem();
    let mut lines: Vec<&str> = whole.lines().collect();
    lines.drain(3..lines.len() - 1);
    let cut = post(lines.join("\n")).await;
    assert_eq!(cut.0, StatusCode::UNPROCESSABLE_ENTITY);
    let message = cut.1["message"].as_str().unwrap();
    assert!(
        message.starts_with("Certificate could not be parsed: ")
            && message.contains("the certificate data ends early"),
        "{message}"
    );
    // Raw line breaks inside the JSON string: what to send instead.
    let raw = format!(
        "{{\"name\":\"x\",\"status\":\"ENABLED\",\"certInPemFormat\":\"{}\"}}",
        ca("Raw").cert_pem()
    );
    let resp = s
        .client
        .post(s.url(path))
        .basic_auth(a.0, Some(a.1))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("The JSON body has a raw line break")
            && message.contains(" at line ")
            && message.contains("with \\n for each line break"),
        "{message}"
    );
    let words = post("hello world".into()).await;
    assert_eq!(words.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        words.1["message"]
            .as_str()
            .unwrap()
            .starts_with("Certificate could not be parsed: "),
        "{}",
        words.1
    );
    assert_error(
        &post("  ".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "certInPemFormat must not be empty",
    );
    let two = pem_chain(&[&ca("a"), &ca("b")]);
    assert_error(
        &post(two).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Certificate could not be parsed: expected exactly one certificate, found 2",
    );

    let good = ca("Good").cert_pem();
    let r = s
        .post(
            path,
            a,
            &json!({"status": "enabledish", "certInPemFormat": good}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "status must be ENABLED or DISABLED",
    );
    let r = s
        .post(
            path,
            a,
            &json!({"autoRegistrationEnabled": "yes", "certInPemFormat": good}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "autoRegistrationEnabled must be true or false",
    );
    let r = s
        .post(
            path,
            a,
            &json!({"name": "evil\u{202e}txt.exe", "certInPemFormat": good}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name must not contain control or invisible formatting characters",
    );
    let r = s
        .post(
            path,
            a,
            &json!({"name": "x".repeat(129), "certInPemFormat": good}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name must be at most 128 characters",
    );

    // Nothing was stored by any refused upload.
    let (_, list) = s.get(path, a).await;
    assert_eq!(list["statistics"]["totalElements"], 0);
}

#[tokio::test]
async fn a_certificate_or_its_key_belongs_to_one_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = s.tenant("ta").await;
    let b = s.tenant("tb").await;
    let root = ca("Shared CA");
    let fp = fingerprint_of(&root);
    s.trust("ta", &a, &root, true).await;

    let msg = format!("Certificate {fp} is already trusted: a certificate can be trusted by only one tenant, so that every device maps to exactly one tenant");
    let again = s
        .post(
            "/tenant/tenants/ta/trusted-certificates",
            (&a, TENANT_PASS),
            &upload_body(&root, "again", true),
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT, &msg);
    let other = s
        .post(
            "/tenant/tenants/tb/trusted-certificates",
            (&b, TENANT_PASS),
            &upload_body(&root, "mine", true),
        )
        .await;
    assert_error(&other, StatusCode::CONFLICT, &msg);

    // A re-issued certificate with the same key: fine for the same tenant, refused for another.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca.key"), root.key_pem()).unwrap();
    let reissue = |cn: &str, out: &str| {
        openssl(
            tmp.path(),
            &[
                "req",
                "-x509",
                "-key",
                "ca.key",
                "-out",
                out,
                "-subj",
                &format!("/CN={cn}"),
                "-days",
                "30",
                "-sha256",
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        std::fs::read_to_string(tmp.path().join(out)).unwrap()
    };
    let same_key_b = reissue("Shared CA renewed", "b.pem");
    let r = s
        .post(
            "/tenant/tenants/tb/trusted-certificates",
            (&b, TENANT_PASS),
            &json!({"certInPemFormat": same_key_b}),
        )
        .await;
    let fp_b = certs::info::fingerprint_sha1(
        certs::pem::read_certificate(same_key_b.as_bytes())
            .unwrap()
            .as_ref(),
    );
    assert_error(
        &r,
        StatusCode::CONFLICT,
        &format!("Certificate {fp_b} has the same public key as a certificate trusted by another tenant: every device must map to exactly one tenant"),
    );
    let r = s
        .post(
            "/tenant/tenants/ta/trusted-certificates",
            (&a, TENANT_PASS),
            &json!({"certInPemFormat": same_key_b}),
        )
        .await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
}

#[tokio::test]
async fn bulk_upload_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/trusted-certificates/bulk";
    let (c1, c2, c3) = (ca("Bulk 1"), ca("Bulk 2"), ca("Bulk 3"));
    let not_ca = certs::issue::ca(
        &certs::issue::Subject::cn("Bulk bad"),
        certs::issue::Validity::days(10),
        certs::issue::KeyType::P256,
        &certs::issue::CaOptions {
            is_ca: false,
            ..Default::default()
        },
        None,
    )
    .unwrap();

    let r = s.post(path, a, &json!({"certificates": [upload_body(&c1, "one", true), upload_body(&not_ca, "bad", true)]})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "certificates[1]: Certificate must have BasicConstraints CA:true",
    );
    assert_eq!(r.1["info"]["index"], 1);
    let (_, list) = s.get("/tenant/tenants/t1/trusted-certificates", a).await;
    assert_eq!(list["statistics"]["totalElements"], 0, "nothing stored");

    let (st, ok) = s.post(path, a, &json!({"certificates": [upload_body(&c1, "one", true), upload_body(&c2, "two", false)]})).await;
    assert_eq!(st, StatusCode::CREATED, "{ok}");
    assert_eq!(ok["certificates"].as_array().unwrap().len(), 2);
    assert_eq!(ok["certificates"][1]["name"], "two");

    let r = s.post(path, a, &json!({"certificates": [upload_body(&c3, "three", true), upload_body(&c1, "dup", true)]})).await;
    assert_eq!(r.0, StatusCode::CONFLICT, "{}", r.1);
    let (_, list) = s.get("/tenant/tenants/t1/trusted-certificates", a).await;
    assert_eq!(
        list["statistics"]["totalElements"], 2,
        "the third was rolled back"
    );
    assert!(verify(&s.admin, &[&device("d", &c3)]).is_err());
    assert_error(
        &s.post(path, a, &json!({"certificates": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "certificates must not be empty",
    );
}

#[tokio::test]
async fn put_changes_only_name_status_and_auto_registration_and_delete_untrusts() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Mutable CA");
    let stored = s.trust("t1", &login, &root, true).await;
    let fp = stored["fingerprint"].as_str().unwrap().to_string();
    let path = format!("/tenant/tenants/t1/trusted-certificates/{fp}");
    let dev = device("dev-1", &root);
    assert!(verify(&s.admin, &[&dev]).is_ok());

    let other = ca("Other");
    let (st, c) = s
        .put(&path, a, &json!({"name": "renamed", "status": "DISABLED", "autoRegistrationEnabled": "false", "certInPemFormat": other.cert_pem(), "fingerprint": "ff"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["name"], "renamed");
    assert_eq!(c["status"], "DISABLED");
    assert_eq!(c["autoRegistrationEnabled"], false);
    assert_eq!(c["fingerprint"], fp);
    assert_eq!(
        c["certInPemFormat"], stored["certInPemFormat"],
        "the certificate itself cannot change"
    );
    assert_eq!(
        verify(&s.admin, &[&dev]).unwrap_err(),
        certs::VerifyError::AnchorDisabled
    );

    assert_error(
        &s.put(&path, a, &json!({"status": "OFF"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "status must be ENABLED or DISABLED",
    );
    assert_error(
        &s.put(
            "/tenant/tenants/t1/trusted-certificates/00ff",
            a,
            &json!({"name": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "Trusted certificate 00ff not found",
    );

    assert_eq!(s.delete(&path, a).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &s.get(&path, a).await,
        StatusCode::NOT_FOUND,
        &format!("Trusted certificate {fp} not found"),
    );
    assert_eq!(
        verify(&s.admin, &[&dev]).unwrap_err(),
        certs::VerifyError::UnknownIssuer
    );
    assert!(s.admin.trust_store().borrow().anchor(&fp).is_none());

    // Another tenant's certificate is not reachable through one's own path.
    let b = s.tenant("t2").await;
    let theirs = s.trust("t2", &b, &ca("Theirs"), true).await;
    let fp2 = theirs["fingerprint"].as_str().unwrap();
    assert_error(
        &s.get(&format!("/tenant/tenants/t1/trusted-certificates/{fp2}"), a)
            .await,
        StatusCode::NOT_FOUND,
        &format!("Trusted certificate {fp2} not found"),
    );
    assert_error(
        &s.get(&format!("/tenant/tenants/t2/trusted-certificates/{fp2}"), a)
            .await,
        StatusCode::NOT_FOUND,
        "Tenant t2 not found",
    );
    let audit = s.get("/audit?pageSize=100", MGMT).await.1;
    let actions: Vec<&str> = audit["auditRecords"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["fingerprint"] == fp)
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "CERTIFICATE_DELETED",
            "CERTIFICATE_UPDATED",
            "CERTIFICATE_ADDED"
        ]
    );
    let own = s.get("/audit?pageSize=100&tenant=t2", a).await.1;
    assert!(
        own["auditRecords"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "t1"),
        "a tenant sees only its own audit records"
    );
}
