//! The signer's guard of the funds.
//!
//! A [`Guard`] is the [`frost_signer::Validator`] of a real signer: before
//! the signer reveals a nonce for a sign request, the guard checks what it
//! is asked to sign against the signer's **own** bitcoind and stacks-node
//! and the peg rules ([`peg_rules`]), and refuses the rest. It holds even
//! against a coordinator whose relay message key and Stacks key are stolen:
//! nothing the coordinator says is trusted, only what the signer's nodes
//! show.
//!
//! What passes:
//!
//! - **Fulfilments** of a peg-out request that is confirmed on the signer's
//!   best chain (`confirmations.bitcoin`), payable by the peg rules (at the
//!   fee floor: the rate may have risen since the burn), whose burn is
//!   *final* (`get-burn` at the Stacks block `confirmations.stacks − 1`
//!   below the tip shows the request's amount burned from the requester the
//!   request's signature recovers), that is no replay of a request already
//!   paid under another txid, and whose transaction passes
//!   `peg_rules::check_fulfilment` with every other input an unspent peg
//!   wallet coin of the guard's own coin record (no other request's fee
//!   output), change to the key the contract publishes; and only while the
//!   peg stays backed after it (`peg_rules::check_backing`). A replacement
//!   (fee bump) of a request's fulfilment passes the same way; every
//!   fulfilment signed is kept.
//! - **Sweeps and consolidations** (`peg_rules::check_sweep`): coins of keys
//!   held, none a pending request's fee output, one output to the published
//!   key.
//! - **Test messages** (`SignPayload::Test` with only `ToSign::Test` items,
//!   tagged so no test message can be a transaction sighash), always: the
//!   DKG test round runs before the new key is published.
//! - **Refunds** of a rejected peg-in (issue #14): the peg-in is confirmed
//!   on the signer's best chain, is *not* mintable by the signer's own rule
//!   (`peg_rules::peg_in_mintable` with the signer set file's allowlist), was
//!   never minted (`get-mint` at the final Stacks block and at the tip), the
//!   transaction passes `peg_rules::check_refund` (its one input the
//!   peg-in's output 1, its one output the scriptPubKey the peg-in's input 0
//!   spent — read from the funding transaction the payload carries, checked
//!   against that input's txid — fee within the cap), output 1 is an unspent
//!   coin of the guard's record, and the books hold after it (the refund
//!   pays the peg-in's debt). Every refund signed is kept; a replacement
//!   spends the same output 1, so at most one confirms. A peg-in whose
//!   output 1 a refund spent backs no sBTC any more.
//!
//! **Owed coins.** The output 1 of a peg-in not minted at the final block
//! (nor refunded) is owed to its depositor: no fulfilment or sweep may
//! spend it (`fulfilment.input` / `sweep.input`), since a peg-in whose
//! output 1 is spent can never be minted (`peg-in.spent`).
//!
//! **The published key.** When the contract's `get-bitcoin-wallet-public-key`
//! (at the final Stacks block) is not a key the signer holds, every payout
//! and sweep is refused with `key.not-ours`, logged as an error and shown
//! in [`Guard::status`]: a stolen coordinator Stacks key could otherwise
//! redirect every change output and future peg-in.
//!
//! **The circuit breaker.** When, after a payout, the peg wallet would hold
//! less than the sBTC supply (at the final block) plus what it owes, every
//! payout is refused (`backing`). Owed: every peg-in ever paid to the
//! wallet and not minted at the final block; every other request not paid
//! yet: its fee output and, once its burn is final, its amount (the burn
//! took it out of the supply, the BTC is still held for the requester).
//! Payouts this guard signed that are not confirmed yet (their request's
//! fee output still unspent, signed within a day) are taken out of what
//! the wallet holds. So sBTC minted without BTC and then burned is never
//! paid out of other users' BTC, however much surplus the wallet holds.
//! The breaker stays tripped until the books balance again; the operator's
//! way out is to cover the shortfall with BTC of their own, paid to the
//! current peg wallet address in a plain transaction (no peg-in: nothing
//! is owed for it), after finding and stopping the cause (a stolen
//! coordinator Stacks key minting without BTC).
//!
//! Every refusal is `"rule.name: detail"`: a `peg_rules` rule name or one
//! of the guard's own: `key.not-ours`, `stacks.not-final`, `burn.not-final`,
//! `burn.mismatch`, `request.unknown`, `request.not-final`,
//! `request.replay`, `input.not-peg-coin`, `items.mismatch`,
//! `payload.decode`, `payload.prevouts`, `refund.unknown`,
//! `refund.not-final`, `refund.mintable`, `refund.minted`, `refund.spent`
//! (with `peg_rules::check_refund`'s `refund.*` rules), and
//! `node.bitcoin` / `node.stacks` / `guard.store` when the signer's own node
//! or file fails (then nothing is signed either).
//!
//! Before [`Validator::check`] returns `Ok`, every (key, sighash) pair of
//! the request (and the fulfilment) is committed to the guard's SQLite
//! store; [`Validator::will_sign`] answers from it, so a restarted signer
//! still refuses nonces for anything it never checked.

mod store;

// The shared mock fixture (`tests/mock_fixture`) names the crate.
#[cfg(test)]
extern crate self as signer_guard;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use bitcoin_node_client::{Auth, BitcoinNode, TxStatus, UreqBitcoinNode};
use frost_net::{SignRequest, SignerFile, ToSign};
use frost_signer::Validator;
use peg_coins::{CoinRecord, RecordedCoin};
use peg_ops::wire::Position;
use peg_ops::{contract, BurnHeight, PegInOp, PegOp, PegOutRequestOp};
use peg_rules::{Books, Networks, PegInFacts, Policy, RequestFacts, Rule, SignPayload, Verdict};
use serde::{Deserialize, Serialize};
use stacks_node_client::{StacksNode, UreqStacksNode};
use stacks_wire::{ContractId, PrincipalData, StacksNetwork, Value};

use store::{CoinKind, Fulfilment, Promise, Refund, Signed, Store};

/// `get-burn` and `get-mint`, re-exported from `peg_ops::contract`.
pub use peg_ops::contract::{GET_BURN, GET_MINT};
/// Read-only `(get-total-supply)` → `(ok uint)` (SIP-010).
pub const GET_TOTAL_SUPPLY: &str = "get-total-supply";

/// How many `CoinRecord::sync` calls one check may make (each up to
/// `peg_coins::DEFAULT_BLOCKS_PER_SYNC` blocks) before it gives up.
const MAX_SYNC_CALLS: usize = 200;

/// The window of the daily outflow limit and of pending fulfilments.
const DAY_SECS: u64 = 24 * 3600;

/// The guard's part of a signer's configuration file.
///
/// ```toml
/// start_height = 101          # the peg wallet's first Bitcoin height
/// data_dir = "guard"          # the guard's SQLite files
/// [bitcoin_node]
/// url = "http://127.0.0.1:18443"
/// user = "signer1"            # with password; or cookie_file
/// password = "…"
/// [stacks_node]
/// url = "http://127.0.0.1:20443"
/// [confirmations]
/// bitcoin = 1
/// stacks = 1
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The signer's own bitcoind (with `-txindex=1`).
    pub bitcoin_node: BitcoinNodeConfig,
    /// The signer's own stacks-node.
    pub stacks_node: StacksNodeConfig,
    /// How deep an op must be before the guard trusts it.
    pub confirmations: Confirmations,
    /// The first Bitcoin height of the peg wallet: no coin of any key is older.
    pub start_height: u64,
    /// Where the guard keeps its coin record and store.
    pub data_dir: PathBuf,
    /// The timeout of one node call, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub rpc_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The signer's bitcoind.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitcoinNodeConfig {
    /// Its JSON-RPC URL.
    pub url: String,
    /// RPC user (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// RPC password (with `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Bitcoin Core's cookie file, instead of user and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<PathBuf>,
}

impl std::fmt::Debug for BitcoinNodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinNodeConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("cookie_file", &self.cookie_file)
            .finish()
    }
}

/// The signer's stacks-node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacksNodeConfig {
    /// Its RPC URL.
    pub url: String,
}

/// Depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmations {
    /// Bitcoin confirmations a peg-out request needs.
    pub bitcoin: u32,
    /// Stacks blocks a burn, mint or key needs (1: the tip).
    pub stacks: u32,
}

/// What the peg is, from the shared signer set file.
#[derive(Debug, Clone)]
pub struct PegParams {
    /// The shared policy.
    pub policy: Policy,
    /// Bitcoin's and Stacks' networks.
    pub networks: Networks,
    /// The OP_RETURN magic of peg ops.
    pub magic: [u8; 2],
    /// The sBTC contract.
    pub contract: ContractId,
}

