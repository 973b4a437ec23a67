//! The persistent record of every peg operation and the step it has reached,
//! as the [`PegQueue`] trait.
//!
//! The queue never calls a node: the coordinator feeds it the operations it
//! observes and the outcome of every step. Each operation walks the states of
//! [`OpState`]; a step's outcome is stored before the next step starts, so a
//! restarted coordinator resumes where it stopped and never repeats a side
//! effect (it re-broadcasts stored bytes instead of signing anew).
//!
//! With the `mock` feature the crate exports `MockPegQueue`.

pub use peg_ops;
pub use sqlite::SqlitePegQueue;

mod sqlite;

use std::fmt;

use bitcoin::{Transaction, Txid};
use peg_ops::{BurnHeight, PegOp, SignedStacksTx};
use serde::{Deserialize, Serialize};

/// The step an operation has reached.
///
/// ```text
/// Detected ─▶ Accepted ─▶ StacksTxSigned ─▶ StacksTxBroadcast ─┬▶ Done                 (peg-in)
///    │                                                          └▶ BurnConfirmed ─▶ BitcoinTxSigned
///    └▶ Rejected(reason)                                             ─▶ BitcoinTxBroadcast ─▶ Done (peg-out)
/// any state after Accepted ─▶ Failed(reason): acted on, needs the operator
/// Rejected peg-in ─▶ RefundRequested ─▶ RefundSigned ─▶ RefundBroadcast ─▶ Refunded (operator's `refund`)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OpState {
    /// Seen on chain, not yet validated.
    Detected,
    /// Validated; nothing done yet.
    Accepted,
    /// Refused before any side effect.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The mint or burn is signed and stored, perhaps not yet broadcast.
    StacksTxSigned {
        /// The transaction.
        tx: SignedStacksTx,
    },
    /// The mint or burn was accepted by the node; waiting for it to take effect.
    StacksTxBroadcast {
        /// The transaction.
        tx: SignedStacksTx,
    },
    /// Peg-out only: the burn took effect on chain; BTC may now be released.
    BurnConfirmed,
    /// Peg-out only: the fulfilment is signed and stored.
    BitcoinTxSigned {
        /// The transaction.
        tx: Transaction,
    },
    /// Peg-out only: the fulfilment was broadcast; waiting for confirmations.
    BitcoinTxBroadcast {
        /// The transaction.
        tx: Transaction,
    },
    /// Finished: minted, or burned and paid.
    Done,
    /// Peg-in only: the operator asked for the refund of this rejected,
    /// never-minted peg-in; the coordinator builds it and asks the signers.
    RefundRequested,
    /// Peg-in only: the refund is signed and stored, perhaps not yet broadcast.
    RefundSigned {
        /// The transaction.
        tx: Transaction,
    },
    /// Peg-in only: the refund was broadcast; waiting for confirmations.
    RefundBroadcast {
        /// The transaction.
        tx: Transaction,
    },
    /// Peg-in only, terminal: the BTC went back to the depositor; the
    /// peg-in is never minted nor retried.
    Refunded,
    /// Acted on, then failed in a way the coordinator will not retry alone
    /// (a mint or burn that failed on chain, a reorg after acting). The
    /// operator decides.
    Failed {
        /// Why.
        reason: String,
    },
}

impl OpState {
    /// Returns the state's name, as the queue stores and `status` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            OpState::Detected => "detected",
            OpState::Accepted => "accepted",
            OpState::Rejected { .. } => "rejected",
            OpState::StacksTxSigned { .. } => "stacks_tx_signed",
            OpState::StacksTxBroadcast { .. } => "stacks_tx_broadcast",
            OpState::BurnConfirmed => "burn_confirmed",
            OpState::BitcoinTxSigned { .. } => "bitcoin_tx_signed",
            OpState::BitcoinTxBroadcast { .. } => "bitcoin_tx_broadcast",
            OpState::Done => "done",
            OpState::RefundRequested => "refund_requested",
            OpState::RefundSigned { .. } => "refund_signed",
            OpState::RefundBroadcast { .. } => "refund_broadcast",
            OpState::Refunded => "refunded",
            OpState::Failed { .. } => "failed",
        }
    }

    /// Returns whether the coordinator has nothing more to do with the op.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            OpState::Rejected { .. } | OpState::Done | OpState::Refunded | OpState::Failed { .. }
        )
    }

    /// Returns whether a side effect may already have happened on some chain.
    pub fn has_acted(&self) -> bool {
        !matches!(
            self,
            OpState::Detected
                | OpState::Accepted
                | OpState::Rejected { .. }
                | OpState::RefundRequested
        )
    }
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpState::Rejected { reason } | OpState::Failed { reason } => {
                write!(f, "{} ({reason})", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// An operation with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedOp {
    /// The operation as observed.
    pub op: PegOp,
    /// The step it has reached.
    pub state: OpState,
    /// How many times a step failed.
    pub attempts: u32,
    /// The last step failure, for the operator.
    pub last_error: Option<String>,
    /// Why the op is waiting now (a fee shortfall, signers' refusals), for
    /// the operator; not a failure. Cleared on progress.
    pub waiting: Option<String>,
}

/// What went wrong in the queue's storage. The coordinator stops on these:
/// without storage it cannot promise exactly-once processing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The storage failed.
    #[error("queue storage failed: {0}")]
    Storage(String),
    /// No op with that txid.
    #[error("no operation with txid {0}")]
    UnknownOp(Txid),
    /// The stored data could not be read back.
    #[error("queue data is corrupt: {0}")]
    Corrupt(String),
}

