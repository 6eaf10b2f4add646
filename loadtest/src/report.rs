//! The result of a run: a serializable [`Report`], the percentile and rate math behind it,
//! and the human-readable summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{KeyType, MqttVersion, Scenario};

/// Latency percentiles in milliseconds; `null` fields when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Arithmetic mean.
    pub mean: Option<f64>,
}

/// A histogram of microseconds, 3 significant digits, up to one hour.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Records `d` in microseconds (at least 1 µs, clamped to the histogram's range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl LatencyMs {
    /// Percentiles of a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencyMs {
        let count = h.len();
        if count == 0 {
            return LatencyMs::default();
        }
        let ms = |us: u64| Some(round3(us as f64 / 1000.0));
        LatencyMs {
            count,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: Some(round3(h.mean() / 1000.0)),
        }
    }
}

/// Events per second over a window; the window is at least one millisecond so that a
/// single event does not produce an absurd rate.
pub fn rate_per_s(count: u64, window: Duration) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let secs = window.max(Duration::from_millis(1)).as_secs_f64();
    round3(count as f64 / secs)
}

/// Parameters of the run, echoed for whoever reads the report later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Simulated devices.
    pub devices: usize,
    /// Subscribers timing every message.
    pub subscribers: usize,
    /// PUBLISH per device.
    pub messages_per_device: u32,
    /// Pause between two PUBLISH of a device, in milliseconds.
    pub publish_interval_ms: u64,
    /// QoS of publications and subscriptions.
    pub qos: u8,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// MQTT protocol version.
    pub mqtt: MqttVersion,
    /// Key algorithm of device certificates.
    pub key_type: KeyType,
    /// Configured connect rate (steady and revoke scenarios).
    pub connect_rate: f64,
    /// Most connection attempts in flight.
    pub concurrency: usize,
    /// Number of source addresses used round-robin.
    pub source_ips: usize,
    /// Configured time limit in seconds.
    pub duration_s: u64,
    /// Plain TCP instead of mutual TLS (`--plain`): no TLS, and no authentication but an
    /// MQTT username and password (`--credentials-file`).
    #[serde(default)]
    pub plain: bool,
    /// Broker addresses the devices were spread over.
    #[serde(default = "one")]
    pub brokers: usize,
    /// Seconds the idle sessions were held open before the broker's memory was read.
    #[serde(default)]
    pub hold_s: f64,
    /// Whether devices waited for the whole fleet to connect before publishing.
    #[serde(default)]
    pub sync_start: bool,
}

fn one() -> usize {
    1
}

/// Certificate preparation (not part of any connect figure).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertsReport {
    /// Client certificates issued (devices and subscribers).
    pub issued: usize,
    /// Wall-clock seconds spent generating keys and certificates.
    pub generation_s: f64,
    /// Whether the CA was generated for this run (`false`: loaded from `--ca-cert`).
    pub ca_generated: bool,
    /// Whether the CA was uploaded through the admin API.
    pub ca_uploaded: bool,
    /// Tenant the CA was uploaded to.
    pub tenant: Option<String>,
    /// SHA-1 fingerprint the admin API returned for the CA.
    pub ca_fingerprint: Option<String>,
    /// Whether the tenant the run created was deleted at its end (`false` with
    /// `--keep`, or when the deletion failed: see `errors`).
    #[serde(default)]
    pub tenant_deleted: bool,
}

/// Connection figures of the devices' first connection attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Attempts started.
    pub attempted: u64,
    /// Attempts that reached an accepted CONNACK.
    pub succeeded: u64,
    /// Attempts that failed (by kind in `errors`).
    pub failed: u64,
    /// `succeeded` divided by the time from the first attempt to the last CONNACK.
    pub rate_per_s: f64,
    /// Seconds from the first attempt to the last CONNACK, retries included: with every
    /// device connected, the time the fleet needed to be back.
    #[serde(default)]
    pub window_s: f64,
    /// TCP connect start to CONNACK, successful attempts only.
    pub latency_ms: LatencyMs,
    /// TLS handshake alone, successful attempts only.
    pub tls_handshake_ms: LatencyMs,
    /// Most device sessions open at the same time.
    pub peak_connected: u64,
    /// Attempts the broker turned away before the TLS handshake: its admission control
    /// (handshake rate or concurrency limits; the broker logs which), retried or not.
    #[serde(default)]
    pub admission_refused: u64,
    /// Attempts after a device's first (see `--connect-retries`); not in `attempted`.
    #[serde(default)]
    pub retries: u64,
    /// Devices in `succeeded` that connected only after one or more retries.
    #[serde(default)]
    pub succeeded_after_retry: u64,
}

