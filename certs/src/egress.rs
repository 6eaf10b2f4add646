//! The egress policy: which destinations the product may fetch from (CRL distribution
//! points, and anything else it fetches on someone's word), and how much.
//!
//! A device certificate names its CRL distribution points, so whoever issues a device
//! certificate chooses where the broker connects: without a policy a tenant could make
//! it fetch `http://127.0.0.1:<port>/...` (a server-side request forgery against
//! loopback services, the cloud metadata address or the private network). The policy
//! is applied to the address actually connected to, after name resolution (a name that
//! resolves to loopback is refused like the literal) and again at every redirect:
//!
//! - [`EgressPolicy::check_ip`]: loopback, private (RFC 1918, IPv6 ULA), link-local,
//!   multicast, unspecified, broadcast, CGNAT (100.64.0.0/10), documentation,
//!   benchmarking and reserved ranges are refused, also in their IPv4-mapped, NAT64 and
//!   6to4 IPv6 forms, unless the operator allowed the network ([`EgressPolicy::allow`]);
//! - [`EgressPolicy::check_url`]: `http://` and `https://` only; an IP-literal host is
//!   checked here (no resolver sees it);
//! - [`PolicyResolver`]: a `reqwest` DNS resolver that keeps only permitted addresses
//!   (and fails when none is left), so what is checked is what is connected to;
//! - bounded size ([`EgressPolicy::max_bytes`]), redirects
//!   ([`EgressPolicy::max_redirects`]) and fetches per tenant per minute
//!   ([`EgressPolicy::fetches_per_minute`]); the time bound is the fetcher's timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use ipnet::IpNet;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// Not `http://` or `https://` (e.g. `ldap://`, `file://`).
    #[error("the scheme of '{0}' is not allowed (only http:// and https://)")]
    Scheme(String),
    /// Not a URL.
    #[error("'{0}' is not a valid URL")]
    BadUrl(String),
    /// The address is in a range the policy refuses.
    #[error("the address {0} is not allowed by the egress policy (loopback, private, link-local, multicast or reserved)")]
    Address(IpAddr),
    /// Every address the name resolved to is refused.
    #[error("'{0}' resolves only to addresses the egress policy refuses")]
    Name(String),
    /// The name did not resolve.
    #[error("'{0}' does not resolve")]
    Resolve(String),
    /// Too many redirects.
    #[error("more than {0} redirects")]
    Redirects(usize),
    /// The tenant made too many fetches in the last minute.
    #[error("more than {0} fetches a minute")]
    RateLimited(u32),
    /// An allow-list entry is not a CIDR network.
    #[error("'{0}' is not a network in CIDR form (e.g. 10.1.0.0/16)")]
    BadNetwork(String),
}

/// Where outbound requests may go, and how much they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Networks allowed although in a refused range (set by the management admin or
    /// the operator, e.g. an internal PKI's CRL server). Empty by default.
    pub allow: Vec<IpNet>,
    /// Largest response body, bytes.
    pub max_bytes: usize,
    /// Redirects followed at most (each one is checked like the first URL).
    pub max_redirects: usize,
    /// Network fetches (cache hits do not count) per tenant per minute.
    pub fetches_per_minute: u32,
}

impl Default for EgressPolicy {
    /// The secure default: no special-purpose destination, 32 MiB, 3 redirects, 60
    /// fetches per tenant per minute.
    fn default() -> Self {
        EgressPolicy {
            allow: Vec::new(),
            max_bytes: 32 * 1024 * 1024,
            max_redirects: 3,
            fetches_per_minute: 60,
        }
    }
}

impl EgressPolicy {
    /// The default policy with `allow` as its allow-list.
    pub fn allowing(allow: Vec<IpNet>) -> EgressPolicy {
        EgressPolicy {
            allow,
            ..EgressPolicy::default()
        }
    }

    /// Parses an allow-list of CIDR networks (a bare address is a /32 or /128).
    pub fn parse_allow<S: AsRef<str>>(list: &[S]) -> Result<Vec<IpNet>, EgressError> {
        list.iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| EgressError::BadNetwork(s.to_string()))
            })
            .collect()
    }

    /// Whether the policy lets a connection go to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        let canonical = ip.to_canonical();
        if self
            .allow
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical))
        {
            return Ok(());
        }
        if is_special(ip) {
            return Err(EgressError::Address(ip));
        }
        Ok(())
    }

    /// Checks a URL before it is fetched (and each redirect target): the scheme, and the
    /// host when it is an IP literal (a host name is checked by [`PolicyResolver`]).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        match url.scheme() {
            "http" | "https" => {}
            _ => return Err(EgressError::Scheme(url.to_string())),
        }
        let host = url
            .host_str()
            .ok_or_else(|| EgressError::BadUrl(url.to_string()))?;
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(())
    }

    /// Parses and checks a URL string.
    pub fn check_url_str(&self, url: &str) -> Result<reqwest::Url, EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| {
            // `ldap:///cn=...` and other schemes fail to parse for other reasons: the
            // scheme is the clearer error.
            match url.split_once(':') {
                Some((scheme, _))
                    if !scheme.eq_ignore_ascii_case("http")
                        && !scheme.eq_ignore_ascii_case("https") =>
                {
                    EgressError::Scheme(url.to_string())
                }
                _ => EgressError::BadUrl(url.to_string()),
            }
        })?;
        self.check_url(&parsed)?;
        Ok(parsed)
    }
}

