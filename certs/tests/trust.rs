//! `TrustStore::verify_device`: every `VerifyError` variant from generated chains, the
//! tenant mapping of same-DN anchors, and `recheck` against newer snapshots.

mod common;

use std::collections::HashSet;

use certs::issue::{self, CaOptions, Issued, KeyType, Revocation, Subject};
use certs::revocation::Crl;
use certs::trust::{BuildError, TenantPolicy};
use certs::{AnchorSpec, AnchorStatus, CertificateDer, TrustStore, UnixTime, VerifyError};
use common::*;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

fn spec(tenant: &str, ca: &Issued, status: AnchorStatus) -> AnchorSpec {
    AnchorSpec {
        tenant: tenant.to_string(),
        status,
        auto_registration: true,
        cert_der: ca.cert_der.as_ref().to_vec(),
    }
}

/// A store with one enabled anchor for tenant `t` and the given policy.
fn store(ca: &Issued, policy: TenantPolicy) -> TrustStore {
    let mut b = TrustStore::builder();
    b.tenant("t", policy);
    b.anchor(spec("t", ca, AnchorStatus::Enabled))
        .expect("anchor");
    b.build()
}

fn verify(store: &TrustStore, chain: &[&Issued]) -> Result<certs::DeviceIdentity, VerifyError> {
    let chain: Vec<CertificateDer<'static>> = chain.iter().map(|i| der(i)).collect();
    store.verify_device(&chain, UnixTime::now())
}

fn max_chain(n: u8) -> TenantPolicy {
    TenantPolicy {
        max_chain_length: n,
        ..TenantPolicy::default()
    }
}

fn serial(i: &Issued) -> String {
    certs::CertInfo::parse(i.cert_der.as_ref())
        .expect("info")
        .serial_hex
}

#[test]
fn leaf_only_and_leaf_with_ca_both_verify() {
    let ca = root("Tenant CA");
    let dev = device("dev-1", &ca);
    let s = store(&ca, TenantPolicy::default());
    let a = verify(&s, &[&dev]).expect("leaf only");
    let b = verify(&s, &[&dev, &ca]).expect("leaf + CA");
    assert_eq!(&*a.tenant, "t");
    assert_eq!(a.common_name, "dev-1");
    assert_eq!(a.chain_length, 2);
    assert!(a.auto_registration);
    assert_eq!(
        a.anchor_fingerprint,
        certs::info::fingerprint_sha1(ca.cert_der.as_ref())
    );
    assert_eq!(a.serial_hex, serial(&dev));
    assert_eq!(a, b);
    assert!(s.has_candidate_issuer(&[der(&dev)]));
}

