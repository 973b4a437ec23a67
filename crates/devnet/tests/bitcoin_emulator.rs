//! The bitcoind emulator refuses what bitcoind refuses, with its error codes,
//! and follows reorgs as bitcoind does.

use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut};
use devnet::bitcoin::MEMPOOL_CHAIN_LIMIT;
use devnet::{BitcoinState, User};

fn burn() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

fn funded() -> (BitcoinState, User) {
    let mut b = BitcoinState::new();
    let mut u = User::new("u", 1);
    u.fund(&mut b, &burn());
    (b, u)
}

/// A transaction spending `prev` (the user's) to `outputs`, signed.
fn spending(u: &User, prev: (OutPoint, TxOut), outputs: Vec<TxOut>) -> Transaction {
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev.0,
            ..TxIn::default()
        }],
        output: outputs,
    };
    u.sign_input(&mut tx, 0, &prev.1);
    tx
}

fn to(u: &User, sats: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: u.btc.script_pubkey(),
    }
}

#[test]
fn a_valid_payment_is_accepted_and_mined() {
    let (mut b, mut u) = funded();
    let other = User::new("o", 2);
    let txid = u
        .pay(&mut b, &other.btc.script_pubkey(), Amount::from_sat(10_000))
        .unwrap();
    assert_eq!(
        b.locate(&txid).map(|(_, h)| h),
        Some(None),
        "in the mempool"
    );
    b.mine(&burn());
    assert_eq!(b.locate(&txid).map(|(_, h)| h), Some(Some(b.height())));
    assert_eq!(b.unspent(&other.btc.script_pubkey()).len(), 1);
}

#[test]
fn refusals_carry_bitcoinds_codes_and_reasons() {
    let (mut b, u) = funded();
    let coin = u.coins()[0].clone();
    let value = coin.1.value.to_sat();

    // Outputs above inputs.
    let e = b
        .send(spending(&u, coin.clone(), vec![to(&u, value + 1)]))
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-26, "bad-txns-in-belowout"));

    // No fee at all: under the minimum relay fee.
    let e = b
        .send(spending(&u, coin.clone(), vec![to(&u, value)]))
        .unwrap_err();
    assert_eq!(e.code, -26);
    assert!(
        e.message.starts_with("min relay fee not met"),
        "{}",
        e.message
    );

    // Dust output.
    let e = b
        .send(spending(
            &u,
            coin.clone(),
            vec![to(&u, value - 10_000), to(&u, 100)],
        ))
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-26, "dust"));

    // A signature by someone else.
    let mut forged = spending(&u, coin.clone(), vec![to(&u, value - 10_000)]);
    User::new("m", 9).sign_input(&mut forged, 0, &coin.1);
    let e = b.send(forged).unwrap_err();
    assert_eq!(e.code, -26);
    assert!(
        e.message.starts_with("mempool-script-verify-flag-failed"),
        "{}",
        e.message
    );

    // A missing input.
    let mut missing = coin.clone();
    missing.0.vout = 7;
    let e = b
        .send(spending(&u, missing, vec![to(&u, 10_000)]))
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-25, "bad-txns-inputs-missingorspent")
    );

    // A double spend of a mempool transaction's input paying less fee is
    // refused; one paying more replaces it (full RBF, as Core since v28).
    let replaced = spending(&u, coin.clone(), vec![to(&u, value - 10_000)]);
    b.send(replaced.clone()).unwrap();
    let e = b
        .send(spending(&u, coin.clone(), vec![to(&u, value - 5_000)]))
        .unwrap_err();
    assert_eq!(e.code, -26);
    assert!(
        e.message
            .starts_with("insufficient fee, rejecting replacement"),
        "{}",
        e.message
    );
    // More fee in total but not the relay fee of its own size on top.
    let e = b
        .send(spending(&u, coin.clone(), vec![to(&u, value - 10_001)]))
        .unwrap_err();
    assert!(
        e.message.contains("not enough additional fees to relay"),
        "{}",
        e.message
    );
    let first = spending(&u, coin.clone(), vec![to(&u, value - 20_000)]);
    b.send(first.clone()).unwrap();
    assert_eq!(b.locate(&replaced.compute_txid()), None, "evicted");
    assert!(b.locate(&first.compute_txid()).is_some());

    // Once mined: the input is spent, the transaction itself is known.
    b.mine(&burn());
    let e = b
        .send(spending(&u, coin, vec![to(&u, value - 30_000)]))
        .unwrap_err();
    assert_eq!(e.code, -25);
    let e = b.send(first).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-27, "Transaction outputs already in utxo set")
    );
}

