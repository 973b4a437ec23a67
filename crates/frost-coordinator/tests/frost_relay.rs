//! Relay, signers and coordinator in one process, over real HTTP on
//! 127.0.0.1: DKG, signing, offline and restarted signers, forged, replayed
//! and malicious packets. Every round is bounded by its timeout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{Message, PublicKey, SecretKey};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{
    absolute, transaction, Amount, Network, OutPoint, ScriptBuf, TapSighashType, Transaction, TxIn,
    TxOut, Witness,
};
use frost_coordinator::{
    Error, FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignerFile,
    SignerInfo, SignerSet, ToSign,
};
use frost_net::envelope::{peek, HEADER_LEN};
use frost_net::{Codec, Kind, Sender, TAG_REQUEST, TAG_RESPONSE};
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
    signers: Vec<Option<Running>>,
    allow_rotation: bool,
}

struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<SignerNode>,
}

impl Cluster {
    /// `n` signers with `keys` key ids each; a signature needs `threshold` keys.
    fn new(n: u32, keys: u32, threshold: u32) -> Cluster {
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
                    key_ids: (i * keys + 1..=i * keys + keys).collect(),
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
        let mut c = Cluster {
            relay,
            file,
            coordinator_key,
            dir: tempfile::tempdir().unwrap(),
            signers: vec![],
            allow_rotation: false,
        };
        for id in 1..=n {
            let r = c.spawn(id, |_| {});
            c.signers.push(Some(r));
        }
        c
    }

    fn state_path(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("signer-{id}.json"))
    }

    fn spawn(&self, id: u32, setup: impl FnOnce(&mut SignerNode)) -> Running {
        let mut node = SignerNode::new(SignerOptions {
            id,
            file: self.file.clone(),
            private_key: key(0x5e, id - 1),
            state_path: self.state_path(id),
            poll_wait: Duration::from_millis(500),
            allow_rotation: self.allow_rotation,
            attest_interval: frost_signer::ATTEST_INTERVAL,
        })
        .unwrap();
        setup(&mut node);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            node.run(&s);
            node
        });
        Running { stop, handle }
    }

    /// Stops signer `id` and returns its node.
    fn kill(&mut self, id: u32) -> SignerNode {
        let r = self.signers[id as usize - 1]
            .take()
            .expect("signer running");
        r.stop.store(true, Ordering::SeqCst);
        r.handle.join().unwrap()
    }

    fn restart(&mut self, id: u32) {
        let r = self.spawn(id, |_| {});
        self.signers[id as usize - 1] = Some(r);
    }

    fn coordinator(&self, sign_timeout: Duration) -> RelayFrostCoordinator {
        RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set: self.file.set.clone(),
            private_key: self.coordinator_key,
            relay_url: self.relay.url(),
            dkg_timeout: Duration::from_secs(15),
            sign_timeout,
            state_path: Some(self.dir.path().join("coordinator.json")),
            network: None,
            contract: None,
            rounds_in_flight: frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
        })
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in self.signers.iter_mut().filter_map(Option::take) {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.handle.join();
        }
    }
}

/// Signs one taproot sighash with `key`.
fn sign1(
    c: &mut RelayFrostCoordinator,
    key: PublicKey,
    sighash: &[u8; 32],
) -> Result<bitcoin::secp256k1::schnorr::Signature, Error> {
    let item = SignItem {
        key,
        message: ToSign::Taproot { sighash: *sighash },
    };
    c.sign(b"payload", &[item]).map(|mut v| v.remove(0))
}

fn verify(agg: &PublicKey, sighash: &[u8; 32], sig: &bitcoin::secp256k1::schnorr::Signature) {
    let secp = Secp256k1::verification_only();
    let (tweaked, _) = agg.x_only_public_key().0.tap_tweak(&secp, None);
    secp.verify_schnorr(
        sig,
        &Message::from_digest(*sighash),
        &tweaked.to_x_only_public_key(),
    )
    .unwrap();
}

