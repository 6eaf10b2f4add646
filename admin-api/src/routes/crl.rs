//! Revocation: a tenant's manual list of revoked serial numbers (served as a CRL), and
//! CRL files signed by one of the tenant's trusted certificates.
//!
//! The product holds no tenant CA key, so the CRL served for the manual list is signed
//! by a per-tenant "revocation list signer": a self-signed P-256 certificate the store
//! generates once per tenant. Its certificate is served at
//! `GET /tenant/trusted-certificates/settings/crl/signer` so a consumer can check the
//! CRL's signature; the CRL's issuer is that signer, not the tenant's CA.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use certs::revocation::{Crl, CrlError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{json_status, readable_tenant, writable_tenant, JsonBody, PathParams};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AuditEntry, CrlRecord, CrlSigner, RevokedSerial};
use crate::Admin;

/// One revoked serial number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedEntry {
    /// Serial number in hex (any case, `:` separators allowed).
    pub serial_number_in_hex: String,
    /// Revocation date, RFC 3339 or `YYYY-MM-DD` (default: now).
    pub revocation_date: Option<String>,
}

/// The manual revocation list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationList {
    /// Revoked serials.
    pub crls: Vec<RevokedEntry>,
}

/// An uploaded CRL.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrlInfo {
    /// The CRL's issuer (one of the tenant's trusted certificates).
    pub issuer: String,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339.
    pub next_update: Option<String>,
    /// Number of revoked certificates.
    pub revoked_count: u64,
    /// Upload time, RFC 3339.
    pub uploaded_at: String,
}

impl From<&CrlRecord> for CrlInfo {
    fn from(c: &CrlRecord) -> Self {
        CrlInfo {
            issuer: c.issuer.clone(),
            this_update: super::time(c.this_update),
            next_update: c.next_update.map(super::time),
            revoked_count: c.revoked_count,
            uploaded_at: super::time(c.uploaded_at),
        }
    }
}

/// A tenant's uploaded CRLs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CrlInfoList {
    /// One per issuer (a newer upload replaces the older).
    pub crls: Vec<CrlInfo>,
}

fn parse_date(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

fn list_of(serials: &[RevokedSerial]) -> RevocationList {
    RevocationList {
        crls: serials
            .iter()
            .map(|s| RevokedEntry {
                serial_number_in_hex: s.serial_hex.clone(),
                revocation_date: Some(super::time(s.revocation_date)),
            })
            .collect(),
    }
}

/// The most serials one request may add.
const MAX_SERIALS_PER_REQUEST: usize = 10_000;

/// Adds serial numbers to the caller's tenant's revocation list.
#[utoipa::path(put, path = "/tenant/trusted-certificates/settings/crl", tag = "revocation",
    request_body = RevocationList,
    responses(
        (status = 200, description = "The tenant's whole manual list", body = RevocationList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn add_serials(
    State(admin): State<Admin>,
    who: Principal,
    JsonBody(body): JsonBody<RevocationList>,
) -> Result<Response, ApiError> {
    let tenant = who.tenant.clone();
    writable_tenant(&admin, &who, &tenant).await?;
    if body.crls.is_empty() {
        return Err(ApiError::unprocessable("crls must not be empty"));
    }
    if body.crls.len() > MAX_SERIALS_PER_REQUEST {
        return Err(ApiError::unprocessable(format!(
            "crls may hold at most {MAX_SERIALS_PER_REQUEST} entries per request"
        )));
    }
    let now = admin.now();
    let mut serials = Vec::with_capacity(body.crls.len());
    for (i, e) in body.crls.iter().enumerate() {
        let serial_hex = certs::info::normalize_serial_hex(&e.serial_number_in_hex)
            .filter(|s| s.len() <= 64)
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "crls[{i}].serialNumberInHex '{}' is not a hexadecimal serial number",
                    e.serial_number_in_hex.chars().take(80).collect::<String>()
                ))
            })?;
        let revocation_date = match &e.revocation_date {
            None => now,
            Some(d) => parse_date(d).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "crls[{i}].revocationDate must be an RFC 3339 time or a YYYY-MM-DD date"
                ))
            })?,
        };
        serials.push(RevokedSerial {
            serial_hex,
            revocation_date,
        });
    }
    let detail: Vec<&str> = serials.iter().map(|s| s.serial_hex.as_str()).collect();
    let audit =
        AuditEntry::new(&who.actor(), Some(&tenant), "CRL_SERIALS_ADDED").detail(detail.join(","));
    admin
        .store()
        .add_revoked_serials(&tenant, serials, audit)
        .await?;
    admin.publish().await?;
    let all = admin.store().revoked_serials(&tenant).await?;
    Ok(json_status(StatusCode::OK, list_of(&all)))
}

/// The caller's tenant's revocation-list signer, generated on first use.
async fn signer(admin: &Admin, tenant: &str) -> Result<CrlSigner, ApiError> {
    if let Some(s) = admin.store().crl_signer(tenant).await? {
        return Ok(s);
    }
    let subject = certs::issue::Subject::cn(&format!("{tenant} revocation list signer"));
    let issued = certs::issue::ca(
        &subject,
        certs::issue::Validity::days(3650),
        certs::issue::KeyType::P256,
        &certs::issue::CaOptions::default(),
        None,
    )
    .map_err(|e| ApiError::Internal(format!("generating the CRL signer: {e}")))?;
    let fresh = CrlSigner {
        cert_der: issued.cert_der.as_ref().to_vec(),
        key_pkcs8: issued.key_der.secret_pkcs8_der().to_vec(),
    };
    Ok(admin.store().init_crl_signer(tenant, fresh).await?)
}

