//! What the coordinator asks of a stacks-node's RPC, as the [`StacksNode`] trait.
//!
//! With the `mock` feature the crate exports `MockStacksNode`, a mockall
//! double for other crates' tests.

pub use peg_ops;
pub use rpc::UreqStacksNode;
pub use stacks_wire;

mod rpc;

use peg_ops::{BurnHeight, PegInOp, PegOutRequestOp};
use stacks_wire::{ContractId, PrincipalData, StacksTxid, Value};

/// A transaction the node refused (`POST /v2/transactions` answering 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("transaction rejected: {reason}")]
pub struct Rejection {
    /// The node's reason code, e.g. `FeeTooLow`, `BadNonce`, `NotEnoughFunds`.
    pub reason: String,
    /// The node's `reason_data` object (`expected`/`actual` and the like).
    pub reason_data: Option<serde_json::Value>,
}

impl Rejection {
    /// Returns a `u64` field of `reason_data`, such as `expected` for
    /// `FeeTooLow` or `BadNonce`.
    pub fn reason_data_u64(&self, field: &str) -> Option<u64> {
        self.reason_data.as_ref()?.get(field)?.as_u64()
    }
}

/// What went wrong talking to the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The node could not be reached, or the connection broke.
    #[error("stacks node unreachable: {0}")]
    Transport(String),
    /// The node did not answer in time.
    #[error("stacks node timed out")]
    Timeout,
    /// The node answered with an unexpected HTTP status.
    #[error("stacks node answered http {status}: {body}")]
    Http {
        /// The status code.
        status: u16,
        /// The start of the body, for the operator.
        body: String,
    },
    /// The node refused a transaction.
    #[error(transparent)]
    Rejected(Rejection),
    /// A read-only call failed (`okay: false`).
    #[error("read-only call failed: {0}")]
    CallReadFailed(String),
    /// The node had no fee estimate.
    #[error("stacks node has no fee estimate")]
    NoEstimate,
    /// The answer could not be decoded.
    #[error("stacks node answer could not be decoded: {0}")]
    Decode(String),
}

impl Error {
    /// Returns whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) | Error::Timeout | Error::Decode(_) | Error::NoEstimate => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429,
            Error::Rejected(_) | Error::CallReadFailed(_) => false,
        }
    }
}

/// The parts of `GET /v2/info` the coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Bitcoin height the node has processed.
    pub burn_block_height: u64,
    /// The Stacks chain tip's height.
    pub stacks_tip_height: u64,
    /// The Stacks chain tip's index block hash (`StacksBlockId`).
    pub stacks_tip: [u8; 32],
}

/// An account's confirmed state (`GET /v2/accounts/{principal}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountInfo {
    /// Unlocked STX balance in µSTX.
    pub balance: u128,
    /// The next nonce of the confirmed state (mempool not counted).
    pub nonce: u64,
}

/// Fee estimates for a transaction (`POST /v2/fees/transaction`), in µSTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeEstimates {
    /// The low estimate.
    pub low: u64,
    /// The middle estimate.
    pub middle: u64,
    /// The high estimate.
    pub high: u64,
}

/// What the coordinator asks of a stacks-node.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait StacksNode {
    /// Returns the node's view of both chains (`GET /v2/info`).
    fn get_info(&self) -> Result<NodeInfo, Error>;

    /// Returns the peg-ins in the Bitcoin block at `height`, or `None` when the
    /// node has not processed that height yet (a 404 means "not there yet",
    /// never "nothing there").
    fn get_peg_in_ops(&self, height: BurnHeight) -> Result<Option<Vec<PegInOp>>, Error>;

    /// Returns the peg-out requests in the Bitcoin block at `height`, or
    /// `None` when the node has not processed that height yet.
    fn get_peg_out_request_ops(
        &self,
        height: BurnHeight,
    ) -> Result<Option<Vec<PegOutRequestOp>>, Error>;

    /// Returns an account's confirmed balance and nonce.
    fn get_account(&self, principal: &PrincipalData) -> Result<AccountInfo, Error>;

    /// Broadcasts a signed transaction; returns its txid. A transaction the
    /// mempool already holds is a success.
    fn broadcast_transaction(&self, raw: &[u8]) -> Result<StacksTxid, Error>;

    /// Estimates the fee of a transaction with this payload and length.
    fn estimate_fee(&self, payload: &[u8], estimated_len: u64) -> Result<FeeEstimates, Error>;

    /// Calls a read-only contract function and returns its result.
    fn call_read(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
    ) -> Result<Value, Error>;
}
