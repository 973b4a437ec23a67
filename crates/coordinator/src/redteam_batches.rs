//! Red team (issue #16): the loop's batched mints and burns, against the
//! doubles of [`crate::testing`]. Each test is an attack; it passes when
//! the loop holds.

// A poisoned lock or a bad fixture is a bug in the test itself.
#![allow(clippy::unwrap_in_result)]

use super::*;
use crate::testing::*;
use peg_queue::OpState;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn peg_ins(n: u8) -> Vec<PegOp> {
    (1..=n)
        .map(|i| peg_in(i, 2, allowed_principal(), 1_000 + u64::from(i)))
        .collect()
}

fn held(q: &MemQueue, t: Txid) -> Option<SignedStacksTx> {
    match q.state(&t) {
        OpState::StacksTxSigned { tx } | OpState::StacksTxBroadcast { tx } => Some(tx),
        _ => None,
    }
}

/// A batch's ops in two states at once — one already broadcast (the
/// operator's one-off `process_one` drove it alone; a stop between ops of
/// a round does the same), the others still signed — and the broadcast one
/// found stuck in the round the others are broadcast. The replacement must
/// carry every op of the batch: an op left holding the old transaction has
/// lost its element when the replacement (same nonce) is mined, and fails
/// "mined but did not take effect" although nothing was wrong with it.
#[test]
fn a_stuck_batch_replaced_while_its_other_ops_are_broadcast_keeps_them() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    // The batch signed and stored, not broadcast yet (a crash after the
    // store).
    let mut first = coordinator(&w, &q, settings());
    first.set_crash_point(Some(CrashPoint::AfterStoring("stacks_tx_signed")));
    assert!(catch_unwind(AssertUnwindSafe(|| run_ticks(&mut first, 1))).is_err());
    drop(first);
    let batch = held(&q, txid(1)).expect("signed");
    for op in &ops {
        assert_eq!(held(&q, op.txid()), Some(batch.clone()));
    }
    let mut l = coordinator(&w, &q, settings());
    // One op driven alone: broadcast, now waiting to be mined.
    l.process_one(&txid(1), &no_stop()).unwrap();
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    assert!(matches!(q.state(&txid(2)), OpState::StacksTxSigned { .. }));
    // The next round: op 1 finds the batch stuck (no allowance), ops 2 and
    // 3 broadcast it.
    l.set_stacks_replace_after(Duration::ZERO);
    l.tick(&no_stop()).unwrap();
    // Whatever holds what now, every op must hold one transaction, of one
    // nonce: two same-nonce transactions splitting the batch cannot both
    // be mined.
    let holding: Vec<SignedStacksTx> = ops.iter().filter_map(|o| held(&q, o.txid())).collect();
    assert_eq!(holding.len(), 3, "every op still pending");
    let split = holding.iter().any(|t| t.txid != holding[0].txid);
    assert!(
        !split,
        "the batch split in two same-nonce transactions: {holding:?}"
    );
    // The chain goes on: the node mines what it is offered.
    l.set_stacks_replace_after(DEFAULT_STACKS_REPLACE_AFTER);
    w.lock().unwrap().auto_mine = true;
    run_ticks(&mut l, 4);
    let g = w.lock().unwrap();
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done, "{}", op.txid());
        assert!(g.processed.contains(&op.txid()), "minted");
        assert_eq!(g.mined.get(&op.txid()), Some(&1), "mined once");
    }
}

/// A crash in the round that replaces a stuck batch, before or after the
/// replacement is stored; then either the node mines the old transaction
/// (it was in its mempool all along) or nothing was mined and the restarted
/// loop goes on. Each op is done, minted once, whichever way.
#[test]
fn a_crash_while_replacing_a_batch_never_loses_or_repeats_a_mint() {
    for point in [
        CrashPoint::BeforeStoring("stacks_tx_signed"),
        CrashPoint::AfterStoring("stacks_tx_signed"),
    ] {
        for old_mined in [true, false] {
            let ops = peg_ins(4);
            let w = world(3, vec![(2, ops.clone())]);
            w.lock().unwrap().auto_mine = false;
            let q = MemQueue::default();
            let mut first = coordinator(&w, &q, settings());
            run_ticks(&mut first, 1);
            let old = held(&q, txid(1)).expect("pending");
            assert!(ops.iter().all(|o| held(&q, o.txid()) == Some(old.clone())));
            first.set_stacks_replace_after(Duration::ZERO);
            first.set_crash_point(Some(point));
            assert!(
                catch_unwind(AssertUnwindSafe(|| first.tick(&no_stop()))).is_err(),
                "{point:?} reached"
            );
            drop(first);
            if old_mined {
                let mut g = w.lock().unwrap();
                mine(&mut g, &old.raw);
            }
            w.lock().unwrap().auto_mine = true;
            let mut second = coordinator(&w, &q, settings());
            run_ticks(&mut second, 4);
            let g = w.lock().unwrap();
            for op in &ops {
                assert_eq!(
                    q.state(&op.txid()),
                    OpState::Done,
                    "{point:?}, old mined {old_mined}: {}",
                    op.txid()
                );
                assert_eq!(
                    g.mined.get(&op.txid()),
                    Some(&1),
                    "{point:?}, old mined {old_mined}: mined once"
                );
            }
        }
    }
}
