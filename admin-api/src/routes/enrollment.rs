//! Enrollment: one-time secrets per device (single and bulk), the certificates the
//! tenant's CA issued (list, revoke), and the certificates expiring soon.
//!
//! A secret is generated here, shown once in the answer, and stored as an argon2id
//! hash; it expires and works once (EST `simpleenroll`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::devices::common_name;
use super::{json_integer, json_status, readable_tenant, writable_tenant};
use super::{JsonBody, PageQuery, PathParams, QueryParams, Statistics};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AuditEntry, EnrollmentSecretRecord, IssuedCertRecord};
use crate::Admin;

/// Devices per bulk request, at most.
pub const MAX_BULK: usize = 1000;

/// A device to give an enrollment secret.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewEnrollmentSecret {
    /// The Common Name the device enrolls with (and its certificate will carry).
    #[schema(schema_with = super::schema::common_name)]
    pub common_name: String,
    /// Hours until the secret expires, 1 to 8760 (default 24).
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 8760)]
    pub valid_hours: Option<i64>,
}

/// Several devices, all or nothing.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BulkEnrollmentSecrets {
    /// 1 to 1000 devices, each Common Name once (else 422, `info.index` naming the
    /// second).
    #[schema(min_items = 1, max_items = 1000)]
    pub devices: Vec<NewEnrollmentSecret>,
}

/// A created secret: the only time it is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedEnrollmentSecret {
    /// The device's Common Name (the EST user name).
    pub common_name: String,
    /// The one-time secret (the EST password). Not retrievable later.
    pub secret: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// Created secrets, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedEnrollmentSecrets {
    /// One per device.
    pub secrets: Vec<CreatedEnrollmentSecret>,
}

/// A stored secret (never the secret or its hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSecret {
    /// The device's Common Name.
    pub common_name: String,
    /// `UNUSED`, `USED` or `EXPIRED`.
    pub status: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// When it was used, RFC 3339.
    pub used_at: Option<String>,
    /// Creation, RFC 3339.
    pub creation_time: String,
}

/// A page of enrollment secrets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSecretList {
    /// The secrets of this page, by Common Name.
    pub secrets: Vec<EnrollmentSecret>,
    /// Paging.
    pub statistics: Statistics,
}

/// A certificate the tenant's CA issued.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificate {
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// Common Name.
    pub common_name: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Fingerprint of the issuing CA.
    pub ca_fingerprint: String,
    /// `simpleenroll` (one-time secret) or `simplereenroll:<serial renewed>`.
    pub enrollment: String,
    /// Issue time, RFC 3339.
    pub issued_at: String,
    /// Revocation time, RFC 3339 (then its serial is on the tenant's revocation list).
    pub revoked_at: Option<String>,
}

impl From<&IssuedCertRecord> for IssuedCertificate {
    fn from(r: &IssuedCertRecord) -> Self {
        IssuedCertificate {
            serial_number: r.serial_hex.clone(),
            common_name: r.common_name.clone(),
            not_before: super::time(r.not_before),
            not_after: super::time(r.not_after),
            ca_fingerprint: r.ca_fingerprint.clone(),
            enrollment: r.enrollment.clone(),
            issued_at: super::time(r.issued_at),
            revoked_at: r.revoked_at.map(super::time),
        }
    }
}

/// A page of issued certificates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificateList {
    /// Newest first.
    pub certificates: Vec<IssuedCertificate>,
    /// Paging.
    pub statistics: Statistics,
}

/// A certificate expiring soon.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpiringCertificate {
    /// `TRUSTED_CERTIFICATE` (an anchor) or `ISSUED_CERTIFICATE` (a device's, from the
    /// tenant's CA).
    pub kind: String,
    /// An anchor's fingerprint.
    pub fingerprint: Option<String>,
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// The anchor's subject, or the device's Common Name.
    pub name: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Whole days left (negative: expired that many days ago).
    pub days_left: i64,
    /// An issued certificate inside its CA's `renewalWindowDays`: the device should
    /// renew it now (always false for trusted certificates).
    pub renewal_due: bool,
}

