//! The server-certificate requirements of the reference procedures, as a report: one row
//! per rule, in the order an operator reads them, each with the sentence to show when it
//! fails. The admin API's server-certificate import and `certs check` both print it.
//!
//! [`check`] evaluates everything that needs no network. Revocation needs the CRL named
//! by the certificate's distribution point: [`check_with_crl_fetch`] fetches it over
//! `http://`, and [`check_with_crl`] takes an already fetched one. With
//! [`Input::crl_check`] on, [`check`] alone cannot know the revocation status and reports
//! those rows as failed (unknown revocation status is never a pass).

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::info::{CertInfo, KeyAlgorithm};
use crate::pem::ReadError;
use crate::revocation::{Crl, CrlError, CrlFetcher, CRL_UNREACHABLE};

/// Sentence for an expired certificate.
pub const EXPIRED: &str = "This SSL certificate has expired and isn't considered valid.";
/// Sentence for a chain that does not lead from the certificate to the given root.
pub const CHAIN_MISMATCH: &str =
    "Cannot validate chain of trust. The provided Certificate and Root CA don't match.";
/// Sentence for a certificate that is not self-signed when no chain was given.
pub const CHAIN_NO_ROOT: &str =
    "Cannot validate chain of trust. The Root CA certificate was not provided.";
/// Sentence for a certificate listed in its CRL.
pub const REVOKED: &str =
    "This certificate has been revoked by the CRL and can't be trusted for a secure connection";
/// Sentence for a private key that does not belong to the certificate.
pub const KEY_MISMATCH: &str = "The private key does not match the certificate";

/// Row names, in report order. Callers may match on them.
pub mod rows {
    /// The certificate could be read (PEM, DER or PKCS#12).
    pub const READABLE: &str = "Certificate is readable";
    /// Signature algorithm SHA256 with RSA.
    pub const SIGNATURE: &str = "Signature algorithm is SHA256RSA";
    /// RSA 2048 or 4096 key.
    pub const KEY_SIZE: &str = "Public key is RSA 2048 or 4096 bits";
    /// notBefore in the past.
    pub const VALID_FROM: &str = "Valid from a past date";
    /// notAfter in the future.
    pub const VALID_TO: &str = "Valid to a future date";
    /// Subject attributes CN, C, OU and O.
    pub const SUBJECT: &str = "Subject contains CN, C, OU and O";
    /// The Common Name is not a wildcard.
    pub const NO_WILDCARD: &str = "Common Name is not a wildcard";
    /// An extended key usage, when present, allows TLS server authentication.
    pub const SERVER_AUTH: &str = "Extended key usage allows TLS server authentication";
    /// Subject alternative names name the host (TLS clients ignore the CN).
    pub const HOST_NAMES: &str = "Subject alternative names list the host names";
    /// The private key decodes (with the passphrase when encrypted).
    pub const KEY_READABLE: &str = "Private key is readable";
    /// The private key is the certificate's.
    pub const KEY_MATCHES: &str = "Private key matches the certificate";
    /// The chain leads from the certificate to a root CA.
    pub const CHAIN: &str = "Chain of trust matches the Root CA";
    /// The certificate names a CRL distribution point.
    pub const CRL_DP: &str = "CRL Distribution Point is present";
    /// The CRL could be fetched.
    pub const CRL_REACHABLE: &str = "CRL is reachable";
    /// The certificate is not listed in its CRL.
    pub const NOT_REVOKED: &str = "Certificate is not revoked by the CRL";
}

/// What to check: the files as uploaded.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// The certificate: PEM or DER, optionally followed by its chain; or a PKCS#12
    /// keystore (opened with [`Input::passphrase`]) holding certificate, key and chain.
    pub crt: &'a [u8],
    /// The private key (PEM or DER, plain or encrypted). May be empty when `crt` is a
    /// PKCS#12 keystore.
    pub key: &'a [u8],
    /// Intermediate and root CA certificates (PEM or DER), any order.
    pub chain: Option<&'a [u8]>,
    /// Passphrase of an encrypted key or PKCS#12 keystore.
    pub passphrase: Option<&'a str>,
    /// Whether CRL validation is on (adds the CRL rows).
    pub crl_check: bool,
    /// The time to judge validity at, Unix seconds.
    pub now: i64,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material and the passphrase never go to Debug output.
        f.debug_struct("Input")
            .field("crt_len", &self.crt.len())
            .field("key_len", &self.key.len())
            .field("chain_len", &self.chain.map(<[u8]>::len))
            .field("crl_check", &self.crl_check)
            .field("now", &self.now)
            .finish()
    }
}

