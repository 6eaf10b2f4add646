//! The front-end's MQTT path: framing, CONNECT decode/re-encode, topic mounting of
//! PUBLISH/SUBSCRIBE/UNSUBSCRIBE both ways, for 3.1.1 and 5.0. The first input byte
//! picks the protocol level.
//!
//! Beyond "no panic", what the mounting promises: a rewritten packet is exactly one
//! well-formed frame; every topic and filter sent up is inside the tenant's prefix
//! (`$share/<group>/` kept in front); a 3.1.1 PUBLISH comes back down as it went up.
//! Everything sent up is also decoded with rumqttd's codec, as the in-process link
//! (`broker::link`) does in the session's task: it must not panic there.
#![no_main]

use broker::mqtt::{self, kind, Connect, Mount, Version};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::Protocol;

const TENANT: &str = "tenant-a";
const PREFIX: &str = "tenant-a/";

/// (header length, body) of a complete frame.
fn body(pkt: &[u8]) -> (usize, &[u8]) {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        len |= usize::from(pkt[i] & 0x7f) << (7 * (i - 1));
        if pkt[i] & 0x80 == 0 {
            break;
        }
        i += 1;
    }
    (i + 1, &pkt[i + 1..i + 1 + len])
}

fn str_at(b: &[u8]) -> (&[u8], &[u8]) {
    let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
    (&b[2..2 + n], &b[2 + n..])
}

fn varint(b: &[u8]) -> (usize, usize) {
    let mut v = 0;
    for (i, x) in b.iter().enumerate() {
        v |= usize::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    panic!("unterminated varint in a rewritten packet");
}

/// A rewritten packet is one complete frame, and its names are inside the prefix.
fn check_up(version: Version, up: &[u8]) {
    let n = mqtt::frame_len(up, usize::MAX)
        .expect("rewritten packet frames")
        .expect("rewritten packet is complete");
    assert_eq!(n, up.len(), "rewritten packet is exactly one frame");
    let (_, b) = body(up);
    match up[0] >> 4 {
        kind::PUBLISH => {
            let (topic, _) = str_at(b);
            assert!(
                topic.starts_with(PREFIX.as_bytes()),
                "topic outside the tenant: {topic:?}"
            );
            assert!(!topic[PREFIX.len()..].contains(&b'#') && !topic.contains(&b'+'));
        }
        t @ (kind::SUBSCRIBE | kind::UNSUBSCRIBE) => {
            let mut rest = &b[2..];
            if version == Version::V5 {
                let (plen, pn) = varint(rest);
                rest = &rest[pn + plen..];
            }
            while !rest.is_empty() {
                let (f, r) = str_at(rest);
                let f = std::str::from_utf8(f).expect("filter stays UTF-8");
                let inner = match f.strip_prefix("$share/") {
                    Some(s) => {
                        let (group, inner) = s.split_once('/').expect("share group");
                        let tenant = PREFIX.trim_end_matches('/');
                        assert!(
                            group
                                .strip_prefix(tenant)
                                .is_some_and(|g| g.starts_with('.')),
                            "share group outside the tenant: {f:?}"
                        );
                        inner
                    }
                    None => f,
                };
                assert!(
                    inner.starts_with(PREFIX),
                    "filter outside the tenant: {f:?}"
                );
                rest = if t == kind::SUBSCRIBE { &r[1..] } else { r };
            }
        }
        _ => {}
    }
}

/// Decodes what the front-end sends up as the embedded broker's link does (an error is
/// fine: the session ends; a panic is not).
fn rumqttd_decode(version: Version, up: &[u8]) {
    let mut buf = BytesMut::from(up);
    let _ = match version {
        Version::V4 => rumqttd::protocol::v4::V4.read_mut(&mut buf, 1 << 21),
        Version::V5 => rumqttd::protocol::v5::V5.read_mut(&mut buf, 1 << 21),
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let version = if sel & 1 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let mut mount = Mount::new(TENANT);
    let mut out = BytesMut::new();
    while let Ok(Some(n)) = mqtt::frame_len(rest, 1 << 20) {
        let pkt = &rest[..n];
        if pkt[0] >> 4 == kind::CONNECT {
            if let Ok(v) = mqtt::connect_version(pkt) {
                if let Ok(c) = Connect::decode(pkt, v) {
                    let _ = c.client_id().len();
                    if let Ok(up) = c.encode_for_backend("tenant-a.dev", &mount.prefix, 60, None) {
                        rumqttd_decode(v, &up);
                        let decoded = Connect::decode(&up, v).expect("re-encoded CONNECT decodes");
                        assert_eq!(decoded.client_id(), "tenant-a.dev");
                    }
                }
            }
        } else if mount.device_to_backend(version, pkt, &mut out).is_ok() {
            let up = out.split();
            if !up.is_empty() {
                check_up(version, &up);
                rumqttd_decode(version, &up);
            }
            if up.first().map(|b| b >> 4) == Some(kind::PUBLISH) {
                // What went up comes back down intact.
                let mut down = BytesMut::new();
                mount
                    .backend_to_device(version, &up, &mut down)
                    .expect("a mounted PUBLISH comes back");
                let (_, up_body) = body(&up);
                let (_, down_body) = body(&down);
                let (up_topic, _) = str_at(up_body);
                let (down_topic, down_rest) = str_at(down_body);
                assert_eq!(&up_topic[PREFIX.len()..], down_topic);
                assert_eq!(&up_body[2 + up_topic.len()..], down_rest);
                if version == Version::V4 {
                    let (_, orig) = body(pkt);
                    assert_eq!(pkt[0], down[0]);
                    assert_eq!(orig, down_body, "3.1.1 PUBLISH round trip");
                }
            }
        }
        let _ = mount.backend_to_device(version, pkt, &mut out);
        out.clear();
        rest = &rest[n..];
    }
});
