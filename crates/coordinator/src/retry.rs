//! What the contract shows of an op's mint or burn ([`contract_effect`], the
//! check the loop makes before it calls a mint `done` or pays a burn), and
//! what the operator's `queue retry` may do with an op ([`retry_decision`]):
//! a failed op whose mint or burn is final moves on from there (never a
//! second burn), one with none on the chain is signed again, and one whose
//! state the chains do not settle yet is refused with the reason.

use bitcoin::OutPoint;
use bitcoin_node_client::BitcoinNode;
use peg_ops::{contract, PegOp};
use peg_queue::{OpEvent, OpState, QueuedOp};
use stacks_node_client::StacksNode;
use stacks_wire::{ContractId, PrincipalData, StacksNetwork, Value};

/// What the contract shows of an op's mint (`get-mint`) or burn (`get-burn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Visible at the final block, for the op's amount and principal.
    Final,
    /// Visible at the tip only: not final yet.
    AtTip,
    /// Not visible at the tip.
    Absent,
    /// Recorded for another amount or principal: the contract was made to
    /// mint or burn something else for this txid.
    Mismatch(String),
}

/// Why the contract's record of an op could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stacks-node failed or refused.
    #[error("stacks node: {0}")]
    Stacks(#[from] stacks_node_client::Error),
    /// The Bitcoin node failed or refused.
    #[error("bitcoin node: {0}")]
    Bitcoin(#[from] bitcoin_node_client::Error),
    /// An answer or an op that cannot be read (not a record, a request
    /// whose requester cannot be recovered).
    #[error("{0}")]
    Invalid(String),
}

/// Where and as whom the contract is read.
#[derive(Debug, Clone)]
pub struct ContractReader<'a> {
    /// The sBTC contract.
    pub contract: &'a ContractId,
    /// The caller of the read-only functions (the coordinator's address).
    pub sender: &'a PrincipalData,
    /// The Stacks network (a request's requester is recovered for it).
    pub network: StacksNetwork,
}

/// Returns the Stacks block whose state is final: `confirmations − 1` below
/// the tip (`None`: the chain is not that long).
///
/// # Errors
/// The node's.
pub fn final_block<S: StacksNode + ?Sized>(
    stacks: &S,
    confirmations: u32,
) -> Result<Option<[u8; 32]>, stacks_node_client::Error> {
    stacks.block_at_depth(confirmations.saturating_sub(1))
}

/// Reads what the contract shows of `op`'s mint or burn: [`Effect::Final`]
/// when visible at `final_block` for the op's amount and principal (a
/// mint's recipient, a burn's requester), else whether the tip shows it.
///
/// # Errors
/// Node failures, answers that are no record, a requester that cannot be
/// recovered from the request's signature.
pub fn contract_effect<S: StacksNode + ?Sized>(
    stacks: &S,
    reader: &ContractReader<'_>,
    final_block: Option<&[u8; 32]>,
    op: &PegOp,
) -> Result<Effect, ReadError> {
    let (function, principal) = match op {
        PegOp::PegIn(p) => (contract::GET_MINT, p.recipient.clone()),
        PegOp::PegOutRequest(r) => (
            contract::GET_BURN,
            PrincipalData::Standard(
                r.requester(reader.network)
                    .map_err(|e| ReadError::Invalid(format!("requester: {e}")))?,
            ),
        ),
    };
    let args = [contract::txid_arg(&op.txid())];
    let decode = |v: Value| {
        contract::decode_record(&v).map_err(|e| ReadError::Invalid(format!("{function}: {e}")))
    };
    if let Some(block) = final_block {
        let v = stacks.call_read_at(reader.contract, function, &args, reader.sender, block)?;
        if let Some(record) = decode(v)? {
            if record.amount != op.amount().to_sat() || record.principal != principal {
                return Ok(Effect::Mismatch(format!(
                    "{function} at Stacks block {} shows {} sats for {}, the op is {} for {principal}",
                    hex::encode(block),
                    record.amount,
                    record.principal,
                    op.amount()
                )));
            }
            return Ok(Effect::Final);
        }
    }
    let v = stacks.call_read(reader.contract, function, &args, reader.sender)?;
    Ok(match decode(v)? {
        Some(_) => Effect::AtTip,
        None => Effect::Absent,
    })
}

/// What `queue retry` does with an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Move the op to this state.
    To(OpState),
    /// Leave it as it is, for this reason.
    Refused(String),
}

