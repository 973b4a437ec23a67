//! Crash safety of the real binary: `coordinator-cli run` on the devnet is
//! killed with SIGKILL at random moments (every 100-400 ms for the first
//! 20 times, then every 1-3 s, so that signing rounds can finish between
//! kills) while 100 peg-ins and 100 peg-outs go through, and restarted each
//! time. Afterwards every op took effect exactly once: one mint per peg-in,
//! one burn and one payout (the exact amount, to the requester's
//! scriptPubKey) per peg-out, and no second mint or burn was ever even
//! attempted.

#![allow(clippy::print_stdout)] // the seed and counts, for whoever reruns it

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bitcoin::{Amount, Txid};
use devnet::peg::MAGIC;
use devnet::{Peg, PegOptions, User};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};

const USERS: u8 = 10;
/// Peg-ins (and peg-outs) per user, at least; more if the kills need time.
const PER_USER: usize = 10;
const PEG_IN: u64 = 10_000_000;
const PEG_OUT: u64 = 4_000_000;
const KILLS: usize = 20;

/// xorshift64: the test's only randomness, seeded from the clock and printed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn done(q: &SqlitePegQueue, ts: &[Txid]) -> usize {
    ts.iter()
        .filter(|t| q.get(t).ok().flatten().map(|o| o.state) == Some(OpState::Done))
        .count()
}

#[test]
fn sigkilled_coordinator_processes_do_every_op_exactly_once() {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let peg = Peg::start(PegOptions::new(dir.path())).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = peg.users(USERS);
    let allowed: Vec<&User> = users.iter().collect();
    let start = peg.bitcoind.with(|b| b.height()) + 1;
    let config = peg.write_config(&allowed, start).unwrap();
    let log = dir.path().join("coordinator.log");
    let queue = SqlitePegQueue::open(&peg.queue_path()).unwrap();
    let _miner = peg.miner(Duration::from_millis(100));

    let mut child = spawn(&config, &log);
    let mut kills = 0;
    let mut target = usize::from(USERS) * PER_USER;
    let mut kills_mid_work = 0;
    let mut ins: Vec<Txid> = Vec::new();
    // (user, request, amount): each wave's peg-outs are a sat larger than
    // the last, since an identical request (same amount and recipient,
    // same signature) is a replay the coordinator rejects.
    let mut outs: Vec<(usize, Txid, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut next_kill = Instant::now() + Duration::from_millis(200 + rng.below(600));
    loop {
        assert!(
            Instant::now() < deadline,
            "not done in time after {kills} kills: {} of {} peg-ins, {} of {} peg-outs; not done:\n{}\nlog:\n{}",
            done(&queue, &ins),
            ins.len(),
            done(&queue, &outs.iter().map(|o| o.1).collect::<Vec<_>>()),
            outs.len(),
            queue
                .all()
                .unwrap_or_default()
                .iter()
                .filter(|o| o.state != OpState::Done)
                .map(|o| format!(
                    "{} {}: {} (attempts {}, last error {:?}, waiting {:?})",
                    o.op.kind(),
                    o.op.txid(),
                    o.state.name(),
                    o.attempts,
                    o.last_error,
                    o.waiting
                ))
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Users send work in waves: a peg-in each, then (once minted) a
        // peg-out each, ten times over — never more than bitcoind's chain
        // limit of unconfirmed transactions per user.
        let wave = ins.len() / usize::from(USERS);
        if ins.len() < target && outs.len() == ins.len() {
            peg.with_bitcoin(|b| {
                for u in users.iter_mut() {
                    let to = u.stx.clone();
                    ins.push(
                        u.peg_in(b, MAGIC, &wallet, &to, Amount::from_sat(PEG_IN))
                            .unwrap(),
                    );
                }
            });
        } else if outs.len() < ins.len()
            && done(&queue, &ins[(wave - 1) * usize::from(USERS)..]) == usize::from(USERS)
        {
            let amount = PEG_OUT + (outs.len() / usize::from(USERS)) as u64;
            peg.with_bitcoin(|b| {
                for (i, u) in users.iter_mut().enumerate() {
                    let t = u
                        .peg_out(
                            b,
                            MAGIC,
                            &wallet,
                            Amount::from_sat(amount),
                            Amount::from_sat(20_000),
                        )
                        .unwrap();
                    outs.push((i, t, amount));
                }
            });
        }
        let all_in = ins.len() == target && outs.len() == ins.len();
        if Instant::now() >= next_kill {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the coordinator exited by itself ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            if !queue.pending().unwrap().is_empty() {
                kills_mid_work += 1;
            }
            child = spawn(&config, &log);
            // The first kills come every 100-400 ms; then every 1-3 s, so
            // that a payout's signing round — every signer checking it on
            // its own nodes first — can finish between two kills, and the
            // kills still land mid-round.
            next_kill = Instant::now()
                + if kills < KILLS {
                    Duration::from_millis(100 + rng.below(300))
                } else {
                    Duration::from_millis(1_000 + rng.below(2_000))
                };
        }
        let out_ids: Vec<Txid> = outs.iter().map(|o| o.1).collect();
        if all_in && done(&queue, &ins) == ins.len() && done(&queue, &out_ids) == outs.len() {
            if kills >= KILLS {
                break;
            }
            // Too quick for 20 kills: another wave.
            target += usize::from(USERS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(kills >= KILLS && ins.len() >= 100 && outs.len() >= 100);
    for t in &ins {
        assert_eq!(peg.contract_calls("mint!", t), (1, 0), "peg-in {t}");
    }
    for (i, t, amount) in &outs {
        assert_eq!(peg.contract_calls("burn!", t), (1, 0), "peg-out {t}");
        assert_eq!(
            peg.payouts(t, &users[*i].btc.script_pubkey()),
            vec![Amount::from_sat(*amount)],
            "peg-out {t}"
        );
    }
    let failed = peg.failed_contract_calls();
    assert!(failed.is_empty(), "{failed:?}");
    let waves = ins.len() / usize::from(USERS);
    let mut supply_left = 0;
    for (i, u) in users.iter().enumerate() {
        let out: u128 = outs
            .iter()
            .filter(|o| o.0 == i)
            .map(|o| u128::from(o.2))
            .sum();
        let left = u128::from(PEG_IN) * waves as u128 - out;
        assert_eq!(peg.sbtc_balance(&u.stx), left, "{}", u.name);
        supply_left += left;
    }
    let supply = peg.stacks.with(|s| s.model.supply);
    assert_eq!(supply, supply_left);
    println!(
        "{kills} kills ({kills_mid_work} with ops in flight); {} peg-ins and {} peg-outs each done once",
        ins.len(),
        outs.len()
    );
}
