//! `Codec::open_for_signer`, the signer's way in: a share request that does
//! not list the signer stops after its signature check (never before), one
//! that lists it comes with the listing its body carried, and that listing
//! refuses in `check_listed_nonces_with` exactly what `check_listed_nonces`
//! refuses. Every kind a signer acts on, forged (a body bit flipped, or
//! sealed by someone who may not send it), is refused.

mod common;
use common::{codec, pk, share_request, sk};

use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{
    Codec, EnvelopeError, ForSigner, Kind, ListedNonces, RoundId, Sender, ShareRequest,
};

fn sealed(c: &Codec, r: &ShareRequest) -> Vec<u8> {
    c.seal(
        Sender::Coordinator,
        &sk(0),
        &Message::SignatureShareRequest(r.clone()),
    )
    .unwrap()
}

fn flipped(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 1;
    bytes
}

#[test]
fn a_signer_not_listed_learns_only_the_round_and_only_from_an_authentic_request() {
    let c = codec();
    let listed: Vec<u32> = (0..10).collect();
    let bytes = sealed(&c, &share_request(&c, &listed));
    let round = RoundId {
        key: pk(99),
        dkg_id: 1,
        sign_id: 7,
        sign_iter_id: 0,
    };
    // Signers 11..15 (wsts 10..14) are not listed.
    for me in 10..15 {
        assert_eq!(
            c.open_for_signer(&bytes, me).unwrap(),
            ForSigner::NotListed(round)
        );
    }
    // Forged: a bit of the body flipped (the listed ids, a nonce, the round)
    // or of the signature, or signed by a signer: refused, never NotListed.
    for at in [20, 14 + 33 + 24 + 4 + 24 + 2, 14 + 40, bytes.len() - 3] {
        let e = c
            .open_for_signer(&flipped(bytes.clone(), at), 12)
            .unwrap_err();
        assert!(matches!(e, EnvelopeError::BadSignature { .. }), "{at}: {e}");
    }
    let body = Message::SignatureShareRequest(share_request(&c, &listed)).encode_body();
    let by_signer = c.seal_raw(
        Sender::Signer(3),
        &sk(3),
        Kind::SignatureShareRequest,
        &body,
    );
    assert!(matches!(
        c.open_for_signer(&by_signer, 12).unwrap_err(),
        EnvelopeError::WrongSender { .. }
    ));
    // Signed with another key than the coordinator's.
    let forged = c.seal_raw(
        Sender::Coordinator,
        &sk(50),
        Kind::SignatureShareRequest,
        &body,
    );
    assert!(matches!(
        c.open_for_signer(&forged, 12).unwrap_err(),
        EnvelopeError::BadSignature { .. }
    ));
}

#[test]
fn a_listed_signer_gets_the_request_as_open_gives_it_with_its_listing() {
    let c = codec();
    let listed: Vec<u32> = (0..10).collect();
    let r = share_request(&c, &listed);
    let bytes = sealed(&c, &r);
    for me in 0..10 {
        let ForSigner::Open(env, Some(listing)) = c.open_for_signer(&bytes, me).unwrap() else {
            panic!("signer {me} is listed");
        };
        assert_eq!(env, c.open(&bytes).unwrap());
        assert_eq!(listing, ListedNonces::of(&r));
        let Message::SignatureShareRequest(got) = &env.message else {
            unreachable!()
        };
        c.check_listed_nonces_with(got, me, &listing).unwrap();
    }
    // A listed signer gets a bad body refused as `open` refuses it.
    let mut r2 = r.clone();
    r2.msg.nonce_responses[3].signer_id = 1; // listed twice
    let bad = sealed(&c, &r2);
    assert_eq!(
        c.open_for_signer(&bad, 0).unwrap_err(),
        c.open(&bad).unwrap_err()
    );
}

