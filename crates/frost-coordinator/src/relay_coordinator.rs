//! [`FrostCoordinator`] over the relay, with wsts' FIRE coordinator.
//!
//! Every packet travels in the authenticated envelope ([`Codec`]). What an
//! opened envelope says is then checked against the round it names — only
//! responses to an open round's current iteration, only from signers it
//! asked, each once — before that round's FIRE sees it, because FIRE trusts
//! what it is given (it indexes maps with ids taken from messages).
//!
//! Signing rounds run several at once ([`RelayCoordinatorOptions::rounds_in_flight`]):
//! one FIRE coordinator, deadline and set of sealed nonces per round, one
//! poll loop routing each packet by its round id, every open round driven
//! each pass so FIRE's timeouts advance; a job's refusal or timeout ends
//! only that job's rounds.
//!
//! DKG is gated: FIRE's result counts only once every signer reported
//! `KeyStored` for that key and a test signature by **every** signer
//! verified against it. Only then is the key added to the key history.
//!
//! Each key in the history records the signer set it was made under
//! ([`KeySet`]): after a signer-set change its signing rounds still run with
//! that set's threshold, signers and key ids (FIRE configured from it, nonces
//! taken only from its holders), while envelopes are opened with the current
//! set's message keys.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{schnorr, Message as SecpMessage, PublicKey, SecretKey};
use frost_net::messages::{KeyStored, Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{
    point, public_key, scalar, write_private_atomically, Codec, Envelope, KeySet, ShareRequest,
    SignItem, SignRequest, SignerFile, SignerSet, ToSign,
};
use log::{debug, info, warn};
use relay::RelayClient;
use serde::{Deserialize, Serialize};
use wsts::common::PolyCommitment;
use wsts::curve::point::Point;
use wsts::net::{DkgFailure, Packet, SignatureType};
use wsts::state_machine::coordinator::{fire, Config, Coordinator as _, SavedState, State};
use wsts::state_machine::{DkgError, OperationResult, SignError};
use wsts::traits::Aggregator as _;

use crate::{Error, FrostCoordinator, SignJob, SignerAttestation};

/// wsts' FIRE with wsts' v2 aggregator, but the aggregate nonce of a
/// taproot signature computed once (`frost_net::taproot`).
type Fire = fire::Coordinator<frost_net::taproot::Aggregator>;

/// How the coordinator is set up.
#[derive(Debug, Clone)]
pub struct RelayCoordinatorOptions {
    /// The signer set.
    pub set: SignerSet,
    /// The coordinator's relay message key.
    pub private_key: SecretKey,
    /// The relay's URL.
    pub relay_url: String,
    /// How long a DKG round may take.
    pub dkg_timeout: Duration,
    /// How long a signing round may take.
    pub sign_timeout: Duration,
    /// Where the key history and round counters are kept, if anywhere.
    pub state_path: Option<PathBuf>,
    /// The network of the envelope's domain (the signer file's `network`).
    pub network: Option<String>,
    /// The contract of the envelope's domain (the signer file's `contract`).
    pub contract: Option<String>,
    /// How many signing rounds may be in flight at once (at least 1, at
    /// most 64: a signer keeps 64 rounds' nonces open, so more in flight
    /// would make it drop the nonces of rounds still running).
    pub rounds_in_flight: usize,
}

/// The most rounds in flight used whatever is configured: a signer's open
/// rounds (`frost_signer::MAX_OPEN_ROUNDS`).
const MAX_ROUNDS_IN_FLIGHT: usize = 64;
/// The most items one run of `sign_many` posts
/// sign requests for before their rounds: a quarter of the (key, digest)
/// pairs a signer keeps allowed (`frost_signer::MAX_ALLOWED` = 4096), so the
/// first job's are still there when its nonce requests come.
const MAX_BATCH_ITEMS: usize = 1024;

/// [`RelayCoordinatorOptions::rounds_in_flight`] unless configured.
pub const DEFAULT_ROUNDS_IN_FLIGHT: usize = 8;

impl RelayCoordinatorOptions {
    /// Options for the peg `file` describes, with the coordinator's key.
    pub fn from_file(file: &SignerFile, private_key: SecretKey) -> Self {
        RelayCoordinatorOptions {
            set: file.set.clone(),
            private_key,
            relay_url: file.relay_url.clone(),
            dkg_timeout: Duration::from_secs(60),
            sign_timeout: Duration::from_secs(30),
            state_path: None,
            network: file.network.clone(),
            contract: file.contract.clone(),
            rounds_in_flight: DEFAULT_ROUNDS_IN_FLIGHT,
        }
    }
}

/// One key the coordinator can sign with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    dkg_id: u64,
    key: PublicKey,
    party_polynomials: Vec<(u32, PolyCommitment)>,
    /// The signer set the key was made under (its rounds ask its members,
    /// with its threshold and key ids). Files written before the field:
    /// the set they are read with, checked, then recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<KeySet>,
}

impl StoredKey {
    /// The set the key was made under (always recorded once loaded).
    fn made_under<'a>(&'a self, current: &'a SignerSet) -> &'a SignerSet {
        self.set.as_ref().map_or(current, |k| &k.set)
    }
}

/// What survives a restart: the key history and the round counters (saved
/// before each round, so no round id is ever reused).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    dkg_id: u64,
    sign_id: u64,
    keys: Vec<StoredKey>,
}

const STATE_VERSION: u32 = 2;

/// Runs DKG and signing rounds with the signers through the relay.
pub struct RelayFrostCoordinator {
    opts: RelayCoordinatorOptions,
    config: Config,
    codec: Codec,
    relay: RelayClient,
    cursor: u64,
    keys: Vec<StoredKey>,
    dkg_id: u64,
    sign_id: u64,
    rejected: u64,
    refused: u64,
    attestations: BTreeMap<u32, SignerAttestation>,
    /// The most signing rounds open at once so far.
    peak_in_flight: usize,
}

/// The sealed nonce responses one signing round (its current iteration)
/// gave FIRE, by (1-based) signer: the decoded response and its envelope's
/// bytes, exactly as posted. A share request embeds those of every signer
/// it lists. Each round holds its own (at most one per holder of its key)
/// and drops them when it ends or starts another iteration, so with N
/// rounds open at most N × (signers) are kept.
type Sealed = HashMap<u32, (w::NonceResponse, Vec<u8>)>;

