//! Private keys: conversion to PKCS#8, matching a key to a certificate, signing.

use rustls_pki_types::PrivateKeyDer;

use crate::pem::ReadError;

/// Converts any supported private key to PKCS#8 DER (PKCS#12 and rcgen want PKCS#8).
pub fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, ReadError> {
    use aws_lc_rs::encoding::AsDer;
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(k) => {
            let kp = aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der())
                .map_err(|_| ReadError::NoPrivateKey)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
                kp.as_der().map_err(|_| ReadError::NoPrivateKey)?;
            Ok(der.as_ref().to_vec())
        }
        PrivateKeyDer::Sec1(k) => {
            for alg in [
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            ] {
                if let Ok(kp) = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
                    alg,
                    k.secret_sec1_der(),
                ) {
                    let doc = kp.to_pkcs8v1().map_err(|_| ReadError::NoPrivateKey)?;
                    return Ok(doc.as_ref().to_vec());
                }
            }
            Err(ReadError::NoPrivateKey)
        }
        _ => Err(ReadError::NoPrivateKey),
    }
}

/// The SubjectPublicKeyInfo DER of a private key, or `None` if the key is unsupported.
pub fn public_key_spki(key: &PrivateKeyDer<'_>) -> Option<Vec<u8>> {
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(key).ok()?;
    signer.public_key().map(|spki| spki.as_ref().to_vec())
}

/// True when `key` is the private half of the certificate's public key.
pub fn key_matches_certificate(key: &PrivateKeyDer<'_>, cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    public_key_spki(key).is_some_and(|spki| spki == cert.public_key().raw)
}

/// The algorithm (and size) of a private key, from its public half.
pub fn key_algorithm(key: &PrivateKeyDer<'_>) -> Option<crate::info::KeyAlgorithm> {
    use x509_parser::prelude::FromDer as _;
    let spki = public_key_spki(key)?;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).ok()?;
    Some(crate::info::key_algorithm(&parsed))
}
