//! The testers' `sbtc` binary against `coordinator-cli devnet --serve`, both
//! run as child processes, as a tester would: alice pegs in with `sbtc
//! deposit` (her key on stdin) and sees the mint with `sbtc balance`; she
//! asks for a peg-out to bob with `sbtc withdraw` (keys from the environment
//! and a file) and bob's address is paid; `balance` agrees with both. With a
//! signer set file of a higher threshold, `deposit` refuses and pays nothing.
//!
//! The same flow runs on Bitcoin Core and a stacks-node (`--real-nodes`)
//! when `BITCOIND_EXE` and `STACKS_NODE_EXE` name them; it skips, saying
//! so, when they are unset.
//!
//! The binaries are the workspace's `target/debug/sbtc` and
//! `target/debug/coordinator-cli` (`scripts/test.sh` builds them first; when
//! one is missing the test builds both with cargo).

#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::hashes::Hash as _;
use bitcoin::{BlockHash, Network, Transaction};
use peg_ops::wire::{parse_transaction, Position};
use peg_ops::{BurnHeight, PegOp};

/// The most the devnet scenario may take before it serves.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// The most a mint or a payout may take once broadcast, or the signers'
/// attestations to reach a new coordinator (signers attest every minute).
const OP_TIMEOUT: Duration = Duration::from_secs(150);

fn bin_dir() -> PathBuf {
    // target/debug/deps/sbtc_cli-HASH → target/debug
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_owned()
}

fn binaries() -> (PathBuf, PathBuf) {
    let dir = bin_dir();
    let (sbtc, cli) = (dir.join("sbtc"), dir.join("coordinator-cli"));
    if !sbtc.is_file() || !cli.is_file() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let st = Command::new(cargo)
            .args(["build", "-p", "sbtc", "-p", "coordinator-cli", "--bins"])
            .status()
            .expect("running cargo build");
        assert!(
            st.success(),
            "cargo build -p sbtc -p coordinator-cli failed"
        );
    }
    assert!(sbtc.is_file(), "{} missing", sbtc.display());
    assert!(cli.is_file(), "{} missing", cli.display());
    (sbtc, cli)
}

/// `coordinator-cli devnet --serve`, stopped (SIGTERM, then SIGKILL) and its
/// state folder removed when dropped.
struct Devnet {
    child: Child,
    lines: Vec<String>,
    state: Option<PathBuf>,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.state {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Devnet {
    fn start(cli: &Path, args: &[&str], log: &Path) -> Devnet {
        let mut child = Command::new(cli)
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("starting coordinator-cli devnet --serve");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the devnet never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut d = Devnet {
            child,
            lines: Vec::new(),
            state: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(dir) = line.split("state in ").nth(1) {
                        d.state = Some(PathBuf::from(dir.trim()));
                    }
                    let done = line.contains("inspect it");
                    d.lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => panic!(
                    "devnet --serve did not start serving within {START_TIMEOUT:?}:\n{}\n{}",
                    d.lines.join("\n"),
                    std::fs::read_to_string(log).unwrap_or_default()
                ),
            }
        }
        d
    }

    /// The words of the served line starting with `label`.
    fn line(&self, label: &str) -> Vec<String> {
        let l = self
            .lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in\n{}", self.lines.join("\n")));
        l.split_whitespace().map(str::to_owned).collect()
    }

    /// A demo user's (Bitcoin address, Stacks address, WIF key), from the
    /// served line `NAME BTC STX key WIF`.
    fn user(&self, name: &str) -> (String, String, String) {
        let w: Vec<&str> = self
            .lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() == 5 && w[0] == name && w[3] == "key")
            .unwrap_or_else(|| panic!("no line for {name} in\n{}", self.lines.join("\n")));
        (w[1].to_owned(), w[2].to_owned(), w[4].to_owned())
    }

    fn sbtc_config(&self) -> PathBuf {
        let w = self.line("testers' sbtc");
        let i = w.iter().position(|x| x == "--config").expect("--config");
        PathBuf::from(&w[i + 1])
    }
}

