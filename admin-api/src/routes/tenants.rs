//! Tenants (management admin) and their device policy settings.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    display_name, json_status, password, readable_tenant, tenant_id, user_name, writable_tenant,
    JsonBody, PageQuery, PathParams, QueryParams, Statistics,
};
use crate::auth::{Principal, MANAGEMENT_TENANT};
use crate::error::{ApiError, ErrorBody};
use crate::store::{
    AuditEntry, ClientIdPolicy, Conflict, Role, StoreError, TenantRecord, TenantSettings,
    UserRecord,
};
use crate::Admin;

/// A tenant's device policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Maximum chain length including device and trusted certificate (2 to 10).
    #[schema(minimum = 2, maximum = 10)]
    pub max_chain_length: u8,
    /// Enforce the tenant's manual revocation list and uploaded CRLs.
    pub crl_offline_enabled: bool,
    /// Fetch the CRL distribution points named by device certificates.
    pub crl_online_enabled: bool,
    /// With online checking, admit a device whose revocation status a distribution
    /// point cannot give (unreachable, `ldap:`, refused by the egress policy, stale);
    /// false (the default) refuses it.
    pub crl_online_fail_open: bool,
    /// `strict` refuses a ClientId other than the certificate's CN; `override`
    /// replaces it with the CN.
    #[schema(value_type = ClientIdPolicyName)]
    pub client_id_policy: String,
    /// Maximum devices connected at once (0: unlimited).
    #[schema(maximum = 100000000)]
    pub max_devices: u32,
    /// Maximum trusted certificates (0: unlimited).
    #[schema(maximum = 100000000)]
    pub max_anchors: u32,
    /// Maximum PUBLISH packets per second from all devices together (0: unlimited).
    #[schema(maximum = 100000000)]
    pub max_publish_rate: u32,
}

impl From<&TenantSettings> for Settings {
    fn from(s: &TenantSettings) -> Self {
        Settings {
            max_chain_length: s.max_chain_length,
            crl_offline_enabled: s.crl_offline_enabled,
            crl_online_enabled: s.crl_online_enabled,
            crl_online_fail_open: s.crl_online_fail_open,
            client_id_policy: s.client_id_policy.as_str().to_string(),
            max_devices: s.max_devices,
            max_anchors: s.max_anchors,
            max_publish_rate: s.max_publish_rate,
        }
    }
}

/// The ClientId policy: `strict` or `override`.
#[derive(ToSchema)]
#[schema(as = ClientIdPolicyName)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ClientIdPolicyName {
    /// Refuse a ClientId other than the certificate's CN.
    Strict,
    /// Replace the ClientId with the CN.
    Override,
}

/// A change of settings: absent (or `null`) fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    /// Maximum chain length (2 to 10).
    #[serde(default, deserialize_with = "super::json_integer")]
    #[schema(minimum = 2, maximum = 10)]
    pub max_chain_length: Option<i64>,
    /// Enforce the manual list and uploaded CRLs.
    pub crl_offline_enabled: Option<bool>,
    /// Fetch CRL distribution points.
    pub crl_online_enabled: Option<bool>,
    /// Admit devices whose online revocation status is unknown (default false).
    pub crl_online_fail_open: Option<bool>,
    /// `strict` or `override`.
    #[schema(value_type = Option<ClientIdPolicyName>)]
    pub client_id_policy: Option<String>,
    /// Maximum devices connected at once (0: unlimited).
    #[serde(default, deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 100000000)]
    pub max_devices: Option<i64>,
    /// Maximum trusted certificates (0: unlimited).
    #[serde(default, deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 100000000)]
    pub max_anchors: Option<i64>,
    /// Maximum PUBLISH packets per second, all devices together (0: unlimited).
    #[serde(default, deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 100000000)]
    pub max_publish_rate: Option<i64>,
}

impl SettingsPatch {
    /// The names of the limits this patch would change (a value different from the
    /// current one). Limits are the management tenant's to set, not the tenant's own.
    fn changed_limits(&self, s: &TenantSettings) -> Vec<&'static str> {
        [
            ("maxDevices", self.max_devices, s.max_devices),
            ("maxAnchors", self.max_anchors, s.max_anchors),
            ("maxPublishRate", self.max_publish_rate, s.max_publish_rate),
        ]
        .into_iter()
        .filter(|(_, new, current)| new.is_some_and(|v| v != i64::from(*current)))
        .map(|(name, _, _)| name)
        .collect()
    }

    fn apply(&self, s: &mut TenantSettings) -> Result<(), ApiError> {
        if let Some(n) = self.max_chain_length {
            let max = certs::trust::MAX_MAX_CHAIN_LENGTH;
            s.max_chain_length = u8::try_from(n)
                .ok()
                .filter(|n| (2..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::unprocessable(format!("maxChainLength must be between 2 and {max}"))
                })?;
        }
        if let Some(b) = self.crl_offline_enabled {
            s.crl_offline_enabled = b;
        }
        if let Some(b) = self.crl_online_enabled {
            s.crl_online_enabled = b;
        }
        if let Some(b) = self.crl_online_fail_open {
            s.crl_online_fail_open = b;
        }
        if let Some(p) = &self.client_id_policy {
            s.client_id_policy = ClientIdPolicy::parse(p).ok_or_else(|| {
                ApiError::unprocessable("clientIdPolicy must be strict or override")
            })?;
        }
        let limit = |name: &str, v: i64| -> Result<u32, ApiError> {
            u32::try_from(v)
                .ok()
                .filter(|v| *v <= 100_000_000)
                .ok_or_else(|| {
                    ApiError::unprocessable(format!(
                        "{name} must be between 0 (unlimited) and 100000000"
                    ))
                })
        };
        if let Some(v) = self.max_devices {
            s.max_devices = limit("maxDevices", v)?;
        }
        if let Some(v) = self.max_anchors {
            s.max_anchors = limit("maxAnchors", v)?;
        }
        if let Some(v) = self.max_publish_rate {
            s.max_publish_rate = limit("maxPublishRate", v)?;
        }
        Ok(())
    }
}

