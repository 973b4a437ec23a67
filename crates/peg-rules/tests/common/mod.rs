//! Fixtures shared by the peg-rules tests: a regtest peg with one peg wallet
//! key, a signed request, a fulfilment built by hand.

#![allow(dead_code)]

use bitcoin::hashes::Hash as _;
use bitcoin::key::{CompressedPublicKey, Secp256k1};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use bitcoin::{
    absolute, transaction, Address, Amount, BlockHash, FeeRate, Network, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid,
};
use peg_ops::{peg_out_request_sighash, BtcAddress, BurnHeight, MessageSignature, PegOutRequestOp};
use peg_rules::{
    fulfilment_op_return, peg_wallet_address, signed_vsize, Allowlist, Networks, Policy,
};
use stacks_wire::{PrincipalData, StacksNetwork};

pub(crate) const MAGIC: [u8; 2] = *b"id";
pub(crate) const TIP: [u8; 32] = [7; 32];
pub(crate) const NETWORKS: Networks = Networks {
    bitcoin: Network::Regtest,
    stacks: StacksNetwork::Testnet,
};

pub(crate) fn key(i: u8) -> PublicKey {
    SecretKey::from_slice(&[i; 32])
        .unwrap()
        .public_key(&Secp256k1::new())
}

/// The current peg wallet's scriptPubKey (key 1).
pub(crate) fn peg_script() -> ScriptBuf {
    peg_wallet_address(&key(1), Network::Regtest).script_pubkey()
}

/// An old key's peg wallet scriptPubKey (key 2).
pub(crate) fn old_peg_script() -> ScriptBuf {
    peg_wallet_address(&key(2), Network::Regtest).script_pubkey()
}

/// One regtest address of each standard script type.
pub(crate) fn recipients() -> Vec<Address> {
    let secp = Secp256k1::new();
    let pk = CompressedPublicKey(key(9));
    let redeem = ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
    vec![
        Address::p2wpkh(&pk, Network::Regtest),
        Address::p2pkh(pk, Network::Regtest),
        Address::p2sh(&redeem, Network::Regtest).unwrap(),
        Address::p2wsh(&redeem, Network::Regtest),
        Address::p2tr(&secp, key(9).x_only_public_key().0, None, Network::Regtest),
    ]
}

/// The usual recipient: P2WPKH.
pub(crate) fn recipient() -> Address {
    recipients().remove(0)
}

pub(crate) fn allowed_principal() -> PrincipalData {
    "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap()
}

pub(crate) fn rate(sat_per_vb: u64) -> FeeRate {
    FeeRate::from_sat_per_vb(sat_per_vb).unwrap()
}

/// Floor 1, cap 50, no subsidy, 20 % margin, at most 1 BTC a request and
/// 2 BTC a day; every recipient of [`recipients`] allowed.
pub(crate) fn policy() -> Policy {
    Policy {
        allowlist: Allowlist::new(
            [allowed_principal()],
            recipients().iter().map(Address::script_pubkey),
        ),
        fee_floor: rate(1),
        fee_cap: rate(50),
        subsidy: Amount::ZERO,
        fee_margin_percent: 20,
        max_request: Some(Amount::from_sat(100_000_000)),
        max_daily_outflow: Some(Amount::from_sat(200_000_000)),
    }
}

/// A request for `amount` to `to`, signed by the requester, whose
/// `fulfillment_fee` output 2 pays the current peg wallet.
pub(crate) fn request_to(to: &Address, amount: u64, fulfillment_fee: u64) -> PegOutRequestOp {
    let to: BtcAddress = to.clone().into();
    let amount = Amount::from_sat(amount);
    let signer = SecretKey::from_slice(&[5; 32]).unwrap();
    PegOutRequestOp {
        amount,
        signature: MessageSignature::sign(
            peg_out_request_sighash(amount, &to.script_pubkey()),
            &signer,
        ),
        recipient: to,
        peg_wallet_address: peg_wallet_address(&key(1), Network::Regtest).into(),
        fulfillment_fee: Amount::from_sat(fulfillment_fee),
        memo: vec![],
        txid: Txid::from_byte_array([1; 32]),
        vtxindex: 1,
        block_height: BurnHeight(100),
        burn_header_hash: BlockHash::all_zeros(),
    }
}

pub(crate) fn request(amount: u64, fulfillment_fee: u64) -> PegOutRequestOp {
    request_to(&recipient(), amount, fulfillment_fee)
}

/// The peg coin every hand-built fulfilment spends besides input 0.
pub(crate) fn peg_coin() -> (OutPoint, TxOut) {
    (
        OutPoint::new(Txid::from_byte_array([30; 32]), 0),
        TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey: peg_script(),
        },
    )
}

pub(crate) fn is_peg_coin(outpoint: &OutPoint, txout: &TxOut) -> bool {
    (*outpoint, txout.clone()) == peg_coin()
}

fn input(outpoint: OutPoint) -> TxIn {
    TxIn {
        previous_output: outpoint,
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
        ..TxIn::default()
    }
}

/// A correct fulfilment of `op` (amount below 1 BTC): input 0 its output 2,
/// input 1 [`peg_coin`]; OP_RETURN, recipient, change at `sat_per_vb`.
pub(crate) fn fulfilment(op: &PegOutRequestOp, sat_per_vb: u64) -> (Transaction, Vec<TxOut>) {
    let (coin, coin_out) = peg_coin();
    let prevouts = vec![
        TxOut {
            value: op.fulfillment_fee,
            script_pubkey: op.peg_wallet_address.script_pubkey(),
        },
        coin_out,
    ];
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![input(OutPoint::new(op.txid, 2)), input(coin)],
        output: vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: fulfilment_op_return(MAGIC, &TIP),
            },
            TxOut {
                value: op.amount,
                script_pubkey: op.recipient.script_pubkey(),
            },
            TxOut {
                value: Amount::ZERO,
                script_pubkey: peg_script(),
            },
        ],
    };
    let fee = rate(sat_per_vb).fee_vb(signed_vsize(&tx)).unwrap();
    let total_in = prevouts.iter().map(|o| o.value).sum::<Amount>();
    tx.output[2].value = total_in - op.amount - fee;
    (tx, prevouts)
}

/// A sweep of `coins` (all old-key coins) to the current key at `sat_per_vb`.
pub(crate) fn sweep(coins: &[(OutPoint, TxOut)], sat_per_vb: u64) -> (Transaction, Vec<TxOut>) {
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: coins.iter().map(|(o, _)| input(*o)).collect(),
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: peg_script(),
        }],
    };
    let fee = rate(sat_per_vb).fee_vb(signed_vsize(&tx)).unwrap();
    let total = coins.iter().map(|(_, t)| t.value).sum::<Amount>();
    tx.output[0].value = total - fee;
    (tx, coins.iter().map(|(_, t)| t.clone()).collect())
}

pub(crate) fn old_coins(n: u8) -> Vec<(OutPoint, TxOut)> {
    (0..n)
        .map(|i| {
            (
                OutPoint::new(Txid::from_byte_array([40 + i; 32]), u32::from(i)),
                TxOut {
                    value: Amount::from_sat(100_000 * (u64::from(i) + 1)),
                    script_pubkey: old_peg_script(),
                },
            )
        })
        .collect()
}
