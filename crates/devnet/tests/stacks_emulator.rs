//! The stacks-node emulator refuses what the node refuses and runs the
//! contract model with the contract's results.

use std::time::Duration;

use bitcoin::secp256k1::SecretKey;
use devnet::model::err;
use devnet::{StacksEmulator, StacksState};
use stacks_node_client::{Error, StacksNode, UreqStacksNode};
use stacks_wire::{
    AssetInfo, ContractId, FungibleConditionCode, Payload, PostCondition, PostConditionMode,
    PostConditionPrincipal, PrincipalData, StacksAddress, StacksNetwork, StacksPrivateKey,
    StacksTransaction, Value,
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

fn contract() -> ContractId {
    format!("{}.sbtc-alpha", addr(1)).parse().unwrap()
}

fn state() -> StacksState {
    let mut s = StacksState::new(contract());
    for i in 1..=3 {
        s.fund(addr(i), 10_000_000);
    }
    s.model.coordinator = Some((addr(1).into(), vec![2; 33]));
    s
}

fn call(
    k: &StacksPrivateKey,
    nonce: u64,
    fee: u64,
    function: &str,
    args: Vec<Value>,
    pcs: Vec<PostCondition>,
) -> StacksTransaction {
    let mut tx = StacksTransaction::new(
        StacksNetwork::Testnet,
        k,
        nonce,
        fee,
        PostConditionMode::Deny,
        pcs,
        Payload::ContractCall {
            contract: contract(),
            function_name: function.into(),
            args,
        },
    )
    .unwrap();
    tx.sign(k).unwrap();
    tx
}

fn mint(nonce: u64, to: u8, amount: u128, txid: &str) -> StacksTransaction {
    call(
        &key(1),
        nonce,
        1000,
        "mint!",
        vec![
            Value::UInt(amount),
            Value::Principal(addr(to).into()),
            Value::StringAscii(txid.into()),
        ],
        vec![],
    )
}

fn last_result(s: &StacksState) -> Result<Value, String> {
    s.receipts.last().unwrap().result.clone()
}

fn err_u(code: u128) -> Result<Value, String> {
    Ok(Value::Err(Box::new(Value::UInt(code))))
}

#[test]
fn admission_refuses_what_the_node_refuses() {
    let mut s = state();
    let reason = |s: &mut StacksState, bytes: Vec<u8>| s.admit(&bytes).unwrap_err().0;
    // A flipped bit in the signature.
    let mut bad = mint(0, 2, 5, "a").serialize();
    bad[60] ^= 1;
    assert_eq!(reason(&mut s, bad), "SignatureValidation");
    // Garbage.
    assert_eq!(reason(&mut s, vec![0x80, 1, 2]), "Deserialization");
    // Mainnet transaction on a testnet node.
    let mut main = StacksTransaction::new(
        StacksNetwork::Mainnet,
        &key(1),
        0,
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
    main.sign(&key(1)).unwrap();
    assert_eq!(reason(&mut s, main.serialize()), "BadTransactionVersion");
    // Fee below the minimum (1 µSTX per byte), with the expected fee in
    // reason_data.
    let cheap = call(
        &key(1),
        0,
        10,
        "mint!",
        vec![
            Value::UInt(1),
            Value::Principal(addr(2).into()),
            Value::StringAscii("a".into()),
        ],
        vec![],
    )
    .serialize();
    let (r, data) = s.admit(&cheap).unwrap_err();
    assert_eq!(
        (r.as_str(), data["expected"].as_u64()),
        ("FeeTooLow", Some(cheap.len() as u64))
    );
    // Wrong argument types, unknown function, unknown contract.
    assert_eq!(
        reason(
            &mut s,
            call(&key(1), 0, 1000, "mint!", vec![Value::Int(1)], vec![]).serialize()
        ),
        "BadFunctionArgument"
    );
    assert_eq!(
        reason(
            &mut s,
            call(&key(1), 0, 1000, "steal!", vec![], vec![]).serialize()
        ),
        "NoSuchPublicFunction"
    );
    // Not enough STX for the fee.
    let poor = key(9);
    assert_eq!(
        reason(
            &mut s,
            call(
                &poor,
                0,
                1000,
                "mint!",
                vec![
                    Value::UInt(1),
                    Value::Principal(addr(2).into()),
                    Value::StringAscii("a".into())
                ],
                vec![]
            )
            .serialize()
        ),
        "NotEnoughFunds"
    );
    // A good one, then the same nonce again with other content, then a stale nonce.
    s.admit(&mint(0, 2, 5, "a").serialize()).unwrap();
    assert_eq!(
        s.admit(&mint(0, 2, 5, "a").serialize()).unwrap(),
        mint(0, 2, 5, "a").txid().to_string(),
        "the same bytes again: accepted, same txid"
    );
    assert_eq!(
        reason(&mut s, mint(0, 3, 5, "b").serialize()),
        "ConflictingNonceInMempool"
    );
    s.mine();
    let (r, data) = s.admit(&mint(0, 3, 5, "b").serialize()).unwrap_err();
    assert_eq!(
        (
            r.as_str(),
            data["expected"].as_u64(),
            data["actual"].as_u64()
        ),
        ("BadNonce", Some(1), Some(0))
    );
}

#[test]
fn the_contract_model_matches_the_contract() {
    let mut s = state();
    s.admit(&mint(0, 2, 1000, "tx-a").serialize()).unwrap();
    s.mine();
    assert_eq!(last_result(&s), Ok(Value::Ok(Box::new(Value::Bool(true)))));
    // Replay: mined, fee taken, no effect.
    s.admit(&mint(1, 2, 1000, "tx-a").serialize()).unwrap();
    s.mine();
    assert_eq!(last_result(&s), err_u(err::ALREADY_MINTED));
    assert_eq!(s.model.balances[&PrincipalData::from(addr(2))], 1000);
    // Not the coordinator.
    let stranger = call(
        &key(3),
        0,
        1000,
        "mint!",
        vec![
            Value::UInt(1),
            Value::Principal(addr(3).into()),
            Value::StringAscii("tx-b".into()),
        ],
        vec![],
    );
    s.admit(&stranger.serialize()).unwrap();
    s.mine();
    assert_eq!(last_result(&s), err_u(err::NOT_COORDINATOR));
    // Over the cap.
    s.admit(&mint(2, 2, devnet::model::MAX_SUPPLY, "tx-c").serialize())
        .unwrap();
    s.mine();
    assert_eq!(last_result(&s), err_u(err::SUPPLY_CAP));
    // A burn in deny mode without a post condition aborts and changes nothing.
    let burn = |nonce, pcs| {
        call(
            &key(1),
            nonce,
            1000,
            "burn!",
            vec![
                Value::UInt(400),
                Value::Principal(addr(2).into()),
                Value::StringAscii("out-1".into()),
            ],
            pcs,
        )
    };
    s.admit(&burn(3, vec![]).serialize()).unwrap();
    s.mine();
    assert!(last_result(&s).unwrap_err().contains("deny mode"));
    assert_eq!(s.model.balances[&PrincipalData::from(addr(2))], 1000);
    assert!(!s.model.burned.contains_key("out-1"));
    // With the exact fungible-token post condition it burns.
    let pc = PostCondition::Fungible {
        principal: PostConditionPrincipal::Standard(addr(2)),
        asset: AssetInfo {
            contract: contract(),
            asset_name: "sbtc".into(),
        },
        code: FungibleConditionCode::SentEq,
        amount: 400,
    };
    s.admit(&burn(4, vec![pc.clone()]).serialize()).unwrap();
    s.mine();
    assert_eq!(last_result(&s), Ok(Value::Ok(Box::new(Value::Bool(true)))));
    assert_eq!(s.model.balances[&PrincipalData::from(addr(2))], 600);
    assert_eq!(s.model.supply, 600);
    // Burning again: already burned.
    s.admit(&burn(5, vec![pc]).serialize()).unwrap();
    s.mine();
    assert_eq!(last_result(&s), err_u(err::ALREADY_BURNED));
    // Fees and nonces were taken for every mined call.
    assert_eq!(s.accounts[&addr(1)], (10_000_000 - 6 * 1000, 6));
}

#[test]
fn the_rpc_answers_in_the_node_shapes() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let me: PrincipalData = addr(1).into();
    assert_eq!(c.get_account(&me).unwrap().nonce, 0);
    let txid = c
        .broadcast_transaction(&mint(0, 2, 77, "x").serialize())
        .unwrap();
    assert_eq!(txid, mint(0, 2, 77, "x").txid());
    let cheap = call(
        &key(1),
        1,
        5,
        "mint!",
        vec![
            Value::UInt(1),
            Value::Principal(addr(2).into()),
            Value::StringAscii("y".into()),
        ],
        vec![],
    )
    .serialize();
    match c.broadcast_transaction(&cheap) {
        Err(Error::Rejected(r)) => assert_eq!(
            (r.reason.as_str(), r.reason_data_u64("expected")),
            ("FeeTooLow", Some(cheap.len() as u64))
        ),
        other => panic!("{other:?}"),
    }
    em.with(|s| s.mine());
    assert_eq!(
        c.call_read(
            &contract(),
            "was-minted",
            &[Value::StringAscii("x".into())],
            &me
        )
        .unwrap(),
        Value::Bool(true)
    );
    assert_eq!(
        c.call_read(
            &contract(),
            "get-balance",
            &[Value::Principal(addr(2).into())],
            &me
        )
        .unwrap(),
        Value::Ok(Box::new(Value::UInt(77)))
    );
    assert!(matches!(
        c.call_read(&contract(), "nope", &[], &me),
        Err(Error::CallReadFailed(_))
    ));
    // Like a released node: no /v2/burn_ops, a configuration error.
    em.with(|s| s.burn_height = 3);
    assert!(matches!(
        c.get_peg_in_ops(peg_ops::BurnHeight(3)),
        Err(Error::BurnOpsUnsupported { status: 404, .. })
    ));
    // Like a 2023 sBTC alpha node (the explicit mode).
    em.with(|s| {
        s.burn_ops_mode = devnet::stacks::BurnOpsMode::Node2023;
        s.burn_height = 2;
    });
    assert_eq!(
        c.get_peg_in_ops(peg_ops::BurnHeight(3)).unwrap(),
        None,
        "not processed yet: 404"
    );
    em.with(|s| s.burn_height = 3);
    assert_eq!(
        c.get_peg_in_ops(peg_ops::BurnHeight(3)).unwrap(),
        Some(vec![])
    );
    let info = c.get_info().unwrap();
    assert_eq!((info.burn_block_height, info.stacks_tip_height), (3, 2));
}

fn transfer(k: u8, nonce: u64, fee: u64) -> StacksTransaction {
    let mut tx = StacksTransaction::new(
        StacksNetwork::Testnet,
        &key(k),
        nonce,
        fee,
        PostConditionMode::Deny,
        vec![],
        Payload::TokenTransfer {
            recipient: addr(2).into(),
            amount: 1,
            memo: [0; 34],
        },
    )
    .unwrap();
    tx.sign(&key(k)).unwrap();
    tx
}

/// The real node's limits, measured on stacks-node 4.0.2 (and compared by
/// `tests/real_stacks_node.rs` when it is available), hold without it.
#[test]
fn the_real_nodes_limits_hold() {
    let mut s = state();
    let reason = |s: &mut StacksState, t: &StacksTransaction| s.admit(&t.serialize()).unwrap_err();
    // 1 µSTX per byte, exactly.
    let len = transfer(3, 0, 0).serialize().len() as u64;
    assert_eq!(reason(&mut s, &transfer(3, 0, len - 1)).0, "FeeTooLow");
    s.admit(&transfer(3, 0, len).serialize()).unwrap();
    // Fee before nonce: a stale nonce with a low fee is FeeTooLow.
    s.mine();
    assert_eq!(reason(&mut s, &transfer(3, 0, 1)).0, "FeeTooLow");
    assert_eq!(reason(&mut s, &transfer(3, 0, 1000)).0, "BadNonce");
    // Chaining: confirmed (1) + 26 is admitted, + 27 is not.
    s.admit(&transfer(3, 27, 1000).serialize()).unwrap();
    let (r, data) = reason(&mut s, &transfer(3, 28, 1000));
    assert_eq!(
        (
            r.as_str(),
            data["expected"].as_u64(),
            data["actual"].as_u64()
        ),
        ("TooMuchChaining", Some(27), Some(28))
    );
    // Same nonce: the same fee conflicts, a higher one replaces.
    let first = transfer(3, 1, 1000);
    s.admit(&first.serialize()).unwrap();
    let mut other = StacksTransaction::new(
        StacksNetwork::Testnet,
        &key(3),
        1,
        1000,
        PostConditionMode::Deny,
        vec![],
        Payload::TokenTransfer {
            recipient: addr(1).into(),
            amount: 1,
            memo: [0; 34],
        },
    )
    .unwrap();
    other.sign(&key(3)).unwrap();
    assert_eq!(reason(&mut s, &other).0, "ConflictingNonceInMempool");
    let bumped = transfer(3, 1, 1001);
    s.admit(&bumped.serialize()).unwrap();
    assert_eq!(s.mempool.iter().filter(|t| t.auth.nonce == 1).count(), 1);
    s.mine();
    assert_eq!(s.receipts.last().unwrap().tx.txid(), bumped.txid());
    // A rebroadcast of a mined transaction: 200, the same txid.
    assert_eq!(
        s.admit(&bumped.serialize()).unwrap(),
        bumped.txid().to_string()
    );
    // Deploys: Clarity 2 admitted, Clarity 3 refused (epoch 2.1).
    for (v, ok) in [
        (stacks_wire::ClarityVersion::Clarity2, true),
        (stacks_wire::ClarityVersion::Clarity3, false),
    ] {
        let mut d = StacksTransaction::new(
            StacksNetwork::Testnet,
            &key(2),
            0,
            1000,
            PostConditionMode::Allow,
            vec![],
            Payload::SmartContract {
                name: "hello".parse().unwrap(),
                code_body: "(define-read-only (hi) (ok u1))".into(),
                clarity_version: Some(v),
            },
        )
        .unwrap();
        d.sign(&key(2)).unwrap();
        let r = s.admit(&d.serialize());
        assert_eq!(r.is_ok(), ok, "{v:?}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().0, "SignatureValidation");
        }
    }
    // A fee estimate exists only once such a transaction was mined.
    let call_payload = mint(9, 2, 1, "e").payload;
    assert_eq!(s.estimate(&call_payload, 200), None);
    let [low, middle, high] = s.estimate(&bumped.payload, 200).unwrap();
    assert!(
        low >= 200 && low <= middle && middle <= high,
        "{low} {middle} {high}"
    );
}

/// Malformed requests get plain-text 400s, as on the real node; unknown
/// paths and principals plain-text 404s.
#[test]
fn malformed_requests_get_plain_text_answers() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let post = |path: &str, ctype: &str, body: &[u8]| {
        let mut r = agent
            .post(format!("{}{path}", em.url()))
            .header("Content-Type", ctype)
            .send(body)
            .unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        (
            r.status().as_u16(),
            ct,
            r.body_mut().read_to_string().unwrap(),
        )
    };
    let good = transfer(3, 0, 1000).serialize();
    for (ctype, body) in [
        ("application/octet-stream", b"hello".to_vec()),
        ("application/octet-stream", vec![]),
        ("application/octet-stream", good[..good.len() - 1].to_vec()),
        ("text/plain", good.clone()),
    ] {
        let (status, ct, _) = post("/v2/transactions", ctype, &body);
        assert_eq!(
            (status, ct.as_str()),
            (400, "text/plain"),
            "{ctype} {body:?}"
        );
    }
    let (status, ct, text) = post(
        &format!("/v2/contracts/call-read/{}/sbtc-alpha/was-minted", addr(1)),
        "application/json",
        br#"{"sender":"ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ","arguments":["zz"]}"#,
    );
    assert_eq!((status, ct.as_str()), (400, "text/plain"), "{text}");
    let (status, ct, _) = post("/v2/nothing", "application/json", b"{}");
    assert_eq!((status, ct.as_str()), (404, "text/plain"));
    // The client reads them as permanent rejections with the node's text.
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let e = c.broadcast_transaction(b"hello").unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(r) if r.message().is_some_and(|m| m.contains("SIP-003"))),
        "{e:?}"
    );
    assert!(!e.is_transient());
}

