//! Devices of a tenant, known by their certificate's Common Name: listing, pre-registering
//! (needed when a trusted certificate does not auto-register) and blocking. Blocking
//! publishes a new trust snapshot, so the front-end closes the device's session.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    json_status, readable_tenant, writable_tenant, JsonBody, PageQuery, PathParams, QueryParams,
    Statistics,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AuditEntry, DeviceRecord, DeviceStatus};
use crate::Admin;

/// A device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// The certificate's Common Name (the MQTT ClientId).
    pub common_name: String,
    /// `REGISTERED` or `BLOCKED`.
    pub status: String,
    /// The trusted certificate that verified its first connection.
    pub anchor_fingerprint: Option<String>,
    /// First connection, RFC 3339 (absent: pre-registered, never connected).
    pub first_connection: Option<String>,
    /// Last connection seen, RFC 3339.
    pub last_connection: Option<String>,
    /// When the record was created, RFC 3339.
    pub creation_time: String,
}

impl From<&DeviceRecord> for Device {
    fn from(d: &DeviceRecord) -> Self {
        Device {
            common_name: d.common_name.clone(),
            status: d.status.as_str().to_string(),
            anchor_fingerprint: d.anchor_fingerprint.clone(),
            first_connection: d.first_connection.map(super::time),
            last_connection: d.last_connection.map(super::time),
            creation_time: super::time(d.created_at),
        }
    }
}

/// A page of devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceList {
    /// The devices of this page, by Common Name.
    pub devices: Vec<Device>,
    /// Paging.
    pub statistics: Statistics,
}

/// A device to pre-register.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDevice {
    /// The Common Name its certificate will carry.
    #[schema(schema_with = super::schema::common_name)]
    pub common_name: String,
}

/// A change of a device's status.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DeviceUpdate {
    /// `REGISTERED` (unblock) or `BLOCKED`, any case.
    #[schema(
        pattern = "^(?:[Rr][Ee][Gg][Ii][Ss][Tt][Ee][Rr][Ee][Dd]|[Bb][Ll][Oo][Cc][Kk][Ee][Dd])$"
    )]
    pub status: String,
}

/// Validates a Common Name as the front-end will see it.
pub(crate) fn common_name(cn: &str) -> Result<(), ApiError> {
    let n = cn.chars().count();
    let ok = (1..=64).contains(&n)
        && !cn
            .chars()
            .any(|c| c.is_control() || certs::trust::FORBIDDEN_CN_CHARS.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "commonName must be 1 to 64 characters without control characters or any of + # / $",
        ))
    }
}

/// Lists a tenant's devices.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/devices", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id"), PageQuery),
    responses(
        (status = 200, body = DeviceList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let page = q.page()?;
    let p = admin.store().devices(&tenant, page).await?;
    Ok(json_status(
        StatusCode::OK,
        DeviceList {
            devices: p.items.iter().map(Device::from).collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}

/// Pre-registers a device Common Name.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/devices", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewDevice,
    responses(
        (status = 201, body = Device),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn create(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<NewDevice>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    common_name(&body.common_name)?;
    let record = DeviceRecord {
        tenant: tenant.clone(),
        common_name: body.common_name.clone(),
        status: DeviceStatus::Registered,
        anchor_fingerprint: None,
        first_connection: None,
        last_connection: None,
        created_at: admin.now(),
    };
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "DEVICE_PREREGISTERED")
        .target(&body.common_name);
    admin
        .store()
        .preregister_device(record.clone(), audit)
        .await?;
    Ok(json_status(StatusCode::CREATED, Device::from(&record)))
}

async fn find(admin: &Admin, tenant: &str, cn: &str) -> Result<DeviceRecord, ApiError> {
    admin
        .store()
        .device(tenant, cn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Device {cn} not found")))
}

/// One device.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/devices/{common_name}", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "Common Name")),
    responses(
        (status = 200, body = Device),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let d = find(&admin, &tenant, &cn).await?;
    Ok(json_status(StatusCode::OK, Device::from(&d)))
}

async fn set_status(
    admin: &Admin,
    who: &Principal,
    tenant: &str,
    cn: &str,
    status: DeviceStatus,
) -> Result<DeviceRecord, ApiError> {
    common_name(cn)?;
    let action = match status {
        DeviceStatus::Blocked => "DEVICE_BLOCKED",
        DeviceStatus::Registered => "DEVICE_UNBLOCKED",
    };
    let audit = AuditEntry::new(&who.actor(), Some(tenant), action).target(cn);
    let d = admin
        .store()
        .set_device_status(tenant, cn, status, admin.now(), audit)
        .await?;
    admin.publish().await?;
    Ok(d)
}

/// Blocks or unblocks a device.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/devices/{common_name}", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "Common Name")),
    request_body = DeviceUpdate,
    responses(
        (status = 200, body = Device),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn update(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<DeviceUpdate>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    let status = DeviceStatus::parse(&body.status.to_ascii_uppercase())
        .ok_or_else(|| ApiError::unprocessable("status must be REGISTERED or BLOCKED"))?;
    find(&admin, &tenant, &cn).await?;
    let d = set_status(&admin, &who, &tenant, &cn, status).await?;
    Ok(json_status(StatusCode::OK, Device::from(&d)))
}

/// Blocks a device Common Name (also one not seen yet); the front-end closes its
/// session and refuses it from now on.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/devices/{common_name}", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "Common Name")),
    responses(
        (status = 204, description = "Blocked"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn block(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    set_status(&admin, &who, &tenant, &cn, DeviceStatus::Blocked).await?;
    Ok(StatusCode::NO_CONTENT)
}
