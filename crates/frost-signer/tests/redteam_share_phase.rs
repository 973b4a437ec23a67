//! Red team, issue #16: the signers' faster share phase.
//!
//! A signer now opens a share request with `Codec::open_for_signer`: one
//! that does not list it is read only as far as its listed signer ids (after
//! the signature check) and only marks the round passed over; one that lists
//! it comes with its listing as the packet carried it, whose bytes are
//! compared with the embedded nonce responses and hashed into the binding
//! values without compressing a point again; the aggregate nonce adds the
//! `D_i`. The attacker holds the coordinator's message key (it seals any
//! body it likes, canonical or not) and replays anything. Every test drives
//! packets as bytes, the way `SignerNode` hands them to its core.

use bitcoin::secp256k1::PublicKey;
use frost_net::envelope::{HEADER_LEN, SIGNATURE_LEN};
use frost_net::messages::Message;
use frost_net::wsts::net as w;
use frost_net::{Codec, ForSigner, Kind, ListedNonces, Sender};
use frost_signer::SignerCore;
use proptest::prelude::*;
use wsts::common::{PublicNonce, SignatureShare};
use wsts::compute;
use wsts::curve::point::{Compressed, Point, G};
use wsts::curve::scalar::Scalar;

mod common;
use common::*;

/// What `SignerNode` does with one packet for signer `core` (1-based `id`):
/// `None` when the packet is refused before the core sees it.
fn deliver(core: &mut SignerCore, id: u32, c: &Codec, bytes: &[u8]) -> Option<Vec<Message>> {
    match c.open_for_signer(bytes, id - 1) {
        Ok(ForSigner::Open(env, listed)) => {
            Some(core.handle_listed(&env, listed.as_ref()).unwrap())
        }
        Ok(ForSigner::NotListed(round)) => {
            core.passed_over(&round);
            Some(vec![])
        }
        Err(_) => None,
    }
}

/// `m` sealed by the coordinator (whose message key the attacker holds).
fn by_coordinator(c: &Codec, m: &Message) -> Vec<u8> {
    c.seal(Sender::Coordinator, &sk(0xc0, 0), m).unwrap()
}

/// A share request body (any bytes) sealed by the coordinator.
fn raw_share_request(c: &Codec, body: &[u8]) -> Vec<u8> {
    c.seal_raw(
        Sender::Coordinator,
        &sk(0xc0, 0),
        Kind::SignatureShareRequest,
        body,
    )
}

fn body_of(sealed: &[u8]) -> Vec<u8> {
    sealed[HEADER_LEN..sealed.len() - SIGNATURE_LEN].to_vec()
}

/// Three keyed signers, both digests allowed, and their nonce responses for
/// round (`sign_id`, 1) of `digest`.
fn open_round(
    dir: &std::path::Path,
    digest: [u8; 32],
) -> (Vec<SignerCore>, PublicKey, Vec<w::NonceResponse>) {
    let (mut cores, key) = keyed_cores(dir, true);
    let c = codec();
    let mut nonces = vec![];
    for (i, core) in cores.iter_mut().enumerate() {
        let id = u32::try_from(i).unwrap() + 1;
        let sealed = by_coordinator(&c, &sign_request(key, digest).message);
        assert_eq!(deliver(core, id, &c, &sealed), Some(vec![]));
        let sealed = by_coordinator(&c, &nonce_request(key, 5, 1, digest).message);
        nonces.push(nonce_of(&deliver(core, id, &c, &sealed).unwrap()));
    }
    (cores, key, nonces)
}

fn share_of(out: &[Message]) -> SignatureShare {
    match out {
        [Message::SignatureShareResponse(r)] => r.msg.signature_shares[0].clone(),
        other => panic!("expected a share, got {other:?}"),
    }
}

fn point_of(key: &PublicKey) -> Point {
    Point::try_from(&Compressed::from(key.serialize())).unwrap()
}

