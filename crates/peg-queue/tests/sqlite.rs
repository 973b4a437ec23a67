//! The SQLite queue on real files: idempotent inserts, atomic scans, state
//! walks that survive reopening, the nonce high-water mark, migrations, and
//! no acknowledged write lost when the writer is killed with SIGKILL.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use bitcoin::hashes::Hash;
use bitcoin::{Amount, BlockHash, Txid};
use peg_queue::peg_ops::{
    peg_out_request_sighash, BtcAddress, BurnHeight, MessageSignature, PegInOp, PegOp,
    PegOutRequestOp, SignedStacksTx,
};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};

fn op(n: u32, height: u64) -> PegOp {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&n.to_be_bytes());
    PegOp::PegIn(PegInOp {
        recipient: "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap(),
        peg_wallet_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap(),
        amount: Amount::from_sat(1000 + u64::from(n)),
        memo: vec![],
        txid: Txid::from_byte_array(t),
        vtxindex: n,
        block_height: BurnHeight(height),
        burn_header_hash: BlockHash::all_zeros(),
    })
}

fn stx(nonce: u64) -> SignedStacksTx {
    SignedStacksTx {
        txid: stacks_wire::StacksTxid([nonce as u8; 32]),
        nonce,
        fee: 1000,
        raw: vec![1, 2, 3],
    }
}

#[test]
fn ops_are_stored_once_and_scans_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("queue.sqlite")).unwrap();
    assert_eq!(q.last_scanned_height().unwrap(), None);
    q.record_scanned_block(BurnHeight(5), &[op(2, 5), op(1, 5)])
        .unwrap();
    // A rescan of the same block (or --start-height) changes nothing.
    q.set_state(&op(1, 5).txid(), &OpState::Accepted).unwrap();
    q.record_scanned_block(BurnHeight(5), &[op(2, 5), op(1, 5)])
        .unwrap();
    assert!(!q.insert_op(&op(1, 5)).unwrap());
    assert_eq!(
        q.get(&op(1, 5).txid()).unwrap().unwrap().state,
        OpState::Accepted
    );
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(5)));
    q.record_scanned_block(BurnHeight(6), &[]).unwrap();
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(6)));
    // Pending: by height, then position in the block.
    q.insert_op(&op(0, 3)).unwrap();
    let order: Vec<Txid> = q.pending().unwrap().iter().map(|o| o.op.txid()).collect();
    assert_eq!(
        order,
        vec![op(0, 3).txid(), op(1, 5).txid(), op(2, 5).txid()]
    );
}

#[test]
fn states_failures_and_nonces_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    {
        let q = SqlitePegQueue::open(&path).unwrap();
        for i in 0..4 {
            q.insert_op(&op(i, 1)).unwrap();
        }
        q.set_state(&op(0, 1).txid(), &OpState::StacksTxSigned { tx: stx(7) })
            .unwrap();
        q.set_state(&op(1, 1).txid(), &OpState::StacksTxBroadcast { tx: stx(8) })
            .unwrap();
        q.set_state(&op(2, 1).txid(), &OpState::Done).unwrap();
        q.set_state(
            &op(3, 1).txid(),
            &OpState::Rejected {
                reason: "not on the allowlist".into(),
            },
        )
        .unwrap();
        assert_eq!(
            q.record_failure(&op(0, 1).txid(), "node timed out")
                .unwrap(),
            1
        );
        assert_eq!(
            q.record_failure(&op(0, 1).txid(), "node timed out again")
                .unwrap(),
            2
        );
        assert!(matches!(
            q.set_state(&op(9, 1).txid(), &OpState::Done),
            Err(peg_queue::Error::UnknownOp(_))
        ));
    }
    let q = SqlitePegQueue::open(&path).unwrap();
    let first = q.get(&op(0, 1).txid()).unwrap().unwrap();
    assert_eq!(first.state, OpState::StacksTxSigned { tx: stx(7) });
    assert_eq!(
        (first.attempts, first.last_error.as_deref()),
        (2, Some("node timed out again"))
    );
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(8));
    // Once the broadcast one is done, only the live signed one counts.
    q.set_state(&op(1, 1).txid(), &OpState::Done).unwrap();
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(7));
    let pending: Vec<Txid> = q.pending().unwrap().iter().map(|o| o.op.txid()).collect();
    assert_eq!(pending, vec![op(0, 1).txid()]);
    let counts = q.counts().unwrap();
    assert_eq!(counts.get("done"), Some(&2));
    assert_eq!(counts.get("rejected"), Some(&1));
    // A state change clears the last error.
    q.set_state(&op(0, 1).txid(), &OpState::StacksTxBroadcast { tx: stx(7) })
        .unwrap();
    assert_eq!(q.get(&op(0, 1).txid()).unwrap().unwrap().last_error, None);
}

#[test]
fn migrations_are_versioned_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    drop(SqlitePegQueue::open(&path).unwrap());
    drop(SqlitePegQueue::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    assert!(
        matches!(SqlitePegQueue::open(&path), Err(peg_queue::Error::Corrupt(m)) if m.contains("99"))
    );
}

