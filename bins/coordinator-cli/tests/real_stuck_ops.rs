//! `queue fail` / `queue retry` / `queue show` through the real
//! `coordinator-cli` on real nodes (Bitcoin Core regtest, a stacks-node in
//! mocknet, five guarded signers, three Stacks confirmations): a peg-out
//! failed by the operator after its burn was broadcast is retried to
//! `burn_confirmed` once the burn is final, paid once and burned once, and
//! its history names the burn and the payout after `done`. Skips, printing
//! why, when `BITCOIND_EXE` or `STACKS_NODE_EXE` is unset.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Txid};
use bitcoin_node_client::BitcoinNode;
use devnet::peg::MAGIC;
use devnet::real_peg::demo_users;
use devnet::{RealPeg, RealPegOptions, RealPegStart};

mod common;
use common::{cli, text};

/// Runs `command TXID` until it reports `state` (mining a Bitcoin block
/// between runs when `mine`), within 120 s.
fn drive_to(peg: &RealPeg, config: &Path, command: &str, t: &Txid, state: &str, mine: bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = cli(config, &[command, &t.to_string()]);
        let unconfirmed = !o.status.success() && text(&o).contains("not confirmed yet");
        assert!(o.status.success() || unconfirmed, "{command}: {}", text(&o));
        if text(&o).contains(&format!(": {state}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{command} {t} never reached {state}: {}\n{}",
            text(&o),
            peg.log_tails()
        );
        if mine {
            peg.mine(1).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_peg_out_failed_after_its_burn_is_retried_and_paid_once_on_real_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut opts = RealPegOptions::new(dir.path());
    opts.stacks_confirmations = 3;
    let peg = match RealPeg::start(opts).unwrap() {
        RealPegStart::Started(p) => p,
        RealPegStart::Skipped(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users: Vec<_> = demo_users().into_iter().take(1).collect();
    peg.fund_users(&mut users).unwrap();
    let from = peg.bitcoin_height().unwrap();
    let config = peg
        .write_config(&users.iter().collect::<Vec<_>>(), from + 1)
        .unwrap();
    let alice = &mut users[0];
    let to = alice.stx.clone();

    let pegin = alice
        .peg_in_with(
            |tx| peg.send(tx),
            MAGIC,
            &wallet,
            &to,
            Amount::from_sat(50_000_000),
        )
        .unwrap();
    peg.mine(1).unwrap();
    drive_to(&peg, &config, "process-peg-in", &pegin, "done", false);
    assert_eq!(peg.sbtc_balance(&alice.stx).unwrap(), 50_000_000);

    let request = alice
        .peg_out_with(
            |tx| peg.send(tx),
            MAGIC,
            &wallet,
            Amount::from_sat(20_000_000),
            Amount::from_sat(20_000),
        )
        .unwrap();
    peg.mine(1).unwrap();
    let nonce = peg.coordinator_nonce().unwrap();
    drive_to(
        &peg,
        &config,
        "process-peg-out",
        &request,
        "stacks_tx_broadcast",
        false,
    );
    let o = cli(
        &config,
        &[
            "queue",
            "fail",
            &request.to_string(),
            "--reason",
            "burn stuck",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Retried only once the burn is mined (no burn at the tip would sign
    // another): refused until it is final, then paid from where it stands.
    let deadline = Instant::now() + Duration::from_secs(60);
    while peg.coordinator_nonce().unwrap() == nonce {
        assert!(Instant::now() < deadline, "the burn is never mined");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut refusals = 0;
    loop {
        let o = cli(&config, &["queue", "retry", &request.to_string()]);
        if o.status.success() {
            assert!(
                text(&o).contains("failed -> burn_confirmed"),
                "{}",
                text(&o)
            );
            break;
        }
        assert!(
            text(&o).contains("wait for 3 confirmations"),
            "{}",
            text(&o)
        );
        refusals += 1;
        assert!(Instant::now() < deadline, "{}", text(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
    drive_to(&peg, &config, "process-peg-out", &request, "done", true);
    assert_eq!(
        peg.sbtc_balance(&alice.stx).unwrap(),
        30_000_000,
        "burned once"
    );
    assert_eq!(peg.sbtc_supply().unwrap(), 30_000_000);
    assert_eq!(
        peg.coordinator_nonce().unwrap(),
        nonce + 1,
        "one burn signed"
    );
    assert_eq!(
        peg.payouts(&request, &alice.btc.script_pubkey(), from)
            .unwrap(),
        vec![Amount::from_sat(20_000_000)],
        "paid once"
    );

    let o = cli(&config, &["queue", "show", &request.to_string(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let events = v["events"].as_array().unwrap();
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    for s in [
        "stacks_tx_broadcast",
        "failed",
        "burn_confirmed",
        "bitcoin_tx_broadcast",
        "done",
    ] {
        assert!(states.contains(&s), "{s} missing from {states:?}");
    }
    assert!(events.iter().any(|e| e["stacks_txid"].is_string()));
    let payout: Txid = events
        .iter()
        .rev()
        .find_map(|e| e["bitcoin_txid"].as_str())
        .expect("the payout's txid")
        .parse()
        .unwrap();
    let tx = peg
        .bitcoin_client()
        .get_raw_transaction(&payout)
        .unwrap()
        .expect("Core knows the payout");
    assert!(tx.confirmations >= 1);
    assert_eq!(
        tx.tx.input[0].previous_output,
        OutPoint::new(request, 2),
        "the recorded payout spends the request's output 2"
    );
    println!(
        "real-node stuck peg-out in {:?} ({refusals} retries refused while the burn was not final)",
        started.elapsed()
    );
}
