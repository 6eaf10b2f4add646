//! The `certs` binary end to end, with `openssl` as the independent judge of what it
//! writes: CAs, chains, CRLs and PKCS#12 keystores, and agreement between
//! `openssl verify` and `certs verify` on valid and invalid chains.

mod common;

use std::path::Path;
use std::process::Command;

use common::{openssl, openssl_ok, read, write};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn certs(dir: &Path, args: &[&str]) -> Run {
    certs_env(dir, args, &[])
}

fn certs_ok(dir: &Path, args: &[&str]) -> String {
    let r = certs(dir, args);
    assert_eq!(
        r.code, 0,
        "certs {args:?}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// A failed run: the exit code, and stderr as exactly one line naming the problem.
fn certs_err(dir: &Path, args: &[&str]) -> (i32, String) {
    let r = certs(dir, args);
    assert_ne!(
        r.code, 0,
        "certs {args:?} should fail\nstdout: {}",
        r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", r.stderr);
    assert!(lines[0].starts_with("certs: "), "{}", lines[0]);
    (r.code, lines[0].to_string())
}

fn pem_certs(dir: &Path, file: &str) -> Vec<Vec<u8>> {
    certs::pem::read_certificates(&read(dir, file))
        .expect("certificates")
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// root (pathlen 1) -> inter -> dev-1, dev-2; root -> direct.
fn pki(p: &Path) {
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Root CA",
            "--o",
            "Acme",
            "--c",
            "DE",
            "--pathlen",
            "1",
            "--out",
            "root",
        ],
    );
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Issuing CA",
            "--parent-dir",
            "root",
            "--pathlen",
            "0",
            "--days",
            "1000",
            "--out",
            "inter",
        ],
    );
    certs_ok(
        p,
        &[
            "issue", "--ca-dir", "inter", "--cn", "dev-1", "--out", "devs",
        ],
    );
    certs_ok(
        p,
        &[
            "issue", "--ca-dir", "inter", "--cn", "dev-2", "--out", "devs",
        ],
    );
    certs_ok(
        p,
        &[
            "issue", "--ca-dir", "root", "--cn", "direct", "--days", "30", "--out", "devs",
        ],
    );
}

#[test]
fn ca_issue_and_chain_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    for f in [
        "root/ca.crt",
        "root/ca.key",
        "inter/ca.crt",
        "inter/ca.key",
        "inter/ca-chain.pem",
        "devs/dev-1.crt",
        "devs/dev-1.key",
        "devs/dev-1-chain.pem",
    ] {
        assert!(p.join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in ["root/ca.key", "inter/ca.key", "devs/dev-1.key"] {
            let mode = std::fs::metadata(p.join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    let root = pem_certs(p, "root/ca.crt");
    let inter = pem_certs(p, "inter/ca.crt");
    let dev = pem_certs(p, "devs/dev-1.crt");
    assert_eq!(
        pem_certs(p, "inter/ca-chain.pem"),
        [inter[0].clone(), root[0].clone()]
    );
    assert_eq!(
        pem_certs(p, "devs/dev-1-chain.pem"),
        [dev[0].clone(), inter[0].clone(), root[0].clone()]
    );
    // openssl reads what was written: subject, issuer and CA flags.
    let text = openssl_ok(p, &["x509", "-in", "inter/ca.crt", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains("Issuer: C = DE, O = Acme, CN = Root CA"),
        "{text}"
    );
    let text = openssl_ok(p, &["x509", "-in", "devs/dev-1.crt", "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // A key that belongs to its certificate, per openssl.
    let a = openssl_ok(p, &["x509", "-in", "devs/dev-1.crt", "-noout", "-pubkey"]);
    let b = openssl_ok(p, &["pkey", "-in", "devs/dev-1.key", "-pubout"]);
    assert_eq!(a, b);
    // An existing CA is not overwritten by accident.
    let (code, line) = certs_err(p, &["ca", "create", "--cn", "Again", "--out", "root"]);
    assert_eq!(code, 2);
    assert!(line.contains("already exists"), "{line}");
}

/// `openssl verify` and `certs verify` on the same files; returns both verdicts.
fn judge(p: &Path, openssl_args: &[&str], certs_args: &[&str]) -> (bool, bool, String) {
    let mut o = vec!["verify", "-x509_strict"];
    o.extend_from_slice(openssl_args);
    let (ossl, _) = openssl(p, &o);
    let mut c = vec!["verify"];
    c.extend_from_slice(certs_args);
    let r = certs(p, &c);
    assert!(
        r.code == 0 || r.code == 1,
        "certs verify error: {}",
        r.stderr
    );
    (ossl, r.code == 0, r.stderr)
}

#[test]
fn certs_verify_agrees_with_openssl_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    certs_ok(p, &["ca", "create", "--cn", "Other Root", "--out", "other"]);
    let in_two_years = (certs::now_unix() + 2 * 365 * 86400).to_string();
    let in_two_years_rfc = certs::info::rfc3339(certs::now_unix() + 2 * 365 * 86400);
    let cases: Vec<(&str, Vec<&str>, Vec<&str>, bool)> = vec![
        (
            "via intermediate",
            vec![
                "-CAfile",
                "root/ca.crt",
                "-untrusted",
                "inter/ca.crt",
                "devs/dev-1.crt",
            ],
            vec![
                "--anchor",
                "root/ca.crt",
                "--intermediate",
                "inter/ca.crt",
                "--max-chain-length",
                "3",
                "devs/dev-1.crt",
            ],
            true,
        ),
        (
            "chain file as sent",
            vec![
                "-CAfile",
                "root/ca.crt",
                "-untrusted",
                "devs/dev-1-chain.pem",
                "devs/dev-1.crt",
            ],
            vec![
                "--anchor",
                "root/ca.crt",
                "--max-chain-length",
                "3",
                "devs/dev-1-chain.pem",
            ],
            true,
        ),
        (
            "intermediate as anchor",
            vec![
                "-partial_chain",
                "-CAfile",
                "inter/ca.crt",
                "devs/dev-1.crt",
            ],
            vec!["--anchor", "inter/ca.crt", "devs/dev-1.crt"],
            true,
        ),
        (
            "direct",
            vec!["-CAfile", "root/ca.crt", "devs/direct.crt"],
            vec!["--anchor", "root/ca.crt", "devs/direct.crt"],
            true,
        ),
        (
            "wrong root",
            vec![
                "-CAfile",
                "other/ca.crt",
                "-untrusted",
                "inter/ca.crt",
                "devs/dev-1.crt",
            ],
            vec![
                "--anchor",
                "other/ca.crt",
                "--intermediate",
                "inter/ca.crt",
                "--max-chain-length",
                "3",
                "devs/dev-1.crt",
            ],
            false,
        ),
        (
            "missing intermediate",
            vec!["-CAfile", "root/ca.crt", "devs/dev-1.crt"],
            vec![
                "--anchor",
                "root/ca.crt",
                "--max-chain-length",
                "3",
                "devs/dev-1.crt",
            ],
            false,
        ),
        (
            "device expired by then",
            vec![
                "-attime",
                &in_two_years,
                "-CAfile",
                "root/ca.crt",
                "devs/direct.crt",
            ],
            vec![
                "--at",
                &in_two_years_rfc,
                "--anchor",
                "root/ca.crt",
                "devs/direct.crt",
            ],
            false,
        ),
        (
            "before it was issued",
            vec![
                "-attime",
                "946684800",
                "-CAfile",
                "root/ca.crt",
                "devs/direct.crt",
            ],
            vec![
                "--at",
                "2000-01-01T00:00:00Z",
                "--anchor",
                "root/ca.crt",
                "devs/direct.crt",
            ],
            false,
        ),
    ];
    for (name, o, c, expected) in &cases {
        let (ossl, ours, why) = judge(p, o, c);
        assert_eq!(ossl, *expected, "openssl on {name}");
        assert_eq!(ours, *expected, "certs on {name}: {why}");
    }
    // Where they differ on purpose: the chain-length limit (device + uploaded CA by
    // default), which openssl does not have.
    let (ossl, ours, why) = judge(
        p,
        &[
            "-CAfile",
            "root/ca.crt",
            "-untrusted",
            "inter/ca.crt",
            "devs/dev-1.crt",
        ],
        &[
            "--anchor",
            "root/ca.crt",
            "--intermediate",
            "inter/ca.crt",
            "devs/dev-1.crt",
        ],
    );
    assert!(ossl && !ours);
    assert!(why.contains("[chain_too_long]"), "{why}");
    // And a CA certificate presented as a device: openssl's sslclient purpose allows it,
    // the broker does not let a CA log in as a device.
    let (ossl, ours, why) = judge(
        p,
        &[
            "-CAfile",
            "root/ca.crt",
            "-purpose",
            "sslclient",
            "inter/ca.crt",
        ],
        &["--anchor", "root/ca.crt", "inter/ca.crt"],
    );
    assert!(ossl && !ours);
    assert!(why.contains("[device_is_ca]"), "{why}");
}

#[test]
fn path_length_constraint_agrees_with_openssl() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Strict Root",
            "--pathlen",
            "0",
            "--out",
            "root",
        ],
    );
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Too Deep",
            "--parent-dir",
            "root",
            "--out",
            "inter",
        ],
    );
    certs_ok(
        p,
        &["issue", "--ca-dir", "inter", "--cn", "dev", "--out", "devs"],
    );
    let (ossl, ours, why) = judge(
        p,
        &[
            "-CAfile",
            "root/ca.crt",
            "-untrusted",
            "inter/ca.crt",
            "devs/dev.crt",
        ],
        &[
            "--anchor",
            "root/ca.crt",
            "--max-chain-length",
            "3",
            "devs/dev-chain.pem",
        ],
    );
    assert!(!ossl && !ours);
    assert!(why.contains("[path_len_exceeded]"), "{why}");
}

