//! The peg on the devnet over real HTTP on 127.0.0.1: the full flow with
//! either op source, then misfortune — a Bitcoin reorg under a peg-in,
//! signers going away and coming back, nodes answering garbage. Every
//! scenario ends with each valid op done exactly once.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Txid};
use coordinator::config::OpSourceKind;
use coordinator::HttpCoordinator;
use devnet::peg::{Blocks, MAGIC};
use devnet::{Fault, Peg, PegOptions, User};
use peg_queue::{OpState, PegQueue};

const BTC: u64 = 100_000_000;

fn state(l: &HttpCoordinator, t: &Txid) -> Option<OpState> {
    l.components().queue.get(t).unwrap().map(|o| o.state)
}

/// Ticks, mining a block on both chains (or, without `mine`, Stacks only)
/// after each, until `done`, for at most `secs`.
fn tick_until(
    l: &mut HttpCoordinator,
    peg: &Peg,
    secs: u64,
    mine: bool,
    done: impl FnMut(&HttpCoordinator) -> bool,
) -> bool {
    let blocks = if mine {
        Blocks::Both
    } else {
        Blocks::StacksOnly
    };
    peg.run_until(
        l,
        Duration::from_secs(secs),
        blocks,
        &AtomicBool::new(false),
        done,
    )
    .unwrap()
}

#[test]
fn a_reorg_removes_an_unminted_peg_in_which_is_minted_once_when_it_reappears() {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(1);
    let u = &mut users[0];
    let mut l = peg
        .coordinator(peg.settings(&[u]), OpSourceKind::Bitcoin)
        .unwrap();

    // The stacks-node is down: the peg-in is seen, but cannot be minted yet.
    peg.stacks.set_fault(Some(Fault::ServerError));
    let t = peg
        .with_bitcoin(|b| u.peg_in(b, MAGIC, &wallet, &u.stx.clone(), Amount::from_sat(BTC)))
        .unwrap();
    peg.mine();
    assert!(tick_until(&mut l, &peg, 10, false, |l| state(l, &t).is_some()));
    for _ in 0..5 {
        l.tick(&AtomicBool::new(false)).unwrap();
    }
    let seen = state(&l, &t).unwrap();
    assert!(
        !seen.has_acted(),
        "nothing signed while the node is down: {seen}"
    );

    // A competing branch without the peg-in wins; the node comes back.
    peg.reorg(1);
    let where_now = peg.bitcoind.with(|b| b.locate(&t).map(|(_, h)| h));
    assert_eq!(where_now, Some(None), "back in the mempool");
    peg.stacks.set_fault(None);
    let gone = tick_until(&mut l, &peg, 10, false, |l| state(l, &t).is_none());
    assert!(
        gone,
        "the reorged peg-in left the queue: {:?}",
        state(&l, &t)
    );
    for _ in 0..10 {
        l.tick(&AtomicBool::new(false)).unwrap();
        peg.stacks.with(|s| s.mine());
    }
    assert_eq!(
        peg.contract_calls("mint!", &t),
        (0, 0),
        "not minted off the best chain"
    );
    assert_eq!(peg.sbtc_balance(&u.stx), 0);

    // The transaction is mined again in the new branch: minted once.
    let done = tick_until(&mut l, &peg, 20, true, |l| {
        state(l, &t) == Some(OpState::Done)
    });
    assert!(done, "{:?}", state(&l, &t));
    assert_eq!(peg.contract_calls("mint!", &t), (1, 0));
    assert_eq!(peg.sbtc_balance(&u.stx), u128::from(BTC));
}

/// Pegs in `sats` for each user, mines, and runs the loop until all are minted.
fn peg_in_all(l: &mut HttpCoordinator, peg: &Peg, users: &mut [User], sats: u64) -> Vec<Txid> {
    let wallet = peg.peg_wallet().unwrap();
    let ts: Vec<Txid> = peg.with_bitcoin(|b| {
        users
            .iter_mut()
            .map(|u| {
                let to = u.stx.clone();
                u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(sats))
                    .unwrap()
            })
            .collect()
    });
    peg.mine();
    let done = tick_until(l, peg, 30, true, |l| {
        ts.iter().all(|t| state(l, t) == Some(OpState::Done))
    });
    assert!(done, "peg-ins not minted");
    ts
}