impl PegParams {
    /// Reads the peg's parameters from the signer set file (`path` is where
    /// it was read from: the allowlist is relative to it). `network`,
    /// `contract` and `magic_bytes` are required.
    ///
    /// # Errors
    /// Every missing or bad field, by name.
    pub fn from_signer_file(file: &SignerFile, path: &Path) -> Result<PegParams, GuardError> {
        let bad =
            |what: &str, e: String| GuardError::Config(format!("{}: {what}: {e}", path.display()));
        let network = match file.network.as_deref() {
            Some("mainnet" | "bitcoin") => Network::Bitcoin,
            Some("testnet") => Network::Testnet,
            Some("signet") => Network::Signet,
            Some("regtest") => Network::Regtest,
            Some(other) => {
                return Err(bad(
                    "network",
                    format!("{other:?} is not one of mainnet, testnet, signet, regtest"),
                ))
            }
            None => return Err(bad("network", "missing: the guard needs it".into())),
        };
        let stacks = if network == Network::Bitcoin {
            StacksNetwork::Mainnet
        } else {
            StacksNetwork::Testnet
        };
        let contract: ContractId = file
            .contract
            .as_deref()
            .ok_or_else(|| bad("contract", "missing: the guard needs it".into()))?
            .parse()
            .map_err(|e: stacks_wire::Error| bad("contract", e.to_string()))?;
        let magic = file
            .magic()
            .map_err(|e| bad("magic_bytes", e))?
            .ok_or_else(|| bad("magic_bytes", "missing: the guard needs it".into()))?;
        let policy = file.policy(path, network).map_err(GuardError::Config)?;
        Ok(PegParams {
            policy,
            networks: Networks {
                bitcoin: network,
                stacks,
            },
            magic,
            contract,
        })
    }
}

/// Why a guard cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The configuration does not fit.
    #[error("guard configuration: {0}")]
    Config(String),
    /// The guard's files could not be opened or written.
    #[error("guard storage: {0}")]
    Storage(String),
}

/// What the guard last saw, for the signer's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStatus {
    /// The key the contract publishes at the final Stacks block, when read.
    pub published_key: Option<PublicKey>,
    /// Whether it is a key this signer holds (`None`: not read yet, or
    /// the contract publishes none).
    pub published_key_ours: Option<bool>,
    /// The last failure of the guard's own nodes or files, or the published
    /// key not being ours.
    pub last_error: Option<String>,
    /// The last refusal sent.
    pub last_refusal: Option<String>,
    /// Sign requests passed and refused since start.
    pub passed: u64,
    /// Sign requests refused since start.
    pub refused: u64,
}

/// The guard: a [`Validator`] reading the signer's own nodes `B` and `S`.
pub struct Guard<B, S> {
    bitcoin: B,
    stacks: S,
    params: PegParams,
    confirmations: Confirmations,
    start_height: u64,
    keys: Vec<PublicKey>,
    /// The peg wallet scriptPubKey of each key of `keys` (a taproot tweak
    /// each: computed once per key set, not several times per check).
    scripts: Vec<ScriptBuf>,
    coins: CoinRecord,
    store: Store,
    status: GuardStatus,
    /// What the contract answered at one final Stacks block (keyed by its
    /// index block hash, never by height: the same block answers the
    /// same), so the checks under one block read each value once (without
    /// it every check read every unpaid request: quadratic).
    at_tip: Option<TipReads>,
    /// The coin record's confirmed coins of the keys held, as read at its
    /// synced tip (height, hash): read again when a sync changed anything
    /// (a block applied, rescanned or rolled back) or the keys change.
    coins_at: Option<(SyncedTip, Arc<Vec<RecordedCoin>>)>,
    /// The position of each transaction in blocks read by hash (a block's
    /// hash fixes its transactions), a bounded number of blocks.
    block_txs: HashMap<BlockHash, HashMap<Txid, u32>>,
    /// The node's tip height the coin record reached in this check's
    /// sync (`getblockcount` read then), for the first read of
    /// [`Guard::on_best_chain`]'s bracket; taken by it, cleared per check.
    node_tip_synced: Option<u64>,
    /// The coin record's tip (height, hash) after its last sync that
    /// caught up with the node's `getbestblockhash` read just before it:
    /// while the node's best block hash is still this one, the record is
    /// caught up without a sync (one node call per check, not two or more).
    /// Cleared when a sync fails or the keys change (a new key's coins
    /// need a rescan).
    record_at_best: Option<SyncedTip>,
    /// This check's best chain tip (height, hash), read by its sync
    /// (`getbestblockhash`) with the record caught up to it: the fast path
    /// of [`Guard::on_best_chain`]; taken by it, cleared per check.
    best_tip: Option<SyncedTip>,
    /// The hashes of blocks on the chain whose tip is `.0`, by height
    /// (each read by `getblockhash` between two `getbestblockhash` reads
    /// both answering `.0`). A block hash fixes its whole ancestry, so
    /// these never change while the tip is `.0`; another tip empties them.
    best_hashes: Option<(BlockHash, HashMap<u64, BlockHash>)>,
    /// The last wallet read, with what it was read from: the coin
    /// record's coins (the same `Arc` while the record is unchanged), the
    /// Stacks block of its mint reads and the store's
    /// [`Store::wallet_generation`]. Every input the same, the same wallet
    /// (without it each check walked every coin of the wallet again).
    wallet_at: Option<(WalletInputs, Arc<Wallet>)>,
    /// What the wallet's requests burned (the sum [`Guard::check_books`]
    /// takes out of the peg-ins minted), with the wallet it was summed
    /// for, the final Stacks block of its `get-burn` reads and the store's
    /// [`Store::wallet_generation`] after them: the same three, the same
    /// sum (else every check read every request's burn mark again).
    burned_at: Option<(Arc<Wallet>, [u8; 32], u64, Amount)>,
    /// The time each phase of the last check took (for benchmarks).
    phases: Vec<(&'static str, Duration)>,
}

impl<B, S> std::fmt::Debug for Guard<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("contract", &self.params.contract.to_string())
            .field("keys", &self.keys.len())
            .field("status", &self.status)
            .finish()
    }
}

/// The most items one sign request may ask for (a sweep of this many coins
/// at most; test messages alike).
pub const MAX_ITEMS: usize = 256;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rule(name: &'static str, detail: impl Into<String>) -> Rule {
    Rule::new(name, detail)
}

fn btc_err(what: &str, e: impl std::fmt::Display) -> Rule {
    rule("node.bitcoin", format!("{what}: {e}"))
}

fn stx_err(what: &str, e: impl std::fmt::Display) -> Rule {
    rule("node.stacks", format!("{what}: {e}"))
}

/// The peg wallet scriptPubKey of an aggregate key.
fn script_of(key: &PublicKey, network: Network) -> ScriptBuf {
    peg_rules::peg_wallet_address(key, network).script_pubkey()
}

/// A `get-burn` / `get-mint` answer: (amount, principal), if recorded.
fn decode_entry(v: &Value) -> Result<Option<(u64, PrincipalData)>, String> {
    contract::decode_record(v)
        .map(|r| r.map(|r| (r.amount, r.principal)))
        .map_err(|e| e.to_string())
}

/// The sum of amounts, `None` on overflow.
fn sum(it: impl Iterator<Item = Amount>) -> Option<Amount> {
    let mut it = it;
    it.try_fold(Amount::ZERO, |s, a| s.checked_add(a))
}

/// `get-burn` / `get-mint` answers at one Stacks block: amount and
/// principal, or none.
type RecordReads = HashMap<Txid, Option<(u64, PrincipalData)>>;

/// The coin record's synced tip: height and block hash.
type SyncedTip = (u64, BlockHash);

/// How many blocks' transaction positions [`Guard`] keeps.
const MAX_BLOCKS_INDEXED: usize = 64;

/// How many block hashes of one best chain [`Guard`] keeps.
const MAX_HASHES_KEPT: usize = 4096;

/// The contract's answers at one Stacks block.
struct TipReads {
    /// The block's index block hash.
    tip: [u8; 32],
    /// `get-burn` answers.
    burns: RecordReads,
    /// `get-mint` answers.
    mints: RecordReads,
    /// `get-total-supply`.
    supply: Option<Value>,
    /// `get-bitcoin-wallet-public-key`.
    key: Option<Value>,
}

/// What a [`Wallet`] was read from.
struct WalletInputs {
    coins: Arc<Vec<RecordedCoin>>,
    mints_at: [u8; 32],
    store: u64,
}

