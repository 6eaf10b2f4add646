//! The embedded rumqttd reached in-process: each session gets a link into rumqttd's router,
//! the same kind its own network connections use, instead of a loopback TCP connection
//! to one of its listeners. A message then crosses one socket (the device's) instead of
//! three, and a session costs no second TCP connection, accept or per-connection task.
//!
//! [`LinkIo`] keeps the byte-stream interface of the other backends: the session writes
//! MQTT packets (already mounted under the tenant) and reads the broker's answers. It
//! decodes what the session writes with rumqttd's own codec into its router (told of
//! the sessions' packets in batches, see `Announcer`), and encodes what the router
//! sends back. It also does the few things rumqttd's network
//! layer does around a link and its local links cannot: it publishes a session's will
//! (honouring the MQTT 5 will delay), and it tells the router when the session ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet, Protocol,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason,
    PublishProperties, QoS,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::durable::{self, Durable};
use super::marks;
use super::options::{SubOptions, Verdict};
use super::state::{DelayedWill, Queued, NEVER};
use crate::mqtt::relax;

/// A link as the router hands it out: sending half, receiving half, and the CONNACK.
pub(crate) type Link = (LinkTx, LinkRx, Notification);

/// The client ID of the front-end's own link that publishes wills.
const WILLS_CLIENT_ID: &str = "!front-end.wills";

/// A will to publish, with its MQTT 5 properties.
type Will = (LastWill, Option<LastWillProperties>);

/// rumqttd's router, started by the front-end, and what sessions need to reach it.
pub struct Hub {
    /// To the router: a new link is registered by the session's task itself, which
    /// waits for the router's answer asynchronously.
    router_tx: flume::Sender<(rumqttd::ConnectionId, rumqttd::Event)>,
    /// To the task that publishes wills through the front-end's own link.
    wills: mpsc::UnboundedSender<Will>,
    /// Wills waiting out their delay, by client ID: a generation, and a sender that
    /// fires (`true`) or cancels (`false`) the will early.
    delayed: Mutex<HashMap<String, (u64, oneshot::Sender<bool>)>>,
    /// Live sessions by client ID: the generation of the newest, and whether it started
    /// clean. A session that ends and finds a newer generation here was taken over.
    live: Mutex<HashMap<String, (u64, bool)>>,
    generation: AtomicU64,
    /// Links with packets for the router it has not been told of yet.
    announcer: Arc<Announcer>,
    /// Largest packet rumqttd's codec accepts from a session: the device limit plus room
    /// for the tenant mount prefix.
    max_packet: usize,
    /// Retained messages and persistent sessions kept across restarts (in-process
    /// transport only).
    durable: Option<Arc<Durable>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("max_packet", &self.max_packet)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts rumqttd's router and the loopback listeners `config` names, if any (each
    /// on its own thread, as `rumqttd::Broker::start` does; the in-process transport
    /// names none), the will publisher and the `Announcer`. Must run inside the sessions' tokio runtime
    /// (the will publisher and the announcer are tasks).
    pub async fn start(
        config: rumqttd::Config,
        max_packet: usize,
        durable: Option<Arc<Durable>>,
    ) -> io::Result<Arc<Hub>> {
        let router_tx = rumqttd::Router::new(config.id, config.router.clone()).spawn();
        // Sessions reached over rumqttd's own listeners are not links: their messages
        // carry no QoS mark, and rumqttd's 3.1.1 connections cannot encode properties
        // (a marked will would reach them with some). Marks only without listeners.
        let mark = config.v4.iter().flatten().next().is_none()
            && config.v5.iter().flatten().next().is_none();
        let listeners = config
            .v4
            .iter()
            .flatten()
            .map(|(_, s)| (s.clone(), false))
            .chain(config.v5.iter().flatten().map(|(_, s)| (s.clone(), true)));
        for (settings, v5) in listeners {
            let router_tx = router_tx.clone();
            std::thread::Builder::new()
                .name(settings.name.clone())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "embedded broker listener not started");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let result = if v5 {
                            rumqttd::Server::new(settings, router_tx, V5)
                                .start(rumqttd::LinkType::Remote)
                                .await
                        } else {
                            rumqttd::Server::new(settings, router_tx, V4)
                                .start(rumqttd::LinkType::Remote)
                                .await
                        };
                        if let Err(e) = result {
                            tracing::error!(error = %e, "embedded broker listener stopped");
                        }
                    });
                })?;
        }

        let (wills, pending) = mpsc::unbounded_channel();
        let announcer = Arc::new(Announcer::default());
        tokio::spawn(announcer.clone().run());
        let hub = Arc::new(Hub {
            router_tx,
            wills,
            delayed: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            announcer,
            max_packet,
            durable,
        });
        let (mut tx, rx, _) = hub.link(WILLS_CLIENT_ID.into(), true, 0).await?;
        if let Some(durable) = &hub.durable {
            let (retained, sessions) = durable.restore(&hub, &mut tx).await?;
            let wills = durable.state.load_wills()?;
            let delayed = wills.len();
            let now = durable::unix_now();
            for w in wills {
                let Some(will) = will_from_publish(&w.packet) else {
                    durable.state.drop_will(&w.client_id);
                    continue;
                };
                let left = u32::try_from((w.due_at - now).max(0)).unwrap_or(u32::MAX);
                if left == 0 {
                    durable.state.drop_will(&w.client_id);
                }
                hub.publish_will(w.client_id, will, left);
            }
            tracing::info!(
                retained,
                sessions,
                delayed_wills = delayed,
                "embedded broker state restored (retained messages, persistent sessions, delayed wills)"
            );
        }
        tokio::spawn(publish_wills(tx, pending, mark, hub.durable.clone()));
        tokio::spawn(drain(rx));
        Ok(hub)
    }

    /// Registers a link with the router (from any runtime; no thread waits).
    pub(crate) async fn link(
        &self,
        client_id: String,
        clean: bool,
        topic_alias_max: u16,
    ) -> io::Result<Link> {
        LinkBuilder::new(&client_id, self.router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .topic_alias_max(topic_alias_max)
            .build_async()
            .await
            .map_err(|e| io::Error::other(format!("embedded broker refused the link: {e}")))
    }

    /// A new session stream for a device speaking `v5` (MQTT 5) or 3.1.1.
    pub fn session(self: &Arc<Self>, v5: bool) -> LinkIo {
        LinkIo {
            hub: self.clone(),
            v5,
            state: State::Idle,
            input: BytesMut::new(),
            output: BytesMut::new(),
            input_peak: 0,
            output_peak: 0,
            read_waker: None,
            will: None,
            will_delay: 0,
            client_id: String::new(),
            generation: None,
            disconnect_sent: false,
            wake_router: false,
            batch: Vec::new(),
            outbox: Vec::new(),
            acks: RouterAcks::default(),
            to_router: Vec::new(),
            device_max_packet: None,
            prefix_len: 0,
            persist: None,
            resumed: false,
            replay: None,
            options: None,
        }
    }

    /// Publishes `will` for `client_id` now, or after `delay` seconds unless a session
    /// with that client ID connects again first (MQTT 5, 3.1.3.2.2).
    fn publish_will(self: &Arc<Self>, client_id: String, will: Will, delay: u32) {
        if delay == 0 {
            let _ = self.wills.send(will);
            return;
        }
        // Kept across a restart until it is published or cancelled.
        if let Some(durable) = &self.durable {
            if let Some(Packet::Publish(p, props)) =
                will_publish(will.0.clone(), will.1.clone(), 1, false)
            {
                let mut packet = BytesMut::new();
                if V5.write(Packet::Publish(p, props), &mut packet).is_ok() {
                    durable.state.put_will(DelayedWill {
                        client_id: client_id.clone(),
                        due_at: durable::unix_now() + i64::from(delay),
                        packet: packet.to_vec(),
                    });
                }
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = self.wills.send(will);
            return;
        };
        let (fire, early) = oneshot::channel();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let replaced = self
            .delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), (generation, fire));
        // An older will of the same client is due now (its sender fires on drop).
        drop(replaced);
        let hub = self.clone();
        runtime.spawn(async move {
            let publish = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => true,
                // Cancelled by a resumed session, fired by a new clean one or a newer will.
                early = early => early.unwrap_or(true),
            };
            let mut delayed = hub.delayed.lock().unwrap_or_else(|p| p.into_inner());
            if delayed
                .get(&client_id)
                .is_some_and(|(g, _)| *g == generation)
            {
                delayed.remove(&client_id);
                if let Some(durable) = &hub.durable {
                    durable.state.drop_will(&client_id);
                }
            }
            drop(delayed);
            if publish {
                let _ = hub.wills.send(will);
            }
        });
    }

    /// A session with `client_id` connects (`clean`: it starts a new session). A will
    /// still waiting for its delay is published if the new session starts clean (the old
    /// session ended), and dropped if it resumes the session. Returns the session's
    /// generation.
    fn connecting(&self, client_id: &str, clean: bool) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_owned(), (generation, clean));
        let waiting = self
            .delayed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        if let Some((_, fire)) = waiting {
            let _ = fire.send(clean);
        }
        generation
    }

    /// The session `generation` of `client_id` ends. `Some(clean)` if a newer session
    /// with the same client ID took it over, and how that one started.
    fn ended(&self, client_id: &str, generation: u64) -> Option<bool> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(client_id) {
            Some(&(newest, _)) if newest == generation => {
                live.remove(client_id);
                None
            }
            Some(&(_, clean)) => Some(clean),
            None => None,
        }
    }
}

