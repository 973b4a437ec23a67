//! The authenticated envelope every relay packet travels in.
//!
//! wsts' own packet signatures cover only part of each message (its
//! `SignatureShareRequest` hash omits `sign_iter_id`, `DkgEnd`'s omits the
//! status, id lists are hashed without lengths), so a relay could rewrite
//! fields and the packet would still verify. The envelope is ours and covers
//! everything:
//!
//! ```text
//! magic "SBTF" (4) ‖ version (1) ‖ kind (1) ‖ sender (u32 BE) ‖ body length (u32 BE)
//! ‖ body ‖ signature (64)
//! ```
//!
//! Version 2: the body of the signing-round kinds (nonce and share requests
//! and responses) is a compact binary encoding (`docs/relay-protocol.md`,
//! "Binary bodies"), every other kind's is JSON of its message.
//! Version 1 (JSON throughout) is refused as not ours.
//!
//! The signature is a compact low-S ECDSA signature by the sender's message
//! key over `SHA256(domain ‖ header ‖ body)`, where the [`Domain`] binds the
//! network, the contract, the signer set and the coordinator's key. It is
//! verified — against the key the signer set gives the sender, with a size
//! cap per kind derived from the signer set — **before** the body is decoded,
//! so nobody decodes megabytes of unauthenticated junk. After decoding, every
//! id the message carries is checked against the signer set
//! ([`crate::checks`]), before any wsts state machine sees it.
//!
//! wsts' `Packet::verify` is not run: the envelope covers strictly more
//! (the whole body, the sender, the domain), and checking both would double
//! the signature work of every party.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{ecdsa, Message as SecpMessage, PublicKey, Secp256k1, SecretKey};
use serde::{Deserialize, Serialize};

use crate::messages::{Kind, Message};
pub use crate::wire::ListedNonces;
use crate::{SignerFile, SignerSet};

const MAGIC: &[u8; 4] = b"SBTF";
const VERSION: u8 = 2;
/// Bytes before the body.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4;
/// Bytes of the signature after the body.
pub const SIGNATURE_LEN: usize = 64;

/// Who sent a packet: the coordinator, or a signer by its 1-based id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sender {
    /// The coordinator (wire id 0).
    Coordinator,
    /// A signer, 1-based id as in the signer set.
    Signer(u32),
}

impl Sender {
    fn wire(self) -> u32 {
        match self {
            Sender::Coordinator => 0,
            Sender::Signer(id) => id,
        }
    }

    fn from_wire(id: u32) -> Sender {
        if id == 0 {
            Sender::Coordinator
        } else {
            Sender::Signer(id)
        }
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Coordinator => f.write_str("the coordinator"),
            Sender::Signer(id) => write!(f, "signer {id}"),
        }
    }
}

/// What binds a packet to one peg: a digest of the network, the contract,
/// the signer set and the coordinator's message key. Packets of another
/// deployment (or of a party with a different signer file) never verify.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Domain([u8; 32]);

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Domain({})", hex::encode(&self.0[..8]))
    }
}

