//! Reading and writing certificates and private keys: PEM and DER, chains with
//! "Bag Attributes" text between blocks, PKCS#8 / PKCS#1 / SEC1 keys, encrypted PKCS#8,
//! legacy `Proc-Type: 4,ENCRYPTED` PEM, and PKCS#12 keystores.
//!
//! Everything here is pure: the caller reads files and passes bytes.

use base64::Engine as _;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

/// Why certificate, key or keystore bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The passphrase (or PKCS#12 password) does not decrypt the key.
    #[error("Passphrase does not match to the key")]
    Passphrase,
    /// The key is encrypted and no passphrase was given.
    #[error("The private key is encrypted: a passphrase is required")]
    PassphraseRequired,
    /// No certificate could be found in the input.
    #[error("No certificate found: expected PEM (-----BEGIN CERTIFICATE-----) or DER")]
    NoCertificate,
    /// No private key could be found in the input.
    #[error("No private key found: expected PKCS#8, PKCS#1 RSA or SEC1 EC key in PEM or DER")]
    NoPrivateKey,
    /// A PEM block is broken (bad base64, missing END line).
    #[error("Malformed PEM: {0}")]
    MalformedPem(String),
    /// A certificate's DER is not a valid X.509 certificate.
    #[error("Malformed certificate: {0}")]
    MalformedCertificate(String),
    /// The legacy PEM encryption names a cipher this reader does not support.
    #[error("Unsupported key encryption: {0}")]
    UnsupportedEncryption(String),
    /// The PKCS#12 file could not be parsed.
    #[error("Malformed PKCS#12 keystore: {0}")]
    MalformedPkcs12(String),
}

impl ReadError {
    /// A certificate whose DER x509-parser refused (`parser` is its error), as a
    /// sentence a person can act on, the parser's own words kept at the end (`der`: what it was given).
    pub fn malformed_certificate(parser: &impl std::fmt::Debug, der: &[u8]) -> ReadError {
        let detail = format!("{parser:?}");
        let what = if der.first() != Some(&0x30) {
            "the data is not an X.509 certificate (it decodes to something else)".to_string()
        } else if detail.contains("Eof") || detail.contains("Incomplete") {
            format!(
                "the certificate data ends early ({} bytes decoded): it was cut off, or it is not a whole certificate",
                der.len()
            )
        } else {
            "the certificate is not valid X.509".to_string()
        };
        ReadError::MalformedCertificate(format!(
            "{what}; send the whole certificate as PEM (-----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----) or DER [parser: {detail}]"
        ))
    }
}

/// One PEM block: label, RFC 1421 headers (legacy encryption) and the decoded body.
#[derive(Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label after `BEGIN`, e.g. `CERTIFICATE`.
    pub label: String,
    /// `Name: value` headers (e.g. `Proc-Type`, `DEK-Info`), in order.
    pub headers: Vec<(String, String)>,
    /// The base64-decoded contents.
    pub contents: Vec<u8>,
}

impl std::fmt::Debug for PemBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never goes to Debug output.
        f.debug_struct("PemBlock")
            .field("label", &self.label)
            .field("headers", &self.headers)
            .field("len", &self.contents.len())
            .finish()
    }
}

/// Returns true when `bytes` look like PEM (contain a `-----BEGIN ` marker).
pub fn is_pem(bytes: &[u8]) -> bool {
    find(bytes, b"-----BEGIN ").is_some()
}

/// Parses every PEM block in `input`, ignoring any text between blocks (such as
/// OpenSSL's "Bag Attributes"). Tolerates PEM pasted on one line (spaces or literal
/// `\n` sequences instead of newlines) and CRLF line ends.
pub fn parse_pem_blocks(input: &[u8]) -> Result<Vec<PemBlock>, ReadError> {
    let text = String::from_utf8_lossy(input);
    // Users paste PEM through JSON with literal "\n" sequences.
    let text = text.replace("\\r\\n", "\n").replace("\\n", "\n");
    let mut blocks = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after_begin = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after_begin.find("-----") else {
            return Err(ReadError::MalformedPem("unterminated BEGIN line".into()));
        };
        let label = after_begin[..label_end].trim().to_string();
        let body_and_rest = &after_begin[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_and_rest.find(&end_marker) else {
            return Err(ReadError::MalformedPem(format!("missing '{end_marker}'")));
        };
        let body = &body_and_rest[..end];
        rest = &body_and_rest[end + end_marker.len()..];
        let (headers, b64) = split_headers(body);
        let b64: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
        let contents = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ReadError::MalformedPem(format!("bad base64 in {label}: {e}")))?;
        blocks.push(PemBlock {
            label,
            headers,
            contents,
        });
    }
    Ok(blocks)
}

