//! RFC 5280 rules a device PKI expects beyond what rustls-webpki checks, for uploaded
//! anchors ([`crate::upload`]) and for verified device chains
//! ([`crate::TrustStore::verify_device`]), read with x509-parser.
//!
//! webpki also refuses some chains RFC 5280 accepts (critical extensions it does not
//! process, rfc822Name and directoryName name constraints, self-issued intermediates
//! counted against pathLenConstraint and checked against name constraints): those are
//! told apart here so the refusal names the exact reason instead of a generic one.

use x509_parser::prelude::*;

use crate::trust::VerifyError;

/// id-ce-subjectKeyIdentifier.
const SKI: &str = "2.5.29.14";
/// id-ce-authorityKeyIdentifier.
const AKI: &str = "2.5.29.35";
/// id-ce-policyConstraints.
const POLICY_CONSTRAINTS: &str = "2.5.29.36";
/// id-ce-extKeyUsage.
const EKU: &str = "2.5.29.37";
/// PKCS #9 emailAddress, the subject attribute RFC 5280 4.2.1.10 puts under rfc822Name
/// constraints.
const EMAIL_ADDRESS: &str = "1.2.840.113549.1.9.1";
/// Signed Certificate Timestamps (webpki remembers them).
const SCT_LIST: &str = "1.3.6.1.4.1.11129.2.4.2";

/// Extensions webpki processes when critical in a chain certificate (any other critical
/// extension makes it refuse the certificate): keyUsage, subjectAltName,
/// basicConstraints, nameConstraints, cRLDistributionPoints, extKeyUsage, SCTs.
const WEBPKI_PROCESSED: &[&str] = &[
    "2.5.29.15",
    "2.5.29.17",
    "2.5.29.19",
    "2.5.29.30",
    "2.5.29.31",
    EKU,
    SCT_LIST,
];

/// Extensions this server processes (or that RFC 5280 allows it to ignore) in a trust
/// anchor: webpki's set plus the key identifiers. A critical extension outside it
/// (certificate policies, policy constraints, policy mappings, inhibitAnyPolicy, private
/// extensions...) is refused at upload.
const ANCHOR_PROCESSED: &[&str] = &[
    "2.5.29.15",
    "2.5.29.17",
    "2.5.29.19",
    "2.5.29.30",
    "2.5.29.31",
    EKU,
    SKI,
    AKI,
];

/// A readable name for an extension OID: `policyConstraints (2.5.29.36)`.
pub(crate) fn extension_name(oid: &str) -> String {
    let name = match oid {
        "2.5.29.9" => "subjectDirectoryAttributes",
        SKI => "subjectKeyIdentifier",
        "2.5.29.15" => "keyUsage",
        "2.5.29.17" => "subjectAltName",
        "2.5.29.18" => "issuerAltName",
        "2.5.29.19" => "basicConstraints",
        "2.5.29.30" => "nameConstraints",
        "2.5.29.31" => "cRLDistributionPoints",
        "2.5.29.32" => "certificatePolicies",
        "2.5.29.33" => "policyMappings",
        AKI => "authorityKeyIdentifier",
        POLICY_CONSTRAINTS => "policyConstraints",
        EKU => "extKeyUsage",
        "2.5.29.46" => "freshestCRL",
        "2.5.29.54" => "inhibitAnyPolicy",
        "1.3.6.1.5.5.7.1.1" => "authorityInfoAccess",
        "1.3.6.1.5.5.7.1.11" => "subjectInfoAccess",
        _ => return oid.to_string(),
    };
    format!("{name} ({oid})")
}

/// The first critical extension of an anchor that this server does not process.
pub(crate) fn anchor_unknown_critical(x: &X509Certificate<'_>) -> Option<String> {
    x.extensions()
        .iter()
        .map(|e| (e.oid.to_id_string(), e.critical))
        .find(|(oid, critical)| *critical && !ANCHOR_PROCESSED.contains(&oid.as_str()))
        .map(|(oid, _)| extension_name(&oid))
}

