//! `TrustStore`: an immutable snapshot of every tenant's trust anchors, CRLs and chain
//! policy, indexed by subject DN, Subject Key Identifier and fingerprint so that finding
//! the candidate anchors of a device chain is O(1) in the number of tenants and anchors.
//!
//! [`TrustStore::verify_device`] is the single place where a device chain is judged: the
//! broker's TLS verifier, the REST chain check and `certs verify` all call it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Serialize;
use x509_parser::prelude::*;

use crate::revocation::Crl;

/// Default chain-length limit: device certificate + uploaded CA, no intermediates.
pub const DEFAULT_MAX_CHAIN_LENGTH: u8 = 2;
/// The largest chain-length limit a tenant may choose.
pub const MAX_MAX_CHAIN_LENGTH: u8 = 10;
/// The longest chain the verifier can build whatever the tenant allows: webpki follows
/// at most 6 intermediates, so device + 6 intermediates + anchor. A limit of 9 or 10
/// therefore admits nothing a limit of 8 does not; a longer path is refused with
/// [`VerifyError::PathTooDeep`].
pub const VERIFIER_MAX_CHAIN_LENGTH: u8 = 8;
/// Characters a Common Name may not contain: it becomes an MQTT ClientId and part of
/// topic paths.
pub const FORBIDDEN_CN_CHARS: &[char] = &['+', '#', '/', '$', '\0'];

/// Whether an anchor may authenticate devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AnchorStatus {
    /// Devices chaining to it are accepted.
    Enabled,
    /// Devices chaining to it are refused.
    Disabled,
}

/// One uploaded CA certificate and its settings.
#[derive(Debug, Clone)]
pub struct AnchorSpec {
    /// The owning tenant.
    pub tenant: String,
    /// ENABLED or DISABLED.
    pub status: AnchorStatus,
    /// Devices chaining to it register themselves at first connect.
    pub auto_registration: bool,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

/// A tenant's chain policy and revocation settings.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    /// Maximum chain length: device + intermediates of the verified path + anchor
    /// (2..=10; see [`TrustStore::verify_device`] for how it counts, and
    /// [`VERIFIER_MAX_CHAIN_LENGTH`] for the longest path the verifier builds).
    pub max_chain_length: u8,
    /// Serial numbers (lowercase hex) the tenant revoked by hand.
    pub revoked_serials: HashSet<String>,
    /// Whether uploaded CRLs and the manual list are enforced.
    pub crl_enabled: bool,
    /// Blocked device Common Names: the broker refuses them at CONNECT and closes their
    /// live sessions (checked by the broker, not by [`TrustStore::verify_device`], so
    /// the device gets a proper MQTT reason code rather than a TLS alert).
    pub blocked_devices: HashSet<String>,
    /// When true, a ClientId different from the CN is replaced by the CN instead of
    /// being refused.
    pub client_id_override: bool,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            max_chain_length: DEFAULT_MAX_CHAIN_LENGTH,
            revoked_serials: HashSet::new(),
            crl_enabled: true,
            blocked_devices: HashSet::new(),
            client_id_override: false,
        }
    }
}

/// Why a device chain is refused. Each variant is a metric label and a log reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The device sent no certificate.
    #[error("no client certificate presented")]
    NoCertificate,
    /// A certificate in the chain is not valid DER.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// No uploaded anchor issued this chain.
    #[error("unknown issuer: no trusted certificate issued this chain")]
    UnknownIssuer,
    /// A signature in the chain does not verify.
    #[error("bad signature in the certificate chain")]
    BadSignature,
    /// A certificate in the chain has expired.
    #[error("certificate expired")]
    Expired,
    /// A certificate in the chain is not valid yet.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The trusted certificate itself has expired.
    #[error("the trusted certificate (anchor) has expired")]
    AnchorExpired,
    /// The chain is longer than the tenant allows.
    #[error("chain too long: {length} certificates, the tenant allows {max}")]
    ChainTooLong {
        /// Length of the verified path including device and anchor.
        length: usize,
        /// The tenant's limit.
        max: u8,
    },
    /// The path needs more intermediates than the verifier follows.
    #[error("chain too long: the verifier follows at most {VERIFIER_MAX_CHAIN_LENGTH} certificates (device, 6 intermediates, anchor)")]
    PathTooDeep,
    /// An intermediate's pathLenConstraint is exceeded.
    #[error("pathLenConstraint exceeded")]
    PathLenExceeded,
    /// An issuer in the chain is not a CA.
    #[error("issuer is not a CA")]
    IssuerNotCa,
    /// The device certificate is itself a CA (CA:true or keyCertSign).
    #[error("device certificate is a CA certificate")]
    DeviceIsCa,
    /// The device certificate's EKU excludes clientAuth.
    #[error("certificate not valid for client authentication")]
    NotForClientAuth,
    /// The matching anchor is DISABLED.
    #[error("trusted certificate is disabled")]
    AnchorDisabled,
    /// The matching anchor was deleted (live re-check).
    #[error("trusted certificate was removed")]
    AnchorRemoved,
    /// A certificate in the chain is revoked.
    #[error("certificate revoked")]
    Revoked,
    /// The device certificate has no Common Name.
    #[error("device certificate has no Common Name")]
    NoCommonName,
    /// The Common Name contains a character MQTT reserves.
    #[error("Common Name contains a forbidden character ({0:?})")]
    ForbiddenCnCharacter(char),
    /// Anchors of more than one tenant validate the chain (the same CA uploaded by two
    /// tenants, or one tenant uploaded a CA of another's chain): the device cannot be
    /// given to either, so it is refused.
    #[error("ambiguous tenant: trusted certificates of more than one tenant validate this chain")]
    AmbiguousTenant,
    /// An AuthorityKeyIdentifier in the chain is critical (RFC 5280 4.2.1.1).
    #[error("a certificate in the chain marks its AuthorityKeyIdentifier critical; RFC 5280 requires it non-critical")]
    CriticalAuthorityKeyId,
    /// A SubjectKeyIdentifier in the chain is critical (RFC 5280 4.2.1.2).
    #[error("a certificate in the chain marks its SubjectKeyIdentifier critical; RFC 5280 requires it non-critical")]
    CriticalSubjectKeyId,
    /// A certificate that is not self-signed has no AuthorityKeyIdentifier key id.
    #[error("a certificate in the chain is not self-signed and has no AuthorityKeyIdentifier key identifier (required by RFC 5280)")]
    MissingAuthorityKeyId,
    /// A CA certificate of the chain has no SubjectKeyIdentifier.
    #[error("a CA certificate in the chain has no SubjectKeyIdentifier (required by RFC 5280)")]
    MissingSubjectKeyId,
    /// policyConstraints present but not critical (RFC 5280 4.2.1.11).
    #[error("a certificate in the chain has a non-critical policyConstraints extension; RFC 5280 requires it critical")]
    PolicyConstraintsNotCritical,
    /// The device certificate's extKeyUsage is critical.
    #[error("the device certificate marks its ExtendedKeyUsage critical, which device certificates may not")]
    CriticalExtendedKeyUsage,
    /// A critical extension the verifier does not process (named with its OID).
    #[error(
        "a certificate in the chain has a critical extension this server does not process: {0}"
    )]
    UnsupportedCriticalExtension(String),
    /// Name constraints of a form the verifier does not evaluate (e.g. rfc822Name).
    #[error("the chain uses {0} name constraints, which this server does not evaluate, so it is refused")]
    UnsupportedNameConstraint(&'static str),
    /// A self-issued intermediate (e.g. a key-rollover certificate) the verifier
    /// would have to exempt from pathLenConstraint or name constraints.
    #[error("the chain holds a self-issued intermediate CA certificate; RFC 5280 exempts it from pathLenConstraint and name constraints, which this server cannot do, so the chain is refused")]
    SelfIssuedIntermediate,
    /// A name in the chain is outside an issuer's name constraints.
    #[error("a name in the chain violates the name constraints of an issuing CA")]
    NameConstraintViolation,
    /// Any other path-building failure.
    #[error("invalid certificate chain: {0}")]
    Invalid(String),
}

