//! What the FROST signers and the coordinator share.
//!
//! - [`SignerSet`] and [`SignerFile`]: the shared `conf/signer.toml`.
//! - Conversions between [`bitcoin::secp256k1`] keys and wsts' curve types.
//! - The packet codec: a wsts [`Packet`] travels through the relay as JSON;
//!   [`decode_packet`] bounds what it reads.
//! - [`Verifier`]: every inbound packet is checked with `Packet::verify`
//!   against the configured keys before any state machine sees it (the wsts
//!   state machines do not verify signatures themselves).
//! - [`SignerRounds`] and [`CoordinatorRounds`]: which packets belong to the
//!   current DKG or signing round; anything older is a replay and is dropped.

pub mod checks;
pub mod envelope;
pub mod messages;
mod signer_set;

pub use envelope::{Codec, Domain, Envelope, EnvelopeError, Sender};
pub use messages::{Kind, RoundId, SignItem, SignRequest, ToSign};
pub use signer_set::{SignerFile, SignerInfo, SignerSet, SignerSetError};
pub use wsts;

use std::path::Path;

use bitcoin::secp256k1::{PublicKey, SecretKey};
use hashbrown::{HashMap, HashSet};
use wsts::curve::ecdsa;
use wsts::curve::point::Point;
use wsts::curve::scalar::Scalar;
use wsts::net::{Message, Packet};
use wsts::state_machine::PublicKeys;

/// The largest packet accepted from the relay, in bytes of JSON.
pub const MAX_PACKET_LEN: usize = 4 << 20;

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

/// Encodes a packet for the relay.
pub fn encode_packet(p: &Packet) -> Vec<u8> {
    serde_json::to_vec(p).expect("wsts packets always serialize to JSON")
}