/// One requirement and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The requirement, as a person reads it (see [`rows`]).
    pub name: String,
    /// Whether the certificate meets it.
    pub passed: bool,
    /// Whether failing it refuses the certificate (false: informational).
    pub required: bool,
    /// Why it failed (the sentence to show), or a note on a passed row.
    pub reason: Option<String>,
}

impl Row {
    fn pass(name: &str) -> Row {
        Row {
            name: name.to_string(),
            passed: true,
            required: true,
            reason: None,
        }
    }

    fn fail(name: &str, reason: impl Into<String>) -> Row {
        Row {
            name: name.to_string(),
            passed: false,
            required: true,
            reason: Some(reason.into()),
        }
    }

    fn check(name: &str, ok: bool, reason: impl FnOnce() -> String) -> Row {
        if ok {
            Row::pass(name)
        } else {
            Row::fail(name, reason())
        }
    }
}

/// The outcome of every requirement, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// One row per requirement.
    pub rows: Vec<Row>,
}

impl Report {
    /// The first failed required row: the error to show.
    pub fn first_failure(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.required && !r.passed)
    }

    /// True when every required row passed.
    pub fn passed(&self) -> bool {
        self.first_failure().is_none()
    }

    /// The row with this name.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Checks the requirements that need no network. With [`Input::crl_check`] on, the
/// revocation rows fail as "not checked": use [`check_with_crl_fetch`] for those.
pub fn check(input: &Input<'_>) -> Report {
    let (mut report, ctx) = offline(input);
    if let Some(ctx) = ctx {
        if input.crl_check && !ctx.crl_urls.is_empty() {
            let reason = "Revocation status unknown: the CRL was not fetched";
            report.rows.push(Row::fail(rows::CRL_REACHABLE, reason));
            report.rows.push(Row::fail(rows::NOT_REVOKED, reason));
        }
    }
    report
}

/// Checks every requirement, fetching the certificate's CRL distribution point (the
/// first that answers) when [`Input::crl_check`] is on.
pub async fn check_with_crl_fetch(input: &Input<'_>, fetcher: &CrlFetcher) -> Report {
    let (mut report, ctx) = offline(input);
    let Some(ctx) = ctx else { return report };
    if !input.crl_check || ctx.crl_urls.is_empty() {
        return report;
    }
    let mut result = Err(CrlError::Unreachable);
    for url in &ctx.crl_urls {
        result = fetcher.fetch(url, input.now).await.map(|c| (*c).clone());
        if result.is_ok() {
            break;
        }
    }
    crl_rows(&mut report, &ctx, result.as_ref(), input.now);
    report
}

/// Checks every requirement with a CRL the caller already fetched from the certificate's
/// distribution point (or the error fetching it gave).
pub fn check_with_crl(input: &Input<'_>, crl: Result<&Crl, &CrlError>) -> Report {
    let (mut report, ctx) = offline(input);
    if let Some(ctx) = ctx {
        if input.crl_check && !ctx.crl_urls.is_empty() {
            crl_rows(&mut report, &ctx, crl, input.now);
        }
    }
    report
}

/// What the CRL rows need from the offline pass.
struct Context {
    leaf: CertificateDer<'static>,
    serial_hex: String,
    issuer: Option<CertificateDer<'static>>,
    crl_urls: Vec<String>,
}

fn crl_rows(report: &mut Report, ctx: &Context, crl: Result<&Crl, &CrlError>, now: i64) {
    let crl = match crl {
        Ok(c) => c,
        Err(e) => {
            let reason = match e {
                CrlError::Unreachable => CRL_UNREACHABLE.to_string(),
                other => other.to_string(),
            };
            report.rows.push(Row::fail(rows::CRL_REACHABLE, reason));
            report.rows.push(Row::fail(
                rows::NOT_REVOKED,
                "Revocation status unknown: the CRL could not be fetched",
            ));
            return;
        }
    };
    report.rows.push(Row::pass(rows::CRL_REACHABLE));
    report.rows.push(match crl_verdict(ctx, crl, now) {
        Ok(()) => Row::pass(rows::NOT_REVOKED),
        Err(reason) => Row::fail(rows::NOT_REVOKED, reason),
    });
}

/// Whether the fetched CRL is the right one and does not list the certificate.
fn crl_verdict(ctx: &Context, crl: &Crl, now: i64) -> Result<(), String> {
    let issuer_raw = x509_parser::parse_x509_certificate(ctx.leaf.as_ref())
        .map(|(_, c)| c.issuer().as_raw().to_vec())
        .map_err(|e| e.to_string())?;
    if crl.issuer_raw != issuer_raw {
        return Err(format!(
            "The CRL at the distribution point is issued by {}, not by the certificate's issuer",
            crl.issuer
        ));
    }
    if let Some(issuer) = &ctx.issuer {
        crl.verify_signed_by(issuer.as_ref())
            .map_err(|e| e.to_string())?;
    }
    crl.check_fresh(now).map_err(|e| e.to_string())?;
    if crl.is_revoked(&ctx.serial_hex) {
        return Err(REVOKED.to_string());
    }
    Ok(())
}

