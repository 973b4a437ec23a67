//! The guard's caches on a real Bitcoin Core (regtest): the fixture's chain
//! submitted to Core, the guard on Core and the stacks-node emulator, and
//! Core's own reorgs (`invalidateblock`, then a longer chain without the
//! peg-in) reaching the next check as they reach a fresh guard. The twin of
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
use common::{alice_payout, alice_pegged_in_and_out, guard_on_node, key, request, stacks_state};

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
fn a_reorg_on_bitcoin_core_dropping_the_peg_in_is_seen_by_the_next_check() {
    let Some(core) = real_node() else { return };
    let peg_key = key(7);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let (b, alice, start_height, peg_in, req) = alice_pegged_in_and_out(&peg);
    core.submit_blocks(&b, 1).unwrap();
    let client = core.client();
    assert_eq!(client.get_block_count().unwrap(), b.height());
    let stacks = StacksEmulator::start(
        "127.0.0.1:0",
        stacks_state(&peg_key, &alice.stx, &peg_in, &req),
    )
    .unwrap();
    let node = || BitcoinNodeConfig {
        url: core.rpc_url(),
        user: Some(core.rpc_user().to_owned()),
        password: Some(core.rpc_password().to_owned()),
        cookie_file: None,
    };
    let guard_on_core = || guard_on_node(node(), stacks.url(), start_height, &alice, &[peg_key]);
    let (mut guard, _dir) = guard_on_core();
    let payout = request(1, &alice_payout(&b, &alice, &peg, peg_in, req), &peg_key);
    // What a guard that never saw the chain before says now.
    let fresh = |req: &SignRequest| verdict(&guard_on_core().0.check(req));

    guard.check(&payout).unwrap();
    assert_eq!(fresh(&payout), "passed");

    // Core drops the peg-in's block and the request's above it: the tip
    // goes back down, both transactions wait in Core's mempool.
    let peg_in_block = client.get_block_hash(start_height + 1).unwrap();
    core.call("invalidateblock", json!([peg_in_block.to_string()]))
        .unwrap();
    assert_eq!(client.get_block_count().unwrap(), start_height);
    let after_drop = verdict(&guard.check(&payout));
    assert_ne!(
        after_drop, "passed",
        "the cached guard passed a payout whose request and peg-in Core dropped"
    );
    assert_eq!(after_drop, fresh(&payout));

    // Then a longer chain without them (Core mines empty blocks): a tip
    // higher than the one the payout first passed at.
    for _ in 0..3 {
        core.call("generateblock", json!([alice.btc.to_string(), []]))
            .unwrap();
    }
    assert_eq!(client.get_block_count().unwrap(), start_height + 3);
    let after_reorg = verdict(&guard.check(&payout));
    assert_ne!(
        after_reorg, "passed",
        "the cached guard passed a payout whose request and peg-in Core reorged out"
    );
    assert_eq!(after_reorg, fresh(&payout));
}
