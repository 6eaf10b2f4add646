//! Certificate, key and keystore reading: PEM (with bag attributes, legacy encryption
//! headers), DER, encrypted PKCS#8, PKCS#12, and the upload rules on whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = certs::pem::read_certificates(data) {
        for c in certs {
            let _ = certs::CertInfo::parse(c.as_ref());
            let _ = certs::upload::check_trust_anchor(c.as_ref(), 1_800_000_000);
        }
    }
    let _ = certs::upload::check_trust_anchor_pem(data, 1_800_000_000);
    let _ = certs::pem::read_private_key(data, None);
    let _ = certs::pem::read_private_key(data, Some("secret"));
    let _ = certs::pem::read_pkcs12(data, "secret");
});
