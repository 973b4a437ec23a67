//! The binary as an operator meets it: exit codes and messages.

use std::path::{Path, PathBuf};

use std::process::{Command, Output};

fn conf(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conf")
        .join(file)
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let o = cli(&["--help"], &[]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for c in [
        "run",
        "dkg",
        "dkg-sign",
        "process-peg-in",
        "process-peg-out",
        "status",
    ] {
        assert!(out.contains(c), "{c} missing from help:\n{out}");
    }
}

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let o = cli(&["--config", "/nonexistent/coordinator.toml", "run"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/coordinator.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_field_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(conf("coordinator.toml"))
        .unwrap()
        .replace("http://127.0.0.1:20443", "not a url")
        .replace("\"signer.toml\"", &format!("{:?}", conf("signer.toml")))
        .replace(
            "\"allowlist.toml\"",
            &format!("{:?}", conf("allowlist.toml")),
        );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let o = cli(&["--config", path.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("stacks_node_url") && e.contains("not an http"),
        "{e}"
    );
}

#[test]
fn an_environment_override_is_checked_like_the_file() {
    let o = cli(
        &[
            "--config",
            conf("coordinator.toml").to_str().unwrap(),
            "run",
        ],
        &[("SBTC_COORDINATOR__STACKS_PRIVATE_KEY", "zz")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    // Named by the variable that set it, not only by the file's key.
    assert!(
        e.contains("SBTC_COORDINATOR__STACKS_PRIVATE_KEY (environment, overriding stacks_private_key): is not hex"),
        "{e}"
    );
    assert!(!e.contains("11468a462ac5b1df92ca"), "a secret leaked: {e}");
}

/// A config whose data directory is `dir` and whose nodes are all down.
fn config_in(dir: &Path) -> PathBuf {
    let dead = "http://127.0.0.1:9";
    let text = std::fs::read_to_string(conf("coordinator.toml"))
        .unwrap()
        .replace("\"../data\"", &format!("{:?}", dir.join("data")))
        .replace("http://127.0.0.1:20443", dead)
        .replace("http://127.0.0.1:18443", dead)
        .replace("http://127.0.0.1:3000", dead)
        .replace("rpc_timeout_ms = 10000", "rpc_timeout_ms = 500")
        .replace("\"signer.toml\"", &format!("{:?}", conf("signer.toml")))
        .replace(
            "\"allowlist.toml\"",
            &format!("{:?}", conf("allowlist.toml")),
        );
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn status_and_queue_on_a_data_directory_that_does_not_exist_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    std::fs::remove_dir(dir.path().join("data")).unwrap();
    for args in [
        &["status"][..],
        &["queue", "list"],
        &["queue", "show", &"0".repeat(64)],
    ] {
        let mut all = vec!["--config", c.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = cli(&all, &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("data directory") && stderr(&o).contains("does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!dir.path().join("data").exists(), "{args:?} created it");
    }
}

/// `run` waits for its nodes (see tests/ops.rs); with `startup_wait_secs`
/// it gives up, naming the URL and the time it waited.
#[test]
fn run_without_reachable_services_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let began = std::time::Instant::now();
    let o = cli(
        &["--config", c.to_str().unwrap(), "run"],
        &[("SBTC_COORDINATOR__STARTUP_WAIT_SECS", "1")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("the stacks-node at http://127.0.0.1:9 did not answer after waiting 1."),
        "{e}"
    );
    assert!(
        e.contains("waiting for the stacks-node at http://127.0.0.1:9"),
        "{e}"
    );
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
}

/// A file with its `network` line removed: today it ran on testnet.
#[test]
fn a_missing_network_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("network = \"regtest\"", "");
    std::fs::write(&c, text).unwrap();
    let o = cli(&["--config", c.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("network: is required"),
        "{}",
        stderr(&o)
    );
}

/// Today a TOML syntax error printed the line, key and all.
#[test]
fn a_toml_syntax_error_never_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let key = "11468a462ac5b1df92cacf04a65179ecd02f514196909f7dbc63abae88ba05c6";
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace(&format!("{key}01\""), &format!("{key}01"));
    std::fs::write(&c, text).unwrap();
    let o = cli(&["--config", c.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(!e.contains(&key[..12]), "the key leaked: {e}");
    assert!(
        e.contains("line ") && e.contains("stacks_private_key"),
        "{e}"
    );
}

/// Today one type error was reported per run, and an environment override
/// was named by the file's key.
#[test]
fn every_type_error_in_one_run_env_ones_by_variable() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("ops = 1", "ops = \"one\"")
        .replace("poll_interval_ms = 5000", "poll_interval_ms = true");
    std::fs::write(&c, text).unwrap();
    let o = cli(
        &["--config", c.to_str().unwrap(), "status"],
        &[("SBTC_COORDINATOR__RELAY__SIGN_TIMEOUT_MS", "soon")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for f in [
        "confirmations.ops",
        "poll_interval_ms",
        "SBTC_COORDINATOR__RELAY__SIGN_TIMEOUT_MS",
    ] {
        assert!(e.contains(f), "{f} missing: {e}");
    }
    let c = config_in(dir.path());
    let o = cli(
        &["--config", c.to_str().unwrap(), "status"],
        &[("SBTC_COORDINATOR__STACKS_NODE_URL", "nowhere")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("SBTC_COORDINATOR__STACKS_NODE_URL (environment, overriding stacks_node_url)"),
        "{e}"
    );
}

/// Today the first bad allowlist entry stopped the check; now all are named.
#[test]
fn every_bad_allowlist_entry_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(conf("signer.toml"), dir.path().join("signer.toml")).unwrap();
    std::fs::write(
        dir.path().join("allowlist.toml"),
        "stacks = [\"not-a-principal\"]\nbitcoin = [\"bc1-bad\", \"also-bad\"]\n",
    )
    .unwrap();
    let c = config_in(dir.path());
    let text = std::fs::read_to_string(&c).unwrap().replace(
        &format!("{:?}", conf("signer.toml")),
        &format!("{:?}", dir.path().join("signer.toml")),
    );
    std::fs::write(&c, text).unwrap();
    let o = cli(&["--config", c.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for bad in ["not-a-principal", "bc1-bad", "also-bad"] {
        assert!(e.contains(bad), "{bad} missing: {e}");
    }
}

#[test]
fn status_reports_what_it_can_and_names_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let o = cli(&["--config", c.to_str().unwrap(), "status", "--json"], &[]);
    // It prints what it could read, then fails naming every node down.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["last_scanned_height"], serde_json::Value::Null);
    assert_eq!(v["ops"]["done"], 0, "every state, 0 too: {v}");
    assert_eq!(
        v["stacks_address"],
        "ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0"
    );
    assert_eq!(v["stx_balance"], serde_json::Value::Null, "{v}");
    for node in ["bitcoind", "stacks-node", "relay"] {
        assert_eq!(v["nodes"][node]["up"], false, "{v}");
        assert!(
            stderr(&o).contains(&format!("{node} at http://127.0.0.1:9")),
            "{node}: {}",
            stderr(&o)
        );
    }
    assert!(
        v["nodes"]["stacks-node"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{v}"
    );
    // The text summary too: aligned, DOWN named, exit 1.
    let o = cli(&["--config", c.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("bitcoind               DOWN    http://127.0.0.1:9")),
        "{out}"
    );
    assert!(out.contains("sBTC supply            unknown"), "{out}");
}

#[test]
fn queue_commands_on_an_empty_queue() {
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let c = c.to_str().unwrap();
    let o = cli(&["--config", c, "queue", "list", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let txid = "d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771";
    let o = cli(&["--config", c, "queue", "retry", txid], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no operation"), "{}", stderr(&o));
    assert!(dir.path().join("data/queue.sqlite").exists());
}

#[test]
fn a_malformed_txid_is_a_usage_error() {
    let o = cli(&["process-peg-in", "not-a-txid"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not-a-txid"), "{}", stderr(&o));
}

#[test]
fn queue_retry_sends_a_rejected_op_back_to_validation() {
    use peg_queue::{OpState, PegQueue, SqlitePegQueue};
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(dir.path());
    let op: peg_queue::peg_ops::PegOp = serde_json::from_value(serde_json::json!({
        "kind": "peg_in", "amount": 1337, "block_height": 218,
        "burn_header_hash": "3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4",
        "memo": "", "peg_wallet_address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        "recipient": "ST2QPWVRY7F6P4T3S4GZKGWKN1N2VQSMPQSG22CB9",
        "txid": "d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771", "vtxindex": 2
    }))
    .unwrap();
    {
        let q = SqlitePegQueue::open(&dir.path().join("data/queue.sqlite")).unwrap();
        q.insert_op(&op).unwrap();
        q.set_state(
            &op.txid(),
            &OpState::Rejected {
                reason: "not on the allowlist".into(),
            },
        )
        .unwrap();
    }
    let txid = op.txid().to_string();
    let o = cli(&["--config", c.to_str().unwrap(), "queue", "list"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("TXID")
            && out.contains(" rejected ")
            && out.contains("reason: not on the allowlist"),
        "{out}"
    );
    let o = cli(
        &["--config", c.to_str().unwrap(), "queue", "retry", &txid],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("rejected -> detected"));
    let o = cli(
        &[
            "--config",
            c.to_str().unwrap(),
            "queue",
            "show",
            &txid,
            "--json",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "detected");
    assert_eq!(v["op"]["amount"], 1337);
    // A pending op is not retried by hand.
    let o = cli(
        &["--config", c.to_str().unwrap(), "queue", "retry", &txid],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
}

/// A key that moved to the signer set file's `[policy]` and now says
/// something else there stops start-up, naming both places.
#[test]
fn a_fee_key_disagreeing_with_the_signer_set_file_exits_2_naming_both() {
    let o = cli(
        &[
            "--config",
            conf("coordinator.toml").to_str().unwrap(),
            "status",
        ],
        &[("SBTC_COORDINATOR__FEES__BITCOIN_FEE_RATE_FLOOR", "3")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("fees.bitcoin_fee_rate_floor")
            && e.contains("fee_rate_floor = 1")
            && e.contains("signer.toml"),
        "{e}"
    );
}
