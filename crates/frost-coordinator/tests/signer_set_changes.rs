//! Signer-set changes through the gated DKG (issue #11): a signer's message
//! key rotated, a signer added, a signer removed. Each time every party is
//! restarted on the new signer file, the signers holding a key with
//! `--allow-rotation`, and a new key is made through the same gated DKG as a
//! key rotation. The old key keeps the set it was made under: its rounds ask
//! its own holders under its own threshold and key ids, while every envelope
//! is verified against the current set's message keys.
//!
//! Real relay on 127.0.0.1, real signer nodes, real FROST signatures, each
//! checked against the BIP-341 tweaked key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{Message as SecpMessage, PublicKey, SecretKey};
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignerFile,
    SignerInfo, SignerSet, ToSign,
};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, EnvelopeError, KeySet, Sender};
use frost_signer::{SignerNode, SignerOptions};
use relay::{RelayClient, RelayConfig, RelayServer};

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

/// A signer set: signer `id` has message key `keys[id - 1]` and key id `id`.
fn set(keys: &[SecretKey], threshold: u32) -> SignerSet {
    let secp = Secp256k1::new();
    SignerSet {
        threshold,
        dkg_threshold: None,
        signers: keys
            .iter()
            .zip(1u32..)
            .map(|(k, id)| SignerInfo {
                id,
                public_key: k.public_key(&secp),
                key_ids: vec![id],
                private_key: None,
            })
            .collect(),
    }
}

struct Peg {
    relay: RelayServer,
    dir: tempfile::TempDir,
    file: SignerFile,
    /// Each signer's current message key, by id - 1.
    keys: Vec<SecretKey>,
    running: Vec<(u32, Arc<AtomicBool>, JoinHandle<SignerNode>)>,
}

impl Peg {
    fn new(n: u32, threshold: u32) -> Peg {
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
        let keys: Vec<SecretKey> = (0..n).map(|i| key(0x5e, i)).collect();
        let file = SignerFile {
            relay_url: relay.url(),
            coordinator_public_key: key(0xc0, 0).public_key(&Secp256k1::new()),
            magic_bytes: None,
            policy: Default::default(),
            state_dir: None,
            network: Some("regtest".into()),
            contract: Some("ST1.sbtc".into()),
            set: set(&keys, threshold),
        };
        Peg {
            relay,
            dir: tempfile::tempdir().unwrap(),
            file,
            keys,
            running: vec![],
        }
    }

    /// The operator's step: every party stopped, the new signer file.
    fn change_set(&mut self, keys: Vec<SecretKey>, threshold: u32) {
        self.stop_all();
        self.keys = keys;
        self.file.set = set(&self.keys, threshold);
    }

    fn start(&mut self, id: u32) {
        self.start_with(id, self.file.clone(), self.keys[id as usize - 1]);
    }

    fn start_with(&mut self, id: u32, file: SignerFile, private_key: SecretKey) {
        let mut node = SignerNode::new(SignerOptions {
            id,
            file,
            private_key,
            state_path: self.dir.path().join(format!("signer-{id}.json")),
            poll_wait: Duration::from_millis(200),
            allow_rotation: true,
            attest_interval: frost_signer::ATTEST_INTERVAL,
        })
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            node.run(&s);
            node
        });
        self.running.push((id, stop, handle));
    }

    fn start_all(&mut self) {
        for id in 1..=self.file.set.num_signers() {
            self.start(id);
        }
    }

    fn stop(&mut self, id: u32) -> SignerNode {
        let i = self.running.iter().position(|(r, ..)| *r == id).unwrap();
        let (_, stop, handle) = self.running.remove(i);
        stop.store(true, Ordering::SeqCst);
        handle.join().unwrap()
    }

    fn stop_all(&mut self) -> Vec<SignerNode> {
        let ids: Vec<u32> = self.running.iter().map(|(id, ..)| *id).collect();
        ids.into_iter().map(|id| self.stop(id)).collect()
    }

    fn coordinator(&self) -> RelayFrostCoordinator {
        let mut o = RelayCoordinatorOptions::from_file(&self.file, key(0xc0, 0));
        o.dkg_timeout = Duration::from_secs(20);
        o.sign_timeout = Duration::from_secs(10);
        o.state_path = Some(self.dir.path().join("coordinator.json"));
        RelayFrostCoordinator::new(o).unwrap()
    }

    fn post(&self, bytes: &[u8], tag: &str) {
        RelayClient::new(&self.relay.url(), Duration::from_secs(5))
            .post_tagged(bytes, tag)
            .unwrap();
    }
}

