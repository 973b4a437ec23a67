//! The JSON-RPC client against a local server answering as bitcoind does —
//! and as a broken bitcoind would: typed errors, never a panic.

use std::time::{Duration, Instant};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Amount, FeeRate, Network, ScriptBuf, Transaction};
use bitcoin_node_client::{Auth, BitcoinNode, Error, MempoolAcceptance, UreqBitcoinNode};
use http_fixture::{FixtureServer, Reply, Request};
use serde_json::{json, Value};

fn method(r: &Request) -> (String, Value) {
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    (
        v["method"].as_str().unwrap().to_owned(),
        v["params"].clone(),
    )
}

fn ok(result: Value) -> Reply {
    Reply::json(
        200,
        json!({"result": result, "error": null, "id": 1}).to_string(),
    )
}

fn rpc_error(code: i64, message: &str) -> Reply {
    // bitcoind answers RPC errors with HTTP 500 and an error object.
    Reply::json(
        500,
        json!({"result": null, "error": {"code": code, "message": message}, "id": 1}).to_string(),
    )
}

fn client(server: &FixtureServer) -> UreqBitcoinNode {
    UreqBitcoinNode::new(
        &server.url(),
        Auth::UserPass("user".into(), "pass".into()),
        Duration::from_millis(500),
    )
}

fn genesis() -> bitcoin::Block {
    bitcoin::blockdata::constants::genesis_block(Network::Regtest)
}

fn coinbase() -> Transaction {
    genesis().txdata[0].clone()
}

#[test]
fn sends_basic_auth_and_json_rpc() {
    let server = FixtureServer::start(|r| {
        assert_eq!(r.method, "POST");
        // base64("user:pass")
        assert_eq!(r.header("authorization"), Some("Basic dXNlcjpwYXNz"));
        let (m, params) = method(r);
        assert_eq!((m.as_str(), params), ("getblockcount", json!([])));
        ok(json!(812))
    });
    assert_eq!(client(&server).get_block_count().unwrap(), 812);
}

#[test]
fn reads_the_cookie_file_at_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:abc\n").unwrap();
    let server = FixtureServer::start(|r| {
        // base64("__cookie__:abc")
        assert_eq!(
            r.header("authorization"),
            Some("Basic X19jb29raWVfXzphYmM=")
        );
        ok(json!(1))
    });
    let c = UreqBitcoinNode::new(
        &server.url(),
        Auth::Cookie(cookie.clone()),
        Duration::from_secs(2),
    );
    assert_eq!(c.get_block_count().unwrap(), 1);
    std::fs::remove_file(&cookie).unwrap();
    let e = c.get_block_count().unwrap_err();
    assert!(
        matches!(&e, Error::Transport(m) if m.contains("cookie")),
        "{e}"
    );
}

#[test]
fn an_error_object_is_an_rpc_error_whatever_the_status() {
    let server = FixtureServer::start(|_| rpc_error(-8, "Block height out of range"));
    let e = client(&server).get_block_hash(99).unwrap_err();
    assert_eq!(
        e,
        Error::Rpc {
            code: -8,
            message: "Block height out of range".into()
        }
    );
    assert!(!e.is_transient());
    let warming = FixtureServer::start(|_| rpc_error(-28, "Loading block index…"));
    assert!(client(&warming)
        .get_block_count()
        .unwrap_err()
        .is_transient());
}

#[test]
fn broken_answers_are_typed_errors() {
    type Case = (&'static str, Reply, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("401, empty body", Reply::text(401, ""), |e| {
            *e == Error::Http { status: 401 }
        }),
        ("503 html", Reply::text(503, "<html>busy</html>"), |e| {
            *e == Error::Http { status: 503 } && e.is_transient()
        }),
        ("garbage", Reply::json(200, "{not json"), |e| {
            matches!(e, Error::Decode(_))
        }),
        ("wrong type", ok(json!("eight hundred")), |e| {
            matches!(e, Error::Decode(_))
        }),
        ("closed", Reply::Close, |e| {
            matches!(e, Error::Transport(_)) && e.is_transient()
        }),
        (
            "truncated",
            Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"result\":".to_vec()),
            |e| matches!(e, Error::Transport(_) | Error::Decode(_)),
        ),
        (
            "not http",
            Reply::Raw(b"SSH-2.0-OpenSSH\r\n".to_vec()),
            |e| matches!(e, Error::Transport(_)),
        ),
    ];
    for (name, reply, expected) in cases {
        let server = FixtureServer::start(move |_| reply.clone());
        let e = client(&server).get_block_count().unwrap_err();
        assert!(expected(&e), "{name}: {e:?}");
    }
}

