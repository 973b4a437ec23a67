//! Red team of the signer's newest rules (issue #11): who a share request
//! may list and in which order, DKG round ids, the key set recorded in the
//! state file, nonces across rounds. Every test drives [`SignerCore`]
//! directly with authentic-looking envelopes: what a holder of the
//! coordinator's message key (or a relay replaying its packets) can send.

use frost_net::messages::Message;
use frost_net::wsts::net as w;
use frost_net::KeySet;
use frost_signer::{KeyHistory, SignerCore};

mod common;
use common::*;

/// The wsts binding value of party `id` and the Schnorr challenge a share
/// request's listing gives, as wsts' `sign_with_tweak` computes them.
fn binding_and_challenge(
    key: &bitcoin::secp256k1::PublicKey,
    list: &[w::NonceResponse],
    id: u32,
) -> (wsts::curve::scalar::Scalar, wsts::curve::scalar::Scalar) {
    let msg = &list[0].message;
    let nonces: Vec<_> = list.iter().flat_map(|n| n.nonces.iter().cloned()).collect();
    let ids: Vec<u32> = list.iter().map(|n| n.signer_id).collect();
    let rho = wsts::compute::binding(&wsts::compute::id(id), &nonces, msg);
    let (_, r) = wsts::compute::intermediate(msg, &ids, &nonces);
    let agg = frost_net::point(key).unwrap();
    (rho, wsts::compute::challenge(&agg, &r, msg))
}

/// Opens one round (sign id `sign_id`) on every core and returns their
/// nonce responses, in signer order.
fn open_round(
    cores: &mut [SignerCore],
    key: bitcoin::secp256k1::PublicKey,
    sign_id: u64,
    h: [u8; 32],
) -> Vec<w::NonceResponse> {
    cores
        .iter_mut()
        .map(|c| {
            c.handle(&sign_request(key, h)).unwrap();
            nonce_of(&c.handle(&nonce_request(key, sign_id, 1, h)).unwrap())
        })
        .collect()
}

/// Attack: wsts' binding value of a party hashes the list of nonces but not
/// which signer each nonce is listed under. A coordinator that keeps the
/// nonce list as it is and swaps the signer ids of the other entries keeps
/// our binding value (our effective nonce) fixed while the challenge
/// changes: several challenges to pick from for one nonce, the freedom a
/// ROS-style forgery over concurrent rounds needs. FIRE and the DKG test
/// round always list nonce responses in ascending signer id order, so a
/// signer answers only that order: for a given nonce list and set of
/// signers there is then one assignment.
#[test]
fn a_share_request_whose_signers_are_not_in_ascending_order_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [7u8; 32];
    let nonces = open_round(&mut cores, key, 5, h);
    // The same nonce list; signers 2 and 3 swapped on their entries.
    let mut swapped = nonces.clone();
    swapped[1].signer_id = 2;
    swapped[1].key_ids = vec![3];
    swapped[2].signer_id = 1;
    swapped[2].key_ids = vec![2];
    let (rho, c) = binding_and_challenge(&key, &nonces, 0);
    let (rho_swapped, c_swapped) = binding_and_challenge(&key, &swapped, 0);
    assert_eq!(rho, rho_swapped, "wsts binds the nonce list, not the ids");
    assert_ne!(c, c_swapped, "the challenge moves with the ids");
    let before = cores[0].rejected();
    let out = cores[0].handle(&share_request(key, swapped)).unwrap();
    assert!(out.is_empty(), "a share for a reordered listing: {out:?}");
    assert!(cores[0].rejected() > before);
    assert_eq!(cores[0].open_rounds(), 0, "the round's nonce is dropped");
    // The order FIRE uses is answered (a fresh round).
    let fresh = open_round(&mut cores, key, 6, h);
    assert!(is_share(
        &cores[0].handle(&share_request(key, fresh)).unwrap()
    ));
}

