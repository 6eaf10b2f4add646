//! X.509 knowledge for the MQTT front-end: everything the broker, the admin API and the
//! `certs` command know about certificates.
//!
//! - [`pem`]: reading and writing PEM/DER certificates, keys (plain and encrypted) and
//!   PKCS#12 keystores.
//! - [`info`]: a parsed, owned summary of a certificate ([`CertInfo`]).
//! - [`upload`]: the rules a CA must pass to become a tenant's trust anchor.
//! - [`trust`]: [`TrustStore`], the indexed snapshot of all anchors, and
//!   [`TrustStore::verify_device`], the one function that judges a device chain.
//! - [`revocation`]: CRL parsing, signature checks and `http://` fetching.
//! - [`requirements`]: the server-certificate requirements report.
//! - [`issue`]: generating CAs, devices, servers and CRLs with rcgen.
//! - [`csr`]: PKCS#10 signing requests: made with a new key, read and verified to sign.
//! - [`aia`]: completing a chain with the issuers named by Authority Information Access
//!   (caIssuers), fetched through the [`egress`] policy.
//! - [`ca_dir`]: a CA kept in a directory (`ca.crt`, `ca.key`, `revoked.json`), as the
//!   `certs` command manages it.
//!
//! Nothing here does I/O except [`revocation::CrlFetcher`] and [`aia`], which fetch the
//! URLs they are given, and [`ca_dir`], which reads and writes the CA directory it is given.

#![forbid(unsafe_code)]

pub mod aia;
pub mod ca_dir;
pub mod csr;
mod der;
pub mod egress;
pub mod info;
pub mod issue;
pub mod keys;
pub mod pem;
pub mod requirements;
pub mod revocation;
pub mod rfc5280;
pub mod signature;
pub mod trust;
pub mod upload;

pub use info::{CertInfo, KeyAlgorithm};
pub use pem::ReadError;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
pub use trust::{
    AnchorSpec, AnchorStatus, DeviceIdentity, TenantPolicy, TrustStore, TrustStoreBuilder,
    VerifyError,
};
pub use upload::UploadError;

/// Current time as Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