/// What the devices published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishReport {
    /// PUBLISH packets written.
    pub sent: u64,
    /// QoS 1/2 publications acknowledged (PUBACK / PUBCOMP).
    pub acked: u64,
    /// `sent` divided by the time from the first to the last PUBLISH.
    pub rate_per_s: f64,
}

/// What the subscribers received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesReport {
    /// Deliveries expected: `publish.sent` times the number of subscribers.
    pub expected: u64,
    /// PUBLISH packets of this run received by subscribers, duplicates included.
    pub received: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of a (device, sequence) a subscriber had already received.
    pub duplicated: u64,
    /// Distinct deliveries divided by the time from the first PUBLISH written to the last
    /// new delivery read: the throughput through the broker.
    #[serde(default)]
    pub rate_per_s: f64,
}

/// Outcome of the revoke scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReport {
    /// Device sessions open when the CA was disabled.
    pub sessions_at_disable: u64,
    /// Time the `PUT .../trusted-certificates/<fingerprint>` took.
    pub disable_request_ms: Option<f64>,
    /// From sending the disable request until the last session closed, provided every
    /// session closed and no reconnect succeeded; `null` otherwise.
    pub all_closed_after_ms: Option<f64>,
    /// Device sessions still open at the end of the observation.
    pub still_connected: u64,
    /// Reconnect attempts by devices after their session was closed.
    pub reconnect_attempts: u64,
    /// Reconnects that reached an accepted CONNACK (should be 0).
    pub reconnect_succeeded: u64,
}

/// Resident memory of the broker process, KiB (`VmRSS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssKib {
    /// Before the first connection.
    pub before: Option<u64>,
    /// While every session was still open, just before the devices disconnected.
    pub after: Option<u64>,
}

/// The broker under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerReport {
    /// Address connected to.
    pub address: String,
    /// Process id given with `--broker-pid`.
    pub pid: Option<u32>,
    /// Resident memory, when a pid was given.
    pub rss_kib: Option<RssKib>,
    /// CPU seconds (user + system, all threads) the broker used while devices were
    /// connecting and publishing, when a pid was given.
    pub cpu_s: Option<f64>,
}

/// Everything a run measured. Serializes to the JSON written by `--report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Random id of the run (also in topics: `loadtest/<run_id>/<cn>`).
    pub run_id: String,
    /// Arrival pattern.
    pub scenario: Scenario,
    /// Parameters.
    pub params: Params,
    /// Certificate preparation.
    pub certs: CertsReport,
    /// Connections.
    pub connect: ConnectReport,
    /// Publications.
    pub publish: PublishReport,
    /// Deliveries to subscribers.
    pub messages: MessagesReport,
    /// From the device writing a PUBLISH to a subscriber reading it.
    pub e2e_latency_ms: LatencyMs,
    /// Failures by kind (`phase: reason`).
    pub errors: BTreeMap<String, u64>,
    /// Revoke scenario outcome (`null` for other scenarios).
    pub revoke: Option<RevokeReport>,
    /// The broker.
    pub broker: BrokerReport,
    /// Seconds from the first connection attempt to the end of the run.
    pub elapsed_s: f64,
    /// Whether `--duration` ended the run before its work was done.
    pub timed_out: bool,
    /// CPU seconds the load generator itself used over the same span as `broker.cpu_s`
    /// (compare the two to see which side was the bottleneck).
    pub generator_cpu_s: Option<f64>,
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

