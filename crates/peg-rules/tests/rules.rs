//! Every rule, by name: each test breaks exactly one rule and checks that
//! rule is the one reported, and that the unbroken case passes.

mod common;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::SecretKey;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use common::*;
use peg_ops::{BtcAddress, BurnHeight, MessageSignature, PegInOp};
use peg_rules::{
    check_backing, check_fulfilment, check_sweep, clamp_fee_rate, fulfilment_vsize,
    peg_in_mintable, peg_out_payable, request_signature_digest, required_fee_output, signed_vsize,
    Books, PegInFacts, RequestFacts, Rule, Verdict, P2TR_DUST,
};
use proptest::prelude::*;

fn name(v: Verdict) -> &'static str {
    match v {
        Verdict::Reject(Rule { name, .. }) => name,
        Verdict::Wait(_) => "wait",
        Verdict::Accept => "accept",
    }
}

fn rule(r: Result<(), Rule>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(Rule { name, .. }) => name,
    }
}

// --- peg-ins ---------------------------------------------------------------

fn peg_in(amount: u64) -> PegInOp {
    PegInOp {
        recipient: allowed_principal(),
        peg_wallet_address: BtcAddress::from(peg_rules::peg_wallet_address(
            &key(1),
            bitcoin::Network::Regtest,
        )),
        amount: Amount::from_sat(amount),
        memo: vec![],
        txid: Txid::from_byte_array([3; 32]),
        vtxindex: 0,
        block_height: BurnHeight(100),
        burn_header_hash: bitcoin::BlockHash::all_zeros(),
    }
}

fn peg_in_facts(scripts: &[ScriptBuf]) -> PegInFacts<'_> {
    PegInFacts {
        tip_height: 105,
        confirmations: 6,
        peg_scripts: scripts,
        output1_unspent: Some(true),
    }
}

#[test]
fn a_peg_in_is_mintable_only_when_every_rule_holds() {
    let scripts = [old_peg_script(), peg_script()];
    let facts = peg_in_facts(&scripts);
    let check =
        |op: &PegInOp, f: &PegInFacts<'_>| name(peg_in_mintable(&policy(), NETWORKS, op, f));
    assert_eq!(check(&peg_in(50_000), &facts), "accept");

    let other_wallet = [old_peg_script()];
    assert_eq!(
        check(&peg_in(50_000), &peg_in_facts(&other_wallet)),
        "peg-in.wallet"
    );
    assert_eq!(check(&peg_in(0), &facts), "peg-in.amount");
    let mut op = peg_in(50_000);
    op.recipient = "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7".parse().unwrap();
    assert_eq!(check(&op, &facts), "peg-in.network");
    let mut op = peg_in(50_000);
    op.recipient = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".parse().unwrap();
    assert_eq!(check(&op, &facts), "peg-in.allowlist");
    let spent = PegInFacts {
        output1_unspent: Some(false),
        ..facts.clone()
    };
    assert_eq!(check(&peg_in(50_000), &spent), "peg-in.spent");
    let unchecked = PegInFacts {
        output1_unspent: None,
        ..facts.clone()
    };
    assert_eq!(check(&peg_in(50_000), &unchecked), "accept");
}

#[test]
fn a_peg_in_waits_for_its_confirmations() {
    let scripts = [peg_script()];
    // Block 100, tip 105: 6 confirmations.
    let six = peg_in_facts(&scripts);
    let op = peg_in(50_000);
    assert_eq!(
        name(peg_in_mintable(&policy(), NETWORKS, &op, &six)),
        "accept"
    );
    let seven = PegInFacts {
        confirmations: 7,
        ..six.clone()
    };
    assert_eq!(
        name(peg_in_mintable(&policy(), NETWORKS, &op, &seven)),
        "wait"
    );
    // A tip below the op's block (a reorg seen late) is a wait, not a panic.
    let behind = PegInFacts {
        tip_height: 50,
        ..six.clone()
    };
    assert_eq!(
        name(peg_in_mintable(&policy(), NETWORKS, &op, &behind)),
        "wait"
    );
}

