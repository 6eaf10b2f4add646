//! A lean MQTT client over tokio-rustls: just what a simulated device needs.
//!
//! Packets are encoded and decoded with rumqttc's public `mqttbytes` (3.1.1 and 5); the
//! socket is ours, so it can be bound to a chosen source address, have TCP_NODELAY set, and
//! time the CONNACK exactly. Sessions normally run over mutual TLS; with `--plain` they run
//! over plain TCP (loopback only), to reach a broker's listener directly, for example the
//! product's embedded rumqttd (with the username and password of `--credentials-file`),
//! to measure what the front-end adds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::v5::mqttbytes as m5;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Login, MqttVersion};

/// Largest packet accepted from the broker.
const MAX_INCOMING: usize = 1024 * 1024;

/// Where to connect and which name the broker's certificate must carry.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) server_name: ServerName<'static>,
}

/// The byte stream of a session: mutual TLS, or plain TCP (`--plain`, loopback only).
pub(crate) enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A packet received from the broker, reduced to what the load generator acts on.
#[derive(Debug)]
pub(crate) enum Incoming {
    ConnAck {
        accepted: bool,
        code: String,
        receive_maximum: Option<u16>,
    },
    Publish {
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    PubAck {
        pkid: u16,
        ok: bool,
    },
    PubRec {
        pkid: u16,
        ok: bool,
    },
    PubRel {
        pkid: u16,
    },
    PubComp {
        pkid: u16,
    },
    SubAck {
        pkid: u16,
        granted: Vec<Option<u8>>,
    },
    PingReq,
    PingResp,
    Disconnect {
        reason: String,
    },
    Other(&'static str),
}

impl Incoming {
    /// The packet type, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Incoming::ConnAck { .. } => "CONNACK",
            Incoming::Publish { .. } => "PUBLISH",
            Incoming::PubAck { .. } => "PUBACK",
            Incoming::PubRec { .. } => "PUBREC",
            Incoming::PubRel { .. } => "PUBREL",
            Incoming::PubComp { .. } => "PUBCOMP",
            Incoming::SubAck { .. } => "SUBACK",
            Incoming::PingReq => "PINGREQ",
            Incoming::PingResp => "PINGRESP",
            Incoming::Disconnect { .. } => "DISCONNECT",
            Incoming::Other(name) => name,
        }
    }
}

/// Encoder/decoder for one protocol version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    version: MqttVersion,
}

fn q4(qos: u8) -> m4::QoS {
    match qos {
        0 => m4::QoS::AtMostOnce,
        1 => m4::QoS::AtLeastOnce,
        _ => m4::QoS::ExactlyOnce,
    }
}

fn q5(qos: u8) -> m5::QoS {
    match qos {
        0 => m5::QoS::AtMostOnce,
        1 => m5::QoS::AtLeastOnce,
        _ => m5::QoS::ExactlyOnce,
    }
}

/// A packet that could not be encoded or decoded.
#[derive(Debug)]
pub(crate) struct ProtocolError(pub(crate) String);

impl Codec {
    pub(crate) fn new(version: MqttVersion) -> Self {
        Codec { version }
    }

