//! [`ApiError`]: every error the REST API can answer, mapped to a status and a JSON body
//! `{"error": "...", "message": "...", "info": ...}` in one table ([`ApiError::parts`]).
//! 5xx bodies stay generic; the detail goes to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{Conflict, StoreError};

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable kind (`bad_request`, `unauthorized`, `not_found`, ...).
    pub error: String,
    /// A sentence for the person reading it.
    pub message: String,
    /// Details (the failing row of a report, the index in a bulk request, the seconds
    /// to wait, ...): always an object, `{}` when there are none.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
}

/// An error answered by the REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (JSON syntax, multipart, base64, chain PEM).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed (within the caller's own tenant).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource, or a resource of another tenant.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the change conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body exceeds the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body has the wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but refused by a rule; `info` carries details.
    #[error("{message}")]
    Unprocessable {
        /// The rule's sentence.
        message: String,
        /// Details (an object; `null` is sent as `{}`).
        info: serde_json::Value,
    },
    /// 422: a server-certificate import refused with one of the appliance's messages
    /// ([`CERTIFICATE_VALIDATION_FAILED`], [`CANNOT_DOWNLOAD_CHAIN`],
    /// [`CANNOT_DOWNLOAD_CERTIFICATE`]), the specific reason appended.
    #[error("{}", import_message(*kind, reason))]
    CertificateImport {
        /// Which of the messages.
        kind: ImportFailure,
        /// The specific reason.
        reason: String,
        /// Details (the requirements report of a validation failure).
        info: serde_json::Value,
    },
    /// 401 for the reference platform's forms of the chain check: the chain is refused;
    /// `info` carries the verdict.
    #[error("{message}")]
    ChainRefused {
        /// Why the chain is refused.
        message: String,
        /// The verdict.
        info: serde_json::Value,
    },
    /// 401 for a refused console login: as [`ApiError::Unauthorized`], but without
    /// `WWW-Authenticate` (a browser would answer it with its own password prompt).
    #[error("{0}")]
    LoginFailed(String),
    /// 401 for a console request whose session is not live (never opened, logged out,
    /// expired, or ended by a password change or the user's deletion). Sent without
    /// `WWW-Authenticate`, so the browser shows the console's own login form.
    #[error("{}", SESSION_ENDED)]
    SessionEnded,
    /// 403: a console request that changes something came without the session's CSRF
    /// token.
    #[error("{}", CSRF_TOKEN_MISSING)]
    CsrfTokenMissing,
    /// 403: a console request that changes something came with a token that is not its
    /// session's.
    #[error("{}", CSRF_TOKEN_WRONG)]
    CsrfTokenWrong,
    /// 429: too many failed logins for this user name from this address, from this
    /// address, or (slowed down) for this user name.
    #[error("Too many failed logins; try again in {}", seconds(*retry_after_secs))]
    TooManyRequests {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// 503: every password-check thread is busy and the queue is full.
    #[error("Too many logins are being checked; try again in {}", seconds(*retry_after_secs))]
    ServiceUnavailable {
        /// Seconds after which a retry is likely to be served.
        retry_after_secs: u64,
    },
    /// 503: the database cannot be reached; nothing was changed. The detail is logged,
    /// never sent.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// 507: the store is full (disk or configured size limit); nothing was changed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 500: a bug or a storage failure. The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The appliance's message for a server certificate that fails a requirement without a
/// sentence of its own (the row's reason follows after a colon).
pub const CERTIFICATE_VALIDATION_FAILED: &str = "Certificate validation failed";
/// The appliance's message when a chain certificate named by the certificate's
/// Authority Information Access cannot be fetched (the reason follows).
pub const CANNOT_DOWNLOAD_CHAIN: &str = "Cannot download chain certificates.";
/// The appliance's message when a fetched chain certificate is not the issuer's
/// certificate (the reason follows).
pub const CANNOT_DOWNLOAD_CERTIFICATE: &str = "Cannot download certificate.";

/// Which of the appliance's import messages an [`ApiError::CertificateImport`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFailure {
    /// [`CERTIFICATE_VALIDATION_FAILED`].
    Validation,
    /// [`CANNOT_DOWNLOAD_CHAIN`].
    ChainDownload,
    /// [`CANNOT_DOWNLOAD_CERTIFICATE`].
    CertificateDownload,
}

