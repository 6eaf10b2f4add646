//! The chain check: which tenant a device chain maps to, whether the front-end would
//! accept it now, and the precise reason if not. It runs the live TrustStore's
//! `verify_device`, the same judgement the TLS handshake makes. A tenant user only
//! learns about chains of its own tenant: another tenant's chain is "unknown issuer".

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
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

/// The reference platform's chain header: certificates separated by `,`, each as base64
/// DER (or PEM) whose lines are separated by spaces.
pub const REFERENCE_CHAIN_HEADER: &str = "x-cumulocity-client-cert-chain";

/// The reference platform's tenant header of this call.
pub const REFERENCE_TENANT_HEADER: &str = "x-cumulocity-tenantid";

/// Most certificates the reference forms take: in the header, and in the uploaded file.
const REFERENCE_HEADER_MAX: usize = 5;
const REFERENCE_FILE_MAX: usize = 10;

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
    /// `valid`, under the reference platform's name.
    pub successfully_validated: bool,
    /// `tenant`, under the reference platform's name.
    pub tenant_id: Option<String>,
    /// The device certificate's issuer DN (as the reference platform answers).
    pub issuer: String,
    /// The device certificate's subject DN (as the reference platform answers).
    pub subject: String,
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

/// What a request asks to check.
struct ChainRequest {
    /// The chain, PEM or DER.
    chain: Vec<u8>,
    /// The tenant to check it against (reference forms only).
    tenant: Option<String>,
    /// Sent in a reference platform form (multipart `tenantId` + `file`, or the
    /// `X-Cumulocity-Client-Cert-Chain` header): answered as the reference platform does,
    /// 401 for an invalid chain.
    reference: bool,
}

/// Reads the chain from, in order: a multipart form (`file`, optional `tenantId`), the
/// reference header, the proxy header, the body.
async fn read_request(headers: &HeaderMap, req: Request) -> Result<ChainRequest, ApiError> {
    let header_tenant = || -> Result<Option<String>, ApiError> {
        headers
            .get(REFERENCE_TENANT_HEADER)
            .map(|v| {
                v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                    ApiError::BadRequest("The X-Cumulocity-TenantId header must be ASCII".into())
                })
            })
            .transpose()
            .map(|t| t.filter(|t| !t.is_empty()))
    };
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(req, &()).await?;
        let (mut file, mut tenant) = (None, None);
        while let Some(field) = form.next_field().await? {
            let name = field.name().unwrap_or_default().to_string();
            match name.as_str() {
                "file" => {
                    let bytes = field.bytes().await?;
                    file.get_or_insert(bytes.to_vec());
                }
                "tenantId" => {
                    let text = field.text().await?;
                    tenant.get_or_insert(text.trim().to_string());
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "Unknown multipart field '{}': expected file and tenantId",
                        other.chars().take(64).collect::<String>()
                    )))
                }
            }
        }
        let chain = file.ok_or_else(|| {
            ApiError::BadRequest(
                "The multipart form holds no certificate chain (field 'file')".into(),
            )
        })?;
        return Ok(ChainRequest {
            chain,
            tenant: tenant.filter(|t| !t.is_empty()).or(header_tenant()?),
            reference: true,
        });
    }
    if let Some(h) = headers.get(REFERENCE_CHAIN_HEADER) {
        let s = h.to_str().map_err(|_| {
            ApiError::BadRequest("The X-Cumulocity-Client-Cert-Chain header must be ASCII".into())
        })?;
        return Ok(ChainRequest {
            chain: reference_header_chain(s)?,
            tenant: header_tenant()?,
            reference: true,
        });
    }
    let body = Bytes::from_request(req, &()).await?;
    Ok(ChainRequest {
        chain: chain_input(headers, &body)?,
        tenant: None,
        reference: false,
    })
}

