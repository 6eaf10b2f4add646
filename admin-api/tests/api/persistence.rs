//! Restart persistence: data written through the API, the process state dropped, the
//! store reopened from the same file: everything is still there, and the first trust
//! snapshot is rebuilt from it.

use std::time::Duration;

use admin_api::DeviceState;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Persistent CA");
    let fp = s.trust("t1", &login, &root, false).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = device("revoked", &root);
    let blocked = device("blocked", &root);
    let ok = device("ok", &root);
    s.put(
        "/tenant/tenants/t1/settings",
        a,
        &json!({"maxChainLength": 4, "clientIdPolicy": "override"}),
    )
    .await;
    s.post(
        "/user/t1/users",
        a,
        &json!({"userName": "ops", "password": "ops-pass-12", "roles": ["ROLE_TENANT_ADMIN"]}),
    )
    .await;
    s.put(
        "/tenant/trusted-certificates/settings/crl",
        a,
        &json!({"crls": [{"serialNumberInHex": serial_of(&revoked)}]}),
    )
    .await;
    s.post(
        "/tenant/tenants/t1/devices",
        a,
        &json!({"commonName": "ok"}),
    )
    .await;
    s.delete("/tenant/tenants/t1/devices/blocked", a).await;
    s.admin.register_device("t1", "ok", &fp).await.unwrap();
    s.admin.device_seen("t1", "ok");
    s.admin.flush_device_seen().await.unwrap();
    let crl = certs::issue::crl(&root.issuer().unwrap(), &[], 1, 7).unwrap();
    let r = s
        .client
        .post(s.url("/tenant/tenants/t1/crls"))
        .basic_auth(a.0, Some(a.1))
        .body(crl)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let crl_signer_before = s
        .client
        .get(s.url("/tenant/trusted-certificates/settings/crl/signer"))
        .basic_auth(a.0, Some(a.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server_root = certs::issue::ca(
        &certs::issue::Subject {
            cn: "Srv Root".into(),
            o: Some("O".into()),
            ou: Some("OU".into()),
            c: Some("DE".into()),
        },
        certs::issue::Validity::days(30),
        certs::issue::KeyType::Rsa2048,
        &Default::default(),
        None,
    )
    .unwrap();
    let server = certs::issue::server(
        &certs::issue::Subject {
            cn: "srv".into(),
            o: Some("O".into()),
            ou: Some("OU".into()),
            c: Some("DE".into()),
        },
        &["srv".into()],
        certs::issue::Validity::days(30),
        certs::issue::KeyType::Rsa2048,
        Some(&server_root.issuer().unwrap()),
        &[],
    )
    .unwrap();
    s.admin
        .import_server_certificate(admin_api::ImportRequest {
            name: "srv".into(),
            crt: server.cert_pem().into_bytes(),
            key: server.key_pem().into_bytes(),
            chain: Some(server_root.cert_pem().into_bytes()),
            passphrase: None,
            validation: true,
            crl_check: false,
            new_passphrase: None,
        })
        .await
        .unwrap();
    let (_, code) = s
        .send(
            reqwest::Method::POST,
            &format!("/tenant/tenants/t1/trusted-certificates-pop/{fp}/verification-code"),
            Some(a),
            None,
        )
        .await;
    let code = code["proofOfPossessionUnsignedVerificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let audit_before = s.get("/audit?pageSize=200", MGMT).await.1["statistics"]["totalElements"]
        .as_u64()
        .unwrap();
    assert!(audit_before >= 10);

    // Drop every piece of process state.
    s.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let s = start(dir.path()).await;
    let (st, t) = s.get("/tenant/tenants/t1", MGMT).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        t["settings"],
        json!({"maxChainLength": 4, "crlOfflineEnabled": true, "crlOnlineEnabled": false, "crlOnlineFailOpen": false, "clientIdPolicy": "override", "maxDevices": 0, "maxAnchors": 0, "maxPublishRate": 0})
    );
    assert_eq!(
        s.get("/tenant/tenants/t1", ("t1/ops", "ops-pass-12"))
            .await
            .0,
        StatusCode::OK,
        "users and hashes persist"
    );
    let (_, c) = s
        .get(&format!("/tenant/tenants/t1/trusted-certificates/{fp}"), a)
        .await;
    assert_eq!(c["autoRegistrationEnabled"], false);
    assert_eq!(c["proofOfPossessionUnsignedVerificationCode"], code);
    let signer_after = s
        .client
        .get(s.url("/tenant/trusted-certificates/settings/crl/signer"))
        .basic_auth(a.0, Some(a.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        crl_signer_before, signer_after,
        "the CRL signer is generated once and kept"
    );
    let (_, crls) = s.get("/tenant/tenants/t1/crls", a).await;
    assert_eq!(crls["crls"].as_array().unwrap().len(), 1);
    let (_, devices) = s.get("/tenant/tenants/t1/devices", a).await;
    let devs = devices["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    let okd = devs.iter().find(|d| d["commonName"] == "ok").unwrap();
    assert!(okd["lastConnection"].is_string() && okd["firstConnection"].is_string());
    assert_eq!(okd["anchorFingerprint"], fp);
    assert_eq!(
        s.admin.device_admission("t1", "blocked").await.unwrap(),
        DeviceState::Blocked
    );
    let audit_after = s.get("/audit?pageSize=200", MGMT).await.1["statistics"]["totalElements"]
        .as_u64()
        .unwrap();
    assert_eq!(
        audit_after, audit_before,
        "the audit log persists (a restart with the same password writes nothing)"
    );

    // The first snapshot after the restart is built from the stored state.
    let trust = s.admin.trust_store().borrow().clone();
    assert_eq!(trust.anchor_count(), 1);
    let policy = trust.policy("t1").unwrap();
    assert_eq!(policy.max_chain_length, 4);
    assert!(policy.client_id_override);
    assert!(policy.blocked_devices.contains("blocked"));
    assert!(trust.is_blocked("t1", "blocked"));
    assert_eq!(
        verify(&s.admin, &[&revoked]).unwrap_err(),
        certs::VerifyError::Revoked
    );
    assert_eq!(&*verify(&s.admin, &[&ok]).unwrap().tenant, "t1");
    assert!(
        verify(&s.admin, &[&blocked]).is_ok(),
        "blocking is the broker's CONNECT decision, not a TLS one"
    );
    let server_cert = s
        .admin
        .server_certificate()
        .borrow()
        .clone()
        .expect("server certificate restored");
    assert_eq!(server_cert.chain[0].as_ref(), server.cert_der.as_ref());
    assert!(certs::keys::key_matches_certificate(
        &server_cert.key,
        server.cert_der.as_ref()
    ));
}
