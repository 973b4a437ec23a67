//! The Bitcoin half: the peg wallet's address and peg-out fulfilments.
//!
//! A fulfilment, as the stacks-node parses it (op `!`):
//!
//! | | |
//! |---|---|
//! | input 0 | the request's output 2 (its fulfilment fee, paid to the peg wallet) |
//! | inputs 1.. | confirmed peg-wallet outputs, largest first, never another request's fee output |
//! | output 0 | `OP_RETURN magic ‖ '!' ‖ Stacks chain tip (32 bytes)` |
//! | output 1 | the request's recipient, exactly the requested amount |
//! | output 2 | change to the peg wallet, when above dust |
//!
//! Every input is a taproot key-path spend of the peg wallet signalling RBF.
//! The miner fee is the fee rate (the node's estimate within the configured
//! floor and cap) times the real vsize, computed with 64-byte signature
//! placeholders. The request's fulfilment fee pays it; a surplus goes to
//! change; a shortfall up to the configured subsidy is paid by the peg wallet,
//! beyond it the fulfilment waits for lower fees.

use std::collections::HashSet;

use bitcoin::secp256k1::{schnorr, PublicKey};
use bitcoin::{
    absolute, transaction, Address, Amount, FeeRate, Network, OutPoint, Sequence, Transaction,
    TxIn, TxOut, Witness,
};
use bitcoin_node_client::Utxo;
use peg_ops::PegOutRequestOp;
use peg_rules::{clamp_fee_rate_between, fulfilment_op_return, signed_vsize};

pub use peg_rules::peg_wallet_address;

use crate::{BitcoinWallet, Error, FulfillmentInputs, UnsignedFulfillment};

/// Fee policy for fulfilments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitcoinFeePolicy {
    /// Lowest fee rate (also used when the node has no estimate).
    pub floor: FeeRate,
    /// Highest fee rate.
    pub cap: FeeRate,
    /// Most the peg wallet adds to one fulfilment's fee beyond the user's fee.
    pub subsidy: Amount,
}

impl BitcoinFeePolicy {
    /// The fee part of the peg's shared policy (the signer set file's
    /// `[policy]`), so that the wallet builds what the signers accept.
    pub fn from_policy(policy: &peg_rules::Policy) -> Self {
        BitcoinFeePolicy {
            floor: policy.fee_floor,
            cap: policy.fee_cap,
            subsidy: policy.subsidy,
        }
    }

    /// The rate a transaction pays: `estimate` within floor and cap
    /// ([`peg_rules::clamp_fee_rate`]).
    fn rate(&self, estimate: Option<FeeRate>) -> FeeRate {
        clamp_fee_rate_between(self.floor, self.cap, estimate)
    }
}

/// Builds fulfilments that spend the peg wallet.
#[derive(Debug, Clone)]
pub struct PegWallet {
    network: Network,
    magic: [u8; 2],
    fees: BitcoinFeePolicy,
}

impl PegWallet {
    /// Creates the wallet for `network`, writing `magic` in the OP_RETURN
    /// (the stacks-node's `burnchain.magic_bytes`).
    pub fn new(network: Network, magic: [u8; 2], fees: BitcoinFeePolicy) -> Self {
        PegWallet {
            network,
            magic,
            fees,
        }
    }
}

/// The value of `coins`, saturating (a node's answer is outside data).
fn total<'a>(coins: impl Iterator<Item = &'a Utxo>) -> Amount {
    coins.fold(Amount::ZERO, |s, u| {
        s.checked_add(u.amount()).unwrap_or(Amount::MAX)
    })
}

fn fee_at(rate: FeeRate, vsize: u64) -> Result<Amount, Error> {
    rate.fee_vb(vsize)
        .ok_or_else(|| Error::Build(format!("fee overflow at {rate} for {vsize} vB")))
}

impl BitcoinWallet for PegWallet {
    fn peg_wallet_address(&self, aggregate_key: &PublicKey) -> Address {
        peg_wallet_address(aggregate_key, self.network)
    }

