//! The embedded rumqttd: the in-process links that carry sessions into its router
//! ([`link`]), and what the front-end adds so that its state survives a restart and
//! sessions expire as MQTT specifies ([`durable`], stored by [`state`]).
//!
//! Dependencies run one way: `durable` uses `link` and `state`; `link` calls into
//! `durable` only through the [`Durable`] handle the [`Hub`] holds.

pub mod durable;
pub mod link;
mod marks;
mod options;
pub mod state;

pub use durable::Durable;
pub use link::{Hub, LinkIo};
