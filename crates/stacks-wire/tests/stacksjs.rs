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