/// True for addresses no outbound request goes to by default: loopback, private,
/// link-local, multicast, unspecified, broadcast, CGNAT, documentation, benchmarking
/// and reserved ranges, and the IPv6 forms that embed such an IPv4 address.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network", 0.0.0.0/8
        || ip.is_loopback() // 127.0.0.0/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16 (cloud metadata)
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || ip.is_documentation() // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || ip.is_multicast() // 224/4
        || a >= 240 // reserved 240/4 and broadcast
}

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_special_v4(v4);
    }
    // IPv4-compatible (deprecated, ::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
    // embed an IPv4 address that the packet may end up at.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0; 6] {
        return true; // ::, ::1 and the IPv4-compatible ::/96
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_special_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_special_v4(embedded(s[1], s[2]));
    }
    (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast ff00::/8
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 (embeds an obfuscated IPv4)
        || s[..4] == [0x100, 0, 0, 0] // discard 100::/64
}

/// A `reqwest` DNS resolver that resolves with the system resolver and keeps only the
/// addresses [`EgressPolicy::check_ip`] permits; with none left the request fails with
/// [`EgressError::Name`] (found in the error's source chain).
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> PolicyResolver {
        PolicyResolver { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| EgressError::Resolve(host.clone()))?
                .collect();
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.check_ip(a.ip()).is_ok())
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(EgressError::Name(host)) as Box<_>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a fetch under an [`EgressPolicy`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy refused the URL, an address it resolved to, or a redirect.
    #[error("'{url}' is refused: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// What the policy refused.
        reason: EgressError,
    },
    /// No answer (connection refused, timeout, TLS failure).
    #[error("'{url}' is not reachable")]
    Unreachable {
        /// The URL.
        url: String,
    },
    /// An answer other than 2xx.
    #[error("'{url}' answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is larger than [`EgressPolicy::max_bytes`].
    #[error("'{url}' sent more than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        max: usize,
    },
}

/// The TLS configuration of `https://` fetches: the system's roots.
fn tls_config() -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// An HTTP client applying `policy`: its resolver drops refused addresses, each
/// redirect target is checked like the first URL, no proxy is used (a proxy would
/// resolve and connect on our behalf, past the checks); `timeout` bounds the whole
/// request. `None` when no TLS configuration can be built.
pub fn http_client(
    policy: &Arc<EgressPolicy>,
    timeout: std::time::Duration,
) -> Option<reqwest::Client> {
    let tls = tls_config()?;
    let check = policy.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > check.max_redirects {
            return attempt.error(EgressError::Redirects(check.max_redirects));
        }
        match check.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    });
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver::new(policy.clone())))
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(redirects)
        .build()
        .ok()
}

/// GETs `url` with `client` (made by [`http_client`] for `policy`): the URL is checked
/// first, the body is bounded by [`EgressPolicy::max_bytes`].
pub async fn get(
    client: &reqwest::Client,
    policy: &EgressPolicy,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    let refused = |reason: EgressError| FetchError::Refused {
        url: url.to_string(),
        reason,
    };
    let parsed = policy.check_url_str(url).map_err(refused)?;
    let failed = |e: reqwest::Error| match find_egress_error(&e) {
        Some(reason) => refused(reason),
        None => FetchError::Unreachable {
            url: url.to_string(),
        },
    };
    let mut resp = client.get(parsed).send().await.map_err(failed)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let max = policy.max_bytes;
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        max,
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The [`EgressError`] somewhere in an error's source chain (a refusal by the resolver
/// or the redirect check, wrapped by `reqwest` and `hyper`).
pub fn find_egress_error(e: &(dyn std::error::Error + 'static)) -> Option<EgressError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<EgressError>() {
            return Some(found.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "100::1",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!is_special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_allow_list_admits_its_networks_also_in_mapped_form() {
        let p =
            EgressPolicy::allowing(EgressPolicy::parse_allow(&["127.0.0.0/8", "fd00::1"]).unwrap());
        assert_eq!(p.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("fd00::1".parse().unwrap()), Ok(()));
        assert_eq!(
            p.check_ip("fd00::2".parse().unwrap()),
            Err(EgressError::Address("fd00::2".parse().unwrap()))
        );
        assert_eq!(
            EgressPolicy::parse_allow(&["10.0.0.0/33"]),
            Err(EgressError::BadNetwork("10.0.0.0/33".into()))
        );
    }
}
