//! The bitcoind emulator against a real Bitcoin Core (regtest): every block
//! it mines is accepted by Core, and it answers RPC as Core does. Each test
//! needs `BITCOIND_EXE`; without it, it prints why it skipped and returns.

// A test without a real node says so on stderr (and what it measured).
#![allow(clippy::print_stderr)]

use std::time::Instant;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash as _;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    absolute, transaction, Address, Amount, Network, OutPoint, ScriptBuf, Transaction, TxIn, TxOut,
    Txid, Witness,
};
use devnet::bitcoind::{Outcome, RealBitcoind};
use devnet::{BitcoinEmulator, BitcoinState, User};
use serde_json::{json, Value as Json};

const MAGIC: [u8; 2] = *b"T2";

/// The real node, or `None` (printed) when `BITCOIND_EXE` is unset. A set
/// variable naming a missing file, or a node that does not start, fails.
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

fn burn() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

/// A taproot key (BIP86 tweak, no script tree) that spends by key path.
struct TaprootKey {
    keypair: Keypair,
    address: Address,
}

impl TaprootKey {
    fn new(seed: u8) -> Self {
        let secp = Secp256k1::new();
        let keypair = Keypair::from_secret_key(&secp, &SecretKey::from_slice(&[seed; 32]).unwrap());
        let (xonly, _) = keypair.x_only_public_key();
        TaprootKey {
            keypair,
            address: Address::p2tr(&secp, xonly, None, Network::Regtest),
        }
    }

    /// Spends `prev` (paying this key) to `to`, minus `fee`, signed.
    fn spend(&self, prev: (OutPoint, TxOut), to: &ScriptBuf, fee: Amount) -> Transaction {
        let secp = Secp256k1::new();
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: prev.0,
                ..TxIn::default()
            }],
            output: vec![TxOut {
                value: prev.1.value - fee,
                script_pubkey: to.clone(),
            }],
        };
        let h = SighashCache::new(&tx)
            .taproot_key_spend_signature_hash(0, &Prevouts::All(&[prev.1]), TapSighashType::Default)
            .unwrap();
        let tweaked = self.keypair.tap_tweak(&secp, None).to_keypair();
        let sig = secp.sign_schnorr(&Message::from_digest(h.to_byte_array()), &tweaked);
        tx.input[0].witness = Witness::from_slice(&[sig.as_ref()]);
        tx
    }
}

/// The output `txid:vout` in the emulator's mempool or chain.
fn output(b: &BitcoinState, txid: Txid, vout: u32) -> (OutPoint, TxOut) {
    let (tx, _) = b.locate(&txid).expect("known transaction");
    (OutPoint::new(txid, vout), tx.output[vout as usize].clone())
}

/// Submits the emulator's best-chain blocks `from..=tip` to Core in order;
/// each must be accepted (`null`).
fn submit(node: &RealBitcoind, b: &BitcoinState, from: u64) {
    node.submit_blocks(b, from).unwrap();
}

/// A devnet-like chain: two users funded by coinbases (over 200 blocks, so
/// past regtest's first halving at 150), P2WPKH payments, a taproot peg
/// wallet receiving peg-ins and a transfer and spending by key path, a
/// peg-out request, an unconfirmed parent and child in one block.
fn devnet_traffic(b: &mut BitcoinState) -> (User, User, TaprootKey) {
    let mut alice = User::new("alice", 1);
    let mut bob = User::new("bob", 2);
    alice.fund(b, &burn());
    bob.fund(b, &burn());
    assert!(b.height() > 150);
    let peg = TaprootKey::new(7);
    let alice_stx = alice.stx.clone();
    alice
        .peg_in(
            b,
            MAGIC,
            &peg.address,
            &alice_stx,
            Amount::from_sat(2_000_000),
        )
        .unwrap();
    let bob_stx = bob.stx.clone();
    bob.peg_in(
        b,
        MAGIC,
        &peg.address,
        &bob_stx,
        Amount::from_sat(3_000_000),
    )
    .unwrap();
    let to_peg = alice
        .pay(b, &peg.address.script_pubkey(), Amount::from_sat(5_000_000))
        .unwrap();
    bob.pay(b, &alice.btc.script_pubkey(), Amount::from_sat(70_000))
        .unwrap();
    b.mine(&bob.btc.script_pubkey());
    // The peg wallet spends by key path (a fulfilment-like payment) ...
    let spend = peg.spend(
        output(b, to_peg, 0),
        &bob.btc.script_pubkey(),
        Amount::from_sat(2_000),
    );
    let spend_id = b.send(spend).unwrap();
    // ... and its output is spent again in the same block (a chain).
    let child = peg_child(b, spend_id, &bob);
    b.send(child).unwrap();
    alice
        .peg_out(
            b,
            MAGIC,
            &peg.address,
            Amount::from_sat(500_000),
            Amount::from_sat(10_000),
        )
        .unwrap();
    b.mine(&alice.btc.script_pubkey());
    // The peg wallet fulfils the request as the coordinator does.
    let fulfilment = peg.fulfil(b, b.height());
    b.send(fulfilment).unwrap();
    b.mine(&burn());
    (alice, bob, peg)
}

