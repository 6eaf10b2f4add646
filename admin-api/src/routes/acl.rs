//! Topic authorization of a tenant's devices: named rule sets (see [`crate::acl`]),
//! their assignment to trusted certificates and devices, and a dry run ("may device X
//! publish to topic T"). Every change is audited in its transaction and publishes a new
//! trust snapshot, which live sessions re-read.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::trusted_certificates::normalize_fingerprint;
use super::{json_status, readable_tenant, writable_tenant, JsonBody, PathParams};
use crate::acl::{self, Applies, DecidedBy, Rule, RuleSet};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{AclRuleSetRecord, AclTarget, AuditEntry};
use crate::Admin;

/// A stored rule set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedRuleSet {
    /// Its name (`default` applies to every device without an assignment).
    pub name: String,
    /// The rules, first match first.
    pub rules: Vec<Rule>,
    /// For what no rule matches: `allow` or `deny`.
    pub default_access: acl::Access,
    /// Last change, RFC 3339.
    pub last_updated: String,
}

/// A tenant's rule sets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleSetList {
    /// By name.
    pub rule_sets: Vec<NamedRuleSet>,
}

/// A rule set assigned to a trusted certificate or a device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// `trustedCertificate` or `device`.
    pub target: String,
    /// The certificate's fingerprint or the device's Common Name.
    pub key: String,
    /// The rule set's name.
    pub rule_set: String,
}

/// A tenant's assignments.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentList {
    /// Trusted certificates first, then devices.
    pub assignments: Vec<Assignment>,
}

/// The rule set to assign.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignmentBody {
    /// An existing rule set's name.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub rule_set: String,
}

/// A dry run: would this device be allowed?
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// The device certificate's Common Name.
    #[schema(schema_with = super::schema::common_name)]
    pub common_name: String,
    /// The trusted certificate that verifies it (for rule sets assigned to one).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `publish` or `subscribe`.
    pub action: CheckAction,
    /// A topic name (publish) or a topic filter (subscribe), as the device sends it.
    pub topic: String,
    /// QoS of the publish or subscription (default 0).
    #[serde(default, deserialize_with = "super::json_integer")]
    #[schema(minimum = 0, maximum = 2)]
    pub qos: Option<i64>,
    /// A retained publish (default false).
    #[serde(default)]
    pub retain: bool,
}

/// What the dry run checks.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckAction {
    /// PUBLISH (or a will).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
}

/// The decision of a dry run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// Allowed?
    pub allowed: bool,
    /// The QoS that would be granted (subscribe) or accepted (publish), when allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_qos: Option<u8>,
    /// Why not, when refused: `denied`, `qos`, `retain` or `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rule set that applies (absent: the tenant has no rule sets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<String>,
    /// `rule`, `defaultAccess`, `noRules` or `missingRuleSet`.
    pub decided_by: String,
    /// Index of the deciding rule (from 0), when a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_index: Option<usize>,
    /// The deciding rule, when a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
}

fn named(r: &AclRuleSetRecord) -> Result<NamedRuleSet, ApiError> {
    let set: RuleSet = serde_json::from_str(&r.body)
        .map_err(|e| ApiError::Internal(format!("stored rule set {} unreadable: {e}", r.name)))?;
    Ok(NamedRuleSet {
        name: r.name.clone(),
        rules: set.rules,
        default_access: set.default_access,
        last_updated: super::time(r.updated_at),
    })
}

fn rule_set_name(name: &str) -> Result<(), ApiError> {
    if acl::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "a rule set name is 1 to 64 of A-Z a-z 0-9 _ -",
        ))
    }
}

/// Lists a tenant's topic rule sets.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/acl/rule-sets", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = RuleSetList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn list(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let sets = admin.store().acl_rule_sets(&tenant).await?;
    let rule_sets = sets.iter().map(named).collect::<Result<_, _>>()?;
    Ok(json_status(StatusCode::OK, RuleSetList { rule_sets }))
}

