//! Fault injection: for every named step, the loop dies just before and just
//! after storing it (as if killed), then a fresh loop over the same SQLite
//! queue file finishes the work. Each op's effect must happen exactly once:
//! one mint, one burn, one payout to the recipient, nothing missing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;

use coordinator::testing::*;
use coordinator::{Components, CrashPoint, StacksCoordinator};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};

const STATES: &[&str] = &[
    "accepted",
    "stacks_tx_signed",
    "stacks_tx_broadcast",
    "burn_confirmed",
    "bitcoin_tx_signed",
    "bitcoin_tx_broadcast",
    "done",
];

fn looped(
    w: &W,
    q: SqlitePegQueue,
) -> StacksCoordinator<
    SqlitePegQueue,
    MockStacksNode,
    MockBitcoinNode,
    MockStacksWallet,
    MockBitcoinWallet,
    MockFrostCoordinator,
    MockOpSource,
> {
    StacksCoordinator::new(
        Components {
            queue: q,
            stacks: stacks_node(w),
            bitcoin: bitcoin_node(w),
            stacks_wallet: stacks_wallet(w),
            bitcoin_wallet: bitcoin_wallet(w),
            frost: frost(w),
            source: source(w),
        },
        settings(),
    )
}

/// Confirms every fulfilment the node has seen, as a new block would.
fn mine_bitcoin(w: &W) {
    for c in w.lock().unwrap().btc_known.values_mut() {
        *c += 1;
    }
}

#[test]
fn a_crash_at_any_step_never_repeats_or_loses_an_effect() {
    let stop = AtomicBool::new(false);
    let mut points = vec![];
    for s in STATES {
        points.push(CrashPoint::BeforeStoring(s));
        points.push(CrashPoint::AfterStoring(s));
    }
    for point in points {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite");
        let pin = peg_in(1, 2, allowed_principal(), 150_000);
        let pout = peg_out(2, 2, ALLOWED_BTC, 40_000);
        let w = world(3, vec![(2, vec![pin.clone(), pout.clone()])]);

        // First life: dies at the crash point.
        let mut first = looped(&w, SqlitePegQueue::open(&db).unwrap());
        first.set_crash_point(Some(point));
        let crashed = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..6 {
                first.tick(&stop).unwrap();
                mine_bitcoin(&w);
            }
        }));
        assert!(crashed.is_err(), "{point:?} was never reached");
        drop(first);

        // Second life: a fresh loop over the same file finishes the work.
        let mut second = looped(&w, SqlitePegQueue::open(&db).unwrap());
        for _ in 0..6 {
            second.tick(&stop).unwrap();
            mine_bitcoin(&w);
        }
        let q = SqlitePegQueue::open(&db).unwrap();
        for op in [&pin, &pout] {
            assert_eq!(
                q.get(&op.txid()).unwrap().unwrap().state,
                OpState::Done,
                "{point:?}: {op:?}"
            );
        }
        let g = w.lock().unwrap();
        assert_eq!(
            g.mined.get(&pin.txid()),
            Some(&1),
            "{point:?}: one mint reached the chain"
        );
        assert_eq!(
            g.mined.get(&pout.txid()),
            Some(&1),
            "{point:?}: one burn reached the chain"
        );
        let payouts: std::collections::HashSet<_> =
            g.btc_broadcasts.iter().map(|t| t.compute_txid()).collect();
        assert_eq!(
            payouts.len(),
            1,
            "{point:?}: one fulfilment, broadcast maybe twice but never rebuilt"
        );
        let paid = g.btc_broadcasts.first().unwrap();
        let coordinator::bitcoin::Transaction { output, .. } = paid;
        let peg_ops_out = match &pout {
            peg_queue::peg_ops::PegOp::PegOutRequest(o) => o,
            _ => unreachable!(),
        };
        assert_eq!(
            output[1].script_pubkey,
            peg_ops_out.recipient.script_pubkey(),
            "{point:?}"
        );
        assert_eq!(output[1].value, peg_ops_out.amount, "{point:?}");
    }
}

/// The same with batches (issue #16): three peg-ins minted by one
/// `mint-many!`, three requests burned by one `burn-many!` and paid by
/// fulfilments signed in one `sign_many`. A crash at any point, before or
/// after storing any step, never mints, burns or pays an op twice and never
/// loses one.
#[test]
fn a_crash_at_any_step_of_a_batch_never_repeats_or_loses_an_effect() {
    let stop = AtomicBool::new(false);
    let mut points = vec![];
    for s in STATES {
        points.push(CrashPoint::BeforeStoring(s));
        points.push(CrashPoint::AfterStoring(s));
    }
    for point in points {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite");
        let pins: Vec<_> = (1..=3)
            .map(|n| peg_in(n, 2, allowed_principal(), 150_000 + u64::from(n)))
            .collect();
        let pouts: Vec<_> = (11..=13)
            .map(|n| peg_out(n, 2, ALLOWED_BTC, 40_000 + u64::from(n)))
            .collect();
        let ops: Vec<_> = pins.iter().chain(&pouts).cloned().collect();
        let w = world(3, vec![(2, ops.clone())]);
        w.lock().unwrap().extra_peg_utxos = vec![extra_peg_utxo(1), extra_peg_utxo(2)];

        let mut first = looped(&w, SqlitePegQueue::open(&db).unwrap());
        first.set_crash_point(Some(point));
        let crashed = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..6 {
                first.tick(&stop).unwrap();
                mine_bitcoin(&w);
            }
        }));
        assert!(crashed.is_err(), "{point:?} was never reached");
        drop(first);

        let mut second = looped(&w, SqlitePegQueue::open(&db).unwrap());
        for _ in 0..6 {
            second.tick(&stop).unwrap();
            mine_bitcoin(&w);
        }
        let q = SqlitePegQueue::open(&db).unwrap();
        let g = w.lock().unwrap();
        assert!(
            g.batches.iter().any(|b| b.0.len() == 3),
            "{point:?}: batched"
        );
        for op in &ops {
            assert_eq!(
                q.get(&op.txid()).unwrap().unwrap().state,
                OpState::Done,
                "{point:?}: {op:?}"
            );
            assert_eq!(
                g.mined.get(&op.txid()),
                Some(&1),
                "{point:?}: one mint or burn of {} reached the chain",
                op.txid()
            );
        }
        for op in &pouts {
            let peg_queue::peg_ops::PegOp::PegOutRequest(r) = op else {
                unreachable!()
            };
            let own = coordinator::bitcoin::OutPoint::new(r.txid, 2);
            let paid: std::collections::HashSet<_> = g
                .btc_broadcasts
                .iter()
                .filter(|t| t.input[0].previous_output == own)
                .map(|t| t.compute_txid())
                .collect();
            assert_eq!(
                paid.len(),
                1,
                "{point:?}: {} paid by one fulfilment",
                r.txid
            );
            let tx = g
                .btc_broadcasts
                .iter()
                .find(|t| t.input[0].previous_output == own)
                .unwrap();
            assert_eq!(tx.output[1].script_pubkey, r.recipient.script_pubkey());
            assert_eq!(tx.output[1].value, r.amount, "{point:?}");
        }
    }
}

