//! Trusted certificates: the CA certificates a tenant's devices chain to. Uploads pass
//! the `certs` upload rules; a certificate (and a public key) belongs to one tenant only,
//! so that every device maps to exactly one tenant.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use certs::{AnchorSpec, AnchorStatus, TrustStore};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    display_name, json_status, readable_tenant, writable_tenant, JsonBody, PageQuery, PathParams,
    QueryParams, Statistics,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AuditEntry, CertUpdate, Conflict, StoreError, TrustedCertRecord};
use crate::Admin;

/// A boolean sent as JSON `true`/`false` or as the string `"true"`/`"false"` (any case).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FlexBool {
    /// A JSON boolean.
    Bool(bool),
    /// A string `"true"` or `"false"`, any case.
    Text(String),
}

impl FlexBool {
    /// The value, or a 422 naming the field.
    pub fn value(&self, field: &str) -> Result<bool, ApiError> {
        match self {
            FlexBool::Bool(b) => Ok(*b),
            FlexBool::Text(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            FlexBool::Text(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            FlexBool::Text(_) => Err(ApiError::unprocessable(format!(
                "{field} must be true or false"
            ))),
        }
    }
}

/// A certificate to trust, as the reference platform's upload call sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTrustedCertificate {
    /// `ENABLED` (default) or `DISABLED`, any case.
    #[schema(pattern = "^(?:[Ee][Nn][Aa][Bb][Ll][Ee][Dd]|[Dd][Ii][Ss][Aa][Bb][Ll][Ee][Dd])$")]
    pub status: Option<String>,
    /// Display name (default: the subject's CN).
    #[schema(schema_with = super::schema::certificate_name)]
    pub name: Option<String>,
    /// Register devices at their first connect (default false).
    #[schema(schema_with = super::schema::flex_bool)]
    pub auto_registration_enabled: Option<FlexBool>,
    /// The CA certificate: PEM with or without newlines, or its base64 DER alone.
    #[schema(schema_with = super::schema::certificate_pem)]
    pub cert_in_pem_format: String,
}

/// A change of a trusted certificate: only these fields can change.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedCertificateUpdate {
    /// New display name.
    #[schema(schema_with = super::schema::certificate_name)]
    pub name: Option<String>,
    /// `ENABLED` or `DISABLED`, any case.
    #[schema(pattern = "^(?:[Ee][Nn][Aa][Bb][Ll][Ee][Dd]|[Dd][Ii][Ss][Aa][Bb][Ll][Ee][Dd])$")]
    pub status: Option<String>,
    /// Register devices at their first connect.
    #[schema(schema_with = super::schema::flex_bool)]
    pub auto_registration_enabled: Option<FlexBool>,
}

/// Several certificates to trust, all or nothing.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BulkUpload {
    /// The certificates (at least one).
    #[schema(min_items = 1)]
    pub certificates: Vec<NewTrustedCertificate>,
}

/// A stored trusted certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedCertificate {
    /// SHA-1 fingerprint, lowercase hex.
    pub fingerprint: String,
    /// Display name.
    pub name: String,
    /// `ENABLED` or `DISABLED`.
    pub status: String,
    /// Devices register themselves at their first connect.
    pub auto_registration_enabled: bool,
    /// The certificate's base64 DER (PEM body without the armour lines).
    pub cert_in_pem_format: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// Signature algorithm.
    pub algorithm_name: String,
    /// X.509 version.
    pub version: u32,
    /// Whether the tenant proved it holds the CA's private key.
    pub proof_of_possession_valid: bool,
    /// The outstanding verification code to sign, if one was requested.
    pub proof_of_possession_unsigned_verification_code: Option<String>,
    /// Until when that code is accepted, RFC 3339.
    pub proof_of_possession_verification_code_usable_until: Option<String>,
    /// Upload time, RFC 3339.
    pub creation_time: String,
}

impl TrustedCertificate {
    /// The wire form of a record (an expired verification code is not shown).
    pub fn from_record(r: &TrustedCertRecord, now: i64) -> TrustedCertificate {
        let code_live = r.pop_code_expires.is_some_and(|e| e > now);
        TrustedCertificate {
            fingerprint: r.fingerprint.clone(),
            name: r.name.clone(),
            status: status_name(r.status).to_string(),
            auto_registration_enabled: r.auto_registration,
            cert_in_pem_format: base64::engine::general_purpose::STANDARD.encode(&r.cert_der),
            subject: r.subject.clone(),
            issuer: r.issuer.clone(),
            serial_number: r.serial_hex.clone(),
            not_before: super::time(r.not_before),
            not_after: super::time(r.not_after),
            algorithm_name: r.algorithm_name.clone(),
            version: r.version,
            proof_of_possession_valid: r.pop_valid,
            proof_of_possession_unsigned_verification_code: r
                .pop_code
                .clone()
                .filter(|_| code_live),
            proof_of_possession_verification_code_usable_until: r
                .pop_code_expires
                .filter(|_| code_live)
                .map(super::time),
            creation_time: super::time(r.created_at),
        }
    }
}

