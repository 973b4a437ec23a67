//! Stuck ops and the record of what was done, through the real
//! `coordinator-cli` on the devnet (emulated nodes, five guarded signers,
//! three Stacks confirmations, blocks mined by the test):
//!
//! - a peg-out failed by the operator after its burn was broadcast: `queue
//!   retry` refuses while the burn is not final ("wait for 3
//!   confirmations"), then moves it to `burn_confirmed`; it is paid once and
//!   the victim's sBTC burned once;
//! - a peg-in failed after its mint: retried, `done`, minted once; `queue
//!   fail` of a terminal op is refused;
//! - a peg-out failed after its fulfilment was broadcast: `queue retry`
//!   refuses (output 2 is spent) and it is paid once;
//! - `queue show` (text and `--json`) lists the mint/burn Stacks txid and the
//!   payout's Bitcoin txid after `done`; `/ops/{txid}` and `/status` of a
//!   running `coordinator-cli run`, over real HTTP on 127.0.0.1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::{Amount, Txid};
use devnet::peg::MAGIC;
use devnet::{Peg, PegOptions};
use stacks_wire::{Payload, Value};

mod common;
use common::{cli, cli_logging, config_from_next_block, http_get, peg_out, start_peg, text};

/// Runs `command TXID` (`process-peg-in`/`-out`), mining a block on both
/// chains between runs, until it reports `state`; at most 30 runs. Returns
/// what every run printed and logged (at INFO).
fn drive_to(peg: &Peg, config: &Path, command: &str, t: &Txid, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut all = String::new();
    for _ in 0..30 {
        let o = cli_logging(config, &[command, &t.to_string()], "info");
        let unconfirmed = !o.status.success() && text(&o).contains("not confirmed yet");
        assert!(o.status.success() || unconfirmed, "{command}: {}", text(&o));
        all.push_str(&text(&o));
        if String::from_utf8_lossy(&o.stdout).contains(&format!(": {state}")) {
            return all;
        }
        assert!(Instant::now() < deadline, "{command} {t}: {}", text(&o));
        peg.mine();
    }
    panic!("{command} {t} never reached {state}");
}