/// The value under "X509v3 CRL Number:" in `openssl crl -text` output.
fn crl_number(text: &str) -> Option<String> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 CRL Number:"));
    lines.next()?;
    lines.next().map(|l| l.trim().to_string())
}

#[test]
fn revoke_crl_and_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    let r = certs_ok(
        p,
        &["revoke", "--ca-dir", "inter", "--cert", "devs/dev-1.crt"],
    );
    assert!(r.contains("revoked serial"), "{r}");
    let again = certs_ok(
        p,
        &["revoke", "--ca-dir", "inter", "--cert", "devs/dev-1.crt"],
    );
    assert!(again.contains("already revoked"), "{again}");
    // Only the issuing CA can revoke.
    let (code, line) = certs_err(
        p,
        &["revoke", "--ca-dir", "root", "--cert", "devs/dev-1.crt"],
    );
    assert_eq!(code, 2);
    assert!(line.contains("was not issued by this CA"), "{line}");
    certs_ok(
        p,
        &[
            "crl",
            "--ca-dir",
            "inter",
            "--out",
            "inter.crl",
            "--days",
            "7",
        ],
    );
    certs_ok(p, &["crl", "--ca-dir", "root", "--out", "root.crl"]);

    // openssl reads the CRL, lists the serial, and accepts its signature.
    let serial = openssl_ok(p, &["x509", "-in", "devs/dev-1.crt", "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let text = openssl_ok(p, &["crl", "-in", "inter.crl", "-text", "-noout"]);
    assert!(
        text.contains(&format!("Serial Number: {serial}")),
        "{serial} in {text}"
    );
    assert_eq!(crl_number(&text), Some("1".to_string()), "{text}");
    // CRL numbers increase with every CRL signed.
    certs_ok(
        p,
        &[
            "crl",
            "--ca-dir",
            "inter",
            "--out",
            "inter.crl",
            "--days",
            "7",
        ],
    );
    let text = openssl_ok(p, &["crl", "-in", "inter.crl", "-text", "-noout"]);
    assert_eq!(crl_number(&text), Some("2".to_string()), "{text}");
    openssl_ok(
        p,
        &[
            "crl",
            "-in",
            "inter.crl",
            "-noout",
            "-CAfile",
            "inter/ca-chain.pem",
        ],
    );

    let crl_args = [
        "-crl_check_all",
        "-CRLfile",
        "inter.crl",
        "-CRLfile",
        "root.crl",
        "-CAfile",
        "root/ca.crt",
        "-untrusted",
        "inter/ca.crt",
    ];
    let mut o = crl_args.to_vec();
    o.push("devs/dev-1.crt");
    let (ossl, ours, why) = judge(
        p,
        &o,
        &[
            "--anchor",
            "root/ca.crt",
            "--intermediate",
            "inter/ca.crt",
            "--crl",
            "inter.crl",
            "--crl",
            "root.crl",
            "--max-chain-length",
            "3",
            "devs/dev-1.crt",
        ],
    );
    assert!(!ossl && !ours);
    assert!(why.contains("[revoked]"), "{why}");
    let mut o = crl_args.to_vec();
    o.push("devs/dev-2.crt");
    let (ossl, ours, why) = judge(
        p,
        &o,
        &[
            "--anchor",
            "root/ca.crt",
            "--intermediate",
            "inter/ca.crt",
            "--crl",
            "inter.crl",
            "--crl",
            "root.crl",
            "--max-chain-length",
            "3",
            "devs/dev-2.crt",
        ],
    );
    assert!(ossl && ours, "{why}");

    // A CRL from a CA the anchors do not cover is refused as input.
    certs_ok(
        p,
        &["ca", "create", "--cn", "Stranger", "--out", "stranger"],
    );
    certs_ok(
        p,
        &[
            "crl",
            "--ca-dir",
            "stranger",
            "--out",
            "stranger.crl",
            "--der",
        ],
    );
    let (code, line) = certs_err(
        p,
        &[
            "verify",
            "--anchor",
            "root/ca.crt",
            "--crl",
            "stranger.crl",
            "devs/direct.crt",
        ],
    );
    assert_eq!(code, 2);
    assert!(line.contains("CRL is not signed"), "{line}");
}

#[test]
fn bundle_convert_and_inspect() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    certs_ok(
        p,
        &[
            "bundle",
            "--cert",
            "devs/dev-1.crt",
            "--key",
            "devs/dev-1.key",
            "--chain",
            "inter/ca-chain.pem",
            "--out",
            "dev-1.p12",
            "--password",
            "s3cret",
        ],
    );
    let info = openssl_ok(
        p,
        &[
            "pkcs12",
            "-info",
            "-in",
            "dev-1.p12",
            "-passin",
            "pass:s3cret",
            "-noout",
        ],
    );
    assert!(info.contains("AES-256-CBC"), "{info}");
    let (ok, _) = openssl(
        p,
        &[
            "pkcs12",
            "-info",
            "-in",
            "dev-1.p12",
            "-passin",
            "pass:wrong",
            "-noout",
        ],
    );
    assert!(!ok);
    let dump = openssl_ok(
        p,
        &[
            "pkcs12",
            "-in",
            "dev-1.p12",
            "-passin",
            "pass:s3cret",
            "-nodes",
        ],
    );
    assert_eq!(dump.matches("BEGIN CERTIFICATE").count(), 3, "{dump}");
    assert!(dump.contains("friendlyName: dev-1"), "{dump}");
    // A key that is not the certificate's is refused.
    let (_, line) = certs_err(
        p,
        &[
            "bundle",
            "--cert",
            "devs/dev-1.crt",
            "--key",
            "devs/dev-2.key",
            "--out",
            "x.p12",
            "--password",
            "pw",
        ],
    );
    assert!(line.contains("is not the private key of"), "{line}");

    // PKCS#12 -> PEM, and the exact sentence for a wrong password.
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "dev-1.p12",
            "--out",
            "dev-1-all.pem",
            "--password",
            "s3cret",
        ],
    );
    let all = read(p, "dev-1-all.pem");
    assert_eq!(certs::pem::read_certificates(&all).expect("certs").len(), 3);
    assert!(certs::pem::read_private_key(&all, None).is_ok());
    openssl_ok(p, &["pkey", "-in", "dev-1-all.pem", "-noout"]);
    let (code, line) = certs_err(
        p,
        &[
            "convert",
            "--in",
            "dev-1.p12",
            "--out",
            "x.pem",
            "--password",
            "nope",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(
        line,
        "certs: dev-1.p12: Passphrase does not match to the key"
    );

    // PEM -> DER -> PEM, checked by openssl.
    certs_ok(
        p,
        &["convert", "--in", "devs/dev-1.crt", "--out", "dev-1.der"],
    );
    let ossl_der = openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "devs/dev-1.crt",
            "-outform",
            "DER",
            "-out",
            "ossl.der",
        ],
    );
    assert!(ossl_der.is_empty());
    assert_eq!(read(p, "dev-1.der"), read(p, "ossl.der"));
    certs_ok(p, &["convert", "--in", "dev-1.der", "--out", "dev-1.pem"]);
    assert_eq!(read(p, "dev-1.pem"), read(p, "devs/dev-1.crt"));
    let (_, line) = certs_err(
        p,
        &[
            "convert",
            "--in",
            "devs/dev-1-chain.pem",
            "--out",
            "x.der",
            "--to",
            "der",
        ],
    );
    assert!(line.contains("DER holds one"), "{line}");

    // inspect: readable text and JSON that match openssl's view.
    let text = certs_ok(p, &["inspect", "devs/dev-1.crt"]);
    for needle in [
        "Subject:             CN=dev-1",
        "Issuer:              CN=Issuing CA",
        "Extended key usage: clientAuth",
        "Public key:          EC P-256",
        "SHA256withECDSA",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&certs_ok(p, &["inspect", "--json", "devs/dev-1.crt"])).expect("json");
    let serial = openssl_ok(p, &["x509", "-in", "devs/dev-1.crt", "-noout", "-serial"]);
    assert_eq!(
        json["serialHex"].as_str().map(str::to_ascii_uppercase),
        Some(serial.trim().trim_start_matches("serial=").to_string())
    );
    let fp = openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "devs/dev-1.crt",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(json["fingerprintSha256"].as_str(), Some(fp.as_str()));
    assert_eq!(json["commonName"], "dev-1");
    let chain: serde_json::Value =
        serde_json::from_str(&certs_ok(p, &["inspect", "--json", "devs/dev-1-chain.pem"]))
            .expect("json");
    assert_eq!(chain.as_array().map(Vec::len), Some(3));
    let crl_text = {
        certs_ok(
            p,
            &["revoke", "--ca-dir", "inter", "--cert", "devs/dev-2.crt"],
        );
        certs_ok(p, &["crl", "--ca-dir", "inter", "--out", "inter.crl"]);
        certs_ok(p, &["inspect", "inter.crl"])
    };
    assert!(crl_text.contains("Revoked certificates:"), "{crl_text}");
    let p12_text = certs_ok(p, &["inspect", "dev-1.p12", "--password", "s3cret"]);
    assert!(p12_text.contains("Private key: EC P-256"), "{p12_text}");
}

