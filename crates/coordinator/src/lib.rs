//! The sBTC coordinator's event loop, generic over its components' traits.
//!
//! [`StacksCoordinator`] scans confirmed blocks for peg operations, stores
//! them in the [`PegQueue`], and walks each through its states:
//!
//! - a **peg-in** is checked with [`peg_rules::peg_in_mintable`], then
//!   minted; it is `done` once the contract's `get-mint` shows the mint, for
//!   its amount and recipient, at the Stacks block
//!   [`PegChecks::stacks_confirmations`]` − 1` below the tip;
//! - a **peg-out request** is checked with [`peg_rules::peg_out_payable`]
//!   (its fee output unspent and large enough at the current fee rate, the
//!   amount above dust, the outflow limits, …) and against replays (one
//!   request signature pays at most one request), again right before the
//!   burn is signed, then burned; only when `get-burn` shows the burn, for
//!   its amount and requester, at that depth is the fulfilment built,
//!   checked with [`peg_rules::check_fulfilment`], signed by the signers
//!   (the request carries a [`peg_rules::SignPayload`] they check on their
//!   own nodes) and broadcast — after the burn is checked once more.
//!
//! A step that fails for good (a node's permanent refusal, a wallet that
//! cannot build) is retried after a backoff at most
//! [`PegChecks::max_attempts`] times, then the op ends in `failed` (or
//! `rejected`, when nothing was done for it yet) with the reason. A wait that
//! needs no operator (a fee shortfall after the burn, a burn not final any
//! more) is stored as the op's `waiting` reason, shown by `status`. The
//! signers' refusals are retried without limit: a signer refuses what its own
//! nodes do not show yet, so a refused payout waits, every signer's rule in
//! the op's last error.
//!
//! Every step's outcome is stored before the next step starts. Signed
//! transactions are stored before they are broadcast and re-broadcast, never
//! rebuilt, after a restart. Node errors back off per operation and never end
//! the loop; only a failing queue does, since without it nothing can be
//! promised.
//!
//! A rejected peg-in may be refunded on the operator's request
//! ([`StacksCoordinator::request_refund`], `coordinator-cli refund`): see
//! the `refund` module; `refunded` is terminal.
//!
//! The loop never prints; it logs through the `log` crate.

pub mod config;
pub mod lock;
pub mod metrics;
mod refund;
pub mod retry;
pub mod secret;
pub mod source;
pub mod startup;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Network, OutPoint, ScriptBuf, Transaction, Txid};
use bitcoin_node_client::BitcoinNode;
use fee_wallet::{next_nonce, BitcoinWallet, FulfillmentInputs, StacksWallet};
use frost_coordinator::FrostCoordinator;
use log::{debug, error, info, warn};
use peg_ops::{BurnHeight, PegOp, PegOutRequestOp, SignedStacksTx};
use peg_queue::{OpState, PegQueue, QueuedOp};
use retry::Effect;
use stacks_node_client::StacksNode;
use stacks_wire::{ContractId, PrincipalData, StacksNetwork};

pub use bitcoin;
pub use peg_rules::{Allowlist, Policy};

/// Returns a Bitcoin height as the op types count it.
pub fn bitcoin_height(h: u64) -> BurnHeight {
    BurnHeight(h)
}
pub use config::Config;
pub use source::{BitcoinBlockSource, OpSource, SourceError, StacksNodeSource};

/// The loop wired to real nodes over HTTP: the SQLite queue, the stacks-node
/// and bitcoind RPC clients, the contract-call and peg wallets, the relay
/// FROST coordinator, and either op source.
pub type HttpCoordinator = StacksCoordinator<
    peg_queue::SqlitePegQueue,
    stacks_node_client::UreqStacksNode,
    bitcoin_node_client::UreqBitcoinNode,
    fee_wallet::ContractCallWallet<stacks_node_client::UreqStacksNode>,
    fee_wallet::PegWallet,
    frost_coordinator::RelayFrostCoordinator,
    Box<dyn OpSource>,
>;

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue failed; the loop cannot go on without its record.
    #[error("peg queue failed")]
    Queue(#[source] peg_queue::Error),
    /// A one-off command named an operation the queue does not hold.
    #[error("no operation with txid {0} in the queue")]
    UnknownOp(Txid),
    /// `refund` named an op that may not be refunded, and why.
    #[error("{0} is not refunded: {1}")]
    NotRefundable(Txid, String),
}

/// How far below a reorged op's height the scan restarts: the new branch may
/// hold the same transaction a little lower.
pub const REORG_RESCAN_DEPTH: u64 = 6;

/// The most steps one op takes in one tick (and the most rounds a tick
/// runs). A full peg-out is seven steps; the limit only stops a node that
/// keeps refusing from spinning the loop.
pub const MAX_STEPS_PER_DRIVE: usize = 16;

/// How often the loop reads the signers' newest attestations from the relay.
pub const ATTESTATION_REFRESH: Duration = Duration::from_secs(10);

/// How often `run` looks for coins at the addresses of keys rotated away
/// from (`scantxoutset` per old key, so not every tick).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// What the loop needs to know, taken from the configuration.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The Bitcoin network.
    pub network: Network,
    /// The Stacks network.
    pub stacks_network: StacksNetwork,
    /// The sBTC contract.
    pub contract: ContractId,
    /// First height to scan when nothing has been scanned.
    pub start_height: BurnHeight,
    /// Confirmations before acting on an op.
    pub op_confirmations: u32,
    /// Confirmations before a fulfilment counts as done.
    pub fulfillment_confirmations: u32,
    /// Sleep between idle ticks.
    pub poll_interval: Duration,
    /// First delay after a failed step; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest delay between retries.
    pub backoff_max: Duration,
    /// `estimatesmartfee` target.
    pub fee_target_blocks: u16,
    /// Most heights scanned in one tick, so ops start moving during a long catch-up.
    pub max_heights_per_tick: u64,
    /// The closed-alpha allowlist of [`PegChecks::defaults_for`]; the loop
    /// checks ops with [`PegChecks::policy`] (its allowlist included).
    pub allowlist: Allowlist,
    /// Warn when the coordinator's STX balance is below this, µSTX.
    pub stx_low_balance_warning: u128,
    /// The most mints (or burns) one Stacks transaction carries: a round's
    /// mints are signed as `mint-many!` calls of up to this many (its burns
    /// as `burn-many!`), one nonce each; a batch of one is a plain `mint!`
    /// or `burn!`. 1 to [`peg_ops::contract::MAX_BATCH`] (a larger value
    /// counts as the maximum, 0 as 1).
    pub stacks_batch: usize,
}

/// The default of [`LoopSettings::stacks_batch`] (`stacks_batch` in the
/// configuration).
pub const DEFAULT_STACKS_BATCH: usize = 100;

impl LoopSettings {
    /// Takes the loop's settings from a checked configuration.
    pub fn from_config(c: &Config) -> Self {
        LoopSettings {
            network: c.network,
            stacks_network: c.stacks_network,
            contract: c.contract.clone(),
            start_height: c.start_height,
            op_confirmations: c.op_confirmations,
            fulfillment_confirmations: c.fulfillment_confirmations,
            poll_interval: c.poll_interval,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            fee_target_blocks: c.fees.bitcoin_fee_target_blocks,
            max_heights_per_tick: 100,
            allowlist: c.policy.allowlist.clone(),
            stx_low_balance_warning: u128::from(c.fees.stx_low_balance_warning),
            stacks_batch: c.stacks_batch,
        }
    }
}

/// What the loop checks before it mints, burns or pays, besides
/// [`LoopSettings`] (issue #13). [`StacksCoordinator::new`] starts from
/// [`PegChecks::defaults_for`]; [`StacksCoordinator::with_checks`] sets them
/// (`coordinator-cli` from the configuration: [`PegChecks::from_config`]).
#[derive(Debug, Clone)]
pub struct PegChecks {
    /// The peg's policy, from the signer set file's `[policy]` table.
    pub policy: Policy,
    /// The OP_RETURN magic bytes of peg operations (fulfilments carry them).
    pub magic: [u8; 2],
    /// A mint or burn counts once it is visible at the Stacks block this
    /// many blocks deep, minus one (1: the tip).
    pub stacks_confirmations: u32,
    /// Failed attempts of a step that cannot succeed by waiting before the
    /// op ends in `failed` (or `rejected`) with the reason.
    pub max_attempts: u32,
}

/// The default of [`PegChecks::max_attempts`] (`max_attempts` in the configuration).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

impl PegChecks {
    /// The defaults for `settings`: the policy's default fees and margin with
    /// the settings' allowlist and no outflow limits, the network's magic
    /// bytes, its default Stacks depth, [`DEFAULT_MAX_ATTEMPTS`].
    pub fn defaults_for(settings: &LoopSettings) -> Self {
        let f = peg_rules::PolicyFile::default();
        let rate = |r: u64| bitcoin::FeeRate::from_sat_per_vb(r).unwrap_or(bitcoin::FeeRate::MAX);
        PegChecks {
            policy: Policy {
                allowlist: settings.allowlist.clone(),
                fee_floor: rate(f.fee_rate_floor),
                fee_cap: rate(f.fee_rate_cap),
                subsidy: bitcoin::Amount::from_sat(f.subsidy_sats),
                fee_margin_percent: f.fee_margin_percent,
                max_request: None,
                max_daily_outflow: None,
            },
            magic: config::default_magic_bytes(settings.network),
            stacks_confirmations: config::default_stacks_confirmations(settings.network),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Takes them from a checked configuration.
    pub fn from_config(c: &Config) -> Self {
        PegChecks {
            policy: c.policy.clone(),
            magic: c.magic_bytes,
            stacks_confirmations: c.stacks_confirmations,
            max_attempts: c.max_attempts,
        }
    }
}

/// The components the loop drives.
#[derive(Debug)]
pub struct Components<Q, S, B, SW, BW, F, O> {
    /// The persistent queue.
    pub queue: Q,
    /// The stacks-node.
    pub stacks: S,
    /// The Bitcoin node.
    pub bitcoin: B,
    /// The Stacks wallet.
    pub stacks_wallet: SW,
    /// The Bitcoin (peg) wallet.
    pub bitcoin_wallet: BW,
    /// The FROST coordinator.
    pub frost: F,
    /// Where ops come from.
    pub source: O,
}

/// The outcome of one step of one op.
#[derive(Debug)]
enum Step {
    /// The op moves to this state (stored before the next step).
    Moved(OpState),
    /// Nothing to do until the chain moves.
    Wait(String),
    /// Waiting for something the operator should see (a fee shortfall, a
    /// burn no longer final): stored as the op's `waiting` reason.
    Held(String),
    /// The op left the queue (its block left the best chain before we acted).
    Removed,
    /// The op's mint or burn is signed at the end of the round, batched with
    /// the round's others (or its batch's transaction replaced).
    Call(StacksCall),
    /// A payout (fulfilment or refund) built and checked: signed at the end
    /// of the round, with the round's other payouts, in one
    /// [`FrostCoordinator::sign_many`].
    Sign(Box<PendingSign>),
}

/// A Stacks call an op waits for at the end of its round.
#[derive(Debug)]
enum StacksCall {
    /// Sign its mint or burn, in a batch of the round's others.
    Sign,
    /// Replace the transaction it holds (all of its batch, every op holding
    /// it) by one with the same nonce and at least `min_fee`: the node asked
    /// for that fee, or (`stuck`) it has waited too long as the next nonce.
    Replace {
        old: SignedStacksTx,
        min_fee: u64,
        stuck: bool,
    },
}

/// The outcomes of a round's deferred steps: one per op.
type Outcomes = Vec<(QueuedOp, Result<Step, StepError>)>;

/// A transaction to replace, the least fee asked, and the ops that asked
/// (`true`: stuck, rather than refused for its fee).
type Replacement = (SignedStacksTx, u64, Vec<(QueuedOp, bool)>);

/// A payout built and checked, waiting for the round's signing.
#[derive(Debug)]
struct PendingSign {
    job: frost_coordinator::SignJob,
    unsigned: fee_wallet::UnsignedFulfillment,
    /// `fulfilment` or `refund`, for messages.
    what: &'static str,
    /// The state the signed transaction moves the op to.
    signed: fn(Transaction) -> OpState,
}

/// What the node answered to one Stacks transaction's broadcast this round
/// (a batch's transaction is broadcast once; its other ops see the answer).
#[derive(Debug, Clone)]
enum Broadcast {
    Accepted,
    Rejected(stacks_node_client::Rejection),
    Failed { message: String, transient: bool },
}

/// A step that failed; it is recorded and retried after a backoff.
#[derive(Debug)]
enum StepError {
    Retry { message: String, transient: bool },
    Fatal(peg_queue::Error),
}

impl StepError {
    fn retry(message: impl Into<String>, transient: bool) -> Self {
        StepError::Retry {
            message: message.into(),
            transient,
        }
    }
}

macro_rules! retry_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StepError {
            fn from(e: $t) -> Self {
                StepError::retry(e.to_string(), e.is_transient())
            }
        }
    )*};
}
retry_from!(
    stacks_node_client::Error,
    bitcoin_node_client::Error,
    fee_wallet::Error,
    frost_coordinator::Error,
    peg_coins::Error
);

