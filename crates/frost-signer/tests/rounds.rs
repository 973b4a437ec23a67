//! The signer's round rules, on [`SignerCore`] directly: a share only for
//! an open round listing exactly our own nonce, once; nonces only for what
//! a sign request asked; no key, no panic.

use bitcoin::secp256k1::Secp256k1;
use frost_net::messages::Message;
use frost_net::wsts::net as w;
use frost_signer::KeyHistory;
use proptest::prelude::*;

mod common;
use common::*;

#[test]
fn a_share_only_for_our_own_open_nonce_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [3u8; 32];
    let mut nonces = vec![];
    for c in &mut cores {
        assert!(c.handle(&sign_request(key, h)).unwrap().is_empty());
        nonces.push(nonce_of(&c.handle(&nonce_request(key, 5, 1, h)).unwrap()));
    }
    // Asked again, the same nonce (never a second one).
    assert_eq!(
        nonce_of(&cores[0].handle(&nonce_request(key, 5, 1, h)).unwrap()),
        nonces[0]
    );
    // A request listing another nonce under our id: no share, round dropped.
    let mut forged = nonces.clone();
    forged[0].nonces = nonces[1].nonces.clone();
    let before = cores[0].rejected();
    assert!(cores[0]
        .handle(&share_request(key, forged))
        .unwrap()
        .is_empty());
    assert!(cores[0].rejected() > before);
    assert!(
        cores[0]
            .handle(&share_request(key, nonces.clone()))
            .unwrap()
            .is_empty(),
        "the round's nonce is gone after a forged request"
    );
    // Signer 2 answers the genuine request once, then never again.
    let out = cores[1]
        .handle(&share_request(key, nonces.clone()))
        .unwrap();
    assert!(is_share(&out), "{out:?}");
    assert!(cores[1]
        .handle(&share_request(key, nonces.clone()))
        .unwrap()
        .is_empty());
    assert_eq!(cores[1].open_rounds(), 0);
    // A request not listing signer 3 keeps its round open.
    let without_3: Vec<_> = nonces[..2].to_vec();
    assert!(cores[2]
        .handle(&share_request(key, without_3))
        .unwrap()
        .is_empty());
    assert_eq!(cores[2].open_rounds(), 1);
    assert!(is_share(
        &cores[2]
            .handle(&share_request(key, nonces.clone()))
            .unwrap()
    ));
    // A relabelled round (another iteration) has no nonce: no share.
    let mut relabelled = nonces.clone();
    for n in &mut relabelled {
        n.sign_iter_id = 2;
    }
    assert!(cores[2]
        .handle(&share_request(key, relabelled))
        .unwrap()
        .is_empty());
}

#[test]
fn a_restarted_signer_has_no_nonce_to_sign_with() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [4u8; 32];
    let mut nonces = vec![];
    for c in &mut cores {
        c.handle(&sign_request(key, h)).unwrap();
        nonces.push(nonce_of(&c.handle(&nonce_request(key, 6, 1, h)).unwrap()));
    }
    let set = set();
    let mut restarted = core_of(1, &set, dir.path().join("s1.json"), false).unwrap();
    assert!(restarted
        .handle(&share_request(key, nonces.clone()))
        .unwrap()
        .is_empty());
    // Nor will it make a nonce for a round nobody asked it to sign now.
    let out = restarted.handle(&nonce_request(key, 6, 1, h)).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
}

#[test]
fn nonces_only_for_asked_digests_and_held_keys_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let c = &mut cores[0];
    // Not asked by a sign request.
    let out = c.handle(&nonce_request(key, 1, 1, [9; 32])).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
    // A key it does not hold.
    let other = sk(0x11, 0).public_key(&Secp256k1::new());
    c.handle(&sign_request(other, [9; 32])).unwrap();
    let out = c.handle(&nonce_request(other, 1, 1, [9; 32])).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
    // A signer without any key: refusals, never a panic.
    let set = set();
    let mut keyless = core_of(2, &set, dir.path().join("none.json"), false).unwrap();
    keyless.handle(&sign_request(key, [9; 32])).unwrap();
    let out = keyless.handle(&nonce_request(key, 1, 1, [9; 32])).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
    assert_eq!(keyless.open_rounds(), 0);
}