impl Report {
    /// A fixed-width summary for people.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let _ = writeln!(
            s,
            "loadtest {} | scenario {} | {} devices, {} subscribers, {} msg/device, QoS {}, MQTT {}, {}",
            self.run_id, self.scenario, p.devices, p.subscribers, p.messages_per_device, p.qos, p.mqtt, p.key_type
        );
        let _ = writeln!(s, "{:-<78}", "");
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "{k:<28} {v}");
        };
        let c = &self.connect;
        row(
            &mut s,
            "connect",
            format!(
                "{}/{} ok, {} failed, {:.1}/s over {:.2} s, peak {} open",
                c.succeeded, c.attempted, c.failed, c.rate_per_s, c.window_s, c.peak_connected
            ),
        );
        if c.admission_refused > 0 || c.retries > 0 {
            row(
                &mut s,
                "admission refused, retries",
                format!(
                    "{} turned away before TLS (broker's admission control); {} retries, {} devices connected after retrying",
                    c.admission_refused, c.retries, c.succeeded_after_retry
                ),
            );
        }
        let l = &c.latency_ms;
        row(
            &mut s,
            "connect latency ms",
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                opt(l.p50),
                opt(l.p90),
                opt(l.p99),
                opt(l.max)
            ),
        );
        let t = &c.tls_handshake_ms;
        row(
            &mut s,
            "  of which TLS handshake ms",
            format!("p50 {}  p99 {}", opt(t.p50), opt(t.p99)),
        );
        row(
            &mut s,
            "publish",
            format!(
                "{} sent, {} acked, {:.1}/s",
                self.publish.sent, self.publish.acked, self.publish.rate_per_s
            ),
        );
        let m = &self.messages;
        row(
            &mut s,
            "messages",
            format!(
                "{} received of {} expected, {} lost, {} duplicated, {:.1}/s delivered",
                m.received, m.expected, m.lost, m.duplicated, m.rate_per_s
            ),
        );
        let e = &self.e2e_latency_ms;
        row(
            &mut s,
            "end-to-end latency ms",
            format!("p50 {}  p99 {}  max {}", opt(e.p50), opt(e.p99), opt(e.max)),
        );
        if let Some(r) = &self.revoke {
            row(
                &mut s,
                "revoke",
                format!(
                    "{} sessions at disable, all closed after {} ms, {} still open, {}/{} reconnects succeeded",
                    r.sessions_at_disable,
                    opt(r.all_closed_after_ms),
                    r.still_connected,
                    r.reconnect_succeeded,
                    r.reconnect_attempts
                ),
            );
        }
        let cpu = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        row(
            &mut s,
            "CPU seconds",
            format!(
                "broker {}  loadtest {}",
                cpu(self.broker.cpu_s),
                cpu(self.generator_cpu_s)
            ),
        );
        if let Some(rss) = &self.broker.rss_kib {
            let f = |x: Option<u64>| x.map_or_else(|| "-".to_string(), |v| v.to_string());
            row(
                &mut s,
                "broker RSS KiB",
                format!("before {}  after {}", f(rss.before), f(rss.after)),
            );
        }
        row(
            &mut s,
            "elapsed",
            format!(
                "{:.2} s{}",
                self.elapsed_s,
                if self.timed_out {
                    " (hit --duration)"
                } else {
                    ""
                }
            ),
        );
        if self.errors.is_empty() {
            row(&mut s, "errors", "none".into());
        } else {
            for (k, v) in &self.errors {
                row(&mut s, "error", format!("{v:>8}  {k}"));
            }
        }
        s
    }
}