impl TaprootKey {
    /// The fulfilment of the peg-out request mined at `height`, built by
    /// the coordinator's wallet (`fee_wallet::PegWallet`) and signed.
    fn fulfil(&self, b: &BitcoinState, height: u64) -> Transaction {
        use fee_wallet::BitcoinWallet as _;
        let block = b.block(height).unwrap();
        let (ops, _) =
            peg_ops::wire::parse_block(block, peg_ops::BurnHeight(height), MAGIC, Network::Regtest);
        let op = ops
            .into_iter()
            .find_map(|o| match o {
                peg_ops::PegOp::PegOutRequest(r) => Some(r),
                peg_ops::PegOp::PegIn(_) => None,
            })
            .expect("a peg-out request in that block");
        let utxos = b
            .unspent(&self.address.script_pubkey())
            .into_iter()
            .map(|(outpoint, txout, h)| bitcoin_node_client::Utxo {
                outpoint,
                txout,
                confirmations: (b.height() + 1 - h) as u32,
            })
            .collect();
        let wallet = fee_wallet::PegWallet::new(
            Network::Regtest,
            MAGIC,
            fee_wallet::BitcoinFeePolicy {
                floor: bitcoin::FeeRate::from_sat_per_vb_u32(2),
                cap: bitcoin::FeeRate::from_sat_per_vb_u32(100),
                subsidy: Amount::ZERO,
            },
        );
        let secp = Secp256k1::new();
        let unsigned = wallet
            .build_fulfillment(
                &op,
                &self.keypair.public_key(),
                &fee_wallet::FulfillmentInputs {
                    utxos,
                    fee_rate: None,
                    stacks_chain_tip: [7; 32],
                    reserved: vec![],
                },
            )
            .unwrap();
        let tweaked = self.keypair.tap_tweak(&secp, None).to_keypair();
        let sigs: Vec<_> = unsigned
            .sighashes
            .iter()
            .map(|h| secp.sign_schnorr(&Message::from_digest(*h), &tweaked))
            .collect();
        wallet.finalize_fulfillment(&unsigned, &sigs).unwrap()
    }
}

/// Bob spends the P2WPKH output 0 of `parent` (unconfirmed) back to himself.
fn peg_child(b: &BitcoinState, parent: Txid, bob: &User) -> Transaction {
    let prev = output(b, parent, 0);
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev.0,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: prev.1.value - Amount::from_sat(1_000),
            script_pubkey: bob.btc.script_pubkey(),
        }],
    };
    bob.sign_input(&mut tx, 0, &prev.1);
    tx
}