#[test]
fn no_certificate_and_malformed() {
    let ca = root("Tenant CA");
    let s = store(&ca, TenantPolicy::default());
    assert_eq!(
        s.verify_device(&[], UnixTime::now()),
        Err(VerifyError::NoCertificate)
    );
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
    assert!(matches!(
        s.verify_device(&[garbage], UnixTime::now()),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn unknown_issuer() {
    let ca = root("Tenant CA");
    let other = root("Other CA");
    let dev = device("dev-1", &other);
    let s = store(&ca, TenantPolicy::default());
    assert_eq!(verify(&s, &[&dev]), Err(VerifyError::UnknownIssuer));
    // Sending the unknown CA along does not help.
    assert_eq!(verify(&s, &[&dev, &other]), Err(VerifyError::UnknownIssuer));
    assert!(!s.has_candidate_issuer(&[der(&dev), der(&other)]));
}

#[test]
fn expired_and_not_yet_valid_devices() {
    let ca = root("Tenant CA");
    let issuer = ca.issuer().expect("issuer");
    let old = issue::device("old", window(-30, -1), KeyType::P256, &issuer, &[]).expect("dev");
    let early = issue::device("early", window(1, 30), KeyType::P256, &issuer, &[]).expect("dev");
    let s = store(&ca, TenantPolicy::default());
    assert_eq!(verify(&s, &[&old]), Err(VerifyError::Expired));
    assert_eq!(verify(&s, &[&early]), Err(VerifyError::NotYetValid));
}

/// A CA with the anchor's DN but another key did not issue the chain: it is not a
/// candidate, so the verdict is "unknown issuer" as if it were absent (item 2: what
/// another tenant uploads never changes a verdict). A bad signature inside the presented
/// chain is still reported as such.
#[test]
fn same_dn_other_key_is_not_an_issuer_and_bad_signature_inside_the_chain() {
    let ca = root("Tenant CA");
    let impostor = root("Tenant CA");
    let dev = device("dev-1", &impostor);
    let s = store(&ca, TenantPolicy::default());
    assert_eq!(verify(&s, &[&dev]), Err(VerifyError::UnknownIssuer));
    // The device's issuer DN names a real intermediate of the anchor, but another key
    // signed the device: the intermediate -> device signature fails.
    let real = intermediate("Issuing", &ca, None);
    let fake = intermediate("Issuing", &impostor, None);
    let forged = device("dev-2", &fake);
    let s3 = store(&ca, max_chain(3));
    assert_eq!(
        verify(&s3, &[&forged, &real]),
        Err(VerifyError::BadSignature)
    );
    assert!(verify(&s3, &[&device("dev-3", &real), &real]).is_ok());
}

#[test]
fn chain_length_limit() {
    let r = root("Root");
    let i = intermediate("Issuing", &r, None);
    let dev = device("dev-1", &i);
    let default = store(&r, TenantPolicy::default());
    assert_eq!(
        verify(&default, &[&dev, &i]),
        Err(VerifyError::ChainTooLong { length: 3, max: 2 })
    );
    let three = store(&r, max_chain(3));
    let id = verify(&three, &[&dev, &i]).expect("3 allowed");
    assert_eq!(id.chain_length, 3);
    let id = verify(&three, &[&dev, &i, &r]).expect("with root");
    assert_eq!(id.chain_length, 3);
    // The intermediate is not sent: no path.
    assert_eq!(verify(&three, &[&dev]), Err(VerifyError::UnknownIssuer));
    // More certificates than any tenant may allow are refused before any work.
    let many: Vec<&Issued> = std::iter::once(&dev)
        .chain(std::iter::repeat_n(&i, 11))
        .collect();
    assert_eq!(
        verify(&three, &many),
        Err(VerifyError::ChainTooLong {
            length: 12,
            max: 10
        })
    );
}

#[test]
fn path_len_constraint_of_anchor_and_of_intermediate() {
    // The anchor says pathlen:0 but an intermediate follows it.
    let r = root_with(
        "Root pathlen 0",
        &CaOptions {
            path_len: Some(0),
            ..CaOptions::default()
        },
    );
    let i = intermediate("Issuing", &r, None);
    let dev = device("dev-1", &i);
    assert_eq!(
        verify(&store(&r, max_chain(3)), &[&dev, &i]),
        Err(VerifyError::PathLenExceeded)
    );
    // pathlen:1 allows exactly that.
    let r1 = root_with(
        "Root pathlen 1",
        &CaOptions {
            path_len: Some(1),
            ..CaOptions::default()
        },
    );
    let i1 = intermediate("Issuing", &r1, None);
    let dev1 = device("dev-1", &i1);
    assert!(verify(&store(&r1, max_chain(3)), &[&dev1, &i1]).is_ok());
    // An intermediate with pathlen:0 followed by another intermediate.
    let r2 = root("Root");
    let i2 = intermediate("Issuing pathlen 0", &r2, Some(0));
    let sub = intermediate("Sub", &i2, None);
    let dev2 = device("dev-2", &sub);
    assert_eq!(
        verify(&store(&r2, max_chain(4)), &[&dev2, &sub, &i2]),
        Err(VerifyError::PathLenExceeded)
    );
}

#[test]
fn issuer_not_a_ca() {
    let r = root("Root");
    let not_ca = issue::ca(
        &Subject::cn("Not a CA"),
        window(-1, 30),
        KeyType::P256,
        &CaOptions {
            is_ca: false,
            ..CaOptions::default()
        },
        Some(&r.issuer().expect("issuer")),
    )
    .expect("cert");
    let dev = device("dev-1", &not_ca);
    assert_eq!(
        verify(&store(&r, max_chain(3)), &[&dev, &not_ca]),
        Err(VerifyError::IssuerNotCa)
    );
    // The same certificate uploaded as the anchor itself: webpki trusts any anchor, the
    // store does not.
    assert_eq!(
        verify(&store(&not_ca, TenantPolicy::default()), &[&dev]),
        Err(VerifyError::IssuerNotCa)
    );
}

#[test]
fn device_that_is_a_ca() {
    let r = root("Root");
    let i = intermediate("Sub CA", &r, None);
    assert_eq!(
        verify(&store(&r, TenantPolicy::default()), &[&i]),
        Err(VerifyError::DeviceIsCa)
    );
}

#[test]
fn device_without_client_auth() {
    let r = root("Root");
    let server_only = custom_device(&r, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
    });
    assert_eq!(
        verify(&store(&r, TenantPolicy::default()), &[&server_only]),
        Err(VerifyError::NotForClientAuth)
    );
}

#[test]
fn disabled_and_expired_anchors() {
    let ca = root("Tenant CA");
    let dev = device("dev-1", &ca);
    let mut b = TrustStore::builder();
    b.anchor(spec("t", &ca, AnchorStatus::Disabled))
        .expect("anchor");
    assert_eq!(
        verify(&b.build(), &[&dev]),
        Err(VerifyError::AnchorDisabled)
    );

    let old = issue::ca(
        &Subject::cn("Old CA"),
        window(-365, -1),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("ca");
    let dev = device("dev-2", &old);
    assert_eq!(
        verify(&store(&old, TenantPolicy::default()), &[&dev]),
        Err(VerifyError::AnchorExpired)
    );
}

#[test]
fn revoked_by_manual_serial_list() {
    let ca = root("Tenant CA");
    let dev = device("dev-1", &ca);
    let other = device("dev-2", &ca);
    let policy = TenantPolicy {
        revoked_serials: HashSet::from([serial(&dev)]),
        ..TenantPolicy::default()
    };
    let s = store(&ca, policy.clone());
    assert_eq!(verify(&s, &[&dev]), Err(VerifyError::Revoked));
    assert!(verify(&s, &[&other]).is_ok());
    // Revocation enforcement off: the list is ignored.
    let off = store(
        &ca,
        TenantPolicy {
            crl_enabled: false,
            ..policy
        },
    );
    assert!(verify(&off, &[&dev]).is_ok());
}

fn crl_of(ca: &Issued, revoked: &[&Issued]) -> Crl {
    let list: Vec<Revocation> = revoked
        .iter()
        .map(|i| Revocation {
            serial_hex: serial(i),
            revoked_at: time::OffsetDateTime::now_utc(),
        })
        .collect();
    let der = issue::crl(&ca.issuer().expect("issuer"), &list, 1, 7).expect("crl");
    Crl::parse(&der).expect("parse")
}

#[test]
fn revoked_by_crl() {
    let ca = root("Tenant CA");
    let dev = device("dev-1", &ca);
    let other = device("dev-2", &ca);
    let mut b = TrustStore::builder();
    b.anchor(spec("t", &ca, AnchorStatus::Enabled))
        .expect("anchor");
    b.crl("t", crl_of(&ca, &[&dev])).expect("crl");
    // A CRL signed by someone else is refused.
    let stranger = root("Tenant CA");
    assert_eq!(
        b.crl("t", crl_of(&stranger, &[&other])).err(),
        Some(BuildError::CrlNotFromTenantAnchor("t".into()))
    );
    let s = b.build();
    assert_eq!(verify(&s, &[&dev]), Err(VerifyError::Revoked));
    assert!(verify(&s, &[&other]).is_ok());
}

#[test]
fn revoked_intermediate_and_crl_from_an_intermediate() {
    let r = root("Root");
    let i = intermediate("Issuing", &r, None);
    let dev = device("dev-1", &i);
    let other = device("dev-2", &i);

    // The root revokes the intermediate: every device below it is refused.
    let mut b = TrustStore::builder();
    b.tenant("t", max_chain(3));
    b.anchor(spec("t", &r, AnchorStatus::Enabled))
        .expect("anchor");
    b.crl("t", crl_of(&r, &[&i])).expect("crl");
    assert_eq!(verify(&b.build(), &[&dev, &i]), Err(VerifyError::Revoked));

    // The intermediate revokes one device.
    let mut b = TrustStore::builder();
    b.tenant("t", max_chain(3));
    b.anchor(spec("t", &r, AnchorStatus::Enabled))
        .expect("anchor");
    let crl = crl_of(&i, &[&dev]);
    assert_eq!(
        b.crl("t", crl.clone()).err(),
        Some(BuildError::CrlNotFromTenantAnchor("t".into()))
    );
    b.crl_from_intermediate("t", crl, &[der(&i)])
        .expect("intermediate CRL");
    let s = b.build();
    assert_eq!(verify(&s, &[&dev, &i]), Err(VerifyError::Revoked));
    assert!(verify(&s, &[&other, &i]).is_ok());

    // An intermediate that does not chain to the tenant's anchors cannot add CRLs.
    let foreign_root = root("Root");
    let foreign = intermediate("Issuing", &foreign_root, None);
    let mut b = TrustStore::builder();
    b.anchor(spec("t", &r, AnchorStatus::Enabled))
        .expect("anchor");
    assert_eq!(
        b.crl_from_intermediate("t", crl_of(&foreign, &[]), &[der(&foreign)])
            .err(),
        Some(BuildError::CrlNotFromTenantAnchor("t".into()))
    );
}

#[test]
fn common_name_rules() {
    let ca = root("Tenant CA");
    let s = store(&ca, TenantPolicy::default());
    let no_cn = custom_device(&ca, |p| {
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::DnsName("device.example".try_into().expect("dns"))];
    });
    assert_eq!(verify(&s, &[&no_cn]), Err(VerifyError::NoCommonName));
    let empty_cn = custom_device(&ca, |p| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "");
        p.distinguished_name = dn;
    });
    assert_eq!(verify(&s, &[&empty_cn]), Err(VerifyError::NoCommonName));
    for c in ['+', '#', '/', '$'] {
        let dev = device(&format!("dev{c}1"), &ca);
        assert_eq!(
            verify(&s, &[&dev]),
            Err(VerifyError::ForbiddenCnCharacter(c)),
            "{c}"
        );
    }
}

