//! The signer set: who the signers are, which key ids each holds, and how many
//! keys a signature needs. The coordinator and every signer read the same file.
//!
//! Numbering: signer ids and key ids are **1-based** in configuration, on the
//! command line and in logs (`stacks-signer --id 1` is the first signer).
//! wsts numbers signers from 0; [`SignerInfo::wsts_id`] converts, and nothing
//! outside this crate sees the 0-based form.

use std::collections::BTreeSet;
use std::path::Path;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

/// One signer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerInfo {
    /// The signer id, 1-based.
    pub id: u32,
    /// The key that signs this signer's relay messages.
    pub public_key: PublicKey,
    /// The FROST key ids this signer holds, 1-based.
    pub key_ids: Vec<u32>,
    /// The signer's message key, hex — in a shared demo file only. A real
    /// signer keeps its key to itself (`--private-key-file` or the
    /// environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl std::fmt::Debug for SignerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerInfo")
            .field("id", &self.id)
            .field("public_key", &self.public_key)
            .field("key_ids", &self.key_ids)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl SignerInfo {
    /// Returns the wsts (0-based) signer id.
    pub fn wsts_id(&self) -> u32 {
        self.id.saturating_sub(1)
    }
}

/// The signer set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Signer ids must be 1, 2, … with no gaps.
    #[error("signer ids must be 1..={expected} in order; found {found:?}")]
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
    /// The DKG threshold is below the signing threshold.
    #[error("dkg_threshold {dkg} is below threshold {threshold}")]
    DkgBelowThreshold {
        /// DKG threshold.
        dkg: u32,
        /// Signing threshold.
        threshold: u32,
    },
    /// A demo private key that is not the signer's public key.
    #[error("signer {0}: private_key does not match public_key")]
    KeyMismatch(u32),
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

    /// Returns a signer by (1-based) id.
    pub fn signer(&self, id: u32) -> Option<&SignerInfo> {
        self.signers.iter().find(|s| s.id == id)
    }

    /// Checks the set is consistent: ids 1..=n in order, key ids covering
    /// 1..=k once each, thresholds within range, message keys distinct.
    pub fn validate(&self) -> Result<(), SignerSetError> {
        if self.signers.is_empty() {
            return Err(SignerSetError::Empty);
        }
        let ids: Vec<u32> = self.signers.iter().map(|s| s.id).collect();
        if ids
            .iter()
            .enumerate()
            .any(|(i, id)| usize::try_from(*id).ok() != Some(i + 1))
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
            if let Some(k) = &a.private_key {
                let secp = bitcoin::secp256k1::Secp256k1::signing_only();
                let matches = hex::decode(k)
                    .ok()
                    .and_then(|b| SecretKey::from_slice(&b).ok())
                    .is_some_and(|sk| sk.public_key(&secp) == a.public_key);
                if !matches {
                    return Err(SignerSetError::KeyMismatch(a.id));
                }
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
        if self.dkg_threshold() < self.threshold {
            return Err(SignerSetError::DkgBelowThreshold {
                dkg: self.dkg_threshold(),
                threshold: self.threshold,
            });
        }
        Ok(())
    }
}