#[test]
fn a_slow_node_times_out_within_the_bound() {
    let server =
        FixtureServer::start(|_| Reply::Delay(Duration::from_secs(3), Box::new(ok(json!(1)))));
    let start = Instant::now();
    let e = client(&server).get_block_count().unwrap_err();
    // The message names the node and the time waited.
    match &e {
        Error::Timeout(why) => assert!(why.contains(&server.url()) && why.contains(" s"), "{why}"),
        other => panic!("not a timeout: {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn blocks_are_decoded_and_checked() {
    let block = genesis();
    let hash = block.block_hash();
    let hex = serialize_hex(&block);
    let server = FixtureServer::start(move |r| match method(r) {
        (m, p) if m == "getblockhash" && p == json!([0]) => ok(json!(hash)),
        (m, p) if m == "getbestblockhash" && p == json!([]) => ok(json!(hash)),
        (m, p) if m == "getblock" && p == json!([hash, 0]) => ok(json!(hex)),
        (m, _) if m == "getblock" => ok(json!(serialize_hex(&genesis()))),
        _ => rpc_error(-32601, "Method not found"),
    });
    let c = client(&server);
    assert_eq!(c.get_block_hash(0).unwrap(), hash);
    assert_eq!(c.get_best_block_hash().unwrap(), hash);
    assert_eq!(c.get_block(&hash).unwrap(), block);
    // The node answering with another block than asked is caught.
    let other = bitcoin::BlockHash::from_byte_array([1; 32]);
    assert!(matches!(c.get_block(&other), Err(Error::Decode(_))));
}

use bitcoin::hashes::Hash as _;

#[test]
fn transactions_known_unknown_and_mismatched() {
    let tx = coinbase();
    let txid = tx.compute_txid();
    let hex = serialize_hex(&tx);
    let server = FixtureServer::start(move |r| {
        let (_, p) = method(r);
        if p[0] == json!(txid) {
            ok(json!({"hex": hex, "confirmations": 3, "blockhash": genesis().block_hash()}))
        } else if p[0] == json!(bitcoin::Txid::from_byte_array([2; 32])) {
            ok(json!({"hex": serialize_hex(&coinbase())}))
        } else {
            rpc_error(-5, "No such mempool or blockchain transaction")
        }
    });
    let c = client(&server);
    let s = c.get_raw_transaction(&txid).unwrap().unwrap();
    assert_eq!(
        (s.tx, s.confirmations, s.block_hash),
        (tx, 3, Some(genesis().block_hash()))
    );
    assert_eq!(
        c.get_raw_transaction(&bitcoin::Txid::from_byte_array([1; 32]))
            .unwrap(),
        None
    );
    assert!(matches!(
        c.get_raw_transaction(&bitcoin::Txid::from_byte_array([2; 32])),
        Err(Error::Decode(_))
    ));
}

#[test]
fn already_known_transactions_count_as_sent() {
    let tx = coinbase();
    let txid = tx.compute_txid();
    for (reply, expect_ok) in [
        (ok(json!(txid)), true),
        (rpc_error(-27, "Transaction already in block chain"), true),
        (rpc_error(-26, "txn-already-in-mempool"), true),
        (rpc_error(-26, "min relay fee not met, 100 < 141"), false),
        (rpc_error(-25, "bad-txns-inputs-missingorspent"), false),
        (ok(json!(bitcoin::Txid::from_byte_array([3; 32]))), false),
    ] {
        let server = FixtureServer::start(move |_| reply.clone());
        let r = client(&server).send_raw_transaction(&tx);
        assert_eq!(r.is_ok(), expect_ok, "{r:?}");
        if let Ok(t) = r {
            assert_eq!(t, txid);
        }
    }
}

#[test]
fn mempool_acceptance() {
    let tx = coinbase();
    let server = FixtureServer::start(|r| {
        let (_, p) = method(r);
        assert!(p[0].is_array());
        ok(json!([{"txid": "00", "allowed": false, "reject-reason": "bad-txns-vout-empty"}]))
    });
    assert_eq!(
        client(&server).test_mempool_accept(&tx).unwrap(),
        MempoolAcceptance::Rejected("bad-txns-vout-empty".into())
    );
    let server =
        FixtureServer::start(|_| ok(json!([{"txid": "00", "allowed": true, "vsize": 100}])));
    assert_eq!(
        client(&server).test_mempool_accept(&tx).unwrap(),
        MempoolAcceptance::Allowed
    );
}

#[test]
fn fee_estimates_convert_exactly() {
    let server = FixtureServer::start(|_| ok(json!({"feerate": 0.00012345, "blocks": 6})));
    // 12,345 sat/kvB = 3,086 sat/kwu (integer division).
    assert_eq!(
        client(&server).estimate_smart_fee(6).unwrap(),
        Some(FeeRate::from_sat_per_kwu(3086))
    );
    let server = FixtureServer::start(|_| {
        ok(json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}))
    });
    assert_eq!(client(&server).estimate_smart_fee(6).unwrap(), None);
    let server = FixtureServer::start(|_| ok(json!({"feerate": "lots"})));
    assert!(matches!(
        client(&server).estimate_smart_fee(6),
        Err(Error::Decode(_))
    ));
}

