//! `broker health`: is the broker of this configuration ready for clients?
//!
//! Ready means what a client needs: the MQTT listener accepts connections, the admin
//! API answers a request over TLS, and `<data_dir>/server.crt` holds the certificate the
//! broker serves (the clients' CA file while it is self-signed). [`wait`] retries until
//! then, so a script can start the broker in the background and go on once it is ready.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::Config;

/// Why the broker is not ready (the last reason seen).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// A listener does not accept connections.
    #[error("nothing accepts connections on {what} {addr}: {source}")]
    Connect {
        /// "MQTT" or "admin API".
        what: &'static str,
        /// The address tried.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The admin API did not complete a TLS handshake or a request.
    #[error("the admin API on {addr} does not answer: {reason}")]
    Admin {
        /// The address tried.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// `server.crt` is missing or does not hold the served certificate.
    #[error("{file}: {reason}")]
    ServerCertificate {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A ready broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The MQTT address that accepted a connection.
    pub mqtt: SocketAddr,
    /// The admin address that answered.
    pub admin: SocketAddr,
    /// The clients' CA file.
    pub server_crt: PathBuf,
}

/// Where a client on this machine reaches a listener bound to `addr` (an unspecified
/// address is reached on loopback).
fn local(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// One probe of the broker configured by `config`.
pub async fn check(config: &Config) -> Result<Ready, NotReady> {
    let mqtt = local(config.mqtt_listen);
    let admin = local(config.admin_listen);
    let connect = |what: &'static str, addr: SocketAddr| async move {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(NotReady::Connect { what, addr, source }),
            Err(_) => Err(NotReady::Connect {
                what,
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            }),
        }
    };
    drop(connect("MQTT", mqtt).await?);
    let tcp = connect("admin API", admin).await?;
    let admin_err = |reason: String| NotReady::Admin {
        addr: admin,
        reason,
    };
    let served = tokio::time::timeout(STEP_TIMEOUT, admin_request(tcp))
        .await
        .map_err(|_| admin_err("no answer within 3 s".into()))?
        .map_err(admin_err)?;

    let file = config.data_dir.join("server.crt");
    let cert_err = |reason: &str| NotReady::ServerCertificate {
        file: file.clone(),
        reason: reason.to_string(),
    };
    let pem = std::fs::read(&file).map_err(|e| cert_err(&e.to_string()))?;
    let written = certs::pem::read_certificates(&pem).map_err(|e| cert_err(&e.to_string()))?;
    if written.first().map(|c| c.as_ref()) != Some(served.as_ref()) {
        return Err(cert_err(
            "does not hold the certificate the broker serves (yet)",
        ));
    }
    Ok(Ready {
        mqtt,
        admin,
        server_crt: file,
    })
}

/// Probes until the broker is ready or `timeout` has passed (then the last reason).
pub async fn wait(config: &Config, timeout: Duration) -> Result<Ready, NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        match check(config).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A TLS handshake and `GET /openapi.json` on the admin listener; the served leaf
/// certificate when the answer is 200.
async fn admin_request(tcp: TcpStream) -> Result<CertificateDer<'static>, String> {
    let provider = crate::tls::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or("no server certificate")?;
    tls.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if &head[..9] != b"HTTP/1.1 " || &head[9..12] != b"200" {
        return Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&head).trim_end()
        ));
    }
    Ok(leaf)
}

/// Accepts whatever certificate the admin listener serves: the probe checks readiness,
/// and compares the served certificate with `server.crt` itself. Handshake signatures
/// are still verified.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
