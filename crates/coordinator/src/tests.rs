//! The loop's decision logic, against the doubles of [`crate::testing`].

// A poisoned lock or a bad fixture is a bug in the test itself.
#![allow(clippy::unwrap_in_result)]

use super::*;
use crate::testing::*;
use bitcoin::Amount;
use peg_queue::MockPegQueue;
use stacks_node_client::Rejection;
use std::sync::Arc;

// ---------------------------------------------------------------- peg-ins

#[test]
fn peg_in_is_minted_once_and_done() {
    let w = world(
        3,
        vec![(2, vec![peg_in(1, 2, allowed_principal(), 100_000)])],
    );
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 3);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    let g = w.lock().unwrap();
    assert_eq!(g.signed, vec![(txid(1), 0, 1_000)], "one mint, nonce 0");
    assert_eq!(g.stacks_broadcasts.len(), 1);
    assert!(g.processed.contains(&txid(1)));
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(3)));
}

#[test]
fn peg_in_to_another_wallet_is_rejected_without_minting() {
    let mut op = peg_in(1, 2, allowed_principal(), 100_000);
    let PegOp::PegIn(p) = &mut op else {
        unreachable!()
    };
    p.peg_wallet_address = ALLOWED_BTC.parse().unwrap();
    let w = world(3, vec![(2, vec![op])]);
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    match q.state(&txid(1)) {
        OpState::Rejected { reason } => assert!(reason.starts_with("peg-in.wallet:"), "{reason}"),
        other => panic!("expected rejected, got {other}"),
    }
    assert!(w.lock().unwrap().signed.is_empty());
}

#[test]
fn zero_amount_and_wrong_network_recipients_are_rejected() {
    let mainnet_recipient: PrincipalData =
        "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7".parse().unwrap();
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_in(1, 2, allowed_principal(), 0),
                peg_in(2, 2, mainnet_recipient, 5),
            ],
        )],
    );
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    assert!(matches!(q.state(&txid(1)), OpState::Rejected { reason } if reason.contains("zero")));
    assert!(
        matches!(q.state(&txid(2)), OpState::Rejected { reason } if reason.contains("Testnet"))
    );
    assert!(w.lock().unwrap().signed.is_empty());
}

#[test]
fn non_allowlisted_peg_in_is_rejected_and_the_loop_continues() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_in(1, 2, stranger_principal(), 100),
                peg_in(2, 2, allowed_principal(), 200),
            ],
        )],
    );
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    match q.state(&txid(1)) {
        OpState::Rejected { reason } => assert!(reason.contains("allowlist"), "{reason}"),
        other => panic!("expected rejected, got {other}"),
    }
    assert_eq!(q.state(&txid(2)), OpState::Done);
    assert_eq!(w.lock().unwrap().signed, vec![(txid(2), 0, 1_000)]);
}

#[test]
fn shallow_ops_wait_for_the_configured_depth() {
    let w = world(5, vec![(5, vec![peg_in(1, 5, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    q.insert_op(&peg_in(1, 5, allowed_principal(), 100))
        .unwrap();
    let mut s = settings();
    s.op_confirmations = 3;
    let mut l = coordinator(&w, &q, s);
    run_ticks(&mut l, 2);
    assert_eq!(q.state(&txid(1)), OpState::Detected, "1 of 3 confirmations");
    // Scanning stops at the deepest height with 3 confirmations.
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(3)));
    w.lock().unwrap().tip = 7;
    run_ticks(&mut l, 2);
    assert_eq!(q.state(&txid(1)), OpState::Done);
}

// ---------------------------------------------------------------- peg-outs

fn assert_paid(w: &W, op: &PegOp) {
    let PegOp::PegOutRequest(op) = op else {
        unreachable!()
    };
    let g = w.lock().unwrap();
    assert_eq!(g.btc_broadcasts.len(), 1, "exactly one payout");
    let tx = &g.btc_broadcasts[0];
    assert_eq!(tx.input[0].previous_output, OutPoint::new(op.txid, 2));
    assert_eq!(
        tx.output[1].script_pubkey,
        op.recipient.script_pubkey(),
        "pays the recipient"
    );
    assert_eq!(tx.output[1].value, op.amount);
}

#[test]
fn peg_out_burns_then_pays_the_recipient_once() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    // Broadcast but not yet confirmed.
    assert!(matches!(
        q.state(&txid(1)),
        OpState::BitcoinTxBroadcast { .. }
    ));
    let fulfil = w.lock().unwrap().btc_broadcasts[0].compute_txid();
    w.lock().unwrap().btc_known.insert(fulfil, 1);
    run_ticks(&mut l, 1);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_paid(&w, &op);
    let g = w.lock().unwrap();
    assert_eq!(g.signed.len(), 1, "one burn");
    assert_eq!(g.sign_calls, 2, "one signing round per input");
}

#[test]
fn a_burn_that_fails_on_chain_never_leads_to_a_payout() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    w.lock().unwrap().fail_on_chain.insert(txid(1));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 4);
    match q.state(&txid(1)) {
        OpState::Failed { reason } => assert!(reason.contains("burn transaction"), "{reason}"),
        other => panic!("expected failed, got {other}"),
    }
    let g = w.lock().unwrap();
    assert_eq!(g.fulfillments_built, 0);
    assert_eq!(g.sign_calls, 0);
    assert!(g.btc_broadcasts.is_empty());
}

