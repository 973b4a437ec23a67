//! What the validator decides: a nonce only for a digest it recorded as
//! validated, a signed refusal naming its rule, and signed attestations of
//! the key it says the contract publishes (at start, periodically, at once
//! when it changes, never for a key this signer holds no share of).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, Secp256k1};
use frost_net::messages::Message;
use frost_net::{
    envelope::peek, verify_attestations, Codec, Kind, Sender, SignItem, SignRequest, SignerFile,
    ToSign, COORDINATOR_TAGS,
};
use frost_signer::{SignerNode, SignerOptions, Validator};
use relay::{RelayClient, RelayConfig, RelayServer};

mod common;
use common::*;

const CONTRACT: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc";

/// What the test validator does, shared with the test.
#[derive(Default)]
struct Plan {
    /// `check` fails with this rule.
    refuse: Option<String>,
    /// `check` records the request's items (a guard's durable rows).
    record: bool,
    recorded: HashSet<(PublicKey, [u8; 32])>,
    attest: Option<PublicKey>,
    attest_calls: usize,
    held: Vec<PublicKey>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Plan>>);

impl Validator for Scripted {
    fn check(&mut self, request: &SignRequest) -> Result<(), String> {
        let mut p = self.0.lock().map_err(|_| "poisoned".to_owned())?;
        if let Some(rule) = &p.refuse {
            return Err(rule.clone());
        }
        if p.record {
            for i in &request.items {
                p.recorded.insert((i.key, i.message.digest()));
            }
        }
        Ok(())
    }

    fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> bool {
        self.0.lock().unwrap().recorded.contains(&(*key, *digest))
    }

    fn attest(&mut self) -> Option<PublicKey> {
        let mut p = self.0.lock().unwrap();
        p.attest_calls += 1;
        p.attest
    }

    fn held_keys(&mut self, keys: &[PublicKey]) {
        self.0.lock().unwrap().held = keys.to_vec();
    }
}

fn refused(out: &[Message]) -> Option<&str> {
    match out {
        [Message::Refusal(r)] => Some(&r.rule),
        _ => None,
    }
}

#[test]
fn a_nonce_only_for_a_digest_the_validator_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let v = Scripted::default();
    v.0.lock().unwrap().record = true;
    let c = &mut cores[0];
    c.set_validator(Box::new(v.clone()));
    let (a, b) = ([0xa1; 32], [0xb2; 32]);

    // Checked and recorded: a nonce.
    assert!(c.handle(&sign_request(key, a)).unwrap().is_empty());
    nonce_of(&c.handle(&nonce_request(key, 5, 1, a)).unwrap());

    // The validator's store no longer holds it (lost, or never written):
    // the in-memory allowance alone gets no nonce for a new round.
    v.0.lock().unwrap().recorded.clear();
    let out = c.handle(&nonce_request(key, 6, 1, a)).unwrap();
    let rule = refused(&out).unwrap_or_else(|| panic!("expected a refusal, got {out:?}"));
    assert!(rule.starts_with("nonce.not-validated"), "{rule}");
    assert_eq!(
        c.open_rounds(),
        1,
        "no round opened for the refused request"
    );

    // A validator that says yes but records nothing: the request is refused
    // at once, and its digest never gets a nonce.
    v.0.lock().unwrap().record = false;
    let out = c.handle(&sign_request(key, b)).unwrap();
    assert!(
        refused(&out).is_some_and(|r| r.starts_with("validator.not-recorded")),
        "{out:?}"
    );
    assert!(refused(&c.handle(&nonce_request(key, 7, 1, b)).unwrap()).is_some());

    // Recorded by the validator, but never listed by an accepted sign
    // request (the validator's store is not the coordinator's word): no nonce.
    let d = [0xd4; 32];
    v.0.lock().unwrap().recorded.insert((key, d));
    let out = c.handle(&nonce_request(key, 8, 1, d)).unwrap();
    assert!(
        refused(&out).is_some_and(|r| r.starts_with("nonce.not-requested")),
        "{out:?}"
    );
    assert_eq!(c.open_rounds(), 1);
}