#[test]
fn two_tenants_same_dn_different_keys() {
    let ca_a = root("Shared Name CA");
    let ca_b = root("Shared Name CA");
    let dev_a = device("dev-a", &ca_a);
    let dev_b = device("dev-b", &ca_b);
    let bare_a = custom_device(&ca_a, |p| p.use_authority_key_identifier_extension = false);
    let bare_b = custom_device(&ca_b, |p| p.use_authority_key_identifier_extension = false);
    for order in [[("a", &ca_a), ("b", &ca_b)], [("b", &ca_b), ("a", &ca_a)]] {
        let mut b = TrustStore::builder();
        for (tenant, ca) in order {
            b.anchor(spec(tenant, ca, AnchorStatus::Enabled))
                .expect("anchor");
        }
        let s = b.build();
        for (dev, tenant, chain_with_ca) in [(&dev_a, "a", &ca_a), (&dev_b, "b", &ca_b)] {
            assert_eq!(&*verify(&s, &[dev]).expect("leaf").tenant, tenant);
            assert_eq!(
                &*verify(&s, &[dev, chain_with_ca]).expect("with CA").tenant,
                tenant
            );
        }
        // Found by issuer DN only, the right key is still told apart, and then the
        // missing AuthorityKeyIdentifier refuses the device (RFC 5280 4.2.1.1).
        for (dev, ca) in [(&bare_a, &ca_a), (&bare_b, &ca_b)] {
            assert_eq!(verify(&s, &[dev]), Err(VerifyError::MissingAuthorityKeyId));
            assert_eq!(
                verify(&s, &[dev, ca]),
                Err(VerifyError::MissingAuthorityKeyId)
            );
        }
    }
    // Disabling tenant a's anchor does not let its devices fall through to b.
    let mut b = TrustStore::builder();
    b.anchor(spec("a", &ca_a, AnchorStatus::Disabled))
        .expect("anchor");
    b.anchor(spec("b", &ca_b, AnchorStatus::Enabled))
        .expect("anchor");
    let s = b.build();
    assert_eq!(verify(&s, &[&dev_a]), Err(VerifyError::AnchorDisabled));
    assert_eq!(&*verify(&s, &[&dev_b]).expect("b").tenant, "b");
}

#[test]
fn recheck_against_newer_snapshots() {
    let ca = root("Tenant CA");
    let keep = root("Other CA");
    let dev = device("dev-1", &ca);
    let s1 = store(&ca, TenantPolicy::default());
    let id = verify(&s1, &[&dev]).expect("valid");
    assert_eq!(s1.recheck(&id, UnixTime::now()), Ok(()));

    let mut b = TrustStore::builder();
    b.anchor(spec("t", &ca, AnchorStatus::Disabled))
        .expect("anchor");
    assert_eq!(
        b.build().recheck(&id, UnixTime::now()),
        Err(VerifyError::AnchorDisabled)
    );

    let removed = store(&keep, TenantPolicy::default());
    assert_eq!(
        removed.recheck(&id, UnixTime::now()),
        Err(VerifyError::AnchorRemoved)
    );

    // The same certificate now belongs to another tenant: not this session's anchor.
    let mut b = TrustStore::builder();
    b.anchor(spec("other", &ca, AnchorStatus::Enabled))
        .expect("anchor");
    assert_eq!(
        b.build().recheck(&id, UnixTime::now()),
        Err(VerifyError::AnchorRemoved)
    );

    let revoked = store(
        &ca,
        TenantPolicy {
            revoked_serials: HashSet::from([id.serial_hex.clone()]),
            ..TenantPolicy::default()
        },
    );
    assert_eq!(
        revoked.recheck(&id, UnixTime::now()),
        Err(VerifyError::Revoked)
    );

    let later =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs((id.not_after + 1) as u64));
    assert_eq!(s1.recheck(&id, later), Err(VerifyError::Expired));
}

