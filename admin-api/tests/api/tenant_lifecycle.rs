//! Limits are the management tenant's alone; a deleted tenant leaves nothing to a
//! tenant created later with the same id.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_tenant_admin_cannot_lift_its_own_limits_but_keeps_its_trust_choices() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let path = "/tenant/tenants/t1/settings";
    let (st, b) = s
        .put(
            path,
            MGMT,
            &json!({"maxDevices": 10, "maxAnchors": 5, "maxPublishRate": 100}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");

    let r = s.put(path, a, &json!({"maxDevices": 0})).await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "Only the management administrator can change the limits maxDevices, maxAnchors and maxPublishRate (PUT /tenant/tenants/t1/settings as a management admin); this request changes maxDevices. Leave them out (or unchanged) to change the tenant's own settings",
    );
    let r = s
        .put(
            path,
            a,
            &json!({"maxChainLength": 3, "maxDevices": 10, "maxAnchors": 6, "maxPublishRate": 0}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "Only the management administrator can change the limits maxDevices, maxAnchors and maxPublishRate (PUT /tenant/tenants/t1/settings as a management admin); this request changes maxAnchors, maxPublishRate. Leave them out (or unchanged) to change the tenant's own settings",
    );
    let (_, now) = s.get(path, a).await;
    assert_eq!(
        now,
        json!({"maxChainLength": 2, "crlOfflineEnabled": true, "crlOnlineEnabled": false, "crlOnlineFailOpen": false, "clientIdPolicy": "strict", "maxDevices": 10, "maxAnchors": 5, "maxPublishRate": 100}),
        "nothing changed"
    );

    // The tenant's own trust choices, with the limits repeated unchanged (a client that
    // sends back what it read): accepted.
    let (st, b) = s
        .put(
            path,
            a,
            &json!({"maxChainLength": 3, "crlOfflineEnabled": false, "crlOnlineEnabled": true, "clientIdPolicy": "override", "maxDevices": 10, "maxAnchors": 5, "maxPublishRate": 100}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        b,
        json!({"maxChainLength": 3, "crlOfflineEnabled": false, "crlOnlineEnabled": true, "crlOnlineFailOpen": false, "clientIdPolicy": "override", "maxDevices": 10, "maxAnchors": 5, "maxPublishRate": 100})
    );

    // The management admin changes limits through the same call.
    let (st, b) = s.put(path, MGMT, &json!({"maxDevices": 20})).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["maxDevices"], 20);
}

#[tokio::test]
async fn a_recreated_tenant_inherits_nothing_of_the_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);
    let root = ca("Old Root");
    let dev = device("old-device", &root);
    let fp = fingerprint_of(&root);
    s.trust("t1", &login, &root, true).await;
    let (st, b) = s
        .send(
            Method::POST,
            &format!("/tenant/tenants/t1/trusted-certificates-pop/{fp}/verification-code"),
            Some(a),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = s
        .post(
            "/tenant/tenants/t1/devices",
            a,
            &json!({"commonName": "old-device"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (st, b) = s
        .put(
            "/tenant/trusted-certificates/settings/crl",
            a,
            &json!({"crls": [{"serialNumberInHex": serial_of(&dev)}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = s
        .post(
            "/user/t1/users",
            a,
            &json!({"userName": "reader", "password": "reader-pass-1", "roles": ["ROLE_TENANT_READ"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (st, b) = s
        .put(
            "/tenant/tenants/t1/settings",
            a,
            &json!({"maxChainLength": 4}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // A few failed logins of the old admin.
    for _ in 0..2 {
        let r = s
            .get("/tenant/tenants/t1", (&login, "wrong-password"))
            .await;
        assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    }
    let (_, old_audit) = s.get("/audit?pageSize=100", a).await;
    let old_total = old_audit["statistics"]["totalElements"].as_u64().unwrap();
    assert!(old_total >= 6, "{old_audit}");

    let (st, b) = s.delete("/tenant/tenants/t1", MGMT).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    let (st, b) = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"id": "t1", "company": "New owner", "adminName": "admin", "adminPass": "new-owner-pass"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let n: Creds = ("t1/admin", "new-owner-pass");

    // The old password is gone with the old user; the reader too.
    assert_eq!(
        s.get("/tenant/tenants/t1", a).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.get("/tenant/tenants/t1", ("t1/reader", "reader-pass-1"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (st, audit) = s.get("/audit?pageSize=100", n).await;
    assert_eq!(st, StatusCode::OK, "{audit}");
    let records = audit["auditRecords"].as_array().unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["TENANT_CREATED"],
        "{audit}"
    );
    assert_eq!(records[0]["detail"], "company New owner, first admin admin");
    let (_, certs) = s.get("/tenant/tenants/t1/trusted-certificates", n).await;
    assert_eq!(certs["statistics"]["totalElements"], 0, "{certs}");
    let (_, devices) = s.get("/tenant/tenants/t1/devices", n).await;
    assert_eq!(devices["statistics"]["totalElements"], 0, "{devices}");
    let (_, users) = s.get("/user/t1/users", n).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    let (_, crls) = s.get("/tenant/tenants/t1/crls", n).await;
    assert_eq!(crls["crls"], json!([]), "{crls}");
    let (_, settings) = s.get("/tenant/tenants/t1/settings", n).await;
    assert_eq!(settings["maxChainLength"], 2, "{settings}");

    // The old manual revocation list is gone: the same root re-uploaded by the new
    // owner verifies the old device; no verification code is outstanding.
    let up = s
        .post(
            "/tenant/tenants/t1/trusted-certificates",
            n,
            &upload_body(&root, "ca", true),
        )
        .await;
    assert_eq!(up.0, StatusCode::CREATED, "{}", up.1);
    assert!(up.1["proofOfPossessionUnsignedVerificationCode"].is_null());
    assert!(verify(&s.admin, &[&dev]).is_ok());

    // The management admin still reads the old records, under the archived name.
    let (_, all) = s.get("/audit?pageSize=100", MGMT).await;
    let archived: Vec<&serde_json::Value> = all["auditRecords"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["tenant"]
                .as_str()
                .is_some_and(|t| t.starts_with("t1.deleted-"))
        })
        .collect();
    assert_eq!(archived.len() as u64, old_total + 1, "{all}");
    assert!(archived.iter().any(|r| r["action"] == "TENANT_DELETED"));
}

/// `maxAnchors` holds against uploads that arrive together: the store counts the
/// tenant's certificates inside the insert transaction (the early check reads the
/// published snapshot, which concurrent uploads all see before any of them lands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_cannot_pass_the_anchor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let (st, b) = s
        .put(
            "/tenant/tenants/t1/settings",
            MGMT,
            &json!({"maxAnchors": 2}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let cas: Vec<_> = (0..8).map(|i| ca(&format!("CA {i}"))).collect();
    let path = "/tenant/tenants/t1/trusted-certificates";
    let bodies: Vec<_> = cas.iter().map(|c| upload_body(c, "ca", true)).collect();
    let creds = (login.as_str(), TENANT_PASS);
    let (r0, r1, r2, r3, r4, r5, r6, r7) = tokio::join!(
        s.post(path, creds, &bodies[0]),
        s.post(path, creds, &bodies[1]),
        s.post(path, creds, &bodies[2]),
        s.post(path, creds, &bodies[3]),
        s.post(path, creds, &bodies[4]),
        s.post(path, creds, &bodies[5]),
        s.post(path, creds, &bodies[6]),
        s.post(path, creds, &bodies[7]),
    );
    let answers = [r0, r1, r2, r3, r4, r5, r6, r7];
    let created = answers
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .count();
    let statuses: Vec<u16> = answers.iter().map(|(st, _)| st.as_u16()).collect();
    assert_eq!(created, 2, "exactly the limit is stored: {statuses:?}");
    for (st, b) in answers.iter().filter(|(st, _)| *st != StatusCode::CREATED) {
        assert_eq!(*st, StatusCode::CONFLICT, "{b}");
        let m = b["message"].as_str().unwrap_or_default();
        assert!(
            m.starts_with("Tenant t1 has reached its limit of 2 trusted certificates ("),
            "{b}"
        );
    }
    let (st, b) = s.get(path, creds).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["statistics"]["totalElements"], 2, "{b}");
}