#[test]
fn a_burn_only_in_the_mempool_releases_nothing() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 5);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    let g = w.lock().unwrap();
    assert_eq!(g.fulfillments_built, 0);
    assert!(g.btc_broadcasts.is_empty());
    // The same bytes were offered again while waiting, never new ones.
    assert_eq!(g.signed.len(), 1);
    assert!(g.stacks_broadcasts.len() > 1);
    assert!(g
        .stacks_broadcasts
        .iter()
        .all(|b| *b == g.stacks_broadcasts[0]));
}

#[test]
fn a_transient_error_mid_peg_out_resumes_at_the_right_step() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
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
    let after_failure = q.get_op(&txid(1));
    assert_eq!(after_failure.state, OpState::BurnConfirmed);
    assert_eq!(after_failure.attempts, 1);
    assert!(after_failure.last_error.unwrap().contains("timed out"));
    run_ticks(&mut l, 1);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::BitcoinTxBroadcast { .. }
    ));
    let g = w.lock().unwrap();
    assert_eq!(g.signed.len(), 1, "the burn is not repeated");
    assert_eq!(g.stacks_broadcasts.len(), 1);
    drop(g);
    assert_paid(&w, &op);
}

#[test]
fn an_unsafe_fulfilment_is_refused_before_signing() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    w.lock().unwrap().evil_wallet_script = Some(peg_address().script_pubkey());
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    match q.state(&txid(1)) {
        OpState::Failed { reason } => assert!(reason.contains("fulfilment.recipient"), "{reason}"),
        other => panic!("expected failed, got {other}"),
    }
    let g = w.lock().unwrap();
    assert_eq!(g.sign_calls, 0);
    assert!(g.btc_broadcasts.is_empty());
}

#[test]
fn peg_out_checks_recipient_allowlist_network_and_signature() {
    let mut bad_sig = peg_out(3, 2, ALLOWED_BTC, 40_000);
    let PegOp::PegOutRequest(p) = &mut bad_sig else {
        unreachable!()
    };
    p.signature.0[0] = 7;
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_out(1, 2, STRANGER_BTC, 40_000),
                peg_out(2, 2, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", 40_000),
                bad_sig,
            ],
        )],
    );
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    assert!(
        matches!(q.state(&txid(1)), OpState::Rejected { reason } if reason.contains("allowlist"))
    );
    assert!(
        matches!(q.state(&txid(2)), OpState::Rejected { reason } if reason.contains("regtest"))
    );
    assert!(
        matches!(q.state(&txid(3)), OpState::Rejected { reason } if reason.starts_with("request.signature:"))
    );
    assert!(w.lock().unwrap().signed.is_empty());
}

#[test]
fn refused_fulfilment_is_rebuilt_and_a_dropped_one_rebroadcast() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    w.lock()
        .unwrap()
        .btc_broadcast_script
        .push_back(bitcoin_node_client::Error::Rpc {
            code: -26,
            message: "min relay fee not met".into(),
        });
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::BitcoinTxBroadcast { .. }
    ));
    assert_eq!(
        w.lock().unwrap().fulfillments_built,
        2,
        "built again after the refusal"
    );
    // The node forgets it: the same bytes are offered again.
    let first = w.lock().unwrap().btc_broadcasts[0].clone();
    w.lock().unwrap().btc_known.clear();
    run_ticks(&mut l, 1);
    let g = w.lock().unwrap();
    assert_eq!(g.btc_broadcasts.len(), 2);
    assert_eq!(g.btc_broadcasts[1], first);
    assert_eq!(g.fulfillments_built, 2);
}

// ---------------------------------------------------------------- restarts and node answers

#[test]
fn after_a_crash_the_stored_bytes_are_rebroadcast_not_resigned() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    let op = peg_in(1, 2, allowed_principal(), 100);
    q.insert_op(&op).unwrap();
    let stored = fake_stacks_tx(txid(1), 0, 1_000);
    q.set(&txid(1), OpState::StacksTxSigned { tx: stored.clone() });
    // A fresh loop over the same queue, as after a restart.
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    let g = w.lock().unwrap();
    assert!(g.signed.is_empty(), "nothing signed anew");
    assert_eq!(g.stacks_broadcasts, vec![stored.raw]);
}

#[test]
fn a_refused_rebroadcast_of_a_mined_tx_is_recognised() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    q.insert_op(&peg_in(1, 2, allowed_principal(), 100))
        .unwrap();
    q.set(
        &txid(1),
        OpState::StacksTxSigned {
            tx: fake_stacks_tx(txid(1), 0, 1_000),
        },
    );
    {
        let mut g = w.lock().unwrap();
        g.processed.insert(txid(1));
        g.account_nonce = 1;
        g.stacks_broadcast_script
            .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
                reason: "BadNonce".into(),
                reason_data: Some(serde_json::json!({"expected": 1, "actual": 0})),
            })));
    }
    run_ticks(&mut coordinator(&w, &q, settings()), 1);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert!(w.lock().unwrap().signed.is_empty());
}

