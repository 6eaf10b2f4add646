//! A certificate authority kept in a directory, as the reference procedures keep one with
//! `openssl`: `ca.crt`, `ca.key` (mode 0600), `ca-chain.pem` (this CA followed by its
//! parents up to the root) and `revoked.json` (the serials `certs revoke` recorded, from
//! which `certs crl` signs a CRL). The `certs` command is a thin layer over this module.
//!
//! This is the only module that writes files, and only in the directories its caller
//! names.

use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::info::CertInfo;
use crate::issue::{
    self, CaOptions, IssueError, Issued, KeyType, Profile, Revocation, Subject, Validity,
};
use crate::pem::ReadError;

/// The CA certificate file in a CA directory.
pub const CERT_FILE: &str = "ca.crt";
/// The CA private key file (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "ca.key";
/// This CA's certificate followed by its parents up to the root.
pub const CHAIN_FILE: &str = "ca-chain.pem";
/// The revocations recorded by [`CaDir::revoke`].
pub const REVOKED_FILE: &str = "revoked.json";
/// Every certificate this CA issued ([`CaDir::record_issued`]), as `index.txt` is to
/// `openssl ca`.
pub const ISSUED_FILE: &str = "issued.json";

/// Why a CA directory operation failed. Each message is one line for a person.
#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
    /// A file's contents could not be read as a certificate or key.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        source: ReadError,
    },
    /// A file that would be overwritten exists.
    #[error("{0} already exists (pass --force to overwrite)")]
    Exists(PathBuf),
    /// Generating a certificate or CRL failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// `ca.crt` is not a CA certificate.
    #[error("{0} is not a CA certificate (BasicConstraints CA:true is missing)")]
    NotCa(PathBuf),
    /// `ca.key` is not the key of `ca.crt`.
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate to revoke was not issued by this CA.
    #[error("the certificate (issuer {issuer}) was not issued by this CA ({ca})")]
    NotIssuedHere {
        /// The certificate's issuer DN.
        issuer: String,
        /// This CA's subject DN.
        ca: String,
    },
    /// A signing request cannot be signed.
    #[error(transparent)]
    Csr(#[from] crate::csr::CsrError),
    /// `revoked.json` or `issued.json` is not what this module writes.
    #[error("{path}: not a list written by certs: {message}")]
    BadRevokedList {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// One revocation recorded in `revoked.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedRecord {
    /// Serial number, lowercase hex (as [`CertInfo::serial_hex`]).
    pub serial: String,
    /// The revoked certificate's subject, for people reading the file.
    pub subject: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// The contents of `revoked.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedList {
    /// The number of the last CRL signed (CRL numbers must increase).
    pub crl_number: u64,
    /// The revoked certificates.
    pub revoked: Vec<RevokedRecord>,
}

/// One certificate recorded in `issued.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The subject.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
    /// `device`, `server` or `intermediate`.
    pub profile: String,
    /// Whether it was issued for a signing request (the key was never here).
    pub from_csr: bool,
}

/// The contents of `issued.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedList {
    /// The issued certificates, oldest first.
    pub issued: Vec<IssuedRecord>,
}

/// What [`CaDir::revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The serial was added.
    Revoked(RevokedRecord),
    /// The serial was already listed.
    AlreadyRevoked(RevokedRecord),
}

/// The files [`CaDir::write_issued`] wrote.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    /// `NAME.crt`.
    pub cert: PathBuf,
    /// `NAME.key` (mode 0600).
    pub key: PathBuf,
    /// `NAME-chain.pem`: the certificate followed by its issuers up to the root.
    pub chain: PathBuf,
}

/// A CA loaded from (or created in) a directory.
pub struct CaDir {
    dir: PathBuf,
    ca: Issued,
    /// This CA's certificate first, then its parents up to the root.
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CaDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaDir")
            .field("dir", &self.dir)
            .field("ca", &self.ca)
            .field("chain", &self.chain.len())
            .finish()
    }
}

