//! The binary bodies of the signing-round kinds (envelope version 2): they
//! round-trip, they are canonical (whatever decodes re-encodes to the same
//! bytes, so a signer may compare bytes instead of decoding), hostile bytes
//! never panic or over-allocate, and the listed-nonce check refuses what it
//! refused with JSON bodies, with the same words.

mod common;
use common::{codec, every_signer, pk, share_request, sk};

use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, Kind, Sender};
use proptest::prelude::*;
use wsts::common::SignatureShare;
use wsts::curve::scalar::Scalar;

/// One honest message of each binary kind, as a 15×1 round carries it.
fn honest(c: &Codec) -> Vec<Message> {
    let r = share_request(c, &every_signer());
    vec![
        Message::NonceRequest(Keyed {
            key: r.key,
            msg: w::NonceRequest {
                dkg_id: 1,
                sign_id: 7,
                sign_iter_id: 0,
                message: vec![0xab; 32],
                signature_type: w::SignatureType::Taproot(None),
            },
        }),
        Message::NonceResponse(Keyed {
            key: r.key,
            msg: r.msg.nonce_responses[3].clone(),
        }),
        Message::SignatureShareResponse(Keyed {
            key: r.key,
            msg: w::SignatureShareResponse {
                dkg_id: 1,
                sign_id: 7,
                sign_iter_id: 0,
                signer_id: 3,
                signature_shares: vec![SignatureShare {
                    id: 3,
                    z_i: Scalar::from(12345u32),
                    key_ids: vec![4],
                }],
            },
        }),
        Message::SignatureShareRequest(r),
    ]
}

fn json_len(m: &Message) -> usize {
    match m {
        Message::NonceRequest(x) => serde_json::to_vec(x).unwrap().len(),
        Message::NonceResponse(x) => serde_json::to_vec(x).unwrap().len(),
        Message::SignatureShareRequest(x) => serde_json::to_vec(x).unwrap().len(),
        Message::SignatureShareResponse(x) => serde_json::to_vec(x).unwrap().len(),
        _ => unreachable!(),
    }
}

#[test]
fn binary_bodies_round_trip_are_smaller_than_json_and_open_sealed() {
    let c = codec();
    for m in honest(&c) {
        let body = m.encode_body();
        assert_eq!(Message::decode_body(m.kind(), &body).unwrap(), m);
        assert!(
            body.len() * 2 < json_len(&m),
            "{:?}: {} bytes binary, {} as JSON",
            m.kind(),
            body.len(),
            json_len(&m)
        );
        assert!(body.len() <= c.cap(m.kind()));
        let sender = if m.kind().from_coordinator() {
            Sender::Coordinator
        } else {
            Sender::Signer(4)
        };
        let key = if sender == Sender::Coordinator {
            sk(0)
        } else {
            sk(4)
        };
        let sealed = c.seal(sender, &key, &m).unwrap();
        assert_eq!(sealed[4], 2, "envelope version 2");
        assert_eq!(c.open(&sealed).unwrap().message, m);
        // A version 1 (JSON) envelope is not ours any more.
        let mut v1 = sealed.clone();
        v1[4] = 1;
        assert_eq!(c.open(&v1), Err(frost_net::EnvelopeError::NotEnvelope));
    }
    // The 15×1 share request: ≈ 23 KB as JSON, well under a third of it now.
    let r = Message::SignatureShareRequest(share_request(&c, &every_signer()));
    assert!(r.encode_body().len() < 8 << 10, "{}", r.encode_body().len());
}

#[test]
fn every_taproot_root_and_signature_type_round_trips() {
    let c = codec();
    let Message::NonceRequest(base) = honest(&c).remove(0) else {
        unreachable!()
    };
    for t in [
        w::SignatureType::Frost,
        w::SignatureType::Schnorr,
        w::SignatureType::Taproot(None),
        w::SignatureType::Taproot(Some([9; 32])),
    ] {
        let mut r = base.clone();
        r.msg.signature_type = t;
        let m = Message::NonceRequest(r);
        assert_eq!(
            Message::decode_body(Kind::NonceRequest, &m.encode_body()).unwrap(),
            m
        );
    }
}

