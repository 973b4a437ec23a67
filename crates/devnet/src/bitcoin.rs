//! A bitcoind emulator: a chain Bitcoin Core (regtest) accepts block by
//! block, a UTXO set and a mempool, behind the JSON-RPC methods the
//! coordinator uses with Core's shapes and error codes.
//!
//! Blocks are built as Core's miner builds them (checked against a real
//! Core in `tests/real_bitcoind.rs`): regtest's genesis; version 0x20000000;
//! the BIP34 height in a coinbase byte for byte like Core's (`CScript() <<
//! height`, `OP_0` only under two bytes, lock time `height - 1`, sequence
//! 0xfffffffe); the regtest subsidy (50 BTC halving every 150 blocks) plus
//! the fees; the BIP141 witness commitment in every block; a time above the
//! median of the last 11 (deterministic: one second after the tip, so runs
//! repeat; Core therefore reports `initialblockdownload`, which changes
//! nothing the coordinator uses); proof of work on 0x207fffff; the block
//! weight and sigop limits.
//!
//! The mempool refuses what Core refuses, with its codes: every input is
//! checked with libbitcoinconsensus (taproot rules, spent outputs); missing
//! or double-spent inputs, outputs above inputs, immature coinbases,
//! non-final and non-BIP68-final transactions, nonstandard versions, sizes,
//! scripts and sigops, dust, and `sendrawtransaction`'s default maxfeerate.
//! Conflicts replace as in Core's full RBF. Where it differs from Core v31's
//! defaults it is stricter: minimum relay fee 1 sat/vB (Core: 0.1),
//! ancestor/descendant limits of 25 (Core: clusters of 64), OP_RETURN
//! outputs of at most 83 bytes (Core: 100,000), per-conflict fee rates for
//! replacements (Core: feerate diagrams). Of Core's policy-only script
//! flags it applies low S and compressed keys to P2WPKH spends only (the
//! others, such as minimal pushes, a secp256k1 signer meets anyway).
//!
//! RPC answers carry the fields Core gives (decoded transactions without
//! `asm` and `desc`; `getblock` verbosity 3 answers as 2, without `prevout`). `getrawtransaction` finds confirmed transactions by
//! txid, as Core does with `-txindex=1` (the devnet's real Core runs with
//! it); blocks taken off the best chain stay known, as in Core. `gettxout`
//! answers from the UTXO set and, by default, the mempool, as Core does. Still fixed:
//! `estimatesmartfee` always answers 2 sat/vB, where a fresh regtest Core
//! has no estimate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::server::{lock, Emulator};
use bitcoin::block::{Header, Version};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, FeeRate, Network, OutPoint,
    ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use serde_json::{json, Value as Json};
use tiny_http::{Header as HttpHeader, Request, Response};

/// Blocks before a coinbase output may be spent.
pub const COINBASE_MATURITY: u64 = 100;

/// bitcoind's `-limitancestorcount` and `-limitdescendantcount` defaults.
pub const MEMPOOL_CHAIN_LIMIT: usize = 25;

/// The block version Core's miner sets (BIP9 top bits, no deployment
/// signalled); regtest enforces BIP34/65/66 from height 1, so at least 4.
pub const BLOCK_VERSION: i32 = 0x2000_0000;

/// Regtest's proof-of-work limit, which it never retargets from.
pub const REGTEST_BITS: u32 = 0x207f_ffff;

/// Regtest's halving interval (mainnet's is 210,000).
pub const REGTEST_HALVING_INTERVAL: u64 = 150;

/// BIP141's block weight limit.
pub const MAX_BLOCK_WEIGHT: usize = 4_000_000;

/// BIP141's block sigop cost limit.
pub const MAX_BLOCK_SIGOPS_COST: usize = 80_000;

/// Core's standardness limit on a transaction's weight.
pub const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;

/// Core's standardness limit on a transaction's sigop cost.
pub const MAX_STANDARD_TX_SIGOPS_COST: usize = MAX_BLOCK_SIGOPS_COST / 5;

/// The block subsidy at `height` on regtest: 50 BTC, halved every 150 blocks.
pub fn subsidy(height: u64) -> Amount {
    let halvings = height / REGTEST_HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

/// The coinbase Core's miner writes at `height` paying `value` to `to`:
/// scriptSig `CScript() << height` (plus `OP_0` while that is under the
/// two-byte minimum), lock time `height - 1` with a non-final sequence, the
/// 32-byte zero witness reserved value. The witness commitment output is
/// added by [`add_witness_commitment`].
fn coinbase(height: u64, to: &ScriptBuf, value: Amount) -> Transaction {
    let mut script_sig = bitcoin::script::Builder::new()
        .push_int(i64::try_from(height).unwrap_or(i64::MAX))
        .into_script();
    if script_sig.len() < 2 {
        script_sig.push_opcode(bitcoin::opcodes::OP_0);
    }
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::from_consensus(
            u32::try_from(height.saturating_sub(1)).unwrap_or(u32::MAX),
        ),
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::ENABLE_LOCKTIME_NO_RBF,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![TxOut {
            value,
            script_pubkey: to.clone(),
        }],
    }
}

/// Appends BIP141's witness commitment to the coinbase (`OP_RETURN
/// aa21a9ed` ‖ SHA256d(witness root ‖ reserved value)), as Core's miner
/// does for every block.
fn add_witness_commitment(block: &mut Block) {
    let Some(root) = block.witness_root() else {
        return;
    };
    let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
    let mut data = [0u8; 36];
    data[..4].copy_from_slice(&[0xaa, 0x21, 0xa9, 0xed]);
    data[4..].copy_from_slice(commitment.as_byte_array());
    if let Some(cb) = block.txdata.first_mut() {
        cb.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new_op_return(data),
        });
    }
}

#[derive(Debug, Clone)]
struct Coin {
    txout: TxOut,
    height: u64,
    coinbase: bool,
}

/// Why bitcoind refuses a transaction: its RPC code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The RPC error code (-25, -26, -27, -22).
    pub code: i64,
    /// The message.
    pub message: String,
}

fn refuse(code: i64, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// The emulated chain.
#[derive(Debug)]
pub struct BitcoinState {
    blocks: Vec<Block>,
    /// The hash of each block of `blocks`, by height.
    block_hashes: Vec<BlockHash>,
    /// The height of each block of `blocks`, by hash.
    heights: HashMap<BlockHash, u64>,
    /// Where each transaction of `blocks` is: (height, index in its block).
    /// Every answer that finds a transaction by txid reads it (no scan of
    /// the chain, no txid computed again per request: issue #16).
    tx_index: HashMap<Txid, (u64, usize)>,
    undo: Vec<Vec<(OutPoint, Coin)>>,
    utxos: HashMap<OutPoint, Coin>,
    /// In arrival order, each with its txid.
    mempool: Vec<Pooled>,
    /// Blocks taken off the best chain (`invalidate_tip`), as Core keeps
    /// them: `getblock` still finds them (confirmations -1).
    stale: Vec<Stale>,
    /// Minimum relay fee rate.
    pub min_relay_fee: FeeRate,
}

/// A mempool transaction with its txid, computed once.
#[derive(Debug, Clone)]
struct Pooled {
    txid: Txid,
    tx: Transaction,
}

/// A block no longer on the best chain.
#[derive(Debug, Clone)]
struct Stale {
    height: u64,
    block: Block,
    undo: Vec<(OutPoint, Coin)>,
}

/// How many stale blocks are remembered.
const MAX_STALE: usize = 1_000;

/// A block found by hash, on the best chain or not.
struct Found<'a> {
    height: u64,
    block: &'a Block,
    undo: &'a [(OutPoint, Coin)],
    active: bool,
}

