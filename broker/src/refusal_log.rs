//! The log of refused connections: one line per (reason, source address) at most every
//! [`RefusalLog::INTERVAL`], carrying how many refusals of that key it left out since
//! the previous line. A device retrying in a loop, or a flood from one address, costs
//! one line per interval, not one per attempt; a new reason or a new source is logged
//! at once. The keys kept are bounded ([`RefusalLog::MAX_KEYS`]): beyond them, a line
//! is logged only for keys already known, and the rest are counted in `skipped`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tls::Refusal;

/// What is known about one refused connection.
#[derive(Debug, Clone, Copy)]
pub enum Refused<'a> {
    /// Closed by admission control before any TLS work (the label of the limit).
    Admission(&'static str),
    /// The device sent no client certificate.
    NoCertificate,
    /// The verifier refused the device's chain.
    Certificate(&'a Refusal),
}

impl Refused<'_> {
    fn reason(&self) -> &'static str {
        match self {
            Refused::Admission(r) => r,
            Refused::NoCertificate => "no_client_certificate",
            Refused::Certificate(r) => r.reason,
        }
    }
}

#[derive(Debug)]
struct Entry {
    last: Instant,
    suppressed: u64,
}

/// The rate-limited log of refused connections.
#[derive(Debug, Default)]
pub struct RefusalLog {
    keys: Mutex<HashMap<(&'static str, IpAddr), Entry>>,
}

impl RefusalLog {
    /// At most one line per reason and source address in this interval.
    pub const INTERVAL: Duration = Duration::from_secs(10);
    /// Keys (reason, source) remembered at most.
    pub const MAX_KEYS: usize = 4096;

    /// Logs `what` refused from `peer`, unless a line with its reason and source was
    /// logged less than [`RefusalLog::INTERVAL`] ago. Returns whether it logged.
    pub fn refused(&self, peer: IpAddr, what: Refused<'_>) -> bool {
        let now = Instant::now();
        let key = (what.reason(), peer);
        let suppressed = {
            let Ok(mut keys) = self.keys.lock() else {
                return false;
            };
            if keys.len() >= Self::MAX_KEYS && !keys.contains_key(&key) {
                keys.retain(|_, e| now.duration_since(e.last) < Self::INTERVAL);
                if keys.len() >= Self::MAX_KEYS {
                    return false;
                }
            }
            match keys.get_mut(&key) {
                Some(e) if now.duration_since(e.last) < Self::INTERVAL => {
                    e.suppressed += 1;
                    return false;
                }
                Some(e) => {
                    let n = e.suppressed;
                    *e = Entry {
                        last: now,
                        suppressed: 0,
                    };
                    n
                }
                None => {
                    keys.insert(
                        key,
                        Entry {
                            last: now,
                            suppressed: 0,
                        },
                    );
                    0
                }
            }
        };
        match what {
            Refused::Admission(reason) => tracing::warn!(
                %peer,
                reason = %reason,
                suppressed,
                "handshake refused: connection closed by admission control before TLS (see [limits])"
            ),
            Refused::NoCertificate => tracing::warn!(
                %peer,
                reason = %"no_client_certificate",
                suppressed,
                "handshake refused: the device sent no client certificate"
            ),
            Refused::Certificate(r) => tracing::warn!(
                %peer,
                reason = %r.reason,
                tenant = %r.tenant.as_deref().unwrap_or("-"),
                subject = %r.subject,
                fingerprint = %r.fingerprint,
                suppressed,
                "handshake refused: {}",
                r.detail
            ),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_reason_and_source_within_the_interval() {
        let log = RefusalLog::default();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        assert!(log.refused(a, Refused::NoCertificate));
        assert!(!log.refused(a, Refused::NoCertificate));
        assert!(log.refused(b, Refused::NoCertificate), "another source");
        assert!(log.refused(a, Refused::Admission("rate")), "another reason");
        assert!(!log.refused(a, Refused::Admission("rate")));
        // After the interval the key logs again, with the count it left out.
        if let Ok(mut keys) = log.keys.lock() {
            let e = keys.get_mut(&("no_client_certificate", a)).unwrap();
            assert_eq!(e.suppressed, 1);
            e.last -= RefusalLog::INTERVAL;
        }
        assert!(log.refused(a, Refused::NoCertificate));
    }

    #[test]
    fn keys_are_bounded() {
        let log = RefusalLog::default();
        for i in 0..RefusalLog::MAX_KEYS as u32 {
            assert!(log.refused(IpAddr::from(i.to_be_bytes()), Refused::NoCertificate));
        }
        let new: IpAddr = [203, 0, 113, 9].into();
        assert!(
            !log.refused(new, Refused::NoCertificate),
            "full: not logged"
        );
        assert_eq!(log.keys.lock().unwrap().len(), RefusalLog::MAX_KEYS);
    }
}