impl VerifyError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::NoCertificate => "no_certificate",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::AnchorExpired => "anchor_expired",
            VerifyError::ChainTooLong { .. } => "chain_too_long",
            VerifyError::PathTooDeep => "path_too_deep",
            VerifyError::PathLenExceeded => "path_len_exceeded",
            VerifyError::IssuerNotCa => "issuer_not_ca",
            VerifyError::DeviceIsCa => "device_is_ca",
            VerifyError::NotForClientAuth => "not_for_client_auth",
            VerifyError::AnchorDisabled => "anchor_disabled",
            VerifyError::AnchorRemoved => "anchor_removed",
            VerifyError::Revoked => "revoked",
            VerifyError::NoCommonName => "no_common_name",
            VerifyError::ForbiddenCnCharacter(_) => "forbidden_cn_character",
            VerifyError::AmbiguousTenant => "ambiguous_tenant",
            VerifyError::CriticalAuthorityKeyId => "critical_authority_key_id",
            VerifyError::CriticalSubjectKeyId => "critical_subject_key_id",
            VerifyError::MissingAuthorityKeyId => "missing_authority_key_id",
            VerifyError::MissingSubjectKeyId => "missing_subject_key_id",
            VerifyError::PolicyConstraintsNotCritical => "policy_constraints_not_critical",
            VerifyError::CriticalExtendedKeyUsage => "critical_extended_key_usage",
            VerifyError::UnsupportedCriticalExtension(_) => "unsupported_critical_extension",
            VerifyError::UnsupportedNameConstraint(_) => "unsupported_name_constraint",
            VerifyError::SelfIssuedIntermediate => "self_issued_intermediate",
            VerifyError::NameConstraintViolation => "name_constraint_violation",
            VerifyError::Invalid(_) => "invalid",
        }
    }
}

/// The identity of a verified device, parsed once at the handshake and carried by its
/// session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    /// The tenant owning the anchor.
    pub tenant: Arc<str>,
    /// The device certificate's Common Name (the MQTT ClientId).
    pub common_name: String,
    /// SHA-1 fingerprint of the anchor that verified the chain.
    pub anchor_fingerprint: String,
    /// SHA-1 fingerprint of the device certificate.
    pub fingerprint: String,
    /// Device certificate serial, lowercase hex.
    pub serial_hex: String,
    /// Device certificate subject DN.
    pub subject: String,
    /// Device certificate notAfter, Unix seconds.
    pub not_after: i64,
    /// The earliest notAfter on the verified path (device, intermediates, anchor), Unix
    /// seconds: the session ends then, whichever certificate expires first.
    pub path_not_after: i64,
    /// Whether the anchor registers devices at first connect.
    pub auto_registration: bool,
    /// Verified path length including device and anchor.
    pub chain_length: usize,
    /// (issuer DN raw, serial hex) of the device and each intermediate, for re-checks.
    #[serde(skip)]
    pub path_serials: Vec<(Vec<u8>, String)>,
    /// SHA-1 fingerprints of the path's intermediates, for re-checks: one that another
    /// tenant has since uploaded as an anchor makes the session ambiguous.
    #[serde(skip)]
    pub path_fingerprints: Vec<String>,
}

/// What path building found between a device certificate and an anchor, read once.
struct VerifiedPath<'a> {
    /// The intermediates on the path, device side first.
    intermediates: &'a [CertificateDer<'a>],
    /// (issuer DN raw, serial hex) of the device and each intermediate.
    serials: Vec<(Vec<u8>, String)>,
    /// The earliest notAfter of device, intermediates and anchor.
    not_after: i64,
}

struct AnchorEntry {
    tenant: Arc<str>,
    fingerprint: String,
    status: AnchorStatus,
    auto_registration: bool,
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    not_after: i64,
    /// BasicConstraints CA:true, and keyCertSign when KeyUsage is present: webpki takes
    /// an anchor's word for it, so these are checked here.
    can_sign_certs: bool,
    /// The anchor's pathLenConstraint (webpki does not enforce it for anchors).
    path_len: Option<u32>,
    /// The anchor's SubjectPublicKeyInfo, DER (for the quick "did it sign" check).
    spki_der: Vec<u8>,
    /// Set at build: an anchor of another tenant signed this anchor, so every chain this
    /// anchor validates would also validate under that tenant (given the anchor as an
    /// intermediate): such chains are refused as ambiguous.
    issued_by_other_tenant: bool,
}

