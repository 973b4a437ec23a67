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
