//! Enrollment over Secure Transport (RFC 7030): the wire formats both sides share and
//! the client of `certs enroll` / `certs renew`.
//!
//! - [`certs_only`] / [`parse_certs_only`]: the degenerate PKCS#7 `SignedData`
//!   (`application/pkcs7-mime; smime-type=certs-only`) that carries certificates.
//! - [`check_csr`]: the issuing policy applied to a PKCS#10 request (signature, Common
//!   Name, key type and size, no CA, no subject alternative name).
//! - [`issue_device`]: a device certificate for a checked request, signed by a CA; only
//!   the public key and the Common Name are taken from the request.
//! - [`EstClient`]: `cacerts`, `simpleenroll` (HTTP Basic with a one-time secret) and
//!   `simplereenroll` (TLS client certificate) over HTTPS.
//!
//! Bodies are base64 (`Content-Transfer-Encoding: base64`), as RFC 7030 section 4 says.

use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::issue::{IssueError, KeyType, Validity};

/// `application/pkcs7-mime; smime-type=certs-only`.
pub const CONTENT_TYPE_CERTS: &str = "application/pkcs7-mime; smime-type=certs-only";
/// `application/pkcs10`.
pub const CONTENT_TYPE_CSR: &str = "application/pkcs10";
/// `application/csrattrs`.
pub const CONTENT_TYPE_CSRATTRS: &str = "application/csrattrs";
/// The largest EST request body accepted (a CSR with a 16384-bit RSA key is ~3 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const OID_SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
const OID_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// Why an EST message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The body is not base64.
    #[error("the body is not base64 (RFC 7030 bodies are base64-encoded DER)")]
    Base64,
    /// Not a certs-only PKCS#7 `SignedData`.
    #[error("not a PKCS#7 certs-only message")]
    NotCertsOnly,
}

/// Decodes a base64 body (line breaks and other white space allowed).
pub fn decode_base64(body: &[u8]) -> Result<Vec<u8>, FormatError> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| FormatError::Base64)
}

/// Encodes DER as base64 in lines of 64 characters (as `openssl base64` does).
pub fn encode_base64(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A degenerate PKCS#7 `SignedData` holding `certs` and no signature (RFC 7030
/// section 4.1.3, RFC 5652).
pub fn certs_only(certs: &[&[u8]]) -> Vec<u8> {
    use crate::der::encode;
    let set: Vec<u8> = certs.iter().flat_map(|c| c.iter().copied()).collect();
    let mut signed = Vec::new();
    signed.extend_from_slice(&[0x02, 0x01, 0x01]); // version 1
    signed.extend_from_slice(&[0x31, 0x00]); // digestAlgorithms: none
    signed.extend_from_slice(&encode(0x30, OID_DATA)); // encapContentInfo: data, absent
    signed.extend_from_slice(&encode(0xa0, &set)); // certificates [0] IMPLICIT
    signed.extend_from_slice(&[0x31, 0x00]); // signerInfos: none
    let signed = encode(0x30, &signed);
    let mut ci = OID_SIGNED_DATA.to_vec();
    ci.extend_from_slice(&encode(0xa0, &signed));
    encode(0x30, &ci)
}

/// The certificates of a PKCS#7 certs-only message, in the order they appear.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
    let bad = || FormatError::NotCertsOnly;
    let top = crate::der::children(der).ok_or_else(bad)?;
    if top.len() != 2 || top[0] != OID_SIGNED_DATA || top[1].first() != Some(&0xa0) {
        return Err(bad());
    }
    let explicit = crate::der::children(top[1]).ok_or_else(bad)?;
    let signed = explicit.first().ok_or_else(bad)?;
    let fields = crate::der::children(signed).ok_or_else(bad)?;
    let Some(certs) = fields.iter().find(|f| f.first() == Some(&0xa0)) else {
        return Ok(Vec::new());
    };
    Ok(crate::der::children(certs)
        .ok_or_else(bad)?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect())
}

/// Why a certificate request is refused (each names the rule in words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PKCS#10 request, its signature does not verify, or it has no Common Name
    /// ([`crate::csr::parse`]'s sentence).
    #[error("{0}")]
    Unreadable(#[from] crate::csr::CsrError),
    /// The Common Name is not the one authenticated.
    #[error("the certificate request's Common Name {requested:?} is not {expected:?}")]
    CommonNameMismatch {
        /// In the request.
        requested: String,
        /// Authenticated (the Basic user name or the current certificate's CN).
        expected: String,
    },
    /// A key type the policy does not accept, or too short.
    #[error("weak or unsupported key: {0}; use ECDSA P-256 or P-384, Ed25519, or RSA of at least 2048 bits")]
    WeakKey(String),
    /// The request asks for a CA certificate.
    #[error("the certificate request asks for CA:true: devices are never issued CA certificates")]
    CaRequested,
    /// The request asks for subject alternative names, which are not granted.
    #[error("the certificate request asks for subject alternative names: none are granted")]
    SanNotGranted,
}

