//! Issue #16: a round's payouts signed in one `sign_many`, its mints and
//! burns signed as `mint-many!` / `burn-many!` batches, against the doubles
//! of [`crate::testing`].

// A poisoned lock or a bad fixture is a bug in the test itself.
#![allow(clippy::unwrap_in_result)]

use super::*;
use crate::testing::*;
use peg_queue::OpState;
use stacks_node_client::Rejection;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Three peg-outs to the allowlisted address (amounts differ, so their
/// signatures do), and peg wallet coins for three fulfilments at once.
fn three_peg_outs() -> (W, Vec<PegOp>) {
    let ops: Vec<PegOp> = (1..=3)
        .map(|n| peg_out(n, 2, ALLOWED_BTC, 40_000 + u64::from(n) * 1_000))
        .collect();
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().extra_peg_utxos = vec![extra_peg_utxo(1), extra_peg_utxo(2)];
    (w, ops)
}

fn confirm_payouts(w: &W) {
    for c in w.lock().unwrap().btc_known.values_mut() {
        *c += 1;
    }
}

/// Each request paid exactly once, by a fulfilment spending its own output
/// 2, to its recipient, its amount; no two payouts share a coin.
fn assert_each_paid_once(w: &W, ops: &[PegOp]) {
    let g = w.lock().unwrap();
    let mut coins = HashSet::new();
    let payouts: HashSet<Txid> = g.btc_broadcasts.iter().map(|t| t.compute_txid()).collect();
    assert_eq!(payouts.len(), ops.len(), "one fulfilment per request");
    for op in ops {
        let PegOp::PegOutRequest(r) = op else {
            unreachable!()
        };
        let paid: HashSet<Txid> = g
            .btc_broadcasts
            .iter()
            .filter(|t| t.input[0].previous_output == OutPoint::new(r.txid, 2))
            .map(|t| t.compute_txid())
            .collect();
        assert_eq!(paid.len(), 1, "{}: one fulfilment", r.txid);
        let tx = g
            .btc_broadcasts
            .iter()
            .find(|t| t.input[0].previous_output == OutPoint::new(r.txid, 2))
            .unwrap();
        assert_eq!(tx.output[1].script_pubkey, r.recipient.script_pubkey());
        assert_eq!(tx.output[1].value, r.amount);
        assert!(
            coins.insert(tx.input[1].previous_output),
            "a coin spent twice"
        );
    }
}

// ---------------------------------------------------------------- payouts signed together

#[test]
fn a_rounds_payouts_are_signed_in_one_sign_many_call() {
    let (w, ops) = three_peg_outs();
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    for op in &ops {
        assert!(
            matches!(q.state(&op.txid()), OpState::BitcoinTxBroadcast { .. }),
            "{}",
            q.state(&op.txid())
        );
    }
    {
        let g = w.lock().unwrap();
        assert_eq!(
            g.sign_many_calls,
            vec![3],
            "the three fulfilments in one call"
        );
        assert_eq!(g.sign_calls, 6, "two inputs each");
        assert_eq!(g.fulfillments_built, 3);
    }
    confirm_payouts(&w);
    run_ticks(&mut l, 1);
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
    }
    assert_each_paid_once(&w, &ops);
}

#[test]
fn one_jobs_signing_failure_backs_off_only_its_op() {
    let (w, ops) = three_peg_outs();
    // The first job's first input times out: that job fails, the others
    // of the same call stand.
    w.lock()
        .unwrap()
        .frost_failures
        .push_back(frost_coordinator::Error::Timeout {
            round: "signing",
            waited: Duration::from_secs(10),
            missing: vec![3],
        });
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    let first = q.get_op(&ops[0].txid());
    assert_eq!(first.state, OpState::BurnConfirmed);
    assert!(first.last_error.is_some(), "its own failure recorded");
    for op in &ops[1..] {
        assert!(
            matches!(q.state(&op.txid()), OpState::BitcoinTxBroadcast { .. }),
            "{}",
            q.state(&op.txid())
        );
    }
    // The failed one is signed again later, alone; all paid once.
    run_ticks(&mut l, 2);
    confirm_payouts(&w);
    run_ticks(&mut l, 2);
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
    }
    assert_each_paid_once(&w, &ops);
    let calls = w.lock().unwrap().sign_many_calls.clone();
    assert_eq!(calls, vec![3, 1], "the retry alone");
}

