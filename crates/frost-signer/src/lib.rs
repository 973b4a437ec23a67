//! A FROST signer for the sBTC peg.
//!
//! [`SignerNode`] reads packets from the relay and opens each one with the
//! peg's [`Codec`]: the envelope's signature is verified against the signer
//! set and coordinator keys before the body is decoded, and every id it
//! carries is checked against the set. What survives goes to
//! [`SignerCore`], which applies the round rules and answers.
//!
//! wsts alone is not safe to run over an untrusted relay: its
//! `sign_share_request` never checks that the request lists the nonce this
//! signer made — it signs with whatever nonce the party holds (zero after a
//! load, or one already used) — and its signed hash of a share request does
//! not cover `sign_iter_id`. A share made with a zero or reused nonce reveals
//! the key share. So this crate does not use wsts' signer state machine for
//! signing at all:
//!
//! - **Nonces live in memory, once.** Each signing round
//!   ([`frost_net::RoundId`]) gets a fresh `v2::Party` built from the key
//!   share and a fresh nonce. A share request is answered only for an open
//!   round, only if it lists exactly this signer's nonce response as sent,
//!   and for the same message, and only if every other listed entry comes
//!   with that signer's own sealed nonce response saying the same
//!   ([`frost_net::Codec::check_listed_nonces`]: wsts' binding value omits
//!   the signer ids); then the round is dropped with its nonce. A
//!   restarted signer has no open rounds, so nothing it signed before can be
//!   made to sign again.
//! - **Nonce requests only for what was asked and validated.** A
//!   [`SignRequest`] passes the [`Validator`] first (or is answered with a
//!   signed `Refusal` naming the rule); a nonce request is answered only for
//!   a (key, digest) pair an accepted request listed *and* the validator
//!   says it recorded ([`Validator::will_sign`]).
//! - **Attestations.** When [`Validator::attest`] names the key the
//!   contract publishes and it is one this signer holds, the signer sends a
//!   signed `Attestation` of it at start-up, every
//!   [`SignerOptions::attest_interval`], and as soon as the key changes.
//! - **Key history.** The state file ([`state`]) holds every key share ever
//!   held, never a nonce or a DKG polynomial. A DKG runs in its own wsts
//!   state machine and only appends to the history once it succeeded; the
//!   signer joins a DKG only while it holds no key, or when its operator
//!   allowed a rotation, and each DKG round id once (recorded on disk). Each key records the signer set it was made under:
//!   after a signer-set change, a share request for an old key is answered
//!   only if every signer it lists held that key with the listed key ids.

mod share;
pub mod state;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, SecretKey};
use frost_net::messages::{Attestation, KeyStored, Keyed, Message, Refusal};
use frost_net::wsts::net as w;
use frost_net::{
    scalar, Codec, Envelope, ForSigner, Kind, ListedNonces, RoundId, Sender, ShareRequest,
    SignRequest, SignerFile, SignerSet,
};
use log::{debug, info, warn};
use relay::RelayClient;
use wsts::state_machine::signer::Signer;

pub use state::{KeyEntry, KeyHistory, KeyParams};

/// The wsts signer state machine a DKG runs in.
pub type WstsSigner = Signer<wsts::v2::Party>;

/// How many signing rounds may be open at once (the oldest is dropped).
pub const MAX_OPEN_ROUNDS: usize = 64;
/// How long an open round keeps its nonce.
pub const ROUND_TTL: Duration = Duration::from_secs(120);
/// How many (key, digest) pairs a signer remembers as asked for.
pub const MAX_ALLOWED: usize = 4096;
/// How long a sign request's items stay allowed.
pub const ALLOWED_TTL: Duration = Duration::from_secs(600);
/// How many round ids a signer remembers as having had their nonce (the
/// oldest forgotten first; not by time, since a relay replaying a sign
/// request the validator still passes renews its allowance): a nonce request
/// for one of them is dropped, so a relay replaying the nonce requests of
/// rounds already signed cannot reopen them and evict the rounds in flight.
pub const MAX_NONCED: usize = 4 * MAX_ALLOWED;
/// The most threads a signer posts one batch's answers on, side by side.
const POST_THREADS: usize = 16;

/// How often an unchanged attestation is sent again, by default.
pub const ATTEST_INTERVAL: Duration = Duration::from_secs(60);
/// How often [`Validator::attest`] is asked at most (so a changed key is
/// attested within about this long, or the attestation interval if shorter).
pub const ATTEST_CHECK: Duration = Duration::from_secs(5);

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
    /// The relay could not be reached.
    #[error("relay: {0}")]
    Relay(String),
}

/// Decides whether the signer takes part in a sign request.
///
/// [`AcceptAll`] accepts everything (tests of the protocol only); the
/// `signer-guard` crate checks each request against the signer's own Bitcoin
/// and Stacks nodes and the peg rules.
pub trait Validator: Send {
    /// `Ok` to sign the request's items — after recording, durably, that
    /// this signer will sign each of them — or the rule that failed
    /// (`"name: detail"`, sent back in a `Refusal`).
    ///
    /// # Errors
    /// The rule the request breaks, for the coordinator's operator.
    fn check(&mut self, request: &SignRequest) -> Result<(), String>;

    /// Whether `(key, digest)` passed [`Validator::check`] and is recorded:
    /// nonce requests are answered only for those.
    fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> bool;

