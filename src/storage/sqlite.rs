//! [`SqliteStore`]: the embedded [`Store`], one SQLite file in the data directory.
//!
//! # Why it is shaped like this
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit costs an
//! fsync. A chat server writes many tiny rows (one per message), so committing each one on its
//! own would cap throughput at the disk's fsync rate. Instead:
//!
//! * **One writer thread** (a plain `std::thread`) owns the only read-write connection. Every
//!   write (users, sessions, rooms, members, messages, read markers, scheduled messages, bans,
//!   audit entries, tombstones, erasures, control events, migrations) is a command sent to it over a channel, with a `oneshot` for its answer. This
//!   serializes writes without lock contention and makes "allocate the room's next `seq` and
//!   insert the message" one uninterrupted step, which is what makes `seq` gap-free and
//!   visibility follow `seq`.
//! * **Group commit.** The writer blocks for the first command, then takes whatever else is
//!   already queued (at most `batch_max` commands in all) and runs the whole batch in ONE
//!   transaction, each command inside its own `SAVEPOINT`: a command that fails rolls back only
//!   its own changes and gets its own error, the others still commit. The transaction is
//!   committed once (one fsync for the batch) and only then does each caller get its answer, so
//!   an acknowledged write is a durable write. If the `COMMIT` fails, every command of the batch
//!   gets a backend error. Under load batches grow by themselves; when idle a write commits
//!   alone with no added latency (there is no timer).
//! * **Readers** are a small pool of read-only connections used from `spawn_blocking`. WAL mode
//!   lets them read a consistent snapshot while the writer writes; reads never wait for the
//!   writer's queue. Each read runs in its own read transaction, so a read made of several
//!   queries (a room and its members) sees one snapshot.
//!
//! Schema changes are `PRAGMA user_version` migrations ([`MIGRATIONS`]), applied by
//! [`SqliteStore::open`] and by [`Store::migrate`]. Addresses are stored as lower-case hex,
//! times as unix milliseconds, JSON values (media, audit details, control events) as TEXT.
//!
//! # Deleted messages
//!
//! Messages are never removed: an operator deletion (or an erasure) turns a row into a
//! *tombstone* in place (`deleted = 1`, `body = ''`, `media_json = NULL`), keeping its room, seq,
//! id, sender, `client_msg_id` and time. So seqs stay gap-free, and a retry of the original send
//! (same sender and `client_msg_id`) finds the tombstone and gets it back (`created = false`)
//! instead of being sent again under a new seq.
//!
//! # Media
//!
//! `media` holds the metadata of uploaded objects (the bytes live in the media store).
//! `message_media` maps each media id to the messages carrying it; `append_message` writes it in
//! the same step as the message, so [`Store::media_visible_to`] is an indexed lookup (media id →
//! message → room → membership) rather than a scan of `media_json`. A tombstoned message keeps
//! its `message_media` rows, but the lookup skips deleted messages, so deleting a message also
//! withdraws access to its media (from everyone but the uploader).
//!
//! # Control events
//!
//! `control_events` is a small log that lets a process sharing the file (`coolchat admin`)
//! reach the running node: it appends, the node polls [`Store::control_since`]. Each
//! [`Store::push_control`] also deletes events more than [`CONTROL_RETENTION_MS`] old, so the
//! table only ever holds the last hour.

use crate::address::Address;
use crate::error::{Error, Result};
use crate::model::{
    self, Appended, AuditEntry, Ban, MediaMeta, MediaRef, Message, NewMessage, Room, RoomKind, ScheduledMessage,
    Session, User,
};
use crate::storage::{ErasureReport, HistoryPage, MembershipChange, MembershipLimits, NewRoom, Store, StoreStats};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, oneshot};

/// How long a connection waits on a lock held by another connection (or process, e.g. an
/// admin command opening the same file) before failing with a backend error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (`prepare_cached`); above the number of distinct
/// statements in this file so the hot ones are never evicted.
const STATEMENT_CACHE: usize = 96;

/// Control events older than this (relative to the `now` of the latest
/// [`Store::push_control`]) are pruned: one hour.
pub const CONTROL_RETENTION_MS: i64 = 60 * 60 * 1000;

/// Tuning of [`SqliteStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// At most this many write commands per transaction (group commit). 0 is treated as 1.
    pub batch_max: usize,
    /// Read-only connections in the reader pool. 0 is treated as 1.
    pub readers: usize,
    /// `synchronous=FULL` (every commit is fsynced) rather than `NORMAL` (WAL is fsynced at
    /// checkpoints only: a power loss may lose the last commits, never corrupt the file).
    pub synchronous_full: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            batch_max: 512,
            readers: 4,
            synchronous_full: true,
        }
    }
}

/// The embedded [`Store`]. See the module docs for the writer thread and group commit.
pub struct SqliteStore {
    path: PathBuf,
    /// Queue into the writer thread; `None` once [`Store::close`] has begun.
    writer: parking_lot::Mutex<Option<mpsc::Sender<Job>>>,
    /// The writer thread, taken (and joined) by the first `close`. The async mutex makes a
    /// concurrent second `close` wait for the first to finish joining.
    thread: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when needed) the database at `path` and its parent directories, applies
    /// pending migrations, opens the reader pool and starts the writer thread.
    ///
    /// Blocking (file I/O); call it at startup, not on a hot async path.
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Backend(format!("cannot create {}: {e}", parent.display())))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| Error::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(BUSY_TIMEOUT).db()?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).db()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend(format!(
                "{} cannot use WAL journal mode (got `{mode}`)",
                path.display()
            )));
        }
        conn.execute_batch(if opts.synchronous_full {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        })
        .db()?;
        conn.execute_batch("PRAGMA foreign_keys = ON").db()?;
        in_transaction(&conn, migrate_schema)?;

        let readers = (0..opts.readers.max(1))
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>>>()?;
        let readers = Arc::new(ReaderPool {
            semaphore: Arc::new(Semaphore::new(readers.len())),
            conns: parking_lot::Mutex::new(readers),
        });

        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<Job>();
        let batch_max = opts.batch_max.max(1);
        let thread = {
            let commits = commits.clone();
            std::thread::Builder::new()
                .name("coolchat-sqlite-writer".into())
                .spawn(move || writer_loop(conn, rx, batch_max, commits))
                .map_err(|e| Error::Backend(format!("cannot start the sqlite writer thread: {e}")))?
        };
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: parking_lot::Mutex::new(Some(tx)),
            thread: tokio::sync::Mutex::new(Some(thread)),
            readers,
            commits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions committed by the writer so far (one per batch). With `n` writes acknowledged,
    /// `n / commits()` is the average group-commit batch size.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on the writer thread, in the next batch's transaction, inside its own savepoint.
    /// Answers once the batch has committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(Op {
            f: Some(f),
            result: None,
            tx,
        });
        {
            let writer = self.writer.lock();
            let sender = writer.as_ref().ok_or(Error::ShuttingDown)?;
            sender.send(job).map_err(|_| Error::ShuttingDown)?;
        }
        rx.await
            .map_err(|_| Error::backend("the sqlite writer stopped before answering"))?
    }

    /// Runs `f` on a pooled read-only connection (in a blocking thread), in a read transaction.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .readers
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool
                .conns
                .lock()
                .pop()
                .ok_or_else(|| Error::internal("sqlite reader pool is empty"))?;
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
                // Dropping the (read) transaction at the end rolls it back: nothing to commit.
                let tx = conn.unchecked_transaction().db()?;
                f(&tx)
            }));
            // Back into the pool even when the read panicked, so the pool never shrinks.
            pool.conns.lock().push(conn);
            out.unwrap_or_else(|_| Err(Error::internal("sqlite read panicked")))
        })
        .await
        .map_err(|e| Error::internal(format!("sqlite read task failed: {e}")))?
    }
}

// --- reader pool -------------------------------------------------------------------------------