#[test]
fn a_corrupt_row_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let q = SqlitePegQueue::open(&path).unwrap();
    q.insert_op(&op(1, 1)).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE ops SET state_data = 'garbage'", [])
        .unwrap();
    assert!(matches!(q.pending(), Err(peg_queue::Error::Corrupt(_))));
}

/// This test binary started again as a child that runs only the writer
/// test `writer` on the database `db` (named to it in the variable `env`),
/// and the lines of its stdout.
fn spawn_writer(writer: &str, env: &str, db: &Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", writer, "--nocapture", "--test-threads=1"])
        .env(env, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Kills `child` with SIGKILL and reaps it.
fn kill(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// In the child process only (the variable `env` names its database): the
/// writer's queue.
fn writer_queue(env: &str) -> Option<SqlitePegQueue> {
    let path = std::env::var(env).ok()?;
    Some(SqlitePegQueue::open(Path::new(&path)).unwrap())
}

/// The writer tells the parent `line`, flushed at once.
fn say(line: &str) {
    let mut out = std::io::stdout();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The writer half of the kill test: runs only in the child process.
#[test]
fn kill_test_writer() {
    let Some(q) = writer_queue("PEG_QUEUE_KILL_TEST_DB") else {
        return;
    };
    for i in 0..100_000u32 {
        q.record_scanned_block(BurnHeight(u64::from(i)), &[op(i, u64::from(i))])
            .unwrap();
        q.set_state(
            &op(i, u64::from(i)).txid(),
            &OpState::StacksTxSigned {
                tx: stx(u64::from(i)),
            },
        )
        .unwrap();
        // Acknowledged: both writes committed.
        say(&format!("acked {i}"));
    }
}

#[test]
fn no_acknowledged_write_is_lost_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill.sqlite");
    for round in 0..3 {
        let (mut child, mut lines) =
            spawn_writer("kill_test_writer", "PEG_QUEUE_KILL_TEST_DB", &db);
        let mut acked = None;
        let stop_after = 40 + round * 37;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("acked ") {
                acked = Some(n.parse::<u32>().unwrap());
                if acked == Some(stop_after) {
                    break;
                }
            }
        }
        kill(&mut child);
        let acked = acked.expect("the writer acknowledged writes");
        let q = SqlitePegQueue::open(&db).unwrap();
        for i in 0..=acked {
            let got = q
                .get(&op(i, u64::from(i)).txid())
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged op {i} lost"));
            assert_eq!(
                got.state,
                OpState::StacksTxSigned {
                    tx: stx(u64::from(i))
                },
                "op {i}"
            );
        }
        assert!(q.last_scanned_height().unwrap().unwrap().0 >= u64::from(acked));
    }
}

#[test]
fn only_unacted_ops_are_removed_and_the_scan_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("q.sqlite")).unwrap();
    q.record_scanned_block(BurnHeight(9), &[op(1, 9), op(2, 9)])
        .unwrap();
    q.set_state(&op(2, 9).txid(), &OpState::StacksTxSigned { tx: stx(1) })
        .unwrap();
    assert!(q.remove_unacted(&op(1, 9).txid()).unwrap());
    assert!(q.get(&op(1, 9).txid()).unwrap().is_none());
    assert!(
        !q.remove_unacted(&op(2, 9).txid()).unwrap(),
        "acted on: kept"
    );
    assert!(q.get(&op(2, 9).txid()).unwrap().is_some());
    q.rewind_scan(Some(BurnHeight(4))).unwrap();
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(4)));
    q.rewind_scan(Some(BurnHeight(7))).unwrap();
    assert_eq!(
        q.last_scanned_height().unwrap(),
        Some(BurnHeight(4)),
        "never forward"
    );
    q.rewind_scan(None).unwrap();
    assert_eq!(q.last_scanned_height().unwrap(), None);
}

#[test]
fn a_round_is_stored_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("q.sqlite")).unwrap();
    q.insert_op(&op(1, 1)).unwrap();
    q.insert_op(&op(2, 1)).unwrap();
    q.set_states(&[
        (op(1, 1).txid(), OpState::Accepted),
        (op(2, 1).txid(), OpState::StacksTxSigned { tx: stx(4) }),
    ])
    .unwrap();
    assert_eq!(
        q.get(&op(1, 1).txid()).unwrap().unwrap().state,
        OpState::Accepted
    );
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(4));
    // One unknown txid: nothing of the round is stored.
    let e = q
        .set_states(&[
            (op(1, 1).txid(), OpState::Done),
            (op(9, 1).txid(), OpState::Done),
        ])
        .unwrap_err();
    assert!(matches!(e, peg_queue::Error::UnknownOp(_)));
    assert_eq!(
        q.get(&op(1, 1).txid()).unwrap().unwrap().state,
        OpState::Accepted
    );
}

