//! `SignPayload`: its bytes round-trip, arbitrary bytes never panic the
//! decoder, and its sighashes are BIP-341's.

use bitcoin::hashes::Hash as _;
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{
    absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, TapSighashType, Transaction,
    TxIn, TxOut, Txid, Witness,
};
use peg_rules::payload::MAX_PAYLOAD_BYTES;
use peg_rules::SignPayload;
use proptest::prelude::*;

fn tx_strategy() -> impl Strategy<Value = (Transaction, Vec<TxOut>)> {
    let input = (any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(|(t, v, s)| TxIn {
        previous_output: OutPoint::new(Txid::from_byte_array(t), v),
        sequence: Sequence(s),
        ..TxIn::default()
    });
    let out = (
        0u64..=21_000_000 * 100_000_000,
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(v, s)| TxOut {
            value: Amount::from_sat(v),
            script_pubkey: ScriptBuf::from_bytes(s),
        });
    (
        prop::collection::vec(input, 1..5),
        prop::collection::vec(out.clone(), 0..5),
        prop::collection::vec(out, 5),
        any::<u32>(),
        prop_oneof![Just(1i32), Just(2i32)],
    )
        .prop_map(|(input, output, mut prevouts, lock, version)| {
            prevouts.truncate(input.len());
            let tx = Transaction {
                version: transaction::Version(version),
                lock_time: absolute::LockTime::from_consensus(lock),
                input,
                output,
            };
            (tx, prevouts)
        })
}

fn payload_strategy() -> impl Strategy<Value = SignPayload> {
    (tx_strategy(), tx_strategy(), any::<[u8; 32]>(), 0u8..4).prop_map(
        |((tx, prevouts), (funding, _), id, kind)| {
            let txid = Txid::from_byte_array(id);
            match kind {
                0 => SignPayload::Fulfilment {
                    request: txid,
                    tx,
                    prevouts,
                },
                1 => SignPayload::Sweep { tx, prevouts },
                2 => SignPayload::Refund {
                    peg_in: txid,
                    funding,
                    tx,
                    prevouts,
                },
                _ => SignPayload::Test,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn payloads_round_trip(p in payload_strategy()) {
        prop_assert_eq!(SignPayload::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = SignPayload::decode(&bytes);
    }

    #[test]
    fn decoding_near_payloads_never_panics(
        kind in prop_oneof![Just("fulfilment"), Just("sweep"), Just("refund"), Just("test"), Just("x")],
        tx in prop::collection::vec(any::<u8>(), 0..200),
        value in any::<i128>(),
        script in "[0-9a-fA-Fz]{0,40}",
    ) {
        let json = format!(
            r#"{{"kind":"{kind}","request":"{}","peg_in":"{}","funding":"{}","tx":"{}","prevouts":[{{"value":{value},"script":"{script}"}}]}}"#,
            "11".repeat(32),
            "22".repeat(32),
            hex::encode(&tx),
            hex::encode(&tx),
        );
        let _ = SignPayload::decode(json.as_bytes());
    }

    #[test]
    fn sighashes_are_bip341_key_path_default_over_all_prevouts((tx, prevouts) in tx_strategy()) {
        let p = SignPayload::Sweep { tx: tx.clone(), prevouts: prevouts.clone() };
        let mut cache = SighashCache::new(&tx);
        let expected: Vec<[u8; 32]> = (0..tx.input.len())
            .map(|i| {
                cache
                    .taproot_key_spend_signature_hash(i, &Prevouts::All(&prevouts), TapSighashType::Default)
                    .unwrap()
                    .to_raw_hash()
                    .to_byte_array()
            })
            .collect();
        prop_assert_eq!(p.sighashes().unwrap(), expected);
    }
}

fn sample() -> (Transaction, Vec<TxOut>) {
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([1; 32]), 2),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: ScriptBuf::from_bytes(vec![0x51, 0x20, 7]),
        }],
    };
    let prevouts = vec![TxOut {
        value: Amount::from_sat(5_000),
        script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
    }];
    (tx, prevouts)
}

#[test]
fn the_json_is_tagged_with_consensus_hex_and_sats() {
    let (tx, prevouts) = sample();
    let p = SignPayload::Fulfilment {
        request: Txid::from_byte_array([1; 32]),
        tx: tx.clone(),
        prevouts,
    };
    let v: serde_json::Value = serde_json::from_slice(&p.encode()).unwrap();
    assert_eq!(v["kind"], "fulfilment");
    assert_eq!(v["tx"], bitcoin::consensus::encode::serialize_hex(&tx));
    assert_eq!(v["prevouts"][0]["value"], 5_000);
    assert_eq!(v["prevouts"][0]["script"], "51");
    assert_eq!(v["request"], "01".repeat(32));
    assert_eq!(
        SignPayload::decode(br#"{"kind":"test"}"#),
        Ok(SignPayload::Test)
    );
}

#[test]
fn a_refund_carries_the_funding_transaction_in_consensus_hex() {
    let (tx, prevouts) = sample();
    let (mut funding, _) = sample();
    funding.version = transaction::Version::ONE;
    let p = SignPayload::Refund {
        peg_in: Txid::from_byte_array([2; 32]),
        funding: funding.clone(),
        tx: tx.clone(),
        prevouts,
    };
    let v: serde_json::Value = serde_json::from_slice(&p.encode()).unwrap();
    assert_eq!(v["kind"], "refund");
    assert_eq!(v["peg_in"], "02".repeat(32));
    assert_eq!(
        v["funding"],
        bitcoin::consensus::encode::serialize_hex(&funding)
    );
    assert_eq!(v["tx"], bitcoin::consensus::encode::serialize_hex(&tx));
    assert_eq!(v["prevouts"][0]["value"], 5_000);
    assert_eq!(SignPayload::decode(&p.encode()), Ok(p.clone()));
    // The sighashes are the refund transaction's, not the funding's.
    assert_eq!(p.sighashes().unwrap().len(), 1);
    // A refund without its funding transaction is no payload.
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let json = format!(
        r#"{{"kind":"refund","peg_in":"{}","tx":"{hex}","prevouts":[{{"value":5000,"script":"51"}}]}}"#,
        "02".repeat(32)
    );
    assert!(SignPayload::decode(json.as_bytes()).is_err());
}

#[test]
fn malformed_payloads_are_errors() {
    let oversized = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert!(SignPayload::decode(&oversized)
        .unwrap_err()
        .contains("limit"));
    assert!(SignPayload::decode(b"").is_err());
    assert!(SignPayload::decode(br#"{"kind":"sweep","tx":"zz","prevouts":[]}"#).is_err());
    // A transaction with trailing bytes is not a transaction.
    let (tx, _) = sample();
    let hex = format!("{}00", bitcoin::consensus::encode::serialize_hex(&tx));
    let json = format!(r#"{{"kind":"sweep","tx":"{hex}","prevouts":[]}}"#);
    assert!(SignPayload::decode(json.as_bytes()).is_err());
    // Unknown kinds and negative or fractional sats.
    assert!(SignPayload::decode(br#"{"kind":"steal"}"#).is_err());
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    for value in ["-1", "1.5", "18446744073709551616"] {
        let json = format!(
            r#"{{"kind":"sweep","tx":"{hex}","prevouts":[{{"value":{value},"script":""}}]}}"#
        );
        assert!(SignPayload::decode(json.as_bytes()).is_err(), "{value}");
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(SignPayload::decode(deep.as_bytes()).is_err());
}

#[test]
fn sighashes_need_one_prevout_per_input_and_test_has_none() {
    let (tx, prevouts) = sample();
    let p = SignPayload::Sweep {
        tx: tx.clone(),
        prevouts: vec![],
    };
    assert!(p.sighashes().is_err());
    let mut two = prevouts.clone();
    two.push(prevouts[0].clone());
    assert!(SignPayload::Sweep { tx, prevouts: two }
        .sighashes()
        .is_err());
    assert_eq!(SignPayload::Test.sighashes(), Ok(vec![]));
    assert!(SignPayload::Test.transaction().is_none());
}

#[test]
fn a_signed_witness_does_not_change_the_sighash() {
    let (tx, prevouts) = sample();
    let mut signed = tx.clone();
    signed.input[0].witness = Witness::from_slice(&[[3u8; 64]]);
    let a = SignPayload::Sweep {
        tx,
        prevouts: prevouts.clone(),
    };
    let b = SignPayload::Sweep {
        tx: signed,
        prevouts,
    };
    assert_eq!(a.sighashes(), b.sighashes());
    assert_ne!(a.encode(), b.encode());
}
