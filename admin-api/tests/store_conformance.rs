//! One store test suite, written once over `Arc<dyn Store>`, run against the embedded
//! SQLite store and against PostgreSQL (a real server this test starts: see
//! `support/postgres.rs`). Then what only the shared database has: several nodes
//! migrating at once, change notifications between nodes, a lost notification repaired,
//! and the database going away and coming back.

#[path = "support/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_api::store::postgres::{PostgresOptions, PostgresStore};
use admin_api::store::*;
use admin_api::SqliteStore;
use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::AnchorStatus;
use postgres::Postgres;

const PAGE: PageRequest = PageRequest { size: 50, page: 1 };

fn tenant(id: &str) -> TenantRecord {
    TenantRecord {
        id: id.into(),
        company: format!("{id} Inc."),
        domain: Some(format!("{id}.example")),
        created_at: 1_700_000_000,
        settings: TenantSettings::default(),
    }
}

fn user(tenant: &str, name: &str) -> UserRecord {
    UserRecord {
        tenant: tenant.into(),
        user_name: name.into(),
        password_hash: "$argon2id$v=19$m=256,t=1,p=1$c2FsdA$aGFzaA".into(),
        roles: vec![Role::TenantAdmin, Role::TenantRead],
        created_at: 1_700_000_001,
    }
}

fn audit(tenant: &str, action: &str) -> AuditEntry {
    AuditEntry::new("system", Some(tenant), action)
}

fn root(cn: &str) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .unwrap()
}

fn sub_ca(cn: &str, parent: &Issued) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        Some(&parent.issuer().unwrap()),
    )
    .unwrap()
}

/// The record the upload route stores for `ca`.
fn record(tenant: &str, ca: &Issued) -> TrustedCertRecord {
    let der = ca.cert_der.as_ref().to_vec();
    let info = certs::CertInfo::parse(&der).unwrap();
    let spki_der = x509_parser::parse_x509_certificate(&der)
        .unwrap()
        .1
        .public_key()
        .raw
        .to_vec();
    TrustedCertRecord {
        tenant: tenant.into(),
        fingerprint: info.fingerprint_sha1.clone(),
        name: info.common_name.clone().unwrap_or_default(),
        status: AnchorStatus::Enabled,
        auto_registration: true,
        cert_der: der,
        spki_der,
        subject: info.subject,
        issuer: info.issuer,
        serial_hex: info.serial_hex,
        not_before: info.not_before,
        not_after: info.not_after,
        algorithm_name: info.signature_algorithm,
        version: info.version,
        pop_valid: false,
        pop_code: None,
        pop_code_expires: None,
        created_at: 1_700_000_002,
    }
}

fn added(r: &TrustedCertRecord) -> AuditEntry {
    audit(&r.tenant, "CERTIFICATE_ADDED").fingerprint(&r.fingerprint)
}

async fn upload(store: &Arc<dyn Store>, r: &TrustedCertRecord) -> StoreResult<()> {
    store
        .insert_certificates(vec![r.clone()], vec![added(r)])
        .await
}

