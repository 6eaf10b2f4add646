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