/// The BIP-341 key-path signature of `shares` (the listed signers' nonces
/// `nonces`) for `msg` under `key`, checked as a verifier checks it.
#[allow(non_snake_case)]
fn verifies(
    key: &PublicKey,
    msg: &[u8],
    nonces: &[PublicNonce],
    shares: &[SignatureShare],
) -> bool {
    let key = point_of(key);
    let ids: Vec<u32> = shares.iter().map(|s| s.id).collect();
    let (_, R) = compute::intermediate(msg, &ids, nonces);
    let tweak = compute::tweak(&key, None);
    let tweaked = Point::lift_x(&key.x()).unwrap() + tweak * G;
    let sign = if tweaked.has_even_y() {
        Scalar::from(1u32)
    } else {
        -Scalar::from(1u32)
    };
    let c = compute::challenge(&tweaked, &R, msg);
    let z = shares.iter().fold(Scalar::from(0u32), |z, s| z + s.z_i) + sign * c * tweak;
    wsts::taproot::SchnorrProof::new(&wsts::common::Signature { R, z }).verify(&tweaked.x(), msg)
}

/// Baseline (held): the shares the byte path makes (listing bytes hashed,
/// the D's added) give a signature that verifies, so the shortcut computes
/// what wsts computes; the other tests' refusals are not a broken signer.
#[test]
fn shares_made_from_the_packets_listing_give_a_valid_signature() {
    let digest = [0x51; 32];
    let c = codec();
    for pair in [[0usize, 1], [1, 2], [0, 2]] {
        let dir = tempfile::tempdir().unwrap();
        let (mut cores, key, nonces) = open_round(dir.path(), digest);
        let listed: Vec<w::NonceResponse> = pair.iter().map(|&i| nonces[i].clone()).collect();
        let bytes = by_coordinator(&c, &share_request(key, listed.clone()).message);
        let shares: Vec<SignatureShare> = pair
            .iter()
            .map(|&i| {
                let id = u32::try_from(i).unwrap() + 1;
                share_of(&deliver(&mut cores[i], id, &c, &bytes).unwrap())
            })
            .collect();
        let listed_nonces: Vec<PublicNonce> = listed.iter().map(|n| n.nonces[0].clone()).collect();
        assert!(verifies(&key, &digest, &listed_nonces, &shares), "{pair:?}");
        // The signer left out was passed over and made nothing.
        let out = (0..3).find(|i| !pair.contains(i)).unwrap();
        let id = u32::try_from(out).unwrap() + 1;
        assert_eq!(deliver(&mut cores[out], id, &c, &bytes), Some(vec![]));
    }
}

/// Attack on a caller (review finding, fixed): `handle_listed` handed a
/// listing that is not the request's own (another request's, as a caller
/// mixing packets up would pass) must not hash it into the binding values:
/// the share is made from the request's own listing and the signature
/// verifies. Before the fix the nonce check fell back to the request's
/// listing while the share used the one passed in.
#[test]
fn a_listing_of_another_request_is_not_hashed_into_the_share() {
    let digest = [0x5a; 32];
    let c = codec();
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key, nonces) = open_round(dir.path(), digest);
    let listed: Vec<w::NonceResponse> = nonces[..2].to_vec();
    let bytes = by_coordinator(&c, &share_request(key, listed.clone()).message);
    let other = share_request(key, vec![nonces[0].clone(), nonces[2].clone()]);
    let Message::SignatureShareRequest(other) = &other.message else {
        panic!("a share request")
    };
    let wrong = ListedNonces::of(other);
    let shares: Vec<SignatureShare> = [0usize, 1]
        .iter()
        .map(|&i| {
            let me = u32::try_from(i).unwrap();
            let Ok(ForSigner::Open(env, Some(_))) = c.open_for_signer(&bytes, me) else {
                panic!("signer {} opens the request", me + 1)
            };
            share_of(&cores[i].handle_listed(&env, Some(&wrong)).unwrap())
        })
        .collect();
    let listed_nonces: Vec<PublicNonce> = listed.iter().map(|n| n.nonces[0].clone()).collect();
    assert!(
        verifies(&key, &digest, &listed_nonces, &shares),
        "a share hashed another request's listing"
    );
}

/// Negates a compressed point (flips its tag byte).
fn negated(p: &Point) -> Point {
    let mut b = p.compress().data;
    b[0] ^= 1;
    Point::try_from(&Compressed::from(b)).unwrap()
}

