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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{schnorr, Message, PublicKey, SecretKey};
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignJob,
    SignerFile, SignerInfo, SignerSet, ToSign,
};
use frost_net::envelope::peek;
use frost_net::{Kind, Sender, TAG_REQUEST};
use frost_signer::{SignerNode, SignerOptions};
use relay::{RelayClient, RelayConfig, RelayServer};

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

struct Cluster {
    relay: RelayServer,
    file: SignerFile,
    coordinator_key: SecretKey,
    dir: tempfile::TempDir,
    signers: Vec<(Arc<AtomicBool>, JoinHandle<SignerNode>)>,
}

impl Cluster {
    /// `n` signers of one key id each, a signature needing `threshold`;
    /// `setup` prepares each signer (by id) before it runs.
    fn new(n: u32, threshold: u32, setup: impl Fn(u32, &mut SignerNode)) -> Cluster {
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
        let secp = Secp256k1::new();
        let coordinator_key = key(0xc0, 0);
        let set = SignerSet {
            threshold,
            dkg_threshold: None,
            signers: (0..n)
                .map(|i| SignerInfo {
                    id: i + 1,
                    public_key: key(0x5e, i).public_key(&secp),
                    key_ids: vec![i + 1],
                    private_key: None,
                })
                .collect(),
        };
        let file = SignerFile {
            relay_url: relay.url(),
            coordinator_public_key: coordinator_key.public_key(&secp),
            magic_bytes: None,
            policy: Default::default(),
            state_dir: None,
            network: None,
            contract: None,
            set,
        };
        let dir = tempfile::tempdir().unwrap();
        let signers = (1..=n)
            .map(|id| {
                let mut node = SignerNode::new(SignerOptions {
                    id,
                    file: file.clone(),
                    private_key: key(0x5e, id - 1),
                    state_path: dir.path().join(format!("signer-{id}.json")),
                    poll_wait: Duration::from_millis(500),
                    allow_rotation: false,
                    attest_interval: frost_signer::ATTEST_INTERVAL,
                })
                .unwrap();
                setup(id, &mut node);
                let stop = Arc::new(AtomicBool::new(false));
                let s = stop.clone();
                let handle = std::thread::spawn(move || {
                    node.run(&s);
                    node
                });
                (stop, handle)
            })
            .collect();
        Cluster {
            relay,
            file,
            coordinator_key,
            dir,
            signers,
        }
    }

    /// A coordinator with `rounds_in_flight` rounds open at most (its key
    /// history shared by every coordinator of the cluster).
    fn coordinator(
        &self,
        sign_timeout: Duration,
        rounds_in_flight: usize,
    ) -> RelayFrostCoordinator {
        RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set: self.file.set.clone(),
            private_key: self.coordinator_key,
            relay_url: self.relay.url(),
            dkg_timeout: Duration::from_secs(15),
            sign_timeout,
            state_path: Some(self.dir.path().join("coordinator.json")),
            network: None,
            contract: None,
            rounds_in_flight,
        })
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (stop, _) in &self.signers {
            stop.store(true, Ordering::SeqCst);
        }
        for (_, h) in self.signers.drain(..) {
            let _ = h.join();
        }
    }
}

fn sighash(job: u32, item: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&job.to_be_bytes());
    h[4..8].copy_from_slice(&item.to_be_bytes());
    h[31] = 0xaa;
    h
}

/// `jobs` jobs of `items` taproot sighashes each, with `payload`.
fn jobs(agg: PublicKey, first: u32, jobs: u32, items: u32, payload: &[u8]) -> Vec<SignJob> {
    (first..first + jobs)
        .map(|j| SignJob {
            payload: payload.to_vec(),
            items: (0..items)
                .map(|i| SignItem {
                    key: agg,
                    message: ToSign::Taproot {
                        sighash: sighash(j, i),
                    },
                })
                .collect(),
        })
        .collect()
}

fn verify(agg: &PublicKey, job: &SignJob, sigs: &[schnorr::Signature]) {
    let secp = Secp256k1::verification_only();
    let (tweaked, _) = agg.x_only_public_key().0.tap_tweak(&secp, None);
    assert_eq!(sigs.len(), job.items.len());
    for (item, sig) in job.items.iter().zip(sigs) {
        secp.verify_schnorr(
            sig,
            &Message::from_digest(item.message.digest()),
            &tweaked.to_x_only_public_key(),
        )
        .expect("a valid key-path signature");
    }
}

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
