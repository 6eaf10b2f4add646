//! Completing a chain with the issuers its certificates name in Authority Information
//! Access (caIssuers, RFC 5280 4.2.2.1): a server certificate imported without its
//! intermediates gets them from the URLs its issuer published. Every fetch goes through
//! the [`crate::egress`] policy (no loopback, private or link-local destination unless
//! the operator allowed it; bounded size, redirects and time), and a fetched certificate
//! is kept only when its name and signature show it issued the certificate before it.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509Certificate};

use crate::egress::{EgressPolicy, FetchError};

/// Most issuers fetched for one chain.
pub const MAX_FETCHED: usize = 4;

/// Why a chain could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiaError {
    /// No caIssuers URL answered (each one refused by the policy or unreachable); the
    /// last failure.
    #[error(transparent)]
    Download(FetchError),
    /// A URL answered with something that is not the issuer's certificate.
    #[error("'{url}' did not return the certificate of the issuer of {child}: {detail}")]
    NotTheIssuer {
        /// The URL.
        url: String,
        /// The subject of the certificate whose issuer was fetched.
        child: String,
        /// What was wrong.
        detail: String,
    },
}

/// The `caIssuers` URLs of a certificate's Authority Information Access extension.
pub fn ca_issuer_urls(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return Vec::new();
    };
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for desc in &aia.accessdescs {
                if desc.access_method
                    == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
                {
                    if let GeneralName::URI(u) = desc.access_location {
                        urls.push(u.to_string());
                    }
                }
            }
        }
    }
    urls
}

/// Fetches missing issuers under one egress policy.
#[derive(Debug)]
pub struct AiaFetcher {
    policy: Arc<EgressPolicy>,
    timeout: Duration,
}

impl AiaFetcher {
    /// A fetcher applying `policy`, each request bounded by `timeout`.
    pub fn new(policy: EgressPolicy, timeout: Duration) -> AiaFetcher {
        AiaFetcher {
            policy: Arc::new(policy),
            timeout,
        }
    }

    /// The issuers missing after `chain` (leaf first, each certificate's issuer after
    /// it): from the last certificate, while it is not self-signed and names a
    /// caIssuers URL, fetch its issuer (at most [`MAX_FETCHED`]). Returns the fetched
    /// certificates in chain order; empty when nothing is missing or nothing is named.
    pub async fn missing_issuers(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> Result<Vec<CertificateDer<'static>>, AiaError> {
        let mut fetched: Vec<CertificateDer<'static>> = Vec::new();
        let Some(mut current) = chain.last().cloned() else {
            return Ok(fetched);
        };
        let mut client = None;
        while fetched.len() < MAX_FETCHED && !is_self_signed(current.as_ref()) {
            let urls = ca_issuer_urls(current.as_ref());
            if urls.is_empty() {
                break;
            }
            let client = match &client {
                Some(c) => c,
                None => client.insert(
                    crate::egress::http_client(&self.policy, self.timeout).ok_or_else(|| {
                        AiaError::Download(FetchError::Unreachable {
                            url: urls[0].clone(),
                        })
                    })?,
                ),
            };
            let mut last = None;
            let mut found = None;
            for url in &urls {
                match crate::egress::get(client, &self.policy, url).await {
                    Ok(body) => match issuer_from(&body, current.as_ref(), url) {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(e) => last = Some(e),
                    },
                    Err(e) => last = Some(AiaError::Download(e)),
                }
            }
            match (found, last) {
                (Some(issuer), _) => {
                    if chain.contains(&issuer) || fetched.contains(&issuer) {
                        break;
                    }
                    fetched.push(issuer.clone());
                    current = issuer;
                }
                (None, Some(e)) => return Err(e),
                (None, None) => break,
            }
        }
        Ok(fetched)
    }
}

/// The certificate in `body` (DER, or PEM with one or more certificates) that issued
/// `child`.
fn issuer_from(body: &[u8], child: &[u8], url: &str) -> Result<CertificateDer<'static>, AiaError> {
    let child_subject = X509Certificate::from_der(child)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default();
    let wrong = |detail: String| AiaError::NotTheIssuer {
        url: url.to_string(),
        child: child_subject.clone(),
        detail,
    };
    let candidates = crate::pem::read_certificates(body).map_err(|e| wrong(e.to_string()))?;
    candidates
        .into_iter()
        .find(|c| issued(child, c.as_ref()))
        .ok_or_else(|| {
            wrong("no certificate in the answer has the issuer's name and key".to_string())
        })
}

/// Whether `issuer` issued `cert`: the names match and the signature verifies.
fn issued(cert: &[u8], issuer: &[u8]) -> bool {
    match (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(issuer),
    ) {
        (Ok((_, c)), Ok((_, i))) => {
            c.issuer().as_raw() == i.subject().as_raw()
                && crate::signature::is_signed_by(cert, issuer)
        }
        _ => false,
    }
}

fn is_self_signed(der: &[u8]) -> bool {
    issued(der, der)
}