/// A count or length claiming billions of elements is refused from the
/// bytes left, before anything is reserved.
#[test]
fn huge_counts_are_refused_without_allocating() {
    let c = codec();
    let Message::SignatureShareRequest(r) = honest(&c).remove(3) else {
        unreachable!()
    };
    let body = Message::SignatureShareRequest(r).encode_body();
    // key (33) ‖ round (24) ‖ the count of listed nonce responses (57);
    // the first one's round (24) ‖ signer id (4) ‖ key id count (89) ‖ one
    // key id (4) ‖ nonce count (97).
    for at in [57usize, 89, 97] {
        let mut b = body.clone();
        b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let Err(e) = Message::decode_body(Kind::SignatureShareRequest, &b) else {
            panic!("a count of 2^32 - 1 at {at} decoded");
        };
        assert!(
            e.contains("does not fit") || e.contains("truncated"),
            "{at}: {e}"
        );
    }
}

#[test]
fn non_canonical_encodings_are_refused() {
    let c = codec();
    let msgs = honest(&c);
    // A point's tag byte other than 2 or 3 (wsts would read it as even).
    let Message::NonceResponse(_) = &msgs[1] else {
        unreachable!()
    };
    let mut b = msgs[1].encode_body();
    // key (33) ‖ round (24) ‖ signer id (4) ‖ key ids (4 + 4) ‖ count (4) ‖ D.
    let d = 33 + 24 + 4 + 8 + 4;
    assert!(b[d] == 2 || b[d] == 3);
    b[d] = 4;
    assert!(Message::decode_body(Kind::NonceResponse, &b)
        .unwrap_err()
        .contains("tag byte"));
    // A scalar at or above the group order (it would reduce to another).
    let mut b = msgs[2].encode_body();
    // key (33) ‖ round (24) ‖ signer id (4) ‖ count (4) ‖ id (4) ‖ z_i.
    let z = 33 + 24 + 4 + 4 + 4;
    b[z..z + 32].copy_from_slice(&[0xff; 32]);
    assert!(Message::decode_body(Kind::SignatureShareResponse, &b)
        .unwrap_err()
        .contains("group order"));
    // Trailing bytes.
    let mut b = msgs[0].encode_body();
    b.push(0);
    assert!(Message::decode_body(Kind::NonceRequest, &b)
        .unwrap_err()
        .contains("trailing"));
}

/// The check of the embedded nonce responses compares bytes when they
/// match; when they do not it says what differs, as it did with JSON.
#[test]
fn listed_nonces_that_are_not_the_signers_own_are_still_refused() {
    let c = codec();
    let r = share_request(&c, &every_signer());
    for me in 0..15 {
        c.check_listed_nonces(&r, me).unwrap();
    }
    // A genuine nonce moved to another signer's entry.
    let mut moved = r.clone();
    moved.msg.nonce_responses[2].nonces = r.msg.nonce_responses[5].nonces.clone();
    let e = c.check_listed_nonces(&moved, 0).unwrap_err();
    assert!(e.contains("signer 3's signed nonce response is for another nonce than listed"));
    // Other key ids than the signer signed.
    let mut ids = r.clone();
    ids.msg.nonce_responses[2].key_ids = vec![9];
    let e = c.check_listed_nonces(&ids, 0).unwrap_err();
    assert!(e.contains("other key ids than listed"), "{e}");
    // The request's key differs from the one the nonces were made for.
    let mut key = r.clone();
    key.key = pk(98);
    let e = c.check_listed_nonces(&key, 0).unwrap_err();
    assert!(e.contains("another key"), "{e}");
    // Another round than signed.
    let mut round = r.clone();
    round.msg.sign_iter_id = 1;
    for n in &mut round.msg.nonce_responses {
        n.sign_iter_id = 1;
    }
    let e = c.check_listed_nonces(&round, 0).unwrap_err();
    assert!(e.contains("another round"), "{e}");
    // One signer's envelope twice (in place of another's).
    let mut twice = r.clone();
    twice.nonce_envelopes[4] = twice.nonce_envelopes[3].clone();
    let e = c.check_listed_nonces(&twice, 0).unwrap_err();
    assert!(
        e.contains("two embedded nonce responses of signer 4"),
        "{e}"
    );
    // An envelope with one bit of its signature flipped.
    let mut forged = r.clone();
    let last = forged.nonce_envelopes[6].len() - 1;
    forged.nonce_envelopes[6][last] ^= 1;
    let e = c.check_listed_nonces(&forged, 0).unwrap_err();
    assert!(
        e.contains("embedded nonce response 6: bad signature"),
        "{e}"
    );
    // A missing envelope of a listed signer other than `me`.
    let mut missing = r.clone();
    missing.nonce_envelopes.remove(7);
    assert!(c.check_listed_nonces(&missing, 7).is_ok());
    let e = c.check_listed_nonces(&missing, 0).unwrap_err();
    assert!(
        e.contains("no signed nonce response of listed signers [8]"),
        "{e}"
    );
}