impl Default for BitcoinState {
    fn default() -> Self {
        Self::new()
    }
}

impl BitcoinState {
    /// A regtest chain holding only the genesis block.
    pub fn new() -> Self {
        let mut state = BitcoinState {
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            heights: HashMap::new(),
            tx_index: HashMap::new(),
            undo: Vec::new(),
            utxos: HashMap::new(),
            mempool: Vec::new(),
            stale: Vec::new(),
            min_relay_fee: FeeRate::from_sat_per_vb(1).expect("1 sat/vB is representable"),
        };
        state.push_block(genesis_block(Network::Regtest), vec![]);
        state
    }

    /// Appends `block` (with its undo data) to the best chain, indexed.
    fn push_block(&mut self, block: Block, undo: Vec<(OutPoint, Coin)>) {
        let height = self.blocks.len() as u64;
        let hash = block.block_hash();
        for (i, tx) in block.txdata.iter().enumerate() {
            self.tx_index.insert(tx.compute_txid(), (height, i));
        }
        self.heights.insert(hash, height);
        self.block_hashes.push(hash);
        self.blocks.push(block);
        self.undo.push(undo);
    }

    /// Takes the tip block (and its undo data) off the best chain and out
    /// of the indexes.
    fn pop_block(&mut self) -> Option<(Block, Vec<(OutPoint, Coin)>)> {
        let block = self.blocks.pop()?;
        let height = self.blocks.len() as u64;
        let undo = self.undo.pop().unwrap_or_default();
        if let Some(hash) = self.block_hashes.pop() {
            self.heights.remove(&hash);
        }
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            if self.tx_index.get(&txid).map(|(h, _)| *h) == Some(height) {
                self.tx_index.remove(&txid);
            }
        }
        Some((block, undo))
    }

    /// The mempool transaction `txid`.
    fn pooled(&self, txid: &Txid) -> Option<&Transaction> {
        self.mempool.iter().find(|p| p.txid == *txid).map(|p| &p.tx)
    }

    /// The tip height.
    pub fn height(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    /// The block at `height` on the best chain.
    pub fn block(&self, height: u64) -> Option<&Block> {
        self.blocks.get(usize::try_from(height).ok()?)
    }

    fn find_block(&self, hash: &BlockHash) -> Option<(u64, &Block)> {
        let height = *self.heights.get(hash)?;
        Some((height, self.block(height)?))
    }

    /// A block on the best chain or a stale one.
    fn find_any_block(&self, hash: &BlockHash) -> Option<Found<'_>> {
        if let Some((height, block)) = self.find_block(hash) {
            let undo = self
                .undo
                .get(usize::try_from(height).ok()?)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            return Some(Found {
                height,
                block,
                undo,
                active: true,
            });
        }
        self.stale
            .iter()
            .rev()
            .find(|s| s.block.block_hash() == *hash)
            .map(|s| Found {
                height: s.height,
                block: &s.block,
                undo: &s.undo,
                active: false,
            })
    }

    /// The median time past of a block's chain ending at it, found through
    /// its ancestors on the best chain or among stale blocks.
    fn median_time_past_of(&self, block: &Block) -> u32 {
        let mut times = vec![block.header.time];
        let mut prev = block.header.prev_blockhash;
        while times.len() < 11 {
            let Some(f) = self.find_any_block(&prev) else {
                break;
            };
            times.push(f.block.header.time);
            if f.height == 0 {
                break;
            }
            prev = f.block.header.prev_blockhash;
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Where a transaction is: `Some(None)` in the mempool, `Some(Some(h))`
    /// confirmed at height `h`.
    pub fn locate(&self, txid: &Txid) -> Option<(Transaction, Option<u64>)> {
        if let Some(t) = self.pooled(txid) {
            return Some((t.clone(), None));
        }
        let (height, i) = *self.tx_index.get(txid)?;
        let tx = self.block(height)?.txdata.get(i)?;
        Some((tx.clone(), Some(height)))
    }

    /// Unspent confirmed outputs paying `script`: (outpoint, output, height).
    pub fn unspent(&self, script: &bitcoin::Script) -> Vec<(OutPoint, TxOut, u64)> {
        let spent_in_mempool: HashSet<OutPoint> = self
            .mempool
            .iter()
            .flat_map(|p| p.tx.input.iter().map(|i| i.previous_output))
            .collect();
        let mut v: Vec<_> = self
            .utxos
            .iter()
            .filter(|(o, c)| c.txout.script_pubkey == *script && !spent_in_mempool.contains(o))
            .map(|(o, c)| (*o, c.txout.clone(), c.height))
            .collect();
        v.sort_by_key(|(o, _, _)| *o);
        v
    }

    /// Checks a transaction as bitcoind's mempool would, without adding it.
    pub fn check(&self, tx: &Transaction) -> Result<Amount, Refusal> {
        self.check_replacing(tx).map(|(fee, _)| fee)
    }

    /// As [`BitcoinState::check`], also giving the mempool transactions it
    /// would replace (full RBF, as Core since v28: a conflicting
    /// transaction replaces what it conflicts with, and their descendants,
    /// when it pays more in fees and fee rate).
    fn check_replacing(&self, tx: &Transaction) -> Result<(Amount, HashSet<Txid>), Refusal> {
        if tx.is_coinbase() {
            return Err(refuse(-26, "coinbase"));
        }
        if tx.input.is_empty() {
            return Err(refuse(-26, "bad-txns-vin-empty"));
        }
        if tx.output.is_empty() {
            return Err(refuse(-26, "bad-txns-vout-empty"));
        }
        self.check_standard(tx)?;
        if !self.is_final_at_tip(tx) {
            return Err(refuse(-26, "non-final"));
        }
        let mempool_output = |o: &OutPoint| -> Option<TxOut> {
            self.pooled(&o.txid)?
                .output
                .get(usize::try_from(o.vout).ok()?)
                .cloned()
        };
        let inputs: HashSet<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
        let conflicting: Vec<&Pooled> = self
            .mempool
            .iter()
            .filter(|p| {
                p.tx.input
                    .iter()
                    .any(|i| inputs.contains(&i.previous_output))
            })
            .collect();
        let evicted = self.with_descendants(conflicting.iter().map(|p| p.txid));
        let conflicts: Vec<&Transaction> = conflicting.iter().map(|p| &p.tx).collect();
        let mut seen = HashSet::new();
        let mut prevouts = Vec::with_capacity(tx.input.len());
        let mut heights = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let o = input.previous_output;
            if !seen.insert(o) {
                return Err(refuse(-26, "bad-txns-inputs-duplicate"));
            }
            if evicted.contains(&o.txid) {
                return Err(refuse(-26, "bad-txns-spends-conflicting-tx"));
            }
            let (out, height) = match (self.utxos.get(&o), mempool_output(&o)) {
                (Some(c), _) => {
                    if c.coinbase && self.height() + 1 - c.height < COINBASE_MATURITY {
                        return Err(refuse(-26, "bad-txns-premature-spend-of-coinbase"));
                    }
                    (c.txout.clone(), c.height)
                }
                (None, Some(m)) => (m, self.height() + 1),
                (None, None) => return Err(refuse(-25, "bad-txns-inputs-missingorspent")),
            };
            prevouts.push(out);
            heights.push(height);
        }
        if !self.sequence_locks_met(tx, &heights) {
            return Err(refuse(-26, "non-BIP68-final"));
        }
        let spent: HashMap<OutPoint, TxOut> = tx
            .input
            .iter()
            .map(|i| i.previous_output)
            .zip(prevouts.iter().cloned())
            .collect();
        if tx.total_sigop_cost(|o| spent.get(o).cloned()) > MAX_STANDARD_TX_SIGOPS_COST {
            return Err(refuse(-26, "bad-txns-too-many-sigops"));
        }
        self.check_chain_limits(tx)?;
        let value_in = prevouts
            .iter()
            .try_fold(Amount::ZERO, |s, o| s.checked_add(o.value))
            .ok_or_else(|| refuse(-26, "bad-txns-inputvalues-outofrange"))?;
        let value_out = tx
            .output
            .iter()
            .try_fold(Amount::ZERO, |s, o| s.checked_add(o.value))
            .ok_or_else(|| refuse(-26, "bad-txns-txouttotal-toolarge"))?;
        let fee = value_in
            .checked_sub(value_out)
            .ok_or_else(|| refuse(-26, "bad-txns-in-belowout"))?;
        for o in &tx.output {
            if o.script_pubkey.is_op_return() {
                if o.script_pubkey.len() > 83 {
                    return Err(refuse(-26, "scriptpubkey"));
                }
            } else if o.value < o.script_pubkey.minimal_non_dust() {
                return Err(refuse(-26, "dust"));
            }
        }
        let min = self
            .min_relay_fee
            .fee_vb(tx.vsize() as u64)
            .unwrap_or(Amount::MAX);
        if fee < min {
            return Err(refuse(
                -26,
                format!("min relay fee not met, {} < {}", fee.to_sat(), min.to_sat()),
            ));
        }
        if !conflicts.is_empty() {
            self.check_replacement(tx, fee, &conflicts, &evicted)?;
        }
        fee_wallet::verify_spends(tx, &prevouts)
            .map_err(|e| refuse(-26, format!("mempool-script-verify-flag-failed ({e})")))?;
        check_p2wpkh_policy(tx, &prevouts)?;
        Ok((fee, evicted))
    }

    /// The mempool transactions `roots` and all their in-mempool descendants.
    fn with_descendants(&self, roots: impl Iterator<Item = Txid>) -> HashSet<Txid> {
        let mut set: HashSet<Txid> = roots.collect();
        // The mempool is in arrival order: a child comes after its parents.
        for p in &self.mempool {
            if p.tx
                .input
                .iter()
                .any(|i| set.contains(&i.previous_output.txid))
            {
                set.insert(p.txid);
            }
        }
        set
    }

    /// The fee of a mempool transaction (zero if its inputs are unknown,
    /// which a mempool transaction's never are).
    fn mempool_fee(&self, tx: &Transaction) -> Amount {
        let value = |o: &OutPoint| -> Option<Amount> {
            match self.utxos.get(o) {
                Some(c) => Some(c.txout.value),
                None => self
                    .pooled(&o.txid)?
                    .output
                    .get(usize::try_from(o.vout).ok()?)
                    .map(|x| x.value),
            }
        };
        let value_in = tx.input.iter().try_fold(Amount::ZERO, |a, i| {
            a.checked_add(value(&i.previous_output)?)
        });
        let value_out = tx
            .output
            .iter()
            .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value));
        value_in
            .zip(value_out)
            .and_then(|(i, o)| i.checked_sub(o))
            .unwrap_or(Amount::ZERO)
    }

    /// Core's replacement rules (BIP125 without the signalling, which full
    /// RBF dropped): at most 100 evictions; no new unconfirmed inputs; fees
    /// at least those of everything evicted plus the relay fee of the
    /// replacement's own size; a higher fee rate than each direct conflict.
    /// Where Core v31 compares feerate diagrams, the per-conflict fee rate
    /// is the stricter, older rule.
    fn check_replacement(
        &self,
        tx: &Transaction,
        fee: Amount,
        conflicts: &[&Transaction],
        evicted: &HashSet<Txid>,
    ) -> Result<(), Refusal> {
        let txid = tx.compute_txid();
        if evicted.len() > 100 {
            return Err(refuse(
                -26,
                format!(
                    "too many potential replacements, rejecting replacement {txid}; too many potential replacements ({} > 100)",
                    evicted.len()
                ),
            ));
        }
        let in_mempool: HashSet<Txid> = self.mempool.iter().map(|p| p.txid).collect();
        let conflict_parents: HashSet<Txid> = conflicts
            .iter()
            .flat_map(|c| c.input.iter().map(|i| i.previous_output.txid))
            .collect();
        if tx.input.iter().any(|i| {
            in_mempool.contains(&i.previous_output.txid)
                && !conflict_parents.contains(&i.previous_output.txid)
        }) {
            return Err(refuse(
                -26,
                format!("replacement-adds-unconfirmed, replacement {txid} adds unconfirmed input"),
            ));
        }
        let old_fees = self
            .mempool
            .iter()
            .filter(|p| evicted.contains(&p.txid))
            .map(|p| self.mempool_fee(&p.tx))
            .fold(Amount::ZERO, |a, f| a.checked_add(f).unwrap_or(Amount::MAX));
        if fee < old_fees {
            return Err(refuse(
                -26,
                format!(
                    "insufficient fee, rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                    fee.to_btc(),
                    old_fees.to_btc()
                ),
            ));
        }
        let relay = self
            .min_relay_fee
            .fee_vb(tx.vsize() as u64)
            .unwrap_or(Amount::MAX);
        let additional = fee.checked_sub(old_fees).unwrap_or(Amount::ZERO);
        if additional < relay {
            return Err(refuse(
                -26,
                format!(
                    "insufficient fee, rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                    additional.to_btc(),
                    relay.to_btc()
                ),
            ));
        }
        for c in conflicts {
            // fee / vsize > old_fee / old_vsize, in integers.
            let new = u128::from(fee.to_sat()) * c.vsize() as u128;
            let old = u128::from(self.mempool_fee(c).to_sat()) * tx.vsize() as u128;
            if new <= old {
                return Err(refuse(
                    -26,
                    format!(
                        "insufficient fee, rejecting replacement {txid}; new feerate does not exceed that of {}",
                        c.compute_txid()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Core's `IsStandardTx` checks that do not need the spent outputs.
    fn check_standard(&self, tx: &Transaction) -> Result<(), Refusal> {
        if !(1..=3).contains(&tx.version.0) {
            return Err(refuse(-26, "version"));
        }
        if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
            return Err(refuse(-26, "tx-size"));
        }
        if tx.base_size() < 65 {
            return Err(refuse(-26, "tx-size-small"));
        }
        for i in &tx.input {
            if i.script_sig.len() > 1650 {
                return Err(refuse(-26, "scriptsig-size"));
            }
            if !i.script_sig.is_push_only() {
                return Err(refuse(-26, "scriptsig-not-pushonly"));
            }
        }
        for o in &tx.output {
            let s = &o.script_pubkey;
            let standard = s.is_p2pk()
                || s.is_p2pkh()
                || s.is_p2sh()
                || s.is_multisig()
                || s.is_op_return()
                || s.is_witness_program();
            if !standard {
                return Err(refuse(-26, "scriptpubkey"));
            }
        }
        Ok(())
    }

    /// Core's `IsFinalTx` for the next block: its height and the tip's
    /// median time past.
    fn is_final_at_tip(&self, tx: &Transaction) -> bool {
        let lock = tx.lock_time.to_consensus_u32();
        if lock == 0 {
            return true;
        }
        let limit = if lock < absolute::LOCK_TIME_THRESHOLD {
            self.height() + 1
        } else {
            u64::from(self.median_time_past(self.height()))
        };
        u64::from(lock) < limit || tx.input.iter().all(|i| i.sequence == Sequence::MAX)
    }

    /// BIP68 relative lock times for the next block, given the height of
    /// each spent coin (the next block's for mempool coins).
    fn sequence_locks_met(&self, tx: &Transaction, heights: &[u64]) -> bool {
        if tx.version.0 < 2 {
            return true;
        }
        let (mut min_height, mut min_time) = (-1i64, -1i64);
        for (input, &h) in tx.input.iter().zip(heights) {
            let seq = input.sequence.0;
            if seq & (1 << 31) != 0 {
                continue;
            }
            let value = i64::from(seq & 0xffff);
            let h = i64::try_from(h).unwrap_or(i64::MAX);
            if seq & (1 << 22) != 0 {
                let before = u64::try_from(h - 1).unwrap_or(0);
                let coin_time = i64::from(self.median_time_past(before));
                min_time = min_time.max(coin_time + (value << 9) - 1);
            } else {
                min_height = min_height.max(h + value - 1);
            }
        }
        let next = i64::try_from(self.height() + 1).unwrap_or(i64::MAX);
        min_height < next && min_time < i64::from(self.median_time_past(self.height()))
    }

    /// bitcoind's default package limits: a transaction with its in-mempool
    /// ancestors, or an in-mempool transaction with its descendants, counts
    /// at most [`MEMPOOL_CHAIN_LIMIT`] transactions.
    fn check_chain_limits(&self, tx: &Transaction) -> Result<(), Refusal> {
        let by_txid: HashMap<Txid, &Transaction> =
            self.mempool.iter().map(|p| (p.txid, &p.tx)).collect();
        let parents = |t: &Transaction| -> Vec<Txid> {
            t.input
                .iter()
                .map(|i| i.previous_output.txid)
                .filter(|p| by_txid.contains_key(p))
                .collect()
        };
        let mut ancestors = HashSet::new();
        let mut todo = parents(tx);
        while let Some(t) = todo.pop() {
            if ancestors.insert(t) {
                todo.extend(parents(by_txid[&t]));
            }
        }
        if ancestors.len() + 1 > MEMPOOL_CHAIN_LIMIT {
            return Err(refuse(
                -26,
                format!(
                    "too-long-mempool-chain, too many unconfirmed ancestors [limit: {MEMPOOL_CHAIN_LIMIT}]"
                ),
            ));
        }
        let mut children: HashMap<Txid, Vec<Txid>> = HashMap::new();
        for (id, t) in &by_txid {
            for p in parents(t) {
                children.entry(p).or_default().push(*id);
            }
        }
        for a in &ancestors {
            let mut seen = HashSet::new();
            let mut todo = children.get(a).cloned().unwrap_or_default();
            while let Some(t) = todo.pop() {
                if seen.insert(t) {
                    todo.extend(children.get(&t).into_iter().flatten());
                }
            }
            // The ancestor, its descendants, and the new one.
            if seen.len() + 2 > MEMPOOL_CHAIN_LIMIT {
                return Err(refuse(
                    -26,
                    format!("too-long-mempool-chain, too many descendants for tx {a} [limit: {MEMPOOL_CHAIN_LIMIT}]"),
                ));
            }
        }
        Ok(())
    }

    /// Adds a transaction to the mempool (`sendrawtransaction`).
    pub fn send(&mut self, tx: Transaction) -> Result<Txid, Refusal> {
        self.send_capped(tx, |_, _| Ok(()))
    }

    /// As [`BitcoinState::send`], refusing with `cap`'s refusal a
    /// transaction whose (fee, vsize) it refuses, after the mempool's
    /// checks and before it enters (`sendrawtransaction`'s maxfeerate): the
    /// scripts are verified once.
    fn send_capped(
        &mut self,
        tx: Transaction,
        cap: impl FnOnce(Amount, u64) -> Result<(), Refusal>,
    ) -> Result<Txid, Refusal> {
        let txid = tx.compute_txid();
        if self.pooled(&txid).is_some() {
            return Ok(txid);
        }
        if (0..tx.output.len()).any(|i| self.utxos.contains_key(&OutPoint::new(txid, i as u32))) {
            return Err(refuse(-27, "Transaction outputs already in utxo set"));
        }
        let (fee, evicted) = self.check_replacing(&tx)?;
        cap(fee, tx.vsize() as u64)?;
        if !evicted.is_empty() {
            log::debug!("{txid} replaces {} mempool transactions", evicted.len());
            self.mempool.retain(|p| !evicted.contains(&p.txid));
        }
        self.mempool.push(Pooled { txid, tx });
        Ok(txid)
    }

    /// Mines a block paying the coinbase to `to`, with the mempool's
    /// transactions (in arrival order, as many as fit under the block weight
    /// and sigop limits), as Bitcoin Core's miner builds it: version
    /// 0x20000000, the BIP34 height in the coinbase (`CScript() << height`,
    /// with a dummy `OP_0` only where the push alone is under two bytes),
    /// coinbase lock time `height - 1` with sequence 0xfffffffe, the regtest
    /// subsidy plus the fees, the BIP141 witness commitment, a time above the
    /// median of the last 11 blocks and real proof of work on 0x207fffff.
    pub fn mine(&mut self, to: &ScriptBuf) -> BlockHash {
        let height = self.height() + 1;
        let (txdata, fees) = self.select_for_block(to);
        let value = subsidy(height).checked_add(fees).unwrap_or(subsidy(height));
        let coinbase = coinbase(height, to, value);
        let mut block = Block {
            header: Header {
                version: Version::from_consensus(BLOCK_VERSION),
                prev_blockhash: self.tip_hash(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: self.next_block_time(),
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase).chain(txdata).collect(),
        };
        add_witness_commitment(&mut block);
        if let Some(root) = block.compute_merkle_root() {
            block.header.merkle_root = root;
        }
        let target = block.header.target();
        while block.header.validate_pow(target).is_err() {
            block.header.nonce = block.header.nonce.wrapping_add(1);
            if block.header.nonce == 0 {
                block.header.time = block.header.time.saturating_add(1);
            }
        }
        let mut undo = Vec::new();
        for (i, tx) in block.txdata.iter().enumerate() {
            for input in tx.input.iter().filter(|_| i > 0) {
                if let Some(c) = self.utxos.remove(&input.previous_output) {
                    undo.push((input.previous_output, c));
                }
            }
            let txid = tx.compute_txid();
            for (v, o) in tx.output.iter().enumerate() {
                if !o.script_pubkey.is_op_return() {
                    self.utxos.insert(
                        OutPoint::new(txid, v as u32),
                        Coin {
                            txout: o.clone(),
                            height,
                            coinbase: i == 0,
                        },
                    );
                }
            }
        }
        let hash = block.block_hash();
        self.stale.retain(|s| s.block.block_hash() != hash);
        self.push_block(block, undo);
        hash
    }

    /// Takes from the front of the mempool what fits in a block beside a
    /// coinbase paying `to`; returns it with its fees. The mempool is in
    /// arrival order, so parents come before children and a prefix is a
    /// valid block.
    fn select_for_block(&mut self, to: &ScriptBuf) -> (Vec<Transaction>, Amount) {
        // Core's miner reserves 4000 weight units and 400 sigops for the
        // coinbase; the header and transaction count take a few more.
        let mut weight = 4_000 + 4 * 90;
        let mut sigops = 400 + 4 * to.count_sigops_legacy();
        let mut fees = Amount::ZERO;
        let mut created: HashMap<OutPoint, TxOut> = HashMap::new();
        let mut n = 0;
        for Pooled { txid, tx } in &self.mempool {
            let lookup = |o: &OutPoint| {
                self.utxos
                    .get(o)
                    .map(|c| c.txout.clone())
                    .or_else(|| created.get(o).cloned())
            };
            let w = tx.weight().to_wu() as usize;
            let s = tx.total_sigop_cost(lookup);
            if weight + w > MAX_BLOCK_WEIGHT || sigops + s > MAX_BLOCK_SIGOPS_COST {
                break;
            }
            let value_in = tx
                .input
                .iter()
                .filter_map(|i| lookup(&i.previous_output))
                .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value));
            let value_out = tx
                .output
                .iter()
                .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value));
            let fee = value_in
                .zip(value_out)
                .and_then(|(i, o)| i.checked_sub(o))
                .unwrap_or(Amount::ZERO);
            fees = fees.checked_add(fee).unwrap_or(fees);
            weight += w;
            sigops += s;
            for (v, o) in tx.output.iter().enumerate() {
                created.insert(OutPoint::new(*txid, v as u32), o.clone());
            }
            n += 1;
        }
        (self.mempool.drain(..n).map(|p| p.tx).collect(), fees)
    }

    /// The best chain's tip hash.
    pub fn tip_hash(&self) -> BlockHash {
        self.block_hashes
            .last()
            .copied()
            .unwrap_or_else(|| genesis_block(Network::Regtest).block_hash())
    }

    /// The hash of the best-chain block at `height`.
    pub fn block_hash(&self, height: u64) -> Option<BlockHash> {
        self.block_hashes
            .get(usize::try_from(height).ok()?)
            .copied()
    }

    /// The median time of the 11 blocks ending at `height` (BIP113), as
    /// Core's `GetMedianTimePast`.
    pub fn median_time_past(&self, height: u64) -> u32 {
        let end = usize::try_from(height)
            .unwrap_or(usize::MAX)
            .min(self.blocks.len().saturating_sub(1));
        let mut times: Vec<u32> = self.blocks[end.saturating_sub(10)..=end]
            .iter()
            .map(|b| b.header.time)
            .collect();
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// The next block's time: one second after the tip, and above the
    /// median time past (deterministic, so the devnet's chains repeat).
    fn next_block_time(&self) -> u32 {
        let prev = self.blocks.last().map(|b| b.header.time).unwrap_or(0);
        prev.max(self.median_time_past(self.height()))
            .saturating_add(1)
    }

    /// Empties the mempool, returning what it held (to mine blocks without it).
    pub fn take_mempool(&mut self) -> Vec<Transaction> {
        std::mem::take(&mut self.mempool)
            .into_iter()
            .map(|p| p.tx)
            .collect()
    }

    /// Offers `txs` to the mempool again; those no longer valid are dropped,
    /// as bitcoind drops them.
    pub fn restore_mempool(&mut self, txs: Vec<Transaction>) {
        for tx in txs {
            let _ = self.send(tx);
        }
    }

    /// Removes the tip block (`invalidateblock` of the tip): its outputs
    /// vanish, what it spent is unspent again, its transactions go back to
    /// the mempool when still valid.
    pub fn invalidate_tip(&mut self) {
        if self.blocks.len() <= 1 {
            return;
        }
        let Some((block, undo)) = self.pop_block() else {
            return;
        };
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for v in 0..tx.output.len() {
                self.utxos.remove(&OutPoint::new(txid, v as u32));
            }
        }
        for (o, c) in &undo {
            self.utxos.insert(*o, c.clone());
        }
        let txs: Vec<Transaction> = block.txdata.iter().skip(1).cloned().collect();
        self.stale.push(Stale {
            height: self.height() + 1,
            block,
            undo,
        });
        if self.stale.len() > MAX_STALE {
            self.stale.remove(0);
        }
        let old = self.take_mempool();
        for tx in txs.into_iter().chain(old) {
            let _ = self.send(tx);
        }
    }
}

/// Two of Core's policy-only script flags libbitcoinconsensus does not
/// apply, for P2WPKH spends: LOW_S and WITNESS_PUBKEYTYPE.
fn check_p2wpkh_policy(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), Refusal> {
    // Core's text: the flag, then which input of which transaction.
    for (i, (input, prev)) in tx.input.iter().zip(prevouts).enumerate() {
        let failed = |why: &str| {
            let (txid, wtxid) = (tx.compute_txid(), tx.compute_wtxid());
            refuse(
                -26,
                format!(
                    "mempool-script-verify-flag-failed ({why}), input {i} of {txid} (wtxid {wtxid}), spending {}",
                    input.previous_output
                ),
            )
        };
        if !prev.script_pubkey.is_p2wpkh() || input.witness.len() != 2 {
            continue;
        }
        let (Some(sig), Some(key)) = (input.witness.nth(0), input.witness.nth(1)) else {
            continue;
        };
        if key.len() != 33 {
            return Err(failed("Using non-compressed keys in segwit"));
        }
        let Some((_, der)) = sig.split_last() else {
            continue;
        };
        if let Ok(parsed) = bitcoin::secp256k1::ecdsa::Signature::from_der(der) {
            let mut low = parsed;
            low.normalize_s();
            if low != parsed {
                return Err(failed(
                    "Non-canonical signature: S value is unnecessarily high",
                ));
            }
        }
    }
    Ok(())
}

fn btc(a: Amount) -> Json {
    json!(a.to_btc())
}

/// Core's `GetDifficulty` from compact bits, computed the way Core does.
fn difficulty(bits: CompactTarget) -> f64 {
    let bits = bits.to_consensus();
    let mut shift = (bits >> 24) & 0xff;
    let mantissa = f64::from(bits & 0x00ff_ffff);
    if mantissa == 0.0 {
        return 0.0;
    }
    let mut d = f64::from(0xffffu32) / mantissa;
    while shift < 29 {
        d *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        d /= 256.0;
        shift -= 1;
    }
    d
}

/// Core's name for an output script's type (`scriptPubKey.type`).
fn script_type(s: &bitcoin::Script) -> &'static str {
    if s.is_p2pk() {
        "pubkey"
    } else if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2sh() {
        "scripthash"
    } else if s.is_multisig() {
        "multisig"
    } else if s.is_op_return() {
        "nulldata"
    } else if s.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if s.is_p2wsh() {
        "witness_v0_scripthash"
    } else if s.is_p2tr() {
        "witness_v1_taproot"
    } else if s.as_bytes() == [0x51, 0x02, 0x4e, 0x73] {
        "anchor"
    } else if s.is_witness_program() {
        "witness_unknown"
    } else {
        "nonstandard"
    }
}

