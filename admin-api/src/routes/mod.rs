//! The REST API: one module per resource, [`router`] composing them, and the shared
//! request pieces (JSON and query extractors that answer our JSON errors, paging,
//! input validation).

pub mod audit;
pub mod chain;
pub mod crl;
pub mod devices;
pub mod openapi;
pub mod pop;
pub mod system;
pub mod tenants;
pub mod trusted_certificates;
pub mod users;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{tenant_not_found, Principal};
use crate::error::ApiError;
use crate::store::{PageRequest, TenantRecord};
use crate::Admin;

/// The REST API over `admin`.
pub fn router(admin: Admin) -> Router {
    let max_body = admin.config().max_body_bytes;
    Router::new()
        .route("/openapi.json", get(openapi::serve))
        .route("/tenant/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/tenant/tenants/{tenant_id}",
            get(tenants::get)
                .put(tenants::update)
                .delete(tenants::delete),
        )
        .route(
            "/tenant/tenants/{tenant_id}/settings",
            get(tenants::get_settings).put(tenants::put_settings),
        )
        .route(
            "/user/{tenant_id}/users",
            get(users::list).post(users::create),
        )
        .route(
            "/user/{tenant_id}/users/{user_name}",
            get(users::get).delete(users::delete),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates",
            get(trusted_certificates::list).post(trusted_certificates::create),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates/bulk",
            post(trusted_certificates::bulk),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates/{fingerprint}",
            get(trusted_certificates::get)
                .put(trusted_certificates::update)
                .delete(trusted_certificates::delete),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/verification-code",
            post(pop::verification_code),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/pop",
            post(pop::verify),
        )
        .route(
            "/tenant/tenants/{tenant_id}/trusted-certificates-pop/{fingerprint}/confirmed",
            post(pop::confirm),
        )
        .route(
            "/tenant/trusted-certificates/settings/crl",
            get(crl::get_crl).put(crl::add_serials),
        )
        .route(
            "/tenant/trusted-certificates/settings/crl/signer",
            get(crl::signer_certificate),
        )
        .route(
            "/tenant/tenants/{tenant_id}/crls",
            get(crl::list).post(crl::upload),
        )
        .route(
            "/tenant/trusted-certificates/verify-cert-chain",
            post(chain::verify),
        )
        .route(
            "/tenant/tenants/{tenant_id}/devices",
            get(devices::list).post(devices::create),
        )
        .route(
            "/tenant/tenants/{tenant_id}/devices/{common_name}",
            get(devices::get)
                .put(devices::update)
                .delete(devices::block),
        )
        .route("/system/ssl-certificate", get(system::get).put(system::put))
        .route("/audit", get(audit::list))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(admin)
}

async fn fallback(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "No such resource: {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// A JSON request body whose rejections are our JSON errors.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// Query parameters whose rejections are our JSON errors.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// Path parameters whose rejections are our JSON errors.
#[derive(Debug, Clone)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParams(v)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// Paging parameters of list endpoints.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (1 to 2000, default 5).
    pub page_size: Option<u32>,
    /// Page number from 1 (default 1).
    pub current_page: Option<u32>,
}

/// The largest page size.
pub const MAX_PAGE_SIZE: u32 = 2000;

impl PageQuery {
    /// Validates the parameters.
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        let size = self.page_size.unwrap_or(5);
        let page = self.current_page.unwrap_or(1);
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::unprocessable(format!(
                "pageSize must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        if page < 1 {
            return Err(ApiError::unprocessable("currentPage must be 1 or more"));
        }
        Ok(PageRequest { size, page })
    }
}

/// Paging statistics of a list response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    /// Items per page.
    pub page_size: u32,
    /// This page, from 1.
    pub current_page: u32,
    /// Number of pages.
    pub total_pages: u64,
    /// Number of items on all pages.
    pub total_elements: u64,
}

impl Statistics {
    /// Statistics for `page` out of `total` items.
    pub fn new(page: PageRequest, total: u64) -> Statistics {
        Statistics {
            page_size: page.size,
            current_page: page.page,
            total_pages: total.div_ceil(u64::from(page.size)),
            total_elements: total,
        }
    }
}

/// Unix seconds as RFC 3339.
pub(crate) fn time(ts: i64) -> String {
    certs::info::rfc3339(ts)
}

/// Looks up a tenant the caller may read (404 for a missing tenant and for another
/// tenant's, alike).
pub(crate) async fn readable_tenant(
    admin: &Admin,
    who: &Principal,
    tenant: &str,
) -> Result<TenantRecord, ApiError> {
    who.can_read(tenant)?;
    admin
        .store()
        .tenant(tenant)
        .await?
        .ok_or_else(|| tenant_not_found(tenant))
}

/// Looks up a tenant the caller may change.
pub(crate) async fn writable_tenant(
    admin: &Admin,
    who: &Principal,
    tenant: &str,
) -> Result<TenantRecord, ApiError> {
    let t = readable_tenant(admin, who, tenant).await?;
    who.can_write(tenant)?;
    Ok(t)
}

/// Characters that make a name lie about itself: bidirectional overrides, zero-width
/// characters and the BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// Validates a display name (certificate name, company): 1 to `max` characters, any
/// script, but no control or invisible formatting characters. Returns it trimmed.
pub(crate) fn display_name(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if v.chars().count() > max {
        return Err(ApiError::unprocessable(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if v.chars().any(|c| c.is_control() || is_invisible_format(c)) {
        return Err(ApiError::unprocessable(format!(
            "{field} must not contain control or invisible formatting characters"
        )));
    }
    Ok(v.to_string())
}

/// Validates a tenant id: it becomes a topic prefix and part of MQTT ClientIds.
pub(crate) fn tenant_id(value: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "id must be 1 to 32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
        ))
    }
}

/// Validates a user name: it is written as `tenantId/userName` in Basic credentials.
pub(crate) fn user_name(value: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "userName must be 1 to 64 characters of letters, digits, '.', '_', '-', '@' or '+'",
        ))
    }
}

/// Validates a password for a new user.
pub(crate) fn password(field: &str, value: &str) -> Result<(), ApiError> {
    let n = value.chars().count();
    if !(8..=256).contains(&n) {
        return Err(ApiError::unprocessable(format!(
            "{field} must be 8 to 256 characters long"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// A JSON response with a status.
pub(crate) fn json_status<T: Serialize>(status: axum::http::StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}
