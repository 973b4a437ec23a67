//! The peg on the devnet through misfortune: a Bitcoin reorg under a
//! peg-in, signers going away and coming back, nodes answering garbage.
//! Every scenario ends with each valid op done exactly once.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Txid};
use devnet::peg::{DevnetLoop, MAGIC};
use devnet::{Fault, Peg, PegOptions, User};
use peg_queue::{OpState, PegQueue};
use stacks_wire::Payload;

const BTC: u64 = 100_000_000;

fn state(l: &DevnetLoop, t: &Txid) -> Option<OpState> {
    l.components().queue.get(t).unwrap().map(|o| o.state)
}

/// Ticks (mining a block on both chains after each when `mine`) until
/// `done`, for at most `secs`.
fn tick_until(
    l: &mut DevnetLoop,
    peg: &Peg,
    secs: u64,
    mine: bool,
    mut done: impl FnMut(&DevnetLoop) -> bool,
) -> bool {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        l.tick(&stop).expect("only the queue can fail a tick");
        if done(l) {
            return true;
        }
        if mine {
            peg.mine();
        } else {
            peg.stacks.with(|s| s.mine());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Successful mint! (or burn!) transactions for Bitcoin txid `t`.
fn effects(peg: &Peg, function: &str, t: &Txid) -> usize {
    let arg = peg_ops::contract::txid_arg(t);
    peg.stacks.with(|s| {
        s.receipts
            .iter()
            .filter(|r| r.result.is_ok())
            .filter(|r| {
                matches!(&r.tx.payload, Payload::ContractCall { function_name, args, .. }
                    if function_name.as_str() == function && args.contains(&arg))
            })
            .count()
    })
}

fn balance(peg: &Peg, u: &User) -> u128 {
    peg.stacks
        .with(|s| s.model.balances.get(&u.stx).copied().unwrap_or(0))
}

/// BTC paid to `u` by fulfilments of request `t` (input 0 spends its output 2).
fn payouts(peg: &Peg, t: &Txid, u: &User) -> Vec<Amount> {
    peg.bitcoind.with(|b| {
        (0..=b.height())
            .filter_map(|h| b.block(h))
            .flat_map(|blk| blk.txdata.iter())
            .filter(|tx| tx.input.first().map(|i| i.previous_output) == Some(OutPoint::new(*t, 2)))
            .flat_map(|tx| tx.output.iter())
            .filter(|o| o.script_pubkey == u.btc.script_pubkey())
            .map(|o| o.value)
            .collect()
    })
}

#[test]
fn a_reorg_removes_an_unminted_peg_in_which_is_minted_once_when_it_reappears() {
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(1);
    let u = &mut users[0];
    let mut l = peg.coordinator(peg.settings(&[u])).unwrap();

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
        effects(&peg, "mint!", &t),
        0,
        "not minted off the best chain"
    );
    assert_eq!(balance(&peg, u), 0);

    // The transaction is mined again in the new branch: minted once.
    let done = tick_until(&mut l, &peg, 20, true, |l| {
        state(l, &t) == Some(OpState::Done)
    });
    assert!(done, "{:?}", state(&l, &t));
    assert_eq!(effects(&peg, "mint!", &t), 1);
    assert_eq!(balance(&peg, u), u128::from(BTC));
}
