//! [`PegQueue`] on SQLite: WAL, `synchronous=FULL`, every state change one
//! transaction, versioned migrations. The schema is documented in
//! `docs/QUEUE.md`; operators may read it with the `sqlite3` shell.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::Txid;
use peg_ops::{BurnHeight, PegOp, SignedStacksTx};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{Error, OpEvent, OpState, PegQueue, QueuedOp};

/// Migrations, in order; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: operations and the scan cursor.
    "CREATE TABLE ops (
        txid TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        block_height INTEGER NOT NULL,
        vtxindex INTEGER NOT NULL,
        burn_header_hash TEXT NOT NULL,
        op TEXT NOT NULL,
        state TEXT NOT NULL,
        state_data TEXT NOT NULL,
        stacks_nonce INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX ops_by_state ON ops (state, block_height, vtxindex);
    CREATE TABLE scan (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_scanned_height INTEGER NOT NULL
    ) STRICT;",
    // 2: replay and outflow checks (issue #13). `signature_digest` and
    // `amount_sats` of the rows already stored are filled in by `backfill`.
    "ALTER TABLE ops ADD COLUMN signature_digest TEXT;
    ALTER TABLE ops ADD COLUMN amount_sats INTEGER;
    ALTER TABLE ops ADD COLUMN accepted_at INTEGER;
    ALTER TABLE ops ADD COLUMN waiting TEXT;
    CREATE INDEX ops_by_signature ON ops (signature_digest) WHERE signature_digest IS NOT NULL;
    CREATE INDEX ops_by_accepted_at ON ops (accepted_at) WHERE accepted_at IS NOT NULL;",
    // 3: the record of what was done (issue #14): one row per state change,
    // kept for good. The ops already stored get one event for their current
    // state from `backfill`.
    "CREATE TABLE op_events (
        id INTEGER PRIMARY KEY,
        txid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_unix INTEGER NOT NULL,
        state TEXT NOT NULL,
        stacks_txid TEXT,
        bitcoin_txid TEXT,
        reason TEXT,
        UNIQUE (txid, seq)
    ) STRICT;",
    // 4: batches (issue #16): a signed Stacks transaction is stored once in
    // `stacks_txs`, and every op holding it (a `mint-many!` or `burn-many!`
    // batch's ops) refers to it by `batch_id` instead of carrying its bytes
    // in its own `state_data`. Rows stored before keep `batch_id` NULL and
    // their full state in `state_data`, read as before.
    "CREATE TABLE stacks_txs (
        id INTEGER PRIMARY KEY,
        stacks_txid TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        fee INTEGER NOT NULL,
        raw BLOB NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX stacks_txs_by_txid ON stacks_txs (stacks_txid);
    ALTER TABLE ops ADD COLUMN batch_id INTEGER REFERENCES stacks_txs (id);
    CREATE INDEX ops_by_batch ON ops (batch_id) WHERE batch_id IS NOT NULL;",
];

/// States in which a peg-out request's signature is not (or no longer)
/// taken: it was never accepted, or was refused before any side effect.
const UNACCEPTED: &str = "('detected', 'rejected')";

/// States after which the coordinator does nothing more with an op.
const TERMINAL: &str = "('rejected', 'done', 'refunded', 'failed')";

