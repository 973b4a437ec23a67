//! Refunds through the loop, with the mockall doubles of `testing` and the
//! real peg wallet (real transactions, real taproot signatures by the
//! doubles' keys, checked by libbitcoinconsensus).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bitcoin::hashes::Hash as _;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{Message, SecretKey};
use bitcoin::{
    absolute, transaction, Address, Amount, BlockHash, CompressedPublicKey, FeeRate, ScriptBuf,
    TxIn, TxOut,
};
use bitcoin_node_client::{TxStatus, Utxo};
use fee_wallet::{BitcoinFeePolicy, PegWallet};
use peg_ops::{BtcAddress, PegInOp};

use super::*;
use crate::testing::*;

type RefundLoop = StacksCoordinator<
    MemQueue,
    MockStacksNode,
    MockBitcoinNode,
    MockStacksWallet,
    PegWallet,
    MockFrostCoordinator,
    MockOpSource,
>;

/// The Bitcoin chain the node double serves: transactions with their
/// confirmations, spent outputs, what was broadcast.
#[derive(Default)]
struct Btc {
    txs: HashMap<Txid, (Transaction, u32)>,
    spent: HashSet<OutPoint>,
    broadcast: Vec<Transaction>,
    /// Answers to the next broadcasts.
    refuse_next: Vec<bitcoin_node_client::Error>,
    unspent_at: HashMap<ScriptBuf, Vec<Utxo>>,
    tip: u64,
}

type B = Arc<Mutex<Btc>>;

fn bitcoin(b: &B) -> MockBitcoinNode {
    let mut m = MockBitcoinNode::new();
    m.expect_estimate_smart_fee()
        .returning(|_| Ok(FeeRate::from_sat_per_vb(2)));
    let b1 = b.clone();
    m.expect_get_tx_out().returning(move |o, mempool| {
        assert!(mempool, "a spend in the mempool is a spend");
        let g = b1.lock().unwrap();
        if g.spent.contains(o) {
            return Ok(None);
        }
        Ok(g.txs.get(&o.txid).and_then(|(t, c)| {
            t.output.get(o.vout as usize).map(|out| Utxo {
                outpoint: *o,
                txout: out.clone(),
                confirmations: *c,
            })
        }))
    });
    let b2 = b.clone();
    m.expect_get_raw_transaction().returning(move |t| {
        Ok(b2.lock().unwrap().txs.get(t).map(|(tx, c)| TxStatus {
            tx: tx.clone(),
            confirmations: *c,
            block_hash: None,
        }))
    });
    let b3 = b.clone();
    m.expect_send_raw_transaction().returning(move |tx| {
        let mut g = b3.lock().unwrap();
        if let Some(e) = g.refuse_next.pop() {
            return Err(e);
        }
        g.broadcast.push(tx.clone());
        for i in &tx.input {
            g.spent.insert(i.previous_output);
        }
        g.txs.insert(tx.compute_txid(), (tx.clone(), 0));
        Ok(tx.compute_txid())
    });
    let b4 = b.clone();
    m.expect_list_unspent().returning(move |s| {
        Ok(b4
            .lock()
            .unwrap()
            .unspent_at
            .get(&s.to_owned())
            .cloned()
            .unwrap_or_default())
    });
    let b5 = b.clone();
    m.expect_get_block_count()
        .returning(move || Ok(b5.lock().unwrap().tip));
    m
}

/// Signs every item for real with the secret of its key (the aggregate
/// key's is `[3; 32]`, the old key's `[4; 32]`), BIP-341 tweaked.
fn signing_frost(w: &W, keys: Vec<PublicKey>) -> MockFrostCoordinator {
    let mut m = MockFrostCoordinator::new();
    m.expect_aggregate_public_key()
        .returning(|| Some(aggregate_key()));
    m.expect_keys().returning(move || keys.clone());
    m.expect_attestations().returning(Vec::new);
    let w1 = w.clone();
    sign_with(&mut m, w, move |payload, items| {
        let mut g = w1.lock().unwrap();
        g.sign_payloads.push(payload.to_vec());
        g.sign_calls += 1;
        if let Some(e) = g.frost_failures.pop_front() {
            return Err(e);
        }
        let secp = secp();
        Ok(items
            .iter()
            .map(|item| {
                let secret = [3u8, 4]
                    .iter()
                    .map(|i| SecretKey::from_slice(&[*i; 32]).unwrap())
                    .find(|s| s.public_key(&secp) == item.key)
                    .expect("a key of the doubles");
                let frost_coordinator::ToSign::Taproot { sighash } = &item.message else {
                    panic!("a transaction's item")
                };
                let kp = Keypair::from_secret_key(&secp, &secret).tap_tweak(&secp, None);
                secp.sign_schnorr_no_aux_rand(&Message::from_digest(*sighash), &kp.to_keypair())
            })
            .collect())
    });
    m
}