#[test]
fn labels_are_distinct() {
    let all = [
        VerifyError::NoCertificate,
        VerifyError::Malformed(String::new()),
        VerifyError::UnknownIssuer,
        VerifyError::BadSignature,
        VerifyError::Expired,
        VerifyError::NotYetValid,
        VerifyError::AnchorExpired,
        VerifyError::ChainTooLong { length: 3, max: 2 },
        VerifyError::PathLenExceeded,
        VerifyError::IssuerNotCa,
        VerifyError::DeviceIsCa,
        VerifyError::NotForClientAuth,
        VerifyError::AnchorDisabled,
        VerifyError::AnchorRemoved,
        VerifyError::Revoked,
        VerifyError::NoCommonName,
        VerifyError::ForbiddenCnCharacter('#'),
        VerifyError::AmbiguousTenant,
        VerifyError::Invalid(String::new()),
    ];
    let labels: HashSet<&str> = all.iter().map(VerifyError::label).collect();
    assert_eq!(labels.len(), all.len());
}

/// The same CA uploaded by two tenants: the device cannot belong to both, so it is
/// refused whatever the status of either copy (a disabled copy is still a claim, and
/// the other tenant may re-enable it at any time). Fail closed, never "first wins".
#[test]
fn same_certificate_uploaded_by_two_tenants_is_ambiguous() {
    let ca = root("Shared CA");
    let dev = device("dev-1", &ca);
    for (sa, sb) in [
        (AnchorStatus::Enabled, AnchorStatus::Enabled),
        (AnchorStatus::Disabled, AnchorStatus::Enabled),
        (AnchorStatus::Enabled, AnchorStatus::Disabled),
        (AnchorStatus::Disabled, AnchorStatus::Disabled),
    ] {
        let mut b = TrustStore::builder();
        b.anchor(spec("a", &ca, sa)).expect("anchor");
        b.anchor(spec("b", &ca, sb)).expect("anchor");
        let s = b.build();
        for chain in [&[&dev][..], &[&dev, &ca][..]] {
            assert_eq!(
                verify(&s, chain),
                Err(VerifyError::AmbiguousTenant),
                "{sa:?} {sb:?}"
            );
        }
    }
    let e = VerifyError::AmbiguousTenant;
    assert_eq!(e.label(), "ambiguous_tenant");
    assert_eq!(
        e.to_string(),
        "ambiguous tenant: trusted certificates of more than one tenant validate this chain"
    );
}

/// The attack: tenant B trusts its root and its devices send leaf + B's intermediate;
/// tenant A uploads B's (public) intermediate. The old search stopped at the first
/// presented certificate naming an anchor (the leaf -> A's copy of the intermediate)
/// and admitted B's devices into tenant A.
#[test]
fn another_tenants_intermediate_cannot_capture_its_devices() {
    let root_b = root("Tenant B Root");
    let inter_b = intermediate("Tenant B Issuing", &root_b, None);
    let dev = device("b-device", &inter_b);
    let direct = device("b-direct", &root_b);

    // Without A's upload: B's device is B's.
    let mut b = TrustStore::builder();
    b.tenant("b", max_chain(3));
    b.anchor(spec("b", &root_b, AnchorStatus::Enabled))
        .expect("anchor");
    let clean = b.build();
    assert_eq!(&*verify(&clean, &[&dev, &inter_b]).expect("b").tenant, "b");

    for a_first in [true, false] {
        let mut b = TrustStore::builder();
        b.tenant("b", max_chain(3));
        let upload_a = |b: &mut certs::TrustStoreBuilder| {
            b.anchor(spec("a", &inter_b, AnchorStatus::Enabled))
                .expect("anchor");
        };
        if a_first {
            upload_a(&mut b);
        }
        b.anchor(spec("b", &root_b, AnchorStatus::Enabled))
            .expect("anchor");
        if !a_first {
            upload_a(&mut b);
        }
        let s = b.build();
        for chain in [
            &[&dev, &inter_b][..],
            &[&dev, &inter_b, &root_b][..],
            // Leaf only: only A's copy validates it, but A's copy was issued by B's
            // root, so B would validate it too given the intermediate.
            &[&dev][..],
            &[&dev, &root_b, &inter_b][..],
        ] {
            assert_eq!(
                verify(&s, chain),
                Err(VerifyError::AmbiguousTenant),
                "a_first={a_first} chain of {}",
                chain.len()
            );
        }
        assert!(s.has_candidate_issuer(&[der(&dev), der(&inter_b)]));
        // B's devices issued by its root directly are not touched by A's upload.
        assert_eq!(&*verify(&s, &[&direct]).expect("direct").tenant, "b");
    }
}

#[test]
fn manual_serials_in_any_notation() {
    let ca = root("Tenant CA");
    let dev = device("dev-1", &ca);
    let hex = serial(&dev);
    let colon_upper = certs::info::colon_hex(&hex);
    for typed in [hex.to_ascii_uppercase(), colon_upper, format!("00{hex}")] {
        let s = store(
            &ca,
            TenantPolicy {
                revoked_serials: HashSet::from([typed.clone()]),
                ..TenantPolicy::default()
            },
        );
        assert_eq!(verify(&s, &[&dev]), Err(VerifyError::Revoked), "{typed}");
    }
}

/// Tenant B's PKI for the look-alike tests: root, intermediate, and chains with their
/// verdicts.
struct TenantB {
    root: Issued,
    inter: Issued,
    chains: Vec<Vec<CertificateDer<'static>>>,
}

