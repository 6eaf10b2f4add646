//! MQTT wire glue for the front-end: framing, CONNECT/CONNACK/DISCONNECT helpers, and
//! the byte-level topic mounting of PUBLISH, SUBSCRIBE and UNSUBSCRIBE for MQTT 3.1.1
//! and 5.0. Only what the front-end rewrites is decoded; every other packet is
//! forwarded byte for byte. CONNECT is decoded and re-encoded with rumqttd's codec.

use admin_api::acl::{Acl, Refusal};
use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, Protocol};

/// MQTT protocol level of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why bytes from a peer are not an acceptable MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The packet is larger than the configured maximum.
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    /// Structurally invalid.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The first packet was not CONNECT.
    #[error("first packet is not CONNECT")]
    NotConnect,
    /// Protocol level other than 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// A topic the front-end refuses (wildcards in a PUBLISH, empty).
    #[error("invalid topic")]
    InvalidTopic,
    /// A PUBLISH (or will) topic starting with `$`: reserved for the server (MQTT 5
    /// 4.7.2). Unlike [`MqttError::InvalidTopic`] the packet is well formed, so an MQTT
    /// 5 session is answered with reason 0x90 and kept (see [`reserved_topic_ack`]).
    #[error("topic starting with '$' is reserved")]
    ReservedTopic,
    /// A topic alias that was never defined.
    #[error("unknown topic alias {0}")]
    UnknownAlias(u16),
    /// The tenant's PUBLISH rate is exhausted.
    #[error("tenant publish rate exceeded")]
    RateExceeded,
    /// More unacknowledged QoS 1/2 PUBLISH packets than allowed.
    #[error("too many QoS 1/2 messages in flight")]
    InflightExceeded,
    /// A packet type that must not appear here (second CONNECT, AUTH, reserved).
    #[error("unexpected packet type {0}")]
    Unexpected(u8),
}

/// Packet type numbers (upper nibble of the first byte).
pub mod kind {
    /// CONNECT
    pub const CONNECT: u8 = 1;
    /// CONNACK
    pub const CONNACK: u8 = 2;
    /// PUBLISH
    pub const PUBLISH: u8 = 3;
    /// PUBREL (the device's second step of a QoS 2 flow)
    pub const PUBREL: u8 = 6;
    /// PUBCOMP (the last acknowledgement of a QoS 2 flow)
    pub const PUBCOMP: u8 = 7;
    /// SUBACK
    pub const SUBACK: u8 = 9;
    /// SUBSCRIBE
    pub const SUBSCRIBE: u8 = 8;
    /// UNSUBSCRIBE
    pub const UNSUBSCRIBE: u8 = 10;
    /// PINGREQ
    pub const PINGREQ: u8 = 12;
    /// PINGRESP
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5 only)
    pub const AUTH: u8 = 15;
}

/// If `buf` starts with a complete packet, its total length (fixed header included).
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, MqttError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len: usize = 0;
    let mut shift = 0;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            let total = i + 1 + len;
            if total > max {
                return Err(MqttError::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
        shift += 7;
    }
    Err(MqttError::Malformed("remaining length longer than 4 bytes"))
}

/// (header length, remaining length) of a complete packet.
fn header(pkt: &[u8]) -> (usize, usize) {
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    while i < pkt.len() && i < 5 {
        len |= ((pkt[i] & 0x7f) as usize) << shift;
        if pkt[i] & 0x80 == 0 {
            break;
        }
        shift += 7;
        i += 1;
    }
    (i + 1, len)
}

fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

fn read_varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, b) in buf.iter().take(4).enumerate() {
        v |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn read_str(buf: &[u8]) -> Option<(&[u8], usize)> {
    let n = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    Some((buf.get(2..2 + n)?, 2 + n))
}

/// Peeks the protocol level of a complete CONNECT packet.
pub fn connect_version(pkt: &[u8]) -> Result<Version, MqttError> {
    if pkt.first().map(|b| b >> 4) != Some(kind::CONNECT) {
        return Err(MqttError::NotConnect);
    }
    let (h, _) = header(pkt);
    let (name, n) = read_str(&pkt[h..]).ok_or(MqttError::Malformed("CONNECT protocol name"))?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err(MqttError::Malformed("CONNECT protocol name"));
    }
    match pkt.get(h + n) {
        Some(4) => Ok(Version::V4),
        Some(5) => Ok(Version::V5),
        Some(l) => Err(MqttError::UnsupportedProtocol(*l)),
        None => Err(MqttError::Malformed("CONNECT protocol level")),
    }
}

/// A decoded CONNECT, as much as the front-end needs.
pub struct Connect {
    /// Protocol level.
    pub version: Version,
    /// The decoded packet (rumqttd types).
    pub packet: Packet,
}

impl Connect {
    /// Decodes a complete CONNECT packet.
    pub fn decode(pkt: &[u8], version: Version) -> Result<Connect, MqttError> {
        let mut buf = BytesMut::from(pkt);
        let packet = match version {
            Version::V4 => protocol::v4::V4.read_mut(&mut buf, pkt.len() + 1),
            Version::V5 => protocol::v5::V5.read_mut(&mut buf, pkt.len() + 1),
        }
        .map_err(|_| MqttError::Malformed("CONNECT"))?;
        match packet {
            Packet::Connect(..) => Ok(Connect { version, packet }),
            _ => Err(MqttError::NotConnect),
        }
    }

    /// The ClientId the device sent.
    pub fn client_id(&self) -> &str {
        match &self.packet {
            Packet::Connect(c, ..) => &c.client_id,
            _ => "",
        }
    }

    /// Keep-alive in seconds the device asked for.
    pub fn keep_alive(&self) -> u16 {
        match &self.packet {
            Packet::Connect(c, ..) => c.keep_alive,
            _ => 0,
        }
    }

    /// The will's topic (as sent), QoS and retain flag, if the CONNECT has a will.
    pub fn will(&self) -> Option<(&[u8], u8, bool)> {
        match &self.packet {
            Packet::Connect(_, _, Some(w), ..) => Some((&w.topic, w.qos as u8, w.retain)),
            _ => None,
        }
    }

