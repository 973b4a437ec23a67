//! Red-team attacks on the signer's round and DKG rules, on [`SignerCore`]
//! directly (the envelope has already been opened and checked).
//!
//! Each attack found a break first (now fixed: the test names the property
//! that holds); `probe_*` tests tried an attack and found it stopped.

use frost_net::messages::Message;
use frost_net::wsts::net as w;
use frost_signer::MAX_OPEN_ROUNDS;

mod common;
use common::*;

/// Attack: evict a round by opening MAX_OPEN_ROUNDS others (a replaying
/// relay can do this with old, still-allowed nonce requests), re-open the
/// same round id, then replay the share request that listed the OLD nonce.
/// Property: the re-opened round id gets no nonce at all, and the old
/// request never gets a share.
#[test]
fn probe_evicted_round_reopened_never_answers_the_old_share_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), false);
    let h = [7u8; 32];
    let mut old = vec![];
    for c in &mut cores {
        c.handle(&sign_request(key, h)).unwrap();
        old.push(nonce_of(&c.handle(&nonce_request(key, 100, 1, h)).unwrap()));
    }
    let c = &mut cores[0];
    for s in 0..u64::try_from(MAX_OPEN_ROUNDS).unwrap() {
        std::thread::sleep(std::time::Duration::from_millis(1));
        nonce_of(&c.handle(&nonce_request(key, 1000 + s, 1, h)).unwrap());
    }
    assert_eq!(c.open_rounds(), MAX_OPEN_ROUNDS);
    // The round id had its nonce: re-opening it gets none (a round id gets
    // one nonce, ever; see `redteam_inflight.rs`).
    let reopened = c.handle(&nonce_request(key, 100, 1, h)).unwrap();
    assert!(
        reopened.is_empty(),
        "a round id got a second nonce: {reopened:?}"
    );
    assert!(c
        .handle(&share_request(key, old.clone()))
        .unwrap()
        .is_empty());
}

/// Attack (malicious coordinator): a second nonce request for an open round
/// with another signature type, to get a second nonce or to change what
/// the nonce signs. Property: refused, and the open nonce is not replaced.
#[test]
fn probe_second_nonce_request_with_another_signature_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), false);
    let h = [8u8; 32];
    let c = &mut cores[0];
    c.handle(&sign_request(key, h)).unwrap();
    let first = nonce_of(&c.handle(&nonce_request(key, 9, 1, h)).unwrap());
    let mut other = nonce_request(key, 9, 1, h);
    if let Message::NonceRequest(r) = &mut other.message {
        r.msg.signature_type = w::SignatureType::Schnorr;
    }
    let out = c.handle(&other).unwrap();
    assert!(matches!(out.as_slice(), [Message::Refusal(_)]), "{out:?}");
    assert_eq!(
        nonce_of(&c.handle(&nonce_request(key, 9, 1, h)).unwrap()),
        first
    );
}

/// Attack (malicious coordinator, key-share extraction): get two shares
/// with one nonce by sending the share request for a round twice with two
/// different participant sets (different Lagrange coefficients give two
/// independent equations in the same nonce and reveal the key share).
/// Property: at most one share per nonce.
#[test]
fn probe_one_share_per_nonce_even_with_another_participant_set() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), false);
    let h = [10u8; 32];
    let mut nonces = vec![];
    for c in &mut cores {
        c.handle(&sign_request(key, h)).unwrap();
        nonces.push(nonce_of(&c.handle(&nonce_request(key, 11, 1, h)).unwrap()));
    }
    let c = &mut cores[0];
    let a = vec![nonces[0].clone(), nonces[1].clone()];
    let b = vec![nonces[0].clone(), nonces[2].clone()];
    assert!(is_share(&c.handle(&share_request(key, a)).unwrap()));
    assert!(c.handle(&share_request(key, b)).unwrap().is_empty());
}