fn tenant_b() -> TenantB {
    let root = root("Tenant B Root");
    let inter = intermediate("Tenant B Issuing", &root, None);
    let dev = device("b-device", &inter);
    let direct = device("b-direct", &root);
    let revoked = device("b-revoked", &inter);
    let issuer = inter.issuer().expect("issuer");
    let expired =
        issue::device("b-expired", window(-30, -1), KeyType::P256, &issuer, &[]).expect("dev");
    // A stranger's device naming B's root (its DN and SKI) as issuer.
    let stranger = look_alike(&root, true);
    let stranger_dev = device("stranger", &stranger);
    let chains = vec![
        vec![der(&dev), der(&inter)],
        vec![der(&dev), der(&inter), der(&root)],
        vec![der(&direct)],
        vec![der(&direct), der(&root)],
        vec![der(&revoked), der(&inter)],
        vec![der(&expired), der(&inter)],
        // Not sent the intermediate: no path.
        vec![der(&dev)],
        vec![der(&stranger_dev)],
    ];
    TenantB {
        root,
        inter,
        chains,
    }
}

fn store_b_with(b: &TenantB, tenant_a: &[&Issued]) -> TrustStore {
    let mut s = TrustStore::builder();
    let revoked = certs::CertInfo::parse(b.chains[4][0].as_ref())
        .expect("info")
        .serial_hex;
    s.tenant(
        "b",
        TenantPolicy {
            max_chain_length: 3,
            revoked_serials: HashSet::from([revoked]),
            ..TenantPolicy::default()
        },
    );
    // A's uploads before and after B's: order must not matter either.
    let (before, after) = tenant_a.split_at(tenant_a.len() / 2);
    for ca in before {
        s.anchor(spec("a", ca, AnchorStatus::Enabled))
            .expect("anchor");
    }
    s.anchor(spec("b", &b.root, AnchorStatus::Enabled))
        .expect("anchor");
    for ca in after {
        s.anchor(spec("a", ca, AnchorStatus::Enabled))
            .expect("anchor");
    }
    s.build()
}

/// Tenant A uploads self-signed CAs whose subject is the DN of B's intermediate or of
/// B's root, with its own SKI or with B's SKI bytes, one or fifty of them: every one of
/// B's chains gets exactly the verdict it gets without them (the old code refused B's
/// valid devices with "bad signature").
#[test]
fn look_alikes_of_another_tenants_cas_never_change_its_verdicts() {
    let b = tenant_b();
    let clean = store_b_with(&b, &[]);
    let expected: Vec<_> = b
        .chains
        .iter()
        .map(|c| clean.verify_device(c, UnixTime::now()))
        .collect();
    assert_eq!(&*expected[0].as_ref().expect("valid").tenant, "b");
    assert_eq!(expected[1].as_ref().expect("valid").chain_length, 3);
    assert!(expected[2].is_ok() && expected[3].is_ok());
    assert_eq!(expected[4], Err(VerifyError::Revoked));
    assert_eq!(expected[5], Err(VerifyError::Expired));
    assert_eq!(expected[6], Err(VerifyError::UnknownIssuer));
    assert_eq!(expected[7], Err(VerifyError::UnknownIssuer));

    let mut cases: Vec<(String, Vec<Issued>)> = Vec::new();
    for (name, target) in [("intermediate", &b.inter), ("root", &b.root)] {
        for copy_ski in [false, true] {
            cases.push((
                format!("{name} DN, copied SKI {copy_ski}"),
                vec![look_alike(target, copy_ski)],
            ));
        }
    }
    // Another kind of key (RSA for B's P-256 CAs).
    for (name, target) in [("intermediate", &b.inter), ("root", &b.root)] {
        let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        cases.push((
            format!("{name} DN and SKI, RSA key"),
            vec![look_alike_with_key(target, true, rsa)],
        ));
    }
    // Fifty of each kind at once.
    let mut many = Vec::new();
    for _ in 0..50 {
        for target in [&b.inter, &b.root] {
            for copy_ski in [false, true] {
                many.push(look_alike(target, copy_ski));
            }
        }
    }
    cases.push(("fifty of each kind".into(), many));
    for (name, fakes) in &cases {
        let refs: Vec<&Issued> = fakes.iter().collect();
        let s = store_b_with(&b, &refs);
        for (chain, want) in b.chains.iter().zip(&expected) {
            assert_eq!(
                &s.verify_device(chain, UnixTime::now()),
                want,
                "{name}, chain of {}",
                chain.len()
            );
        }
    }
}

/// The look-alikes do not even cost B's devices their place in the candidate budget:
/// one tenant's candidates are capped, and tenants take turns.
#[test]
fn one_tenants_look_alikes_cannot_exhaust_the_candidate_budget() {
    use certs::trust::{MAX_CANDIDATES, MAX_CANDIDATES_PER_TENANT};
    let b = tenant_b();
    // More look-alikes of B's root (same DN and SKI) than the whole budget.
    let fakes: Vec<Issued> = (0..MAX_CANDIDATES + MAX_CANDIDATES_PER_TENANT)
        .map(|_| look_alike(&b.root, true))
        .collect();
    // All uploaded before B's root: a plain first-come list would never reach it.
    let mut builder = TrustStore::builder();
    builder.tenant("b", max_chain(3));
    for f in &fakes {
        builder
            .anchor(spec("a", f, AnchorStatus::Enabled))
            .expect("anchor");
    }
    builder
        .anchor(spec("b", &b.root, AnchorStatus::Enabled))
        .expect("anchor");
    let s = builder.build();
    for chain in &b.chains[..4] {
        assert_eq!(
            &*s.verify_device(chain, UnixTime::now()).expect("b").tenant,
            "b"
        );
    }
}

/// An intermediate CA built directly with rcgen (CA:true critical, keyCertSign, SKI,
/// AKI), signed by `parent`, for shapes `issue::ca` does not make.
fn custom_ca(cn: &str, parent: &Issued, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let v = window(-1, 30);
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    edit(&mut p);
    let key = KeyPair::generate().expect("key");
    let cert = p
        .signed_by(&key, &parent.issuer().expect("issuer"))
        .expect("sign");
    Issued {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der().into(),
    }
}

