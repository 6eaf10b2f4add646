//! The README's quick start, run as it stands: its shell block is cut out of README.md
//! and run by bash in an empty directory, with the `broker` and `certs` binaries of this
//! build first on the PATH and free ports in MQTT_PORT / ADMIN_PORT (which the block
//! honours). It must print the message the subscriber received, every time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first ```sh block after the "## Quick start" heading.
fn quick_start_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("a '## Quick start' section");
    let body = section
        .split("```sh\n")
        .nth(1)
        .expect("a sh block in the quick start");
    body.split("\n```")
        .next()
        .expect("closed block")
        .to_string()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

#[test]
fn readme_quick_start_delivers_the_message() {
    let block = quick_start_block();
    assert!(block.contains("broker health --wait"), "{block}");
    let dir = tempfile::tempdir().expect("tmp");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::fs::File::create(dir.path().join("stdout.txt")).expect("stdout file");
    let err = std::fs::File::create(dir.path().join("stderr.txt")).expect("stderr file");
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new("bash")
            .arg("-c")
            .arg(&block)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("MQTT_PORT", free_port().to_string())
            .env("ADMIN_PORT", free_port().to_string())
            // Not part of the block: the default metrics port may be taken on a
            // machine running other brokers.
            .env("BROKER_METRICS_LISTEN", "127.0.0.1:0")
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
        panic!("the quick start did not finish in 180 s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
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
