//! Against the real stacks-node (mocknet, from `STACKS_NODE_EXE`): the sBTC
//! contract deploys as Clarity 2, and the emulator answers the same requests
//! with the same status, content type and reason as the real node.
//!
//! Without `STACKS_NODE_EXE` every test prints why it is skipped and passes;
//! with it set to a missing file, they fail. Tests print what each node
//! answered (shown on failure): printing is the point here.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bitcoin::secp256k1::SecretKey;
use devnet::stacks_node::{RealNodeOptions, RealStacksNode};
use devnet::{StacksEmulator, StacksState};
use serde_json::{json, Value as Json};
use stacks_node_client::{Error, StacksNode};
use stacks_wire::{
    ClarityVersion, ContractId, Payload, PostConditionMode, PrincipalData, StacksAddress,
    StacksNetwork, StacksPrivateKey, StacksTransaction, Value,
};

fn key(i: u8) -> StacksPrivateKey {
    StacksPrivateKey {
        key: SecretKey::from_slice(&[i; 32]).unwrap(),
        compressed: true,
    }
}

fn addr(i: u8) -> StacksAddress {
    key(i).address(StacksNetwork::Testnet)
}

/// 1 deploys, 2 coordinates, 3 is a user, 4 probes chaining, 6 probes
/// replacement; 5 has no STX.
const DEPLOYER: u8 = 1;
const USER: u8 = 3;
const CHAINER: u8 = 4;
const BROKE: u8 = 5;
const REPLACER: u8 = 6;