/// A session's sending half, and its packets the router has not been told of yet.
/// While any are held, the door is in the announcer's queue.
struct Door {
    tx: LinkTx,
    held: Vec<Packet>,
}

type SharedDoor = Arc<Mutex<Door>>;

fn lock(door: &SharedDoor) -> std::sync::MutexGuard<'_, Door> {
    door.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells the router of the sessions' packets in batches.
///
/// The router is a thread of its own, which sleeps whenever its channel is empty and
/// must be woken (a futex call on each side, and two context switches) by the next
/// link that has packets. Told by each session as it writes, the router wakes for a
/// few packets at a time and sleeps again. The sessions' packets therefore wait (in
/// their link's [`Door`]) until the runtime has run the other ready sessions, and the
/// router is then told of all of them at once.
#[derive(Default)]
struct Announcer {
    queue: Mutex<Vec<SharedDoor>>,
    wake: tokio::sync::Notify,
}

impl Announcer {
    /// Queues `packets` (leaving the vector empty) for the next batch.
    fn hold(&self, door: &SharedDoor, packets: &mut Vec<Packet>) {
        let mut d = lock(door);
        let queued = !d.held.is_empty();
        d.held.append(packets);
        drop(d);
        if queued {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.push(door.clone());
        if queue.len() == 1 {
            self.wake.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut doors = Vec::new();
        loop {
            self.wake.notified().await;
            // The sessions already ready run first, and add their packets to this batch.
            tokio::task::yield_now().await;
            std::mem::swap(
                &mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()),
                &mut doors,
            );
            for door in doors.drain(..) {
                let mut d = lock(&door);
                let Door { tx, held } = &mut *d;
                // A link the router dropped: its session learns it from its receiver.
                let _ = send(tx, held);
                relax_vec(held);
            }
        }
    }
}

/// Publishes wills through the front-end's own link, in order.
/// `mark`: with the QoS mark (see [`marks`]).
async fn publish_wills(
    mut tx: LinkTx,
    mut pending: mpsc::UnboundedReceiver<Will>,
    mark: bool,
    durable: Option<Arc<Durable>>,
) {
    let mut pkid: u16 = 0;
    while let Some((will, props)) = pending.recv().await {
        pkid = pkid.checked_add(1).unwrap_or(1);
        let qos = will.qos as u8;
        let Some(publish) = will_publish(will, props, pkid, mark) else {
            continue;
        };
        let mut publish = publish;
        if let (Some(durable), Packet::Publish(p, props)) = (&durable, &mut publish) {
            // A will over the tenant's retained limit still goes out, live.
            if p.retain && !durable.retain(p, props, qos) {
                p.retain = false;
            }
        }
        if tx.send(publish).await.is_err() {
            tracing::error!("the embedded broker's router stopped: wills are not published");
            return;
        }
    }
}

/// Reads (and drops) what the router sends to a link of the front-end's own.
async fn drain(mut rx: LinkRx) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The will a stored PUBLISH (see [`Hub::publish_will`]) came from.
fn will_from_publish(packet: &[u8]) -> Option<Will> {
    let qos = match (packet.first()? >> 1) & 0x03 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let (publish, props) = durable::decode(packet)?;
    let will = LastWill {
        topic: publish.topic,
        message: publish.payload,
        qos,
        retain: publish.retain,
    };
    let props = props.map(|p| LastWillProperties {
        delay_interval: None,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    });
    Some((will, props))
}

/// The PUBLISH a will turns into. rumqttd's `Publish` keeps its QoS private, so the
/// packet is decoded from its wire form. QoS 2 wills go out at QoS 1: the front-end's
/// will link completes QoS 1 flows only.
fn will_publish(
    will: LastWill,
    props: Option<LastWillProperties>,
    pkid: u16,
    mark: bool,
) -> Option<Packet> {
    let qos = match will.qos {
        QoS::AtMostOnce => 0u8,
        _ => 1,
    };
    let topic_len = u16::try_from(will.topic.len()).ok()?.to_be_bytes();
    let id = pkid.to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![&topic_len, &will.topic];
    if qos > 0 {
        parts.push(&id);
    }
    parts.push(&will.message);
    let mut wire = BytesMut::new();
    crate::mqtt::write_packet(&mut wire, 0x30 | (qos << 1) | u8::from(will.retain), &parts);
    let Ok(Packet::Publish(publish, _)) = V4.read_mut(&mut wire, usize::MAX >> 4) else {
        return None;
    };
    let props = props.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    let props = if mark {
        marks::mark_qos(props, will.qos as u8)
    } else {
        props
    };
    Some(Packet::Publish(publish, props))
}

/// Length of an MQTT variable byte integer.
fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// (header length, remaining length, topic length) of an encoded PUBLISH.
pub(crate) fn publish_layout(pkt: &[u8]) -> Option<(usize, usize, usize)> {
    let mut rem = 0usize;
    let mut i = 1;
    loop {
        let b = *pkt.get(i)?;
        rem |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    let topic = usize::from(u16::from_be_bytes([*pkt.get(i)?, *pkt.get(i + 1)?]));
    Some((i, rem, topic))
}

/// The acknowledgements the router expects for the QoS 1/2 messages it sends a link,
/// when the device gets a message at a lower QoS than the router sent, or not at all:
/// the front-end answers those itself, and translates the device's PUBACK into the
/// PUBREC a QoS 2 flow needs. rumqttd takes acks in the order it sent the messages
/// only (an out-of-order one drops the link), so acks wait here until every earlier
/// one went out.
#[derive(Default)]
struct RouterAcks {
    /// QoS 1/2 messages the router sent, in order: packet id and the ack ready to go
    /// (`None`: the device's is awaited).
    sent: VecDeque<(u16, Option<Packet>)>,
    /// PUBRELs the router sent, in order: packet id and whether its PUBCOMP is ready.
    released: VecDeque<(u16, bool)>,
    /// QoS 2 flows whose PUBREL the front-end completes (the device got the message at
    /// QoS 0 or 1, or not at all).
    own_pubrel: HashSet<u16>,
    /// QoS 2 flows delivered at QoS 1: the device's PUBACK becomes PUBREC.
    puback_as_pubrec: HashSet<u16>,
}

impl RouterAcks {
    /// The router sent message `pkid` at QoS `granted` (1 or 2); the device gets it at
    /// `delivered` (`None`: dropped). Acks now due go to `out`.
    fn sent(&mut self, pkid: u16, granted: u8, delivered: Option<u8>, out: &mut Vec<Packet>) {
        let own = match (granted, delivered) {
            (1, Some(1)) | (2, Some(2)) => None,
            (1, _) => Some(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            (2, Some(1)) => {
                self.puback_as_pubrec.insert(pkid);
                None
            }
            (2, _) => {
                self.own_pubrel.insert(pkid);
                Some(pubrec(pkid))
            }
            _ => return,
        };
        self.sent.push_back((pkid, own));
        self.flush(out);
    }

    /// An ack from the device (PUBACK, PUBREC, PUBCOMP). `Some` if it is not one this
    /// link tracks: it goes to the router as it is.
    fn device_ack(&mut self, packet: Packet, out: &mut Vec<Packet>) -> Option<Packet> {
        let (pkid, packet) = match packet {
            Packet::PubAck(a, _) if self.puback_as_pubrec.remove(&a.pkid) => {
                self.own_pubrel.insert(a.pkid);
                (a.pkid, pubrec(a.pkid))
            }
            Packet::PubComp(c, props) => {
                let Some(slot) = self
                    .released
                    .iter_mut()
                    .find(|(id, ready)| *id == c.pkid && !*ready)
                else {
                    return Some(Packet::PubComp(c, props));
                };
                slot.1 = true;
                self.flush(out);
                return None;
            }
            p @ Packet::PubAck(..) => {
                let Packet::PubAck(a, _) = &p else {
                    return Some(p);
                };
                (a.pkid, p)
            }
            p @ Packet::PubRec(..) => {
                let Packet::PubRec(r, _) = &p else {
                    return Some(p);
                };
                (r.pkid, p)
            }
            p => return Some(p),
        };
        match self
            .sent
            .iter_mut()
            .find(|(id, ack)| *id == pkid && ack.is_none())
        {
            Some(slot) => {
                slot.1 = Some(packet);
                self.flush(out);
                None
            }
            None => Some(packet),
        }
    }

    /// The router sent PUBREL `pkid`: `true` if it goes to the device, `false` if the
    /// front-end completes it.
    fn pubrel(&mut self, pkid: u16, out: &mut Vec<Packet>) -> bool {
        let own = self.own_pubrel.remove(&pkid);
        self.released.push_back((pkid, own));
        self.flush(out);
        !own
    }

    fn flush(&mut self, out: &mut Vec<Packet>) {
        while let Some((_, Some(_))) = self.sent.front() {
            if let Some((_, Some(ack))) = self.sent.pop_front() {
                out.push(ack);
            }
        }
        while let Some(&(pkid, true)) = self.released.front() {
            self.released.pop_front();
            out.push(Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ));
        }
    }
}

pub(crate) fn pubrec(pkid: u16) -> Packet {
    Packet::PubRec(
        PubRec {
            pkid,
            reason: PubRecReason::Success,
        },
        None,
    )
}

/// Polls a future once. For rumqttd's `LinkTx::send`, whose body never awaits (it
/// queues the packet and blocks on the router's channel if that is full, as all of
/// rumqttd's links do), so it completes on the first poll.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The next notifications of a link: waits for the first, then takes what the router
/// handed over with it. Owns the receiver while it waits, and gives it back.
type NextBatch =
    Pin<Box<dyn Future<Output = (LinkRx, Vec<Notification>, Result<(), LinkError>)> + Send>>;

async fn next_batch(
    mut rx: LinkRx,
    mut batch: Vec<Notification>,
    wake: bool,
) -> (LinkRx, Vec<Notification>, Result<(), LinkError>) {
    if wake {
        if let Err(e) = rx.wake().await {
            return (rx, batch, Err(e));
        }
    }
    loop {
        match rx.next().await {
            Ok(Some(n)) => {
                batch.push(n);
                break;
            }
            Ok(None) => continue,
            Err(e) => return (rx, batch, Err(e)),
        }
    }
    while let Some(Ok(Some(n))) = poll_once(rx.next()) {
        batch.push(n);
    }
    (rx, batch, Ok(()))
}

/// The router's answer to a session's CONNECT, with the messages queued for the session
/// while it was offline; `None`: refused.
type Opening = Pin<Box<dyn Future<Output = Option<Opened>> + Send>>;

/// A session's router link, with what a resumed session had.
pub(crate) struct Opened {
    pub(crate) link: Link,
    /// Messages queued while it was offline.
    pub(crate) queue: Vec<Queued>,
    /// Its stored subscriptions (their options).
    pub(crate) subs: Vec<Filter>,
}

/// Most messages of the offline queue in flight to the device at once.
const REPLAY_WINDOW: usize = 32;

/// The offline queue of a resumed session, delivered before anything the router sends.
/// The router's own messages wait meanwhile, so the two never share a packet ID.
#[derive(Default)]
struct Replay {
    queue: VecDeque<Queued>,
    /// Packet ID -> (row id, QoS).
    inflight: HashMap<u16, (i64, u8)>,
    next_pkid: u16,
}

enum Receiver {
    Ready(LinkRx),
    Waiting(NextBatch),
}

enum State {
    /// Nothing written yet: the session's CONNECT comes first.
    Idle,
    /// CONNECT on its way to the router (after the session's keeper left, see
    /// [`Durable::open`]); packets written meanwhile wait in `pending`.
    Connecting {
        answer: Opening,
        pending: Vec<Packet>,
    },
    Connected {
        door: SharedDoor,
        rx: Option<Receiver>,
    },
    /// The router refused or dropped the session, or the session ended.
    Closed,
}

/// One session's stream into the embedded broker (see the module docs).
pub struct LinkIo {
    hub: Arc<Hub>,
    v5: bool,
    state: State,
    /// Written by the session, not yet a whole packet.
    input: BytesMut,
    /// Encoded for the session to read.
    output: BytesMut,
    /// The most each held since it was last empty (see [`crate::mqtt::relax`]).
    input_peak: usize,
    output_peak: usize,
    read_waker: Option<Waker>,
    will: Option<Will>,
    will_delay: u32,
    client_id: String,
    /// Set once the CONNECT went to the router (see [`Hub::connecting`]).
    generation: Option<u64>,
    disconnect_sent: bool,
    /// The router stopped scheduling this link because its queue was full; tell it when
    /// the queue has been taken.
    wake_router: bool,
    /// Reused between reads: notifications taken from the router.
    batch: Vec<Notification>,
    /// Reused between writes: packets decoded for the router.
    outbox: Vec<Packet>,
    /// Acks the front-end owes the router, in the order it takes them.
    acks: RouterAcks,
    /// Acks due to the router found while reading (see [`LinkIo::deliver`]).
    to_router: Vec<Packet>,
    /// The device's Maximum Packet Size (MQTT 5 CONNECT), if it set one.
    device_max_packet: Option<usize>,
    /// Length of the tenant mount prefix the session strips from topics (`<tenant>/`,
    /// from the backend ClientId `<tenant>.<cn>`; tenant ids have no `.`).
    prefix_len: usize,
    /// The session outlives the connection by this many seconds ([`NEVER`]: always);
    /// `None`: it ends with the connection.
    persist: Option<u32>,
    /// The router link kept the session's state (CleanSession=0).
    resumed: bool,
    /// The offline queue being delivered, if any.
    replay: Option<Box<Replay>>,
    /// The session's subscriptions and their options (from its first SUBSCRIBE, or
    /// the stored ones of a resumed session).
    options: Option<Box<SubOptions>>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl LinkIo {
    fn decode(&mut self) -> Result<Option<Packet>, io::Error> {
        if self.input.is_empty() {
            return Ok(None);
        }
        let max = self.hub.max_packet;
        let decoded = if self.v5 {
            V5.read_mut(&mut self.input, max)
        } else {
            V4.read_mut(&mut self.input, max)
        };
        match decoded {
            Ok(p) => Ok(Some(p)),
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(invalid(e)),
        }
    }

    fn encode(&mut self, packet: Packet) -> io::Result<()> {
        let written = if self.v5 {
            V5.write(packet, &mut self.output)
        } else {
            V4.write(without_properties(packet), &mut self.output)
        };
        written.map(|_| ()).map_err(invalid)
    }

    /// Encodes what the router sent for the session, with what the router gets wrong:
    /// a copy of a message goes out at the lower of the message's QoS and the QoS the
    /// router sent it at (the subscription's), and a message larger than the device's
    /// Maximum Packet Size (as the device will see it, topic unmounted) is discarded
    /// (MQTT 5 3.1.2.11.4). The acks the router then expects from the device come from
    /// [`RouterAcks`] instead.
    fn deliver(&mut self, packet: Packet) -> io::Result<()> {
        let (publish, mut props) = match packet {
            Packet::Publish(p, props) => (p, props),
            Packet::PubRel(r, props) => {
                if self.acks.pubrel(r.pkid, &mut self.to_router) {
                    self.encode(Packet::PubRel(r, props))?;
                }
                return Ok(());
            }
            p => return self.encode(p),
        };
        let m = marks::take(&mut props);
        let own = m.qos;
        let mut verdict = match &self.options {
            Some(o) => o.verdict(&publish.topic, publish.retain, &m, self.generation),
            None => Verdict::Deliver {
                retain: publish.retain,
            },
        };
        // A message that waited (retained, or behind others) goes out with the expiry
        // interval it has left, or not at all.
        if let Some(t) = marks::original_expiry(&mut props, &m) {
            match durable::remaining_expiry(props, t, durable::unix_now()) {
                Some(left) => props = left,
                None => {
                    props = None;
                    verdict = Verdict::Drop;
                    if let Some(d) = &self.hub.durable {
                        d.count_dropped(&self.client_id, "expired");
                    }
                }
            }
        }
        let start = self.output.len();
        self.encode(Packet::Publish(publish, props))?;
        let bad = || invalid("PUBLISH encoding");
        let (h, rem, topic) = publish_layout(&self.output[start..]).ok_or_else(bad)?;
        let first = self.output[start];
        let granted = (first >> 1) & 0x03;
        let delivered = own.map_or(granted, |q| q.min(granted));
        let pkid_at = start + h + 2 + topic;
        let pkid = match granted {
            0 => 0,
            _ => {
                let b = self.output.get(pkid_at..pkid_at + 2).ok_or_else(bad)?;
                u16::from_be_bytes([b[0], b[1]])
            }
        };
        // The packet as the device gets it: the mount prefix stripped, no packet id
        // at QoS 0.
        let strip = self.prefix_len.min(topic);
        let dev_rem = rem - strip - if delivered == 0 && granted > 0 { 2 } else { 0 };
        let too_large = self
            .device_max_packet
            .is_some_and(|m| 1 + varint_len(dev_rem) + dev_rem > m);
        let retain = match verdict {
            Verdict::Deliver { retain } => retain,
            Verdict::Drop => {
                self.output.truncate(start);
                if granted > 0 {
                    self.acks.sent(pkid, granted, None, &mut self.to_router);
                }
                return Ok(());
            }
        };
        if too_large {
            if let Some(d) = &self.hub.durable {
                d.count_dropped(&self.client_id, "too_large");
            }
            tracing::debug!(
                client_id = %self.client_id,
                size = 1 + varint_len(dev_rem) + dev_rem,
                max = self.device_max_packet.unwrap_or(0),
                "message larger than the device's Maximum Packet Size discarded"
            );
            self.output.truncate(start);
            if granted > 0 {
                self.acks.sent(pkid, granted, None, &mut self.to_router);
            }
            return Ok(());
        }
        if granted > 0 {
            self.acks
                .sent(pkid, granted, Some(delivered), &mut self.to_router);
        }
        if retain {
            self.output[start] |= 0x01;
        }
        let first = self.output[start];
        if delivered < granted {
            let pkt = self.output.split_off(start);
            // DUP is 0 at QoS 0 (MQTT 3.3.1.1).
            let keep = if delivered == 0 { !0x0E } else { !0x06 };
            let first = (first & keep) | (delivered << 1);
            let before = &pkt[h..pkid_at - start];
            let after = &pkt[pkid_at - start + 2..];
            let id: &[u8] = if delivered > 0 {
                &pkt[pkid_at - start..pkid_at - start + 2]
            } else {
                &[]
            };
            crate::mqtt::write_packet(&mut self.output, first, &[before, id, after]);
        }
        Ok(())
    }

    /// Puts the next messages of the offline queue in the output, up to
    /// [`REPLAY_WINDOW`] in flight. `true` once the whole queue is delivered and
    /// acknowledged. A message that expired while queued, or that is larger than the
    /// device's Maximum Packet Size, is dropped and counted.
    fn replay_fill(&mut self) -> io::Result<bool> {
        let (Some(mut r), Some(durable)) = (self.replay.take(), self.hub.durable.clone()) else {
            return Ok(true);
        };
        let now = durable::unix_now();
        let mut gone = Vec::new();
        while r.inflight.len() < REPLAY_WINDOW {
            let Some(q) = r.queue.pop_front() else {
                break;
            };
            let Some((publish, props)) = durable::decode(&q.packet) else {
                gone.push(q.id);
                continue;
            };
            let Some(props) = durable::remaining_expiry(props, q.stored_at, now) else {
                durable.count_dropped(&self.client_id, "expired");
                gone.push(q.id);
                continue;
            };
            let start = self.output.len();
            self.encode(Packet::Publish(publish, props))?;
            let (_, rem, topic) =
                publish_layout(&self.output[start..]).ok_or_else(|| invalid("PUBLISH encoding"))?;
            let id_len = if q.qos > 0 { 2 } else { 0 };
            let dev_rem = rem - self.prefix_len.min(topic) + id_len;
            if self
                .device_max_packet
                .is_some_and(|m| 1 + varint_len(dev_rem) + dev_rem > m)
            {
                self.output.truncate(start);
                durable.count_dropped(&self.client_id, "too_large");
                gone.push(q.id);
                continue;
            }
            if q.qos == 0 {
                gone.push(q.id);
                continue;
            }
            let pkid = loop {
                r.next_pkid = r.next_pkid.checked_add(1).unwrap_or(1);
                if !r.inflight.contains_key(&r.next_pkid) {
                    break r.next_pkid;
                }
            };
            raise_qos(&mut self.output, start, q.qos, pkid)?;
            r.inflight.insert(pkid, (q.id, q.qos));
        }
        durable.state.dequeue(gone);
        if r.queue.is_empty() && r.inflight.is_empty() {
            return Ok(true);
        }
        self.replay = Some(r);
        Ok(false)
    }

    /// An ack from the device for a message of the offline queue is taken here (the
    /// message leaves the queue; a PUBREC gets its PUBREL); `Some` if it is for the
    /// router.
    fn replay_ack(&mut self, packet: Packet) -> io::Result<Option<Packet>> {
        let Some(r) = self.replay.as_mut() else {
            return Ok(Some(packet));
        };
        let (pkid, complete) = match &packet {
            Packet::PubAck(a, _) => (a.pkid, true),
            Packet::PubComp(c, _) => (c.pkid, true),
            Packet::PubRec(c, _) => (c.pkid, false),
            _ => return Ok(Some(packet)),
        };
        let Some(&(id, _)) = r.inflight.get(&pkid) else {
            return Ok(Some(packet));
        };
        if complete {
            r.inflight.remove(&pkid);
            if let Some(durable) = &self.hub.durable {
                durable.state.dequeue(vec![id]);
            }
        } else {
            self.encode(Packet::PubRel(
                PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                },
                None,
            ))?;
        }
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        Ok(None)
    }

    /// Takes the whole packets the session wrote to the router.
    fn absorb(&mut self) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.outbox);
        loop {
            // rumqttd's `Publish` keeps its QoS private: it is read off the wire.
            let first = self.input.first().copied();
            // And its packet ID, for the answer to a retained message over the limit.
            let retained_pkid = match first {
                Some(b) if b & 0xF1 == 0x31 && b & 0x06 != 0 => publish_layout(&self.input)
                    .and_then(|(h, _, topic)| self.input.get(h + 2 + topic..h + 4 + topic))
                    .map(|id| u16::from_be_bytes([id[0], id[1]])),
                _ => None,
            };
            let Some(packet) = self.decode()? else {
                break;
            };
            match packet {
                Packet::Publish(mut p, props) => {
                    let qos = first.map_or(0, |b| (b >> 1) & 0x03);
                    // The origin only for a session with a No Local subscription.
                    let origin = match &self.options {
                        Some(o) if o.no_local() => self.generation,
                        _ => None,
                    };
                    let props = marks::mark(props, qos, origin, p.retain);
                    if p.retain {
                        if let Some(durable) = &self.hub.durable {
                            if !durable.retain(&p, &props, qos) {
                                // Over the tenant's retained-message limit: an MQTT 5
                                // QoS 1/2 message is refused with 0x97 "Quota exceeded";
                                // otherwise (no way to refuse one message) it goes out
                                // live, not retained.
                                match (self.v5, qos, retained_pkid) {
                                    (true, 1 | 2, Some(pkid)) => {
                                        self.encode(quota_exceeded(qos, pkid))?;
                                        if let Some(w) = self.read_waker.take() {
                                            w.wake();
                                        }
                                        continue;
                                    }
                                    _ => p.retain = false,
                                }
                            }
                        }
                    }
                    ready.push(Packet::Publish(p, props));
                }
                p @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
                    let Some(p) = self.replay_ack(p)? else {
                        continue;
                    };
                    if let Some(p) = self.acks.device_ack(p, &mut ready) {
                        ready.push(p);
                    }
                }
                Packet::Subscribe(sub, props) => {
                    let options = self.options.get_or_insert_with(Default::default);
                    for f in &sub.filters {
                        options.subscribe(f);
                    }
                    if let (Some(durable), Some(_)) = (&self.hub.durable, self.persist) {
                        let subs = sub.filters.iter().map(durable::options).collect();
                        durable.state.subscribe(&self.client_id, subs);
                    }
                    ready.push(Packet::Subscribe(sub, props));
                }
                Packet::Unsubscribe(unsub, props) => {
                    if let Some(options) = &mut self.options {
                        for f in &unsub.filters {
                            options.unsubscribe(f);
                        }
                    }
                    if let (Some(durable), Some(_)) = (&self.hub.durable, self.persist) {
                        durable
                            .state
                            .unsubscribe(&self.client_id, unsub.filters.clone());
                    }
                    ready.push(Packet::Unsubscribe(unsub, props));
                }
                Packet::Connect(connect, props, will, will_props, _) => {
                    if !matches!(self.state, State::Idle) {
                        return Err(invalid("second CONNECT"));
                    }
                    let session_expiry = props
                        .as_ref()
                        .and_then(|p| p.session_expiry_interval)
                        .unwrap_or(0);
                    let delay = will_props
                        .as_ref()
                        .and_then(|p| p.delay_interval)
                        .unwrap_or(0);
                    self.will_delay = session_expiry.min(delay);
                    self.will = will.map(|w| (w, will_props));
                    self.client_id = connect.client_id.clone();
                    self.prefix_len = connect.client_id.find('.').map_or(0, |i| i + 1);
                    self.device_max_packet = props
                        .as_ref()
                        .and_then(|p| p.max_packet_size)
                        .filter(|m| *m > 0)
                        .and_then(|m| usize::try_from(m).ok());
                    let clean = connect.clean_session;
                    self.generation = Some(self.hub.connecting(&connect.client_id, clean));
                    let topic_alias_max = props.and_then(|p| p.topic_alias_max).unwrap_or(0);
                    let answer: Opening = match self.hub.durable.clone() {
                        Some(durable) => {
                            // 3.1.1: CleanSession=0 keeps the session until the device
                            // starts a clean one; 5.0: the Session Expiry Interval says
                            // how long it outlives the connection (0: not at all).
                            self.persist = match (self.v5, clean) {
                                (false, true) => None,
                                (false, false) => Some(NEVER),
                                (true, _) => (session_expiry > 0).then_some(session_expiry),
                            };
                            self.resumed = !(clean && self.persist.is_none());
                            Box::pin(durable.open(
                                self.hub.clone(),
                                connect.client_id,
                                clean,
                                self.persist,
                                topic_alias_max,
                            ))
                        }
                        None => {
                            let hub = self.hub.clone();
                            Box::pin(async move {
                                let link = hub.link(connect.client_id, clean, topic_alias_max);
                                link.await.ok().map(|link| Opened {
                                    link,
                                    queue: Vec::new(),
                                    subs: Vec::new(),
                                })
                            })
                        }
                    };
                    self.state = State::Connecting {
                        answer,
                        pending: Vec::new(),
                    };
                    if let Some(w) = self.read_waker.take() {
                        w.wake();
                    }
                }
                Packet::Disconnect(d, props) => {
                    if d.reason_code != DisconnectReasonCode::DisconnectWithWillMessage {
                        self.will = None;
                    }
                    // MQTT 5 3.14.2.2.2: a session that had an expiry may change it (0
                    // ends it now); one that had none may not get one.
                    if let Some(expiry) = props.as_ref().and_then(|p| p.session_expiry_interval) {
                        if self.persist.is_some() {
                            self.persist = (expiry > 0).then_some(expiry);
                        }
                    }
                    self.disconnect_sent = true;
                    ready.push(Packet::Disconnect(d, props));
                }
                p => ready.push(p),
            }
        }
        let result = match &mut self.state {
            _ if ready.is_empty() => Ok(()),
            State::Connecting { pending, .. } => {
                pending.append(&mut ready);
                Ok(())
            }
            State::Connected { door, .. } => {
                self.hub.announcer.hold(door, &mut ready);
                Ok(())
            }
            State::Idle => Err(invalid("a packet before CONNECT")),
            State::Closed => Err(io::ErrorKind::BrokenPipe.into()),
        };
        // The (now empty) vector is kept for the next write: no allocation per packet.
        ready.clear();
        relax_vec(&mut ready);
        self.outbox = ready;
        relax(&mut self.input, &mut self.input_peak, 0);
        result
    }

    /// The router answered the CONNECT: the CONNACK goes to the session, the packets
    /// written meanwhile to the router.
    fn connected(&mut self, opened: Opened, pending: Vec<Packet>) -> io::Result<()> {
        let Opened { link, queue, subs } = opened;
        let (mut tx, rx, connack) = link;
        if !subs.is_empty() {
            let options = self.options.get_or_insert_with(Default::default);
            for f in &subs {
                options.subscribe(f);
            }
        }
        if !queue.is_empty() {
            self.replay = Some(Box::new(Replay {
                queue: queue.into(),
                inflight: HashMap::new(),
                next_pkid: 0,
            }));
        }
        if let Some(p) = Option::<Packet>::from(connack) {
            self.encode(p)?;
        }
        let mut pending = pending;
        send(&mut tx, &mut pending)?;
        self.state = State::Connected {
            door: Arc::new(Mutex::new(Door {
                tx,
                held: Vec::new(),
            })),
            rx: Some(Receiver::Ready(rx)),
        };
        Ok(())
    }

    /// Ends the session with the router: the will unless the device disconnected
    /// cleanly, then DISCONNECT (unless the router already dropped the link).
    ///
    /// The will of a session taken over by a newer one with the same client ID goes
    /// out at once if the newer one started clean (this session ended), and never if it
    /// resumed this session, as rumqttd does for its own connections and as MQTT 5's
    /// will delay intends: a device back on a new connection is not gone.
    fn finish(&mut self) {
        let generation = self.generation.take();
        let taken_over = match generation {
            Some(g) => self.hub.ended(&self.client_id, g),
            None => None,
        };
        // The durable state's part, once the router has the DISCONNECT: a keeper for a
        // session that goes on, or the end of one that does not.
        let durable = match (&self.hub.durable, generation, taken_over) {
            (Some(d), Some(_), None) => Some((d.clone(), self.client_id.clone())),
            _ => None,
        };
        let (persist, resumed) = (self.persist, self.resumed);
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Connected { door, rx } => {
                if let Some(will) = self.will.take() {
                    let client_id = std::mem::take(&mut self.client_id);
                    match taken_over {
                        None => self.hub.publish_will(client_id, will, self.will_delay),
                        Some(true) => self.hub.publish_will(client_id, will, 0),
                        Some(false) => {}
                    }
                }
                // What the session wrote last goes first; no receiver left: the router
                // dropped the link itself.
                let mut d = lock(&door);
                let Door { tx, held } = &mut *d;
                if !self.disconnect_sent && rx.is_some() {
                    held.push(bye());
                }
                let _ = send(tx, held);
                drop(d);
                if let Some((durable, client_id)) = durable {
                    durable.session_ended(&self.hub, client_id, persist, resumed);
                }
            }
            // The session ended before the router answered: take the link down once it
            // exists.
            State::Connecting { answer, .. } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let hub = self.hub.clone();
                    runtime.spawn(async move {
                        if let Some(Opened {
                            link: (mut tx, _rx, _),
                            ..
                        }) = answer.await
                        {
                            let _ = tx.send(bye()).await;
                        }
                        if let Some((durable, client_id)) = durable {
                            durable.session_ended(&hub, client_id, persist, resumed);
                        }
                    });
                }
            }
            State::Idle | State::Closed => {}
        }
    }
}