impl Domain {
    /// The domain of a peg. Every field is length-prefixed, so no two
    /// different inputs give the same bytes.
    pub fn new(network: &str, contract: &str, set: &SignerSet, coordinator: &PublicKey) -> Self {
        let mut e = sha256::Hash::engine();
        let mut put = |b: &[u8]| {
            e.input(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
            e.input(b);
        };
        put(b"sbtc-coordinator/relay-envelope/v1");
        put(network.as_bytes());
        put(contract.as_bytes());
        put(&coordinator.serialize());
        put(&set.threshold.to_be_bytes());
        put(&set.dkg_threshold().to_be_bytes());
        put(&set.num_signers().to_be_bytes());
        for s in &set.signers {
            put(&s.id.to_be_bytes());
            put(&s.public_key.serialize());
            let ids: Vec<u8> = s.key_ids.iter().flat_map(|k| k.to_be_bytes()).collect();
            put(&ids);
        }
        Domain(sha256::Hash::from_engine(e).to_byte_array())
    }

    /// The domain of the peg a signer file describes.
    pub fn of(file: &SignerFile) -> Self {
        Domain::new(
            file.network.as_deref().unwrap_or(""),
            file.contract.as_deref().unwrap_or(""),
            &file.set,
            &file.coordinator_public_key,
        )
    }
}

/// Why a packet was refused. Nothing here is trusted: the packet came from
/// the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an envelope of ours, or of another version.
    #[error("not an sBTC FROST envelope (bad magic or version)")]
    NotEnvelope,
    /// Shorter than its header and signature, or its length field disagrees.
    #[error("truncated or mis-sized envelope")]
    Truncated,
    /// A kind byte we do not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The sender is not allowed to send this kind, or is not in the set.
    #[error("{sender} may not send {kind:?}")]
    WrongSender {
        /// Who it claims to be.
        sender: Sender,
        /// What it sent.
        kind: Kind,
    },
    /// The body is larger than this kind can be for this signer set.
    #[error("{kind:?} of {len} bytes exceeds its cap of {cap}")]
    TooLarge {
        /// The kind.
        kind: Kind,
        /// The body's length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The signature does not verify.
    #[error("bad signature on a {kind:?} claiming to be from {sender}")]
    BadSignature {
        /// The kind.
        kind: Kind,
        /// Who it claims to be.
        sender: Sender,
    },
    /// Authenticated, but the body does not decode as its kind.
    #[error("{kind:?} from {sender} does not decode: {reason}")]
    Undecodable {
        /// The kind.
        kind: Kind,
        /// Who sent it.
        sender: Sender,
        /// Why.
        reason: String,
    },
    /// Authenticated and decoded, but an id it carries does not fit the set.
    #[error("{kind:?} from {sender} refused: {reason}")]
    BadIds {
        /// The kind.
        kind: Kind,
        /// Who sent it.
        sender: Sender,
        /// Which id and why.
        reason: String,
    },
}

/// An authenticated, decoded, id-checked packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Who signed it.
    pub sender: Sender,
    /// What it says.
    pub message: Message,
}

/// What [`Codec::open_for_signer`] found in an authentic packet.
#[derive(Debug, Clone, PartialEq)]
pub enum ForSigner {
    /// Decoded and id-checked, as [`Codec::open`] gives it; a share request
    /// with its listing as the body carried it.
    Open(Envelope, Option<ListedNonces>),
    /// A share request, signed by the coordinator, for this round, that
    /// does not list the signer: not decoded further, nothing in it is
    /// acted on but the fact that the signer was passed over.
    NotListed(crate::RoundId),
}

/// Seals and opens envelopes for one peg.
#[derive(Clone)]
pub struct Codec {
    domain: Domain,
    set: SignerSet,
    coordinator: PublicKey,
    caps: crate::messages::Caps,
    /// One libsecp256k1 context for every seal and open: making one per
    /// packet cost about as much as the verification itself.
    secp: Secp256k1<bitcoin::secp256k1::All>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("domain", &self.domain)
            .field("signers", &self.set.signers.len())
            .finish()
    }
}

/// Returns the header, unauthenticated: for skipping packets a party
/// ignores anyway without verifying them. Never act on it.
pub fn peek(bytes: &[u8]) -> Option<(Kind, Sender)> {
    let h = bytes.get(..HEADER_LEN)?;
    if &h[..4] != MAGIC || h[4] != VERSION {
        return None;
    }
    let kind = Kind::from_u8(h[5])?;
    let sender = u32::from_be_bytes(h[6..10].try_into().ok()?);
    Some((kind, Sender::from_wire(sender)))
}

fn digest(domain: &Domain, header: &[u8], body: &[u8]) -> SecpMessage {
    let mut e = sha256::Hash::engine();
    e.input(&domain.0);
    e.input(header);
    e.input(body);
    SecpMessage::from_digest(sha256::Hash::from_engine(e).to_byte_array())
}

impl Codec {
    /// A codec for the peg `file` describes.
    pub fn new(file: &SignerFile) -> Self {
        Codec::with_domain(
            Domain::of(file),
            file.set.clone(),
            file.coordinator_public_key,
        )
    }

