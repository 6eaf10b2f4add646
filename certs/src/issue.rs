//! Issuing with rcgen: self-signed CA, intermediate CA, device and server certificates,
//! CRLs, and test-only oddities (expired, v1, CA:false "CA") for the generators.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Key algorithms `certs` can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (fast; the default).
    #[default]
    P256,
    /// RSA 2048.
    Rsa2048,
    /// RSA 4096.
    Rsa4096,
}

/// Why issuing failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// rcgen refused the parameters or the key.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The issuer certificate or key could not be used.
    #[error("the issuing CA cannot be used: {0}")]
    BadIssuer(String),
}

impl From<rcgen::Error> for IssueError {
    fn from(e: rcgen::Error) -> Self {
        IssueError::Generate(e.to_string())
    }
}

/// A generated certificate and its private key.
pub struct Issued {
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    pub key_der: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field(
                "fingerprint",
                &crate::info::fingerprint_sha1(self.cert_der.as_ref()),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        crate::pem::to_pem("CERTIFICATE", self.cert_der.as_ref())
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        crate::pem::to_pem("PRIVATE KEY", self.key_der.secret_pkcs8_der())
    }

    /// The private key as a rustls key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// An rcgen issuer for signing with this certificate (when it is a CA).
    pub fn issuer(&self) -> Result<Issuer<'static, KeyPair>, IssueError> {
        // rcgen copies the subject attribute by attribute and panics on an empty RDN
        // (possible in a CA certificate from elsewhere): refuse such a name first.
        let (_, x) = x509_parser::parse_x509_certificate(self.cert_der.as_ref())
            .map_err(|e| IssueError::BadIssuer(e.to_string()))?;
        if x.subject().iter().any(|rdn| rdn.iter().next().is_none()) {
            return Err(IssueError::BadIssuer(
                "the CA subject has an empty RDN".into(),
            ));
        }
        let kp = KeyPair::try_from(self.key_der.secret_pkcs8_der())
            .map_err(|e| IssueError::BadIssuer(e.to_string()))?;
        Issuer::from_ca_cert_der(&self.cert_der, kp)
            .map_err(|e| IssueError::BadIssuer(e.to_string()))
    }
}

/// Subject fields and lifetime of a certificate to issue.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Common Name.
    pub cn: String,
    /// Organization.
    pub o: Option<String>,
    /// Organizational unit.
    pub ou: Option<String>,
    /// Country (two letters).
    pub c: Option<String>,
}

impl Subject {
    /// A subject with only a Common Name.
    pub fn cn(cn: &str) -> Subject {
        Subject {
            cn: cn.to_string(),
            o: None,
            ou: None,
            c: None,
        }
    }

    pub(crate) fn dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.c {
            dn.push(DnType::CountryName, c.as_str());
        }
        if let Some(o) = &self.o {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.ou {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(DnType::CommonName, self.cn.as_str());
        dn
    }
}

/// Validity window: starts `back` before now and lasts until `days` after now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago until `days` from now.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// Generates a key pair of the given type.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, IssueError> {
    Ok(match key_type {
        KeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyType::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
        KeyType::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)?
        }
    })
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap_or_default();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn base_params(subject: &Subject, validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.dn();
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

fn finish(
    params: &CertificateParams,
    key: KeyPair,
    issuer: Option<&Issuer<'_, KeyPair>>,
) -> Result<Issued, IssueError> {
    let cert = match issuer {
        Some(i) => params.signed_by(&key, i)?,
        None => params.self_signed(&key)?,
    };
    Ok(Issued {
        cert_der: cert.der().clone(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

/// Options for a CA certificate.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// pathLenConstraint.
    pub path_len: Option<u8>,
    /// Mark BasicConstraints CA:true (false only to make bad test anchors).
    pub is_ca: bool,
    /// Key usages keyCertSign + cRLSign (false omits KeyUsage: only for tests).
    pub key_usage: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            path_len: None,
            is_ca: true,
            key_usage: true,
        }
    }
}

fn ca_params(
    subject: &Subject,
    validity: Validity,
    opts: &CaOptions,
    signed: bool,
) -> CertificateParams {
    let mut p = base_params(subject, validity);
    p.is_ca = if opts.is_ca {
        match opts.path_len {
            Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
            None => IsCa::Ca(BasicConstraints::Unconstrained),
        }
    } else {
        IsCa::ExplicitNoCa
    };
    if opts.key_usage {
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    }
    p.use_authority_key_identifier_extension = signed;
    p
}

/// Issues a CA certificate (v3_ca: CA:true critical, keyCertSign+cRLSign, SKI/AKI),
/// self-signed when `issuer` is `None`, else an intermediate signed by `issuer`.
pub fn ca(
    subject: &Subject,
    validity: Validity,
    key_type: KeyType,
    opts: &CaOptions,
    issuer: Option<&Issuer<'_, KeyPair>>,
) -> Result<Issued, IssueError> {
    let p = ca_params(subject, validity, opts, issuer.is_some());
    finish(&p, generate_key(key_type)?, issuer)
}

fn crl_points(p: &mut CertificateParams, crl_urls: &[String]) {
    if !crl_urls.is_empty() {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: crl_urls.to_vec(),
        }];
    }
}

fn device_params(cn: &str, validity: Validity, crl_urls: &[String]) -> CertificateParams {
    let mut p = base_params(&Subject::cn(cn), validity);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    crl_points(&mut p, crl_urls);
    p
}

