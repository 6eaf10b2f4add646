//! CRL distribution points fetched through the egress policy: a device certificate names
//! the URL, so the fetcher must not become a way into loopback or the private network
//! (IP literals, names resolving there, redirects), and must stay bounded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certs::egress::{EgressError, EgressPolicy};
use certs::revocation::{CrlError, CrlFetcher};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server on `ip` answering every request with `head` + `body`; counts
/// the connections it accepted.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn server(ip: &str, head: String, body: Vec<u8>) -> Server {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Server { addr, hits }
}

async fn crl_server(ip: &str) -> Server {
    let root = root("Egress Root");
    let crl = certs::issue::crl(&root.issuer().unwrap(), &[], 1, 7).unwrap();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crl.len()
    );
    server(ip, head, crl).await
}

async fn redirect_server(ip: &str, to: &str) -> Server {
    let head = format!(
        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    server(ip, head, Vec::new()).await
}

fn fetcher() -> CrlFetcher {
    CrlFetcher::new(Duration::from_secs(3), Duration::from_secs(60))
}

fn allowing(nets: &[&str]) -> EgressPolicy {
    EgressPolicy::allowing(EgressPolicy::parse_allow(nets).unwrap())
}

fn refusal(url: &str, reason: EgressError) -> CrlError {
    CrlError::Refused {
        url: url.to_string(),
        reason,
    }
}

#[tokio::test]
async fn an_ip_literal_in_a_refused_range_is_never_contacted() {
    let s = crl_server("127.0.0.1").await;
    let f = fetcher();
    for url in [
        format!("http://{}/root.crl", s.addr),
        format!("http://[::ffff:127.0.0.1]:{}/root.crl", s.addr.port()),
        // Other spellings of 127.0.0.1 are normalised by the URL parser first.
        format!("http://2130706433:{}/root.crl", s.addr.port()),
        format!("http://0x7f.1:{}/root.crl", s.addr.port()),
    ] {
        let err = f.fetch(&url, now()).await.unwrap_err();
        match &err {
            CrlError::Refused {
                reason: EgressError::Address(ip),
                ..
            } => assert_eq!(ip.to_canonical().to_string(), "127.0.0.1", "{url}"),
            other => panic!("{url}: {other:?}"),
        }
        assert!(err.to_string().starts_with("The CRL location '"), "{err}");
        assert!(err
            .to_string()
            .contains("is not allowed by the egress policy (loopback, private, link-local, multicast or reserved)"));
    }
    for url in [
        "http://[::1]:1/x.crl",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.crl",
        "https://192.168.0.1/x.crl",
    ] {
        assert!(
            matches!(
                f.fetch(url, now()).await,
                Err(CrlError::Refused {
                    reason: EgressError::Address(_),
                    ..
                })
            ),
            "{url}"
        );
    }
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        0,
        "the server saw no request"
    );
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_after_resolution() {
    let s = crl_server("127.0.0.1").await;
    let url = format!("http://localhost:{}/root.crl", s.addr.port());
    assert_eq!(
        fetcher().fetch(&url, now()).await.unwrap_err(),
        refusal(&url, EgressError::Name("localhost".into()))
    );
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        0,
        "the server saw no request"
    );
}

#[tokio::test]
async fn a_redirect_to_a_refused_destination_is_not_followed() {
    // The first hop is allowed (127.0.0.2 only), the redirect goes to 127.0.0.1.
    let target = crl_server("127.0.0.1").await;
    let f = CrlFetcher::with_policy(
        Duration::from_secs(3),
        Duration::from_secs(60),
        allowing(&["127.0.0.2/32"]),
    );
    let to_literal =
        redirect_server("127.0.0.2", &format!("http://{}/root.crl", target.addr)).await;
    let url = format!("http://{}/redirect", to_literal.addr);
    assert_eq!(
        f.fetch(&url, now()).await.unwrap_err(),
        refusal(&url, EgressError::Address("127.0.0.1".parse().unwrap()))
    );
    // A redirect to a name that resolves there.
    let to_name = redirect_server(
        "127.0.0.2",
        &format!("http://localhost:{}/root.crl", target.addr.port()),
    )
    .await;
    let url = format!("http://{}/redirect", to_name.addr);
    assert_eq!(
        f.fetch(&url, now()).await.unwrap_err(),
        refusal(&url, EgressError::Name("localhost".into()))
    );
    // A redirect to another scheme: reqwest refuses it before the policy is asked.
    let to_file = redirect_server("127.0.0.2", "file:///etc/passwd").await;
    let url = format!("http://{}/redirect", to_file.addr);
    assert_eq!(
        f.fetch(&url, now()).await.unwrap_err(),
        CrlError::Unreachable
    );
    assert_eq!(to_literal.hits.load(Ordering::SeqCst), 1);
    assert_eq!(to_name.hits.load(Ordering::SeqCst), 1);
    assert_eq!(target.hits.load(Ordering::SeqCst), 0, "never reached");
}

