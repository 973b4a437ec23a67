//! Issue #16 on the devnet (emulated nodes over real HTTP, the contract's
//! model): the loop mints and burns in `mint-many!` / `burn-many!` batches,
//! so the stacks-node's 25-pending limit no longer caps a Stacks block at
//! 25 ops; a failed element fails its op alone; a stuck batch is replaced
//! whole; restarts never mint twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bitcoin::{Amount, Txid};
use coordinator::config::OpSourceKind;
use coordinator::HttpCoordinator;
use devnet::peg::{burn_script, Blocks, MAGIC};
use devnet::{Peg, PegOptions, User};
use peg_ops::contract::{BURN, BURN_MANY, MINT, MINT_MANY};
use peg_queue::{OpState, PegQueue};

const BTC: u64 = 100_000_000;

fn state(l: &HttpCoordinator, t: &Txid) -> Option<OpState> {
    l.components().queue.get(t).unwrap().map(|o| o.state)
}

fn all_in(l: &HttpCoordinator, ts: &[Txid], want: &OpState) -> bool {
    ts.iter().all(|t| state(l, t).as_ref() == Some(want))
}

/// `per_user` peg-ins of `sats` for each user, one round of them per
/// Bitcoin block (each spends the change of the one before).
fn many_peg_ins(peg: &Peg, users: &mut [User], per_user: usize, sats: u64) -> Vec<Txid> {
    let wallet = peg.peg_wallet().unwrap();
    peg.with_bitcoin(|b| {
        let mut ts = Vec::new();
        for _ in 0..per_user {
            for u in users.iter_mut() {
                let to = u.stx.clone();
                ts.push(
                    u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(sats))
                        .unwrap(),
                );
            }
            b.mine(&burn_script());
        }
        ts
    })
}

/// 220 peg-ins found in one tick, in batches of 8: 28 transactions, more
/// than the 25 the loop keeps pending, yet every peg-in is minted within
/// two Stacks blocks (one `mint!` per op would take nine), each once.
#[test]
fn two_hundred_twenty_peg_ins_are_minted_in_two_stacks_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.stacks_batch = 8;
    let peg = Peg::start(opts).unwrap();
    peg.publish_key().unwrap();
    let mut users = peg.users(4);
    let allowed: Vec<&User> = users.iter().collect();
    let settings = peg.settings(&allowed);
    let ts = many_peg_ins(&peg, &mut users, 55, 100_000);
    assert_eq!(ts.len(), 220);
    peg.mine();
    let first_stacks = peg.stacks.with(|s| s.height);
    let mut l = peg.coordinator(settings, OpSourceKind::Bitcoin).unwrap();
    let stop = AtomicBool::new(false);
    let done = peg
        .run_until(
            &mut l,
            Duration::from_secs(120),
            Blocks::StacksOnly,
            &stop,
            |l| all_in(l, &ts, &OpState::Done),
        )
        .unwrap();
    let states: Vec<_> = ts.iter().filter_map(|t| state(&l, t)).collect();
    assert!(
        done,
        "{:?}",
        states
            .iter()
            .filter(|s| **s != OpState::Done)
            .take(5)
            .collect::<Vec<_>>()
    );
    for t in &ts {
        assert_eq!(peg.contract_calls(MINT, t), (1, 0), "{t} minted once");
    }
    let batches = peg.batch_sizes(MINT_MANY);
    assert_eq!(batches.iter().map(|b| b.1).sum::<usize>(), 220);
    assert!(batches.iter().all(|b| b.1 <= 8), "{batches:?}");
    let heights: std::collections::BTreeSet<u64> = batches.iter().map(|b| b.0).collect();
    assert!(
        heights.len() <= 2,
        "minted in {} Stacks blocks: {heights:?} (from {first_stacks})",
        heights.len()
    );
    assert!(
        l.metrics()
            .stacks_pending_limit_waits
            .load(Ordering::Relaxed)
            > 0,
        "the 25-pending limit was reached"
    );
    assert!(peg.failed_contract_calls().is_empty());
    for u in &users {
        assert_eq!(peg.sbtc_balance(&u.stx), 55 * 100_000);
    }
}