#[test]
fn dkg_then_a_taproot_spend_with_five_signers() {
    let _ = env_logger::builder().is_test(true).try_init();
    let c = Cluster::new(5, 1, 3);
    let mut coord = c.coordinator(Duration::from_secs(5));
    assert_eq!(coord.aggregate_public_key(), None);
    let agg = coord.run_dkg_round().unwrap();
    assert_eq!(coord.aggregate_public_key(), Some(agg));

    // A P2TR output of the aggregate key, spent by key path.
    let peg = fee_wallet::peg_wallet_address(&agg, Network::Regtest);
    let prevout = TxOut {
        value: Amount::from_sat(100_000),
        script_pubkey: peg.script_pubkey(),
    };
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([7; 32]), 0),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(99_000),
            script_pubkey: ScriptBuf::new_op_return([1u8]),
        }],
    };
    let sighash = SighashCache::new(&tx)
        .taproot_key_spend_signature_hash(
            0,
            &Prevouts::All(std::slice::from_ref(&prevout)),
            TapSighashType::Default,
        )
        .unwrap()
        .to_raw_hash()
        .to_byte_array();
    let sig = sign1(&mut coord, agg, &sighash).unwrap();
    verify(&agg, &sighash, &sig);
    tx.input[0].witness = Witness::from_slice(&[sig.as_ref()]);
    fee_wallet::verify_spends(&tx, &[prevout]).unwrap();

    // And again: rounds keep working.
    let sig2 = sign1(&mut coord, agg, &[9; 32]).unwrap();
    verify(&agg, &[9; 32], &sig2);
}

#[test]
fn signing_completes_with_n_minus_t_offline_and_times_out_beyond() {
    let mut c = Cluster::new(5, 1, 3);
    let mut coord = c.coordinator(Duration::from_secs(2));
    let agg = coord.run_dkg_round().unwrap();
    c.kill(4);
    c.kill(5);
    let sig = sign1(&mut coord, agg, &[1; 32]).unwrap();
    verify(&agg, &[1; 32], &sig);

    c.kill(3);
    let start = Instant::now();
    let e = sign1(&mut coord, agg, &[2; 32]).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    match &e {
        Error::Timeout {
            round: "signing",
            missing,
            ..
        } => assert!(missing.contains(&3), "{e}"),
        other => panic!("expected a signing timeout, got {other:?}"),
    }
    assert!(e.is_transient());

    // The signers come back: signing resumes with the same key.
    c.restart(3);
    let sig = sign1(&mut coord, agg, &[3; 32]).unwrap();
    verify(&agg, &[3; 32], &sig);
}

#[test]
fn restarted_signers_and_coordinator_still_sign_for_the_same_key() {
    let mut c = Cluster::new(3, 2, 6);
    let agg = {
        let mut coord = c.coordinator(Duration::from_secs(5));
        coord.run_dkg_round().unwrap()
    };
    // Every key is needed (threshold 6 of 6), so every signer must remember its share.
    for id in 1..=3 {
        c.kill(id);
        c.restart(id);
    }
    let mut coord = c.coordinator(Duration::from_secs(5));
    assert_eq!(
        coord.aggregate_public_key(),
        Some(agg),
        "loaded, no new DKG"
    );
    let sig = sign1(&mut coord, agg, &[4; 32]).unwrap();
    verify(&agg, &[4; 32], &sig);
}

/// Every packet on the relay so far: (kind, sender, bytes).
fn relay_history(c: &Cluster) -> Vec<(Kind, Sender, Vec<u8>)> {
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    relay
        .poll(0, Duration::ZERO)
        .unwrap()
        .messages
        .into_iter()
        .filter_map(|(_, b)| peek(&b).map(|(k, s)| (k, s, b)))
        .collect()
}

fn codec(c: &Cluster) -> Codec {
    Codec::new(&c.file)
}