#[test]
fn a_signer_holding_a_key_refuses_a_new_dkg_unless_rotation_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, _) = keyed_cores(dir.path(), true);
    let begin = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 2 }));
    assert!(cores[0].handle(&begin).unwrap().is_empty());
    let set = set();
    let mut rotating = core_of(1, &set, dir.path().join("s1.json"), true).unwrap();
    let out = rotating.handle(&begin).unwrap();
    assert!(
        matches!(out.as_slice(), [Message::DkgPublicShares(_)]),
        "{out:?}"
    );
    // An old round id (the history's own) is refused even so.
    let old = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 1 }));
    assert!(rotating.handle(&old).unwrap().is_empty());
    assert_eq!(rotating.history().keys.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Authentic but hostile coordinator messages (any ids, any nonces of
    /// any signer, any keys) never panic the signer and never get a share
    /// for a nonce it did not make in that round.
    #[test]
    fn hostile_requests_never_panic_or_get_a_foreign_share(
        ops in proptest::collection::vec((0u8..6, 0u64..3, 0u64..3, 0usize..3, any::<bool>()), 1..24)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut cores, key) = keyed_cores(dir.path(), true);
        let other = sk(0x11, 0).public_key(&Secp256k1::new());
        let h = [5u8; 32];
        // Nonces of signers 2 and 3, genuinely made, for rounds signer 1 may never open.
        let mut pool = vec![];
        for c in cores.iter_mut().skip(1) {
            c.handle(&sign_request(key, h)).unwrap();
            pool.push(nonce_of(&c.handle(&nonce_request(key, 1, 1, h)).unwrap()));
        }
        let mut mine: Vec<w::NonceResponse> = vec![];
        let c = &mut cores[0];
        for (op, sign_id, iter, pick, flag) in ops {
            let k = if flag { other } else { key };
            let env = match op {
                0 => sign_request(k, h),
                1 => nonce_request(k, sign_id, iter, h),
                2 => from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: sign_id })),
                _ => {
                    let mut list = pool.clone();
                    let mut me = pool[pick % pool.len()].clone();
                    me.signer_id = 0;
                    me.key_ids = vec![1];
                    if op == 5 {
                        if let Some(m) = mine.get(pick % mine.len().max(1)) {
                            me = m.clone();
                        }
                    }
                    me.sign_id = sign_id;
                    me.sign_iter_id = iter;
                    for n in &mut list {
                        n.sign_id = sign_id;
                        n.sign_iter_id = iter;
                    }
                    list.insert(0, me);
                    share_request(k, list)
                }
            };
            let out = c.handle(&env).unwrap();
            for m in &out {
                match m {
                    Message::NonceResponse(r) => mine.push(r.msg.clone()),
                    Message::SignatureShareResponse(r) => {
                        // Only ever for a round whose nonce it made itself.
                        prop_assert!(op == 5);
                        prop_assert!(mine.iter().any(|n| (n.sign_id, n.sign_iter_id) == (r.msg.sign_id, r.msg.sign_iter_id)));
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn a_key_is_pending_until_the_coordinator_accepts_it_and_acceptance_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cores, key) = keyed_cores(dir.path(), true);
    drop(cores);
    // Make signer 1's key pending again, as a fresh DKG leaves it.
    let path = dir.path().join("s1.json");
    let set = set();
    let mut h = KeyHistory::load(&path, &set, 1).unwrap();
    h.keys[0].accepted = false;
    h.save(&path).unwrap();
    let mut c = core_of(1, &set, path.clone(), false).unwrap();
    // A pending key (its DKG's gate may have failed) does not block the retry...
    let begin = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 2 }));
    assert!(matches!(
        c.handle(&begin).unwrap().as_slice(),
        [Message::DkgPublicShares(_)]
    ));
    // ...and once the coordinator says the key passed, it counts as held,
    // also after a restart.
    let accepted = from_coordinator(Message::KeyAccepted(frost_net::messages::KeyStored {
        dkg_id: 1,
        key,
    }));
    assert!(c.handle(&accepted).unwrap().is_empty());
    let mut restarted = core_of(1, &set, path, false).unwrap();
    assert!(restarted.history().keys[0].accepted);
    let next = from_coordinator(Message::DkgBegin(w::DkgBegin { dkg_id: 3 }));
    assert!(
        restarted.handle(&next).unwrap().is_empty(),
        "rotation is not allowed"
    );
}