/// Builds a [`TrustStore`].
#[derive(Default)]
pub struct TrustStoreBuilder {
    anchors: Vec<AnchorEntry>,
    tenants: HashMap<Arc<str>, TenantPolicy>,
    crls: Vec<(Arc<str>, Crl)>,
}

/// Why an anchor or CRL could not be added to a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The certificate cannot be used as a trust anchor.
    #[error("not usable as a trust anchor: {0}")]
    BadAnchor(String),
    /// The CRL is not signed by any of the tenant's anchors.
    #[error("CRL is not signed by any trusted certificate of tenant {0}")]
    CrlNotFromTenantAnchor(String),
}

impl TrustStoreBuilder {
    /// Sets a tenant's policy (tenants without one get the default).
    pub fn tenant(&mut self, tenant: &str, mut policy: TenantPolicy) -> &mut Self {
        // Serials compare as lowercase hex without separators or leading zero bytes
        // (as `CertInfo::serial_hex`), whatever form the operator typed.
        policy.revoked_serials = policy
            .revoked_serials
            .iter()
            .map(|s| crate::info::normalize_serial_hex(s).unwrap_or_else(|| s.clone()))
            .collect();
        self.tenants.insert(Arc::from(tenant), policy);
        self
    }

    /// Adds an anchor.
    pub fn anchor(&mut self, spec: AnchorSpec) -> Result<&mut Self, BuildError> {
        let der = CertificateDer::from(spec.cert_der);
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| BuildError::BadAnchor(format!("{e:?}")))?
            .to_owned();
        let (_, x) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| BuildError::BadAnchor(e.to_string()))?;
        let not_after = x.validity().not_after.timestamp();
        let key_cert_sign = x
            .key_usage()
            .ok()
            .flatten()
            .is_none_or(|ku| ku.value.key_cert_sign());
        let path_len = x
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);
        let can_sign_certs = x.is_ca() && key_cert_sign;
        let spki_der = x.public_key().raw.to_vec();
        let tenant = self.intern(&spec.tenant);
        self.anchors.push(AnchorEntry {
            tenant,
            fingerprint: crate::info::fingerprint_sha1(der.as_ref()),
            status: spec.status,
            auto_registration: spec.auto_registration,
            der,
            anchor,
            not_after,
            can_sign_certs,
            path_len,
            spki_der,
            issued_by_other_tenant: false,
        });
        Ok(self)
    }

    /// Adds a CRL for a tenant; it must be signed by one of that tenant's anchors
    /// (added before).
    pub fn crl(&mut self, tenant: &str, crl: Crl) -> Result<&mut Self, BuildError> {
        let signed = self
            .anchors
            .iter()
            .filter(|a| &*a.tenant == tenant)
            .any(|a| crl.verify_signed_by(a.der.as_ref()).is_ok());
        if !signed {
            return Err(BuildError::CrlNotFromTenantAnchor(tenant.to_string()));
        }
        let t = self.intern(tenant);
        self.crls.push((t, crl));
        Ok(self)
    }

    /// Adds a CRL issued by one of the tenant's CAs below an anchor (an intermediate).
    /// `issuers` holds the CRL's issuer and any CAs between it and one of the tenant's
    /// anchors (added before); each link is checked by signature. A CRL signed by an
    /// anchor itself is accepted as [`TrustStoreBuilder::crl`] accepts it.
    pub fn crl_from_intermediate(
        &mut self,
        tenant: &str,
        crl: Crl,
        issuers: &[CertificateDer<'_>],
    ) -> Result<&mut Self, BuildError> {
        let tenant_anchors: Vec<&[u8]> = self
            .anchors
            .iter()
            .filter(|a| &*a.tenant == tenant)
            .map(|a| a.der.as_ref())
            .collect();
        let reaches_anchor = |start: &[u8]| {
            let mut current = start;
            // Bounded walk: a chain is never longer than the largest tenant limit.
            for _ in 0..=MAX_MAX_CHAIN_LENGTH {
                if tenant_anchors
                    .iter()
                    .any(|a| *a == current || crate::signature::is_signed_by(current, a))
                {
                    return true;
                }
                match issuers.iter().find(|c| {
                    c.as_ref() != current && crate::signature::is_signed_by(current, c.as_ref())
                }) {
                    Some(next) => current = next.as_ref(),
                    None => return false,
                }
            }
            false
        };
        let signed = tenant_anchors
            .iter()
            .any(|a| crl.verify_signed_by(a).is_ok())
            || issuers.iter().any(|c| {
                is_ca_cert(c.as_ref())
                    && crl.verify_signed_by(c.as_ref()).is_ok()
                    && reaches_anchor(c.as_ref())
            });
        if !signed {
            return Err(BuildError::CrlNotFromTenantAnchor(tenant.to_string()));
        }
        let t = self.intern(tenant);
        self.crls.push((t, crl));
        Ok(self)
    }

    fn intern(&mut self, tenant: &str) -> Arc<str> {
        if let Some((k, _)) = self.tenants.get_key_value(tenant) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(tenant);
        self.tenants.insert(k.clone(), TenantPolicy::default());
        k
    }

    /// Freezes the snapshot and builds the indexes.
    pub fn build(self) -> TrustStore {
        let mut by_subject: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        let mut by_ski: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        let mut by_fingerprint: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in self.anchors.iter().enumerate() {
            by_subject
                .entry(a.anchor.subject.as_ref().to_vec())
                .or_default()
                .push(i);
            if let Some(ski) = subject_key_id(a.der.as_ref()) {
                by_ski.entry(ski).or_default().push(i);
            }
            // The same certificate may be uploaded by more than one tenant.
            by_fingerprint
                .entry(a.fingerprint.clone())
                .or_default()
                .push(i);
        }
        let mut revoked: HashMap<(Arc<str>, Vec<u8>), HashSet<String>> = HashMap::new();
        for (tenant, crl) in self.crls {
            revoked
                .entry((tenant, crl.issuer_raw.clone()))
                .or_default()
                .extend(crl.revoked.into_iter().map(|r| r.serial_hex));
        }
        let by_subject = group_index(by_subject, &self.anchors);
        let by_ski = group_index(by_ski, &self.anchors);
        let by_fingerprint_grouped = group_index(by_fingerprint.clone(), &self.anchors);
        let mut anchors = self.anchors;
        let foreign: Vec<bool> = anchors
            .iter()
            .map(|a| issued_by_other_tenant(a, &anchors, &by_ski, &by_subject))
            .collect();
        for (a, f) in anchors.iter_mut().zip(foreign) {
            a.issued_by_other_tenant = f;
        }
        TrustStore {
            anchors,
            by_subject,
            by_ski,
            by_fingerprint,
            by_fingerprint_grouped,
            tenants: self.tenants,
            revoked,
        }
    }
}

