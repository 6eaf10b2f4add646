//! EST enrollment (issue 16) end to end: the real binary (or the real broker in
//! process), a real HTTPS client, real MQTT clients over mTLS on the MQTT port.

mod common;

use std::time::Duration;

use certs::est::{EstClient, CONTENT_TYPE_CSR};
use certs::issue::{Issued, KeyType};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// An enrolled certificate as a device holds it.
fn device_of(e: &certs::est::Enrolled) -> Issued {
    Issued {
        cert_der: e.cert_der.clone().into(),
        key_der: e.key_pkcs8.clone().into(),
    }
}

fn serial(der: &[u8]) -> String {
    certs::CertInfo::parse(der).unwrap().serial_hex
}

/// Whether `dev` (chain: itself) completes an MQTT CONNECT on port `mqtt`.
async fn connects(server_ca: &str, mqtt: u16, cn: &str, dev: &Issued) -> bool {
    let opts = v4_options(cn, mqtt, device_tls(server_ca, dev, &[]));
    match connect_v4(opts).await {
        Ok((client, _el)) => {
            let _ = client.disconnect().await;
            true
        }
        Err(_) => false,
    }
}

/// A raw EST POST: (status, body text).
async fn post_csr(
    http: &reqwest::Client,
    url: &str,
    basic: Option<(&str, &str)>,
    csr_der: &[u8],
) -> (u16, String) {
    let mut req = http
        .post(url)
        .header("Content-Type", CONTENT_TYPE_CSR)
        .header("Content-Transfer-Encoding", "base64")
        .body(certs::est::encode_base64(csr_der));
    if let Some((u, p)) = basic {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A CSR made by openssl (keys rcgen cannot make, e.g. RSA 1024).
fn openssl_csr(cn: &str, newkey: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", newkey, "-nodes", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .args(["-outform", "DER"])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn create_ca(env: &Env, tenant: &str, body: Value) -> Value {
    let (s, b) = env
        .as_tenant(
            tenant,
            Method::POST,
            &format!("/tenant/tenants/{tenant}/certificate-authority"),
            Some(body),
        )
        .await;
    assert_eq!(s, 201, "create CA: {b}");
    b
}

async fn secret(env: &Env, tenant: &str, cn: &str) -> String {
    let (s, b) = env
        .as_tenant(
            tenant,
            Method::POST,
            &format!("/tenant/tenants/{tenant}/enrollment-secrets"),
            Some(json!({"commonName": cn})),
        )
        .await;
    assert_eq!(s, 201, "secret: {b}");
    b["secret"].as_str().unwrap().to_string()
}

fn est_base(env: &Env) -> String {
    format!("https://localhost:{}", env.broker().est_addr.port())
}

fn client(env: &Env, tenant: &str, dev: Option<&Issued>) -> EstClient {
    EstClient::new(
        &est_base(env),
        tenant,
        env.server_ca.as_bytes(),
        dev.map(|d| (vec![d.cert_der.clone()], d.private_key())),
    )
    .unwrap()
}

#[tokio::test]
async fn enroll_once_renew_and_revoke_as_the_tenant_chose() {
    let env = start().await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({"deviceValidityDays": 30})).await;
    let mqtt = env.mqtt_port();

    // simpleenroll with the secret: once only.
    let s1 = secret(&env, "acme", "sensor-1").await;
    let est = client(&env, "acme", None);
    let first = est.enroll("sensor-1", &s1, KeyType::P256).await.unwrap();
    let again = est
        .enroll("sensor-1", &s1, KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(again, certs::est::ClientError::Refused { status: 401, .. }),
        "{again}"
    );
    let info = certs::CertInfo::parse(&first.cert_der).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("sensor-1"));
    assert!(info.not_after - info.not_before <= 31 * 86_400);
    let dev1 = device_of(&first);
    assert!(connects(&env.server_ca, mqtt, "sensor-1", &dev1).await);

    // simplereenroll with the current certificate: a new one, which connects; the old
    // one stays valid (revokeOnRenewal is false).
    let renewed = client(&env, "acme", Some(&dev1))
        .renew("sensor-1", KeyType::P256)
        .await
        .unwrap();
    assert_ne!(renewed.cert_der, first.cert_der);
    let dev2 = device_of(&renewed);
    assert!(connects(&env.server_ca, mqtt, "sensor-1", &dev2).await);
    assert!(connects(&env.server_ca, mqtt, "sensor-1", &dev1).await);

    // Renewal without a certificate, or asking for another CN, is refused.
    let http = https_client(&env.server_ca);
    let (_, other_cn) = certs::est::new_request("sensor-2", KeyType::P256).unwrap();
    let url = format!("{}/.well-known/est/acme/simplereenroll", est_base(&env));
    let (s, _) = post_csr(&http, &url, None, &other_cn).await;
    assert_eq!(s, 401);

    // The issued list records both, with how they were obtained.
    let (s, list) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/issued-certificates?pageSize=10",
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let certs_list = list["certificates"].as_array().unwrap();
    assert_eq!(certs_list.len(), 2, "{list}");
    let old_serial = serial(&first.cert_der);
    assert!(certs_list
        .iter()
        .any(|c| c["enrollment"] == "simpleenroll" && c["serialNumber"] == old_serial.as_str()));
    assert!(certs_list
        .iter()
        .any(|c| c["enrollment"] == format!("simplereenroll:{old_serial}").as_str()));

    // Revoking an issued certificate: refused on 8883 and listed in the tenant's CRL.
    let (s, b) = env
        .as_tenant(
            "acme",
            Method::POST,
            &format!("/tenant/tenants/acme/issued-certificates/{old_serial}/revoke"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(!connects(&env.server_ca, mqtt, "sensor-1", &dev1).await);
    assert!(connects(&env.server_ca, mqtt, "sensor-1", &dev2).await);
    let crl = env
        .http
        .get(format!(
            "{}/tenant/trusted-certificates/settings/crl",
            env.base
        ))
        .basic_auth("acme/admin", Some("acme-pw-1"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(certs::revocation::Crl::parse(&crl)
        .unwrap()
        .is_revoked(&old_serial));
    // A revoked certificate cannot renew itself either.
    let e = client(&env, "acme", Some(&dev1))
        .renew("sensor-1", KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(e, certs::est::ClientError::Refused { status: 401, .. }),
        "{e}"
    );

    // A tenant that chose revoke-on-renewal: the old certificate is refused at once.
    env.tenant("globex").await;
    create_ca(
        &env,
        "globex",
        json!({"revokeOnRenewal": true, "keyType": "rsa2048"}),
    )
    .await;
    let s = secret(&env, "globex", "meter-1").await;
    let old = device_of(
        &client(&env, "globex", None)
            .enroll("meter-1", &s, KeyType::Rsa2048)
            .await
            .unwrap(),
    );
    assert!(connects(&env.server_ca, mqtt, "meter-1", &old).await);
    let new = device_of(
        &client(&env, "globex", Some(&old))
            .renew("meter-1", KeyType::P256)
            .await
            .unwrap(),
    );
    assert!(connects(&env.server_ca, mqtt, "meter-1", &new).await);
    assert!(!connects(&env.server_ca, mqtt, "meter-1", &old).await);
}

#[tokio::test]
async fn requests_the_policy_refuses() {
    let env = start().await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({})).await;
    let http = https_client(&env.server_ca);
    let url = format!("{}/.well-known/est/acme/simpleenroll", est_base(&env));
    let s = secret(&env, "acme", "dev-1").await;
    let basic = Some(("dev-1", s.as_str()));

    let (_, wrong_cn) = certs::est::new_request("dev-2", KeyType::P256).unwrap();
    let (st, text) = post_csr(&http, &url, basic, &wrong_cn).await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("Common Name"), "{text}");

    let weak = openssl_csr("dev-1", "rsa:1024");
    let (st, text) = post_csr(&http, &url, basic, &weak).await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("weak"), "{text}");

    let key = certs::issue::generate_key(KeyType::P256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "dev-1");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_req = p.serialize_request(&key).unwrap();
    let (st, text) = post_csr(&http, &url, basic, ca_req.der()).await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("CA:true"), "{text}");

    let mut p = rcgen::CertificateParams::new(vec!["broker.example".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "dev-1");
    let san_req = p.serialize_request(&key).unwrap();
    let (st, text) = post_csr(&http, &url, basic, san_req.der()).await;
    assert_eq!(st, 400, "{text}");

    // Not base64, wrong content type, over the size limit.
    let r = http
        .post(&url)
        .basic_auth("dev-1", Some(&s))
        .header("Content-Type", CONTENT_TYPE_CSR)
        .body("%%% not base64 %%%")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(&url)
        .basic_auth("dev-1", Some(&s))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = http
        .post(&url)
        .basic_auth("dev-1", Some(&s))
        .header("Content-Type", CONTENT_TYPE_CSR)
        .body(vec![b'A'; certs::est::MAX_BODY_BYTES + 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // The refusals did not use the secret: a good request still enrolls.
    let e = client(&env, "acme", None)
        .enroll("dev-1", &s, KeyType::P256)
        .await
        .unwrap();
    let info = certs::CertInfo::parse(&e.cert_der).unwrap();
    assert!(!info.is_ca);
    assert!(
        info.subject_alt_names.is_empty(),
        "{:?}",
        info.subject_alt_names
    );

    // cacerts and csrattrs answer in the RFC's formats.
    let r = http
        .get(format!("{}/.well-known/est/acme/cacerts", est_base(&env)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/pkcs7-mime; smime-type=certs-only"
    );
    assert_eq!(r.headers()["content-transfer-encoding"], "base64");
    let r = http
        .get(format!("{}/.well-known/est/acme/csrattrs", est_base(&env)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/csrattrs");
}

#[tokio::test]
async fn a_secret_works_once_under_concurrent_use() {
    let env = start().await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({})).await;
    let s = secret(&env, "acme", "race-1").await;
    let url = format!("{}/.well-known/est/acme/simpleenroll", est_base(&env));
    let http = https_client(&env.server_ca);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, s) = (http.clone(), url.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let (_, csr) = certs::est::new_request("race-1", KeyType::P256).unwrap();
            post_csr(&http, &url, Some(("race-1", &s)), &csr).await.0
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 401), "{codes:?}");
    let (_, list) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/issued-certificates",
            None,
        )
        .await;
    assert_eq!(list["statistics"]["totalElements"], 1, "{list}");
    let (_, secrets) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/enrollment-secrets",
            None,
        )
        .await;
    assert_eq!(secrets["secrets"][0]["status"], "USED", "{secrets}");
    assert!(secrets["secrets"][0].get("secret").is_none(), "{secrets}");
}

#[tokio::test]
async fn tenants_cannot_reach_each_others_ca_secrets_or_certificates() {
    let env = start().await;
    env.tenant("acme").await;
    env.tenant("evil").await;
    create_ca(&env, "acme", json!({})).await;
    create_ca(&env, "evil", json!({})).await;

    // Tenant evil's admin cannot read or use acme's CA, secrets or issued list.
    for (method, path, body) in [
        (
            Method::GET,
            "/tenant/tenants/acme/certificate-authority",
            None,
        ),
        (
            Method::POST,
            "/tenant/tenants/acme/certificate-authority/rotate",
            Some(json!({})),
        ),
        (Method::GET, "/tenant/tenants/acme/enrollment-secrets", None),
        (
            Method::POST,
            "/tenant/tenants/acme/enrollment-secrets",
            Some(json!({"commonName": "x"})),
        ),
        (
            Method::GET,
            "/tenant/tenants/acme/issued-certificates",
            None,
        ),
        (
            Method::GET,
            "/tenant/tenants/acme/expiring-certificates",
            None,
        ),
    ] {
        let (s, b) = env.as_tenant("evil", method.clone(), path, body).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
    }

    // A secret of acme does not enroll at evil's path, nor evil's at acme's.
    let s = secret(&env, "acme", "dev-a").await;
    let e = client(&env, "evil", None)
        .enroll("dev-a", &s, KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(e, certs::est::ClientError::Refused { status: 401, .. }),
        "{e}"
    );
    let dev_a = device_of(
        &client(&env, "acme", None)
            .enroll("dev-a", &s, KeyType::P256)
            .await
            .unwrap(),
    );

    // acme's device certificate cannot re-enroll at evil's path.
    let e = client(&env, "evil", Some(&dev_a))
        .renew("dev-a", KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(e, certs::est::ClientError::Refused { status: 403, .. }),
        "{e}"
    );
    // Nor can a certificate of an uploaded CA (not the tenant's EST CA) renew.
    let uploaded = ca("Acme Uploaded CA");
    env.upload("acme", &uploaded, true).await;
    let foreign = device("dev-b", &uploaded);
    let e = client(&env, "acme", Some(&foreign))
        .renew("dev-b", KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(e, certs::est::ClientError::Refused { status: 403, .. }),
        "{e}"
    );
    // A tenant without a CA: 404 at every EST operation.
    env.tenant("plain").await;
    let e = client(&env, "plain", None).cacerts().await.unwrap_err();
    assert!(
        matches!(e, certs::est::ClientError::Refused { status: 404, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn rotation_keeps_both_cas_during_the_overlap_and_disables_the_old_one_after() {
    let env = start().await;
    env.tenant("acme").await;
    let first = create_ca(&env, "acme", json!({})).await;
    let mqtt = env.mqtt_port();
    let s = secret(&env, "acme", "dev-1").await;
    let old = device_of(
        &client(&env, "acme", None)
            .enroll("dev-1", &s, KeyType::P256)
            .await
            .unwrap(),
    );

    // A second CA while one is active: 409, rotate instead.
    let (st, _) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/certificate-authority",
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 409);
    let (st, rotated) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/certificate-authority/rotate",
            Some(json!({"overlapDays": 30, "name": "acme CA 2"})),
        )
        .await;
    assert_eq!(st, 201, "{rotated}");
    let cacerts = client(&env, "acme", None).cacerts().await.unwrap();
    assert_eq!(cacerts.len(), 2);
    // The device renews from the new CA; both connect during the overlap.
    let new = device_of(
        &client(&env, "acme", Some(&old))
            .renew("dev-1", KeyType::P256)
            .await
            .unwrap(),
    );
    let issuer_of = |d: &Issued| certs::CertInfo::parse(d.cert_der.as_ref()).unwrap().issuer;
    assert_ne!(issuer_of(&old), issuer_of(&new));
    assert!(connects(&env.server_ca, mqtt, "dev-1", &old).await);
    assert!(connects(&env.server_ca, mqtt, "dev-1", &new).await);

    // A rotation with no overlap retires the previous CA at once: its devices are
    // refused, the new CA's still connect.
    let (st, third) = env
        .as_tenant(
            "acme",
            Method::POST,
            "/tenant/tenants/acme/certificate-authority/rotate",
            Some(json!({"overlapDays": 0, "name": "acme CA 3"})),
        )
        .await;
    assert_eq!(st, 201, "{third}");
    assert!(!connects(&env.server_ca, mqtt, "dev-1", &new).await);
    let (_, list) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/certificate-authority",
            None,
        )
        .await;
    let states: Vec<(String, String)> = list["certificateAuthorities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["fingerprint"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&(
            third["fingerprint"].as_str().unwrap().to_string(),
            "ACTIVE".into()
        )),
        "{states:?}"
    );
    assert!(
        states.contains(&(
            rotated["fingerprint"].as_str().unwrap().to_string(),
            "RETIRED".into()
        )),
        "{states:?}"
    );
    // The first CA was still in its 30-day overlap: still retiring.
    assert!(
        states.contains(&(
            first["fingerprint"].as_str().unwrap().to_string(),
            "RETIRING".into()
        )),
        "{states:?}"
    );
}

