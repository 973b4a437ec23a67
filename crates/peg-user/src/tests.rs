//! The builders' transactions parse back as the op the coordinator would
//! see, with the fee output the rules ask for; the checks refuse what the
//! peg would; attestations count only with the user's signer set.

use super::*;
use crate::chain::{fee_estimate, peg_wallet_key, sbtc_balance, unspent_now};
use bitcoin::secp256k1::ecdsa::Signature as EcdsaSig;
use bitcoin::{BlockHash, Txid};
use bitcoin_node_client::MockBitcoinNode;
use frost_net::messages::Message as NetMessage;
use frost_net::{Attestation, Codec, Sender, SignerFile};
use peg_ops::wire::{parse_transaction, Position};
use peg_ops::{BurnHeight, PegOp};
use peg_rules::{Allowlist, Networks, RequestFacts, Verdict};
use stacks_node_client::MockStacksNode;
use stacks_wire::{ContractId, Value};

const NET: Network = Network::Regtest;
const MAGIC: [u8; 2] = *b"id";

fn sk(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i + 1; 32]).unwrap()
}

fn user() -> UserKey {
    UserKey::new(sk(40))
}

fn peg_wallet() -> Address {
    peg_rules::peg_wallet_address(&sk(50).public_key(&Secp256k1::new()), NET)
}

fn policy(allowed: &[&UserKey]) -> Policy {
    Policy {
        allowlist: Allowlist::new(
            allowed
                .iter()
                .map(|k| PrincipalData::from(k.stacks_address(StacksNetwork::Testnet))),
            allowed.iter().map(|k| k.btc_address(NET).script_pubkey()),
        ),
        fee_floor: FeeRate::from_sat_per_vb(2).unwrap(),
        fee_cap: FeeRate::from_sat_per_vb(100).unwrap(),
        subsidy: Amount::ZERO,
        fee_margin_percent: 20,
        max_request: Some(Amount::from_sat(100_000_000)),
        max_daily_outflow: None,
    }
}

fn coin(key: &UserKey, n: u8, sats: u64) -> Coin {
    Coin {
        outpoint: OutPoint::new(Txid::from_byte_array([n; 32]), u32::from(n)),
        txout: TxOut {
            value: Amount::from_sat(sats),
            script_pubkey: key.btc_address(NET).script_pubkey(),
        },
    }
}

fn at() -> Position {
    Position {
        height: BurnHeight(7),
        block_hash: BlockHash::all_zeros(),
        vtxindex: 1,
    }
}

/// Every input's witness is a valid P2WPKH signature by `key` over the
/// input's BIP-143 digest.
fn assert_signed(key: &UserKey, b: &Built) {
    let secp = Secp256k1::verification_only();
    assert_eq!(b.signed.input.len(), b.spent.len());
    for (i, c) in b.spent.iter().enumerate() {
        let w = &b.signed.input[i].witness;
        assert_eq!(w.len(), 2, "input {i}: a P2WPKH witness");
        assert_eq!(w.nth(1).unwrap(), &key.public_key().serialize()[..]);
        let der = w.nth(0).unwrap();
        let sig = EcdsaSig::from_der(&der[..der.len() - 1]).unwrap();
        let h = SighashCache::new(&b.unsigned)
            .p2wpkh_signature_hash(
                i,
                &c.txout.script_pubkey,
                c.txout.value,
                EcdsaSighashType::All,
            )
            .unwrap();
        secp.verify_ecdsa(
            &Message::from_digest(h.to_byte_array()),
            &sig,
            &key.public_key(),
        )
        .unwrap_or_else(|e| panic!("input {i}: {e}"));
        assert!(
            b.unsigned.input[i].witness.is_empty(),
            "unsigned has no witness"
        );
    }
    assert_eq!(b.signed.compute_txid(), b.unsigned.compute_txid());
}

