//! One device session: CONNECT policy (ClientId = CN, registry, blocked devices),
//! forwarding to the backend with topics mounted under the tenant, and closing the
//! session when its trust is withdrawn.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use certs::{DeviceIdentity, TrustStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use admin_api::acl::{Acl, Applies, Refusal};
use arc_swap::ArcSwap;

use crate::mqtt::{self, codes, relax, Connect, Mount, MqttError, Verdict, Version, KEEP_BUF};
use crate::Shared;

/// Initial read buffer per direction. Idle devices dominate a fleet: buffers start
/// small and grow only for the packets that need it (output buffers start empty).
const READ_BUF: usize = 1024;

/// A session registered with [`crate::backend::BackendPool::session_began`] that
/// unregisters itself if the set-up fails.
struct LiveGuard {
    n: Option<u64>,
    id: String,
    shared: Arc<Shared>,
    keep: bool,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let (false, Some(n)) = (self.keep, self.n) {
            self.shared.backend.session_ended(&self.id, n);
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The device closed the connection.
    DeviceClosed,
    /// The backend closed the connection after a DISCONNECT of its own (forwarded).
    BackendClosed,
    /// The backend closed the connection without a word: it went away.
    BackendLost,
    /// The backend closed the connection because a newer session of the same ClientId
    /// on this node took it over.
    TakenOver,
    /// The device sent something unacceptable.
    Protocol(MqttError),
    /// I/O error on either side.
    Io(#[allow(dead_code)] std::io::Error),
    /// Trust withdrawn: (MQTT 5 reason code, metric label).
    Revoked(u8, &'static str),
    /// Nothing came from the device for one and a half keep-alive periods.
    KeepAliveTimeout,
    /// The broker is shutting down.
    Shutdown,
}

/// Checks the device certificate against the CRLs at every distribution point it names
/// (cached by the fetcher until nextUpdate), through the configured egress policy. A
/// CRL listing the certificate refuses it. A point whose CRL cannot be used (a scheme
/// other than http/https such as `ldap:`, refused by the egress policy or its rate,
/// unreachable, malformed, stale or not signed by the certificate's issuer) leaves the
/// revocation status unknown, and [`unknown_revocation_status`] decides.
async fn check_online_crl(
    shared: &Shared,
    chain: &[certs::CertificateDer<'static>],
    id: &DeviceIdentity,
    fail_open: bool,
) -> Result<(), &'static str> {
    let Some(leaf) = chain.first() else {
        return Ok(());
    };
    let urls = certs::revocation::distribution_points(leaf.as_ref());
    if urls.is_empty() {
        return Ok(());
    }
    // The fetcher holds the policy built from the validated config at start.
    let policy = shared.crl_fetcher.policy();
    let now = certs::now_unix();
    for url in &urls {
        match crl_at(shared, policy, url, chain, id, now).await {
            Ok(crl) if crl.is_revoked(&id.serial_hex) => return Err("revoked_online"),
            Ok(_) => {}
            Err(label) => unknown_revocation_status(shared, fail_open, id, url, label)?,
        }
    }
    Ok(())
}

/// The CRL at one distribution point, fresh and signed by the device certificate's
/// issuer (an intermediate the device sent, or the tenant's anchor), or the metric
/// label of why it cannot be used.
async fn crl_at(
    shared: &Shared,
    policy: &Arc<certs::egress::EgressPolicy>,
    url: &str,
    chain: &[certs::CertificateDer<'static>],
    id: &DeviceIdentity,
    now: i64,
) -> Result<Arc<certs::revocation::Crl>, &'static str> {
    use certs::egress::EgressError;
    use certs::revocation::CrlError;
    let crl = shared
        .crl_fetcher
        .fetch_for(&id.tenant, url, now, policy)
        .await
        .map_err(|e| match e {
            CrlError::Refused {
                reason: EgressError::Scheme(_),
                ..
            } => "crl_unsupported_scheme",
            CrlError::Refused {
                reason: EgressError::RateLimited(_),
                ..
            } => "crl_rate_limited",
            CrlError::Refused { .. } => "crl_egress_refused",
            CrlError::Malformed(_) => "crl_malformed",
            _ => "crl_unreachable",
        })?;
    crl.check_fresh(now).map_err(|_| "crl_stale")?;
    let anchor = shared.trust.load_full();
    let signed = chain[1..]
        .iter()
        .map(|c| c.as_ref())
        .chain(anchor.anchor_der(&id.anchor_fingerprint))
        .any(|c| crl.verify_signed_by(c).is_ok());
    if !signed {
        return Err("crl_signature");
    }
    Ok(crl)
}

/// The one decision for a device whose revocation status at distribution point `url`
/// is unknown (`reason`, a metric label): admitted when `fail_open`, refused with
/// `reason` otherwise (the secure default). Logged either way; a refusal is counted
/// in `mqtt_connections_refused_total{reason}` by the caller's CONNACK.
fn unknown_revocation_status(
    shared: &Shared,
    fail_open: bool,
    id: &DeviceIdentity,
    url: &str,
    reason: &'static str,
) -> Result<(), &'static str> {
    shared
        .metrics
        .crl_unknown_status(if fail_open { "admitted" } else { "refused" }, reason);
    if fail_open {
        tracing::warn!(
            tenant = %id.tenant,
            cn = %id.common_name,
            fingerprint = %id.fingerprint,
            url,
            reason,
            decision = "admitted (fail-open)",
            "revocation status unknown at a CRL distribution point"
        );
        Ok(())
    } else {
        tracing::warn!(
            tenant = %id.tenant,
            cn = %id.common_name,
            fingerprint = %id.fingerprint,
            url,
            reason,
            decision = "refused (fail-closed)",
            "revocation status unknown at a CRL distribution point"
        );
        Err(reason)
    }
}

/// Flow control of one session: unacknowledged QoS 1/2 PUBLISH packets from the
/// device, and the tenant's publish rate.
struct Inflight {
    count: AtomicU32,
    max: u32,
    tenant: Arc<str>,
    publish_rate: u32,
}

/// How long the end of a session waits to write its last bytes and the TLS close to the
/// device before it closes the socket anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most one log line per session per this interval for refusals by the topic rules
/// (the line carries how many it left out); every refusal is counted in
/// `mqtt_acl_refused_total`.
const ACL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The topic rules of one session: compiled at CONNECT with the device's CN and tenant,
/// replaced when the tenant's rules change ([`SessionAcl::refresh`]), read by the
/// upstream pump without allocating.
struct SessionAcl {
    /// The rule set the compiled rules come from.
    applies: std::sync::Mutex<Applies>,
    compiled: ArcSwap<Acl>,
    /// Granted subscriptions, as the device sent them. Held while a SUBSCRIBE is
    /// checked and recorded and while new rules are swapped in, so a subscription
    /// checked against old rules is always re-checked against the new ones.
    subscriptions: std::sync::Mutex<Vec<String>>,
    /// SUBSCRIBE packets with refused filters that went to the backend with the others:
    /// (packet id, per filter `Some(refusal code)` or `None` for the backend's code).
    pending_subacks: std::sync::Mutex<Vec<PendingSuback>>,
    /// MQTT 3.1.1 QoS 2 publishes refused (a plain PUBREC was sent): their PUBREL is
    /// answered with PUBCOMP here.
    refused_qos2: std::sync::Mutex<Vec<[u8; 2]>>,
    /// When the last refusal was logged, and refusals not logged since.
    log: std::sync::Mutex<(Option<Instant>, u64)>,
    /// The backend resumed an earlier session (CONNACK session present): it holds
    /// subscriptions this connection never sent, which no rule check has seen.
    resumed: bool,
}

/// A SUBSCRIBE's packet id and, per filter, its refusal code or `None` (the backend's).
type PendingSuback = ([u8; 2], Vec<Option<u8>>);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionAcl {
    fn new(applies: Applies, compiled: Acl) -> SessionAcl {
        SessionAcl {
            applies: std::sync::Mutex::new(applies),
            compiled: ArcSwap::from_pointee(compiled),
            subscriptions: Default::default(),
            pending_subacks: Default::default(),
            refused_qos2: Default::default(),
            log: Default::default(),
            resumed: false,
        }
    }

    /// Counts a refusal and logs it, rate-limited.
    fn refused(
        &self,
        shared: &Shared,
        id: &DeviceIdentity,
        action: &'static str,
        topic: &str,
        reason: Refusal,
    ) {
        shared
            .metrics
            .acl_refused(&id.tenant, action, reason.label());
        let now = Instant::now();
        let mut log = lock(&self.log);
        if log
            .0
            .is_some_and(|at| now.duration_since(at) < ACL_LOG_INTERVAL)
        {
            log.1 += 1;
            return;
        }
        tracing::warn!(
            tenant = %id.tenant,
            cn = %id.common_name,
            action,
            topic,
            reason = reason.label(),
            not_logged_before = log.1,
            "refused by the topic rules"
        );
        *log = (Some(now), 0);
    }

    /// Re-reads the rule set that applies to the device from the newest snapshot; when
    /// it changed, compiles it and swaps it in. A granted subscription the new rules no
    /// longer allow ends the session (`Err`): the backend holds it and would go on
    /// delivering, and MQTT has no way to take one subscription back from a client.
    fn refresh(&self, shared: &Shared, id: &DeviceIdentity) -> Result<(), End> {
        let now =
            shared
                .admin
                .acl_applies(&id.tenant, &id.common_name, Some(&id.anchor_fingerprint));
        let mut applies = lock(&self.applies);
        if *applies == now {
            return Ok(());
        }
        let compiled = now.compile(&id.tenant, &id.common_name);
        let subscriptions = lock(&self.subscriptions);
        let withdrawn = if self.resumed && !compiled.is_allow_all() {
            // Its earlier subscriptions cannot be checked: they may be anything.
            Some("(subscriptions of an earlier connection)".to_string())
        } else {
            subscriptions
                .iter()
                .find(|f| !compiled.check_subscribe(f, 0).allowed())
                .cloned()
        };
        self.compiled.store(Arc::new(compiled));
        *applies = now;
        drop(subscriptions);
        match withdrawn {
            Some(filter) => {
                shared
                    .metrics
                    .acl_refused(&id.tenant, "subscribe", "withdrawn");
                tracing::warn!(
                    tenant = %id.tenant,
                    cn = %id.common_name,
                    filter,
                    "session closed: the topic rules no longer allow one of its subscriptions"
                );
                Err(End::Revoked(
                    codes::V5_NOT_AUTHORIZED,
                    "acl_subscription_withdrawn",
                ))
            }
            None => Ok(()),
        }
    }
}

/// Packets the front-end itself answers to the device from the upstream pump (which
/// does not own the device's writer): the downstream pump writes them.
#[derive(Default)]
struct Answers {
    bytes: std::sync::Mutex<BytesMut>,
    ready: tokio::sync::Notify,
    /// The device sent DISCONNECT: the backend closing its side next is the end of a
    /// normal session, not a lost backend.
    bye: std::sync::atomic::AtomicBool,
}

impl Answers {
    fn push(&self, pkt: &[u8]) {
        self.bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(pkt);
        self.ready.notify_one();
    }

    /// Moves what is waiting to `out`; the number of packets is not tracked, so one
    /// is counted per call that found something.
    fn take_into(&self, out: &mut BytesMut) -> bool {
        let mut b = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_empty() {
            return false;
        }
        out.extend_from_slice(&b);
        b.clear();
        true
    }
}

/// Reads one complete packet into `buf` (which may already hold bytes) and returns its
/// length, or `None` on a clean EOF.
async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<usize>, End> {
    loop {
        if let Some(n) = mqtt::frame_len(buf, max).map_err(End::Protocol)? {
            return Ok(Some(n));
        }
        if r.read_buf(buf).await.map_err(End::Io)? == 0 {
            return Ok(None);
        }
    }
}

fn reason_for(e: &MqttError, version: Version) -> u8 {
    match (e, version) {
        (_, Version::V4) => codes::V4_NOT_AUTHORIZED,
        (MqttError::TooLarge(_), _) => codes::V5_PACKET_TOO_LARGE,
        (MqttError::InvalidTopic | MqttError::ReservedTopic, _) => codes::V5_TOPIC_INVALID,
        (MqttError::UnknownAlias(_), _) => codes::V5_TOPIC_ALIAS_INVALID,
        (MqttError::InflightExceeded, _) => codes::V5_RECEIVE_MAXIMUM_EXCEEDED,
        (MqttError::RateExceeded, _) => codes::V5_MESSAGE_RATE_TOO_HIGH,
        (MqttError::Malformed(_), _) => codes::V5_MALFORMED,
        _ => codes::V5_PROTOCOL_ERROR,
    }
}

/// The device a CONNECT-time refusal is about (its TLS handshake verified it): the
/// refusal goes to its own tenant's recent refusals (the console's page) as well as to
/// the metric (`mqtt_connections_refused_total{reason}`), so that a tenant admin sees
/// why a device that passed TLS gets no session.
struct Who<'a> {
    id: &'a DeviceIdentity,
    source: std::net::IpAddr,
}

impl Who<'_> {
    /// Counts the refusal and records it for the tenant.
    fn refused(&self, shared: &Shared, label: &str) {
        shared.metrics.refused(label);
        shared.admin.record_refusal(
            &self.id.tenant,
            admin_api::live::HandshakeRefusal {
                reason: label.to_string(),
                detail: connect_refusal_detail(label),
                subject: self.id.subject.clone(),
                fingerprint: self.id.fingerprint.clone(),
                source: self.source,
            },
        );
    }
}