/// Attack (held since share requests embed the signers' own signed nonce
/// responses): with the listing in ascending order, a coordinator moves
/// another signer's nonce to a signer id that sent none (signer 2's nonce
/// listed as signer 3's): the nonce list, hence our binding value, stays
/// the same while the challenge and our Lagrange coefficient change (wsts'
/// binding leaves the ids out). The coordinator holds signer 2's genuine
/// envelope, not one of signer 3 saying that nonce: no share.
#[test]
fn a_nonce_moved_to_another_signer_id_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [8u8; 32];
    let nonces = open_round(&mut cores, key, 5, h);
    let honest = vec![nonces[0].clone(), nonces[1].clone()];
    let genuine: Vec<Vec<u8>> = honest
        .iter()
        .map(|n| seal_nonce(&codec(), key, n))
        .collect();
    let mut moved = honest.clone();
    moved[1].signer_id = 2;
    moved[1].key_ids = vec![3];
    let (rho, c) = binding_and_challenge(&key, &honest, 0);
    let (rho_moved, c_moved) = binding_and_challenge(&key, &moved, 0);
    assert_eq!(rho, rho_moved);
    assert_ne!(c, c_moved);
    let before = cores[0].rejected();
    let out = cores[0]
        .handle(&share_request_with(key, moved, genuine.clone()))
        .unwrap();
    assert!(
        out.is_empty(),
        "signer 1 signed signer 2's nonce listed as signer 3's: {out:?}"
    );
    assert!(cores[0].rejected() > before);
    assert_eq!(cores[0].open_rounds(), 0, "the round's nonce is dropped");
    // Signer 2's envelope relabelled as signer 3's: its signature is
    // signer 2's, so it does not open as signer 3's.
    let fresh = open_round(&mut cores, key, 6, h);
    let mut relabelled = seal_nonce(&codec(), key, &fresh[1]);
    relabelled[6..10].copy_from_slice(&3u32.to_be_bytes());
    let mut moved = vec![fresh[0].clone(), fresh[1].clone()];
    moved[1].signer_id = 2;
    moved[1].key_ids = vec![3];
    let out = cores[0]
        .handle(&share_request_with(key, moved, vec![relabelled]))
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    // The honest listing of a fresh round, with the genuine envelopes, is
    // answered.
    let fresh = open_round(&mut cores, key, 7, h);
    let listed = vec![fresh[0].clone(), fresh[1].clone()];
    let genuine = listed
        .iter()
        .map(|n| seal_nonce(&codec(), key, n))
        .collect();
    assert!(is_share(
        &cores[0]
            .handle(&share_request_with(key, listed, genuine))
            .unwrap()
    ));
}

/// Asserts that signer 1 makes no share for `request`, counts it as
/// rejected and drops the round's nonce.
fn no_share(core: &mut SignerCore, request: &frost_net::Envelope, what: &str) {
    let before = core.rejected();
    let open = core.open_rounds();
    let out = core.handle(request).unwrap();
    assert!(out.is_empty(), "{what}: a share: {out:?}");
    assert!(core.rejected() > before, "{what}: not counted as rejected");
    assert_eq!(core.open_rounds(), open - 1, "{what}: the nonce is kept");
}

/// Attack: a listed signer's envelope left out (the coordinator lists a
/// nonce no signer signed for this entry). Ours may be left out: we check
/// our own entry against our round.
#[test]
fn a_listed_signer_without_its_signed_nonce_response_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [10u8; 32];
    let c = codec();
    let n = open_round(&mut cores, key, 5, h);
    let listed = vec![n[0].clone(), n[1].clone(), n[2].clone()];
    // Signer 3's left out.
    let sealed = vec![seal_nonce(&c, key, &n[0]), seal_nonce(&c, key, &n[1])];
    no_share(
        &mut cores[0],
        &share_request_with(key, listed.clone(), sealed),
        "signer 3's left out",
    );
    // None at all (what every share request was before).
    let n = open_round(&mut cores, key, 6, h);
    let listed = vec![n[0].clone(), n[1].clone()];
    no_share(
        &mut cores[0],
        &share_request_with(key, listed, vec![]),
        "no envelopes",
    );
    // Signer 2's twice in place of signer 3's.
    let n = open_round(&mut cores, key, 7, h);
    let listed = vec![n[0].clone(), n[1].clone(), n[2].clone()];
    let two = seal_nonce(&c, key, &n[1]);
    no_share(
        &mut cores[0],
        &share_request_with(key, listed, vec![two.clone(), two]),
        "signer 2's twice",
    );
    // Only the others', not ours: answered.
    let n = open_round(&mut cores, key, 8, h);
    let listed = vec![n[0].clone(), n[1].clone()];
    let others = vec![seal_nonce(&c, key, &n[1])];
    assert!(is_share(
        &cores[0]
            .handle(&share_request_with(key, listed, others))
            .unwrap()
    ));
}

