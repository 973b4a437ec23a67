//! Refunds (issue #14): the honest refund of a rejected peg-in passes and is
//! kept; every other refund is refused by the rule it breaks; an owed
//! peg-in coin is never a fulfilment's or sweep's input; a refunded peg-in
//! is owed no more.

use super::*;

/// Mallory: not on the fixture's allowlist.
struct Mallory {
    principal: PrincipalData,
    script: ScriptBuf,
    funding: Transaction,
    peg_in: Transaction,
}

const REFUNDED: u64 = 60_000;

/// Mallory pegs in `REFUNDED` sats from her own P2WPKH coin (the funding
/// transaction is not mined: the payload carries it); mined.
fn mallory(fx: &mut Fx) -> Mallory {
    let principal = PrincipalData::Standard(StacksAddress::p2pkh(
        StacksNetwork::Testnet,
        &public(21),
        true,
    ));
    let script =
        Address::p2wpkh(&CompressedPublicKey(public(22)), Network::Regtest).script_pubkey();
    let funding = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![fx.outside()],
        output: vec![
            TxOut {
                value: Amount::from_sat(1_000),
                script_pubkey: fx.recipient.script_pubkey(),
            },
            TxOut {
                value: Amount::from_sat(REFUNDED + 5_000),
                script_pubkey: script.clone(),
            },
        ],
    };
    let peg_in = wire::peg_in_transaction(
        vec![TxIn {
            previous_output: OutPoint::new(funding.compute_txid(), 1),
            ..TxIn::default()
        }],
        wire::peg_in_op_return(MAGIC, &principal, b"").unwrap(),
        &peg_address(&fx.key),
        Amount::from_sat(REFUNDED),
        None,
    );
    fx.mine(vec![peg_in.clone()]);
    Mallory {
        principal,
        script,
        funding,
        peg_in,
    }
}

fn coin(peg_in: &Transaction) -> (OutPoint, TxOut) {
    (
        OutPoint::new(peg_in.compute_txid(), 1),
        peg_in.output[1].clone(),
    )
}

/// A refund of `peg_in` to `to`, paying `fee`.
fn refund_tx(peg_in: &Transaction, to: &ScriptBuf, fee: u64) -> (Transaction, Vec<TxOut>) {
    let (o, out) = coin(peg_in);
    (
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: o,
                ..TxIn::default()
            }],
            output: vec![TxOut {
                value: out.value - Amount::from_sat(fee),
                script_pubkey: to.clone(),
            }],
        },
        vec![out],
    )
}

fn refund_request(fx: &Fx, m: &Mallory, tx: Transaction, prevouts: Vec<TxOut>) -> SignRequest {
    let payload = SignPayload::Refund {
        peg_in: m.peg_in.compute_txid(),
        funding: m.funding.clone(),
        tx,
        prevouts,
    };
    sign_request(3, &payload, &fx.key)
}

#[test]
fn the_honest_refund_passes_is_kept_and_pays_the_debt() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    let mut g = fx.guard();
    let (tx, p) = refund_tx(&m.peg_in, &m.script, 500);
    let req = refund_request(&fx, &m, tx.clone(), p.clone());
    g.check(&req).unwrap();
    for item in &req.items {
        assert!(g.will_sign(&item.key, &item.message.digest()));
    }
    // A replacement (fee bump) spends the same output: it passes, both kept.
    let (bump, bp) = refund_tx(&m.peg_in, &m.script, 900);
    g.check(&refund_request(&fx, &m, bump, bp)).unwrap();
    drop(g);
    let mut g = fx.guard();
    let kept = g.store.refunds_of(&m.peg_in.compute_txid()).unwrap();
    assert_eq!(kept.len(), 2, "durable");
    assert_eq!(kept[0].txid, tx.compute_txid());

    // Once it confirms, the peg-in is refunded: no second refund ...
    fx.mine(vec![tx]);
    let (again, ap) = refund_tx(&m.peg_in, &m.script, 700);
    assert_eq!(
        refused(g.check(&refund_request(&fx, &m, again, ap))),
        "refund.spent"
    );
    assert!(g.store.refunded(&m.peg_in.compute_txid()).unwrap());
    // ... and it is owed no more: alice's payout still passes the books
    // (were it still counted as a debt, the wallet would be short of it).
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    // A later mint of the refunded peg-in under its txid (a stolen Stacks
    // key) backs nothing: the supply then exceeds what peg-ins minted.
    let pin = m.peg_in.compute_txid().to_string();
    let who = m.principal.clone();
    fx.stacks(move |s| {
        s.mints.insert(pin, (u128::from(REFUNDED), who));
        s.supply += u128::from(REFUNDED);
    });
    let (tx, p) = fx.fulfilment(&fx.request, &[fx.peg_in_coin()], 1_500);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "backing"
    );
}

