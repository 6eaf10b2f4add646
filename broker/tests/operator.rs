//! The operator's first hour with the real binary: one broker per data directory, a
//! start that cannot listen changes nothing, `broker health` says when clients can
//! come, and `broker import-certificate` refuses what would break every client.

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_broker");

/// The binary with `args`, its own ports on loopback, no password from the test's
/// environment; (success, stdout, stderr).
fn run(args: &[&str], dir: &std::path::Path, password: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("BROKER_ADMIN_PASSWORD")
        .env("RUST_LOG", "info")
        .arg("--data-dir")
        .arg(dir)
        .args(args);
    if let Some(p) = password {
        cmd.env("BROKER_ADMIN_PASSWORD", p);
    }
    let out = cmd.output().expect("broker runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let env = start().await;
    let (ok, _, err) = run(&PORT_ZERO_ARGS, env.dir.path(), Some(ADMIN_PW));
    assert!(!ok, "a second broker started on the same data directory");
    assert!(
        err.contains(&format!(
            "the data directory {} is in use by another broker (pid {})",
            env.dir.path().display(),
            std::process::id()
        )),
        "{err}"
    );
    // Once the first one stopped, the directory is free.
    let Env { broker, dir, .. } = env;
    broker.expect("running").shutdown().await;
    let again = start_in(dir, |_| {}).await;
    assert!(again.broker.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_listen_writes_nothing() {
    install_provider();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let busy = [
        "--mqtt-listen",
        "127.0.0.1:0",
        "--admin-listen",
        &taken_addr,
        "--metrics-listen",
        "127.0.0.1:0",
        "--est-listen",
        "127.0.0.1:0",
    ];

    // A first start: neither a generated password nor a certificate is written.
    let fresh = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&busy, fresh.path(), None);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen on {taken_addr}")),
        "{err}"
    );
    assert!(!fresh.path().join("admin-password").exists(), "{err}");
    assert!(!fresh.path().join("server.crt").exists());
    assert!(!fresh.path().join("broker.db").exists());

    // A later start with another BROKER_ADMIN_PASSWORD: the password stays.
    let env = start().await;
    let server_crt = std::fs::read(env.dir.path().join("server.crt")).unwrap();
    let Env { broker, dir, .. } = env;
    broker.expect("running").shutdown().await;
    let (ok, _, err) = run(&busy, dir.path(), Some("another-password-1"));
    assert!(!ok, "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("server.crt")).unwrap(),
        server_crt
    );
    let config = broker::Config {
        data_dir: dir.path().to_path_buf(),
        mqtt_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        est_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let b = broker::start(config, None).await.unwrap();
    let http = https_client(&b.server_chain_pem());
    let url = format!("https://localhost:{}/tenant/tenants", b.admin_addr.port());
    for (pw, want) in [(ADMIN_PW, 200), ("another-password-1", 401)] {
        let status = http
            .get(&url)
            .basic_auth("management/admin", Some(pw))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), want, "{pw}");
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_clients_can_come() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing running: not ready, with the reason.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let (ok, _, err) = run(
        &[
            "health",
            "--mqtt-listen",
            &free_addr,
            "--admin-listen",
            &free_addr,
        ],
        dir.path(),
        None,
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "not ready: nothing accepts connections on MQTT {free_addr}"
        )),
        "{err}"
    );

    let env = start().await;
    let b = env.broker();
    let (ok, out, err) = run(
        &[
            "health",
            "--wait",
            "10",
            "--mqtt-listen",
            &b.mqtt_addr.to_string(),
            "--admin-listen",
            &b.admin_addr.to_string(),
        ],
        env.dir.path(),
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "ready: MQTT on {}, admin API on https://{}",
            b.mqtt_addr, b.admin_addr
        )),
        "{out}"
    );
    // server.crt must hold the served certificate: a stale one is not ready.
    let other = ca("Not The Server");
    std::fs::write(env.dir.path().join("server.crt"), other.cert_pem()).unwrap();
    let probe = broker::Config {
        data_dir: env.dir.path().to_path_buf(),
        mqtt_listen: b.mqtt_addr,
        admin_listen: b.admin_addr,
        ..Default::default()
    };
    let e = broker::health::check(&probe).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("does not hold the certificate the broker serves"),
        "{e}"
    );
}

/// `broker import-certificate` runs the requirements: a certificate TLS clients would
/// refuse as a server's (made by `openssl`, meeting every other row) is not imported.
#[test]
fn import_refuses_a_certificate_every_client_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    for (name, ext, sentence) in [
        (
            "client-only",
            "extendedKeyUsage=clientAuth",
            "without serverAuth",
        ),
        (
            "no-san",
            "extendedKeyUsage=serverAuth",
            "no DNS name or IP address in its subject alternative names",
        ),
    ] {
        let status = Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-days",
                "30",
                "-subj",
                "/C=DE/O=Acme/OU=Ops/CN=mqtt.example.com",
                "-addext",
                ext,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ])
            .output()
            .expect("openssl");
        assert!(status.status.success(), "{status:?}");
        let path = |f: String| dir.path().join(f).display().to_string();
        let (ok, _, err) = run(
            &[
                "import-certificate",
                "--crt",
                &path(format!("{name}.crt")),
                "--key",
                &path(format!("{name}.key")),
            ],
            dir.path(),
            Some(ADMIN_PW),
        );
        assert!(!ok, "{name} was imported");
        assert!(err.contains(sentence), "{name}: {err}");
    }
}

/// The README's PKI: root (pathlen 1) -> issuing CA -> devices. Trusting the root, a
/// device's chain is 3 long and refused until the tenant admin raises maxChainLength;
/// the issuing CA's CRL is refused with what to do, and accepted once the issuing CA is
/// trusted too, after which it revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pki_works_with_the_documented_steps() {
    use serde_json::json;
    let env = start().await;
    env.tenant("acme").await;
    let root = certs::issue::ca(
        &certs::issue::Subject::cn("Acme Root"),
        certs::issue::Validity::days(30),
        certs::issue::KeyType::P256,
        &certs::issue::CaOptions {
            path_len: Some(1),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let issuing = intermediate("Acme Issuing", &root);
    let sensor = device("sensor-2", &issuing);
    env.upload("acme", &root, true).await;
    let chain = [&issuing];
    let connect = || raw_connect_v4_from(&env, "127.0.0.1", "sensor-2", &sensor, &chain);
    let refused = connect().await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("AccessDenied")),
        "{refused:?}"
    );
    env.settings("acme", json!({"maxChainLength": 3})).await;
    assert_eq!(connect().await, Ok(vec![0x20, 0x02, 0x00, 0x00]));

    // The issuing CA's CRL, revoking sensor-2.
    let serial = certs::CertInfo::parse(sensor.cert_der.as_ref())
        .unwrap()
        .serial_hex;
    let crl = certs::issue::crl(
        &issuing.issuer().unwrap(),
        &[certs::issue::Revocation {
            serial_hex: serial,
            revoked_at: time::OffsetDateTime::now_utc(),
        }],
        1,
        7,
    )
    .unwrap();
    let upload_crl = || {
        env.http
            .post(format!("{}/tenant/tenants/acme/crls", env.base))
            .basic_auth("acme/admin", Some("acme-pw-1"))
            .body(crl.clone())
            .send()
    };
    let r = upload_crl().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("trust that issuing CA too"), "{text}");
    env.upload("acme", &issuing, true).await;
    let r = upload_crl().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let revoked = connect().await;
    assert!(
        revoked
            .as_ref()
            .is_err_and(|e| e.contains("CertificateRevoked")),
        "{revoked:?}"
    );
}