/// A peg-out request in its own transaction `n`; requests with the same
/// `amount` carry the same signature (copies of one another).
fn request(n: u32, height: u64, amount: u64) -> PegOp {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&n.to_be_bytes());
    t[31] = 0xee;
    let recipient: BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        .parse()
        .unwrap();
    let amount = Amount::from_sat(amount);
    let key = bitcoin::secp256k1::SecretKey::from_slice(&[5; 32]).unwrap();
    PegOp::PegOutRequest(PegOutRequestOp {
        amount,
        signature: MessageSignature::sign(
            peg_out_request_sighash(amount, &recipient.script_pubkey()),
            &key,
        ),
        recipient,
        peg_wallet_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap(),
        fulfillment_fee: Amount::from_sat(5_000),
        memo: vec![],
        txid: Txid::from_byte_array(t),
        vtxindex: n,
        block_height: BurnHeight(height),
        burn_header_hash: BlockHash::all_zeros(),
    })
}

fn digest(op: &PegOp) -> [u8; 32] {
    let PegOp::PegOutRequest(r) = op else {
        unreachable!()
    };
    peg_rules::request_signature_digest(r)
}

#[test]
fn a_signature_is_used_once_accepted_and_freed_by_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("q.sqlite")).unwrap();
    let (victim, copy, other) = (
        request(1, 5, 40_000),
        request(2, 6, 40_000),
        request(3, 6, 41_000),
    );
    assert_eq!(digest(&victim), digest(&copy));
    assert_ne!(digest(&victim), digest(&other));
    q.record_scanned_block(
        BurnHeight(6),
        &[victim.clone(), copy.clone(), other.clone()],
    )
    .unwrap();
    let d = digest(&victim);
    // Detected only: nobody holds the signature yet.
    assert_eq!(q.signature_used_by(&d, &copy.txid()).unwrap(), None);
    q.set_state(&victim.txid(), &OpState::Accepted).unwrap();
    assert_eq!(
        q.signature_used_by(&d, &copy.txid()).unwrap(),
        Some(victim.txid())
    );
    // An op never counts against itself.
    assert_eq!(q.signature_used_by(&d, &victim.txid()).unwrap(), None);
    // Every later state keeps it, failed included.
    for s in [
        OpState::StacksTxSigned { tx: stx(1) },
        OpState::BurnConfirmed,
        OpState::Done,
        OpState::Failed { reason: "x".into() },
    ] {
        q.set_state(&victim.txid(), &s).unwrap();
        assert_eq!(
            q.signature_used_by(&d, &copy.txid()).unwrap(),
            Some(victim.txid()),
            "{s}"
        );
    }
    // A rejected holder frees it.
    q.set_state(
        &victim.txid(),
        &OpState::Rejected {
            reason: "request.fee".into(),
        },
    )
    .unwrap();
    assert_eq!(q.signature_used_by(&d, &copy.txid()).unwrap(), None);
}

#[test]
fn outflow_counts_accepted_requests_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("q.sqlite")).unwrap();
    let (a, b, c) = (
        request(1, 5, 40_000),
        request(2, 5, 2_000),
        request(3, 5, 700),
    );
    q.record_scanned_block(BurnHeight(5), &[a.clone(), b.clone(), c.clone(), op(4, 5)])
        .unwrap();
    q.set_state(&op(4, 5).txid(), &OpState::Accepted).unwrap();
    assert_eq!(
        q.outflow_since(0).unwrap(),
        Amount::ZERO,
        "peg-ins and detected ops do not count"
    );
    q.set_state(&a.txid(), &OpState::Accepted).unwrap();
    q.set_state(&b.txid(), &OpState::Accepted).unwrap();
    q.set_state(&b.txid(), &OpState::BurnConfirmed).unwrap();
    q.set_state(&c.txid(), &OpState::Rejected { reason: "x".into() })
        .unwrap();
    assert_eq!(q.outflow_since(0).unwrap(), Amount::from_sat(42_000));
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    assert_eq!(q.outflow_since(future).unwrap(), Amount::ZERO);
}

#[test]
fn a_wait_is_shown_without_counting_an_attempt_and_cleared_on_progress() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqlitePegQueue::open(&dir.path().join("q.sqlite")).unwrap();
    let r = request(1, 5, 40_000);
    q.insert_op(&r).unwrap();
    q.set_waiting(&r.txid(), Some("fee shortfall".into()))
        .unwrap();
    let got = q.get(&r.txid()).unwrap().unwrap();
    assert_eq!(
        (got.attempts, got.waiting.as_deref()),
        (0, Some("fee shortfall"))
    );
    assert_eq!(
        q.pending().unwrap()[0].waiting.as_deref(),
        Some("fee shortfall")
    );
    assert_eq!(
        q.waiting()
            .unwrap()
            .get(&r.txid().to_string())
            .map(String::as_str),
        Some("fee shortfall")
    );
    q.set_state(&r.txid(), &OpState::Accepted).unwrap();
    assert_eq!(q.get(&r.txid()).unwrap().unwrap().waiting, None);
    assert!(q.waiting().unwrap().is_empty());
    assert!(matches!(
        q.set_waiting(&op(9, 1).txid(), None),
        Err(peg_queue::Error::UnknownOp(_))
    ));
}