/// One rule set.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/acl/rule-sets/{name}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("name" = String, Path, description = "Rule set name: 1 to 64 of A-Z a-z 0-9 _ -", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, body = NamedRuleSet),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn get(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let sets = admin.store().acl_rule_sets(&tenant).await?;
    let r = sets
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("Rule set {name} not found")))?;
    Ok(json_status(StatusCode::OK, named(r)?))
}

/// Creates or replaces a rule set. Validation errors name the rule (`rules[i]`) and why.
/// Live sessions of the tenant's devices re-compile their rules at once; a subscription
/// the new rules no longer allow ends its session.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/acl/rule-sets/{name}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("name" = String, Path, description = "Rule set name: 1 to 64 of A-Z a-z 0-9 _ -", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body = RuleSet,
    responses(
        (status = 200, body = NamedRuleSet, description = "Replaced"),
        (status = 201, body = NamedRuleSet, description = "Created"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn put(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<RuleSet>,
) -> Result<Response, ApiError> {
    writable_tenant(&admin, &who, &tenant).await?;
    rule_set_name(&name)?;
    body.validate()
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let json = serde_json::to_string(&body)
        .map_err(|e| ApiError::Internal(format!("rule set encoding: {e}")))?;
    let record = AclRuleSetRecord {
        tenant: tenant.clone(),
        name: name.clone(),
        body: json.clone(),
        updated_at: admin.now(),
    };
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "ACL_RULE_SET_PUT")
        .target(&name)
        .detail(json);
    let created = admin
        .store()
        .put_acl_rule_set(record.clone(), audit)
        .await?;
    admin.publish().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_status(status, named(&record)?))
}

/// Deletes a rule set (409 while it is assigned). Deleting the last rule set returns
/// the tenant to "everything allowed".
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/acl/rule-sets/{name}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("name" = String, Path, description = "Rule set name: 1 to 64 of A-Z a-z 0-9 _ -", pattern = "^[A-Za-z0-9_-]{1,64}$")),
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
    let audit = AuditEntry::new(&who.actor(), Some(&tenant), "ACL_RULE_SET_DELETED").target(&name);
    admin
        .store()
        .delete_acl_rule_set(&tenant, &name, audit)
        .await?;
    admin.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists which trusted certificates and devices have a rule set of their own.
#[utoipa::path(get, path = "/tenant/tenants/{tenant_id}/acl/assignments", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, body = AssignmentList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn assignments(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    let list = admin.store().acl_assignments(&tenant).await?;
    let assignments = list
        .into_iter()
        .map(|a| Assignment {
            target: match a.target {
                AclTarget::Anchor => "trustedCertificate".into(),
                AclTarget::Device => "device".into(),
            },
            key: a.key,
            rule_set: a.rule_set,
        })
        .collect();
    Ok(json_status(StatusCode::OK, AssignmentList { assignments }))
}

async fn assign(
    admin: &Admin,
    who: &Principal,
    tenant: &str,
    target: AclTarget,
    key: &str,
    rule_set: Option<&str>,
) -> Result<(), ApiError> {
    writable_tenant(admin, who, tenant).await?;
    match target {
        AclTarget::Device => super::devices::common_name(key)?,
        AclTarget::Anchor => {
            admin
                .store()
                .certificate(tenant, key)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("Certificate {key} not found")))?;
        }
    }
    let (action, detail) = match rule_set {
        Some(s) => ("ACL_ASSIGNED", s),
        None => ("ACL_UNASSIGNED", ""),
    };
    let mut audit = AuditEntry::new(&who.actor(), Some(tenant), action).detail(detail);
    audit = match target {
        AclTarget::Anchor => audit.fingerprint(key),
        AclTarget::Device => audit.target(key),
    };
    admin
        .store()
        .set_acl_assignment(tenant, target, key, rule_set, audit)
        .await?;
    admin.publish().await?;
    Ok(())
}