fn storage(e: rusqlite::Error) -> Error {
    Error::Storage(e.to_string())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The SQLite queue.
#[derive(Debug)]
pub struct SqlitePegQueue {
    conn: Mutex<Connection>,
}

impl SqlitePegQueue {
    /// Opens (creating if needed) the queue at `path` and runs pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        // The busy timeout first: setting the journal mode needs a lock that
        // a running coordinator's write may hold for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        migrate(&mut conn)?;
        Ok(SqlitePegQueue {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock left no partial transaction behind:
        // SQLite rolled it back. The connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns every op, oldest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn all(&self) -> Result<Vec<QueuedOp>, Error> {
        self.select("1 = 1")
    }

    /// Returns the number of ops in each state.
    ///
    /// # Errors
    /// Storage failures.
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT state, COUNT(*) FROM ops GROUP BY state")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(storage)?;
        rows.map(|r| {
            r.map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
                .map_err(storage)
        })
        .collect()
    }

    /// Returns why each waiting op waits (a fee shortfall after the burn, a
    /// burn no longer final, …), by txid (display hex).
    ///
    /// # Errors
    /// Storage failures.
    pub fn waiting(&self) -> Result<BTreeMap<String, String>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT txid, waiting FROM ops WHERE waiting IS NOT NULL AND state NOT IN {TERMINAL}"
            ))
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(storage)?;
        rows.map(|r| r.map_err(storage)).collect()
    }

    fn select(&self, condition: &str) -> Result<Vec<QueuedOp>, Error> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {OP_COLUMNS} FROM {OP_FROM} WHERE {condition} ORDER BY o.block_height, o.vtxindex, o.txid"
        );
        let mut stmt = conn.prepare(&sql).map_err(storage)?;
        let rows = stmt.query_map([], op_row).map_err(storage)?;
        rows.map(|r| r.map_err(storage).and_then(row_to_op))
            .collect()
    }
}

/// The columns [`op_row`] reads: the op's own, then the batch it holds
/// (all `NULL` when it holds none).
const OP_COLUMNS: &str = "o.op, o.state, o.state_data, o.attempts, o.last_error, o.waiting, o.batch_id, b.stacks_txid, b.nonce, b.fee, b.raw";

/// Every op with the batch (`stacks_txs` row) it refers to, if any.
const OP_FROM: &str = "ops o LEFT JOIN stacks_txs b ON b.id = o.batch_id";

/// One row of [`OP_COLUMNS`].
struct Row {
    op: String,
    state: String,
    state_data: String,
    attempts: i64,
    last_error: Option<String>,
    waiting: Option<String>,
    batch_id: Option<i64>,
    batch: (Option<String>, Option<i64>, Option<i64>, Option<Vec<u8>>),
}

fn op_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        op: r.get(0)?,
        state: r.get(1)?,
        state_data: r.get(2)?,
        attempts: r.get(3)?,
        last_error: r.get(4)?,
        waiting: r.get(5)?,
        batch_id: r.get(6)?,
        batch: (r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?),
    })
}

fn row_to_op(row: Row) -> Result<QueuedOp, Error> {
    let op: PegOp =
        serde_json::from_str(&row.op).map_err(|e| Error::Corrupt(format!("op: {e}")))?;
    let state = match row.batch_id {
        // No batch: the whole state is in `state_data` (every state but a
        // batch holder's, and every row stored before migration 4).
        None => serde_json::from_str(&row.state_data)
            .map_err(|e| Error::Corrupt(format!("state of {}: {e}", op.txid())))?,
        Some(id) => {
            let tx = batch_tx(id, row.batch)
                .map_err(|e| Error::Corrupt(format!("state of {}: {e}", op.txid())))?;
            match row.state.as_str() {
                "stacks_tx_signed" => OpState::StacksTxSigned { tx },
                "stacks_tx_broadcast" => OpState::StacksTxBroadcast { tx },
                other => {
                    return Err(Error::Corrupt(format!(
                        "state of {}: {other} refers to stacks transaction {id}",
                        op.txid()
                    )))
                }
            }
        }
    };
    Ok(QueuedOp {
        op,
        state,
        attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
        last_error: row.last_error,
        waiting: row.waiting,
    })
}

/// The signed transaction of batch `id`, from its `stacks_txs` columns.
fn batch_tx(
    id: i64,
    (txid, nonce, fee, raw): (Option<String>, Option<i64>, Option<i64>, Option<Vec<u8>>),
) -> Result<SignedStacksTx, String> {
    let (Some(txid), Some(nonce), Some(fee), Some(raw)) = (txid, nonce, fee, raw) else {
        return Err(format!("its stacks transaction {id} is missing"));
    };
    let n = |what: &str, v: i64| {
        u64::try_from(v).map_err(|_| format!("stacks transaction {id}: {what} {v} is negative"))
    };
    Ok(SignedStacksTx {
        txid: txid
            .parse()
            .map_err(|e| format!("stacks transaction {id}: txid {txid:?}: {e}"))?,
        nonce: n("nonce", nonce)?,
        fee: n("fee", fee)?,
        raw,
    })
}

