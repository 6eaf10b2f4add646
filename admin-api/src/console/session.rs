//! Console sessions: a random 256-bit token in an `HttpOnly; Secure; SameSite=Strict`
//! cookie, kept server-side in this process's memory (several nodes need session
//! affinity for the console), with an idle and an absolute expiry, and a CSRF token
//! bound to each session.
//!
//! The map is keyed by the SHA-256 of the token, so the tokens themselves are nowhere
//! in memory after the login answer; neither they nor the CSRF tokens appear in Debug
//! output. Each request re-reads the user from the store: a deleted user, or a password
//! changed since the login (also on another node), ends the session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine as _;
use rand::RngCore as _;

/// The session cookie's name. The `__Host-` prefix makes browsers accept it only with
/// `Secure`, `Path=/` and no `Domain`, so a sibling host cannot plant one.
pub const COOKIE_NAME: &str = "__Host-broker-console";

/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Sessions kept at most by one process; beyond it the least recently used one ends.
pub const MAX_SESSIONS: usize = 10_000;

/// Sessions one user may hold at once; a further login ends the user's oldest.
pub const MAX_SESSIONS_PER_USER: usize = 16;

/// A random 256-bit secret, base64url without padding (43 characters).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256(s: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new session's secrets, handed to the browser once.
pub struct NewSession {
    /// The cookie value.
    pub token: String,
    /// The CSRF token.
    pub csrf: String,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSession { token: <redacted>, csrf: <redacted> }")
    }
}

/// One session.
struct Session {
    tenant: String,
    user: String,
    csrf: String,
    /// SHA-256 of the user's stored password hash at login: a password change ends it.
    hash_tag: [u8; 32],
    created: Instant,
    last_used: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("csrf", &"<redacted>")
            .field("created", &self.created)
            .field("last_used", &self.last_used)
            .finish()
    }
}

/// What a valid session says about its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The user's tenant.
    pub tenant: String,
    /// The user's name.
    pub user: String,
    /// Seconds until the absolute expiry.
    pub expires_in: u64,
}

/// Why a session does not authenticate a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// No such session: never issued, logged out, expired, or ended by a password
    /// change or the user's deletion.
    Ended,
    /// A state-changing request without the session's CSRF token.
    CsrfMissing,
    /// A state-changing request with another token.
    CsrfWrong,
}

/// The sessions of this process.
pub struct Sessions {
    idle: Duration,
    lifetime: Duration,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .field("count", &self.map.lock().map(|m| m.len()).unwrap_or(0))
            .finish()
    }
}

impl Sessions {
    /// Sessions that end after `idle` without a request, and `lifetime` after login.
    pub fn new(idle: Duration, lifetime: Duration) -> Sessions {
        Sessions {
            idle,
            lifetime,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The absolute lifetime of a session.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The idle timeout of a session.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) >= self.idle
            || now.duration_since(s.created) >= self.lifetime
    }

