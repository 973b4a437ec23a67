//! The envelope: whatever a relay changes in a packet, the packet is refused
//! before its body is decoded; ids that do not fit the set are refused after.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::envelope::{peek, HEADER_LEN, SIGNATURE_LEN};
use frost_net::messages::{KeyStored, Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{
    Codec, Domain, EnvelopeError, Kind, Sender, SignItem, SignRequest, SignerInfo, SignerSet,
    ToSign,
};
use proptest::prelude::*;

fn sk(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i + 1; 32]).unwrap()
}

fn pk(i: u8) -> PublicKey {
    sk(i).public_key(&Secp256k1::new())
}

/// Three signers with two keys each; the coordinator's key is sk(0).
fn set() -> SignerSet {
    SignerSet {
        threshold: 4,
        dkg_threshold: None,
        signers: (1..=3u8)
            .map(|i| SignerInfo {
                id: u32::from(i),
                public_key: pk(i),
                key_ids: vec![u32::from(i) * 2 - 1, u32::from(i) * 2],
                private_key: None,
            })
            .collect(),
    }
}

fn codec() -> Codec {
    let set = set();
    Codec::with_domain(Domain::new("regtest", "ST1.sbtc", &set, &pk(0)), set, pk(0))
}

fn request() -> Message {
    Message::NonceRequest(Keyed {
        key: pk(9),
        msg: w::NonceRequest {
            dkg_id: 1,
            sign_id: 2,
            sign_iter_id: 3,
            message: vec![7; 32],
            signature_type: w::SignatureType::Taproot(None),
        },
    })
}

#[test]
fn a_sealed_packet_opens_to_what_was_sent() {
    let c = codec();
    let bytes = c.seal(Sender::Coordinator, &sk(0), &request()).unwrap();
    let e = c.open(&bytes).unwrap();
    assert_eq!(e.sender, Sender::Coordinator);
    assert_eq!(e.message, request());
    assert_eq!(
        peek(&bytes),
        Some((Kind::NonceRequest, Sender::Coordinator))
    );
    let stored = Message::KeyStored(KeyStored {
        dkg_id: 4,
        key: pk(9),
    });
    let bytes = c.seal(Sender::Signer(2), &sk(2), &stored).unwrap();
    assert_eq!(c.open(&bytes).unwrap().sender, Sender::Signer(2));
}

#[test]
fn every_flipped_bit_is_refused() {
    let c = codec();
    let bytes = c.seal(Sender::Coordinator, &sk(0), &request()).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut t = bytes.clone();
            t[i] ^= 1 << bit;
            assert!(
                c.open(&t).is_err(),
                "byte {i} bit {bit} flipped and accepted"
            );
        }
    }
}

#[test]
fn the_signature_binds_the_domain() {
    let c = codec();
    let bytes = c.seal(Sender::Coordinator, &sk(0), &request()).unwrap();
    for other in [
        Domain::new("mainnet", "ST1.sbtc", &set(), &pk(0)),
        Domain::new("regtest", "ST1.other", &set(), &pk(0)),
        Domain::new(
            "regtest",
            "ST1.sbtc",
            &SignerSet {
                threshold: 3,
                ..set()
            },
            &pk(0),
        ),
    ] {
        let c2 = Codec::with_domain(other, set(), pk(0));
        assert!(matches!(
            c2.open(&bytes),
            Err(EnvelopeError::BadSignature { .. })
        ));
    }
}

#[test]
fn senders_are_who_the_key_says() {
    let c = codec();
    // A signer's key cannot send a coordinator's request...
    assert!(matches!(
        c.seal(Sender::Signer(1), &sk(1), &request()),
        Err(EnvelopeError::WrongSender { .. })
    ));
    // ...and a request signed by signer 1 but labelled as the coordinator fails.
    let forged = c.seal(Sender::Coordinator, &sk(1), &request()).unwrap();
    assert!(matches!(
        c.open(&forged),
        Err(EnvelopeError::BadSignature { .. })
    ));
    // A signer outside the set.
    let stored = Message::KeyStored(KeyStored {
        dkg_id: 4,
        key: pk(9),
    });
    let bytes = c.seal(Sender::Signer(9), &sk(9), &stored).unwrap();
    assert!(matches!(
        c.open(&bytes),
        Err(EnvelopeError::WrongSender { .. })
    ));
    // Signer 2 speaking for signer 1.
    let end = Message::DkgEnd(w::DkgEnd {
        dkg_id: 1,
        signer_id: 0,
        status: w::DkgStatus::Success,
    });
    let bytes = c.seal(Sender::Signer(2), &sk(2), &end).unwrap();
    assert!(matches!(c.open(&bytes), Err(EnvelopeError::BadIds { .. })));
}