#[test]
fn fee_too_low_resigns_with_the_same_nonce_and_the_expected_fee() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    w.lock()
        .unwrap()
        .stacks_broadcast_script
        .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
            reason: "FeeTooLow".into(),
            reason_data: Some(serde_json::json!({"expected": 2500, "actual": 1000})),
        })));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(
        w.lock().unwrap().signed,
        vec![(txid(1), 0, 1_000), (txid(1), 0, 2_500)]
    );
}

#[test]
fn a_consumed_nonce_is_replaced_by_a_fresh_one() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    {
        // Our nonce 0 was signed; then someone else used nonces 0..4.
        let mut g = w.lock().unwrap();
        g.auto_mine = false;
        g.stacks_broadcast_script
            .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
                reason: "BadNonce".into(),
                reason_data: Some(serde_json::json!({"expected": 4, "actual": 0})),
            })));
    }
    q.insert_op(&peg_in(1, 2, allowed_principal(), 100))
        .unwrap();
    q.set(
        &txid(1),
        OpState::StacksTxSigned {
            tx: fake_stacks_tx(txid(1), 0, 1_000),
        },
    );
    {
        let mut g = w.lock().unwrap();
        g.account_nonce = 4;
        g.auto_mine = true;
    }
    run_ticks(&mut l, 2);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    let signed: Vec<u64> = w.lock().unwrap().signed.iter().map(|s| s.1).collect();
    assert_eq!(signed, vec![4], "signed again with the next free nonce");
}

#[test]
fn a_permanent_rejection_fails_the_op_for_the_operator() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    w.lock()
        .unwrap()
        .stacks_broadcast_script
        .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
            reason: "BadFunctionArgument".into(),
            reason_data: Some(serde_json::json!({"message": "IncorrectArgumentCount(3, 1)"})),
        })));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    assert!(
        matches!(q.state(&txid(1)), OpState::Failed { reason } if reason.contains("BadFunctionArgument") && reason.contains("IncorrectArgumentCount"))
    );
    assert_eq!(w.lock().unwrap().signed.len(), 1);
}

/// Reasons the client calls transient (here `NoSuchContract`: the real node
/// says so while the contract's deploy is still in its mempool, and
/// `TooMuchChaining`) are retried with the same bytes, never failed.
#[test]
fn a_transient_rejection_is_retried_with_the_same_bytes() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    for reason in ["NoSuchContract", "TooMuchChaining"] {
        w.lock().unwrap().stacks_broadcast_script.push_back(Err(
            stacks_node_client::Error::Rejected(Rejection {
                reason: reason.into(),
                reason_data: None,
            }),
        ));
    }
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 4);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    let g = w.lock().unwrap();
    assert_eq!(g.signed.len(), 1, "signed once");
    assert_eq!(g.stacks_broadcasts.len(), 3);
    assert!(g
        .stacks_broadcasts
        .iter()
        .all(|b| *b == g.stacks_broadcasts[0]));
}

#[test]
fn nonces_follow_the_ops_in_order() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_in(1, 2, allowed_principal(), 1),
                peg_in(2, 2, allowed_principal(), 2),
            ],
        )],
    );
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    // One op per transaction (batches: `batches_take_one_nonce_each_in_order`).
    let mut s = settings();
    s.stacks_batch = 1;
    run_ticks(&mut coordinator(&w, &q, s), 1);
    // Neither is mined yet: the second must take the next nonce, not reuse 0.
    let nonces: Vec<u64> = w.lock().unwrap().signed.iter().map(|s| s.1).collect();
    assert_eq!(nonces, vec![0, 1]);
}

// ---------------------------------------------------------------- scanning, backoff, stop, storage

#[test]
fn scanning_never_skips_a_height_on_errors() {
    let w = world(4, vec![(3, vec![peg_in(1, 3, allowed_principal(), 100)])]);
    w.lock().unwrap().flaky_heights.insert(3);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(2)));
    assert!(q.get(&txid(1)).unwrap().is_none());
    run_ticks(&mut l, 2);
    assert_eq!(q.last_scanned_height().unwrap(), Some(BurnHeight(4)));
    assert_eq!(q.state(&txid(1)), OpState::Done);
}

#[test]
fn a_failed_op_backs_off_and_others_go_on() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_out(1, 2, ALLOWED_BTC, 40_000),
                peg_in(2, 2, allowed_principal(), 100),
            ],
        )],
    );
    w.lock()
        .unwrap()
        .frost_failures
        .push_back(frost_coordinator::Error::Relay("down".into()));
    let q = MemQueue::default();
    let mut s = settings();
    s.backoff_base = Duration::from_secs(3600);
    s.backoff_max = Duration::from_secs(3600);
    let mut l = coordinator(&w, &q, s);
    run_ticks(&mut l, 3);
    assert_eq!(
        q.state(&txid(1)),
        OpState::BurnConfirmed,
        "waiting out its backoff"
    );
    assert_eq!(q.get_op(&txid(1)).attempts, 1);
    assert_eq!(
        w.lock().unwrap().sign_calls,
        1,
        "not retried during the backoff"
    );
    assert_eq!(q.state(&txid(2)), OpState::Done);
}

