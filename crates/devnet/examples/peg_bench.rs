//! Benchmark: the devnet end to end — peg-ins minted per second, and the
//! time to pay 1,000 queued peg-outs (burn, FROST-signed fulfilment accepted
//! by the emulated bitcoind, confirmed), with the time spent in signing
//! rounds broken out.
//!
//! `cargo run --release -p devnet --example peg_bench -- --signers 5`
//! (`--signers 15`, `--ops N`, `--deadline-secs S`: how long each phase may
//! take, 600 by default — a 15-signer run with validation on needs more on
//! two cores; `--rounds-in-flight N`, signing rounds the coordinator keeps in
//! flight, 8 by default; `--stacks-batch N`, mints or burns per Stacks
//! transaction, 100 by default; `--pegins-only`; `--relay-latency-ms D`,
//! the relay D ms away from the signers and the coordinator each way, as
//! across a real network — the latency that rounds in flight hide).
//!
//! Beside the peg-out time it prints the run's CPU floor, measured in the
//! same process: the CPU the signers' guards spent validating (their own
//! threads) plus the CPU of the same number of taproot signing rounds done
//! in one thread with wsts alone (every party's nonce and share, the
//! aggregation), over the cores; and the whole process's CPU over the cores.
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

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// CPU time the whole process has used (user + system, `/proc/self/stat`).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name's closing parenthesis; utime and stime
    // are the 14th and 15th fields, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// CPU time of each of the process's live threads (`/proc/self/task`), by
/// thread id: its name and its user + system time.
fn threads_cpu() -> std::collections::BTreeMap<u32, (String, Duration)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(t.path().join("comm")),
            std::fs::read_to_string(t.path().join("stat")),
        ) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        out.insert(
            tid,
            (comm.trim().to_owned(), Duration::from_millis(ticks * 10)),
        );
    }
    out
}

/// The CPU each kind of thread used between two [`threads_cpu`] readings:
/// threads grouped by name with the digits dropped (`signer-3` and
/// `signer-4` are `signer-`), largest first; threads that ended between
/// the readings are not seen (the caller counts them as the rest).
fn cpu_by_thread_kind(
    before: &std::collections::BTreeMap<u32, (String, Duration)>,
    after: &std::collections::BTreeMap<u32, (String, Duration)>,
) -> Vec<(String, Duration)> {
    let mut kinds = std::collections::BTreeMap::<String, Duration>::new();
    for (tid, (name, cpu)) in after {
        let was = before.get(tid).map_or(Duration::ZERO, |(_, c)| *c);
        let kind: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
        *kinds.entry(kind).or_default() += cpu.saturating_sub(was);
    }
    let mut v: Vec<_> = kinds.into_iter().collect();
    v.sort_by_key(|k| std::cmp::Reverse(k.1));
    v
}

/// CPU time the calling thread has used (`/proc/thread-self/schedstat`).
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