fn start_real(block_interval_ms: u64) -> Option<RealStacksNode> {
    let options = RealNodeOptions {
        balances: [1, 2, 3, 4, 6]
            .iter()
            .map(|i| (addr(*i), 10_000_000_000))
            .collect(),
        block_interval_ms,
    };
    match RealStacksNode::start(&options) {
        Ok(Some(n)) => Some(n),
        Ok(None) => {
            println!(
                "skipped: STACKS_NODE_EXE is not set (point it at a stacks-node 4.x binary to run this test)"
            );
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

fn contract() -> ContractId {
    format!("{}.sbtc-alpha", addr(DEPLOYER)).parse().unwrap()
}

fn tx(k: u8, nonce: u64, fee: u64, payload: Payload) -> StacksTransaction {
    let mut t = StacksTransaction::new(
        StacksNetwork::Testnet,
        &key(k),
        nonce,
        fee,
        PostConditionMode::Deny,
        vec![],
        payload,
    )
    .unwrap();
    t.sign(&key(k)).unwrap();
    t
}

fn transfer(k: u8, nonce: u64, fee: u64, amount: u64) -> StacksTransaction {
    tx(
        k,
        nonce,
        fee,
        Payload::TokenTransfer {
            recipient: addr(2).into(),
            amount,
            memo: [0; 34],
        },
    )
}

fn call(
    k: u8,
    nonce: u64,
    fee: u64,
    contract: ContractId,
    f: &str,
    args: Vec<Value>,
) -> StacksTransaction {
    tx(
        k,
        nonce,
        fee,
        Payload::ContractCall {
            contract,
            function_name: f.into(),
            args,
        },
    )
}

/// What a node answered, as the comparison sees it.
#[derive(Debug, Clone, PartialEq)]
struct Reply {
    status: u16,
    content_type: String,
    /// `reason` of a JSON rejection, or the JSON body's kind.
    reason: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Option<Json> {
        serde_json::from_str(&self.body).ok()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build(),
    )
}

fn send(url: &str, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Reply {
    let a = agent();
    let full = format!("{url}{path}");
    let mut resp = if method == "GET" {
        a.get(&full).call().unwrap()
    } else {
        let mut r = a.post(&full);
        if let Some(c) = ctype {
            r = r.header("Content-Type", c);
        }
        r.send(body).unwrap()
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    let reason = serde_json::from_str::<Json>(&body)
        .ok()
        .and_then(|j| j.get("reason").and_then(|r| r.as_str()).map(str::to_owned));
    Reply {
        status,
        content_type,
        reason,
        body,
    }
}

fn post_tx(url: &str, t: &StacksTransaction) -> Reply {
    send(
        url,
        "POST",
        "/v2/transactions",
        Some("application/octet-stream"),
        &t.serialize(),
    )
}

/// A node under test: its URL and how to get a block mined.
trait Target {
    fn url(&self) -> String;
    /// Returns once `who`'s confirmed nonce is at least `nonce`.
    fn mined(&self, who: u8, nonce: u64);
}

impl Target for RealStacksNode {
    fn url(&self) -> String {
        RealStacksNode::url(self).to_owned()
    }
    fn mined(&self, who: u8, nonce: u64) {
        self.wait_for_nonce(&addr(who), nonce, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", self.log_tail(20)));
    }
}

impl Target for StacksEmulator {
    fn url(&self) -> String {
        StacksEmulator::url(self)
    }
    fn mined(&self, _: u8, _: u64) {
        self.with(|s| s.mine());
    }
}

fn confirmed_nonce(url: &str, who: u8) -> u64 {
    let r = send(
        url,
        "GET",
        &format!("/v2/accounts/{}?proof=0", addr(who)),
        None,
        b"",
    );
    r.json().unwrap()["nonce"].as_u64().unwrap()
}

/// Sends the list of requests to `t`; returns each request's name and reply.
fn scenario(t: &dyn Target) -> Vec<(&'static str, Reply)> {
    let url = t.url();
    let u = url.as_str();
    let mut out = Vec::new();
    let mut push = |name: &'static str, r: Reply| {
        println!(
            "{name}: {} {} {:?} {:.300}",
            r.status, r.content_type, r.reason, r.body
        );
        out.push((name, r));
    };
    let c = contract();
    // The user's first transfer, mined: nonce 0 is stale from then on.
    let first = transfer(USER, 0, 1000, 1);
    push("transfer", post_tx(u, &first));
    t.mined(USER, 1);
    push("rebroadcast_of_mined_tx", post_tx(u, &first));

    let valid = transfer(USER, 1, 1000, 2).serialize();
    push(
        "garbage_body",
        send(
            u,
            "POST",
            "/v2/transactions",
            Some("application/octet-stream"),
            b"hello",
        ),
    );
    push(
        "empty_body",
        send(
            u,
            "POST",
            "/v2/transactions",
            Some("application/octet-stream"),
            b"",
        ),
    );
    push(
        "truncated_tx",
        send(
            u,
            "POST",
            "/v2/transactions",
            Some("application/octet-stream"),
            &valid[..valid.len() - 3],
        ),
    );
    let low = transfer(USER, 1, 1, 2);
    push(
        "wrong_content_type",
        send(
            u,
            "POST",
            "/v2/transactions",
            Some("text/plain"),
            &low.serialize(),
        ),
    );
    push(
        "json_tx_body",
        send(
            u,
            "POST",
            "/v2/transactions",
            Some("application/json"),
            json!({"tx": hex::encode(low.serialize())})
                .to_string()
                .as_bytes(),
        ),
    );
    push("fee_too_low", post_tx(u, &low));
    let len = low.serialize().len() as u64;
    push(
        "fee_one_below_per_byte",
        post_tx(u, &transfer(USER, 1, len - 1, 2)),
    );
    push("stale_nonce_low_fee", post_tx(u, &transfer(USER, 0, 1, 3)));
    push("stale_nonce", post_tx(u, &transfer(USER, 0, 1000, 3)));
    push("not_enough_funds", post_tx(u, &transfer(BROKE, 0, 1000, 3)));
    push(
        "transfer_above_balance",
        post_tx(u, &transfer(USER, 1, 1000, 20_000_000_000)),
    );
    let mut wrong_chain = transfer(USER, 1, 1000, 4);
    wrong_chain.chain_id = 0x8000_0001;
    wrong_chain.sign(&key(USER)).unwrap();
    push("wrong_chain_id", post_tx(u, &wrong_chain));
    let mut mainnet = StacksTransaction::new(
        StacksNetwork::Mainnet,
        &key(USER),
        1,
        1000,
        PostConditionMode::Deny,
        vec![],
        Payload::TokenTransfer {
            recipient: addr(2).into(),
            amount: 1,
            memo: [0; 34],
        },
    )
    .unwrap();
    mainnet.sign(&key(USER)).unwrap();
    push("mainnet_tx", post_tx(u, &mainnet));
    let mut bad_sig = transfer(USER, 1, 1000, 5);
    bad_sig.auth.signature[40] ^= 1;
    push("bad_signature", post_tx(u, &bad_sig));
    let nowhere: ContractId = format!("{}.nowhere", addr(DEPLOYER)).parse().unwrap();
    push(
        "no_such_contract",
        post_tx(u, &call(USER, 1, 1000, nowhere.clone(), "mint!", vec![])),
    );
    push(
        "no_such_function",
        post_tx(
            u,
            &call(USER, 1, 1000, c.clone(), "no-such-function", vec![]),
        ),
    );
    push(
        "bad_function_argument",
        post_tx(
            u,
            &call(USER, 1, 1000, c.clone(), "mint!", vec![Value::Int(1)]),
        ),
    );
    push(
        "wrong_argument_count",
        post_tx(
            u,
            &call(USER, 1, 1000, c.clone(), "set-trading-halted", vec![]),
        ),
    );

    // Chaining: nonces up to confirmed + 26 are admitted (gaps allowed),
    // confirmed + 27 is TooMuchChaining.
    let base = confirmed_nonce(u, CHAINER);
    for (name, n) in [
        ("chain_limit_plus_27", 27),
        ("chain_limit_plus_100", 100),
        ("chain_limit_plus_26", 26),
    ] {
        push(name, post_tx(u, &transfer(CHAINER, base + n, 1000, 1)));
    }
    // The minimum fee is exactly 1 µSTX per byte.
    let exact = transfer(CHAINER, base + 3, 0, 1).serialize().len() as u64;
    push(
        "fee_exactly_per_byte",
        post_tx(u, &transfer(CHAINER, base + 3, exact, 1)),
    );

    // Deploys: Clarity 2 is admitted, Clarity 3 is not (epoch 2.1).
    for (name, n, version) in [
        ("deploy_clarity2", 4, ClarityVersion::Clarity2),
        ("deploy_clarity3", 5, ClarityVersion::Clarity3),
    ] {
        let deploy = |fee| {
            tx(
                CHAINER,
                base + n,
                fee,
                Payload::SmartContract {
                    name: "hello".parse().unwrap(),
                    code_body: "(define-read-only (hi) (ok u1))".into(),
                    clarity_version: Some(version),
                },
            )
        };
        let len = deploy(0).serialize().len() as u64;
        push(name, post_tx(u, &deploy(len)));
    }

    // Replacement: a different transaction at a pending nonce needs a
    // higher fee.
    let base = confirmed_nonce(u, REPLACER);
    let gap = base + 5; // never mined: a gap before it
    push("pending", post_tx(u, &transfer(REPLACER, gap, 1000, 1)));
    push(
        "rebroadcast_of_pending_tx",
        post_tx(u, &transfer(REPLACER, gap, 1000, 1)),
    );
    push(
        "same_nonce_same_fee",
        post_tx(u, &transfer(REPLACER, gap, 1000, 2)),
    );
    push(
        "same_nonce_lower_fee",
        post_tx(u, &transfer(REPLACER, gap, 999, 2)),
    );
    push(
        "same_nonce_higher_fee",
        post_tx(u, &transfer(REPLACER, gap, 1001, 2)),
    );

    // Read-only calls.
    let sender = PrincipalData::Standard(addr(USER)).to_string();
    let read = |f: &str, args: Json, sender: &str, contract: &ContractId| {
        send(
            u,
            "POST",
            &format!(
                "/v2/contracts/call-read/{}/{}/{f}",
                contract.address, contract.name
            ),
            Some("application/json"),
            json!({"sender": sender, "arguments": args})
                .to_string()
                .as_bytes(),
        )
    };
    push(
        "call_read_ok",
        read("get-threshold", json!([]), &sender, &c),
    );
    push(
        "call_read_bad_hex",
        read("get-signer-data", json!(["zz"]), &sender, &c),
    );
    push(
        "call_read_bad_sender",
        read("get-threshold", json!([]), "nobody", &c),
    );
    push(
        "call_read_wrong_type",
        read(
            "get-signer-data",
            json!([Value::Int(1).to_hex()]),
            &sender,
            &c,
        ),
    );
    push(
        "call_read_no_such_function",
        read("no-such-function", json!([]), &sender, &c),
    );
    push(
        "call_read_no_such_contract",
        read("get-threshold", json!([]), &sender, &nowhere),
    );

    push(
        "burn_ops",
        send(u, "GET", "/v2/burn_ops/5/peg_in", None, b""),
    );
    push(
        "burn_ops_peg_out",
        send(u, "GET", "/v2/burn_ops/1/peg_out_request", None, b""),
    );
    push(
        "unknown_account",
        send(
            u,
            "GET",
            &format!("/v2/accounts/{}?proof=0", addr(BROKE)),
            None,
            b"",
        ),
    );
    push(
        "bad_account",
        send(u, "GET", "/v2/accounts/nobody?proof=0", None, b""),
    );
    let payload = call(USER, 1, 1000, c.clone(), "get-threshold", vec![]).payload_bytes();
    push(
        "fee_estimate_fresh_chain",
        send(
            u,
            "POST",
            "/v2/fees/transaction",
            Some("application/json"),
            json!({"transaction_payload": hex::encode(&payload), "estimated_len": 200})
                .to_string()
                .as_bytes(),
        ),
    );
    push("info", send(u, "GET", "/v2/info", None, b""));
    push(
        "unknown_path",
        send(u, "GET", "/v2/nothing-here", None, b""),
    );

    // A valid contract call (admitted; mined, it fails: the user is not the
    // owner) and its rebroadcast.
    let valid = call(
        USER,
        1,
        1000,
        c.clone(),
        "set-trading-halted",
        vec![Value::Bool(true)],
    );
    push("valid_contract_call", post_tx(u, &valid));
    push("rebroadcast_of_valid_call", post_tx(u, &valid));
    out
}

/// The JSON fields a comparison looks at, by request.
fn compared(name: &str, r: &Reply) -> Json {
    let j = r.json().unwrap_or(Json::Null);
    let keys = |v: &Json| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    match name {
        // Every field of the real node's answer, the emulator has too.
        "info" => json!({ "keys": keys(&j) }),
        "unknown_account" => j,
        n if n.starts_with("call_read") => {
            // The error's kind: `RuntimeCheck(UndefinedFunction`, …
            let cause = j["cause"]
                .as_str()
                .map(|c| c.splitn(3, '(').take(2).collect::<Vec<_>>().join("("));
            json!({"okay": j["okay"], "result": j["result"], "cause": cause})
        }
        _ if r.content_type == "application/json" && j.is_object() => {
            let data = &j["reason_data"];
            let mut out = json!({
                "txid": j["txid"],
                "reason": j["reason"],
                "reason_data_keys": keys(data),
            });
            // The numbers our client reads.
            for f in ["expected", "actual"] {
                out[f] = data[f].clone();
            }
            out
        }
        // A txid string, or plain text (its wording is the node's own).
        _ if r.content_type == "application/json" => j,
        _ => Json::Null,
    }
}

fn emulator() -> StacksEmulator {
    let mut s = StacksState::new(contract());
    for i in [1, 2, 3, 4, 6] {
        s.fund(addr(i), 10_000_000_000);
    }
    StacksEmulator::start("127.0.0.1:0", s).unwrap()
}

/// The differential test: the same requests to the real node and to the
/// emulator get the same status, content type, reason and the fields the
/// client reads (txids included: the transactions are the same bytes).
#[test]
fn the_emulator_answers_as_the_real_node_does() {
    let Some(node) = start_real(1000) else { return };
    let started = Instant::now();
    node.deploy_sbtc(&key(DEPLOYER)).unwrap();
    println!("-- real node");
    let real = scenario(&node);
    println!("-- emulator");
    let emu = emulator();
    let ours = scenario(&emu);
    assert_eq!(real.len(), ours.len());
    let mut differences = Vec::new();
    for ((name, r), (_, e)) in real.iter().zip(&ours) {
        let (rc, ec) = (compared(name, r), compared(name, e));
        let same = r.status == e.status
            && r.content_type == e.content_type
            && r.reason == e.reason
            && if *name == "info" {
                // The emulator may add fields, never miss one.
                rc["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|k| ec["keys"].as_array().unwrap().contains(k))
            } else {
                rc == ec
            };
        if !same {
            differences.push(format!(
                "{name}:\n  real     {} {} {:?} {rc}\n  emulator {} {} {:?} {ec}",
                r.status, r.content_type, r.reason, e.status, e.content_type, e.reason
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // And the client reads both alike.
    for url in [node.url().to_owned(), emu.url()] {
        let c = stacks_node_client::UreqStacksNode::new(&url, Duration::from_secs(5));
        c.get_info().unwrap();
        let e = c
            .get_peg_in_ops(stacks_node_client::peg_ops::BurnHeight(0))
            .unwrap_err();
        assert!(
            matches!(e, Error::BurnOpsUnsupported { .. }),
            "{url}: {e:?}"
        );
        let e = c.broadcast_transaction(b"hello").unwrap_err();
        assert!(!e.is_transient(), "{url}: {e:?}");
        let e = c
            .broadcast_transaction(&transfer(USER, 0, 1000, 3).serialize())
            .unwrap_err();
        assert!(
            matches!(&e, Error::Rejected(r) if r.reason == "BadNonce" && r.reason_data_u64("expected") >= Some(1)),
            "{url}: {e:?}"
        );
    }
    println!(
        "compared {} requests in {:?}",
        real.len(),
        started.elapsed()
    );
}

#[test]
fn sbtc_contract_deploys_as_clarity2_on_the_real_node() {
    let Some(node) = start_real(1000) else { return };
    let started = Instant::now();
    let id = node.deploy_sbtc(&key(DEPLOYER)).unwrap();
    let client = node.client();
    let sender = PrincipalData::Standard(addr(USER));
    // Freshly deployed and callable: threshold 0, the SIP-010 getters.
    assert_eq!(
        client
            .call_read(&id, "get-threshold", &[], &sender)
            .unwrap(),
        Value::UInt(0)
    );
    assert_eq!(
        client.call_read(&id, "get-decimals", &[], &sender).unwrap(),
        Value::Ok(Box::new(Value::UInt(8)))
    );
    assert_eq!(
        client
            .call_read(&id, "get-contract-owner", &[], &sender)
            .unwrap(),
        Value::Principal(PrincipalData::Standard(addr(DEPLOYER)))
    );
    // The trait is deployed too: deploying it again is refused.
    let again = devnet::stacks_node::deploy_tx(
        &key(DEPLOYER),
        "sip-010-trait",
        devnet::stacks_node::SIP_010_TRAIT,
        2,
    )
    .unwrap();
    let e = client
        .broadcast_transaction(&again.serialize())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(r) if r.reason == "ContractAlreadyExists"),
        "{e:?}"
    );
    println!("deployed and callable in {:?}", started.elapsed());
}

#[test]
fn a_missing_stacks_node_exe_fails_instead_of_skipping() {
    // Only meaningful where the variable is set: the harness must refuse a
    // path that names no file (checked through the same function).
    let missing = std::path::Path::new("/nonexistent/stacks-node");
    let e = RealStacksNode::start_exe(missing, &RealNodeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/stacks-node"), "{e:#}");
}

// --- Stacks finality: block ids, /v2/headers, reads at a tip ------------------

use devnet::stacks::boot_block_id;
use peg_ops::contract::{decode_record, TxidRecord, GET_BURN, GET_MINT};
use stacks_wire::transaction::sha512_256;

/// The index block hash of a `/v2/headers` entry:
/// SHA512/256(SHA512/256(header) ‖ consensus hash).
fn entry_id(e: &Json) -> [u8; 32] {
    let header = hex::decode(e["header"].as_str().unwrap()).unwrap();
    let consensus = hex::decode(e["consensus_hash"].as_str().unwrap()).unwrap();
    sha512_256(&[sha512_256(&header).as_slice(), &consensus].concat())
}

fn read_body(url: &str, f: &str, args: &[Value], query: &str) -> Reply {
    let c = contract();
    send(
        url,
        "POST",
        &format!(
            "/v2/contracts/call-read/{}/{}/{f}{query}",
            c.address, c.name
        ),
        Some("application/json"),
        json!({
            "sender": PrincipalData::Standard(addr(USER)).to_string(),
            "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>(),
        })
        .to_string()
        .as_bytes(),
    )
}

/// The answers around block ids that do not depend on the chain's content:
/// the real node's and the emulator's must be the same.
fn finality_probe(url: &str) -> Vec<(&'static str, u16, String, Json)> {
    let unknown = "11".repeat(32);
    let boot = hex::encode(boot_block_id());
    let mut out = Vec::new();
    let mut push = |name: &'static str, r: Reply, shape: Json| {
        println!("{name}: {} {} {:.200}", r.status, r.content_type, r.body);
        out.push((name, r.status, r.content_type, shape));
    };
    let text = |r: &Reply| json!(r.body);
    let r = send(url, "GET", "/v2/headers/0", None, b"");
    let t = text(&r);
    push("headers_0", r, t);
    let r = send(url, "GET", "/v2/headers/2101", None, b"");
    let t = text(&r);
    push("headers_above_limit", r, t);
    let r = send(url, "GET", "/v2/headers/abc", None, b"");
    let t = text(&r);
    push("headers_not_a_number", r, t);
    let r = send(
        url,
        "GET",
        &format!("/v2/headers/2?tip={unknown}"),
        None,
        b"",
    );
    let t = text(&r);
    push("headers_unknown_tip", r, t);
    let r = send(url, "GET", &format!("/v2/headers/1?tip={boot}"), None, b"");
    let t = text(&r);
    push("headers_boot_tip", r, t);
    let r = send(url, "GET", "/v2/headers/3", None, b"");
    let shape = r
        .json()
        .and_then(|j| j.as_array().cloned())
        .map(|l| {
            let keys: Vec<Vec<String>> = l
                .iter()
                .map(|e| e.as_object().unwrap().keys().cloned().collect())
                .collect();
            let lens: Vec<usize> = l
                .iter()
                .map(|e| e["header"].as_str().unwrap().len() / 2)
                .collect();
            // Each entry's parent is the next entry.
            let chained = l
                .windows(2)
                .all(|w| w[0]["parent_block_id"] == json!(hex::encode(entry_id(&w[1]))));
            json!({"keys": keys, "header_bytes": lens, "chained": chained})
        })
        .unwrap_or(Json::Null);
    push("headers_3", r, shape);
    let r = read_body(url, "get-threshold", &[], &format!("?tip={unknown}"));
    let t = text(&r);
    push("call_read_unknown_tip", r, t);
    let r = read_body(url, "get-threshold", &[], &format!("?tip={boot}"));
    let cause = r.json().map(|j| {
        json!({
            "okay": j["okay"],
            "cause": j["cause"].as_str().map(|c| c.split('(').take(2).collect::<Vec<_>>().join("(")),
        })
    });
    push("call_read_boot_tip", r, cause.unwrap_or(Json::Null));
    out
}

/// Mints to the user and burns from it as the coordinator (2), after the
/// owner named 2 the coordinator and set the threshold to 3.
fn peg_calls() -> Vec<StacksTransaction> {
    let c = contract();
    let coordinator = Value::tuple([
        ("addr", Value::Principal(addr(2).into())),
        ("key", Value::Buffer(vec![2; 33])),
    ])
    .unwrap();
    let mut burn = StacksTransaction::new(
        StacksNetwork::Testnet,
        &key(2),
        1,
        2000,
        // The burn moves the user's sBTC: allowed here, the test is about
        // what the contract records.
        PostConditionMode::Allow,
        vec![],
        Payload::ContractCall {
            contract: c.clone(),
            function_name: "burn!".into(),
            args: vec![
                Value::UInt(2000),
                Value::Principal(addr(USER).into()),
                Value::StringAscii("bb".repeat(32)),
            ],
        },
    )
    .unwrap();
    burn.sign(&key(2)).unwrap();
    vec![
        call(
            DEPLOYER,
            2,
            2000,
            c.clone(),
            "set-coordinator-data",
            vec![coordinator],
        ),
        call(
            DEPLOYER,
            3,
            2000,
            c.clone(),
            "set-threshold",
            vec![Value::UInt(3)],
        ),
        call(
            2,
            0,
            2000,
            c.clone(),
            "mint!",
            vec![
                Value::UInt(5000),
                Value::Principal(addr(USER).into()),
                Value::StringAscii("aa".repeat(32)),
            ],
        ),
        burn,
    ]
}

/// What Stacks finality rests on, on the real node (4.0.2, mocknet, epoch
/// 2.1): `/v2/info`'s tip is SHA512/256(block hash ‖ consensus hash) and
/// the first `/v2/headers` entry; `block_at_depth(d)` is the block `d`
/// below; a read at an older block answers from that block's state; an
/// unknown tip is `UnknownTip` (the node's 404); a malformed tip is
/// silently read at the canonical tip; `get-mint`/`get-burn` record the
/// amount and the principal. Then the emulator answers the tip-related
/// requests as the real node does.
#[test]
fn finality_reads_on_the_real_node() {
    let Some(node) = start_real(1000) else { return };
    let started = Instant::now();
    let id = node.deploy_sbtc(&key(DEPLOYER)).unwrap();
    let c = node.client();
    let me = PrincipalData::Standard(addr(USER));
    let before = c.block_at_depth(0).unwrap().unwrap();
    // The owner's calls first: in one block the miner may order the
    // coordinator's mint before the call that makes it the coordinator.
    let calls = peg_calls();
    for t in &calls[..2] {
        c.broadcast_transaction(&t.serialize()).unwrap();
    }
    node.mined(DEPLOYER, 4);
    for t in &calls[2..] {
        c.broadcast_transaction(&t.serialize()).unwrap();
    }
    node.mined(2, 2);
    let tip = c.block_at_depth(0).unwrap().unwrap();
    let at = |f: &str, args: &[Value], tip: &[u8; 32]| c.call_read_at(&id, f, args, &me, tip);
    // At the tip: the new state; at the block before the calls: the old one.
    assert_eq!(at("get-threshold", &[], &tip).unwrap(), Value::UInt(3));
    assert_eq!(at("get-threshold", &[], &before).unwrap(), Value::UInt(0));
    let mint_arg = [Value::StringAscii("aa".repeat(32))];
    let burn_arg = [Value::StringAscii("bb".repeat(32))];
    let user = TxidRecord {
        amount: 5000,
        principal: me.clone(),
    };
    assert_eq!(
        decode_record(&at(GET_MINT, &mint_arg, &tip).unwrap()),
        Ok(Some(user))
    );
    assert_eq!(
        decode_record(&at(GET_BURN, &burn_arg, &tip).unwrap()),
        Ok(Some(TxidRecord {
            amount: 2000,
            principal: me.clone()
        }))
    );
    assert_eq!(
        decode_record(&at(GET_MINT, &mint_arg, &before).unwrap()),
        Ok(None)
    );
    assert_eq!(
        decode_record(&at(GET_BURN, &mint_arg, &tip).unwrap()),
        Ok(None)
    );
    // An unknown tip: the node's 404, UnknownTip.
    let e = at("get-threshold", &[], &[0x11; 32]).unwrap_err();
    assert_eq!(e, Error::UnknownTip("11".repeat(32)));
    // A malformed tip (0x…) is ignored: the canonical tip's answer, not
    // `before`'s, and no error. Why the client sends bare hex only.
    let r = read_body(
        node.url(),
        "get-threshold",
        &[],
        &format!("?tip=0x{}", hex::encode(before)),
    );
    assert_eq!(
        r.json().unwrap()["result"],
        json!(Value::UInt(3).to_hex()),
        "{}",
        r.body
    );
    let r = read_body(
        node.url(),
        "get-threshold",
        &[],
        &format!("?tip={}", hex::encode_upper(before)),
    );
    assert_eq!(
        r.json().unwrap()["result"],
        json!(Value::UInt(0).to_hex()),
        "upper case is a tip: {}",
        r.body
    );
    // block_at_depth against one /v2/headers answer, retried when a block
    // arrives in between (the node mines every second).
    let mut checked = false;
    for _ in 0..10 {
        let h0 = c.get_info().unwrap().stacks_tip_height;
        let depths: Vec<_> = (0..=3)
            .map(|d| c.block_at_depth(d).unwrap().unwrap())
            .collect();
        let r = send(node.url(), "GET", "/v2/headers/3", None, b"");
        let h1 = c.get_info().unwrap().stacks_tip_height;
        if h0 != h1 {
            continue;
        }
        let list = r.json().unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(
            depths[0],
            entry_id(&list[0]),
            "/v2/info's tip is the first header"
        );
        assert_eq!(depths[1], entry_id(&list[1]));
        assert_eq!(depths[2], entry_id(&list[2]));
        assert_eq!(
            hex::encode(depths[3]),
            list[2]["parent_block_id"].as_str().unwrap()
        );
        // ?tip= starts the list at that block.
        let r = send(
            node.url(),
            "GET",
            &format!("/v2/headers/2?tip={}", hex::encode(depths[1])),
            None,
            b"",
        );
        assert_eq!(r.json().unwrap().as_array().unwrap()[..], list[1..]);
        checked = true;
        break;
    }
    assert!(checked, "the tip moved during every attempt");
    // The deepest block is the boot block; below it, nothing.
    let height = c.get_info().unwrap().stacks_tip_height;
    let r = send(
        node.url(),
        "GET",
        &format!("/v2/headers/{}", height + 5),
        None,
        b"",
    );
    let all = r.json().unwrap();
    let last = all.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["parent_block_id"], json!(hex::encode(boot_block_id())));
    assert_eq!(
        c.block_at_depth(u32::try_from(height).unwrap() + 50)
            .unwrap(),
        None
    );

    println!("-- real node");
    let real = finality_probe(node.url());
    println!("-- emulator");
    let emu = emulator();
    emu.with(|s| {
        for _ in 0..3 {
            s.mine();
        }
    });
    let ours = finality_probe(&emu.url());
    assert_eq!(real, ours);
    println!("finality checks in {:?}", started.elapsed());
}

// --- batched calls: mint-many! / burn-many! -----------------------------------

use bitcoin::hashes::Hash as _;
use fee_wallet::{ContractCallWallet, StacksFeePolicy, StacksWallet};
use peg_ops::contract::{txid_arg, BURN_MANY, MAX_BATCH, MINT_MANY};
use peg_ops::{BurnHeight, MessageSignature, PegInOp, PegOutRequestOp};
use stacks_wire::{AssetInfo, FungibleConditionCode, PostCondition, PostConditionPrincipal};

/// The coordinator of the batch tests (set by the deployer).
const COORDINATOR: u8 = 2;

/// A Bitcoin txid for test element `n`.
fn btc_txid(n: u32) -> bitcoin::Txid {
    let mut b = [0x5a; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    bitcoin::Txid::from_byte_array(b)
}

fn peg_in(n: u32, amount: u64, to: u8) -> PegInOp {
    PegInOp {
        recipient: addr(to).into(),
        peg_wallet_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap(),
        amount: bitcoin::Amount::from_sat(amount),
        memo: vec![],
        txid: btc_txid(n),
        vtxindex: 1,
        block_height: BurnHeight(10),
        burn_header_hash: bitcoin::BlockHash::all_zeros(),
    }
}

fn peg_out(n: u32, amount: u64, from: u8) -> (PegOutRequestOp, StacksAddress) {
    let recipient: peg_ops::BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        .parse()
        .unwrap();
    let op = PegOutRequestOp {
        amount: bitcoin::Amount::from_sat(amount),
        // Not checked by the contract (the signers check it).
        signature: MessageSignature::sign(
            peg_ops::peg_out_request_sighash(
                bitcoin::Amount::from_sat(amount),
                &recipient.script_pubkey(),
            ),
            &key(from).key,
        ),
        recipient: recipient.clone(),
        peg_wallet_address: recipient,
        fulfillment_fee: bitcoin::Amount::from_sat(1_000),
        memo: vec![],
        txid: btc_txid(n),
        vtxindex: 2,
        block_height: BurnHeight(11),
        burn_header_hash: bitcoin::BlockHash::all_zeros(),
    };
    (op, addr(from))
}

fn node_at(url: &str) -> stacks_node_client::UreqStacksNode {
    stacks_node_client::UreqStacksNode::new(url, Duration::from_secs(30))
}

/// The coordinator's wallet against the node at `url` (fee from the node's
/// estimate, at least 1 µSTX/byte, no cap that matters here).
fn batch_wallet(url: &str) -> ContractCallWallet<stacks_node_client::UreqStacksNode> {
    ContractCallWallet::new(
        StacksNetwork::Testnet,
        contract(),
        key(COORDINATOR),
        StacksFeePolicy {
            floor: 1_000,
            cap: 10_000_000,
        },
        node_at(url),
    )
}

/// `get-mint` / `get-burn` of element `n`, and `get-balance` of `who`.
fn record_of(url: &str, f: &str, n: u32) -> Option<TxidRecord> {
    let c = node_at(url);
    let v = c
        .call_read(
            &contract(),
            f,
            &[txid_arg(&btc_txid(n))],
            &addr(USER).into(),
        )
        .unwrap();
    decode_record(&v).unwrap()
}

fn balance_of(url: &str, who: u8) -> Value {
    node_at(url)
        .call_read(
            &contract(),
            "get-balance",
            &[Value::Principal(addr(who).into())],
            &addr(USER).into(),
        )
        .unwrap()
}

/// Batches with failing elements, through the wallet's builders, then a
/// burn-many! whose deny-mode `SentLe` is one short: what took effect
/// (records, balances, nonces), as the node at `t` answers it.
fn batch_scenario(t: &dyn Target) -> Vec<String> {
    let url = t.url();
    let u = url.as_str();
    let c = node_at(u);
    let w = batch_wallet(u);
    // The owner names the coordinator.
    let coordinator = Value::tuple([
        ("addr", Value::Principal(addr(COORDINATOR).into())),
        ("key", Value::Buffer(vec![2; 33])),
    ])
    .unwrap();
    let set = call(
        DEPLOYER,
        confirmed_nonce(u, DEPLOYER),
        2000,
        contract(),
        "set-coordinator-data",
        vec![coordinator],
    );
    assert_eq!(post_tx(u, &set).status, 200);
    t.mined(DEPLOYER, set.auth.nonce + 1);
    let start = confirmed_nonce(u, COORDINATOR);
    // 1..=4 to the user, element 3 of amount 0 (ERR-INVALID-AMOUNT).
    let a = w
        .build_mint_many(
            &[
                peg_in(1, 1000, USER),
                peg_in(2, 2000, USER),
                peg_in(3, 0, USER),
                peg_in(4, 3000, USER),
            ],
            start,
            None,
        )
        .unwrap();
    // Element 1 again (ERR-ALREADY-MINTED across batches), 5 to 4.
    let b = w
        .build_mint_many(
            &[peg_in(1, 7, CHAINER), peg_in(5, 5000, CHAINER)],
            start + 1,
            None,
        )
        .unwrap();
    for tx in [&a, &b] {
        c.broadcast_transaction(&tx.raw).unwrap();
    }
    t.mined(COORDINATOR, start + 2);
    // The user holds 6000, 4 holds 5000: 11 burns 1500 of the user's, 12 is
    // short (10,000 > 4,500 left: ERR-INSUFFICIENT-BALANCE), 13 takes 4's
    // 5000, 14 another 500 of the user's. SentLe per requester: 12,000 and
    // 5,000 — what the failed element did not burn is still "at most".
    let burns = w
        .build_burn_many(
            &[
                peg_out(11, 1500, USER),
                peg_out(12, 10_000, USER),
                peg_out(13, 5000, CHAINER),
                peg_out(14, 500, USER),
            ],
            start + 2,
            None,
        )
        .unwrap();
    let decoded = StacksTransaction::deserialize(&burns.raw).unwrap();
    assert_eq!(decoded.post_conditions.len(), 2);
    c.broadcast_transaction(&burns.raw).unwrap();
    t.mined(COORDINATOR, start + 3);
    // Deny mode enforced: a burn of 100 under `SentLe 99` aborts as a whole
    // (the nonce is spent, nothing is burned or recorded).
    let mut strict = StacksTransaction::new(
        StacksNetwork::Testnet,
        &key(COORDINATOR),
        start + 3,
        100_000,
        PostConditionMode::Deny,
        vec![PostCondition::Fungible {
            principal: PostConditionPrincipal::Standard(addr(USER)),
            asset: AssetInfo {
                contract: contract(),
                asset_name: "sbtc".into(),
            },
            code: FungibleConditionCode::SentLe,
            amount: 99,
        }],
        Payload::ContractCall {
            contract: contract(),
            function_name: BURN_MANY.into(),
            args: vec![Value::List(vec![Value::tuple([
                ("amount", Value::UInt(100)),
                ("src", Value::Principal(addr(USER).into())),
                ("peg-out-txid", txid_arg(&btc_txid(15))),
            ])
            .unwrap()])],
        },
    )
    .unwrap();
    strict.sign(&key(COORDINATOR)).unwrap();
    assert_eq!(post_tx(u, &strict).status, 200);
    t.mined(COORDINATOR, start + 4);
    let mut out = Vec::new();
    for n in 1..=5 {
        out.push(format!("mint {n}: {:?}", record_of(u, GET_MINT, n)));
    }
    for n in 11..=15 {
        out.push(format!("burn {n}: {:?}", record_of(u, GET_BURN, n)));
    }
    for who in [USER, CHAINER] {
        out.push(format!("balance {who}: {:?}", balance_of(u, who)));
    }
    out.push(format!(
        "coordinator nonce: {}",
        confirmed_nonce(u, COORDINATOR) - start
    ));
    for l in &out {
        println!("{l}");
    }
    out
}

/// On the real node: the batches take effect element by element (failed
/// elements leave no record, the others stand), deny-mode `SentLe` holds
/// for "at most" and aborts a call that burns more; then the emulator,
/// given the same transactions, ends in the same state.
#[test]
fn batched_calls_on_the_real_node_and_the_emulator() {
    let Some(node) = start_real(1000) else { return };
    let started = Instant::now();
    node.deploy_sbtc(&key(DEPLOYER)).unwrap();
    println!("-- real node");
    let real = batch_scenario(&node);
    let rec = |amount, who: u8| {
        Some(TxidRecord {
            amount,
            principal: addr(who).into(),
        })
    };
    let expected = vec![
        format!("mint 1: {:?}", rec(1000, USER)),
        format!("mint 2: {:?}", rec(2000, USER)),
        "mint 3: None".to_owned(),
        format!("mint 4: {:?}", rec(3000, USER)),
        format!("mint 5: {:?}", rec(5000, CHAINER)),
        format!("burn 11: {:?}", rec(1500, USER)),
        "burn 12: None".to_owned(),
        format!("burn 13: {:?}", rec(5000, CHAINER)),
        format!("burn 14: {:?}", rec(500, USER)),
        "burn 15: None".to_owned(),
        format!(
            "balance {USER}: {:?}",
            Value::Ok(Box::new(Value::UInt(4000)))
        ),
        format!(
            "balance {CHAINER}: {:?}",
            Value::Ok(Box::new(Value::UInt(0)))
        ),
        "coordinator nonce: 4".to_owned(),
    ];
    assert_eq!(real, expected);
    println!("-- emulator");
    let emu = emulator();
    assert_eq!(batch_scenario(&emu), expected);
    println!("batch checks in {:?}", started.elapsed());
}

/// Sends `txs` (consecutive nonces of the coordinator from `start`) and
/// returns, per Stacks block that mined some, how many (polling the tip and
/// the nonce every 50 ms, at most `timeout`).
fn calls_per_block(
    node: &RealStacksNode,
    txs: &[peg_ops::SignedStacksTx],
    start: u64,
    timeout: Duration,
) -> Vec<(u64, u64)> {
    let c = node.client();
    for t in txs {
        c.broadcast_transaction(&t.raw)
            .unwrap_or_else(|e| panic!("nonce {}: {e}; log:\n{}", t.nonce, node.log_tail(20)));
    }
    let me = PrincipalData::Standard(addr(COORDINATOR));
    let end = start + txs.len() as u64;
    let deadline = Instant::now() + timeout;
    let mut per_block: Vec<(u64, u64)> = Vec::new();
    let mut seen = start;
    while seen < end {
        assert!(
            Instant::now() < deadline,
            "only {} of {} calls mined within {timeout:?}: {per_block:?}; log:\n{}",
            seen - start,
            txs.len(),
            node.log_tail(30)
        );
        let height = c.get_info().unwrap().stacks_tip_height;
        let nonce = c.get_account(&me).unwrap().nonce;
        if nonce > seen {
            per_block.push((height, nonce - seen));
            seen = nonce;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    per_block
}

/// What the real node does with full batches: a 201-element list is
/// refused at admission (as the emulator refuses it); 200-element
/// `mint-many!` and `burn-many!` calls are admitted and mined, 25 of them
/// pending at once (the node's chaining limit), and every element takes
/// effect. Prints bytes per call, fee at the node's minimum, and calls
/// mined per block.
#[test]
fn full_batches_on_the_real_node() {
    let Some(node) = start_real(1000) else { return };
    let started = Instant::now();
    node.deploy_sbtc(&key(DEPLOYER)).unwrap();
    let u = node.url().to_owned();
    let c = node.client();
    let w = batch_wallet(&u);
    let set = call(
        DEPLOYER,
        confirmed_nonce(&u, DEPLOYER),
        2000,
        contract(),
        "set-coordinator-data",
        vec![Value::tuple([
            ("addr", Value::Principal(addr(COORDINATOR).into())),
            ("key", Value::Buffer(vec![2; 33])),
        ])
        .unwrap()],
    );
    assert_eq!(post_tx(&u, &set).status, 200);
    node.mined(DEPLOYER, set.auth.nonce + 1);

    // One over the list bound: the node's type check refuses it, and so
    // does the emulator, with the same reason.
    let over: Vec<Value> = (0..=MAX_BATCH as u32)
        .map(|n| {
            Value::tuple([
                ("amount", Value::UInt(1)),
                ("dst", Value::Principal(addr(USER).into())),
                ("peg-in-txid", txid_arg(&btc_txid(900_000 + n))),
            ])
            .unwrap()
        })
        .collect();
    let too_long = call(
        COORDINATOR,
        0,
        100_000,
        contract(),
        MINT_MANY,
        vec![Value::List(over)],
    );
    let real = post_tx(&u, &too_long);
    println!(
        "201 elements: {} {:?} {:.300}",
        real.status, real.reason, real.body
    );
    assert_eq!(real.status, 400);
    assert_eq!(real.reason.as_deref(), Some("BadFunctionArgument"));
    let emu = emulator();
    let ours = post_tx(&emu.url(), &too_long);
    assert_eq!((ours.status, ours.reason), (real.status, real.reason));

    // 25 full mint-many! calls, 5,000 mints, 1,000 sats each, to the user.
    const CALLS: u32 = 25;
    let per = MAX_BATCH as u32;
    let start = confirmed_nonce(&u, COORDINATOR);
    let mints: Vec<_> = (0..CALLS)
        .map(|i| {
            let ops: Vec<_> = (0..per).map(|j| peg_in(i * per + j, 1000, USER)).collect();
            w.build_mint_many(&ops, start + u64::from(i), None).unwrap()
        })
        .collect();
    let t = Instant::now();
    let blocks = calls_per_block(&node, &mints, start, Duration::from_secs(180));
    println!(
        "mint-many! x{CALLS} of {per}: {} bytes, fee {} µSTX each; mined per block {blocks:?} in {:?}",
        mints[0].raw.len(),
        mints[0].fee,
        t.elapsed()
    );
    let supply = c
        .call_read(&contract(), "get-total-supply", &[], &addr(USER).into())
        .unwrap();
    assert_eq!(
        supply,
        Value::Ok(Box::new(Value::UInt(u128::from(CALLS * per) * 1000)))
    );
    for n in [0, per - 1, CALLS * per - 1] {
        assert_eq!(
            record_of(&u, GET_MINT, n),
            Some(TxidRecord {
                amount: 1000,
                principal: addr(USER).into()
            })
        );
    }

    // 25 full burn-many! calls, all of the user's sBTC, deny mode.
    let start = confirmed_nonce(&u, COORDINATOR);
    let burns: Vec<_> = (0..CALLS)
        .map(|i| {
            let ops: Vec<_> = (0..per)
                .map(|j| peg_out(100_000 + i * per + j, 1000, USER))
                .collect();
            w.build_burn_many(&ops, start + u64::from(i), None).unwrap()
        })
        .collect();
    let t = Instant::now();
    let blocks = calls_per_block(&node, &burns, start, Duration::from_secs(180));
    println!(
        "burn-many! x{CALLS} of {per}: {} bytes, fee {} µSTX each; mined per block {blocks:?} in {:?}",
        burns[0].raw.len(),
        burns[0].fee,
        t.elapsed()
    );
    let supply = c
        .call_read(&contract(), "get-total-supply", &[], &addr(USER).into())
        .unwrap();
    assert_eq!(supply, Value::Ok(Box::new(Value::UInt(0))));
    assert_eq!(
        record_of(&u, GET_BURN, 100_000 + CALLS * per - 1),
        Some(TxidRecord {
            amount: 1000,
            principal: addr(USER).into()
        })
    );
    println!("full batches in {:?}", started.elapsed());
}

/// How many full `mint-many!` calls the real node's miner puts in one
/// block when more are pending than one account may chain: four copies
/// of the contract (deployers 1, 3, 4 and 6, each its own coordinator),
/// 25 calls of 200 each pending at once, 100 calls, 20,000 mints. Prints
/// the calls mined per block and the node's own cost lines. A measurement,
/// bounded (100 calls, 4 minutes); run with `--ignored`.
///
/// Measured (stacks-node 4.0.2 mocknet, this machine): the first block took
/// 76 calls (15,200 mints), 2,080,363 bytes, "Miner stopping due to limit
/// reached": the 2 MiB block size, not cost (mocknet's cost limit is far
/// above; the block consumed runtime 317,290,120, read_cnt 76,304,
/// write_cnt 45,600 — per call ~4.17 M runtime, 1,004 reads, 600 writes,
/// read_len 24,332, write_len 26,600), assembled in 11.9 s; the next block
/// the other 24. `a_block_holds_at_most_two_mib_of_transactions` holds the
/// emulator to the same.
#[test]
#[ignore = "a measurement of the real node's block capacity (minutes); run with --ignored"]
fn block_capacity_for_full_batches_on_the_real_node() {
    let Some(node) = start_real(10_000) else {
        return;
    };
    let started = Instant::now();
    let u = node.url().to_owned();
    let c = node.client();
    let deployers = [1u8, 3, 4, 6];
    let mut all = Vec::new();
    for d in deployers {
        let id = node.deploy_sbtc(&key(d)).unwrap();
        let set = tx(
            d,
            confirmed_nonce(&u, d),
            2000,
            Payload::ContractCall {
                contract: id.clone(),
                function_name: "set-coordinator-data".into(),
                args: vec![Value::tuple([
                    ("addr", Value::Principal(addr(d).into())),
                    ("key", Value::Buffer(vec![2; 33])),
                ])
                .unwrap()],
            },
        );
        assert_eq!(post_tx(&u, &set).status, 200);
        node.mined(d, set.auth.nonce + 1);
        let w = ContractCallWallet::new(
            StacksNetwork::Testnet,
            id,
            key(d),
            StacksFeePolicy {
                floor: 1_000,
                cap: 10_000_000,
            },
            node_at(&u),
        );
        let start = confirmed_nonce(&u, d);
        let per = MAX_BATCH as u32;
        for i in 0..25u32 {
            let ops: Vec<_> = (0..per)
                .map(|j| peg_in(u32::from(d) * 1_000_000 + i * per + j, 1000, USER))
                .collect();
            all.push((
                d,
                w.build_mint_many(&ops, start + u64::from(i), None).unwrap(),
            ));
        }
    }
    let h0 = c.get_info().unwrap().stacks_tip_height;
    let t = Instant::now();
    for (d, s) in &all {
        c.broadcast_transaction(&s.raw)
            .unwrap_or_else(|e| panic!("{d} nonce {}: {e}", s.nonce));
    }
    println!(
        "broadcast {} calls in {:?} (tip {h0})",
        all.len(),
        t.elapsed()
    );
    let targets: Vec<(u8, u64)> = deployers
        .iter()
        .map(|d| {
            (
                *d,
                all.iter()
                    .filter(|(x, _)| x == d)
                    .map(|(_, s)| s.nonce)
                    .max()
                    .unwrap()
                    + 1,
            )
        })
        .collect();
    let nonces = || -> Vec<u64> { deployers.iter().map(|d| confirmed_nonce(&u, *d)).collect() };
    let mut last = nonces();
    let first = last.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut per_block = Vec::new();
    loop {
        let height = c.get_info().unwrap().stacks_tip_height;
        let now = nonces();
        let mined: u64 = now.iter().zip(&last).map(|(a, b)| a - b).sum();
        if mined > 0 {
            per_block.push((height, mined));
            last = now.clone();
        }
        if targets.iter().zip(&now).all(|((_, want), got)| got >= want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all mined within 4 minutes: {per_block:?}, nonces {now:?} from {first:?}; log:\n{}",
            node.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} full mint-many! calls ({} bytes each) mined per block {per_block:?} in {:?}",
        all.len(),
        all[0].1.raw.len(),
        t.elapsed()
    );
    let log = node.log_tail(1_000_000);
    // The node's account of one call (its tail names the execution cost)
    // and of the blocks it mined.
    if let Some(l) = log.lines().find(|l| l.contains("mint-many!")) {
        println!("log (one call): {}", &l[l.len().saturating_sub(700)..]);
    }
    for l in log
        .lines()
        .filter(|l| !l.contains("Contract-call successfully processed"))
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("cost")
                || l.contains("limit")
                || l.contains("mined")
                || l.contains("anchored")
        })
        .take(60)
    {
        match l.find("execution_consumed") {
            Some(i) if l.contains("tx_count") => println!("log: {:.200} … {}", l, &l[i..]),
            _ => println!("log: {l:.300}"),
        }
    }
    println!("capacity probe in {:?}", started.elapsed());
}