impl Drop for Peg {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Signs one sighash per key in one request; each signature verifies
/// against its key's tweaked output key.
fn sign_each(c: &mut RelayFrostCoordinator, keys: &[PublicKey], tag: u8) {
    let items: Vec<SignItem> = keys
        .iter()
        .zip(0u8..)
        .map(|(k, i)| SignItem {
            key: *k,
            message: ToSign::Taproot {
                sighash: [tag.wrapping_add(i); 32],
            },
        })
        .collect();
    let sigs = c.sign(b"payload", &items).unwrap();
    assert_eq!(sigs.len(), items.len());
    let secp = Secp256k1::verification_only();
    for (item, sig) in items.iter().zip(&sigs) {
        let (tweaked, _) = item.key.x_only_public_key().0.tap_tweak(&secp, None);
        let ToSign::Taproot { sighash } = item.message else {
            unreachable!()
        };
        secp.verify_schnorr(
            sig,
            &SecpMessage::from_digest(sighash),
            &tweaked.to_x_only_public_key(),
        )
        .unwrap_or_else(|e| panic!("signature with key {}: {e}", item.key));
    }
}

/// The set a signer's history records for `key`.
fn recorded(node: &SignerNode, key: &PublicKey) -> KeySet {
    node.core()
        .history()
        .find(key)
        .and_then(|k| k.set.clone())
        .unwrap_or_else(|| panic!("no recorded set for {key}"))
}

/// A nonce response for the coordinator's next round, as `sender` would
/// send it, sealed by `codec` with `with`.
fn forged_nonce_response(codec: &Codec, sender: u32, with: &SecretKey, key: PublicKey) -> Vec<u8> {
    let m = Message::NonceResponse(Keyed {
        key,
        msg: w::NonceResponse {
            dkg_id: 1,
            sign_id: 1,
            sign_iter_id: 1,
            signer_id: sender - 1,
            key_ids: vec![sender],
            nonces: vec![],
            message: vec![0; 32],
        },
    });
    codec.seal(Sender::Signer(sender), with, &m).unwrap()
}

/// (a) Signer 1 rotates its message key: a new key is made under the new
/// set, the old key still signs (a sweep) and the new key signs, and a
/// packet signed with signer 1's old message key is refused unread.
#[test]
fn a_rotated_message_key_signs_old_and_new_keys_and_the_old_message_key_is_refused() {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut peg = Peg::new(3, 2);
    peg.start_all();
    let mut c = peg.coordinator();
    let old = c.run_dkg_round().unwrap();
    sign_each(&mut c, &[old], 1);
    drop(c);
    let old_file = peg.file.clone();
    let old_message_key = peg.keys[0];

    let mut keys = peg.keys.clone();
    keys[0] = key(0x6e, 0);
    peg.change_set(keys, 2);
    peg.start_all();
    let mut c = peg.coordinator();
    assert_eq!(c.keys(), vec![old], "the coordinator kept the old key");
    let new = c.run_dkg_round().unwrap();
    assert_ne!(new, old);
    // The sweep of the old key's coins and a payout with the new one.
    sign_each(&mut c, &[old, new], 2);

    // Signer 1's old message key, under the new set and under the old one.
    let codec = Codec::new(&peg.file);
    let under_new = forged_nonce_response(&codec, 1, &old_message_key, old);
    assert!(matches!(
        codec.open(&under_new),
        Err(EnvelopeError::BadSignature { .. })
    ));
    let under_old = forged_nonce_response(&Codec::new(&old_file), 1, &old_message_key, old);
    assert!(codec.open(&under_old).is_err());
    let refused_before = c.refused_packets();
    peg.post(&under_new, frost_net::TAG_RESPONSE);
    peg.post(&under_old, frost_net::TAG_RESPONSE);
    sign_each(&mut c, &[old], 3);
    assert!(
        c.refused_packets() >= refused_before + 2,
        "the coordinator refused both packets unread: {} -> {}",
        refused_before,
        c.refused_packets()
    );

    let nodes = peg.stop_all();
    let s1 = nodes
        .iter()
        .find(|n| n.core().history().find(&old).is_some())
        .unwrap();
    assert_eq!(recorded(s1, &old).hash, hex::encode(old_file.set.hash()));
    assert_eq!(recorded(s1, &new).hash, hex::encode(peg.file.set.hash()));
    assert_ne!(recorded(s1, &old).hash, recorded(s1, &new).hash);
}

/// (b) A fourth signer is added (3 → 4, threshold 2 → 3): the new key is
/// made by all four; the old key still signs with its three holders under
/// its own threshold of 2 — also with one of them and the newcomer offline.
#[test]
fn an_added_signer_makes_the_new_key_and_the_old_key_signs_with_its_three_holders() {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut peg = Peg::new(3, 2);
    peg.start_all();
    let mut c = peg.coordinator();
    let old = c.run_dkg_round().unwrap();
    drop(c);

    let mut keys = peg.keys.clone();
    keys.push(key(0x5e, 3));
    peg.change_set(keys, 3);
    peg.start_all();
    let mut c = peg.coordinator();
    let new = c.run_dkg_round().unwrap();
    assert_eq!(c.keys(), vec![old, new]);
    sign_each(&mut c, &[old, new], 1);

    // The old key's threshold is 2 of its 3 holders: signers 1 and 2 alone
    // sign with it, though the current set's threshold is 3.
    let four = peg.stop(4);
    peg.stop(3);
    let began = Instant::now();
    sign_each(&mut c, &[old], 2);
    assert!(began.elapsed() < Duration::from_secs(10));
    // The new key needs 3: two signers do not make it.
    let r = c.sign(
        b"payload",
        &[SignItem {
            key: new,
            message: ToSign::Taproot { sighash: [9; 32] },
        }],
    );
    assert!(r.is_err(), "{r:?}");

    assert_eq!(four.core().history().aggregate_keys(), vec![new]);
    let made_under = recorded(&four, &new).set;
    assert_eq!((made_under.num_signers(), made_under.threshold), (4, 3));
    let nodes = peg.stop_all();
    for n in &nodes {
        assert_eq!(n.core().history().aggregate_keys(), vec![old, new]);
        let old_set = recorded(n, &old).set;
        assert_eq!((old_set.num_signers(), old_set.threshold), (3, 2));
        assert_eq!(
            old_set
                .signers
                .iter()
                .map(|s| s.key_ids.clone())
                .collect::<Vec<_>>(),
            vec![vec![1], vec![2], vec![3]]
        );
    }
    // A restarted coordinator reads both keys with their sets and signs.
    peg.start_all();
    let mut c = peg.coordinator();
    sign_each(&mut c, &[old, new], 3);
}

/// (c) Signer 3 is removed (3 → 2): its packets — under the old signer file
/// it still runs with, or sealed for the new one — are refused unread; the
/// old key still signs with its two remaining holders (its threshold is 2),
/// and the new key is made and signs without signer 3.
#[test]
fn a_removed_signers_packets_are_refused_and_the_old_key_signs_with_the_rest() {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut peg = Peg::new(3, 2);
    peg.start_all();
    let mut c = peg.coordinator();
    let old = c.run_dkg_round().unwrap();
    drop(c);
    let old_file = peg.file.clone();
    let removed_key = peg.keys[2];

    let keys = peg.keys[..2].to_vec();
    peg.change_set(keys, 2);
    peg.start_all();
    // The removed signer did not stop: it still runs on the old file.
    peg.start_with(3, old_file.clone(), removed_key);
    let mut c = peg.coordinator();
    let new = c.run_dkg_round().unwrap();
    // And it posts for the new set, with its own (valid, but removed) key.
    let codec = Codec::new(&peg.file);
    let forged = forged_nonce_response(&codec, 3, &removed_key, old);
    assert!(matches!(
        codec.open(&forged),
        Err(EnvelopeError::WrongSender { .. })
    ));
    let refused_before = c.refused_packets();
    peg.post(&forged, frost_net::TAG_RESPONSE);
    sign_each(&mut c, &[old, new], 1);
    assert!(c.refused_packets() > refused_before);

    let nodes = peg.stop_all();
    let removed = nodes
        .iter()
        .find(|n| n.core().history().aggregate_keys() == vec![old])
        .expect("the removed signer holds only the old key");
    assert!(
        removed.refused_packets() > 0,
        "the removed signer refused the new set's requests"
    );
    for n in nodes
        .iter()
        .filter(|n| n.core().history().find(&new).is_some())
    {
        assert_eq!(recorded(n, &new).set.num_signers(), 2);
        assert_eq!(recorded(n, &old).set.num_signers(), 3);
    }
}

/// A signer set that changes a kept signer's key ids is refused at start
/// by the coordinator and the signers alike: a key's holders are named by
/// id and key ids for good.
#[test]
fn a_set_that_renumbers_a_kept_signers_key_ids_is_refused_at_start() {
    let mut peg = Peg::new(3, 2);
    peg.start_all();
    let mut c = peg.coordinator();
    c.run_dkg_round().unwrap();
    drop(c);
    peg.stop_all();
    let mut file = peg.file.clone();
    file.set.signers[0].key_ids = vec![2];
    file.set.signers[1].key_ids = vec![1];
    let mut o = RelayCoordinatorOptions::from_file(&file, key(0xc0, 0));
    o.state_path = Some(peg.dir.path().join("coordinator.json"));
    let e = RelayFrostCoordinator::new(o).unwrap_err().to_string();
    assert!(e.contains("key ids never change"), "{e}");
    let e = SignerNode::new(SignerOptions {
        id: 1,
        file,
        private_key: peg.keys[0],
        state_path: peg.dir.path().join("signer-1.json"),
        poll_wait: Duration::from_millis(200),
        allow_rotation: true,
        attest_interval: frost_signer::ATTEST_INTERVAL,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("key ids never change"), "{e}");
}