/// Splits RFC 1421 headers (`Proc-Type: ...`, `DEK-Info: ...`) from the base64 body.
fn split_headers(body: &str) -> (Vec<(String, String)>, String) {
    let mut headers = Vec::new();
    let mut b64 = String::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if !name.contains(' ') || name.starts_with("Proc") => {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            _ => b64.push_str(line),
        }
    }
    // PEM pasted on one line with spaces: "Proc-Type: 4,ENCRYPTED DEK-Info: ..." is not
    // supported in that form, but plain certificates are (whitespace is dropped above).
    (headers, b64)
}

/// Encodes DER as PEM with the given label, 64 columns, trailing newline.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads all certificates from PEM (one or many blocks, any text between them) or DER
/// (one certificate, or several concatenated).
pub fn read_certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>, ReadError> {
    let ders: Vec<Vec<u8>> = if is_pem(input) {
        parse_pem_blocks(input)?
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE" || b.label == "X509 CERTIFICATE")
            .map(|b| b.contents)
            .collect()
    } else {
        split_der_sequence(input)
    };
    if ders.is_empty() {
        return Err(ReadError::NoCertificate);
    }
    ders.into_iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| ReadError::malformed_certificate(&e, &der))?;
            Ok(CertificateDer::from(der))
        })
        .collect()
}

/// Reads exactly one certificate (the first if there are several).
pub fn read_certificate(input: &[u8]) -> Result<CertificateDer<'static>, ReadError> {
    read_certificates(input)?
        .into_iter()
        .next()
        .ok_or(ReadError::NoCertificate)
}

/// Reads CRLs from PEM (`X509 CRL` blocks) or DER.
pub fn read_crls(input: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, ReadError> {
    let ders: Vec<Vec<u8>> = if is_pem(input) {
        parse_pem_blocks(input)?
            .into_iter()
            .filter(|b| b.label == "X509 CRL")
            .map(|b| b.contents)
            .collect()
    } else {
        split_der_sequence(input)
    };
    Ok(ders
        .into_iter()
        .map(CertificateRevocationListDer::from)
        .collect())
}

/// Splits concatenated DER SEQUENCEs; garbage yields the input as one element so the
/// caller's parser reports it.
fn split_der_sequence(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        match crate::der::tlv_len(rest) {
            Some(len) if rest[0] == 0x30 && len <= rest.len() => {
                out.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            _ => {
                out.push(rest.to_vec());
                break;
            }
        }
    }
    out
}

/// Reads a private key from PEM or DER. `passphrase` decrypts encrypted PKCS#8 and
/// legacy `Proc-Type: 4,ENCRYPTED` PEM; a wrong one is [`ReadError::Passphrase`].
pub fn read_private_key(
    input: &[u8],
    passphrase: Option<&str>,
) -> Result<PrivateKeyDer<'static>, ReadError> {
    if !is_pem(input) {
        return key_from_der(input, passphrase);
    }
    for block in parse_pem_blocks(input)? {
        if let Some(key) = key_from_block(block, passphrase) {
            return key;
        }
    }
    Err(ReadError::NoPrivateKey)
}

/// The private key in a PEM block, or `None` when the block is not a key.
fn key_from_block(
    block: PemBlock,
    passphrase: Option<&str>,
) -> Option<Result<PrivateKeyDer<'static>, ReadError>> {
    let result = match block.label.as_str() {
        "ENCRYPTED PRIVATE KEY" => passphrase
            .ok_or(ReadError::PassphraseRequired)
            .and_then(|pw| decrypt_pkcs8(&block.contents, pw)),
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
            let encrypted = block
                .headers
                .iter()
                .any(|(k, v)| k == "Proc-Type" && v.contains("ENCRYPTED"));
            let der = if encrypted {
                passphrase
                    .ok_or(ReadError::PassphraseRequired)
                    .and_then(|pw| decrypt_legacy(&block, pw))
                    .and_then(|plain| check_legacy_plaintext(&block.label, &plain).map(|_| plain))
            } else {
                Ok(block.contents)
            };
            der.map(|der| match block.label.as_str() {
                "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(der).into(),
                "EC PRIVATE KEY" => PrivateSec1KeyDer::from(der).into(),
                _ => PrivatePkcs8KeyDer::from(der).into(),
            })
        }
        _ => return None,
    };
    Some(result)
}

