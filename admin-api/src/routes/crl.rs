//! Revocation: a tenant's manual list of revoked serial numbers (served as a CRL), and
//! CRL files signed by one of the tenant's trusted certificates.
//!
//! The CRL is not signed by a tenant CA (a tenant may have none, or several: uploaded
//! ones and the EST one), so the CRL served for the manual list is signed
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
    /// Serial number in hex (any case, `:` separators and a `0x` prefix allowed).
    #[schema(schema_with = super::schema::serial_hex)]
    pub serial_number_in_hex: String,
    /// Revocation date, RFC 3339 or `YYYY-MM-DD` (default: now).
    #[schema(schema_with = super::schema::revocation_date)]
    pub revocation_date: Option<String>,
}

/// The manual revocation list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationList {
    /// Revoked serials: 1 to 10000 per request; the answer holds the whole list.
    #[schema(min_items = 1)]
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

/// The syntax of `revocationDate` in the document: a calendar date `YYYY-MM-DD`
/// (Gregorian, leap years included), optionally followed by a time `THH:MM:SS`, up to 9
/// fraction digits and `Z` or an offset `±HH:MM` (`t`, `z` or a space also accepted).
/// [`parse_date`] accepts exactly these strings.
pub const REVOCATION_DATE_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[048]|[2468][048]|[13579][26])00)-02-29)",
    "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))?$"
);

/// Parses a revocation date of [`REVOCATION_DATE_PATTERN`] to Unix seconds.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u32, |n, c| n * 10 + u32::from(c - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    if b.len() == 10 {
        return Some(date.midnight().assume_utc().unix_timestamp());
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        nanos = frac[..n]
            .iter()
            .fold(0u32, |v, c| v * 10 + u32::from(c - b'0'))
            * 10u32.pow(9 - n as u32);
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return None;
            }
            let v = h * 3600 + m * 60;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let time = time::Time::from_hms_nano(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
        nanos,
    )
    .ok()?;
    Some(date.with_time(time).assume_utc().unix_timestamp() - offset_secs)
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

/// The syntax the document declares for `serialNumberInHex`: an optional `0x`/`0X`
/// prefix, then 1 to 64 hex digits with any `:` separators
/// (`^(?:0[xX])?:*(?:[0-9A-Fa-f]:*){1,64}$`).
fn serial_syntax_ok(s: &str) -> bool {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let n = digits.bytes().filter(u8::is_ascii_hexdigit).count();
    digits.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') && (1..=64).contains(&n)
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
        let serial_hex = Some(e.serial_number_in_hex.as_str())
            .filter(|s| serial_syntax_ok(s))
            .and_then(certs::info::normalize_serial_hex)
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
        (status = 200, description = "DER CRL signed by the tenant's revocation-list signer", content_type = "application/pkix-crl", body = inline(super::schema::BinaryFile)),
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
        (status = 200, description = "PEM certificate", content_type = "application/x-pem-file", body = inline(super::schema::PemText)),
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

/// The CRL bytes of an upload: the raw body (PEM or DER), or the `file` part of a
/// multipart form (the only field it may have).
async fn upload_bytes(req: Request) -> Result<Vec<u8>, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(req, &()).await?;
        let mut file = None;
        while let Some(field) = form.next_field().await? {
            let name = field.name().unwrap_or_default().to_string();
            if name != "file" {
                return Err(ApiError::BadRequest(format!(
                    "Unknown multipart field '{}': expected file",
                    name.chars().take(64).collect::<String>()
                )));
            }
            let bytes = field.bytes().await?;
            file.get_or_insert(bytes.to_vec());
        }
        return file.ok_or_else(|| {
            ApiError::BadRequest("The multipart form holds no CRL file (field 'file')".into())
        });
    }
    let bytes = Bytes::from_request(req, &()).await?;
    Ok(bytes.to_vec())
}

/// Uploads a CRL signed by one of the tenant's trusted certificates (PEM or DER body,
/// or a multipart form with the file). Replaces the tenant's older CRL of that issuer.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/crls", tag = "revocation",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body(description = "The CRL, PEM or DER, as the body (any content type but multipart) or as the file of a multipart form",
        content(
            (inline(super::schema::BinaryFile) = "application/pkix-crl"),
            (inline(super::schema::BinaryFile) = "application/octet-stream"),
            (inline(super::schema::PemText) = "application/x-pem-file"),
            (inline(super::schema::PemText) = "text/plain"),
            (inline(super::schema::CrlForm) = "multipart/form-data"),
        )),
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
                "The CRL is not issued by any trusted certificate of this tenant (CRL issuer: {}). A CRL is accepted from a trusted certificate only: to upload the CRL of an issuing CA below your trusted root, trust that issuing CA too; or revoke its certificates by serial number with PUT /tenant/trusted-certificates/settings/crl",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_dates_follow_the_documented_pattern() {
        let day = parse_date("2024-05-01").unwrap();
        assert_eq!(day, 1_714_521_600);
        assert_eq!(parse_date("2024-05-01T10:00:00Z"), Some(day + 36_000));
        assert_eq!(parse_date("2024-05-01t10:00:00z"), Some(day + 36_000));
        assert_eq!(parse_date("2024-05-01 10:00:00+02:00"), Some(day + 28_800));
        assert_eq!(
            parse_date("2024-05-01T10:00:00.123456789-00:30"),
            Some(day + 37_800)
        );
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800));
        assert!(parse_date("2000-02-29").is_some());
        assert!(parse_date("0000-02-29").is_some());
        for bad in [
            "",
            "2023-02-29",
            "1900-02-29",
            "2024-04-31",
            "2024-13-01",
            "2024-05-01X10:00:00Z",
            "2024-05-01T23:59:60Z",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00.1234567890Z",
            "2024-05-01T10:00:00+24:00",
            "2024-05-01\n",
            "yesterday",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        assert!(REVOCATION_DATE_PATTERN.starts_with('^') && REVOCATION_DATE_PATTERN.ends_with('$'));
    }

    #[test]
    fn serials_follow_the_documented_pattern() {
        for ok in ["0", "0A:0B", "0x1f", "0X1F", ":01:", &"f".repeat(64)] {
            assert!(serial_syntax_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "0x",
            "xyz",
            "0x0x1",
            "01 02",
            &"f".repeat(65),
            "\u{0661}",
        ] {
            assert!(!serial_syntax_ok(bad), "{bad}");
        }
    }
}
