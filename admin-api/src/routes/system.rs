//! The server's own certificate (management admin): import with the requirements report
//! of `certs::requirements`, storage, and publication to the TLS listener.

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::Response;
use certs::requirements::{self, Report, Row};
use certs::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{display_name, json_status};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody, ImportFailure};
use crate::store::{AuditEntry, ServerCertRecord};
use crate::Admin;

/// A server-certificate import, as the multipart form or the broker sends it.
#[derive(Clone, Default)]
pub struct ImportRequest {
    /// Display name.
    pub name: String,
    /// The certificate (PEM or DER, optionally followed by its chain), or a PKCS#12
    /// keystore holding certificate, key and chain.
    pub crt: Vec<u8>,
    /// The private key (PEM or DER, plain or encrypted); empty with a PKCS#12 `crt`.
    pub key: Vec<u8>,
    /// Intermediate and root certificates.
    pub chain: Option<Vec<u8>>,
    /// Passphrase of an encrypted key or keystore.
    pub passphrase: Option<String>,
    /// Run the full requirements report (`Required`); otherwise only check that the
    /// certificate and key can be read and belong together (`None`).
    pub validation: bool,
    /// Fetch the certificate's CRL distribution point (through the egress policy) and
    /// refuse a revoked certificate, or one whose CRL cannot be fetched; also with
    /// validation `None`.
    pub crl_check: bool,
    /// Store the private key encrypted with this passphrase (PKCS#8, PBES2 AES-256):
    /// every broker start then needs it (`BROKER_SERVER_KEY_PASSPHRASE`,
    /// [`crate::AdminConfig::server_key_passphrase`]). Without it the key is stored
    /// unencrypted, as before.
    pub new_passphrase: Option<String>,
}

impl std::fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportRequest")
            .field("name", &self.name)
            .field("crt_len", &self.crt.len())
            .field("key", &"<redacted>")
            .field("chain_len", &self.chain.as_ref().map(Vec::len))
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("validation", &self.validation)
            .field("crl_check", &self.crl_check)
            .field(
                "new_passphrase",
                &self.new_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The outcome of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The leaf certificate.
    pub info: certs::CertInfo,
    /// The requirements report that admitted it.
    pub report: Report,
    /// Certificates in the served chain.
    pub chain_length: usize,
}

/// The multipart form of `PUT /system/ssl-certificate` (documentation only).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct ServerCertificateForm {
    /// Display name.
    #[schema(schema_with = super::schema::server_certificate_name)]
    name: String,
    /// Passphrase of an encrypted key or PKCS#12 keystore.
    #[schema(nullable = false)]
    passphrase: Option<String>,
    /// The private key file.
    #[schema(format = Binary, value_type = String, nullable = false)]
    key: Option<Vec<u8>>,
    /// The certificate file (PEM, DER or PKCS#12).
    #[schema(format = Binary, value_type = String)]
    crt: Vec<u8>,
    /// Intermediate and root CA certificates.
    #[schema(format = Binary, value_type = String, nullable = false)]
    chain: Option<Vec<u8>>,
    /// `Required` (default) or `None`, any case.
    #[schema(
        pattern = "^(?:[Rr][Ee][Qq][Uu][Ii][Rr][Ee][Dd]|[Nn][Oo][Nn][Ee])$",
        nullable = false
    )]
    validation: Option<String>,
    /// `true` to check the CRL distribution point (also `1`/`on`, `0`/`off`, any case),
    /// also with validation `None`.
    #[schema(nullable = false)]
    crl_check: Option<bool>,
    /// Store the private key encrypted with this passphrase; every broker start then
    /// needs it (`BROKER_SERVER_KEY_PASSPHRASE`).
    #[schema(nullable = false)]
    new_passphrase: Option<String>,
}

/// The stored server certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificateInfo {
    /// Display name.
    pub name: String,
    /// Import time, RFC 3339.
    pub imported_at: String,
    /// Certificates in the served chain (leaf included).
    pub chain_length: usize,
    /// The leaf certificate.
    #[schema(value_type = Object)]
    pub certificate: serde_json::Value,
    /// The requirements report (on import only).
    #[schema(value_type = Option<Vec<Object>>)]
    pub report: Option<Vec<serde_json::Value>>,
}

/// The rows checked when validation is `None`: the material must be usable.
const USABILITY_ROWS: &[&str] = &[
    requirements::rows::READABLE,
    requirements::rows::KEY_READABLE,
    requirements::rows::KEY_MATCHES,
];