/// The caller's tenant's manual revocation list as a DER CRL (`application/pkix-crl`),
/// signed by the tenant's revocation-list signer.
#[utoipa::path(get, path = "/tenant/trusted-certificates/settings/crl", tag = "revocation",
    responses(
        (status = 200, description = "DER CRL signed by the tenant's revocation-list signer", content_type = "application/pkix-crl", body = Vec<u8>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get_crl(State(admin): State<Admin>, who: Principal) -> Result<Response, ApiError> {
    let tenant = who.tenant.clone();
    readable_tenant(&admin, &who, &tenant).await?;
    let serials = admin.store().revoked_serials(&tenant).await?;
    let signer = signer(&admin, &tenant).await?;
    let issued = certs::issue::Issued {
        cert_der: certs::CertificateDer::from(signer.cert_der.clone()),
        key_der: rustls_pki_types::PrivatePkcs8KeyDer::from(signer.key_pkcs8.clone()),
    };
    let issuer = issued
        .issuer()
        .map_err(|e| ApiError::Internal(format!("CRL signer unusable: {e}")))?;
    let revoked: Vec<certs::issue::Revocation> = serials
        .iter()
        .map(|s| certs::issue::Revocation {
            serial_hex: s.serial_hex.clone(),
            revoked_at: time::OffsetDateTime::from_unix_timestamp(s.revocation_date)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        })
        .collect();
    let crl_number = u64::try_from(admin.now()).unwrap_or(1);
    let der = certs::issue::crl(&issuer, &revoked, crl_number, 7)
        .map_err(|e| ApiError::Internal(format!("signing the CRL: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response())
}

/// The certificate of the caller's tenant's revocation-list signer (PEM).
#[utoipa::path(get, path = "/tenant/trusted-certificates/settings/crl/signer", tag = "revocation",
    responses(
        (status = 200, description = "PEM certificate", content_type = "application/x-pem-file", body = String),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn signer_certificate(
    State(admin): State<Admin>,
    who: Principal,
) -> Result<Response, ApiError> {
    let tenant = who.tenant.clone();
    readable_tenant(&admin, &who, &tenant).await?;
    let s = signer(&admin, &tenant).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        certs::pem::to_pem("CERTIFICATE", &s.cert_der),
    )
        .into_response())
}

/// Lists a tenant's uploaded CRLs.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/crls", tag = "revocation",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = CrlInfoList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let crls = admin.store().crls(&tenant).await?;
    Ok(json_status(
        StatusCode::OK,
        CrlInfoList {
            crls: crls.iter().map(CrlInfo::from).collect(),
        },
    ))
}

/// The CRL bytes of an upload: the raw body (PEM or DER), or the first part of a
/// multipart form.
async fn upload_bytes(req: Request) -> Result<Vec<u8>, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(req, &()).await?;
        while let Some(field) = form.next_field().await? {
            let bytes = field.bytes().await?;
            if !bytes.is_empty() {
                return Ok(bytes.to_vec());
            }
        }
        return Err(ApiError::BadRequest(
            "The multipart form holds no CRL file".into(),
        ));
    }
    let bytes = Bytes::from_request(req, &()).await?;
    Ok(bytes.to_vec())
}

/// Uploads a CRL signed by one of the tenant's trusted certificates (PEM or DER body,
/// or a multipart form with the file). Replaces the tenant's older CRL of that issuer.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/crls", tag = "revocation",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body(content = Vec<u8>, description = "The CRL, PEM or DER", content_type = "application/pkix-crl"),
    responses(
        (status = 201, body = CrlInfo),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Malformed, out of date, or not signed by a trusted certificate of the tenant", body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn upload(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    req: Request,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let bytes = upload_bytes(req).await?;
    if bytes.is_empty() {
        return Err(ApiError::unprocessable(
            "The request body is empty: send the CRL (PEM or DER)",
        ));
    }
    let crl = Crl::parse(&bytes).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let now = admin.now();
    crl.check_fresh(now)
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let anchors = admin.store().tenant_anchors(&tenant).await?;
    if anchors.is_empty() {
        return Err(ApiError::unprocessable(
            "The tenant has no trusted certificates: upload the CA that signed this CRL first",
        ));
    }
    let mut bad_signature = None;
    let mut signed_by = None;
    for a in &anchors {
        match crl.verify_signed_by(&a.cert_der) {
            Ok(()) => {
                signed_by = Some(a);
                break;
            }
            Err(e @ CrlError::BadSignature) => bad_signature = Some(e),
            Err(_) => {}
        }
    }
    let Some(anchor) = signed_by else {
        let message = match bad_signature {
            Some(e) => e.to_string(),
            None => format!(
                "The CRL is not issued by any trusted certificate of this tenant (CRL issuer: {})",
                crl.issuer
            ),
        };
        return Err(ApiError::unprocessable(message));
    };
    let record = CrlRecord {
        tenant: tenant.clone(),
        issuer: crl.issuer.clone(),
        issuer_key: hex::encode(&crl.issuer_raw),
        der: crl.der.clone(),
        this_update: crl.this_update,
        next_update: crl.next_update,
        revoked_count: crl.revoked.len() as u64,
        uploaded_at: now,
    };
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "CRL_UPLOADED")
        .fingerprint(&anchor.fingerprint)
        .detail(format!(
            "issuer {}, {} revoked",
            crl.issuer,
            crl.revoked.len()
        ));
    admin.store().put_crl(record.clone(), audit).await?;
    admin.publish().await?;
    Ok(json_status(StatusCode::CREATED, CrlInfo::from(&record)))
}
