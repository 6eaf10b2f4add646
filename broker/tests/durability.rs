//! Crash durability of the store behind the real `broker` binary: while clients upload,
//! update and delete trusted certificates over HTTPS, the process is killed with
//! SIGKILL, restarted on the same data directory and checked, several rounds in a row.
//!
//! After every restart: each change that was answered 2xx is there; a change whose
//! answer was lost is either fully there or not at all (a certificate is present with
//! exactly the uploaded DER and one of the names/statuses a request set, never a mix);
//! the list agrees with single reads; and the audit log, written in the same
//! transaction, agrees with what is stored.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use common::BrokerProcess;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_PW: &str = "durability-admin-1";
const TENANT: &str = "dura";
const TENANT_PASS: &str = "dura-pass-123";
const ROUNDS: usize = 8;
const WORKERS: usize = 4;
/// Certificates per worker; each worker changes only its own.
const PER_WORKER: usize = 6;

/// One certificate as stored: what a request set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    name: String,
    status: String,
}

/// What the store may hold for one certificate: `None` is absent. One element when a
/// 2xx answered the last change; two when its answer was lost.
type Possible = Vec<Option<Stored>>;

/// A small deterministic generator (the seed is printed for a rerun).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn client(dir: &std::path::Path, admin: SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(dir.join("server.crt")).expect("server.crt");
    let mut roots = rustls::RootCertStore::empty();
    for c in certs::pem::read_certificates(&pem).expect("server chain") {
        roots.add(c).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .resolve("localhost", admin)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// `None` when no answer came (the process died, or was not there).
    async fn send(
        &self,
        method: Method,
        path: &str,
        login: (&str, &str),
        body: Option<Value>,
    ) -> Option<(StatusCode, Value)> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(login.0, Some(login.1));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.ok()?;
        let status = resp.status();
        let text = resp.text().await.ok()?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"))
        };
        Some((status, v))
    }

    async fn must(
        &self,
        method: Method,
        path: &str,
        login: (&str, &str),
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(method.clone(), path, login, body)
            .await
            .unwrap_or_else(|| panic!("no answer to {method} {path} from a live broker"))
    }
}

const MGMT: (&str, &str) = ("management/admin", ADMIN_PW);
const TADMIN: (&str, &str) = ("dura/admin", TENANT_PASS);

fn ca(i: usize) -> Issued {
    issue::ca(
        &Subject::cn(&format!("Durability CA {i}")),
        Validity::days(30),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca")
}

fn certs_path() -> String {
    format!("/tenant/tenants/{TENANT}/trusted-certificates")
}

/// What a listed or fetched certificate says, after checking it is the uploaded one.
fn observed(i: usize, issued: &Issued, fp: &str, body: &Value) -> Stored {
    assert_eq!(body["fingerprint"], fp, "{body}");
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body["certInPemFormat"].as_str().expect("certInPemFormat")
    );
    let der = certs::pem::read_certificates(pem.as_bytes()).expect("stored DER");
    assert_eq!(
        der[0].as_ref(),
        issued.cert_der.as_ref(),
        "certificate {i} stored with other bytes"
    );
    let subject = certs::CertInfo::parse(issued.cert_der.as_ref())
        .expect("parse")
        .subject;
    assert_eq!(body["subject"], subject, "{body}");
    Stored {
        name: body["name"].as_str().expect("name").to_string(),
        status: body["status"].as_str().expect("status").to_string(),
    }
}