/// A transaction decoded as Core's `TxToUniv` writes it (without `asm` and
/// `desc`, which the devnet has no use for).
fn tx_json(tx: &Transaction, fee: Option<Amount>) -> Json {
    let witness = |w: &Witness| -> Vec<Json> { w.iter().map(|e| json!(hex::encode(e))).collect() };
    let vin: Vec<Json> = tx
        .input
        .iter()
        .map(|i| {
            let mut v = if tx.is_coinbase() {
                json!({"coinbase": i.script_sig.to_hex_string()})
            } else {
                json!({
                    "txid": i.previous_output.txid.to_string(),
                    "vout": i.previous_output.vout,
                    "scriptSig": {"hex": i.script_sig.to_hex_string()},
                })
            };
            if !i.witness.is_empty() {
                v["txinwitness"] = json!(witness(&i.witness));
            }
            v["sequence"] = json!(i.sequence.0);
            v
        })
        .collect();
    let vout: Vec<Json> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            let mut spk = json!({
                "hex": o.script_pubkey.to_hex_string(),
                "type": script_type(&o.script_pubkey),
            });
            if let Ok(a) = bitcoin::Address::from_script(&o.script_pubkey, Network::Regtest) {
                spk["address"] = json!(a.to_string());
            }
            json!({"value": btc(o.value), "n": n, "scriptPubKey": spk})
        })
        .collect();
    let mut v = json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
    });
    if let Some(f) = fee {
        v["fee"] = btc(f);
    }
    v
}