    /// Clean session / clean start flag.
    pub fn clean_session(&self) -> bool {
        match &self.packet {
            Packet::Connect(c, ..) => c.clean_session,
            _ => true,
        }
    }

    /// Re-encodes the CONNECT for the backend: ClientId `backend_client_id`, will topic
    /// mounted under `prefix`, the device's login replaced by `login` (the front-end's
    /// own credential for the backend, or none), keep-alive `keep_alive`, and no topic
    /// aliases from the backend (the front-end resolves device aliases itself).
    pub fn encode_for_backend(
        self,
        backend_client_id: &str,
        prefix: &str,
        keep_alive: u16,
        login: Option<protocol::Login>,
    ) -> Result<BytesMut, MqttError> {
        let Packet::Connect(mut c, mut props, mut will, will_props, _login) = self.packet else {
            return Err(MqttError::NotConnect);
        };
        c.client_id = backend_client_id.to_string();
        c.keep_alive = keep_alive;
        if let Some(w) = will.as_mut() {
            let topic = std::str::from_utf8(&w.topic).map_err(|_| MqttError::InvalidTopic)?;
            w.topic = Bytes::from(mount_topic(prefix, topic)?);
        }
        if let Some(p) = props.as_mut() {
            p.topic_alias_max = None;
            p.authentication_method = None;
            p.authentication_data = None;
        }
        let mut out = BytesMut::with_capacity(128);
        let packet = Packet::Connect(c, props, will, will_props, login);
        match self.version {
            Version::V4 => protocol::v4::V4.write(packet, &mut out),
            Version::V5 => protocol::v5::V5.write(packet, &mut out),
        }
        .map_err(|_| MqttError::Malformed("CONNECT re-encoding"))?;
        Ok(out)
    }
}

/// Rewrites a successful MQTT 5 CONNACK from the backend with what the front-end
/// enforces: Receive Maximum, Topic Alias Maximum, Maximum Packet Size, and the
/// Assigned Client Identifier `assigned` (the certificate's CN, for a device that sent
/// an empty ClientId, MQTT 5 3.2.2.3.7) in place of the backend's (its `<tenant>.<cn>`
/// must not leak to the device).
///
/// No Server Keep Alive: the front-end honours the device's keep-alive as sent (0
/// included: it then keeps the backend session alive itself), so it has none to impose.
pub fn connack_v5_for_device(
    pkt: &[u8],
    receive_max: u16,
    topic_alias_max: u16,
    max_packet_size: u32,
    assigned: Option<&str>,
) -> Result<BytesMut, MqttError> {
    // rumqttd's v5 codec does not decode CONNACK (it is a server codec): bytes it is.
    let bad = || MqttError::Malformed("CONNACK");
    if pkt.first() != Some(&0x20) {
        return Err(bad());
    }
    let (h, rem) = header(pkt);
    let body = pkt.get(h..h + rem).ok_or_else(bad)?;
    let (&flags, rest) = body.split_first().ok_or_else(bad)?;
    let (&reason, rest) = rest.split_first().ok_or_else(bad)?;
    let (plen, pn) = if rest.is_empty() {
        (0, 0)
    } else {
        read_varint(rest).ok_or_else(bad)?
    };
    let props = rest.get(pn..pn + plen).ok_or_else(bad)?;
    let mut kept = Vec::with_capacity(props.len() + 16);
    let (mut recv, mut size) = (receive_max, max_packet_size);
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        let len = property_len(id, &props[i + 1..]).ok_or_else(bad)?;
        let v = props.get(i + 1..i + 1 + len).ok_or_else(bad)?;
        match id {
            0x21 => recv = recv.min(u16::from_be_bytes([v[0], v[1]])),
            0x27 => size = size.min(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            0x22 | 0x12 => {}
            _ => kept.extend_from_slice(&props[i..i + 1 + len]),
        }
        i += 1 + len;
    }
    kept.push(0x21);
    kept.extend_from_slice(&recv.to_be_bytes());
    kept.push(0x22);
    kept.extend_from_slice(&topic_alias_max.to_be_bytes());
    kept.push(0x27);
    kept.extend_from_slice(&size.to_be_bytes());
    if let Some(id) = assigned {
        let len = u16::try_from(id.len()).map_err(|_| bad())?;
        kept.push(0x12);
        kept.extend_from_slice(&len.to_be_bytes());
        kept.extend_from_slice(id.as_bytes());
    }
    let mut plen_buf = BytesMut::with_capacity(4);
    put_varint(&mut plen_buf, kept.len());
    let mut out = BytesMut::with_capacity(kept.len() + 8);
    write_packet(&mut out, 0x20, &[&[flags, reason], &plen_buf, &kept]);
    Ok(out)
}

/// The answer to an MQTT 5 PUBLISH whose topic starts with `$`
/// ([`MqttError::ReservedTopic`]): PUBACK (QoS 1) or PUBREC (QoS 2) with reason 0x90
/// "Topic Name invalid", which ends that message's flow (MQTT 5 4.3.3: no PUBREL
/// follows a PUBREC of 0x80 or more); `None` for QoS 0, which has no acknowledgement:
/// the message is discarded. The session stays open.
///
/// MQTT 3.1.1 has no way to refuse one message (its PUBACK and PUBREC carry no code,
/// and acknowledging would tell the device the message was accepted), so a 3.1.1
/// session that publishes to a `$` topic is closed, as before.
pub fn reserved_topic_ack(pkt: &[u8]) -> Option<[u8; 5]> {
    let qos = (pkt.first()? >> 1) & 0x03;
    let kind = match qos {
        1 => 0x40,
        2 => 0x50,
        _ => return None,
    };
    let (h, rem) = header(pkt);
    let body = pkt.get(h..h + rem)?;
    let (_, n) = read_str(body)?;
    let pkid = body.get(n..n + 2)?;
    Some([kind, 0x03, pkid[0], pkid[1], codes::V5_TOPIC_INVALID])
}