// --- blocks, depth, `?tip=` and forks ----------------------------------------

use devnet::stacks::{boot_block_id, ForkError, Orphaned, STATE_DEPTH};
use peg_ops::contract::{decode_record, TxidRecord, GET_BURN, GET_MINT};
use stacks_wire::transaction::sha512_256;

fn burn(nonce: u64, from: u8, amount: u64, txid: &str) -> StacksTransaction {
    let pc = PostCondition::Fungible {
        principal: PostConditionPrincipal::Standard(addr(from)),
        asset: AssetInfo {
            contract: contract(),
            asset_name: "sbtc".into(),
        },
        code: FungibleConditionCode::SentEq,
        amount,
    };
    call(
        &key(1),
        nonce,
        1000,
        "burn!",
        vec![
            Value::UInt(amount.into()),
            Value::Principal(addr(from).into()),
            Value::StringAscii(txid.into()),
        ],
        vec![pc],
    )
}

fn http_get(url: &str) -> (u16, String, Option<String>, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut r = agent.get(url).call().unwrap();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ct = header("content-type").unwrap_or_default();
    let canonical = header("x-canonical-stacks-tip-height");
    (
        r.status().as_u16(),
        ct,
        canonical,
        r.body_mut().read_to_string().unwrap(),
    )
}