    /// A codec with an explicit domain.
    pub fn with_domain(domain: Domain, set: SignerSet, coordinator: PublicKey) -> Self {
        let caps = crate::messages::Caps::of(&set);
        Codec {
            domain,
            set,
            coordinator,
            caps,
            secp: Secp256k1::new(),
        }
    }

    /// The signer set packets are checked against.
    pub fn set(&self) -> &SignerSet {
        &self.set
    }

    /// The largest body a kind may have for this signer set.
    pub fn cap(&self, kind: Kind) -> usize {
        self.caps.of_kind(kind)
    }

    fn key_of(&self, sender: Sender) -> Option<PublicKey> {
        match sender {
            Sender::Coordinator => Some(self.coordinator),
            Sender::Signer(id) => self.set.signer(id).map(|s| s.public_key),
        }
    }

    /// Seals `message` from `sender`, signed with `key`.
    ///
    /// The caller's own message never exceeds a cap in normal operation; a
    /// sealed packet over its cap would be refused by every receiver, so it
    /// is refused here already.
    ///
    /// # Errors
    /// When the body is over its kind's cap or the sender may not send it.
    pub fn seal(
        &self,
        sender: Sender,
        key: &SecretKey,
        message: &Message,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let kind = message.kind();
        if !kind.may_be_sent_by(sender) {
            return Err(EnvelopeError::WrongSender { sender, kind });
        }
        let body = message.encode_body();
        let cap = self.cap(kind);
        if body.len() > cap {
            return Err(EnvelopeError::TooLarge {
                kind,
                len: body.len(),
                cap,
            });
        }
        let len = u32::try_from(body.len()).map_err(|_| EnvelopeError::Truncated)?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&sender.wire().to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        let sig = self
            .secp
            .sign_ecdsa(&digest(&self.domain, &out, &body), key);
        out.extend_from_slice(&body);
        out.extend_from_slice(&sig.serialize_compact());
        Ok(out)
    }

    /// Seals arbitrary bytes as the body of `kind` from `sender`, signed
    /// with `key`, with no cap or sender check: what an authentic but
    /// hostile party (one holding a message key) can post. Fault tests only.
    #[cfg(feature = "testing")]
    pub fn seal_raw(&self, sender: Sender, key: &SecretKey, kind: Kind, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&sender.wire().to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        let sig = self.secp.sign_ecdsa(&digest(&self.domain, &out, body), key);
        out.extend_from_slice(body);
        out.extend_from_slice(&sig.serialize_compact());
        out
    }

    /// Opens a packet from the relay: header, sender and size checked, then
    /// the signature verified over the whole packet, and only then the body
    /// decoded and its ids checked against the signer set.
    ///
    /// # Errors
    /// Whatever is wrong with the packet, first failure first.
    pub fn open(&self, bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (kind, sender, body) = self.authenticate(bytes)?;
        self.decoded(kind, sender, body)
    }

    /// [`Codec::open`] for a signer with wsts (0-based) id `me`: a share
    /// request comes with its [`ListedNonces`] as its body carried them, and
    /// one that does not list `me` is authenticated but not decoded further
    /// ([`ForSigner::NotListed`]: a signer passed over has nothing to check
    /// in it, and its points cost a square root each to decode).
    ///
    /// # Errors
    /// As [`Codec::open`], for everything it does decode.
    pub fn open_for_signer(&self, bytes: &[u8], me: u32) -> Result<ForSigner, EnvelopeError> {
        let (kind, sender, body) = self.authenticate(bytes)?;
        if kind != Kind::SignatureShareRequest {
            return self
                .decoded(kind, sender, body)
                .map(|e| ForSigner::Open(e, None));
        }
        if let Some((key, dkg_id, sign_id, sign_iter_id)) =
            crate::wire::share_request_without(body, me)
        {
            return Ok(ForSigner::NotListed(crate::RoundId {
                key,
                dkg_id,
                sign_id,
                sign_iter_id,
            }));
        }
        let (message, listed) = crate::wire::decode_share_request(body).map_err(|reason| {
            EnvelopeError::Undecodable {
                kind,
                sender,
                reason,
            }
        })?;
        self.checked(kind, sender, message)
            .map(|e| ForSigner::Open(e, Some(listed)))
    }

