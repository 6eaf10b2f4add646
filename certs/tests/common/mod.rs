//! Certificate generators shared by the integration tests: every certificate a test uses
//! is made here (with rcgen through `certs::issue`, or with the `openssl` CLI for what
//! rcgen cannot make), never read from a hand-edited fixture.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::CertificateDer;
use time::{Duration, OffsetDateTime};

/// A self-signed P-256 root CA with the given CN.
pub fn root(cn: &str) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("root CA")
}

/// A root CA with options (path length, CA flag, key usage).
pub fn root_with(cn: &str, opts: &CaOptions) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        opts,
        None,
    )
    .expect("root CA")
}

/// An intermediate CA signed by `parent`.
pub fn intermediate(cn: &str, parent: &Issued, path_len: Option<u8>) -> Issued {
    let opts = CaOptions {
        path_len,
        ..CaOptions::default()
    };
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &opts,
        Some(&parent.issuer().expect("issuer")),
    )
    .expect("intermediate CA")
}

/// A device certificate signed by `ca`.
pub fn device(cn: &str, ca: &Issued) -> Issued {
    issue::device(
        cn,
        Validity::days(30),
        KeyType::P256,
        &ca.issuer().expect("issuer"),
        &[],
    )
    .expect("device")
}

/// A validity window relative to now, in days (negative = past).
pub fn window(from_days: i64, to_days: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + Duration::days(from_days),
        not_after: now + Duration::days(to_days),
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    certs::now_unix()
}

/// Runs `openssl` with `args` in `dir`; returns (success, stdout + stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `openssl` and panics with its output when it fails.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write file");
    p
}

/// Reads `dir/name`.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read file")
}

/// DER of an issued certificate as a chain element.
pub fn der(i: &Issued) -> CertificateDer<'static> {
    i.cert_der.clone()
}

/// A look-alike of `target` (a CA made with a CN-only subject, as `root` and
/// `intermediate` make): a self-signed CA with a new key whose subject DN is `target`'s,
/// byte for byte, and whose Subject Key Identifier is `target`'s own bytes when
/// `copy_ski` (else derived from the new key). Asserts that the copy is exact.
pub fn look_alike(target: &Issued, copy_ski: bool) -> Issued {
    look_alike_with_key(target, copy_ski, rcgen::KeyPair::generate().expect("key"))
}

/// [`look_alike`] with a given key (e.g. RSA, for a P-256 target).
pub fn look_alike_with_key(target: &Issued, copy_ski: bool, key: rcgen::KeyPair) -> Issued {
    let real = certs::CertInfo::parse(target.cert_der.as_ref()).expect("parse");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        real.common_name.clone().expect("CN"),
    );
    if copy_ski {
        p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
            hex::decode(real.subject_key_id.as_deref().expect("SKI")).expect("hex"),
        );
    }
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let v = Validity::days(365);
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("random");
    serial[0] = (serial[0] & 0x7f) | 0x01;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = p.self_signed(&key).expect("look-alike");
    let fake = certs::CertInfo::parse(cert.der()).expect("parse");
    let raw_subject = |der: &[u8]| {
        let (_, x) = x509_parser::parse_x509_certificate(der).expect("parse");
        x.subject().as_raw().to_vec()
    };
    assert_eq!(
        raw_subject(cert.der()),
        raw_subject(target.cert_der.as_ref())
    );
    assert_eq!(fake.subject_key_id == real.subject_key_id, copy_ski);
    Issued {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der().into(),
    }
}

/// A device certificate built directly with rcgen, for shapes `issue::device` does not
/// make (no AKI, no CN, other EKU).
pub fn custom_device(ca: &Issued, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Issued {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "custom-device");
    p.distinguished_name = dn;
    let v = window(-1, 30);
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    edit(&mut p);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p
        .signed_by(&key, &ca.issuer().expect("issuer"))
        .expect("sign");
    Issued {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der().into(),
    }
}
