//! The front-end's MQTT path: framing, CONNECT decode/re-encode, topic mounting of
//! PUBLISH/SUBSCRIBE/UNSUBSCRIBE both ways, for 3.1.1 and 5.0. The first input byte
//! picks the protocol level.
#![no_main]

use broker::mqtt::{self, Connect, Mount, Version};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let version = if sel & 1 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let mut mount = Mount::new("tenant-a");
    let mut out = BytesMut::new();
    while let Ok(Some(n)) = mqtt::frame_len(rest, 1 << 20) {
        let pkt = &rest[..n];
        if pkt[0] >> 4 == mqtt::kind::CONNECT {
            if let Ok(v) = mqtt::connect_version(pkt) {
                if let Ok(c) = Connect::decode(pkt, v) {
                    let _ = c.client_id().len();
                    let _ = c.encode_for_backend("tenant-a.dev", &mount.prefix, 60);
                }
            }
        } else if mount.device_to_backend(version, pkt, &mut out).is_ok() {
            // What went up must come back down intact.
            let mut down = BytesMut::new();
            let up = out.split();
            let mut r: &[u8] = &up;
            while let Ok(Some(m)) = mqtt::frame_len(r, 1 << 21) {
                let _ = mount.backend_to_device(version, &r[..m], &mut down);
                r = &r[m..];
            }
        }
        let _ = mount.backend_to_device(version, pkt, &mut out);
        out.clear();
        rest = &rest[n..];
    }
});
