//! `coordinator-cli devnet --real-nodes` and the coordinator process on real
//! nodes (Bitcoin Core regtest, a stacks-node in mocknet). Each test skips,
//! printing why, when `BITCOIND_EXE` or `STACKS_NODE_EXE` is unset.

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