/// The rows of the CRL check, judged whenever `crlCheck` is on.
const CRL_ROWS: &[&str] = &[
    requirements::rows::CRL_DP,
    requirements::rows::CRL_REACHABLE,
    requirements::rows::NOT_REVOKED,
];

/// The appliance's own sentences, answered as they are; any other failed row is
/// "Certificate validation failed: " and the row's reason.
fn own_sentence(reason: &str) -> bool {
    [
        requirements::EXPIRED,
        requirements::CHAIN_MISMATCH,
        requirements::CHAIN_NO_ROOT,
        requirements::REVOKED,
        requirements::KEY_MISMATCH,
        certs::revocation::CRL_UNREACHABLE,
    ]
    .contains(&reason)
        || reason == certs::ReadError::Passphrase.to_string()
}

fn refused(row: &Row, report: &Report) -> ApiError {
    let reason = row.reason.clone().unwrap_or_else(|| row.name.clone());
    let info = serde_json::json!({ "row": row.name, "report": report.rows });
    if own_sentence(&reason) {
        ApiError::Unprocessable {
            message: reason,
            info,
        }
    } else {
        ApiError::CertificateImport {
            kind: ImportFailure::Validation,
            reason,
            info,
        }
    }
}

/// The certificates of the upload (the crt file or keystore, then the chain file) in
/// chain order, as far as they can be read; empty when they cannot (the requirements
/// report says why).
fn uploaded_chain(req: &ImportRequest, passphrase: Option<&str>) -> Vec<CertificateDer<'static>> {
    let mut pool = certs::pem::read_certificates(&req.crt)
        .or_else(|_| {
            certs::pem::read_pkcs12(&req.crt, passphrase.unwrap_or("")).map(|p| p.certificates)
        })
        .unwrap_or_default();
    if let Some(Ok(more)) = req
        .chain
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(certs::pem::read_certificates)
    {
        for c in more {
            if !pool.contains(&c) {
                pool.push(c);
            }
        }
    }
    if pool.is_empty() {
        return pool;
    }
    order_chain(pool)
}

