//! Red team, issue #16: the coordinator's nonce shortcut. The nonce
//! response that reaches the threshold is written into FIRE's saved state
//! (`complete_nonces`) so FIRE skips its aggregate nonce; FIRE's own
//! `gather_nonces` refuses a signer it marked malicious, and the shortcut
//! must too, or a retry lists the signer that failed the round again and the
//! round fails. Over the relay on 127.0.0.1 with real signers, bounded by a
//! 6 s signing timeout.

mod inflight_fixture;
use inflight_fixture::*;

/// Five signers of one key id each (threshold 3). Once armed (after the
/// DKG, whose test round needs everyone), each signer's nonce responses
/// are held `holds[id]` ms before posting (a fixed order of arrival), and
/// the signers `silent` never send a share.
fn cluster(holds: &[(u32, u64)], silent: &[u32]) -> (Cluster, Arc<AtomicBool>) {
    let armed = Arc::new(AtomicBool::new(false));
    let holds: std::collections::HashMap<u32, u64> = holds.iter().copied().collect();
    let silent = silent.to_vec();
    let c = Cluster::new(5, 3, |id, node| {
        let armed = armed.clone();
        let hold = Duration::from_millis(holds[&id]);
        let silent = silent.contains(&id);
        node.set_outbound_hook(Box::new(move |m| match m {
            Msg::SignatureShareResponse(_) if silent && armed.load(Ordering::SeqCst) => None,
            Msg::NonceResponse(n) => {
                if armed.load(Ordering::SeqCst) {
                    std::thread::sleep(hold);
                }
                Some(Msg::NonceResponse(n))
            }
            other => Some(other),
        }));
    });
    (c, armed)
}

/// Attack (held): signer 5 of 5 (threshold 3) answers every nonce request
/// but never sends a share, so the first iteration of each of 8 rounds in
/// flight times out; FIRE marks it malicious and retries. Its nonce
/// response of the retry is the one that reaches the threshold beside two
/// honest ones: the shortcut must leave it out as FIRE
/// does, and every round signs on the retry, with honest signers only.
/// (With two silent signers a retry may list the other one, which FIRE
/// marks only when it was listed: a third iteration does not fit in the
/// deadline, as without the shortcut.)
#[test]
fn signers_marked_malicious_are_left_out_of_the_retry_by_the_nonce_shortcut() {
    let (c, armed) = cluster(&[(1, 0), (2, 3), (5, 8), (3, 100), (4, 100)], &[5]);
    let agg = c
        .coordinator(Duration::from_secs(6), 1)
        .run_dkg_round()
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let mut coord = c.coordinator(Duration::from_secs(6), 8);
    let work = jobs(agg, 0, 2, 4, b"payout");
    let began = Instant::now();
    let out = coord.sign_many(&work);
    for (job, r) in work.iter().zip(&out) {
        match r {
            Ok(sigs) => verify(&agg, job, sigs),
            Err(e) => panic!("a round failed with a silent signer marked malicious: {e}"),
        }
    }
    assert!(
        began.elapsed() < Duration::from_secs(7),
        "{:?}",
        began.elapsed()
    );
    // What the coordinator asked: a first iteration listing a silent
    // signer (so the retry path ran), no retry listing one.
    let codec = frost_net::Codec::new(&c.file);
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let mut listings: Vec<(u64, u64, Vec<u32>)> = vec![];
    let mut cursor = 0;
    loop {
        let batch = relay.poll(cursor, Duration::ZERO).unwrap();
        if batch.messages.is_empty() {
            break;
        }
        cursor = batch.last_seq(cursor);
        for (_, b) in batch.messages {
            if let Ok(env) = codec.open(&b) {
                if let Msg::SignatureShareRequest(r) = env.message {
                    if r.msg.message.last() != Some(&0xaa) {
                        continue; // the DKG's test round
                    }
                    let ids = r.msg.nonce_responses.iter().map(|n| n.signer_id + 1);
                    listings.push((r.msg.sign_id, r.msg.sign_iter_id, ids.collect()));
                }
            }
        }
    }
    let first_iter = |sign_id: u64| {
        listings
            .iter()
            .filter(|l| l.0 == sign_id)
            .map(|l| l.1)
            .min()
            .unwrap()
    };
    let silent = |ids: &[u32]| ids.contains(&5);
    let (first, retries): (Vec<_>, Vec<_>) = listings.iter().partition(|l| l.1 == first_iter(l.0));
    assert!(
        first.iter().any(|l| silent(&l.2)),
        "no first iteration listed a silent signer: the retry was not exercised ({listings:?})"
    );
    assert!(!retries.is_empty(), "no retry ({listings:?})");
    for (sign_id, iter, ids) in retries {
        assert!(
            !silent(ids),
            "retry {sign_id}/{iter} lists signers {ids:?}, marked malicious"
        );
    }
}

/// Attack (reporting; broke, fixed): signers that answer nonce requests but
/// never send a share hold a round up until its deadline — signer 4 is
/// listed in the first iteration and marked, signer 5 (next in line) in the
/// retry, which runs into the round's deadline. The timeout named no one
/// ("no answer from signers []": its list was only the signers silent in
/// the nonce phase), so nothing said which signers to look at. It names
/// both now: the listed signer whose share is missing and the one FIRE
/// marked for it before.
#[test]
fn a_round_held_up_by_missing_shares_names_the_signers_at_its_deadline() {
    let (c, armed) = cluster(&[(1, 0), (2, 3), (4, 8), (5, 16), (3, 100)], &[4, 5]);
    let agg = c
        .coordinator(Duration::from_secs(3), 1)
        .run_dkg_round()
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let mut coord = c.coordinator(Duration::from_secs(3), 1);
    let work = jobs(agg, 0, 1, 1, b"payout");
    let began = Instant::now();
    let out = coord.sign_many(&work);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    match &out[0] {
        Err(Error::Timeout {
            round: "signing",
            missing,
            ..
        }) => assert_eq!(missing, &vec![4, 5], "{:?}", out[0]),
        other => panic!("expected a signing timeout naming signers 4 and 5, got {other:?}"),
    }
}
