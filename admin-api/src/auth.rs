//! Authentication: HTTP Basic with `tenantId/user:password`, argon2 password hashes,
//! a failed-login limiter, and the [`Principal`] extractor with the tenant-scope rule
//! (another tenant's id answers 404, so tenant ids do not leak).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;

use crate::error::ApiError;
use crate::store::Role;
use crate::Admin;

/// The tenant of the management admin.
pub const MANAGEMENT_TENANT: &str = "management";
/// The bootstrap management admin's user name.
pub const MANAGEMENT_ADMIN: &str = "admin";

/// Argon2id cost parameters for new password hashes (existing hashes carry their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Parallelism.
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    /// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordHashing {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordHashing {
    fn argon2(&self) -> Result<Argon2<'static>, String> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes a password (CPU- and memory-heavy: call off the async runtime).
    pub fn hash(&self, password: &str) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("password hashing failed: {e}"))
    }
}

/// Checks a password against a PHC hash string (its own parameters apply).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Counts failed logins per user name; after `max_failures` within `window` the name
/// is locked for `lockout`, without checking passwords, so guessing stays slow.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    state: Mutex<HashMap<String, Attempts>>,
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// Entries kept before expired ones are pruned.
const LIMITER_PRUNE_AT: usize = 10_000;

impl LoginLimiter {
    /// A limiter.
    pub fn new(max_failures: u32, window: Duration, lockout: Duration) -> LoginLimiter {
        LoginLimiter {
            max_failures: max_failures.max(1),
            window,
            lockout,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while the name is locked.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Ok(());
        };
        match state.get(key).and_then(|a| a.locked_until) {
            Some(until) if until > now => Err((until - now).as_secs().max(1)),
            _ => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failure(&self, key: &str) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.len() >= LIMITER_PRUNE_AT {
            let (window, lockout) = (self.window, self.lockout);
            state.retain(|_, a| {
                a.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(a.first) < window.max(lockout)
            });
        }
        let a = state.entry(key.to_string()).or_insert(Attempts {
            failures: 0,
            first: now,
            locked_until: None,
        });
        if now.duration_since(a.first) > self.window || a.locked_until.is_some_and(|u| u <= now) {
            *a = Attempts {
                failures: 0,
                first: now,
                locked_until: None,
            };
        }
        a.failures += 1;
        if a.failures >= self.max_failures {
            a.locked_until = Some(now + self.lockout);
        }
    }

    /// Forgets every entry whose key starts with `prefix` (a deleted tenant's users).
    pub fn forget_prefix(&self, prefix: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.retain(|k, _| !k.starts_with(prefix));
        }
    }

    /// Forgets the failures of a name after a successful login.
    pub fn success(&self, key: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(key);
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The caller's tenant.
    pub tenant: String,
    /// The caller's user name.
    pub user: String,
    /// The caller's roles.
    pub roles: Vec<Role>,
}

impl Principal {
    /// `tenant/user`, as the audit log names the actor.
    pub fn actor(&self) -> String {
        format!("{}/{}", self.tenant, self.user)
    }

    /// True for an admin of the management tenant.
    pub fn is_management_admin(&self) -> bool {
        self.tenant == MANAGEMENT_TENANT && self.roles.contains(&Role::TenantAdmin)
    }

    /// True for a user of the management tenant (admin or reader).
    pub fn is_management(&self) -> bool {
        self.tenant == MANAGEMENT_TENANT
    }

    /// Allows reading `tenant`: the caller's own tenant, or any for the management
    /// tenant. Another tenant's id is answered like a missing tenant (404).
    pub fn can_read(&self, tenant: &str) -> Result<(), ApiError> {
        if self.is_management() || self.tenant == tenant {
            Ok(())
        } else {
            Err(tenant_not_found(tenant))
        }
    }

    /// Allows changing `tenant`: [`Principal::can_read`] plus the admin role.
    pub fn can_write(&self, tenant: &str) -> Result<(), ApiError> {
        self.can_read(tenant)?;
        if self.roles.contains(&Role::TenantAdmin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "This operation requires the role ROLE_TENANT_ADMIN".into(),
            ))
        }
    }

    /// Allows management-only operations.
    pub fn require_management_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_management_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "Only the management admin can {what}"
            )))
        }
    }
}

/// The 404 for a tenant that does not exist or is not the caller's.
pub fn tenant_not_found(tenant: &str) -> ApiError {
    ApiError::NotFound(format!("Tenant {tenant} not found"))
}

