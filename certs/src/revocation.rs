//! Certificate revocation lists: parsing (PEM/DER), checking that a CRL is signed by the
//! anchor it claims, honouring nextUpdate, and fetching CRL distribution points over
//! `http://` or `https://` through the [`crate::egress`] policy, with a timeout and a
//! cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use x509_parser::prelude::*;

use crate::egress::{EgressError, EgressPolicy, FetchError};

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
    /// No CRL number: RFC 5280 5.2.3 requires one in every CRL (it orders CRLs, so an
    /// older one cannot be served in place of a newer one).
    #[error("The CRL has no CRL number (the cRLNumber extension is required by RFC 5280)")]
    NoCrlNumber,
    /// The CRL number extension is marked critical (RFC 5280 5.2.3: non-critical).
    #[error(
        "The CRL number extension is marked critical; RFC 5280 requires it to be non-critical"
    )]
    CriticalCrlNumber,
    /// The issuer's KeyUsage does not include cRLSign.
    #[error(
        "The CRL issuer's certificate is not allowed to sign CRLs (its key usage lacks cRLSign)"
    )]
    IssuerCannotSignCrls,
    /// nextUpdate is in the past.
    #[error("The CRL is out of date (nextUpdate {0} has passed)")]
    Stale(String),
    /// The egress policy refuses the distribution point (scheme, address, redirect,
    /// rate).
    #[error("The CRL location '{url}' is refused: {reason}")]
    Refused {
        /// The distribution point URL.
        url: String,
        /// What the policy refused.
        reason: EgressError,
    },
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
    /// Parses one CRL from PEM (`X509 CRL`) or DER. A CRL without a CRL number, or
    /// with one marked critical, is refused (RFC 5280 5.2.3).
    pub fn parse(input: &[u8]) -> Result<Crl, CrlError> {
        let ders = crate::pem::read_crls(input).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let der = ders
            .into_iter()
            .next()
            .ok_or_else(|| CrlError::Malformed("no X509 CRL block found".into()))?;
        let (_, crl) =
            parse_x509_crl(der.as_ref()).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let number = crl
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_CRL_NUMBER)
            .ok_or(CrlError::NoCrlNumber)?;
        if number.critical {
            return Err(CrlError::CriticalCrlNumber);
        }
        if !matches!(number.parsed_extension(), ParsedExtension::CRLNumber(_)) {
            return Err(CrlError::Malformed("unreadable CRL number".into()));
        }
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

    /// Checks that `issuer_der` (a trust anchor) issued and signed this CRL, and may sign
    /// CRLs (cRLSign in its KeyUsage, when it has one).
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
        // RFC 5280 4.2.1.3: with a KeyUsage extension, a CRL signer needs cRLSign (no
        // KeyUsage at all leaves every usage open).
        match issuer.key_usage() {
            Ok(Some(ku)) if !ku.value.crl_sign() => return Err(CrlError::IssuerCannotSignCrls),
            Ok(_) => {}
            Err(e) => return Err(CrlError::Malformed(e.to_string())),
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

/// Fetches CRLs from `http://` and `https://` distribution points through an
/// [`EgressPolicy`] (checked on the URL, after name resolution and at every redirect;
/// size-capped; a rate per tenant), with a timeout, caching each CRL until its
/// nextUpdate (or `max_age`, whichever is sooner).
pub struct CrlFetcher {
    timeout: Duration,
    max_age: Duration,
    /// The policy of [`CrlFetcher::fetch`].
    policy: Arc<EgressPolicy>,
    /// One HTTP client per policy used so far (its resolver and redirect check apply
    /// that policy); a process has one or two.
    clients: Mutex<Vec<(Arc<EgressPolicy>, reqwest::Client)>>,
    cache: Mutex<HashMap<String, (Arc<Crl>, Instant)>>,
    /// Network fetches per tenant in the current minute: (window start, count).
    rates: Mutex<HashMap<String, (Instant, u32)>>,
}

impl std::fmt::Debug for CrlFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlFetcher")
            .field("timeout", &self.timeout)
            .field("max_age", &self.max_age)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CrlFetcher {
    /// A fetcher with the given request timeout (the whole fetch, redirects and body
    /// included) and cache lifetime, under the secure default [`EgressPolicy`] (no
    /// loopback, private, link-local, ... destination).
    pub fn new(timeout: Duration, max_age: Duration) -> CrlFetcher {
        CrlFetcher::with_policy(timeout, max_age, EgressPolicy::default())
    }

    /// A fetcher whose [`CrlFetcher::fetch`] applies `policy` (e.g. with the
    /// operator's allow-list).
    pub fn with_policy(timeout: Duration, max_age: Duration, policy: EgressPolicy) -> CrlFetcher {
        CrlFetcher {
            timeout,
            max_age,
            policy: Arc::new(policy),
            clients: Mutex::new(Vec::new()),
            cache: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of [`CrlFetcher::fetch`].
    pub fn policy(&self) -> &Arc<EgressPolicy> {
        &self.policy
    }

    /// The HTTP client applying `policy` ([`crate::egress::http_client`]), one per policy.
    fn client(&self, policy: &Arc<EgressPolicy>) -> Result<reqwest::Client, CrlError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = clients.iter().find(|(p, _)| **p == **policy) {
            return Ok(c.clone());
        }
        let client =
            crate::egress::http_client(policy, self.timeout).ok_or(CrlError::Unreachable)?;
        clients.push((policy.clone(), client.clone()));
        Ok(client)
    }

    /// Counts one network fetch for `tenant`; false past the policy's rate.
    fn take_fetch(&self, tenant: &str, per_minute: u32) -> bool {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let entry = rates.entry(tenant.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        if entry.1 >= per_minute {
            return false;
        }
        entry.1 += 1;
        true
    }

    /// Returns the CRL at `url` under the fetcher's own policy, from the cache when it
    /// is still fresh at `now`.
    pub async fn fetch(&self, url: &str, now: i64) -> Result<Arc<Crl>, CrlError> {
        let policy = self.policy.clone();
        self.fetch_for("", url, now, &policy).await
    }

    /// Returns the CRL at `url` for `tenant` (whose network fetches the policy's rate
    /// limits) under `policy`, from the cache when it is still fresh at `now`.
    pub async fn fetch_for(
        &self,
        tenant: &str,
        url: &str,
        now: i64,
        policy: &Arc<EgressPolicy>,
    ) -> Result<Arc<Crl>, CrlError> {
        let refused = |e: EgressError| CrlError::Refused {
            url: url.to_string(),
            reason: e,
        };
        policy.check_url_str(url).map_err(refused)?;
        if let Some((crl, at)) = self.cache.lock().ok().and_then(|c| c.get(url).cloned()) {
            if at.elapsed() < self.max_age && crl.check_fresh(now).is_ok() {
                return Ok(crl);
            }
        }
        if !self.take_fetch(tenant, policy.fetches_per_minute) {
            return Err(refused(EgressError::RateLimited(policy.fetches_per_minute)));
        }
        let client = self.client(policy)?;
        let body = crate::egress::get(&client, policy, url)
            .await
            .map_err(|e| match e {
                FetchError::Refused { reason, .. } => refused(reason),
                FetchError::Unreachable { .. } | FetchError::Status { .. } => CrlError::Unreachable,
                FetchError::TooLarge { max, .. } => {
                    CrlError::Malformed(format!("CRL larger than {max} bytes"))
                }
            })?;
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