/// What the listing path refuses is what the encoding path refuses, with
/// the same words: nonces moved between entries, other key ids, another
/// key, one signer's envelope twice or missing, a listing of another request.
#[test]
fn the_listing_refuses_what_the_encoded_check_refuses() {
    let c = codec();
    let all: Vec<u32> = (0..15).collect();
    let r = share_request(&c, &all);
    let mut cases: Vec<ShareRequest> = vec![];
    let mut moved = r.clone();
    moved.msg.nonce_responses[2].nonces = r.msg.nonce_responses[5].nonces.clone();
    cases.push(moved);
    let mut ids = r.clone();
    ids.msg.nonce_responses[2].key_ids = vec![9];
    cases.push(ids);
    let mut key = r.clone();
    key.key = pk(98);
    cases.push(key);
    let mut twice = r.clone();
    twice.nonce_envelopes[4] = twice.nonce_envelopes[3].clone();
    cases.push(twice);
    let mut dropped = r.clone();
    dropped.nonce_envelopes.remove(6);
    cases.push(dropped);
    for (i, bad) in cases.iter().enumerate() {
        let want = c.check_listed_nonces(bad, 0).unwrap_err();
        // Its own listing (as a packet of it would carry) ...
        let own = ListedNonces::of(bad);
        assert_eq!(
            c.check_listed_nonces_with(bad, 0, &own).unwrap_err(),
            want,
            "case {i}"
        );
        // ... and the honest request's listing with the rewritten request:
        // not used (it lists other entries), the request's own is made.
        let honest = ListedNonces::of(&r);
        assert_eq!(
            c.check_listed_nonces_with(bad, 0, &honest).unwrap_err(),
            want,
            "case {i}"
        );
    }
    // A listing that does not fit (another number of entries) is not used.
    let fewer = share_request(&c, &[0, 1, 2]);
    c.check_listed_nonces_with(&r, 0, &ListedNonces::of(&fewer))
        .unwrap();
}

/// Every kind a signer acts on, from the coordinator or the other signers,
/// with one bit of its body flipped: refused before anything is decoded.
#[test]
fn every_kind_a_signer_acts_on_is_refused_forged() {
    let c = codec();
    let r = share_request(&c, &(0..10).collect::<Vec<_>>());
    let coordinator = [
        (Kind::DkgBegin, br#"{"dkg_id":5}"#.to_vec()),
        (
            Kind::SignRequest,
            br#"{"id":1,"payload":"","items":[]}"#.to_vec(),
        ),
        (Kind::KeyAccepted, b"{}".to_vec()),
        (Kind::DkgPrivateBegin, b"{}".to_vec()),
        (Kind::DkgEndBegin, b"{}".to_vec()),
        (
            Kind::NonceRequest,
            Message::NonceRequest(Keyed {
                key: pk(99),
                msg: w::NonceRequest {
                    dkg_id: 1,
                    sign_id: 7,
                    sign_iter_id: 0,
                    message: vec![0xab; 32],
                    signature_type: w::SignatureType::Taproot(None),
                },
            })
            .encode_body(),
        ),
        (
            Kind::SignatureShareRequest,
            Message::SignatureShareRequest(r).encode_body(),
        ),
    ];
    let signers = [
        (Kind::DkgPublicShares, b"{}".to_vec()),
        (Kind::DkgPrivateShares, b"{}".to_vec()),
    ];
    let packets = coordinator
        .iter()
        .map(|(k, b)| (c.seal_raw(Sender::Coordinator, &sk(0), *k, b), *k))
        .chain(
            signers
                .iter()
                .map(|(k, b)| (c.seal_raw(Sender::Signer(2), &sk(2), *k, b), *k)),
        );
    for (bytes, kind) in packets {
        assert!(kind.for_signers());
        for at in [frost_net::envelope::HEADER_LEN, bytes.len() - 1] {
            for me in [0, 12] {
                let e = c
                    .open_for_signer(&flipped(bytes.clone(), at), me)
                    .unwrap_err();
                assert!(
                    matches!(e, EnvelopeError::BadSignature { .. }),
                    "{kind:?}: {e}"
                );
            }
        }
        // Unsigned: the signature's bytes zeroed.
        let mut unsigned = bytes.clone();
        let n = unsigned.len();
        unsigned[n - frost_net::envelope::SIGNATURE_LEN..].fill(0);
        assert!(c.open_for_signer(&unsigned, 12).is_err(), "{kind:?}");
    }
}