    /// Starts a session for a user whose password was just checked against
    /// `password_hash`.
    pub fn create(&self, tenant: &str, user: &str, password_hash: &str) -> NewSession {
        let new = NewSession {
            token: random_token(),
            csrf: random_token(),
        };
        let now = Instant::now();
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| !self.expired(s, now));
            let mine: Vec<([u8; 32], Instant)> = map
                .iter()
                .filter(|(_, s)| s.tenant == tenant && s.user == user)
                .map(|(k, s)| (*k, s.created))
                .collect();
            if mine.len() >= MAX_SESSIONS_PER_USER {
                if let Some((k, _)) = mine.iter().min_by_key(|(_, c)| *c) {
                    map.remove(k);
                }
            }
            if map.len() >= MAX_SESSIONS {
                let lru = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k);
                if let Some(k) = lru {
                    map.remove(&k);
                }
            }
            map.insert(
                sha256(&new.token),
                Session {
                    tenant: tenant.to_string(),
                    user: user.to_string(),
                    csrf: new.csrf.clone(),
                    hash_tag: sha256(password_hash),
                    created: now,
                    last_used: now,
                },
            );
        }
        new
    }

    /// The session of `token`, checking the CSRF token when the request changes
    /// something. Does not touch its idle timer (see [`Sessions::confirm`]).
    pub fn check(
        &self,
        token: &str,
        changes_state: bool,
        csrf: Option<&str>,
    ) -> Result<(SessionInfo, [u8; 32]), SessionRefused> {
        if token.len() > 128 {
            return Err(SessionRefused::Ended);
        }
        let key = sha256(token);
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            return Err(SessionRefused::Ended);
        };
        let Some(s) = map.get(&key) else {
            return Err(SessionRefused::Ended);
        };
        if self.expired(s, now) {
            map.remove(&key);
            return Err(SessionRefused::Ended);
        }
        if changes_state {
            let sent = csrf.ok_or(SessionRefused::CsrfMissing)?;
            if aws_lc_rs::constant_time::verify_slices_are_equal(sent.as_bytes(), s.csrf.as_bytes())
                .is_err()
            {
                return Err(SessionRefused::CsrfWrong);
            }
        }
        let info = SessionInfo {
            tenant: s.tenant.clone(),
            user: s.user.clone(),
            expires_in: self
                .lifetime
                .saturating_sub(now.duration_since(s.created))
                .as_secs(),
        };
        Ok((info, s.hash_tag))
    }

    /// After the store confirmed the user and its password: the session is used now.
    /// With `hash` `None` (the user is gone) or another password hash, it ends instead.
    pub fn confirm(&self, token: &str, tag: [u8; 32], hash: Option<&str>) -> bool {
        let key = sha256(token);
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        match hash {
            Some(h) if sha256(h) == tag => {
                if let Some(s) = map.get_mut(&key) {
                    s.last_used = Instant::now();
                    true
                } else {
                    false
                }
            }
            _ => {
                map.remove(&key);
                false
            }
        }
    }

    /// The CSRF token of a live session (for a page reloaded within its session).
    pub fn csrf(&self, token: &str) -> Option<String> {
        let map = self.map.lock().ok()?;
        map.get(&sha256(token)).map(|s| s.csrf.clone())
    }

    /// Ends one session (logout).
    pub fn end(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&sha256(token));
        }
    }

    /// Ends every session of a user (deleted, or its password changed).
    pub fn end_user(&self, tenant: &str, user: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| !(s.tenant == tenant && s.user == user));
        }
    }

    /// Ends every session of a tenant (deleted).
    pub fn end_tenant(&self, tenant: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| s.tenant != tenant);
        }
    }

    /// Sessions held now (expired ones included until they are next pruned).
    pub fn count(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_random_and_never_in_debug_output() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let a = s.create("t", "u", "hash");
        let b = s.create("t", "u", "hash");
        assert_eq!(a.token.len(), 43);
        assert_ne!(a.token, b.token);
        assert_ne!(a.token, a.csrf);
        let sessions = format!("{:?}", s.map.lock().unwrap());
        let debug = format!("{a:?} {s:?} {sessions}");
        for secret in [&a.token, &a.csrf, &b.token, &b.csrf] {
            assert!(!debug.contains(secret.as_str()), "{debug}");
        }
    }

    #[test]
    fn csrf_is_required_for_changes_and_compared_exactly() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let n = s.create("t", "u", "hash");
        assert!(s.check(&n.token, false, None).is_ok());
        assert_eq!(
            s.check(&n.token, true, None).unwrap_err(),
            SessionRefused::CsrfMissing
        );
        let mut wrong = n.csrf.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            s.check(&n.token, true, Some(&wrong)).unwrap_err(),
            SessionRefused::CsrfWrong
        );
        assert!(s.check(&n.token, true, Some(&n.csrf)).is_ok());
        let other = s.create("t", "u", "hash");
        assert_eq!(
            s.check(&n.token, true, Some(&other.csrf)).unwrap_err(),
            SessionRefused::CsrfWrong,
            "another session's token"
        );
    }

    #[test]
    fn idle_and_absolute_expiry_and_password_change_end_a_session() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(600));
        let n = s.create("t", "u", "hash");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            s.check(&n.token, false, None).unwrap_err(),
            SessionRefused::Ended
        );
        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(50));
        let n = s.create("t", "u", "hash");
        let (_, tag) = s.check(&n.token, false, None).unwrap();
        assert!(
            s.confirm(&n.token, tag, Some("hash")),
            "used: idle timer reset"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            s.check(&n.token, false, None).unwrap_err(),
            SessionRefused::Ended,
            "absolute expiry despite use"
        );
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let n = s.create("t", "u", "hash");
        let (_, tag) = s.check(&n.token, false, None).unwrap();
        assert!(!s.confirm(&n.token, tag, Some("new hash")));
        assert_eq!(
            s.check(&n.token, false, None).unwrap_err(),
            SessionRefused::Ended
        );
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_sessions() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let first = s.create("t", "u", "h");
        for _ in 1..MAX_SESSIONS_PER_USER {
            s.create("t", "u", "h");
        }
        assert!(s.check(&first.token, false, None).is_ok());
        s.create("t", "u", "h");
        assert_eq!(s.count(), MAX_SESSIONS_PER_USER);
        assert!(s.check(&first.token, false, None).is_err(), "oldest ended");
        s.end_user("t", "u");
        assert_eq!(s.count(), 0);
    }
}