/// A sealed message and its relay tag, ready to post.
type Outgoing = (Vec<u8>, &'static str);

/// The most posts [`RelayFrostCoordinator`] makes side by side (independent
/// rounds' messages), within the relay client's pool of connections.
const POST_THREADS: usize = 16;

impl std::fmt::Debug for RelayFrostCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFrostCoordinator")
            .field("relay", &self.opts.relay_url)
            .field("dkg_id", &self.dkg_id)
            .field("sign_id", &self.sign_id)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn to_one_based(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = ids.into_iter().map(|i| i + 1).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn check_stored(current: &SignerSet, k: &StoredKey) -> Result<(), String> {
    if let Some(made_under) = &k.set {
        made_under.fits(current)?;
    }
    let set = k.made_under(current);
    let t = usize::try_from(set.threshold).unwrap_or(0);
    if k.party_polynomials.is_empty() {
        return Err("no party polynomials".into());
    }
    let ids: BTreeSet<u32> = k.party_polynomials.iter().map(|(i, _)| *i).collect();
    if ids.len() != k.party_polynomials.len() || ids.iter().any(|i| *i >= set.num_signers()) {
        return Err("party ids repeated or outside the signer set".into());
    }
    if k.party_polynomials.iter().any(|(_, c)| c.poly.len() != t) {
        return Err(format!("a polynomial without {t} terms"));
    }
    let sum = k
        .party_polynomials
        .iter()
        .fold(Point::default(), |s, (_, c)| s + c.poly[0]);
    if point(&k.key).map_err(|e| e.to_string())? != sum {
        return Err("the polynomials do not add up to the key".into());
    }
    Ok(())
}

/// FIRE's configuration for rounds among `set` (the current set for a DKG,
/// a key's own set for its signing rounds).
fn fire_config(opts: &RelayCoordinatorOptions, set: &SignerSet) -> Result<Config, String> {
    // FIRE's per-phase timeouts; the whole round is bounded by our deadline too.
    let dkg_phase = opts.dkg_timeout / 3;
    let sign_phase = opts.sign_timeout / 2;
    Ok(Config::with_timeouts(
        set.num_signers(),
        set.num_keys(),
        set.threshold,
        set.dkg_threshold(),
        scalar(&opts.private_key),
        Some(dkg_phase),
        Some(dkg_phase),
        Some(dkg_phase),
        Some(sign_phase),
        Some(sign_phase),
        set.wsts_key_ids(),
        set.wsts_signer_points().map_err(|e| e.to_string())?,
    ))
}

/// The tweaked key-path check every signature passes before it is returned.
fn verifies(key: &PublicKey, digest: &[u8; 32], sig: &schnorr::Signature) -> bool {
    let secp = Secp256k1::verification_only();
    let (tweaked, _) = key.x_only_public_key().0.tap_tweak(&secp, None);
    secp.verify_schnorr(
        sig,
        &SecpMessage::from_digest(*digest),
        &tweaked.to_x_only_public_key(),
    )
    .is_ok()
}

/// What a signing round accepts.
struct SignTrack {
    key: PublicKey,
    dkg_id: u64,
    sign_id: u64,
    iter: u64,
    message: Vec<u8>,
    nonce_from: HashSet<u32>,
    share_asked: HashSet<u32>,
    share_from: HashSet<u32>,
}

impl SignTrack {
    /// Whether (key, DKG round, signing round, iteration) are this round's
    /// current ones.
    fn is(&self, key: &PublicKey, dkg_id: u64, sign_id: u64, iter: u64) -> bool {
        *key == self.key && (dkg_id, sign_id, iter) == (self.dkg_id, self.sign_id, self.iter)
    }
}

/// One signing round in flight: its own FIRE coordinator, what it accepts,
/// the sealed nonces its share request embeds, and its own deadline.
struct Round {
    /// Its job's index in the run's jobs, and its item's in the job.
    job: usize,
    item: usize,
    /// The set its key was made under.
    holders: SignerSet,
    digest: [u8; 32],
    fire: Fire,
    track: SignTrack,
    sealed: Sealed,
    began: Instant,
    deadline: Instant,
    /// What was routed to it since its FIRE last ran.
    inbox: Vec<Packet>,
    /// The key ids of the nonce responses given to its FIRE this iteration.
    fed_key_ids: HashSet<u32>,
}

impl Round {
    /// Records what the round's FIRE sent: a nonce request starts an
    /// iteration (what the last one accepted, and its nonces, are dropped).
    fn sent(&mut self, p: &Packet) {
        let track = &mut self.track;
        match &p.msg {
            w::Message::NonceRequest(r) => {
                track.iter = r.sign_iter_id;
                self.fed_key_ids.clear();
                track.nonce_from.clear();
                track.share_asked.clear();
                track.share_from.clear();
                self.sealed.clear();
            }
            w::Message::SignatureShareRequest(r) => {
                track.share_asked = r.nonce_responses.iter().map(|n| n.signer_id + 1).collect();
                track.share_from.clear();
            }
            _ => {}
        }
    }
}

/// One job of a [`FrostCoordinator::sign_many`] call while its rounds run.
struct JobRun {
    /// Its index in the caller's jobs.
    index: usize,
    /// Its request's id; its rounds' ids follow, one per item.
    request_id: u64,
    /// Each item's key.
    entries: Vec<StoredKey>,
    /// Who refused it, and the rule each named.
    refusals: BTreeMap<u32, String>,
    /// The refusals put a key's threshold out of reach: it fails once what
    /// is on the relay was read.
    refused: bool,
    /// Each item's verified signature, once made.
    sigs: Vec<Option<schnorr::Signature>>,
    /// It has its result.
    done: bool,
}

impl JobRun {
    /// The round id of item `item`.
    fn sign_id(&self, item: usize) -> u64 {
        self.request_id
            .saturating_add(1)
            .saturating_add(u64::try_from(item).unwrap_or(u64::MAX))
    }

    /// Whether `id` is this job's request id or one of its round ids.
    fn covers(&self, id: u64) -> bool {
        let rounds = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        (self.request_id..=self.request_id.saturating_add(rounds)).contains(&id)
    }
}

/// Ends job `j` with `e` unless it has its result: its other rounds stop
/// (their FIRE state and sealed nonces are dropped); the other jobs' rounds
/// run on.
fn fail_job(
    runs: &mut [JobRun],
    out: &mut [Option<Result<Vec<schnorr::Signature>, Error>>],
    open: &mut BTreeMap<u64, Round>,
    j: usize,
    e: Error,
) {
    let Some(run) = runs.get_mut(j) else {
        return;
    };
    if run.done {
        return;
    }
    run.done = true;
    warn!("coordinator: sign request {} failed: {e}", run.request_id);
    open.retain(|_, r| r.job != j);
    out[run.index] = Some(Err(e));
}

/// What the current DKG accepts, and what it has seen.
#[derive(Default)]
struct DkgTrack {
    dkg_id: u64,
    private_asked: Option<HashSet<u32>>,
    end_asked: Option<HashSet<u32>>,
    public: BTreeMap<u32, w::DkgPublicShares>,
    private: BTreeMap<u32, w::DkgPrivateShares>,
    ended: HashSet<u32>,
    stored: BTreeMap<u32, PublicKey>,
    conflicting: BTreeSet<u32>,
}

impl RelayFrostCoordinator {
    /// Builds the coordinator, loading its key history if a state file
    /// exists, and starts reading the relay from its current head.
    ///
    /// # Errors
    /// An inconsistent signer set, an unreadable or corrupt state file, or
    /// an unreachable relay.
    pub fn new(opts: RelayCoordinatorOptions) -> Result<Self, Error> {
        let cfg_err = |e: String| Error::Relay(format!("configuration: {e}"));
        opts.set.validate().map_err(|e| cfg_err(e.to_string()))?;
        let secp = Secp256k1::signing_only();
        let coordinator = opts.private_key.public_key(&secp);
        let domain = frost_net::Domain::new(
            opts.network.as_deref().unwrap_or(""),
            opts.contract.as_deref().unwrap_or(""),
            &opts.set,
            &coordinator,
        );
        let codec = Codec::with_domain(domain, opts.set.clone(), coordinator);
        let config = fire_config(&opts, &opts.set).map_err(cfg_err)?;
        if opts.rounds_in_flight > MAX_ROUNDS_IN_FLIGHT {
            warn!(
                "coordinator: {} rounds in flight configured; at most {MAX_ROUNDS_IN_FLIGHT} are run (the signers' open rounds)",
                opts.rounds_in_flight
            );
        }
        let relay = RelayClient::new(&opts.relay_url, Duration::from_secs(10));
        let head = relay.head().map_err(|e| Error::Relay(e.to_string()))?;
        let mut c = RelayFrostCoordinator {
            config,
            codec,
            relay,
            cursor: head.saturating_sub(1),
            keys: vec![],
            dkg_id: 0,
            sign_id: 0,
            rejected: 0,
            refused: 0,
            attestations: BTreeMap::new(),
            peak_in_flight: 0,
            opts,
        };
        if let Some(path) = c.opts.state_path.clone().filter(|p| p.exists()) {
            let bad = |e: String| cfg_err(format!("{}: {e}", path.display()));
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let p: Persisted = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a key history of format {STATE_VERSION}: {e}")))?;
            if p.version != STATE_VERSION {
                return Err(bad(format!("unknown format {}", p.version)));
            }
            for k in &p.keys {
                check_stored(&c.opts.set, k)
                    .map_err(|e| bad(format!("key of DKG round {}: {e}", k.dkg_id)))?;
                if k.dkg_id > p.dkg_id {
                    return Err(bad("a key newer than the DKG counter".into()));
                }
            }
            c.dkg_id = p.dkg_id;
            c.sign_id = p.sign_id;
            c.keys = p.keys;
            for k in &mut c.keys {
                if k.set.is_none() {
                    k.set = Some(KeySet::of(&c.opts.set));
                }
                let current = hex::encode(c.opts.set.hash());
                if let Some(Err(e)) = k.set.as_ref().map(|s| s.can_sign_under(&c.opts.set)) {
                    warn!(
                        "coordinator: key {} of DKG round {} under this signer set: {e}",
                        k.key, k.dkg_id
                    );
                }
                if let Some(made_under) = k.set.as_ref().filter(|s| s.hash != current) {
                    info!(
                        "coordinator: key {} of DKG round {} was made under another signer set \
                         ({}: {} signers, threshold {}); its rounds ask those holders",
                        k.key,
                        k.dkg_id,
                        made_under.hash.get(..16).unwrap_or_default(),
                        made_under.set.num_signers(),
                        made_under.set.threshold
                    );
                }
            }
            info!(
                "coordinator: loaded {} key(s) from {}",
                c.keys.len(),
                path.display()
            );
        }
        Ok(c)
    }

    /// Returns how many authentic packets the round rules dropped (stale,
    /// duplicate, unasked).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Returns the most signing rounds that were open at once (in flight
    /// together) since the coordinator was built.
    pub fn most_rounds_in_flight(&self) -> usize {
        self.peak_in_flight
    }

    /// Returns how many packets were refused before decoding (bad envelope).
    pub fn refused_packets(&self) -> u64 {
        self.refused
    }

    fn persist(&self) -> Result<(), Error> {
        let Some(path) = &self.opts.state_path else {
            return Ok(());
        };
        let p = Persisted {
            version: STATE_VERSION,
            dkg_id: self.dkg_id,
            sign_id: self.sign_id,
            keys: self.keys.clone(),
        };
        let bytes = serde_json::to_vec(&p).map_err(|e| Error::SigningFailed(e.to_string()))?;
        write_private_atomically(path, &bytes)
            .map_err(|e| Error::SigningFailed(format!("saving {}: {e}", path.display())))
    }

    fn post(&self, m: &Message) -> Result<(), Error> {
        let (bytes, tag) = self.seal(m)?;
        self.post_sealed(&bytes, tag)
    }

    /// Seals `m` from the coordinator, with its relay tag.
    fn seal(&self, m: &Message) -> Result<Outgoing, Error> {
        let bytes = self
            .codec
            .seal(frost_net::Sender::Coordinator, &self.opts.private_key, m)
            .map_err(|e| Error::SigningFailed(format!("sealing a {:?}: {e}", m.kind())))?;
        Ok((bytes, m.kind().relay_tag()))
    }

    fn post_sealed(&self, bytes: &[u8], tag: &str) -> Result<(), Error> {
        self.relay
            .post_tagged(bytes, tag)
            .map(|_| ())
            .map_err(|e| Error::Relay(e.to_string()))
    }

    /// Posts groups of sealed messages: each group's in order, the groups
    /// (independent rounds or requests) side by side on up to
    /// [`POST_THREADS`] threads, so a relay across a network costs about
    /// one round trip per pass rather than one per round. Returns each
    /// group's outcome, in order; everything is posted when it returns.
    fn post_groups(&self, groups: &[Vec<Outgoing>]) -> Vec<Result<(), Error>> {
        let post_group = |g: &Vec<Outgoing>| -> Result<(), Error> {
            for (bytes, tag) in g {
                self.post_sealed(bytes, tag)?;
            }
            Ok(())
        };
        if groups.len() <= 1 {
            return groups.iter().map(post_group).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::OnceLock<Result<(), Error>>> =
            groups.iter().map(|_| std::sync::OnceLock::new()).collect();
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(g) = groups.get(i) else { break };
            let _ = results[i].set(post_group(g));
        };
        std::thread::scope(|scope| {
            // This thread posts too, so a thread that cannot be made (the
            // OS's limit) leaves less help, not a panic or a post unmade.
            for _ in 1..groups.len().min(POST_THREADS) {
                let spawned = std::thread::Builder::new()
                    .name("coord-post".to_owned())
                    .spawn_scoped(scope, work);
                if spawned.is_err() {
                    break;
                }
            }
            work();
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|| Err(Error::Relay("a post was not made".into())))
            })
            .collect()
    }

    /// Posts a FIRE packet, wrapped for the round's key (a signing round
    /// also gives the sealed nonce responses its share request embeds).
    fn post_fire(&self, p: Packet, round: Option<(&PublicKey, &Sealed)>) -> Result<(), Error> {
        let (bytes, tag) = self.seal_fire(p, round)?;
        self.post_sealed(&bytes, tag)
    }

    /// Seals a FIRE packet as [`Self::post_fire`] posts it.
    fn seal_fire(
        &self,
        p: Packet,
        round: Option<(&PublicKey, &Sealed)>,
    ) -> Result<Outgoing, Error> {
        let m = match (p.msg, round) {
            (w::Message::DkgBegin(m), _) => Message::DkgBegin(m),
            // FIRE leaves the key ids empty; the signers' checks want exactly
            // the listed signers' key ids (so the list is covered twice).
            (w::Message::DkgPrivateBegin(mut m), _) => {
                m.key_ids = self.key_ids_of(&m.signer_ids);
                Message::DkgPrivateBegin(m)
            }
            (w::Message::DkgEndBegin(mut m), _) => {
                m.key_ids = self.key_ids_of(&m.signer_ids);
                Message::DkgEndBegin(m)
            }
            (w::Message::NonceRequest(msg), Some((key, _))) => {
                Message::NonceRequest(Keyed { key: *key, msg })
            }
            (w::Message::SignatureShareRequest(msg), Some((key, sealed))) => {
                Message::SignatureShareRequest(Self::share_request(*key, msg, sealed)?)
            }
            (other, _) => {
                return Err(Error::SigningFailed(format!(
                    "FIRE produced an unexpected {other:?}"
                )))
            }
        };
        self.seal(&m)
    }

    /// A share request for `msg` embedding the sealed nonce response of
    /// every signer it lists, as each posted it (`sealed`, the round's own):
    /// signers answer only when every other listed entry is that signer's
    /// own signed response.
    fn share_request(
        key: PublicKey,
        msg: w::SignatureShareRequest,
        sealed: &Sealed,
    ) -> Result<ShareRequest, Error> {
        let mut nonce_envelopes = Vec::with_capacity(msg.nonce_responses.len());
        for n in &msg.nonce_responses {
            let signer = n.signer_id.saturating_add(1);
            let bytes = sealed.get(&signer).filter(|(r, _)| r == n).ok_or_else(|| {
                Error::SigningFailed(format!(
                    "no sealed nonce response of signer {signer} for round {}/{} to embed",
                    msg.sign_id, msg.sign_iter_id
                ))
            })?;
            nonce_envelopes.push(bytes.1.clone());
        }
        Ok(ShareRequest {
            key,
            msg,
            nonce_envelopes,
        })
    }

    /// The key ids of the (wsts, 0-based) signers `ids`, sorted.
    fn key_ids_of(&self, ids: &[u32]) -> Vec<u32> {
        let mut k: Vec<u32> = ids
            .iter()
            .filter_map(|i| self.opts.set.signer(i + 1))
            .flat_map(|s| s.key_ids.iter().copied())
            .collect();
        k.sort_unstable();
        k
    }

    /// Reads what arrived within `wait`: authentic envelopes only.
    fn poll(&mut self, wait: Duration) -> Result<Vec<Envelope>, Error> {
        Ok(self
            .poll_sealed(wait)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// Reads what arrived within `wait`: authentic envelopes, each with its
    /// sealed bytes (what a share request embeds of a nonce response).
    fn poll_sealed(&mut self, wait: Duration) -> Result<Vec<(Envelope, Vec<u8>)>, Error> {
        let batch = self
            .relay
            .poll_tags(self.cursor, wait, frost_net::COORDINATOR_TAGS)
            .map_err(|e| Error::Relay(e.to_string()))?;
        self.cursor = batch.last_seq(self.cursor);
        let mut out = Vec::with_capacity(batch.messages.len());
        for (seq, bytes) in batch.messages {
            if frost_net::envelope::peek(&bytes).is_some_and(|(k, _)| k.from_coordinator()) {
                continue;
            }
            match self.codec.open(&bytes) {
                Ok(Envelope {
                    sender: frost_net::Sender::Signer(signer),
                    message: Message::Attestation(a),
                }) => self.keep_attestation(signer, a, bytes),
                Ok(e) => out.push((e, bytes)),
                Err(e) => {
                    self.refused += 1;
                    warn!("coordinator: message {seq} refused: {e}");
                }
            }
        }
        Ok(out)
    }

    /// Keeps a signer's attestation unless an earlier-dated one replaces a
    /// newer (a relay replaying old packets).
    fn keep_attestation(&mut self, signer: u32, a: frost_net::Attestation, envelope: Vec<u8>) {
        if self
            .attestations
            .get(&signer)
            .is_some_and(|old| old.time > a.time)
        {
            self.stale(format_args!("an older attestation of signer {signer}"));
            return;
        }
        if self
            .attestations
            .get(&signer)
            .is_none_or(|old| old.key != a.key)
        {
            info!("coordinator: signer {signer} attests key {}", a.key);
        }
        self.attestations.insert(
            signer,
            SignerAttestation {
                signer,
                contract: a.contract,
                key: a.key,
                time: a.time,
                envelope,
            },
        );
    }

    fn stale(&mut self, what: std::fmt::Arguments<'_>) {
        self.rejected += 1;
        debug!("coordinator: dropped {what}");
    }

    fn key_entry(&self, key: &PublicKey) -> Result<StoredKey, Error> {
        if self.keys.is_empty() {
            return Err(Error::NoAggregateKey);
        }
        self.keys
            .iter()
            .find(|k| k.key == *key)
            .cloned()
            .ok_or_else(|| Error::SigningFailed(format!("no key {key} in the key history")))
    }

    fn signer_keys(set: &SignerSet, ids: impl Iterator<Item = u32>) -> u32 {
        ids.filter_map(|id| set.signer(id))
            .map(|s| u32::try_from(s.key_ids.len()).unwrap_or(u32::MAX))
            .fold(0, u32::saturating_add)
    }

    /// Whether `refusals` leave the threshold of a key made under `set` out
    /// of reach. Only the key's holders count: a signer the key's set never
    /// had refuses a round of it, and that changes nothing.
    fn out_of_reach(set: &SignerSet, refusals: &BTreeMap<u32, String>) -> bool {
        let refused = Self::signer_keys(set, refusals.keys().copied());
        set.num_keys().saturating_sub(refused) < set.threshold
    }

    /// A FIRE coordinator holding `k`, idle at our counters.
    fn fire_for(&self, k: &StoredKey, sign_id: u64) -> Result<Fire, Error> {
        let config = fire_config(&self.opts, k.made_under(&self.opts.set))
            .map_err(|e| Error::SigningFailed(format!("the signer set of key {}: {e}", k.key)))?;
        let mut s = SavedState {
            config,
            ..SavedState::default()
        };
        s.current_dkg_id = k.dkg_id;
        s.current_sign_id = sign_id;
        s.current_sign_iter_id = 0;
        let mut fire = Fire::load(&s);
        let agg = point(&k.key).map_err(|e| Error::SigningFailed(e.to_string()))?;
        fire.set_key_and_party_polynomials(agg, k.party_polynomials.clone())
            .map_err(|e| {
                Error::SigningFailed(format!("stored key does not match its polynomials: {e:?}"))
            })?;
        Ok(fire)
    }

    /// Runs every job's rounds, up to `rounds_in_flight` at once; one
    /// result per job, in order.
    fn run_jobs(&mut self, jobs: &[SignJob]) -> Vec<Result<Vec<schnorr::Signature>, Error>> {
        let mut out: Vec<Option<Result<Vec<schnorr::Signature>, Error>>> = vec![None; jobs.len()];
        let mut runs = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            if job.items.is_empty() {
                out[index] = Some(Ok(vec![]));
                continue;
            }
            match job
                .items
                .iter()
                .map(|i| self.key_entry(&i.key))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(entries) => runs.push(JobRun {
                    index,
                    request_id: 0,
                    sigs: vec![None; entries.len()],
                    entries,
                    refusals: BTreeMap::new(),
                    refused: false,
                    done: false,
                }),
                Err(e) => out[index] = Some(Err(e)),
            }
        }
        if !runs.is_empty() {
            // Every request's id and one round id per item, all spent
            // (persisted) at once before anything goes out: one fsync for
            // the whole batch.
            for r in &mut runs {
                r.request_id = self.sign_id.saturating_add(1);
                let rounds = u64::try_from(r.entries.len()).unwrap_or(u64::MAX);
                self.sign_id = r.request_id.saturating_add(rounds);
            }
            if let Err(e) = self.persist() {
                for r in &mut runs {
                    out[r.index] = Some(Err(e.clone()));
                    r.done = true;
                }
            }
        }
        // Every request out (side by side: they are independent) before any
        // round's nonce request, which signers answer only for a request
        // they checked.
        let mut posting = Vec::new();
        let mut groups = Vec::new();
        for (at, r) in runs.iter_mut().enumerate().filter(|(_, r)| !r.done) {
            let job = &jobs[r.index];
            let request = Message::SignRequest(SignRequest {
                id: r.request_id,
                payload: job.payload.clone(),
                items: job.items.clone(),
            });
            match self.seal(&request) {
                Ok(sealed) => {
                    posting.push(at);
                    groups.push(vec![sealed]);
                }
                Err(e) => {
                    out[r.index] = Some(Err(e));
                    r.done = true;
                }
            }
        }
        for (at, result) in posting.into_iter().zip(self.post_groups(&groups)) {
            if let Err(e) = result {
                out[runs[at].index] = Some(Err(e));
                runs[at].done = true;
            }
        }
        self.drive_rounds(jobs, &mut runs, &mut out);
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(Error::SigningFailed(
                        "the request ended with no result".into(),
                    ))
                })
            })
            .collect()
    }

    /// The poll loop of [`Self::run_jobs`]: opens rounds while fewer than
    /// `rounds_in_flight` are open, reads the relay once per pass, routes
    /// each packet to the round its ids name, and drives every open round's
    /// FIRE (with no packets too, so its timeouts and iterations advance).
    fn drive_rounds(
        &mut self,
        jobs: &[SignJob],
        runs: &mut [JobRun],
        out: &mut [Option<Result<Vec<schnorr::Signature>, Error>>],
    ) {
        let limit = self.opts.rounds_in_flight.clamp(1, MAX_ROUNDS_IN_FLIGHT);
        let mut pending: VecDeque<(usize, usize)> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.done)
            .flat_map(|(j, r)| (0..r.entries.len()).map(move |i| (j, i)))
            .collect();
        let mut open: BTreeMap<u64, Round> = BTreeMap::new();
        loop {
            let mut opened = Vec::new();
            let mut groups = Vec::new();
            while open.len() < limit {
                let Some((j, i)) = pending.pop_front() else {
                    break;
                };
                if runs[j].done {
                    continue;
                }
                let item = &jobs[runs[j].index].items[i];
                match self.open_round(&runs[j], j, i, item) {
                    Ok((r, nonce_request)) => {
                        opened.push(r.job);
                        groups.push(vec![nonce_request]);
                        open.insert(r.track.sign_id, r);
                    }
                    Err(e) => fail_job(runs, out, &mut open, j, e),
                }
            }
            for (j, result) in opened.into_iter().zip(self.post_groups(&groups)) {
                if let Err(e) = result {
                    fail_job(runs, out, &mut open, j, e);
                }
            }
            self.peak_in_flight = self.peak_in_flight.max(open.len());
            if open.is_empty() {
                // Fewer than `limit` open and nothing pending: all done.
                break;
            }
            // Each round has its own deadline.
            let now = Instant::now();
            let expired: Vec<u64> = open
                .iter()
                .filter(|(_, r)| now >= r.deadline)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some(r) = open.remove(&id) {
                    let e = Error::Timeout {
                        round: "signing",
                        waited: r.began.elapsed(),
                        missing: Self::holding_up(&r, self.silent(&r.track.nonce_from)),
                    };
                    fail_job(runs, out, &mut open, r.job, e);
                }
            }
            let Some(wait) = open
                .values()
                .map(|r| r.deadline.saturating_duration_since(now))
                .min()
            else {
                continue;
            };
            let inbound = match self.poll_sealed(wait.min(Duration::from_millis(100))) {
                Ok(v) => v,
                Err(e) => {
                    for j in 0..runs.len() {
                        fail_job(runs, out, &mut open, j, e.clone());
                    }
                    return;
                }
            };
            self.route(inbound, runs, &mut open);
            if runs.iter().any(|r| r.refused && !r.done) {
                // Those jobs end now; refusals already on the relay are
                // named too.
                if let Ok(more) = self.poll_sealed(Duration::ZERO) {
                    self.route(more, runs, &mut open);
                }
                for j in 0..runs.len() {
                    if runs[j].refused && !runs[j].done {
                        info!(
                            "coordinator: request {} refused by signers {:?}; the threshold is out of reach",
                            runs[j].request_id,
                            runs[j].refusals.keys().collect::<Vec<_>>()
                        );
                        let e = Error::Refused {
                            refusals: runs[j]
                                .refusals
                                .iter()
                                .map(|(id, rule)| (*id, rule.clone()))
                                .collect(),
                        };
                        fail_job(runs, out, &mut open, j, e);
                    }
                }
            }
            let ids: Vec<u64> = open.keys().copied().collect();
            let mut stepped = Vec::new();
            let mut groups = Vec::new();
            for id in ids {
                let Some(mut r) = open.remove(&id) else {
                    continue;
                };
                match self.step_round(&mut r) {
                    Ok((None, outbound)) => {
                        if !outbound.is_empty() {
                            stepped.push(r.job);
                            groups.push(outbound);
                        }
                        open.insert(id, r);
                    }
                    Ok((Some(sig), _)) => {
                        let run = &mut runs[r.job];
                        if let Some(slot) = run.sigs.get_mut(r.item) {
                            *slot = Some(sig);
                        }
                        if !run.done && run.sigs.iter().all(Option::is_some) {
                            run.done = true;
                            out[run.index] = Some(Ok(run.sigs.iter().flatten().copied().collect()));
                        }
                    }
                    Err(e) => fail_job(runs, out, &mut open, r.job, e),
                }
            }
            for (j, result) in stepped.into_iter().zip(self.post_groups(&groups)) {
                if let Err(e) = result {
                    fail_job(runs, out, &mut open, j, e);
                }
            }
        }
    }

    /// Opens round `item` of job `j`: its own FIRE coordinator, deadline and
    /// sealed nonces; returns it with its nonce request, sealed, to post.
    fn open_round(
        &self,
        run: &JobRun,
        job: usize,
        item: usize,
        what: &SignItem,
    ) -> Result<(Round, Outgoing), Error> {
        let k = run
            .entries
            .get(item)
            .ok_or_else(|| Error::SigningFailed(format!("no item {item} in the request")))?;
        let sign_id = run.sign_id(item);
        let digest = what.message.digest();
        // `sign_id` was persisted as spent before the request went out.
        let mut fire = self.fire_for(k, sign_id - 1)?;
        let start = fire
            .start_signing_round(&digest, SignatureType::Taproot(None))
            .map_err(|e| Error::SigningFailed(format!("signing: {e:?}")))?;
        let began = Instant::now();
        let mut r = Round {
            job,
            item,
            holders: k.made_under(&self.opts.set).clone(),
            digest,
            fire,
            track: SignTrack {
                key: k.key,
                dkg_id: k.dkg_id,
                sign_id,
                iter: 0,
                message: digest.to_vec(),
                nonce_from: HashSet::new(),
                share_asked: HashSet::new(),
                share_from: HashSet::new(),
            },
            sealed: Sealed::new(),
            began,
            deadline: began + self.opts.sign_timeout,
            inbox: vec![],
            fed_key_ids: HashSet::new(),
        };
        r.sent(&start);
        let nonce_request = self.seal_fire(start, Some((&r.track.key, &r.sealed)))?;
        Ok((r, nonce_request))
    }

    /// Routes what was read to the rounds its ids (key, DKG round, signing
    /// round, iteration) name, and refusals to the job whose request or
    /// round they name; everything else is stale.
    fn route(
        &mut self,
        inbound: Vec<(Envelope, Vec<u8>)>,
        runs: &mut [JobRun],
        open: &mut BTreeMap<u64, Round>,
    ) {
        for (env, bytes) in inbound {
            let frost_net::Sender::Signer(sender) = env.sender else {
                continue;
            };
            match env.message {
                Message::NonceResponse(r) => {
                    let m = &r.msg;
                    let Some(round) = open.get_mut(&m.sign_id).filter(|o| {
                        o.track.is(&r.key, m.dkg_id, m.sign_id, m.sign_iter_id)
                            && m.message == o.track.message
                            && holds(&o.holders, sender, &m.key_ids)
                    }) else {
                        self.stale(format_args!(
                            "a nonce response of signer {sender} for no open round ({}/{})",
                            m.sign_id, m.sign_iter_id
                        ));
                        continue;
                    };
                    if round.track.nonce_from.insert(sender) {
                        round.sealed.insert(sender, (r.msg.clone(), bytes));
                        round.inbox.push(Packet {
                            msg: w::Message::NonceResponse(r.msg),
                            sig: vec![],
                        });
                    } else {
                        self.stale(format_args!(
                            "a duplicate nonce response of signer {sender}"
                        ));
                    }
                }
                Message::SignatureShareResponse(r) => {
                    let m = &r.msg;
                    let Some(round) = open
                        .get_mut(&m.sign_id)
                        .filter(|o| o.track.is(&r.key, m.dkg_id, m.sign_id, m.sign_iter_id))
                    else {
                        self.stale(format_args!(
                            "a share of signer {sender} for no open round ({}/{})",
                            m.sign_id, m.sign_iter_id
                        ));
                        continue;
                    };
                    if round.track.share_asked.contains(&sender)
                        && round.track.share_from.insert(sender)
                    {
                        round.inbox.push(Packet {
                            msg: w::Message::SignatureShareResponse(r.msg),
                            sig: vec![],
                        });
                    } else {
                        self.stale(format_args!(
                            "an unasked or duplicate share of signer {sender}"
                        ));
                    }
                }
                Message::Refusal(r) => {
                    let Some(run) = runs
                        .iter_mut()
                        .find(|run| !run.done && run.covers(r.request))
                    else {
                        self.stale(format_args!(
                            "a refusal of signer {sender} of no open request ({})",
                            r.request
                        ));
                        continue;
                    };
                    warn!(
                        "coordinator: signer {sender} refused request {}: {}",
                        r.request, r.rule
                    );
                    run.refusals.entry(sender).or_insert(r.rule);
                    let current = &self.opts.set;
                    if run
                        .entries
                        .iter()
                        .any(|k| Self::out_of_reach(k.made_under(current), &run.refusals))
                    {
                        run.refused = true;
                    }
                }
                other => {
                    self.stale(format_args!(
                        "a {:?} of signer {sender} not for an open round",
                        other.kind()
                    ));
                }
            }
        }
    }

    /// FIRE's `process_inbound_messages` for round `r`, except for the nonce
    /// response that reaches the threshold: FIRE would compute the
    /// aggregate nonce it never uses (`compute::intermediate`, quadratic in
    /// the signers: ≈ 3 % of a 15×1 relay round's CPU, all of it on the
    /// coordinator between the nonce and the share phase), so that response
    /// is recorded in FIRE's saved state exactly as its `gather_nonces`
    /// records it ([`Self::complete_nonces`]) and FIRE goes on from there.
    // FIRE's own error, as its `process_inbound_messages` returns it.
    #[allow(clippy::result_large_err)]
    fn feed(
        r: &mut Round,
        packets: &[Packet],
    ) -> Result<(Vec<Packet>, Vec<OperationResult>), wsts::state_machine::coordinator::Error> {
        let mut outbound = vec![];
        let mut results = vec![];
        for p in packets {
            if let (w::Message::NonceResponse(n), State::NonceGather(t)) = (&p.msg, &r.fire.state) {
                let t = *t;
                let mut fed = r.fed_key_ids.clone();
                fed.extend(n.key_ids.iter().copied());
                let reaches = u32::try_from(fed.len()).unwrap_or(u32::MAX) >= r.holders.threshold;
                if reaches {
                    if let Some(fire) = Self::complete_nonces(&r.fire, n, t) {
                        r.fire = fire;
                    }
                }
                r.fed_key_ids = fed;
            }
            let (packet, result) = r.fire.process_message(p)?;
            outbound.extend(packet);
            results.extend(result);
        }
        let (packet, result) = r.fire.process_timeout()?;
        outbound.extend(packet);
        results.extend(result);
        Ok((outbound, results))
    }

    /// `fire` (gathering nonces) with `n` recorded as FIRE's `gather_nonces`
    /// records an accepted nonce response, and in the share request state
    /// when that reaches the threshold — without computing the aggregate
    /// nonce. `None` when FIRE would not accept `n` or the threshold is not
    /// reached: then FIRE is given `n` itself and decides.
    fn complete_nonces(fire: &Fire, n: &w::NonceResponse, t: SignatureType) -> Option<Fire> {
        let mut s = fire.save();
        if (n.dkg_id, n.sign_id, n.sign_iter_id)
            != (s.current_dkg_id, s.current_sign_id, s.current_sign_iter_id)
        {
            return None;
        }
        s.config.signer_public_keys.get(&n.signer_id)?;
        let configured = s.config.signer_key_ids.get(&n.signer_id)?.clone();
        let listed: hashbrown::HashSet<u32> = n.key_ids.iter().copied().collect();
        if configured != listed
            || n.nonces.iter().any(|x| !x.is_valid())
            || s.malicious_signer_ids.contains(&n.signer_id)
        {
            return None;
        }
        let threshold = usize::try_from(s.config.threshold).ok()?;
        let info = s.message_nonces.entry(n.message.clone()).or_default();
        if info.public_nonces.contains_key(&n.signer_id) {
            return None;
        }
        let mut received = info.nonce_recv_key_ids.clone();
        received.extend(configured.iter().copied());
        if received.len() < threshold {
            return None;
        }
        info.public_nonces.insert(n.signer_id, n.clone());
        info.nonce_recv_key_ids = received;
        info.sign_wait_signer_ids.insert(n.signer_id);
        s.message.clone_from(&n.message);
        s.state = State::SigShareRequest(t);
        Some(Fire::load(&s))
    }

    /// Feeds round `r`'s FIRE what was routed to it (maybe nothing); returns
    /// its signature, verified, once it has one, and what it answers,
    /// sealed, to post in order.
    fn step_round(
        &self,
        r: &mut Round,
    ) -> Result<(Option<schnorr::Signature>, Vec<Outgoing>), Error> {
        let packets = std::mem::take(&mut r.inbox);
        let (outbound, results) = Self::feed(r, &packets).map_err(|e| {
            match e {
                // FIRE's nonce phase ended with no nonce at all: every
                // signer is silent; name them.
                wsts::state_machine::coordinator::Error::MissingMessageNonceInfo => {
                    Error::Timeout {
                        round: "signing",
                        waited: r.began.elapsed(),
                        missing: self.silent(&r.track.nonce_from),
                    }
                }
                other => Error::SigningFailed(format!("signing: {other:?}")),
            }
        })?;
        let mut sealed = Vec::with_capacity(outbound.len());
        for p in outbound {
            r.sent(&p);
            sealed.push(self.seal_fire(p, Some((&r.track.key, &r.sealed)))?);
        }
        match results.into_iter().next() {
            None => Ok((None, sealed)),
            Some(result) => Self::round_result(r, result).map(|sig| (Some(sig), sealed)),
        }
    }

    /// What FIRE's `result` of round `r` means: a signature that verifies
    /// against the round's key, or the error naming who is missing.
    fn round_result(r: &Round, result: OperationResult) -> Result<schnorr::Signature, Error> {
        match result {
            OperationResult::SignTaproot(proof) => {
                let sig = schnorr::Signature::from_slice(&proof.to_bytes())
                    .map_err(|e| Error::SigningFailed(format!("aggregate signature: {e}")))?;
                // Check it before anyone relies on it.
                if verifies(&r.track.key, &r.digest, &sig) {
                    Ok(sig)
                } else {
                    Err(Error::SigningFailed(
                        "the aggregate signature does not verify".into(),
                    ))
                }
            }
            OperationResult::SignError(e) => Err(match e {
                SignError::NonceTimeout(answered, malicious) => {
                    let answered: HashSet<u32> = answered.into_iter().collect();
                    let missing = r
                        .holders
                        .signers
                        .iter()
                        .map(|s| s.wsts_id())
                        .filter(|id| !answered.contains(id))
                        .chain(malicious);
                    Error::Timeout {
                        round: "signing",
                        waited: r.began.elapsed(),
                        missing: to_one_based(missing),
                    }
                }
                SignError::InsufficientSigners(bad) => Error::Timeout {
                    round: "signing",
                    waited: r.began.elapsed(),
                    missing: to_one_based(bad),
                },
                other => Error::SigningFailed(format!("{other:?}")),
            }),
            other => Err(Error::SigningFailed(format!(
                "signing ended with {other:?}"
            ))),
        }
    }

    /// Who held round `r` up at its deadline: `silent` (no nonce this
    /// iteration), the signers asked for a share that sent none, and those
    /// FIRE marked for that in an earlier iteration; 1-based, sorted. A
    /// signer that answers nonces but never shares is named, not hidden
    /// behind the nonce phase.
    fn holding_up(r: &Round, silent: Vec<u32>) -> Vec<u32> {
        let mut out: BTreeSet<u32> = silent.into_iter().collect();
        out.extend(r.track.share_asked.difference(&r.track.share_from));
        out.extend(
            r.fire
                .save()
                .malicious_signer_ids
                .iter()
                .map(|id| id.saturating_add(1)),
        );
        out.into_iter().collect()
    }

    /// The (1-based) signers not in `answered`.
    fn silent(&self, answered: &HashSet<u32>) -> Vec<u32> {
        self.opts
            .set
            .signers
            .iter()
            .map(|s| s.id)
            .filter(|id| !answered.contains(id))
            .collect()
    }

    /// Whether FIRE can safely judge a DKG failure report: every signer,
    /// party and key id it makes FIRE look up is one FIRE holds.
    fn failure_report_is_judgeable(&self, t: &DkgTrack, reporter: u32, f: &DkgFailure) -> bool {
        match f {
            DkgFailure::BadPublicShares(bad) => bad.iter().all(|b| t.public.contains_key(b)),
            DkgFailure::BadPrivateShares(bad) => {
                let Some(reporter_keys) = self.opts.set.signer(reporter + 1) else {
                    return false;
                };
                bad.keys().all(|b| {
                    let (Some(public), Some(private)) = (t.public.get(b), t.private.get(b)) else {
                        return false;
                    };
                    private.shares.iter().all(|(src, shares)| {
                        public.comms.iter().any(|(p, _)| p == src)
                            && reporter_keys.key_ids.iter().all(|k| shares.contains_key(k))
                    })
                })
            }
            _ => true,
        }
    }

    /// Drives FIRE's DKG to its result, feeding it only what this round
    /// asked for. Collects `KeyStored` reports on the way.
    fn drive_dkg(
        &mut self,
        fire: &mut Fire,
        start: Packet,
        track: &mut DkgTrack,
        deadline: Instant,
    ) -> Result<OperationResult, Error> {
        let began = Instant::now();
        self.post_fire(start, None)?;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    round: "dkg",
                    waited: began.elapsed(),
                    missing: vec![],
                });
            }
            let inbound = self.poll((deadline - now).min(Duration::from_millis(100)))?;
            let mut packets = Vec::with_capacity(inbound.len());
            for env in inbound {
                let frost_net::Sender::Signer(sender) = env.sender else {
                    continue;
                };
                let wsts_id = sender - 1;
                match env.message {
                    Message::DkgPublicShares(m) if m.dkg_id == track.dkg_id => {
                        if track.private_asked.is_none() && !track.public.contains_key(&wsts_id) {
                            track.public.insert(wsts_id, m.clone());
                            packets.push(Packet {
                                msg: w::Message::DkgPublicShares(m),
                                sig: vec![],
                            });
                        } else {
                            self.stale(format_args!(
                                "late or duplicate public shares of signer {sender}"
                            ));
                        }
                    }
                    Message::DkgPrivateShares(m) if m.dkg_id == track.dkg_id => {
                        let asked = track
                            .private_asked
                            .as_ref()
                            .is_some_and(|a| a.contains(&wsts_id));
                        if asked
                            && track.end_asked.is_none()
                            && !track.private.contains_key(&wsts_id)
                        {
                            track.private.insert(wsts_id, m.clone());
                            packets.push(Packet {
                                msg: w::Message::DkgPrivateShares(m),
                                sig: vec![],
                            });
                        } else {
                            self.stale(format_args!("unasked private shares of signer {sender}"));
                        }
                    }
                    Message::DkgEnd(m) if m.dkg_id == track.dkg_id => {
                        let asked = track
                            .end_asked
                            .as_ref()
                            .is_some_and(|a| a.contains(&wsts_id));
                        if !asked || !track.ended.insert(wsts_id) {
                            self.stale(format_args!("an unasked DkgEnd of signer {sender}"));
                            continue;
                        }
                        if let w::DkgStatus::Failure(f) = &m.status {
                            if !self.failure_report_is_judgeable(track, wsts_id, f) {
                                return Err(Error::DkgFailed {
                                    bad_signers: vec![sender],
                                    reason: format!(
                                        "signer {sender} reported a failure ({f:?}) about shares that were never sent"
                                    ),
                                });
                            }
                        }
                        packets.push(Packet {
                            msg: w::Message::DkgEnd(m),
                            sig: vec![],
                        });
                    }
                    Message::KeyStored(k) if k.dkg_id == track.dkg_id => {
                        match track.stored.get(&sender) {
                            None => {
                                track.stored.insert(sender, k.key);
                            }
                            Some(prev) if *prev != k.key => {
                                track.conflicting.insert(sender);
                            }
                            Some(_) => {}
                        }
                    }
                    other => {
                        self.stale(format_args!(
                            "a {:?} of signer {sender} not for this DKG",
                            other.kind()
                        ));
                    }
                }
            }
            let (outbound, results) = fire
                .process_inbound_messages(&packets)
                .map_err(|e| Error::SigningFailed(format!("dkg: {e:?}")))?;
            for p in outbound {
                match &p.msg {
                    w::Message::DkgPrivateBegin(b) => {
                        track.private_asked = Some(b.signer_ids.iter().copied().collect());
                    }
                    w::Message::DkgEndBegin(b) => {
                        track.end_asked = Some(b.signer_ids.iter().copied().collect());
                    }
                    _ => {}
                }
                self.post_fire(p, None)?;
            }
            if let Some(r) = results.into_iter().next() {
                return Ok(r);
            }
        }
    }

    /// Waits for every signer's `KeyStored` of `key` in `track`'s round.
    fn await_key_stored(
        &mut self,
        track: &mut DkgTrack,
        key: &PublicKey,
        deadline: Instant,
    ) -> Result<(), Error> {
        let all: Vec<u32> = self.opts.set.signers.iter().map(|s| s.id).collect();
        loop {
            let wrong: Vec<u32> = track
                .stored
                .iter()
                .filter(|(_, k)| *k != key)
                .map(|(id, _)| *id)
                .chain(track.conflicting.iter().copied())
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect();
            if !wrong.is_empty() {
                return Err(Error::DkgFailed {
                    bad_signers: wrong,
                    reason: format!("signers reported storing a key other than {key}"),
                });
            }
            let missing: Vec<u32> = all
                .iter()
                .copied()
                .filter(|id| !track.stored.contains_key(id))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::DkgFailed {
                    bad_signers: missing,
                    reason: format!("no report of the share of {key} being stored"),
                });
            }
            for env in self.poll((deadline - now).min(Duration::from_millis(100)))? {
                let frost_net::Sender::Signer(sender) = env.sender else {
                    continue;
                };
                match env.message {
                    Message::KeyStored(k) if k.dkg_id == track.dkg_id => {
                        match track.stored.get(&sender) {
                            None => {
                                track.stored.insert(sender, k.key);
                            }
                            Some(prev) if *prev != k.key => {
                                track.conflicting.insert(sender);
                            }
                            Some(_) => {}
                        }
                    }
                    other => {
                        self.stale(format_args!("a {:?} of signer {sender}", other.kind()));
                    }
                }
            }
        }
    }

    /// Waits for one answer of `want` kind from every signer; refusals fail
    /// at once, naming the signer.
    fn gather_all<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut want: impl FnMut(u32, &Message, &[u8]) -> Option<T>,
        refusal_ids: (u64, u64),
    ) -> Result<BTreeMap<u32, T>, Error> {
        let n = self.opts.set.signers.len();
        let mut got = BTreeMap::new();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<u32> = self
                    .opts
                    .set
                    .signers
                    .iter()
                    .map(|s| s.id)
                    .filter(|id| !got.contains_key(id))
                    .collect();
                return Err(Error::DkgFailed {
                    bad_signers: missing,
                    reason: format!("the DKG test signature: no {what} by the deadline"),
                });
            }
            for (env, bytes) in
                self.poll_sealed((deadline - now).min(Duration::from_millis(100)))?
            {
                let frost_net::Sender::Signer(sender) = env.sender else {
                    continue;
                };
                if let Message::Refusal(r) = &env.message {
                    if r.request == refusal_ids.0 || r.request == refusal_ids.1 {
                        return Err(Error::DkgFailed {
                            bad_signers: vec![sender],
                            reason: format!(
                                "signer {sender} refused the DKG test signature: {}",
                                r.rule
                            ),
                        });
                    }
                }
                match want(sender, &env.message, &bytes) {
                    Some(v) if !got.contains_key(&sender) => {
                        got.insert(sender, v);
                    }
                    _ => self.stale(format_args!(
                        "a {:?} of signer {sender}",
                        env.message.kind()
                    )),
                }
            }
        }
        Ok(got)
    }

    /// The DKG's test signature, by every signer: each share must count, so
    /// this round is driven directly with an aggregator, not with FIRE
    /// (which asks for shares as soon as the threshold of nonces is in).
    fn test_round(&mut self, k: &StoredKey) -> Result<(), Error> {
        let text = format!("sbtc dkg test {} {}", k.dkg_id, k.key);
        let message = ToSign::Test { text };
        let digest = message.digest();
        self.sign_id += 1;
        let request_id = self.sign_id;
        self.sign_id += 1;
        let sign_id = self.sign_id;
        self.persist()?;
        self.post(&Message::SignRequest(SignRequest {
            id: request_id,
            payload: peg_rules::SignPayload::Test.encode(),
            items: vec![SignItem {
                key: k.key,
                message,
            }],
        }))?;
        let nonce_request = w::NonceRequest {
            dkg_id: k.dkg_id,
            sign_id,
            sign_iter_id: 1,
            message: digest.to_vec(),
            signature_type: SignatureType::Taproot(None),
        };
        self.post(&Message::NonceRequest(Keyed {
            key: k.key,
            msg: nonce_request,
        }))?;
        let deadline = Instant::now() + self.opts.sign_timeout;
        let key = k.key;
        let dkg_id = k.dkg_id;
        let same_round = move |d: u64, s: u64, i: u64| (d, s, i) == (dkg_id, sign_id, 1);
        let nonces = self.gather_all(
            deadline,
            "nonce",
            |_, m, bytes| match m {
                Message::NonceResponse(r)
                    if r.key == key
                        && same_round(r.msg.dkg_id, r.msg.sign_id, r.msg.sign_iter_id)
                        && r.msg.message == digest =>
                {
                    Some((r.msg.clone(), bytes.to_vec()))
                }
                _ => None,
            },
            (request_id, sign_id),
        )?;
        let nonce_responses: Vec<w::NonceResponse> =
            nonces.values().map(|(r, _)| r.clone()).collect();
        // The round's own sealed nonces, dropped when it ends.
        let sealed: Sealed = nonces.into_iter().collect();
        let request = Self::share_request(
            k.key,
            w::SignatureShareRequest {
                dkg_id: k.dkg_id,
                sign_id,
                sign_iter_id: 1,
                nonce_responses: nonce_responses.clone(),
                message: digest.to_vec(),
                signature_type: SignatureType::Taproot(None),
            },
            &sealed,
        )?;
        self.post(&Message::SignatureShareRequest(request))?;
        let shares = self.gather_all(
            deadline,
            "signature share",
            |_, m, _| match m {
                Message::SignatureShareResponse(r)
                    if r.key == key
                        && same_round(r.msg.dkg_id, r.msg.sign_id, r.msg.sign_iter_id) =>
                {
                    Some(r.msg.signature_shares.clone())
                }
                _ => None,
            },
            (request_id, sign_id),
        )?;
        let public_nonces: Vec<_> = nonce_responses
            .iter()
            .flat_map(|n| n.nonces.iter().cloned())
            .collect();
        let key_ids: Vec<u32> = nonce_responses
            .iter()
            .flat_map(|n| n.key_ids.iter().copied())
            .collect();
        let all_shares: Vec<_> = shares.values().flatten().cloned().collect();
        let mut agg = wsts::v2::Aggregator::new(self.opts.set.num_keys(), self.opts.set.threshold);
        let polys: hashbrown::HashMap<u32, PolyCommitment> =
            k.party_polynomials.iter().cloned().collect();
        agg.init(&polys).map_err(|e| Error::DkgFailed {
            bad_signers: vec![],
            reason: format!("the new key's polynomials: {e:?}"),
        })?;
        let proof = agg
            .sign_taproot(&digest, &public_nonces, &all_shares, &key_ids, None)
            .map_err(|e| match e {
                wsts::errors::AggregatorError::BadPartySigs(bad) => Error::DkgFailed {
                    bad_signers: to_one_based(bad),
                    reason: "bad signature shares in the DKG test signature".into(),
                },
                other => Error::DkgFailed {
                    bad_signers: vec![],
                    reason: format!("the DKG test signature: {other:?}"),
                },
            })?;
        let sig = schnorr::Signature::from_slice(&proof.to_bytes())
            .map_err(|e| Error::SigningFailed(format!("test signature: {e}")))?;
        if !verifies(&k.key, &digest, &sig) {
            return Err(Error::DkgFailed {
                bad_signers: vec![],
                reason: "the DKG test signature does not verify".into(),
            });
        }
        Ok(())
    }

    fn run_dkg(&mut self) -> Result<PublicKey, Error> {
        let last = self.keys.last().map_or(0, |k| k.dkg_id);
        self.dkg_id = self.dkg_id.max(last) + 1;
        // Persisted before the round: a failed round's id is never reused.
        self.persist()?;
        let dkg_id = self.dkg_id;
        let s = SavedState {
            config: self.config.clone(),
            current_dkg_id: dkg_id - 1,
            ..SavedState::default()
        };
        let mut fire = Fire::load(&s);
        let start = fire
            .start_dkg_round()
            .map_err(|e| Error::SigningFailed(format!("dkg: {e:?}")))?;
        info!("coordinator: DKG round {dkg_id} started");
        let timeout = self.opts.dkg_timeout;
        let began = Instant::now();
        let mut track = DkgTrack {
            dkg_id,
            ..DkgTrack::default()
        };
        let point_key = match self.drive_dkg(&mut fire, start, &mut track, began + timeout)? {
            OperationResult::Dkg(p) => p,
            OperationResult::DkgError(e) => {
                return Err(match &e {
                    DkgError::DkgPublicTimeout(w)
                    | DkgError::DkgPrivateTimeout(w)
                    | DkgError::DkgEndTimeout(w) => Error::Timeout {
                        round: "dkg",
                        waited: began.elapsed(),
                        missing: to_one_based(w.iter().copied()),
                    },
                    DkgError::DkgEndFailure(f) => dkg_failure(f),
                })
            }
            other => return Err(Error::SigningFailed(format!("dkg ended with {other:?}"))),
        };
        let key = public_key(&point_key).map_err(|e| Error::SigningFailed(e.to_string()))?;
        let party_polynomials: Vec<(u32, PolyCommitment)> =
            fire.save().party_polynomials.into_iter().collect();
        let stored = StoredKey {
            dkg_id,
            key,
            party_polynomials,
            set: Some(KeySet::of(&self.opts.set)),
        };
        check_stored(&self.opts.set, &stored).map_err(|e| Error::DkgFailed {
            bad_signers: vec![],
            reason: format!("FIRE's key: {e}"),
        })?;
        let grace = (began + timeout).max(Instant::now() + timeout / 3);
        self.await_key_stored(&mut track, &key, grace)?;
        self.test_round(&stored)?;
        self.keys.push(stored);
        self.persist()?;
        info!("coordinator: DKG round {dkg_id} complete and verified, aggregate key {key}");
        // Signers hold the key as pending until told: a DKG whose gate
        // failed must not make them refuse the retry. A lost message only
        // leaves them willing to join the next DKG, which keeps every key.
        if let Err(e) = self.post(&Message::KeyAccepted(KeyStored { dkg_id, key })) {
            warn!("coordinator: could not tell the signers key {key} is accepted: {e}");
        }
        Ok(key)
    }
}