/// The index block hash of a `/v2/headers` entry, computed as the real
/// node's ids are: SHA512/256(SHA512/256(header) ‖ consensus hash).
fn entry_id(e: &serde_json::Value) -> [u8; 32] {
    let header = hex::decode(e["header"].as_str().unwrap()).unwrap();
    let consensus = hex::decode(e["consensus_hash"].as_str().unwrap()).unwrap();
    sha512_256(&[sha512_256(&header).as_slice(), &consensus].concat())
}

fn record(c: &UreqStacksNode, f: &str, txid: &str, at: &[u8; 32]) -> Option<TxidRecord> {
    let me: PrincipalData = addr(1).into();
    let v = c
        .call_read_at(&contract(), f, &[Value::StringAscii(txid.into())], &me, at)
        .unwrap();
    decode_record(&v).unwrap()
}

/// Every block has an id, a parent and a header that chain as on the real
/// node; the client's `block_at_depth` finds the emulator's own blocks.
#[test]
fn blocks_chain_and_block_at_depth_finds_them() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    for _ in 0..5 {
        em.with(|s| s.mine());
    }
    let height = em.with(|s| s.height);
    assert_eq!(height, 6);
    assert_eq!(c.get_info().unwrap().stacks_tip, em.with(|s| s.tip().id));
    let mut ids = Vec::new();
    for d in 0..=height {
        let got = c.block_at_depth(d as u32).unwrap();
        assert_eq!(got, em.with(|s| s.block_at_depth(d)), "depth {d}");
        ids.push(got.unwrap());
    }
    // Depth = height is the boot block; below it, nothing.
    assert_eq!(ids[height as usize], boot_block_id());
    assert_eq!(c.block_at_depth(height as u32 + 1).unwrap(), None);
    assert_eq!(em.with(|s| s.block_at_depth(height + 1)), None);
    // All distinct; each block's header names its parent's block hash.
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    em.with(|s| {
        for w in ids.windows(2) {
            let (b, parent) = (s.block(&w[0]).unwrap(), w[1]);
            assert_eq!(b.parent, parent);
            assert_eq!(b.header.len(), 247);
            assert_eq!(sha512_256(&b.header), b.block_hash);
            if let Some(p) = s.block(&parent).filter(|p| p.height > 0) {
                assert_eq!(&b.header[97..129], p.block_hash.as_slice());
            }
        }
    });
}