/// Three requests burned in one `burn-many!`; one requester holds too
/// little sBTC, so its element fails on chain: that request fails (never
/// paid), the other two are paid once each.
#[test]
fn a_batch_with_one_failing_element_pays_the_others_and_fails_only_that_op() {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(3);
    let allowed: Vec<&User> = users.iter().collect();
    let mut l = peg
        .coordinator(peg.settings(&allowed), OpSourceKind::Bitcoin)
        .unwrap();
    let stop = AtomicBool::new(false);
    // Each pegs in 1 BTC, the third only 0.1 BTC.
    let ins: Vec<Txid> = peg.with_bitcoin(|b| {
        users
            .iter_mut()
            .enumerate()
            .map(|(i, u)| {
                let to = u.stx.clone();
                let sats = if i == 2 { BTC / 10 } else { BTC };
                u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(sats))
                    .unwrap()
            })
            .collect()
    });
    peg.mine();
    assert!(peg
        .run_until(&mut l, Duration::from_secs(30), Blocks::Both, &stop, |l| {
            all_in(l, &ins, &OpState::Done)
        })
        .unwrap());
    // All three ask for 0.5 BTC, in one Bitcoin block.
    let outs: Vec<Txid> = peg.with_bitcoin(|b| {
        users
            .iter_mut()
            .map(|u| {
                u.peg_out(
                    b,
                    MAGIC,
                    &wallet,
                    Amount::from_sat(BTC / 2),
                    Amount::from_sat(20_000),
                )
                .unwrap()
            })
            .collect()
    });
    peg.mine();
    let settled = peg
        .run_until(&mut l, Duration::from_secs(60), Blocks::Both, &stop, |l| {
            all_in(l, &outs[..2], &OpState::Done)
                && matches!(state(l, &outs[2]), Some(OpState::Failed { .. }))
        })
        .unwrap();
    let states: Vec<_> = outs.iter().map(|t| state(&l, t)).collect();
    assert!(settled, "{states:?}");
    let burns = peg.batch_sizes(BURN_MANY);
    assert_eq!(burns.len(), 1, "one burn-many! for the three: {burns:?}");
    assert_eq!(burns[0].1, 3);
    for (t, u) in outs[..2].iter().zip(&users) {
        assert_eq!(peg.contract_calls(BURN, t), (1, 0));
        assert_eq!(
            peg.payouts(t, &u.btc.script_pubkey()),
            vec![Amount::from_sat(BTC / 2)]
        );
        assert_eq!(peg.sbtc_balance(&u.stx), u128::from(BTC / 2));
    }
    assert_eq!(
        peg.contract_calls(BURN, &outs[2]),
        (0, 1),
        "its element failed"
    );
    assert!(peg
        .payouts(&outs[2], &users[2].btc.script_pubkey())
        .is_empty());
    assert_eq!(peg.sbtc_balance(&users[2].stx), u128::from(BTC / 10));
    match state(&l, &outs[2]) {
        Some(OpState::Failed { reason }) => {
            assert!(reason.contains("did not take effect"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(peg.failed_contract_calls().len(), 1);
}

/// Stacks mining pauses with a batch pending: it is replaced (same nonce,
/// higher fee) with all its ops; then a restart after every tick while
/// the chain moves again. Each peg-in is minted once.
#[test]
fn a_stuck_batch_is_replaced_whole_and_restarts_never_mint_twice() {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let mut users = peg.users(3);
    let allowed: Vec<&User> = users.iter().collect();
    let settings = peg.settings(&allowed);
    let ts = many_peg_ins(&peg, &mut users, 4, 200_000);
    peg.with_bitcoin(|b| b.mine(&burn_script()));
    let stop = AtomicBool::new(false);
    let mut l = peg
        .coordinator(settings.clone(), OpSourceKind::Bitcoin)
        .unwrap();
    // No block is mined: the batch waits in the mempool.
    for _ in 0..3 {
        l.tick(&stop).unwrap();
    }
    let held = |l: &HttpCoordinator| -> Vec<Option<stacks_wire::StacksTxid>> {
        ts.iter()
            .map(|t| match state(l, t) {
                Some(OpState::StacksTxSigned { tx } | OpState::StacksTxBroadcast { tx }) => {
                    Some(tx.txid)
                }
                _ => None,
            })
            .collect()
    };
    let before = held(&l);
    assert!(
        before.iter().all(|t| t.is_some() && *t == before[0]),
        "{before:?}"
    );
    l.set_stacks_replace_after(Duration::ZERO);
    l.tick(&stop).unwrap();
    let after = held(&l);
    assert!(
        after
            .iter()
            .all(|t| t.is_some() && *t == after[0] && *t != before[0]),
        "replaced whole: {after:?} (was {:?})",
        before[0]
    );
    assert!(l.metrics().stacks_replacements.load(Ordering::Relaxed) >= 1);
    let in_mempool = peg.stacks.with(|s| s.mempool.len());
    assert_eq!(in_mempool, 1, "the replacement took the old one's place");
    drop(l);
    // The chain moves; the coordinator restarts after every tick.
    let mut done = false;
    for _ in 0..40 {
        let mut l = peg
            .coordinator(settings.clone(), OpSourceKind::Bitcoin)
            .unwrap();
        l.tick(&stop).unwrap();
        if all_in(&l, &ts, &OpState::Done) {
            done = true;
            break;
        }
        peg.mine();
    }
    assert!(done);
    for t in &ts {
        assert_eq!(peg.contract_calls(MINT, t), (1, 0), "{t} minted once");
    }
    assert!(peg.failed_contract_calls().is_empty());
}
