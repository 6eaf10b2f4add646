//! Reading certificates, keys and keystores in every form operators bring them: the
//! non-native forms are produced from generated material with the `openssl` CLI.

mod common;

use std::path::Path;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::keys::key_matches_certificate;
use certs::pem::{self, read_certificates, read_pkcs12, read_private_key};
use certs::{PrivateKeyDer, ReadError};
use common::*;

const WRONG: &str = "Passphrase does not match to the key";

fn rsa_device(ca: &Issued) -> Issued {
    issue::device(
        "rsa-device",
        Validity::days(10),
        KeyType::Rsa2048,
        &ca.issuer().expect("issuer"),
        &[],
    )
    .expect("device")
}

/// Three-level chain: root, intermediate, P-256 device.
fn chain() -> (Issued, Issued, Issued) {
    let r = root("Root");
    let i = intermediate("Issuing", &r, None);
    let d = device("dev-1", &i);
    (r, i, d)
}

fn assert_key_of(key: Result<PrivateKeyDer<'static>, ReadError>, cert: &Issued) {
    let key = key.expect("key reads");
    assert!(key_matches_certificate(&key, cert.cert_der.as_ref()));
}

/// Reads `file` in `dir` with the right, a wrong and no passphrase.
fn assert_encrypted(dir: &Path, file: &str, cert: &Issued) {
    let bytes = read(dir, file);
    assert_key_of(read_private_key(&bytes, Some("s3cret")), cert);
    let wrong = read_private_key(&bytes, Some("wrong"));
    assert_eq!(wrong, Err(ReadError::Passphrase), "{file}");
    assert_eq!(wrong.err().map(|e| e.to_string()).as_deref(), Some(WRONG));
    assert_eq!(
        read_private_key(&bytes, None),
        Err(ReadError::PassphraseRequired),
        "{file}"
    );
}

#[test]
fn chain_with_bag_attributes() {
    let (r, i, d) = chain();
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "chain.pem", d.cert_pem() + &i.cert_pem() + &r.cert_pem());
    write(p, "key.pem", d.key_pem());
    openssl_ok(
        p,
        &[
            "pkcs12",
            "-export",
            "-in",
            "chain.pem",
            "-inkey",
            "key.pem",
            "-out",
            "x.p12",
            "-passout",
            "pass:pw",
            "-name",
            "dev-1",
        ],
    );
    openssl_ok(
        p,
        &[
            "pkcs12", "-in", "x.p12", "-passin", "pass:pw", "-nodes", "-out", "bag.pem",
        ],
    );
    let bag = read(p, "bag.pem");
    let text = String::from_utf8_lossy(&bag);
    assert!(text.contains("Bag Attributes"), "{text}");
    assert!(text.contains("friendlyName: dev-1"), "{text}");
    let mut got = read_certificates(&bag).expect("certs");
    let mut want = vec![der(&r), der(&i), der(&d)];
    got.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    want.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    assert_eq!(got, want);
    assert_key_of(read_private_key(&bag, None), &d);
}

#[test]
fn pem_without_newlines_and_der() {
    let (r, i, _) = chain();
    let pem = r.cert_pem();
    for mangled in [
        pem.replace('\n', " "),
        pem.replace('\n', "\\n"),
        pem.replace('\n', "\r\n"),
        pem.replace('\n', ""),
    ] {
        assert_eq!(
            read_certificates(mangled.as_bytes()).expect("mangled PEM"),
            vec![der(&r)]
        );
    }
    assert_eq!(
        read_certificates(r.cert_der.as_ref()).expect("DER"),
        vec![der(&r)]
    );
    let mut two = r.cert_der.as_ref().to_vec();
    two.extend_from_slice(i.cert_der.as_ref());
    assert_eq!(
        read_certificates(&two).expect("two DER"),
        vec![der(&r), der(&i)]
    );
    // openssl agrees on the DER.
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "r.pem", &pem);
    openssl_ok(
        dir.path(),
        &["x509", "-in", "r.pem", "-outform", "DER", "-out", "r.der"],
    );
    assert_eq!(read(dir.path(), "r.der"), r.cert_der.as_ref());
}

