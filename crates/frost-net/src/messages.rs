//! What travels inside an envelope: wsts' DKG and signing messages, with the
//! signing ones naming the aggregate key they are for, and our own messages.
//!
//! A signing round is named by (aggregate key, dkg id, sign id, sign
//! iteration): [`RoundId`]. Before any round the coordinator sends a
//! [`SignRequest`] listing what it wants signed (each message with the key
//! to sign it with) and an opaque payload a signer's validation reads; a
//! signer answers a nonce request only for a message it accepted that way.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::PublicKey;
use serde::{Deserialize, Serialize};
use wsts::net as w;

use crate::envelope::Sender;
use crate::SignerSet;

/// A message kind: the envelope's kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    /// Coordinator: start a DKG.
    DkgBegin = 1,
    /// Coordinator: send private shares.
    DkgPrivateBegin = 2,
    /// Coordinator: finish the DKG.
    DkgEndBegin = 3,
    /// Coordinator: what it asks to have signed.
    SignRequest = 4,
    /// Coordinator: a round's nonce request.
    NonceRequest = 5,
    /// Coordinator: a round's signature share request.
    SignatureShareRequest = 6,
    /// Signer: DKG public shares (to everybody).
    DkgPublicShares = 7,
    /// Signer: DKG private shares (to everybody, encrypted per key).
    DkgPrivateShares = 8,
    /// Signer: DKG outcome.
    DkgEnd = 9,
    /// Signer: the new key share is on disk.
    KeyStored = 10,
    /// Signer: a round's nonces.
    NonceResponse = 11,
    /// Signer: a round's signature shares.
    SignatureShareResponse = 12,
    /// Signer: it will not sign what was asked, and why.
    Refusal = 13,
    /// Signer: still alive.
    Heartbeat = 14,
    /// Coordinator: a new key passed the gate (every share stored, the
    /// all-signer test signature verified); until then signers hold it as
    /// pending.
    KeyAccepted = 15,
    /// Signer: the peg wallet key the contract publishes is one it holds
    /// (read on its own stacks-node), for users' tools to check.
    Attestation = 16,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 16] = [
        Kind::DkgBegin,
        Kind::DkgPrivateBegin,
        Kind::DkgEndBegin,
        Kind::SignRequest,
        Kind::NonceRequest,
        Kind::SignatureShareRequest,
        Kind::DkgPublicShares,
        Kind::DkgPrivateShares,
        Kind::DkgEnd,
        Kind::KeyStored,
        Kind::NonceResponse,
        Kind::SignatureShareResponse,
        Kind::Refusal,
        Kind::Heartbeat,
        Kind::KeyAccepted,
        Kind::Attestation,
    ];

    /// The kind of a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// Whether the coordinator sends this kind (otherwise signers do).
    pub fn from_coordinator(self) -> bool {
        matches!(
            self,
            Kind::DkgBegin
                | Kind::DkgPrivateBegin
                | Kind::DkgEndBegin
                | Kind::SignRequest
                | Kind::NonceRequest
                | Kind::SignatureShareRequest
                | Kind::KeyAccepted
        )
    }

    /// Whether `sender` may send this kind at all.
    pub fn may_be_sent_by(self, sender: Sender) -> bool {
        self.from_coordinator() == (sender == Sender::Coordinator)
    }

    /// The relay tag this kind travels under: a routing hint only.
    pub fn relay_tag(self) -> &'static str {
        if self.from_coordinator() {
            crate::TAG_REQUEST
        } else if matches!(self, Kind::DkgPublicShares | Kind::DkgPrivateShares) {
            crate::TAG_DKG
        } else {
            crate::TAG_RESPONSE
        }
    }

    /// Whether signers read this kind (the rest is for the coordinator).
    pub fn for_signers(self) -> bool {
        self.from_coordinator() || matches!(self, Kind::DkgPublicShares | Kind::DkgPrivateShares)
    }
}

/// A wsts signing message with the aggregate key it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyed<T> {
    /// The aggregate key of the round.
    pub key: PublicKey,
    /// The wsts message.
    pub msg: T,
}

/// A signature share request: wsts' request for the round's key, with the
/// sealed envelope of every nonce response it lists, exactly as each signer
/// posted it.
///
/// wsts' binding value covers the list of nonces and the message but not
/// which signer id each nonce is listed under; a signer therefore answers
/// only when every other listed entry comes with that signer's own signed
/// nonce response saying the same ([`crate::Codec::check_listed_nonces`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The aggregate key of the round.
    pub key: PublicKey,
    /// The wsts request.
    pub msg: w::SignatureShareRequest,
    /// The sealed `NonceResponse` envelopes of the listed signers, as
    /// posted (raw bytes in the binary body; hex in this type's serde
    /// form), at most one per listed signer.
    #[serde(with = "hex_list")]
    pub nonce_envelopes: Vec<Vec<u8>>,
}

