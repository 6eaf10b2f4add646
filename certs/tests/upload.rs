//! Trust-anchor upload rules, each with the exact sentence the admin API returns. The
//! weak keys and SHA-1 signatures rcgen cannot make are generated with the `openssl` CLI.

mod common;

use certs::issue::{self, CaOptions, KeyType, Subject};
use certs::upload::{check_trust_anchor, check_trust_anchor_pem};
use certs::UploadError;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

fn refused(der: &[u8]) -> (UploadError, String) {
    let e = check_trust_anchor(der, now()).expect_err("refused");
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn a_proper_ca_is_accepted() {
    let ca = root("Tenant CA");
    let info = check_trust_anchor(ca.cert_der.as_ref(), now()).expect("accepted");
    assert_eq!(info.version, 3);
    assert!(info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some("Tenant CA"));
}

#[test]
fn version_1_certificate() {
    let ca = root("Old style CA");
    let v1 = issue::make_v1(ca.cert_der.as_ref(), ca.key_der.secret_pkcs8_der()).expect("v1");
    // openssl agrees that it is a v1 certificate.
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "v1.der", &v1);
    let text = openssl_ok(
        dir.path(),
        &["x509", "-inform", "DER", "-in", "v1.der", "-noout", "-text"],
    );
    assert!(text.contains("Version: 1 (0x0)"), "{text}");
    assert_eq!(
        refused(&v1),
        (
            UploadError::NotVersion3,
            "Certificate must be X.509 version 3".to_string()
        )
    );
}

#[test]
fn ca_flag_missing_or_false() {
    let not_ca = root_with(
        "Not a CA",
        &CaOptions {
            is_ca: false,
            ..CaOptions::default()
        },
    );
    let expected = (
        UploadError::NotCa,
        "Certificate must have BasicConstraints CA:true".to_string(),
    );
    assert_eq!(refused(not_ca.cert_der.as_ref()), expected);
    // No BasicConstraints extension at all.
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "No constraints");
    p.is_ca = IsCa::NoCa;
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("cert");
    assert_eq!(refused(cert.der()), expected);
}

#[test]
fn key_usage_without_key_cert_sign() {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "CRL signer only");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("cert");
    assert_eq!(
        refused(cert.der()),
        (
            UploadError::NoKeyCertSign,
            "Certificate KeyUsage must include keyCertSign".to_string()
        )
    );
    // Without a KeyUsage extension every usage is allowed.
    let no_ku = root_with(
        "No key usage",
        &CaOptions {
            key_usage: false,
            ..CaOptions::default()
        },
    );
    assert!(check_trust_anchor(no_ku.cert_der.as_ref(), now()).is_ok());
}

#[test]
fn expired_and_not_yet_valid_anchors() {
    let old = issue::ca(
        &Subject::cn("Old CA"),
        window(-100, -1),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca");
    assert_eq!(
        refused(old.cert_der.as_ref()),
        (
            UploadError::Expired,
            "This SSL certificate has expired and isn't considered valid.".to_string()
        )
    );
    let future = issue::ca(
        &Subject::cn("Future CA"),
        window(2, 100),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca");
    assert_eq!(
        refused(future.cert_der.as_ref()),
        (
            UploadError::NotYetValid,
            "This SSL certificate is not valid yet.".to_string()
        )
    );
}

/// A self-signed CA made by `openssl req -x509` with extra arguments; returns its DER.
fn openssl_ca(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    let mut all = vec![
        "req",
        "-x509",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.der",
        "-outform",
        "DER",
        "-days",
        "30",
        "-subj",
        "/CN=OpenSSL CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    all.extend_from_slice(args);
    openssl_ok(dir.path(), &all);
    read(dir.path(), "ca.der")
}

#[test]
fn weak_rsa_key() {
    let der = openssl_ca(&["-newkey", "rsa:1024", "-sha256"]);
    assert_eq!(
        refused(&der),
        (
            UploadError::WeakKey("RSA 1024 bit".into()),
            "Certificate key is too weak or unsupported: RSA 1024 bit (required: RSA >= 2048 bits, EC P-256/P-384 or Ed25519)".to_string()
        )
    );
}

#[test]
fn sha1_signatures() {
    let der = openssl_ca(&["-newkey", "rsa:2048", "-sha1"]);
    assert_eq!(
        refused(&der),
        (
            UploadError::WeakSignature("SHA1withRSA".into()),
            "Certificate signature algorithm SHA1withRSA is not accepted (MD5 and SHA-1 are insecure)".to_string()
        )
    );
    let der = openssl_ca(&[
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-sha1",
    ]);
    assert_eq!(
        refused(&der).0,
        UploadError::WeakSignature("SHA1withECDSA".into())
    );
    // The same openssl command with SHA-256 and a 2048-bit key is accepted, so the
    // refusals above are about the key and the digest, not about openssl's output.
    let good = openssl_ca(&["-newkey", "rsa:2048", "-sha256"]);
    assert!(check_trust_anchor(&good, now()).is_ok());
}

#[test]
fn pem_upload_forms() {
    let ca = root("Tenant CA");
    let pem = ca.cert_pem();
    let (der, info) = check_trust_anchor_pem(pem.as_bytes(), now()).expect("pem");
    assert_eq!(der, ca.cert_der.as_ref());
    assert_eq!(info.common_name.as_deref(), Some("Tenant CA"));
    // Pasted through JSON: one line with literal "\n".
    let one_line = pem.replace('\n', "\\n");
    assert!(check_trust_anchor_pem(one_line.as_bytes(), now()).is_ok());
    // DER.
    assert!(check_trust_anchor_pem(ca.cert_der.as_ref(), now()).is_ok());
    // Two certificates: an upload names exactly one anchor.
    let two = pem.clone() + &root("Second").cert_pem();
    assert_eq!(
        check_trust_anchor_pem(two.as_bytes(), now()).err(),
        Some(UploadError::Unparsable(
            "expected exactly one certificate, found 2".into()
        ))
    );
    assert!(matches!(
        check_trust_anchor_pem(b"hello", now()),
        Err(UploadError::Unparsable(_))
    ));
}
