//! Certificates of the simulated fleet and the TLS client configurations built from them.
//!
//! Everything here happens before the clock of the run starts: generation cost never shows
//! up in connect figures.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, SignatureAlgorithm,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::config::KeyType;
use crate::Error;

/// Most distinct RSA keys generated for one run (RSA key generation takes ~100 ms each).
pub const RSA_KEY_POOL: usize = 32;

/// The issuing CA of the run's device and subscriber certificates.
pub(crate) struct Ca {
    /// DER of the CA certificate (sent as the second element of every client chain).
    pub(crate) der: CertificateDer<'static>,
    /// PEM of the CA certificate (uploaded to the tenant).
    pub(crate) pem: String,
    /// PEM of the CA's private key (imported with the CA by the rotate scenario).
    pub(crate) key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The aws-lc-rs provider, installed explicitly, preferring X25519 key exchange.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

/// Fills `buf` from the provider's secure random source.
pub(crate) fn random_bytes(provider: &CryptoProvider, buf: &mut [u8]) -> Result<(), Error> {
    provider
        .secure_random
        .fill(buf)
        .map_err(|_| Error::Internal("secure random source failed".into()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signature_algorithm(key_type: KeyType) -> &'static SignatureAlgorithm {
    match key_type {
        KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    }
}

fn generate_key(key_type: KeyType) -> Result<KeyPair, Error> {
    KeyPair::generate_for(signature_algorithm(key_type))
        .map_err(|e| Error::Certificate(format!("generating a {key_type} key: {e}")))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn serial(provider: &CryptoProvider, index: u64) -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    random_bytes(provider, &mut bytes[..8])?;
    // Positive, and unique within the run thanks to the index.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    bytes[8..].copy_from_slice(&index.to_be_bytes());
    Ok(SerialNumber::from_slice(&bytes))
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// A new self-signed CA: CA:true (critical), keyCertSign + cRLSign, SKI and AKI.
    pub(crate) fn generate(
        provider: &CryptoProvider,
        key_type: KeyType,
        run_id: &str,
    ) -> Result<Ca, Error> {
        let key = generate_key(key_type)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("loadtest CA {run_id}"));
        dn.push(DnType::OrganizationName, "loadtest");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial(provider, 0)?);
        validity(&mut params, 365);
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Certificate(format!("self-signing the CA: {e}")))?;
        Ok(Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from a PEM certificate and its PEM private key.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::File {
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            Error::Certificate(format!("{}: no PEM certificate: {e}", cert_path.display()))
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            Error::Certificate(format!(
                "{}: not an unencrypted PEM private key: {e}",
                key_path.display()
            ))
        })?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| {
            Error::Certificate(format!("{}: not a usable CA: {e}", cert_path.display()))
        })?;
        Ok(Ca {
            pem: to_pem("CERTIFICATE", &der),
            key_pem,
            der,
            issuer,
        })
    }

    /// A device (or subscriber) certificate: v3, CA:false, digitalSignature +
    /// keyEncipherment, clientAuth, CN = `cn`, AKI = the CA's key id.
    fn issue(
        &self,
        provider: &CryptoProvider,
        cn: &str,
        index: u64,
        key: &KeyPair,
    ) -> Result<CertificateDer<'static>, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial(provider, index + 1)?);
        validity(&mut params, 30);
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| Error::Certificate(format!("signing {cn}: {e}")))?;
        Ok(cert.der().clone())
    }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Verifier of the broker's TLS certificate built from every certificate in `path`.
pub(crate) fn server_verifier(
    provider: &Arc<CryptoProvider>,
    path: &Path,
) -> Result<Arc<CachingVerifier>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| Error::Certificate(format!("{}: bad PEM: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            Error::Certificate(format!(
                "{}: not usable as a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(Error::Certificate(format!(
            "{}: no PEM certificate to verify the broker with",
            path.display()
        )));
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Certificate(format!("{}: {e}", path.display())))?;
    Ok(CachingVerifier::new(inner))
}

/// Most distinct (certificate chain, name) pairs remembered as verified.
const VERIFIED_CACHE: usize = 16;

/// The WebPKI verifier of the broker's certificate, remembering chains it has already
/// accepted for a name during this run. Thousands of handshakes present the same server
/// chain; verifying its path once keeps the client side of a handshake cheap (the handshake
/// signature is still checked every time, so the server must hold the key).
#[derive(Debug)]
pub(crate) struct CachingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    verified: Mutex<Vec<(Vec<Vec<u8>>, String)>>,
}

