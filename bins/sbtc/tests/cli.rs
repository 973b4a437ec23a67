//! The `sbtc` binary against fake nodes and a fake coordinator on 127.0.0.1
//! (`http-fixture`): `status` prints what the coordinator's `/ops/TXID`
//! holds and names every failure; `deposit` refuses when too few of the
//! user's signers attest the peg wallet key, and otherwise builds exactly the
//! peg-in the coordinator parses; `withdraw` sizes the fee output by the peg
//! rules; keys never come from the command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, Transaction};
use frost_net::messages::Message;
use frost_net::{Attestation, Codec, Sender, SignerFile};
use http_fixture::{FixtureServer, Reply, Request};
use peg_ops::wire::{parse_transaction, Position};
use peg_ops::{BurnHeight, PegOp};
use peg_user::UserKey;
use serde_json::{json, Value};
use stacks_wire::{StacksNetwork, Value as Clarity};

const TXID: &str = "3cb72d80fcbca3abf5bec08646145872370c03404ac551340d9a33a6ba936eac";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn user() -> UserKey {
    UserKey::new(SecretKey::from_slice(&[0x42; 32]).unwrap())
}

fn stacks_user() -> UserKey {
    UserKey::new(SecretKey::from_slice(&[0x43; 32]).unwrap())
}

fn peg_key() -> PublicKey {
    SecretKey::from_slice(&[0x50; 32])
        .unwrap()
        .public_key(&Secp256k1::new())
}

/// A configuration folder: the sample `conf/sbtc.toml` and `conf/signer.toml`
/// with the given URLs, the allowlist naming our users.
fn config(dir: &Path, coordinator: &str, stacks: &str, bitcoind: &str) -> PathBuf {
    let sample = std::fs::read_to_string(repo().join("conf/sbtc.toml")).unwrap();
    let text = sample
        .replace("http://127.0.0.1:9181", coordinator)
        .replace("http://127.0.0.1:20443", stacks)
        .replace("http://127.0.0.1:18443", bitcoind);
    assert_ne!(text, sample);
    std::fs::write(dir.join("sbtc.toml"), text).unwrap();
    std::fs::copy(repo().join("conf/signer.toml"), dir.join("signer.toml")).unwrap();
    let (u, s) = (user(), stacks_user());
    std::fs::write(
        dir.join("allowlist.toml"),
        format!(
            "stacks = [\"{}\", \"{}\"]\nbitcoin = [\"{}\"]\n",
            u.stacks_address(StacksNetwork::Testnet),
            s.stacks_address(StacksNetwork::Testnet),
            u.btc_address(Network::Regtest)
        ),
    )
    .unwrap();
    dir.join("sbtc.toml")
}