/// Stores `s` in `stacks_txs` unless an identical row is there already
/// (the same transaction stored by an earlier round); returns its id.
fn store_batch(tx: &Transaction<'_>, s: &SignedStacksTx) -> Result<i64, Error> {
    let int = |what: &str, v: u64| {
        i64::try_from(v)
            .map_err(|_| Error::Storage(format!("stacks tx {}: {what} {v} out of range", s.txid)))
    };
    let (txid, nonce, fee) = (
        s.txid.to_string(),
        int("nonce", s.nonce)?,
        int("fee", s.fee)?,
    );
    let found: Option<i64> = tx
        .query_row(
            "SELECT id FROM stacks_txs WHERE stacks_txid = ?1 AND nonce = ?2 AND fee = ?3 AND raw = ?4 LIMIT 1",
            params![txid, nonce, fee, s.raw],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    if let Some(id) = found {
        return Ok(id);
    }
    tx.execute(
        "INSERT INTO stacks_txs (stacks_txid, nonce, fee, raw, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![txid, nonce, fee, s.raw, now()],
    )
    .map_err(storage)?;
    Ok(tx.last_insert_rowid())
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(storage)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT")
        .map_err(storage)?;
    let version: i64 = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(storage)?
        .unwrap_or(0);
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(Error::Corrupt(format!(
            "the queue has schema version {version}, newer than this coordinator knows ({known})"
        )));
    }
    for (i, script) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(script)
            .map_err(|e| Error::Storage(format!("migration {}: {e}", i + 1)))?;
        backfill(&tx, i + 1)?;
    }
    tx.execute("DELETE FROM schema_version", [])
        .map_err(storage)?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [known])
        .map_err(storage)?;
    tx.commit().map_err(storage)
}

/// Fills in, in Rust, what migration `number` added and SQL cannot compute.
fn backfill(tx: &Transaction<'_>, number: usize) -> Result<(), Error> {
    match number {
        2 => backfill_2(tx),
        3 => backfill_3(tx),
        _ => Ok(()),
    }
}

/// Migration 3: one event per op stored before it, for its current state
/// (at its last change), with the txids and reason that state still holds.
/// What earlier states held (a `done` op's mint or payout txid) is gone.
fn backfill_3(tx: &Transaction<'_>) -> Result<(), Error> {
    let rows: Vec<(String, String, i64)> = {
        let mut stmt = tx
            .prepare("SELECT txid, state_data, updated_at FROM ops")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)?
    };
    for (txid, data, at) in rows {
        let state: OpState = serde_json::from_str(&data)
            .map_err(|e| Error::Corrupt(format!("state of {txid}: {e}")))?;
        record_event(tx, &txid, &Event::of(&state), at)?;
    }
    Ok(())
}

/// Migration 2: the replay and outflow columns of the rows already stored.
fn backfill_2(tx: &Transaction<'_>) -> Result<(), Error> {
    let rows: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT txid, op FROM ops WHERE kind = 'peg_out_request'")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)?
    };
    for (txid, json) in rows {
        let op: PegOp =
            serde_json::from_str(&json).map_err(|e| Error::Corrupt(format!("op {txid}: {e}")))?;
        let (digest, amount) = request_columns(&op);
        tx.execute(
            "UPDATE ops SET signature_digest = ?2, amount_sats = ?3 WHERE txid = ?1",
            params![txid, digest, amount],
        )
        .map_err(storage)?;
    }
    // Ops accepted before this migration: their last change is no earlier
    // than their acceptance, so the daily limit counts them at least as long.
    tx.execute(
        &format!("UPDATE ops SET accepted_at = updated_at WHERE state NOT IN {UNACCEPTED}"),
        [],
    )
    .map_err(storage)?;
    Ok(())
}

/// The replay digest (hex) and amount of a peg-out request; `None` for a peg-in.
fn request_columns(op: &PegOp) -> (Option<String>, Option<i64>) {
    match op {
        PegOp::PegOutRequest(r) => (
            Some(hex::encode(peg_rules::request_signature_digest(r))),
            Some(to_i64(r.amount.to_sat())),
        ),
        PegOp::PegIn(_) => (None, None),
    }
}