fn refund_loop(w: &W, b: &B, q: &MemQueue, keys: Vec<PublicKey>) -> RefundLoop {
    StacksCoordinator::new(
        Components {
            queue: q.clone(),
            stacks: stacks_node(w),
            bitcoin: bitcoin(b),
            stacks_wallet: stacks_wallet(w),
            bitcoin_wallet: PegWallet::new(
                Network::Regtest,
                *b"id",
                BitcoinFeePolicy {
                    floor: FeeRate::from_sat_per_vb(1).unwrap(),
                    cap: FeeRate::from_sat_per_vb(500).unwrap(),
                    subsidy: Amount::ZERO,
                },
            ),
            frost: signing_frost(w, keys),
            source: source(w),
        },
        settings(),
    )
}

fn depositor_script() -> ScriptBuf {
    let k = SecretKey::from_slice(&[41; 32])
        .unwrap()
        .public_key(&secp());
    Address::p2wpkh(&CompressedPublicKey(k), Network::Regtest).script_pubkey()
}

/// A peg-in of `sats` to `recipient` paying the address of `key`, from a
/// funding transaction paying the depositor; both known to the node.
fn deposit(b: &B, n: u8, recipient: PrincipalData, sats: u64, key: &PublicKey) -> PegOp {
    let funding = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(txid(n), 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(sats + 10_000),
            script_pubkey: depositor_script(),
        }],
    };
    let to = fee_wallet::peg_wallet_address(key, Network::Regtest);
    let tx = peg_ops::wire::peg_in_transaction(
        vec![TxIn {
            previous_output: OutPoint::new(funding.compute_txid(), 0),
            ..TxIn::default()
        }],
        peg_ops::wire::peg_in_op_return(*b"id", &recipient, b"").unwrap(),
        &to,
        Amount::from_sat(sats),
        None,
    );
    let mut g = b.lock().unwrap();
    g.txs.insert(funding.compute_txid(), (funding, 6));
    g.txs.insert(tx.compute_txid(), (tx.clone(), 5));
    PegOp::PegIn(PegInOp {
        recipient,
        peg_wallet_address: BtcAddress::from(to),
        amount: Amount::from_sat(sats),
        memo: vec![],
        txid: tx.compute_txid(),
        vtxindex: u32::from(n),
        block_height: BurnHeight(5),
        burn_header_hash: BlockHash::all_zeros(),
    })
}