struct ReaderPool {
    /// One permit per connection in `conns`: holding a permit guarantees a connection is free.
    semaphore: Arc<Semaphore>,
    conns: parking_lot::Mutex<Vec<Connection>>,
}

fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Backend(format!("cannot open {} for reading: {e}", path.display())))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_TIMEOUT).db()?;
    Ok(conn)
}

// --- writer thread -----------------------------------------------------------------------------

/// A write command as the writer thread sees it (the result type erased).
trait WriteOp: Send {
    /// Runs the command inside its savepoint; true when it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Sends the answer: the command's own result, or a backend error when the batch's
    /// transaction did not commit (`batch_failure`).
    fn respond(self: Box<Self>, batch_failure: Option<&str>);
}

type Job = Box<dyn WriteOp>;

struct Op<T, F> {
    f: Option<F>,
    result: Option<Result<T>>,
    tx: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = match self.f.take() {
            // A panicking command must not take the writer (and every later write) down.
            Some(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(Error::internal("sqlite write command panicked"))),
            None => Err(Error::internal("sqlite write command ran twice")),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn respond(self: Box<Self>, batch_failure: Option<&str>) {
        let result = match batch_failure {
            Some(why) => Err(Error::Backend(format!("sqlite transaction failed: {why}"))),
            None => self
                .result
                .unwrap_or_else(|| Err(Error::internal("sqlite write command never ran"))),
        };
        // The caller may have gone away (cancelled request); the write stands regardless.
        let _ = self.tx.send(result);
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, batch_max: usize, commits: Arc<AtomicU64>) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max.min(1024));
    // `recv` fails once every sender is gone (close, or the store dropped) and the queue is
    // empty, so everything queued before close is still written.
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let outcome = run_batch(&conn, &mut batch);
        match &outcome {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(size, "sqlite batch committed");
            }
            Err(e) => {
                tracing::error!(size, error = %e, "sqlite batch failed; every command in it is answered with an error")
            }
        }
        let failure = outcome.as_ref().err().map(String::as_str);
        for job in batch.drain(..) {
            job.respond(failure);
        }
    }
    // Leave a compact, fully synced file behind (with synchronous=NORMAL this is also what
    // makes the last commits durable).
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "sqlite checkpoint at close failed");
    }
    tracing::debug!("sqlite writer stopped");
}

/// One transaction for the whole batch, one savepoint per command. `Err` when the transaction
/// as a whole did not commit (then nothing of the batch was written).
fn run_batch(conn: &Connection, batch: &mut [Job]) -> std::result::Result<(), String> {
    let outcome = (|| -> std::result::Result<(), String> {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| format!("begin: {e}"))?;
        for job in batch.iter_mut() {
            conn.execute_batch("SAVEPOINT cmd")
                .map_err(|e| format!("savepoint: {e}"))?;
            if job.run(conn) {
                conn.execute_batch("RELEASE cmd").map_err(|e| format!("release: {e}"))?;
            } else {
                conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd")
                    .map_err(|e| format!("rollback to savepoint: {e}"))?;
            }
            // Some errors (disk full, I/O) make SQLite roll the whole transaction back.
            if conn.is_autocommit() {
                return Err("the transaction was rolled back by sqlite".into());
            }
        }
        conn.execute_batch("COMMIT").map_err(|e| format!("commit: {e}"))
    })();
    if outcome.is_err()
        && !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "sqlite rollback failed");
    }
    outcome
}

/// Runs `f` in its own transaction on `conn` (used before the writer thread exists).
fn in_transaction<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE").db()?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("COMMIT").db()?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

// --- schema --------------------------------------------------------------------------------

/// Schema migrations; `PRAGMA user_version` is the number applied. Append only: never edit a
/// migration that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE users (
        address         TEXT PRIMARY KEY NOT NULL,
        display_name    TEXT,
        created_at_ms   INTEGER NOT NULL,
        last_seen_at_ms INTEGER
    );
    CREATE TABLE sessions (
        token_hash    TEXT PRIMARY KEY NOT NULL,
        address       TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE INDEX sessions_by_address ON sessions (address);
    CREATE TABLE rooms (
        id            TEXT PRIMARY KEY NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('group', 'dm')),
        name          TEXT,
        dm_key        TEXT UNIQUE,
        created_by    TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_seq      INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE members (
        room_id      TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        address      TEXT NOT NULL,
        joined_at_ms INTEGER NOT NULL,
        read_seq     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (room_id, address)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_address ON members (address, room_id);
    CREATE TABLE messages (
        room_id       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        id            TEXT NOT NULL UNIQUE,
        sender        TEXT NOT NULL,
        body          TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        media_json    TEXT,
        PRIMARY KEY (room_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_by_client_msg_id ON messages (sender, client_msg_id);
    CREATE TABLE scheduled (
        id            TEXT PRIMARY KEY NOT NULL,
        room_id       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        sender        TEXT NOT NULL,
        body          TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        deliver_at_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (sender, client_msg_id)
    );
    CREATE INDEX scheduled_by_deliver_at ON scheduled (deliver_at_ms, id);
    CREATE TABLE bans (
        address       TEXT PRIMARY KEY NOT NULL,
        reason        TEXT,
        banned_by     TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        until_ms      INTEGER
    );
    CREATE TABLE audit_log (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms       INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT,
        detail_json TEXT
    );",
    // 2: operator tools and the control channel.
    // * `deleted`: tombstones (see the module docs).
    // * `messages_by_sender`: a sender's live messages in (room_id, seq) order, for
    //   `messages_of`, `count_messages_of`, `tombstone_messages_of` and erasure. `deleted` sits
    //   before (room_id, seq) so that skipping tombstones is an index range rather than a filter
    //   (batched tombstoning would otherwise rescan the growing tombstone prefix every batch).
    // * `messages_tombstones`: partial index, so `stats` counts tombstones without a scan.
    // * `messages_created`: `stats().messages_last_minute`.
    // * `audit_log_by_target`: `list_audit` filtered by target, newest first.
    "ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_by_sender ON messages (sender, deleted, room_id, seq);
    CREATE INDEX messages_tombstones ON messages (deleted) WHERE deleted = 1;
    CREATE INDEX messages_created ON messages (created_at_ms);
    CREATE TABLE control_events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms      INTEGER NOT NULL,
        event_json TEXT NOT NULL
    );
    CREATE INDEX control_events_by_at ON control_events (at_ms);
    CREATE INDEX audit_log_by_target ON audit_log (target, id);",
    // 3: media attachments (see the module docs). The backfill covers messages stored with media
    // before this migration (none are expected: no release accepted attachments).
    "CREATE TABLE media (
        id            TEXT PRIMARY KEY NOT NULL,
        uploader      TEXT NOT NULL,
        content_type  TEXT NOT NULL,
        size          INTEGER NOT NULL,
        name          TEXT,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX media_by_uploader ON media (uploader, created_at_ms);
    CREATE TABLE message_media (
        media_id   TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (media_id, message_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO message_media (media_id, message_id)
        SELECT json_extract(j.value, '$.id'), m.id FROM messages m, json_each(m.media_json) j
        WHERE m.media_json IS NOT NULL AND json_extract(j.value, '$.id') IS NOT NULL;",
];

/// Applies the migrations `user_version` says are missing. Runs inside the caller's transaction
/// (so a failed migration leaves the schema as it was). Idempotent.
fn migrate_schema(conn: &Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).db()?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Internal(format!(
            "the database schema (version {version}) is newer than this build knows ({known})"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch(sql)
            .map_err(|e| Error::Backend(format!("sqlite migration {} failed: {e}", index + 1)))?;
        conn.execute_batch(&format!("PRAGMA user_version = {}", index + 1))
            .db()?;
        tracing::info!(version = index + 1, "sqlite schema migrated");
    }
    Ok(())
}

// --- errors and decoding -------------------------------------------------------------------

/// rusqlite errors → the library's: a value of the wrong type in a row is corruption (internal),
/// anything else is the backend failing.
fn db_err(e: rusqlite::Error) -> Error {
    use rusqlite::Error as E;
    match e {
        E::InvalidColumnType(..)
        | E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(..) => Error::Internal(format!("corrupt row in sqlite: {e}")),
        other => Error::Backend(format!("sqlite: {other}")),
    }
}

trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(db_err)
    }
}

fn parse_address(text: &str) -> Result<Address> {
    text.parse()
        .map_err(|_| Error::Internal(format!("corrupt address in sqlite: {text:?}")))
}

fn parse_kind(text: &str) -> Result<RoomKind> {
    match text {
        "group" => Ok(RoomKind::Group),
        "dm" => Ok(RoomKind::Dm),
        other => Err(Error::Internal(format!("corrupt room kind in sqlite: {other:?}"))),
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Runs a cached query and decodes every row with `decode`.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).db()?;
    let rows = stmt.query_map(params, |row| Ok(decode(row))).db()?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.db()??);
    }
    Ok(out)
}

