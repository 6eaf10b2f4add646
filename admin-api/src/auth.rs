//! Authentication: HTTP Basic with `tenantId/user:password`, argon2 password hashes,
//! a failed-login limiter, and the [`Principal`] extractor with the tenant-scope rule
//! (another tenant's id answers 404, so tenant ids do not leak). A request without an
//! `Authorization` header may instead carry a console session cookie
//! ([`crate::console`]): the same principal, plus a CSRF token on every change.

pub(crate) mod checker;

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

/// Like [`verify_password`], but argon2 works in `memory` (grown to the hash's memory
/// cost once, then reused) instead of allocating its memory cost for every check: the
/// allocator did not reuse those 19 MiB blocks (each check grew the process by 19 MiB,
/// measured with glibc), so the password-check threads keep one buffer each. The buffer
/// is zeroed after each check.
pub fn verify_password_in(hash: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let ok = verify_in(hash, password, memory).unwrap_or(false);
    memory.fill(argon2::Block::default());
    ok
}

fn verify_in(hash: &str, password: &str, memory: &mut Vec<argon2::Block>) -> Option<bool> {
    let parsed = PasswordHash::new(hash).ok()?;
    let (salt, expected) = (parsed.salt?, parsed.hash?);
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).ok()?;
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).ok()?;
    let argon2 = Argon2::new(algorithm, version, params);
    let computed = argon2::password_hash::Output::init_with(expected.len(), |out| {
        argon2
            .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .ok()?;
    // `Output` compares in constant time.
    Some(computed == expected)
}

/// Counts failed logins per key (a `tenant/user@source` pair, or a source address);
/// after `max_failures` within `window` the key is locked for `lockout`, without
/// checking passwords, so guessing stays slow.
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

/// Spaces the password checks of one user name once it has failed many times from all
/// sources together: instead of locking the name (which anyone could keep doing to
/// `management/admin` from anywhere), each further check of that name waits for its own
/// slot, one per `interval`; a request that would wait longer than `max_wait` is answered
/// 429 at once. A login whose exact credentials were verified moments ago (the cache)
/// does not wait.
#[derive(Debug)]
pub struct UserSlowdown {
    threshold: u32,
    window: Duration,
    interval: Duration,
    max_wait: Duration,
    state: Mutex<HashMap<String, Slowed>>,
}

#[derive(Debug, Clone, Copy)]
struct Slowed {
    failures: u32,
    first: Instant,
    next_slot: Instant,
}

impl UserSlowdown {
    /// Slows a name down after `threshold` failures within `window`.
    pub fn new(threshold: u32, window: Duration, interval: Duration, max_wait: Duration) -> Self {
        UserSlowdown {
            threshold: threshold.max(1),
            window,
            interval,
            max_wait,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed login of a name.
    pub fn failure(&self, key: &str) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.len() >= LIMITER_PRUNE_AT {
            let window = self.window;
            state.retain(|_, s| now.duration_since(s.first) < window || s.next_slot > now);
        }
        let s = state.entry(key.to_string()).or_insert(Slowed {
            failures: 0,
            first: now,
            next_slot: now,
        });
        if now.duration_since(s.first) > self.window {
            s.failures = 0;
            s.first = now;
        }
        s.failures = s.failures.saturating_add(1);
    }

    /// Forgets every name starting with `prefix` (a deleted tenant's users).
    pub fn forget_prefix(&self, prefix: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.retain(|k, _| !k.starts_with(prefix));
        }
    }

    /// `Ok(wait)`: check after waiting this long (zero when the name is not slowed
    /// down); `Err(seconds)`: answer 429, the next free slot is too far.
    pub fn reserve(&self, key: &str) -> Result<Duration, u64> {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return Ok(Duration::ZERO);
        };
        let Some(s) = state.get_mut(key) else {
            return Ok(Duration::ZERO);
        };
        if s.failures < self.threshold || now.duration_since(s.first) > self.window {
            return Ok(Duration::ZERO);
        }
        let slot = s.next_slot.max(now);
        let wait = slot - now;
        if wait > self.max_wait {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        s.next_slot = slot + self.interval;
        Ok(wait)
    }
}

/// The key a source address is counted under: an IPv4 address (also when mapped into
/// IPv6), or the /64 prefix of an IPv6 address (one host usually holds a whole /64).
pub fn source_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
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
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // No Basic credentials: a console session cookie, if any, authenticates
            // (with its CSRF token on a change).
            if let Some(token) = crate::console::session_cookie(&parts.headers) {
                let csrf = parts
                    .headers
                    .get(crate::console::session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok());
                let changes = crate::console::changes_state(&parts.method);
                return admin.session_principal(&token, changes, csrf).await;
            }
            if crate::console::from_console(&parts.headers) {
                return Err(ApiError::SessionEnded);
            }
            return Err(ApiError::Unauthorized(
                "Authentication required: send Authorization: Basic base64(\"tenantId/user:password\")".into(),
            ));
        };
        let header = header
            .to_str()
            .map_err(|_| ApiError::Unauthorized("The Authorization header must be ASCII".into()))?;
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
    /// Checks credentials. Refused at once (429) while this user name is locked for this
    /// source address, or the source address is locked across names; a user name that
    /// failed many times from all sources is slowed down, not locked. Argon2 runs on the
    /// bounded checker pool (503 when it is full); credentials verified moments ago
    /// against the same stored hash are accepted from the cache.
    pub(crate) async fn authenticate(
        &self,
        tenant: &str,
        user: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Principal, ApiError> {
        let login = format!("{tenant}/{user}");
        let source_key = source.map(source_key);
        // Failures of this name from this source (or from anywhere, when the server does
        // not say where a request comes from).
        let pair = match &source_key {
            Some(src) => format!("{login}@{src}"),
            None => login.clone(),
        };
        let inner = &self.inner;
        if let Err(retry_after_secs) = inner.limiter.check(&pair) {
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
        if let Some(Err(retry_after_secs)) =
            source_key.as_deref().map(|k| inner.source_limiter.check(k))
        {
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
        let record = inner.store.user(tenant, user).await?;
        // Verify against a dummy hash for unknown users so timing does not reveal names.
        let hash = record
            .as_ref()
            .map(|r| r.password_hash.clone())
            .unwrap_or_else(|| inner.dummy_hash.clone());
        let cached = record.is_some() && inner.checker.cached(tenant, user, password, &hash);
        let ok = if cached {
            true
        } else {
            match inner.user_slowdown.reserve(&login) {
                Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Ok(_) => {}
                Err(retry_after_secs) => {
                    return Err(ApiError::TooManyRequests { retry_after_secs })
                }
            }
            match inner.checker.verify(tenant, user, password, &hash).await {
                Ok(ok) => ok,
                Err(checker::CheckRefused::Busy) => {
                    tracing::warn!(login = %login, "password check refused: the check queue is full");
                    return Err(ApiError::ServiceUnavailable {
                        retry_after_secs: PASSWORD_CHECK_RETRY_AFTER_SECS,
                    });
                }
                Err(checker::CheckRefused::Stopped) => {
                    return Err(ApiError::Internal(
                        "the password-check threads stopped".into(),
                    ))
                }
            }
        };
        match record {
            Some(r) if ok => {
                inner.limiter.success(&pair);
                Ok(Principal {
                    tenant: r.tenant,
                    user: r.user_name,
                    roles: r.roles,
                })
            }
            _ => {
                inner.limiter.failure(&pair);
                inner.user_slowdown.failure(&login);
                if let Some(k) = source_key.as_deref() {
                    inner.source_limiter.failure(k);
                }
                tracing::warn!(login = %login, source = ?source, "failed login");
                Err(ApiError::Unauthorized(INVALID_CREDENTIALS.into()))
            }
        }
    }

    /// Argon2 password checks run so far by this process (logins answered from the
    /// cache of recent successful checks are not counted). For metrics and tests.
    pub fn password_checks_run(&self) -> u64 {
        self.inner.checker.runs()
    }
}

/// The spacing of password checks of a slowed-down user name.
pub const SLOWDOWN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a login of a slowed-down user name waits for its slot before 429.
pub const SLOWDOWN_MAX_WAIT: Duration = Duration::from_secs(10);

/// Retry-After of a 503 for a full password-check queue.
pub const PASSWORD_CHECK_RETRY_AFTER_SECS: u64 = 1;

pub(crate) use checker::PasswordChecker;

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
    fn slowdown_spaces_checks_after_the_threshold_and_never_locks() {
        let sec = Duration::from_secs(1);
        let s = UserSlowdown::new(2, Duration::from_secs(60), sec, Duration::from_secs(3));
        assert_eq!(s.reserve("u"), Ok(Duration::ZERO));
        s.failure("u");
        assert_eq!(s.reserve("u"), Ok(Duration::ZERO));
        s.failure("u");
        // Slowed down: each check takes the next one-second slot...
        let waits: Vec<u64> = (0..4)
            .map(|_| s.reserve("u").unwrap().as_secs_f64().round() as u64)
            .collect();
        assert_eq!(waits, [0, 1, 2, 3]);
        // ...and beyond the longest wait the answer is "retry later", not a lock.
        assert_eq!(s.reserve("u"), Err(4));
        assert_eq!(s.reserve("other"), Ok(Duration::ZERO));
    }

    #[test]
    fn ipv6_sources_count_per_64_prefix() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_eq!(source_key(a), "2001:db8:1:2::/64");
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7");
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
        let mut mem = Vec::new();
        assert!(verify_password_in(&h, "s3cret", &mut mem));
        assert!(!verify_password_in(&h, "s3cret ", &mut mem));
        assert!(!verify_password_in("not a hash", "s3cret", &mut mem));
        assert_eq!(mem.len(), 64, "one block per KiB of memory cost");
        let other = PasswordHashing {
            memory_kib: 128,
            iterations: 2,
            parallelism: 2,
        }
        .hash("other")
        .unwrap();
        assert!(verify_password_in(&other, "other", &mut mem));
        assert!(!verify_password_in(&other, "s3cret", &mut mem));
        assert!(verify_password_in(&h, "s3cret", &mut mem));
    }
}