// --- peg-out requests --------------------------------------------------------

fn facts(scripts: &[ScriptBuf]) -> RequestFacts<'_> {
    RequestFacts {
        tip_height: 105,
        confirmations: 6,
        peg_scripts: scripts,
        output2_unspent: true,
        fee_rate: Some(rate(10)),
        outflow_last_day: Amount::ZERO,
    }
}

fn payable(op: &peg_ops::PegOutRequestOp, f: &RequestFacts<'_>) -> &'static str {
    name(peg_out_payable(&policy(), NETWORKS, op, f))
}

#[test]
fn a_request_is_payable_only_when_every_rule_holds() {
    let scripts = [peg_script()];
    let f = facts(&scripts);
    assert_eq!(payable(&request(1_000_000, 5_000), &f), "accept");

    let other = [old_peg_script()];
    assert_eq!(
        payable(&request(1_000_000, 5_000), &facts(&other)),
        "request.wallet"
    );

    let mainnet: BtcAddress = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
        .parse()
        .unwrap();
    let mut op = request(1_000_000, 5_000);
    op.recipient = mainnet;
    assert_eq!(payable(&op, &f), "request.network");

    let stranger = bitcoin::Address::p2wpkh(
        &bitcoin::key::CompressedPublicKey(key(12)),
        bitcoin::Network::Regtest,
    );
    assert_eq!(
        payable(&request_to(&stranger, 1_000_000, 5_000), &f),
        "request.allowlist"
    );

    let mut op = request(1_000_000, 5_000);
    op.signature = MessageSignature([9; 65]);
    assert_eq!(payable(&op, &f), "request.signature");

    assert_eq!(payable(&request(0, 5_000), &f), "request.amount");

    let spent = RequestFacts {
        output2_unspent: false,
        ..f.clone()
    };
    assert_eq!(payable(&request(1_000_000, 5_000), &spent), "request.spent");

    let unconfirmed = RequestFacts {
        tip_height: 100,
        ..f.clone()
    };
    assert_eq!(payable(&request(1_000_000, 5_000), &unconfirmed), "wait");
}

#[test]
fn a_request_below_its_recipients_dust_limit_is_refused() {
    let scripts = [peg_script()];
    let f = facts(&scripts);
    for to in recipients() {
        let dust = to.script_pubkey().minimal_non_dust().to_sat();
        assert_eq!(
            payable(&request_to(&to, dust - 1, 20_000), &f),
            "request.dust",
            "{to}"
        );
        assert_eq!(
            payable(&request_to(&to, dust, 20_000), &f),
            "accept",
            "{to}"
        );
    }
    // 1 sat, the example.
    assert_eq!(payable(&request(1, 20_000), &f), "request.dust");
}

#[test]
fn a_request_whose_fee_output_cannot_pay_its_fulfilment_is_refused() {
    let scripts = [peg_script()];
    for sat_per_vb in [1, 10, 40, 50, 400] {
        let f = RequestFacts {
            fee_rate: Some(rate(sat_per_vb)),
            ..facts(&scripts)
        };
        for to in recipients() {
            let needed = required_fee_output(&policy(), f.fee_rate, &to.script_pubkey()).to_sat();
            assert_eq!(payable(&request_to(&to, 1_000_000, needed), &f), "accept");
            assert_eq!(
                payable(&request_to(&to, 1_000_000, needed - 1), &f),
                "request.fee",
                "{to} at {sat_per_vb} sat/vB"
            );
        }
    }
    // The example: a fee output of 0.
    assert_eq!(
        payable(&request(1_000_000, 0), &facts(&scripts)),
        "request.fee"
    );
}

#[test]
fn the_outflow_limits_hold_per_request_and_per_day() {
    let scripts = [peg_script()];
    let f = facts(&scripts);
    assert_eq!(payable(&request(100_000_000, 5_000), &f), "accept");
    assert_eq!(payable(&request(100_000_001, 5_000), &f), "request.limit");
    let busy = RequestFacts {
        outflow_last_day: Amount::from_sat(150_000_000),
        ..f.clone()
    };
    assert_eq!(payable(&request(50_000_000, 5_000), &busy), "accept");
    assert_eq!(
        payable(&request(50_000_001, 5_000), &busy),
        "request.daily-limit"
    );
    let absurd = RequestFacts {
        outflow_last_day: Amount::MAX,
        ..f.clone()
    };
    assert_eq!(
        payable(&request(1_000, 5_000), &absurd),
        "request.daily-limit"
    );
    // Without limits configured, neither applies.
    let mut open = policy();
    open.max_request = None;
    open.max_daily_outflow = None;
    let op = request(150_000_000, 5_000);
    let op_to = peg_out_payable(&open, NETWORKS, &op, &absurd);
    assert_eq!(name(op_to), "accept");
}

#[test]
fn the_required_fee_output_covers_a_one_coin_fulfilment_with_the_margin() {
    let p = policy();
    let to = recipient().script_pubkey();
    // Two P2TR key-path inputs, OP_RETURN (35 bytes), P2WPKH, P2TR change:
    // 212 non-witness bytes, 134 witness bytes: 982 WU, 246 vB.
    assert_eq!(fulfilment_vsize(&to, 1), 246);
    // 246 vB at 10 sat/vB is 2,460; with 20 %: 2,952.
    assert_eq!(
        required_fee_output(&p, Some(rate(10)), &to),
        Amount::from_sat(2_952)
    );
    // Rounded up: 246 × 1.2 = 295.2 → 296 at 1 sat/vB.
    assert_eq!(
        required_fee_output(&p, Some(rate(1)), &to),
        Amount::from_sat(330)
    );
    let mut no_margin = policy();
    no_margin.fee_margin_percent = 0;
    assert_eq!(
        required_fee_output(&no_margin, Some(rate(3)), &to),
        Amount::from_sat(738)
    );
    let mut odd = policy();
    odd.fee_margin_percent = 7;
    // 738 × 1.07 = 789.66 → 790.
    assert_eq!(
        required_fee_output(&odd, Some(rate(3)), &to),
        Amount::from_sat(790)
    );
    // The rate is clamped: above the cap, the cap's fee.
    assert_eq!(
        required_fee_output(&p, Some(rate(5_000)), &to),
        required_fee_output(&p, Some(rate(50)), &to)
    );
    // The subsidy lowers it, never below the P2TR dust limit.
    let mut subsidised = policy();
    subsidised.subsidy = Amount::from_sat(1_000);
    assert_eq!(
        required_fee_output(&subsidised, Some(rate(10)), &to),
        Amount::from_sat(1_952)
    );
    subsidised.subsidy = Amount::from_sat(1_000_000);
    assert_eq!(
        required_fee_output(&subsidised, Some(rate(10)), &to),
        P2TR_DUST
    );
}

#[test]
fn fee_rates_are_clamped_to_the_policy() {
    let p = policy();
    assert_eq!(clamp_fee_rate(&p, None), rate(1));
    assert_eq!(clamp_fee_rate(&p, Some(FeeRate::ZERO)), rate(1));
    assert_eq!(clamp_fee_rate(&p, Some(rate(7))), rate(7));
    assert_eq!(clamp_fee_rate(&p, Some(rate(51))), rate(50));
    assert_eq!(clamp_fee_rate(&p, Some(FeeRate::MAX)), rate(50));
}

// --- replay -----------------------------------------------------------------

#[test]
fn a_copied_request_has_the_same_signature_digest_and_others_do_not() {
    let op = request(1_000_000, 5_000);
    // A copy in another transaction, with another fee output and memo.
    let mut copy = op.clone();
    copy.txid = Txid::from_byte_array([2; 32]);
    copy.fulfillment_fee = Amount::from_sat(330);
    copy.memo = b"again".to_vec();
    copy.block_height = BurnHeight(200);
    assert_eq!(
        request_signature_digest(&op),
        request_signature_digest(&copy)
    );
    // A user repeating a peg-out changes the amount by a sat: a new digest.
    assert_ne!(
        request_signature_digest(&op),
        request_signature_digest(&request(1_000_001, 5_000))
    );
    let other_to = recipients().remove(4);
    assert_ne!(
        request_signature_digest(&op),
        request_signature_digest(&request_to(&other_to, 1_000_000, 5_000))
    );
    let mut other_sig = op.clone();
    let signer = SecretKey::from_slice(&[6; 32]).unwrap();
    other_sig.signature = MessageSignature::sign(
        peg_ops::peg_out_request_sighash(op.amount, &op.recipient.script_pubkey()),
        &signer,
    );
    assert_ne!(
        request_signature_digest(&op),
        request_signature_digest(&other_sig)
    );
}

#[test]
fn a_malleated_signature_is_still_a_replay() {
    let op = request(1_000_000, 5_000);
    // (r, n - s) with the recovery id's parity flipped: the same requester.
    let mut bytes = op.signature.0;
    let s = SecretKey::from_slice(&bytes[33..]).unwrap().negate();
    bytes[33..].copy_from_slice(&s.secret_bytes());
    bytes[0] ^= 1;
    let mut copy = op.clone();
    copy.signature = MessageSignature(bytes);
    copy.txid = Txid::from_byte_array([2; 32]);
    let network = stacks_wire::StacksNetwork::Testnet;
    assert_eq!(
        copy.requester(network).unwrap(),
        op.requester(network).unwrap()
    );
    assert_ne!(copy.signature, op.signature);
    assert_eq!(
        request_signature_digest(&op),
        request_signature_digest(&copy)
    );
}

// --- fulfilments ------------------------------------------------------------

fn fulfil(op: &peg_ops::PegOutRequestOp, tx: &Transaction, prevouts: &[TxOut]) -> &'static str {
    rule(check_fulfilment(
        &policy(),
        MAGIC,
        op,
        tx,
        prevouts,
        &peg_script(),
        &is_peg_coin,
    ))
}

