//! Red team, issue #16, over the relay on 127.0.0.1 with real signers:
//! a keyless relay that re-posts the coordinator's own nonce requests of
//! rounds already signed, while many rounds are in flight.
//!
//! Each re-posted request is authentic (the coordinator sealed it) and its
//! (key, digest) still allowed, so before the fix every signer reopened the
//! signed round with a fresh nonce; the reopened rounds filled its table of
//! `MAX_OPEN_ROUNDS` and evicted the rounds in flight, whose share requests
//! then found no nonce: their jobs timed out, with a relay delivering every
//! message. Bounded: a 10 s signing timeout, about 4,000 replays at most.
//!
//! Also: one `sign_many` call posts every job's `SignRequest` before its
//! first round opens, and a signer keeps `MAX_ALLOWED` (key, digest)
//! allowances, oldest dropped first.

mod inflight_fixture;
use inflight_fixture::*;

/// Attack (DoS by a keyless relay; broke before the signer remembered the
/// round ids it gave a nonce): the relay re-posts every nonce request of the
/// coordinator about 150 ms after it first saw it — the first batch's, and
/// the second batch's own as its rounds complete — while the second batch
/// runs 64 rounds at once. Every job still signs (before the fix: 60 of 60
/// jobs timed out under about 4,000 replays).
#[test]
fn replayed_nonce_requests_of_signed_rounds_do_not_starve_rounds_in_flight() {
    let c = Cluster::new(3, 2, |_, _| {});
    let agg = c
        .coordinator(Duration::from_secs(10), 1)
        .run_dkg_round()
        .unwrap();
    let mut coord = c.coordinator(Duration::from_secs(10), 64);
    let first = jobs(agg, 0, 40, 2, b"payout");
    for (job, r) in first.iter().zip(coord.sign_many(&first)) {
        verify(&agg, job, &r.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let racer = std::thread::spawn(move || {
        let mut cursor = 0;
        let mut seen: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut replayed = 0usize;
        while !s.load(Ordering::SeqCst) && replayed < 4_000 {
            let batch = relay.poll(cursor, Duration::from_millis(20)).unwrap();
            cursor = batch.last_seq(cursor);
            for (_, b) in batch.messages {
                if peek(&b) == Some((Kind::NonceRequest, Sender::Coordinator)) {
                    seen.push_back((Instant::now(), b));
                }
            }
            while seen
                .front()
                .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(150))
            {
                let Some((_, b)) = seen.pop_front() else {
                    break;
                };
                relay.post_tagged(&b, TAG_REQUEST).unwrap();
                replayed += 1;
            }
        }
        replayed
    });
    let second = jobs(agg, 100, 60, 2, b"payout");
    let out = coord.sign_many(&second);
    stop.store(true, Ordering::SeqCst);
    let replayed = racer.join().unwrap();
    assert!(replayed >= 80, "only {replayed} nonce requests replayed");
    let failed: Vec<String> = out
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} jobs failed under {replayed} replayed nonce requests: {:?}",
        failed.len(),
        second.len(),
        failed.first()
    );
    for (job, r) in second.iter().zip(&out) {
        verify(&agg, job, r.as_ref().unwrap());
    }
}

/// Passes every sign request and records its items as validated, but says
/// "not validated" to the nonce requests of every job digest (`sighash`)
/// except `keep`'s: the bulk jobs fail fast on refusals, so only the
/// allowance table matters (the DKG test round is validated as usual).
struct OnlyKeep {
    keep: [u8; 32],
    asked: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl frost_signer::Validator for OnlyKeep {
    fn check(&mut self, _: &frost_net::SignRequest) -> Result<(), String> {
        Ok(())
    }
    fn will_sign(&self, _: &PublicKey, digest: &[u8; 32]) -> bool {
        // The first ask is the sign request's own check; later ones are
        // nonce requests.
        digest[31] != 0xaa || *digest == self.keep || self.asked.lock().unwrap().insert(*digest)
    }
}

/// Attack (liveness; broke, fixed): a `sign_many` call of more than
/// `MAX_ALLOWED` items (17 jobs: one of one item, then 16 of 256) posted all
/// its sign requests before opening any round, so every signer's table of
/// allowances had dropped the first job's (key, digest) by the time its
/// nonce request came: refused `nonce.not-requested`, a payout the signers
/// had accepted never signed. A tick with that many inputs (or a relay
/// delaying the nonce requests behind them) is enough; no key needed. Now a
/// call is run in chunks of at most 1,024 items, each chunk's
/// requests posted when its rounds are about to open.
#[test]
fn more_items_in_one_call_than_a_signer_allows_still_sign_the_first_job() {
    let keep = sighash(0, 0);
    let c = Cluster::new(3, 2, |_, n| {
        n.set_validator(Box::new(OnlyKeep {
            keep,
            asked: Mutex::new(Default::default()),
        }));
    });
    let agg = c
        .coordinator(Duration::from_secs(10), 1)
        .run_dkg_round()
        .unwrap();
    let mut coord = c.coordinator(Duration::from_secs(10), 64);
    let mut batch = jobs(agg, 0, 1, 1, b"payout");
    batch.extend(jobs(agg, 1, 16, 256, b"bulk"));
    let items: usize = batch.iter().map(|j| j.items.len()).sum();
    assert!(items > frost_signer::MAX_ALLOWED, "{items} items");
    let started = Instant::now();
    let out = coord.sign_many(&batch);
    let took = started.elapsed();
    let first = out[0].as_ref().map_err(ToString::to_string);
    verify(
        &agg,
        &batch[0],
        first.as_ref().expect("the first job signs"),
    );
    // The bulk jobs fail on their refusals, well before their timeout.
    assert!(out[1..].iter().all(Result::is_err));
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
