//! Certificate revocation lists: parsing (PEM/DER), checking that a CRL is signed by the
//! anchor it claims, honouring nextUpdate, and fetching CRL distribution points over
//! `http://` with a timeout and a cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use x509_parser::prelude::*;

/// The sentence operators see when a CRL location cannot be fetched.
pub const CRL_UNREACHABLE: &str = "The CRL (Certificate Revocation List) location is not reachable. Verify the URL can be accessed from this appliance";

/// Why a CRL could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// Not a CRL.
    #[error("Malformed CRL: {0}")]
    Malformed(String),
    /// The CRL's issuer is not the certificate it was checked against.
    #[error("The CRL issuer ({crl_issuer}) is not the trusted certificate ({anchor})")]
    IssuerMismatch {
        /// The CRL's issuer DN.
        crl_issuer: String,
        /// The anchor's subject DN.
        anchor: String,
    },
    /// The signature does not verify with the anchor's key.
    #[error("The CRL signature does not verify with the trusted certificate's key")]
    BadSignature,
    /// nextUpdate is in the past.
    #[error("The CRL is out of date (nextUpdate {0} has passed)")]
    Stale(String),
    /// The distribution point URL is not `http://`.
    #[error("Only http:// CRL distribution points are supported, got '{0}'")]
    NotHttp(String),
    /// Fetching failed (DNS, connect, timeout, HTTP status).
    #[error("{CRL_UNREACHABLE}")]
    Unreachable,
}

/// One revoked certificate entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedEntry {
    /// Serial number, lowercase hex (as [`crate::CertInfo::serial_hex`]).
    pub serial_hex: String,
    /// Revocation date, Unix seconds.
    pub revocation_date: i64,
}

/// A parsed CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    /// Issuer DN, raw DER (matches a certificate's raw subject).
    pub issuer_raw: Vec<u8>,
    /// Issuer DN in RFC 4514 form.
    pub issuer: String,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: Option<i64>,
    /// Revoked entries.
    pub revoked: Vec<RevokedEntry>,
    /// The CRL's DER.
    pub der: Vec<u8>,
}

impl Crl {
    /// Parses one CRL from PEM (`X509 CRL`) or DER.
    pub fn parse(input: &[u8]) -> Result<Crl, CrlError> {
        let ders = crate::pem::read_crls(input).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let der = ders
            .into_iter()
            .next()
            .ok_or_else(|| CrlError::Malformed("no X509 CRL block found".into()))?;
        let (_, crl) =
            parse_x509_crl(der.as_ref()).map_err(|e| CrlError::Malformed(e.to_string()))?;
        Ok(Crl {
            issuer_raw: crl.issuer().as_raw().to_vec(),
            issuer: crl.issuer().to_string(),
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| RevokedEntry {
                    serial_hex: hex::encode(strip_sign(r.raw_serial())),
                    revocation_date: r.revocation_date.timestamp(),
                })
                .collect(),
            der: der.as_ref().to_vec(),
        })
    }

    /// Checks that `issuer_der` (a trust anchor) issued and signed this CRL.
    pub fn verify_signed_by(&self, issuer_der: &[u8]) -> Result<(), CrlError> {
        let (_, crl) = parse_x509_crl(&self.der).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let (_, issuer) = X509Certificate::from_der(issuer_der)
            .map_err(|e| CrlError::Malformed(e.to_string()))?;
        if issuer.subject().as_raw() != crl.issuer().as_raw() {
            return Err(CrlError::IssuerMismatch {
                crl_issuer: crl.issuer().to_string(),
                anchor: issuer.subject().to_string(),
            });
        }
        crate::signature::verify_with_spki(
            issuer.public_key(),
            &crl.signature_algorithm.algorithm.to_id_string(),
            crl.tbs_cert_list.as_ref(),
            &crl.signature_value.data,
        )
        .map_err(|_| CrlError::BadSignature)
    }

    /// Fails with [`CrlError::Stale`] when nextUpdate is before `now` (Unix seconds).
    pub fn check_fresh(&self, now: i64) -> Result<(), CrlError> {
        match self.next_update {
            Some(next) if next < now => Err(CrlError::Stale(crate::info::rfc3339(next))),
            _ => Ok(()),
        }
    }

    /// A readable multi-line description, in the spirit of `openssl crl -text`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(t, "Certificate Revocation List:");
        let _ = writeln!(t, "  Issuer:      {}", self.issuer);
        let _ = writeln!(
            t,
            "  This update: {}",
            crate::info::rfc3339(self.this_update)
        );
        let next = self
            .next_update
            .map_or_else(|| "none".to_string(), crate::info::rfc3339);
        let _ = writeln!(t, "  Next update: {next}");
        if self.revoked.is_empty() {
            let _ = writeln!(t, "  Revoked certificates: none");
        } else {
            let _ = writeln!(t, "  Revoked certificates:");
            for r in &self.revoked {
                let _ = writeln!(
                    t,
                    "    Serial {} revoked {}",
                    crate::info::colon_hex(&r.serial_hex),
                    crate::info::rfc3339(r.revocation_date)
                );
            }
        }
        t
    }

    /// True when the serial (lowercase hex) is listed.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked.iter().any(|r| r.serial_hex == serial_hex)
    }
}

