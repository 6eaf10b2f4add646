//! Rules a CA certificate must pass to become a tenant's trust anchor (the REST upload).

use x509_parser::prelude::*;

use crate::info::{CertInfo, KeyAlgorithm};

/// Why a certificate cannot be uploaded as a trust anchor. Each variant's message is the
/// sentence the admin API returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Not PEM/DER, or not an X.509 certificate.
    #[error("Certificate could not be parsed: {0}")]
    Unparsable(String),
    /// X.509 v1 or v2.
    #[error("Certificate must be X.509 version 3")]
    NotVersion3,
    /// BasicConstraints missing or CA:false.
    #[error("Certificate must have BasicConstraints CA:true")]
    NotCa,
    /// KeyUsage present without keyCertSign.
    #[error("Certificate KeyUsage must include keyCertSign")]
    NoKeyCertSign,
    /// notAfter is in the past.
    #[error("This SSL certificate has expired and isn't considered valid.")]
    Expired,
    /// notBefore is in the future.
    #[error("This SSL certificate is not valid yet.")]
    NotYetValid,
    /// Key type or size not accepted.
    #[error("Certificate key is too weak or unsupported: {0} (required: RSA >= 2048 bits, EC P-256/P-384 or Ed25519)")]
    WeakKey(String),
    /// MD5 or SHA-1 signature.
    #[error("Certificate signature algorithm {0} is not accepted (MD5 and SHA-1 are insecure)")]
    WeakSignature(String),
    /// A critical extension the server does not process (named with its OID).
    #[error("Certificate has a critical extension this server does not process: {0} (a critical extension must be understood to trust the certificate)")]
    UnknownCriticalExtension(String),
    /// BasicConstraints present but not marked critical.
    #[error("Certificate BasicConstraints must be marked critical in a CA certificate")]
    BasicConstraintsNotCritical,
    /// The AuthorityKeyIdentifier names the issuer by name and serial number.
    #[error("Certificate AuthorityKeyIdentifier must hold only a key identifier, not authorityCertIssuer or authorityCertSerialNumber")]
    AuthorityKeyIdIssuerAndSerial,
    /// A self-signed root without SubjectKeyIdentifier.
    #[error("Self-signed root certificate must have a SubjectKeyIdentifier extension")]
    RootWithoutSubjectKeyId,
}

/// Checks a DER certificate against the trust-anchor upload rules at `now` (Unix
/// seconds) and returns its parsed summary.
///
/// Besides version, CA flag, key usage, validity, key and digest, the RFC 5280 rules a
/// device PKI relies on: no critical extension the server does not process,
/// BasicConstraints critical, an AuthorityKeyIdentifier holding only a key identifier,
/// and a SubjectKeyIdentifier on a self-signed root (devices name their issuer by it).
pub fn check_trust_anchor(der: &[u8], now: i64) -> Result<CertInfo, UploadError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| UploadError::Unparsable(e.to_string()))?;
    let info = CertInfo::from_x509(&cert, der);
    if info.version != 3 {
        return Err(UploadError::NotVersion3);
    }
    if !info.is_ca {
        return Err(UploadError::NotCa);
    }
    if info.key_usage.is_some() && !info.has_key_cert_sign() {
        return Err(UploadError::NoKeyCertSign);
    }
    if now > info.not_after {
        return Err(UploadError::Expired);
    }
    if now < info.not_before {
        return Err(UploadError::NotYetValid);
    }
    match &info.key {
        KeyAlgorithm::Rsa { bits } if *bits >= 2048 => {}
        KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::Ed25519 => {}
        other => return Err(UploadError::WeakKey(other.to_string())),
    }
    let sig = info.signature_algorithm.as_str();
    if sig.starts_with("MD5") || sig.starts_with("SHA1") || sig.starts_with("MD2") {
        return Err(UploadError::WeakSignature(sig.to_string()));
    }
    if let Some(name) = crate::rfc5280::anchor_unknown_critical(&cert) {
        return Err(UploadError::UnknownCriticalExtension(name));
    }
    if !info.basic_constraints_critical {
        return Err(UploadError::BasicConstraintsNotCritical);
    }
    if crate::rfc5280::aki_names_issuer_and_serial(&cert) {
        return Err(UploadError::AuthorityKeyIdIssuerAndSerial);
    }
    if crate::rfc5280::is_self_signed(&cert) && !crate::rfc5280::has_ski(&cert) {
        return Err(UploadError::RootWithoutSubjectKeyId);
    }
    Ok(info)
}

/// Reads a PEM (with or without newlines) or DER certificate and checks it. More than
/// one certificate in the input is refused: an upload names exactly one anchor.
pub fn check_trust_anchor_pem(input: &[u8], now: i64) -> Result<(Vec<u8>, CertInfo), UploadError> {
    let certs =
        crate::pem::read_certificates(input).map_err(|e| UploadError::Unparsable(e.to_string()))?;
    if certs.len() != 1 {
        return Err(UploadError::Unparsable(format!(
            "expected exactly one certificate, found {}",
            certs.len()
        )));
    }
    let der = certs[0].as_ref().to_vec();
    let info = check_trust_anchor(&der, now)?;
    Ok((der, info))
}