/// Whether `parsed[from]` is the leaf or signed a presented certificate that is, or
/// that signed one that is, ... (each step: the child's issuer is the parent's subject
/// and the parent's key verifies the child's signature).
fn signs_down_to_leaf(parsed: &[Option<X509Certificate<'_>>], from: usize) -> bool {
    let mut at = from;
    for _ in 0..parsed.len() {
        if at == 0 {
            return true;
        }
        let Some(parent) = parsed[at].as_ref() else {
            return false;
        };
        let child = (0..parsed.len()).find(|&j| {
            j != at
                && parsed[j].as_ref().is_some_and(|x| {
                    x.issuer() == parent.subject()
                        && crate::signature::verify_with_spki(
                            &parent.tbs_certificate.subject_pki,
                            &x.signature_algorithm.algorithm.to_id_string(),
                            x.tbs_certificate.as_ref(),
                            &x.signature_value.data,
                        )
                        .is_ok()
                })
        });
        match child {
            Some(j) => at = j,
            None => return false,
        }
    }
    false
}

/// True when an anchor of another tenant signed `entry` (found by AKI or issuer DN,
/// bounded as the device candidate search is, confirmed by signature).
fn issued_by_other_tenant(
    entry: &AnchorEntry,
    anchors: &[AnchorEntry],
    by_ski: &HashMap<Vec<u8>, Grouped>,
    by_subject: &HashMap<Vec<u8>, Grouped>,
) -> bool {
    let Ok((_, x)) = X509Certificate::from_der(entry.der.as_ref()) else {
        return false;
    };
    if x.subject().as_raw() == x.issuer().as_raw() {
        return false;
    }
    let aki = authority_key_id(&x);
    let groups = aki
        .and_then(|k| by_ski.get(k))
        .into_iter()
        .chain(by_subject.get(name_contents(x.issuer().as_raw())))
        .flatten()
        .filter(|(t, _)| *t != entry.tenant)
        .take(MAX_CANDIDATES);
    for (_, list) in groups {
        for &i in list.iter().take(MAX_CANDIDATES_PER_TENANT) {
            let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(&anchors[i].spki_der) else {
                continue;
            };
            if crate::signature::verify_with_spki(
                &spki,
                &x.signature_algorithm.algorithm.to_id_string(),
                x.tbs_certificate.as_ref(),
                &x.signature_value.data,
            )
            .is_ok()
            {
                return true;
            }
        }
    }
    false
}

/// The key identifier of a certificate's AuthorityKeyIdentifier, if any.
fn authority_key_id<'a>(x: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })
}

/// The anchors that share one index key (subject DN, SKI or fingerprint), grouped by
/// tenant in order of first upload, so that candidate search can take a bounded number
/// from each tenant without walking one tenant's long list.
type Grouped = Vec<(Arc<str>, Vec<usize>)>;

fn group_index<K: std::hash::Hash + Eq>(
    index: HashMap<K, Vec<usize>>,
    anchors: &[AnchorEntry],
) -> HashMap<K, Grouped> {
    index
        .into_iter()
        .map(|(k, v)| {
            let mut groups: Grouped = Vec::new();
            for i in v {
                let t = &anchors[i].tenant;
                match groups.iter_mut().find(|(g, _)| g == t) {
                    Some((_, list)) => list.push(i),
                    None => groups.push((t.clone(), vec![i])),
                }
            }
            (k, groups)
        })
        .collect()
}

/// An immutable, indexed snapshot of all tenants' trust anchors, policies and CRLs.
pub struct TrustStore {
    anchors: Vec<AnchorEntry>,
    /// Anchor subject DN (the value inside the Name SEQUENCE, as webpki stores it) ->
    /// anchors, grouped by tenant.
    by_subject: HashMap<Vec<u8>, Grouped>,
    /// Anchor Subject Key Identifier -> anchors, grouped by tenant.
    by_ski: HashMap<Vec<u8>, Grouped>,
    /// SHA-1 fingerprint -> anchors (the same certificate may belong to several tenants).
    by_fingerprint: HashMap<String, Vec<usize>>,
    /// The same, grouped by tenant, for candidate search.
    by_fingerprint_grouped: HashMap<String, Grouped>,
    tenants: HashMap<Arc<str>, TenantPolicy>,
    /// (tenant, issuer DN raw) -> revoked serials (lowercase hex).
    revoked: HashMap<(Arc<str>, Vec<u8>), HashSet<String>>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors.len())
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl Default for TrustStore {
    fn default() -> Self {
        TrustStoreBuilder::default().build()
    }
}

/// The most presented certificates we look at; anything longer is refused before any
/// signature work (10 is the largest tenant limit, plus the anchor itself).
const MAX_PRESENTED: usize = MAX_MAX_CHAIN_LENGTH as usize + 1;

/// Candidate anchors taken from one tenant for one presented certificate (one index
/// key: fingerprint, SKI or subject DN). A tenant's look-alikes of another tenant's CA
/// (same DN, even the same SKI bytes) cost at most this many signature checks each.
pub const MAX_CANDIDATES_PER_TENANT: usize = 4;

/// Candidate anchors whose signature is checked for one chain, over all tenants. They
/// are taken round-robin across tenants (each tenant's first candidate, then each
/// tenant's second, ...), so one tenant's look-alikes only take its own turns: pushing
/// another tenant's anchor out of the budget would take look-alikes uploaded by
/// `MAX_CANDIDATES` different tenants, all named by the same chain. Per chain the work
/// is then at most `MAX_CANDIDATES` quick signature checks and as many webpki path
/// builds, at most [`MAX_PATHS_PER_TENANT`] of them per tenant (and only for anchors
/// whose key really signed a presented certificate).
pub const MAX_CANDIDATES: usize = 64;

