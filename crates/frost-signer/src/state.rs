//! The signer's state file: its key history.
//!
//! Every key share the signer ever held, oldest first, never overwritten:
//! per entry the DKG round, the aggregate key, this party's private key
//! shares, every party's polynomial commitments and the parameters. Never a
//! nonce (nonces live in memory, one per signing round) and never the DKG
//! polynomial (it is only needed during the DKG).
//!
//! ```json
//! {"version":2,"signer_id":1,"keys":[{"dkg_id":1,"aggregate_key":"02…",
//!   "params":{"signer_id":1,"key_ids":[1],"num_signers":3,"num_keys":3,"threshold":2},
//!   "private_keys":[[1,"…"]],"commitments":[[0,{"id":…,"poly":[…]}]],
//!   "accepted":true,"set":{"set":{"threshold":2,"signers":[…]},"hash":"…"}}]}
//! ```
//!
//! Each key records the signer set it was made under ([`KeySet`]): after a
//! signer-set change (a signer added or removed, a message key rotated) an
//! old key still signs with its own holders, threshold and key ids.
//!
//! Everything read back is checked: a corrupt or foreign file is an error
//! at start, never a panic later.

use std::path::Path;

use bitcoin::secp256k1::PublicKey;
use frost_net::{point, public_key, KeySet, SignerSet};
use serde::{Deserialize, Serialize};
use wsts::common::{Nonce, PolyCommitment};
use wsts::curve::point::{Point, G};
use wsts::curve::scalar::Scalar;
use wsts::traits::{PartyState, Signer as _, SignerState};

/// The current format of the state file.
pub const STATE_VERSION: u32 = 2;

/// The parameters a key share was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyParams {
    /// This signer's 1-based id.
    pub signer_id: u32,
    /// Its 1-based key ids.
    pub key_ids: Vec<u32>,
    /// How many signers the DKG had.
    pub num_signers: u32,
    /// How many keys.
    pub num_keys: u32,
    /// How many keys a signature needs.
    pub threshold: u32,
}

/// One key share the signer holds.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The DKG round that made the key.
    pub dkg_id: u64,
    /// The aggregate key.
    pub aggregate_key: PublicKey,
    /// The parameters.
    pub params: KeyParams,
    /// This party's private key shares: (key id, scalar).
    pub private_keys: Vec<(u32, Scalar)>,
    /// Every party's polynomial commitments: (wsts party id, commitment).
    pub commitments: Vec<(u32, PolyCommitment)>,
    /// Whether the coordinator accepted the key (its gate passed: every
    /// share stored, the all-signer test signature verified). A pending key
    /// is kept, and signs, but does not stop the signer from joining the
    /// coordinator's next DKG: a DKG whose gate failed must not leave every
    /// signer refusing the retry. Files written before the field count as
    /// accepted.
    #[serde(default = "accepted_by_default")]
    pub accepted: bool,
    /// The signer set the key was made under: its rounds ask that set's
    /// members with its threshold and key ids. Files written before the
    /// field were made under the set they are read with (checked on load,
    /// then recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<KeySet>,
}

fn accepted_by_default() -> bool {
    true
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("dkg_id", &self.dkg_id)
            .field("aggregate_key", &self.aggregate_key)
            .field("params", &self.params)
            .field("private_keys", &"[redacted]")
            .finish()
    }
}

impl KeyEntry {
    /// Checks the entry is internally consistent and fits `set` and signer `id`.
    ///
    /// # Errors
    /// What does not fit, in words.
    pub fn validate(&self, set: &SignerSet, id: u32) -> Result<(), String> {
        let p = &self.params;
        if set.signer(id).is_none() {
            return Err(format!("no signer {id} in the signer set"));
        }
        if p.signer_id != id {
            return Err(format!("belongs to signer {}, not {id}", p.signer_id));
        }
        let made_under = match &self.set {
            Some(k) => {
                k.fits(set)?;
                &k.set
            }
            // Written before keys recorded their set: made under this one.
            None => set,
        };
        let mine = made_under
            .signer(id)
            .ok_or_else(|| format!("signer {id} was not in the set the key was made under"))?;
        if p.key_ids != mine.key_ids
            || p.num_signers != made_under.num_signers()
            || p.num_keys != made_under.num_keys()
            || p.threshold != made_under.threshold
        {
            return Err(format!(
                "parameters {p:?} do not fit the signer set the key was made under (signer {id} \
                 holds key ids {:?}; {} signers, {} keys, threshold {})",
                mine.key_ids,
                made_under.num_signers(),
                made_under.num_keys(),
                made_under.threshold
            ));
        }
        let mut held: Vec<u32> = self.private_keys.iter().map(|(k, _)| *k).collect();
        held.sort_unstable();
        let mut own = p.key_ids.clone();
        own.sort_unstable();
        if held != own {
            return Err(format!("private shares for key ids {held:?}, not {own:?}"));
        }
        if self.commitments.is_empty() {
            return Err("no parties' commitments".into());
        }
        let t = usize::try_from(p.threshold).unwrap_or(0);
        let mut parties: Vec<u32> = self.commitments.iter().map(|(i, _)| *i).collect();
        parties.sort_unstable();
        parties.dedup();
        if parties.len() != self.commitments.len() {
            return Err("a party's commitments listed twice".into());
        }
        if parties.iter().any(|i| *i >= p.num_signers) {
            return Err("commitments of a party outside the set".into());
        }
        if self.commitments.iter().any(|(_, c)| c.poly.len() != t) {
            return Err(format!("a polynomial commitment without {t} terms"));
        }
        let sum = self
            .commitments
            .iter()
            .fold(Point::default(), |s, (_, c)| s + c.poly[0]);
        let agg = point(&self.aggregate_key).map_err(|e| e.to_string())?;
        if sum != agg {
            return Err("the commitments do not add up to the aggregate key".into());
        }
        // Each private share must be the sum of the parties' polynomials at
        // its key id: a corrupted share would only show as bad signatures.
        for (key_id, x) in &self.private_keys {
            let mut expected = Point::default();
            for (_, c) in &self.commitments {
                expected += wsts::compute::poly(&wsts::compute::id(*key_id), &c.poly)
                    .map_err(|e| format!("commitment evaluation: {e:?}"))?;
            }
            if *x * G != expected {
                return Err(format!(
                    "the private share of key id {key_id} does not match the commitments"
                ));
            }
        }
        Ok(())
    }

