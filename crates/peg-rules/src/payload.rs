//! What a `SignRequest` carries: the transaction the signers are asked to
//! sign, with what they need to check it, and nothing they must trust.

use bitcoin::{Transaction, TxOut, Txid};
use serde::{Deserialize, Serialize};

/// The payload of a `SignRequest` (its `payload` bytes, [`SignPayload::encode`]).
///
/// Every `ToSign::Taproot` item of the request must be one of
/// [`SignPayload::sighashes`], for the key whose peg wallet address the
/// input's prevout pays; `ToSign::Test` items need [`SignPayload::Test`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignPayload {
    /// The fulfilment of a peg-out request.
    Fulfilment {
        /// The peg-out request's txid.
        request: Txid,
        /// The unsigned transaction.
        tx: Transaction,
        /// The outputs its inputs spend, input by input.
        prevouts: Vec<TxOut>,
    },
    /// A sweep of old keys' coins, or a consolidation, to the current key.
    Sweep {
        /// The unsigned transaction.
        tx: Transaction,
        /// The outputs its inputs spend.
        prevouts: Vec<TxOut>,
    },
    /// A refund of a rejected, never-minted peg-in (issue #14).
    Refund {
        /// The peg-in's txid.
        peg_in: Txid,
        /// The unsigned transaction.
        tx: Transaction,
        /// The outputs its inputs spend.
        prevouts: Vec<TxOut>,
    },
    /// Tagged test messages only (the DKG test round, `dkg-sign`).
    Test,
}

impl SignPayload {
    /// The bytes sent in a `SignRequest`.
    pub fn encode(&self) -> Vec<u8> {
        todo!("H1")
    }

    /// Reads a payload.
    ///
    /// # Errors
    /// When the bytes are not a payload.
    pub fn decode(bytes: &[u8]) -> Result<SignPayload, String> {
        let _ = bytes;
        todo!("H1")
    }

    /// The transaction and its prevouts, if the payload has one.
    pub fn transaction(&self) -> Option<(&Transaction, &[TxOut])> {
        todo!("H1")
    }

    /// The BIP-341 key-path sighash (`SIGHASH_DEFAULT`, all prevouts) of
    /// each input, in order; empty for [`SignPayload::Test`].
    ///
    /// # Errors
    /// When the prevouts do not match the inputs.
    pub fn sighashes(&self) -> Result<Vec<[u8; 32]>, String> {
        todo!("H1")
    }
}