/// Anchors of one tenant that webpki builds a path to for one chain (after the quick
/// signature check, so only anchors whose key really signed a presented certificate, or
/// that were presented). Each webpki run spends up to its own budget of 100 signature
/// checks, so this bounds what one tenant's uploads (many certificates of one key) can
/// make a handshake cost: at most 4 runs per tenant, the tenant's most direct issuers
/// first.
pub const MAX_PATHS_PER_TENANT: usize = 4;

/// An anchor that may have issued presented certificate `child` (`None`: the presented
/// certificate is the anchor itself).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Candidate {
    anchor: usize,
    child: Option<usize>,
}

impl TrustStore {
    /// Starts a builder.
    pub fn builder() -> TrustStoreBuilder {
        TrustStoreBuilder::default()
    }

    /// Number of anchors.
    pub fn anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// Number of anchors per tenant (for metrics).
    pub fn anchors_per_tenant(&self) -> HashMap<Arc<str>, usize> {
        let mut m = HashMap::new();
        for a in &self.anchors {
            *m.entry(a.tenant.clone()).or_insert(0) += 1;
        }
        m
    }

    /// A tenant's policy, if the tenant is known to this snapshot.
    pub fn policy(&self, tenant: &str) -> Option<&TenantPolicy> {
        self.tenants.get(tenant)
    }