#[test]
fn private_key_formats() {
    let r = root("Root");
    let rsa = rsa_device(&r);
    let ec = device("ec-device", &r);
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "rsa8.pem", rsa.key_pem());
    write(p, "ec8.pem", ec.key_pem());

    // PKCS#8, as generated.
    assert_key_of(read_private_key(rsa.key_pem().as_bytes(), None), &rsa);
    assert_key_of(read_private_key(ec.key_pem().as_bytes(), None), &ec);
    // PKCS#8 DER.
    assert_key_of(read_private_key(rsa.key_der.secret_pkcs8_der(), None), &rsa);

    // PKCS#1 (traditional RSA) and SEC1 (traditional EC).
    openssl_ok(
        p,
        &["rsa", "-in", "rsa8.pem", "-traditional", "-out", "rsa1.pem"],
    );
    let pkcs1 = read(p, "rsa1.pem");
    assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
    let key = read_private_key(&pkcs1, None);
    assert!(matches!(key, Ok(PrivateKeyDer::Pkcs1(_))));
    assert_key_of(key, &rsa);
    openssl_ok(p, &["ec", "-in", "ec8.pem", "-out", "sec1.pem"]);
    let sec1 = read(p, "sec1.pem");
    assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
    let key = read_private_key(&sec1, None);
    assert!(matches!(key, Ok(PrivateKeyDer::Sec1(_))));
    assert_key_of(key, &ec);
    // SEC1 with the EC PARAMETERS block `openssl ecparam -genkey` writes in front.
    openssl_ok(p, &["ecparam", "-name", "prime256v1", "-out", "params.pem"]);
    let mut with_params = read(p, "params.pem");
    assert!(String::from_utf8_lossy(&with_params).contains("BEGIN EC PARAMETERS"));
    with_params.extend_from_slice(&sec1);
    assert_key_of(read_private_key(&with_params, None), &ec);
    // Conversions to PKCS#8 round-trip to the same public key.
    for file in ["rsa1.pem", "sec1.pem"] {
        let k = read_private_key(&read(p, file), None).expect("key");
        let p8 = certs::keys::to_pkcs8(&k).expect("pkcs8");
        let back = read_private_key(&p8, None).expect("pkcs8 der");
        assert_eq!(
            certs::keys::public_key_spki(&k),
            certs::keys::public_key_spki(&back)
        );
    }
}