async fn audit_actions(store: &Arc<dyn Store>, tenant: Option<&str>) -> Vec<String> {
    store
        .audit(
            tenant,
            PageRequest {
                size: 1000,
                page: 1,
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.action)
        .collect()
}

/// The whole suite, on an empty store.
async fn suite(store: Arc<dyn Store>) {
    tenants_and_users(&store).await;
    certificates(&store).await;
    anchor_limit_under_concurrent_uploads(&store).await;
    revocation(&store).await;
    devices(&store).await;
    registration_race(&store).await;
    server_certificate_and_audit(&store).await;
    topic_rules(&store).await;
    enrollment(&store).await;
    tenant_deletion(&store).await;
}

fn ca_record(tenant: &str, fingerprint: &str) -> TenantCaRecord {
    TenantCaRecord {
        tenant: tenant.into(),
        fingerprint: fingerprint.into(),
        key_type: "p256".into(),
        key_encrypted: vec![1, 2, 3],
        device_validity_days: 365,
        renewal_window_days: 30,
        revoke_on_renewal: false,
        state: TenantCaState::Active,
        retire_at: None,
        created_at: 1_700_000_100,
    }
}

fn issued(tenant: &str, serial: &str, cn: &str, not_after: i64) -> IssuedCertRecord {
    IssuedCertRecord {
        tenant: tenant.into(),
        serial_hex: serial.into(),
        common_name: cn.into(),
        not_before: 1_700_000_000,
        not_after,
        ca_fingerprint: "ca".into(),
        enrollment: "simpleenroll".into(),
        cert_der: vec![0x30, 0x00],
        issued_at: 1_700_000_200,
        revoked_at: None,
    }
}

/// Tenant CAs (rotation and retirement), one-time secrets (once, expiry, concurrent
/// use), issued certificates (renewal with revocation, revoke, expiry queries).
async fn enrollment(store: &Arc<dyn Store>) {
    for t in ["est-a", "est-b"] {
        store
            .create_tenant(tenant(t), user(t, "admin"), audit(t, "TENANT_CREATED"))
            .await
            .unwrap();
    }
    // A CA is an anchor of its tenant; a second active one is a conflict.
    let ca1 = record("est-a", &root("EST CA 1"));
    store
        .add_tenant_ca(
            ca1.clone(),
            ca_record("est-a", &ca1.fingerprint),
            None,
            audit("est-a", "CA"),
        )
        .await
        .unwrap();
    assert!(store
        .certificate("est-a", &ca1.fingerprint)
        .await
        .unwrap()
        .is_some());
    let ca2 = record("est-a", &root("EST CA 2"));
    let err = store
        .add_tenant_ca(
            ca2.clone(),
            ca_record("est-a", &ca2.fingerprint),
            None,
            audit("est-a", "CA"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::ActiveCaExists { .. })),
        "{err:?}"
    );
    // The same certificate for another tenant: the upload rules apply.
    let err = store
        .add_tenant_ca(
            ca1.clone(),
            ca_record("est-b", &ca1.fingerprint),
            None,
            audit("est-b", "CA"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::CertificateExists { .. })
        ),
        "{err:?}"
    );
    // Rotation: the old CA retires at the given time, then its anchor is disabled.
    store
        .add_tenant_ca(
            ca2.clone(),
            ca_record("est-a", &ca2.fingerprint),
            Some(2_000),
            audit("est-a", "CA"),
        )
        .await
        .unwrap();
    let cas = store.tenant_cas("est-a").await.unwrap();
    assert_eq!(cas.len(), 2);
    assert_eq!(cas[0].fingerprint, ca2.fingerprint);
    assert_eq!(cas[0].state, TenantCaState::Active);
    assert_eq!(cas[1].state, TenantCaState::Retiring);
    assert_eq!(cas[1].retire_at, Some(2_000));
    assert_eq!(cas[1].key_encrypted, vec![1, 2, 3]);
    assert!(store.retire_due_cas(1_999).await.unwrap().is_empty());
    assert_eq!(
        store.retire_due_cas(2_000).await.unwrap(),
        vec![("est-a".to_string(), ca1.fingerprint.clone())]
    );
    let old = store
        .certificate("est-a", &ca1.fingerprint)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.status, AnchorStatus::Disabled);
    assert_eq!(
        store.tenant_cas("est-a").await.unwrap()[1].state,
        TenantCaState::Retired
    );
    // Deleting the anchor deletes the CA with it.
    store
        .delete_certificate("est-a", &ca1.fingerprint, audit("est-a", "DEL"))
        .await
        .unwrap();
    assert_eq!(store.tenant_cas("est-a").await.unwrap().len(), 1);

    // Secrets: work once, not after expiry, not for another tenant, replaced by a new one.
    let secret = |cn: &str, hash: &str, expires_at: i64| EnrollmentSecretRecord {
        tenant: "est-a".into(),
        common_name: cn.into(),
        secret_hash: hash.into(),
        expires_at,
        created_at: 1_000,
        used_at: None,
    };
    store
        .put_enrollment_secrets(
            "est-a",
            vec![secret("d1", "h1", 5_000), secret("d2", "h2", 5_000)],
            audit("est-a", "SECRETS"),
        )
        .await
        .unwrap();
    let err = store
        .put_enrollment_secrets("nope", vec![secret("d1", "h1", 5_000)], audit("nope", "S"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.enrollment_secrets("est-a", PAGE).await.unwrap().total,
        2
    );
    let mut other = issued("est-b", "0b", "d1", 9_000);
    other.tenant = "est-b".into();
    assert!(!store
        .enroll_with_secret("h1", 4_000, other, audit("est-b", "E"))
        .await
        .unwrap());
    assert!(!store
        .enroll_with_secret(
            "wrong",
            4_000,
            issued("est-a", "0a", "d1", 9_000),
            audit("est-a", "E")
        )
        .await
        .unwrap());
    assert!(
        !store
            .enroll_with_secret(
                "h1",
                5_000,
                issued("est-a", "0a", "d1", 9_000),
                audit("est-a", "E")
            )
            .await
            .unwrap(),
        "expired"
    );
    // Concurrent uses: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enroll_with_secret(
                    "h1",
                    4_000,
                    issued("est-a", &format!("a{i}"), "d1", 9_000),
                    audit("est-a", "E"),
                )
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    let used = store
        .enrollment_secret("est-a", "d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.used_at, Some(4_000));
    // A new secret for the same device replaces the used one.
    store
        .put_enrollment_secrets(
            "est-a",
            vec![secret("d1", "h3", 5_000)],
            audit("est-a", "S"),
        )
        .await
        .unwrap();
    let fresh = store
        .enrollment_secret("est-a", "d1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((fresh.secret_hash.as_str(), fresh.used_at), ("h3", None));
    store
        .delete_enrollment_secret("est-a", "d2", audit("est-a", "D"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .delete_enrollment_secret("est-a", "d2", audit("est-a", "D"))
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Renewal, with the previous certificate revoked in the same transaction.
    let first = store
        .issued_certificates("est-a", PAGE)
        .await
        .unwrap()
        .items;
    assert_eq!(first.len(), 1);
    let mut renewed = issued("est-a", "b1", "d1", 3_000);
    renewed.enrollment = format!("simplereenroll:{}", first[0].serial_hex);
    renewed.issued_at = 1_700_000_300;
    store
        .record_renewal(
            renewed,
            Some(RevokedSerial {
                serial_hex: first[0].serial_hex.clone(),
                revocation_date: 4_100,
            }),
            audit("est-a", "R"),
        )
        .await
        .unwrap();
    let old = store
        .issued_certificate("est-a", &first[0].serial_hex)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.revoked_at, Some(4_100));
    assert!(store
        .revoked_serials("est-a")
        .await
        .unwrap()
        .iter()
        .any(|r| r.serial_hex == first[0].serial_hex));
    let page = store.issued_certificates("est-a", PAGE).await.unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items[0].serial_hex, "b1");
    // Expiry: unrevoked ones only.
    let soon = store.issued_expiring("est-a", 10_000).await.unwrap();
    assert_eq!(
        soon.iter()
            .map(|i| i.serial_hex.as_str())
            .collect::<Vec<_>>(),
        ["b1"]
    );
    let counts = store.issued_expiring_counts(2_000, 10_000).await.unwrap();
    assert_eq!(counts.get("est-a"), Some(&1));
    assert!(!store
        .issued_expiring_counts(3_000, 10_000)
        .await
        .unwrap()
        .contains_key("est-a"));
    // Revoke by hand; another tenant's serial is not found.
    let r = store
        .revoke_issued("est-a", "b1", 4_200, audit("est-a", "X"))
        .await
        .unwrap();
    assert_eq!(r.revoked_at, Some(4_200));
    assert!(matches!(
        store
            .revoke_issued("est-b", "b1", 4_200, audit("est-b", "X"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store
        .issued_expiring("est-a", 10_000)
        .await
        .unwrap()
        .is_empty());

    // Deleting a tenant deletes its CAs, secrets and issued certificates.
    store
        .delete_tenant("est-a", audit("est-a", "TENANT_DELETED"))
        .await
        .unwrap();
    assert!(store.tenant_cas("est-a").await.unwrap().is_empty());
    assert_eq!(
        store.enrollment_secrets("est-a", PAGE).await.unwrap().total,
        0
    );
    assert_eq!(
        store
            .issued_certificates("est-a", PAGE)
            .await
            .unwrap()
            .total,
        0
    );
    store
        .delete_tenant("est-b", audit("est-b", "TENANT_DELETED"))
        .await
        .unwrap();
}

async fn tenants_and_users(store: &Arc<dyn Store>) {
    store
        .create_tenant(
            tenant("acme"),
            user("acme", "admin"),
            audit("acme", "TENANT_CREATED"),
        )
        .await
        .unwrap();
    let err = store
        .create_tenant(
            tenant("acme"),
            user("acme", "admin"),
            audit("acme", "TENANT_CREATED"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::TenantExists(ref t)) if t == "acme"),
        "{err:?}"
    );
    // The failed creation left nothing: one audit record, one user.
    assert_eq!(audit_actions(store, Some("acme")).await, ["TENANT_CREATED"]);
    assert_eq!(store.users("acme").await.unwrap().len(), 1);

    assert_eq!(store.tenant("acme").await.unwrap().unwrap(), tenant("acme"));
    assert!(store.tenant("nope").await.unwrap().is_none());
    assert!(store.ensure_tenant(tenant("beta")).await.unwrap());
    assert!(!store.ensure_tenant(tenant("beta")).await.unwrap());
    let page = store
        .tenants(PageRequest { size: 1, page: 2 })
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, "beta", "ordered by id");

    let mut changed = tenant("acme");
    changed.company = "Acme Two".into();
    changed.domain = None;
    changed.settings = TenantSettings {
        max_chain_length: 5,
        crl_offline_enabled: false,
        crl_online_enabled: true,
        crl_online_fail_open: true,
        client_id_policy: ClientIdPolicy::Override,
        max_devices: 7,
        max_anchors: 9,
        max_publish_rate: 11,
    };
    store
        .update_tenant(changed.clone(), audit("acme", "TENANT_UPDATED"))
        .await
        .unwrap();
    assert_eq!(store.tenant("acme").await.unwrap().unwrap(), changed);
    let err = store
        .update_tenant(tenant("ghost"), audit("ghost", "TENANT_UPDATED"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref m) if m == "Tenant ghost not found"),
        "{err:?}"
    );
    store
        .update_tenant(tenant("acme"), audit("acme", "TENANT_UPDATED"))
        .await
        .unwrap();

    // Users.
    store
        .create_user(user("acme", "bob"), audit("acme", "USER_CREATED"))
        .await
        .unwrap();
    let err = store
        .create_user(user("acme", "bob"), audit("acme", "USER_CREATED"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::UserExists { ref tenant, ref user }) if tenant == "acme" && user == "bob"),
        "{err:?}"
    );
    let err = store
        .create_user(user("ghost", "bob"), audit("ghost", "USER_CREATED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.user("acme", "bob").await.unwrap().unwrap(),
        user("acme", "bob")
    );
    store
        .set_password(
            "acme",
            "bob",
            "$argon2id$new".into(),
            audit("acme", "PASSWORD_CHANGED"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .user("acme", "bob")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$new"
    );
    let err = store
        .set_password(
            "acme",
            "carol",
            "x".into(),
            audit("acme", "PASSWORD_CHANGED"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref m) if m == "User carol not found"),
        "{err:?}"
    );
    let names: Vec<String> = store
        .users("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_name)
        .collect();
    assert_eq!(names, ["admin", "bob"]);
    store
        .delete_user("acme", "bob", audit("acme", "USER_DELETED"))
        .await
        .unwrap();
    let err = store
        .delete_user("acme", "bob", audit("acme", "USER_DELETED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // Every successful change, and only those, is audited, newest first.
    assert_eq!(
        audit_actions(store, Some("acme")).await,
        [
            "USER_DELETED",
            "PASSWORD_CHANGED",
            "USER_CREATED",
            "TENANT_UPDATED",
            "TENANT_UPDATED",
            "TENANT_CREATED"
        ]
    );
}

async fn certificates(store: &Arc<dyn Store>) {
    let root_a = root("Acme Root");
    let rec_a = record("acme", &root_a);
    upload(store, &rec_a).await.unwrap();
    assert_eq!(
        store
            .certificate("acme", &rec_a.fingerprint)
            .await
            .unwrap()
            .unwrap(),
        rec_a
    );
    assert!(store
        .certificate("beta", &rec_a.fingerprint)
        .await
        .unwrap()
        .is_none());

    // The same certificate again, by any tenant.
    for t in ["acme", "beta"] {
        let err = upload(store, &record(t, &root_a)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(Conflict::CertificateExists { ref fingerprint }) if *fingerprint == rec_a.fingerprint),
            "{err:?}"
        );
    }
    // Another tenant: a certificate with the same key, one it issued, one that issued it.
    let mut same_key = record("beta", &root_a);
    same_key.fingerprint = "00".repeat(20);
    let err = upload(store, &same_key).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::PublicKeyTrustedElsewhere { .. })
        ),
        "{err:?}"
    );
    let child = sub_ca("Acme Sub", &root_a);
    let err = upload(store, &record("beta", &child)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::IssuedByAnotherTenantsAnchor { .. })
        ),
        "{err:?}"
    );
    // ... while the owner may add it.
    let rec_child = record("acme", &child);
    upload(store, &rec_child).await.unwrap();
    let beta_root = root("Beta Root");
    let beta_sub = sub_ca("Beta Sub", &beta_root);
    upload(store, &record("acme", &beta_sub)).await.unwrap();
    let err = upload(store, &record("beta", &beta_root))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::IssuerOfAnotherTenantsAnchor { .. })
        ),
        "{err:?}"
    );
    // Unknown tenant.
    let err = upload(store, &record("ghost", &root("Ghost Root")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // All or nothing: the second of two fails, the first is not stored either.
    let fresh = record("beta", &root("Beta Other"));
    let err = store
        .insert_certificates(
            vec![fresh.clone(), record("beta", &root_a)],
            vec![added(&fresh)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::CertificateExists { .. })
        ),
        "{err:?}"
    );
    assert!(store
        .certificate("beta", &fresh.fingerprint)
        .await
        .unwrap()
        .is_none());

    // Listing in upload order, counts, updates.
    let page = store.certificates("acme", PAGE).await.unwrap();
    assert_eq!(page.total, 3);
    let order: Vec<&str> = page.items.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(order, ["Acme Root", "Acme Sub", "Beta Sub"]);
    assert_eq!(store.tenant_anchors("acme").await.unwrap(), page.items);
    let updated = store
        .update_certificate(
            "acme",
            &rec_child.fingerprint,
            CertUpdate {
                name: Some("renamed".into()),
                status: Some(AnchorStatus::Disabled),
                auto_registration: None,
            },
            audit("acme", "CERTIFICATE_UPDATED"),
        )
        .await
        .unwrap();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.status, AnchorStatus::Disabled);
    assert!(updated.auto_registration);
    assert_eq!(
        store
            .certificate("acme", &rec_child.fingerprint)
            .await
            .unwrap()
            .unwrap(),
        updated
    );
    assert_eq!(store.certificate_counts("acme").await.unwrap(), (3, 2));
    let err = store
        .update_certificate(
            "beta",
            &rec_child.fingerprint,
            CertUpdate::default(),
            audit("beta", "X"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "another tenant's certificate: {err:?}"
    );

    // Proof of possession.
    let with_code = store
        .set_verification_code(
            "acme",
            &rec_a.fingerprint,
            "code-1".into(),
            99,
            audit("acme", "POP_CODE"),
        )
        .await
        .unwrap();
    assert_eq!(
        (with_code.pop_code.as_deref(), with_code.pop_code_expires),
        (Some("code-1"), Some(99))
    );
    let proven = store
        .set_proof_of_possession("acme", &rec_a.fingerprint, audit("acme", "POP_VERIFIED"))
        .await
        .unwrap();
    assert!(proven.pop_valid);
    assert_eq!((proven.pop_code, proven.pop_code_expires), (None, None));
    let err = store
        .set_proof_of_possession("acme", "ff", audit("acme", "POP_VERIFIED"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref m) if m == "Trusted certificate ff not found"),
        "{err:?}"
    );

    store
        .delete_certificate(
            "acme",
            &rec_child.fingerprint,
            audit("acme", "CERTIFICATE_DELETED"),
        )
        .await
        .unwrap();
    let err = store
        .delete_certificate(
            "acme",
            &rec_child.fingerprint,
            audit("acme", "CERTIFICATE_DELETED"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.certificate_counts("acme").await.unwrap(), (2, 2));
    // Fingerprints are free again once deleted.
    upload(store, &record("acme", &child)).await.unwrap();
}

