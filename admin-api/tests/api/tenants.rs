//! Authentication, the login limiter, bootstrap, tenants, users and tenant isolation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn authentication_errors_are_401_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;

    let none = s.send(Method::GET, "/tenant/tenants", None, None).await;
    assert_error(
        &none,
        StatusCode::UNAUTHORIZED,
        "Authentication required: send Authorization: Basic base64(\"tenantId/user:password\")",
    );
    let resp = s.client.get(s.url("/tenant/tenants")).send().await.unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"broker admin\""
    );

    let no_tenant = s.get("/tenant/tenants", ("admin", ADMIN_PASS)).await;
    assert_error(
        &no_tenant,
        StatusCode::UNAUTHORIZED,
        "The user name must be given as tenantId/userName (for example management/admin)",
    );
    let wrong = s.get("/tenant/tenants", ("management/admin", "nope")).await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "Invalid credentials");
    let unknown = s.get("/tenant/tenants", ("ghost/admin", "nope")).await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "Invalid credentials");

    let garbage = s
        .client
        .get(s.url("/tenant/tenants"))
        .header("authorization", "Basic !!!")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = garbage.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Malformed Authorization header: expected Basic base64(\"tenantId/user:password\")"
    );
    let ok = s.get("/tenant/tenants", MGMT).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.tenant("t1").await;
    for _ in 0..3 {
        let r = s
            .get("/tenant/tenants", ("management/admin", "guess"))
            .await;
        assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, without a password check.
    let locked = s
        .client
        .get(s.url("/tenant/tenants"))
        .basic_auth(ADMIN_USER, Some(ADMIN_PASS))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = locked.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");
    let unit = if retry == 1 { "second" } else { "seconds" };
    assert_eq!(
        body["message"],
        format!("Too many failed logins; try again in {retry} {unit}")
    );
    // Another user is not affected.
    let other = s.get("/tenant/tenants/t1", ("t1/admin", TENANT_PASS)).await;
    assert_eq!(other.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(s.get("/tenant/tenants", MGMT).await.0, StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_source_address_across_user_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    // One address guessing a different name each time: no name reaches its own limit
    // (3 in the tests), but the address does after 10 times as many.
    for i in 0..30 {
        let r = s
            .get("/tenant/tenants", (&*format!("management/guess-{i}"), "x"))
            .await;
        assert_eq!(r.0, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let (status, body) = s.get("/tenant/tenants", MGMT).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Too many failed logins; try again in"),
        "{body}"
    );
    // Another address is not affected.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = other
        .get(s.url("/tenant/tenants"))
        .basic_auth(ADMIN_USER, Some(ADMIN_PASS))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn generated_admin_password_is_written_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.admin_password = None;
    let s = start_with(cfg.clone()).await;
    let file = dir.path().join(admin_api::ADMIN_PASSWORD_FILE);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 24);
    assert_eq!(
        s.get("/tenant/tenants", (ADMIN_USER, &password)).await.0,
        StatusCode::OK
    );
    let db_mode = std::fs::metadata(dir.path().join("broker.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(db_mode & 0o777, 0o600);
    s.stop().await;

    // A restart keeps the password and the file (still the password).
    let written = std::fs::read_to_string(&file).unwrap();
    let s = start_with(cfg.clone()).await;
    assert_eq!(
        s.get("/tenant/tenants", (ADMIN_USER, &password)).await.0,
        StatusCode::OK
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    s.stop().await;

    // BROKER_ADMIN_PASSWORD set later wins (the recovery path), and the file that no
    // longer holds the password is gone: the store is the one source of truth.
    cfg.admin_password = Some("recovered-pass".into());
    let s = start_with(cfg.clone()).await;
    assert!(!file.exists(), "outdated admin-password file removed");
    assert_eq!(
        s.get("/tenant/tenants", (ADMIN_USER, "recovered-pass"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/tenant/tenants", (ADMIN_USER, &password)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let audit = s
        .get("/audit?pageSize=50", (ADMIN_USER, "recovered-pass"))
        .await;
    assert!(audit.1["auditRecords"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "PASSWORD_RESET"));
    s.stop().await;

    // A file that disagrees with the store (edited, or the password changed over the
    // API) is removed at the next start too; the password stays the stored one.
    std::fs::write(&file, "not-the-password\n").unwrap();
    cfg.admin_password = None;
    let s = start_with(cfg).await;
    assert!(!file.exists(), "misleading admin-password file removed");
    assert_eq!(
        s.get("/tenant/tenants", (ADMIN_USER, "recovered-pass"))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tenant_lifecycle_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, t) = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"id": "acme", "company": "ACME Corp", "domain": "acme.example", "adminName": "boss", "adminPass": "boss-pass-1"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    assert_eq!(t["id"], "acme");
    assert_eq!(t["company"], "ACME Corp");
    assert_eq!(t["domain"], "acme.example");
    assert_eq!(t["status"], "ACTIVE");
    assert_eq!(
        t["settings"],
        json!({"maxChainLength": 2, "crlOfflineEnabled": true, "crlOnlineEnabled": false, "crlOnlineFailOpen": false, "clientIdPolicy": "strict", "maxDevices": 0, "maxAnchors": 0, "maxPublishRate": 0})
    );
    assert!(!t.to_string().contains("boss-pass-1"));

    // Generated id.
    let (st, gen) = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"company": "Gen", "adminName": "a", "adminPass": "gen-pass-12"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let gen_id = gen["id"].as_str().unwrap().to_string();
    assert!(gen_id.starts_with('t') && gen_id.len() == 9, "{gen_id}");

    let dup = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"id": "acme", "company": "X", "adminName": "a", "adminPass": "xxxxxxxx"}),
        )
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "Tenant acme already exists");
    let bad_id = s
        .post("/tenant/tenants", MGMT, &json!({"id": "Ünicode tenant", "company": "X", "adminName": "a", "adminPass": "xxxxxxxx"}))
        .await;
    assert_error(
        &bad_id,
        StatusCode::UNPROCESSABLE_ENTITY,
        "id must be 1 to 32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
    );
    let short = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"id": "x1", "company": "X", "adminName": "a", "adminPass": "short"}),
        )
        .await;
    assert_error(
        &short,
        StatusCode::UNPROCESSABLE_ENTITY,
        "adminPass must be 8 to 256 characters long",
    );
    let missing = s
        .post(
            "/tenant/tenants",
            MGMT,
            &json!({"id": "x1", "adminName": "a", "adminPass": "xxxxxxxx"}),
        )
        .await;
    assert_eq!(missing.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        missing.1["message"]
            .as_str()
            .unwrap()
            .contains("missing field `company`"),
        "{}",
        missing.1
    );

    let (st, list) = s
        .get("/tenant/tenants?pageSize=2&currentPage=1", MGMT)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["tenants"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["statistics"],
        json!({"pageSize": 2, "currentPage": 1, "totalPages": 2, "totalElements": 3})
    );

    let (st, up) = s
        .put("/tenant/tenants/acme", MGMT, &json!({"company": "ACME GmbH", "settings": {"maxChainLength": 3, "clientIdPolicy": "override"}}))
        .await;
    assert_eq!(st, StatusCode::OK, "{up}");
    assert_eq!(up["company"], "ACME GmbH");
    assert_eq!(up["settings"]["maxChainLength"], 3);
    let policy = s
        .admin
        .trust_store()
        .borrow()
        .policy("acme")
        .cloned()
        .unwrap();
    assert_eq!(policy.max_chain_length, 3);
    assert!(policy.client_id_override);

    let too_long = s
        .put(
            "/tenant/tenants/acme/settings",
            MGMT,
            &json!({"maxChainLength": 11}),
        )
        .await;
    assert_error(
        &too_long,
        StatusCode::UNPROCESSABLE_ENTITY,
        "maxChainLength must be between 2 and 10",
    );
    let bad_policy = s
        .put(
            "/tenant/tenants/acme/settings",
            MGMT,
            &json!({"clientIdPolicy": "lenient"}),
        )
        .await;
    assert_error(
        &bad_policy,
        StatusCode::UNPROCESSABLE_ENTITY,
        "clientIdPolicy must be strict or override",
    );
    let (st, settings) = s
        .put(
            "/tenant/tenants/acme/settings",
            ("acme/boss", "boss-pass-1"),
            &json!({"crlOfflineEnabled": false}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{settings}");
    assert_eq!(settings["crlOfflineEnabled"], false);
    assert!(
        !s.admin
            .trust_store()
            .borrow()
            .policy("acme")
            .unwrap()
            .crl_enabled
    );
    assert_eq!(s.admin.tenant_settings("acme").unwrap().max_chain_length, 3);

    let mgmt_delete = s.delete("/tenant/tenants/management", MGMT).await;
    assert_error(
        &mgmt_delete,
        StatusCode::CONFLICT,
        "The management tenant cannot be deleted",
    );
    assert_eq!(
        s.delete(&format!("/tenant/tenants/{gen_id}"), MGMT).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &s.get(&format!("/tenant/tenants/{gen_id}"), MGMT).await,
        StatusCode::NOT_FOUND,
        &format!("Tenant {gen_id} not found"),
    );
    // Its users are gone with it.
    assert_eq!(
        s.get(
            "/tenant/tenants/acme",
            (&format!("{gen_id}/a") as &str, "gen-pass-12")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tenant_admins_see_only_their_tenant_and_ids_do_not_leak() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = s.tenant("ta").await;
    s.tenant("tb").await;
    let a: Creds = (&a, TENANT_PASS);

    let other = s.get("/tenant/tenants/tb", a).await;
    let missing = s.get("/tenant/tenants/nosuch", a).await;
    assert_error(&other, StatusCode::NOT_FOUND, "Tenant tb not found");
    assert_error(&missing, StatusCode::NOT_FOUND, "Tenant nosuch not found");
    for path in [
        "/tenant/tenants/tb/trusted-certificates",
        "/tenant/tenants/tb/devices",
        "/tenant/tenants/tb/crls",
        "/tenant/tenants/tb/settings",
        "/user/tb/users",
    ] {
        assert_error(
            &s.get(path, a).await,
            StatusCode::NOT_FOUND,
            "Tenant tb not found",
        );
    }
    assert_error(
        &s.delete("/tenant/tenants/tb/devices/d1", a).await,
        StatusCode::NOT_FOUND,
        "Tenant tb not found",
    );
    assert_error(
        &s.post(
            "/tenant/tenants/tb/trusted-certificates",
            a,
            &upload_body(&ca("x"), "x", true),
        )
        .await,
        StatusCode::NOT_FOUND,
        "Tenant tb not found",
    );

    assert_eq!(s.get("/tenant/tenants/ta", a).await.0, StatusCode::OK);
    assert_error(
        &s.get("/tenant/tenants", a).await,
        StatusCode::FORBIDDEN,
        "Only the management tenant can list tenants",
    );
    assert_error(
        &s.post(
            "/tenant/tenants",
            a,
            &json!({"company": "X", "adminName": "a", "adminPass": "xxxxxxxx"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "Only the management admin can create tenants",
    );
    assert_error(
        &s.put("/tenant/tenants/ta", a, &json!({"company": "mine"}))
            .await,
        StatusCode::FORBIDDEN,
        "Only the management admin can change tenants",
    );
    assert_error(
        &s.delete("/tenant/tenants/ta", a).await,
        StatusCode::FORBIDDEN,
        "Only the management admin can delete tenants",
    );
}

#[tokio::test]
async fn users_roles_and_argon2_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let a: Creds = (&login, TENANT_PASS);

    let (st, u) = s
        .post("/user/t1/users", a, &json!({"userName": "reader", "password": "reader-pass", "roles": ["ROLE_TENANT_READ"]}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{u}");
    assert_eq!(u["userName"], "reader");
    assert_eq!(u["roles"], json!(["ROLE_TENANT_READ"]));
    assert!(u.get("password").is_none() && !u.to_string().contains("reader-pass"));

    let dup = s
        .post("/user/t1/users", a, &json!({"userName": "reader", "password": "reader-pass", "roles": ["ROLE_TENANT_READ"]}))
        .await;
    assert_error(
        &dup,
        StatusCode::CONFLICT,
        "User reader already exists in tenant t1",
    );
    let bad_role = s
        .post(
            "/user/t1/users",
            a,
            &json!({"userName": "x", "password": "xxxxxxxx", "roles": ["ROLE_GOD"]}),
        )
        .await;
    assert_error(
        &bad_role,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Unknown role ROLE_GOD: expected ROLE_TENANT_ADMIN or ROLE_TENANT_READ",
    );
    let bad_name = s
        .post(
            "/user/t1/users",
            a,
            &json!({"userName": "a/b", "password": "xxxxxxxx", "roles": ["ROLE_TENANT_READ"]}),
        )
        .await;
    assert_error(
        &bad_name,
        StatusCode::UNPROCESSABLE_ENTITY,
        "userName must be 1 to 64 characters of letters, digits, '.', '_', '-', '@' or '+'",
    );

    let reader: Creds = ("t1/reader", "reader-pass");
    let (st, list) = s.get("/user/t1/users", reader).await;
    assert_eq!(st, StatusCode::OK);
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "reader"]);
    assert_error(
        &s.post(
            "/user/t1/users",
            reader,
            &json!({"userName": "y", "password": "xxxxxxxx", "roles": ["ROLE_TENANT_ADMIN"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "This operation requires the role ROLE_TENANT_ADMIN",
    );
    assert_error(
        &s.post(
            "/tenant/tenants/t1/devices",
            reader,
            &json!({"commonName": "d"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "This operation requires the role ROLE_TENANT_ADMIN",
    );
    assert_error(
        &s.delete("/user/t1/users/admin", a).await,
        StatusCode::CONFLICT,
        "You cannot delete your own user",
    );

    // Hashes in the database are argon2id, never the password.
    let conn = rusqlite::Connection::open(dir.path().join("broker.db")).unwrap();
    let hash: String = conn
        .query_row(
            "SELECT password_hash FROM users WHERE tenant_id='t1' AND user_name='reader'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("reader-pass"));

    assert_eq!(
        s.delete("/user/t1/users/reader", a).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &s.get("/user/t1/users/reader", a).await,
        StatusCode::NOT_FOUND,
        "User reader not found",
    );
    assert_error(
        &s.get("/tenant/tenants/t1", reader).await,
        StatusCode::UNAUTHORIZED,
        "Invalid credentials",
    );
    // The management admin manages any tenant's users.
    let (st, _) = s
        .post(
            "/user/t1/users",
            MGMT,
            &json!({"userName": "ops", "password": "ops-pass-1", "roles": ["ROLE_TENANT_ADMIN"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
}
