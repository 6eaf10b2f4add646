//! Topic authorization: per-tenant rule sets (ordered allow/deny rules on MQTT topic
//! filters with `${cn}` and `${tenant}` placeholders), their validation, and the
//! evaluator the front-end runs on every PUBLISH, SUBSCRIBE filter and will.
//!
//! A [`RuleSet`] is what the REST API stores; [`RuleSet::compile`] substitutes the
//! placeholders for one device and gives an [`Acl`], whose checks walk topic levels
//! without allocating. It lives here (not in the broker) because the REST API's dry run
//! (`POST .../acl/check`) and validation use the same code as the enforcement.
//!
//! Semantics:
//! - PUBLISH / will: the first rule (in order) whose action includes publish and whose
//!   filter matches the topic decides; an allow rule's `maxQos` and `retain: false`
//!   refuse a publish above that QoS or retained. No rule: `defaultAccess`.
//! - SUBSCRIBE: a filter is granted only if every topic it can match is allowed. Rules
//!   are walked in order: a rule whose filter covers the whole subscription decides it; a
//!   deny rule that shares any topic with it refuses it; an allow rule that shares only
//!   some topics is passed (its topics are allowed, the rest are decided further on).
//!   Reaching the end, `defaultAccess` decides the rest. This is exact for allowing (a
//!   granted filter never reaches a denied topic) and may refuse a filter whose topics
//!   are all allowed by several partial rules together (refusal is the safe side). The
//!   granted QoS is lowered to the smallest `maxQos` of the allow rules involved.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The rule set every device of a tenant gets unless its anchor or itself names another.
pub const DEFAULT_RULE_SET: &str = "default";
/// Most rules in one rule set.
pub const MAX_RULES: usize = 256;
/// Longest topic filter template of a rule, in bytes.
pub const MAX_FILTER_LEN: usize = 1024;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// The topics are allowed.
    Allow,
    /// The topics are refused.
    Deny,
}

/// What a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH (and the will set at CONNECT).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    Both,
}

impl Action {
    fn publish(self) -> bool {
        matches!(self, Action::Publish | Action::Both)
    }
    fn subscribe(self) -> bool {
        matches!(self, Action::Subscribe | Action::Both)
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// `allow` or `deny`.
    pub access: Access,
    /// `publish`, `subscribe` or `both`.
    pub action: Action,
    /// An MQTT topic filter (as the device sees topics, without the tenant prefix) that
    /// may hold `${cn}` (the device certificate's Common Name) and `${tenant}`, as a
    /// whole level or part of one.
    #[schema(min_length = 1, max_length = 1024)]
    pub topic: String,
    /// Highest QoS allowed (0, 1 or 2): a publish above it is refused, a subscription
    /// is granted at most this QoS. Allow rules only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "json_qos"
    )]
    #[schema(minimum = 0, maximum = 2)]
    pub max_qos: Option<u8>,
    /// `false`: retained publishes are refused. Allow rules only; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

/// A named, ordered list of rules and the access for topics no rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSet {
    /// The rules, first match first.
    #[schema(max_items = 256)]
    pub rules: Vec<Rule>,
    /// For what no rule matches.
    pub default_access: Access,
}

/// Why a rule set is refused: the rule (index from 0) and the reason, or the set itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// One rule is invalid.
    #[error("rules[{index}]: {reason}")]
    Rule {
        /// Index of the rule, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The set as a whole.
    #[error("{0}")]
    Set(String),
}

/// A QoS given as any JSON integer (`1.0` included, as JSON Schema's `integer` allows).
fn json_qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    use serde::de::Error as _;
    crate::routes::json_integer(d)?
        .map(|n| {
            // Out of range for a byte: refused here; 3 to 255 by `validate`, which
            // names the rule.
            u8::try_from(n)
                .map_err(|_| D::Error::custom(format!("maxQos must be 0, 1 or 2, got {n}")))
        })
        .transpose()
}