/// Attack: an envelope that does not open as the listed signer's nonce
/// response: signed by another signer's key, sealed for another peg (its
/// domain), a signer's packet of another kind, or bytes flipped.
#[test]
fn an_embedded_nonce_response_not_signed_by_its_signer_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [11u8; 32];
    let c = codec();
    let mut sign_id = 5;
    let mut with = |cores: &mut Vec<SignerCore>, forge: &dyn Fn(&w::NonceResponse) -> Vec<u8>| {
        let n = open_round(cores, key, sign_id, h);
        sign_id += 1;
        let listed = vec![n[0].clone(), n[1].clone()];
        share_request_with(key, listed, vec![forge(&n[1])])
    };
    let wrapped = |n: &w::NonceResponse| {
        Message::NonceResponse(frost_net::messages::Keyed {
            key,
            msg: n.clone(),
        })
    };
    // Signer 3's key signing signer 2's response.
    let r = with(&mut cores, &|n| {
        c.seal(frost_net::Sender::Signer(2), &sk(0x5e, 2), &wrapped(n))
            .unwrap()
    });
    no_share(&mut cores[0], &r, "signed by signer 3's key");
    // Signer 3 sealing signer 2's response as its own.
    let r = with(&mut cores, &|n| {
        c.seal(frost_net::Sender::Signer(3), &sk(0x5e, 2), &wrapped(n))
            .unwrap()
    });
    no_share(&mut cores[0], &r, "signer 3 sealing signer 2's response");
    // Signer 2's own, for another peg.
    let mut other = set();
    other.threshold = 3;
    let elsewhere = codec_of(&other);
    let r = with(&mut cores, &|n| seal_nonce(&elsewhere, key, n));
    no_share(&mut cores[0], &r, "another peg's domain");
    // Signer 2's heartbeat.
    let r = with(&mut cores, &|_| {
        c.seal(
            frost_net::Sender::Signer(2),
            &sk(0x5e, 1),
            &Message::Heartbeat(frost_net::messages::Heartbeat {
                time: 1,
                keys: vec![key],
            }),
        )
        .unwrap()
    });
    no_share(&mut cores[0], &r, "a heartbeat");
    // A bit flipped in the body.
    let r = with(&mut cores, &|n| {
        let mut b = seal_nonce(&c, key, n);
        b[20] ^= 1;
        b
    });
    no_share(&mut cores[0], &r, "a bit flipped");
}

/// Attack: signer 2's genuine, signed nonce response, but of another round
/// (another sign id, another iteration) or another message, embedded for
/// this round's listing.
#[test]
fn an_embedded_nonce_response_of_another_round_or_message_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let (h, other_h) = ([12u8; 32], [13u8; 32]);
    let c = codec();
    for (i, (sign_id, iter, msg)) in [(99u64, 1u64, h), (20, 2, h), (21, 1, other_h)]
        .into_iter()
        .enumerate()
    {
        let this = 30 + u64::try_from(i).unwrap();
        let n = open_round(&mut cores, key, this, h);
        cores[1].handle(&sign_request(key, msg)).unwrap();
        let elsewhere = nonce_of(
            &cores[1]
                .handle(&nonce_request(key, sign_id, iter, msg))
                .unwrap(),
        );
        // The listing keeps signer 2's entry of this round; the envelope is
        // what signer 2 really signed elsewhere (any edit to it would break
        // its signature).
        let listed = vec![n[0].clone(), n[1].clone()];
        let r = share_request_with(key, listed, vec![seal_nonce(&c, key, &elsewhere)]);
        no_share(
            &mut cores[0],
            &r,
            &format!("signer 2's response of {sign_id}/{iter}"),
        );
    }
}

/// Attack: the entry lists another nonce than the one its signer signed
/// (signer 2's nonce of another round, or signer 3's, under signer 2's id
/// with signer 2's genuine envelope of this round), or other key ids.
#[test]
fn an_entry_with_another_nonce_than_its_signer_signed_gets_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [14u8; 32];
    let c = codec();
    let other = open_round(&mut cores, key, 40, h);
    for (i, nonce) in [other[1].nonces.clone(), other[2].nonces.clone()]
        .into_iter()
        .enumerate()
    {
        let n = open_round(&mut cores, key, 50 + u64::try_from(i).unwrap(), h);
        let genuine = seal_nonce(&c, key, &n[1]);
        let mut swapped = n[1].clone();
        swapped.nonces = nonce;
        let listed = vec![n[0].clone(), swapped];
        no_share(
            &mut cores[0],
            &share_request_with(key, listed, vec![genuine]),
            "another nonce than signed",
        );
    }
}

