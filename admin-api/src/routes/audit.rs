//! The audit log: every change, who made it, for which tenant, on which certificate.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{json_status, PageQuery, QueryParams, Statistics};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::AuditEntry;
use crate::Admin;

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Sequence number.
    pub id: i64,
    /// When, RFC 3339.
    pub time: String,
    /// Who: `tenant/user`, `system` or `device`.
    pub actor: String,
    /// The tenant concerned.
    pub tenant: Option<String>,
    /// What happened (`CERTIFICATE_ADDED`, `DEVICE_BLOCKED`, ...).
    pub action: String,
    /// The object: user name, device CN, certificate name.
    pub target: Option<String>,
    /// The certificate fingerprint concerned.
    pub fingerprint: Option<String>,
    /// Details.
    pub detail: Option<String>,
}

impl From<&AuditEntry> for AuditRecord {
    fn from(e: &AuditEntry) -> Self {
        AuditRecord {
            id: e.id,
            time: super::time(e.at),
            actor: e.actor.clone(),
            tenant: e.tenant.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            fingerprint: e.fingerprint.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditList {
    /// The records of this page.
    pub audit_records: Vec<AuditRecord>,
    /// Paging.
    pub statistics: Statistics,
}

/// Filter of the audit log.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's records (management tenant only; others always see their own).
    pub tenant: Option<String>,
}

/// The audit log: the management tenant sees everything, a tenant user its own tenant.
#[utoipa::path(get, path = "/audit", tag = "audit", params(PageQuery, AuditQuery),
    responses(
        (status = 200, body = AuditList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    QueryParams(q): QueryParams<PageQuery>,
    QueryParams(filter): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
    let page = q.page()?;
    let tenant = if who.is_management() {
        filter.tenant
    } else {
        Some(who.tenant.clone())
    };
    let p = admin.store().audit(tenant.as_deref(), page).await?;
    Ok(json_status(
        StatusCode::OK,
        AuditList {
            audit_records: p.items.iter().map(AuditRecord::from).collect(),
            statistics: Statistics::new(page, p.total),
        },
    ))
}