/// `/v2/headers/{n}` in the real node's shape: the start block first, `n`
/// entries at most, down to block 1; `?tip=` starts elsewhere; its errors
/// are the real node's plain-text answers.
#[test]
fn headers_answer_as_the_real_node_does() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    for _ in 0..3 {
        em.with(|s| s.mine());
    }
    let u = em.url();
    let (status, ct, canonical, body) = http_get(&format!("{u}/v2/headers/3"));
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(canonical.as_deref(), Some("4"));
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 3);
    for e in &list {
        let mut keys: Vec<_> = e.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["consensus_hash", "header", "parent_block_id"]);
    }
    let tip = em.with(|s| s.tip().id);
    assert_eq!(entry_id(&list[0]), tip);
    for w in list.windows(2) {
        assert_eq!(w[0]["parent_block_id"], hex::encode(entry_id(&w[1])));
    }
    // From a given tip: that block first.
    let below = em.with(|s| s.block_at_depth(1).unwrap());
    let (_, _, _, body) = http_get(&format!("{u}/v2/headers/2?tip={}", hex::encode(below)));
    let from: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(from, list[1..]);
    // Upper-case hex is the same block.
    let (_, _, _, upper) = http_get(&format!(
        "{u}/v2/headers/2?tip={}",
        hex::encode_upper(below)
    ));
    assert_eq!(upper, body);
    // More than the chain holds: down to block 1.
    let (_, _, _, all) = http_get(&format!("{u}/v2/headers/2100"));
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&all)
            .unwrap()
            .len(),
        4
    );
    // A malformed tip is ignored: the canonical tip's answer.
    let (_, _, _, canonical2) = http_get(&format!("{u}/v2/headers/2"));
    for bad in [
        format!("0x{}", hex::encode(below)),
        "zz".into(),
        "latest".into(),
        hex::encode(below)[..62].to_owned(),
    ] {
        let (status, _, _, b) = http_get(&format!("{u}/v2/headers/2?tip={bad}"));
        assert_eq!((status, &b), (200, &canonical2), "{bad}");
    }
    // The real node's errors.
    let unknown = "11".repeat(32);
    assert_eq!(
        http_get(&format!("{u}/v2/headers/2?tip={unknown}")),
        (
            404,
            "text/plain".into(),
            None,
            format!("No such block {unknown}\n")
        )
    );
    let boot = hex::encode(boot_block_id());
    assert_eq!(http_get(&format!("{u}/v2/headers/1?tip={boot}")).0, 404);
    assert_eq!(
        http_get(&format!("{u}/v2/headers/2101")),
        (
            400,
            "text/plain".into(),
            None,
            "Invalid request: requested more than 2100 headers\n".into()
        )
    );
    assert_eq!(
        http_get(&format!("{u}/v2/headers/abc")),
        (
            400,
            "text/plain".into(),
            None,
            "Invalid path parameters for '/v2/headers/abc'".into()
        )
    );
    let (status, _, _, body) = http_get(&format!("{u}/v2/headers/0"));
    assert_eq!((status, body.as_str()), (200, "[]"));
}

