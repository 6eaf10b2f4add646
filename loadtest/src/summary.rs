//! `loadtest summary DIR`: the tables of a benchmark run, medians over repetitions.
//!
//! Reports are named `<test>.<broker>.<repetition>.json` (for example
//! `connect-p256.mosquitto.2.json`); every figure is the median over the repetitions of a
//! (test, broker) pair, and each table shows the brokers side by side with the ratios
//! product/mosquitto, product/direct (the embedded rumqttd reached without the front-end)
//! and product-first/mosquitto (`product-first`: the product at the first connection of
//! each device, which registers it); terminator/mosquitto (`terminator`: the product in
//! front of a mosquitto without TLS, against mosquitto terminating mTLS itself).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::report::{rss_per_device_kib, Report};
use crate::Error;

/// Column order; brokers not listed here come after them, alphabetically.
const BROKER_ORDER: &[&str] = &[
    "mosquitto",
    "product",
    "product-first",
    "direct",
    "terminator",
    "terminator-first",
];

/// A row: its name, which kinds of test show it, and how to read it from a report.
type Figure = (&'static str, &'static [Kind], fn(&Report) -> Option<f64>);

/// What a test measures, from its name: `connect*` and `register*` connect only,
/// `throughput*` and `latency*` publish, `memory*` holds idle sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Traffic,
    Memory,
}

fn kind(test: &str) -> Option<Kind> {
    if test.starts_with("connect") || test.starts_with("register") {
        Some(Kind::Connect)
    } else if test.starts_with("throughput") || test.starts_with("latency") {
        Some(Kind::Traffic)
    } else if test.starts_with("memory") {
        Some(Kind::Memory)
    } else {
        None
    }
}

const ALL: &[Kind] = &[Kind::Connect, Kind::Traffic, Kind::Memory];
const CONNECT: &[Kind] = &[Kind::Connect, Kind::Memory];
const TRAFFIC: &[Kind] = &[Kind::Traffic];
const MEMORY: &[Kind] = &[Kind::Memory];

fn nonzero(v: f64) -> Option<f64> {
    (v != 0.0).then_some(v)
}

/// The figures of a table, in row order.
const FIGURES: &[Figure] = &[
    ("devices connected", ALL, |r| {
        nonzero(r.connect.succeeded as f64)
    }),
    ("connect rate /s", CONNECT, |r| {
        nonzero(r.connect.rate_per_s)
    }),
    ("connect p50 ms", CONNECT, |r| r.connect.latency_ms.p50),
    ("connect p99 ms", CONNECT, |r| r.connect.latency_ms.p99),
    ("TLS handshake p50 ms", CONNECT, |r| {
        r.connect.tls_handshake_ms.p50
    }),
    ("delivered msg/s", TRAFFIC, |r| {
        nonzero(r.messages.rate_per_s)
    }),
    ("publish msg/s", TRAFFIC, |r| nonzero(r.publish.rate_per_s)),
    ("e2e p50 ms", TRAFFIC, |r| r.e2e_latency_ms.p50),
    ("e2e p99 ms", TRAFFIC, |r| r.e2e_latency_ms.p99),
    ("e2e max ms", TRAFFIC, |r| r.e2e_latency_ms.max),
    ("messages lost", TRAFFIC, |r| {
        (r.messages.expected > 0).then_some(r.messages.lost as f64)
    }),
    ("errors", ALL, |r| {
        Some(r.errors.values().sum::<u64>() as f64)
    }),
    ("RSS before MiB", MEMORY, |r| {
        r.broker.rss_kib.as_ref()?.before.map(|k| k as f64 / 1024.0)
    }),
    ("RSS after MiB", MEMORY, |r| {
        r.broker.rss_kib.as_ref()?.after.map(|k| k as f64 / 1024.0)
    }),
    ("RSS growth KiB/device", MEMORY, rss_per_device_kib),
    ("broker CPU ms/connect", CONNECT, |r| {
        // Only meaningful when the run did nothing but connect.
        (r.publish.sent == 0 && r.connect.succeeded > 0)
            .then(|| {
                r.broker
                    .cpu_s
                    .map(|c| c * 1000.0 / r.connect.succeeded as f64)
            })
            .flatten()
    }),
    ("broker CPU s", ALL, |r| r.broker.cpu_s),
    ("loadtest CPU s", ALL, |r| r.generator_cpu_s),
];