    fn decoded(&self, kind: Kind, sender: Sender, body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let message =
            Message::decode_body(kind, body).map_err(|reason| EnvelopeError::Undecodable {
                kind,
                sender,
                reason,
            })?;
        self.checked(kind, sender, message)
    }

    fn checked(
        &self,
        kind: Kind,
        sender: Sender,
        message: Message,
    ) -> Result<Envelope, EnvelopeError> {
        crate::checks::check(&self.set, sender, &message).map_err(|reason| {
            EnvelopeError::BadIds {
                kind,
                sender,
                reason,
            }
        })?;
        Ok(Envelope { sender, message })
    }

    /// The first half of [`Codec::open`]: header, sender and size checked,
    /// the signature verified; returns the kind, the sender and the body,
    /// not yet decoded.
    fn authenticate<'a>(&self, bytes: &'a [u8]) -> Result<(Kind, Sender, &'a [u8]), EnvelopeError> {
        let header = bytes.get(..HEADER_LEN).ok_or(EnvelopeError::Truncated)?;
        if &header[..4] != MAGIC || header[4] != VERSION {
            return Err(EnvelopeError::NotEnvelope);
        }
        let kind = Kind::from_u8(header[5]).ok_or(EnvelopeError::UnknownKind(header[5]))?;
        let mut word = [0u8; 4];
        word.copy_from_slice(&header[6..10]);
        let sender = Sender::from_wire(u32::from_be_bytes(word));
        word.copy_from_slice(&header[10..14]);
        let len =
            usize::try_from(u32::from_be_bytes(word)).map_err(|_| EnvelopeError::Truncated)?;
        if !kind.may_be_sent_by(sender) {
            return Err(EnvelopeError::WrongSender { sender, kind });
        }
        let Some(key) = self.key_of(sender) else {
            return Err(EnvelopeError::WrongSender { sender, kind });
        };
        let cap = self.cap(kind);
        if len > cap {
            return Err(EnvelopeError::TooLarge { kind, len, cap });
        }
        if bytes.len() != HEADER_LEN + len + SIGNATURE_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let body = &bytes[HEADER_LEN..HEADER_LEN + len];
        let sig = ecdsa::Signature::from_compact(&bytes[HEADER_LEN + len..])
            .map_err(|_| EnvelopeError::BadSignature { kind, sender })?;
        // libsecp256k1 refuses high-S signatures: no malleated copies.
        self.secp
            .verify_ecdsa(&digest(&self.domain, header, body), &sig, &key)
            .map_err(|_| EnvelopeError::BadSignature { kind, sender })?;
        Ok((kind, sender, body))
    }
}

impl Codec {
    /// Checks that every signer a share request lists, other than `me` (a
    /// wsts, 0-based id), comes with its own signed nonce response saying
    /// exactly what the listing says.
    ///
    /// wsts' binding value covers the nonces and the message but not the
    /// signer id each nonce is listed under, so without this a coordinator
    /// could list one signer's genuine nonce under another signer's id. Each
    /// embedded envelope must open under this codec (signed by that
    /// signer's message key in the current set, this domain) as a
    /// `NonceResponse` for the request's key whose signer id, key ids,
    /// nonces, round and message equal its listed entry; at most one per
    /// signer, none for a signer not listed. `me`'s own entry may come with
    /// or without an envelope (the signer checks it against its own round).
    ///
    /// # Errors
    /// The first envelope or entry that does not fit, in words for the log.
    pub fn check_listed_nonces(&self, r: &crate::ShareRequest, me: u32) -> Result<(), String> {
        self.check_listed_nonces_with(r, me, &ListedNonces::of(r))
    }

