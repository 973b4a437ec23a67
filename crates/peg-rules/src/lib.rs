//! The rules of the sBTC peg, written once.
//!
//! The coordinator (before it mints, burns or asks for a signature), the
//! signers (before they reveal a nonce) and the testers' wallet (to size a
//! request's fee output) all call these functions, so a rule cannot differ
//! between them. Everything here is pure: the caller reads its own nodes and
//! passes what it saw ([`RequestFacts`], [`PegInFacts`], …); nothing here
//! does I/O or panics on outside input.
//!
//! - [`Policy`]: the fee policy (floor, cap, subsidy, margin), the outflow
//!   limits and the allowlist, read from the `[policy]` table of the signer
//!   set file that the coordinator and every signer share ([`PolicyFile`]).
//! - [`peg_in_mintable`], [`peg_out_payable`]: may this op be minted / burned?
//! - [`check_fulfilment`], [`check_sweep`], [`check_refund`]: is this
//!   transaction one the peg may sign?
//! - [`check_backing`]: after a payout, does the peg wallet still hold the
//!   sBTC supply plus what it owes?
//! - [`SignPayload`]: what a `SignRequest` carries for the signers to check,
//!   and the sighashes it implies.
//!
//! Every failure is a [`Rule`]: a stable name (`"request.dust"`, …) that
//! tests and refusals match on, and a detail for the operator.

pub mod allowlist;
pub mod payload;
pub mod policy;

use std::collections::HashSet;

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::key::{Secp256k1, UntweakedPublicKey};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{
    Address, Amount, FeeRate, Network, OutPoint, Script, ScriptBuf, Transaction, TxOut, Witness,
};
use peg_ops::{PegInOp, PegOutRequestOp};
use stacks_wire::StacksNetwork;

pub use allowlist::Allowlist;
pub use payload::SignPayload;
pub use policy::{Policy, PolicyFile};

/// A rule an op or a transaction broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {detail}")]
pub struct Rule {
    /// The rule's stable name, e.g. `"request.dust"`.
    pub name: &'static str,
    /// What was seen, for the operator.
    pub detail: String,
}

impl Rule {
    /// A rule broken, with what was seen.
    pub fn new(name: &'static str, detail: impl Into<String>) -> Rule {
        Rule {
            name,
            detail: detail.into(),
        }
    }
}

/// What a rule says about an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Accept,
    /// Not yet (too few confirmations, …): ask again later.
    Wait(String),
    /// Never: the rule it broke.
    Reject(Rule),
}

/// The networks the peg runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Networks {
    /// Bitcoin's.
    pub bitcoin: Network,
    /// Stacks'.
    pub stacks: StacksNetwork,
}

/// What the caller saw of a peg-in on its own nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PegInFacts<'a> {
    /// Its Bitcoin best-chain tip height.
    pub tip_height: u64,
    /// Confirmations an op needs.
    pub confirmations: u32,
    /// The scriptPubKeys of every peg wallet key held (current and old).
    pub peg_scripts: &'a [ScriptBuf],
    /// Whether the peg-in's output 1 is unspent (`None`: not checked).
    pub output1_unspent: Option<bool>,
}

/// What the caller saw of a peg-out request on its own nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// Its Bitcoin best-chain tip height.
    pub tip_height: u64,
    /// Confirmations an op needs.
    pub confirmations: u32,
    /// The scriptPubKeys of every peg wallet key held (current and old).
    pub peg_scripts: &'a [ScriptBuf],
    /// Whether the request's output 2 (its fee output) is unspent.
    pub output2_unspent: bool,
    /// The node's fee rate estimate (`None`: no estimate; the policy floor).
    pub fee_rate: Option<FeeRate>,
    /// Amounts of other requests accepted for burning in the last 24 hours.
    pub outflow_last_day: Amount,
}

