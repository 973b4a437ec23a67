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

/// A request the node refused: `POST /v2/transactions` answering 400 (JSON
/// with a reason code, or plain text for a malformed body), or a read-only
/// call answering 400 plain text.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The node's reason code, e.g. `FeeTooLow`, `BadNonce`, `NotEnoughFunds`;
    /// [`Rejection::MALFORMED`] for a plain-text 400.
    pub reason: String,
    /// The node's `reason_data` object (`expected`/`actual` and the like);
    /// `{"message": text}` for a plain-text 400. Absent for several reasons.
    pub reason_data: Option<serde_json::Value>,
}

/// Whether sending the same request again later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It may: the node's state must change first (a block, a top-up).
    Transient,
    /// It never will: the request itself must change.
    Permanent,
}

impl Rejection {
    /// The reason of a plain-text 400: the node could not parse the request
    /// (garbage, empty or truncated body, wrong content type, bad argument
    /// hex). The node's text is in `reason_data.message`.
    pub const MALFORMED: &'static str = "Malformed";

    /// Returns a `u64` field of `reason_data`, such as `expected` for
    /// `FeeTooLow` or `BadNonce`.
    pub fn reason_data_u64(&self, field: &str) -> Option<u64> {
        self.reason_data.as_ref()?.get(field)?.as_u64()
    }

    /// The node's text of a plain-text rejection (or `reason_data.message`).
    pub fn message(&self) -> Option<&str> {
        self.reason_data.as_ref()?.get("message")?.as_str()
    }