/// What one signature is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ToSign {
    /// A BIP-341 taproot sighash, signed for the key-path spend of the
    /// aggregate key's output.
    Taproot {
        /// The sighash.
        #[serde(with = "hex32")]
        sighash: [u8; 32],
    },
    /// A test message: the signature is over [`test_message_digest`] of the
    /// text, which no transaction sighash can equal.
    Test {
        /// The text.
        text: String,
    },
}

impl ToSign {
    /// The 32 bytes the signature is over.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            ToSign::Taproot { sighash } => *sighash,
            ToSign::Test { text } => test_message_digest(text),
        }
    }
}

/// The tagged hash test messages are signed over: `SHA256(t ‖ t ‖ text)`
/// with `t = SHA256("sbtc-coordinator/test-message")`, as BIP-340 tags
/// hashes. Taproot sighashes are tagged `TapSighash`, so no test message can
/// be a valid transaction sighash.
pub fn test_message_digest(text: &str) -> [u8; 32] {
    let tag = sha256::Hash::hash(b"sbtc-coordinator/test-message");
    let mut e = sha256::Hash::engine();
    e.input(tag.as_ref());
    e.input(tag.as_ref());
    e.input(text.as_bytes());
    sha256::Hash::from_engine(e).to_byte_array()
}

/// One signature of a request, with the key that makes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignItem {
    /// The aggregate key to sign with.
    pub key: PublicKey,
    /// What to sign.
    pub message: ToSign,
}

/// What the coordinator asks the signers to sign, sent before the rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// The coordinator's id for the request (rounds refer to it).
    pub id: u64,
    /// What signers validate (for a payout: the unsigned transaction and its
    /// prevouts); opaque here.
    #[serde(with = "hex::serde")]
    pub payload: Vec<u8>,
    /// The signatures asked for.
    pub items: Vec<SignItem>,
}

/// A signer's report that it persisted its share of a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStored {
    /// The DKG round.
    pub dkg_id: u64,
    /// The aggregate key the share belongs to.
    pub key: PublicKey,
}

/// A signer's refusal of a sign request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The sign request refused.
    pub request: u64,
    /// The rule that failed, for the operator.
    pub rule: String,
}

/// A signer's periodic sign of life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The signer's clock, seconds since the Unix epoch.
    pub time: u64,
    /// The aggregate keys it holds shares of, oldest first.
    pub keys: Vec<PublicKey>,
}

/// A signer's statement that the contract publishes a peg wallet key it
/// holds a share of, checked on its own stacks-node. Users' tools count
/// these ([`crate::verify_attestations`]) before paying into the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The sBTC contract (`ADDRESS.NAME`) that publishes the key.
    pub contract: String,
    /// The peg wallet key (the aggregate key, untweaked) it publishes.
    pub key: PublicKey,
    /// The signer's clock when it read the key, seconds since the Unix epoch.
    pub time: u64,
}

/// The longest contract name an attestation may carry (Stacks limits an
/// address to 41 characters and a contract name to 128).
pub const MAX_CONTRACT_LEN: usize = 256;

/// A signing round: (aggregate key, dkg id, sign id, sign iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoundId {
    /// The aggregate key.
    pub key: PublicKey,
    /// The DKG round that made the key.
    pub dkg_id: u64,
    /// The signing round.
    pub sign_id: u64,
    /// Its iteration (FIRE retries with another iteration).
    pub sign_iter_id: u64,
}

/// Every message an envelope can hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// See [`Kind::DkgBegin`].
    DkgBegin(w::DkgBegin),
    /// See [`Kind::DkgPrivateBegin`].
    DkgPrivateBegin(w::DkgPrivateBegin),
    /// See [`Kind::DkgEndBegin`].
    DkgEndBegin(w::DkgEndBegin),
    /// See [`Kind::SignRequest`].
    SignRequest(SignRequest),
    /// See [`Kind::NonceRequest`].
    NonceRequest(Keyed<w::NonceRequest>),
    /// See [`Kind::SignatureShareRequest`].
    SignatureShareRequest(ShareRequest),
    /// See [`Kind::DkgPublicShares`].
    DkgPublicShares(w::DkgPublicShares),
    /// See [`Kind::DkgPrivateShares`].
    DkgPrivateShares(w::DkgPrivateShares),
    /// See [`Kind::DkgEnd`].
    DkgEnd(w::DkgEnd),
    /// See [`Kind::KeyStored`].
    KeyStored(KeyStored),
    /// See [`Kind::NonceResponse`].
    NonceResponse(Keyed<w::NonceResponse>),
    /// See [`Kind::SignatureShareResponse`].
    SignatureShareResponse(Keyed<w::SignatureShareResponse>),
    /// See [`Kind::Refusal`].
    Refusal(Refusal),
    /// See [`Kind::Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Kind::KeyAccepted`].
    KeyAccepted(KeyStored),
    /// See [`Kind::Attestation`].
    Attestation(Attestation),
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

