//! The server-certificate requirements report, row by row, with generated certificates
//! and a CRL served over HTTP on a loopback port.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use certs::issue::{self, CaOptions, Issued, KeyType, Revocation, Subject, Validity};
use certs::requirements::{self, rows, Input, Report};
use certs::revocation::{CrlFetcher, CRL_UNREACHABLE};
use common::*;

fn full_subject(cn: &str) -> Subject {
    Subject {
        cn: cn.to_string(),
        o: Some("Acme".into()),
        ou: Some("IoT".into()),
        c: Some("DE".into()),
    }
}

/// One RSA-2048 root for the whole file (RSA key generation is the slow part).
fn rsa_root() -> &'static Issued {
    static ROOT: OnceLock<Issued> = OnceLock::new();
    ROOT.get_or_init(|| {
        issue::ca(
            &full_subject("Acme Root"),
            Validity::days(365),
            KeyType::Rsa2048,
            &CaOptions::default(),
            None,
        )
        .expect("root")
    })
}

fn server_with(subject: &Subject, validity: Validity, key: KeyType, crl: &[String]) -> Issued {
    let issuer = rsa_root().issuer().expect("issuer");
    issue::server(
        subject,
        &["mqtt.example.com".to_string()],
        validity,
        key,
        Some(&issuer),
        crl,
    )
    .expect("server")
}

fn good_server() -> &'static Issued {
    static S: OnceLock<Issued> = OnceLock::new();
    S.get_or_init(|| {
        server_with(
            &full_subject("mqtt.example.com"),
            Validity::days(90),
            KeyType::Rsa2048,
            &[],
        )
    })
}

fn run(crt: &[u8], key: &[u8], chain: Option<&[u8]>, pass: Option<&str>) -> Report {
    requirements::check(&Input {
        crt,
        key,
        chain,
        passphrase: pass,
        crl_check: false,
        now: now(),
    })
}

fn failure(report: &Report) -> (String, String) {
    let row = report.first_failure().expect("a failed row");
    (row.name.clone(), row.reason.clone().unwrap_or_default())
}

#[test]
fn a_good_certificate_passes_every_row() {
    let s = good_server();
    let root = rsa_root().cert_pem();
    let report = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert!(report.passed(), "{report:#?}");
    let names: Vec<&str> = report.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            rows::READABLE,
            rows::SIGNATURE,
            rows::KEY_SIZE,
            rows::VALID_FROM,
            rows::VALID_TO,
            rows::SUBJECT,
            rows::NO_WILDCARD,
            rows::SERVER_AUTH,
            rows::HOST_NAMES,
            rows::KEY_READABLE,
            rows::KEY_MATCHES,
            rows::CHAIN,
            rows::CRL_DP,
        ]
    );
    // Without CRL validation the distribution point is informational only.
    let dp = report.row(rows::CRL_DP).expect("dp row");
    assert!(!dp.required && !dp.passed);
}

#[test]
fn chain_may_follow_the_certificate_in_the_crt_file() {
    let s = good_server();
    let full = s.cert_pem() + &rsa_root().cert_pem();
    let report = run(full.as_bytes(), s.key_pem().as_bytes(), None, None);
    assert!(report.passed(), "{report:#?}");
}

#[test]
fn expired_certificate() {
    let s = server_with(
        &full_subject("old.example.com"),
        window(-30, -1),
        KeyType::Rsa2048,
        &[],
    );
    let root = rsa_root().cert_pem();
    let report = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(
        failure(&report),
        (
            rows::VALID_TO.to_string(),
            "This SSL certificate has expired and isn't considered valid.".to_string()
        )
    );
}

#[test]
fn not_yet_valid_certificate() {
    let s = server_with(
        &full_subject("new.example.com"),
        window(2, 30),
        KeyType::Rsa2048,
        &[],
    );
    let root = rsa_root().cert_pem();
    let report = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(failure(&report).0, rows::VALID_FROM);
}

#[test]
fn wrong_passphrase_on_an_encrypted_key() {
    let s = good_server();
    let enc = certs::pem::encrypt_legacy_pem("PRIVATE KEY", s.key_der.secret_pkcs8_der(), "right");
    let root = rsa_root().cert_pem();
    let crt = s.cert_pem();
    let report = run(
        crt.as_bytes(),
        enc.as_bytes(),
        Some(root.as_bytes()),
        Some("wrong"),
    );
    assert_eq!(
        failure(&report),
        (
            rows::KEY_READABLE.to_string(),
            "Passphrase does not match to the key".to_string()
        )
    );
    let ok = run(
        crt.as_bytes(),
        enc.as_bytes(),
        Some(root.as_bytes()),
        Some("right"),
    );
    assert!(ok.passed(), "{ok:#?}");
}

