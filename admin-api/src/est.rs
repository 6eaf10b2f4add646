//! Tenant certificate authorities and device enrollment (EST, RFC 7030; issue 16).
//!
//! A tenant may have the product hold a CA for it: created here (or imported with its
//! key), its certificate becomes one of the tenant's trusted certificates (the upload
//! rules, the overlap rules and `maxAnchors` apply as to any upload), and its private key
//! is stored only encrypted with AES-256-GCM under the CA key encryption key
//! ([`KeyEncryption`]: `BROKER_CA_KEY_ENCRYPTION_KEY`, `[est] key_file`, or a key
//! generated into the data directory, mode 0600, at first use). Rotation makes a new
//! active CA; the previous one keeps verifying its devices for the overlap, then its
//! anchor is disabled.
//!
//! Devices get certificates from the active CA over EST (the listener is the broker's):
//! `simpleenroll` with a one-time secret (argon2id-hashed, expiring, consumed in the
//! transaction that records the certificate, so of concurrent uses exactly one wins),
//! `simplereenroll` with the device's current certificate, verified as on port 8883.
//! Every issued certificate is recorded; revoking one puts its serial on the tenant's
//! revocation list, which port 8883 checks and the tenant's CRL serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use certs::est::CheckedCsr;
use certs::issue::{Issued, Validity};
use certs::DeviceIdentity;

use crate::error::{ApiError, EstError};
use crate::store::{
    AuditEntry, IssuedCertRecord, RevokedSerial, TenantCaRecord, TenantCaState, TrustedCertRecord,
};
use crate::Admin;

/// The file the generated CA key encryption key is kept in (mode 0600), when neither
/// `BROKER_CA_KEY_ENCRYPTION_KEY` nor `[est] key_file` gives one.
pub const KEY_ENCRYPTION_FILE: &str = "ca-key-encryption.key";

/// The key that encrypts tenant CA private keys at rest (AES-256-GCM, a random 96-bit
/// nonce per key; the tenant and fingerprint are authenticated as associated data, so a
/// stored key cannot be moved to another CA row).
pub struct KeyEncryption {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeyEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryption(<redacted>)")
    }
}

