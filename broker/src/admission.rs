//! Handshake admission control: token buckets (global and per source address), a cap on
//! handshakes in progress, and a cap on handshakes in progress from one source. Checked
//! right after accept, before any TLS work, so refusing costs a `close()` and nothing
//! else.
//!
//! A source is an IPv4 address, or an IPv6 /64 (the prefix one subscriber line or one
//! host usually gets: per address, one IPv6 host could take 2^64 slots). An IPv4-mapped
//! IPv6 address is its IPv4 address. The per-source cap keeps one address from holding
//! the global handshake slots with idle sockets; the first-byte timeout
//! ([`SourceLimits::first_byte_timeout_ms`]) frees a slot held by a socket that sends
//! nothing long before the handshake timeout would.
//!
//! The global rate follows [`Pressure`]: while established sessions are forwarding
//! packets and the runtime that serves them starts to lag, the admitted share of the
//! configured rate is halved every probe; it grows back when the lag is gone. New
//! connections get the CPU that the connected devices leave.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Too many handshakes in progress from this source address.
    SourceConcurrency,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::GlobalRate => "handshake_rate",
            Refusal::SourceRate => "handshake_rate_per_source",
            Refusal::Concurrency => "handshake_concurrency",
            Refusal::SourceConcurrency => "handshake_per_source",
        }
    }
}

/// Feedback from the established sessions to handshake admission: the share of the
/// configured handshake rate admitted right now, in 1/[`Pressure::FULL`].
pub struct Pressure {
    share: AtomicU32,
    /// Message traffic since the last probe (set by sessions, taken by the probe).
    traffic: AtomicBool,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            share: AtomicU32::new(Pressure::FULL),
            traffic: AtomicBool::new(false),
        }
    }
}

impl Pressure {
    /// The whole configured rate.
    pub const FULL: u32 = 1024;
    /// The least share admitted under pressure (1/64 of the configured rate).
    pub const MIN: u32 = Pressure::FULL / 64;
    /// Growth of the share per probe without lag (from the least to the whole rate in
    /// about 1.3 s).
    pub const STEP: u32 = Pressure::FULL / 256;
    /// Interval between two probes of the sessions' runtime.
    pub const PROBE: Duration = Duration::from_millis(5);

    /// Notes that a session forwarded message packets (PUBLISH and its
    /// acknowledgements): the probe only acts while there is such traffic to protect.
    /// Sessions call it per batch, so it writes the shared flag only when it is unset.
    pub fn note_traffic(&self) {
        if !self.traffic.load(Ordering::Relaxed) {
            self.traffic.store(true, Ordering::Relaxed);
        }
    }

    /// The share of the configured rate admitted now, 0.0..=1.0.
    pub fn share(&self) -> f64 {
        self.share.load(Ordering::Relaxed) as f64 / Pressure::FULL as f64
    }

    /// One probe result: `lag` is how late the sessions' runtime ran a ready task.
    /// Returns the new share.
    pub fn update(&self, lag: Duration, target: Duration) -> u32 {
        let active = self.traffic.swap(false, Ordering::Relaxed);
        let share = self.share.load(Ordering::Relaxed);
        let next = if active && lag > target {
            (share / 2).max(Pressure::MIN)
        } else {
            (share + Pressure::STEP).min(Pressure::FULL)
        };
        self.share.store(next, Ordering::Relaxed);
        next
    }