/// Everything the guard knows of the peg wallet at one check.
struct Wallet {
    /// Confirmed unspent coins of every key held.
    unspent: HashMap<OutPoint, TxOut>,
    /// Those that are a peg-out request's fee output (its output 2).
    fee_outputs: HashSet<OutPoint>,
    /// Peg-in coins ever paid to the wallet whose mint is not yet final
    /// (and that no refund spent).
    unminted: Vec<(Txid, Amount)>,
    /// Those still unspent: owed to their depositor (as sBTC or a refund),
    /// never an input of a fulfilment or sweep (a peg-in whose output 1 is
    /// spent can never be minted).
    owed_coins: HashSet<OutPoint>,
    /// The peg-ins minted for their own amount and recipient: the sBTC
    /// that BTC backs.
    minted: Amount,
    /// Every peg-out request ever paying a fee output to the wallet.
    requests: Vec<Txid>,
}

impl<B: BitcoinNode, S: StacksNode> Guard<B, S> {
    /// A guard over the given clients, keeping its files in `data_dir`
    /// (created if needed), holding shares of `keys`.
    ///
    /// # Errors
    /// Bad depths, files that cannot be opened.
    pub fn new(
        bitcoin: B,
        stacks: S,
        params: PegParams,
        confirmations: Confirmations,
        start_height: u64,
        data_dir: &Path,
        keys: &[PublicKey],
    ) -> Result<Guard<B, S>, GuardError> {
        if confirmations.bitcoin == 0 || confirmations.stacks == 0 {
            return Err(GuardError::Config(
                "confirmations.bitcoin and confirmations.stacks must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(data_dir)
            .map_err(|e| GuardError::Storage(format!("{}: {e}", data_dir.display())))?;
        let coins = CoinRecord::open(&data_dir.join("guard-coins.sqlite"), start_height)
            .map_err(|e| GuardError::Storage(e.to_string()))?;
        let store = Store::open(&data_dir.join("guard.sqlite")).map_err(GuardError::Storage)?;
        let mut guard = Guard {
            bitcoin,
            stacks,
            params,
            confirmations,
            start_height,
            keys: Vec::new(),
            scripts: Vec::new(),
            coins,
            store,
            status: GuardStatus::default(),
            at_tip: None,
            coins_at: None,
            block_txs: HashMap::new(),
            node_tip_synced: None,
            record_at_best: None,
            best_tip: None,
            best_hashes: None,
            wallet_at: None,
            burned_at: None,
            phases: Vec::new(),
        };
        guard.set_keys(keys)?;
        Ok(guard)
    }

    /// Replaces the keys held (after a DKG: the signer's whole key
    /// history); their addresses are watched from the start height.
    ///
    /// # Errors
    /// When the coin record cannot be written.
    pub fn set_keys(&mut self, keys: &[PublicKey]) -> Result<(), GuardError> {
        let scripts: Vec<ScriptBuf> = keys
            .iter()
            .map(|k| script_of(k, self.params.networks.bitcoin))
            .collect();
        for script in &scripts {
            self.coins
                .watch(script, self.start_height)
                .map_err(|e| GuardError::Storage(e.to_string()))?;
        }
        self.keys = keys.to_vec();
        self.scripts = scripts;
        self.coins_at = None;
        // A key watched from now needs a rescan: the next check syncs.
        self.record_at_best = None;
        Ok(())
    }

    /// What the guard last saw.
    pub fn status(&self) -> &GuardStatus {
        &self.status
    }

    /// The phases of the last [`Validator::check`] and the time each took,
    /// in order (a phase run several times appears once, with its total;
    /// `check_books` includes its `burn_at` reads). For benchmarks.
    pub fn last_check_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Runs `f` as the phase `name` of the current check.
    fn timed<T>(&mut self, name: &'static str, f: impl FnOnce(&mut Self) -> T) -> T {
        let started = Instant::now();
        let out = f(self);
        let took = started.elapsed();
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, d)) => *d += took,
            None => self.phases.push((name, took)),
        }
        out
    }

    fn held_scripts(&self) -> Vec<ScriptBuf> {
        self.scripts.clone()
    }

    /// The peg wallet scriptPubKey of `key`.
    fn script_for(&self, key: &PublicKey) -> ScriptBuf {
        self.keys
            .iter()
            .position(|k| k == key)
            .and_then(|i| self.scripts.get(i).cloned())
            .unwrap_or_else(|| script_of(key, self.params.networks.bitcoin))
    }

    fn sender(&self) -> PrincipalData {
        PrincipalData::Standard(self.params.contract.address)
    }

    /// The Stacks block at which values are final.
    fn final_tip(&self) -> Result<[u8; 32], Rule> {
        let depth = self.confirmations.stacks - 1;
        self.stacks
            .block_at_depth(depth)
            .map_err(|e| stx_err("the final Stacks block", e))?
            .ok_or_else(|| {
                rule(
                    "stacks.not-final",
                    format!("the Stacks chain is shorter than {} blocks", depth + 1),
                )
            })
    }

    fn read_final(&self, function: &str, args: &[Value], tip: &[u8; 32]) -> Result<Value, Rule> {
        self.stacks
            .call_read_at(&self.params.contract, function, args, &self.sender(), tip)
            .map_err(|e| stx_err(function, e))
    }

    /// The reads cached at the Stacks block `tip` (emptied when it is
    /// another block).
    fn tip_reads(&mut self, tip: &[u8; 32]) -> &mut TipReads {
        if self.at_tip.as_ref().map(|t| &t.tip) != Some(tip) {
            self.at_tip = None;
        }
        self.at_tip.get_or_insert_with(|| TipReads {
            tip: *tip,
            burns: HashMap::new(),
            mints: HashMap::new(),
            supply: None,
            key: None,
        })
    }

    /// The key the contract publishes at the final block, if it is ours.
    fn published_key(&mut self, tip: &[u8; 32]) -> Result<PublicKey, Rule> {
        let v = match self.tip_reads(tip).key.clone() {
            Some(v) => v,
            None => {
                let v = self.read_final(contract::GET_BITCOIN_WALLET_PUBLIC_KEY, &[], tip)?;
                self.tip_reads(tip).key = Some(v.clone());
                v
            }
        };
        let key = match &v {
            Value::Optional(None) => None,
            Value::Optional(Some(b)) => match b.as_ref() {
                Value::Buffer(bytes) => Some(PublicKey::from_slice(bytes).map_err(|_| {
                    stx_err(
                        contract::GET_BITCOIN_WALLET_PUBLIC_KEY,
                        format!("0x{} is no public key", hex::encode(bytes)),
                    )
                })?),
                _ => {
                    return Err(stx_err(
                        contract::GET_BITCOIN_WALLET_PUBLIC_KEY,
                        format!("{v}"),
                    ))
                }
            },
            _ => {
                return Err(stx_err(
                    contract::GET_BITCOIN_WALLET_PUBLIC_KEY,
                    format!("{v}"),
                ))
            }
        };
        self.status.published_key = key;
        let Some(key) = key else {
            self.status.published_key_ours = None;
            return Err(rule(
                "key.not-ours",
                "the contract publishes no peg wallet key",
            ));
        };
        let ours = self.keys.contains(&key);
        self.status.published_key_ours = Some(ours);
        if !ours {
            let e = rule(
                "key.not-ours",
                format!("the contract publishes {key}, not a key this signer holds: refusing every payout"),
            );
            log::error!("{e}");
            self.status.last_error = Some(e.to_string());
            return Err(e);
        }
        // Never back to an older key: once a key was published, an older
        // key of the history (whose holders may have left the set) is not
        // followed again, whoever sets it in the contract.
        let index = |k: &PublicKey| self.keys.iter().position(|h| h == k);
        let seen = self
            .store
            .published_keys()
            .map_err(|e| rule("guard.store", e))?;
        if let (Some(now_at), Some(newest_seen)) =
            (index(&key), seen.iter().filter_map(index).max())
        {
            if now_at < newest_seen {
                self.status.published_key_ours = Some(false);
                let e = rule(
                    "key.not-ours",
                    format!(
                        "the contract publishes {key}, older than {} which it published before: refusing every payout",
                        self.keys[newest_seen]
                    ),
                );
                log::error!("{e}");
                self.status.last_error = Some(e.to_string());
                return Err(e);
            }
        }
        self.store
            .saw_published(&key, now())
            .map_err(|e| rule("guard.store", e))?;
        Ok(key)
    }