#[test]
fn a_failing_queue_ends_the_loop_with_an_error() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    q.0.lock().unwrap().fail_next_set_state = true;
    let err = coordinator(&w, &q, settings()).run(&no_stop()).unwrap_err();
    assert!(
        matches!(err, Error::Queue(peg_queue::Error::Storage(_))),
        "{err:?}"
    );
    assert_eq!(q.state(&txid(1)), OpState::Detected);
}

#[test]
fn queue_errors_from_the_double_are_fatal_too() {
    let w = world(3, vec![]);
    let mut queue = MockPegQueue::new();
    queue
        .expect_last_scanned_height()
        .returning(|| Err(peg_queue::Error::Corrupt("bad row".into())));
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks: stacks_node(&w),
            bitcoin: bitcoin_node(&w),
            stacks_wallet: stacks_wallet(&w),
            bitcoin_wallet: bitcoin_wallet(&w),
            frost: frost(&w),
            source: source(&w),
        },
        settings(),
    );
    assert!(matches!(
        l.tick(&no_stop()),
        Err(Error::Queue(peg_queue::Error::Corrupt(_)))
    ));
}

#[test]
fn a_stop_finishes_the_current_step_and_returns() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    let q = MemQueue::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut l = coordinator(&w, &q, settings());
    // Replace the wallet double with one that requests a stop while signing.
    let stop2 = stop.clone();
    let mut sw = MockStacksWallet::new();
    sw.expect_address().returning(wallet_address);
    sw.expect_build_mint().returning(move |op, nonce, _| {
        stop2.store(true, Ordering::SeqCst);
        Ok(fake_stacks_tx(op.txid, nonce, 1_000))
    });
    l.c.stacks_wallet = sw;
    l.run(&stop).unwrap();
    // The signing step finished and was stored; nothing after it ran.
    assert!(matches!(q.state(&txid(1)), OpState::StacksTxSigned { .. }));
    assert!(w.lock().unwrap().stacks_broadcasts.is_empty());
}

#[test]
fn process_one_drives_a_single_op_and_names_unknown_ones() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_in(1, 2, allowed_principal(), 100),
                peg_in(2, 2, allowed_principal(), 100),
            ],
        )],
    );
    let q = MemQueue::default();
    q.insert_op(&peg_in(1, 2, allowed_principal(), 100))
        .unwrap();
    q.insert_op(&peg_in(2, 2, allowed_principal(), 100))
        .unwrap();
    let mut l = coordinator(&w, &q, settings());
    assert_eq!(l.process_one(&txid(1), &no_stop()).unwrap(), OpState::Done);
    assert_eq!(q.state(&txid(2)), OpState::Detected, "others untouched");
    assert!(matches!(
        l.process_one(&txid(9), &no_stop()),
        Err(Error::UnknownOp(_))
    ));
}

#[test]
fn a_node_that_keeps_refusing_cannot_spin_the_loop() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    {
        let mut g = w.lock().unwrap();
        for _ in 0..100 {
            g.stacks_broadcast_script
                .push_back(Err(stacks_node_client::Error::Rejected(Rejection {
                    reason: "BadNonce".into(),
                    reason_data: Some(serde_json::json!({"expected": 4, "actual": 0})),
                })));
        }
    }
    let q = MemQueue::default();
    let report = coordinator(&w, &q, settings()).tick(&no_stop()).unwrap();
    assert!(report.steps <= MAX_STEPS_PER_DRIVE + 1, "{report:?}");
}

#[test]
fn a_fulfilment_never_spends_another_pending_requests_fee_output() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_out(1, 2, ALLOWED_BTC, 40_000),
                peg_out(2, 2, ALLOWED_BTC, 50_000),
            ],
        )],
    );
    // The second request's burn stays in the mempool, so it is still pending
    // while the first is fulfilled.
    w.lock().unwrap().fail_on_chain.insert(txid(99));
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    let g = w.lock().unwrap();
    assert!(!g.reserved_seen.is_empty());
    let first = &g.reserved_seen[0];
    assert!(first.contains(&OutPoint::new(txid(2), 2)), "{first:?}");
    assert!(!first.contains(&OutPoint::new(txid(1), 2)), "{first:?}");
}

// ---------------------------------------------------------------- reorgs

#[test]
fn a_reorged_unprocessed_peg_in_is_dropped_then_minted_once_when_it_reappears() {
    // The op was seen in block 2, which a reorg replaced with an empty one.
    let w = world(3, vec![]);
    let q = MemQueue::default();
    q.record_scanned_block(BurnHeight(3), &[peg_in(1, 2, allowed_principal(), 100)])
        .unwrap();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    assert!(q.get(&txid(1)).unwrap().is_none(), "dropped, not minted");
    assert!(w.lock().unwrap().signed.is_empty());
    // The same transaction reappears in the new branch's block 4.
    {
        let mut g = w.lock().unwrap();
        g.tip = 4;
        g.blocks
            .insert(4, vec![peg_in(1, 4, allowed_principal(), 100)]);
    }
    run_ticks(&mut l, 2);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(w.lock().unwrap().signed.len(), 1, "minted exactly once");
}