fn insert(tx: &Transaction<'_>, op: &PegOp) -> Result<bool, Error> {
    let kind = match op {
        PegOp::PegIn(_) => "peg_in",
        PegOp::PegOutRequest(_) => "peg_out_request",
    };
    let json = serde_json::to_string(op).map_err(|e| Error::Storage(e.to_string()))?;
    let state =
        serde_json::to_string(&OpState::Detected).map_err(|e| Error::Storage(e.to_string()))?;
    let (digest, amount) = request_columns(op);
    let n = tx
        .prepare_cached(
            "INSERT INTO ops (txid, kind, block_height, vtxindex, burn_header_hash, op, state, state_data, created_at, updated_at, signature_digest, amount_sats)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'detected', ?7, ?8, ?8, ?9, ?10)
             ON CONFLICT (txid) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                op.txid().to_string(),
                kind,
                to_i64(op.block_height().0),
                i64::from(match op {
                    PegOp::PegIn(o) => o.vtxindex,
                    PegOp::PegOutRequest(o) => o.vtxindex,
                }),
                op.burn_header_hash().to_string(),
                json,
                state,
                now(),
                digest,
                amount
            ])
        })
        .map_err(storage)?;
    if n == 1 {
        record_event(
            tx,
            &op.txid().to_string(),
            &Event::of(&OpState::Detected),
            now(),
        )?;
    }
    Ok(n == 1)
}

/// An event row before it is written.
struct Event<'a> {
    state: &'a str,
    stacks_txid: Option<String>,
    bitcoin_txid: Option<String>,
    reason: Option<&'a str>,
}

impl<'a> Event<'a> {
    fn of(state: &'a OpState) -> Self {
        Event {
            state: state.name(),
            stacks_txid: state.stacks_txid().map(|t| t.to_string()),
            bitcoin_txid: state.bitcoin_txid().map(|t| t.to_string()),
            reason: state.reason(),
        }
    }
}

