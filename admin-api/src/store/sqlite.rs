//! [`SqliteStore`]: the embedded store, one SQLite file in the data directory.
//!
//! WAL journal with `synchronous=FULL`: a committed transaction is on disk before the
//! method returns. All work runs on the blocking thread pool, one connection behind a
//! mutex (the admin API's writes are rare; readers never wait on the disk long).
//!
//! Writes are group-committed: the writes that queue up while one transaction commits
//! (a fleet's first connections register their devices concurrently) run together in
//! the next transaction, each under its own savepoint, so that one fsync makes all of
//! them durable and a write that fails leaves the others intact. Each caller is
//! answered only after the commit that holds its write. One flusher task commits batch
//! after batch while writes keep coming; a writer only queues its write and waits.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use async_trait::async_trait;
use certs::AnchorStatus;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::*;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    company TEXT NOT NULL,
    domain TEXT,
    created_at INTEGER NOT NULL,
    max_chain_length INTEGER NOT NULL,
    crl_offline_enabled INTEGER NOT NULL,
    crl_online_enabled INTEGER NOT NULL,
    client_id_policy TEXT NOT NULL,
    max_devices INTEGER NOT NULL DEFAULT 0,
    max_anchors INTEGER NOT NULL DEFAULT 0,
    max_publish_rate INTEGER NOT NULL DEFAULT 0,
    crl_online_fail_open INTEGER NOT NULL DEFAULT 0,
    crl_signer_cert BLOB,
    crl_signer_key BLOB
);
CREATE TABLE IF NOT EXISTS users (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_name)
);
CREATE TABLE IF NOT EXISTS trusted_certificates (
    fingerprint TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    auto_registration INTEGER NOT NULL,
    cert_der BLOB NOT NULL,
    spki_der BLOB NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    serial_hex TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    algorithm_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    pop_valid INTEGER NOT NULL DEFAULT 0,
    pop_code TEXT,
    pop_code_expires INTEGER,
    created_at INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS trusted_certificates_tenant ON trusted_certificates(tenant_id, seq);
CREATE INDEX IF NOT EXISTS trusted_certificates_spki ON trusted_certificates(spki_der);
CREATE INDEX IF NOT EXISTS trusted_certificates_subject ON trusted_certificates(subject);
CREATE INDEX IF NOT EXISTS trusted_certificates_issuer ON trusted_certificates(issuer);
CREATE TABLE IF NOT EXISTS revoked_serials (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    serial_hex TEXT NOT NULL,
    revocation_date INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, serial_hex)
);
CREATE TABLE IF NOT EXISTS crls (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    issuer_key TEXT NOT NULL,
    issuer TEXT NOT NULL,
    der BLOB NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER,
    revoked_count INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, issuer_key)
);
CREATE TABLE IF NOT EXISTS devices (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    common_name TEXT NOT NULL,
    status TEXT NOT NULL,
    anchor_fingerprint TEXT,
    first_connection INTEGER,
    last_connection INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, common_name)
);
CREATE INDEX IF NOT EXISTS devices_blocked ON devices(status) WHERE status = 'BLOCKED';
CREATE TABLE IF NOT EXISTS acl_rule_sets (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE IF NOT EXISTS acl_assignments (
    tenant_id TEXT NOT NULL,
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    rule_set TEXT NOT NULL,
    PRIMARY KEY (tenant_id, target, key),
    FOREIGN KEY (tenant_id, rule_set) REFERENCES acl_rule_sets(tenant_id, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS server_certificate (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    chain_der BLOB NOT NULL,
    key_pkcs8 BLOB NOT NULL,
    imported_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT,
    action TEXT NOT NULL,
    target TEXT,
    fingerprint TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit(tenant_id, id);
CREATE TABLE IF NOT EXISTS tenant_cas (
    fingerprint TEXT PRIMARY KEY REFERENCES trusted_certificates(fingerprint) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_type TEXT NOT NULL,
    key_encrypted BLOB NOT NULL,
    device_validity_days INTEGER NOT NULL,
    renewal_window_days INTEGER NOT NULL,
    revoke_on_renewal INTEGER NOT NULL,
    state TEXT NOT NULL,
    retire_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tenant_cas_tenant ON tenant_cas(tenant_id);
CREATE TABLE IF NOT EXISTS enrollment_secrets (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    common_name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    used_at INTEGER,
    PRIMARY KEY (tenant_id, common_name)
);
CREATE TABLE IF NOT EXISTS issued_certificates (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    serial_hex TEXT NOT NULL,
    common_name TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    enrollment TEXT NOT NULL,
    cert_der BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (tenant_id, serial_hex)
);
CREATE INDEX IF NOT EXISTS issued_certificates_expiry ON issued_certificates(not_after);
"#;

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Writes waiting for the next group commit (see the module documentation).
    pending: Arc<Mutex<Pending>>,
    /// A second, read-only connection for the lookup every device connect makes: in WAL
    /// mode it reads the last committed state without waiting for a writer's fsync, so
    /// it runs on the caller's thread instead of a hop to the blocking pool.
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            // SQLITE_FULL: the disk is full (ENOSPC) or `max_page_count` is reached.
            // SQLite rolls the statement back; the transaction is then dropped.
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Full(e.to_string())
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file: WAL, `synchronous=FULL`, foreign keys on,
    /// schema created. The file is made readable by its owner only.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let conn = Connection::open(path)?;
        restrict_permissions(path);
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "could not switch the database to WAL mode (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            restrict_permissions(Path::new(&p));
        }
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            pending: Arc::default(),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Caps the database at about `max_bytes` (SQLite's `max_page_count`, never below
    /// the current size): a write that needs more space fails with
    /// [`StoreError::Full`], as on a full disk. Returns the effective cap in bytes.
    pub fn limit_size(&self, max_bytes: u64) -> StoreResult<u64> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("database connection lock poisoned".into()))?;
        let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (max_bytes / page_size.max(1)).max(1);
        let set: u64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })?;
        Ok(set * page_size)
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("database connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("database task failed: {e}")))?
    }

    /// Runs `f` in a transaction that commits when `f` succeeds: the next group commit,
    /// under a savepoint of its own (a failing `f` changes nothing). Returns once the
    /// transaction holding `f`'s changes has committed.
    async fn tx<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (answer, outcome) = oneshot::channel::<StoreResult<T>>();
        let write: Write = Box::new(move |step| match step {
            Step::Fail(e) => {
                let _ = answer.send(Err(e));
                None
            }
            Step::Run(tx, failed) => match f(tx) {
                Ok(value) => Some(Box::new(move |committed: StoreResult<()>| {
                    let _ = answer.send(committed.map(|()| value));
                }) as Answer),
                Err(e) => {
                    *failed = Some(e.clone());
                    let _ = answer.send(Err(e));
                    None
                }
            },
        });
        // One flusher at a time commits whatever has queued up, batch after batch, until
        // the queue is empty: a write does not take a blocking thread of its own that
        // would only wait for the connection.
        let start = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| StoreError::Backend("write queue lock poisoned".into()))?;
            pending.writes.push(write);
            !std::mem::replace(&mut pending.flushing, true)
        };
        if start {
            let (conn, pending) = (self.conn.clone(), self.pending.clone());
            tokio::task::spawn_blocking(move || flush(&conn, &pending));
        }
        outcome
            .await
            .map_err(|_| StoreError::Backend("write dropped before its commit".into()))?
    }
}

/// The writes waiting for a group commit, and whether a flusher is running.
#[derive(Default)]
struct Pending {
    writes: Vec<Write>,
    flushing: bool,
}

/// Commits the queued writes, batch after batch, until none is left (then the next
/// write starts a new flusher). A poisoned lock fails the writes it can reach.
fn flush(conn: &Mutex<Connection>, pending: &Mutex<Pending>) {
    /// If a write panics, the writes of its batch are dropped (their callers get an
    /// error) and the next write starts a new flusher.
    struct Unwinding<'a>(&'a Mutex<Pending>);
    impl Drop for Unwinding<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).flushing = false;
            }
        }
    }
    let _unwinding = Unwinding(pending);
    loop {
        let writes = {
            let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.writes.is_empty() {
                p.flushing = false;
                return;
            }
            std::mem::take(&mut p.writes)
        };
        match conn.lock() {
            Ok(mut c) => group_commit(&mut c, writes),
            Err(_) => {
                let e = StoreError::Backend("database connection lock poisoned".into());
                for w in writes {
                    w(Step::Fail(e.clone()));
                }
            }
        }
    }
}

