//! Users of a tenant. Passwords are stored as argon2id hashes and never returned.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    json_status, password, readable_tenant, user_name, writable_tenant, JsonBody, PathParams,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AuditEntry, Role, UserRecord};
use crate::Admin;

/// A user (without its password).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The tenant.
    pub tenant: String,
    /// The user name (log in as `tenant/userName`).
    pub user_name: String,
    /// Roles: `ROLE_TENANT_ADMIN` (manage the tenant) or `ROLE_TENANT_READ`.
    #[schema(value_type = Vec<RoleName>)]
    pub roles: Vec<String>,
    /// Creation time, RFC 3339.
    pub creation_time: String,
}

impl From<&UserRecord> for User {
    fn from(u: &UserRecord) -> Self {
        User {
            tenant: u.tenant.clone(),
            user_name: u.user_name.clone(),
            roles: u.roles.iter().map(|r| r.as_str().to_string()).collect(),
            creation_time: super::time(u.created_at),
        }
    }
}

/// A new user.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    /// User name: letters, digits, `.`, `_`, `-`, `@`, `+`.
    #[schema(schema_with = super::schema::user_name)]
    pub user_name: String,
    /// Password, 8 to 256 characters.
    #[schema(schema_with = super::schema::password)]
    pub password: String,
    /// Roles (at least one).
    #[schema(value_type = Vec<RoleName>, min_items = 1)]
    pub roles: Vec<String>,
}

/// A role.
#[derive(ToSchema)]
#[allow(dead_code, non_camel_case_types, clippy::upper_case_acronyms)]
pub enum RoleName {
    /// Manage the tenant.
    ROLE_TENANT_ADMIN,
    /// Read the tenant.
    ROLE_TENANT_READ,
}

/// The users of a tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// The users.
    pub users: Vec<User>,
}

/// Lists a tenant's users.
#[utoipa::path(get, path = "/user/{tenant_id}/users", tag = "users",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = UserList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let users = admin.store().users(&tenant).await?;
    Ok(json_status(
        StatusCode::OK,
        UserList {
            users: users.iter().map(User::from).collect(),
        },
    ))
}

/// Creates a user.
#[utoipa::path(post, path = "/user/{tenant_id}/users", tag = "users",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NewUser,
    responses(
        (status = 201, body = User),
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
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    user_name(&body.user_name)?;
    password("password", &body.password)?;
    if body.roles.is_empty() {
        return Err(ApiError::unprocessable(
            "roles must name at least one role (ROLE_TENANT_ADMIN or ROLE_TENANT_READ)",
        ));
    }
    let mut roles = Vec::new();
    for r in &body.roles {
        let role = Role::parse(r).ok_or_else(|| {
            ApiError::unprocessable(format!(
                "Unknown role {r}: expected ROLE_TENANT_ADMIN or ROLE_TENANT_READ"
            ))
        })?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let user = UserRecord {
        tenant: tenant.clone(),
        user_name: body.user_name.clone(),
        password_hash: admin.hash_password(body.password.clone()).await?,
        roles,
        created_at: admin.now(),
    };
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "USER_CREATED")
        .target(&body.user_name)
        .detail(body.roles.join(","));
    admin.store().create_user(user.clone(), audit).await?;
    Ok(json_status(StatusCode::CREATED, User::from(&user)))
}

/// One user.
#[utoipa::path(get, path = "/user/{tenant_id}/users/{user_name}", tag = "users",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("user_name" = String, Path, description = "User name")),
    responses(
        (status = 200, body = User),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let user = admin
        .store()
        .user(&tenant, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("User {name} not found")))?;
    Ok(json_status(StatusCode::OK, User::from(&user)))
}

/// Deletes a user (not yourself).
#[utoipa::path(delete, path = "/user/{tenant_id}/users/{user_name}", tag = "users",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("user_name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn delete(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    if who.tenant == tenant && who.user == name {
        return Err(ApiError::Conflict("You cannot delete your own user".into()));
    }
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "USER_DELETED").target(&name);
    admin.store().delete_user(&tenant, &name, audit).await?;
    admin.end_console_sessions(&tenant, &name);
    Ok(StatusCode::NO_CONTENT)
}
