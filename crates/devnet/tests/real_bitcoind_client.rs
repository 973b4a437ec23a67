//! The coordinator's bitcoind client (`bitcoin-node-client`) against a real
//! Bitcoin Core, and the same calls against the emulator fed the same
//! chain: every method works on Core and gives what the emulator gives.
//! Also the harness's stop and restart. Each test needs `BITCOIND_EXE`;
//! without it, it prints why it skipped and returns.

// A test without a real node says so on stderr (and what it measured).
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::{
    absolute, transaction, Amount, BlockHash, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Txid,
};
use bitcoin_node_client::{Auth, BitcoinNode, Error, MempoolAcceptance, UreqBitcoinNode};
use devnet::bitcoind::{Outcome, RealBitcoind};
use devnet::{BitcoinEmulator, BitcoinState, User};
use serde_json::json;

fn real_node(args: &[&str]) -> Option<RealBitcoind> {
    match RealBitcoind::start_with_args(args) {
        Ok(Outcome::Started(n)) => Some(n),
        Ok(Outcome::Skipped(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn burn() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

fn submit(node: &RealBitcoind, b: &BitcoinState) {
    node.submit_blocks(b, 1).unwrap();
}

/// A funded user with confirmed payments to `bob`, one pending payment
/// (sent to the emulator only).
fn chain() -> (BitcoinState, User, User, Txid, Txid) {
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    let bob = User::new("bob", 2);
    alice.fund(&mut b, &burn());
    let confirmed = alice
        .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(50_000))
        .unwrap();
    alice
        .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(60_000))
        .unwrap();
    b.mine(&burn());
    b.mine(&burn());
    let pending = alice
        .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(70_000))
        .unwrap();
    (b, alice, bob, confirmed, pending)
}

fn signed(by: &User, coin: &(OutPoint, TxOut), to: &User, fee: u64) -> Transaction {
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin.0,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: coin.1.value - Amount::from_sat(fee),
            script_pubkey: to.btc.script_pubkey(),
        }],
    };
    by.sign_input(&mut tx, 0, &coin.1);
    tx
}

