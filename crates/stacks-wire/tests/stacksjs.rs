//! Cross-check with stacks.js: `@stacks/transactions` (pinned in
//! `tests/js/package-lock.json`) must decode every transaction we build,
//! verify its signature, re-serialize it to the same bytes and compute the
//! same txid, and must reject tampered ones.
//!
//! Needs node and `tests/js/node_modules` (`scripts/test.sh` runs `npm ci`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bitcoin::secp256k1::SecretKey;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use stacks_wire::{
    AssetInfo, ClarityVersion, ContractId, FungibleConditionCode, Payload, PostCondition,
    PostConditionMode, PostConditionPrincipal, PrincipalData, StacksAddress, StacksNetwork,
    StacksPrivateKey, StacksTransaction, Value,
};

const CASES: usize = 240;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js")
}

fn address(v: u8, h: u8) -> StacksAddress {
    StacksAddress::new(v, [h; 20]).unwrap()
}

fn contract(v: u8, h: u8, name: &str) -> ContractId {
    ContractId {
        address: address(v, h),
        name: name.parse().unwrap(),
    }
}

/// Every Clarity type, nested, chosen by `i`.
fn value(i: usize, depth: usize) -> Value {
    let leaf = |i: usize| match i % 12 {
        0 => Value::Int(-(i as i128) * 1_000_000_007_000_000_009),
        1 => Value::UInt(u128::MAX - i as u128),
        2 => Value::Buffer((0..(i % 40) as u8).collect()),
        3 => Value::Bool(i.is_multiple_of(2)),
        4 => Value::Principal(PrincipalData::Standard(address(26, i as u8))),
        5 => Value::Principal(PrincipalData::Contract(contract(22, i as u8, "sbtc-alpha"))),
        6 => Value::StringAscii(format!("peg-in #{i}: ok!")),
        7 => Value::StringUtf8(format!("sBTC ₿ {i} ✓")),
        8 => Value::none(),
        9 => Value::Int(i128::MIN + i as i128),
        10 => Value::UInt(i as u128),
        _ => Value::Buffer(vec![0xff; 33]),
    };
    if depth == 0 {
        return leaf(i);
    }
    match i % 7 {
        0 => Value::Ok(Box::new(value(i / 7 + 1, depth - 1))),
        1 => Value::Err(Box::new(value(i / 7 + 2, depth - 1))),
        2 => Value::some(value(i / 7 + 3, depth - 1)),
        3 => Value::List((0..i % 4).map(|j| value(i + j, depth - 1)).collect()),
        4 => Value::tuple([
            ("amount", value(i + 1, depth - 1)),
            ("recipient", value(i + 4, 0)),
            ("a-b?", value(i + 2, depth - 1)),
        ])
        .unwrap(),
        _ => leaf(i),
    }
}

fn transaction(i: usize, runner: &mut TestRunner) -> StacksTransaction {
    let seed = proptest::array::uniform32(1u8..=255)
        .new_tree(runner)
        .unwrap()
        .current();
    let k = StacksPrivateKey {
        key: SecretKey::from_slice(&seed).unwrap(),
        compressed: !i.is_multiple_of(5),
    };
    let network = if i.is_multiple_of(2) {
        StacksNetwork::Testnet
    } else {
        StacksNetwork::Mainnet
    };
    let mode = if i.is_multiple_of(3) {
        PostConditionMode::Allow
    } else {
        PostConditionMode::Deny
    };
    let v = if network == StacksNetwork::Mainnet {
        22
    } else {
        26
    };
    let mut pcs = vec![];
    if i % 4 == 1 {
        pcs.push(PostCondition::Fungible {
            principal: PostConditionPrincipal::Standard(address(v, 3)),
            asset: AssetInfo {
                contract: contract(v, 9, "sbtc-alpha"),
                asset_name: "sbtc".into(),
            },
            code: FungibleConditionCode::SentEq,
            amount: i as u64 * 1000,
        });
    }
    if i % 4 == 2 {
        pcs.push(PostCondition::Stx {
            principal: PostConditionPrincipal::Origin,
            code: FungibleConditionCode::SentLe,
            amount: 1,
        });
        pcs.push(PostCondition::Fungible {
            principal: PostConditionPrincipal::Contract(contract(v, 4, "vault")),
            asset: AssetInfo {
                contract: contract(v, 9, "sbtc-alpha"),
                asset_name: "sbtc".into(),
            },
            code: FungibleConditionCode::SentGe,
            amount: u64::MAX,
        });
    }
    let payload = if i % 10 == 7 {
        // Contract deploys: versioned (Clarity 1/2/3) and unversioned.
        Payload::SmartContract {
            name: ["sbtc-alpha", "sip-010-trait", "a", "kv-store"][i % 4]
                .parse()
                .unwrap(),
            code_body: format!(
                "(define-read-only (get-value) (ok u{i}))\n;; deploy #{i}\t{}",
                "x".repeat(i * 3)
            ),
            clarity_version: [
                None,
                Some(ClarityVersion::Clarity1),
                Some(ClarityVersion::Clarity2),
                Some(ClarityVersion::Clarity3),
            ][(i / 10) % 4],
        }
    } else if i % 10 == 9 {
        let mut memo = [0u8; 34];
        memo[..4].copy_from_slice(b"fund");
        Payload::TokenTransfer {
            recipient: PrincipalData::Standard(address(v, i as u8)),
            amount: 1_000_000 + i as u64,
            memo,
        }
    } else {
        Payload::ContractCall {
            contract: contract(v, 9, "sbtc-alpha"),
            function_name: [
                "mint!",
                "burn!",
                "set-bitcoin-wallet-public-key",
                "get-value",
            ][i % 4]
                .into(),
            args: (0..i % 5).map(|j| value(i * 5 + j, i % 4)).collect(),
        }
    };
    let nonce = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let fee = [0, 180, 1_000_000, u64::MAX / 3][i % 4];
    let mut tx = StacksTransaction::new(network, &k, nonce, fee, mode, pcs, payload).unwrap();
    tx.sign(&k).unwrap();
    tx
}

