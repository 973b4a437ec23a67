//! Our own record of the peg wallet's coins, in a SQLite file.
//!
//! [`CoinRecord`] is built from the Bitcoin blocks the node serves
//! ([`CoinRecord::sync`]), from the peg wallet's first height, for every
//! watched scriptPubKey (the current key's address and old keys' ones, each
//! from its own height). It follows reorgs: it keeps the hash of every block
//! it applied, and when the node's chain no longer holds them it walks back
//! to the fork point and undoes what happened above it. It also knows our
//! own transactions before they confirm ([`CoinRecord::record_own_spend`]):
//! their inputs are reserved and their change is an unconfirmed coin.
//! Payouts read [`CoinRecord::unspent`] instead of `scantxoutset`, which
//! remains a one-off repair ([`CoinRecord::repair_from_scan`]).
//!
//! Nothing here needs `-txindex`: blocks are fetched by hash.
//!
//! Coinbase outputs paying a watched script are recorded like any other
//! (the peg wallet is never a coinbase payee; their maturity is not
//! tracked). With no watched script, `sync` does nothing.
//!
//! # Own spends and reorgs
//!
//! An own transaction stays *reserved* until it confirms, a block holds a
//! conflicting transaction (then it and the own transactions spending its
//! change are dropped: [`SyncReport::own_spends_dropped`]), or the caller
//! forgets it ([`CoinRecord::forget_own_spend`]) because the node refused it
//! for good. A reorg that takes an own transaction out of the chain makes
//! it unconfirmed again, still reserved: the coins it spent are not offered
//! again, since bitcoind puts it back in its mempool and it may confirm
//! again; offering its inputs to a new payout could pay a peg-out twice.
//! [`CoinRecord::pending_own_spends`] lists them for rebroadcast. Someone
//! else's spend of our coin taken out by a reorg makes the coin unspent
//! again; a coin created above the fork by someone else's transaction is
//! deleted (if it comes back in another block, it is recorded again).
//!
//! # Schema (version 1)
//!
//! - `meta(first_height)`: the height the record starts at.
//! - `scripts(script, from_height, scanned_to)`: watched scriptPubKeys; the
//!   outputs paying one are recorded for heights `from_height..=scanned_to`.
//! - `blocks(height, hash)`: the chain the record follows.
//! - `coins(txid, vout, value, script, height, spent_by, spent_height)`:
//!   `height` NULL for our own unconfirmed change, `spent_by` NULL when
//!   unspent, `spent_height` NULL for our own unconfirmed spend.
//! - `own_txs(txid, tx, height)` and `own_inputs(txid, vout, own_txid)`:
//!   our own transactions (consensus-encoded), `height` NULL until mined,
//!   and every outpoint they spend.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bitcoin::consensus::encode;
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, Block, BlockHash, OutPoint, Script, ScriptBuf, Transaction, TxOut, Txid};
use bitcoin_node_client::BitcoinNode;
pub use bitcoin_node_client::Utxo;
use rusqlite::{params, Connection, OptionalExtension};

/// How many blocks [`CoinRecord::sync`] applies, rescans or rolls back per
/// call, so a caller that syncs between payout rounds stays responsive.
pub const DEFAULT_BLOCKS_PER_SYNC: u64 = 500;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node failed to answer (a missing block, a timeout...): retry later.
    #[error("bitcoin node, {what}: {source}")]
    Node {
        /// What was asked.
        what: String,
        /// The node client's error.
        #[source]
        source: bitcoin_node_client::Error,
    },
    /// The node answered something that cannot be right (a block whose
    /// hash is not the one asked for, a height beyond what SQLite stores).
    #[error("bitcoin node answered unusable data: {0}")]
    BadNodeData(String),
    /// The SQLite file could not be read or written.
    #[error("coin record storage: {0}")]
    Storage(String),
    /// The file holds something this code did not write, or was made for
    /// another configuration.
    #[error("coin record corrupt or mismatched: {0}")]
    Corrupt(String),
    /// A script was to be watched from below the record's first height.
    #[error("cannot watch from height {from_height}: the record starts at {first_height}")]
    BelowFirstHeight {
        /// The height asked for.
        from_height: u64,
        /// The record's first height.
        first_height: u64,
    },
    /// An OP_RETURN script holds no coins.
    #[error("an OP_RETURN script cannot be watched")]
    Unspendable,
    /// The script is not watched.
    #[error("script {0} is not watched")]
    NotWatched(ScriptBuf),
    /// The record has not synced a block yet.
    #[error("the coin record has not synced any block yet")]
    NotSynced,
    /// An own transaction spends a coin a confirmed transaction spent.
    #[error("{outpoint} is already spent by {by}, confirmed")]
    AlreadySpent {
        /// The coin.
        outpoint: OutPoint,
        /// The transaction that spent it.
        by: Txid,
    },
    /// A confirmed own transaction cannot be forgotten.
    #[error("our transaction {0} is confirmed")]
    OwnSpendConfirmed(Txid),
}