/// A side-by-side table of two reports' key figures with the ratio `candidate / baseline`.
pub fn compare(baseline: &Report, candidate: &Report, names: (&str, &str)) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<26} {:>14} {:>14} {:>9}",
        "figure", names.0, names.1, "ratio"
    );
    let _ = writeln!(s, "{:-<66}", "");
    let row = |s: &mut String, name: &str, a: Option<f64>, b: Option<f64>| {
        let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a != 0.0 => format!("{:.2}", b / a),
            _ => "-".to_string(),
        };
        let _ = writeln!(s, "{name:<26} {:>14} {:>14} {ratio:>9}", f(a), f(b));
    };
    let pair = |f: &dyn Fn(&Report) -> Option<f64>| (f(baseline), f(candidate));
    type Pair = (Option<f64>, Option<f64>);
    let figures: Vec<(&str, Pair)> = vec![
        ("connect ok", pair(&|r| Some(r.connect.succeeded as f64))),
        ("connect rate /s", pair(&|r| Some(r.connect.rate_per_s))),
        ("connect p50 ms", pair(&|r| r.connect.latency_ms.p50)),
        ("connect p99 ms", pair(&|r| r.connect.latency_ms.p99)),
        ("connect max ms", pair(&|r| r.connect.latency_ms.max)),
        (
            "tls handshake p50 ms",
            pair(&|r| r.connect.tls_handshake_ms.p50),
        ),
        ("publish rate /s", pair(&|r| Some(r.publish.rate_per_s))),
        ("delivered rate /s", pair(&|r| Some(r.messages.rate_per_s))),
        ("e2e p50 ms", pair(&|r| r.e2e_latency_ms.p50)),
        ("e2e p99 ms", pair(&|r| r.e2e_latency_ms.p99)),
        ("messages lost", pair(&|r| Some(r.messages.lost as f64))),
        (
            "errors",
            pair(&|r| Some(r.errors.values().sum::<u64>() as f64)),
        ),
        (
            "broker RSS after KiB",
            pair(&|r| {
                r.broker
                    .rss_kib
                    .as_ref()
                    .and_then(|m| m.after)
                    .map(|v| v as f64)
            }),
        ),
        (
            "broker RSS growth KiB",
            pair(&|r| {
                let m = r.broker.rss_kib.as_ref()?;
                Some(m.after? as f64 - m.before? as f64)
            }),
        ),
        ("RSS growth/device KiB", pair(&rss_per_device_kib)),
        ("broker CPU s", pair(&|r| r.broker.cpu_s)),
        ("loadtest CPU s", pair(&|r| r.generator_cpu_s)),
    ];
    for (name, (a, b)) in figures {
        row(&mut s, name, a, b);
    }
    s
}

/// Broker memory growth per device session open at the end: `(after - before) / peak`.
pub fn rss_per_device_kib(r: &Report) -> Option<f64> {
    let m = r.broker.rss_kib.as_ref()?;
    let (after, before) = (m.after?, m.before?);
    let open = r.connect.peak_connected;
    (open > 0).then(|| (after as f64 - before as f64) / open as f64)
}

/// CPU time (user + system, all threads) a process has used so far, in seconds, from
/// `/proc/PID/stat` (whose clock ticks are USER_HZ = 100 per second on Linux).
pub fn read_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Reads `VmRSS` of a process from `/proc/PID/status`, in KiB.
pub fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred_ms() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let l = LatencyMs::from_histogram(&h);
        assert_eq!(l.count, 100);
        // hdrhistogram keeps 3 significant digits: within 0.1 %.
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("value");
            assert!(
                (got - want).abs() <= want * 0.001 + 0.001,
                "{got} vs {want}"
            );
        };
        close(l.p50, 50.0);
        close(l.p90, 90.0);
        close(l.p99, 99.0);
        close(l.max, 100.0);
        close(l.mean, 50.5);
    }

    #[test]
    fn percentiles_with_an_outlier() {
        let mut h = new_histogram();
        for _ in 0..99 {
            record(&mut h, Duration::from_micros(2_000));
        }
        record(&mut h, Duration::from_secs(3));
        let l = LatencyMs::from_histogram(&h);
        assert_eq!(l.p50, Some(2.0));
        assert_eq!(l.p99, Some(2.0));
        let max = l.max.expect("max");
        assert!((max - 3000.0).abs() < 3.0, "{max}");
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let l = LatencyMs::from_histogram(&new_histogram());
        assert_eq!(l, LatencyMs::default());
        let json = serde_json::to_value(&l).expect("json");
        assert!(json["p50"].is_null());
    }

    #[test]
    fn sub_microsecond_samples_count_as_one() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_nanos(10));
        assert_eq!(h.len(), 1);
        assert_eq!(h.max(), 1);
    }

    #[test]
    fn rates() {
        assert_eq!(rate_per_s(0, Duration::from_secs(5)), 0.0);
        assert_eq!(rate_per_s(500, Duration::from_secs(2)), 250.0);
        assert_eq!(rate_per_s(3, Duration::from_millis(1500)), 2.0);
        // One event in no time is not an infinite rate.
        assert_eq!(rate_per_s(1, Duration::ZERO), 1000.0);
    }

    #[test]
    fn cpu_time_parsing() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some(3.25));
        assert_eq!(parse_stat_cpu("4242 (x) S 1"), None);
        assert!(read_cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn vmrss_parsing() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    7424 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(status), Some(7424));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(read_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
