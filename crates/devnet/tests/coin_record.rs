//! `peg-coins`' record against the bitcoind emulator over HTTP and, when
//! `BITCOIND_EXE` is set, a real Bitcoin Core fed the emulator's chain: after
//! every block of a scenario with deposits, our own payouts, reorgs and a
//! conflicting spend, the record's confirmed coins are what `scantxoutset`
//! answers.

// A test without a real node says so on stderr.
#![allow(clippy::print_stderr)]

use std::time::Duration;

use bitcoin::{absolute, transaction, Amount, ScriptBuf, Transaction, TxIn, TxOut, Txid};
use bitcoin_node_client::{Auth, BitcoinNode, UreqBitcoinNode, Utxo};
use devnet::bitcoind::{Outcome, RealBitcoind};
use devnet::{BitcoinEmulator, BitcoinState, User};
use peg_coins::{CoinRecord, Include, SyncReport};
use serde_json::json;

fn burn() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

/// A payout by the peg wallet: `coin` to `to` (`sats`), change back, signed.
fn payout(peg: &User, coin: &Utxo, to: &User, sats: u64) -> Transaction {
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin.outpoint,
            ..TxIn::default()
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(sats),
                script_pubkey: to.btc.script_pubkey(),
            },
            TxOut {
                value: coin.txout.value - Amount::from_sat(sats + 2_000),
                script_pubkey: peg.btc.script_pubkey(),
            },
        ],
    };
    peg.sign_input(&mut tx, 0, &coin.txout);
    tx
}

fn sorted(mut v: Vec<Utxo>) -> Vec<Utxo> {
    v.sort_by_key(|u| u.outpoint);
    v
}

/// Syncs until caught up; checks the record follows the node's tip and
/// that its confirmed coins are `scantxoutset`'s. Returns what changed.
fn check(r: &mut CoinRecord, node: &impl BitcoinNode, peg: &ScriptBuf, when: &str) -> SyncReport {
    let mut all = SyncReport::default();
    for _ in 0..100 {
        let rep = r.sync(node).unwrap();
        all.blocks_applied += rep.blocks_applied;
        all.blocks_rolled_back += rep.blocks_rolled_back;
        all.own_spends_dropped.extend(rep.own_spends_dropped);
        if rep.caught_up {
            break;
        }
    }
    let tip = node.get_block_count().unwrap();
    assert_eq!(
        r.synced_tip().unwrap(),
        Some((tip, node.get_block_hash(tip).unwrap())),
        "{when}: tip"
    );
    let ours = sorted(r.unspent(peg, Include::Confirmed).unwrap());
    let theirs = sorted(node.list_unspent(peg).unwrap());
    assert_eq!(ours, theirs, "{when}");
    all
}

fn record(dir: &tempfile::TempDir, peg: &User) -> CoinRecord {
    let mut r = CoinRecord::open(&dir.path().join("coins.sqlite"), 1).unwrap();
    r.watch(&peg.btc.script_pubkey(), 1).unwrap();
    r
}

