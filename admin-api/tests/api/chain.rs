//! The chain-check tool: tenant, validity and the precise reason; isolation between
//! tenants.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const PATH: &str = "/tenant/trusted-certificates/verify-cert-chain";

async fn check(s: &Server, who: Creds<'_>, pem: &str) -> (StatusCode, Value) {
    let r = s
        .client
        .post(s.url(PATH))
        .basic_auth(who.0, Some(who.1))
        .body(pem.to_string())
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

#[tokio::test]
async fn chain_check_answers_tenant_validity_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Chain Root");
    let fp = s.trust("t1", &login, &root, false).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let dev = device("sensor-7", &root);

    let (st, v) = check(&s, a, &pem_chain(&[&dev])).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["tenant"], "t1");
    assert_eq!(v["anchorFingerprint"], fp);
    assert_eq!(v["chainLength"], 2);
    assert_eq!(v["certificate"]["commonName"], "sensor-7");
    assert_eq!(v["certificate"]["serialNumber"], serial_of(&dev));
    assert_eq!(
        v["device"],
        json!({"status": "UNKNOWN", "autoRegistrationEnabled": false, "connectAllowed": false,
               "connectRefusal": "The device is not registered and its trusted certificate does not allow auto-registration"})
    );
    s.post(
        "/tenant/tenants/t1/devices",
        a,
        &json!({"commonName": "sensor-7"}),
    )
    .await;
    let (_, v) = check(&s, a, &pem_chain(&[&dev, &root])).await;
    assert_eq!(v["device"]["status"], "REGISTERED");
    assert_eq!(v["device"]["connectAllowed"], true);
    s.delete("/tenant/tenants/t1/devices/sensor-7", a).await;
    let (_, v) = check(&s, a, &pem_chain(&[&dev])).await;
    assert_eq!(v["device"]["connectRefusal"], "The device is blocked");

    // Expired device: the precise reason and the tenant it maps to.
    let old = device_with("old", &root, expired());
    let (_, v) = check(&s, a, &pem_chain(&[&old])).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "certificate expired");
    assert_eq!(v["reasonCode"], "expired");
    assert_eq!(v["tenant"], "t1");
    assert_eq!(v["anchorFingerprint"], fp);

    // Through an intermediate: too long for the default limit of 2, fine with 3.
    let inter = intermediate("Chain Intermediate", &root);
    let leaf = device("deep", &inter);
    let (_, v) = check(&s, a, &pem_chain(&[&leaf, &inter])).await;
    assert_eq!(
        v["reason"],
        "chain too long: 3 certificates, the tenant allows 2"
    );
    assert_eq!(v["reasonCode"], "chain_too_long");
    s.put(
        "/tenant/tenants/t1/settings",
        a,
        &json!({"maxChainLength": 3}),
    )
    .await;
    let (_, v) = check(&s, a, &pem_chain(&[&leaf, &inter])).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["chainLength"], 3);

    // Unknown issuer.
    let (_, v) = check(&s, a, &pem_chain(&[&device("x", &ca("Nobody"))])).await;
    assert_eq!(v["valid"], false);
    assert_eq!(
        v["reason"],
        "unknown issuer: no trusted certificate issued this chain"
    );
    assert!(v["tenant"].is_null());

    // The header form, URL-encoded as nginx's $ssl_client_escaped_cert.
    let escaped: String = pem_chain(&[&dev])
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = s
        .client
        .post(s.url(PATH))
        .basic_auth(a.0, Some(a.1))
        .header("x-ssl-cert-chain", escaped)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tenant"], "t1");
    assert_eq!(v["certificate"]["commonName"], "sensor-7");

    let empty = check(&s, a, "").await;
    assert_error(
        &empty,
        StatusCode::BAD_REQUEST,
        "No certificate chain: send the PEM chain (device certificate first) in the body or in the X-Ssl-Cert-Chain header",
    );
    let junk = check(
        &s,
        a,
        "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n",
    )
    .await;
    assert_eq!(junk.0, StatusCode::BAD_REQUEST);
    assert!(
        junk.1["message"]
            .as_str()
            .unwrap()
            .starts_with("The certificate chain could not be read: "),
        "{}",
        junk.1
    );
}

