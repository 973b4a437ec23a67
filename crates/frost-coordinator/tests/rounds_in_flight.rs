//! Several signing rounds in flight together (`sign_many`), with real
//! signers over the relay on 127.0.0.1: many jobs of several items signed
//! with 1, 4 and 8 rounds open at once; a refused job, a timed-out job and
//! rounds fed another round's packets fail alone while the others sign.
//! Every run is bounded by its rounds' timeouts.

mod inflight_fixture;
use inflight_fixture::*;

/// The kinds the coordinator posted, in relay order.
fn coordinator_kinds(c: &Cluster) -> Vec<Kind> {
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    relay
        .poll(0, Duration::ZERO)
        .unwrap()
        .messages
        .into_iter()
        .filter_map(|(_, b)| peek(&b))
        .filter(|(_, s)| *s == Sender::Coordinator)
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn many_jobs_of_several_items_sign_with_1_4_and_8_rounds_in_flight() {
    let _ = env_logger::builder().is_test(true).try_init();
    let c = Cluster::new(5, 3, |_, _| {});
    let agg = c
        .coordinator(Duration::from_secs(10), 1)
        .run_dkg_round()
        .unwrap();
    let mut first = 0;
    for n in [1usize, 4, 8] {
        let mut coord = c.coordinator(Duration::from_secs(10), n);
        let before = coordinator_kinds(&c).len();
        let batch = jobs(agg, first, 6, 3, b"payout");
        first += 6;
        let started = Instant::now();
        let out = coord.sign_many(&batch);
        let took = started.elapsed();
        assert_eq!(out.len(), batch.len());
        for (job, r) in batch.iter().zip(&out) {
            verify(&agg, job, r.as_ref().expect("every job signed"));
        }
        // The rounds overlap: `n` were open at once, and the relay shows
        // that many nonce requests before the first share request.
        assert_eq!(coord.most_rounds_in_flight(), n, "{n} in flight");
        let kinds = coordinator_kinds(&c);
        let posted = &kinds[before..];
        let first_share = posted
            .iter()
            .position(|k| *k == Kind::SignatureShareRequest)
            .unwrap();
        let nonces_before = posted[..first_share]
            .iter()
            .filter(|k| **k == Kind::NonceRequest)
            .count();
        assert!(
            nonces_before >= n,
            "{nonces_before} nonce requests before the first share request, {n} in flight"
        );
        // One sign request per job, posted before any round.
        assert_eq!(
            posted.iter().filter(|k| **k == Kind::SignRequest).count(),
            batch.len()
        );
        assert_eq!(
            posted.iter().filter(|k| **k == Kind::NonceRequest).count(),
            18,
            "one round per item, no retries"
        );
        log::info!("{n} in flight: 18 rounds in {took:?}");
    }
    // `sign` runs one job's items in parallel too.
    let mut coord = c.coordinator(Duration::from_secs(10), 8);
    let one = jobs(agg, 100, 1, 3, b"payout").remove(0);
    let sigs = coord.sign(&one.payload, &one.items).unwrap();
    verify(&agg, &one, &sigs);
    assert_eq!(coord.most_rounds_in_flight(), 3);
}

/// Refuses the requests whose payload is `refuse`.
struct RefuseSome;

impl frost_signer::Validator for RefuseSome {
    fn check(&mut self, r: &frost_net::SignRequest) -> Result<(), String> {
        if r.payload == b"refuse" {
            Err("payout.unknown: not a payout I know".into())
        } else {
            Ok(())
        }
    }
    fn will_sign(&self, _: &PublicKey, _: &[u8; 32]) -> bool {
        true
    }
}

#[test]
fn a_refused_job_fails_alone_and_the_others_sign() {
    let c = Cluster::new(5, 3, |id, n| {
        if id >= 3 {
            n.set_validator(Box::new(RefuseSome));
        }
    });
    let agg = c
        .coordinator(Duration::from_secs(20), 1)
        .run_dkg_round()
        .unwrap();
    let mut coord = c.coordinator(Duration::from_secs(20), 4);
    let mut batch = jobs(agg, 0, 5, 2, b"payout");
    batch[2].payload = b"refuse".to_vec();
    let started = Instant::now();
    let out = coord.sign_many(&batch);
    let took = started.elapsed();
    for (i, (job, r)) in batch.iter().zip(&out).enumerate() {
        if i == 2 {
            match r {
                Err(Error::Refused { refusals }) => {
                    let ids: Vec<u32> = refusals.iter().map(|(id, _)| *id).collect();
                    assert_eq!(ids, vec![3, 4, 5], "{refusals:?}");
                    assert!(refusals
                        .iter()
                        .all(|(_, r)| r.starts_with("payout.unknown")));
                }
                other => panic!("expected job 2 refused, got {other:?}"),
            }
        } else {
            verify(&agg, job, r.as_ref().expect("the other jobs sign"));
        }
    }
    // It ended on the refusals, not on its 20 s timeout.
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[test]
fn a_silent_signer_times_out_one_job_and_the_others_sign() {
    // Every key is needed (3 of 3); signer 2 never answers job 1's rounds.
    let silent_for: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(vec![]));
    let s = silent_for.clone();
    let c = Cluster::new(3, 3, move |id, n| {
        if id == 2 {
            let s = s.clone();
            n.set_outbound_hook(Box::new(move |m| match m {
                Msg::NonceResponse(r) if s.lock().unwrap().contains(&r.msg.message) => None,
                other => Some(other),
            }));
        }
    });
    let sign_timeout = Duration::from_secs(3);
    let agg = c.coordinator(sign_timeout, 1).run_dkg_round().unwrap();
    let batch = jobs(agg, 0, 4, 2, b"payout");
    silent_for
        .lock()
        .unwrap()
        .extend(batch[1].items.iter().map(|i| i.message.digest().to_vec()));
    let mut coord = c.coordinator(sign_timeout, 8);
    let started = Instant::now();
    let out = coord.sign_many(&batch);
    let took = started.elapsed();
    for (i, (job, r)) in batch.iter().zip(&out).enumerate() {
        if i == 1 {
            match r {
                Err(Error::Timeout {
                    round: "signing",
                    missing,
                    ..
                }) => assert_eq!(missing, &vec![2], "{r:?}"),
                other => panic!("expected job 1 to time out naming signer 2, got {other:?}"),
            }
        } else {
            verify(&agg, job, r.as_ref().expect("the other jobs sign"));
        }
    }
    assert!(
        took < sign_timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(coord.most_rounds_in_flight(), 8);
}

#[test]
fn another_rounds_nonce_or_share_fed_to_a_round_is_rejected_and_signs_nothing() {
    // Signer 1 (of 3, all needed) relabels: its nonce response for job 1's
    // first item carries the first round's nonce and message under this
    // round's ids; its share for job 2's first item is the first round's
    // share under this round's ids. Both are the signer's own signed
    // packets, so only the round rules can catch them.
    #[derive(Default)]
    struct Relabel {
        targets: (Vec<u8>, Vec<u8>),
        first_nonce: Option<frost_net::wsts::net::NonceResponse>,
        first_share: Option<frost_net::wsts::net::SignatureShareResponse>,
        share_target: Option<u64>,
    }
    let state = Arc::new(Mutex::new(Relabel::default()));
    let st = state.clone();
    let c = Cluster::new(3, 3, move |id, n| {
        if id == 1 {
            let st = st.clone();
            n.set_outbound_hook(Box::new(move |m| {
                let mut s = st.lock().unwrap();
                if s.targets.0.is_empty() {
                    return Some(m);
                }
                match m {
                    Msg::NonceResponse(mut r) => {
                        if r.msg.message == s.targets.1 {
                            s.share_target = Some(r.msg.sign_id);
                        }
                        match &s.first_nonce {
                            None => s.first_nonce = Some(r.msg.clone()),
                            Some(a) if r.msg.message == s.targets.0 => {
                                r.msg.message = a.message.clone();
                                r.msg.nonces = a.nonces.clone();
                            }
                            Some(_) => {}
                        }
                        Some(Msg::NonceResponse(r))
                    }
                    Msg::SignatureShareResponse(mut r) => {
                        match &s.first_share {
                            None => s.first_share = Some(r.msg.clone()),
                            Some(a) if s.share_target == Some(r.msg.sign_id) => {
                                r.msg.signature_shares = a.signature_shares.clone();
                            }
                            Some(_) => {}
                        }
                        Some(Msg::SignatureShareResponse(r))
                    }
                    other => Some(other),
                }
            }));
        }
    });
    let sign_timeout = Duration::from_secs(3);
    let agg = c.coordinator(sign_timeout, 1).run_dkg_round().unwrap();
    let batch = jobs(agg, 0, 4, 2, b"payout");
    {
        let mut s = state.lock().unwrap();
        s.targets = (
            batch[1].items[0].message.digest().to_vec(),
            batch[2].items[0].message.digest().to_vec(),
        );
    }
    // One round first, alone: the one whose packets are replayed.
    let mut coord = c.coordinator(sign_timeout, 4);
    let a = jobs(agg, 50, 1, 1, b"payout");
    verify(&agg, &a[0], &coord.sign_many(&a)[0].clone().unwrap());
    let before = coord.rejected();
    let out = coord.sign_many(&batch);
    assert!(
        coord.rejected() > before,
        "the relabelled nonce was rejected"
    );
    match &out[1] {
        Err(Error::Timeout { missing, .. }) => assert_eq!(missing, &vec![1]),
        other => panic!("job 1: a nonce of another round counts as none, got {other:?}"),
    }
    match &out[2] {
        Err(Error::SigningFailed(why)) => assert!(why.contains("BadPartySigs"), "{why}"),
        other => panic!("job 2: another round's share makes no signature, got {other:?}"),
    }
    for i in [0, 3] {
        verify(
            &agg,
            &batch[i],
            out[i].as_ref().expect("the other jobs sign"),
        );
    }
}

#[test]
fn a_relay_replaying_earlier_rounds_responses_into_open_rounds_changes_nothing() {
    let c = Cluster::new(5, 3, |_, _| {});
    let agg = c
        .coordinator(Duration::from_secs(10), 1)
        .run_dkg_round()
        .unwrap();
    let mut coord = c.coordinator(Duration::from_secs(10), 8);
    let first = jobs(agg, 0, 4, 2, b"payout");
    for (job, r) in first.iter().zip(coord.sign_many(&first)) {
        verify(&agg, job, &r.unwrap());
    }
    // Every signer response so far, posted again while the next rounds run.
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let old: Vec<Vec<u8>> = relay
        .poll(0, Duration::ZERO)
        .unwrap()
        .messages
        .into_iter()
        .filter(|(_, b)| {
            peek(b).is_some_and(|(k, s)| {
                matches!(s, Sender::Signer(_))
                    && matches!(k, Kind::NonceResponse | Kind::SignatureShareResponse)
            })
        })
        .map(|(_, b)| b)
        .collect();
    assert!(old.len() >= 8 * 3, "{} old responses", old.len());
    let replays = old.len() * 3;
    let racer = std::thread::spawn(move || {
        for _ in 0..3 {
            for b in &old {
                relay.post_tagged(b, TAG_RESPONSE).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let before = coord.rejected();
    let second = jobs(agg, 10, 8, 2, b"payout");
    let out = coord.sign_many(&second);
    racer.join().unwrap();
    // Whatever of the replays the rounds did not read is read (and dropped)
    // by the next call.
    let _ = coord.attestations();
    for (job, r) in second.iter().zip(&out) {
        verify(&agg, job, r.as_ref().unwrap());
    }
    let dropped = coord.rejected() - before;
    assert!(
        dropped >= u64::try_from(replays).unwrap(),
        "{dropped} dropped of {replays} replayed"
    );
}

#[test]
fn more_rounds_in_flight_than_a_signer_keeps_open_is_capped_at_its_table() {
    let c = Cluster::new(3, 2, |_, _| {});
    let agg = c
        .coordinator(Duration::from_secs(10), 1)
        .run_dkg_round()
        .unwrap();
    let mut coord = c.coordinator(Duration::from_secs(10), 1000);
    let batch = jobs(agg, 0, 40, 2, b"payout");
    for (job, r) in batch.iter().zip(coord.sign_many(&batch)) {
        verify(&agg, job, &r.unwrap());
    }
    assert_eq!(coord.most_rounds_in_flight(), frost_signer::MAX_OPEN_ROUNDS);
}