/// Runs a cached query and decodes its first row, if any.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl FnOnce(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    conn.prepare_cached(sql)
        .db()?
        .query_row(params, |row| Ok(decode(row)))
        .optional()
        .db()?
        .transpose()
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<i64> {
    conn.prepare_cached(sql).db()?.query_row(params, |r| r.get(0)).db()
}

const USER_COLS: &str = "address, display_name, created_at_ms, last_seen_at_ms";

fn decode_user(row: &Row<'_>) -> Result<User> {
    Ok(User {
        address: parse_address(&row.get::<_, String>(0).db()?)?,
        display_name: row.get(1).db()?,
        created_at: model::from_unix_ms(row.get(2).db()?),
        last_seen_at: row.get::<_, Option<i64>>(3).db()?.map(model::from_unix_ms),
    })
}

fn decode_session(row: &Row<'_>) -> Result<Session> {
    Ok(Session {
        token_hash: row.get(0).db()?,
        address: parse_address(&row.get::<_, String>(1).db()?)?,
        created_at: model::from_unix_ms(row.get(2).db()?),
        expires_at: model::from_unix_ms(row.get(3).db()?),
        revoked_at: row.get::<_, Option<i64>>(4).db()?.map(model::from_unix_ms),
    })
}

/// A room row without its members.
fn decode_room(row: &Row<'_>) -> Result<Room> {
    Ok(Room {
        id: row.get(0).db()?,
        kind: parse_kind(&row.get::<_, String>(1).db()?)?,
        name: row.get(2).db()?,
        members: Vec::new(),
        created_by: parse_address(&row.get::<_, String>(3).db()?)?,
        created_at: model::from_unix_ms(row.get(4).db()?),
        last_seq: row.get(5).db()?,
    })
}

/// The columns [`decode_message`] reads, in its order (a macro so it can be `concat!`ed).
macro_rules! message_cols {
    () => {
        "room_id, seq, id, sender, body, client_msg_id, created_at_ms, media_json, deleted"
    };
}

const MESSAGE_SELECT: &str = concat!("SELECT ", message_cols!(), " FROM messages");

/// Turns the matched rows into tombstones; the caller appends `WHERE ...` (and gets the
/// tombstones back through `RETURNING`).
const TOMBSTONE_UPDATE: &str = "UPDATE messages SET body = '', media_json = NULL, deleted = 1";

fn decode_message(row: &Row<'_>) -> Result<Message> {
    let media = match row.get::<_, Option<String>>(7).db()? {
        None => Vec::new(),
        Some(json) => serde_json::from_str::<Vec<MediaRef>>(&json)
            .map_err(|e| Error::Internal(format!("corrupt media_json in sqlite: {e}")))?,
    };
    Ok(Message {
        room_id: row.get(0).db()?,
        seq: row.get(1).db()?,
        id: row.get(2).db()?,
        sender: parse_address(&row.get::<_, String>(3).db()?)?,
        body: row.get(4).db()?,
        client_msg_id: row.get(5).db()?,
        created_at: model::from_unix_ms(row.get(6).db()?),
        media,
        deleted: row.get::<_, i64>(8).db()? != 0,
    })
}

const SCHEDULED_SELECT: &str =
    "SELECT id, room_id, sender, body, client_msg_id, deliver_at_ms, created_at_ms FROM scheduled";

fn decode_scheduled(row: &Row<'_>) -> Result<ScheduledMessage> {
    Ok(ScheduledMessage {
        id: row.get(0).db()?,
        room_id: row.get(1).db()?,
        sender: parse_address(&row.get::<_, String>(2).db()?)?,
        body: row.get(3).db()?,
        client_msg_id: row.get(4).db()?,
        deliver_at: model::from_unix_ms(row.get(5).db()?),
        created_at: model::from_unix_ms(row.get(6).db()?),
    })
}

fn decode_media(row: &Row<'_>) -> Result<MediaMeta> {
    Ok(MediaMeta {
        id: row.get(0).db()?,
        uploader: parse_address(&row.get::<_, String>(1).db()?)?,
        content_type: row.get(2).db()?,
        size: u64::try_from(row.get::<_, i64>(3).db()?).unwrap_or(0),
        name: row.get(4).db()?,
        created_at: model::from_unix_ms(row.get(5).db()?),
    })
}

fn decode_ban(row: &Row<'_>) -> Result<Ban> {
    Ok(Ban {
        address: parse_address(&row.get::<_, String>(0).db()?)?,
        reason: row.get(1).db()?,
        banned_by: row.get(2).db()?,
        created_at: model::from_unix_ms(row.get(3).db()?),
        until: row.get::<_, Option<i64>>(4).db()?.map(model::from_unix_ms),
    })
}

const AUDIT_SELECT: &str = "SELECT id, at_ms, actor, action, target, detail_json FROM audit_log";

/// An audit row; a NULL target reads as `""` and a NULL detail as JSON `null`.
fn decode_audit(row: &Row<'_>) -> Result<AuditEntry> {
    let detail = match row.get::<_, Option<String>>(5).db()? {
        None => serde_json::Value::Null,
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| Error::Internal(format!("corrupt detail_json in sqlite: {e}")))?
        }
    };
    Ok(AuditEntry {
        id: row.get(0).db()?,
        at: model::from_unix_ms(row.get(1).db()?),
        actor: row.get(2).db()?,
        action: row.get(3).db()?,
        target: row.get::<_, Option<String>>(4).db()?.unwrap_or_default(),
        detail,
    })
}

const SESSION_SELECT: &str = "SELECT token_hash, address, created_at_ms, expires_at_ms, revoked_at_ms FROM sessions";

const BAN_SELECT: &str = "SELECT address, reason, banned_by, created_at_ms, until_ms FROM bans";

const ROOM_SELECT: &str = "SELECT id, kind, name, created_by, created_at_ms, last_seq FROM rooms";

// --- queries shared by reads and writes --------------------------------------------------

fn load_user(conn: &Connection, address: Address) -> Result<Option<User>> {
    query_opt(
        conn,
        "SELECT address, display_name, created_at_ms, last_seen_at_ms FROM users WHERE address = ?1",
        [address.to_lower_hex()],
        decode_user,
    )
}

fn members_of(conn: &Connection, room_id: &str) -> Result<Vec<Address>> {
    query_all(
        conn,
        "SELECT address FROM members WHERE room_id = ?1 ORDER BY address",
        [room_id],
        |r| parse_address(&r.get::<_, String>(0).db()?),
    )
}

/// A room with its members (sorted by address).
fn load_room(conn: &Connection, room_id: &str) -> Result<Option<Room>> {
    let head = query_opt(
        conn,
        "SELECT id, kind, name, created_by, created_at_ms, last_seq FROM rooms WHERE id = ?1",
        [room_id],
        decode_room,
    )?;
    match head {
        None => Ok(None),
        Some(mut room) => {
            room.members = members_of(conn, room_id)?;
            Ok(Some(room))
        }
    }
}