/// A page of trusted certificates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedCertificateList {
    /// The certificates of this page.
    pub trusted_certificates: Vec<TrustedCertificate>,
    /// Paging.
    pub statistics: Statistics,
}

/// The certificates a bulk upload stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    /// The stored certificates, in request order.
    pub certificates: Vec<TrustedCertificate>,
}

fn status_name(s: AnchorStatus) -> &'static str {
    match s {
        AnchorStatus::Enabled => "ENABLED",
        AnchorStatus::Disabled => "DISABLED",
    }
}

fn parse_status(s: &str) -> Result<AnchorStatus, ApiError> {
    if s.eq_ignore_ascii_case("ENABLED") {
        Ok(AnchorStatus::Enabled)
    } else if s.eq_ignore_ascii_case("DISABLED") {
        Ok(AnchorStatus::Disabled)
    } else {
        Err(ApiError::unprocessable(
            "status must be ENABLED or DISABLED",
        ))
    }
}

/// The bytes of a pasted certificate: PEM as is (the parser copes with missing or
/// literal `\n` newlines), else base64 DER without the armour, else the raw text for
/// the parser to report.
fn certificate_input(text: &str) -> Vec<u8> {
    if certs::pem::is_pem(text.as_bytes()) {
        return text.as_bytes().to_vec();
    }
    let compact: String = text
        .replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .unwrap_or_else(|_| text.as_bytes().to_vec())
}

