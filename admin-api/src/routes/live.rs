//! What the node answering sees live ([`crate::live`]): a tenant's devices connected to
//! it now and its recent refusals (at the TLS handshake or at CONNECT). Per node and in memory: behind a load
//! balancer, each node answers for its own connections.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{json_status, readable_tenant, PathParams};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::Admin;

/// A refused connection (repeats with the same reason, fingerprint and source folded).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The first refusal of this run, RFC 3339.
    pub time: String,
    /// The latest refusal of this run, RFC 3339.
    pub last_time: String,
    /// Refusals in this run.
    pub count: u64,
    /// The reason's stable label (`unknown_ca`, `certificate_expired`,
    /// `certificate_revoked`, `chain_too_long`, `anchor_disabled`, ...).
    pub reason: String,
    /// The broker's reason in words, as its log line says it.
    pub detail: String,
    /// The device certificate's subject.
    pub subject: String,
    /// The device certificate's SHA-1 fingerprint.
    pub fingerprint: String,
    /// The connection's source address.
    pub source: String,
}

/// A tenant's recent refusals, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefusalList {
    /// At most the last 100 runs of refusals seen by this node.
    pub refusals: Vec<Refusal>,
}

/// A device connected to this node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The device's Common Name.
    pub common_name: String,
    /// When its session started, RFC 3339.
    pub since: String,
    /// The connection's source address.
    pub source: String,
    /// Sessions of this Common Name open (more than one only during a take-over).
    pub sessions: u32,
}

/// The devices of a tenant connected to this node now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionList {
    /// By Common Name.
    pub connections: Vec<Connection>,
}

/// A tenant's recent refusals (TLS handshake or CONNECT) on this node: time, reason, subject,
/// fingerprint and source address.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/refusals", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = RefusalList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn refusals(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let refusals = admin
        .live()
        .refusals(&tenant)
        .into_iter()
        .map(|r| Refusal {
            time: super::time(r.first),
            last_time: super::time(r.last),
            count: r.count,
            reason: r.refusal.reason,
            detail: r.refusal.detail,
            subject: r.refusal.subject,
            fingerprint: r.refusal.fingerprint,
            source: r.refusal.source.to_string(),
        })
        .collect();
    Ok(json_status(StatusCode::OK, RefusalList { refusals }))
}

/// The devices of a tenant connected to this node now.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/connections", tag = "devices",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = ConnectionList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn connections(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let connections = admin
        .live()
        .connections(&tenant)
        .into_iter()
        .map(|c| Connection {
            common_name: c.common_name,
            since: super::time(c.since),
            source: c.source.to_string(),
            sessions: c.sessions,
        })
        .collect();
    Ok(json_status(StatusCode::OK, ConnectionList { connections }))
}