#[test]
fn key_of_another_certificate() {
    let s = good_server();
    let other = root("other");
    let root = rsa_root().cert_pem();
    let report = run(
        s.cert_pem().as_bytes(),
        other.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(
        failure(&report),
        (
            rows::KEY_MATCHES.to_string(),
            requirements::KEY_MISMATCH.to_string()
        )
    );
}

#[test]
fn root_ca_that_did_not_sign_the_certificate() {
    let s = good_server();
    // Same DN as the real root, other key: only the signature tells them apart.
    let impostor = issue::ca(
        &full_subject("Acme Root"),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("impostor");
    let report = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(impostor.cert_pem().as_bytes()),
        None,
    );
    assert_eq!(
        failure(&report),
        (
            rows::CHAIN.to_string(),
            "Cannot validate chain of trust. The provided Certificate and Root CA don't match."
                .to_string()
        )
    );
    let no_chain = run(s.cert_pem().as_bytes(), s.key_pem().as_bytes(), None, None);
    assert_eq!(
        failure(&no_chain),
        (
            rows::CHAIN.to_string(),
            requirements::CHAIN_NO_ROOT.to_string()
        )
    );
}

#[test]
fn chain_through_an_intermediate() {
    let inter = issue::ca(
        &full_subject("Acme Issuing"),
        Validity::days(365),
        KeyType::Rsa2048,
        &CaOptions::default(),
        Some(&rsa_root().issuer().expect("issuer")),
    )
    .expect("intermediate");
    let s = issue::server(
        &full_subject("mqtt.example.com"),
        &["mqtt.example.com".to_string()],
        Validity::days(30),
        KeyType::Rsa2048,
        Some(&inter.issuer().expect("issuer")),
        &[],
    )
    .expect("server");
    // Root first, intermediate second: order in the chain file does not matter.
    let chain = rsa_root().cert_pem() + &inter.cert_pem();
    let report = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(chain.as_bytes()),
        None,
    );
    assert!(report.passed(), "{report:#?}");
    // Without the root, the chain stops at the intermediate.
    let partial = run(
        s.cert_pem().as_bytes(),
        s.key_pem().as_bytes(),
        Some(inter.cert_pem().as_bytes()),
        None,
    );
    assert_eq!(failure(&partial).1, requirements::CHAIN_MISMATCH);
}

