//! Prometheus metrics and the plain-HTTP `/metrics` endpoint.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The product's metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections_open: IntGaugeVec,
    handshakes: IntCounterVec,
    handshake_seconds: HistogramVec,
    handshake_queue_seconds: Histogram,
    connect_seconds: HistogramVec,
    refused: IntCounterVec,
    /// Forwarded packets and bytes, resolved once per direction: [up, down].
    forwarded: [(IntCounter, IntCounter); 2],
    revoked_sessions: IntCounterVec,
    acl_refused: IntCounterVec,
    crl_unknown: IntCounterVec,
    admin_requests: IntCounterVec,
    admin_refused: IntCounterVec,
    anchors: IntGauge,
    admission_share: Gauge,
    store_reachable: IntGauge,
    store_synced: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static: a failure here is a programming error caught by
    // the first test run, never input-dependent.
    match r {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let connections_open = must(IntGaugeVec::new(
            Opts::new("mqtt_connections_open", "Open device sessions per tenant"),
            &["tenant"],
        ));
        let handshakes = must(IntCounterVec::new(
            Opts::new(
                "mqtt_tls_handshakes_total",
                "TLS handshakes by outcome and reason",
            ),
            &["outcome", "reason"],
        ));
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let handshake_seconds = must(HistogramVec::new(
            HistogramOpts::new("mqtt_tls_handshake_seconds", "TLS handshake duration")
                .buckets(buckets.clone()),
            &["outcome"],
        ));
        let handshake_queue_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "mqtt_handshake_queue_seconds",
                "Wait of connections that arrived with the handshake rate used up, before their handshake (limits.handshake_queue_ms)",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]),
        ));
        let connect_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "mqtt_connect_seconds",
                "Accept to CONNACK duration of accepted sessions",
            )
            .buckets(buckets),
            &["protocol"],
        ));
        let refused = must(IntCounterVec::new(
            Opts::new(
                "mqtt_connections_refused_total",
                "Connections or CONNECTs refused, by reason",
            ),
            &["reason"],
        ));
        let messages = must(IntCounterVec::new(
            Opts::new("mqtt_packets_total", "MQTT packets forwarded, by direction"),
            &["direction"],
        ));
        let bytes = must(IntCounterVec::new(
            Opts::new("mqtt_bytes_total", "MQTT bytes forwarded, by direction"),
            &["direction"],
        ));
        let revoked_sessions = must(IntCounterVec::new(
            Opts::new(
                "mqtt_sessions_closed_by_revocation_total",
                "Live sessions closed because their trust was withdrawn",
            ),
            &["reason"],
        ));
        let acl_refused = must(IntCounterVec::new(
            Opts::new(
                "mqtt_acl_refused_total",
                "Publishes, subscriptions and wills refused by the tenant's topic rules, by tenant, action (publish, subscribe, will) and reason (denied, qos, retain, invalid)",
            ),
            &["tenant", "action", "reason"],
        ));
        let crl_unknown = must(IntCounterVec::new(
            Opts::new(
                "mqtt_crl_unknown_status_total",
                "Devices whose revocation status a CRL distribution point could not give, by the tenant's decision (refused: fail-closed, admitted: fail-open) and why",
            ),
            &["decision", "reason"],
        ));
        let admin_requests = must(IntCounterVec::new(
            Opts::new(
                "admin_api_requests_total",
                "Admin API requests by route and status",
            ),
            &["method", "route", "status"],
        ));
        let admin_refused = must(IntCounterVec::new(
            Opts::new(
                "admin_api_connections_refused_total",
                "Admin API connections closed before or instead of HTTP, by reason",
            ),
            &["reason"],
        ));
        let anchors = must(IntGauge::new(
            "trust_store_anchors",
            "Trusted certificates in the live trust store",
        ));
        let admission_share = must(Gauge::new(
            "handshake_admission_share",
            "Share of the configured handshake rate admitted now (lower while connected devices' traffic lags)",
        ));
        let store_reachable = must(IntGauge::new(
            "store_reachable",
            "1 while the shared database (PostgreSQL) is reachable, 0 while the node serves its last trust snapshot",
        ));
        let store_synced = must(IntGauge::new(
            "store_synced_timestamp_seconds",
            "Unix time the node last confirmed it had every change of the shared database",
        ));
        for c in [
            Box::new(connections_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(store_reachable.clone()),
            Box::new(store_synced.clone()),
            Box::new(admission_share.clone()),
            Box::new(handshakes.clone()),
            Box::new(handshake_seconds.clone()),
            Box::new(handshake_queue_seconds.clone()),
            Box::new(connect_seconds.clone()),
            Box::new(refused.clone()),
            Box::new(messages.clone()),
            Box::new(bytes.clone()),
            Box::new(revoked_sessions.clone()),
            Box::new(acl_refused.clone()),
            Box::new(crl_unknown.clone()),
            Box::new(admin_requests.clone()),
            Box::new(admin_refused.clone()),
            Box::new(anchors.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                connections_open,
                handshakes,
                handshake_seconds,
                handshake_queue_seconds,
                connect_seconds,
                refused,
                forwarded: [
                    (
                        messages.with_label_values(&["up"]),
                        bytes.with_label_values(&["up"]),
                    ),
                    (
                        messages.with_label_values(&["down"]),
                        bytes.with_label_values(&["down"]),
                    ),
                ],
                revoked_sessions,
                acl_refused,
                crl_unknown,
                admin_requests,
                admin_refused,
                anchors,
                admission_share,
                store_reachable,
                store_synced,
            }),
        }
    }

    /// A chain refused by the verifier outside a handshake whose outcome the listener
    /// records (a handshake has exactly one outcome: see [`Metrics::handshake`]).
    pub fn handshake_rejected(&self, reason: &str) {
        self.inner
            .handshakes
            .with_label_values(&["rejected", reason])
            .inc();
    }

    /// A finished handshake attempt, counted once under its one outcome: `ok`,
    /// `rejected` (the verifier refused the chain; `reason` is why) or `failed` (any
    /// other failure).
    pub fn handshake(&self, outcome: &str, reason: &str, seconds: f64) {
        self.inner
            .handshakes
            .with_label_values(&[outcome, reason])
            .inc();
        self.inner
            .handshake_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    /// A connection that waits `seconds` for its turn at the handshake rate.
    pub fn handshake_queued(&self, seconds: f64) {
        self.inner.handshake_queue_seconds.observe(seconds);
    }

    /// A connection or CONNECT refused before a session started.
    pub fn refused(&self, reason: &str) {
        self.inner.refused.with_label_values(&[reason]).inc();
    }

    /// An accepted session: accept-to-CONNACK time.
    pub fn connected(&self, tenant: &str, protocol: &str, seconds: f64) {
        self.inner
            .connections_open
            .with_label_values(&[tenant])
            .inc();
        self.inner
            .connect_seconds
            .with_label_values(&[protocol])
            .observe(seconds);
    }

    /// A session ended.
    pub fn disconnected(&self, tenant: &str) {
        self.inner
            .connections_open
            .with_label_values(&[tenant])
            .dec();
    }

    /// Packets and bytes forwarded in one direction (`up` = device to broker, `down`).
    pub fn forwarded(&self, direction: &str, packets: u64, bytes: u64) {
        let (p, b) = &self.inner.forwarded[usize::from(direction != "up")];
        p.inc_by(packets);
        b.inc_by(bytes);
    }

    /// A publish, subscription or will refused by the tenant's topic rules.
    pub fn acl_refused(&self, tenant: &str, action: &str, reason: &str) {
        self.inner
            .acl_refused
            .with_label_values(&[tenant, action, reason])
            .inc();
    }

    /// A live session closed by revocation.
    pub fn revoked_session(&self, reason: &str) {
        self.inner
            .revoked_sessions
            .with_label_values(&[reason])
            .inc();
    }

    /// A device whose revocation status at a CRL distribution point is unknown, and what
    /// its tenant's choice made of it (`refused` or `admitted`).
    pub fn crl_unknown_status(&self, decision: &str, reason: &str) {
        self.inner
            .crl_unknown
            .with_label_values(&[decision, reason])
            .inc();
    }

    /// An admin API request.
    pub fn admin_request(&self, method: &str, route: &str, status: u16) {
        self.inner
            .admin_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
    }

    /// An admin API connection closed before or instead of HTTP (`per_source`,
    /// `connections`, `tls_handshake`, `idle`, `accept_error`).
    pub fn admin_refused(&self, reason: &str) {
        self.inner.admin_refused.with_label_values(&[reason]).inc();
    }

    /// Registers a module's own metrics (the embedded broker's durable state).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        must(self.inner.registry.register(collector));
    }

    /// Anchors in the live trust store.
    pub fn set_anchors(&self, n: usize) {
        self.inner.anchors.set(n as i64);
    }

    /// The shared database's state: reachable, and when the node last had every change.
    pub fn set_store_sync(&self, reachable: bool, synced_at: i64) {
        self.inner.store_reachable.set(i64::from(reachable));
        self.inner.store_synced.set(synced_at);
    }

    /// Share of the configured handshake rate admitted now.
    pub fn set_admission_share(&self, share: f64) {
        self.inner.admission_share.set(share);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
