//! Certificate generators shared by the integration tests: every certificate a test uses
//! is made here (with rcgen through `certs::issue`, or with the `openssl` CLI for what
//! rcgen cannot make), never read from a hand-edited fixture.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};
use certs::CertificateDer;
use time::{Duration, OffsetDateTime};

/// A self-signed P-256 root CA with the given CN.
pub fn root(cn: &str) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &CaOptions::default(),
        None,
    )
    .expect("root CA")
}

/// A root CA with options (path length, CA flag, key usage).
pub fn root_with(cn: &str, opts: &CaOptions) -> Issued {
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        opts,
        None,
    )
    .expect("root CA")
}

/// An intermediate CA signed by `parent`.
pub fn intermediate(cn: &str, parent: &Issued, path_len: Option<u8>) -> Issued {
    let opts = CaOptions {
        path_len,
        ..CaOptions::default()
    };
    issue::ca(
        &Subject::cn(cn),
        Validity::days(365),
        KeyType::P256,
        &opts,
        Some(&parent.issuer().expect("issuer")),
    )
    .expect("intermediate CA")
}

/// A device certificate signed by `ca`.
pub fn device(cn: &str, ca: &Issued) -> Issued {
    issue::device(
        cn,
        Validity::days(30),
        KeyType::P256,
        &ca.issuer().expect("issuer"),
        &[],
    )
    .expect("device")
}

/// A validity window relative to now, in days (negative = past).
pub fn window(from_days: i64, to_days: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + Duration::days(from_days),
        not_after: now + Duration::days(to_days),
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    certs::now_unix()
}

/// Runs `openssl` with `args` in `dir`; returns (success, stdout + stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `openssl` and panics with its output when it fails.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write file");
    p
}

/// Reads `dir/name`.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read file")
}

/// DER of an issued certificate as a chain element.
pub fn der(i: &Issued) -> CertificateDer<'static> {
    i.cert_der.clone()
}