fn sbtc(
    exe: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Output {
    let mut c = Command::new(exe);
    c.arg("--config").arg(config).args(args);
    c.env_remove("SBTC_BTC_KEY").env_remove("SBTC_STACKS_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("starting sbtc");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("writing stdin");
    }
    child.wait_with_output().expect("sbtc ran")
}

fn ok(o: &Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {out}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `sbtc balance`'s figures: (BTC sats, coin lines, sBTC sats).
fn balance(exe: &Path, config: &Path, args: &[&str]) -> (Option<u64>, Vec<String>, Option<u128>) {
    let mut a = vec!["balance"];
    a.extend_from_slice(args);
    let out = ok(&sbtc(exe, config, &a, &[], None), "sbtc balance");
    let mut btc = None;
    let mut sbtc_sats = None;
    let mut coins = Vec::new();
    for l in out.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["BTC", n, ..] => btc = n.parse().ok(),
            ["sBTC", n, ..] => sbtc_sats = n.parse().ok(),
            [_, _, "sats", ..] => coins.push(l.trim().to_owned()),
            _ => {}
        }
    }
    (btc, coins, sbtc_sats)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + OP_TIMEOUT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what} did not happen within {OP_TIMEOUT:?}");
}

fn at() -> Position {
    Position {
        height: BurnHeight(1),
        block_hash: BlockHash::all_zeros(),
        vtxindex: 1,
    }
}

#[test]
fn a_tester_pegs_in_and_out_with_sbtc_on_devnet_serve() {
    flow(&["devnet", "--serve"]);
}

/// The same on Bitcoin Core and a stacks-node (`devnet --real-nodes --serve`).
#[test]
fn a_tester_pegs_in_and_out_with_sbtc_on_real_nodes() {
    for var in ["BITCOIND_EXE", "STACKS_NODE_EXE"] {
        match std::env::var_os(var) {
            None => {
                eprintln!("skipped: {var} is unset (it names the node binary this test runs)");
                return;
            }
            Some(p) => assert!(
                Path::new(&p).is_file(),
                "{var}={} is not a file",
                p.to_string_lossy()
            ),
        }
    }
    flow(&["devnet", "--real-nodes", "--serve"]);
}