/// After a signer-set change the current set may list signers an old key
/// was never made with: a share request naming one of them (or a holder
/// with other key ids) gets no share, and the round's nonce is dropped.
#[test]
fn no_share_when_the_request_lists_a_signer_the_key_was_not_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [4u8; 32];
    let mut nonces = vec![];
    for c in cores.iter_mut().take(2) {
        assert!(c.handle(&sign_request(key, h)).unwrap().is_empty());
        nonces.push(nonce_of(&c.handle(&nonce_request(key, 5, 1, h)).unwrap()));
    }
    let mut stranger = nonces[1].clone();
    stranger.signer_id = 3;
    stranger.key_ids = vec![4];
    let mut listed = nonces.clone();
    listed.push(stranger);
    let before = cores[0].rejected();
    assert!(cores[0]
        .handle(&share_request(key, listed))
        .unwrap()
        .is_empty());
    assert!(cores[0].rejected() > before);
    assert_eq!(cores[0].open_rounds(), 0, "the nonce is gone");
    // A holder listed with key ids it did not hold under the key's set.
    let mut relabelled = nonces.clone();
    relabelled[0].key_ids = vec![1, 3];
    assert!(cores[1]
        .handle(&share_request(key, relabelled))
        .unwrap()
        .is_empty());
    assert_eq!(cores[1].open_rounds(), 0);
    // The key's own holders, as they answered, get shares (fresh round).
    let mut fresh = vec![];
    for c in cores.iter_mut().take(2) {
        fresh.push(nonce_of(&c.handle(&nonce_request(key, 6, 1, h)).unwrap()));
    }
    assert!(is_share(
        &cores[0].handle(&share_request(key, fresh)).unwrap()
    ));
}

/// A state file written before keys recorded their signer set is read as
/// made under the set it is read with (its parameters must fit it, as
/// before), and the set is recorded from then on; under a changed set such
/// a file is refused rather than guessed at.
#[test]
fn a_history_without_recorded_sets_is_read_as_made_under_the_current_set() {
    let dir = tempfile::tempdir().unwrap();
    let _ = keyed_cores(dir.path(), true);
    let path = dir.path().join("s1.json");
    let mut h = KeyHistory::load(&path, &set(), 1).unwrap();
    assert_eq!(h.keys[0].set, Some(frost_net::KeySet::of(&set())));
    h.keys[0].set = None;
    h.save(&path).unwrap();
    assert!(!std::fs::read_to_string(&path).unwrap().contains("\"hash\""));
    let back = KeyHistory::load(&path, &set(), 1).unwrap();
    assert_eq!(back.keys[0].set, Some(frost_net::KeySet::of(&set())));
    let mut four = set();
    four.signers.push(frost_net::SignerInfo {
        id: 4,
        public_key: sk(0x5e, 3).public_key(&Secp256k1::new()),
        key_ids: vec![4],
        private_key: None,
    });
    let e = KeyHistory::load(&path, &four, 1).unwrap_err();
    assert!(e.contains("do not fit"), "{e}");
}

#[test]
fn rounds_in_flight_keep_their_nonces_while_passed_over_rounds_fill_the_table() {
    // Round A is in flight (our nonce listed in its coming share request)
    // while MAX_OPEN_ROUNDS newer rounds open and pass signer 3 over (FIRE
    // had their threshold without it): A's nonce stays, and signs once.
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [9u8; 32];
    for c in &mut cores {
        assert!(c.handle(&sign_request(key, h)).unwrap().is_empty());
    }
    let a: Vec<_> = cores
        .iter_mut()
        .map(|c| nonce_of(&c.handle(&nonce_request(key, 100, 1, h)).unwrap()))
        .collect();
    let passed = frost_signer::MAX_OPEN_ROUNDS as u64;
    for sign_id in 101..=100 + passed {
        let n: Vec<_> = cores
            .iter_mut()
            .map(|c| nonce_of(&c.handle(&nonce_request(key, sign_id, 1, h)).unwrap()))
            .collect();
        // The request lists signers 1 and 2 only.
        assert!(cores[2]
            .handle(&share_request(key, n[..2].to_vec()))
            .unwrap()
            .is_empty());
    }
    assert_eq!(cores[2].open_rounds(), frost_signer::MAX_OPEN_ROUNDS);
    let out = cores[2].handle(&share_request(key, a.clone())).unwrap();
    assert!(is_share(&out), "round A's nonce was dropped: {out:?}");
    // Once only: the nonce is gone after its share.
    assert!(cores[2].handle(&share_request(key, a)).unwrap().is_empty());
}