/// What a queued write is asked to do.
enum Step<'a, 'b> {
    /// Run inside this transaction; on failure, leave a copy of the error in the slot.
    Run(&'a Transaction<'b>, &'a mut Option<StoreError>),
    /// Not run: tell the caller this error.
    Fail(StoreError),
}

/// A write waiting for a group commit. Run, it returns how to answer its caller once the
/// commit's outcome is known, or `None` when it failed (its caller has its error).
type Write = Box<dyn for<'a, 'b> FnOnce(Step<'a, 'b>) -> Option<Answer> + Send>;
/// Tells a caller whose write succeeded the outcome of the commit that holds it.
type Answer = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// Runs `writes` in as few transactions as possible and answers each caller after its
/// transaction's commit. A failed write is rolled back to its savepoint; if SQLite
/// abandoned the whole transaction on it (a full disk, an I/O error), the writes that
/// succeeded before it in that transaction get its error too (none of them was
/// acknowledged) and the rest continue in a new transaction.
fn group_commit(c: &mut Connection, writes: Vec<Write>) {
    let mut writes = writes.into_iter().peekable();
    while writes.peek().is_some() {
        let tx = match c.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e);
                for w in writes {
                    w(Step::Fail(e.clone()));
                }
                return;
            }
        };
        let mut answers: Vec<Answer> = Vec::new();
        let mut abandoned = None;
        for w in writes.by_ref() {
            if let Err(e) = tx.execute_batch("SAVEPOINT write") {
                let e = StoreError::from(e);
                w(Step::Fail(e.clone()));
                abandoned = Some(e);
                break;
            }
            let mut failed = None;
            match w(Step::Run(&tx, &mut failed)) {
                Some(answer) => {
                    answers.push(answer);
                    if let Err(e) = tx.execute_batch("RELEASE write") {
                        abandoned = Some(StoreError::from(e));
                        break;
                    }
                }
                None => {
                    let e = failed.unwrap_or_else(|| StoreError::Backend("write failed".into()));
                    if tx.is_autocommit() {
                        // SQLite rolled the whole transaction back on this error.
                        abandoned = Some(e);
                        break;
                    }
                    if let Err(e) = tx.execute_batch("ROLLBACK TO write; RELEASE write") {
                        abandoned = Some(StoreError::from(e));
                        break;
                    }
                }
            }
        }
        let outcome = match abandoned {
            Some(e) => Err(e),
            None => tx.commit().map_err(StoreError::from),
        };
        for answer in answers {
            answer(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn insert_audit(c: &Connection, e: &AuditEntry) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO audit (at, actor, tenant_id, action, target, fingerprint, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.at,
        e.actor,
        e.tenant,
        e.action,
        e.target,
        e.fingerprint,
        e.detail
    ])?;
    Ok(())
}

const TENANT_COLS: &str =
    "id, company, domain, created_at, max_chain_length, crl_offline_enabled, crl_online_enabled, client_id_policy, max_devices, max_anchors, max_publish_rate, crl_online_fail_open";

const ACL_COLS: &str = "tenant_id, name, body, updated_at";
const ACL_ASSIGN_COLS: &str = "tenant_id, target, key, rule_set";

fn acl_row(r: &Row<'_>) -> rusqlite::Result<AclRuleSetRecord> {
    Ok(AclRuleSetRecord {
        tenant: r.get(0)?,
        name: r.get(1)?,
        body: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

fn acl_assignment_row(r: &Row<'_>) -> rusqlite::Result<AclAssignment> {
    let target: String = r.get(1)?;
    Ok(AclAssignment {
        tenant: r.get(0)?,
        target: AclTarget::parse(&target).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown ACL target {target}").into(),
            )
        })?,
        key: r.get(2)?,
        rule_set: r.get(3)?,
    })
}

/// Columns added after the first schema: databases created before get them here.
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let mut cols = Vec::new();
    {
        let mut stmt = c.prepare("PRAGMA table_info(tenants)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(1))?;
        for r in rows {
            cols.push(r?);
        }
    }
    for col in [
        "max_devices",
        "max_anchors",
        "max_publish_rate",
        "crl_online_fail_open",
    ] {
        if !cols.iter().any(|c| c == col) {
            c.execute_batch(&format!(
                "ALTER TABLE tenants ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    Ok(())
}

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    let policy: String = r.get(7)?;
    Ok(TenantRecord {
        id: r.get(0)?,
        company: r.get(1)?,
        domain: r.get(2)?,
        created_at: r.get(3)?,
        settings: TenantSettings {
            max_chain_length: r.get(4)?,
            crl_offline_enabled: r.get(5)?,
            crl_online_enabled: r.get(6)?,
            client_id_policy: ClientIdPolicy::parse(&policy).unwrap_or(ClientIdPolicy::Strict),
            max_devices: r.get(8)?,
            max_anchors: r.get(9)?,
            max_publish_rate: r.get(10)?,
            crl_online_fail_open: r.get(11)?,
        },
    })
}

fn insert_tenant(c: &Connection, t: &TenantRecord) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT OR IGNORE INTO tenants (id, company, domain, created_at, max_chain_length,
            crl_offline_enabled, crl_online_enabled, client_id_policy, max_devices,
            max_anchors, max_publish_rate, crl_online_fail_open)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            t.id,
            t.company,
            t.domain,
            t.created_at,
            t.settings.max_chain_length,
            t.settings.crl_offline_enabled,
            t.settings.crl_online_enabled,
            t.settings.client_id_policy.as_str(),
            t.settings.max_devices,
            t.settings.max_anchors,
            t.settings.max_publish_rate,
            t.settings.crl_online_fail_open
        ],
    )
}

const USER_COLS: &str = "tenant_id, user_name, password_hash, roles, created_at";

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let roles: String = r.get(3)?;
    Ok(UserRecord {
        tenant: r.get(0)?,
        user_name: r.get(1)?,
        password_hash: r.get(2)?,
        roles: roles.split(',').filter_map(Role::parse).collect(),
        created_at: r.get(4)?,
    })
}

fn insert_user(c: &Connection, u: &UserRecord) -> StoreResult<()> {
    let roles: Vec<&str> = u.roles.iter().map(|r| r.as_str()).collect();
    let n = c.execute(
        "INSERT OR IGNORE INTO users (tenant_id, user_name, password_hash, roles, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            u.tenant,
            u.user_name,
            u.password_hash,
            roles.join(","),
            u.created_at
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(Conflict::UserExists {
            tenant: u.tenant.clone(),
            user: u.user_name.clone(),
        }));
    }
    Ok(())
}

const CERT_COLS: &str =
    "tenant_id, fingerprint, name, status, auto_registration, cert_der, spki_der,
    subject, issuer, serial_hex, not_before, not_after, algorithm_name, version, pop_valid,
    pop_code, pop_code_expires, created_at";

fn cert_row(r: &Row<'_>) -> rusqlite::Result<TrustedCertRecord> {
    let status: String = r.get(3)?;
    Ok(TrustedCertRecord {
        tenant: r.get(0)?,
        fingerprint: r.get(1)?,
        name: r.get(2)?,
        status: if status == "DISABLED" {
            AnchorStatus::Disabled
        } else {
            AnchorStatus::Enabled
        },
        auto_registration: r.get(4)?,
        cert_der: r.get(5)?,
        spki_der: r.get(6)?,
        subject: r.get(7)?,
        issuer: r.get(8)?,
        serial_hex: r.get(9)?,
        not_before: r.get(10)?,
        not_after: r.get(11)?,
        algorithm_name: r.get(12)?,
        version: r.get(13)?,
        pop_valid: r.get(14)?,
        pop_code: r.get(15)?,
        pop_code_expires: r.get(16)?,
        created_at: r.get(17)?,
    })
}

fn status_str(s: AnchorStatus) -> &'static str {
    match s {
        AnchorStatus::Enabled => "ENABLED",
        AnchorStatus::Disabled => "DISABLED",
    }
}

fn get_cert(c: &Connection, tenant: &str, fp: &str) -> StoreResult<Option<TrustedCertRecord>> {
    Ok(c.query_row(
        &format!("SELECT {CERT_COLS} FROM trusted_certificates WHERE tenant_id = ?1 AND fingerprint = ?2"),
        params![tenant, fp],
        cert_row,
    )
    .optional()?)
}