impl SignerSet {
    /// A digest of the set: thresholds, and each signer's id, message key
    /// and key ids, every field length-prefixed. Names the set a key was
    /// made under ([`KeySet`]).
    pub fn hash(&self) -> [u8; 32] {
        use bitcoin::hashes::{sha256, Hash, HashEngine};
        let mut e = sha256::Hash::engine();
        let mut put = |b: &[u8]| {
            e.input(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
            e.input(b);
        };
        put(b"sbtc-coordinator/signer-set/v1");
        put(&self.threshold.to_be_bytes());
        put(&self.dkg_threshold().to_be_bytes());
        put(&self.num_signers().to_be_bytes());
        for s in &self.signers {
            put(&s.id.to_be_bytes());
            put(&s.public_key.serialize());
            let ids: Vec<u8> = s.key_ids.iter().flat_map(|k| k.to_be_bytes()).collect();
            put(&ids);
        }
        sha256::Hash::from_engine(e).to_byte_array()
    }
}

/// The signer set an aggregate key was made under, kept with the key in the
/// signers' and the coordinator's key histories: a round for that key asks
/// that set's members, with that set's threshold and key ids, while
/// envelopes are verified against the current set's message keys.
///
/// Signer ids and key ids are a signer's for good: a later set may add
/// signers (new ids, new key ids), drop the highest-numbered ones, change a
/// threshold or a signer's message key, but a signer present in both sets
/// must hold the same key ids in both ([`KeySet::fits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// The set as it was (no demo private keys).
    pub set: SignerSet,
    /// [`SignerSet::hash`] of it, hex: checked when read back.
    pub hash: String,
}

impl KeySet {
    /// The record of `set`, demo private keys left out.
    pub fn of(set: &SignerSet) -> KeySet {
        let mut set = set.clone();
        for s in &mut set.signers {
            s.private_key = None;
        }
        KeySet {
            hash: hex::encode(set.hash()),
            set,
        }
    }

    /// The key ids signer `id` (1-based) held under this set.
    pub fn key_ids_of(&self, id: u32) -> Option<&[u32]> {
        self.set.signer(id).map(|s| s.key_ids.as_slice())
    }