/// `(tenant, user, password)` from an `Authorization: Basic` header value.
pub fn parse_basic(header: &str) -> Result<(String, String, String), ApiError> {
    let bad = || {
        ApiError::Unauthorized(
            "Malformed Authorization header: expected Basic base64(\"tenantId/user:password\")"
                .into(),
        )
    };
    let (scheme, value) = header.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (login, password) = text.split_once(':').ok_or_else(bad)?;
    let (tenant, user) = login.split_once('/').ok_or_else(|| {
        ApiError::Unauthorized(
            "The user name must be given as tenantId/userName (for example management/admin)"
                .into(),
        )
    })?;
    if tenant.is_empty() || user.is_empty() {
        return Err(bad());
    }
    Ok((tenant.to_string(), user.to_string(), password.to_string()))
}

const INVALID_CREDENTIALS: &str = "Invalid credentials";

/// A source address may fail this many times more logins than one user name, across
/// names, before it is locked (people behind one NAT share an address).
pub const SOURCE_FAILURES_FACTOR: u32 = 10;

impl FromRequestParts<Admin> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "Authentication required: send Authorization: Basic base64(\"tenantId/user:password\")".into(),
                )
            })?
            .to_str()
            .map_err(|_| {
                ApiError::Unauthorized("The Authorization header must be ASCII".into())
            })?;
        let (tenant, user, password) = parse_basic(header)?;
        // The server puts the peer's address here (axum's `ConnectInfo`).
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        admin.authenticate(&tenant, &user, &password, source).await
    }
}

impl Admin {
    /// Checks credentials under the failed-login limiters (per user name, and per source
    /// address when the server tells it), at most one check per core at a time.
    pub(crate) async fn authenticate(
        &self,
        tenant: &str,
        user: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Principal, ApiError> {
        let key = format!("{tenant}/{user}");
        let source_key = source.map(|ip| ip.to_string());
        let limiter = &self.inner.limiter;
        let source_limiter = &self.inner.source_limiter;
        if let Err(retry_after_secs) = limiter.check(&key) {
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
        if let Some(Err(retry_after_secs)) = source_key.as_deref().map(|k| source_limiter.check(k))
        {
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
        let record = self.inner.store.user(tenant, user).await?;
        // Verify against a dummy hash for unknown users so timing does not reveal names.
        let hash = record
            .as_ref()
            .map(|r| r.password_hash.clone())
            .unwrap_or_else(|| self.inner.dummy_hash.clone());
        let password = password.to_string();
        // The bound covers the argon2 check only, not the user lookup before it. The
        // semaphore is never closed, so a permit always comes.
        let permit = self.inner.password_checks.acquire().await.ok();
        let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .map_err(|e| ApiError::Internal(format!("password check task failed: {e}")))?;
        drop(permit);
        match record {
            Some(r) if ok => {
                limiter.success(&key);
                Ok(Principal {
                    tenant: r.tenant,
                    user: r.user_name,
                    roles: r.roles,
                })
            }
            _ => {
                limiter.failure(&key);
                if let Some(k) = source_key.as_deref() {
                    source_limiter.failure(k);
                }
                tracing::warn!(login = %key, source = ?source, "failed login");
                Err(ApiError::Unauthorized(INVALID_CREDENTIALS.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_parsing() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("t1/alice:pa:ss")
        );
        assert_eq!(
            parse_basic(&h).unwrap(),
            ("t1".into(), "alice".into(), "pa:ss".into())
        );
        let no_tenant = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:x")
        );
        assert_eq!(
            parse_basic(&no_tenant).unwrap_err().to_string(),
            "The user name must be given as tenantId/userName (for example management/admin)"
        );
        assert!(parse_basic("Bearer abc").is_err());
        assert!(parse_basic("Basic !!!").is_err());
    }

    #[test]
    fn limiter_locks_after_failures_and_success_resets() {
        let l = LoginLimiter::new(3, Duration::from_secs(60), Duration::from_secs(30));
        l.failure("a");
        l.failure("a");
        assert!(l.check("a").is_ok());
        l.success("a");
        l.failure("a");
        l.failure("a");
        assert!(l.check("a").is_ok());
        l.failure("a");
        let wait = l.check("a").unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        assert!(l.check("b").is_ok());
    }

    #[test]
    fn hashing_round_trip() {
        let p = PasswordHashing {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let h = p.hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
    }
}
