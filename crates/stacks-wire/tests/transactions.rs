//! Published signed-transaction vectors (reference §1.5), reproduced byte for
//! byte, and property tests of the transaction codec.
//!
//! Sources:
//! - stacks.js `packages/transactions/tests/builder.test.ts`: "Make
//!   contract-call", "Make contract-call with post condition allow mode",
//!   "Make STX token transfer with set tx fee" / "with fee estimate" / "with
//!   testnet";
//! - `@stacks/transactions` 7.6.0 `makeContractDeploy` (generated with it,
//!   see `versioned_smart_contract_*`): Clarity 2 and unversioned deploys;
//! - stacks-core `contrib/stacks-cli/src/main.rs`:
//!   `test_contract_call_with_serialized_arg_from_file_ok`, `simple_decode_tx`.

use bitcoin::secp256k1::SecretKey;
use proptest::prelude::*;
use stacks_wire::{
    AssetInfo, ClarityVersion, ContractId, FungibleConditionCode, Payload, PostCondition,
    PostConditionMode, PostConditionPrincipal, PrincipalData, StacksAddress, StacksNetwork,
    StacksPrivateKey, StacksTransaction, Value,
};

fn key(hex_key: &str) -> StacksPrivateKey {
    let bytes = hex::decode(hex_key).unwrap();
    StacksPrivateKey {
        key: SecretKey::from_slice(&bytes[..32]).unwrap(),
        compressed: bytes.len() == 33 && bytes[32] == 1,
    }
}

fn contract_call(contract: &str, function: &str, args: Vec<Value>) -> Payload {
    Payload::ContractCall {
        contract: contract.parse().unwrap(),
        function_name: function.into(),
        args,
    }
}

fn signed(
    network: StacksNetwork,
    k: &StacksPrivateKey,
    nonce: u64,
    fee: u64,
    mode: PostConditionMode,
    payload: Payload,
) -> StacksTransaction {
    let mut tx = StacksTransaction::new(network, k, nonce, fee, mode, vec![], payload).unwrap();
    tx.sign(k).unwrap();
    tx
}

fn assert_vector(tx: &StacksTransaction, expected_hex: &str) {
    assert_eq!(hex::encode(tx.serialize()), expected_hex);
    let back = StacksTransaction::deserialize(&hex::decode(expected_hex).unwrap()).unwrap();
    assert_eq!(&back, tx);
    back.verify().unwrap();
}

const STACKS_JS_KEY: &str = "e494f188c2d35887531ba474c433b1e41fadd8eb824aca983447fd4bb8b277a801";

#[test]
fn stacks_js_contract_call_deny_mode_with_txid() {
    let tx = signed(
        StacksNetwork::Testnet,
        &key(STACKS_JS_KEY),
        1,
        0,
        PostConditionMode::Deny,
        contract_call(
            "ST3KC0MTNW34S1ZXD36JYKFD3JJMWA01M55DSJ4JE.kv-store",
            "get-value",
            vec![Value::Buffer(b"foo".to_vec())],
        ),
    );
    assert_vector(
        &tx,
        concat!(
            "80800000000400e6c05355e0c990ffad19a5e9bda394a9c500342900000000000000010000000000000000",
            "0000b2c4262b8716891ee4a3361b31b3847cdb3d4897538f0f7716a3720686aee96f01be6610141c6afb36",
            "f32c60575147b7e08191bae5cf9706c528adf46f28473e030200000000021ae6c05355e0c990ffad19a5e9",
            "bda394a9c5003429086b762d73746f7265096765742d76616c7565000000010200000003666f6f"
        ),
    );
    assert_eq!(
        tx.txid().to_string(),
        "98642a68528c7631be0dcefa910ce3a881480a7dbba9bca7b2d0f3c6fa5987dd"
    );
}