#[test]
fn check_server_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "RSA Root",
            "--o",
            "Acme",
            "--key-type",
            "rsa2048",
            "--out",
            "root",
        ],
    );
    certs_ok(
        p,
        &[
            "issue",
            "--ca-dir",
            "root",
            "--cn",
            "mqtt.example.com",
            "--server",
            "--san",
            "mqtt.example.com",
            "127.0.0.1",
            "--o",
            "Acme",
            "--ou",
            "IoT",
            "--c",
            "DE",
            "--key-type",
            "rsa2048",
            "--out",
            "srv",
        ],
    );
    let text = openssl_ok(
        p,
        &["x509", "-in", "srv/mqtt.example.com.crt", "-noout", "-text"],
    );
    assert!(
        text.contains("DNS:mqtt.example.com, IP Address:127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    let out = certs_ok(
        p,
        &[
            "check",
            "--crt",
            "srv/mqtt.example.com.crt",
            "--key",
            "srv/mqtt.example.com.key",
            "--chain",
            "root/ca.crt",
        ],
    );
    assert!(
        out.contains("PASS  Chain of trust matches the Root CA"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    // Same certificate as a PKCS#12 keystore.
    certs_ok(
        p,
        &[
            "bundle",
            "--cert",
            "srv/mqtt.example.com-chain.pem",
            "--key",
            "srv/mqtt.example.com.key",
            "--out",
            "srv.p12",
            "--password",
            "pw",
        ],
    );
    certs_ok(p, &["check", "--crt", "srv.p12", "--pass", "pw"]);
    let r = certs(p, &["check", "--crt", "srv.p12", "--pass", "bad"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "certs: requirement not met: Passphrase does not match to the key"
    );
    // A chain that does not lead to the given root.
    certs_ok(p, &["ca", "create", "--cn", "Other", "--out", "other"]);
    let r = certs(
        p,
        &[
            "check",
            "--crt",
            "srv/mqtt.example.com.crt",
            "--key",
            "srv/mqtt.example.com.key",
            "--chain",
            "other/ca.crt",
            "--json",
        ],
    );
    assert_eq!(r.code, 1);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let failed: Vec<&str> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| row["required"] == true && row["passed"] == false)
        .filter_map(|row| row["reason"].as_str())
        .collect();
    assert_eq!(
        failed,
        ["Cannot validate chain of trust. The provided Certificate and Root CA don't match."]
    );
    // An ECDSA device certificate is not a server certificate by these rules.
    certs_ok(p, &["ca", "create", "--cn", "EC Root", "--out", "ec"]);
    certs_ok(
        p,
        &["issue", "--ca-dir", "ec", "--cn", "dev", "--out", "devs"],
    );
    let r = certs(
        p,
        &[
            "check",
            "--crt",
            "devs/dev.crt",
            "--key",
            "devs/dev.key",
            "--chain",
            "ec/ca.crt",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("FAIL  Signature algorithm is SHA256RSA"),
        "{}",
        r.stdout
    );
}

/// `certs issue --server` with its defaults makes what `certs check` passes (and
/// `openssl verify -purpose sslserver` accepts); from a CA that cannot sign such a
/// certificate it writes nothing and says why, unless told to skip the requirements.
#[test]
fn server_certificate_defaults_pass_check() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Server Root",
            "--o",
            "Acme",
            "--ou",
            "Ops",
            "--c",
            "DE",
            "--key-type",
            "rsa2048",
            "--out",
            "sroot",
        ],
    );
    certs_ok(
        p,
        &[
            "issue",
            "--ca-dir",
            "sroot",
            "--cn",
            "localhost",
            "--server",
            "--out",
            "srv",
        ],
    );
    let out = certs_ok(
        p,
        &[
            "check",
            "--crt",
            "srv/localhost.crt",
            "--key",
            "srv/localhost.key",
            "--chain",
            "sroot/ca.crt",
        ],
    );
    assert!(out.contains("certificate meets every requirement"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // The independent judge: a TLS server certificate for localhost.
    let verified = openssl_ok(
        p,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            "sroot/ca.crt",
            "srv/localhost.crt",
        ],
    );
    assert!(verified.contains("OK"), "{verified}");

    // The default CA (P-256, CN only) cannot sign a certificate the requirements accept.
    certs_ok(p, &["ca", "create", "--cn", "EC Root", "--out", "ec"]);
    let (code, line) = certs_err(
        p,
        &[
            "issue",
            "--ca-dir",
            "ec",
            "--cn",
            "localhost",
            "--server",
            "--out",
            "ecsrv",
        ],
    );
    assert_eq!(code, 2);
    assert!(line.contains("not written"), "{line}");
    assert!(line.contains("create an RSA CA for servers"), "{line}");
    assert!(line.contains("give --o, --ou and --c"), "{line}");
    assert!(!p.join("ecsrv/localhost.crt").exists());
    let r = certs(
        p,
        &[
            "issue",
            "--ca-dir",
            "ec",
            "--cn",
            "localhost",
            "--server",
            "--skip-requirements",
            "--out",
            "ecsrv",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r
        .stderr
        .contains("warning: server-certificate requirement not met"));
    assert!(p.join("ecsrv/localhost.crt").exists());

    // A device certificate (clientAuth only, no SAN) is not a server certificate.
    certs_ok(
        p,
        &["issue", "--ca-dir", "sroot", "--cn", "dev", "--out", "devs"],
    );
    let r = certs(
        p,
        &[
            "check",
            "--crt",
            "devs/dev.crt",
            "--key",
            "devs/dev.key",
            "--chain",
            "sroot/ca.crt",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("FAIL  Extended key usage allows TLS server authentication"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("FAIL  Subject alternative names list the host names"),
        "{}",
        r.stdout
    );
    let (ok, _) = openssl(
        p,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "sroot/ca.crt",
            "devs/dev.crt",
        ],
    );
    assert!(!ok, "openssl agrees: not a server certificate");
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    write(
        p,
        "garbage.bin",
        b"\x30\x82\x01\x00 definitely not a certificate",
    );
    write(p, "empty.pem", b"");
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", "missing.pem"],
        vec!["inspect", "garbage.bin"],
        vec!["inspect", "empty.pem"],
        vec!["verify", "--anchor", "garbage.bin", "devs/dev-1.crt"],
        vec!["verify", "--anchor", "root/ca.crt", "missing.pem"],
        vec![
            "verify",
            "--anchor",
            "root/ca.crt",
            "--at",
            "yesterday",
            "devs/direct.crt",
        ],
        vec![
            "verify",
            "--anchor",
            "root/ca.crt",
            "--max-chain-length",
            "11",
            "devs/direct.crt",
        ],
        vec!["issue", "--ca-dir", "missing", "--cn", "x", "--out", "o"],
        vec!["issue", "--ca-dir", "devs", "--cn", "x", "--out", "o"],
        vec!["revoke", "--ca-dir", "inter", "--cert", "garbage.bin"],
        vec![
            "bundle",
            "--cert",
            "garbage.bin",
            "--key",
            "devs/dev-1.key",
            "--out",
            "x.p12",
            "--password",
            "pw",
        ],
        vec![
            "bundle",
            "--cert",
            "devs/dev-1.crt",
            "--key",
            "garbage.bin",
            "--out",
            "x.p12",
            "--password",
            "pw",
        ],
        vec!["convert", "--in", "garbage.bin", "--out", "x.pem"],
        vec!["check", "--crt", "missing.crt", "--key", "devs/dev-1.key"],
        vec![
            "ca",
            "create",
            "--cn",
            "x",
            "--parent-dir",
            "missing",
            "--out",
            "y",
        ],
    ];
    for args in cases {
        let (code, line) = certs_err(p, &args);
        assert_eq!(code, 2, "{args:?}: {line}");
    }
    // A device CA directory (ca.crt missing) names the file.
    let (_, line) = certs_err(p, &["crl", "--ca-dir", "devs", "--out", "x.crl"]);
    assert!(line.contains("ca.crt"), "{line}");
    // An invalid chain is a verdict (exit 1), not an error.
    let r = certs(
        p,
        &["verify", "--anchor", "inter/ca.crt", "devs/direct.crt"],
    );
    assert_eq!((r.code, r.stderr.trim()), (1, "certs: invalid: unknown issuer: no trusted certificate issued this chain [unknown_issuer]"));
}

/// Serves the current contents of `file` to every HTTP request on a loopback port, for
/// as long as the test runs; returns the port.
fn serve_file(file: std::path::PathBuf) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut sock in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf);
            let body = std::fs::read(&file).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes());
            let _ = sock.write_all(&body);
        }
    });
    port
}

