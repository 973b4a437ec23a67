//! The guard's own SQLite file: what it promised to sign, every fulfilment
//! it signed, and how it classified the peg wallet's coins.
//!
//! # Schema (version 1)
//!
//! - `will_sign(key, digest, request, created)`: every (aggregate key,
//!   digest) pair a check passed; nonce requests are answered only for these.
//! - `fulfilments(request_txid, txid, tx, amount, outflow, signature_digest,
//!   time)`: every fulfilment signed (a replacement is another row of the
//!   same request); `outflow` is what it takes out of the peg wallet
//!   (amount plus fee), `signature_digest` the request's
//!   `peg_rules::request_signature_digest`.
//! - `coin_txs(txid, kind, minted_final)`: the transactions that paid the
//!   peg wallet, classified once by their output 0 (`peg-in`, `request`,
//!   `other`); `minted_final` once a peg-in's mint is seen at the final tip.
//!
//! - `refunds(peg_in, txid, tx, time)`: every refund signed (a replacement
//!   is another row of the same peg-in; each spends the peg-in's output 1,
//!   so at most one confirms); `coin_txs.refunded` once a peg-in's output 1
//!   is seen spent by a refund.
//!
//! The file uses WAL and `synchronous=FULL`. The store keeps what every
//! check reads (the classified coin transactions, the fulfilments and
//! refunds signed, the keys seen published) in memory as well, loaded at
//! open and changed only by its own writes, so a check reads no row of it
//! (issue #16). The facts a check learns (`classify`, `mark_*`) are held
//! and written in one transaction with the check's promises
//! ([`Store::commit`]) or by [`Store::flush`]: a row is on disk when that
//! returns. A fact lost with a crash before it is written is learnt again
//! from the nodes.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bitcoin::consensus::encode;
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, Transaction, Txid};
use rusqlite::{params, Connection, OptionalExtension};

/// How many fulfilments of one request are kept (the newest).
pub(crate) const KEEP_FULFILMENTS_PER_REQUEST: u64 = 16;

/// How long a `will_sign` promise is kept, seconds.
pub(crate) const PROMISE_KEEP_SECS: u64 = 3600;

/// Migrations, in order; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE will_sign (
        key BLOB NOT NULL,
        digest BLOB NOT NULL,
        request INTEGER NOT NULL,
        created INTEGER NOT NULL,
        PRIMARY KEY (key, digest)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE fulfilments (
        request_txid BLOB NOT NULL,
        txid BLOB PRIMARY KEY NOT NULL,
        tx BLOB NOT NULL,
        amount INTEGER NOT NULL,
        outflow INTEGER NOT NULL,
        signature_digest BLOB NOT NULL,
        time INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX fulfilments_by_request ON fulfilments (request_txid);
    CREATE INDEX fulfilments_by_digest ON fulfilments (signature_digest);
    CREATE INDEX fulfilments_by_time ON fulfilments (time);
    CREATE TABLE coin_txs (
        txid BLOB PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('peg-in', 'request', 'other')),
        minted_final INTEGER NOT NULL DEFAULT 0
    ) STRICT;",
    // Every peg wallet key seen published at the final Stacks block: the
    // contract's key may move forward to a newer key, never back.
    "CREATE TABLE published_keys (
        key BLOB PRIMARY KEY NOT NULL,
        first_seen INTEGER NOT NULL
    ) STRICT;
    ALTER TABLE coin_txs ADD COLUMN burned_final INTEGER;",
    // Refunds of rejected peg-ins (issue #14): every refund signed, and the
    // peg-ins whose output 1 a refund spent (never backing sBTC again).
    "CREATE TABLE refunds (
        peg_in BLOB NOT NULL,
        txid BLOB PRIMARY KEY NOT NULL,
        tx BLOB NOT NULL,
        time INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX refunds_by_peg_in ON refunds (peg_in);
    ALTER TABLE coin_txs ADD COLUMN refunded INTEGER NOT NULL DEFAULT 0;",
];

/// How a transaction that paid the peg wallet is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CoinKind {
    /// A peg-in: its output 1 is owed as sBTC (or a refund) until minted.
    PegIn,
    /// A peg-out request: its output 2 is the fulfilment's fee.
    Request,
    /// Anything else (change, sweeps, gifts).
    Other,
}