#[test]
fn an_accepted_peg_in_whose_block_left_the_chain_is_dropped_before_signing() {
    // Validated while its block was best (the Stacks side was down, say);
    // a reorg replaced the block before the mint was signed.
    let w = world(3, vec![]);
    let q = MemQueue::default();
    q.record_scanned_block(BurnHeight(3), &[peg_in(1, 2, allowed_principal(), 100)])
        .unwrap();
    q.set_state(&txid(1), &OpState::Accepted).unwrap();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    assert!(w.lock().unwrap().signed.is_empty(), "no mint signed");
    assert!(q.get(&txid(1)).unwrap().is_none(), "dropped");
}

#[test]
fn a_reorg_after_acting_stops_the_op_for_the_operator() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 1);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    // The request's block is replaced; the burn then confirms: no payout.
    {
        let mut g = w.lock().unwrap();
        g.blocks.insert(2, vec![]);
        g.auto_mine = true;
    }
    run_ticks(&mut l, 2);
    match q.state(&txid(1)) {
        OpState::Failed { reason } => assert!(reason.contains("best chain"), "{reason}"),
        other => panic!("expected failed, got {other}"),
    }
    assert!(w.lock().unwrap().btc_broadcasts.is_empty());
}

#[test]
fn a_node_reporting_an_absurd_tip_cannot_overflow_the_loop() {
    let w = world(u64::MAX, vec![]);
    let q = MemQueue::default();
    q.record_scanned_block(BurnHeight(u64::MAX - 1), &[])
        .unwrap();
    let mut l = coordinator(&w, &q, settings());
    l.tick(&no_stop()).unwrap();
}

#[test]
fn two_fulfilments_built_in_one_round_never_pick_the_same_peg_wallet_output() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_out(1, 2, ALLOWED_BTC, 40_000),
                peg_out(2, 2, ALLOWED_BTC, 50_000),
            ],
        )],
    );
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 1);
    let g = w.lock().unwrap();
    assert_eq!(g.reserved_seen.len(), 2, "both built in the same tick");
    // The first fulfilment spent the peg wallet's output: the second must not.
    assert!(!g.reserved_seen[0].contains(&peg_utxo().outpoint));
    assert!(
        g.reserved_seen[1].contains(&peg_utxo().outpoint),
        "{:?}",
        g.reserved_seen[1]
    );
}

// ---------------------------------------------------------------- the real stacks-node's limits