/// Attack (held): the listed nonce of this signer or of another, replaced by
/// its negation (the same x, the other tag: what an x-only comparison would
/// take for equal), in a request the coordinator signs. No share; when it
/// was this signer's own entry the round is dropped with its nonce.
#[test]
fn a_listed_nonce_replaced_by_its_negation_gets_no_share() {
    let c = codec();
    let digest = [0x52; 32];
    for (whose, half) in [(0usize, 0u8), (0, 1), (1, 0), (1, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut cores, key, nonces) = open_round(dir.path(), digest);
        let genuine: Vec<w::NonceResponse> = nonces[..2].to_vec();
        let mut listed = genuine.clone();
        let n = &mut listed[whose].nonces[0];
        if half == 0 {
            n.D = negated(&n.D);
        } else {
            n.E = negated(&n.E);
        }
        // The embedded envelopes are the genuine ones.
        let sealed: Vec<Vec<u8>> = genuine.iter().map(|n| seal_nonce(&c, key, n)).collect();
        let bytes = by_coordinator(&c, &share_request_with(key, listed, sealed).message);
        let out = deliver(&mut cores[0], 1, &c, &bytes);
        assert!(
            !out.as_deref().is_some_and(is_share),
            "entry {whose} half {half}: a share for a negated nonce"
        );
        // Signer 2 (whose entry may be the rewritten one) refuses too.
        let out = deliver(&mut cores[1], 2, &c, &bytes);
        assert!(
            !out.as_deref().is_some_and(is_share),
            "signer 2, {whose}/{half}"
        );
    }
}

/// secp256k1's field prime, big-endian.
const P: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[27] = 0xfe;
    p[28] = 0xff;
    p[29] = 0xff;
    p[30] = 0xfc;
    p[31] = 0x2f;
    p
};

/// `x + p` for a small `x`.
fn plus_p(x: u32) -> [u8; 32] {
    let mut out = P;
    let mut carry = u64::from(x);
    for b in out.iter_mut().rev() {
        let s = u64::from(*b) + (carry & 0xff);
        *b = u8::try_from(s & 0xff).unwrap();
        carry = (carry >> 8) + (s >> 8);
    }
    assert_eq!(carry, 0);
    out
}

/// A point with a small x, and that x.
fn small_point() -> (u32, Point) {
    (1u32..1000)
        .find_map(|x| {
            let mut c = [2u8; 33];
            c[1..].fill(0);
            c[29..].copy_from_slice(&x.to_be_bytes());
            Point::try_from(&Compressed::from(c)).ok().map(|p| (x, p))
        })
        .unwrap()
}

/// `body` with the first occurrence of `from` (in a share request: the
/// listing, before the embedded envelopes) replaced by `to`.
fn replaced(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = body
        .windows(from.len())
        .position(|w| w == from)
        .expect("the bytes to replace are in the body");
    assert!(
        at < signer_id_at(2),
        "the first occurrence is in the listing"
    );
    let mut out = body.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// Attack (held): the coordinator's key signs a share request whose listing
/// writes a point in a form that is not its one compressed encoding — `x + p`
/// (the same point if reduced: the bytes hashed into the binding values
/// would differ from every other signer's while the points agree), tag 0 or
/// 4 (infinity, uncompressed), x at or above p. The signer refuses the
/// packet before acting on it: its nonce stays, and the genuine request of
/// the round still gets its one share.
#[test]
fn a_listing_with_a_point_not_in_its_compressed_form_is_refused_before_anything_acts() {
    let c = codec();
    let digest = [0x53; 32];
    let (x, small) = small_point();
    let canonical = small.compress().data;
    let mut forms: Vec<[u8; 33]> = vec![];
    let mut f = [canonical[0]; 33];
    f[1..].copy_from_slice(&plus_p(x));
    forms.push(f);
    for tag in [0u8, 4, 5, 6, 7, 0xff] {
        let mut f = canonical;
        f[0] = tag;
        forms.push(f);
    }
    let mut f = [canonical[0]; 33];
    f[1..].copy_from_slice(&P);
    forms.push(f);
    let mut f = [3u8; 33];
    f[1..].fill(0xff);
    forms.push(f);
    for (which, form) in forms.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cores, key, mut nonces) = open_round(dir.path(), digest);
        // Signer 2's listed D is the small point (as a malicious signer 2
        // may choose): its envelope carries the canonical bytes.
        nonces[1].nonces[0].D = small;
        let listed = nonces[..2].to_vec();
        let genuine = by_coordinator(&c, &share_request(key, listed).message);
        let body = body_of(&genuine);
        let forged = raw_share_request(&c, &replaced(&body, &canonical, form));
        assert_eq!(
            deliver(&mut cores[0], 1, &c, &forged),
            None,
            "form {which} {}",
            hex::encode(form)
        );
        // The packet was refused whole: signer 1 still holds its nonce and
        // answers the genuine request of the round once.
        assert!(is_share(&deliver(&mut cores[0], 1, &c, &genuine).unwrap()));
        assert!(!is_share(&deliver(&mut cores[0], 1, &c, &genuine).unwrap()));
    }
}

