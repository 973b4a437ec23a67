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
    Error, FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignerFile,
    SignerInfo, SignerSet,
};
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
    let sig = coord.sign_message(&sighash).unwrap();
    verify(&agg, &sighash, &sig);
    tx.input[0].witness = Witness::from_slice(&[sig.as_ref()]);
    fee_wallet::verify_spends(&tx, &[prevout]).unwrap();

    // And again: rounds keep working.
    let sig2 = coord.sign_message(&[9; 32]).unwrap();
    verify(&agg, &[9; 32], &sig2);
}

#[test]
fn signing_completes_with_n_minus_t_offline_and_times_out_beyond() {
    let mut c = Cluster::new(5, 1, 3);
    let mut coord = c.coordinator(Duration::from_secs(2));
    let agg = coord.run_dkg_round().unwrap();
    c.kill(4);
    c.kill(5);
    let sig = coord.sign_message(&[1; 32]).unwrap();
    verify(&agg, &[1; 32], &sig);

    c.kill(3);
    let start = Instant::now();
    let e = coord.sign_message(&[2; 32]).unwrap_err();
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
    let sig = coord.sign_message(&[3; 32]).unwrap();
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
    let sig = coord.sign_message(&[4; 32]).unwrap();
    verify(&agg, &[4; 32], &sig);
}

#[test]
fn forged_and_replayed_packets_are_dropped_on_both_sides() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let agg = coord.run_dkg_round().unwrap();
    let sig = coord.sign_message(&[5; 32]).unwrap();
    verify(&agg, &[5; 32], &sig);

    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let history = relay.poll(0, Duration::ZERO).unwrap().messages;
    let packets: Vec<wsts::net::Packet> = history
        .iter()
        .filter_map(|(_, b)| frost_net::decode_packet(b).ok())
        .collect();

    // Replays: the old DkgBegin and NonceRequest posted again.
    for p in &packets {
        if matches!(
            p.msg,
            wsts::net::Message::DkgBegin(_) | wsts::net::Message::NonceRequest(_)
        ) {
            // An attacker tags replays so that they are delivered.
            relay
                .post_tagged(&frost_net::encode_packet(p), frost_net::relay_tag(&p.msg))
                .unwrap();
        }
    }
    // A forgery: a nonce request signed by an unknown key.
    let mut forged = packets
        .iter()
        .find(|p| matches!(p.msg, wsts::net::Message::NonceRequest(_)))
        .unwrap()
        .clone();
    if let wsts::net::Message::NonceRequest(r) = &mut forged.msg {
        r.sign_id += 100;
        r.message = vec![0xee; 32];
    }
    use wsts::net::Signable;
    forged.sig = forged.msg.sign(&frost_net::scalar(&key(0x66, 0))).unwrap();
    relay
        .post_tagged(&frost_net::encode_packet(&forged), frost_net::TAG_REQUEST)
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Signing still works, and the signers dropped every replay and the forgery.
    let sig = coord.sign_message(&[6; 32]).unwrap();
    verify(&agg, &[6; 32], &sig);
    for id in 1..=3 {
        let node = c.kill(id);
        assert!(
            node.rejected() >= 3,
            "signer {id} rejected {}",
            node.rejected()
        );
    }

    // The coordinator drops a replayed response (an old NonceResponse) too.
    for id in 1..=3 {
        c.restart(id);
    }
    let old_response = packets
        .iter()
        .find(|p| matches!(p.msg, wsts::net::Message::NonceResponse(_)))
        .unwrap();
    relay
        .post_tagged(
            &frost_net::encode_packet(old_response),
            frost_net::TAG_RESPONSE,
        )
        .unwrap();
    let before = coord.rejected();
    // Post it during the next round, too, by racing it in just after the start.
    let relay2 = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let replay = frost_net::encode_packet(old_response);
    let racer = std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            relay2
                .post_tagged(&replay, frost_net::TAG_RESPONSE)
                .unwrap();
        }
    });
    let sig = coord.sign_message(&[7; 32]).unwrap();
    racer.join().unwrap();
    verify(&agg, &[7; 32], &sig);
    std::thread::sleep(Duration::from_millis(50));
    let _ = coord.sign_message(&[8; 32]).unwrap();
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
            if let wsts::net::Message::DkgPrivateShares(s) = &mut m {
                for (_, shares) in &mut s.shares {
                    for bytes in shares.values_mut() {
                        if let Some(b) = bytes.last_mut() {
                            *b ^= 0x5a;
                        }
                    }
                }
            }
            m
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

#[test]
fn a_restarted_signer_refuses_the_signing_rounds_it_answered_before() {
    let mut c = Cluster::new(3, 1, 2);
    let mut coord = c.coordinator(Duration::from_secs(5));
    let agg = coord.run_dkg_round().unwrap();
    for m in [[7u8; 32], [8; 32]] {
        verify(&agg, &m, &coord.sign_message(&m).unwrap());
    }
    let relay = RelayClient::new(&c.relay.url(), Duration::from_secs(5));
    let old_requests: Vec<Vec<u8>> = relay
        .poll(0, Duration::ZERO)
        .unwrap()
        .messages
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| {
            frost_net::decode_packet(b)
                .is_ok_and(|p| matches!(p.msg, wsts::net::Message::NonceRequest(_)))
        })
        .collect();
    assert_eq!(old_requests.len(), 2);

    // Restarted (its DKG state file was written before these rounds), the
    // signer is shown the old rounds' requests again: it answers none.
    c.kill(1);
    c.restart(1);
    for b in &old_requests {
        relay.post_tagged(b, frost_net::TAG_REQUEST).unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    let node = c.kill(1);
    assert_eq!(node.rejected(), 2, "both old rounds refused");
    c.restart(1);
    // New rounds are answered: signer 1 is needed with 2 of 3 after 3 stops.
    c.kill(3);
    verify(&agg, &[9; 32], &coord.sign_message(&[9; 32]).unwrap());
}

/// One taproot signature with the newest key (the trait signs lists).
trait SignOne {
    fn sign_message(
        &mut self,
        sighash: &[u8; 32],
    ) -> Result<bitcoin::secp256k1::schnorr::Signature, frost_coordinator::Error>;
}

impl<T: frost_coordinator::FrostCoordinator> SignOne for T {
    fn sign_message(
        &mut self,
        sighash: &[u8; 32],
    ) -> Result<bitcoin::secp256k1::schnorr::Signature, frost_coordinator::Error> {
        let key = self
            .aggregate_public_key()
            .ok_or(frost_coordinator::Error::NoAggregateKey)?;
        let item = frost_coordinator::SignItem {
            key,
            message: frost_coordinator::ToSign::Taproot { sighash: *sighash },
        };
        Ok(self.sign(&[], &[item])?.remove(0))
    }
}