/// Validates a rule set name: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a filter (after substitution, or a device's) is a valid MQTT topic filter:
/// not empty, no NUL, `#` only as the whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("the topic filter is empty");
    }
    if filter.contains('\0') {
        return Err("the topic filter holds NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(l) = levels.next() {
        if l.contains('#') && (l != "#" || levels.peek().is_some()) {
            return Err("'#' must be the whole last level");
        }
        if l.contains('+') && l != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

impl RuleSet {
    /// Validates every rule; the error names the first bad rule and why.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.rules.len() > MAX_RULES {
            return Err(RuleError::Set(format!(
                "at most {MAX_RULES} rules per rule set"
            )));
        }
        for (index, r) in self.rules.iter().enumerate() {
            let bad = |reason: String| RuleError::Rule { index, reason };
            if r.topic.len() > MAX_FILTER_LEN {
                return Err(bad(format!("topic is longer than {MAX_FILTER_LEN} bytes")));
            }
            // Every `${` must open a known placeholder.
            let mut rest = r.topic.as_str();
            while let Some(at) = rest.find("${") {
                let tail = &rest[at..];
                let known = ["${cn}", "${tenant}"]
                    .into_iter()
                    .find(|p| tail.starts_with(p));
                let Some(p) = known else {
                    return Err(bad(
                        "unknown placeholder: only ${cn} and ${tenant} are defined".into(),
                    ));
                };
                rest = &tail[p.len()..];
            }
            // Checked with a placeholder-free stand-in: the CN and tenant id hold no
            // `+ # /`, so substitution keeps the filter's shape.
            let shape = r.topic.replace("${cn}", "x").replace("${tenant}", "x");
            valid_filter(&shape).map_err(|e| bad(e.to_string()))?;
            if shape.starts_with('$') {
                return Err(bad(
                    "topics starting with '$' are not the devices' to use".into()
                ));
            }
            if let Some(q) = r.max_qos {
                if q > 2 {
                    return Err(bad("maxQos must be 0, 1 or 2".into()));
                }
            }
            if r.access == Access::Deny && (r.max_qos.is_some() || r.retain.is_some()) {
                return Err(bad("maxQos and retain apply to allow rules only".into()));
            }
        }
        Ok(())
    }

    /// The rules for one device: placeholders substituted (in one pass, so a CN that
    /// reads `${tenant}` stays literal). The set must have been validated.
    pub fn compile(&self, tenant: &str, cn: &str) -> Acl {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| Compiled {
                index,
                allow: r.access == Access::Allow,
                publish: r.action.publish(),
                subscribe: r.action.subscribe(),
                filter: substitute(&r.topic, tenant, cn),
                max_qos: r.max_qos.unwrap_or(2),
                retain: r.retain.unwrap_or(true),
            })
            .collect();
        Acl {
            rules,
            default_allow: self.default_access == Access::Allow,
        }
    }
}

fn substitute(template: &str, tenant: &str, cn: &str) -> String {
    let mut out = String::with_capacity(template.len() + cn.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(t) = tail.strip_prefix("${cn}") {
            out.push_str(cn);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${tenant}") {
            out.push_str(tenant);
            rest = t;
        } else {
            out.push_str("${");
            rest = &tail[2..];
        }
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone)]
struct Compiled {
    index: usize,
    allow: bool,
    publish: bool,
    subscribe: bool,
    filter: String,
    max_qos: u8,
    retain: bool,
}

/// A rule set compiled for one device (see [`RuleSet::compile`]), or [`Acl::allow_all`]
/// for a tenant without rule sets.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Compiled>,
    default_allow: bool,
}

/// Which part of the rule set decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The rule at this index (from 0).
    Rule(usize),
    /// `defaultAccess`.
    Default,
    /// The tenant has no rule sets: everything is allowed.
    NoRules,
}

/// Why something was refused (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A deny rule or `defaultAccess: deny`.
    Denied,
    /// Above the allow rule's `maxQos`.
    Qos,
    /// Retained, and the allow rule says `retain: false`.
    Retain,
    /// Not a valid topic or filter.
    Invalid,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Qos => "qos",
            Refusal::Retain => "retain",
            Refusal::Invalid => "invalid",
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `Ok(granted QoS)` or the refusal.
    pub result: Result<u8, Refusal>,
    /// What decided.
    pub by: DecidedBy,
}