impl CachingVerifier {
    fn new(inner: Arc<WebPkiServerVerifier>) -> Arc<CachingVerifier> {
        Arc::new(CachingVerifier {
            inner,
            verified: Mutex::new(Vec::new()),
        })
    }
}

impl ServerCertVerifier for CachingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        let name = server_name.to_str().into_owned();
        let known =
            |v: &Vec<(Vec<Vec<u8>>, String)>| v.iter().any(|(c, n)| *c == chain && *n == name);
        if known(&self.verified.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(ServerCertVerified::assertion());
        }
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if !known(&verified) {
            if verified.len() >= VERIFIED_CACHE {
                verified.remove(0);
            }
            verified.push((chain, name));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS configuration for the admin API (server verified, no client certificate).
pub(crate) fn admin_tls_config(
    provider: &Arc<CryptoProvider>,
    verifier: Arc<CachingVerifier>,
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A device's certificate chain `[leaf, CA]` and its key (PKCS#8 DER).
pub(crate) struct Identity {
    /// Leaf, then the CA.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub(crate) key_pkcs8: Vec<u8>,
}

/// Issues one certificate per entry of `cns` (in parallel on every core) and returns one
/// TLS client configuration each, presenting the chain `[leaf, CA]`, with that identity.
pub(crate) fn issue_fleet(
    provider: &Arc<CryptoProvider>,
    verifier: &Arc<CachingVerifier>,
    ca: &Ca,
    key_type: KeyType,
    cns: &[String],
) -> Result<Vec<(Arc<ClientConfig>, Identity)>, Error> {
    if cns.is_empty() {
        return Ok(Vec::new());
    }
    check_chain(provider, ca, &cns[0])?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(cns.len());

    // RSA keys are pooled; P-256 keys are one per certificate.
    let pool: Vec<KeyPair> = match key_type {
        KeyType::P256 => Vec::new(),
        KeyType::Rsa2048 => {
            let n = cns.len().min(RSA_KEY_POOL);
            parallel(threads, n, |_| generate_key(key_type))?
        }
    };

    let build = |i: usize| -> Result<(Arc<ClientConfig>, Identity), Error> {
        let owned;
        let key = if pool.is_empty() {
            owned = generate_key(key_type)?;
            &owned
        } else {
            &pool[i % pool.len()]
        };
        let leaf = ca.issue(provider, &cns[i], i as u64, key)?;
        let key_pkcs8 = key.serialize_der();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.clone()));
        let chain = vec![leaf, ca.der.clone()];
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(chain.clone(), key_der)?;
        // Every connection is a full handshake with its own identity: resuming would skip
        // the client certificate and make the figures (and a revocation test) meaningless.
        config.resumption = rustls::client::Resumption::disabled();
        Ok((Arc::new(config), Identity { chain, key_pkcs8 }))
    };
    parallel(threads, cns.len(), build)
}