fn room_kind(conn: &Connection, room_id: &str) -> Result<Option<RoomKind>> {
    query_opt(conn, "SELECT kind FROM rooms WHERE id = ?1", [room_id], |r| {
        parse_kind(&r.get::<_, String>(0).db()?)
    })
}

fn room_exists(conn: &Connection, room_id: &str) -> Result<bool> {
    Ok(count(conn, "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = ?1)", [room_id])? != 0)
}

fn member_exists(conn: &Connection, room_id: &str, address: Address) -> Result<bool> {
    Ok(count(
        conn,
        "SELECT EXISTS (SELECT 1 FROM members WHERE room_id = ?1 AND address = ?2)",
        params![room_id, address.to_lower_hex()],
    )? != 0)
}

fn find_message(conn: &Connection, sender: Address, client_msg_id: &str) -> Result<Option<Message>> {
    query_opt(
        conn,
        concat!(
            "SELECT ",
            message_cols!(),
            " FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
        ),
        params![sender.to_lower_hex(), client_msg_id],
        decode_message,
    )
}

fn find_scheduled_entry(conn: &Connection, sender: Address, client_msg_id: &str) -> Result<Option<ScheduledMessage>> {
    query_opt(
        conn,
        "SELECT id, room_id, sender, body, client_msg_id, deliver_at_ms, created_at_ms FROM scheduled WHERE sender = ?1 AND client_msg_id = ?2",
        params![sender.to_lower_hex(), client_msg_id],
        decode_scheduled,
    )
}

// --- write commands (run on the writer thread, inside a savepoint) -----------------------------

/// Refuses when adding `address` to one more room would pass `max_rooms_per_user`.
fn check_rooms_per_user(conn: &Connection, address: Address, limits: MembershipLimits) -> Result<()> {
    let rooms = count(
        conn,
        "SELECT COUNT(*) FROM members WHERE address = ?1",
        [address.to_lower_hex()],
    )?;
    if usize::try_from(rooms).unwrap_or(usize::MAX) >= limits.max_rooms_per_user {
        return Err(Error::Forbidden(format!(
            "{address} has reached the room limit ({} rooms)",
            limits.max_rooms_per_user
        )));
    }
    Ok(())
}

fn insert_member(conn: &Connection, room_id: &str, address: Address, joined_at: OffsetDateTime) -> Result<()> {
    conn.prepare_cached("INSERT INTO members (room_id, address, joined_at_ms, read_seq) VALUES (?1, ?2, ?3, 0)")
        .db()?
        .execute(params![room_id, address.to_lower_hex(), model::to_unix_ms(joined_at)])
        .db()?;
    Ok(())
}

fn insert_room(
    conn: &Connection,
    id: &str,
    kind: RoomKind,
    name: Option<&str>,
    dm_key: Option<&str>,
    created_by: Address,
    created_at: OffsetDateTime,
) -> Result<()> {
    conn.prepare_cached("INSERT INTO rooms (id, kind, name, dm_key, created_by, created_at_ms, last_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)")
        .db()?
        .execute(params![id, kind.as_str(), name, dm_key, created_by.to_lower_hex(), model::to_unix_ms(created_at)])
        .db()?;
    Ok(())
}

fn loaded(conn: &Connection, room_id: &str) -> Result<Room> {
    load_room(conn, room_id)?
        .ok_or_else(|| Error::internal(format!("room {room_id} vanished inside its own transaction")))
}

fn create_room_tx(conn: &Connection, room: &NewRoom, limits: MembershipLimits) -> Result<Room> {
    let members: BTreeSet<Address> = room.members.iter().copied().collect();
    if members.len() > limits.max_room_members {
        return Err(Error::RoomFull(limits.max_room_members));
    }
    for &member in &members {
        check_rooms_per_user(conn, member, limits)?;
    }
    insert_room(
        conn,
        &room.id,
        RoomKind::Group,
        room.name.as_deref(),
        None,
        room.created_by,
        room.created_at,
    )?;
    for &member in &members {
        insert_member(conn, &room.id, member, room.created_at)?;
    }
    loaded(conn, &room.id)
}

/// The DM key of a pair: both lower-case addresses, sorted, joined with `:`.
fn dm_key(a: Address, b: Address) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("{}:{}", x.to_lower_hex(), y.to_lower_hex())
}

fn get_or_create_dm_tx(
    conn: &Connection,
    id_if_new: &str,
    a: Address,
    b: Address,
    now: OffsetDateTime,
    limits: MembershipLimits,
) -> Result<(Room, bool)> {
    if a == b {
        return Err(Error::InvalidRequest(
            "a direct-message room needs two different addresses".into(),
        ));
    }
    let key = dm_key(a, b);
    if let Some(id) = query_opt(conn, "SELECT id FROM rooms WHERE dm_key = ?1", [&key], |r| {
        r.get::<_, String>(0).db()
    })? {
        return Ok((loaded(conn, &id)?, false));
    }
    if limits.max_room_members < 2 {
        return Err(Error::RoomFull(limits.max_room_members));
    }
    check_rooms_per_user(conn, a, limits)?;
    check_rooms_per_user(conn, b, limits)?;
    insert_room(conn, id_if_new, RoomKind::Dm, None, Some(&key), a, now)?;
    insert_member(conn, id_if_new, a, now)?;
    insert_member(conn, id_if_new, b, now)?;
    Ok((loaded(conn, id_if_new)?, true))
}

fn add_member_tx(
    conn: &Connection,
    room_id: &str,
    address: Address,
    limits: MembershipLimits,
) -> Result<MembershipChange> {
    match room_kind(conn, room_id)? {
        None => return Err(Error::RoomNotFound),
        Some(RoomKind::Dm) => {
            return Err(Error::Forbidden(
                "members of a direct-message room cannot change".into(),
            ));
        }
        Some(RoomKind::Group) => {}
    }
    if member_exists(conn, room_id, address)? {
        return Ok(MembershipChange {
            room: loaded(conn, room_id)?,
            changed: false,
        });
    }
    let members = count(conn, "SELECT COUNT(*) FROM members WHERE room_id = ?1", [room_id])?;
    if usize::try_from(members).unwrap_or(usize::MAX) >= limits.max_room_members {
        return Err(Error::RoomFull(limits.max_room_members));
    }
    check_rooms_per_user(conn, address, limits)?;
    insert_member(conn, room_id, address, model::now_ms())?;
    Ok(MembershipChange {
        room: loaded(conn, room_id)?,
        changed: true,
    })
}

fn remove_member_tx(conn: &Connection, room_id: &str, address: Address) -> Result<(Room, bool)> {
    match room_kind(conn, room_id)? {
        None => return Err(Error::RoomNotFound),
        Some(RoomKind::Dm) => {
            return Err(Error::Forbidden(
                "members of a direct-message room cannot change".into(),
            ));
        }
        Some(RoomKind::Group) => {}
    }
    let removed = conn
        .prepare_cached("DELETE FROM members WHERE room_id = ?1 AND address = ?2")
        .db()?
        .execute(params![room_id, address.to_lower_hex()])
        .db()?;
    Ok((loaded(conn, room_id)?, removed > 0))
}

