//! Proof of possession with the signature `openssl dgst -sha256 -sign ca.key code.txt |
//! base64 -w0` makes.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn proof_of_possession_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("PoP CA");
    let fp = s.trust("t1", &login, &root, true).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let base = format!("/tenant/tenants/t1/trusted-certificates-pop/{fp}");

    let none = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": "AAAA"}),
        )
        .await;
    assert_error(
        &none,
        StatusCode::CONFLICT,
        "No verification code was requested for this certificate: request one with POST .../verification-code",
    );

    let (st, c) = s
        .send(
            reqwest::Method::POST,
            &format!("{base}/verification-code"),
            Some(a),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    let code = c["proofOfPossessionUnsignedVerificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code.len(), 32);
    assert!(c["proofOfPossessionVerificationCodeUsableUntil"].is_string());
    assert_eq!(c["proofOfPossessionValid"], false);

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca.key"), root.key_pem()).unwrap();
    std::fs::write(tmp.path().join("code.txt"), &code).unwrap();
    let other = ca("Not the PoP CA");
    std::fs::write(tmp.path().join("other.key"), other.key_pem()).unwrap();

    let wrong = shell(
        tmp.path(),
        "openssl dgst -sha256 -sign other.key code.txt | base64 -w0",
    );
    let r = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": wrong}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        admin_api::routes::pop::WRONG_SIGNATURE,
    );
    let r = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": "***not base64***"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "proofOfPossessionSignedVerificationCode is not valid base64",
    );

    let signed = shell(
        tmp.path(),
        "openssl dgst -sha256 -sign ca.key code.txt | base64 -w0",
    );
    let (st, c) = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": signed}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["proofOfPossessionValid"], true);
    assert!(
        c["proofOfPossessionUnsignedVerificationCode"].is_null(),
        "the code is used up"
    );
    let (_, stored) = s
        .get(&format!("/tenant/tenants/t1/trusted-certificates/{fp}"), a)
        .await;
    assert_eq!(stored["proofOfPossessionValid"], true);

    // The code cannot be replayed.
    let again = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": signed}),
        )
        .await;
    assert_eq!(again.0, StatusCode::CONFLICT);

    // A code signed as `echo code > code.txt` writes it (trailing newline) is accepted too.
    let (_, c) = s
        .send(
            reqwest::Method::POST,
            &format!("{base}/verification-code"),
            Some(a),
            None,
        )
        .await;
    let code = c["proofOfPossessionUnsignedVerificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(tmp.path().join("code.txt"), format!("{code}\n")).unwrap();
    let signed = shell(
        tmp.path(),
        "openssl dgst -sha256 -sign ca.key code.txt | base64 -w0",
    );
    let (st, _) = s
        .post(
            &format!("{base}/pop"),
            a,
            &json!({"proofOfPossessionSignedVerificationCode": signed}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    assert_error(
        &s.send(
            reqwest::Method::POST,
            "/tenant/tenants/t1/trusted-certificates-pop/abcd/verification-code",
            Some(a),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "Trusted certificate abcd not found",
    );
}
