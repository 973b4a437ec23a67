//! Refunds of rejected peg-ins (issue #14).
//!
//! `coordinator-cli refund TXID` calls [`StacksCoordinator::request_refund`]:
//! only a peg-in that is `rejected`, whose mint rule still fails, that was
//! never minted (`get-mint` at the Stacks tip and at the final block) and
//! whose output 1 is unspent moves to `refund_requested`. The loop (or the
//! one-off command, through [`StacksCoordinator::process_one`]) then builds
//! the refund — the peg-in's output 1, signed with the key whose address it
//! pays, back to exactly the scriptPubKey of the output the peg-in's input 0
//! spent, less the fee — checks it with [`peg_rules::check_refund`], asks
//! the signers with [`peg_rules::SignPayload::Refund`] (carrying the funding
//! transaction), stores `refund_signed` before anything is broadcast, then
//! `refund_broadcast`, then `refunded` after `fulfillment_confirmations`.
//! A restart re-broadcasts the stored bytes; nothing is signed anew for a
//! stored refund. Right before broadcast the peg-in is checked again to be
//! never minted.

use std::collections::HashSet;

use bitcoin::{OutPoint, Transaction, Txid};
use bitcoin_node_client::BitcoinNode;
use fee_wallet::{BitcoinWallet, StacksWallet};
use frost_coordinator::FrostCoordinator;
use log::{error, info, warn};
use peg_ops::{contract, PegInOp, PegOp};
use peg_queue::{OpState, PegQueue};
use stacks_node_client::StacksNode;
use stacks_wire::PrincipalData;

use crate::{Error, OpSource, StacksCoordinator, Step, StepError};

