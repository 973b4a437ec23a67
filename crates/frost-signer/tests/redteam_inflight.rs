//! Red team, issue #16: many rounds in flight against one signer.
//!
//! The attacker is a relay that replays any coordinator packet it saw, and a
//! thief of the coordinator's message key that sends any request it likes:
//! both may interleave nonce and share requests of many rounds, reopen round
//! ids, fill the open-rounds table so rounds are evicted, and list one
//! round's nonce in another round's share request. Two shares under one
//! nonce (with two challenges) would give away the signer's key share; a
//! share under a nonce made for another round would too, once that round is
//! signed. These tests drive [`frost_signer::SignerCore`] directly.

use std::collections::{HashMap, HashSet};

use frost_net::messages::Message;
use frost_net::wsts::net as w;
use proptest::prelude::*;

mod common;
use common::*;

/// One step of a hostile coordinator / relay against signer 1.
#[derive(Debug, Clone)]
enum Op {
    /// A nonce request for round (sign id, iteration) with digest a or b
    /// (fresh, a replay, or a reopening of a round already signed).
    Nonce { round: usize, digest_b: bool },
    /// A share request for `round` listing, for signer 1, the nonce
    /// response it issued `pick`-th (of any round), relabelled with the
    /// round's ids or not, beside the other signers' genuine nonces of
    /// `round`; `others` says which of signers 2 and 3 are listed.
    Share {
        round: usize,
        pick: usize,
        relabel: bool,
        others: u8,
    },
    /// A share request for `round` that passes signer 1 over.
    PassOver { round: usize },
    /// `n` fresh rounds opened (to evict older ones from the table).
    Fill { n: usize },
}

const ROUNDS: usize = 8;

/// The nonce response to a nonce request, if the signer gave one (another
/// signer asked for an open round with another digest refuses).
fn try_nonce(out: &[Message]) -> Option<w::NonceResponse> {
    match out {
        [Message::NonceResponse(r)] => Some(r.msg.clone()),
        _ => None,
    }
}

/// Records a nonce response signer 1 sent; one nonce is only ever the
/// answer for one round id.
fn record(
    n: &w::NonceResponse,
    issued: &mut Vec<w::NonceResponse>,
    issued_for: &mut HashMap<Vec<u8>, (u64, u64)>,
) {
    let bytes = serde_json::to_vec(&n.nonces).unwrap();
    let round = (n.sign_id, n.sign_iter_id);
    // A repeated request of an open round gets the same answer.
    assert_eq!(
        *issued_for.entry(bytes).or_insert(round),
        round,
        "one nonce issued for two rounds"
    );
    issued.push(n.clone());
}

fn round_ids(i: usize) -> (u64, u64) {
    let i = u64::try_from(i).unwrap();
    (1 + i / 2, 1 + i % 2)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ROUNDS, any::<bool>()).prop_map(|(round, digest_b)| Op::Nonce { round, digest_b }),
        4 => (0..ROUNDS, 0usize..64, any::<bool>(), 0u8..4).prop_map(|(round, pick, relabel, others)| Op::Share { round, pick, relabel, others }),
        1 => (0..ROUNDS).prop_map(|round| Op::PassOver { round }),
        1 => (1usize..80).prop_map(|n| Op::Fill { n }),
    ]
}

/// Attack (held): any interleaving of nonce requests (fresh, replayed,
/// reopening signed rounds), share requests listing any nonce signer 1 ever
/// issued (of this round or another, relabelled or not), passed-over rounds
/// and table-filling bursts never gets signer 1 to make two shares under one
/// nonce, nor a share under a nonce it did not issue for the very round the
/// request names; every nonce it issues is new. The runs make genuine shares
/// too (counted), so the invariant is exercised, not vacuous.
#[test]
fn no_interleaving_of_rounds_gets_two_shares_under_one_nonce() {
    let shares = std::cell::Cell::new(0usize);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            shares.set(shares.get() + interleave(ops));
            Ok(())
        })
        .unwrap();
    assert!(
        shares.get() > 0,
        "no run made a share: the attack was not exercised"
    );
}

