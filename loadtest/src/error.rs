//! The one error type of the load generator.
//!
//! Only failures that stop a run are errors. Failures of single connections (a refused
//! handshake, a dropped session) are counted by kind in [`crate::Report::errors`] instead.

use std::path::PathBuf;

/// Why a load test could not run (or could not finish).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A target (`--broker`, `--admin`) or source address is not on the loopback network.
    #[error("{what} {value:?} means {addr}, which is not a loopback address (127.0.0.0/8 or ::1); loadtest only targets this machine")]
    NotLoopback {
        /// Which option carried the address.
        what: &'static str,
        /// The value as given.
        value: String,
        /// The offending resolved address.
        addr: std::net::IpAddr,
    },

    /// A host name could not be resolved.
    #[error("{what} {value:?} cannot be resolved: {reason}")]
    Resolve {
        /// Which option carried the name.
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why resolution failed.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key could not be generated, parsed or used.
    #[error("certificate: {0}")]
    Certificate(String),

    /// The TLS client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// The admin API could not be reached.
    #[error("admin API {url}: {reason}")]
    AdminUnreachable {
        /// The request URL.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },

    /// The admin API answered with an error status.
    #[error("admin API {method} {url} answered {status}: {message}")]
    AdminRejected {
        /// HTTP method of the request.
        method: &'static str,
        /// The request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The `message` of the JSON error body, or the raw body.
        message: String,
    },

    /// A subscriber could not connect or subscribe, so end-to-end figures would be meaningless.
    #[error("subscriber {cn}: {reason}")]
    Subscriber {
        /// Common Name (and ClientId) of the subscriber.
        cn: String,
        /// What went wrong.
        reason: String,
    },

    /// A task of the run failed unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}

/// Formats an error with its chain of causes on one line (`a: b: c`).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