    /// Whether the same transaction may be admitted later, per reason code
    /// (stacks-core 4.0.2's `MemPoolRejection` names):
    ///
    /// | reason | retry | why |
    /// |---|---|---|
    /// | `NotEnoughFunds` | transient | a top-up makes the same bytes valid |
    /// | `TooMuchChaining` | transient | admitted once earlier nonces confirm |
    /// | `ConflictingNonceInMempool` | transient | the other may be evicted (or mined: then `BadNonce`) |
    /// | `NoSuchContract` | transient | the deploy may still be in the mempool |
    /// | `NoEstimateAvailable`, `EstimatorError`, `ServerError`, `TemporarilyBlacklisted` | transient | node state |
    /// | `FeeTooLow` | permanent | same bytes, same fee: sign again with a higher fee |
    /// | `BadNonce` | permanent | a confirmed nonce never comes back |
    /// | `SignatureValidation`, `BadTransactionVersion`, `Deserialization`, [`Rejection::MALFORMED`] | permanent | the bytes are wrong |
    /// | `BadFunctionArgument`, `NoSuchPublicFunction`, `ContractAlreadyExists`, `BadAddressVersionByte`, `TransferRecipientIsSender`, `TransferAmountMustBePositive`, `NoCoinbaseViaMempool`, `NoTenureChangeViaMempool` | permanent | the call itself is wrong |
    /// | anything else | permanent | unknown: an operator looks, nothing retries blindly |
    pub fn retry(&self) -> Retry {
        match self.reason.as_str() {
            "NotEnoughFunds"
            | "TooMuchChaining"
            | "ConflictingNonceInMempool"
            | "NoSuchContract"
            | "NoEstimateAvailable"
            | "EstimatorError"
            | "ServerError"
            | "TemporarilyBlacklisted" => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "transaction rejected: {}", self.reason)?;
        match (self.message(), &self.reason_data) {
            (Some(m), _) => write!(f, ": {m}"),
            (None, Some(d)) if !d.is_null() => write!(f, " ({d})"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Rejection {}

/// The stacks-node's minimum fee rate, µSTX per byte of the serialized
/// transaction (stacks-node 4.0.2 answers `FeeTooLow` with `expected` = the
/// length below it).
pub const MIN_FEE_PER_BYTE: u64 = 1;

/// How many of one sender's nonces beyond its confirmed nonce the node
/// admits (measured on 4.0.2: confirmed + 26 is admitted, + 27 is
/// `TooMuchChaining`).
pub const MAX_CHAINED_NONCES: u64 = 26;

/// The most headers `GET /v2/headers/{n}` serves, so the deepest block
/// [`StacksNode::block_at_depth`] finds (stacks-node 4.0.2 answers a larger
/// `n` with a plain-text 400, "requested more than 2100 headers").
pub const MAX_HEADERS: u32 = 2100;

/// The hint for a node without `/v2/burn_ops`.
pub const BURN_OPS_HINT: &str = "this stacks-node does not serve /v2/burn_ops (only the 2023 sBTC alpha nodes did; no released stacks-node has it): set op_source = \"bitcoin\" in the coordinator's configuration";

/// What went wrong talking to the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The node could not be reached, or the connection broke.
    #[error("stacks node unreachable: {0}")]
    Transport(String),
    /// The node did not answer in time.
    #[error("stacks node timed out: {0}")]
    Timeout(String),
    /// The node answered with an unexpected HTTP status.
    #[error("stacks node answered http {status}: {body}")]
    Http {
        /// The status code.
        status: u16,
        /// The start of the body, for the operator.
        body: String,
    },
    /// The node refused a transaction or a malformed request.
    #[error(transparent)]
    Rejected(Rejection),
    /// The node does not serve `/v2/burn_ops`: a configuration error (the
    /// coordinator needs the Bitcoin op source). Never transient.
    #[error("{BURN_OPS_HINT} (it answered http {status}: {body})")]
    BurnOpsUnsupported {
        /// The status code (404).
        status: u16,
        /// The start of the node's answer.
        body: String,
    },
    /// A read-only call failed (`okay: false`).
    #[error("read-only call failed: {0}")]
    CallReadFailed(String),
    /// The node had no fee estimate.
    #[error("stacks node has no fee estimate")]
    NoEstimate,
    /// The answer could not be decoded.
    #[error("stacks node answer could not be decoded: {0}")]
    Decode(String),
    /// A read-only call at a Stacks block the node does not know (its 404):
    /// the block was forked away, or never existed.
    #[error("stacks node does not know block {0}")]
    UnknownTip(String),
}

impl Error {
    /// Returns whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_)
            | Error::Timeout(_)
            | Error::Decode(_)
            | Error::NoEstimate
            | Error::UnknownTip(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429,
            Error::Rejected(r) => r.retry() == Retry::Transient,
            Error::CallReadFailed(_) | Error::BurnOpsUnsupported { .. } => false,
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
    ///
    /// A 404 for a height the node *has* processed (its `/v2/info` burn height
    /// is at or above `height`) means the node has no such endpoint at all:
    /// [`Error::BurnOpsUnsupported`].
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

    /// Returns the index block hash (`StacksBlockId`) of the Stacks block
    /// `depth` blocks below the node's tip (0: the tip itself), or `None`
    /// when the chain is not that long. Found through `/v2/info` (depth 0) or
    /// `GET /v2/headers/{depth}` (the last header's `parent_block_id`).
    ///
    /// Observed on stacks-node 4.0.2 (mocknet, epoch 2.1): `/v2/headers/{n}`
    /// lists `n` entries `{consensus_hash, header, parent_block_id}`, the
    /// tip first, each entry's `parent_block_id` the index block hash of the
    /// next; a chain of height `h < n` gives `h` entries (the boot block has
    /// no header: depth `h` is the boot block, below it is `None`).
    /// The UreqStacksNode checks that the entries chain (a list that does
    /// not is [`Error::Decode`]); a depth above [`MAX_HEADERS`] is a
    /// permanent [`Error::Rejected`] without asking the node.
    fn block_at_depth(&self, depth: u32) -> Result<Option<[u8; 32]>, Error>;

    /// Calls a read-only function at a given Stacks block (`?tip=`, 64 hex
    /// digits, no `0x`): the contract's state as of that block. A tip the
    /// node does not know is [`Error::UnknownTip`] (the node's 404), never
    /// an answer at another block.
    fn call_read_at(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
        tip: &[u8; 32],
    ) -> Result<Value, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(reason: &str, data: Option<serde_json::Value>) -> Error {
        Error::Rejected(Rejection {
            reason: reason.into(),
            reason_data: data,
        })
    }

    /// Every reason the real stacks-node (4.0.2) answers, each decided on
    /// purpose; with and without `reason_data` (absent for several reasons).
    #[test]
    fn every_reason_is_transient_or_permanent_on_purpose() {
        use Retry::*;
        let table = [
            ("FeeTooLow", Permanent),
            ("BadNonce", Permanent),
            ("NotEnoughFunds", Transient),
            ("ConflictingNonceInMempool", Transient),
            ("TooMuchChaining", Transient),
            ("SignatureValidation", Permanent),
            ("NoSuchContract", Transient),
            ("NoSuchPublicFunction", Permanent),
            ("BadFunctionArgument", Permanent),
            ("ContractAlreadyExists", Permanent),
            ("BadTransactionVersion", Permanent),
            ("Deserialization", Permanent),
            ("NoEstimateAvailable", Transient),
            ("EstimatorError", Transient),
            ("ServerError", Transient),
            (Rejection::MALFORMED, Permanent),
            ("SomethingNew", Permanent),
        ];
        for (reason, want) in table {
            for data in [
                None,
                Some(serde_json::Value::Null),
                Some(serde_json::json!({"expected": 200, "actual": 1})),
            ] {
                let e = rejection(reason, data.clone());
                let Error::Rejected(r) = &e else {
                    unreachable!()
                };
                assert_eq!(r.retry(), want, "{reason} with {data:?}");
                assert_eq!(e.is_transient(), want == Transient, "{reason}");
                assert!(e.to_string().contains(reason), "{e}");
            }
        }
        assert!(!Error::BurnOpsUnsupported {
            status: 404,
            body: String::new()
        }
        .is_transient());
        assert!(Error::NoEstimate.is_transient());
    }

    #[test]
    fn reason_data_fields_sit_inside_reason_data() {
        let r = Rejection {
            reason: "FeeTooLow".into(),
            reason_data: Some(serde_json::json!({"expected": 180, "actual": 1})),
        };
        assert_eq!(r.reason_data_u64("expected"), Some(180));
        assert_eq!(r.reason_data_u64("nope"), None);
        let bare = Rejection {
            reason: "TooMuchChaining".into(),
            reason_data: None,
        };
        assert_eq!(bare.reason_data_u64("expected"), None);
        assert_eq!(bare.to_string(), "transaction rejected: TooMuchChaining");
    }
}
