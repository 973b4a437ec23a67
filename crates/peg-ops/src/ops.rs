//! The operation types.

use std::fmt;
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, Amount, BlockHash, Network, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};
use stacks_wire::{PrincipalData, StacksAddress, StacksNetwork};

use crate::signature::{peg_out_request_sighash, MessageSignature, RecoverError};

/// A Bitcoin block height (a "burn" height, in Stacks' words).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct BurnHeight(pub u64);

impl fmt::Display for BurnHeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Bitcoin address as text from outside: parsed, but its network not yet
/// checked against ours (a wrong-network address is a reason to reject an
/// operation, not to fail decoding it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BtcAddress(Address<NetworkUnchecked>);

impl BtcAddress {
    /// Returns the address's scriptPubKey.
    pub fn script_pubkey(&self) -> ScriptBuf {
        self.0.assume_checked_ref().script_pubkey()
    }

    /// Returns the address if it is valid on `network`.
    pub fn require_network(&self, network: Network) -> Option<Address> {
        self.0.clone().require_network(network).ok()
    }
}

impl From<Address> for BtcAddress {
    fn from(a: Address) -> Self {
        BtcAddress(a.into_unchecked())
    }
}

impl fmt::Display for BtcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.assume_checked_ref().fmt(f)
    }
}

impl fmt::Debug for BtcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BtcAddress({self})")
    }
}

impl FromStr for BtcAddress {
    type Err = bitcoin::address::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(BtcAddress(s.parse()?))
    }
}

impl Serialize for BtcAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BtcAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format_args!("invalid bitcoin address: {e}")))
    }
}

/// A peg-in: BTC paid to the peg wallet, asking for sBTC minted to `recipient`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PegInOp {
    /// Who receives the sBTC.
    pub recipient: PrincipalData,
    /// The address output 1 pays; must be our peg wallet.
    pub peg_wallet_address: BtcAddress,
    /// The value of output 1.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    /// Free-form bytes after the recipient.
    #[serde(with = "crate::hex_bytes")]
    pub memo: Vec<u8>,
    /// The Bitcoin transaction.
    pub txid: Txid,
    /// Its index in the block.
    pub vtxindex: u32,
    /// The height of its block.
    pub block_height: BurnHeight,
    /// The hash of its block.
    pub burn_header_hash: BlockHash,
}

/// A peg-out request: a Stacks account asks for `amount` of its sBTC to be
/// burned and paid out in BTC to `recipient`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PegOutRequestOp {
    /// The amount to burn and pay out.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    /// Who receives the BTC (output 1 of the request, a dust output).
    pub recipient: BtcAddress,
    /// The requester's signature over [`peg_out_request_sighash`].
    pub signature: MessageSignature,
    /// The address output 2 pays; must be our peg wallet.
    pub peg_wallet_address: BtcAddress,
    /// The value of output 2, which pays the fulfilment's miner fee.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fulfillment_fee: Amount,
    /// Free-form bytes after the signature.
    #[serde(with = "crate::hex_bytes")]
    pub memo: Vec<u8>,
    /// The Bitcoin transaction.
    pub txid: Txid,
    /// Its index in the block.
    pub vtxindex: u32,
    /// The height of its block.
    pub block_height: BurnHeight,
    /// The hash of its block.
    pub burn_header_hash: BlockHash,
}

impl PegOutRequestOp {
    /// Recovers the requester's Stacks address from the signature.
    ///
    /// # Errors
    /// When the signature is malformed or recovers no key.
    pub fn requester(&self, network: StacksNetwork) -> Result<StacksAddress, RecoverError> {
        let digest = peg_out_request_sighash(self.amount, &self.recipient.script_pubkey());
        self.signature.recover_address(digest, network)
    }
}

/// A peg-out fulfilment: the BTC payout for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PegOutFulfillOp {
    /// The Stacks chain tip the fulfilment committed to (32 bytes, hex).
    #[serde(with = "crate::hex_bytes")]
    pub chain_tip: Vec<u8>,
    /// The amount paid.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    /// Who was paid.
    pub recipient: BtcAddress,
    /// The request it fulfils.
    pub request_ref: Txid,
    /// Free-form bytes after the chain tip.
    #[serde(with = "crate::hex_bytes")]
    pub memo: Vec<u8>,
    /// The Bitcoin transaction.
    pub txid: Txid,
    /// Its index in the block.
    pub vtxindex: u32,
    /// The height of its block.
    pub block_height: BurnHeight,
    /// The hash of its block.
    pub burn_header_hash: BlockHash,
}

/// Which kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PegOpKind {
    /// A peg-in.
    PegIn,
    /// A peg-out request.
    PegOutRequest,
}

impl fmt::Display for PegOpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PegOpKind::PegIn => "peg-in",
            PegOpKind::PegOutRequest => "peg-out",
        })
    }
}