#[test]
fn check_with_crl_distribution_point() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "RSA Root",
            "--o",
            "Acme",
            "--key-type",
            "rsa2048",
            "--out",
            "root",
        ],
    );
    certs_ok(
        p,
        &["crl", "--ca-dir", "root", "--out", "root.crl", "--der"],
    );
    let port = serve_file(p.join("root.crl"));
    let url = format!("http://127.0.0.1:{port}/root.crl");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!(
            "http://127.0.0.1:{}/gone.crl",
            l.local_addr().expect("addr").port()
        )
    };
    for (cn, crl_url) in [("live.example.com", &url), ("dead.example.com", &dead)] {
        certs_ok(
            p,
            &[
                "issue",
                "--ca-dir",
                "root",
                "--cn",
                cn,
                "--server",
                "--o",
                "Acme",
                "--ou",
                "IoT",
                "--c",
                "DE",
                "--key-type",
                "rsa2048",
                "--crl-url",
                crl_url,
                "--out",
                "srv",
            ],
        );
    }
    let check = |cn: &str| {
        certs(
            p,
            &[
                "check",
                "--crl",
                "--egress-allow",
                "127.0.0.1",
                "--crt",
                &format!("srv/{cn}.crt"),
                "--key",
                &format!("srv/{cn}.key"),
                "--chain",
                "root/ca.crt",
            ],
        )
    };
    let r = check("live.example.com");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("PASS  CRL is reachable"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("PASS  Certificate is not revoked by the CRL"),
        "{}",
        r.stdout
    );

    let r = check("dead.example.com");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "certs: requirement not met: The CRL (Certificate Revocation List) location is not reachable. Verify the URL can be accessed from this appliance"
    );

    certs_ok(
        p,
        &[
            "revoke",
            "--ca-dir",
            "root",
            "--cert",
            "srv/live.example.com.crt",
        ],
    );
    certs_ok(
        p,
        &["crl", "--ca-dir", "root", "--out", "root.crl", "--der"],
    );
    let r = check("live.example.com");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "certs: requirement not met: This certificate has been revoked by the CRL and can't be trusted for a secure connection"
    );
}

