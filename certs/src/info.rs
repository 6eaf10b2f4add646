//! A parsed, owned view of one X.509 certificate: everything the upload rules, the
//! requirements report, `certs inspect` and the REST API show. Parsed once.

use serde::Serialize;
use sha1::Digest as _;
use x509_parser::prelude::*;

use crate::pem::ReadError;

/// The public key of a certificate, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum KeyAlgorithm {
    /// RSA with its modulus size in bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// ECDSA on another curve (named by OID).
    EcOther {
        /// Curve OID.
        curve: String,
    },
    /// Ed25519.
    Ed25519,
    /// Any other algorithm (named by OID).
    Other {
        /// Algorithm OID.
        oid: String,
    },
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA {bits} bit"),
            KeyAlgorithm::EcP256 => write!(f, "EC P-256"),
            KeyAlgorithm::EcP384 => write!(f, "EC P-384"),
            KeyAlgorithm::EcOther { curve } => write!(f, "EC curve {curve}"),
            KeyAlgorithm::Ed25519 => write!(f, "Ed25519"),
            KeyAlgorithm::Other { oid } => write!(f, "key algorithm {oid}"),
        }
    }
}

/// An owned summary of a certificate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// X.509 version as shown to people (1, 2 or 3).
    pub version: u32,
    /// Subject DN in RFC 4514 form (`CN=...,O=...`).
    pub subject: String,
    /// Issuer DN in RFC 4514 form.
    pub issuer: String,
    /// Subject Common Name, if present.
    pub common_name: Option<String>,
    /// Serial number, lowercase hex without separators.
    pub serial_hex: String,
    /// Not-before, Unix seconds.
    pub not_before: i64,
    /// Not-after, Unix seconds.
    pub not_after: i64,
    /// Signature algorithm name (e.g. `SHA256withRSA`).
    pub signature_algorithm: String,
    /// The public key.
    pub key: KeyAlgorithm,
    /// BasicConstraints CA flag (false when absent).
    pub is_ca: bool,
    /// BasicConstraints present and critical.
    pub basic_constraints_critical: bool,
    /// pathLenConstraint, when present.
    pub path_len: Option<u32>,
    /// KeyUsage names, `None` when the extension is absent.
    pub key_usage: Option<Vec<String>>,
    /// ExtendedKeyUsage names, `None` when absent.
    pub extended_key_usage: Option<Vec<String>>,
    /// Subject Key Identifier, hex.
    pub subject_key_id: Option<String>,
    /// Authority Key Identifier key id, hex.
    pub authority_key_id: Option<String>,
    /// Subject Alternative Names (DNS names and IPs, as text).
    pub subject_alt_names: Vec<String>,
    /// CRL distribution point URLs.
    pub crl_distribution_points: Vec<String>,
    /// Subject attributes by short name (CN, O, OU, C, ...), first value of each.
    pub subject_attributes: Vec<(String, String)>,
    /// Lowercase hex SHA-1 of the DER (the reference platform's fingerprint).
    pub fingerprint_sha1: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint_sha256: String,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, ReadError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| ReadError::malformed_certificate(&e, der))?;
        Ok(Self::from_x509(&cert, der))
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
        let mut info = CertInfo {
            version: cert.version().0 + 1,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name: common_name(cert.subject()),
            serial_hex: hex::encode(strip_sign(cert.raw_serial())),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            signature_algorithm: signature_name(&cert.signature_algorithm.algorithm),
            key: key_algorithm(cert.public_key()),
            is_ca: false,
            basic_constraints_critical: false,
            path_len: None,
            key_usage: None,
            extended_key_usage: None,
            subject_key_id: None,
            authority_key_id: None,
            subject_alt_names: Vec::new(),
            crl_distribution_points: Vec::new(),
            subject_attributes: attributes(cert.subject()),
            fingerprint_sha1: hex::encode(sha1(der)),
            fingerprint_sha256: hex::encode(sha2::Sha256::digest(der)),
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    info.is_ca = bc.ca;
                    info.path_len = bc.path_len_constraint;
                    info.basic_constraints_critical = ext.critical;
                }
                ParsedExtension::KeyUsage(ku) => info.key_usage = Some(key_usage_names(ku)),
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    let mut v = Vec::new();
                    for (on, name) in [
                        (eku.server_auth, "serverAuth"),
                        (eku.client_auth, "clientAuth"),
                        (eku.code_signing, "codeSigning"),
                        (eku.email_protection, "emailProtection"),
                        (eku.time_stamping, "timeStamping"),
                        (eku.ocsp_signing, "OCSPSigning"),
                        (eku.any, "anyExtendedKeyUsage"),
                    ] {
                        if on {
                            v.push(name.to_string());
                        }
                    }
                    v.extend(eku.other.iter().map(|o| o.to_id_string()));
                    info.extended_key_usage = Some(v);
                }
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    info.subject_key_id = Some(hex::encode(id.0))
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    info.authority_key_id = aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => info.subject_alt_names.push(d.to_string()),
                            GeneralName::IPAddress(ip) => {
                                info.subject_alt_names.push(ip_to_string(ip))
                            }
                            GeneralName::RFC822Name(m) => {
                                info.subject_alt_names.push(format!("email:{m}"))
                            }
                            GeneralName::URI(u) => info.subject_alt_names.push(format!("URI:{u}")),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::CRLDistributionPoints(dps) => {
                    info.crl_distribution_points = crl_urls(dps);
                }
                _ => {}
            }
        }
        info
    }

    /// True when KeyUsage is present and contains `keyCertSign`.
    pub fn has_key_cert_sign(&self) -> bool {
        self.key_usage
            .as_ref()
            .is_some_and(|v| v.iter().any(|u| u == "keyCertSign"))
    }

    /// The first value of a subject attribute by short name (`CN`, `O`, `OU`, `C`, ...).
    pub fn subject_attribute(&self, short: &str) -> Option<&str> {
        self.subject_attributes
            .iter()
            .find(|(k, _)| k == short)
            .map(|(_, v)| v.as_str())
    }

    /// A readable multi-line description, in the spirit of `openssl x509 -text`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(t, "Certificate:");
        let _ = writeln!(t, "  Version:             {}", self.version);
        let _ = writeln!(t, "  Serial number:       {}", colon_hex(&self.serial_hex));
        let _ = writeln!(t, "  Signature algorithm: {}", self.signature_algorithm);
        let _ = writeln!(t, "  Issuer:              {}", self.issuer);
        let _ = writeln!(t, "  Validity:");
        let _ = writeln!(t, "    Not before:        {}", self.not_before_rfc3339());
        let _ = writeln!(t, "    Not after:         {}", self.not_after_rfc3339());
        let _ = writeln!(t, "  Subject:             {}", self.subject);
        let _ = writeln!(t, "  Public key:          {}", self.key);
        let mut ext = Vec::new();
        if self.is_ca || self.basic_constraints_critical || self.path_len.is_some() {
            let mut v = format!("CA:{}", if self.is_ca { "TRUE" } else { "FALSE" });
            if let Some(n) = self.path_len {
                v.push_str(&format!(", pathlen:{n}"));
            }
            let name = if self.basic_constraints_critical {
                "Basic constraints (critical)"
            } else {
                "Basic constraints"
            };
            ext.push((name, v));
        }
        if let Some(ku) = &self.key_usage {
            ext.push(("Key usage", ku.join(", ")));
        }
        if let Some(eku) = &self.extended_key_usage {
            ext.push(("Extended key usage", eku.join(", ")));
        }
        if let Some(ski) = &self.subject_key_id {
            ext.push(("Subject key identifier", colon_hex(ski)));
        }
        if let Some(aki) = &self.authority_key_id {
            ext.push(("Authority key identifier", colon_hex(aki)));
        }
        if !self.subject_alt_names.is_empty() {
            ext.push((
                "Subject alternative names",
                self.subject_alt_names.join(", "),
            ));
        }
        if !self.crl_distribution_points.is_empty() {
            ext.push((
                "CRL distribution points",
                self.crl_distribution_points.join(", "),
            ));
        }
        if ext.is_empty() {
            let _ = writeln!(t, "  Extensions:          none");
        } else {
            let _ = writeln!(t, "  Extensions:");
            for (name, value) in ext {
                let _ = writeln!(t, "    {name}: {value}");
            }
        }
        let _ = writeln!(t, "  Fingerprints:");
        let _ = writeln!(t, "    SHA-1:   {}", colon_hex(&self.fingerprint_sha1));
        let _ = writeln!(t, "    SHA-256: {}", colon_hex(&self.fingerprint_sha256));
        t
    }

    /// Validity times formatted as RFC 3339.
    pub fn not_before_rfc3339(&self) -> String {
        rfc3339(self.not_before)
    }

    /// Not-after formatted as RFC 3339.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(ts: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// SHA-1 of `data` (fingerprints, PKCS#12 local key ids).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    sha1::Sha1::digest(data).into()
}

