//! Bounded password checking: argon2 runs on a small fixed pool of threads behind a
//! bounded queue, and recent successful checks are remembered for a short time.
//!
//! Why: one argon2id check holds its memory cost (19 MiB by default). Run from the
//! blocking thread pool, checks landed on many different threads; each thread's malloc
//! arena kept the freed 19 MiB, so a flood of valid logins grew the process to gigabytes.
//! A few long-lived threads reuse their own freed memory; the queue bound turns excess
//! load into a 503 instead of memory; the cache answers a client that repeats the same
//! credentials on every request without running argon2 again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

/// One check waiting for a worker.
struct Job {
    hash: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Why a check was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckRefused {
    /// Every worker is busy and the queue is full.
    Busy,
    /// The workers are gone (the process is shutting down).
    Stopped,
}

/// Most remembered successful checks.
const CACHE_CAPACITY: usize = 1024;

/// The pool, the queue and the cache.
pub(crate) struct PasswordChecker {
    tx: Mutex<Option<SyncSender<Job>>>,
    runs: Arc<AtomicU64>,
    cache_key: hmac::Key,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    /// Checks running or queued, by cache key: the same credentials arriving again
    /// meanwhile wait for that check's result instead of queueing another.
    inflight: Mutex<HashMap<[u8; 32], tokio::sync::watch::Receiver<Option<bool>>>>,
}

/// Removes an in-flight entry when its check ends, however it ends (also when the
/// request is dropped), so waiters never wait for a check nobody runs.
struct InflightGuard<'a> {
    checker: &'a PasswordChecker,
    key: [u8; 32],
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.checker.inflight.lock() {
            inflight.remove(&self.key);
        }
    }
}

impl PasswordChecker {
    /// Starts `threads` workers with room for `queue` waiting checks; successful checks
    /// are remembered for `cache_ttl` (zero: not at all).
    pub(crate) fn new(threads: usize, queue: usize, cache_ttl: Duration) -> PasswordChecker {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let runs = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let runs = runs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || worker(&rx, &runs));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-check thread");
            }
        }
        // A per-process random key: cache keys are useless outside this process.
        let secret: [u8; 32] = rand::Rng::gen(&mut rand::thread_rng());
        let cache_key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        PasswordChecker {
            tx: Mutex::new(Some(tx)),
            runs,
            cache_key,
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Argon2 checks run so far (cache hits excluded).
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The cache key of a credential: HMAC-SHA-256 under the process key over the
    /// tenant, user, password and the stored hash string, each length-prefixed. A new
    /// password hash (a password change) gives new keys, so old entries never match.
    fn cache_key(&self, tenant: &str, user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        for part in [tenant, user, password, hash] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }

    /// True when these exact credentials were checked successfully against this exact
    /// hash within the cache lifetime.
    pub(crate) fn cached(&self, tenant: &str, user: &str, password: &str, hash: &str) -> bool {
        if self.cache_ttl.is_zero() {
            return false;
        }
        let key = self.cache_key(tenant, user, password, hash);
        let now = Instant::now();
        let Ok(mut cache) = self.cache.lock() else {
            return false;
        };
        match cache.get(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                cache.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Checks `password` against `hash` for this tenant and user: one argon2 run on the
    /// pool, shared with any identical check already running, remembered when it
    /// succeeds.
    pub(crate) async fn verify(
        &self,
        tenant: &str,
        user: &str,
        password: &str,
        hash: &str,
    ) -> Result<bool, CheckRefused> {
        let key = self.cache_key(tenant, user, password, hash);
        loop {
            let (tx, waiting) = {
                let Ok(mut inflight) = self.inflight.lock() else {
                    return Err(CheckRefused::Stopped);
                };
                match inflight.get(&key) {
                    Some(rx) => (None, Some(rx.clone())),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        inflight.insert(key, rx);
                        (Some(tx), None)
                    }
                }
            };
            if let Some(mut rx) = waiting {
                match rx.wait_for(Option::is_some).await {
                    Ok(v) => return Ok(v.unwrap_or(false)),
                    // The running check was refused or dropped: try again.
                    Err(_) => continue,
                }
            }
            let _guard = InflightGuard { checker: self, key };
            let ok = self.check(hash.to_string(), password.to_string()).await?;
            if ok {
                self.remember_key(key);
            }
            if let Some(tx) = tx {
                let _ = tx.send(Some(ok));
            }
            return Ok(ok);
        }
    }

    /// Remembers a successful check.
    fn remember_key(&self, key: [u8; 32]) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, until| *until > now);
        }
        if cache.len() < CACHE_CAPACITY {
            cache.insert(key, now + self.cache_ttl);
        }
    }

    /// Queues a check; `Busy` at once when the workers and the queue are full.
    async fn check(&self, hash: String, password: String) -> Result<bool, CheckRefused> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
        };
        let sent = match self.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => tx.try_send(job),
                None => return Err(CheckRefused::Stopped),
            },
            Err(_) => return Err(CheckRefused::Stopped),
        };
        match sent {
            Ok(()) => rx.await.map_err(|_| CheckRefused::Stopped),
            Err(TrySendError::Full(_)) => Err(CheckRefused::Busy),
            Err(TrySendError::Disconnected(_)) => Err(CheckRefused::Stopped),
        }
    }
}

impl Drop for PasswordChecker {
    fn drop(&mut self) {
        // Closing the queue lets the workers finish what is queued and exit.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, runs: &AtomicU64) {
    // This thread's argon2 memory, allocated once and reused by every check.
    let mut memory = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let ok = super::verify_password_in(&job.hash, &job.password, &mut memory);
        runs.fetch_add(1, Ordering::Relaxed);
        // The requester may have gone (client disconnected): nothing to do then.
        let _ = job.reply.send(ok);
    }
}