#[test]
fn signed_payouts_are_stored_before_any_is_broadcast() {
    for point in [
        CrashPoint::BeforeStoring("bitcoin_tx_signed"),
        CrashPoint::AfterStoring("bitcoin_tx_signed"),
    ] {
        let (w, ops) = three_peg_outs();
        let q = MemQueue::default();
        let mut first = coordinator(&w, &q, settings());
        first.set_crash_point(Some(point));
        let crashed = catch_unwind(AssertUnwindSafe(|| run_ticks(&mut first, 2)));
        assert!(crashed.is_err(), "{point:?} never reached");
        drop(first);
        assert!(
            w.lock().unwrap().btc_broadcasts.is_empty(),
            "{point:?}: nothing broadcast before the round was stored"
        );
        let stored: Vec<OpState> = ops.iter().map(|o| q.state(&o.txid())).collect();
        match point {
            CrashPoint::BeforeStoring(_) => {
                assert!(
                    stored.iter().all(|s| *s == OpState::BurnConfirmed),
                    "{stored:?}"
                )
            }
            CrashPoint::AfterStoring(_) => assert!(
                stored
                    .iter()
                    .all(|s| matches!(s, OpState::BitcoinTxSigned { .. })),
                "{stored:?}"
            ),
        }
        // A restart finishes: the stored bytes are broadcast, or (nothing
        // stored) signed again; each request paid once.
        let mut second = coordinator(&w, &q, settings());
        run_ticks(&mut second, 2);
        confirm_payouts(&w);
        run_ticks(&mut second, 1);
        for op in &ops {
            assert_eq!(q.state(&op.txid()), OpState::Done, "{point:?}");
        }
        assert_each_paid_once(&w, &ops);
    }
}

// ---------------------------------------------------------------- batched mints and burns

fn peg_ins(n: u8) -> Vec<PegOp> {
    (1..=n)
        .map(|i| peg_in(i, 2, allowed_principal(), 1_000 + u64::from(i)))
        .collect()
}

#[test]
fn a_rounds_mints_are_one_mint_many_and_each_op_confirms_on_its_own() {
    let ops = peg_ins(5);
    let w = world(3, vec![(2, ops.clone())]);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 3);
    let g = w.lock().unwrap();
    assert_eq!(
        g.batches,
        vec![(ops.iter().map(PegOp::txid).collect::<Vec<_>>(), 0)],
        "one mint-many! of five, nonce 0"
    );
    assert_eq!(g.stacks_broadcasts.len(), 1, "broadcast once for all five");
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
        assert_eq!(g.mined.get(&op.txid()), Some(&1), "minted once");
    }
    // Every op's history names the batch's transaction.
    let batch_txid = fake_stacks_batch(&g.batches[0].0, 0, 5_000).txid;
    for op in &ops {
        let h = q.history(&op.txid()).unwrap();
        assert!(
            h.iter()
                .any(|e| e.state == "stacks_tx_signed" && e.stacks_txid == Some(batch_txid)),
            "{h:?}"
        );
    }
}

#[test]
fn mints_and_burns_are_batched_apart_one_nonce_per_batch_in_order() {
    let mut ops = peg_ins(5);
    ops.push(peg_out(10, 2, ALLOWED_BTC, 40_000));
    ops.push(peg_out(11, 2, ALLOWED_BTC, 41_000));
    let w = world(3, vec![(2, ops)]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut s = settings();
    s.stacks_batch = 2;
    run_ticks(&mut coordinator(&w, &q, s), 1);
    let g = w.lock().unwrap();
    // Mints 1–2 (nonce 0), 3–4 (1), 5 alone (2, a plain mint!), then the
    // burns 10–11 (3).
    assert_eq!(
        g.batches,
        vec![
            (vec![txid(1), txid(2)], 0),
            (vec![txid(3), txid(4)], 1),
            (vec![txid(10), txid(11)], 3),
        ]
    );
    assert!(g.signed.contains(&(txid(5), 2, 1_000)), "{:?}", g.signed);
    // Each transaction broadcast once, then offered again once (not
    // mined): never once per op.
    let distinct: HashSet<&Vec<u8>> = g.stacks_broadcasts.iter().collect();
    assert_eq!(distinct.len(), 4, "one per transaction");
    assert_eq!(g.stacks_broadcasts.len(), 8);
}

/// The 25-pending limit counts transactions: with batches of 10, 250 ops
/// are signed in 25 transactions before the loop waits.
#[test]
fn batches_lift_the_25_pending_cap_on_ops() {
    let ops: Vec<PegOp> = (1..=255)
        .map(|n| peg_in(n, 2, allowed_principal(), u64::from(n)))
        .collect();
    let w = world(3, vec![(2, ops)]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut s = settings();
    s.stacks_batch = 10;
    let mut l = coordinator(&w, &q, s);
    run_ticks(&mut l, 2);
    {
        let g = w.lock().unwrap();
        assert_eq!(g.batches.len(), 25);
        assert_eq!(g.signed.len(), 250, "25 transactions of 10");
        let nonces: Vec<u64> = g.batches.iter().map(|b| b.1).collect();
        assert_eq!(nonces, (0..25).collect::<Vec<_>>());
    }
    let m = l.metrics();
    assert_eq!(m.stacks_pending_transactions.load(Ordering::Relaxed), 25);
    assert!(m.stacks_pending_limit_waits.load(Ordering::Relaxed) >= 1);
    let waiting = (1..=255)
        .filter(|n| q.state(&txid(*n)) == OpState::Accepted)
        .count();
    assert_eq!(waiting, 5);
    // The first confirms: the last five go, in one more transaction.
    w.lock().unwrap().account_nonce = 1;
    run_ticks(&mut l, 1);
    let g = w.lock().unwrap();
    assert_eq!(g.batches.len(), 26);
    assert_eq!(g.batches[25].1, 25);
    assert_eq!(g.batches[25].0.len(), 5);
}

#[test]
fn a_failed_element_of_a_mined_batch_fails_only_its_op() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().fail_on_chain.insert(txid(2));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 4);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(q.state(&txid(3)), OpState::Done);
    match q.state(&txid(2)) {
        OpState::Failed { reason } => {
            assert!(reason.contains("did not take effect"), "{reason}")
        }
        other => panic!("expected failed, got {other}"),
    }
    let g = w.lock().unwrap();
    assert_eq!(g.batches.len(), 1, "one batch, never signed again");
}