fn refused(r: Result<(), Error>) -> String {
    match r {
        Err(Error::NotRefundable(_, why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_rejected_peg_in_is_refunded_to_its_own_script_once() {
    let b = B::default();
    let op = deposit(&b, 1, stranger_principal(), 200_000, &aggregate_key());
    let t = op.txid();
    let w = world(10, vec![(5, vec![op])]);
    let q = MemQueue::default();
    let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
    l.tick(&no_stop()).unwrap();
    assert!(
        matches!(q.state(&t), OpState::Rejected { reason } if reason.contains("peg-in.allowlist"))
    );
    // Nothing happens to a rejected peg-in until the operator asks.
    run_ticks_refund(&mut l, 2);
    assert!(b.lock().unwrap().broadcast.is_empty());

    l.request_refund(&t, "test", "not on the allowlist")
        .unwrap();
    assert_eq!(q.state(&t), OpState::RefundRequested);
    let state = l.process_one(&t, &no_stop()).unwrap();
    assert!(matches!(state, OpState::RefundBroadcast { .. }), "{state}");
    {
        let g = b.lock().unwrap();
        assert_eq!(g.broadcast.len(), 1);
        let refund = &g.broadcast[0];
        assert_eq!(refund.input.len(), 1);
        assert_eq!(refund.input[0].previous_output, OutPoint::new(t, 1));
        assert_eq!(refund.output.len(), 1, "nowhere else");
        assert_eq!(refund.output[0].script_pubkey, depositor_script());
        let fee = Amount::from_sat(200_000) - refund.output[0].value;
        assert!(fee > Amount::ZERO && fee < Amount::from_sat(1_000), "{fee}");
        // The signers were asked with the funding transaction.
        let payload = peg_rules::SignPayload::decode(&w.lock().unwrap().sign_payloads[0]).unwrap();
        let peg_rules::SignPayload::Refund {
            peg_in, funding, ..
        } = payload
        else {
            panic!("a refund payload")
        };
        assert_eq!(peg_in, t);
        assert_eq!(
            funding.compute_txid(),
            g.txs[&t].0.input[0].previous_output.txid
        );
    }
    // Confirmed: refunded, terminal.
    let refund_txid = b.lock().unwrap().broadcast[0].compute_txid();
    b.lock().unwrap().txs.get_mut(&refund_txid).unwrap().1 = 1;
    run_ticks_refund(&mut l, 2);
    assert_eq!(q.state(&t), OpState::Refunded);
    assert_eq!(w.lock().unwrap().sign_calls, 1, "signed once");
    assert_eq!(b.lock().unwrap().broadcast.len(), 1);
    assert!(refused(l.request_refund(&t, "test", "again")).contains("refunded already"));
    assert!(w.lock().unwrap().signed.is_empty(), "never minted");
}

fn run_ticks_refund(l: &mut RefundLoop, n: usize) {
    for _ in 0..n {
        l.tick(&no_stop()).unwrap();
    }
}

#[test]
fn a_stored_refund_is_rebroadcast_after_a_restart_never_signed_again() {
    let b = B::default();
    let op = deposit(&b, 1, stranger_principal(), 200_000, &aggregate_key());
    let t = op.txid();
    let w = world(10, vec![(5, vec![op])]);
    let q = MemQueue::default();
    let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
    l.tick(&no_stop()).unwrap();
    l.request_refund(&t, "test", "crash test").unwrap();
    // The node is down at broadcast: the signed refund stays stored.
    b.lock()
        .unwrap()
        .refuse_next
        .push(bitcoin_node_client::Error::Timeout("test".into()));
    let state = l.process_one(&t, &no_stop()).unwrap();
    let OpState::RefundSigned { tx } = state else {
        panic!("{state}")
    };
    drop(l);
    // A restarted loop broadcasts those bytes.
    let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
    run_ticks_refund(&mut l, 2);
    assert!(matches!(q.state(&t), OpState::RefundBroadcast { .. }));
    assert_eq!(b.lock().unwrap().broadcast, vec![tx.clone()]);
    assert_eq!(w.lock().unwrap().sign_calls, 1);
    // Dropped from the mempool: the same bytes again.
    b.lock().unwrap().txs.remove(&tx.compute_txid());
    b.lock().unwrap().spent.clear();
    run_ticks_refund(&mut l, 1);
    assert_eq!(b.lock().unwrap().broadcast, vec![tx.clone(), tx]);
    assert_eq!(w.lock().unwrap().sign_calls, 1);
}

#[test]
fn only_a_rejected_never_minted_peg_in_with_its_coin_is_refunded() {
    let b = B::default();
    let stranger = deposit(&b, 1, stranger_principal(), 200_000, &aggregate_key());
    let minted_stranger = deposit(&b, 2, stranger_principal(), 300_000, &aggregate_key());
    let allowed = deposit(&b, 3, allowed_principal(), 400_000, &aggregate_key());
    let spent = deposit(&b, 4, stranger_principal(), 500_000, &aggregate_key());
    let request = peg_out(9, 5, ALLOWED_BTC, 50_000);
    let ids: Vec<Txid> = [&stranger, &minted_stranger, &allowed, &spent, &request]
        .iter()
        .map(|o| o.txid())
        .collect();
    let w = world(
        10,
        vec![(5, vec![stranger, minted_stranger, allowed, spent, request])],
    );
    let q = MemQueue::default();
    let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
    l.tick(&no_stop()).unwrap();
    // A mintable peg-in is minted, never refunded.
    assert_eq!(q.state(&ids[2]), OpState::Done);
    assert!(refused(l.request_refund(&ids[2], "t", "w")).contains("only a rejected peg-in"));
    // Rejected but passing the rule now (e.g. given up after attempts).
    q.set(
        &ids[2],
        OpState::Rejected {
            reason: "gave up".into(),
        },
    );
    w.lock().unwrap().processed.remove(&ids[2]);
    assert!(refused(l.request_refund(&ids[2], "t", "w")).contains("passes the mint rule"));
    // Minted under its txid (a stolen Stacks key), at the tip: refused.
    w.lock().unwrap().processed.insert(ids[1]);
    w.lock().unwrap().not_final.insert(ids[1]);
    assert!(refused(l.request_refund(&ids[1], "t", "w")).contains("minted"));
    // Its output 1 spent: nothing to refund.
    b.lock().unwrap().spent.insert(OutPoint::new(ids[3], 1));
    assert!(refused(l.request_refund(&ids[3], "t", "w")).contains("output 1"));
    // A peg-out request is no peg-in.
    assert!(refused(l.request_refund(&ids[4], "t", "w")).contains("peg-out"));
    assert!(matches!(
        l.request_refund(&txid(99), "t", "w"),
        Err(Error::UnknownOp(_))
    ));
    // The one refundable peg-in is.
    l.request_refund(&ids[0], "t", "w").unwrap();
    assert_eq!(q.state(&ids[0]), OpState::RefundRequested);
    // A mint under its txid after the request, before broadcast: the loop
    // refuses to pay it back.
    w.lock().unwrap().processed.insert(ids[0]);
    run_ticks_refund(&mut l, 1);
    assert!(matches!(q.state(&ids[0]), OpState::Failed { reason } if reason.contains("minted")));
    assert!(b.lock().unwrap().broadcast.is_empty());
}

#[test]
fn a_peg_in_whose_output_1_is_spent_is_never_minted() {
    let b = B::default();
    let op = deposit(&b, 1, allowed_principal(), 200_000, &aggregate_key());
    let t = op.txid();
    b.lock().unwrap().spent.insert(OutPoint::new(t, 1));
    let w = world(10, vec![(5, vec![op])]);
    let q = MemQueue::default();
    let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
    run_ticks_refund(&mut l, 3);
    assert!(
        matches!(q.state(&t), OpState::Rejected { reason } if reason.contains("peg-in.spent")),
        "{}",
        q.state(&t)
    );
    assert!(w.lock().unwrap().signed.is_empty(), "no mint signed");
}

#[test]
fn a_sweep_of_an_old_key_never_spends_a_peg_in_neither_minted_nor_refunded() {
    let b = B::default();
    let old = SecretKey::from_slice(&[4; 32]).unwrap().public_key(&secp());
    let old_script = fee_wallet::peg_wallet_address(&old, Network::Regtest).script_pubkey();
    // Three peg-ins to the old key's address: one minted, one rejected
    // (owed: a refund may come), one pending; and a plain coin there.
    let minted = deposit(&b, 1, allowed_principal(), 300_000, &old);
    let rejected = deposit(&b, 2, stranger_principal(), 200_000, &old);
    let pending = deposit(&b, 3, allowed_principal(), 100_000, &old);
    let ids: Vec<Txid> = [&minted, &rejected, &pending]
        .iter()
        .map(|o| o.txid())
        .collect();
    let w = world(10, vec![(5, vec![minted, rejected, pending])]);
    let q = MemQueue::default();
    let coin = |t: &Txid, sats: u64| Utxo {
        outpoint: OutPoint::new(*t, 1),
        txout: TxOut {
            value: Amount::from_sat(sats),
            script_pubkey: old_script.clone(),
        },
        confirmations: 6,
    };
    let plain = Utxo {
        outpoint: OutPoint::new(txid(77), 0),
        txout: TxOut {
            value: Amount::from_sat(50_000),
            script_pubkey: old_script.clone(),
        },
        confirmations: 6,
    };
    {
        let mut g = b.lock().unwrap();
        g.tip = 10;
        g.unspent_at.insert(
            old_script.clone(),
            vec![
                coin(&ids[0], 300_000),
                coin(&ids[1], 200_000),
                coin(&ids[2], 100_000),
                plain.clone(),
            ],
        );
    }
    let mut l = refund_loop(&w, &b, &q, vec![old, aggregate_key()]);
    l.tick(&no_stop()).unwrap();
    q.set(&ids[0], OpState::Done);
    assert!(matches!(q.state(&ids[1]), OpState::Rejected { .. }));
    q.set(&ids[2], OpState::Accepted);
    let swept = l.sweep_old_keys().unwrap();
    assert_eq!(swept.len(), 1);
    let g = b.lock().unwrap();
    let sweep = g.broadcast.last().unwrap();
    let spent: HashSet<OutPoint> = sweep.input.iter().map(|i| i.previous_output).collect();
    assert_eq!(
        spent,
        HashSet::from([OutPoint::new(ids[0], 1), plain.outpoint]),
        "only the minted peg-in's coin and the plain coin"
    );
}

#[test]
fn a_peg_in_to_an_old_key_is_refunded_with_that_key() {
    let b = B::default();
    let old = SecretKey::from_slice(&[4; 32]).unwrap().public_key(&secp());
    let op = deposit(&b, 1, stranger_principal(), 150_000, &old);
    let t = op.txid();
    let w = world(10, vec![(5, vec![op])]);
    let q = MemQueue::default();
    let mut l = refund_loop(&w, &b, &q, vec![old, aggregate_key()]);
    l.tick(&no_stop()).unwrap();
    assert!(matches!(q.state(&t), OpState::Rejected { .. }));
    l.request_refund(&t, "test", "an old key's peg-in").unwrap();
    let state = l.process_one(&t, &no_stop()).unwrap();
    assert!(matches!(state, OpState::RefundBroadcast { .. }), "{state}");
    let g = b.lock().unwrap();
    // Finalized only if the old key's signature passes consensus.
    assert_eq!(g.broadcast.len(), 1);
    assert_eq!(g.broadcast[0].output[0].script_pubkey, depositor_script());
}

/// Killed right after the refund is stored: the restart broadcasts the
/// stored bytes and signs nothing. Killed right before it is stored: the
/// restart signs again, the same transaction (same coin, script and rate),
/// and one refund is broadcast.
#[test]
fn a_crash_around_storing_the_signed_refund_neither_loses_it_nor_pays_twice() {
    for (point, signs) in [
        (CrashPoint::AfterStoring("refund_signed"), 1),
        (CrashPoint::BeforeStoring("refund_signed"), 2),
    ] {
        let b = B::default();
        let op = deposit(&b, 1, stranger_principal(), 200_000, &aggregate_key());
        let t = op.txid();
        let w = world(10, vec![(5, vec![op])]);
        let q = MemQueue::default();
        let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
        l.tick(&no_stop()).unwrap();
        l.request_refund(&t, "test", "crash").unwrap();
        l.set_crash_point(Some(point));
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = l.process_one(&t, &no_stop());
        }));
        assert!(crashed.is_err(), "{point:?}: the injected crash");
        assert!(
            b.lock().unwrap().broadcast.is_empty(),
            "nothing left before the crash"
        );
        drop(l);
        let mut l = refund_loop(&w, &b, &q, vec![aggregate_key()]);
        run_ticks_refund(&mut l, 3);
        assert!(
            matches!(q.state(&t), OpState::RefundBroadcast { .. }),
            "{point:?}: {}",
            q.state(&t)
        );
        assert_eq!(w.lock().unwrap().sign_calls, signs, "{point:?}");
        let g = b.lock().unwrap();
        assert_eq!(g.broadcast.len(), 1, "{point:?}: one refund");
        let payloads = &w.lock().unwrap().sign_payloads;
        let txids: Vec<Txid> = payloads
            .iter()
            .map(|p| match peg_rules::SignPayload::decode(p).unwrap() {
                peg_rules::SignPayload::Refund { tx, .. } => tx.compute_txid(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            txids.iter().all(|x| *x == g.broadcast[0].compute_txid()),
            "{point:?}: the same refund each time"
        );
    }
}