    /// The peg wallet key the contract publishes, when it is one this
    /// signer holds (read on its own stacks-node): what it attests to.
    /// `None` when it cannot tell, or the published key is not ours.
    ///
    /// Asked at most every [`ATTEST_CHECK`] from the signer's loop, so it
    /// should answer from what the validator read last, not block for long.
    fn attest(&mut self) -> Option<PublicKey> {
        None
    }

    /// The aggregate keys this signer holds shares of, oldest first: told
    /// when the validator is installed and after every DKG that stored a
    /// new share (a guard watches their peg wallet coins).
    fn held_keys(&mut self, keys: &[PublicKey]) {
        let _ = keys;
    }
}

/// A [`Validator`] that accepts every request: for tests of the protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Validator for AcceptAll {
    fn check(&mut self, _request: &SignRequest) -> Result<(), String> {
        Ok(())
    }

    fn will_sign(&self, _key: &PublicKey, _digest: &[u8; 32]) -> bool {
        true
    }
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
    /// Where the key history is kept.
    pub state_path: PathBuf,
    /// How long one relay poll waits for new messages.
    pub poll_wait: Duration,
    /// Whether this signer joins a DKG while it already holds a key (a key
    /// rotation). Off, a signer with a key refuses every new DKG.
    pub allow_rotation: bool,
    /// How often an unchanged attestation of the published key is sent
    /// again ([`ATTEST_INTERVAL`] in production); a changed key is attested
    /// at once.
    pub attest_interval: Duration,
}

/// Rewrites (or, returning `None`, drops) an outbound message: fault tests only.
#[cfg(feature = "testing")]
pub type OutboundHook = Box<dyn FnMut(Message) -> Option<Message> + Send>;

/// An open signing round: the party holding the round's nonce and what it
/// answered.
struct OpenRound {
    party: wsts::v2::Party,
    response: w::NonceResponse,
    signature_type: w::SignatureType,
    opened: Instant,
    /// A share request of the round came without our nonce (FIRE had the
    /// threshold without us): kept, but the first to go when full, so
    /// rounds in flight together keep theirs.
    passed_over: bool,
}

/// The signer's logic, without the relay: envelopes in, messages out.
pub struct SignerCore {
    id: u32,
    set: SignerSet,
    network_key: wsts::curve::scalar::Scalar,
    state_path: PathBuf,
    history: KeyHistory,
    allow_rotation: bool,
    validator: Box<dyn Validator>,
    dkg: Option<(u64, WstsSigner)>,
    /// The highest DKG round this signer has joined since it started: a
    /// round is joined once, even when it failed and left no key (a relay
    /// replaying its `DkgBegin` must not start it again).
    dkg_joined: u64,
    allowed: HashMap<(PublicKey, [u8; 32]), Instant>,
    rounds: HashMap<RoundId, OpenRound>,
    /// The last [`MAX_NONCED`] round ids given a nonce, oldest first: a
    /// round id gets one nonce, ever.
    nonced: VecDeque<RoundId>,
    nonced_ids: HashSet<RoundId>,
    rejected: u64,
    attest_interval: Duration,
    attest_checked: Option<Instant>,
    attested: Option<(PublicKey, Instant)>,
    not_ours: Option<PublicKey>,
    /// Opens the other signers' nonce responses a share request embeds;
    /// until one is set ([`SignerCore::set_codec`]) no share is made.
    codec: Option<Codec>,
}

impl std::fmt::Debug for SignerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerCore")
            .field("id", &self.id)
            .field("keys", &self.history.keys.len())
            .field("open_rounds", &self.rounds.len())
            .finish()
    }
}

impl SignerCore {
    /// A signer `id` of `set`, loading its key history from `state_path`.
    ///
    /// # Errors
    /// An unknown id, or a state file that is unreadable, corrupt or not
    /// this signer's.
    pub fn new(
        id: u32,
        set: &SignerSet,
        private_key: &SecretKey,
        state_path: PathBuf,
        allow_rotation: bool,
    ) -> Result<SignerCore, SignerError> {
        set.validate()
            .map_err(|e| SignerError::Config(e.to_string()))?;
        if set.signer(id).is_none() {
            return Err(SignerError::Config(format!(
                "no signer with id {id} in the signer set"
            )));
        }
        let history =
            KeyHistory::load(&state_path, set, id).map_err(|reason| SignerError::State {
                path: state_path.clone(),
                reason,
            })?;
        if !history.keys.is_empty() {
            info!(
                "signer {id}: holds shares of {} key(s), newest from DKG round {}",
                history.keys.len(),
                history.last_dkg_id()
            );
        }
        let dkg_joined = history.joined_dkg_id.max(history.last_dkg_id());
        if allow_rotation {
            warn!("signer {id}: key rotation allowed: this signer joins a new DKG even though it holds a key");
        }
        Ok(SignerCore {
            id,
            set: set.clone(),
            network_key: scalar(private_key),
            state_path,
            history,
            allow_rotation,
            validator: Box::new(AcceptAll),
            dkg: None,
            dkg_joined,
            allowed: HashMap::new(),
            rounds: HashMap::new(),
            nonced: VecDeque::new(),
            nonced_ids: HashSet::new(),
            rejected: 0,
            attest_interval: ATTEST_INTERVAL,
            attest_checked: None,
            attested: None,
            not_ours: None,
            codec: None,
        })
    }

