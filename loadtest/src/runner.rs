//! One run: prepare certificates, connect subscribers, launch devices by scenario, measure,
//! and stop by itself.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::admin::Admin;
use crate::config::{
    effective_source_ips, resolve_loopback, split_host_port, Config, Login, Scenario,
    PAYLOAD_HEADER,
};
use crate::mqtt::{describe_io, establish, Codec, Conn, Incoming, Target};
use crate::pki::{self, Ca};
use crate::report::{
    self, new_histogram, rate_per_s, BrokerReport, CertsReport, ConnectReport, LatencyMs,
    MessagesReport, Params, PublishReport, Report, RevokeReport, RssKib,
};
use crate::Error;

/// Most QoS 1/2 publications a device keeps unacknowledged (lowered to the broker's
/// MQTT 5 receive maximum).
const INFLIGHT_WINDOW: usize = 10;
/// First pause before a revoked device reconnects; doubled after every failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between two reconnect attempts (shorter than [`REVOKE_WATCH`], so every
/// device tries again while the watch lasts).
const RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(1600);
/// First pause before a device turned away at its first connection tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between two such retries.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(4);
/// How long "no session open, no reconnect accepted" must hold after a revocation.
const REVOKE_WATCH: Duration = Duration::from_secs(2);
/// Longest wait for sessions to close after a revocation.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for tasks to disconnect cleanly at the end.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Limit for writing to one connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A small per-device random source for back-off jitter (SplitMix64; not for secrets).
struct Jitter(u64);

impl Jitter {
    fn new(index: usize) -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(t ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Counters shared by every task of a run. Times are nanoseconds since `epoch`.
struct Stats {
    epoch: Instant,
    attempted: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    connected: AtomicI64,
    peak_connected: AtomicI64,
    sent: AtomicU64,
    acked: AtomicU64,
    finished: AtomicUsize,
    received: AtomicU64,
    unique: AtomicU64,
    duplicated: AtomicU64,
    first_attempt_ns: AtomicU64,
    last_connack_ns: AtomicU64,
    first_publish_ns: AtomicU64,
    last_publish_ns: AtomicU64,
    last_receive_ns: AtomicU64,
    last_close_ns: AtomicU64,
    reconnect_attempts: AtomicU64,
    reconnect_succeeded: AtomicU64,
    admission_refused: AtomicU64,
    retries: AtomicU64,
    succeeded_after_retry: AtomicU64,
    revoked: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
    connect_latency: Mutex<Histogram<u64>>,
    tls_latency: Mutex<Histogram<u64>>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            epoch: Instant::now(),
            attempted: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connected: AtomicI64::new(0),
            peak_connected: AtomicI64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            first_attempt_ns: AtomicU64::new(u64::MAX),
            last_connack_ns: AtomicU64::new(0),
            first_publish_ns: AtomicU64::new(u64::MAX),
            last_publish_ns: AtomicU64::new(0),
            last_receive_ns: AtomicU64::new(0),
            last_close_ns: AtomicU64::new(0),
            reconnect_attempts: AtomicU64::new(0),
            reconnect_succeeded: AtomicU64::new(0),
            admission_refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            succeeded_after_retry: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            errors: Mutex::new(BTreeMap::new()),
            connect_latency: Mutex::new(new_histogram()),
            tls_latency: Mutex::new(new_histogram()),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn error(&self, kind: impl Into<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind.into()).or_insert(0) += 1;
    }

    fn opened(&self) {
        let now = self.connected.fetch_add(1, Relaxed) + 1;
        self.peak_connected.fetch_max(now, Relaxed);
    }

    fn closed(&self) {
        self.connected.fetch_sub(1, Relaxed);
        self.last_close_ns.fetch_max(self.now_ns(), Relaxed);
    }

    fn window(&self, first: &AtomicU64, last: &AtomicU64) -> Duration {
        let (f, l) = (first.load(Relaxed), last.load(Relaxed));
        if f == u64::MAX || l < f {
            Duration::ZERO
        } else {
            Duration::from_nanos(l - f)
        }
    }
}

/// Everything a device or subscriber task needs, shared.
struct Ctx {
    stats: Stats,
    targets: Vec<Target>,
    codec: Codec,
    sources: Vec<IpAddr>,
    run_id: String,
    qos: u8,
    messages: u32,
    payload: usize,
    devices: usize,
    publish_interval: Duration,
    keep_alive: Duration,
    /// Username and password of every CONNECT (`--plain` with `--credentials-file`).
    login: Option<Login>,
    connect_timeout: Duration,
    connect_retries: u32,
    scenario: Scenario,
    connect_permits: Semaphore,
    stop: watch::Receiver<bool>,
    /// With `sync_start`: turns true once every device's first attempt has resolved.
    fleet_ready: watch::Sender<bool>,
    sync_start: bool,
}

impl Ctx {
    /// The broker address of device (or subscriber) `index`: round-robin over `--broker`.
    fn target(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }

    fn source(&self, index: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[index % self.sources.len()])
        }
    }

    /// Records the outcome of a device's first connection attempt; releases the fleet
    /// (`--sync-start`) once every device has one.
    fn resolved(&self, ok: bool) {
        let s = &self.stats;
        if ok {
            s.succeeded.fetch_add(1, Relaxed);
        } else {
            s.failed.fetch_add(1, Relaxed);
        }
        if s.succeeded.load(Relaxed) + s.failed.load(Relaxed) >= self.devices as u64 {
            self.fleet_ready.send_replace(true);
        }
    }

    fn keep_alive_secs(&self) -> u16 {
        u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX)
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

