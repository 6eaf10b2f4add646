//! The REST API: one module per resource, [`router`] composing them, and the shared
//! request pieces (JSON and query extractors that answer our JSON errors, paging,
//! input validation).

pub mod acl;
pub mod audit;
pub mod chain;
pub mod crl;
pub mod devices;
pub mod enrollment;
pub mod live;
pub mod openapi;
pub mod pop;
pub mod system;
pub mod tenant_ca;
pub mod tenants;
pub mod trusted_certificates;
pub mod users;

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
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
        .route("/tenant/tenants/{tenant_id}/acl/rule-sets", get(acl::list))
        .route(
            "/tenant/tenants/{tenant_id}/acl/rule-sets/{name}",
            get(acl::get).put(acl::put).delete(acl::delete),
        )
        .route(
            "/tenant/tenants/{tenant_id}/acl/assignments",
            get(acl::assignments),
        )
        .route(
            "/tenant/tenants/{tenant_id}/acl/assignments/devices/{common_name}",
            axum::routing::put(acl::assign_device).delete(acl::unassign_device),
        )
        .route(
            "/tenant/tenants/{tenant_id}/acl/assignments/trusted-certificates/{fingerprint}",
            axum::routing::put(acl::assign_anchor).delete(acl::unassign_anchor),
        )
        .route("/tenant/tenants/{tenant_id}/acl/check", post(acl::check))
        .route(
            "/tenant/tenants/{tenant_id}/certificate-authority",
            get(tenant_ca::list).post(tenant_ca::create),
        )
        .route(
            "/tenant/tenants/{tenant_id}/certificate-authority/rotate",
            post(tenant_ca::rotate),
        )
        .route(
            "/tenant/tenants/{tenant_id}/enrollment-secrets",
            get(enrollment::list).post(enrollment::create),
        )
        .route(
            "/tenant/tenants/{tenant_id}/enrollment-secrets/bulk",
            post(enrollment::bulk),
        )
        .route(
            "/tenant/tenants/{tenant_id}/enrollment-secrets/{common_name}",
            axum::routing::delete(enrollment::delete),
        )
        .route(
            "/tenant/tenants/{tenant_id}/issued-certificates",
            get(enrollment::issued),
        )
        .route(
            "/tenant/tenants/{tenant_id}/issued-certificates/{serial}/revoke",
            post(enrollment::revoke),
        )
        .route(
            "/tenant/tenants/{tenant_id}/expiring-certificates",
            get(enrollment::expiring),
        )
        .route("/system/ssl-certificate", get(system::get).put(system::put))
        .route("/audit", get(audit::list))
        .route("/tenant/tenants/{tenant_id}/refusals", get(live::refusals))
        .route(
            "/tenant/tenants/{tenant_id}/connections",
            get(live::connections),
        )
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn(known_query_parameters))
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
    #[param(value_type = Option<i64>, minimum = 1, maximum = 2000)]
    pub page_size: Option<i64>,
    /// Page number from 1 (default 1), at most 1000000.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000000)]
    pub current_page: Option<i64>,
}

/// The largest page size.
pub const MAX_PAGE_SIZE: u32 = 2000;

/// The largest page number.
pub const MAX_PAGE: u32 = 1_000_000;

impl PageQuery {
    /// Validates the parameters (the bounds the document declares).
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        let size = self.page_size.unwrap_or(5);
        let page = self.current_page.unwrap_or(1);
        let size = u32::try_from(size)
            .ok()
            .filter(|s| (1..=MAX_PAGE_SIZE).contains(s))
            .ok_or_else(|| {
                ApiError::unprocessable(format!("pageSize must be between 1 and {MAX_PAGE_SIZE}"))
            })?;
        let page = u32::try_from(page)
            .ok()
            .filter(|p| (1..=MAX_PAGE).contains(p))
            .ok_or_else(|| {
                ApiError::unprocessable(format!("currentPage must be between 1 and {MAX_PAGE}"))
            })?;
        Ok(PageRequest { size, page })
    }
}

/// Deserializes an optional JSON integer. JSON Schema's `integer` is any number without
/// a fractional part, so `5.0` is as valid as `5`; serde's i64 refuses it.
pub(crate) fn json_integer<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    n.map(|n| {
        n.as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}")))
    })
    .transpose()
}

