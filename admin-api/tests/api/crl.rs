//! Revocation: the manual serial list served as a signed CRL, and CRL uploads that must
//! be signed by one of the tenant's trusted certificates.

use certs::revocation::Crl;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn manual_serials_revoke_devices_and_are_served_as_a_signed_crl() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("CRL CA");
    s.trust("t1", &login, &root, true).await;
    let dev = device("revoked-dev", &root);
    let keep = device("kept-dev", &root);
    let serial = serial_of(&dev);

    let upper: String = serial.to_uppercase();
    let (st, list) = s
        .put(
            "/tenant/trusted-certificates/settings/crl",
            a,
            &json!({"crls": [{"serialNumberInHex": upper, "revocationDate": "2024-05-01T10:00:00Z"}, {"serialNumberInHex": "0A:0B"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let crls = list["crls"].as_array().unwrap();
    assert_eq!(crls.len(), 2);
    assert!(
        crls.iter()
            .any(|e| e["serialNumberInHex"] == serial
                && e["revocationDate"] == "2024-05-01T10:00:00Z")
    );
    assert!(crls.iter().any(|e| e["serialNumberInHex"] == "0a0b"));
    assert_eq!(
        verify(&s.admin, &[&dev]).unwrap_err(),
        certs::VerifyError::Revoked
    );
    assert!(verify(&s.admin, &[&keep]).is_ok());

    let bad = s
        .put(
            "/tenant/trusted-certificates/settings/crl",
            a,
            &json!({"crls": [{"serialNumberInHex": "xyz"}]}),
        )
        .await;
    assert_error(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "crls[0].serialNumberInHex 'xyz' is not a hexadecimal serial number",
    );
    let bad_date = s
        .put(
            "/tenant/trusted-certificates/settings/crl",
            a,
            &json!({"crls": [{"serialNumberInHex": "01", "revocationDate": "yesterday"}]}),
        )
        .await;
    assert_error(
        &bad_date,
        StatusCode::UNPROCESSABLE_ENTITY,
        "crls[0].revocationDate must be an RFC 3339 time or a YYYY-MM-DD date",
    );

    // GET answers a DER CRL signed by the tenant's revocation-list signer.
    let resp = s
        .client
        .get(s.url("/tenant/trusted-certificates/settings/crl"))
        .basic_auth(a.0, Some(a.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
    let der = resp.bytes().await.unwrap();
    let crl = Crl::parse(&der).expect("a DER CRL");
    assert!(crl.is_revoked(&serial));
    assert!(crl.is_revoked("0a0b"));
    assert_eq!(crl.issuer, "CN=t1 revocation list signer");
    let signer = s
        .client
        .get(s.url("/tenant/trusted-certificates/settings/crl/signer"))
        .basic_auth(a.0, Some(a.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let signer_der = certs::pem::read_certificate(signer.as_bytes()).unwrap();
    crl.verify_signed_by(signer_der.as_ref())
        .expect("signed by the tenant's signer");
    // The signer is generated once.
    let again = s
        .client
        .get(s.url("/tenant/trusted-certificates/settings/crl/signer"))
        .basic_auth(a.0, Some(a.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(signer, again);

    // Turning the offline list off lets the device in again.
    s.put(
        "/tenant/tenants/t1/settings",
        a,
        &json!({"crlOfflineEnabled": false}),
    )
    .await;
    assert!(verify(&s.admin, &[&dev]).is_ok());
}

#[tokio::test]
async fn uploaded_crls_must_be_signed_by_a_tenant_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/crls";
    let root = ca("Uploaded CRL CA");
    let dev = device("dev", &root);
    let revocation = certs::issue::Revocation {
        serial_hex: serial_of(&dev),
        revoked_at: time::OffsetDateTime::now_utc(),
    };
    let crl_der = certs::issue::crl(
        &root.issuer().unwrap(),
        std::slice::from_ref(&revocation),
        1,
        7,
    )
    .unwrap();

    let upload = |body: Vec<u8>| {
        let req = s
            .client
            .post(s.url(path))
            .basic_auth(a.0, Some(a.1))
            .header("content-type", "application/pkix-crl")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status();
            (st, r.json::<serde_json::Value>().await.unwrap())
        }
    };

    let r = upload(crl_der.clone()).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The tenant has no trusted certificates: upload the CA that signed this CRL first",
    );
    s.trust("t1", &login, &root, true).await;
    assert!(verify(&s.admin, &[&dev]).is_ok());

    let stranger = ca("Stranger CA");
    let foreign = certs::issue::crl(
        &stranger.issuer().unwrap(),
        std::slice::from_ref(&revocation),
        1,
        7,
    )
    .unwrap();
    let r = upload(foreign).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The CRL is not issued by any trusted certificate of this tenant (CRL issuer: CN=Stranger CA). A CRL is accepted from a trusted certificate only: to upload the CRL of an issuing CA below your trusted root, trust that issuing CA too; or revoke its certificates by serial number with PUT /tenant/trusted-certificates/settings/crl",
    );
    // Same issuer name, different key: a forged CRL.
    let impostor = ca("Uploaded CRL CA");
    let forged = certs::issue::crl(
        &impostor.issuer().unwrap(),
        std::slice::from_ref(&revocation),
        1,
        7,
    )
    .unwrap();
    let r = upload(forged).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The CRL signature does not verify with the trusted certificate's key",
    );
    let r = upload(b"not a crl".to_vec()).await;
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.1["message"]
            .as_str()
            .unwrap()
            .starts_with("Malformed CRL: "),
        "{}",
        r.1
    );
    let r = upload(Vec::new()).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "The request body is empty: send the CRL (PEM or DER)",
    );
    assert!(
        verify(&s.admin, &[&dev]).is_ok(),
        "refused CRLs change nothing"
    );

    // PEM through a multipart form works as well as raw DER.
    let pem = certs::pem::to_pem("X509 CRL", &crl_der);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(pem.into_bytes()).file_name("ca.crl"),
    );
    let resp = s
        .client
        .post(s.url(path))
        .basic_auth(a.0, Some(a.1))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let info: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(info["issuer"], "CN=Uploaded CRL CA");
    assert_eq!(info["revokedCount"], 1);
    assert_eq!(
        verify(&s.admin, &[&dev]).unwrap_err(),
        certs::VerifyError::Revoked
    );

    // A newer CRL of the same issuer replaces it.
    let empty = certs::issue::crl(&root.issuer().unwrap(), &[], 2, 7).unwrap();
    let r = upload(empty).await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    assert!(verify(&s.admin, &[&dev]).is_ok());
    let (_, list) = s.get(path, a).await;
    assert_eq!(list["crls"].as_array().unwrap().len(), 1);
    assert_eq!(list["crls"][0]["revokedCount"], 0);
}