/// The device name for index `i`, also its certificate CN and MQTT ClientId.
pub(crate) fn device_id(i: usize) -> String {
    format!("dev-{i:06}")
}

/// The ClientId of device `i` over plain TCP: without certificates (and without the
/// product's tenant prefix) nothing else keeps it apart from other runs' devices.
fn plain_client_id(run_id: &str, i: usize) -> String {
    format!("lt-{run_id}-{}", device_id(i))
}

/// Resolves every address of `--broker` (comma-separated), each to loopback.
fn resolve_targets(brokers: &str) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    for b in brokers.split(',').map(str::trim) {
        let (host, _) = split_host_port("--broker", b)?;
        let addr = resolve_loopback("--broker", b)?;
        let server_name = ServerName::try_from(host.clone()).map_err(|_| {
            Error::Config(format!(
                "--broker host {host:?} is not a valid TLS server name"
            ))
        })?;
        targets.push(Target { addr, server_name });
    }
    if let Some(t) = targets
        .iter()
        .find(|t| t.addr.is_ipv4() != targets[0].addr.is_ipv4())
    {
        return Err(Error::Config(format!(
            "--broker addresses mix IPv4 and IPv6 ({} and {})",
            targets[0].addr, t.addr
        )));
    }
    Ok(targets)
}

/// Runs one load test as configured and reports what it measured.
///
/// Certificates are generated first (in parallel, not timed as part of any connect figure);
/// then subscribers connect and subscribe, then devices connect following the scenario,
/// publish, and disconnect. The run ends by itself when all work is done or `duration` has
/// passed, whichever comes first.
pub async fn run(config: Config) -> Result<Report, Error> {
    config.validate()?;
    let targets = resolve_targets(&config.broker)?;
    let broker_addr = targets[0].addr;
    let sources = effective_source_ips(config.source_ips.as_deref(), broker_addr)?;
    if let Some(url) = &config.admin {
        crate::admin::resolve_admin_url(url)?;
    }

    let provider = pki::crypto_provider();
    let mut id = [0u8; 4];
    pki::random_bytes(&provider, &mut id)?;
    let run_id = pki::hex(&id);
    let subscriber_ids: Vec<String> = (0..config.subscribers)
        .map(|i| format!("sub-{run_id}-{i:03}"))
        .collect();

    if config.plain {
        let device_ids = (0..config.devices)
            .map(|i| plain_client_id(&run_id, i))
            .collect();
        let plain = Prepared {
            run_id,
            device_ids,
            subscriber_ids,
            device_tls: vec![None; config.devices],
            subscriber_tls: vec![None; config.subscribers],
            generation_s: 0.0,
            ca_generated: false,
            tenant_auth: None,
        };
        return measure(config, targets, sources, plain).await;
    }

    let server_ca = config
        .server_ca
        .clone()
        .ok_or_else(|| Error::Config("--server-ca is required".into()))?;
    let verifier = pki::server_verifier(&provider, &server_ca)?;

    // Certificates, before any clock starts.
    let cert_start = std::time::Instant::now();
    let mut cns: Vec<String> = (0..config.devices).map(device_id).collect();
    cns.extend(subscriber_ids.iter().cloned());
    let (ca, tls_configs) = {
        let provider = provider.clone();
        let verifier = verifier.clone();
        let key_type = config.key_type;
        let ca_paths = config.ca_cert.clone().zip(config.ca_key.clone());
        let run_id = run_id.clone();
        tokio::task::spawn_blocking(move || -> Result<(Ca, Vec<Arc<ClientConfig>>), Error> {
            let ca = match ca_paths {
                Some((cert, key)) => Ca::load(&cert, &key)?,
                None => Ca::generate(&provider, key_type, &run_id)?,
            };
            let configs = pki::issue_fleet(&provider, &verifier, &ca, key_type, &cns)?;
            Ok((ca, configs))
        })
        .await
        .map_err(|e| Error::Internal(format!("certificate generation: {e}")))??
    };
    let generation_s = cert_start.elapsed().as_secs_f64();

    // Tenant and CA upload.
    let mut tenant_auth: Option<TenantAuth> = None;
    if config.upload {
        let url = config
            .admin
            .as_deref()
            .ok_or_else(|| Error::Config("--admin is required to upload the CA".into()))?;
        let admin = Admin::new(
            url,
            &config.admin_user,
            config.admin_password.as_deref().unwrap_or(""),
            pki::admin_tls_config(&provider, verifier.clone())?,
        )?;
        let tenant = config
            .tenant
            .clone()
            .unwrap_or_else(|| format!("loadtest-{run_id}"));
        let mut pw = [0u8; 18];
        pki::random_bytes(&provider, &mut pw)?;
        let tenant_password = format!("Lt-{}", pki::hex(&pw));
        admin.create_tenant(&tenant, &tenant_password).await?;
        let fp = match admin.upload_ca(&tenant, &tenant_password, &ca.pem).await {
            Ok(fp) => fp,
            Err(e) => {
                // Leave nothing behind for a run that never started.
                if !config.keep_tenant {
                    let _ = admin.delete_tenant(&tenant).await;
                }
                return Err(e);
            }
        };
        tenant_auth = Some((admin, tenant, tenant_password, fp));
    }
    let cleanup = match &tenant_auth {
        Some((admin, tenant, ..)) if !config.keep_tenant => Some((admin.clone(), tenant.clone())),
        _ => None,
    };

    let mut device_tls: Vec<Option<Arc<ClientConfig>>> =
        tls_configs.into_iter().map(Some).collect();
    let subscriber_tls = device_tls.split_off(config.devices);
    let prepared = Prepared {
        run_id,
        device_ids: (0..config.devices).map(device_id).collect(),
        subscriber_ids,
        device_tls,
        subscriber_tls,
        generation_s,
        ca_generated: config.ca_cert.is_none(),
        tenant_auth,
    };
    let result = measure(config, targets, sources, prepared).await;
    // The tenant goes, with everything it owns (its CA, devices), whatever the outcome.
    let Some((admin, tenant)) = cleanup else {
        return result;
    };
    let deleted = admin.delete_tenant(&tenant).await;
    let mut report = result?;
    match deleted {
        Ok(()) => report.certs.tenant_deleted = true,
        Err(e) => {
            *report
                .errors
                .entry(format!("cleanup: tenant {tenant} not deleted: {e}"))
                .or_insert(0) += 1;
        }
    }
    Ok(report)
}

