//! What the front-end adds to the embedded rumqttd so that its state survives a
//! restart, and so that MQTT sessions expire as specified.
//!
//! rumqttd keeps retained messages and persistent sessions in memory only, and keeps a
//! persistent session forever. The front-end therefore:
//!
//! - stores every retained message a session publishes ([`StateStore`]) and publishes
//!   them again into the router when the broker starts;
//! - stores each persistent session (3.1.1 CleanSession=0, or an MQTT 5 Session Expiry
//!   Interval above 0) with its subscriptions;
//! - while such a session is offline, holds its place in the router with a *keeper*: a
//!   link of the front-end's own with the session's client ID (CleanSession=0), which
//!   takes the messages the router has for the session, stores them in the session's
//!   queue and acknowledges them. When the device comes back, the keeper leaves (the
//!   router saves the session, the device's link resumes it) and the device first gets
//!   the stored queue, in order, then what the router has. After a restart every stored
//!   session gets its keeper back, subscribed as the session was;
//! - ends a session when its expiry interval has elapsed since its connection ended
//!   (keeper gone, router state discarded, rows deleted), and at once when it ends with
//!   an expiry of 0.
//!
//! What a session receives while it is online lives in the router's memory until the
//! device acknowledges it; a crash loses those in-flight copies (see docs/SECURITY.md and
//! the README's MQTT features table).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use prometheus::{IntCounterVec, Opts};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    Filter, Packet, Protocol, PubAck, PubAckReason, PubComp, PubCompReason, Publish,
    PublishProperties, RetainForwardRule, Subscribe,
};
use rumqttd::Notification;
use tokio::sync::oneshot;

use super::link::{bye, publish_layout, pubrec, Hub, Opened};
use super::marks;
use super::state::{Queued, Retained, StateStore, StoredSession, StoredSub, NEVER};

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The tenant of a backend client ID `<tenant>.<cn>`.
fn tenant_of(client_id: &str) -> &str {
    client_id.split_once('.').map_or(client_id, |(t, _)| t)
}

/// The durable side of the embedded broker (one per process).
pub struct Durable {
    pub(crate) state: StateStore,
    /// Keepers of offline sessions, by client ID: the sender that stops one (it answers
    /// once its queue is committed and its link is gone).
    keepers: Mutex<HashMap<String, oneshot::Sender<oneshot::Sender<()>>>>,
    next_id: AtomicI64,
    max_queue: usize,
    dropped: IntCounterVec,
    /// Retained topics per tenant (the mount prefix), for the tenant's limit.
    retained: Mutex<HashMap<String, std::collections::HashSet<Vec<u8>>>>,
    max_retained: usize,
    retained_refused: IntCounterVec,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("max_queue", &self.max_queue)
            .finish_non_exhaustive()
    }
}

impl Durable {
    /// Opens the state in `data_dir`; `max_queue` messages at most per offline session.
    pub fn load(
        data_dir: &std::path::Path,
        max_queue: usize,
        max_retained: usize,
    ) -> std::io::Result<Durable> {
        let state = StateStore::open(data_dir)?;
        let next_id = state.max_queue_id()? + 1;
        let dropped = IntCounterVec::new(
            Opts::new(
                "mqtt_session_messages_dropped_total",
                "Messages not queued for an offline session or not delivered to a session (queue full, expired, larger than its Maximum Packet Size), per tenant and reason",
            ),
            &["tenant", "reason"],
        )
        .map_err(std::io::Error::other)?;
        let retained_refused = IntCounterVec::new(
            Opts::new(
                "mqtt_retained_refused_total",
                "Retained messages on a new topic refused because the tenant holds its maximum (embedded.max_retained_per_tenant)",
            ),
            &["tenant"],
        )
        .map_err(std::io::Error::other)?;
        Ok(Durable {
            retained: Mutex::new(HashMap::new()),
            max_retained: max_retained.max(1),
            retained_refused,
            state,
            keepers: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(next_id),
            max_queue: max_queue.max(1),
            dropped,
        })
    }

