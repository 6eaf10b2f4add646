//! A full disk, simulated portably with a database size cap (`max_database_bytes`,
//! SQLite's `max_page_count`: the same SQLITE_FULL a full disk gives): the API answers
//! 507 with a clear message, reads keep working, nothing half-written appears, and
//! after a restart without the cap everything committed is there and the file is sound.

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn a_full_database_answers_507_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(admin_api::DATABASE_FILE);

    // Some data written without a cap.
    let s = start(dir.path()).await;
    let login = s.tenant("t1").await;
    let first = s.trust("t1", &login, &ca("Before Full CA"), false).await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    s.stop().await;

    // Reopened with a cap at its current size: uploads fill the free space, then 507.
    let mut capped = config(dir.path());
    capped.max_database_bytes = Some(1);
    let s = start_with(capped).await;
    let a: Creds = (&login, TENANT_PASS);
    let mut stored = vec![first.clone()];
    let mut refused = None;
    for i in 0..300 {
        let root = ca(&format!("Filling CA {i} {}", "x".repeat(200)));
        let got = s
            .post(
                "/tenant/tenants/t1/trusted-certificates",
                a,
                &upload_body(&root, &format!("ca {i} {}", "n".repeat(100)), false),
            )
            .await;
        match got.0 {
            StatusCode::CREATED => stored.push(got.1["fingerprint"].as_str().unwrap().into()),
            _ => {
                assert_error(
                    &got,
                    StatusCode::INSUFFICIENT_STORAGE,
                    admin_api::error::STORAGE_FULL,
                );
                assert_eq!(got.1["error"], "insufficient_storage");
                refused = Some(root);
                break;
            }
        }
    }
    let refused = refused.expect("the capped database fills up within 300 uploads");
    let refused_fp = fingerprint_of(&refused);

    // Reads work; the refused upload is not visible; other writes are refused alike.
    let list = |v: &Value| -> Vec<String> {
        v["trustedCertificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["fingerprint"].as_str().unwrap().to_string())
            .collect()
    };
    let (st, body) = s
        .get("/tenant/tenants/t1/trusted-certificates?pageSize=2000", a)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut listed = list(&body);
    listed.sort();
    let mut expected = stored.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let (st, _) = s
        .get(
            &format!("/tenant/tenants/t1/trusted-certificates/{refused_fp}"),
            a,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let mut tenants = vec!["t1".to_string()];
    let mut refused_tenant = None;
    for i in 2..300 {
        let id = format!("t{i}");
        let got = s
            .post(
                "/tenant/tenants",
                MGMT,
                &serde_json::json!({"id": id, "company": "c".repeat(250), "adminName": "admin", "adminPass": TENANT_PASS}),
            )
            .await;
        if got.0 == StatusCode::CREATED {
            tenants.push(id);
            continue;
        }
        assert_error(
            &got,
            StatusCode::INSUFFICIENT_STORAGE,
            admin_api::error::STORAGE_FULL,
        );
        refused_tenant = Some(id);
        break;
    }
    let refused_tenant = refused_tenant.expect("tenant creation is refused too");
    let (st, _) = s
        .get(&format!("/tenant/tenants/{refused_tenant}"), MGMT)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;

    // The file is sound and holds exactly what was acknowledged.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let s = start(dir.path()).await;
    let (st, body) = s
        .get("/tenant/tenants/t1/trusted-certificates?pageSize=2000", a)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut listed = list(&body);
    listed.sort();
    assert_eq!(listed, expected);
    for id in &tenants {
        let (st, body) = s.get(&format!("/tenant/tenants/{id}"), MGMT).await;
        assert_eq!(st, StatusCode::OK, "{id}: {body}");
    }
    let (st, _) = s
        .get(&format!("/tenant/tenants/{refused_tenant}"), MGMT)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // With space again, the refused upload goes through.
    let (st, body) = s
        .post(
            "/tenant/tenants/t1/trusted-certificates",
            a,
            &upload_body(&refused, "after", false),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    s.stop().await;
}
