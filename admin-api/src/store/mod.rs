//! The [`Store`] trait: everything the admin API persists, as plain records.
//!
//! Every mutating method takes the [`AuditEntry`] describing the change and writes it in
//! the same transaction, so the audit log never misses or invents a change. A method
//! returns once the change is durable: a 2xx answer means it survives a crash.
//!
//! [`sqlite::SqliteStore`] is the embedded default (one file, WAL, `synchronous=FULL`).
//! [`postgres::PostgresStore`], for several front-end nodes, implements the same trait
//! with one transaction per method, and returns a receiver from [`Store::changes`] fed
//! by `LISTEN/NOTIFY` and a change counter, so every node rebuilds its
//! [`certs::TrustStore`] when another node changes anchors, CRLs, devices or tenant
//! settings.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use certs::AnchorStatus;

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with a record that exists.
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// The disk (or the configured database size limit) is full: the change was not
    /// stored, and what was stored before is intact.
    #[error("storage full: {0}")]
    Full(String),
    /// The backend failed (I/O, corruption, a bug). Never shown to clients.
    #[error("storage error: {0}")]
    Backend(String),
    /// The database cannot be reached (connection refused or lost, shutting down): the
    /// change was not made; retrying later may succeed. Never shown to clients.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// The conflicts a store reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A tenant with this id exists.
    TenantExists(String),
    /// A user with this name exists in the tenant.
    UserExists {
        /// Tenant id.
        tenant: String,
        /// User name.
        user: String,
    },
    /// A certificate with this fingerprint is trusted (by any tenant).
    CertificateExists {
        /// SHA-1 fingerprint.
        fingerprint: String,
    },
    /// Another tenant trusts a certificate with the same public key.
    PublicKeyTrustedElsewhere {
        /// SHA-1 fingerprint of the certificate being added.
        fingerprint: String,
    },
    /// Another tenant's trust anchor issued this certificate (its key signed it and its
    /// subject is this certificate's issuer): devices of that tenant would chain to it.
    IssuedByAnotherTenantsAnchor {
        /// SHA-1 fingerprint of the certificate being added.
        fingerprint: String,
    },
    /// This certificate issued another tenant's trust anchor (its key signed it and its
    /// subject is that anchor's issuer): devices of that tenant would chain to it.
    IssuerOfAnotherTenantsAnchor {
        /// SHA-1 fingerprint of the certificate being added.
        fingerprint: String,
    },
    /// The device is already registered.
    DeviceExists {
        /// Common Name.
        common_name: String,
    },
    /// The tenant trusts as many certificates as its `maxAnchors` allows.
    AnchorLimit {
        /// Tenant id.
        tenant: String,
        /// The limit.
        max: u32,
        /// Certificates the tenant trusts now.
        have: u64,
    },
    /// A topic rule set is still assigned to a trusted certificate or a device.
    RuleSetInUse {
        /// The rule set's name.
        name: String,
    },
    /// The tenant has an active certificate authority: rotate it instead.
    ActiveCaExists {
        /// Tenant id.
        tenant: String,
    },
}

/// How a tenant treats an MQTT ClientId that differs from the certificate's CN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdPolicy {
    /// Refuse the connection.
    Strict,
    /// Replace the ClientId with the CN.
    Override,
}

impl ClientIdPolicy {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIdPolicy::Strict => "strict",
            ClientIdPolicy::Override => "override",
        }
    }

    /// Parses the stored and wire name.
    pub fn parse(s: &str) -> Option<ClientIdPolicy> {
        match s {
            "strict" => Some(ClientIdPolicy::Strict),
            "override" => Some(ClientIdPolicy::Override),
            _ => None,
        }
    }
}