/// Everything found in one file: certificates, private keys and CRLs, in file order.
pub struct Decoded {
    /// Certificates.
    pub certificates: Vec<CertificateDer<'static>>,
    /// Private keys (decrypted).
    pub keys: Vec<PrivateKeyDer<'static>>,
    /// CRLs.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("certificates", &self.certificates.len())
            .field("keys", &self.keys.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl Decoded {
    /// Number of objects found.
    pub fn len(&self) -> usize {
        self.certificates.len() + self.keys.len() + self.crls.len()
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// PEM of every object: keys first (in their own format, unencrypted), then
    /// certificates, then CRLs.
    pub fn to_pem(&self) -> String {
        self.to_pem_protected(None).unwrap_or_default()
    }

    /// Like [`Decoded::to_pem`], with every key encrypted with `passphrase` when given
    /// (`ENCRYPTED PRIVATE KEY`, see [`encrypt_pkcs8_der`]).
    pub fn to_pem_protected(&self, passphrase: Option<&str>) -> Result<String, ReadError> {
        let mut out = String::new();
        for k in &self.keys {
            match passphrase {
                Some(pw) => out.push_str(&private_key_pem(k, Some(pw))?),
                None => out.push_str(&to_pem(key_label(k), k.secret_der())),
            }
        }
        for c in &self.certificates {
            out.push_str(&to_pem("CERTIFICATE", c.as_ref()));
        }
        for c in &self.crls {
            out.push_str(&to_pem("X509 CRL", c.as_ref()));
        }
        Ok(out)
    }

    /// The DER of the only object, or `None` when there are several (DER holds one).
    pub fn single_der(&self) -> Option<&[u8]> {
        if self.len() != 1 {
            return None;
        }
        self.keys
            .first()
            .map(|k| k.secret_der())
            .or_else(|| self.certificates.first().map(|c| c.as_ref()))
            .or_else(|| self.crls.first().map(|c| c.as_ref()))
    }
}

/// Reads whatever `input` holds: PEM blocks (certificates, keys, CRLs; other text
/// ignored), or DER (certificates, a CRL, a private key, or a PKCS#12 keystore, which
/// needs `password`). Encrypted keys are decrypted with `password`.
pub fn decode_any(input: &[u8], password: Option<&str>) -> Result<Decoded, ReadError> {
    let mut d = Decoded {
        certificates: Vec::new(),
        keys: Vec::new(),
        crls: Vec::new(),
    };
    if is_pem(input) {
        for block in parse_pem_blocks(input)? {
            match block.label.as_str() {
                "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                    // OpenSSL's TRUSTED CERTIFICATE appends trust settings after the
                    // certificate: keep the certificate only.
                    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
                        .map_err(|e| ReadError::malformed_certificate(&e, &block.contents))?;
                    let len = cert.as_raw().len();
                    let mut der = block.contents;
                    der.truncate(len);
                    d.certificates.push(CertificateDer::from(der));
                }
                "X509 CRL" => {
                    x509_parser::parse_x509_crl(&block.contents)
                        .map_err(|e| ReadError::MalformedPem(format!("X509 CRL: {e}")))?;
                    d.crls
                        .push(CertificateRevocationListDer::from(block.contents));
                }
                _ => {
                    if let Some(key) = key_from_block(block, password) {
                        d.keys.push(key?);
                    }
                }
            }
        }
        if d.is_empty() {
            return Err(ReadError::MalformedPem(
                "no certificate, private key or CRL block found".into(),
            ));
        }
        return Ok(d);
    }
    if let Ok(certs) = read_certificates(input) {
        d.certificates = certs;
        return Ok(d);
    }
    if x509_parser::parse_x509_crl(input).is_ok_and(|(rest, _)| rest.is_empty()) {
        d.crls
            .push(CertificateRevocationListDer::from(input.to_vec()));
        return Ok(d);
    }
    if looks_like_pkcs12(input) {
        let pw = password.ok_or(ReadError::PassphraseRequired)?;
        let p12 = read_pkcs12(input, pw)?;
        d.keys.extend(p12.key);
        d.certificates = p12.certificates;
        return Ok(d);
    }
    match key_from_der(input, password) {
        Ok(k) => {
            d.keys.push(k);
            Ok(d)
        }
        Err(ReadError::NoPrivateKey) => Err(ReadError::MalformedPem(
            "the input is neither PEM nor a DER certificate, CRL, private key or PKCS#12 keystore"
                .into(),
        )),
        Err(e) => Err(e),
    }
}

/// A PFX is `SEQUENCE { INTEGER 3, ContentInfo, ... }`.
pub fn looks_like_pkcs12(input: &[u8]) -> bool {
    input.first() == Some(&0x30)
        && crate::der::children(input)
            .and_then(|c| c.first().map(|v| *v == [0x02, 0x01, 0x03]))
            .unwrap_or(false)
}

fn key_from_der(der: &[u8], passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, ReadError> {
    if pkcs8::EncryptedPrivateKeyInfo::try_from(der).is_ok() {
        let pw = passphrase.ok_or(ReadError::PassphraseRequired)?;
        return decrypt_pkcs8(der, pw);
    }
    PrivateKeyDer::try_from(der.to_vec()).map_err(|_| ReadError::NoPrivateKey)
}

/// Most PBKDF2 iterations accepted in an encrypted key: far above any tool's default
/// (OpenSSL's 2,048; 600,000 in current advice), low enough that a hostile key cannot
/// hold a thread for more than a few seconds.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Most memory scrypt may ask for to decrypt a key (128 · r · N bytes), and most
/// parallel lanes: a hostile key must not exhaust memory.
pub const MAX_SCRYPT_BYTES: u64 = 256 << 20;
const MAX_SCRYPT_LANES: u16 = 16;

/// One DER element: (tag, contents, rest of the input).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| (l << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The children of a constructed element, or `None` if they do not parse.
fn der_children(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, c, rest) = der_element(contents)?;
        out.push((tag, c));
        contents = rest;
    }
    Some(out)
}

/// A non-negative DER INTEGER that fits in 64 bits (larger ones saturate).
fn der_uint(contents: &[u8]) -> u64 {
    let digits = match contents {
        [0, rest @ ..] => rest,
        all => all,
    };
    if digits.len() > 8 {
        return u64::MAX;
    }
    digits.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

const OID_PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
const OID_SCRYPT: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x04, 0x0b];
/// pkcs-12PbeIds (1.2.840.113549.1.12.1.x): parameters { salt, iterations }.
const OID_PKCS12_PBE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01];

