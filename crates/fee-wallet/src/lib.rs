//! The coordinator's two wallets.
//!
//! - [`StacksWallet`] builds and signs the contract calls that mint and burn
//!   sBTC and publish the peg wallet key; it pays their fees in STX.
//! - [`BitcoinWallet`] builds peg-out fulfilment transactions (and sweeps,
//!   and refunds of rejected peg-ins) that spend the peg wallet (a taproot output of the signers' aggregate key), and attaches
//!   the signatures the signers produce.
//!
//! Both return signed bytes; the caller persists them before broadcasting.
//! With the `mock` feature the crate exports `MockStacksWallet` and
//! `MockBitcoinWallet`.

pub use bitcoin;
pub use peg::{peg_wallet_address, verify_spends, BitcoinFeePolicy, PegWallet};
pub use stacks::{ContractCallWallet, StacksFeePolicy};

mod peg;
mod stacks;

use bitcoin::secp256k1::{schnorr, PublicKey};
use bitcoin::{Address, Amount, FeeRate, Transaction, TxOut};
use bitcoin_node_client::Utxo;
use peg_ops::{PegInOp, PegOutRequestOp, SignedStacksTx};
use stacks_wire::StacksAddress;

/// What went wrong building a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The peg wallet cannot cover the payout and fee.
    #[error("insufficient peg wallet funds: need {needed}, have {available}")]
    InsufficientFunds {
        /// What the transaction needs.
        needed: Amount,
        /// What the wallet holds in spendable outputs.
        available: Amount,
    },
    /// The user's fulfilment fee does not cover the miner fee at the current
    /// rate, beyond the configured subsidy; waiting for lower fees may help.
    #[error(
        "fee shortfall: the request pays {offered}, the fee at the current rate is {required}"
    )]
    FeeShortfall {
        /// The request's fulfilment fee.
        offered: Amount,
        /// The miner fee needed.
        required: Amount,
    },
    /// The request's fee UTXO (its output 2) is not available to spend.
    #[error("the request's fulfilment-fee output is not among the peg wallet's unspent outputs")]
    MissingFeeUtxo,
    /// The wrong number of signatures was supplied.
    #[error("{expected} signatures needed, {actual} supplied")]
    SignatureCount {
        /// Inputs to sign.
        expected: usize,
        /// Signatures given.
        actual: usize,
    },
    /// A signed transaction failed the consensus check.
    #[error("input {input} fails consensus verification: {reason}")]
    Consensus {
        /// The input index.
        input: usize,
        /// libbitcoinconsensus' reason.
        reason: String,
    },
    /// A Stacks fee estimate could not be had.
    #[error("stacks fee estimate unavailable: {0}")]
    FeeEstimate(String),
    /// Anything else that makes the transaction impossible to build.
    #[error("cannot build transaction: {0}")]
    Build(String),
}

impl Error {
    /// Returns whether trying again later may succeed (fees may fall, funds
    /// may confirm, the node may answer).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::InsufficientFunds { .. } | Error::FeeShortfall { .. } | Error::FeeEstimate(_)
        )
    }
}