    /// Decodes one packet from the front of `buf`; `Ok(None)` when more bytes are needed.
    pub(crate) fn decode(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        match self.version {
            MqttVersion::V311 => match m4::v4::Packet::read(buf, MAX_INCOMING) {
                Ok(p) => Ok(Some(from_v4(p))),
                Err(m4::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(ProtocolError(format!("{e}"))),
            },
            MqttVersion::V5 => {
                // rumqttc refuses a 5.0 DISCONNECT without a reason code (remaining length
                // 0), which means "normal disconnection".
                if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
                    let _ = buf.split_to(2);
                    return Ok(Some(Incoming::Disconnect {
                        reason: "NormalDisconnection".into(),
                    }));
                }
                match m5::v5::Packet::read(buf, Some(MAX_INCOMING as u32)) {
                    Ok(p) => Ok(Some(from_v5(p))),
                    Err(m5::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(ProtocolError(format!("{e}"))),
                }
            }
        }
    }

    /// A clean-session CONNECT, with `login`'s username and password when given.
    pub(crate) fn connect(
        &self,
        client_id: &str,
        keep_alive: u16,
        login: Option<&Login>,
        out: &mut BytesMut,
    ) {
        let r = match self.version {
            MqttVersion::V311 => {
                let mut c = m4::v4::Connect::new(client_id);
                c.keep_alive = keep_alive;
                c.clean_session = true;
                if let Some(l) = login {
                    c.set_login(&l.username, &l.password);
                }
                c.write(out).is_ok()
            }
            MqttVersion::V5 => {
                let c = m5::v5::Connect {
                    keep_alive,
                    client_id: client_id.to_string(),
                    clean_start: true,
                    properties: None,
                };
                let login = login.map(|l| m5::v5::Login::new(&l.username, &l.password));
                c.write(&None, &login, out).is_ok()
            }
        };
        debug_assert!(r, "CONNECT encodes");
    }

    pub(crate) fn publish(
        &self,
        topic: &str,
        qos: u8,
        pkid: u16,
        payload: Bytes,
        out: &mut BytesMut,
    ) {
        let r = match self.version {
            MqttVersion::V311 => {
                let mut p = m4::v4::Publish::from_bytes(topic, q4(qos), payload);
                p.pkid = pkid;
                p.write(out).is_ok()
            }
            MqttVersion::V5 => {
                let mut p = m5::v5::Publish::new(topic, q5(qos), payload, None);
                p.pkid = pkid;
                p.write(out).is_ok()
            }
        };
        debug_assert!(r, "PUBLISH encodes");
    }

    pub(crate) fn subscribe(&self, pkid: u16, filter: &str, qos: u8, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => {
                let mut s = m4::v4::Subscribe::new(filter, q4(qos));
                s.pkid = pkid;
                s.write(out).is_ok()
            }
            MqttVersion::V5 => {
                let mut s = m5::v5::Subscribe::new(m5::v5::Filter::new(filter, q5(qos)), None);
                s.pkid = pkid;
                s.write(out).is_ok()
            }
        };
        debug_assert!(r, "SUBSCRIBE encodes");
    }

    pub(crate) fn puback(&self, pkid: u16, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PubAck::new(pkid).write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PubAck::new(pkid, None).write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn pubrec(&self, pkid: u16, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PubRec::new(pkid).write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PubRec::new(pkid, None).write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn pubrel(&self, pkid: u16, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PubRel::new(pkid).write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PubRel::new(pkid, None).write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn pubcomp(&self, pkid: u16, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PubComp::new(pkid).write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PubComp::new(pkid, None).write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn pingreq(&self, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PingReq.write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PingReq::write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn pingresp(&self, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::PingResp.write(out).is_ok(),
            MqttVersion::V5 => m5::v5::PingResp::write(out).is_ok(),
        };
        debug_assert!(r);
    }

    pub(crate) fn disconnect(&self, out: &mut BytesMut) {
        let r = match self.version {
            MqttVersion::V311 => m4::v4::Disconnect.write(out).is_ok(),
            MqttVersion::V5 => {
                m5::v5::Disconnect::new(m5::v5::DisconnectReasonCode::NormalDisconnection)
                    .write(out)
                    .is_ok()
            }
        };
        debug_assert!(r);
    }
}

fn from_v4(p: m4::v4::Packet) -> Incoming {
    use m4::v4::Packet as P;
    match p {
        P::ConnAck(c) => Incoming::ConnAck {
            accepted: c.code == m4::v4::ConnectReturnCode::Success,
            code: format!("{:?}", c.code),
            receive_maximum: None,
        },
        P::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            ok: true,
        },
        P::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            ok: true,
        },
        P::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        P::PubComp(a) => Incoming::PubComp { pkid: a.pkid },
        P::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .map(|c| match c {
                    m4::v4::SubscribeReasonCode::Success(q) => Some(*q as u8),
                    m4::v4::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        },
        P::PingReq => Incoming::PingReq,
        P::PingResp => Incoming::PingResp,
        P::Disconnect => Incoming::Disconnect {
            reason: "Disconnect".into(),
        },
        P::Connect(_) => Incoming::Other("CONNECT"),
        P::Subscribe(_) => Incoming::Other("SUBSCRIBE"),
        P::Unsubscribe(_) => Incoming::Other("UNSUBSCRIBE"),
        P::UnsubAck(_) => Incoming::Other("UNSUBACK"),
    }
}

fn from_v5(p: m5::v5::Packet) -> Incoming {
    use m5::v5::Packet as P;
    match p {
        P::ConnAck(c) => Incoming::ConnAck {
            accepted: c.code == m5::v5::ConnectReturnCode::Success,
            code: format!("{:?}", c.code),
            receive_maximum: c.properties.and_then(|p| p.receive_max),
        },
        P::Publish(p) => Incoming::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
        },
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            ok: matches!(
                a.reason,
                m5::v5::PubAckReason::Success | m5::v5::PubAckReason::NoMatchingSubscribers
            ),
        },
        P::PubRec(a) => Incoming::PubRec {
            pkid: a.pkid,
            ok: matches!(
                a.reason,
                m5::v5::PubRecReason::Success | m5::v5::PubRecReason::NoMatchingSubscribers
            ),
        },
        P::PubRel(a) => Incoming::PubRel { pkid: a.pkid },
        P::PubComp(a) => Incoming::PubComp { pkid: a.pkid },
        P::SubAck(s) => Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .map(|c| match c {
                    m5::v5::SubscribeReasonCode::Success(q) => Some(*q as u8),
                    _ => None,
                })
                .collect(),
        },
        P::PingReq(_) => Incoming::PingReq,
        P::PingResp(_) => Incoming::PingResp,
        P::Disconnect(d) => Incoming::Disconnect {
            reason: format!("{:?}", d.reason_code),
        },
        P::Auth(_) => Incoming::Other("AUTH"),
        P::Connect(..) => Incoming::Other("CONNECT"),
        P::Subscribe(_) => Incoming::Other("SUBSCRIBE"),
        P::Unsubscribe(_) => Incoming::Other("UNSUBSCRIBE"),
        P::UnsubAck(_) => Incoming::Other("UNSUBACK"),
    }
}