#[test]
fn encrypted_private_keys() {
    let r = root("Root");
    let rsa = rsa_device(&r);
    let ec = device("ec-device", &r);
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "rsa8.pem", rsa.key_pem());
    write(p, "ec8.pem", ec.key_pem());
    let pass = ["-passout", "pass:s3cret"];

    // Encrypted PKCS#8 (PBES2, AES-256), PEM and DER.
    let mut a = vec![
        "pkcs8",
        "-topk8",
        "-v2",
        "aes256",
        "-in",
        "rsa8.pem",
        "-out",
        "rsa-enc8.pem",
    ];
    a.extend_from_slice(&pass);
    openssl_ok(p, &a);
    assert!(String::from_utf8_lossy(&read(p, "rsa-enc8.pem")).contains("ENCRYPTED PRIVATE KEY"));
    assert_encrypted(p, "rsa-enc8.pem", &rsa);
    let mut a = vec![
        "pkcs8",
        "-topk8",
        "-v2",
        "aes256",
        "-in",
        "ec8.pem",
        "-outform",
        "DER",
        "-out",
        "ec-enc8.der",
    ];
    a.extend_from_slice(&pass);
    openssl_ok(p, &a);
    assert_encrypted(p, "ec-enc8.der", &ec);

    // Legacy "Proc-Type: 4,ENCRYPTED" PEM: AES-256, AES-128 and 3DES; RSA and EC.
    for (cipher, out) in [
        ("-aes256", "rsa-leg256.pem"),
        ("-aes128", "rsa-leg128.pem"),
        ("-des3", "rsa-leg3des.pem"),
    ] {
        let mut a = vec![
            "rsa",
            cipher,
            "-traditional",
            "-in",
            "rsa8.pem",
            "-out",
            out,
        ];
        a.extend_from_slice(&pass);
        openssl_ok(p, &a);
        let text = String::from_utf8_lossy(&read(p, out)).into_owned();
        assert!(text.contains("Proc-Type: 4,ENCRYPTED"), "{text}");
        assert_encrypted(p, out, &rsa);
    }
    let mut a = vec!["ec", "-aes256", "-in", "ec8.pem", "-out", "ec-leg.pem"];
    a.extend_from_slice(&pass);
    openssl_ok(p, &a);
    assert!(String::from_utf8_lossy(&read(p, "ec-leg.pem")).contains("Proc-Type: 4,ENCRYPTED"));
    assert_encrypted(p, "ec-leg.pem", &ec);

    // What certs writes with encrypt_legacy_pem, openssl reads with the passphrase.
    let ours = pem::encrypt_legacy_pem("RSA PRIVATE KEY", &pkcs1_der(p), "s3cret");
    write(p, "ours.pem", &ours);
    openssl_ok(
        p,
        &[
            "rsa",
            "-in",
            "ours.pem",
            "-passin",
            "pass:s3cret",
            "-noout",
            "-check",
        ],
    );
    assert_encrypted(p, "ours.pem", &rsa);
}

/// The PKCS#1 DER of the RSA key in `dir/rsa8.pem`, via openssl.
fn pkcs1_der(dir: &Path) -> Vec<u8> {
    openssl_ok(
        dir,
        &[
            "rsa",
            "-in",
            "rsa8.pem",
            "-traditional",
            "-outform",
            "DER",
            "-out",
            "rsa1.der",
        ],
    );
    read(dir, "rsa1.der")
}

#[test]
fn pkcs12_from_openssl() {
    let (r, i, d) = chain();
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "chain.pem", d.cert_pem() + &i.cert_pem() + &r.cert_pem());
    write(p, "key.pem", d.key_pem());
    // OpenSSL 3 default (PBES2/AES-256/HMAC-SHA256) and the older 3DES/SHA-1 form.
    openssl_ok(
        p,
        &[
            "pkcs12",
            "-export",
            "-in",
            "chain.pem",
            "-inkey",
            "key.pem",
            "-out",
            "aes.p12",
            "-passout",
            "pass:s3cret",
        ],
    );
    openssl_ok(
        p,
        &[
            "pkcs12",
            "-export",
            "-in",
            "chain.pem",
            "-inkey",
            "key.pem",
            "-out",
            "3des.p12",
            "-passout",
            "pass:s3cret",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    );
    for file in ["aes.p12", "3des.p12"] {
        let bytes = read(p, file);
        let c = read_pkcs12(&bytes, "s3cret").expect(file);
        assert_key_of(c.key.ok_or(ReadError::NoPrivateKey), &d);
        let mut got = c.certificates.clone();
        let mut want = vec![der(&r), der(&i), der(&d)];
        got.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        want.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        assert_eq!(got, want, "{file}");
        let wrong = read_pkcs12(&bytes, "wrong");
        assert_eq!(wrong.as_ref().err(), Some(&ReadError::Passphrase), "{file}");
        assert_eq!(wrong.err().map(|e| e.to_string()).as_deref(), Some(WRONG));
    }
}