/// True when the AuthorityKeyIdentifier carries authorityCertIssuer or
/// authorityCertSerialNumber.
pub(crate) fn aki_names_issuer_and_serial(x: &X509Certificate<'_>) -> bool {
    x.extensions().iter().any(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            a.authority_cert_issuer.is_some() || a.authority_cert_serial.is_some()
        }
        _ => false,
    })
}

/// The SubjectKeyIdentifier extension is present.
pub(crate) fn has_ski(x: &X509Certificate<'_>) -> bool {
    x.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )
    })
}

/// Subject and issuer are the same DN and the certificate's own key signed it. (A
/// self-issued certificate with a signature algorithm the check does not know counts as
/// self-signed: the rules that depend on it are then the lenient ones.)
pub(crate) fn is_self_signed(x: &X509Certificate<'_>) -> bool {
    x.subject().as_raw() == x.issuer().as_raw()
        && !matches!(
            crate::signature::verify_with_spki(
                x.public_key(),
                &x.signature_algorithm.algorithm.to_id_string(),
                x.tbs_certificate.as_ref(),
                &x.signature_value.data,
            ),
            Err(crate::signature::SignatureError::Invalid)
        )
}

/// Subject and issuer are the same DN (RFC 5280's "self-issued").
pub(crate) fn is_self_issued(x: &X509Certificate<'_>) -> bool {
    x.subject().as_raw() == x.issuer().as_raw()
}