#[test]
fn stacks_js_contract_call_allow_mode() {
    let tx = signed(
        StacksNetwork::Testnet,
        &key(STACKS_JS_KEY),
        1,
        0,
        PostConditionMode::Allow,
        contract_call(
            "ST3KC0MTNW34S1ZXD36JYKFD3JJMWA01M55DSJ4JE.kv-store",
            "get-value",
            vec![Value::Buffer(b"foo".to_vec())],
        ),
    );
    assert_vector(
        &tx,
        concat!(
            "80800000000400e6c05355e0c990ffad19a5e9bda394a9c50034290000000000000001000000000000000",
            "0000074ba5083c1b444e5d1eb7bc7add66a9a511f57fc4b2514f5b0e54892962d5b453ea0ec6e473bc695",
            "22fd3fdd9104b7a354f830ad7ceabd0b3f2859d15697ad9b030100000000021ae6c05355e0c990ffad19a",
            "5e9bda394a9c5003429086b762d73746f7265096765742d76616c7565000000010200000003666f6f"
        ),
    );
}

#[test]
fn stacks_cli_mainnet_uncompressed_key_contract_call() {
    let tx = signed(
        StacksNetwork::Mainnet,
        &key("043ff5004e3d695060fa48ac94c96049b8c14ef441c50a184a6a3875d2a000f3"),
        0,
        1,
        PostConditionMode::Deny,
        contract_call(
            "SPJT598WY1RJN792HRKRHRQYFB7RJ5ZCG6J6GEZ4.foo-contract",
            "transfer-fookens",
            vec![Value::Int(1)],
        ),
    );
    assert!(!tx.auth.compressed);
    assert_vector(
        &tx,
        concat!(
            "0000000001040021a3c334fc0ee50359353799e8b2605ac6be1fe4000000000000000000000000000000",
            "01010011db0868db0cd44c463b3a8a8b3b428ddaad15661e7b7d8c92c814c142c526e30abffe74e1e098",
            "f517037a1ee74969f4db27630407f4c958cb0d6e1d7485fe06030200000000021625a2a51cf0712a9d22",
            "8e2788e2fe7acf8917ec810c666f6f2d636f6e7472616374107472616e736665722d666f6f6b656e7300",
            "0000010000000000000000000000000000000001"
        ),
    );
}

#[test]
fn stacks_cli_decode_tx_vector_verifies_and_round_trips() {
    let hex_tx = concat!(
        "8080000000040021a3c334fc0ee50359353799e8b2605ac6be1fe4000000000000000100000000000000000100",
        "c90ae0235365f3a73c595f8c6ab3c529807feb3cb269247329c9a24218d50d3f34c7eef5d28ba26831affa652a",
        "73ec32f098fec4bf1decd1ceb3fde4b8ce216b030200000000021a21a3c334fc0ee50359353799e8b2605ac6be",
        "1fe40573746f7265096765742d76616c7565000000010d00000003666f6f"
    );
    let tx = StacksTransaction::deserialize(&hex::decode(hex_tx).unwrap()).unwrap();
    tx.verify().unwrap();
    assert_eq!(hex::encode(tx.serialize()), hex_tx);
    match &tx.payload {
        Payload::ContractCall { args, .. } => assert_eq!(args, &[Value::StringAscii("foo".into())]),
        other => panic!("{other:?}"),
    }
}

fn token_transfer(memo: &str) -> Payload {
    let mut m = [0u8; 34];
    m[..memo.len()].copy_from_slice(memo.as_bytes());
    Payload::TokenTransfer {
        recipient: "SP3FGQ8Z7JY9BWYZ5WM53E0M9NK7WHJF0691NZ159".parse().unwrap(),
        amount: 12345,
        memo: m,
    }
}

const TRANSFER_KEY: &str = "edf9aee84d9b7abc145504dde6726c64f369d37ee34ded868fabd876c26570bc01";
const TRANSFER_TAIL: &str = concat!(
    "030200000000000516df0ba3e79792be7be5e50a370289accfc8c9e032000000000000303974657374206d656d6f",
    "00000000000000000000000000000000000000000000000000"
);

