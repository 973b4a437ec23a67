//! The guard's caches on a real Bitcoin Core (regtest): the fixture's chain
//! submitted to Core, the guard on Core and the stacks-node emulator, and
//! Core's own reorgs (`invalidateblock` and `generateblock`, dropping a
//! minted peg-in the books need) reaching the next check, caches warm, as
//! they reach a fresh guard. The twin of
//! `redteam_caches.rs`' reorg tests, which run on mocks. Needs
//! `BITCOIND_EXE`; without it, the test prints why it skipped and returns.

// A test without a real node says so on stderr.
#![allow(clippy::print_stderr)]

use bitcoin_node_client::BitcoinNode as _;
use devnet::bitcoind::{Outcome, RealBitcoind};
use devnet::StacksEmulator;
use frost_net::SignRequest;
use frost_signer::Validator as _;
use serde_json::json;
use signer_guard::BitcoinNodeConfig;

mod common;
use common::{alice_payout, guard_on_node, key, request, with_a_second_minted_peg_in};

/// The real node, or `None` (printed) when `BITCOIND_EXE` is unset. A set
/// variable naming a missing file, or a node that does not start, fails.
fn real_node() -> Option<RealBitcoind> {
    match RealBitcoind::start() {
        Ok(Outcome::Started(n)) => Some(n),
        Ok(Outcome::Skipped(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The rule a refusal names (`rule.name: details`), or `passed`.
fn verdict(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "passed".to_owned(),
        Err(e) => e.split(':').next().unwrap_or_default().to_owned(),
    }
}

#[test]
fn a_reorg_on_bitcoin_core_dropping_a_minted_peg_in_is_seen_by_the_next_check() {
    let Some(core) = real_node() else { return };
    let peg_key = key(7);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let (b, s, alice, start_height, peg_in, req, _second) = with_a_second_minted_peg_in(&peg_key);
    core.submit_blocks(&b, 1).unwrap();
    let client = core.client();
    let tip = b.height();
    assert_eq!(client.get_block_count().unwrap(), tip);
    let stacks = StacksEmulator::start("127.0.0.1:0", s).unwrap();
    let node = || BitcoinNodeConfig {
        url: core.rpc_url(),
        user: Some(core.rpc_user().to_owned()),
        password: Some(core.rpc_password().to_owned()),
        cookie_file: None,
    };
    let guard_on_core = || guard_on_node(node(), stacks.url(), start_height, &alice, &[peg_key]);
    let (mut guard, _dir) = guard_on_core();
    let payout = request(1, &alice_payout(&b, &alice, &peg, peg_in, req), &peg_key);
    // What a guard that never saw the chain before (its own files) says now.
    let fresh = |req: &SignRequest| verdict(&guard_on_core().0.check(req));

    // Twice, so every cache is warm at this tip.
    guard.check(&payout).unwrap();
    guard.check(&payout).unwrap();
    assert_eq!(fresh(&payout), "passed");

    // Core replaces the second peg-in's block at the same height by an
    // empty one: the request and the payout's own coin stay, but the peg
    // wallet no longer backs the sBTC minted for the second peg-in.
    let old_tip = client.get_block_hash(tip).unwrap();
    core.call("invalidateblock", json!([old_tip.to_string()]))
        .unwrap();
    core.call("generateblock", json!([alice.btc.to_string(), []]))
        .unwrap();
    assert_eq!(client.get_block_count().unwrap(), tip);
    assert_ne!(client.get_block_hash(tip).unwrap(), old_tip);
    let same_height = verdict(&guard.check(&payout));
    assert_eq!(
        same_height, "backing",
        "the cached guard passed a payout the reorged chain no longer backs"
    );
    assert_eq!(same_height, fresh(&payout));

    // Then the tip goes back down below where the payout first passed.
    let new_tip = client.get_block_hash(tip).unwrap();
    core.call("invalidateblock", json!([new_tip.to_string()]))
        .unwrap();
    assert_eq!(client.get_block_count().unwrap(), tip - 1);
    let lower = verdict(&guard.check(&payout));
    assert_eq!(
        lower, "backing",
        "the cached guard passed a payout at a lower tip without the second peg-in"
    );
    assert_eq!(lower, fresh(&payout));
}