#[test]
fn core_accepts_every_block_of_a_devnet_chain_through_a_halving_and_a_reorg() {
    let Some(node) = real_node() else { return };
    let started = Instant::now();
    let mut b = BitcoinState::new();
    let genesis = node.call("getblockhash", json!([0])).unwrap();
    assert_eq!(genesis, json!(b.block(0).unwrap().block_hash().to_string()));
    assert_eq!(
        genesis,
        json!("0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")
    );

    let (mut alice, bob, peg) = devnet_traffic(&mut b);
    submit(&node, &b, 1);
    // Past the halving, the coinbase pays 25 BTC plus the block's fees.
    let tip = b.block(b.height()).unwrap();
    assert!(tip.txdata.len() > 1);
    let fees: Amount = tip.txdata[1..]
        .iter()
        .map(|t| {
            let v = node
                .call("getrawtransaction", json!([t.compute_txid(), 2]))
                .unwrap();
            Amount::from_btc(v["fee"].as_f64().unwrap()).unwrap()
        })
        .sum();
    assert!(fees > Amount::ZERO);
    assert_eq!(
        tip.txdata[0].output[0].value,
        Amount::from_sat(25 * 100_000_000) + fees
    );

    // More traffic in the mempool, then a reorg: the two top blocks are
    // replaced by three others (Core is told to invalidate the same block).
    alice
        .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(40_000))
        .unwrap();
    b.mine(&burn());
    let alice_stx = alice.stx.clone();
    alice
        .peg_in(
            &mut b,
            MAGIC,
            &peg.address,
            &alice_stx,
            Amount::from_sat(1_000_000),
        )
        .unwrap();
    b.mine(&burn());
    submit(&node, &b, b.height() - 1);
    let fork = b.height() - 1;
    let replaced: bitcoin::BlockHash = b.block(fork).unwrap().block_hash();
    // A payment in the replaced block (it is mined again after the reorg).
    let stale_tx = b.block(fork).unwrap().txdata[1].compute_txid();
    b.invalidate_tip();
    b.invalidate_tip();
    let r = node.call("invalidateblock", json!([replaced])).unwrap();
    assert!(r.is_null(), "{r}");
    for _ in 0..3 {
        b.mine(&alice.btc.script_pubkey());
    }
    submit(&node, &b, fork);
    // And on, to well past the reorg.
    for _ in 0..5 {
        alice
            .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(30_000))
            .unwrap();
        b.mine(&burn());
    }
    submit(&node, &b, b.height() - 4);

    assert_eq!(
        node.call("getbestblockhash", json!([])).unwrap(),
        json!(b.tip_hash().to_string())
    );
    assert_eq!(
        node.call("getblockcount", json!([])).unwrap(),
        json!(b.height())
    );
    assert!(b.height() > 210, "{}", b.height());

    // The replaced blocks are still known, as off the best chain, to both.
    let height = b.height();
    let em = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let emu = bitcoin_node_client::UreqBitcoinNode::new(
        &em.url(),
        bitcoin_node_client::Auth::None,
        std::time::Duration::from_secs(10),
    );
    for verbosity in [1, 2] {
        let (a, c) = (
            emu.call("getblock", json!([replaced, verbosity])).unwrap(),
            node.call("getblock", json!([replaced, verbosity])).unwrap(),
        );
        assert_eq!(c["confirmations"], json!(-1), "{c}");
        same_fields("stale getblock", &a, &c, BLOCK_FIELDS);
        if verbosity == 2 {
            for (x, y) in a["tx"]
                .as_array()
                .unwrap()
                .iter()
                .zip(c["tx"].as_array().unwrap())
            {
                same_tx("stale getblock 2", x, y);
            }
        }
    }
    let params = json!([stale_tx, 1, replaced]);
    let (a, c) = (
        emu.call("getrawtransaction", params.clone()).unwrap(),
        node.call("getrawtransaction", params).unwrap(),
    );
    assert_eq!(c["in_active_chain"], json!(false), "{c}");
    same_tx("getrawtransaction in a stale block", &a, &c);
    let client = node.client();
    let s = bitcoin_node_client::BitcoinNode::get_raw_transaction_in_block(
        &client, &stale_tx, &replaced,
    )
    .unwrap()
    .unwrap();
    assert_eq!((s.confirmations, s.block_hash), (0, None));
    eprintln!(
        "{height} blocks accepted by Core in {:?}",
        started.elapsed()
    );
}

#[test]
fn the_emulators_coinbase_is_byte_for_byte_cores() {
    let Some(node) = real_node() else { return };
    let to = User::new("miner", 3).btc;
    let hashes = node
        .call("generatetoaddress", json!([20, to.to_string()]))
        .unwrap();
    let mut b = BitcoinState::new();
    for (i, hash) in hashes.as_array().unwrap().iter().enumerate() {
        b.mine(&to.script_pubkey());
        let core = node.call("getblock", json!([hash, 2])).unwrap();
        let ours = &b.block(i as u64 + 1).unwrap().txdata[0];
        assert_eq!(
            core["tx"][0]["hex"],
            json!(serialize_hex(ours)),
            "coinbase at height {}",
            i + 1
        );
        assert_eq!(
            core["version"],
            json!(b.block(i as u64 + 1).unwrap().header.version.to_consensus())
        );
        assert_eq!(core["bits"], json!("207fffff"));
    }
}