impl CoinKind {
    fn as_str(self) -> &'static str {
        match self {
            CoinKind::PegIn => "peg-in",
            CoinKind::Request => "request",
            CoinKind::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<CoinKind> {
        match s {
            "peg-in" => Some(CoinKind::PegIn),
            "request" => Some(CoinKind::Request),
            "other" => Some(CoinKind::Other),
            _ => None,
        }
    }
}

/// A fulfilment signed, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fulfilment {
    /// The request it pays.
    pub request_txid: Txid,
    /// The fulfilment's txid.
    pub txid: Txid,
    /// The unsigned transaction.
    pub tx: Transaction,
    /// The amount paid to the recipient.
    pub amount: Amount,
    /// What it takes out of the peg wallet: amount plus fee.
    pub outflow: Amount,
    /// The request's signature digest.
    pub signature_digest: [u8; 32],
    /// When it was signed (Unix seconds).
    pub time: u64,
}

/// A refund signed, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refund {
    /// The peg-in it refunds.
    pub peg_in: Txid,
    /// The refund's txid.
    pub txid: Txid,
    /// The unsigned transaction.
    pub tx: Transaction,
    /// When it was signed (Unix seconds).
    pub time: u64,
}

/// What a passed check signs besides its promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signed {
    /// A test message or a sweep: nothing more to keep.
    Nothing,
    /// A fulfilment of a peg-out request.
    Fulfilment(Fulfilment),
    /// A refund of a rejected peg-in.
    Refund(Refund),
}

/// What the store knows of a transaction that paid the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CoinTx {
    kind: CoinKind,
    minted: bool,
    burned: Option<u64>,
    refunded: bool,
}

/// A fact learnt by a check, not written yet.
#[derive(Debug, Clone, Copy)]
enum Fact {
    Classified(Txid, CoinKind),
    Minted(Txid),
    Burned(Txid, u64),
    Refunded(Txid),
}

/// The store.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    /// `coin_txs`, as on disk plus `pending`.
    coin_txs: HashMap<Txid, CoinTx>,
    /// `fulfilments`, oldest first.
    fulfilments: Vec<Fulfilment>,
    /// The peg-ins with a refund signed.
    refunded_by_us: HashSet<Txid>,
    /// `published_keys`.
    published: Vec<PublicKey>,
    /// Facts to write with the next commit or flush.
    pending: Vec<Fact>,
    /// Counts the changes to what [`Store::wallet_generation`] covers.
    generation: u64,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::warn!("guard store: facts not written at close (learnt again later): {e}");
        }
    }
}

fn write_fact(tx: &rusqlite::Transaction<'_>, fact: &Fact) -> Result<(), String> {
    match fact {
        Fact::Classified(txid, kind) => db(tx
            .prepare_cached(
                "INSERT INTO coin_txs (txid, kind) VALUES (?1, ?2) ON CONFLICT (txid) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![txid.to_byte_array().to_vec(), kind.as_str()]))),
        Fact::Minted(txid) => db(tx
            .prepare_cached("UPDATE coin_txs SET minted_final = 1 WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid.to_byte_array().to_vec()]))),
        Fact::Burned(txid, amount) => {
            let amount = sql_u64(*amount)?;
            db(tx
                .prepare_cached("UPDATE coin_txs SET burned_final = ?2 WHERE txid = ?1")
                .and_then(|mut s| s.execute(params![txid.to_byte_array().to_vec(), amount])))
        }
        Fact::Refunded(txid) => db(tx
            .prepare_cached("UPDATE coin_txs SET refunded = 1 WHERE txid = ?1")
            .and_then(|mut s| s.execute([txid.to_byte_array().to_vec()]))),
    }
    .map(|_| ())
}

fn db<T>(r: rusqlite::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("guard store: {e}"))
}

fn sql_u64(v: u64) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("guard store: {v} is out of range"))
}

fn u64_sql(v: i64) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("guard store corrupt: negative value {v}"))
}

fn txid_sql(b: &[u8]) -> Result<Txid, String> {
    <[u8; 32]>::try_from(b)
        .map(Txid::from_byte_array)
        .map_err(|_| format!("guard store corrupt: a txid of {} bytes", b.len()))
}

