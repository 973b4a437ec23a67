//! What a `SignRequest` carries: the transaction the signers are asked to
//! sign, with what they need to check it, and nothing they must trust.

use bitcoin::hashes::Hash as _;
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{TapSighashType, Transaction, TxOut, Txid};
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
        #[serde(with = "tx_hex")]
        tx: Transaction,
        /// The outputs its inputs spend, input by input.
        #[serde(with = "txouts")]
        prevouts: Vec<TxOut>,
    },
    /// A sweep of old keys' coins, or a consolidation, to the current key.
    Sweep {
        /// The unsigned transaction.
        #[serde(with = "tx_hex")]
        tx: Transaction,
        /// The outputs its inputs spend.
        #[serde(with = "txouts")]
        prevouts: Vec<TxOut>,
    },
    /// A refund of a rejected, never-minted peg-in (issue #14): its
    /// output 1 paid back to the script its input 0 spent
    /// ([`crate::check_refund`]).
    Refund {
        /// The peg-in's txid.
        peg_in: Txid,
        /// The transaction whose output the peg-in's input 0 spent: the
        /// signer checks its txid against the peg-in's input 0 and takes the
        /// refund's script from it (a bitcoind without `-txindex` cannot
        /// look it up).
        #[serde(with = "tx_hex")]
        funding: Transaction,
        /// The unsigned transaction.
        #[serde(with = "tx_hex")]
        tx: Transaction,
        /// The outputs its inputs spend.
        #[serde(with = "txouts")]
        prevouts: Vec<TxOut>,
    },
    /// Tagged test messages only (the DKG test round, `dkg-sign`).
    Test,
}

impl SignPayload {
    /// The bytes sent in a `SignRequest`.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types cannot fail: every field is a string, a
        // number or a list of them.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload.
    ///
    /// # Errors
    /// When the bytes are not a payload.
    pub fn decode(bytes: &[u8]) -> Result<SignPayload, String> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "a payload of {} bytes is above the limit of {MAX_PAYLOAD_BYTES}",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("not a sign payload: {e}"))
    }

    /// The transaction and its prevouts, if the payload has one.
    pub fn transaction(&self) -> Option<(&Transaction, &[TxOut])> {
        match self {
            SignPayload::Fulfilment { tx, prevouts, .. }
            | SignPayload::Sweep { tx, prevouts }
            | SignPayload::Refund { tx, prevouts, .. } => Some((tx, prevouts.as_slice())),
            SignPayload::Test => None,
        }
    }

    /// The BIP-341 key-path sighash (`SIGHASH_DEFAULT`, all prevouts) of
    /// each input, in order; empty for [`SignPayload::Test`].
    ///
    /// # Errors
    /// When the prevouts do not match the inputs.
    pub fn sighashes(&self) -> Result<Vec<[u8; 32]>, String> {
        match self.transaction() {
            None => Ok(Vec::new()),
            Some((tx, prevouts)) => sighashes(tx, prevouts),
        }
    }
}

/// The largest payload [`SignPayload::decode`] reads: 4 MB, a block's weight.
pub const MAX_PAYLOAD_BYTES: usize = 4_000_000;

/// The BIP-341 key-path sighash (`SIGHASH_DEFAULT`, all prevouts) of every
/// input of `tx`.
///
/// # Errors
/// When `prevouts` does not have one output per input.
pub fn sighashes(tx: &Transaction, prevouts: &[TxOut]) -> Result<Vec<[u8; 32]>, String> {
    if tx.input.len() != prevouts.len() {
        return Err(format!(
            "{} inputs but {} prevouts",
            tx.input.len(),
            prevouts.len()
        ));
    }
    let mut cache = SighashCache::new(tx);
    (0..tx.input.len())
        .map(|i| {
            cache
                .taproot_key_spend_signature_hash(
                    i,
                    &Prevouts::All(prevouts),
                    TapSighashType::Default,
                )
                .map(|h| h.to_raw_hash().to_byte_array())
                .map_err(|e| format!("sighash of input {i}: {e}"))
        })
        .collect()
}

/// A transaction as its consensus serialization in hex.
mod tx_hex {
    use bitcoin::consensus::encode;
    use bitcoin::Transaction;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(tx: &Transaction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode::serialize_hex(tx))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transaction, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = hex::decode(text.as_ref()).map_err(serde::de::Error::custom)?;
        encode::deserialize(&bytes)
            .map_err(|e| serde::de::Error::custom(format_args!("not a transaction: {e}")))
    }
}

/// Outputs as `{"value": sats, "script": hex}`.
mod txouts {
    use bitcoin::{Amount, ScriptBuf, TxOut};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Out {
        value: u64,
        script: String,
    }

    pub(super) fn serialize<S: Serializer>(outs: &[TxOut], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(outs.iter().map(|o| Out {
            value: o.value.to_sat(),
            script: hex::encode(o.script_pubkey.as_bytes()),
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TxOut>, D::Error> {
        Vec::<Out>::deserialize(d)?
            .into_iter()
            .map(|o| {
                let script = hex::decode(&o.script).map_err(serde::de::Error::custom)?;
                Ok(TxOut {
                    value: Amount::from_sat(o.value),
                    script_pubkey: ScriptBuf::from_bytes(script),
                })
            })
            .collect()
    }
}