/// What a CONNECT-time refusal label means, in the words the console shows.
fn connect_refusal_detail(label: &str) -> String {
    let words = match label {
        "connect_too_large" => "the CONNECT packet is larger than the broker accepts",
        "no_connect" | "not_connect" => "the device sent something other than a CONNECT",
        "connect_timeout" => "the device sent no CONNECT in time after its TLS handshake",
        "unsupported_protocol" => "the CONNECT asks for an MQTT version other than 3.1.1 or 5",
        "malformed_connect" => "the CONNECT packet is malformed",
        "client_id_mismatch" => "the ClientId is not the certificate's Common Name",
        "device_blocked" => "the device is blocked",
        "device_not_registered" => {
            "the device is not registered and its CA does not auto-register devices"
        }
        "registry_unavailable" => "the device registry was unavailable (the broker's store)",
        "revoked_online" => "the certificate is revoked by its CRL distribution point",
        "acl_will" => "the topic rules do not allow the will's topic",
        "invalid_will_topic" => "the will's topic is not a valid topic",
        "tenant_device_limit" => "the tenant's limit of connected devices is reached",
        "backend_unavailable" | "backend_refused" | "backend_connack" => {
            "the broker behind the front-end did not accept the session"
        }
        _ => return format!("trust withdrawn after the TLS handshake ({label})"),
    };
    words.to_string()
}