impl From<SourceError> for StepError {
    fn from(e: SourceError) -> Self {
        StepError::retry(e.message, e.transient)
    }
}

impl From<peg_queue::Error> for StepError {
    fn from(e: peg_queue::Error) -> Self {
        StepError::Fatal(e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_try: Instant,
    delay: Duration,
}

/// What a tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Heights scanned.
    pub heights_scanned: u64,
    /// State changes stored.
    pub steps: usize,
    /// Steps that failed and will be retried.
    pub failures: usize,
    /// Rounds of steps stored, one transaction each.
    pub rounds: usize,
}

/// The peg wallet as one round of fulfilments sees it.
#[derive(Debug)]
struct RoundChain {
    utxos: Vec<bitcoin_node_client::Utxo>,
    fee_rate: Option<bitcoin::FeeRate>,
    stacks_tip: [u8; 32],
    reserved: HashSet<OutPoint>,
}

/// The most of the coordinator's own Stacks transactions pending (signed,
/// not yet confirmed) at once. The stacks-node admits nonces up to
/// confirmed + [`stacks_node_client::MAX_CHAINED_NONCES`] (26); the loop stays
/// below that and waits instead of signing more.
pub const MAX_PENDING_STACKS_TXS: u64 = 25;

/// How long a Stacks transaction may wait as the next nonce to mine before
/// it is replaced by a same-nonce transaction with a higher fee, unless
/// [`StacksCoordinator::set_stacks_replace_after`] says otherwise.
pub const DEFAULT_STACKS_REPLACE_AFTER: Duration = Duration::from_secs(600);

/// The coordinator's event loop.
#[derive(Debug)]
pub struct StacksCoordinator<Q, S, B, SW, BW, F, O> {
    c: Components<Q, S, B, SW, BW, F, O>,
    settings: LoopSettings,
    backoff: HashMap<Txid, Backoff>,
    scan_backoff: Option<Backoff>,
    rescan: Option<BurnHeight>,
    metrics: std::sync::Arc<metrics::Metrics>,
    /// Each height's ops (txid, block) as the source shows them, read once
    /// per tick: a set, so a block of many ops is not copied nor searched
    /// once per op.
    chain_cache: HashMap<BurnHeight, Option<HashSet<(Txid, bitcoin::BlockHash)>>>,
    /// The highest nonce signed in the current round, not yet stored.
    round_nonce: Option<u64>,
    /// The confirmed Stacks nonce, read once per round.
    round_confirmed_nonce: Option<u64>,
    /// The coordinator's account nonce as the round's confirmations read it
    /// (once per round, not once per op).
    round_account_nonce: Option<u64>,
    /// The node's answer to each Stacks transaction broadcast this round.
    round_broadcasts: HashMap<stacks_wire::StacksTxid, Broadcast>,
    /// Whether the pending-transaction limit was hit (logged once per spell).
    pending_limit_hit: bool,
    /// When each broadcast Stacks transaction was first seen as the next
    /// nonce to mine (in memory: a restart gives it a fresh allowance).
    next_to_mine_since: HashMap<stacks_wire::StacksTxid, Instant>,
    /// See [`StacksCoordinator::set_stacks_replace_after`].
    stacks_replace_after: Duration,
    /// Outputs spent by fulfilments built in the current round, not yet stored.
    round_spent: Vec<OutPoint>,
    /// What every fulfilment of the current round builds on, read once per
    /// round (not once per peg-out): the round's own spends are in
    /// `round_spent`, nothing else changes the peg wallet meanwhile.
    round_chain: Option<RoundChain>,
    /// When `tick` next sweeps old keys' coins.
    next_sweep: Option<Instant>,
    /// Our own record of the peg wallet's coins, built from the blocks; when
    /// absent, coins are listed with the node's `scantxoutset`.
    coins: Option<(std::cell::RefCell<peg_coins::CoinRecord>, u64)>,
    /// Whether the coin record was synced this round.
    coins_synced: bool,
    /// See [`PegChecks`].
    checks: PegChecks,
    /// The fee rate estimate, read once per round.
    round_fee_rate: Option<Option<bitcoin::FeeRate>>,
    /// The final Stacks block (`None` inside: the chain is not that long),
    /// read once per round.
    round_final_block: Option<Option<[u8; 32]>>,
    /// Requests accepted in the current round, not yet stored: txid,
    /// signature digest, amount.
    round_accepted: Vec<(Txid, [u8; 32], bitcoin::Amount)>,
    /// [`Self::peg_wallet_scripts`], computed once per round (a taproot
    /// tweak per key, not per op checked).
    round_peg_scripts: Option<Vec<(ScriptBuf, PublicKey)>>,
    /// The signers' newest attestations, and when they were last read.
    attestations: Vec<frost_coordinator::SignerAttestation>,
    next_attestations: Option<Instant>,
    #[cfg(any(test, feature = "testing"))]
    crash_point: Option<CrashPoint>,
}

#[cfg(not(any(test, feature = "testing")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    BeforeStoring(&'static str),
    AfterStoring(&'static str),
}

/// Where a fault test makes the loop die (as if killed): just before or just
/// after storing the move to the named state.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The step's side effect (if any) happened; its outcome is not stored.
    BeforeStoring(&'static str),
    /// The outcome is stored; nothing after it ran.
    AfterStoring(&'static str),
}

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
    /// Creates the loop.
    pub fn new(components: Components<Q, S, B, SW, BW, F, O>, settings: LoopSettings) -> Self {
        StacksCoordinator {
            c: components,
            backoff: HashMap::new(),
            scan_backoff: None,
            rescan: None,
            metrics: std::sync::Arc::default(),
            chain_cache: HashMap::new(),
            round_nonce: None,
            round_confirmed_nonce: None,
            round_account_nonce: None,
            round_broadcasts: HashMap::new(),
            pending_limit_hit: false,
            next_to_mine_since: HashMap::new(),
            stacks_replace_after: DEFAULT_STACKS_REPLACE_AFTER,
            round_spent: Vec::new(),
            round_chain: None,
            next_sweep: None,
            coins: None,
            coins_synced: false,
            checks: PegChecks::defaults_for(&settings),
            round_fee_rate: None,
            round_final_block: None,
            round_accepted: Vec::new(),
            round_peg_scripts: None,
            attestations: Vec::new(),
            next_attestations: None,
            #[cfg(any(test, feature = "testing"))]
            crash_point: None,
            settings,
        }
    }

    /// Sets what the loop checks before it mints, burns or pays.
    pub fn with_checks(mut self, checks: PegChecks) -> Self {
        self.checks = checks;
        self
    }

    /// Forgets what the current round read from the nodes.
    fn new_round(&mut self) {
        self.round_nonce = None;
        self.round_confirmed_nonce = None;
        self.round_account_nonce = None;
        self.round_broadcasts.clear();
        self.round_spent.clear();
        self.round_chain = None;
        self.coins_synced = false;
        self.round_fee_rate = None;
        self.round_final_block = None;
        self.round_accepted.clear();
        self.round_peg_scripts = None;
    }

    /// Sets how long a Stacks transaction may wait as the next nonce to mine
    /// before it is replaced, on purpose, by a same-nonce transaction with a
    /// higher fee (the node's replace-by-fee). Configured by
    /// `fees.stacks_replace_after_secs`.
    pub fn set_stacks_replace_after(&mut self, after: Duration) {
        self.stacks_replace_after = after;
    }

    /// Lists peg wallet coins from our own record (built from the Bitcoin
    /// blocks, reorg-aware, with our own unconfirmed spends) instead of the
    /// node's `scantxoutset`, which sees only confirmed coins and takes
    /// minutes on mainnet. The record is synced once per round of
    /// fulfilments and watches every key's address from the start height.
    /// `first_height` is the height the record was opened with: every key's
    /// address is watched from there.
    pub fn with_coin_record(mut self, record: peg_coins::CoinRecord, first_height: u64) -> Self {
        self.coins = Some((std::cell::RefCell::new(record), first_height));
        self
    }

    /// The unspent coins at `script`: from the coin record when there is one
    /// (synced at most once per round), else from the node.
    fn peg_utxos(
        &mut self,
        script: &ScriptBuf,
    ) -> Result<Vec<bitcoin_node_client::Utxo>, StepError> {
        let Some((coins, first_height)) = &self.coins else {
            let coins = self.c.bitcoin.list_unspent(script)?;
            return self.without_owed(coins);
        };
        let mut record = coins.borrow_mut();
        let rescan = record.watch(script, *first_height)?;
        if rescan || !self.coins_synced {
            let report = record.sync(&self.c.bitcoin)?;
            debug!("coin record synced: {report:?}");
            if !report.caught_up {
                return Err(StepError::retry(
                    format!(
                        "the peg wallet's coin record is catching up (at height {:?})",
                        report.tip
                    ),
                    true,
                ));
            }
            for txid in &report.own_spends_dropped {
                warn!("our transaction {txid} was dropped by a conflicting spend on chain");
            }
            self.coins_synced = true;
        }
        let coins = record.unspent(script, peg_coins::Include::Confirmed)?;
        drop(record);
        self.without_owed(coins)
    }

    /// `coins` without the output 1 of peg-ins not `done` (see
    /// `owed_peg_in_coins`): no fulfilment or sweep spends those.
    fn without_owed(
        &self,
        coins: Vec<bitcoin_node_client::Utxo>,
    ) -> Result<Vec<bitcoin_node_client::Utxo>, StepError> {
        let owed = self.owed_peg_in_coins(&coins)?;
        Ok(coins
            .into_iter()
            .filter(|u| !owed.contains(&u.outpoint))
            .collect())
    }

    /// Records a transaction of ours (fulfilment or sweep) about to be
    /// broadcast: its inputs are never offered again, its change is ours.
    fn record_own_spend(&self, tx: &Transaction) -> Result<(), StepError> {
        if let Some((coins, _)) = &self.coins {
            coins.borrow_mut().record_own_spend(tx)?;
        }
        Ok(())
    }

    /// Makes the loop panic at `point` (fault tests only).
    #[cfg(any(test, feature = "testing"))]
    pub fn set_crash_point(&mut self, point: Option<CrashPoint>) {
        self.crash_point = point;
    }

    #[cfg(any(test, feature = "testing"))]
    fn maybe_crash(&self, point: CrashPoint) {
        if self.crash_point == Some(point) {
            panic!("injected crash at {point:?}");
        }
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn maybe_crash(&self, _: CrashPoint) {}

    /// Returns the loop's counters, for the status endpoint.
    pub fn metrics(&self) -> std::sync::Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Scans again from `height` on the next tick (ops already stored keep
    /// their state: a rescan only adds what is missing).
    pub fn rescan_from(&mut self, height: BurnHeight) {
        self.rescan = Some(height);
    }

    /// Returns the components, for the caller's own use between runs.
    pub fn components(&self) -> &Components<Q, S, B, SW, BW, F, O> {
        &self.c
    }

    /// Runs until `stop` is set: each tick scans new blocks and advances every
    /// pending op as far as it can go; an idle tick sleeps for the poll
    /// interval. A stop finishes the current step, which is stored, and returns.
    ///
    /// # Errors
    /// Only when the queue fails.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), Error> {
        self.run_observed(stop, |_| {})
    }

    /// Like [`StacksCoordinator::run`], calling `after_tick` after every tick
    /// (the status endpoint refreshes its snapshot there).
    ///
    /// # Errors
    /// Only when the queue fails.
    pub fn run_observed(
        &mut self,
        stop: &AtomicBool,
        mut after_tick: impl FnMut(&Self),
    ) -> Result<(), Error> {
        info!("coordinator loop started");
        while !stop.load(Ordering::SeqCst) {
            let report = self.tick(stop)?;
            after_tick(self);
            if report.steps == 0 && report.heights_scanned == 0 {
                sleep_unless_stopped(self.settings.poll_interval, stop);
            }
        }
        info!("stop requested: state stored, loop ended");
        Ok(())
    }

    /// Scans new blocks, then advances every pending op that is not backing off.
    ///
    /// # Errors
    /// Only when the queue fails.
    pub fn tick(&mut self, stop: &AtomicBool) -> Result<TickReport, Error> {
        let mut report = TickReport::default();
        self.chain_cache.clear();
        // While a failed scan backs off, the tip is still read (pending ops
        // need it) but a failure is neither logged nor backed off again: once
        // per backoff, not once per poll.
        let scan_waits = self
            .scan_backoff
            .is_some_and(|b| b.next_try > Instant::now());
        let tip = match self.scan(&mut report) {
            Ok(tip) => Some(tip),
            Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
            Err(StepError::Retry { .. }) if scan_waits => None,
            Err(StepError::Retry { message, transient }) => {
                log_failure("scanning", &message, transient);
                self.metrics.scan_errors.fetch_add(1, Ordering::Relaxed);
                self.scan_backoff = Some(self.next_backoff(self.scan_backoff));
                None
            }
        };
        let now = Instant::now();
        let mut active: Vec<QueuedOp> = self
            .c
            .queue
            .pending()
            .map_err(Error::Queue)?
            .into_iter()
            .filter(|q| {
                self.backoff
                    .get(&q.op.txid())
                    .is_none_or(|b| b.next_try <= now)
            })
            .collect();
        // Rounds: every active op takes one step, then the whole round is
        // stored in one transaction (one fsync), before any op takes its
        // next step. A signed transaction is thus always stored before it is
        // broadcast, which happens in a later round.
        //
        // Within a round, the payouts (fulfilments, refunds) are built and
        // checked op by op, then signed together in one `sign_many`; the
        // mints and burns are signed together in batches (`mint-many!`,
        // `burn-many!`), one nonce per batch. Each op's outcome is its own.
        let mut rounds = 0;
        while !active.is_empty() && !stop.load(Ordering::SeqCst) && rounds < MAX_STEPS_PER_DRIVE {
            rounds += 1;
            self.new_round();
            let mut moves: Vec<(QueuedOp, OpState)> = Vec::new();
            let mut calls: Vec<(QueuedOp, StacksCall)> = Vec::new();
            let mut signs: Vec<(QueuedOp, Box<PendingSign>)> = Vec::new();
            for q in &active {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match self.step(q, tip) {
                    Ok(Step::Call(c)) => calls.push((q.clone(), c)),
                    Ok(Step::Sign(p)) => signs.push((q.clone(), p)),
                    r => self.settle(q, r, &mut moves, &mut report)?,
                }
            }
            for (q, r) in self.sign_round(signs) {
                self.settle(&q, r, &mut moves, &mut report)?;
            }
            let moved: HashSet<Txid> = moves.iter().map(|(q, _)| q.op.txid()).collect();
            for (q, r) in self.call_round(calls, &moved)? {
                self.settle(&q, r, &mut moves, &mut report)?;
            }
            if moves.is_empty() {
                break;
            }
            report.rounds += 1;
            // The states move into the round's batch and back (a batch's
            // ops each hold its transaction: no copy of it per op here).
            let (ops, states): (Vec<QueuedOp>, Vec<OpState>) = moves.into_iter().unzip();
            let batch: Vec<(Txid, OpState)> = ops.iter().map(|q| q.op.txid()).zip(states).collect();
            for (_, s) in &batch {
                self.maybe_crash(CrashPoint::BeforeStoring(s.name()));
            }
            self.c.queue.set_states(&batch).map_err(Error::Queue)?;
            for (_, s) in &batch {
                self.maybe_crash(CrashPoint::AfterStoring(s.name()));
            }
            let mut next = Vec::with_capacity(ops.len());
            for (mut q, (_, state)) in ops.into_iter().zip(batch) {
                info!(
                    "{} {}: {} -> {state}",
                    q.op.kind(),
                    q.op.txid(),
                    q.state.name()
                );
                self.backoff.remove(&q.op.txid());
                self.metrics.steps.fetch_add(1, Ordering::Relaxed);
                report.steps += 1;
                q.state = state;
                q.waiting = None;
                q.last_error = None;
                if !q.state.is_terminal() {
                    next.push(q);
                }
            }
            active = next;
        }
        if self.next_sweep.is_none_or(|t| t <= Instant::now()) && !stop.load(Ordering::SeqCst) {
            self.next_sweep = Some(Instant::now() + SWEEP_INTERVAL);
            match self.sweep_step() {
                Ok(_) => {}
                Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
                Err(StepError::Retry { message, transient }) => {
                    log_failure("sweeping old keys' coins", &message, transient)
                }
            }
        }
        if self.next_attestations.is_none_or(|t| t <= Instant::now()) {
            self.next_attestations = Some(Instant::now() + ATTESTATION_REFRESH);
            self.attestations = self.c.frost.attestations();
        }
        self.metrics.tick(tip.is_some());
        Ok(report)
    }

    /// Each signer's newest attestation of the peg wallet key (read from the
    /// relay at most every [`ATTESTATION_REFRESH`]), for `/attestations`.
    pub fn attestations(&self) -> &[frost_coordinator::SignerAttestation] {
        &self.attestations
    }

    /// Sweeps the coins at the address of every key but the current one to
    /// the current peg wallet, each input signed with its own (old) key. A
    /// pending peg-out request's fee output is never swept: that request's
    /// fulfilment spends it as input 0. Peg-ins that still arrive at an old
    /// address are swept the same way once minted (`done`); until then —
    /// and, when rejected, until refunded — their output 1 stays. Returns
    /// the sweep transactions broadcast (one per old key holding coins).
    ///
    /// # Errors
    /// When the queue fails; node and signing failures are logged and the
    /// sweep is tried again later.
    pub fn sweep_old_keys(&mut self) -> Result<Vec<Txid>, Error> {
        match self.sweep_step() {
            Ok(done) => Ok(done),
            Err(StepError::Fatal(e)) => Err(Error::Queue(e)),
            Err(StepError::Retry { message, transient }) => {
                log_failure("sweeping old keys' coins", &message, transient);
                Ok(Vec::new())
            }
        }
    }

    fn sweep_step(&mut self) -> Result<Vec<Txid>, StepError> {
        // Sweeps run between rounds: read the chain as it is now.
        self.coins_synced = false;
        let current = self.aggregate_key()?;
        let old: Vec<PublicKey> = self
            .c
            .frost
            .keys()
            .into_iter()
            .filter(|k| *k != current)
            .collect();
        if old.is_empty() {
            return Ok(Vec::new());
        }
        let reserved = self.reserved_outpoints()?;
        // Only coins the loop has scanned past: a coin above the scanned
        // height may be an unscanned peg-out request's fee output, which its
        // fulfilment will need.
        let Some(scanned) = self.c.queue.last_scanned_height()? else {
            return Ok(Vec::new());
        };
        let tip = self.c.bitcoin.get_block_count()?;
        let fee_rate = self
            .c
            .bitcoin
            .estimate_smart_fee(self.settings.fee_target_blocks)?;
        let mut sent = Vec::new();
        for key in old {
            let script = self
                .c
                .bitcoin_wallet
                .peg_wallet_address(&key)
                .script_pubkey();
            let mut coins: Vec<bitcoin_node_client::Utxo> = Vec::new();
            for u in self.peg_utxos(&script)? {
                let height = tip
                    .saturating_add(1)
                    .saturating_sub(u64::from(u.confirmations));
                if u.confirmations == 0 || height > scanned.0 || reserved.contains(&u.outpoint) {
                    continue;
                }
                // A failed request's fee output stays: `queue retry` may
                // send it back to be paid.
                if u.outpoint.vout == 2
                    && self.c.queue.get(&u.outpoint.txid)?.is_some_and(|q| {
                        q.op.kind() == peg_ops::PegOpKind::PegOutRequest
                            && matches!(q.state, OpState::Failed { .. })
                    })
                {
                    continue;
                }
                coins.push(u);
            }
            debug!(
                "old key {key}: {} coins to sweep (scanned to {}, tip {tip})",
                coins.len(),
                scanned.0
            );
            if coins.is_empty() {
                continue;
            }
            let unsigned = match self
                .c
                .bitcoin_wallet
                .build_sweep(&coins, &current, fee_rate)
            {
                Ok(u) => u,
                Err(fee_wallet::Error::InsufficientFunds { needed, available }) => {
                    debug!("old key {key}: {available} does not cover a sweep ({needed})");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let items: Vec<frost_coordinator::SignItem> = unsigned
                .sighashes
                .iter()
                .map(|sighash| frost_coordinator::SignItem {
                    key,
                    message: frost_coordinator::ToSign::Taproot { sighash: *sighash },
                })
                .collect();
            let current_script = self
                .c
                .bitcoin_wallet
                .peg_wallet_address(&current)
                .script_pubkey();
            let is_sweepable = |o: &OutPoint, out: &bitcoin::TxOut| {
                coins.iter().any(|u| u.outpoint == *o && u.txout == *out)
            };
            if let Err(rule) = peg_rules::check_sweep(
                &self.checks.policy,
                &unsigned.tx,
                &unsigned.prevouts,
                &current_script,
                &is_sweepable,
            ) {
                error!("old key {key}: refusing an unsafe sweep: {rule}");
                return Err(StepError::retry(
                    format!("wallet built an unsafe sweep: {rule}"),
                    false,
                ));
            }
            let payload = peg_rules::SignPayload::Sweep {
                tx: unsigned.tx.clone(),
                prevouts: unsigned.prevouts.clone(),
            }
            .encode();
            let signatures = self.c.frost.sign(&payload, &items)?;
            let tx = self
                .c
                .bitcoin_wallet
                .finalize_fulfillment(&unsigned, &signatures)?;
            let txid = tx.compute_txid();
            info!(
                "sweeping {} coins ({}) of old key {key} to the current peg wallet: {txid}",
                coins.len(),
                tx.output
                    .iter()
                    .fold(bitcoin::Amount::ZERO, |s, o| s + o.value)
            );
            self.record_own_spend(&tx)?;
            self.c.bitcoin.send_raw_transaction(&tx)?;
            self.metrics.sweeps.fetch_add(1, Ordering::Relaxed);
            sent.push(txid);
        }
        Ok(sent)
    }

    /// Outputs no new transaction may spend: every pending request's fee
    /// output (its own fulfilment spends it) and the inputs of stored
    /// fulfilments.
    fn reserved_outpoints(&self) -> Result<HashSet<OutPoint>, StepError> {
        let mut reserved = HashSet::new();
        for q in self.c.queue.pending()? {
            if q.op.kind() == peg_ops::PegOpKind::PegOutRequest {
                reserved.insert(OutPoint::new(q.op.txid(), 2));
            }
            if let OpState::BitcoinTxSigned { tx } | OpState::BitcoinTxBroadcast { tx } = &q.state {
                reserved.extend(tx.input.iter().map(|i| i.previous_output));
            }
        }
        Ok(reserved)
    }

    /// Advances one op as far as it can go now, for one-off commands.
    /// Returns its state afterwards.
    ///
    /// # Errors
    /// When the op is unknown or the queue fails.
    pub fn process_one(&mut self, txid: &Txid, stop: &AtomicBool) -> Result<OpState, Error> {
        let op = self
            .c
            .queue
            .get(txid)
            .map_err(Error::Queue)?
            .ok_or(Error::UnknownOp(*txid))?;
        let tip = match self.c.source.tip_height() {
            Ok(t) => Some(t),
            Err(e) => {
                log_failure("reading the chain tip", &e.message, e.transient);
                None
            }
        };
        let mut report = TickReport::default();
        self.chain_cache.clear();
        self.new_round();
        self.drive(op, tip, stop, &mut report)?;
        Ok(self
            .c
            .queue
            .get(txid)
            .map_err(Error::Queue)?
            .ok_or(Error::UnknownOp(*txid))?
            .state)
    }

    fn next_backoff(&self, prev: Option<Backoff>) -> Backoff {
        let delay = match prev {
            None => self.settings.backoff_base,
            Some(b) => (b.delay * 2).min(self.settings.backoff_max),
        };
        Backoff {
            next_try: Instant::now() + delay,
            delay,
        }
    }

    /// Scans every new height deep enough to act on; returns the tip.
    fn scan(&mut self, report: &mut TickReport) -> Result<BurnHeight, StepError> {
        let tip = self.c.source.tip_height()?;
        if self
            .scan_backoff
            .is_some_and(|b| b.next_try > Instant::now())
        {
            return Ok(tip);
        }
        let depth = u64::from(self.settings.op_confirmations.max(1));
        // A block at height h has tip - h + 1 confirmations.
        let Some(deepest) = tip.0.saturating_add(1).checked_sub(depth) else {
            return Ok(tip);
        };
        let mut next = match (self.rescan.take(), self.c.queue.last_scanned_height()?) {
            (Some(h), _) => h.0,
            (None, Some(h)) => h.0 + 1,
            (None, None) => self.settings.start_height.0,
        };
        let last = deepest.min(next.saturating_add(self.settings.max_heights_per_tick) - 1);
        while next <= last {
            let Some(ops) = self.c.source.ops_at(BurnHeight(next))? else {
                debug!("height {next} not processed by the op source yet");
                break;
            };
            if !ops.is_empty() {
                info!("height {next}: {} peg operation(s)", ops.len());
            }
            self.c.queue.record_scanned_block(BurnHeight(next), &ops)?;
            // What the source shows at this height now: the tick's steps
            // ask `on_best_chain` the same, so they need not read it again.
            self.chain_cache.insert(
                BurnHeight(next),
                Some(
                    ops.iter()
                        .map(|o| (o.txid(), o.burn_header_hash()))
                        .collect(),
                ),
            );
            report.heights_scanned += 1;
            next += 1;
        }
        self.scan_backoff = None;
        Ok(tip)
    }

    /// Steps one op until it waits, ends, fails a step, or a stop is requested.
    fn drive(
        &mut self,
        mut q: QueuedOp,
        tip: Option<BurnHeight>,
        stop: &AtomicBool,
        report: &mut TickReport,
    ) -> Result<(), Error> {
        let txid = q.op.txid();
        let mut steps = 0;
        while !q.state.is_terminal() && !stop.load(Ordering::SeqCst) {
            if steps == MAX_STEPS_PER_DRIVE {
                debug!("{} {txid}: step limit reached this tick", q.op.kind());
                break;
            }
            steps += 1;
            self.new_round();
            // A deferred step (a mint or burn, a payout to sign) is finished
            // at once, as a round of this op alone; a batch's replacement
            // moves every op holding the batch, stored together.
            let results = match self.step(&q, tip) {
                Ok(Step::Call(c)) => self.call_round(vec![(q.clone(), c)], &HashSet::new())?,
                Ok(Step::Sign(p)) => self.sign_round(vec![(q.clone(), p)]),
                r => vec![(q.clone(), r)],
            };
            let mut moves: Vec<(QueuedOp, OpState)> = Vec::new();
            let mut own_moved = false;
            for (o, r) in results {
                if o.op.txid() == txid {
                    own_moved = matches!(r, Ok(Step::Moved(_)));
                }
                self.settle(&o, r, &mut moves, report)?;
            }
            if !moves.is_empty() {
                let batch: Vec<(Txid, OpState)> = moves
                    .iter()
                    .map(|(o, s)| (o.op.txid(), s.clone()))
                    .collect();
                for (_, s) in &batch {
                    self.maybe_crash(CrashPoint::BeforeStoring(s.name()));
                }
                self.c.queue.set_states(&batch).map_err(Error::Queue)?;
                for (_, s) in &batch {
                    self.maybe_crash(CrashPoint::AfterStoring(s.name()));
                }
            }
            let mut advanced = false;
            for (o, state) in moves {
                info!(
                    "{} {}: {} -> {state}",
                    o.op.kind(),
                    o.op.txid(),
                    o.state.name()
                );
                metrics::log_progress(&self.c.queue, &o.op, &state);
                self.backoff.remove(&o.op.txid());
                if o.op.txid() == txid && own_moved {
                    self.metrics.steps.fetch_add(1, Ordering::Relaxed);
                    report.steps += 1;
                    q.state = state;
                    q.waiting = None;
                    q.last_error = None;
                    advanced = true;
                }
            }
            if !advanced {
                break;
            }
        }
        Ok(())
    }

    /// Records the outcome of one op's step in its round: a move joins the
    /// round's `moves`, a wait is logged (or stored when held), a failure
    /// is recorded and backed off (its terminal state, after the last
    /// attempt, joins `moves`).
    fn settle(
        &mut self,
        q: &QueuedOp,
        r: Result<Step, StepError>,
        moves: &mut Vec<(QueuedOp, OpState)>,
        report: &mut TickReport,
    ) -> Result<(), Error> {
        match r {
            Ok(Step::Moved(state)) => moves.push((q.clone(), state)),
            Ok(Step::Removed) => {}
            Ok(Step::Wait(why)) => debug!(
                "{} {}: waiting in {}: {why}",
                q.op.kind(),
                q.op.txid(),
                q.state.name()
            ),
            Ok(Step::Held(why)) => self.held(q, why).map_err(Error::Queue)?,
            Ok(Step::Call(_) | Step::Sign(_)) => {
                // Only a step returns these; the round's end never does.
                error!(
                    "{} {}: a deferred step deferred again (a bug); retried next round",
                    q.op.kind(),
                    q.op.txid()
                );
            }
            Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
            Err(StepError::Retry { message, transient }) => {
                if let Some(state) = self.failed_step(q, &message, transient, report)? {
                    moves.push((q.clone(), state));
                }
            }
        }
        Ok(())
    }

    /// Records a failed step and backs the op off. A step that waiting
    /// cannot fix (not `transient`) that failed [`PegChecks::max_attempts`]
    /// times returns the state the op ends in: `failed` with the reason, or
    /// `rejected` when nothing was done for it yet. The caller stores it.
    fn failed_step(
        &mut self,
        q: &QueuedOp,
        message: &str,
        transient: bool,
        report: &mut TickReport,
    ) -> Result<Option<OpState>, Error> {
        let txid = q.op.txid();
        log_failure(
            &format!("{} {txid} in {}", q.op.kind(), q.state.name()),
            message,
            transient,
        );
        let attempts = self
            .c
            .queue
            .record_failure(&txid, message)
            .map_err(Error::Queue)?;
        let prev = self.backoff.get(&txid).copied();
        let b = self.next_backoff(prev);
        self.backoff.insert(txid, b);
        self.metrics.step_failures.fetch_add(1, Ordering::Relaxed);
        report.failures += 1;
        if transient || attempts < self.checks.max_attempts {
            return Ok(None);
        }
        let reason = format!(
            "{message} (in {}, gave up after {attempts} attempts)",
            q.state.name()
        );
        error!("{} {txid}: {reason}", q.op.kind());
        self.backoff.remove(&txid);
        Ok(Some(if q.state.has_acted() {
            OpState::Failed { reason }
        } else {
            OpState::Rejected { reason }
        }))
    }

    /// Stores why an op waits, when that changed, and logs it.
    fn held(&self, q: &QueuedOp, why: String) -> Result<(), peg_queue::Error> {
        let txid = q.op.txid();
        if q.waiting.as_deref() != Some(why.as_str()) {
            warn!(
                "{} {txid}: waiting in {}: {why}",
                q.op.kind(),
                q.state.name()
            );
            self.c.queue.set_waiting(&txid, Some(why))?;
        }
        Ok(())
    }

    /// Returns whether `op` is still in its block on the best chain (`None`:
    /// the source has no block at that height now). Answers are cached for
    /// the tick.
    fn on_best_chain(&mut self, op: &PegOp) -> Result<Option<bool>, StepError> {
        let h = op.block_height();
        if !self.chain_cache.contains_key(&h) {
            let v = self.c.source.ops_at(h)?.map(|ops| {
                ops.iter()
                    .map(|o| (o.txid(), o.burn_header_hash()))
                    .collect::<HashSet<_>>()
            });
            self.chain_cache.insert(h, v);
        }
        Ok(self
            .chain_cache
            .get(&h)
            .and_then(Option::as_ref)
            .map(|ops| ops.contains(&(op.txid(), op.burn_header_hash()))))
    }

    /// Decides and performs the next step of one op.
    fn step(&mut self, q: &QueuedOp, tip: Option<BurnHeight>) -> Result<Step, StepError> {
        if q.state.has_acted() && self.on_best_chain(&q.op)? == Some(false) {
            error!(
                "{} {}: block {} at height {} left the best chain after the coordinator acted",
                q.op.kind(),
                q.op.txid(),
                q.op.burn_header_hash(),
                q.op.block_height()
            );
            return Ok(Step::Moved(OpState::Failed {
                reason: format!(
                    "its block {} left the best chain after the coordinator acted (in {}): operator attention",
                    q.op.burn_header_hash(),
                    q.state.name()
                ),
            }));
        }
        if matches!(q.state, OpState::Detected | OpState::Accepted) {
            // Nothing was signed for it yet: act only while its block is on
            // the best chain.
            let op = &q.op;
            match self.on_best_chain(op)? {
                None => {
                    return Ok(Step::Wait(format!(
                        "no block at height {} now",
                        op.block_height()
                    )))
                }
                Some(false) => {
                    // Forget it, and scan the heights again so the new
                    // branch's ops are found.
                    let from = op.block_height().0.saturating_sub(REORG_RESCAN_DEPTH + 1);
                    warn!(
                        "{} {}: its block at height {} left the best chain before anything was signed; dropped, rescanning from height {}",
                        op.kind(),
                        op.txid(),
                        op.block_height(),
                        from + 1
                    );
                    self.c.queue.remove_unacted(&op.txid())?;
                    self.c.queue.rewind_scan(Some(BurnHeight(from)))?;
                    return Ok(Step::Removed);
                }
                Some(true) => {}
            }
        }
        match (&q.state, &q.op) {
            (OpState::Detected | OpState::Accepted, op) => {
                let Some(tip) = tip else {
                    return Err(StepError::retry("chain tip unknown", true));
                };
                let accepting = q.state == OpState::Detected;
                match self.check(op, tip, accepting)? {
                    peg_rules::Verdict::Accept if accepting => {
                        if let PegOp::PegOutRequest(r) = op {
                            self.round_accepted.push((
                                r.txid,
                                peg_rules::request_signature_digest(r),
                                r.amount,
                            ));
                        }
                        Ok(Step::Moved(OpState::Accepted))
                    }
                    // Signed at the end of the round, in a batch with the
                    // round's other mints (or burns): see `call_round`.
                    peg_rules::Verdict::Accept => Ok(Step::Call(StacksCall::Sign)),
                    peg_rules::Verdict::Reject(rule) => {
                        warn!("{} {}: rejected: {rule}", op.kind(), op.txid());
                        Ok(Step::Moved(OpState::Rejected {
                            reason: rule.to_string(),
                        }))
                    }
                    peg_rules::Verdict::Wait(why) => Ok(Step::Wait(why)),
                }
            }
            (OpState::StacksTxSigned { tx }, op) => self.broadcast_stacks_tx(op, tx),
            (OpState::StacksTxBroadcast { tx }, op) => self.confirm_stacks_tx(op, tx),
            (OpState::BurnConfirmed, PegOp::PegOutRequest(r)) => {
                if let Some(step) = self.burn_still_final(&q.op)? {
                    return Ok(step);
                }
                self.build_fulfillment(r)
            }
            (OpState::BitcoinTxSigned { tx }, PegOp::PegOutRequest(_)) => {
                // Right before BTC leaves: the burn must still be final.
                if let Some(step) = self.burn_still_final(&q.op)? {
                    return Ok(step);
                }
                self.broadcast_fulfillment(tx)
            }
            (OpState::BitcoinTxBroadcast { tx }, PegOp::PegOutRequest(_)) => {
                self.confirm_fulfillment(tx)
            }
            (OpState::RefundRequested, PegOp::PegIn(p)) => self.build_refund(p),
            (OpState::RefundSigned { tx }, PegOp::PegIn(p)) => self.broadcast_refund(p, tx),
            (OpState::RefundBroadcast { tx }, PegOp::PegIn(p)) => self.confirm_refund(p, tx),
            (state, op) => Ok(Step::Moved(OpState::Failed {
                reason: format!("a {} cannot be in state {}", op.kind(), state.name()),
            })),
        }
    }

    /// A payout to sign at the end of the round: the signers sign
    /// `unsigned`'s inputs (`items`, with `payload` for their checks), then
    /// [`Self::finish_signed`] attaches the signatures. The inputs count as
    /// spent for the rest of the round at once, so no other payout of the
    /// round builds on them.
    fn defer_signing(
        &mut self,
        payload: Vec<u8>,
        items: Vec<frost_coordinator::SignItem>,
        unsigned: fee_wallet::UnsignedFulfillment,
        what: &'static str,
        signed: fn(Transaction) -> OpState,
    ) -> Step {
        self.round_spent
            .extend(unsigned.tx.input.iter().map(|i| i.previous_output));
        Step::Sign(Box::new(PendingSign {
            job: frost_coordinator::SignJob { payload, items },
            unsigned,
            what,
            signed,
        }))
    }

    /// Signs the round's payouts with one [`FrostCoordinator::sign_many`]
    /// (the signers run their rounds together), then finalizes each: one
    /// outcome per op, a job's failure its op's alone.
    fn sign_round(&mut self, signs: Vec<(QueuedOp, Box<PendingSign>)>) -> Outcomes {
        if signs.is_empty() {
            return Vec::new();
        }
        let jobs: Vec<frost_coordinator::SignJob> =
            signs.iter().map(|(_, p)| p.job.clone()).collect();
        let started = Instant::now();
        let results = self.c.frost.sign_many(&jobs);
        let answered = results.len();
        let mut results = results.into_iter();
        let took = started.elapsed();
        debug!("{} payouts signed together in {took:?}", jobs.len());
        // The call's wall time, once: its jobs' rounds overlap.
        self.metrics.signing_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let mut out = Vec::with_capacity(signs.len());
        for (q, p) in signs {
            let r = match results.next() {
                Some(Ok(signatures)) => {
                    self.metrics.signing_rounds.fetch_add(1, Ordering::Relaxed);
                    self.finish_signed(&p, &signatures)
                }
                Some(Err(e)) => Err(e.into()),
                None => Err(StepError::retry(
                    format!(
                        "the signers' coordinator answered {answered} of {} signing jobs",
                        jobs.len()
                    ),
                    true,
                )),
            };
            out.push((q, r));
        }
        out
    }

    /// Attaches the signers' signatures to a checked payout. The wallet's
    /// transaction must be the one checked (signing adds witnesses only;
    /// anything else would be a transaction nobody checked), else the op
    /// fails.
    fn finish_signed(
        &self,
        p: &PendingSign,
        signatures: &[bitcoin::secp256k1::schnorr::Signature],
    ) -> Result<Step, StepError> {
        let items = &p.job.items;
        if signatures.len() != items.len() {
            return Err(StepError::retry(
                format!("{} signatures for {} inputs", signatures.len(), items.len()),
                false,
            ));
        }
        let tx = self
            .c
            .bitcoin_wallet
            .finalize_fulfillment(&p.unsigned, signatures)?;
        if tx.compute_txid() != p.unsigned.tx.compute_txid() {
            return Ok(Step::Moved(OpState::Failed {
                reason: format!(
                    "wallet finalized transaction {} for the checked {} {}",
                    tx.compute_txid(),
                    p.what,
                    p.unsigned.tx.compute_txid()
                ),
            }));
        }
        Ok(Step::Moved((p.signed)(tx)))
    }

    fn aggregate_key(&self) -> Result<PublicKey, StepError> {
        self.c
            .frost
            .aggregate_public_key()
            .ok_or_else(|| StepError::retry("no aggregate key yet: dkg has not run", true))
    }

    /// The scriptPubKey of every key we hold, with its key: the current
    /// peg wallet and the addresses of keys rotated away from (whose coins,
    /// including peg-ins that still arrive there, are swept to the current
    /// key). Computed once per round: the keys change only with a DKG, never
    /// within a round.
    fn peg_wallet_scripts(&mut self) -> Result<Vec<(ScriptBuf, PublicKey)>, StepError> {
        if let Some(s) = &self.round_peg_scripts {
            return Ok(s.clone());
        }
        let mut keys = self.c.frost.keys();
        if keys.is_empty() {
            keys.push(self.aggregate_key()?);
        }
        let scripts: Vec<(ScriptBuf, PublicKey)> = keys
            .into_iter()
            .map(|k| {
                (
                    self.c.bitcoin_wallet.peg_wallet_address(&k).script_pubkey(),
                    k,
                )
            })
            .collect();
        self.round_peg_scripts = Some(scripts.clone());
        Ok(scripts)
    }

    /// Checks an op against the rules of the peg, on what our nodes show
    /// now: [`peg_rules::peg_in_mintable`], [`peg_rules::peg_out_payable`],
    /// and for a request about to be accepted (`accepting`) the daily outflow
    /// and replays: a request whose signature already pays another request
    /// (accepted or further, not rejected) is rejected `request.replay`.
    /// Run again on an accepted op right before its mint or burn is signed
    /// (the outflow was counted at acceptance).
    fn check(
        &mut self,
        op: &PegOp,
        tip: BurnHeight,
        accepting: bool,
    ) -> Result<peg_rules::Verdict, StepError> {
        let scripts: Vec<ScriptBuf> = self
            .peg_wallet_scripts()?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let networks = peg_rules::Networks {
            bitcoin: self.settings.network,
            stacks: self.settings.stacks_network,
        };
        let confirmations = self.settings.op_confirmations;
        let op = match op {
            PegOp::PegIn(op) => {
                // Output 1 must be unspent (mempool included): a refunded
                // peg-in is never minted. Fulfilments and sweeps never spend
                // a peg-in's output 1 before it is `done`.
                let output1_unspent = self
                    .c
                    .bitcoin
                    .get_tx_out(&OutPoint::new(op.txid, 1), true)?
                    .is_some();
                return Ok(peg_rules::peg_in_mintable(
                    &self.checks.policy,
                    networks,
                    op,
                    &peg_rules::PegInFacts {
                        tip_height: tip.0,
                        confirmations,
                        peg_scripts: &scripts,
                        output1_unspent: Some(output1_unspent),
                    },
                ));
            }
            PegOp::PegOutRequest(op) => op,
        };
        let output2_unspent = self
            .c
            .bitcoin
            .get_tx_out(&OutPoint::new(op.txid, 2), true)?
            .is_some();
        let fee_rate = self.fee_rate()?;
        let outflow_last_day = if accepting {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(24 * 3600);
            self.round_accepted
                .iter()
                .fold(self.c.queue.outflow_since(since)?, |sum, (_, _, a)| {
                    sum.checked_add(*a).unwrap_or(bitcoin::Amount::MAX)
                })
        } else {
            bitcoin::Amount::ZERO
        };
        let verdict = peg_rules::peg_out_payable(
            &self.checks.policy,
            networks,
            op,
            &peg_rules::RequestFacts {
                tip_height: tip.0,
                confirmations,
                peg_scripts: &scripts,
                output2_unspent,
                fee_rate,
                outflow_last_day,
            },
        );
        if verdict != peg_rules::Verdict::Accept {
            return Ok(verdict);
        }
        let digest = peg_rules::request_signature_digest(op);
        let holder = match self
            .round_accepted
            .iter()
            .find(|(t, d, _)| *d == digest && *t != op.txid)
        {
            Some((t, _, _)) => Some(*t),
            None => self.c.queue.signature_used_by(&digest, &op.txid)?,
        };
        Ok(match holder {
            Some(other) => peg_rules::Verdict::Reject(peg_rules::Rule::new(
                "request.replay",
                format!(
                    "its signature (amount {} to {}) already pays request {other}; a user repeating a peg-out changes the amount by a sat",
                    op.amount, op.recipient
                ),
            )),
            None => verdict,
        })
    }

    /// The node's fee rate estimate, read once per round.
    fn fee_rate(&mut self) -> Result<Option<bitcoin::FeeRate>, StepError> {
        if let Some(r) = self.round_fee_rate {
            return Ok(r);
        }
        let r = self
            .c
            .bitcoin
            .estimate_smart_fee(self.settings.fee_target_blocks)?;
        self.round_fee_rate = Some(r);
        Ok(r)
    }

    fn next_stacks_nonce(&mut self) -> Result<u64, StepError> {
        if let Some(n) = self.round_nonce {
            // Read this round already; everything up to `n` is ours.
            return n
                .checked_add(1)
                .ok_or_else(|| StepError::retry("the Stacks nonce is exhausted", false));
        }
        let me = PrincipalData::Standard(self.c.stacks_wallet.address());
        let account = self.c.stacks.get_account(&me)?;
        if account.balance < self.settings.stx_low_balance_warning {
            warn!(
                "the coordinator's STX balance is {} µSTX, below the warning threshold of {} µSTX: top up {me}",
                account.balance, self.settings.stx_low_balance_warning
            );
        }
        self.round_confirmed_nonce = Some(account.nonce);
        let stored = self.c.queue.last_signed_stacks_nonce()?;
        Ok(next_nonce(account.nonce, stored.max(self.round_nonce)))
    }

    /// Says why not to sign `nonce` now, when [`MAX_PENDING_STACKS_TXS`] of
    /// our transactions are already pending (signed nonces at or above the
    /// confirmed one). Updates `sbtc_stacks_pending_transactions`; logs once
    /// per spell, counts every wait.
    fn pending_limit(&mut self, nonce: u64) -> Option<String> {
        let confirmed = self.round_confirmed_nonce?;
        let pending = nonce.saturating_sub(confirmed);
        self.metrics
            .stacks_pending_transactions
            .store(pending, Ordering::Relaxed);
        if pending < MAX_PENDING_STACKS_TXS {
            if self.pending_limit_hit {
                info!("{pending} Stacks transactions pending: signing again");
                self.pending_limit_hit = false;
            }
            return None;
        }
        self.metrics
            .stacks_pending_limit_waits
            .fetch_add(1, Ordering::Relaxed);
        if !self.pending_limit_hit {
            warn!(
                "{pending} Stacks transactions pending (confirmed nonce {confirmed}): waiting for confirmations before signing more (limit {MAX_PENDING_STACKS_TXS})"
            );
            self.pending_limit_hit = true;
        }
        Some(format!(
            "{pending} Stacks transactions pending, the limit is {MAX_PENDING_STACKS_TXS}"
        ))
    }

    fn sign_stacks_tx(
        &self,
        op: &PegOp,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, StepError> {
        Ok(match op {
            PegOp::PegIn(op) => self.c.stacks_wallet.build_mint(op, nonce, min_fee)?,
            PegOp::PegOutRequest(op) => {
                let requester = op
                    .requester(self.settings.stacks_network)
                    .map_err(|e| StepError::retry(format!("requester: {e}"), false))?;
                self.c
                    .stacks_wallet
                    .build_burn(op, &requester, nonce, min_fee)?
            }
        })
    }

    /// Signs one Stacks transaction for `ops` (all peg-ins or all peg-out
    /// requests) with `nonce`: a plain `mint!` or `burn!` for one op, a
    /// `mint-many!` or `burn-many!` for several.
    fn build_stacks_call(
        &self,
        ops: &[QueuedOp],
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, StepError> {
        if let [q] = ops {
            return self.sign_stacks_tx(&q.op, nonce, min_fee);
        }
        let mut mints = Vec::new();
        let mut burns = Vec::new();
        for q in ops {
            match &q.op {
                PegOp::PegIn(p) => mints.push(p.clone()),
                PegOp::PegOutRequest(r) => {
                    let requester = r.requester(self.settings.stacks_network).map_err(|e| {
                        StepError::retry(format!("requester of {}: {e}", r.txid), false)
                    })?;
                    burns.push((r.clone(), requester));
                }
            }
        }
        Ok(match (mints.is_empty(), burns.is_empty()) {
            (false, true) => self
                .c
                .stacks_wallet
                .build_mint_many(&mints, nonce, min_fee)?,
            (true, false) => self
                .c
                .stacks_wallet
                .build_burn_many(&burns, nonce, min_fee)?,
            _ => {
                return Err(StepError::retry(
                    "a batch of mints and burns together (a bug)",
                    false,
                ))
            }
        })
    }

    /// Finishes the round's Stacks calls. The ops to mint, then those to
    /// burn, are signed in batches of [`LoopSettings::stacks_batch`], one
    /// nonce per batch (so the pending limit counts transactions, not ops);
    /// every op of a batch moves to `stacks_tx_signed` with the batch's
    /// transaction. A batch whose transaction is to be replaced is signed
    /// again with its nonce, for every op holding it. One outcome per op
    /// (and per op a replacement moves besides those that asked).
    fn call_round(
        &mut self,
        calls: Vec<(QueuedOp, StacksCall)>,
        moved: &HashSet<Txid>,
    ) -> Result<Outcomes, Error> {
        let mut out = Vec::new();
        let mut to_sign = Vec::new();
        let mut replaces: Vec<Replacement> = Vec::new();
        for (q, c) in calls {
            match c {
                StacksCall::Sign => to_sign.push(q),
                StacksCall::Replace {
                    old,
                    min_fee,
                    stuck,
                } => match replaces.iter_mut().find(|r| r.0.txid == old.txid) {
                    Some(r) => {
                        r.1 = r.1.max(min_fee);
                        r.2.push((q, stuck));
                    }
                    None => replaces.push((old, min_fee, vec![(q, stuck)])),
                },
            }
        }
        for (old, min_fee, asked) in replaces {
            self.replace_batch(&old, min_fee, asked, moved, &mut out)?;
        }
        let size = self
            .settings
            .stacks_batch
            .clamp(1, peg_ops::contract::MAX_BATCH);
        let (mints, burns): (Vec<QueuedOp>, Vec<QueuedOp>) = to_sign
            .into_iter()
            .partition(|q| matches!(q.op, PegOp::PegIn(_)));
        let mut limit = None;
        for group in [mints, burns] {
            for chunk in group.chunks(size) {
                self.sign_batch(chunk, &mut limit, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Signs one batch of mints (or burns) with the next nonce, unless the
    /// pending limit is reached (`limit`: then this batch and the round's
    /// later ones wait). A batch the wallet cannot build for good is signed
    /// op by op, so one bad op fails alone.
    fn sign_batch(
        &mut self,
        chunk: &[QueuedOp],
        limit: &mut Option<String>,
        out: &mut Outcomes,
    ) -> Result<(), Error> {
        if let Some(why) = limit {
            // Every transaction that waits counts, as the first one did.
            self.metrics
                .stacks_pending_limit_waits
                .fetch_add(1, Ordering::Relaxed);
            out.extend(
                chunk
                    .iter()
                    .map(|q| (q.clone(), Ok(Step::Wait(why.clone())))),
            );
            return Ok(());
        }
        let each = |out: &mut Vec<_>, message: &str, transient: bool| {
            out.extend(
                chunk
                    .iter()
                    .map(|q| (q.clone(), Err(StepError::retry(message, transient)))),
            );
        };
        let nonce = match self.next_stacks_nonce() {
            Ok(n) => n,
            Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
            Err(StepError::Retry { message, transient }) => {
                each(out, &message, transient);
                return Ok(());
            }
        };
        if let Some(why) = self.pending_limit(nonce) {
            out.extend(
                chunk
                    .iter()
                    .map(|q| (q.clone(), Ok(Step::Wait(why.clone())))),
            );
            *limit = Some(why);
            return Ok(());
        }
        match self.build_stacks_call(chunk, nonce, None) {
            Ok(tx) => {
                self.round_nonce = self.round_nonce.max(Some(tx.nonce));
                if chunk.len() > 1 {
                    info!(
                        "{} {}s signed in one transaction: stacks tx {} (nonce {}, fee {} µSTX)",
                        chunk.len(),
                        if matches!(chunk[0].op, PegOp::PegIn(_)) {
                            "mint"
                        } else {
                            "burn"
                        },
                        tx.txid,
                        tx.nonce,
                        tx.fee
                    );
                }
                out.extend(chunk.iter().map(|q| {
                    (
                        q.clone(),
                        Ok(Step::Moved(OpState::StacksTxSigned { tx: tx.clone() })),
                    )
                }));
            }
            Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
            Err(StepError::Retry { message, transient }) if !transient && chunk.len() > 1 => {
                warn!(
                    "a batch of {} cannot be built: {message}; signing each alone",
                    chunk.len()
                );
                for q in chunk {
                    self.sign_batch(std::slice::from_ref(q), limit, out)?;
                }
            }
            Err(StepError::Retry { message, transient }) => each(out, &message, transient),
        }
        Ok(())
    }

    /// Replaces `old` (same nonce, at least `min_fee`) for every op holding
    /// it: those that `asked` and every other pending holder that did not
    /// move this round (`moved`), even one backing off. All of them move to
    /// the replacement in the round's one queue transaction, so no op keeps
    /// a transaction whose nonce another took. When it cannot be signed, an
    /// op that asked because the node wants a higher fee fails its step; one
    /// whose transaction is merely stuck keeps waiting with it.
    fn replace_batch(
        &mut self,
        old: &SignedStacksTx,
        min_fee: u64,
        asked: Vec<(QueuedOp, bool)>,
        moved: &HashSet<Txid>,
        out: &mut Outcomes,
    ) -> Result<(), Error> {
        let mut members: Vec<QueuedOp> = asked.iter().map(|(q, _)| q.clone()).collect();
        let listed: HashSet<Txid> = members.iter().map(|q| q.op.txid()).collect();
        let mut holder_moved = None;
        for p in self.c.queue.pending().map_err(Error::Queue)? {
            let holds = matches!(&p.state,
                OpState::StacksTxSigned { tx } | OpState::StacksTxBroadcast { tx } if tx.txid == old.txid);
            if !holds || listed.contains(&p.op.txid()) {
                continue;
            }
            if moved.contains(&p.op.txid()) {
                holder_moved = Some(p.op.txid());
            } else {
                members.push(p);
            }
        }
        // A holder that moved this round (from `stacks_tx_signed` to
        // `stacks_tx_broadcast` of this very transaction, when a one-off
        // `process_one` or a stop left the batch's ops in two states) still
        // needs its element: a replacement without it, mined in place of
        // `old` (same nonce), would leave it "mined but without effect".
        // Its move is stored this round; the whole batch is replaced the
        // next (red team #16).
        if let Some(m) = holder_moved {
            for (q, _) in asked {
                out.push((
                    q,
                    Ok(Step::Wait(format!(
                        "stacks tx {} is replaced with its whole batch next round ({m} of it moved this round)",
                        old.txid
                    ))),
                ));
            }
            return Ok(());
        }
        let stuck = asked.iter().any(|(_, s)| *s);
        match self.build_stacks_call(&members, old.nonce, Some(min_fee)) {
            Ok(again) => {
                warn!(
                    "stacks tx {} (nonce {}, {} op(s): {}) {}: replacing it with {} (same nonce, fee {} -> {})",
                    old.txid,
                    old.nonce,
                    members.len(),
                    members
                        .iter()
                        .map(|m| m.op.txid().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if stuck {
                        format!("not mined after {:?}", self.stacks_replace_after)
                    } else {
                        format!("refused: the node asks a fee of {min_fee}")
                    },
                    again.txid,
                    old.fee,
                    again.fee
                );
                if stuck {
                    self.metrics
                        .stacks_replacements
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.next_to_mine_since.remove(&old.txid);
                out.extend(members.into_iter().map(|m| {
                    (
                        m,
                        Ok(Step::Moved(OpState::StacksTxSigned { tx: again.clone() })),
                    )
                }));
            }
            Err(StepError::Fatal(e)) => return Err(Error::Queue(e)),
            Err(StepError::Retry { message, transient }) => {
                if stuck {
                    warn!(
                        "stacks tx {} is stuck and cannot be replaced: {message}",
                        old.txid
                    );
                    let _ = self.broadcast_once(old, false);
                }
                for (q, s) in asked {
                    let r = if s {
                        Ok(Step::Wait(format!(
                            "stacks tx {} not yet mined, and cannot be replaced: {message}",
                            old.txid
                        )))
                    } else {
                        Err(StepError::retry(message.clone(), transient))
                    };
                    out.push((q, r));
                }
            }
        }
        Ok(())
    }

    /// The Stacks block whose state is final: [`PegChecks::stacks_confirmations`]
    /// `− 1` below the tip (`None`: the chain is not that long). Read once
    /// per round.
    fn final_block(&mut self) -> Result<Option<[u8; 32]>, StepError> {
        if let Some(b) = self.round_final_block {
            return Ok(b);
        }
        let depth = self.checks.stacks_confirmations.saturating_sub(1);
        let b = self.c.stacks.block_at_depth(depth)?;
        self.round_final_block = Some(b);
        Ok(b)
    }

    /// What the contract shows of the op's mint (`get-mint`) or burn
    /// (`get-burn`): final when visible at [`Self::final_block`] for the op's
    /// amount and principal (a mint's recipient, a burn's requester).
    fn effect(&mut self, op: &PegOp) -> Result<Effect, StepError> {
        let block = self.final_block()?;
        let sender = PrincipalData::Standard(self.c.stacks_wallet.address());
        let reader = retry::ContractReader {
            contract: &self.settings.contract,
            sender: &sender,
            network: self.settings.stacks_network,
        };
        retry::contract_effect(&self.c.stacks, &reader, block.as_ref(), op).map_err(|e| match e {
            retry::ReadError::Stacks(e) => e.into(),
            retry::ReadError::Bitcoin(e) => e.into(),
            retry::ReadError::Invalid(m) => StepError::retry(m, false),
        })
    }

    /// Checks, before a fulfilment is built or broadcast, that the burn is
    /// still final: `None` to go on, else the step to take instead.
    fn burn_still_final(&mut self, op: &PegOp) -> Result<Option<Step>, StepError> {
        let depth = self.checks.stacks_confirmations;
        Ok(match self.effect(op)? {
            Effect::Final => None,
            Effect::Mismatch(reason) => {
                error!("peg-out {}: not paying: {reason}", op.txid());
                Some(Step::Moved(OpState::Failed { reason }))
            }
            Effect::AtTip => Some(Step::Held(format!(
                "the burn is no longer {depth} Stacks blocks deep (a fork?): not paying until it is"
            ))),
            Effect::Absent => Some(Step::Held(
                "the burn is no longer on the Stacks chain (a fork deeper than confirmations.stacks?): not paying; operator attention".into(),
            )),
        })
    }

    fn after_stacks_effect(op: &PegOp) -> OpState {
        match op {
            PegOp::PegIn(_) => OpState::Done,
            PegOp::PegOutRequest(_) => OpState::BurnConfirmed,
        }
    }

    /// Offers `tx` to the node once per round: a batch's other ops see the
    /// first one's answer. `counted`: a refusal counts in
    /// `sbtc_stacks_broadcast_errors` (not for a pending one's re-offer).
    fn broadcast_once(&mut self, tx: &SignedStacksTx, counted: bool) -> Broadcast {
        if let Some(b) = self.round_broadcasts.get(&tx.txid) {
            return b.clone();
        }
        let b = match self.c.stacks.broadcast_transaction(&tx.raw) {
            Ok(txid) => {
                if txid != tx.txid {
                    warn!("node reports txid {txid} for our transaction {}", tx.txid);
                }
                Broadcast::Accepted
            }
            Err(stacks_node_client::Error::Rejected(r)) => {
                if counted {
                    self.metrics
                        .stacks_broadcast_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                Broadcast::Rejected(r)
            }
            Err(e) => Broadcast::Failed {
                message: e.to_string(),
                transient: e.is_transient(),
            },
        };
        self.round_broadcasts.insert(tx.txid, b.clone());
        b
    }

    fn broadcast_stacks_tx(&mut self, op: &PegOp, tx: &SignedStacksTx) -> Result<Step, StepError> {
        match self.broadcast_once(tx, true) {
            Broadcast::Accepted => Ok(Step::Moved(OpState::StacksTxBroadcast { tx: tx.clone() })),
            Broadcast::Rejected(r) => {
                // A rebroadcast after a crash can be refused because the
                // transaction was already mined: ask the contract first.
                match self.effect(op)? {
                    Effect::Final => return Ok(Step::Moved(Self::after_stacks_effect(op))),
                    Effect::AtTip => {
                        return Ok(Step::Moved(OpState::StacksTxBroadcast { tx: tx.clone() }))
                    }
                    Effect::Mismatch(reason) => return Ok(Step::Moved(OpState::Failed { reason })),
                    Effect::Absent => {}
                }
                match r.reason.as_str() {
                    "FeeTooLow" => {
                        let expected = r.reason_data_u64("expected");
                        match expected {
                            // Same nonce, the fee the node asks for: the
                            // whole batch is signed again (`call_round`).
                            Some(fee) if fee > tx.fee => Ok(Step::Call(StacksCall::Replace {
                                old: tx.clone(),
                                min_fee: fee,
                                stuck: false,
                            })),
                            _ => Err(StepError::retry(format!("node refused the fee: {r}"), true)),
                        }
                    }
                    "BadNonce" => {
                        match (r.reason_data_u64("expected"), r.reason_data_u64("actual")) {
                            // Our nonce was consumed by another transaction:
                            // this one can never be mined. Sign again with a
                            // fresh nonce; the contract's replay guard makes a
                            // second mint or burn of one Bitcoin txid impossible.
                            (Some(expected), Some(actual)) if expected > actual => {
                                warn!(
                                    "{} {}: nonce {actual} already used, signing again",
                                    op.kind(),
                                    op.txid()
                                );
                                Ok(Step::Moved(OpState::Accepted))
                            }
                            _ => Err(StepError::retry(
                                format!("node refused the nonce: {r}"),
                                true,
                            )),
                        }
                    }
                    "ConflictingNonceInMempool" | "TooMuchChaining" => Err(StepError::retry(
                        format!("node refused the transaction for now: {r}"),
                        true,
                    )),
                    "NotEnoughFunds" => Err(StepError::retry(
                        "the coordinator's STX balance cannot pay the fee; top it up",
                        true,
                    )),
                    // The other reasons, as the client classifies them:
                    // transient ones (NoSuchContract while the deploy is in
                    // the mempool, …) wait, permanent ones need the operator.
                    _ if r.retry() == stacks_node_client::Retry::Transient => {
                        Err(StepError::retry(
                            format!("node refused the transaction for now: {r}"),
                            true,
                        ))
                    }
                    _ => Ok(Step::Moved(OpState::Failed {
                        reason: format!("node rejected the transaction: {r}"),
                    })),
                }
            }
            Broadcast::Failed { message, transient } => Err(StepError::retry(message, transient)),
        }
    }

    /// The coordinator's confirmed Stacks nonce, read once per round for
    /// every op's confirmation.
    fn account_nonce(&mut self) -> Result<u64, StepError> {
        if let Some(n) = self.round_account_nonce {
            return Ok(n);
        }
        let me = PrincipalData::Standard(self.c.stacks_wallet.address());
        let n = self.c.stacks.get_account(&me)?.nonce;
        self.round_account_nonce = Some(n);
        Ok(n)
    }

    fn confirm_stacks_tx(&mut self, op: &PegOp, tx: &SignedStacksTx) -> Result<Step, StepError> {
        // The account first, once per round for every op (a batch's ops
        // all hold one transaction): while our nonce is not consumed the
        // transaction is not mined, and its ops wait without reading the
        // contract one by one. Once it is consumed, each op's own get-mint /
        // get-burn, read after the nonce, shows the effect if it took one.
        let account_nonce = self.account_nonce()?;
        if account_nonce == tx.nonce {
            // Next to mine, yet not mined: after a while, replace it on
            // purpose with the same nonce and a higher fee (the node admits a
            // same-nonce transaction that pays more, and drops the other).
            let since = *self
                .next_to_mine_since
                .entry(tx.txid)
                .or_insert_with(Instant::now);
            if since.elapsed() >= self.stacks_replace_after {
                // Replaced with every op holding it (its batch): `call_round`.
                let bumped = tx.fee.saturating_add((tx.fee / 4).max(1));
                return Ok(Step::Call(StacksCall::Replace {
                    old: tx.clone(),
                    min_fee: bumped,
                    stuck: true,
                }));
            }
        }
        if account_nonce <= tx.nonce {
            // Still pending. Offer the same bytes again in case the mempool
            // dropped them (once per round for a whole batch); the node
            // answers with the same txid if it has them.
            match self.broadcast_once(tx, false) {
                Broadcast::Accepted => {}
                Broadcast::Rejected(r) => debug!("rebroadcast of {}: {r}", tx.txid),
                Broadcast::Failed { message, .. } => {
                    debug!("rebroadcast of {}: {message}", tx.txid)
                }
            }
            return Ok(Step::Wait(format!("stacks tx {} not yet mined", tx.txid)));
        }
        self.next_to_mine_since.remove(&tx.txid);
        // Our nonce was consumed before this read: if the transaction had
        // succeeded for this op, the contract would now say so.
        match self.effect(op)? {
            Effect::Final => return Ok(Step::Moved(Self::after_stacks_effect(op))),
            Effect::AtTip => {
                return Ok(Step::Wait(format!(
                    "stacks tx {} mined, not yet {} Stacks blocks deep",
                    tx.txid, self.checks.stacks_confirmations
                )))
            }
            Effect::Mismatch(reason) => {
                error!("{} {}: {reason}", op.kind(), op.txid());
                return Ok(Step::Moved(OpState::Failed { reason }));
            }
            Effect::Absent => {}
        }
        let what = match op {
            PegOp::PegIn(_) => "mint",
            PegOp::PegOutRequest(_) => "burn",
        };
        error!(
            "{} {}: the {what} transaction {} was mined but did not take effect",
            op.kind(),
            op.txid(),
            tx.txid
        );
        Ok(Step::Moved(OpState::Failed {
            reason: format!(
                "{what} transaction {} (nonce {}) was mined but did not take effect",
                tx.txid, tx.nonce
            ),
        }))
    }

    fn build_fulfillment(&mut self, op: &PegOutRequestOp) -> Result<Step, StepError> {
        let key = self.aggregate_key()?;
        let peg_script = self
            .c
            .bitcoin_wallet
            .peg_wallet_address(&key)
            .script_pubkey();
        let request_script = op.peg_wallet_address.script_pubkey();
        let scripts = self.peg_wallet_scripts()?;
        let Some(request_key) = scripts
            .iter()
            .find(|(s, _)| *s == request_script)
            .map(|(_, k)| *k)
        else {
            return Ok(Step::Moved(OpState::Failed {
                reason: format!(
                    "its fee output pays {}, the address of no key we hold",
                    op.peg_wallet_address
                ),
            }));
        };
        if self.round_chain.is_none() {
            let utxos = self.peg_utxos(&peg_script)?;
            let fee_rate = self
                .c
                .bitcoin
                .estimate_smart_fee(self.settings.fee_target_blocks)?;
            let info = self.c.stacks.get_info()?;
            // Requests' fee outputs belong to their own fulfilments, and
            // outputs of stored fulfilments are taken.
            let reserved = self.reserved_outpoints()?;
            self.round_chain = Some(RoundChain {
                utxos,
                fee_rate,
                stacks_tip: info.stacks_tip,
                reserved,
            });
        }
        let own = OutPoint::new(op.txid, 2);
        // A request made to an old key's address: its fee output is there,
        // and is signed with that key.
        let elsewhere = if request_key != key {
            self.peg_utxos(&request_script)?
                .into_iter()
                .filter(|u| u.outpoint == own)
                .collect()
        } else {
            Vec::new()
        };
        let chain = self
            .round_chain
            .as_ref()
            .ok_or_else(|| StepError::retry("no chain view this round", true))?;
        let mut utxos = chain.utxos.clone();
        utxos.extend(elsewhere);
        let inputs = FulfillmentInputs {
            utxos,
            fee_rate: chain.fee_rate,
            stacks_chain_tip: chain.stacks_tip,
            reserved: chain
                .reserved
                .iter()
                .filter(|o| **o != own)
                .chain(&self.round_spent)
                .copied()
                .collect(),
        };
        let unsigned = match self.c.bitcoin_wallet.build_fulfillment(op, &key, &inputs) {
            Ok(u) => u,
            // The fee rate rose after the burn: the request's fee output no
            // longer covers the fulfilment. Nothing to fix but the rate.
            Err(e @ fee_wallet::Error::FeeShortfall { .. }) => {
                return Ok(Step::Held(format!("{e}; waiting for lower fees")))
            }
            Err(e) => return Err(e.into()),
        };
        // Each input is signed by the key of the address it spends.
        if unsigned.prevouts.len() != unsigned.sighashes.len() {
            return Ok(Step::Moved(OpState::Failed {
                reason: format!(
                    "wallet built a fulfilment with {} prevouts for {} sighashes",
                    unsigned.prevouts.len(),
                    unsigned.sighashes.len()
                ),
            }));
        }
        let mut items = Vec::with_capacity(unsigned.sighashes.len());
        for (prevout, sighash) in unsigned.prevouts.iter().zip(&unsigned.sighashes) {
            let Some((_, k)) = scripts.iter().find(|(s, _)| *s == prevout.script_pubkey) else {
                return Ok(Step::Moved(OpState::Failed {
                    reason: "wallet built a fulfilment spending a coin of no key we hold".into(),
                }));
            };
            items.push(frost_coordinator::SignItem {
                key: *k,
                message: frost_coordinator::ToSign::Taproot { sighash: *sighash },
            });
        }
        // The rules the signers check too: a coin is one of the peg wallet's
        // spendable coins this round, not reserved for another request.
        let is_peg_coin = |o: &OutPoint, out: &bitcoin::TxOut| {
            *o != own
                && !inputs.reserved.contains(o)
                && inputs
                    .utxos
                    .iter()
                    .any(|u| u.outpoint == *o && u.txout == *out && u.confirmations > 0)
        };
        if let Err(rule) = peg_rules::check_fulfilment(
            &self.checks.policy,
            self.checks.magic,
            op,
            &unsigned.tx,
            &unsigned.prevouts,
            &peg_script,
            &is_peg_coin,
        ) {
            error!("peg-out {}: refusing an unsafe fulfilment: {rule}", op.txid);
            return Ok(Step::Moved(OpState::Failed {
                reason: format!("wallet built an unsafe fulfilment: {rule}"),
            }));
        }
        let payload = peg_rules::SignPayload::Fulfilment {
            request: op.txid,
            tx: unsigned.tx.clone(),
            prevouts: unsigned.prevouts.clone(),
        }
        .encode();
        Ok(
            self.defer_signing(payload, items, unsigned, "fulfilment", |tx| {
                OpState::BitcoinTxSigned { tx }
            }),
        )
    }

    fn broadcast_fulfillment(&self, tx: &Transaction) -> Result<Step, StepError> {
        self.record_own_spend(tx)?;
        match self.c.bitcoin.send_raw_transaction(tx) {
            Ok(_) => Ok(Step::Moved(OpState::BitcoinTxBroadcast { tx: tx.clone() })),
            Err(e) if e.is_transient() => {
                self.metrics
                    .bitcoin_broadcast_errors
                    .fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
            Err(e) => {
                self.metrics
                    .bitcoin_broadcast_errors
                    .fetch_add(1, Ordering::Relaxed);
                // Refused for good (inputs spent, fee policy). If the chain
                // already has it, move on; otherwise build a new one. Any
                // fulfilment of this request spends its output 2, so two can
                // never both confirm.
                if self
                    .c
                    .bitcoin
                    .get_raw_transaction(&tx.compute_txid())?
                    .is_some()
                {
                    return Ok(Step::Moved(OpState::BitcoinTxBroadcast { tx: tx.clone() }));
                }
                warn!(
                    "fulfilment {} refused: {e}; building a new one",
                    tx.compute_txid()
                );
                Ok(Step::Moved(OpState::BurnConfirmed))
            }
        }
    }

    fn confirm_fulfillment(&self, tx: &Transaction) -> Result<Step, StepError> {
        let txid = tx.compute_txid();
        match self.c.bitcoin.get_raw_transaction(&txid)? {
            Some(status) if status.confirmations >= self.settings.fulfillment_confirmations => {
                Ok(Step::Moved(OpState::Done))
            }
            Some(status) => Ok(Step::Wait(format!(
                "fulfilment {txid}: {} of {} confirmations",
                status.confirmations, self.settings.fulfillment_confirmations
            ))),
            None => {
                // Dropped from the mempool: offer the same bytes again.
                warn!("fulfilment {txid} is unknown to the node; rebroadcasting");
                self.broadcast_fulfillment(tx).map(|step| match step {
                    Step::Moved(OpState::BitcoinTxBroadcast { .. }) => {
                        Step::Wait(format!("fulfilment {txid} rebroadcast"))
                    }
                    other => other,
                })
            }
        }
    }
}

fn log_failure(what: &str, message: &str, transient: bool) {
    if transient {
        warn!("{what}: {message}; will retry");
    } else {
        error!("{what}: {message}; will retry after backoff");
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod refund_tests;

#[cfg(test)]
mod batch_tests;

#[cfg(test)]
mod redteam_batches;