    fn sync_coins(&mut self) -> Result<(), Rule> {
        let best = self
            .bitcoin
            .get_best_block_hash()
            .map_err(|e| btc_err("getbestblockhash", e))?;
        if let Some((height, hash)) = self.record_at_best {
            if hash == best {
                // The node's best chain is the one the record follows, up
                // to its tip: nothing to sync.
                self.node_tip_synced = Some(height);
                self.best_tip = Some((height, hash));
                return Ok(());
            }
        }
        self.record_at_best = None;
        for _ in 0..MAX_SYNC_CALLS {
            let rep = self.coins.sync(&self.bitcoin).map_err(|e| {
                // A sync cut short may have changed the record: read it
                // again next time.
                self.coins_at = None;
                if e.is_transient() {
                    btc_err("coin record sync", e)
                } else {
                    rule("guard.store", format!("coin record: {e}"))
                }
            })?;
            if rep.blocks_applied + rep.blocks_rescanned + rep.blocks_rolled_back > 0
                || rep.coins_added + rep.coins_spent > 0
            {
                self.coins_at = None;
            }
            if rep.caught_up {
                // Caught up: the record's tip is the node's `getblockcount`
                // read at the start of this sync.
                self.node_tip_synced = rep.tip;
                // And if that tip is the best block read before the sync,
                // the node's chain did not move meanwhile: the record
                // follows `best` (else the next check syncs again).
                let at = self
                    .coins
                    .synced_tip()
                    .map_err(|e| rule("guard.store", format!("coin record: {e}")))?;
                if let Some((height, hash)) = at.filter(|(_, h)| *h == best) {
                    self.record_at_best = Some((height, hash));
                    self.best_tip = Some((height, hash));
                }
                return Ok(());
            }
        }
        Err(btc_err(
            "coin record sync",
            "not caught up with the node yet; try again",
        ))
    }

    /// The kind of the transaction `txid` that paid the wallet, classified
    /// once by its output 0.
    fn classify(&mut self, txid: &Txid, height: u64) -> Result<(CoinKind, bool), Rule> {
        if let Some(k) = self
            .store
            .coin_tx(txid)
            .map_err(|e| rule("guard.store", e))?
        {
            return Ok(k);
        }
        // A fulfilment this guard signed is known by its txid: no read.
        let op = match self.store.fulfilment_tx(txid) {
            Some(tx) => {
                let at = Position {
                    height: BurnHeight(height),
                    block_hash: BlockHash::all_zeros(),
                    vtxindex: 0,
                };
                peg_ops::wire::parse_transaction(
                    tx,
                    self.params.magic,
                    self.params.networks.bitcoin,
                    at,
                )
                .ok()
                .flatten()
            }
            None => self.coin_op(txid, height)?,
        };
        let kind = match op {
            Some(PegOp::PegIn(_)) => CoinKind::PegIn,
            Some(PegOp::PegOutRequest(_)) => CoinKind::Request,
            _ => CoinKind::Other,
        };
        self.store
            .classify(txid, kind)
            .map_err(|e| rule("guard.store", e))?;
        Ok((kind, false))
    }

    /// The final burn recorded under `txid` at `tip`, read once per block.
    fn burn_at(
        &mut self,
        txid: &Txid,
        tip: &[u8; 32],
    ) -> Result<Option<(u64, PrincipalData)>, Rule> {
        if let Some(hit) = self.tip_reads(tip).burns.get(txid).cloned() {
            return Ok(hit);
        }
        let v = self.read_final(GET_BURN, &[contract::txid_arg(txid)], tip)?;
        let got = decode_entry(&v).map_err(|e| stx_err(GET_BURN, e))?;
        self.tip_reads(tip).burns.insert(*txid, got.clone());
        Ok(got)
    }

    /// The final mint recorded under `txid` at `tip`, read once per block.
    fn mint_at(
        &mut self,
        txid: &Txid,
        tip: &[u8; 32],
    ) -> Result<Option<(u64, PrincipalData)>, Rule> {
        if let Some(hit) = self.tip_reads(tip).mints.get(txid).cloned() {
            return Ok(hit);
        }
        let v = self.read_final(GET_MINT, &[contract::txid_arg(txid)], tip)?;
        let got = decode_entry(&v).map_err(|e| stx_err(GET_MINT, e))?;
        self.tip_reads(tip).mints.insert(*txid, got.clone());
        Ok(got)
    }

    /// The coin record's confirmed coins of the keys held, read again only
    /// when the record changed since.
    fn held_coins(&mut self) -> Result<Arc<Vec<RecordedCoin>>, Rule> {
        let at = self
            .coins
            .synced_tip()
            .map_err(|e| rule("guard.store", format!("coin record: {e}")))?;
        if let (Some(at), Some((cached_at, coins))) = (at, &self.coins_at) {
            if at == *cached_at {
                return Ok(coins.clone());
            }
        }
        let held: HashSet<ScriptBuf> = self.held_scripts().into_iter().collect();
        let coins: Arc<Vec<RecordedCoin>> = Arc::new(
            self.coins
                .confirmed_coins()
                .map_err(|e| rule("guard.store", format!("coin record: {e}")))?
                .into_iter()
                .filter(|c| held.contains(&c.txout.script_pubkey))
                .collect(),
        );
        self.coins_at = at.map(|at| (at, coins.clone()));
        Ok(coins)
    }

    /// The peg op of a peg wallet coin's transaction `txid` (at `height`),
    /// read from this signer's bitcoind, if it is one.
    fn coin_op(&self, txid: &Txid, height: u64) -> Result<Option<PegOp>, Rule> {
        let status = self
            .bitcoin
            .get_raw_transaction(txid)
            .map_err(|e| btc_err("getrawtransaction", e))?
            .ok_or_else(|| {
                btc_err(
                    "getrawtransaction",
                    format!(
                        "{txid}, a peg wallet coin's transaction, is unknown (is -txindex on?)"
                    ),
                )
            })?;
        let at = Position {
            height: BurnHeight(height),
            block_hash: status.block_hash.unwrap_or_else(BlockHash::all_zeros),
            vtxindex: 0,
        };
        Ok(peg_ops::wire::parse_transaction(
            &status.tx,
            self.params.magic,
            self.params.networks.bitcoin,
            at,
        )
        .ok()
        .flatten())
    }

    /// The recipient of the peg-in `txid` (at `height`); `None` when it is
    /// no peg-in.
    fn peg_in_recipient(&self, txid: &Txid, height: u64) -> Result<Option<PrincipalData>, Rule> {
        Ok(match self.coin_op(txid, height)? {
            Some(PegOp::PegIn(op)) => Some(op.recipient),
            _ => None,
        })
    }

    /// The wallet ([`Guard::read_wallet`]), read again only when the coin
    /// record, the Stacks block or the store's coin facts changed since.
    fn wallet(&mut self, mints_at: &[u8; 32]) -> Result<Arc<Wallet>, Rule> {
        let all = self.held_coins()?;
        if let Some((at, w)) = &self.wallet_at {
            if Arc::ptr_eq(&at.coins, &all)
                && at.mints_at == *mints_at
                && at.store == self.store.wallet_generation()
            {
                return Ok(w.clone());
            }
        }
        self.wallet_at = None;
        let w = Arc::new(self.read_wallet(&all, mints_at)?);
        // Its own reads may have taught the store facts: the generation
        // after them is the one this wallet answers for.
        self.wallet_at = Some((
            WalletInputs {
                coins: all,
                mints_at: *mints_at,
                store: self.store.wallet_generation(),
            },
            w.clone(),
        ));
        Ok(w)
    }