/// Most packets or notifications a link keeps room for between uses (see
/// [`crate::mqtt::KEEP_BUF`]): a burst's vector is freed once empty.
const KEEP_ITEMS: usize = 32;

/// Frees `v` if it is empty and grew past [`KEEP_ITEMS`].
fn relax_vec<T>(v: &mut Vec<T>) {
    if v.is_empty() && v.capacity() > KEEP_ITEMS {
        *v = Vec::new();
    }
}

/// The MQTT 5 refusal of a QoS 1 (PUBACK) or QoS 2 (PUBREC) message: 0x97 "Quota
/// exceeded".
fn quota_exceeded(qos: u8, pkid: u16) -> Packet {
    if qos == 1 {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::QuotaExceeded,
            },
            None,
        )
    } else {
        Packet::PubRec(
            PubRec {
                pkid,
                reason: PubRecReason::QuotaExceeded,
            },
            None,
        )
    }
}

/// Turns the QoS 0 PUBLISH at `start` of `out` into one at `qos` with packet ID `pkid`.
fn raise_qos(out: &mut BytesMut, start: usize, qos: u8, pkid: u16) -> io::Result<()> {
    let pkt = out.split_off(start);
    let (h, _, topic) = publish_layout(&pkt).ok_or_else(|| invalid("PUBLISH encoding"))?;
    let at = h + 2 + topic;
    crate::mqtt::write_packet(
        out,
        (pkt[0] & !0x06) | (qos << 1),
        &[&pkt[h..at], &pkid.to_be_bytes(), &pkt[at..]],
    );
    Ok(())
}

