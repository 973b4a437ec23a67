//! DKG and taproot signing with the signers, as the [`FrostCoordinator`] trait.
//!
//! The coordinator never holds a key share: it runs the rounds and aggregates
//! the signers' answers. Keys cross this crate's surface as
//! [`bitcoin::secp256k1`] types; [`frost_net::public_key`] converts wsts'
//! curve points.
//!
//! With the `mock` feature the crate exports `MockFrostCoordinator`.

mod relay_coordinator;

pub use bitcoin;
pub use frost_net::{SignItem, SignerFile, SignerInfo, SignerSet, SignerSetError, ToSign};
pub use relay_coordinator::{
    RelayCoordinatorOptions, RelayFrostCoordinator, DEFAULT_ROUNDS_IN_FLIGHT,
};
pub use wsts;

use bitcoin::secp256k1::{schnorr, PublicKey};
use serde::Serialize;
use std::time::Duration;

/// A signer's newest attestation of the peg wallet key its own stacks-node
/// shows the contract publishing: the envelope exactly as the signer sealed
/// it (what users' tools check with `frost_net::verify_attestations`), and
/// what it says, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignerAttestation {
    /// The signer's (1-based) id.
    pub signer: u32,
    /// The contract it names.
    pub contract: String,
    /// The key it attests.
    pub key: PublicKey,
    /// The signer's clock when it read the key, seconds since the Unix epoch.
    pub time: u64,
    /// The signed envelope, hex in JSON.
    #[serde(with = "hex::serde")]
    pub envelope: Vec<u8>,
}

/// What went wrong in a FROST round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too few signers answered within the configured time.
    #[error("{round} timed out after {waited:?}; no answer from signers {missing:?}")]
    Timeout {
        /// Which round ("dkg" or "signing").
        round: &'static str,
        /// How long it waited.
        waited: Duration,
        /// The (1-based) signers that did not answer, when known.
        missing: Vec<u32>,
    },
    /// DKG failed; the signers named sent bad shares or polynomials.
    #[error("dkg failed, bad signers {bad_signers:?}: {reason}")]
    DkgFailed {
        /// The signer ids at fault.
        bad_signers: Vec<u32>,
        /// What went wrong.
        reason: String,
    },
    /// Signing failed for a reason other than a timeout.
    #[error("signing failed: {0}")]
    SigningFailed(String),
    /// There is no aggregate key yet: run DKG first.
    #[error("no aggregate key: run dkg first")]
    NoAggregateKey,
    /// The relay could not be reached.
    #[error("relay unreachable: {0}")]
    Relay(String),
    /// Signers refused the request, so the threshold cannot be reached.
    #[error("signers refused: {}", fmt_refusals(refusals))]
    Refused {
        /// (1-based signer id, the rule it named), by signer id.
        refusals: Vec<(u32, String)>,
    },
}

fn fmt_refusals(r: &[(u32, String)]) -> String {
    r.iter()
        .map(|(id, rule)| format!("signer {id}: {rule}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Returns whether trying again later may succeed: signers offline, the
    /// relay down, a round disrupted, and refusals — a signer refuses what
    /// its own nodes do not show yet (a burn not final, a request not deep
    /// enough) or what lying nodes hide, so a refused payout waits (shown
    /// with every signer's rule) and is never given up on by itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Relay(_)
                | Error::Refused { .. }
                | Error::SigningFailed(_)
        )
    }
}

/// One signing request: what [`FrostCoordinator::sign`] takes, for
/// [`FrostCoordinator::sign_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignJob {
    /// What the signers validate the request against (for a payout, the
    /// unsigned transaction).
    pub payload: Vec<u8>,
    /// What to sign, in order.
    pub items: Vec<SignItem>,
}

/// Runs FROST rounds with the signers.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait FrostCoordinator {
    /// Runs distributed key generation and returns the new aggregate key.
    ///
    /// The key counts only once every signer reported it stored its share
    /// of it and a test signature by every signer verified; otherwise the
    /// DKG fails and the previous keys stay current.
    fn run_dkg_round(&mut self) -> Result<PublicKey, Error>;

    /// Signs every item, in order, with the item's aggregate key tweaked as
    /// BIP-0341 prescribes for a key-path spend with no script tree: each
    /// result is a BIP-0340 signature valid for that key's output. `payload`
    /// is what the signers validate the request against (for a payout, the
    /// unsigned transaction).
    fn sign(
        &mut self,
        payload: &[u8],
        items: &[SignItem],
    ) -> Result<Vec<schnorr::Signature>, Error>;

    /// Signs every job as [`FrostCoordinator::sign`] would, with rounds of
    /// several jobs (and of each job's items) in flight together; one
    /// result per job, in order. A job's failure (a timeout, refusals)
    /// leaves the others' results standing.
    fn sign_many(&mut self, jobs: &[SignJob]) -> Vec<Result<Vec<schnorr::Signature>, Error>> {
        jobs.iter()
            .map(|j| self.sign(&j.payload, &j.items))
            .collect()
    }

    /// Returns the newest verified aggregate key, if any DKG succeeded.
    fn aggregate_public_key(&self) -> Option<PublicKey>;

    /// Returns every key the coordinator can sign with, oldest first.
    fn keys(&self) -> Vec<PublicKey>;

    /// Returns each signer's newest attestation, by signer id: what the
    /// status server's `/attestations` serves. Reads what the relay holds
    /// first, without waiting (a relay error is logged and the attestations
    /// already kept are returned); between rounds nothing else reads them.
    fn attestations(&mut self) -> Vec<SignerAttestation>;
}