    /// Reads the wallet from the coin record's coins `all`, and which
    /// peg-ins are not minted at the Stacks block `mints_at`.
    fn read_wallet(&mut self, all: &[RecordedCoin], mints_at: &[u8; 32]) -> Result<Wallet, Rule> {
        let mut w = Wallet {
            unspent: HashMap::new(),
            fee_outputs: HashSet::new(),
            unminted: Vec::new(),
            owed_coins: HashSet::new(),
            minted: Amount::ZERO,
            requests: Vec::new(),
        };
        for c in all.iter() {
            let (kind, minted) = self.classify(&c.outpoint.txid, c.height)?;
            if !c.spent_in_block {
                w.unspent.insert(c.outpoint, c.txout.clone());
                if kind == CoinKind::Request && c.outpoint.vout == 2 {
                    w.fee_outputs.insert(c.outpoint);
                }
            }
            if kind == CoinKind::Request && c.outpoint.vout == 2 {
                w.requests.push(c.outpoint.txid);
            }
            if kind != CoinKind::PegIn || c.outpoint.vout != 1 {
                continue;
            }
            let txid = c.outpoint.txid;
            // Refunded: its output 1 spent by a refund this guard signed (or
            // seen so before). It backs no sBTC and is owed no more, whatever
            // the contract shows under its txid — even a mint this guard saw
            // final before the refund confirmed (it signed the refund only
            // with no mint at the final block nor the tip, so such a mint is
            // a stolen Stacks key's).
            // The mark holds only while the coin record shows output 1
            // spent: a Bitcoin reorg that drops the refund's block (and the
            // refund with it) makes the coin unspent again, and then it is
            // owed to its depositor as before the refund confirmed (red
            // team #16).
            let mut refunded = c.spent_in_block
                && self
                    .store
                    .refunded(&txid)
                    .map_err(|e| rule("guard.store", e))?;
            let refund_signed = !refunded && self.store.has_refunds(&txid);
            if refund_signed && c.spent_in_block {
                refunded = true;
                self.store
                    .mark_refunded(&txid)
                    .map_err(|e| rule("guard.store", e))?;
            }
            if refunded {
                if minted {
                    log::error!(
                        "peg-in {txid} was refunded and has a mint under its txid: that sBTC has no BTC behind it"
                    );
                }
                continue;
            }
            if refund_signed {
                // A refund this guard signed may still confirm: the coin
                // backs no sBTC (whatever mint shows under its txid) and
                // stays owed to its depositor until it is spent.
                if minted {
                    log::error!(
                        "peg-in {txid} has a refund signed and a mint under its txid: that sBTC has no BTC behind it"
                    );
                }
                w.unminted.push((txid, c.txout.value));
                w.owed_coins.insert(c.outpoint);
                continue;
            }
            if minted {
                w.minted = w.minted.checked_add(c.txout.value).unwrap_or(Amount::MAX);
                continue;
            }
            match self.mint_at(&txid, mints_at)? {
                // Minted only for the peg-in's own amount and recipient: a
                // mint under its txid to anyone else (a stolen coordinator
                // Stacks key) leaves the peg-in owed, so the books show the
                // hole.
                Some((amount, principal))
                    if amount == c.txout.value.to_sat()
                        && self.peg_in_recipient(&txid, c.height)? == Some(principal.clone()) =>
                {
                    self.store
                        .mark_minted(&txid)
                        .map_err(|e| rule("guard.store", e))?;
                    w.minted = w.minted.checked_add(c.txout.value).unwrap_or(Amount::MAX);
                }
                Some((amount, principal)) => {
                    log::error!(
                        "peg-in {txid} ({} sats) has a mint of {amount} sats to {principal} under its txid: not its own, still owed",
                        c.txout.value.to_sat()
                    );
                    w.unminted.push((txid, c.txout.value));
                    if !c.spent_in_block {
                        w.owed_coins.insert(c.outpoint);
                    }
                }
                None if c.spent_in_block => {
                    // Spent, never minted, and no refund of ours: an older
                    // peg wallet's spend, or a refund other signers signed
                    // while this one was away. Still counted as owed (the
                    // safe side: the breaker may trip; see SECURITY.md).
                    w.unminted.push((txid, c.txout.value));
                }
                None => {
                    w.unminted.push((txid, c.txout.value));
                    w.owed_coins.insert(c.outpoint);
                }
            }
        }
        Ok(w)
    }

    /// Matches the request's items to the sighashes of `payload`'s
    /// transaction, each with the key whose address its input spends.
    fn match_items(
        &self,
        payload: &SignPayload,
        request: &SignRequest,
    ) -> Result<Vec<Promise>, Rule> {
        let (_, prevouts) = payload
            .transaction()
            .ok_or_else(|| rule("payload.decode", "no transaction"))?;
        let sighashes = payload
            .sighashes()
            .map_err(|e| rule("payload.prevouts", e))?;
        let mut expected = Vec::with_capacity(sighashes.len());
        for (i, (sighash, prevout)) in sighashes.iter().zip(prevouts).enumerate() {
            let key = self
                .keys
                .iter()
                .zip(&self.scripts)
                .find(|(_, script)| **script == prevout.script_pubkey)
                .map(|(k, _)| k)
                .ok_or_else(|| {
                    rule(
                        "input.not-peg-coin",
                        format!(
                            "input {i} spends {:?}, no peg wallet key this signer holds",
                            prevout.script_pubkey
                        ),
                    )
                })?;
            expected.push((*key, *sighash));
        }
        let mut asked = Vec::with_capacity(request.items.len());
        for item in &request.items {
            match &item.message {
                ToSign::Taproot { sighash } => asked.push((item.key, *sighash)),
                ToSign::Test { .. } => {
                    return Err(rule(
                        "items.mismatch",
                        "a test message in a transaction's sign request",
                    ))
                }
            }
        }
        let mut a = asked.clone();
        let mut e = expected.clone();
        a.sort();
        e.sort();
        if a != e {
            return Err(rule(
                "items.mismatch",
                format!(
                    "{} items asked, the transaction has {} inputs: the items are not exactly its sighashes with the keys its inputs pay",
                    asked.len(),
                    expected.len()
                ),
            ));
        }
        Ok(expected)
    }

    /// The transaction `txid` in its block on the signer's best chain, with
    /// its position and the tip height; refusals are named `unknown` (not on
    /// the best chain, unknown) and `not_final` (unconfirmed).
    fn on_best_chain(
        &mut self,
        txid: &Txid,
        unknown: &'static str,
        not_final: &'static str,
    ) -> Result<(Transaction, Position, u64), Rule> {
        let found = match self.best_tip.take() {
            Some(best) => self.at_best_tip(txid, best, unknown, not_final)?,
            None => None,
        };
        let (status, block_hash, height, tip) = match found {
            Some(f) => f,
            None => self.bracketed(txid, unknown, not_final)?,
        };
        // The transaction as the node gave it must be the one asked for
        // (its position below is looked up by that txid).
        if status.tx.compute_txid() != *txid {
            return Err(btc_err(
                "getrawtransaction",
                format!("asked for {txid}, got {}", status.tx.compute_txid()),
            ));
        }
        // Its position in its block: a block's hash fixes its transactions,
        // so each block is read (and checked) once.
        if !self.block_txs.contains_key(&block_hash) {
            let block = self
                .bitcoin
                .get_block(&block_hash)
                .map_err(|e| btc_err("getblock", e))?;
            if block.block_hash() != block_hash {
                return Err(btc_err(
                    "getblock",
                    format!("asked for {block_hash}, got another block"),
                ));
            }
            if self.block_txs.len() >= MAX_BLOCKS_INDEXED {
                self.block_txs.clear();
            }
            let positions = block
                .txdata
                .iter()
                .enumerate()
                .map(|(i, t)| (t.compute_txid(), u32::try_from(i).unwrap_or(u32::MAX)))
                .collect();
            self.block_txs.insert(block_hash, positions);
        }
        let Some(vtxindex) = self
            .block_txs
            .get(&block_hash)
            .and_then(|m| m.get(txid))
            .copied()
        else {
            return Err(rule(
                unknown,
                format!("{txid} is not in its block {block_hash}"),
            ));
        };
        let at = Position {
            height: BurnHeight(height),
            block_hash,
            vtxindex,
        };
        Ok((status.tx, at, tip))
    }

    /// [`Guard::on_best_chain`]'s fast path, at the tip `best` this check's
    /// sync read (`getbestblockhash`): the transaction's block must be the
    /// one at `best`'s height + 1 − confirmations on the chain ending at
    /// `best` ([`Guard::hash_on`]). `None` when that does not hold (a block
    /// arrived since, a reorg, a node failure): then the bracketed reads
    /// decide, as without this path. (status, block hash, height, tip).
    fn at_best_tip(
        &mut self,
        txid: &Txid,
        best: SyncedTip,
        unknown: &'static str,
        not_final: &'static str,
    ) -> Result<Option<(TxStatus, BlockHash, u64, u64)>, Rule> {
        let status = self
            .bitcoin
            .get_raw_transaction(txid)
            .map_err(|e| btc_err("getrawtransaction", e))?
            .ok_or_else(|| {
                rule(
                    unknown,
                    format!("{txid} is unknown to this signer's bitcoind"),
                )
            })?;
        let Some(block_hash) = status.block_hash.filter(|_| status.confirmations > 0) else {
            return Err(rule(not_final, format!("{txid} is not confirmed")));
        };
        let (tip, tip_hash) = best;
        let Some(height) = tip
            .checked_add(1)
            .and_then(|t| t.checked_sub(u64::from(status.confirmations)))
        else {
            return Ok(None);
        };
        if self.hash_on(&tip_hash, height) != Some(block_hash) {
            return Ok(None);
        }
        Ok(Some((status, block_hash, height, tip)))
    }