    /// [`Codec::check_listed_nonces`] with `r`'s listing as its packet
    /// carried it ([`Codec::open_for_signer`]): the embedded bodies are
    /// compared with those bytes, no point is compressed. A listing that
    /// does not fit `r` is not used (`r`'s own is made).
    ///
    /// # Errors
    /// As [`Codec::check_listed_nonces`].
    pub fn check_listed_nonces_with(
        &self,
        r: &crate::ShareRequest,
        me: u32,
        listed: &ListedNonces,
    ) -> Result<(), String> {
        if !listed.fits(r) {
            return self.check_listed_nonces(r, me);
        }
        let m = &r.msg;
        let mut proved = std::collections::BTreeSet::new();
        for (i, bytes) in r.nonce_envelopes.iter().enumerate() {
            // The common case, without decoding: the envelope is authentic
            // and its body is byte for byte the (canonical) encoding of the
            // listed entry for this key; the listed entry's ids and round
            // were checked with the share request. Anything else goes the
            // long way below, which decodes and says what differs.
            if let Some(wsts_id) = self.matches_listed(bytes, r, listed) {
                if !proved.insert(wsts_id) {
                    return Err(format!(
                        "two embedded nonce responses of signer {}",
                        wsts_id.saturating_add(1)
                    ));
                }
                continue;
            }
            let env = self
                .open(bytes)
                .map_err(|e| format!("embedded nonce response {i}: {e}"))?;
            let (Sender::Signer(id), Message::NonceResponse(n)) = (env.sender, &env.message) else {
                return Err(format!(
                    "embedded envelope {i} is a {:?} from {}, not a nonce response",
                    env.message.kind(),
                    env.sender
                ));
            };
            let wsts_id = id.saturating_sub(1);
            if !proved.insert(wsts_id) {
                return Err(format!("two embedded nonce responses of signer {id}"));
            }
            let Some(listed) = m.nonce_responses.iter().find(|l| l.signer_id == wsts_id) else {
                return Err(format!(
                    "an embedded nonce response of signer {id}, who is not listed"
                ));
            };
            let n = (&n.key, &n.msg);
            let mismatch = if *n.0 != r.key {
                Some("another key")
            } else if (n.1.dkg_id, n.1.sign_id, n.1.sign_iter_id)
                != (m.dkg_id, m.sign_id, m.sign_iter_id)
            {
                Some("another round")
            } else if n.1.message != m.message || listed.message != m.message {
                Some("another message")
            } else if n.1.key_ids != listed.key_ids {
                Some("other key ids than listed")
            } else if n.1.nonces != listed.nonces {
                Some("another nonce than listed")
            } else {
                None
            };
            if let Some(what) = mismatch {
                return Err(format!("signer {id}'s signed nonce response is for {what}"));
            }
        }
        let missing: Vec<u32> = m
            .nonce_responses
            .iter()
            .map(|l| l.signer_id)
            .filter(|s| *s != me && !proved.contains(s))
            .map(|s| s.saturating_add(1))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no signed nonce response of listed signers {missing:?}"
            ))
        }
    }
}

impl Codec {
    /// The wsts id of the signer whose authentic sealed nonce response
    /// `bytes` is, when its body is exactly the encoding of the entry `r`
    /// lists for that signer, of `r`'s key, round and message; `None`
    /// otherwise (including every failure, which the caller then explains).
    fn matches_listed(
        &self,
        bytes: &[u8],
        r: &crate::ShareRequest,
        listing: &ListedNonces,
    ) -> Option<u32> {
        let (kind, sender, body) = self.authenticate(bytes).ok()?;
        let (Kind::NonceResponse, Sender::Signer(id)) = (kind, sender) else {
            return None;
        };
        let wsts_id = id.checked_sub(1)?;
        let m = &r.msg;
        let index = m
            .nonce_responses
            .iter()
            .position(|l| l.signer_id == wsts_id)?;
        let listed = &m.nonce_responses[index];
        let same_round = (listed.dkg_id, listed.sign_id, listed.sign_iter_id)
            == (m.dkg_id, m.sign_id, m.sign_iter_id)
            && listed.message == m.message;
        // The listing's entry is the canonical encoding of `listed` (read
        // from the same body, or encoded from it).
        if !same_round || !listing.is_body_of(index, &r.key, body) {
            return None;
        }
        // The body is the listed entry: the id checks `open` would run on
        // it (its own signer id, its own key ids, one valid nonce), here on
        // the entry, so the answer does not depend on how `r` was checked.
        let embedded = Message::NonceResponse(crate::messages::Keyed {
            key: r.key,
            msg: listed.clone(),
        });
        crate::checks::check(&self.set, sender, &embedded)
            .ok()
            .map(|()| wsts_id)
    }
}