/// Reads leaf, chain and key as the requirements report did (PEM/DER, or PKCS#12).
fn read_material(
    req: &ImportRequest,
    passphrase: Option<&str>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ApiError> {
    let unusable = |e: certs::ReadError| ApiError::unprocessable(e.to_string());
    let (mut certs_read, key) = match certs::pem::read_certificates(&req.crt) {
        Ok(c) => (
            c,
            certs::pem::read_private_key(&req.key, passphrase).map_err(unusable)?,
        ),
        Err(e) => {
            let p12 = certs::pem::read_pkcs12(&req.crt, passphrase.unwrap_or(""))
                .map_err(|_| unusable(e))?;
            let key = match p12.key {
                Some(k) => k,
                None => certs::pem::read_private_key(&req.key, passphrase).map_err(unusable)?,
            };
            (p12.certificates, key)
        }
    };
    if let Some(chain) = req.chain.as_deref().filter(|c| !c.is_empty()) {
        for c in certs::pem::read_certificates(chain).map_err(unusable)? {
            if !certs_read.contains(&c) {
                certs_read.push(c);
            }
        }
    }
    Ok((order_chain(certs_read), key))
}

/// Leaf first, then each issuer found by name in the pool, up to a self-signed root;
/// certificates not on that path are dropped.
fn order_chain(pool: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let infos: Vec<Option<certs::CertInfo>> = pool
        .iter()
        .map(|c| certs::CertInfo::parse(c.as_ref()).ok())
        .collect();
    let mut order = vec![0usize];
    let mut current = 0usize;
    for _ in 0..pool.len() {
        let Some(cur) = &infos[current] else { break };
        if cur.subject == cur.issuer {
            break;
        }
        let next = (0..pool.len()).find(|&i| {
            !order.contains(&i)
                && infos[i].as_ref().is_some_and(|c| c.subject == cur.issuer)
                && certs::signature::is_signed_by(pool[current].as_ref(), pool[i].as_ref())
        });
        match next {
            Some(i) => {
                order.push(i);
                current = i;
            }
            None => break,
        }
    }
    order.into_iter().map(|i| pool[i].clone()).collect()
}

impl Admin {
    /// The import shared by `PUT /system/ssl-certificate` and
    /// [`Admin::import_server_certificate`].
    pub(crate) async fn import_server_certificate_as(
        &self,
        actor: &str,
        mut req: ImportRequest,
    ) -> Result<Imported, ApiError> {
        let name = display_name("name", &req.name, 128)?;
        if req.crt.is_empty() {
            return Err(ApiError::unprocessable(
                "The certificate file (crt) is empty",
            ));
        }
        let passphrase = req.passphrase.as_deref().filter(|p| !p.is_empty());
        let new_passphrase = req.new_passphrase.as_deref().filter(|p| !p.is_empty());
        let now = self.now();
        // Issuers the upload lacks, from the caIssuers URLs of its Authority Information
        // Access, through the egress policy. With validation `None` a failed fetch only
        // leaves the chain as uploaded.
        let fetched = match self
            .inner
            .aia_fetcher
            .missing_issuers(&uploaded_chain(&req, passphrase))
            .await
        {
            Ok(f) => f,
            Err(e) if req.validation => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "server certificate imported without the chain certificates its AIA names");
                Vec::new()
            }
        };
        if !fetched.is_empty() {
            let mut chain = req.chain.take().unwrap_or_default();
            if !chain.is_empty() && !certs::pem::is_pem(&chain) {
                // A DER chain file: re-encode it so the fetched PEM can follow.
                chain = certs::pem::read_certificates(&chain)
                    .map(|c| certs::ca_dir::chain_pem(&c).into_bytes())
                    .unwrap_or(chain);
            }
            chain.extend_from_slice(certs::ca_dir::chain_pem(&fetched).as_bytes());
            req.chain = Some(chain);
        }
        let input = requirements::Input {
            crt: &req.crt,
            key: &req.key,
            chain: req.chain.as_deref(),
            passphrase,
            crl_check: req.crl_check,
            now,
        };
        let report = if req.crl_check {
            requirements::check_with_crl_fetch(&input, &self.inner.crl_fetcher).await
        } else {
            requirements::check(&input)
        };
        // Validation `None` judges only that the material is usable (and the CRL rows
        // when asked for).
        let failed = report.rows.iter().find(|r| {
            r.required
                && !r.passed
                && (req.validation
                    || USABILITY_ROWS.contains(&r.name.as_str())
                    || (req.crl_check && CRL_ROWS.contains(&r.name.as_str())))
        });
        if let Some(row) = failed {
            return Err(refused(row, &report));
        }
        let (chain, key) = read_material(&req, passphrase)?;
        let pkcs8 =
            certs::keys::to_pkcs8(&key).map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let stored_key = match new_passphrase {
            Some(pw) => certs::pem::encrypt_pkcs8_der(&pkcs8, pw)
                .map_err(|e| ApiError::unprocessable(e.to_string()))?,
            None => pkcs8.clone(),
        };
        let leaf = chain
            .first()
            .ok_or_else(|| ApiError::unprocessable(certs::ReadError::NoCertificate.to_string()))?;
        let info = certs::CertInfo::parse(leaf.as_ref())
            .map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let record = ServerCertRecord {
            name: name.clone(),
            chain_der: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
            key_pkcs8: stored_key,
            imported_at: now,
        };
        let audit = AuditEntry::new(actor, None, "SERVER_CERTIFICATE_IMPORTED")
            .fingerprint(&info.fingerprint_sha1)
            .target(&name)
            .detail(format!(
                "subject {}, validation {}, crlCheck {}, key stored {}, {} chain certificate(s) fetched",
                info.subject,
                if req.validation { "Required" } else { "None" },
                req.crl_check,
                if new_passphrase.is_some() { "encrypted" } else { "unencrypted" },
                fetched.len()
            ));
        let server = crate::ServerCertificate {
            chain: chain.clone(),
            key: PrivateKeyDer::Pkcs8(pkcs8.into()),
        };
        self.inner
            .store
            .put_server_certificate(record, audit)
            .await?;
        self.inner
            .server_tx
            .send_replace(Some(std::sync::Arc::new(server)));
        Ok(Imported {
            info,
            report,
            chain_length: chain.len(),
        })
    }
}

async fn text(field: axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let bytes = field.bytes().await?;
    String::from_utf8(bytes.to_vec())
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::BadRequest(format!("Multipart field '{name}' must be UTF-8 text")))
}