    /// Feeds `shared.pressure` until `stop` resolves. Every [`Pressure::PROBE`] it
    /// measures how late the sessions' runtime (the one it runs on) runs a ready task, and
    /// how much longer than usual a message takes through the embedded broker
    /// ([`crate::backend::Echo`]); the longer of the two is the lag. Every new share goes
    /// to the metrics.
    pub async fn probe(
        shared: Arc<crate::Shared>,
        target: Duration,
        stop: impl std::future::Future,
    ) {
        let pressure = &shared.pressure;
        let mut stop = std::pin::pin!(stop);
        let mut last = Pressure::FULL;
        shared.metrics.set_admission_share(1.0);
        // Only through the embedded broker: an external cluster's wildcard subscribers
        // must not see the probe's messages.
        let embedded = matches!(
            shared.config.backend(),
            Ok(crate::config::Backend::Embedded)
        );
        let mut echo: Option<crate::backend::Echo> = None;
        let mut retry_at = tokio::time::Instant::now();
        // The usual round trip: the least seen in this window and the previous one.
        let mut base = [Duration::MAX; 2];
        let mut window = tokio::time::Instant::now();
        let mut deadline = tokio::time::Instant::now() + Pressure::PROBE;
        let mut smooth = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = &mut stop => return,
            }
            let woke = tokio::time::Instant::now();
            // The timer wheel has a 1 ms resolution: lateness within it is not lag.
            let late = woke
                .saturating_duration_since(deadline)
                .saturating_sub(Duration::from_millis(1));
            tokio::task::yield_now().await;
            let mut lag = late.max(woke.elapsed());
            if embedded && echo.is_none() && woke >= retry_at {
                let connect = crate::backend::Echo::connect(&shared.backend);
                match tokio::time::timeout(Duration::from_secs(1), connect).await {
                    Ok(Ok(e)) => echo = Some(e),
                    _ => retry_at = woke + Duration::from_secs(1),
                }
            }
            if let Some(e) = echo.as_mut() {
                match tokio::time::timeout(Duration::from_secs(1), e.round_trip()).await {
                    Ok(Ok(rtt)) => {
                        if woke.duration_since(window) > Duration::from_secs(5) {
                            base = [base[1], Duration::MAX];
                            window = woke;
                        }
                        base[1] = base[1].min(rtt);
                        lag = lag.max(rtt.saturating_sub(base[0].min(base[1])));
                    }
                    Ok(Err(_)) => echo = None,
                    Err(_) => {
                        lag = lag.max(Duration::from_secs(1));
                        echo = None;
                    }
                }
            }
            // Smoothed over about four probes: one late probe is noise, not pressure.
            smooth = (smooth * 3 + lag) / 4;
            let now = pressure.update(smooth, target);
            if now != last {
                last = now;
                shared.metrics.set_admission_share(pressure.share());
            }
            deadline = tokio::time::Instant::now() + Pressure::PROBE;
        }
    }
}

/// Per-source handshake limits of the MQTT listener.
///
/// Not yet in [`crate::config::Limits`]: [`crate::start`] uses the defaults,
/// [`crate::start_tuned`] takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// TLS handshakes in progress at once from one source (an IPv4 address or an IPv6
    /// /64); excess connections are closed before any TLS work and counted as
    /// `refused{reason="handshake_per_source"}`. 0: no per-source cap. Default 64, an
    /// eighth of the default global cap (512): one address cannot hold the slots every
    /// other device needs, while a NAT in front of a fleet still gets 640 handshakes a
    /// second at a 100 ms round trip.
    pub max_handshakes_per_source: usize,
    /// Time from accept until the first byte of the TLS ClientHello arrives,
    /// milliseconds; a socket that sends nothing is closed then (counted as
    /// `mqtt_tls_handshakes_total{outcome="failed",reason="first_byte_timeout"}`), not
    /// after the whole handshake timeout. A device sends its ClientHello right after
    /// the TCP handshake. Default 2,000.
    pub first_byte_timeout_ms: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_handshakes_per_source: 64,
            first_byte_timeout_ms: 2_000,
        }
    }
}

/// The source an address counts against: IPv4 addresses and IPv4-mapped IPv6 addresses
/// as the IPv4 address, other IPv6 addresses by their /64 prefix.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Counts what each source holds (handshakes in progress, admin connections) against
/// a cap. Entries exist only while non-zero, so there are never more entries than
/// slots held.
#[derive(Clone)]
pub struct PerSource {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

impl PerSource {
    /// At most `max` slots per source (0: no cap, only counted).
    pub fn new(max: usize) -> PerSource {
        PerSource {
            held: Arc::default(),
            max,
        }
    }

