//! A FROST signer for the sBTC peg.
//!
//! [`SignerNode`] reads packets from the relay, drops what it must not
//! process — packets whose signature does not verify against the signer set
//! and coordinator keys (`Packet::verify`), responses meant for the
//! coordinator, and requests from an older DKG or signing round (replays) —
//! and feeds the rest to wsts' `Signer<v2::Party>`, posting its answers back
//! to the relay, signed with the signer's message key.
//!
//! After DKG the signer writes its key share and round counters to its state
//! file (atomically, owner-only permissions) and reads them at start, so a
//! restarted signer still signs for the existing aggregate key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bitcoin::secp256k1::SecretKey;
use frost_net::{
    decode_packet, encode_packet, scalar, write_private_atomically, Admit, SignerFile,
    SignerRounds, Verifier,
};
use log::{debug, info, warn};
use relay::RelayClient;
use serde::{Deserialize, Serialize};
use wsts::common::PolyCommitment;
use wsts::net::{Message, Packet, Signable};
use wsts::state_machine::signer::Signer;
use wsts::traits::Signer as _;

/// The wsts signer this crate runs.
pub type WstsSigner = Signer<wsts::v2::Party>;

/// What stops a signer.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The configuration does not fit.
    #[error("signer configuration: {0}")]
    Config(String),
    /// The state file could not be read or written.
    #[error("signer state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The state file's contents.
#[derive(Serialize, Deserialize)]
struct Persisted {
    /// Format version.
    version: u32,
    /// The 1-based signer id it belongs to.
    signer_id: u32,
    /// The round counters, for replay protection across restarts.
    rounds: SignerRounds,
    /// The party's key shares.
    party: wsts::traits::SignerState,
    /// Every party's polynomial commitments from the DKG.
    commitments: Vec<(u32, PolyCommitment)>,
}

const STATE_VERSION: u32 = 1;

/// The last signing round answered, written before the nonce goes out, so a
/// restarted signer still refuses every earlier round (the DKG state file is
/// written only at DKG). Replaced atomically but not synced: it is defence in
/// depth (wsts checks its own nonce in share requests, so a replayed round
/// gets a fresh nonce and no share), survives a killed process, and two
/// fsyncs per round would sit on every signing round's critical path.
#[derive(Serialize, Deserialize)]
struct AnsweredRound {
    dkg_id: u64,
    sign_id: u64,
}

/// Where the answered-round counter of the state file `state` lives.
fn rounds_path(state: &Path) -> PathBuf {
    state.with_extension("rounds.json")
}

/// How a signer is set up.
#[derive(Debug, Clone)]
pub struct SignerOptions {
    /// The 1-based signer id.
    pub id: u32,
    /// The shared signer file.
    pub file: SignerFile,
    /// This signer's relay message key.
    pub private_key: SecretKey,
    /// Where the DKG state is kept.
    pub state_path: PathBuf,
    /// How long one relay poll waits for new messages.
    pub poll_wait: Duration,
}

/// Rewrites an outbound message (fault tests only).
#[cfg(feature = "testing")]
pub type OutboundHook = Box<dyn FnMut(Message) -> Message + Send>;

/// A running signer.
pub struct SignerNode {
    id: u32,
    signer: WstsSigner,
    rounds: SignerRounds,
    verifier: Verifier,
    relay: RelayClient,
    cursor: u64,
    key: wsts::curve::scalar::Scalar,
    state_path: PathBuf,
    poll_wait: Duration,
    rejected: u64,
    #[cfg(feature = "testing")]
    hook: Option<OutboundHook>,
}

impl std::fmt::Debug for SignerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerNode")
            .field("id", &self.id)
            .field("rounds", &self.rounds)
            .finish()
    }
}