#[test]
fn peg_wallet_utxos_from_scantxoutset() {
    let script = ScriptBuf::from_hex(
        "5120aa11223344556677889900aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let desc = format!("raw({})", script.to_hex_string());
    let server = FixtureServer::start(move |r| {
        let (m, p) = method(r);
        assert_eq!(m, "scantxoutset");
        assert_eq!(p, json!(["start", [desc]]));
        // As bitcoind writes it: BTC decimals with eight places.
        Reply::json(
            200,
            r#"{"result": {"success": true, "height": 110, "unspents": [
            {"txid": "0101010101010101010101010101010101010101010101010101010101010101", "vout": 2, "amount": 0.00005000, "height": 110, "scriptPubKey": "5120"},
            {"txid": "0202020202020202020202020202020202020202020202020202020202020202", "vout": 0, "amount": 20999999.97690000, "height": 101, "scriptPubKey": "5120"}
        ], "total_amount": 21000000.00000000}, "error": null, "id": 1}"#,
        )
    });
    let utxos = client(&server).list_unspent(&script).unwrap();
    assert_eq!(utxos.len(), 2);
    assert_eq!(utxos[0].txout.value, Amount::from_sat(5_000));
    assert_eq!(utxos[0].confirmations, 1);
    assert_eq!(
        utxos[1].txout.value,
        Amount::from_sat(2_099_999_997_690_000)
    );
    assert_eq!(utxos[1].confirmations, 10);
    assert!(utxos.iter().all(|u| u.txout.script_pubkey == script));
}

#[test]
fn transactions_are_asked_with_explicit_verbosity_and_block() {
    let tx = coinbase();
    let txid = tx.compute_txid();
    let hex = serialize_hex(&tx);
    let best = genesis().block_hash();
    let stale = bitcoin::BlockHash::from_byte_array([4; 32]);
    let other = bitcoin::BlockHash::from_byte_array([5; 32]);
    let server = FixtureServer::start(move |r| {
        let (m, p) = method(r);
        assert_eq!(m, "getrawtransaction");
        if p == json!([txid, 1]) {
            ok(json!({"hex": hex, "confirmations": 3, "blockhash": best}))
        } else if p == json!([txid, 1, best]) {
            ok(json!({"in_active_chain": true, "hex": hex, "confirmations": 3, "blockhash": best}))
        } else if p == json!([txid, 1, stale]) {
            // A block off the best chain: Core says so, with 0 confirmations.
            ok(
                json!({"in_active_chain": false, "hex": hex, "confirmations": 0, "blockhash": stale}),
            )
        } else if p == json!([txid, 1, other]) {
            // A node answering about another block than asked.
            ok(json!({"in_active_chain": true, "hex": hex, "confirmations": 1, "blockhash": best}))
        } else {
            rpc_error(-5, "Block hash not found")
        }
    });
    let c = client(&server);
    let s = c.get_raw_transaction(&txid).unwrap().unwrap();
    assert_eq!((s.confirmations, s.block_hash), (3, Some(best)));
    let s = c
        .get_raw_transaction_in_block(&txid, &best)
        .unwrap()
        .unwrap();
    assert_eq!((s.tx, s.confirmations, s.block_hash), (tx, 3, Some(best)));
    let s = c
        .get_raw_transaction_in_block(&txid, &stale)
        .unwrap()
        .unwrap();
    assert_eq!((s.confirmations, s.block_hash), (0, None));
    assert!(matches!(
        c.get_raw_transaction_in_block(&txid, &other),
        Err(Error::Decode(_))
    ));
    let unknown = bitcoin::BlockHash::from_byte_array([6; 32]);
    assert_eq!(
        c.get_raw_transaction_in_block(&txid, &unknown).unwrap(),
        None
    );
}