#[tokio::test]
async fn another_tenants_chain_is_an_unknown_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let la = s.tenant("ta").await;
    let lb = s.tenant("tb").await;
    let root_b = ca("B Root");
    s.trust("tb", &lb, &root_b, true).await;
    let good = device("b-dev", &root_b);
    let old = device_with("b-old", &root_b, expired());

    for chain in [pem_chain(&[&good]), pem_chain(&[&old])] {
        let (st, v) = check(&s, (&la, TENANT_PASS), &chain).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(v["valid"], false);
        assert_eq!(v["reasonCode"], "unknown_issuer", "{v}");
        assert!(v["tenant"].is_null() && v["anchorFingerprint"].is_null() && v["device"].is_null());
    }
    // Tenant b and the management admin see the truth.
    let (_, v) = check(&s, (&lb, TENANT_PASS), &pem_chain(&[&good])).await;
    assert_eq!(v["tenant"], "tb");
    let (_, v) = check(&s, MGMT, &pem_chain(&[&old])).await;
    assert_eq!(v["tenant"], "tb");
    assert_eq!(v["reasonCode"], "expired");
}

/// The reference platform's forms: a multipart form with `tenantId` and `file`, and the
/// chain in `X-Cumulocity-Client-Cert-Chain` (certificates separated by ',', base64 DER
/// in space-separated blocks) with `X-Cumulocity-TenantId`. A valid chain is 200 with
/// `successfullyValidated`, a refused one 401 with the verdict, an unknown tenant 404.
#[tokio::test]
async fn the_reference_platforms_forms_are_answered_as_it_answers() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Reference Root");
    s.trust("t1", &login, &root, true).await;
    let dev = device("sensor-9", &root);
    let stranger = device("stranger", &ca("Nobody's Root"));

    let form = |pem: String, tenant: &str| {
        let mut f = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(pem.into_bytes()).file_name("chain.pem"),
        );
        if !tenant.is_empty() {
            f = f.text("tenantId", tenant.to_string());
        }
        s.client
            .post(s.url(PATH))
            .basic_auth(a.0, Some(a.1))
            .multipart(f)
            .send()
    };
    let r = form(pem_chain(&[&dev, &root]), "t1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["successfullyValidated"], true, "{v}");
    assert_eq!(v["tenantId"], "t1");
    assert_eq!(v["subject"], "CN=sensor-9");
    assert_eq!(v["issuer"], "CN=Reference Root");

    let r = form(pem_chain(&[&stranger]), "t1").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("www-authenticate").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "certificate_chain_invalid", "{v}");
    assert_eq!(
        v["message"],
        "unknown issuer: no trusted certificate issued this chain"
    );
    assert_eq!(v["info"]["successfullyValidated"], false);
    assert_eq!(v["info"]["subject"], "CN=stranger");

    let r = form(pem_chain(&[&dev]), "no-such-tenant").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = form("not a certificate".into(), "t1").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The header form: base64 DER in 64-character blocks separated by spaces, the
    // certificates by ','.
    let header = |certs: &[&certs::issue::Issued]| {
        certs
            .iter()
            .map(|c| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(c.cert_der.as_ref());
                b64.as_bytes()
                    .chunks(64)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let send = |chain: String, tenant: Option<&str>| {
        let mut rb = s
            .client
            .post(s.url(PATH))
            .basic_auth(a.0, Some(a.1))
            .header("X-Cumulocity-Client-Cert-Chain", chain);
        if let Some(t) = tenant {
            rb = rb.header("X-Cumulocity-TenantId", t);
        }
        rb.send()
    };
    let r = send(header(&[&dev, &root]), Some("t1")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["successfullyValidated"], true, "{v}");
    // Without a tenant id the chain's own tenant is found.
    let r = send(header(&[&dev]), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let old = device_with("old", &root, expired());
    let r = send(header(&[&old]), Some("t1")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "certificate expired");
    assert_eq!(v["info"]["tenantId"], "t1");
    let r = send(header(&[&dev]), Some("nope")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = send("%%%".into(), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let six = [&dev, &root, &dev, &root, &dev, &root];
    let r = send(header(&six), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Another tenant's id answers like a missing one.
    s.tenant("t2").await;
    let r = form(pem_chain(&[&dev]), "t2").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The plain form is unchanged: 200 with the verdict for a refused chain.
    let (st, v) = check(&s, a, &pem_chain(&[&stranger])).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["successfullyValidated"], false);
}
