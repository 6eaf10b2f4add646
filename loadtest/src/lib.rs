//! A device-fleet load generator for MQTT brokers that authenticate devices by X.509 client
//! certificate (mutual TLS, ClientId = certificate Common Name).
//!
//! It creates a CA and one certificate per simulated device in memory (or signs with an
//! existing CA), optionally registers the CA with the product's admin API, then connects the
//! fleet over mTLS, publishes, and measures: connect rate and latency (TCP connect to
//! CONNACK), publish rate, end-to-end latency through subscribers, lost and duplicated
//! messages, broker memory, and, in the revoke scenario, how fast a disabled CA cuts every
//! session off.
//!
//! The client side is deliberately lean: one tokio task per device (no thread or process per
//! connection), its own MQTT 3.1.1/5 client over tokio-rustls with rumqttc's packet codec,
//! source addresses spread over 127.0.0.0/8, and only loopback targets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), loadtest::Error> {
//! let report = loadtest::run(loadtest::Config {
//!     broker: "127.0.0.1:8883".into(),
//!     devices: 1000,
//!     server_ca: Some("server-ca.pem".into()),
//!     ca_cert: Some("ca.pem".into()),
//!     ca_key: Some("ca.key".into()),
//!     upload: false,
//!     ..loadtest::Config::default()
//! })
//! .await?;
//! println!("{}", report.summary_table());
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] (what to run, validation, the loopback rule), [`report`] (what was
//! measured), [`summary`] (benchmark tables), `pki` (certificates), `admin` (REST), `mqtt` (the client), `runner` (the run).

#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod error;
mod mqtt;
mod pki;
pub mod report;
mod runner;
pub mod summary;

pub use config::{Config, KeyType, Login, MqttVersion, Scenario};
pub use error::Error;
pub use pki::{crypto_provider, RSA_KEY_POOL};
pub use report::Report;
pub use runner::run;