/// The certificates of the reference header, as PEM: `,` between certificates, each
/// base64 DER (spaces inside ignored) or PEM on one line.
fn reference_header_chain(value: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let parts: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(ApiError::BadRequest(
            "The X-Cumulocity-Client-Cert-Chain header holds no certificate".into(),
        ));
    }
    if parts.len() > REFERENCE_HEADER_MAX {
        return Err(ApiError::BadRequest(format!(
            "The X-Cumulocity-Client-Cert-Chain header holds {} certificates; it takes at most {REFERENCE_HEADER_MAX} (send longer chains as a file)",
            parts.len()
        )));
    }
    let mut pem = String::new();
    for (i, part) in parts.iter().enumerate() {
        if part.contains("-----BEGIN") {
            pem.push_str(part);
            pem.push('\n');
            continue;
        }
        let b64: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "Certificate {} of the X-Cumulocity-Client-Cert-Chain header is not base64 DER or PEM",
                    i + 1
                ))
            })?;
        pem.push_str(&certs::pem::to_pem("CERTIFICATE", &der));
    }
    Ok(pem.into_bytes())
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
///
/// Also in the reference platform's forms: a multipart form with the chain file (`file`)
/// and optionally `tenantId`, or the chain in `X-Cumulocity-Client-Cert-Chain` (with
/// `X-Cumulocity-TenantId`). Those are answered as the reference platform does: 200
/// for a valid chain, 401 with the verdict in `info` for a refused one, 404 for an
/// unknown tenant.
#[utoipa::path(post, path = "/tenant/trusted-certificates/verify-cert-chain", tag = "trusted certificates",
    request_body(description = "PEM chain, device certificate first (or use the X-Ssl-Cert-Chain header); any content type; or the reference platform's multipart form",
        content(
            (inline(super::schema::PemText) = "application/x-pem-file"),
            (inline(super::schema::PemText) = "text/plain"),
            (inline(super::schema::ChainForm) = "multipart/form-data"),
        )),
    params(
        ("X-Ssl-Cert-Chain" = Option<String>, Header, description = "PEM chain (optionally URL-encoded) instead of the body"),
        ("X-Cumulocity-Client-Cert-Chain" = Option<String>, Header, description = "The reference platform's form: certificates separated by ',', each base64 DER whose blocks may be separated by spaces; at most 5. A refused chain is then answered 401"),
        ("X-Cumulocity-TenantId" = Option<String>, Header, description = "With the reference forms: the tenant to check the chain against (404 if unknown)"),
    ),
    responses(
        (status = 200, description = "The verdict (valid or the reason; the reference forms: valid)", body = ChainCheck),
        (status = 400, description = "No chain, or it cannot be read", body = ErrorBody),
        (status = 401, description = "Bad credentials; or, in the reference forms, a refused chain (its verdict in info)", body = ErrorBody),
        (status = 404, description = "The reference forms' tenant does not exist", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn verify(
    State(admin): State<Admin>,
    who: Principal,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let request = read_request(&headers, req).await?;
    if let Some(t) = &request.tenant {
        super::readable_tenant(&admin, &who, t).await?;
    }
    let chain = certs::pem::read_certificates(&request.chain).map_err(|e| {
        ApiError::BadRequest(format!("The certificate chain could not be read: {e}"))
    })?;
    if request.reference && chain.len() > REFERENCE_FILE_MAX {
        return Err(ApiError::BadRequest(format!(
            "The chain holds {} certificates; at most {REFERENCE_FILE_MAX} are checked",
            chain.len()
        )));
    }
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
    let visible = |tenant: &str| {
        (who.is_management() || who.tenant == tenant)
            && request.tenant.as_deref().is_none_or(|t| t == tenant)
    };
    let trust = admin.trust_store().borrow().clone();
    let unknown = |certificate: PresentedCertificate| ChainCheck {
        valid: false,
        successfully_validated: false,
        tenant_id: None,
        issuer: certificate.issuer.clone(),
        subject: certificate.subject.clone(),
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
                successfully_validated: true,
                tenant_id: Some(id.tenant.to_string()),
                issuer: certificate.issuer.clone(),
                subject: certificate.subject.clone(),
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
                let tenant = first
                    .filter(|_| e != VerifyError::UnknownIssuer)
                    .map(|(t, _)| t.clone());
                ChainCheck {
                    valid: false,
                    successfully_validated: false,
                    tenant_id: tenant.clone(),
                    issuer: certificate.issuer.clone(),
                    subject: certificate.subject.clone(),
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
    if request.reference && !verdict.valid {
        let message = verdict
            .reason
            .clone()
            .unwrap_or_else(|| "The certificate chain is not valid".into());
        return Err(ApiError::ChainRefused {
            message,
            info: serde_json::to_value(&verdict).unwrap_or_default(),
        });
    }
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