async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut W,
    shared: &Shared,
    who: &Who<'_>,
    version: Version,
    v4: u8,
    v5: u8,
    label: &str,
) {
    who.refused(shared, label);
    let code = if version == Version::V4 { v4 } else { v5 };
    let _ = w.write_all(&mqtt::connack_bytes(version, code)).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Refuses the CONNECT (and returns true) when `store` no longer trusts `id`: 3.1.1
/// "not authorized" (5), 5.0 "not authorized" (0x87), or "banned" (0x8A) for a blocked
/// device.
async fn refuse_withdrawn<W: AsyncWrite + Unpin>(
    w: &mut W,
    shared: &Shared,
    store: &TrustStore,
    who: &Who<'_>,
    version: Version,
) -> bool {
    let id = who.id;
    let Err(withdrawn) = still_trusted(store, id, certs::UnixTime::now()) else {
        return false;
    };
    tracing::warn!(
        tenant = %id.tenant,
        cn = %id.common_name,
        fingerprint = %id.fingerprint,
        reason = withdrawn.label,
        "CONNECT refused: trust withdrawn after the TLS handshake"
    );
    let v5 = if withdrawn.banned {
        codes::V5_BANNED
    } else {
        codes::V5_NOT_AUTHORIZED
    };
    refuse(
        w,
        shared,
        who,
        version,
        codes::V4_NOT_AUTHORIZED,
        v5,
        withdrawn.label,
    )
    .await;
    true
}

/// A session whose CONNECT passed every policy, was accepted by the backend and was
/// answered to the device: ready to forward packets ([`Established::serve`]).
pub struct Established<S> {
    dev: S,
    backend: Box<dyn crate::backend::Io>,
    dbuf: BytesMut,
    bbuf: BytesMut,
    id: DeviceIdentity,
    shared: Arc<Shared>,
    version: Version,
    keep_alive: u16,
    publish_rate: u32,
    mount: Mount,
    /// Its number among this node's sessions on a TCP backend (see
    /// [`crate::backend::BackendPool::session_began`]).
    live: Option<u64>,
    acl: SessionAcl,
    _slot: crate::admission::SessionSlot,
}

/// Sets a session up on an mTLS stream whose chain verified as `id`: reads the CONNECT
/// (under the CONNECT timeout), applies the policies (ClientId = CN, registry, blocked
/// devices, online CRL, tenant quotas), connects to the backend and relays its CONNACK.
/// Refusals are answered to the device here. The backend socket is registered with
/// `sessions`, the runtime that will run [`Established::serve`], so that its packets are
/// handled there.
pub async fn establish<S>(
    mut dev: S,
    id: DeviceIdentity,
    chain: Vec<certs::CertificateDer<'static>>,
    shared: Arc<Shared>,
    accepted_at: Instant,
    source: std::net::IpAddr,
    sessions: &tokio::runtime::Handle,
) -> Option<Established<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let who = Who { id: &id, source };
    let limits = &shared.config.limits;
    let max = limits.max_packet_size;
    let mut dbuf = BytesMut::with_capacity(READ_BUF);

    // CONNECT, under a timeout (slowloris in CONNECT is closed here).
    let first = tokio::time::timeout(
        Duration::from_millis(limits.connect_timeout_ms),
        read_packet(&mut dev, &mut dbuf, max),
    )
    .await;
    let n = match first {
        Ok(Ok(Some(n))) => n,
        Ok(Err(End::Protocol(MqttError::TooLarge(_)))) => {
            who.refused(&shared, "connect_too_large");
            return None;
        }
        Ok(_) => {
            who.refused(&shared, "no_connect");
            return None;
        }
        Err(_) => {
            who.refused(&shared, "connect_timeout");
            return None;
        }
    };
    let pkt = dbuf.split_to(n);
    let version = match mqtt::connect_version(&pkt) {
        Ok(v) => v,
        Err(MqttError::UnsupportedProtocol(level)) => {
            // 3.1 and older get the 3.1.1 refusal; anything newer the 5.0 one.
            let v = if level < 5 { Version::V4 } else { Version::V5 };
            refuse(
                &mut dev,
                &shared,
                &who,
                v,
                codes::V4_BAD_PROTOCOL,
                codes::V5_UNSUPPORTED_PROTOCOL,
                "unsupported_protocol",
            )
            .await;
            return None;
        }
        Err(_) => {
            who.refused(&shared, "not_connect");
            return None;
        }
    };
    let connect = match Connect::decode(&pkt, version) {
        Ok(c) => c,
        Err(_) => {
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_ID_REJECTED,
                codes::V5_MALFORMED,
                "malformed_connect",
            )
            .await;
            return None;
        }
    };
    let tenant: &str = &id.tenant;
    let cn = id.common_name.as_str();
    let trust = shared.trust.load_full();
    let policy_override = trust.policy(tenant).is_some_and(|p| p.client_id_override);

    // ClientId policy: empty -> CN; equal -> ok; otherwise refused unless override.
    let sent = connect.client_id().to_string();
    if !sent.is_empty() && sent != cn && !policy_override {
        tracing::warn!(tenant, cn, client_id = %sent, "ClientId does not match the certificate CN");
        refuse(
            &mut dev,
            &shared,
            &who,
            version,
            codes::V4_NOT_AUTHORIZED,
            codes::V5_CLIENT_ID_NOT_VALID,
            "client_id_mismatch",
        )
        .await;
        return None;
    }
    if refuse_withdrawn(&mut dev, &shared, &trust, &who, version).await {
        return None;
    }
    match shared.admin.device_admission(tenant, cn).await {
        Ok(admin_api::DeviceState::Blocked) => {
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_NOT_AUTHORIZED,
                codes::V5_BANNED,
                "device_blocked",
            )
            .await;
            return None;
        }
        Ok(admin_api::DeviceState::Registered) => {}
        Ok(admin_api::DeviceState::Unknown) if id.auto_registration => {
            // Registered before its CONNACK: a device told it is connected is in the
            // registry after a crash. The store group-commits the registrations that
            // arrive together, so a wave of first connections shares its fsyncs.
            if let Err(e) = shared
                .admin
                .register_device(tenant, cn, &id.anchor_fingerprint)
                .await
            {
                tracing::error!(tenant, cn, error = %e, "device registration failed");
                refuse(
                    &mut dev,
                    &shared,
                    &who,
                    version,
                    codes::V4_UNAVAILABLE,
                    codes::V5_SERVER_UNAVAILABLE,
                    "registry_unavailable",
                )
                .await;
                return None;
            }
        }
        Ok(admin_api::DeviceState::Unknown) => {
            tracing::warn!(
                tenant,
                cn,
                "device not registered and the CA does not auto-register"
            );
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_NOT_AUTHORIZED,
                codes::V5_NOT_AUTHORIZED,
                "device_not_registered",
            )
            .await;
            return None;
        }
        Err(e) => {
            tracing::error!(tenant, cn, error = %e, "device registry unavailable");
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_UNAVAILABLE,
                codes::V5_SERVER_UNAVAILABLE,
                "registry_unavailable",
            )
            .await;
            return None;
        }
    }

    let settings = shared.admin.tenant_settings(tenant).unwrap_or_default();
    // Online revocation: the CRL distribution points named by the device certificate.
    if settings.crl_online_enabled {
        if let Err(reason) =
            check_online_crl(&shared, &chain, &id, settings.crl_online_fail_open).await
        {
            tracing::warn!(
                tenant,
                cn,
                reason,
                "device refused by its CRL distribution point"
            );
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_NOT_AUTHORIZED,
                codes::V5_NOT_AUTHORIZED,
                reason,
            )
            .await;
            return None;
        }
    }

    // Topic rules, compiled for this device; its will is a publish like any other.
    let applies = shared
        .admin
        .acl_applies(tenant, cn, Some(&id.anchor_fingerprint));
    let compiled = applies.compile(tenant, cn);
    if let Some((topic, qos, retain)) = connect.will() {
        let topic = std::str::from_utf8(topic).unwrap_or_default();
        // A `$` or malformed will topic is refused as before, by the mounting.
        let checked = !compiled.is_allow_all() && !topic.is_empty() && !topic.starts_with('$');
        if let Err(reason) = compiled.check_publish(topic, qos, retain).result {
            if checked && reason != Refusal::Invalid {
                shared.metrics.acl_refused(tenant, "will", reason.label());
                tracing::warn!(
                    tenant,
                    cn,
                    topic,
                    reason = reason.label(),
                    "CONNECT refused: the topic rules do not allow its will"
                );
                refuse(
                    &mut dev,
                    &shared,
                    &who,
                    version,
                    codes::V4_NOT_AUTHORIZED,
                    codes::V5_NOT_AUTHORIZED,
                    "acl_will",
                )
                .await;
                return None;
            }
        }
    }
    let mut acl = SessionAcl::new(applies, compiled);

    // Tenant quotas.
    let Some(_slot) = shared.quotas.open_session(&id.tenant, settings.max_devices) else {
        tracing::warn!(
            tenant,
            cn,
            max = settings.max_devices,
            "tenant device limit reached"
        );
        refuse(
            &mut dev,
            &shared,
            &who,
            version,
            codes::V4_UNAVAILABLE,
            codes::V5_QUOTA_EXCEEDED,
            "tenant_device_limit",
        )
        .await;
        return None;
    };
    let publish_rate = settings.max_publish_rate;

    // Backend connection and CONNECT.
    let keep_alive = connect.keep_alive();
    // rumqttd refuses keep-alive 0: ask for the maximum and ping it ourselves.
    let backend_keep_alive = if keep_alive == 0 {
        u16::MAX
    } else {
        keep_alive
    };
    let mount = Mount::new(tenant);
    let backend_client_id = format!("{tenant}.{cn}");
    let out = match connect.encode_for_backend(
        &backend_client_id,
        &mount.prefix,
        backend_keep_alive,
        shared
            .backend
            .login()
            .map(crate::backend::BackendLogin::connect_login),
    ) {
        Ok(o) => o,
        Err(_) => {
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_NOT_AUTHORIZED,
                codes::V5_TOPIC_INVALID,
                "invalid_will_topic",
            )
            .await;
            return None;
        }
    };
    // Trust may have been withdrawn since the handshake (a CA disabled, a certificate
    // revoked, a device blocked, a lower chain-length limit) or while the policies
    // above ran: the newest snapshot decides, before the backend sees the session (a
    // backend session under this ClientId would take over a live one).
    if refuse_withdrawn(&mut dev, &shared, &shared.trust.load_full(), &who, version).await {
        return None;
    }
    // Registered before the backend sees the CONNECT: a broker that closes the older
    // session of this ClientId may do so before this one's CONNACK.
    let mut live = LiveGuard {
        n: shared.backend.session_began(&backend_client_id),
        id: backend_client_id.clone(),
        shared: shared.clone(),
        keep: false,
    };
    let mut backend = match shared.backend.connect_for(version, sessions).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "backend unreachable");
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_UNAVAILABLE,
                codes::V5_SERVER_UNAVAILABLE,
                "backend_unavailable",
            )
            .await;
            return None;
        }
    };
    let mut bbuf = BytesMut::with_capacity(READ_BUF);
    let connack = async {
        backend.write_all(&out).await.map_err(End::Io)?;
        read_packet(&mut backend, &mut bbuf, max).await
    };
    let n = match tokio::time::timeout(Duration::from_millis(limits.connect_timeout_ms), connack)
        .await
    {
        Ok(Ok(Some(n))) if mqtt::connack_code(&bbuf[..n]).is_some() => n,
        _ => {
            // rumqttd closes without a CONNACK when it refuses: answer properly.
            refuse(
                &mut dev,
                &shared,
                &who,
                version,
                codes::V4_UNAVAILABLE,
                codes::V5_SERVER_UNAVAILABLE,
                "backend_refused",
            )
            .await;
            return None;
        }
    };
    let mut ack = bbuf.split_to(n);
    if version == Version::V5 && mqtt::connack_code(&ack) == Some(0) {
        // Tell the device the limits the front-end enforces.
        match mqtt::connack_v5_for_device(
            &ack,
            u16::try_from(limits.max_inflight).unwrap_or(u16::MAX),
            mqtt::MAX_TOPIC_ALIASES as u16,
            u32::try_from(max).unwrap_or(u32::MAX),
            sent.is_empty().then_some(cn),
        ) {
            Ok(a) => ack = a,
            Err(_) => {
                refuse(
                    &mut dev,
                    &shared,
                    &who,
                    version,
                    codes::V4_UNAVAILABLE,
                    codes::V5_SERVER_UNAVAILABLE,
                    "backend_connack",
                )
                .await;
                return None;
            }
        }
    }
    if dev.write_all(&ack).await.is_err() || dev.flush().await.is_err() {
        return None;
    }
    if mqtt::connack_code(&ack) != Some(0) {
        who.refused(&shared, "backend_refused");
        return None;
    }
    acl.resumed = mqtt::connack_session_present(&ack) == Some(true);
    let proto = if version == Version::V4 { "3.1.1" } else { "5" };
    shared
        .metrics
        .connected(tenant, proto, accepted_at.elapsed().as_secs_f64());
    shared.admin.device_seen(tenant, cn);
    tracing::debug!(tenant, cn, protocol = proto, "session started");
    live.keep = true;
    let live = live.n;
    Some(Established {
        live,
        dev,
        backend,
        dbuf,
        bbuf,
        mount,
        version,
        keep_alive,
        publish_rate,
        acl,
        _slot,
        id,
        shared,
    })
}