impl Error {
    /// Whether trying again later may succeed (the node failed, or answered
    /// data that a reorg in progress may explain).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Node { .. } | Error::BadNodeData(_))
    }
}

/// A confirmed coin as the record holds it ([`CoinRecord::confirmed_coins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCoin {
    /// Where it is.
    pub outpoint: OutPoint,
    /// Its value and script.
    pub txout: TxOut,
    /// The height of the block that made it.
    pub height: u64,
    /// Whether a block spent it.
    pub spent_in_block: bool,
}

/// Which coins [`CoinRecord::unspent`] offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Include {
    /// Confirmed coins only (as coin selection requires today).
    #[default]
    Confirmed,
    /// Also our own unconfirmed change (0 confirmations).
    OwnUnconfirmed,
}

/// What one [`CoinRecord::sync`] call changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Blocks applied above the previous tip.
    pub blocks_applied: u64,
    /// Blocks at or below the tip read again for scripts watched late.
    pub blocks_rescanned: u64,
    /// Blocks undone by reorgs.
    pub blocks_rolled_back: u64,
    /// Coins recorded.
    pub coins_added: u64,
    /// Coins whose confirmed spend was recorded.
    pub coins_spent: u64,
    /// Own transactions dropped because a block spends their inputs
    /// otherwise (with the own transactions spending their change).
    pub own_spends_dropped: Vec<Txid>,
    /// The synced tip after the call.
    pub tip: Option<u64>,
    /// Whether the record reached the node's tip.
    pub caught_up: bool,
}

/// What [`CoinRecord::repair_from_scan`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Coins the scan holds that the record lacked.
    pub added: u64,
    /// Coins the record had as spent that the scan holds unspent.
    pub restored: u64,
    /// Coins the record had as unspent that the scan lacks (deleted).
    pub removed: u64,
}