#[test]
fn the_client_works_on_core_as_on_the_emulator() {
    let Some(node) = real_node(&[]) else { return };
    let (b, alice, bob, confirmed, pending) = chain();
    submit(&node, &b);
    let (pending_tx, _) = b.locate(&pending).unwrap();
    let spare = alice.coins().to_vec();
    let em = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let core = node.client();
    let emu = UreqBitcoinNode::new(&em.url(), Auth::None, Duration::from_secs(10));
    // Started with -txindex=1 (as the harness does), like the emulator.
    assert!(core.has_txindex().unwrap());
    assert!(emu.has_txindex().unwrap());
    assert_eq!(
        core.send_raw_transaction(&pending_tx).unwrap(),
        pending,
        "broadcast"
    );
    // Sent again while in the mempool: a success with the same txid.
    assert_eq!(core.send_raw_transaction(&pending_tx).unwrap(), pending);
    assert_eq!(emu.send_raw_transaction(&pending_tx).unwrap(), pending);

    let height = core.get_block_count().unwrap();
    assert_eq!(height, emu.get_block_count().unwrap());
    for h in [0, 1, 100, height] {
        let hash = core.get_block_hash(h).unwrap();
        assert_eq!(hash, emu.get_block_hash(h).unwrap());
        let block = core.get_block(&hash).unwrap();
        assert_eq!(block, emu.get_block(&hash).unwrap());
        assert_eq!(block.block_hash(), hash);
    }
    assert!(matches!(
        core.get_block_hash(height + 1),
        Err(Error::Rpc { code: -8, .. })
    ));
    let unknown = BlockHash::from_byte_array([1; 32]);
    assert!(matches!(
        core.get_block(&unknown),
        Err(Error::Rpc { code: -5, .. })
    ));

    // Transactions: confirmed, in the mempool, unknown; with a block hash.
    let c = core.get_raw_transaction(&confirmed).unwrap().unwrap();
    assert_eq!(c, emu.get_raw_transaction(&confirmed).unwrap().unwrap());
    assert_eq!(c.confirmations, 2);
    let block = c.block_hash.unwrap();
    assert_eq!(block, core.get_block_hash(height - 1).unwrap());
    let in_block = core
        .get_raw_transaction_in_block(&confirmed, &block)
        .unwrap()
        .unwrap();
    assert_eq!(in_block, c);
    assert_eq!(
        emu.get_raw_transaction_in_block(&confirmed, &block)
            .unwrap(),
        Some(c)
    );
    let genesis = core.get_block_hash(0).unwrap();
    for node in [&core, &emu] {
        assert_eq!(
            node.get_raw_transaction_in_block(&confirmed, &genesis)
                .unwrap(),
            None,
            "not in that block"
        );
        assert_eq!(
            node.get_raw_transaction_in_block(&confirmed, &unknown)
                .unwrap(),
            None,
            "unknown block"
        );
        assert_eq!(
            node.get_raw_transaction(&Txid::from_byte_array([9; 32]))
                .unwrap(),
            None
        );
    }
    let p = core.get_raw_transaction(&pending).unwrap().unwrap();
    assert_eq!((p.confirmations, p.block_hash), (0, None));
    assert_eq!(p, emu.get_raw_transaction(&pending).unwrap().unwrap());

    // Broadcast: a confirmed transaction again is a success; a forged one
    // is refused with -26 by both.
    let (confirmed_tx, _) = em.with(|b| b.locate(&confirmed)).unwrap();
    assert_eq!(core.send_raw_transaction(&confirmed_tx).unwrap(), confirmed);
    assert_eq!(emu.send_raw_transaction(&confirmed_tx).unwrap(), confirmed);
    let bob_coin = em.with(|b| b.unspent(&bob.btc.script_pubkey()))[0].clone();
    let bob_coin = (bob_coin.0, bob_coin.1);
    let forged = signed(&alice, &bob_coin, &alice, 5_000);
    for node in [&core, &emu] {
        assert!(matches!(
            node.send_raw_transaction(&forged),
            Err(Error::Rpc { code: -26, .. })
        ));
        assert!(matches!(
            node.test_mempool_accept(&forged).unwrap(),
            MempoolAcceptance::Rejected(_)
        ));
    }
    let honest = signed(&bob, &bob_coin, &alice, 5_000);
    assert_eq!(
        core.test_mempool_accept(&honest).unwrap(),
        MempoolAcceptance::Allowed
    );
    assert_eq!(
        emu.test_mempool_accept(&honest).unwrap(),
        MempoolAcceptance::Allowed
    );
    assert!(!spare.is_empty());

    // No fee data on a fresh regtest chain: no estimate (the emulator
    // answers a fixed rate, which the coordinator treats as an estimate).
    assert_eq!(core.estimate_smart_fee(6).unwrap(), None);

    // The peg wallet's view: scantxoutset sees confirmed coins only.
    let script = bob.btc.script_pubkey();
    let mut from_core = core.list_unspent(&script).unwrap();
    let mut from_emu = emu.list_unspent(&script).unwrap();
    from_core.sort_by_key(|u| u.outpoint);
    from_emu.sort_by_key(|u| u.outpoint);
    assert_eq!(from_core.len(), 2, "{from_core:?}");
    assert_eq!(from_core, from_emu);
    assert_eq!(
        from_core.iter().map(|u| u.amount()).sum::<Amount>(),
        Amount::from_sat(110_000)
    );
}

#[test]
fn without_txindex_only_the_block_hash_finds_a_confirmed_transaction() {
    let Some(node) = real_node(&["-txindex=0"]) else {
        return;
    };
    let (b, _, _, confirmed, _) = chain();
    submit(&node, &b);
    let core = node.client();
    // What the coordinator's start-up check reads.
    assert!(!core.has_txindex().unwrap());
    // Core without -txindex does not find it by txid alone ...
    assert_eq!(core.get_raw_transaction(&confirmed).unwrap(), None);
    // ... but does in its block.
    let block = core.get_block_hash(b.height() - 1).unwrap();
    let s = core
        .get_raw_transaction_in_block(&confirmed, &block)
        .unwrap()
        .unwrap();
    assert_eq!((s.confirmations, s.block_hash), (2, Some(block)));
}

#[test]
fn a_stopped_node_is_unreachable_and_comes_back_with_its_chain() {
    let Some(mut node) = real_node(&[]) else {
        return;
    };
    let to = User::new("miner", 3).btc.to_string();
    node.call("generatetoaddress", json!([3, to])).unwrap();
    let tip = node.client().get_block_hash(3).unwrap();
    let url = node.rpc_url();
    let runs = |n: &RealBitcoind| {
        std::fs::read_to_string(n.log_path())
            .unwrap()
            .matches("Bitcoin Core version")
            .count()
    };
    let before = runs(&node);
    assert!(before >= 1);
    let started = Instant::now();
    node.stop().unwrap();
    assert!(!node.is_running());
    let e = node.client().get_block_count().unwrap_err();
    assert!(e.is_transient(), "{e}");
    node.restart().unwrap();
    assert!(node.is_running());
    assert_eq!(node.rpc_url(), url);
    assert_eq!(node.client().get_block_count().unwrap(), 3);
    assert_eq!(node.client().get_block_hash(3).unwrap(), tip);
    eprintln!("stop and restart took {:?}", started.elapsed());
    // Both runs' output is kept in the log.
    assert!(runs(&node) > before, "{}", node.log_tail());
}

