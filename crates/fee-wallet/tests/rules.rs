//! The wallet builds what the peg rules accept: every fulfilment and sweep it
//! builds passes `peg_rules::check_fulfilment` / `check_sweep`, its size is
//! `peg_rules::fulfilment_vsize`, and a request carrying
//! `peg_rules::required_fee_output` can always be paid at that rate.

use std::collections::HashMap;

use bitcoin::hashes::Hash as _;
use bitcoin::key::{CompressedPublicKey, Keypair, Secp256k1, TapTweak};
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, OutPoint, ScriptBuf, TxOut, Txid};
use bitcoin_node_client::Utxo;
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, BitcoinWallet, Error, FulfillmentInputs, PegWallet,
};
use peg_ops::{peg_out_request_sighash, BtcAddress, BurnHeight, MessageSignature, PegOutRequestOp};
use peg_rules::{
    check_fulfilment, check_sweep, fulfilment_vsize, required_fee_output, signed_vsize, Allowlist,
    Policy, SignPayload,
};
use proptest::prelude::*;

const MAGIC: [u8; 2] = *b"id";

fn secret() -> SecretKey {
    SecretKey::from_slice(&[11; 32]).unwrap()
}

fn peg_key() -> PublicKey {
    secret().public_key(&Secp256k1::new())
}

fn peg_script() -> ScriptBuf {
    peg_wallet_address(&peg_key(), Network::Regtest).script_pubkey()
}

fn recipients() -> Vec<Address> {
    let secp = Secp256k1::new();
    let k = SecretKey::from_slice(&[9; 32]).unwrap().public_key(&secp);
    let pk = CompressedPublicKey(k);
    let redeem = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
    vec![
        Address::p2wpkh(&pk, Network::Regtest),
        Address::p2pkh(pk, Network::Regtest),
        Address::p2sh(&redeem, Network::Regtest).unwrap(),
        Address::p2wsh(&redeem, Network::Regtest),
        Address::p2tr(&secp, k.x_only_public_key().0, None, Network::Regtest),
    ]
}

fn policy(subsidy: u64) -> Policy {
    Policy {
        allowlist: Allowlist::default(),
        fee_floor: FeeRate::from_sat_per_vb(1).unwrap(),
        fee_cap: FeeRate::from_sat_per_vb(50).unwrap(),
        subsidy: Amount::from_sat(subsidy),
        fee_margin_percent: 20,
        max_request: None,
        max_daily_outflow: None,
    }
}

fn request(to: &Address, amount: u64, fee: u64) -> PegOutRequestOp {
    let to: BtcAddress = to.clone().into();
    let amount = Amount::from_sat(amount);
    PegOutRequestOp {
        amount,
        signature: MessageSignature::sign(
            peg_out_request_sighash(amount, &to.script_pubkey()),
            &SecretKey::from_slice(&[5; 32]).unwrap(),
        ),
        recipient: to,
        peg_wallet_address: peg_wallet_address(&peg_key(), Network::Regtest).into(),
        fulfillment_fee: Amount::from_sat(fee),
        memo: vec![],
        txid: Txid::from_byte_array([1; 32]),
        vtxindex: 1,
        block_height: BurnHeight(100),
        burn_header_hash: BlockHash::all_zeros(),
    }
}

fn coin(i: usize, sats: u64) -> Utxo {
    Utxo {
        outpoint: OutPoint::new(Txid::from_byte_array([50; 32]), u32::try_from(i).unwrap()),
        txout: TxOut {
            value: Amount::from_sat(sats),
            script_pubkey: peg_script(),
        },
        confirmations: 3,
    }
}

fn inputs(op: &PegOutRequestOp, coins: &[u64], rate: u64) -> FulfillmentInputs {
    let mut utxos = vec![Utxo {
        outpoint: OutPoint::new(op.txid, 2),
        txout: TxOut {
            value: op.fulfillment_fee,
            script_pubkey: op.peg_wallet_address.script_pubkey(),
        },
        confirmations: 3,
    }];
    utxos.extend(coins.iter().enumerate().map(|(i, v)| coin(i, *v)));
    FulfillmentInputs {
        utxos,
        fee_rate: Some(FeeRate::from_sat_per_vb(rate).unwrap()),
        stacks_chain_tip: [3; 32],
        reserved: vec![],
    }
}