/// Whether signer `id` (1-based) holds a share of a key made under `set`,
/// with exactly `key_ids`: nonces of anyone else never reach FIRE (it
/// indexes its per-signer state with their ids).
fn holds(set: &SignerSet, id: u32, key_ids: &[u32]) -> bool {
    set.signer(id).is_some_and(|s| {
        let mut a = s.key_ids.clone();
        let mut b = key_ids.to_vec();
        a.sort_unstable();
        b.sort_unstable();
        a == b
    })
}

fn dkg_failure(errors: &hashbrown::HashMap<u32, DkgFailure>) -> Error {
    let mut bad = Vec::new();
    for failure in errors.values() {
        match failure {
            DkgFailure::BadPublicShares(s)
            | DkgFailure::MissingPublicShares(s)
            | DkgFailure::MissingPrivateShares(s) => bad.extend(s.iter().copied()),
            DkgFailure::BadPrivateShares(m) => bad.extend(m.keys().copied()),
            DkgFailure::Threshold | DkgFailure::BadState => {}
        }
    }
    let reporters = to_one_based(errors.keys().copied());
    Error::DkgFailed {
        bad_signers: to_one_based(bad),
        reason: format!("signers {reporters:?} reported failures"),
    }
}

impl FrostCoordinator for RelayFrostCoordinator {
    fn run_dkg_round(&mut self) -> Result<PublicKey, Error> {
        let r = self.run_dkg();
        if let Err(e) = &r {
            warn!(
                "coordinator: DKG round {} failed: {e}; the previous keys stay current",
                self.dkg_id
            );
        }
        r
    }