/// A read at a block answers from the contract as of that block: a mint is
/// visible at its block and above, not below; an unknown block is the
/// node's 404, never an answer at another block.
#[test]
fn reads_at_a_tip_answer_from_that_blocks_state() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let me: PrincipalData = addr(1).into();
    let before = c.block_at_depth(0).unwrap().unwrap();
    c.broadcast_transaction(&mint(0, 2, 5000, "in-1").serialize())
        .unwrap();
    em.with(|s| s.mine());
    let minted_at = c.block_at_depth(0).unwrap().unwrap();
    em.with(|s| s.mine());
    let want = TxidRecord {
        amount: 5000,
        principal: addr(2).into(),
    };
    // At the tip, at the mint's block (depth 1), and not before it.
    let tip = c.block_at_depth(0).unwrap().unwrap();
    assert_eq!(record(&c, GET_MINT, "in-1", &tip), Some(want.clone()));
    assert_eq!(c.block_at_depth(1).unwrap(), Some(minted_at));
    assert_eq!(record(&c, GET_MINT, "in-1", &minted_at), Some(want));
    assert_eq!(record(&c, GET_MINT, "in-1", &before), None);
    assert_eq!(
        c.call_read_at(
            &contract(),
            "was-minted",
            &[Value::StringAscii("in-1".into())],
            &me,
            &before
        )
        .unwrap(),
        Value::Bool(false)
    );
    // An unknown block: the node's 404.
    let e = c
        .call_read_at(
            &contract(),
            GET_MINT,
            &[Value::StringAscii("in-1".into())],
            &me,
            &[7; 32],
        )
        .unwrap_err();
    assert_eq!(e, Error::UnknownTip(hex::encode([7u8; 32])));
    // The boot block: no contract there yet, as on the real node.
    let e = c
        .call_read_at(&contract(), "get-threshold", &[], &me, &boot_block_id())
        .unwrap_err();
    assert!(
        matches!(&e, Error::CallReadFailed(m) if m.contains("NoSuchContract")),
        "{e:?}"
    );
    // A malformed tip is ignored (the canonical tip's state), like the real
    // node: why the client only ever sends 64 bare hex digits.
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let body = serde_json::json!({"sender": me.to_string(), "arguments": [Value::StringAscii("in-1".into()).to_hex()]});
    let r = agent
        .post(format!(
            "{}/v2/contracts/call-read/{}/sbtc-alpha/get-mint?tip=0x{}",
            em.url(),
            addr(1),
            hex::encode(before)
        ))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    let answered = Value::from_hex(v["result"].as_str().unwrap()).unwrap();
    assert!(decode_record(&answered).unwrap().is_some(), "{r}");
}

/// States are kept for the tip and [`STATE_DEPTH`] blocks below it; deeper
/// reads are the unknown-tip 404 (bounded memory), headers stay.
#[test]
fn states_are_kept_for_state_depth_blocks() {
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let me: PrincipalData = addr(1).into();
    for _ in 0..STATE_DEPTH + 3 {
        em.with(|s| s.mine());
    }
    let read = |d: u64| {
        let id = c.block_at_depth(d as u32).unwrap().unwrap();
        c.call_read_at(&contract(), "get-threshold", &[], &me, &id)
    };
    assert_eq!(read(STATE_DEPTH).unwrap(), Value::UInt(0));
    assert!(matches!(read(STATE_DEPTH + 1), Err(Error::UnknownTip(_))));
    assert!(c.block_at_depth(STATE_DEPTH as u32 + 2).unwrap().is_some());
}