/// A tenant's device policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    /// Maximum chain length including device and anchor.
    pub max_chain_length: u8,
    /// Enforce the manual revocation list and uploaded CRLs.
    pub crl_offline_enabled: bool,
    /// Fetch CRL distribution points named by device certificates.
    pub crl_online_enabled: bool,
    /// With online checking: admit a device whose revocation status a distribution
    /// point cannot give (unreachable, `ldap:`, refused by the egress policy, stale).
    /// Default false: such a device is refused (fail-closed).
    pub crl_online_fail_open: bool,
    /// ClientId policy.
    pub client_id_policy: ClientIdPolicy,
    /// Maximum devices connected at once (0: unlimited). Enforced by the broker.
    pub max_devices: u32,
    /// Maximum trusted certificates (0: unlimited). Enforced at upload.
    pub max_anchors: u32,
    /// Maximum PUBLISH packets per second from all the tenant's devices together
    /// (0: unlimited). Enforced by the broker.
    pub max_publish_rate: u32,
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            max_chain_length: certs::trust::DEFAULT_MAX_CHAIN_LENGTH,
            crl_offline_enabled: true,
            crl_online_enabled: false,
            crl_online_fail_open: false,
            client_id_policy: ClientIdPolicy::Strict,
            max_devices: 0,
            max_anchors: 0,
            max_publish_rate: 0,
        }
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Tenant id (`[a-z0-9][a-z0-9_-]*`).
    pub id: String,
    /// Company name.
    pub company: String,
    /// Domain, if given.
    pub domain: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Device policy.
    pub settings: TenantSettings,
}

/// A role a user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manage the tenant (or, in the management tenant, every tenant).
    TenantAdmin,
    /// Read the tenant's resources.
    TenantRead,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::TenantAdmin => "ROLE_TENANT_ADMIN",
            Role::TenantRead => "ROLE_TENANT_READ",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ROLE_TENANT_ADMIN" => Some(Role::TenantAdmin),
            "ROLE_TENANT_READ" => Some(Role::TenantRead),
            _ => None,
        }
    }
}

/// A user of a tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Tenant id.
    pub tenant: String,
    /// User name.
    pub user_name: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("tenant", &self.tenant)
            .field("user_name", &self.user_name)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}

/// An uploaded trust anchor with the fields parsed at upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCertRecord {
    /// Owning tenant.
    pub tenant: String,
    /// SHA-1 fingerprint, lowercase hex (unique over all tenants).
    pub fingerprint: String,
    /// Display name.
    pub name: String,
    /// ENABLED or DISABLED.
    pub status: AnchorStatus,
    /// Devices register themselves at first connect.
    pub auto_registration: bool,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The SubjectPublicKeyInfo, DER (one public key maps to one tenant).
    pub spki_der: Vec<u8>,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Signature algorithm name.
    pub algorithm_name: String,
    /// X.509 version.
    pub version: u32,
    /// Proof of possession verified.
    pub pop_valid: bool,
    /// The outstanding verification code, if one was issued.
    pub pop_code: Option<String>,
    /// When the verification code stops being accepted, Unix seconds.
    pub pop_code_expires: Option<i64>,
    /// Upload time, Unix seconds.
    pub created_at: i64,
}

/// A change to a trusted certificate (PUT changes only these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertUpdate {
    /// New name.
    pub name: Option<String>,
    /// New status.
    pub status: Option<AnchorStatus>,
    /// New auto-registration flag.
    pub auto_registration: Option<bool>,
}

/// A serial number revoked by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Serial, lowercase hex (normalised).
    pub serial_hex: String,
    /// Revocation date, Unix seconds.
    pub revocation_date: i64,
}

/// An uploaded CRL (one per tenant and issuer: a newer upload replaces the older).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Issuer DN, RFC 4514.
    pub issuer: String,
    /// Issuer DN raw DER, hex (the replacement key).
    pub issuer_key: String,
    /// The CRL, DER.
    pub der: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: Option<i64>,
    /// Number of revoked entries.
    pub revoked_count: u64,
    /// Upload time, Unix seconds.
    pub uploaded_at: i64,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Registered (at first connect or in advance).
    Registered,
    /// Blocked by an admin.
    Blocked,
}