    /// Sets the codec of this peg (its domain and the current signer set)
    /// that the other signers' nonce responses embedded in a share request
    /// must open under. Without one every share request is refused.
    ///
    /// # Errors
    /// When the codec checks against another signer set than this signer's.
    pub fn set_codec(&mut self, codec: Codec) -> Result<(), SignerError> {
        if *codec.set() != self.set {
            return Err(SignerError::Config(
                "the codec's signer set is not this signer's".into(),
            ));
        }
        self.codec = Some(codec);
        Ok(())
    }

    /// Replaces the validation hook ([`AcceptAll`] until then: protocol
    /// tests only; a production signer always installs its guard).
    pub fn set_validator(&mut self, v: Box<dyn Validator>) {
        self.validator = v;
        self.validator.held_keys(&self.history.aggregate_keys());
        self.attest_checked = None;
        self.attested = None;
    }

    /// Sets how often an unchanged attestation is sent again.
    pub fn set_attest_interval(&mut self, every: Duration) {
        self.attest_interval = every;
    }

    /// The attestation to send now, if one is due: the validator is asked
    /// (at most every [`ATTEST_CHECK`], or the attestation interval if
    /// shorter) which key the contract publishes; a key this signer holds a
    /// share of is attested when it is new or changed, and again once the
    /// attestation interval has passed. `contract` is the signer file's.
    pub fn attestation(&mut self, contract: &str, now: Instant) -> Option<Message> {
        let check = ATTEST_CHECK.min(self.attest_interval);
        if self
            .attest_checked
            .is_some_and(|t| now.saturating_duration_since(t) < check)
        {
            return None;
        }
        self.attest_checked = Some(now);
        let Some(key) = self.validator.attest() else {
            if let Some((old, _)) = self.attested.take() {
                warn!(
                    "signer {}: no longer attesting key {old}: the validator cannot confirm the contract publishes a key of ours",
                    self.id
                );
            }
            return None;
        };
        if self.history.find(&key).is_none() {
            // The validator should not name it; never attest it anyway.
            self.attested = None;
            if self.not_ours != Some(key) {
                warn!(
                    "signer {}: the validator names key {key}, which this signer holds no share of: not attested",
                    self.id
                );
                self.not_ours = Some(key);
            }
            return None;
        }
        self.not_ours = None;
        if let Some((old, sent)) = self.attested {
            if old == key && now.saturating_duration_since(sent) < self.attest_interval {
                return None;
            }
            if old != key {
                info!(
                    "signer {}: the published key changed from {old} to {key}",
                    self.id
                );
            }
        }
        self.attested = Some((key, now));
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        debug!("signer {}: attesting key {key}", self.id);
        Some(Message::Attestation(Attestation {
            contract: contract.to_owned(),
            key,
            time,
        }))
    }

    /// The key history.
    pub fn history(&self) -> &KeyHistory {
        &self.history
    }

    /// How many requests were refused or dropped by the round rules.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// How many signing rounds hold a nonce.
    pub fn open_rounds(&self) -> usize {
        self.rounds.len()
    }

    fn wsts_id(&self) -> u32 {
        self.id - 1
    }

    fn reject(&mut self, why: std::fmt::Arguments<'_>) {
        self.rejected += 1;
        warn!("signer {}: {why}", self.id);
    }

    /// Handles one authenticated envelope; returns what to send.
    ///
    /// # Errors
    /// Only when the key history cannot be written after a DKG.
    pub fn handle(&mut self, env: &Envelope) -> Result<Vec<Message>, SignerError> {
        self.handle_listed(env, None)
    }

    /// [`SignerCore::handle`] with a share request's listing as its packet
    /// carried it ([`Codec::open_for_signer`]), so no listed point is
    /// compressed again; without one it is encoded from the request.
    ///
    /// # Errors
    /// As [`SignerCore::handle`].
    pub fn handle_listed(
        &mut self,
        env: &Envelope,
        listed: Option<&ListedNonces>,
    ) -> Result<Vec<Message>, SignerError> {
        self.expire();
        match &env.message {
            Message::DkgBegin(b) => Ok(self.dkg_begin(b)),
            Message::DkgPrivateBegin(m) => {
                self.dkg_step(m.dkg_id, w::Message::DkgPrivateBegin(m.clone()))
            }
            Message::DkgEndBegin(m) => self.dkg_step(m.dkg_id, w::Message::DkgEndBegin(m.clone())),
            Message::DkgPublicShares(m) => {
                self.dkg_step(m.dkg_id, w::Message::DkgPublicShares(m.clone()))
            }
            Message::DkgPrivateShares(m) => {
                self.dkg_step(m.dkg_id, w::Message::DkgPrivateShares(m.clone()))
            }
            Message::SignRequest(r) => Ok(self.sign_request(r)),
            Message::NonceRequest(r) => Ok(self.nonce_request(r)),
            Message::SignatureShareRequest(r) => Ok(self.share_request(r, listed)),
            Message::KeyAccepted(k) => self.key_accepted(k),
            // Responses are for the coordinator.
            _ => Ok(vec![]),
        }
    }