/// Attack: a relay keeps the coordinator's `DkgBegin` of a round that
/// failed and posts it again later. The signer held no key of that round,
/// so "not above the newest key's round" let it join the same round id a
/// second time, with a fresh polynomial, driven by replayed packets.
/// A round id is joined once.
#[test]
fn a_failed_dkg_round_replayed_by_the_relay_is_not_joined_again() {
    let dir = tempfile::tempdir().unwrap();
    // A pending key: the signer joins the coordinator's next DKG.
    let (mut cores, _) = keyed_cores(dir.path(), false);
    let c = &mut cores[0];
    let begin = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 2 }));
    let out = c.handle(&begin).unwrap();
    assert!(
        matches!(out.as_slice(), [Message::DkgPublicShares(_)]),
        "{out:?}"
    );
    // The relay echoes a party's own packets back to it.
    let own = |m: Message| frost_net::Envelope {
        sender: frost_net::Sender::Signer(1),
        message: m,
    };
    for m in out {
        c.handle(&own(m)).unwrap();
    }
    // The round fails: the coordinator ends it naming only this signer,
    // below the DKG threshold.
    let out = c
        .handle(&from_coordinator(Message::DkgPrivateBegin(
            w::DkgPrivateBegin {
                dkg_id: 2,
                signer_ids: vec![0],
                key_ids: vec![1],
            },
        )))
        .unwrap();
    for m in out {
        c.handle(&own(m)).unwrap();
    }
    let out = c
        .handle(&from_coordinator(Message::DkgEndBegin(w::DkgEndBegin {
            dkg_id: 2,
            signer_ids: vec![0],
            key_ids: vec![1],
        })))
        .unwrap();
    assert!(
        out.iter().any(|m| matches!(
            m,
            Message::DkgEnd(w::DkgEnd {
                status: w::DkgStatus::Failure(_),
                ..
            })
        )),
        "the round should have failed: {out:?}"
    );
    assert_eq!(c.history().keys.len(), 1);
    // The relay posts the old DkgBegin again.
    let before = c.rejected();
    let out = c.handle(&begin).unwrap();
    assert!(out.is_empty(), "joined round 2 a second time: {out:?}");
    assert!(c.rejected() > before);
    // Nor after a restart: the round joined is on disk.
    let mut c = core_of(1, &set(), dir.path().join("s1.json"), false).unwrap();
    assert!(
        c.handle(&begin).unwrap().is_empty(),
        "joined after a restart"
    );
    assert_eq!(c.history().joined_dkg_id, 2);
    // The coordinator's retry, a new id, is joined.
    let retry = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 3 }));
    assert!(matches!(
        c.handle(&retry).unwrap().as_slice(),
        [Message::DkgPublicShares(_)]
    ));
}

/// Attack (held): the key set recorded in a state file edited — a lower
/// threshold, its hash recomputed so the hash check passes — or dropped
/// while the signer runs under another set. Either way the key's own
/// parameters no longer fit and the file is refused at start.
#[test]
fn a_state_file_whose_recorded_set_was_edited_and_rehashed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ = keyed_cores(dir.path(), true);
    let path = dir.path().join("s1.json");
    let mut h = KeyHistory::load(&path, &set(), 1).unwrap();
    let mut edited = set();
    edited.threshold = 1;
    h.keys[0].set = Some(KeySet::of(&edited));
    h.save(&path).unwrap();
    let e = KeyHistory::load(&path, &set(), 1).unwrap_err();
    assert!(e.contains("do not fit"), "{e}");
    // Parameters edited too: the commitments no longer have threshold terms.
    let mut h2 = h.clone();
    h2.keys[0].params.threshold = 1;
    h2.save(&path).unwrap();
    let e = KeyHistory::load(&path, &set(), 1).unwrap_err();
    assert!(e.contains("terms"), "{e}");
    // A key set naming a signer the signer file now gives other key ids.
    let mut moved = set();
    moved.signers[1].key_ids = vec![3];
    moved.signers[2].key_ids = vec![2];
    let mut h3 = h.clone();
    h3.keys[0].set = Some(KeySet::of(&set()));
    h3.save(&path).unwrap();
    let e = KeyHistory::load(&path, &moved, 1).unwrap_err();
    assert!(e.contains("never change"), "{e}");
}