    fn build_fulfillment(
        &self,
        op: &PegOutRequestOp,
        aggregate_key: &PublicKey,
        inputs: &FulfillmentInputs,
    ) -> Result<UnsignedFulfillment, Error> {
        let peg_script = self.peg_wallet_address(aggregate_key).script_pubkey();
        let recipient = op
            .recipient
            .require_network(self.network)
            .ok_or_else(|| {
                Error::Build(format!(
                    "recipient {} is not a {} address",
                    op.recipient, self.network
                ))
            })?
            .script_pubkey();
        if op.amount < recipient.minimal_non_dust() {
            return Err(Error::Build(format!(
                "amount {} is below the recipient's dust limit",
                op.amount
            )));
        }

        // Input 0: the request's own fee output, at the address the request
        // paid (an older key's, after a rotation; the caller checked it is
        // one of ours).
        let fee_outpoint = OutPoint::new(op.txid, 2);
        let request_script = op.peg_wallet_address.script_pubkey();
        let fee_utxo = inputs
            .utxos
            .iter()
            .find(|u| u.outpoint == fee_outpoint && u.txout.script_pubkey == request_script)
            .ok_or(Error::MissingFeeUtxo)?;

        // Candidates: confirmed peg-wallet outputs that are no request's fee output.
        let reserved: HashSet<OutPoint> = inputs.reserved.iter().copied().collect();
        let mut candidates: Vec<&Utxo> = inputs
            .utxos
            .iter()
            .filter(|u| {
                u.outpoint != fee_outpoint
                    && u.txout.script_pubkey == peg_script
                    && u.confirmations >= 1
                    && !reserved.contains(&u.outpoint)
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.amount()
                .cmp(&a.amount())
                .then(a.outpoint.cmp(&b.outpoint))
        });
        let available = total(candidates.iter().copied());

        let rate = self.fees.rate(inputs.fee_rate);
        // What the fulfilment may pay the miner in all (`fulfilment.fee`):
        // the request's fee output plus the subsidy.
        let budget = fee_utxo
            .amount()
            .checked_add(self.fees.subsidy)
            .unwrap_or(Amount::MAX);
        let change_dust = peg_script.minimal_non_dust();

        let mut selected: Vec<&Utxo> = vec![fee_utxo];
        let mut next = candidates.into_iter();
        loop {
            let total_in = total(selected.iter().copied());
            let mut tx = Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: selected
                    .iter()
                    .map(|u| TxIn {
                        previous_output: u.outpoint,
                        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                        ..TxIn::default()
                    })
                    .collect(),
                output: vec![
                    TxOut {
                        value: Amount::ZERO,
                        script_pubkey: fulfilment_op_return(self.magic, &inputs.stacks_chain_tip),
                    },
                    TxOut {
                        value: op.amount,
                        script_pubkey: recipient.clone(),
                    },
                    TxOut {
                        value: Amount::ZERO,
                        script_pubkey: peg_script.clone(),
                    },
                ],
            };
            let fee_with_change = fee_at(rate, signed_vsize(&tx))?;
            let mut no_change = tx.clone();
            no_change.output.truncate(2);
            let vsize_without = signed_vsize(&no_change);
            let fee_without = fee_at(rate, vsize_without)?;

            // The user's fee pays the miner; the wallet may add up to the subsidy.
            if fee_without > budget {
                return Err(Error::FeeShortfall {
                    offered: fee_utxo.amount(),
                    required: fee_without,
                });
            }
            let prevouts = || selected.iter().map(|u| u.txout.clone()).collect::<Vec<_>>();

            // With change: the fee is the rate times the size.
            if fee_with_change <= budget {
                let change = op
                    .amount
                    .checked_add(fee_with_change)
                    .and_then(|spend| total_in.checked_sub(spend));
                if let Some(change) = change.filter(|c| *c >= change_dust) {
                    tx.output[2].value = change;
                    let prevouts = prevouts();
                    let sighashes = sighashes(&tx, &prevouts)?;
                    return Ok(UnsignedFulfillment {
                        tx,
                        prevouts,
                        sighashes,
                    });
                }
            }
            // Without: change that would be dust goes to the miner, as long
            // as the fee stays within the budget and the cap's rate.
            if let Some(fee) = total_in.checked_sub(op.amount) {
                let cap_fee = fee_at(self.fees.cap, vsize_without)?;
                if fee >= fee_without && fee <= budget && fee <= cap_fee {
                    let prevouts = prevouts();
                    let sighashes = sighashes(&no_change, &prevouts)?;
                    return Ok(UnsignedFulfillment {
                        tx: no_change,
                        prevouts,
                        sighashes,
                    });
                }
                if fee_with_change > budget && fee > budget {
                    // Too much to leave to the miner, too little budget
                    // for a change output; more coins only add to both.
                    return Err(Error::FeeShortfall {
                        offered: fee_utxo.amount(),
                        required: fee_with_change,
                    });
                }
            }
            match next.next() {
                Some(u) => selected.push(u),
                None => {
                    return Err(Error::InsufficientFunds {
                        needed: op.amount.checked_add(fee_without).unwrap_or(Amount::MAX),
                        available: available
                            .checked_add(fee_utxo.amount())
                            .unwrap_or(Amount::MAX),
                    })
                }
            }
        }
    }

    fn build_sweep(
        &self,
        coins: &[Utxo],
        to_key: &PublicKey,
        fee_rate: Option<FeeRate>,
    ) -> Result<UnsignedFulfillment, Error> {
        if coins.is_empty() {
            return Err(Error::Build("a sweep of no coins".into()));
        }
        let mut coins: Vec<&Utxo> = coins.iter().collect();
        // One order for the same coins: the same transaction (and txid) when
        // a sweep is rebuilt after a restart.
        coins.sort_by_key(|u| u.outpoint);
        coins.dedup_by_key(|u| u.outpoint);
        let to = self.peg_wallet_address(to_key).script_pubkey();
        let total = total(coins.iter().copied());
        let rate = self.fees.rate(fee_rate);
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: coins
                .iter()
                .map(|u| TxIn {
                    previous_output: u.outpoint,
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    ..TxIn::default()
                })
                .collect(),
            output: vec![TxOut {
                value: Amount::ZERO,
                script_pubkey: to.clone(),
            }],
        };
        let fee = fee_at(rate, signed_vsize(&tx))?;
        match total.checked_sub(fee) {
            Some(v) if v >= to.minimal_non_dust() => tx.output[0].value = v,
            _ => {
                return Err(Error::InsufficientFunds {
                    needed: fee
                        .checked_add(to.minimal_non_dust())
                        .unwrap_or(Amount::MAX),
                    available: total,
                })
            }
        }
        let prevouts: Vec<TxOut> = coins.iter().map(|u| u.txout.clone()).collect();
        let sighashes = sighashes(&tx, &prevouts)?;
        Ok(UnsignedFulfillment {
            tx,
            prevouts,
            sighashes,
        })
    }

    fn build_refund(
        &self,
        coin: &Utxo,
        to: &bitcoin::ScriptBuf,
        fee_rate: Option<FeeRate>,
    ) -> Result<UnsignedFulfillment, Error> {
        let rate = self.fees.rate(fee_rate);
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin.outpoint,
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..TxIn::default()
            }],
            output: vec![TxOut {
                value: Amount::ZERO,
                script_pubkey: to.clone(),
            }],
        };
        let vsize = signed_vsize(&tx);
        // The rate's fee, within what the signers accept for a refund.
        let fee = fee_at(rate, vsize)?.min(peg_rules::max_refund_fee(
            self.fees.floor,
            self.fees.cap,
            coin.amount(),
            vsize,
        ));
        let dust = to.minimal_non_dust();
        match coin.amount().checked_sub(fee) {
            Some(v) if v >= dust => tx.output[0].value = v,
            _ => {
                return Err(Error::Build(format!(
                    "a refund of {} at {} sat/vB leaves less than the dust limit {dust}",
                    coin.amount(),
                    rate.to_sat_per_vb_ceil()
                )))
            }
        }
        let prevouts = vec![coin.txout.clone()];
        let sighashes = sighashes(&tx, &prevouts)?;
        Ok(UnsignedFulfillment {
            tx,
            prevouts,
            sighashes,
        })
    }

    fn finalize_fulfillment(
        &self,
        unsigned: &UnsignedFulfillment,
        signatures: &[schnorr::Signature],
    ) -> Result<Transaction, Error> {
        if signatures.len() != unsigned.tx.input.len()
            || unsigned.prevouts.len() != unsigned.tx.input.len()
        {
            return Err(Error::SignatureCount {
                expected: unsigned.tx.input.len(),
                actual: signatures.len(),
            });
        }
        let mut tx = unsigned.tx.clone();
        for (input, sig) in tx.input.iter_mut().zip(signatures) {
            // SIGHASH_DEFAULT: the bare 64-byte signature.
            input.witness = Witness::from_slice(&[sig.as_ref()]);
        }
        verify_spends(&tx, &unsigned.prevouts)?;
        Ok(tx)
    }
}

/// Returns the BIP-0341 key-path sighash (SIGHASH_DEFAULT) of every input.
fn sighashes(tx: &Transaction, prevouts: &[TxOut]) -> Result<Vec<[u8; 32]>, Error> {
    peg_rules::payload::sighashes(tx, prevouts).map_err(Error::Build)
}

/// Checks every input of `tx` with libbitcoinconsensus (Bitcoin Core 26),
/// taproot rules on, against the outputs it spends.
pub fn verify_spends(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), Error> {
    let bytes = bitcoin::consensus::serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .map(|o| bitcoinconsensus::Utxo {
            script_pubkey: o.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: u32::try_from(o.script_pubkey.len()).unwrap_or(u32::MAX),
            value: i64::try_from(o.value.to_sat()).unwrap_or(i64::MAX),
        })
        .collect();
    for (i, prevout) in prevouts.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            prevout.script_pubkey.as_bytes(),
            prevout.value.to_sat(),
            &bytes,
            Some(&utxos),
            i,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        )
        .map_err(|e| Error::Consensus {
            input: i,
            reason: format!("{e:?}"),
        })?;
    }
    Ok(())
}