#[test]
fn the_record_is_scantxoutset_after_every_block_on_the_emulator() {
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    let peg = User::new("peg", 7);
    let bob = User::new("bob", 2);
    alice.fund(&mut b, &burn());
    alice.fund(&mut b, &burn());
    let em = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let node = UreqBitcoinNode::new(&em.url(), Auth::None, Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let mut r = record(&dir, &peg);
    let p = peg.btc.script_pubkey();
    let mine = |n: usize| {
        em.with(|b| {
            for _ in 0..n {
                b.mine(&burn());
            }
        })
    };
    check(&mut r, &node, &p, "funded");

    // Deposits.
    em.with(|b| {
        for sats in [100_000, 200_000, 300_000] {
            alice.pay(b, &p, Amount::from_sat(sats)).unwrap();
        }
    });
    check(&mut r, &node, &p, "deposits in the mempool");
    mine(1);
    check(&mut r, &node, &p, "deposits mined");
    assert_eq!(r.unspent(&p, Include::Confirmed).unwrap().len(), 3);

    // Our payout: recorded, broadcast, mined.
    let coins = r.unspent(&p, Include::Confirmed).unwrap();
    let s1 = payout(&peg, &coins[0], &bob, 50_000);
    r.record_own_spend(&s1).unwrap();
    node.send_raw_transaction(&s1).unwrap();
    check(&mut r, &node, &p, "payout in the mempool");
    assert_eq!(r.unspent(&p, Include::OwnUnconfirmed).unwrap().len(), 3);
    mine(1);
    check(&mut r, &node, &p, "payout mined");
    assert!(r.pending_own_spends().unwrap().is_empty());

    // A 2-block reorg takes a deposit out; it comes back one block later.
    let d4 = em.with(|b| alice.pay(b, &p, Amount::from_sat(400_000)).unwrap());
    mine(1);
    check(&mut r, &node, &p, "d4 mined");
    mine(1);
    check(&mut r, &node, &p, "one more");
    em.with(|b| {
        b.invalidate_tip();
        b.invalidate_tip();
    });
    let rep = check(&mut r, &node, &p, "two blocks invalidated");
    assert_eq!(rep.blocks_rolled_back, 2);
    em.with(|b| {
        let pending = b.take_mempool();
        b.mine(&burn());
        b.restore_mempool(pending);
    });
    check(&mut r, &node, &p, "a block without d4");
    mine(1);
    check(&mut r, &node, &p, "d4 again");
    mine(1);
    check(&mut r, &node, &p, "one more");
    let d4_coin = r
        .unspent(&p, Include::Confirmed)
        .unwrap()
        .into_iter()
        .find(|u| u.outpoint.txid == d4)
        .expect("d4 is back");
    assert_eq!(d4_coin.confirmations, 2);

    // A reorg drops our mined payout and the node forgets it: the record
    // keeps its coin reserved and lists it for rebroadcast.
    let coin = r.unspent(&p, Include::Confirmed).unwrap()[0].clone();
    let s2 = payout(&peg, &coin, &bob, 60_000);
    r.record_own_spend(&s2).unwrap();
    node.send_raw_transaction(&s2).unwrap();
    mine(1);
    check(&mut r, &node, &p, "s2 mined");
    em.with(|b| {
        b.invalidate_tip();
        b.take_mempool();
        b.mine(&burn());
        b.mine(&burn());
    });
    let rep = r.sync(&node).unwrap();
    assert_eq!(rep.blocks_rolled_back, 1);
    assert_eq!(r.pending_own_spends().unwrap(), vec![s2.clone()]);
    assert!(
        !r.unspent(&p, Include::OwnUnconfirmed)
            .unwrap()
            .iter()
            .any(|u| u.outpoint == coin.outpoint),
        "s2's input stays reserved"
    );
    for tx in r.pending_own_spends().unwrap() {
        node.send_raw_transaction(&tx).unwrap();
    }
    check(&mut r, &node, &p, "s2 rebroadcast");
    mine(1);
    check(&mut r, &node, &p, "s2 mined again");
    assert!(r.pending_own_spends().unwrap().is_empty());

    // Our payout never broadcast; another spend of its coin confirms.
    let coin = r.unspent(&p, Include::Confirmed).unwrap()[0].clone();
    let s3 = payout(&peg, &coin, &bob, 70_000);
    r.record_own_spend(&s3).unwrap();
    let other = payout(&peg, &coin, &alice, 80_000);
    node.send_raw_transaction(&other).unwrap();
    mine(1);
    let rep = check(&mut r, &node, &p, "a conflicting spend mined");
    assert_eq!(rep.own_spends_dropped, vec![s3.compute_txid()]);
    assert!(r.pending_own_spends().unwrap().is_empty());
    assert!(r.unspent(&p, Include::Confirmed).unwrap().len() >= 4);
}

fn real_node() -> Option<RealBitcoind> {
    match RealBitcoind::start() {
        Ok(Outcome::Started(n)) => Some(n),
        Ok(Outcome::Skipped(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_record_is_scantxoutset_on_bitcoin_core_including_after_invalidateblock() {
    let Some(core) = real_node() else { return };
    let client = core.client();
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    let peg = User::new("peg", 7);
    let bob = User::new("bob", 2);
    let p = peg.btc.script_pubkey();
    alice.fund(&mut b, &burn());
    let dir = tempfile::tempdir().unwrap();
    let mut r = record(&dir, &peg);
    let mut fed = 1;
    let feed = |b: &BitcoinState, fed: &mut u64| {
        core.submit_blocks(b, *fed).unwrap();
        *fed = b.height() + 1;
    };
    feed(&b, &mut fed);
    check(&mut r, &client, &p, "funded");
    for sats in [100_000, 200_000, 300_000] {
        alice.pay(&mut b, &p, Amount::from_sat(sats)).unwrap();
    }
    b.mine(&burn());
    feed(&b, &mut fed);
    check(&mut r, &client, &p, "deposits");
    let coin = r.unspent(&p, Include::Confirmed).unwrap()[0].clone();
    b.send(payout(&peg, &coin, &bob, 50_000)).unwrap();
    b.mine(&burn());
    feed(&b, &mut fed);
    check(&mut r, &client, &p, "a payout");
    let d4 = alice.pay(&mut b, &p, Amount::from_sat(400_000)).unwrap();
    b.mine(&burn());
    b.mine(&burn());
    feed(&b, &mut fed);
    check(&mut r, &client, &p, "d4");
    assert_eq!(r.unspent(&p, Include::Confirmed).unwrap().len(), 4);

    // Core invalidates the top two blocks.
    let top2 = client.get_block_hash(b.height() - 1).unwrap();
    core.call("invalidateblock", json!([top2.to_string()]))
        .unwrap();
    let rep = check(&mut r, &client, &p, "invalidateblock");
    assert_eq!(rep.blocks_rolled_back, 2);
    assert!(r
        .unspent(&p, Include::Confirmed)
        .unwrap()
        .iter()
        .all(|u| u.outpoint.txid != d4));

    // The emulator's chain takes the same fork; d4 one block later.
    b.invalidate_tip();
    b.invalidate_tip();
    let pending = b.take_mempool();
    b.mine(&burn());
    b.restore_mempool(pending);
    b.mine(&burn());
    b.mine(&burn());
    fed = b.height() - 2;
    feed(&b, &mut fed);
    check(&mut r, &client, &p, "the other branch");
    let back: Vec<Txid> = r
        .unspent(&p, Include::Confirmed)
        .unwrap()
        .iter()
        .map(|u| u.outpoint.txid)
        .collect();
    assert!(back.contains(&d4));
}