/// The rules on a path webpki validated: `leaf` first, then the intermediates from the
/// leaf up, then the anchor. The per-certificate rules apply to the device certificate
/// and the intermediates (the anchor passed its own rules at upload); the anchor's name
/// constraints count for the rfc822Name rule.
///
/// - AuthorityKeyIdentifier and SubjectKeyIdentifier must not be critical (4.2.1.1,
///   4.2.1.2);
/// - a certificate that is not self-signed must have an AuthorityKeyIdentifier with a
///   keyIdentifier (4.2.1.1);
/// - a CA certificate must have a SubjectKeyIdentifier (4.2.1.2);
/// - policyConstraints must be critical (4.2.1.11);
/// - the device certificate's extKeyUsage must not be critical (this platform's device
///   profile: a critical EKU is refused outright rather than trusted to mean what the
///   verifier thinks);
/// - rfc822Name name constraints are not evaluated by webpki for the subject's
///   emailAddress attribute (RFC 5280 4.2.1.10 says they apply to it): such a chain is
///   refused with [`VerifyError::UnsupportedNameConstraint`] rather than accepted
///   unchecked.
pub(crate) fn check_path(
    leaf: &X509Certificate<'_>,
    intermediates: &[X509Certificate<'_>],
    anchor: Option<&X509Certificate<'_>>,
) -> Result<(), VerifyError> {
    for (i, x) in std::iter::once(leaf).chain(intermediates).enumerate() {
        let is_leaf = i == 0;
        let mut aki_key_id = false;
        for e in x.extensions() {
            match e.oid.to_id_string().as_str() {
                AKI if e.critical => return Err(VerifyError::CriticalAuthorityKeyId),
                SKI if e.critical => return Err(VerifyError::CriticalSubjectKeyId),
                POLICY_CONSTRAINTS if !e.critical => {
                    return Err(VerifyError::PolicyConstraintsNotCritical)
                }
                EKU if e.critical && is_leaf => return Err(VerifyError::CriticalExtendedKeyUsage),
                _ => {}
            }
            if let ParsedExtension::AuthorityKeyIdentifier(a) = e.parsed_extension() {
                aki_key_id = a.key_identifier.is_some();
            }
        }
        if !aki_key_id && !is_self_signed(x) {
            return Err(VerifyError::MissingAuthorityKeyId);
        }
        if x.is_ca() && !has_ski(x) {
            return Err(VerifyError::MissingSubjectKeyId);
        }
    }
    // rfc822Name constraints from any CA above a certificate whose subject holds an
    // emailAddress attribute.
    let path: Vec<&X509Certificate<'_>> = std::iter::once(leaf)
        .chain(intermediates)
        .chain(anchor)
        .collect();
    for (i, ca) in path.iter().enumerate().skip(1) {
        if constrained_forms(ca).contains(&"rfc822Name")
            && path[..i].iter().any(|below| has_email_attribute(below))
        {
            return Err(VerifyError::UnsupportedNameConstraint("rfc822Name"));
        }
    }
    Ok(())
}

/// The name forms a certificate's nameConstraints extension constrains (permitted or
/// excluded), by RFC 5280 name.
fn constrained_forms(x: &X509Certificate<'_>) -> Vec<&'static str> {
    let mut out = Vec::new();
    for e in x.extensions() {
        if let ParsedExtension::NameConstraints(nc) = e.parsed_extension() {
            for sub in nc
                .permitted_subtrees
                .iter()
                .chain(nc.excluded_subtrees.iter())
                .flatten()
            {
                let form = general_name_form(&sub.base);
                if !out.contains(&form) {
                    out.push(form);
                }
            }
        }
    }
    out
}

/// The name forms a certificate presents: its subject (directoryName, and rfc822Name
/// when it holds an emailAddress attribute) and its subjectAltName entries.
fn name_forms(x: &X509Certificate<'_>) -> Vec<&'static str> {
    let mut out = vec!["directoryName"];
    if has_email_attribute(x) {
        out.push("rfc822Name");
    }
    for e in x.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = e.parsed_extension() {
            for n in &san.general_names {
                out.push(general_name_form(n));
            }
        }
    }
    out
}

fn general_name_form(n: &GeneralName<'_>) -> &'static str {
    match n {
        GeneralName::OtherName(..) => "otherName",
        GeneralName::RFC822Name(_) => "rfc822Name",
        GeneralName::DNSName(_) => "dNSName",
        GeneralName::X400Address(_) => "x400Address",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EDIPartyName(_) => "ediPartyName",
        GeneralName::URI(_) => "uniformResourceIdentifier",
        GeneralName::IPAddress(_) => "iPAddress",
        GeneralName::RegisteredID(_) => "registeredID",
        GeneralName::Invalid(..) => "unknown",
    }
}

/// `issuer`'s key made the signature on `cert`.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    crate::signature::verify_with_spki(
        issuer.public_key(),
        &cert.signature_algorithm.algorithm.to_id_string(),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
    .is_ok()
}

/// Signature checks [`signed_path_through_self_issued`] may spend on one chain: a device
/// presenting many CAs of one DN that sign each other cannot make the search explode
/// (without this, up to 9! orderings).
const SELF_ISSUED_SIGNATURE_BUDGET: usize = 32;

/// True when the presented certificates (leaf first) hold a path leaf -> CA ... ->
/// `anchor` in which every signature verifies and one intermediate is self-issued.
/// Depth-first over at most [`crate::trust::MAX_MAX_CHAIN_LENGTH`] certificates and
/// [`SELF_ISSUED_SIGNATURE_BUDGET`] signature checks (past it the answer is "no", and
/// the refusal keeps its generic reason); only run for a chain webpki already refused.
fn signed_path_through_self_issued(
    presented: &[Option<X509Certificate<'_>>],
    anchor: &X509Certificate<'_>,
) -> bool {
    fn walk(
        current: &X509Certificate<'_>,
        presented: &[Option<X509Certificate<'_>>],
        anchor: &X509Certificate<'_>,
        used: &mut Vec<usize>,
        through_self_issued: bool,
        budget: &mut usize,
    ) -> bool {
        fn check(
            cert: &X509Certificate<'_>,
            issuer: &X509Certificate<'_>,
            budget: &mut usize,
        ) -> bool {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            signed_by(cert, issuer)
        }
        if through_self_issued && check(current, anchor, budget) {
            return true;
        }
        if used.len() >= crate::trust::MAX_MAX_CHAIN_LENGTH as usize {
            return false;
        }
        for (j, next) in presented.iter().enumerate().skip(1) {
            let Some(next) = next else { continue };
            // As webpki (RFC 4158 5.2): a key and name already on the path end it.
            let seen = |x: &X509Certificate<'_>| {
                x.public_key().raw == next.public_key().raw
                    && x.subject().as_raw() == next.subject().as_raw()
            };
            if used.contains(&j)
                || seen(current)
                || used
                    .iter()
                    .any(|u| presented[*u].as_ref().is_some_and(seen))
                || next.as_raw() == anchor.as_raw()
                || !next.is_ca()
                || next.subject().as_raw() != current.issuer().as_raw()
                || !check(current, next, budget)
            {
                continue;
            }
            used.push(j);
            let found = walk(
                next,
                presented,
                anchor,
                used,
                through_self_issued || is_self_issued(next),
                budget,
            );
            used.pop();
            if found {
                return true;
            }
        }
        false
    }
    match presented.first() {
        Some(Some(leaf)) => walk(leaf, presented, anchor, &mut Vec::new(), false, &mut {
            SELF_ISSUED_SIGNATURE_BUDGET
        }),
        _ => false,
    }
}

fn has_email_attribute(x: &X509Certificate<'_>) -> bool {
    x.subject()
        .iter_attributes()
        .any(|a| a.attr_type().to_id_string() == EMAIL_ADDRESS)
}

/// Explains a webpki refusal that RFC 5280 would not necessarily make, from the
/// presented certificates (leaf first) and the anchor tried: `None` when the generic
/// mapping is exact.
pub(crate) fn explain_webpki(
    e: &webpki::Error,
    presented: &[Option<X509Certificate<'_>>],
    anchor: Option<&X509Certificate<'_>>,
) -> Option<VerifyError> {
    use webpki::Error as E;
    let certs = || presented.iter().flatten();
    // The presented certificates other than the leaf and a copy of the anchor.
    let intermediates = || {
        presented
            .iter()
            .skip(1)
            .flatten()
            .filter(move |x| anchor.is_none_or(|a| a.as_raw() != x.as_raw()))
    };
    match e {
        E::UnsupportedCriticalExtension => {
            for x in certs() {
                for ext in x.extensions().iter().filter(|e| e.critical) {
                    let oid = ext.oid.to_id_string();
                    match oid.as_str() {
                        AKI => return Some(VerifyError::CriticalAuthorityKeyId),
                        SKI => return Some(VerifyError::CriticalSubjectKeyId),
                        o if WEBPKI_PROCESSED.contains(&o) => {}
                        _ => {
                            return Some(VerifyError::UnsupportedCriticalExtension(extension_name(
                                &oid,
                            )))
                        }
                    }
                }
            }
            None
        }
        E::NameConstraintViolation => {
            // Forms webpki does not evaluate: it refuses any presented name of that
            // form (rfc822Name, URI, ...), and every subject under a directoryName
            // constraint.
            let named: Vec<&'static str> = certs().flat_map(name_forms).collect();
            for x in intermediates().chain(anchor) {
                if let Some(form) = constrained_forms(x)
                    .into_iter()
                    .find(|f| !matches!(*f, "dNSName" | "iPAddress") && named.contains(f))
                {
                    return Some(VerifyError::UnsupportedNameConstraint(form));
                }
            }
            if anchor.is_some_and(|a| signed_path_through_self_issued(presented, a)) {
                return Some(VerifyError::SelfIssuedIntermediate);
            }
            Some(VerifyError::NameConstraintViolation)
        }
        // webpki counts self-issued intermediates against pathLenConstraint, and with
        // several CAs of one DN its path search reports the dead ends it ran into (a
        // bad signature, an unknown issuer) rather than the constraint: when the
        // presented certificates do form a correctly signed path through a self-issued
        // intermediate, that is the reason.
        E::PathLenConstraintViolated | E::InvalidSignatureForPublicKey | E::UnknownIssuer
            if anchor.is_some_and(|a| signed_path_through_self_issued(presented, a)) =>
        {
            Some(VerifyError::SelfIssuedIntermediate)
        }
        _ => None,
    }
}