/// Lowercase hex SHA-1 fingerprint of a DER certificate, as the reference platform shows.
pub fn fingerprint_sha1(der: &[u8]) -> String {
    hex::encode(sha1(der))
}

/// The CRL distribution point URLs of a certificate (empty when it has none).
pub(crate) fn crl_urls(dps: &CRLDistributionPoints<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for dp in dps.iter() {
        if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point {
            for n in names {
                if let GeneralName::URI(u) = n {
                    out.push(u.to_string());
                }
            }
        }
    }
    out
}

pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_string))
}

fn attributes(name: &X509Name<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let short = oid_registry()
                .get(oid)
                .map(|e| e.sn().to_string())
                .unwrap_or_else(|| oid.to_id_string());
            let short = match short.as_str() {
                "commonName" => "CN".to_string(),
                "organizationName" => "O".to_string(),
                // oid-registry names 2.5.4.11 "organizationalUnit".
                "organizationalUnit" | "organizationalUnitName" => "OU".to_string(),
                "countryName" => "C".to_string(),
                "localityName" => "L".to_string(),
                "stateOrProvinceName" => "ST".to_string(),
                _ => short,
            };
            if let Ok(v) = attr.as_str() {
                out.push((short, v.to_string()));
            }
        }
    }
    out
}

fn oid_registry() -> &'static x509_parser::oid_registry::OidRegistry<'static> {
    static REG: std::sync::OnceLock<x509_parser::oid_registry::OidRegistry<'static>> =
        std::sync::OnceLock::new();
    REG.get_or_init(|| x509_parser::oid_registry::OidRegistry::default().with_x509())
}