fn cert_not_found(fp: &str) -> StoreError {
    StoreError::NotFound(format!("Trusted certificate {fp} not found"))
}

macro_rules! device_cols {
    () => {
        "tenant_id, common_name, status, anchor_fingerprint, first_connection, last_connection, created_at"
    };
}
const DEVICE_COLS: &str = device_cols!();
/// The lookup every device connect makes, as one constant string: no formatting per call.
const GET_DEVICE_SQL: &str = concat!(
    "SELECT ",
    device_cols!(),
    " FROM devices WHERE tenant_id = ?1 AND common_name = ?2"
);

fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let status: String = r.get(2)?;
    Ok(DeviceRecord {
        tenant: r.get(0)?,
        common_name: r.get(1)?,
        status: DeviceStatus::parse(&status).unwrap_or(DeviceStatus::Blocked),
        anchor_fingerprint: r.get(3)?,
        first_connection: r.get(4)?,
        last_connection: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn get_device(c: &Connection, tenant: &str, cn: &str) -> StoreResult<Option<DeviceRecord>> {
    // Every connect asks: the statement is parsed once and cached.
    Ok(c.prepare_cached(GET_DEVICE_SQL)?
        .query_row(params![tenant, cn], device_row)
        .optional()?)
}

const CRL_COLS: &str =
    "tenant_id, issuer, issuer_key, der, this_update, next_update, revoked_count, uploaded_at";

fn crl_row(r: &Row<'_>) -> rusqlite::Result<CrlRecord> {
    Ok(CrlRecord {
        tenant: r.get(0)?,
        issuer: r.get(1)?,
        issuer_key: r.get(2)?,
        der: r.get(3)?,
        this_update: r.get(4)?,
        next_update: r.get(5)?,
        revoked_count: r.get(6)?,
        uploaded_at: r.get(7)?,
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        tenant: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        fingerprint: r.get(6)?,
        detail: r.get(7)?,
    })
}

fn insert_certs(tx: &Transaction<'_>, certs: &[TrustedCertRecord]) -> StoreResult<()> {
    let mut seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM trusted_certificates",
        [],
        |r| r.get(0),
    )?;
    for c in certs {
        if !tenant_exists(tx, &c.tenant)? {
            return Err(tenant_not_found(&c.tenant));
        }
        // maxAnchors, counted in this transaction: concurrent uploads cannot
        // pass it together.
        let (max, have): (u32, u64) = tx.query_row(
            "SELECT t.max_anchors,
                (SELECT COUNT(*) FROM trusted_certificates c WHERE c.tenant_id = t.id)
             FROM tenants t WHERE t.id = ?1",
            [&c.tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if max > 0 && have >= u64::from(max) {
            return Err(StoreError::Conflict(Conflict::AnchorLimit {
                tenant: c.tenant.clone(),
                max,
                have,
            }));
        }
        let exists = tx
            .query_row(
                "SELECT 1 FROM trusted_certificates WHERE fingerprint = ?1",
                [&c.fingerprint],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            return Err(StoreError::Conflict(Conflict::CertificateExists {
                fingerprint: c.fingerprint.clone(),
            }));
        }
        let same_key_elsewhere = tx
            .query_row(
                "SELECT 1 FROM trusted_certificates WHERE spki_der = ?1 AND tenant_id <> ?2",
                params![c.spki_der, c.tenant],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if same_key_elsewhere {
            return Err(StoreError::Conflict(Conflict::PublicKeyTrustedElsewhere {
                fingerprint: c.fingerprint.clone(),
            }));
        }
        // Another tenant's anchor that may have issued this one, or that this
        // one may have issued (names chain; the signature decides).
        let mut st = tx.prepare_cached(&format!(
            "SELECT {CERT_COLS} FROM trusted_certificates
             WHERE tenant_id <> ?1 AND (subject = ?2 OR issuer = ?3)"
        ))?;
        let related = st
            .query_map(params![c.tenant, c.issuer, c.subject], cert_row)?
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(conflict) = related.iter().find_map(|o| anchor_conflict(c, o)) {
            return Err(StoreError::Conflict(conflict));
        }
        seq += 1;
        tx.execute(
            "INSERT INTO trusted_certificates (tenant_id, fingerprint, name, status,
                auto_registration, cert_der, spki_der, subject, issuer, serial_hex,
                not_before, not_after, algorithm_name, version, pop_valid, pop_code,
                pop_code_expires, created_at, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                ?16, ?17, ?18, ?19)",
            params![
                c.tenant,
                c.fingerprint,
                c.name,
                status_str(c.status),
                c.auto_registration,
                c.cert_der,
                c.spki_der,
                c.subject,
                c.issuer,
                c.serial_hex,
                c.not_before,
                c.not_after,
                c.algorithm_name,
                c.version,
                c.pop_valid,
                c.pop_code,
                c.pop_code_expires,
                c.created_at,
                seq
            ],
        )?;
    }
    Ok(())
}

const CA_COLS: &str = "tenant_id, fingerprint, key_type, key_encrypted, device_validity_days, renewal_window_days, revoke_on_renewal, state, retire_at, created_at";

fn ca_row(r: &Row<'_>) -> rusqlite::Result<TenantCaRecord> {
    let state: String = r.get(7)?;
    Ok(TenantCaRecord {
        tenant: r.get(0)?,
        fingerprint: r.get(1)?,
        key_type: r.get(2)?,
        key_encrypted: r.get(3)?,
        device_validity_days: r.get(4)?,
        renewal_window_days: r.get(5)?,
        revoke_on_renewal: r.get(6)?,
        state: TenantCaState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("unknown CA state {state}").into(),
            )
        })?,
        retire_at: r.get(8)?,
        created_at: r.get(9)?,
    })
}

const SECRET_COLS: &str = "tenant_id, common_name, secret_hash, expires_at, created_at, used_at";

fn secret_row(r: &Row<'_>) -> rusqlite::Result<EnrollmentSecretRecord> {
    Ok(EnrollmentSecretRecord {
        tenant: r.get(0)?,
        common_name: r.get(1)?,
        secret_hash: r.get(2)?,
        expires_at: r.get(3)?,
        created_at: r.get(4)?,
        used_at: r.get(5)?,
    })
}

const ISSUED_COLS: &str = "tenant_id, serial_hex, common_name, not_before, not_after, ca_fingerprint, enrollment, cert_der, issued_at, revoked_at";

const ISSUED_BY_SERIAL: &str = "SELECT tenant_id, serial_hex, common_name, not_before, not_after, ca_fingerprint, enrollment, cert_der, issued_at, revoked_at FROM issued_certificates WHERE tenant_id = ?1 AND serial_hex = ?2";

fn issued_row(r: &Row<'_>) -> rusqlite::Result<IssuedCertRecord> {
    Ok(IssuedCertRecord {
        tenant: r.get(0)?,
        serial_hex: r.get(1)?,
        common_name: r.get(2)?,
        not_before: r.get(3)?,
        not_after: r.get(4)?,
        ca_fingerprint: r.get(5)?,
        enrollment: r.get(6)?,
        cert_der: r.get(7)?,
        issued_at: r.get(8)?,
        revoked_at: r.get(9)?,
    })
}

fn insert_issued(c: &Connection, i: &IssuedCertRecord) -> StoreResult<()> {
    c.execute(
        &format!("INSERT INTO issued_certificates ({ISSUED_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            i.tenant,
            i.serial_hex,
            i.common_name,
            i.not_before,
            i.not_after,
            i.ca_fingerprint,
            i.enrollment,
            i.cert_der,
            i.issued_at,
            i.revoked_at
        ],
    )?;
    Ok(())
}