    /// The hash of the block at `height` on the chain whose tip is `tip`:
    /// from [`Guard::best_hashes`], or read by `getblockhash` and kept only
    /// if `getbestblockhash` still answers `tip` after it (the node's best
    /// chain was `tip`'s before the read, in this check's sync, and after
    /// it). `None` when the node moved or failed.
    fn hash_on(&mut self, tip: &BlockHash, height: u64) -> Option<BlockHash> {
        if let Some((t, hashes)) = &self.best_hashes {
            if t == tip {
                if let Some(h) = hashes.get(&height) {
                    return Some(*h);
                }
            }
        }
        let hash = self.bitcoin.get_block_hash(height).ok()?;
        if self.bitcoin.get_best_block_hash().ok()? != *tip {
            return None;
        }
        let hashes = match &mut self.best_hashes {
            Some((t, hashes)) if t == tip && hashes.len() < MAX_HASHES_KEPT => hashes,
            slot => &mut slot.insert((*tip, HashMap::new())).1,
        };
        hashes.insert(height, hash);
        Some(hash)
    }

    /// [`Guard::on_best_chain`]'s reads bracketed by the tip height:
    /// (status, block hash, height, tip).
    fn bracketed(
        &mut self,
        txid: &Txid,
        unknown: &'static str,
        not_final: &'static str,
    ) -> Result<(TxStatus, BlockHash, u64, u64), Rule> {
        // The transaction's confirmations and the tip height must come from
        // one chain: read the tip before and after, and try again when a
        // block arrived in between (else the height would be off by one and
        // an honest request refused as off the best chain).
        // The first "before" may be the count this check's sync read: an
        // earlier read only widens the bracket.
        let mut attempt = 0;
        let (status, tip) = loop {
            let before = match self.node_tip_synced.take() {
                Some(t) => t,
                None => self
                    .bitcoin
                    .get_block_count()
                    .map_err(|e| btc_err("getblockcount", e))?,
            };
            let status = self
                .bitcoin
                .get_raw_transaction(txid)
                .map_err(|e| btc_err("getrawtransaction", e))?
                .ok_or_else(|| {
                    rule(
                        unknown,
                        format!("{txid} is unknown to this signer's bitcoind"),
                    )
                })?;
            let after = self
                .bitcoin
                .get_block_count()
                .map_err(|e| btc_err("getblockcount", e))?;
            attempt += 1;
            if before == after || attempt >= 3 {
                break (status, after);
            }
        };
        let Some(block_hash) = status.block_hash.filter(|_| status.confirmations > 0) else {
            return Err(rule(not_final, format!("{txid} is not confirmed")));
        };
        let height = tip
            .checked_add(1)
            .and_then(|t| t.checked_sub(u64::from(status.confirmations)))
            .ok_or_else(|| {
                btc_err(
                    "getrawtransaction",
                    format!("{} confirmations at tip {tip}", status.confirmations),
                )
            })?;
        let best = self
            .bitcoin
            .get_block_hash(height)
            .map_err(|e| btc_err("getblockhash", e))?;
        if best != block_hash {
            return Err(rule(
                unknown,
                format!("{txid}'s block {block_hash} is not on this signer's best chain"),
            ));
        }
        Ok((status, block_hash, height, tip))
    }

    /// The request's transaction on the signer's best chain, parsed.
    fn request_op(&mut self, txid: &Txid) -> Result<(PegOutRequestOp, u64), Rule> {
        let (tx, at, tip) = self.on_best_chain(txid, "request.unknown", "request.not-final")?;
        match peg_ops::wire::parse_transaction(
            &tx,
            self.params.magic,
            self.params.networks.bitcoin,
            at,
        ) {
            Ok(Some(PegOp::PegOutRequest(op))) => Ok((op, tip)),
            Ok(_) => Err(rule(
                "request.unknown",
                format!("{txid} is no peg-out request"),
            )),
            Err(e) => Err(rule(
                "request.unknown",
                format!("{txid} is a malformed peg-out request: {e}"),
            )),
        }
    }

    /// The peg-in's transaction on the signer's best chain, parsed.
    fn peg_in_op(&mut self, txid: &Txid) -> Result<(PegInOp, Transaction, u64), Rule> {
        let (tx, at, tip) = self.on_best_chain(txid, "refund.unknown", "refund.not-final")?;
        match peg_ops::wire::parse_transaction(
            &tx,
            self.params.magic,
            self.params.networks.bitcoin,
            at,
        ) {
            Ok(Some(PegOp::PegIn(op))) => Ok((op, tx, tip)),
            Ok(_) => Err(rule("refund.unknown", format!("{txid} is no peg-in"))),
            Err(e) => Err(rule(
                "refund.unknown",
                format!("{txid} is a malformed peg-in: {e}"),
            )),
        }
    }

    fn check_fulfilment(
        &mut self,
        request_txid: &Txid,
        tx: &Transaction,
        prevouts: &[TxOut],
        promises: Vec<Promise>,
        final_tip: &[u8; 32],
        current: &PublicKey,
    ) -> Result<(Vec<Promise>, Option<Fulfilment>), Rule> {
        let (op, tip_height) = self.timed("on_best_chain", |g| g.request_op(request_txid))?;
        let now = now();
        let signed = self
            .store
            .fulfilments()
            .map_err(|e| rule("guard.store", e))?;
        let digest = peg_rules::request_signature_digest(&op);
        if let Some(f) = signed
            .iter()
            .find(|f| f.signature_digest == digest && f.request_txid != *request_txid)
        {
            return Err(rule(
                "request.replay",
                format!(
                    "{request_txid} carries the signature of {}, already paid by {}",
                    f.request_txid, f.txid
                ),
            ));
        }
        // Other requests signed in the last day: the daily outflow.
        let mut recent: BTreeMap<Txid, (Amount, Amount)> = BTreeMap::new();
        for f in signed
            .iter()
            .filter(|f| f.request_txid != *request_txid && f.time.saturating_add(DAY_SECS) > now)
        {
            let e = recent
                .entry(f.request_txid)
                .or_insert((f.amount, f.outflow));
            e.1 = e.1.max(f.outflow);
        }
        let outflow_last_day = recent
            .values()
            .map(|(a, _)| *a)
            .fold(Amount::ZERO, |s, a| s.checked_add(a).unwrap_or(Amount::MAX));
        drop(recent);
        let fee_outpoint = OutPoint::new(*request_txid, 2);
        let output2_unspent = self
            .timed("gettxout", |g| g.bitcoin.get_tx_out(&fee_outpoint, false))
            .map_err(|e| btc_err("gettxout", e))?
            .is_some();
        let scripts = self.held_scripts();
        let facts = RequestFacts {
            tip_height,
            confirmations: self.confirmations.bitcoin,
            peg_scripts: &scripts,
            output2_unspent,
            fee_rate: None,
            outflow_last_day,
        };
        match peg_rules::peg_out_payable(&self.params.policy, self.params.networks, &op, &facts) {
            Verdict::Accept => {}
            Verdict::Wait(why) => return Err(rule("request.not-final", why)),
            Verdict::Reject(r) => return Err(r),
        }
        // The burn, final, of the amount, from the requester.
        let requester = op
            .requester(self.params.networks.stacks)
            .map_err(|e| rule("request.signature", e.to_string()))?;
        match self.timed("burn_at", |g| g.burn_at(request_txid, final_tip))? {
            None => {
                return Err(rule(
                    "burn.not-final",
                    format!("no burn for {request_txid} at the final Stacks block"),
                ))
            }
            Some((amount, principal)) => {
                if amount != op.amount.to_sat() || principal != PrincipalData::Standard(requester) {
                    return Err(rule(
                        "burn.mismatch",
                        format!(
                            "{request_txid}: burned {amount} sats from {principal}, the request asks {} from {requester}",
                            op.amount.to_sat()
                        ),
                    ));
                }
            }
        }
        let wallet = self.timed("wallet", |g| g.wallet(final_tip))?;
        let current_script = self.script_for(current);
        let is_peg_coin = |o: &OutPoint, out: &TxOut| {
            wallet.unspent.get(o) == Some(out)
                && !wallet.fee_outputs.contains(o)
                && !wallet.owed_coins.contains(o)
        };
        peg_rules::check_fulfilment(
            &self.params.policy,
            self.params.magic,
            &op,
            tx,
            prevouts,
            &current_script,
            &is_peg_coin,
        )?;
        self.timed("check_books", |g| {
            g.check_books(&wallet, tx, prevouts, final_tip, Some(request_txid), None)
        })?;
        let spent = sum(prevouts.iter().map(|p| p.value)).unwrap_or(Amount::MAX);
        let fee = spent.checked_sub(sum(tx.output.iter().map(|o| o.value)).unwrap_or(Amount::MAX));
        let outflow = op
            .amount
            .checked_add(fee.unwrap_or(Amount::ZERO))
            .unwrap_or(Amount::MAX);
        Ok((
            promises,
            Some(Fulfilment {
                request_txid: *request_txid,
                txid: tx.compute_txid(),
                tx: tx.clone(),
                amount: op.amount,
                outflow,
                signature_digest: digest,
                time: now,
            }),
        ))
    }