impl Decision {
    /// Allowed?
    pub fn allowed(&self) -> bool {
        self.result.is_ok()
    }
}

impl Acl {
    /// Everything allowed (a tenant without rule sets).
    pub fn allow_all() -> Acl {
        Acl {
            rules: Vec::new(),
            default_allow: true,
        }
    }

    /// True when nothing can be refused (no rules, default allow): the session skips
    /// the checks.
    pub fn is_allow_all(&self) -> bool {
        self.rules.is_empty() && self.default_allow
    }

    fn default(&self, qos: u8) -> Decision {
        Decision {
            result: if self.default_allow {
                Ok(qos)
            } else {
                Err(Refusal::Denied)
            },
            by: if self.rules.is_empty() && self.default_allow {
                DecidedBy::NoRules
            } else {
                DecidedBy::Default
            },
        }
    }

    /// May the device publish to `topic` (a topic name, as the device sent it) at `qos`,
    /// retained or not? Allocates nothing.
    pub fn check_publish(&self, topic: &str, qos: u8, retain: bool) -> Decision {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Decision {
                result: Err(Refusal::Invalid),
                by: DecidedBy::Default,
            };
        }
        for r in self.rules.iter().filter(|r| r.publish) {
            if !matches(&r.filter, topic) {
                continue;
            }
            let by = DecidedBy::Rule(r.index);
            let result = if !r.allow {
                Err(Refusal::Denied)
            } else if qos > r.max_qos {
                Err(Refusal::Qos)
            } else if retain && !r.retain {
                Err(Refusal::Retain)
            } else {
                Ok(qos)
            };
            return Decision { result, by };
        }
        self.default(qos)
    }

    /// May the device subscribe to `filter` (as it sent it; `$share/<group>/` is looked
    /// through) at `qos`? `Ok` holds the QoS to grant (lowered by `maxQos`). Allocates
    /// nothing.
    pub fn check_subscribe(&self, filter: &str, qos: u8) -> Decision {
        if self.is_allow_all() {
            // A tenant without rules: as before them (a malformed filter is the
            // broker's to refuse, not a rule refusal).
            return self.default(qos);
        }
        let f = match filter.strip_prefix("$share/") {
            Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
            None => filter,
        };
        if valid_filter(f).is_err() {
            return Decision {
                result: Err(Refusal::Invalid),
                by: DecidedBy::Default,
            };
        }
        let mut granted = qos;
        for r in self.rules.iter().filter(|r| r.subscribe) {
            let by = DecidedBy::Rule(r.index);
            if covers(&r.filter, f) {
                let result = if r.allow {
                    Ok(granted.min(r.max_qos))
                } else {
                    Err(Refusal::Denied)
                };
                return Decision { result, by };
            }
            if intersects(&r.filter, f) {
                if !r.allow {
                    return Decision {
                        result: Err(Refusal::Denied),
                        by,
                    };
                }
                granted = granted.min(r.max_qos);
            }
        }
        let d = self.default(granted);
        Decision {
            result: d.result,
            by: d.by,
        }
    }
}

