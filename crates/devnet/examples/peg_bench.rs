//! Benchmark: the devnet end to end — peg-ins minted per second, and the
//! time to pay 1,000 queued peg-outs (burn, FROST-signed fulfilment accepted
//! by the emulated bitcoind, confirmed), with the time spent in signing
//! rounds broken out.
//!
//! `cargo run --release -p devnet --example peg_bench -- --signers 5`
//! (`--signers 15`, `--ops N`, `--deadline-secs S`: how long each phase may
//! take, 600 by default — a 15-signer run with validation on needs more on
//! two cores).
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Txid};
use coordinator::config::OpSourceKind;
use coordinator::HttpCoordinator;
use devnet::peg::{Blocks, MAGIC};
use devnet::{Peg, PegOptions, User};
use peg_queue::{OpState, PegQueue};

/// Ops per user and block: under bitcoind's 25-transaction chain limit.
const PER_USER: usize = 20;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// Ticks and mines until every op in `ts` is done; returns the ticks.
fn run(l: &mut HttpCoordinator, peg: &Peg, ts: &[Txid]) -> usize {
    let deadline = arg("--deadline-secs", 600);
    let mut ticks = 0;
    let done = peg
        .run_until(
            l,
            Duration::from_secs(deadline as u64),
            Blocks::Both,
            &AtomicBool::new(false),
            |l| {
                ticks += 1;
                let q = &l.components().queue;
                ts.iter()
                    .all(|t| q.get(t).unwrap().map(|o| o.state) == Some(OpState::Done))
            },
        )
        .unwrap();
    if !done {
        let q = &l.components().queue;
        let finished = ts
            .iter()
            .filter(|t| q.get(t).unwrap().map(|o| o.state) == Some(OpState::Done))
            .count();
        panic!(
            "not done in {deadline} s: {finished} of {} done ({ticks} ticks); rerun with a larger --deadline-secs",
            ts.len()
        );
    }
    ticks
}

fn main() {
    let signers = arg("--signers", 5) as u32;
    let ops = arg("--ops", 1000);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.signers = signers;
    opts.threshold = signers * 7 / 10 + 1;
    opts.sign_timeout = Duration::from_secs(30);
    let threshold = opts.threshold;
    let peg = Peg::start(opts).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let n_users = ops.div_ceil(PER_USER);
    let mut users = peg.users(u8::try_from(n_users).expect("at most 255 users"));
    let allowed: Vec<&User> = users.iter().collect();
    let mut settings = peg.settings(&allowed);
    settings.max_heights_per_tick = 1000;
    let mut l = peg.coordinator(settings, OpSourceKind::Bitcoin).unwrap();
    println!(
        "devnet: {signers} signers (threshold {threshold}), {ops} ops from {n_users} users, over HTTP on 127.0.0.1"
    );

    // Peg-ins: all in one block, then minted.
    let ins: Vec<Txid> = peg.with_bitcoin(|b| {
        let mut v = Vec::new();
        for u in users.iter_mut() {
            for _ in 0..PER_USER {
                if v.len() < ops {
                    let to = u.stx.clone();
                    v.push(
                        u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(1_000_000))
                            .unwrap(),
                    );
                }
            }
        }
        v
    });
    peg.mine();
    let start = Instant::now();
    let ticks = run(&mut l, &peg, &ins);
    let took = start.elapsed();
    println!(
        "peg-ins: {ops} minted in {:.2} s = {:.0}/s ({ticks} ticks; each: validated, mint! signed, stored, broadcast, mined, confirmed)",
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64()
    );

    // Peg-out requests: all in one block, then paid.
    let outs: Vec<Txid> = peg.with_bitcoin(|b| {
        let mut v = Vec::new();
        for u in users.iter_mut() {
            for j in 0..PER_USER {
                if v.len() < ops {
                    // Each of a user's requests differs by a sat: an identical
                    // request (same amount and recipient) is a replay.
                    v.push(
                        u.peg_out(
                            b,
                            MAGIC,
                            &wallet,
                            Amount::from_sat(500_000 + j as u64),
                            Amount::from_sat(20_000),
                        )
                        .unwrap(),
                    );
                }
            }
        }
        v
    });
    peg.mine();
    let metrics = l.metrics();
    let (rounds0, micros0) = (
        metrics.signing_rounds.load(Ordering::Relaxed),
        metrics.signing_micros.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    let ticks = run(&mut l, &peg, &outs);
    let took = start.elapsed();
    let rounds = metrics.signing_rounds.load(Ordering::Relaxed) - rounds0;
    let signing = Duration::from_micros(metrics.signing_micros.load(Ordering::Relaxed) - micros0);
    let inputs: usize = peg.bitcoind.with(|b| {
        (0..=b.height())
            .filter_map(|h| b.block(h))
            .flat_map(|blk| blk.txdata.iter())
            .filter(|tx| {
                tx.input.first().is_some_and(|i| {
                    outs.iter()
                        .any(|t| i.previous_output == OutPoint::new(*t, 2))
                })
            })
            .map(|tx| tx.input.len())
            .sum()
    });
    println!(
        "peg-outs: {ops} burned and paid in {:.2} s ({ticks} ticks); {rounds} signing rounds for {inputs} inputs took {:.2} s ({:.1} ms each), the rest {:.2} s",
        took.as_secs_f64(),
        signing.as_secs_f64(),
        signing.as_secs_f64() * 1000.0 / rounds.max(1) as f64,
        (took - signing.min(took)).as_secs_f64(),
    );
    let paid = outs
        .iter()
        .zip(
            users
                .iter()
                .flat_map(|u| (0..PER_USER).map(move |j| (u, j))),
        )
        .filter(|(t, (u, j))| {
            peg.payouts(t, &u.btc.script_pubkey()) == vec![Amount::from_sat(500_000 + *j as u64)]
        })
        .count();
    assert_eq!(paid, ops, "every peg-out paid exactly once");
}
