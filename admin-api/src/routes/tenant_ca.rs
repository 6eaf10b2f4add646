//! A tenant's certificate authority held by the product (EST enrollment): create or
//! import it, rotate it with an overlap, list it. Its certificate is also one of the
//! tenant's trusted certificates; its private key never leaves the store unencrypted
//! and is never in an answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{display_name, json_integer, json_status, readable_tenant, writable_tenant};
use super::{JsonBody, PathParams};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::est::NewCa;
use crate::store::TenantCaRecord;
use crate::Admin;

/// A certificate authority to create, or to import with its key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewCertificateAuthority {
    /// Display name and Common Name of a created CA (default `<tenant> device CA`).
    #[schema(schema_with = super::schema::certificate_name)]
    pub name: Option<String>,
    /// Key of a created CA: `P256` (default), `RSA2048` or `RSA4096`, any case.
    #[schema(pattern = "^(?:[Pp]256|[Rr][Ss][Aa]2048|[Rr][Ss][Aa]4096)$")]
    pub key_type: Option<String>,
    /// Validity of a created CA in days, 1 to 7300 (default 3650).
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 7300)]
    pub validity_days: Option<i64>,
    /// Validity of the device certificates it issues in days, 1 to 3650 (default 365).
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 3650)]
    pub device_validity_days: Option<i64>,
    /// Days before expiry a device should renew, 0 to 3650 (default 30): the expiry
    /// list marks its issued certificates inside the window `renewalDue`.
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 3650)]
    pub renewal_window_days: Option<i64>,
    /// Revoke a device's previous certificate when it renews (default false: it stays
    /// valid until it expires).
    #[schema(schema_with = super::schema::flex_bool)]
    pub revoke_on_renewal: Option<super::trusted_certificates::FlexBool>,
    /// Devices it issues register themselves at their first connect (default true).
    #[schema(schema_with = super::schema::flex_bool)]
    pub auto_registration_enabled: Option<super::trusted_certificates::FlexBool>,
    /// Import this CA certificate (PEM) instead of creating one; needs `privateKeyPem`.
    pub certificate_pem: Option<String>,
    /// The imported CA's private key (PEM, PKCS#8 or legacy; encrypted with
    /// `passphrase` if it is).
    pub private_key_pem: Option<String>,
    /// Passphrase of an encrypted imported key.
    pub passphrase: Option<String>,
    /// Rotation only: days the replaced CA still verifies its devices, 0 to 3650
    /// (default 30); then its trusted certificate is disabled.
    #[serde(default, deserialize_with = "json_integer")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 3650)]
    pub overlap_days: Option<i64>,
}

/// A tenant certificate authority (never its key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthority {
    /// SHA-1 fingerprint (also its trusted certificate's).
    pub fingerprint: String,
    /// `ACTIVE` (issues), `RETIRING` (in its rotation overlap) or `RETIRED`.
    pub state: String,
    /// While retiring: when its trusted certificate is disabled, RFC 3339.
    pub retire_at: Option<String>,
    /// `p256`, `rsa2048`, `rsa4096` or `imported`.
    pub key_type: String,
    /// Validity of issued device certificates, days.
    pub device_validity_days: u32,
    /// Renewal window, days.
    pub renewal_window_days: u32,
    /// Previous certificates are revoked at renewal.
    pub revoke_on_renewal: bool,
    /// The CA certificate, base64 DER.
    pub cert_in_pem_format: String,
    /// Subject DN.
    pub subject: String,
    /// notAfter of the CA certificate, RFC 3339.
    pub not_after: String,
    /// Creation, RFC 3339.
    pub creation_time: String,
}

/// A tenant's certificate authorities, the active one first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthorityList {
    /// Active, then retiring and retired ones, newest first.
    pub certificate_authorities: Vec<CertificateAuthority>,
}

fn wire(r: &TenantCaRecord, anchor: &crate::store::TrustedCertRecord) -> CertificateAuthority {
    CertificateAuthority {
        fingerprint: r.fingerprint.clone(),
        state: r.state.as_str().to_string(),
        retire_at: r.retire_at.map(super::time),
        key_type: r.key_type.clone(),
        device_validity_days: r.device_validity_days,
        renewal_window_days: r.renewal_window_days,
        revoke_on_renewal: r.revoke_on_renewal,
        cert_in_pem_format: base64::engine::general_purpose::STANDARD.encode(&anchor.cert_der),
        subject: anchor.subject.clone(),
        not_after: super::time(anchor.not_after),
        creation_time: super::time(r.created_at),
    }
}

fn range(field: &str, v: Option<i64>, min: i64, max: i64, default: i64) -> Result<u32, ApiError> {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(ApiError::unprocessable(format!(
            "{field} must be between {min} and {max}"
        )));
    }
    u32::try_from(v).map_err(|_| ApiError::unprocessable(format!("{field} is out of range")))
}