/// The admin handle, tenant, tenant password and CA fingerprint of an upload.
type TenantAuth = (Admin, String, String, String);

/// What a run needs before its clock starts.
struct Prepared {
    run_id: String,
    /// ClientIds (and CNs) of the devices.
    device_ids: Vec<String>,
    subscriber_ids: Vec<String>,
    /// One TLS configuration per device (`None`: plain TCP).
    device_tls: Vec<Option<Arc<ClientConfig>>>,
    subscriber_tls: Vec<Option<Arc<ClientConfig>>>,
    generation_s: f64,
    ca_generated: bool,
    tenant_auth: Option<TenantAuth>,
}

/// Connects subscribers and devices, measures, and stops.
async fn measure(
    config: Config,
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    prepared: Prepared,
) -> Result<Report, Error> {
    let Prepared {
        run_id,
        device_ids,
        subscriber_ids,
        device_tls,
        subscriber_tls,
        generation_s,
        ca_generated,
        tenant_auth,
    } = prepared;
    let broker_addr = targets[0].addr;
    let tenant_name = tenant_auth.as_ref().map(|t| t.1.clone());
    let fingerprint = tenant_auth.as_ref().map(|t| t.3.clone());
    let rss_before = config.broker_pid.and_then(report::read_rss_kib);
    let own_pid = std::process::id();
    let cpu_before = (
        config.broker_pid.and_then(report::read_cpu_seconds),
        report::read_cpu_seconds(own_pid),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        stats: Stats::new(),
        targets,
        codec: Codec::new(config.mqtt),
        sources: sources.clone(),
        run_id: run_id.clone(),
        qos: config.qos,
        messages: config.messages,
        payload: config.payload,
        devices: config.devices,
        publish_interval: config.publish_interval,
        keep_alive: config.keep_alive,
        login: config.login.clone(),
        connect_timeout: config.connect_timeout,
        connect_retries: config.connect_retries,
        scenario: config.scenario,
        connect_permits: Semaphore::new(config.concurrency),
        stop: stop_rx,
        fleet_ready: watch::channel(false).0,
        sync_start: config.sync_start,
    });
    let stats = &ctx.stats;

    // Subscribers first: every one must hold its SUBACK before the first device publishes.
    let mut subscribers = JoinSet::new();
    for (i, (tls, cn)) in subscriber_tls.into_iter().zip(subscriber_ids).enumerate() {
        let conn = match subscribe(&ctx, i, &cn, tls).await {
            Ok(conn) => conn,
            Err(reason) => {
                let _ = stop_tx.send(true);
                return Err(Error::Subscriber { cn, reason });
            }
        };
        subscribers.spawn(subscriber_session(ctx.clone(), conn));
    }

    let progress = (config.progress && std::io::stderr().is_terminal())
        .then(|| spawn_progress(ctx.clone(), config.devices));

    // Devices.
    let run_start = Instant::now();
    let deadline = run_start + config.duration;
    let fleet = device_tls.into_iter().zip(device_ids).collect();
    let launcher = tokio::spawn(launch(ctx.clone(), fleet, config.connect_rate));

    let mut timed_out;
    let mut revoke_report = None;
    let devices = config.devices;
    let all_resolved =
        || stats.succeeded.load(Relaxed) + stats.failed.load(Relaxed) >= devices as u64;

    if config.scenario == Scenario::Revoke {
        timed_out = !wait_until(deadline, all_resolved).await;
        if !timed_out {
            // Let the last sessions settle before pulling the CA.
            sleep_until((Instant::now() + Duration::from_millis(200)).min(deadline)).await;
            let report = match &tenant_auth {
                Some((admin, tenant, pw, fp)) => {
                    Some(revoke(stats, admin, tenant, pw, fp, deadline).await)
                }
                None => None,
            };
            timed_out = Instant::now() >= deadline;
            revoke_report = report;
        }
    } else {
        let devices_done = || stats.finished.load(Relaxed) >= devices;
        timed_out = !wait_until(deadline, devices_done).await;
        if !timed_out && config.subscribers > 0 {
            let subs = config.subscribers as u64;
            let drained = || stats.unique.load(Relaxed) >= stats.sent.load(Relaxed) * subs;
            let drain_deadline = (Instant::now() + config.drain_timeout).min(deadline);
            wait_until(drain_deadline, drained).await;
            timed_out = Instant::now() >= deadline && !drained();
        }
        if !config.hold.is_zero() {
            // Idle sessions: let the broker settle before its memory is read.
            sleep(config.hold).await;
        }
    }

    // Measured while every session is still open.
    let rss_after = config.broker_pid.and_then(report::read_rss_kib);
    let cpu_used = |before: Option<f64>, pid: Option<u32>| {
        let after = report::read_cpu_seconds(pid?)?;
        Some(((after - before?) * 100.0).round() / 100.0)
    };
    let broker_cpu = cpu_used(cpu_before.0, config.broker_pid);
    let generator_cpu = cpu_used(cpu_before.1, Some(own_pid));
    let elapsed = run_start.elapsed();

    let _ = stop_tx.send(true);
    let grace = Instant::now() + STOP_GRACE;
    let mut launcher = launcher;
    if tokio::time::timeout_at(grace, &mut launcher).await.is_err() {
        launcher.abort();
        stats.error("stop: device tasks did not finish within the grace period");
    }
    let mut e2e = new_histogram();
    loop {
        match tokio::time::timeout_at(grace, subscribers.join_next()).await {
            Ok(Some(Ok(h))) => {
                let _ = e2e.add(&h);
            }
            Ok(Some(Err(e))) => stats.error(format!("subscriber task: {e}")),
            Ok(None) => break,
            Err(_) => {
                subscribers.abort_all();
                stats.error("stop: subscriber tasks did not finish within the grace period");
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
    }

    let sent = stats.sent.load(Relaxed);
    let expected = sent * config.subscribers as u64;
    let unique = stats.unique.load(Relaxed);
    let errors = stats
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let connect_latency = LatencyMs::from_histogram(
        &stats
            .connect_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let tls_latency =
        LatencyMs::from_histogram(&stats.tls_latency.lock().unwrap_or_else(|e| e.into_inner()));
    let succeeded = stats.succeeded.load(Relaxed);

    Ok(Report {
        run_id,
        scenario: config.scenario,
        params: Params {
            devices: config.devices,
            subscribers: config.subscribers,
            messages_per_device: config.messages,
            publish_interval_ms: u64::try_from(config.publish_interval.as_millis())
                .unwrap_or(u64::MAX),
            qos: config.qos,
            payload_bytes: config.payload,
            mqtt: config.mqtt,
            key_type: config.key_type,
            connect_rate: config.connect_rate,
            concurrency: config.concurrency,
            source_ips: sources.len(),
            duration_s: config.duration.as_secs(),
            plain: config.plain,
            brokers: ctx.targets.len(),
            hold_s: config.hold.as_secs_f64(),
            sync_start: config.sync_start,
        },
        certs: CertsReport {
            issued: if config.plain {
                0
            } else {
                config.devices + config.subscribers
            },
            generation_s: (generation_s * 1000.0).round() / 1000.0,
            ca_generated,
            ca_uploaded: config.upload,
            tenant: tenant_name,
            ca_fingerprint: fingerprint,
            tenant_deleted: false,
        },
        connect: ConnectReport {
            attempted: stats.attempted.load(Relaxed),
            succeeded,
            failed: stats.failed.load(Relaxed),
            rate_per_s: rate_per_s(
                succeeded,
                stats.window(&stats.first_attempt_ns, &stats.last_connack_ns),
            ),
            window_s: (stats
                .window(&stats.first_attempt_ns, &stats.last_connack_ns)
                .as_secs_f64()
                * 1000.0)
                .round()
                / 1000.0,
            latency_ms: connect_latency,
            tls_handshake_ms: tls_latency,
            peak_connected: u64::try_from(stats.peak_connected.load(Relaxed)).unwrap_or(0),
            admission_refused: stats.admission_refused.load(Relaxed),
            retries: stats.retries.load(Relaxed),
            succeeded_after_retry: stats.succeeded_after_retry.load(Relaxed),
        },
        publish: PublishReport {
            sent,
            acked: stats.acked.load(Relaxed),
            rate_per_s: rate_per_s(
                sent,
                stats.window(&stats.first_publish_ns, &stats.last_publish_ns),
            ),
        },
        messages: MessagesReport {
            expected,
            received: stats.received.load(Relaxed),
            lost: expected.saturating_sub(unique),
            duplicated: stats.duplicated.load(Relaxed),
            rate_per_s: rate_per_s(
                unique,
                stats.window(&stats.first_publish_ns, &stats.last_receive_ns),
            ),
        },
        e2e_latency_ms: LatencyMs::from_histogram(&e2e),
        errors,
        revoke: revoke_report,
        broker: BrokerReport {
            address: broker_addr.to_string(),
            pid: config.broker_pid,
            rss_kib: config.broker_pid.map(|_| RssKib {
                before: rss_before,
                after: rss_after,
            }),
            cpu_s: broker_cpu,
        },
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        timed_out,
        generator_cpu_s: generator_cpu,
    })
}

/// Polls `done` until it holds (true) or `deadline` passes (false).
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep_until((Instant::now() + Duration::from_millis(10)).min(deadline)).await;
    }
}