/// `certs verify` gives the verdict and reason the TLS handshake gives (both call
/// `TrustStore::verify_device`): a look-alike anchor (the intermediate's DN and SKI on
/// a self-signed CA with another key) changes nothing, where it used to turn a valid
/// chain into "bad signature"; and an RFC 5280 rule refuses with the handshake's reason
/// and label.
#[test]
fn verify_ignores_look_alikes_and_applies_rfc5280_rules() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    let r = common::root("CLI Root");
    let i = common::intermediate("CLI Issuing", &r, None);
    let dev = common::device("cli-dev", &i);
    let fake = common::look_alike(&i, true);
    write(p, "root.crt", r.cert_pem());
    write(p, "fake.crt", fake.cert_pem());
    write(p, "chain.pem", dev.cert_pem() + &i.cert_pem());
    let run = |anchors: &[&str]| {
        let mut args = vec!["verify"];
        for a in anchors {
            args.extend(["--anchor", a]);
        }
        args.extend(["--max-chain-length", "3", "chain.pem"]);
        certs_ok(p, &args)
    };
    let clean = run(&["root.crt"]);
    assert!(clean.starts_with("valid: CN=cli-dev\n"), "{clean}");
    assert_eq!(run(&["root.crt", "fake.crt"]), clean);
    assert_eq!(run(&["fake.crt", "root.crt"]), clean);

    // extKeyUsage { clientAuth }, critical.
    let crit = common::custom_device(&r, |p| {
        p.extended_key_usages = Vec::new();
        let mut e = rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![
                0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
            ],
        );
        e.set_criticality(true);
        p.custom_extensions = vec![e];
    });
    write(p, "crit.crt", crit.cert_pem());
    let (code, line) = certs_err(p, &["verify", "--anchor", "root.crt", "crit.crt"]);
    let mut b = certs::TrustStore::builder();
    b.anchor(certs::AnchorSpec {
        tenant: "broker".into(),
        status: certs::AnchorStatus::Enabled,
        auto_registration: false,
        cert_der: r.cert_der.as_ref().to_vec(),
    })
    .expect("anchor");
    let handshake = b
        .build()
        .verify_device(std::slice::from_ref(&crit.cert_der), certs::UnixTime::now())
        .expect_err("refused");
    assert_eq!(
        (code, line.as_str()),
        (
            1,
            format!("certs: invalid: {handshake} [{}]", handshake.label()).as_str()
        )
    );
    assert_eq!(
        line,
        "certs: invalid: the device certificate marks its ExtendedKeyUsage critical, which device certificates may not [critical_extended_key_usage]"
    );
}