impl CaDir {
    /// Creates a CA in `dir` (created if missing): self-signed, or an intermediate signed
    /// by `parent` (and recorded in its `issued.json`). Refuses to overwrite an existing
    /// `ca.crt`/`ca.key` unless `overwrite`. With `key_passphrase`, `ca.key` is written
    /// encrypted ([`crate::pem::encrypt_pkcs8_der`]).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        dir: &Path,
        subject: &Subject,
        validity: Validity,
        key_type: KeyType,
        opts: &CaOptions,
        parent: Option<&CaDir>,
        overwrite: bool,
        key_passphrase: Option<&str>,
    ) -> Result<CaDir, CaDirError> {
        let files = [CERT_FILE, KEY_FILE, CHAIN_FILE].map(|f| dir.join(f));
        if !overwrite {
            if let Some(p) = files[..2].iter().find(|p| p.exists()) {
                return Err(CaDirError::Exists(p.clone()));
            }
        }
        let issuer = parent.map(|p| p.ca.issuer()).transpose()?;
        let ca = issue::ca(subject, validity, key_type, opts, issuer.as_ref())?;
        let mut chain = vec![ca.cert_der.clone()];
        if let Some(p) = parent {
            chain.extend(p.chain.iter().cloned());
        }
        let key_pem = key_pem(&ca, key_passphrase, &files[1])?;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        write_file(&files[1], key_pem.as_bytes(), true, true)?;
        write_file(&files[0], ca.cert_pem().as_bytes(), false, true)?;
        write_file(&files[2], chain_pem(&chain).as_bytes(), false, true)?;
        if let Some(p) = parent {
            p.record_issued(ca.cert_der.as_ref(), "intermediate", false)?;
        }
        Ok(CaDir {
            dir: dir.to_path_buf(),
            ca,
            chain,
        })
    }

    /// Loads the CA in `dir`: `ca.crt`, `ca.key` (PKCS#8, PKCS#1 or SEC1; `passphrase`
    /// for an encrypted one) and `ca-chain.pem` when present.
    pub fn open(dir: &Path, passphrase: Option<&str>) -> Result<CaDir, CaDirError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert = crate::pem::read_certificate(&read_file(&cert_path)?).map_err(|source| {
            CaDirError::Read {
                path: cert_path.clone(),
                source,
            }
        })?;
        let info = CertInfo::parse(cert.as_ref()).map_err(|source| CaDirError::Read {
            path: cert_path.clone(),
            source,
        })?;
        if !info.is_ca {
            return Err(CaDirError::NotCa(cert_path));
        }
        let key = crate::pem::read_private_key(&read_file(&key_path)?, passphrase)
            .and_then(|k| crate::keys::to_pkcs8(&k))
            .map_err(|source| CaDirError::Read {
                path: key_path.clone(),
                source,
            })?;
        let key = PrivatePkcs8KeyDer::from(key);
        if !crate::keys::key_matches_certificate(&key.clone_key().into(), cert.as_ref()) {
            return Err(CaDirError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let chain_path = dir.join(CHAIN_FILE);
        let mut chain = vec![cert.clone()];
        if chain_path.exists() {
            let more =
                crate::pem::read_certificates(&read_file(&chain_path)?).map_err(|source| {
                    CaDirError::Read {
                        path: chain_path.clone(),
                        source,
                    }
                })?;
            chain.extend(more.into_iter().filter(|c| c != &cert));
        }
        Ok(CaDir {
            dir: dir.to_path_buf(),
            ca: Issued {
                cert_der: cert,
                key_der: key,
            },
            chain,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.ca.cert_der
    }

    /// This CA's certificate followed by its parents up to the root.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Issues a device (client) certificate.
    pub fn issue_device(
        &self,
        cn: &str,
        validity: Validity,
        key_type: KeyType,
        crl_urls: &[String],
    ) -> Result<Issued, CaDirError> {
        Ok(issue::device(
            cn,
            validity,
            key_type,
            &self.ca.issuer()?,
            crl_urls,
        )?)
    }

    /// Issues a server certificate with the given SANs.
    pub fn issue_server(
        &self,
        subject: &Subject,
        sans: &[String],
        validity: Validity,
        key_type: KeyType,
        crl_urls: &[String],
    ) -> Result<Issued, CaDirError> {
        Ok(issue::server(
            subject,
            sans,
            validity,
            key_type,
            Some(&self.ca.issuer()?),
            crl_urls,
        )?)
    }

    /// Writes `NAME.crt`, `NAME.key` (0600; encrypted with `key_passphrase` when given)
    /// and `NAME-chain.pem` (the certificate, then this CA's chain up to the root) into
    /// `out`. `name` is made safe for a file name.
    pub fn write_issued(
        &self,
        out: &Path,
        name: &str,
        issued: &Issued,
        overwrite: bool,
        key_passphrase: Option<&str>,
    ) -> Result<IssuedFiles, CaDirError> {
        let name = file_stem(name);
        let files = IssuedFiles {
            cert: out.join(format!("{name}.crt")),
            key: out.join(format!("{name}.key")),
            chain: out.join(format!("{name}-chain.pem")),
        };
        if !overwrite {
            for p in [&files.cert, &files.key, &files.chain] {
                if p.exists() {
                    return Err(CaDirError::Exists(p.clone()));
                }
            }
        }
        let key = key_pem(issued, key_passphrase, &files.key)?;
        std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        let mut chain = vec![issued.cert_der.clone()];
        chain.extend(self.chain.iter().cloned());
        write_file(&files.key, key.as_bytes(), true, true)?;
        write_file(&files.cert, issued.cert_pem().as_bytes(), false, true)?;
        write_file(&files.chain, chain_pem(&chain).as_bytes(), false, true)?;
        Ok(files)
    }

    /// Signs a verified signing request with this CA: the certificate has the
    /// `profile`'s extensions whatever the request asked for (the caller records it with
    /// [`CaDir::record_issued`] once written). A request asking for CA:true is refused unless the profile is
    /// [`Profile::Intermediate`]. `subject` and `sans` are what the caller decided from
    /// the request (the request's own unless overridden).
    pub fn sign_csr(
        &self,
        request: &crate::csr::Request,
        profile: &Profile,
        subject: &Subject,
        sans: &[String],
        validity: Validity,
        crl_urls: &[String],
    ) -> Result<CertificateDer<'static>, CaDirError> {
        if request.requests_ca && !matches!(profile, Profile::Intermediate { .. }) {
            return Err(CaDirError::Csr(crate::csr::CsrError::CaRequested));
        }
        Ok(issue::for_public_key(
            profile,
            subject,
            sans,
            &request.spki_der,
            validity,
            &self.ca.issuer()?,
            crl_urls,
        )?)
    }

    /// The certificates recorded in `issued.json` (empty when it does not exist).
    pub fn issued(&self) -> Result<IssuedList, CaDirError> {
        read_list(&self.dir.join(ISSUED_FILE))
    }

    /// Appends a certificate this CA issued to `issued.json`.
    pub fn record_issued(
        &self,
        cert_der: &[u8],
        profile: &str,
        from_csr: bool,
    ) -> Result<(), CaDirError> {
        let path = self.dir.join(ISSUED_FILE);
        let info = CertInfo::parse(cert_der).map_err(|source| CaDirError::Read {
            path: path.clone(),
            source,
        })?;
        let mut list = self.issued()?;
        list.issued.push(IssuedRecord {
            serial: info.serial_hex,
            subject: info.subject,
            not_after: info.not_after,
            issued_at: crate::now_unix(),
            profile: profile.to_string(),
            from_csr,
        });
        save_list(&path, &list)
    }

    /// The revocations recorded so far (empty when `revoked.json` does not exist).
    pub fn revoked(&self) -> Result<RevokedList, CaDirError> {
        read_list(&self.dir.join(REVOKED_FILE))
    }

    fn save_revoked(&self, list: &RevokedList) -> Result<(), CaDirError> {
        save_list(&self.dir.join(REVOKED_FILE), list)
    }

    /// Records the certificate `cert_der` (which this CA must have issued) as revoked.
    pub fn revoke(&self, cert_der: &[u8], now: i64) -> Result<RevokeOutcome, CaDirError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|e| CaDirError::Read {
                path: PathBuf::from("certificate"),
                source: ReadError::MalformedCertificate(e.to_string()),
            })?;
        let (_, ca) =
            x509_parser::parse_x509_certificate(self.ca.cert_der.as_ref()).map_err(|e| {
                CaDirError::Read {
                    path: self.dir.join(CERT_FILE),
                    source: ReadError::MalformedCertificate(e.to_string()),
                }
            })?;
        if cert.issuer().as_raw() != ca.subject().as_raw()
            || !crate::signature::is_signed_by(cert_der, self.ca.cert_der.as_ref())
        {
            return Err(CaDirError::NotIssuedHere {
                issuer: cert.issuer().to_string(),
                ca: ca.subject().to_string(),
            });
        }
        let info = CertInfo::from_x509(&cert, cert_der);
        let mut list = self.revoked()?;
        if let Some(r) = list.revoked.iter().find(|r| r.serial == info.serial_hex) {
            return Ok(RevokeOutcome::AlreadyRevoked(r.clone()));
        }
        let record = RevokedRecord {
            serial: info.serial_hex,
            subject: info.subject,
            revoked_at: now,
        };
        list.revoked.push(record.clone());
        self.save_revoked(&list)?;
        Ok(RevokeOutcome::Revoked(record))
    }

    /// Signs a CRL listing every recorded revocation, valid for `days`, with the next
    /// CRL number (recorded in `revoked.json`). Returns the DER.
    pub fn crl(&self, days: i64) -> Result<Vec<u8>, CaDirError> {
        let mut list = self.revoked()?;
        list.crl_number += 1;
        let revoked = list
            .revoked
            .iter()
            .map(|r| Revocation {
                serial_hex: r.serial.clone(),
                revoked_at: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            })
            .collect::<Vec<_>>();
        let der = issue::crl(&self.ca.issuer()?, &revoked, list.crl_number, days)?;
        self.save_revoked(&list)?;
        Ok(der)
    }
}

