//! The whole peg on real nodes: Bitcoin Core (regtest) and a stacks-node
//! (mocknet), the relay, five signers and the coordinator loop in this
//! process. Skips (printing why) when `BITCOIND_EXE` or `STACKS_NODE_EXE` is
//! unset; fails when one names a missing file.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devnet::real_peg::demo_users;
use devnet::{RealPeg, RealPegOptions, RealPegStart};

fn start(dir: &std::path::Path) -> Option<Box<RealPeg>> {
    let opts = RealPegOptions::new(dir);
    match RealPeg::start(opts) {
        Ok(RealPegStart::Started(p)) => Some(p),
        Ok(RealPegStart::Skipped(why)) => {
            println!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

/// Sets `stop` after `limit`, so every loop of the test ends.
fn watchdog(limit: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        s.store(true, Ordering::SeqCst);
    });
    stop
}

#[test]
fn the_whole_peg_runs_on_real_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let Some(peg) = start(dir.path()) else { return };
    println!("nodes up, contract deployed in {:?}", started.elapsed());
    let stop = watchdog(Duration::from_secs(110));
    let mut users = demo_users();
    let summary = peg.play(&mut users, Duration::from_secs(45), &stop, &mut |l| {
        println!("{l}")
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => panic!("{e:#}\n{}", peg.log_tails()),
    };
    for l in &summary.lines {
        println!("{l}");
    }
    for (what, ok) in &summary.checks {
        println!("   [{}] {what}", if *ok { "ok" } else { "FAIL" });
    }
    assert!(summary.ok(), "some checks failed\n{}", peg.log_tails());
    // The payouts, independently: exactly the amount, to the recipient's
    // scriptPubKey, once.
    for (t, (u, sats)) in summary
        .peg_outs
        .iter()
        .zip([(&users[0], 40_000_000), (&users[1], 20_000_000)])
    {
        assert_eq!(
            peg.payouts(t, &u.btc.script_pubkey(), 0).unwrap(),
            vec![bitcoin::Amount::from_sat(sats)]
        );
    }
    assert_eq!(peg.sbtc_supply().unwrap(), 175_000_000 - 60_000_000);
    assert!(!peg.was_minted(&summary.peg_ins[3]).unwrap());
    println!("whole peg on real nodes in {:?}", started.elapsed());
}

/// Ticks `l` for `d`: (ticks that failed, heights scanned, step failures).
fn tick_for(
    l: &mut coordinator::HttpCoordinator,
    d: Duration,
    stop: &AtomicBool,
) -> (usize, u64, usize) {
    let end = Instant::now() + d;
    let (mut errors, mut scanned, mut failures) = (0, 0, 0);
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        match l.tick(stop) {
            Ok(r) => {
                scanned += r.heights_scanned;
                failures += r.failures;
            }
            Err(_) => errors += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (errors, scanned, failures)
}

fn state(l: &coordinator::HttpCoordinator, t: &bitcoin::Txid) -> Option<String> {
    peg_queue::PegQueue::get(&l.components().queue, t)
        .ok()
        .flatten()
        .map(|o| o.state.name().to_owned())
}

#[test]
fn bitcoind_stopped_and_restarted_while_the_loop_runs() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let Some(mut peg) = start(dir.path()) else {
        return;
    };
    let stop = watchdog(Duration::from_secs(110));
    let fail = |peg: &RealPeg, what: &str| -> ! { panic!("{what}\n{}", peg.log_tails()) };
    peg.publish_key()
        .unwrap_or_else(|e| fail(&peg, &format!("{e:#}")));
    let wallet = peg.peg_wallet().unwrap();
    let mut users: Vec<_> = demo_users().into_iter().take(2).collect();
    peg.fund_users(&mut users).unwrap();
    let from = peg.bitcoin_height().unwrap();
    let nonce_before = peg.coordinator_nonce().unwrap();
    let allowed: Vec<_> = users.iter().collect();
    let mut l = peg.coordinator(peg.settings(&allowed).unwrap()).unwrap();
    let miner = peg.miner(Duration::from_millis(200));
    let mut ins = Vec::new();
    for (u, sats) in users.iter_mut().zip([100_000_000u64, 50_000_000]) {
        let to = u.stx.clone();
        let t = u
            .peg_in_with(
                |tx| peg.send(tx),
                devnet::peg::MAGIC,
                &wallet,
                &to,
                bitcoin::Amount::from_sat(sats),
            )
            .unwrap();
        ins.push((t, format!("{} peg-in", u.name)));
    }
    // Once the loop has seen the peg-ins, Core goes away for 3 s.
    let seen = peg.run_until(&mut l, Duration::from_secs(30), &stop, |l| {
        ins.iter().all(|(t, _)| state(l, t).is_some())
    });
    assert!(seen, "peg-ins never seen");
    peg.bitcoind.stop().unwrap();
    let (errors, scanned, failures) = tick_for(&mut l, Duration::from_secs(3), &stop);
    println!("bitcoind down during peg-ins: {errors} failed ticks, {scanned} heights scanned, {failures} step failures");
    assert_eq!(errors, 0, "a tick failed for good while bitcoind was down");
    assert_eq!(scanned, 0, "scanned heights with bitcoind down");
    assert!(failures > 0, "no step reported bitcoind's absence");
    peg.bitcoind
        .restart()
        .unwrap_or_else(|e| fail(&peg, &format!("{e}")));
    if !peg.drive(&mut l, &ins, Duration::from_secs(40), &stop, &mut |s| {
        println!("{s}")
    }) {
        fail(&peg, "peg-ins did not finish after bitcoind restarted");
    }
    // A peg-out: Core goes away once its burn is under way, before the
    // fulfilment is signed and broadcast.
    let alice = &mut users[0];
    let out = alice
        .peg_out_with(
            |tx| peg.send(tx),
            devnet::peg::MAGIC,
            &wallet,
            bitcoin::Amount::from_sat(40_000_000),
            bitcoin::Amount::from_sat(20_000),
        )
        .unwrap();
    let under_way = peg.run_until(&mut l, Duration::from_secs(30), &stop, |l| {
        state(l, &out).is_some_and(|s| s != "detected" && s != "accepted")
    });
    assert!(under_way, "peg-out never under way");
    println!(
        "peg-out {} when bitcoind stops",
        state(&l, &out).unwrap_or_default()
    );
    peg.bitcoind.stop().unwrap();
    let (errors, scanned, failures) = tick_for(&mut l, Duration::from_secs(3), &stop);
    println!("bitcoind down during the peg-out: {errors} failed ticks, {scanned} heights scanned, {failures} step failures");
    assert_eq!(errors, 0);
    assert_eq!(scanned, 0);
    assert!(failures > 0, "no step reported bitcoind's absence");
    peg.bitcoind
        .restart()
        .unwrap_or_else(|e| fail(&peg, &format!("{e}")));
    let outs = vec![(out, "alice peg-out".to_owned())];
    if !peg.drive(&mut l, &outs, Duration::from_secs(40), &stop, &mut |s| {
        println!("{s}")
    }) {
        fail(&peg, "the peg-out did not finish after bitcoind restarted");
    }
    drop(miner);
    assert_eq!(state(&l, &out).as_deref(), Some("done"));
    // Every op once: two mints and one burn mined, one payout of exactly
    // the amount to alice's scriptPubKey.
    assert_eq!(peg.sbtc_balance(&users[0].stx).unwrap(), 60_000_000);
    assert_eq!(peg.sbtc_balance(&users[1].stx).unwrap(), 50_000_000);
    assert_eq!(peg.sbtc_supply().unwrap(), 110_000_000);
    // One nonce per mint or burn transaction the ops ended with: the two
    // peg-ins were one `mint-many!` when the loop saw them in one round.
    let mut final_txs = std::collections::BTreeSet::new();
    for (t, _) in ins.iter().chain(&outs) {
        let events = peg_queue::PegQueue::history(&l.components().queue, t).unwrap();
        let last = events
            .into_iter()
            .rev()
            .find(|e| e.state == "stacks_tx_broadcast")
            .and_then(|e| e.stacks_txid);
        final_txs.insert(last.expect("a broadcast mint or burn"));
    }
    assert!((2..=3).contains(&final_txs.len()), "{final_txs:?}");
    assert_eq!(
        peg.coordinator_nonce().unwrap() - nonce_before,
        final_txs.len() as u64,
        "no mint or burn repeated"
    );
    assert_eq!(
        peg.payouts(&out, &users[0].btc.script_pubkey(), from)
            .unwrap(),
        vec![bitcoin::Amount::from_sat(40_000_000)]
    );
    println!("bitcoind stop/restart test in {:?}", started.elapsed());
}

/// Makes signer `id`'s nodes lie, through its proxy in front of the real
/// nodes: every coin spent (`gettxout` null), no burn recorded.
fn lie_nothing_is_there(peg: &RealPeg, id: u32) {
    use devnet::proxy::{rpc_result, Answer, Lie};
    use stacks_wire::Value;
    let b = peg.bitcoin_proxy(id).unwrap();
    b.set(Lie::rpc("gettxout", |_, _| {
        rpc_result(serde_json::Value::Null)
    }));
    let s = peg.stacks_proxy(id).unwrap();
    s.set(Lie::path("/get-burn", |_, _| {
        Answer::call_read(&Value::Optional(None))
    }));
    s.set(Lie::path("/was-burned", |_, _| {
        Answer::call_read(&Value::Bool(false))
    }));
}

/// Issue #13's lying nodes on the real nodes: signers 1 and 2 read Core and
/// the stacks-node through proxies that hide coins and burns; the honest
/// three still pay a peg-out, once. With a third liar the next peg-out waits
/// (neither paid nor failed) until the proxies tell the truth, then it is
/// paid once.
#[test]
fn lying_nodes_of_some_signers_on_the_real_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RealPegOptions::new(dir.path());
    opts.proxied = vec![1, 2, 3];
    let peg = match RealPeg::start(opts) {
        Ok(RealPegStart::Started(p)) => p,
        Ok(RealPegStart::Skipped(why)) => {
            println!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    };
    let stop = watchdog(Duration::from_secs(170));
    let fail = |peg: &RealPeg, what: &str| -> ! { panic!("{what}\n{}", peg.log_tails()) };
    peg.publish_key()
        .unwrap_or_else(|e| fail(&peg, &format!("{e:#}")));
    let wallet = peg.peg_wallet().unwrap();
    let mut users: Vec<_> = demo_users().into_iter().take(1).collect();
    peg.fund_users(&mut users).unwrap();
    let from = peg.bitcoin_height().unwrap();
    let allowed: Vec<_> = users.iter().collect();
    let mut l = peg.coordinator(peg.settings(&allowed).unwrap()).unwrap();
    let _miner = peg.miner(Duration::from_millis(300));
    lie_nothing_is_there(&peg, 1);
    lie_nothing_is_there(&peg, 2);
    let alice = &mut users[0];
    let to = alice.stx.clone();
    let pin = alice
        .peg_in_with(
            |tx| peg.send(tx),
            devnet::peg::MAGIC,
            &wallet,
            &to,
            bitcoin::Amount::from_sat(100_000_000),
        )
        .unwrap();
    let ins = vec![(pin, "alice peg-in".to_owned())];
    if !peg.drive(&mut l, &ins, Duration::from_secs(40), &stop, &mut |s| {
        println!("{s}")
    }) {
        fail(&peg, "the peg-in did not finish");
    }
    let request = |alice: &mut devnet::User, sats: u64| {
        alice
            .peg_out_with(
                |tx| peg.send(tx),
                devnet::peg::MAGIC,
                &wallet,
                bitcoin::Amount::from_sat(sats),
                bitcoin::Amount::from_sat(20_000),
            )
            .unwrap()
    };
    let a = request(&mut users[0], 20_000_000);
    let outs = vec![(a, "alice peg-out 1".to_owned())];
    if !peg.drive(&mut l, &outs, Duration::from_secs(60), &stop, &mut |s| {
        println!("{s}")
    }) {
        fail(&peg, "the honest three did not pay");
    }
    let script = users[0].btc.script_pubkey();
    assert_eq!(
        peg.payouts(&a, &script, from).unwrap(),
        vec![bitcoin::Amount::from_sat(20_000_000)]
    );
    assert!(
        peg.bitcoin_proxy(1).unwrap().told_rpc("gettxout") > 0,
        "the liars were asked"
    );

    lie_nothing_is_there(&peg, 3);
    let b = request(&mut users[0], 10_000_000);
    let ended = peg.run_until(&mut l, Duration::from_secs(25), &stop, |l| {
        state(l, &b).is_some_and(|s| s == "done" || s == "failed" || s == "rejected")
    });
    assert!(!ended, "with two honest signers: {:?}", state(&l, &b));
    assert!(peg.payouts(&b, &script, from).unwrap().is_empty());
    for id in [1, 2, 3] {
        peg.bitcoin_proxy(id).unwrap().clear();
        peg.stacks_proxy(id).unwrap().clear();
    }
    let outs = vec![(b, "alice peg-out 2".to_owned())];
    if !peg.drive(&mut l, &outs, Duration::from_secs(60), &stop, &mut |s| {
        println!("{s}")
    }) {
        fail(
            &peg,
            "the payout did not resume once the nodes told the truth",
        );
    }
    assert_eq!(
        peg.payouts(&b, &script, from).unwrap(),
        vec![bitcoin::Amount::from_sat(10_000_000)]
    );
    assert_eq!(
        peg.payouts(&a, &script, from).unwrap(),
        vec![bitcoin::Amount::from_sat(20_000_000)]
    );
}