/// A fork drops a mint and a burn that were not deep enough: their effects
/// are undone, the new branch has new ids, a value read at a final depth
/// never showed them, and the dropped blocks still answer at their own ids
/// (as a real node's forked-away blocks do).
#[test]
fn a_fork_undoes_a_mint_and_a_burn_not_yet_deep_enough() {
    const CONFIRMATIONS: u32 = 3;
    let em = StacksEmulator::start("127.0.0.1:0", state()).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let final_record = |f: &str, txid: &str| {
        let at = c.block_at_depth(CONFIRMATIONS - 1).unwrap().unwrap();
        record(&c, f, txid, &at)
    };
    // A mint, deep enough.
    c.broadcast_transaction(&mint(0, 2, 1000, "in-1").serialize())
        .unwrap();
    for _ in 0..CONFIRMATIONS {
        em.with(|s| s.mine());
    }
    assert!(final_record(GET_MINT, "in-1").is_some());
    // A burn and a second mint, one block deep: visible at the tip only.
    c.broadcast_transaction(&burn(1, 2, 400, "out-1").serialize())
        .unwrap();
    c.broadcast_transaction(&mint(2, 3, 77, "in-2").serialize())
        .unwrap();
    em.with(|s| s.mine());
    let burned_at = c.block_at_depth(0).unwrap().unwrap();
    em.with(|s| s.mine());
    let tip = c.block_at_depth(0).unwrap().unwrap();
    assert_eq!(
        record(&c, GET_BURN, "out-1", &tip),
        Some(TxidRecord {
            amount: 400,
            principal: addr(2).into()
        })
    );
    assert_eq!(final_record(GET_BURN, "out-1"), None, "not final yet");
    assert_eq!(final_record(GET_MINT, "in-2"), None, "not final yet");
    let height = em.with(|s| s.height);

    // The fork: both blocks go, their transactions are discarded.
    let dropped = em.with(|s| s.drop_blocks(2, Orphaned::Discard)).unwrap();
    assert_eq!(dropped.len(), 2);
    em.with(|s| {
        assert_eq!(s.height, height - 2);
        assert_eq!(s.model.balances[&PrincipalData::from(addr(2))], 1000);
        assert!(!s.model.burned.contains_key("out-1"));
        assert!(!s.model.minted.contains_key("in-2"));
        assert_eq!(s.model.supply, 1000);
        // The coordinator's nonce and fees are back as before them.
        assert_eq!(s.accounts[&addr(1)], (10_000_000 - 1000, 1));
        assert!(s.receipts.iter().all(|r| r.height <= height - 2));
        assert!(s.mempool.is_empty());
    });
    assert_eq!(c.get_account(&addr(1).into()).unwrap().nonce, 1);
    let new_tip = c.block_at_depth(0).unwrap().unwrap();
    assert_eq!(record(&c, GET_BURN, "out-1", &new_tip), None);
    // Mining goes on from the new tip with new ids, at the old heights.
    for _ in 0..CONFIRMATIONS {
        em.with(|s| s.mine());
    }
    assert_eq!(em.with(|s| s.height), height + 1);
    let branch: Vec<_> = (0..=CONFIRMATIONS + 1)
        .map(|d| c.block_at_depth(d).unwrap().unwrap())
        .collect();
    assert!(!branch.contains(&burned_at) && !branch.contains(&tip));
    assert_eq!(final_record(GET_BURN, "out-1"), None, "never final");
    assert_eq!(final_record(GET_MINT, "in-1").unwrap().amount, 1000);
    // The dropped block still answers, at itself (never at the new branch).
    assert_eq!(
        record(&c, GET_BURN, "out-1", &burned_at).unwrap().amount,
        400
    );
    em.with(|s| assert!(!s.is_canonical(&burned_at) && s.block(&burned_at).is_some()));
    // A rebroadcast of the dropped burn is admitted again (not "known").
    let again = burn(1, 2, 400, "out-1");
    c.broadcast_transaction(&again.serialize()).unwrap();
    em.with(|s| s.mine());
    assert!(record(
        &c,
        GET_BURN,
        "out-1",
        &c.block_at_depth(0).unwrap().unwrap()
    )
    .is_some());
    // A dropped block's state goes, like a canonical one's, past STATE_DEPTH.
    for _ in 0..STATE_DEPTH {
        em.with(|s| s.mine());
    }
    let e = c
        .call_read_at(
            &contract(),
            GET_BURN,
            &[Value::StringAscii("out-1".into())],
            &addr(1).into(),
            &burned_at,
        )
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTip(_)), "{e:?}");
}

/// With `ToMempool` the dropped transactions are mined again on the new
/// branch (what a real node does), in their nonce order.
#[test]
fn a_fork_can_put_the_dropped_transactions_back_in_the_mempool() {
    let mut s = state();
    s.admit(&mint(0, 2, 1000, "in-1").serialize()).unwrap();
    s.mine();
    s.admit(&mint(1, 3, 5, "in-2").serialize()).unwrap();
    s.mine();
    let old_tip = s.tip().id;
    // A pending transaction stays behind the dropped ones.
    s.admit(&mint(2, 3, 6, "in-3").serialize()).unwrap();
    let dropped = s.drop_blocks(2, Orphaned::ToMempool).unwrap();
    assert_eq!(dropped.len(), 2);
    assert!(s.model.minted.is_empty());
    assert_eq!(s.mempool.len(), 3);
    // Known as pending, not as mined: a rebroadcast is a success, once.
    assert_eq!(
        s.admit(&mint(0, 2, 1000, "in-1").serialize()).unwrap(),
        mint(0, 2, 1000, "in-1").txid().to_string()
    );
    assert_eq!(s.mempool.len(), 3);
    assert_eq!(s.mine(), 3);
    assert_ne!(s.tip().id, old_tip);
    assert_eq!(s.model.minted.len(), 3);
    assert_eq!(s.model.supply, 1011);
}