impl<Q, S, B, SW, BW, F, O> StacksCoordinator<Q, S, B, SW, BW, F, O>
where
    Q: PegQueue,
    S: StacksNode,
    B: BitcoinNode,
    SW: StacksWallet,
    BW: BitcoinWallet,
    F: FrostCoordinator,
    O: OpSource,
{
    /// Asks for the refund of the rejected peg-in `txid`, on behalf of `who`
    /// for `why` (both logged): moves it to `refund_requested`, for the loop
    /// (or [`StacksCoordinator::process_one`]) to build and sign.
    ///
    /// # Errors
    /// [`Error::UnknownOp`]; [`Error::NotRefundable`] when it is no peg-in,
    /// not `rejected`, passes the mint rule now, was minted, or its output 1
    /// is spent, or when the nodes cannot tell; [`Error::Queue`].
    pub fn request_refund(&mut self, txid: &Txid, who: &str, why: &str) -> Result<(), Error> {
        let refuse = |why: String| Error::NotRefundable(*txid, why);
        let q = self
            .c
            .queue
            .get(txid)
            .map_err(Error::Queue)?
            .ok_or(Error::UnknownOp(*txid))?;
        let PegOp::PegIn(op) = &q.op else {
            return Err(refuse(
                "it is a peg-out request; only peg-ins are refunded".into(),
            ));
        };
        let rejected = match &q.state {
            OpState::Rejected { reason } => reason.clone(),
            OpState::Refunded => return Err(refuse("it is refunded already".into())),
            s @ (OpState::RefundRequested
            | OpState::RefundSigned { .. }
            | OpState::RefundBroadcast { .. }) => {
                return Err(refuse(format!("its refund is under way ({})", s.name())))
            }
            s => {
                return Err(refuse(format!(
                    "it is {s}; only a rejected peg-in is refunded"
                )))
            }
        };
        let node = |e: StepError| match e {
            StepError::Fatal(e) => Error::Queue(e),
            StepError::Retry { message, .. } => {
                Error::NotRefundable(*txid, format!("cannot check it now: {message}"))
            }
        };
        let tip = self
            .c
            .source
            .tip_height()
            .map_err(|e| refuse(format!("cannot read the chain tip: {}", e.message)))?;
        self.new_round();
        match self.check(&q.op, tip, false).map_err(node)? {
            peg_rules::Verdict::Reject(_) => {}
            peg_rules::Verdict::Accept | peg_rules::Verdict::Wait(_) => {
                return Err(refuse(
                    "it passes the mint rule now: `queue retry` mints it, a refund would be refused by the signers".into(),
                ))
            }
        }
        if let Some(minted) = self.minted(op).map_err(node)? {
            return Err(refuse(minted));
        }
        let own = OutPoint::new(*txid, 1);
        if self
            .c
            .bitcoin
            .get_tx_out(&own, true)
            .map_err(|e| node(e.into()))?
            .is_none()
        {
            return Err(refuse(format!(
                "its output 1 ({own}) is spent: nothing to refund"
            )));
        }
        self.c
            .queue
            .set_state(txid, &OpState::RefundRequested)
            .map_err(Error::Queue)?;
        info!(
            "peg-in {txid}: refund of {} requested by {who} ({why}); it was rejected: {rejected}",
            op.amount
        );
        Ok(())
    }

    /// Why `op` counts as minted (`get-mint` shows a record at the Stacks
    /// tip or at the final block), or `None`.
    fn minted(&mut self, op: &PegInOp) -> Result<Option<String>, StepError> {
        let sender = PrincipalData::Standard(self.c.stacks_wallet.address());
        let args = [contract::txid_arg(&op.txid)];
        let decode = |v| {
            contract::decode_record(&v)
                .map_err(|e| StepError::retry(format!("{}: {e}", contract::GET_MINT), false))
        };
        let at_tip =
            self.c
                .stacks
                .call_read(&self.settings.contract, contract::GET_MINT, &args, &sender)?;
        if let Some(r) = decode(at_tip)? {
            return Ok(Some(format!(
                "it was minted ({} sats to {}) at the Stacks tip",
                r.amount, r.principal
            )));
        }
        if let Some(block) = self.final_block()? {
            let v = self.c.stacks.call_read_at(
                &self.settings.contract,
                contract::GET_MINT,
                &args,
                &sender,
                &block,
            )?;
            if let Some(r) = decode(v)? {
                return Ok(Some(format!(
                    "it was minted ({} sats to {}) at the final Stacks block",
                    r.amount, r.principal
                )));
            }
        }
        Ok(None)
    }

    /// Builds, checks and has the signers sign the refund of `op`.
    pub(crate) fn build_refund(&mut self, op: &PegInOp) -> Result<Step, StepError> {
        if let Some(minted) = self.minted(op)? {
            error!("peg-in {}: not refunding: {minted}", op.txid);
            return Ok(Step::Moved(OpState::Failed {
                reason: format!("refund requested, but {minted}: operator attention"),
            }));
        }
        let own = OutPoint::new(op.txid, 1);
        let Some(coin) = self.c.bitcoin.get_tx_out(&own, true)? else {
            return Ok(Step::Moved(OpState::Failed {
                reason: format!("refund requested, but its output {own} is spent"),
            }));
        };
        let peg_in_tx = self
            .c
            .bitcoin
            .get_raw_transaction(&op.txid)?
            .ok_or_else(|| StepError::retry(format!("the node does not know {}", op.txid), true))?
            .tx;
        let Some(funding_txid) = peg_in_tx.input.first().map(|i| i.previous_output.txid) else {
            return Ok(Step::Moved(OpState::Failed {
                reason: "the peg-in has no input: nowhere to refund it".into(),
            }));
        };
        let funding = self
            .c
            .bitcoin
            .get_raw_transaction(&funding_txid)?
            .ok_or_else(|| {
                StepError::retry(
                    format!("the node does not know {funding_txid}, the transaction the peg-in's input 0 spends (is -txindex on?)"),
                    false,
                )
            })?
            .tx;
        let to = match peg_rules::refund_script(&peg_in_tx, &funding) {
            Ok(s) => s,
            Err(rule) => {
                return Ok(Step::Moved(OpState::Failed {
                    reason: format!("cannot refund: {rule}"),
                }))
            }
        };
        let scripts = self.peg_wallet_scripts()?;
        let Some(key) = scripts
            .iter()
            .find(|(s, _)| *s == coin.txout.script_pubkey)
            .map(|(_, k)| *k)
        else {
            return Ok(Step::Moved(OpState::Failed {
                reason: format!(
                    "its output 1 pays {:?}, the address of no key we hold",
                    coin.txout.script_pubkey
                ),
            }));
        };
        let fee_rate = self.fee_rate()?;
        let unsigned = self.c.bitcoin_wallet.build_refund(&coin, &to, fee_rate)?;
        if let Err(rule) = peg_rules::check_refund(
            &self.checks.policy,
            op,
            &peg_in_tx,
            &funding,
            &unsigned.tx,
            &unsigned.prevouts,
        ) {
            error!("peg-in {}: refusing an unsafe refund: {rule}", op.txid);
            return Ok(Step::Moved(OpState::Failed {
                reason: format!("wallet built an unsafe refund: {rule}"),
            }));
        }
        let items: Vec<frost_coordinator::SignItem> = unsigned
            .sighashes
            .iter()
            .map(|sighash| frost_coordinator::SignItem {
                key,
                message: frost_coordinator::ToSign::Taproot { sighash: *sighash },
            })
            .collect();
        let payload = peg_rules::SignPayload::Refund {
            peg_in: op.txid,
            funding,
            tx: unsigned.tx.clone(),
            prevouts: unsigned.prevouts.clone(),
        }
        .encode();
        info!(
            "peg-in {}: refund {} built: {} back to {:?}; signing",
            op.txid,
            unsigned.tx.compute_txid(),
            unsigned
                .tx
                .output
                .first()
                .map(|o| o.value)
                .unwrap_or_default(),
            unsigned.tx.output.first().map(|o| o.script_pubkey.clone())
        );
        Ok(
            self.defer_signing(payload, items, unsigned, "refund", |tx| {
                OpState::RefundSigned { tx }
            }),
        )
    }

    /// Broadcasts the stored refund (the same bytes, also after a restart),
    /// after checking once more that the peg-in was never minted.
    pub(crate) fn broadcast_refund(
        &mut self,
        op: &PegInOp,
        tx: &Transaction,
    ) -> Result<Step, StepError> {
        if let Some(minted) = self.minted(op)? {
            error!("peg-in {}: not broadcasting its refund: {minted}", op.txid);
            return Ok(Step::Moved(OpState::Failed {
                reason: format!("refund signed, not broadcast: {minted}: operator attention"),
            }));
        }
        self.record_own_spend(tx)?;
        let txid = tx.compute_txid();
        match self.c.bitcoin.send_raw_transaction(tx) {
            Ok(_) => Ok(Step::Moved(OpState::RefundBroadcast { tx: tx.clone() })),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => {
                if self.c.bitcoin.get_raw_transaction(&txid)?.is_some() {
                    return Ok(Step::Moved(OpState::RefundBroadcast { tx: tx.clone() }));
                }
                let own = OutPoint::new(op.txid, 1);
                if self.c.bitcoin.get_tx_out(&own, true)?.is_none() {
                    return Ok(Step::Moved(OpState::Failed {
                        reason: format!(
                            "refund {txid} refused ({e}) and output {own} is spent by another transaction"
                        ),
                    }));
                }
                // Refused for good (fee policy): build a new one. Every
                // refund spends output 1, so two can never both confirm.
                warn!("refund {txid} refused: {e}; building a new one");
                Ok(Step::Moved(OpState::RefundRequested))
            }
        }
    }

    /// `refunded` once the refund has the configured confirmations; the
    /// stored bytes again when the node forgot them.
    pub(crate) fn confirm_refund(
        &mut self,
        op: &PegInOp,
        tx: &Transaction,
    ) -> Result<Step, StepError> {
        let txid = tx.compute_txid();
        match self.c.bitcoin.get_raw_transaction(&txid)? {
            Some(status) if status.confirmations >= self.settings.fulfillment_confirmations => {
                info!(
                    "peg-in {}: refunded by {txid} ({} confirmations)",
                    op.txid, status.confirmations
                );
                Ok(Step::Moved(OpState::Refunded))
            }
            Some(status) => Ok(Step::Wait(format!(
                "refund {txid}: {} of {} confirmations",
                status.confirmations, self.settings.fulfillment_confirmations
            ))),
            None => {
                warn!("refund {txid} is unknown to the node; rebroadcasting");
                self.broadcast_refund(op, tx).map(|step| match step {
                    Step::Moved(OpState::RefundBroadcast { .. }) => {
                        Step::Wait(format!("refund {txid} rebroadcast"))
                    }
                    other => other,
                })
            }
        }
    }

    /// Of `coins`, the output 1 of every peg-in the queue holds that is not
    /// `done`: owed to its depositor (as sBTC, or a refund), never spent by
    /// a fulfilment or a sweep — a peg-in whose output 1 is spent can never
    /// be minted (`peg-in.spent`), nor refunded.
    pub(crate) fn owed_peg_in_coins(
        &self,
        coins: &[bitcoin_node_client::Utxo],
    ) -> Result<HashSet<OutPoint>, StepError> {
        let mut owed = HashSet::new();
        for u in coins.iter().filter(|u| u.outpoint.vout == 1) {
            if let Some(q) = self.c.queue.get(&u.outpoint.txid)? {
                if matches!(q.op, PegOp::PegIn(_)) && q.state != OpState::Done {
                    owed.insert(u.outpoint);
                }
            }
        }
        Ok(owed)
    }
}