/// A queue written by the previous version (schema 1) gains the replay
/// columns, filled in for the requests it already holds.
#[test]
fn migration_2_fills_in_the_signatures_of_stored_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let (victim, copy) = (request(1, 5, 40_000), request(2, 6, 40_000));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
             INSERT INTO schema_version (version) VALUES (1);
             CREATE TABLE ops (
                txid TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
                block_height INTEGER NOT NULL, vtxindex INTEGER NOT NULL,
                burn_header_hash TEXT NOT NULL, op TEXT NOT NULL, state TEXT NOT NULL,
                state_data TEXT NOT NULL, stacks_nonce INTEGER,
                attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
                created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
             CREATE INDEX ops_by_state ON ops (state, block_height, vtxindex);
             CREATE TABLE scan (id INTEGER PRIMARY KEY CHECK (id = 1),
                last_scanned_height INTEGER NOT NULL) STRICT;",
        )
        .unwrap();
        for (o, state) in [
            (&victim, OpState::BurnConfirmed),
            (&copy, OpState::Detected),
        ] {
            conn.execute(
                "INSERT INTO ops (txid, kind, block_height, vtxindex, burn_header_hash, op, state, state_data, created_at, updated_at)
                 VALUES (?1, 'peg_out_request', 5, 1, ?2, ?3, ?4, ?5, 100, ?6)",
                rusqlite::params![
                    o.txid().to_string(),
                    o.burn_header_hash().to_string(),
                    serde_json::to_string(o).unwrap(),
                    state.name(),
                    serde_json::to_string(&state).unwrap(),
                    i64::MAX / 2,
                ],
            )
            .unwrap();
        }
    }
    let q = SqlitePegQueue::open(&path).unwrap();
    assert_eq!(
        q.signature_used_by(&digest(&copy), &copy.txid()).unwrap(),
        Some(victim.txid())
    );
    assert_eq!(q.outflow_since(1_000).unwrap(), Amount::from_sat(40_000));
}

/// A fulfilment-like transaction whose txid depends on `n`.
fn btc_tx(n: u8) -> bitcoin::Transaction {
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(Txid::from_byte_array([n; 32]), 2),
            ..bitcoin::TxIn::default()
        }],
        output: vec![bitcoin::TxOut {
            value: Amount::from_sat(1000),
            script_pubkey: bitcoin::ScriptBuf::new(),
        }],
    }
}

/// The schema as version 2 of the coordinator wrote it (migrations 1 and 2).
const SCHEMA_V2: &str = "CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
    INSERT INTO schema_version (version) VALUES (2);
    CREATE TABLE ops (
        txid TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
        block_height INTEGER NOT NULL, vtxindex INTEGER NOT NULL,
        burn_header_hash TEXT NOT NULL, op TEXT NOT NULL, state TEXT NOT NULL,
        state_data TEXT NOT NULL, stacks_nonce INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
    CREATE INDEX ops_by_state ON ops (state, block_height, vtxindex);
    CREATE TABLE scan (id INTEGER PRIMARY KEY CHECK (id = 1),
        last_scanned_height INTEGER NOT NULL) STRICT;
    ALTER TABLE ops ADD COLUMN signature_digest TEXT;
    ALTER TABLE ops ADD COLUMN amount_sats INTEGER;
    ALTER TABLE ops ADD COLUMN accepted_at INTEGER;
    ALTER TABLE ops ADD COLUMN waiting TEXT;
    CREATE INDEX ops_by_signature ON ops (signature_digest) WHERE signature_digest IS NOT NULL;
    CREATE INDEX ops_by_accepted_at ON ops (accepted_at) WHERE accepted_at IS NOT NULL;";

/// A queue file of schema 2 opens, migrates to 3 and holds one event per op
/// stored before: its current state at its last change, with the txids and
/// reason that state still holds.
#[test]
fn a_v2_queue_migrates_and_backfills_one_event_per_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let broadcast = request(1, 5, 40_000);
    let signed = request(2, 5, 41_000);
    let failed = request(3, 5, 42_000);
    let done = op(4, 5);
    let fulfilment = btc_tx(7);
    let rows = [
        (&broadcast, OpState::StacksTxBroadcast { tx: stx(3) }, 1_000),
        (
            &signed,
            OpState::BitcoinTxSigned {
                tx: fulfilment.clone(),
            },
            1_001,
        ),
        (
            &failed,
            OpState::Failed {
                reason: "burn mined without effect".into(),
            },
            1_002,
        ),
        (&done, OpState::Done, 1_003),
    ];
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        for (o, state, at) in &rows {
            let kind = match o {
                PegOp::PegIn(_) => "peg_in",
                PegOp::PegOutRequest(_) => "peg_out_request",
            };
            conn.execute(
                "INSERT INTO ops (txid, kind, block_height, vtxindex, burn_header_hash, op, state, state_data, created_at, updated_at, amount_sats)
                 VALUES (?1, ?2, 5, 1, ?3, ?4, ?5, ?6, 100, ?7, ?8)",
                rusqlite::params![
                    o.txid().to_string(),
                    kind,
                    o.burn_header_hash().to_string(),
                    serde_json::to_string(o).unwrap(),
                    state.name(),
                    serde_json::to_string(state).unwrap(),
                    at,
                    o.amount().to_sat() as i64,
                ],
            )
            .unwrap();
        }
    }
    let q = SqlitePegQueue::open(&path).unwrap();
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    for (o, state, at) in &rows {
        let h = q.history(&o.txid()).unwrap();
        assert_eq!(h.len(), 1, "{state}: {h:?}");
        let e = &h[0];
        assert_eq!(
            (e.txid, e.seq, e.at_unix, e.state.as_str()),
            (o.txid(), 1, *at, state.name())
        );
        assert_eq!(e.stacks_txid, state.stacks_txid(), "{state}");
        assert_eq!(e.bitcoin_txid, state.bitcoin_txid(), "{state}");
        assert_eq!(e.reason.as_deref(), state.reason(), "{state}");
    }
    assert_eq!(
        q.history(&broadcast.txid()).unwrap()[0].stacks_txid,
        Some(stx(3).txid)
    );
    assert_eq!(
        q.history(&signed.txid()).unwrap()[0].bitcoin_txid,
        Some(fulfilment.compute_txid())
    );
    assert_eq!(
        q.history(&failed.txid()).unwrap()[0].reason.as_deref(),
        Some("burn mined without effect")
    );
    // The ops themselves, amount and recipient included, are untouched.
    assert_eq!(q.get(&done.txid()).unwrap().unwrap().op, done);
    // Migrating again adds nothing; new changes go on from seq 2.
    drop(q);
    let q = SqlitePegQueue::open(&path).unwrap();
    q.set_state(&broadcast.txid(), &OpState::BurnConfirmed)
        .unwrap();
    let h = q.history(&broadcast.txid()).unwrap();
    assert_eq!(
        h.iter()
            .map(|e| (e.seq, e.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "stacks_tx_broadcast"), (2, "burn_confirmed")]
    );
}