/// Requests a peg-out of `sats` for user `u`.
fn request_peg_out(peg: &Peg, u: &mut User, sats: u64) -> Txid {
    let wallet = peg.peg_wallet().unwrap();
    let t = peg
        .with_bitcoin(|b| {
            u.peg_out(
                b,
                MAGIC,
                &wallet,
                Amount::from_sat(sats),
                Amount::from_sat(20_000),
            )
        })
        .unwrap();
    peg.mine();
    t
}

#[test]
fn payouts_go_on_without_one_signer_stop_without_a_quorum_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.sign_timeout = Duration::from_secs(1);
    let mut peg = Peg::start(opts).unwrap();
    peg.publish_key().unwrap();
    let mut users = peg.users(2);
    let allowed: Vec<&User> = users.iter().collect();
    let mut l = peg
        .coordinator(peg.settings(&allowed), OpSourceKind::Bitcoin)
        .unwrap();
    peg_in_all(&mut l, &peg, &mut users, BTC);

    // Five signers, threshold three: one gone changes nothing.
    peg.stop_signer(5);
    let first = request_peg_out(&peg, &mut users[0], 10_000_000);
    let paid = tick_until(&mut l, &peg, 30, true, |l| {
        state(l, &first) == Some(OpState::Done)
    });
    assert!(paid, "{:?}", state(&l, &first));
    assert_eq!(
        peg.payouts(&first, &users[0].btc.script_pubkey()),
        vec![Amount::from_sat(10_000_000)]
    );

    // Two more gone: no quorum. The burn happens; the payout waits, and the
    // queue says which signers did not answer.
    peg.stop_signer(4);
    peg.stop_signer(3);
    let second = request_peg_out(&peg, &mut users[1], 20_000_000);
    let stuck = tick_until(&mut l, &peg, 30, true, |l| {
        l.components()
            .queue
            .get(&second)
            .unwrap()
            .and_then(|o| o.last_error)
            .is_some_and(|e| e.contains("signing"))
    });
    let op = l.components().queue.get(&second).unwrap().unwrap();
    assert!(stuck, "{op:?}");
    assert_eq!(op.state, OpState::BurnConfirmed, "burned, not paid");
    let error = op.last_error.unwrap_or_default();
    assert!(
        error.contains("no answer from signers [3, 4, 5]"),
        "the error names the missing signers: {error}"
    );
    assert!(peg
        .payouts(&second, &users[1].btc.script_pubkey())
        .is_empty());

    // They come back: paid, once.
    peg.start_signer(3).unwrap();
    peg.start_signer(4).unwrap();
    let paid = tick_until(&mut l, &peg, 30, true, |l| {
        state(l, &second) == Some(OpState::Done)
    });
    assert!(paid, "{:?}", state(&l, &second));
    assert_eq!(
        peg.payouts(&second, &users[1].btc.script_pubkey()),
        vec![Amount::from_sat(20_000_000)]
    );
    assert_eq!(peg.contract_calls("burn!", &second), (1, 0));
    assert!(peg.failed_contract_calls().is_empty());
}