/// Runs `ops` against signer 1; the number of shares it made.
fn interleave(ops: Vec<Op>) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let (a, b) = ([0xa1u8; 32], [0xb2u8; 32]);
    for c in &mut cores {
        c.handle(&sign_request(key, a)).unwrap();
        c.handle(&sign_request(key, b)).unwrap();
    }
    // Every nonce response signer 1 issued, in order.
    let mut issued: Vec<w::NonceResponse> = vec![];
    // Each nonce signer 1 issued: the round it was issued for.
    let mut issued_for: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    // Nonces a share of signer 1 was made under.
    let mut used: HashSet<Vec<u8>> = HashSet::new();
    let mut fill_id = 10_000u64;
    for op in ops {
        match op {
            Op::Nonce { round, digest_b } => {
                let (s, i) = round_ids(round);
                let h = if digest_b { b } else { a };
                let out = cores[0].handle(&nonce_request(key, s, i, h)).unwrap();
                if let [Message::NonceResponse(r)] = out.as_slice() {
                    record(&r.msg, &mut issued, &mut issued_for);
                }
            }
            Op::Fill { n } => {
                for _ in 0..n {
                    fill_id += 1;
                    let out = cores[0].handle(&nonce_request(key, fill_id, 1, a)).unwrap();
                    let n = nonce_of(&out);
                    record(&n, &mut issued, &mut issued_for);
                }
            }
            Op::PassOver { round } => {
                let (s, i) = round_ids(round);
                let Some(others) = cores[1..]
                    .iter_mut()
                    .map(|c| try_nonce(&c.handle(&nonce_request(key, s, i, a)).unwrap()))
                    .collect::<Option<Vec<_>>>()
                else {
                    continue;
                };
                let out = cores[0].handle(&share_request(key, others)).unwrap();
                assert!(
                    out.is_empty(),
                    "a share for a round that passed us over: {out:?}"
                );
            }
            Op::Share {
                round,
                pick,
                relabel,
                others,
            } => {
                if issued.is_empty() {
                    continue;
                }
                let (s, i) = round_ids(round);
                let mut ours = issued[pick % issued.len()].clone();
                if relabel {
                    ours.sign_id = s;
                    ours.sign_iter_id = i;
                }
                // The other signers' genuine nonces for the round and
                // our entry's message (they were asked the same).
                let h: [u8; 32] = ours.message.as_slice().try_into().unwrap();
                let mut listed = vec![ours.clone()];
                let others = if others == 0 { 1 } else { others };
                let mut complete = true;
                for (k, c) in cores[1..].iter_mut().enumerate() {
                    if others & (1 << k) != 0 {
                        match try_nonce(&c.handle(&nonce_request(key, s, i, h)).unwrap()) {
                            Some(n) => listed.push(n),
                            None => complete = false,
                        }
                    }
                }
                if !complete {
                    continue;
                }
                let mut req = share_request(key, listed);
                if let Message::SignatureShareRequest(r) = &mut req.message {
                    // The request names the round; our entry may not.
                    r.msg.sign_id = s;
                    r.msg.sign_iter_id = i;
                }
                let out = cores[0].handle(&req).unwrap();
                if is_share(&out) {
                    let bytes = serde_json::to_vec(&ours.nonces).unwrap();
                    assert!(used.insert(bytes.clone()), "two shares under one nonce");
                    assert_eq!(
                        issued_for.get(&bytes).copied(),
                        Some((s, i)),
                        "a share under a nonce not issued for the round named"
                    );
                }
            }
        }
    }
    used.len()
}

/// Attack (DoS by a keyless relay, low severity; broke, fixed): while round
/// A is in flight (signer 1's nonce sent, its share request not yet
/// delivered), the relay replays the coordinator's nonce requests of
/// `MAX_OPEN_ROUNDS` rounds that were already signed. The signer kept no
/// record of the round ids it had given a nonce, so each replay reopened its
/// signed round with a fresh nonce, the table filled with these, and A — the
/// oldest, not passed over — was evicted: A's genuine share request got no
/// share and its job timed out. The relay needs no key: the packets are the
/// coordinator's own, within the allowance's ten minutes, and it delivers
/// everything (nothing the operator would see as a relay fault). Now a round
/// id gets one nonce, ever (the last `MAX_NONCED` round ids are remembered,
/// not by time: a replayed sign request the validator passes again renews
/// its allowance): the replays are dropped without a refusal, and A signs.
#[test]
fn replayed_nonce_requests_of_signed_rounds_do_not_evict_a_round_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [7u8; 32];
    for c in &mut cores {
        c.handle(&sign_request(key, h)).unwrap();
    }
    // The relay records MAX_OPEN_ROUNDS honest rounds, each signed by 1 and 2.
    let signed = frost_signer::MAX_OPEN_ROUNDS as u64;
    for sign_id in 1..=signed {
        let n: Vec<_> = cores[..2]
            .iter_mut()
            .map(|c| nonce_of(&c.handle(&nonce_request(key, sign_id, 1, h)).unwrap()))
            .collect();
        assert!(is_share(
            &cores[0].handle(&share_request(key, n.clone())).unwrap()
        ));
    }
    assert_eq!(cores[0].open_rounds(), 0);
    // Round A is in flight.
    let a: Vec<_> = cores[..2]
        .iter_mut()
        .map(|c| nonce_of(&c.handle(&nonce_request(key, 1_000, 1, h)).unwrap()))
        .collect();
    // The relay replays every signed round's nonce request.
    let mut reopened = 0;
    for sign_id in 1..=signed {
        let out = cores[0].handle(&nonce_request(key, sign_id, 1, h)).unwrap();
        if matches!(out.as_slice(), [Message::NonceResponse(_)]) {
            reopened += 1;
        }
    }
    let out = cores[0].handle(&share_request(key, a)).unwrap();
    assert!(
        is_share(&out),
        "round A's nonce was evicted by {reopened} replayed nonce requests of signed rounds: {out:?}"
    );
    assert_eq!(
        reopened, 0,
        "signed round ids were reopened with fresh nonces"
    );
}