/// maxAnchors is counted inside the insert transaction: 8 uploads at once under a limit
/// of 2 store exactly 2, the others are refused with the limit.
async fn anchor_limit_under_concurrent_uploads(store: &Arc<dyn Store>) {
    store
        .create_tenant(
            tenant("limited"),
            user("limited", "admin"),
            audit("limited", "TENANT_CREATED"),
        )
        .await
        .unwrap();
    let mut t = tenant("limited");
    t.settings.max_anchors = 2;
    store
        .update_tenant(t, audit("limited", "TENANT_UPDATED"))
        .await
        .unwrap();
    let recs: Vec<TrustedCertRecord> = (0..8)
        .map(|i| record("limited", &root(&format!("Limited Root {i}"))))
        .collect();
    let tasks: Vec<_> = recs
        .iter()
        .cloned()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move { upload(&store, &r).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(Conflict::AnchorLimit {
                max: 2, have: 2, ..
            })) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(store.certificate_counts("limited").await.unwrap().0, 2);
    let audited = audit_actions(store, Some("limited")).await;
    assert_eq!(
        audited.iter().filter(|a| *a == "CERTIFICATE_ADDED").count(),
        2
    );
}

async fn revocation(store: &Arc<dyn Store>) {
    let serial = |s: &str, d| RevokedSerial {
        serial_hex: s.into(),
        revocation_date: d,
    };
    store
        .add_revoked_serials(
            "acme",
            vec![serial("0b", 10), serial("0a", 11)],
            audit("acme", "REVOKED"),
        )
        .await
        .unwrap();
    store
        .add_revoked_serials("acme", vec![serial("0b", 12)], audit("acme", "REVOKED"))
        .await
        .unwrap();
    assert_eq!(
        store.revoked_serials("acme").await.unwrap(),
        [serial("0a", 11), serial("0b", 12)]
    );
    let err = store
        .add_revoked_serials("ghost", vec![serial("01", 1)], audit("ghost", "REVOKED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    let ca = root("CRL Issuer");
    let der = issue::crl(&ca.issuer().unwrap(), &[], 1, 7).unwrap();
    let crl = |n: u64, der: &[u8]| CrlRecord {
        tenant: "acme".into(),
        issuer: "CN=CRL Issuer".into(),
        issuer_key: "3011310f300d06035504030c06435249".into(),
        der: der.to_vec(),
        this_update: 100 + n as i64,
        next_update: Some(200),
        revoked_count: n,
        uploaded_at: 300,
    };
    store
        .put_crl(crl(1, &der), audit("acme", "CRL_UPLOADED"))
        .await
        .unwrap();
    let newer = issue::crl(&ca.issuer().unwrap(), &[], 2, 7).unwrap();
    store
        .put_crl(crl(2, &newer), audit("acme", "CRL_UPLOADED"))
        .await
        .unwrap();
    assert_eq!(
        store.crls("acme").await.unwrap(),
        [crl(2, &newer)],
        "replaced"
    );

    assert!(store.crl_signer("acme").await.unwrap().is_none());
    let s1 = CrlSigner {
        cert_der: vec![1, 2, 3],
        key_pkcs8: vec![4, 5, 6],
    };
    let s2 = CrlSigner {
        cert_der: vec![7],
        key_pkcs8: vec![8],
    };
    assert_eq!(store.init_crl_signer("acme", s1.clone()).await.unwrap(), s1);
    assert_eq!(
        store.init_crl_signer("acme", s2).await.unwrap(),
        s1,
        "first one kept"
    );
    assert_eq!(store.crl_signer("acme").await.unwrap(), Some(s1));
    assert!(matches!(
        store.crl_signer("ghost").await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    let m = store.trust_material().await.unwrap();
    assert!(m.revoked.contains(&("acme".into(), serial("0b", 12))));
    assert_eq!(m.crls.len(), 1);
    assert_eq!(
        m.tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["acme", "beta", "limited"]
    );
    assert_eq!(m.anchors.len(), 5);
}

async fn devices(store: &Arc<dyn Store>) {
    let pre = DeviceRecord {
        tenant: "acme".into(),
        common_name: "pre-1".into(),
        status: DeviceStatus::Registered,
        anchor_fingerprint: None,
        first_connection: None,
        last_connection: None,
        created_at: 50,
    };
    store
        .preregister_device(pre.clone(), audit("acme", "DEVICE_PREREGISTERED"))
        .await
        .unwrap();
    let err = store
        .preregister_device(pre.clone(), audit("acme", "DEVICE_PREREGISTERED"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::DeviceExists { ref common_name }) if common_name == "pre-1"),
        "{err:?}"
    );
    assert_eq!(store.device("acme", "pre-1").await.unwrap().unwrap(), pre);

    // The first connection of a pre-registered device is recorded once.
    let reg = || audit("acme", "DEVICE_REGISTERED");
    assert!(store
        .register_device("acme", "pre-1", "fp1", 100, reg())
        .await
        .unwrap());
    assert!(!store
        .register_device("acme", "pre-1", "fp1", 110, reg())
        .await
        .unwrap());
    let d = store.device("acme", "pre-1").await.unwrap().unwrap();
    assert_eq!(
        (d.first_connection, d.anchor_fingerprint.as_deref()),
        (Some(100), Some("fp1"))
    );

    // A new device registers itself; a blocked one stays blocked.
    assert!(store
        .register_device("acme", "new-1", "fp1", 120, reg())
        .await
        .unwrap());
    let blocked = store
        .set_device_status(
            "acme",
            "new-1",
            DeviceStatus::Blocked,
            130,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap();
    assert_eq!(blocked.status, DeviceStatus::Blocked);
    assert!(!store
        .register_device("acme", "new-1", "fp1", 140, reg())
        .await
        .unwrap());
    assert_eq!(
        store.device("acme", "new-1").await.unwrap().unwrap().status,
        DeviceStatus::Blocked
    );
    // Blocking an unknown CN creates its record.
    let ghost = store
        .set_device_status(
            "acme",
            "never-seen",
            DeviceStatus::Blocked,
            150,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap();
    assert_eq!(
        (ghost.status, ghost.created_at, ghost.first_connection),
        (DeviceStatus::Blocked, 150, None)
    );
    let err = store
        .register_device("ghost", "d", "fp", 1, audit("ghost", "DEVICE_REGISTERED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // Last-seen times: batched, monotonic, unknown devices ignored.
    store
        .record_last_seen(vec![
            ("acme".into(), "pre-1".into(), 300),
            ("acme".into(), "unknown".into(), 300),
        ])
        .await
        .unwrap();
    store
        .record_last_seen(vec![("acme".into(), "pre-1".into(), 250)])
        .await
        .unwrap();
    assert_eq!(
        store
            .device("acme", "pre-1")
            .await
            .unwrap()
            .unwrap()
            .last_connection,
        Some(300)
    );
    assert!(store.device("acme", "unknown").await.unwrap().is_none());

    let page = store
        .devices("acme", PageRequest { size: 2, page: 1 })
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(
        page.items
            .iter()
            .map(|d| d.common_name.as_str())
            .collect::<Vec<_>>(),
        ["never-seen", "new-1"]
    );
    let m = store.trust_material().await.unwrap();
    let mut blocked = m.blocked.clone();
    blocked.sort();
    assert_eq!(
        blocked,
        [
            ("acme".to_string(), "never-seen".to_string()),
            ("acme".to_string(), "new-1".to_string())
        ]
    );
}

/// The same new device connecting many times at once (to several nodes): registered
/// once, audited once.
async fn registration_race(store: &Arc<dyn Store>) {
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .register_device(
                        "acme",
                        "racer",
                        "fp1",
                        1000 + i,
                        audit("acme", "DEVICE_REGISTERED").target("racer"),
                    )
                    .await
            })
        })
        .collect();
    let mut changed = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            changed += 1;
        }
    }
    assert_eq!(changed, 1);
    let audited = store
        .audit(
            Some("acme"),
            PageRequest {
                size: 1000,
                page: 1,
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.target.as_deref() == Some("racer"))
        .count();
    assert_eq!(audited, 1);
}

async fn server_certificate_and_audit(store: &Arc<dyn Store>) {
    assert!(store.server_certificate().await.unwrap().is_none());
    let ca = root("Server CA");
    let leaf = issue::server(
        &Subject::cn("node"),
        &["localhost".into()],
        Validity::days(30),
        KeyType::P256,
        Some(&ca.issuer().unwrap()),
        &[],
    )
    .unwrap();
    let rec = ServerCertRecord {
        name: "node".into(),
        chain_der: vec![
            leaf.cert_der.as_ref().to_vec(),
            ca.cert_der.as_ref().to_vec(),
        ],
        key_pkcs8: leaf.key_der.secret_pkcs8_der().to_vec(),
        imported_at: 77,
    };
    store
        .put_server_certificate(
            rec.clone(),
            audit("management", "SERVER_CERTIFICATE_IMPORTED"),
        )
        .await
        .unwrap();
    store
        .put_server_certificate(
            rec.clone(),
            audit("management", "SERVER_CERTIFICATE_IMPORTED"),
        )
        .await
        .unwrap();
    assert_eq!(store.server_certificate().await.unwrap(), Some(rec));

    store
        .append_audit(
            AuditEntry::new("acme/admin", Some("acme"), "LOGIN_FAILED").detail("from 127.0.0.1"),
        )
        .await
        .unwrap();
    let all = store
        .audit(None, PageRequest { size: 3, page: 1 })
        .await
        .unwrap();
    assert_eq!(all.items[0].action, "LOGIN_FAILED");
    assert_eq!(all.items[0].detail.as_deref(), Some("from 127.0.0.1"));
    assert!(
        all.items.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let second = store
        .audit(None, PageRequest { size: 3, page: 2 })
        .await
        .unwrap();
    assert_eq!(second.total, all.total);
    assert!(second.items[0].id < all.items[2].id);
}

fn rule_set(tenant: &str, name: &str, body: &str) -> AclRuleSetRecord {
    AclRuleSetRecord {
        tenant: tenant.into(),
        name: name.into(),
        body: body.into(),
        updated_at: 1_700_000_100,
    }
}

/// Topic rule sets and assignments of tenant `acme` (left in place for
/// [`tenant_deletion`], which checks they go with the tenant).
async fn topic_rules(store: &Arc<dyn Store>) {
    let before = audit_actions(store, Some("acme")).await.len();
    let body = r#"{"rules":[],"defaultAccess":"deny"}"#;
    let created = store
        .put_acl_rule_set(
            rule_set("acme", "default", body),
            audit("acme", "ACL_RULE_SET_PUT"),
        )
        .await
        .unwrap();
    assert!(created);
    let body2 = r#"{"rules":[],"defaultAccess":"allow"}"#;
    let created = store
        .put_acl_rule_set(
            rule_set("acme", "default", body2),
            audit("acme", "ACL_RULE_SET_PUT"),
        )
        .await
        .unwrap();
    assert!(!created, "replaced");
    store
        .put_acl_rule_set(
            rule_set("acme", "gateways", body),
            audit("acme", "ACL_RULE_SET_PUT"),
        )
        .await
        .unwrap();
    let err = store
        .put_acl_rule_set(rule_set("nobody", "default", body), audit("nobody", "X"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let sets = store.acl_rule_sets("acme").await.unwrap();
    assert_eq!(
        sets.iter()
            .map(|s| (s.name.as_str(), s.body.as_str()))
            .collect::<Vec<_>>(),
        [("default", body2), ("gateways", body)]
    );
    assert!(store.acl_rule_sets("globex").await.unwrap().is_empty());

    // Assignments: to an existing rule set only; one per target.
    let err = store
        .set_acl_assignment(
            "acme",
            AclTarget::Device,
            "gw-1",
            Some("nope"),
            audit("acme", "ACL_ASSIGNED"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    for (target, key) in [(AclTarget::Device, "gw-1"), (AclTarget::Anchor, "ab12")] {
        store
            .set_acl_assignment(
                "acme",
                target,
                key,
                Some("default"),
                audit("acme", "ACL_ASSIGNED"),
            )
            .await
            .unwrap();
        store
            .set_acl_assignment(
                "acme",
                target,
                key,
                Some("gateways"),
                audit("acme", "ACL_ASSIGNED"),
            )
            .await
            .unwrap();
    }
    let list = store.acl_assignments("acme").await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|a| a.rule_set == "gateways"));
    // An assigned rule set cannot be deleted.
    let err = store
        .delete_acl_rule_set("acme", "gateways", audit("acme", "ACL_RULE_SET_DELETED"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(Conflict::RuleSetInUse { name }) if name == "gateways"),
        "{err:?}"
    );
    store
        .set_acl_assignment(
            "acme",
            AclTarget::Anchor,
            "ab12",
            None,
            audit("acme", "ACL_UNASSIGNED"),
        )
        .await
        .unwrap();
    let err = store
        .set_acl_assignment(
            "acme",
            AclTarget::Anchor,
            "ab12",
            None,
            audit("acme", "ACL_UNASSIGNED"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .delete_acl_rule_set("acme", "missing", audit("acme", "ACL_RULE_SET_DELETED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // The trust material carries them.
    let m = store.trust_material().await.unwrap();
    assert_eq!(
        m.acl_rule_sets
            .iter()
            .filter(|r| r.tenant == "acme")
            .count(),
        2
    );
    assert_eq!(
        m.acl_assignments,
        vec![AclAssignment {
            tenant: "acme".into(),
            target: AclTarget::Device,
            key: "gw-1".into(),
            rule_set: "gateways".into(),
        }]
    );
    // Every successful change was audited: 3 puts, 4 assignments, 1 removal.
    assert_eq!(audit_actions(store, Some("acme")).await.len(), before + 8);

    // A trusted certificate's assignment goes with the certificate.
    let rec = record("acme", &root("Acme Rules CA"));
    upload(store, &rec).await.unwrap();
    store
        .set_acl_assignment(
            "acme",
            AclTarget::Anchor,
            &rec.fingerprint,
            Some("gateways"),
            audit("acme", "ACL_ASSIGNED"),
        )
        .await
        .unwrap();
    store
        .delete_certificate(
            "acme",
            &rec.fingerprint,
            audit("acme", "CERTIFICATE_DELETED"),
        )
        .await
        .unwrap();
    let left = store.acl_assignments("acme").await.unwrap();
    assert!(
        left.iter().all(|a| a.target != AclTarget::Anchor),
        "{left:?}"
    );
}

async fn tenant_deletion(store: &Arc<dyn Store>) {
    let before = store.audit(Some("acme"), PAGE).await.unwrap().total;
    store
        .delete_tenant("acme", audit("acme", "TENANT_DELETED"))
        .await
        .unwrap();
    let err = store
        .delete_tenant("acme", audit("acme", "TENANT_DELETED"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // Everything it owned went with it.
    assert!(store.tenant("acme").await.unwrap().is_none());
    assert!(store.users("acme").await.unwrap().is_empty());
    assert_eq!(store.certificate_counts("acme").await.unwrap(), (0, 0));
    assert!(store.revoked_serials("acme").await.unwrap().is_empty());
    assert!(store.crls("acme").await.unwrap().is_empty());
    assert_eq!(store.devices("acme", PAGE).await.unwrap().total, 0);
    assert!(store.acl_rule_sets("acme").await.unwrap().is_empty());
    assert!(store.acl_assignments("acme").await.unwrap().is_empty());
    // Its audit records (and the deletion's) moved under the archived name.
    assert_eq!(store.audit(Some("acme"), PAGE).await.unwrap().total, 0);
    let newest = store
        .audit(None, PageRequest { size: 1, page: 1 })
        .await
        .unwrap();
    let deletion = &newest.items[0];
    assert_eq!(deletion.action, "TENANT_DELETED");
    let archived = deleted_tenant_audit_name("acme", deletion.id);
    assert_eq!(deletion.tenant.as_deref(), Some(archived.as_str()));
    assert_eq!(
        store
            .audit(
                Some(&archived),
                PageRequest {
                    size: 1000,
                    page: 1
                }
            )
            .await
            .unwrap()
            .total,
        before + 1
    );
    // A tenant created later with the same id starts empty.
    store
        .create_tenant(
            tenant("acme"),
            user("acme", "admin"),
            audit("acme", "TENANT_CREATED"),
        )
        .await
        .unwrap();
    assert_eq!(audit_actions(store, Some("acme")).await, ["TENANT_CREATED"]);
    // The other fingerprints of the deleted tenant are free.
    let m = store.trust_material().await.unwrap();
    assert!(m.anchors.iter().all(|a| a.tenant != "acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_suite() {
    let pg = Postgres::start();
    let store = PostgresStore::connect(&pg.create_database("suite"))
        .await
        .unwrap();
    suite(Arc::new(store)).await;
}

fn fast() -> PostgresOptions {
    PostgresOptions {
        pool_size: 4,
        connect_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
    }
}

/// Waits up to `within` for a change notification.
async fn changed(rx: &mut tokio::sync::broadcast::Receiver<()>, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, rx.recv()).await,
        Ok(Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)))
    )
}

/// Several nodes starting at once on an empty database create the schema once, and each
/// node hears of the others' changes to the trust material (not of last-seen writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_migrate_once_and_hear_each_others_changes() {
    let pg = Postgres::start();
    let url = pg.create_database("nodes");
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect_with(&url, fast()).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(Arc::new(s.await.unwrap().unwrap()) as Arc<dyn Store>);
    }
    assert_eq!(pg.psql("nodes", "SELECT version FROM schema_version"), "4");
    assert_eq!(pg.psql("nodes", "SELECT COUNT(*) FROM schema_version"), "1");
    // A node started later finds the schema in place.
    let late = PostgresStore::connect_with(&url, fast()).await.unwrap();
    drop(late);

    let mut rx = nodes[1].changes().expect("PostgreSQL announces changes");
    // The listener's first read of the counter.
    let _ = changed(&mut rx, Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    nodes[0]
        .create_tenant(
            tenant("acme"),
            user("acme", "admin"),
            audit("acme", "TENANT_CREATED"),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(
        changed(&mut rx, Duration::from_secs(1)).await,
        "no notification within 1 s"
    );
    eprintln!("change seen by the other node after {:?}", t0.elapsed());
    assert!(nodes[1].tenant("acme").await.unwrap().is_some());

    // Device connects and last-seen writes do not rebuild every node's snapshot.
    while rx.try_recv().is_ok() {}
    nodes[0]
        .register_device("acme", "d1", "fp", 1, audit("acme", "DEVICE_REGISTERED"))
        .await
        .unwrap();
    nodes[0]
        .record_last_seen(vec![("acme".into(), "d1".into(), 5)])
        .await
        .unwrap();
    assert!(!changed(&mut rx, Duration::from_millis(400)).await);
    // Blocking a device does.
    nodes[2]
        .set_device_status(
            "acme",
            "d1",
            DeviceStatus::Blocked,
            6,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap();
    assert!(changed(&mut rx, Duration::from_secs(1)).await);
}

/// A notification lost with the listener's connection is repaired: the listener
/// reconnects, compares the change counter and announces the change it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_notification_is_repaired_by_the_change_counter() {
    let pg = Postgres::start();
    let url = pg.create_database("lost");
    let writer = PostgresStore::connect_with(&url, fast()).await.unwrap();
    let reader = PostgresStore::connect_with(&url, fast()).await.unwrap();
    writer.ensure_tenant(tenant("acme")).await.unwrap();
    let mut rx = reader.changes().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}

    // Cut the reader's LISTEN connection, and change something in the same breath: the
    // NOTIFY goes nowhere.
    pg.psql(
        "lost",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'SELECT version FROM change_counter%' OR query LIKE 'LISTEN%'",
    );
    writer
        .set_device_status(
            "acme",
            "cut",
            DeviceStatus::Blocked,
            1,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap();
    assert!(
        changed(&mut rx, Duration::from_secs(1)).await,
        "the missed change is announced within a second"
    );
    let m = reader.trust_material().await.unwrap();
    assert_eq!(m.blocked, [("acme".to_string(), "cut".to_string())]);

    // The counter alone, with no NOTIFY and no reconnect (a notification lost on a
    // connection that stayed up): the poll notices it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    pg.psql("lost", "UPDATE change_counter SET version = version + 1");
    assert!(
        changed(&mut rx, Duration::from_secs(1)).await,
        "a counter that moved without a notification is noticed within a second"
    );
}

/// The database goes away: calls fail with Unavailable (never hang), registry lookups
/// of known devices are still answered; it comes back: everything acknowledged before
/// is there, and the store works again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_going_away_and_coming_back() {
    let mut pg = Postgres::start();
    let url = pg.create_database("outage");
    let store = PostgresStore::connect_with(&url, fast()).await.unwrap();
    store
        .create_tenant(
            tenant("acme"),
            user("acme", "admin"),
            audit("acme", "TENANT_CREATED"),
        )
        .await
        .unwrap();
    for i in 0..20 {
        store
            .register_device(
                "acme",
                &format!("d{i}"),
                "fp",
                i,
                audit("acme", "DEVICE_REGISTERED"),
            )
            .await
            .unwrap();
    }
    assert!(store.device("acme", "d3").await.unwrap().is_some());
    let mut rx = store.changes().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.reachable());

    pg.stop();
    let t0 = Instant::now();
    let err = store.tenant("acme").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store
        .set_device_status(
            "acme",
            "d1",
            DeviceStatus::Blocked,
            1,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        t0.elapsed()
    );
    // A device looked up or registered through this store is still known; a device
    // this node never saw is not.
    for d in ["d3", "d4"] {
        assert_eq!(
            store.device("acme", d).await.unwrap().unwrap().status,
            DeviceStatus::Registered
        );
    }
    assert!(matches!(
        store.device("acme", "other-node-only").await,
        Err(StoreError::Unavailable(_))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!store.reachable());
    while rx.try_recv().is_ok() {}

    pg.start_server();
    // Nothing acknowledged was lost, and the store recovers without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let devices = loop {
        match store.devices("acme", PAGE).await {
            Ok(p) => break p,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(devices.total, 20);
    store
        .set_device_status(
            "acme",
            "d1",
            DeviceStatus::Blocked,
            2,
            audit("acme", "DEVICE_BLOCKED"),
        )
        .await
        .unwrap();
    assert!(changed(&mut rx, Duration::from_secs(2)).await);
    assert!(store.reachable());
    assert!(store.last_sync() > 0);
}

/// TLS to the database: the server's certificate is verified against `sslrootcert`, host
/// name included; every connection of the store is encrypted; a certificate from
/// another CA, or for another name, is refused (and never falls back to plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    let keys = tempfile::tempdir().unwrap();
    let ca = root("Database CA");
    let issue_for = |name: &str| {
        issue::server(
            &Subject::cn(name),
            &[name.to_string()],
            Validity::days(30),
            KeyType::P256,
            Some(&ca.issuer().unwrap()),
            &[],
        )
        .unwrap()
    };
    let server = issue_for("127.0.0.1");
    let (crt, key) = (
        keys.path().join("server.crt"),
        keys.path().join("server.key"),
    );
    std::fs::write(&crt, server.cert_pem()).unwrap();
    std::fs::write(&key, server.key_pem()).unwrap();
    std::fs::write(keys.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(
        keys.path().join("other-ca.pem"),
        root("Other CA").cert_pem(),
    )
    .unwrap();
    for p in [&crt, &key] {
        postgres::give_to_server(p);
    }
    postgres::give_to_server(keys.path());
    let pg = Postgres::start_with(&[
        "ssl=on",
        &format!("ssl_cert_file={}", crt.display()),
        &format!("ssl_key_file={}", key.display()),
    ]);
    let url = pg.create_database("tls");
    let with_root = |file: &str| {
        format!(
            "{url}?sslmode=require&sslrootcert={}",
            keys.path().join(file).display()
        )
    };

    let store = PostgresStore::connect_with(&with_root("ca.pem"), fast())
        .await
        .unwrap();
    store.ensure_tenant(tenant("acme")).await.unwrap();
    assert!(store.tenant("acme").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store.reachable(),
        "the change listener connects over TLS too"
    );
    let encrypted = pg.psql(
        "postgres",
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'mqtt-front-end'",
    );
    let (enc, all) = encrypted.split_once('|').unwrap();
    assert!(all.parse::<u32>().unwrap() >= 2, "{encrypted}");
    assert_eq!(enc, all, "every connection is encrypted: {encrypted}");
    drop(store);

    // A server certificate from another CA.
    let err = PostgresStore::connect_with(&with_root("other-ca.pem"), fast())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // The right CA, the wrong name: `localhost` is not in the certificate.
    let by_name = with_root("ca.pem").replace("@127.0.0.1:", "@localhost:");
    let err = PostgresStore::connect_with(&by_name, fast())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // The password never shows in an error.
    assert!(!format!("{err:?}").contains(postgres::PG_PASSWORD));
}

/// maxDevices across nodes: each node reports its sessions per tenant and learns the
/// others'; a node that stops reporting stops counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_exchange_their_session_counts() {
    let pg = Postgres::start();
    let url = pg.create_database("sessions");
    let a = PostgresStore::connect_with(&url, fast()).await.unwrap();
    let b = PostgresStore::connect_with(&url, fast()).await.unwrap();
    let others = a
        .exchange_sessions("node-a", vec![("acme".into(), 3), ("beta".into(), 1)], 5)
        .await
        .unwrap();
    assert!(others.is_empty());
    let others = b
        .exchange_sessions("node-b", vec![("acme".into(), 2)], 5)
        .await
        .unwrap();
    assert_eq!(others.get("acme"), Some(&3));
    assert_eq!(others.get("beta"), Some(&1));
    // node-a's beta sessions ended: its row goes.
    a.exchange_sessions("node-a", vec![("acme".into(), 4)], 5)
        .await
        .unwrap();
    let others = b.exchange_sessions("node-b", vec![], 5).await.unwrap();
    assert_eq!(others.get("acme"), Some(&4));
    assert_eq!(others.get("beta"), None);
    let others = a.exchange_sessions("node-a", vec![], 5).await.unwrap();
    assert!(others.is_empty(), "node-b reported none: {others:?}");
    // A node silent for longer than the freshness window no longer counts.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let others = b.exchange_sessions("node-b", vec![], 1).await.unwrap();
    assert!(others.is_empty(), "{others:?}");
    // SQLite: one process, no other nodes.
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    assert!(lite
        .exchange_sessions("n", vec![("acme".into(), 1)], 5)
        .await
        .unwrap()
        .is_empty());
}

/// Nodes started at the same moment on an empty database: every one comes up, with one
/// management tenant and one management admin between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_bootstrapping_together_all_start() {
    let pg = Postgres::start();
    let url = pg.create_database("bootstrap");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts: Vec<_> = dirs
        .iter()
        .map(|d| {
            let mut config = admin_api::AdminConfig::new(d.path());
            config.admin_password = Some("same-on-every-node".into());
            config.password_hashing = admin_api::PasswordHashing {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
            };
            config.store_url = Some(url.clone());
            tokio::spawn(admin_api::Admin::open(config))
        })
        .collect();
    let mut admins = Vec::new();
    for s in starts {
        admins.push(s.await.unwrap().expect("every node starts"));
    }
    let store = admins[0].store();
    assert_eq!(store.users("management").await.unwrap().len(), 1);
    assert_eq!(
        store.tenants(PAGE).await.unwrap().total,
        1,
        "one management tenant"
    );
    // Debug output of the configuration never shows the database password.
    let shown = format!("{:?}", admins[1].config());
    assert!(!shown.contains(postgres::PG_PASSWORD), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}