    /// The metrics of this module, for the product's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.dropped.clone()),
            Box::new(self.retained_refused.clone()),
        ]
    }

    /// Counts a message of `client_id`'s session that was dropped for `reason`.
    pub(crate) fn count_dropped(&self, client_id: &str, reason: &str) {
        self.dropped
            .with_label_values(&[tenant_of(client_id), reason])
            .inc();
    }

    /// Stores a retained message a session published (or removes the topic's, for an
    /// empty payload). `false`: refused, the topic is new and its tenant holds
    /// `embedded.max_retained_per_tenant` retained messages already (counted).
    pub(crate) fn retain(
        &self,
        publish: &Publish,
        props: &Option<PublishProperties>,
        qos: u8,
    ) -> bool {
        let topic = &publish.topic[..];
        let tenant = topic
            .split(|b| *b == b'/')
            .next()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        {
            let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
            let topics = retained.entry(tenant.clone()).or_default();
            if publish.payload.is_empty() {
                topics.remove(topic);
                self.state.unretain(topic.to_vec());
                return true;
            }
            if !topics.contains(topic) {
                if topics.len() >= self.max_retained {
                    drop(retained);
                    self.retained_refused.with_label_values(&[&tenant]).inc();
                    tracing::warn!(
                        tenant,
                        max = self.max_retained,
                        "retained message on a new topic refused: the tenant's limit"
                    );
                    return false;
                }
                topics.insert(topic.to_vec());
            }
        }
        let Some(StoredForm { bytes: packet, .. }) =
            stored_form(Packet::Publish(publish.clone(), props.clone()), true)
        else {
            return true;
        };
        self.state.retain(Retained {
            topic: publish.topic.to_vec(),
            qos,
            packet,
            stored_at: unix_now(),
        });
        true
    }

    /// Stops the keeper of `client_id`, if any, once what it queued is committed.
    async fn stop_keeper(&self, client_id: &str) {
        let stop = self
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        if let Some(stop) = stop {
            let (done, stopped) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = stopped.await;
            }
        }
    }

    /// Starts a keeper for the offline session `client_id` (see the module docs):
    /// `subs` are subscribed first (after a restart, when the router has no state),
    /// and the session ends at `expires_at` (Unix seconds; `None`: never).
    pub(crate) fn keep(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        client_id: String,
        subs: Vec<StoredSub>,
        expires_at: Option<i64>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (stop, stopped) = oneshot::channel();
        let replaced = self
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), stop);
        drop(replaced);
        runtime.spawn(keeper(
            hub.clone(),
            self.clone(),
            client_id,
            subs,
            expires_at,
            stopped,
        ));
    }

    /// Publishes the stored retained messages into the router through `tx` (the
    /// front-end's own link) and gives every stored session its keeper back. Runs once,
    /// before any device connects.
    pub(crate) async fn restore(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        tx: &mut rumqttd::local::LinkTx,
    ) -> std::io::Result<(usize, usize)> {
        let now = unix_now();
        let retained = self.state.load_retained()?;
        let mut restored = 0;
        for r in retained {
            let Some((publish, props)) = decode(&r.packet) else {
                continue;
            };
            // The interval left is computed when a copy goes out (the time mark).
            if remaining_expiry(props.clone(), r.stored_at, now).is_none() {
                self.state.unretain(r.topic);
                continue;
            }
            let props = marks::mark_qos(props, r.qos);
            if let Some(tenant) = r.topic.split(|b| *b == b'/').next() {
                self.retained
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(String::from_utf8_lossy(tenant).into_owned())
                    .or_default()
                    .insert(r.topic.clone());
            }
            if tx.send(Packet::Publish(publish, props)).await.is_err() {
                return Err(std::io::Error::other(
                    "the embedded broker's router stopped",
                ));
            }
            restored += 1;
        }
        let sessions = self.state.load_sessions()?;
        let mut kept = 0;
        for StoredSession {
            client_id,
            expiry,
            ended_at,
            subs,
        } in sessions
        {
            let ended = ended_at.unwrap_or(now);
            let expires_at = (expiry != NEVER).then(|| ended.saturating_add(i64::from(expiry)));
            if expires_at.is_some_and(|t| t <= now) {
                self.state.forget(&client_id);
                continue;
            }
            if ended_at.is_none() {
                self.state.ended(&client_id, now, expiry);
            }
            self.keep(hub, client_id, subs, expires_at);
            kept += 1;
        }
        Ok((restored, kept))
    }

    /// Opens the router link of a device session, taking the session over from its
    /// keeper (see the module docs). `clean`: the device asked for a new session;
    /// `persist`: the session outlives the connection by that many seconds
    /// (`None`: it ends with the connection). Returns the link and the messages queued
    /// while the session was offline (none when it starts clean).
    pub(crate) async fn open(
        self: Arc<Self>,
        hub: Arc<Hub>,
        client_id: String,
        clean: bool,
        persist: Option<u32>,
        topic_alias_max: u16,
    ) -> Option<Opened> {
        self.stop_keeper(&client_id).await;
        match persist {
            Some(expiry) => self.state.begin(&client_id, expiry, clean),
            None if clean => self.state.forget(&client_id),
            None => {}
        }
        let (queue, subs) = if clean {
            (Vec::new(), Vec::new())
        } else {
            self.state.barrier().await;
            let state = self.state.clone();
            let id = client_id.clone();
            tokio::task::spawn_blocking(move || {
                Ok::<_, std::io::Error>((state.load_queue(&id)?, state.load_subs(&id)?))
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
        };
        if clean && persist.is_some() {
            // A new session that the router must keep: its old state goes first.
            discard(&hub, &client_id).await;
        }
        let router_clean = clean && persist.is_none();
        let link = hub
            .link(client_id, router_clean, topic_alias_max)
            .await
            .ok()?;
        Some(Opened {
            link,
            queue,
            subs: subs.iter().map(filter).collect(),
        })
    }

    /// A device session ended (not taken over): `persist` is its expiry as it ended
    /// (`None` or `Some(0)`: the session ends now), `resumed`: its router link kept
    /// state (CleanSession=0), which must then be discarded.
    pub(crate) fn session_ended(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        client_id: String,
        persist: Option<u32>,
        resumed: bool,
    ) {
        match persist {
            Some(expiry) if expiry > 0 => {
                let now = unix_now();
                self.state.ended(&client_id, now, expiry);
                let expires_at = (expiry != NEVER).then(|| now.saturating_add(i64::from(expiry)));
                self.keep(hub, client_id, Vec::new(), expires_at);
            }
            _ => {
                self.state.forget(&client_id);
                if resumed {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let hub = hub.clone();
                        runtime.spawn(async move { discard(&hub, &client_id).await });
                    }
                }
            }
        }
    }
}