impl DeviceStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Registered => "REGISTERED",
            DeviceStatus::Blocked => "BLOCKED",
        }
    }

    /// Parses the stored and wire name.
    pub fn parse(s: &str) -> Option<DeviceStatus> {
        match s {
            "REGISTERED" => Some(DeviceStatus::Registered),
            "BLOCKED" => Some(DeviceStatus::Blocked),
            _ => None,
        }
    }
}

/// A device of a tenant, known by its certificate's Common Name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Common Name (the MQTT ClientId).
    pub common_name: String,
    /// Registered or blocked.
    pub status: DeviceStatus,
    /// The anchor that verified its first connection.
    pub anchor_fingerprint: Option<String>,
    /// First connection, Unix seconds (None: pre-registered, never connected).
    pub first_connection: Option<i64>,
    /// Last connection seen, Unix seconds.
    pub last_connection: Option<i64>,
    /// Record creation, Unix seconds.
    pub created_at: i64,
}

/// The server's own certificate chain and key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertRecord {
    /// Display name.
    pub name: String,
    /// Leaf first, then the issuers, DER.
    pub chain_der: Vec<Vec<u8>>,
    /// Private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// Import time, Unix seconds.
    pub imported_at: i64,
}

impl std::fmt::Debug for ServerCertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertRecord")
            .field("name", &self.name)
            .field("chain_len", &self.chain_der.len())
            .field("key", &"<redacted>")
            .field("imported_at", &self.imported_at)
            .finish()
    }
}

/// A tenant's revocation-list signer: the key that signs the CRL served for the
/// tenant's manual revocation list.
#[derive(Clone, PartialEq, Eq)]
pub struct CrlSigner {
    /// Self-signed certificate, DER.
    pub cert_der: Vec<u8>,
    /// Key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for CrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlSigner")
            .field("cert_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One audit log record: who changed what, where and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number (assigned by the store).
    pub id: i64,
    /// Time, Unix seconds.
    pub at: i64,
    /// `tenant/user`, `system` or `device`.
    pub actor: String,
    /// The tenant concerned.
    pub tenant: Option<String>,
    /// What happened (`CERTIFICATE_ADDED`, ...).
    pub action: String,
    /// The object (user name, device CN, serial, ...).
    pub target: Option<String>,
    /// The certificate fingerprint concerned.
    pub fingerprint: Option<String>,
    /// Free text (never a secret).
    pub detail: Option<String>,
}

impl AuditEntry {
    /// A new entry at the current time.
    pub fn new(actor: &str, tenant: Option<&str>, action: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: certs::now_unix(),
            actor: actor.to_string(),
            tenant: tenant.map(str::to_string),
            action: action.to_string(),
            target: None,
            fingerprint: None,
            detail: None,
        }
    }

    /// Sets the target.
    pub fn target(mut self, target: impl Into<String>) -> AuditEntry {
        self.target = Some(target.into());
        self
    }

    /// Sets the fingerprint.
    pub fn fingerprint(mut self, fp: impl Into<String>) -> AuditEntry {
        self.fingerprint = Some(fp.into());
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEntry {
        self.detail = Some(detail.into());
        self
    }
}

/// Which page to read (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page (>= 1).
    pub size: u32,
    /// Page number, from 1.
    pub page: u32,
}

impl PageRequest {
    /// Rows to skip.
    pub fn offset(&self) -> u64 {
        u64::from(self.page.saturating_sub(1)) * u64::from(self.size)
    }
}

/// One page of items and the total count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Items on all pages.
    pub total: u64,
}