/// Builds and signs the coordinator's Stacks contract calls.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait StacksWallet {
    /// Returns the coordinator's Stacks address (it pays the fees).
    fn address(&self) -> StacksAddress;

    /// Builds `mint!` for a peg-in, signed with `nonce`. The fee comes from
    /// the node's estimate within the configured floor and cap, and is at
    /// least `min_fee` when given (the `expected` fee of a `FeeTooLow`
    /// rejection).
    fn build_mint(
        &self,
        op: &PegInOp,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error>;

    /// Builds `burn!` of `requester`'s sBTC for a peg-out request, signed
    /// with `nonce`; fees as for [`StacksWallet::build_mint`].
    fn build_burn(
        &self,
        op: &PegOutRequestOp,
        requester: &StacksAddress,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error>;

    /// Builds one `mint-many!` minting every peg-in of `ops` (at most
    /// [`peg_ops::contract::MAX_BATCH`], none twice), signed with `nonce`;
    /// fees as for [`StacksWallet::build_mint`].
    fn build_mint_many(
        &self,
        ops: &[PegInOp],
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error>;

    /// Builds one `burn-many!` burning, for each `(request, requester)`,
    /// the request's amount of the requester's sBTC (at most
    /// [`peg_ops::contract::MAX_BATCH`], no request twice), signed with
    /// `nonce`, in deny mode: each requester can lose at most the sum of
    /// its requests' amounts. Fees as for [`StacksWallet::build_mint`].
    fn build_burn_many(
        &self,
        burns: &[(PegOutRequestOp, StacksAddress)],
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error>;

    /// Builds `set-bitcoin-wallet-public-key`, signed with `nonce`.
    fn build_set_wallet_public_key(
        &self,
        key: &PublicKey,
        nonce: u64,
    ) -> Result<SignedStacksTx, Error>;

    /// Builds the owner's `set-coordinator-data` naming `coordinator` and its
    /// relay message key, signed with `nonce` (the wallet's key must own the
    /// contract).
    fn build_set_coordinator_data(
        &self,
        coordinator: &StacksAddress,
        message_key: &PublicKey,
        nonce: u64,
    ) -> Result<SignedStacksTx, Error>;
}

/// Returns the nonce for the next transaction: the node's confirmed nonce, or
/// one past the last nonce this coordinator signed if that is higher (its
/// transactions may still sit in the mempool).
pub fn next_nonce(confirmed: u64, last_signed: Option<u64>) -> u64 {
    match last_signed {
        Some(n) => confirmed.max(n.saturating_add(1)),
        None => confirmed,
    }
}

/// A fulfilment transaction before signing: the transaction, the outputs its
/// inputs spend, and one taproot key-path sighash per input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedFulfillment {
    /// The transaction, with empty witnesses.
    pub tx: Transaction,
    /// The outputs spent, input by input.
    pub prevouts: Vec<TxOut>,
    /// The sighash to sign for each input.
    pub sighashes: Vec<[u8; 32]>,
}

/// What a fulfilment needs besides the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfillmentInputs {
    /// The peg wallet's spendable outputs (including the request's fee output).
    pub utxos: Vec<Utxo>,
    /// The node's fee rate estimate, if it has one; the wallet applies the
    /// configured floor and cap (and uses the floor when there is none).
    pub fee_rate: Option<FeeRate>,
    /// The Stacks chain tip to commit to in the OP_RETURN.
    pub stacks_chain_tip: [u8; 32],
    /// Fee outputs of other peg-out requests: never spent by this fulfilment.
    pub reserved: Vec<bitcoin::OutPoint>,
}

/// Builds peg-out fulfilments spending the peg wallet.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait BitcoinWallet {
    /// Returns the peg wallet address for an aggregate key: P2TR, BIP-0341
    /// tweak, no script tree.
    fn peg_wallet_address(&self, aggregate_key: &PublicKey) -> Address;

    /// Builds the fulfilment of `op`: input 0 spends the request's output 2,
    /// output 0 is the OP_RETURN, output 1 pays the recipient, output 2 is
    /// change to the peg wallet.
    fn build_fulfillment(
        &self,
        op: &PegOutRequestOp,
        aggregate_key: &PublicKey,
        inputs: &FulfillmentInputs,
    ) -> Result<UnsignedFulfillment, Error>;

    /// Builds a sweep: every coin of `coins` (coins of keys rotated away
    /// from, none of them a pending request's fee output — the caller
    /// chooses them) spent to one output paying the peg wallet of
    /// `to_key`, the fee rate clamped to the policy. Fails when the coins do
    /// not cover the fee and a non-dust output.
    fn build_sweep(
        &self,
        coins: &[Utxo],
        to_key: &PublicKey,
        fee_rate: Option<FeeRate>,
    ) -> Result<UnsignedFulfillment, Error>;

    /// Builds the refund of a rejected peg-in: its output 1 (`coin`, paid
    /// to the peg wallet of whichever key it names) spent to one output
    /// paying `to` — the scriptPubKey of the output the peg-in's input 0
    /// spent, and nothing else — its value less the fee at the rate clamped
    /// to the policy. Fails when the fee leaves dust.
    fn build_refund(
        &self,
        coin: &Utxo,
        to: &bitcoin::ScriptBuf,
        fee_rate: Option<FeeRate>,
    ) -> Result<UnsignedFulfillment, Error>;

    /// Attaches one signature per input and checks every input against
    /// libbitcoinconsensus before returning the transaction.
    fn finalize_fulfillment(
        &self,
        unsigned: &UnsignedFulfillment,
        signatures: &[schnorr::Signature],
    ) -> Result<Transaction, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_nonce_never_reuses_or_skips() {
        assert_eq!(next_nonce(0, None), 0);
        assert_eq!(next_nonce(5, None), 5);
        // Our last tx (nonce 6) may still be in the mempool: use 7.
        assert_eq!(next_nonce(5, Some(6)), 7);
        // The chain has moved past what we signed (e.g. another key user): follow it.
        assert_eq!(next_nonce(9, Some(6)), 9);
        assert_eq!(next_nonce(7, Some(6)), 7);
    }
}