/// Makes the router forget the session of `client_id`: a clean link, at once closed.
async fn discard(hub: &Arc<Hub>, client_id: &str) {
    if let Ok((mut tx, _rx, _)) = hub.link(client_id.to_owned(), true, 0).await {
        let _ = tx.send(bye()).await;
    }
}

/// A PUBLISH in the form it is stored in: MQTT 5, QoS 0 (no packet ID, DUP clear), the
/// given retain flag; with the QoS and packet ID it came with.
struct StoredForm {
    bytes: Vec<u8>,
    qos: u8,
    pkid: u16,
}

fn stored_form(packet: Packet, retain: bool) -> Option<StoredForm> {
    let mut wire = BytesMut::new();
    V5.write(packet, &mut wire).ok()?;
    let (h, _, topic) = publish_layout(&wire)?;
    let qos = (wire[0] >> 1) & 0x03;
    let start = h + 2 + topic;
    let pkid = match qos {
        0 => 0,
        _ => u16::from_be_bytes([*wire.get(start)?, *wire.get(start + 1)?]),
    };
    let after = if qos > 0 { start + 2 } else { start };
    let mut out = BytesMut::new();
    crate::mqtt::write_packet(
        &mut out,
        0x30 | u8::from(retain),
        &[&wire[h..start], wire.get(after..)?],
    );
    Some(StoredForm {
        bytes: out.to_vec(),
        qos,
        pkid,
    })
}

/// Decodes a stored MQTT 5 PUBLISH.
pub(crate) fn decode(packet: &[u8]) -> Option<(Publish, Option<PublishProperties>)> {
    let mut wire = BytesMut::from(packet);
    match V5.read_mut(&mut wire, usize::MAX >> 4) {
        Ok(Packet::Publish(p, props)) => Some((p, props)),
        _ => None,
    }
}

/// `props` with the Message Expiry Interval lowered by the time since `stored_at`;
/// `None` if the message has expired (MQTT 5 3.3.2.3.3).
pub(crate) fn remaining_expiry(
    mut props: Option<PublishProperties>,
    stored_at: i64,
    now: i64,
) -> Option<Option<PublishProperties>> {
    if let Some(interval) = props
        .as_mut()
        .and_then(|p| p.message_expiry_interval.as_mut())
    {
        let elapsed = now.saturating_sub(stored_at).max(0);
        let left = i64::from(*interval) - elapsed;
        if left <= 0 {
            return None;
        }
        *interval = left as u32;
    }
    Some(props)
}