/// The real node admits nonces up to confirmed + 26; the loop keeps at most
/// 25 of its own pending, waits (counted, shown as metrics) and signs the
/// rest as earlier ones confirm.
#[test]
fn never_more_than_25_stacks_transactions_are_pending() {
    let ops: Vec<PegOp> = (1..=30)
        .map(|n| peg_in(n, 2, allowed_principal(), u64::from(n)))
        .collect();
    let w = world(3, vec![(2, ops)]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    // One op per transaction: the limit counts transactions (with batches,
    // `batches_lift_the_25_pending_cap_on_ops`).
    let mut s = settings();
    s.stacks_batch = 1;
    let mut l = coordinator(&w, &q, s);
    run_ticks(&mut l, 3);
    let nonces = |w: &W| -> Vec<u64> { w.lock().unwrap().signed.iter().map(|s| s.1).collect() };
    assert_eq!(
        nonces(&w),
        (0..25).collect::<Vec<_>>(),
        "25 signed, then waiting"
    );
    let m = l.metrics();
    assert_eq!(m.stacks_pending_transactions.load(Ordering::Relaxed), 25);
    let waits = m.stacks_pending_limit_waits.load(Ordering::Relaxed);
    assert!(waits >= 5, "{waits} waits");
    let text = metrics::render_metrics(&m, &metrics::StatusSnapshot::default());
    assert!(
        text.contains("\nsbtc_stacks_pending_transactions 25\n"),
        "{text}"
    );
    assert!(
        text.contains("sbtc_stacks_pending_limit_waits_total"),
        "{text}"
    );
    // Ten confirm: ten more may be signed (nonces 25..=29 are all that is left).
    w.lock().unwrap().account_nonce = 10;
    run_ticks(&mut l, 2);
    assert_eq!(nonces(&w), (0..30).collect::<Vec<_>>());
    assert_eq!(m.stacks_pending_transactions.load(Ordering::Relaxed), 19);
}

/// A transaction that stays the next nonce to mine past the configured time
/// is replaced on purpose: same nonce, higher fee (the node's RBF needs a
/// strictly higher fee), until one is mined.
#[test]
fn a_stuck_stacks_transaction_is_replaced_by_fee_with_the_same_nonce() {
    let w = world(3, vec![(2, vec![peg_in(1, 2, allowed_principal(), 100)])]);
    w.lock().unwrap().auto_mine = false;
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    // Not stuck yet with the default allowance: signed once, waiting.
    run_ticks(&mut l, 2);
    assert_eq!(w.lock().unwrap().signed, vec![(txid(1), 0, 1_000)]);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    l.set_stacks_replace_after(Duration::ZERO);
    run_ticks(&mut l, 1);
    {
        let g = w.lock().unwrap();
        assert!(g.signed.len() >= 2, "{:?}", g.signed);
        assert!(g
            .signed
            .iter()
            .all(|(op, nonce, _)| *op == txid(1) && *nonce == 0));
        let fees: Vec<u64> = g.signed.iter().map(|s| s.2).collect();
        assert!(fees.windows(2).all(|f| f[1] > f[0]), "{fees:?}");
        assert_eq!(fees[1], 1_250, "a quarter more");
    }
    assert!(l.metrics().stacks_replacements.load(Ordering::Relaxed) >= 1);
    // The replacement is mined: done, once.
    w.lock().unwrap().auto_mine = true;
    run_ticks(&mut l, 3);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(w.lock().unwrap().mined.get(&txid(1)), Some(&1));
}

// ---------------------------------------------------------------- issue #13: checks before burning

fn rejected_by(q: &MemQueue, t: Txid, rule: &str) {
    match q.state(&t) {
        OpState::Rejected { reason } => {
            assert!(reason.starts_with(&format!("{rule}:")), "{t}: {reason}")
        }
        other => panic!("{t}: expected rejected by {rule}, got {other}"),
    }
}

fn burns_of(w: &W, t: Txid) -> usize {
    w.lock().unwrap().signed.iter().filter(|s| s.0 == t).count()
}

/// A copy of a victim's request (same OP_RETURN signature, amount and
/// recipient, new funding) is rejected before any burn, in a later block or
/// the same one; the victim's own request is burned and paid once.
#[test]
fn a_replayed_request_is_rejected_before_any_burn_and_the_victim_is_paid_once() {
    let victim = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let same_block_copy = peg_out(2, 2, ALLOWED_BTC, 40_000);
    let later_copy = peg_out(3, 3, ALLOWED_BTC, 40_000);
    let w = world(
        4,
        vec![
            (2, vec![victim.clone(), same_block_copy]),
            (3, vec![later_copy]),
        ],
    );
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    rejected_by(&q, txid(2), "request.replay");
    rejected_by(&q, txid(3), "request.replay");
    assert_eq!(
        burns_of(&w, txid(2)) + burns_of(&w, txid(3)),
        0,
        "no second burn"
    );
    assert_eq!(burns_of(&w, txid(1)), 1);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::BitcoinTxBroadcast { .. }
    ));
    assert_paid(&w, &victim);
}

/// A copy rejected for another rule does not use the signature up: the
/// genuine request with that signature is still burned and paid.
#[test]
fn a_rejected_copy_does_not_use_the_signature_up() {
    let mut cheap_copy = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let PegOp::PegOutRequest(p) = &mut cheap_copy else {
        unreachable!()
    };
    p.fulfillment_fee = Amount::from_sat(330);
    let genuine = peg_out(2, 3, ALLOWED_BTC, 40_000);
    let w = world(4, vec![(2, vec![cheap_copy]), (3, vec![genuine.clone()])]);
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 3);
    rejected_by(&q, txid(1), "request.fee");
    assert_eq!(burns_of(&w, txid(1)), 0);
    assert_eq!(burns_of(&w, txid(2)), 1);
    assert_paid(&w, &genuine);
}

/// Each of these could never be paid: nothing is burned for them.
#[test]
fn dust_a_too_small_fee_output_or_a_spent_output_2_is_rejected_before_any_burn() {
    let dust = peg_out(1, 2, ALLOWED_BTC, 100);
    let mut no_fee = peg_out(2, 2, ALLOWED_BTC, 40_000);
    let PegOp::PegOutRequest(p) = &mut no_fee else {
        unreachable!()
    };
    p.fulfillment_fee = Amount::ZERO;
    let spent = peg_out(3, 2, ALLOWED_BTC, 41_000);
    let w = world(3, vec![(2, vec![dust, no_fee, spent])]);
    w.lock().unwrap().spent.insert(OutPoint::new(txid(3), 2));
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    rejected_by(&q, txid(1), "request.dust");
    rejected_by(&q, txid(2), "request.fee");
    rejected_by(&q, txid(3), "request.spent");
    assert!(w.lock().unwrap().signed.is_empty(), "nothing burned");
}

/// The fee rate rises between acceptance and the burn: the request is
/// checked again right before the burn is signed, and never burned.
#[test]
fn a_request_that_became_unpayable_before_its_burn_is_not_burned() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    let q = MemQueue::default();
    q.insert_op(&peg_out(1, 2, ALLOWED_BTC, 40_000)).unwrap();
    q.set(&txid(1), OpState::Accepted);
    w.lock().unwrap().fee_rate = 400;
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    rejected_by(&q, txid(1), "request.fee");
    assert!(w.lock().unwrap().signed.is_empty());
}