fn import_message(kind: ImportFailure, reason: &str) -> String {
    match kind {
        ImportFailure::Validation => format!("{CERTIFICATE_VALIDATION_FAILED}: {reason}"),
        ImportFailure::ChainDownload => format!("{CANNOT_DOWNLOAD_CHAIN} {reason}"),
        ImportFailure::CertificateDownload => format!("{CANNOT_DOWNLOAD_CERTIFICATE} {reason}"),
    }
}

impl From<certs::aia::AiaError> for ApiError {
    fn from(e: certs::aia::AiaError) -> Self {
        let kind = match e {
            certs::aia::AiaError::Download(_) => ImportFailure::ChainDownload,
            certs::aia::AiaError::NotTheIssuer { .. } => ImportFailure::CertificateDownload,
        };
        ApiError::CertificateImport {
            kind,
            reason: e.to_string(),
            info: serde_json::Value::Null,
        }
    }
}

fn seconds(n: u64) -> String {
    if n == 1 {
        "1 second".to_string()
    } else {
        format!("{n} seconds")
    }
}

impl ApiError {
    /// A 422 without details.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            message: message.into(),
            info: serde_json::Value::Null,
        }
    }

    /// The status, the `error` kind and the message sent to the client.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            ApiError::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                m.clone(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            ApiError::PayloadTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                m.clone(),
            ),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m.clone(),
            ),
            ApiError::Unprocessable { message, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                message.clone(),
            ),
            ApiError::CertificateImport { kind, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                match kind {
                    ImportFailure::Validation => "certificate_validation_failed",
                    ImportFailure::ChainDownload => "chain_download_failed",
                    ImportFailure::CertificateDownload => "certificate_download_failed",
                },
                self.to_string(),
            ),
            ApiError::ChainRefused { message, .. } => (
                StatusCode::UNAUTHORIZED,
                "certificate_chain_invalid",
                message.clone(),
            ),
            ApiError::LoginFailed(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            ApiError::SessionEnded => (StatusCode::UNAUTHORIZED, "session_ended", self.to_string()),
            ApiError::CsrfTokenMissing => (
                StatusCode::FORBIDDEN,
                "csrf_token_missing",
                self.to_string(),
            ),
            ApiError::CsrfTokenWrong => (
                StatusCode::FORBIDDEN,
                "csrf_token_invalid",
                self.to_string(),
            ),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                self.to_string(),
            ),
            ApiError::ServiceUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                self.to_string(),
            ),
            ApiError::DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                DATABASE_UNAVAILABLE.to_string(),
            ),
            ApiError::InsufficientStorage(m) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                m.clone(),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "The server could not complete the request; see the server log".to_string(),
            ),
        }
    }

    /// Seconds after which a retry is likely to be served, for the answers that have
    /// one (sent as `Retry-After` and as `info.retryAfterSeconds`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooManyRequests { retry_after_secs }
            | ApiError::ServiceUnavailable { retry_after_secs } => Some(*retry_after_secs),
            // The store reconnects by itself; a node notices the database back within
            // its poll interval.
            ApiError::DatabaseUnavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The body sent to the client.
    pub fn body(&self) -> ErrorBody {
        let (_, error, message) = self.parts();
        let info = match self {
            ApiError::Unprocessable { info, .. }
            | ApiError::ChainRefused { info, .. }
            | ApiError::CertificateImport { info, .. } => info.clone(),
            _ => match self.retry_after() {
                Some(secs) => serde_json::json!({ "retryAfterSeconds": secs }),
                None => serde_json::Value::Null,
            },
        };
        // Always an object, as the document says: `{}` for no details.
        let info = match info {
            serde_json::Value::Object(_) => info,
            serde_json::Value::Null => serde_json::json!({}),
            other => serde_json::json!({ "detail": other }),
        };
        ErrorBody {
            error: error.to_string(),
            message,
            info,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "request failed"),
            ApiError::DatabaseUnavailable(detail) => {
                tracing::warn!(%detail, "request refused: the database is unreachable")
            }
            ApiError::InsufficientStorage(_) => {
                tracing::error!("request refused: the database is full (disk or size limit)")
            }
            _ => {}
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"broker admin\""),
                );
            }
            _ => {
                if let Some(secs) = self.retry_after() {
                    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                        resp.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                }
            }
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Conflict(c) => ApiError::Conflict(conflict_message(&c)),
            StoreError::Full(detail) => {
                tracing::error!(%detail, "storage full");
                ApiError::InsufficientStorage(STORAGE_FULL.into())
            }
            StoreError::Backend(detail) => ApiError::Internal(detail),
            StoreError::Unavailable(detail) => ApiError::DatabaseUnavailable(detail),
        }
    }
}