/// Attack (malicious signer below threshold, or a relay dropping one
/// message): let every honest signer finish a DKG and store its share, then
/// make the coordinator's gate fail (withhold our own `KeyStored`, refuse the
/// test signature, or drop one share in the test round). The coordinator
/// never adds the key and retries with the next DKG id; but the honest
/// signers now "hold a key" and, without `--allow-rotation`, refuse every
/// new DKG forever. The peg can never get a key without every operator
/// restarting with `--allow-rotation` (a one-message liveness kill; the
/// "failed DKG leaves signers unusable" finding, through the gate).
///
/// Here the signers hold a share of a DKG-1 key the coordinator never
/// accepted (never used in any signing round); the coordinator's retry is
/// DKG 2. Property: a signer joins the next DKG while no key of its history
/// was accepted by the coordinator (e.g. signed in a coordinator round, or
/// confirmed by a coordinator message). Fixed: a DKG's key stays pending
/// until the coordinator's `KeyAccepted`, sent once its gate passed.
#[test]
fn a_key_the_coordinator_never_accepted_does_not_block_later_dkgs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, _key) = keyed_cores(dir.path(), false);
    let out = cores[0]
        .handle(&from_coordinator(Message::DkgBegin(w::DkgBegin {
            dkg_id: 2,
        })))
        .unwrap();
    assert!(
        out.iter().any(|m| matches!(m, Message::DkgPublicShares(_))),
        "the signer refused the coordinator's retry DKG because it holds the \
         share of a key whose DKG the coordinator rejected: {out:?}"
    );
}

/// Attack (relay replay): replay the DkgBegin of the DKG in progress, or an
/// older one, to restart the signer's DKG (new polynomial) under the same id
/// so that honest signers hold shares of two polynomials for one round.
/// Property: an equal or lower DkgBegin never restarts a DKG in progress.
#[test]
fn probe_a_replayed_dkg_begin_does_not_restart_the_dkg() {
    let dir = tempfile::tempdir().unwrap();
    let set = set();
    let mut c = core_of(1, &set, dir.path().join("fresh.json"), false).unwrap();
    let out = c
        .handle(&from_coordinator(Message::DkgBegin(w::DkgBegin {
            dkg_id: 5,
        })))
        .unwrap();
    let first = out
        .iter()
        .find_map(|m| match m {
            Message::DkgPublicShares(s) => Some(s.clone()),
            _ => None,
        })
        .expect("public shares");
    for id in [5, 4, 1] {
        let again = c
            .handle(&from_coordinator(Message::DkgBegin(w::DkgBegin {
                dkg_id: id,
            })))
            .unwrap();
        assert!(
            !again
                .iter()
                .any(|m| matches!(m, Message::DkgPublicShares(s) if s.comms != first.comms)),
            "DkgBegin {id} restarted the DKG with a new polynomial"
        );
    }
}

/// Fuzz (malicious coordinator, key-share extraction): open one round per
/// signer, then throw many rewritten share requests at signer 1 (entries
/// dropped, duplicated, swapped, nonces moved between signers, message and
/// iteration changed, replays). Property: never a panic, and at most one
/// share per nonce it handed out, only for a request listing that nonce
/// under its own id with the round's message.
#[test]
fn probe_rewritten_share_requests_get_at_most_one_share_per_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), false);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..40u64 {
        let h = [u8::try_from(round % 200).unwrap() + 1; 32];
        let mut nonces = vec![];
        for c in &mut cores {
            c.handle(&sign_request(key, h)).unwrap();
            nonces.push(nonce_of(
                &c.handle(&nonce_request(key, 500 + round, 1, h)).unwrap(),
            ));
        }
        let mut shares = 0;
        for _ in 0..12 {
            let mut req = nonces.clone();
            match next() % 7 {
                0 => req.swap(0, 1 + usize::try_from(next() % 2).unwrap()),
                1 => {
                    let i = 1 + usize::try_from(next() % 2).unwrap();
                    req[i].nonces = nonces[0].nonces.clone();
                }
                2 => {
                    let dup = req[0].clone();
                    req.push(dup);
                }
                3 => req[0].message = vec![0xee; 32],
                4 => {
                    for n in &mut req {
                        n.sign_iter_id = 1 + next() % 3;
                    }
                }
                5 => req.truncate(1 + usize::try_from(next() % 3).unwrap()),
                _ => {}
            }
            let out = cores[0].handle(&share_request(key, req.clone())).unwrap();
            if is_share(&out) {
                shares += 1;
                let mine: Vec<_> = req.iter().filter(|n| n.signer_id == 0).collect();
                assert_eq!(mine.len(), 1);
                assert_eq!(mine[0].nonces, nonces[0].nonces);
                assert_eq!(mine[0].message, h.to_vec());
            }
        }
        assert!(shares <= 1, "round {round}: {shares} shares for one nonce");
    }
}