#[test]
fn keys_parse_from_wif_and_hex_and_errors_never_show_the_key() {
    let k = user();
    let hex_key = hex::encode(k.secret_key().secret_bytes());
    assert_eq!(UserKey::parse(&k.wif(NET)).unwrap(), k);
    assert_eq!(UserKey::parse(&format!("  {hex_key}\n")).unwrap(), k);
    assert_eq!(UserKey::parse(&format!("{hex_key}01")).unwrap(), k);
    let uncompressed = bitcoin::PrivateKey {
        compressed: false,
        network: NET.into(),
        inner: *k.secret_key(),
    }
    .to_wif();
    assert!(matches!(UserKey::parse(&uncompressed), Err(Error::Key(_))));
    let bad = format!("{}zz", &hex_key[..62]);
    let e = UserKey::parse(&bad).unwrap_err().to_string();
    assert!(!e.contains(&hex_key[..62]), "{e}");
    assert!(UserKey::parse("").is_err());
    assert!(UserKey::parse(&"00".repeat(32)).is_err(), "zero is no key");
    assert!(!format!("{k:?}").contains(&hex_key), "Debug hides the key");
}

#[test]
fn a_peg_in_parses_back_as_the_peg_in_the_coordinator_sees() {
    let k = user();
    let recipient: PrincipalData = user().stacks_address(StacksNetwork::Testnet).into();
    let rate = FeeRate::from_sat_per_vb(3).unwrap();
    let coins = [coin(&k, 1, 10_000), coin(&k, 2, 2_000_000)];
    let b = peg_in(
        &k,
        NET,
        &coins,
        MAGIC,
        &peg_wallet(),
        &recipient,
        Amount::from_sat(1_000_000),
        MinerFee::Rate(rate),
    )
    .unwrap();
    assert_signed(&k, &b);
    assert_eq!(
        b.spent,
        vec![coins[1].clone()],
        "the one coin that covers it"
    );
    let Some(PegOp::PegIn(op)) = parse_transaction(&b.signed, MAGIC, NET, at()).unwrap() else {
        panic!("not a peg-in")
    };
    assert_eq!(op.recipient, recipient);
    assert_eq!(op.amount, Amount::from_sat(1_000_000));
    assert_eq!(
        op.peg_wallet_address.script_pubkey(),
        peg_wallet().script_pubkey()
    );
    // Change back to the user, fee at the rate for the signed size.
    let change = b.change.clone().unwrap();
    assert_eq!(change.outpoint, OutPoint::new(b.signed.compute_txid(), 2));
    assert_eq!(
        change.txout.script_pubkey,
        k.btc_address(NET).script_pubkey()
    );
    assert_eq!(
        change.txout.value + b.miner_fee + Amount::from_sat(1_000_000),
        Amount::from_sat(2_000_000)
    );
    let vsize = u64::try_from(b.signed.vsize()).unwrap();
    let paid = b.miner_fee.to_sat();
    assert!(
        paid >= 3 * vsize && paid <= 3 * (vsize + 1),
        "{paid} sat for {vsize} vB"
    );
    // Under another magic it is no op at all.
    assert_eq!(
        parse_transaction(&b.signed, *b"T2", NET, at()).unwrap(),
        None
    );
}