/// Disables the CA and measures until every device session is closed and has stayed closed
/// (no reconnect accepted) for [`REVOKE_WATCH`].
async fn revoke(
    stats: &Stats,
    admin: &Admin,
    tenant: &str,
    tenant_password: &str,
    fingerprint: &str,
    deadline: Instant,
) -> RevokeReport {
    let sessions_at_disable = u64::try_from(stats.connected.load(Relaxed)).unwrap_or(0);
    let t0 = Instant::now();
    let t0_ns = stats.now_ns();
    stats.revoked.store(true, Relaxed);
    let put = admin
        .set_ca_status(tenant, tenant_password, fingerprint, "DISABLED")
        .await;
    let disable_request_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    if let Err(e) = put {
        stats.error(format!("revoke: {e}"));
        return RevokeReport {
            sessions_at_disable,
            disable_request_ms: None,
            all_closed_after_ms: None,
            still_connected: u64::try_from(stats.connected.load(Relaxed)).unwrap_or(0),
            reconnect_attempts: 0,
            reconnect_succeeded: 0,
        };
    }
    let end = (t0 + REVOKE_TIMEOUT).min(deadline);
    let mut zero_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stats.connected.load(Relaxed) <= 0 {
            let since = *zero_since.get_or_insert(now);
            if now - since >= REVOKE_WATCH {
                break;
            }
        } else {
            zero_since = None;
        }
        if now >= end {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let still = u64::try_from(stats.connected.load(Relaxed)).unwrap_or(0);
    let reconnect_succeeded = stats.reconnect_succeeded.load(Relaxed);
    if sessions_at_disable == 0 {
        stats.error("revoke: no device session was open when the CA was disabled");
    }
    let all_closed_after_ms = (sessions_at_disable > 0 && still == 0 && reconnect_succeeded == 0)
        .then(|| {
            let last = stats.last_close_ns.load(Relaxed).max(t0_ns);
            ((last - t0_ns) as f64 / 1e6 * 1000.0).round() / 1000.0
        });
    if reconnect_succeeded > 0 {
        stats.error("revoke: a reconnect succeeded after the CA was disabled");
    }
    if still > 0 {
        stats.error("revoke: sessions still open at the end of the observation");
    }
    RevokeReport {
        sessions_at_disable,
        disable_request_ms: disable_request_ms.map(|v| (v * 1000.0).round() / 1000.0),
        all_closed_after_ms,
        still_connected: still,
        reconnect_attempts: stats.reconnect_attempts.load(Relaxed),
        reconnect_succeeded,
    }
}

fn spawn_progress(ctx: Arc<Ctx>, devices: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(devices as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:20}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let s = &ctx.stats;
        let mut stop = ctx.stop.clone();
        let mut last = (Instant::now(), 0u64);
        loop {
            let done = s.succeeded.load(Relaxed) + s.failed.load(Relaxed);
            let now = Instant::now();
            let dt = (now - last.0).as_secs_f64().max(1e-3);
            let rate = (s.succeeded.load(Relaxed).saturating_sub(last.1)) as f64 / dt;
            last = (now, s.succeeded.load(Relaxed));
            let errors: u64 = s
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            bar.set_position(done);
            bar.set_message(format!(
                "open {} | {:.0}/s | err {} | pub {} | recv {}",
                s.connected.load(Relaxed),
                rate,
                errors,
                s.sent.load(Relaxed),
                s.received.load(Relaxed)
            ));
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = sleep(Duration::from_millis(250)) => {}
            }
        }
        bar.finish_and_clear();
    })
}