/// Does filter `f` match topic name `t`? A topic starting with `$` is not matched by a
/// wildcard in the first level (MQTT 4.7.2).
pub fn matches(f: &str, t: &str) -> bool {
    let mut fl = f.split('/');
    let mut tl = t.split('/');
    let mut first = true;
    loop {
        match (fl.next(), tl.next()) {
            (Some("#"), _) => return !(first && t.starts_with('$')),
            (Some("+"), Some(_)) if first && t.starts_with('$') => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Does filter `a` match every topic filter `b` can match?
pub fn covers(a: &str, b: &str) -> bool {
    let mut al = a.split('/');
    let mut bl = b.split('/');
    loop {
        match (al.next(), bl.next()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && y != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is there a topic both filters match?
pub fn intersects(a: &str, b: &str) -> bool {
    let mut al = a.split('/');
    let mut bl = b.split('/');
    loop {
        match (al.next(), bl.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A tenant's rule sets and their assignments, as the trust snapshot holds them.
#[derive(Debug, Clone, Default)]
pub struct TenantAcl {
    /// Rule sets by name (`None`: stored but unreadable, which denies everything).
    pub sets: std::collections::HashMap<String, Option<std::sync::Arc<RuleSet>>>,
    /// Trusted certificate fingerprint -> rule set name.
    pub by_anchor: std::collections::HashMap<String, String>,
    /// Device Common Name -> rule set name.
    pub by_device: std::collections::HashMap<String, String>,
}

/// The rule set that applies to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    /// The tenant has no rule sets: everything is allowed, as before topic rules.
    NoRules,
    /// This rule set (by name).
    Set(String, std::sync::Arc<RuleSet>),
    /// The named rule set is missing or unreadable (an assignment racing a deletion on
    /// another node): everything is refused rather than guessed.
    Missing(String),
}

impl Applies {
    /// The rule set's name, if one applies.
    pub fn name(&self) -> Option<&str> {
        match self {
            Applies::NoRules => None,
            Applies::Set(n, _) | Applies::Missing(n) => Some(n),
        }
    }

    /// Compiles what applies for one device.
    pub fn compile(&self, tenant: &str, cn: &str) -> Acl {
        match self {
            Applies::NoRules => Acl::allow_all(),
            Applies::Set(_, set) => set.compile(tenant, cn),
            Applies::Missing(_) => Acl {
                rules: Vec::new(),
                default_allow: false,
            },
        }
    }
}

impl TenantAcl {
    /// The rule set for a device: the device's own assignment, else its trusted
    /// certificate's, else [`DEFAULT_RULE_SET`]; a tenant with rule sets but no
    /// `default` allows a device without an assignment everything.
    pub fn applies(&self, cn: &str, anchor_fingerprint: Option<&str>) -> Applies {
        if self.sets.is_empty() {
            return Applies::NoRules;
        }
        let named = self
            .by_device
            .get(cn)
            .or_else(|| anchor_fingerprint.and_then(|fp| self.by_anchor.get(fp)))
            .map(String::as_str);
        let name = match named {
            Some(n) => n,
            None if self.sets.contains_key(DEFAULT_RULE_SET) => DEFAULT_RULE_SET,
            None => return Applies::NoRules,
        };
        match self.sets.get(name) {
            Some(Some(set)) => Applies::Set(name.to_string(), set.clone()),
            _ => Applies::Missing(name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(access: Access, action: Action, topic: &str) -> Rule {
        Rule {
            access,
            action,
            topic: topic.into(),
            max_qos: None,
            retain: None,
        }
    }

    fn device_set() -> RuleSet {
        RuleSet {
            rules: vec![
                rule(Access::Allow, Action::Both, "devices/${cn}/#"),
                rule(Access::Allow, Action::Subscribe, "broadcast/${tenant}/+"),
                Rule {
                    max_qos: Some(1),
                    retain: Some(false),
                    ..rule(Access::Allow, Action::Publish, "telemetry/${cn}")
                },
                rule(Access::Deny, Action::Both, "devices/#"),
            ],
            default_access: Access::Deny,
        }
    }

    #[test]
    fn filter_algebra() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a//b", "a//b"));

        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+/#", "a/#"), "a/# matches a, a/+/# does not");
        assert!(!covers("a/b", "a/b/c"));
        assert!(!covers("a/b/c", "a/b"));
        assert!(covers("#", "#"));

        assert!(intersects("a/+", "+/b"));
        assert!(intersects("a/#", "a"));
        assert!(intersects("+/+/x", "devices/#"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("a/+", "a/b/c"));
        assert!(!intersects("devices/alice/#", "devices/bob/+"));
        assert!(intersects("devices/+/cmd", "devices/bob/#"));
    }

    #[test]
    fn filter_validation() {
        for ok in ["a", "#", "+", "a/+/b", "a/#", "/", "a//b"] {
            assert!(valid_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "a\0"] {
            assert!(valid_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_substituted_once() {
        assert_eq!(
            substitute("t/${tenant}/d/${cn}-x/${other}", "acme", "s1"),
            "t/acme/d/s1-x/${other}"
        );
        // A CN that looks like a placeholder stays literal.
        assert_eq!(substitute("d/${cn}", "acme", "${tenant}"), "d/${tenant}");
    }

    #[test]
    fn publish_first_match_decides() {
        let acl = device_set().compile("acme", "alice");
        let d = acl.check_publish("devices/alice/up", 2, true);
        assert_eq!(d.result, Ok(2));
        assert_eq!(d.by, DecidedBy::Rule(0));
        assert_eq!(
            acl.check_publish("devices/bob/cmd", 0, false),
            Decision {
                result: Err(Refusal::Denied),
                by: DecidedBy::Rule(3)
            }
        );
        assert_eq!(acl.check_publish("telemetry/alice", 1, false).result, Ok(1));
        assert_eq!(
            acl.check_publish("telemetry/alice", 2, false).result,
            Err(Refusal::Qos)
        );
        assert_eq!(
            acl.check_publish("telemetry/alice", 0, true).result,
            Err(Refusal::Retain)
        );
        // Subscribe-only rules do not allow publishing.
        let d = acl.check_publish("broadcast/acme/x", 0, false);
        assert_eq!((d.result, d.by), (Err(Refusal::Denied), DecidedBy::Default));
        assert_eq!(
            acl.check_publish("devices/+/x", 0, false).result,
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn subscribe_is_granted_only_if_every_topic_is_allowed() {
        let acl = device_set().compile("acme", "alice");
        assert_eq!(acl.check_subscribe("devices/alice/#", 1).result, Ok(1));
        assert_eq!(acl.check_subscribe("devices/alice/+/cmd", 2).result, Ok(2));
        assert_eq!(acl.check_subscribe("broadcast/acme/news", 1).result, Ok(1));
        // Crossing into other devices' topics.
        let d = acl.check_subscribe("devices/+/cmd", 1);
        assert_eq!((d.result, d.by), (Err(Refusal::Denied), DecidedBy::Rule(3)));
        assert!(!acl.check_subscribe("#", 0).allowed());
        assert!(!acl.check_subscribe("+/alice/#", 0).allowed());
        assert!(!acl.check_subscribe("devices/#", 0).allowed());
        // Publish-only rule does not grant a subscription; the default denies.
        let d = acl.check_subscribe("telemetry/alice", 0);
        assert_eq!((d.result, d.by), (Err(Refusal::Denied), DecidedBy::Default));
        // Shared subscriptions are judged on their filter.
        assert!(acl.check_subscribe("$share/g/devices/alice/x", 0).allowed());
        assert!(!acl.check_subscribe("$share/g/devices/bob/x", 0).allowed());
        assert!(!acl.check_subscribe("a/#/b", 0).allowed());
    }

    #[test]
    fn subscribe_qos_is_lowered_by_the_allow_rules_involved() {
        let set = RuleSet {
            rules: vec![
                Rule {
                    max_qos: Some(0),
                    ..rule(Access::Allow, Action::Subscribe, "a/slow/#")
                },
                Rule {
                    max_qos: Some(1),
                    ..rule(Access::Allow, Action::Subscribe, "a/#")
                },
            ],
            default_access: Access::Deny,
        };
        let acl = set.compile("t", "c");
        assert_eq!(acl.check_subscribe("a/fast/x", 2).result, Ok(1));
        // a/+ touches a/slow (QoS 0 at most), then a/# covers it.
        assert_eq!(acl.check_subscribe("a/+/x", 2).result, Ok(0));
        assert_eq!(acl.check_subscribe("a/slow/x", 2).result, Ok(0));
    }

    #[test]
    fn default_allow_with_deny_rules() {
        let set = RuleSet {
            rules: vec![rule(Access::Deny, Action::Subscribe, "secret/#")],
            default_access: Access::Allow,
        };
        let acl = set.compile("t", "c");
        assert!(acl.check_subscribe("public/#", 1).allowed());
        assert!(!acl.check_subscribe("#", 1).allowed());
        assert!(!acl.check_subscribe("+/x", 1).allowed());
        assert!(acl.check_publish("secret/x", 1, false).allowed());
        let d = acl.check_subscribe("public/x", 1);
        assert_eq!(d.by, DecidedBy::Default);
        let all = Acl::allow_all();
        assert!(all.is_allow_all());
        assert_eq!(all.check_subscribe("#", 2).by, DecidedBy::NoRules);
    }

    #[test]
    fn validation_names_the_bad_rule() {
        let mut set = device_set();
        set.rules[2].topic = "a/${device}".into();
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 2, .. })
        ));
        set.rules[2].topic = "a/#/${cn}".into();
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 2, .. })
        ));
        set.rules[2].topic = "a/x${cn}+".into();
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 2, .. })
        ));
        set.rules[2].topic = "$SYS/#".into();
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 2, .. })
        ));
        set.rules[2].topic = "ok/${cn}-x".into();
        set.rules[2].max_qos = Some(3);
        let e = set.validate().unwrap_err();
        assert_eq!(e.to_string(), "rules[2]: maxQos must be 0, 1 or 2");
        set.rules[2].max_qos = None;
        set.rules[3].retain = Some(false);
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 3, .. })
        ));
        set.rules[3].retain = None;
        assert_eq!(set.validate(), Ok(()));
        let json = r#"{"rules":[{"access":"allow","action":"both","topic":"x","extra":1}],"defaultAccess":"deny"}"#;
        assert!(serde_json::from_str::<RuleSet>(json).is_err());
        // JSON Schema integers: 1.0 is 1; 3.0 is read and then refused by index.
        let json = r#"{"rules":[{"access":"allow","action":"both","topic":"x","maxQos":1.0},{"access":"allow","action":"both","topic":"y","maxQos":3.0}],"defaultAccess":"deny"}"#;
        let set: RuleSet = serde_json::from_str(json).unwrap();
        assert_eq!(set.rules[0].max_qos, Some(1));
        assert!(matches!(
            set.validate(),
            Err(RuleError::Rule { index: 1, .. })
        ));
    }

    #[test]
    fn which_set_applies_and_a_missing_one_refuses_everything() {
        use std::sync::Arc;
        let mut t = TenantAcl::default();
        assert_eq!(t.applies("d1", None), Applies::NoRules);
        assert!(t.applies("d1", None).compile("acme", "d1").is_allow_all());
        // Sets, but no `default`: a device without an assignment is not restricted
        // (documented in the README); an assigned one gets its set.
        t.sets
            .insert("gateways".into(), Some(Arc::new(device_set())));
        t.by_anchor.insert("fp".into(), "gateways".into());
        assert_eq!(t.applies("d1", None), Applies::NoRules);
        assert!(matches!(t.applies("d1", Some("fp")), Applies::Set(n, _) if n == "gateways"));
        // The device's own assignment wins over its certificate's.
        t.sets
            .insert("default".into(), Some(Arc::new(device_set())));
        t.by_device.insert("d1".into(), "gone".into());
        assert_eq!(t.applies("d1", Some("fp")), Applies::Missing("gone".into()));
        assert!(matches!(t.applies("d2", None), Applies::Set(n, _) if n == "default"));
        // Missing or unreadable: everything refused, never everything allowed.
        t.sets.insert("broken".into(), None);
        t.by_device.insert("d3".into(), "broken".into());
        for cn in ["d1", "d3"] {
            let acl = t.applies(cn, None).compile("acme", cn);
            assert!(
                !acl.check_publish(&format!("devices/{cn}/x"), 0, false)
                    .allowed(),
                "{cn}"
            );
            assert!(
                !acl.check_subscribe(&format!("devices/{cn}/#"), 0).allowed(),
                "{cn}"
            );
        }
    }
}
