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