#[test]
fn forged_and_replayed_packets_are_dropped_on_both_sides() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let agg = coord.run_dkg_round().unwrap();
    let sig = sign1(&mut coord, agg, &[5; 32]).unwrap();
    verify(&agg, &[5; 32], &sig);

    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let history = relay_history(&c);
    // Replays: the old DkgBegin and NonceRequests posted again, as they were.
    for (k, _, b) in &history {
        if matches!(k, Kind::DkgBegin | Kind::NonceRequest) {
            relay.post_tagged(b, k.relay_tag()).unwrap();
        }
    }
    // A forgery: a nonce request signed by an unknown key.
    let forged = Codec::new(&SignerFile {
        coordinator_public_key: key(0x66, 0).public_key(&Secp256k1::new()),
        magic_bytes: None,
        policy: Default::default(),
        ..c.file.clone()
    });
    let (_, _, b) = history
        .iter()
        .find(|(k, _, _)| *k == Kind::NonceRequest)
        .unwrap();
    let mut m = codec(&c).open(b).unwrap().message;
    if let frost_net::messages::Message::NonceRequest(r) = &mut m {
        r.msg.sign_id += 100;
    }
    let bytes = forged.seal(Sender::Coordinator, &key(0x66, 0), &m).unwrap();
    relay.post_tagged(&bytes, TAG_REQUEST).unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Signing still works, and the signers dropped the replayed DKG and the forgery.
    let sig = sign1(&mut coord, agg, &[6; 32]).unwrap();
    verify(&agg, &[6; 32], &sig);
    for id in 1..=3 {
        let node = c.kill(id);
        assert!(
            node.refused_packets() >= 1,
            "signer {id} refused {} forged packets",
            node.refused_packets()
        );
        assert!(
            node.rejected() >= 1,
            "signer {id} rejected {} replays",
            node.rejected()
        );
        assert_eq!(node.core().history().keys.len(), 1, "the key was kept");
    }

    // The coordinator drops a replayed response (an old NonceResponse) too.
    for id in 1..=3 {
        c.restart(id);
    }
    let (_, _, old_response) = history
        .iter()
        .find(|(k, _, _)| *k == Kind::NonceResponse)
        .unwrap()
        .clone();
    let before = coord.rejected();
    let relay2 = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let racer = std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            relay2.post_tagged(&old_response, TAG_RESPONSE).unwrap();
        }
    });
    let sig = sign1(&mut coord, agg, &[7; 32]).unwrap();
    racer.join().unwrap();
    verify(&agg, &[7; 32], &sig);
    std::thread::sleep(Duration::from_millis(50));
    let _ = sign1(&mut coord, agg, &[8; 32]).unwrap();
    assert!(
        coord.rejected() > before,
        "the coordinator dropped the replayed response"
    );
}

#[test]
fn a_signer_sending_bad_private_shares_fails_dkg_and_is_named() {
    let mut c = Cluster::new(4, 1, 3);
    // Replace signer 2 with one that corrupts the private shares it sends.
    c.kill(2);
    let evil = c.spawn(2, |node| {
        node.set_outbound_hook(Box::new(|mut m| {
            if let frost_net::messages::Message::DkgPrivateShares(s) = &mut m {
                for (_, shares) in &mut s.shares {
                    for bytes in shares.values_mut() {
                        if let Some(b) = bytes.last_mut() {
                            *b ^= 0x5a;
                        }
                    }
                }
            }
            Some(m)
        }));
    });
    c.signers[1] = Some(evil);
    let mut coord = c.coordinator(Duration::from_secs(5));
    match coord.run_dkg_round() {
        Err(Error::DkgFailed { bad_signers, .. }) => assert_eq!(bad_signers, vec![2]),
        other => panic!("expected a DKG failure naming signer 2, got {other:?}"),
    }
    assert_eq!(coord.aggregate_public_key(), None);
}