#[test]
fn a_failed_check_is_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let v = Scripted::default();
    v.0.lock().unwrap().refuse = Some("fulfilment.recipient: pays another script".into());
    cores[0].set_validator(Box::new(v));
    let out = cores[0].handle(&sign_request(key, [1; 32])).unwrap();
    match out.as_slice() {
        [Message::Refusal(r)] => {
            assert_eq!(r.request, 1);
            assert_eq!(r.rule, "fulfilment.recipient: pays another script");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(refused(&cores[0].handle(&nonce_request(key, 2, 1, [1; 32])).unwrap()).is_some());
}

/// The signer file of `common::set()` on `relay`, built from its serde
/// form so fields with defaults need not be spelled out.
fn signer_file(relay: &str) -> SignerFile {
    let secp = Secp256k1::new();
    let mut v = serde_json::to_value(set()).unwrap();
    let m = v.as_object_mut().unwrap();
    m.insert("relay_url".into(), relay.into());
    m.insert(
        "coordinator_public_key".into(),
        sk(0xc0, 0).public_key(&secp).to_string().into(),
    );
    m.insert("network".into(), "regtest".into());
    m.insert("contract".into(), CONTRACT.into());
    serde_json::from_value(v).unwrap()
}

struct Node {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Signer 1 of `file`, keyed by an in-memory DKG, running with `v`.
fn run_signer_1(dir: &std::path::Path, file: &SignerFile, v: Scripted) -> Node {
    let mut node = SignerNode::new(SignerOptions {
        id: 1,
        file: file.clone(),
        private_key: sk(0x5e, 0),
        state_path: dir.join("s1.json"),
        poll_wait: Duration::from_millis(100),
        allow_rotation: false,
        attest_interval: Duration::from_millis(400),
    })
    .unwrap();
    node.set_validator(Box::new(v));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || node.run(&s));
    Node {
        stop,
        handle: Some(handle),
    }
}

/// Reads what signers posted for the coordinator, as it does.
struct Reader {
    client: RelayClient,
    cursor: u64,
}

impl Reader {
    fn new(url: &str) -> Reader {
        Reader {
            client: RelayClient::new(url, Duration::from_secs(5)),
            cursor: 0,
        }
    }

    fn read(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let b = self
            .client
            .poll_tags(self.cursor, wait, COORDINATOR_TAGS)
            .unwrap();
        self.cursor = b.last_seq(self.cursor);
        b.messages.into_iter().map(|(_, m)| m).collect()
    }

    /// Everything read over `d`.
    fn read_for(&mut self, d: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + d;
        let mut out = vec![];
        while Instant::now() < end {
            out.extend(self.read(Duration::from_millis(100)));
        }
        out
    }
}

fn attestations(envs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    envs.iter()
        .filter(|e| peek(e).is_some_and(|(k, _)| k == Kind::Attestation))
        .cloned()
        .collect()
}

#[test]
fn an_attestation_is_sent_signed_verifiable_and_follows_the_published_key() {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = keyed_cores(dir.path(), true);
    let file = signer_file(&relay.url());
    let v = Scripted::default();
    let mut reader = Reader::new(&relay.url());
    let _node = run_signer_1(dir.path(), &file, v.clone());

    // The validator cannot confirm a key yet: nothing is attested.
    assert!(attestations(&reader.read_for(Duration::from_millis(600))).is_empty());
    assert!(v.0.lock().unwrap().attest_calls >= 1, "asked at start-up");

    // It confirms the key: an attestation follows at once (well before a
    // second interval), signed by signer 1 and counted by a user's tool.
    v.0.lock().unwrap().attest = Some(key);
    let t0 = Instant::now();
    let first = loop {
        let a = attestations(&reader.read(Duration::from_millis(100)));
        if let Some(a) = a.into_iter().next() {
            break a;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "no attestation");
    };
    assert_eq!(peek(&first), Some((Kind::Attestation, Sender::Signer(1))));
    match Codec::new(&file).open(&first).unwrap().message {
        Message::Attestation(a) => {
            assert_eq!((a.contract.as_str(), a.key), (CONTRACT, key));
            assert!(a.time > 1_700_000_000, "a Unix time: {}", a.time);
        }
        other => panic!("{other:?}"),
    }
    let t = verify_attestations(&file, &key, std::slice::from_ref(&first)).unwrap();
    assert_eq!(t.signers.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(t.key_ids, 1);
    assert!(
        !t.reaches(file.set.threshold),
        "one key id of a threshold of 2"
    );

    // Unchanged, it is sent again every interval (400 ms here).
    let again = attestations(&reader.read_for(Duration::from_millis(1500)));
    assert!(
        (2..=5).contains(&again.len()),
        "{} attestations in 1.5 s",
        again.len()
    );
    assert_eq!(verify_attestations(&file, &key, &again).unwrap().key_ids, 1);

    // The contract now publishes a key this signer holds no share of: it is
    // never attested, and the old one is not attested any more.
    let foreign = sk(0x77, 0).public_key(&Secp256k1::new());
    v.0.lock().unwrap().attest = Some(foreign);
    reader.read_for(Duration::from_millis(500));
    let after = attestations(&reader.read_for(Duration::from_millis(1200)));
    assert!(
        after.is_empty(),
        "{} attestations after the change",
        after.len()
    );
}

#[test]
fn a_refusal_reaches_the_coordinator_signed_by_the_signer() {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = keyed_cores(dir.path(), true);
    let file = signer_file(&relay.url());
    let v = Scripted::default();
    v.0.lock().unwrap().refuse = Some("request.unknown: no such peg-out request".into());
    let mut reader = Reader::new(&relay.url());
    let _node = run_signer_1(dir.path(), &file, v);
    // Let the signer start reading the relay before the request goes out.
    std::thread::sleep(Duration::from_millis(300));
    let codec = Codec::new(&file);
    let request = codec
        .seal(
            Sender::Coordinator,
            &sk(0xc0, 0),
            &Message::SignRequest(SignRequest {
                id: 42,
                payload: vec![],
                items: vec![SignItem {
                    key,
                    message: ToSign::Taproot { sighash: [3; 32] },
                }],
            }),
        )
        .unwrap();
    RelayClient::new(&relay.url(), Duration::from_secs(5))
        .post_tagged(&request, Kind::SignRequest.relay_tag())
        .unwrap();
    let t0 = Instant::now();
    let refusal = loop {
        let got = reader.read(Duration::from_millis(200));
        if let Some(r) = got.iter().find_map(|e| match codec.open(e) {
            Ok(env) => match env.message {
                Message::Refusal(r) => Some((env.sender, r)),
                _ => None,
            },
            Err(_) => None,
        }) {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no refusal");
    };
    assert_eq!(refusal.0, Sender::Signer(1));
    assert_eq!(refusal.1.request, 42);
    assert_eq!(refusal.1.rule, "request.unknown: no such peg-out request");
}

#[test]
fn attestations_at_start_when_the_key_comes_back_and_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cores, key) = keyed_cores(dir.path(), true);
    let v = Scripted::default();
    v.0.lock().unwrap().attest = Some(key);
    let c = &mut cores[0];
    c.set_validator(Box::new(v.clone()));
    assert_eq!(
        v.0.lock().unwrap().held,
        vec![key],
        "told the keys it holds"
    );
    c.set_attest_interval(Duration::from_secs(3600));
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_millis(secs);
    let is_attestation = |m: Option<Message>| matches!(m, Some(Message::Attestation(a)) if a.key == key && a.contract == CONTRACT);
    assert!(is_attestation(c.attestation(CONTRACT, s(0))), "at start");
    assert!(c.attestation(CONTRACT, s(6_000)).is_none(), "unchanged");
    // The key cannot be confirmed for a while, then again: attested at
    // once, not an hour later.
    v.0.lock().unwrap().attest = None;
    assert!(c.attestation(CONTRACT, s(12_000)).is_none());
    v.0.lock().unwrap().attest = Some(key);
    let calls = v.0.lock().unwrap().attest_calls;
    assert!(
        c.attestation(CONTRACT, s(14_000)).is_none(),
        "the validator is asked at most every ATTEST_CHECK"
    );
    assert_eq!(v.0.lock().unwrap().attest_calls, calls);
    assert!(is_attestation(c.attestation(CONTRACT, s(17_000))));
    assert!(c.attestation(CONTRACT, s(23_000)).is_none());
    assert!(is_attestation(
        c.attestation(CONTRACT, s(17_000 + 3_600_000))
    ));
    // A key this signer holds no share of is never attested.
    v.0.lock().unwrap().attest = Some(sk(0x77, 0).public_key(&Secp256k1::new()));
    assert!(c.attestation(CONTRACT, s(3_630_000)).is_none());
}