/// A refusal CONNACK. `code` is the 3.1.1 return code or the 5.0 reason code.
pub fn connack(version: Version, code: u8) -> [u8; 5] {
    // v4: 20 02 00 code; v5: 20 03 00 reason 00 (no properties). The fifth byte is
    // only sent for v5 (see `connack_bytes`).
    match version {
        Version::V4 => [0x20, 0x02, 0x00, code, 0],
        Version::V5 => [0x20, 0x03, 0x00, code, 0x00],
    }
}

/// The bytes of a CONNACK to send.
pub fn connack_bytes(version: Version, code: u8) -> Vec<u8> {
    let c = connack(version, code);
    match version {
        Version::V4 => c[..4].to_vec(),
        Version::V5 => c.to_vec(),
    }
}

/// Reason/return codes the front-end sends.
pub mod codes {
    /// 3.1.1: unacceptable protocol version.
    pub const V4_BAD_PROTOCOL: u8 = 1;
    /// 3.1.1: identifier rejected.
    pub const V4_ID_REJECTED: u8 = 2;
    /// 3.1.1: server unavailable.
    pub const V4_UNAVAILABLE: u8 = 3;
    /// 3.1.1: not authorized.
    pub const V4_NOT_AUTHORIZED: u8 = 5;
    /// 3.1.1 SUBACK return code "Failure".
    pub const V4_SUBACK_FAILURE: u8 = 0x80;
    /// 5.0: unspecified error.
    pub const V5_UNSPECIFIED: u8 = 0x80;
    /// 5.0: malformed packet.
    pub const V5_MALFORMED: u8 = 0x81;
    /// 5.0: protocol error.
    pub const V5_PROTOCOL_ERROR: u8 = 0x82;
    /// 5.0: client identifier not valid.
    pub const V5_CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// 5.0: not authorized.
    pub const V5_NOT_AUTHORIZED: u8 = 0x87;
    /// 5.0: server unavailable (CONNACK only).
    pub const V5_SERVER_UNAVAILABLE: u8 = 0x88;
    /// 5.0: server busy (the DISCONNECT code nearest to "unavailable", which 5.0 allows
    /// in CONNACK only).
    pub const V5_SERVER_BUSY: u8 = 0x89;
    /// 5.0: banned.
    pub const V5_BANNED: u8 = 0x8A;
    /// 5.0: server shutting down.
    pub const V5_SHUTTING_DOWN: u8 = 0x8B;
    /// 5.0: session taken over (DISCONNECT).
    pub const V5_SESSION_TAKEN_OVER: u8 = 0x8E;
    /// 5.0: keep alive timeout.
    pub const V5_KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// 5.0: topic name invalid.
    pub const V5_TOPIC_INVALID: u8 = 0x90;
    /// 5.0: packet too large.
    pub const V5_PACKET_TOO_LARGE: u8 = 0x95;
    /// 5.0: topic alias invalid.
    pub const V5_TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// 5.0: message rate too high.
    pub const V5_MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// 5.0: receive maximum exceeded.
    pub const V5_RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// 5.0: quota exceeded.
    pub const V5_QUOTA_EXCEEDED: u8 = 0x97;
    /// 5.0: unsupported protocol version.
    pub const V5_UNSUPPORTED_PROTOCOL: u8 = 0x84;
}

/// An MQTT 5 DISCONNECT with a reason code and no properties.
pub fn disconnect_v5(reason: u8) -> [u8; 4] {
    [0xE0, 0x02, reason, 0x00]
}

/// The return code of a CONNACK packet (byte 3), if `pkt` is one.
pub fn connack_code(pkt: &[u8]) -> Option<u8> {
    if pkt.first().map(|b| b >> 4) != Some(kind::CONNACK) {
        return None;
    }
    let (h, _) = header(pkt);
    pkt.get(h + 1).copied()
}

/// The session present flag of a CONNACK packet, if `pkt` is one.
pub fn connack_session_present(pkt: &[u8]) -> Option<bool> {
    if pkt.first().map(|b| b >> 4) != Some(kind::CONNACK) {
        return None;
    }
    let (h, _) = header(pkt);
    pkt.get(h).map(|f| f & 0x01 != 0)
}

/// Mounts a PUBLISH topic under `prefix` (`<tenant>/`). Wildcards, empty topics, NUL and
/// topics starting with `$` are refused: a device may not publish into `$SYS` or make
/// its messages match another scope.
pub fn mount_topic(prefix: &str, topic: &str) -> Result<String, MqttError> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(MqttError::InvalidTopic);
    }
    if topic.starts_with('$') {
        return Err(MqttError::ReservedTopic);
    }
    fits_u16(format!("{prefix}{topic}"))
}

/// A mounted topic or filter must still fit MQTT's 16-bit string length: a device's
/// 65,535-byte topic plus the prefix would otherwise be written with a wrapped length
/// and the backend would read the tail of the topic as packet id and payload.
fn fits_u16(mounted: String) -> Result<String, MqttError> {
    if mounted.len() > usize::from(u16::MAX) {
        return Err(MqttError::InvalidTopic);
    }
    Ok(mounted)
}

/// Mounts a subscription filter under `prefix`, keeping `$share/<group>/` in front.
/// A filter starting with `$` (e.g. `$SYS/#`) is mounted too: it then only matches the
/// tenant's own `$`-topics, which devices cannot publish to, so it matches nothing.
///
/// A shared subscription's group is mounted as well, as `<tenant>.<group>.<filter hash>`:
/// rumqttd keys a group by its name alone, with one cursor and one round-robin turn for
/// all its members, so two tenants' groups of the same name (or one tenant's group on
/// two filters) would take each other's turns and lose messages. Tenant ids have no `.`,
/// so the mounted name is unambiguous; the device never sees it (PUBLISH carries the
/// topic, SUBACK no filter), and UNSUBSCRIBE mounts the same filter to the same name.
pub fn mount_filter(prefix: &str, filter: &str) -> Result<String, MqttError> {
    if filter.is_empty() || filter.contains('\0') {
        return Err(MqttError::InvalidTopic);
    }
    if let Some(rest) = filter.strip_prefix("$share/") {
        let (group, f) = rest.split_once('/').ok_or(MqttError::InvalidTopic)?;
        if group.is_empty() || f.is_empty() || group.contains(['+', '#']) {
            return Err(MqttError::InvalidTopic);
        }
        let tenant = prefix.strip_suffix('/').unwrap_or(prefix);
        let hash = fnv1a(f.as_bytes());
        return fits_u16(format!("$share/{tenant}.{group}.{hash:016x}/{prefix}{f}"));
    }
    fits_u16(format!("{prefix}{filter}"))
}