#[test]
fn a_fork_needs_a_kept_state_above_the_boot_block() {
    let mut s = state();
    s.mine();
    // Height 2: dropping 2 would leave the boot block.
    assert_eq!(
        s.drop_blocks(2, Orphaned::Discard).unwrap_err(),
        ForkError::TooDeep(2, 2)
    );
    for _ in 0..STATE_DEPTH + 2 {
        s.mine();
    }
    let tip = s.tip().id;
    assert_eq!(
        s.drop_blocks(STATE_DEPTH + 1, Orphaned::Discard)
            .unwrap_err(),
        ForkError::StateGone(STATE_DEPTH + 1)
    );
    assert_eq!(s.tip().id, tip, "a refused fork changes nothing");
    assert!(s.drop_blocks(STATE_DEPTH, Orphaned::Discard).is_ok());
    assert_eq!(s.drop_blocks(0, Orphaned::Discard).unwrap(), vec![]);
}

/// A test hook that changes the model directly belongs to the tip it was
/// made at: sealed into that block's state, undone by a fork below it.
#[test]
fn direct_changes_belong_to_the_tip_they_were_made_at() {
    let mut s = state();
    s.mine();
    let at = s.tip().id;
    s.model.threshold = 7;
    s.mine();
    s.mine();
    s.model.threshold = 9;
    s.mine();
    // Reads at `at` see the hook (it was made while `at` was the tip).
    let em = StacksEmulator::start("127.0.0.1:0", s).unwrap();
    let c = UreqStacksNode::new(&em.url(), Duration::from_secs(5));
    let me: PrincipalData = addr(1).into();
    let read = |id: &[u8; 32]| {
        c.call_read_at(&contract(), "get-threshold", &[], &me, id)
            .unwrap()
    };
    assert_eq!(read(&at), Value::UInt(7));
    assert_eq!(read(&c.block_at_depth(0).unwrap().unwrap()), Value::UInt(9));
    em.with(|s| s.drop_blocks(1, Orphaned::Discard)).unwrap();
    assert_eq!(
        em.with(|s| s.model.threshold),
        9,
        "made at the new tip: kept"
    );
    em.with(|s| s.drop_blocks(2, Orphaned::Discard)).unwrap();
    assert_eq!(em.with(|s| s.model.threshold), 7);
}

// --- batches: mint-many! / burn-many! -----------------------------------------

fn sbtc_le(who: u8, amount: u64) -> PostCondition {
    PostCondition::Fungible {
        principal: PostConditionPrincipal::Standard(addr(who)),
        asset: AssetInfo {
            contract: contract(),
            asset_name: "sbtc".into(),
        },
        code: FungibleConditionCode::SentLe,
        amount,
    }
}

fn element(amount: u128, who: u8, field: &str, txid_field: &str, txid: &str) -> Value {
    Value::tuple([
        ("amount", Value::UInt(amount)),
        (field, Value::Principal(addr(who).into())),
        (txid_field, Value::StringAscii(txid.into())),
    ])
    .unwrap()
}

fn mint_many(k: u8, nonce: u64, fee: u64, els: &[(u128, u8, &str)]) -> StacksTransaction {
    let list = els
        .iter()
        .map(|(a, w, t)| element(*a, *w, "dst", "peg-in-txid", t))
        .collect();
    call(
        &key(k),
        nonce,
        fee,
        "mint-many!",
        vec![Value::List(list)],
        vec![],
    )
}

fn burn_many(nonce: u64, els: &[(u128, u8, &str)], pcs: Vec<PostCondition>) -> StacksTransaction {
    let list = els
        .iter()
        .map(|(a, w, t)| element(*a, *w, "src", "peg-out-txid", t))
        .collect();
    call(
        &key(1),
        nonce,
        5000,
        "burn-many!",
        vec![Value::List(list)],
        pcs,
    )
}

fn oks(rs: &[Result<(), u128>]) -> Result<Value, String> {
    Ok(Value::Ok(Box::new(Value::List(
        rs.iter()
            .map(|r| match r {
                Ok(()) => Value::Ok(Box::new(Value::Bool(true))),
                Err(c) => Value::Err(Box::new(Value::UInt(*c))),
            })
            .collect(),
    ))))
}