    /// Takes one of `ip`'s source's slots, unless it holds `max` already.
    pub fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = source_of(ip);
        let mut m = self.held.lock().ok()?;
        let n = m.entry(source).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            held: self.held.clone(),
            source,
        })
    }

    /// Sources holding at least one slot.
    pub fn sources(&self) -> usize {
        self.held.lock().map_or(0, |m| m.len())
    }
}

/// One slot of a source; returns on drop.
pub struct SourceSlot {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.held.lock() {
            if let Some(n) = m.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.source);
                }
            }
        }
    }
}

/// Held while a handshake is in progress: one of the global slots and one of its
/// source's; both return on drop.
pub struct HandshakePermit {
    _source: SourceTurn,
    _global: OwnedSemaphorePermit,
}

/// How many connections may wait for a handshake slot, per slot: beyond
/// `QUEUE_PER_SLOT` times the global (per-source) cap on handshakes in progress, new
/// connections are closed before any TLS work.
const QUEUE_PER_SLOT: usize = 8;

/// A connection admitted at the rate: its place in the queue (globally and for its
/// source) until [`Ticket::admitted`] gets it its handshake slots.
pub struct Ticket {
    /// Its turn at the handshake rate comes after this wait (zero when the rate had room).
    pub wait: Duration,
    /// The queue time left after the wait for a free handshake slot.
    slot_wait: Duration,
    source: IpAddr,
    slots: Arc<SourceQueues>,
    in_progress: Arc<Semaphore>,
    _queued: SourceSlot,
    _queued_global: OwnedSemaphorePermit,
}

impl Ticket {
    /// Waits for the connection's turn at the rate, then for one of its source's
    /// handshake slots and one of the global ones, each in arrival order, within the
    /// queue time. Without a queue (`handshake_queue_ms = 0`) nothing waits: a source
    /// or the node without a free slot refuses at once, as before the queue.
    pub async fn admitted(self) -> Result<HandshakePermit, Refusal> {
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
        let deadline = tokio::time::Instant::now() + self.slot_wait;
        let source = self
            .slots
            .acquire(self.source, deadline)
            .await
            .ok_or(Refusal::SourceConcurrency)?;
        let global = match self.in_progress.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if self.slot_wait.is_zero() => return Err(Refusal::Concurrency),
            Err(_) => tokio::time::timeout_at(deadline, self.in_progress.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(Refusal::Concurrency)?,
        };
        Ok(HandshakePermit {
            _source: source,
            _global: global,
        })
    }
}

