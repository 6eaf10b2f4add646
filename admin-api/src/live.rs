//! What this node sees live, beyond the store: the devices connected to it now, and each
//! tenant's recent refusals (TLS handshake or CONNECT). Both are in memory and per node
//! (several nodes behind a load balancer each answer for their own connections); both
//! are bounded.
//!
//! The front-end feeds them: a session holds an [`OnlineGuard`] while it is open; each
//! refused handshake whose chain a tenant's key signed, and each CONNECT refused after
//! the handshake verified the device, is [`Live::refused`]. The REST API
//! reads them (`GET /tenant/tenants/{id}/connections` and `.../refusals`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, Weak};

/// Refusals remembered per tenant (the oldest is dropped first).
pub const REFUSALS_PER_TENANT: usize = 100;

/// A refused connection, as the broker's refusal log line says it: its TLS handshake,
/// or its CONNECT after the handshake verified the device (`reason` is then the
/// `mqtt_connections_refused_total` label, e.g. `device_blocked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefusal {
    /// The reason's stable label (`unknown_ca`, `certificate_expired`, ...).
    pub reason: String,
    /// The reason in words, as the log line gives it.
    pub detail: String,
    /// The device certificate's subject.
    pub subject: String,
    /// The device certificate's SHA-1 fingerprint.
    pub fingerprint: String,
    /// The source address of the connection.
    pub source: IpAddr,
}

/// A run of equal refusals (reason, fingerprint, source) in a tenant's ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRecord {
    /// First refusal of this run (Unix seconds).
    pub first: i64,
    /// Latest refusal of this run (Unix seconds).
    pub last: i64,
    /// Refusals in this run (a device retrying in a loop is one entry, not a hundred).
    pub count: u64,
    /// The latest refusal.
    pub refusal: HandshakeRefusal,
}

/// A connected device, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The device's Common Name.
    pub common_name: String,
    /// When its newest session started (Unix seconds).
    pub since: i64,
    /// The newest session's source address.
    pub source: IpAddr,
    /// Sessions of this Common Name open on this node (more than one only during a
    /// session take-over).
    pub sessions: u32,
}

#[derive(Debug)]
struct Online {
    since: i64,
    source: IpAddr,
    sessions: u32,
}

/// The live state of one node.
#[derive(Debug, Default)]
pub struct Live {
    refusals: Mutex<HashMap<String, VecDeque<RefusalRecord>>>,
    /// Per tenant, then per Common Name: a tenant's list never walks other tenants'
    /// devices, and a disconnect looks its entry up without allocating.
    online: Mutex<HashMap<String, HashMap<String, Online>>>,
}

impl Live {
    /// Records a refused handshake of `tenant` at `now` (Unix seconds). A refusal equal
    /// to the newest one (reason, fingerprint, source) extends it instead.
    pub fn refused(&self, tenant: &str, now: i64, r: HandshakeRefusal) {
        let Ok(mut all) = self.refusals.lock() else {
            return;
        };
        let ring = all.entry(tenant.to_string()).or_default();
        if let Some(newest) = ring.back_mut() {
            let n = &newest.refusal;
            if n.reason == r.reason && n.fingerprint == r.fingerprint && n.source == r.source {
                newest.last = now;
                newest.count = newest.count.saturating_add(1);
                newest.refusal = r;
                return;
            }
        }
        if ring.len() >= REFUSALS_PER_TENANT {
            ring.pop_front();
        }
        ring.push_back(RefusalRecord {
            first: now,
            last: now,
            count: 1,
            refusal: r,
        });
    }