#[test]
fn subject_wildcard_key_and_signature_rows() {
    let missing = server_with(
        &Subject {
            cn: "mqtt.example.com".into(),
            o: Some("Acme".into()),
            ou: None,
            c: None,
        },
        Validity::days(30),
        KeyType::Rsa2048,
        &[],
    );
    let root = rsa_root().cert_pem();
    let r = run(
        missing.cert_pem().as_bytes(),
        missing.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(
        failure(&r),
        (
            rows::SUBJECT.to_string(),
            "The certificate subject must contain CN, C, OU and O; missing: C, OU".to_string()
        )
    );

    let wild = server_with(
        &full_subject("*.example.com"),
        Validity::days(30),
        KeyType::Rsa2048,
        &[],
    );
    let r = run(
        wild.cert_pem().as_bytes(),
        wild.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(failure(&r).0, rows::NO_WILDCARD);

    // A P-256 key signed by the RSA root: the key row fails, the signature row passes.
    let ec = server_with(
        &full_subject("ec.example.com"),
        Validity::days(30),
        KeyType::P256,
        &[],
    );
    let r = run(
        ec.cert_pem().as_bytes(),
        ec.key_pem().as_bytes(),
        Some(root.as_bytes()),
        None,
    );
    assert_eq!(
        failure(&r),
        (
            rows::KEY_SIZE.to_string(),
            "The certificate key is EC P-256; an RSA key of 2048 or 4096 bits is required"
                .to_string()
        )
    );

    // Signed by a P-256 CA: ECDSA signature, not SHA256RSA.
    let ec_root = common::root("ec root");
    let by_ec = issue::server(
        &full_subject("x.example.com"),
        &["x.example.com".to_string()],
        Validity::days(30),
        KeyType::Rsa2048,
        Some(&ec_root.issuer().expect("issuer")),
        &[],
    )
    .expect("server");
    let r = run(
        by_ec.cert_pem().as_bytes(),
        by_ec.key_pem().as_bytes(),
        Some(ec_root.cert_pem().as_bytes()),
        None,
    );
    assert_eq!(failure(&r).0, rows::SIGNATURE);
}

#[test]
fn garbage_and_empty_inputs() {
    let r = run(b"not a certificate", b"", None, None);
    assert_eq!(r.rows.len(), 1);
    assert_eq!(failure(&r).0, rows::READABLE);
    let s = good_server();
    let r = run(s.cert_pem().as_bytes(), b"", None, None);
    assert_eq!(
        failure(&r),
        (
            rows::KEY_READABLE.to_string(),
            certs::ReadError::NoPrivateKey.to_string()
        )
    );
}

#[test]
fn pkcs12_keystore_as_the_certificate() {
    let s = good_server();
    let chain = [s.cert_der.clone(), rsa_root().cert_der.clone()];
    let p12 = certs::pem::write_pkcs12(&s.private_key(), &chain, "secret", "server").expect("p12");
    let r = run(&p12, b"", None, Some("secret"));
    assert!(r.passed(), "{r:#?}");
    let r = run(&p12, b"", None, Some("nope"));
    assert_eq!(
        failure(&r),
        (
            rows::READABLE.to_string(),
            "Passphrase does not match to the key".to_string()
        )
    );
}

/// Serves `body` to every HTTP request on a loopback port; returns the base URL.
async fn serve(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn crl_input<'a>(s: &'a str, k: &'a str, chain: &'a str) -> Input<'a> {
    Input {
        crt: s.as_bytes(),
        key: k.as_bytes(),
        chain: Some(chain.as_bytes()),
        passphrase: None,
        crl_check: true,
        now: now(),
    }
}

#[tokio::test]
async fn crl_rows_with_a_served_crl() {
    let root_issuer = rsa_root().issuer().expect("issuer");
    // A port that nothing listens on once the listener is dropped.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/root.crl", listener.local_addr().expect("addr"));
    drop(listener);
    let good = server_with(
        &full_subject("good.example.com"),
        Validity::days(30),
        KeyType::Rsa2048,
        std::slice::from_ref(&url),
    );
    let revoked = server_with(
        &full_subject("bad.example.com"),
        Validity::days(30),
        KeyType::Rsa2048,
        std::slice::from_ref(&url),
    );
    let bad_serial = certs::CertInfo::parse(revoked.cert_der.as_ref())
        .expect("info")
        .serial_hex;
    let crl = issue::crl(
        &root_issuer,
        &[Revocation {
            serial_hex: bad_serial,
            revoked_at: time::OffsetDateTime::now_utc(),
        }],
        1,
        7,
    )
    .expect("crl");

    // Nothing listens on the port yet: unreachable.
    let fetcher = CrlFetcher::with_policy(
        Duration::from_secs(2),
        Duration::from_secs(60),
        // The test's CRL server is on loopback, which the egress policy refuses by default.
        certs::egress::EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]),
    );
    let chain = rsa_root().cert_pem();
    let (gc, gk) = (good.cert_pem(), good.key_pem());
    let r = requirements::check_with_crl_fetch(&crl_input(&gc, &gk, &chain), &fetcher).await;
    assert_eq!(
        failure(&r),
        (rows::CRL_REACHABLE.to_string(), CRL_UNREACHABLE.to_string())
    );

    // Serve it on another port and point the same certificates' CRL at it through the
    // synchronous entry point, which takes an already fetched CRL.
    let base = serve(crl.clone()).await;
    let fetched = fetcher
        .fetch(&format!("{base}/root.crl"), now())
        .await
        .expect("fetch");
    let r = requirements::check_with_crl(&crl_input(&gc, &gk, &chain), Ok(&fetched));
    assert!(r.passed(), "{r:#?}");
    assert!(r.row(rows::CRL_REACHABLE).is_some_and(|x| x.passed));
    let (rc, rk) = (revoked.cert_pem(), revoked.key_pem());
    let r = requirements::check_with_crl(&crl_input(&rc, &rk, &chain), Ok(&fetched));
    assert_eq!(
        failure(&r),
        (
            rows::NOT_REVOKED.to_string(),
            "This certificate has been revoked by the CRL and can't be trusted for a secure connection"
                .to_string()
        )
    );

    // The offline check never passes a revocation status it did not see.
    let r = requirements::check(&crl_input(&gc, &gk, &chain));
    assert_eq!(failure(&r).0, rows::CRL_REACHABLE);
}