#[test]
fn a_batched_op_failed_on_chain_is_retried_alone_by_queue_retry() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().fail_on_chain.insert(txid(2));
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 4);
    assert!(matches!(q.state(&txid(2)), OpState::Failed { .. }));
    // What `queue retry` decides: its own get-mint shows nothing, so it is
    // minted again — only it, in a plain mint!.
    let sender = PrincipalData::Standard(wallet_address());
    let reader = retry::ContractReader {
        contract: &contract_id(),
        sender: &sender,
        network: StacksNetwork::Testnet,
    };
    let op2 = q.get_op(&txid(2));
    let d = retry::retry_decision(
        &l.c.stacks,
        &l.c.bitcoin,
        &reader,
        1,
        &op2,
        &q.history(&txid(2)).unwrap(),
    )
    .unwrap();
    assert_eq!(d, retry::RetryDecision::To(OpState::Accepted));
    // The others are done for good: retry leaves them (their mint is final).
    q.set(&txid(2), OpState::Accepted);
    w.lock().unwrap().fail_on_chain.clear();
    run_ticks(&mut l, 3);
    assert_eq!(q.state(&txid(2)), OpState::Done);
    let g = w.lock().unwrap();
    assert_eq!(g.mined.get(&txid(1)), Some(&1));
    assert_eq!(g.mined.get(&txid(3)), Some(&1));
    assert_eq!(g.batches.len(), 1);
    assert_eq!(g.signed.iter().filter(|s| s.0 == txid(2)).count(), 2);
}

#[test]
fn a_stuck_batch_is_replaced_whole_even_for_an_op_backing_off() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    let held = |q: &MemQueue, t: Txid| match q.state(&t) {
        OpState::StacksTxSigned { tx } | OpState::StacksTxBroadcast { tx } => tx,
        other => panic!("{t}: {other}"),
    };
    let old = held(&q, txid(1));
    for op in &ops {
        assert_eq!(held(&q, op.txid()), old);
    }
    // Op 3 backs off this round: it is not stepped, yet it holds the batch.
    l.backoff.insert(
        txid(3),
        Backoff {
            next_try: Instant::now() + Duration::from_secs(3600),
            delay: Duration::from_secs(3600),
        },
    );
    l.set_stacks_replace_after(Duration::ZERO);
    run_ticks(&mut l, 1);
    let new = held(&q, txid(1));
    assert_ne!(new.txid, old.txid, "replaced");
    assert_eq!(new.nonce, old.nonce, "same nonce");
    assert!(new.fee > old.fee, "higher fee");
    for op in &ops {
        assert_eq!(
            held(&q, op.txid()),
            new,
            "{} moved with its batch",
            op.txid()
        );
    }
    {
        // With no allowance left it is replaced every round: always the
        // whole batch, with the same nonce, each time a higher fee.
        let g = w.lock().unwrap();
        assert!(g.batches.len() >= 2, "{:?}", g.batches);
        assert!(g.batches.iter().all(|b| b.0.len() == 3 && b.1 == old.nonce));
        let fees: Vec<u64> = g
            .signed
            .iter()
            .filter(|s| s.0 == txid(1))
            .map(|s| s.2)
            .collect();
        assert!(fees.windows(2).all(|f| f[1] > f[0]), "{fees:?}");
    }
    assert!(l.metrics().stacks_replacements.load(Ordering::Relaxed) >= 1);
    // The replacement is mined: each op done, minted once.
    l.backoff.clear();
    l.set_stacks_replace_after(DEFAULT_STACKS_REPLACE_AFTER);
    w.lock().unwrap().auto_mine = true;
    run_ticks(&mut l, 3);
    let g = w.lock().unwrap();
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
        assert_eq!(g.mined.get(&op.txid()), Some(&1));
    }
}