/// Starts every device following the scenario; returns when all device tasks have ended.
async fn launch(ctx: Arc<Ctx>, fleet: Vec<(Option<Arc<ClientConfig>>, String)>, rate: f64) {
    let mut tasks = JoinSet::new();
    let mut stop = ctx.stop.clone();
    let start = Instant::now();
    for (i, (tls, client_id)) in fleet.into_iter().enumerate() {
        if ctx.scenario != Scenario::Storm {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = sleep_until(at) => {}
            }
        } else if *stop.borrow() {
            break;
        }
        tasks.spawn(device(ctx.clone(), i, tls, client_id));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            ctx.stats.error(format!("device task: {e}"));
        }
    }
}

/// How a session ended.
enum End {
    /// The run is over; we disconnected.
    Stopped,
    /// The broker (or the network) closed it.
    Closed(String),
}

/// One connection attempt of device `index` with the run's settings.
async fn connect(
    ctx: &Ctx,
    index: usize,
    tls: &Option<Arc<ClientConfig>>,
    cn: &str,
) -> Result<(Conn, crate::mqtt::Timings, Option<u16>), crate::mqtt::ConnectError> {
    establish(
        ctx.target(index),
        tls.clone(),
        ctx.source(index),
        ctx.codec,
        cn,
        ctx.keep_alive_secs(),
        ctx.login.as_ref(),
        ctx.connect_timeout,
    )
    .await
}

