//! `check_refund`, rule by rule: each case breaks exactly one rule and
//! checks that rule is the one reported; the honest refund passes.

mod common;

use bitcoin::hashes::Hash as _;
use bitcoin::{
    absolute, transaction, Amount, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid,
};
use common::*;
use peg_ops::{BtcAddress, BurnHeight, PegInOp};
use peg_rules::{check_refund, refund_script, refund_vsize, signed_vsize, Rule};

fn rule(r: Result<(), Rule>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(Rule { name, .. }) => name,
    }
}

/// The depositor's coin: output 3 of a funding transaction, paying P2WPKH.
fn funding() -> Transaction {
    let depositor = recipient().script_pubkey();
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([9; 32]), 0),
            ..TxIn::default()
        }],
        output: (0..4)
            .map(|i| TxOut {
                value: Amount::from_sat(1_000_000 + i),
                // Output 3 is the depositor's; the others pay elsewhere.
                script_pubkey: if i == 3 {
                    depositor.clone()
                } else {
                    old_peg_script()
                },
            })
            .collect(),
    }
}

/// A peg-in of 500,000 sats spending `funding()`'s output 3.
fn peg_in_tx() -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(funding().compute_txid(), 3),
            ..TxIn::default()
        }],
        output: vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::new_op_return([1u8; 20]),
            },
            TxOut {
                value: Amount::from_sat(500_000),
                script_pubkey: peg_script(),
            },
        ],
    }
}

fn peg_in() -> PegInOp {
    let tx = peg_in_tx();
    PegInOp {
        recipient: allowed_principal(),
        peg_wallet_address: BtcAddress::from(peg_rules::peg_wallet_address(
            &key(1),
            bitcoin::Network::Regtest,
        )),
        amount: Amount::from_sat(500_000),
        memo: vec![],
        txid: tx.compute_txid(),
        vtxindex: 1,
        block_height: BurnHeight(100),
        burn_header_hash: BlockHash::all_zeros(),
    }
}

/// The honest refund at `sat_per_vb`.
fn refund(sat_per_vb: u64) -> (Transaction, Vec<TxOut>) {
    let op = peg_in();
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(op.txid, 1),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: recipient().script_pubkey(),
        }],
    };
    let fee = rate(sat_per_vb).fee_vb(signed_vsize(&tx)).unwrap();
    tx.output[0].value = op.amount - fee;
    (tx, vec![peg_in_tx().output[1].clone()])
}

fn check(tx: &Transaction, prevouts: &[TxOut]) -> &'static str {
    rule(check_refund(
        &policy(),
        &peg_in(),
        &peg_in_tx(),
        &funding(),
        tx,
        prevouts,
    ))
}

#[test]
fn the_honest_refund_passes_and_pays_the_depositors_own_script() {
    let (tx, prevouts) = refund(5);
    assert_eq!(check(&tx, &prevouts), "ok");
    assert_eq!(
        refund_script(&peg_in_tx(), &funding()).unwrap(),
        recipient().script_pubkey()
    );
    assert_eq!(
        refund_vsize(&recipient().script_pubkey()),
        signed_vsize(&tx),
        "the size the wallet plans for is the signed size"
    );
}

#[test]
fn another_destination_is_refused() {
    let (tx, prevouts) = refund(5);
    for other in [
        peg_script(),
        old_peg_script(),
        recipients()[4].script_pubkey(),
    ] {
        let mut t = tx.clone();
        t.output[0].script_pubkey = other;
        assert_eq!(check(&t, &prevouts), "refund.destination");
    }
}

#[test]
fn the_shape_is_one_input_one_output_no_lock_time() {
    let (tx, prevouts) = refund(5);
    let mut two_out = tx.clone();
    let half = two_out.output[0].value / 2;
    two_out.output[0].value -= half;
    two_out.output.push(TxOut {
        value: half,
        script_pubkey: recipient().script_pubkey(),
    });
    assert_eq!(check(&two_out, &prevouts), "refund.shape");
    let mut marker = tx.clone();
    marker.output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::new_op_return([0u8; 4]),
    });
    assert_eq!(check(&marker, &prevouts), "refund.shape");
    let mut none = tx.clone();
    none.output.clear();
    assert_eq!(check(&none, &prevouts), "refund.shape");
    let mut two_in = tx.clone();
    two_in.input.push(two_in.input[0].clone());
    assert_eq!(
        check(&two_in, &[prevouts[0].clone(), prevouts[0].clone()]),
        "refund.shape"
    );
    assert_eq!(check(&tx, &[]), "refund.shape");
    let mut later = tx.clone();
    later.lock_time = absolute::LockTime::from_height(900_000).unwrap();
    assert_eq!(check(&later, &prevouts), "refund.shape");
}