/// The message of a 507: what happened, that nothing changed, what to do.
pub const STORAGE_FULL: &str = "The database is full (no space left on the disk or the configured size limit reached): the change was not stored and existing data is unchanged. Free space or raise the limit, then retry";

/// The message of a 401 for a console request without a live session.
pub const SESSION_ENDED: &str =
    "The console session has ended (logged out, expired, or the password changed): log in again";

/// The message of a 403 for a console change without the CSRF token.
pub const CSRF_TOKEN_MISSING: &str = "This request changes something and is authenticated by the console session cookie: send the session's CSRF token in the X-CSRF-Token header";

/// The message of a 403 for a console change with a wrong CSRF token.
pub const CSRF_TOKEN_WRONG: &str =
    "The X-CSRF-Token header does not match the console session's CSRF token";

/// The message of a 503 when the database is unreachable.
pub const DATABASE_UNAVAILABLE: &str = "The database is unreachable: the request was not carried out and nothing was changed. Retry in a moment";

/// The sentence for each store conflict.
fn conflict_message(c: &Conflict) -> String {
    match c {
        Conflict::TenantExists(id) => format!("Tenant {id} already exists"),
        Conflict::UserExists { tenant, user } => {
            format!("User {user} already exists in tenant {tenant}")
        }
        Conflict::CertificateExists { fingerprint } => format!(
            "Certificate {fingerprint} is already trusted: a certificate can be trusted by only one tenant, so that every device maps to exactly one tenant"
        ),
        Conflict::PublicKeyTrustedElsewhere { fingerprint } => format!(
            "Certificate {fingerprint} has the same public key as a certificate trusted by another tenant: every device must map to exactly one tenant"
        ),
        Conflict::IssuedByAnotherTenantsAnchor { fingerprint } => format!(
            "Certificate {fingerprint} conflicts with a trust anchor of another tenant: it was issued by it"
        ),
        Conflict::IssuerOfAnotherTenantsAnchor { fingerprint } => format!(
            "Certificate {fingerprint} conflicts with a trust anchor of another tenant: it issued it"
        ),
        Conflict::DeviceExists { common_name } => {
            format!("Device {common_name} is already registered")
        }
        Conflict::AnchorLimit { tenant, max, have } => format!(
            "Tenant {tenant} has reached its limit of {max} trusted certificates ({have} trusted)"
        ),
        Conflict::ActiveCaExists { tenant } => format!(
            "Tenant {tenant} already has an active certificate authority: rotate it (POST .../certificate-authority/rotate) to replace it"
        ),
        Conflict::RuleSetInUse { name } => format!(
            "Rule set {name} is assigned to a trusted certificate or a device: remove those assignments first"
        ),
    }
}

