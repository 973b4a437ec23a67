//! The stacks-node client against a local server answering as the node does,
//! including rejections, plain-text 404s, 5xx, garbage and slow answers.

use std::time::{Duration, Instant};

use http_fixture::{FixtureServer, Reply};
use stacks_node_client::peg_ops::BurnHeight;
use stacks_node_client::{Error, StacksNode, UreqStacksNode};
use stacks_wire::{ContractId, PrincipalData, Value};

fn client(s: &FixtureServer) -> UreqStacksNode {
    UreqStacksNode::new(&s.url(), Duration::from_millis(500))
}

const PEG_IN: &str = r#"{"peg_in":[{"amount":1337,"block_height":218,"burn_header_hash":"3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4","memo":"","peg_wallet_address":"tb1pqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqkgkkf5","recipient":"S0000000000000000000002AA028H.awesome_contract","txid":"d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771","vtxindex":2}]}"#;

#[test]
fn burn_ops_and_the_not_there_yet_404() {
    let s = FixtureServer::start(|r| match r.path.as_str() {
        "/v2/burn_ops/218/peg_in" => Reply::json(200, PEG_IN),
        "/v2/burn_ops/218/peg_out_request" => Reply::json(200, r#"{"peg_out_request":[]}"#),
        "/v2/info" => Reply::json(200, info_at(218)),
        _ => Reply::text(404, "No burn ops at that height"),
    });
    let c = client(&s);
    let ops = c.get_peg_in_ops(BurnHeight(218)).unwrap().unwrap();
    assert_eq!(ops[0].amount.to_sat(), 1337);
    assert_eq!(
        c.get_peg_out_request_ops(BurnHeight(218)).unwrap(),
        Some(vec![])
    );
    // Not there yet, never "nothing there".
    assert_eq!(c.get_peg_in_ops(BurnHeight(219)).unwrap(), None);
}

fn info_at(burn_height: u64) -> String {
    format!(
        r#"{{"burn_block_height": {burn_height}, "stacks_tip_height": 9, "stacks_tip": "{}", "stacks_tip_consensus_hash": "{}", "server_version": "x"}}"#,
        "11".repeat(32),
        "22".repeat(20)
    )
}

/// A released stacks-node has no `/v2/burn_ops`: a 404 for a height it has
/// processed is a configuration error naming the fix, never "wait".
#[test]
fn a_node_without_burn_ops_is_a_configuration_error() {
    let s = FixtureServer::start(|r| match r.path.as_str() {
        "/v2/info" => Reply::json(200, info_at(500)),
        // What stacks-node 4.0.2 answers for every height.
        _ => Reply::text(404, "Unsupported path"),
    });
    let c = client(&s);
    for h in [1, 499, 500] {
        let e = c.get_peg_in_ops(BurnHeight(h)).unwrap_err();
        assert!(
            matches!(e, Error::BurnOpsUnsupported { status: 404, .. }),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert!(e.to_string().contains("op_source = \"bitcoin\""), "{e}");
        let e = c.get_peg_out_request_ops(BurnHeight(h)).unwrap_err();
        assert!(matches!(e, Error::BurnOpsUnsupported { .. }), "{e:?}");
    }
    // Above its burn height a 404 is still "not there yet".
    assert_eq!(c.get_peg_in_ops(BurnHeight(501)).unwrap(), None);
}

/// Malformed bodies are refused with plain text: a permanent rejection
/// carrying the node's text, not a decode error retried forever.
#[test]
fn plain_text_400s_are_permanent_rejections_with_the_nodes_text() {
    let s = FixtureServer::start(|r| {
        if r.path.starts_with("/v2/contracts/call-read") {
            Reply::text(400, "Failed to deserialize argument")
        } else {
            Reply::text(400, "Failed to deserialize posted transaction")
        }
    });
    let c = client(&s);
    let e = c.broadcast_transaction(b"garbage").unwrap_err();
    match &e {
        Error::Rejected(r) => {
            assert_eq!(r.reason, stacks_node_client::Rejection::MALFORMED);
            assert_eq!(
                r.message(),
                Some("Failed to deserialize posted transaction")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("Failed to deserialize posted transaction"),
        "{e}"
    );
    let contract: ContractId = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ.sbtc-alpha"
        .parse()
        .unwrap();
    let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
    let e = c
        .call_read(&contract, "get-threshold", &[], &who)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(r) if r.message() == Some("Failed to deserialize argument")),
        "{e:?}"
    );
    assert!(!e.is_transient());
}

#[test]
fn info_gives_the_index_block_hash() {
    let s = FixtureServer::start(|_| {
        Reply::json(
            200,
            r#"{"burn_block_height": 812, "stacks_tip_height": 99, "stacks_tip": "11111111111111111111111111111111111111111111111111111111111111aa", "stacks_tip_consensus_hash": "2222222222222222222222222222222222222222", "server_version": "x"}"#,
        )
    });
    let info = client(&s).get_info().unwrap();
    assert_eq!((info.burn_block_height, info.stacks_tip_height), (812, 99));
    let mut buf =
        hex::decode("11111111111111111111111111111111111111111111111111111111111111aa").unwrap();
    buf.extend(hex::decode("2222222222222222222222222222222222222222").unwrap());
    assert_eq!(info.stacks_tip, stacks_wire::transaction::sha512_256(&buf));
}

#[test]
fn accounts_parse_hex_balances() {
    let s = FixtureServer::start(|r| {
        assert!(r.path.ends_with("?proof=0"), "{}", r.path);
        Reply::json(
            200,
            r#"{"balance":"0x0000000000000000000000003b9aca00","locked":"0x0","unlock_height":0,"nonce":7}"#,
        )
    });
    let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
    let a = client(&s).get_account(&who).unwrap();
    assert_eq!((a.balance, a.nonce), (1_000_000_000, 7));
}

#[test]
fn broadcast_success_and_rejections_with_reason_data() {
    let s = FixtureServer::start(|r| {
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        match r.body.first() {
            Some(1) => Reply::json(
                200,
                r#""98642a68528c7631be0dcefa910ce3a881480a7dbba9bca7b2d0f3c6fa5987dd""#,
            ),
            Some(2) => Reply::json(
                400,
                r#"{"txid":"98642a68528c7631be0dcefa910ce3a881480a7dbba9bca7b2d0f3c6fa5987dd","error":"transaction rejected","reason":"FeeTooLow","reason_data":{"expected":2500,"actual":180}}"#,
            ),
            _ => Reply::text(400, "not json at all"),
        }
    });
    let c = client(&s);
    assert_eq!(
        c.broadcast_transaction(&[1]).unwrap().to_string(),
        "98642a68528c7631be0dcefa910ce3a881480a7dbba9bca7b2d0f3c6fa5987dd"
    );
    match c.broadcast_transaction(&[2]) {
        Err(Error::Rejected(r)) => {
            assert_eq!(r.reason, "FeeTooLow");
            assert_eq!(r.reason_data_u64("expected"), Some(2500));
            assert_eq!(r.reason_data_u64("actual"), Some(180));
        }
        other => panic!("{other:?}"),
    }
    // A plain-text 400 is the node refusing a malformed body: permanent,
    // with its text (it used to be a "transient" decode error).
    let e = c.broadcast_transaction(&[3]).unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(r) if r.message() == Some("not json at all")),
        "{e:?}"
    );
    assert!(!e.is_transient());
}

