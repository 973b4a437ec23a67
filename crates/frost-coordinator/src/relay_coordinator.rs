//! [`FrostCoordinator`] over the relay, with wsts' FIRE coordinator.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{schnorr, Message as SecpMessage, PublicKey, SecretKey};
use frost_net::{
    decode_packet, encode_packet, public_key, scalar, write_private_atomically, Admit,
    CoordinatorRounds, SignerSet, Verifier,
};
use log::{debug, info, warn};
use relay::RelayClient;
use serde::{Deserialize, Serialize};
use wsts::common::PolyCommitment;
use wsts::curve::point::Point;
use wsts::net::{DkgFailure, Packet, SignatureType};
use wsts::state_machine::coordinator::{fire, Config, Coordinator as _, SavedState};
use wsts::state_machine::{DkgError, OperationResult, SignError};

use crate::{Error, FrostCoordinator};

type Fire = fire::Coordinator<wsts::v2::Aggregator>;

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
    /// Where the aggregate key and round counters are kept, if anywhere.
    pub state_path: Option<PathBuf>,
}

/// What survives a restart: enough to sign without a new DKG.
#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    aggregate_key: Point,
    party_polynomials: Vec<(u32, PolyCommitment)>,
    dkg_id: u64,
    sign_id: u64,
}

const STATE_VERSION: u32 = 1;

/// Runs DKG and signing rounds with the signers through the relay.
pub struct RelayFrostCoordinator {
    opts: RelayCoordinatorOptions,
    config: Config,
    fire: Fire,
    verifier: Verifier,
    relay: RelayClient,
    cursor: u64,
    rounds: CoordinatorRounds,
    key: Option<(Point, Vec<(u32, PolyCommitment)>)>,
    dkg_id: u64,
    sign_id: u64,
    rejected: u64,
}

impl std::fmt::Debug for RelayFrostCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFrostCoordinator")
            .field("relay", &self.opts.relay_url)
            .field("dkg_id", &self.dkg_id)
            .field("sign_id", &self.sign_id)
            .finish()
    }
}