#[test]
fn an_immature_coinbase_cannot_be_spent() {
    let mut b = BitcoinState::new();
    let u = User::new("u", 1);
    b.mine(&u.btc.script_pubkey());
    let cb = b.block(b.height()).unwrap().txdata[0].clone();
    let coin = (OutPoint::new(cb.compute_txid(), 0), cb.output[0].clone());
    for _ in 0..98 {
        b.mine(&burn());
    }
    let tx = spending(&u, coin, vec![to(&u, 49_0000_0000)]);
    let e = b.send(tx.clone()).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-26, "bad-txns-premature-spend-of-coinbase")
    );
    b.mine(&burn());
    b.send(tx).unwrap();
}

#[test]
fn unconfirmed_chains_stop_at_bitcoinds_package_limit() {
    let (mut b, mut u) = funded();
    let other = User::new("o", 2).btc.script_pubkey();
    // Each payment spends the previous one's change: a chain in the mempool.
    for _ in 0..MEMPOOL_CHAIN_LIMIT {
        u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap();
    }
    let e = u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap_err();
    assert_eq!(e.code, -26);
    assert!(
        e.message.starts_with("too-long-mempool-chain"),
        "{}",
        e.message
    );
    // The refused payment did not cost the user its coin; a block clears it.
    b.mine(&burn());
    u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap();
}

#[test]
fn one_unconfirmed_parent_has_at_most_24_children() {
    let (mut b, u) = funded();
    let coin = u.coins()[0].clone();
    let fan: Vec<TxOut> = (0..30).map(|_| to(&u, 100_000)).collect();
    let parent = spending(&u, coin, fan);
    let pid = b.send(parent.clone()).unwrap();
    for v in 0..30u32 {
        let prev = (OutPoint::new(pid, v), parent.output[v as usize].clone());
        let r = b.send(spending(&u, prev, vec![to(&u, 90_000)]));
        if (v as usize) < MEMPOOL_CHAIN_LIMIT - 1 {
            r.unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(e.message.contains("too many descendants"), "{}", e.message);
        }
    }
}

#[test]
fn invalidating_the_tip_returns_its_transactions_to_the_mempool() {
    let (mut b, mut u) = funded();
    let other = User::new("o", 2).btc.script_pubkey();
    let txid = u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap();
    let h = b.height();
    let old_tip = b.mine(&burn());
    b.invalidate_tip();
    assert_eq!(b.height(), h);
    assert_eq!(
        b.locate(&txid).map(|(_, h)| h),
        Some(None),
        "back in the mempool"
    );
    assert!(
        b.unspent(&other).is_empty(),
        "its outputs left the UTXO set"
    );
    // A competing block (different coinbase) mines it again.
    let new_tip = b.mine(&u.btc.script_pubkey());
    assert_ne!(new_tip, old_tip);
    assert_eq!(b.locate(&txid).map(|(_, h)| h), Some(Some(h + 1)));
    assert_eq!(b.unspent(&other).len(), 1);
}