    /// The coordinator's gate passed for a key of ours: from now on it
    /// counts as held (a new DKG needs `--allow-rotation`).
    fn key_accepted(&mut self, k: &KeyStored) -> Result<Vec<Message>, SignerError> {
        let Some(i) = self
            .history
            .keys
            .iter()
            .position(|e| e.aggregate_key == k.key && e.dkg_id == k.dkg_id)
        else {
            self.reject(format_args!(
                "key {} of DKG round {} accepted, but this signer holds no share of it",
                k.key, k.dkg_id
            ));
            return Ok(vec![]);
        };
        if self.history.keys[i].accepted {
            return Ok(vec![]);
        }
        let mut history = self.history.clone();
        history.keys[i].accepted = true;
        history
            .save(&self.state_path)
            .map_err(|reason| SignerError::State {
                path: self.state_path.clone(),
                reason,
            })?;
        self.history = history;
        info!(
            "signer {}: key {} of DKG round {} accepted by the coordinator",
            self.id, k.key, k.dkg_id
        );
        Ok(vec![])
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.rounds
            .retain(|_, r| now.duration_since(r.opened) < ROUND_TTL);
        self.allowed
            .retain(|_, t| now.duration_since(*t) < ALLOWED_TTL);
    }

    fn dkg_begin(&mut self, b: &w::DkgBegin) -> Vec<Message> {
        let last = self.history.last_dkg_id();
        if b.dkg_id <= last {
            self.reject(format_args!(
                "refused DKG round {}: not above the newest key's round {last}",
                b.dkg_id
            ));
            return vec![];
        }
        if b.dkg_id <= self.dkg_joined && self.dkg.is_none() {
            let joined = self.dkg_joined;
            self.reject(format_args!(
                "refused DKG round {}: round {joined} was already joined (a round is joined once)",
                b.dkg_id
            ));
            return vec![];
        }
        if let Some((current, _)) = &self.dkg {
            if b.dkg_id <= *current {
                let current = *current;
                self.reject(format_args!(
                    "refused DKG round {}: round {current} is in progress",
                    b.dkg_id
                ));
                return vec![];
            }
        }
        if self.history.keys.iter().any(|k| k.accepted) {
            if !self.allow_rotation {
                self.reject(format_args!(
                    "refused DKG round {}: this signer holds a key and key rotation is not allowed (--allow-rotation)",
                    b.dkg_id
                ));
                return vec![];
            }
            warn!(
                "signer {}: joining DKG round {} for a new key (rotation allowed); the old keys stay",
                self.id, b.dkg_id
            );
        }
        let keys = match self.set.wsts_public_keys() {
            Ok(k) => k,
            Err(e) => {
                warn!("signer {}: signer set keys: {e}", self.id);
                return vec![];
            }
        };
        let Some(me) = self.set.signer(self.id) else {
            return vec![];
        };
        let mut rng = wsts::util::create_rng();
        let signer = WstsSigner::new(
            self.set.threshold,
            self.set.dkg_threshold(),
            self.set.num_signers(),
            self.set.num_keys(),
            me.wsts_id(),
            me.key_ids.clone(),
            self.network_key,
            keys,
            &mut rng,
        );
        let signer = match signer {
            Ok(s) => s,
            Err(e) => {
                warn!("signer {}: cannot start a DKG: {e:?}", self.id);
                return vec![];
            }
        };
        // On disk before anything of the round is sent: joined once, even
        // across a restart.
        let mut history = self.history.clone();
        history.joined_dkg_id = b.dkg_id;
        if let Err(e) = history.save(&self.state_path) {
            warn!(
                "signer {}: not joining DKG round {}: cannot record it in {}: {e}",
                self.id,
                b.dkg_id,
                self.state_path.display()
            );
            return vec![];
        }
        self.history = history;
        info!("signer {}: DKG round {} started", self.id, b.dkg_id);
        self.dkg = Some((b.dkg_id, signer));
        self.dkg_joined = b.dkg_id;
        match self.dkg_step(b.dkg_id, w::Message::DkgBegin(b.clone())) {
            Ok(out) => out,
            Err(e) => {
                warn!("signer {}: {e}", self.id);
                vec![]
            }
        }
    }

