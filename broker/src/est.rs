//! The EST listener (RFC 7030; default `0.0.0.0:8444`, `--est-listen`): device
//! enrollment and renewal against the tenant certificate authorities the admin API
//! holds ([`admin_api::est`]).
//!
//! | path | authentication | answer |
//! | --- | --- | --- |
//! | `GET /.well-known/est/<tenant>/cacerts` | none | the tenant's CA certificates (active first, then those in their rotation overlap) |
//! | `GET /.well-known/est/<tenant>/csrattrs` | none | the attributes a request should use (ECDSA P-256, SHA-256) |
//! | `POST /.well-known/est/<tenant>/simpleenroll` | HTTP Basic: the device's CN and its one-time secret | the new certificate |
//! | `POST /.well-known/est/<tenant>/simplereenroll` | the device's current certificate in the TLS handshake, verified as on port 8883 | the new certificate |
//!
//! Requests are `application/pkcs10`, answers `application/pkcs7-mime;
//! smime-type=certs-only` (and `application/csrattrs`), both base64 with
//! `Content-Transfer-Encoding: base64`. Refusals are a status and one line of text
//! ([`admin_api::error::EstError`]). The listener has the admin listener's connection
//! limits and timeouts (per source and in all), and bodies are capped at
//! [`certs::est::MAX_BODY_BYTES`].

use std::net::SocketAddr;

use admin_api::error::EstError;
use admin_api::Admin;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use certs::est::{CONTENT_TYPE_CERTS, CONTENT_TYPE_CSR, CONTENT_TYPE_CSRATTRS, MAX_BODY_BYTES};

use crate::listener::PeerCertificates;
use crate::metrics::Metrics;
use crate::TrustView;

#[derive(Clone)]
struct EstState {
    admin: Admin,
    trust: TrustView,
    metrics: Metrics,
}

/// The EST routes over `admin` (issuance) and `trust` (renewal's certificate check).
pub fn router(admin: Admin, trust: TrustView, metrics: Metrics) -> Router {
    Router::new()
        .route("/.well-known/est/{tenant}/cacerts", get(cacerts))
        .route("/.well-known/est/{tenant}/csrattrs", get(csrattrs))
        .route("/.well-known/est/{tenant}/simpleenroll", post(simpleenroll))
        .route(
            "/.well-known/est/{tenant}/simplereenroll",
            post(simplereenroll),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "No such EST resource\n") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(EstState {
            admin,
            trust,
            metrics,
        })
}

/// A base64 body with its content type.
fn base64_answer(content_type: &'static str, der: &[u8]) -> Response {
    let mut resp = (StatusCode::OK, certs::est::encode_base64(der)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "Content-Transfer-Encoding",
        HeaderValue::from_static("base64"),
    );
    resp
}

fn answer(metrics: &Metrics, op: &str, r: Result<Response, EstError>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    metrics.est_request(op, resp.status().as_u16());
    resp
}

async fn cacerts(State(s): State<EstState>, Path(tenant): Path<String>) -> Response {
    let r = async {
        let certs = s.admin.est_cacerts(&tenant).await?;
        let refs: Vec<&[u8]> = certs.iter().map(Vec::as_slice).collect();
        Ok(base64_answer(
            CONTENT_TYPE_CERTS,
            &certs::est::certs_only(&refs),
        ))
    }
    .await;
    answer(&s.metrics, "cacerts", r)
}

async fn csrattrs(State(s): State<EstState>, Path(tenant): Path<String>) -> Response {
    let r = async {
        // Only for a tenant that enrolls: the same 404 as the other operations.
        s.admin.est_cacerts(&tenant).await?;
        Ok(base64_answer(
            CONTENT_TYPE_CSRATTRS,
            &admin_api::est::csr_attributes(),
        ))
    }
    .await;
    answer(&s.metrics, "csrattrs", r)
}

/// The request's PKCS#10 DER: `application/pkcs10`, base64.
fn csr_body(
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Vec<u8>, EstError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(CONTENT_TYPE_CSR) {
        return Err(EstError::UnsupportedMediaType(CONTENT_TYPE_CSR));
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            EstError::TooLarge(MAX_BODY_BYTES)
        } else {
            EstError::BadRequest(r.body_text())
        }
    })?;
    certs::est::decode_base64(&body).map_err(|e| EstError::BadRequest(e.to_string()))
}

/// The Basic credentials: (user, password).
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn simpleenroll(
    State(s): State<EstState>,
    Path(tenant): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let r = async {
        let (cn, secret) = basic(&headers).ok_or(EstError::Unauthorized)?;
        let csr = csr_body(&headers, body)?;
        let source = peer.map(|Extension(ConnectInfo(a))| a.ip());
        let der = s
            .admin
            .est_enroll(&tenant, &cn, &secret, source, &csr)
            .await?;
        tracing::info!(%tenant, common_name = %cn, "EST enrollment: certificate issued");
        Ok(base64_answer(
            CONTENT_TYPE_CERTS,
            &certs::est::certs_only(&[&der]),
        ))
    }
    .await;
    answer(&s.metrics, "simpleenroll", r)
}

async fn simplereenroll(
    State(s): State<EstState>,
    Path(tenant): Path<String>,
    chain: Option<Extension<PeerCertificates>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let r = async {
        let chain = chain
            .and_then(|Extension(PeerCertificates(c))| c)
            .ok_or(EstError::NoClientCertificate)?;
        // The verification of port 8883, on the snapshot of this moment.
        let id = s
            .trust
            .load()
            .verify_device(&chain, certs::UnixTime::now())
            .map_err(|e| EstError::CertificateRefused(e.to_string()))?;
        let csr = csr_body(&headers, body)?;
        let der = s.admin.est_reenroll(&tenant, &id, &csr).await?;
        tracing::info!(%tenant, common_name = %id.common_name, replaces = %id.serial_hex, "EST renewal: certificate issued");
        Ok(base64_answer(CONTENT_TYPE_CERTS, &certs::est::certs_only(&[&der])))
    }
    .await;
    answer(&s.metrics, "simplereenroll", r)
}