/// One device: connect (bounded by the concurrency permits), publish, stay connected until
/// the run stops; in the revoke scenario, keep trying to reconnect once cut off.
async fn device(ctx: Arc<Ctx>, index: usize, tls: Option<Arc<ClientConfig>>, cn: String) {
    let s = &ctx.stats;
    let mut stop = ctx.stop.clone();
    let mut finished = false;
    let finish = |finished: &mut bool| {
        if !*finished {
            *finished = true;
            s.finished.fetch_add(1, Relaxed);
        }
    };

    // The first attempt, then retries with back-off while the broker turns the device
    // away before TLS (admission control) or the attempt times out, as devices do.
    let mut retry = 0u32;
    let mut pause = RETRY_PAUSE;
    let mut rng = Jitter::new(index);
    let result = loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => { finish(&mut finished); return; }
            p = ctx.connect_permits.acquire() => p,
        };
        if retry == 0 {
            s.attempted.fetch_add(1, Relaxed);
            s.first_attempt_ns.fetch_min(s.now_ns(), Relaxed);
        } else {
            s.retries.fetch_add(1, Relaxed);
        }
        let result = connect(&ctx, index, &tls, &cn).await;
        drop(permit);
        match result {
            Err(e) if e.retryable && retry < ctx.connect_retries => {
                if e.admission {
                    s.admission_refused.fetch_add(1, Relaxed);
                }
                retry += 1;
                // Exponential back-off with full jitter, as device SDKs do: a pause
                // drawn uniformly below the doubled (capped) ceiling, so that devices
                // turned away together do not come back together.
                let wait = pause.mul_f64(rng.unit());
                tokio::select! {
                    _ = stopped(&mut stop) => {
                        ctx.resolved(false);
                        s.error(e.kind);
                        finish(&mut finished);
                        return;
                    }
                    _ = sleep(wait) => {}
                }
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            other => break other,
        }
    };
    let (conn, receive_max) = match result {
        Ok((conn, timings, receive_max)) => {
            if retry > 0 {
                s.succeeded_after_retry.fetch_add(1, Relaxed);
            }
            ctx.resolved(true);
            s.last_connack_ns.fetch_max(s.now_ns(), Relaxed);
            report::record(
                &mut s.connect_latency.lock().unwrap_or_else(|e| e.into_inner()),
                timings.total,
            );
            if let Some(tls) = timings.tls {
                report::record(
                    &mut s.tls_latency.lock().unwrap_or_else(|e| e.into_inner()),
                    tls,
                );
            }
            (conn, receive_max)
        }
        Err(e) => {
            if e.admission {
                s.admission_refused.fetch_add(1, Relaxed);
            }
            ctx.resolved(false);
            s.error(e.kind);
            finish(&mut finished);
            return;
        }
    };
    s.opened();
    let topic = format!("loadtest/{}/{}", ctx.run_id, cn);
    let end = publish_session(&ctx, conn, index, &topic, receive_max, true, &mut || {
        finish(&mut finished)
    })
    .await;
    s.closed();
    finish(&mut finished);
    let reason = match end {
        End::Stopped => return,
        End::Closed(reason) => reason,
    };
    if !(ctx.scenario == Scenario::Revoke && s.revoked.load(Relaxed)) {
        s.error(format!("session: {reason}"));
        return;
    }

    // Revoked: behave like a real device and keep knocking, backing off, and within the
    // same bound on attempts in flight as the first connections.
    let mut pause = RECONNECT_PAUSE;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
        let attempt = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = async {
                let _permit = ctx.connect_permits.acquire().await;
                s.reconnect_attempts.fetch_add(1, Relaxed);
                connect(&ctx, index, &tls, &cn).await
            } => r,
        };
        if let Ok((conn, _, receive_max)) = attempt {
            s.reconnect_succeeded.fetch_add(1, Relaxed);
            s.opened();
            let end =
                publish_session(&ctx, conn, index, &topic, receive_max, false, &mut || {}).await;
            s.closed();
            if matches!(end, End::Stopped) {
                return;
            }
        }
    }
}