impl Message {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::DkgBegin(_) => Kind::DkgBegin,
            Message::DkgPrivateBegin(_) => Kind::DkgPrivateBegin,
            Message::DkgEndBegin(_) => Kind::DkgEndBegin,
            Message::SignRequest(_) => Kind::SignRequest,
            Message::NonceRequest(_) => Kind::NonceRequest,
            Message::SignatureShareRequest(_) => Kind::SignatureShareRequest,
            Message::DkgPublicShares(_) => Kind::DkgPublicShares,
            Message::DkgPrivateShares(_) => Kind::DkgPrivateShares,
            Message::DkgEnd(_) => Kind::DkgEnd,
            Message::KeyStored(_) => Kind::KeyStored,
            Message::NonceResponse(_) => Kind::NonceResponse,
            Message::SignatureShareResponse(_) => Kind::SignatureShareResponse,
            Message::Refusal(_) => Kind::Refusal,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::KeyAccepted(_) => Kind::KeyAccepted,
            Message::Attestation(_) => Kind::Attestation,
        }
    }

    /// The body bytes: binary for the signing-round kinds (see the
    /// envelope's version 2 format in `docs/relay-protocol.md`), JSON of
    /// the inner message for the others.
    pub fn encode_body(&self) -> Vec<u8> {
        if let Some(body) = crate::wire::encode(self) {
            return body;
        }
        match self {
            Message::DkgBegin(m) => json(m),
            Message::DkgPrivateBegin(m) => json(m),
            Message::DkgEndBegin(m) => json(m),
            Message::SignRequest(m) => json(m),
            Message::NonceRequest(m) => json(m),
            Message::SignatureShareRequest(m) => json(m),
            Message::DkgPublicShares(m) => json(m),
            Message::DkgPrivateShares(m) => json(m),
            Message::DkgEnd(m) => json(m),
            Message::KeyStored(m) => json(m),
            Message::NonceResponse(m) => json(m),
            Message::SignatureShareResponse(m) => json(m),
            Message::Refusal(m) => json(m),
            Message::Heartbeat(m) => json(m),
            Message::KeyAccepted(m) => json(m),
            Message::Attestation(m) => json(m),
        }
    }

    /// Decodes a body of `kind`; untrusted input (already authenticated).
    ///
    /// # Errors
    /// When the body is not a message of that kind.
    pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, String> {
        if let Some(m) = crate::wire::decode(kind, body) {
            return m;
        }
        Ok(match kind {
            Kind::DkgBegin => Message::DkgBegin(parse(body)?),
            Kind::DkgPrivateBegin => Message::DkgPrivateBegin(parse(body)?),
            Kind::DkgEndBegin => Message::DkgEndBegin(parse(body)?),
            Kind::SignRequest => Message::SignRequest(parse(body)?),
            Kind::NonceRequest => Message::NonceRequest(parse(body)?),
            Kind::SignatureShareRequest => Message::SignatureShareRequest(parse(body)?),
            Kind::DkgPublicShares => Message::DkgPublicShares(parse(body)?),
            Kind::DkgPrivateShares => Message::DkgPrivateShares(parse(body)?),
            Kind::DkgEnd => Message::DkgEnd(parse(body)?),
            Kind::KeyStored => Message::KeyStored(parse(body)?),
            Kind::NonceResponse => Message::NonceResponse(parse(body)?),
            Kind::SignatureShareResponse => Message::SignatureShareResponse(parse(body)?),
            Kind::Refusal => Message::Refusal(parse(body)?),
            Kind::Heartbeat => Message::Heartbeat(parse(body)?),
            Kind::KeyAccepted => Message::KeyAccepted(parse(body)?),
            Kind::Attestation => Message::Attestation(parse(body)?),
        })
    }

    /// The signing round a signing message belongs to.
    pub fn round(&self) -> Option<RoundId> {
        let id = |key: PublicKey, dkg_id, sign_id, sign_iter_id| RoundId {
            key,
            dkg_id,
            sign_id,
            sign_iter_id,
        };
        match self {
            Message::NonceRequest(k) => {
                Some(id(k.key, k.msg.dkg_id, k.msg.sign_id, k.msg.sign_iter_id))
            }
            Message::SignatureShareRequest(k) => {
                Some(id(k.key, k.msg.dkg_id, k.msg.sign_id, k.msg.sign_iter_id))
            }
            Message::NonceResponse(k) => {
                Some(id(k.key, k.msg.dkg_id, k.msg.sign_id, k.msg.sign_iter_id))
            }
            Message::SignatureShareResponse(k) => {
                Some(id(k.key, k.msg.dkg_id, k.msg.sign_id, k.msg.sign_iter_id))
            }
            _ => None,
        }
    }
}

