//! `broker import-certificate`'s options, run as an operator runs them: the CRL check
//! through the configured egress policy, and a key stored encrypted that every later
//! start (and import) needs the passphrase of.

use std::path::Path;
use std::process::Command;

use certs::issue::{self, CaOptions, Issued, KeyType, Subject, Validity};

const BIN: &str = env!("CARGO_BIN_EXE_broker");
const ADMIN_PW: &str = "import-cli-admin-1";

fn subject(cn: &str) -> Subject {
    Subject {
        cn: cn.into(),
        o: Some("Acme".into()),
        ou: Some("Ops".into()),
        c: Some("DE".into()),
    }
}

/// An RSA root and a server certificate it signed (with `crl_urls`), written as
/// root.crt, NAME.crt and NAME.key in `dir`.
fn server_files(dir: &Path, name: &str, crl_urls: &[String]) -> Issued {
    let root = issue::ca(
        &subject("Import Root"),
        Validity::days(30),
        KeyType::Rsa2048,
        &CaOptions::default(),
        None,
    )
    .unwrap();
    let server = issue::server(
        &subject("mqtt.example.com"),
        &["mqtt.example.com".into()],
        Validity::days(30),
        KeyType::Rsa2048,
        Some(&root.issuer().unwrap()),
        crl_urls,
    )
    .unwrap();
    std::fs::write(dir.join("root.crt"), root.cert_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), server.cert_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), server.key_pem()).unwrap();
    server
}

/// `broker --data-dir DIR/data ARGS` with the admin password and `env`; (success,
/// stdout, stderr).
fn broker(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .env("BROKER_ADMIN_PASSWORD", ADMIN_PW)
        .env_remove("BROKER_SERVER_KEY_PASSPHRASE")
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_DATA_DIR")
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .output()
        .expect("broker runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn crl_check_goes_through_the_egress_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    server_files(p, "srv", &["http://127.0.0.1:9/root.crl".to_string()]);
    let import = [
        "import-certificate",
        "--crt",
        "srv.crt",
        "--key",
        "srv.key",
        "--chain",
        "root.crt",
    ];
    let (ok, _, err) = broker(p, &[&import[..], &["--crl-check"]].concat(), &[]);
    assert!(!ok, "imported although its CRL could not be checked");
    assert!(
        err.contains("Certificate validation failed: The CRL location 'http://127.0.0.1:9/root.crl' is refused: the address 127.0.0.1 is not allowed by the egress policy"),
        "{err}"
    );
    // Without the option the same certificate is imported.
    let (ok, out, err) = broker(p, &import, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("imported server certificate"), "{out}");
}

#[test]
fn a_key_stored_encrypted_needs_its_passphrase_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    server_files(p, "srv", &[]);
    std::fs::write(p.join("new-pass"), "stored key pw\n").unwrap();
    let (ok, out, err) = broker(
        p,
        &[
            "import-certificate",
            "--crt",
            "srv.crt",
            "--key",
            "srv.key",
            "--chain",
            "root.crt",
            "--new-passphrase-file",
            "new-pass",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("the key is stored encrypted: start the broker with BROKER_SERVER_KEY_PASSPHRASE set to the new passphrase"),
        "{out}"
    );
    // A start without the passphrase stops at once with what to do (and writes no
    // self-signed certificate over the stored one).
    let (ok, _, err) = broker(
        p,
        &[
            "--mqtt-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("the stored server key is encrypted (imported with a new passphrase): set BROKER_SERVER_KEY_PASSPHRASE to that passphrase"),
        "{err}"
    );
    // The next import opens the store with it; a wrong one is refused.
    server_files(p, "next", &[]);
    let next = [
        "import-certificate",
        "--crt",
        "next.crt",
        "--key",
        "next.key",
        "--chain",
        "root.crt",
    ];
    let (ok, _, err) = broker(p, &next, &[("BROKER_SERVER_KEY_PASSPHRASE", "wrong")]);
    assert!(!ok);
    assert!(
        err.contains("the stored server key cannot be read with BROKER_SERVER_KEY_PASSPHRASE: Passphrase does not match to the key"),
        "{err}"
    );
    let (ok, out, err) = broker(
        p,
        &next,
        &[("BROKER_SERVER_KEY_PASSPHRASE", "stored key pw")],
    );
    assert!(ok, "{err}");
    assert!(out.contains("imported server certificate"), "{out}");
    // Stored unencrypted this time: no passphrase needed any more.
    let (ok, _, err) = broker(p, &next, &[]);
    assert!(ok, "{err}");
}