/// The emulator runs batches element by element and judges deny-mode
/// `SentLe` on what the whole call burned per principal, as the real node
/// does (`batched_calls_on_the_real_node_and_the_emulator` compares them).
#[test]
fn batches_run_element_by_element_under_deny_mode_sent_le() {
    let mut s = state();
    let one = |s: &mut StacksState, tx: StacksTransaction| {
        s.admit(&tx.serialize()).unwrap();
        assert_eq!(s.mine(), 1);
        last_result(s)
    };
    let r = one(
        &mut s,
        mint_many(
            1,
            0,
            5000,
            &[(1000, 2, "a"), (0, 2, "b"), (500, 3, "c"), (1, 3, "a")],
        ),
    );
    assert_eq!(
        r,
        oks(&[
            Ok(()),
            Err(err::INVALID_AMOUNT),
            Ok(()),
            Err(err::ALREADY_MINTED)
        ])
    );
    assert_eq!(s.model.balances[&addr(2).into()], 1000);
    // Not the coordinator: the whole call fails.
    let r = one(&mut s, mint_many(2, 0, 5000, &[(1, 2, "z")]));
    assert_eq!(r, err_u(err::NOT_COORDINATOR));
    // 2 burns 300 + 800 (short: 700 left) + 100; 3 burns 500. SentLe 1,200
    // and 500 hold although the short element burned nothing.
    let r = one(
        &mut s,
        burn_many(
            1,
            &[(300, 2, "p"), (800, 2, "q"), (500, 3, "r"), (100, 2, "s")],
            vec![sbtc_le(2, 1200), sbtc_le(3, 500)],
        ),
    );
    assert_eq!(
        r,
        oks(&[Ok(()), Err(err::INSUFFICIENT_BALANCE), Ok(()), Ok(())])
    );
    assert_eq!(s.model.balances[&addr(2).into()], 600);
    assert_eq!(s.model.balances[&addr(3).into()], 0);
    assert!(!s.model.burned.contains_key("q"));
    // One short: the call aborts as a whole, nonce spent, nothing burned.
    let r = one(
        &mut s,
        burn_many(2, &[(100, 2, "t"), (100, 2, "u")], vec![sbtc_le(2, 199)]),
    );
    assert!(
        matches!(&r, Err(e) if e.contains("post condition")),
        "{r:?}"
    );
    assert_eq!(s.model.balances[&addr(2).into()], 600);
    assert!(!s.model.burned.contains_key("t"));
    // Deny mode: a requester burned with no condition covering it aborts too.
    let r = one(
        &mut s,
        burn_many(3, &[(100, 2, "v")], vec![sbtc_le(3, 100)]),
    );
    assert!(matches!(&r, Err(e) if e.contains("deny mode")), "{r:?}");
    assert_eq!(s.model.balances[&addr(2).into()], 600);
    assert_eq!(s.model.supply, 600);
}

/// What the real node refuses at admission, the emulator refuses: a list
/// over 200, a tuple with a missing or extra field, a txid over 72
/// characters; an empty list is admitted (and answers `(ok ())`).
#[test]
fn batch_arguments_are_type_checked_at_admission() {
    let mut s = state();
    let reason =
        |s: &mut StacksState, tx: StacksTransaction| s.admit(&tx.serialize()).map_err(|e| e.0);
    let els: Vec<(u128, u8, String)> = (0..=200).map(|i| (1, 2, format!("t{i}"))).collect();
    let refs: Vec<(u128, u8, &str)> = els.iter().map(|(a, w, t)| (*a, *w, t.as_str())).collect();
    assert_eq!(
        reason(&mut s, mint_many(1, 0, 50_000, &refs)),
        Err("BadFunctionArgument".to_owned())
    );
    let bad = |args: Vec<Value>| call(&key(1), 0, 5000, "burn-many!", args, vec![]);
    let missing = Value::tuple([
        ("amount", Value::UInt(1)),
        ("src", Value::Principal(addr(2).into())),
    ])
    .unwrap();
    let extra = Value::tuple([
        ("amount", Value::UInt(1)),
        ("src", Value::Principal(addr(2).into())),
        ("peg-out-txid", Value::StringAscii("a".into())),
        ("memo", Value::UInt(1)),
    ])
    .unwrap();
    let long = element(1, 2, "src", "peg-out-txid", &"a".repeat(73));
    let mint_shaped = element(1, 2, "dst", "peg-in-txid", "a");
    for args in [
        vec![Value::List(vec![missing])],
        vec![Value::List(vec![extra])],
        vec![Value::List(vec![long])],
        vec![Value::List(vec![mint_shaped])],
        vec![Value::UInt(1)],
        vec![],
    ] {
        assert_eq!(
            reason(&mut s, bad(args.clone())),
            Err("BadFunctionArgument".to_owned()),
            "{args:?}"
        );
    }
    // Exactly 200, and the empty list, are admitted.
    assert!(reason(&mut s, mint_many(1, 0, 50_000, &refs[..200])).is_ok());
    assert!(reason(&mut s, mint_many(1, 1, 5000, &[])).is_ok());
    assert_eq!(s.mine(), 2);
    assert_eq!(last_result(&s), oks(&[]));
    assert_eq!(s.model.supply, 200);
}

/// A block holds at most 2 MiB, as on the real node: of 100 full
/// `mint-many!` calls (27,368 bytes each) pending from four accounts, one
/// block mines 76, the next the other 24 (what stacks-node 4.0.2 did).
#[test]
fn a_block_holds_at_most_two_mib_of_transactions() {
    let mut s = state();
    s.fund(addr(4), 10_000_000);
    let txids: Vec<String> = (0..25 * 200).map(|i| format!("{i:064x}")).collect();
    let mut len = 0;
    for k in 1..=4u8 {
        for n in 0..25u64 {
            let els: Vec<(u128, u8, &str)> = (0..200)
                .map(|j| (1000, 2, txids[(n * 200 + j) as usize].as_str()))
                .collect();
            let tx = mint_many(k, n, 30_000, &els);
            len = tx.serialize().len();
            s.admit(&tx.serialize()).unwrap();
        }
    }
    assert_eq!(len, 27_368, "the size measured on the real node");
    assert_eq!(s.mine(), 76);
    assert_eq!(s.mine(), 24);
    assert_eq!(s.mine(), 0);
    // The coordinator's 25 calls all took effect, over the two blocks.
    assert_eq!(s.model.supply, 25 * 200 * 1000);
}