/// An established MQTT session.
pub(crate) struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    /// Packets waiting to be written by [`Conn::flush`].
    pub(crate) out: BytesMut,
    pub(crate) codec: Codec,
}

impl Conn {
    /// Writes everything in `out`.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Reads more bytes from the broker; `Ok(0)` is end of stream. Cancel safe.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        // Small steps: most packets are tiny, and 100 000 idle sessions add up.
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next complete packet already read, if any.
    pub(crate) fn next_packet(&mut self) -> Result<Option<Incoming>, ProtocolError> {
        self.codec.decode(&mut self.rbuf)
    }

    /// Sends DISCONNECT and closes TLS, bounded in time; errors are irrelevant at this point.
    pub(crate) async fn close(mut self, send_disconnect: bool) {
        if send_disconnect {
            self.codec.disconnect(&mut self.out);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// The timings of a successful connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// TCP connect start to CONNACK.
    pub(crate) total: Duration,
    /// TLS handshake alone (`None` over plain TCP).
    pub(crate) tls: Option<Duration>,
}

/// Why a connection attempt failed, as a short stable kind for the error table.
#[derive(Debug, Clone)]
pub(crate) struct ConnectError {
    pub(crate) kind: String,
    /// The broker closed the connection before the TLS handshake: its admission control
    /// (the product refuses over-limit connections right after accept, before any TLS
    /// work).
    pub(crate) admission: bool,
    /// Worth another attempt later (admission refusal, timeout), as a real device would.
    pub(crate) retryable: bool,
}

/// The error kind of a connection the broker closed before the TLS handshake.
pub(crate) const ADMISSION_REFUSED: &str = "tls_handshake: closed before the handshake: refused by the broker's admission control (handshake rate or concurrency limit; the broker's log names it)";

impl ConnectError {
    fn new(phase: &str, what: impl std::fmt::Display) -> Self {
        let kind = format!("{phase}: {what}");
        ConnectError {
            retryable: kind.ends_with("timed out"),
            admission: false,
            kind,
        }
    }

    fn admission() -> Self {
        ConnectError {
            kind: ADMISSION_REFUSED.to_string(),
            admission: true,
            retryable: true,
        }
    }
}

/// A short, stable description of an I/O error (TLS alerts and certificate errors by name).
pub(crate) fn describe_io(e: &io::Error) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::AlertReceived(a) => format!("alert {a:?}"),
                rustls::Error::InvalidCertificate(c) => format!("server certificate {c:?}"),
                other => format!("{other}"),
            };
        }
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "closed by peer".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => {
            "no free source port (add --source-ips)".into()
        }
        io::ErrorKind::TimedOut => "timed out".into(),
        _ if e.raw_os_error() == Some(24) => "too many open files (raise ulimit -n)".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        k => format!("{k:?}"),
    }
}