#[test]
fn garbage_errors_hangs_and_truncated_answers_delay_but_do_not_derail_the_peg() {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let mut users = peg.users(3);
    let allowed: Vec<&User> = users.iter().collect();
    let mut l = peg
        .coordinator(peg.settings(&allowed), OpSourceKind::Bitcoin)
        .unwrap();
    let ins = peg_in_all(&mut l, &peg, &mut users[..1], BTC);

    // New work is on chain; then each node misbehaves in each way in turn
    // while the loop keeps ticking.
    let wallet = peg.peg_wallet().unwrap();
    let more: Vec<Txid> = peg.with_bitcoin(|b| {
        users[1..]
            .iter_mut()
            .map(|u| {
                let to = u.stx.clone();
                u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(BTC / 2))
                    .unwrap()
            })
            .collect()
    });
    let out = request_peg_out(&peg, &mut users[0], 30_000_000);
    let faults = [
        Fault::Garbage,
        Fault::ServerError,
        Fault::Truncated,
        Fault::Hang(Duration::from_secs(3)),
    ];
    let stop = AtomicBool::new(false);
    for node in ["bitcoind", "stacks-node", "both"] {
        for f in faults {
            if node != "stacks-node" {
                peg.bitcoind.set_fault(Some(f));
            }
            if node != "bitcoind" {
                peg.stacks.set_fault(Some(f));
            }
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                // A tick under faults returns (errors are retried later);
                // only the queue can fail it.
                l.tick(&stop).unwrap();
                peg.mine();
            }
            peg.bitcoind.set_fault(None);
            peg.stacks.set_fault(None);
        }
    }
    let all: Vec<Txid> = ins.iter().chain(&more).copied().chain([out]).collect();
    let done = tick_until(&mut l, &peg, 60, true, |l| {
        all.iter().all(|t| state(l, t) == Some(OpState::Done))
    });
    let states: Vec<_> = all.iter().map(|t| state(&l, t)).collect();
    assert!(done, "{states:?}");
    for t in &all[..3] {
        assert_eq!(peg.contract_calls("mint!", t), (1, 0));
    }
    assert_eq!(peg.contract_calls("burn!", &out), (1, 0));
    assert_eq!(
        peg.payouts(&out, &users[0].btc.script_pubkey()),
        vec![Amount::from_sat(30_000_000)]
    );
    assert_eq!(
        peg.sbtc_balance(&users[0].stx),
        u128::from(BTC) - 30_000_000
    );
    assert_eq!(peg.sbtc_balance(&users[1].stx), u128::from(BTC / 2));
    assert!(peg.failed_contract_calls().is_empty());
    assert!(
        l.metrics()
            .step_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the faults were felt"
    );
}

/// Four users peg in (one is not on the allowlist), two peg out: minted to
/// the right principals, burned, paid to the right scriptPubKeys with the
/// right amounts; supply = pegged in − pegged out, backed by the peg wallet.
fn full_flow(source: OpSourceKind) {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    let agg = peg.publish_key().unwrap();
    assert_eq!(
        peg.stacks.with(|s| s.model.wallet_key.clone()),
        Some(agg.serialize().to_vec()),
        "start-up published the DKG key"
    );
    let mut users = peg.users(4);
    let allowed: Vec<&User> = users.iter().take(3).collect();
    let mut l = peg.coordinator(peg.settings(&allowed), source).unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let amounts = [BTC, BTC / 2, BTC / 4, BTC / 10];
    let ins: Vec<Txid> = peg.with_bitcoin(|b| {
        users
            .iter_mut()
            .zip(amounts)
            .map(|(u, sats)| {
                let to = u.stx.clone();
                u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(sats))
                    .unwrap()
            })
            .collect()
    });
    peg.mine();
    let finished = tick_until(&mut l, &peg, 30, true, |l| {
        ins.iter()
            .all(|t| state(l, t).is_some_and(|s| s.is_terminal()))
    });
    assert!(finished);
    match state(&l, &ins[3]) {
        Some(OpState::Rejected { reason }) => assert!(reason.contains("allowlist"), "{reason}"),
        other => panic!("the stranger's peg-in: {other:?}"),
    }
    let outs = [(0, 40_000_000u64), (1, 20_000_000)];
    let out_ids: Vec<Txid> = outs
        .iter()
        .map(|(i, sats)| request_peg_out(&peg, &mut users[*i], *sats))
        .collect();
    let finished = tick_until(&mut l, &peg, 30, true, |l| {
        out_ids.iter().all(|t| state(l, t) == Some(OpState::Done))
    });
    assert!(
        finished,
        "{:?}",
        out_ids.iter().map(|t| state(&l, t)).collect::<Vec<_>>()
    );

    for (t, u) in ins.iter().zip(&users).take(3) {
        assert_eq!(peg.contract_calls("mint!", t), (1, 0), "{}", u.name);
    }
    assert_eq!(peg.contract_calls("mint!", &ins[3]), (0, 0));
    let expected = [BTC - 40_000_000, BTC / 2 - 20_000_000, BTC / 4, 0];
    for (u, want) in users.iter().zip(expected) {
        assert_eq!(peg.sbtc_balance(&u.stx), u128::from(want), "{}", u.name);
    }
    for (t, (i, sats)) in out_ids.iter().zip(outs) {
        assert_eq!(peg.contract_calls("burn!", t), (1, 0));
        assert_eq!(
            peg.payouts(t, &users[i].btc.script_pubkey()),
            vec![Amount::from_sat(sats)]
        );
    }
    let supply = peg.stacks.with(|s| s.model.supply);
    let pegged_in = BTC + BTC / 2 + BTC / 4;
    assert_eq!(supply, u128::from(pegged_in - 60_000_000));
    let held: Amount = peg.bitcoind.with(|b| {
        b.unspent(&wallet.script_pubkey())
            .iter()
            .map(|(_, o, _)| o.value)
            .sum()
    });
    assert!(u128::from(held.to_sat()) >= supply, "{held} backs {supply}");
    assert!(peg.failed_contract_calls().is_empty());
}