fn extension(oid: &[u64], content: &[u8], critical: bool) -> rcgen::CustomExtension {
    let mut e = rcgen::CustomExtension::from_oid_content(oid, content.to_vec());
    e.set_criticality(critical);
    e
}

/// The SubjectKeyIdentifier bytes of an issued certificate.
fn ski_of(i: &Issued) -> Vec<u8> {
    let info = certs::CertInfo::parse(i.cert_der.as_ref()).expect("info");
    hex::decode(info.subject_key_id.expect("ski")).expect("hex")
}

/// DER of an AuthorityKeyIdentifier holding only `key_id`.
fn aki_content(key_id: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x80, key_id.len() as u8];
    inner.extend_from_slice(key_id);
    let mut out = vec![0x30, inner.len() as u8];
    out.extend(inner);
    out
}

/// A store for tenant `t` with one root and chains of up to 4 certificates.
fn store4(ca: &Issued) -> TrustStore {
    store(ca, max_chain(4))
}

#[test]
fn critical_key_identifiers_are_refused() {
    let r = root("Root");
    let s = store4(&r);
    // Critical AKI on the device.
    let dev = custom_device(&r, |p| {
        p.use_authority_key_identifier_extension = false;
        p.custom_extensions = vec![extension(&[2, 5, 29, 35], &aki_content(&ski_of(&r)), true)];
    });
    assert_eq!(
        verify(&s, &[&dev]),
        Err(VerifyError::CriticalAuthorityKeyId)
    );
    // The same AKI non-critical: accepted (the test isolates criticality).
    let ok = custom_device(&r, |p| {
        p.use_authority_key_identifier_extension = false;
        p.custom_extensions = vec![extension(&[2, 5, 29, 35], &aki_content(&ski_of(&r)), false)];
    });
    assert!(verify(&s, &[&ok]).is_ok());
    // Critical SKI on the device (no BasicConstraints, so rcgen writes no SKI itself).
    let dev = custom_device(&r, |p| {
        p.is_ca = IsCa::NoCa;
        p.custom_extensions = vec![extension(&[2, 5, 29, 14], &[0x04, 0x02, 1, 2], true)];
    });
    assert_eq!(verify(&s, &[&dev]), Err(VerifyError::CriticalSubjectKeyId));
    let e = VerifyError::CriticalSubjectKeyId;
    assert_eq!(e.label(), "critical_subject_key_id");
    assert_eq!(
        e.to_string(),
        "a certificate in the chain marks its SubjectKeyIdentifier critical; RFC 5280 requires it non-critical"
    );
    assert_eq!(
        VerifyError::CriticalAuthorityKeyId.to_string(),
        "a certificate in the chain marks its AuthorityKeyIdentifier critical; RFC 5280 requires it non-critical"
    );
}

#[test]
fn missing_key_identifiers_are_refused() {
    let r = root("Root");
    let s = store4(&r);
    // An intermediate without AKI (not self-signed).
    let no_aki = custom_ca("No AKI", &r, |p| {
        p.use_authority_key_identifier_extension = false
    });
    let dev = device("dev-1", &no_aki);
    assert_eq!(
        verify(&s, &[&dev, &no_aki]),
        Err(VerifyError::MissingAuthorityKeyId)
    );
    assert_eq!(
        VerifyError::MissingAuthorityKeyId.to_string(),
        "a certificate in the chain is not self-signed and has no AuthorityKeyIdentifier key identifier (required by RFC 5280)"
    );
    // A CA intermediate without SKI: BasicConstraints written by hand (rcgen writes the
    // SKI along with its own BasicConstraints).
    let no_ski = custom_ca("No SKI", &r, |p| {
        p.is_ca = IsCa::NoCa;
        p.custom_extensions = vec![extension(
            &[2, 5, 29, 19],
            &[0x30, 0x03, 0x01, 0x01, 0xff],
            true,
        )];
    });
    let info = certs::CertInfo::parse(no_ski.cert_der.as_ref()).expect("info");
    assert!(info.is_ca && info.subject_key_id.is_none());
    let dev = device("dev-2", &no_ski);
    assert_eq!(
        verify(&s, &[&dev, &no_ski]),
        Err(VerifyError::MissingSubjectKeyId)
    );
    assert_eq!(
        VerifyError::MissingSubjectKeyId.to_string(),
        "a CA certificate in the chain has no SubjectKeyIdentifier (required by RFC 5280)"
    );
}

#[test]
fn policy_constraints_must_be_critical() {
    let r = root("Root");
    let s = store4(&r);
    // policyConstraints { requireExplicitPolicy 0 }.
    let content = [0x30, 0x03, 0x80, 0x01, 0x00];
    let soft = custom_ca("Soft policy", &r, |p| {
        p.custom_extensions = vec![extension(&[2, 5, 29, 36], &content, false)]
    });
    assert_eq!(
        verify(&s, &[&device("dev-1", &soft), &soft]),
        Err(VerifyError::PolicyConstraintsNotCritical)
    );
    assert_eq!(
        VerifyError::PolicyConstraintsNotCritical.label(),
        "policy_constraints_not_critical"
    );
    // Critical, as RFC 5280 requires: webpki does not process policies and refuses it;
    // the reason names the extension instead of a generic failure.
    let hard = custom_ca("Hard policy", &r, |p| {
        p.custom_extensions = vec![extension(&[2, 5, 29, 36], &content, true)]
    });
    let e = verify(&s, &[&device("dev-2", &hard), &hard]).expect_err("refused");
    assert_eq!(
        e,
        VerifyError::UnsupportedCriticalExtension("policyConstraints (2.5.29.36)".into())
    );
    assert_eq!(
        e.to_string(),
        "a certificate in the chain has a critical extension this server does not process: policyConstraints (2.5.29.36)"
    );
    assert_eq!(e.label(), "unsupported_critical_extension");
}

