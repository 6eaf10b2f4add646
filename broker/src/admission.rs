//! Handshake admission control: token buckets (global and per source address) and a
//! cap on handshakes in progress. Checked right after accept, before any TLS work, so
//! refusing costs a `close()` and nothing else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

/// A token bucket refilled continuously.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a new connection was not admitted (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global handshake rate is exhausted.
    GlobalRate,
    /// This source address exceeded its handshake rate.
    SourceRate,
    /// Too many handshakes in progress.
    Concurrency,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::GlobalRate => "handshake_rate",
            Refusal::SourceRate => "handshake_rate_per_source",
            Refusal::Concurrency => "handshake_concurrency",
        }
    }
}

/// Admission state shared by the accept loop.
pub struct Admission {
    rate: f64,
    burst: f64,
    source_rate: f64,
    source_burst: f64,
    global: Mutex<Bucket>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    in_progress: Arc<Semaphore>,
}

/// Source entries kept before idle ones are swept.
const MAX_SOURCES: usize = 65_536;

impl Admission {
    /// From the configured limits.
    pub fn new(l: &Limits) -> Admission {
        let now = Instant::now();
        Admission {
            rate: l.handshake_rate as f64,
            burst: l.handshake_burst as f64,
            source_rate: l.handshake_rate_per_source as f64,
            source_burst: l.handshake_burst_per_source as f64,
            global: Mutex::new(Bucket::full(l.handshake_burst as f64, now)),
            sources: Mutex::new(HashMap::new()),
            in_progress: Arc::new(Semaphore::new(l.max_concurrent_handshakes)),
        }
    }

    /// Admits a new connection from `ip`, returning the handshake permit to hold until
    /// the handshake ends.
    pub fn admit(&self, ip: IpAddr) -> Result<OwnedSemaphorePermit, Refusal> {
        let now = Instant::now();
        let permit = self
            .in_progress
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Concurrency)?;
        {
            let mut sources = self.sources.lock().map_err(|_| Refusal::Concurrency)?;
            if sources.len() >= MAX_SOURCES {
                let (rate, burst) = (self.source_rate, self.source_burst);
                // A bucket that would be full again carries no information.
                sources.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
                });
            }
            let b = sources
                .entry(ip)
                .or_insert_with(|| Bucket::full(self.source_burst, now));
            if !b.take(self.source_rate, self.source_burst, now) {
                return Err(Refusal::SourceRate);
            }
        }
        let mut g = self.global.lock().map_err(|_| Refusal::Concurrency)?;
        if !g.take(self.rate, self.burst, now) {
            return Err(Refusal::GlobalRate);
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rate: u32, burst: u32, src: u32, src_burst: u32, conc: usize) -> Limits {
        Limits {
            handshake_rate: rate,
            handshake_burst: burst,
            handshake_rate_per_source: src,
            handshake_burst_per_source: src_burst,
            max_concurrent_handshakes: conc,
            ..Limits::default()
        }
    }

    #[test]
    fn bucket_refills_with_time() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        assert!(b.take(10.0, 2.0, t0));
        assert!(b.take(10.0, 2.0, t0));
        assert!(!b.take(10.0, 2.0, t0));
        // 100 ms at 10/s refills one token.
        assert!(b.take(10.0, 2.0, t0 + Duration::from_millis(100)));
        assert!(!b.take(10.0, 2.0, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn per_source_limit_does_not_punish_other_sources() {
        let a = Admission::new(&limits(1000, 1000, 1, 3, 100));
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let y: IpAddr = "127.0.0.3".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(a.admit(x).unwrap());
        }
        assert_eq!(a.admit(x).err(), Some(Refusal::SourceRate));
        assert!(a.admit(y).is_ok());
    }

    #[test]
    fn global_rate_and_concurrency() {
        let a = Admission::new(&limits(1, 2, 100, 100, 100));
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let _p1 = a.admit(x).unwrap();
        let _p2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::GlobalRate));

        let c = Admission::new(&limits(100, 100, 100, 100, 1));
        let p = c.admit(x).unwrap();
        assert_eq!(c.admit(x).err(), Some(Refusal::Concurrency));
        drop(p);
        assert!(
            c.admit(x).is_ok(),
            "the permit returns when the handshake ends"
        );
    }
}

/// Per-tenant quotas the broker enforces: devices connected at once and PUBLISH rate.
#[derive(Default)]
pub struct TenantQuotas {
    sessions: Mutex<HashMap<Arc<str>, u32>>,
    publish: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// Holds one of a tenant's session slots; released on drop.
pub struct SessionSlot {
    quotas: Arc<TenantQuotas>,
    tenant: Arc<str>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.quotas.sessions.lock() {
            if let Some(n) = m.get_mut(&self.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.tenant);
                }
            }
        }
    }
}

impl TenantQuotas {
    /// Takes a session slot unless the tenant already has `max` (0: unlimited).
    pub fn open_session(self: &Arc<Self>, tenant: &Arc<str>, max: u32) -> Option<SessionSlot> {
        let mut m = self.sessions.lock().ok()?;
        let n = m.entry(tenant.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            quotas: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Takes one PUBLISH token of the tenant's rate (`rate` per second, burst one
    /// second's worth; 0: unlimited).
    pub fn publish(&self, tenant: &Arc<str>, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut m) = self.publish.lock() else {
            return true;
        };
        let r = rate as f64;
        m.entry(tenant.clone())
            .or_insert_with(|| Bucket::full(r, now))
            .take(r, r, now)
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    #[test]
    fn session_slots_are_counted_and_released() {
        let q = Arc::new(TenantQuotas::default());
        let t: Arc<str> = Arc::from("acme");
        let a = q.open_session(&t, 2).unwrap();
        let _b = q.open_session(&t, 2).unwrap();
        assert!(q.open_session(&t, 2).is_none());
        drop(a);
        assert!(q.open_session(&t, 2).is_some());
        assert!(q.open_session(&Arc::from("other"), 2).is_some());
    }

    #[test]
    fn publish_rate_per_tenant() {
        let q = TenantQuotas::default();
        let t: Arc<str> = Arc::from("acme");
        assert!((0..5).all(|_| q.publish(&t, 5)));
        assert!(!q.publish(&t, 5));
        assert!(q.publish(&t, 0), "0 is unlimited");
    }
}