#[test]
fn stacks_js_accepts_what_we_build_and_rejects_tampering() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed: this cross-check needs Node.js 20+ (CI has it)"
    );
    assert!(
        js_dir().join("node_modules/@stacks/transactions").is_dir(),
        "tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/test.sh does)"
    );

    let mut runner = TestRunner::deterministic();
    let mut lines = String::new();
    let mut expected_tampered = 0;
    for i in 0..CASES {
        let tx = transaction(i, &mut runner);
        let hex_tx = hex::encode(tx.serialize());
        let txid = tx.txid().to_string();
        lines.push_str(&format!(
            "{{\"hex\":\"{hex_tx}\",\"txid\":\"{txid}\",\"tampered\":false}}\n"
        ));
        if i % 8 == 0 {
            // Flip a bit of the signature's s value: still well-formed, wrong signer.
            let mut bad = tx.clone();
            bad.auth.signature[40] ^= 0x01;
            let h = hex::encode(bad.serialize());
            lines.push_str(&format!(
                "{{\"hex\":\"{h}\",\"txid\":\"{}\",\"tampered\":true}}\n",
                bad.txid()
            ));
            expected_tampered += 1;
        }
    }

    let mut child = Command::new("node")
        .arg(js_dir().join("check-transactions.mjs"))
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("one JSON summary line");
    assert_eq!(summary["checked"], CASES + expected_tampered, "{summary}");
    assert_eq!(summary["failures"], serde_json::json!([]), "{summary:#}");
}

/// The JSON description `check-transactions.mjs` builds a Clarity value
/// from (its own encoder, not our bytes).
fn describe(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::UInt(n) => json!({ "uint": n.to_string() }),
        Value::Int(n) => json!({ "int": n.to_string() }),
        Value::StringAscii(s) => json!({ "ascii": s }),
        Value::Principal(p) => json!({ "principal": p.to_string() }),
        Value::Bool(b) => json!({ "bool": b }),
        Value::Buffer(b) => json!({ "buffer": hex::encode(b) }),
        Value::List(xs) => json!({ "list": xs.iter().map(describe).collect::<Vec<_>>() }),
        Value::Tuple(t) => json!({
            "tuple": t.iter().map(|(k, v)| (k.clone(), describe(v))).collect::<serde_json::Map<_, _>>()
        }),
        other => panic!("no description for {other:?}"),
    }
}