/// Attack (held; liveness only): a thief of the coordinator's message key
/// marks live round A "passed over" with a share request that leaves signer 3
/// out, fills the table so A goes first, then asks A's nonce again and sends
/// A's genuine share request. A's nonce is gone with the eviction: no second
/// nonce for A's round id, no share for the old listing, and each nonce
/// signer 3 ever issued signs at most once.
#[test]
fn a_live_round_marked_passed_over_and_evicted_gets_no_second_nonce_or_share() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let h = [5u8; 32];
    for c in &mut cores {
        c.handle(&sign_request(key, h)).unwrap();
    }
    let a: Vec<_> = cores
        .iter_mut()
        .map(|c| nonce_of(&c.handle(&nonce_request(key, 500, 1, h)).unwrap()))
        .collect();
    // Signer 3 passed over in A (a forged listing of signers 1 and 2).
    assert!(cores[2]
        .handle(&share_request(key, a[..2].to_vec()))
        .unwrap()
        .is_empty());
    // A full table of fresh rounds: A, passed over, is evicted first.
    for sign_id in 1_000..1_000 + frost_signer::MAX_OPEN_ROUNDS as u64 {
        nonce_of(&cores[2].handle(&nonce_request(key, sign_id, 1, h)).unwrap());
    }
    assert_eq!(cores[2].open_rounds(), frost_signer::MAX_OPEN_ROUNDS);
    let again = cores[2].handle(&nonce_request(key, 500, 1, h)).unwrap();
    assert!(
        again.is_empty(),
        "A's round id got a second nonce: {again:?}"
    );
    let out = cores[2].handle(&share_request(key, a.clone())).unwrap();
    assert!(out.is_empty(), "a share for an evicted round: {out:?}");
    // The fresh rounds still sign, once each.
    let mut shares = 0;
    for sign_id in 1_000..1_000 + frost_signer::MAX_OPEN_ROUNDS as u64 {
        let mut listed: Vec<_> = cores[..2]
            .iter_mut()
            .map(|c| nonce_of(&c.handle(&nonce_request(key, sign_id, 1, h)).unwrap()))
            .collect();
        let ours = nonce_of(&cores[2].handle(&nonce_request(key, sign_id, 1, h)).unwrap());
        listed.push(ours);
        if is_share(
            &cores[2]
                .handle(&share_request(key, listed.clone()))
                .unwrap(),
        ) {
            shares += 1;
        }
        assert!(cores[2]
            .handle(&share_request(key, listed))
            .unwrap()
            .is_empty());
    }
    assert_eq!(shares, frost_signer::MAX_OPEN_ROUNDS);
}

/// Attack (liveness, keyless relay; broke, fixed): the signer's table of
/// allowed (key, digest) pairs drops the oldest when full. A relay re-posting
/// the coordinator's earlier sign requests (the validator passes them again)
/// refreshed their pairs' time, so the pair of a request still waiting for
/// its rounds became the oldest and was the one dropped when the next honest
/// request came: its nonce request was refused `nonce.not-requested`. Now a
/// pair keeps the time it was first allowed; a replay changes nothing.
#[test]
fn replayed_sign_requests_do_not_push_a_waiting_requests_allowance_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let c = &mut cores[0];
    let digest = |i: usize| {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&(i as u64).to_be_bytes());
        h[31] = 1;
        h
    };
    let max = frost_signer::MAX_ALLOWED;
    // Honest requests 0..max-1, then the waiting one (max-1 is its item).
    for i in 0..max {
        c.handle(&sign_request(key, digest(i))).unwrap();
    }
    // The relay re-posts every earlier request.
    for i in 0..max - 1 {
        c.handle(&sign_request(key, digest(i))).unwrap();
    }
    // The next honest request fills the table past its size.
    c.handle(&sign_request(key, digest(max))).unwrap();
    let out = c
        .handle(&nonce_request(key, 1, 1, digest(max - 1)))
        .unwrap();
    assert!(
        matches!(out.as_slice(), [Message::NonceResponse(_)]),
        "the waiting request's allowance was pushed out: {out:?}"
    );
}