/// Everything a [`certs::TrustStore`] is built from, read in one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct TrustMaterial {
    /// All tenants.
    pub tenants: Vec<TenantRecord>,
    /// All trusted certificates.
    pub anchors: Vec<TrustedCertRecord>,
    /// (tenant, revoked serial) from the manual lists.
    pub revoked: Vec<(String, RevokedSerial)>,
    /// Uploaded CRLs.
    pub crls: Vec<CrlRecord>,
    /// (tenant, CN) of blocked devices.
    pub blocked: Vec<(String, String)>,
    /// Topic authorization rule sets of all tenants.
    pub acl_rule_sets: Vec<AclRuleSetRecord>,
    /// Rule sets assigned to trusted certificates and devices, of all tenants.
    pub acl_assignments: Vec<AclAssignment>,
}

/// A stored topic authorization rule set ([`crate::acl::RuleSet`] as JSON, validated
/// before it is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRuleSetRecord {
    /// Tenant id.
    pub tenant: String,
    /// Name, unique in the tenant ([`crate::acl::DEFAULT_RULE_SET`] applies to every
    /// device without an assignment).
    pub name: String,
    /// The rule set, as JSON.
    pub body: String,
    /// Last change, Unix seconds.
    pub updated_at: i64,
}

/// What a rule set is assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclTarget {
    /// A trusted certificate (by SHA-1 fingerprint): its devices.
    Anchor,
    /// A device (by Common Name).
    Device,
}

impl AclTarget {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AclTarget::Anchor => "anchor",
            AclTarget::Device => "device",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<AclTarget> {
        match s {
            "anchor" => Some(AclTarget::Anchor),
            "device" => Some(AclTarget::Device),
            _ => None,
        }
    }
}

/// A rule set assigned to a trusted certificate or a device of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclAssignment {
    /// Tenant id.
    pub tenant: String,
    /// Anchor or device.
    pub target: AclTarget,
    /// The anchor's fingerprint or the device's Common Name.
    pub key: String,
    /// The rule set's name.
    pub rule_set: String,
}

/// Whether a tenant certificate authority signs new device certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantCaState {
    /// Issues the tenant's new device certificates (one per tenant).
    Active,
    /// Replaced by a newer CA: issues nothing; its anchor still verifies its devices
    /// until `retire_at`, then it is disabled.
    Retiring,
    /// The overlap is over: its anchor is disabled.
    Retired,
}

impl TenantCaState {
    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantCaState::Active => "ACTIVE",
            TenantCaState::Retiring => "RETIRING",
            TenantCaState::Retired => "RETIRED",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<TenantCaState> {
        match s {
            "ACTIVE" => Some(TenantCaState::Active),
            "RETIRING" => Some(TenantCaState::Retiring),
            "RETIRED" => Some(TenantCaState::Retired),
            _ => None,
        }
    }
}

/// A certificate authority the product holds for a tenant (EST enrollment). Its
/// certificate is one of the tenant's trusted certificates (same fingerprint); its
/// private key is stored only encrypted (AEAD under the CA key encryption key, see
/// [`crate::est::KeyEncryption`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCaRecord {
    /// Owning tenant.
    pub tenant: String,
    /// SHA-1 fingerprint of its certificate (the trusted certificate's).
    pub fingerprint: String,
    /// Key type of the CA key (`p256`, `rsa2048`, ... or `imported`).
    pub key_type: String,
    /// The PKCS#8 private key, encrypted (nonce followed by ciphertext and tag).
    pub key_encrypted: Vec<u8>,
    /// Validity of the device certificates it issues, days.
    pub device_validity_days: u32,
    /// How many days before expiry a device should renew (served to clients, used by
    /// the expiry view).
    pub renewal_window_days: u32,
    /// Revoke the previous certificate of a device when it renews.
    pub revoke_on_renewal: bool,
    /// Active, retiring or retired.
    pub state: TenantCaState,
    /// While retiring: when its anchor is disabled, Unix seconds.
    pub retire_at: Option<i64>,
    /// Creation, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for TenantCaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCaRecord")
            .field("tenant", &self.tenant)
            .field("fingerprint", &self.fingerprint)
            .field("key_type", &self.key_type)
            .field("key_encrypted", &"<redacted>")
            .field("device_validity_days", &self.device_validity_days)
            .field("renewal_window_days", &self.renewal_window_days)
            .field("revoke_on_renewal", &self.revoke_on_renewal)
            .field("state", &self.state)
            .field("retire_at", &self.retire_at)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A one-time enrollment secret of a device (EST `simpleenroll`).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentSecretRecord {
    /// Owning tenant.
    pub tenant: String,
    /// The Common Name the device enrolls with (the HTTP Basic user name).
    pub common_name: String,
    /// Argon2id PHC hash of the secret (the secret itself is never stored).
    pub secret_hash: String,
    /// After this, Unix seconds, the secret is refused.
    pub expires_at: i64,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// When it was used (it works once).
    pub used_at: Option<i64>,
}

