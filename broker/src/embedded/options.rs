//! MQTT 5 subscription options that rumqttd 0.20 ignores, applied by the front-end to
//! the copies the router forwards to a session (MQTT 5 3.8.3.1):
//!
//! - **No Local**: a session does not get its own messages on such a subscription;
//! - **Retain As Published**: live copies keep the retain flag they were published
//!   with (rumqttd clears it);
//! - **Retain Handling 2**: no retained messages when the subscription is made
//!   (rumqttd sends them for every new subscription; Retain Handling 1, "only if new",
//!   is what it does anyway).
//!
//! The router does not say which subscription a copy is for, so the rules apply to the
//! session's filters that match the copy's topic: a copy is dropped only if every
//! matching filter drops it, and keeps its retain flag if any asks for that.

use rumqttd::protocol::{Filter, RetainForwardRule};

use admin_api::acl::matches;

use super::marks::Marks;

/// A session's subscriptions, once one of them has an option the router ignores.
#[derive(Debug, Default)]
pub(crate) struct SubOptions {
    /// (mounted filter, No Local, Retain As Published, Retain Handling 2).
    filters: Vec<(String, bool, bool, bool)>,
    /// Some filter has an option the router ignores: copies must be checked.
    special: bool,
    /// Some filter has No Local (asked at every PUBLISH of the session).
    no_local: bool,
}

/// What happens to a copy the router forwards.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not for this session after all.
    Drop,
    /// Delivered, with this retain flag.
    Deliver {
        /// The retain flag the device sees.
        retain: bool,
    },
}

impl SubOptions {
    /// A SUBSCRIBE's filter (replacing the same filter's earlier options).
    pub(crate) fn subscribe(&mut self, f: &Filter) {
        self.unsubscribe(&f.path);
        let rh2 = matches!(f.retain_forward_rule, RetainForwardRule::Never);
        self.filters
            .push((f.path.clone(), f.nolocal, f.preserve_retain, rh2));
        self.refresh();
    }

    /// An UNSUBSCRIBE's filter.
    pub(crate) fn unsubscribe(&mut self, path: &str) {
        self.filters.retain(|(p, ..)| p != path);
        self.refresh();
    }

    /// Some subscription of the session has No Local: its messages need an origin mark.
    pub(crate) fn no_local(&self) -> bool {
        self.no_local
    }

    fn refresh(&mut self) {
        self.special = self
            .filters
            .iter()
            .any(|(_, nl, rap, rh2)| *nl || *rap || *rh2);
        self.no_local = self.filters.iter().any(|(_, nl, ..)| *nl);
    }

    /// The verdict on a copy of a message on `topic` (mounted) that came with the
    /// retain flag `retain` (set: a retained message sent for a new subscription) and
    /// `marks`, for the session `me`.
    pub(crate) fn verdict(
        &self,
        topic: &[u8],
        retain: bool,
        marks: &Marks,
        me: Option<u64>,
    ) -> Verdict {
        let deliver = Verdict::Deliver { retain };
        if !self.special {
            return deliver;
        }
        // rumqttd decoded the topic as UTF-8; anything else matches no filter.
        let topic = std::str::from_utf8(topic).unwrap_or("");
        let mut matching = self
            .filters
            .iter()
            .filter(|(f, ..)| !f.starts_with("$share/") && matches(f, topic))
            .peekable();
        if matching.peek().is_none() {
            return deliver;
        }
        let (mut all_nl, mut all_rh2, mut any_rap) = (true, true, false);
        for (_, nl, rap, rh2) in matching {
            all_nl &= *nl;
            all_rh2 &= *rh2;
            any_rap |= *rap;
        }
        if all_nl && me.is_some() && marks.origin == me {
            return Verdict::Drop;
        }
        if retain && all_rh2 {
            return Verdict::Drop;
        }
        Verdict::Deliver {
            retain: retain || (any_rap && marks.retained),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::QoS;

    fn filter(path: &str, nl: bool, rap: bool, rh: RetainForwardRule) -> Filter {
        Filter {
            path: path.into(),
            qos: QoS::AtLeastOnce,
            nolocal: nl,
            preserve_retain: rap,
            retain_forward_rule: rh,
        }
    }

    #[test]
    fn options_decide_per_matching_filter() {
        let mut s = SubOptions::default();
        s.subscribe(&filter(
            "t/a",
            false,
            false,
            RetainForwardRule::OnEverySubscribe,
        ));
        let own = Marks {
            origin: Some(5),
            retained: true,
            ..Default::default()
        };
        assert_eq!(
            s.verdict(b"t/a", false, &own, Some(5)),
            Verdict::Deliver { retain: false },
            "no option: as the router does"
        );
        s.subscribe(&filter("t/+", true, true, RetainForwardRule::Never));
        // t/a matches a filter without No Local: delivered; t/b only the No Local one.
        assert_eq!(
            s.verdict(b"t/a", false, &own, Some(5)),
            Verdict::Deliver { retain: true }
        );
        assert_eq!(s.verdict(b"t/b", false, &own, Some(5)), Verdict::Drop);
        assert_eq!(
            s.verdict(b"t/b", false, &own, Some(6)),
            Verdict::Deliver { retain: true }
        );
        // A retained message for the new subscription: only Retain Handling 2 filters
        // match t/b.
        let other = Marks::default();
        assert_eq!(s.verdict(b"t/b", true, &other, Some(5)), Verdict::Drop);
        assert_eq!(
            s.verdict(b"t/a", true, &other, Some(5)),
            Verdict::Deliver { retain: true }
        );
        s.unsubscribe("t/+");
        assert_eq!(
            s.verdict(b"t/b", false, &own, Some(5)),
            Verdict::Deliver { retain: false }
        );
    }
}