/// The real binary: the imported CA's key never appears in an API answer, in the log,
/// or in clear in the database; the expiring list and metric see the certificates.
#[tokio::test]
async fn the_ca_key_is_never_in_answers_logs_or_the_database_in_clear() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("broker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
        .env("BROKER_ADMIN_PASSWORD", ADMIN_PW)
        .env("RUST_LOG", "debug,rumqttd=off")
        .env_remove("BROKER_CA_KEY_ENCRYPTION_KEY")
        .arg("--data-dir")
        .arg(&data)
        .args(PORT_ZERO_ARGS)
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("broker listening")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no listening line: {text}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("broker exited {status}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut child = Kill(child);
    let addr = |key: &str| -> std::net::SocketAddr {
        let i = line.find(&format!("{key}=")).unwrap();
        line[i + key.len() + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let server_ca = std::fs::read_to_string(data.join("server.crt")).unwrap();
    let http = https_client(&server_ca);
    let admin = format!("https://localhost:{}", addr("admin_addr").port());
    let mut answers = String::new();
    let call = |method: Method, path: &str, user: &str, pass: &str, body: Option<Value>| {
        let (http, url) = (http.clone(), format!("{admin}{path}"));
        let (user, pass) = (user.to_string(), pass.to_string());
        async move {
            let mut r = http.request(method, url).basic_auth(user, Some(pass));
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, b) = call(
        Method::POST,
        "/tenant/tenants",
        "management/admin",
        ADMIN_PW,
        Some(json!({"id": "acme", "company": "Acme", "adminName": "admin", "adminPass": "acme-pw-1"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    // Import a CA whose key the test knows, with a short validity to see it expire soon.
    let imported = certs::issue::ca(
        &certs::issue::Subject::cn("Acme Imported Device CA"),
        certs::issue::Validity::days(20),
        KeyType::P256,
        &certs::issue::CaOptions::default(),
        None,
    )
    .unwrap();
    let key_der = imported.key_der.secret_pkcs8_der().to_vec();
    let key_pem = imported.key_pem();
    let key_b64 = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let (s, b) = call(
        Method::POST,
        "/tenant/tenants/acme/certificate-authority",
        "acme/admin",
        "acme-pw-1",
        Some(json!({"certificatePem": imported.cert_pem(), "privateKeyPem": key_pem})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    answers.push_str(&b);
    for path in [
        "/tenant/tenants/acme/certificate-authority",
        "/tenant/tenants/acme/trusted-certificates",
        "/tenant/tenants/acme/expiring-certificates?days=30",
        "/audit?pageSize=100",
    ] {
        let (s, b) = call(Method::GET, path, "acme/admin", "acme-pw-1", None).await;
        assert!(s == 200 || path.starts_with("/audit"), "{path}: {s} {b}");
        answers.push_str(&b);
    }
    // The CA issues with the imported key: a device enrolls and its certificate chains
    // to the imported certificate.
    let (s, b) = call(
        Method::POST,
        "/tenant/tenants/acme/enrollment-secrets/bulk",
        "acme/admin",
        "acme-pw-1",
        Some(json!({"devices": [{"commonName": "d-1"}, {"commonName": "d-2", "validHours": 2}]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let created: Value = serde_json::from_str(&b).unwrap();
    let secret = created["secrets"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let est = EstClient::new(
        &format!("https://localhost:{}", addr("est_addr").port()),
        "acme",
        server_ca.as_bytes(),
        None,
    )
    .unwrap();
    let enrolled = est.enroll("d-1", &secret, KeyType::P256).await.unwrap();
    assert!(certs::signature::is_signed_by(
        &enrolled.cert_der,
        imported.cert_der.as_ref()
    ));
    let (s, b) = call(
        Method::GET,
        "/tenant/tenants/acme/expiring-certificates?days=30",
        "acme/admin",
        "acme-pw-1",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let expiring: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        expiring["certificates"][0]["kind"], "TRUSTED_CERTIFICATE",
        "{b}"
    );
    answers.push_str(&b);

    assert!(
        !answers.contains(&key_b64),
        "the CA key is in an API answer"
    );
    let _ = child.0.kill();
    let _ = child.0.wait();
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log_text.contains("EST enrollment: certificate issued"),
        "{log_text}"
    );
    assert!(!log_text.contains(&key_b64), "the CA key is in the log");
    for f in ["broker.db", "broker.db-wal"] {
        let bytes = std::fs::read(data.join(f)).unwrap_or_default();
        assert!(
            !bytes
                .windows(key_der.len())
                .any(|w| w == key_der.as_slice()),
            "the CA key is in clear in {f}"
        );
    }
    // The generated key encryption key is the owner's only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data.join("ca-key-encryption.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// One address holding EST connections or guessing secrets keeps no one else out: the
/// listener's per-source connection cap, and failed enrollments locking only the
/// (device, address) pair; the expiry metric counts the issued certificate.
#[tokio::test]
async fn one_address_cannot_starve_enrollment_and_guessing_a_secret_is_limited() {
    let env = start_with(|c| {
        c.est.listener.max_connections_per_source = 8;
        c.est.listener.idle_timeout_ms = 60_000;
        c.est.expiry_metric_interval_s = 1;
    })
    .await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({"deviceValidityDays": 10})).await;
    let est_addr = env.broker().est_addr;
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(5),
            tls_from(&env, "127.0.0.2", est_addr),
        )
        .await
        {
            held.push(s);
        }
    }
    let series = "est_connections_refused_total{reason=\"per_source\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&env.metrics().await, series) < 32.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counter(&env.metrics().await, series), 32.0);
    assert!(held.len() <= 8, "{} held", held.len());

    // Wrong secrets from one address: 401 until the pair is locked (429).
    let s = secret(&env, "acme", "dev-1").await;
    let url = format!("{}/.well-known/est/acme/simpleenroll", est_base(&env));
    let attacker = https_client_from(&env.server_ca, "127.0.0.4");
    let (_, csr) = certs::est::new_request("dev-1", KeyType::P256).unwrap();
    let mut codes = Vec::new();
    for i in 0..7 {
        codes.push(
            post_csr(
                &attacker,
                &url,
                Some(("dev-1", &format!("guess-{i}"))),
                &csr,
            )
            .await
            .0,
        );
    }
    assert_eq!(codes[..5], [401; 5], "{codes:?}");
    assert_eq!(codes[5..], [429; 2], "{codes:?}");
    // The device, from another address and while the flood is held, enrolls.
    let device = https_client_from(&env.server_ca, "127.0.0.3");
    let (st, text) = post_csr(&device, &url, Some(("dev-1", &s)), &csr).await;
    assert_eq!(st, 200, "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let series = "certificates_expiring_30d{tenant=\"acme\"}";
    while counter(&env.metrics().await, series) < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counter(&env.metrics().await, series), 1.0);
    // The expiry list shows it, inside the CA's 30-day renewal window.
    let (st, list) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/expiring-certificates?days=30",
            None,
        )
        .await;
    assert_eq!(st, 200, "{list}");
    let issued: Vec<&Value> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "ISSUED_CERTIFICATE")
        .collect();
    assert_eq!(issued.len(), 1, "{list}");
    assert_eq!(issued[0]["name"], "dev-1");
    assert_eq!(issued[0]["renewalDue"], true);
    assert!(
        (9..=10).contains(&issued[0]["daysLeft"].as_i64().unwrap()),
        "{list}"
    );
    drop(held);
}

/// `certs enroll` and `certs renew`, the real binary, against the real listener: the
/// files they write connect on the MQTT port, and the renewed ones replace them.
#[tokio::test]
async fn certs_enroll_and_renew_write_files_that_connect() {
    let certs_bin = std::path::Path::new(env!("CARGO_BIN_EXE_broker")).with_file_name("certs");
    assert!(
        certs_bin.is_file(),
        "{} is missing: run `cargo build -p certs` first (cargo test --workspace builds it)",
        certs_bin.display()
    );
    let env = start().await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({})).await;
    let s = secret(&env, "acme", "cli-1").await;
    let ca_file = env.dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, &env.server_ca).unwrap();
    let out = env.dir.path().join("devices");
    let run = |args: Vec<String>| {
        let certs_bin = certs_bin.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(certs_bin)
                    .args(args)
                    .env_remove("CERTS_EST_SECRET")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let server = est_base(&env);
    let common = |cmd: &str| {
        vec![
            cmd.to_string(),
            "--server".into(),
            server.clone(),
            "--tenant".into(),
            "acme".into(),
            "--cacert".into(),
            ca_file.display().to_string(),
            "--cn".into(),
            "cli-1".into(),
        ]
    };
    let mut enroll = common("enroll");
    enroll.extend([
        "--secret".into(),
        s.clone(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let o = run(enroll.clone()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cli-1.key"));
    let read_dev = || {
        let chain =
            certs::pem::read_certificates(&std::fs::read(out.join("cli-1-chain.pem")).unwrap())
                .unwrap();
        let key = std::fs::read(out.join("cli-1.key")).unwrap();
        let key = match certs::pem::read_private_key(&key, None).unwrap() {
            certs::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("PKCS#8 expected"),
        };
        assert_eq!(chain.len(), 2, "certificate and CA");
        Issued {
            cert_der: chain[0].clone(),
            key_der: key.into(),
        }
    };
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(out.join("cli-1.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = read_dev();
    assert!(connects(&env.server_ca, env.mqtt_port(), "cli-1", &first).await);
    // The secret is used: a second enroll fails with the server's sentence, exit 2.
    let o = run(enroll).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut renew = common("renew");
    renew.extend(["--dir".into(), out.display().to_string()]);
    let o = run(renew).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second = read_dev();
    assert_ne!(second.cert_der, first.cert_der);
    assert!(connects(&env.server_ca, env.mqtt_port(), "cli-1", &second).await);
}

/// What a device with some certificate in hand tries at `simplereenroll`: a certificate
/// for another device's name, renewal with a certificate of its own making, and renewal
/// of a certificate the tenant trusts but did not issue over EST. Each refused with its
/// own status and sentence; nothing issued.
#[tokio::test]
async fn renewal_refuses_another_name_a_forged_certificate_and_one_not_issued_here() {
    let env = start().await;
    env.tenant("acme").await;
    create_ca(&env, "acme", json!({"deviceValidityDays": 30})).await;
    let s1 = secret(&env, "acme", "sensor-1").await;
    let first = client(&env, "acme", None)
        .enroll("sensor-1", &s1, KeyType::P256)
        .await
        .unwrap();
    let dev1 = device_of(&first);

    // A valid certificate of sensor-1 asking for sensor-2's.
    let e = client(&env, "acme", Some(&dev1))
        .renew("sensor-2", KeyType::P256)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the EST server answered 400: the certificate request's Common Name \"sensor-2\" is not \"sensor-1\""
    );

    // sensor-1's name on a certificate of a CA nobody trusts.
    let forged = device("sensor-1", &ca("Acme Devices CA"));
    let e = client(&env, "acme", Some(&forged))
        .renew("sensor-1", KeyType::P256)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, certs::est::ClientError::Refused { status: 401, message }
            if message.starts_with("The client certificate is refused: ")),
        "{e}"
    );

    // A certificate of an anchor the tenant uploaded (not its EST CA): it connects on
    // 8883, but its renewal is not this CA's to make.
    let uploaded = ca("Acme Field CA");
    env.upload("acme", &uploaded, true).await;
    let field = device("meter-9", &uploaded);
    assert!(connects(&env.server_ca, env.mqtt_port(), "meter-9", &field).await);
    let e = client(&env, "acme", Some(&field))
        .renew("meter-9", KeyType::P256)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the EST server answered 403: Only certificates issued by the tenant's certificate authority can be renewed here"
    );

    // The only certificate issued is the first one.
    let (s, list) = env
        .as_tenant(
            "acme",
            Method::GET,
            "/tenant/tenants/acme/issued-certificates",
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["certificates"].as_array().unwrap().len(), 1, "{list}");
}