/// A tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Tenant id.
    pub id: String,
    /// Company name.
    pub company: String,
    /// Domain.
    pub domain: Option<String>,
    /// Always `ACTIVE`.
    pub status: String,
    /// Creation time, RFC 3339.
    pub creation_time: String,
    /// Device policy.
    pub settings: Settings,
}

impl From<&TenantRecord> for Tenant {
    fn from(t: &TenantRecord) -> Self {
        Tenant {
            id: t.id.clone(),
            company: t.company.clone(),
            domain: t.domain.clone(),
            status: "ACTIVE".into(),
            creation_time: super::time(t.created_at),
            settings: Settings::from(&t.settings),
        }
    }
}

/// A new tenant and its first admin.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTenant {
    /// Tenant id; generated when absent.
    #[schema(schema_with = super::schema::tenant_id)]
    pub id: Option<String>,
    /// Company name.
    #[schema(schema_with = super::schema::company)]
    pub company: String,
    /// Domain.
    #[schema(schema_with = super::schema::domain)]
    pub domain: Option<String>,
    /// The first admin's user name.
    #[schema(schema_with = super::schema::user_name)]
    pub admin_name: String,
    /// The first admin's password (8 to 256 characters).
    #[schema(schema_with = super::schema::password)]
    pub admin_pass: String,
    /// Initial settings.
    pub settings: Option<SettingsPatch>,
}

/// A change of a tenant: absent fields stay as they are. Unknown fields are refused
/// (a top-level `maxChainLength` silently ignored would look like success).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantUpdate {
    /// Company name.
    #[schema(schema_with = super::schema::company_opt)]
    pub company: Option<String>,
    /// Domain.
    #[schema(schema_with = super::schema::domain)]
    pub domain: Option<String>,
    /// Settings.
    pub settings: Option<SettingsPatch>,
}

/// A page of tenants.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    /// The tenants of this page.
    pub tenants: Vec<Tenant>,
    /// Paging.
    pub statistics: Statistics,
}