/// What a list of attestation envelopes says about one peg wallet key: which
/// signers of the set attest that their own stacks-node shows the contract
/// publishing it ([`verify_attestations`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttestationTally {
    /// The attesting signers (1-based ids), each with the newest time it
    /// attested (seconds since the Unix epoch, the signer's clock). A signer
    /// counts once however many of its envelopes are given.
    pub signers: std::collections::BTreeMap<u32, u64>,
    /// How many key ids the attesting signers hold together.
    pub key_ids: u32,
    /// The envelopes that were not counted (their index in the input) and why.
    pub rejected: Vec<(usize, String)>,
}

impl AttestationTally {
    /// Whether the attesting signers hold at least `threshold` key ids: as
    /// many as a signature needs, so no fewer than that many key ids' worth
    /// of signers can have been fooled (or be lying) about the key.
    pub fn reaches(&self, threshold: u32) -> bool {
        self.key_ids >= threshold
    }
}

impl Codec {
    /// Counts the attestations of `key` published by `contract` among
    /// `envelopes` (raw relay packets, as the coordinator serves them). Each
    /// must open under this codec's domain — signed by a signer of the set
    /// with its own message key — and be an attestation of exactly this
    /// contract and key; anything else is listed in
    /// [`AttestationTally::rejected`].
    pub fn tally_attestations<B: AsRef<[u8]>>(
        &self,
        contract: &str,
        key: &PublicKey,
        envelopes: &[B],
    ) -> AttestationTally {
        let mut t = AttestationTally::default();
        for (i, bytes) in envelopes.iter().enumerate() {
            let env = match self.open(bytes.as_ref()) {
                Ok(e) => e,
                Err(e) => {
                    t.rejected.push((i, e.to_string()));
                    continue;
                }
            };
            let (Sender::Signer(id), Message::Attestation(a)) = (env.sender, &env.message) else {
                t.rejected.push((
                    i,
                    format!(
                        "a {:?} from {}, not an attestation",
                        env.message.kind(),
                        env.sender
                    ),
                ));
                continue;
            };
            if a.contract != contract {
                t.rejected.push((
                    i,
                    format!(
                        "signer {id} attests for contract {:?}, not {contract:?}",
                        a.contract
                    ),
                ));
                continue;
            }
            if a.key != *key {
                t.rejected
                    .push((i, format!("signer {id} attests another key, {}", a.key)));
                continue;
            }
            let newest = t.signers.entry(id).or_insert(a.time);
            *newest = (*newest).max(a.time);
        }
        t.key_ids = t
            .signers
            .keys()
            .filter_map(|id| self.set.signer(*id))
            .map(|s| u32::try_from(s.key_ids.len()).unwrap_or(u32::MAX))
            .fold(0, u32::saturating_add);
        t
    }
}

/// For users' tools: counts which signers of the peg `file` describes attest
/// that its contract publishes `key`, from raw attestation envelopes (what
/// the coordinator's `/attestations` serves). Pay into the key only when
/// [`AttestationTally::reaches`] the set's threshold.
///
/// # Errors
/// When the file names no contract: there is nothing to attest against.
pub fn verify_attestations<B: AsRef<[u8]>>(
    file: &SignerFile,
    key: &PublicKey,
    envelopes: &[B],
) -> Result<AttestationTally, String> {
    let contract = file
        .contract
        .as_deref()
        .ok_or("the signer set file names no contract: attestations cannot be checked")?;
    Ok(Codec::new(file).tally_attestations(contract, key, envelopes))
}