/// Attack (held): nonce reuse across rounds. The same round asked again
/// gets the same nonce (never a second one), another message under the
/// same round id gets none, and every other round — another sign id, another
/// iteration — gets a nonce of its own.
#[test]
fn every_round_has_its_own_nonce_and_a_round_id_never_gets_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let c = &mut cores[0];
    let (a, b) = ([1u8; 32], [2u8; 32]);
    c.handle(&sign_request(key, a)).unwrap();
    c.handle(&sign_request(key, b)).unwrap();
    let first = nonce_of(&c.handle(&nonce_request(key, 9, 1, a)).unwrap());
    assert_eq!(
        nonce_of(&c.handle(&nonce_request(key, 9, 1, a)).unwrap()),
        first
    );
    let out = c.handle(&nonce_request(key, 9, 1, b)).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
    let mut seen = vec![first.nonces[0].clone()];
    for (sign_id, iter, h) in [(9, 2, a), (10, 1, a), (11, 1, b), (12, 7, b)] {
        let n = nonce_of(&c.handle(&nonce_request(key, sign_id, iter, h)).unwrap());
        assert!(
            !seen.contains(&n.nonces[0]),
            "nonce reused in {sign_id}/{iter}"
        );
        seen.push(n.nonces[0].clone());
    }
    assert_eq!(c.open_rounds(), 5);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Attack (held), across a signer-set change: signer 1 runs under a
    /// four-signer set and holds a key made by the first three. Hostile
    /// listings — any subset and order of genuine nonces of signers 2 and 3,
    /// the newcomer (signer 4, key id 4) listed with a nonce, entries moved
    /// to other ids — get a share only when they list exactly our own nonce,
    /// in ascending id order, and only holders of the key with the key ids
    /// they held; never a panic.
    #[test]
    fn across_a_set_change_a_share_only_for_ascending_listings_of_the_keys_holders(
        picks in proptest::collection::vec((0usize..4, 0u32..4), 1..5),
        ours_at in 0usize..5,
        sign_id in 10u64..1_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut cores, key) = keyed_cores(dir.path(), true);
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let mut four = set();
        four.signers.push(frost_net::SignerInfo {
            id: 4,
            public_key: sk(0x5e, 3).public_key(&secp),
            key_ids: vec![4],
            private_key: None,
        });
        let mut me = core_of(1, &four, dir.path().join("s1.json"), false)
            .unwrap();
        let h = [9u8; 32];
        me.handle(&sign_request(key, h)).unwrap();
        let ours = nonce_of(&me.handle(&nonce_request(key, sign_id, 1, h)).unwrap());
        let mut pool = vec![];
        for c in cores.iter_mut().skip(1) {
            c.handle(&sign_request(key, h)).unwrap();
            pool.push(nonce_of(&c.handle(&nonce_request(key, sign_id, 1, h)).unwrap()));
        }
        // Entries: (which nonce: 0/1 genuine of signers 2/3, 2 ours, 3 a
        // copy of signer 2's; listed under wsts id 0..=3).
        let mut list = vec![];
        for (which, as_id) in picks {
            let mut n = match which {
                0 | 3 => pool[0].clone(),
                1 => pool[1].clone(),
                _ => ours.clone(),
            };
            n.signer_id = as_id;
            n.key_ids = vec![as_id + 1];
            list.push(n);
        }
        list.insert(ours_at.min(list.len()), ours.clone());
        let out = me
            .handle(&share_request_under(&codec_of(&four), key, list.clone()))
            .unwrap();
        let ascending = list.windows(2).all(|p| p[0].signer_id < p[1].signer_id);
        let holders_only = list.iter().all(|n| n.signer_id < 3);
        let exactly_ours = list.iter().filter(|n| n.signer_id == 0).count() == 1
            && list.iter().any(|n| n.signer_id == 0 && n.nonces == ours.nonces);
        if is_share(&out) {
            proptest::prop_assert!(ascending && holders_only && exactly_ours, "{list:?}");
        }
        // Every listing names us: the round is answered or dropped, never kept.
        proptest::prop_assert_eq!(me.open_rounds(), 0);
    }
}