/// A hash argument, refused with Core's -8 messages.
fn hash_param<T: std::str::FromStr>(v: &Json, name: &str) -> Result<T, Refusal> {
    let s = v.as_str().ok_or_else(|| {
        refuse(
            -3,
            format!(
                "JSON value of type {} is not of expected type string",
                json_type(v)
            ),
        )
    })?;
    if s.len() != 64 {
        return Err(refuse(
            -8,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    s.parse()
        .map_err(|_| refuse(-8, format!("{name} must be hexadecimal string (not '{s}')")))
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// A verbosity argument: absent is `default`, a bool is 0 or 1, a number
/// is itself.
fn verbosity(v: &Json, default: u64) -> Result<u64, Refusal> {
    match v {
        Json::Null => Ok(default),
        Json::Bool(b) => Ok(u64::from(*b)),
        Json::Number(n) => n
            .as_u64()
            .ok_or_else(|| refuse(-8, format!("Invalid verbosity value {n}"))),
        other => Err(refuse(
            -3,
            format!(
                "JSON value of type {} is not of expected type number",
                json_type(other)
            ),
        )),
    }
}

impl BitcoinState {
    /// The total work of a chain `height + 1` blocks long: every block
    /// here (genesis too) has regtest's fixed target, so each counts alike.
    fn chainwork(&self, height: u64) -> String {
        let one = CompactTarget::from_consensus(REGTEST_BITS);
        let one = bitcoin::Target::from_compact(one).to_work();
        let mut work = one;
        for _ in 0..height {
            work = work + one;
        }
        hex::encode(work.to_be_bytes())
    }

    /// The fee of a transaction confirmed at `height`, from the block's undo
    /// data and the block's own outputs.
    fn confirmed_fee(tx: &Transaction, undo: &[(OutPoint, Coin)]) -> Option<Amount> {
        if tx.is_coinbase() {
            return None;
        }
        let value_in = tx.input.iter().try_fold(Amount::ZERO, |a, i| {
            let c = undo.iter().find(|(o, _)| *o == i.previous_output)?;
            a.checked_add(c.1.txout.value)
        })?;
        let value_out = tx
            .output
            .iter()
            .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value))?;
        value_in.checked_sub(value_out)
    }

    /// `getblock` at verbosity 1 (txids) or 2 (decoded transactions).
    fn block_json(&self, found: &Found<'_>, verbosity: u64) -> Json {
        let (height, block) = (found.height, found.block);
        let h = &block.header;
        let txs: Vec<Json> = if verbosity >= 2 {
            block
                .txdata
                .iter()
                .map(|t| tx_json(t, Self::confirmed_fee(t, found.undo)))
                .collect()
        } else {
            block
                .txdata
                .iter()
                .map(|t| json!(t.compute_txid().to_string()))
                .collect()
        };
        let stripped = 80
            + bitcoin::VarInt::from(block.txdata.len()).size()
            + block.txdata.iter().map(|t| t.base_size()).sum::<usize>();
        let mut v = json!({
            "hash": block.block_hash().to_string(),
            "confirmations": if found.active {
                json!(self.height() + 1 - height)
            } else {
                json!(-1)
            },
            "height": height,
            "version": h.version.to_consensus(),
            "versionHex": format!("{:08x}", h.version.to_consensus()),
            "merkleroot": h.merkle_root.to_string(),
            "time": h.time,
            "mediantime": self.median_time_past_of(block),
            "nonce": h.nonce,
            "bits": format!("{:08x}", h.bits.to_consensus()),
            "target": hex::encode(h.target().to_be_bytes()),
            "difficulty": difficulty(h.bits),
            "chainwork": self.chainwork(height),
            "nTx": block.txdata.len(),
            "strippedsize": stripped,
            "size": block.total_size(),
            "weight": block.weight().to_wu(),
            "tx": txs,
        });
        if height > 0 {
            v["previousblockhash"] = json!(h.prev_blockhash.to_string());
        }
        if let Some(next) = self.block_hash(height + 1).filter(|_| found.active) {
            v["nextblockhash"] = json!(next.to_string());
        }
        v
    }

    /// `getrawtransaction TXID [verbosity] [blockhash]`.
    fn getrawtransaction(&self, params: &[Json]) -> Result<Json, Refusal> {
        let p = |i: usize| params.get(i).cloned().unwrap_or(Json::Null);
        let txid: Txid = hash_param(&p(0), "parameter 1")?;
        let verbose = verbosity(&p(1), 0)?;
        if txid.to_raw_hash()
            == genesis_block(Network::Regtest)
                .header
                .merkle_root
                .to_raw_hash()
        {
            return Err(refuse(
                -5,
                "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
            ));
        }
        let in_block = match p(2) {
            Json::Null => None,
            v => {
                let hash: BlockHash = hash_param(&v, "parameter 3")?;
                Some(
                    self.find_any_block(&hash)
                        .ok_or_else(|| refuse(-5, "Block hash not found"))?,
                )
            }
        };
        // The transaction, and where it is confirmed: (block, undo, height
        // if on the best chain).
        type Where<'a> = Option<(&'a Block, &'a [(OutPoint, Coin)], Option<u64>)>;
        let (tx, place): (Transaction, Where<'_>) = match &in_block {
            Some(f) => {
                // A best-chain block's transactions are indexed; a stale
                // block is searched.
                let indexed = self
                    .tx_index
                    .get(&txid)
                    .filter(|(h, _)| f.active && *h == f.height)
                    .and_then(|(_, i)| f.block.txdata.get(*i));
                let tx = indexed
                    .or_else(|| f.block.txdata.iter().find(|t| t.compute_txid() == txid))
                    .cloned()
                    .ok_or_else(|| {
                        refuse(
                            -5,
                            "No such transaction found in the provided block. Use gettransaction for wallet transactions.",
                        )
                    })?;
                (tx, Some((f.block, f.undo, f.active.then_some(f.height))))
            }
            None => {
                let (tx, height) = self.locate(&txid).ok_or_else(|| {
                    refuse(
                        -5,
                        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                    )
                })?;
                let place = height.and_then(|h| {
                    let i = usize::try_from(h).ok()?;
                    Some((self.blocks.get(i)?, self.undo.get(i)?.as_slice(), Some(h)))
                });
                (tx, place)
            }
        };
        if verbose == 0 {
            return Ok(json!(serialize_hex(&tx)));
        }
        // Core gives the fee (verbosity 2) only where it has the block's
        // undo data: not for mempool transactions.
        let fee = match (verbose, place) {
            (2.., Some((_, undo, _))) => Self::confirmed_fee(&tx, undo),
            _ => None,
        };
        let mut v = tx_json(&tx, fee);
        if let Some(f) = &in_block {
            v["in_active_chain"] = json!(f.active);
        }
        if let Some((block, _, height)) = place {
            v["blockhash"] = json!(block.block_hash().to_string());
            match height {
                Some(h) => {
                    v["confirmations"] = json!(self.height() + 1 - h);
                    v["time"] = json!(block.header.time);
                    v["blocktime"] = json!(block.header.time);
                }
                // Off the best chain: Core says 0 and gives no time.
                None => v["confirmations"] = json!(0),
            }
        }
        Ok(v)
    }

    /// `gettxout TXID N [include_mempool=true]`, as Core answers it: `null`
    /// for an output spent or never created (with `include_mempool`, also
    /// one a mempool transaction spends; a mempool transaction's output is
    /// found with 0 confirmations), else the tip hash, confirmations, value
    /// in BTC, `scriptPubKey` (without `asm` and `desc`, as elsewhere here)
    /// and whether a coinbase created it.
    fn gettxout(&self, params: &[Json]) -> Result<Json, Refusal> {
        let p = |i: usize| params.get(i).cloned().unwrap_or(Json::Null);
        let txid: Txid = hash_param(&p(0), "txid")?;
        let n = match p(1) {
            Json::Number(n) => n
                .as_i64()
                .ok_or_else(|| refuse(-1, "JSON integer out of range"))?,
            v => {
                return Err(refuse(
                    -3,
                    format!(
                        "JSON value of type {} is not of expected type number",
                        json_type(&v)
                    ),
                ))
            }
        };
        // Core reads an int and casts it to the output index.
        let n = i32::try_from(n).map_err(|_| refuse(-1, "JSON integer out of range"))?;
        let outpoint = OutPoint::new(txid, n as u32);
        let include_mempool = match p(2) {
            Json::Null => true,
            Json::Bool(b) => b,
            v => {
                return Err(refuse(
                    -3,
                    format!(
                        "JSON value of type {} is not of expected type bool",
                        json_type(&v)
                    ),
                ))
            }
        };
        let found = match self.utxos.get(&outpoint) {
            Some(c) => {
                let spent_in_mempool = include_mempool
                    && self
                        .mempool
                        .iter()
                        .any(|p| p.tx.input.iter().any(|i| i.previous_output == outpoint));
                (!spent_in_mempool).then(|| {
                    (
                        c.txout.clone(),
                        self.height() + 1 - c.height.min(self.height()),
                        c.coinbase,
                    )
                })
            }
            None if include_mempool => self
                .pooled(&txid)
                .filter(|_| {
                    !self
                        .mempool
                        .iter()
                        .any(|p| p.tx.input.iter().any(|i| i.previous_output == outpoint))
                })
                .and_then(|t| t.output.get(usize::try_from(outpoint.vout).ok()?))
                .map(|o| (o.clone(), 0, false)),
            None => None,
        };
        let Some((txout, confirmations, coinbase)) = found else {
            return Ok(Json::Null);
        };
        let mut spk = json!({
            "hex": txout.script_pubkey.to_hex_string(),
            "type": script_type(&txout.script_pubkey),
        });
        if let Ok(a) = bitcoin::Address::from_script(&txout.script_pubkey, Network::Regtest) {
            spk["address"] = json!(a.to_string());
        }
        Ok(json!({
            "bestblock": self.tip_hash().to_string(),
            "confirmations": confirmations,
            "value": btc(txout.value),
            "scriptPubKey": spk,
            "coinbase": coinbase,
        }))
    }

    /// `getblockchaininfo`, with the fields Core gives that mean something
    /// here. The chain is in initial block download while its tip is more
    /// than a day old, as Core's default `-maxtipage` says.
    fn blockchain_info(&self) -> Json {
        let tip = self.blocks.last().map(|b| b.header);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let tip_time = tip.map(|h| h.time).unwrap_or(0);
        json!({
            "chain": "regtest",
            "blocks": self.height(),
            "headers": self.height(),
            "bestblockhash": self.tip_hash().to_string(),
            "bits": format!("{REGTEST_BITS:08x}"),
            "target": tip.map(|h| hex::encode(h.target().to_be_bytes())),
            "difficulty": difficulty(CompactTarget::from_consensus(REGTEST_BITS)),
            "time": tip_time,
            "mediantime": self.median_time_past(self.height()),
            "initialblockdownload": u64::from(tip_time) + 24 * 3600 < now,
            "chainwork": self.chainwork(self.height()),
            "pruned": false,
            "warnings": [],
        })
    }
}

/// Core's `sendrawtransaction` default `maxfeerate`: 0.10 BTC/kvB.
const DEFAULT_MAX_FEE_RATE_SAT_PER_KVB: u64 = 10_000_000;

fn rpc(state: &mut BitcoinState, method: &str, params: &[Json]) -> Result<Json, Refusal> {
    let p = |i: usize| params.get(i).cloned().unwrap_or(Json::Null);
    let bad = || refuse(-1, format!("{method}: bad parameters"));
    match method {
        "getblockcount" => Ok(json!(state.height())),
        "getbestblockhash" => Ok(json!(state.tip_hash().to_string())),
        // The emulator finds every transaction by txid, as Core with -txindex.
        "getindexinfo" => Ok(json!({
            "txindex": {"synced": true, "best_block_height": state.height()}
        })),
        "getblockhash" => {
            let h = p(0).as_i64().ok_or_else(bad)?;
            u64::try_from(h)
                .ok()
                .and_then(|h| state.block_hash(h))
                .map(|b| json!(b.to_string()))
                .ok_or_else(|| refuse(-8, "Block height out of range"))
        }
        "getblock" => {
            let hash: BlockHash = hash_param(&p(0), "blockhash")?;
            let verbose = verbosity(&p(1), 1)?;
            let found = state
                .find_any_block(&hash)
                .ok_or_else(|| refuse(-5, "Block not found"))?;
            Ok(match verbose {
                0 => json!(serialize_hex(found.block)),
                v => state.block_json(&found, v),
            })
        }
        "getrawtransaction" => state.getrawtransaction(params),
        "gettxout" => state.gettxout(params),
        "sendrawtransaction" => {
            let tx: Transaction = p(0)
                .as_str()
                .and_then(|s| deserialize_hex(s).ok())
                .ok_or_else(|| {
                    refuse(
                        -22,
                        "TX decode failed. Make sure the tx has at least one input.",
                    )
                })?;
            let max_burn = match p(2) {
                Json::Null => Amount::ZERO,
                v => v
                    .as_f64()
                    .and_then(|b| Amount::from_btc(b).ok())
                    .ok_or_else(bad)?,
            };
            let unspendable =
                |o: &TxOut| o.script_pubkey.is_op_return() || o.script_pubkey.len() > 10_000;
            if tx
                .output
                .iter()
                .any(|o| unspendable(o) && o.value > max_burn)
            {
                return Err(refuse(
                    -25,
                    "Unspendable output exceeds maximum configured by user (maxburnamount)",
                ));
            }
            let max_per_kvb = match p(1) {
                Json::Null => DEFAULT_MAX_FEE_RATE_SAT_PER_KVB,
                v => {
                    let rate = v.as_f64().ok_or_else(bad)?;
                    Amount::from_btc(rate).map_err(|_| bad())?.to_sat()
                }
            };
            state
                .send_capped(tx, |fee, vsize| {
                    if max_per_kvb > 0 && fee.to_sat() > max_per_kvb.saturating_mul(vsize) / 1000 {
                        return Err(refuse(
                            -25,
                            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
                        ));
                    }
                    Ok(())
                })
                .map(|t| json!(t.to_string()))
        }
        "testmempoolaccept" => {
            let hex = p(0)
                .as_array()
                .and_then(|a| a.first().cloned())
                .and_then(|h| h.as_str().map(str::to_owned))
                .ok_or_else(bad)?;
            let tx: Transaction = deserialize_hex(&hex).map_err(|_| {
                refuse(
                    -22,
                    "TX decode failed: Make sure the tx has at least one input.",
                )
            })?;
            let ids = json!({"txid": tx.compute_txid().to_string(), "wtxid": tx.compute_wtxid().to_string()});
            let mut v = ids;
            match state.check(&tx) {
                Ok(fee) => {
                    v["allowed"] = json!(true);
                    v["vsize"] = json!(tx.vsize());
                    v["fees"] = json!({"base": btc(fee)});
                }
                Err(r) => {
                    v["allowed"] = json!(false);
                    v["reject-reason"] = json!(r.message);
                }
            }
            Ok(json!([v]))
        }
        "estimatesmartfee" => Ok(json!({"feerate": 0.00002, "blocks": 2})),
        "scantxoutset" => {
            let desc = p(1)
                .as_array()
                .and_then(|a| a.first().cloned())
                .and_then(|d| d.as_str().map(str::to_owned))
                .ok_or_else(bad)?;
            let hex = desc
                .strip_prefix("raw(")
                .and_then(|d| d.strip_suffix(')'))
                .ok_or_else(|| refuse(-8, "only raw() descriptors"))?;
            let script = ScriptBuf::from_hex(hex).map_err(|_| bad())?;
            let unspents: Vec<Json> = state
                .unspent(&script)
                .into_iter()
                .map(|(o, out, h)| json!({"txid": o.txid.to_string(), "vout": o.vout, "scriptPubKey": hex, "amount": btc(out.value), "height": h}))
                .collect();
            Ok(json!({"success": true, "height": state.height(), "unspents": unspents}))
        }
        "getblockchaininfo" => Ok(state.blockchain_info()),
        "generatetoaddress" => {
            let n = p(0).as_u64().filter(|n| *n <= 1000).ok_or_else(bad)?;
            let address = p(1)
                .as_str()
                .and_then(|a| a.parse::<bitcoin::Address<_>>().ok())
                .and_then(|a| a.require_network(Network::Regtest).ok())
                .ok_or_else(|| refuse(-5, "Error: Invalid address"))?;
            let to = address.script_pubkey();
            Ok(json!((0..n)
                .map(|_| state.mine(&to).to_string())
                .collect::<Vec<_>>()))
        }
        _ => Err(refuse(-32601, "Method not found")),
    }
}

fn handle(mut req: Request, state: &Mutex<BitcoinState>) {
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(req.as_reader(), 8 << 20),
        &mut body,
    );
    let call: Option<Json> = serde_json::from_str(&body).ok();
    let (status, reply) = match call {
        Some(c) => {
            let id = c.get("id").cloned().unwrap_or(Json::Null);
            let method = c.get("method").and_then(|m| m.as_str()).unwrap_or("");
            let params = c
                .get("params")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            match rpc(&mut lock(state), method, &params) {
                Ok(r) => (200, json!({"result": r, "error": null, "id": id})),
                Err(e) => (
                    500,
                    json!({"result": null, "error": {"code": e.code, "message": e.message}, "id": id}),
                ),
            }
        }
        None => (
            500,
            json!({"result": null, "error": {"code": -32700, "message": "Parse error"}, "id": null}),
        ),
    };
    let h = HttpHeader::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("ASCII header");
    let _ = req.respond(
        Response::from_string(reply.to_string())
            .with_status_code(status)
            .with_header(h),
    );
}

/// The bitcoind emulator's JSON-RPC server.
pub type BitcoinEmulator = Emulator<BitcoinState>;

impl BitcoinEmulator {
    /// Serves `state` on `addr` (port 0 for a free one).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn start(addr: &str, state: BitcoinState) -> std::io::Result<Self> {
        Emulator::serve("bitcoind-emu", addr, state, handle)
    }
}