/// Every row that needs no network, and what the CRL rows need (None when the
/// certificate could not be read at all).
fn offline(input: &Input<'_>) -> (Report, Option<Context>) {
    let mut report = Report { rows: Vec::new() };
    let material = match read_material(input) {
        Ok(m) => m,
        Err(e) => {
            report.rows.push(Row::fail(rows::READABLE, e.to_string()));
            return (report, None);
        }
    };
    let Some(leaf) = material.certs.first().cloned() else {
        report.rows.push(Row::fail(
            rows::READABLE,
            ReadError::NoCertificate.to_string(),
        ));
        return (report, None);
    };
    let info = match CertInfo::parse(leaf.as_ref()) {
        Ok(i) => i,
        Err(e) => {
            report.rows.push(Row::fail(rows::READABLE, e.to_string()));
            return (report, None);
        }
    };
    report.rows.push(Row::pass(rows::READABLE));

    report.rows.push(Row::check(
        rows::SIGNATURE,
        info.signature_algorithm == "SHA256withRSA",
        || {
            format!(
                "The certificate is signed with {}; SHA256RSA (sha256WithRSAEncryption) is required",
                info.signature_algorithm
            )
        },
    ));
    report.rows.push(Row::check(
        rows::KEY_SIZE,
        matches!(info.key, KeyAlgorithm::Rsa { bits: 2048 | 4096 }),
        || {
            format!(
                "The certificate key is {}; an RSA key of 2048 or 4096 bits is required",
                info.key
            )
        },
    ));
    report.rows.push(Row::check(
        rows::VALID_FROM,
        info.not_before <= input.now,
        || {
            format!(
                "This SSL certificate is not valid yet (valid from {}).",
                info.not_before_rfc3339()
            )
        },
    ));
    report.rows.push(Row::check(
        rows::VALID_TO,
        info.not_after > input.now,
        || EXPIRED.to_string(),
    ));
    let missing: Vec<&str> = ["CN", "C", "OU", "O"]
        .into_iter()
        .filter(|a| {
            info.subject_attribute(a)
                .is_none_or(|v| v.trim().is_empty())
        })
        .collect();
    report
        .rows
        .push(Row::check(rows::SUBJECT, missing.is_empty(), || {
            format!(
                "The certificate subject must contain CN, C, OU and O; missing: {}",
                missing.join(", ")
            )
        }));
    let cn = info.common_name.clone().unwrap_or_default();
    report
        .rows
        .push(Row::check(rows::NO_WILDCARD, !cn.contains('*'), || {
            format!("Wildcard certificates are not supported (CN={cn})")
        }));
    // What every TLS client checks: with an EKU, serverAuth must be in it (curl:
    // "unsuitable certificate purpose"), and the host name is matched against the
    // subject alternative names only (RFC 6125; the CN is ignored).
    let eku = info.extended_key_usage.clone().unwrap_or_default();
    report.rows.push(Row::check(
        rows::SERVER_AUTH,
        info.extended_key_usage.is_none()
            || eku
                .iter()
                .any(|u| u == "serverAuth" || u == "anyExtendedKeyUsage"),
        || {
            format!(
                "The certificate's extended key usage is {} without serverAuth: TLS clients refuse it as a server certificate (\"unsuitable certificate purpose\"); issue it with the serverAuth extended key usage",
                eku.join(", ")
            )
        },
    ));
    let hosts: Vec<&String> = info
        .subject_alt_names
        .iter()
        .filter(|n| !n.starts_with("email:") && !n.starts_with("URI:"))
        .collect();
    report.rows.push(Row::check(rows::HOST_NAMES, !hosts.is_empty(), || {
        "The certificate has no DNS name or IP address in its subject alternative names: TLS clients match the host they connect to against those only (not the Common Name); issue it with the host names as SANs".to_string()
    }));

    match &material.key {
        Ok(key) => {
            report.rows.push(Row::pass(rows::KEY_READABLE));
            report.rows.push(Row::check(
                rows::KEY_MATCHES,
                crate::keys::key_matches_certificate(key, leaf.as_ref()),
                || KEY_MISMATCH.to_string(),
            ));
        }
        Err(e) => {
            report
                .rows
                .push(Row::fail(rows::KEY_READABLE, e.to_string()));
            report.rows.push(Row::fail(
                rows::KEY_MATCHES,
                "The private key could not be read",
            ));
        }
    }

    let issuer = match chain_of_trust(&leaf, &material.certs[1..], material.chain_given) {
        Ok(issuer) => {
            report.rows.push(Row::pass(rows::CHAIN));
            issuer
        }
        Err(reason) => {
            report.rows.push(Row::fail(rows::CHAIN, reason));
            None
        }
    };

    let has_dp = !info.crl_distribution_points.is_empty();
    let mut dp_row = Row::check(rows::CRL_DP, has_dp, || {
        "The certificate has no CRL Distribution Point, which CRL validation requires".to_string()
    });
    if !input.crl_check {
        dp_row.required = false;
        if !has_dp {
            dp_row.reason = Some(
                "The certificate has no CRL Distribution Point (CRL validation is off)".into(),
            );
        }
    }
    report.rows.push(dp_row);

    let ctx = Context {
        leaf,
        serial_hex: info.serial_hex.clone(),
        issuer,
        crl_urls: info.crl_distribution_points.clone(),
    };
    (report, Some(ctx))
}