/// One page of a tenant's rows: `select` takes the tenant, LIMIT and OFFSET (`?1` to
/// `?3`), `total` the tenant.
fn tenant_page<T>(
    c: &Connection,
    select: &str,
    total: &str,
    tenant: &str,
    page: PageRequest,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Page<T>> {
    let (lim, off) = limit(page);
    let items = c
        .prepare(select)?
        .query_map(params![tenant, lim, off], row)?
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = c.query_row(total, [tenant], |r| r.get(0))?;
    Ok(Page { items, total })
}

/// The row of a tenant's record keyed by `key` (`sql` takes the tenant and the key).
fn tenant_row_by<T>(
    c: &Connection,
    sql: &str,
    tenant: &str,
    key: &str,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Option<T>> {
    Ok(c.query_row(sql, params![tenant, key], row).optional()?)
}

fn revoke_serial(c: &Connection, tenant: &str, s: &RevokedSerial) -> StoreResult<()> {
    c.execute(
        "INSERT INTO revoked_serials (tenant_id, serial_hex, revocation_date) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant_id, serial_hex) DO UPDATE SET revocation_date = excluded.revocation_date",
        params![tenant, s.serial_hex, s.revocation_date],
    )?;
    Ok(())
}

fn tenant_exists(c: &Connection, id: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

fn tenant_not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("Tenant {id} not found"))
}

fn limit(page: PageRequest) -> (i64, i64) {
    (
        i64::from(page.size),
        i64::try_from(page.offset()).unwrap_or(i64::MAX),
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_tenant(
        &self,
        tenant: TenantRecord,
        admin: UserRecord,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        self.tx(move |tx| {
            if insert_tenant(tx, &tenant)? == 0 {
                return Err(StoreError::Conflict(Conflict::TenantExists(tenant.id)));
            }
            insert_user(tx, &admin)?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn ensure_tenant(&self, tenant: TenantRecord) -> StoreResult<bool> {
        self.tx(move |tx| Ok(insert_tenant(tx, &tenant)? == 1))
            .await
    }

    async fn tenant(&self, id: &str) -> StoreResult<Option<TenantRecord>> {
        let id = id.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"),
                [id],
                tenant_row,
            )
            .optional()?)
        })
        .await
    }

    async fn tenants(&self, page: PageRequest) -> StoreResult<Page<TenantRecord>> {
        self.run(move |c| {
            let (lim, off) = limit(page);
            let mut st = c.prepare(&format!(
                "SELECT {TENANT_COLS} FROM tenants ORDER BY id LIMIT ?1 OFFSET ?2"
            ))?;
            let items = st
                .query_map(params![lim, off], tenant_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let total: u64 = c.query_row("SELECT COUNT(*) FROM tenants", [], |r| r.get(0))?;
            Ok(Page { items, total })
        })
        .await
    }

    async fn update_tenant(&self, t: TenantRecord, audit: AuditEntry) -> StoreResult<()> {
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE tenants SET company = ?2, domain = ?3, max_chain_length = ?4,
                    crl_offline_enabled = ?5, crl_online_enabled = ?6, client_id_policy = ?7,
                    max_devices = ?8, max_anchors = ?9, max_publish_rate = ?10,
                    crl_online_fail_open = ?11
                 WHERE id = ?1",
                params![
                    t.id,
                    t.company,
                    t.domain,
                    t.settings.max_chain_length,
                    t.settings.crl_offline_enabled,
                    t.settings.crl_online_enabled,
                    t.settings.client_id_policy.as_str(),
                    t.settings.max_devices,
                    t.settings.max_anchors,
                    t.settings.max_publish_rate,
                    t.settings.crl_online_fail_open
                ],
            )?;
            if n == 0 {
                return Err(tenant_not_found(&t.id));
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn delete_tenant(&self, id: &str, audit: AuditEntry) -> StoreResult<()> {
        let id = id.to_string();
        self.tx(move |tx| {
            // Users, anchors (with their proof-of-possession state), revoked serials,
            // CRLs, devices, settings and the CRL signer go with the row (ON DELETE
            // CASCADE).
            if tx.execute("DELETE FROM tenants WHERE id = ?1", [&id])? == 0 {
                return Err(tenant_not_found(&id));
            }
            insert_audit(tx, &audit)?;
            // The audit records stay for the management admin, under a name no tenant
            // can take, so a tenant created later with the same id starts empty.
            let deletion = tx.last_insert_rowid();
            tx.execute(
                "UPDATE audit SET tenant_id = ?2 WHERE tenant_id = ?1",
                params![id, deleted_tenant_audit_name(&id, deletion)],
            )?;
            Ok(())
        })
        .await
    }

    async fn create_user(&self, user: UserRecord, audit: AuditEntry) -> StoreResult<()> {
        self.tx(move |tx| {
            if !tenant_exists(tx, &user.tenant)? {
                return Err(tenant_not_found(&user.tenant));
            }
            insert_user(tx, &user)?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn user(&self, tenant: &str, user_name: &str) -> StoreResult<Option<UserRecord>> {
        let (tenant, user_name) = (tenant.to_string(), user_name.to_string());
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE tenant_id = ?1 AND user_name = ?2"),
                params![tenant, user_name],
                user_row,
            )
            .optional()?)
        })
        .await
    }

    async fn users(&self, tenant: &str) -> StoreResult<Vec<UserRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {USER_COLS} FROM users WHERE tenant_id = ?1 ORDER BY user_name"
            ))?;
            let users = st
                .query_map([tenant], user_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(users)
        })
        .await
    }

    async fn set_password(
        &self,
        tenant: &str,
        user_name: &str,
        password_hash: String,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, user_name) = (tenant.to_string(), user_name.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE users SET password_hash = ?3 WHERE tenant_id = ?1 AND user_name = ?2",
                params![tenant, user_name, password_hash],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("User {user_name} not found")));
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn delete_user(
        &self,
        tenant: &str,
        user_name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, user_name) = (tenant.to_string(), user_name.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM users WHERE tenant_id = ?1 AND user_name = ?2",
                params![tenant, user_name],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("User {user_name} not found")));
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn insert_certificates(
        &self,
        certs: Vec<TrustedCertRecord>,
        audit: Vec<AuditEntry>,
    ) -> StoreResult<()> {
        self.tx(move |tx| {
            insert_certs(tx, &certs)?;
            for a in &audit {
                insert_audit(tx, a)?;
            }
            Ok(())
        })
        .await
    }

    async fn certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
    ) -> StoreResult<Option<TrustedCertRecord>> {
        let (tenant, fp) = (tenant.to_string(), fingerprint.to_string());
        self.run(move |c| get_cert(c, &tenant, &fp)).await
    }

    async fn certificates(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<TrustedCertRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let (lim, off) = limit(page);
            let mut st = c.prepare(&format!(
                "SELECT {CERT_COLS} FROM trusted_certificates WHERE tenant_id = ?1
                 ORDER BY seq LIMIT ?2 OFFSET ?3"
            ))?;
            let items = st
                .query_map(params![tenant, lim, off], cert_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let total: u64 = c.query_row(
                "SELECT COUNT(*) FROM trusted_certificates WHERE tenant_id = ?1",
                [&tenant],
                |r| r.get(0),
            )?;
            Ok(Page { items, total })
        })
        .await
    }

    async fn certificate_counts(&self, tenant: &str) -> StoreResult<(u64, u64)> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(status = 'ENABLED'), 0)
                 FROM trusted_certificates WHERE tenant_id = ?1",
                [&tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
    }

    async fn tenant_anchors(&self, tenant: &str) -> StoreResult<Vec<TrustedCertRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CERT_COLS} FROM trusted_certificates WHERE tenant_id = ?1 ORDER BY seq"
            ))?;
            let items = st
                .query_map([tenant], cert_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(items)
        })
        .await
    }

    async fn update_certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
        update: CertUpdate,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord> {
        let (tenant, fp) = (tenant.to_string(), fingerprint.to_string());
        self.tx(move |tx| {
            let mut cert = get_cert(tx, &tenant, &fp)?.ok_or_else(|| cert_not_found(&fp))?;
            if let Some(n) = update.name {
                cert.name = n;
            }
            if let Some(s) = update.status {
                cert.status = s;
            }
            if let Some(a) = update.auto_registration {
                cert.auto_registration = a;
            }
            tx.execute(
                "UPDATE trusted_certificates SET name = ?3, status = ?4, auto_registration = ?5
                 WHERE tenant_id = ?1 AND fingerprint = ?2",
                params![
                    tenant,
                    fp,
                    cert.name,
                    status_str(cert.status),
                    cert.auto_registration
                ],
            )?;
            insert_audit(tx, &audit)?;
            Ok(cert)
        })
        .await
    }

    async fn delete_certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, fp) = (tenant.to_string(), fingerprint.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM trusted_certificates WHERE tenant_id = ?1 AND fingerprint = ?2",
                params![tenant, fp],
            )?;
            if n == 0 {
                return Err(cert_not_found(&fp));
            }
            // Its topic rule set assignment goes with it.
            tx.execute(
                "DELETE FROM acl_assignments WHERE tenant_id = ?1 AND target = 'anchor' AND key = ?2",
                params![tenant, fp],
            )?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn set_verification_code(
        &self,
        tenant: &str,
        fingerprint: &str,
        code: String,
        expires: i64,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord> {
        let (tenant, fp) = (tenant.to_string(), fingerprint.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE trusted_certificates SET pop_code = ?3, pop_code_expires = ?4
                 WHERE tenant_id = ?1 AND fingerprint = ?2",
                params![tenant, fp, code, expires],
            )?;
            if n == 0 {
                return Err(cert_not_found(&fp));
            }
            insert_audit(tx, &audit)?;
            get_cert(tx, &tenant, &fp)?.ok_or_else(|| cert_not_found(&fp))
        })
        .await
    }

    async fn set_proof_of_possession(
        &self,
        tenant: &str,
        fingerprint: &str,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord> {
        let (tenant, fp) = (tenant.to_string(), fingerprint.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE trusted_certificates SET pop_valid = 1, pop_code = NULL,
                    pop_code_expires = NULL
                 WHERE tenant_id = ?1 AND fingerprint = ?2",
                params![tenant, fp],
            )?;
            if n == 0 {
                return Err(cert_not_found(&fp));
            }
            insert_audit(tx, &audit)?;
            get_cert(tx, &tenant, &fp)?.ok_or_else(|| cert_not_found(&fp))
        })
        .await
    }

    async fn add_revoked_serials(
        &self,
        tenant: &str,
        serials: Vec<RevokedSerial>,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let tenant = tenant.to_string();
        self.tx(move |tx| {
            if !tenant_exists(tx, &tenant)? {
                return Err(tenant_not_found(&tenant));
            }
            for s in &serials {
                tx.execute(
                    "INSERT INTO revoked_serials (tenant_id, serial_hex, revocation_date)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant_id, serial_hex)
                     DO UPDATE SET revocation_date = excluded.revocation_date",
                    params![tenant, s.serial_hex, s.revocation_date],
                )?;
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn revoked_serials(&self, tenant: &str) -> StoreResult<Vec<RevokedSerial>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(
                "SELECT serial_hex, revocation_date FROM revoked_serials WHERE tenant_id = ?1
                 ORDER BY serial_hex",
            )?;
            let items = st
                .query_map([tenant], |r| {
                    Ok(RevokedSerial {
                        serial_hex: r.get(0)?,
                        revocation_date: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(items)
        })
        .await
    }

    async fn put_crl(&self, crl: CrlRecord, audit: AuditEntry) -> StoreResult<()> {
        self.tx(move |tx| {
            if !tenant_exists(tx, &crl.tenant)? {
                return Err(tenant_not_found(&crl.tenant));
            }
            tx.execute(
                "INSERT INTO crls (tenant_id, issuer, issuer_key, der, this_update, next_update,
                    revoked_count, uploaded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (tenant_id, issuer_key) DO UPDATE SET issuer = excluded.issuer,
                    der = excluded.der, this_update = excluded.this_update,
                    next_update = excluded.next_update, revoked_count = excluded.revoked_count,
                    uploaded_at = excluded.uploaded_at",
                params![
                    crl.tenant,
                    crl.issuer,
                    crl.issuer_key,
                    crl.der,
                    crl.this_update,
                    crl.next_update,
                    crl.revoked_count,
                    crl.uploaded_at
                ],
            )?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn crls(&self, tenant: &str) -> StoreResult<Vec<CrlRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CRL_COLS} FROM crls WHERE tenant_id = ?1 ORDER BY issuer"
            ))?;
            let items = st
                .query_map([tenant], crl_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(items)
        })
        .await
    }

    async fn crl_signer(&self, tenant: &str) -> StoreResult<Option<CrlSigner>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let row: Option<(Option<Vec<u8>>, Option<Vec<u8>>)> = c
                .query_row(
                    "SELECT crl_signer_cert, crl_signer_key FROM tenants WHERE id = ?1",
                    [&tenant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                None => Err(tenant_not_found(&tenant)),
                Some((Some(cert_der), Some(key_pkcs8))) => Ok(Some(CrlSigner {
                    cert_der,
                    key_pkcs8,
                })),
                Some(_) => Ok(None),
            }
        })
        .await
    }

    async fn init_crl_signer(&self, tenant: &str, signer: CrlSigner) -> StoreResult<CrlSigner> {
        let tenant = tenant.to_string();
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE tenants SET crl_signer_cert = ?2, crl_signer_key = ?3
                 WHERE id = ?1 AND crl_signer_cert IS NULL",
                params![tenant, signer.cert_der, signer.key_pkcs8],
            )?;
            if n == 1 {
                return Ok(signer);
            }
            let row: Option<(Vec<u8>, Vec<u8>)> = tx
                .query_row(
                    "SELECT crl_signer_cert, crl_signer_key FROM tenants WHERE id = ?1",
                    [&tenant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (cert_der, key_pkcs8) = row.ok_or_else(|| tenant_not_found(&tenant))?;
            Ok(CrlSigner {
                cert_der,
                key_pkcs8,
            })
        })
        .await
    }

    async fn devices(&self, tenant: &str, page: PageRequest) -> StoreResult<Page<DeviceRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let (lim, off) = limit(page);
            let mut st = c.prepare(&format!(
                "SELECT {DEVICE_COLS} FROM devices WHERE tenant_id = ?1
                 ORDER BY common_name LIMIT ?2 OFFSET ?3"
            ))?;
            let items = st
                .query_map(params![tenant, lim, off], device_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let total: u64 = c.query_row(
                "SELECT COUNT(*) FROM devices WHERE tenant_id = ?1",
                [&tenant],
                |r| r.get(0),
            )?;
            Ok(Page { items, total })
        })
        .await
    }

    async fn device(&self, tenant: &str, common_name: &str) -> StoreResult<Option<DeviceRecord>> {
        // An indexed point read on the read-only connection: microseconds, never behind
        // a writer, so it runs here rather than on the blocking pool.
        let reader = self
            .reader
            .lock()
            .map_err(|_| StoreError::Backend("database reader lock poisoned".into()))?;
        get_device(&reader, tenant, common_name)
    }

    async fn preregister_device(&self, d: DeviceRecord, audit: AuditEntry) -> StoreResult<()> {
        self.tx(move |tx| {
            if !tenant_exists(tx, &d.tenant)? {
                return Err(tenant_not_found(&d.tenant));
            }
            let n = tx.execute(
                "INSERT OR IGNORE INTO devices (tenant_id, common_name, status, anchor_fingerprint,
                    first_connection, last_connection, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    d.tenant,
                    d.common_name,
                    d.status.as_str(),
                    d.anchor_fingerprint,
                    d.first_connection,
                    d.last_connection,
                    d.created_at
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(Conflict::DeviceExists {
                    common_name: d.common_name,
                }));
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn set_device_status(
        &self,
        tenant: &str,
        common_name: &str,
        status: DeviceStatus,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<DeviceRecord> {
        let (tenant, cn) = (tenant.to_string(), common_name.to_string());
        self.tx(move |tx| {
            if !tenant_exists(tx, &tenant)? {
                return Err(tenant_not_found(&tenant));
            }
            tx.execute(
                "INSERT INTO devices (tenant_id, common_name, status, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, common_name) DO UPDATE SET status = excluded.status",
                params![tenant, cn, status.as_str(), now],
            )?;
            insert_audit(tx, &audit)?;
            get_device(tx, &tenant, &cn)?
                .ok_or_else(|| StoreError::Backend("device vanished inside its transaction".into()))
        })
        .await
    }

    async fn register_device(
        &self,
        tenant: &str,
        common_name: &str,
        anchor_fingerprint: &str,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<bool> {
        let (tenant, cn, fp) = (
            tenant.to_string(),
            common_name.to_string(),
            anchor_fingerprint.to_string(),
        );
        self.tx(move |tx| {
            if !tenant_exists(tx, &tenant)? {
                return Err(tenant_not_found(&tenant));
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO devices (tenant_id, common_name, status,
                        anchor_fingerprint, first_connection, last_connection, created_at)
                     VALUES (?1, ?2, 'REGISTERED', ?3, ?4, ?4, ?4)",
                )?
                .execute(params![tenant, cn, fp, now])?;
            let changed = inserted == 1
                || tx
                    .prepare_cached(
                        "UPDATE devices SET first_connection = ?4, last_connection = ?4,
                            anchor_fingerprint = ?3
                         WHERE tenant_id = ?1 AND common_name = ?2 AND status = 'REGISTERED'
                            AND first_connection IS NULL",
                    )?
                    .execute(params![tenant, cn, fp, now])?
                    == 1;
            if changed {
                insert_audit(tx, &audit)?;
            }
            Ok(changed)
        })
        .await
    }

    async fn record_last_seen(&self, seen: Vec<(String, String, i64)>) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.tx(move |tx| {
            let mut st = tx.prepare(
                "UPDATE devices SET last_connection = MAX(COALESCE(last_connection, 0), ?3),
                    first_connection = COALESCE(first_connection, ?3)
                 WHERE tenant_id = ?1 AND common_name = ?2",
            )?;
            for (tenant, cn, at) in &seen {
                st.execute(params![tenant, cn, at])?;
            }
            Ok(())
        })
        .await
    }

    async fn put_server_certificate(
        &self,
        cert: ServerCertRecord,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        self.tx(move |tx| {
            let chain = encode_chain(&cert.chain_der);
            tx.execute(
                "INSERT INTO server_certificate (id, name, chain_der, key_pkcs8, imported_at)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    chain_der = excluded.chain_der, key_pkcs8 = excluded.key_pkcs8,
                    imported_at = excluded.imported_at",
                params![cert.name, chain, cert.key_pkcs8, cert.imported_at],
            )?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn server_certificate(&self) -> StoreResult<Option<ServerCertRecord>> {
        self.run(|c| {
            let row: Option<(String, Vec<u8>, Vec<u8>, i64)> = c
                .query_row(
                    "SELECT name, chain_der, key_pkcs8, imported_at FROM server_certificate
                     WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            row.map(|(name, chain, key_pkcs8, imported_at)| {
                Ok(ServerCertRecord {
                    name,
                    chain_der: decode_chain(&chain)?,
                    key_pkcs8,
                    imported_at,
                })
            })
            .transpose()
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.tx(move |tx| insert_audit(tx, &entry)).await
    }

    async fn audit(
        &self,
        tenant: Option<&str>,
        page: PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let tenant = tenant.map(str::to_string);
        self.run(move |c| {
            let (lim, off) = limit(page);
            let cols = "id, at, actor, tenant_id, action, target, fingerprint, detail";
            let (items, total) = match &tenant {
                Some(t) => {
                    let mut st = c.prepare(&format!(
                        "SELECT {cols} FROM audit WHERE tenant_id = ?1 ORDER BY id DESC
                         LIMIT ?2 OFFSET ?3"
                    ))?;
                    let items = st
                        .query_map(params![t, lim, off], audit_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    let total: u64 = c.query_row(
                        "SELECT COUNT(*) FROM audit WHERE tenant_id = ?1",
                        [t],
                        |r| r.get(0),
                    )?;
                    (items, total)
                }
                None => {
                    let mut st = c.prepare(&format!(
                        "SELECT {cols} FROM audit ORDER BY id DESC LIMIT ?1 OFFSET ?2"
                    ))?;
                    let items = st
                        .query_map(params![lim, off], audit_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    let total: u64 = c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?;
                    (items, total)
                }
            };
            Ok(Page { items, total })
        })
        .await
    }

    async fn acl_rule_sets(&self, tenant: &str) -> StoreResult<Vec<AclRuleSetRecord>> {
        let tenant = tenant.to_string();
        self.tx(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {ACL_COLS} FROM acl_rule_sets WHERE tenant_id = ?1 ORDER BY name"
                ))?
                .query_map([&tenant], acl_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_acl_rule_set(
        &self,
        set: AclRuleSetRecord,
        audit: AuditEntry,
    ) -> StoreResult<bool> {
        self.tx(move |tx| {
            if !tenant_exists(tx, &set.tenant)? {
                return Err(tenant_not_found(&set.tenant));
            }
            let existed = tx
                .prepare_cached("SELECT 1 FROM acl_rule_sets WHERE tenant_id = ?1 AND name = ?2")?
                .query_row(params![set.tenant, set.name], |_| Ok(()))
                .optional()?
                .is_some();
            tx.execute(
                "INSERT INTO acl_rule_sets (tenant_id, name, body, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, name) DO UPDATE
                 SET body = excluded.body, updated_at = excluded.updated_at",
                params![set.tenant, set.name, set.body, set.updated_at],
            )?;
            insert_audit(tx, &audit)?;
            Ok(!existed)
        })
        .await
    }

    async fn delete_acl_rule_set(
        &self,
        tenant: &str,
        name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.tx(move |tx| {
            let used = tx
                .prepare_cached(
                    "SELECT 1 FROM acl_assignments WHERE tenant_id = ?1 AND rule_set = ?2 LIMIT 1",
                )?
                .query_row(params![tenant, name], |_| Ok(()))
                .optional()?
                .is_some();
            if used {
                return Err(StoreError::Conflict(Conflict::RuleSetInUse { name }));
            }
            if tx.execute(
                "DELETE FROM acl_rule_sets WHERE tenant_id = ?1 AND name = ?2",
                params![tenant, name],
            )? == 0
            {
                return Err(StoreError::NotFound(format!("Rule set {name} not found")));
            }
            insert_audit(tx, &audit)?;
            Ok(())
        })
        .await
    }

    async fn acl_assignments(&self, tenant: &str) -> StoreResult<Vec<AclAssignment>> {
        let tenant = tenant.to_string();
        self.tx(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {ACL_ASSIGN_COLS} FROM acl_assignments WHERE tenant_id = ?1 ORDER BY target, key"
                ))?
                .query_map([&tenant], acl_assignment_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn set_acl_assignment(
        &self,
        tenant: &str,
        target: AclTarget,
        key: &str,
        rule_set: Option<&str>,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, key, rule_set) = (
            tenant.to_string(),
            key.to_string(),
            rule_set.map(str::to_string),
        );
        self.tx(move |tx| {
            if !tenant_exists(tx, &tenant)? {
                return Err(tenant_not_found(&tenant));
            }
            match rule_set {
                Some(set) => {
                    let exists = tx
                        .prepare_cached(
                            "SELECT 1 FROM acl_rule_sets WHERE tenant_id = ?1 AND name = ?2",
                        )?
                        .query_row(params![tenant, set], |_| Ok(()))
                        .optional()?
                        .is_some();
                    if !exists {
                        return Err(StoreError::NotFound(format!("Rule set {set} not found")));
                    }
                    tx.execute(
                        "INSERT INTO acl_assignments (tenant_id, target, key, rule_set)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (tenant_id, target, key) DO UPDATE
                         SET rule_set = excluded.rule_set",
                        params![tenant, target.as_str(), key, set],
                    )?;
                }
                None => {
                    if tx.execute(
                        "DELETE FROM acl_assignments WHERE tenant_id = ?1 AND target = ?2 AND key = ?3",
                        params![tenant, target.as_str(), key],
                    )? == 0
                    {
                        return Err(StoreError::NotFound(format!(
                            "No rule set is assigned to {} {key}",
                            target.as_str()
                        )));
                    }
                }
            }
            insert_audit(tx, &audit)?;
            Ok(())
        })
        .await
    }

    async fn add_tenant_ca(
        &self,
        anchor: TrustedCertRecord,
        ca: TenantCaRecord,
        retire_at: Option<i64>,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        self.tx(move |tx| {
            let active: Option<String> = tx
                .query_row(
                    "SELECT fingerprint FROM tenant_cas WHERE tenant_id = ?1 AND state = 'ACTIVE'",
                    [&ca.tenant],
                    |r| r.get(0),
                )
                .optional()?;
            match (active, retire_at) {
                (Some(_), None) => {
                    return Err(StoreError::Conflict(Conflict::ActiveCaExists {
                        tenant: ca.tenant.clone(),
                    }))
                }
                (Some(fp), Some(at)) => {
                    tx.execute(
                        "UPDATE tenant_cas SET state = 'RETIRING', retire_at = ?2 WHERE fingerprint = ?1",
                        params![fp, at],
                    )?;
                }
                (None, _) => {}
            }
            insert_certs(tx, std::slice::from_ref(&anchor))?;
            tx.execute(
                &format!("INSERT INTO tenant_cas ({CA_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    ca.tenant,
                    ca.fingerprint,
                    ca.key_type,
                    ca.key_encrypted,
                    ca.device_validity_days,
                    ca.renewal_window_days,
                    ca.revoke_on_renewal,
                    ca.state.as_str(),
                    ca.retire_at,
                    ca.created_at
                ],
            )?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn tenant_cas(&self, tenant: &str) -> StoreResult<Vec<TenantCaRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CA_COLS} FROM tenant_cas WHERE tenant_id = ?1
                 ORDER BY state = 'ACTIVE' DESC, created_at DESC, fingerprint"
            ))?;
            let rows = st
                .query_map([&tenant], ca_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn retire_due_cas(&self, now: i64) -> StoreResult<Vec<(String, String)>> {
        // A read first: the periodic check writes nothing when nothing is due.
        let due = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT 1 FROM tenant_cas WHERE state = 'RETIRING' AND retire_at <= ?1 LIMIT 1",
                    [now],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
            })
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.tx(move |tx| {
            let due = {
                let mut st = tx.prepare(
                    "SELECT tenant_id, fingerprint FROM tenant_cas
                     WHERE state = 'RETIRING' AND retire_at <= ?1",
                )?;
                let rows = st
                    .query_map([now], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            };
            for (tenant, fp) in &due {
                tx.execute(
                    "UPDATE tenant_cas SET state = 'RETIRED' WHERE fingerprint = ?1",
                    [fp],
                )?;
                tx.execute(
                    "UPDATE trusted_certificates SET status = 'DISABLED' WHERE fingerprint = ?1",
                    [fp],
                )?;
                insert_audit(
                    tx,
                    &AuditEntry::new("system", Some(tenant), "CERTIFICATE_AUTHORITY_RETIRED")
                        .fingerprint(fp)
                        .detail(
                            "the rotation's overlap ended: its trusted certificate is disabled",
                        ),
                )?;
            }
            Ok(due)
        })
        .await
    }

    async fn put_enrollment_secrets(
        &self,
        tenant: &str,
        secrets: Vec<EnrollmentSecretRecord>,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let tenant = tenant.to_string();
        self.tx(move |tx| {
            if !tenant_exists(tx, &tenant)? {
                return Err(tenant_not_found(&tenant));
            }
            for e in &secrets {
                tx.execute(
                    &format!(
                        "INSERT INTO enrollment_secrets ({SECRET_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                         ON CONFLICT (tenant_id, common_name) DO UPDATE SET
                            secret_hash = excluded.secret_hash, expires_at = excluded.expires_at,
                            created_at = excluded.created_at, used_at = NULL"
                    ),
                    params![tenant, e.common_name, e.secret_hash, e.expires_at, e.created_at],
                )?;
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn enrollment_secret(
        &self,
        tenant: &str,
        common_name: &str,
    ) -> StoreResult<Option<EnrollmentSecretRecord>> {
        let (tenant, cn) = (tenant.to_string(), common_name.to_string());
        self.run(move |c| {
            tenant_row_by(
                c,
                &format!(
                    "SELECT {SECRET_COLS} FROM enrollment_secrets WHERE tenant_id = ?1 AND common_name = ?2"
                ),
                &tenant,
                &cn,
                secret_row,
            )
        })
        .await
    }

    async fn enrollment_secrets(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<EnrollmentSecretRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            tenant_page(
                c,
                &format!(
                    "SELECT {SECRET_COLS} FROM enrollment_secrets WHERE tenant_id = ?1
                     ORDER BY common_name LIMIT ?2 OFFSET ?3"
                ),
                "SELECT COUNT(*) FROM enrollment_secrets WHERE tenant_id = ?1",
                &tenant,
                page,
                secret_row,
            )
        })
        .await
    }

    async fn delete_enrollment_secret(
        &self,
        tenant: &str,
        common_name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        let (tenant, cn) = (tenant.to_string(), common_name.to_string());
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM enrollment_secrets WHERE tenant_id = ?1 AND common_name = ?2",
                params![tenant, cn],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "No enrollment secret for {cn}"
                )));
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn enroll_with_secret(
        &self,
        secret_hash: &str,
        now: i64,
        issued: IssuedCertRecord,
        audit: AuditEntry,
    ) -> StoreResult<bool> {
        let secret_hash = secret_hash.to_string();
        self.tx(move |tx| {
            let n = tx.execute(
                "UPDATE enrollment_secrets SET used_at = ?4
                 WHERE tenant_id = ?1 AND common_name = ?2 AND secret_hash = ?3
                    AND used_at IS NULL AND expires_at > ?4",
                params![issued.tenant, issued.common_name, secret_hash, now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            insert_issued(tx, &issued)?;
            insert_audit(tx, &audit)?;
            Ok(true)
        })
        .await
    }

    async fn record_renewal(
        &self,
        issued: IssuedCertRecord,
        revoke: Option<RevokedSerial>,
        audit: AuditEntry,
    ) -> StoreResult<()> {
        self.tx(move |tx| {
            if !tenant_exists(tx, &issued.tenant)? {
                return Err(tenant_not_found(&issued.tenant));
            }
            insert_issued(tx, &issued)?;
            if let Some(r) = &revoke {
                tx.execute(
                    "UPDATE issued_certificates SET revoked_at = ?3
                     WHERE tenant_id = ?1 AND serial_hex = ?2 AND revoked_at IS NULL",
                    params![issued.tenant, r.serial_hex, r.revocation_date],
                )?;
                revoke_serial(tx, &issued.tenant, r)?;
            }
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn issued_certificate(
        &self,
        tenant: &str,
        serial_hex: &str,
    ) -> StoreResult<Option<IssuedCertRecord>> {
        let (tenant, serial) = (tenant.to_string(), serial_hex.to_string());
        self.run(move |c| tenant_row_by(c, ISSUED_BY_SERIAL, &tenant, &serial, issued_row))
            .await
    }

    async fn issued_certificates(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<IssuedCertRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            tenant_page(
                c,
                &format!(
                    "SELECT {ISSUED_COLS} FROM issued_certificates WHERE tenant_id = ?1
                     ORDER BY issued_at DESC, serial_hex LIMIT ?2 OFFSET ?3"
                ),
                "SELECT COUNT(*) FROM issued_certificates WHERE tenant_id = ?1",
                &tenant,
                page,
                issued_row,
            )
        })
        .await
    }

    async fn revoke_issued(
        &self,
        tenant: &str,
        serial_hex: &str,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<IssuedCertRecord> {
        let (tenant, serial) = (tenant.to_string(), serial_hex.to_string());
        self.tx(move |tx| {
            let Some(mut rec) = tenant_row_by(tx, ISSUED_BY_SERIAL, &tenant, &serial, issued_row)?
            else {
                return Err(StoreError::NotFound(format!(
                    "Issued certificate {serial} not found"
                )));
            };
            if rec.revoked_at.is_none() {
                rec.revoked_at = Some(now);
                tx.execute(
                    "UPDATE issued_certificates SET revoked_at = ?3 WHERE tenant_id = ?1 AND serial_hex = ?2",
                    params![tenant, serial, now],
                )?;
                revoke_serial(
                    tx,
                    &tenant,
                    &RevokedSerial {
                        serial_hex: serial.clone(),
                        revocation_date: now,
                    },
                )?;
            }
            insert_audit(tx, &audit)?;
            Ok(rec)
        })
        .await
    }

    async fn issued_expiring(
        &self,
        tenant: &str,
        until: i64,
    ) -> StoreResult<Vec<IssuedCertRecord>> {
        let tenant = tenant.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {ISSUED_COLS} FROM issued_certificates
                 WHERE tenant_id = ?1 AND revoked_at IS NULL AND not_after <= ?2
                 ORDER BY not_after, serial_hex"
            ))?;
            let rows = st
                .query_map(params![tenant, until], issued_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn issued_expiring_counts(
        &self,
        now: i64,
        until: i64,
    ) -> StoreResult<std::collections::HashMap<String, u64>> {
        self.run(move |c| {
            let mut st = c.prepare(
                "SELECT tenant_id, COUNT(*) FROM issued_certificates
                 WHERE revoked_at IS NULL AND not_after > ?1 AND not_after <= ?2
                 GROUP BY tenant_id",
            )?;
            let rows = st
                .query_map(params![now, until], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
                })?
                .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn trust_material(&self) -> StoreResult<TrustMaterial> {
        self.tx(|tx| {
            let tenants = tx
                .prepare(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY id"))?
                .query_map([], tenant_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let anchors = tx
                .prepare(&format!(
                    "SELECT {CERT_COLS} FROM trusted_certificates ORDER BY seq"
                ))?
                .query_map([], cert_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let revoked = tx
                .prepare("SELECT tenant_id, serial_hex, revocation_date FROM revoked_serials")?
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        RevokedSerial {
                            serial_hex: r.get(1)?,
                            revocation_date: r.get(2)?,
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let crls = tx
                .prepare(&format!(
                    "SELECT {CRL_COLS} FROM crls ORDER BY tenant_id, issuer"
                ))?
                .query_map([], crl_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let blocked = tx
                .prepare("SELECT tenant_id, common_name FROM devices WHERE status = 'BLOCKED'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let acl_rule_sets = tx
                .prepare(&format!(
                    "SELECT {ACL_COLS} FROM acl_rule_sets ORDER BY tenant_id, name"
                ))?
                .query_map([], acl_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let acl_assignments = tx
                .prepare(&format!("SELECT {ACL_ASSIGN_COLS} FROM acl_assignments"))?
                .query_map([], acl_assignment_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TrustMaterial {
                tenants,
                anchors,
                revoked,
                crls,
                blocked,
                acl_rule_sets,
                acl_assignments,
            })
        })
        .await
    }
}

/// Stores a chain as concatenated DER (each element is a self-delimiting SEQUENCE).
fn encode_chain(chain: &[Vec<u8>]) -> Vec<u8> {
    chain.concat()
}

fn decode_chain(bytes: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
    certs::pem::read_certificates(bytes)
        .map(|v| v.into_iter().map(|c| c.as_ref().to_vec()).collect())
        .map_err(|e| StoreError::Backend(format!("stored server certificate chain: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantRecord {
        TenantRecord {
            id: id.into(),
            company: "ACME".into(),
            domain: None,
            created_at: 1,
            settings: TenantSettings::default(),
        }
    }

    fn user(tenant: &str, name: &str) -> UserRecord {
        UserRecord {
            tenant: tenant.into(),
            user_name: name.into(),
            password_hash: "$argon2id$x".into(),
            roles: vec![Role::TenantAdmin],
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn wal_and_durable_settings_and_cascade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).unwrap();
        let (mode, sync): (String, i64) = store
            .run(|c| {
                Ok((
                    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                    c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");

        let audit = AuditEntry::new("system", Some("t1"), "TENANT_CREATED");
        store
            .create_tenant(tenant("t1"), user("t1", "admin"), audit.clone())
            .await
            .unwrap();
        let err = store
            .create_tenant(tenant("t1"), user("t1", "admin"), audit.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(Conflict::TenantExists(ref t)) if t == "t1"));
        // The failed creation left nothing behind: one audit row, one user.
        let page = PageRequest { size: 10, page: 1 };
        assert_eq!(store.audit(None, page).await.unwrap().total, 1);
        assert_eq!(store.users("t1").await.unwrap().len(), 1);

        store
            .delete_tenant(
                "t1",
                AuditEntry::new("system", Some("t1"), "TENANT_DELETED"),
            )
            .await
            .unwrap();
        assert!(store.users("t1").await.unwrap().is_empty());
        assert!(store.user("t1", "admin").await.unwrap().is_none());
        // The records moved to the archived name (2: the deletion's sequence number).
        assert_eq!(store.audit(Some("t1"), page).await.unwrap().total, 0);
        let archived = deleted_tenant_audit_name("t1", 2);
        assert_eq!(store.audit(Some(&archived), page).await.unwrap().total, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_commit_together_and_a_failing_one_changes_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        store
            .create_tenant(
                tenant("t1"),
                user("t1", "admin"),
                AuditEntry::new("system", Some("t1"), "TENANT_CREATED"),
            )
            .await
            .unwrap();
        // 300 registrations at once, every tenth into a tenant that does not exist: those
        // fail with their own error, inside the same group commits as the others.
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let t = if i % 10 == 0 { "nope" } else { "t1" };
                    let a = AuditEntry::new("device", Some(t), "DEVICE_REGISTERED");
                    store
                        .register_device(t, &format!("d{i}"), "fp", 100, a)
                        .await
                })
            })
            .collect();
        // And 30 writes that change something, then fail: nothing of theirs stays.
        let partial: Vec<_> = (0..30)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .tx(move |t| {
                            insert_audit(t, &AuditEntry::new("test", Some("t1"), "PARTIAL"))?;
                            Err::<(), _>(StoreError::NotFound(format!("half-done {i}")))
                        })
                        .await
                })
            })
            .collect();
        for (i, p) in partial.into_iter().enumerate() {
            assert_eq!(
                p.await.unwrap().unwrap_err().to_string(),
                format!("half-done {i}")
            );
        }
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(registered) => {
                    assert!(i % 10 != 0, "d{i} registered into a missing tenant");
                    assert!(registered, "d{i}");
                }
                Err(e) => {
                    assert_eq!(i % 10, 0, "d{i}: {e}");
                    assert_eq!(e.to_string(), "Tenant nope not found");
                }
            }
        }
        // Every acknowledged registration is in the file, read by a new connection.
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        let page = reopened
            .devices(
                "t1",
                PageRequest {
                    size: 1000,
                    page: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, 270);
        let audit: i64 = reopened
            .run(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM audit WHERE action = 'DEVICE_REGISTERED'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(
            audit, 270,
            "one audit entry per registration, none for the failed ones"
        );
        let partial: i64 = reopened
            .run(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM audit WHERE action = 'PARTIAL'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(partial, 0, "a failed write is rolled back to its savepoint");
    }

    #[tokio::test]
    async fn last_seen_is_monotonic() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store
            .create_tenant(
                tenant("t1"),
                user("t1", "admin"),
                AuditEntry::new("system", Some("t1"), "TENANT_CREATED"),
            )
            .await
            .unwrap();
        let a = AuditEntry::new("device", Some("t1"), "DEVICE_REGISTERED");
        assert!(store
            .register_device("t1", "d1", "fp", 100, a.clone())
            .await
            .unwrap());
        assert!(!store
            .register_device("t1", "d1", "fp", 200, a)
            .await
            .unwrap());
        store
            .record_last_seen(vec![("t1".into(), "d1".into(), 300)])
            .await
            .unwrap();
        store
            .record_last_seen(vec![("t1".into(), "d1".into(), 250)])
            .await
            .unwrap();
        let d = store.device("t1", "d1").await.unwrap().unwrap();
        assert_eq!(d.first_connection, Some(100));
        assert_eq!(d.last_connection, Some(300));
    }

    #[tokio::test]
    async fn a_full_database_is_store_error_full_and_keeps_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        // Capped at its current size: the first write that needs a page fails.
        let cap = store.limit_size(1).unwrap();
        assert!(cap > 0);
        let mut created = Vec::new();
        let mut full = None;
        for i in 0..500 {
            let id = format!("t{i}");
            let audit =
                AuditEntry::new("system", Some(&id), "TENANT_CREATED").detail("x".repeat(512));
            match store
                .create_tenant(tenant(&id), user(&id, "admin"), audit)
                .await
            {
                Ok(()) => created.push(id),
                Err(e) => {
                    full = Some((id, e));
                    break;
                }
            }
        }
        let (refused, err) = full.expect("the capped database fills up");
        assert!(matches!(err, StoreError::Full(_)), "{err:?}");
        // The refused change left nothing; earlier ones are intact; reads still work.
        assert!(store.tenant(&refused).await.unwrap().is_none());
        assert!(store.user(&refused, "admin").await.unwrap().is_none());
        for id in &created {
            assert!(store.tenant(id).await.unwrap().is_some(), "{id}");
        }
        let page = PageRequest { size: 10, page: 1 };
        assert_eq!(
            store.audit(None, page).await.unwrap().total,
            created.len() as u64
        );
    }
}