impl KeyEncryption {
    /// From 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<KeyEncryption, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "the CA key encryption key must be 32 bytes".to_string())?;
        Ok(KeyEncryption {
            key: LessSafeKey::new(unbound),
        })
    }

    /// From text: 64 hex digits or the base64 of 32 bytes (white space ignored).
    pub fn parse(text: &str) -> Result<KeyEncryption, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| {
                    "the CA key encryption key must be 64 hex digits or the base64 of 32 bytes"
                        .to_string()
                })?
        };
        KeyEncryption::new(&bytes)
    }

    /// Reads the key from `file`; with `create`, a missing file is generated first
    /// (32 random bytes as hex, mode 0600, created exclusively).
    pub fn from_file(file: &Path, create: bool) -> Result<KeyEncryption, String> {
        if create && !file.exists() {
            let mut b = [0u8; 32];
            aws_lc_rs::rand::fill(&mut b).map_err(|_| "no random numbers".to_string())?;
            certs::ca_dir::write_file(
                file,
                format!("{}\n", hex::encode(b)).as_bytes(),
                true,
                false,
            )
            .or_else(|e| match e {
                // Another node or start created it meanwhile: read theirs.
                certs::ca_dir::CaDirError::Exists(_) => Ok(()),
                e => Err(e.to_string()),
            })?;
            tracing::info!(file = %file.display(), "generated the CA key encryption key");
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading the CA key encryption key {}: {e}", file.display()))?;
        KeyEncryption::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn aad(tenant: &str, fingerprint: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(tenant.len() + fingerprint.len() + 1);
        a.extend_from_slice(tenant.as_bytes());
        a.push(0);
        a.extend_from_slice(fingerprint.as_bytes());
        a
    }

    /// Encrypts a PKCS#8 key of the CA `fingerprint` of `tenant`.
    pub fn seal(&self, tenant: &str, fingerprint: &str, pkcs8: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no random numbers".to_string())?;
        let mut data = pkcs8.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(KeyEncryption::aad(tenant, fingerprint)),
                &mut data,
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypts what [`KeyEncryption::seal`] made for the same tenant and fingerprint.
    pub fn open(&self, tenant: &str, fingerprint: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < NONCE_LEN {
            return Err("stored CA key too short".into());
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(KeyEncryption::aad(tenant, fingerprint)), &mut data)
            .map_err(|_| {
                "the stored CA key does not decrypt with this CA key encryption key (was BROKER_CA_KEY_ENCRYPTION_KEY or [est] key_file changed?)".to_string()
            })?;
        Ok(plain.to_vec())
    }
}

/// Argon2id cost of enrollment-secret hashes. A secret is 32 random alphanumerics (190
/// bits), so the hash need not slow down guessing the way a password hash must; a light
/// cost keeps a bulk request of 1000 secrets, and enrollments, cheap.
pub const SECRET_HASHING: crate::PasswordHashing = crate::PasswordHashing {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

/// Hashes an enrollment secret (off the async runtime).
pub(crate) async fn hash_secret(secret: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || SECRET_HASHING.hash(&secret))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)
}

/// Where the CA key encryption key comes from.
#[derive(Clone, Default)]
pub enum KeySource {
    /// The generated file in the data directory (created at first use).
    #[default]
    DataDir,
    /// A file the operator provides (`[est] key_file`); never created.
    File(PathBuf),
    /// The key itself (`BROKER_CA_KEY_ENCRYPTION_KEY`).
    Value(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::DataDir => f.write_str("DataDir"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// What a tenant CA is created with.
#[derive(Debug, Clone)]
pub struct NewCa {
    /// Display name and Common Name of a created CA.
    pub name: String,
    /// Key type of a created CA.
    pub key_type: certs::issue::KeyType,
    /// Validity of a created CA, days.
    pub ca_validity_days: u32,
    /// Validity of issued device certificates, days.
    pub device_validity_days: u32,
    /// Renewal window, days.
    pub renewal_window_days: u32,
    /// Revoke a device's previous certificate when it renews.
    pub revoke_on_renewal: bool,
    /// Devices register themselves at first connect.
    pub auto_registration: bool,
    /// An existing CA to import instead: certificate and PKCS#8 key, DER.
    pub import: Option<(Vec<u8>, Vec<u8>)>,
}

/// A decrypted active CA, ready to sign.
struct ActiveCa {
    record: TenantCaRecord,
    issued: Issued,
}

impl Admin {
    /// The CA key encryption key (loaded, or generated in the data directory, at first
    /// use).
    pub(crate) fn ca_key(&self) -> Result<Arc<KeyEncryption>, ApiError> {
        let mut slot = self
            .inner
            .ca_key
            .lock()
            .map_err(|_| ApiError::Internal("CA key lock poisoned".into()))?;
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let key = match &self.inner.config.ca_key_source {
            KeySource::Value(v) => {
                KeyEncryption::parse(v).map_err(|e| format!("BROKER_CA_KEY_ENCRYPTION_KEY: {e}"))
            }
            KeySource::File(p) => KeyEncryption::from_file(p, false),
            KeySource::DataDir => KeyEncryption::from_file(
                &self.inner.config.data_dir.join(KEY_ENCRYPTION_FILE),
                true,
            ),
        }
        .map_err(ApiError::Internal)?;
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Creates (or imports) a tenant CA; with `overlap_secs`, rotates: the active CA
    /// becomes retiring for that long. Returns the new CA's record and trusted
    /// certificate.
    pub(crate) async fn add_tenant_ca(
        &self,
        actor: &str,
        tenant: &str,
        new: NewCa,
        overlap_secs: Option<i64>,
    ) -> Result<(TenantCaRecord, TrustedCertRecord), ApiError> {
        let (cert_der, key_pkcs8, key_type) = match &new.import {
            Some((cert, key)) => {
                check_key_matches(cert, key)?;
                (cert.clone(), key.clone(), "imported".to_string())
            }
            None => {
                let subject = certs::issue::Subject {
                    cn: new.name.clone(),
                    o: Some(tenant.to_string()),
                    ou: None,
                    c: None,
                };
                let kt = new.key_type;
                let days = i64::from(new.ca_validity_days);
                let issued = tokio::task::spawn_blocking(move || {
                    certs::issue::ca(
                        &subject,
                        Validity::days(days),
                        kt,
                        &certs::issue::CaOptions {
                            path_len: Some(0),
                            ..Default::default()
                        },
                        None,
                    )
                })
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(e.to_string()))?;
                (
                    issued.cert_der.to_vec(),
                    issued.key_der.secret_pkcs8_der().to_vec(),
                    format!("{kt:?}").to_ascii_lowercase(),
                )
            }
        };
        let now = self.now();
        let upload = crate::routes::trusted_certificates::NewTrustedCertificate {
            status: None,
            name: Some(new.name.clone()),
            auto_registration_enabled: Some(crate::routes::trusted_certificates::FlexBool::Bool(
                new.auto_registration,
            )),
            cert_in_pem_format: certs::pem::to_pem("CERTIFICATE", &cert_der),
        };
        let mut anchor = crate::routes::trusted_certificates::prepare(tenant, &upload, now)?;
        // The product holds the key: possession is proven by construction.
        anchor.pop_valid = true;
        let sealed = self
            .ca_key()?
            .seal(tenant, &anchor.fingerprint, &key_pkcs8)
            .map_err(ApiError::Internal)?;
        let record = TenantCaRecord {
            tenant: tenant.to_string(),
            fingerprint: anchor.fingerprint.clone(),
            key_type,
            key_encrypted: sealed,
            device_validity_days: new.device_validity_days,
            renewal_window_days: new.renewal_window_days,
            revoke_on_renewal: new.revoke_on_renewal,
            state: TenantCaState::Active,
            retire_at: None,
            created_at: now,
        };
        let action = if overlap_secs.is_some() {
            "CERTIFICATE_AUTHORITY_ROTATED"
        } else if new.import.is_some() {
            "CERTIFICATE_AUTHORITY_IMPORTED"
        } else {
            "CERTIFICATE_AUTHORITY_CREATED"
        };
        let audit = AuditEntry::new(actor, Some(tenant), action)
            .fingerprint(&anchor.fingerprint)
            .target(&anchor.name)
            .detail(format!(
                "key {}, device certificates {} days, renewal window {} days, revokeOnRenewal {}{}",
                record.key_type,
                record.device_validity_days,
                record.renewal_window_days,
                record.revoke_on_renewal,
                overlap_secs
                    .map(|s| format!(", previous CA trusted for {s} more seconds"))
                    .unwrap_or_default()
            ));
        self.store()
            .add_tenant_ca(
                anchor.clone(),
                record.clone(),
                overlap_secs.map(|s| now.saturating_add(s)),
                audit,
            )
            .await?;
        if overlap_secs.is_some() {
            self.store().retire_due_cas(now).await?;
        }
        self.publish().await?;
        Ok((record, anchor))
    }

    /// Disables the anchors of retiring CAs whose overlap has ended (run periodically,
    /// and after a rotation).
    pub async fn retire_due_cas(&self) -> Result<(), ApiError> {
        let retired = self.store().retire_due_cas(self.now()).await?;
        if !retired.is_empty() {
            for (tenant, fp) in &retired {
                tracing::info!(%tenant, fingerprint = %fp, "tenant CA retired after its rotation overlap");
            }
            self.publish().await?;
        }
        Ok(())
    }

    async fn active_ca(&self, tenant: &str) -> Result<ActiveCa, EstError> {
        let cas = self.store().tenant_cas(tenant).await?;
        let record = cas
            .into_iter()
            .find(|c| c.state == TenantCaState::Active)
            .ok_or_else(|| EstError::NoCa(tenant.to_string()))?;
        let anchor = self
            .store()
            .certificate(tenant, &record.fingerprint)
            .await?
            .ok_or_else(|| EstError::NoCa(tenant.to_string()))?;
        let key = self
            .ca_key()
            .map_err(|e| EstError::Internal(e.to_string()))?
            .open(tenant, &record.fingerprint, &record.key_encrypted)
            .map_err(EstError::Internal)?;
        Ok(ActiveCa {
            record,
            issued: Issued {
                cert_der: anchor.cert_der.into(),
                key_der: key.into(),
            },
        })
    }

    /// EST `cacerts`: the active CA first, then CAs still in their rotation overlap.
    /// (Reads only: an unauthenticated request never writes; the overlap's end is
    /// applied by the periodic task, and a CA past it is left out here already.)
    pub async fn est_cacerts(&self, tenant: &str) -> Result<Vec<Vec<u8>>, EstError> {
        let now = self.now();
        let mut out = Vec::new();
        for ca in self.store().tenant_cas(tenant).await? {
            let live = match ca.state {
                TenantCaState::Active => true,
                TenantCaState::Retiring => ca.retire_at.is_none_or(|at| at > now),
                TenantCaState::Retired => false,
            };
            if !live {
                continue;
            }
            if let Some(a) = self.store().certificate(tenant, &ca.fingerprint).await? {
                out.push(a.cert_der);
            }
        }
        if out.is_empty() {
            return Err(EstError::NoCa(tenant.to_string()));
        }
        Ok(out)
    }

    fn issue(&self, ca: &ActiveCa, csr: &CheckedCsr) -> Result<IssuedCertRecord, EstError> {
        let issuer = ca
            .issued
            .issuer()
            .map_err(|e| EstError::Internal(e.to_string()))?;
        let validity = Validity::days(i64::from(ca.record.device_validity_days));
        let der = certs::est::issue_device(csr, validity, &issuer)
            .map_err(|e| EstError::Internal(e.to_string()))?;
        let info = certs::CertInfo::parse(&der).map_err(|e| EstError::Internal(e.to_string()))?;
        Ok(IssuedCertRecord {
            tenant: ca.record.tenant.clone(),
            serial_hex: info.serial_hex,
            common_name: csr.common_name.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            ca_fingerprint: ca.record.fingerprint.clone(),
            enrollment: String::new(),
            cert_der: der,
            issued_at: self.now(),
            revoked_at: None,
        })
    }

    /// EST `simpleenroll`: the Basic credentials are the device's CN and its one-time
    /// secret for `tenant`; the request must name that CN. Returns the certificate.
    /// Failures count towards the login limits of (tenant/CN, source) and the source.
    pub async fn est_enroll(
        &self,
        tenant: &str,
        cn: &str,
        secret: &str,
        source: Option<std::net::IpAddr>,
        csr_der: &[u8],
    ) -> Result<Vec<u8>, EstError> {
        let inner = &self.inner;
        let login = format!("est:{tenant}/{cn}");
        let source_key = source.map(crate::auth::source_key);
        let pair = match &source_key {
            Some(src) => format!("{login}@{src}"),
            None => login.clone(),
        };
        if let Err(retry_after_secs) = inner.limiter.check(&pair) {
            return Err(EstError::TooManyRequests { retry_after_secs });
        }
        if let Some(Err(retry_after_secs)) =
            source_key.as_deref().map(|k| inner.source_limiter.check(k))
        {
            return Err(EstError::TooManyRequests { retry_after_secs });
        }
        let now = self.now();
        let record = self.store().enrollment_secret(tenant, cn).await?;
        let usable = record
            .as_ref()
            .filter(|r| r.used_at.is_none() && r.expires_at > now);
        // A dummy hash for unknown, used or expired secrets: the same time either way.
        let hash = usable
            .map(|r| r.secret_hash.clone())
            .unwrap_or_else(|| inner.est_dummy_hash.clone());
        let ok = match inner
            .checker
            .verify(&format!("est:{tenant}"), cn, secret, &hash)
            .await
        {
            Ok(ok) => ok && usable.is_some(),
            Err(crate::auth::checker::CheckRefused::Busy) => {
                return Err(EstError::Busy {
                    retry_after_secs: crate::auth::PASSWORD_CHECK_RETRY_AFTER_SECS,
                })
            }
            Err(crate::auth::checker::CheckRefused::Stopped) => {
                return Err(EstError::Internal(
                    "the password-check threads stopped".into(),
                ))
            }
        };
        if !ok {
            inner.limiter.failure(&pair);
            if let Some(k) = source_key.as_deref() {
                inner.source_limiter.failure(k);
            }
            tracing::warn!(%tenant, common_name = %cn, source = ?source, "EST enrollment refused: unknown, used, expired or wrong secret");
            return Err(EstError::Unauthorized);
        }
        inner.limiter.success(&pair);
        let csr = certs::est::check_csr(csr_der, cn)?;
        let ca = self.active_ca(tenant).await?;
        let mut issued = self.issue(&ca, &csr)?;
        issued.enrollment = "simpleenroll".into();
        let audit = AuditEntry::new("device", Some(tenant), "CERTIFICATE_ENROLLED")
            .target(cn)
            .fingerprint(&ca.record.fingerprint)
            .detail(format!(
                "serial {}, key {}, valid until {}",
                issued.serial_hex,
                csr.key,
                certs::info::rfc3339(issued.not_after)
            ));
        let der = issued.cert_der.clone();
        if !self
            .store()
            .enroll_with_secret(&hash, now, issued, audit)
            .await?
        {
            // Used by a concurrent request between the check and now.
            return Err(EstError::Unauthorized);
        }
        Ok(der)
    }

    /// EST `simplereenroll` for a device whose current certificate `id` was verified
    /// as on port 8883: same tenant as the path, issued by one of the tenant's CAs, the
    /// request names the same CN. With the CA's `revokeOnRenewal` the current
    /// certificate is revoked in the same transaction.
    pub async fn est_reenroll(
        &self,
        tenant: &str,
        id: &DeviceIdentity,
        csr_der: &[u8],
    ) -> Result<Vec<u8>, EstError> {
        if &*id.tenant != tenant {
            return Err(EstError::WrongTenant);
        }
        let cas = self.store().tenant_cas(tenant).await?;
        if !cas
            .iter()
            .any(|c| c.fingerprint == id.anchor_fingerprint && c.state != TenantCaState::Retired)
        {
            return Err(EstError::NotIssuedHere);
        }
        let csr = certs::est::check_csr(csr_der, &id.common_name)?;
        let ca = self.active_ca(tenant).await?;
        let mut issued = self.issue(&ca, &csr)?;
        issued.enrollment = format!("simplereenroll:{}", id.serial_hex);
        let revoke = ca.record.revoke_on_renewal.then(|| RevokedSerial {
            serial_hex: id.serial_hex.clone(),
            revocation_date: self.now(),
        });
        let audit = AuditEntry::new("device", Some(tenant), "CERTIFICATE_RENEWED")
            .target(&id.common_name)
            .fingerprint(&ca.record.fingerprint)
            .detail(format!(
                "serial {} replaces {}{}, key {}, valid until {}",
                issued.serial_hex,
                id.serial_hex,
                if revoke.is_some() { " (revoked)" } else { "" },
                csr.key,
                certs::info::rfc3339(issued.not_after)
            ));
        let der = issued.cert_der.clone();
        let revoked = revoke.is_some();
        self.store().record_renewal(issued, revoke, audit).await?;
        if revoked {
            self.publish()
                .await
                .map_err(|e| EstError::Internal(e.to_string()))?;
        }
        Ok(der)
    }

    /// Per tenant: trusted certificates and unrevoked issued certificates that are
    /// still valid and expire within `days` (for the `certificates_expiring` metric).
    pub async fn expiring_counts(
        &self,
        days: i64,
    ) -> Result<std::collections::HashMap<String, u64>, ApiError> {
        let now = self.now();
        let until = now.saturating_add(days.saturating_mul(86_400));
        let mut counts = self.store().issued_expiring_counts(now, until).await?;
        for a in self.store().trust_material().await?.anchors {
            if a.not_after > now && a.not_after <= until {
                *counts.entry(a.tenant).or_default() += 1;
            }
        }
        Ok(counts)
    }
}

/// The CSR attributes served at `csrattrs` (RFC 7030 section 4.5.2): ECDSA with SHA-256
/// on P-256, the key type the product generates by default.
pub fn csr_attributes() -> Vec<u8> {
    // SEQUENCE { OID ecdsa-with-SHA256, SEQUENCE { OID id-ecPublicKey, SET { OID prime256v1 } } }
    const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut set = vec![0x31, P256.len() as u8];
    set.extend_from_slice(P256);
    let mut attr = EC_PUBLIC_KEY.to_vec();
    attr.extend_from_slice(&set);
    let mut attr_seq = vec![0x30, attr.len() as u8];
    attr_seq.extend_from_slice(&attr);
    let mut body = ECDSA_SHA256.to_vec();
    body.extend_from_slice(&attr_seq);
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// An imported CA key must be the certificate's.
fn check_key_matches(cert_der: &[u8], key_pkcs8: &[u8]) -> Result<(), ApiError> {
    let kp = rcgen_key(key_pkcs8)?;
    let spki = x509_parser::parse_x509_certificate(cert_der)
        .map(|(_, c)| c.public_key().raw.to_vec())
        .map_err(|e| ApiError::unprocessable(format!("Certificate could not be parsed: {e}")))?;
    if kp != spki {
        return Err(ApiError::unprocessable(
            "The private key does not belong to the certificate",
        ));
    }
    Ok(())
}

/// The SubjectPublicKeyInfo of a PKCS#8 key.
fn rcgen_key(key_pkcs8: &[u8]) -> Result<Vec<u8>, ApiError> {
    let kp = rcgen::KeyPair::try_from(key_pkcs8)
        .map_err(|e| ApiError::unprocessable(format!("The private key cannot be used: {e}")))?;
    Ok(rcgen::PublicKeyData::subject_public_key_info(&kp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_ca_and_key() {
        let k = KeyEncryption::new(&[7u8; 32]).unwrap();
        let sealed = k.seal("acme", "ab", b"secret key").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(k.open("acme", "ab", &sealed).unwrap(), b"secret key");
        assert!(k.open("other", "ab", &sealed).is_err());
        assert!(k.open("acme", "cd", &sealed).is_err());
        let k2 = KeyEncryption::parse(&hex::encode([8u8; 32])).unwrap();
        assert!(k2.open("acme", "ab", &sealed).is_err());
        assert!(KeyEncryption::parse("short").is_err());
        assert_eq!(format!("{k:?}"), "KeyEncryption(<redacted>)");
        assert_eq!(
            format!("{:?}", KeySource::Value("x".into())),
            "Value(<redacted>)"
        );
    }

    #[test]
    fn debug_output_holds_no_key_and_no_secret_hash() {
        let ca = TenantCaRecord {
            tenant: "acme".into(),
            fingerprint: "ab".into(),
            key_type: "p256".into(),
            key_encrypted: vec![0xde, 0xad, 0xbe, 0xef],
            device_validity_days: 1,
            renewal_window_days: 1,
            revoke_on_renewal: false,
            state: TenantCaState::Active,
            retire_at: None,
            created_at: 0,
        };
        let text = format!("{ca:?}");
        assert!(
            text.contains("<redacted>") && !text.contains("222, 173"),
            "{text}"
        );
        let secret = crate::store::EnrollmentSecretRecord {
            tenant: "acme".into(),
            common_name: "d".into(),
            secret_hash: "$argon2id$v=19$secret-hash".into(),
            expires_at: 0,
            created_at: 0,
            used_at: None,
        };
        let text = format!("{secret:?}");
        assert!(!text.contains("argon2id"), "{text}");
        let config = crate::AdminConfig {
            ca_key_source: KeySource::Value(hex::encode([9u8; 32])),
            ..crate::AdminConfig::new("data")
        };
        assert!(!format!("{config:?}").contains(&hex::encode([9u8; 32])));
    }
}
