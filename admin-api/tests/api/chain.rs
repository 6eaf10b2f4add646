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