/// A request that passed [`check_csr`].
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// Its Common Name.
    pub common_name: String,
    /// Its SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// The key in words (`P-256`, `RSA 2048`, ...).
    pub key: String,
}

/// Applies the issuing policy to a PKCS#10 request read by [`crate::csr::parse`] (well
/// formed, self-signed with its key, a Common Name): the Common Name is `expected_cn`,
/// the key is accepted (ECDSA P-256 or P-384, Ed25519, RSA of 2048 bits or more), no
/// `CA:true`, no subject alternative name. Other requested extensions are ignored: the
/// issued certificate carries only what the issuer sets.
pub fn check_csr(der: &[u8], expected_cn: &str) -> Result<CheckedCsr, CsrError> {
    use crate::info::KeyAlgorithm;
    use x509_parser::prelude::FromDer as _;
    // The key first: a weak key's signature does not verify either (the verifier
    // refuses RSA below 2048 bits), and the refusal must say why.
    if let Ok((_, csr)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der)
    {
        match crate::info::key_algorithm(&csr.certification_request_info.subject_pki) {
            KeyAlgorithm::Rsa { bits } if bits >= 2048 => {}
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::Ed25519 => {}
            other => return Err(CsrError::WeakKey(other.to_string())),
        }
    }
    let req = crate::csr::parse(der)?;
    // A key rcgen cannot put in a certificate (RSA-PSS parameters, ...) is refused here,
    // not met as an error while signing.
    rcgen::SubjectPublicKeyInfo::from_der(&req.spki_der)
        .map_err(|_| CsrError::WeakKey(format!("{} in this encoding", req.key)))?;
    if req.common_name != expected_cn {
        return Err(CsrError::CommonNameMismatch {
            requested: req.common_name,
            expected: expected_cn.to_string(),
        });
    }
    if req.requests_ca {
        return Err(CsrError::CaRequested);
    }
    if !req.sans.is_empty() {
        return Err(CsrError::SanNotGranted);
    }
    Ok(CheckedCsr {
        common_name: req.common_name,
        spki_der: req.spki_der,
        key: req.key.to_string(),
    })
}

/// Issues the device certificate of a checked request: its Common Name and public key,
/// `CA:false`, digitalSignature + keyEncipherment, clientAuth, SKI/AKI, a random serial.
pub fn issue_device(
    csr: &CheckedCsr,
    validity: Validity,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Vec<u8>, IssueError> {
    let key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
        .map_err(|e| IssueError::Generate(format!("the request's public key: {e}")))?;
    let mut p = rcgen::CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, csr.common_name.as_str());
    p.distinguished_name = dn;
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(crate::issue::random_serial());
    p.use_authority_key_identifier_extension = true;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p.signed_by(&key, issuer)?.der().to_vec())
}

/// A new key and a PKCS#10 request for `cn` signed with it ([`crate::csr::create`]):
/// (the key, PKCS#8 DER; the request, DER).
pub fn new_request(cn: &str, key_type: KeyType) -> Result<(Vec<u8>, Vec<u8>), IssueError> {
    let (csr, key) = crate::csr::create(&crate::issue::Subject::cn(cn), &[], key_type)?;
    Ok((key.secret_pkcs8_der().to_vec(), csr))
}

/// Why an EST exchange failed (client side).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The TLS setup (CA file, client certificate) is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server could not be reached.
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The server refused (status and its message).
    #[error("the EST server answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The body (a sentence).
        message: String,
    },
    /// The answer could not be read.
    #[error("unreadable answer: {0}")]
    Format(#[from] FormatError),
    /// Generating the key or request failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
}

/// What an enrollment or renewal produced.
pub struct Enrolled {
    /// The new private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The new certificate, DER.
    pub cert_der: Vec<u8>,
    /// The CA certificates (`cacerts`), DER.
    pub ca_certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("cert", &crate::info::fingerprint_sha1(&self.cert_der))
            .field("key", &"<redacted>")
            .field("ca_certs", &self.ca_certs.len())
            .finish()
    }
}