/// One (key, digest) pair to record, with the sign request it came from.
pub(crate) type Promise = (PublicKey, [u8; 32]);

impl Store {
    /// Opens (creating) the store at `path` and migrates it.
    pub(crate) fn open(path: &Path) -> Result<Store, String> {
        let mut conn =
            Connection::open(path).map_err(|e| format!("guard store {}: {e}", path.display()))?;
        db(conn.pragma_update(None, "journal_mode", "WAL"))?;
        db(conn.pragma_update(None, "synchronous", "FULL"))?;
        db(conn.busy_timeout(std::time::Duration::from_secs(5)))?;
        let tx = db(conn.transaction())?;
        db(tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT",
        ))?;
        let version: i64 = db(tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional())?
        .unwrap_or(0);
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > known {
            return Err(format!(
                "guard store {} has schema version {version}, newer than this code knows ({known})",
                path.display()
            ));
        }
        for (i, m) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(m)
                .map_err(|e| format!("guard store migration {}: {e}", i + 1))?;
        }
        db(tx.execute("DELETE FROM schema_version", []))?;
        db(tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [known]))?;
        db(tx.commit())?;
        let mut store = Store {
            conn,
            coin_txs: HashMap::new(),
            fulfilments: Vec::new(),
            refunded_by_us: HashSet::new(),
            published: Vec::new(),
            pending: Vec::new(),
            generation: 0,
        };
        store.load()?;
        Ok(store)
    }

    /// Reads what checks read into memory.
    fn load(&mut self) -> Result<(), String> {
        let mut stmt = db(self
            .conn
            .prepare("SELECT txid, kind, minted_final, burned_final, refunded FROM coin_txs"))?;
        let rows = db(stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        }))?;
        let mut coin_txs = HashMap::new();
        for r in rows {
            let (txid, kind, minted, burned, refunded) = db(r)?;
            let kind = CoinKind::parse(&kind)
                .ok_or_else(|| format!("guard store corrupt: coin kind {kind:?}"))?;
            coin_txs.insert(
                txid_sql(&txid)?,
                CoinTx {
                    kind,
                    minted: minted != 0,
                    burned: burned.map(|n| u64::try_from(n).unwrap_or(0)),
                    refunded: refunded != 0,
                },
            );
        }
        drop(stmt);
        let mut stmt = db(self.conn.prepare("SELECT DISTINCT peg_in FROM refunds"))?;
        let rows = db(stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)))?;
        let mut refunded_by_us = HashSet::new();
        for r in rows {
            refunded_by_us.insert(txid_sql(&db(r)?)?);
        }
        drop(stmt);
        let mut st = db(self.conn.prepare("SELECT key FROM published_keys"))?;
        let rows = db(st.query_map([], |r| r.get::<_, Vec<u8>>(0)))?;
        let mut published = Vec::new();
        for r in rows {
            let bytes = db(r)?;
            published.push(
                PublicKey::from_slice(&bytes)
                    .map_err(|e| format!("guard store: a published key that is no key: {e}"))?,
            );
        }
        drop(st);
        self.fulfilments = self.read_fulfilments(None)?;
        self.coin_txs = coin_txs;
        self.refunded_by_us = refunded_by_us;
        self.published = published;
        self.generation += 1;
        Ok(())
    }

    /// Writes the facts learnt since the last commit or flush, in one
    /// transaction.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = db(self.conn.transaction())?;
        for f in &self.pending {
            write_fact(&tx, f)?;
        }
        db(tx.commit())?;
        self.pending.clear();
        Ok(())
    }

    /// Records, in one committed transaction, the promises of a passed
    /// check and the fulfilment or refund it signs (if any).
    pub(crate) fn commit(
        &mut self,
        request: u64,
        now: u64,
        promises: &[Promise],
        signed: &Signed,
    ) -> Result<(), String> {
        let fulfilment = match signed {
            Signed::Fulfilment(f) => Some(f),
            _ => None,
        };
        let tx = db(self.conn.transaction())?;
        for f in &self.pending {
            write_fact(&tx, f)?;
        }
        // A promise outlives the signer's in-memory allowance (10 minutes)
        // by far after an hour: older ones answer nothing, so they go, and
        // the table stays as big as an hour of requests (fulfilments are
        // kept for good).
        db(tx.execute(
            "DELETE FROM will_sign WHERE created < ?1",
            [sql_u64(now.saturating_sub(PROMISE_KEEP_SECS))?],
        ))?;
        for (key, digest) in promises {
            db(tx.execute(
                "INSERT INTO will_sign (key, digest, request, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key, digest) DO UPDATE SET request = excluded.request",
                params![
                    key.serialize().to_vec(),
                    digest.to_vec(),
                    sql_u64(request)?,
                    sql_u64(now)?
                ],
            ))?;
        }
        if let Some(f) = fulfilment {
            db(tx.execute(
                "INSERT INTO fulfilments
                 (request_txid, txid, tx, amount, outflow, signature_digest, time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (txid) DO NOTHING",
                params![
                    f.request_txid.to_byte_array().to_vec(),
                    f.txid.to_byte_array().to_vec(),
                    encode::serialize(&f.tx),
                    sql_u64(f.amount.to_sat())?,
                    sql_u64(f.outflow.to_sat())?,
                    f.signature_digest.to_vec(),
                    sql_u64(f.time)?
                ],
            ))?;
            // The newest fulfilments of a request only: each spends the same
            // fee output (at most one confirms), and a coordinator killed
            // mid-round rebuilds one per attempt; keeping them all would grow
            // the store, and every check's read of it, without bound.
            db(tx.execute(
                "DELETE FROM fulfilments WHERE request_txid = ?1 AND txid NOT IN
                 (SELECT txid FROM fulfilments WHERE request_txid = ?1
                  ORDER BY time DESC, rowid DESC LIMIT ?2)",
                params![
                    f.request_txid.to_byte_array().to_vec(),
                    sql_u64(KEEP_FULFILMENTS_PER_REQUEST)?
                ],
            ))?;
        }
        if let Signed::Refund(r) = signed {
            db(tx.execute(
                "INSERT INTO refunds (peg_in, txid, tx, time) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (txid) DO NOTHING",
                params![
                    r.peg_in.to_byte_array().to_vec(),
                    r.txid.to_byte_array().to_vec(),
                    encode::serialize(&r.tx),
                    sql_u64(r.time)?
                ],
            ))?;
            db(tx.execute(
                "DELETE FROM refunds WHERE peg_in = ?1 AND txid NOT IN
                 (SELECT txid FROM refunds WHERE peg_in = ?1
                  ORDER BY time DESC, rowid DESC LIMIT ?2)",
                params![
                    r.peg_in.to_byte_array().to_vec(),
                    sql_u64(KEEP_FULFILMENTS_PER_REQUEST)?
                ],
            ))?;
        }
        db(tx.commit())?;
        self.pending.clear();
        if let Some(f) = fulfilment {
            // What the table holds of that request now (the kept newest).
            let kept = self.read_fulfilments(Some(&f.request_txid))?;
            self.fulfilments
                .retain(|g| g.request_txid != f.request_txid);
            self.fulfilments.extend(kept);
            self.fulfilments.sort_by_key(|g| g.time);
        }
        if let Signed::Refund(r) = signed {
            self.refunded_by_us.insert(r.peg_in);
            self.generation += 1;
        }
        Ok(())
    }

    /// The refunds signed of `peg_in`, oldest first.
    #[cfg(test)]
    pub(crate) fn refunds_of(&self, peg_in: &Txid) -> Result<Vec<Refund>, String> {
        let mut stmt = db(self.conn.prepare_cached(
            "SELECT txid, tx, time FROM refunds WHERE peg_in = ?1 ORDER BY time, rowid",
        ))?;
        let rows = db(stmt.query_map([peg_in.to_byte_array().to_vec()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }))?;
        rows.map(|r| {
            let (txid, tx, time) = db(r)?;
            Ok(Refund {
                peg_in: *peg_in,
                txid: txid_sql(&txid)?,
                tx: encode::deserialize(&tx)
                    .map_err(|e| format!("guard store corrupt: a refund: {e}"))?,
                time: u64_sql(time)?,
            })
        })
        .collect()
    }

    /// Whether a refund of `peg_in` was signed.
    pub(crate) fn has_refunds(&self, peg_in: &Txid) -> bool {
        self.refunded_by_us.contains(peg_in)
    }

    /// Whether a peg-in's output 1 was seen spent by a refund.
    pub(crate) fn refunded(&self, txid: &Txid) -> Result<bool, String> {
        Ok(self.coin_txs.get(txid).is_some_and(|c| c.refunded))
    }

    /// Records that a peg-in's output 1 was spent by a refund.
    pub(crate) fn mark_refunded(&mut self, txid: &Txid) -> Result<(), String> {
        if let Some(c) = self.coin_txs.get_mut(txid) {
            c.refunded = true;
            self.pending.push(Fact::Refunded(*txid));
            self.generation += 1;
        }
        Ok(())
    }

    /// Whether `(key, digest)` is recorded.
    pub(crate) fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> Result<bool, String> {
        let found: Option<i64> = db(self
            .conn
            .prepare_cached("SELECT 1 FROM will_sign WHERE key = ?1 AND digest = ?2")
            .and_then(|mut s| {
                s.query_row(params![key.serialize().to_vec(), digest.to_vec()], |r| {
                    r.get(0)
                })
                .optional()
            }))?;
        Ok(found.is_some())
    }

    /// Every fulfilment signed, oldest first.
    pub(crate) fn fulfilments(&self) -> Result<&[Fulfilment], String> {
        Ok(&self.fulfilments)
    }

    /// The transaction of the fulfilment signed whose txid is `txid`.
    pub(crate) fn fulfilment_tx(&self, txid: &Txid) -> Option<&Transaction> {
        self.fulfilments
            .iter()
            .rev()
            .find(|f| f.txid == *txid)
            .map(|f| &f.tx)
    }

    /// The fulfilments on disk (of `request` only, if given), oldest first.
    fn read_fulfilments(&self, request: Option<&Txid>) -> Result<Vec<Fulfilment>, String> {
        let mut stmt = db(self.conn.prepare_cached(
            "SELECT request_txid, txid, tx, amount, outflow, signature_digest, time
             FROM fulfilments WHERE ?1 IS NULL OR request_txid = ?1 ORDER BY time, rowid",
        ))?;
        let rows = db(
            stmt.query_map([request.map(|r| r.to_byte_array().to_vec())], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            }),
        )?;
        rows.map(|r| {
            let (request, txid, tx, amount, outflow, digest, time) = db(r)?;
            Ok(Fulfilment {
                request_txid: txid_sql(&request)?,
                txid: txid_sql(&txid)?,
                tx: encode::deserialize(&tx)
                    .map_err(|e| format!("guard store corrupt: a fulfilment: {e}"))?,
                amount: Amount::from_sat(u64_sql(amount)?),
                outflow: Amount::from_sat(u64_sql(outflow)?),
                signature_digest: <[u8; 32]>::try_from(digest.as_slice())
                    .map_err(|_| "guard store corrupt: a signature digest".to_owned())?,
                time: u64_sql(time)?,
            })
        })
        .collect()
    }

    /// Changes whenever what the guard reads of the peg wallet's coins
    /// changes here: a classification, a mint, burn or refund mark, a
    /// refund signed (not a fulfilment or promise). Equal generations: the
    /// same answers from `coin_tx`, `burned`, `refunded`, `has_refunds`.
    pub(crate) fn wallet_generation(&self) -> u64 {
        self.generation
    }

    /// The stored classification of a transaction that paid the wallet,
    /// with whether its mint is final.
    pub(crate) fn coin_tx(&self, txid: &Txid) -> Result<Option<(CoinKind, bool)>, String> {
        Ok(self.coin_txs.get(txid).map(|c| (c.kind, c.minted)))
    }

    /// Stores a classification (once).
    pub(crate) fn classify(&mut self, txid: &Txid, kind: CoinKind) -> Result<(), String> {
        if !self.coin_txs.contains_key(txid) {
            self.coin_txs.insert(
                *txid,
                CoinTx {
                    kind,
                    minted: false,
                    burned: None,
                    refunded: false,
                },
            );
            self.pending.push(Fact::Classified(*txid, kind));
            self.generation += 1;
        }
        Ok(())
    }

    /// The final burn recorded for a peg-out request, sats.
    pub(crate) fn burned(&self, txid: &Txid) -> Result<Option<u64>, String> {
        Ok(self.coin_txs.get(txid).and_then(|c| c.burned))
    }

    /// Records a peg-out request's final burn.
    pub(crate) fn mark_burned(&mut self, txid: &Txid, amount: u64) -> Result<(), String> {
        sql_u64(amount)?;
        if let Some(c) = self.coin_txs.get_mut(txid) {
            c.burned = Some(amount);
            self.pending.push(Fact::Burned(*txid, amount));
            self.generation += 1;
        }
        Ok(())
    }

    /// Records `key` as seen published (once).
    pub(crate) fn saw_published(
        &mut self,
        key: &bitcoin::secp256k1::PublicKey,
        now: u64,
    ) -> Result<(), String> {
        if self.published.contains(key) {
            return Ok(());
        }
        // Written at once: the rule "never back to an older key" must
        // survive a crash.
        db(self.conn.execute(
            "INSERT OR IGNORE INTO published_keys (key, first_seen) VALUES (?1, ?2)",
            params![
                key.serialize().to_vec(),
                i64::try_from(now).unwrap_or(i64::MAX)
            ],
        ))?;
        self.published.push(*key);
        Ok(())
    }

    /// Every key seen published.
    pub(crate) fn published_keys(&self) -> Result<&[bitcoin::secp256k1::PublicKey], String> {
        Ok(&self.published)
    }

    /// Records that a peg-in's mint is final.
    pub(crate) fn mark_minted(&mut self, txid: &Txid) -> Result<(), String> {
        if let Some(c) = self.coin_txs.get_mut(txid) {
            c.minted = true;
            self.pending.push(Fact::Minted(*txid));
            self.generation += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    #[test]
    fn promises_and_fulfilments_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guard.sqlite");
        let key = SecretKey::from_slice(&[3; 32])
            .unwrap()
            .public_key(&Secp256k1::new());
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        };
        let f = Fulfilment {
            request_txid: Txid::from_byte_array([1; 32]),
            txid: tx.compute_txid(),
            tx: tx.clone(),
            amount: Amount::from_sat(5),
            outflow: Amount::from_sat(7),
            signature_digest: [9; 32],
            time: 42,
        };
        {
            let mut s = Store::open(&path).unwrap();
            assert!(!s.will_sign(&key, &[1; 32]).unwrap());
            s.commit(4, 42, &[(key, [1; 32])], &Signed::Fulfilment(f.clone()))
                .unwrap();
            s.classify(&f.request_txid, CoinKind::PegIn).unwrap();
            s.classify(&f.request_txid, CoinKind::Other).unwrap();
            s.mark_minted(&f.request_txid).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.will_sign(&key, &[1; 32]).unwrap());
        assert!(!s.will_sign(&key, &[2; 32]).unwrap());
        assert_eq!(s.fulfilments().unwrap(), vec![f.clone()]);
        assert_eq!(
            s.coin_tx(&f.request_txid).unwrap(),
            Some((CoinKind::PegIn, true)),
            "classified once"
        );
    }

    #[test]
    fn facts_learnt_are_written_with_the_commit_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guard.sqlite");
        let txid = Txid::from_byte_array([5; 32]);
        let mut s = Store::open(&path).unwrap();
        s.classify(&txid, CoinKind::Request).unwrap();
        s.mark_burned(&txid, 30_000).unwrap();
        assert_eq!(
            s.burned(&txid).unwrap(),
            Some(30_000),
            "read from memory at once"
        );
        s.commit(1, 42, &[], &Signed::Nothing).unwrap();
        // A crash right after the commit: nothing flushed at close.
        std::mem::forget(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.coin_tx(&txid).unwrap(), Some((CoinKind::Request, false)));
        assert_eq!(s.burned(&txid).unwrap(), Some(30_000));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guard.sqlite");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(conn);
        let e = Store::open(&path).unwrap_err();
        assert!(e.contains("newer"), "{e}");
    }
}