/// Certificates expiring within the window, soonest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExpiringCertificateList {
    /// Anchors and unrevoked issued certificates.
    pub certificates: Vec<ExpiringCertificate>,
}

/// The window of the expiry list.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DaysQuery {
    /// Days from now, 0 to 3650 (default 30); expired certificates are included.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 3650)]
    pub days: Option<i64>,
}

fn generate_secret() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

async fn make(
    admin: &Admin,
    tenant: &str,
    devices: &[NewEnrollmentSecret],
) -> Result<(Vec<EnrollmentSecretRecord>, Vec<CreatedEnrollmentSecret>), ApiError> {
    let now = admin.now();
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::with_capacity(devices.len());
    let mut created = Vec::with_capacity(devices.len());
    for (index, d) in devices.iter().enumerate() {
        let at = |message: String| ApiError::Unprocessable {
            message: if devices.len() > 1 {
                format!("devices[{index}]: {message}")
            } else {
                message
            },
            info: serde_json::json!({ "index": index }),
        };
        common_name(&d.common_name).map_err(|e| at(e.to_string()))?;
        if !seen.insert(d.common_name.clone()) {
            return Err(at(format!("commonName {} is given twice", d.common_name)));
        }
        let hours = d.valid_hours.unwrap_or(24);
        if !(1..=8760).contains(&hours) {
            return Err(at("validHours must be between 1 and 8760".into()));
        }
        let secret = generate_secret();
        let hash = crate::est::hash_secret(secret.clone()).await?;
        let expires_at = now + hours * 3600;
        records.push(EnrollmentSecretRecord {
            tenant: tenant.to_string(),
            common_name: d.common_name.clone(),
            secret_hash: hash,
            expires_at,
            created_at: now,
            used_at: None,
        });
        created.push(CreatedEnrollmentSecret {
            common_name: d.common_name.clone(),
            secret,
            expires_at: super::time(expires_at),
        });
    }
    Ok((records, created))
}

/// Creates (or replaces) a device's one-time enrollment secret.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/enrollment-secrets",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewEnrollmentSecret,
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = CreatedEnrollmentSecret),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn create(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<NewEnrollmentSecret>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let (records, mut created) = make(&admin, &tenant, std::slice::from_ref(&body)).await?;
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "ENROLLMENT_SECRET_CREATED")
        .target(&body.common_name)
        .detail(format!("expires {}", created[0].expires_at));
    admin
        .store()
        .put_enrollment_secrets(&tenant, records, audit)
        .await?;
    Ok(json_status(StatusCode::CREATED, created.remove(0)))
}

/// Creates (or replaces) the one-time enrollment secrets of up to 1000 devices, all or
/// nothing.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/enrollment-secrets/bulk",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = BulkEnrollmentSecrets,
    responses(
        (status = 201, description = "All created; the secrets are shown this once", body = CreatedEnrollmentSecrets),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "One device is refused (info.index names it); nothing was stored", body = ErrorBody)),
    security(("basic" = [])))]
pub async fn bulk(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<BulkEnrollmentSecrets>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    if body.devices.is_empty() || body.devices.len() > MAX_BULK {
        return Err(ApiError::unprocessable(format!(
            "devices must hold 1 to {MAX_BULK} devices"
        )));
    }
    let (records, created) = make(&admin, &tenant, &body.devices).await?;
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "ENROLLMENT_SECRETS_CREATED")
        .detail(format!("{} devices", created.len()));
    admin
        .store()
        .put_enrollment_secrets(&tenant, records, audit)
        .await?;
    Ok(json_status(
        StatusCode::CREATED,
        CreatedEnrollmentSecrets { secrets: created },
    ))
}