/// Every state change of a full peg-out walk is recorded with the txids its
/// state carried (a replaced burn's too), in order, and none of it is lost
/// after `done`, across reopening; a round that fails records nothing.
#[test]
fn a_full_walk_leaves_every_txid_in_the_history_after_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let r = request(1, 5, 40_000);
    let payout = btc_tx(9);
    let walk = [
        OpState::Accepted,
        OpState::StacksTxSigned { tx: stx(4) },
        // The fee was bumped: same nonce, a new transaction.
        OpState::StacksTxSigned { tx: stx(5) },
        OpState::StacksTxBroadcast { tx: stx(5) },
        OpState::BurnConfirmed,
        OpState::BitcoinTxSigned { tx: payout.clone() },
        OpState::BitcoinTxBroadcast { tx: payout.clone() },
        OpState::Done,
    ];
    {
        let q = SqlitePegQueue::open(&path).unwrap();
        q.record_scanned_block(BurnHeight(5), std::slice::from_ref(&r))
            .unwrap();
        // Stored again by a rescan: no second `detected`.
        q.record_scanned_block(BurnHeight(5), std::slice::from_ref(&r))
            .unwrap();
        for s in &walk {
            q.set_state(&r.txid(), s).unwrap();
        }
        // A failed round leaves no event behind.
        assert!(q
            .set_states(&[
                (r.txid(), OpState::Failed { reason: "x".into() }),
                (op(9, 1).txid(), OpState::Done),
            ])
            .is_err());
    }
    let q = SqlitePegQueue::open(&path).unwrap();
    let h = q.history(&r.txid()).unwrap();
    let names: Vec<&str> = h.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "detected",
            "accepted",
            "stacks_tx_signed",
            "stacks_tx_signed",
            "stacks_tx_broadcast",
            "burn_confirmed",
            "bitcoin_tx_signed",
            "bitcoin_tx_broadcast",
            "done"
        ]
    );
    assert_eq!(
        h.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    let stacks: Vec<_> = h.iter().filter_map(|e| e.stacks_txid).collect();
    assert_eq!(
        stacks,
        vec![stx(4).txid, stx(5).txid, stx(5).txid],
        "the replaced burn and the one mined"
    );
    let bitcoin: Vec<_> = h.iter().filter_map(|e| e.bitcoin_txid).collect();
    assert_eq!(bitcoin, vec![payout.compute_txid(); 2]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(h.iter().all(|e| e.at_unix <= now && e.at_unix + 600 > now));
    assert!(h.iter().all(|e| e.txid == r.txid() && e.reason.is_none()));
    // The op keeps its amount and recipient.
    let got = q.get(&r.txid()).unwrap().unwrap();
    assert_eq!((got.state, got.op), (OpState::Done, r.clone()));

    // Recent events, newest first, bounded; failures carry their reason.
    let other = op(2, 6);
    q.insert_op(&other).unwrap();
    q.set_state(
        &other.txid(),
        &OpState::Rejected {
            reason: "not on the allowlist".into(),
        },
    )
    .unwrap();
    let recent = q.recent_events(3).unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|e| (e.txid, e.state.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (other.txid(), "rejected"),
            (other.txid(), "detected"),
            (r.txid(), "done")
        ]
    );
    assert_eq!(recent[0].reason.as_deref(), Some("not on the allowlist"));
    assert_eq!(q.recent_events(1000).unwrap().len(), 11);
    // A removed op's history stays, the removal recorded.
    assert!(q.remove_unacted(&other.txid()).unwrap());
    assert!(q.get(&other.txid()).unwrap().is_none());
    let h = q.history(&other.txid()).unwrap();
    assert_eq!(
        h.iter().map(|e| e.state.as_str()).collect::<Vec<_>>(),
        vec!["detected", "rejected", "removed"]
    );
    assert!(q.history(&op(77, 1).txid()).unwrap().is_empty());
}