/// Attack (held): passed over by an authentic request (the attacker's, for
/// a round the signer holds a nonce of), then listed by another: one share,
/// and nothing afterwards — not a second share for a replay or another
/// listing, not a new nonce for the round, not a share after being passed
/// over again.
#[test]
fn passed_over_then_listed_signs_once_and_never_again() {
    let c = codec();
    let digest = [0x54; 32];
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key, nonces) = open_round(dir.path(), digest);
    let without_me = by_coordinator(&c, &share_request(key, nonces[1..].to_vec()).message);
    assert_eq!(deliver(&mut cores[0], 1, &c, &without_me), Some(vec![]));
    let with_2 = by_coordinator(&c, &share_request(key, nonces[..2].to_vec()).message);
    let with_3 = by_coordinator(
        &c,
        &share_request(key, vec![nonces[0].clone(), nonces[2].clone()]).message,
    );
    let all = by_coordinator(&c, &share_request(key, nonces.clone()).message);
    assert!(is_share(&deliver(&mut cores[0], 1, &c, &with_2).unwrap()));
    for again in [&with_2, &with_3, &all, &without_me, &with_2] {
        let out = deliver(&mut cores[0], 1, &c, again).unwrap();
        assert!(!is_share(&out), "a second share under one nonce");
    }
    let reopen = by_coordinator(&c, &nonce_request(key, 5, 1, digest).message);
    let out = deliver(&mut cores[0], 1, &c, &reopen).unwrap();
    assert!(
        !matches!(out.as_slice(), [Message::NonceResponse(_)]),
        "a second nonce for a round that was signed: {out:?}"
    );
}

/// Attack (held): this signer listed twice (its own entry and a copy, or
/// its id on another signer's nonce), or listed out of order, through the
/// byte path: no share; a request refused by the envelope checks leaves the
/// nonce for the genuine request.
#[test]
fn listed_twice_or_out_of_order_through_the_byte_path_gets_no_share() {
    let c = codec();
    let digest = [0x55; 32];
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key, nonces) = open_round(dir.path(), digest);
    let mut as_me = nonces[1].clone();
    as_me.signer_id = 0;
    as_me.key_ids = vec![1];
    let cases: Vec<Vec<w::NonceResponse>> = vec![
        vec![nonces[0].clone(), nonces[0].clone()],
        vec![nonces[0].clone(), as_me],
    ];
    for listed in cases {
        let sealed: Vec<Vec<u8>> = listed.iter().map(|n| seal_nonce(&c, key, n)).collect();
        let bytes = by_coordinator(&c, &share_request_with(key, listed, sealed).message);
        assert_eq!(deliver(&mut cores[0], 1, &c, &bytes), None);
    }
    let genuine = by_coordinator(&c, &share_request(key, nonces[..2].to_vec()).message);
    // Out of order (2 before 1) is authentic and decodes: refused by the
    // signer, which drops the round's nonce.
    let reversed = by_coordinator(
        &c,
        &share_request(key, vec![nonces[1].clone(), nonces[0].clone()]).message,
    );
    assert!(!is_share(
        &deliver(&mut cores[0], 1, &c, &reversed).unwrap()
    ));
    assert!(!is_share(&deliver(&mut cores[0], 1, &c, &genuine).unwrap()));
    // Signer 2 still answers the genuine request.
    assert!(is_share(&deliver(&mut cores[1], 2, &c, &genuine).unwrap()));
}