/// Is this peg-in one to mint?
///
/// Rules: `peg-in.wallet` (pays one of `peg_scripts`), `peg-in.amount`
/// (non-zero), `peg-in.network` (recipient on `networks.stacks`),
/// `peg-in.allowlist`, `peg-in.spent` (output 1 spent, when checked: a
/// refunded peg-in is never minted); too few confirmations is a `Wait`.
pub fn peg_in_mintable(
    policy: &Policy,
    networks: Networks,
    op: &PegInOp,
    facts: &PegInFacts<'_>,
) -> Verdict {
    let script = op.peg_wallet_address.script_pubkey();
    if !facts.peg_scripts.contains(&script) {
        return reject(
            "peg-in.wallet",
            format!("pays {}, not a peg wallet key held", op.peg_wallet_address),
        );
    }
    if op.amount == Amount::ZERO {
        return reject("peg-in.amount", "the amount is zero");
    }
    if op.recipient.address().network() != Some(networks.stacks) {
        return reject(
            "peg-in.network",
            format!(
                "recipient {} is not a {:?} principal",
                op.recipient, networks.stacks
            ),
        );
    }
    if !policy.allowlist.allows_principal(&op.recipient) {
        return reject(
            "peg-in.allowlist",
            format!("recipient {} is not on the allowlist", op.recipient),
        );
    }
    if facts.output1_unspent == Some(false) {
        return reject(
            "peg-in.spent",
            format!("output 1 of {} is spent (refunded or swept)", op.txid),
        );
    }
    confirmations(facts.tip_height, op.block_height.0, facts.confirmations)
}

/// Is this peg-out request one to burn for (and so, one the peg can pay)?
///
/// Rules: `request.wallet` (output 2 pays one of `peg_scripts`),
/// `request.network`, `request.allowlist` (the recipient script),
/// `request.signature` (a requester is recovered), `request.amount` (non-zero),
/// `request.dust` (amount below the recipient script's dust limit),
/// `request.fee` (output 2 below [`required_fee_output`] at `fee_rate`),
/// `request.spent` (output 2 spent), `request.limit` (above
/// `policy.max_request`), `request.daily-limit` (with `outflow_last_day`,
/// above `policy.max_daily_outflow`); too few confirmations is a `Wait`.
pub fn peg_out_payable(
    policy: &Policy,
    networks: Networks,
    op: &PegOutRequestOp,
    facts: &RequestFacts<'_>,
) -> Verdict {
    let fee_script = op.peg_wallet_address.script_pubkey();
    if !facts.peg_scripts.contains(&fee_script) {
        return reject(
            "request.wallet",
            format!(
                "output 2 pays {}, not a peg wallet key held",
                op.peg_wallet_address
            ),
        );
    }
    let Some(recipient) = op.recipient.require_network(networks.bitcoin) else {
        return reject(
            "request.network",
            format!(
                "recipient {} is not a {} address",
                op.recipient, networks.bitcoin
            ),
        );
    };
    let recipient = recipient.script_pubkey();
    if !policy.allowlist.allows_script(&recipient) {
        return reject(
            "request.allowlist",
            format!("recipient {} is not on the allowlist", op.recipient),
        );
    }
    if let Err(e) = op.requester(networks.stacks) {
        return reject(
            "request.signature",
            format!("no requester recovers from the signature: {e}"),
        );
    }
    if op.amount == Amount::ZERO {
        return reject("request.amount", "the amount is zero");
    }
    let dust = recipient.minimal_non_dust();
    if op.amount < dust {
        return reject(
            "request.dust",
            format!(
                "amount {} is below the recipient script's dust limit {dust}",
                op.amount
            ),
        );
    }
    let required = required_fee_output(policy, facts.fee_rate, &recipient);
    if op.fulfillment_fee < required {
        return reject(
            "request.fee",
            format!(
                "output 2 carries {}, a fulfilment at {} sat/vB needs {required}",
                op.fulfillment_fee,
                clamp_fee_rate(policy, facts.fee_rate).to_sat_per_vb_ceil()
            ),
        );
    }
    if !facts.output2_unspent {
        return reject(
            "request.spent",
            format!("output 2 of {} is already spent", op.txid),
        );
    }
    if let Some(max) = policy.max_request {
        if op.amount > max {
            return reject(
                "request.limit",
                format!("amount {} is above the largest peg-out, {max}", op.amount),
            );
        }
    }
    if let Some(max) = policy.max_daily_outflow {
        match facts.outflow_last_day.checked_add(op.amount) {
            Some(total) if total <= max => {}
            _ => {
                return reject(
                    "request.daily-limit",
                    format!(
                        "amount {} with {} accepted in the last 24 hours is above the daily limit, {max}",
                        op.amount, facts.outflow_last_day
                    ),
                )
            }
        }
    }
    confirmations(facts.tip_height, op.block_height.0, facts.confirmations)
}

