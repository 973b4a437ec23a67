//! The sBTC alpha peg operations, as the stacks-node reports them on
//! `/v2/burn_ops/{height}/{op}` and as they stand on Bitcoin.
//!
//! The types deserialize from the node's JSON exactly (field names, amounts
//! in satoshis, memos and hashes as hex) but hold real types: amounts are
//! [`bitcoin::Amount`], txids [`bitcoin::Txid`], recipients parsed addresses and
//! principals. Bitcoin hashes use Bitcoin's display order, as block explorers
//! and Bitcoin Core show them.
//!
//! This crate holds data and the pure functions on it; it never calls a node.

pub mod contract;
mod ops;
mod signature;
pub mod wire;

pub use bitcoin;
pub use ops::{
    BtcAddress, BurnHeight, PegInOp, PegOp, PegOpKind, PegOutFulfillOp, PegOutRequestOp,
};
pub use signature::{peg_out_request_sighash, MessageSignature, RecoverError};
pub use stacks_wire;

/// Hex (de)serialization of byte vectors, for memos.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref()).map_err(serde::de::Error::custom)
    }
}

/// A signed Stacks transaction ready to broadcast: its bytes, txid and nonce.
///
/// The coordinator persists this before broadcasting and re-broadcasts the
/// same bytes after a crash, so a side effect can never happen twice.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedStacksTx {
    /// The transaction id.
    pub txid: stacks_wire::StacksTxid,
    /// The nonce it spends.
    pub nonce: u64,
    /// The fee it pays, in µSTX.
    pub fee: u64,
    /// The serialized signed transaction.
    #[serde(with = "crate::hex_bytes")]
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for SignedStacksTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedStacksTx")
            .field("txid", &self.txid)
            .field("nonce", &self.nonce)
            .field("fee", &self.fee)
            .field("len", &self.raw.len())
            .finish()
    }
}
