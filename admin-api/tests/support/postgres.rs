//! A real PostgreSQL server for tests, started from Debian's binaries: `initdb` in a
//! temporary directory, `postgres` on a free loopback port (and a Unix socket in the
//! same directory), stopped when dropped. As root the server runs as `nobody`, since
//! PostgreSQL refuses to run as root; otherwise as the current user. CI installs the
//! `postgresql` package (`.ci/run`); without it these tests fail, they do not skip.
//!
//! Shared by the admin-api and broker tests (`#[path]` module).
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the tests connect as, and its password (scram-sha-256 over TCP).
pub const PG_USER: &str = "frontend";
pub const PG_PASSWORD: &str = "pg-test-password-9f3k";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// (uid, gid) the server runs as, when started as root.
    run_as: Option<(u32, u32)>,
    extra: Vec<String>,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install the \
             `postgresql` package (.ci/run does)"
        )
    })
}

/// A port nothing listens on right now, below Linux's ephemeral range (32768-60999),
/// for a server started (and restarted) by a test: a port handed out by `bind(0)` and
/// released could be given to another socket, even an outgoing connection, before the
/// server binds it.
fn low_free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    (0..4000u32)
        .map(|_| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16
        })
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 20000-31999")
}

/// uid and gid of `nobody` (from /etc/passwd).
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&"nobody") || f.len() < 4 {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .expect("user nobody")
}

fn is_root() -> bool {
    // The owner of a file we just created is our effective uid.
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.as_file().metadata().unwrap()) == 0
}

/// (uid, gid) the server runs as: `nobody` when we are root, else ourselves (None).
pub fn server_user() -> Option<(u32, u32)> {
    is_root().then(nobody)
}

/// Makes a file or directory the server's own, private (0600 / 0700): a TLS key, the
/// directory holding it.
pub fn give_to_server(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl Postgres {
    /// initdb + start; waits until the server accepts connections.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// Like [`Postgres::start`] with extra `-c name=value` settings.
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .unwrap();
        let run_as = server_user();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", PG_USER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .stdout(Stdio::null());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            bin,
            port: low_free_port(),
            child: None,
            run_as,
            extra: settings.iter().map(|s| s.to_string()).collect(),
        };
        pg.start_server();
        pg
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server on the existing data directory and port (after [`Postgres::stop`]).
    pub fn start_server(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid))
                .unwrap();
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=60",
            ]);
        for s in &self.extra {
            cmd.args(["-c", s]);
        }
        cmd.current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("postgres starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGINT: sessions are ended, committed work is on disk); waits
    /// for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    /// Runs SQL with psql as the superuser on database `db`, over the Unix socket;
    /// returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates an empty database; returns its URL (over TCP, with the password).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