/// One hostile rewrite of a share request body.
#[derive(Debug, Clone)]
enum Edit {
    /// A byte at (position mod length) set to a value.
    Set(usize, u8),
    /// The body cut to (position mod length) bytes.
    Cut(usize),
    /// Bytes inserted at (position mod length).
    Insert(usize, Vec<u8>),
    /// A listed entry's signer id (entry index mod count) set to `id`.
    SignerId(usize, u32),
    /// The count of listed entries set to `n`.
    Count(u32),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        1 => any::<usize>().prop_map(Edit::Cut),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        3 => (any::<usize>(), 0u32..4).prop_map(|(a, b)| Edit::SignerId(a, b)),
        1 => (0u32..4).prop_map(Edit::Count),
    ]
}

/// Where entry `i`'s signer id starts in a share request body of entries
/// of one nonce and a 32-byte message each: key 33, round 24, count 4,
/// then entries of 24 + 4 + (4 + 4) + (4 + 66) + (4 + 32) bytes.
fn signer_id_at(i: usize) -> usize {
    33 + 24 + 4 + i * (24 + 4 + 8 + 70 + 36) + 24
}

/// Attack (held): the light parse that lets a signer skip a request not
/// listing it never disagrees with the full decode. For any rewrite of a
/// genuine body, sealed by the coordinator's key: when `open_for_signer`
/// says a signer is not listed, the full decode refuses the body or lists
/// other signers only, for that round; when it opens the request, it is what
/// `open` gives, with the listing of exactly that request; when it refuses,
/// `open` refuses too, with the same error.
#[test]
fn the_not_listed_shortcut_never_disagrees_with_the_full_decode() {
    let c = codec();
    let dir = tempfile::tempdir().unwrap();
    let (_cores, key, nonces) = open_round(dir.path(), [0x56; 32]);
    let genuine = body_of(&by_coordinator(
        &c,
        &share_request(key, nonces[..2].to_vec()).message,
    ));
    // The offsets the edits aim at: the count of entries, the listed ids.
    assert_eq!(genuine[57..61], 2u32.to_be_bytes());
    for (i, want) in [(0usize, 0u32), (1, 1)] {
        let at = signer_id_at(i);
        assert_eq!(genuine[at..at + 4], want.to_be_bytes(), "entry {i}");
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen = std::cell::RefCell::new([0usize; 3]);
    runner
        .run(&proptest::collection::vec(edit(), 1..4), |edits| {
            let mut body = genuine.clone();
            for e in edits {
                let n = body.len().max(1);
                match e {
                    Edit::Set(a, b) => {
                        if !body.is_empty() {
                            body[a % n] = b;
                        }
                    }
                    Edit::Cut(a) => body.truncate(a % n),
                    Edit::Insert(a, b) => {
                        let at = a % n;
                        body.splice(at..at, b);
                    }
                    Edit::Count(k) => {
                        let at = 33 + 24;
                        if body.len() >= at + 4 {
                            body[at..at + 4].copy_from_slice(&k.to_be_bytes());
                        }
                    }
                    Edit::SignerId(i, id) => {
                        let at = signer_id_at(i % 2);
                        if body.len() >= at + 4 {
                            body[at..at + 4].copy_from_slice(&id.to_be_bytes());
                        }
                    }
                }
            }
            let bytes = raw_share_request(&c, &body);
            let full = c.open(&bytes);
            for me in 0..3u32 {
                match c.open_for_signer(&bytes, me) {
                    Ok(ForSigner::NotListed(round)) => {
                        seen.borrow_mut()[0] += 1;
                        if let Ok(env) = &full {
                            let Message::SignatureShareRequest(r) = &env.message else {
                                panic!("a share request decoded as {env:?}");
                            };
                            prop_assert!(
                                r.msg.nonce_responses.iter().all(|n| n.signer_id != me),
                                "signer {me} told it was passed over by a request listing it"
                            );
                            prop_assert_eq!(
                                (round.key, round.dkg_id, round.sign_id, round.sign_iter_id),
                                (r.key, r.msg.dkg_id, r.msg.sign_id, r.msg.sign_iter_id)
                            );
                        }
                    }
                    Ok(ForSigner::Open(env, listed)) => {
                        seen.borrow_mut()[1] += 1;
                        prop_assert_eq!(Ok(&env), full.as_ref());
                        let Message::SignatureShareRequest(r) = &env.message else {
                            panic!("a share request decoded as {env:?}");
                        };
                        prop_assert_eq!(listed, Some(ListedNonces::of(r)));
                    }
                    Err(e) => {
                        seen.borrow_mut()[2] += 1;
                        prop_assert_eq!(Err(&e), full.as_ref());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    assert!(
        seen.iter().all(|n| *n > 0),
        "every outcome exercised: {seen:?}"
    );
}

/// Attack (held): the aggregate nonce by addition (`Σ D_i` added, only the
/// `E_i` multiplied) is wsts' `Σ (D_i + ρ_i E_i)` on hostile shapes too:
/// repeated party ids, ids 0 and `u32::MAX`, D's that cancel, `E = D`,
/// `E = -D`, one party; and a length mismatch is refused, not summed short.
#[test]
fn the_aggregate_nonce_by_addition_is_wsts_on_hostile_shapes() {
    let mut rng = wsts::util::create_rng();
    let random = |rng: &mut _| -> PublicNonce { wsts::common::Nonce::random(rng).into() };
    let msg = [0x57u8; 32];
    let a = random(&mut rng);
    let b = random(&mut rng);
    let cancel = PublicNonce {
        D: negated(&a.D),
        E: b.E,
    };
    let same = PublicNonce { D: a.D, E: a.D };
    let opposite = PublicNonce {
        D: a.D,
        E: negated(&a.D),
    };
    let shapes: Vec<(Vec<u32>, Vec<PublicNonce>)> = vec![
        (vec![1], vec![a.clone()]),
        (vec![1, 1], vec![a.clone(), b.clone()]),
        (vec![0, u32::MAX], vec![a.clone(), b.clone()]),
        (vec![3, 2], vec![a.clone(), cancel.clone()]),
        (
            vec![1, 2, 3],
            vec![same.clone(), opposite.clone(), b.clone()],
        ),
        (vec![2, 2, 2], vec![a.clone(), a.clone(), a.clone()]),
    ];
    for (ids, nonces) in &shapes {
        let (r, compressed) = frost_net::taproot::aggregate_nonce(&msg, ids, nonces).unwrap();
        assert_eq!(r, compute::intermediate(&msg, ids, nonces).1, "{ids:?}");
        assert_eq!(
            frost_net::taproot::aggregate_nonce_compressed(&msg, ids, nonces, &compressed),
            Some(r)
        );
        let short = &ids[..ids.len() - 1];
        assert_eq!(
            frost_net::taproot::aggregate_nonce_compressed(&msg, short, nonces, &compressed),
            None,
            "{ids:?}"
        );
    }
}

/// A hostile relay on 127.0.0.1: its head is 1, its first poll answers
/// `batch` (seq 1, 2, ...), later polls nothing after a short wait, and it
/// holds every post `hold` before accepting it, counting the posts in
/// flight at once.
struct HostileRelay {
    url: String,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    posts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HostileRelay {
    fn start(batch: Vec<Vec<u8>>, hold: std::time::Duration) -> HostileRelay {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut body = vec![];
        for (i, m) in batch.iter().enumerate() {
            body.extend_from_slice(&(u64::try_from(i).unwrap() + 1).to_be_bytes());
            body.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
            body.extend_from_slice(m);
        }
        let body = Arc::new(body);
        let next = batch.len() + 1;
        let served = Arc::new(AtomicBool::new(false));
        let (peak, posts, now) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (p, n, k) = (peak.clone(), posts.clone(), now.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (body, served, peak, posts, now) = (
                    body.clone(),
                    served.clone(),
                    p.clone(),
                    n.clone(),
                    k.clone(),
                );
                std::thread::spawn(move || {
                    let mut req = vec![];
                    let mut buf = [0u8; 4096];
                    let head_end = loop {
                        let Ok(got) = conn.read(&mut buf) else { return };
                        if got == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..got]);
                        if let Some(at) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&req[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while req.len() < head_end + length {
                        let Ok(got) = conn.read(&mut buf) else { return };
                        if got == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..got]);
                    }
                    let answer = |conn: &mut std::net::TcpStream, headers: &str, b: &[u8]| {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                            b.len()
                        );
                        let _ = conn.write_all(b);
                    };
                    if head.starts_with("post ") {
                        let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(in_flight, Ordering::SeqCst);
                        std::thread::sleep(hold);
                        now.fetch_sub(1, Ordering::SeqCst);
                        let seq = posts.fetch_add(1, Ordering::SeqCst) + next;
                        answer(&mut conn, "", format!("{{\"seq\":{seq}}}").as_bytes());
                    } else if head.starts_with("get /head") {
                        answer(&mut conn, "", b"{\"next\":1}");
                    } else {
                        let first = !served.swap(true, Ordering::SeqCst);
                        if !first {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        let headers = format!("X-Relay-Next: {next}\r\nX-Relay-Lowest: 1\r\n");
                        answer(&mut conn, &headers, if first { &body } else { &[] });
                    }
                });
            }
        });
        HostileRelay { url, peak, posts }
    }
}

/// Attack (broke, fixed): the relay — hostile, or replaying what a network
/// attacker posted — answers one poll with a batch of authentic packets
/// (one nonce request of the coordinator's, replayed; a signer without the
/// key refuses each, so each has an answer to post). The signer posted
/// every packet's answers on a thread of its own, as many threads at once
/// as the batch had packets (a 16 MiB answer holds tens of thousands; a
/// thread that cannot be made panics the signer). Its posts in flight at
/// once are now bounded, and every answer is still posted before `step`
/// returns.
#[test]
fn a_batch_of_replayed_packets_gets_a_bounded_number_of_posts_in_flight() {
    use frost_signer::{SignerNode, SignerOptions};
    use std::sync::atomic::Ordering;
    let replays = 200usize;
    let probe = tempfile::tempdir().unwrap();
    let (_, key) = keyed_cores(probe.path(), true);
    let placeholder = HostileRelay::start(vec![], std::time::Duration::ZERO);
    let file = signer_file(&placeholder.url);
    let c = Codec::new(&file);
    let replayed = by_coordinator(&c, &nonce_request(key, 9, 1, [0x58; 32]).message);
    let relay = HostileRelay::start(
        vec![replayed; replays],
        std::time::Duration::from_millis(250),
    );
    let file = signer_file(&relay.url);
    let dir = tempfile::tempdir().unwrap();
    // Signer 1 holds no key: it refuses every nonce request with a post.
    let mut node = SignerNode::new(SignerOptions {
        id: 1,
        file,
        private_key: sk(0x5e, 0),
        state_path: dir.path().join("s1.json"),
        poll_wait: std::time::Duration::from_millis(10),
        allow_rotation: false,
        attest_interval: std::time::Duration::from_secs(3600),
    })
    .unwrap();
    let began = std::time::Instant::now();
    assert_eq!(node.step().unwrap(), replays);
    let took = began.elapsed();
    // Every refusal was posted before step returned (and the attestation
    // of a signer without a key is none).
    assert_eq!(relay.posts.load(Ordering::SeqCst), replays);
    let peak = relay.peak.load(Ordering::SeqCst);
    // At most the signer's 16 posting threads (`POST_THREADS`): the step's
    // own thread posts only when none can start.
    assert!(
        peak <= 16,
        "{peak} posts in flight at once for a batch of {replays} packets"
    );
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

/// The signer file of `common::set()` on `relay`.
fn signer_file(relay: &str) -> frost_net::SignerFile {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let mut v = serde_json::to_value(set()).unwrap();
    let m = v.as_object_mut().unwrap();
    m.insert("relay_url".into(), relay.into());
    m.insert(
        "coordinator_public_key".into(),
        sk(0xc0, 0).public_key(&secp).to_string().into(),
    );
    m.insert("network".into(), "regtest".into());
    m.insert(
        "contract".into(),
        "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc".into(),
    );
    serde_json::from_value(v).unwrap()
}