/// FNV-1a, 64 bits: a stable, dependency-free name for a shared subscription's filter
/// (not a defence: the tenant part of the name is what separates tenants).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Per-session rewriting state (MQTT 5 topic aliases from the device).
#[derive(Default)]
pub struct Mount {
    /// `<tenant>/`.
    pub prefix: String,
    aliases: std::collections::HashMap<u16, String>,
}

/// Maximum topic aliases the front-end accepts from a device.
pub const MAX_TOPIC_ALIASES: usize = 64;

impl Mount {
    /// State for a tenant.
    pub fn new(tenant: &str) -> Mount {
        Mount {
            prefix: format!("{tenant}/"),
            aliases: Default::default(),
        }
    }

    /// Rewrites one complete packet from the device into `out`.
    pub fn device_to_backend(
        &mut self,
        version: Version,
        pkt: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), MqttError> {
        self.device_to_backend_checked(version, pkt, out, &Acl::allow_all())
            .map(|_| ())
    }

    /// Rewrites one complete packet from the device into `out`, applying the device's
    /// topic rules `acl` to PUBLISH and SUBSCRIBE: a refused PUBLISH writes nothing, a
    /// SUBSCRIBE is written with its allowed filters only (at the QoS granted) and
    /// nothing when none is. The [`Verdict`] tells the caller what to answer.
    pub fn device_to_backend_checked(
        &mut self,
        version: Version,
        pkt: &[u8],
        out: &mut BytesMut,
        acl: &Acl,
    ) -> Result<Verdict, MqttError> {
        let t = pkt[0] >> 4;
        match t {
            kind::PUBLISH => self.publish_up(version, pkt, out, acl),
            kind::SUBSCRIBE | kind::UNSUBSCRIBE => self.filters_up(version, pkt, out, acl),
            // A second CONNECT, server-to-client packets (CONNACK, SUBACK, UNSUBACK,
            // PINGRESP), AUTH (no enhanced authentication here) and the reserved type 0
            // never reach the broker.
            kind::CONNECT | kind::CONNACK | 9 | 11 | kind::PINGRESP | kind::AUTH | 0 => {
                Err(MqttError::Unexpected(t))
            }
            _ => {
                out.extend_from_slice(pkt);
                Ok(Verdict::Forwarded)
            }
        }
    }

    /// Rewrites one complete packet from the backend into `out`. PUBLISH topics outside
    /// the prefix (impossible unless the backend is shared carelessly) are dropped.
    pub fn backend_to_device(
        &self,
        version: Version,
        pkt: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), MqttError> {
        if pkt[0] >> 4 != kind::PUBLISH {
            out.extend_from_slice(pkt);
            return Ok(());
        }
        let (h, rem) = header(pkt);
        let body = &pkt[h..h + rem];
        let (topic, n) = read_str(body).ok_or(MqttError::Malformed("PUBLISH topic"))?;
        let Some(stripped) = topic.strip_prefix(self.prefix.as_bytes()) else {
            return Ok(());
        };
        let _ = version;
        write_packet(
            out,
            pkt[0],
            &[&(stripped.len() as u16).to_be_bytes(), stripped, &body[n..]],
        );
        Ok(())
    }

    fn publish_up(
        &mut self,
        version: Version,
        pkt: &[u8],
        out: &mut BytesMut,
        acl: &Acl,
    ) -> Result<Verdict, MqttError> {
        let (h, rem) = header(pkt);
        let body = &pkt[h..h + rem];
        let qos = (pkt[0] >> 1) & 0x03;
        if qos == 3 {
            return Err(MqttError::Malformed("PUBLISH QoS 3"));
        }
        let (topic, n) = read_str(body).ok_or(MqttError::Malformed("PUBLISH topic"))?;
        let topic =
            std::str::from_utf8(topic).map_err(|_| MqttError::Malformed("PUBLISH topic UTF-8"))?;
        let pkid_len = if qos > 0 { 2 } else { 0 };
        let after_topic = body.get(n..).ok_or(MqttError::Malformed("PUBLISH"))?;
        if after_topic.len() < pkid_len {
            return Err(MqttError::Malformed("PUBLISH packet id"));
        }
        let (pkid, rest) = after_topic.split_at(pkid_len);
        let retain = pkt[0] & 0x01 != 0;
        let refused = |topic: &str| -> Option<Verdict> {
            if acl.is_allow_all() || topic.starts_with('$') {
                // `$` topics get their own refusal from `mount_topic`.
                return None;
            }
            let reason = acl.check_publish(topic, qos, retain).result.err()?;
            Some(Verdict::PublishRefused {
                topic: topic.to_string(),
                qos,
                pkid: [
                    pkid.first().copied().unwrap_or(0),
                    pkid.get(1).copied().unwrap_or(0),
                ],
                reason,
            })
        };
        match version {
            Version::V4 => {
                if let Some(v) = refused(topic) {
                    // Still a valid topic? `mount_topic` refuses wildcards and the like
                    // as before (a protocol error), not as a rule refusal.
                    mount_topic(&self.prefix, topic)?;
                    return Ok(v);
                }
                let mounted = mount_topic(&self.prefix, topic)?;
                write_packet(
                    out,
                    pkt[0],
                    &[
                        &(mounted.len() as u16).to_be_bytes(),
                        mounted.as_bytes(),
                        pkid,
                        rest,
                    ],
                );
            }
            Version::V5 => {
                let (plen, pn) =
                    read_varint(rest).ok_or(MqttError::Malformed("PUBLISH properties"))?;
                let props = rest
                    .get(pn..pn + plen)
                    .ok_or(MqttError::Malformed("PUBLISH properties"))?;
                let payload = &rest[pn + plen..];
                let (alias, kept) = strip_topic_alias(props)?;
                let full = match (topic.is_empty(), alias) {
                    (false, Some(a)) => {
                        if a == 0
                            || (self.aliases.len() >= MAX_TOPIC_ALIASES
                                && !self.aliases.contains_key(&a))
                        {
                            return Err(MqttError::UnknownAlias(a));
                        }
                        self.aliases.insert(a, topic.to_string());
                        topic.to_string()
                    }
                    (true, Some(a)) => self
                        .aliases
                        .get(&a)
                        .cloned()
                        .ok_or(MqttError::UnknownAlias(a))?,
                    (false, None) => topic.to_string(),
                    (true, None) => return Err(MqttError::InvalidTopic),
                };
                if let Some(v) = refused(&full) {
                    mount_topic(&self.prefix, &full)?;
                    return Ok(v);
                }
                let mounted = mount_topic(&self.prefix, &full)?;
                let mut plen_buf = BytesMut::with_capacity(4);
                put_varint(&mut plen_buf, kept.len());
                write_packet(
                    out,
                    pkt[0],
                    &[
                        &(mounted.len() as u16).to_be_bytes(),
                        mounted.as_bytes(),
                        pkid,
                        &plen_buf,
                        &kept,
                        payload,
                    ],
                );
            }
        }
        Ok(Verdict::Forwarded)
    }