#[test]
fn stacks_js_token_transfers() {
    let cases = [
        (
            StacksNetwork::Mainnet,
            0,
            concat!(
                "0000000001040015c31b8c1c11c515e244b75806bac48d1399c7750000000000000000000000000000000000",
                "008b316d56e35b3b8d03ab3b9dbe05eb44d64c53e7ba3c468f9a78c82a13f2174c32facb0f29faeb21075e",
                "c933db935ebc28a8793cc60e14b8ee4ef05f52c94016"
            ),
        ),
        (
            StacksNetwork::Mainnet,
            180,
            concat!(
                "0000000001040015c31b8c1c11c515e244b75806bac48d1399c775000000000000000000000000000000b4",
                "0001e5ac1152f6018fbfded102268b22086666150823d0ae57f4023bde058a7ff0b279076db25b358b8833",
                "2efba7a8a75e7ccd08207af62d799e6eb8b0357ad55558"
            ),
        ),
        (
            StacksNetwork::Testnet,
            0,
            concat!(
                "8080000000040015c31b8c1c11c515e244b75806bac48d1399c7750000000000000000000000000000000000",
                "014199f63f7e010141a36a4624d032758f54e08ff03b24ed2667463eb405b4d81505631b32a1f13b57371f",
                "29a6095b81741b32b5864b178e3546ff2bfb3dc08682"
            ),
        ),
    ];
    for (network, fee, head) in cases {
        let tx = signed(
            network,
            &key(TRANSFER_KEY),
            0,
            fee,
            PostConditionMode::Deny,
            token_transfer("test memo"),
        );
        assert_vector(&tx, &format!("{head}{TRANSFER_TAIL}"));
    }
}

#[test]
fn a_tampered_transaction_fails_verification() {
    let tx = signed(
        StacksNetwork::Testnet,
        &key(STACKS_JS_KEY),
        1,
        0,
        PostConditionMode::Deny,
        contract_call(
            "ST3KC0MTNW34S1ZXD36JYKFD3JJMWA01M55DSJ4JE.kv-store",
            "get-value",
            vec![Value::UInt(7)],
        ),
    );
    let bytes = tx.serialize();
    // Flip the low bit of the argument: still decodes, no longer verifies.
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    let t = StacksTransaction::deserialize(&bad).unwrap();
    assert!(t.verify().is_err());
    // A raised fee is caught too (it is in the presign hash).
    let mut t = tx.clone();
    t.auth.fee += 1;
    assert!(t.verify().is_err());
    // Signing with someone else's key is refused.
    let mut t = tx;
    assert!(t.sign(&key(TRANSFER_KEY)).is_err());
}

#[test]
fn trailing_bytes_and_unsupported_shapes_are_refused() {
    let tx = signed(
        StacksNetwork::Mainnet,
        &key(TRANSFER_KEY),
        0,
        0,
        PostConditionMode::Deny,
        token_transfer(""),
    );
    let mut bytes = tx.serialize();
    bytes.push(0);
    assert!(StacksTransaction::deserialize(&bytes).is_err());
    let mut sponsored = tx.serialize();
    sponsored[5] = 0x05;
    assert!(matches!(
        StacksTransaction::deserialize(&sponsored),
        Err(stacks_wire::Error::Unsupported(_))
    ));
}

// ---------------------------------------------------------------- properties

fn arb_address() -> impl Strategy<Value = StacksAddress> {
    (
        prop_oneof![Just(22u8), Just(20), Just(26), Just(21)],
        any::<[u8; 20]>(),
    )
        .prop_map(|(v, h)| StacksAddress::new(v, h).unwrap())
}

fn arb_contract() -> impl Strategy<Value = ContractId> {
    (arb_address(), "[a-z][a-z0-9-]{0,30}").prop_map(|(address, n)| ContractId {
        address,
        name: n.parse().unwrap(),
    })
}

fn arb_value() -> impl Strategy<Value = Value> {
    let principal = prop_oneof![
        arb_address().prop_map(PrincipalData::Standard),
        arb_contract().prop_map(PrincipalData::Contract)
    ];
    let leaf = prop_oneof![
        any::<i128>().prop_map(Value::Int),
        any::<u128>().prop_map(Value::UInt),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Buffer),
        any::<bool>().prop_map(Value::Bool),
        principal.prop_map(Value::Principal),
        "[ -~]{0,30}".prop_map(Value::StringAscii),
        "\\PC{0,10}".prop_map(Value::StringUtf8),
        Just(Value::none()),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            inner.clone().prop_map(|v| Value::Ok(Box::new(v))),
            inner.clone().prop_map(|v| Value::Err(Box::new(v))),
            inner.clone().prop_map(Value::some),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            proptest::collection::btree_map("[a-z][a-z0-9-]{0,8}", inner, 0..4)
                .prop_map(Value::Tuple),
        ]
    })
}

