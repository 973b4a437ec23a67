//! Batched mints on real nodes (issue #16): sixty peg-ins found in one
//! tick are minted by the real stacks-node as `mint-many!` calls — a few
//! transactions, not sixty, far below the node's 25-pending limit. Skips
//! (printing why) when `BITCOIND_EXE` or `STACKS_NODE_EXE` is unset.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, Txid};
use devnet::peg::MAGIC;
use devnet::real_peg::demo_users;
use devnet::{RealPeg, RealPegOptions, RealPegStart, User};
use peg_queue::{OpState, PegQueue};

const PER_USER: usize = 20;
const SATS: u64 = 1_000_000;

#[test]
fn sixty_peg_ins_are_minted_by_a_few_mint_many_calls_on_the_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let peg = match RealPeg::start(RealPegOptions::new(dir.path())) {
        Ok(RealPegStart::Started(p)) => p,
        Ok(RealPegStart::Skipped(why)) => {
            println!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(150));
        s.store(true, Ordering::SeqCst);
    });
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users: Vec<User> = demo_users().into_iter().take(3).collect();
    peg.fund_users(&mut users).unwrap();
    let allowed: Vec<&User> = users.iter().collect();
    let settings = peg.settings(&allowed).unwrap();
    let nonce_before = peg.coordinator_nonce().unwrap();
    // Twenty rounds of one peg-in per user, a block after each round (each
    // spends the change of the one before).
    let mut ts: Vec<Txid> = Vec::new();
    for _ in 0..PER_USER {
        for u in users.iter_mut() {
            let to = u.stx.clone();
            ts.push(
                u.peg_in_with(
                    |tx| peg.send(tx),
                    MAGIC,
                    &wallet,
                    &to,
                    Amount::from_sat(SATS),
                )
                .unwrap_or_else(|r| panic!("{}: {}", u.name, r.message)),
            );
        }
        peg.mine(1).unwrap();
    }
    let mut l = peg.coordinator(settings).unwrap();
    let _miner = peg.miner(Duration::from_millis(200));
    let done = peg.run_until(&mut l, Duration::from_secs(90), &stop, |l| {
        ts.iter().all(|t| {
            l.components()
                .queue
                .get(t)
                .ok()
                .flatten()
                .is_some_and(|o| o.state == OpState::Done)
        })
    });
    let states: Vec<String> = ts
        .iter()
        .filter_map(|t| l.components().queue.get(t).ok().flatten())
        .filter(|o| o.state != OpState::Done)
        .map(|o| format!("{} {}", o.op.txid(), o.state))
        .take(5)
        .collect();
    assert!(done, "{states:?}\n{}", peg.log_tails());
    for t in &ts {
        assert!(peg.was_minted(t).unwrap(), "{t} minted");
    }
    for u in &users {
        assert_eq!(
            peg.sbtc_balance(&u.stx).unwrap(),
            u128::from(SATS) * PER_USER as u128
        );
    }
    let calls = peg.coordinator_nonce().unwrap() - nonce_before;
    println!(
        "{} peg-ins minted by {calls} coordinator transaction(s) in {:?}",
        ts.len(),
        started.elapsed()
    );
    assert!(
        (1..=3).contains(&calls),
        "{calls} transactions for {} mints",
        ts.len()
    );
}