fn to_one_based(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = ids.into_iter().map(|i| i + 1).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl RelayFrostCoordinator {
    /// Builds the coordinator, loading its aggregate key if a state file
    /// exists, and starts reading the relay from its current head.
    ///
    /// # Errors
    /// An inconsistent signer set, an unreadable state file, or an
    /// unreachable relay.
    pub fn new(opts: RelayCoordinatorOptions) -> Result<Self, Error> {
        let cfg_err = |e: String| Error::Relay(format!("configuration: {e}"));
        opts.set.validate().map_err(|e| cfg_err(e.to_string()))?;
        let secp = Secp256k1::signing_only();
        let verifier = Verifier::new(&opts.set, &opts.private_key.public_key(&secp))
            .map_err(|e| cfg_err(e.to_string()))?;
        // FIRE's per-phase timeouts; the whole round is bounded by our deadline too.
        let dkg_phase = opts.dkg_timeout / 3;
        let sign_phase = opts.sign_timeout / 2;
        let config = Config::with_timeouts(
            opts.set.num_signers(),
            opts.set.num_keys(),
            opts.set.threshold,
            opts.set.dkg_threshold(),
            scalar(&opts.private_key),
            Some(dkg_phase),
            Some(dkg_phase),
            Some(dkg_phase),
            Some(sign_phase),
            Some(sign_phase),
            opts.set.wsts_key_ids(),
            opts.set
                .wsts_signer_points()
                .map_err(|e| cfg_err(e.to_string()))?,
        );
        let relay = RelayClient::new(&opts.relay_url, Duration::from_secs(10));
        let head = relay.head().map_err(|e| Error::Relay(e.to_string()))?;
        let mut c = RelayFrostCoordinator {
            fire: Fire::new(config.clone()),
            config,
            verifier,
            relay,
            cursor: head.saturating_sub(1),
            rounds: CoordinatorRounds::default(),
            key: None,
            dkg_id: 0,
            sign_id: 0,
            rejected: 0,
            opts,
        };
        if let Some(path) = c.opts.state_path.clone().filter(|p| p.exists()) {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| cfg_err(format!("{}: {e}", path.display())))?;
            let p: Persisted = serde_json::from_str(&text)
                .map_err(|e| cfg_err(format!("{}: {e}", path.display())))?;
            if p.version != STATE_VERSION {
                return Err(cfg_err(format!(
                    "{}: unknown format {}",
                    path.display(),
                    p.version
                )));
            }
            c.dkg_id = p.dkg_id;
            c.sign_id = p.sign_id;
            c.key = Some((p.aggregate_key, p.party_polynomials));
            c.fire = c.fresh()?;
            info!("coordinator: loaded aggregate key from {}", path.display());
        }
        Ok(c)
    }

    /// Returns how many inbound packets were dropped (bad signature or replay).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// A FIRE coordinator in the idle state at our current round counters.
    fn fresh(&self) -> Result<Fire, Error> {
        let mut s = SavedState {
            config: self.config.clone(),
            ..SavedState::default()
        };
        s.current_dkg_id = self.dkg_id;
        s.current_sign_id = self.sign_id;
        s.current_sign_iter_id = 1;
        let mut fire = Fire::load(&s);
        if let Some((key, polys)) = &self.key {
            fire.set_key_and_party_polynomials(*key, polys.clone())
                .map_err(|e| {
                    Error::SigningFailed(format!(
                        "stored key does not match its polynomials: {e:?}"
                    ))
                })?;
        }
        Ok(fire)
    }

    fn persist(&self) -> Result<(), Error> {
        let (Some(path), Some((key, polys))) = (&self.opts.state_path, &self.key) else {
            return Ok(());
        };
        let p = Persisted {
            version: STATE_VERSION,
            aggregate_key: *key,
            party_polynomials: polys.clone(),
            dkg_id: self.dkg_id,
            sign_id: self.sign_id,
        };
        let bytes = serde_json::to_vec(&p).map_err(|e| Error::SigningFailed(e.to_string()))?;
        write_private_atomically(path, &bytes)
            .map_err(|e| Error::SigningFailed(format!("saving {}: {e}", path.display())))
    }

    fn post(&mut self, p: &Packet) -> Result<(), Error> {
        self.rounds.sent(&p.msg);
        self.relay
            .post_tagged(&encode_packet(p), frost_net::relay_tag(&p.msg))
            .map(|_| ())
            .map_err(|e| Error::Relay(e.to_string()))
    }

    /// Posts `start` and drives the round until it yields a result or the
    /// deadline passes.
    fn drive(
        &mut self,
        start: Packet,
        round: &'static str,
        limit: Duration,
    ) -> Result<OperationResult, Error> {
        let began = Instant::now();
        let deadline = began + limit;
        self.post(&start)?;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    round,
                    waited: limit,
                    missing: vec![],
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let batch = self
                .relay
                .poll_tags(self.cursor, wait, frost_net::COORDINATOR_TAGS)
                .map_err(|e| Error::Relay(e.to_string()))?;
            self.cursor = batch.last_seq(self.cursor);
            let mut inbound = Vec::with_capacity(batch.messages.len());
            for (seq, bytes) in batch.messages {
                let Ok(p) = decode_packet(&bytes) else {
                    debug!("coordinator: message {seq} is no packet");
                    continue;
                };
                match self.rounds.admit(&p.msg) {
                    Admit::Ignore => continue,
                    Admit::Replay => {
                        self.rejected += 1;
                        warn!("coordinator: dropped a stale or replayed response (message {seq})");
                        continue;
                    }
                    Admit::Accept => {}
                }
                if !self.verifier.verify(&p) {
                    self.rejected += 1;
                    warn!("coordinator: dropped a response with a bad signature (message {seq})");
                    continue;
                }
                inbound.push(p);
            }
            let (outbound, results) = self
                .fire
                .process_inbound_messages(&inbound)
                .map_err(|e| Error::SigningFailed(format!("{round}: {e:?}")))?;
            for p in &outbound {
                self.post(p)?;
            }
            if let Some(r) = results.into_iter().next() {
                debug!("coordinator: {round} finished in {:?}", began.elapsed());
                return Ok(r);
            }
        }
    }

    fn after_failure(&mut self) {
        match self.fresh() {
            Ok(f) => self.fire = f,
            Err(e) => warn!("coordinator: could not reset after a failed round: {e}"),
        }
    }
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
        self.fire = self.fresh()?;
        let start = self
            .fire
            .start_dkg_round()
            .map_err(|e| Error::SigningFailed(format!("dkg: {e:?}")))?;
        if let wsts::net::Message::DkgBegin(b) = &start.msg {
            self.dkg_id = b.dkg_id;
        }
        info!("coordinator: DKG round {} started", self.dkg_id);
        let timeout = self.opts.dkg_timeout;
        let result = self.drive(start, "dkg", timeout);
        let outcome = match result {
            Ok(OperationResult::Dkg(point_key)) => {
                let polys: Vec<(u32, PolyCommitment)> =
                    self.fire.save().party_polynomials.into_iter().collect();
                self.key = Some((point_key, polys));
                self.sign_id = 0;
                self.persist()?;
                self.fire = self.fresh()?;
                let key =
                    public_key(&point_key).map_err(|e| Error::SigningFailed(e.to_string()))?;
                info!(
                    "coordinator: DKG round {} complete, aggregate key {key}",
                    self.dkg_id
                );
                return Ok(key);
            }
            Ok(OperationResult::DkgError(e)) => match &e {
                DkgError::DkgPublicTimeout(w)
                | DkgError::DkgPrivateTimeout(w)
                | DkgError::DkgEndTimeout(w) => Error::Timeout {
                    round: "dkg",
                    waited: timeout,
                    missing: to_one_based(w.iter().copied()),
                },
                DkgError::DkgEndFailure(f) => dkg_failure(f),
            },
            Ok(other) => Error::SigningFailed(format!("dkg ended with {other:?}")),
            Err(e) => e,
        };
        self.after_failure();
        Err(outcome)
    }

    fn sign(
        &mut self,
        _payload: &[u8],
        items: &[crate::SignItem],
    ) -> Result<Vec<schnorr::Signature>, Error> {
        let current = self.aggregate_public_key();
        items
            .iter()
            .map(|item| {
                if Some(item.key) != current {
                    return Err(Error::UnknownKey(item.key));
                }
                self.sign_digest(&item.message.digest())
            })
            .collect()
    }

    fn aggregate_public_key(&self) -> Option<PublicKey> {
        self.key.as_ref().and_then(|(p, _)| public_key(p).ok())
    }

    fn keys(&self) -> Vec<PublicKey> {
        self.aggregate_public_key().into_iter().collect()
    }
}