    fn sign(
        &mut self,
        payload: &[u8],
        items: &[SignItem],
    ) -> Result<Vec<schnorr::Signature>, Error> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        // One job: its items' rounds run in parallel.
        let job = SignJob {
            payload: payload.to_vec(),
            items: items.to_vec(),
        };
        self.run_jobs(std::slice::from_ref(&job))
            .pop()
            .unwrap_or_else(|| {
                Err(Error::SigningFailed(
                    "the request ended with no result".into(),
                ))
            })
    }

    fn sign_many(&mut self, jobs: &[SignJob]) -> Vec<Result<Vec<schnorr::Signature>, Error>> {
        // Every request of a run is posted before its first round opens,
        // and a signer keeps a bounded table of the (key, digest) pairs its
        // accepted requests named, oldest dropped first: a run of more items
        // than that would have the first jobs' pairs dropped before their
        // nonce requests come (red team: `tests/redteam_inflight.rs`). So a
        // call runs in chunks of at most MAX_BATCH_ITEMS items (a job larger
        // than that runs alone).
        let mut out = Vec::with_capacity(jobs.len());
        let mut start = 0;
        while start < jobs.len() {
            let mut end = start;
            let mut items = 0usize;
            while end < jobs.len()
                && (end == start || items.saturating_add(jobs[end].items.len()) <= MAX_BATCH_ITEMS)
            {
                items = items.saturating_add(jobs[end].items.len());
                end += 1;
            }
            out.extend(self.run_jobs(&jobs[start..end]));
            start = end;
        }
        out
    }

    fn aggregate_public_key(&self) -> Option<PublicKey> {
        self.keys.last().map(|k| k.key)
    }

    fn keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(|k| k.key).collect()
    }

    fn attestations(&mut self) -> Vec<SignerAttestation> {
        // Everything else read now is of no round: dropped as stale.
        match self.poll(Duration::ZERO) {
            Ok(envs) => {
                for env in envs {
                    self.stale(format_args!(
                        "a {:?} of {} between rounds",
                        env.message.kind(),
                        env.sender
                    ));
                }
            }
            Err(e) => warn!("coordinator: reading attestations: {e}"),
        }
        self.attestations.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsts::common::Nonce;
    use wsts::curve::scalar::Scalar;

    /// A FIRE of 5 signers (one key each, threshold 3) holding a real key,
    /// asking for nonces; and a nonce response of each signer.
    fn fire_and_nonces() -> (Fire, Vec<Packet>) {
        let mut rng = wsts::util::create_rng();
        let (n, t) = (5u32, 3u32);
        let mut parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], n, n, t, &mut rng))
            .collect();
        let comms = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
        let mut config = Config::new(n, n, t, Scalar::random(&mut rng));
        for i in 0..n {
            config
                .signer_public_keys
                .insert(i, Point::from(Scalar::random(&mut rng)));
            config
                .signer_key_ids
                .insert(i, [i + 1].into_iter().collect());
        }
        let mut fire = Fire::new(config);
        let key = comms.values().fold(Point::new(), |k, c| k + c.poly[0]);
        fire.set_key_and_party_polynomials(key, comms.into_iter().collect())
            .unwrap();
        let msg = [7u8; 32];
        let start = fire
            .start_signing_round(&msg, SignatureType::Taproot(None))
            .unwrap();
        let w::Message::NonceRequest(req) = start.msg else {
            panic!("a nonce request first")
        };
        let responses = parties
            .iter_mut()
            .map(|p| Packet {
                msg: w::Message::NonceResponse(w::NonceResponse {
                    dkg_id: req.dkg_id,
                    sign_id: req.sign_id,
                    sign_iter_id: req.sign_iter_id,
                    signer_id: p.party_id,
                    key_ids: vec![p.party_id + 1],
                    nonces: vec![p.gen_nonce(&mut rng)],
                    message: msg.to_vec(),
                }),
                sig: vec![],
            })
            .collect();
        (fire, responses)
    }

    fn nonce_of(p: &Packet) -> &w::NonceResponse {
        let w::Message::NonceResponse(n) = &p.msg else {
            panic!("a nonce response")
        };
        n
    }

    /// The share request FIRE sends after the threshold's nonce response is
    /// the same whether FIRE recorded that response or `complete_nonces`
    /// did, and FIRE is in the same state after it (but for its clocks).
    #[test]
    fn completing_the_nonces_is_what_fire_does_without_the_aggregate_nonce() {
        let (mut theirs, nonces) = fire_and_nonces();
        let mut ours = theirs.clone();
        let t = SignatureType::Taproot(None);
        for p in &nonces[..2] {
            assert!(theirs.process_message(p).unwrap().0.is_none());
            // Below the threshold: left to FIRE.
            assert!(RelayFrostCoordinator::complete_nonces(&ours, nonce_of(p), t).is_none());
            assert!(ours.process_message(p).unwrap().0.is_none());
        }
        // A duplicate, or a response with other key ids, is left to FIRE.
        assert!(RelayFrostCoordinator::complete_nonces(&ours, nonce_of(&nonces[1]), t).is_none());
        let mut other_ids = nonce_of(&nonces[2]).clone();
        other_ids.key_ids = vec![1];
        assert!(RelayFrostCoordinator::complete_nonces(&ours, &other_ids, t).is_none());
        let mut other_round = nonce_of(&nonces[2]).clone();
        other_round.sign_iter_id += 1;
        assert!(RelayFrostCoordinator::complete_nonces(&ours, &other_round, t).is_none());
        let mut invalid = nonce_of(&nonces[2]).clone();
        invalid.nonces = vec![Nonce::random(&mut wsts::util::create_rng()).into()];
        invalid.nonces[0].D = Point::new();
        assert!(RelayFrostCoordinator::complete_nonces(&ours, &invalid, t).is_none());

        let (want, _) = theirs.process_message(&nonces[2]).unwrap();
        ours = RelayFrostCoordinator::complete_nonces(&ours, nonce_of(&nonces[2]), t).unwrap();
        let (got, _) = ours.process_message(&nonces[2]).unwrap();
        let (want, got) = (want.unwrap(), got.unwrap());
        assert!(matches!(want.msg, w::Message::SignatureShareRequest(_)));
        assert_eq!(got.msg, want.msg);
        let (mut a, mut b) = (theirs.save(), ours.save());
        for s in [&mut a, &mut b] {
            s.nonce_start = None;
            s.sign_start = None;
        }
        assert_eq!(a, b);
    }
}