#[test]
fn unspent_outputs_from_gettxout() {
    let unspent = bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([1; 32]), 2);
    let spent = bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([2; 32]), 0);
    let bad = bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([3; 32]), 1);
    let server = FixtureServer::start(move |r| {
        let (m, p) = method(r);
        assert_eq!(m, "gettxout");
        if p == json!([unspent.txid, 2, true]) {
            // As Bitcoin Core 26 writes it.
            Reply::json(
                200,
                r#"{"result": {"bestblock": "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206", "confirmations": 4, "value": 20999999.97690000, "scriptPubKey": {"asm": "1 aa11", "desc": "rawtr(aa11)#xyz", "hex": "5120aa11223344556677889900aabbccddeeff00112233445566778899aabbccddeeff", "address": "bcrt1p", "type": "witness_v1_taproot"}, "coinbase": false}, "error": null, "id": 1}"#,
            )
        } else if p == json!([spent.txid, 0, false]) {
            ok(Value::Null)
        } else if p == json!([bad.txid, 1, true]) {
            ok(
                json!({"bestblock": "00", "confirmations": 1, "value": "one", "scriptPubKey": {"hex": "51"}, "coinbase": false}),
            )
        } else {
            rpc_error(-8, "unexpected parameters")
        }
    });
    let c = client(&server);
    let u = c.get_tx_out(&unspent, true).unwrap().unwrap();
    assert_eq!(u.outpoint, unspent);
    assert_eq!(u.confirmations, 4);
    assert_eq!(u.txout.value, Amount::from_sat(2_099_999_997_690_000));
    assert_eq!(
        u.txout.script_pubkey.to_hex_string(),
        "5120aa11223344556677889900aabbccddeeff00112233445566778899aabbccddeeff"
    );
    assert_eq!(c.get_tx_out(&spent, false).unwrap(), None);
    assert!(matches!(c.get_tx_out(&bad, true), Err(Error::Decode(_))));
}

/// Answers and requests far larger than a connection's buffers stream
/// through them whole: a 2 MB block read, a 400 kB transaction sent.
#[test]
fn large_blocks_and_transactions_pass_through_the_connection_buffers() {
    let mut block = genesis();
    let filler = {
        let mut t = coinbase();
        t.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 10_000]);
        t
    };
    block
        .txdata
        .extend(std::iter::repeat_n(filler.clone(), 100));
    let hash = block.block_hash();
    let hex = serialize_hex(&block);
    assert!(hex.len() > 2_000_000, "{}", hex.len());
    let mut big = filler;
    big.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 200_000]);
    let big_txid = big.compute_txid();
    let big_hex = serialize_hex(&big);
    let server = FixtureServer::start(move |r| match method(r) {
        (m, p) if m == "getblock" && p == json!([hash, 0]) => ok(json!(hex)),
        (m, p) if m == "sendrawtransaction" && p == json!([big_hex]) => ok(json!(big_txid)),
        _ => rpc_error(-32601, "Method not found"),
    });
    let c = client(&server);
    assert_eq!(c.get_block(&hash).unwrap(), block);
    assert_eq!(c.send_raw_transaction(&big).unwrap(), big_txid);
}
