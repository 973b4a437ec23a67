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
