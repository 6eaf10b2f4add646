//! CRL parsing (PEM and DER), the freshness and revocation queries, the readable text,
//! and the signature check against a CA, on whatever parses.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static CA: OnceLock<Vec<u8>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let ca = CA.get_or_init(|| {
        certs::issue::ca(
            &certs::issue::Subject::cn("Seed CA"),
            certs::issue::Validity::days(30),
            certs::issue::KeyType::P256,
            &certs::issue::CaOptions::default(),
            None,
        )
        .expect("ca")
        .cert_der
        .as_ref()
        .to_vec()
    });
    if let Ok(crl) = certs::revocation::Crl::parse(data) {
        let _ = crl.check_fresh(1_800_000_000);
        let _ = crl.is_revoked("01");
        for r in &crl.revoked {
            assert!(crl.is_revoked(&r.serial_hex));
        }
        let _ = crl.to_text();
        let _ = crl.verify_signed_by(ca);
        // What parsed once parses again from its own DER, to the same thing.
        let again = certs::revocation::Crl::parse(&crl.der).expect("own DER parses");
        assert_eq!(again.revoked.len(), crl.revoked.len());
        assert_eq!(again.issuer, crl.issuer);
    }
});