/// Decodes a packet from the relay; untrusted input.
///
/// # Errors
/// Oversized or malformed input.
pub fn decode_packet(bytes: &[u8]) -> Result<Packet, NetError> {
    if bytes.len() > MAX_PACKET_LEN {
        return Err(NetError::Packet(format!(
            "{} bytes exceeds {MAX_PACKET_LEN}",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| NetError::Packet(e.to_string()))
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

/// Returns the relay tag for a message: a routing hint only, so parties are
/// not woken by traffic they ignore. Security never depends on it.
pub fn relay_tag(m: &Message) -> &'static str {
    match m {
        Message::DkgBegin(_)
        | Message::DkgPrivateBegin(_)
        | Message::DkgEndBegin(_)
        | Message::NonceRequest(_)
        | Message::SignatureShareRequest(_) => TAG_REQUEST,
        Message::DkgPublicShares(_) | Message::DkgPrivateShares(_) => TAG_DKG,
        Message::DkgEnd(_) | Message::NonceResponse(_) | Message::SignatureShareResponse(_) => {
            TAG_RESPONSE
        }
    }
}

/// Returns the message kind of an encoded packet without decoding it (the
/// JSON starts `{"msg":{"<Kind>":`), or `None` if it does not look so.
/// Lets a party skip the full decode of messages it ignores anyway.
pub fn peek_kind(bytes: &[u8]) -> Option<&str> {
    let rest = bytes.strip_prefix(br#"{"msg":{""#)?;
    let end = rest.iter().take(32).position(|b| *b == b'"')?;
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// Returns whether a signer can skip an encoded packet unread: responses
/// are for the coordinator. Anything unrecognised is read (and judged) in full.
pub fn signer_ignores(bytes: &[u8]) -> bool {
    matches!(
        peek_kind(bytes),
        Some("NonceResponse" | "SignatureShareResponse" | "DkgEnd")
    )
}

/// Verifies packets against the configured keys.
#[derive(Clone)]
pub struct Verifier {
    keys: PublicKeys,
    coordinator: ecdsa::PublicKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("signers", &self.keys.signers.len())
            .finish()
    }
}

impl Verifier {
    /// Creates a verifier for `set`, with the coordinator's message key.
    ///
    /// # Errors
    /// When a key does not convert.
    pub fn new(set: &SignerSet, coordinator: &PublicKey) -> Result<Self, NetError> {
        Ok(Verifier {
            keys: set.wsts_public_keys()?,
            coordinator: ecdsa_key(coordinator)?,
        })
    }

    /// Returns whether the packet is signed by whom its message says: the
    /// coordinator for requests, the named signer for responses. Packets from
    /// unknown signers fail.
    pub fn verify(&self, p: &Packet) -> bool {
        p.verify(&self.keys, &self.coordinator)
    }
}

/// What a replay check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Part of the current round: process it.
    Accept,
    /// Not for this party (another party's response, or our own echo).
    Ignore,
    /// From an older round, or out of order: a replay.
    Replay,
}

/// The round a signer is in, to reject replayed requests.
///
/// A DKG starts only with a higher `dkg_id` than any seen; DKG messages must
/// carry the current one. A nonce request must be newer (sign id, iteration)
/// than the last one answered; a signature-share request must match it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignerRounds {
    /// The current DKG round.
    pub dkg_id: u64,
    /// The last signing round answered: (sign id, iteration).
    pub sign: (u64, u64),
}

impl SignerRounds {
    /// Decides whether a signer processes `msg`, advancing the round for
    /// accepted DKG begins and nonce requests.
    pub fn admit(&mut self, msg: &Message) -> Admit {
        match msg {
            Message::DkgBegin(m) if m.dkg_id > self.dkg_id => {
                self.dkg_id = m.dkg_id;
                self.sign = (0, 0);
                Admit::Accept
            }
            Message::DkgBegin(_) => Admit::Replay,
            Message::DkgPrivateBegin(m) => self.current_dkg(m.dkg_id),
            Message::DkgEndBegin(m) => self.current_dkg(m.dkg_id),
            Message::DkgPublicShares(m) => self.current_dkg(m.dkg_id),
            Message::DkgPrivateShares(m) => self.current_dkg(m.dkg_id),
            Message::NonceRequest(m) => {
                if m.dkg_id == self.dkg_id && (m.sign_id, m.sign_iter_id) > self.sign {
                    self.sign = (m.sign_id, m.sign_iter_id);
                    Admit::Accept
                } else {
                    Admit::Replay
                }
            }
            Message::SignatureShareRequest(m) => {
                if m.dkg_id == self.dkg_id && (m.sign_id, m.sign_iter_id) == self.sign {
                    Admit::Accept
                } else {
                    Admit::Replay
                }
            }
            Message::DkgEnd(_) | Message::NonceResponse(_) | Message::SignatureShareResponse(_) => {
                Admit::Ignore
            }
        }
    }

    fn current_dkg(&self, id: u64) -> Admit {
        if id == self.dkg_id {
            Admit::Accept
        } else {
            Admit::Replay
        }
    }
}

/// The round the coordinator is running, learnt from the requests it sends,
/// to accept only responses to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorRounds {
    dkg_id: u64,
    sign: (u64, u64),
}

impl CoordinatorRounds {
    /// Records a request the coordinator sends.
    pub fn sent(&mut self, msg: &Message) {
        match msg {
            Message::DkgBegin(m) => self.dkg_id = m.dkg_id,
            Message::NonceRequest(m) => {
                self.dkg_id = m.dkg_id;
                self.sign = (m.sign_id, m.sign_iter_id);
            }
            _ => {}
        }
    }

    /// Decides whether the coordinator processes `msg`.
    pub fn admit(&self, msg: &Message) -> Admit {
        let current = |ok: bool| if ok { Admit::Accept } else { Admit::Replay };
        match msg {
            Message::DkgPublicShares(m) => current(m.dkg_id == self.dkg_id),
            Message::DkgPrivateShares(m) => current(m.dkg_id == self.dkg_id),
            Message::DkgEnd(m) => current(m.dkg_id == self.dkg_id),
            Message::NonceResponse(m) => {
                current(m.dkg_id == self.dkg_id && (m.sign_id, m.sign_iter_id) == self.sign)
            }
            Message::SignatureShareResponse(m) => {
                current(m.dkg_id == self.dkg_id && (m.sign_id, m.sign_iter_id) == self.sign)
            }
            Message::DkgBegin(_)
            | Message::DkgPrivateBegin(_)
            | Message::DkgEndBegin(_)
            | Message::NonceRequest(_)
            | Message::SignatureShareRequest(_) => Admit::Ignore,
        }
    }
}

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
    use wsts::net::{DkgBegin, NonceRequest, Signable, SignatureShareRequest, SignatureType};

    fn nonce_request(dkg_id: u64, sign_id: u64, sign_iter_id: u64) -> Message {
        Message::NonceRequest(NonceRequest {
            dkg_id,
            sign_id,
            sign_iter_id,
            message: vec![1],
            signature_type: SignatureType::Taproot(None),
        })
    }

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

    #[test]
    fn packets_round_trip_and_garbage_is_refused() {
        let sk = SecretKey::from_slice(&[7; 32]).unwrap();
        let msg = Message::DkgBegin(DkgBegin { dkg_id: 3 });
        let p = Packet {
            sig: msg.sign(&scalar(&sk)).unwrap(),
            msg,
        };
        assert_eq!(decode_packet(&encode_packet(&p)).unwrap(), p);
        assert!(decode_packet(b"{\"msg\": 5}").is_err());
        assert!(decode_packet(&vec![b' '; MAX_PACKET_LEN + 1]).is_err());
    }

    #[test]
    fn kinds_are_peeked_without_decoding() {
        let sk = SecretKey::from_slice(&[7; 32]).unwrap();
        let msg = Message::DkgBegin(DkgBegin { dkg_id: 3 });
        let bytes = encode_packet(&Packet {
            sig: msg.sign(&scalar(&sk)).unwrap(),
            msg,
        });
        assert_eq!(peek_kind(&bytes), Some("DkgBegin"));
        assert!(!signer_ignores(&bytes));
        assert!(signer_ignores(br#"{"msg":{"NonceResponse":{}}}"#));
        assert_eq!(peek_kind(b"garbage"), None);
        assert_eq!(peek_kind(br#"{"msg":{"no-closing-quote"#), None);
    }

    #[test]
    fn signers_refuse_replayed_rounds() {
        let mut r = SignerRounds::default();
        assert_eq!(
            r.admit(&Message::DkgBegin(DkgBegin { dkg_id: 1 })),
            Admit::Accept
        );
        assert_eq!(
            r.admit(&Message::DkgBegin(DkgBegin { dkg_id: 1 })),
            Admit::Replay
        );
        assert_eq!(r.admit(&nonce_request(1, 1, 1)), Admit::Accept);
        assert_eq!(
            r.admit(&nonce_request(1, 1, 1)),
            Admit::Replay,
            "the same request twice"
        );
        assert_eq!(
            r.admit(&nonce_request(1, 1, 2)),
            Admit::Accept,
            "a retry iteration"
        );
        assert_eq!(
            r.admit(&nonce_request(0, 9, 1)),
            Admit::Replay,
            "an old dkg round"
        );
        let share = |sign_id, iter| {
            Message::SignatureShareRequest(SignatureShareRequest {
                dkg_id: 1,
                sign_id,
                sign_iter_id: iter,
                nonce_responses: vec![],
                message: vec![1],
                signature_type: SignatureType::Taproot(None),
            })
        };
        assert_eq!(r.admit(&share(1, 2)), Admit::Accept);
        assert_eq!(r.admit(&share(1, 1)), Admit::Replay);
        assert_eq!(
            r.admit(&Message::DkgBegin(DkgBegin { dkg_id: 2 })),
            Admit::Accept
        );
        assert_eq!(
            r.admit(&share(1, 2)),
            Admit::Replay,
            "a new dkg invalidates old signing rounds"
        );
    }

    #[test]
    fn the_coordinator_takes_responses_to_its_current_requests_only() {
        let mut c = CoordinatorRounds::default();
        c.sent(&nonce_request(2, 5, 1));
        let response = |sign_id| {
            Message::NonceResponse(wsts::net::NonceResponse {
                dkg_id: 2,
                sign_id,
                sign_iter_id: 1,
                signer_id: 0,
                key_ids: vec![1],
                nonces: vec![],
                message: vec![1],
            })
        };
        assert_eq!(c.admit(&response(5)), Admit::Accept);
        assert_eq!(c.admit(&response(4)), Admit::Replay);
        assert_eq!(
            c.admit(&nonce_request(2, 5, 1)),
            Admit::Ignore,
            "its own request echoed"
        );
    }
}