    /// True when the tenant blocked this device Common Name.
    pub fn is_blocked(&self, tenant: &str, common_name: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|p| p.blocked_devices.contains(common_name))
    }

    /// Cheap pre-check used before any signature work: does any certificate of the
    /// presented chain name an issuer (by SKI/AKI or DN) that is an uploaded anchor, or
    /// is one?
    pub fn has_candidate_issuer(&self, chain: &[CertificateDer<'_>]) -> bool {
        chain.iter().take(MAX_PRESENTED).any(|c| {
            let Ok((_, x)) = X509Certificate::from_der(c.as_ref()) else {
                return false;
            };
            self.lookups(c.as_ref(), &x)
                .iter()
                .any(|(groups, _)| groups.is_some_and(|g| !g.is_empty()))
        })
    }

    /// The tenants one of whose trusted certificates starts a chain of signatures down
    /// to the presented leaf (the anchor signed the leaf, or a presented certificate
    /// that signed the next one down to the leaf), in order of first appearance: whom a
    /// refused device belongs to, for the refusal's log line and the tenant's list of
    /// recent refusals. Naming a tenant's CA (its subject, key identifier, the CA
    /// certificate itself), or sending along a certificate the tenant did sign, is not
    /// enough: all of those are public, and anyone could then write a leaf of their
    /// making into that tenant's refusals. Empty for an unknown issuer or a look-alike.
    pub fn candidate_tenants(&self, chain: &[CertificateDer<'_>]) -> Vec<Arc<str>> {
        let chain = &chain[..chain.len().min(MAX_PRESENTED)];
        let parsed: Vec<Option<X509Certificate<'_>>> = chain
            .iter()
            .map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, x)| x))
            .collect();
        let mut tenants: Vec<Arc<str>> = Vec::new();
        for c in self.candidates(chain, &parsed) {
            let signed = c.child.is_some_and(|ci| {
                chain[ci].as_ref() != self.anchors[c.anchor].der.as_ref()
                    && parsed[ci]
                        .as_ref()
                        .is_some_and(|x| self.signed(c.anchor, x))
                    && signs_down_to_leaf(&parsed, ci)
            });
            if !signed {
                continue;
            }
            let t = &self.anchors[c.anchor].tenant;
            if !tenants.contains(t) {
                tenants.push(t.clone());
            }
        }
        tenants
    }

    /// Verifies a device chain at `now` (leaf first, optionally followed by
    /// intermediates and the uploaded CA, as devices are told to send).
    ///
    /// Path building, and why no tenant's upload can capture or break another tenant's
    /// devices:
    ///
    /// 1. Candidate anchors are collected from **every** presented certificate: the
    ///    anchors that are that certificate (fingerprint), whose SKI equals its AKI
    ///    (tried first), and whose subject equals its issuer DN. Hash lookups only, so
    ///    the cost does not grow with the number of anchors. At most
    ///    [`MAX_CANDIDATES_PER_TENANT`] per tenant per presented certificate and index
    ///    key, and [`MAX_CANDIDATES`] in all, taken round-robin across tenants.
    /// 2. A candidate named as an issuer is kept only if its key really signed that
    ///    certificate: a look-alike (same DN, even the same SKI, another key) is not an
    ///    issuer of the chain and drops out without an error, so the verdict is the one
    ///    given without it. (With a signature algorithm the quick check does not know,
    ///    e.g. RSA-PSS, the candidate goes on to webpki; its failure there ranks below
    ///    every other reason and never masks another candidate's success.)
    /// 3. Every remaining candidate is tried, up to [`MAX_PATHS_PER_TENANT`] per tenant
    ///    (webpki path building through the presented intermediates). When anchors of more than one tenant validate the
    ///    chain, whatever their status or policy, the chain is refused with
    ///    [`VerifyError::AmbiguousTenant`]: fail closed, never "first wins". The same
    ///    holds when the validating anchor was itself signed by another tenant's anchor
    ///    (found when the snapshot is built): that tenant would validate the chain too
    ///    had the device sent the anchor along.
    /// 4. Otherwise the one tenant's validating anchors are judged by its policy
    ///    (the RFC 5280 rules of [`crate::rfc5280`] on the path, then status, chain
    ///    length, revocation, Common Name); the first that admits the device wins, else
    ///    the most specific reason is returned.
    ///
    /// The chain length a tenant limits counts the device certificate, every
    /// intermediate of the verified path and the anchor, whether or not the device sent
    /// the anchor (a sent copy is not counted twice, certificates sent but not on the
    /// path are not counted); self-issued intermediates count too. Whatever the tenant
    /// allows, the verifier builds paths of at most [`VERIFIER_MAX_CHAIN_LENGTH`]
    /// certificates, and more than `MAX_MAX_CHAIN_LENGTH + 1` presented certificates
    /// are refused before any signature work. pathLenConstraint, by contrast, counts as
    /// RFC 5280 does: only the intermediates below the constraining CA, self-issued ones
    /// excepted.
    pub fn verify_device(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<DeviceIdentity, VerifyError> {
        let leaf = chain.first().ok_or(VerifyError::NoCertificate)?;
        if chain.len() > MAX_PRESENTED {
            return Err(VerifyError::ChainTooLong {
                length: chain.len(),
                max: MAX_MAX_CHAIN_LENGTH,
            });
        }
        let (_, leaf_x) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let leaf_key_cert_sign = leaf_x
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|ku| ku.value.key_cert_sign());
        if leaf_x.is_ca() || leaf_key_cert_sign {
            return Err(VerifyError::DeviceIsCa);
        }
        // Presented certificates after the leaf that do not parse take no part in the
        // candidate search (webpki ignores them as issuers too).
        let parsed: Vec<Option<X509Certificate<'_>>> = std::iter::once(Some(leaf_x.clone()))
            .chain(
                chain[1..]
                    .iter()
                    .map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, x)| x)),
            )
            .collect();

        let candidates = self.candidates(chain, &parsed);
        if candidates.is_empty() {
            return Err(VerifyError::UnknownIssuer);
        }
        // Step 2: keep anchors that are a presented certificate or signed one, at most
        // MAX_PATHS_PER_TENANT per tenant. With a single candidate anchor (the usual
        // case) there is nothing to choose between: it goes straight to path building,
        // which checks the same signature, and the check here only runs if that fails,
        // to give the answer the filter gives (`UnknownIssuer` for an anchor that signed
        // none of the presented certificates).
        let single = candidates.iter().all(|c| c.anchor == candidates[0].anchor);
        let signed = |c: &Candidate| match c.child {
            None => true,
            Some(ci) => parsed[ci]
                .as_ref()
                .is_some_and(|x| self.may_have_signed(c.anchor, x)),
        };
        let mut survivors: Vec<usize> = Vec::new();
        for c in candidates.iter().filter(|_| !single) {
            let tenant = &self.anchors[c.anchor].tenant;
            if survivors.contains(&c.anchor)
                || survivors
                    .iter()
                    .filter(|s| self.anchors[**s].tenant == *tenant)
                    .count()
                    >= MAX_PATHS_PER_TENANT
            {
                continue;
            }
            if signed(c) {
                survivors.push(c.anchor);
            }
        }
        if single {
            survivors.push(candidates[0].anchor);
        }

        // Step 3: every survivor is tried.
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            crate::rfc5280::explain_webpki(&e, &parsed[..1], None)
                .unwrap_or_else(|| VerifyError::Malformed(format!("{e:?}")))
        })?;
        let mut error = None;
        let mut validated: Vec<(usize, Vec<CertificateDer<'static>>)> = Vec::new();
        for idx in survivors {
            let entry = &self.anchors[idx];
            let intermediates: Vec<CertificateDer<'_>> = chain[1..]
                .iter()
                .filter(|c| c.as_ref() != entry.der.as_ref())
                .map(|c| CertificateDer::from(c.as_ref()))
                .collect();
            let result = ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&entry.anchor),
                &intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            );
            match result {
                Ok(path) => validated.push((
                    idx,
                    path.intermediate_certificates()
                        .map(|c| c.der().into_owned())
                        .collect(),
                )),
                Err(e) => {
                    let anchor_x = X509Certificate::from_der(entry.der.as_ref())
                        .ok()
                        .map(|(_, x)| x);
                    let e = crate::rfc5280::explain_webpki(&e, &parsed, anchor_x.as_ref())
                        .unwrap_or_else(|| map_webpki(e));
                    keep_most_specific(&mut error, e)
                }
            }
        }
        let Some((first, _)) = validated.first() else {
            if single && !candidates.iter().any(signed) {
                return Err(VerifyError::UnknownIssuer);
            }
            return Err(error.unwrap_or(VerifyError::UnknownIssuer));
        };
        let tenant = &self.anchors[*first].tenant;
        if validated.iter().any(|(i, _)| {
            self.anchors[*i].tenant != *tenant || self.anchors[*i].issued_by_other_tenant
        }) {
            return Err(VerifyError::AmbiguousTenant);
        }

        // Step 4: the one tenant's policy.
        let mut error = None;
        for (idx, inter) in &validated {
            let entry = &self.anchors[*idx];
            // Each intermediate is parsed once, for the revocation keys, the earliest
            // notAfter and the RFC 5280 rules.
            let inter_x: Vec<X509Certificate<'_>> = inter
                .iter()
                .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, x)| x))
                .collect();
            let mut path_serials = vec![(
                leaf_x.issuer().as_raw().to_vec(),
                crate::info::CertInfo::from_x509(&leaf_x, leaf.as_ref()).serial_hex,
            )];
            path_serials.extend(inter_x.iter().map(|x| {
                (
                    x.issuer().as_raw().to_vec(),
                    hex::encode(strip_sign(x.raw_serial())),
                )
            }));
            let path_not_after = inter_x
                .iter()
                .map(|x| x.validity().not_after.timestamp())
                .chain([leaf_x.validity().not_after.timestamp(), entry.not_after])
                .min()
                .unwrap_or(entry.not_after);
            let anchor_x = X509Certificate::from_der(entry.der.as_ref())
                .ok()
                .map(|(_, x)| x);
            if let Err(e) = crate::rfc5280::check_path(&leaf_x, &inter_x, anchor_x.as_ref()) {
                keep_most_specific(&mut error, e);
                continue;
            }
            let path = VerifiedPath {
                intermediates: inter,
                serials: path_serials,
                not_after: path_not_after,
            };
            match self.finish(entry, &leaf_x, leaf.as_ref(), path, now) {
                Ok(id) => return Ok(id),
                Err(e) => keep_most_specific(&mut error, e),
            }
        }
        Err(error.unwrap_or(VerifyError::UnknownIssuer))
    }

    /// The index lookups for one presented certificate, most trusted first: the anchors
    /// that are this certificate, those whose SKI is its AKI, those whose subject is its
    /// issuer DN. The flag tells whether the anchors found are issuers (true) or the
    /// certificate itself (false).
    fn lookups(&self, der: &[u8], x: &X509Certificate<'_>) -> [(Option<&Grouped>, bool); 3] {
        let fp = crate::info::fingerprint_sha1(der);
        let aki = authority_key_id(x);
        [
            (self.by_fingerprint_grouped.get(&fp), false),
            (aki.and_then(|k| self.by_ski.get(k)), true),
            // webpki stores the subject as the contents of the Name SEQUENCE.
            (
                self.by_subject.get(name_contents(x.issuer().as_raw())),
                true,
            ),
        ]
    }

    /// Candidate anchors for the presented chain, bounded as [`MAX_CANDIDATES`] and
    /// [`MAX_CANDIDATES_PER_TENANT`] say, taken round-robin across tenants.
    fn candidates(
        &self,
        chain: &[CertificateDer<'_>],
        parsed: &[Option<X509Certificate<'_>>],
    ) -> Vec<Candidate> {
        // Per tenant, in order of first appearance: its candidates in priority order.
        let mut per_tenant: Vec<(&Arc<str>, Vec<Candidate>)> = Vec::new();
        for (ci, (cert, x)) in chain.iter().zip(parsed).enumerate() {
            let Some(x) = x else { continue };
            for (groups, is_issuer) in self.lookups(cert.as_ref(), x) {
                // Walking the tenant groups is bounded too: a key shared by more
                // tenants than the whole budget cannot yield more candidates anyway.
                for (tenant, list) in groups.into_iter().flatten().take(MAX_CANDIDATES) {
                    let slot = match per_tenant.iter().position(|(t, _)| *t == tenant) {
                        Some(p) => p,
                        None => {
                            per_tenant.push((tenant, Vec::new()));
                            per_tenant.len() - 1
                        }
                    };
                    let mine = &mut per_tenant[slot].1;
                    for &anchor in list.iter().take(MAX_CANDIDATES_PER_TENANT) {
                        let c = Candidate {
                            anchor,
                            child: is_issuer.then_some(ci),
                        };
                        if !mine.contains(&c) {
                            mine.push(c);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        let longest = per_tenant.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        'rounds: for round in 0..longest {
            for (_, list) in &per_tenant {
                if let Some(c) = list.get(round) {
                    if out.len() == MAX_CANDIDATES {
                        break 'rounds;
                    }
                    out.push(*c);
                }
            }
        }
        out
    }

    /// False only when the anchor's key certainly did not sign `cert`: the signature
    /// does not verify, or the signature algorithm is for another kind of key. An
    /// algorithm the quick check does not know (RSA-PSS, ECDSA with SHA-512) is left to
    /// webpki.
    /// Whether the anchor's key verifiably signed `cert` (unlike
    /// [`TrustStore::may_have_signed`], an unreadable key or algorithm counts as no).
    fn signed(&self, anchor: usize, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(&self.anchors[anchor].spki_der) else {
            return false;
        };
        crate::signature::verify_with_spki(
            &spki,
            &cert.signature_algorithm.algorithm.to_id_string(),
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
        )
        .is_ok()
    }

    fn may_have_signed(&self, anchor: usize, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(&self.anchors[anchor].spki_der) else {
            return true;
        };
        let alg = cert.signature_algorithm.algorithm.to_id_string();
        match crate::signature::verify_with_spki(
            &spki,
            &alg,
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
        ) {
            Ok(()) => true,
            Err(crate::signature::SignatureError::Invalid) => false,
            Err(crate::signature::SignatureError::UnsupportedAlgorithm(_)) => {
                use crate::info::KeyAlgorithm as K;
                let key = crate::info::key_algorithm(&spki);
                if alg.starts_with("1.2.840.10045.4.") {
                    matches!(key, K::EcP256 | K::EcP384 | K::EcOther { .. })
                } else if alg.starts_with("1.2.840.113549.1.1.") {
                    matches!(key, K::Rsa { .. })
                } else if alg == "1.3.101.112" {
                    matches!(key, K::Ed25519)
                } else {
                    true
                }
            }
        }
    }

    fn finish(
        &self,
        entry: &AnchorEntry,
        leaf_x: &X509Certificate<'_>,
        leaf_der: &[u8],
        path: VerifiedPath<'_>,
        now: UnixTime,
    ) -> Result<DeviceIdentity, VerifyError> {
        let VerifiedPath {
            intermediates,
            serials: path_serials,
            not_after: path_not_after,
        } = path;
        if !entry.can_sign_certs {
            return Err(VerifyError::IssuerNotCa);
        }
        let chain_length = intermediates.len() + 2;
        // RFC 5280 6.1.4 (l): self-issued intermediates do not count against the
        // anchor's pathLenConstraint.
        let counted = intermediates
            .iter()
            .filter(|c| !is_self_issued(c.as_ref()))
            .count();
        if entry.path_len.is_some_and(|n| counted > n as usize) {
            return Err(VerifyError::PathLenExceeded);
        }
        let policy = self.tenants.get(&entry.tenant);
        let max = policy.map_or(DEFAULT_MAX_CHAIN_LENGTH, |p| p.max_chain_length);
        if chain_length > max as usize {
            return Err(VerifyError::ChainTooLong {
                length: chain_length,
                max,
            });
        }
        if (now.as_secs() as i64) > entry.not_after {
            return Err(VerifyError::AnchorExpired);
        }
        if entry.status == AnchorStatus::Disabled {
            return Err(VerifyError::AnchorDisabled);
        }
        self.check_revoked(&entry.tenant, &path_serials)?;
        let common_name = crate::info::common_name(leaf_x.subject())
            .filter(|cn| !cn.is_empty())
            .ok_or(VerifyError::NoCommonName)?;
        if let Some(c) = common_name.chars().find(|c| FORBIDDEN_CN_CHARS.contains(c)) {
            return Err(VerifyError::ForbiddenCnCharacter(c));
        }
        Ok(DeviceIdentity {
            tenant: entry.tenant.clone(),
            common_name,
            anchor_fingerprint: entry.fingerprint.clone(),
            fingerprint: crate::info::fingerprint_sha1(leaf_der),
            serial_hex: path_serials[0].1.clone(),
            subject: leaf_x.subject().to_string(),
            not_after: leaf_x.validity().not_after.timestamp(),
            path_not_after,
            auto_registration: entry.auto_registration,
            chain_length,
            path_serials,
            path_fingerprints: intermediates
                .iter()
                .map(|c| crate::info::fingerprint_sha1(c.as_ref()))
                .collect(),
        })
    }

    fn check_revoked(
        &self,
        tenant: &Arc<str>,
        path: &[(Vec<u8>, String)],
    ) -> Result<(), VerifyError> {
        let Some(policy) = self.tenants.get(tenant) else {
            return Ok(());
        };
        if !policy.crl_enabled {
            return Ok(());
        }
        for (issuer, serial) in path {
            if policy.revoked_serials.contains(serial) {
                return Err(VerifyError::Revoked);
            }
            if self
                .revoked
                .get(&(tenant.clone(), issuer.clone()))
                .is_some_and(|s| s.contains(serial))
            {
                return Err(VerifyError::Revoked);
            }
        }
        Ok(())
    }

    /// Re-checks a live session's identity against this (newer) snapshot: the anchor
    /// must still exist for the same tenant, no other tenant may now hold the anchor or
    /// an intermediate of the path as an anchor (nor have signed the anchor), the anchor
    /// must be enabled and unexpired, and nothing in the path may be revoked.
    pub fn recheck(&self, id: &DeviceIdentity, now: UnixTime) -> Result<(), VerifyError> {
        let entry = self
            .by_fingerprint
            .get(&id.anchor_fingerprint)
            .into_iter()
            .flatten()
            .map(|i| &self.anchors[*i])
            .find(|e| e.tenant == id.tenant)
            .ok_or(VerifyError::AnchorRemoved)?;
        let claimed_elsewhere = |fp: &String| {
            self.by_fingerprint
                .get(fp)
                .into_iter()
                .flatten()
                .any(|i| self.anchors[*i].tenant != id.tenant)
        };
        if entry.issued_by_other_tenant
            || std::iter::once(&id.anchor_fingerprint)
                .chain(&id.path_fingerprints)
                .any(claimed_elsewhere)
        {
            return Err(VerifyError::AmbiguousTenant);
        }
        if entry.status == AnchorStatus::Disabled {
            return Err(VerifyError::AnchorDisabled);
        }
        if (now.as_secs() as i64) > entry.not_after {
            return Err(VerifyError::AnchorExpired);
        }
        if (now.as_secs() as i64) > id.path_not_after {
            return Err(VerifyError::Expired);
        }
        self.check_revoked(&entry.tenant, &id.path_serials)
    }

    /// Anchor lookup by SHA-1 fingerprint: (tenant, status).
    pub fn anchor(&self, fingerprint: &str) -> Option<(Arc<str>, AnchorStatus)> {
        self.by_fingerprint
            .get(fingerprint)
            .and_then(|v| v.first())
            .map(|i| (self.anchors[*i].tenant.clone(), self.anchors[*i].status))
    }

    /// The DER of the anchor with this SHA-1 fingerprint (e.g. to check a CRL it signed).
    pub fn anchor_der(&self, fingerprint: &str) -> Option<&[u8]> {
        self.by_fingerprint
            .get(fingerprint)
            .and_then(|v| v.first())
            .map(|i| self.anchors[*i].der.as_ref())
    }
}

fn name_contents(raw: &[u8]) -> &[u8] {
    crate::der::children(raw)
        .and_then(|c| {
            let hdr = raw.len() - c.iter().map(|e| e.len()).sum::<usize>();
            raw.get(hdr..)
        })
        .unwrap_or(raw)
}

/// Keeps the first error that says more than "not this anchor" (bad signature,
/// unknown issuer): that is the one worth reporting.
fn keep_most_specific(slot: &mut Option<VerifyError>, e: VerifyError) {
    if slot.is_none()
        || matches!(
            slot,
            Some(VerifyError::BadSignature | VerifyError::UnknownIssuer)
        )
    {
        *slot = Some(e);
    }
}

/// Subject and issuer are the same DN (RFC 5280's "self-issued"; self-signed ones too).
fn is_self_issued(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, x)| x.subject().as_raw() == x.issuer().as_raw())
}

fn is_ca_cert(der: &[u8]) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, x)| x.is_ca())
}

fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    let (_, x) = X509Certificate::from_der(der).ok()?;
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn strip_sign(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

#[allow(deprecated)]
fn map_webpki(e: webpki::Error) -> VerifyError {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => VerifyError::UnknownIssuer,
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_) => VerifyError::BadSignature,
        E::CertExpired { .. } => VerifyError::Expired,
        E::CertNotValidYet { .. } => VerifyError::NotYetValid,
        E::CaUsedAsEndEntity => VerifyError::DeviceIsCa,
        E::EndEntityUsedAsCa => VerifyError::IssuerNotCa,
        E::PathLenConstraintViolated => VerifyError::PathLenExceeded,
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => VerifyError::NotForClientAuth,
        E::MaximumPathDepthExceeded => VerifyError::PathTooDeep,
        E::CertRevoked => VerifyError::Revoked,
        other => VerifyError::Invalid(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{self, CaOptions, KeyType, Subject, Validity};

    /// webpki's `TrustAnchor::subject` is the Name's contents without the SEQUENCE
    /// header; the index must use the same bytes, for short and long (multi-byte
    /// length) names alike.
    #[test]
    fn name_contents_matches_webpki_anchor_subject() {
        for subject in [
            Subject::cn("CA"),
            Subject {
                cn: "A Common Name long enough to need a two byte DER length".into(),
                o: Some("An Organization With A Rather Long Registered Name GmbH".into()),
                ou: Some("Devices, Gateways and Other Things".into()),
                c: Some("DE".into()),
            },
        ] {
            let ca = issue::ca(
                &subject,
                Validity::days(1),
                KeyType::P256,
                &CaOptions::default(),
                None,
            )
            .expect("ca");
            let anchor = webpki::anchor_from_trusted_cert(&ca.cert_der).expect("anchor");
            let (_, x) = X509Certificate::from_der(ca.cert_der.as_ref()).expect("parse");
            let raw = x.subject().as_raw();
            assert_eq!(raw.first(), Some(&0x30), "as_raw includes the header");
            assert_eq!(name_contents(raw), anchor.subject.as_ref());
            let header = raw.len() - name_contents(raw).len();
            // The long name really takes the multi-byte length form (0x81 nn).
            assert_eq!(header, if subject.o.is_some() { 3 } else { 2 });
        }
        assert!(name_contents(&[0x30, 0x00]).is_empty());
    }
}