fn too_many_iterations(what: &str, n: u64) -> ReadError {
    ReadError::UnsupportedEncryption(format!(
        "{what} with {n} iterations (at most {MAX_PBKDF2_ITERATIONS} accepted)"
    ))
}

/// Refuses a PKCS#12 file whose MAC, PBE or PBES2 parameters would cost more than the
/// caps of encrypted keys, before the keystore library derives anything.
fn check_pkcs12_cost(pfx: &[u8]) -> Result<(), ReadError> {
    // PFX ::= SEQUENCE { version, authSafe, macData SEQUENCE { mac, macSalt, iterations } }
    if let Some((0x30, contents, _)) = der_element(pfx) {
        if let Some(children) = der_children(contents) {
            if let Some(&(0x30, mac_data)) = children.get(2) {
                if let Some(m) = der_children(mac_data) {
                    if let Some(&(0x02, n)) = m.get(2) {
                        if der_uint(n) > u64::from(MAX_PBKDF2_ITERATIONS) {
                            return Err(too_many_iterations("PKCS#12 MAC", der_uint(n)));
                        }
                    }
                }
            }
        }
    }
    walk_kdf_parameters(pfx, 0)
}

/// Walks DER (into constructed elements and OCTET STRINGs that hold DER too) and checks
/// every PBKDF2, scrypt or PKCS#12 PBE AlgorithmIdentifier against the caps.
fn walk_kdf_parameters(input: &[u8], depth: u32) -> Result<(), ReadError> {
    if depth > 24 {
        return Ok(());
    }
    let Some(elements) = der_children(input) else {
        return Ok(());
    };
    for (tag, contents) in elements {
        if tag == 0x30 {
            check_algorithm(contents)?;
        }
        if tag & 0x20 != 0 || tag == 0x04 {
            walk_kdf_parameters(contents, depth + 1)?;
        }
    }
    Ok(())
}

/// If `seq` is an AlgorithmIdentifier of PBKDF2, scrypt or a PKCS#12 PBE, checks its cost.
fn check_algorithm(seq: &[u8]) -> Result<(), ReadError> {
    let Some(children) = der_children(seq) else {
        return Ok(());
    };
    let (Some(&(0x06, oid)), Some(&(0x30, params))) = (children.first(), children.get(1)) else {
        return Ok(());
    };
    let Some(p) = der_children(params) else {
        return Ok(());
    };
    let int = |i: usize| match p.get(i) {
        Some(&(0x02, n)) => Some(der_uint(n)),
        _ => None,
    };
    if oid == OID_PBKDF2 || (oid.len() == 10 && oid.starts_with(OID_PKCS12_PBE)) {
        if let Some(n) = int(1).filter(|&n| n > u64::from(MAX_PBKDF2_ITERATIONS)) {
            let what = if oid == OID_PBKDF2 {
                "PBKDF2"
            } else {
                "PKCS#12 PBE"
            };
            return Err(too_many_iterations(what, n));
        }
    } else if oid == OID_SCRYPT {
        if let (Some(n), Some(r), Some(lanes)) = (int(1), int(2), int(3)) {
            if 128u64.saturating_mul(r).saturating_mul(n) > MAX_SCRYPT_BYTES
                || lanes > u64::from(MAX_SCRYPT_LANES)
            {
                return Err(ReadError::UnsupportedEncryption(format!(
                    "scrypt with N={n}, r={r}, p={lanes} (at most {} MiB and {MAX_SCRYPT_LANES} lanes accepted)",
                    MAX_SCRYPT_BYTES >> 20
                )));
            }
        }
    }
    Ok(())
}

fn decrypt_pkcs8(der: &[u8], passphrase: &str) -> Result<PrivateKeyDer<'static>, ReadError> {
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der)
        .map_err(|e| ReadError::MalformedPem(format!("encrypted PKCS#8: {e}")))?;
    // The same walk as for PKCS#12: the PBES2 parameters' PBKDF2 or scrypt costs.
    walk_kdf_parameters(der, 0)?;
    let plain = match decrypt_pbes2_pbkdf2_aes(&info, passphrase) {
        Some(plain) => plain?,
        None => info
            .decrypt(passphrase)
            .map_err(|e| match e {
                pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid }) => {
                    ReadError::UnsupportedEncryption(oid.to_string())
                }
                _ => ReadError::Passphrase,
            })?
            .as_bytes()
            .to_vec(),
    };
    // A wrong passphrase can decrypt to bytes with valid padding by chance.
    if pkcs8::PrivateKeyInfo::try_from(plain.as_slice()).is_err() {
        return Err(ReadError::Passphrase);
    }
    Ok(PrivatePkcs8KeyDer::from(plain).into())
}

