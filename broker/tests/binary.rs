//! The real `broker` binary: print-config, start on port 0, import-certificate from a
//! second process picked up without a restart, SIGTERM drains and exits 0.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_broker");

#[test]
fn print_config_is_valid_toml_with_the_defaults() {
    let out = Command::new(BIN).arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: broker::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, broker::Config::default());
    assert!(text.contains("mqtt_listen = \"0.0.0.0:8883\""));
}

#[test]
fn bad_flags_and_config_are_one_clear_line() {
    let out = Command::new(BIN)
        .args(["--backend", "ftp://x", "print-config"])
        .output()
        .unwrap();
    // print-config ignores run flags; a run with a bad backend fails clearly.
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--backend", "ftp://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backend must be 'embedded'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_certificate_while_running_and_sigterm() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), ADMIN_PW);
    let listening = &broker.listening;
    let saw_warning = broker
        .before
        .iter()
        .any(|l| l.contains("self-signed certificates are for tests only"));
    let mqtt = broker.addr("mqtt_addr");
    // The sessions' runtime got its default: a worker per core but the embedded router's.
    let workers = format!(
        "session_threads={}",
        broker::Config::default().session_threads()
    );
    assert!(
        listening.split_whitespace().any(|t| t == workers),
        "{listening}"
    );
    assert!(saw_warning, "self-signed warning logged at first start");
    assert!(!std::fs::read_to_string(dir.path().join("server.crt"))
        .unwrap()
        .is_empty());

    // Import a new server certificate from a second process.
    let root = certs::issue::ca(
        &certs::issue::Subject::cn("Ops Root"),
        certs::issue::Validity::days(30),
        certs::issue::KeyType::P256,
        &Default::default(),
        None,
    )
    .unwrap();
    let server = certs::issue::server(
        &certs::issue::Subject::cn("localhost"),
        &["localhost".into()],
        certs::issue::Validity::days(30),
        certs::issue::KeyType::P256,
        Some(&root.issuer().unwrap()),
        &[],
    )
    .unwrap();
    std::fs::write(dir.path().join("new.crt"), server.cert_pem()).unwrap();
    std::fs::write(dir.path().join("new.key"), server.key_pem()).unwrap();
    let out = Command::new(BIN)
        .env("BROKER_ADMIN_PASSWORD", ADMIN_PW)
        .args(["import-certificate", "--no-validation", "--data-dir"])
        .arg(dir.path())
        .arg("--crt")
        .arg(dir.path().join("new.crt"))
        .arg("--key")
        .arg(dir.path().join("new.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The running broker serves it within a few seconds.
    let cfg = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&root.cert_pem()))
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut switched = false;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let tcp = tokio::net::TcpStream::connect(mqtt).await.unwrap();
        // The server certificate is checked before the client's: a handshake error
        // about a missing client certificate means the server chain verified.
        let r = connector
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await;
        let verified_server = match &r {
            Ok(_) => true,
            Err(e) => {
                !e.to_string().contains("UnknownIssuer")
                    && !e.to_string().contains("invalid peer certificate")
            }
        };
        if verified_server {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(switched, "new certificate served without a restart");

    // SIGTERM: graceful exit with status 0 within the grace period.
    let t0 = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(s) = broker.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "broker did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