impl<S> Established<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The device's verified identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.id
    }

    /// The device's stream.
    pub fn device_mut(&mut self) -> &mut S {
        &mut self.dev
    }

    /// Forwards packets both ways until either side closes, trust in the device is
    /// withdrawn, or `shutdown` turns true; `keep` (e.g. the listener's connection
    /// permit) is dropped when the session ends.
    ///
    /// Not an `async fn`: both streams are split before the future exists, so the
    /// device's stream and its TLS state move to the heap once (inside the split) and
    /// the future, which every idle device keeps for as long as it is connected, holds
    /// only the halves (an `async fn` would also keep `self`, the stream included).
    pub fn serve<K: Send + 'static>(
        self,
        shutdown: watch::Receiver<bool>,
        keep: K,
        teardown: tokio::runtime::Handle,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: 'static,
    {
        let Established {
            dev,
            backend,
            dbuf,
            bbuf,
            id,
            shared,
            version,
            keep_alive,
            publish_rate,
            mount,
            live,
            acl,
            _slot,
        } = self;
        let (dr, dw) = tokio::io::split(dev);
        let (br, bw) = tokio::io::split(backend);
        async move {
            let _keep = keep;
            let _slot = _slot;
            let (mut dr, mut dw, mut br, mut bw, mut shutdown) = (dr, dw, br, bw, shutdown);
            let limits = &shared.config.limits;
            let max = limits.max_packet_size;
            let tenant: &str = &id.tenant;
            let cn = id.common_name.as_str();

            // Packet pump, both ways, plus trust re-checks and shutdown.
            let own_pings = AtomicU32::new(0);
            let answers = Answers::default();
            let inflight = Inflight {
                count: AtomicU32::new(0),
                max: limits.max_inflight,
                tenant: id.tenant.clone(),
                publish_rate,
            };
            // The watch checks the snapshot current now first: a change published between
            // the set-up's last check and here is not missed.
            let mut trust_rx = shared.trust_rx.clone();
            let mut mount = mount;
            let down_mount = Mount::new(tenant);
            let end = {
                let up = pump_up(
                    &mut dr,
                    &mut bw,
                    dbuf,
                    &mut mount,
                    version,
                    max,
                    keep_alive,
                    &own_pings,
                    &inflight,
                    &answers,
                    &shared,
                    (&acl, &id),
                );
                let down = pump_down(
                    &mut br,
                    &mut dw,
                    bbuf,
                    &down_mount,
                    version,
                    max,
                    &own_pings,
                    &inflight,
                    &answers,
                    &shared,
                    &acl,
                );
                let watch = watch_trust(&mut trust_rx, &id, &acl, &shared);
                tokio::select! {
                    e = up => e,
                    e = down => e,
                    e = watch => e,
                    _ = crate::stopped(&mut shutdown) => End::Shutdown,
                }
            };
            let taken_over =
                live.is_some_and(|n| shared.backend.session_ended(&format!("{tenant}.{cn}"), n));
            let end = match end {
                End::BackendLost if taken_over => End::TakenOver,
                end => end,
            };
            match &end {
                End::TakenOver => {
                    tracing::info!(tenant, cn, "session closed: taken over by a newer one");
                    if version == Version::V5 {
                        let _ = dw
                            .write_all(&mqtt::disconnect_v5(codes::V5_SESSION_TAKEN_OVER))
                            .await;
                    }
                }
                End::Revoked(code, label) => {
                    shared.metrics.revoked_session(label);
                    tracing::warn!(
                        tenant,
                        cn,
                        reason = label,
                        "session closed: trust withdrawn"
                    );
                    if version == Version::V5 {
                        let _ = dw.write_all(&mqtt::disconnect_v5(*code)).await;
                    }
                }
                End::Protocol(e) => {
                    shared.metrics.refused("protocol_error");
                    tracing::info!(tenant, cn, error = %e, "session closed: protocol error");
                    if version == Version::V5 {
                        let _ = dw
                            .write_all(&mqtt::disconnect_v5(reason_for(e, version)))
                            .await;
                    }
                }
                End::KeepAliveTimeout => {
                    shared.metrics.refused("keep_alive_timeout");
                    tracing::info!(tenant, cn, keep_alive, "session closed: keep-alive expired");
                    if version == Version::V5 {
                        let _ = dw
                            .write_all(&mqtt::disconnect_v5(codes::V5_KEEP_ALIVE_TIMEOUT))
                            .await;
                    }
                }
                End::Shutdown => {
                    if version == Version::V5 {
                        let _ = dw
                            .write_all(&mqtt::disconnect_v5(codes::V5_SHUTTING_DOWN))
                            .await;
                    }
                }
                End::BackendLost => {
                    shared.metrics.refused("backend_lost");
                    tracing::warn!(
                        tenant,
                        cn,
                        "session closed: the broker behind the front-end went away"
                    );
                    if version == Version::V5 {
                        let _ = dw
                            .write_all(&mqtt::disconnect_v5(codes::V5_SERVER_BUSY))
                            .await;
                    }
                }
                End::BackendClosed | End::DeviceClosed | End::Io(_) => {}
            }
            let _ = bw.shutdown().await;
            shared.metrics.disconnected(tenant);
            shared.admin.device_seen(tenant, cn);
            // The device's side ends on `teardown` (the background runtime, below the
            // sessions in priority): its TLS close and freeing the stream's buffers cost
            // about 40 us, and when thousands of devices leave at once (a load balancer
            // dropping them all) they would otherwise hold up the connected devices'
            // packets on the sessions' thread for 100-200 ms. The connection's permit
            // (`keep`) goes with it, so the socket is closed before it is counted free.
            drop((br, bw));
            teardown.spawn(async move {
                // A peer that reads nothing more cannot hold the socket and the permit.
                let close = async {
                    let _ = dw.flush().await;
                    let _ = dw.shutdown().await;
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                drop((dr, dw, _keep));
            });
        }
    }
}