/// The fields of `a` and `b` named by `fields` are equal (in value and
/// JSON type); a field absent from one is absent from the other.
fn same_fields(what: &str, a: &Json, b: &Json, fields: &[&str]) {
    for f in fields {
        assert_eq!(
            a.get(f),
            b.get(f),
            "{what}: field {f} differs (emulator vs Core)\nemulator: {a}\nCore: {b}"
        );
    }
}

const TX_FIELDS: &[&str] = &[
    "txid",
    "hash",
    "version",
    "size",
    "vsize",
    "weight",
    "locktime",
    "hex",
    "fee",
    "blockhash",
    "confirmations",
    "time",
    "blocktime",
    "in_active_chain",
];

/// A decoded transaction: the top fields, and in each input and output the
/// fields a client reads.
fn same_tx(what: &str, a: &Json, b: &Json) {
    same_fields(what, a, b, TX_FIELDS);
    let (ai, bi) = (a["vin"].as_array().unwrap(), b["vin"].as_array().unwrap());
    assert_eq!(ai.len(), bi.len(), "{what}: inputs");
    for (x, y) in ai.iter().zip(bi) {
        same_fields(
            what,
            x,
            y,
            &["txid", "vout", "coinbase", "txinwitness", "sequence"],
        );
        assert_eq!(x["scriptSig"]["hex"], y["scriptSig"]["hex"], "{what}");
    }
    let (ao, bo) = (a["vout"].as_array().unwrap(), b["vout"].as_array().unwrap());
    assert_eq!(ao.len(), bo.len(), "{what}: outputs");
    for (x, y) in ao.iter().zip(bo) {
        same_fields(what, x, y, &["value", "n"]);
        same_fields(
            what,
            &x["scriptPubKey"],
            &y["scriptPubKey"],
            &["hex", "type", "address"],
        );
    }
}

const BLOCK_FIELDS: &[&str] = &[
    "hash",
    "confirmations",
    "height",
    "version",
    "versionHex",
    "merkleroot",
    "time",
    "mediantime",
    "nonce",
    "bits",
    "target",
    "difficulty",
    "chainwork",
    "nTx",
    "previousblockhash",
    "nextblockhash",
    "strippedsize",
    "size",
    "weight",
];