fn flow(devnet_args: &[&str]) {
    let (exe, cli) = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(&cli, devnet_args, &tmp.path().join("devnet.log"));
    let config = devnet.sbtc_config();
    let (alice_btc, alice_stx, alice_wif) = devnet.user("alice");
    let (bob_btc, _, _) = devnet.user("bob");
    let key_env = [("SBTC_BTC_KEY", alice_wif.as_str())];
    // The signers attest the published key within seconds of serving; the
    // coordinator serves what it read from the relay.
    let coordinator = devnet
        .lines
        .iter()
        // The indented "coordinator  URL" line of what it serves (not the
        // summary's "coordinator transactions mined").
        .find(|l| l.starts_with("   coordinator ") && l.contains("http://"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the coordinator's URL")
        .to_owned();
    let attestations = format!("{coordinator}/attestations");
    wait_for("the signers' attestations", || {
        ureq::get(&attestations)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .is_some_and(|v| v.len() >= 3)
    });

    // After the scenario alice holds 0.6 sBTC.
    let (alice_sats, _, alice_sbtc) = balance(
        &exe,
        &config,
        &["--principal", &alice_stx, "--address", &alice_btc],
    );
    assert_eq!(alice_sbtc, Some(60_000_000));
    let alice_sats = alice_sats.expect("alice's BTC");

    // --print signed: the peg-in the coordinator would see, not broadcast.
    let printed = ok(
        &sbtc(
            &exe,
            &config,
            &[
                "deposit",
                "--amount",
                "1000000",
                "--recipient",
                &alice_stx,
                "--print",
                "signed",
            ],
            &key_env,
            None,
        ),
        "deposit --print signed",
    );
    let tx: Transaction = deserialize_hex(printed.trim()).expect("a transaction in hex");
    let Some(PegOp::PegIn(op)) = parse_transaction(&tx, *b"id", Network::Regtest, at()).unwrap()
    else {
        panic!("not a peg-in: {tx:?}")
    };
    assert_eq!(op.recipient.to_string(), alice_stx);
    assert_eq!(op.amount.to_sat(), 1_000_000);
    assert!(tx.input.iter().all(|i| i.witness.len() == 2), "signed");
    let unsigned = ok(
        &sbtc(
            &exe,
            &config,
            &[
                "deposit",
                "--amount",
                "1000000",
                "--recipient",
                &alice_stx,
                "--print",
                "unsigned",
            ],
            &key_env,
            None,
        ),
        "deposit --print unsigned",
    );
    let utx: Transaction = deserialize_hex(unsigned.trim()).unwrap();
    assert!(utx.input.iter().all(|i| i.witness.is_empty()), "unsigned");
    assert_eq!(utx.compute_txid(), tx.compute_txid());

    // The peg-in, alice's key on stdin.
    let out = ok(
        &sbtc(
            &exe,
            &config,
            &[
                "deposit",
                "--amount",
                "1000000",
                "--recipient",
                &alice_stx,
                "--btc-key-file",
                "-",
            ],
            &[],
            Some(&format!("{alice_wif}\n")),
        ),
        "deposit",
    );
    assert_eq!(out.trim().len(), 64, "a txid: {out}");
    wait_for("alice's mint", || {
        balance(&exe, &config, &["--principal", &alice_stx]).2 == Some(61_000_000)
    });

    // The peg-out request to bob: Stacks key from a file, BTC key from the
    // environment.
    let stacks_key_file = tmp.path().join("stacks.key");
    std::fs::write(&stacks_key_file, format!("{alice_wif}\n")).unwrap();
    let (bob_before, bob_coins_before, _) = balance(&exe, &config, &["--address", &bob_btc]);
    let bob_before = bob_before.expect("bob's BTC");
    let o = sbtc(
        &exe,
        &config,
        &[
            "withdraw",
            "--amount",
            "500000",
            "--to",
            &bob_btc,
            "--stacks-key-file",
            stacks_key_file.to_str().unwrap(),
        ],
        &key_env,
        None,
    );
    let request = ok(&o, "withdraw").trim().to_owned();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("fee output"), "{said}");
    // Burned on Stacks, then paid on Bitcoin: bob gets the request's dust
    // output and exactly the amount, in a new coin.
    wait_for("alice's burn", || {
        balance(&exe, &config, &["--principal", &alice_stx]).2 == Some(60_500_000)
    });
    wait_for("the payout to bob", || {
        let (sats, coins, _) = balance(&exe, &config, &["--address", &bob_btc]);
        let known = |c: &String| {
            bob_coins_before
                .iter()
                .any(|b| b.split_whitespace().next() == c.split_whitespace().next())
        };
        sats == Some(bob_before + 294 + 500_000)
            && coins
                .iter()
                .any(|c| c.contains(" 500000 sats") && !known(c))
    });
    assert!(
        coins_have(
            &balance(&exe, &config, &["--address", &bob_btc]).1,
            &request,
            294
        ),
        "the request's dust output to bob"
    );
    // `sbtc status` follows the request through the coordinator's /ops:
    // done, with the burn's Stacks txid and the payout's Bitcoin txid.
    let mut last = String::new();
    wait_for("the request done in sbtc status", || {
        let o = sbtc(&exe, &config, &["status", &request, "--json"], &[], None);
        last = String::from_utf8_lossy(&o.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| v["state"] == "done")
    });
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["txid"], request.as_str(), "{v}");
    assert_eq!(v["amount_sats"], 500_000, "{v}");
    let events = v["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["stacks_txid"].is_string()), "{v}");
    assert!(events.iter().any(|e| e["bitcoin_txid"].is_string()), "{v}");
    let text = ok(
        &sbtc(&exe, &config, &["status", &request], &[], None),
        "status",
    );
    assert!(text.contains("done"), "{text}");

    // Alice paid the peg-in, the request's dust and fee outputs and two miner fees.
    let (alice_now, _, _) = balance(&exe, &config, &["--address", &alice_btc]);
    let spent = alice_sats - alice_now.expect("alice's BTC");
    assert!(
        spent > 1_000_000 + 294 && spent < 1_000_000 + 294 + 20_000,
        "alice spent {spent}"
    );

    // A signer set file asking a higher threshold: the attestations the
    // coordinator serves do not convince it; nothing is paid.
    let dir = config.parent().unwrap();
    let signers = std::fs::read_to_string(dir.join("signers/signer.toml")).unwrap();
    assert!(signers.contains("threshold = 3\n"), "{signers}");
    std::fs::write(
        dir.join("signers/strict.toml"),
        signers.replace("threshold = 3\n", "threshold = 4\n"),
    )
    .unwrap();
    let strict = dir.join("strict.toml");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("signers/signer.toml", "signers/strict.toml"),
    )
    .unwrap();
    let before = balance(&exe, &config, &["--address", &alice_btc]).0;
    let o = sbtc(
        &exe,
        &strict,
        &["deposit", "--amount", "1000000", "--recipient", &alice_stx],
        &key_env,
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("attested by 0 of the 5 signers") && err.contains("4 key ids needed"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "no txid printed");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        balance(&exe, &config, &["--address", &alice_btc]).0,
        before,
        "nothing paid"
    );
}

/// Whether `coins` (balance lines) hold output of `txid` worth `sats`.
fn coins_have(coins: &[String], txid: &str, sats: u64) -> bool {
    coins
        .iter()
        .any(|c| c.starts_with(txid) && c.contains(&format!(" {sats} sats")))
}