    /// A tenant's recent refusals, newest first.
    pub fn refusals(&self, tenant: &str) -> Vec<RefusalRecord> {
        self.refusals
            .lock()
            .map(|all| {
                all.get(tenant)
                    .map(|ring| ring.iter().rev().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// The devices of a tenant connected to this node, by Common Name.
    pub fn connections(&self, tenant: &str) -> Vec<Connection> {
        let mut out: Vec<Connection> = self
            .online
            .lock()
            .ok()
            .and_then(|online| {
                online.get(tenant).map(|devices| {
                    devices
                        .iter()
                        .map(|(cn, o)| Connection {
                            common_name: cn.clone(),
                            since: o.since,
                            source: o.source,
                            sessions: o.sessions,
                        })
                        .collect()
                })
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.common_name.cmp(&b.common_name));
        out
    }

    /// Forgets a deleted tenant's refusals.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        if let Ok(mut all) = self.refusals.lock() {
            all.remove(tenant);
        }
    }

    pub(crate) fn online(&self, tenant: &str, cn: &str, source: IpAddr, now: i64) {
        if let Ok(mut online) = self.online.lock() {
            let devices = match online.get_mut(tenant) {
                Some(d) => d,
                None => online.entry(tenant.to_string()).or_default(),
            };
            let o = match devices.get_mut(cn) {
                Some(o) => o,
                None => devices.entry(cn.to_string()).or_insert(Online {
                    since: now,
                    source,
                    sessions: 0,
                }),
            };
            o.sessions = o.sessions.saturating_add(1);
            o.since = now;
            o.source = source;
        }
    }

    fn offline(&self, tenant: &str, cn: &str) {
        if let Ok(mut online) = self.online.lock() {
            let Some(devices) = online.get_mut(tenant) else {
                return;
            };
            if let Some(o) = devices.get_mut(cn) {
                o.sessions = o.sessions.saturating_sub(1);
                if o.sessions == 0 {
                    devices.remove(cn);
                }
            }
            if devices.is_empty() {
                online.remove(tenant);
            }
        }
    }
}

/// Held by an open device session: the device counts as connected until it is dropped.
#[derive(Debug)]
pub struct OnlineGuard {
    pub(crate) inner: Weak<crate::Inner>,
    pub(crate) tenant: String,
    pub(crate) cn: String,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.live.offline(&self.tenant, &self.cn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: &str, fp: &str) -> HandshakeRefusal {
        HandshakeRefusal {
            reason: reason.into(),
            detail: format!("{reason} detail"),
            subject: "CN=d".into(),
            fingerprint: fp.into(),
            source: [192, 0, 2, 1].into(),
        }
    }

    #[test]
    fn a_tenants_ring_is_bounded_newest_first_and_repeats_fold() {
        let live = Live::default();
        live.refused("t", 10, refusal("unknown_ca", "aa"));
        live.refused("t", 11, refusal("unknown_ca", "aa"));
        live.refused("t", 12, refusal("certificate_expired", "aa"));
        let got = live.refusals("t");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].refusal.reason, "certificate_expired");
        assert_eq!((got[1].first, got[1].last, got[1].count), (10, 11, 2));
        assert!(live.refusals("other").is_empty(), "per tenant");
        for i in 0..(REFUSALS_PER_TENANT as i64 + 20) {
            live.refused("t", 100 + i, refusal("unknown_ca", &format!("{i:x}")));
        }
        let got = live.refusals("t");
        assert_eq!(got.len(), REFUSALS_PER_TENANT);
        assert_eq!(got[0].first, 100 + REFUSALS_PER_TENANT as i64 + 19);
        live.forget_tenant("t");
        assert!(live.refusals("t").is_empty());
    }

    #[test]
    fn a_device_is_online_while_any_of_its_sessions_is() {
        let live = Live::default();
        let src: IpAddr = [192, 0, 2, 9].into();
        live.online("t", "d1", src, 5);
        live.online("t", "d1", src, 6);
        live.online("u", "d2", src, 7);
        assert_eq!(live.connections("t")[0].sessions, 2);
        live.offline("t", "d1");
        assert_eq!(live.connections("t")[0].since, 6);
        live.offline("t", "d1");
        assert!(live.connections("t").is_empty());
        assert_eq!(live.connections("u").len(), 1);
        live.offline("u", "d2");
        live.offline("u", "d2");
        assert!(
            live.online.lock().unwrap().is_empty(),
            "no entry outlives its sessions"
        );
    }
}