#[test]
fn a_correct_fulfilment_passes() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    assert_eq!(fulfil(&op, &tx, &prevouts), "ok");
    // Without change: a coin whose surplus (4,000 sats in all) is left to
    // the miner, within the request's fee output.
    let mut no_change = tx.clone();
    no_change.output.truncate(2);
    let mut small = prevouts.clone();
    small[1].value = Amount::from_sat(999_000);
    assert_eq!(
        rule(check_fulfilment(
            &policy(),
            MAGIC,
            &op,
            &no_change,
            &small,
            &peg_script(),
            &|o, t| *o == peg_coin().0 && t.value == Amount::from_sat(999_000),
        )),
        "ok"
    );
}

#[test]
fn a_fulfilment_of_the_wrong_shape_is_refused() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    assert_eq!(fulfil(&op, &tx, &prevouts[..1]), "fulfilment.shape");
    let mut one_output = tx.clone();
    one_output.output.truncate(1);
    assert_eq!(fulfil(&op, &one_output, &prevouts), "fulfilment.shape");
    let mut no_inputs = tx.clone();
    no_inputs.input.clear();
    assert_eq!(fulfil(&op, &no_inputs, &[]), "fulfilment.shape");
    // The peg coin twice: its value counted twice in the fee.
    let mut twice = tx.clone();
    twice.input.push(twice.input[1].clone());
    let mut prevouts3 = prevouts.clone();
    prevouts3.push(prevouts[1].clone());
    assert_eq!(fulfil(&op, &twice, &prevouts3), "fulfilment.shape");
    let mut later = tx.clone();
    later.lock_time = bitcoin::absolute::LockTime::from_height(900_000).unwrap();
    assert_eq!(fulfil(&op, &later, &prevouts), "fulfilment.shape");
}

