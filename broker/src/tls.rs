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

/// A device chain the verifier refused: what the refusal's log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The metric label of the reason (`VerifyError::label`).
    pub reason: &'static str,
    /// The reason in words (with what to do, where there is something to do).
    pub detail: String,
    /// The tenant(s) whose trusted certificates the chain names, where known.
    pub tenant: Option<String>,
    /// The device certificate's subject.
    pub subject: String,
    /// The device certificate's SHA-1 fingerprint.
    pub fingerprint: String,
}

tokio::task_local! {
    /// Why the verifier refused the chain of the handshake this task is running (see
    /// [`recording_refusal`]).
    static REFUSED: std::cell::RefCell<Option<Refusal>>;
}

/// Runs a handshake future and returns its output with the verifier's refusal of the
/// device's chain, if it refused it. The handshake's one outcome is then counted and
/// logged once, by the caller: `rejected` with this reason, or `failed`/`ok` otherwise.
/// (rustls calls the verifier synchronously inside the handshake future's poll, so in
/// this task.)
pub async fn recording_refusal<F: std::future::Future>(
    handshake: F,
) -> (F::Output, Option<Refusal>) {
    REFUSED
        .scope(std::cell::RefCell::new(None), async move {
            let out = handshake.await;
            (out, REFUSED.with(|r| r.borrow_mut().take()))
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

/// Maps a chain rejection to the TLS alert the device sees, the most specific one TLS
/// has (rustls turns each `CertificateError` into its alert):
///
/// | refusal | alert |
/// | --- | --- |
/// | expired, not yet valid, anchor expired | `certificate_expired` |
/// | revoked | `certificate_revoked` |
/// | no trusted certificate issued the chain | `unknown_ca` |
/// | a valid chain the tenant's policy refuses: longer than `maxChainLength`, disabled or removed anchor, two tenants | `access_denied` |
/// | not for client authentication | `unsupported_certificate` |
/// | a signature does not verify | `decrypt_error` |
/// | a certificate breaks a rule (RFC 5280, pathLenConstraint, CA as device, CN) | `bad_certificate` |
fn to_rustls(e: &VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Expired | VerifyError::AnchorExpired | VerifyError::NotYetValid => {
            CertificateError::Expired
        }
        VerifyError::Revoked => CertificateError::Revoked,
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        VerifyError::ChainTooLong { .. }
        | VerifyError::AnchorDisabled
        | VerifyError::AnchorRemoved
        | VerifyError::AmbiguousTenant => CertificateError::ApplicationVerificationFailure,
        VerifyError::NotForClientAuth => CertificateError::InvalidPurpose,
        VerifyError::BadSignature => CertificateError::BadSignature,
        VerifyError::UnsupportedCriticalExtension(_) => {
            CertificateError::UnhandledCriticalExtension
        }
        VerifyError::NoCertificate
        | VerifyError::Malformed(_)
        | VerifyError::PathTooDeep
        | VerifyError::PathLenExceeded
        | VerifyError::IssuerNotCa
        | VerifyError::DeviceIsCa
        | VerifyError::NoCommonName
        | VerifyError::ForbiddenCnCharacter(_)
        | VerifyError::CriticalAuthorityKeyId
        | VerifyError::CriticalSubjectKeyId
        | VerifyError::MissingAuthorityKeyId
        | VerifyError::MissingSubjectKeyId
        | VerifyError::PolicyConstraintsNotCritical
        | VerifyError::CriticalExtendedKeyUsage
        | VerifyError::UnsupportedNameConstraint(_)
        | VerifyError::SelfIssuedIntermediate
        | VerifyError::NameConstraintViolation
        | VerifyError::Invalid(_) => CertificateError::BadEncoding,
    };
    rustls::Error::InvalidCertificate(ce)
}

/// The refusal's reason in words, with what an operator can do where there is a knob.
fn detail(e: &VerifyError) -> String {
    match e {
        VerifyError::ChainTooLong { .. } => format!(
            "{e}: the tenant admin raises maxChainLength with PUT /tenant/tenants/{{id}}/settings, or trusts the CA that issues the devices"
        ),
        VerifyError::UnknownIssuer => format!(
            "{e}: upload the CA that issued the device (or its chain) as a trusted certificate of the device's tenant"
        ),
        _ => e.to_string(),
    }
}

/// Hands the refusal to the handshake's [`recording_refusal`] scope; gives it back when
/// there is none.
fn record(refusal: Refusal) -> Result<(), Refusal> {
    let mut slot = Some(refusal);
    let stored = REFUSED.try_with(|r| *r.borrow_mut() = slot.take());
    match (stored, slot) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(r)) => Err(r),
        (Err(_), None) => Ok(()),
    }
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
                let (subject, fingerprint) = certs::CertInfo::parse(end_entity.as_ref())
                    .map(|i| (i.subject, i.fingerprint_sha1))
                    .unwrap_or_default();
                let tenants = store.candidate_tenants(&chain);
                let refusal = Refusal {
                    reason: e.label(),
                    detail: detail(&e),
                    tenant: (!tenants.is_empty()).then(|| tenants.join(",")),
                    subject,
                    fingerprint,
                };
                // Inside the listener's handshake the listener counts and logs the
                // outcome (it knows the source address); anywhere else, here.
                let alert = to_rustls(&e);
                if let Err(refusal) = record(refusal) {
                    self.metrics.handshake_rejected(e.label());
                    tracing::warn!(
                        reason = refusal.reason,
                        detail = %refusal.detail,
                        tenant = refusal.tenant.as_deref().unwrap_or("-"),
                        subject = %refusal.subject,
                        fingerprint = %refusal.fingerprint,
                        "device certificate refused"
                    );
                }
                Err(alert)
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

/// The EST listener's client-certificate verifier: a certificate is optional
/// (`simpleenroll` authenticates with a secret), and any presented chain is accepted
/// at the TLS layer, where only the holder's signature over the handshake is checked
/// (proof of possession of the key, by the device verifier's own signature checks).
/// `simplereenroll` then judges the chain with [`certs::TrustStore::verify_device`], as
/// port 8883 does, and answers a refusal with a 401 that says why instead of a bare TLS
/// alert.
#[derive(Debug)]
pub struct EstClientVerifier {
    devices: Arc<DeviceVerifier>,
}

impl EstClientVerifier {
    /// A verifier using `devices`' signature checks.
    pub fn new(devices: Arc<DeviceVerifier>) -> EstClientVerifier {
        EstClientVerifier { devices }
    }
}

impl ClientCertVerifier for EstClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.devices.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.devices.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.devices.supported_verify_schemes()
    }
}

/// The server config of the EST listener: the server certificate, an optional client
/// certificate ([`EstClientVerifier`]), HTTP/1.1 and HTTP/2, no session resumption (a
/// resumed session would carry a client certificate not presented again).
pub fn est_server_config(
    provider: Arc<CryptoProvider>,
    devices: Arc<DeviceVerifier>,
    resolver: Arc<ServerCertResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = Arc::new(EstClientVerifier::new(devices));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
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