/// The certificates and key read from the input.
struct Material {
    /// Leaf first, then every other certificate given (crt extras, chain file).
    certs: Vec<CertificateDer<'static>>,
    key: Result<PrivateKeyDer<'static>, ReadError>,
    /// Whether any certificate besides the leaf was supplied.
    chain_given: bool,
}

fn read_material(input: &Input<'_>) -> Result<Material, ReadError> {
    let (mut certs, key) = match crate::pem::read_certificates(input.crt) {
        Ok(certs) => {
            let key = crate::pem::read_private_key(input.key, input.passphrase);
            (certs, key)
        }
        Err(cert_err) => {
            // Not a certificate: maybe a PKCS#12 keystore holding certificate and key.
            if crate::pem::is_pem(input.crt) || input.crt.first() != Some(&0x30) {
                return Err(cert_err);
            }
            let p12 = match crate::pem::read_pkcs12(input.crt, input.passphrase.unwrap_or("")) {
                Ok(p) => p,
                Err(ReadError::MalformedPkcs12(_)) => return Err(cert_err),
                Err(e) => return Err(e),
            };
            let key = match p12.key {
                Some(k) => Ok(k),
                None if !input.key.is_empty() => {
                    crate::pem::read_private_key(input.key, input.passphrase)
                }
                None => Err(ReadError::NoPrivateKey),
            };
            (p12.certificates, key)
        }
    };
    if let Some(chain) = input.chain.filter(|c| !c.is_empty()) {
        for c in crate::pem::read_certificates(chain)? {
            if !certs.contains(&c) {
                certs.push(c);
            }
        }
    }
    let chain_given = certs.len() > 1;
    Ok(Material {
        certs,
        key,
        chain_given,
    })
}

/// Follows issuers from `leaf` through `pool` (by name and signature, each issuer a CA)
/// until a self-signed root. Returns the leaf's direct issuer (None for a self-signed
/// leaf) or the sentence to show.
fn chain_of_trust(
    leaf: &CertificateDer<'static>,
    pool: &[CertificateDer<'static>],
    chain_given: bool,
) -> Result<Option<CertificateDer<'static>>, String> {
    let mut current = leaf.clone();
    let mut first_issuer = None;
    // A root is at most a handful of hops away; the bound also stops loops.
    for _ in 0..=pool.len().min(10) {
        if is_self_signed(current.as_ref()) {
            return Ok(first_issuer);
        }
        let next = pool.iter().find(|cand| {
            cand.as_ref() != current.as_ref()
                && issued_by_name(current.as_ref(), cand.as_ref())
                && is_ca(cand.as_ref())
                && crate::signature::is_signed_by(current.as_ref(), cand.as_ref())
        });
        match next {
            Some(n) => {
                if first_issuer.is_none() {
                    first_issuer = Some(n.clone());
                }
                current = n.clone();
            }
            None => break,
        }
    }
    if chain_given {
        Err(CHAIN_MISMATCH.to_string())
    } else {
        Err(CHAIN_NO_ROOT.to_string())
    }
}

fn is_self_signed(der: &[u8]) -> bool {
    issued_by_name(der, der) && crate::signature::is_signed_by(der, der)
}

fn issued_by_name(cert: &[u8], issuer: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) {
        (Ok((_, c)), Ok((_, i))) => c.issuer().as_raw() == i.subject().as_raw(),
        _ => false,
    }
}

fn is_ca(der: &[u8]) -> bool {
    CertInfo::parse(der).is_ok_and(|i| i.is_ca)
}