fn sbtc(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sbtc"));
    c.arg("--config").arg(config).args(args);
    c.env_remove("SBTC_BTC_KEY").env_remove("SBTC_STACKS_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[test]
fn status_prints_the_coordinators_record_of_an_op() {
    let record = json!({
        "txid": TXID, "kind": "peg_in", "state": "done", "amount_sats": 1_000_000,
        "recipient": "ST2VXKC3A1APQRSFHRCFW563MVVM86C41WXC5PWCJ",
        "events": [
            {"at_unix": 1_796_131_732u64, "state": "accepted"},
            {"at_unix": 1_796_131_733u64, "state": "stacks_tx_signed",
             "stacks_txid": "0x77aa"},
            {"at_unix": 1_796_131_740u64, "state": "done"}
        ]
    });
    let body = record.to_string();
    let coordinator = FixtureServer::start(move |r: &Request| match r.path.as_str() {
        p if p == format!("/ops/{TXID}") => Reply::json(200, body.clone()),
        p if p.starts_with("/ops/") => Reply::json(404, r#"{"error":"no such op"}"#),
        _ => Reply::text(404, "try /health, /status, /metrics or /attestations\n"),
    });
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &coordinator.url(),
        &closed_port(),
        &closed_port(),
    );
    let o = sbtc(&c, &["status", TXID], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        format!("txid           {TXID}"),
        "kind           peg_in".into(),
        "state          done".into(),
        "amount (sats)  1000000".into(),
        "recipient      ST2VXKC3A1APQRSFHRCFW563MVVM86C41WXC5PWCJ".into(),
        "2026-12-01 13:28:52 UTC  accepted".into(),
        "2026-12-01 13:28:53 UTC  stacks_tx_signed  stacks tx 0x77aa".into(),
        "2026-12-01 13:29:00 UTC  done".into(),
    ] {
        assert!(out.contains(&line), "{line:?} missing from\n{out}");
    }
    assert!(!out.contains("reason"), "{out}");
    let o = sbtc(&c, &["status", TXID, "--json"], &[]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, record);

    // Unknown to the coordinator: its JSON 404.
    let other = "00".repeat(32);
    let o = sbtc(&c, &["status", &other], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("knows no op {other}")),
        "{}",
        stderr(&o)
    );
    // Not a txid: refused before asking anything.
    let o = sbtc(&c, &["status", "nope"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn status_names_the_url_of_every_failure() {
    let dir = tempfile::tempdir().unwrap();
    let old = FixtureServer::start(|_| {
        Reply::text(404, "try /health, /status, /metrics or /attestations\n")
    });
    let c = config(dir.path(), &old.url(), &closed_port(), &closed_port());
    let e = stderr(&sbtc(&c, &["status", TXID], &[]));
    assert!(
        e.contains("does not serve /ops/TXID") && e.contains(&old.url()),
        "{e}"
    );

    let broken = FixtureServer::start(|_| Reply::text(500, "boom"));
    let c = config(dir.path(), &broken.url(), &closed_port(), &closed_port());
    let o = sbtc(&c, &["status", TXID], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("answered http 500: boom"),
        "{}",
        stderr(&o)
    );

    let garbage = FixtureServer::start(|_| Reply::json(200, "{not json"));
    let c = config(dir.path(), &garbage.url(), &closed_port(), &closed_port());
    let o = sbtc(&c, &["status", TXID], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not JSON"), "{}", stderr(&o));

    let gone = closed_port();
    let c = config(dir.path(), &gone, &closed_port(), &closed_port());
    let o = sbtc(&c, &["status", TXID], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("GET {gone}/ops/{TXID}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn keys_come_from_files_the_environment_or_stdin_never_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &closed_port(), &closed_port(), &closed_port());
    let wif = user().wif(Network::Regtest);
    let recipient = user().stacks_address(StacksNetwork::Testnet).to_string();
    let o = sbtc(
        &c,
        &[
            "deposit",
            "--amount",
            "1",
            "--recipient",
            &recipient,
            "--btc-key",
            &wif,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "no such option: {}", stderr(&o));
    let o = sbtc(
        &c,
        &["deposit", "--amount", "1000", "--recipient", &recipient],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--btc-key-file") && e.contains("SBTC_BTC_KEY"),
        "{e}"
    );
    let o = sbtc(
        &c,
        &["deposit", "--amount", "1000", "--recipient", &recipient],
        &[("SBTC_BTC_KEY", "not-a-key-at-all")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("SBTC_BTC_KEY") && !stderr(&o).contains("not-a-key"),
        "{}",
        stderr(&o)
    );
    let o = sbtc(
        &c,
        &[
            "withdraw",
            "--amount",
            "1000",
            "--to",
            "x",
            "--btc-key-file",
            "-",
            "--stacks-key-file",
            "-",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("only one key can come from stdin"),
        "{}",
        stderr(&o)
    );
    // A configuration that names a missing signer set file is bad usage.
    std::fs::remove_file(dir.path().join("signer.toml")).unwrap();
    let o = sbtc(&c, &["status", TXID], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("signer_set_file"), "{}", stderr(&o));
}

/// The demo signers of `conf/signer.toml` (their keys are in the file).
fn attestations(file: &SignerFile, signers: &[u32], key: PublicKey) -> String {
    let codec = Codec::new(file);
    let items: Vec<Value> = signers
        .iter()
        .map(|&id| {
            let s = file.set.signer(id).unwrap();
            let sk = SecretKey::from_slice(&hex::decode(s.private_key.as_ref().unwrap()).unwrap())
                .unwrap();
            let env = codec
                .seal(
                    Sender::Signer(id),
                    &sk,
                    &Message::Attestation(Attestation {
                        contract: file.contract.clone().unwrap(),
                        key,
                        time: 1,
                    }),
                )
                .unwrap();
            json!({"signer": id, "envelope": hex::encode(env)})
        })
        .collect();
    Value::Array(items).to_string()
}

/// A stacks-node answering the contract's key and balances.
fn stacks_node(balance: u128) -> FixtureServer {
    FixtureServer::start(move |r: &Request| {
        let v = if r.path.ends_with("/get-bitcoin-wallet-public-key") {
            Clarity::Optional(Some(Box::new(Clarity::Buffer(
                peg_key().serialize().to_vec(),
            ))))
        } else if r.path.ends_with("/get-balance") {
            Clarity::Ok(Box::new(Clarity::UInt(balance)))
        } else {
            return Reply::text(404, "no");
        };
        Reply::json(200, json!({"okay": true, "result": v.to_hex()}).to_string())
    })
}

/// A bitcoind holding one 1 BTC coin of `user()`, estimating 5 sat/vB;
/// records what it is sent.
fn bitcoind(sent: Arc<Mutex<Vec<String>>>) -> FixtureServer {
    let script = user()
        .btc_address(Network::Regtest)
        .script_pubkey()
        .to_hex_string();
    FixtureServer::start(move |r: &Request| {
        let req: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let result = match req["method"].as_str().unwrap_or("") {
            "scantxoutset" => json!({"success": true, "height": 300, "unspents": [
                {"txid": "11".repeat(32), "vout": 0, "scriptPubKey": script, "amount": 1.0, "height": 100},
                {"txid": "22".repeat(32), "vout": 0, "scriptPubKey": script, "amount": 50.0,
                 "height": 250, "coinbase": true}
            ]}),
            "gettxout" => json!({"confirmations": 201, "value": 1.0,
                "scriptPubKey": {"hex": script}}),
            "estimatesmartfee" => json!({"feerate": 0.00005, "blocks": 6}),
            "sendrawtransaction" => {
                let hex = req["params"][0].as_str().unwrap_or("").to_owned();
                let tx: Transaction = deserialize_hex(&hex).unwrap();
                sent.lock().unwrap().push(hex);
                json!(tx.compute_txid().to_string())
            }
            m => return Reply::json(200, json!({"result": null, "error": {"code": -32601, "message": format!("no {m}")}, "id": req["id"]}).to_string()),
        };
        Reply::json(
            200,
            json!({"result": result, "error": null, "id": req["id"]}).to_string(),
        )
    })
}

fn at() -> Position {
    Position {
        height: BurnHeight(1),
        block_hash: BlockHash::all_zeros(),
        vtxindex: 1,
    }
}

#[test]
fn deposit_pays_only_into_a_key_a_threshold_of_the_users_signers_attests() {
    let dir = tempfile::tempdir().unwrap();
    let file = SignerFile::load(&repo().join("conf/signer.toml")).unwrap();
    assert_eq!(file.set.threshold, 2);
    let served = Arc::new(Mutex::new(attestations(&file, &[3], peg_key())));
    let s2 = served.clone();
    let coordinator = FixtureServer::start(move |r: &Request| match r.path.as_str() {
        "/attestations" => Reply::json(200, s2.lock().unwrap().clone()),
        _ => Reply::text(404, "no"),
    });
    let stacks = stacks_node(0);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let btc = bitcoind(sent.clone());
    let c = config(dir.path(), &coordinator.url(), &stacks.url(), &btc.url());
    let wif = user().wif(Network::Regtest);
    let key = [("SBTC_BTC_KEY", wif.as_str())];
    let recipient = stacks_user()
        .stacks_address(StacksNetwork::Testnet)
        .to_string();
    let deposit = |extra: &[&str]| {
        let mut a = vec!["deposit", "--amount", "2000000", "--recipient", &recipient];
        a.extend_from_slice(extra);
        sbtc(&c, &a, &key)
    };

    // One signer of three (one key id each), threshold two: refused.
    let o = deposit(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "attested by 1 of the 3 signers of the signer set (1 key ids); 2 key ids needed"
        ),
        "{e}"
    );
    assert!(
        e.contains("nothing paid") && e.contains(&coordinator.url()),
        "{e}"
    );
    assert_eq!(btc.requests(), 0, "the bitcoind was not even asked");
    // A second attestation by the same signer does not count twice; another
    // signer's for another key does not count at all.
    let mut twice: Vec<Value> =
        serde_json::from_str(&attestations(&file, &[3, 3], peg_key())).unwrap();
    let other = SecretKey::from_slice(&[0x51; 32])
        .unwrap()
        .public_key(&Secp256k1::new());
    twice.extend(serde_json::from_str::<Vec<Value>>(&attestations(&file, &[1], other)).unwrap());
    *served.lock().unwrap() = Value::Array(twice).to_string();
    assert_eq!(deposit(&[]).status.code(), Some(3));
    assert_eq!(btc.requests(), 0);

    // Two signers: the peg-in to the attested key's address, as the
    // coordinator parses it; --print does not broadcast.
    *served.lock().unwrap() = attestations(&file, &[1, 3], peg_key());
    let o = deposit(&["--print", "signed"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tx: Transaction = deserialize_hex(stdout(&o).trim()).unwrap();
    let Some(PegOp::PegIn(op)) = parse_transaction(&tx, *b"id", Network::Regtest, at()).unwrap()
    else {
        panic!("not a peg-in")
    };
    assert_eq!(op.recipient.to_string(), recipient);
    assert_eq!(op.amount, Amount::from_sat(2_000_000));
    let peg = peg_rules::peg_wallet_address(&peg_key(), Network::Regtest);
    assert_eq!(op.peg_wallet_address.script_pubkey(), peg.script_pubkey());
    assert_eq!(tx.input.len(), 1, "the immature coinbase is not spent");
    assert_eq!(
        tx.input[0].previous_output.txid.to_string(),
        "11".repeat(32)
    );
    assert!(sent.lock().unwrap().is_empty());
    // Broadcast: the node receives exactly that transaction.
    let o = deposit(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), tx.compute_txid().to_string());
    assert_eq!(sent.lock().unwrap().as_slice(), [serialize_hex(&tx)]);
}

#[test]
fn withdraw_sizes_the_fee_output_by_the_peg_rules_and_signs_with_the_stacks_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = SignerFile::load(&repo().join("conf/signer.toml")).unwrap();
    let body = attestations(&file, &[1, 2], peg_key());
    let coordinator = FixtureServer::start(move |_| Reply::json(200, body.clone()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let btc = bitcoind(sent.clone());
    let to: Address = user().btc_address(Network::Regtest);
    let wif = user().wif(Network::Regtest);
    let stacks_key = dir.path().join("stacks.key");
    std::fs::write(
        &stacks_key,
        hex::encode(stacks_user().secret_key().secret_bytes()),
    )
    .unwrap();
    let run = |stacks: &FixtureServer, amount: &str| {
        let c = config(dir.path(), &coordinator.url(), &stacks.url(), &btc.url());
        sbtc(
            &c,
            &[
                "withdraw",
                "--amount",
                amount,
                "--to",
                &to.to_string(),
                "--stacks-key-file",
                stacks_key.to_str().unwrap(),
                "--print",
                "signed",
            ],
            &[("SBTC_BTC_KEY", wif.as_str())],
        )
    };
    // The requester holds too little sBTC: refused before any BTC moves.
    let poor = stacks_node(299_999);
    let o = run(&poor, "300000");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("request.balance"), "{}", stderr(&o));

    let rich = stacks_node(1_000_000);
    let o = run(&rich, "300000");
    assert!(o.status.success(), "{}", stderr(&o));
    let tx: Transaction = deserialize_hex(stdout(&o).trim()).unwrap();
    let Some(PegOp::PegOutRequest(op)) =
        parse_transaction(&tx, *b"id", Network::Regtest, at()).unwrap()
    else {
        panic!("not a request")
    };
    assert_eq!(op.amount, Amount::from_sat(300_000));
    assert_eq!(op.recipient.script_pubkey(), to.script_pubkey());
    assert_eq!(
        op.requester(StacksNetwork::Testnet).unwrap(),
        stacks_user().stacks_address(StacksNetwork::Testnet)
    );
    let policy = file
        .policy(&repo().join("conf/signer.toml"), Network::Regtest)
        .unwrap();
    let estimate = Some(FeeRate::from_sat_per_kwu(5_000 / 4));
    assert_eq!(
        op.fulfillment_fee,
        peg_rules::required_fee_output(&policy, estimate, &to.script_pubkey())
    );
    assert!(sent.lock().unwrap().is_empty(), "printed, not sent");
}