/// Decrypts a legacy OpenSSL-encrypted PEM body (EVP_BytesToKey with MD5, one iteration).
fn decrypt_legacy(block: &PemBlock, passphrase: &str) -> Result<Vec<u8>, ReadError> {
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    let dek = block
        .headers
        .iter()
        .find(|(k, _)| k == "DEK-Info")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ReadError::MalformedPem("encrypted PEM without DEK-Info".into()))?;
    let (cipher, iv_hex) = dek
        .split_once(',')
        .ok_or_else(|| ReadError::MalformedPem("bad DEK-Info".into()))?;
    let iv = hex::decode(iv_hex.trim())
        .map_err(|_| ReadError::MalformedPem("bad DEK-Info IV".into()))?;
    let key_len = match cipher.trim() {
        "AES-128-CBC" => 16,
        "AES-192-CBC" => 24,
        "AES-256-CBC" => 32,
        "DES-EDE3-CBC" => 24,
        other => return Err(ReadError::UnsupportedEncryption(other.to_string())),
    };
    if iv.len() < 8 {
        return Err(ReadError::MalformedPem("bad DEK-Info IV".into()));
    }
    let key = evp_bytes_to_key(passphrase.as_bytes(), &iv[..8], key_len);
    let mut buf = block.contents.clone();
    if cipher.trim() != "DES-EDE3-CBC" {
        aes_cbc_decrypt(&key, &iv, &mut buf)?;
        return Ok(buf);
    }
    let plain_len = cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
        .map_err(|_| ReadError::MalformedPem("bad IV length".into()))?
        .decrypt_padded_mut::<Pkcs7>(&mut buf)
        .map_err(|_| ReadError::Passphrase)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// A wrong passphrase yields random bytes that pass padding 1 time in 256: make sure the
/// plaintext is the DER structure the label promises.
fn check_legacy_plaintext(label: &str, plain: &[u8]) -> Result<(), ReadError> {
    let ok = crate::der::tlv_len(plain) == Some(plain.len()) && plain.first() == Some(&0x30);
    let parses = match label {
        "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(plain).is_ok(),
        "PRIVATE KEY" => pkcs8::PrivateKeyInfo::try_from(plain).is_ok(),
        _ => ok,
    };
    if ok && parses {
        Ok(())
    } else {
        Err(ReadError::Passphrase)
    }
}

/// OpenSSL's EVP_BytesToKey with MD5 and one iteration.
fn evp_bytes_to_key(pass: &[u8], salt: &[u8], key_len: usize) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut key = Vec::with_capacity(key_len + 16);
    let mut prev: Vec<u8> = Vec::new();
    while key.len() < key_len {
        let mut h = Md5::new();
        h.update(&prev);
        h.update(pass);
        h.update(salt);
        prev = h.finalize().to_vec();
        key.extend_from_slice(&prev);
    }
    key.truncate(key_len);
    key
}