/// Issues a device certificate (v3_signed: CA:false, digitalSignature+keyEncipherment,
/// clientAuth EKU, SKI/AKI) with `crl_urls` as CRL distribution points.
pub fn device(
    cn: &str,
    validity: Validity,
    key_type: KeyType,
    issuer: &Issuer<'_, KeyPair>,
    crl_urls: &[String],
) -> Result<Issued, IssueError> {
    let p = device_params(cn, validity, crl_urls);
    finish(&p, generate_key(key_type)?, Some(issuer))
}

fn server_params(
    subject: &Subject,
    sans: &[String],
    validity: Validity,
    signed: bool,
    crl_urls: &[String],
) -> Result<CertificateParams, IssueError> {
    let mut p = CertificateParams::new(sans.to_vec())?;
    let base = base_params(subject, validity);
    p.distinguished_name = base.distinguished_name;
    p.not_before = base.not_before;
    p.not_after = base.not_after;
    p.serial_number = base.serial_number;
    p.use_authority_key_identifier_extension = signed;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    crl_points(&mut p, crl_urls);
    Ok(p)
}

/// Issues a server certificate (serverAuth, SANs; IPs become IP SANs), signed by
/// `issuer` or self-signed.
pub fn server(
    subject: &Subject,
    sans: &[String],
    validity: Validity,
    key_type: KeyType,
    issuer: Option<&Issuer<'_, KeyPair>>,
    crl_urls: &[String],
) -> Result<Issued, IssueError> {
    let p = server_params(subject, sans, validity, issuer.is_some(), crl_urls)?;
    finish(&p, generate_key(key_type)?, issuer)
}

/// What a certificate issued for someone else's public key (a signing request) is: the
/// extensions of [`device`], [`server`] or [`ca`], whatever the request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// A device (client) certificate: CN only, clientAuth.
    Device,
    /// A server certificate: serverAuth, the given SANs.
    Server,
    /// An intermediate CA with an optional pathLenConstraint.
    Intermediate {
        /// pathLenConstraint.
        path_len: Option<u8>,
    },
}

/// Issues a certificate of `profile` for the public key `spki_der` (from a signing
/// request whose signature the caller verified), signed by `issuer`. The private key
/// is never seen. `sans` apply to [`Profile::Server`] only.
pub fn for_public_key(
    profile: &Profile,
    subject: &Subject,
    sans: &[String],
    spki_der: &[u8],
    validity: Validity,
    issuer: &Issuer<'_, KeyPair>,
    crl_urls: &[String],
) -> Result<CertificateDer<'static>, IssueError> {
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| IssueError::Generate(format!("unsupported public key: {e}")))?;
    let p = match profile {
        Profile::Device => device_params(&subject.cn, validity, crl_urls),
        Profile::Server => server_params(subject, sans, validity, true, crl_urls)?,
        Profile::Intermediate { path_len } => {
            let opts = CaOptions {
                path_len: *path_len,
                ..CaOptions::default()
            };
            let mut p = ca_params(subject, validity, &opts, true);
            crl_points(&mut p, crl_urls);
            p
        }
    };
    Ok(p.signed_by(&public_key, issuer)?.der().clone())
}

/// A revoked certificate for a CRL: serial (lowercase hex) and revocation time.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// Serial, hex.
    pub serial_hex: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// Issues a CRL signed by `issuer`, valid for `days`.
pub fn crl(
    issuer: &Issuer<'_, KeyPair>,
    revoked: &[Revocation],
    crl_number: u64,
    days: i64,
) -> Result<Vec<u8>, IssueError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(days.max(1)),
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| {
                let bytes = hex::decode(&r.serial_hex)
                    .map_err(|_| IssueError::Generate(format!("bad serial {}", r.serial_hex)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: r.revoked_at,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, IssueError>>()?,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer)?.der().as_ref().to_vec())
}

/// Re-encodes `cert` as an X.509 **v1** certificate (no version field, no extensions)
/// signed again with `signer` (PKCS#8 DER of the issuer's P-256 key). rcgen only makes
/// v3; the upload rules must refuse v1, so the generators need one.
pub fn make_v1(cert: &[u8], signer_pkcs8: &[u8]) -> Result<Vec<u8>, IssueError> {
    let bad = || IssueError::Generate("cannot re-encode certificate".into());
    let top = crate::der::children(cert).ok_or_else(bad)?;
    let tbs = top.first().ok_or_else(bad)?;
    let sig_alg = top.get(1).ok_or_else(bad)?;
    let fields = crate::der::children(tbs).ok_or_else(bad)?;
    let mut content = Vec::new();
    for f in fields {
        // [0] version and [3] extensions are v3 only.
        if f.first() == Some(&0xa0) || f.first() == Some(&0xa3) {
            continue;
        }
        content.extend_from_slice(f);
    }
    let tbs_v1 = crate::der::encode(0x30, &content);
    let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        signer_pkcs8,
    )
    .map_err(|_| IssueError::BadIssuer("make_v1 needs a P-256 key".into()))?;
    let sig = kp
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &tbs_v1)
        .map_err(|_| bad())?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_ref());
    let mut out = tbs_v1;
    out.extend_from_slice(sig_alg);
    out.extend_from_slice(&crate::der::encode(0x03, &bits));
    Ok(crate::der::encode(0x30, &out))
}