#[test]
fn critical_eku_on_a_device_is_refused() {
    let r = root("Root");
    let s = store4(&r);
    // extKeyUsage { clientAuth }, critical.
    let eku = [
        0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
    ];
    let dev = custom_device(&r, |p| {
        p.extended_key_usages = Vec::new();
        p.custom_extensions = vec![extension(&[2, 5, 29, 37], &eku, true)];
    });
    assert_eq!(
        verify(&s, &[&dev]),
        Err(VerifyError::CriticalExtendedKeyUsage)
    );
    assert_eq!(
        VerifyError::CriticalExtendedKeyUsage.to_string(),
        "the device certificate marks its ExtendedKeyUsage critical, which device certificates may not"
    );
    let ok = custom_device(&r, |p| {
        p.extended_key_usages = Vec::new();
        p.custom_extensions = vec![extension(&[2, 5, 29, 37], &eku, false)];
    });
    assert!(verify(&s, &[&ok]).is_ok());
}

/// RFC 5280 6.1.4 (l): a self-issued intermediate (here a key rollover: the root's DN
/// with a new key, signed by the root's key) does not count against pathLenConstraint.
/// The anchor's constraint is checked here and is counted that way; an intermediate's
/// constraint is checked by webpki, which counts it, so that chain is refused with the
/// exact reason rather than "path length exceeded".
#[test]
fn self_issued_intermediates_and_path_length() {
    let r = root_with(
        "Rollover Root",
        &CaOptions {
            path_len: Some(0),
            ..CaOptions::default()
        },
    );
    let rollover = intermediate("Rollover Root", &r, None);
    let dev = device("dev-1", &rollover);
    let id = verify(&store4(&r), &[&dev, &rollover]).expect("RFC 5280 accepts");
    // The chain length still counts it: device + rollover + anchor.
    assert_eq!(id.chain_length, 3);
    // A real (not self-issued) intermediate under pathlen:0 is still refused.
    let sub = intermediate("Sub", &r, None);
    assert_eq!(
        verify(&store4(&r), &[&device("dev-2", &sub), &sub]),
        Err(VerifyError::PathLenExceeded)
    );

    let r2 = root("Root");
    let i = intermediate("Issuing", &r2, Some(0));
    let i_rollover = intermediate("Issuing", &i, None);
    let dev = device("dev-3", &i_rollover);
    let e = verify(&store4(&r2), &[&dev, &i_rollover, &i]).expect_err("refused");
    assert_eq!(e, VerifyError::SelfIssuedIntermediate);
    assert_eq!(e.label(), "self_issued_intermediate");
    assert_eq!(
        e.to_string(),
        "the chain holds a self-issued intermediate CA certificate; RFC 5280 exempts it from pathLenConstraint and name constraints, which this server cannot do, so the chain is refused"
    );
}

/// rfc822Name name constraints: webpki refuses every email name under them, and does
/// not look at the subject's emailAddress attribute RFC 5280 puts under them. Either
/// way the chain is refused with a reason that says so; DNS constraints still work.
#[test]
fn name_constraints_rfc822_and_dns() {
    let r = root("Root");
    let s = store4(&r);
    let constrained = custom_ca("Mail constrained", &r, |p| {
        p.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![
                rcgen::GeneralSubtree::Rfc822Name("example.com".into()),
                rcgen::GeneralSubtree::DnsName("example.com".into()),
            ],
            excluded_subtrees: Vec::new(),
        })
    });
    let expected = VerifyError::UnsupportedNameConstraint("rfc822Name");
    // An email SAN RFC 5280 would accept.
    let san = custom_device(&constrained, |p| {
        p.subject_alt_names = vec![SanType::Rfc822Name(
            "dev@example.com".try_into().expect("email"),
        )]
    });
    assert_eq!(verify(&s, &[&san, &constrained]), Err(expected.clone()));
    // An emailAddress attribute outside the constraint, which webpki would not see.
    let attr = custom_device(&constrained, |p| {
        p.distinguished_name.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "dev@evil.example",
        );
    });
    assert_eq!(verify(&s, &[&attr, &constrained]), Err(expected.clone()));
    assert_eq!(
        expected.to_string(),
        "the chain uses rfc822Name name constraints, which this server does not evaluate, so it is refused"
    );
    assert_eq!(expected.label(), "unsupported_name_constraint");
    // No email anywhere: the DNS constraint is evaluated, inside and outside.
    let inside = custom_device(&constrained, |p| {
        p.subject_alt_names = vec![SanType::DnsName("dev.example.com".try_into().expect("dns"))]
    });
    assert!(verify(&s, &[&inside, &constrained]).is_ok());
    let outside = custom_device(&constrained, |p| {
        p.subject_alt_names = vec![SanType::DnsName("dev.example.org".try_into().expect("dns"))]
    });
    assert_eq!(
        verify(&s, &[&outside, &constrained]),
        Err(VerifyError::NameConstraintViolation)
    );
}

/// Every certificate `certs::issue` makes for a chain (root, intermediates with and
/// without pathlen, devices, RSA) passes the chain rules.
#[test]
fn chains_made_by_issue_pass_every_rule() {
    let r = root("Root");
    let i = intermediate("Issuing", &r, Some(1));
    let i2 = intermediate("Issuing 2", &i, Some(0));
    let rsa_root = issue::ca(
        &Subject::cn("RSA Root"),
        issue::Validity::days(30),
        KeyType::Rsa2048,
        &CaOptions::default(),
        None,
    )
    .expect("rsa");
    let rsa_dev = issue::device(
        "rsa-dev",
        issue::Validity::days(30),
        KeyType::Rsa2048,
        &rsa_root.issuer().expect("issuer"),
        &["http://crl.example/ca.crl".into()],
    )
    .expect("dev");
    let s = store(&r, max_chain(4));
    assert!(verify(&s, &[&device("d1", &r)]).is_ok());
    assert!(verify(&s, &[&device("d2", &i), &i]).is_ok());
    assert!(verify(&s, &[&device("d3", &i2), &i2, &i, &r]).is_ok());
    assert!(verify(&store(&rsa_root, max_chain(2)), &[&rsa_dev]).is_ok());
}