/// `certs` with extra environment variables.
fn certs_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_certs"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run certs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The public key of a private key or certificate, as openssl prints it.
fn openssl_pubkey(p: &Path, args: &[&str]) -> String {
    openssl_ok(p, args)
}

#[test]
fn csr_made_here_is_signed_without_its_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    // On the device: a key and a request; the key never goes to the CA.
    write(p, "device-pass", "device secret\n");
    let out = certs_ok(
        p,
        &[
            "csr",
            "--cn",
            "dev-77",
            "--out",
            "device",
            "--key-passphrase-file",
            "device-pass",
        ],
    );
    assert!(out.contains("device/dev-77.key (encrypted)"), "{out}");
    let verified = openssl_ok(p, &["req", "-in", "device/dev-77.csr", "-verify", "-noout"]);
    assert!(verified.contains("verify OK"), "{verified}");
    let subject = openssl_ok(
        p,
        &["req", "-in", "device/dev-77.csr", "-noout", "-subject"],
    );
    assert!(subject.contains("CN = dev-77"), "{subject}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(p.join("device/dev-77.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // At the CA: only the request travels.
    std::fs::create_dir(p.join("ca-side")).expect("dir");
    std::fs::copy(p.join("device/dev-77.csr"), p.join("ca-side/dev-77.csr")).expect("copy");
    let out = certs_ok(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "inter",
            "--csr",
            "ca-side/dev-77.csr",
            "--out",
            "ca-side",
        ],
    );
    assert!(out.contains("as a device certificate"), "{out}");
    openssl_ok(
        p,
        &[
            "verify",
            "-CAfile",
            "root/ca.crt",
            "-untrusted",
            "inter/ca.crt",
            "ca-side/dev-77.crt",
        ],
    );
    // The certificate is for the device's key (read only here, with its passphrase).
    let cert_key = openssl_pubkey(
        p,
        &["x509", "-in", "ca-side/dev-77.crt", "-noout", "-pubkey"],
    );
    let device_key = openssl_pubkey(
        p,
        &[
            "pkey",
            "-in",
            "device/dev-77.key",
            "-passin",
            "file:device-pass",
            "-pubout",
        ],
    );
    assert_eq!(cert_key, device_key);
    let ext = openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "ca-side/dev-77.crt",
            "-noout",
            "-ext",
            "basicConstraints,extendedKeyUsage",
        ],
    );
    assert!(
        ext.contains("CA:FALSE") && ext.contains("TLS Web Client Authentication"),
        "{ext}"
    );
    // certs verify agrees, with the chain file written next to it.
    certs_ok(
        p,
        &[
            "verify",
            "--anchor",
            "root/ca.crt",
            "--max-chain-length",
            "3",
            "ca-side/dev-77-chain.pem",
        ],
    );
    // Recorded in the CA's index as issued for a request.
    let index: serde_json::Value =
        serde_json::from_slice(&read(p, "inter/issued.json")).expect("issued.json");
    let serial = openssl_ok(
        p,
        &["x509", "-in", "ca-side/dev-77.crt", "-noout", "-serial"],
    );
    let entry = index["issued"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["subject"] == "CN=dev-77")
        .expect("recorded")
        .clone();
    assert_eq!(entry["fromCsr"], true);
    assert_eq!(entry["profile"], "device");
    assert_eq!(
        entry["serial"].as_str().map(str::to_ascii_uppercase),
        Some(serial.trim().trim_start_matches("serial=").to_string())
    );
    // `certs issue` records too.
    assert!(index["issued"]
        .as_array()
        .expect("list")
        .iter()
        .any(|e| e["subject"] == "CN=dev-1" && e["fromCsr"] == false));
}

#[test]
fn openssl_requests_get_the_profile_not_what_they_ask() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Server CA",
            "--o",
            "Acme",
            "--ou",
            "Ops",
            "--c",
            "DE",
            "--key-type",
            "rsa2048",
            "--out",
            "sca",
        ],
    );
    // A server request made by openssl, asking for codeSigning as well.
    openssl_ok(
        p,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-subj",
            "/C=DE/O=Acme/OU=Ops/CN=mqtt.example.com",
            "-addext",
            "subjectAltName=DNS:mqtt.example.com,IP:192.0.2.7",
            "-addext",
            "extendedKeyUsage=codeSigning",
            "-out",
            "srv.csr",
        ],
    );
    certs_ok(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "sca",
            "--csr",
            "srv.csr",
            "--profile",
            "server",
            "--out",
            "out",
        ],
    );
    let ext = openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "out/mqtt.example.com.crt",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    );
    assert!(
        ext.contains("DNS:mqtt.example.com") && ext.contains("IP Address:192.0.2.7"),
        "{ext}"
    );
    assert!(ext.contains("TLS Web Server Authentication"), "{ext}");
    assert!(
        !ext.contains("Code Signing"),
        "the request's EKU is not copied: {ext}"
    );
    // The openssl key, encrypted by certs, with the signed certificate passes the server
    // requirements; its passphrase comes from a file.
    write(p, "srv-pass", "server key pw\n");
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "srv.key",
            "--to",
            "pem",
            "--out",
            "srv-enc.key",
            "--key-passphrase-file",
            "srv-pass",
        ],
    );
    certs_ok(
        p,
        &[
            "check",
            "--crt",
            "out/mqtt.example.com.crt",
            "--key",
            "srv-enc.key",
            "--pass-file",
            "srv-pass",
            "--chain",
            "sca/ca.crt",
        ],
    );
    let r = certs(
        p,
        &[
            "check",
            "--crt",
            "out/mqtt.example.com.crt",
            "--key",
            "srv-enc.key",
            "--chain",
            "sca/ca.crt",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "FAIL  Private key is readable: The private key is encrypted: a passphrase is required"
        ),
        "{}",
        r.stdout
    );
    // The plain openssl key with the signed certificate passes the server requirements.
    certs_ok(
        p,
        &[
            "check",
            "--crt",
            "out/mqtt.example.com.crt",
            "--key",
            "srv.key",
            "--chain",
            "sca/ca.crt",
        ],
    );

    // A request for CA:true: refused unless an intermediate is meant.
    openssl_ok(
        p,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "sub.key",
            "-subj",
            "/CN=Sub CA",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-out",
            "sub.csr",
        ],
    );
    let (code, line) = certs_err(
        p,
        &[
            "sign-csr", "--ca-dir", "sca", "--csr", "sub.csr", "--out", "out",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(
        line,
        "certs: sub.csr: The certificate signing request asks for a CA certificate (BasicConstraints CA:true); only --profile intermediate issues a CA"
    );
    assert!(!p.join("out/Sub_CA.crt").exists());
    certs_ok(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "sca",
            "--csr",
            "sub.csr",
            "--profile",
            "intermediate",
            "--pathlen",
            "0",
            "--out",
            "out",
        ],
    );
    let bc = openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "out/Sub_CA.crt",
            "-noout",
            "-ext",
            "basicConstraints,keyUsage",
        ],
    );
    assert!(
        bc.contains("CA:TRUE, pathlen:0") && bc.contains("Certificate Sign"),
        "{bc}"
    );
    openssl_ok(p, &["verify", "-CAfile", "sca/ca.crt", "out/Sub_CA.crt"]);
}

