//! `coordinator-cli devnet --real-nodes` and the coordinator process on real
//! nodes (Bitcoin Core regtest, a stacks-node in mocknet): SIGKILLed and
//! restarted while peg-ins and a peg-out go through, every op done once.
//! Each test skips, printing why, when `BITCOIND_EXE` or `STACKS_NODE_EXE`
//! is unset.

#![allow(clippy::print_stdout)]

use std::process::Command;

fn real_nodes_configured() -> bool {
    for var in ["BITCOIND_EXE", "STACKS_NODE_EXE"] {
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            println!("skipped: {var} is not set");
            return false;
        }
    }
    true
}

#[test]
fn the_devnet_scenario_passes_every_check_on_real_nodes() {
    if !real_nodes_configured() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .args(["devnet", "--real-nodes"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    for line in [
        "bitcoind (Core)",
        "[ok] alice paid exactly 0.40000000 BTC once, to their scriptPubKey",
        "[ok] bob paid exactly 0.20000000 BTC once, to their scriptPubKey",
        "[ok] mallory's peg-in rejected: not on the allowlist",
        "[ok] one mint per allowed peg-in, one burn per peg-out, nothing repeated",
        "[ok] sBTC supply = pegged in (1.75) − pegged out (0.6)",
    ] {
        assert!(stdout.contains(line), "{line} missing from\n{stdout}");
    }
}

#[test]
fn devnet_real_nodes_refuses_a_missing_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .args([
            "devnet",
            "--real-nodes",
            "--bitcoind",
            "/nonexistent/bitcoind",
            "--stacks-node",
            "/nonexistent/stacks-node",
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/bitcoind"), "{stderr}");
}

/// A `coordinator-cli run` process, SIGKILLed on drop (also on panic).
struct Coordinator(std::process::Child);

impl Coordinator {
    fn spawn(config: &std::path::Path, log: &std::path::Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Coordinator(
            Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
                .arg("--config")
                .arg(config)
                .arg("run")
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // Child::kill is SIGKILL on Unix.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sigkilled_coordinator_process_does_every_op_once_on_real_nodes() {
    use bitcoin::{Amount, Txid};
    use devnet::peg::MAGIC;
    use devnet::real_peg::demo_users;
    use devnet::{RealPeg, RealPegOptions, RealPegStart};
    use peg_queue::{OpState, PegQueue, SqlitePegQueue};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let peg = match RealPeg::start(RealPegOptions::new(dir.path())).unwrap() {
        RealPegStart::Started(p) => p,
        RealPegStart::Skipped(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let fail = |what: &str| -> ! {
        let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default();
        let from = log.len().saturating_sub(4000);
        panic!(
            "{what}\n--- coordinator ---\n{}\n{}",
            log.get(from..).unwrap_or(""),
            peg.log_tails()
        )
    };
    peg.publish_key()
        .unwrap_or_else(|e| fail(&format!("{e:#}")));
    let wallet = peg.peg_wallet().unwrap();
    let mut users: Vec<_> = demo_users().into_iter().take(3).collect();
    peg.fund_users(&mut users).unwrap();
    let from = peg.bitcoin_height().unwrap();
    let nonce_before = peg.coordinator_nonce().unwrap();
    let allowed: Vec<_> = users.iter().collect();
    let config = peg.write_config(&allowed, from + 1).unwrap();
    let log = dir.path().join("coordinator.log");
    let queue = SqlitePegQueue::open(&peg.queue_path()).unwrap();
    let _miner = peg.miner(Duration::from_millis(200));

    let mut child = Some(Coordinator::spawn(&config, &log));
    let mut kills = 0usize;
    // Kills the process every 150-450 ms (after the first 10 kills of a
    // wave, every 1-3 s: a payout's signing round, every signer checking it
    // on its own nodes first, must fit between two kills) and starts a new
    // one, until the ops are done (false when 90 s pass first).
    let mut kill_until_done = |ts: &[Txid], kills: &mut usize| -> bool {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut wait = 150u64;
        let mut in_wave = 0u64;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(wait));
            in_wave += 1;
            wait = if in_wave < 10 {
                150 + (wait * 7 + 130) % 300
            } else {
                1_000 + (wait * 7 + 130) % 2_000
            };
            let finished = ts
                .iter()
                .all(|t| queue.get(t).ok().flatten().map(|o| o.state) == Some(OpState::Done));
            if finished {
                return true;
            }
            drop(child.take()); // SIGKILL
            *kills += 1;
            child = Some(Coordinator::spawn(&config, &log));
        }
        false
    };
    let mut ins = Vec::new();
    for (u, sats) in users
        .iter_mut()
        .zip([100_000_000u64, 50_000_000, 25_000_000])
    {
        let to = u.stx.clone();
        ins.push(
            u.peg_in_with(
                |tx| peg.send(tx),
                MAGIC,
                &wallet,
                &to,
                Amount::from_sat(sats),
            )
            .unwrap(),
        );
    }
    if !kill_until_done(&ins, &mut kills) {
        fail("the peg-ins did not finish within 90 s");
    }
    let out = users[0]
        .peg_out_with(
            |tx| peg.send(tx),
            MAGIC,
            &wallet,
            Amount::from_sat(40_000_000),
            Amount::from_sat(20_000),
        )
        .unwrap();
    if !kill_until_done(&[out], &mut kills) {
        fail("the peg-out did not finish within 90 s");
    }
    drop(child.take());
    println!("{kills} SIGKILLs");
    // Exactly once: three mints and one burn mined (no call repeated), one
    // payout of exactly the amount to alice's scriptPubKey.
    for (u, want) in users.iter().zip([60_000_000u128, 50_000_000, 25_000_000]) {
        assert_eq!(peg.sbtc_balance(&u.stx).unwrap(), want, "{}", u.name);
    }
    assert_eq!(peg.sbtc_supply().unwrap(), 135_000_000);
    // No call repeated: the coordinator's nonce moved once per mint or burn
    // transaction the ops ended with (a `mint-many!` counts once for every
    // peg-in it carries; how the three peg-ins were batched depends on
    // where the kills fell).
    let mut final_txs = std::collections::BTreeSet::new();
    for t in ins.iter().chain([&out]) {
        let last = queue
            .history(t)
            .unwrap()
            .into_iter()
            .rev()
            .find(|e| e.state == "stacks_tx_broadcast")
            .and_then(|e| e.stacks_txid);
        final_txs.insert(last.expect("every op broadcast a Stacks transaction"));
    }
    let calls = peg.coordinator_nonce().unwrap() - nonce_before;
    assert_eq!(calls, final_txs.len() as u64, "{final_txs:?}");
    assert!(
        (2..=4).contains(&calls),
        "{calls} transactions for 3 mints and a burn"
    );
    assert_eq!(
        peg.payouts(&out, &users[0].btc.script_pubkey(), from)
            .unwrap(),
        vec![Amount::from_sat(40_000_000)]
    );
    assert!(kills >= 4, "only {kills} kills: the test did not test much");
    println!("SIGKILL test on real nodes in {:?}", started.elapsed());
}
