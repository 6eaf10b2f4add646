//! The embedded broker's durable state: retained messages, persistent sessions (their
//! subscriptions, expiry and queued messages), in a SQLite file of the data directory
//! (`broker-state.db`, WAL, `synchronous=FULL` as the admin store).
//!
//! Writes go to one writer thread that commits whatever has queued up in one
//! transaction (group commit): a message is durable a few milliseconds after the broker
//! acknowledged it, and a burst costs one fsync per batch rather than one per message.
//! [`StateStore::barrier`] waits until everything queued before it is committed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

/// File name of the state database in the data directory.
pub const STATE_FILE: &str = "broker-state.db";

/// Session expiry meaning "never" (MQTT 5: 0xFFFFFFFF; a 3.1.1 persistent session).
pub const NEVER: u32 = u32::MAX;

/// A subscription of a persistent session, as the router got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSub {
    /// The filter (mounted under the tenant).
    pub filter: String,
    /// MQTT 5 subscription options byte: QoS (bits 0-1), No Local (2), Retain As
    /// Published (3), Retain Handling (4-5).
    pub options: u8,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The backend client ID (`<tenant>.<cn>`).
    pub client_id: String,
    /// Session Expiry Interval in seconds ([`NEVER`]: no expiry).
    pub expiry: u32,
    /// When the last connection ended (Unix seconds), `None` while connected.
    pub ended_at: Option<i64>,
    /// Its subscriptions.
    pub subs: Vec<StoredSub>,
}

/// A message waiting for an offline persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Row id: the order of arrival.
    pub id: i64,
    /// The QoS the session gets it at.
    pub qos: u8,
    /// The message as an MQTT 5 QoS 0 PUBLISH (topic mounted, properties kept).
    pub packet: Vec<u8>,
    /// When the broker took it (Unix seconds): the base of its Message Expiry Interval.
    pub stored_at: i64,
}

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Mounted topic.
    pub topic: Vec<u8>,
    /// Its QoS as published.
    pub qos: u8,
    /// The message as an MQTT 5 QoS 0 PUBLISH with the retain flag.
    pub packet: Vec<u8>,
    /// When it was published (Unix seconds).
    pub stored_at: i64,
}

enum Op {
    Retain(Retained),
    Unretain(Vec<u8>),
    /// A session starts: (client id, expiry, clean start: forget its old state).
    Begin(String, u32, bool),
    /// A session's connection ended (or its expiry changed): (client id, ended at, expiry).
    Ended(String, i64, u32),
    /// A session is gone (ended with expiry 0, expired, or started clean without
    /// persistence): its row, subscriptions and queue.
    Forget(String),
    Subscribe(String, Vec<StoredSub>),
    Unsubscribe(String, Vec<String>),
    Enqueue(String, Queued),
    PutWill(DelayedWill),
    DropWill(String),
    /// Delivered (or dropped) queued messages, by row id.
    Dequeue(Vec<i64>),
    Barrier(oneshot::Sender<()>),
}

/// Handle on the state database (cheap to clone).
#[derive(Clone)]
pub struct StateStore {
    writes: std_mpsc::Sender<Op>,
    reader: Arc<Mutex<Connection>>,
    /// The client IDs that have (or are about to have) a session row, subscriptions or
    /// queued messages. Forgetting any other ID has nothing to delete, so it costs no
    /// write: a clean session (most devices) connects and leaves without a transaction.
    /// Changed and sent under the same lock, so that it follows the order of the writes.
    stored: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

/// Creates `path` with mode 0600 if it does not exist.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map(drop)
}

/// Mode 0600 on `path` if it exists (the mode at creation is reduced by the umask and
/// SQLite creates its -wal and -shm files with the database's mode).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if path.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS retained (
    topic BLOB PRIMARY KEY,
    qos INTEGER NOT NULL,
    packet BLOB NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE TABLE IF NOT EXISTS subscriptions (
    client_id TEXT NOT NULL,
    filter TEXT NOT NULL,
    options INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter)
);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    qos INTEGER NOT NULL,
    packet BLOB NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_by_client ON queue (client_id, id);
CREATE TABLE IF NOT EXISTS wills (
    client_id TEXT PRIMARY KEY,
    due_at INTEGER NOT NULL,
    packet BLOB NOT NULL
);
";

/// A will waiting for its delay (MQTT 5 Will Delay Interval).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedWill {
    /// The backend client ID of the session that left it.
    pub client_id: String,
    /// When it is due (Unix seconds).
    pub due_at: i64,
    /// The will as the MQTT 5 PUBLISH it becomes (QoS in the first byte).
    pub packet: Vec<u8>,
}