/// The keeper of an offline session (see the module docs).
async fn keeper(
    hub: Arc<Hub>,
    durable: Arc<Durable>,
    client_id: String,
    subs: Vec<StoredSub>,
    expires_at: Option<i64>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let (mut tx, mut rx, _) = match hub.link(client_id.clone(), false, 0).await {
        Ok(link) => link,
        Err(e) => {
            tracing::error!(%client_id, error = %e, "offline session not kept: its messages are not queued");
            return;
        }
    };
    if !subs.is_empty() {
        let filters = subs.iter().map(filter).collect();
        if tx
            .send(Packet::Subscribe(Subscribe { pkid: 1, filters }, None))
            .await
            .is_err()
        {
            return;
        }
    }
    // What is queued already (messages a device did not take before it left again).
    let state = durable.state.clone();
    let id = client_id.clone();
    let mut queue: VecDeque<(i64, u8)> = tokio::task::spawn_blocking(move || state.load_queue(&id))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        .map(|q| (q.id, q.qos))
        .collect();
    let expiry = async {
        match expires_at {
            Some(t) => {
                let left = t.saturating_sub(unix_now()).max(0) as u64;
                tokio::time::sleep(Duration::from_secs(left)).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            done = &mut stop => {
                let _ = tx.send(bye()).await;
                durable.state.barrier().await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            _ = &mut expiry => {
                let _ = tx.send(bye()).await;
                durable
                    .keepers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&client_id);
                durable.state.forget(&client_id);
                discard(&hub, &client_id).await;
                tracing::info!(%client_id, "persistent session expired");
                return;
            }
            n = rx.next() => match n {
                Ok(Some(Notification::Unschedule)) => {
                    if rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(Some(n)) => {
                    let Some(packet) = Option::<Packet>::from(n) else { continue };
                    let ack = take(&durable, &client_id, &mut queue, packet);
                    if let Some(ack) = ack {
                        if tx.send(ack).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {}
                // The router dropped the link: a device took the session over.
                Err(_) => return,
            }
        }
    }
}

/// The router's subscription filter for a stored subscription.
fn filter(s: &StoredSub) -> Filter {
    let qos = match s.options & 0x03 {
        0 => rumqttd::protocol::QoS::AtMostOnce,
        1 => rumqttd::protocol::QoS::AtLeastOnce,
        _ => rumqttd::protocol::QoS::ExactlyOnce,
    };
    Filter {
        path: s.filter.clone(),
        qos,
        nolocal: s.options & 0x04 != 0,
        preserve_retain: s.options & 0x08 != 0,
        retain_forward_rule: match (s.options >> 4) & 0x03 {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            _ => RetainForwardRule::Never,
        },
    }
}

/// The options byte of a subscription filter (MQTT 5 3.8.3.1).
pub(crate) fn options(f: &Filter) -> StoredSub {
    let rh = match f.retain_forward_rule {
        RetainForwardRule::OnEverySubscribe => 0,
        RetainForwardRule::OnNewSubscribe => 1,
        RetainForwardRule::Never => 2,
    };
    StoredSub {
        filter: f.path.clone(),
        options: (f.qos as u8)
            | (u8::from(f.nolocal) << 2)
            | (u8::from(f.preserve_retain) << 3)
            | (rh << 4),
    }
}

/// A keeper takes what the router sent: a message is queued (at the lower of its QoS
/// and the subscription's) and acknowledged; a PUBREL is completed. Returns the ack.
fn take(
    durable: &Durable,
    client_id: &str,
    queue: &mut VecDeque<(i64, u8)>,
    packet: Packet,
) -> Option<Packet> {
    let (publish, mut props) = match packet {
        Packet::Publish(p, props) => (p, props),
        Packet::PubRel(r, _) => {
            return Some(Packet::PubComp(
                PubComp {
                    pkid: r.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ))
        }
        _ => return None,
    };
    let m = marks::take(&mut props);
    let own = m.qos;
    let published_at = marks::original_expiry(&mut props, &m);
    let retained = publish.retain;
    let StoredForm {
        bytes: packet,
        qos: granted,
        pkid,
    } = stored_form(Packet::Publish(publish, props), false)?;
    let ack = match granted {
        0 => None,
        1 => Some(Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )),
        _ => Some(pubrec(pkid)),
    };
    // A retained message the router sends because the keeper subscribed (after a
    // restart) is not news for the session: the router forwards live messages with
    // the retain flag clear.
    if retained {
        return ack;
    }
    let qos = own.map_or(granted, |q| q.min(granted));
    if queue.len() >= durable.max_queue {
        // Full: the oldest QoS 0 message makes room, else this one is dropped.
        match queue.iter().position(|(_, q)| *q == 0) {
            Some(i) => {
                if let Some((old, _)) = queue.remove(i) {
                    durable.state.dequeue(vec![old]);
                }
                durable.count_dropped(client_id, "queue_full_oldest_qos0");
            }
            None => {
                durable.count_dropped(client_id, "queue_full");
                tracing::warn!(%client_id, max = durable.max_queue, "offline session's queue is full: message dropped");
                return ack;
            }
        }
    }
    let id = durable.next_id.fetch_add(1, Ordering::Relaxed);
    queue.push_back((id, qos));
    durable.state.enqueue(
        client_id,
        Queued {
            id,
            qos,
            packet,
            stored_at: published_at.unwrap_or_else(unix_now),
        },
    );
    ack
}
