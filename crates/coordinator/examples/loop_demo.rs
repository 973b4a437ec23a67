//! The coordinator's loop on simulated components: a walk-through of the
//! decision logic, until the embedded devnet (real node emulators) replaces it.
//!
//! Three users peg in (one is not on the allowlist), one pegs out; one signing
//! round times out on the way. The loop runs tick by tick and the demo prints
//! each op's state, then checks the outcome and exits 0 only if every check
//! holds.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::process::ExitCode;
use std::time::Duration;

use coordinator::testing::*;
use peg_ops::PegOp;
use peg_queue::{OpState, PegQueue};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    println!("== sbtc-coordinator loop demo (simulated nodes, signers and wallets) ==");
    let ops = vec![
        peg_in(1, 2, allowed_principal(), 150_000),
        peg_in(2, 2, stranger_principal(), 80_000),
        peg_in(3, 3, allowed_principal(), 250_000),
        peg_out(4, 3, ALLOWED_BTC, 100_000),
    ];
    let w = world(4, vec![(2, ops[..2].to_vec()), (3, ops[2..].to_vec())]);
    w.lock()
        .unwrap()
        .frost_failures
        .push_back(frost_coordinator::Error::Timeout {
            round: "signing",
            waited: Duration::from_secs(10),
            missing: vec![3],
        });
    let q = MemQueue::default();
    let mut l = coordinator(&w, &q, settings());
    for tick in 1..=4 {
        let report = l.tick(&no_stop()).unwrap();
        println!("-- tick {tick}: {report:?}");
        for op in &ops {
            let s = q.get(&op.txid()).unwrap().map(|q| q.state.to_string());
            println!(
                "   {:<8} {}  {}",
                op.kind().to_string(),
                op.txid(),
                s.unwrap_or("-".into())
            );
        }
        // Confirm whatever fulfilment was broadcast.
        let mut g = w.lock().unwrap();
        for c in g.btc_known.values_mut() {
            *c += 1;
        }
    }

    let g = w.lock().unwrap();
    let minted: Vec<_> = [1u8, 3]
        .iter()
        .map(|n| g.processed.contains(&txid(*n)))
        .collect();
    let payout = g.btc_broadcasts.first();
    let PegOp::PegOutRequest(out) = &ops[3] else {
        unreachable!()
    };
    let checks = [
        ("allowlisted peg-ins minted", minted.iter().all(|m| *m)),
        (
            "non-allowlisted peg-in rejected",
            matches!(
                q.get(&txid(2)).unwrap().unwrap().state,
                OpState::Rejected { .. }
            ),
        ),
        (
            "peg-out burned before payout",
            g.processed.contains(&txid(4)),
        ),
        ("exactly one payout", g.btc_broadcasts.len() == 1),
        (
            "payout goes to the recipient's scriptPubKey, exact amount",
            payout.is_some_and(|t| {
                t.output[1].script_pubkey == out.recipient.script_pubkey()
                    && t.output[1].value == out.amount
            }),
        ),
        (
            "every op finished",
            ops.iter()
                .all(|o| q.get(&o.txid()).unwrap().unwrap().state.is_terminal()),
        ),
    ];
    println!("== summary ==");
    let mut ok = true;
    for (what, holds) in checks {
        println!("   [{}] {what}", if holds { "ok" } else { "FAIL" });
        ok &= holds;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