/// `(code, message)` of an RPC error, or a panic naming the answer.
fn rpc_error(r: Result<Json, bitcoin_node_client::Error>) -> (i64, String) {
    match r {
        Err(bitcoin_node_client::Error::Rpc { code, message }) => (code, message),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[test]
fn the_emulator_answers_rpc_as_core_does() {
    let Some(node) = real_node() else { return };
    let mut b = BitcoinState::new();
    let (mut alice, bob, _peg) = devnet_traffic(&mut b);
    submit(&node, &b, 1);
    // The same transactions wait in both mempools.
    let pending = alice
        .pay(&mut b, &bob.btc.script_pubkey(), Amount::from_sat(25_000))
        .unwrap();
    let (pending_tx, _) = b.locate(&pending).unwrap();
    node.call("sendrawtransaction", json!([serialize_hex(&pending_tx)]))
        .unwrap();

    let em = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let emu = bitcoin_node_client::UreqBitcoinNode::new(
        &em.url(),
        bitcoin_node_client::Auth::None,
        std::time::Duration::from_secs(10),
    );
    let both =
        |method: &str, params: Json| (emu.call(method, params.clone()), node.call(method, params));
    let ok_both = |method: &str, params: Json| {
        let (a, b) = both(method, params.clone());
        (
            a.unwrap_or_else(|e| panic!("emulator {method} {params}: {e}")),
            b.unwrap_or_else(|e| panic!("Core {method} {params}: {e}")),
        )
    };
    let err_both = |method: &str, params: Json| {
        let (a, b) = both(method, params.clone());
        let (a, b) = (rpc_error(a), rpc_error(b));
        assert_eq!(a, b, "{method} {params}: emulator vs Core");
        a
    };

    let (a, c) = ok_both("getblockcount", json!([]));
    assert_eq!(a, c);
    let (a, c) = ok_both("getbestblockhash", json!([]));
    assert_eq!(a, c);
    let (a, c) = ok_both("getblockchaininfo", json!([]));
    same_fields(
        "getblockchaininfo",
        &a,
        &c,
        &[
            "chain",
            "blocks",
            "headers",
            "bestblockhash",
            "bits",
            "target",
            "difficulty",
            "time",
            "mediantime",
            "chainwork",
            "pruned",
            "initialblockdownload",
        ],
    );
    let height = a["blocks"].as_u64().unwrap();
    err_both("getblockhash", json!([height + 1]));
    err_both("getblockhash", json!([-1]));

    for h in [0, 1, 150, 151, height - 1, height] {
        let (hash, c) = ok_both("getblockhash", json!([h]));
        assert_eq!(hash, c);
        let (a, c) = ok_both("getblock", json!([hash, 0]));
        assert_eq!(a, c, "getblock {h} 0");
        let (a, c) = ok_both("getblock", json!([hash]));
        same_fields(&format!("getblock {h}"), &a, &c, BLOCK_FIELDS);
        assert_eq!(a["tx"], c["tx"], "getblock {h}: txids");
        let (a1, c1) = ok_both("getblock", json!([hash, 1]));
        assert_eq!((&a1["tx"], &c1["tx"]), (&a["tx"], &c["tx"]));
        let (a, c) = ok_both("getblock", json!([hash, 2]));
        same_fields(&format!("getblock {h} 2"), &a, &c, BLOCK_FIELDS);
        let (at, ct) = (a["tx"].as_array().unwrap(), c["tx"].as_array().unwrap());
        assert_eq!(at.len(), ct.len());
        for (x, y) in at.iter().zip(ct) {
            same_tx(&format!("getblock {h} 2"), x, y);
        }
    }
    let unknown = bitcoin::BlockHash::from_byte_array([1; 32]);
    let (code, msg) = err_both("getblock", json!([unknown, 0]));
    assert_eq!((code, msg.as_str()), (-5, "Block not found"));
    err_both("getblock", json!([unknown]));
    err_both("getblock", json!(["zz"]));

    // Transactions: confirmed (with and without their block), in the
    // mempool, unknown, in the wrong block, the genesis coinbase.
    let tip_hash = ok_both("getbestblockhash", json!([])).0;
    let tip = ok_both("getblock", json!([tip_hash, 1])).0;
    let genesis_hash = ok_both("getblockhash", json!([0])).0;
    for txid in tip["tx"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&json!(pending)])
    {
        let (a, c) = ok_both("getrawtransaction", json!([txid]));
        assert_eq!(a, c, "getrawtransaction {txid}: hex");
        for verbose in [json!(true), json!(1), json!(2)] {
            let (a, c) = ok_both("getrawtransaction", json!([txid, verbose]));
            same_tx(&format!("getrawtransaction {txid} {verbose}"), &a, &c);
        }
        let (a, c) = ok_both("getrawtransaction", json!([txid, false]));
        assert_eq!(a, c);
        if *txid != json!(pending) {
            let (a, c) = ok_both("getrawtransaction", json!([txid, 1, tip_hash]));
            same_tx(&format!("getrawtransaction {txid} 1 tip"), &a, &c);
            let (code, msg) = err_both("getrawtransaction", json!([txid, 1, genesis_hash]));
            assert_eq!(code, -5, "{msg}");
        }
    }
    let (code, msg) = err_both("getrawtransaction", json!([Txid::from_byte_array([9; 32])]));
    assert_eq!(
        (code, msg.as_str()),
        (
            -5,
            "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
        )
    );
    err_both("getrawtransaction", json!([pending, 1, unknown]));
    let genesis_cb =
        bitcoin::blockdata::constants::genesis_block(Network::Regtest).txdata[0].compute_txid();
    err_both("getrawtransaction", json!([genesis_cb]));
    err_both("getrawtransaction", json!(["zz"]));

    // Broadcasts: a valid payment, the same again, a double spend of a
    // confirmed coin, a mempool conflict paying less, a bad signature,
    // garbage.
    let coin = alice.coins()[0].clone();
    let pay = |outputs: Vec<TxOut>, signer: &User| {
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin.0,
                ..TxIn::default()
            }],
            output: outputs,
        };
        signer.sign_input(&mut tx, 0, &coin.1);
        tx
    };
    let out = |sats: u64| TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: bob.btc.script_pubkey(),
    };
    let value = coin.1.value.to_sat();
    let forged = pay(vec![out(value - 10_000)], &User::new("mallory", 9));
    let (code, msg_emu, msg_core) = {
        let (a, c) = both("sendrawtransaction", json!([serialize_hex(&forged)]));
        let ((ca, ma), (cc, mc)) = (rpc_error(a), rpc_error(c));
        assert_eq!(ca, cc, "bad signature: {ma} vs {mc}");
        eprintln!("bad signature: emulator {ma:?}, Core {mc:?}");
        (ca, ma, mc)
    };
    assert_eq!(code, -26, "{msg_emu} / {msg_core}");
    let good = pay(vec![out(value - 10_000)], &alice);
    let (a, c) = ok_both("sendrawtransaction", json!([serialize_hex(&good)]));
    assert_eq!(
        (&a, &c),
        (&json!(good.compute_txid()), &json!(good.compute_txid()))
    );
    let (a, c) = ok_both("sendrawtransaction", json!([serialize_hex(&good)]));
    assert_eq!(a, c, "the same transaction again");
    let poorer = pay(vec![out(value - 5_000)], &alice);
    let (code, _) = {
        let (a, c) = both("sendrawtransaction", json!([serialize_hex(&poorer)]));
        let ((ca, ma), (cc, mc)) = (rpc_error(a), rpc_error(c));
        assert_eq!(ca, cc, "conflict: {ma} vs {mc}");
        eprintln!("mempool conflict: emulator {ma:?}, Core {mc:?}");
        (ca, ma)
    };
    assert_eq!(code, -26);
    // One paying more replaces it on both (full RBF).
    let richer = pay(vec![out(value - 30_000)], &alice);
    let (a, c) = ok_both("sendrawtransaction", json!([serialize_hex(&richer)]));
    assert_eq!(
        (&a, &c),
        (&json!(richer.compute_txid()), &json!(richer.compute_txid()))
    );
    let (code, _) = err_both("getrawtransaction", json!([good.compute_txid()]));
    assert_eq!(code, -5, "the replaced transaction left both mempools");
    // A coin spent in a block.
    let spent = b_spent_coin(&em);
    let mut double = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: spent.0,
            ..TxIn::default()
        }],
        output: vec![out(spent.1.value.to_sat() - 10_000)],
    };
    alice.sign_input(&mut double, 0, &spent.1);
    let (code, _) = err_both("sendrawtransaction", json!([serialize_hex(&double)]));
    assert_eq!(code, -25);
    // A confirmed transaction sent again.
    // Every transaction of the last blocks sent again: coinbases (they
    // burn to OP_RETURN), transactions with unspent outputs, spent ones.
    for h in [height - 1, height - 2, height - 3] {
        let bh = ok_both("getblockhash", json!([h])).0;
        let blk = ok_both("getblock", json!([bh, 2])).0;
        for t in blk["tx"].as_array().unwrap() {
            let (a, c) = both("sendrawtransaction", json!([t["hex"]]));
            assert_eq!(
                rpc_error(a),
                rpc_error(c),
                "sendrawtransaction of {}",
                t["txid"]
            );
        }
    }
    let (code, _) = err_both("sendrawtransaction", json!(["00"]));
    assert_eq!(code, -22);
    // testmempoolaccept agrees on a valid and an invalid transaction.
    let fresh = bob.coins()[0].clone();
    let mut tma = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: fresh.0,
            ..TxIn::default()
        }],
        output: vec![out(fresh.1.value.to_sat() - 10_000)],
    };
    bob.sign_input(&mut tma, 0, &fresh.1);
    for (tx, allowed) in [(&tma, true), (&forged, false)] {
        let (a, c) = ok_both("testmempoolaccept", json!([[serialize_hex(tx)]]));
        same_fields(
            "testmempoolaccept",
            &a[0],
            &c[0],
            &["txid", "wtxid", "allowed"],
        );
        assert_eq!(c[0]["allowed"], json!(allowed), "{c}");
    }
    // A fee above sendrawtransaction's default maxfeerate (0.10 BTC/kvB).
    let mut greedy = tma.clone();
    greedy.output[0].value = fresh.1.value - Amount::from_btc(1.0).unwrap();
    bob.sign_input(&mut greedy, 0, &fresh.1);
    let (code, msg) = err_both("sendrawtransaction", json!([serialize_hex(&greedy)]));
    assert_eq!(code, -25, "{msg}");
    let (a, c) = ok_both("getblockcount", json!([]));
    assert_eq!(a, c);
}