/// Normalises a fingerprint from a path: lowercase, without `:` separators.
pub(crate) fn normalize_fingerprint(fp: &str) -> String {
    fp.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Checks an upload against the rules and turns it into a record.
pub(crate) fn prepare(
    tenant: &str,
    body: &NewTrustedCertificate,
    now: i64,
) -> Result<TrustedCertRecord, ApiError> {
    if body.cert_in_pem_format.trim().is_empty() {
        return Err(ApiError::unprocessable("certInPemFormat must not be empty"));
    }
    let status = body
        .status
        .as_deref()
        .map(parse_status)
        .transpose()?
        .unwrap_or(AnchorStatus::Enabled);
    let auto_registration = body
        .auto_registration_enabled
        .as_ref()
        .map(|b| b.value("autoRegistrationEnabled"))
        .transpose()?
        .unwrap_or(false);
    let (der, info) =
        certs::upload::check_trust_anchor_pem(&certificate_input(&body.cert_in_pem_format), now)?;
    // The same check the trust snapshot will make, so a stored anchor is always usable.
    TrustStore::builder()
        .anchor(AnchorSpec {
            tenant: tenant.to_string(),
            status,
            auto_registration,
            cert_der: der.clone(),
        })
        .map_err(|e| {
            ApiError::unprocessable(format!("Certificate cannot be used as a trust anchor: {e}"))
        })?;
    let spki_der = x509_parser::parse_x509_certificate(&der)
        .map(|(_, c)| c.public_key().raw.to_vec())
        .map_err(|e| ApiError::unprocessable(format!("Certificate could not be parsed: {e}")))?;
    let default_name = info
        .common_name
        .clone()
        .filter(|cn| !cn.trim().is_empty())
        .unwrap_or_else(|| info.subject.clone());
    let name = display_name("name", body.name.as_deref().unwrap_or(&default_name), 128)?;
    Ok(TrustedCertRecord {
        tenant: tenant.to_string(),
        fingerprint: info.fingerprint_sha1.clone(),
        name,
        status,
        auto_registration,
        cert_der: der,
        spki_der,
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        serial_hex: info.serial_hex.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        algorithm_name: info.signature_algorithm.clone(),
        version: info.version,
        pop_valid: false,
        pop_code: None,
        pop_code_expires: None,
        created_at: now,
    })
}

fn added_audit(who: &Principal, r: &TrustedCertRecord) -> AuditEntry {
    AuditEntry::new(&who.actor(), Some(&r.tenant), "CERTIFICATE_ADDED")
        .fingerprint(&r.fingerprint)
        .target(&r.name)
        .detail(format!(
            "subject {}, status {}, autoRegistrationEnabled {}",
            r.subject,
            status_name(r.status),
            r.auto_registration
        ))
}

/// Lists a tenant's trusted certificates.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/trusted-certificates",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"), PageQuery),
    responses(
        (status = 200, body = TrustedCertificateList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let page = q.page()?;
    let p = admin.store().certificates(&tenant, page).await?;
    let now = admin.now();
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificateList {
            trusted_certificates: p
                .items
                .iter()
                .map(|r| TrustedCertificate::from_record(r, now))
                .collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}

/// Uploads a trusted certificate.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/trusted-certificates",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewTrustedCertificate,
    responses(
        (status = 201, description = "Stored", body = TrustedCertificate),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already trusted (by any tenant), the same public key as another tenant's certificate, issued by or issuer of another tenant's certificate, or the tenant's maxAnchors reached", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "Refused by an upload rule", body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn create(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<NewTrustedCertificate>,
) -> Result<Response, ApiError> {
    let t = writable_tenant(&admin, &who, &tenant).await?;
    check_anchor_limit(&admin, &t, 1)?;
    let now = admin.now();
    let record = prepare(&tenant, &body, now)?;
    let audit = added_audit(&who, &record);
    admin
        .store()
        .insert_certificates(vec![record.clone()], vec![audit])
        .await?;
    admin.publish().await?;
    Ok(json_status(
        StatusCode::CREATED,
        TrustedCertificate::from_record(&record, now),
    ))
}

/// Uploads several trusted certificates, all or nothing.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/trusted-certificates/bulk",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = BulkUpload,
    responses(
        (status = 201, description = "All stored", body = BulkResult),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "One certificate is already trusted, has the same public key as another tenant's certificate, was issued by or issued another tenant's certificate, or maxAnchors would be passed; nothing was stored", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "One certificate is refused (info.index names it); nothing was stored", body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn bulk(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<BulkUpload>,
) -> Result<Response, ApiError> {
    let t = writable_tenant(&admin, &who, &tenant).await?;
    if body.certificates.is_empty() {
        return Err(ApiError::unprocessable("certificates must not be empty"));
    }
    check_anchor_limit(&admin, &t, body.certificates.len())?;
    let now = admin.now();
    let mut records = Vec::with_capacity(body.certificates.len());
    for (index, c) in body.certificates.iter().enumerate() {
        match prepare(&tenant, c, now) {
            Ok(r) => records.push(r),
            Err(ApiError::Unprocessable { message, .. }) => {
                return Err(ApiError::Unprocessable {
                    message: format!("certificates[{index}]: {message}"),
                    info: serde_json::json!({ "index": index }),
                })
            }
            Err(e) => return Err(e),
        }
    }
    let audits = records.iter().map(|r| added_audit(&who, r)).collect();
    admin
        .store()
        .insert_certificates(records.clone(), audits)
        .await?;
    admin.publish().await?;
    Ok(json_status(
        StatusCode::CREATED,
        BulkResult {
            certificates: records
                .iter()
                .map(|r| TrustedCertificate::from_record(r, now))
                .collect(),
        },
    ))
}

async fn find(admin: &Admin, tenant: &str, fp: &str) -> Result<TrustedCertRecord, ApiError> {
    admin
        .store()
        .certificate(tenant, fp)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Trusted certificate {fp} not found")))
}

/// One trusted certificate.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/trusted-certificates/{fingerprint}",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint (hex, any case, ':' allowed)")),
    responses(
        (status = 200, body = TrustedCertificate),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let r = find(&admin, &tenant, &normalize_fingerprint(&fp)).await?;
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificate::from_record(&r, admin.now()),
    ))
}

/// Changes name, status or autoRegistrationEnabled.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/trusted-certificates/{fingerprint}",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    request_body = TrustedCertificateUpdate,
    responses(
        (status = 200, body = TrustedCertificate),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn update(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<TrustedCertificateUpdate>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let fp = normalize_fingerprint(&fp);
    let update = CertUpdate {
        name: body
            .name
            .as_deref()
            .map(|n| display_name("name", n, 128))
            .transpose()?,
        status: body.status.as_deref().map(parse_status).transpose()?,
        auto_registration: body
            .auto_registration_enabled
            .as_ref()
            .map(|b| b.value("autoRegistrationEnabled"))
            .transpose()?,
    };
    let mut changes = Vec::new();
    if let Some(n) = &update.name {
        changes.push(format!("name {n}"));
    }
    if let Some(s) = update.status {
        changes.push(format!("status {}", status_name(s)));
    }
    if let Some(a) = update.auto_registration {
        changes.push(format!("autoRegistrationEnabled {a}"));
    }
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "CERTIFICATE_UPDATED")
        .fingerprint(&fp)
        .detail(changes.join(", "));
    let r = admin
        .store()
        .update_certificate(&tenant, &fp, update, audit)
        .await?;
    admin.publish().await?;
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificate::from_record(&r, admin.now()),
    ))
}

/// Stops trusting a certificate; its devices are refused from now on.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/trusted-certificates/{fingerprint}",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn delete(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let fp = normalize_fingerprint(&fp);
    let audit =
        AuditEntry::new(&who.actor(), Some(&tenant), "CERTIFICATE_DELETED").fingerprint(&fp);
    admin
        .store()
        .delete_certificate(&tenant, &fp, audit)
        .await?;
    admin.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses early an upload that would take the tenant past its `maxAnchors` setting
/// (the store checks it again inside the insert transaction, against concurrent uploads).
fn check_anchor_limit(
    admin: &Admin,
    t: &crate::store::TenantRecord,
    adding: usize,
) -> Result<(), ApiError> {
    let max = t.settings.max_anchors as usize;
    if max == 0 {
        return Ok(());
    }
    let have = admin
        .trust_store()
        .borrow()
        .anchors_per_tenant()
        .get(t.id.as_str())
        .copied()
        .unwrap_or(0);
    if have + adding > max {
        return Err(StoreError::Conflict(Conflict::AnchorLimit {
            tenant: t.id.clone(),
            max: t.settings.max_anchors,
            have: have as u64,
        })
        .into());
    }
    Ok(())
}
