//! CRL parsing (PEM and DER) and the freshness/revocation queries on what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(crl) = certs::revocation::Crl::parse(data) {
        let _ = crl.check_fresh(1_800_000_000);
        let _ = crl.is_revoked("01");
    }
});