/// An output alice's first funding coinbase paid, spent since.
fn b_spent_coin(em: &BitcoinEmulator) -> (OutPoint, TxOut) {
    em.with(|b| {
        let cb = b.block(1).unwrap().txdata[0].clone();
        (OutPoint::new(cb.compute_txid(), 0), cb.output[0].clone())
    })
}

#[test]
fn core_refuses_what_the_emulator_no_longer_mines() {
    let Some(node) = real_node() else { return };
    let mut b = BitcoinState::new();
    b.mine(&burn());
    let good = b.block(1).unwrap().clone();
    // Re-mined with the old version 2, or with a coinbase over the subsidy.
    let remine = |mut block: bitcoin::Block| {
        block.header.merkle_root = block.compute_merkle_root().unwrap();
        while block.header.validate_pow(block.header.target()).is_err() {
            block.header.nonce += 1;
        }
        serialize_hex(&block)
    };
    let mut old_version = good.clone();
    old_version.header.version = bitcoin::block::Version::TWO;
    let r = node
        .call("submitblock", json!([remine(old_version)]))
        .unwrap();
    assert_eq!(r, json!("bad-version(0x00000002)"));
    let mut greedy = good.clone();
    greedy.txdata[0].output[0].value += Amount::from_sat(1);
    let r = node.call("submitblock", json!([remine(greedy)])).unwrap();
    assert_eq!(r, json!("bad-cb-amount"));
    // And the emulator's own block is accepted.
    node.submit_blocks(&b, 1).unwrap();
}