#[test]
fn opening_waits_for_a_writer_that_holds_the_database_for_a_moment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let q = SqlitePegQueue::open(&path).unwrap();
    q.insert_op(&op(1, 100)).unwrap();
    drop(q);
    // Another process's write transaction, held 300 ms (a running
    // coordinator's group commit under load).
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        writer.execute_batch("COMMIT").unwrap();
    });
    let opened = SqlitePegQueue::open(&path);
    release.join().unwrap();
    let q = opened.expect("open waits for the lock instead of failing");
    assert!(q.get(&op(1, 100).txid()).unwrap().is_some());
}

/// A batch-sized signed transaction (a `mint-many!` of 100 is about 14 KB):
/// its txid follows its nonce and fee.
fn big_stx(nonce: u64, fee: u64) -> SignedStacksTx {
    let mut txid = [0u8; 32];
    txid[..8].copy_from_slice(&nonce.to_be_bytes());
    txid[8..16].copy_from_slice(&fee.to_be_bytes());
    SignedStacksTx {
        txid: stacks_wire::StacksTxid(txid),
        nonce,
        fee,
        raw: (0..14_000u32)
            .map(|i| (i as u8) ^ (nonce as u8) ^ (fee as u8))
            .collect(),
    }
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// A batch's transaction is stored once for all its ops (not once per op),
/// every op reads it back whole, across reopening; a replacement takes its
/// place for every holder; the bytes go once no op holds them, and the
/// nonce high-water mark follows the live batches.
#[test]
fn a_batch_is_stored_once_and_every_op_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let ops: Vec<PegOp> = (0..100).map(|i| op(i, 5)).collect();
    let a = big_stx(7, 1_000);
    let all = |state: &OpState| -> Vec<(Txid, OpState)> {
        ops.iter().map(|o| (o.txid(), state.clone())).collect()
    };
    {
        let q = SqlitePegQueue::open(&path).unwrap();
        q.record_scanned_block(BurnHeight(5), &ops).unwrap();
        q.set_states(&all(&OpState::Accepted)).unwrap();
        q.set_states(&all(&OpState::StacksTxSigned { tx: a.clone() }))
            .unwrap();
        assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(7));
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 1);
    assert_eq!(
        count(&path, "SELECT SUM(LENGTH(raw)) FROM stacks_txs"),
        14_000
    );
    assert!(
        count(&path, "SELECT MAX(LENGTH(state_data)) FROM ops") < 200,
        "no op carries the batch's bytes"
    );
    let q = SqlitePegQueue::open(&path).unwrap();
    let pending = q.pending().unwrap();
    assert_eq!(pending.len(), 100);
    for p in &pending {
        assert_eq!(p.state, OpState::StacksTxSigned { tx: a.clone() });
    }
    assert_eq!(
        q.get(&ops[42].txid()).unwrap().unwrap().state,
        OpState::StacksTxSigned { tx: a.clone() }
    );
    // Broadcast: the same transaction, still one copy.
    q.set_states(&all(&OpState::StacksTxBroadcast { tx: a.clone() }))
        .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 1);
    // Replaced whole (same nonce, a higher fee): the old bytes go.
    let b = big_stx(7, 1_250);
    q.set_states(&all(&OpState::StacksTxSigned { tx: b.clone() }))
        .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 1);
    assert_eq!(
        q.get(&ops[0].txid()).unwrap().unwrap().state,
        OpState::StacksTxSigned { tx: b.clone() }
    );
    let history: Vec<_> = q
        .history(&ops[0].txid())
        .unwrap()
        .iter()
        .filter_map(|e| e.stacks_txid)
        .collect();
    assert_eq!(history, vec![a.txid, a.txid, b.txid]);
    // Each op confirmed by its own record: half done, the rest still hold it.
    let (first, rest) = ops.split_at(50);
    q.set_states(
        &first
            .iter()
            .map(|o| (o.txid(), OpState::Done))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 1);
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(7));
    assert_eq!(
        q.get(&rest[0].txid()).unwrap().unwrap().state,
        OpState::StacksTxSigned { tx: b.clone() }
    );
    // Two batches in one round, each stored once.
    let (c, d) = (big_stx(8, 900), big_stx(9, 900));
    let mut moves: Vec<(Txid, OpState)> = rest[..25]
        .iter()
        .map(|o| (o.txid(), OpState::StacksTxSigned { tx: c.clone() }))
        .collect();
    moves.extend(
        rest[25..]
            .iter()
            .map(|o| (o.txid(), OpState::StacksTxSigned { tx: d.clone() })),
    );
    q.set_states(&moves).unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 2);
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(9));
    assert_eq!(
        q.get(&rest[24].txid()).unwrap().unwrap().state,
        OpState::StacksTxSigned { tx: c }
    );
    assert_eq!(
        q.get(&rest[25].txid()).unwrap().unwrap().state,
        OpState::StacksTxSigned { tx: d }
    );
    q.set_states(
        &rest
            .iter()
            .map(|o| (o.txid(), OpState::Done))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 0);
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), None);
}

