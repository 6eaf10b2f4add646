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
        pop::verification_code, pop::verify,
        crl::add_serials, crl::get_crl, crl::signer_certificate, crl::list, crl::upload,
        chain::verify,
        devices::list, devices::create, devices::get, devices::update, devices::block,
        system::put, system::get,
        audit::list,
    ),
    modifiers(&BasicAuth),
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

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// Serves the OpenAPI document (no authentication).
pub async fn serve() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