/// Median of the values present (`None` when there are none).
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Splits `connect-p256.mosquitto.2.json` into (`connect-p256`, `mosquitto`).
fn parse_name(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_suffix(".json")?;
    let mut parts = stem.rsplitn(3, '.');
    let rep = parts.next()?;
    let broker = parts.next()?;
    let test = parts.next()?;
    if rep.is_empty() || !rep.bytes().all(|b| b.is_ascii_digit()) || broker.is_empty() {
        return None;
    }
    Some((test.to_string(), broker.to_string()))
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// Markdown tables of reports grouped by test and broker: `(test, broker, report)`.
pub fn tables(reports: &[(String, String, Report)]) -> String {
    let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<&Report>>> = BTreeMap::new();
    for (test, broker, report) in reports {
        groups
            .entry(test)
            .or_default()
            .entry(broker)
            .or_default()
            .push(report);
    }
    let mut out = String::new();
    for (test, by_broker) in groups {
        let mut brokers: Vec<&str> = by_broker.keys().copied().collect();
        brokers.sort_by_key(|b| {
            (
                BROKER_ORDER
                    .iter()
                    .position(|o| o == b)
                    .unwrap_or(usize::MAX),
                b.to_string(),
            )
        });
        let runs: Vec<String> = brokers
            .iter()
            .map(|b| format!("{b} x{}", by_broker[b].len()))
            .collect();
        let _ = writeln!(out, "### {test}\n");
        let _ = writeln!(out, "Medians over repetitions ({}).\n", runs.join(", "));
        let has = |b: &str| by_broker.contains_key(b);
        let mut header = String::from("| figure |");
        let mut rule = String::from("|---|");
        for b in &brokers {
            let _ = write!(header, " {b} |");
            rule.push_str("---:|");
        }
        let ratios: Vec<(&str, &str)> = [
            ("product", "mosquitto"),
            ("product", "direct"),
            ("product-first", "mosquitto"),
            ("terminator", "mosquitto"),
            ("terminator-first", "mosquitto"),
        ]
        .into_iter()
        .filter(|(a, b)| has(a) && has(b))
        .collect();
        for (a, b) in &ratios {
            let _ = write!(header, " {a}/{b} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let test_kind = kind(test);
        for (name, kinds, f) in FIGURES {
            if test_kind.is_some_and(|k| !kinds.contains(&k)) {
                continue;
            }
            let meds: BTreeMap<&str, Option<f64>> = brokers
                .iter()
                .map(|b| {
                    let vals: Vec<Option<f64>> = by_broker[b].iter().map(|r| f(r)).collect();
                    (*b, median(&vals))
                })
                .collect();
            if meds.values().all(|v| v.is_none()) {
                continue;
            }
            let mut row = format!("| {name} |");
            for b in &brokers {
                let _ = write!(row, " {} |", fmt_value(meds[b]));
            }
            for (a, b) in &ratios {
                let _ = write!(row, " {} |", ratio(meds[a], meds[b]));
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    out
}

/// Reads every `<test>.<broker>.<repetition>.json` report of `dir` and renders [`tables`].
pub fn summarize_dir(dir: &Path) -> Result<String, Error> {
    let file_err = |path: &Path, source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let mut reports = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| file_err(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((test, broker)) = parse_name(name) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!("{}: not a loadtest report: {e}", path.display()))
        })?;
        reports.push((test, broker, report));
    }
    if reports.is_empty() {
        return Err(Error::Config(format!(
            "{}: no <test>.<broker>.<repetition>.json report",
            dir.display()
        )));
    }
    Ok(tables(&reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[None]), None);
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0)]), Some(2.5));
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_name("connect-p256.mosquitto.2.json"),
            Some(("connect-p256".into(), "mosquitto".into()))
        );
        assert_eq!(
            parse_name("throughput-qos1.product-first.10.json"),
            Some(("throughput-qos1".into(), "product-first".into()))
        );
        assert_eq!(parse_name("machine.json"), None);
        assert_eq!(parse_name("a.b.json"), None);
        assert_eq!(parse_name("a.b.x.json"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("connect-rsa2048"), Some(Kind::Connect));
        assert_eq!(kind("register"), Some(Kind::Connect));
        assert_eq!(kind("throughput-qos0"), Some(Kind::Traffic));
        assert_eq!(kind("latency-qos1"), Some(Kind::Traffic));
        assert_eq!(kind("memory-same-n"), Some(Kind::Memory));
        assert_eq!(kind("other"), None);
    }

    #[test]
    fn ratios_and_values() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
        assert_eq!(fmt_value(Some(1234.56)), "1235");
        assert_eq!(fmt_value(Some(12.345)), "12.3");
        assert_eq!(fmt_value(Some(1.2345)), "1.23");
        assert_eq!(fmt_value(None), "-");
    }
}