fn key_usage_names(ku: &KeyUsage) -> Vec<String> {
    let mut v = Vec::new();
    for (on, name) in [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ] {
        if on {
            v.push(name.to_string());
        }
    }
    v
}

pub(crate) fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> KeyAlgorithm {
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => KeyAlgorithm::Rsa {
                bits: rsa.key_size(),
            },
            _ => KeyAlgorithm::Rsa { bits: 0 },
        },
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => KeyAlgorithm::EcP256,
                "1.3.132.0.34" => KeyAlgorithm::EcP384,
                _ => KeyAlgorithm::EcOther { curve },
            }
        }
        "1.3.101.112" => KeyAlgorithm::Ed25519,
        _ => KeyAlgorithm::Other { oid: alg },
    }
}

/// A readable name for a signature algorithm OID.
pub fn signature_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    match oid.to_id_string().as_str() {
        "1.2.840.113549.1.1.4" => "MD5withRSA".into(),
        "1.2.840.113549.1.1.5" => "SHA1withRSA".into(),
        "1.2.840.113549.1.1.11" => "SHA256withRSA".into(),
        "1.2.840.113549.1.1.12" => "SHA384withRSA".into(),
        "1.2.840.113549.1.1.13" => "SHA512withRSA".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        "1.2.840.10045.4.1" => "SHA1withECDSA".into(),
        "1.2.840.10045.4.3.2" => "SHA256withECDSA".into(),
        "1.2.840.10045.4.3.3" => "SHA384withECDSA".into(),
        "1.2.840.10045.4.3.4" => "SHA512withECDSA".into(),
        "1.3.101.112" => "Ed25519".into(),
        other => other.to_string(),
    }
}

/// `0a1b2c` -> `0A:1B:2C`, as OpenSSL prints serials and key identifiers.
pub fn colon_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

fn strip_sign(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

/// Normalises a serial number given in hex (any case, optional `:` separators or
/// leading zeros) to the lowercase form [`CertInfo::serial_hex`] uses.
pub fn normalize_serial_hex(s: &str) -> Option<String> {
    let cleaned: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let cleaned = cleaned.strip_prefix("0x").unwrap_or(&cleaned).to_string();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = hex::decode(if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    })
    .ok()?;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes.remove(0);
    }
    Some(hex::encode(bytes))
}

fn ip_to_string(ip: &[u8]) -> String {
    match ip.len() {
        4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(ip);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex::encode(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normalisation() {
        assert_eq!(normalize_serial_hex("0A:1B").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial_hex("00a1b").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial_hex("0x1").as_deref(), Some("01"));
        assert_eq!(normalize_serial_hex("xyz"), None);
        assert_eq!(normalize_serial_hex(""), None);
    }
}
