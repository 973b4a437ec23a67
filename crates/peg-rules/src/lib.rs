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
//! - [`check_fulfilment`], [`check_sweep`]: is this transaction one the peg
//!   may sign?
//! - [`check_backing`]: after a payout, does the peg wallet still hold the
//!   sBTC supply plus what it owes?
//! - [`SignPayload`]: what a `SignRequest` carries for the signers to check,
//!   and the sighashes it implies.
//!
//! Every failure is a [`Rule`]: a stable name (`"request.dust"`, …) that
//! tests and refusals match on, and a detail for the operator.

// TODO(H1): implement every `todo!()` below; keep the signatures (other
// helpers code against them) — extend them only by adding items.

pub mod allowlist;
pub mod payload;
pub mod policy;

use bitcoin::key::{Secp256k1, UntweakedPublicKey};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Script, ScriptBuf, Transaction, TxOut};
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
    let _ = (policy, networks, op, facts);
    todo!("H1")
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
    let _ = (policy, networks, op, facts);
    todo!("H1")
}

/// The identity of a request's signature for replay detection: one
/// signature (over amount and recipient script) pays at most one request.
/// Two requests with equal digests are copies of each other.
pub fn request_signature_digest(op: &PegOutRequestOp) -> [u8; 32] {
    let _ = op;
    todo!("H1")
}

/// Checks a fulfilment of `op` against the rules, independently of the
/// wallet that built it.
///
/// `prevouts[i]` is the output input `i` spends. `is_peg_coin` says whether
/// an input other than 0 is a spendable peg wallet coin (the caller's coin
/// record: confirmed, unspent, no request's fee output). `current` is the
/// scriptPubKey of the key the contract publishes.
///
/// Rules: `fulfilment.shape` (inputs/prevouts counts), `fulfilment.input0`
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
    let _ = (policy, magic, op, tx, prevouts, current, is_peg_coin);
    todo!("H1")
}

/// Checks a sweep or consolidation: every input a peg coin the caller may
/// move (`is_sweepable`: a coin of a key held, no pending request's output
/// 2), exactly one output, paying `current`, fee within policy.
///
/// Rules: `sweep.shape`, `sweep.input`, `sweep.output`, `sweep.fee`.
pub fn check_sweep(
    policy: &Policy,
    tx: &Transaction,
    prevouts: &[TxOut],
    current: &Script,
    is_sweepable: &dyn Fn(&OutPoint, &TxOut) -> bool,
) -> Result<(), Rule> {
    let _ = (policy, tx, prevouts, current, is_sweepable);
    todo!("H1")
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
    let _ = books;
    todo!("H1")
}

/// The fee rate a fulfilment pays: the estimate (or the floor without one)
/// within the policy's floor and cap.
pub fn clamp_fee_rate(policy: &Policy, estimate: Option<FeeRate>) -> FeeRate {
    let _ = (policy, estimate);
    todo!("H1")
}

/// The vsize of a fulfilment with `peg_inputs` peg-coin inputs besides the
/// request's fee output, paying `recipient`, with change: what the wallet
/// builds, taproot key-path witnesses counted at 64 bytes.
pub fn fulfilment_vsize(recipient: &Script, peg_inputs: usize) -> u64 {
    let _ = (recipient, peg_inputs);
    todo!("H1")
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
    let _ = (policy, estimate, recipient);
    todo!("H1")
}

/// The vsize of an unsigned transaction once every input carries a taproot
/// key-path signature (64 bytes).
pub fn signed_vsize(tx: &Transaction) -> u64 {
    let _ = tx;
    todo!("H1")
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