#[test]
fn a_request_carries_the_fee_output_the_rules_need_and_recovers_its_requester() {
    let funder = user();
    let requester = UserKey::new(sk(41));
    let to = UserKey::new(sk(42)).btc_address(NET);
    let p = policy(&[&funder, &requester, &UserKey::new(sk(42))]);
    let estimate = Some(FeeRate::from_sat_per_vb(7).unwrap());
    let fee_output = request_fee_output(&p, estimate, &to.script_pubkey());
    assert_eq!(
        fee_output,
        peg_rules::required_fee_output(&p, estimate, &to.script_pubkey())
    );
    assert!(
        fee_output > peg_rules::P2TR_DUST,
        "{fee_output} at 7 sat/vB"
    );
    let build = |fee_output| {
        peg_out_request(
            &funder,
            NET,
            &[coin(&funder, 3, 300_000)],
            MAGIC,
            &Request {
                amount: Amount::from_sat(250_000),
                recipient: &to,
                requester: requester.secret_key(),
                peg_wallet: &peg_wallet(),
                fee_output,
                nonce_data: None,
            },
            MinerFee::Fixed(Amount::from_sat(1_000)),
        )
        .unwrap()
    };
    let verdict = |b: &Built| {
        let Some(PegOp::PegOutRequest(op)) =
            parse_transaction(&b.signed, MAGIC, NET, at()).unwrap()
        else {
            panic!("not a request")
        };
        let facts = RequestFacts {
            tip_height: 7,
            confirmations: 1,
            peg_scripts: &[peg_wallet().script_pubkey()],
            output2_unspent: true,
            fee_rate: estimate,
            outflow_last_day: Amount::ZERO,
        };
        let networks = Networks {
            bitcoin: NET,
            stacks: StacksNetwork::Testnet,
        };
        (
            op.clone(),
            peg_rules::peg_out_payable(&p, networks, &op, &facts),
        )
    };
    let b = build(fee_output);
    assert_signed(&funder, &b);
    let (op, v) = verdict(&b);
    assert_eq!(v, Verdict::Accept);
    assert_eq!(op.amount, Amount::from_sat(250_000));
    assert_eq!(op.recipient.script_pubkey(), to.script_pubkey());
    assert_eq!(op.fulfillment_fee, fee_output);
    assert_eq!(
        op.requester(StacksNetwork::Testnet).unwrap(),
        requester.stacks_address(StacksNetwork::Testnet),
        "the Stacks key signs, not the funding key"
    );
    assert_eq!(b.miner_fee, Amount::from_sat(1_000));
    // One sat less and the peg would not pay it.
    let (_, v) = verdict(&build(fee_output - Amount::from_sat(1)));
    assert!(
        matches!(&v, Verdict::Reject(r) if r.name == "request.fee"),
        "{v:?}"
    );
}