/// A device's session: publishes its messages (when `publish`), answers the broker, pings
/// when idle, and calls `done` once nothing more will be published.
async fn publish_session(
    ctx: &Ctx,
    mut conn: Conn,
    index: usize,
    topic: &str,
    receive_max: Option<u16>,
    publish: bool,
    done: &mut (dyn FnMut() + Send),
) -> End {
    let s = &ctx.stats;
    let codec = ctx.codec;
    let mut stop = ctx.stop.clone();
    let window = usize::from(receive_max.unwrap_or(u16::MAX)).clamp(1, INFLIGHT_WINDOW);
    if publish && ctx.sync_start {
        // Publish only with the whole fleet connected: the publish window then measures
        // throughput with every session open, not mixed with handshakes.
        let mut ready = ctx.fleet_ready.subscribe();
        tokio::select! {
            _ = stopped(&mut stop) => {
                conn.close(true).await;
                return End::Stopped;
            }
            _ = async { ready.wait_for(|r| *r).await.is_ok() } => {}
        }
    }
    let total = if publish { ctx.messages } else { 0 };
    let mut seq: u32 = 0;
    // pkid -> waiting for PUBCOMP (QoS 2 after PUBREC) or for PUBACK/PUBREC.
    let mut inflight: HashMap<u16, bool> = HashMap::new();
    let mut next_pkid: u16 = 0;
    let mut next_publish = Instant::now();
    let mut last_write = Instant::now();
    let mut pending_sent: u64 = 0;
    let mut reported_done = false;

    loop {
        if !reported_done && seq >= total && inflight.is_empty() {
            reported_done = true;
            done();
        }
        if !conn.out.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, conn.flush()).await {
                Ok(Ok(())) => {
                    if pending_sent > 0 {
                        s.sent.fetch_add(pending_sent, Relaxed);
                        s.last_publish_ns.fetch_max(s.now_ns(), Relaxed);
                        pending_sent = 0;
                    }
                    last_write = Instant::now();
                }
                Ok(Err(e)) => return End::Closed(format!("write: {}", describe_io(&e))),
                Err(_) => return End::Closed("write: timed out".into()),
            }
        }
        let can_publish = seq < total && (ctx.qos == 0 || inflight.len() < window);
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => {
                conn.close(true).await;
                return End::Stopped;
            }
            r = conn.read_more() => {
                match r {
                    Ok(0) => return End::Closed("closed by broker".into()),
                    Ok(_) => {}
                    Err(e) => return End::Closed(describe_io(&e)),
                }
                loop {
                    let packet = match conn.next_packet() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => return End::Closed(format!("malformed packet: {}", e.0)),
                    };
                    match packet {
                        Incoming::PubAck { pkid, ok } => {
                            if inflight.remove(&pkid).is_some() {
                                s.acked.fetch_add(1, Relaxed);
                                if !ok {
                                    s.error("publish: PUBACK with a failure reason");
                                }
                            }
                        }
                        Incoming::PubRec { pkid, ok } => {
                            if !ok {
                                inflight.remove(&pkid);
                                s.error("publish: PUBREC with a failure reason");
                            } else if let Some(released) = inflight.get_mut(&pkid) {
                                *released = true;
                                codec.pubrel(pkid, &mut conn.out);
                            }
                        }
                        Incoming::PubComp { pkid } => {
                            if inflight.remove(&pkid).is_some() {
                                s.acked.fetch_add(1, Relaxed);
                            }
                        }
                        Incoming::PingReq => codec.pingresp(&mut conn.out),
                        Incoming::PingResp => {}
                        Incoming::Publish { qos, pkid, .. } => match qos {
                            1 => codec.puback(pkid, &mut conn.out),
                            2 => codec.pubrec(pkid, &mut conn.out),
                            _ => {}
                        },
                        Incoming::PubRel { pkid } => codec.pubcomp(pkid, &mut conn.out),
                        Incoming::Disconnect { reason } => {
                            return End::Closed(format!("DISCONNECT {reason}"))
                        }
                        other => {
                            s.error(format!("session: unexpected {}", other.name()));
                        }
                    }
                }
            }
            _ = sleep_until(next_publish), if can_publish => {
                let now = Instant::now();
                let payload = make_payload(s.now_ns(), index, seq, ctx.payload);
                let pkid = if ctx.qos == 0 {
                    0
                } else {
                    loop {
                        next_pkid = next_pkid.wrapping_add(1);
                        if next_pkid != 0 && !inflight.contains_key(&next_pkid) {
                            break next_pkid;
                        }
                    }
                };
                codec.publish(topic, ctx.qos, pkid, payload, &mut conn.out);
                if ctx.qos > 0 {
                    inflight.insert(pkid, false);
                }
                if pending_sent == 0 && seq == 0 {
                    s.first_publish_ns.fetch_min(s.now_ns(), Relaxed);
                }
                pending_sent += 1;
                seq += 1;
                // Keep the schedule, but do not burst to catch up after a stall.
                next_publish = (next_publish + ctx.publish_interval).max(now);
            }
            _ = sleep_until(last_write + ctx.keep_alive) => {
                codec.pingreq(&mut conn.out);
            }
        }
    }
}

/// Payload: send time (ns since the run's epoch), device index, sequence, zero padding.
fn make_payload(now_ns: u64, index: usize, seq: u32, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(PAYLOAD_HEADER));
    b.put_u64(now_ns);
    b.put_u32(u32::try_from(index).unwrap_or(u32::MAX));
    b.put_u32(seq);
    b.resize(size.max(PAYLOAD_HEADER), 0);
    b.freeze()
}

/// Inverse of [`make_payload`].
fn parse_payload(p: &[u8]) -> Option<(u64, usize, u32)> {
    if p.len() < PAYLOAD_HEADER {
        return None;
    }
    let ns = u64::from_be_bytes(p[0..8].try_into().ok()?);
    let index = u32::from_be_bytes(p[8..12].try_into().ok()?);
    let seq = u32::from_be_bytes(p[12..16].try_into().ok()?);
    Some((ns, index as usize, seq))
}