    /// The circuit breaker: the peg's books after `tx` (a payout of
    /// `this_request`, a refund of the peg-in `refunding`, or a sweep), with
    /// the other payouts signed in the last day and not yet confirmed (their
    /// request's fee output still unspent) taken out of what the wallet
    /// holds. A refund pays a debt: the peg-in it refunds is owed no more.
    fn check_books(
        &mut self,
        wallet: &Arc<Wallet>,
        tx: &Transaction,
        prevouts: &[TxOut],
        final_tip: &[u8; 32],
        this_request: Option<&Txid>,
        refunding: Option<&Txid>,
    ) -> Result<(), Rule> {
        let now = now();
        let signed = self
            .store
            .fulfilments()
            .map_err(|e| rule("guard.store", e))?;
        let mut recent: BTreeMap<Txid, (Amount, Amount)> = BTreeMap::new();
        for f in signed.iter().filter(|f| {
            Some(&f.request_txid) != this_request && f.time.saturating_add(DAY_SECS) > now
        }) {
            let e = recent
                .entry(f.request_txid)
                .or_insert((f.amount, f.outflow));
            e.1 = e.1.max(f.outflow);
        }
        let scripts = self.held_scripts();
        // The books after this payout, with the other payouts signed and
        // not yet confirmed (their request's fee output still unspent)
        // taken out.
        let supply = match self.tip_reads(final_tip).supply.clone() {
            Some(v) => v,
            None => {
                let v = self.read_final(GET_TOTAL_SUPPLY, &[], final_tip)?;
                self.tip_reads(final_tip).supply = Some(v.clone());
                v
            }
        };
        let supply = match supply {
            Value::Ok(v) => match *v {
                Value::UInt(n) => n,
                other => return Err(stx_err(GET_TOTAL_SUPPLY, format!("(ok {other})"))),
            },
            other => return Err(stx_err(GET_TOTAL_SUPPLY, format!("{other}"))),
        };
        let supply = u64::try_from(supply)
            .map_err(|_| stx_err(GET_TOTAL_SUPPLY, format!("{supply} is above 2^64")))?;
        // The sBTC in circulation must be what the peg-ins minted for their
        // own amount and recipient, less what requests burned: a mint by the
        // coordinator's Stacks key with no peg-in behind it makes the supply
        // larger, and then nothing is paid — however much surplus (fee
        // leftovers, plain payments) the wallet holds.
        let burned = self.burned_by_requests(wallet, final_tip)?;
        let backed = wallet.minted.checked_sub(burned).unwrap_or(Amount::ZERO);
        if Amount::from_sat(supply) > backed {
            return Err(rule(
                "backing",
                format!(
                    "the sBTC supply is {supply} sats, but peg-ins minted {} and requests burned {}: {} sats of sBTC have no BTC behind them",
                    wallet.minted.to_sat(),
                    burned.to_sat(),
                    supply.saturating_sub(backed.to_sat())
                ),
            ));
        }
        let pending: HashSet<Txid> = recent
            .keys()
            .filter(|r| wallet.unspent.contains_key(&OutPoint::new(**r, 2)))
            .copied()
            .collect();

        let held: HashSet<ScriptBuf> = scripts.iter().cloned().collect();
        let held_now = sum(wallet.unspent.values().map(|o| o.value));
        let spent = sum(prevouts.iter().map(|p| p.value));
        let change = sum(tx
            .output
            .iter()
            .filter(|o| held.contains(&o.script_pubkey))
            .map(|o| o.value));
        let pending_out = sum(recent
            .iter()
            .filter(|(r, _)| pending.contains(*r))
            .map(|(_, (_, out))| *out));
        // Other requests not paid yet (no payout signed): their fee output,
        // and, once burned, their amount are owed.
        let mut owed_to_requests = Vec::new();
        for o in wallet
            .fee_outputs
            .iter()
            .filter(|o| Some(&o.txid) != this_request && !pending.contains(&o.txid))
        {
            if let Some(t) = wallet.unspent.get(o) {
                owed_to_requests.push(t.value);
            }
            // A burn seen final is owed from then on (as the supply above
            // counts it): no read again at every new Stacks block.
            let burned = match self
                .store
                .burned(&o.txid)
                .map_err(|e| rule("guard.store", e))?
            {
                Some(a) => Some(a),
                None => self.burn_at(&o.txid, final_tip)?.map(|(a, _)| a),
            };
            if let Some(amount) = burned {
                owed_to_requests.push(Amount::from_sat(amount));
            }
        }
        let debts = sum(wallet
            .unminted
            .iter()
            .filter(|(t, _)| Some(t) != refunding)
            .map(|(_, a)| *a)
            .chain(owed_to_requests));
        let (Some(held_now), Some(spent), Some(change), Some(pending_out), Some(debts)) =
            (held_now, spent, change, pending_out, debts)
        else {
            return Err(rule("backing", "the books overflow"));
        };
        let held_after = held_now
            .checked_add(change)
            .and_then(|h| h.checked_sub(spent))
            .and_then(|h| h.checked_sub(pending_out))
            .unwrap_or(Amount::ZERO);
        peg_rules::check_backing(&Books {
            held_after,
            supply,
            debts,
        })?;
        Ok(())
    }

    /// What the wallet's requests burned, final at `final_tip` (each burn
    /// seen final is marked in the store and counted from then on), summed
    /// again only when the wallet, the block or the store's facts changed.
    fn burned_by_requests(
        &mut self,
        wallet: &Arc<Wallet>,
        final_tip: &[u8; 32],
    ) -> Result<Amount, Rule> {
        if let Some((w, tip, generation, sum)) = &self.burned_at {
            if Arc::ptr_eq(w, wallet)
                && tip == final_tip
                && *generation == self.store.wallet_generation()
            {
                return Ok(*sum);
            }
        }
        self.burned_at = None;
        let mut burned = Amount::ZERO;
        for r in &wallet.requests {
            let amount = match self.store.burned(r).map_err(|e| rule("guard.store", e))? {
                Some(a) => Some(a),
                None => match self.burn_at(r, final_tip)? {
                    Some((a, _)) => {
                        self.store
                            .mark_burned(r, a)
                            .map_err(|e| rule("guard.store", e))?;
                        Some(a)
                    }
                    None => None,
                },
            };
            if let Some(a) = amount {
                burned = burned
                    .checked_add(Amount::from_sat(a))
                    .unwrap_or(Amount::MAX);
            }
        }
        self.burned_at = Some((
            wallet.clone(),
            *final_tip,
            self.store.wallet_generation(),
            burned,
        ));
        Ok(burned)
    }

    fn check_sweep(
        &mut self,
        tx: &Transaction,
        prevouts: &[TxOut],
        current: &PublicKey,
        final_tip: &[u8; 32],
    ) -> Result<(), Rule> {
        // The books too: a sweep's fee comes out of the backing, so a
        // stream of consolidations at the fee cap could drain it.
        let wallet = self.wallet(final_tip)?;
        let current_script = self.script_for(current);
        let is_sweepable = |o: &OutPoint, out: &TxOut| {
            wallet.unspent.get(o) == Some(out)
                && !wallet.fee_outputs.contains(o)
                && !wallet.owed_coins.contains(o)
        };
        peg_rules::check_sweep(
            &self.params.policy,
            tx,
            prevouts,
            &current_script,
            &is_sweepable,
        )?;
        self.check_books(&wallet, tx, prevouts, final_tip, None, None)
    }

