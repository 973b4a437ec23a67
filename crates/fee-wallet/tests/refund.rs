//! The wallet's refunds pass `peg_rules::check_refund` at every rate and
//! for every script type, are the size `peg_rules::refund_vsize` says, and
//! their sighashes signed with an (old) key's tweak pass consensus.

use bitcoin::hashes::Hash as _;
use bitcoin::key::{CompressedPublicKey, Keypair, Secp256k1, TapTweak};
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::{
    absolute, transaction, Address, Amount, BlockHash, FeeRate, Network, OutPoint, ScriptBuf,
    Transaction, TxIn, TxOut,
};
use bitcoin_node_client::Utxo;
use fee_wallet::{peg_wallet_address, BitcoinFeePolicy, BitcoinWallet, Error, PegWallet};
use peg_ops::{BtcAddress, BurnHeight, PegInOp};
use peg_rules::{check_refund, refund_vsize, signed_vsize, Allowlist, Policy};
use proptest::prelude::*;

const MAGIC: [u8; 2] = *b"id";

fn secret() -> SecretKey {
    SecretKey::from_slice(&[12; 32]).unwrap()
}

fn key() -> PublicKey {
    secret().public_key(&Secp256k1::new())
}

fn policy() -> Policy {
    Policy {
        allowlist: Allowlist::default(),
        fee_floor: FeeRate::from_sat_per_vb(1).unwrap(),
        fee_cap: FeeRate::from_sat_per_vb(50).unwrap(),
        subsidy: Amount::ZERO,
        fee_margin_percent: 20,
        max_request: None,
        max_daily_outflow: None,
    }
}

fn scripts() -> Vec<ScriptBuf> {
    let secp = Secp256k1::new();
    let k = SecretKey::from_slice(&[9; 32]).unwrap().public_key(&secp);
    let pk = CompressedPublicKey(k);
    let redeem = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
    vec![
        Address::p2wpkh(&pk, Network::Regtest).script_pubkey(),
        Address::p2pkh(pk, Network::Regtest).script_pubkey(),
        Address::p2sh(&redeem, Network::Regtest)
            .unwrap()
            .script_pubkey(),
        Address::p2wsh(&redeem, Network::Regtest).script_pubkey(),
        Address::p2tr(&secp, k.x_only_public_key().0, None, Network::Regtest).script_pubkey(),
    ]
}

/// A funding transaction paying `to`, the peg-in spending it (`sats` to the
/// peg wallet of [`key`]) and its op.
fn peg_in(to: &ScriptBuf, sats: u64) -> (Transaction, Transaction, PegInOp) {
    let funding = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn::default()],
        output: vec![TxOut {
            value: Amount::from_sat(sats + 10_000),
            script_pubkey: to.clone(),
        }],
    };
    let peg = peg_wallet_address(&key(), Network::Regtest);
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(funding.compute_txid(), 0),
            ..TxIn::default()
        }],
        output: vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::new_op_return([1u8; 8]),
            },
            TxOut {
                value: Amount::from_sat(sats),
                script_pubkey: peg.script_pubkey(),
            },
        ],
    };
    let op = PegInOp {
        recipient: "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap(),
        peg_wallet_address: BtcAddress::from(peg),
        amount: Amount::from_sat(sats),
        memo: vec![],
        txid: tx.compute_txid(),
        vtxindex: 1,
        block_height: BurnHeight(100),
        burn_header_hash: BlockHash::all_zeros(),
    };
    (funding, tx, op)
}

fn coin(tx: &Transaction) -> Utxo {
    Utxo {
        outpoint: OutPoint::new(tx.compute_txid(), 1),
        txout: tx.output[1].clone(),
        confirmations: 2,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_refund_the_wallet_builds_passes_the_rules(
        rate in 1u64..80,
        sats in 1_000u64..50_000_000,
        which in 0usize..5,
    ) {
        let p = policy();
        let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
        let to = scripts()[which].clone();
        let (funding, tx, op) = peg_in(&to, sats);
        match w.build_refund(&coin(&tx), &to, FeeRate::from_sat_per_vb(rate)) {
            Ok(u) => {
                prop_assert_eq!(check_refund(&p, &op, &tx, &funding, &u.tx, &u.prevouts), Ok(()));
                prop_assert_eq!(signed_vsize(&u.tx), refund_vsize(&to));
                prop_assert_eq!(u.tx.output[0].script_pubkey.clone(), to);
            }
            Err(e) => prop_assert!(matches!(e, Error::Build(_)), "{e}"),
        }
    }
}

#[test]
fn a_refund_that_would_leave_dust_is_not_built() {
    let p = policy();
    let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
    let to = scripts()[0].clone();
    // Even at the floor's fee (the least a refund pays), 300 sats leave dust.
    let (_, tx, _) = peg_in(&to, 300);
    let e = w
        .build_refund(&coin(&tx), &to, FeeRate::from_sat_per_vb(50))
        .unwrap_err();
    assert!(e.to_string().contains("dust"), "{e}");
}

#[test]
fn a_refund_pays_no_more_fee_than_the_signers_accept() {
    let p = policy();
    let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
    let to = scripts()[0].clone();
    // 1,000 sats at 50 sat/vB would pay ~5,550 sats; a refund pays at most
    // the larger of the floor's fee and 10 % of the amount.
    let (funding, tx, op) = peg_in(&to, 1_000);
    let u = w
        .build_refund(&coin(&tx), &to, FeeRate::from_sat_per_vb(50))
        .unwrap();
    let vsize = signed_vsize(&u.tx);
    let fee = 1_000 - u.tx.output[0].value.to_sat();
    assert_eq!(
        bitcoin::Amount::from_sat(fee),
        peg_rules::max_refund_fee(p.fee_floor, p.fee_cap, op.amount, vsize)
    );
    assert_eq!(
        check_refund(&p, &op, &tx, &funding, &u.tx, &u.prevouts),
        Ok(())
    );
}

/// Signed with the tweak of the key whose address output 1 pays, the
/// refund passes libbitcoinconsensus.
#[test]
fn a_signed_refund_passes_consensus() {
    let p = policy();
    let w = PegWallet::new(Network::Regtest, MAGIC, BitcoinFeePolicy::from_policy(&p));
    let to = scripts()[4].clone();
    let (_, tx, _) = peg_in(&to, 250_000);
    let u = w
        .build_refund(&coin(&tx), &to, FeeRate::from_sat_per_vb(3))
        .unwrap();
    let secp = Secp256k1::new();
    let tweaked = Keypair::from_secret_key(&secp, &secret()).tap_tweak(&secp, None);
    let sigs: Vec<_> = u
        .sighashes
        .iter()
        .map(|h| secp.sign_schnorr_no_aux_rand(&Message::from_digest(*h), &tweaked.to_keypair()))
        .collect();
    let signed = w.finalize_fulfillment(&u, &sigs).unwrap();
    assert_eq!(signed.compute_txid(), u.tx.compute_txid());
    assert_eq!(
        signed.output[0].value,
        Amount::from_sat(250_000)
            - FeeRate::from_sat_per_vb(3)
                .unwrap()
                .fee_vb(refund_vsize(&to))
                .unwrap()
    );
}