    /// A wsts party holding this key share, with a fresh random nonce
    /// (never a zero one); call `gen_nonce` before using it.
    pub fn party(&self) -> Result<wsts::v2::Party, String> {
        let agg = point(&self.aggregate_key).map_err(|e| e.to_string())?;
        let wsts_id = self.params.signer_id.saturating_sub(1);
        let mut rng = wsts::util::create_rng();
        let state = SignerState {
            id: wsts_id,
            key_ids: self.params.key_ids.clone(),
            num_keys: self.params.num_keys,
            num_parties: self.params.num_signers,
            threshold: self.params.threshold,
            group_key: agg,
            // Exactly one party: `v2::Party::load` asserts it.
            parties: vec![(
                wsts_id,
                PartyState {
                    polynomial: None,
                    private_keys: self.private_keys.clone(),
                    nonce: Nonce::random(&mut rng),
                },
            )],
        };
        Ok(wsts::v2::Party::load(&state))
    }

    /// The entry for a finished DKG of `party` with `commitments`, made
    /// under `set`.
    ///
    /// # Errors
    /// When the party holds no valid group key.
    pub fn from_dkg(
        dkg_id: u64,
        signer_id: u32,
        party: &wsts::v2::Party,
        commitments: Vec<(u32, PolyCommitment)>,
        set: &SignerSet,
    ) -> Result<KeyEntry, String> {
        let s = party.save();
        let aggregate_key = public_key(&s.group_key).map_err(|e| e.to_string())?;
        let private_keys = s
            .parties
            .first()
            .map(|(_, p)| p.private_keys.clone())
            .unwrap_or_default();
        let mut commitments = commitments;
        commitments.sort_by_key(|(i, _)| *i);
        Ok(KeyEntry {
            dkg_id,
            aggregate_key,
            params: KeyParams {
                signer_id,
                key_ids: s.key_ids,
                num_signers: s.num_parties,
                num_keys: s.num_keys,
                threshold: s.threshold,
            },
            private_keys,
            commitments,
            accepted: false,
            set: Some(KeySet::of(set)),
        })
    }
}

/// The state file's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHistory {
    /// Format version.
    pub version: u32,
    /// The 1-based signer id it belongs to.
    pub signer_id: u32,
    /// Every key share held, oldest first.
    pub keys: Vec<KeyEntry>,
    /// The highest DKG round the signer joined, written before it sends
    /// anything for the round: a round is joined once, even one that failed
    /// and left no key, across restarts too (a relay replaying an old
    /// `DkgBegin` must not start it again). Absent in older files (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub joined_dkg_id: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl KeyHistory {
    /// An empty history for signer `id`.
    pub fn empty(id: u32) -> Self {
        KeyHistory {
            version: STATE_VERSION,
            signer_id: id,
            keys: vec![],
            joined_dkg_id: 0,
        }
    }

    /// Reads and checks the state file, or an empty history if none exists.
    ///
    /// # Errors
    /// An unreadable, undecodable or inconsistent file.
    pub fn load(path: &Path, set: &SignerSet, id: u32) -> Result<KeyHistory, String> {
        if !path.exists() {
            return Ok(KeyHistory::empty(id));
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let h: KeyHistory = serde_json::from_slice(&bytes)
            .map_err(|e| format!("not a key history of format {STATE_VERSION}: {e}"))?;
        if h.version != STATE_VERSION {
            return Err(format!("unknown format {}", h.version));
        }
        if h.signer_id != id {
            return Err(format!("belongs to signer {}, not {id}", h.signer_id));
        }
        let mut h = h;
        let mut last = 0;
        for k in &mut h.keys {
            k.validate(set, id)
                .map_err(|e| format!("key of DKG round {}: {e}", k.dkg_id))?;
            if k.set.is_none() {
                k.set = Some(KeySet::of(set));
            }
            if k.dkg_id <= last {
                return Err(format!(
                    "DKG rounds out of order ({} after {last})",
                    k.dkg_id
                ));
            }
            last = k.dkg_id;
        }
        Ok(h)
    }

    /// Writes the history atomically (owner-only, synced).
    ///
    /// # Errors
    /// Any encoding or I/O failure.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        frost_net::write_private_atomically(path, &bytes).map_err(|e| e.to_string())
    }

    /// The highest DKG round in the history (0 when empty).
    pub fn last_dkg_id(&self) -> u64 {
        self.keys.last().map_or(0, |k| k.dkg_id)
    }

    /// The share of `key`, if held.
    pub fn find(&self, key: &PublicKey) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.aggregate_key == *key)
    }

    /// The signer set `key` was made under, if held.
    pub fn set_of(&self, key: &PublicKey) -> Option<&SignerSet> {
        self.find(key).and_then(|k| k.set.as_ref()).map(|k| &k.set)
    }

    /// The aggregate keys held, oldest first.
    pub fn aggregate_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(|k| k.aggregate_key).collect()
    }
}