#[test]
fn fee_too_low_signs_the_whole_batch_again_with_its_nonce() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock()
        .unwrap()
        .stacks_broadcast_script
        .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
            reason: "FeeTooLow".into(),
            reason_data: Some(serde_json::json!({"expected": 9_000, "actual": 3_000})),
        })));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    let g = w.lock().unwrap();
    assert_eq!(g.batches.len(), 2);
    assert_eq!(g.batches[0].1, g.batches[1].1, "the same nonce");
    assert_eq!(g.batches[1].0.len(), 3);
    assert!(g.signed.iter().filter(|s| s.2 == 9_000).count() == 3);
    // Refused once and broadcast again once: two calls for three ops.
    assert_eq!(g.stacks_broadcasts.len(), 2);
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
        assert_eq!(g.mined.get(&op.txid()), Some(&1));
    }
}

#[test]
fn a_batch_is_stored_before_it_is_broadcast_and_offered_once_per_round() {
    let ops = peg_ins(5);
    let w = world(3, vec![(2, ops.clone())]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut first = coordinator(&w, &q, settings());
    first.set_crash_point(Some(CrashPoint::AfterStoring("stacks_tx_signed")));
    assert!(catch_unwind(AssertUnwindSafe(|| run_ticks(&mut first, 1))).is_err());
    drop(first);
    assert!(w.lock().unwrap().stacks_broadcasts.is_empty());
    for op in &ops {
        assert!(matches!(
            q.state(&op.txid()),
            OpState::StacksTxSigned { .. }
        ));
    }
    let mut l = coordinator(&w, &q, settings());
    // Round 1 broadcasts the stored batch once; round 2 offers it again
    // once (not yet mined), then every op waits.
    run_ticks(&mut l, 1);
    {
        let g = w.lock().unwrap();
        assert_eq!(g.batches.len(), 1, "not signed again");
        assert_eq!(g.stacks_broadcasts.len(), 2, "{:?}", g.stacks_log);
        assert!(g
            .stacks_broadcasts
            .iter()
            .all(|b| *b == g.stacks_broadcasts[0]));
    }
    w.lock().unwrap().auto_mine = true;
    run_ticks(&mut l, 2);
    let g = w.lock().unwrap();
    for op in &ops {
        assert_eq!(q.state(&op.txid()), OpState::Done);
        assert_eq!(g.mined.get(&op.txid()), Some(&1));
    }
}

#[test]
fn a_batch_the_wallet_cannot_build_is_signed_op_by_op() {
    let ops = peg_ins(3);
    let w = world(3, vec![(2, ops.clone())]);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    let mut sw = MockStacksWallet::new();
    sw.expect_address().returning(wallet_address);
    sw.expect_build_mint_many()
        .returning(|_, _, _| Err(fee_wallet::Error::Build("a principal too long".into())));
    let w1 = w.clone();
    sw.expect_build_mint().returning(move |op, nonce, _| {
        if op.txid == txid(2) {
            return Err(fee_wallet::Error::Build("its principal is too long".into()));
        }
        w1.lock().unwrap().signed.push((op.txid, nonce, 1_000));
        Ok(fake_stacks_tx(op.txid, nonce, 1_000))
    });
    l.c.stacks_wallet = sw;
    run_ticks(&mut l, 3);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(q.state(&txid(3)), OpState::Done);
    let two = q.get_op(&txid(2));
    assert_eq!(two.state, OpState::Accepted);
    assert!(
        two.last_error
            .as_deref()
            .is_some_and(|e| e.contains("too long")),
        "{:?}",
        two.last_error
    );
    let nonces: Vec<u64> = w.lock().unwrap().signed.iter().map(|s| s.1).collect();
    assert_eq!(nonces, vec![0, 1], "each alone, nonces in order");
}