#[test]
fn bad_requests_and_passphrases_are_one_exact_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    write(p, "ca-pass", "ca secret\n");
    certs_ok(
        p,
        &[
            "ca",
            "create",
            "--cn",
            "Enc CA",
            "--out",
            "ca",
            "--key-passphrase-file",
            "ca-pass",
        ],
    );
    let key = String::from_utf8(read(p, "ca/ca.key")).expect("utf8");
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );
    // openssl reads it with the passphrase, and names the scheme.
    openssl_ok(
        p,
        &[
            "pkey",
            "-in",
            "ca/ca.key",
            "-passin",
            "file:ca-pass",
            "-noout",
        ],
    );
    let (ok, _) = openssl(
        p,
        &[
            "pkey",
            "-in",
            "ca/ca.key",
            "-passin",
            "pass:wrong",
            "-noout",
        ],
    );
    assert!(!ok);
    let asn1 = openssl_ok(p, &["asn1parse", "-in", "ca/ca.key"]);
    for alg in ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"] {
        assert!(asn1.contains(alg), "{alg} in {asn1}");
    }
    certs_ok(p, &["csr", "--cn", "dev-5", "--out", "req"]);

    // The CA key's passphrase: missing, wrong (file, environment), then right.
    let (_, line) = certs_err(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--csr",
            "req/dev-5.csr",
            "--out",
            "out",
        ],
    );
    assert_eq!(
        line,
        "certs: ca/ca.key: The private key is encrypted: a passphrase is required"
    );
    write(p, "wrong-pass", "not it\n");
    let (_, line) = certs_err(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "wrong-pass",
            "--csr",
            "req/dev-5.csr",
            "--out",
            "out",
        ],
    );
    assert_eq!(
        line,
        "certs: ca/ca.key: Passphrase does not match to the key"
    );
    let r = certs_env(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--csr",
            "req/dev-5.csr",
            "--out",
            "out",
        ],
        &[("CERTS_CA_PASSPHRASE", "not it either")],
    );
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim(),
        "certs: ca/ca.key: Passphrase does not match to the key"
    );
    assert!(!p.join("out").exists(), "nothing written");
    write(p, "empty-pass", "\n");
    let (_, line) = certs_err(
        p,
        &[
            "issue",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "empty-pass",
            "--cn",
            "x",
            "--out",
            "out",
        ],
    );
    assert_eq!(line, "certs: empty-pass: the passphrase is empty");

    // Malformed and forged requests.
    write(
        p,
        "garbage.csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    );
    let (_, line) = certs_err(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "ca-pass",
            "--csr",
            "garbage.csr",
            "--out",
            "out",
        ],
    );
    assert!(
        line.starts_with(
            "certs: garbage.csr: Malformed certificate signing request: not a PKCS#10 request"
        ),
        "{line}"
    );
    write(p, "cert.csr", read(p, "ca/ca.crt"));
    let (_, line) = certs_err(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "ca-pass",
            "--csr",
            "cert.csr",
            "--out",
            "out",
        ],
    );
    assert_eq!(
        line,
        "certs: cert.csr: Malformed certificate signing request: no -----BEGIN CERTIFICATE REQUEST----- block found"
    );
    // The subject changed after signing: the signature no longer verifies.
    openssl_ok(
        p,
        &[
            "req",
            "-in",
            "req/dev-5.csr",
            "-outform",
            "DER",
            "-out",
            "dev-5.der",
        ],
    );
    let mut der = read(p, "dev-5.der");
    let at = der
        .windows(5)
        .position(|w| w == b"dev-5")
        .expect("CN in the request");
    der[at + 4] = b'6';
    write(p, "forged.der", &der);
    let (ok, text) = openssl(
        p,
        &[
            "req",
            "-in",
            "forged.der",
            "-inform",
            "DER",
            "-verify",
            "-noout",
        ],
    );
    assert!(
        !ok || text.contains("verify failure"),
        "openssl agrees it is forged: {text}"
    );
    let (_, line) = certs_err(
        p,
        &[
            "sign-csr",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "ca-pass",
            "--csr",
            "forged.der",
            "--out",
            "out",
        ],
    );
    assert_eq!(
        line,
        "certs: forged.der: The certificate signing request's signature does not verify with the public key it carries: it was altered, or not signed by that key"
    );
    assert!(!p.join("out").exists(), "nothing written");

    // Keys issued with a passphrase from the environment.
    let r = certs_env(
        p,
        &[
            "issue",
            "--ca-dir",
            "ca",
            "--ca-passphrase-file",
            "ca-pass",
            "--cn",
            "dev-6",
            "--out",
            "devs",
        ],
        &[("CERTS_KEY_PASSPHRASE", "device pass")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    openssl_ok(
        p,
        &[
            "pkey",
            "-in",
            "devs/dev-6.key",
            "-passin",
            "pass:device pass",
            "-noout",
        ],
    );
    let (ok, _) = openssl(
        p,
        &[
            "pkey",
            "-in",
            "devs/dev-6.key",
            "-passin",
            "pass:",
            "-noout",
        ],
    );
    assert!(!ok, "the key is not readable without the passphrase");
}

#[test]
fn truststores_and_single_object_conversions() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path();
    pki(p);
    write(p, "p12-pass", "store pw\n");
    // A truststore: certificates only, each a trusted certificate bag.
    certs_ok(
        p,
        &[
            "bundle",
            "--cert",
            "inter/ca.crt",
            "--chain",
            "root/ca.crt",
            "--out",
            "trust.p12",
            "--password-file",
            "p12-pass",
        ],
    );
    let info = openssl_ok(
        p,
        &[
            "pkcs12",
            "-in",
            "trust.p12",
            "-passin",
            "pass:store pw",
            "-info",
            "-nokeys",
        ],
    );
    assert_eq!(info.matches("BEGIN CERTIFICATE").count(), 2, "{info}");
    assert_eq!(
        info.matches("2.16.840.1.113894.746875.1.1").count(),
        2,
        "{info}"
    );
    assert!(
        info.contains("friendlyName: issuing ca") && info.contains("friendlyName: root ca"),
        "{info}"
    );
    assert!(!info.contains("Shrouded Keybag"), "{info}");
    let keys = openssl_ok(
        p,
        &[
            "pkcs12",
            "-in",
            "trust.p12",
            "-passin",
            "pass:store pw",
            "-nocerts",
            "-nodes",
        ],
    );
    assert!(!keys.contains("PRIVATE KEY"), "{keys}");
    // ... and back to PEM with certs.
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "trust.p12",
            "--password",
            "store pw",
            "--out",
            "trust.pem",
        ],
    );
    assert_eq!(pem_certs(p, "trust.pem").len(), 2);

    // Certificate alone: PEM -> PKCS#12 -> DER, equal to openssl's DER.
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "devs/dev-1.crt",
            "--to",
            "p12",
            "--out",
            "dev-1-cert.p12",
            "--out-password-file",
            "p12-pass",
        ],
    );
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "dev-1-cert.p12",
            "--in-passphrase-file",
            "p12-pass",
            "--to",
            "der",
            "--out",
            "dev-1-back.der",
        ],
    );
    openssl_ok(
        p,
        &[
            "x509",
            "-in",
            "devs/dev-1.crt",
            "-outform",
            "DER",
            "-out",
            "ossl.der",
        ],
    );
    assert_eq!(read(p, "dev-1-back.der"), read(p, "ossl.der"));

    // Key alone: PEM -> PKCS#12 (openssl reads it with -nocerts) -> PEM.
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "devs/dev-1.key",
            "--to",
            "p12",
            "--out",
            "dev-1-key.p12",
            "--out-password-file",
            "p12-pass",
        ],
    );
    let key_only = openssl_ok(
        p,
        &[
            "pkcs12",
            "-in",
            "dev-1-key.p12",
            "-passin",
            "pass:store pw",
            "-info",
            "-nodes",
        ],
    );
    assert!(
        key_only.contains("Shrouded Keybag") && !key_only.contains("BEGIN CERTIFICATE"),
        "{key_only}"
    );
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "dev-1-key.p12",
            "--password",
            "store pw",
            "--to",
            "pem",
            "--out",
            "dev-1-key-back.pem",
        ],
    );
    let original = openssl_ok(p, &["pkey", "-in", "devs/dev-1.key", "-pubout"]);
    assert_eq!(
        openssl_ok(p, &["pkey", "-in", "dev-1-key-back.pem", "-pubout"]),
        original
    );
    // A key-only keystore made by openssl, read by certs.
    openssl_ok(
        p,
        &[
            "pkcs12",
            "-export",
            "-nocerts",
            "-inkey",
            "devs/dev-1.key",
            "-passout",
            "pass:x",
            "-out",
            "ossl-key.p12",
        ],
    );
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "ossl-key.p12",
            "--password",
            "x",
            "--to",
            "der",
            "--out",
            "k.der",
        ],
    );
    assert_eq!(
        openssl_ok(p, &["pkey", "-in", "k.der", "-inform", "DER", "-pubout"]),
        original
    );
    // Key alone out of a keystore holding both, encrypted on the way.
    certs_ok(
        p,
        &[
            "bundle",
            "--cert",
            "devs/dev-1.crt",
            "--key",
            "devs/dev-1.key",
            "--out",
            "both.p12",
            "--password-file",
            "p12-pass",
        ],
    );
    write(p, "key-pass", "key pw\n");
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "both.p12",
            "--password",
            "store pw",
            "--nocerts",
            "--to",
            "pem",
            "--out",
            "only-key.pem",
            "--key-passphrase-file",
            "key-pass",
        ],
    );
    let only_key = String::from_utf8(read(p, "only-key.pem")).expect("utf8");
    assert!(
        only_key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            && !only_key.contains("CERTIFICATE"),
        "{only_key}"
    );
    assert_eq!(
        openssl_ok(
            p,
            &[
                "pkey",
                "-in",
                "only-key.pem",
                "-passin",
                "file:key-pass",
                "-pubout"
            ]
        ),
        original
    );
    certs_ok(
        p,
        &[
            "convert",
            "--in",
            "both.p12",
            "--password",
            "store pw",
            "--nokeys",
            "--to",
            "der",
            "--out",
            "only-cert.der",
        ],
    );
    assert_eq!(read(p, "only-cert.der"), read(p, "ossl.der"));
    // No password for a PKCS#12 output; a wrong one for the input: nothing written.
    let (_, line) = certs_err(
        p,
        &[
            "convert",
            "--in",
            "devs/dev-1.crt",
            "--to",
            "p12",
            "--out",
            "x.p12",
        ],
    );
    assert_eq!(
        line,
        "certs: a PKCS#12 output needs a password: a password file, CERTS_P12_PASSWORD or a password argument"
    );
    let (_, line) = certs_err(
        p,
        &[
            "convert",
            "--in",
            "only-key.pem",
            "--password",
            "nope",
            "--out",
            "x.pem",
            "--to",
            "pem",
        ],
    );
    assert_eq!(
        line,
        "certs: only-key.pem: Passphrase does not match to the key"
    );
    assert!(!p.join("x.p12").exists() && !p.join("x.pem").exists());
}