/// Reads the store back and checks it against the model; returns the model with
/// every certificate's state now known, and how many cut changes had been applied.
async fn verify(
    api: &Api,
    pool: &[(Issued, String)],
    model: &[Possible],
) -> (Vec<Possible>, usize) {
    let (status, body) = api
        .must(
            Method::GET,
            &format!("{}?pageSize=2000", certs_path()),
            TADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: BTreeMap<String, Value> = body["trustedCertificates"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["fingerprint"].as_str().expect("fingerprint").to_string(),
                c.clone(),
            )
        })
        .collect();
    assert_eq!(body["statistics"]["totalElements"], listed.len());
    let ours: HashSet<&String> = pool.iter().map(|(_, fp)| fp).collect();
    assert!(
        listed.keys().all(|fp| ours.contains(fp)),
        "unknown certificates listed: {listed:?}"
    );
    let mut known = Vec::with_capacity(pool.len());
    let mut present = HashSet::new();
    let mut applied = 0;
    for (i, ((issued, fp), possible)) in pool.iter().zip(model).enumerate() {
        let seen = listed.get(fp).map(|c| observed(i, issued, fp, c));
        if possible.len() > 1 {
            // A change whose answer was lost: the single read agrees with the list.
            let (status, body) = api
                .must(Method::GET, &format!("{}/{fp}", certs_path()), TADMIN, None)
                .await;
            let single = match status {
                StatusCode::NOT_FOUND => None,
                StatusCode::OK => Some(observed(i, issued, fp, &body)),
                s => panic!("GET certificate {i}: {s} {body}"),
            };
            assert_eq!(
                single, seen,
                "certificate {i}: list and single read disagree"
            );
            applied += usize::from(possible.last() == Some(&seen));
        }
        assert!(
            possible.contains(&seen),
            "certificate {i}: found {seen:?}, expected one of {possible:?}"
        );
        if seen.is_some() {
            present.insert(fp.clone());
        }
        known.push(vec![seen]);
    }

    // The audit log was written in the same transactions: additions minus deletions
    // is 1 exactly for the certificates that are there.
    let mut balance: BTreeMap<String, i64> = BTreeMap::new();
    let mut page = 1;
    loop {
        let (status, body) = api
            .must(
                Method::GET,
                &format!("/audit?tenant={TENANT}&pageSize=2000&currentPage={page}"),
                MGMT,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["auditRecords"].as_array().expect("audit records") {
            let delta = match r["action"].as_str() {
                Some("CERTIFICATE_ADDED") => 1,
                Some("CERTIFICATE_DELETED") => -1,
                _ => continue,
            };
            *balance
                .entry(r["fingerprint"].as_str().expect("fingerprint").to_string())
                .or_default() += delta;
        }
        if body["statistics"]["totalPages"].as_u64().expect("pages") <= page {
            break;
        }
        page += 1;
    }
    for (_, fp) in pool {
        let expected = i64::from(present.contains(fp));
        assert_eq!(
            balance.get(fp).copied().unwrap_or(0),
            expected,
            "audit log disagrees with the store for {fp}"
        );
    }
    (known, applied)
}

#[derive(Default)]
struct Counts {
    acknowledged: AtomicUsize,
    lost: AtomicUsize,
    /// How long answered changes took, to aim kills at the end of a request (between
    /// its commit and its answer) rather than only at its start.
    latencies: Mutex<Vec<Duration>>,
    /// When each worker's request in flight was sent.
    inflight: Mutex<[Option<Instant>; WORKERS]>,
    /// Set for an aimed kill: only worker 0 goes on.
    quiet: AtomicBool,
}