    fn filters_up(
        &self,
        version: Version,
        pkt: &[u8],
        out: &mut BytesMut,
        acl: &Acl,
    ) -> Result<Verdict, MqttError> {
        let subscribe = pkt[0] >> 4 == kind::SUBSCRIBE;
        let (h, rem) = header(pkt);
        let body = &pkt[h..h + rem];
        if body.len() < 2 {
            return Err(MqttError::Malformed("packet id"));
        }
        let mut fixed_len = 2;
        if version == Version::V5 {
            let (plen, pn) = read_varint(&body[2..]).ok_or(MqttError::Malformed("properties"))?;
            fixed_len += pn + plen;
        }
        let fixed = body
            .get(..fixed_len)
            .ok_or(MqttError::Malformed("properties"))?;
        let mut rest = &body[fixed_len..];
        let mut payload = BytesMut::with_capacity(rest.len() + 16 * self.prefix.len());
        if rest.is_empty() {
            return Err(MqttError::Malformed("no topic filters"));
        }
        let mut filters = Vec::new();
        while !rest.is_empty() {
            let (f, n) = read_str(rest).ok_or(MqttError::Malformed("topic filter"))?;
            let f =
                std::str::from_utf8(f).map_err(|_| MqttError::Malformed("topic filter UTF-8"))?;
            let mounted = mount_filter(&self.prefix, f)?;
            rest = &rest[n..];
            if subscribe {
                let (&opts, r) = rest
                    .split_first()
                    .ok_or(MqttError::Malformed("subscription options"))?;
                rest = r;
                let decision = acl.check_subscribe(f, opts & 0x03).result;
                if let Ok(granted) = decision {
                    payload.put_u16(mounted.len() as u16);
                    payload.extend_from_slice(mounted.as_bytes());
                    payload.put_u8((opts & !0x03) | granted);
                }
                filters.push((f.to_string(), decision));
            } else {
                payload.put_u16(mounted.len() as u16);
                payload.extend_from_slice(mounted.as_bytes());
                filters.push((f.to_string(), Ok(0)));
            }
        }
        if filters.iter().any(|(_, d)| d.is_ok()) {
            write_packet(out, pkt[0], &[fixed, &payload]);
        }
        Ok(Verdict::Filters {
            subscribe,
            pkid: [fixed[0], fixed[1]],
            filters,
        })
    }
}

/// What the topic rules made of a packet from the device
/// ([`Mount::device_to_backend_checked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written for the backend.
    Forwarded,
    /// A PUBLISH the rules refuse: nothing was written.
    PublishRefused {
        /// Its topic (an alias resolved), for the log.
        topic: String,
        /// Its QoS.
        qos: u8,
        /// Its packet id (zero for QoS 0).
        pkid: [u8; 2],
        /// Why.
        reason: Refusal,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE: each filter as the device sent it with the rules'
    /// decision (the granted QoS; UNSUBSCRIBE: always allowed). Written with the allowed
    /// filters; nothing written when none is.
    Filters {
        /// SUBSCRIBE (else UNSUBSCRIBE).
        subscribe: bool,
        /// Its packet id.
        pkid: [u8; 2],
        /// The filters in order.
        filters: Vec<(String, Result<u8, Refusal>)>,
    },
}

/// The acknowledgement of a PUBLISH the topic rules refuse: MQTT 5 PUBACK (QoS 1) or
/// PUBREC (QoS 2) with 0x87 "Not authorized", which ends that message's flow; MQTT
/// 3.1.1 has no refusal code, so it gets the plain PUBACK / PUBREC (as Mosquitto
/// answers a publish its ACL refuses) and the message is dropped. QoS 0: nothing.
pub fn refused_publish_ack(version: Version, qos: u8, pkid: [u8; 2], out: &mut BytesMut) {
    let kind = match qos {
        1 => 0x40,
        2 => 0x50,
        _ => return,
    };
    match version {
        Version::V4 => out.extend_from_slice(&[kind, 0x02, pkid[0], pkid[1]]),
        Version::V5 => {
            out.extend_from_slice(&[kind, 0x03, pkid[0], pkid[1], codes::V5_NOT_AUTHORIZED])
        }
    }
}