/// PUBLISH and its acknowledgements: the traffic that admission protects (a wave of
/// DISCONNECT or PINGREQ packets is not).
fn is_message_flow(first_byte: u8) -> bool {
    (mqtt::kind::PUBLISH..=mqtt::kind::PUBCOMP).contains(&(first_byte >> 4))
}

#[allow(clippy::too_many_arguments)]
async fn pump_up<R, W>(
    r: &mut R,
    w: &mut W,
    mut buf: BytesMut,
    mount: &mut Mount,
    version: Version,
    max: usize,
    keep_alive: u16,
    own_pings: &AtomicU32,
    inflight: &Inflight,
    answers: &Answers,
    shared: &Shared,
    (acl, id): (&SessionAcl, &DeviceIdentity),
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut buf_peak = buf.len();
    // Keep-alive 0 devices: keep the backend session alive ourselves.
    let ping_backend = keep_alive == 0;
    let mut ping = tokio::time::interval(Duration::from_secs(3600));
    ping.tick().await;
    // The device must send something within one and a half keep-alive periods
    // (MQTT 3.1.1 3.1.2.10, MQTT 5 3.1.2.11). The timer is re-armed only when it fires,
    // not on every read.
    let idle_limit = Duration::from_millis(u64::from(keep_alive) * 1500);
    let mut last_read = tokio::time::Instant::now();
    let expiry = tokio::time::sleep(idle_limit);
    tokio::pin!(expiry);
    loop {
        let mut packets = 0u64;
        let mut traffic = false;
        loop {
            match mqtt::frame_len(&buf, max) {
                Ok(Some(n)) => {
                    let pkt = buf.split_to(n);
                    if pkt[0] >> 4 == mqtt::kind::DISCONNECT {
                        answers.bye.store(true, Ordering::Relaxed);
                    }
                    if pkt[0] >> 4 == mqtt::kind::PUBLISH
                        && !shared
                            .quotas
                            .publish(&inflight.tenant, inflight.publish_rate)
                    {
                        shared.metrics.refused("tenant_publish_rate");
                        return End::Protocol(MqttError::RateExceeded);
                    }
                    if pkt[0] >> 4 == mqtt::kind::PUBLISH
                        && pkt[0] & 0x06 != 0
                        && inflight.count.fetch_add(1, Ordering::Relaxed) >= inflight.max
                    {
                        return End::Protocol(MqttError::InflightExceeded);
                    }
                    let kind = pkt[0] >> 4;
                    if kind == mqtt::kind::PUBREL && answered_pubrel(acl, &pkt, answers) {
                        continue;
                    }
                    // A SUBSCRIBE is checked and recorded under the lock new rules are
                    // swapped in under (see `SessionAcl::refresh`).
                    let mut subscriptions =
                        (kind == mqtt::kind::SUBSCRIBE).then(|| lock(&acl.subscriptions));
                    let rules = acl.compiled.load();
                    match mount.device_to_backend_checked(version, &pkt, &mut out, &rules) {
                        Ok(Verdict::Forwarded) => {}
                        Ok(Verdict::PublishRefused {
                            topic,
                            qos,
                            pkid,
                            reason,
                        }) => {
                            acl.refused(shared, id, "publish", &topic, reason);
                            if qos > 0 {
                                let _ = inflight.count.fetch_update(
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                    |c| c.checked_sub(1),
                                );
                                if version == Version::V4 && qos == 2 {
                                    let mut r = lock(&acl.refused_qos2);
                                    if !r.contains(&pkid) {
                                        r.push(pkid);
                                    }
                                }
                                let mut ack = BytesMut::new();
                                mqtt::refused_publish_ack(version, qos, pkid, &mut ack);
                                answers.push(&ack);
                            }
                            continue;
                        }
                        Ok(Verdict::Filters {
                            subscribe,
                            pkid,
                            filters,
                        }) => {
                            let refused = filters.iter().filter(|(_, d)| d.is_err()).count();
                            match subscriptions.as_mut() {
                                Some(subs) => {
                                    for (f, _) in filters.iter().filter(|(_, d)| d.is_ok()) {
                                        if !subs.contains(f) {
                                            subs.push(f.clone());
                                        }
                                    }
                                }
                                None if !subscribe => {
                                    let mut subs = lock(&acl.subscriptions);
                                    subs.retain(|s| !filters.iter().any(|(f, _)| f == s));
                                }
                                None => {}
                            }
                            drop(subscriptions);
                            if refused > 0 {
                                let code = if version == Version::V4 {
                                    codes::V4_SUBACK_FAILURE
                                } else {
                                    codes::V5_NOT_AUTHORIZED
                                };
                                for (f, d) in &filters {
                                    if let Err(reason) = d {
                                        acl.refused(shared, id, "subscribe", f, *reason);
                                    }
                                }
                                let plan: Vec<Option<u8>> = filters
                                    .iter()
                                    .map(|(_, d)| d.is_err().then_some(code))
                                    .collect();
                                if refused == filters.len() {
                                    let mut ack = BytesMut::new();
                                    mqtt::suback(version, pkid, &vec![code; refused], &mut ack);
                                    answers.push(&ack);
                                    continue;
                                }
                                lock(&acl.pending_subacks).push((pkid, plan));
                            }
                        }
                        // MQTT 5: this message is refused (reason 0x90), the session
                        // goes on. 3.1.1 cannot refuse one message: the session ends
                        // (see `mqtt::reserved_topic_ack`).
                        Err(MqttError::ReservedTopic) if version == Version::V5 => {
                            tracing::debug!(
                                tenant = %inflight.tenant,
                                "PUBLISH to a '$' topic refused with 0x90"
                            );
                            if let Some(ack) = mqtt::reserved_topic_ack(&pkt) {
                                let _ = inflight.count.fetch_update(
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                    |c| c.checked_sub(1),
                                );
                                answers.push(&ack);
                            }
                            continue;
                        }
                        Err(e) => return End::Protocol(e),
                    }
                    packets += 1;
                    traffic |= is_message_flow(pkt[0]);
                }
                Ok(None) => break,
                Err(e) => return End::Protocol(e),
            }
        }
        if let Err(e) = forward(w, &mut out, "up", packets, traffic, shared).await {
            return End::Io(e);
        }
        relax(&mut buf, &mut buf_peak, READ_BUF);
        tokio::select! {
            r = r.read_buf(&mut buf) => match r {
                Ok(0) => return End::DeviceClosed,
                Ok(_) => {
                    last_read = tokio::time::Instant::now();
                    buf_peak = buf_peak.max(buf.len());
                }
                Err(e) => return End::Io(e),
            },
            _ = &mut expiry, if keep_alive > 0 => {
                let due = last_read + idle_limit;
                if tokio::time::Instant::now() >= due {
                    return End::KeepAliveTimeout;
                }
                expiry.as_mut().reset(due);
            }
            _ = ping.tick(), if ping_backend => {
                own_pings.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = w.write_all(&[0xC0, 0x00]).await {
                    return End::Io(e);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump_down<R, W>(
    r: &mut R,
    w: &mut W,
    mut buf: BytesMut,
    mount: &Mount,
    version: Version,
    max: usize,
    own_pings: &AtomicU32,
    inflight: &Inflight,
    answers: &Answers,
    shared: &Shared,
    acl: &SessionAcl,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut buf_peak = buf.len();
    // The backend said DISCONNECT (taken over, shutting down): its close is no loss.
    let mut told = false;
    loop {
        let mut packets = 0u64;
        let mut traffic = false;
        if answers.take_into(&mut out) {
            packets += 1;
        }
        loop {
            match mqtt::frame_len(&buf, max) {
                Ok(Some(n)) => {
                    let pkt = buf.split_to(n);
                    if pkt[0] >> 4 == mqtt::kind::PINGRESP
                        && own_pings
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                                p.checked_sub(1)
                            })
                            .is_ok()
                    {
                        continue;
                    }
                    // PUBACK / PUBCOMP from the broker end a device's QoS 1 / 2 flow.
                    if matches!(pkt[0] >> 4, 4 | 7) {
                        let _ = inflight.count.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |c| c.checked_sub(1),
                        );
                    }
                    told |= pkt[0] >> 4 == mqtt::kind::DISCONNECT;
                    if pkt[0] >> 4 == mqtt::kind::SUBACK {
                        if let Some(plan) = pending_suback(acl, &pkt) {
                            if mqtt::merge_suback(version, &pkt, &plan, &mut out).is_err() {
                                return End::BackendClosed;
                            }
                            packets += 1;
                            continue;
                        }
                    }
                    if mount.backend_to_device(version, &pkt, &mut out).is_err() {
                        return End::BackendClosed;
                    }
                    packets += 1;
                    traffic |= is_message_flow(pkt[0]);
                }
                Ok(None) => break,
                // A message larger than the device may receive: drop the session
                // rather than forward it.
                Err(_) => return End::BackendClosed,
            }
        }
        if let Err(e) = forward(w, &mut out, "down", packets, traffic, shared).await {
            return End::Io(e);
        }
        relax(&mut buf, &mut buf_peak, READ_BUF);
        tokio::select! {
            r = r.read_buf(&mut buf) => match r {
                Ok(0) if told || answers.bye.load(Ordering::Relaxed) => {
                    return End::BackendClosed
                }
                Ok(0) => return End::BackendLost,
                Ok(_) => buf_peak = buf_peak.max(buf.len()),
                Err(e) => return End::Io(e),
            },
            () = answers.ready.notified() => {}
        }
    }
}

/// Answers a 3.1.1 device's PUBREL for a QoS 2 publish the topic rules refused (the
/// backend never saw it) with PUBCOMP; true when it was one.
fn answered_pubrel(acl: &SessionAcl, pkt: &[u8], answers: &Answers) -> bool {
    let Some(pkid) = pkt.get(2..4) else {
        return false;
    };
    let mut refused = lock(&acl.refused_qos2);
    let Some(i) = refused.iter().position(|p| p[..] == *pkid) else {
        return false;
    };
    refused.swap_remove(i);
    answers.push(&[0x70, 0x02, pkid[0], pkid[1]]);
    true
}

/// The merge plan of a SUBACK whose SUBSCRIBE had refused filters, if it is one.
fn pending_suback(acl: &SessionAcl, pkt: &[u8]) -> Option<Vec<Option<u8>>> {
    let pkid = pkt.get(2..4)?;
    let mut pending = lock(&acl.pending_subacks);
    let i = pending.iter().position(|(p, _)| p[..] == *pkid)?;
    Some(pending.swap_remove(i).1)
}

/// Writes what one pass of a pump produced (`out`, `packets` packets, `traffic`: some of
/// them carry messages), counts it, and empties `out` for the next pass (freed if it
/// held more than [`KEEP_BUF`]).
async fn forward<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    direction: &str,
    packets: u64,
    traffic: bool,
    shared: &Shared,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    shared
        .metrics
        .forwarded(direction, packets, out.len() as u64);
    if traffic {
        shared.pressure.note_traffic();
    }
    w.write_all(out).await?;
    w.flush().await?;
    empty(out);
    Ok(())
}

/// Empties a written-out buffer for its next use; one that held more than [`KEEP_BUF`]
/// is freed.
fn empty(out: &mut BytesMut) {
    if out.len() > KEEP_BUF {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
}

/// Why a verified identity is no longer trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Withdrawn {
    /// Metric label and log reason.
    pub label: &'static str,
    /// The device itself is blocked (MQTT 5 CONNACK "Banned" rather than "Not
    /// authorized"; DISCONNECT has no "Banned", so sessions get 0x87 either way).
    pub banned: bool,
}

/// Checks an identity verified at its TLS handshake against `store`, a snapshot that
/// may be newer than the handshake's, at `now`: the device is not blocked, its anchor
/// still exists for its tenant, is enabled and unexpired, the certificate has not
/// expired, nothing in its path is revoked, and the path is not longer than the
/// tenant's chain-length limit as it is now. Used when the session is set up (trust
/// withdrawn between the handshake and CONNECT) and by the live session's watch.
pub(crate) fn still_trusted(
    store: &TrustStore,
    id: &DeviceIdentity,
    now: certs::UnixTime,
) -> Result<(), Withdrawn> {
    if store.is_blocked(&id.tenant, &id.common_name) {
        return Err(Withdrawn {
            label: "device_blocked",
            banned: true,
        });
    }
    store.recheck(id, now).map_err(|e| Withdrawn {
        label: e.label(),
        banned: false,
    })?;
    let max = store
        .policy(&id.tenant)
        .map_or(certs::trust::DEFAULT_MAX_CHAIN_LENGTH, |p| {
            p.max_chain_length
        });
    if id.chain_length > usize::from(max) {
        return Err(Withdrawn {
            label: "chain_too_long",
            banned: false,
        });
    }
    Ok(())
}

/// Longest single timer of the expiry watch; a certificate valid for years is
/// re-armed once a day.
const EXPIRY_TIMER_MAX: Duration = Duration::from_secs(24 * 3600);

/// How long until `not_after` (Unix seconds) is reached, at most [`EXPIRY_TIMER_MAX`];
/// zero once it is.
fn until_not_after(not_after: i64) -> Duration {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    at.duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(EXPIRY_TIMER_MAX)
}

/// Resolves when the trust store (the current snapshot, then each newer one) no longer
/// accepts this session, or when its certificate reaches its notAfter.
///
/// Each new snapshot also re-reads the device's topic rules ([`SessionAcl::refresh`]).
async fn watch_trust(
    rx: &mut watch::Receiver<Arc<TrustStore>>,
    id: &DeviceIdentity,
    acl: &SessionAcl,
    shared: &Shared,
) -> End {
    let revoked = |w: Withdrawn| End::Revoked(codes::V5_NOT_AUTHORIZED, w.label);
    let mut store_gone = false;
    loop {
        if !store_gone {
            let store = rx.borrow_and_update().clone();
            if let Err(w) = still_trusted(&store, id, certs::UnixTime::now()) {
                return revoked(w);
            }
            if let Err(end) = acl.refresh(shared, id) {
                return end;
            }
        }
        let wait = until_not_after(id.path_not_after);
        if wait.is_zero() {
            return End::Revoked(codes::V5_NOT_AUTHORIZED, "expired");
        }
        tokio::select! {
            changed = rx.changed(), if !store_gone => {
                // The store is gone (shutdown): only the expiry is left to watch.
                store_gone = changed.is_err();
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_that_held_a_large_message_is_replaced_once_empty() {
        let mut buf = BytesMut::with_capacity(READ_BUF);
        buf.extend_from_slice(&[1u8; 100_000]);
        let mut peak = buf.len();
        // The packet is split off, forwarded and dropped.
        drop(buf.split_to(100_000));
        relax(&mut buf, &mut peak, READ_BUF);
        assert_eq!(peak, 0);
        // Kept, the buffer would take the 100 kB allocation back here.
        buf.extend_from_slice(&[2u8; 2]);
        assert_eq!(buf.capacity(), READ_BUF);

        // A buffer that never held more than KEEP_BUF is kept as it is.
        let mut small = BytesMut::with_capacity(READ_BUF);
        small.extend_from_slice(&[3u8; 500]);
        let mut peak = small.len();
        drop(small.split_to(500));
        relax(&mut small, &mut peak, READ_BUF);
        assert_eq!(
            small.capacity(),
            READ_BUF - 500,
            "the rest of the same buffer"
        );
    }

    #[test]
    fn a_written_out_buffer_is_freed_only_after_a_large_message() {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[1u8; 100_000]);
        empty(&mut out);
        assert_eq!((out.len(), out.capacity()), (0, 0));
        out.extend_from_slice(&[2u8; 500]);
        let kept = out.capacity();
        empty(&mut out);
        assert_eq!((out.len(), out.capacity()), (0, kept));
    }
}