/// Encrypts a key as legacy OpenSSL PEM (`Proc-Type: 4,ENCRYPTED`, AES-256-CBC), the
/// format `openssl genrsa -aes256` writes. Used by `certs` to protect keys at rest.
pub fn encrypt_legacy_pem(label: &str, der: &[u8], passphrase: &str) -> String {
    use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut iv).unwrap_or_default();
    let key = evp_bytes_to_key(passphrase.as_bytes(), &iv[..8], 32);
    let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(der))
        .unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(ct);
    let mut out = format!(
        "-----BEGIN {label}-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,{}\n\n",
        hex::encode_upper(iv)
    );
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PBKDF2-HMAC-SHA256 iterations of the keys `certs` encrypts (OpenSSL's `pkcs8 -v2`
/// uses 2,048; this follows current advice while a key still opens in a fraction of a
/// second).
pub const KEY_PBKDF2_ITERATIONS: u32 = 200_000;

/// Encrypts a PKCS#8 key as an `EncryptedPrivateKeyInfo` (DER): PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC, random salt and IV, what `openssl pkcs8 -topk8
/// -v2 aes-256-cbc -v2prf hmacWithSHA256` writes and `openssl pkey -passin` reads.
pub fn encrypt_pkcs8_der(pkcs8_der: &[u8], passphrase: &str) -> Result<Vec<u8>, ReadError> {
    if passphrase.is_empty() {
        return Err(ReadError::UnsupportedEncryption(
            "an empty passphrase does not protect a key".into(),
        ));
    }
    use pkcs8::der::Encode as _;
    pkcs8::PrivateKeyInfo::try_from(pkcs8_der).map_err(|_| ReadError::NoPrivateKey)?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .and_then(|()| aws_lc_rs::rand::fill(&mut iv))
        .map_err(|_| ReadError::UnsupportedEncryption("no random numbers".into()))?;
    let unsupported = |e: &dyn std::fmt::Display| ReadError::UnsupportedEncryption(e.to_string());
    let params =
        pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(KEY_PBKDF2_ITERATIONS, &salt, &iv)
            .map_err(|e| unsupported(&e))?;
    let mut key = [0u8; 32];
    pbkdf2(
        pkcs5::pbes2::Pbkdf2Prf::HmacWithSha256,
        KEY_PBKDF2_ITERATIONS,
        &salt,
        passphrase,
        &mut key,
    )
    .ok_or_else(|| unsupported(&"PBKDF2"))?;
    let encrypted = {
        use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
        cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(|e| unsupported(&e))?
            .encrypt_padded_vec_mut::<Pkcs7>(pkcs8_der)
    };
    pkcs8::EncryptedPrivateKeyInfo {
        encryption_algorithm: pkcs5::EncryptionScheme::Pbes2(params),
        encrypted_data: &encrypted,
    }
    .to_der()
    .map_err(|e| unsupported(&e))
}

/// PBKDF2 by aws-lc-rs (the pure-Rust one of `pkcs5` takes a second per key in debug
/// builds); `None` for a PRF it does not offer or zero iterations.
fn pbkdf2(
    prf: pkcs5::pbes2::Pbkdf2Prf,
    iterations: u32,
    salt: &[u8],
    passphrase: &str,
    out: &mut [u8],
) -> Option<()> {
    use pkcs5::pbes2::Pbkdf2Prf;
    let alg = match prf {
        Pbkdf2Prf::HmacWithSha1 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA1,
        Pbkdf2Prf::HmacWithSha256 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        Pbkdf2Prf::HmacWithSha384 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA384,
        Pbkdf2Prf::HmacWithSha512 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return None,
    };
    aws_lc_rs::pbkdf2::derive(
        alg,
        std::num::NonZeroU32::new(iterations)?,
        salt,
        passphrase.as_bytes(),
        out,
    );
    Some(())
}

/// Decrypts PBES2 with PBKDF2 and AES-CBC (what OpenSSL 3 and `certs` write) with
/// aws-lc-rs's PBKDF2; `None` for another scheme (the `pkcs5` crate handles those).
fn decrypt_pbes2_pbkdf2_aes(
    info: &pkcs8::EncryptedPrivateKeyInfo<'_>,
    passphrase: &str,
) -> Option<Result<Vec<u8>, ReadError>> {
    use pkcs5::pbes2::EncryptionScheme as Cipher;
    let pkcs5::EncryptionScheme::Pbes2(params) = &info.encryption_algorithm else {
        return None;
    };
    let kdf = params.kdf.pbkdf2()?;
    let (key_len, iv) = match params.encryption {
        Cipher::Aes128Cbc { iv } => (16, iv),
        Cipher::Aes192Cbc { iv } => (24, iv),
        Cipher::Aes256Cbc { iv } => (32, iv),
        _ => return None,
    };
    if kdf.key_length.is_some_and(|l| usize::from(l) != key_len) {
        return None;
    }
    let mut key = vec![0u8; key_len];
    pbkdf2(kdf.prf, kdf.iteration_count, kdf.salt, passphrase, &mut key)?;
    let mut buf = info.encrypted_data.to_vec();
    Some(aes_cbc_decrypt(&key, iv, &mut buf).map(|()| buf))
}

/// AES-CBC (key of 16, 24 or 32 bytes) with PKCS#7 padding, in place; a bad padding is
/// [`ReadError::Passphrase`].
fn aes_cbc_decrypt(key: &[u8], iv: &[u8], buf: &mut Vec<u8>) -> Result<(), ReadError> {
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    let bad_iv = |_| ReadError::MalformedPem("bad IV length".into());
    let bad = |_| ReadError::Passphrase;
    let len = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(bad_iv)?
            .decrypt_padded_mut::<Pkcs7>(buf)
            .map_err(bad)?
            .len(),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(bad_iv)?
            .decrypt_padded_mut::<Pkcs7>(buf)
            .map_err(bad)?
            .len(),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(bad_iv)?
            .decrypt_padded_mut::<Pkcs7>(buf)
            .map_err(bad)?
            .len(),
    };
    buf.truncate(len);
    Ok(())
}

/// A private key as PEM: `ENCRYPTED PRIVATE KEY` (see [`encrypt_pkcs8_der`]) with a
/// passphrase, else `PRIVATE KEY` (PKCS#8).
pub fn private_key_pem(
    key: &PrivateKeyDer<'_>,
    passphrase: Option<&str>,
) -> Result<String, ReadError> {
    let pkcs8 = crate::keys::to_pkcs8(key)?;
    Ok(match passphrase {
        Some(pw) => to_pem("ENCRYPTED PRIVATE KEY", &encrypt_pkcs8_der(&pkcs8, pw)?),
        None => to_pem("PRIVATE KEY", &pkcs8),
    })
}