#[test]
fn generatetoaddress_mines_to_a_regtest_address_over_json_rpc() {
    let em = devnet::BitcoinEmulator::start("127.0.0.1:0", BitcoinState::new()).unwrap();
    let u = User::new("u", 1);
    let call = |params: serde_json::Value| -> serde_json::Value {
        // bitcoind answers errors with HTTP 500 and a JSON body.
        ureq::post(&em.url())
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(serde_json::json!({"jsonrpc": "1.0", "id": 1, "method": "generatetoaddress", "params": params}))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let r = call(serde_json::json!([3, u.btc.to_string()]));
    assert_eq!(r["result"].as_array().map(Vec::len), Some(3), "{r}");
    em.with(|b| {
        assert_eq!(b.height(), 3);
        assert_eq!(b.unspent(&u.btc.script_pubkey()).len(), 3);
    });
    // A mainnet address is refused as bitcoind refuses it.
    let r = call(serde_json::json!([
        1,
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    ]));
    assert_eq!(r["error"]["code"], -5, "{r}");
    em.with(|b| assert_eq!(b.height(), 3));
}

#[test]
fn blocks_follow_cores_consensus_rules_for_regtest() {
    use devnet::bitcoin::{subsidy, BLOCK_VERSION, REGTEST_BITS};
    let (mut b, mut u) = funded();
    assert_eq!(
        b.block(0).unwrap().block_hash().to_string(),
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
        "regtest's genesis"
    );
    let other = User::new("o", 2).btc.script_pubkey();
    // Run past the first halving (150) with a payment in most blocks.
    while b.height() < 160 {
        u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap();
        b.mine(&burn());
    }
    let mut fees_seen = 0;
    for h in 1..=b.height() {
        let block = b.block(h).unwrap();
        let prev = b.block(h - 1).unwrap();
        assert_eq!(block.header.version.to_consensus(), BLOCK_VERSION);
        assert_eq!(block.header.bits.to_consensus(), REGTEST_BITS);
        assert_eq!(block.header.prev_blockhash, prev.block_hash());
        assert!(block.header.validate_pow(block.header.target()).is_ok());
        assert!(block.check_merkle_root(), "height {h}");
        assert!(block.check_witness_commitment(), "height {h}");
        // BIP34 as Core checks it: the scriptSig starts with `CScript() << h`
        // (OP_1..OP_16 for small heights, which rust-bitcoin's own
        // bip34_block_height does not read).
        let expect = bitcoin::script::Builder::new()
            .push_int(h as i64)
            .into_script();
        assert!(
            block.txdata[0].input[0]
                .script_sig
                .as_bytes()
                .starts_with(expect.as_bytes()),
            "BIP34 at {h}"
        );
        if h > 16 {
            assert_eq!(block.bip34_block_height().unwrap(), h);
        }
        assert!(
            block.header.time > b.median_time_past(h - 1),
            "BIP113 at {h}"
        );
        let cb = &block.txdata[0];
        assert!(
            (2..=100).contains(&cb.input[0].script_sig.len()),
            "coinbase scriptSig of 2 to 100 bytes at {h}"
        );
        assert_eq!(cb.lock_time.to_consensus_u32() as u64, h - 1);
        // The coinbase pays exactly the subsidy plus the fees.
        let fees: u64 = block.txdata[1..]
            .iter()
            .map(|t| {
                let value_in: u64 = t
                    .input
                    .iter()
                    .map(|i| {
                        let (prev, _) = b.locate(&i.previous_output.txid).unwrap();
                        prev.output[i.previous_output.vout as usize].value.to_sat()
                    })
                    .sum();
                value_in - t.output.iter().map(|o| o.value.to_sat()).sum::<u64>()
            })
            .sum();
        fees_seen += fees;
        let paid: u64 = cb.output.iter().map(|o| o.value.to_sat()).sum();
        assert_eq!(paid, subsidy(h).to_sat() + fees, "coinbase at {h}");
        // The last output is the witness commitment.
        let last = cb.output.last().unwrap().script_pubkey.as_bytes();
        assert_eq!(&last[..6], &[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]);
        assert_eq!(cb.input[0].witness.to_vec(), vec![vec![0u8; 32]]);
    }
    assert!(fees_seen > 0);
    assert_eq!(subsidy(149), Amount::from_sat(50_0000_0000));
    assert_eq!(subsidy(150), Amount::from_sat(25_0000_0000));
    assert_eq!(subsidy(300), Amount::from_sat(12_5000_0000));
    assert_eq!(subsidy(150 * 64), Amount::ZERO);
}

#[test]
fn transactions_not_final_for_the_next_block_wait() {
    let (mut b, u) = funded();
    let coin = u.coins()[0].clone();
    let value = coin.1.value.to_sat();
    // An absolute lock time at the next block's height is not final yet.
    let mut tx = spending(&u, coin.clone(), vec![to(&u, value - 10_000)]);
    tx.lock_time = absolute::LockTime::from_consensus(b.height() as u32 + 1);
    tx.input[0].sequence = bitcoin::Sequence::ENABLE_LOCKTIME_NO_RBF;
    u.sign_input(&mut tx, 0, &coin.1);
    assert_eq!(b.send(tx.clone()).unwrap_err().message, "non-final");
    b.mine(&burn());
    let txid = b.send(tx.clone()).unwrap();
    // A relative lock of 5 blocks on the coin that payment makes.
    b.mine(&burn());
    let coin_height = b.height();
    let coin = (OutPoint::new(txid, 0), tx.output[0].clone());
    let mut tx = spending(
        &u,
        coin.clone(),
        vec![to(&u, coin.1.value.to_sat() - 10_000)],
    );
    tx.input[0].sequence = bitcoin::Sequence::from_height(5);
    u.sign_input(&mut tx, 0, &coin.1);
    while b.height() + 1 < coin_height + 5 {
        assert_eq!(b.send(tx.clone()).unwrap_err().message, "non-BIP68-final");
        b.mine(&burn());
    }
    b.send(tx).unwrap();
}

/// The emulator's indexes (block hash → height, txid → place) follow a
/// reorg: the dropped block is stale (found, off the best chain), the
/// transaction it held is found in its new block, and height lookups
/// answer the new chain.
#[test]
fn lookups_by_hash_and_txid_follow_a_reorg_over_json_rpc() {
    let (mut b, mut u) = funded();
    let other = User::new("o", 2).btc.script_pubkey();
    let txid = u.pay(&mut b, &other, Amount::from_sat(10_000)).unwrap();
    let old_tip = b.mine(&burn());
    let h = b.height();
    b.invalidate_tip();
    let new_tip = b.mine(&u.btc.script_pubkey());
    let em = devnet::BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let call = |method: &str, params: serde_json::Value| -> serde_json::Value {
        ureq::post(&em.url())
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(
                serde_json::json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}),
            )
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let r = call("getblockhash", serde_json::json!([h]));
    assert_eq!(r["result"], new_tip.to_string(), "{r}");
    assert_eq!(
        call("getbestblockhash", serde_json::json!([]))["result"],
        new_tip.to_string()
    );
    let r = call("getblock", serde_json::json!([old_tip.to_string(), 1]));
    assert_eq!(
        r["result"]["confirmations"], -1,
        "the old tip is stale: {r}"
    );
    let r = call("getblock", serde_json::json!([new_tip.to_string(), 1]));
    assert_eq!(r["result"]["confirmations"], 1, "{r}");
    assert_eq!(r["result"]["height"], h, "{r}");
    let r = call(
        "getrawtransaction",
        serde_json::json!([txid.to_string(), 1]),
    );
    assert_eq!(r["result"]["blockhash"], new_tip.to_string(), "{r}");
    assert_eq!(r["result"]["confirmations"], 1, "{r}");
    let r = call(
        "getrawtransaction",
        serde_json::json!([txid.to_string(), 1, old_tip.to_string()]),
    );
    assert_eq!(r["result"]["in_active_chain"], false, "{r}");
    assert_eq!(r["result"]["confirmations"], 0, "{r}");
    let r = call(
        "getrawtransaction",
        serde_json::json!([txid.to_string(), 1, new_tip.to_string()]),
    );
    assert_eq!(r["result"]["in_active_chain"], true, "{r}");
    // The tip dropped again: its transaction is back in the mempool only.
    em.with(|b| b.invalidate_tip());
    let r = call(
        "getrawtransaction",
        serde_json::json!([txid.to_string(), 1]),
    );
    assert!(
        r["result"].get("blockhash").is_none(),
        "in the mempool: {r}"
    );
    let r = call("getblockhash", serde_json::json!([h]));
    assert_eq!(r["error"]["code"], -8, "{r}");
}