/// The append step: idempotence check, room and membership check, seq allocation and insert,
/// all inside the caller's (writer's) transaction.
fn append_tx(conn: &Connection, msg: &NewMessage) -> Result<Appended> {
    if let Some(existing) = find_message(conn, msg.sender, &msg.client_msg_id)? {
        // A tombstone answers its retries as itself: its body is gone, so it cannot be compared,
        // and sending it again under a new seq would undo the deletion.
        if existing.deleted {
            return Ok(Appended {
                message: existing,
                created: false,
            });
        }
        if existing.room_id != msg.room_id || existing.body != msg.body {
            return Err(Error::IdempotencyConflict);
        }
        return Ok(Appended {
            message: existing,
            created: false,
        });
    }
    // Membership first: it is the common case and implies the room exists.
    if !member_exists(conn, &msg.room_id, msg.sender)? {
        return Err(if room_exists(conn, &msg.room_id)? {
            Error::NotMember
        } else {
            Error::RoomNotFound
        });
    }
    let seq: i64 = conn
        .prepare_cached("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq")
        .db()?
        .query_row([&msg.room_id], |r| r.get(0))
        .db()?;
    let media_json = if msg.media.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&msg.media).map_err(|e| Error::internal(format!("cannot encode media: {e}")))?)
    };
    conn.prepare_cached(
        "INSERT INTO messages (room_id, seq, id, sender, body, client_msg_id, created_at_ms, media_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .db()?
    .execute(params![msg.room_id, seq, msg.id, msg.sender.to_lower_hex(), msg.body, msg.client_msg_id, model::to_unix_ms(msg.created_at), media_json])
    .db()?;
    for media in &msg.media {
        conn.prepare_cached("INSERT OR IGNORE INTO message_media (media_id, message_id) VALUES (?1, ?2)")
            .db()?
            .execute(params![media.id, msg.id])
            .db()?;
    }
    Ok(Appended {
        message: Message {
            id: msg.id.clone(),
            room_id: msg.room_id.clone(),
            seq,
            sender: msg.sender,
            body: msg.body.clone(),
            created_at: msg.created_at,
            client_msg_id: msg.client_msg_id.clone(),
            media: msg.media.clone(),
            deleted: false,
        },
        created: true,
    })
}