fn strip_sign(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

/// The CRL distribution point URLs named in a DER certificate.
pub fn distribution_points(cert_der: &[u8]) -> Vec<String> {
    crate::info::CertInfo::parse(cert_der)
        .map(|i| i.crl_distribution_points)
        .unwrap_or_default()
}

/// Fetches CRLs from `http://` distribution points with a timeout, caching each until
/// its nextUpdate (or `max_age`, whichever is sooner).
pub struct CrlFetcher {
    /// None only if the HTTP client could not be built (then every fetch is unreachable).
    client: Option<reqwest::Client>,
    max_age: Duration,
    cache: Mutex<HashMap<String, (Arc<Crl>, Instant)>>,
}

/// The largest CRL we download.
const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;

impl CrlFetcher {
    /// A fetcher with the given request timeout and cache lifetime.
    pub fn new(timeout: Duration, max_age: Duration) -> CrlFetcher {
        // Only http:// is fetched, but reqwest builds a TLS config anyway: hand it one
        // with our provider so that no process-wide default provider is needed.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        // Redirects stay on http:// and are few.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 3 || attempt.url().scheme() != "http" {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let client = tls.ok().and_then(|tls| {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(redirects)
                .build()
                .ok()
        });
        CrlFetcher {
            client,
            max_age,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the CRL at `url`, from the cache when it is still fresh at `now`.
    pub async fn fetch(&self, url: &str, now: i64) -> Result<Arc<Crl>, CrlError> {
        if !url.to_ascii_lowercase().starts_with("http://") {
            return Err(CrlError::NotHttp(url.to_string()));
        }
        if let Some((crl, at)) = self.cache.lock().ok().and_then(|c| c.get(url).cloned()) {
            if at.elapsed() < self.max_age && crl.check_fresh(now).is_ok() {
                return Ok(crl);
            }
        }
        let client = self.client.as_ref().ok_or(CrlError::Unreachable)?;
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|_| CrlError::Unreachable)?;
        if !resp.status().is_success() {
            return Err(CrlError::Unreachable);
        }
        let too_large = || CrlError::Malformed("CRL larger than 32 MiB".into());
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_CRL_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| CrlError::Unreachable)? {
            if body.len() + chunk.len() > MAX_CRL_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let crl = Arc::new(Crl::parse(&body)?);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(url.to_string(), (crl.clone(), Instant::now()));
        }
        Ok(crl)
    }
}

impl Default for CrlFetcher {
    fn default() -> Self {
        CrlFetcher::new(Duration::from_secs(5), Duration::from_secs(3600))
    }
}