/// The query parameters each documented operation takes, from the OpenAPI document:
/// (method, path template) to names.
fn documented_query_parameters() -> &'static HashMap<(String, String), Vec<String>> {
    static TABLE: OnceLock<HashMap<(String, String), Vec<String>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let doc = <openapi::ApiDoc as utoipa::OpenApi>::openapi();
        let mut table = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let common = item.parameters.clone().unwrap_or_default();
            let ops = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let names = common
                    .iter()
                    .chain(op.parameters.iter().flatten())
                    .filter(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                    .map(|p| p.name.clone())
                    .collect();
                table.insert((method.to_string(), path.clone()), names);
            }
        }
        table
    })
}

/// Percent-decodes a query-string name (`+` is a space).
fn query_name(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 400 for a query parameter the operation does not take (exact sentence).
pub fn unknown_query_parameter(name: &str, method: &str, path: &str, known: &[String]) -> String {
    let name: String = name.chars().take(64).collect();
    if known.is_empty() {
        format!("Unknown query parameter '{name}': {method} {path} takes no query parameters")
    } else {
        format!(
            "Unknown query parameter '{name}': {method} {path} takes only {}",
            known.join(", ")
        )
    }
}

/// Refuses a query parameter that the operation's OpenAPI description does not declare
/// (400 naming it), so that a misspelt `pagesize` is not silently ignored. The allowed
/// names come from the document itself, so the two cannot disagree.
async fn known_query_parameters(
    matched: Option<MatchedPath>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (Some(matched), Some(query)) = (matched, req.uri().query()) else {
        return next.run(req).await;
    };
    let method = if req.method() == axum::http::Method::HEAD {
        "GET".to_string()
    } else {
        req.method().as_str().to_string()
    };
    let Some(known) =
        documented_query_parameters().get(&(method.clone(), matched.as_str().to_string()))
    else {
        return next.run(req).await;
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = query_name(pair.split('=').next().unwrap_or_default());
        if !known.contains(&name) {
            return ApiError::BadRequest(unknown_query_parameter(
                &name,
                &method,
                matched.as_str(),
                known,
            ))
            .into_response();
        }
    }
    next.run(req).await
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

/// The OpenAPI pattern of a display name, as [`display_name`] checks it: no control or
/// invisible formatting character, and at least one character that is not white space
/// (Unicode White_Space; the control ones among them are refused anyway).
pub const DISPLAY_NAME_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u202A-\u202E\u2060-\u206F\uFEFF]*[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u202A-\u202E\u2060-\u206F\uFEFF \u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u202A-\u202E\u2060-\u206F\uFEFF]*$";

/// Validates a display name (certificate name, company): 1 to `max` characters as sent
/// (the document's maxLength), any script, not only white space, no control or
/// invisible formatting characters ([`DISPLAY_NAME_PATTERN`]). Returns it trimmed.
pub(crate) fn display_name(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if value.chars().count() > max {
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

/// Schemas of request fields whose rules a derive cannot spell: each states exactly what
/// the handler enforces (the fuzz test holds the two together).
pub(crate) mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::Object;

    use super::DISPLAY_NAME_PATTERN;

    fn string(nullable: bool) -> ObjectBuilder {
        if nullable {
            ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        } else {
            ObjectBuilder::new().schema_type(Type::String)
        }
    }

    fn display_name(max: usize, nullable: bool, description: &str) -> Object {
        string(nullable)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(DISPLAY_NAME_PATTERN))
            .description(Some(description))
            .build()
    }

    /// A tenant's company (required).
    pub(crate) fn company() -> Object {
        display_name(256, false, "Company name: 1 to 256 characters, not only white space, no control or invisible formatting characters")
    }

    /// A tenant's company in an update (optional).
    pub(crate) fn company_opt() -> Object {
        display_name(256, true, "Company name: 1 to 256 characters, not only white space, no control or invisible formatting characters")
    }

    /// A tenant's domain (optional).
    pub(crate) fn domain() -> Object {
        display_name(253, true, "Domain: 1 to 253 characters, not only white space, no control or invisible formatting characters")
    }

    /// A trusted certificate's display name (optional).
    pub(crate) fn certificate_name() -> Object {
        display_name(128, true, "Display name: 1 to 128 characters, not only white space, no control or invisible formatting characters (default: the subject's CN)")
    }

    /// The server certificate's display name (required).
    pub(crate) fn server_certificate_name() -> Object {
        display_name(128, false, "Display name: 1 to 128 characters, not only white space, no control or invisible formatting characters")
    }

    /// A tenant id (optional: generated when absent).
    pub(crate) fn tenant_id() -> Object {
        string(true)
            .min_length(Some(1))
            .max_length(Some(32))
            .pattern(Some("^[a-z0-9][a-z0-9_-]*$"))
            .description(Some("Tenant id: 1 to 32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit; generated when absent"))
            .build()
    }

    /// A user name.
    pub(crate) fn user_name() -> Object {
        string(false)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some("^[A-Za-z0-9._@+-]+$"))
            .description(Some("User name: 1 to 64 letters, digits, '.', '_', '-', '@' or '+' (log in as tenantId/userName)"))
            .build()
    }

    /// A new password.
    pub(crate) fn password() -> Object {
        string(false)
            .min_length(Some(8))
            .max_length(Some(256))
            .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]*$"))
            .description(Some("Password: 8 to 256 characters, no control characters"))
            .build()
    }

    /// A device Common Name.
    pub(crate) fn common_name() -> Object {
        string(false)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F+#/$]*$"))
            .description(Some("The Common Name its certificate will carry: 1 to 64 characters, no control characters and none of + # / $"))
            .build()
    }

    /// A revoked serial number.
    pub(crate) fn serial_hex() -> Object {
        string(false)
            .pattern(Some("^(?:0[xX])?:*(?:[0-9A-Fa-f]:*){1,64}$"))
            .description(Some("Serial number in hex: 1 to 64 hex digits (any case), ':' separators and a 0x prefix allowed"))
            .build()
    }

    /// A revocation date.
    pub(crate) fn revocation_date() -> Object {
        string(true)
            .description(Some("Revocation date, RFC 3339 (`2024-05-01T10:00:00Z`, up to 9 fraction digits, no leap second) or `YYYY-MM-DD` (default: now)"))
            .pattern(Some(super::crl::REVOCATION_DATE_PATTERN))
            .build()
    }

    /// A file body (DER CRL, ...): `type: string, format: binary`, so a generic client
    /// sends the bytes as they are.
    pub(crate) struct BinaryFile;

    impl utoipa::PartialSchema for BinaryFile {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                .into()
        }
    }

    impl utoipa::ToSchema for BinaryFile {}

    /// PEM text (certificates or a CRL): `type: string`.
    pub(crate) struct PemText;

    impl utoipa::PartialSchema for PemText {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("PEM text (-----BEGIN ...-----)"))
                .into()
        }
    }

    impl utoipa::ToSchema for PemText {}

    /// The multipart form of a CRL upload (documentation only).
    #[derive(utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub(crate) struct CrlForm {
        /// The CRL file, PEM or DER (the form's only field).
        #[schema(format = Binary, value_type = String)]
        file: Vec<u8>,
    }

    /// The reference platform's form of the chain check.
    #[derive(utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub(crate) struct ChainForm {
        /// The chain file, PEM (device certificate first) or DER; at most 10
        /// certificates.
        #[schema(format = Binary, value_type = String)]
        file: Vec<u8>,
        /// The tenant to check the chain against (404 if unknown).
        #[serde(rename = "tenantId")]
        tenant_id: Option<String>,
    }

    /// A boolean as JSON or as the string `true`/`false` (any case), optional.
    pub(crate) fn flex_bool() -> utoipa::openapi::schema::Schema {
        use utoipa::openapi::schema::OneOfBuilder;
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(string(false).pattern(Some("^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$")))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some(
                "true or false, as a JSON boolean or a string (any case)",
            ))
            .build()
            .into()
    }

    /// A certificate pasted as PEM or base64 DER.
    pub(crate) fn certificate_pem() -> Object {
        string(false)
            .min_length(Some(1))
            .pattern(Some(r"[^\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"))
            .description(Some("The CA certificate: PEM with or without newlines, or its base64 DER alone. It must be a CA certificate that passes the upload rules (else 422)"))
            .build()
    }
}