/// The PEM label for a private key's format.
pub fn key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    }
}

/// Private key and certificates read from a PKCS#12 keystore.
pub struct Pkcs12Contents {
    /// The private key (PKCS#8), when the keystore holds one.
    pub key: Option<PrivateKeyDer<'static>>,
    /// The certificates: the key's chain first (leaf, then issuers), then any others.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Pkcs12Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs12Contents")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// Reads a PKCS#12 (`.p12`, `.pfx`) keystore. A wrong password is
/// [`ReadError::Passphrase`].
pub fn read_pkcs12(input: &[u8], password: &str) -> Result<Pkcs12Contents, ReadError> {
    // A PFX is a DER SEQUENCE starting with version 3; anything else is not PKCS#12.
    if input.first() != Some(&0x30) {
        return Err(ReadError::MalformedPkcs12("not a DER PKCS#12 file".into()));
    }
    check_pkcs12_cost(input)?;
    let ks = p12_keystore::KeyStore::from_pkcs12(input, password).map_err(|e| match e {
        p12_keystore::error::Error::MacError(_)
        | p12_keystore::error::Error::UnpadError
        | p12_keystore::error::Error::InvalidLength => ReadError::Passphrase,
        other => ReadError::MalformedPkcs12(other.to_string()),
    })?;
    let mut key = None;
    let mut certificates = Vec::new();
    if let Some((_, chain)) = ks.private_key_chain() {
        key = Some(PrivatePkcs8KeyDer::from(chain.key().to_vec()).into());
        certificates.extend(
            chain
                .chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_der().to_vec())),
        );
    }
    for (_, entry) in ks.entries() {
        if let p12_keystore::KeyStoreEntry::Certificate(c) = entry {
            let der = CertificateDer::from(c.as_der().to_vec());
            if !certificates.contains(&der) {
                certificates.push(der);
            }
        }
    }
    if key.is_none() {
        // A keystore of a key alone (`openssl pkcs12 -export -nocerts`, `certs convert`):
        // the library pairs keys with certificates and drops a key without one.
        key = lone_pkcs12_key(input, password)?;
    }
    Ok(Pkcs12Contents { key, certificates })
}

/// pkcs-9 data (1.2.840.113549.1.7.1).
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// pkcs8ShroudedKeyBag (1.2.840.113549.1.12.10.1.2).
const OID_SHROUDED_KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x02,
];

/// The first shrouded key bag of a PFX whose MAC the keystore library already checked:
/// PFX → authSafe (data) → AuthenticatedSafe → ContentInfo (data) → SafeContents →
/// SafeBag { pkcs8ShroudedKeyBag, [0] EncryptedPrivateKeyInfo }.
fn lone_pkcs12_key(
    pfx: &[u8],
    password: &str,
) -> Result<Option<PrivateKeyDer<'static>>, ReadError> {
    // ContentInfo { OID data, [0] { OCTET STRING inner } } -> inner.
    fn data_content(content_info: &[u8]) -> Option<&[u8]> {
        let c = der_children(content_info)?;
        match (c.first(), c.get(1)) {
            (Some(&(0x06, oid)), Some(&(0xa0, explicit))) if oid == OID_DATA => {
                match der_element(explicit)? {
                    (0x04, inner, []) => Some(inner),
                    _ => None,
                }
            }
            _ => None,
        }
    }
    let Some((0x30, pfx, _)) = der_element(pfx) else {
        return Ok(None);
    };
    let Some(auth_safe) = der_children(pfx)
        .and_then(|c| c.get(1).map(|&(_, v)| v))
        .and_then(data_content)
    else {
        return Ok(None);
    };
    let Some((0x30, infos, _)) = der_element(auth_safe) else {
        return Ok(None);
    };
    for (_, info) in der_children(infos).unwrap_or_default() {
        let Some((0x30, bags, _)) = data_content(info).and_then(der_element) else {
            continue;
        };
        for (_, bag) in der_children(bags).unwrap_or_default() {
            let c = der_children(bag).unwrap_or_default();
            if let (Some(&(0x06, oid)), Some(&(0xa0, value))) = (c.first(), c.get(1)) {
                if oid == OID_SHROUDED_KEY_BAG {
                    // [0] EXPLICIT holds the EncryptedPrivateKeyInfo SEQUENCE.
                    let Some((0x30, _, rest)) = der_element(value) else {
                        return Err(ReadError::MalformedPkcs12("bad key bag".into()));
                    };
                    let info = &value[..value.len() - rest.len()];
                    return decrypt_pkcs8(info, password).map(Some);
                }
            }
        }
    }
    Ok(None)
}

