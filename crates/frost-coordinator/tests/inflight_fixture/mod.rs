//! The fixture of the rounds-in-flight tests (`rounds_in_flight.rs`) and
//! their red team (`redteam_inflight.rs`): a relay on 127.0.0.1, real
//! signers as threads, the relay coordinator, jobs of sighashes and their
//! check. Each binary uses part of it.
#![allow(dead_code, unused_imports)]

pub(crate) use bitcoin::key::{Secp256k1, TapTweak};
pub(crate) use bitcoin::secp256k1::{schnorr, Message, PublicKey, SecretKey};
pub(crate) use frost_coordinator::{
    Error, FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignJob,
    SignerFile, SignerInfo, SignerSet, ToSign,
};
pub(crate) use frost_net::envelope::peek;
pub(crate) use frost_net::messages::Message as Msg;
pub(crate) use frost_net::{Kind, Sender, TAG_REQUEST, TAG_RESPONSE};
pub(crate) use frost_signer::{SignerNode, SignerOptions};
pub(crate) use relay::{RelayClient, RelayConfig, RelayServer};
pub(crate) use std::collections::VecDeque;
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::thread::JoinHandle;
pub(crate) use std::time::{Duration, Instant};

pub(crate) fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

pub(crate) struct Cluster {
    pub(crate) relay: RelayServer,
    pub(crate) file: SignerFile,
    pub(crate) coordinator_key: SecretKey,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) signers: Vec<(Arc<AtomicBool>, JoinHandle<SignerNode>)>,
}

impl Cluster {
    /// `n` signers of one key id each, a signature needing `threshold`;
    /// `setup` prepares each signer (by id) before it runs.
    pub(crate) fn new(n: u32, threshold: u32, setup: impl Fn(u32, &mut SignerNode)) -> Cluster {
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
    pub(crate) fn coordinator(
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

pub(crate) fn sighash(job: u32, item: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&job.to_be_bytes());
    h[4..8].copy_from_slice(&item.to_be_bytes());
    h[31] = 0xaa;
    h
}

/// `jobs` jobs of `items` taproot sighashes each, with `payload`.
pub(crate) fn jobs(
    agg: PublicKey,
    first: u32,
    jobs: u32,
    items: u32,
    payload: &[u8],
) -> Vec<SignJob> {
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

pub(crate) fn verify(agg: &PublicKey, job: &SignJob, sigs: &[schnorr::Signature]) {
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