impl std::fmt::Debug for EnrollmentSecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentSecretRecord")
            .field("tenant", &self.tenant)
            .field("common_name", &self.common_name)
            .field("secret_hash", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("created_at", &self.created_at)
            .field("used_at", &self.used_at)
            .finish()
    }
}

/// A device certificate a tenant CA issued over EST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Serial, lowercase hex (as the revocation list stores it).
    pub serial_hex: String,
    /// Common Name.
    pub common_name: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Fingerprint of the issuing tenant CA.
    pub ca_fingerprint: String,
    /// How it was obtained: `simpleenroll` (a one-time secret) or
    /// `simplereenroll:<serial of the certificate it renewed>`.
    pub enrollment: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// When it was revoked (it is then on the tenant's revocation list).
    pub revoked_at: Option<i64>,
}

/// The tenant name a deleted tenant's audit records are kept under: `{id}.deleted-{n}`,
/// `n` the sequence number of the `TENANT_DELETED` record. A `.` is not allowed in a
/// tenant id, so a tenant created later with the same id never sees them; the
/// management admin reads them with `GET /audit?tenant={id}.deleted-{n}`.
pub fn deleted_tenant_audit_name(id: &str, deletion_record: i64) -> String {
    format!("{id}.deleted-{deletion_record}")
}

/// How a certificate being added relates to an anchor another tenant already trusts,
/// when the relation would let one tenant's anchor verify the other tenant's devices.
/// Every [`Store`] calls it inside the transaction that adds certificates, so two
/// uploads cannot race past each other.
///
/// Same public key is checked separately ([`Conflict::PublicKeyTrustedElsewhere`]).
pub fn anchor_conflict(new: &TrustedCertRecord, other: &TrustedCertRecord) -> Option<Conflict> {
    let fingerprint = new.fingerprint.clone();
    if new.issuer == other.subject && certs::signature::is_signed_by(&new.cert_der, &other.cert_der)
    {
        return Some(Conflict::IssuedByAnotherTenantsAnchor { fingerprint });
    }
    if other.issuer == new.subject && certs::signature::is_signed_by(&other.cert_der, &new.cert_der)
    {
        return Some(Conflict::IssuerOfAnotherTenantsAnchor { fingerprint });
    }
    None
}