/// webpki follows at most 6 intermediates: a longer path is refused with its own
/// reason, not "chain too long ... the tenant allows 10".
#[test]
fn paths_deeper_than_the_verifier_follows() {
    let r = root("Root");
    let mut chain_cas = vec![intermediate("Level 1", &r, None)];
    for n in 2..=7 {
        let parent = chain_cas.last().expect("parent");
        let next = intermediate(&format!("Level {n}"), parent, None);
        chain_cas.push(next);
    }
    let s = store(&r, max_chain(10));
    // 6 intermediates: device + 6 + anchor = 8 certificates, accepted.
    let dev6 = device("dev-6", &chain_cas[5]);
    let mut chain6: Vec<&Issued> = vec![&dev6];
    chain6.extend(chain_cas[..6].iter().rev());
    assert_eq!(
        verify(&s, &chain6).expect("8 certificates").chain_length,
        certs::trust::VERIFIER_MAX_CHAIN_LENGTH as usize
    );
    // 7 intermediates: 9 certificates, within the tenant's 10 but beyond the verifier.
    let dev7 = device("dev-7", &chain_cas[6]);
    let mut chain7: Vec<&Issued> = vec![&dev7];
    chain7.extend(chain_cas.iter().rev());
    let e = verify(&s, &chain7).expect_err("too deep");
    assert_eq!(e, VerifyError::PathTooDeep);
    assert_eq!(
        e.to_string(),
        "chain too long: the verifier follows at most 8 certificates (device, 6 intermediates, anchor)"
    );
    assert_eq!(e.label(), "path_too_deep");
}

/// A live session verified before another tenant uploaded a certificate of its chain is
/// closed at the next re-check: the snapshot is safe on its own whatever the order of
/// uploads and connections.
#[test]
fn recheck_refuses_once_another_tenant_claims_the_chain() {
    let root_b = root("Tenant B Root");
    let inter_b = intermediate("Tenant B Issuing", &root_b, None);
    let dev = device("b-device", &inter_b);
    let build = |a_uploads: &[&Issued]| {
        let mut b = TrustStore::builder();
        b.tenant("b", max_chain(3));
        b.anchor(spec("b", &root_b, AnchorStatus::Enabled))
            .expect("anchor");
        for ca in a_uploads {
            b.anchor(spec("a", ca, AnchorStatus::Enabled))
                .expect("anchor");
        }
        b.build()
    };
    let before = build(&[]);
    let id = verify(&before, &[&dev, &inter_b]).expect("b");
    assert_eq!(before.recheck(&id, UnixTime::now()), Ok(()));
    // A uploads B's intermediate, or B's root.
    for claimed in [&inter_b, &root_b] {
        assert_eq!(
            build(&[claimed]).recheck(&id, UnixTime::now()),
            Err(VerifyError::AmbiguousTenant)
        );
    }
    // Look-alikes of either: nothing changes.
    let fakes = [look_alike(&inter_b, true), look_alike(&root_b, true)];
    assert_eq!(
        build(&[&fakes[0], &fakes[1]]).recheck(&id, UnixTime::now()),
        Ok(())
    );
}

/// A device may present nine CAs of one name and one key that all sign each other,
/// plus a certificate the anchor really signed: explaining webpki's refusal must not
/// try the 9! orderings (loop prevention and a signature budget bound it).
#[test]
fn many_mutually_signed_cas_in_one_chain_are_refused_without_blowup() {
    let r = root("Root");
    let key = KeyPair::generate().expect("key");
    let pkcs8 = key.serialize_der();
    let mut copies = Vec::new();
    for n in 0..9 {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Loop CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, n]));
        let cert = p.self_signed(&key).expect("ca");
        copies.push(Issued {
            cert_der: cert.der().clone(),
            key_der: pkcs8.clone().into(),
        });
    }
    let dev = device("looped", &copies[0]);
    let genuine = device("genuine", &r);
    let mut chain: Vec<&Issued> = vec![&dev];
    chain.extend(copies.iter());
    chain.push(&genuine);
    let s = store(&r, max_chain(10));
    assert_eq!(verify(&s, &chain), Err(VerifyError::UnknownIssuer));
}

/// Ten re-issued copies of a root (one key, one name, distinct serials) in one tenant:
/// its devices verify (webpki runs are capped per tenant, the first copy suffices), and
/// a copy held by another tenant is still seen: the per-tenant caps never hide another
/// tenant's claim.
#[test]
fn many_copies_of_one_key_in_a_tenant() {
    let r = root("Reissued Root");
    let key = KeyPair::try_from(r.key_der.secret_pkcs8_der()).expect("key");
    let copies: Vec<Issued> = (0..10u8)
        .map(|n| {
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Reissued Root");
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, n]));
            p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski_of(&r));
            Issued {
                cert_der: p.self_signed(&key).expect("copy").der().clone(),
                key_der: r.key_der.clone_key(),
            }
        })
        .collect();
    let dev = device("dev-1", &r);
    let mut b = TrustStore::builder();
    for c in &copies {
        b.anchor(spec("b", c, AnchorStatus::Enabled))
            .expect("anchor");
    }
    let s = b.build();
    assert_eq!(&*verify(&s, &[&dev]).expect("b").tenant, "b");
    // Another tenant uploads the last of the copies (uploaded last, so the furthest
    // from the front of any list).
    let mut b = TrustStore::builder();
    for c in &copies {
        b.anchor(spec("b", c, AnchorStatus::Enabled))
            .expect("anchor");
    }
    b.anchor(spec("a", &copies[9], AnchorStatus::Enabled))
        .expect("anchor");
    assert_eq!(
        verify(&b.build(), &[&dev]),
        Err(VerifyError::AmbiguousTenant)
    );
}
