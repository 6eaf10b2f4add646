//! The embedded rumqttd and what the front-end adds to it.
//!
//! - [`link`]: the router, started in-process ([`Hub`]), and each session's in-process
//!   link into it ([`LinkIo`]): CONNECT handling, delivered QoS, Maximum Packet Size,
//!   wills, and the offline queue of a resumed session delivered first.
//! - [`durable`]: retained messages and persistent sessions kept across restarts,
//!   keepers of offline sessions, session expiry ([`Durable`]).
//! - [`state`]: their SQLite file in the data directory.
//! - `marks`: what a message carries through the router (its QoS, origin, retain flag,
//!   publication time) and loses before a device sees it.
//! - `options`: the MQTT 5 subscription options rumqttd ignores.
//!
//! Nothing here imports the session, the edge or the external backend: the session
//! reaches this module only through the byte stream of a [`LinkIo`], and `backend`
//! starts it. `link` and `durable` work as a pair (a link opens and ends through
//! [`Durable`]; a keeper is a link of the front-end's own).

pub mod durable;
pub mod link;
mod marks;
mod options;
pub mod state;

pub use durable::Durable;
pub use link::{Hub, LinkIo};
