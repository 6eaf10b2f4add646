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

/// A self-signed CA made with rcgen without the CA extensions rcgen writes itself (no
/// BasicConstraints, no SubjectKeyIdentifier), with keyCertSign and the given extensions
/// (OID arcs, DER content, critical).
fn ca_with_extensions(extensions: &[(&[u64], Vec<u8>, bool)]) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "Hand-made CA");
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    for (oid, content, critical) in extensions {
        let mut e = rcgen::CustomExtension::from_oid_content(oid, content.clone());
        e.set_criticality(*critical);
        p.custom_extensions.push(e);
    }
    let key = KeyPair::generate().expect("key");
    p.self_signed(&key).expect("cert").der().to_vec()
}

const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];
const AUTHORITY_KEY_ID: &[u64] = &[2, 5, 29, 35];
/// SEQUENCE { BOOLEAN TRUE }: CA:true.
const CA_TRUE: [u8; 5] = [0x30, 0x03, 0x01, 0x01, 0xff];
/// OCTET STRING of four bytes: a key identifier.
const KEY_ID: [u8; 6] = [0x04, 0x04, 1, 2, 3, 4];

#[test]
fn hand_made_ca_with_the_required_extensions_is_accepted() {
    // The baseline the refusals below differ from by one extension each.
    let der = ca_with_extensions(&[
        (BASIC_CONSTRAINTS, CA_TRUE.to_vec(), true),
        (SUBJECT_KEY_ID, KEY_ID.to_vec(), false),
    ]);
    assert!(check_trust_anchor(&der, now()).is_ok());
}

#[test]
fn unknown_critical_extension() {
    let base = || {
        vec![
            (BASIC_CONSTRAINTS, CA_TRUE.to_vec(), true),
            (SUBJECT_KEY_ID, KEY_ID.to_vec(), false),
        ]
    };
    // A private extension: NULL content.
    let mut exts = base();
    exts.push((&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00], true));
    assert_eq!(
        refused(&ca_with_extensions(&exts)),
        (
            UploadError::UnknownCriticalExtension("1.3.6.1.4.1.55555.1".into()),
            "Certificate has a critical extension this server does not process: 1.3.6.1.4.1.55555.1 (a critical extension must be understood to trust the certificate)".to_string()
        )
    );
    // certificatePolicies { anyPolicy }, critical: policies are not processed here.
    let mut exts = base();
    exts.push((
        &[2, 5, 29, 32],
        vec![0x30, 0x08, 0x30, 0x06, 0x06, 0x04, 0x55, 0x1d, 0x20, 0x00],
        true,
    ));
    assert_eq!(
        refused(&ca_with_extensions(&exts)).0,
        UploadError::UnknownCriticalExtension("certificatePolicies (2.5.29.32)".into())
    );
    // The same extension non-critical may be ignored, as RFC 5280 allows.
    let mut exts = base();
    exts.push((&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00], false));
    assert!(check_trust_anchor(&ca_with_extensions(&exts), now()).is_ok());
}

#[test]
fn basic_constraints_not_critical() {
    let der = ca_with_extensions(&[
        (BASIC_CONSTRAINTS, CA_TRUE.to_vec(), false),
        (SUBJECT_KEY_ID, KEY_ID.to_vec(), false),
    ]);
    assert_eq!(
        refused(&der),
        (
            UploadError::BasicConstraintsNotCritical,
            "Certificate BasicConstraints must be marked critical in a CA certificate".to_string()
        )
    );
    // openssl agrees the extension is there and not critical.
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "ca.der", &der);
    let text = openssl_ok(
        dir.path(),
        &["x509", "-inform", "DER", "-in", "ca.der", "-noout", "-text"],
    );
    assert!(text.contains("X509v3 Basic Constraints: \n"), "{text}");
}

#[test]
fn authority_key_identifier_with_issuer_and_serial() {
    // [0] keyIdentifier, [1] authorityCertIssuer { directoryName CN=Test },
    // [2] authorityCertSerialNumber 5.
    let with_issuer = vec![
        0x30, 0x1c, 0x80, 0x04, 1, 2, 3, 4, 0xa1, 0x11, 0xa4, 0x0f, 0x30, 0x0d, 0x31, 0x0b, 0x30,
        0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'T', b'e', 0x82, 0x01, 0x05,
    ];
    let serial_only = vec![0x30, 0x09, 0x80, 0x04, 1, 2, 3, 4, 0x82, 0x01, 0x05];
    let key_id_only = vec![0x30, 0x06, 0x80, 0x04, 1, 2, 3, 4];
    let with_aki = |aki: Vec<u8>| {
        ca_with_extensions(&[
            (BASIC_CONSTRAINTS, CA_TRUE.to_vec(), true),
            (SUBJECT_KEY_ID, KEY_ID.to_vec(), false),
            (AUTHORITY_KEY_ID, aki, false),
        ])
    };
    let expected = (
        UploadError::AuthorityKeyIdIssuerAndSerial,
        "Certificate AuthorityKeyIdentifier must hold only a key identifier, not authorityCertIssuer or authorityCertSerialNumber".to_string(),
    );
    assert_eq!(refused(&with_aki(with_issuer)), expected);
    assert_eq!(refused(&with_aki(serial_only)), expected);
    assert!(check_trust_anchor(&with_aki(key_id_only), now()).is_ok());
}

#[test]
fn self_signed_root_without_subject_key_identifier() {
    let der = ca_with_extensions(&[(BASIC_CONSTRAINTS, CA_TRUE.to_vec(), true)]);
    assert_eq!(
        refused(&der),
        (
            UploadError::RootWithoutSubjectKeyId,
            "Self-signed root certificate must have a SubjectKeyIdentifier extension".to_string()
        )
    );
}

/// Every CA `certs::issue` makes (root, intermediate, with and without pathlen, RSA)
/// passes the new rules.
#[test]
fn cas_made_by_issue_pass_every_rule() {
    let r = root("Tenant CA");
    let i = intermediate("Issuing", &r, Some(0));
    let rsa = issue::ca(
        &Subject::cn("RSA CA"),
        issue::Validity::days(30),
        KeyType::Rsa2048,
        &CaOptions {
            path_len: Some(1),
            ..CaOptions::default()
        },
        None,
    )
    .expect("rsa");
    for ca in [&r, &i, &rsa] {
        check_trust_anchor(ca.cert_der.as_ref(), now()).expect("accepted");
    }
}