/// Runs `f(0..n)` on `threads` scoped threads, keeping the order of the results.
fn parallel<T: Send>(
    threads: usize,
    n: usize,
    f: impl Fn(usize) -> Result<T, Error> + Sync,
) -> Result<Vec<T>, Error> {
    let threads = threads.clamp(1, n.max(1));
    let chunk = n.div_ceil(threads);
    let f = &f;
    let parts: Vec<Result<Vec<T>, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * chunk).min(n);
                let hi = ((t + 1) * chunk).min(n);
                s.spawn(move || (lo..hi).map(f).collect::<Result<Vec<T>, Error>>())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("certificate thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Verifies one issued chain against the CA as a broker would, so that a CA key that does
/// not match its certificate fails here with a clear message rather than as N handshake
/// errors.
fn check_chain(provider: &Arc<CryptoProvider>, ca: &Ca, cn: &str) -> Result<(), Error> {
    let key = generate_key(KeyType::P256)?;
    let leaf = ca.issue(provider, cn, u64::MAX - 1, &key)?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.der.clone())
        .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
    let now = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    );
    verifier
        .verify_client_cert(&leaf, &[], now)
        .map_err(|e| {
            Error::Certificate(format!(
                "a device certificate signed with the CA key does not verify against the CA certificate ({e}); do --ca-cert and --ca-key belong together?"
            ))
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_fleet_verifies_against_its_ca() {
        let provider = crypto_provider();
        let ca = Ca::generate(&provider, KeyType::P256, "t1").expect("ca");
        assert!(ca.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).expect("anchor");
        let verifier = CachingVerifier::new(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("verifier"),
        );
        let cns: Vec<String> = (0..5).map(|i| format!("dev-{i:06}")).collect();
        let configs = issue_fleet(&provider, &verifier, &ca, KeyType::P256, &cns).expect("fleet");
        assert_eq!(configs.len(), 5);
        assert!(configs
            .iter()
            .all(|(c, id)| c.client_auth_cert_resolver.has_certs() && id.chain.len() == 2));
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let provider = crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Ca::generate(&provider, KeyType::P256, "a").expect("ca a");
        let other_key = KeyPair::generate().expect("key");
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        std::fs::write(&cert, &a.pem).expect("write");
        std::fs::write(&key, other_key.serialize_pem()).expect("write");
        let loaded = Ca::load(&cert, &key).expect("loads");
        let verifier = {
            let mut roots = RootCertStore::empty();
            roots.add(a.der.clone()).expect("anchor");
            CachingVerifier::new(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .expect("verifier"),
            )
        };
        let err = issue_fleet(&provider, &verifier, &loaded, KeyType::P256, &["d".into()])
            .expect_err("must fail");
        assert!(err.to_string().contains("belong together"), "{err}");
        assert!(Ca::load(&key, &key).is_err());
    }

    #[test]
    fn caching_verifier_remembers_only_what_it_verified() {
        let provider = crypto_provider();
        let ca = Ca::generate(&provider, KeyType::P256, "srv").expect("ca");
        let rogue = Ca::generate(&provider, KeyType::P256, "rogue").expect("rogue");
        let server = |issuer: &Ca| {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
            params
                .signed_by(&key, &issuer.issuer)
                .expect("cert")
                .der()
                .clone()
        };
        let good = server(&ca);
        let bad = server(&rogue);
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).expect("anchor");
        let v = CachingVerifier::new(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("verifier"),
        );
        let now = UnixTime::now();
        let localhost = ServerName::try_from("localhost").expect("name");
        let other = ServerName::try_from("example.test").expect("name");
        for _ in 0..2 {
            assert!(v
                .verify_server_cert(&good, &[], &localhost, &[], now)
                .is_ok());
            assert!(v
                .verify_server_cert(&bad, &[], &localhost, &[], now)
                .is_err());
            assert!(v.verify_server_cert(&good, &[], &other, &[], now).is_err());
        }
        assert_eq!(v.verified.lock().expect("lock").len(), 1);
    }

    #[test]
    fn certificate_profiles() {
        use x509_parser::extensions::ParsedExtension;
        use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

        let provider = crypto_provider();
        for key_type in [KeyType::P256, KeyType::Rsa2048] {
            let ca = Ca::generate(&provider, key_type, "profile").expect("ca");
            let key = generate_key(key_type).expect("key");
            let leaf = ca.issue(&provider, "dev-000042", 42, &key).expect("leaf");
            let (_, ca_x) = X509Certificate::from_der(&ca.der).expect("ca parses");
            let (_, leaf_x) = X509Certificate::from_der(&leaf).expect("leaf parses");

            assert_eq!(ca_x.version(), X509Version::V3);
            let bc = ca_x
                .basic_constraints()
                .expect("ok")
                .expect("basicConstraints");
            assert!(bc.critical && bc.value.ca);
            let ku = ca_x.key_usage().expect("ok").expect("keyUsage").value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            let mut ca_ski = None;
            let mut ca_has_aki = false;
            for ext in ca_x.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => ca_ski = Some(id.0.to_vec()),
                    ParsedExtension::AuthorityKeyIdentifier(_) => ca_has_aki = true,
                    _ => {}
                }
            }
            let ca_ski = ca_ski.expect("CA has a subject key identifier");
            assert!(ca_has_aki, "CA has an authority key identifier");

            assert_eq!(leaf_x.version(), X509Version::V3);
            let bc = leaf_x
                .basic_constraints()
                .expect("ok")
                .expect("basicConstraints");
            assert!(!bc.value.ca);
            let ku = leaf_x.key_usage().expect("ok").expect("keyUsage").value;
            assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
            let eku = leaf_x.extended_key_usage().expect("ok").expect("EKU").value;
            assert!(eku.client_auth && !eku.server_auth);
            let cn = leaf_x
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok());
            assert_eq!(cn, Some("dev-000042"));
            assert_eq!(leaf_x.issuer(), ca_x.subject());
            let aki = leaf_x
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            assert_eq!(aki, Some(ca_ski), "device AKI is the CA's SKI");
        }
    }
}