fn arb_post_condition() -> impl Strategy<Value = PostCondition> {
    let principal = prop_oneof![
        Just(PostConditionPrincipal::Origin),
        arb_address().prop_map(PostConditionPrincipal::Standard),
        arb_contract().prop_map(PostConditionPrincipal::Contract),
    ];
    let code = prop_oneof![
        Just(FungibleConditionCode::SentEq),
        Just(FungibleConditionCode::SentGe),
        Just(FungibleConditionCode::SentLe),
    ];
    prop_oneof![
        (principal.clone(), code.clone(), any::<u64>()).prop_map(|(principal, code, amount)| {
            PostCondition::Stx {
                principal,
                code,
                amount,
            }
        }),
        (
            principal,
            arb_contract(),
            "[a-z][a-z0-9-]{0,10}",
            code,
            any::<u64>()
        )
            .prop_map(|(principal, contract, asset_name, code, amount)| {
                PostCondition::Fungible {
                    principal,
                    asset: AssetInfo {
                        contract,
                        asset_name,
                    },
                    code,
                    amount,
                }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn signed_transactions_round_trip_and_verify(
        seed in any::<[u8; 32]>(),
        compressed in any::<bool>(),
        mainnet in any::<bool>(),
        nonce in any::<u64>(),
        fee in any::<u64>(),
        allow in any::<bool>(),
        pcs in proptest::collection::vec(arb_post_condition(), 0..3),
        contract in arb_contract(),
        function in "[a-z][a-z0-9!?-]{0,20}",
        args in proptest::collection::vec(arb_value(), 0..4),
    ) {
        let Ok(sk) = SecretKey::from_slice(&seed) else { return Ok(()) };
        let k = StacksPrivateKey { key: sk, compressed };
        let network = if mainnet { StacksNetwork::Mainnet } else { StacksNetwork::Testnet };
        let mode = if allow { PostConditionMode::Allow } else { PostConditionMode::Deny };
        let payload = Payload::ContractCall { contract, function_name: function, args };
        let mut tx = StacksTransaction::new(network, &k, nonce, fee, mode, pcs, payload).unwrap();
        tx.sign(&k).unwrap();
        let bytes = tx.serialize();
        let back = StacksTransaction::deserialize(&bytes).unwrap();
        prop_assert_eq!(&back, &tx);
        prop_assert_eq!(back.serialize(), bytes);
        prop_assert_eq!(back.verify().unwrap(), k.public_key());
        prop_assert_eq!(back.txid(), tx.txid());
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(tx) = StacksTransaction::deserialize(&bytes) {
            prop_assert_eq!(tx.serialize(), bytes);
        }
    }

    #[test]
    fn truncations_of_a_valid_transaction_never_panic(cut in 0usize..200) {
        let tx = signed(StacksNetwork::Testnet, &key(STACKS_JS_KEY), 1, 0, PostConditionMode::Deny,
            contract_call("ST3KC0MTNW34S1ZXD36JYKFD3JJMWA01M55DSJ4JE.kv-store", "get-value", vec![Value::UInt(7)]));
        let bytes = tx.serialize();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(StacksTransaction::deserialize(&bytes[..cut]).is_err());
    }
}

/// The deploy both vectors sign: `makeContractDeploy({contractName:
/// 'kv-store', codeBody: DEPLOY_CODE, senderKey: STACKS_JS_KEY, fee: 180,
/// nonce: 3, network: 'testnet', clarityVersion, postConditionMode: Deny})`
/// with `@stacks/transactions` 7.6.0.
const DEPLOY_CODE: &str = "(define-read-only (get-value) (ok u1))";

fn deploy(version: Option<ClarityVersion>) -> StacksTransaction {
    signed(
        StacksNetwork::Testnet,
        &key(STACKS_JS_KEY),
        3,
        180,
        PostConditionMode::Deny,
        Payload::SmartContract {
            name: "kv-store".parse().unwrap(),
            code_body: DEPLOY_CODE.into(),
            clarity_version: version,
        },
    )
}

#[test]
fn versioned_smart_contract_clarity2_matches_stacks_js() {
    // Payload: 06 (versioned smart contract) 02 (Clarity 2) 08 "kv-store"
    // 00000026 code body.
    let tx = deploy(Some(ClarityVersion::Clarity2));
    assert_vector(
        &tx,
        "80800000000400e6c05355e0c990ffad19a5e9bda394a9c5003429000000000000000300000000000000b4\
         000140b7d21a255293b813824d1ac537b33412345ba94c5c1f9721578582aba7a53f7b9f6f5663b6e54237ac\
         eeddb678a639babcd18d9bd78a67453ea14562ae4cf603020000000006\
         02086b762d73746f72650000002628646566696e652d726561642d6f6e6c7920286765742d76616c7565292028\
         6f6b2075312929",
    );
    assert_eq!(
        tx.txid().to_string(),
        "a74a346fe8aa53202b7606709ffc84009dcb56b4a2608b69738a3f4221e76e36"
    );
    assert_eq!(&tx.payload_bytes()[..2], &[0x06, 0x02]);
}

#[test]
fn unversioned_smart_contract_matches_stacks_js() {
    let tx = deploy(None);
    assert_vector(
        &tx,
        "80800000000400e6c05355e0c990ffad19a5e9bda394a9c5003429000000000000000300000000000000b4\
         000126f7affafae72b8d8433bb093f2a643aaf6cc03bf7d1a0d1ee799b6a22fc0d110d2c5c7cfbe46489390c\
         5148cac2263d65d59a38ed902bcc04a9b97724fc25dd030200000000\
         01086b762d73746f72650000002628646566696e652d726561642d6f6e6c7920286765742d76616c7565292028\
         6f6b2075312929",
    );
    assert_eq!(
        tx.txid().to_string(),
        "12bedfa739472b6a95892ec584ba2c3a2286cafadde47ea57f65f596e245d3a4"
    );
}

#[test]
fn every_clarity_version_round_trips_and_unknown_versions_are_refused() {
    for v in [
        ClarityVersion::Clarity1,
        ClarityVersion::Clarity2,
        ClarityVersion::Clarity3,
    ] {
        let tx = deploy(Some(v));
        let raw = tx.serialize();
        let back = StacksTransaction::deserialize(&raw).unwrap();
        assert_eq!(back, tx);
        assert_eq!(ClarityVersion::from_byte(v.to_byte()).unwrap(), v);
    }
    let raw = deploy(Some(ClarityVersion::Clarity2)).serialize();
    // From the end: code, its u32 length, "kv-store", its u8 length, then
    // the version byte after the 0x06 type byte.
    let at = raw.len() - DEPLOY_CODE.len() - 4 - 8 - 1 - 1;
    assert_eq!(&raw[at - 1..=at], &[0x06, 0x02]);
    for bad in [0u8, 4, 0xff] {
        let mut b = raw.clone();
        b[at] = bad;
        assert!(
            matches!(
                StacksTransaction::deserialize(&b),
                Err(stacks_wire::Error::Unsupported(_))
            ),
            "version byte {bad} was accepted"
        );
    }
}

#[test]
fn smart_contract_code_must_be_printable_ascii() {
    let k = key(STACKS_JS_KEY);
    let payload = Payload::SmartContract {
        name: "kv-store".parse().unwrap(),
        code_body: "(ok \"₿\")".into(),
        clarity_version: Some(ClarityVersion::Clarity2),
    };
    assert_eq!(
        StacksTransaction::new(
            StacksNetwork::Testnet,
            &k,
            0,
            0,
            PostConditionMode::Deny,
            vec![],
            payload
        ),
        Err(stacks_wire::Error::InvalidAscii)
    );
    // A decoder fed such a body refuses it too.
    let mut raw = deploy(None).serialize();
    let n = raw.len();
    raw[n - 2] = 0x80;
    assert_eq!(
        StacksTransaction::deserialize(&raw),
        Err(stacks_wire::Error::InvalidAscii)
    );
    // A length prefix longer than the input runs out of input.
    let mut raw = deploy(Some(ClarityVersion::Clarity2)).serialize();
    let n = raw.len();
    raw[n - DEPLOY_CODE.len() - 4] = 0x7f;
    assert!(matches!(
        StacksTransaction::deserialize(&raw),
        Err(stacks_wire::Error::UnexpectedEnd { .. })
    ));
}