    /// A refund of the peg-in `peg_in_txid`, checked on this signer's own
    /// nodes: the peg-in confirmed on its best chain, not mintable by its
    /// own rule (its policy's allowlist), never minted (`get-mint` at the
    /// final block and at the tip), the transaction passing
    /// `peg_rules::check_refund` against `funding`, its input the peg-in's
    /// output 1 unspent in the coin record, and the books holding after it.
    fn check_refund(
        &mut self,
        peg_in_txid: &Txid,
        funding: &Transaction,
        tx: &Transaction,
        prevouts: &[TxOut],
        final_tip: &[u8; 32],
    ) -> Result<Refund, Rule> {
        let (op, peg_in_tx, tip_height) = self.peg_in_op(peg_in_txid)?;
        let seen = tip_height
            .saturating_add(1)
            .saturating_sub(op.block_height.0);
        if seen < u64::from(self.confirmations.bitcoin) {
            return Err(rule(
                "refund.not-final",
                format!(
                    "{peg_in_txid}: {seen} of {} confirmations",
                    self.confirmations.bitcoin
                ),
            ));
        }
        let scripts = self.held_scripts();
        let facts = PegInFacts {
            tip_height,
            confirmations: self.confirmations.bitcoin,
            peg_scripts: &scripts,
            output1_unspent: None,
        };
        match peg_rules::peg_in_mintable(&self.params.policy, self.params.networks, &op, &facts) {
            Verdict::Reject(why) => {
                log::info!("refund of {peg_in_txid}: not mintable here ({why})");
            }
            Verdict::Accept | Verdict::Wait(_) => {
                return Err(rule(
                    "refund.mintable",
                    format!(
                        "{peg_in_txid} passes this signer's mint rule (recipient {} allowed): it is minted, not refunded",
                        op.recipient
                    ),
                ))
            }
        }
        let args = [contract::txid_arg(peg_in_txid)];
        let at_final = self.read_final(GET_MINT, &args, final_tip)?;
        let at_tip = self
            .stacks
            .call_read(&self.params.contract, GET_MINT, &args, &self.sender())
            .map_err(|e| stx_err(GET_MINT, e))?;
        for (where_, v) in [
            ("the final Stacks block", at_final),
            ("the Stacks tip", at_tip),
        ] {
            if let Some((amount, principal)) = decode_entry(&v).map_err(|e| stx_err(GET_MINT, e))? {
                return Err(rule(
                    "refund.minted",
                    format!("{peg_in_txid} was minted ({amount} sats to {principal}) at {where_}"),
                ));
            }
        }
        peg_rules::check_refund(&self.params.policy, &op, &peg_in_tx, funding, tx, prevouts)?;
        let wallet = self.wallet(final_tip)?;
        let own = OutPoint::new(*peg_in_txid, 1);
        if prevouts
            .first()
            .is_none_or(|p| wallet.unspent.get(&own) != Some(p))
        {
            return Err(rule(
                "refund.spent",
                format!("{own} is no unspent coin of this signer's record (refunded, swept, or unconfirmed)"),
            ));
        }
        self.check_books(&wallet, tx, prevouts, final_tip, None, Some(peg_in_txid))?;
        Ok(Refund {
            peg_in: *peg_in_txid,
            txid: tx.compute_txid(),
            tx: tx.clone(),
            time: now(),
        })
    }

    /// The whole check: the promises to record, and the fulfilment or
    /// refund signed.
    fn evaluate(&mut self, request: &SignRequest) -> Result<(Vec<Promise>, Signed), Rule> {
        let payload =
            SignPayload::decode(&request.payload).map_err(|e| rule("payload.decode", e))?;
        if request.items.is_empty() {
            return Err(rule("items.mismatch", "no items"));
        }
        if request.items.len() > MAX_ITEMS {
            return Err(rule(
                "items.mismatch",
                format!("{} items, more than {MAX_ITEMS}", request.items.len()),
            ));
        }
        match &payload {
            SignPayload::Test => {
                let mut promises = Vec::with_capacity(request.items.len());
                for item in &request.items {
                    if !matches!(item.message, ToSign::Test { .. }) {
                        return Err(rule(
                            "items.mismatch",
                            "a test payload asks only for test messages",
                        ));
                    }
                    if !self.keys.contains(&item.key) {
                        return Err(rule(
                            "items.mismatch",
                            format!("{} is not a key this signer holds", item.key),
                        ));
                    }
                    promises.push((item.key, item.message.digest()));
                }
                Ok((promises, Signed::Nothing))
            }
            SignPayload::Fulfilment { .. }
            | SignPayload::Sweep { .. }
            | SignPayload::Refund { .. } => {
                let final_tip = self.timed("final_tip", |g| g.final_tip())?;
                let current = self.timed("published_key", |g| g.published_key(&final_tip))?;
                self.timed("sync_coins", |g| g.sync_coins())?;
                let promises = self.timed("match_items", |g| g.match_items(&payload, request))?;
                match &payload {
                    SignPayload::Refund {
                        peg_in,
                        funding,
                        tx,
                        prevouts,
                    } => {
                        let refund =
                            self.check_refund(peg_in, funding, tx, prevouts, &final_tip)?;
                        Ok((promises, Signed::Refund(refund)))
                    }
                    SignPayload::Fulfilment {
                        request: r,
                        tx,
                        prevouts,
                    } => self
                        .check_fulfilment(r, tx, prevouts, promises, &final_tip, &current)
                        .map(|(p, f)| (p, f.map_or(Signed::Nothing, Signed::Fulfilment))),
                    SignPayload::Sweep { tx, prevouts } => {
                        self.check_sweep(tx, prevouts, &current, &final_tip)?;
                        Ok((promises, Signed::Nothing))
                    }
                    _ => Err(rule("payload.decode", "unreachable payload kind")),
                }
            }
        }
    }
}

impl Guard<UreqBitcoinNode, UreqStacksNode> {
    /// The guard of a real signer: its own nodes from `config`, the peg's
    /// parameters from the signer set file (`signer_file`, read from
    /// `signer_file_path`), holding shares of `keys` (the key history's
    /// aggregate keys).
    ///
    /// # Errors
    /// A configuration that does not fit, files that cannot be opened.
    pub fn open(
        config: &GuardConfig,
        signer_file: &SignerFile,
        signer_file_path: &Path,
        keys: &[PublicKey],
    ) -> Result<Self, GuardError> {
        let params = PegParams::from_signer_file(signer_file, signer_file_path)?;
        let b = &config.bitcoin_node;
        let auth = match (&b.user, &b.password, &b.cookie_file) {
            (Some(u), Some(p), None) => Auth::UserPass(u.clone(), p.clone()),
            (None, None, Some(c)) => Auth::Cookie(c.clone()),
            (None, None, None) => Auth::None,
            _ => {
                return Err(GuardError::Config(
                    "bitcoin_node: give user and password, or cookie_file".into(),
                ))
            }
        };
        let timeout = Duration::from_millis(config.rpc_timeout_ms.max(1));
        let bitcoin = UreqBitcoinNode::new(&b.url, auth, timeout);
        let stacks = UreqStacksNode::new(&config.stacks_node.url, timeout);
        Guard::new(
            bitcoin,
            stacks,
            params,
            config.confirmations,
            config.start_height,
            &config.data_dir,
            keys,
        )
    }
}

impl<B: BitcoinNode + Send, S: StacksNode + Send> Validator for Guard<B, S> {
    fn check(&mut self, request: &SignRequest) -> Result<(), String> {
        self.phases.clear();
        self.node_tip_synced = None;
        self.best_tip = None;
        let outcome = self.evaluate(request).and_then(|(promises, signed)| {
            self.timed("commit", |g| {
                g.store
                    .commit(request.id, now(), &promises, &signed)
                    .map_err(|e| rule("guard.store", e))
            })
        });
        match outcome {
            Ok(()) => {
                self.status.passed += 1;
                log::info!(
                    "sign request {}: passed, {} item(s) recorded",
                    request.id,
                    request.items.len()
                );
                Ok(())
            }
            Err(r) => {
                // What the check learnt stays learnt.
                if let Err(e) = self.store.flush() {
                    log::warn!("guard store: {e}");
                }
                self.status.refused += 1;
                let text = r.to_string();
                if r.name.starts_with("node.") || r.name.starts_with("guard.") {
                    self.status.last_error = Some(text.clone());
                }
                log::warn!("sign request {}: refused: {text}", request.id);
                self.status.last_refusal = Some(text.clone());
                Err(text)
            }
        }
    }

    fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> bool {
        match self.store.will_sign(key, digest) {
            Ok(b) => b,
            Err(e) => {
                log::error!("will_sign: {e}");
                false
            }
        }
    }

    fn attest(&mut self) -> Option<PublicKey> {
        let r = self.final_tip().and_then(|tip| self.published_key(&tip));
        match r {
            Ok(k) => Some(k),
            Err(e) => {
                if e.name != "key.not-ours" {
                    self.status.last_error = Some(e.to_string());
                }
                None
            }
        }
    }
}