/// Lists a tenant's enrollment secrets (never the secrets).
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/enrollment-secrets",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id"), PageQuery),
    responses(
        (status = 200, body = EnrollmentSecretList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let page = q.page()?;
    let p = admin.store().enrollment_secrets(&tenant, page).await?;
    let now = admin.now();
    Ok(json_status(
        StatusCode::OK,
        EnrollmentSecretList {
            secrets: p
                .items
                .iter()
                .map(|r| EnrollmentSecret {
                    common_name: r.common_name.clone(),
                    status: match (r.used_at, r.expires_at > now) {
                        (Some(_), _) => "USED",
                        (None, true) => "UNUSED",
                        (None, false) => "EXPIRED",
                    }
                    .to_string(),
                    expires_at: super::time(r.expires_at),
                    used_at: r.used_at.map(super::time),
                    creation_time: super::time(r.created_at),
                })
                .collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}

/// Deletes a device's enrollment secret.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/enrollment-secrets/{common_name}",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "The device's Common Name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn delete(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let audit =
        AuditEntry::new(&who.actor(), Some(&tenant), "ENROLLMENT_SECRET_DELETED").target(&cn);
    admin
        .store()
        .delete_enrollment_secret(&tenant, &cn, audit)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the certificates the tenant's CA issued, newest first.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/issued-certificates",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id"), PageQuery),
    responses(
        (status = 200, body = IssuedCertificateList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn issued(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let page = q.page()?;
    let p = admin.store().issued_certificates(&tenant, page).await?;
    Ok(json_status(
        StatusCode::OK,
        IssuedCertificateList {
            certificates: p.items.iter().map(IssuedCertificate::from).collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}

/// Revokes an issued certificate: its serial joins the tenant's revocation list, so
/// port 8883 refuses it (and closes its session) and the tenant's CRL lists it.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/issued-certificates/{serial}/revoke",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("serial" = String, Path, description = "Serial number, hex")),
    responses(
        (status = 200, body = IssuedCertificate),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn revoke(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, serial)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let serial = certs::info::normalize_serial_hex(&serial)
        .ok_or_else(|| ApiError::NotFound(format!("Issued certificate {serial} not found")))?;
    let audit =
        AuditEntry::new(&who.actor(), Some(&tenant), "ISSUED_CERTIFICATE_REVOKED").target(&serial);
    let r = admin
        .store()
        .revoke_issued(&tenant, &serial, admin.now(), audit)
        .await?;
    admin.publish().await?;
    Ok(json_status(StatusCode::OK, IssuedCertificate::from(&r)))
}

/// The tenant's trusted certificates and unrevoked issued certificates that expire
/// within `days` (or have expired), soonest first.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/expiring-certificates",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id"), DaysQuery),
    responses(
        (status = 200, body = ExpiringCertificateList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn expiring(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    QueryParams(q): QueryParams<DaysQuery>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let days = q.days.unwrap_or(30);
    if !(0..=3650).contains(&days) {
        return Err(ApiError::unprocessable("days must be between 0 and 3650"));
    }
    let now = admin.now();
    let until = now + days * 86_400;
    let left = |not_after: i64| (not_after - now).div_euclid(86_400);
    let mut out: Vec<ExpiringCertificate> = admin
        .store()
        .tenant_anchors(&tenant)
        .await?
        .into_iter()
        .filter(|a| a.not_after <= until)
        .map(|a| ExpiringCertificate {
            kind: "TRUSTED_CERTIFICATE".into(),
            fingerprint: Some(a.fingerprint),
            serial_number: a.serial_hex,
            name: a.subject,
            not_after: super::time(a.not_after),
            days_left: left(a.not_after),
            renewal_due: false,
        })
        .collect();
    let windows: std::collections::HashMap<String, i64> = admin
        .store()
        .tenant_cas(&tenant)
        .await?
        .into_iter()
        .map(|c| (c.fingerprint, i64::from(c.renewal_window_days)))
        .collect();
    out.extend(
        admin
            .store()
            .issued_expiring(&tenant, until)
            .await?
            .into_iter()
            .map(|i| ExpiringCertificate {
                kind: "ISSUED_CERTIFICATE".into(),
                fingerprint: None,
                serial_number: i.serial_hex,
                name: i.common_name,
                not_after: super::time(i.not_after),
                days_left: left(i.not_after),
                renewal_due: windows
                    .get(&i.ca_fingerprint)
                    .is_some_and(|w| i.not_after - now <= w * 86_400),
            }),
    );
    out.sort_by(|a, b| a.not_after.cmp(&b.not_after));
    Ok(json_status(
        StatusCode::OK,
        ExpiringCertificateList { certificates: out },
    ))
}