/// Checks a built fulfilment against the rules, the coins offered being
/// the peg coins.
fn rules_accept(
    p: &Policy,
    op: &PegOutRequestOp,
    inputs: &FulfillmentInputs,
    u: &fee_wallet::UnsignedFulfillment,
) -> Result<(), peg_rules::Rule> {
    let coins: HashMap<OutPoint, TxOut> = inputs.utxos[1..]
        .iter()
        .map(|u| (u.outpoint, u.txout.clone()))
        .collect();
    check_fulfilment(p, MAGIC, op, &u.tx, &u.prevouts, &peg_script(), &|o, t| {
        coins.get(o) == Some(t)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_fulfilment_the_wallet_builds_passes_the_rules(
        to in 0usize..5,
        amount in 546u64..50_000_000,
        rate in 1u64..80,
        fee in 0u64..40_000,
        subsidy in prop_oneof![Just(0u64), 0u64..5_000],
        coins in prop::collection::vec(330u64..30_000_000, 0..6),
    ) {
        let to = &recipients()[to];
        let op = request(to, amount, fee);
        let p = policy(subsidy);
        let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
        let inputs = inputs(&op, &coins, rate);
        match w.build_fulfillment(&op, &peg_key(), &inputs) {
            Ok(u) => {
                prop_assert_eq!(rules_accept(&p, &op, &inputs, &u), Ok(()));
                let peg_inputs = u.tx.input.len() - 1;
                let size = fulfilment_vsize(&op.recipient.script_pubkey(), peg_inputs);
                if u.tx.output.len() == 3 {
                    prop_assert_eq!(size, signed_vsize(&u.tx));
                } else {
                    prop_assert!(size >= signed_vsize(&u.tx));
                }
                let payload = SignPayload::Fulfilment {
                    request: op.txid,
                    tx: u.tx.clone(),
                    prevouts: u.prevouts.clone(),
                };
                prop_assert_eq!(payload.sighashes(), Ok(u.sighashes.clone()));
            }
            Err(Error::InsufficientFunds { .. } | Error::FeeShortfall { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn a_request_with_the_required_fee_output_is_paid_with_one_coin(
        to in 0usize..5,
        amount in 546u64..50_000_000,
        rate in 1u64..80,
        extra in 0u64..10_000,
        subsidy in prop_oneof![Just(0u64), 0u64..5_000],
        surplus in 0u64..1_000_000,
    ) {
        let to = &recipients()[to];
        let p = policy(subsidy);
        let estimate = Some(FeeRate::from_sat_per_vb(rate).unwrap());
        let needed = required_fee_output(&p, estimate, &to.script_pubkey()).to_sat();
        let op = request(to, amount, needed + extra);
        let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
        // One coin that covers the amount with change to spare.
        let inputs = inputs(&op, &[amount + 20_000 + surplus], rate);
        let u = w.build_fulfillment(&op, &peg_key(), &inputs).unwrap();
        prop_assert_eq!(u.tx.input.len(), 2);
        prop_assert_eq!(u.tx.output.len(), 3);
        prop_assert_eq!(
            fulfilment_vsize(&op.recipient.script_pubkey(), 1),
            signed_vsize(&u.tx)
        );
        prop_assert_eq!(rules_accept(&p, &op, &inputs, &u), Ok(()));
    }

    #[test]
    fn every_sweep_the_wallet_builds_passes_the_rules(
        rate in 1u64..80,
        coins in prop::collection::vec(330u64..30_000_000, 1..8),
    ) {
        let p = policy(0);
        let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
        let old = SecretKey::from_slice(&[12; 32]).unwrap().public_key(&Secp256k1::new());
        let old_script = peg_wallet_address(&old, Network::Regtest).script_pubkey();
        let utxos: Vec<Utxo> = coins
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut c = coin(i, *v);
                c.txout.script_pubkey = old_script.clone();
                c
            })
            .collect();
        let estimate = Some(FeeRate::from_sat_per_vb(rate).unwrap());
        if let Ok(u) = w.build_sweep(&utxos, &peg_key(), estimate) {
            let ok = check_sweep(&p, &u.tx, &u.prevouts, &peg_script(), &|_, t| {
                t.script_pubkey == old_script
            });
            prop_assert_eq!(ok, Ok(()));
        }
    }
}

/// The payload's sighashes, signed with the peg key's BIP-341 tweak, pass
/// libbitcoinconsensus: they are the sighashes Bitcoin checks.
#[test]
fn payload_sighashes_signed_pass_consensus() {
    let p = policy(0);
    let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
    let op = request(&recipients()[4], 1_000_000, 5_000);
    let inputs = inputs(&op, &[600_000, 700_000], 3);
    let u = w.build_fulfillment(&op, &peg_key(), &inputs).unwrap();
    assert_eq!(u.tx.input.len(), 3);
    let payload = SignPayload::decode(
        &SignPayload::Fulfilment {
            request: op.txid,
            tx: u.tx.clone(),
            prevouts: u.prevouts.clone(),
        }
        .encode(),
    )
    .unwrap();
    let secp = Secp256k1::new();
    let tweaked = Keypair::from_secret_key(&secp, &secret()).tap_tweak(&secp, None);
    let sigs: Vec<_> = payload
        .sighashes()
        .unwrap()
        .iter()
        .map(|h| secp.sign_schnorr_no_aux_rand(&Message::from_digest(*h), &tweaked.to_keypair()))
        .collect();
    w.finalize_fulfillment(&u, &sigs).unwrap();
    // A payload whose prevouts lie about a value gives sighashes Bitcoin rejects.
    let mut lying = u.prevouts.clone();
    lying[1].value += Amount::from_sat(1);
    let bad = SignPayload::Fulfilment {
        request: op.txid,
        tx: u.tx.clone(),
        prevouts: lying,
    };
    let sigs: Vec<_> = bad
        .sighashes()
        .unwrap()
        .iter()
        .map(|h| secp.sign_schnorr_no_aux_rand(&Message::from_digest(*h), &tweaked.to_keypair()))
        .collect();
    assert!(matches!(
        w.finalize_fulfillment(&u, &sigs),
        Err(Error::Consensus { .. })
    ));
}

/// Dust change at the cap: the wallet may not leave it to the miner (the fee
/// would exceed the cap's rate); it adds a coin or says it cannot.
#[test]
fn dust_change_is_not_left_to_the_miner_beyond_the_fee_output() {
    let p = policy(0);
    let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
    let to = &recipients()[0];
    // A fee output of exactly the one-coin fee without change at 10 sat/vB.
    let probe = request(to, 1_000_000, 100_000);
    let u = w
        .build_fulfillment(&probe, &peg_key(), &inputs(&probe, &[2_000_000], 10))
        .unwrap();
    let mut no_change = u.tx.clone();
    no_change.output.truncate(2);
    let fee_without = 10 * signed_vsize(&no_change);
    let op = request(to, 1_000_000, fee_without);
    // One coin leaving 200 sats beyond amount and fee: dust change that the
    // old wallet gave the miner, a fee above the request's fee output.
    let i = inputs(&op, &[1_000_200], 10);
    assert!(matches!(
        w.build_fulfillment(&op, &peg_key(), &i),
        Err(Error::FeeShortfall { .. })
    ));
    // More coins cannot help: a change output costs more than the fee
    // output pays, and the fee without one would be larger still.
    let i = inputs(&op, &[1_000_200, 50_000], 10);
    assert!(matches!(
        w.build_fulfillment(&op, &peg_key(), &i),
        Err(Error::FeeShortfall { .. })
    ));
    // A subsidy of 1,000 sats covers the 200 sats: built, and accepted.
    let mut generous = policy(0);
    generous.subsidy = Amount::from_sat(1_000);
    let w = PegWallet::new(
        Network::Regtest,
        MAGIC,
        BitcoinFeePolicy::from_policy(&generous),
    );
    let i = inputs(&op, &[1_000_200], 10);
    let u = w.build_fulfillment(&op, &peg_key(), &i).unwrap();
    assert_eq!(rules_accept(&generous, &op, &i, &u), Ok(()));
    assert_eq!(
        rules_accept(&policy(0), &op, &i, &u).unwrap_err().name,
        "fulfilment.fee"
    );
}
