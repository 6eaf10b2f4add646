//! The benchmark's "direct" comparison: the product's embedded rumqttd reached without the
//! front-end. The real broker binary runs here on 127.0.0.1 with
//! `embedded.transport = "loopback"`; its rumqttd listeners accept only the per-process
//! credential that the broker writes to `DATA_DIR/backend-credential` (mode 0600) and
//! names in its "embedded rumqttd listening on loopback" log line. The load generator
//! reaches rumqttd with that file (`--plain --credentials-file`), and is refused without it.
//!
//! The broker binary is `target/<profile>/broker` next to this test's executable (built by
//! `cargo test --workspace`; alone: `cargo build -p broker --bin broker` first), or the
//! file named by `LOADTEST_BROKER_BIN`. Without it the test fails (it does not skip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::{Config, Login, Report, Scenario};

fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LOADTEST_BROKER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<this test> -> target/<profile>/broker
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(format!("broker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the broker binary {} does not exist: build it with `cargo build -p broker --bin broker` \
         (or set LOADTEST_BROKER_BIN)",
        bin.display()
    );
    bin
}

/// The broker process, killed when dropped.
struct Broker {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the broker's "embedded rumqttd listening on loopback" line says.
struct Listening {
    v4: Vec<String>,
    credential_file: PathBuf,
    line: String,
}

impl Broker {
    /// Starts the broker with `toml` as its configuration, once `prepare` has seen the
    /// (new, empty) data directory.
    fn start(toml: &str, prepare: impl FnOnce(&Path)) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        prepare(&data);
        let config = dir.path().join("broker.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("broker.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(broker_binary())
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--mqtt-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--est-listen",
                "127.0.0.1:0",
            ])
            .env_remove("RUST_LOG")
            .env("BROKER_ADMIN_PASSWORD", "backend-direct-test-admin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the broker");
        Broker {
            child,
            log,
            _dir: dir,
            data,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 60 s) for the log line `needle` and returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the broker exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the broker's log within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listening(&mut self) -> Listening {
        let line = self.wait_line("embedded rumqttd listening on loopback");
        let v4 = field(&line, "v4=")
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|a| a.trim().trim_matches('"').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let credential_file = PathBuf::from(field(&line, "credential_file="));
        Listening {
            v4,
            credential_file,
            line,
        }
    }
}

/// The value of `name` (e.g. `v4=`) in a tracing log line: up to the next space.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        + name.len();
    let rest = &line[start..];
    rest.split(' ').next().unwrap_or(rest)
}

const LOOPBACK: &str = "[embedded]\ntransport = \"loopback\"\nv4_listeners = 1\nv5_listeners = 1\n";

fn plain(broker: &str, login: Option<Login>) -> Config {
    Config {
        broker: broker.into(),
        plain: true,
        login,
        upload: false,
        server_ca: None,
        devices: 5,
        messages: 4,
        qos: 1,
        subscribers: 1,
        publish_interval: Duration::from_millis(10),
        scenario: Scenario::Storm,
        concurrency: 5,
        duration: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        source_ips: Some(vec!["127.0.0.1".parse().expect("ip")]),
        ..Config::default()
    }
}

fn assert_refused(report: &Report, devices: u64) {
    let summary = report.summary_table();
    assert_eq!(report.connect.succeeded, 0, "{summary}");
    assert_eq!(report.connect.failed, devices, "{summary}");
    // rumqttd closes the connection without a CONNACK when the login does not match.
    assert_eq!(
        report.errors.get("connack: closed by broker").copied(),
        Some(devices),
        "errors: {:?}\n{summary}",
        report.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_rumqttd_is_reached_with_the_credential_file_and_refused_without() {
    let mut broker = Broker::start(LOOPBACK, |_| {});
    let listening = broker.listening();
    assert_eq!(listening.v4.len(), 1, "{}", listening.line);
    let v4 = listening.v4[0].clone();

    // The file is in the data directory, the owner's alone, and holds the login.
    assert_eq!(
        listening.credential_file,
        broker.data.join("backend-credential"),
        "{}",
        listening.line
    );
    let meta = std::fs::metadata(&listening.credential_file).expect("credential file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert!(meta.is_file());
    let login = Login::from_file(&listening.credential_file).expect("credential file parses");
    assert_eq!(login.username, "!front-end");
    assert_eq!(login.password.len(), 64, "256 random bits, hex");
    assert!(
        !broker.log().contains(&login.password),
        "the password is in the broker's log"
    );

    // With the credential: every device connects, every message arrives.
    let report = loadtest::run(plain(&v4, Some(login.clone())))
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}\nbroker log:\n{}", broker.log()));
    let summary = report.summary_table();
    assert!(report.params.plain, "{summary}");
    assert!(report.errors.is_empty(), "{:?}\n{summary}", report.errors);
    assert_eq!(report.connect.succeeded, 5, "{summary}");
    assert_eq!(report.publish.acked, 20, "{summary}");
    assert_eq!(report.messages.expected, 20, "{summary}");
    assert_eq!(report.messages.received, 20, "{summary}");
    assert_eq!(report.messages.lost, 0, "{summary}");

    // Without it, or with a wrong password: refused.
    let anonymous = Config {
        subscribers: 0,
        messages: 0,
        devices: 3,
        ..plain(&v4, None)
    };
    let report = loadtest::run(anonymous.clone()).await.expect("run");
    assert_refused(&report, 3);
    let wrong = Login {
        password: "0".repeat(64),
        ..login
    };
    let report = loadtest::run(Config {
        login: Some(wrong),
        ..anonymous.clone()
    })
    .await
    .expect("run");
    assert_refused(&report, 3);
    // A subscriber without the credential stops the run with the exact reason.
    let err = loadtest::run(Config {
        subscribers: 1,
        ..anonymous
    })
    .await
    .expect_err("subscriber refused");
    assert!(
        err.to_string().ends_with(": connack: closed by broker"),
        "{err}"
    );
}

#[test]
fn in_process_transport_listens_nowhere_and_leaves_no_credential_file() {
    // A file from an earlier start with the loopback transport is removed.
    let mut broker = Broker::start("[embedded]\ntransport = \"in_process\"\n", |data| {
        std::fs::write(data.join("backend-credential"), "!front-end\nstale\n").expect("stale file");
    });
    let stale = broker.data.join("backend-credential");
    let line = broker.wait_line("embedded rumqttd reached in-process only");
    assert!(!line.contains("credential_file"), "{line}");
    assert!(!stale.exists(), "the stale credential file is still there");
}