impl StateStore {
    /// Opens (or creates) the state database in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> std::io::Result<StateStore> {
        let path = data_dir.join(STATE_FILE);
        let fail = |e: rusqlite::Error| std::io::Error::other(format!("{}: {e}", path.display()));
        // Tenants' messages: readable by the broker's user only, like the admin store.
        create_private(&path)?;
        let writer = open_connection(&path).map_err(fail)?;
        writer.execute_batch(SCHEMA).map_err(fail)?;
        let reader = open_connection(&path).map_err(fail)?;
        let stored = reader
            .prepare(
                "SELECT client_id FROM sessions UNION SELECT client_id FROM subscriptions
                 UNION SELECT client_id FROM queue",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(fail)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            restrict(std::path::Path::new(&p))?;
        }
        let (writes, queue) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("broker-state".into())
            .spawn(move || write_loop(writer, queue))?;
        Ok(StateStore {
            writes,
            reader: Arc::new(Mutex::new(reader)),
            stored: Arc::new(Mutex::new(stored)),
        })
    }

    /// Sends `op` for `client_id`, which has stored rows after it (`keeps`) or none.
    /// Returns without a write when neither before nor after it has any.
    fn send_for(&self, client_id: &str, keeps: bool, op: impl FnOnce() -> Op) {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let had = if keeps {
            !stored.insert(client_id.to_owned())
        } else {
            stored.remove(client_id)
        };
        if keeps || had {
            self.send(op());
        }
    }

    fn send(&self, op: Op) {
        if self.writes.send(op).is_err() {
            tracing::error!("the broker state writer stopped: a change was not stored");
        }
    }

    /// Stores a retained message (replacing the topic's).
    pub fn retain(&self, r: Retained) {
        self.send(Op::Retain(r));
    }

    /// Removes the retained message of a topic.
    pub fn unretain(&self, topic: Vec<u8>) {
        self.send(Op::Unretain(topic));
    }

    /// A persistent session connects: `clean` forgets what it had.
    pub fn begin(&self, client_id: &str, expiry: u32, clean: bool) {
        self.send_for(client_id, true, || {
            Op::Begin(client_id.to_owned(), expiry, clean)
        });
    }

    /// A persistent session's connection ended at `at` with `expiry`.
    pub fn ended(&self, client_id: &str, at: i64, expiry: u32) {
        self.send(Op::Ended(client_id.to_owned(), at, expiry));
    }

    /// Forgets a session: row, subscriptions, queue (no write if it has none).
    pub fn forget(&self, client_id: &str) {
        self.send_for(client_id, false, || Op::Forget(client_id.to_owned()));
    }

    /// Adds (or replaces) subscriptions of a persistent session.
    pub fn subscribe(&self, client_id: &str, subs: Vec<StoredSub>) {
        self.send_for(client_id, true, || {
            Op::Subscribe(client_id.to_owned(), subs)
        });
    }

    /// Removes subscriptions of a persistent session.
    pub fn unsubscribe(&self, client_id: &str, filters: Vec<String>) {
        self.send(Op::Unsubscribe(client_id.to_owned(), filters));
    }

    /// Stores a will waiting for its delay (replacing the client's).
    pub fn put_will(&self, will: DelayedWill) {
        self.send(Op::PutWill(will));
    }

    /// The will of `client_id` was published or cancelled.
    pub fn drop_will(&self, client_id: &str) {
        self.send(Op::DropWill(client_id.to_owned()));
    }

    /// Every will waiting for its delay.
    pub fn load_wills(&self) -> std::io::Result<Vec<DelayedWill>> {
        self.read(|c| {
            let mut s = c.prepare("SELECT client_id, due_at, packet FROM wills")?;
            let rows = s.query_map([], |r| {
                Ok(DelayedWill {
                    client_id: r.get(0)?,
                    due_at: r.get(1)?,
                    packet: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Queues a message for an offline session.
    pub fn enqueue(&self, client_id: &str, q: Queued) {
        self.send_for(client_id, true, || Op::Enqueue(client_id.to_owned(), q));
    }

    /// Removes delivered or dropped queued messages.
    pub fn dequeue(&self, ids: Vec<i64>) {
        if !ids.is_empty() {
            self.send(Op::Dequeue(ids));
        }
    }

    /// Waits until every change sent before is committed.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Barrier(tx));
        let _ = rx.await;
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> std::io::Result<T> {
        let c = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&c).map_err(|e| std::io::Error::other(format!("broker state: {e}")))
    }

    /// Every retained message.
    pub fn load_retained(&self) -> std::io::Result<Vec<Retained>> {
        self.read(|c| {
            let mut s = c.prepare("SELECT topic, qos, packet, stored_at FROM retained")?;
            let rows = s.query_map([], |r| {
                Ok(Retained {
                    topic: r.get(0)?,
                    qos: r.get(1)?,
                    packet: r.get(2)?,
                    stored_at: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Every persistent session with its subscriptions.
    pub fn load_sessions(&self) -> std::io::Result<Vec<StoredSession>> {
        self.read(|c| {
            let mut s = c.prepare("SELECT client_id, expiry, ended_at FROM sessions")?;
            let mut sessions = s
                .query_map([], |r| {
                    Ok(StoredSession {
                        client_id: r.get(0)?,
                        expiry: r.get::<_, i64>(1)?.clamp(0, i64::from(NEVER)) as u32,
                        ended_at: r.get(2)?,
                        subs: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for session in &mut sessions {
                session.subs = subs_of(c, &session.client_id)?;
            }
            Ok(sessions)
        })
    }

    /// The stored subscriptions of a session.
    pub fn load_subs(&self, client_id: &str) -> std::io::Result<Vec<StoredSub>> {
        self.read(|c| subs_of(c, client_id))
    }

    /// The messages queued for a session, oldest first (after [`StateStore::barrier`]).
    pub fn load_queue(&self, client_id: &str) -> std::io::Result<Vec<Queued>> {
        self.read(|c| {
            let mut s = c.prepare(
                "SELECT id, qos, packet, stored_at FROM queue WHERE client_id = ?1 ORDER BY id",
            )?;
            let rows = s.query_map([client_id], |r| {
                Ok(Queued {
                    id: r.get(0)?,
                    qos: r.get(1)?,
                    packet: r.get(2)?,
                    stored_at: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The largest row id of a queued message: the front-end hands out the next ones
    /// itself, so that a keeper knows a message's id before it is committed.
    pub fn max_queue_id(&self) -> std::io::Result<i64> {
        self.read(|c| c.query_row("SELECT COALESCE(MAX(id), 0) FROM queue", [], |r| r.get(0)))
    }
}

/// The subscriptions of one session (a cached statement: one parse for all sessions).
fn subs_of(c: &Connection, client_id: &str) -> rusqlite::Result<Vec<StoredSub>> {
    let mut q =
        c.prepare_cached("SELECT filter, options FROM subscriptions WHERE client_id = ?1")?;
    let rows = q.query_map([client_id], |r| {
        Ok(StoredSub {
            filter: r.get(0)?,
            options: r.get(1)?,
        })
    })?;
    rows.collect()
}

fn apply(
    t: &rusqlite::Transaction<'_>,
    op: Op,
    barriers: &mut Vec<oneshot::Sender<()>>,
) -> rusqlite::Result<()> {
    match op {
        Op::Retain(r) => {
            exec(
                t,
                "INSERT INTO retained (topic, qos, packet, stored_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (topic) DO UPDATE SET qos = ?2, packet = ?3, stored_at = ?4",
                params![r.topic, r.qos, r.packet, r.stored_at],
            )?;
        }
        Op::Unretain(topic) => {
            exec(t, "DELETE FROM retained WHERE topic = ?1", [topic])?;
        }
        Op::Begin(client_id, expiry, clean) => {
            if clean {
                forget(t, &client_id)?;
            }
            exec(
                t,
                "INSERT INTO sessions (client_id, expiry, ended_at) VALUES (?1, ?2, NULL)
                 ON CONFLICT (client_id) DO UPDATE SET expiry = ?2, ended_at = NULL",
                params![client_id, i64::from(expiry)],
            )?;
        }
        Op::Ended(client_id, at, expiry) => {
            exec(
                t,
                "UPDATE sessions SET ended_at = ?2, expiry = ?3 WHERE client_id = ?1",
                params![client_id, at, i64::from(expiry)],
            )?;
        }
        Op::Forget(client_id) => forget(t, &client_id)?,
        Op::Subscribe(client_id, subs) => {
            for s in subs {
                exec(
                    t,
                    "INSERT INTO subscriptions (client_id, filter, options) VALUES (?1, ?2, ?3)
                     ON CONFLICT (client_id, filter) DO UPDATE SET options = ?3",
                    params![client_id, s.filter, s.options],
                )?;
            }
        }
        Op::Unsubscribe(client_id, filters) => {
            for f in filters {
                exec(
                    t,
                    "DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2",
                    params![client_id, f],
                )?;
            }
        }
        Op::Enqueue(client_id, q) => {
            exec(
                t,
                "INSERT INTO queue (id, client_id, qos, packet, stored_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![q.id, client_id, q.qos, q.packet, q.stored_at],
            )?;
        }
        Op::PutWill(w) => {
            exec(
                t,
                "INSERT INTO wills (client_id, due_at, packet) VALUES (?1, ?2, ?3)
                 ON CONFLICT (client_id) DO UPDATE SET due_at = ?2, packet = ?3",
                params![w.client_id, w.due_at, w.packet],
            )?;
        }
        Op::DropWill(client_id) => {
            exec(t, "DELETE FROM wills WHERE client_id = ?1", [client_id])?;
        }
        Op::Dequeue(ids) => {
            for id in ids {
                exec(t, "DELETE FROM queue WHERE id = ?1", [id])?;
            }
        }
        Op::Barrier(tx) => barriers.push(tx),
    }
    Ok(())
}

/// Runs one statement, parsed once per writer connection (statements are cached).
fn exec(
    t: &rusqlite::Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    t.prepare_cached(sql)?.execute(p)
}

fn forget(t: &rusqlite::Transaction<'_>, client_id: &str) -> rusqlite::Result<()> {
    exec(t, "DELETE FROM sessions WHERE client_id = ?1", [client_id])?;
    exec(
        t,
        "DELETE FROM subscriptions WHERE client_id = ?1",
        [client_id],
    )?;
    exec(t, "DELETE FROM queue WHERE client_id = ?1", [client_id])?;
    Ok(())
}

/// Most changes committed in one transaction.
const BATCH: usize = 4096;

fn write_loop(mut c: Connection, queue: std_mpsc::Receiver<Op>) {
    let mut barriers = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let result = c.transaction().and_then(|t| {
            for op in ops {
                apply(&t, op, &mut barriers)?;
            }
            t.commit()
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "broker state: a batch of changes was not stored");
        }
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: i64) -> Queued {
        Queued {
            id,
            qos: 1,
            packet: vec![0x30, 0x03, 0, 1, b'a'],
            stored_at: 1,
        }
    }

    fn sub(filter: &str) -> StoredSub {
        StoredSub {
            filter: filter.into(),
            options: 1,
        }
    }

    /// Reads a session's rows as another process would: a fresh store on the same file.
    fn rows(dir: &Path, client_id: &str) -> (usize, Vec<StoredSub>, usize) {
        let s = StateStore::open(dir).unwrap();
        let sessions = s.load_sessions().unwrap();
        (
            sessions.iter().filter(|x| x.client_id == client_id).count(),
            s.load_subs(client_id).unwrap(),
            s.load_queue(client_id).unwrap().len(),
        )
    }

    #[tokio::test]
    async fn forgetting_deletes_what_a_session_stored_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        s.begin("t.a", NEVER, false);
        s.subscribe("t.a", vec![sub("t/a/#")]);
        s.enqueue("t.a", queued(1));
        // Only subscriptions and queued messages, no session row (written before a
        // crash, for example): still forgotten.
        s.subscribe("t.b", vec![sub("t/b/#")]);
        s.enqueue("t.c", queued(2));
        s.begin("t.d", 60, false);
        s.barrier().await;
        assert_eq!(rows(dir.path(), "t.a"), (1, vec![sub("t/a/#")], 1));
        drop(s);

        // A new process knows what the file holds without being told.
        let s = StateStore::open(dir.path()).unwrap();
        for id in ["t.a", "t.b", "t.c"] {
            s.forget(id);
        }
        s.barrier().await;
        for id in ["t.a", "t.b", "t.c"] {
            assert_eq!(rows(dir.path(), id), (0, vec![], 0), "{id}");
        }
        assert_eq!(rows(dir.path(), "t.d").0, 1, "another session's row stays");

        // Forgotten, then stored again: the new rows are written, not skipped.
        s.begin("t.a", NEVER, true);
        s.subscribe("t.a", vec![sub("t/a/x")]);
        s.barrier().await;
        assert_eq!(rows(dir.path(), "t.a"), (1, vec![sub("t/a/x")], 0));
        s.forget("t.a");
        s.forget("t.a");
        s.barrier().await;
        assert_eq!(rows(dir.path(), "t.a"), (0, vec![], 0));
    }
}
