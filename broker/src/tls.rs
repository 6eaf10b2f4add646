//! rustls configuration: a client-certificate verifier over the live `TrustStore`
//! snapshot, and a server-certificate resolver that switches to a newly imported
//! certificate without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use certs::{DeviceIdentity, VerifyError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::metrics::Metrics;

/// The crypto provider of the whole product: aws-lc-rs, X25519 first (cheapest key
/// exchange for a handshake-heavy load), then P-256, then the post-quantum hybrid.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups.sort_by_key(|g| match g.name() {
        rustls::NamedGroup::X25519 => 0,
        rustls::NamedGroup::secp256r1 => 1,
        _ => 2,
    });
    // AES-128-GCM with SHA-256 first: SHA-256 runs on the CPU's SHA extensions where
    // SHA-384 does not, and AES-128 costs less per record; all suites stay available.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 3,
    });
    Arc::new(p)
}

/// Identities verified during handshakes, picked up by the session right after.
/// rustls gives the session only the raw certificates, so the verifier leaves the typed
/// identity here instead of the session parsing and verifying the chain a second time.
#[derive(Default)]
pub struct IdentityCache {
    map: Mutex<HashMap<Vec<u8>, (DeviceIdentity, Instant)>>,
}

impl IdentityCache {
    fn put(&self, leaf: &[u8], id: DeviceIdentity) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() > 4096 {
                // Handshakes that verified the chain but failed later leave entries.
                m.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(30));
            }
            m.insert(leaf.to_vec(), (id, Instant::now()));
        }
    }

    /// Takes the identity verified for this leaf certificate.
    pub fn take(&self, leaf: &[u8]) -> Option<DeviceIdentity> {
        self.map.lock().ok()?.remove(leaf).map(|(id, _)| id)
    }
}

tokio::task_local! {
    /// Why the verifier refused the chain of the handshake this task is running (see
    /// [`recording_refusal`]).
    static REFUSED: std::cell::Cell<Option<&'static str>>;
}

/// Runs a handshake future and returns its output with the reason the verifier refused
/// the device's chain, if it did. The handshake's one outcome is then counted once, by
/// the caller: `rejected` with this reason, or `failed`/`ok` otherwise. (rustls calls the
/// verifier synchronously inside the handshake future's poll, so in this task.)
pub async fn recording_refusal<F: std::future::Future>(
    handshake: F,
) -> (F::Output, Option<&'static str>) {
    REFUSED
        .scope(std::cell::Cell::new(None), async move {
            let out = handshake.await;
            (out, REFUSED.with(|r| r.get()))
        })
        .await
}

/// Verifies device chains against the live trust store.
pub struct DeviceVerifier {
    trust: crate::TrustView,
    provider: Arc<CryptoProvider>,
    cache: Arc<IdentityCache>,
    metrics: Metrics,
}

impl std::fmt::Debug for DeviceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceVerifier")
    }
}

impl DeviceVerifier {
    /// A verifier over `trust` (swapped by the caller on every store change).
    pub fn new(
        trust: crate::TrustView,
        provider: Arc<CryptoProvider>,
        cache: Arc<IdentityCache>,
        metrics: Metrics,
    ) -> DeviceVerifier {
        DeviceVerifier {
            trust,
            provider,
            cache,
            metrics,
        }
    }
}

/// Maps a chain rejection to the TLS alert the device sees.
fn to_rustls(e: &VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Expired | VerifyError::AnchorExpired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::Revoked => CertificateError::Revoked,
        VerifyError::UnknownIssuer | VerifyError::ChainTooLong { .. } => {
            CertificateError::UnknownIssuer
        }
        VerifyError::BadSignature => CertificateError::BadSignature,
        VerifyError::Malformed(_) | VerifyError::NoCertificate => CertificateError::BadEncoding,
        VerifyError::AnchorDisabled | VerifyError::AnchorRemoved => {
            CertificateError::ApplicationVerificationFailure
        }
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for DeviceVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Thousands of tenants' CAs: no hints (devices send their one certificate).
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(CertificateDer::from(end_entity.as_ref()));
        chain.extend(
            intermediates
                .iter()
                .map(|c| CertificateDer::from(c.as_ref())),
        );
        let store = self.trust.load();
        match store.verify_device(&chain, now) {
            Ok(id) => {
                self.cache.put(end_entity.as_ref(), id);
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => {
                // Inside the listener's handshake the listener counts the outcome;
                // anywhere else, here.
                if REFUSED.try_with(|r| r.set(Some(e.label()))).is_err() {
                    self.metrics.handshake_rejected(e.label());
                }
                let (subject, fp) = certs::CertInfo::parse(end_entity.as_ref())
                    .map(|i| (i.subject, i.fingerprint_sha1))
                    .unwrap_or_default();
                tracing::warn!(reason = %e, %subject, fingerprint = %fp, "device certificate refused");
                Err(to_rustls(&e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves the current server certificate; `set` swaps it for new handshakes.
#[derive(Debug)]
pub struct ServerCertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ServerCertResolver {
    /// A resolver serving `key`.
    pub fn new(key: Arc<CertifiedKey>) -> ServerCertResolver {
        ServerCertResolver {
            current: ArcSwap::new(key),
        }
    }

    /// Switches to a new certificate (existing connections keep theirs).
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The certificate chain currently served.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds a `CertifiedKey` from a chain and key.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let signer = provider.key_provider.load_private_key(key.clone_key())?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// The mTLS server config of the MQTT listener.
pub fn mqtt_server_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<DeviceVerifier>,
    resolver: Arc<ServerCertResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    // Stateless tickets would let a device resume without its certificate being
    // re-checked against a newer trust store: resumption is off on purpose.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    // The server's order of cipher suites (see `provider`), not the device's.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// The server config of the admin HTTPS listener (no client certificates).
pub fn admin_server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<ServerCertResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