/// Decides what `queue retry` does with `q` (its recorded `history` too):
///
/// - a rejected op goes back to validation (`detected`): nothing was done;
/// - a failed peg-in whose mint is final is `done`; with no mint at the tip
///   it goes back to `accepted` (checked again, then minted);
/// - a failed peg-out request whose burn is final, for its amount and
///   requester, moves to `burn_confirmed` (paid, never burned again); with no
///   burn at the tip it goes back to `accepted`; either only while the
///   request's output 2 (the fee output every fulfilment spends) is unspent,
///   mempool included: a spent one means it was paid, or can never be;
/// - a mint or burn visible at the tip but not final, a record for another
///   amount or principal, an op a refund was signed for, and every other
///   state are refused.
///
/// # Errors
/// Node failures and unreadable answers: nothing is decided.
pub fn retry_decision<S: StacksNode + ?Sized, B: BitcoinNode + ?Sized>(
    stacks: &S,
    bitcoin: &B,
    reader: &ContractReader<'_>,
    stacks_confirmations: u32,
    q: &QueuedOp,
    history: &[OpEvent],
) -> Result<RetryDecision, ReadError> {
    let txid = q.op.txid();
    match &q.state {
        OpState::Rejected { .. } => return Ok(RetryDecision::To(OpState::Detected)),
        OpState::Failed { .. } => {}
        OpState::Refunded => {
            return Ok(RetryDecision::Refused(format!(
                "{txid} is refunded: terminal, never retried nor minted (only rejected or failed operations are retried by hand)"
            )))
        }
        other => {
            return Ok(RetryDecision::Refused(format!(
                "{txid} is {other}; only rejected or failed operations are retried by hand"
            )))
        }
    }
    if let Some(e) = history.iter().rev().find(|e| e.state == "refund_signed") {
        let refund = e.bitcoin_txid.map(|t| t.to_string()).unwrap_or_default();
        return Ok(RetryDecision::Refused(format!(
            "a refund ({refund}) was signed for {txid}: it is not minted again; see where the refund stands on Bitcoin"
        )));
    }
    let what = match q.op {
        PegOp::PegIn(_) => "mint",
        PegOp::PegOutRequest(_) => "burn",
    };
    let block = final_block(stacks, stacks_confirmations)?;
    let effect = contract_effect(stacks, reader, block.as_ref(), &q.op)?;
    let effect = match effect {
        Effect::Mismatch(why) => {
            return Ok(RetryDecision::Refused(format!(
                "the contract's {what} record does not match the op: {why}"
            )))
        }
        Effect::AtTip => {
            return Ok(RetryDecision::Refused(format!(
                "the {what} of {txid} is on the Stacks chain but not final: wait for {stacks_confirmations} confirmations (confirmations.stacks), then retry"
            )))
        }
        e => e,
    };
    if let PegOp::PegOutRequest(r) = &q.op {
        let fee_output = OutPoint::new(r.txid, 2);
        if bitcoin.get_tx_out(&fee_output, true)?.is_none() {
            return Ok(RetryDecision::Refused(format!(
                "output 2 of {txid} ({fee_output}) is spent: the request was already paid or its fee output is gone; not retried"
            )));
        }
    }
    Ok(RetryDecision::To(match (effect, &q.op) {
        (Effect::Final, PegOp::PegIn(_)) => OpState::Done,
        (Effect::Final, PegOp::PegOutRequest(_)) => OpState::BurnConfirmed,
        _ => OpState::Accepted,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        allowed_principal, contract_id, peg_in, peg_out, wallet_address, MockBitcoinNode,
        MockStacksNode, ALLOWED_BTC, FINAL_BLOCK,
    };
    use bitcoin::{Amount, TxOut};
    use bitcoin_node_client::Utxo;

    /// What the contract shows for the op in a test.
    #[derive(Clone, Copy)]
    enum Chain {
        /// Nothing.
        Absent,
        /// At the tip only.
        AtTip,
        /// At the final block, with this amount.
        Final(u64),
    }

    fn record(amount: u64, principal: PrincipalData) -> Value {
        Value::Optional(Some(Box::new(
            Value::tuple([
                ("amount", Value::UInt(u128::from(amount))),
                ("principal", Value::Principal(principal)),
            ])
            .unwrap(),
        )))
    }

    fn stacks(chain: Chain, principal: PrincipalData) -> MockStacksNode {
        let mut m = MockStacksNode::new();
        m.expect_block_at_depth().returning(|d| {
            assert_eq!(d, 2, "final at confirmations − 1 below the tip");
            Ok(Some(FINAL_BLOCK))
        });
        let p = principal.clone();
        m.expect_call_read_at().returning(move |_, f, _, _, tip| {
            assert!(f == contract::GET_MINT || f == contract::GET_BURN);
            assert_eq!(*tip, FINAL_BLOCK);
            Ok(match chain {
                Chain::Final(a) => record(a, p.clone()),
                _ => Value::Optional(None),
            })
        });
        m.expect_call_read().returning(move |_, _, _, _| {
            Ok(match chain {
                Chain::Absent => Value::Optional(None),
                Chain::AtTip | Chain::Final(_) => record(1, principal.clone()),
            })
        });
        m
    }

    fn bitcoin(output_2_unspent: bool, expect_calls: usize) -> MockBitcoinNode {
        let mut m = MockBitcoinNode::new();
        m.expect_get_tx_out()
            .times(expect_calls)
            .returning(move |o, mempool| {
                assert_eq!(o.vout, 2, "the request's fee output");
                assert!(mempool, "a spend in the mempool counts");
                Ok(output_2_unspent.then(|| Utxo {
                    outpoint: *o,
                    txout: TxOut {
                        value: Amount::from_sat(5_000),
                        script_pubkey: bitcoin::ScriptBuf::new(),
                    },
                    confirmations: 3,
                }))
            });
        m
    }

    fn failed(op: PegOp) -> QueuedOp {
        QueuedOp {
            op,
            state: OpState::Failed {
                reason: "operator: stuck".into(),
            },
            attempts: 0,
            last_error: None,
            waiting: None,
        }
    }

    fn decide(s: &MockStacksNode, b: &MockBitcoinNode, q: &QueuedOp) -> RetryDecision {
        decide_with(s, b, q, &[])
    }

    fn decide_with(
        s: &MockStacksNode,
        b: &MockBitcoinNode,
        q: &QueuedOp,
        history: &[OpEvent],
    ) -> RetryDecision {
        let contract = contract_id();
        let sender = PrincipalData::Standard(wallet_address());
        let reader = ContractReader {
            contract: &contract,
            sender: &sender,
            network: StacksNetwork::Testnet,
        };
        retry_decision(s, b, &reader, 3, q, history).unwrap()
    }

    fn refused(d: &RetryDecision, needle: &str) {
        match d {
            RetryDecision::Refused(why) => assert!(why.contains(needle), "{why}"),
            RetryDecision::To(s) => panic!("moved to {s}, expected a refusal with {needle:?}"),
        }
    }

    const AMOUNT: u64 = 20_000_000;

    #[test]
    fn a_refunded_peg_in_is_never_retried() {
        let mut q = failed(peg_in(2, 5, allowed_principal(), AMOUNT));
        q.state = OpState::Refunded;
        // Decided without reading a node: the mocks expect no call.
        let d = decide(&MockStacksNode::new(), &MockBitcoinNode::new(), &q);
        refused(&d, "refunded: terminal");
    }

    #[test]
    fn a_failed_request_whose_burn_is_final_is_paid_not_burned_again() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let d = decide(
            &stacks(Chain::Final(AMOUNT), allowed_principal()),
            &bitcoin(true, 1),
            &q,
        );
        assert_eq!(d, RetryDecision::To(OpState::BurnConfirmed));
    }

    #[test]
    fn a_failed_request_with_no_burn_is_signed_again() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let d = decide(
            &stacks(Chain::Absent, allowed_principal()),
            &bitcoin(true, 1),
            &q,
        );
        assert_eq!(d, RetryDecision::To(OpState::Accepted));
    }

    #[test]
    fn a_burn_not_final_yet_is_waited_for() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let d = decide(
            &stacks(Chain::AtTip, allowed_principal()),
            &bitcoin(true, 0),
            &q,
        );
        refused(&d, "wait for 3 confirmations");
    }

    #[test]
    fn a_spent_fee_output_is_refused_burned_or_not() {
        for chain in [Chain::Final(AMOUNT), Chain::Absent] {
            let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
            let d = decide(&stacks(chain, allowed_principal()), &bitcoin(false, 1), &q);
            refused(&d, "already paid or its fee output is gone");
        }
    }

    #[test]
    fn a_burn_recorded_for_another_amount_or_requester_is_refused() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let d = decide(
            &stacks(Chain::Final(AMOUNT - 1), allowed_principal()),
            &bitcoin(true, 0),
            &q,
        );
        refused(&d, "does not match");
        let d = decide(
            &stacks(Chain::Final(AMOUNT), crate::testing::stranger_principal()),
            &bitcoin(true, 0),
            &q,
        );
        refused(&d, "does not match");
    }

    #[test]
    fn a_failed_peg_in_minted_and_final_is_done_else_minted_again() {
        let q = failed(peg_in(2, 5, allowed_principal(), AMOUNT));
        // No Bitcoin read for a peg-in.
        let d = decide(
            &stacks(Chain::Final(AMOUNT), allowed_principal()),
            &bitcoin(true, 0),
            &q,
        );
        assert_eq!(d, RetryDecision::To(OpState::Done));
        let d = decide(
            &stacks(Chain::Absent, allowed_principal()),
            &bitcoin(true, 0),
            &q,
        );
        assert_eq!(d, RetryDecision::To(OpState::Accepted));
        let d = decide(
            &stacks(Chain::AtTip, allowed_principal()),
            &bitcoin(true, 0),
            &q,
        );
        refused(&d, "mint of");
        let d = decide(
            &stacks(Chain::Final(AMOUNT), crate::testing::stranger_principal()),
            &bitcoin(true, 0),
            &q,
        );
        refused(&d, "does not match");
    }

    #[test]
    fn a_peg_in_with_a_signed_refund_is_not_retried() {
        let q = failed(peg_in(2, 5, allowed_principal(), AMOUNT));
        let refund = OpEvent {
            txid: q.op.txid(),
            seq: 3,
            at_unix: 0,
            state: "refund_signed".into(),
            stacks_txid: None,
            bitcoin_txid: Some(crate::testing::txid(9)),
            reason: None,
        };
        let d = decide_with(
            &MockStacksNode::new(),
            &MockBitcoinNode::new(),
            &q,
            &[refund],
        );
        refused(&d, "a refund");
    }

    #[test]
    fn rejected_ops_go_back_to_validation_and_others_are_refused_without_node_reads() {
        let mut q = failed(peg_in(2, 5, allowed_principal(), AMOUNT));
        q.state = OpState::Rejected {
            reason: "not on the allowlist".into(),
        };
        let (s, b) = (MockStacksNode::new(), MockBitcoinNode::new());
        assert_eq!(decide(&s, &b, &q), RetryDecision::To(OpState::Detected));
        for state in [
            OpState::Accepted,
            OpState::BurnConfirmed,
            OpState::Done,
            OpState::Refunded,
        ] {
            q.state = state;
            refused(&decide(&s, &b, &q), "only rejected or failed");
        }
    }

    #[test]
    fn node_failures_decide_nothing() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let mut s = MockStacksNode::new();
        s.expect_block_at_depth()
            .returning(|_| Err(stacks_node_client::Error::Timeout("test".into())));
        let contract = contract_id();
        let sender = PrincipalData::Standard(wallet_address());
        let reader = ContractReader {
            contract: &contract,
            sender: &sender,
            network: StacksNetwork::Testnet,
        };
        let e = retry_decision(&s, &MockBitcoinNode::new(), &reader, 3, &q, &[]).unwrap_err();
        assert!(matches!(e, ReadError::Stacks(_)), "{e}");
    }

    #[test]
    fn a_chain_shorter_than_the_depth_reads_the_tip_only_and_garbage_is_an_error() {
        let q = failed(peg_out(1, 5, ALLOWED_BTC, AMOUNT));
        let contract = contract_id();
        let sender = PrincipalData::Standard(wallet_address());
        let reader = ContractReader {
            contract: &contract,
            sender: &sender,
            network: StacksNetwork::Testnet,
        };
        let mut s = MockStacksNode::new();
        s.expect_block_at_depth().returning(|_| Ok(None));
        s.expect_call_read_at().never();
        s.expect_call_read()
            .returning(|_, _, _, _| Ok(record(AMOUNT, allowed_principal())));
        let d = retry_decision(&s, &MockBitcoinNode::new(), &reader, 3, &q, &[]).unwrap();
        refused(&d, "not final");
        let mut s = MockStacksNode::new();
        s.expect_block_at_depth()
            .returning(|_| Ok(Some(FINAL_BLOCK)));
        s.expect_call_read_at()
            .returning(|_, _, _, _, _| Ok(Value::UInt(7)));
        let e = retry_decision(&s, &MockBitcoinNode::new(), &reader, 3, &q, &[]).unwrap_err();
        assert!(
            matches!(&e, ReadError::Invalid(m) if m.contains("get-burn")),
            "{e}"
        );
    }
}