/// Connects a subscriber and subscribes to every device topic of the run; returns once the
/// SUBACK granted the subscription.
async fn subscribe(
    ctx: &Ctx,
    index: usize,
    cn: &str,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Conn, String> {
    let (mut conn, _, _) = connect(ctx, index, &tls, cn).await.map_err(|e| e.kind)?;
    let filter = format!("loadtest/{}/#", ctx.run_id);
    ctx.codec.subscribe(1, &filter, ctx.qos, &mut conn.out);
    conn.flush()
        .await
        .map_err(|e| format!("SUBSCRIBE: {}", describe_io(&e)))?;
    let wait = async {
        loop {
            match conn.next_packet() {
                Ok(Some(Incoming::SubAck { pkid: 1, granted })) => {
                    return match granted.first() {
                        Some(Some(_)) => Ok(()),
                        _ => Err(format!("SUBACK refused {filter}")),
                    };
                }
                Ok(Some(Incoming::PingResp)) | Ok(None) => {}
                Ok(Some(other)) => {
                    return Err(format!("unexpected {} before SUBACK", other.name()))
                }
                Err(e) => return Err(format!("malformed packet: {}", e.0)),
            }
            match conn.read_more().await {
                Ok(0) => return Err("closed by broker before SUBACK".into()),
                Ok(_) => {}
                Err(e) => return Err(describe_io(&e)),
            }
        }
    };
    tokio::time::timeout(ctx.connect_timeout, wait)
        .await
        .map_err(|_| "no SUBACK in time".to_string())??;
    Ok(conn)
}

/// Receives until the run stops; returns the end-to-end latency histogram.
async fn subscriber_session(ctx: Arc<Ctx>, mut conn: Conn) -> Histogram<u64> {
    let s = &ctx.stats;
    let codec = ctx.codec;
    let mut stop = ctx.stop.clone();
    let mut hist = new_histogram();
    let per_device = ctx.messages as usize;
    let mut seen = vec![0u64; (ctx.devices * per_device).div_ceil(64)];
    // QoS 2 packet ids received and not yet released: a resend of one of them is the same
    // delivery, not a duplicate.
    let mut unreleased: std::collections::HashSet<u16> = std::collections::HashSet::new();
    let mut last_write = Instant::now();
    loop {
        if !conn.out.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, conn.flush()).await {
                Ok(Ok(())) => last_write = Instant::now(),
                Ok(Err(e)) => {
                    subscriber_closed(s, &format!("write: {}", describe_io(&e)));
                    return hist;
                }
                Err(_) => {
                    subscriber_closed(s, "write: timed out");
                    return hist;
                }
            }
        }
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => {
                conn.close(true).await;
                return hist;
            }
            r = conn.read_more() => {
                match r {
                    Ok(0) => { subscriber_closed(s, "closed by broker"); return hist; }
                    Ok(_) => {}
                    Err(e) => { subscriber_closed(s, &describe_io(&e)); return hist; }
                }
                let now_ns = s.now_ns();
                loop {
                    let packet = match conn.next_packet() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => {
                            subscriber_closed(s, &format!("malformed packet: {}", e.0));
                            return hist;
                        }
                    };
                    match packet {
                        Incoming::Publish { qos, pkid, payload } => {
                            match qos {
                                1 => codec.puback(pkid, &mut conn.out),
                                2 => {
                                    codec.pubrec(pkid, &mut conn.out);
                                    if !unreleased.insert(pkid) {
                                        continue;
                                    }
                                }
                                _ => {}
                            }
                            match parse_payload(&payload) {
                                Some((sent_ns, dev, seq))
                                    if dev < ctx.devices && (seq as usize) < per_device =>
                                {
                                    s.received.fetch_add(1, Relaxed);
                                    let bit = dev * per_device + seq as usize;
                                    let (word, mask) = (bit / 64, 1u64 << (bit % 64));
                                    if seen[word] & mask != 0 {
                                        s.duplicated.fetch_add(1, Relaxed);
                                    } else {
                                        seen[word] |= mask;
                                        s.unique.fetch_add(1, Relaxed);
                                        s.last_receive_ns.fetch_max(now_ns, Relaxed);
                                    }
                                    report::record(
                                        &mut hist,
                                        Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
                                    );
                                }
                                _ => s.error("subscriber: message with a foreign payload"),
                            }
                        }
                        Incoming::PubRel { pkid } => {
                            unreleased.remove(&pkid);
                            codec.pubcomp(pkid, &mut conn.out);
                        }
                        Incoming::PingReq => codec.pingresp(&mut conn.out),
                        Incoming::PingResp => {}
                        Incoming::Disconnect { reason } => {
                            subscriber_closed(s, &format!("DISCONNECT {reason}"));
                            return hist;
                        }
                        other => s.error(format!("subscriber: unexpected {}", other.name())),
                    }
                }
            }
            _ = sleep_until(last_write + ctx.keep_alive) => {
                codec.pingreq(&mut conn.out);
            }
        }
    }
}

fn subscriber_closed(s: &Stats, reason: &str) {
    // After a revocation the subscribers (same CA) are cut off too: expected, not an error.
    if !s.revoked.load(Relaxed) {
        s.error(format!("subscriber: {reason}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_and_padding() {
        let p = make_payload(123_456_789, 42, 7, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse_payload(&p), Some((123_456_789, 42, 7)));
        let p = make_payload(1, 2, 3, 4);
        assert_eq!(p.len(), PAYLOAD_HEADER);
        assert_eq!(parse_payload(&p[..10]), None);
    }

    #[test]
    fn broker_lists() {
        let t = resolve_targets("127.0.0.1:1, 127.0.0.2:2").expect("two loopback targets");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addr, "127.0.0.2:2".parse().expect("addr"));
        assert!(matches!(
            resolve_targets("127.0.0.1:1,10.0.0.1:2"),
            Err(Error::NotLoopback { .. })
        ));
        assert!(matches!(
            resolve_targets("127.0.0.1:1,[::1]:2"),
            Err(Error::Config(_))
        ));
        assert_eq!(plain_client_id("0a1b2c3d", 7), "lt-0a1b2c3d-dev-000007");
    }

    #[test]
    fn device_ids() {
        assert_eq!(device_id(42), "dev-000042");
        assert_eq!(device_id(99_999), "dev-099999");
    }
}
