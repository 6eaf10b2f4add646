//! PKCS#10 certificate signing requests: making one with a new key (the key stays where
//! it was made), and reading one to sign: the signature must verify with the key the
//! request carries, and what the request asks for is reported, not obeyed: the CA's
//! profile ([`crate::issue::Profile`]) decides the extensions of the certificate.

use rustls_pki_types::PrivatePkcs8KeyDer;
use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509CertificationRequest};

use crate::info::KeyAlgorithm;
use crate::issue::{IssueError, KeyType, Subject};

/// Why a certificate signing request cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PKCS#10 request (bad PEM, bad DER, trailing bytes).
    #[error("Malformed certificate signing request: {0}")]
    Malformed(String),
    /// The signature does not verify with the public key in the request.
    #[error("The certificate signing request's signature does not verify with the public key it carries: it was altered, or not signed by that key")]
    BadSignature,
    /// The request asks for BasicConstraints CA:true and the profile is not an
    /// intermediate CA.
    #[error("The certificate signing request asks for a CA certificate (BasicConstraints CA:true); only --profile intermediate issues a CA")]
    CaRequested,
    /// The subject has no Common Name.
    #[error("The certificate signing request's subject has no Common Name (CN)")]
    NoCommonName,
}

/// A request whose signature verified.
#[derive(Debug, Clone)]
pub struct Request {
    /// The subject's Common Name.
    pub common_name: String,
    /// Organization (O), when present.
    pub o: Option<String>,
    /// Organizational unit (OU), when present.
    pub ou: Option<String>,
    /// Country (C), when present.
    pub c: Option<String>,
    /// The subject as text (`C=DE, O=Acme, CN=...`).
    pub subject: String,
    /// Requested subject alternative names: DNS names and IP addresses, as text.
    pub sans: Vec<String>,
    /// Whether the request asks for BasicConstraints CA:true.
    pub requests_ca: bool,
    /// The SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// The key's algorithm and size.
    pub key: KeyAlgorithm,
}

impl Request {
    /// The subject fields as a [`Subject`].
    pub fn subject_fields(&self) -> Subject {
        Subject {
            cn: self.common_name.clone(),
            o: self.o.clone(),
            ou: self.ou.clone(),
            c: self.c.clone(),
        }
    }
}

/// Makes a new key of `key_type` and a request for `subject` (and `sans`, DNS names or
/// IP addresses, as a subjectAltName extension request) signed with it. Returns the
/// request (DER) and the key (PKCS#8).
pub fn create(
    subject: &Subject,
    sans: &[String],
    key_type: KeyType,
) -> Result<(Vec<u8>, PrivatePkcs8KeyDer<'static>), IssueError> {
    let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = subject.dn();
    let key = crate::issue::generate_key(key_type)?;
    let csr = params.serialize_request(&key)?;
    Ok((
        csr.der().as_ref().to_vec(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))
}

/// Reads a request from PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or DER
/// and verifies its signature.
pub fn parse(input: &[u8]) -> Result<Request, CsrError> {
    let der = if crate::pem::is_pem(input) {
        crate::pem::parse_pem_blocks(input)
            .map_err(|e| CsrError::Malformed(e.to_string()))?
            .into_iter()
            .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
            .ok_or_else(|| {
                CsrError::Malformed(
                    "no -----BEGIN CERTIFICATE REQUEST----- block found".to_string(),
                )
            })?
            .contents
    } else {
        input.to_vec()
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CsrError::Malformed(format!("not a PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let info = &csr.certification_request_info;
    let attr = |oid: &x509_parser::oid_registry::Oid<'_>| {
        info.subject
            .iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
    };
    use x509_parser::oid_registry as oids;
    let common_name = attr(&oids::OID_X509_COMMON_NAME)
        .filter(|cn| !cn.trim().is_empty())
        .ok_or(CsrError::NoCommonName)?;
    let mut sans = Vec::new();
    let mut requests_ca = false;
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => sans.push(d.to_string()),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => sans.push(
                                std::net::Ipv4Addr::from(
                                    <[u8; 4]>::try_from(*ip).unwrap_or_default(),
                                )
                                .to_string(),
                            ),
                            16 => sans.push(
                                std::net::Ipv6Addr::from(
                                    <[u8; 16]>::try_from(*ip).unwrap_or_default(),
                                )
                                .to_string(),
                            ),
                            _ => {
                                return Err(CsrError::Malformed(
                                    "an IP address SAN of neither 4 nor 16 bytes".into(),
                                ))
                            }
                        },
                        _ => {}
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => requests_ca |= bc.ca,
            _ => {}
        }
    }
    let key = crate::info::key_algorithm(&info.subject_pki);
    Ok(Request {
        common_name,
        o: attr(&oids::OID_X509_ORGANIZATION_NAME),
        ou: attr(&oids::OID_X509_ORGANIZATIONAL_UNIT),
        c: attr(&oids::OID_X509_COUNTRY_NAME),
        subject: info.subject.to_string(),
        sans,
        requests_ca,
        spki_der: info.subject_pki.raw.to_vec(),
        key,
    })
}