fn parse(tenant: &str, b: &NewCertificateAuthority) -> Result<NewCa, ApiError> {
    use certs::issue::KeyType;
    let key_type = match b
        .key_type
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("P256") => KeyType::P256,
        Some("RSA2048") => KeyType::Rsa2048,
        Some("RSA4096") => KeyType::Rsa4096,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "keyType must be P256, RSA2048 or RSA4096",
            ))
        }
    };
    let name = display_name(
        "name",
        b.name.as_deref().unwrap_or(&format!("{tenant} device CA")),
        128,
    )?;
    let import = match (&b.certificate_pem, &b.private_key_pem) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let der = certs::pem::read_certificate(cert.as_bytes())
                .map_err(|e| ApiError::unprocessable(format!("certificatePem: {e}")))?;
            let key = certs::pem::read_private_key(key.as_bytes(), b.passphrase.as_deref())
                .map_err(|e| ApiError::unprocessable(format!("privateKeyPem: {e}")))?;
            let pkcs8 = match key {
                certs::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                _ => {
                    return Err(ApiError::unprocessable(
                        "privateKeyPem must be a PKCS#8 key (openssl pkcs8 -topk8 -nocrypt converts one)",
                    ))
                }
            };
            Some((der.to_vec(), pkcs8))
        }
        _ => {
            return Err(ApiError::unprocessable(
                "certificatePem and privateKeyPem go together",
            ))
        }
    };
    let flag = |f: &Option<super::trusted_certificates::FlexBool>, name: &str, d: bool| {
        f.as_ref()
            .map(|v| v.value(name))
            .transpose()
            .map(|v| v.unwrap_or(d))
    };
    Ok(NewCa {
        name,
        key_type,
        ca_validity_days: range("validityDays", b.validity_days, 1, 7300, 3650)?,
        device_validity_days: range("deviceValidityDays", b.device_validity_days, 1, 3650, 365)?,
        renewal_window_days: range("renewalWindowDays", b.renewal_window_days, 0, 3650, 30)?,
        revoke_on_renewal: flag(&b.revoke_on_renewal, "revokeOnRenewal", false)?,
        auto_registration: flag(
            &b.auto_registration_enabled,
            "autoRegistrationEnabled",
            true,
        )?,
        import,
    })
}

/// Lists a tenant's certificate authorities.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/certificate-authority",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = CertificateAuthorityList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let mut out = Vec::new();
    for r in admin.store().tenant_cas(&tenant).await? {
        if let Some(a) = admin.store().certificate(&tenant, &r.fingerprint).await? {
            out.push(wire(&r, &a));
        }
    }
    Ok(json_status(
        StatusCode::OK,
        CertificateAuthorityList {
            certificate_authorities: out,
        },
    ))
}

async fn add(
    admin: &Admin,
    who: &Principal,
    tenant: &str,
    body: &NewCertificateAuthority,
    rotate: bool,
) -> Result<Response, ApiError> {
    writable_tenant(admin, who, tenant).await?;
    let new = parse(tenant, body)?;
    let overlap = if rotate {
        let days = range("overlapDays", body.overlap_days, 0, 3650, 30)?;
        if admin
            .store()
            .tenant_cas(tenant)
            .await?
            .iter()
            .all(|c| c.state != crate::store::TenantCaState::Active)
        {
            return Err(ApiError::NotFound(format!(
                "Tenant {tenant} has no active certificate authority to rotate"
            )));
        }
        Some(i64::from(days) * 86_400)
    } else {
        if body.overlap_days.is_some() {
            return Err(ApiError::unprocessable(
                "overlapDays applies to a rotation only",
            ));
        }
        None
    };
    let (record, anchor) = admin
        .add_tenant_ca(&who.actor(), tenant, new, overlap)
        .await?;
    Ok(json_status(StatusCode::CREATED, wire(&record, &anchor)))
}

/// Creates the tenant's certificate authority, or imports one with its key.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/certificate-authority",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewCertificateAuthority,
    responses(
        (status = 201, description = "Created; its certificate is now a trusted certificate of the tenant", body = CertificateAuthority),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant has an active CA (rotate it), or the certificate conflicts as an upload would (trusted elsewhere, maxAnchors)", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn create(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<NewCertificateAuthority>,
) -> Result<Response, ApiError> {
    add(&admin, &who, &tenant, &body, false).await
}

/// Rotates: a new active CA; the previous one verifies its devices for `overlapDays`
/// more, then its trusted certificate is disabled.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/certificate-authority/rotate",
    tag = "enrollment",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewCertificateAuthority,
    responses(
        (status = 201, description = "The new active CA", body = CertificateAuthority),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "Unknown tenant, or no active CA", body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn rotate(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<NewCertificateAuthority>,
) -> Result<Response, ApiError> {
    add(&admin, &who, &tenant, &body, true).await
}