#[test]
fn input_0_must_be_the_requests_fee_output() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let mut other = tx.clone();
    other.input[0].previous_output = OutPoint::new(op.txid, 1);
    assert_eq!(fulfil(&op, &other, &prevouts), "fulfilment.input0");
    let mut swapped = tx.clone();
    swapped.input.swap(0, 1);
    let mut swapped_prevouts = prevouts.clone();
    swapped_prevouts.swap(0, 1);
    assert_eq!(
        fulfil(&op, &swapped, &swapped_prevouts),
        "fulfilment.input0"
    );
    let mut value = prevouts.clone();
    value[0].value = Amount::from_sat(50_000);
    assert_eq!(fulfil(&op, &tx, &value), "fulfilment.input0");
    let mut script = prevouts.clone();
    script[0].script_pubkey = old_peg_script();
    assert_eq!(fulfil(&op, &tx, &script), "fulfilment.input0");
}

#[test]
fn other_inputs_must_be_peg_coins() {
    let op = request(1_000_000, 5_000);
    let (mut tx, prevouts) = fulfilment(&op, 10);
    tx.input[1].previous_output.vout = 5;
    assert_eq!(fulfil(&op, &tx, &prevouts), "fulfilment.input");
    // Another request's fee output is no peg coin: the caller's record says so.
    let (tx, prevouts) = fulfilment(&op, 10);
    assert_eq!(
        rule(check_fulfilment(
            &policy(),
            MAGIC,
            &op,
            &tx,
            &prevouts,
            &peg_script(),
            &|_, _| false,
        )),
        "fulfilment.input"
    );
}