/// A SUBACK the front-end answers itself (every filter refused): `codes` in order.
pub fn suback(version: Version, pkid: [u8; 2], codes: &[u8], out: &mut BytesMut) {
    let props: &[u8] = if version == Version::V5 { &[0] } else { &[] };
    write_packet(out, 0x90, &[&pkid, props, codes]);
}

/// Rewrites the backend's SUBACK for a SUBSCRIBE some of whose filters the front-end
/// refused: `plan` has one entry per filter the device sent, `Some(code)` for a refused
/// one and `None` for one the backend answered (its codes are taken in order).
pub fn merge_suback(
    version: Version,
    pkt: &[u8],
    plan: &[Option<u8>],
    out: &mut BytesMut,
) -> Result<(), MqttError> {
    let bad = || MqttError::Malformed("SUBACK");
    let (h, rem) = header(pkt);
    let body = pkt.get(h..h + rem).ok_or_else(bad)?;
    let mut fixed = 2;
    if version == Version::V5 {
        let (plen, pn) = read_varint(body.get(2..).ok_or_else(bad)?).ok_or_else(bad)?;
        fixed += pn + plen;
    }
    let head = body.get(..fixed).ok_or_else(bad)?;
    let mut backend = body.get(fixed..).ok_or_else(bad)?.iter();
    let mut merged = Vec::with_capacity(plan.len());
    for p in plan {
        merged.push(match p {
            Some(code) => *code,
            None => *backend.next().ok_or_else(bad)?,
        });
    }
    write_packet(out, pkt[0], &[head, &merged]);
    Ok(())
}

/// Splits a topic alias (0x23) out of MQTT 5 PUBLISH properties.
fn strip_topic_alias(props: &[u8]) -> Result<(Option<u16>, Vec<u8>), MqttError> {
    let mut alias = None;
    let mut kept = Vec::with_capacity(props.len());
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        let len = property_len(id, &props[i + 1..]).ok_or(MqttError::Malformed("property"))?;
        let end = i + 1 + len;
        if end > props.len() {
            return Err(MqttError::Malformed("property"));
        }
        if id == 0x23 {
            alias = Some(u16::from_be_bytes([props[i + 1], props[i + 2]]));
        } else {
            kept.extend_from_slice(&props[i..end]);
        }
        i = end;
    }
    Ok((alias, kept))
}

/// Length of a property's value (after its identifier byte).
fn property_len(id: u8, v: &[u8]) -> Option<usize> {
    let str_len = |v: &[u8]| -> Option<usize> {
        Some(2 + u16::from_be_bytes([*v.first()?, *v.get(1)?]) as usize)
    };
    match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Some(1),
        0x13 | 0x21 | 0x22 | 0x23 => Some(2),
        0x02 | 0x11 | 0x18 | 0x27 => Some(4),
        0x0B => read_varint(v).map(|(_, n)| n),
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => str_len(v),
        0x26 => {
            let a = str_len(v)?;
            let b = str_len(v.get(a..)?)?;
            Some(a + b)
        }
        _ => None,
    }
}