#[test]
fn coins_are_combined_when_none_covers_alone_and_shortfalls_say_by_how_much() {
    let k = user();
    let other = UserKey::new(sk(43));
    let coins = [
        coin(&k, 1, 40_000),
        coin(&other, 2, 10_000_000), // not ours: ignored
        coin(&k, 3, 70_000),
        coin(&k, 4, 5_000),
    ];
    let b = payment(
        &k,
        NET,
        &coins,
        &other.btc_address(NET).script_pubkey(),
        Amount::from_sat(100_000),
        MinerFee::Rate(FeeRate::from_sat_per_vb(2).unwrap()),
    )
    .unwrap();
    assert_signed(&k, &b);
    assert_eq!(
        b.spent,
        vec![coins[2].clone(), coins[0].clone()],
        "largest first"
    );
    assert_eq!(b.change.as_ref().unwrap().outpoint.vout, 1);
    let e = payment(
        &k,
        NET,
        &coins,
        &other.btc_address(NET).script_pubkey(),
        Amount::from_sat(115_000),
        MinerFee::Fixed(Amount::from_sat(1_000)),
    )
    .unwrap_err();
    match &e {
        Error::InsufficientFunds {
            available, coins, ..
        } => {
            assert_eq!(*available, Amount::from_sat(115_000));
            assert_eq!(*coins, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains(&k.btc_address(NET).to_string()),
        "{e}"
    );
}

#[test]
fn change_below_dust_goes_to_the_miner_rather_than_a_dust_output() {
    let k = user();
    let b = payment(
        &k,
        NET,
        &[coin(&k, 1, 101_100)],
        &UserKey::new(sk(43)).btc_address(NET).script_pubkey(),
        Amount::from_sat(100_000),
        MinerFee::Fixed(Amount::from_sat(1_000)),
    )
    .unwrap();
    assert_eq!(b.signed.output.len(), 1);
    assert_eq!(b.change, None);
    assert_eq!(b.miner_fee, Amount::from_sat(1_100));
}

#[test]
fn the_checks_refuse_what_the_peg_would_refuse() {
    let alice = user();
    let mallory = UserKey::new(sk(44));
    let p = policy(&[&alice]);
    let alice_stx: PrincipalData = alice.stacks_address(StacksNetwork::Testnet).into();
    let mallory_stx: PrincipalData = mallory.stacks_address(StacksNetwork::Testnet).into();
    let sats = Amount::from_sat;
    assert_eq!(check_peg_in(&p, NET, &alice_stx, sats(1_000)), Ok(()));
    let rule = |r: Result<(), Error>| match r {
        Err(Error::Refused { rule, .. }) => rule,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        rule(check_peg_in(&p, NET, &mallory_stx, sats(1_000))),
        "peg-in.allowlist"
    );
    assert_eq!(
        rule(check_peg_in(&p, NET, &alice_stx, sats(0))),
        "peg-in.amount"
    );
    let mainnet: PrincipalData = alice.stacks_address(StacksNetwork::Mainnet).into();
    assert_eq!(
        rule(check_peg_in(&p, NET, &mainnet, sats(1_000))),
        "peg-in.network"
    );
    let to = alice.btc_address(NET);
    assert_eq!(check_request(&p, &to, sats(50_000), Some(50_000)), Ok(()));
    assert_eq!(
        rule(check_request(
            &p,
            &mallory.btc_address(NET),
            sats(50_000),
            None
        )),
        "request.allowlist"
    );
    assert_eq!(
        rule(check_request(&p, &to, sats(100), None)),
        "request.dust"
    );
    assert_eq!(
        rule(check_request(&p, &to, sats(100_000_001), None)),
        "request.limit"
    );
    assert_eq!(
        rule(check_request(&p, &to, sats(50_000), Some(49_999))),
        "request.balance"
    );
}

const CONTRACT: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc-alpha";

/// Three signers (sk(1..=3)), two key ids each, threshold 4.
fn signer_file(threshold: u32) -> SignerFile {
    let pk = |i: u8| sk(i).public_key(&Secp256k1::new());
    let mut text = format!(
        "relay_url = \"http://127.0.0.1:1\"\ncoordinator_public_key = \"{}\"\nnetwork = \"regtest\"\ncontract = \"{CONTRACT}\"\nthreshold = {threshold}\n",
        pk(0)
    );
    for i in 1..=3u8 {
        text.push_str(&format!(
            "[[signers]]\nid = {i}\npublic_key = \"{}\"\nkey_ids = [{}, {}]\n",
            pk(i),
            i * 2 - 1,
            i * 2
        ));
    }
    toml::from_str(&text).unwrap()
}

/// `/attestations` as the coordinator serves it.
fn served(file: &SignerFile, signers: &[u8], contract: &str, key: PublicKey) -> String {
    let items: Vec<serde_json::Value> = signers
        .iter()
        .map(|&i| {
            let env = Codec::new(file)
                .seal(
                    Sender::Signer(u32::from(i)),
                    &sk(i),
                    &NetMessage::Attestation(Attestation {
                        contract: contract.into(),
                        key,
                        time: 1_700_000_000,
                    }),
                )
                .unwrap();
            serde_json::json!({"signer": i, "contract": contract, "key": key.to_string(),
                "time": 1_700_000_000u64, "envelope": hex::encode(env)})
        })
        .collect();
    serde_json::to_string(&items).unwrap()
}

#[test]
fn the_peg_wallet_key_counts_only_when_a_threshold_of_the_users_set_attests_it() {
    let f = signer_file(4);
    let key = sk(50).public_key(&Secp256k1::new());
    let envs = parse_attestations(&served(&f, &[1, 2], CONTRACT, key)).unwrap();
    let t = check_attestations(&f, &key, &envs).unwrap();
    assert_eq!(t.key_ids, 4);
    // One signer: two key ids of four.
    let envs = parse_attestations(&served(&f, &[3], CONTRACT, key)).unwrap();
    let e = check_attestations(&f, &key, &envs).unwrap_err().to_string();
    assert!(
        e.contains("attested by 1 of the 3 signers") && e.contains("(2 key ids); 4 key ids needed"),
        "{e}"
    );
    // Two signers, but one attests another contract: it does not count.
    let mut both = parse_attestations(&served(&f, &[1], CONTRACT, key)).unwrap();
    both.extend(
        parse_attestations(&served(
            &f,
            &[2],
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.other",
            key,
        ))
        .unwrap(),
    );
    let e = check_attestations(&f, &key, &both).unwrap_err().to_string();
    assert!(
        e.contains("1 attestation(s) not counted") && e.contains("other"),
        "{e}"
    );
    // Attestations of another key say nothing about this one.
    let other_key = sk(51).public_key(&Secp256k1::new());
    let envs = parse_attestations(&served(&f, &[1, 2, 3], CONTRACT, other_key)).unwrap();
    assert!(check_attestations(&f, &key, &envs).is_err());
    // A user whose file asks more (threshold 6) is not convinced by the
    // same envelopes: they are not even for the user's set.
    let strict = signer_file(6);
    let envs = parse_attestations(&served(&f, &[1, 2, 3], CONTRACT, key)).unwrap();
    let e = check_attestations(&strict, &key, &envs)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attested by 0 of the 3") && e.contains("6 key ids needed"),
        "{e}"
    );
    // What is not the coordinator's list is an error, not zero attestations.
    assert!(matches!(
        parse_attestations("{\"a\":1}"),
        Err(Error::Answer(_))
    ));
    assert!(matches!(
        parse_attestations("[{\"envelope\":\"zz\"}]"),
        Err(Error::Answer(_))
    ));
}

#[test]
fn contract_reads_decode_the_contracts_answers_and_name_the_call_on_failure() {
    let contract: ContractId = CONTRACT.parse().unwrap();
    let me: PrincipalData = user().stacks_address(StacksNetwork::Testnet).into();
    let key = sk(50).public_key(&Secp256k1::new());
    let answers = [
        Ok(Value::Optional(Some(Box::new(Value::Buffer(
            key.serialize().to_vec(),
        ))))),
        Ok(Value::Optional(None)),
        Ok(Value::Optional(Some(Box::new(Value::Buffer(vec![1, 2]))))),
        Ok(Value::UInt(3)),
        Err(stacks_node_client::Error::Timeout("test".into())),
    ];
    let mut s = MockStacksNode::new();
    let mut it = answers.into_iter();
    s.expect_call_read()
        .withf(|_, f, args, _| {
            f == peg_ops::contract::GET_BITCOIN_WALLET_PUBLIC_KEY && args.is_empty()
        })
        .times(5)
        .returning(move |_, _, _, _| it.next().unwrap());
    assert_eq!(peg_wallet_key(&s, &contract, &me), Ok(Some(key)));
    assert_eq!(peg_wallet_key(&s, &contract, &me), Ok(None));
    assert!(matches!(
        peg_wallet_key(&s, &contract, &me),
        Err(Error::Answer(_))
    ));
    assert!(matches!(
        peg_wallet_key(&s, &contract, &me),
        Err(Error::Answer(_))
    ));
    let e = peg_wallet_key(&s, &contract, &me).unwrap_err().to_string();
    assert!(
        e.contains("get-bitcoin-wallet-public-key") && e.contains(CONTRACT),
        "{e}"
    );

    let mut s = MockStacksNode::new();
    let who = me.clone();
    s.expect_call_read()
        .withf(move |_, f, args, _| f == "get-balance" && args == [Value::Principal(who.clone())])
        .times(2)
        .returning({
            let mut n = 0;
            move |_, _, _, _| {
                n += 1;
                Ok(if n == 1 {
                    Value::Ok(Box::new(Value::UInt(60_000_000)))
                } else {
                    Value::Err(Box::new(Value::UInt(1)))
                })
            }
        });
    assert_eq!(sbtc_balance(&s, &contract, &me), Ok(60_000_000));
    assert!(matches!(
        sbtc_balance(&s, &contract, &me),
        Err(Error::Answer(_))
    ));
}

#[test]
fn no_estimate_falls_back_to_the_floor_and_mempool_spent_coins_are_skipped() {
    let mut b = MockBitcoinNode::new();
    let mut answers = vec![
        Err(bitcoin_node_client::Error::Transport("refused".into())),
        Err(bitcoin_node_client::Error::Rpc {
            code: -32601,
            message: "Method not found".into(),
        }),
        Ok(None),
        Ok(Some(FeeRate::from_sat_per_vb(9).unwrap())),
    ];
    b.expect_estimate_smart_fee().times(4).returning(move |t| {
        assert_eq!(t, chain::FEE_TARGET_BLOCKS);
        answers.pop().unwrap()
    });
    assert_eq!(
        fee_estimate(&b),
        Ok(Some(FeeRate::from_sat_per_vb(9).unwrap()))
    );
    assert_eq!(fee_estimate(&b), Ok(None));
    assert_eq!(fee_estimate(&b), Ok(None), "an RPC error: the floor");
    assert!(matches!(fee_estimate(&b), Err(Error::Node { .. })));
    let p = policy(&[]);
    assert_eq!(miner_fee_rate(&p, None), p.fee_floor);
    assert_eq!(
        miner_fee_rate(&p, Some(FeeRate::from_sat_per_vb(1_000).unwrap())),
        p.fee_cap
    );

    let k = user();
    let coins = vec![coin(&k, 1, 1_000), coin(&k, 2, 2_000)];
    let mut b = MockBitcoinNode::new();
    b.expect_get_tx_out()
        .times(2)
        .returning(|o, include_mempool| {
            assert!(include_mempool);
            Ok((o.vout == 2).then_some(bitcoin_node_client::Utxo {
                outpoint: *o,
                txout: TxOut::NULL,
                confirmations: 1,
            }))
        });
    assert_eq!(
        unspent_now(&b, coins.clone()).unwrap(),
        vec![coins[1].clone()]
    );
}

#[test]
fn requests_repeat_as_copies_unless_signed_with_fresh_nonce_data() {
    let k = user();
    let to = k.btc_address(NET);
    let p = policy(&[&k]);
    let sign = |nonce_data| {
        let b = peg_out_request(
            &k,
            NET,
            &[coin(&k, 3, 300_000)],
            MAGIC,
            &Request {
                amount: Amount::from_sat(100_000),
                recipient: &to,
                requester: k.secret_key(),
                peg_wallet: &peg_wallet(),
                fee_output: request_fee_output(&p, None, &to.script_pubkey()),
                nonce_data,
            },
            MinerFee::Fixed(Amount::from_sat(1_000)),
        )
        .unwrap();
        let Some(PegOp::PegOutRequest(op)) =
            parse_transaction(&b.signed, MAGIC, NET, at()).unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(
            op.requester(StacksNetwork::Testnet).unwrap(),
            k.stacks_address(StacksNetwork::Testnet)
        );
        peg_rules::request_signature_digest(&op)
    };
    assert_eq!(sign(None), sign(None), "deterministic: the peg sees a copy");
    assert_ne!(
        sign(Some([1; 32])),
        sign(Some([2; 32])),
        "fresh: not a copy"
    );
    assert_ne!(sign(Some([1; 32])), sign(None));
}