#[test]
fn fee_estimates_and_no_estimate() {
    let s = FixtureServer::start(|r| {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["estimated_len"] == 1 {
            Reply::json(
                400,
                r#"{"error":"Estimation could not be performed","reason":"NoEstimateAvailable"}"#,
            )
        } else {
            assert_eq!(v["transaction_payload"], "0211");
            Reply::json(
                200,
                r#"{"estimated_cost":{},"estimated_cost_scalar":14,"cost_scalar_change_by_byte":0.004,"estimations":[{"fee_rate":1.5,"fee":180},{"fee_rate":2.5,"fee":240},{"fee_rate":9.1,"fee":900}]}"#,
            )
        }
    });
    let c = client(&s);
    let e = c.estimate_fee(&[0x02, 0x11], 200).unwrap();
    assert_eq!((e.low, e.middle, e.high), (180, 240, 900));
    assert_eq!(c.estimate_fee(&[0x02], 1).unwrap_err(), Error::NoEstimate);
}

#[test]
fn call_read_sends_hex_arguments_and_decodes_the_result() {
    let s = FixtureServer::start(|r| {
        assert!(r.path.ends_with("/v2/contracts/call-read/ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ/sbtc-alpha/was-minted"), "{}", r.path);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        // Hex-serialized Clarity values, not "u1" text.
        assert_eq!(v["arguments"][0], "0x0100000000000000000000000000000001");
        if v["sender"] == "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ" {
            Reply::json(200, r#"{"okay":true,"result":"0x03"}"#)
        } else {
            Reply::json(200, r#"{"okay":false,"cause":"Unchecked(NoSuchContract)"}"#)
        }
    });
    let c = client(&s);
    let contract: ContractId = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ.sbtc-alpha"
        .parse()
        .unwrap();
    let me: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
    assert_eq!(
        c.call_read(&contract, "was-minted", &[Value::UInt(1)], &me)
            .unwrap(),
        Value::Bool(true)
    );
    let other: PrincipalData = "ST3MEAPA680QRR7HKH16C57R7QBK0WM84G72NPHZC".parse().unwrap();
    assert!(
        matches!(c.call_read(&contract, "was-minted", &[Value::UInt(1)], &other), Err(Error::CallReadFailed(m)) if m.contains("NoSuchContract"))
    );
}

#[test]
fn broken_nodes_give_typed_errors_never_panics() {
    type Case = (Reply, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (Reply::text(500, "internal"), |e| {
            matches!(e, Error::Http { status: 500, .. }) && e.is_transient()
        }),
        (Reply::text(503, ""), |e| e.is_transient()),
        (Reply::json(200, "{garbage"), |e| {
            matches!(e, Error::Decode(_))
        }),
        (Reply::json(200, r#"{"burn_block_height":"high"}"#), |e| {
            matches!(e, Error::Decode(_))
        }),
        (Reply::Close, |e| {
            matches!(e, Error::Transport(_)) && e.is_transient()
        }),
        (
            Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"burn".to_vec()),
            |e| matches!(e, Error::Transport(_) | Error::Decode(_)),
        ),
    ];
    for (reply, expected) in cases {
        let s = FixtureServer::start(move |_| reply.clone());
        let e = client(&s).get_info().unwrap_err();
        assert!(expected(&e), "{e:?}");
        let e = client(&s).get_peg_in_ops(BurnHeight(1)).unwrap_err();
        assert!(!matches!(e, Error::Rejected(_)), "{e:?}");
    }
    let slow = FixtureServer::start(|_| {
        Reply::Delay(Duration::from_secs(3), Box::new(Reply::json(200, "{}")))
    });
    let t = Instant::now();
    match client(&slow).get_info().unwrap_err() {
        Error::Timeout(why) => assert!(
            why.contains(&slow.url()) && why.contains(" s"),
            "the node and the time waited: {why}"
        ),
        other => panic!("not a timeout: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// `GET /v2/headers/3` as stacks-node 4.0.2 (mocknet) answered it: the tip
/// first, each `parent_block_id` the index block hash of the next entry.
const HEADERS_3: &str = include_str!("fixtures/headers-3.json");
/// The index block hashes of its entries and the last one's parent.
const HEADERS_3_IDS: [&str; 3] = [
    "46e1d28ec55b8690b5c000aa944eb4184ed312f51641662527d62ba1b77c2aca",
    "d130f2ae8efe96fafddfb52acb9ef4dd54ff994bf8b74f931c36148e431599ff",
    "fb328d3a03f29a94ba6e5c503b3371ac57bfe2f47acc290ea0ea76165fe9b4b2",
];
const HEADERS_3_LAST_PARENT: &str =
    "b4883d6021ec0c682ea1c81ef7e069b27a910d5187afb8f26628805df5a6273a";

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn headers_3() -> Vec<serde_json::Value> {
    serde_json::from_str(HEADERS_3).unwrap()
}

#[test]
fn block_at_depth_is_the_last_headers_parent() {
    let s = FixtureServer::start(|r| match r.path.as_str() {
        // No tip: the node's current tip.
        "/v2/headers/3" => Reply::json(200, HEADERS_3),
        // Two entries of the same chain, as /v2/headers/2?tip=… answers.
        "/v2/headers/2" => Reply::json(
            200,
            serde_json::Value::Array(headers_3()[1..].to_vec()).to_string(),
        ),
        "/v2/headers/1" => Reply::json(
            200,
            serde_json::Value::Array(headers_3()[..1].to_vec()).to_string(),
        ),
        other => panic!("unexpected request {other}"),
    });
    let c = client(&s);
    assert_eq!(
        c.block_at_depth(3).unwrap(),
        Some(h32(HEADERS_3_LAST_PARENT))
    );
    assert_eq!(
        c.block_at_depth(2).unwrap(),
        Some(h32(HEADERS_3_LAST_PARENT))
    );
    assert_eq!(c.block_at_depth(1).unwrap(), Some(h32(HEADERS_3_IDS[1])));
}

#[test]
fn block_at_depth_zero_is_the_info_tip() {
    // The tip of the fixture: its block hash is SHA512/256 of the header.
    let tip = &headers_3()[0];
    let header = hex::decode(tip["header"].as_str().unwrap()).unwrap();
    let block_hash = hex::encode(stacks_wire::transaction::sha512_256(&header));
    let consensus = tip["consensus_hash"].as_str().unwrap().to_owned();
    let s = FixtureServer::start(move |r| {
        assert_eq!(r.path, "/v2/info");
        Reply::json(
            200,
            format!(
                r#"{{"burn_block_height": 40, "stacks_tip_height": 39, "stacks_tip": "{block_hash}", "stacks_tip_consensus_hash": "{consensus}"}}"#
            ),
        )
    });
    // The same id the headers chain gives the tip: /v2/info and
    // /v2/headers agree on what a block id is.
    assert_eq!(
        client(&s).block_at_depth(0).unwrap(),
        Some(h32(HEADERS_3_IDS[0]))
    );
}

#[test]
fn a_chain_shorter_than_the_depth_is_none() {
    // A chain of height 2 answers /v2/headers/3 with its 2 headers.
    let s = FixtureServer::start(|_| {
        Reply::json(
            200,
            serde_json::Value::Array(headers_3()[1..].to_vec()).to_string(),
        )
    });
    assert_eq!(client(&s).block_at_depth(3).unwrap(), None);
    let empty = FixtureServer::start(|_| Reply::json(200, "[]"));
    assert_eq!(client(&empty).block_at_depth(1).unwrap(), None);
}

/// A list that does not chain, or holds more than asked, is a broken answer:
/// an error, never a block id to read at.
#[test]
fn broken_headers_are_errors_never_block_ids() {
    let mut swapped = headers_3();
    swapped.swap(0, 1);
    let mut extra = headers_3();
    extra.push(headers_3()[0].clone());
    let mut bad_parent = headers_3();
    bad_parent[1]["parent_block_id"] = "zz".into();
    let mut short_consensus = headers_3();
    short_consensus[0]["consensus_hash"] = "00".into();
    type Case = (Reply, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (
            Reply::json(200, serde_json::Value::Array(swapped).to_string()),
            |e| matches!(e, Error::Decode(m) if m.contains("not the parent")),
        ),
        (
            Reply::json(200, serde_json::Value::Array(extra).to_string()),
            |e| matches!(e, Error::Decode(_)),
        ),
        (
            Reply::json(200, serde_json::Value::Array(bad_parent).to_string()),
            |e| matches!(e, Error::Decode(_)),
        ),
        (
            Reply::json(200, serde_json::Value::Array(short_consensus).to_string()),
            |e| matches!(e, Error::Decode(_)),
        ),
        (Reply::json(200, r#"{"headers": []}"#), |e| {
            matches!(e, Error::Decode(_))
        }),
        (Reply::json(200, "[{garbage"), |e| {
            matches!(e, Error::Decode(_))
        }),
        // What the node answers above its limit: plain text, permanent.
        (
            Reply::text(400, "Invalid request: requested more than 2100 headers"),
            |e| {
                matches!(e, Error::Rejected(r) if r.message().is_some_and(|m| m.contains("2100")))
                    && !e.is_transient()
            },
        ),
        (Reply::text(500, "internal"), |e| {
            matches!(e, Error::Http { status: 500, .. }) && e.is_transient()
        }),
    ];
    for (reply, expected) in cases {
        let s = FixtureServer::start(move |_| reply.clone());
        let e = client(&s).block_at_depth(3).unwrap_err();
        assert!(expected(&e), "{e:?}");
    }
}

#[test]
fn a_depth_beyond_the_nodes_limit_is_refused_without_asking() {
    let s = FixtureServer::start(|_| Reply::json(200, "[]"));
    let e = client(&s)
        .block_at_depth(stacks_node_client::MAX_HEADERS + 1)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(_)) && !e.is_transient(),
        "{e:?}"
    );
    assert_eq!(s.requests(), 0);
}

/// The tip goes out as 64 lower-case hex digits without `0x` (the node
/// reads anything else at its canonical tip, silently); the node's 404 is
/// `UnknownTip`, transient (a reorg may bring the block back; the caller
/// finds the block again).
#[test]
fn call_read_at_sends_the_tip_and_maps_the_nodes_404() {
    let known = h32(HEADERS_3_IDS[1]);
    let s = FixtureServer::start(move |r| {
        let (path, query) = r.path.split_once('?').expect("a tip query");
        assert_eq!(
            path,
            "/v2/contracts/call-read/ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ/sbtc-alpha/get-burn"
        );
        let tip = query.strip_prefix("tip=").expect("only tip=");
        assert_eq!(tip.len(), 64, "{tip}");
        assert!(
            tip.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{tip}"
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["arguments"][0], Value::StringAscii("ab".into()).to_hex());
        if tip == hex::encode(known) {
            Reply::json(200, r#"{"okay":true,"result":"0x09"}"#)
        } else {
            // What stacks-node 4.0.2 answers for a tip it does not know.
            Reply::text(404, "Chain tip not found")
        }
    });
    let c = client(&s);
    let contract: ContractId = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ.sbtc-alpha"
        .parse()
        .unwrap();
    let me: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
    let arg = [Value::StringAscii("ab".into())];
    assert_eq!(
        c.call_read_at(&contract, "get-burn", &arg, &me, &known)
            .unwrap(),
        Value::Optional(None)
    );
    let unknown = h32(HEADERS_3_LAST_PARENT);
    let e = c
        .call_read_at(&contract, "get-burn", &arg, &me, &unknown)
        .unwrap_err();
    assert_eq!(e, Error::UnknownTip(HEADERS_3_LAST_PARENT.into()));
    assert!(e.is_transient());
}

/// Without a tip a 404 stays an HTTP error: only a read at a tip can be
/// "unknown tip".
#[test]
fn call_read_without_a_tip_never_says_unknown_tip() {
    let s = FixtureServer::start(|r| {
        assert!(!r.path.contains('?'), "{}", r.path);
        Reply::text(404, "Chain tip not found")
    });
    let contract: ContractId = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ.sbtc-alpha"
        .parse()
        .unwrap();
    let me: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
    let e = client(&s)
        .call_read(&contract, "get-threshold", &[], &me)
        .unwrap_err();
    assert!(matches!(e, Error::Http { status: 404, .. }), "{e:?}");
}