/// A signed deny-mode `mint-many!` / `burn-many!` as the fee wallet builds
/// it (a list of `{amount, dst|src, peg-*-txid}` tuples; for burns one
/// `SentLe` per requester), and the description stacks.js builds it from.
fn batch_call(
    seed: u8,
    function: &str,
    who: &str,
    txid: &str,
    n: usize,
    requesters: u8,
) -> (StacksTransaction, serde_json::Value) {
    let k = StacksPrivateKey {
        key: SecretKey::from_slice(&[seed; 32]).unwrap(),
        compressed: true,
    };
    let sbtc = contract(26, 9, "sbtc-alpha");
    let mut sums = std::collections::BTreeMap::<u8, u64>::new();
    let elements: Vec<Value> = (0..n)
        .map(|i| {
            let r = (i % usize::from(requesters)) as u8 + 1;
            let amount = 1_000 + i as u64 * 7_919;
            *sums.entry(r).or_default() += amount;
            Value::tuple([
                ("amount", Value::UInt(u128::from(amount))),
                (
                    who,
                    Value::Principal(PrincipalData::Standard(address(26, r))),
                ),
                (
                    txid,
                    Value::StringAscii(format!("{:064x}", i * 0x1234_5678 + 1)),
                ),
            ])
            .unwrap()
        })
        .collect();
    let pcs: Vec<PostCondition> = if function == "burn-many!" {
        sums.iter()
            .map(|(r, amount)| PostCondition::Fungible {
                principal: PostConditionPrincipal::Standard(address(26, *r)),
                asset: AssetInfo {
                    contract: sbtc.clone(),
                    asset_name: "sbtc".into(),
                },
                code: FungibleConditionCode::SentLe,
                amount: *amount,
            })
            .collect()
    } else {
        vec![]
    };
    let args = vec![Value::List(elements)];
    let nonce = u64::from(seed) * 1_000 + 7;
    let fee = 27_368 + u64::from(seed);
    let description = serde_json::json!({
        "key": format!("{}01", hex::encode(k.key.secret_bytes())),
        "network": "testnet",
        "nonce": nonce.to_string(),
        "fee": fee.to_string(),
        "contract": sbtc.to_string(),
        "function": function,
        "args": args.iter().map(describe).collect::<Vec<_>>(),
        "postConditions": pcs.iter().map(|pc| match pc {
            PostCondition::Fungible { principal: PostConditionPrincipal::Standard(a), asset, amount, .. } => serde_json::json!({
                "principal": a.to_string(), "code": "lte", "amount": amount.to_string(),
                "asset": format!("{}::{}", asset.contract, asset.asset_name),
            }),
            other => panic!("not described: {other:?}"),
        }).collect::<Vec<_>>(),
    });
    let mut tx = StacksTransaction::new(
        StacksNetwork::Testnet,
        &k,
        nonce,
        fee,
        PostConditionMode::Deny,
        pcs,
        Payload::ContractCall {
            contract: sbtc,
            function_name: function.into(),
            args,
        },
    )
    .unwrap();
    tx.sign(&k).unwrap();
    (tx, description)
}

/// `mint-many!` with a list of tuples and `burn-many!` with several
/// `SentLe` post conditions: stacks.js builds the very same bytes from the
/// same description (so list, tuple and post-condition encodings are
/// proven, not only round-tripped), up to the 200-element list; a
/// description one µsat off must not match.
#[test]
fn stacks_js_builds_our_batch_calls_byte_for_byte() {
    if !js_dir().join("node_modules/@stacks/transactions").is_dir() {
        panic!("tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/test.sh does)");
    }
    let mut lines = String::new();
    let mut cases = 0;
    let mut builds = 0;
    for (seed, function, who, txid, n, requesters) in [
        (1, "mint-many!", "dst", "peg-in-txid", 1, 1),
        (2, "mint-many!", "dst", "peg-in-txid", 5, 3),
        (3, "mint-many!", "dst", "peg-in-txid", 200, 7),
        (4, "burn-many!", "src", "peg-out-txid", 1, 1),
        (5, "burn-many!", "src", "peg-out-txid", 6, 3),
        (6, "burn-many!", "src", "peg-out-txid", 200, 20),
    ] {
        let (tx, mut description) = batch_call(seed, function, who, txid, n, requesters);
        let pcs = tx.post_conditions.len();
        assert_eq!(
            pcs,
            if function == "burn-many!" {
                requesters as usize
            } else {
                0
            }
        );
        let line = |d: &serde_json::Value, tampered: bool| {
            format!(
                "{}\n",
                serde_json::json!({
                    "hex": hex::encode(tx.serialize()),
                    "txid": tx.txid().to_string(),
                    "tampered": tampered,
                    "build": d,
                })
            )
        };
        lines.push_str(&line(&description, false));
        // One amount changed in the description: stacks.js builds other bytes.
        description["args"][0]["list"][n - 1]["tuple"]["amount"]["uint"] = "1".into();
        lines.push_str(&line(&description, true));
        cases += 2;
        builds += 2;
    }
    let mut child = Command::new("node")
        .arg(js_dir().join("check-transactions.mjs"))
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("one JSON summary line");
    assert_eq!(summary["checked"], cases, "{summary}");
    assert_eq!(summary["built"], builds, "{summary}");
    assert_eq!(summary["failures"], serde_json::json!([]), "{summary:#}");
}
