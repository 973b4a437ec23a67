//! The signer set: who the signers are, which key ids each holds, and how many
//! keys a signature needs. The coordinator and every signer read the same file.

use std::collections::BTreeSet;

use bitcoin::secp256k1::PublicKey;
use serde::{Deserialize, Serialize};

/// One signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerInfo {
    /// The signer id, 0-based (wsts numbering).
    pub id: u32,
    /// The key that signs this signer's relay messages.
    pub public_key: PublicKey,
    /// The FROST key ids this signer holds, 1-based (wsts numbering).
    pub key_ids: Vec<u32>,
}

/// The signer set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerSet {
    /// How many keys a signature needs.
    pub threshold: u32,
    /// How many keys DKG needs; defaults to all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkg_threshold: Option<u32>,
    /// The signers.
    pub signers: Vec<SignerInfo>,
}

/// Why a signer set is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerSetError {
    /// No signers.
    #[error("the signer set is empty")]
    Empty,
    /// Signer ids must be 0, 1, … with no gaps.
    #[error("signer ids must be 0..{expected} in order; found {found:?}")]
    BadSignerIds {
        /// How many signers there are.
        expected: usize,
        /// The ids found.
        found: Vec<u32>,
    },
    /// Key ids must be 1, 2, … across all signers, each held once.
    #[error("key ids must be 1..={expected} each held by one signer; found {found:?}")]
    BadKeyIds {
        /// How many keys there are.
        expected: usize,
        /// The ids found, sorted.
        found: Vec<u32>,
    },
    /// A signer with no keys.
    #[error("signer {0} holds no key ids")]
    NoKeys(u32),
    /// The same message key for two signers.
    #[error("signers {0} and {1} share a public key")]
    DuplicateKey(u32, u32),
    /// A threshold of 0 or above the number of keys.
    #[error("{what} {value} must be between 1 and the number of keys, {num_keys}")]
    BadThreshold {
        /// Which threshold.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The number of keys.
        num_keys: u32,
    },
}

impl SignerSet {
    /// Returns the number of keys across all signers.
    pub fn num_keys(&self) -> u32 {
        self.signers
            .iter()
            .map(|s| u32::try_from(s.key_ids.len()).unwrap_or(u32::MAX))
            .fold(0u32, u32::saturating_add)
    }

    /// Returns the number of signers.
    pub fn num_signers(&self) -> u32 {
        u32::try_from(self.signers.len()).unwrap_or(u32::MAX)
    }

    /// Returns the DKG threshold (all keys unless configured).
    pub fn dkg_threshold(&self) -> u32 {
        self.dkg_threshold.unwrap_or_else(|| self.num_keys())
    }

    /// Checks the set is consistent: ids in order, key ids covering 1..=n once
    /// each, thresholds within range, message keys distinct.
    pub fn validate(&self) -> Result<(), SignerSetError> {
        if self.signers.is_empty() {
            return Err(SignerSetError::Empty);
        }
        let ids: Vec<u32> = self.signers.iter().map(|s| s.id).collect();
        if ids
            .iter()
            .enumerate()
            .any(|(i, id)| usize::try_from(*id).ok() != Some(i))
        {
            return Err(SignerSetError::BadSignerIds {
                expected: ids.len(),
                found: ids,
            });
        }
        let mut keys: Vec<u32> = Vec::new();
        for s in &self.signers {
            if s.key_ids.is_empty() {
                return Err(SignerSetError::NoKeys(s.id));
            }
            keys.extend(&s.key_ids);
        }
        keys.sort_unstable();
        let distinct: BTreeSet<u32> = keys.iter().copied().collect();
        let n = keys.len();
        let contiguous = distinct.len() == n
            && keys.first() == Some(&1)
            && usize::try_from(*keys.last().unwrap_or(&0)).ok() == Some(n);
        if !contiguous {
            return Err(SignerSetError::BadKeyIds {
                expected: n,
                found: keys,
            });
        }
        for (i, a) in self.signers.iter().enumerate() {
            if let Some(b) = self.signers[i + 1..]
                .iter()
                .find(|b| b.public_key == a.public_key)
            {
                return Err(SignerSetError::DuplicateKey(a.id, b.id));
            }
        }
        let num_keys = self.num_keys();
        for (what, value) in [
            ("threshold", self.threshold),
            ("dkg_threshold", self.dkg_threshold()),
        ] {
            if value == 0 || value > num_keys {
                return Err(SignerSetError::BadThreshold {
                    what,
                    value,
                    num_keys,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn key(i: u8) -> PublicKey {
        SecretKey::from_slice(&[i + 1; 32])
            .unwrap()
            .public_key(&Secp256k1::new())
    }

    fn set() -> SignerSet {
        SignerSet {
            threshold: 3,
            dkg_threshold: None,
            signers: (0..3)
                .map(|i| SignerInfo {
                    id: u32::from(i),
                    public_key: key(i),
                    key_ids: vec![u32::from(i) * 2 + 1, u32::from(i) * 2 + 2],
                })
                .collect(),
        }
    }

    #[test]
    fn a_consistent_set_validates() {
        let s = set();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.num_keys(), 6);
        assert_eq!(s.dkg_threshold(), 6);
    }

    #[test]
    fn inconsistent_sets_are_named() {
        let mut s = set();
        s.signers[1].id = 5;
        assert!(matches!(
            s.validate(),
            Err(SignerSetError::BadSignerIds { .. })
        ));

        let mut s = set();
        s.signers[2].key_ids = vec![4, 7];
        assert!(matches!(
            s.validate(),
            Err(SignerSetError::BadKeyIds { .. })
        ));

        let mut s = set();
        s.signers[2].public_key = key(0);
        assert_eq!(s.validate(), Err(SignerSetError::DuplicateKey(0, 2)));

        let mut s = set();
        s.threshold = 7;
        assert!(matches!(
            s.validate(),
            Err(SignerSetError::BadThreshold {
                what: "threshold",
                ..
            })
        ));

        let mut s = set();
        s.signers[0].key_ids.clear();
        assert_eq!(s.validate(), Err(SignerSetError::NoKeys(0)));
    }
}