fn state_err(path: &Path, reason: impl ToString) -> SignerError {
    SignerError::State {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl SignerNode {
    /// Builds the signer, loading its DKG state if the state file exists,
    /// and starts reading the relay from its current head.
    ///
    /// # Errors
    /// A configuration that does not fit (unknown id, key mismatch), an
    /// unreadable state file, or an unreachable relay.
    pub fn new(opts: SignerOptions) -> Result<SignerNode, SignerError> {
        let set = &opts.file.set;
        let me = set.signer(opts.id).ok_or_else(|| {
            SignerError::Config(format!("no signer with id {} in the signer set", opts.id))
        })?;
        let secp = bitcoin::secp256k1::Secp256k1::signing_only();
        if opts.private_key.public_key(&secp) != me.public_key {
            return Err(SignerError::Config(format!(
                "the private key does not belong to signer {} (its public key is {})",
                opts.id, me.public_key
            )));
        }
        let keys = set
            .wsts_public_keys()
            .map_err(|e| SignerError::Config(e.to_string()))?;
        let verifier = Verifier::new(set, &opts.file.coordinator_public_key)
            .map_err(|e| SignerError::Config(e.to_string()))?;
        let key = scalar(&opts.private_key);
        let mut rng = wsts::util::create_rng();
        let mut signer = WstsSigner::new(
            set.threshold,
            set.dkg_threshold(),
            set.num_signers(),
            set.num_keys(),
            me.wsts_id(),
            me.key_ids.clone(),
            key,
            keys,
            &mut rng,
        )
        .map_err(|e| SignerError::Config(format!("{e:?}")))?;
        let mut rounds = SignerRounds::default();
        if opts.state_path.exists() {
            let text = std::fs::read_to_string(&opts.state_path)
                .map_err(|e| state_err(&opts.state_path, e))?;
            let p: Persisted =
                serde_json::from_str(&text).map_err(|e| state_err(&opts.state_path, e))?;
            if p.version != STATE_VERSION || p.signer_id != opts.id {
                return Err(state_err(
                    &opts.state_path,
                    format!(
                        "belongs to signer {} (format {}), not signer {}",
                        p.signer_id, p.version, opts.id
                    ),
                ));
            }
            signer.signer = wsts::v2::Party::load(&p.party);
            signer.commitments = p.commitments.into_iter().collect();
            signer.dkg_id = p.rounds.dkg_id;
            rounds = p.rounds;
            info!(
                "signer {}: loaded DKG state of round {} from {}",
                opts.id,
                rounds.dkg_id,
                opts.state_path.display()
            );
        }
        let counter = rounds_path(&opts.state_path);
        if counter.exists() {
            let text = std::fs::read_to_string(&counter).map_err(|e| state_err(&counter, e))?;
            let a: AnsweredRound =
                serde_json::from_str(&text).map_err(|e| state_err(&counter, e))?;
            if a.dkg_id == rounds.dkg_id && a.sign_id >= rounds.sign.0 {
                // Only rounds after the last one answered: a share request of
                // that round would meet a nonce this process never made.
                rounds.sign = (a.sign_id, u64::MAX);
            }
        }
        let relay = RelayClient::new(&opts.file.relay_url, Duration::from_secs(10));
        let head = relay
            .head()
            .map_err(|e| SignerError::Config(format!("relay {}: {e}", opts.file.relay_url)))?;
        Ok(SignerNode {
            id: opts.id,
            signer,
            rounds,
            verifier,
            relay,
            cursor: head.saturating_sub(1),
            key,
            state_path: opts.state_path,
            poll_wait: opts.poll_wait,
            rejected: 0,
            #[cfg(feature = "testing")]
            hook: None,
        })
    }

    /// Installs a rewrite of every outbound message (fault tests only).
    #[cfg(feature = "testing")]
    pub fn set_outbound_hook(&mut self, hook: OutboundHook) {
        self.hook = Some(hook);
    }

    /// Returns how many inbound packets were dropped (bad signature or replay).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Returns the current round counters.
    pub fn rounds(&self) -> SignerRounds {
        self.rounds
    }

    /// Runs until `stop` is set. Relay errors are logged and retried.
    pub fn run(&mut self, stop: &AtomicBool) {
        info!("signer {} running", self.id);
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.step() {
                warn!("signer {}: {e}; retrying", self.id);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        info!("signer {} stopped", self.id);
    }

    /// Polls the relay once and handles what arrived. Returns the number of
    /// packets processed.
    ///
    /// # Errors
    /// When the relay cannot be reached or a state write fails.
    pub fn step(&mut self) -> Result<usize, SignerError> {
        let batch = self
            .relay
            .poll_tags(self.cursor, self.poll_wait, frost_net::SIGNER_TAGS)
            .map_err(|e| SignerError::Config(format!("relay: {e}")))?;
        if batch.lowest > self.cursor + 1 {
            warn!(
                "signer {}: the relay dropped messages {}..{} before we read them",
                self.id,
                self.cursor + 1,
                batch.lowest
            );
        }
        self.cursor = batch.last_seq(self.cursor);
        let mut processed = 0;
        for (seq, bytes) in batch.messages {
            if frost_net::signer_ignores(&bytes) {
                continue;
            }
            let packet = match decode_packet(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    debug!("signer {}: message {seq} dropped: {e}", self.id);
                    continue;
                }
            };
            // Cheap checks first: most traffic is other parties' responses.
            let mut rounds = self.rounds;
            match rounds.admit(&packet.msg) {
                Admit::Ignore => continue,
                Admit::Replay => {
                    self.rejected += 1;
                    warn!(
                        "signer {}: dropped a replayed or stale {} (message {seq})",
                        self.id,
                        kind(&packet.msg)
                    );
                    continue;
                }
                Admit::Accept => {}
            }
            if !self.verifier.verify(&packet) {
                self.rejected += 1;
                warn!(
                    "signer {}: dropped a {} with a bad signature (message {seq})",
                    self.id,
                    kind(&packet.msg)
                );
                continue;
            }
            if let Message::NonceRequest(r) = &packet.msg {
                let answered = AnsweredRound {
                    dkg_id: r.dkg_id,
                    sign_id: r.sign_id,
                };
                let path = rounds_path(&self.state_path);
                let stored = serde_json::to_vec(&answered)
                    .map_err(|e| e.to_string())
                    .and_then(|t| frost_net::replace_private(&path, &t).map_err(|e| e.to_string()));
                if let Err(e) = stored {
                    // Unrecorded, a restart could answer this round again:
                    // better not to answer at all.
                    warn!(
                        "signer {}: not answering signing round {}: cannot record it in {}: {e}",
                        self.id,
                        r.sign_id,
                        path.display()
                    );
                    continue;
                }
            }
            self.rounds = rounds;
            self.handle(&packet)?;
            processed += 1;
        }
        Ok(processed)
    }

    fn handle(&mut self, packet: &Packet) -> Result<(), SignerError> {
        let mut rng = wsts::util::create_rng();
        let outbound = match self.signer.process(&packet.msg, &mut rng) {
            Ok(out) => out,
            Err(e) => {
                warn!(
                    "signer {}: could not process a {}: {e:?}",
                    self.id,
                    kind(&packet.msg)
                );
                return Ok(());
            }
        };
        for msg in outbound {
            #[cfg(feature = "testing")]
            let msg = match self.hook.as_mut() {
                Some(h) => h(msg),
                None => msg,
            };
            let dkg_done =
                matches!(&msg, Message::DkgEnd(e) if e.status == wsts::net::DkgStatus::Success);
            let sig = match msg.sign(&self.key) {
                Ok(s) => s,
                Err(e) => {
                    warn!("signer {}: could not sign a {}: {e:?}", self.id, kind(&msg));
                    continue;
                }
            };
            let out = Packet { msg, sig };
            if dkg_done {
                // Persist the key share before telling anyone DKG succeeded.
                self.persist()?;
                info!(
                    "signer {}: DKG round {} complete, state saved",
                    self.id, self.rounds.dkg_id
                );
            }
            if let Err(e) = self
                .relay
                .post_tagged(&encode_packet(&out), frost_net::relay_tag(&out.msg))
            {
                warn!(
                    "signer {}: could not post a {}: {e}",
                    self.id,
                    kind(&out.msg)
                );
            }
        }
        Ok(())
    }

    /// Writes the DKG state atomically with owner-only permissions.
    fn persist(&self) -> Result<(), SignerError> {
        let p = Persisted {
            version: STATE_VERSION,
            signer_id: self.id,
            rounds: self.rounds,
            party: self.signer.signer.save(),
            commitments: self
                .signer
                .commitments
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        let text = serde_json::to_vec(&p).map_err(|e| state_err(&self.state_path, e))?;
        write_private_atomically(&self.state_path, &text)
            .map_err(|e| state_err(&self.state_path, e))
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::DkgBegin(_) => "DkgBegin",
        Message::DkgPublicShares(_) => "DkgPublicShares",
        Message::DkgPrivateBegin(_) => "DkgPrivateBegin",
        Message::DkgPrivateShares(_) => "DkgPrivateShares",
        Message::DkgEndBegin(_) => "DkgEndBegin",
        Message::DkgEnd(_) => "DkgEnd",
        Message::NonceRequest(_) => "NonceRequest",
        Message::NonceResponse(_) => "NonceResponse",
        Message::SignatureShareRequest(_) => "SignatureShareRequest",
        Message::SignatureShareResponse(_) => "SignatureShareResponse",
    }
}

/// Runs a signer until `stop` is set: a convenience for binaries and tests.
///
/// # Errors
/// See [`SignerNode::new`].
pub fn run_signer(opts: SignerOptions, stop: &AtomicBool) -> Result<(), SignerError> {
    SignerNode::new(opts)?.run(stop);
    Ok(())
}