#[test]
fn oversized_bodies_are_refused_before_verification() {
    let c = codec();
    let big = Message::SignRequest(SignRequest {
        id: 1,
        payload: vec![0; 8],
        items: vec![SignItem {
            key: pk(9),
            message: ToSign::Test {
                text: "x".repeat(100),
            },
        }],
    });
    assert!(c.seal(Sender::Coordinator, &sk(0), &big).is_ok());
    // A header claiming a huge nonce request: refused on the cap, not parsed.
    let mut bytes = c.seal(Sender::Coordinator, &sk(0), &request()).unwrap();
    let claimed = u32::try_from(c.cap(Kind::NonceRequest) + 1).unwrap();
    bytes[10..14].copy_from_slice(&claimed.to_be_bytes());
    assert!(matches!(
        c.open(&bytes),
        Err(EnvelopeError::TooLarge { .. })
    ));
}

#[test]
fn ids_that_do_not_fit_the_set_are_refused() {
    let c = codec();
    let seal_open = |m: Message| {
        let from = if m.kind().from_coordinator() {
            Sender::Coordinator
        } else {
            Sender::Signer(1)
        };
        let key = if from == Sender::Coordinator {
            sk(0)
        } else {
            sk(1)
        };
        c.open(&c.seal(from, &key, &m).unwrap())
    };
    // Ids moved between the lists of a DkgEndBegin.
    let moved = Message::DkgEndBegin(w::DkgEndBegin {
        dkg_id: 1,
        signer_ids: vec![0, 1],
        key_ids: vec![1, 2, 3],
    });
    assert!(matches!(
        seal_open(moved),
        Err(EnvelopeError::BadIds { .. })
    ));
    let fine = Message::DkgEndBegin(w::DkgEndBegin {
        dkg_id: 1,
        signer_ids: vec![0, 1],
        key_ids: vec![1, 2, 3, 4],
    });
    assert!(seal_open(fine).is_ok());
    // A DkgEnd failure naming signers that do not exist (FIRE indexed by them).
    let unknown = Message::DkgEnd(w::DkgEnd {
        dkg_id: 1,
        signer_id: 0,
        status: w::DkgStatus::Failure(w::DkgFailure::MissingPublicShares(
            [7u32, 0].into_iter().collect(),
        )),
    });
    assert!(matches!(
        seal_open(unknown),
        Err(EnvelopeError::BadIds { .. })
    ));
    // A nonce request for something other than a 32-byte taproot digest.
    let mut r = request();
    if let Message::NonceRequest(k) = &mut r {
        k.msg.signature_type = w::SignatureType::Schnorr;
    }
    assert!(matches!(seal_open(r), Err(EnvelopeError::BadIds { .. })));
}

#[test]
fn caps_fit_the_largest_honest_messages() {
    // A 15-signer, 10-keys-each set: caps stay far below the relay's limit
    // but above what wsts sends (checked end to end by the FROST tests).
    let set = SignerSet {
        threshold: 105,
        dkg_threshold: None,
        signers: (1..=15u8)
            .map(|i| SignerInfo {
                id: u32::from(i),
                public_key: pk(i),
                key_ids: (1..=10).map(|k| (u32::from(i) - 1) * 10 + k).collect(),
                private_key: None,
            })
            .collect(),
    };
    let c = Codec::with_domain(Domain::new("", "", &set, &pk(0)), set, pk(0));
    assert!(c.cap(Kind::NonceRequest) < 8 << 10);
    assert!(c.cap(Kind::DkgPrivateShares) < 1 << 20);
    assert!(c.cap(Kind::SignatureShareRequest) < 1 << 20);
}