/// Each source's handshake slots, which its connections wait for in arrival order. A
/// source's entry exists while a connection holds or waits for one of its slots.
pub struct SourceQueues {
    max: usize,
    sources: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl SourceQueues {
    fn new(max: usize) -> Arc<SourceQueues> {
        Arc::new(SourceQueues {
            max,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// One of `source`'s slots, waiting until `deadline` at most (`None`: none came).
    async fn acquire(
        self: &Arc<Self>,
        source: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Option<SourceTurn> {
        if self.max == 0 {
            return Some(SourceTurn {
                permit: None,
                queues: self.clone(),
                source,
            });
        }
        // Declared before the semaphore's clone, so dropped after it: waiting or not,
        // the entry is removed once nobody holds or waits for it.
        let mut turn = SourceTurn {
            permit: None,
            queues: self.clone(),
            source,
        };
        let sem = self
            .sources
            .lock()
            .ok()?
            .entry(source)
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if tokio::time::Instant::now() >= deadline => return None,
            Err(_) => tokio::time::timeout_at(deadline, sem.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        drop(sem);
        turn.permit = Some(permit);
        Some(turn)
    }
}

#[cfg(test)]
impl SourceQueues {
    /// Sources with an entry.
    fn len(&self) -> usize {
        self.sources.lock().map_or(0, |m| m.len())
    }
}

/// One of a source's handshake slots (or an attempt at one); returns on drop, and the
/// source's entry goes when nothing else holds or waits for it.
pub struct SourceTurn {
    permit: Option<OwnedSemaphorePermit>,
    queues: Arc<SourceQueues>,
    source: IpAddr,
}

impl Drop for SourceTurn {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Ok(mut m) = self.queues.sources.lock() {
            if m.get(&self.source)
                .is_some_and(|sem| Arc::strong_count(sem) == 1)
            {
                m.remove(&self.source);
            }
        }
    }
}

/// Admission state shared by the accept loop.
pub struct Admission {
    rate: f64,
    burst: f64,
    pressure: Arc<Pressure>,
    /// Longest wait for a turn at the global rate (`limits.handshake_queue_ms`).
    queue: Duration,
    source_rate: f64,
    source_burst: f64,
    global: Mutex<Bucket>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    in_progress: Arc<Semaphore>,
    /// Connections admitted and not yet done with their handshake (waiting or in
    /// progress), globally and per source: [`QUEUE_PER_SLOT`] times the slot caps.
    queued: Arc<Semaphore>,
    queued_per_source: PerSource,
    per_source: Arc<SourceQueues>,
}

/// Source entries kept before idle ones are swept.
const MAX_SOURCES: usize = 65_536;

impl Admission {
    /// From the configured limits; the global rate follows `pressure`.
    pub fn new(l: &Limits, source: &SourceLimits, pressure: Arc<Pressure>) -> Admission {
        let now = Instant::now();
        Admission {
            rate: l.handshake_rate as f64,
            burst: l.handshake_burst as f64,
            pressure,
            // The wait counts against the handshake timeout: at most half of it.
            queue: Duration::from_millis(l.handshake_queue_ms.min(l.handshake_timeout_ms / 2)),
            source_rate: l.handshake_rate_per_source as f64,
            source_burst: l.handshake_burst_per_source as f64,
            global: Mutex::new(Bucket::full(l.handshake_burst as f64, now)),
            sources: Mutex::new(HashMap::new()),
            in_progress: Arc::new(Semaphore::new(l.max_concurrent_handshakes)),
            queued: Arc::new(Semaphore::new(
                l.max_concurrent_handshakes.saturating_mul(QUEUE_PER_SLOT),
            )),
            queued_per_source: PerSource::new(
                source
                    .max_handshakes_per_source
                    .saturating_mul(QUEUE_PER_SLOT),
            ),
            per_source: SourceQueues::new(source.max_handshakes_per_source),
        }
    }

    /// Admits a new connection from `ip` to the handshake queue, or refuses it at once:
    /// its source queues too many connections already (`handshake_per_source`), the
    /// node does (`handshake_concurrency`), its source exceeded its rate
    /// (`handshake_rate_per_source`), or its turn at the global rate would come later
    /// than the queue time (`handshake_rate`). The turn is the bucket going below zero
    /// by one token: turns are handed out in arrival order, at the admitted rate.
    /// [`Ticket::admitted`] then waits for the turn and the handshake slots.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refusal> {
        let now = Instant::now();
        let ip = source_of(ip);
        let queued = self
            .queued_per_source
            .take(ip)
            .ok_or(Refusal::SourceConcurrency)?;
        let queued_global = self
            .queued
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
        let share = self.pressure.share();
        let mut g = self.global.lock().map_err(|_| Refusal::Concurrency)?;
        // Under pressure, tokens saved up earlier do not count beyond the reduced burst.
        let burst = (self.burst * share).max(1.0);
        g.tokens = g.tokens.min(burst);
        let rate = self.rate * share;
        let mut wait = Duration::ZERO;
        if !g.take(rate, burst, now) {
            // g.take refilled the bucket up to now: the turn comes when the missing
            // part of a token (and the turns handed out before) has refilled.
            wait = Duration::from_secs_f64((1.0 - g.tokens) / rate);
            if wait > self.queue {
                return Err(Refusal::GlobalRate);
            }
            g.tokens -= 1.0;
        }
        Ok(Ticket {
            wait,
            slot_wait: self.queue.saturating_sub(wait),
            source: ip,
            slots: self.per_source.clone(),
            in_progress: self.in_progress.clone(),
            _queued: queued,
            _queued_global: queued_global,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn new(l: &Limits, pressure: Arc<Pressure>) -> Admission {
        Admission::new(l, &SourceLimits::default(), pressure)
    }

    /// Admitted and through the queue (with no queue: at once or refused).
    async fn now(a: &Admission, ip: IpAddr) -> Result<HandshakePermit, Refusal> {
        a.admit(ip)?.admitted().await
    }

    fn limits(rate: u32, burst: u32, src: u32, src_burst: u32, conc: usize) -> Limits {
        Limits {
            handshake_rate: rate,
            handshake_burst: burst,
            handshake_rate_per_source: src,
            handshake_burst_per_source: src_burst,
            max_concurrent_handshakes: conc,
            handshake_queue_ms: 0,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn a_used_up_rate_hands_out_turns_in_order_within_the_queue_time() {
        let l = Limits {
            handshake_queue_ms: 250,
            ..limits(10, 2, 1000, 1000, 100)
        };
        let a = new(&l, Default::default());
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let mut held = Vec::new();
        // The burst: no wait.
        for _ in 0..2 {
            let t = a.admit(x).unwrap();
            assert_eq!(t.wait, Duration::ZERO);
            held.push(t);
        }
        // Then one turn every 100 ms at 10/s, in arrival order, as long as the turn
        // comes within 250 ms.
        let waits: Vec<u128> = (0..2)
            .map(|_| {
                let t = a.admit(x).unwrap();
                let w = t.wait.as_millis();
                held.push(t);
                w
            })
            .collect();
        assert!((90..=100).contains(&waits[0]), "{waits:?}");
        assert!((190..=200).contains(&waits[1]), "{waits:?}");
        assert_eq!(a.admit(x).err(), Some(Refusal::GlobalRate));
        // The queue holds at most 8 connections per handshake slot.
        let one = Limits {
            handshake_queue_ms: 1000,
            ..limits(1000, 1000, 1000, 1000, 1)
        };
        let b = new(&one, Default::default());
        let queued: Vec<Ticket> = (0..QUEUE_PER_SLOT).map(|_| b.admit(x).unwrap()).collect();
        assert_eq!(b.admit(x).err(), Some(Refusal::Concurrency));
        drop(queued);
        assert!(b.admit(x).is_ok());
    }

    #[tokio::test]
    async fn connections_wait_for_a_free_slot_in_arrival_order_within_the_queue_time() {
        let l = Limits {
            handshake_queue_ms: 2_000,
            ..limits(1000, 1000, 1000, 1000, 100)
        };
        let src = SourceLimits {
            max_handshakes_per_source: 1,
            ..SourceLimits::default()
        };
        let a = Admission::new(&l, &src, Default::default());
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let first = now(&a, x).await.unwrap();
        // Two more from the same source wait for its one slot, in order.
        let second = tokio::spawn({
            let t = a.admit(x).unwrap();
            async move { t.admitted().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = tokio::spawn({
            let t = a.admit(x).unwrap();
            async move { t.admitted().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished() && !third.is_finished());
        drop(first);
        let second = second
            .await
            .unwrap()
            .expect("the first waiting gets the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "one slot, one handshake");
        drop(second);
        let third = third.await.unwrap().expect("then the next");
        // Another source never waits behind this one.
        assert!(now(&a, "127.0.0.3".parse().unwrap()).await.is_ok());
        // Beyond the queue time the wait ends in a refusal.
        let short = Limits {
            handshake_queue_ms: 100,
            ..l.clone()
        };
        let b = Admission::new(&short, &src, Default::default());
        let _held = now(&b, x).await.unwrap();
        assert_eq!(now(&b, x).await.err(), Some(Refusal::SourceConcurrency));
        // The same for the node's slots: another source waits, then is refused.
        let one_slot = Limits {
            handshake_queue_ms: 100,
            ..limits(1000, 1000, 1000, 1000, 1)
        };
        let c = Admission::new(&one_slot, &SourceLimits::default(), Default::default());
        let _only = now(&c, x).await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            now(&c, "127.0.0.9".parse().unwrap()).await.err(),
            Some(Refusal::Concurrency)
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(90),
            "it waited its turn first"
        );
        drop(third);
        assert_eq!(a.per_source.len(), 0, "no entry outlives its connections");
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

    #[tokio::test]
    async fn per_source_limit_does_not_punish_other_sources() {
        let a = new(&limits(1000, 1000, 1, 3, 100), Default::default());
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let y: IpAddr = "127.0.0.3".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(now(&a, x).await.unwrap());
        }
        assert_eq!(now(&a, x).await.err(), Some(Refusal::SourceRate));
        assert!(now(&a, y).await.is_ok());
    }

    #[tokio::test]
    async fn global_rate_and_concurrency() {
        let a = new(&limits(1, 2, 100, 100, 100), Default::default());
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        let _p1 = now(&a, x).await.unwrap();
        let _p2 = now(&a, x).await.unwrap();
        assert_eq!(now(&a, x).await.err(), Some(Refusal::GlobalRate));

        let c = new(&limits(100, 100, 100, 100, 1), Default::default());
        let p = now(&c, x).await.unwrap();
        assert_eq!(now(&c, x).await.err(), Some(Refusal::Concurrency));
        drop(p);
        assert!(
            now(&c, x).await.is_ok(),
            "the permit returns when the handshake ends"
        );
    }

    #[tokio::test]
    async fn one_source_holds_at_most_its_share_of_handshake_slots() {
        let l = limits(1000, 1000, 1000, 1000, 100);
        let src = SourceLimits {
            max_handshakes_per_source: 2,
            ..SourceLimits::default()
        };
        let a = Admission::new(&l, &src, Default::default());
        let x: IpAddr = "127.0.0.1".parse().unwrap();
        let p1 = now(&a, x).await.unwrap();
        let _p2 = now(&a, x).await.unwrap();
        assert_eq!(now(&a, x).await.err(), Some(Refusal::SourceConcurrency));
        // The same address written as IPv4-mapped IPv6 is the same source.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            now(&a, mapped).await.err(),
            Some(Refusal::SourceConcurrency)
        );
        assert!(now(&a, "127.0.0.2".parse().unwrap()).await.is_ok());
        drop(p1);
        assert!(
            now(&a, x).await.is_ok(),
            "the slot returns when the handshake ends"
        );

        // IPv6: one /64 is one source, the next /64 another.
        let _q1 = now(&a, "2001:db8:0:1::1".parse().unwrap()).await.unwrap();
        let _q2 = now(&a, "2001:db8:0:1:ffff::2".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            now(&a, "2001:db8:0:1::3".parse().unwrap()).await.err(),
            Some(Refusal::SourceConcurrency)
        );
        assert!(now(&a, "2001:db8:0:2::1".parse().unwrap()).await.is_ok());
        assert_eq!(
            a.per_source.len(),
            2,
            "entries exist only while handshakes are in progress"
        );
    }

    #[test]
    fn pressure_halves_under_lag_with_traffic_and_recovers() {
        let p = Pressure::default();
        let target = Duration::from_millis(1);
        let lag = Duration::from_millis(3);
        // No traffic to protect: lag alone does not reduce admission.
        assert_eq!(p.update(lag, target), Pressure::FULL);
        p.note_traffic();
        assert_eq!(p.update(lag, target), Pressure::FULL / 2);
        p.note_traffic();
        assert_eq!(p.update(lag, target), Pressure::FULL / 4);
        for _ in 0..10 {
            p.note_traffic();
            p.update(lag, target);
        }
        assert_eq!(
            p.update(Duration::ZERO, target),
            Pressure::MIN + Pressure::STEP
        );
        for _ in 0..300 {
            p.update(Duration::ZERO, target);
        }
        assert_eq!(p.share(), 1.0);
    }

    #[tokio::test]
    async fn admission_follows_pressure() {
        let pressure = Arc::new(Pressure::default());
        let a = new(&limits(1, 64, 1000, 1000, 1000), pressure.clone());
        let x: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..6 {
            pressure.note_traffic();
            pressure.update(Duration::from_secs(1), Duration::from_millis(1));
        }
        // 1/64 of a burst of 64: one handshake, then the global rate refuses.
        let _p = now(&a, x).await.unwrap();
        assert_eq!(now(&a, x).await.err(), Some(Refusal::GlobalRate));
    }
}

/// Per-tenant quotas the broker enforces: devices connected at once and PUBLISH rate.
#[derive(Default)]
pub struct TenantQuotas {
    sessions: Mutex<HashMap<Arc<str>, u32>>,
    /// Sessions other front-end nodes on the same database hold, per tenant (as they
    /// last reported them): counted against `maxDevices` too.
    remote: Mutex<HashMap<String, u64>>,
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
        let elsewhere = match max {
            0 => 0,
            _ => self
                .remote
                .lock()
                .ok()
                .and_then(|r| r.get(&**tenant).copied())
                .unwrap_or(0),
        };
        let mut m = self.sessions.lock().ok()?;
        // A refusal leaves no entry behind (it would be reported to the other nodes
        // forever: only a slot's drop removes one).
        let here = m.get(&**tenant).copied().unwrap_or(0);
        if max > 0 && u64::from(here) + elsewhere >= u64::from(max) {
            return None;
        }
        *m.entry(tenant.clone()).or_insert(0) += 1;
        Some(SessionSlot {
            quotas: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// This node's sessions per tenant (reported to the other nodes).
    pub fn local_sessions(&self) -> Vec<(String, u32)> {
        self.sessions
            .lock()
            .map(|m| m.iter().map(|(t, n)| (t.to_string(), *n)).collect())
            .unwrap_or_default()
    }

    /// Replaces what the other nodes hold per tenant.
    pub fn set_remote_sessions(&self, elsewhere: HashMap<String, u64>) {
        if let Ok(mut r) = self.remote.lock() {
            *r = elsewhere;
        }
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
    fn sessions_on_other_nodes_count_against_the_limit() {
        let q = Arc::new(TenantQuotas::default());
        let t: Arc<str> = Arc::from("acme");
        let _a = q.open_session(&t, 3).unwrap();
        q.set_remote_sessions(HashMap::from([("acme".to_string(), 2)]));
        assert!(q.open_session(&t, 3).is_none(), "1 here + 2 elsewhere");
        assert!(q.open_session(&t, 0).is_some(), "0 is unlimited");
        assert_eq!(q.local_sessions(), [("acme".to_string(), 1)]);
        q.set_remote_sessions(HashMap::new());
        assert!(q.open_session(&t, 3).is_some());
        // A tenant with no session here, full through the other nodes alone: refused,
        // and nothing is left to report for it.
        let g: Arc<str> = Arc::from("globex");
        q.set_remote_sessions(HashMap::from([("globex".to_string(), 2)]));
        assert!(q.open_session(&g, 2).is_none());
        assert!(
            q.local_sessions().iter().all(|(t, _)| t != "globex"),
            "{:?}",
            q.local_sessions()
        );
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