/// Migrations, in order; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the watched scripts, the followed chain, coins, own transactions.
    "CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        first_height INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE scripts (
        script BLOB PRIMARY KEY NOT NULL,
        from_height INTEGER NOT NULL,
        scanned_to INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE blocks (
        height INTEGER PRIMARY KEY NOT NULL,
        hash BLOB NOT NULL
    ) STRICT;
    CREATE TABLE coins (
        txid BLOB NOT NULL,
        vout INTEGER NOT NULL,
        value INTEGER NOT NULL,
        script BLOB NOT NULL,
        height INTEGER,
        spent_by BLOB,
        spent_height INTEGER,
        PRIMARY KEY (txid, vout)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX coins_unspent_by_script ON coins (script) WHERE spent_by IS NULL;
    CREATE INDEX coins_by_height ON coins (height);
    CREATE INDEX coins_by_spent_height ON coins (spent_height);
    CREATE INDEX coins_by_spender ON coins (spent_by);
    CREATE TABLE own_txs (
        txid BLOB PRIMARY KEY NOT NULL,
        tx BLOB NOT NULL,
        height INTEGER
    ) STRICT;
    CREATE TABLE own_inputs (
        txid BLOB NOT NULL,
        vout INTEGER NOT NULL,
        own_txid BLOB NOT NULL,
        PRIMARY KEY (txid, vout)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX own_inputs_by_tx ON own_inputs (own_txid);",
];

/// `rusqlite` results as ours, without exposing `rusqlite` in the API.
trait Db<T> {
    fn db(self) -> Result<T, Error>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, Error> {
        self.map_err(|e| Error::Storage(e.to_string()))
    }
}

fn height_to_sql(h: u64) -> Result<i64, Error> {
    i64::try_from(h).map_err(|_| Error::BadNodeData(format!("height {h} is out of range")))
}

fn height_from_sql(h: i64) -> Result<u64, Error> {
    u64::try_from(h).map_err(|_| Error::Corrupt(format!("negative height {h}")))
}

fn txid_from_sql(b: &[u8]) -> Result<Txid, Error> {
    <[u8; 32]>::try_from(b)
        .map(Txid::from_byte_array)
        .map_err(|_| Error::Corrupt(format!("a txid of {} bytes", b.len())))
}

fn hash_from_sql(b: &[u8]) -> Result<BlockHash, Error> {
    <[u8; 32]>::try_from(b)
        .map(BlockHash::from_byte_array)
        .map_err(|_| Error::Corrupt(format!("a block hash of {} bytes", b.len())))
}

fn ask<T>(
    what: impl FnOnce() -> String,
    r: Result<T, bitcoin_node_client::Error>,
) -> Result<T, Error> {
    r.map_err(|source| Error::Node {
        what: what(),
        source,
    })
}

/// The record: one SQLite file (WAL, `synchronous=FULL`), every block
/// applied or rolled back in one transaction.
#[derive(Debug)]
pub struct CoinRecord {
    conn: Connection,
    first_height: u64,
    /// Watched scripts and the last height each is recorded for (-1: none).
    scripts: HashMap<ScriptBuf, i64>,
}

impl CoinRecord {
    /// Opens (creating if needed) the record at `path`, starting at
    /// `first_height` (the peg wallet's first height: no coin of any
    /// watched script is older), and runs pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated, or was created with
    /// another first height (delete it to rebuild the record from blocks).
    pub fn open(path: &Path, first_height: u64) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").db()?;
        conn.pragma_update(None, "synchronous", "FULL").db()?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
        migrate(&mut conn)?;
        let first = height_to_sql(first_height)?;
        let stored: Option<i64> = conn
            .query_row("SELECT first_height FROM meta WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .db()?;
        match stored {
            Some(s) if s != first => {
                return Err(Error::Corrupt(format!(
                    "{} starts at height {s}, not {first_height}: delete it to rebuild",
                    path.display()
                )))
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (id, first_height) VALUES (1, ?1)",
                    [first],
                )
                .db()?;
            }
        }
        let mut record = CoinRecord {
            conn,
            first_height,
            scripts: HashMap::new(),
        };
        record.load_scripts()?;
        Ok(record)
    }

    fn load_scripts(&mut self) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT script, scanned_to FROM scripts")
            .db()?;
        let rows = stmt
            .query_map([], |r| {
                Ok((ScriptBuf::from_bytes(r.get::<_, Vec<u8>>(0)?), r.get(1)?))
            })
            .db()?;
        self.scripts = rows.collect::<rusqlite::Result<_>>().db()?;
        Ok(())
    }

    /// Watches `script` from `from_height`: its outputs from that height on
    /// become coins. A script added with a height at or below the synced tip
    /// (an old key's address, found late) is rescanned by the next
    /// [`CoinRecord::sync`] calls; watching an already watched script from a
    /// lower height rescans it from there. Returns whether anything changed.
    ///
    /// # Errors
    /// [`Error::BelowFirstHeight`], [`Error::Unspendable`], storage failures.
    pub fn watch(&mut self, script: &Script, from_height: u64) -> Result<bool, Error> {
        if from_height < self.first_height {
            return Err(Error::BelowFirstHeight {
                from_height,
                first_height: self.first_height,
            });
        }
        if script.is_op_return() {
            return Err(Error::Unspendable);
        }
        let from = height_to_sql(from_height)?;
        let n = self
            .conn
            .execute(
                "INSERT INTO scripts (script, from_height, scanned_to) VALUES (?1, ?2, ?2 - 1)
                 ON CONFLICT (script) DO UPDATE
                 SET from_height = excluded.from_height, scanned_to = excluded.scanned_to
                 WHERE excluded.from_height < scripts.from_height",
                params![script.as_bytes(), from],
            )
            .db()?;
        self.load_scripts()?;
        if n > 0 {
            log::info!("watching {script} from height {from_height}");
        }
        Ok(n > 0)
    }

    /// The synced tip: the highest block applied, and its hash.
    ///
    /// # Errors
    /// Storage failures.
    pub fn synced_tip(&self) -> Result<Option<(u64, BlockHash)>, Error> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .db()?;
        row.map(|(h, hash)| Ok((height_from_sql(h)?, hash_from_sql(&hash)?)))
            .transpose()
    }

    fn stored_hash(&self, height: u64) -> Result<Option<BlockHash>, Error> {
        let h = height_to_sql(height)?;
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM blocks WHERE height = ?1")
            .db()?
            .query_row([h], |r| r.get(0))
            .optional()
            .db()?;
        hash.map(|b| hash_from_sql(&b)).transpose()
    }

    /// Syncs with `node`, at most [`DEFAULT_BLOCKS_PER_SYNC`] blocks per call
    /// (call again while [`SyncReport::caught_up`] is false).
    ///
    /// # Errors
    /// A node failure ([`Error::is_transient`]: the record stays as it was
    /// after the last whole block), storage failures.
    pub fn sync(&mut self, node: &impl BitcoinNode) -> Result<SyncReport, Error> {
        self.sync_at_most(node, DEFAULT_BLOCKS_PER_SYNC)
    }

    /// As [`CoinRecord::sync`], applying, rescanning or rolling back at
    /// most `max_blocks` blocks (a reorg counts as one).
    ///
    /// # Errors
    /// As [`CoinRecord::sync`].
    pub fn sync_at_most(
        &mut self,
        node: &impl BitcoinNode,
        max_blocks: u64,
    ) -> Result<SyncReport, Error> {
        self.load_scripts()?;
        let mut report = SyncReport::default();
        let node_tip = ask(|| "getblockcount".into(), node.get_block_count())?;
        // Is our tip still on the node's best chain?
        if let Some((tip, hash)) = self.synced_tip()? {
            let theirs = if tip <= node_tip {
                Some(ask(
                    || format!("getblockhash {tip}"),
                    node.get_block_hash(tip),
                )?)
            } else {
                None
            };
            if theirs != Some(hash) {
                self.reorg(node, node_tip, &mut report)?;
            }
        }
        let mut budget = max_blocks;
        // Rescans of scripts watched late, over the blocks we follow.
        while budget > 0 {
            let Some((tip, _)) = self.synced_tip()? else {
                break;
            };
            let Some(lag) = self.scripts.values().copied().min() else {
                break;
            };
            let tip = height_to_sql(tip)?;
            if lag >= tip {
                break;
            }
            let h = height_from_sql(lag.saturating_add(1))?;
            let hash = self
                .stored_hash(h)?
                .ok_or_else(|| Error::Corrupt(format!("no block stored at height {h}")))?;
            let block = fetch(node, &hash)?;
            self.apply(&block, h, false, &mut report)?;
            report.blocks_rescanned += 1;
            budget -= 1;
        }
        // New blocks.
        let mut caught_up = false;
        while budget > 0 {
            if self.scripts.is_empty() {
                caught_up = true;
                break;
            }
            let next = match self.synced_tip()? {
                Some((tip, _)) => tip.checked_add(1).ok_or_else(|| {
                    Error::BadNodeData("a tip at the largest height there is".into())
                })?,
                None => self.first_height,
            };
            if next > node_tip {
                caught_up = true;
                break;
            }
            let hash = ask(|| format!("getblockhash {next}"), node.get_block_hash(next))?;
            let block = fetch(node, &hash)?;
            budget -= 1;
            if next > self.first_height {
                let prev = self.stored_hash(next - 1)?;
                if prev != Some(block.header.prev_blockhash) {
                    // The node's chain changed since we looked at our tip.
                    let tip = ask(|| "getblockcount".into(), node.get_block_count())?;
                    self.reorg(node, tip, &mut report)?;
                    continue;
                }
            }
            self.apply(&block, next, true, &mut report)?;
            report.blocks_applied += 1;
        }
        report.tip = self.synced_tip()?.map(|(h, _)| h);
        report.caught_up = caught_up;
        if report.blocks_applied + report.blocks_rescanned + report.blocks_rolled_back > 0 {
            log::debug!("coin record sync: {report:?}");
        }
        Ok(report)
    }

    /// Walks back from our tip to the last block the node's best chain
    /// holds, and rolls back everything above it.
    fn reorg(
        &mut self,
        node: &impl BitcoinNode,
        node_tip: u64,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let Some((tip, _)) = self.synced_tip()? else {
            return Ok(());
        };
        let mut h = tip.min(node_tip);
        let fork = loop {
            if h < self.first_height {
                break None;
            }
            let ours = self.stored_hash(h)?;
            let theirs = ask(|| format!("getblockhash {h}"), node.get_block_hash(h))?;
            if ours == Some(theirs) {
                break Some(h);
            }
            match h.checked_sub(1) {
                Some(lower) => h = lower,
                None => break None,
            }
        };
        let f = match fork {
            Some(f) => height_to_sql(f)?,
            None => height_to_sql(self.first_height)? - 1,
        };
        let undone = u64::try_from(height_to_sql(tip)? - f).unwrap_or(0);
        log::warn!(
            "reorg: the node's chain leaves ours above height {f}; rolling back {undone} blocks"
        );
        let tx = self.conn.transaction().db()?;
        tx.execute_batch(&format!(
            "UPDATE coins SET spent_height = NULL
                 WHERE spent_height > {f} AND spent_by IN (SELECT txid FROM own_txs);
             UPDATE coins SET spent_by = NULL, spent_height = NULL WHERE spent_height > {f};
             UPDATE coins SET height = NULL
                 WHERE height > {f} AND txid IN (SELECT txid FROM own_txs);
             DELETE FROM coins WHERE height > {f};
             UPDATE own_txs SET height = NULL WHERE height > {f};
             DELETE FROM blocks WHERE height > {f};
             UPDATE scripts SET scanned_to = MIN(scanned_to, MAX({f}, from_height - 1));"
        ))
        .db()?;
        tx.commit().db()?;
        self.load_scripts()?;
        report.blocks_rolled_back += undone;
        Ok(())
    }

    /// Applies the block at `height` (in one transaction) for the scripts
    /// recorded up to `height - 1`; `forward` stores its hash as the new tip.
    fn apply(
        &mut self,
        block: &Block,
        height: u64,
        forward: bool,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let h = height_to_sql(height)?;
        let applicable: HashSet<&Script> = self
            .scripts
            .iter()
            .filter(|(_, s)| **s == h - 1)
            .map(|(k, _)| k.as_script())
            .collect();
        let tx = self.conn.transaction().db()?;
        for (i, t) in block.txdata.iter().enumerate() {
            let txid = t.compute_txid();
            let id = txid.to_byte_array();
            let mut own = false;
            if i > 0 {
                for input in &t.input {
                    let o = input.previous_output;
                    if let Some(x) = own_spender(&tx, &o)? {
                        if x == txid {
                            own = true;
                        } else if own_height(&tx, &x)?.is_none() {
                            log::warn!(
                                "our transaction {x} conflicts with {txid} in block {height}: dropped"
                            );
                            report.own_spends_dropped.extend(drop_own(&tx, x)?);
                        }
                    }
                    report.coins_spent += tx
                        .prepare_cached(
                            "UPDATE coins SET spent_by = ?3, spent_height = ?4
                             WHERE txid = ?1 AND vout = ?2
                             AND (spent_by IS NOT ?3 OR spent_height IS NOT ?4)",
                        )
                        .db()?
                        .execute(params![o.txid.to_byte_array(), o.vout, id, h])
                        .db()? as u64;
                }
            }
            for (v, out) in t.output.iter().enumerate() {
                if !applicable.contains(out.script_pubkey.as_script()) {
                    continue;
                }
                let o = OutPoint::new(txid, u32::try_from(v).unwrap_or(u32::MAX));
                report.coins_added += add_coin(&tx, &o, out, Some(h))?;
            }
            if own {
                tx.prepare_cached("UPDATE own_txs SET height = ?2 WHERE txid = ?1")
                    .db()?
                    .execute(params![id, h])
                    .db()?;
            }
        }
        if forward {
            tx.execute(
                "INSERT INTO blocks (height, hash) VALUES (?1, ?2)",
                params![h, block.block_hash().to_byte_array()],
            )
            .db()?;
        }
        // Scripts watched from a later height wait for it.
        tx.execute(
            "UPDATE scripts SET scanned_to = ?1 WHERE scanned_to = ?1 - 1",
            [h],
        )
        .db()?;
        tx.commit().db()?;
        for s in self.scripts.values_mut() {
            if *s == h - 1 {
                *s = h;
            }
        }
        Ok(())
    }

    /// Records our own transaction, signed and about to be broadcast: the
    /// coins it spends are reserved (no longer offered), its outputs paying
    /// watched scripts become unconfirmed coins. Recording it again does
    /// nothing. An own unconfirmed transaction spending one of the same
    /// inputs is replaced (a fee bump): it and the own transactions
    /// spending its change are dropped, and returned.
    ///
    /// # Errors
    /// [`Error::AlreadySpent`] when a confirmed transaction spent one of
    /// its inputs (nothing is recorded); storage failures.
    pub fn record_own_spend(&mut self, t: &Transaction) -> Result<Vec<Txid>, Error> {
        let txid = t.compute_txid();
        let id = txid.to_byte_array();
        let tx = self.conn.transaction().db()?;
        let known: Option<i64> = tx
            .query_row("SELECT 1 FROM own_txs WHERE txid = ?1", [id], |r| r.get(0))
            .optional()
            .db()?;
        if known.is_some() {
            return Ok(Vec::new());
        }
        let mut replaced = Vec::new();
        for input in &t.input {
            let o = input.previous_output;
            if let Some(x) = own_spender(&tx, &o)? {
                if own_height(&tx, &x)?.is_some() {
                    return Err(Error::AlreadySpent { outpoint: o, by: x });
                }
                log::info!("our transaction {txid} replaces our {x}");
                replaced.extend(drop_own(&tx, x)?);
            }
            let spend: Option<(Option<Vec<u8>>, Option<i64>)> = tx
                .query_row(
                    "SELECT spent_by, spent_height FROM coins WHERE txid = ?1 AND vout = ?2",
                    params![o.txid.to_byte_array(), o.vout],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .db()?;
            if let Some((Some(by), Some(_))) = spend {
                return Err(Error::AlreadySpent {
                    outpoint: o,
                    by: txid_from_sql(&by)?,
                });
            }
        }
        tx.execute(
            "INSERT INTO own_txs (txid, tx, height) VALUES (?1, ?2, NULL)",
            params![id, encode::serialize(t)],
        )
        .db()?;
        for input in &t.input {
            let o = input.previous_output;
            tx.execute(
                "INSERT INTO own_inputs (txid, vout, own_txid) VALUES (?1, ?2, ?3)",
                params![o.txid.to_byte_array(), o.vout, id],
            )
            .db()?;
            tx.execute(
                "UPDATE coins SET spent_by = ?3 WHERE txid = ?1 AND vout = ?2 AND spent_by IS NULL",
                params![o.txid.to_byte_array(), o.vout, id],
            )
            .db()?;
        }
        for (v, out) in t.output.iter().enumerate() {
            if self.scripts.contains_key(&out.script_pubkey) {
                let o = OutPoint::new(txid, u32::try_from(v).unwrap_or(u32::MAX));
                add_coin(&tx, &o, out, None)?;
            }
        }
        tx.commit().db()?;
        Ok(replaced)
    }

    /// Forgets our own unconfirmed transaction `txid` (the node refused it
    /// for good): its inputs are offered again, its change is gone, and so
    /// are the own transactions spending that change. Returns the
    /// transactions forgotten (none when `txid` is not ours or not pending).
    ///
    /// # Errors
    /// [`Error::OwnSpendConfirmed`] when a block holds it; storage failures.
    pub fn forget_own_spend(&mut self, txid: &Txid) -> Result<Vec<Txid>, Error> {
        let tx = self.conn.transaction().db()?;
        let height: Option<Option<i64>> = tx
            .query_row(
                "SELECT height FROM own_txs WHERE txid = ?1",
                [txid.to_byte_array()],
                |r| r.get(0),
            )
            .optional()
            .db()?;
        let dropped = match height {
            None => Vec::new(),
            Some(Some(_)) => return Err(Error::OwnSpendConfirmed(*txid)),
            Some(None) => drop_own(&tx, *txid)?,
        };
        tx.commit().db()?;
        Ok(dropped)
    }

    /// Our own transactions no block holds yet, in the order recorded (to
    /// rebroadcast, for example after a reorg took them out).
    ///
    /// # Errors
    /// Storage failures, an undecodable stored transaction.
    pub fn pending_own_spends(&self) -> Result<Vec<Transaction>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT tx FROM own_txs WHERE height IS NULL ORDER BY rowid")
            .db()?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).db()?;
        rows.map(|r| {
            let b = r.db()?;
            encode::deserialize(&b).map_err(|e| Error::Corrupt(format!("own transaction: {e}")))
        })
        .collect()
    }

    /// The unspent coins paying `script`: neither spent in a block nor by
    /// our own pending transaction. Confirmations count from the synced tip
    /// (0 for our own unconfirmed change, offered only with
    /// [`Include::OwnUnconfirmed`]). Ordered oldest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn unspent(&self, script: &Script, include: Include) -> Result<Vec<Utxo>, Error> {
        let tip = self.synced_tip()?.map(|(h, _)| h).unwrap_or(0);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT txid, vout, value, height FROM coins
                 WHERE script = ?1 AND spent_by IS NULL AND (height IS NOT NULL OR ?2)
                 ORDER BY height IS NULL, height, txid, vout",
            )
            .db()?;
        let rows = stmt
            .query_map(
                params![script.as_bytes(), include == Include::OwnUnconfirmed],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .db()?;
        rows.map(|r| {
            let (txid, vout, value, height) = r.db()?;
            let confirmations = match height {
                Some(h) => tip.saturating_add(1).saturating_sub(height_from_sql(h)?),
                None => 0,
            };
            Ok(Utxo {
                outpoint: OutPoint::new(txid_from_sql(&txid)?, vout),
                txout: TxOut {
                    value: Amount::from_sat(
                        u64::try_from(value)
                            .map_err(|_| Error::Corrupt(format!("a value of {value}")))?,
                    ),
                    script_pubkey: script.to_owned(),
                },
                confirmations: u32::try_from(confirmations).unwrap_or(u32::MAX),
            })
        })
        .collect()
    }

    /// Every confirmed coin the record holds, spent or not, in block order:
    /// what the peg wallet was ever paid (a signer classifies each by the
    /// transaction that made it, to know what the wallet owes).
    ///
    /// # Errors
    /// Storage failures.
    pub fn confirmed_coins(&self) -> Result<Vec<RecordedCoin>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT txid, vout, value, script, height, spent_height FROM coins
                 WHERE height IS NOT NULL ORDER BY height, txid, vout",
            )
            .db()?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .db()?;
        rows.map(|r| {
            let (txid, vout, value, script, height, spent_height) = r.db()?;
            Ok(RecordedCoin {
                outpoint: OutPoint::new(txid_from_sql(&txid)?, vout),
                txout: TxOut {
                    value: Amount::from_sat(
                        u64::try_from(value)
                            .map_err(|_| Error::Corrupt(format!("a value of {value}")))?,
                    ),
                    script_pubkey: ScriptBuf::from_bytes(script),
                },
                height: height_from_sql(height)?,
                spent_in_block: spent_height.is_some(),
            })
        })
        .collect()
    }

    /// The one-off repair: makes the record's confirmed coins at `script`
    /// what `scantxoutset` answered (`utxos`, from
    /// `BitcoinNode::list_unspent`). Only for a record found wrong (a bug, a
    /// file restored from an old backup): sync until caught up, scan, and
    /// check the node's tip did not move meanwhile, because the scan's
    /// confirmations are read as counted from the synced tip. Coins the
    /// scan lacks are deleted (a later reorg cannot restore them), coins it
    /// holds are recorded unspent, except those our own pending
    /// transactions reserve; our unconfirmed change is left alone.
    ///
    /// # Errors
    /// [`Error::NotWatched`], [`Error::NotSynced`], [`Error::BadNodeData`]
    /// for a coin at another script or with more confirmations than the
    /// chain has blocks; storage failures.
    pub fn repair_from_scan(
        &mut self,
        script: &Script,
        utxos: &[Utxo],
    ) -> Result<RepairReport, Error> {
        if !self.scripts.contains_key(script) {
            return Err(Error::NotWatched(script.to_owned()));
        }
        let (tip, _) = self.synced_tip()?.ok_or(Error::NotSynced)?;
        let mut scan: HashMap<OutPoint, (&TxOut, i64)> = HashMap::new();
        for u in utxos {
            if u.txout.script_pubkey.as_script() != script {
                return Err(Error::BadNodeData(format!(
                    "scan coin {} pays another script",
                    u.outpoint
                )));
            }
            let height = tip
                .checked_add(1)
                .and_then(|t| t.checked_sub(u64::from(u.confirmations)))
                .filter(|_| u.confirmations > 0)
                .ok_or_else(|| {
                    Error::BadNodeData(format!(
                        "scan coin {} has {} confirmations at tip {tip}",
                        u.outpoint, u.confirmations
                    ))
                })?;
            scan.insert(u.outpoint, (&u.txout, height_to_sql(height)?));
        }
        let mut report = RepairReport::default();
        let tx = self.conn.transaction().db()?;
        let existing: Vec<CoinRow> = {
            let mut stmt = tx
                .prepare(
                    "SELECT txid, vout, spent_by, spent_height FROM coins
                     WHERE script = ?1 AND height IS NOT NULL",
                )
                .db()?;
            let rows = stmt
                .query_map([script.as_bytes()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .db()?;
            rows.collect::<rusqlite::Result<_>>().db()?
        };
        for (txid, vout, spent_by, spent_height) in existing {
            let o = OutPoint::new(txid_from_sql(&txid)?, vout);
            match scan.remove(&o) {
                Some((_, height)) if spent_height.is_some() => {
                    let spender = own_spender(&tx, &o)?.map(|x| x.to_byte_array());
                    tx.execute(
                        "UPDATE coins SET spent_by = ?3, spent_height = NULL, height = ?4
                         WHERE txid = ?1 AND vout = ?2",
                        params![txid, vout, spender, height],
                    )
                    .db()?;
                    report.restored += 1;
                }
                Some(_) => {}
                None if spent_height.is_none() => {
                    log::warn!(
                        "repair: {o} is not in the node's UTXO set{}: deleted",
                        if spent_by.is_some() {
                            " (ours spent it)"
                        } else {
                            ""
                        }
                    );
                    tx.execute(
                        "DELETE FROM coins WHERE txid = ?1 AND vout = ?2",
                        params![txid, vout],
                    )
                    .db()?;
                    report.removed += 1;
                }
                None => {}
            }
        }
        for (o, (out, height)) in scan {
            // Our unconfirmed change the node already sees confirmed.
            let n = tx
                .execute(
                    "UPDATE coins SET height = ?3 WHERE txid = ?1 AND vout = ?2",
                    params![o.txid.to_byte_array(), o.vout, height],
                )
                .db()?;
            if n == 0 {
                report.added += add_coin(&tx, &o, out, Some(height))?;
            }
        }
        tx.commit().db()?;
        log::info!("repair of {script} from scantxoutset: {report:?}");
        Ok(report)
    }
}

/// A confirmed coin's row: txid, vout, spent_by, spent_height.
type CoinRow = (Vec<u8>, u32, Option<Vec<u8>>, Option<i64>);

/// Fetches a block and checks it is the one asked for.
fn fetch(node: &impl BitcoinNode, hash: &BlockHash) -> Result<Block, Error> {
    let block = ask(|| format!("getblock {hash}"), node.get_block(hash))?;
    let got = block.block_hash();
    if got != *hash {
        return Err(Error::BadNodeData(format!(
            "asked for block {hash}, got {got}"
        )));
    }
    Ok(block)
}

/// Records a coin (confirmed at `height`, or our unconfirmed change); a
/// coin already recorded takes the height. Returns 1 if it is new.
fn add_coin(tx: &Connection, o: &OutPoint, out: &TxOut, height: Option<i64>) -> Result<u64, Error> {
    let exists: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM coins WHERE txid = ?1 AND vout = ?2")
        .db()?
        .query_row(params![o.txid.to_byte_array(), o.vout], |r| r.get(0))
        .optional()
        .db()?;
    if exists.is_some() {
        if height.is_some() {
            tx.prepare_cached("UPDATE coins SET height = ?3 WHERE txid = ?1 AND vout = ?2")
                .db()?
                .execute(params![o.txid.to_byte_array(), o.vout, height])
                .db()?;
        }
        return Ok(0);
    }
    let value = i64::try_from(out.value.to_sat())
        .map_err(|_| Error::BadNodeData(format!("{o} has a value of {}", out.value)))?;
    // An own pending transaction may already spend it (recorded before the
    // block that creates it was, or again after a reorg).
    let spender = own_spender(tx, o)?.map(|x| x.to_byte_array());
    tx.prepare_cached(
        "INSERT INTO coins (txid, vout, value, script, height, spent_by, spent_height)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
    )
    .db()?
    .execute(params![
        o.txid.to_byte_array(),
        o.vout,
        value,
        out.script_pubkey.as_bytes(),
        height,
        spender
    ])
    .db()?;
    Ok(1)
}

/// The own transaction spending `o`, if any.
fn own_spender(tx: &Connection, o: &OutPoint) -> Result<Option<Txid>, Error> {
    let x: Option<Vec<u8>> = tx
        .prepare_cached("SELECT own_txid FROM own_inputs WHERE txid = ?1 AND vout = ?2")
        .db()?
        .query_row(params![o.txid.to_byte_array(), o.vout], |r| r.get(0))
        .optional()
        .db()?;
    x.map(|b| txid_from_sql(&b)).transpose()
}

/// The height of the block holding own transaction `x` (None: pending).
fn own_height(tx: &Connection, x: &Txid) -> Result<Option<i64>, Error> {
    let h: Option<Option<i64>> = tx
        .prepare_cached("SELECT height FROM own_txs WHERE txid = ?1")
        .db()?
        .query_row([x.to_byte_array()], |r| r.get(0))
        .optional()
        .db()?;
    Ok(h.flatten())
}

/// Drops own pending transaction `root` and the own transactions spending
/// its outputs: their inputs are unreserved, their change deleted.
fn drop_own(tx: &Connection, root: Txid) -> Result<Vec<Txid>, Error> {
    let mut work = vec![root];
    let mut dropped = Vec::new();
    while let Some(x) = work.pop() {
        if dropped.contains(&x) {
            continue;
        }
        let id = x.to_byte_array();
        {
            let mut stmt = tx
                .prepare_cached("SELECT DISTINCT own_txid FROM own_inputs WHERE txid = ?1")
                .db()?;
            let rows = stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0)).db()?;
            for r in rows {
                work.push(txid_from_sql(&r.db()?)?);
            }
        }
        tx.execute(
            "UPDATE coins SET spent_by = NULL WHERE spent_by = ?1 AND spent_height IS NULL",
            [id],
        )
        .db()?;
        tx.execute("DELETE FROM own_inputs WHERE own_txid = ?1", [id])
            .db()?;
        tx.execute("DELETE FROM coins WHERE txid = ?1 AND height IS NULL", [id])
            .db()?;
        tx.execute("DELETE FROM own_txs WHERE txid = ?1", [id])
            .db()?;
        dropped.push(x);
    }
    Ok(dropped)
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction().db()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT")
        .db()?;
    let version: i64 = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .db()?
        .unwrap_or(0);
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(Error::Corrupt(format!(
            "the coin record has schema version {version}, newer than this code knows ({known})"
        )));
    }
    for (i, script) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(script)
            .map_err(|e| Error::Storage(format!("migration {}: {e}", i + 1)))?;
    }
    tx.execute("DELETE FROM schema_version", []).db()?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [known])
        .db()?;
    tx.commit().db()
}

#[cfg(test)]
mod tests;