/// The schema as the previous coordinator (queue schema 3) wrote it: every
/// op of a batch carried the whole transaction in its own `state_data`.
const SCHEMA_V3: &str = "CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
    INSERT INTO schema_version (version) VALUES (3);
    CREATE TABLE ops (
        txid TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
        block_height INTEGER NOT NULL, vtxindex INTEGER NOT NULL,
        burn_header_hash TEXT NOT NULL, op TEXT NOT NULL, state TEXT NOT NULL,
        state_data TEXT NOT NULL, stacks_nonce INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        signature_digest TEXT, amount_sats INTEGER, accepted_at INTEGER, waiting TEXT) STRICT;
    CREATE INDEX ops_by_state ON ops (state, block_height, vtxindex);
    CREATE TABLE scan (id INTEGER PRIMARY KEY CHECK (id = 1),
        last_scanned_height INTEGER NOT NULL) STRICT;
    INSERT INTO scan (id, last_scanned_height) VALUES (1, 2);
    CREATE TABLE op_events (
        id INTEGER PRIMARY KEY, txid TEXT NOT NULL, seq INTEGER NOT NULL,
        at_unix INTEGER NOT NULL, state TEXT NOT NULL, stacks_txid TEXT,
        bitcoin_txid TEXT, reason TEXT, UNIQUE (txid, seq)) STRICT;";

/// A queue file of the previous schema, holding a signed, not yet broadcast
/// `mint-many!` in each of its three ops' rows and a fourth peg-in
/// accepted, is opened (migrated) and processed by the loop: the stored
/// batch is broadcast as stored, never signed again, the fourth is signed in
/// a batch of its own after it (the next nonce), and each is minted once.
#[test]
fn a_queue_of_the_previous_schema_is_opened_and_processed_to_done() {
    let stop = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite");
    let pins: Vec<_> = (1..=4)
        .map(|n| peg_in(n, 2, allowed_principal(), 150_000 + u64::from(n)))
        .collect();
    let w = world(3, vec![(2, pins.clone())]);
    let stored = fake_stacks_batch(
        &pins[..3].iter().map(|p| p.txid()).collect::<Vec<_>>(),
        0,
        1_000,
    );
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_V3).unwrap();
        for (i, p) in pins.iter().enumerate() {
            let state = if i < 3 {
                OpState::StacksTxSigned { tx: stored.clone() }
            } else {
                OpState::Accepted
            };
            conn.execute(
                "INSERT INTO ops (txid, kind, block_height, vtxindex, burn_header_hash, op, state, state_data, stacks_nonce, created_at, updated_at, accepted_at)
                 VALUES (?1, 'peg_in', 2, ?2, ?3, ?4, ?5, ?6, ?7, 100, 100, 100)",
                rusqlite::params![
                    p.txid().to_string(),
                    i as i64,
                    p.burn_header_hash().to_string(),
                    serde_json::to_string(p).unwrap(),
                    state.name(),
                    serde_json::to_string(&state).unwrap(),
                    (i < 3).then_some(0i64),
                ],
            )
            .unwrap();
        }
    }
    let q = SqlitePegQueue::open(&db).unwrap();
    assert_eq!(q.last_signed_stacks_nonce().unwrap(), Some(0));
    let mut l = looped(&w, q);
    for _ in 0..6 {
        l.tick(&stop).unwrap();
        mine_bitcoin(&w);
    }
    let q = SqlitePegQueue::open(&db).unwrap();
    let g = w.lock().unwrap();
    for p in &pins {
        assert_eq!(q.get(&p.txid()).unwrap().unwrap().state, OpState::Done);
        assert_eq!(g.mined.get(&p.txid()), Some(&1), "{} minted once", p.txid());
    }
    assert_eq!(
        g.stacks_broadcasts.first(),
        Some(&stored.raw),
        "the stored batch is broadcast first, as stored"
    );
    assert!(
        g.signed
            .iter()
            .all(|(t, _, _)| !pins[..3].iter().any(|p| p.txid() == *t)),
        "the stored batch's ops are never signed again: {:?}",
        g.signed
    );
    assert!(
        g.signed
            .iter()
            .any(|(t, n, _)| *t == pins[3].txid() && *n == 1),
        "the accepted one is signed with the next nonce: {:?}",
        g.signed
    );
    assert!(q.pending().unwrap().is_empty());
}
