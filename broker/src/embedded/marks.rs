//! The marks the front-end puts on a message it hands rumqttd's router, and takes off
//! when the router forwards a copy: what MQTT needs downstream that rumqttd does not
//! carry. They are user properties whose names start with [`PREFIX`]; a device's own
//! properties of such a name are dropped on the way up, and no device ever sees one.
//!
//! - `$front-end/qos`: the message's own QoS. rumqttd forwards every copy at the QoS
//!   granted to the matching subscription (`publish.qos = filter.qos`), so a QoS 0
//!   message would reach a QoS 2 subscriber at QoS 2; MQTT (3.1.1 3.8.4, 5.0 3.8.4)
//!   delivers at the lower of the two. QoS 2 messages carry none (the lower QoS is then
//!   the subscription's).
//! - `$front-end/origin`: the publishing session, for No Local (MQTT 5 3.8.3.1); only
//!   on messages of a session that has a No Local subscription.
//! - `$front-end/retain`: the message was published with the retain flag, for Retain
//!   As Published (rumqttd clears the flag on every live copy).
//! - `$front-end/t`: `<published at, Unix seconds>:<Message Expiry Interval as
//!   published>`, on a message with an expiry: a copy forwarded later (a retained
//!   message, one behind others, a queued one) goes out with the interval that is left,
//!   or not at all (MQTT 5 3.3.2.3.3). rumqttd lowers the interval itself, but in place
//!   at every read (a retained message read twice loses its age twice) and from the
//!   time it got the message (a restored message would look new).

use rumqttd::protocol::PublishProperties;

/// The prefix of the front-end's user properties.
pub(crate) const PREFIX: &str = "$front-end/";
const QOS: &str = "$front-end/qos";
const ORIGIN: &str = "$front-end/origin";
const RETAIN: &str = "$front-end/retain";
const TIME: &str = "$front-end/t";

/// What the marks of a forwarded copy said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marks {
    /// The message's own QoS.
    pub qos: Option<u8>,
    /// The session that published it (its generation), when it asked for one.
    pub origin: Option<u64>,
    /// Published with the retain flag.
    pub retained: bool,
    /// (published at, Unix seconds; Message Expiry Interval as published), if it has
    /// an expiry.
    pub expiry: Option<(i64, u32)>,
}

/// `props` with the marks of a message published at `qos` (see the module docs). No
/// allocation for a QoS 2 message without properties and without other marks.
pub(crate) fn mark(
    props: Option<PublishProperties>,
    qos: u8,
    origin: Option<u64>,
    retained: bool,
) -> Option<PublishProperties> {
    let mut props = match (props, qos, origin, retained) {
        (None, 2, None, false) => return None,
        (props, ..) => props.unwrap_or_default(),
    };
    props
        .user_properties
        .retain(|(k, _)| !k.starts_with(PREFIX));
    if qos < 2 {
        props
            .user_properties
            .push((QOS.to_owned(), qos.to_string()));
    }
    if let Some(origin) = origin {
        props
            .user_properties
            .push((ORIGIN.to_owned(), origin.to_string()));
    }
    if retained {
        props
            .user_properties
            .push((RETAIN.to_owned(), "1".to_owned()));
    }
    if let Some(interval) = props.message_expiry_interval {
        let now = super::durable::unix_now();
        props
            .user_properties
            .push((TIME.to_owned(), format!("{now}:{interval}")));
    }
    Some(props)
}

/// `props` with the QoS mark set to `qos`, other marks kept (a restored retained
/// message, a will).
pub(crate) fn mark_qos(props: Option<PublishProperties>, qos: u8) -> Option<PublishProperties> {
    let mut props = props;
    let m = take(&mut props);
    let mut props = mark(props, qos, m.origin, m.retained);
    // The publication time stays the original one.
    if let (Some((t, interval)), Some(p)) = (m.expiry, props.as_mut()) {
        for (k, v) in &mut p.user_properties {
            if k == TIME {
                *v = format!("{t}:{interval}");
            }
        }
    }
    props
}

/// `props` with the Message Expiry Interval the message was published with (see
/// `$front-end/t` in the module docs), and when it was published.
pub(crate) fn original_expiry(props: &mut Option<PublishProperties>, m: &Marks) -> Option<i64> {
    let (t, interval) = m.expiry?;
    if let Some(p) = props.as_mut() {
        p.message_expiry_interval = Some(interval);
    }
    Some(t)
}

/// Removes every mark from `props` and returns what they said.
pub(crate) fn take(props: &mut Option<PublishProperties>) -> Marks {
    let mut m = Marks::default();
    let Some(p) = props.as_mut() else {
        return m;
    };
    if !p.user_properties.iter().any(|(k, _)| k.starts_with(PREFIX)) {
        return m;
    }
    p.user_properties.retain(|(k, v)| {
        match k.as_str() {
            QOS => m.qos = v.parse().ok().filter(|q| *q <= 2),
            ORIGIN => m.origin = v.parse().ok(),
            RETAIN => m.retained = true,
            TIME => {
                m.expiry = v
                    .split_once(':')
                    .and_then(|(t, i)| Some((t.parse().ok()?, i.parse().ok()?)))
            }
            _ => return !k.starts_with(PREFIX),
        }
        false
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(props: &Option<PublishProperties>) -> Vec<(String, String)> {
        props
            .as_ref()
            .map(|p| p.user_properties.clone())
            .unwrap_or_default()
    }

    #[test]
    fn marks_round_trip_and_forged_ones_are_dropped() {
        let forged = PublishProperties {
            user_properties: vec![
                ("$front-end/qos".into(), "0".into()),
                ("$front-end/origin".into(), "7".into()),
                ("$front-end/anything".into(), "x".into()),
                ("k".into(), "v".into()),
            ],
            ..Default::default()
        };
        let mut props = mark(Some(forged), 1, None, true);
        assert_eq!(
            take(&mut props),
            Marks {
                qos: Some(1),
                origin: None,
                retained: true,
                expiry: None
            }
        );
        assert_eq!(user(&props), vec![("k".to_string(), "v".to_string())]);

        let mut props = mark(None, 0, Some(42), false);
        assert_eq!(
            take(&mut props),
            Marks {
                qos: Some(0),
                origin: Some(42),
                retained: false,
                expiry: None
            }
        );
        assert!(user(&props).is_empty());
        assert_eq!(mark(None, 2, None, false), None, "no allocation");
        let mut restored = mark_qos(mark(None, 2, Some(3), true), 1);
        assert_eq!(
            take(&mut restored),
            Marks {
                qos: Some(1),
                origin: Some(3),
                retained: true,
                expiry: None
            }
        );
    }
}