/// The persistent record of peg operations.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PegQueue {
    /// Stores the operations found in the block at `height` and marks the
    /// height scanned, in one transaction. An op already stored (same txid)
    /// is left as it is.
    fn record_scanned_block(&self, height: BurnHeight, ops: &[PegOp]) -> Result<(), Error>;

    /// Returns the last height recorded by [`PegQueue::record_scanned_block`].
    fn last_scanned_height(&self) -> Result<Option<BurnHeight>, Error>;

    /// Stores one operation outside a scan (a one-off command). Returns
    /// `false` if it was already stored.
    fn insert_op(&self, op: &PegOp) -> Result<bool, Error>;

    /// Returns the operations that are not terminal, oldest first (by block
    /// height, then position in the block).
    fn pending(&self) -> Result<Vec<QueuedOp>, Error>;

    /// Returns one operation.
    fn get(&self, txid: &Txid) -> Result<Option<QueuedOp>, Error>;

    /// Moves an operation to `state`, clearing its last error.
    fn set_state(&self, txid: &Txid, state: &OpState) -> Result<(), Error>;

    /// Moves several operations at once, in one transaction (a group commit:
    /// one fsync for a whole round of steps). Fails, storing nothing, if any
    /// txid is unknown.
    fn set_states(&self, moves: &[(Txid, OpState)]) -> Result<(), Error>;

    /// Records a failed step; returns the number of failures so far.
    fn record_failure(&self, txid: &Txid, error: &str) -> Result<u32, Error>;

    /// Forgets an op that nothing was done for yet (its block left the best
    /// chain). Returns `false`, changing nothing, if the op has been acted on.
    fn remove_unacted(&self, txid: &Txid) -> Result<bool, Error>;

    /// Moves the scan cursor back so heights after `height` are scanned
    /// again (`None`: from the configured start). Stored ops keep their state.
    fn rewind_scan(&self, height: Option<BurnHeight>) -> Result<(), Error>;

    /// Returns the highest nonce among the coordinator's Stacks transactions
    /// that are signed and not yet known to have taken effect (the "live"
    /// ones). Together with the node's confirmed nonce this gives the next
    /// nonce without reusing or skipping one across restarts.
    fn last_signed_stacks_nonce(&self) -> Result<Option<u64>, Error>;

    /// Returns a peg-out request other than `except` whose request signature
    /// has `digest` (`peg_rules::request_signature_digest`) and that was
    /// accepted for burning or went further (any state but `detected` and
    /// `rejected`): the request that signature already pays. A rejected copy
    /// does not use the signature up.
    fn signature_used_by(&self, digest: &[u8; 32], except: &Txid) -> Result<Option<Txid>, Error>;

    /// Returns the total amount of the peg-out requests accepted for burning
    /// (in any state but `detected` and `rejected`) at or after `since_unix`
    /// (Unix seconds): the outflow the daily limit counts.
    fn outflow_since(&self, since_unix: u64) -> Result<bitcoin::Amount, Error>;

    /// Records why the op waits (`None`: it no longer does), without counting
    /// an attempt; shown by `status` until the op moves.
    fn set_waiting(&self, txid: &Txid, why: Option<String>) -> Result<(), Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_and_acted_states() {
        assert!(!OpState::Detected.is_terminal());
        assert!(!OpState::Detected.has_acted());
        assert!(OpState::Rejected { reason: "x".into() }.is_terminal());
        assert!(!OpState::Rejected { reason: "x".into() }.has_acted());
        assert!(OpState::BurnConfirmed.has_acted());
        assert!(OpState::Done.is_terminal());
        assert!(OpState::Refunded.is_terminal());
        assert!(OpState::Refunded.has_acted());
        assert!(!OpState::RefundRequested.is_terminal());
        assert!(!OpState::RefundRequested.has_acted());
        assert_eq!(
            OpState::Failed {
                reason: "burn failed".into()
            }
            .to_string(),
            "failed (burn failed)"
        );
    }

    #[test]
    fn states_serialize_with_their_names() {
        let json = serde_json::to_value(OpState::BurnConfirmed).unwrap();
        assert_eq!(json["state"], "burn_confirmed");
        let back: OpState = serde_json::from_value(json).unwrap();
        assert_eq!(back, OpState::BurnConfirmed);
    }
}