/// Writes one packet: `first` byte, remaining length, then `parts` in order.
pub(crate) fn write_packet(out: &mut BytesMut, first: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(len + 5);
    out.put_u8(first);
    put_varint(out, len);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Largest buffer a session keeps between uses. One that grew past it (a large message,
/// up to `max_packet_size`, 1 MiB by default) is freed once it is empty, so that a
/// device's one large message does not cost memory for the rest of its session. The
/// batches of a busy session (a subscriber taking a fleet's messages) stay below it and
/// keep their buffers: freeing those after every batch cost throughput.
pub(crate) const KEEP_BUF: usize = 64 * 1024;

/// Once `buf` is empty: if it held more than [`KEEP_BUF`] bytes since it was last empty
/// (`peak`, which the caller raises as the buffer fills), a new buffer of `fresh` bytes
/// takes its place. A `BytesMut` whose contents were split off or advanced past keeps
/// their whole allocation alive (and takes it back on its next reserve), whatever its
/// `capacity()` says, so only the peak tells.
pub(crate) fn relax(buf: &mut BytesMut, peak: &mut usize, fresh: usize) {
    if buf.is_empty() {
        if *peak > KEEP_BUF {
            *buf = BytesMut::with_capacity(fresh);
        }
        *peak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_v4(topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let pkid: &[u8] = if qos > 0 { &[0, 7] } else { &[] };
        write_packet(
            &mut out,
            0x30 | (qos << 1),
            &[
                &(topic.len() as u16).to_be_bytes(),
                topic.as_bytes(),
                pkid,
                payload,
            ],
        );
        out.to_vec()
    }

    #[test]
    fn publish_round_trip_v4() {
        let mut m = Mount::new("acme");
        let p = publish_v4("a/b", 1, b"hello");
        let mut up = BytesMut::new();
        m.device_to_backend(Version::V4, &p, &mut up).unwrap();
        assert_eq!(up.to_vec(), publish_v4("acme/a/b", 1, b"hello"));
        let mut down = BytesMut::new();
        m.backend_to_device(Version::V4, &up, &mut down).unwrap();
        assert_eq!(down.to_vec(), p);
    }

    #[test]
    fn refused_topics() {
        let mut m = Mount::new("acme");
        for t in ["", "a/+", "a/#", "a\0b"] {
            let mut out = BytesMut::new();
            assert_eq!(
                m.device_to_backend(Version::V4, &publish_v4(t, 0, b"x"), &mut out),
                Err(MqttError::InvalidTopic),
                "{t:?}"
            );
        }
        let mut out = BytesMut::new();
        assert_eq!(
            m.device_to_backend(Version::V4, &publish_v4("$SYS/x", 1, b"x"), &mut out),
            Err(MqttError::ReservedTopic)
        );
        assert_eq!(
            reserved_topic_ack(&publish_v4("$SYS/x", 1, b"x")),
            Some([0x40, 3, 0, 7, 0x90])
        );
        assert_eq!(
            reserved_topic_ack(&publish_v4("$SYS/x", 2, b"x")),
            Some([0x50, 3, 0, 7, 0x90])
        );
        assert_eq!(reserved_topic_ack(&publish_v4("$SYS/x", 0, b"x")), None);
        // Another tenant's prefix is just a topic inside ours.
        assert_eq!(mount_topic("acme/", "other/x").unwrap(), "acme/other/x");
        assert_eq!(mount_filter("acme/", "#").unwrap(), "acme/#");
        assert_eq!(mount_filter("acme/", "$SYS/#").unwrap(), "acme/$SYS/#");
        assert_eq!(
            mount_filter("acme/", "$share/g/a/+").unwrap(),
            format!("$share/acme.g.{:016x}/acme/a/+", fnv1a(b"a/+"))
        );
        // Groups of the same name in two tenants, or on two filters, are two groups.
        assert_ne!(
            mount_filter("acme/", "$share/g/a")
                .unwrap()
                .split('/')
                .nth(1),
            mount_filter("other/", "$share/g/a")
                .unwrap()
                .split('/')
                .nth(1)
        );
        assert_ne!(
            mount_filter("acme/", "$share/g/a")
                .unwrap()
                .split('/')
                .nth(1),
            mount_filter("acme/", "$share/g/b")
                .unwrap()
                .split('/')
                .nth(1)
        );
        assert_eq!(
            mount_filter("acme/", "$share/g"),
            Err(MqttError::InvalidTopic)
        );
    }

    #[test]
    fn server_packets_from_a_device_are_refused() {
        let mut m = Mount::new("acme");
        for first in [0x10u8, 0x20, 0x90, 0xB0, 0xD0, 0xF0, 0x00] {
            let mut out = BytesMut::new();
            assert_eq!(
                m.device_to_backend(Version::V5, &[first, 0], &mut out),
                Err(MqttError::Unexpected(first >> 4))
            );
            assert!(out.is_empty());
        }
        let mut out = BytesMut::new();
        m.device_to_backend(Version::V4, &[0xC0, 0], &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0xC0, 0], "PINGREQ passes");
    }

    #[test]
    fn foreign_publish_from_backend_is_dropped() {
        let m = Mount::new("acme");
        let mut out = BytesMut::new();
        m.backend_to_device(Version::V4, &publish_v4("other/x", 0, b"x"), &mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn subscribe_v5_with_properties() {
        let m = Mount::new("t1");
        // pkid 1, properties: subscription identifier 0x0B varint 5, filter "x/#" opts 1
        let body: Vec<u8> = [&[0u8, 1, 2, 0x0B, 5][..], &[0, 3], b"x/#", &[1]].concat();
        let mut pkt = BytesMut::new();
        write_packet(&mut pkt, 0x82, &[&body]);
        let mut out = BytesMut::new();
        m.filters_up(Version::V5, &pkt, &mut out, &Acl::allow_all())
            .unwrap();
        let expect: Vec<u8> = [&[0u8, 1, 2, 0x0B, 5][..], &[0, 6], b"t1/x/#", &[1]].concat();
        let mut e = BytesMut::new();
        write_packet(&mut e, 0x82, &[&expect]);
        assert_eq!(out, e);
    }

    fn own_topics_only() -> Acl {
        let set: admin_api::acl::RuleSet = serde_json::from_str(
            r#"{"rules":[{"access":"allow","action":"both","topic":"d/${cn}/#","maxQos":1}],"defaultAccess":"deny"}"#,
        )
        .unwrap();
        set.compile("t1", "me")
    }

    #[test]
    fn refused_filters_are_left_out_and_granted_qos_is_capped() {
        let m = Mount::new("t1");
        // v4 SUBSCRIBE pkid 7: "#" QoS 0, "d/me/x" QoS 2.
        let body: Vec<u8> = [&[0u8, 7][..], &[0, 1], b"#", &[0], &[0, 6], b"d/me/x", &[2]].concat();
        let mut pkt = BytesMut::new();
        write_packet(&mut pkt, 0x82, &[&body]);
        let mut out = BytesMut::new();
        let v = m
            .filters_up(Version::V4, &pkt, &mut out, &own_topics_only())
            .unwrap();
        let Verdict::Filters { pkid, filters, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(pkid, [0, 7]);
        assert_eq!(
            filters,
            vec![("#".into(), Err(Refusal::Denied)), ("d/me/x".into(), Ok(1))]
        );
        let expect: Vec<u8> = [&[0u8, 7][..], &[0, 9], b"t1/d/me/x", &[1]].concat();
        let mut e = BytesMut::new();
        write_packet(&mut e, 0x82, &[&expect]);
        assert_eq!(out, e);

        // The backend's SUBACK (one code) merged with the refusal, in the device's order.
        let mut merged = BytesMut::new();
        merge_suback(
            Version::V4,
            &[0x90, 3, 0, 7, 1],
            &[Some(0x80), None],
            &mut merged,
        )
        .unwrap();
        assert_eq!(&merged[..], &[0x90, 4, 0, 7, 0x80, 1]);
        let mut merged = BytesMut::new();
        merge_suback(
            Version::V5,
            &[0x90, 4, 0, 7, 0, 1],
            &[None, Some(0x87)],
            &mut merged,
        )
        .unwrap();
        assert_eq!(&merged[..], &[0x90, 5, 0, 7, 0, 1, 0x87]);
        // A SUBACK with fewer codes than the plan expects is refused, not invented.
        assert!(merge_suback(Version::V4, &[0x90, 2, 0, 7], &[None], &mut merged).is_err());
        let mut own = BytesMut::new();
        suback(Version::V5, [0, 9], &[0x87, 0x87], &mut own);
        assert_eq!(&own[..], &[0x90, 5, 0, 9, 0, 0x87, 0x87]);
    }

    #[test]
    fn a_refused_publish_writes_nothing_and_is_acknowledged_by_version() {
        let mut m = Mount::new("t1");
        let mut out = BytesMut::new();
        let v = m
            .device_to_backend_checked(
                Version::V4,
                &publish_v4("d/other/x", 1, b"x"),
                &mut out,
                &own_topics_only(),
            )
            .unwrap();
        assert!(out.is_empty());
        let Verdict::PublishRefused {
            qos, pkid, reason, ..
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((qos, reason), (1, Refusal::Denied));
        let mut ack = BytesMut::new();
        refused_publish_ack(Version::V5, 2, pkid, &mut ack);
        assert_eq!(&ack[..], &[0x50, 3, pkid[0], pkid[1], 0x87]);
        ack.clear();
        refused_publish_ack(Version::V4, 1, pkid, &mut ack);
        assert_eq!(&ack[..], &[0x40, 2, pkid[0], pkid[1]]);
        // Above the rule's maxQos.
        let v = m
            .device_to_backend_checked(
                Version::V4,
                &publish_v4("d/me/x", 2, b"x"),
                &mut out,
                &own_topics_only(),
            )
            .unwrap();
        assert!(matches!(
            v,
            Verdict::PublishRefused {
                reason: Refusal::Qos,
                ..
            }
        ));
        // Allowed: forwarded as before.
        let v = m
            .device_to_backend_checked(
                Version::V4,
                &publish_v4("d/me/x", 1, b"x"),
                &mut out,
                &own_topics_only(),
            )
            .unwrap();
        assert_eq!(v, Verdict::Forwarded);
        assert_eq!(out.to_vec(), publish_v4("t1/d/me/x", 1, b"x"));
    }

    #[test]
    fn topic_alias_resolved_v5() {
        let mut m = Mount::new("t");
        let mk = |topic: &str, alias: Option<u16>| {
            let mut props = Vec::new();
            if let Some(a) = alias {
                props.push(0x23);
                props.extend_from_slice(&a.to_be_bytes());
            }
            let mut out = BytesMut::new();
            let mut pl = BytesMut::new();
            put_varint(&mut pl, props.len());
            write_packet(
                &mut out,
                0x30,
                &[
                    &(topic.len() as u16).to_be_bytes(),
                    topic.as_bytes(),
                    &pl,
                    &props,
                    b"p",
                ],
            );
            out
        };
        let mut out = BytesMut::new();
        m.device_to_backend(Version::V5, &mk("a/b", Some(3)), &mut out)
            .unwrap();
        let mut out2 = BytesMut::new();
        m.device_to_backend(Version::V5, &mk("", Some(3)), &mut out2)
            .unwrap();
        assert_eq!(out, out2);
        assert_eq!(out, mk("t/a/b", None));
        let mut out3 = BytesMut::new();
        assert_eq!(
            m.device_to_backend(Version::V5, &mk("", Some(4)), &mut out3),
            Err(MqttError::UnknownAlias(4))
        );
    }

    #[test]
    fn connack_v5_announces_front_end_limits() {
        // Success, session present, properties: receive max 20, assigned id "x.y",
        // user property ("a","b").
        let props: Vec<u8> = [
            &[0x21u8, 0, 20][..],
            &[0x12, 0, 3],
            b"x.y",
            &[0x26, 0, 1, b'a', 0, 1, b'b'],
        ]
        .concat();
        let mut pkt = BytesMut::new();
        write_packet(&mut pkt, 0x20, &[&[1, 0, props.len() as u8], &props]);
        let out = connack_v5_for_device(&pkt, 100, 64, 2048, None).unwrap();
        let expect: Vec<u8> = [
            &[0x26u8, 0, 1, b'a', 0, 1, b'b'][..],
            &[0x21, 0, 20],
            &[0x22, 0, 64],
            &[0x27, 0, 0, 8, 0],
        ]
        .concat();
        let mut e = BytesMut::new();
        write_packet(&mut e, 0x20, &[&[1, 0, expect.len() as u8], &expect]);
        assert_eq!(
            out, e,
            "receive max kept at the lower 20, assigned id dropped"
        );
        assert_eq!(connack_code(&out), Some(0));
        // No properties at all.
        let out = connack_v5_for_device(&[0x20, 0x02, 0x00, 0x00], 100, 64, 2048, None).unwrap();
        assert_eq!(out[4], 11, "three properties added (3 + 3 + 5 bytes)");
        // The CN as Assigned Client Identifier, in place of the backend's.
        let out = connack_v5_for_device(&pkt, 100, 64, 2048, Some("dev-7")).unwrap();
        assert!(
            out.ends_with(&[0x12, 0, 5, b'd', b'e', b'v', b'-', b'7']),
            "{out:?}"
        );
        assert!(!out.windows(3).any(|w| w == b"x.y"), "{out:?}");
        assert!(
            connack_v5_for_device(&[0x20, 0x05, 0x00, 0x00, 0x03, 0x21, 0x00], 1, 1, 1, None)
                .is_err()
        );
    }

    #[test]
    fn framing_limits() {
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 2, 0], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 2, 0, 0], 100), Ok(Some(4)));
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f], 100),
            Err(MqttError::TooLarge(268435460))
        );
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 1], usize::MAX).is_err());
    }

    #[test]
    fn mounted_names_longer_than_65535_bytes_are_refused() {
        // Found by review while extending the mqtt_rewrite fuzz target: the prefix
        // pushed a maximal topic past the 16-bit length, which was then truncated.
        let long = "a".repeat(usize::from(u16::MAX) - 2);
        assert_eq!(mount_topic("acme/", &long), Err(MqttError::InvalidTopic));
        assert_eq!(mount_filter("acme/", &long), Err(MqttError::InvalidTopic));
        assert_eq!(
            mount_filter("acme/", &format!("$share/g/{long}")),
            Err(MqttError::InvalidTopic)
        );
        let fits = "a".repeat(usize::from(u16::MAX) - 5);
        assert_eq!(mount_topic("acme/", &fits).unwrap().len(), 65535);
        let mut m = Mount::new("acme");
        let mut out = BytesMut::new();
        assert_eq!(
            m.device_to_backend(Version::V4, &publish_v4(&long, 0, b"x"), &mut out),
            Err(MqttError::InvalidTopic)
        );
        assert!(out.is_empty());
    }
}