#[test]
fn output_0_must_be_the_fulfilment_op_return() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let with = |script: ScriptBuf, value: u64| {
        let mut t = tx.clone();
        t.output[0] = TxOut {
            value: Amount::from_sat(value),
            script_pubkey: script,
        };
        fulfil(&op, &t, &prevouts)
    };
    assert_eq!(
        with(peg_rules::fulfilment_op_return(MAGIC, &[0xab; 32]), 0),
        "ok"
    );
    assert_eq!(
        with(peg_rules::fulfilment_op_return(*b"T2", &TIP), 0),
        "fulfilment.op-return"
    );
    assert_eq!(
        with(peg_rules::fulfilment_op_return(MAGIC, &TIP), 1),
        "fulfilment.op-return"
    );
    let mut data = [0u8; 35];
    data[..2].copy_from_slice(&MAGIC);
    data[2] = b'>';
    assert_eq!(
        with(ScriptBuf::new_op_return(data), 0),
        "fulfilment.op-return"
    );
    let short = [b'i', b'd', b'!', 1, 2, 3];
    assert_eq!(
        with(ScriptBuf::new_op_return(short), 0),
        "fulfilment.op-return"
    );
    assert_eq!(with(peg_script(), 0), "fulfilment.op-return");
}

#[test]
fn output_1_pays_exactly_the_amount_to_the_recipient() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let mut less = tx.clone();
    less.output[1].value = Amount::from_sat(999_999);
    less.output[2].value += Amount::from_sat(1);
    assert_eq!(fulfil(&op, &less, &prevouts), "fulfilment.recipient");
    let mut elsewhere = tx.clone();
    elsewhere.output[1].script_pubkey = recipients()[1].script_pubkey();
    assert_eq!(fulfil(&op, &elsewhere, &prevouts), "fulfilment.recipient");
}