/// Lists tenants.
#[utoipa::path(get, path = "/tenant/tenants", tag = "tenants", params(PageQuery),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    if !who.is_management() {
        return Err(ApiError::Forbidden(
            "Only the management tenant can list tenants".into(),
        ));
    }
    let page = q.page()?;
    let p = admin.store().tenants(page).await?;
    Ok(json_status(
        StatusCode::OK,
        TenantList {
            tenants: p.items.iter().map(Tenant::from).collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}

/// Creates a tenant and its first ROLE_TENANT_ADMIN user.
#[utoipa::path(post, path = "/tenant/tenants", tag = "tenants", request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn create(
    State(admin): State<Admin>,
    who: Principal,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<Response, ApiError> {
    who.require_management_admin("create tenants")?;
    if let Some(id) = &body.id {
        tenant_id(id)?;
    }
    let company = display_name("company", &body.company, 256)?;
    let domain = body
        .domain
        .as_deref()
        .map(|d| display_name("domain", d, 253))
        .transpose()?;
    user_name(&body.admin_name)?;
    password("adminPass", &body.admin_pass)?;
    let mut settings = TenantSettings::default();
    if let Some(patch) = &body.settings {
        patch.apply(&mut settings)?;
    }
    let hash = admin.hash_password(body.admin_pass.clone()).await?;
    let now = admin.now();
    // A generated id may collide; try a few.
    let attempts = if body.id.is_some() { 1 } else { 5 };
    for _ in 0..attempts {
        let id = body.id.clone().unwrap_or_else(|| {
            format!(
                "t{}",
                rand::thread_rng().gen_range(10_000_000u32..100_000_000)
            )
        });
        let tenant = TenantRecord {
            id: id.clone(),
            company: company.clone(),
            domain: domain.clone(),
            created_at: now,
            settings: settings.clone(),
        };
        let user = UserRecord {
            tenant: id.clone(),
            user_name: body.admin_name.clone(),
            password_hash: hash.clone(),
            roles: vec![Role::TenantAdmin],
            created_at: now,
        };
        let audit = AuditEntry::new(&who.actor(), Some(&id), "TENANT_CREATED")
            .target(&id)
            .detail(format!(
                "company {company}, first admin {}",
                body.admin_name
            ));
        match admin
            .store()
            .create_tenant(tenant.clone(), user, audit)
            .await
        {
            Ok(()) => {
                admin.publish().await?;
                return Ok(json_status(StatusCode::CREATED, Tenant::from(&tenant)));
            }
            Err(StoreError::Conflict(Conflict::TenantExists(_))) if body.id.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal(
        "could not generate an unused tenant id".into(),
    ))
}

/// One tenant (the management tenant sees all; a tenant user sees its own).
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = Tenant),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    let t = readable_tenant(&admin, &who, &tenant).await?;
    Ok(json_status(StatusCode::OK, Tenant::from(&t)))
}

/// Changes a tenant's company, domain or settings.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = TenantUpdate,
    responses(
        (status = 200, body = Tenant),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn update(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<TenantUpdate>,
) -> Result<Response, ApiError> {
    let mut t = readable_tenant(&admin, &who, &tenant).await?;
    who.require_management_admin("change tenants")?;
    if let Some(c) = &body.company {
        t.company = display_name("company", c, 256)?;
    }
    if let Some(d) = &body.domain {
        t.domain = Some(display_name("domain", d, 253)?);
    }
    if let Some(patch) = &body.settings {
        patch.apply(&mut t.settings)?;
    }
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "TENANT_UPDATED")
        .target(&tenant)
        .detail(settings_detail(&t.settings));
    admin.store().update_tenant(t.clone(), audit).await?;
    admin.publish().await?;
    Ok(json_status(StatusCode::OK, Tenant::from(&t)))
}

/// Deletes a tenant with its users, trusted certificates, CRLs and devices. Its audit
/// records stay for the management admin under `{id}.deleted-{n}`, so a tenant created
/// later with the same id starts with nothing of the old one.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn delete(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    who.require_management_admin("delete tenants")?;
    if tenant == MANAGEMENT_TENANT {
        return Err(ApiError::Conflict(
            "The management tenant cannot be deleted".into(),
        ));
    }
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "TENANT_DELETED").target(&tenant);
    admin.store().delete_tenant(&tenant, audit).await?;
    admin.forget_tenant(&tenant);
    admin.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A tenant's device policy.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/settings", tag = "tenants",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = Settings),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get_settings(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    let t = readable_tenant(&admin, &who, &tenant).await?;
    Ok(json_status(StatusCode::OK, Settings::from(&t.settings)))
}

/// Changes a tenant's device policy (the tenant's admin or the management admin). The
/// limits (maxDevices, maxAnchors, maxPublishRate) are the management admin's alone: a
/// tenant admin sending one with another value than the current one gets 403.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/settings", tag = "tenants",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = SettingsPatch,
    responses(
        (status = 200, body = Settings),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an admin of the tenant, or a tenant admin changing maxDevices, maxAnchors or maxPublishRate (the management admin's alone)", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn put_settings(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(patch): JsonBody<SettingsPatch>,
) -> Result<Response, ApiError> {
    let mut t = writable_tenant(&admin, &who, &tenant).await?;
    if !who.is_management_admin() {
        let changed = patch.changed_limits(&t.settings);
        if !changed.is_empty() {
            return Err(ApiError::Forbidden(limits_forbidden(&tenant, &changed)));
        }
    }
    patch.apply(&mut t.settings)?;
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "TENANT_SETTINGS_UPDATED")
        .target(&tenant)
        .detail(settings_detail(&t.settings));
    admin.store().update_tenant(t.clone(), audit).await?;
    admin.publish().await?;
    Ok(json_status(StatusCode::OK, Settings::from(&t.settings)))
}

/// The 403 for a tenant admin who tries to change a limit.
pub fn limits_forbidden(tenant: &str, changed: &[&str]) -> String {
    format!(
        "Only the management administrator can change the limits maxDevices, maxAnchors and maxPublishRate (PUT /tenant/tenants/{tenant}/settings as a management admin); this request changes {}. Leave them out (or unchanged) to change the tenant's own settings",
        changed.join(", ")
    )
}

fn settings_detail(s: &TenantSettings) -> String {
    format!(
        "maxChainLength={}, crlOfflineEnabled={}, crlOnlineEnabled={}, crlOnlineFailOpen={}, clientIdPolicy={}, maxDevices={}, maxAnchors={}, maxPublishRate={}",
        s.max_chain_length,
        s.crl_offline_enabled,
        s.crl_online_enabled,
        s.crl_online_fail_open,
        s.client_id_policy.as_str(),
        s.max_devices,
        s.max_anchors,
        s.max_publish_rate
    )
}
