//! `coordinator-cli refund TXID` as an operator runs it: the real binary
//! against the devnet (emulated nodes over HTTP, five guarded signers whose
//! allowlist, like the coordinator's, holds alice only).
//!
//! With `run` stopped, the command refunds mallory's rejected peg-in itself;
//! `refunded` is terminal (a second refund, `queue retry` and
//! `process-peg-in` leave it so, nothing is minted). With `run` running,
//! the command only records the request and the running loop refunds.

use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Transaction, Txid};
use devnet::peg::MAGIC;
use devnet::{Peg, PegOptions, User};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};

mod common;
use common::{cli, config_from_next_block, spawn_run, start_peg, text};

/// Runs `args` until its output contains `want` (blocks must come in
/// between; an unconfirmed op is refused until mined), for at most 60 s.
fn until(config: &Path, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = cli(config, args);
        let t = text(&o);
        if o.status.success() && t.contains(want) {
            return t;
        }
        assert!(
            o.status.success() || t.contains("not confirmed yet"),
            "{args:?}: {t}"
        );
        assert!(Instant::now() < deadline, "{args:?}: {t}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// The best-chain transaction spending `o`.
fn spender(peg: &Peg, o: OutPoint) -> Option<Transaction> {
    peg.bitcoind.with(|b| {
        (0..=b.height())
            .filter_map(|h| b.block(h))
            .flat_map(|blk| blk.txdata.iter())
            .find(|t| t.input.iter().any(|i| i.previous_output == o))
            .cloned()
    })
}

#[test]
fn refund_pays_a_rejected_peg_in_back_once_with_run_stopped_or_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.allowlist = vec![1];
    opts.sign_timeout = Duration::from_secs(20);
    let (peg, wallet) = start_peg(opts);
    let mut users = peg.users(2);
    let allowed: Vec<&User> = users.iter().take(1).collect();
    let config = config_from_next_block(&peg, &allowed);
    let _miner = peg.miner(Duration::from_millis(100));
    let (alice, rest) = users.split_first_mut().unwrap();
    let mallory = &mut rest[0];

    let alice_stx = alice.stx.clone();
    let minted = peg
        .with_bitcoin(|b| alice.peg_in(b, MAGIC, &wallet, &alice_stx, Amount::from_sat(30_000_000)))
        .unwrap();
    let mallory_stx = mallory.stx.clone();
    let t = peg
        .with_bitcoin(|b| {
            mallory.peg_in(
                b,
                MAGIC,
                &wallet,
                &mallory_stx,
                Amount::from_sat(10_000_000),
            )
        })
        .unwrap();
    until(&config, &["process-peg-in", &minted.to_string()], ": done");
    let rejected = until(&config, &["process-peg-in", &t.to_string()], "rejected");
    assert!(rejected.contains("allowlist"), "{rejected}");

    // A minted peg-in is refused by name.
    let o = cli(&config, &["refund", &minted.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("only a rejected peg-in"), "{}", text(&o));

    // Mallory's: refunded by the command (run is stopped).
    let o = cli(
        &config,
        &["refund", &t.to_string(), "--reason", "not on the allowlist"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Usually broadcast at once; when a signer's node is a block behind it
    // refuses for now, the request stays stored, and the next run goes on.
    assert!(
        text(&o).contains(&format!("peg-in {t}: refund_")),
        "{}",
        text(&o)
    );
    until(&config, &["process-peg-in", &t.to_string()], ": refunded");
    let refund = spender(&peg, OutPoint::new(t, 1)).expect("the refund is mined");
    assert_eq!(refund.output.len(), 1);
    assert_eq!(refund.output[0].script_pubkey, mallory.btc.script_pubkey());
    assert!(refund.output[0].value > Amount::from_sat(10_000_000 - 50_000));

    // Terminal: no second refund, no retry, no mint.
    let o = cli(&config, &["refund", &t.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("refunded already"), "{}", text(&o));
    let o = cli(&config, &["queue", "retry", &t.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("refunded: terminal"), "{}", text(&o));
    let o = cli(&config, &["process-peg-in", &t.to_string()]);
    assert!(text(&o).contains(": refunded"), "{}", text(&o));
    assert_eq!(peg.contract_calls("mint!", &t), (0, 0));

    // With `run` running, the command records the request; the loop pays.
    let second = peg
        .with_bitcoin(|b| {
            mallory.peg_in(b, MAGIC, &wallet, &mallory_stx, Amount::from_sat(5_000_000))
        })
        .unwrap();
    let log_path = dir.path().join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _run = spawn_run(&config, log);
    let run_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Open our own view of the queue once `run` has opened its own (two
    // processes opening the file at the same instant may meet its lock).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_log().contains("coordinator loop started") {
        assert!(
            Instant::now() < deadline,
            "run did not start: {}",
            run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `SqlitePegQueue::open` sets the journal mode before its busy timeout,
    // so it may meet the running loop's lock: try again, bounded.
    let queue = (0..50)
        .find_map(|_| {
            let q = SqlitePegQueue::open(&peg.queue_path()).ok();
            if q.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            q
        })
        .expect("the queue opens");
    let state = |x: &Txid| queue.get(x).unwrap().map(|o| o.state);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(state(&second), Some(OpState::Rejected { .. })) {
        assert!(
            Instant::now() < deadline,
            "{:?}: {}",
            state(&second),
            run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = cli(&config, &["refund", &second.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("the running coordinator"), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(90);
    while state(&second) != Some(OpState::Refunded) {
        assert!(
            Instant::now() < deadline,
            "{:?}: {}",
            state(&second),
            run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refund = spender(&peg, OutPoint::new(second, 1)).expect("the refund is mined");
    assert_eq!(refund.output[0].script_pubkey, mallory.btc.script_pubkey());
    assert_eq!(peg.contract_calls("mint!", &second), (0, 0));
}