    fn dkg_step(&mut self, dkg_id: u64, msg: w::Message) -> Result<Vec<Message>, SignerError> {
        let Some((current, signer)) = self.dkg.as_mut() else {
            debug!(
                "signer {}: a DKG message of round {dkg_id} and no DKG running",
                self.id
            );
            return Ok(vec![]);
        };
        if *current != dkg_id {
            debug!(
                "signer {}: a DKG message of round {dkg_id} during round {current}",
                self.id
            );
            return Ok(vec![]);
        }
        let mut rng = wsts::util::create_rng();
        let outbound = match signer.process(&msg, &mut rng) {
            Ok(out) => out,
            Err(e) => {
                warn!("signer {}: DKG round {dkg_id}: {e:?}", self.id);
                return Ok(vec![]);
            }
        };
        let mut out = Vec::with_capacity(outbound.len() + 1);
        for m in outbound {
            match m {
                w::Message::DkgPublicShares(s) => out.push(Message::DkgPublicShares(s)),
                w::Message::DkgPrivateShares(s) => out.push(Message::DkgPrivateShares(s)),
                w::Message::DkgEnd(end) => {
                    let done = self.dkg.take();
                    if end.status == w::DkgStatus::Success {
                        let Some((_, signer)) = done else {
                            continue;
                        };
                        let commitments: Vec<_> = signer
                            .commitments
                            .iter()
                            .map(|(k, v)| (*k, v.clone()))
                            .collect();
                        let entry = KeyEntry::from_dkg(
                            dkg_id,
                            self.id,
                            &signer.signer,
                            commitments,
                            &self.set,
                        )
                        .and_then(|e| e.validate(&self.set, self.id).map(|()| e));
                        let entry = match entry {
                            Ok(e) => e,
                            Err(e) => {
                                warn!(
                                    "signer {}: DKG round {dkg_id} made an unusable key: {e}",
                                    self.id
                                );
                                out.push(Message::DkgEnd(w::DkgEnd {
                                    dkg_id,
                                    signer_id: self.wsts_id(),
                                    status: w::DkgStatus::Failure(w::DkgFailure::BadState),
                                }));
                                continue;
                            }
                        };
                        let key = entry.aggregate_key;
                        let mut history = self.history.clone();
                        history.keys.push(entry);
                        // On disk before anyone hears of success.
                        history
                            .save(&self.state_path)
                            .map_err(|reason| SignerError::State {
                                path: self.state_path.clone(),
                                reason,
                            })?;
                        self.history = history;
                        self.validator.held_keys(&self.history.aggregate_keys());
                        info!(
                            "signer {}: DKG round {dkg_id} complete, share of key {key} stored",
                            self.id
                        );
                        out.push(Message::DkgEnd(end));
                        out.push(Message::KeyStored(KeyStored { dkg_id, key }));
                    } else {
                        warn!(
                            "signer {}: DKG round {dkg_id} failed: {:?}; the old keys stay",
                            self.id, end.status
                        );
                        out.push(Message::DkgEnd(end));
                    }
                }
                other => debug!("signer {}: wsts produced {other:?} in a DKG", self.id),
            }
        }
        Ok(out)
    }

    fn sign_request(&mut self, r: &SignRequest) -> Vec<Message> {
        if let Err(rule) = self.validator.check(r) {
            return self.refuse_request(r.id, rule);
        }
        // The validator said yes: it must also have recorded every item, or
        // its nonce requests would be refused one by one later.
        if let Some(item) = r
            .items
            .iter()
            .find(|i| !self.validator.will_sign(&i.key, &i.message.digest()))
        {
            let rule = format!(
                "validator.not-recorded: digest {} with key {} passed the checks but was not recorded",
                hex::encode(item.message.digest()),
                item.key
            );
            return self.refuse_request(r.id, rule);
        }
        let now = Instant::now();
        for item in &r.items {
            // The time it was first allowed: a replayed request must not
            // make its pairs newer than those of requests still waiting
            // for their rounds (the oldest go first when the table is full).
            self.allowed
                .entry((item.key, item.message.digest()))
                .or_insert(now);
        }
        while self.allowed.len() > MAX_ALLOWED {
            let Some(oldest) = self
                .allowed
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.allowed.remove(&oldest);
        }
        debug!(
            "signer {}: sign request {} accepted ({} items)",
            self.id,
            r.id,
            r.items.len()
        );
        vec![]
    }

    fn refuse_request(&mut self, id: u64, rule: String) -> Vec<Message> {
        self.reject(format_args!("refused sign request {id}: {rule}"));
        vec![Message::Refusal(Refusal { request: id, rule })]
    }

    fn refuse_round(&mut self, sign_id: u64, rule: String) -> Vec<Message> {
        self.reject(format_args!("refused signing round {sign_id}: {rule}"));
        vec![Message::Refusal(Refusal {
            request: sign_id,
            rule,
        })]
    }

    fn nonce_request(&mut self, r: &Keyed<w::NonceRequest>) -> Vec<Message> {
        let m = &r.msg;
        let round = RoundId {
            key: r.key,
            dkg_id: m.dkg_id,
            sign_id: m.sign_id,
            sign_iter_id: m.sign_iter_id,
        };
        if let Some(open) = self.rounds.get(&round) {
            if open.response.message == m.message && open.signature_type == m.signature_type {
                // The same answer again, never a second nonce.
                return vec![Message::NonceResponse(Keyed {
                    key: r.key,
                    msg: open.response.clone(),
                })];
            }
            return self.refuse_round(
                m.sign_id,
                "a second nonce request for an open round, with another message".into(),
            );
        }
        if self.nonced_ids.contains(&round) {
            // Its nonce was made and is gone (signed, dropped, evicted or
            // expired): a replay. Dropped without a refusal, which would
            // count against the job of that round while it still runs.
            self.reject(format_args!(
                "no nonce for signing round {}/{}: it already had one",
                m.sign_id, m.sign_iter_id
            ));
            return vec![];
        }
        let Some(entry) = self.history.find(&r.key) else {
            return self.refuse_round(m.sign_id, format!("holds no share of key {}", r.key));
        };
        if entry.dkg_id != m.dkg_id {
            let have = entry.dkg_id;
            return self.refuse_round(
                m.sign_id,
                format!("key {} is of DKG round {have}, not {}", r.key, m.dkg_id),
            );
        }
        let Ok(digest) = <[u8; 32]>::try_from(m.message.as_slice()) else {
            return self.refuse_round(m.sign_id, "the message is not a 32-byte digest".into());
        };
        if !self.allowed.contains_key(&(r.key, digest)) {
            return self.refuse_round(
                m.sign_id,
                format!(
                    "nonce.not-requested: digest {} with key {} was not asked for by an accepted sign request",
                    hex::encode(digest),
                    r.key
                ),
            );
        }
        // What the validator stored durably: after a restart of its store,
        // or for anything it never checked, no nonce.
        if !self.validator.will_sign(&r.key, &digest) {
            return self.refuse_round(
                m.sign_id,
                format!(
                    "nonce.not-validated: digest {} with key {} is not recorded as validated",
                    hex::encode(digest),
                    r.key
                ),
            );
        }
        let mut party = match entry.party() {
            Ok(p) => p,
            Err(e) => return self.refuse_round(m.sign_id, format!("key share unusable: {e}")),
        };
        let mut rng = wsts::util::create_rng();
        let nonce = party.gen_nonce(&mut rng);
        let response = w::NonceResponse {
            dkg_id: m.dkg_id,
            sign_id: m.sign_id,
            sign_iter_id: m.sign_iter_id,
            signer_id: self.wsts_id(),
            key_ids: entry.params.key_ids.clone(),
            nonces: vec![nonce],
            message: m.message.clone(),
        };
        while self.rounds.len() >= MAX_OPEN_ROUNDS {
            // Rounds passed over go first, then the oldest.
            let Some(oldest) = self
                .rounds
                .iter()
                .min_by_key(|(_, r)| (!r.passed_over, r.opened))
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.rounds.remove(&oldest);
        }
        self.nonced.push_back(round);
        self.nonced_ids.insert(round);
        while self.nonced.len() > MAX_NONCED {
            if let Some(id) = self.nonced.pop_front() {
                self.nonced_ids.remove(&id);
            }
        }
        self.rounds.insert(
            round,
            OpenRound {
                party,
                response: response.clone(),
                signature_type: m.signature_type,
                opened: Instant::now(),
                passed_over: false,
            },
        );
        vec![Message::NonceResponse(Keyed {
            key: r.key,
            msg: response,
        })]
    }