fn schedule_tx(conn: &Connection, entry: &ScheduledMessage, max_per_user: usize) -> Result<(ScheduledMessage, bool)> {
    if let Some(existing) = find_scheduled_entry(conn, entry.sender, &entry.client_msg_id)? {
        if existing.room_id != entry.room_id || existing.body != entry.body {
            return Err(Error::IdempotencyConflict);
        }
        return Ok((existing, false));
    }
    if !member_exists(conn, &entry.room_id, entry.sender)? {
        return Err(if room_exists(conn, &entry.room_id)? {
            Error::NotMember
        } else {
            Error::RoomNotFound
        });
    }
    let pending = count(
        conn,
        "SELECT COUNT(*) FROM scheduled WHERE sender = ?1",
        [entry.sender.to_lower_hex()],
    )?;
    if usize::try_from(pending).unwrap_or(usize::MAX) >= max_per_user {
        return Err(Error::Forbidden("too many scheduled messages".into()));
    }
    conn.prepare_cached(
        "INSERT INTO scheduled (id, room_id, sender, body, client_msg_id, deliver_at_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .db()?
    .execute(params![
        entry.id,
        entry.room_id,
        entry.sender.to_lower_hex(),
        entry.body,
        entry.client_msg_id,
        model::to_unix_ms(entry.deliver_at),
        model::to_unix_ms(entry.created_at)
    ])
    .db()?;
    Ok((entry.clone(), true))
}

/// Outer `Err`: nothing happens (the savepoint rolls back, the entry stays for a retry).
/// Inner `Err`: the entry is dropped (committed) and the caller gets that error.
fn deliver_tx(conn: &Connection, id: &str, now: OffsetDateTime) -> Result<Result<Option<Appended>>> {
    let Some(entry) = query_opt(
        conn,
        "SELECT id, room_id, sender, body, client_msg_id, deliver_at_ms, created_at_ms FROM scheduled WHERE id = ?1",
        [id],
        decode_scheduled,
    )?
    else {
        return Ok(Ok(None));
    };
    conn.prepare_cached("DELETE FROM scheduled WHERE id = ?1")
        .db()?
        .execute([id])
        .db()?;
    // A ban stops scheduled sends too: the entry is dropped, never delivered.
    let banned_until: Option<Option<i64>> = conn
        .prepare_cached("SELECT until_ms FROM bans WHERE address = ?1")
        .db()?
        .query_row([entry.sender.to_lower_hex()], |r| r.get(0))
        .optional()
        .db()?;
    if let Some(until) = banned_until
        && until.is_none_or(|u| u > model::to_unix_ms(now))
    {
        return Ok(Err(Error::Banned {
            until: until.map(|u| model::fmt_time(model::from_unix_ms(u))),
        }));
    }
    let message = NewMessage {
        id: entry.id,
        room_id: entry.room_id,
        sender: entry.sender,
        body: entry.body,
        client_msg_id: entry.client_msg_id,
        created_at: now,
        media: Vec::new(),
    };
    match append_tx(conn, &message) {
        Ok(appended) => Ok(Ok(Some(appended))),
        // These can never succeed on a retry: drop the entry, report why.
        Err(e @ (Error::NotMember | Error::RoomNotFound | Error::IdempotencyConflict)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// Tombstones up to `limit` live messages of `sender`, the first ones in (room_id, seq) order;
/// returns the tombstones in that order.
fn tombstone_of_tx(conn: &Connection, sender: Address, limit: usize) -> Result<Vec<Message>> {
    let sql = format!(
        "{TOMBSTONE_UPDATE} WHERE (room_id, seq) IN (
             SELECT room_id, seq FROM messages WHERE sender = ?1 AND deleted = 0 ORDER BY room_id, seq LIMIT ?2
         ) RETURNING {}",
        message_cols!()
    );
    let mut tombstones = query_all(
        conn,
        &sql,
        params![sender.to_lower_hex(), sql_limit(limit)],
        decode_message,
    )?;
    // RETURNING comes in no promised order.
    tombstones.sort_by(|x, y| (&x.room_id, x.seq).cmp(&(&y.room_id, y.seq)));
    Ok(tombstones)
}

/// The whole erasure, in the caller's (writer's) transaction. Rooms the address created keep
/// their `created_by` (room metadata, like the seqs of its tombstones). The address's DM rooms
/// lose their pair key, so that a later DM between the same two addresses is a new room rather
/// than this one, which the erased address is no longer a member of.
fn erase_tx(conn: &Connection, address: Address) -> Result<ErasureReport> {
    let key = address.to_lower_hex();
    let changed = |sql: &str| -> Result<u64> {
        let n = conn.prepare_cached(sql).db()?.execute([&key]).db()?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    };
    let messages_tombstoned = changed(&format!("{TOMBSTONE_UPDATE} WHERE sender = ?1 AND deleted = 0"))?;
    let rooms = query_all(
        conn,
        "SELECT room_id FROM members WHERE address = ?1 ORDER BY room_id",
        [&key],
        |r| r.get::<_, String>(0).db(),
    )?;
    changed(
        "UPDATE rooms SET dm_key = NULL WHERE kind = 'dm' AND dm_key IS NOT NULL
           AND id IN (SELECT room_id FROM members WHERE address = ?1)",
    )?;
    // Read markers live on the membership rows: they go with them.
    let memberships_removed = changed("DELETE FROM members WHERE address = ?1")?;
    let sessions_deleted = changed("DELETE FROM sessions WHERE address = ?1")?;
    let scheduled_deleted = changed("DELETE FROM scheduled WHERE sender = ?1")?;
    changed("DELETE FROM users WHERE address = ?1")?;
    let media_ids = query_all(
        conn,
        "DELETE FROM media WHERE uploader = ?1 RETURNING id",
        [&key],
        |r| r.get::<_, String>(0).db(),
    )?;
    for id in &media_ids {
        conn.prepare_cached("DELETE FROM message_media WHERE media_id = ?1")
            .db()?
            .execute([id])
            .db()?;
    }
    Ok(ErasureReport {
        messages_tombstoned,
        memberships_removed,
        sessions_deleted,
        scheduled_deleted,
        rooms,
        media_ids,
    })
}

/// Appends a control event and prunes those older than [`CONTROL_RETENTION_MS`] before `now`.
fn push_control_tx(conn: &Connection, event_json: &str, now: OffsetDateTime) -> Result<i64> {
    let now = model::to_unix_ms(now);
    let id = conn
        .prepare_cached("INSERT INTO control_events (at_ms, event_json) VALUES (?1, ?2) RETURNING id")
        .db()?
        .query_row(params![now, event_json], |r| r.get::<_, i64>(0))
        .db()?;
    conn.prepare_cached("DELETE FROM control_events WHERE at_ms < ?1")
        .db()?
        .execute([now.saturating_sub(CONTROL_RETENTION_MS)])
        .db()?;
    Ok(id)
}

// --- the trait -----------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite ({})", self.path.display())
    }

    async fn migrate(&self) -> Result<()> {
        self.write(migrate_schema).await
    }

    /// Fails with `ShuttingDown` once `close` has begun (so `/readyz` turns red), otherwise when
    /// a reader cannot run a query.
    async fn ping(&self) -> Result<()> {
        if self.writer.lock().is_none() {
            return Err(Error::ShuttingDown);
        }
        self.read(|c| count(c, "SELECT 1", []).map(|_| ())).await
    }

    /// Stops accepting writes, lets the writer commit everything already queued, checkpoints
    /// and joins the writer thread. Idempotent; reads keep working afterwards.
    async fn close(&self) -> Result<()> {
        let mut thread = self.thread.lock().await;
        drop(self.writer.lock().take());
        if let Some(handle) = thread.take() {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| Error::internal(format!("joining the sqlite writer failed: {e}")))?
                .map_err(|_| Error::internal("the sqlite writer thread panicked"))?;
        }
        Ok(())
    }

    // --- users -----------------------------------------------------------------------------

    async fn touch_user(&self, address: Address, now: OffsetDateTime) -> Result<User> {
        self.write(move |c| {
            let sql =
                "INSERT INTO users (address, display_name, created_at_ms, last_seen_at_ms) VALUES (?1, NULL, ?2, ?2)
                       ON CONFLICT (address) DO UPDATE SET last_seen_at_ms = excluded.last_seen_at_ms
                       RETURNING address, display_name, created_at_ms, last_seen_at_ms";
            c.prepare_cached(sql)
                .db()?
                .query_row(params![address.to_lower_hex(), model::to_unix_ms(now)], |r| {
                    Ok(decode_user(r))
                })
                .db()?
        })
        .await
    }

    async fn get_user(&self, address: Address) -> Result<Option<User>> {
        self.read(move |c| load_user(c, address)).await
    }

    async fn set_display_name(&self, address: Address, name: Option<String>) -> Result<User> {
        self.write(move |c| {
            let sql = format!("UPDATE users SET display_name = ?2 WHERE address = ?1 RETURNING {USER_COLS}");
            query_opt(c, &sql, params![address.to_lower_hex(), name], decode_user)?.ok_or(Error::UserNotFound)
        })
        .await
    }

    // --- sessions --------------------------------------------------------------------------

    async fn create_session(&self, session: Session) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached("INSERT INTO sessions (token_hash, address, created_at_ms, expires_at_ms, revoked_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)")
                .db()?
                .execute(params![
                    session.token_hash,
                    session.address.to_lower_hex(),
                    model::to_unix_ms(session.created_at),
                    model::to_unix_ms(session.expires_at),
                    session.revoked_at.map(model::to_unix_ms)
                ])
                .db()?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, token_hash: &str) -> Result<Option<Session>> {
        let token_hash = token_hash.to_string();
        self.read(move |c| {
            query_opt(c, "SELECT token_hash, address, created_at_ms, expires_at_ms, revoked_at_ms FROM sessions WHERE token_hash = ?1", [token_hash], decode_session)
        })
        .await
    }

    /// True when the session existed and was not revoked yet (expired or not).
    async fn revoke_session(&self, token_hash: &str, now: OffsetDateTime) -> Result<bool> {
        let token_hash = token_hash.to_string();
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE sessions SET revoked_at_ms = ?2 WHERE token_hash = ?1 AND revoked_at_ms IS NULL",
                )
                .db()?
                .execute(params![token_hash, model::to_unix_ms(now)])
                .db()?;
            Ok(changed > 0)
        })
        .await
    }

    /// Revokes every not-yet-revoked session of `address`, *including expired ones* (so nothing
    /// of the address stays usable even if clocks disagree), and returns their hashes, sorted.
    async fn revoke_sessions_of(&self, address: Address, now: OffsetDateTime) -> Result<Vec<String>> {
        self.write(move |c| {
            let mut hashes = query_all(
                c,
                "UPDATE sessions SET revoked_at_ms = ?2 WHERE address = ?1 AND revoked_at_ms IS NULL RETURNING token_hash",
                params![address.to_lower_hex(), model::to_unix_ms(now)],
                |r| r.get::<_, String>(0).db(),
            )?;
            hashes.sort();
            Ok(hashes)
        })
        .await
    }

    // --- rooms -----------------------------------------------------------------------------

    async fn create_room(&self, room: NewRoom, limits: MembershipLimits) -> Result<Room> {
        self.write(move |c| create_room_tx(c, &room, limits)).await
    }

    async fn get_or_create_dm(
        &self,
        id_if_new: String,
        a: Address,
        b: Address,
        now: OffsetDateTime,
        limits: MembershipLimits,
    ) -> Result<(Room, bool)> {
        // Most calls find the room: answer those from a reader without queueing a write. (A pair
        // of one address never has a room, so it falls through to the write, which refuses it.)
        let key = dm_key(a, b);
        let existing = self
            .read(move |c| {
                match query_opt(c, "SELECT id FROM rooms WHERE dm_key = ?1", [&key], |r| {
                    r.get::<_, String>(0).db()
                })? {
                    Some(id) => load_room(c, &id),
                    None => Ok(None),
                }
            })
            .await?;
        if let Some(room) = existing {
            return Ok((room, false));
        }
        self.write(move |c| get_or_create_dm_tx(c, &id_if_new, a, b, now, limits))
            .await
    }

    async fn get_room(&self, room_id: &str) -> Result<Option<Room>> {
        let room_id = room_id.to_string();
        self.read(move |c| load_room(c, &room_id)).await
    }

    async fn rooms_of(&self, address: Address) -> Result<Vec<Room>> {
        self.read(move |c| {
            let key = address.to_lower_hex();
            let mut rooms = query_all(
                c,
                "SELECT r.id, r.kind, r.name, r.created_by, r.created_at_ms, r.last_seq
                 FROM members m JOIN rooms r ON r.id = m.room_id WHERE m.address = ?1 ORDER BY r.id",
                [&key],
                decode_room,
            )?;
            let index: HashMap<String, usize> = rooms.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
            let pairs = query_all(
                c,
                "SELECT o.room_id, o.address FROM members m JOIN members o ON o.room_id = m.room_id
                 WHERE m.address = ?1 ORDER BY o.room_id, o.address",
                [&key],
                |r| {
                    Ok((
                        r.get::<_, String>(0).db()?,
                        parse_address(&r.get::<_, String>(1).db()?)?,
                    ))
                },
            )?;
            for (room_id, member) in pairs {
                if let Some(&i) = index.get(&room_id) {
                    rooms[i].members.push(member);
                }
            }
            Ok(rooms)
        })
        .await
    }

    async fn room_cursors_of(&self, address: Address) -> Result<Vec<(String, i64)>> {
        self.read(move |c| {
            query_all(
                c,
                "SELECT r.id, r.last_seq FROM members m JOIN rooms r ON r.id = m.room_id WHERE m.address = ?1 ORDER BY r.id",
                [address.to_lower_hex()],
                |r| Ok((r.get::<_, String>(0).db()?, r.get::<_, i64>(1).db()?)),
            )
        })
        .await
    }

    async fn read_markers(&self, room_id: &str) -> Result<Vec<(Address, i64)>> {
        let room_id = room_id.to_string();
        self.read(move |c| {
            query_all(
                c,
                "SELECT address, read_seq FROM members WHERE room_id = ?1 ORDER BY address",
                [room_id],
                |r| Ok((parse_address(&r.get::<_, String>(0).db()?)?, r.get::<_, i64>(1).db()?)),
            )
        })
        .await
    }

    async fn is_member(&self, room_id: &str, address: Address) -> Result<bool> {
        let room_id = room_id.to_string();
        self.read(move |c| member_exists(c, &room_id, address)).await
    }

    /// Also refuses DM rooms (`Forbidden`), whose two members never change.
    async fn add_member(&self, room_id: &str, address: Address, limits: MembershipLimits) -> Result<MembershipChange> {
        let room_id = room_id.to_string();
        self.write(move |c| add_member_tx(c, &room_id, address, limits)).await
    }

    /// Also refuses DM rooms (`Forbidden`), whose two members never change.
    async fn remove_member(&self, room_id: &str, address: Address) -> Result<(Room, bool)> {
        let room_id = room_id.to_string();
        self.write(move |c| remove_member_tx(c, &room_id, address)).await
    }

    // --- messages --------------------------------------------------------------------------

    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        self.write(move |c| append_tx(c, &message)).await
    }

    async fn history(&self, room_id: &str, page: HistoryPage, limit: usize) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let room_id = room_id.to_string();
        self.read(move |c| {
            let (sql, seq) = match page {
                HistoryPage::After(after) => (
                    format!("{MESSAGE_SELECT} WHERE room_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
                    after,
                ),
                HistoryPage::Before(before) => (
                    format!("{MESSAGE_SELECT} WHERE room_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"),
                    before,
                ),
            };
            query_all(c, &sql, params![room_id, seq, sql_limit(limit)], decode_message)
        })
        .await
    }

    async fn find_by_client_msg_id(&self, sender: Address, client_msg_id: &str) -> Result<Option<Message>> {
        let client_msg_id = client_msg_id.to_string();
        self.read(move |c| find_message(c, sender, &client_msg_id)).await
    }

    async fn set_read_marker(&self, room_id: &str, address: Address, seq: i64) -> Result<i64> {
        let room_id = room_id.to_string();
        self.write(move |c| {
            let stored = query_opt(
                c,
                "UPDATE members SET read_seq = max(read_seq, ?3) WHERE room_id = ?1 AND address = ?2 RETURNING read_seq",
                params![room_id, address.to_lower_hex(), seq],
                |r| r.get::<_, i64>(0).db(),
            )?;
            match stored {
                Some(stored) => Ok(stored),
                None if room_exists(c, &room_id)? => Err(Error::NotMember),
                None => Err(Error::RoomNotFound),
            }
        })
        .await
    }

    // --- scheduled messages ----------------------------------------------------------------

    /// Also refuses with `IdempotencyConflict` when the existing entry's room or body differs,
    /// and checks the room exists and the sender is a member.
    async fn schedule_message(
        &self,
        message: ScheduledMessage,
        max_per_user: usize,
    ) -> Result<(ScheduledMessage, bool)> {
        self.write(move |c| schedule_tx(c, &message, max_per_user)).await
    }

    async fn find_scheduled(&self, sender: Address, client_msg_id: &str) -> Result<Option<ScheduledMessage>> {
        let client_msg_id = client_msg_id.to_string();
        self.read(move |c| find_scheduled_entry(c, sender, &client_msg_id))
            .await
    }

    async fn due_scheduled(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<ScheduledMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let sql = format!("{SCHEDULED_SELECT} WHERE deliver_at_ms <= ?1 ORDER BY deliver_at_ms, id LIMIT ?2");
            query_all(
                c,
                &sql,
                params![model::to_unix_ms(now), sql_limit(limit)],
                decode_scheduled,
            )
        })
        .await
    }

    /// The message gets the scheduled entry's id and `created_at = now`. Besides `NotMember`,
    /// a room that is gone (`RoomNotFound`) or a different message already sent with the same
    /// `client_msg_id` (`IdempotencyConflict`) also drop the entry, as no retry could succeed.
    async fn deliver_scheduled(&self, id: &str, now: OffsetDateTime) -> Result<Option<Appended>> {
        let id = id.to_string();
        self.write(move |c| deliver_tx(c, &id, now)).await?
    }

    // --- bans ------------------------------------------------------------------------------

    async fn get_ban(&self, address: Address) -> Result<Option<Ban>> {
        self.read(move |c| {
            query_opt(
                c,
                "SELECT address, reason, banned_by, created_at_ms, until_ms FROM bans WHERE address = ?1",
                [address.to_lower_hex()],
                decode_ban,
            )
        })
        .await
    }

    // --- operations ------------------------------------------------------------------------

    /// `messages` counts messages that are not tombstones; `messages_last_minute` counts every
    /// message created in the last 60 seconds (tombstoned since or not: it is the send rate);
    /// `active_sessions` counts sessions neither revoked nor expired; `bans` counts every ban,
    /// expired ones included; `bytes_on_disk` is the database file plus its `-wal` file.
    async fn stats(&self) -> Result<StoreStats> {
        let now = model::to_unix_ms(model::now_ms());
        let mut stats = self
            .read(move |c| {
                let n = |sql: &str| -> Result<u64> { Ok(u64::try_from(count(c, sql, [])?).unwrap_or(0)) };
                let n_at =
                    |sql: &str, at_ms: i64| -> Result<u64> { Ok(u64::try_from(count(c, sql, [at_ms])?).unwrap_or(0)) };
                Ok(StoreStats {
                    users: n("SELECT COUNT(*) FROM users")?,
                    rooms: n("SELECT COUNT(*) FROM rooms")?,
                    // Seqs are gap-free and rows are never removed (a deletion leaves a
                    // tombstone in place), so the sum of the rooms' last seqs is the number of
                    // rows; minus the tombstones (counted on their partial index) it is the exact
                    // number of live messages, without scanning the messages table.
                    messages: n("SELECT (SELECT COALESCE(SUM(last_seq), 0) FROM rooms)
                                      - (SELECT COUNT(*) FROM messages WHERE deleted = 1)")?,
                    scheduled: n("SELECT COUNT(*) FROM scheduled")?,
                    active_sessions: n_at(
                        "SELECT COUNT(*) FROM sessions WHERE revoked_at_ms IS NULL AND expires_at_ms > ?1",
                        now,
                    )?,
                    messages_last_minute: n_at(
                        "SELECT COUNT(*) FROM messages WHERE created_at_ms >= ?1",
                        now.saturating_sub(60_000),
                    )?,
                    bans: n("SELECT COUNT(*) FROM bans")?,
                    bytes_on_disk: 0,
                })
            })
            .await?;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        stats.bytes_on_disk = [self.path.clone(), PathBuf::from(wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(stats)
    }

    // --- media metadata ------------------------------------------------------------------

    async fn put_media_meta(&self, meta: MediaMeta) -> Result<()> {
        self.write(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO media (id, uploader, content_type, size, name, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
                )
                .db()?
                .execute(params![
                    meta.id,
                    meta.uploader.to_lower_hex(),
                    meta.content_type,
                    i64::try_from(meta.size).unwrap_or(i64::MAX),
                    meta.name,
                    model::to_unix_ms(meta.created_at)
                ])
                .db()?;
            if inserted == 0 {
                return Err(Error::InvalidRequest(format!("media id {} is already taken", meta.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_media_meta(&self, id: &str) -> Result<Option<MediaMeta>> {
        let id = id.to_string();
        self.read(move |c| {
            query_opt(
                c,
                "SELECT id, uploader, content_type, size, name, created_at_ms FROM media WHERE id = ?1",
                [&id],
                decode_media,
            )
        })
        .await
    }

    async fn media_visible_to(&self, id: &str, address: Address) -> Result<bool> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(count(
                c,
                "SELECT EXISTS (
                     SELECT 1 FROM message_media mm
                     JOIN messages m ON m.id = mm.message_id AND m.deleted = 0
                     JOIN members b ON b.room_id = m.room_id AND b.address = ?2
                     WHERE mm.media_id = ?1)",
                params![id, address.to_lower_hex()],
            )? != 0)
        })
        .await
    }

    // --- operator (admin) ------------------------------------------------------------------

    async fn put_ban(&self, ban: Ban) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO bans (address, reason, banned_by, created_at_ms, until_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, banned_by = excluded.banned_by,
                     created_at_ms = excluded.created_at_ms, until_ms = excluded.until_ms",
            )
            .db()?
            .execute(params![
                ban.address.to_lower_hex(),
                ban.reason,
                ban.banned_by,
                model::to_unix_ms(ban.created_at),
                ban.until.map(model::to_unix_ms)
            ])
            .db()?;
            Ok(())
        })
        .await
    }

    async fn delete_ban(&self, address: Address) -> Result<bool> {
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM bans WHERE address = ?1")
                .db()?
                .execute([address.to_lower_hex()])
                .db()?
                > 0)
        })
        .await
    }

    /// Newest `created_at` first (ties by address).
    async fn list_bans(&self) -> Result<Vec<Ban>> {
        self.read(|c| {
            let sql = format!("{BAN_SELECT} ORDER BY created_at_ms DESC, address");
            query_all(c, &sql, [], decode_ban)
        })
        .await
    }

    /// `entry.id` is ignored; `detail` is stored as JSON text.
    async fn append_audit(&self, entry: AuditEntry) -> Result<i64> {
        let detail = serde_json::to_string(&entry.detail)
            .map_err(|e| Error::internal(format!("cannot encode audit detail: {e}")))?;
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_log (at_ms, actor, action, target, detail_json) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            )
            .db()?
            .query_row(
                params![model::to_unix_ms(entry.at), entry.actor, entry.action, entry.target, detail],
                |r| r.get::<_, i64>(0),
            )
            .db()
        })
        .await
    }

    /// Newest first means highest id first (ids follow insertion).
    async fn list_audit(&self, target: Option<String>, limit: usize) -> Result<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| match target {
            Some(target) => {
                let sql = format!("{AUDIT_SELECT} WHERE target = ?1 ORDER BY id DESC LIMIT ?2");
                query_all(c, &sql, params![target, sql_limit(limit)], decode_audit)
            }
            None => {
                let sql = format!("{AUDIT_SELECT} ORDER BY id DESC LIMIT ?1");
                query_all(c, &sql, [sql_limit(limit)], decode_audit)
            }
        })
        .await
    }

    /// Ordered by lower-case hex address (the same order as [`Address`]'s `Ord`).
    async fn list_users(&self, after: Option<Address>, limit: usize) -> Result<Vec<User>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Every stored address is `0x…`, so `''` sorts before all of them.
        let after = after.map(|a| a.to_lower_hex()).unwrap_or_default();
        self.read(move |c| {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE address > ?1 ORDER BY address LIMIT ?2");
            query_all(c, &sql, params![after, sql_limit(limit)], decode_user)
        })
        .await
    }

    /// Newest `created_at` first (ties by token hash, descending).
    async fn sessions_of(&self, address: Address) -> Result<Vec<Session>> {
        self.read(move |c| {
            let sql = format!("{SESSION_SELECT} WHERE address = ?1 ORDER BY created_at_ms DESC, token_hash DESC");
            query_all(c, &sql, [address.to_lower_hex()], decode_session)
        })
        .await
    }

    /// Each room with its members (sorted by address), as [`Store::get_room`] returns it.
    async fn list_rooms(&self, after: Option<String>, limit: usize) -> Result<Vec<Room>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = after.unwrap_or_default();
        self.read(move |c| {
            let sql = format!("{ROOM_SELECT} WHERE id > ?1 ORDER BY id LIMIT ?2");
            let mut rooms = query_all(c, &sql, params![after, sql_limit(limit)], decode_room)?;
            let (Some(first), Some(last)) = (rooms.first(), rooms.last()) else {
                return Ok(rooms);
            };
            // One query for the members of the whole page (same read transaction: same snapshot).
            let pairs = query_all(
                c,
                "SELECT room_id, address FROM members WHERE room_id >= ?1 AND room_id <= ?2 ORDER BY room_id, address",
                params![first.id, last.id],
                |r| {
                    Ok((
                        r.get::<_, String>(0).db()?,
                        parse_address(&r.get::<_, String>(1).db()?)?,
                    ))
                },
            )?;
            let index: HashMap<String, usize> = rooms.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
            for (room_id, member) in pairs {
                if let Some(&i) = index.get(&room_id) {
                    rooms[i].members.push(member);
                }
            }
            Ok(rooms)
        })
        .await
    }

    /// Tombstones included.
    async fn get_message(&self, id: &str) -> Result<Option<Message>> {
        let id = id.to_string();
        self.read(move |c| {
            query_opt(
                c,
                concat!("SELECT ", message_cols!(), " FROM messages WHERE id = ?1"),
                [id],
                decode_message,
            )
        })
        .await
    }

    async fn messages_of(&self, address: Address, after: Option<(String, i64)>, limit: usize) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Seqs start at 1, so ('', 0) is before every position.
        let (after_room, after_seq) = after.unwrap_or_default();
        self.read(move |c| {
            query_all(
                c,
                concat!(
                    "SELECT ",
                    message_cols!(),
                    " FROM messages WHERE sender = ?1 AND deleted = 0 AND (room_id, seq) > (?2, ?3)
                      ORDER BY room_id, seq LIMIT ?4"
                ),
                params![address.to_lower_hex(), after_room, after_seq, sql_limit(limit)],
                decode_message,
            )
        })
        .await
    }

    async fn count_messages_of(&self, address: Address) -> Result<u64> {
        self.read(move |c| {
            let n = count(
                c,
                "SELECT COUNT(*) FROM messages WHERE sender = ?1 AND deleted = 0",
                [address.to_lower_hex()],
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Ordered by `deliver_at` (ties by id), like [`Store::due_scheduled`].
    async fn scheduled_of(&self, address: Address) -> Result<Vec<ScheduledMessage>> {
        self.read(move |c| {
            let sql = format!("{SCHEDULED_SELECT} WHERE sender = ?1 ORDER BY deliver_at_ms, id");
            query_all(c, &sql, [address.to_lower_hex()], decode_scheduled)
        })
        .await
    }

    async fn tombstone_message(&self, id: &str) -> Result<Option<Message>> {
        let id = id.to_string();
        self.write(move |c| {
            let sql = format!("{TOMBSTONE_UPDATE} WHERE id = ?1 RETURNING {}", message_cols!());
            query_opt(c, &sql, [id], decode_message)
        })
        .await
    }

    /// Returns the tombstones ordered by (room_id, seq).
    async fn tombstone_messages_of(&self, address: Address, limit: usize) -> Result<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(move |c| tombstone_of_tx(c, address, limit)).await
    }

    /// `rooms` is sorted by id and includes DM rooms; see [`erase_tx`] for what stays.
    async fn erase_user(&self, address: Address) -> Result<ErasureReport> {
        self.write(move |c| erase_tx(c, address)).await
    }

    // --- control channel -------------------------------------------------------------------

    /// Also deletes the events older than [`CONTROL_RETENTION_MS`] before `now`, in the same
    /// command (a node that has not polled for an hour has missed them; they were meant to be
    /// acted on in seconds). Ids come from `AUTOINCREMENT`, so they are never reused even
    /// after pruning.
    async fn push_control(&self, event_json: String, now: OffsetDateTime) -> Result<i64> {
        self.write(move |c| push_control_tx(c, &event_json, now)).await
    }

    async fn control_since(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            query_all(
                c,
                "SELECT id, event_json FROM control_events WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after, sql_limit(limit)],
                |r| Ok((r.get::<_, i64>(0).db()?, r.get::<_, String>(1).db()?)),
            )
        })
        .await
    }

    /// `MAX(id)`, 0 when the table is empty. Pruning never empties it (the event just pushed
    /// is kept) and `AUTOINCREMENT` never reuses an id, so a node that starts watching here
    /// sees every later event and none before.
    async fn last_control_id(&self) -> Result<i64> {
        self.read(|c| count(c, "SELECT COALESCE(MAX(id), 0) FROM control_events", []))
            .await
    }
}
