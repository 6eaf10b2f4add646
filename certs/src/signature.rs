//! Verifying a raw signature with a certificate's public key (aws-lc-rs): used for CRL
//! signatures, proof of possession, and "does this root sign that certificate".

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use x509_parser::prelude::*;

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature algorithm is not one we accept.
    #[error("Unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the public key.
    #[error("The signature does not match the certificate's public key")]
    Invalid,
}

/// Verifies `sig` over `msg` made with the key in `spki` using the X.509 signature
/// algorithm `alg_oid` (as found in a certificate or CRL).
pub fn verify_with_spki(
    spki: &SubjectPublicKeyInfo<'_>,
    alg_oid: &str,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let key = crate::info::key_algorithm(spki);
    let alg: &dyn VerificationAlgorithm = match (alg_oid, &key) {
        ("1.2.840.113549.1.1.11", _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", crate::info::KeyAlgorithm::EcP256) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        ("1.2.840.10045.4.3.2", crate::info::KeyAlgorithm::EcP384) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        ("1.2.840.10045.4.3.3", crate::info::KeyAlgorithm::EcP256) => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        ("1.2.840.10045.4.3.3", crate::info::KeyAlgorithm::EcP384) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        ("1.3.101.112", _) => &signature::ED25519,
        (other, _) => return Err(SignatureError::UnsupportedAlgorithm(other.to_string())),
    };
    let public_key: &[u8] = &spki.subject_public_key.data;
    signature::UnparsedPublicKey::new(alg, public_key)
        .verify(msg, sig)
        .map_err(|_| SignatureError::Invalid)
}

/// Verifies a SHA-256 signature of `msg` made with the private key of the certificate
/// `cert_der` (RSA PKCS#1 v1.5 or ECDSA), as `openssl dgst -sha256 -sign key` makes.
pub fn verify_sha256_by_certificate(
    cert_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| SignatureError::Invalid)?;
    let oid = match crate::info::key_algorithm(cert.public_key()) {
        crate::info::KeyAlgorithm::Rsa { .. } => "1.2.840.113549.1.1.11",
        crate::info::KeyAlgorithm::Ed25519 => "1.3.101.112",
        _ => "1.2.840.10045.4.3.2",
    };
    verify_with_spki(cert.public_key(), oid, msg, sig)
}

/// True when `issuer_der`'s key made the signature on `cert_der`.
pub fn is_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    verify_with_spki(
        issuer.public_key(),
        &cert.signature_algorithm.algorithm.to_id_string(),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
    .is_ok()
}