/// An operation the coordinator acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PegOp {
    /// A peg-in.
    PegIn(PegInOp),
    /// A peg-out request.
    PegOutRequest(PegOutRequestOp),
}

impl PegOp {
    /// Returns the Bitcoin txid, which identifies the operation.
    pub fn txid(&self) -> Txid {
        match self {
            PegOp::PegIn(op) => op.txid,
            PegOp::PegOutRequest(op) => op.txid,
        }
    }

    /// Returns the height of the block holding the operation.
    pub fn block_height(&self) -> BurnHeight {
        match self {
            PegOp::PegIn(op) => op.block_height,
            PegOp::PegOutRequest(op) => op.block_height,
        }
    }

    /// Returns the hash of the block holding the operation.
    pub fn burn_header_hash(&self) -> BlockHash {
        match self {
            PegOp::PegIn(op) => op.burn_header_hash,
            PegOp::PegOutRequest(op) => op.burn_header_hash,
        }
    }

    /// Returns the kind.
    pub fn kind(&self) -> PegOpKind {
        match self {
            PegOp::PegIn(_) => PegOpKind::PegIn,
            PegOp::PegOutRequest(_) => PegOpKind::PegOutRequest,
        }
    }

    /// Returns the amount pegged in or requested out.
    pub fn amount(&self) -> Amount {
        match self {
            PegOp::PegIn(op) => op.amount,
            PegOp::PegOutRequest(op) => op.amount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    /// The example from the stacks-node's `/v2/burn_ops` documentation (reference §2).
    const DOC_EXAMPLE: &str = r#"{"peg_in":[{"amount":1337,"block_height":218,"burn_header_hash":"3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4","memo":"","peg_wallet_address":"tb1pqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqkgkkf5","recipient":"S0000000000000000000002AA028H.awesome_contract","txid":"d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771","vtxindex":2}]}"#;

    #[derive(Deserialize)]
    struct PegIns {
        peg_in: Vec<PegInOp>,
    }

    #[test]
    fn decodes_the_node_doc_example_into_real_types() {
        let ops: PegIns = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let op = &ops.peg_in[0];
        assert_eq!(op.amount, Amount::from_sat(1337));
        assert_eq!(op.block_height, BurnHeight(218));
        assert_eq!(op.vtxindex, 2);
        assert_eq!(
            op.txid.to_string(),
            "d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771"
        );
        assert!(op
            .peg_wallet_address
            .require_network(Network::Testnet)
            .is_some());
        assert!(op
            .peg_wallet_address
            .require_network(Network::Bitcoin)
            .is_none());
        assert_eq!(
            op.recipient.to_string(),
            "S0000000000000000000002AA028H.awesome_contract"
        );
        // And back to the same JSON.
        let again = serde_json::to_value(op).unwrap();
        let orig: serde_json::Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(again, orig["peg_in"][0]);
    }

    #[test]
    fn garbage_fields_fail_to_decode() {
        let bad_amount = DOC_EXAMPLE.replace("1337", "-1");
        assert!(serde_json::from_str::<PegIns>(&bad_amount).is_err());
        let bad_txid = DOC_EXAMPLE.replace("d81bec73", "zz");
        assert!(serde_json::from_str::<PegIns>(&bad_txid).is_err());
        let bad_addr = DOC_EXAMPLE.replace("tb1pqq", "tb1pqx");
        assert!(serde_json::from_str::<PegIns>(&bad_addr).is_err());
    }

    #[test]
    fn requester_is_recovered_from_the_signature() {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let recipient: BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap();
        let amount = Amount::from_sat(50_000);
        let digest = peg_out_request_sighash(amount, &recipient.script_pubkey());
        let op = PegOutRequestOp {
            amount,
            recipient: recipient.clone(),
            signature: MessageSignature::sign(digest, &key),
            peg_wallet_address: recipient,
            fulfillment_fee: Amount::from_sat(2_000),
            memo: vec![],
            txid: "d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771"
                .parse()
                .unwrap(),
            vtxindex: 1,
            block_height: BurnHeight(5),
            burn_header_hash: "3292a7d2a7e941499b5c0dcff2a5656c159010718450948a60c2be9e1c221dc4"
                .parse()
                .unwrap(),
        };
        let expected = StacksAddress::p2pkh(StacksNetwork::Testnet, &key.public_key(&secp), true);
        assert_eq!(op.requester(StacksNetwork::Testnet).unwrap(), expected);

        // A different amount recovers someone else: the signature binds the amount.
        let mut other = op.clone();
        other.amount = Amount::from_sat(50_001);
        assert_ne!(other.requester(StacksNetwork::Testnet).ok(), Some(expected));

        let mut bad = op;
        bad.signature.0[0] = 9;
        assert_eq!(
            bad.requester(StacksNetwork::Testnet),
            Err(RecoverError::BadRecoveryId(9))
        );
    }
}