/// An EST client for one server and tenant.
pub struct EstClient {
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for EstClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl EstClient {
    /// A client of `server` (`https://host:port`) for `tenant`, trusting the server
    /// certificates in `server_ca_pem` (e.g. the broker's `data/server.crt`), and
    /// presenting `client` (chain and key) when given (renewal).
    pub fn new(
        server: &str,
        tenant: &str,
        server_ca_pem: &[u8],
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<EstClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = crate::pem::read_certificates(server_ca_pem)
            .map_err(|e| ClientError::Tls(format!("server CA file: {e}")))?;
        for c in cas {
            roots
                .add(c)
                .map_err(|e| ClientError::Tls(format!("server CA file: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
        let tls = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(EstClient {
            base: format!("{}/.well-known/est/{tenant}", server.trim_end_matches('/')),
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(body.to_vec())
    }

    /// `GET /cacerts`: the tenant's CA certificates (the issuing CA first).
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        let url = format!("{}/cacerts", self.base);
        let body = self.send(self.http.get(&url), &url).await?;
        Ok(parse_certs_only(&decode_base64(&body)?)?)
    }

    async fn post_csr(
        &self,
        op: &str,
        csr: &[u8],
        basic: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/{op}", self.base);
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_CSR)
            .header("Content-Transfer-Encoding", "base64")
            .body(encode_base64(csr));
        if let Some((user, password)) = basic {
            req = req.basic_auth(user, Some(password));
        }
        let body = self.send(req, &url).await?;
        let certs = parse_certs_only(&decode_base64(&body)?)?;
        certs
            .into_iter()
            .next()
            .ok_or(ClientError::Format(FormatError::NotCertsOnly))
    }

    /// Enrolls `cn` with its one-time `secret`: a new key, a request, the certificate.
    pub async fn enroll(
        &self,
        cn: &str,
        secret: &str,
        key_type: KeyType,
    ) -> Result<Enrolled, ClientError> {
        let ca_certs = self.cacerts().await?;
        let (key_pkcs8, csr) = new_request(cn, key_type)?;
        let cert_der = self
            .post_csr("simpleenroll", &csr, Some((cn, secret)))
            .await?;
        Ok(Enrolled {
            key_pkcs8,
            cert_der,
            ca_certs,
        })
    }

    /// Renews the certificate this client presents (built with `client`), for `cn`,
    /// with a new key.
    pub async fn renew(&self, cn: &str, key_type: KeyType) -> Result<Enrolled, ClientError> {
        let ca_certs = self.cacerts().await?;
        let (key_pkcs8, csr) = new_request(cn, key_type)?;
        let cert_der = self.post_csr("simplereenroll", &csr, None).await?;
        Ok(Enrolled {
            key_pkcs8,
            cert_der,
            ca_certs,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The files of an enrolled device in a directory: `NAME.key` (0600), `NAME.crt` and
/// `NAME-chain.pem` (the certificate, then the CA certificates), as `certs issue`
/// writes them.
#[derive(Debug, Clone)]
pub struct DeviceFiles {
    /// `NAME.key`.
    pub key: std::path::PathBuf,
    /// `NAME.crt`.
    pub cert: std::path::PathBuf,
    /// `NAME-chain.pem`.
    pub chain: std::path::PathBuf,
}

impl DeviceFiles {
    /// The files of `cn` in `dir`.
    pub fn new(dir: &std::path::Path, cn: &str) -> DeviceFiles {
        let stem = crate::ca_dir::file_stem(cn);
        DeviceFiles {
            key: dir.join(format!("{stem}.key")),
            cert: dir.join(format!("{stem}.crt")),
            chain: dir.join(format!("{stem}-chain.pem")),
        }
    }

    /// Writes what an enrollment produced (replacing older files).
    pub fn write(&self, e: &Enrolled) -> Result<(), ClientError> {
        use crate::ca_dir::write_file;
        let io = |e: crate::ca_dir::CaDirError| ClientError::Io(e.to_string());
        if let Some(dir) = self.key.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|err| ClientError::Io(format!("{}: {err}", dir.display())))?;
        }
        write_file(
            &self.key,
            crate::pem::to_pem("PRIVATE KEY", &e.key_pkcs8).as_bytes(),
            true,
            true,
        )
        .map_err(io)?;
        let cert = crate::pem::to_pem("CERTIFICATE", &e.cert_der);
        write_file(&self.cert, cert.as_bytes(), false, true).map_err(io)?;
        let mut chain = cert;
        for c in &e.ca_certs {
            chain.push_str(&crate::pem::to_pem("CERTIFICATE", c));
        }
        write_file(&self.chain, chain.as_bytes(), false, true).map_err(io)?;
        Ok(())
    }
}

/// The `certs enroll` and `certs renew` commands.
pub mod cli {
    use std::path::PathBuf;

    use super::{ClientError, DeviceFiles, EstClient};
    use crate::issue::KeyType;

    /// Where the EST server is.
    #[derive(Debug, Clone, clap::Args)]
    pub struct ServerArgs {
        /// The EST server, `https://HOST:PORT` (the broker's `--est-listen`, 8444).
        #[arg(long, env = "CERTS_EST_SERVER")]
        pub server: String,
        /// The tenant (the path `/.well-known/est/TENANT/...`).
        #[arg(long)]
        pub tenant: String,
        /// CA file (PEM) the server's certificate chains to (e.g. the broker's
        /// `data/server.crt`).
        #[arg(long)]
        pub cacert: PathBuf,
        /// Key of the new certificate.
        #[arg(long, value_enum, default_value = "p256")]
        pub key_type: KeyType,
    }

    /// `certs enroll`: a first certificate with a one-time secret.
    #[derive(Debug, Clone, clap::Args)]
    pub struct EnrollArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// The device's Common Name (the EST user name; its MQTT ClientId).
        #[arg(long)]
        cn: String,
        /// The one-time enrollment secret (the tenant admin created it).
        #[arg(long, env = "CERTS_EST_SECRET", hide_env_values = true)]
        secret: String,
        /// Directory for CN.key (0600), CN.crt and CN-chain.pem.
        #[arg(long)]
        out: PathBuf,
    }

    /// `certs renew`: a new certificate (and key) authenticated by the current one.
    #[derive(Debug, Clone, clap::Args)]
    pub struct RenewArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// The device's Common Name.
        #[arg(long)]
        cn: String,
        /// Directory holding CN.key and CN-chain.pem (as `certs enroll` wrote them);
        /// the renewed files replace them.
        #[arg(long)]
        dir: PathBuf,
    }

    fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    fn read(p: &std::path::Path) -> Result<Vec<u8>, ClientError> {
        std::fs::read(p).map_err(|e| ClientError::Io(format!("{}: {e}", p.display())))
    }

    fn done(files: &DeviceFiles, e: &super::Enrolled) -> String {
        let info = crate::CertInfo::parse(&e.cert_der).ok();
        format!(
            "wrote {}, {} and {} (serial {}, valid until {})",
            files.key.display(),
            files.cert.display(),
            files.chain.display(),
            info.as_ref().map(|i| i.serial_hex.as_str()).unwrap_or("?"),
            info.as_ref()
                .map(|i| i.not_after_rfc3339())
                .unwrap_or_default()
        )
    }

    /// Runs `certs enroll`; returns the line to print.
    pub fn enroll(a: EnrollArgs) -> Result<String, ClientError> {
        let client = EstClient::new(
            &a.server.server,
            &a.server.tenant,
            &read(&a.server.cacert)?,
            None,
        )?;
        let e = runtime()?.block_on(client.enroll(&a.cn, &a.secret, a.server.key_type))?;
        let files = DeviceFiles::new(&a.out, &a.cn);
        files.write(&e)?;
        Ok(done(&files, &e))
    }

    /// Runs `certs renew`; returns the line to print.
    pub fn renew(a: RenewArgs) -> Result<String, ClientError> {
        let files = DeviceFiles::new(&a.dir, &a.cn);
        let chain = crate::pem::read_certificates(&read(&files.chain)?)
            .map_err(|e| ClientError::Io(format!("{}: {e}", files.chain.display())))?;
        let key = crate::pem::read_private_key(&read(&files.key)?, None)
            .map_err(|e| ClientError::Io(format!("{}: {e}", files.key.display())))?;
        let client = EstClient::new(
            &a.server.server,
            &a.server.tenant,
            &read(&a.server.cacert)?,
            Some((chain, key)),
        )?;
        let e = runtime()?.block_on(client.renew(&a.cn, a.server.key_type))?;
        files.write(&e)?;
        Ok(done(&files, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_only_round_trips() {
        let a = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let b = vec![0x30, 0x03, 0x02, 0x01, 0x07];
        let p7 = certs_only(&[&a, &b]);
        assert_eq!(parse_certs_only(&p7).unwrap(), vec![a, b]);
        assert_eq!(
            parse_certs_only(&[0x30, 0x00]),
            Err(FormatError::NotCertsOnly)
        );
        assert_eq!(decode_base64(encode_base64(&p7).as_bytes()).unwrap(), p7);
    }

    #[test]
    fn the_csr_policy() {
        let (_, csr) = new_request("dev-1", KeyType::P256).unwrap();
        let ok = check_csr(&csr, "dev-1").unwrap();
        assert!(ok.key.contains("P-256"), "{}", ok.key);
        assert!(matches!(
            check_csr(&csr, "dev-2"),
            Err(CsrError::CommonNameMismatch { .. })
        ));
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x01;
        assert!(matches!(
            check_csr(&bad, "dev-1"),
            Err(CsrError::Unreadable(_))
        ));
        // CA:true and SANs are refused.
        let key = crate::issue::generate_key(KeyType::P256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "dev-1");
        let san = p.serialize_request(&key).unwrap();
        assert_eq!(
            check_csr(san.der(), "dev-1").unwrap_err(),
            CsrError::SanNotGranted
        );
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "dev-1");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.serialize_request(&key).unwrap();
        assert_eq!(
            check_csr(ca.der(), "dev-1").unwrap_err(),
            CsrError::CaRequested
        );
    }
}
