//! Proof of possession: the tenant shows it holds a trusted CA's private key by signing a
//! verification code with it (`openssl dgst -sha256 -sign ca.key code.txt | base64 -w0`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use rand::Rng as _;
use serde::Deserialize;
use utoipa::ToSchema;

use super::trusted_certificates::{normalize_fingerprint, TrustedCertificate};
use super::{json_status, readable_tenant, writable_tenant, JsonBody, PathParams};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::AuditEntry;
use crate::Admin;

/// The signed verification code.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedVerificationCode {
    /// Base64 of the CA key's SHA-256 signature of the verification code.
    pub proof_of_possession_signed_verification_code: String,
}

/// The sentence for a signature that does not verify.
pub const WRONG_SIGNATURE: &str = "The signed verification code does not verify with the trusted certificate's public key: sign the exact verification code with this CA's private key (openssl dgst -sha256 -sign ca.key code.txt | base64 -w0)";

/// Issues a fresh verification code to sign.
#[utoipa::path(post,
    path = "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/verification-code",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    responses(
        (status = 200, description = "The certificate with proofOfPossessionUnsignedVerificationCode", body = TrustedCertificate),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn verification_code(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let fp = normalize_fingerprint(&fp);
    let code: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let now = admin.now();
    let ttl = i64::try_from(admin.config().verification_code_ttl.as_secs()).unwrap_or(3600);
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "POP_CODE_ISSUED").fingerprint(&fp);
    let r = admin
        .store()
        .set_verification_code(&tenant, &fp, code, now + ttl, audit)
        .await?;
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificate::from_record(&r, now),
    ))
}

/// Checks the signed verification code and marks the proof of possession valid.
#[utoipa::path(post,
    path = "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/pop",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    request_body = SignedVerificationCode,
    responses(
        (status = 200, description = "proofOfPossessionValid is now true", body = TrustedCertificate),
        (status = 400, description = "Not base64, or the signature does not verify", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No verification code outstanding", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn verify(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SignedVerificationCode>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let fp = normalize_fingerprint(&fp);
    let cert = admin
        .store()
        .certificate(&tenant, &fp)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Trusted certificate {fp} not found")))?;
    let now = admin.now();
    let code = match (&cert.pop_code, cert.pop_code_expires) {
        (Some(code), Some(exp)) if exp > now => code.clone(),
        (Some(_), _) => {
            return Err(ApiError::Conflict(
                "The verification code has expired: request a new one with POST .../verification-code".into(),
            ))
        }
        (None, _) => {
            return Err(ApiError::Conflict(
                "No verification code was requested for this certificate: request one with POST .../verification-code".into(),
            ))
        }
    };
    let compact: String = body
        .proof_of_possession_signed_verification_code
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_bytes()))
        .map_err(|_| {
            ApiError::BadRequest(
                "proofOfPossessionSignedVerificationCode is not valid base64".into(),
            )
        })?;
    // `echo code > code.txt` adds a newline; accept the signature of either form.
    let verified = [code.clone(), format!("{code}\n")].iter().any(|msg| {
        certs::signature::verify_sha256_by_certificate(&cert.cert_der, msg.as_bytes(), &sig).is_ok()
    });
    if !verified {
        return Err(ApiError::BadRequest(WRONG_SIGNATURE.into()));
    }
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "POP_VERIFIED").fingerprint(&fp);
    let r = admin
        .store()
        .set_proof_of_possession(&tenant, &fp, audit)
        .await?;
    // With `require_proof_of_possession` the anchor starts verifying devices now.
    admin.publish().await?;
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificate::from_record(&r, now),
    ))
}

/// Confirms an uploaded certificate without a signed verification code (the reference
/// platform's call for the management administrator): `proofOfPossessionValid` becomes
/// true, and with `require_proof_of_possession` the certificate verifies devices from
/// now on. Management admin only.
#[utoipa::path(post,
    path = "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/confirmed",
    tag = "trusted certificates",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    responses(
        (status = 200, description = "proofOfPossessionValid is now true", body = TrustedCertificate),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not the management admin", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn confirm(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    who.require_management_admin("confirm a trusted certificate without proof of possession")?;
    let fp = normalize_fingerprint(&fp);
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "POP_CONFIRMED")
        .fingerprint(&fp)
        .detail("confirmed by the management admin without a signed verification code");
    let r = admin
        .store()
        .set_proof_of_possession(&tenant, &fp, audit)
        .await?;
    admin.publish().await?;
    Ok(json_status(
        StatusCode::OK,
        TrustedCertificate::from_record(&r, admin.now()),
    ))
}
