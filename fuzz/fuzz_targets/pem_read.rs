//! Certificate, key and keystore reading: PEM (with bag attributes, legacy encryption
//! headers), DER, encrypted PKCS#8, PKCS#12, the upload rules on whatever parses, and
//! the server-certificate requirements report (the input as certificate, key and chain).
#![no_main]

use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = certs::pem::read_certificates(data) {
        for c in certs {
            let _ = certs::CertInfo::parse(c.as_ref());
            let _ = certs::upload::check_trust_anchor(c.as_ref(), NOW);
        }
    }
    let _ = certs::upload::check_trust_anchor_pem(data, NOW);
    let _ = certs::pem::read_private_key(data, None);
    let _ = certs::pem::read_private_key(data, Some("secret"));
    let _ = certs::pem::read_pkcs12(data, "secret");
    let _ = certs::pem::decode_any(data, Some("secret"));
    let report = certs::requirements::check(&certs::requirements::Input {
        crt: data,
        key: data,
        chain: Some(data),
        passphrase: Some("secret"),
        crl_check: true,
        now: NOW,
    });
    // A report always says why it failed.
    if let Some(row) = report.first_failure() {
        assert!(
            row.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{row:?}"
        );
    }
});