impl RelayFrostCoordinator {
    fn sign_digest(&mut self, sighash: &[u8; 32]) -> Result<schnorr::Signature, Error> {
        let Some((agg, _)) = &self.key else {
            return Err(Error::NoAggregateKey);
        };
        let agg = public_key(agg).map_err(|e| Error::SigningFailed(e.to_string()))?;
        let start = self
            .fire
            .start_signing_round(sighash, SignatureType::Taproot(None))
            .map_err(|e| Error::SigningFailed(format!("signing: {e:?}")))?;
        if let wsts::net::Message::NonceRequest(r) = &start.msg {
            self.sign_id = r.sign_id;
        }
        // The round's id is spent whether or not it succeeds.
        self.persist()?;
        let timeout = self.opts.sign_timeout;
        let outcome = match self.drive(start, "signing", timeout) {
            Ok(OperationResult::SignTaproot(proof)) => {
                let sig = schnorr::Signature::from_slice(&proof.to_bytes())
                    .map_err(|e| Error::SigningFailed(format!("aggregate signature: {e}")));
                // Check it before anyone relies on it.
                let secp = Secp256k1::verification_only();
                let (tweaked, _) = agg.x_only_public_key().0.tap_tweak(&secp, None);
                match sig {
                    Ok(sig)
                        if secp
                            .verify_schnorr(
                                &sig,
                                &SecpMessage::from_digest(*sighash),
                                &tweaked.to_x_only_public_key(),
                            )
                            .is_ok() =>
                    {
                        self.fire = self.fresh()?;
                        return Ok(sig);
                    }
                    Ok(_) => Error::SigningFailed("the aggregate signature does not verify".into()),
                    Err(e) => e,
                }
            }
            Ok(OperationResult::SignError(e)) => match e {
                SignError::NonceTimeout(answered, malicious) => {
                    let answered: std::collections::HashSet<u32> = answered.into_iter().collect();
                    let missing = self
                        .opts
                        .set
                        .signers
                        .iter()
                        .map(|s| s.wsts_id())
                        .filter(|id| !answered.contains(id))
                        .chain(malicious);
                    Error::Timeout {
                        round: "signing",
                        waited: timeout,
                        missing: to_one_based(missing),
                    }
                }
                SignError::InsufficientSigners(bad) => Error::Timeout {
                    round: "signing",
                    waited: timeout,
                    missing: to_one_based(bad),
                },
                other => Error::SigningFailed(format!("{other:?}")),
            },
            Ok(other) => Error::SigningFailed(format!("signing ended with {other:?}")),
            Err(e) => e,
        };
        self.after_failure();
        Err(outcome)
    }
}
