//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::response::IntoResponse;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use super::{
    acl, audit, chain, crl, devices, enrollment, live, pop, system, tenant_ca, tenants,
    trusted_certificates, users,
};
use crate::console;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Broker admin API",
        description = "Tenants, users, trusted certificates, revocation, devices and the server certificate of the MQTT front-end. Authenticate with HTTP Basic as tenantId/user:password. Every error is a JSON ErrorBody whose info is always an object ({} when there are no details). A query parameter that an operation does not declare is refused with 400 (\"Unknown query parameter 'NAME': ...\"). Failed logins are limited per user name and source address (429 with Retry-After), and a full password-check queue answers 503 with Retry-After.",
    ),
    paths(
        tenants::list, tenants::create, tenants::get, tenants::update, tenants::delete,
        tenants::get_settings, tenants::put_settings,
        users::list, users::create, users::get, users::delete,
        trusted_certificates::list, trusted_certificates::create, trusted_certificates::bulk,
        trusted_certificates::get, trusted_certificates::update, trusted_certificates::delete,
        pop::verification_code, pop::verify, pop::confirm,
        crl::add_serials, crl::get_crl, crl::signer_certificate, crl::list, crl::upload,
        chain::verify,
        devices::list, devices::create, devices::get, devices::update, devices::block,
        acl::list, acl::get, acl::put, acl::delete, acl::assignments,
        acl::assign_device, acl::unassign_device, acl::assign_anchor, acl::unassign_anchor,
        acl::check,
        tenant_ca::list, tenant_ca::create, tenant_ca::rotate,
        enrollment::create, enrollment::bulk, enrollment::list, enrollment::delete,
        enrollment::issued, enrollment::revoke, enrollment::expiring,
        system::put, system::get,
        audit::list,
        live::refusals, live::connections,
        console::login, console::logout, console::current,
    ),
    modifiers(&DocFixes),
    tags(
        (name = "tenants", description = "Tenants and their device policy"),
        (name = "users", description = "Users of a tenant"),
        (name = "trusted certificates", description = "CA certificates devices chain to"),
        (name = "revocation", description = "Revoked serials and CRLs"),
        (name = "devices", description = "The device registry"),
        (name = "topic authorization", description = "Per-tenant topic rule sets for devices, their assignment, and a dry run"),
        (name = "enrollment", description = "The tenant's certificate authority, one-time enrollment secrets, issued device certificates and expiring certificates (EST, RFC 7030, on its own listener)"),
        (name = "system", description = "The server certificate"),
        (name = "audit", description = "The audit log"),
        (name = "console", description = "The web console's session: log in with a user's password for a cookie session (HttpOnly; Secure; SameSite=Strict). A request authenticated by the cookie instead of Basic credentials is allowed exactly what the user may do; when it changes something (any method but GET, HEAD, OPTIONS) it must carry the session's CSRF token in X-CSRF-Token (403 csrf_token_missing or csrf_token_invalid otherwise)"),
    )
)]
pub struct ApiDoc;

/// Adds the Basic security scheme, gives every operation a unique id derived from its
/// method and path (handler names repeat across modules), and documents the statuses
/// every operation can meet: 400 (malformed path or an unknown query parameter), 500
/// (a bug or a storage failure), 507 (the store is full) on every operation that changes
/// something, and 429 and 503 (login throttling, password-check queue full) on every
/// authenticated operation.
struct DocFixes;

/// The one POST that changes nothing.
const READ_ONLY_POST: &str = "/tenant/trusted-certificates/verify-cert-chain";

/// An error response with the ErrorBody schema.
fn error_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// The same with a `Retry-After` header (seconds).
fn retry_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let mut r = error_response(description);
    r.headers.insert(
        "Retry-After".into(),
        HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .description(Some("Seconds to wait before retrying"))
            .build(),
    );
    r
}

const BAD_REQUEST: &str = "Malformed request: a path segment that is not UTF-8, a query parameter this operation does not declare (the message names it) or of the wrong type, or a malformed body";
const INTERNAL: &str = "A bug or a storage failure; the detail is in the server log only";
const INSUFFICIENT_STORAGE: &str =
    "The store is full (disk or configured size limit); nothing was changed";
const TOO_MANY_REQUESTS: &str = "Too many failed logins for this user name from this source address, or from this address (locked), or for this user name (slowed down): retry after Retry-After seconds";
const FORBIDDEN_OR_CSRF: &str = "Not allowed: the caller's role does not allow this, or a request authenticated by a console session came without its CSRF token (X-CSRF-Token) or with a wrong one";
const LOGIN_BUSY: &str =
    "Every password-check thread is busy and the queue is full: retry after Retry-After seconds";

impl Modify for DocFixes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "console",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                console::session::COOKIE_NAME,
                "A console session (POST /console/api/login); changes also need X-CSRF-Token",
            ))),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let slug: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let ops = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    let id = format!("{method}{slug}");
                    let id = id.trim_end_matches('_').replace("__", "_");
                    op.operation_id = Some(id);
                    // A device's Common Name in a path has the rules of a Common Name
                    // in a body (the handlers check both the same way).
                    for p in op.parameters.iter_mut().flatten() {
                        if p.name == "common_name"
                            && p.parameter_in == utoipa::openapi::path::ParameterIn::Path
                        {
                            p.schema = Some(super::schema::common_name().into());
                        }
                    }
                    let responses = &mut op.responses.responses;
                    responses
                        .entry("400".into())
                        .or_insert_with(|| error_response(BAD_REQUEST).into());
                    responses
                        .entry("500".into())
                        .or_insert_with(|| error_response(INTERNAL).into());
                    if responses.contains_key("401") {
                        // Documented with its header (replacing a bare 429).
                        responses.insert("429".into(), retry_response(TOO_MANY_REQUESTS).into());
                        responses.insert("503".into(), retry_response(LOGIN_BUSY).into());
                    }
                    // Basic-authenticated operations also take a console session.
                    if let Some(security) = op.security.as_mut() {
                        let basic = SecurityRequirement::new("basic", Vec::<String>::new());
                        let cookie = SecurityRequirement::new("console", Vec::<String>::new());
                        if security.contains(&basic) && !security.contains(&cookie) {
                            security.push(cookie);
                        }
                    }
                    if method != "get" && responses.contains_key("401") {
                        responses
                            .entry("403".into())
                            .or_insert_with(|| error_response(FORBIDDEN_OR_CSRF).into());
                    }
                    if method != "get" && path != READ_ONLY_POST {
                        responses
                            .entry("507".into())
                            .or_insert_with(|| error_response(INSUFFICIENT_STORAGE).into());
                    }
                }
            }
        }
    }
}

/// Serves the OpenAPI document (no authentication).
pub async fn serve() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
