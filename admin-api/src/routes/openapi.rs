//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, chain, crl, devices, pop, system, tenants, trusted_certificates, users};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Broker admin API",
        description = "Tenants, users, trusted certificates, revocation, devices and the server certificate of the MQTT front-end. Authenticate with HTTP Basic as tenantId/user:password.",
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
        system::put, system::get,
        audit::list,
    ),
    modifiers(&DocFixes),
    tags(
        (name = "tenants", description = "Tenants and their device policy"),
        (name = "users", description = "Users of a tenant"),
        (name = "trusted certificates", description = "CA certificates devices chain to"),
        (name = "revocation", description = "Revoked serials and CRLs"),
        (name = "devices", description = "The device registry"),
        (name = "system", description = "The server certificate"),
        (name = "audit", description = "The audit log"),
    )
)]
pub struct ApiDoc;

/// Adds the Basic security scheme, gives every operation a unique id derived from its
/// method and path (handler names repeat across modules), documents 507 (the store is
/// full) on every operation that changes something, and 503 (the password-check queue is
/// full) on every authenticated operation.
struct DocFixes;

/// The one POST that changes nothing.
const READ_ONLY_POST: &str = "/tenant/trusted-certificates/verify-cert-chain";

fn insufficient_storage() -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description("The store is full (disk or configured size limit); nothing was changed")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn login_busy() -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description("Every password-check thread is busy and the queue is full: retry after Retry-After seconds")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

impl Modify for DocFixes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
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
                    if op.responses.responses.contains_key("401") {
                        op.responses
                            .responses
                            .entry("503".into())
                            .or_insert_with(|| login_busy().into());
                    }
                    if method != "get" && path != READ_ONLY_POST {
                        op.responses
                            .responses
                            .entry("507".into())
                            .or_insert_with(|| insufficient_storage().into());
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