/// Appends an event to the history of `txid`, in the caller's transaction.
fn record_event(tx: &Transaction<'_>, txid: &str, e: &Event<'_>, at: i64) -> Result<(), Error> {
    // Cached: a round of many ops runs it once per op.
    tx.prepare_cached(
        "INSERT INTO op_events (txid, seq, at_unix, state, stacks_txid, bitcoin_txid, reason)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM op_events WHERE txid = ?1), ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![txid, at, e.state, e.stacks_txid, e.bitcoin_txid, e.reason]))
    .map_err(storage)?;
    Ok(())
}

type EventRow = (
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

const EVENT_COLUMNS: &str = "txid, seq, at_unix, state, stacks_txid, bitcoin_txid, reason";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn row_to_event(
    (txid, seq, at, state, stacks_txid, bitcoin_txid, reason): EventRow,
) -> Result<OpEvent, Error> {
    let corrupt = |what: &str, v: &str, e: &dyn std::fmt::Display| {
        Error::Corrupt(format!("event of {txid}: {what} {v:?}: {e}"))
    };
    Ok(OpEvent {
        txid: txid.parse().map_err(|e| corrupt("txid", &txid, &e))?,
        seq: u64::try_from(seq).unwrap_or(0),
        at_unix: u64::try_from(at).unwrap_or(0),
        state,
        stacks_txid: stacks_txid
            .as_deref()
            .map(|t| t.parse().map_err(|e| corrupt("stacks txid", t, &e)))
            .transpose()?,
        bitcoin_txid: bitcoin_txid
            .as_deref()
            .map(|t| t.parse().map_err(|e| corrupt("bitcoin txid", t, &e)))
            .transpose()?,
        reason,
    })
}

impl SqlitePegQueue {
    /// Returns the newest `limit` events of all ops, newest first (what
    /// `/status` shows).
    ///
    /// # Errors
    /// Storage failures and unreadable rows.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<OpEvent>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM op_events ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(storage)?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], event_row)
            .map_err(storage)?;
        rows.map(|r| r.map_err(storage).and_then(row_to_event))
            .collect()
    }
}

impl PegQueue for SqlitePegQueue {
    fn record_scanned_block(&self, height: BurnHeight, ops: &[PegOp]) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        for op in ops {
            insert(&tx, op)?;
        }
        tx.execute(
            "INSERT INTO scan (id, last_scanned_height) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_scanned_height = excluded.last_scanned_height",
            [to_i64(height.0)],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    fn last_scanned_height(&self) -> Result<Option<BurnHeight>, Error> {
        let conn = self.lock();
        let h: Option<i64> = conn
            .query_row(
                "SELECT last_scanned_height FROM scan WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        Ok(h.map(|h| BurnHeight(u64::try_from(h).unwrap_or(0))))
    }

    fn insert_op(&self, op: &PegOp) -> Result<bool, Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let inserted = insert(&tx, op)?;
        tx.commit().map_err(storage)?;
        Ok(inserted)
    }

    fn pending(&self) -> Result<Vec<QueuedOp>, Error> {
        self.select(&format!("o.state NOT IN {TERMINAL}"))
    }

    fn get(&self, txid: &Txid) -> Result<Option<QueuedOp>, Error> {
        let conn = self.lock();
        let row = conn
            .query_row(
                &format!("SELECT {OP_COLUMNS} FROM {OP_FROM} WHERE o.txid = ?1"),
                [txid.to_string()],
                op_row,
            )
            .optional()
            .map_err(storage)?;
        row.map(row_to_op).transpose()
    }

    fn set_state(&self, txid: &Txid, state: &OpState) -> Result<(), Error> {
        self.set_states(&[(*txid, state.clone())])
    }

    fn set_states(&self, moves: &[(Txid, OpState)]) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        // Each signed Stacks transaction of the round is stored once, in
        // `stacks_txs`; its ops refer to it (a batch of 100 mints: one copy
        // of its bytes, not 100).
        let mut batches: Vec<(&SignedStacksTx, i64)> = Vec::new();
        for (txid, state) in moves {
            let (nonce, batch_id, data) = match state {
                OpState::StacksTxSigned { tx: s } | OpState::StacksTxBroadcast { tx: s } => {
                    let id = match batches.iter().find(|(b, _)| *b == s) {
                        Some((_, id)) => *id,
                        None => {
                            let id = store_batch(&tx, s)?;
                            batches.push((s, id));
                            id
                        }
                    };
                    // What the row holds for an operator reading it with
                    // `sqlite3`; the transaction itself is batch `id`.
                    let data = format!(
                        r#"{{"state":"{}","stacks_txid":"{}","batch_id":{id}}}"#,
                        state.name(),
                        s.txid
                    );
                    (Some(to_i64(s.nonce)), Some(id), data)
                }
                _ => (
                    None,
                    None,
                    serde_json::to_string(state).map_err(|e| Error::Storage(e.to_string()))?,
                ),
            };
            let n = tx
                .prepare_cached(
                    "UPDATE ops SET state = ?2, state_data = ?3, stacks_nonce = ?4, batch_id = ?6, last_error = NULL, waiting = NULL, updated_at = ?5,
                        accepted_at = CASE
                            WHEN ?2 IN ('detected', 'rejected') THEN NULL
                            ELSE COALESCE(accepted_at, ?5)
                        END
                     WHERE txid = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![txid.to_string(), state.name(), data, nonce, now(), batch_id])
                })
                .map_err(storage)?;
            if n == 0 {
                // Dropping the transaction rolls the whole round back.
                return Err(Error::UnknownOp(*txid));
            }
            record_event(&tx, &txid.to_string(), &Event::of(state), now())?;
        }
        // A transaction no op holds any more (its ops moved on, or a
        // replacement took its nonce) goes, as its bytes left `state_data`
        // before batches; the history keeps its txid. The table holds the
        // live transactions only, so this is a short scan.
        tx.execute(
            "DELETE FROM stacks_txs WHERE NOT EXISTS (SELECT 1 FROM ops WHERE ops.batch_id = stacks_txs.id)",
            [],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    fn record_failure(&self, txid: &Txid, error: &str) -> Result<u32, Error> {
        let conn = self.lock();
        let attempts: Option<i64> = conn
            .query_row(
                "UPDATE ops SET attempts = attempts + 1, last_error = ?2, updated_at = ?3 WHERE txid = ?1 RETURNING attempts",
                params![txid.to_string(), error, now()],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        attempts
            .map(|a| u32::try_from(a).unwrap_or(u32::MAX))
            .ok_or(Error::UnknownOp(*txid))
    }

    fn remove_unacted(&self, txid: &Txid) -> Result<bool, Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let n = tx
            .execute(
                "DELETE FROM ops WHERE txid = ?1 AND state IN ('detected', 'accepted', 'rejected', 'refund_requested')",
                [txid.to_string()],
            )
            .map_err(storage)?;
        if n == 1 {
            // The op goes; its history stays.
            let e = Event {
                state: "removed",
                stacks_txid: None,
                bitcoin_txid: None,
                reason: Some("its block left the best chain before anything was signed"),
            };
            record_event(&tx, &txid.to_string(), &e, now())?;
        }
        tx.commit().map_err(storage)?;
        Ok(n == 1)
    }

    fn rewind_scan(&self, height: Option<BurnHeight>) -> Result<(), Error> {
        let conn = self.lock();
        match height {
            Some(h) => conn
                .execute(
                    "UPDATE scan SET last_scanned_height = MIN(last_scanned_height, ?1) WHERE id = 1",
                    [to_i64(h.0)],
                )
                .map_err(storage)?,
            None => conn.execute("DELETE FROM scan", []).map_err(storage)?,
        };
        Ok(())
    }

    fn last_signed_stacks_nonce(&self) -> Result<Option<u64>, Error> {
        let conn = self.lock();
        let n: Option<i64> = conn
            .query_row(
                "SELECT MAX(stacks_nonce) FROM ops WHERE state IN ('stacks_tx_signed', 'stacks_tx_broadcast')",
                [],
                |r| r.get(0),
            )
            .map_err(storage)?;
        Ok(n.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    fn signature_used_by(&self, digest: &[u8; 32], except: &Txid) -> Result<Option<Txid>, Error> {
        let conn = self.lock();
        let t: Option<String> = conn
            .query_row(
                &format!(
                    "SELECT txid FROM ops WHERE signature_digest = ?1 AND txid != ?2 AND state NOT IN {UNACCEPTED}
                     ORDER BY block_height, vtxindex, txid LIMIT 1"
                ),
                params![hex::encode(digest), except.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        t.map(|t| {
            t.parse()
                .map_err(|e| Error::Corrupt(format!("txid {t:?}: {e}")))
        })
        .transpose()
    }

    fn outflow_since(&self, since_unix: u64) -> Result<bitcoin::Amount, Error> {
        let conn = self.lock();
        let sum: Option<i64> = conn
            .query_row(
                &format!(
                    "SELECT SUM(amount_sats) FROM ops WHERE kind = 'peg_out_request' AND accepted_at >= ?1 AND state NOT IN {UNACCEPTED}"
                ),
                [to_i64(since_unix)],
                |r| r.get(0),
            )
            .map_err(storage)?;
        Ok(bitcoin::Amount::from_sat(
            sum.map_or(0, |s| u64::try_from(s).unwrap_or(0)),
        ))
    }

    fn set_waiting(&self, txid: &Txid, why: Option<String>) -> Result<(), Error> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE ops SET waiting = ?2 WHERE txid = ?1",
                params![txid.to_string(), why],
            )
            .map_err(storage)?;
        if n == 0 {
            return Err(Error::UnknownOp(*txid));
        }
        Ok(())
    }

    fn history(&self, txid: &Txid) -> Result<Vec<OpEvent>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM op_events WHERE txid = ?1 ORDER BY seq"
            ))
            .map_err(storage)?;
        let rows = stmt
            .query_map([txid.to_string()], event_row)
            .map_err(storage)?;
        rows.map(|r| r.map_err(storage).and_then(row_to_event))
            .collect()
    }
}