#[test]
fn full_flow_reading_bitcoin_blocks() {
    full_flow(OpSourceKind::Bitcoin);
}

#[test]
fn full_flow_reading_the_stacks_nodes_burn_ops() {
    full_flow(OpSourceKind::StacksNode);
}

#[test]
fn the_stacks_nodes_burn_ops_follow_the_bitcoin_chain_through_a_reorg() {
    use stacks_node_client::StacksNode;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.signers = 2;
    opts.threshold = 2;
    let peg = Peg::start(opts).unwrap();
    // A 2023-style node: only then does the emulator serve /v2/burn_ops.
    peg.stacks
        .with(|s| s.burn_ops_mode = devnet::stacks::BurnOpsMode::Node2023);
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(1);
    let u = &mut users[0];
    let node = peg.stacks_client();
    let to = u.stx.clone();
    let t = peg
        .with_bitcoin(|b| u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(BTC)))
        .unwrap();
    peg.mine();
    let h = peg.bitcoind.with(|b| b.height());
    let at = |h: u64| -> Vec<Txid> {
        node.get_peg_in_ops(peg_ops::BurnHeight(h))
            .unwrap()
            .unwrap_or_default()
            .iter()
            .map(|o| o.txid)
            .collect()
    };
    assert_eq!(at(h), vec![t]);
    let before = node.get_info().unwrap().burn_block_height;
    assert_eq!(before, h);

    // A longer branch without it: the node reports the new blocks' (none).
    peg.reorg(1);
    assert!(at(h).is_empty());
    assert_eq!(node.get_info().unwrap().burn_block_height, h + 1);
    // Mined again one block later: reported there, once.
    peg.mine();
    assert_eq!(at(h + 2), vec![t]);
    assert!(at(h).is_empty() && at(h + 1).is_empty());
}

/// The transaction on the best chain that spends `outpoint`, if any.
fn spender(peg: &Peg, outpoint: OutPoint) -> Option<bitcoin::Transaction> {
    peg.with_bitcoin(|b| {
        (1..=b.height()).rev().find_map(|h| {
            b.block(h)?
                .txdata
                .iter()
                .find(|t| t.input.iter().any(|i| i.previous_output == outpoint))
                .cloned()
        })
    })
}