#[test]
fn the_input_is_the_peg_ins_output_1_as_it_is() {
    let (tx, prevouts) = refund(5);
    let mut other_vout = tx.clone();
    other_vout.input[0].previous_output.vout = 0;
    assert_eq!(check(&other_vout, &prevouts), "refund.input");
    let mut other_coin = tx.clone();
    other_coin.input[0].previous_output = OutPoint::new(Txid::from_byte_array([30; 32]), 1);
    assert_eq!(check(&other_coin, &prevouts), "refund.input");
    let mut bigger = prevouts.clone();
    bigger[0].value += Amount::from_sat(100_000);
    assert_eq!(check(&tx, &bigger), "refund.input");
    let mut script = prevouts.clone();
    script[0].script_pubkey = old_peg_script();
    assert_eq!(check(&tx, &script), "refund.input");
}

#[test]
fn the_peg_in_and_its_funding_must_be_what_they_claim() {
    let (tx, prevouts) = refund(5);
    let p = policy();
    // Another transaction as the peg-in.
    let mut not_it = peg_in_tx();
    not_it.version = transaction::Version::ONE;
    assert_eq!(
        rule(check_refund(
            &p,
            &peg_in(),
            &not_it,
            &funding(),
            &tx,
            &prevouts
        )),
        "refund.peg-in"
    );
    // A funding transaction that is not the one input 0 spends.
    let mut forged = funding();
    forged.output[3].script_pubkey = peg_script();
    assert_eq!(
        rule(check_refund(
            &p,
            &peg_in(),
            &peg_in_tx(),
            &forged,
            &tx,
            &prevouts
        )),
        "refund.funding"
    );
    // The op says another amount than output 1 pays.
    let mut op = peg_in();
    op.amount = Amount::from_sat(600_000);
    assert_eq!(
        rule(check_refund(
            &p,
            &op,
            &peg_in_tx(),
            &funding(),
            &tx,
            &prevouts
        )),
        "refund.peg-in"
    );
    // Input 0 names an output the funding transaction does not have.
    let mut short = funding();
    short.output.truncate(3);
    let mut pin = peg_in_tx();
    pin.input[0].previous_output = OutPoint::new(short.compute_txid(), 3);
    let mut op = peg_in();
    op.txid = pin.compute_txid();
    let mut t = tx.clone();
    t.input[0].previous_output = OutPoint::new(op.txid, 1);
    assert_eq!(
        rule(check_refund(&p, &op, &pin, &short, &t, &prevouts)),
        "refund.funding"
    );
    let mut no_input = peg_in_tx();
    no_input.input.clear();
    assert_eq!(
        rule(refund_script(&no_input, &funding()).map(|_| ())),
        "refund.peg-in"
    );
}

#[test]
fn the_fee_stays_within_the_cap_and_what_is_left_is_no_dust() {
    let (tx, prevouts) = refund(5);
    let vsize = signed_vsize(&tx);
    let amount = peg_in().amount;
    let mut at_cap = tx.clone();
    at_cap.output[0].value = amount - Amount::from_sat(50 * vsize);
    assert_eq!(check(&at_cap, &prevouts), "ok");
    at_cap.output[0].value -= Amount::from_sat(1);
    assert_eq!(check(&at_cap, &prevouts), "refund.fee");
    let mut inflated = tx.clone();
    inflated.output[0].value = amount + Amount::from_sat(1);
    assert_eq!(check(&inflated, &prevouts), "refund.fee");

    // What the fee leaves is dust: with a floor so high that its fee (the
    // least a refund may pay, above the 10 % share) leaves 248 sats, the
    // fee passes and the dust does not.
    let mut p = policy();
    p.fee_cap = rate(10_000);
    p.fee_floor = rate(5_048);
    let mut dust = tx.clone();
    dust.output[0].value = Amount::from_sat(248);
    assert_eq!(
        amount - Amount::from_sat(248),
        Amount::from_sat(5_048 * vsize)
    );
    let r = check_refund(&p, &peg_in(), &peg_in_tx(), &funding(), &dust, &prevouts);
    assert_eq!(rule(r.clone()), "refund.dust", "{r:?}");
}

#[test]
fn a_refunds_fee_is_bounded_by_a_share_of_the_amount_above_the_floors_fee() {
    use bitcoin::{Amount, FeeRate};
    use peg_rules::{max_refund_fee, REFUND_MAX_FEE_PERCENT};
    let floor = FeeRate::from_sat_per_vb(1).unwrap();
    let cap = FeeRate::from_sat_per_vb(500).unwrap();
    // 50,000 sats, 111 vB: the cap would allow 55,500; the share is 5,000.
    let max = max_refund_fee(floor, cap, Amount::from_sat(50_000), 111);
    assert_eq!(REFUND_MAX_FEE_PERCENT, 10);
    assert_eq!(max, Amount::from_sat(5_000));
    // A tiny deposit still pays the floor's fee.
    assert_eq!(
        max_refund_fee(floor, cap, Amount::from_sat(1_000), 111),
        Amount::from_sat(111)
    );
    // A large one stays under the cap's fee.
    assert_eq!(
        max_refund_fee(floor, cap, Amount::from_sat(100_000_000), 111),
        Amount::from_sat(55_500)
    );
}