#[tokio::test]
async fn the_allow_list_admits_its_networks_and_redirects_within_them() {
    let target = crl_server("127.0.0.1").await;
    let hop = redirect_server("127.0.0.1", &format!("http://{}/root.crl", target.addr)).await;
    let f = CrlFetcher::with_policy(
        Duration::from_secs(3),
        Duration::from_secs(60),
        allowing(&["127.0.0.0/8"]),
    );
    let crl = f
        .fetch(&format!("http://{}/redirect", hop.addr), now())
        .await
        .expect("allowed");
    assert_eq!(crl.issuer, "CN=Egress Root");
    // By name too.
    f.fetch(
        &format!("http://localhost:{}/root.crl", target.addr.port()),
        now(),
    )
    .await
    .expect("localhost resolves into the allowed network");
    assert_eq!(target.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn other_schemes_are_refused() {
    let f = fetcher();
    for url in [
        "ldap:///CN=Root,O=Acme?certificateRevocationList",
        "ldap://ldap.example.com/cn=crl",
        "ftp://example.com/x.crl",
        "file:///etc/passwd",
    ] {
        assert_eq!(
            f.fetch(url, now()).await.unwrap_err(),
            refusal(url, EgressError::Scheme(url.into())),
        );
    }
    assert_eq!(
        refusal("ldap://x/", EgressError::Scheme("ldap://x/".into())).to_string(),
        "The CRL location 'ldap://x/' is refused: the scheme of 'ldap://x/' is not allowed (only http:// and https://)"
    );
}

#[tokio::test]
async fn size_and_rate_are_bounded() {
    let s = crl_server("127.0.0.1").await;
    let mut policy = allowing(&["127.0.0.1"]);
    policy.max_bytes = 64;
    let f = CrlFetcher::with_policy(Duration::from_secs(3), Duration::from_secs(60), policy);
    assert_eq!(
        f.fetch(&format!("http://{}/root.crl", s.addr), now())
            .await
            .unwrap_err(),
        CrlError::Malformed("CRL larger than 64 bytes".into())
    );

    let mut policy = allowing(&["127.0.0.1"]);
    policy.fetches_per_minute = 1;
    let policy = Arc::new(policy);
    let f = fetcher();
    let url = format!("http://{}/root.crl", s.addr);
    f.fetch_for("acme", &url, now(), &policy).await.unwrap();
    // A cached CRL costs nothing; a new download is over the tenant's rate.
    f.fetch_for("acme", &url, now(), &policy).await.unwrap();
    let other = format!("http://{}/other.crl", s.addr);
    assert_eq!(
        f.fetch_for("acme", &other, now(), &policy)
            .await
            .unwrap_err(),
        refusal(&other, EgressError::RateLimited(1))
    );
    // Another tenant has its own.
    f.fetch_for("globex", &other, now(), &policy).await.unwrap();
    assert_eq!(s.hits.load(Ordering::SeqCst), 3);
}

// --- CRL rules (RFC 5280): a CRL number, non-critical; a signer allowed to sign CRLs.

/// (tag, header length, content length) of the DER element at the start of `b`.
fn header(b: &[u8]) -> (u8, usize, usize) {
    match b[1] {
        n if n < 0x80 => (b[0], 2, n as usize),
        n => {
            let k = (n & 0x7f) as usize;
            let len = b[2..2 + k].iter().fold(0, |a, &x| (a << 8) | x as usize);
            (b[0], 2 + k, len)
        }
    }
}

/// The complete elements in a constructed element's content.
fn children(mut content: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (_, h, n) = header(content);
        out.push(content[..h + n].to_vec());
        content = &content[h + n..];
    }
    out
}

fn content(element: &[u8]) -> &[u8] {
    let (_, h, n) = header(element);
    &element[h..h + n]
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

const CRL_NUMBER_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x14];

/// `crl` with its extensions rewritten by `edit`, signed again by `signer`.
fn with_extensions(
    crl: &[u8],
    signer: &certs::issue::Issued,
    edit: impl FnOnce(Vec<Vec<u8>>) -> Vec<Vec<u8>>,
) -> Vec<u8> {
    use rcgen::SigningKey;
    let outer = children(content(crl));
    let mut tbs = children(content(&outer[0]));
    let last = tbs.pop().unwrap();
    assert_eq!(last[0], 0xa0, "the CRL's extensions come last");
    let exts = edit(children(content(content(&last))));
    tbs.push(encode(0xa0, &encode(0x30, &exts.concat())));
    let tbs = encode(0x30, &tbs.concat());
    let key = rcgen::KeyPair::try_from(signer.key_der.secret_pkcs8_der()).unwrap();
    let mut sig = vec![0];
    sig.extend(key.sign(&tbs).unwrap());
    encode(0x30, &[tbs, outer[1].clone(), encode(0x03, &sig)].concat())
}

#[test]
fn a_crl_without_a_number_or_with_a_critical_one_is_refused() {
    let root = root("Numbered Root");
    let crl = certs::issue::crl(&root.issuer().unwrap(), &[], 7, 7).unwrap();
    // The rewriting itself keeps a valid CRL: unchanged, it parses and verifies.
    let same = with_extensions(&crl, &root, |e| e);
    certs::revocation::Crl::parse(&same)
        .unwrap()
        .verify_signed_by(root.cert_der.as_ref())
        .unwrap();

    let unnumbered = with_extensions(&crl, &root, |e| {
        e.into_iter()
            .filter(|x| !content(x).starts_with(CRL_NUMBER_OID))
            .collect()
    });
    let err = certs::revocation::Crl::parse(&unnumbered).unwrap_err();
    assert_eq!(err, CrlError::NoCrlNumber);
    assert_eq!(
        err.to_string(),
        "The CRL has no CRL number (the cRLNumber extension is required by RFC 5280)"
    );

    let critical = with_extensions(&crl, &root, |e| {
        e.into_iter()
            .map(|x| {
                let c = content(&x);
                match c.strip_prefix(CRL_NUMBER_OID) {
                    Some(rest) => {
                        encode(0x30, &[CRL_NUMBER_OID, &[0x01, 0x01, 0xff], rest].concat())
                    }
                    None => x,
                }
            })
            .collect()
    });
    let err = certs::revocation::Crl::parse(&critical).unwrap_err();
    assert_eq!(err, CrlError::CriticalCrlNumber);
    assert_eq!(
        err.to_string(),
        "The CRL number extension is marked critical; RFC 5280 requires it to be non-critical"
    );
}

#[test]
fn a_crl_signed_by_a_ca_without_crl_sign_is_refused() {
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "No CRL Sign Root");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    // rcgen will not sign a CRL for such an issuer: the same name and key, with cRLSign
    // on rcgen's side only, signs it; the certificate checked against is `cert`.
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    let issuer = rcgen::Issuer::new(p, key);
    let crl = certs::issue::crl(&issuer, &[], 1, 7).unwrap();
    let crl = certs::revocation::Crl::parse(&crl).unwrap();
    let err = crl.verify_signed_by(cert.der().as_ref()).unwrap_err();
    assert_eq!(err, CrlError::IssuerCannotSignCrls);
    assert_eq!(
        err.to_string(),
        "The CRL issuer's certificate is not allowed to sign CRLs (its key usage lacks cRLSign)"
    );

    // CAs made by `certs` (keyCertSign + cRLSign) and one without any KeyUsage (every
    // usage open, RFC 5280 4.2.1.3) still sign CRLs.
    for opts in [
        certs::issue::CaOptions::default(),
        certs::issue::CaOptions {
            key_usage: false,
            ..Default::default()
        },
    ] {
        let ca = root_with("Signing Root", &opts);
        let crl = certs::issue::crl(&ca.issuer().unwrap(), &[], 1, 7).unwrap();
        certs::revocation::Crl::parse(&crl)
            .unwrap()
            .verify_signed_by(ca.cert_der.as_ref())
            .unwrap();
    }
}