/// A 15-signer set with `k` keys each (signer `i`'s message key sk(i)).
fn fifteen(k: u32) -> SignerSet {
    SignerSet {
        threshold: 15 * k * 7 / 10,
        dkg_threshold: None,
        signers: (1..=15u8)
            .map(|i| SignerInfo {
                id: u32::from(i),
                public_key: pk(i),
                key_ids: (1..=k).map(|j| (u32::from(i) - 1) * k + j).collect(),
                private_key: None,
            })
            .collect(),
    }
}

/// The largest share request a 15-signer set sends: every signer listed,
/// each with its real sealed nonce response embedded (hex in the body),
/// fits its cap (checked when sealed and again when opened), and stays far
/// below the relay's 4 MiB packet limit; each embedded envelope checks.
#[test]
fn a_share_request_embedding_fifteen_sealed_nonce_responses_fits_its_cap() {
    let mut rng = wsts::util::create_rng();
    for k in [1u32, 10] {
        let set = fifteen(k);
        let c = Codec::with_domain(Domain::new("", "", &set, &pk(0)), set.clone(), pk(0));
        let key = pk(99);
        let responses: Vec<w::NonceResponse> = set
            .signers
            .iter()
            .map(|s| w::NonceResponse {
                dkg_id: u64::MAX,
                sign_id: u64::MAX,
                sign_iter_id: u64::MAX,
                signer_id: s.id - 1,
                key_ids: s.key_ids.clone(),
                nonces: vec![wsts::common::Nonce::random(&mut rng).into()],
                message: vec![0xff; 32],
            })
            .collect();
        let sealed: Vec<Vec<u8>> = responses
            .iter()
            .map(|n| {
                let m = Message::NonceResponse(Keyed {
                    key,
                    msg: n.clone(),
                });
                c.seal(
                    Sender::Signer(n.signer_id + 1),
                    &sk(u8::try_from(n.signer_id + 1).unwrap()),
                    &m,
                )
                .unwrap()
            })
            .collect();
        let request = frost_net::ShareRequest {
            key,
            msg: w::SignatureShareRequest {
                dkg_id: u64::MAX,
                sign_id: u64::MAX,
                sign_iter_id: u64::MAX,
                nonce_responses: responses,
                message: vec![0xff; 32],
                signature_type: w::SignatureType::Taproot(None),
            },
            nonce_envelopes: sealed,
        };
        let m = Message::SignatureShareRequest(request.clone());
        let body = m.encode_body().len();
        let cap = c.cap(Kind::SignatureShareRequest);
        assert!(body <= cap, "{k} keys: {body} bytes over the cap of {cap}");
        assert!(cap < 1 << 20, "{k} keys: cap {cap}");
        let bytes = c.seal(Sender::Coordinator, &sk(0), &m).unwrap();
        assert_eq!(c.open(&bytes).unwrap().message, m);
        for me in 0..15 {
            c.check_listed_nonces(&request, me).unwrap();
        }
        // One more embedded envelope than listed signers is refused at open.
        let mut extra = request.clone();
        extra.nonce_envelopes.push(extra.nonce_envelopes[0].clone());
        let bytes = c
            .seal(
                Sender::Coordinator,
                &sk(0),
                &Message::SignatureShareRequest(extra),
            )
            .unwrap();
        assert!(matches!(c.open(&bytes), Err(EnvelopeError::BadIds { .. })));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = codec().open(&bytes);
    }

    /// A valid header with arbitrary body and signature never panics either.
    #[test]
    fn garbage_behind_a_valid_header_never_panics(
        kind in 1u8..=16, sender in 0u32..5, body in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let mut bytes = b"SBTF\x02".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&sender.to_be_bytes());
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[1u8; SIGNATURE_LEN]);
        prop_assert!(codec().open(&bytes).is_err());
        prop_assert_eq!(bytes.len(), HEADER_LEN + body.len() + SIGNATURE_LEN);
    }
}