#[test]
fn pkcs12_written_by_certs() {
    let (r, i, d) = chain();
    let p12 = pem::write_pkcs12(
        &d.private_key(),
        &[der(&d), der(&i), der(&r)],
        "s3cret",
        "dev-1",
    )
    .expect("write");
    let c = read_pkcs12(&p12, "s3cret").expect("read back");
    assert_key_of(c.key.ok_or(ReadError::NoPrivateKey), &d);
    assert_eq!(c.certificates.first(), Some(&der(&d)));
    assert_eq!(read_pkcs12(&p12, "nope").err(), Some(ReadError::Passphrase));

    // openssl reads it without -legacy and finds the same key and certificates.
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "ours.p12", &p12);
    let info = openssl_ok(
        p,
        &[
            "pkcs12",
            "-info",
            "-in",
            "ours.p12",
            "-passin",
            "pass:s3cret",
            "-noout",
        ],
    );
    assert!(info.contains("AES-256-CBC"), "{info}");
    openssl_ok(
        p,
        &[
            "pkcs12",
            "-in",
            "ours.p12",
            "-passin",
            "pass:s3cret",
            "-nodes",
            "-out",
            "ours.pem",
        ],
    );
    let pem_out = read(p, "ours.pem");
    assert_key_of(read_private_key(&pem_out, None), &d);
    assert_eq!(read_certificates(&pem_out).expect("certs").len(), 3);
    let (ok, _) = openssl(
        p,
        &[
            "pkcs12",
            "-info",
            "-in",
            "ours.p12",
            "-passin",
            "pass:nope",
            "-noout",
        ],
    );
    assert!(!ok);
}

#[test]
fn pkcs12_with_rsa_key_and_decode_any() {
    let r = issue::ca(
        &Subject::cn("RSA Root"),
        Validity::days(10),
        KeyType::Rsa2048,
        &CaOptions::default(),
        None,
    )
    .expect("root");
    let d = rsa_device(&r);
    let p12 = pem::write_pkcs12(&d.private_key(), &[der(&d), der(&r)], "pw", "d").expect("p12");
    assert!(pem::looks_like_pkcs12(&p12));
    assert!(!pem::looks_like_pkcs12(d.cert_der.as_ref()));
    let decoded = pem::decode_any(&p12, Some("pw")).expect("decode");
    assert_eq!((decoded.keys.len(), decoded.certificates.len()), (1, 2));
    assert_eq!(
        pem::decode_any(&p12, None).err(),
        Some(ReadError::PassphraseRequired)
    );
    assert_eq!(
        pem::decode_any(&p12, Some("x")).err(),
        Some(ReadError::Passphrase)
    );
    // PEM of everything, read back.
    let text = decoded.to_pem();
    let again = pem::decode_any(text.as_bytes(), None).expect("again");
    assert_eq!(again.certificates, decoded.certificates);
    assert_key_of(Ok(again.keys[0].clone_key()), &d);
    assert!(decoded.single_der().is_none());
    let one = pem::decode_any(d.cert_pem().as_bytes(), None).expect("one");
    assert_eq!(one.single_der(), Some(d.cert_der.as_ref()));
}

#[test]
fn garbage_inputs_are_errors_not_panics() {
    let junk: [&[u8]; 6] = [
        b"",
        b"\x30",
        b"\x30\x82\xff\xff",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    ];
    for j in junk {
        assert!(read_certificates(j).is_err());
        assert!(read_private_key(j, Some("pw")).is_err());
        assert!(read_pkcs12(j, "pw").is_err());
        assert!(pem::decode_any(j, Some("pw")).is_err());
    }
}

/// An encrypted PKCS#8 key with the given key-derivation function (the ciphertext is
/// never reached: the parameters are refused first).
fn encrypted_key_with(kdf: pkcs5::pbes2::Kdf<'_>) -> Vec<u8> {
    use pkcs8::der::Encode;
    let params = pkcs5::pbes2::Parameters {
        kdf,
        encryption: pkcs5::pbes2::EncryptionScheme::Aes256Cbc { iv: &[7u8; 16] },
    };
    pkcs8::EncryptedPrivateKeyInfo {
        encryption_algorithm: pkcs5::EncryptionScheme::Pbes2(params),
        encrypted_data: &[0u8; 48],
    }
    .to_der()
    .unwrap()
}