    /// An authentic share request of the coordinator's for round `round`
    /// that does not list this signer ([`frost_net::ForSigner::NotListed`]):
    /// the round keeps its nonce until it expires (FIRE may retry with
    /// another iteration, which is another round), but goes first when room
    /// is needed.
    pub fn passed_over(&mut self, round: &RoundId) {
        if let Some(open) = self.rounds.get_mut(round) {
            open.passed_over = true;
        }
    }

    fn share_request(&mut self, r: &ShareRequest, listed: Option<&ListedNonces>) -> Vec<Message> {
        let m = &r.msg;
        let round = RoundId {
            key: r.key,
            dkg_id: m.dkg_id,
            sign_id: m.sign_id,
            sign_iter_id: m.sign_iter_id,
        };
        let me = self.wsts_id();
        let mine: Vec<&w::NonceResponse> = m
            .nonce_responses
            .iter()
            .filter(|n| n.signer_id == me)
            .collect();
        if mine.is_empty() {
            // Not asked this time.
            self.passed_over(&round);
            return vec![];
        }
        let Some(open) = self.rounds.get(&round) else {
            self.reject(format_args!(
                "no share for signing round {}/{}: no nonce of ours is open for it",
                m.sign_id, m.sign_iter_id
            ));
            return vec![];
        };
        // wsts' binding value hashes the list of nonces but not the signer
        // each is listed under: with the nonce list fixed, another order of
        // ids would keep our effective nonce and change the challenge. FIRE
        // and the DKG test round list signers in ascending id order; only
        // that order is answered, so a nonce list and a set of signers give
        // one assignment.
        if !m
            .nonce_responses
            .windows(2)
            .all(|p| p[0].signer_id < p[1].signer_id)
        {
            self.rounds.remove(&round);
            self.reject(format_args!(
                "no share for signing round {}/{}: signers not listed in ascending id order",
                m.sign_id, m.sign_iter_id
            ));
            return vec![];
        }
        let listed_ok = mine.len() == 1
            && mine[0].nonces == open.response.nonces
            && mine[0].key_ids == open.response.key_ids
            && mine[0].message == open.response.message
            && m.message == open.response.message
            && m.signature_type == open.signature_type;
        if !listed_ok {
            // Someone rewrote the round: never sign it; the nonce is dropped.
            self.rounds.remove(&round);
            self.reject(format_args!(
                "no share for signing round {}/{}: the request does not list our own nonce and message",
                m.sign_id, m.sign_iter_id
            ));
            return vec![];
        }
        // Every listed signer must be a holder of this key, with the key ids
        // it held under the set the key was made under (after a signer-set
        // change the current set may list signers the key never had).
        let strangers: Vec<u32> = match self.history.set_of(&r.key) {
            Some(made_under) => m
                .nonce_responses
                .iter()
                .filter(|n| {
                    let mut listed = n.key_ids.clone();
                    listed.sort_unstable();
                    let held = made_under.signer(n.signer_id.saturating_add(1)).map(|s| {
                        let mut k = s.key_ids.clone();
                        k.sort_unstable();
                        k
                    });
                    held != Some(listed)
                })
                .map(|n| n.signer_id.saturating_add(1))
                .collect(),
            None => vec![],
        };
        if !strangers.is_empty() {
            self.rounds.remove(&round);
            self.reject(format_args!(
                "no share for signing round {}/{}: signers {strangers:?} do not hold key {} with the key ids listed",
                m.sign_id, m.sign_iter_id, r.key
            ));
            return vec![];
        }
        // wsts' binding value omits which signer id each nonce is listed
        // under: every other listed entry must be that signer's own signed
        // nonce response for this round, or a coordinator could move a
        // genuine nonce to another id (our effective nonce unchanged, the
        // challenge and our Lagrange coefficient changed).
        // The listing checked is the one hashed into the binding values
        // below: one that is not `r`'s own (a caller's mix-up) is replaced
        // by `r`'s, never used for one and not the other.
        let own_listing;
        let listed = match listed {
            Some(l) if l.fits(r) => l,
            _ => {
                own_listing = ListedNonces::of(r);
                &own_listing
            }
        };
        let proved = match &self.codec {
            Some(codec) => codec.check_listed_nonces_with(r, me, listed),
            None => Err("this signer has no codec to open them with".into()),
        };
        if let Err(why) = proved {
            self.rounds.remove(&round);
            self.reject(format_args!(
                "no share for signing round {}/{}: the listed nonces are not the signers' own: {why}",
                m.sign_id, m.sign_iter_id
            ));
            return vec![];
        }
        let Some(open) = self.rounds.remove(&round) else {
            return vec![];
        };
        let signer_ids: Vec<u32> = m.nonce_responses.iter().map(|n| n.signer_id).collect();
        let key_ids: Vec<u32> = m
            .nonce_responses
            .iter()
            .flat_map(|n| n.key_ids.iter().copied())
            .collect();
        let nonces: Vec<_> = m
            .nonce_responses
            .iter()
            .flat_map(|n| n.nonces.iter().cloned())
            .collect();
        let merkle_root = match m.signature_type {
            w::SignatureType::Taproot(root) => root,
            _ => {
                self.reject(format_args!("only taproot signatures are made"));
                return vec![];
            }
        };
        // The listing fits `r` (chosen above; it proved the nonces).
        let compressed = listed.compressed();
        let shares = share::sign_taproot(
            &open.party,
            &m.message,
            &signer_ids,
            &key_ids,
            &nonces,
            &compressed,
            merkle_root,
        );
        // `open` (the party and its nonce) is dropped here: the nonce is gone.
        vec![Message::SignatureShareResponse(Keyed {
            key: r.key,
            msg: w::SignatureShareResponse {
                dkg_id: m.dkg_id,
                sign_id: m.sign_id,
                sign_iter_id: m.sign_iter_id,
                signer_id: me,
                signature_shares: shares,
            },
        })]
    }
}