/// The signers keep refusing: each refusal is shown with the signer and its
/// rule, counted, and after the limit the op fails with the reason.
#[test]
fn refusals_are_a_wait_shown_with_every_signers_rule_never_a_failure() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    for _ in 0..20 {
        w.lock()
            .unwrap()
            .frost_failures
            .push_back(frost_coordinator::Error::Refused {
                refusals: vec![
                    (1, "fulfilment.input: input 1 is no peg coin".into()),
                    (2, "backing: held below supply".into()),
                ],
            });
    }
    let q = MemQueue::default();
    let mut checks_settings = settings();
    checks_settings.backoff_base = Duration::ZERO;
    let mut l = coordinator(&w, &q, checks_settings);
    l = l.with_checks(PegChecks {
        max_attempts: 3,
        ..PegChecks::defaults_for(&settings())
    });
    run_ticks(&mut l, 6);
    let op = q.get_op(&txid(1));
    // Signers refuse what their own nodes do not show (yet): the payout
    // waits, however often, and the operator sees who refused and why.
    assert_eq!(op.state, OpState::BurnConfirmed, "a refused payout waits");
    assert!(
        op.attempts > 3,
        "refused {} times, more than the limit of 3, and still waiting",
        op.attempts
    );
    let shown = op.last_error.unwrap();
    assert!(
        shown.contains("signer 1: fulfilment.input") && shown.contains("signer 2: backing"),
        "{shown}"
    );
    assert!(w.lock().unwrap().btc_broadcasts.is_empty());
}

/// A transient failure (the relay down) is waited out however long it
/// lasts: it never counts toward the attempt limit.
#[test]
fn only_permanent_failures_count_toward_the_limit() {
    let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
    for _ in 0..15 {
        w.lock()
            .unwrap()
            .frost_failures
            .push_back(frost_coordinator::Error::Relay("down".into()));
    }
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings()).with_checks(PegChecks {
        max_attempts: 2,
        ..PegChecks::defaults_for(&settings())
    });
    run_ticks(&mut l, 8);
    let op = q.get_op(&txid(1));
    assert_eq!(op.state, OpState::BurnConfirmed);
    assert!(op.attempts >= 8, "{}", op.attempts);
}

/// The rate rose after the burn: the fulfilment waits, shown in status, and
/// no attempt is counted; it is paid once the rate allows.
#[test]
fn a_fee_shortfall_after_the_burn_is_a_wait_not_an_attempt() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    w.lock().unwrap().fee_shortfall = true;
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings()).with_checks(PegChecks {
        max_attempts: 1,
        ..PegChecks::defaults_for(&settings())
    });
    run_ticks(&mut l, 4);
    let got = q.get_op(&txid(1));
    assert_eq!(got.state, OpState::BurnConfirmed);
    assert_eq!(got.attempts, 0);
    assert!(
        got.waiting
            .as_deref()
            .unwrap_or("")
            .contains("fee shortfall"),
        "{got:?}"
    );
    w.lock().unwrap().fee_shortfall = false;
    run_ticks(&mut l, 1);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::BitcoinTxBroadcast { .. }
    ));
    assert_eq!(q.get_op(&txid(1)).waiting, None, "cleared on progress");
    assert_paid(&w, &op);
}

/// A burn visible at the tip but not yet `confirmations.stacks` deep
/// releases nothing; once final, the request is paid.
#[test]
fn a_burn_not_yet_final_leads_to_no_fulfilment() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    w.lock().unwrap().not_final.insert(txid(1));
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 4);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    {
        let g = w.lock().unwrap();
        assert_eq!(g.fulfillments_built, 0);
        assert_eq!(g.sign_calls, 0);
        assert_eq!(g.signed.len(), 1, "the burn is not signed again");
    }
    w.lock().unwrap().not_final.clear();
    run_ticks(&mut l, 1);
    assert_paid(&w, &op);
}

/// A mint at the tip only is not done; a Stacks chain shorter than the
/// final depth is not either.
#[test]
fn a_mint_not_yet_final_is_not_done() {
    let w = world(
        3,
        vec![(2, vec![peg_in(1, 2, allowed_principal(), 100_000)])],
    );
    {
        let mut g = w.lock().unwrap();
        g.not_final.insert(txid(1));
        g.stacks_too_short = true;
    }
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 3);
    assert!(matches!(
        q.state(&txid(1)),
        OpState::StacksTxBroadcast { .. }
    ));
    w.lock().unwrap().not_final.clear();
    run_ticks(&mut l, 2);
    assert!(
        matches!(q.state(&txid(1)), OpState::StacksTxBroadcast { .. }),
        "the chain is not deep enough yet"
    );
    w.lock().unwrap().stacks_too_short = false;
    run_ticks(&mut l, 1);
    assert_eq!(q.state(&txid(1)), OpState::Done);
    assert_eq!(w.lock().unwrap().signed.len(), 1, "minted once");
}

