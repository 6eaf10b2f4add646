//! The README's quick start, run as it stands: its shell block is cut out of README.md
//! and run by bash in an empty directory, with the `broker` and `certs` binaries of this
//! build first on the PATH and free ports in MQTT_PORT / ADMIN_PORT (which the block
//! honours). It must print the message the subscriber received, every time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The first ```sh block after the README heading that starts with `heading`.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split(&format!("\n{heading}"))
        .nth(1)
        .unwrap_or_else(|| panic!("a '{heading}' section"));
    let body = section
        .split("```sh\n")
        .nth(1)
        .unwrap_or_else(|| panic!("a sh block under '{heading}'"));
    body.split("\n```")
        .next()
        .expect("closed block")
        .to_string()
}

fn quick_start_block() -> String {
    readme_block("## Quick start")
}

/// A port nothing listens on right now, below Linux's ephemeral range (32768-60999):
/// a port handed out by `bind(0)` could be given to another test's socket, even an
/// outgoing connection, before the quick start's broker binds it.
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    (0..2000u32)
        .map(|i| 20_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 12_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 20000-31999")
}

/// The directory holding this build's binaries: `broker`, and `certs` (built by
/// `cargo test --workspace`, or `cargo build -p certs`).
fn bin_dir() -> PathBuf {
    let broker = Path::new(env!("CARGO_BIN_EXE_broker"));
    let dir = broker.parent().expect("bin dir").to_path_buf();
    assert!(
        dir.join("certs").is_file(),
        "{} has no certs binary: run `cargo build -p certs` first (cargo test --workspace builds it)",
        dir.display()
    );
    dir
}

/// Kills the block's whole process group (the broker it left running in the
/// background included) when the test ends, however it ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Runs `block` with bash in an empty directory, the build's binaries first on the
/// PATH, free loopback ports in MQTT_PORT / ADMIN_PORT / EST_PORT (the EST listener
/// bound to that port), and the broker it starts killed at the end: (status, stdout,
/// stderr).
fn run_block(block: &str) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::fs::File::create(dir.path().join("stdout.txt")).expect("stdout file");
    let err = std::fs::File::create(dir.path().join("stderr.txt")).expect("stderr file");
    let mqtt_port = free_port();
    let admin_port = std::iter::repeat_with(free_port)
        .find(|p| *p != mqtt_port)
        .expect("a second port");
    let est_port = std::iter::repeat_with(free_port)
        .find(|p| *p != mqtt_port && *p != admin_port)
        .expect("a third port");
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new("bash")
            .arg("-c")
            .arg(block)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("MQTT_PORT", mqtt_port.to_string())
            .env("ADMIN_PORT", admin_port.to_string())
            .env("EST_PORT", est_port.to_string())
            // Servers in tests listen on loopback only.
            .env("LISTEN_ADDR", "127.0.0.1")
            // Not part of the quick start block: the default metrics and EST ports may
            // be taken on a machine running other brokers.
            .env("BROKER_METRICS_LISTEN", "127.0.0.1:0")
            .env("BROKER_EST_LISTEN", format!("127.0.0.1:{est_port}"))
            .env_remove("BROKER_ADMIN_PASSWORD")
            .env_remove("BROKER_DATA_DIR")
            .env_remove("BROKER_CONFIG")
            .env("RUST_LOG", "info,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("bash")
    };
    let _group = Group(child.id());
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(dir.path().join("stdout.txt")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the block did not finish in 180 s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    (status, stdout, stderr)
}

#[test]
fn readme_quick_start_delivers_the_message() {
    let block = quick_start_block();
    assert!(block.contains("broker health --wait"), "{block}");
    let (status, stdout, stderr) = run_block(&block);
    assert!(
        status.success(),
        "the quick start failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l == "sensors/temperature 21.5"),
        "no message\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ready: MQTT on"), "{stdout}");
    // Nothing failed on the way: no curl error, no refused handshake.
    assert!(!stderr.contains("curl: ("), "{stderr}");
    assert!(!stderr.contains("handshake refused"), "{stderr}");
}

