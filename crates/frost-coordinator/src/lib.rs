//! DKG and taproot signing with the signers, as the [`FrostCoordinator`] trait.
//!
//! The coordinator never holds a key share: it runs the rounds and aggregates
//! the signers' answers. Keys cross this crate's surface as
//! [`bitcoin::secp256k1`] types; [`point_to_public_key`] converts wsts'
//! curve points.
//!
//! With the `mock` feature the crate exports `MockFrostCoordinator`.

mod relay_coordinator;

pub use bitcoin;
pub use frost_net::{SignItem, SignerFile, SignerInfo, SignerSet, SignerSetError, ToSign};
pub use relay_coordinator::{RelayCoordinatorOptions, RelayFrostCoordinator};
pub use wsts;

use bitcoin::secp256k1::{schnorr, PublicKey};
use std::time::Duration;

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
    /// Signers refused what they were asked to sign, each with its reason
    /// (1-based signer ids), leaving too few to reach the threshold.
    #[error("signers refused: {}", refusals.iter().map(|(id, why)| format!("signer {id}: {why}")).collect::<Vec<_>>().join("; "))]
    Refused {
        /// Who refused, and why.
        refusals: Vec<(u32, String)>,
    },
    /// A signature was asked of a key this coordinator holds no DKG result for.
    #[error("no key {0} among the keys DKG produced")]
    UnknownKey(PublicKey),
    /// There is no aggregate key yet: run DKG first.
    #[error("no aggregate key: run dkg first")]
    NoAggregateKey,
    /// The relay could not be reached.
    #[error("relay unreachable: {0}")]
    Relay(String),
}

impl Error {
    /// Returns whether trying again later may succeed (signers offline, relay down).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::Relay(_))
    }
}

/// Runs FROST rounds with the signers.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait FrostCoordinator {
    /// Runs distributed key generation and returns the new aggregate key.
    fn run_dkg_round(&mut self) -> Result<PublicKey, Error>;

    /// Asks the signers for one signature per item, in order. `payload` is
    /// what signers validate the request against (for a payout, the unsigned
    /// transaction and what it spends); each item names the aggregate key
    /// that signs it. Signatures are BIP-0340 signatures valid for the key's
    /// BIP-0341 tweaked output key (a key-path spend with no script tree),
    /// each verified before it is returned.
    fn sign(
        &mut self,
        payload: &[u8],
        items: &[SignItem],
    ) -> Result<Vec<schnorr::Signature>, Error>;

    /// Returns the newest verified aggregate key, if DKG has run.
    fn aggregate_public_key(&self) -> Option<PublicKey>;

    /// Returns every aggregate key this coordinator can sign with, oldest
    /// first (old keys still sign for coins at their addresses).
    fn keys(&self) -> Vec<PublicKey>;
}