/// Connects (optionally from `source`), completes TLS (unless `tls` is `None`: plain TCP)
/// and MQTT CONNECT (with `login`, if any)/CONNACK within `timeout`. The clock of `Timings::total` starts just
/// before the TCP connect.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn establish(
    target: &Target,
    tls: Option<Arc<ClientConfig>>,
    source: Option<IpAddr>,
    codec: Codec,
    client_id: &str,
    keep_alive: u16,
    login: Option<&Login>,
    timeout: Duration,
) -> Result<(Conn, Timings, Option<u16>), ConnectError> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ConnectError::new("socket", describe_io(&e)))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::new("bind", describe_io(&e)))?;
    }
    socket
        .set_nodelay(true)
        .map_err(|e| ConnectError::new("socket", describe_io(&e)))?;

    let start = Instant::now();
    let deadline = start + timeout;
    let tcp = tokio::time::timeout_at(deadline, socket.connect(target.addr))
        .await
        .map_err(|_| ConnectError::new("tcp_connect", "timed out"))?
        .map_err(|e| ConnectError::new("tcp_connect", describe_io(&e)))?;

    let (stream, tls_time) = match tls {
        Some(tls) => {
            let tls_start = Instant::now();
            let stream = tokio::time::timeout_at(
                deadline,
                TlsConnector::from(tls).connect(target.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| ConnectError::new("tls_handshake", "timed out"))?
            .map_err(|e| {
                // Closed with no TLS answer at all: what the product's admission control
                // does to a connection over its limits.
                let closed = matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) && e.get_ref().is_none_or(|i| !i.is::<rustls::Error>());
                if closed {
                    ConnectError::admission()
                } else {
                    ConnectError::new("tls_handshake", describe_io(&e))
                }
            })?;
            (Stream::Tls(Box::new(stream)), Some(tls_start.elapsed()))
        }
        None => (Stream::Plain(tcp), None),
    };

    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(2048),
        out: BytesMut::with_capacity(256),
        codec,
    };
    codec.connect(client_id, keep_alive, login, &mut conn.out);
    tokio::time::timeout_at(deadline, conn.flush())
        .await
        .map_err(|_| ConnectError::new("connect", "timed out writing CONNECT"))?
        .map_err(|e| ConnectError::new("connect", describe_io(&e)))?;

    let wait = async {
        loop {
            match conn.next_packet() {
                Ok(Some(Incoming::ConnAck {
                    accepted,
                    code,
                    receive_maximum,
                })) => {
                    return if accepted {
                        Ok(receive_maximum)
                    } else {
                        Err(ConnectError::new("connack", format!("refused {code}")))
                    };
                }
                Ok(Some(other)) => {
                    return Err(ConnectError::new(
                        "connack",
                        format!("unexpected {} before CONNACK", other.name()),
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectError::new("connack", format!("malformed: {}", e.0))),
            }
            match conn.read_more().await {
                Ok(0) => return Err(ConnectError::new("connack", "closed by broker")),
                Ok(_) => {}
                // With TLS 1.3 the server judges the client certificate after the client
                // finished its handshake, so a refusal arrives here as an alert.
                Err(e) => return Err(ConnectError::new("connack", describe_io(&e))),
            }
        }
    };
    let receive_maximum = tokio::time::timeout_at(deadline, wait)
        .await
        .map_err(|_| ConnectError::new("connack", "timed out"))??;
    let total = start.elapsed();
    Ok((
        conn,
        Timings {
            total,
            tls: tls_time,
        },
        receive_maximum,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(version: MqttVersion) {
        let codec = Codec::new(version);
        let mut buf = BytesMut::new();
        codec.publish("a/b", 1, 7, Bytes::from_static(b"hello"), &mut buf);
        codec.puback(7, &mut buf);
        codec.pubrec(8, &mut buf);
        codec.pubrel(8, &mut buf);
        codec.pubcomp(8, &mut buf);
        codec.pingresp(&mut buf);
        let mut partial = buf.split_to(3);
        assert!(codec.decode(&mut partial).expect("no error").is_none());
        partial.unsplit(buf);
        let mut buf = partial;
        match codec.decode(&mut buf).expect("ok") {
            Some(Incoming::Publish { qos, pkid, payload }) => {
                assert_eq!((qos, pkid, &payload[..]), (1, 7, &b"hello"[..]))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::PubAck { pkid: 7, ok: true })
        ));
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::PubRec { pkid: 8, ok: true })
        ));
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::PubRel { pkid: 8 })
        ));
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::PubComp { pkid: 8 })
        ));
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::PingResp)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn codec_roundtrip_v311() {
        roundtrip(MqttVersion::V311);
    }

    #[test]
    fn codec_roundtrip_v5() {
        roundtrip(MqttVersion::V5);
    }

    #[test]
    fn v5_short_disconnect_is_normal() {
        let codec = Codec::new(MqttVersion::V5);
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            codec.decode(&mut buf).expect("ok"),
            Some(Incoming::Disconnect { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let codec = Codec::new(MqttVersion::V311);
        let mut buf = BytesMut::from(&[0x00u8, 0x00][..]);
        assert!(codec.decode(&mut buf).is_err());
    }
}