/// A running signer: a [`SignerCore`] on the relay.
pub struct SignerNode {
    core: SignerCore,
    codec: Codec,
    contract: String,
    private_key: SecretKey,
    relay: RelayClient,
    cursor: u64,
    poll_wait: Duration,
    refused: u64,
    #[cfg(feature = "testing")]
    hook: Option<OutboundHook>,
}

impl std::fmt::Debug for SignerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerNode")
            .field("core", &self.core)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl SignerNode {
    /// Builds the signer, loading its key history, and starts reading the
    /// relay from its current head.
    ///
    /// # Errors
    /// A configuration that does not fit (unknown id, key mismatch), an
    /// unreadable or corrupt state file, or an unreachable relay.
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
        let mut core = SignerCore::new(
            opts.id,
            set,
            &opts.private_key,
            opts.state_path.clone(),
            opts.allow_rotation,
        )?;
        core.set_attest_interval(opts.attest_interval);
        core.set_codec(Codec::new(&opts.file))?;
        let relay = RelayClient::new(&opts.file.relay_url, Duration::from_secs(10));
        let head = relay
            .head()
            .map_err(|e| SignerError::Relay(format!("{}: {e}", opts.file.relay_url)))?;
        Ok(SignerNode {
            core,
            codec: Codec::new(&opts.file),
            contract: opts.file.contract.clone().unwrap_or_default(),
            private_key: opts.private_key,
            relay,
            cursor: head.saturating_sub(1),
            poll_wait: opts.poll_wait,
            refused: 0,
            #[cfg(feature = "testing")]
            hook: None,
        })
    }

    /// Installs a rewrite of every outbound message (fault tests only).
    #[cfg(feature = "testing")]
    pub fn set_outbound_hook(&mut self, hook: OutboundHook) {
        self.hook = Some(hook);
    }

    /// Replaces the validation hook.
    pub fn set_validator(&mut self, v: Box<dyn Validator>) {
        self.core.set_validator(v);
    }

    /// How many requests the round rules refused (replays, unknown rounds,
    /// foreign nonces, refused DKGs).
    pub fn rejected(&self) -> u64 {
        self.core.rejected()
    }

    /// How many packets were refused before decoding (bad envelope).
    pub fn refused_packets(&self) -> u64 {
        self.refused
    }

    /// The signer's logic and key history.
    pub fn core(&self) -> &SignerCore {
        &self.core
    }

    /// Runs until `stop` is set. Relay errors are logged and retried.
    pub fn run(&mut self, stop: &AtomicBool) {
        info!("signer {} running", self.core.id);
        // A relay that is down is retried after 0.2 s, 0.4 s, … at most 10 s.
        let mut pause = Duration::from_millis(200);
        while !stop.load(Ordering::SeqCst) {
            match self.step() {
                Ok(_) => pause = Duration::from_millis(200),
                Err(e) => {
                    warn!("signer {}: {e}; retrying", self.core.id);
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
        info!("signer {} stopped", self.core.id);
    }

    /// Polls the relay once and handles what arrived. Returns the number of
    /// packets processed.
    ///
    /// # Errors
    /// When the relay cannot be reached or a state write fails.
    pub fn step(&mut self) -> Result<usize, SignerError> {
        if let Some(m) = self.core.attestation(&self.contract, Instant::now()) {
            self.send(m);
        }
        let batch = self
            .relay
            .poll_tags(self.cursor, self.poll_wait, frost_net::SIGNER_TAGS)
            .map_err(|e| SignerError::Relay(e.to_string()))?;
        if batch.lowest > self.cursor + 1 {
            warn!(
                "signer {}: the relay dropped messages {}..{} before we read them",
                self.core.id,
                self.cursor + 1,
                batch.lowest
            );
        }
        self.cursor = batch.last_seq(self.cursor);
        // The answers to a batch of several packets (rounds in flight) are
        // posted side by side, each packet's in the order it produced them,
        // on at most POST_THREADS threads (a relay decides how many packets
        // a batch holds: one thread per packet would be as many threads as
        // it likes): a relay across a network then costs about one round
        // trip per step, not one per answer. Every answer is posted before
        // the step returns, as when they went one by one.
        let several = batch.messages.len() > 1;
        let SignerNode {
            core,
            codec,
            private_key,
            relay,
            refused,
            #[cfg(feature = "testing")]
            hook,
            ..
        } = self;
        let relay: &RelayClient = relay;
        let id = core.id;
        let (to_post, queue) = std::sync::mpsc::channel::<Vec<(Vec<u8>, Kind)>>();
        let queue = std::sync::Mutex::new(queue);
        let queue = &queue;
        std::thread::scope(|scope| {
            // Dropped when the closure returns (also on an error), so the
            // posting threads end once the queue is empty.
            let to_post = to_post;
            let mut posters = 0usize;
            let mut processed = 0;
            for (seq, bytes) in batch.messages {
                // Unauthenticated: only to skip what signers ignore anyway.
                if frost_net::envelope::peek(&bytes).is_some_and(|(k, _)| !k.for_signers()) {
                    continue;
                }
                let (env, listed) = match codec.open_for_signer(&bytes, core.wsts_id()) {
                    Ok(ForSigner::Open(e, listed)) => (e, listed),
                    Ok(ForSigner::NotListed(round)) => {
                        core.passed_over(&round);
                        processed += 1;
                        continue;
                    }
                    Err(e) => {
                        *refused += 1;
                        warn!("signer {}: message {seq} refused: {e}", core.id);
                        continue;
                    }
                };
                let out = core.handle_listed(&env, listed.as_ref())?;
                processed += 1;
                let sealed: Vec<(Vec<u8>, Kind)> = out
                    .into_iter()
                    .filter_map(|m| {
                        seal(
                            codec,
                            private_key,
                            core.id,
                            #[cfg(feature = "testing")]
                            hook,
                            m,
                        )
                    })
                    .collect();
                if sealed.is_empty() {
                    continue;
                }
                if !several {
                    post_all(relay, id, &sealed);
                    continue;
                }
                if posters < POST_THREADS {
                    let spawned = std::thread::Builder::new()
                        .name(format!("signer-{id}-post"))
                        .spawn_scoped(scope, move || loop {
                            let next = queue
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .recv();
                            let Ok(sealed) = next else { break };
                            post_all(relay, id, &sealed);
                        });
                    match spawned {
                        Ok(_) => posters += 1,
                        Err(e) if posters == 0 => {
                            warn!("signer {id}: no thread to post with ({e}): posting in turn");
                            post_all(relay, id, &sealed);
                            continue;
                        }
                        Err(_) => {}
                    }
                }
                if let Err(back) = to_post.send(sealed) {
                    // Every posting thread is gone: post here.
                    post_all(relay, id, &back.0);
                }
            }
            Ok(processed)
        })
    }

    fn send(&mut self, m: Message) {
        let sealed = seal(
            &self.codec,
            &self.private_key,
            self.core.id,
            #[cfg(feature = "testing")]
            &mut self.hook,
            m,
        );
        post_all(&self.relay, self.core.id, sealed.as_slice());
    }
}

/// Seals `m` from signer `id` (after the fault tests' rewrite, which may
/// drop it), with its kind; `None` when it cannot be sealed (logged).
fn seal(
    codec: &Codec,
    private_key: &SecretKey,
    id: u32,
    #[cfg(feature = "testing")] hook: &mut Option<OutboundHook>,
    m: Message,
) -> Option<(Vec<u8>, Kind)> {
    #[cfg(feature = "testing")]
    let m = match hook.as_mut() {
        Some(h) => h(m)?,
        None => m,
    };
    let kind: Kind = m.kind();
    match codec.seal(Sender::Signer(id), private_key, &m) {
        Ok(b) => Some((b, kind)),
        Err(e) => {
            warn!("signer {id}: cannot seal a {kind:?}: {e}");
            None
        }
    }
}

/// Posts sealed messages in order; a failure is logged (the coordinator's
/// round times out without the answer, as when the relay lost it).
fn post_all(relay: &RelayClient, id: u32, sealed: &[(Vec<u8>, Kind)]) {
    for (bytes, kind) in sealed {
        if let Err(e) = relay.post_tagged(bytes, kind.relay_tag()) {
            warn!("signer {id}: could not post a {kind:?}: {e}");
        }
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