#[test]
fn hostile_key_derivation_costs_are_refused_before_deriving() {
    let salt = [1u8; 16];
    // 50 million rounds: about 20 s of one core, refused before any of them runs.
    let mut pbkdf2 = pkcs5::pbes2::Pbkdf2Params::hmac_with_sha256(50_000_000, &salt).unwrap();
    let der = encrypted_key_with(pkcs5::pbes2::Kdf::Pbkdf2(pbkdf2));
    assert_eq!(
        read_private_key(&der, Some("pw")).unwrap_err().to_string(),
        "Unsupported key encryption: PBKDF2 with 50000000 iterations (at most 10000000 accepted)"
    );

    // At the cap, the parameters pass and the (garbage) ciphertext is what fails.
    pbkdf2.iteration_count = 1_000;
    let der = encrypted_key_with(pkcs5::pbes2::Kdf::Pbkdf2(pbkdf2));
    assert_eq!(
        read_private_key(&der, Some("pw")).unwrap_err().to_string(),
        WRONG
    );

    // scrypt asking for 128 GiB (N = 2^27, r = 8) must not allocate it.
    let scrypt = pkcs5::pbes2::ScryptParams {
        salt: &salt,
        cost_parameter: 1 << 27,
        block_size: 8,
        parallelization: 1,
        key_length: None,
    };
    let der = encrypted_key_with(pkcs5::pbes2::Kdf::Scrypt(scrypt));
    assert_eq!(
        read_private_key(&der, Some("pw")).unwrap_err().to_string(),
        "Unsupported key encryption: scrypt with N=134217728, r=8, p=1 (at most 256 MiB and 16 lanes accepted)"
    );
}

/// A DER element (definite length, long form when needed).
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match contents.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(contents);
    out
}

/// A PFX skeleton: version 3, an authSafe whose data holds `inner`, and MacData with
/// `mac_iterations`.
fn pfx(inner: &[u8], mac_iterations: u32) -> Vec<u8> {
    let oid_data = tlv(
        0x06,
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01],
    );
    let auth_safe = tlv(
        0x30,
        &[oid_data, tlv(0xa0, &tlv(0x04, &tlv(0x30, inner)))].concat(),
    );
    let sha256 = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            ),
            tlv(0x05, &[]),
        ]
        .concat(),
    );
    let mut iterations = mac_iterations.to_be_bytes().to_vec();
    iterations.insert(0, 0);
    let mac_data = tlv(
        0x30,
        &[
            tlv(0x30, &[sha256, tlv(0x04, &[0u8; 32])].concat()),
            tlv(0x04, &[1u8; 8]),
            tlv(0x02, &iterations),
        ]
        .concat(),
    );
    tlv(0x30, &[tlv(0x02, &[3]), auth_safe, mac_data].concat())
}

#[test]
fn hostile_pkcs12_iteration_counts_are_refused_before_deriving() {
    assert_eq!(
        read_pkcs12(&pfx(&[], 50_000_000), "pw").unwrap_err().to_string(),
        "Unsupported key encryption: PKCS#12 MAC with 50000000 iterations (at most 10000000 accepted)"
    );
    // A key bag deep inside, encrypted with PBES2 / PBKDF2 at 50 million rounds.
    let salt = [1u8; 16];
    let kdf = pkcs5::pbes2::Pbkdf2Params::hmac_with_sha256(50_000_000, &salt).unwrap();
    let bag = encrypted_key_with(pkcs5::pbes2::Kdf::Pbkdf2(kdf));
    assert_eq!(
        read_pkcs12(&pfx(&tlv(0x04, &bag), 2048), "pw")
            .unwrap_err()
            .to_string(),
        "Unsupported key encryption: PBKDF2 with 50000000 iterations (at most 10000000 accepted)"
    );
    // Within the caps, the skeleton reaches the keystore parser (and is refused there).
    assert!(matches!(
        read_pkcs12(&pfx(&[], 2048), "pw").unwrap_err(),
        ReadError::MalformedPkcs12(_) | ReadError::Passphrase
    ));
}