/// Persistence of the admin API. Implementations must be safe to share between tasks and
/// must make a change durable before returning from a mutating method.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- tenants ---
    /// Creates a tenant and its first admin user atomically.
    async fn create_tenant(
        &self,
        tenant: TenantRecord,
        admin: UserRecord,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// Creates the tenant unless it exists; true when created (bootstrap).
    async fn ensure_tenant(&self, tenant: TenantRecord) -> StoreResult<bool>;
    /// One tenant.
    async fn tenant(&self, id: &str) -> StoreResult<Option<TenantRecord>>;
    /// A page of tenants ordered by id.
    async fn tenants(&self, page: PageRequest) -> StoreResult<Page<TenantRecord>>;
    /// Replaces company, domain and settings.
    async fn update_tenant(&self, tenant: TenantRecord, audit: AuditEntry) -> StoreResult<()>;
    /// Deletes a tenant and everything it owns: users, trusted certificates and their
    /// proof-of-possession state, revoked serials, CRLs, devices, settings, the CRL
    /// signer. Its audit records (and the deletion's) move to
    /// [`deleted_tenant_audit_name`] in the same transaction.
    async fn delete_tenant(&self, id: &str, audit: AuditEntry) -> StoreResult<()>;

    // --- users ---
    /// Creates a user.
    async fn create_user(&self, user: UserRecord, audit: AuditEntry) -> StoreResult<()>;
    /// One user.
    async fn user(&self, tenant: &str, user_name: &str) -> StoreResult<Option<UserRecord>>;
    /// The users of a tenant ordered by name.
    async fn users(&self, tenant: &str) -> StoreResult<Vec<UserRecord>>;
    /// Replaces a user's password hash.
    async fn set_password(
        &self,
        tenant: &str,
        user_name: &str,
        password_hash: String,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// Deletes a user.
    async fn delete_user(
        &self,
        tenant: &str,
        user_name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()>;

    // --- trusted certificates ---
    /// Adds certificates all or nothing; a fingerprint trusted anywhere, a public key
    /// trusted by another tenant, or a certificate that issued or was issued by another
    /// tenant's anchor ([`anchor_conflict`], checked in the same transaction) is a
    /// conflict.
    async fn insert_certificates(
        &self,
        certs: Vec<TrustedCertRecord>,
        audit: Vec<AuditEntry>,
    ) -> StoreResult<()>;
    /// One certificate of a tenant.
    async fn certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
    ) -> StoreResult<Option<TrustedCertRecord>>;
    /// A page of a tenant's certificates in upload order.
    async fn certificates(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<TrustedCertRecord>>;
    /// Counts of a tenant's certificates: (total, enabled).
    async fn certificate_counts(&self, tenant: &str) -> StoreResult<(u64, u64)>;
    /// All certificates of a tenant.
    async fn tenant_anchors(&self, tenant: &str) -> StoreResult<Vec<TrustedCertRecord>>;
    /// Changes name, status or auto-registration.
    async fn update_certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
        update: CertUpdate,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord>;
    /// Deletes a certificate.
    async fn delete_certificate(
        &self,
        tenant: &str,
        fingerprint: &str,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// Stores a fresh proof-of-possession verification code.
    async fn set_verification_code(
        &self,
        tenant: &str,
        fingerprint: &str,
        code: String,
        expires: i64,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord>;
    /// Marks the proof of possession valid and clears the code.
    async fn set_proof_of_possession(
        &self,
        tenant: &str,
        fingerprint: &str,
        audit: AuditEntry,
    ) -> StoreResult<TrustedCertRecord>;

    // --- revocation ---
    /// Adds (or re-dates) manually revoked serials.
    async fn add_revoked_serials(
        &self,
        tenant: &str,
        serials: Vec<RevokedSerial>,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// A tenant's manual revocation list ordered by serial.
    async fn revoked_serials(&self, tenant: &str) -> StoreResult<Vec<RevokedSerial>>;
    /// Stores an uploaded CRL, replacing the tenant's older CRL from the same issuer.
    async fn put_crl(&self, crl: CrlRecord, audit: AuditEntry) -> StoreResult<()>;
    /// A tenant's uploaded CRLs ordered by issuer.
    async fn crls(&self, tenant: &str) -> StoreResult<Vec<CrlRecord>>;
    /// The tenant's CRL signer, if generated.
    async fn crl_signer(&self, tenant: &str) -> StoreResult<Option<CrlSigner>>;
    /// Stores the tenant's CRL signer unless one exists; returns the stored one.
    async fn init_crl_signer(&self, tenant: &str, signer: CrlSigner) -> StoreResult<CrlSigner>;

    // --- devices ---
    /// A page of a tenant's devices ordered by CN.
    async fn devices(&self, tenant: &str, page: PageRequest) -> StoreResult<Page<DeviceRecord>>;
    /// One device.
    async fn device(&self, tenant: &str, common_name: &str) -> StoreResult<Option<DeviceRecord>>;
    /// Pre-registers a device (conflict when it exists).
    async fn preregister_device(&self, device: DeviceRecord, audit: AuditEntry) -> StoreResult<()>;
    /// Sets a device's status, creating the record when the CN is new.
    async fn set_device_status(
        &self,
        tenant: &str,
        common_name: &str,
        status: DeviceStatus,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<DeviceRecord>;
    /// Records a device's first connection (registering it when new). Idempotent; a
    /// blocked device stays blocked. True when something changed.
    async fn register_device(
        &self,
        tenant: &str,
        common_name: &str,
        anchor_fingerprint: &str,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<bool>;
    /// Writes last-seen times in one transaction (not audited: not a change of policy).
    async fn record_last_seen(&self, seen: Vec<(String, String, i64)>) -> StoreResult<()>;

    // --- server certificate ---
    /// Replaces the server certificate.
    async fn put_server_certificate(
        &self,
        cert: ServerCertRecord,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// The server certificate, if imported.
    async fn server_certificate(&self) -> StoreResult<Option<ServerCertRecord>>;

    // --- audit ---
    /// Appends an entry outside any other change (logins, bootstrap).
    async fn append_audit(&self, entry: AuditEntry) -> StoreResult<()>;
    /// A page of the audit log, newest first, optionally for one tenant.
    async fn audit(&self, tenant: Option<&str>, page: PageRequest)
        -> StoreResult<Page<AuditEntry>>;

    // --- topic authorization ---
    /// A tenant's rule sets, by name.
    async fn acl_rule_sets(&self, tenant: &str) -> StoreResult<Vec<AclRuleSetRecord>>;
    /// Creates or replaces a rule set; true when it was created. NotFound for an
    /// unknown tenant.
    async fn put_acl_rule_set(&self, set: AclRuleSetRecord, audit: AuditEntry)
        -> StoreResult<bool>;
    /// Deletes a rule set: NotFound if it does not exist, [`Conflict::RuleSetInUse`]
    /// while it is assigned.
    async fn delete_acl_rule_set(
        &self,
        tenant: &str,
        name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// A tenant's assignments.
    async fn acl_assignments(&self, tenant: &str) -> StoreResult<Vec<AclAssignment>>;
    /// Assigns `rule_set` to the target (NotFound for an unknown tenant or rule set), or
    /// removes the assignment (`None`; NotFound if there was none).
    async fn set_acl_assignment(
        &self,
        tenant: &str,
        target: AclTarget,
        key: &str,
        rule_set: Option<&str>,
        audit: AuditEntry,
    ) -> StoreResult<()>;

    // --- tenant certificate authorities and enrollment (EST) ---
    /// Adds a tenant CA: its certificate as a trusted certificate (all the rules of
    /// [`Store::insert_certificates`]) and its record, in one transaction. With
    /// `retire_at`, the tenant's active CA becomes retiring until then (rotation);
    /// without it, a tenant that has an active CA is a [`Conflict::ActiveCaExists`].
    async fn add_tenant_ca(
        &self,
        anchor: TrustedCertRecord,
        ca: TenantCaRecord,
        retire_at: Option<i64>,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// A tenant's CAs, newest first.
    async fn tenant_cas(&self, tenant: &str) -> StoreResult<Vec<TenantCaRecord>>;
    /// Disables the anchors of retiring CAs whose overlap ended by `now` and marks them
    /// retired; returns them as (tenant, fingerprint).
    async fn retire_due_cas(&self, now: i64) -> StoreResult<Vec<(String, String)>>;
    /// Creates or replaces (a new secret for the same CN replaces the old one) the
    /// enrollment secrets of a tenant, all or nothing. NotFound for an unknown tenant.
    async fn put_enrollment_secrets(
        &self,
        tenant: &str,
        secrets: Vec<EnrollmentSecretRecord>,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// One device's enrollment secret.
    async fn enrollment_secret(
        &self,
        tenant: &str,
        common_name: &str,
    ) -> StoreResult<Option<EnrollmentSecretRecord>>;
    /// A page of a tenant's enrollment secrets ordered by CN.
    async fn enrollment_secrets(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<EnrollmentSecretRecord>>;
    /// Deletes a device's enrollment secret (NotFound if none).
    async fn delete_enrollment_secret(
        &self,
        tenant: &str,
        common_name: &str,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// Uses the secret whose hash is `secret_hash` and records the certificate issued
    /// for it, in one transaction: only when the secret is still that one, unused and
    /// not expired at `now`. False (nothing recorded) otherwise: of concurrent uses,
    /// exactly one gets true.
    async fn enroll_with_secret(
        &self,
        secret_hash: &str,
        now: i64,
        issued: IssuedCertRecord,
        audit: AuditEntry,
    ) -> StoreResult<bool>;
    /// Records a certificate issued by renewal and, with `revoke`, revokes the one it
    /// replaces (its serial joins the tenant's revocation list) in the same transaction.
    async fn record_renewal(
        &self,
        issued: IssuedCertRecord,
        revoke: Option<RevokedSerial>,
        audit: AuditEntry,
    ) -> StoreResult<()>;
    /// One issued certificate.
    async fn issued_certificate(
        &self,
        tenant: &str,
        serial_hex: &str,
    ) -> StoreResult<Option<IssuedCertRecord>>;
    /// A page of a tenant's issued certificates, newest first.
    async fn issued_certificates(
        &self,
        tenant: &str,
        page: PageRequest,
    ) -> StoreResult<Page<IssuedCertRecord>>;
    /// Revokes an issued certificate: marks it and adds its serial to the tenant's
    /// revocation list. NotFound if the tenant never issued it.
    async fn revoke_issued(
        &self,
        tenant: &str,
        serial_hex: &str,
        now: i64,
        audit: AuditEntry,
    ) -> StoreResult<IssuedCertRecord>;
    /// A tenant's unrevoked issued certificates with notAfter at or before `until`,
    /// soonest first.
    async fn issued_expiring(&self, tenant: &str, until: i64)
        -> StoreResult<Vec<IssuedCertRecord>>;
    /// Per tenant: unrevoked issued certificates still valid at `now` that expire at or
    /// before `until`.
    async fn issued_expiring_counts(
        &self,
        now: i64,
        until: i64,
    ) -> StoreResult<std::collections::HashMap<String, u64>>;

    // --- trust snapshot ---
    /// Everything the trust snapshot is built from, read consistently.
    async fn trust_material(&self) -> StoreResult<TrustMaterial>;

    // --- several nodes ---
    /// For `maxDevices` across front-end nodes: records the devices this node (`node`,
    /// an id unique to the process) has connected per tenant, replacing what it reported
    /// before, and returns per tenant the devices the other nodes reported within the
    /// last `fresh_secs` seconds (a node that stops reporting stops counting). A store
    /// only one process opens (the SQLite file) has no other nodes: empty.
    async fn exchange_sessions(
        &self,
        node: &str,
        sessions: Vec<(String, u32)>,
        fresh_secs: i64,
    ) -> StoreResult<std::collections::HashMap<String, u64>> {
        let _ = (node, sessions, fresh_secs);
        Ok(std::collections::HashMap::new())
    }

    /// For a shared database: whether it is reachable now, and the Unix time this
    /// process last confirmed it had every change (the age of its trust snapshot at
    /// most, plus the poll interval). An embedded store: `None`.
    fn sync_state(&self) -> Option<(bool, i64)> {
        None
    }

    /// Notifications of changes made by other processes (a shared PostgreSQL's
    /// `LISTEN/NOTIFY`). An embedded store has none.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<()>> {
        None
    }
}
