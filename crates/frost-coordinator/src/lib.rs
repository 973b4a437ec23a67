//! DKG and taproot signing with the signers, as the [`FrostCoordinator`] trait.
//!
//! The coordinator never holds a key share: it runs the rounds and aggregates
//! the signers' answers. Keys cross this crate's surface as
//! [`bitcoin::secp256k1`] types; [`point_to_public_key`] converts wsts'
//! curve points.
//!
//! With the `mock` feature the crate exports `MockFrostCoordinator`.

mod signer_set;

pub use bitcoin;
pub use signer_set::{SignerInfo, SignerSet, SignerSetError};
pub use wsts;

use bitcoin::secp256k1::{schnorr, PublicKey};
use std::time::Duration;

/// What went wrong in a FROST round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too few signers answered within the configured time.
    #[error("{round} timed out after {waited:?}: {answered} of {needed} signers answered")]
    Timeout {
        /// Which round ("dkg" or "signing").
        round: &'static str,
        /// How long it waited.
        waited: Duration,
        /// How many answered.
        answered: usize,
        /// How many were needed.
        needed: usize,
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

    /// Signs a 32-byte taproot sighash with the aggregate key, tweaked as
    /// BIP-0341 prescribes for a key-path spend with no script tree. The
    /// result is a BIP-0340 signature valid for the peg wallet's output key.
    fn sign_message(&mut self, sighash: &[u8; 32]) -> Result<schnorr::Signature, Error>;

    /// Returns the current aggregate key, if DKG has run.
    fn aggregate_public_key(&self) -> Option<PublicKey>;
}

/// Converts a wsts curve point into a secp256k1 public key.
///
/// # Errors
/// When the point is the identity, which has no public key.
pub fn point_to_public_key(point: &wsts::curve::point::Point) -> Result<PublicKey, Error> {
    PublicKey::from_slice(point.compress().as_bytes())
        .map_err(|e| Error::SigningFailed(format!("aggregate point is not a public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_point_converts_to_the_generator_key() {
        let g = wsts::curve::point::Point::from(wsts::curve::scalar::Scalar::from(1u32));
        let key = point_to_public_key(&g).unwrap();
        assert_eq!(
            key.to_string(),
            "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
        );
        assert!(point_to_public_key(&wsts::curve::point::Point::new()).is_err());
    }
}