/// Per-kind body caps for one signer set.
///
/// Derived from the set's size with generous room: JSON of a curve point or
/// scalar is at most ~140 bytes (33 or 32 numbers of up to 3 digits and a
/// comma), so every element is budgeted 256 bytes. A 15×10 DKG's private
/// shares come to hundreds of KB, a nonce request to well under 1 KB.
#[derive(Debug, Clone)]
pub(crate) struct Caps {
    caps: [usize; Kind::ALL.len() + 1],
}

/// Bytes budgeted per JSON-encoded point, scalar or small structure.
const ELEM: usize = 256;
/// Bytes for a message's fixed fields.
const BASE: usize = 4 << 10;
/// The largest opaque payload of a sign request.
pub const MAX_SIGN_PAYLOAD: usize = 1 << 20;
/// The most signatures one sign request may ask for.
pub const MAX_SIGN_ITEMS: usize = 1024;
/// The longest test message.
pub const MAX_TEST_TEXT: usize = 1024;

impl Caps {
    pub(crate) fn of(set: &SignerSet) -> Caps {
        let n = set.signers.len().max(1);
        let k = usize::try_from(set.num_keys()).unwrap_or(usize::MAX).max(1);
        let t = usize::try_from(set.threshold).unwrap_or(usize::MAX).max(1);
        let ids = (n + k) * 16;
        // One nonce response: two points per party, key ids, a 32-byte message
        // (or a test digest), fixed fields.
        let nonce_response = BASE + 4 * ELEM + k * 16;
        // The same, sealed (header, signature) and hex-encoded, with quotes
        // and a comma: what a share request embeds per listed signer.
        let sealed_nonce_response =
            2 * (crate::envelope::HEADER_LEN + nonce_response + crate::envelope::SIGNATURE_LEN) + 4;
        let mut caps = [0usize; Kind::ALL.len() + 1];
        let mut set_cap = |kind: Kind, v: usize| caps[kind as usize] = v;
        set_cap(Kind::DkgBegin, BASE);
        set_cap(Kind::DkgPrivateBegin, BASE + ids);
        set_cap(Kind::DkgEndBegin, BASE + ids);
        set_cap(
            Kind::SignRequest,
            BASE + 2 * MAX_SIGN_PAYLOAD + MAX_SIGN_ITEMS * (2 * MAX_TEST_TEXT + ELEM),
        );
        set_cap(Kind::NonceRequest, BASE + 2 * ELEM);
        set_cap(
            Kind::SignatureShareRequest,
            BASE + n * (nonce_response + sealed_nonce_response),
        );
        // One polynomial commitment: the proof (point, two scalars) and t points.
        set_cap(Kind::DkgPublicShares, BASE + (t + 4) * ELEM);
        // An encrypted share per key id (ciphertext of ~60 bytes as JSON).
        set_cap(Kind::DkgPrivateShares, BASE + k * (ELEM + 16));
        // A failure can name every signer with a point and a proof each.
        set_cap(Kind::DkgEnd, BASE + n * 8 * ELEM);
        set_cap(Kind::KeyStored, BASE);
        set_cap(Kind::NonceResponse, nonce_response);
        set_cap(Kind::SignatureShareResponse, BASE + 2 * ELEM + k * 16);
        set_cap(Kind::Refusal, BASE);
        set_cap(Kind::Heartbeat, BASE + 64 * ELEM);
        set_cap(Kind::KeyAccepted, BASE);
        set_cap(Kind::Attestation, BASE + MAX_CONTRACT_LEN);
        Caps { caps }
    }

    pub(crate) fn of_kind(&self, kind: Kind) -> usize {
        self.caps[kind as usize]
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|h| hex::decode(h).map_err(serde::de::Error::custom))
            .collect()
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
