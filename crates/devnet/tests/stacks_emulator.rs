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