/// A JSON list this module keeps (`revoked.json`, `issued.json`): empty when missing.
fn read_list<T: Default + serde::de::DeserializeOwned>(path: &Path) -> Result<T, CaDirError> {
    if !path.exists() {
        return Ok(T::default());
    }
    serde_json::from_slice(&read_file(path)?).map_err(|e| CaDirError::BadRevokedList {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn save_list<T: Serialize>(path: &Path, list: &T) -> Result<(), CaDirError> {
    let mut json = serde_json::to_vec_pretty(list).map_err(|e| io_err(path, e))?;
    json.push(b'\n');
    write_file(path, &json, false, true)
}

/// The first line of a file holding a secret (a passphrase file); an empty one is an
/// error.
pub fn read_secret_line(path: &Path) -> Result<String, CaDirError> {
    let bad = |message: &str| CaDirError::Io {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let text = String::from_utf8(read_file(path)?).map_err(|_| bad("not UTF-8 text"))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(bad("the passphrase is empty"));
    }
    Ok(line.to_string())
}

/// The PEM of an issued key: encrypted PKCS#8 with a passphrase, plain PKCS#8 without.
fn key_pem(issued: &Issued, passphrase: Option<&str>, path: &Path) -> Result<String, CaDirError> {
    crate::pem::private_key_pem(&issued.private_key(), passphrase).map_err(|source| {
        CaDirError::Read {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Concatenated PEM of `chain`, in order.
pub fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| crate::pem::to_pem("CERTIFICATE", c.as_ref()))
        .collect()
}

/// A file name made from a Common Name: letters, digits, `.`, `-` and `_` are kept,
/// anything else (path separators included) becomes `_`.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.trim_start_matches('.') {
        "" => "certificate".to_string(),
        t => t.to_string(),
    }
}

/// Reads a file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, CaDirError> {
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Writes a file; `private` files get mode 0600 (on Unix) before any byte is written.
/// Without `overwrite` an existing file is an error.
pub fn write_file(
    path: &Path,
    contents: &[u8],
    private: bool,
    overwrite: bool,
) -> Result<(), CaDirError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CaDirError::Exists(path.to_path_buf())
        } else {
            io_err(path, e)
        }
    })?;
    // An existing file keeps its mode on open: tighten it before writing a secret.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
    }
    f.write_all(contents).map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> CaDirError {
    CaDirError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("device-01"), "device-01");
        assert_eq!(file_stem("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_stem("a b/c"), "a_b_c");
        assert_eq!(file_stem(".."), "certificate");
        assert_eq!(file_stem(""), "certificate");
    }
}