#[test]
fn a_refund_to_another_script_is_refused() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    let mut g = fx.guard();
    let attacker = peg_address(&public(66)).script_pubkey();
    for to in [
        attacker,
        fx.recipient.script_pubkey(),
        peg_address(&fx.key).script_pubkey(),
    ] {
        let (tx, p) = refund_tx(&m.peg_in, &to, 500);
        assert_eq!(
            refused(g.check(&refund_request(&fx, &m, tx, p))),
            "refund.destination"
        );
    }
    // A forged funding transaction naming the attacker's script does not
    // have the txid the peg-in's input 0 spends.
    let mut forged = m.funding.clone();
    forged.output[1].script_pubkey = peg_address(&public(66)).script_pubkey();
    let (tx, p) = refund_tx(&m.peg_in, &forged.output[1].script_pubkey, 500);
    let req = sign_request(
        3,
        &SignPayload::Refund {
            peg_in: m.peg_in.compute_txid(),
            funding: forged,
            tx,
            prevouts: p,
        },
        &fx.key,
    );
    assert_eq!(refused(g.check(&req)), "refund.funding");
    // The honest one passes in the same guard: the refusals were the rules'.
    let (tx, p) = refund_tx(&m.peg_in, &m.script, 500);
    g.check(&refund_request(&fx, &m, tx, p)).unwrap();
}

#[test]
fn a_refund_of_a_mintable_peg_in_is_refused() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    // Mallory on this signer's allowlist: her peg-in is to be minted.
    fx.policy.allowlist = Allowlist::new(
        [fx.alice.clone(), m.principal.clone()],
        [fx.recipient.script_pubkey()],
    );
    let mut g = fx.guard();
    let (tx, p) = refund_tx(&m.peg_in, &m.script, 500);
    assert_eq!(
        refused(g.check(&refund_request(&fx, &m, tx, p))),
        "refund.mintable"
    );
}

#[test]
fn a_refund_of_a_minted_peg_in_is_refused_at_the_final_block_and_at_the_tip() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    fx.confirmations.stacks = 2;
    let (tx, p) = refund_tx(&m.peg_in, &m.script, 500);
    // Minted at the tip only (not final yet): refused all the same.
    let pin = m.peg_in.compute_txid().to_string();
    let who = m.principal.clone();
    fx.stacks(|_| {});
    fx.stacks(move |s| {
        s.mints.insert(pin, (u128::from(REFUNDED), who));
        s.supply += u128::from(REFUNDED);
    });
    let mut g = fx.guard();
    let e = g
        .check(&refund_request(&fx, &m, tx.clone(), p.clone()))
        .unwrap_err();
    assert!(e.starts_with("refund.minted") && e.contains("tip"), "{e}");
    // And once final.
    fx.stacks(|_| {});
    let e = g.check(&refund_request(&fx, &m, tx, p)).unwrap_err();
    assert!(e.starts_with("refund.minted") && e.contains("final"), "{e}");
}

#[test]
fn a_refund_of_what_is_no_confirmed_peg_in_is_refused() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    let mut g = fx.guard();
    // A peg-out request is no peg-in.
    let (tx, p) = refund_tx(&m.peg_in, &m.script, 500);
    let as_request = SignPayload::Refund {
        peg_in: fx.request.compute_txid(),
        funding: m.funding.clone(),
        tx: tx.clone(),
        prevouts: p.clone(),
    };
    assert_eq!(
        refused(g.check(&sign_request(3, &as_request, &fx.key))),
        "refund.unknown"
    );
    // A peg-in the node does not have.
    let unknown = SignPayload::Refund {
        peg_in: Txid::from_byte_array([77; 32]),
        funding: m.funding.clone(),
        tx: tx.clone(),
        prevouts: p.clone(),
    };
    assert_eq!(
        refused(g.check(&sign_request(3, &unknown, &fx.key))),
        "refund.unknown"
    );
    // Too few confirmations.
    fx.confirmations.bitcoin = 2;
    let mut g = fx.guard();
    assert_eq!(
        refused(g.check(&refund_request(&fx, &m, tx.clone(), p.clone()))),
        "refund.not-final"
    );
    fx.mine(vec![]);
    g.check(&refund_request(&fx, &m, tx, p)).unwrap();
}

#[test]
fn an_owed_peg_in_coin_is_no_input_of_a_fulfilment_or_sweep() {
    let mut fx = Fx::new();
    let m = mallory(&mut fx);
    let mut g = fx.guard();
    // Mallory's unminted, unrefunded peg-in coin: a payout may not use it
    // (it would strand her refund), alice's minted one may.
    let (tx, p) = fx.fulfilment(&fx.request, &[coin(&m.peg_in)], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "fulfilment.input"
    );
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    // Nor a sweep of the old key's coins.
    let old = fx.key;
    let new = public(8);
    fx.keys = vec![old, new];
    fx.stacks(|s| s.key = Some(new));
    let mut g = fx.guard();
    let new_script = peg_address(&new).script_pubkey();
    let (tx, p) = sweep_tx(&[fx.peg_in_coin(), coin(&m.peg_in)], &new_script, 500);
    assert_eq!(
        refused(g.check(&sweep_request(&fx, tx, p, &old))),
        "sweep.input"
    );
}