/// Assigns a rule set to a device (it takes precedence over its certificate's).
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/acl/assignments/devices/{common_name}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "Common Name")),
    request_body = AssignmentBody,
    responses(
        (status = 204, description = "Assigned"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn assign_device(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<AssignmentBody>,
) -> Result<StatusCode, ApiError> {
    assign(
        &admin,
        &who,
        &tenant,
        AclTarget::Device,
        &cn,
        Some(&body.rule_set),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a device's own rule set.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/acl/assignments/devices/{common_name}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("common_name" = String, Path, description = "Common Name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn unassign_device(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, cn)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    assign(&admin, &who, &tenant, AclTarget::Device, &cn, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Assigns a rule set to the devices a trusted certificate verifies.
#[utoipa::path(put, path = "/tenant/tenants/{tenant_id}/acl/assignments/trusted-certificates/{fingerprint}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    request_body = AssignmentBody,
    responses(
        (status = 204, description = "Assigned"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn assign_anchor(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<AssignmentBody>,
) -> Result<StatusCode, ApiError> {
    let fp = normalize_fingerprint(&fp);
    assign(
        &admin,
        &who,
        &tenant,
        AclTarget::Anchor,
        &fp,
        Some(&body.rule_set),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a trusted certificate's rule set.
#[utoipa::path(delete, path = "/tenant/tenants/{tenant_id}/acl/assignments/trusted-certificates/{fingerprint}", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("fingerprint" = String, Path, description = "SHA-1 fingerprint")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn unassign_anchor(
    State(admin): State<Admin>,
    who: Principal,
    PathParams((tenant, fp)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let fp = normalize_fingerprint(&fp);
    assign(&admin, &who, &tenant, AclTarget::Anchor, &fp, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Dry run: what the front-end would decide for this device's publish or subscription,
/// with the rule that decided. Changes nothing.
#[utoipa::path(post, path = "/tenant/tenants/{tenant_id}/acl/check", tag = "topic authorization",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = CheckRequest,
    responses(
        (status = 200, body = CheckResult),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("basic" = [])))]
pub async fn check(
    State(admin): State<Admin>,
    who: Principal,
    PathParams(tenant): PathParams<String>,
    JsonBody(body): JsonBody<CheckRequest>,
) -> Result<Response, ApiError> {
    readable_tenant(&admin, &who, &tenant).await?;
    super::devices::common_name(&body.common_name)?;
    let qos = match body.qos.unwrap_or(0) {
        q @ 0..=2 => q as u8,
        _ => return Err(ApiError::unprocessable("qos must be 0, 1 or 2")),
    };
    let fp = body.fingerprint.as_deref().map(normalize_fingerprint);
    let applies = admin.acl_applies(&tenant, &body.common_name, fp.as_deref());
    let compiled = applies.compile(&tenant, &body.common_name);
    let d = match body.action {
        CheckAction::Publish => compiled.check_publish(&body.topic, qos, body.retain),
        CheckAction::Subscribe => compiled.check_subscribe(&body.topic, qos),
    };
    let (decided_by, rule_index) = match (&applies, d.by) {
        (Applies::NoRules, _) => ("noRules", None),
        (Applies::Missing(_), _) => ("missingRuleSet", None),
        (_, DecidedBy::Rule(i)) => ("rule", Some(i)),
        // A rule set without rules that allows by default is still a rule set.
        (_, DecidedBy::Default | DecidedBy::NoRules) => ("defaultAccess", None),
    };
    let rule = match (&applies, rule_index) {
        (Applies::Set(_, set), Some(i)) => set.rules.get(i).cloned(),
        _ => None,
    };
    Ok(json_status(
        StatusCode::OK,
        CheckResult {
            allowed: d.allowed(),
            granted_qos: d.result.ok(),
            reason: d.result.err().map(|r| r.label().to_string()),
            rule_set: applies.name().map(str::to_string),
            decided_by: decided_by.into(),
            rule_index,
            rule,
        },
    ))
}