#[test]
fn a_rotation_keeps_the_old_key_sweeps_its_coins_and_still_pays_a_pending_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.allow_rotation = true;
    let peg = Peg::start(opts).unwrap();
    let first = peg.publish_key().unwrap();
    let old_wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(2);
    let allowed: Vec<&User> = users.iter().collect();
    let settings = peg.settings(&allowed);
    let mut l = peg
        .coordinator(settings.clone(), OpSourceKind::Bitcoin)
        .unwrap();
    // Sweeps pay their fee from the peg's surplus, never its backing (the
    // signers' books): the operator keeps a float in the wallet.
    peg.with_bitcoin(|b| {
        users[1]
            .pay(b, &old_wallet.script_pubkey(), Amount::from_sat(100_000))
            .unwrap()
    });
    peg.mine();
    peg_in_all(&mut l, &peg, &mut users, BTC);

    // A peg-out request to the old address is on chain, unprocessed, when
    // the operator stops `run` and rotates.
    let pending = request_peg_out(&peg, &mut users[0], 10_000_000);
    drop(l);
    let (old, new) = peg.rotate_key().unwrap();
    assert_eq!(old, first);
    assert_ne!(new, old, "a new key");
    let new_wallet = peg.peg_wallet().unwrap();
    assert_ne!(new_wallet, old_wallet, "the contract publishes the new key");

    // The old key's coins go to the new key, but not the pending request's
    // fee output: its own fulfilment spends it. The loop has not scanned the
    // request's block yet, so nothing of that block is swept.
    let mut l = peg.coordinator(settings, OpSourceKind::Bitcoin).unwrap();
    let swept = l.sweep_old_keys().unwrap();
    assert_eq!(swept.len(), 1, "one sweep for the old key");
    peg.mine();
    let fee_output = OutPoint::new(pending, 2);
    let left: Vec<OutPoint> = peg
        .with_bitcoin(|b| b.unspent(&old_wallet.script_pubkey()))
        .into_iter()
        .map(|(o, _, _)| o)
        .collect();
    assert_eq!(
        left,
        vec![fee_output],
        "only the request's fee output stays"
    );
    // Once the loop has seen the request, its fee output is reserved for it.
    while state(&l, &pending).is_none() {
        l.tick(&AtomicBool::new(false)).unwrap();
        peg.mine();
    }
    assert!(l.sweep_old_keys().unwrap().is_empty());
    let sweep = peg
        .with_bitcoin(|b| b.locate(&swept[0]))
        .expect("the sweep is on chain")
        .0;
    assert_eq!(sweep.output.len(), 1);
    assert_eq!(sweep.output[0].script_pubkey, new_wallet.script_pubkey());
    assert!(sweep.output[0].value > Amount::from_sat(2 * BTC - 100_000));

    // The pending request is burned and paid: input 0 is its fee output at
    // the old address (signed with the old key), change goes to the new key.
    let paid = tick_until(&mut l, &peg, 30, true, |l| {
        state(l, &pending) == Some(OpState::Done)
    });
    assert!(paid, "{:?}", state(&l, &pending));
    assert_eq!(
        peg.payouts(&pending, &users[0].btc.script_pubkey()),
        vec![Amount::from_sat(10_000_000)]
    );
    let fulfilment = spender(&peg, fee_output).expect("the fulfilment spends the fee output");
    assert_eq!(fulfilment.input[0].previous_output, fee_output);
    assert!(fulfilment.output[2..]
        .iter()
        .all(|o| o.script_pubkey == new_wallet.script_pubkey()));
    assert_eq!(peg.contract_calls("burn!", &pending), (1, 0));

    // A peg-in that still arrives at the old address is minted, then swept.
    let late = peg
        .with_bitcoin(|b| {
            let to = users[1].stx.clone();
            users[1].peg_in(b, MAGIC, &old_wallet, &to, Amount::from_sat(BTC / 2))
        })
        .unwrap();
    peg.mine();
    let minted = tick_until(&mut l, &peg, 30, true, |l| {
        state(l, &late) == Some(OpState::Done)
    });
    assert!(minted, "{:?}", state(&l, &late));
    assert_eq!(l.sweep_old_keys().unwrap().len(), 1);
    peg.mine();
    assert!(peg
        .with_bitcoin(|b| b.unspent(&old_wallet.script_pubkey()))
        .is_empty());
}
