//! `TrustStore::verify_device` with 1 anchor and with 10,000 anchors spread over 1,000
//! tenants. The candidate lookup is hash-based (SKI via the device's AKI, and issuer DN),
//! so the two must cost the same; a scan over anchors would show up here at once. A
//! third store adds 50 look-alikes of the device's CA (same DN, same SKI, other keys)
//! uploaded by another tenant: they cost at most `MAX_CANDIDATES_PER_TENANT` quick
//! signature checks, never a scan.
//!
//! Run: `cargo bench -p certs --bench verify_device -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;
use std::time::Instant;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::{AnchorSpec, AnchorStatus, CertificateDer, TrustStore, UnixTime};
use criterion::Criterion;

const TENANTS: usize = 1_000;
const ANCHORS_PER_TENANT: usize = 10;

fn ca(name: &str) -> Issued {
    issue::ca(
        &Subject::cn(name),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("CA")
}

fn spec(tenant: &str, ca: &Issued) -> AnchorSpec {
    AnchorSpec {
        tenant: tenant.to_string(),
        status: AnchorStatus::Enabled,
        auto_registration: false,
        cert_der: ca.cert_der.as_ref().to_vec(),
    }
}

/// A self-signed CA with `ca`'s subject (`cn`) and SKI bytes but another key.
fn look_alike(cn: &str, ca: &Issued) -> Issued {
    let info = certs::CertInfo::parse(ca.cert_der.as_ref()).expect("info");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
        hex::decode(info.subject_key_id.expect("ski")).expect("hex"),
    );
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("look-alike");
    Issued {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der().into(),
    }
}

fn bench(c: &mut Criterion) {
    let started = Instant::now();
    let mut cas = Vec::with_capacity(TENANTS * ANCHORS_PER_TENANT);
    for t in 0..TENANTS {
        for k in 0..ANCHORS_PER_TENANT {
            cas.push((format!("tenant-{t}"), ca(&format!("Tenant {t} CA {k}"))));
        }
    }
    eprintln!(
        "generated {} CA certificates in {:.1?}",
        cas.len(),
        started.elapsed()
    );
    // The device's CA sits in the middle of the big store.
    let (target_tenant, target) = &cas[cas.len() / 2];
    let device = issue::device(
        "bench-device",
        Validity::days(30),
        KeyType::P256,
        &target.issuer().expect("issuer"),
        &[],
    )
    .expect("device")
    .cert_der;
    let target_cn = format!(
        "Tenant {} CA {}",
        cas.len() / 2 / ANCHORS_PER_TENANT,
        cas.len() / 2 % ANCHORS_PER_TENANT
    );
    let fakes: Vec<Issued> = (0..50).map(|_| look_alike(&target_cn, target)).collect();

    let mut one = TrustStore::builder();
    one.anchor(spec(target_tenant, target)).expect("anchor");
    let one = one.build();

    let started = Instant::now();
    let mut many = TrustStore::builder();
    for (tenant, ca) in &cas {
        many.anchor(spec(tenant, ca)).expect("anchor");
    }
    let mut with_fakes = TrustStore::builder();
    for f in &fakes {
        with_fakes.anchor(spec("attacker", f)).expect("anchor");
    }
    for (tenant, ca) in &cas {
        with_fakes.anchor(spec(tenant, ca)).expect("anchor");
    }
    let with_fakes = with_fakes.build();
    let many = many.build();
    eprintln!(
        "built a store of {} anchors in {:.1?}",
        many.anchor_count(),
        started.elapsed()
    );

    let now = UnixTime::now();
    for (store, label) in [
        (&one, "1 anchor"),
        (&many, "10000 anchors"),
        (&with_fakes, "10000 anchors + 50 look-alikes"),
    ] {
        for chain in [
            vec![device.clone()],
            vec![device.clone(), target.cert_der.clone()],
        ] {
            let id = store.verify_device(&chain, now).expect("valid device");
            assert_eq!(&*id.tenant, target_tenant.as_str(), "{label}");
        }
    }

    paired_ratio(&one, &many, "10000 anchors", &device, now);
    paired_ratio(
        &one,
        &with_fakes,
        "10000 anchors + 50 look-alikes",
        &device,
        now,
    );

    let mut g = c.benchmark_group("verify_device");
    for (label, store) in [
        ("1_anchor", &one),
        ("10000_anchors_1000_tenants", &many),
        ("10000_anchors_50_look_alikes", &with_fakes),
    ] {
        let leaf = [device.clone()];
        g.bench_function(format!("{label}/leaf_aki"), |b| {
            b.iter(|| black_box(store.verify_device(black_box(&leaf), now)))
        });
        let with_ca = [device.clone(), target.cert_der.clone()];
        g.bench_function(format!("{label}/leaf_and_ca"), |b| {
            b.iter(|| black_box(store.verify_device(black_box(&with_ca), now)))
        });
    }
    g.finish();
}

/// The machine is shared, so background load drifts between criterion's runs. This
/// alternates short batches on both stores and compares the medians, which cancels the
/// drift; it prints the `many` / 1-anchor time ratio.
fn paired_ratio(
    one: &TrustStore,
    many: &TrustStore,
    label: &str,
    device: &CertificateDer<'_>,
    now: UnixTime,
) {
    const ROUNDS: usize = 41;
    const BATCH: u32 = 200;
    let chain = [device.clone()];
    let time = |store: &TrustStore| {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(store.verify_device(black_box(&chain), now)).ok();
        }
        start.elapsed().as_secs_f64() / f64::from(BATCH)
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which store goes first so neither always gets the warm cache.
        if round % 2 == 0 {
            a.push(time(one));
            b.push(time(many));
        } else {
            b.push(time(many));
            a.push(time(one));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb) = (median(&mut a), median(&mut b));
    eprintln!(
        "paired medians: 1 anchor {:.1} µs, {label} {:.1} µs, ratio {:.3}",
        ma * 1e6,
        mb * 1e6,
        mb / ma
    );
}

// What `criterion_group!`/`criterion_main!` expand to, without their undocumented pub fn.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