/// The mutations a hostile relay or party might make to an honest body.
fn mutate(body: &[u8], op: u8, at: usize, v: u32) -> Vec<u8> {
    let mut b = body.to_vec();
    if b.is_empty() {
        return b;
    }
    let at = at % b.len();
    match op % 5 {
        0 => b[at] ^= u8::try_from(v % 255 + 1).unwrap(),
        1 => b.truncate(at),
        2 => b.insert(at, u8::try_from(v % 256).unwrap()),
        3 => {
            let end = (at + 4).min(b.len());
            let word = v.to_be_bytes();
            b[at..end].copy_from_slice(&word[..end - at]);
        }
        _ => {
            b.remove(at);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary bytes as the body of any binary kind never panic, and
    /// whatever decodes re-encodes to exactly the same bytes.
    #[test]
    fn arbitrary_binary_bodies_never_panic(
        kind in prop::sample::select(vec![
            Kind::NonceRequest,
            Kind::NonceResponse,
            Kind::SignatureShareRequest,
            Kind::SignatureShareResponse,
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        if let Ok(m) = Message::decode_body(kind, &body) {
            prop_assert_eq!(m.encode_body(), body);
        }
    }

    /// Mutated honest bodies never panic; a mutation that still decodes
    /// re-encodes to the mutated bytes (one encoding per message).
    #[test]
    fn mutated_binary_bodies_never_panic_and_stay_canonical(
        which in 0usize..4, op in any::<u8>(), at in any::<usize>(), v in any::<u32>(),
        more in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u32>()), 0..3),
    ) {
        static HONEST: std::sync::OnceLock<Vec<(Kind, Vec<u8>)>> = std::sync::OnceLock::new();
        let honest = HONEST.get_or_init(|| {
            honest(&codec()).iter().map(|m| (m.kind(), m.encode_body())).collect()
        });
        let (kind, body) = &honest[which];
        let mut b = mutate(body, op, at, v);
        for (op, at, v) in more {
            b = mutate(&b, op, at, v);
        }
        if let Ok(m) = Message::decode_body(*kind, &b) {
            prop_assert_eq!(m.encode_body(), b);
        }
    }
}

/// An embedded response identical to its listed entry but with key ids
/// that are not its signer's own is refused even when the request never
/// went through `Codec::open` (the byte comparison runs the id checks too).
#[test]
fn a_matching_embedded_response_with_foreign_key_ids_is_refused() {
    let c = codec();
    let mut r = share_request(&c, &every_signer());
    let n = &mut r.msg.nonce_responses[2];
    n.key_ids = vec![9];
    let sealed = c
        .seal(
            Sender::Signer(3),
            &sk(3),
            &Message::NonceResponse(Keyed {
                key: r.key,
                msg: n.clone(),
            }),
        )
        .unwrap();
    r.nonce_envelopes[2] = sealed;
    let e = c.check_listed_nonces(&r, 0).unwrap_err();
    assert!(e.contains("embedded nonce response 2"), "{e}");
    assert!(e.contains("key ids of signer 2 are not its own"), "{e}");
}