    /// Checks the record is a valid set whose hash matches, and that it
    /// fits the `current` set: every signer in both holds the same key ids.
    ///
    /// # Errors
    /// What does not fit, in words.
    pub fn fits(&self, current: &SignerSet) -> Result<(), String> {
        self.set
            .validate()
            .map_err(|e| format!("the recorded signer set: {e}"))?;
        if hex::encode(self.set.hash()) != self.hash {
            return Err("the recorded signer set does not match its hash".into());
        }
        for m in &self.set.signers {
            let Some(now) = current.signer(m.id) else {
                continue;
            };
            let (mut a, mut b) = (m.key_ids.clone(), now.key_ids.clone());
            a.sort_unstable();
            b.sort_unstable();
            if a != b {
                return Err(format!(
                    "signer {} held key ids {a:?} under set {}, the signer set now gives it {b:?}: \
                     a signer's key ids never change while a key made with them is kept",
                    m.id,
                    self.hash.get(..16).unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

impl KeySet {
    /// Checks that the key can still sign under `current`: envelopes are
    /// verified against the current set only, so the key's holders that
    /// are still in it (same id, same key ids) must hold at least the key's
    /// threshold of key ids. A set change that removes too many holders
    /// leaves the key's coins unspendable (no sweep can be signed) until
    /// the old file is restored.
    ///
    /// # Errors
    /// How many key ids the remaining holders hold, against the threshold.
    pub fn can_sign_under(&self, current: &SignerSet) -> Result<(), String> {
        let held: u32 = self
            .set
            .signers
            .iter()
            .filter(|m| {
                current.signer(m.id).is_some_and(|now| {
                    let (mut a, mut b) = (m.key_ids.clone(), now.key_ids.clone());
                    a.sort_unstable();
                    b.sort_unstable();
                    a == b
                })
            })
            .map(|m| u32::try_from(m.key_ids.len()).unwrap_or(u32::MAX))
            .fold(0, u32::saturating_add);
        if held < self.set.threshold {
            return Err(format!(
                "its holders still in the signer set hold {held} of its {} key ids, below its \
                 threshold {}: it can no longer sign (sweep an old key's coins before removing \
                 its holders)",
                self.set.num_keys(),
                self.set.threshold
            ));
        }
        Ok(())
    }
}

/// The shared signer file (`conf/signer.toml`): the signer set plus what the
/// signers need to find the relay and the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerFile {
    /// The relay's URL.
    pub relay_url: String,
    /// The coordinator's relay message key.
    pub coordinator_public_key: PublicKey,
    /// Where signers keep their DKG state (relative to the file's folder).
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The network of the peg (`mainnet`, `testnet`, …): part of the domain
    /// every relay packet is signed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The sBTC contract (`ADDRESS.NAME`): part of the same domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// The OP_RETURN magic of peg operations (the stacks-node's
    /// `burnchain.magic_bytes`, two ASCII characters); see
    /// [`SignerFile::magic`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magic_bytes: Option<String>,
    /// The peg's policy (`[policy]`): fees, outflow limits, the allowlist.
    /// The coordinator and every signer read it from this one file, so they
    /// cannot drift; see [`SignerFile::policy`].
    #[serde(default)]
    pub policy: peg_rules::PolicyFile,
    /// The signer set.
    #[serde(flatten)]
    pub set: SignerSet,
}

impl SignerFile {
    /// Reads and checks a signer file.
    ///
    /// # Errors
    /// A message naming the file and the problem.
    pub fn load(path: &Path) -> Result<SignerFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: SignerFile =
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        file.set
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    /// Checks the `[policy]` table and loads its allowlist, relative to the
    /// folder of `path` (this file's path); Bitcoin entries must be on
    /// `network`.
    ///
    /// # Errors
    /// A message naming the file and every bad field (`policy.fee_rate_cap`, …).
    pub fn policy(
        &self,
        path: &Path,
        network: bitcoin::Network,
    ) -> Result<peg_rules::Policy, String> {
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        peg_rules::Policy::from_file(&self.policy, base, network)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The OP_RETURN magic bytes, when the file sets them.
    ///
    /// # Errors
    /// When `magic_bytes` is not two printable ASCII characters.
    pub fn magic(&self) -> Result<Option<[u8; 2]>, String> {
        match self.magic_bytes.as_deref() {
            None => Ok(None),
            Some(text) => match text.as_bytes() {
                [a, b] if a.is_ascii_graphic() && b.is_ascii_graphic() => Ok(Some([*a, *b])),
                _ => Err(format!(
                    "magic_bytes: {text:?} is not two printable ASCII characters"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::Secp256k1;

    fn key(i: u8) -> PublicKey {
        SecretKey::from_slice(&[i + 1; 32])
            .unwrap()
            .public_key(&Secp256k1::new())
    }

    fn set() -> SignerSet {
        SignerSet {
            threshold: 3,
            dkg_threshold: None,
            signers: (1..=3)
                .map(|i| SignerInfo {
                    id: u32::from(i),
                    public_key: key(i),
                    key_ids: vec![u32::from(i) * 2 - 1, u32::from(i) * 2],
                    private_key: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_consistent_set_validates() {
        let s = set();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            (s.num_keys(), s.num_signers(), s.dkg_threshold()),
            (6, 3, 6)
        );
        assert_eq!(s.signer(2).unwrap().wsts_id(), 1);
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
        s.signers[0].id = 0;
        assert!(
            matches!(s.validate(), Err(SignerSetError::BadSignerIds { .. })),
            "ids are 1-based"
        );
        let mut s = set();
        s.signers[2].key_ids = vec![4, 7];
        assert!(matches!(
            s.validate(),
            Err(SignerSetError::BadKeyIds { .. })
        ));
        let mut s = set();
        s.signers[2].public_key = key(1);
        assert_eq!(s.validate(), Err(SignerSetError::DuplicateKey(1, 3)));
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
        s.dkg_threshold = Some(2);
        assert!(matches!(
            s.validate(),
            Err(SignerSetError::DkgBelowThreshold { .. })
        ));
        let mut s = set();
        s.signers[0].key_ids.clear();
        assert_eq!(s.validate(), Err(SignerSetError::NoKeys(1)));
        let mut s = set();
        s.signers[0].private_key = Some(hex::encode([9u8; 32]));
        assert_eq!(s.validate(), Err(SignerSetError::KeyMismatch(1)));
        s.signers[0].private_key = Some(hex::encode([2u8; 32]));
        assert_eq!(s.validate(), Ok(()));
        assert!(
            !format!("{s:?}").contains(&hex::encode([2u8; 32])),
            "private keys stay out of Debug"
        );
    }

    const FILE_HEAD: &str = r#"relay_url = "http://127.0.0.1:3000"
coordinator_public_key = "02ba23e13cc157c2522bde34ed26389d5df40fa279138c521e5f59a5c1a7bbc676"
threshold = 1
"#;

    const SIGNER: &str = r#"
[[signers]]
id = 1
public_key = "031401402f8a24b4d4267f2df5d5ba2e1168800a9229017e99839dfe9771c0cd39"
key_ids = [1]
"#;

    fn write(dir: &Path, extra: &str) -> std::path::PathBuf {
        let path = dir.join("signer.toml");
        std::fs::write(&path, format!("{FILE_HEAD}{extra}{SIGNER}")).unwrap();
        std::fs::write(
            dir.join("allowlist.toml"),
            r#"bitcoin = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]"#,
        )
        .unwrap();
        path
    }

    #[test]
    fn the_policy_and_magic_come_from_the_signer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"magic_bytes = "T2"
[policy]
allowlist_file = "allowlist.toml"
fee_rate_cap = 80
subsidy_sats = 500
"#,
        );
        let f = SignerFile::load(&path).unwrap();
        assert_eq!(f.magic(), Ok(Some(*b"T2")));
        let p = f.policy(&path, bitcoin::Network::Regtest).unwrap();
        assert_eq!(p.fee_cap, bitcoin::FeeRate::from_sat_per_vb(80).unwrap());
        assert_eq!(p.subsidy, bitcoin::Amount::from_sat(500));
        assert_eq!(p.allowlist.len(), (0, 1));
        // Another working directory: the allowlist is still found next to the file.
        let moved = tempfile::tempdir().unwrap();
        let path2 = moved.path().join("signer.toml");
        std::fs::copy(&path, &path2).unwrap();
        let e = SignerFile::load(&path2)
            .unwrap()
            .policy(&path2, bitcoin::Network::Regtest)
            .unwrap_err();
        assert!(e.contains("policy.allowlist_file"), "{e}");
    }

    #[test]
    fn without_a_policy_table_the_defaults_apply_and_the_allowlist_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "");
        let f = SignerFile::load(&path).unwrap();
        assert_eq!(f.policy, peg_rules::PolicyFile::default());
        assert_eq!(f.magic(), Ok(None));
        let e = f.policy(&path, bitcoin::Network::Regtest).unwrap_err();
        assert!(
            e.contains("signer.toml") && e.contains("policy.allowlist_file"),
            "{e}"
        );
    }

    #[test]
    fn bad_policy_fields_and_magic_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[policy]\nallowlist_fil = \"allowlist.toml\"\n");
        let e = SignerFile::load(&path).unwrap_err();
        assert!(
            e.contains("unknown field") && e.contains("allowlist_fil"),
            "{e}"
        );

        let path = write(
            dir.path(),
            "[policy]\nallowlist_file = \"allowlist.toml\"\nfee_rate_floor = 9\nfee_rate_cap = 3\n",
        );
        let e = SignerFile::load(&path)
            .unwrap()
            .policy(&path, bitcoin::Network::Regtest)
            .unwrap_err();
        assert!(e.contains("policy.fee_rate_cap"), "{e}");

        for bad in ["X", "XYZ", "é", " a"] {
            let path = write(dir.path(), &format!("magic_bytes = \"{bad}\"\n"));
            let e = SignerFile::load(&path).unwrap().magic().unwrap_err();
            assert!(e.contains("magic_bytes"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_shipped_signer_file_still_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/signer.toml");
        let f = SignerFile::load(&path).unwrap();
        // It names the allowlist; every other policy key is the default.
        assert_eq!(
            f.policy,
            peg_rules::PolicyFile {
                allowlist_file: Some("allowlist.toml".into()),
                ..Default::default()
            }
        );
        // Its [policy] table, commented keys uncommented, is valid and is the default.
        let text = std::fs::read_to_string(&path).unwrap();
        let table: String = text
            .lines()
            .skip_while(|l| !l.starts_with("[policy]"))
            .skip(1)
            .take_while(|l| l.contains(" = "))
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let p: peg_rules::PolicyFile = toml::from_str(&table).unwrap();
        assert_eq!(p.allowlist_file.as_deref(), Some("allowlist.toml"));
        assert_eq!(
            (p.fee_rate_floor, p.fee_rate_cap, p.subsidy_sats),
            (1, 500, 0),
            "the defaults of conf/coordinator.toml's [fees]"
        );
        let base = path.parent().unwrap();
        peg_rules::Policy::from_file(&p, base, bitcoin::Network::Regtest).unwrap();
    }

    #[test]
    fn a_written_signer_file_reads_back_with_its_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "");
        let mut f = SignerFile::load(&path).unwrap();
        f.magic_bytes = Some("id".into());
        f.policy.allowlist_file = Some("allowlist.toml".into());
        f.policy.max_request_sats = Some(1_000);
        std::fs::write(&path, toml::to_string(&f).unwrap()).unwrap();
        let back = SignerFile::load(&path).unwrap();
        assert_eq!(back.policy, f.policy);
        assert_eq!(back.magic(), Ok(Some(*b"id")));
        assert_eq!(back.set, f.set);
        let p = back.policy(&path, bitcoin::Network::Regtest).unwrap();
        assert_eq!(p.max_request, Some(bitcoin::Amount::from_sat(1_000)));
    }

    fn small_set(n: u32, threshold: u32) -> SignerSet {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        SignerSet {
            threshold,
            dkg_threshold: None,
            signers: (1..=n)
                .map(|id| SignerInfo {
                    id,
                    public_key: SecretKey::from_slice(&[u8::try_from(id).unwrap(); 32])
                        .unwrap()
                        .public_key(&secp),
                    key_ids: vec![id],
                    private_key: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_key_set_fits_added_removed_and_rekeyed_signers_but_not_moved_key_ids() {
        let three = small_set(3, 2);
        let k = KeySet::of(&three);
        assert_eq!(k.hash, hex::encode(three.hash()));
        assert_eq!(k.key_ids_of(2), Some(&[2u32][..]));
        // Added, removed, a threshold or a message key changed: all fit.
        k.fits(&small_set(4, 3)).unwrap();
        k.fits(&small_set(2, 2)).unwrap();
        let mut rekeyed = three.clone();
        rekeyed.signers[0].public_key = small_set(4, 2).signers[3].public_key;
        k.fits(&rekeyed).unwrap();
        assert_ne!(rekeyed.hash(), three.hash());
        // A kept signer's key ids moved: refused, naming it.
        let mut moved = three.clone();
        moved.signers[0].key_ids = vec![2];
        moved.signers[1].key_ids = vec![1];
        let e = k.fits(&moved).unwrap_err();
        assert!(e.contains("signer 1") && e.contains("never change"), "{e}");
        // Removing a holder keeps the key signable only while the rest
        // reach its threshold.
        k.can_sign_under(&small_set(2, 2)).unwrap();
        k.can_sign_under(&small_set(4, 3)).unwrap();
        let e = KeySet::of(&small_set(3, 3))
            .can_sign_under(&small_set(2, 2))
            .unwrap_err();
        assert!(e.contains("2 of its 3") && e.contains("threshold 3"), "{e}");
        assert!(k.can_sign_under(&small_set(1, 1)).is_err());
        // A record whose set was edited no longer matches its hash.
        let mut edited = k.clone();
        edited.set.threshold = 1;
        assert!(edited.fits(&three).unwrap_err().contains("hash"));
    }
}
