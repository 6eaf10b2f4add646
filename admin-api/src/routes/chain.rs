//! The chain check: which tenant a device chain maps to, whether the front-end would
//! accept it now, and the precise reason if not. It runs the live TrustStore's
//! `verify_device`, the same judgement the TLS handshake makes. A tenant user only
//! learns about chains of its own tenant: another tenant's chain is "unknown issuer".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certs::{CertificateDer, UnixTime, VerifyError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json_status;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::{Admin, DeviceState};

/// The header a TLS-terminating proxy puts the client chain in (PEM, optionally
/// URL-encoded as nginx's `$ssl_client_escaped_cert`).
pub const CHAIN_HEADER: &str = "x-ssl-cert-chain";

/// The presented device certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresentedCertificate {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Common Name (the MQTT ClientId).
    pub common_name: Option<String>,
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// SHA-1 fingerprint.
    pub fingerprint: String,
}

/// What the device registry says about a verified device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCheck {
    /// `REGISTERED`, `BLOCKED` or `UNKNOWN`.
    pub status: String,
    /// Whether the anchor registers unknown devices at first connect.
    pub auto_registration_enabled: bool,
    /// Whether CONNECT would be accepted.
    pub connect_allowed: bool,
    /// Why CONNECT would be refused.
    pub connect_refusal: Option<String>,
}

/// The verdict on a chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainCheck {
    /// Whether the TLS handshake would accept the chain now.
    pub valid: bool,
    /// The tenant the chain maps to (when known to the caller).
    pub tenant: Option<String>,
    /// The fingerprint of the trusted certificate it chains to.
    pub anchor_fingerprint: Option<String>,
    /// The verified path length (device + intermediates + trusted certificate).
    pub chain_length: Option<usize>,
    /// Why the chain is refused.
    pub reason: Option<String>,
    /// A stable code for the reason (`expired`, `unknown_issuer`, `revoked`, ...).
    pub reason_code: Option<String>,
    /// The device certificate.
    pub certificate: PresentedCertificate,
    /// The device registry's view (valid chains only).
    pub device: Option<DeviceCheck>,
}

/// `%XX` escapes decoded; anything else kept as it is.
pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The chain from the header or the body.
fn chain_input(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if let Some(h) = headers.get(CHAIN_HEADER) {
        let s = h.to_str().map_err(|_| {
            ApiError::BadRequest("The X-Ssl-Cert-Chain header must be ASCII PEM".into())
        })?;
        let bytes = if s.contains('%') {
            percent_decode(s)
        } else {
            s.as_bytes().to_vec()
        };
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(bytes);
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "No certificate chain: send the PEM chain (device certificate first) in the body or in the X-Ssl-Cert-Chain header".into(),
        ));
    }
    Ok(body.to_vec())
}