/// A fork drops the burn before it is final: no payout; the same burn
/// bytes are offered again, and once mined and final the request is paid,
/// once.
#[test]
fn a_burn_dropped_by_a_fork_is_never_paid_until_it_is_final_again() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    w.lock().unwrap().not_final.insert(txid(1));
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    // The fork: the block with the burn is gone, our nonce with it.
    {
        let mut g = w.lock().unwrap();
        g.processed.remove(&txid(1));
        g.account_nonce = 0;
        g.auto_mine = false;
        g.not_final.clear();
    }
    run_ticks(&mut l, 3);
    {
        let g = w.lock().unwrap();
        assert_eq!(g.fulfillments_built, 0, "no payout for a dropped burn");
        assert!(g.btc_broadcasts.is_empty());
        assert_eq!(
            g.signed.len(),
            1,
            "the stored burn is offered again, not re-signed"
        );
        assert!(g
            .stacks_broadcasts
            .iter()
            .all(|b| *b == g.stacks_broadcasts[0]));
        assert!(g.stacks_broadcasts.len() > 1);
    }
    w.lock().unwrap().auto_mine = true;
    run_ticks(&mut l, 2);
    assert_paid(&w, &op);
    assert_eq!(
        w.lock().unwrap().mined.get(&txid(1)),
        Some(&2),
        "mined again after the fork"
    );
}

/// Right before broadcast the burn is checked again: a signed fulfilment
/// whose burn is no longer final stays unbroadcast, the wait shown.
#[test]
fn a_signed_fulfilment_is_not_broadcast_when_its_burn_is_no_longer_final() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op.clone()])]);
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    l.set_crash_point(Some(CrashPoint::AfterStoring("bitcoin_tx_signed")));
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_ticks(&mut l, 1)));
    assert!(crashed.is_err());
    assert!(matches!(q.state(&txid(1)), OpState::BitcoinTxSigned { .. }));
    {
        let mut g = w.lock().unwrap();
        g.processed.remove(&txid(1));
    }
    let mut l = coordinator(&w, &q, settings());
    run_ticks(&mut l, 2);
    let got = q.get_op(&txid(1));
    assert!(matches!(got.state, OpState::BitcoinTxSigned { .. }));
    assert!(
        got.waiting
            .as_deref()
            .unwrap_or("")
            .contains("no longer on the Stacks chain"),
        "{got:?}"
    );
    assert!(w.lock().unwrap().btc_broadcasts.is_empty());
    w.lock().unwrap().processed.insert(txid(1));
    run_ticks(&mut l, 1);
    assert_paid(&w, &op);
}

/// The contract recorded a burn of another amount or from another principal
/// for this txid: the op fails, nothing is paid.
#[test]
fn a_burn_recorded_for_another_amount_or_principal_is_never_paid() {
    for record in [
        (39_999, allowed_principal()),
        (40_000, stranger_principal()),
    ] {
        let w = world(3, vec![(2, vec![peg_out(1, 2, ALLOWED_BTC, 40_000)])]);
        w.lock().unwrap().record_override.insert(txid(1), record);
        let q = MemQueue::default();
        run_ticks(&mut coordinator(&w, &q, settings()), 3);
        match q.state(&txid(1)) {
            OpState::Failed { reason } => assert!(reason.contains("get-burn"), "{reason}"),
            other => panic!("expected failed, got {other}"),
        }
        assert_eq!(w.lock().unwrap().fulfillments_built, 0);
    }
}

/// The signers are asked with a payload they can check on their own nodes:
/// the request, the unsigned transaction and its prevouts.
#[test]
fn sign_requests_carry_the_fulfilment_payload() {
    let op = peg_out(1, 2, ALLOWED_BTC, 40_000);
    let w = world(3, vec![(2, vec![op])]);
    let q = MemQueue::default();
    run_ticks(&mut coordinator(&w, &q, settings()), 2);
    let g = w.lock().unwrap();
    let payload = peg_rules::SignPayload::decode(&g.sign_payloads[0]).unwrap();
    let peg_rules::SignPayload::Fulfilment {
        request,
        tx,
        prevouts,
    } = payload
    else {
        panic!("not a fulfilment payload: {payload:?}")
    };
    assert_eq!(request, txid(1));
    assert_eq!(tx.compute_txid(), g.btc_broadcasts[0].compute_txid());
    assert_eq!(prevouts.len(), tx.input.len());
    assert_eq!(prevouts[0].value, Amount::from_sat(5_000));
}

/// The daily outflow limit counts what was accepted in the last 24 hours,
/// including earlier requests of the same round.
#[test]
fn the_daily_outflow_limit_is_checked_before_burning() {
    let w = world(
        3,
        vec![(
            2,
            vec![
                peg_out(1, 2, ALLOWED_BTC, 40_000),
                peg_out(2, 2, ALLOWED_BTC, 50_000),
            ],
        )],
    );
    let q = MemQueue::default();
    let mut checks = PegChecks::defaults_for(&settings());
    checks.policy.max_daily_outflow = Some(Amount::from_sat(60_000));
    run_ticks(&mut coordinator(&w, &q, settings()).with_checks(checks), 2);
    rejected_by(&q, txid(2), "request.daily-limit");
    assert_eq!(burns_of(&w, txid(1)), 1);
    assert_eq!(burns_of(&w, txid(2)), 0);
}