/// `sig` with s replaced by n - s (the curve order minus s): the same
/// signature, high-S.
fn high_s(sig: &bitcoin::secp256k1::ecdsa::Signature) -> bitcoin::secp256k1::ecdsa::Signature {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];
    let mut c = sig.serialize_compact();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(c[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        c[32 + i] = (d + if d < 0 { 256 } else { 0 }) as u8;
    }
    bitcoin::secp256k1::ecdsa::Signature::from_compact(&c).unwrap()
}

#[test]
fn a_high_s_signature_is_refused_by_both() {
    let Some(node) = real_node() else { return };
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    alice.fund(&mut b, &burn());
    node.submit_blocks(&b, 1).unwrap();
    let coin = alice.coins()[0].clone();
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin.0,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: coin.1.value - Amount::from_sat(10_000),
            script_pubkey: alice.btc.script_pubkey(),
        }],
    };
    alice.sign_input(&mut tx, 0, &coin.1);
    let w = tx.input[0].witness.to_vec();
    let der = &w[0][..w[0].len() - 1];
    let sig = bitcoin::secp256k1::ecdsa::Signature::from_der(der).unwrap();
    let mut high = high_s(&sig).serialize_der().to_vec();
    high.push(0x01);
    tx.input[0].witness = Witness::from_slice(&[high, w[1].clone()]);
    let hex = serialize_hex(&tx);
    let core = node.call("sendrawtransaction", json!([hex]));
    let emu = b.send(tx.clone());
    match (core, emu) {
        (Err(bitcoin_node_client::Error::Rpc { code, message }), Err(e)) => {
            assert_eq!((code, &message), (e.code, &e.message));
            assert!(
                message.contains("S value is unnecessarily high"),
                "{message}"
            );
        }
        other => panic!("both must refuse: {other:?}"),
    }
    // The same transaction with its low-S signature is accepted by both.
    alice.sign_input(&mut tx, 0, &coin.1);
    node.call("sendrawtransaction", json!([serialize_hex(&tx)]))
        .unwrap();
    b.send(tx).unwrap();
}