/// The README's EST block, run as it stands after the quick start (it continues it):
/// enrollment with a one-time secret, a connection, a renewal with the certificate, a
/// connection with the renewed one, with curl, openssl and mosquitto_pub alone.
#[test]
fn readme_est_block_enrolls_and_renews_with_curl_and_openssl() {
    let est = readme_block("## Enrollment over EST");
    assert!(est.contains("simplereenroll"), "{est}");
    let (status, stdout, stderr) = run_block(&format!("set -e\n{}\n{est}", quick_start_block()));
    assert!(
        status.success(),
        "the EST block failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("subject=CN = sensor-7") || stdout.contains("subject=CN=sensor-7"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "renewed and connected"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("EST renewal: certificate issued"),
        "{stderr}"
    );
    assert!(!stderr.contains("curl: ("), "{stderr}");
}

/// The README's server-certificate block, run as it stands: the certificate
/// `certs issue --server` makes with its defaults passes `certs check` and is imported.
#[test]
fn readme_server_certificate_block_runs() {
    let block = readme_block("### The server certificate");
    let dir = tempfile::tempdir().expect("tmp");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-c", &block])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("BROKER_ADMIN_PASSWORD", "readme-block-1")
        .env_remove("BROKER_DATA_DIR")
        .env_remove("BROKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("certificate meets every requirement"),
        "{stdout}"
    );
    assert!(stdout.contains("imported server certificate"), "{stdout}");
}

/// Links in the docs point inside the repository and resolve; admin API URLs are the
/// HTTPS listener's; the Docker build context leaves secrets and build output out; no
/// tracked file is ignored by .gitignore.
#[test]
fn docs_point_at_what_exists() {
    let mut docs = vec![
        repo().join("README.md"),
        repo().join("admin-api/README.md"),
        repo().join("loadtest/README.md"),
    ];
    for e in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push(p);
        }
    }
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("doc");
        let base = doc.parent().expect("dir");
        // Markdown links: ](target)
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = base.join(target);
            assert!(
                resolved.exists(),
                "{}: link to {target} does not resolve",
                doc.display()
            );
            let inside = resolved
                .canonicalize()
                .expect("canonical")
                .starts_with(repo().canonicalize().expect("repo"));
            assert!(
                inside,
                "{}: {target} is outside the repository",
                doc.display()
            );
        }
        // The admin API is HTTPS on 8443 (18443 through the cluster profile's load
        // balancer); other local ports are the metrics (9464,
        // 9465 for a second node), Prometheus (9090) and Grafana (3000).
        for scheme in ["http://", "https://"] {
            for part in text.split(scheme).skip(1) {
                let host_port = part
                    .split(|c: char| c == '/' || c.is_whitespace() || c == '`' || c == ')')
                    .next()
                    .unwrap_or_default();
                let Some((host, port)) = host_port.rsplit_once(':') else {
                    continue;
                };
                let numeric = port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty();
                if !matches!(host, "localhost" | "127.0.0.1") || !(numeric || port == "$ADMIN_PORT")
                {
                    continue;
                }
                let ok = match port {
                    "8443" | "18443" | "$ADMIN_PORT" | "8444" => scheme == "https://",
                    "9464" | "9465" | "9090" | "3000" => scheme == "http://",
                    _ => false,
                };
                assert!(ok, "{}: {scheme}{host_port}", doc.display());
            }
        }
    }
    let dockerignore =
        std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    for must in ["/target", "/data", "/pki"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == must),
            ".dockerignore lacks {must}"
        );
    }
    let git = Command::new("git")
        .args(["ls-files", "--cached", "--ignored", "--exclude-standard"])
        .current_dir(repo())
        .output()
        .expect("git");
    assert!(
        git.status.success(),
        "{}",
        String::from_utf8_lossy(&git.stderr)
    );
    let ignored = String::from_utf8_lossy(&git.stdout);
    assert!(ignored.trim().is_empty(), "tracked but ignored: {ignored}");
}