/// The keyless attacker: a plain relay client that captured a round's
/// coordinator packets re-posts them after the signers restart (as they
/// were, relabelled, bit-flipped). No signer returns a share.
#[test]
fn a_keyless_attacker_replaying_a_round_after_restarts_gets_no_share() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let agg = coord.run_dkg_round().unwrap();
    verify(&agg, &[1; 32], &sign1(&mut coord, agg, &[1; 32]).unwrap());
    let captured: Vec<(Kind, Vec<u8>)> = relay_history(&c)
        .into_iter()
        .filter(|(k, s, _)| {
            *s == Sender::Coordinator
                && matches!(
                    k,
                    Kind::SignRequest | Kind::NonceRequest | Kind::SignatureShareRequest
                )
        })
        .map(|(k, _, b)| (k, b))
        .collect();
    assert!(captured
        .iter()
        .any(|(k, _)| *k == Kind::SignatureShareRequest));
    for id in 1..=3 {
        c.kill(id);
        c.restart(id);
    }
    std::thread::sleep(Duration::from_millis(300));
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let mark = relay.head().unwrap();
    // As captured, twice (a share request right after its nonce request).
    for _ in 0..2 {
        for (k, b) in &captured {
            relay.post_tagged(b, k.relay_tag()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Relabelled and bit-flipped: the sign_iter_id wsts does not sign, and
    // every byte of the body in turn.
    for (k, b) in &captured {
        let text = String::from_utf8_lossy(b).into_owned();
        let relabelled = text.replace("\"sign_iter_id\":1", "\"sign_iter_id\":7");
        relay
            .post_tagged(relabelled.as_bytes(), k.relay_tag())
            .unwrap();
        for i in (HEADER_LEN..b.len()).step_by(97) {
            let mut t = b.clone();
            t[i] ^= 0x04;
            relay.post_tagged(&t, k.relay_tag()).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let shares = relay
        .poll(mark - 1, Duration::ZERO)
        .unwrap()
        .messages
        .iter()
        .filter(|(_, b)| peek(b).is_some_and(|(k, _)| k == Kind::SignatureShareResponse))
        .count();
    assert_eq!(shares, 0, "a signer answered a replayed share request");
    let mut refused = 0;
    for id in 1..=3 {
        let node = c.kill(id);
        assert!(node.rejected() >= 2, "signer {id}: {}", node.rejected());
        refused += node.refused_packets();
    }
    assert!(refused > 10, "altered packets refused: {refused}");
}

/// After DKG and signing, the state file holds no nonce and no polynomial:
/// walking the JSON finds neither field anywhere.
#[test]
fn no_nonce_or_polynomial_is_ever_written() {
    fn walk(v: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let lk = k.to_lowercase();
                    if lk.contains("nonce") || lk == "polynomial" || lk == "f" {
                        found.push(format!("{path}.{k}"));
                    }
                    walk(v, &format!("{path}.{k}"), found);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let agg = coord.run_dkg_round().unwrap();
    for m in 1..=3u8 {
        verify(&agg, &[m; 32], &sign1(&mut coord, agg, &[m; 32]).unwrap());
    }
    for id in 1..=3 {
        c.kill(id);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.state_path(id)).unwrap()).unwrap();
        let mut found = vec![];
        walk(&v, "", &mut found);
        assert!(found.is_empty(), "signer {id} wrote {found:?}");
        assert_eq!(v["keys"].as_array().unwrap().len(), 1);
        assert!(
            !c.dir
                .path()
                .join(format!("signer-{id}.rounds.json"))
                .exists(),
            "no round file any more"
        );
    }
    // The coordinator's file neither.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.dir.path().join("coordinator.json")).unwrap())
            .unwrap();
    let mut found = vec![];
    walk(&v, "", &mut found);
    assert!(found.is_empty(), "coordinator wrote {found:?}");
}

#[test]
fn a_corrupt_state_file_is_a_clear_error_at_start() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    coord.run_dkg_round().unwrap();
    c.kill(1);
    let path = c.state_path(1);
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let start = |c: &Cluster| {
        SignerNode::new(SignerOptions {
            id: 1,
            file: c.file.clone(),
            private_key: key(0x5e, 0),
            state_path: c.state_path(1),
            poll_wait: Duration::from_millis(100),
            allow_rotation: false,
            attest_interval: frost_signer::ATTEST_INTERVAL,
        })
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![("garbage", b"{not json".to_vec())];
    let mut v = good.clone();
    v["signer_id"] = 2.into();
    cases.push(("wrong signer", serde_json::to_vec(&v).unwrap()));
    let mut v = good.clone();
    v["keys"][0]["commitments"] = serde_json::json!([]);
    cases.push(("zero parties", serde_json::to_vec(&v).unwrap()));
    let mut v = good.clone();
    v["keys"][0]["params"]["threshold"] = 3.into();
    cases.push(("inconsistent params", serde_json::to_vec(&v).unwrap()));
    let mut v = good.clone();
    v["keys"][0]["private_keys"][0][1] = v["keys"][0]["commitments"][0][1]["id"]["kca"].clone();
    cases.push(("a corrupt share", serde_json::to_vec(&v).unwrap()));
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        match start(&c) {
            Err(frost_signer::SignerError::State { .. }) => {}
            Err(e) => panic!("{what}: the wrong error {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
    assert!(start(&c).is_ok(), "the good file still loads");
}

/// Two DKGs in a row, the second with rotation allowed: both keys sign.
#[test]
fn a_second_dkg_adds_a_key_and_the_old_one_still_signs() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let old = coord.run_dkg_round().unwrap();
    // Without --allow-rotation the signers refuse, and the DKG fails cleanly.
    let e = coord.run_dkg_round().unwrap_err();
    assert!(
        matches!(&e, Error::Timeout { round: "dkg", missing, .. } if *missing == vec![1, 2, 3]),
        "{e:?}"
    );
    assert_eq!(coord.aggregate_public_key(), Some(old));
    verify(&old, &[1; 32], &sign1(&mut coord, old, &[1; 32]).unwrap());

    c.allow_rotation = true;
    for id in 1..=3 {
        c.kill(id);
        c.restart(id);
    }
    let new = coord.run_dkg_round().unwrap();
    assert_ne!(new, old);
    assert_eq!(coord.keys(), vec![old, new]);
    assert_eq!(coord.aggregate_public_key(), Some(new));
    // One request with items for both keys.
    let items = [
        SignItem {
            key: old,
            message: ToSign::Taproot { sighash: [2; 32] },
        },
        SignItem {
            key: new,
            message: ToSign::Taproot { sighash: [3; 32] },
        },
    ];
    let sigs = coord.sign(b"both", &items).unwrap();
    verify(&old, &[2; 32], &sigs[0]);
    verify(&new, &[3; 32], &sigs[1]);
    // Restarted, everybody still holds both.
    for id in 1..=3 {
        let node = c.kill(id);
        assert_eq!(node.core().history().aggregate_keys(), vec![old, new]);
    }
}

#[test]
fn a_dkg_with_a_signer_offline_fails_cleanly_and_the_retry_succeeds() {
    let mut c = Cluster::new(3, 1, 2);
    c.allow_rotation = true;
    for id in 1..=3 {
        c.kill(id);
        c.restart(id);
    }
    let mut coord = c.coordinator(Duration::from_secs(5));
    let old = coord.run_dkg_round().unwrap();
    c.kill(2);
    let e = coord.run_dkg_round().unwrap_err();
    assert!(
        matches!(&e, Error::Timeout { round: "dkg", missing, .. } if *missing == vec![2]),
        "{e:?}"
    );
    assert_eq!(coord.keys(), vec![old]);
    verify(&old, &[4; 32], &sign1(&mut coord, old, &[4; 32]).unwrap());
    c.restart(2);
    let new = coord.run_dkg_round().unwrap();
    assert_eq!(coord.keys(), vec![old, new]);
    verify(&new, &[5; 32], &sign1(&mut coord, new, &[5; 32]).unwrap());
}

/// DKG success needs every signer's KeyStored for the key FIRE computed.
#[test]
fn a_missing_or_wrong_key_stored_report_fails_the_dkg() {
    for wrong_key in [false, true] {
        let mut c = Cluster::new(3, 1, 2);
        c.kill(3);
        let evil = c.spawn(3, move |node| {
            node.set_outbound_hook(Box::new(move |m| match m {
                frost_net::messages::Message::KeyStored(mut k) if wrong_key => {
                    k.key = key(0x77, 0).public_key(&Secp256k1::new());
                    Some(frost_net::messages::Message::KeyStored(k))
                }
                frost_net::messages::Message::KeyStored(_) => None,
                other => Some(other),
            }));
        });
        c.signers[2] = Some(evil);
        let mut coord = c.coordinator(Duration::from_secs(3));
        match coord.run_dkg_round() {
            Err(Error::DkgFailed { bad_signers, .. }) => {
                assert_eq!(bad_signers, vec![3], "wrong key: {wrong_key}")
            }
            other => panic!("expected a DKG failure naming signer 3, got {other:?}"),
        }
        assert_eq!(coord.aggregate_public_key(), None);
        assert!(coord.keys().is_empty());
    }
}

#[test]
fn a_refused_sign_request_names_the_signers_and_their_rule() {
    struct No;
    impl frost_signer::Validator for No {
        fn check(&mut self, _: &frost_net::SignRequest) -> Result<(), String> {
            Err("not a payout I know".into())
        }
        fn will_sign(&self, _: &bitcoin::secp256k1::PublicKey, _: &[u8; 32]) -> bool {
            false
        }
    }
    let mut c = Cluster::new(3, 1, 2);
    // A long timeout: the round must end on the refusals, not on it.
    let sign_timeout = Duration::from_secs(20);
    let mut coord = c.coordinator(sign_timeout);
    let agg = coord.run_dkg_round().unwrap();
    for id in [2, 3] {
        c.kill(id);
        let r = c.spawn(id, |n| n.set_validator(Box::new(No)));
        c.signers[id as usize - 1] = Some(r);
    }
    // The restarted signers read the relay from its head: let them start.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    match sign1(&mut coord, agg, &[9; 32]) {
        Err(Error::Refused { refusals }) => {
            assert_eq!(refusals.len(), 2, "{refusals:?}");
            assert!(refusals.iter().all(|(_, r)| r.contains("not a payout")));
            let ids: Vec<u32> = refusals.iter().map(|(i, _)| *i).collect();
            assert_eq!(ids, vec![2, 3]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the round ended on the refusals, well before its {sign_timeout:?} timeout: took {took:?}"
    );
    // A refusal is a wait for the loop: signers refuse what their own
    // nodes do not show yet, so the payout is asked again later.
    assert!(Error::Refused { refusals: vec![] }.is_transient());
    // One refusal leaves the threshold reachable: signers 1 and 2 sign.
    c.kill(2);
    c.restart(2);
    std::thread::sleep(Duration::from_millis(700));
    verify(&agg, &[8; 32], &sign1(&mut coord, agg, &[8; 32]).unwrap());
}

/// A validator that accepts everything and attests one key.
struct Attests(PublicKey);

impl frost_signer::Validator for Attests {
    fn check(&mut self, _: &frost_net::SignRequest) -> Result<(), String> {
        Ok(())
    }
    fn will_sign(&self, _: &PublicKey, _: &[u8; 32]) -> bool {
        true
    }
    fn attest(&mut self) -> Option<PublicKey> {
        Some(self.0)
    }
}

#[test]
fn the_coordinator_keeps_each_signers_newest_attestation() {
    use frost_net::messages::Message as M;
    use frost_net::Attestation;
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(10));
    assert!(
        coord.attestations().is_empty(),
        "nobody attests before a key"
    );
    let agg = coord.run_dkg_round().unwrap();
    for id in 1..=3 {
        c.kill(id);
        let r = c.spawn(id, |n| n.set_validator(Box::new(Attests(agg))));
        c.signers[id as usize - 1] = Some(r);
    }
    // Each signer attests at start-up; the coordinator reads them between rounds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let a = coord.attestations();
        if a.len() == 3 {
            break a;
        }
        assert!(Instant::now() < deadline, "only {} attestations", a.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        got.iter().map(|a| a.signer).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(got.iter().all(|a| a.key == agg));
    // The raw envelopes are what users' tools verify.
    let codec = Codec::new(&c.file);
    let envs: Vec<Vec<u8>> = got.iter().map(|a| a.envelope.clone()).collect();
    let t = codec.tally_attestations("", &agg, &envs);
    assert_eq!(t.key_ids, 3, "{:?}", t.rejected);
    assert!(t.reaches(c.file.set.threshold));
    // Signing still works with attestations on the relay.
    verify(&agg, &[6; 32], &sign1(&mut coord, agg, &[6; 32]).unwrap());

    // A replayed, older attestation does not replace a newer one; a forged
    // one (not signer 2's key) is refused before it is kept.
    let other = key(0x99, 0).public_key(&Secp256k1::new());
    let seal = |signer: u32, sk: &SecretKey, time: u64| {
        codec
            .seal(
                Sender::Signer(signer),
                sk,
                &M::Attestation(Attestation {
                    contract: String::new(),
                    key: other,
                    time,
                }),
            )
            .unwrap()
    };
    let poster = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    poster
        .post_tagged(&seal(1, &key(0x5e, 0), 1), TAG_RESPONSE)
        .unwrap();
    poster
        .post_tagged(&seal(2, &key(0x77, 0), u64::MAX), TAG_RESPONSE)
        .unwrap();
    let refused = coord.refused_packets();
    let now = coord.attestations();
    assert!(now.iter().all(|a| a.key == agg), "{now:?}");
    assert!(
        coord.refused_packets() > refused,
        "the forged one was refused"
    );
    // Signer 3's own newer statement replaces its older one.
    poster
        .post_tagged(&seal(3, &key(0x5e, 2), u64::MAX), TAG_RESPONSE)
        .unwrap();
    let now = coord.attestations();
    assert_eq!(now[2].key, other);
    assert_eq!((now[0].key, now[1].key), (agg, agg));
}

#[test]
fn a_relay_restart_mid_run_needs_no_restart_of_signers_or_coordinator() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(10));
    let agg = coord.run_dkg_round().unwrap();
    verify(&agg, &[1; 32], &sign1(&mut coord, agg, &[1; 32]).unwrap());

    // The relay process goes away and a new one (numbering from 1 again)
    // takes its port. Nobody else restarts.
    let addr = c.relay.addr().to_string();
    let old = std::mem::replace(
        &mut c.relay,
        RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap(),
    );
    old.shutdown();
    let new = RelayServer::start(&addr, RelayConfig::default()).unwrap();
    let placeholder = std::mem::replace(&mut c.relay, new);
    placeholder.shutdown();

    // The signers and the coordinator notice the new instance and go on.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sig = loop {
        match sign1(&mut coord, agg, &[2; 32]) {
            Ok(sig) => break sig,
            Err(e) if Instant::now() < deadline && e.is_transient() => continue,
            Err(e) => panic!("signing after the relay restart: {e}"),
        }
    };
    verify(&agg, &[2; 32], &sig);
    verify(&agg, &[3; 32], &sign1(&mut coord, agg, &[3; 32]).unwrap());
}

#[test]
fn a_signing_round_goes_through_while_512_slow_clients_hold_connections() {
    use std::io::Write;
    let c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(10));
    let agg = coord.run_dkg_round().unwrap();
    // 512 clients from 127.0.0.2 (so per-address limits meet them, not the
    // parties on 127.0.0.1): half trickle a POST, half open a long poll and
    // never read. Bounded: they are dropped at the end of the test.
    let addr = c.relay.addr();
    let mut hostile = Vec::new();
    for i in 0..512 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        if s.connect_timeout(&addr.into(), Duration::from_millis(500))
            .is_err()
        {
            continue;
        }
        let mut t: std::net::TcpStream = s.into();
        let head = if i % 2 == 0 {
            "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx".to_string()
        } else {
            "GET /messages?after=999999&wait_ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n".to_string()
        };
        let _ = t.write_all(head.as_bytes());
        hostile.push(t);
    }
    assert!(hostile.len() > 100, "the attack connected");
    let started = Instant::now();
    let sig = sign1(&mut coord, agg, &[4; 32]).unwrap();
    verify(&agg, &[4; 32], &sig);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(hostile);
}