/// The identity of a request's signature for replay detection: one
/// signature (over amount and recipient script) pays at most one request.
/// Two requests with equal digests are copies of each other.
///
/// It is `sha256(tag ‖ amount (u64 BE) ‖ script length (u64 BE) ‖ recipient
/// scriptPubKey ‖ the 65-byte signature)`, the signature taken in its low-`s`
/// form (the recovery id's parity flipped to match): `(r, n − s)` recovers
/// the same requester, so a copy with the malleated signature has the same
/// digest. The fee output, memo and txid are not covered: a copy in a new
/// transaction is still a copy.
///
/// A user who wants to repeat an identical peg-out (same amount, same
/// recipient) must change the amount by a sat: an ECDSA signature by the
/// same key over the same message may well be a new one, but nothing forces
/// the wallet to make it so, and the peg refuses equal digests.
pub fn request_signature_digest(op: &PegOutRequestOp) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(REQUEST_DIGEST_TAG);
    engine.input(&op.amount.to_sat().to_be_bytes());
    let script = op.recipient.script_pubkey();
    let len = u64::try_from(script.len()).unwrap_or(u64::MAX);
    engine.input(&len.to_be_bytes());
    engine.input(script.as_bytes());
    engine.input(&canonical_signature(&op.signature.0));
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// Checks a fulfilment of `op` against the rules, independently of the
/// wallet that built it.
///
/// `prevouts[i]` is the output input `i` spends. `is_peg_coin` says whether
/// an input other than 0 is a spendable peg wallet coin (the caller's coin
/// record: confirmed, unspent, no request's fee output). `current` is the
/// scriptPubKey of the key the contract publishes.
///
/// Rules: `fulfilment.shape` (inputs/prevouts counts, an input spent twice,
/// a lock time other than 0), `fulfilment.input0`
/// (spends `op`'s output 2, its value and script as the request says),
/// `fulfilment.input` (another input is no peg coin), `fulfilment.op-return`
/// (output 0 is `OP_RETURN magic ‖ '!' ‖ 32 bytes`), `fulfilment.recipient`
/// (output 1 pays exactly the amount to the recipient script),
/// `fulfilment.change` (at most one more output, to `current`, not dust),
/// `fulfilment.fee` (fee above what [`Policy::max_fee`] allows for its size,
/// or above the request's fee output plus the subsidy).
pub fn check_fulfilment(
    policy: &Policy,
    magic: [u8; 2],
    op: &PegOutRequestOp,
    tx: &Transaction,
    prevouts: &[TxOut],
    current: &Script,
    is_peg_coin: &dyn Fn(&OutPoint, &TxOut) -> bool,
) -> Result<(), Rule> {
    if tx.input.is_empty() || tx.input.len() != prevouts.len() || tx.output.len() < 2 {
        return Err(Rule::new(
            "fulfilment.shape",
            format!(
                "{} inputs, {} prevouts, {} outputs: needs matching inputs and prevouts and at least 2 outputs",
                tx.input.len(),
                prevouts.len(),
                tx.output.len()
            ),
        ));
    }
    distinct_inputs(tx, "fulfilment.shape")?;
    no_lock_time(tx, "fulfilment.shape")?;
    let fee_outpoint = OutPoint::new(op.txid, 2);
    let request_script = op.peg_wallet_address.script_pubkey();
    if tx.input[0].previous_output != fee_outpoint
        || prevouts[0].value != op.fulfillment_fee
        || prevouts[0].script_pubkey != request_script
    {
        return Err(Rule::new(
            "fulfilment.input0",
            format!(
                "input 0 spends {} ({} to {:?}), not the request's output {fee_outpoint} ({} to {})",
                tx.input[0].previous_output,
                prevouts[0].value,
                prevouts[0].script_pubkey,
                op.fulfillment_fee,
                op.peg_wallet_address
            ),
        ));
    }
    for (i, (input, prevout)) in tx.input.iter().zip(prevouts).enumerate().skip(1) {
        if !is_peg_coin(&input.previous_output, prevout) {
            return Err(Rule::new(
                "fulfilment.input",
                format!(
                    "input {i} spends {}, not a spendable peg wallet coin",
                    input.previous_output
                ),
            ));
        }
    }
    let expected_op_return = fulfilment_op_return(magic, &[0u8; 32]);
    let out0 = &tx.output[0];
    let op_return_ok = out0.value == Amount::ZERO
        && out0.script_pubkey.len() == expected_op_return.len()
        && out0.script_pubkey.as_bytes()[..5] == expected_op_return.as_bytes()[..5];
    if !op_return_ok {
        return Err(Rule::new(
            "fulfilment.op-return",
            format!(
                "output 0 is {} to {:?}, not 0 to OP_RETURN {:?} '!' and a 32-byte chain tip",
                out0.value,
                out0.script_pubkey,
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    let recipient = op.recipient.script_pubkey();
    let out1 = &tx.output[1];
    if out1.script_pubkey != recipient || out1.value != op.amount {
        return Err(Rule::new(
            "fulfilment.recipient",
            format!(
                "output 1 pays {} to {:?}, not {} to the recipient {}",
                out1.value, out1.script_pubkey, op.amount, op.recipient
            ),
        ));
    }
    match tx.output.get(2..).unwrap_or_default() {
        [] => {}
        [change] if change.script_pubkey == *current => {
            if change.value < current.minimal_non_dust() {
                return Err(Rule::new(
                    "fulfilment.change",
                    format!("change {} is dust", change.value),
                ));
            }
        }
        [change] => {
            return Err(Rule::new(
                "fulfilment.change",
                format!(
                    "output 2 pays {:?}, not the current peg wallet {:?}",
                    change.script_pubkey, current
                ),
            ))
        }
        more => {
            return Err(Rule::new(
                "fulfilment.change",
                format!(
                    "{} outputs after the recipient, at most 1 (change)",
                    more.len()
                ),
            ))
        }
    }
    let fee = tx_fee(tx, prevouts).map_err(|e| Rule::new("fulfilment.fee", e))?;
    let vsize = signed_vsize(tx);
    let max = policy.max_fee(vsize);
    if fee > max {
        return Err(Rule::new(
            "fulfilment.fee",
            format!("fee {fee} for {vsize} vB is above the cap's {max}"),
        ));
    }
    let allowed = op
        .fulfillment_fee
        .checked_add(policy.subsidy)
        .unwrap_or(Amount::MAX);
    if fee > allowed {
        return Err(Rule::new(
            "fulfilment.fee",
            format!(
                "fee {fee} is above the request's fee output {} plus the subsidy {}",
                op.fulfillment_fee, policy.subsidy
            ),
        ));
    }
    Ok(())
}

/// Checks a sweep or consolidation: every input a peg coin the caller may
/// move (`is_sweepable`: a coin of a key held, no pending request's output
/// 2), exactly one output, paying `current`, fee within policy.
///
/// Rules: `sweep.shape` (inputs/prevouts counts, an input spent twice, a
/// lock time other than 0), `sweep.input`, `sweep.output`, `sweep.fee`
/// (outputs above inputs, or a fee above [`Policy::max_fee`]).
pub fn check_sweep(
    policy: &Policy,
    tx: &Transaction,
    prevouts: &[TxOut],
    current: &Script,
    is_sweepable: &dyn Fn(&OutPoint, &TxOut) -> bool,
) -> Result<(), Rule> {
    if tx.input.is_empty() || tx.input.len() != prevouts.len() {
        return Err(Rule::new(
            "sweep.shape",
            format!(
                "{} inputs, {} prevouts: needs at least one input and one prevout each",
                tx.input.len(),
                prevouts.len()
            ),
        ));
    }
    distinct_inputs(tx, "sweep.shape")?;
    no_lock_time(tx, "sweep.shape")?;
    for (i, (input, prevout)) in tx.input.iter().zip(prevouts).enumerate() {
        if !is_sweepable(&input.previous_output, prevout) {
            return Err(Rule::new(
                "sweep.input",
                format!(
                    "input {i} spends {}, not a peg wallet coin that may be swept",
                    input.previous_output
                ),
            ));
        }
    }
    match tx.output.as_slice() {
        [out] if out.script_pubkey == *current && out.value >= current.minimal_non_dust() => {}
        [out] => {
            return Err(Rule::new(
                "sweep.output",
                format!(
                    "the output pays {} to {:?}, not at least {} to the current peg wallet {:?}",
                    out.value,
                    out.script_pubkey,
                    current.minimal_non_dust(),
                    current
                ),
            ))
        }
        outs => {
            return Err(Rule::new(
                "sweep.output",
                format!("{} outputs, a sweep has exactly one", outs.len()),
            ))
        }
    }
    let fee = tx_fee(tx, prevouts).map_err(|e| Rule::new("sweep.fee", e))?;
    let vsize = signed_vsize(tx);
    let max = policy.max_fee(vsize);
    if fee > max {
        return Err(Rule::new(
            "sweep.fee",
            format!("fee {fee} for {vsize} vB is above the cap's {max}"),
        ));
    }
    Ok(())
}

/// The scriptPubKey a refund of `peg_in_tx` pays: that of the output its
/// input 0 spent, read from `funding` (the transaction holding that output).
///
/// # Errors
/// `refund.funding` when `funding` is not the transaction input 0 spends, or
/// has no such output; `refund.peg-in` when the peg-in has no input.
pub fn refund_script(peg_in_tx: &Transaction, funding: &Transaction) -> Result<ScriptBuf, Rule> {
    let Some(input0) = peg_in_tx.input.first() else {
        return Err(Rule::new("refund.peg-in", "the peg-in has no input"));
    };
    let spent = input0.previous_output;
    let funding_txid = funding.compute_txid();
    if funding_txid != spent.txid {
        return Err(Rule::new(
            "refund.funding",
            format!(
                "the funding transaction is {funding_txid}, the peg-in's input 0 spends {spent}"
            ),
        ));
    }
    usize::try_from(spent.vout)
        .ok()
        .and_then(|v| funding.output.get(v))
        .map(|o| o.script_pubkey.clone())
        .ok_or_else(|| {
            Rule::new(
                "refund.funding",
                format!(
                    "the funding transaction {funding_txid} has no output {}",
                    spent.vout
                ),
            )
        })
}

/// Checks a refund of the rejected peg-in `peg_in` (whose transaction is
/// `peg_in_tx`; `funding` is the transaction whose output its input 0
/// spent). Whether the peg-in may be refunded at all (not mintable, never
/// minted, output 1 unspent) is the caller's to read from its own nodes;
/// this checks the transaction.
///
/// Rules: `refund.peg-in` (`peg_in_tx` is not the peg-in, or its output 1
/// is not the peg-in's amount to its peg wallet address), `refund.funding`
/// (see [`refund_script`]), `refund.shape` (one input and one prevout, one
/// output, lock time 0), `refund.input` (the input is not the peg-in's
/// output 1, or the prevout is not that output), `refund.destination` (the
/// output pays another script than the one the peg-in's input 0 spent),
/// `refund.fee` (outputs above inputs, or a fee above [`max_refund_fee`]), `refund.dust` (what is left is dust for its script).
pub fn check_refund(
    policy: &Policy,
    peg_in: &PegInOp,
    peg_in_tx: &Transaction,
    funding: &Transaction,
    tx: &Transaction,
    prevouts: &[TxOut],
) -> Result<(), Rule> {
    let peg_coin = TxOut {
        value: peg_in.amount,
        script_pubkey: peg_in.peg_wallet_address.script_pubkey(),
    };
    if peg_in_tx.compute_txid() != peg_in.txid || peg_in_tx.output.get(1) != Some(&peg_coin) {
        return Err(Rule::new(
            "refund.peg-in",
            format!(
                "transaction {} is not the peg-in {} paying {} to {} in output 1",
                peg_in_tx.compute_txid(),
                peg_in.txid,
                peg_in.amount,
                peg_in.peg_wallet_address
            ),
        ));
    }
    let to = refund_script(peg_in_tx, funding)?;
    if tx.input.len() != 1 || prevouts.len() != 1 || tx.output.len() != 1 {
        return Err(Rule::new(
            "refund.shape",
            format!(
                "{} inputs, {} prevouts, {} outputs: a refund has one of each",
                tx.input.len(),
                prevouts.len(),
                tx.output.len()
            ),
        ));
    }
    no_lock_time(tx, "refund.shape")?;
    let own = OutPoint::new(peg_in.txid, 1);
    if tx.input[0].previous_output != own || prevouts[0] != peg_coin {
        return Err(Rule::new(
            "refund.input",
            format!(
                "the input spends {} ({} to {:?}), not the peg-in's output {own} ({} to {})",
                tx.input[0].previous_output,
                prevouts[0].value,
                prevouts[0].script_pubkey,
                peg_in.amount,
                peg_in.peg_wallet_address
            ),
        ));
    }
    let out = &tx.output[0];
    if out.script_pubkey != to {
        return Err(Rule::new(
            "refund.destination",
            format!(
                "the refund pays {:?}, not {:?}, the script the peg-in's input 0 spent",
                out.script_pubkey, to
            ),
        ));
    }
    let fee = tx_fee(tx, prevouts).map_err(|e| Rule::new("refund.fee", e))?;
    let vsize = signed_vsize(tx);
    let max = max_refund_fee(policy.fee_floor, policy.fee_cap, peg_in.amount, vsize);
    if fee > max {
        return Err(Rule::new(
            "refund.fee",
            format!(
                "fee {fee} for {vsize} vB is above {max}, the most a refund of {} may pay \
                 (the fee cap's, and at most {REFUND_MAX_FEE_PERCENT} % of the amount above \
                 the floor's fee)",
                peg_in.amount
            ),
        ));
    }
    let dust = to.minimal_non_dust();
    if out.value < dust {
        return Err(Rule::new(
            "refund.dust",
            format!(
                "the refund pays {}, below its script's dust limit {dust}",
                out.value
            ),
        ));
    }
    Ok(())
}

/// The share of a refunded amount that may go to fees (beyond the fee at
/// the policy's floor rate): a refund's fee is the depositor's money, and
/// the fee cap alone would let a stolen coordinator key give most of a
/// small deposit to miners.
pub const REFUND_MAX_FEE_PERCENT: u64 = 10;

/// The most a refund of `amount` of `vsize` vB may pay in fees: the fee at
/// `cap`, and no more than the larger of the fee at `floor` and
/// [`REFUND_MAX_FEE_PERCENT`] of the amount.
pub fn max_refund_fee(floor: FeeRate, cap: FeeRate, amount: Amount, vsize: u64) -> Amount {
    let at_cap = cap.fee_vb(vsize).unwrap_or(Amount::MAX);
    let at_floor = floor.fee_vb(vsize).unwrap_or(Amount::MAX);
    let share = Amount::from_sat(amount.to_sat() / 100 * REFUND_MAX_FEE_PERCENT);
    at_cap.min(at_floor.max(share))
}

/// The vsize of a refund paying `to`: one taproot key-path input (64-byte
/// signature), one output — what the wallet builds.
pub fn refund_vsize(to: &Script) -> u64 {
    let to_len = u64::try_from(to.len()).unwrap_or(u64::MAX);
    let output = 8u64
        .saturating_add(varint_len(to_len))
        .saturating_add(to_len);
    let base = 4u64 // version
        .saturating_add(1) // input count
        .saturating_add(32 + 4 + 1 + 4) // outpoint, empty scriptSig, sequence
        .saturating_add(1) // output count
        .saturating_add(output)
        .saturating_add(4); // lock time
    let witness = 2u64 + 1 + 1 + 64;
    base.saturating_mul(4).saturating_add(witness).div_ceil(4)
}

/// The peg's books after a payout, as a signer reads them from its own nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Books {
    /// BTC the peg wallet holds once the transaction is applied.
    pub held_after: Amount,
    /// sBTC supply (sats) at the final Stacks tip, after the burn.
    pub supply: u64,
    /// What the peg wallet owes besides the supply: peg-ins never minted nor
    /// refunded, and pending requests' fee outputs other than the one spent.
    pub debts: Amount,
}

/// The circuit breaker: refuses (`backing`) when `held_after` is below
/// `supply + debts`. sBTC minted without BTC and then burned is never paid,
/// however much surplus the wallet holds.
pub fn check_backing(books: &Books) -> Result<(), Rule> {
    let owed = books.supply.checked_add(books.debts.to_sat());
    match owed {
        Some(owed) if books.held_after.to_sat() >= owed => Ok(()),
        _ => Err(Rule::new(
            "backing",
            format!(
                "the peg wallet would hold {} against an sBTC supply of {} sats plus debts of {}",
                books.held_after, books.supply, books.debts
            ),
        )),
    }
}

/// The fee rate a fulfilment pays: the estimate (or the floor without one)
/// within the policy's floor and cap.
pub fn clamp_fee_rate(policy: &Policy, estimate: Option<FeeRate>) -> FeeRate {
    clamp_fee_rate_between(policy.fee_floor, policy.fee_cap, estimate)
}

/// [`clamp_fee_rate`] with the floor and cap given: the estimate (or `floor`
/// without one), at least `floor` and at most `cap` (the cap wins should
/// `floor` exceed it).
pub fn clamp_fee_rate_between(floor: FeeRate, cap: FeeRate, estimate: Option<FeeRate>) -> FeeRate {
    estimate.unwrap_or(floor).max(floor).min(cap)
}

/// The vsize of a fulfilment with `peg_inputs` peg-coin inputs besides the
/// request's fee output, paying `recipient`, with change: what the wallet
/// builds, taproot key-path witnesses counted at 64 bytes.
pub fn fulfilment_vsize(recipient: &Script, peg_inputs: usize) -> u64 {
    // Non-witness bytes: version, input count, inputs (outpoint, empty
    // scriptSig, sequence), output count, outputs, lock time.
    let inputs = u64::try_from(peg_inputs)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let op_return_len = 2 + FULFIL_DATA_LEN;
    let recipient_len = u64::try_from(recipient.len()).unwrap_or(u64::MAX);
    let outputs = [op_return_len, recipient_len, P2TR_SCRIPT_LEN]
        .iter()
        .fold(0u64, |sum, &len| {
            sum.saturating_add(8)
                .saturating_add(varint_len(len))
                .saturating_add(len)
        });
    let base = 4u64
        .saturating_add(varint_len(inputs))
        .saturating_add(inputs.saturating_mul(32 + 4 + 1 + 4))
        .saturating_add(varint_len(3))
        .saturating_add(outputs)
        .saturating_add(4);
    // Witness: marker and flag, then per input one 64-byte item.
    let witness = 2u64.saturating_add(inputs.saturating_mul(1 + 1 + 64));
    let weight = base.saturating_mul(4).saturating_add(witness);
    weight.div_ceil(4)
}

/// The smallest fee output a request must carry to be payable at `estimate`:
/// the fee of a one-peg-coin fulfilment at [`clamp_fee_rate`], plus the
/// policy's margin, less the subsidy; never below the peg script's dust
/// limit. The testers' wallet sizes requests with it.
pub fn required_fee_output(
    policy: &Policy,
    estimate: Option<FeeRate>,
    recipient: &Script,
) -> Amount {
    let rate = clamp_fee_rate(policy, estimate);
    let fee = rate
        .fee_vb(fulfilment_vsize(recipient, 1))
        .unwrap_or(Amount::MAX)
        .to_sat();
    let with_margin = u128::from(fee)
        .saturating_mul(100 + u128::from(policy.fee_margin_percent))
        .div_ceil(100);
    let with_margin = u64::try_from(with_margin).unwrap_or(u64::MAX);
    Amount::from_sat(with_margin.saturating_sub(policy.subsidy.to_sat())).max(P2TR_DUST)
}

/// The vsize of an unsigned transaction once every input carries a taproot
/// key-path signature (64 bytes).
pub fn signed_vsize(tx: &Transaction) -> u64 {
    let mut t = tx.clone();
    for input in &mut t.input {
        input.witness = Witness::from_slice(&[[0u8; 64]]);
    }
    u64::try_from(t.vsize()).unwrap_or(u64::MAX)
}

/// Returns the peg wallet address of an aggregate key: P2TR with the
/// BIP-0341 tweak and no script tree.
pub fn peg_wallet_address(aggregate_key: &PublicKey, network: Network) -> Address {
    let (xonly, _) = aggregate_key.x_only_public_key();
    Address::p2tr(
        &Secp256k1::verification_only(),
        UntweakedPublicKey::from(xonly),
        None,
        network,
    )
}

/// The dust limit of a P2TR output, the peg wallet's script: the least a
/// request's fee output may carry.
pub const P2TR_DUST: Amount = Amount::from_sat(330);

/// The domain tag of [`request_signature_digest`].
const REQUEST_DIGEST_TAG: &[u8] = b"sbtc-alpha/peg-out-request-signature/v1";

/// The length of a fulfilment's OP_RETURN data: magic (2), `'!'`, tip (32).
const FULFIL_DATA_LEN: u64 = 35;

/// The length of a P2TR scriptPubKey.
const P2TR_SCRIPT_LEN: u64 = 34;

fn reject(name: &'static str, detail: impl Into<String>) -> Verdict {
    Verdict::Reject(Rule::new(name, detail))
}

/// `Accept` at `needed` confirmations or more, else `Wait`.
fn confirmations(tip_height: u64, block_height: u64, needed: u32) -> Verdict {
    let seen = tip_height.saturating_add(1).saturating_sub(block_height);
    if seen < u64::from(needed) {
        Verdict::Wait(format!("{seen} of {needed} confirmations"))
    } else {
        Verdict::Accept
    }
}

/// The 65 signature bytes in one form for all their malleations: `s` made
/// low (with the recovery id's parity flipped to match), so that a copy with
/// `n - s` — which recovers the same requester — has the same digest.
/// Bytes that are no signature are taken as they are (such a request is
/// refused with `request.signature` anyway).
fn canonical_signature(sig: &[u8; 65]) -> [u8; 65] {
    let parsed = RecoveryId::from_i32(i32::from(sig[0]))
        .ok()
        .and_then(|id| RecoverableSignature::from_compact(&sig[1..], id).ok());
    let Some(recoverable) = parsed else {
        return *sig;
    };
    let mut standard = recoverable.to_standard();
    standard.normalize_s();
    let low = standard.serialize_compact();
    let mut out = *sig;
    if low[..] != sig[1..] {
        // `s` was high: negating it negates R's y parity for the recovery.
        out[0] ^= 1;
        out[1..].copy_from_slice(&low);
    }
    out
}

/// Errors with `rule` when two inputs spend the same outpoint.
fn distinct_inputs(tx: &Transaction, rule: &'static str) -> Result<(), Rule> {
    let mut seen = HashSet::with_capacity(tx.input.len());
    for input in &tx.input {
        if !seen.insert(input.previous_output) {
            return Err(Rule::new(
                rule,
                format!("{} is spent twice", input.previous_output),
            ));
        }
    }
    Ok(())
}

/// Errors with `rule` unless the lock time is 0: a signed transaction that
/// cannot be mined yet would hold its coins hostage.
fn no_lock_time(tx: &Transaction, rule: &'static str) -> Result<(), Rule> {
    if tx.lock_time == bitcoin::absolute::LockTime::ZERO {
        Ok(())
    } else {
        Err(Rule::new(rule, format!("lock time {}", tx.lock_time)))
    }
}

/// Σ prevouts − Σ outputs, or why there is none.
fn tx_fee(tx: &Transaction, prevouts: &[TxOut]) -> Result<Amount, String> {
    let sum = |outs: &[TxOut]| {
        outs.iter()
            .try_fold(Amount::ZERO, |s, o| s.checked_add(o.value))
    };
    let inputs = sum(prevouts).ok_or("the inputs' values overflow")?;
    let outputs = sum(&tx.output).ok_or("the outputs' values overflow")?;
    inputs
        .checked_sub(outputs)
        .ok_or_else(|| format!("the outputs ({outputs}) exceed the inputs ({inputs})"))
}

/// The size of a Bitcoin compact-size integer.
fn varint_len(n: u64) -> u64 {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// The OP_RETURN output 0 of a fulfilment: `OP_RETURN` pushing
/// `magic ‖ '!' ‖ stacks_chain_tip` (35 bytes), as the stacks-node parses it.
pub fn fulfilment_op_return(magic: [u8; 2], stacks_chain_tip: &[u8; 32]) -> ScriptBuf {
    let mut data = [0u8; 35];
    data[..2].copy_from_slice(&magic);
    data[2] = peg_ops::wire::OP_PEG_OUT_FULFILL;
    data[3..].copy_from_slice(stacks_chain_tip);
    ScriptBuf::new_op_return(data)
}