/// (tenant, anchor fingerprint) of every anchor that may have issued a certificate of
/// the chain, from the REST-side index.
fn candidates(admin: &Admin, chain: &[CertificateDer<'static>]) -> Vec<(String, String)> {
    let snap = admin.snapshot();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |v: &(String, String)| {
        if !out.contains(v) {
            out.push(v.clone());
        }
    };
    for c in chain {
        let fp = certs::info::fingerprint_sha1(c.as_ref());
        if let Some(t) = snap.by_fingerprint.get(&fp) {
            push(&(t.clone(), fp));
        }
        let Ok(info) = certs::CertInfo::parse(c.as_ref()) else {
            continue;
        };
        if let Some(v) = info.authority_key_id.and_then(|k| snap.by_ski.get(&k)) {
            v.iter().for_each(&mut push);
        }
        if let Some(v) = snap.by_subject.get(&info.issuer) {
            v.iter().for_each(&mut push);
        }
    }
    out
}

/// Checks a device chain against the live trust snapshot.
#[utoipa::path(post, path = "/tenant/trusted-certificates/verify-cert-chain", tag = "trusted certificates",
    request_body(description = "PEM chain, device certificate first (or use the X-Ssl-Cert-Chain header); any content type",
        content(
            (inline(super::schema::PemText) = "application/x-pem-file"),
            (inline(super::schema::PemText) = "text/plain"),
        )),
    params(("X-Ssl-Cert-Chain" = Option<String>, Header, description = "PEM chain (optionally URL-encoded) instead of the body")),
    responses(
        (status = 200, description = "The verdict (valid or the reason)", body = ChainCheck),
        (status = 400, description = "No chain, or it cannot be read", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn verify(
    State(admin): State<Admin>,
    who: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = chain_input(&headers, &body)?;
    let chain = certs::pem::read_certificates(&input).map_err(|e| {
        ApiError::BadRequest(format!("The certificate chain could not be read: {e}"))
    })?;
    let leaf_info = certs::CertInfo::parse(chain[0].as_ref()).map_err(|e| {
        ApiError::BadRequest(format!("The certificate chain could not be read: {e}"))
    })?;
    let certificate = PresentedCertificate {
        subject: leaf_info.subject.clone(),
        issuer: leaf_info.issuer.clone(),
        common_name: leaf_info.common_name.clone(),
        serial_number: leaf_info.serial_hex.clone(),
        not_before: leaf_info.not_before_rfc3339(),
        not_after: leaf_info.not_after_rfc3339(),
        fingerprint: leaf_info.fingerprint_sha1.clone(),
    };
    let visible = |tenant: &str| who.is_management() || who.tenant == tenant;
    let trust = admin.trust_store().borrow().clone();
    let unknown = |certificate: PresentedCertificate| ChainCheck {
        valid: false,
        tenant: None,
        anchor_fingerprint: None,
        chain_length: None,
        reason: Some(VerifyError::UnknownIssuer.to_string()),
        reason_code: Some(VerifyError::UnknownIssuer.label().to_string()),
        certificate,
        device: None,
    };
    let verdict = match trust.verify_device(&chain, UnixTime::now()) {
        Ok(id) if visible(&id.tenant) => {
            let state = admin.device_admission(&id.tenant, &id.common_name).await?;
            let (status, allowed, refusal) = match state {
                DeviceState::Registered => ("REGISTERED", true, None),
                DeviceState::Blocked => ("BLOCKED", false, Some("The device is blocked")),
                DeviceState::Unknown if id.auto_registration => ("UNKNOWN", true, None),
                DeviceState::Unknown => (
                    "UNKNOWN",
                    false,
                    Some("The device is not registered and its trusted certificate does not allow auto-registration"),
                ),
            };
            ChainCheck {
                valid: true,
                tenant: Some(id.tenant.to_string()),
                anchor_fingerprint: Some(id.anchor_fingerprint.clone()),
                chain_length: Some(id.chain_length),
                reason: None,
                reason_code: None,
                certificate,
                device: Some(DeviceCheck {
                    status: status.into(),
                    auto_registration_enabled: id.auto_registration,
                    connect_allowed: allowed,
                    connect_refusal: refusal.map(str::to_string),
                }),
            }
        }
        Ok(_) => unknown(certificate),
        Err(e) => {
            let all = candidates(&admin, &chain);
            let mine: Vec<&(String, String)> = all.iter().filter(|(t, _)| visible(t)).collect();
            if !all.is_empty() && mine.is_empty() {
                unknown(certificate)
            } else {
                let first = mine.first();
                ChainCheck {
                    valid: false,
                    tenant: first
                        .filter(|_| e != VerifyError::UnknownIssuer)
                        .map(|(t, _)| t.clone()),
                    anchor_fingerprint: first
                        .filter(|_| e != VerifyError::UnknownIssuer)
                        .map(|(_, f)| f.clone()),
                    chain_length: None,
                    reason: Some(e.to_string()),
                    reason_code: Some(e.label().to_string()),
                    certificate,
                    device: None,
                }
            }
        }
    };
    Ok(json_status(StatusCode::OK, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%0Ac"), b"a b\nc");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz"), b"%zz");
        assert_eq!(percent_decode("%4"), b"%4");
    }
}