#[test]
fn change_goes_to_the_current_key_only() {
    let op = request(1_000_000, 5_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let mut old = tx.clone();
    old.output[2].script_pubkey = old_peg_script();
    assert_eq!(fulfil(&op, &old, &prevouts), "fulfilment.change");
    let mut split = tx.clone();
    let half = split.output[2].value / 2;
    split.output[2].value -= half;
    split.output.push(TxOut {
        value: half,
        script_pubkey: peg_script(),
    });
    assert_eq!(fulfil(&op, &split, &prevouts), "fulfilment.change");
    // Dust change: 329 sats to the peg wallet, a 3,000-sat fee; 330 is fine.
    let mut small = prevouts.clone();
    small[1].value = Amount::from_sat(998_329);
    let with_change = |sats: u64| {
        let mut t = tx.clone();
        t.output[2].value = Amount::from_sat(sats);
        rule(check_fulfilment(
            &policy(),
            MAGIC,
            &op,
            &t,
            &small,
            &peg_script(),
            &|o, _| *o == peg_coin().0,
        ))
    };
    assert_eq!(with_change(329), "fulfilment.change");
    assert_eq!(with_change(330), "ok");
}

#[test]
fn the_fee_stays_within_the_cap_and_the_requests_fee_output_plus_subsidy() {
    let op = request(1_000_000, 50_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let vsize = signed_vsize(&tx);
    let with_fee = |fee: u64| {
        let mut t = tx.clone();
        let total: Amount = prevouts.iter().map(|o| o.value).sum();
        t.output[2].value = total - op.amount - Amount::from_sat(fee);
        t
    };
    // At the cap exactly: fine; a sat more: refused.
    assert_eq!(fulfil(&op, &with_fee(50 * vsize), &prevouts), "ok");
    assert_eq!(
        fulfil(&op, &with_fee(50 * vsize + 1), &prevouts),
        "fulfilment.fee"
    );
    // Outputs above the inputs.
    let mut inflated = tx.clone();
    inflated.output[2].value += Amount::from_sat(1_000_000);
    assert_eq!(fulfil(&op, &inflated, &prevouts), "fulfilment.fee");

    // A 2,000-sat fee output: the peg pays no more than that without a subsidy.
    let op = request(500_000, 2_000);
    let (tx, prevouts) = fulfilment(&op, 10);
    let at = |fee: u64, subsidy: u64| {
        let mut t = tx.clone();
        let total: Amount = prevouts.iter().map(|o| o.value).sum();
        t.output[2].value = total - op.amount - Amount::from_sat(fee);
        let mut p = policy();
        p.subsidy = Amount::from_sat(subsidy);
        rule(check_fulfilment(
            &p,
            MAGIC,
            &op,
            &t,
            &prevouts,
            &peg_script(),
            &is_peg_coin,
        ))
    };
    assert_eq!(at(2_000, 0), "ok");
    assert_eq!(at(2_001, 0), "fulfilment.fee");
    assert_eq!(at(2_500, 500), "ok");
    assert_eq!(at(2_501, 500), "fulfilment.fee");
}

// --- sweeps -----------------------------------------------------------------

fn swept(tx: &Transaction, prevouts: &[TxOut]) -> &'static str {
    rule(check_sweep(
        &policy(),
        tx,
        prevouts,
        &peg_script(),
        &|_, t| t.script_pubkey == old_peg_script(),
    ))
}

#[test]
fn a_sweep_moves_old_coins_to_the_current_key_only() {
    let coins = old_coins(3);
    let (tx, prevouts) = sweep(&coins, 5);
    assert_eq!(swept(&tx, &prevouts), "ok");

    assert_eq!(swept(&tx, &prevouts[..2]), "sweep.shape");
    let mut empty = tx.clone();
    empty.input.clear();
    assert_eq!(swept(&empty, &[]), "sweep.shape");
    let mut twice = tx.clone();
    twice.input[2] = twice.input[0].clone();
    assert_eq!(swept(&twice, &prevouts), "sweep.shape");
    let mut later = tx.clone();
    later.lock_time = bitcoin::absolute::LockTime::from_height(900_000).unwrap();
    assert_eq!(swept(&later, &prevouts), "sweep.shape");

    let mut foreign = prevouts.clone();
    foreign[1].script_pubkey = recipient().script_pubkey();
    assert_eq!(swept(&tx, &foreign), "sweep.input");

    let mut attacker = tx.clone();
    attacker.output[0].script_pubkey = recipient().script_pubkey();
    assert_eq!(swept(&attacker, &prevouts), "sweep.output");
    let mut two = tx.clone();
    let half = two.output[0].value / 2;
    two.output[0].value -= half;
    two.output.push(TxOut {
        value: half,
        script_pubkey: peg_script(),
    });
    assert_eq!(swept(&two, &prevouts), "sweep.output");
    let mut none = tx.clone();
    none.output.clear();
    assert_eq!(swept(&none, &prevouts), "sweep.output");
    let mut dust = tx.clone();
    dust.output[0].value = Amount::from_sat(329);
    assert_eq!(swept(&dust, &prevouts), "sweep.output");

    let vsize = signed_vsize(&tx);
    let total: Amount = prevouts.iter().map(|o| o.value).sum();
    let mut at_cap = tx.clone();
    at_cap.output[0].value = total - Amount::from_sat(50 * vsize);
    assert_eq!(swept(&at_cap, &prevouts), "ok");
    at_cap.output[0].value -= Amount::from_sat(1);
    assert_eq!(swept(&at_cap, &prevouts), "sweep.fee");
    let mut inflated = tx.clone();
    inflated.output[0].value = total + Amount::from_sat(1);
    assert_eq!(swept(&inflated, &prevouts), "sweep.fee");
}

// --- backing ----------------------------------------------------------------

#[test]
fn an_unbacked_peg_pays_nothing() {
    let books = |held: u64, supply: u64, debts: u64| Books {
        held_after: Amount::from_sat(held),
        supply,
        debts: Amount::from_sat(debts),
    };
    assert_eq!(rule(check_backing(&books(1_000, 600, 400))), "ok");
    assert_eq!(rule(check_backing(&books(999, 600, 400))), "backing");
    // The case: sBTC minted without BTC (supply 1,500 of which 500
    // unbacked) is refused although the surplus of rejected peg-ins (debts)
    // made the wallet hold more than the supply alone.
    assert_eq!(rule(check_backing(&books(1_800, 1_500, 400))), "backing");
    assert_eq!(
        rule(check_backing(&books(u64::MAX, u64::MAX, 1))),
        "backing"
    );
}

// --- properties -------------------------------------------------------------

fn script_strategy() -> impl Strategy<Value = ScriptBuf> {
    prop::collection::vec(any::<u8>(), 0..60).prop_map(ScriptBuf::from_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_change_to_output_1_is_refused(
        delta in any::<i32>().prop_filter("a change", |d| *d != 0),
        script in script_strategy(),
        change_script in any::<bool>(),
    ) {
        let op = request(1_000_000, 5_000);
        let (mut tx, prevouts) = fulfilment(&op, 10);
        if change_script {
            prop_assume!(script != op.recipient.script_pubkey());
            tx.output[1].script_pubkey = script;
        } else {
            let v = i64::try_from(op.amount.to_sat()).unwrap() + i64::from(delta);
            prop_assume!(v >= 0);
            tx.output[1].value = Amount::from_sat(u64::try_from(v).unwrap());
        }
        prop_assert_eq!(fulfil(&op, &tx, &prevouts), "fulfilment.recipient");
    }

    #[test]
    fn any_change_to_input_0_is_refused(
        txid in any::<[u8; 32]>(),
        vout in any::<u32>(),
        value in any::<u64>(),
        script in script_strategy(),
        what in 0u8..3,
    ) {
        let op = request(1_000_000, 5_000);
        let (mut tx, mut prevouts) = fulfilment(&op, 10);
        match what {
            0 => {
                let o = OutPoint::new(Txid::from_byte_array(txid), vout);
                prop_assume!(o != OutPoint::new(op.txid, 2) && o != peg_coin().0);
                tx.input[0].previous_output = o;
            }
            1 => {
                prop_assume!(value != op.fulfillment_fee.to_sat());
                prevouts[0].value = Amount::from_sat(value);
            }
            _ => {
                prop_assume!(script != op.peg_wallet_address.script_pubkey());
                prevouts[0].script_pubkey = script;
            }
        }
        prop_assert_eq!(fulfil(&op, &tx, &prevouts), "fulfilment.input0");
    }

    #[test]
    fn backing_refuses_exactly_when_held_is_below_supply_plus_debts(
        held in any::<u64>(),
        supply in any::<u64>(),
        debts in any::<u64>(),
        near in any::<bool>(),
    ) {
        // Half the cases close to the boundary, where an off-by-one shows.
        let (supply, debts) = if near {
            let rest = held - held / 2;
            let d = match debts % 3 {
                0 => rest.saturating_sub(1),
                1 => rest,
                _ => rest.saturating_add(1),
            };
            (held / 2, d)
        } else {
            (supply, debts)
        };
        let books = Books {
            held_after: Amount::from_sat(held),
            supply,
            debts: Amount::from_sat(debts),
        };
        let backed = u128::from(held) >= u128::from(supply) + u128::from(debts);
        prop_assert_eq!(check_backing(&books).is_ok(), backed);
    }

    #[test]
    fn peg_out_payable_never_panics(
        amount in any::<u64>(),
        fee in any::<u64>(),
        tip in any::<u64>(),
        height in any::<u64>(),
        confirmations in any::<u32>(),
        rate_kwu in any::<u64>(),
        outflow in any::<u64>(),
        sig in any::<[u8; 32]>(),
    ) {
        let scripts = [peg_script()];
        let mut op = request(amount, fee);
        op.block_height = BurnHeight(height);
        op.signature.0[1..33].copy_from_slice(&sig);
        let f = RequestFacts {
            tip_height: tip,
            confirmations,
            peg_scripts: &scripts,
            output2_unspent: true,
            fee_rate: Some(FeeRate::from_sat_per_kwu(rate_kwu)),
            outflow_last_day: Amount::from_sat(outflow),
        };
        let _ = peg_out_payable(&policy(), NETWORKS, &op, &f);
        let mut big = policy();
        big.fee_margin_percent = 1000;
        big.fee_cap = FeeRate::MAX;
        let _ = required_fee_output(&big, f.fee_rate, &op.recipient.script_pubkey());
    }

    #[test]
    fn fulfilment_vsize_is_the_size_of_the_shape(
        inputs in 0usize..300,
        recipient_len in 0usize..300,
    ) {
        // The shape built for real: 1 + inputs inputs, OP_RETURN, a
        // recipient script of that length, P2TR change.
        let to = ScriptBuf::from_bytes(vec![0x51; recipient_len]);
        let op = request(1_000_000, 5_000);
        let (mut tx, _) = fulfilment(&op, 10);
        tx.output[1].script_pubkey = to.clone();
        let extra = tx.input[1].clone();
        tx.input.truncate(1);
        for i in 0..inputs {
            let mut input = extra.clone();
            input.previous_output.vout = u32::try_from(i).unwrap();
            tx.input.push(input);
        }
        prop_assert_eq!(fulfilment_vsize(&to, inputs), signed_vsize(&tx));
    }
}

#[test]
fn fulfilment_vsize_saturates_instead_of_overflowing() {
    let to = recipient().script_pubkey();
    assert!(fulfilment_vsize(&to, usize::MAX) >= fulfilment_vsize(&to, 1_000_000));
}