/// `queue show --json`.
fn show(config: &Path, t: &Txid) -> serde_json::Value {
    let o = cli(config, &["queue", "show", &t.to_string(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn states(v: &serde_json::Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect()
}

/// The Stacks txids of the mined calls of `function` for `txid` that succeeded.
fn mined_calls(peg: &Peg, function: &str, txid: &Txid) -> Vec<String> {
    let arg = peg_queue::peg_ops::contract::txid_arg(txid);
    peg.stacks.with(|s| {
        s.receipts
            .iter()
            .filter(|r| {
                matches!(&r.tx.payload, Payload::ContractCall { function_name, args, .. }
                    if function_name == function && args.contains(&arg))
                    && r.result.as_ref().is_ok_and(|v| matches!(v, Value::Ok(_)))
            })
            .map(|r| r.tx.txid().to_string())
            .collect()
    })
}

/// The txids of the best chain's transactions whose input 0 spends `request`'s output 2.
fn fulfilments(peg: &Peg, request: &Txid) -> Vec<Txid> {
    let from = bitcoin::OutPoint::new(*request, 2);
    peg.bitcoind.with(|b| {
        (0..=b.height())
            .filter_map(|h| b.block(h))
            .flat_map(|blk| blk.txdata.iter())
            .filter(|tx| tx.input.first().map(|i| i.previous_output) == Some(from))
            .map(|tx| tx.compute_txid())
            .collect()
    })
}

#[test]
fn stuck_ops_are_failed_retried_from_what_the_chains_show_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.stacks_confirmations = 3;
    let (peg, wallet) = start_peg(opts);
    let mut users = peg.users(1);
    let alice = &mut users[0];
    let config = config_from_next_block(&peg, &[&*alice]);
    let alice_stx = alice.stx.clone();

    // A peg-in, minted; then failed by hand after its mint was broadcast:
    // retried once the mint is final, it is done (minted once).
    let pegin = peg
        .with_bitcoin(|b| alice.peg_in(b, MAGIC, &wallet, &alice_stx, Amount::from_sat(50_000_000)))
        .unwrap();
    peg.mine();
    drive_to(
        &peg,
        &config,
        "process-peg-in",
        &pegin,
        "stacks_tx_broadcast",
    );
    let o = cli(
        &config,
        &[
            "queue",
            "fail",
            &pegin.to_string(),
            "--reason",
            "mint stuck?",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("stacks_tx_broadcast -> failed"),
        "{}",
        text(&o)
    );
    for _ in 0..3 {
        peg.mine();
    }
    let o = cli_logging(&config, &["queue", "retry", &pegin.to_string()], "info");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("failed -> done"), "{}", text(&o));
    let mints = mined_calls(&peg, "mint!", &pegin);
    assert_eq!(mints.len(), 1);
    // Logged at INFO: the amount, the recipient and the mint's txid.
    let logged = format!(
        "done: 50000000 sats minted to {alice_stx}, mint stacks tx {}",
        mints[0]
    );
    assert!(text(&o).contains(&logged), "{logged} not in {}", text(&o));
    assert_eq!(peg.sbtc_balance(&alice.stx), 50_000_000);
    let v = show(&config, &pegin);
    assert_eq!(v["state"], "done");
    let s = states(&v);
    assert_eq!(s.first().map(String::as_str), Some("detected"));
    assert_eq!(&s[s.len() - 2..], ["failed", "done"]);
    let failed = &v["events"][s.len() - 2];
    assert_eq!(failed["reason"], "operator: mint stuck?");
    // A terminal op is not failed by hand, nor retried.
    let o = cli(
        &config,
        &["queue", "fail", &pegin.to_string(), "--reason", "x"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("terminal"), "{}", text(&o));
    let o = cli(&config, &["queue", "retry", &pegin.to_string()]);
    assert_eq!(o.status.code(), Some(1));

    // A peg-out request failed by hand after its burn was broadcast.
    let request = peg_out(&peg, alice, &wallet, 20_000_000);
    peg.mine();
    drive_to(
        &peg,
        &config,
        "process-peg-out",
        &request,
        "stacks_tx_broadcast",
    );
    let o = cli(
        &config,
        &[
            "queue",
            "fail",
            &request.to_string(),
            "--reason",
            "burn stuck",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Mined, one block deep: not final with three confirmations.
    peg.mine();
    let o = cli(&config, &["queue", "retry", &request.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("wait for 3 confirmations"),
        "{}",
        text(&o)
    );
    assert_eq!(show(&config, &request)["state"], "failed");
    peg.mine();
    peg.mine();
    let o = cli(&config, &["queue", "retry", &request.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("failed -> burn_confirmed"),
        "{}",
        text(&o)
    );
    let log = drive_to(&peg, &config, "process-peg-out", &request, "done");
    let burns = mined_calls(&peg, "burn!", &request);
    assert_eq!(burns.len(), 1, "burned once");
    assert_eq!(
        peg.contract_calls("burn!", &request),
        (1, 0),
        "never a second burn"
    );
    assert_eq!(
        peg.payouts(&request, &alice.btc.script_pubkey()),
        vec![Amount::from_sat(20_000_000)],
        "paid once"
    );
    assert_eq!(peg.sbtc_balance(&alice.stx), 30_000_000);

    // After `done`, the record still names the burn and the payout.
    let paid = fulfilments(&peg, &request);
    assert_eq!(paid.len(), 1);
    // Logged at INFO: the signed payout and, at `done`, burn and payout txids.
    for line in [
        format!(
            "fulfilment of 20000000 sats to {} signed: bitcoin tx {}",
            alice.btc, paid[0]
        ),
        format!(
            "done: 20000000 sats burned and paid to {}, burn stacks tx {}, payout bitcoin tx {}",
            alice.btc, burns[0], paid[0]
        ),
    ] {
        assert!(log.contains(&line), "{line} not in\n{log}");
    }
    let v = show(&config, &request);
    assert_eq!(v["state"], "done");
    assert_eq!(v["amount_sats"], 20_000_000);
    assert_eq!(
        v["recipient"],
        alice.btc.to_string(),
        "the request's recipient"
    );
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["stacks_txid"] == burns[0].as_str()));
    assert!(events
        .iter()
        .any(|e| e["bitcoin_txid"] == paid[0].to_string().as_str()));
    let s = states(&v);
    for st in ["failed", "burn_confirmed", "bitcoin_tx_signed", "done"] {
        assert!(s.iter().any(|x| x == st), "{st} missing from {s:?}");
    }
    let o = cli(&config, &["queue", "show", &request.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    for needle in [
        "20000000 sats".to_owned(),
        alice.btc.to_string(),
        format!("stacks tx {}", burns[0]),
        format!("bitcoin tx {}", paid[0]),
        "(operator: burn stuck)".to_owned(),
    ] {
        assert!(t.contains(&needle), "{needle} missing from\n{t}");
    }

    // A request failed after its fulfilment was broadcast: output 2 is spent
    // (in the mempool), so it is never retried; it is paid once.
    let second = peg_out(&peg, alice, &wallet, 10_000_000);
    peg.mine();
    drive_to(
        &peg,
        &config,
        "process-peg-out",
        &second,
        "bitcoin_tx_broadcast",
    );
    let o = cli(
        &config,
        &[
            "queue",
            "fail",
            &second.to_string(),
            "--reason",
            "payout stuck",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&config, &["queue", "retry", &second.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("output 2"), "{}", text(&o));
    peg.mine();
    let o = cli(&config, &["queue", "retry", &second.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already paid"), "{}", text(&o));
    assert_eq!(
        peg.payouts(&second, &alice.btc.script_pubkey()),
        vec![Amount::from_sat(10_000_000)]
    );
    assert_eq!(peg.contract_calls("burn!", &second), (1, 0));

    // `/ops/{txid}` and `/status` of a running coordinator, over HTTP.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "error")
        .env("SBTC_COORDINATOR__STATUS_LISTEN", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the status endpoint never came up"
        );
        assert!(run.try_wait().unwrap().is_none(), "run exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = http_get(&addr, &format!("/ops/{request}"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "amount_sats",
            "events",
            "kind",
            "recipient",
            "state",
            "txid"
        ]
    );
    assert_eq!(
        (&v["txid"], &v["kind"], &v["state"], &v["amount_sats"]),
        (
            &serde_json::json!(request.to_string()),
            &serde_json::json!("peg_out_request"),
            &serde_json::json!("done"),
            &serde_json::json!(20_000_000)
        )
    );
    let events = v["events"].as_array().unwrap();
    for e in events {
        for k in e.as_object().unwrap().keys() {
            assert!(
                ["at_unix", "state", "stacks_txid", "bitcoin_txid"].contains(&k.as_str()),
                "{k} in {e}"
            );
        }
    }
    assert!(events.iter().any(|e| e["stacks_txid"] == burns[0].as_str()));
    assert!(events
        .iter()
        .any(|e| e["bitcoin_txid"] == paid[0].to_string().as_str()));
    let (code, body) = http_get(&addr, &format!("/ops/{second}"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "operator: payout stuck");
    for path in [
        "/ops/0000000000000000000000000000000000000000000000000000000000000000",
        "/ops/nonsense",
    ] {
        let (code, body) = http_get(&addr, path);
        assert_eq!(code, 404, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string(), "{body}");
    }
    // The loop fills `/status` after its first tick.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(&addr, "/status");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let recent = v["recent_events"].as_array().unwrap();
        if !recent.is_empty() {
            assert!(recent.len() <= 50);
            assert!(recent
                .iter()
                .any(|e| e["txid"] == second.to_string().as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "no recent events in {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    run.kill().unwrap();
    run.wait().unwrap();
}