#[test]
fn gettxout_answers_on_the_emulator_as_on_core() {
    let Some(node) = real_node(&[]) else { return };
    let (b, _alice, bob, confirmed, pending) = chain();
    submit(&node, &b);
    let (pending_tx, _) = b.locate(&pending).unwrap();
    let (confirmed_tx, _) = b.locate(&confirmed).unwrap();
    let coinbase = b.block(1).unwrap().txdata[0].compute_txid();
    let em = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let core = node.client();
    let emu = UreqBitcoinNode::new(&em.url(), Auth::None, Duration::from_secs(10));
    core.send_raw_transaction(&pending_tx).unwrap();

    let to_bob = u32::try_from(
        confirmed_tx
            .output
            .iter()
            .position(|o| o.script_pubkey == bob.btc.script_pubkey())
            .unwrap(),
    )
    .unwrap();
    let unspent = OutPoint::new(confirmed, to_bob);
    let spent_in_block = confirmed_tx.input[0].previous_output;
    let spent_in_mempool = pending_tx.input[0].previous_output;
    let in_mempool = OutPoint::new(pending, 0);
    let unknown = OutPoint::new(Txid::from_byte_array([7; 32]), 0);
    let beyond = OutPoint::new(confirmed, 99);
    let from_coinbase = OutPoint::new(coinbase, 0);

    // The raw answers, field by field (the emulator leaves out `asm` and `desc`).
    for o in [
        unspent,
        spent_in_block,
        spent_in_mempool,
        in_mempool,
        unknown,
        beyond,
        from_coinbase,
    ] {
        for mempool in [true, false] {
            let params = json!([o.txid, o.vout, mempool]);
            let mut c = node.call("gettxout", params.clone()).unwrap();
            if let Some(spk) = c.get_mut("scriptPubKey").and_then(|s| s.as_object_mut()) {
                spk.remove("asm");
                spk.remove("desc");
            }
            let e = emu.call("gettxout", params).unwrap();
            assert_eq!(c, e, "gettxout {o} include_mempool={mempool}");
        }
    }
    // Without include_mempool, Core takes it as true.
    assert_eq!(
        node.call(
            "gettxout",
            json!([spent_in_mempool.txid, spent_in_mempool.vout])
        )
        .unwrap(),
        serde_json::Value::Null
    );
    assert_eq!(
        emu.call(
            "gettxout",
            json!([spent_in_mempool.txid, spent_in_mempool.vout])
        )
        .unwrap(),
        serde_json::Value::Null
    );

    // The typed answers.
    for n in [&core, &emu] {
        let u = n.get_tx_out(&unspent, true).unwrap().unwrap();
        assert_eq!(u.confirmations, 2);
        assert_eq!(u.txout, confirmed_tx.output[to_bob as usize]);
        assert_eq!(n.get_tx_out(&spent_in_block, false).unwrap(), None);
        assert_eq!(n.get_tx_out(&spent_in_mempool, true).unwrap(), None);
        assert!(n.get_tx_out(&spent_in_mempool, false).unwrap().is_some());
        let m = n.get_tx_out(&in_mempool, true).unwrap().unwrap();
        assert_eq!((m.confirmations, &m.txout), (0, &pending_tx.output[0]));
        assert_eq!(n.get_tx_out(&in_mempool, false).unwrap(), None);
        assert_eq!(n.get_tx_out(&unknown, true).unwrap(), None);
    }
    // Malformed parameters are refused alike.
    for params in [
        json!(["00", 0]),
        json!([confirmed, "0"]),
        json!([confirmed, 0, 1]),
    ] {
        let c = node.call("gettxout", params.clone()).unwrap_err();
        let e = emu.call("gettxout", params.clone()).unwrap_err();
        match (&c, &e) {
            (Error::Rpc { code: a, .. }, Error::Rpc { code: b, .. }) => {
                assert_eq!(a, b, "{params}: core {c}, emulator {e}")
            }
            _ => panic!("{params}: core {c}, emulator {e}"),
        }
    }
}