#[tokio::test]
async fn crl_fetched_from_the_distribution_point() {
    let root_issuer = rsa_root().issuer().expect("issuer");
    let crl = issue::crl(&root_issuer, &[], 1, 7).expect("crl");
    let base = serve(crl).await;
    let s = server_with(
        &full_subject("dp.example.com"),
        Validity::days(30),
        KeyType::Rsa2048,
        &[format!("{base}/root.crl")],
    );
    let fetcher = CrlFetcher::with_policy(
        Duration::from_secs(2),
        Duration::from_secs(60),
        // The test's CRL server is on loopback, which the egress policy refuses by default.
        certs::egress::EgressPolicy::allowing(vec!["127.0.0.0/8".parse().unwrap()]),
    );
    let chain = rsa_root().cert_pem();
    let (c, k) = (s.cert_pem(), s.key_pem());
    let r = requirements::check_with_crl_fetch(&crl_input(&c, &k, &chain), &fetcher).await;
    assert!(r.passed(), "{r:#?}");
    assert!(r.row(rows::NOT_REVOKED).is_some_and(|x| x.passed));

    // A CRL signed by another CA is not this certificate's CRL.
    let other = common::root("Other CA");
    let foreign = issue::crl(&other.issuer().expect("issuer"), &[], 1, 7).expect("crl");
    let foreign = certs::revocation::Crl::parse(&foreign).expect("parse");
    let r = requirements::check_with_crl(&crl_input(&c, &k, &chain), Ok(&foreign));
    assert_eq!(failure(&r).0, rows::NOT_REVOKED);

    // Without a distribution point, CRL validation cannot be honoured.
    let g = good_server();
    let (gc, gk) = (g.cert_pem(), g.key_pem());
    let r = requirements::check_with_crl_fetch(&crl_input(&gc, &gk, &chain), &fetcher).await;
    assert_eq!(failure(&r).0, rows::CRL_DP);
}

/// What breaks every TLS client is refused: an extended key usage without serverAuth
/// (curl: "unsuitable certificate purpose") and no host name among the SANs (clients
/// ignore the CN). No EKU at all is fine.
#[test]
fn client_auth_only_and_no_san_are_refused() {
    let root = rsa_root().cert_pem();
    let row = |issued: &Issued, name: &str| {
        let r = run(
            issued.cert_pem().as_bytes(),
            issued.key_pem().as_bytes(),
            Some(root.as_bytes()),
            None,
        );
        r.row(name).cloned().expect("row")
    };
    let client_only = custom_device(rsa_root(), |p| {
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in [
            (rcgen::DnType::CountryName, "DE"),
            (rcgen::DnType::OrganizationName, "Acme"),
            (rcgen::DnType::OrganizationalUnitName, "IoT"),
            (rcgen::DnType::CommonName, "mqtt.example.com"),
        ] {
            dn.push(t, v);
        }
        p.distinguished_name = dn;
    });
    let eku = row(&client_only, rows::SERVER_AUTH);
    assert!(!eku.passed && eku.required, "{eku:?}");
    assert!(
        eku.reason
            .as_deref()
            .is_some_and(|r| r.contains("clientAuth without serverAuth")),
        "{eku:?}"
    );
    let san = row(&client_only, rows::HOST_NAMES);
    assert!(!san.passed && san.required, "{san:?}");
    assert!(
        san.reason
            .as_deref()
            .is_some_and(|r| r.contains("no DNS name or IP address")),
        "{san:?}"
    );
    // No EKU, one IP SAN: both rows pass.
    let no_eku = custom_device(rsa_root(), |p| {
        p.extended_key_usages.clear();
        p.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    });
    assert!(row(&no_eku, rows::SERVER_AUTH).passed);
    assert!(row(&no_eku, rows::HOST_NAMES).passed);
    // The good server certificate passes both.
    assert!(row(good_server(), rows::SERVER_AUTH).passed);
    assert!(row(good_server(), rows::HOST_NAMES).passed);
}