/// Imports the server certificate (multipart form: `name`, `passphrase`, `key`, `crt`,
/// optional `chain`, `validation` = `Required` | `None`, `crlCheck`, `newPassphrase`).
/// With validation `Required` the certificate must pass every requirement; the message is
/// the sentence of the first failing one (or "Certificate validation failed: " and the
/// row's reason) and `info.report` holds the whole report. Chain certificates missing
/// from the upload are fetched from the caIssuers URLs of their Authority Information
/// Access, through the egress policy ("Cannot download chain certificates. ...",
/// "Cannot download certificate. ..." when that fails).
#[utoipa::path(put, path = "/system/ssl-certificate", tag = "system",
    request_body(content = ServerCertificateForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Imported and handed to the TLS listener", body = ServerCertificateInfo),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A requirement failed (message is its sentence)", body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn put(
    State(admin): State<Admin>,
    who: Principal,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    who.require_management_admin("import the server certificate")?;
    let mut form = form.map_err(|r| match r.status() {
        StatusCode::BAD_REQUEST => ApiError::UnsupportedMediaType(
            "Expected a multipart/form-data body with the fields name, passphrase, key, crt, chain, validation, crlCheck and newPassphrase".into(),
        ),
        _ => ApiError::from(r),
    })?;
    let mut req = ImportRequest {
        validation: true,
        ..ImportRequest::default()
    };
    let (mut has_name, mut has_crt) = (false, false);
    while let Some(field) = form.next_field().await? {
        match field.name().unwrap_or_default() {
            "name" => {
                req.name = text(field).await?;
                has_name = true;
            }
            "passphrase" => req.passphrase = Some(text(field).await?),
            "newPassphrase" => req.new_passphrase = Some(text(field).await?),
            "key" => req.key = field.bytes().await?.to_vec(),
            "crt" => {
                req.crt = field.bytes().await?.to_vec();
                has_crt = true;
            }
            "chain" => req.chain = Some(field.bytes().await?.to_vec()),
            "validation" => {
                let v = text(field).await?;
                req.validation = if v.eq_ignore_ascii_case("required") {
                    true
                } else if v.eq_ignore_ascii_case("none") {
                    false
                } else {
                    return Err(ApiError::BadRequest(
                        "validation must be Required or None".into(),
                    ));
                };
            }
            "crlCheck" => {
                let v = text(field).await?;
                req.crl_check = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" | "" => false,
                    _ => return Err(ApiError::BadRequest("crlCheck must be true or false".into())),
                };
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown multipart field '{}': expected name, passphrase, key, crt, chain, validation, crlCheck, newPassphrase",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
    }
    if !has_name {
        return Err(ApiError::BadRequest(
            "Missing multipart field 'name'".into(),
        ));
    }
    if !has_crt {
        return Err(ApiError::BadRequest("Missing multipart field 'crt'".into()));
    }
    let name = req.name.clone();
    let imported = admin
        .import_server_certificate_as(&who.actor(), req)
        .await?;
    Ok(json_status(
        StatusCode::OK,
        ServerCertificateInfo {
            name,
            imported_at: super::time(admin.now()),
            chain_length: imported.chain_length,
            certificate: serde_json::to_value(&imported.info).unwrap_or_default(),
            report: Some(
                imported
                    .report
                    .rows
                    .iter()
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .collect(),
            ),
        },
    ))
}

/// The stored server certificate (without its key).
#[utoipa::path(get, path = "/system/ssl-certificate", tag = "system",
    responses(
        (status = 200, body = ServerCertificateInfo),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "None imported yet", body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(State(admin): State<Admin>, who: Principal) -> Result<Response, ApiError> {
    if !who.is_management() {
        return Err(ApiError::Forbidden(
            "Only the management tenant can read the server certificate".into(),
        ));
    }
    let rec = admin
        .store()
        .server_certificate()
        .await?
        .ok_or_else(|| ApiError::NotFound("No server certificate has been imported".into()))?;
    let leaf = rec
        .chain_der
        .first()
        .ok_or_else(|| ApiError::Internal("stored server certificate has no chain".into()))?;
    let info = certs::CertInfo::parse(leaf).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_status(
        StatusCode::OK,
        ServerCertificateInfo {
            name: rec.name.clone(),
            imported_at: super::time(rec.imported_at),
            chain_length: rec.chain_der.len(),
            certificate: serde_json::to_value(&info).unwrap_or_default(),
            report: None,
        },
    ))
}