/// Why an EST request (RFC 7030) is refused. EST clients read the status and a
/// one-line text body ([`EstError::parts`] is the one table).
#[derive(Debug, thiserror::Error)]
pub enum EstError {
    /// 401: no, wrong, used or expired one-time secret (or no client certificate on
    /// `simplereenroll`).
    #[error("Enrollment refused: the device name and one-time secret are not valid (unknown, wrong, already used or expired)")]
    Unauthorized,
    /// 401: `simplereenroll` without a client certificate.
    #[error("Renewal needs the device's current certificate in the TLS handshake")]
    NoClientCertificate,
    /// 401: the client certificate was refused as on port 8883.
    #[error("The client certificate is refused: {0}")]
    CertificateRefused(String),
    /// 403: the certificate belongs to another tenant than the path names.
    #[error("The client certificate belongs to another tenant")]
    WrongTenant,
    /// 403: the certificate was not issued by this tenant's certificate authority.
    #[error("Only certificates issued by the tenant's certificate authority can be renewed here")]
    NotIssuedHere,
    /// 404: the tenant has no certificate authority (or does not exist).
    #[error("Tenant {0} has no certificate authority for enrollment")]
    NoCa(String),
    /// 400: the request is refused by the issuing policy.
    #[error("{0}")]
    Csr(#[from] certs::est::CsrError),
    /// 400: the body is not what the operation takes.
    #[error("{0}")]
    BadRequest(String),
    /// 413: the body is over the limit.
    #[error("The request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 415: the body's content type is not the operation's.
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    /// 429: too many failed enrollments for this device name or from this address.
    #[error("Too many failed enrollments; try again in {}", seconds(*retry_after_secs))]
    TooManyRequests {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 503: every password-check thread is busy, or the database is unreachable.
    #[error("The server is busy; try again in {}", seconds(*retry_after_secs))]
    Busy {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 500: a bug, an undecryptable CA key, a storage failure. Logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EstError {
    /// The status and the text sent to the client.
    pub fn parts(&self) -> (StatusCode, String) {
        let status = match self {
            EstError::Unauthorized
            | EstError::NoClientCertificate
            | EstError::CertificateRefused(_) => StatusCode::UNAUTHORIZED,
            EstError::WrongTenant | EstError::NotIssuedHere => StatusCode::FORBIDDEN,
            EstError::NoCa(_) => StatusCode::NOT_FOUND,
            EstError::Csr(_) | EstError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EstError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EstError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EstError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            EstError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EstError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let text = match self {
            EstError::Internal(_) => {
                "The server could not complete the request; see the server log".to_string()
            }
            other => other.to_string(),
        };
        (status, text)
    }
}

impl From<StoreError> for EstError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => EstError::Busy {
                retry_after_secs: 1,
            },
            other => EstError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for EstError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::DatabaseUnavailable(_) => EstError::Busy {
                retry_after_secs: 1,
            },
            other => EstError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for EstError {
    fn into_response(self) -> Response {
        let (status, text) = self.parts();
        if let EstError::Internal(detail) = &self {
            tracing::error!(%detail, "EST request failed");
        }
        let mut resp = (status, format!("{text}\n")).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            EstError::Unauthorized => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"est\""),
                );
            }
            EstError::TooManyRequests { retry_after_secs }
            | EstError::Busy { retry_after_secs } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        resp
    }
}

impl From<certs::UploadError> for ApiError {
    fn from(e: certs::UploadError) -> Self {
        ApiError::unprocessable(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let text = r.body_text();
        // The usual mistake: a PEM file pasted into a JSON string as it is, with its
        // line breaks, which JSON strings cannot hold.
        if text.contains("control character") {
            let at = text
                .find(" at line ")
                .map(|i| text[i..].to_string())
                .unwrap_or_default();
            return ApiError::BadRequest(format!(
                "The JSON body has a raw line break (or another control character) inside a string{at}: JSON strings cannot hold one. Send a PEM certificate on one line with \\n for each line break (for example PEM=$(awk '{{printf \"%s\\\\n\", $0}}' ca.crt)), or its base64 DER alone"
            ));
        }
        from_status(r.status(), text)
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        from_status(r.status(), r.body_text())
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(r: axum::extract::multipart::MultipartRejection) -> Self {
        from_status(r.status(), r.body_text())
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        from_status(e.status(), e.body_text())
    }
}

/// Maps an extractor's status and text to our error kinds (never a 5xx for client
/// input: a body that fails to buffer is the client's problem).
fn from_status(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "The request body is larger than the limit ({text})"
        )),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::unprocessable(text),
        _ => ApiError::BadRequest(text),
    }
}

/// Rewrites any error response that is not already our JSON (axum's 405, a body-limit
/// 413, a panic's 500) into the JSON error body, so every 4xx/5xx has the same shape.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let err = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::MethodNotAllowed(format!("Method {method} is not allowed on {path}"))
        }
        StatusCode::NOT_FOUND => ApiError::NotFound(format!("No such resource: {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("The request body is larger than the limit".into())
        }
        s if s.is_server_error() => ApiError::Internal(format!("{status} from {method} {path}")),
        s => from_status(s, s.canonical_reason().unwrap_or("Bad request").to_string()),
    };
    let mut new = err.into_response();
    // Keep headers such as Allow on a 405.
    for (k, v) in resp.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            new.headers_mut().entry(k).or_insert(v.clone());
        }
    }
    new
}

impl From<crate::AdminError> for ApiError {
    fn from(e: crate::AdminError) -> Self {
        match e {
            crate::AdminError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_is_507_with_a_clear_message() {
        let e = ApiError::from(StoreError::Full("database or disk is full".into()));
        let (status, kind, message) = e.parts();
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(kind, "insufficient_storage");
        assert_eq!(message, STORAGE_FULL);
        // The backend's own text stays in the log.
        assert!(!message.contains("database or disk is full"));
    }

    #[test]
    fn an_unreachable_database_is_503_with_retry_after() {
        let e = ApiError::from(StoreError::Unavailable(
            "error connecting to server: Connection refused".into(),
        ));
        let (status, kind, message) = e.parts();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(kind, "service_unavailable");
        assert_eq!(message, DATABASE_UNAVAILABLE);
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
