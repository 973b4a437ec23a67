//! The peg-out request signature: how a requester proves which Stacks account
//! the sBTC is burned from.

use std::fmt;
use std::str::FromStr;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::{Amount, Script};
use stacks_wire::{StacksAddress, StacksNetwork};

/// A 65-byte recoverable ECDSA signature in Stacks' layout: recovery id, then
/// `r`, then `s`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageSignature(pub [u8; 65]);

/// Why a requester could not be recovered from a peg-out request signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// The first byte is not a recovery id (0 to 3).
    #[error("signature recovery id {0} is not 0 to 3")]
    BadRecoveryId(u8),
    /// `r ‖ s` is not a valid signature.
    #[error("signature bytes are not a valid ecdsa signature")]
    BadSignature,
    /// No public key recovers from this signature and message.
    #[error("no public key recovers from the signature")]
    NoKey,
}

/// Returns the message a peg-out requester signs:
/// `sha256(amount as u64 big-endian ‖ recipient scriptPubKey)`.
pub fn peg_out_request_sighash(amount: Amount, recipient: &Script) -> [u8; 32] {
    let mut buf = Vec::with_capacity(8 + recipient.len());
    buf.extend_from_slice(&amount.to_sat().to_be_bytes());
    buf.extend_from_slice(recipient.as_bytes());
    sha256::Hash::hash(&buf).to_byte_array()
}

impl MessageSignature {
    /// Signs `digest` with `key`, giving the recoverable signature in Stacks' layout.
    pub fn sign(digest: [u8; 32], key: &SecretKey) -> Self {
        let secp = Secp256k1::signing_only();
        let sig = secp.sign_ecdsa_recoverable(&Message::from_digest(digest), key);
        let (recid, rs) = sig.serialize_compact();
        let mut out = [0u8; 65];
        out[0] = u8::try_from(recid.to_i32()).expect("recovery ids are 0 to 3");
        out[1..].copy_from_slice(&rs);
        MessageSignature(out)
    }

    /// Recovers the public key that signed `digest`.
    pub fn recover(&self, digest: [u8; 32]) -> Result<PublicKey, RecoverError> {
        let recid = RecoveryId::from_i32(i32::from(self.0[0]))
            .map_err(|_| RecoverError::BadRecoveryId(self.0[0]))?;
        let sig = RecoverableSignature::from_compact(&self.0[1..], recid)
            .map_err(|_| RecoverError::BadSignature)?;
        Secp256k1::verification_only()
            .recover_ecdsa(&Message::from_digest(digest), &sig)
            .map_err(|_| RecoverError::NoKey)
    }

    /// Recovers the signer's single-sig Stacks address (compressed key) on `network`.
    pub fn recover_address(
        &self,
        digest: [u8; 32],
        network: StacksNetwork,
    ) -> Result<StacksAddress, RecoverError> {
        let key = self.recover(digest)?;
        Ok(StacksAddress::p2pkh(network, &key, true))
    }
}

impl fmt::Display for MessageSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageSignature({self})")
    }
}

impl FromStr for MessageSignature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s).map_err(|e| format!("signature is not hex: {e}"))?;
        let arr: [u8; 65] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("signature has {} bytes, expected 65", bytes.len()))?;
        Ok(MessageSignature(arr))
    }
}

impl serde::Serialize for MessageSignature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MessageSignature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