/// The schema as version 3 wrote it: version 2 and the events table.
fn schema_v3() -> String {
    SCHEMA_V2.replace(
        "INSERT INTO schema_version (version) VALUES (2);",
        "INSERT INTO schema_version (version) VALUES (3);",
    ) + "CREATE TABLE op_events (
        id INTEGER PRIMARY KEY, txid TEXT NOT NULL, seq INTEGER NOT NULL,
        at_unix INTEGER NOT NULL, state TEXT NOT NULL, stacks_txid TEXT,
        bitcoin_txid TEXT, reason TEXT, UNIQUE (txid, seq)) STRICT;"
}

/// A queue file of schema 3, whose batch holders each carry the whole
/// transaction in `state_data`, opens, migrates, reads those rows as before
/// (nonce high-water mark included), and its ops are processed on: moved to
/// the new form, a new batch signed beside the old one, all done.
#[test]
fn a_v3_queue_with_batches_in_every_row_opens_and_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let old = big_stx(4, 700);
    let rows = [
        (op(1, 5), OpState::StacksTxBroadcast { tx: old.clone() }),
        (op(2, 5), OpState::StacksTxSigned { tx: old.clone() }),
        (op(3, 5), OpState::Accepted),
    ];
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&schema_v3()).unwrap();
        for (o, state) in &rows {
            let nonce = state.stacks_txid().map(|_| 4i64);
            conn.execute(
                "INSERT INTO ops (txid, kind, block_height, vtxindex, burn_header_hash, op, state, state_data, stacks_nonce, created_at, updated_at, accepted_at)
                 VALUES (?1, 'peg_in', 5, ?2, ?3, ?4, ?5, ?6, ?7, 100, 100, 100)",
                rusqlite::params![
                    o.txid().to_string(),
                    i64::from(match o {
                        PegOp::PegIn(p) => p.vtxindex,
                        PegOp::PegOutRequest(r) => r.vtxindex,
                    }),
                    o.burn_header_hash().to_string(),
                    serde_json::to_string(o).unwrap(),
                    state.name(),
                    serde_json::to_string(state).unwrap(),
                    nonce,
                ],
            )
            .unwrap();
        }
    }
    let q = SqlitePegQueue::open(&path).unwrap();
    assert_eq!(count(&path, "SELECT version FROM schema_version"), 4);
    for (o, state) in &rows {
        assert_eq!(&q.get(&o.txid()).unwrap().unwrap().state, state);
    }
    assert_eq!(
        q.pending()
            .unwrap()
            .into_iter()
            .map(|p| p.state)
            .collect::<Vec<_>>(),
        rows.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>()
    );
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(4));
    // Processed on: the signed one is broadcast (now stored once), the
    // accepted one signed in a new batch, the broadcast one done.
    let new = big_stx(5, 700);
    q.set_states(&[
        (
            op(2, 5).txid(),
            OpState::StacksTxBroadcast { tx: old.clone() },
        ),
        (op(3, 5).txid(), OpState::StacksTxSigned { tx: new.clone() }),
        (op(1, 5).txid(), OpState::Done),
    ])
    .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 2);
    assert_eq!(
        q.get(&op(2, 5).txid()).unwrap().unwrap().state,
        OpState::StacksTxBroadcast { tx: old }
    );
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(5));
    q.set_states(&[
        (op(2, 5).txid(), OpState::Done),
        (op(3, 5).txid(), OpState::Done),
    ])
    .unwrap();
    assert!(q.pending().unwrap().is_empty());
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 0);
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), None);
    let h: Vec<String> = q
        .history(&op(2, 5).txid())
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    // The fixture wrote no events; the changes since are all recorded.
    assert_eq!(h, vec!["stacks_tx_broadcast", "done"]);
}

/// A batch row no op refers to — what a crash between storing a batch and
/// marking its ops would leave if the two were not one transaction — is
/// never read as anyone's state, does not count for the nonce, and goes
/// with the next round; an op whose batch row is missing is reported as
/// corrupt, not read as another state.
#[test]
fn an_orphan_batch_counts_for_nothing_and_a_missing_one_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite");
    let q = SqlitePegQueue::open(&path).unwrap();
    q.insert_op(&op(1, 5)).unwrap();
    q.set_state(&op(1, 5).txid(), &OpState::Accepted).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO stacks_txs (stacks_txid, nonce, fee, raw, created_at) VALUES (?1, 9, 1, x'00', 0)",
            [big_stx(9, 1).txid.to_string()],
        )
        .unwrap();
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), None);
    assert_eq!(
        q.get(&op(1, 5).txid()).unwrap().unwrap().state,
        OpState::Accepted
    );
    q.set_state(&op(1, 5).txid(), &OpState::StacksTxSigned { tx: stx(3) })
        .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM stacks_txs"), 1);
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(3));
    // The foreign key refuses to drop a batch that ops hold …
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(conn.execute("DELETE FROM stacks_txs", []).is_err());
    // … so only a file damaged outside the queue lacks it.
    conn.execute_batch("PRAGMA foreign_keys = OFF; DELETE FROM stacks_txs;")
        .unwrap();
    assert!(
        matches!(q.get(&op(1, 5).txid()), Err(peg_queue::Error::Corrupt(m)) if m.contains("missing"))
    );
    assert!(matches!(q.pending(), Err(peg_queue::Error::Corrupt(_))));
}