/// The DISCONNECT that ends a link normally.
pub(crate) fn bye() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// The packet without MQTT 5 properties, for a 3.1.1 session. The router attaches them
/// to messages from MQTT 5 publishers (a will's, say), and rumqttd's 3.1.1 encoder
/// panics on them.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        p @ (Packet::PingReq(_) | Packet::PingResp(_)) => p,
    }
}

/// Queues `packets` (leaving the vector empty) for the router and tells it once.
fn send(tx: &mut LinkTx, packets: &mut Vec<Packet>) -> io::Result<()> {
    let Some(last) = packets.pop() else {
        return Ok(());
    };
    if !packets.is_empty() {
        tx.buffer().extend(packets.drain(..));
    }
    match poll_once(tx.send(last)) {
        Some(Ok(_)) => Ok(()),
        _ => Err(io::ErrorKind::BrokenPipe.into()),
    }
}

impl AsyncRead for LinkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                relax(&mut this.output, &mut this.output_peak, 0);
                return Poll::Ready(Ok(()));
            }
            match &mut this.state {
                State::Idle => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                State::Connecting { answer, pending } => {
                    let opened = match answer.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(opened)) => opened,
                        // Refused (rumqttd drops a link it has no room for): end of stream,
                        // which the session answers as a refusal.
                        Poll::Ready(None) => {
                            this.state = State::Closed;
                            return Poll::Ready(Ok(()));
                        }
                    };
                    let pending = std::mem::take(pending);
                    this.connected(opened, pending)?;
                }
                State::Connected { .. } if this.replay.is_some() => {
                    // The offline queue first; the router's messages wait.
                    if this.replay_fill()? {
                        this.replay = None;
                    } else if this.output.is_empty() {
                        this.read_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
                State::Connected { rx, .. } => {
                    let mut future = match rx.take() {
                        Some(Receiver::Ready(r)) => {
                            let batch = std::mem::take(&mut this.batch);
                            let wake = std::mem::take(&mut this.wake_router);
                            Box::pin(next_batch(r, batch, wake)) as NextBatch
                        }
                        Some(Receiver::Waiting(f)) => f,
                        None => return Poll::Ready(Ok(())),
                    };
                    let (r, mut batch, result) = match future.as_mut().poll(cx) {
                        Poll::Pending => {
                            *rx = Some(Receiver::Waiting(future));
                            // An answer of the front-end's own (written by `absorb`)
                            // wakes the reader too.
                            if !this
                                .read_waker
                                .as_ref()
                                .is_some_and(|w| w.will_wake(cx.waker()))
                            {
                                this.read_waker = Some(cx.waker().clone());
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(v) => v,
                    };
                    if result.is_err() {
                        // The router dropped the link (a newer session took the client ID
                        // over): end of stream, and no receiver left (`finish` reads
                        // that). The will still goes out when the session ends. An MQTT 5
                        // device is told why first (3.14.2.1: 0x8E Session taken over),
                        // as rumqttd's own connections and other brokers do.
                        if this.v5 {
                            // With its property length, which some clients (rumqttc)
                            // need although 5.0 lets it be left out.
                            this.output.extend_from_slice(&crate::mqtt::disconnect_v5(
                                crate::mqtt::codes::V5_SESSION_TAKEN_OVER,
                            ));
                            continue;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    *rx = Some(Receiver::Ready(r));
                    for n in batch.drain(..) {
                        match Option::<Packet>::from(n) {
                            Some(p) => this.deliver(p)?,
                            None => this.wake_router = true,
                        }
                    }
                    relax_vec(&mut batch);
                    if !this.to_router.is_empty() {
                        if let State::Connected { door, .. } = &this.state {
                            this.hub.announcer.hold(door, &mut this.to_router);
                        }
                    }
                    this.batch = batch;
                    this.output_peak = this.output_peak.max(this.output.len());
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for LinkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.input.extend_from_slice(buf);
        this.input_peak = this.input_peak.max(this.input.len());
        Poll::Ready(this.absorb().map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LinkIo {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A router without listeners, with room for `max_connections` links (the will
    /// publisher takes one).
    async fn hub(max_connections: usize) -> Arc<Hub> {
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024 * 1024,
                max_segment_count: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        Hub::start(config, 1 << 20, None).await.unwrap()
    }

    /// A 3.1.1 CONNECT: clean session, keep-alive 60 s.
    fn connect(client_id: &str) -> BytesMut {
        let mut out = BytesMut::new();
        let id = client_id.as_bytes();
        let id_len = (id.len() as u16).to_be_bytes();
        let header = [0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        crate::mqtt::write_packet(&mut out, 0x10, &[&header, &id_len, id]);
        out
    }

    fn puback(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    #[test]
    fn the_routers_acks_go_out_in_the_order_it_sent_the_messages() {
        let mut acks = RouterAcks::default();
        let mut out = Vec::new();
        // 1: QoS 1 to the device; 2: QoS 1 sent as QoS 0 (the front-end acks);
        // 3: QoS 2 sent as QoS 1 (the device's PUBACK becomes PUBREC).
        acks.sent(1, 1, Some(1), &mut out);
        acks.sent(2, 1, Some(0), &mut out);
        acks.sent(3, 2, Some(1), &mut out);
        assert!(out.is_empty(), "ack 2 waits for the device's ack 1");
        assert!(acks.device_ack(puback(1), &mut out).is_none());
        assert_eq!(out, vec![puback(1), puback(2)]);
        out.clear();
        assert!(acks.device_ack(puback(3), &mut out).is_none());
        assert_eq!(out, vec![pubrec(3)]);
        out.clear();
        // Its PUBREL is the front-end's to complete, not the device's.
        assert!(!acks.pubrel(3, &mut out));
        assert!(matches!(&out[..], [Packet::PubComp(c, None)] if c.pkid == 3));
        // An ack this link does not track goes to the router as it is.
        assert_eq!(acks.device_ack(puback(9), &mut Vec::new()), Some(puback(9)));
    }

    #[tokio::test]
    async fn connect_comes_first_and_only_once() {
        let hub = hub(10).await;
        let mut early = hub.session(false);
        let err = early.write_all(&[0xC0, 0x00]).await.unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string().as_str()),
            (io::ErrorKind::InvalidData, "a packet before CONNECT")
        );

        let mut io = connected_session(&hub, "dev-1").await;
        // PINGREQ through the router and back.
        io.write_all(&[0xC0, 0x00]).await.unwrap();
        let mut pong = [0u8; 2];
        io.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0xD0, 0x00]);
        let err = io.write_all(&connect("dev-1")).await.unwrap_err();
        assert_eq!(err.to_string(), "second CONNECT");
    }

    /// Connects `client_id` and reads its CONNACK.
    async fn connected_session(hub: &Arc<Hub>, client_id: &str) -> LinkIo {
        let mut io = hub.session(false);
        io.write_all(&connect(client_id)).await.unwrap();
        let mut connack = [0u8; 4];
        io.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
        io
    }

    /// A session "sub" subscribed to `filter` at QoS 0 (SUBACK read).
    async fn subscriber(hub: &Arc<Hub>, filter: &str) -> LinkIo {
        let mut sub = connected_session(hub, "sub").await;
        let mut subscribe = BytesMut::new();
        let len = (filter.len() as u16).to_be_bytes();
        crate::mqtt::write_packet(
            &mut subscribe,
            0x82,
            &[&[0, 1], &len, filter.as_bytes(), &[0]],
        );
        sub.write_all(&subscribe).await.unwrap();
        let mut suback = [0u8; 5];
        sub.read_exact(&mut suback).await.unwrap();
        assert_eq!(
            suback,
            [0x90, 0x03, 0x00, 0x01, 0x00],
            "SUBACK, QoS 0 granted"
        );
        sub
    }

    #[tokio::test]
    async fn packets_held_for_the_router_arrive_complete_and_in_order() {
        let hub = hub(10).await;
        let mut sub = subscriber(&hub, "t/#").await;

        // Two devices write one QoS 0 PUBLISH at a time, in turns; every tenth turn
        // lets the announcer run, so batches hold one device's packets or both.
        let mut a = connected_session(&hub, "a").await;
        let mut b = connected_session(&hub, "b").await;
        const N: u32 = 500;
        for i in 0..N {
            for (io, topic) in [(&mut a, b"t/a"), (&mut b, b"t/b")] {
                let mut publish = BytesMut::new();
                let topic_len = 3u16.to_be_bytes();
                crate::mqtt::write_packet(
                    &mut publish,
                    0x30,
                    &[&topic_len, topic, &i.to_be_bytes()],
                );
                io.write_all(&publish).await.unwrap();
            }
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }

        // Each PUBLISH comes back as 11 bytes: header, length, topic, 4-byte counter.
        let mut got = vec![0u8; 11 * 2 * N as usize];
        tokio::time::timeout(Duration::from_secs(10), sub.read_exact(&mut got))
            .await
            .expect("every message arrives")
            .unwrap();
        let mut next = [0u32; 2];
        for m in got.chunks(11) {
            assert_eq!(&m[..4], &[0x30, 9, 0, 3], "a QoS 0 PUBLISH: {m:?}");
            let from = match &m[4..7] {
                b"t/a" => 0,
                b"t/b" => 1,
                other => panic!("topic {other:?}"),
            };
            let counter = u32::from_be_bytes(m[7..11].try_into().unwrap());
            assert_eq!(counter, next[from], "messages of device {from} in order");
            next[from] += 1;
        }
        assert_eq!(next, [N, N]);
    }

    #[tokio::test]
    async fn buffers_grown_for_a_large_message_are_freed_once_it_is_through() {
        let hub = hub(10).await;
        let mut sub = subscriber(&hub, "t").await;

        let mut device = connected_session(&hub, "device").await;
        let payload = vec![7u8; 100_000];
        let mut publish = BytesMut::new();
        crate::mqtt::write_packet(&mut publish, 0x30, &[&[0, 1], b"t", &payload]);
        device.write_all(&publish).await.unwrap();
        let mut got = vec![0u8; publish.len()];
        tokio::time::timeout(Duration::from_secs(10), sub.read_exact(&mut got))
            .await
            .expect("the message arrives")
            .unwrap();
        assert_eq!(got, publish);

        // A PINGREQ round trip: kept, the buffer that held the message would take its
        // 100 kB allocation back for the 2-byte PINGRESP.
        sub.write_all(&[0xC0, 0x00]).await.unwrap();
        let mut pong = [0u8; 2];
        sub.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0xD0, 0x00]);
        let keep = crate::mqtt::KEEP_BUF;
        assert!(sub.output.capacity() <= keep, "{}", sub.output.capacity());
    }

    #[tokio::test]
    async fn a_link_the_router_has_no_room_for_ends_the_stream() {
        // Room for the will publisher only.
        let hub = hub(1).await;
        let mut io = hub.session(false);
        io.write_all(&connect("dev-1")).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest))
            .await
            .expect("the stream ends")
            .unwrap();
        assert_eq!(n, 0, "no CONNACK: {rest:?}");
    }
}
