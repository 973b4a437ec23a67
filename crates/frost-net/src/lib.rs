//! What the FROST signers and the coordinator share.
//!
//! - [`SignerSet`] and [`SignerFile`]: the shared `conf/signer.toml`.
//! - Conversions between [`bitcoin::secp256k1`] keys and wsts' curve types.
//! - [`envelope`]: every relay packet is sealed in an authenticated envelope
//!   ([`Codec::seal`]) and opened ([`Codec::open`]) only after its signature
//!   verifies; [`checks`] then binds every id it carries to the signer set.
//! - [`messages`]: what travels inside (wsts' messages, keyed by aggregate
//!   key, and our own: sign requests, key-stored reports, refusals,
//!   attestations of the published peg wallet key).
//! - [`verify_attestations`]: for users' tools, how many signers (and key
//!   ids) attest that the contract publishes a key.
//! - [`write_private_atomically`]: how parties write their state files.
//! - [`taproot`]: the aggregate nonce and a FIRE aggregator without wsts'
//!   quadratic nonce hashing.
//!
//! Round rules (which request a party answers) live in the signer and
//! coordinator crates: see `docs/relay-protocol.md`, "Round rules".

pub mod checks;
pub mod envelope;
pub mod messages;
mod signer_set;
pub mod taproot;
mod wire;

pub use envelope::{
    verify_attestations, AttestationTally, Codec, Domain, Envelope, EnvelopeError, ForSigner,
    ListedNonces, Sender,
};
pub use messages::{Attestation, Kind, RoundId, ShareRequest, SignItem, SignRequest, ToSign};
pub use signer_set::{KeySet, SignerFile, SignerInfo, SignerSet, SignerSetError};
pub use wsts;

use std::path::Path;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use hashbrown::{HashMap, HashSet};
use wsts::curve::ecdsa;
use wsts::curve::point::Point;
use wsts::curve::scalar::Scalar;
use wsts::state_machine::PublicKeys;

/// Why a key or packet could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A key wsts cannot use.
    #[error("invalid key: {0}")]
    Key(String),
    /// A packet that could not be decoded.
    #[error("undecodable packet: {0}")]
    Packet(String),
}

/// Converts a secp256k1 secret key into a wsts scalar.
pub fn scalar(key: &SecretKey) -> Scalar {
    Scalar::from(key.secret_bytes())
}

/// Converts a secp256k1 public key into a wsts ECDSA public key.
///
/// # Errors
/// When wsts refuses the encoding (it never should for a valid key).
pub fn ecdsa_key(key: &PublicKey) -> Result<ecdsa::PublicKey, NetError> {
    ecdsa::PublicKey::try_from(&key.serialize()[..]).map_err(|e| NetError::Key(format!("{e:?}")))
}

/// Converts a secp256k1 public key into a wsts curve point.
///
/// # Errors
/// When wsts refuses the encoding.
pub fn point(key: &PublicKey) -> Result<Point, NetError> {
    let c = wsts::curve::point::Compressed::from(key.serialize());
    Point::try_from(&c).map_err(|e| NetError::Key(format!("{e:?}")))
}

/// Converts a wsts curve point into a secp256k1 public key.
///
/// # Errors
/// When the point is the identity, which has no public key.
pub fn public_key(point: &Point) -> Result<PublicKey, NetError> {
    PublicKey::from_slice(point.compress().as_bytes())
        .map_err(|e| NetError::Key(format!("aggregate point: {e}")))
}

impl SignerSet {
    /// Returns the wsts view of the keys: signer id → key, key id → key,
    /// signer id → key ids (all 0-based signer ids, 1-based key ids).
    ///
    /// # Errors
    /// When a key does not convert.
    pub fn wsts_public_keys(&self) -> Result<PublicKeys, NetError> {
        let mut keys = PublicKeys::default();
        for s in &self.signers {
            let k = ecdsa_key(&s.public_key)?;
            keys.signers.insert(s.wsts_id(), k);
            let ids: HashSet<u32> = s.key_ids.iter().copied().collect();
            for id in &ids {
                keys.key_ids.insert(*id, k);
            }
            keys.signer_key_ids.insert(s.wsts_id(), ids);
        }
        Ok(keys)
    }

    /// Returns signer id → key ids, 0-based signer ids.
    pub fn wsts_key_ids(&self) -> HashMap<u32, HashSet<u32>> {
        self.signers
            .iter()
            .map(|s| (s.wsts_id(), s.key_ids.iter().copied().collect()))
            .collect()
    }

    /// Returns signer id → message key as a point, 0-based signer ids.
    ///
    /// # Errors
    /// When a key does not convert.
    pub fn wsts_signer_points(&self) -> Result<HashMap<u32, Point>, NetError> {
        self.signers
            .iter()
            .map(|s| Ok((s.wsts_id(), point(&s.public_key)?)))
            .collect()
    }
}

/// Relay tag of the coordinator's requests.
pub const TAG_REQUEST: &str = "req";
/// Relay tag of DKG shares signers broadcast to each other.
pub const TAG_DKG: &str = "dkg";
/// Relay tag of responses only the coordinator reads.
pub const TAG_RESPONSE: &str = "resp";
/// What signers poll for.
pub const SIGNER_TAGS: &[&str] = &[TAG_REQUEST, TAG_DKG];
/// What the coordinator polls for.
pub const COORDINATOR_TAGS: &[&str] = &[TAG_DKG, TAG_RESPONSE];

/// Writes `bytes` to `path` through a temporary file in the same folder:
/// created owner-only (0600), synced, renamed over `path`, folder synced.
///
/// # Errors
/// Any I/O failure.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private(path, bytes, true)
}

/// Like [`write_private_atomically`] without the syncs: readers see the old
/// or the new contents, never a mix, and a killed process loses nothing; a
/// power failure may bring the old contents back. For records whose loss is
/// harmless but whose cost sits on every signing round.
///
/// # Errors
/// Any I/O failure.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private(path, bytes, false)
}

fn write_private(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if sync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::Secp256k1;

    #[test]
    fn state_files_are_written_atomically_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("frost-net-{}", std::process::id()));
        let path = dir.join("sub/signer-1.json");
        write_private_atomically(&path, b"{\"a\":1}").unwrap();
        write_private_atomically(&path, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":2}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_convert_both_ways() {
        let sk = SecretKey::from_slice(&[7; 32]).unwrap();
        let pk = sk.public_key(&Secp256k1::new());
        let p = point(&pk).unwrap();
        assert_eq!(public_key(&p).unwrap(), pk);
        assert_eq!(p, Point::from(scalar(&sk)));
        assert_eq!(
            ecdsa_key(&pk).unwrap(),
            ecdsa::PublicKey::new(&scalar(&sk)).unwrap()
        );
    }
}