const BATCH_OPS: u32 = 20;

fn batch_op(batch: u32, k: u32) -> PegOp {
    op(batch * BATCH_OPS + k, u64::from(batch))
}

/// The writer half of the batch kill test: runs only in the child process.
/// Each round scans a block of ops and signs them in one batch.
#[test]
fn batch_kill_test_writer() {
    let Some(q) = writer_queue("PEG_QUEUE_BATCH_KILL_TEST_DB") else {
        return;
    };
    for i in 0..10_000u32 {
        let ops: Vec<PegOp> = (0..BATCH_OPS).map(|k| batch_op(i, k)).collect();
        q.record_scanned_block(BurnHeight(u64::from(i)), &ops)
            .unwrap();
        // The parent kills on this line: while the batch is being stored.
        say(&format!("scanned {i}"));
        let tx = big_stx(u64::from(i), 500);
        q.set_states(
            &ops.iter()
                .map(|o| (o.txid(), OpState::StacksTxSigned { tx: tx.clone() }))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        say(&format!("acked {i}"));
    }
}

/// Killed with SIGKILL while storing batches: every acknowledged batch is
/// whole for each of its ops, the batch in flight is all or nothing (never
/// stored without its ops marked, never some ops marked), and no batch row
/// is left that no op holds.
#[test]
fn a_batch_killed_while_being_stored_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill.sqlite");
    let mut next = 0u32;
    // How long after the batch's transaction starts the writer dies: at
    // once, in the middle, near or after its commit.
    let delays_micros = [0u64, 300, 1_000, 3_000, 10_000];
    // (round, batch, stored) of every batch found after a kill.
    let mut outcomes = Vec::new();
    for (round, delay) in (0u32..).zip(delays_micros) {
        let (mut child, mut lines) = spawn_writer(
            "batch_kill_test_writer",
            "PEG_QUEUE_BATCH_KILL_TEST_DB",
            &db,
        );
        let mut acked = None;
        let stop_at = 5 + round * 7;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("acked ") {
                acked = Some(n.parse::<u32>().unwrap());
            }
            if line == format!("scanned {stop_at}") {
                break;
            }
        }
        // The batch's transaction is under way: kill it at some point in it.
        std::thread::sleep(std::time::Duration::from_micros(delay));
        kill(&mut child);
        let acked = acked.expect("the writer acknowledged writes");
        let q = SqlitePegQueue::open(&db).unwrap();
        for i in 0..=acked {
            for k in 0..BATCH_OPS {
                let got = q.get(&batch_op(i, k).txid()).unwrap();
                assert_eq!(
                    got.map(|g| g.state),
                    Some(OpState::StacksTxSigned {
                        tx: big_stx(u64::from(i), 500)
                    }),
                    "acknowledged batch {i}, op {k} (round {round})"
                );
            }
        }
        // The batch in flight (and any after it): all or nothing.
        let mut i = acked + 1;
        loop {
            let states: Vec<Option<OpState>> = (0..BATCH_OPS)
                .map(|k| q.get(&batch_op(i, k).txid()).unwrap().map(|g| g.state))
                .collect();
            if states.iter().all(Option::is_none) {
                break;
            }
            let signed = Some(OpState::StacksTxSigned {
                tx: big_stx(u64::from(i), 500),
            });
            outcomes.push((round, i, states[0] == signed));
            assert!(
                states.iter().all(|s| *s == Some(OpState::Detected))
                    || states.iter().all(|s| *s == signed),
                "batch {i} half stored: {:?}",
                states
                    .iter()
                    .map(|s| s.as_ref().map(OpState::name))
                    .collect::<Vec<_>>()
            );
            i += 1;
        }
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM stacks_txs WHERE NOT EXISTS (SELECT 1 FROM ops WHERE ops.batch_id = stacks_txs.id)"
            ),
            0,
            "round {round}: a batch stored without its ops"
        );
        assert!(
            i > stop_at,
            "round {round}: the batch in flight was scanned"
        );
        next = next.max(i);
        let held = count(
            &db,
            "SELECT MAX(stacks_nonce) FROM ops WHERE state = 'stacks_tx_signed'",
        );
        assert_eq!(
            q.last_signed_stacks_nonce().unwrap(),
            Some(u64::try_from(held).unwrap())
        );
    }
    assert!(next > 0, "{outcomes:?}");
}