/// Changes the certificates `mine` (indexes into `pool`) until `stop`; returns their
/// possible states. Only certificates whose state is known are changed.
async fn worker(
    w: usize,
    api: Arc<Api>,
    pool: Arc<Vec<(Issued, String)>>,
    mut mine: Vec<(usize, Possible)>,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<(usize, Possible)> {
    let mut n = 0u64;
    // Worker 0 goes on alone for an aimed kill.
    let go_on = || !stop.load(Ordering::SeqCst) && (w == 0 || !counts.quiet.load(Ordering::SeqCst));
    while go_on() {
        let known: Vec<usize> = (0..mine.len()).filter(|&k| mine[k].1.len() == 1).collect();
        if known.is_empty() {
            break;
        }
        let k = known[rng.below(known.len() as u64) as usize];
        let (i, possible) = &mut mine[k];
        let (issued, fp) = &pool[*i];
        n += 1;
        let status = if rng.below(2) == 0 {
            "ENABLED"
        } else {
            "DISABLED"
        };
        let name = format!("ca-{i}-{n}-{}", rng.below(1_000_000));
        let next = Stored {
            name: name.clone(),
            status: status.to_string(),
        };
        let before = possible[0].clone();
        let (method, path, body, ok, after) = match &before {
            None => (
                Method::POST,
                certs_path(),
                Some(json!({
                    "status": status, "name": name, "autoRegistrationEnabled": "true",
                    "certInPemFormat": issued.cert_pem(),
                })),
                StatusCode::CREATED,
                Some(next),
            ),
            Some(_) if rng.below(3) == 0 => (
                Method::DELETE,
                format!("{}/{fp}", certs_path()),
                None,
                StatusCode::NO_CONTENT,
                None,
            ),
            Some(_) => (
                Method::PUT,
                format!("{}/{fp}", certs_path()),
                Some(json!({"name": name, "status": status})),
                StatusCode::OK,
                Some(next),
            ),
        };
        let sent = Instant::now();
        counts.inflight.lock().expect("lock")[w] = Some(sent);
        let answer = api.send(method.clone(), &path, TADMIN, body).await;
        counts.inflight.lock().expect("lock")[w] = None;
        match answer {
            Some((s, v)) => {
                assert_eq!(s, ok, "{method} {path}: {v}");
                *possible = vec![after];
                counts.latencies.lock().expect("lock").push(sent.elapsed());
                counts.acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                *possible = vec![before, after];
                counts.lost.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    mine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_certificate_changes_loses_nothing_acknowledged() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("durability seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let pool: Arc<Vec<(Issued, String)>> = Arc::new(
        (0..WORKERS * PER_WORKER)
            .map(|i| {
                let c = ca(i);
                let fp = certs::info::fingerprint_sha1(c.cert_der.as_ref());
                (c, fp)
            })
            .collect(),
    );
    let mut model: Vec<Possible> = vec![vec![None]; pool.len()];
    let counts = Arc::new(Counts::default());
    let mut cut_applied = 0;
    let mut aim: i64 = -6;
    let mut aimed: Option<bool> = None;
    let mut aimed_sent = None;

    for round in 0..=ROUNDS {
        let t0 = Instant::now();
        let mut running = BrokerProcess::start(dir.path(), ADMIN_PW);
        let started = t0.elapsed();
        let admin = running.addr("admin_addr");
        let api = Arc::new(Api {
            http: client(dir.path(), admin),
            base: format!("https://localhost:{}", admin.port()),
        });
        if round == 0 {
            let (s, b) = api
                .must(
                    Method::POST,
                    "/tenant/tenants",
                    MGMT,
                    Some(json!({"id": TENANT, "company": "Durability", "adminName": "admin", "adminPass": TENANT_PASS})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        let (now_known, applied) = verify(&api, &pool, &model).await;
        model = now_known;
        cut_applied += applied;
        match aimed.take() {
            // The aimed request was answered: the kill came too late.
            Some(false) => aim -= 4,
            // Cut but not applied: too early.
            Some(true) if applied == 0 => aim += 3,
            _ => {}
        }
        eprintln!(
            "round {round}: started in {started:?}, verified in {:?}",
            t0.elapsed() - started
        );
        if round == ROUNDS {
            let _ = running.child.kill();
            let _ = running.child.wait();
            break;
        }

        // Change certificates from several clients; kill the broker once a few
        // changes were answered, at a random moment while others are in flight.
        let stop = Arc::new(AtomicBool::new(false));
        counts.quiet.store(false, Ordering::SeqCst);
        let before = counts.acknowledged.load(Ordering::SeqCst);
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let mine: Vec<(usize, Possible)> = (0..pool.len())
                .filter(|i| i % WORKERS == w)
                .map(|i| (i, model[i].clone()))
                .collect();
            tasks.push(tokio::spawn(worker(
                w,
                api.clone(),
                pool.clone(),
                mine,
                Rng(rng.next() | 1),
                stop.clone(),
                counts.clone(),
            )));
        }
        let target = before + 2 + rng.below(6) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while counts.acknowledged.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if round % 2 == 0 {
            // A kill among concurrent requests, at a random moment.
            tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        } else {
            // An aimed kill: the others stop; worker 0's solo latency is measured, and
            // its next request is killed in its last tenth, where its commit and the
            // work after it (snapshot rebuild, answer) are.
            counts.quiet.store(true, Ordering::SeqCst);
            while counts.inflight.lock().expect("lock")[1..]
                .iter()
                .any(Option::is_some)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let from = counts.latencies.lock().expect("lock").len();
            let solo = loop {
                let l = counts.latencies.lock().expect("lock")[from..].to_vec();
                if l.len() >= 3 {
                    break l.into_iter().max().expect("two latencies");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let measured = Instant::now();
            let sent = loop {
                if let Some(t) = counts.inflight.lock().expect("lock")[0].filter(|t| *t >= measured)
                {
                    break t;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            // `aim` (ms from the typical end) adapts: earlier after an answered
            // request, later after a cut one that was not applied.
            let at = sent + solo;
            let at = if aim >= 0 {
                at + Duration::from_millis(aim as u64)
            } else {
                at - Duration::from_millis(aim.unsigned_abs())
            };
            tokio::time::sleep_until(at.into()).await;
            aimed_sent = Some(sent);
        }
        // Requests in flight now are cut by the kill; no new ones start.
        stop.store(true, Ordering::SeqCst);
        if let Some(sent) = aimed_sent.take() {
            aimed = Some(counts.inflight.lock().expect("lock")[0] == Some(sent));
        }
        running.child.kill().expect("SIGKILL");
        let status = running.child.wait().expect("wait");
        assert!(
            counts.acknowledged.load(Ordering::SeqCst) >= target,
            "round {round}: too few changes answered before the deadline"
        );
        eprintln!(
            "round {round}: killed ({status}) after {} answered changes",
            counts.acknowledged.load(Ordering::SeqCst) - before
        );
        for t in tasks {
            for (i, possible) in t.await.expect("worker") {
                model[i] = possible;
            }
        }
    }
    eprintln!(
        "{ROUNDS} SIGKILL rounds: {} changes answered and found; {} cut by a kill, of which {cut_applied} found applied whole and the rest not at all",
        counts.acknowledged.load(Ordering::SeqCst),
        counts.lost.load(Ordering::SeqCst)
    );
    assert!(
        counts.lost.load(Ordering::SeqCst) > 0,
        "no request was cut by a kill"
    );
}