/// The CPU one taproot signing round of `signers` parties (one key each,
/// threshold `threshold`) takes with wsts alone in one thread: every party's
/// nonce and share, then the aggregation; the mean of `rounds`.
fn signing_round_cpu(signers: u32, threshold: u32, rounds: u32) -> Duration {
    use frost_coordinator::wsts;
    use wsts::traits::{Aggregator as _, Signer as _};
    let mut rng = wsts::util::create_rng();
    let mut parties: Vec<wsts::v2::Party> = (0..signers)
        .map(|i| wsts::v2::Party::new(i, &[i + 1], signers, signers, threshold, &mut rng))
        .collect();
    let comms = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
    let party_ids: Vec<u32> = (0..threshold).collect();
    let key_ids: Vec<u32> = (1..=threshold).collect();
    let start = thread_cpu();
    for r in 0..rounds {
        let msg = [r as u8; 32];
        let nonces: Vec<_> = parties[..threshold as usize]
            .iter_mut()
            .map(|p| p.gen_nonce(&mut rng))
            .collect();
        let shares: Vec<_> = parties[..threshold as usize]
            .iter()
            .flat_map(|p| p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, None))
            .collect();
        let mut agg = wsts::v2::Aggregator::new(signers, threshold);
        agg.init(&comms).unwrap();
        agg.sign_taproot(&msg, &nonces, &shares, &key_ids, None)
            .unwrap();
    }
    (thread_cpu() - start) / rounds
}

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let signers = arg("--signers", 5) as u32;
    let ops = arg("--ops", 1000);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.signers = signers;
    opts.threshold = signers * 7 / 10 + 1;
    opts.sign_timeout = Duration::from_secs(30);
    opts.rounds_in_flight = arg(
        "--rounds-in-flight",
        frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
    );
    opts.stacks_batch = arg("--stacks-batch", coordinator::DEFAULT_STACKS_BATCH);
    opts.relay_latency = Duration::from_millis(arg("--relay-latency-ms", 0) as u64);
    let (in_flight, batch, latency) =
        (opts.rounds_in_flight, opts.stacks_batch, opts.relay_latency);
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
        "devnet: {signers} signers (threshold {threshold}), {ops} ops from {n_users} users, over HTTP on 127.0.0.1 (the relay {} ms away each way); {in_flight} signing rounds in flight, {batch} mints or burns per Stacks transaction; load average {}",
        latency.as_millis(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
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
        "peg-ins: {ops} minted in {:.2} s = {:.0}/s ({ticks} ticks; each: validated, signed into a mint-many! (or mint!), stored, broadcast, mined, confirmed)",
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64()
    );
    // Mints per Stacks block: the emulator enforces the real node's limit of
    // 25 pending transactions per account (and 2 MiB per block).
    let mut per_block = std::collections::BTreeMap::<u64, usize>::new();
    for (h, n) in peg.batch_sizes(coordinator_mint_many()) {
        *per_block.entry(h).or_default() += n;
    }
    for h in single_mint_heights(&peg) {
        *per_block.entry(h).or_default() += 1;
    }
    println!(
        "mints per Stacks block: {:?} (height: mints), at most {} in one block",
        per_block,
        per_block.values().max().copied().unwrap_or(0)
    );
    if flag("--pegins-only") {
        return;
    }

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
    let (cpu0, validation0, threads0) = (process_cpu(), peg.validation_cpu(), threads_cpu());
    let start = Instant::now();
    let ticks = run(&mut l, &peg, &outs);
    let took = start.elapsed();
    let (cpu, validation) = (process_cpu() - cpu0, peg.validation_cpu() - validation0);
    let by_kind = cpu_by_thread_kind(&threads0, &threads_cpu());
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
        "peg-outs: {ops} burned and paid in {:.2} s ({ticks} ticks); {rounds} payouts signed ({inputs} inputs, one round each), the signing calls took {:.2} s of wall time, the rest {:.2} s",
        took.as_secs_f64(),
        signing.as_secs_f64(),
        (took - signing.min(took)).as_secs_f64(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let per_round = signing_round_cpu(signers, threshold, 50);
    let signing_cpu = per_round * u32::try_from(inputs).unwrap();
    let floor = (signing_cpu + validation) / cores;
    println!(
        "CPU floor: {inputs} signing rounds × {:.2} ms (wsts alone, one thread) = {:.2} s, plus the guards' validation {:.2} s, over {cores} cores = {:.2} s; this run took {:.2}× its floor. The whole process used {:.2} s of CPU ({:.2} s over the cores, {:.2}×)",
        per_round.as_secs_f64() * 1000.0,
        signing_cpu.as_secs_f64(),
        validation.as_secs_f64(),
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64(),
        cpu.as_secs_f64(),
        (cpu / cores).as_secs_f64(),
        took.as_secs_f64() / (cpu / cores).as_secs_f64(),
    );
    // Where the CPU went, by thread: the coordinator's loop is the main
    // thread (`peg_bench`, with the posts it starts), each signer's thread
    // runs its guard's checks, and the emulators' and the relay's threads
    // carry their names (devnet names them; tiny_http's workers take their
    // creator's name).
    let seen: Duration = by_kind.iter().map(|(_, c)| *c).sum();
    let parts: Vec<String> = by_kind
        .iter()
        .filter(|(_, c)| !c.is_zero())
        .map(|(k, c)| format!("{k} {:.2} s", c.as_secs_f64()))
        .chain(std::iter::once(format!(
            "threads that ended {:.2} s",
            cpu.saturating_sub(seen).as_secs_f64()
        )))
        .collect();
    println!("CPU by thread: {}", parts.join(", "));
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

fn coordinator_mint_many() -> &'static str {
    peg_ops::contract::MINT_MANY
}

/// The heights of the mined single `mint!` calls (a batch of one).
fn single_mint_heights(peg: &Peg) -> Vec<u64> {
    peg.stacks.with(|s| {
        s.receipts
            .iter()
            .filter(|r| {
                matches!(&r.tx.payload, stacks_wire::Payload::ContractCall { function_name, .. }
                    if function_name == peg_ops::contract::MINT)
            })
            .map(|r| r.height)
            .collect()
    })
}