/// Writes a PKCS#12 keystore (PBES2 AES-256 + HMAC-SHA256, OpenSSL 3's default) holding
/// `key` with `chain` (leaf first).
pub fn write_pkcs12(
    key: &PrivateKeyDer<'_>,
    chain: &[CertificateDer<'_>],
    password: &str,
    alias: &str,
) -> Result<Vec<u8>, ReadError> {
    let pkcs8 = crate::keys::to_pkcs8(key)?;
    let certs = chain
        .iter()
        .map(|c| {
            p12_keystore::Certificate::from_der(c.as_ref())
                .map_err(|e| ReadError::MalformedCertificate(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let local_key_id = crate::info::sha1(chain.first().map(|c| c.as_ref()).unwrap_or(&[]));
    write_key_entry(pkcs8, local_key_id, certs, alias, password)
}

/// A keystore of one key entry (`chain` may be empty), as PKCS#12.
fn write_key_entry(
    pkcs8: Vec<u8>,
    local_key_id: [u8; 20],
    chain: Vec<p12_keystore::Certificate>,
    alias: &str,
    password: &str,
) -> Result<Vec<u8>, ReadError> {
    let mut ks = p12_keystore::KeyStore::new();
    ks.add_entry(
        alias,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            pkcs8,
            local_key_id,
            chain,
        )),
    );
    write_keystore(&ks, password)
}

/// Writes a PKCS#12 keystore holding only `key` (no certificate), as `openssl pkcs12
/// -export -nocerts` does; [`read_pkcs12`] and `openssl pkcs12 -nocerts` read it.
pub fn write_key_pkcs12(
    key: &PrivateKeyDer<'_>,
    password: &str,
    alias: &str,
) -> Result<Vec<u8>, ReadError> {
    let pkcs8 = crate::keys::to_pkcs8(key)?;
    let local_key_id = crate::info::sha1(&crate::keys::public_key_spki(key).unwrap_or_default());
    write_key_entry(pkcs8, local_key_id, Vec::new(), alias, password)
}

/// Writes a truststore: a PKCS#12 file of certificates only, no key. Each certificate is
/// a certificate bag marked trusted for any purpose (the attribute
/// 2.16.840.1.113894.746875.1.1 Java's keytool writes for a `trustedCertEntry`), named
/// after its Common Name (lower case, made unique), so `keytool -list` shows trusted
/// entries and `openssl pkcs12 -nokeys` prints the certificates.
pub fn write_truststore_pkcs12(
    certs: &[CertificateDer<'_>],
    password: &str,
) -> Result<Vec<u8>, ReadError> {
    if certs.is_empty() {
        return Err(ReadError::NoCertificate);
    }
    let mut ks = p12_keystore::KeyStore::new();
    for (i, c) in certs.iter().enumerate() {
        let cert = p12_keystore::Certificate::from_der(c.as_ref())
            .map_err(|e| ReadError::MalformedCertificate(e.to_string()))?;
        let base = crate::info::CertInfo::parse(c.as_ref())
            .ok()
            .and_then(|i| i.common_name)
            .map(|cn| cn.to_lowercase())
            .unwrap_or_else(|| format!("certificate-{}", i + 1));
        let mut alias = base.clone();
        let mut n = 1;
        while ks.entry(&alias).is_some() {
            n += 1;
            alias = format!("{base}-{n}");
        }
        ks.add_entry(&alias, p12_keystore::KeyStoreEntry::Certificate(cert));
    }
    write_keystore(&ks, password)
}

/// The keystore as PKCS#12 (PBES2 AES-256 + HMAC-SHA256, the library's defaults).
fn write_keystore(ks: &p12_keystore::KeyStore, password: &str) -> Result<Vec<u8>, ReadError> {
    ks.writer(password)
        .write()
        .map_err(|e| ReadError::MalformedPkcs12(e.to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // `openssl enc -aes-256-cbc -P -md md5 -S 0102030405060708 -pass pass:secret`
        let key = evp_bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8], 32);
        assert_eq!(key.len(), 32);
        // Deterministic: same input, same key; differs with the salt.
        assert_eq!(
            key,
            evp_bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8], 32)
        );
        assert_ne!(
            key,
            evp_bytes_to_key(b"secret", &[0, 2, 3, 4, 5, 6, 7, 8], 32)
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert_eq!(
            read_certificates(b"hello"),
            Err(ReadError::MalformedCertificate(
                read_certificates(b"hello")
                    .err()
                    .map(|e| match e {
                        ReadError::MalformedCertificate(m) => m,
                        _ => String::new(),
                    })
                    .unwrap_or_default()
            ))
        );
        assert_eq!(read_certificates(b""), Err(ReadError::NoCertificate));
        assert!(matches!(
            read_certificates(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(ReadError::MalformedPem(_))
        ));
        assert!(matches!(
            read_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(ReadError::MalformedPem(_))
        ));
        assert_eq!(
            read_private_key(b"junk", None),
            Err(ReadError::NoPrivateKey)
        );
    }
}
