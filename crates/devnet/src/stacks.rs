//! A stacks-node emulator: the RPC endpoints the coordinator uses, with the
//! node's shapes and checks, answering as a released stacks-node (4.0.2)
//! does: the same status, content type and reason for the same request
//! (`tests/real_stacks_node.rs` compares them). Two deliberate exceptions,
//! each an explicit mode: `/v2/burn_ops` is served only with
//! [`BurnOpsMode::Node2023`] (like the 2023 sBTC alpha nodes; by default it
//! is a 404 like any unknown path), and the test hooks (mining on demand via
//! [`StacksState::mine`], pausing and faults via the server) that the real
//! node, mining on its own timer, does not have.
//!
//! Admission follows the real node's order: decoding (a malformed body is a
//! plain-text 400), version, chain id and signature, the fee (at least
//! [`MIN_FEE_PER_BYTE`] per byte, checked before the nonce), the nonce, the
//! confirmed balance, the payload, the chaining limit (at most
//! [`MAX_CHAINED_NONCES`] nonces beyond the confirmed one), then the
//! same-nonce replacement by a higher fee. Transactions are decoded with `stacks-wire`;
//! signature, chain, nonce, fee and balance are checked as the node checks
//! them, contract calls are type-checked against the sBTC contract and run on
//! [`SbtcModel`] when mined (`mint-many!` / `burn-many!` element by
//! element, post conditions judged on what the whole call moved), and post
//! conditions are enforced. A mined block holds at most [`MAX_BLOCK_LEN`]
//! bytes, as the real miner's blocks do; the rest waits for the next.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::server::{lock, Emulator};
use log::debug;
use peg_ops::{PegInOp, PegOutRequestOp};
use serde_json::json;
use stacks_wire::transaction::{sha512_256, CHAIN_ID_TESTNET};
use stacks_wire::{
    ContractId, FungibleConditionCode, Payload, PostCondition, PostConditionMode,
    PostConditionPrincipal, PrincipalData, StacksAddress, StacksNetwork, StacksTransaction, Value,
};
use tiny_http::{Header, Method, Request, Response};

use crate::model::{ArgError, SbtcModel};

/// The real node's minimum fee rate: 1 µSTX per byte of the transaction.
pub const MIN_FEE_PER_BYTE: u64 = 1;

/// How far beyond the confirmed nonce the real node admits a nonce (measured
/// on stacks-node 4.0.2: confirmed + 26 is admitted, + 27 is
/// `TooMuchChaining` with `expected` = confirmed + 26).
pub const MAX_CHAINED_NONCES: u64 = 26;

/// The most bytes a Stacks block holds (stacks-core's `MAX_BLOCK_LEN`,
/// 2 MiB). Measured on stacks-node 4.0.2 (mocknet): 100 pending
/// 200-element `mint-many!` calls of 27,368 bytes each; the miner put 76
/// of them in one block of 2,080,363 bytes ("Miner stopping due to limit
/// reached"; execution cost far below its limits) and the rest in the next.
pub const MAX_BLOCK_LEN: usize = 2 * 1024 * 1024;

/// What a block holds besides the transactions it mines from the mempool:
/// its header and coinbase (a real block with only its coinbase is 395
/// bytes).
pub const BLOCK_OVERHEAD: usize = 395;

/// What `/v2/burn_ops` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BurnOpsMode {
    /// Like every released stacks-node: no such endpoint (404 text/plain,
    /// as for any unknown path).
    #[default]
    Absent,
    /// Like the 2023 sBTC alpha nodes: ops per processed height, 404
    /// text/plain for a height not processed yet.
    Node2023,
}

/// The body of the real node's 404 for a path it does not serve.
pub const NOT_FOUND_TEXT: &str = "No such file or directory";

/// How many blocks below the tip keep their state for `?tip=` reads and
/// [`StacksState::drop_blocks`]: the tip and the 64 blocks below it (far
/// more than any `confirmations.stacks` a test uses; each kept state is a
/// copy of the model and accounts, shared while nothing changes). Deeper
/// reads answer the unknown-tip 404.
pub const STATE_DEPTH: u64 = 64;

/// The most headers `/v2/headers/{n}` serves (stacks-node 4.0.2's limit).
pub const MAX_HEADERS: u64 = 2100;

/// The boot block's index block hash: SHA512/256 of 32 zero bytes (its
/// block hash) and 20 zero bytes (its consensus hash). The parent of block 1
/// on stacks-node 4.0.2 (mocknet).
pub fn boot_block_id() -> [u8; 32] {
    sha512_256(&[0u8; 52])
}

/// The contract and account state as of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// The sBTC contract's state.
    pub model: SbtcModel,
    /// Account balances (µSTX) and nonces.
    pub accounts: BTreeMap<StacksAddress, (u128, u64)>,
}

/// An emulated Stacks block.
#[derive(Debug, Clone)]
pub struct StacksBlock {
    /// Its height (the boot block is 0).
    pub height: u64,
    /// Its index block hash (`StacksBlockId`), what `?tip=` names.
    pub id: [u8; 32],
    /// Its parent's index block hash.
    pub parent: [u8; 32],
    /// SHA512/256 of its header.
    pub block_hash: [u8; 32],
    /// Its consensus hash.
    pub consensus_hash: [u8; 20],
    /// Its SIP-003 serialized Stacks 2.x header (empty for the boot block).
    pub header: Vec<u8>,
    /// The state after it, once sealed (the tip's state is the live one);
    /// `None` for the boot block and beyond [`STATE_DEPTH`].
    state: Option<Arc<ChainState>>,
}

/// What [`StacksState::drop_blocks`] does with the transactions of the
/// dropped blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphaned {
    /// Back into the mempool, ahead of what is pending, to be mined again on
    /// the new branch: what a real node does (its mempool keeps them).
    ToMempool,
    /// Gone: the fork of a miner that never saw them. Their senders' nonces
    /// are back where they were before them, so a later transaction of the
    /// same sender waits for the gap to be filled.
    Discard,
}

/// Why [`StacksState::drop_blocks`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    /// The new tip would be the boot block (the sBTC contract is not there).
    #[error("cannot drop {0} blocks: the chain has only {1} above the boot block")]
    TooDeep(u64, u64),
    /// The new tip's state is no longer kept.
    #[error("cannot drop {0} blocks: states are kept for {STATE_DEPTH} blocks below the tip")]
    StateGone(u64),
}

/// A mined transaction's outcome.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The transaction.
    pub tx: StacksTransaction,
    /// The result (`(ok …)`/`(err …)`), or why it aborted.
    pub result: Result<Value, String>,
    /// The Stacks block height it was mined in.
    pub height: u64,
}

/// The emulated chain state.
#[derive(Debug)]
pub struct StacksState {
    /// Account balances (µSTX) and nonces.
    pub accounts: BTreeMap<StacksAddress, (u128, u64)>,
    /// The sBTC contract.
    pub contract_id: ContractId,
    /// Its state.
    pub model: SbtcModel,
    /// Transactions waiting to be mined, in arrival order.
    pub mempool: Vec<StacksTransaction>,
    /// Their txids, for duplicate checks without re-hashing.
    mempool_txids: std::collections::HashSet<stacks_wire::StacksTxid>,
    /// Every mined transaction.
    pub receipts: Vec<Receipt>,
    /// The canonical tip's height. Kept in step with the chain by
    /// [`StacksState::mine`] and [`StacksState::drop_blocks`]: read it, do
    /// not set it.
    pub height: u64,
    /// The Bitcoin height the node has processed.
    pub burn_height: u64,
    /// Peg ops per Bitcoin height, as `/v2/burn_ops` reports them.
    pub burn_ops: BTreeMap<u64, (Vec<PegInOp>, Vec<PegOutRequestOp>)>,
    /// The Bitcoin block hash of every height in `burn_ops`.
    pub burn_hashes: BTreeMap<u64, bitcoin::BlockHash>,
    /// The lowest fee rate admitted, µSTX per byte ([`MIN_FEE_PER_BYTE`]).
    pub min_fee_per_byte: u64,
    /// Whether `/v2/burn_ops` is served.
    pub burn_ops_mode: BurnOpsMode,
    /// Txids of mined transactions: a rebroadcast answers 200 with the txid.
    mined_txids: std::collections::HashSet<stacks_wire::StacksTxid>,
    /// Fee rates (µSTX per byte) of mined transactions per payload kind,
    /// for fee estimates (a node heuristic: not undone by forks).
    mined_fee_rates: std::collections::HashMap<String, Vec<u64>>,
    /// Every block ever mined, forked-away ones included, by index block hash.
    blocks: HashMap<[u8; 32], StacksBlock>,
    /// The canonical chain's block ids by height (0: the boot block).
    canonical: Vec<[u8; 32]>,
    /// How many forks there were: part of every header, so a block mined
    /// on a new branch never has a dropped block's id.
    forks: u64,
    /// Forked-away blocks whose state is still kept.
    orphans: Vec<[u8; 32]>,
}

/// What a fee estimate is kept per: the contract function, or the payload
/// type.
fn payload_kind(p: &Payload) -> String {
    match p {
        Payload::ContractCall {
            contract,
            function_name,
            ..
        } => format!("{contract}::{function_name}"),
        Payload::TokenTransfer { .. } => "token-transfer".into(),
        Payload::SmartContract { .. } => "smart-contract".into(),
    }
}

impl StacksState {
    /// A testnet chain with `contract_id` deployed by its address.
    pub fn new(contract_id: ContractId) -> Self {
        let owner = PrincipalData::Standard(contract_id.address);
        let mut s = StacksState {
            accounts: BTreeMap::new(),
            model: SbtcModel::new(owner),
            contract_id,
            mempool: Vec::new(),
            mempool_txids: std::collections::HashSet::new(),
            receipts: Vec::new(),
            height: 1,
            burn_height: 0,
            burn_ops: BTreeMap::new(),
            burn_hashes: BTreeMap::new(),
            min_fee_per_byte: MIN_FEE_PER_BYTE,
            burn_ops_mode: BurnOpsMode::Absent,
            mined_txids: std::collections::HashSet::new(),
            mined_fee_rates: std::collections::HashMap::new(),
            blocks: HashMap::new(),
            canonical: Vec::new(),
            forks: 0,
            orphans: Vec::new(),
        };
        let boot = StacksBlock {
            height: 0,
            id: boot_block_id(),
            parent: [0; 32],
            block_hash: [0; 32],
            consensus_hash: [0; 20],
            header: Vec::new(),
            state: None,
        };
        s.canonical.push(boot.id);
        s.blocks.insert(boot.id, boot);
        // Block 1, the tip a fresh emulator starts at.
        s.push_block(&[]);
        s
    }

    /// Credits `ustx` to `who`.
    pub fn fund(&mut self, who: StacksAddress, ustx: u128) {
        self.accounts.entry(who).or_insert((0, 0)).0 += ustx;
    }

    fn account(&self, who: &StacksAddress) -> (u128, u64) {
        self.accounts.get(who).copied().unwrap_or((0, 0))
    }

    /// The canonical tip.
    pub fn tip(&self) -> &StacksBlock {
        self.canonical
            .last()
            .and_then(|id| self.blocks.get(id))
            .expect("the chain always holds the boot block")
    }

    /// A block by index block hash, canonical or forked away.
    pub fn block(&self, id: &[u8; 32]) -> Option<&StacksBlock> {
        self.blocks.get(id)
    }

    /// The index block hash of the canonical block `depth` below the tip
    /// (0: the tip), or `None` when the chain is not that long. The same
    /// block [`stacks_node_client::StacksNode::block_at_depth`] finds.
    pub fn block_at_depth(&self, depth: u64) -> Option<[u8; 32]> {
        let i = (self.canonical.len() as u64).checked_sub(depth.checked_add(1)?)?;
        self.canonical.get(usize::try_from(i).ok()?).copied()
    }

    /// Whether `id` is on the canonical chain.
    pub fn is_canonical(&self, id: &[u8; 32]) -> bool {
        self.blocks
            .get(id)
            .and_then(|b| self.canonical.get(usize::try_from(b.height).ok()?))
            == Some(id)
    }

    /// Appends a block with these transactions on the canonical tip and
    /// makes it the tip.
    /// Its header: version 0, total work (burn height, height), an 80-byte
    /// proof standing in for the VRF proof (derived from the height and the
    /// fork count), the parent's block hash, no microblocks, the merkle root
    /// of the txids, a state root, a zero microblock key hash.
    fn push_block(&mut self, txids: &[stacks_wire::StacksTxid]) {
        let (parent_id, parent_hash, height) = {
            let t = self.tip();
            (t.id, t.block_hash, t.height + 1)
        };
        let salt = [
            b"sbtc-devnet".as_slice(),
            &height.to_be_bytes(),
            &self.forks.to_be_bytes(),
        ]
        .concat();
        let proof_a = sha512_256(&[salt.as_slice(), b"proof-a"].concat());
        let proof_b = sha512_256(&[salt.as_slice(), b"proof-b"].concat());
        let proof_c = sha512_256(&[salt.as_slice(), b"proof-c"].concat());
        let txids: Vec<u8> = txids.iter().flat_map(|t| t.0).collect();
        let mut header = Vec::with_capacity(247);
        header.push(0);
        header.extend_from_slice(&self.burn_height.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&proof_a);
        header.extend_from_slice(&proof_b);
        header.extend_from_slice(&proof_c[..16]);
        header.extend_from_slice(&parent_hash);
        header.extend_from_slice(&[0; 32 + 2]);
        header.extend_from_slice(&sha512_256(&txids));
        header.extend_from_slice(&sha512_256(&[salt.as_slice(), b"state"].concat()));
        header.extend_from_slice(&[0; 20]);
        debug_assert_eq!(header.len(), 247);
        let block_hash = sha512_256(&header);
        let mut consensus_hash = [0u8; 20];
        consensus_hash
            .copy_from_slice(&sha512_256(&[salt.as_slice(), b"consensus"].concat())[..20]);
        let id = sha512_256(&[block_hash.as_slice(), &consensus_hash].concat());
        let block = StacksBlock {
            height,
            id,
            parent: parent_id,
            block_hash,
            consensus_hash,
            header,
            state: None,
        };
        self.blocks.insert(id, block);
        self.canonical.push(id);
        self.height = height;
    }

    /// Seals the tip's state: the live state (test hooks included) becomes
    /// its snapshot, shared with its parent's when nothing changed.
    fn seal_tip(&mut self) {
        let live = ChainState {
            model: self.model.clone(),
            accounts: self.accounts.clone(),
        };
        let tip = self.tip();
        if tip.height == 0 {
            return;
        }
        let parent_state = self.blocks.get(&tip.parent).and_then(|p| p.state.clone());
        let state = match parent_state {
            Some(p) if *p == live => p,
            _ => Arc::new(live),
        };
        let id = tip.id;
        if let Some(b) = self.blocks.get_mut(&id) {
            b.state = Some(state);
        }
    }

    /// Forgets the states of blocks (canonical or not) more than
    /// [`STATE_DEPTH`] below the tip: one canonical block leaves the window
    /// per block mined; forked-away blocks are few and listed apart.
    fn evict_states(&mut self) {
        let Some(floor) = self.height.checked_sub(STATE_DEPTH) else {
            return;
        };
        let leaving = floor
            .checked_sub(1)
            .and_then(|h| usize::try_from(h).ok())
            .and_then(|h| self.canonical.get(h).copied());
        let mut gone: Vec<[u8; 32]> = leaving.into_iter().collect();
        let blocks = &self.blocks;
        self.orphans.retain(|id| match blocks.get(id) {
            Some(b) if b.height >= floor => true,
            _ => {
                gone.push(*id);
                false
            }
        });
        for id in gone {
            if let Some(b) = self.blocks.get_mut(&id) {
                b.state = None;
            }
        }
    }

    /// The state to answer a read at `id` from: `Ok(None)` for the live
    /// state (the canonical tip), `Err(())` for a block whose state is not
    /// here (unknown, or beyond [`STATE_DEPTH`]).
    fn state_at(&self, id: &[u8; 32]) -> Result<Option<Arc<ChainState>>, ()> {
        if *id == self.tip().id {
            return Ok(None);
        }
        match self.blocks.get(id) {
            Some(b) => b.state.clone().map(Some).ok_or(()),
            None => Err(()),
        }
    }

    /// Forks the chain: the last `n` canonical blocks are dropped, their
    /// effects undone (contract state, balances and nonces as of the new
    /// tip; their receipts removed; their txids no longer known as mined),
    /// and the next [`StacksState::mine`] builds on the new tip with a new
    /// block id. The dropped blocks stay known (a read at them still
    /// answers, at them). Returns their transactions, in the order they
    /// were mined; `orphaned` says whether they are also back in the mempool.
    ///
    /// # Errors
    /// When the new tip would be the boot block, or its state is beyond
    /// [`STATE_DEPTH`]. Nothing changes then.
    pub fn drop_blocks(
        &mut self,
        n: u64,
        orphaned: Orphaned,
    ) -> Result<Vec<StacksTransaction>, ForkError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n >= self.height {
            return Err(ForkError::TooDeep(n, self.height));
        }
        if n > STATE_DEPTH {
            return Err(ForkError::StateGone(n));
        }
        let new_tip = self.canonical[self.canonical.len() - 1 - n as usize];
        let Some(state) = self.blocks.get(&new_tip).and_then(|b| b.state.clone()) else {
            return Err(ForkError::StateGone(n));
        };
        // The old tip's state, so reads at it still answer.
        self.seal_tip();
        let dropped = self.canonical.split_off(self.canonical.len() - n as usize);
        self.orphans.extend(dropped);
        self.height = self.tip().height;
        self.model = state.model.clone();
        self.accounts = state.accounts.clone();
        // Receipts are in mining order: the dropped blocks' are the tail.
        let height = self.height;
        let keep = self.receipts.partition_point(|r| r.height <= height);
        let txs: Vec<StacksTransaction> = self.receipts.drain(keep..).map(|r| r.tx).collect();
        for tx in &txs {
            self.mined_txids.remove(&tx.txid());
        }
        if orphaned == Orphaned::ToMempool {
            for tx in &txs {
                self.mempool_txids.insert(tx.txid());
            }
            let pending = std::mem::take(&mut self.mempool);
            self.mempool = txs.iter().cloned().chain(pending).collect();
        }
        self.forks += 1;
        debug!(
            "fork: dropped {n} blocks ({} transactions, {orphaned:?}); tip {} at height {}",
            txs.len(),
            hex::encode(new_tip),
            self.height
        );
        Ok(txs)
    }

    /// Admits a transaction to the mempool, or says why the node refuses it
    /// (`reason`, `reason_data`), in the real node's order and shapes.
    /// Undecodable bytes are `Deserialization` here; over HTTP they are a
    /// plain-text 400, as on the real node.
    pub fn admit(&mut self, bytes: &[u8]) -> Result<String, (String, serde_json::Value)> {
        let reject = |r: &str, d: serde_json::Value| Err((r.to_owned(), d));
        let tx = match StacksTransaction::deserialize(bytes) {
            Ok(t) => t,
            Err(e) => return reject("Deserialization", json!({ "message": e.to_string() })),
        };
        let txid = tx.txid();
        // Already known (pending or mined): the same txid, as the node does.
        if self.mempool_txids.contains(&txid) || self.mined_txids.contains(&txid) {
            return Ok(txid.to_string());
        }
        if tx.network != StacksNetwork::Testnet {
            return reject("BadTransactionVersion", serde_json::Value::Null);
        }
        if tx.chain_id != CHAIN_ID_TESTNET {
            return reject(
                "SignatureValidation",
                json!({ "message": format!("Invalid tx {txid}: invalid chain ID {} (expected {CHAIN_ID_TESTNET})", tx.chain_id) }),
            );
        }
        if let Err(e) = tx.verify() {
            return reject("SignatureValidation", json!({ "message": e.to_string() }));
        }
        // The real node (mocknet) stays in epoch 2.1: Clarity 1 and 2 only,
        // and it reports a newer version as a validation failure.
        if let Payload::SmartContract {
            clarity_version: Some(v @ stacks_wire::ClarityVersion::Clarity3),
            ..
        } = &tx.payload
        {
            return reject(
                "SignatureValidation",
                json!({ "message": format!("Invalid transaction {txid}: asks for Clarity {}, but current epoch 2.1 only supports up to Clarity 2", v.to_byte()) }),
            );
        }
        let origin = tx.origin();
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let min_fee = len.saturating_mul(self.min_fee_per_byte);
        if tx.auth.fee < min_fee {
            return reject(
                "FeeTooLow",
                json!({ "expected": min_fee, "actual": tx.auth.fee }),
            );
        }
        let (balance, nonce) = self.account(&origin);
        if tx.auth.nonce < nonce {
            return reject(
                "BadNonce",
                json!({ "expected": nonce, "actual": tx.auth.nonce, "principal": origin.to_string(), "is_origin": true }),
            );
        }
        // Against the confirmed balance, as the node does (mempool not counted).
        let needed = u128::from(tx.auth.fee)
            + match &tx.payload {
                Payload::TokenTransfer { amount, .. } => u128::from(*amount),
                _ => 0,
            };
        if balance < needed {
            return reject(
                "NotEnoughFunds",
                json!({ "expected": format!("0x{needed:032x}"), "actual": format!("0x{balance:032x}") }),
            );
        }
        match &tx.payload {
            Payload::ContractCall {
                contract,
                function_name,
                args,
            } => {
                if *contract != self.contract_id {
                    return reject("NoSuchContract", serde_json::Value::Null);
                }
                match SbtcModel::check_args(function_name, args) {
                    Ok(()) => {}
                    Err(ArgError::NoSuchFunction(_)) => {
                        return reject("NoSuchPublicFunction", serde_json::Value::Null)
                    }
                    Err(ArgError::BadArgument(m)) => {
                        return reject("BadFunctionArgument", json!({ "message": m }))
                    }
                }
            }
            Payload::SmartContract { name, .. } => {
                if *name == self.contract_id.name && origin == self.contract_id.address {
                    return reject(
                        "ContractAlreadyExists",
                        json!({ "contract_identifier": self.contract_id.to_string() }),
                    );
                }
            }
            Payload::TokenTransfer { .. } => {}
        }
        let max_nonce = nonce.saturating_add(MAX_CHAINED_NONCES);
        if tx.auth.nonce > max_nonce {
            return reject(
                "TooMuchChaining",
                json!({ "expected": max_nonce, "actual": tx.auth.nonce, "principal": origin.to_string(), "is_origin": true, "message": "Nonce would exceed chaining limit in mempool" }),
            );
        }
        // Same sender and nonce: a higher fee replaces the pending one.
        if let Some(i) = self
            .mempool
            .iter()
            .position(|t| t.origin() == origin && t.auth.nonce == tx.auth.nonce)
        {
            if tx.auth.fee <= self.mempool[i].auth.fee {
                return reject("ConflictingNonceInMempool", serde_json::Value::Null);
            }
            let old = self.mempool.remove(i);
            debug!(
                "{txid} replaces {} (fee {} -> {})",
                old.txid(),
                old.auth.fee,
                tx.auth.fee
            );
            self.mempool_txids.remove(&old.txid());
        }
        self.mempool_txids.insert(txid);
        self.mempool.push(tx);
        Ok(txid.to_string())
    }

    /// The fee estimate for a payload: `None` (the node's
    /// `NoEstimateAvailable`) until a transaction of the same kind (the same
    /// contract function, or payload type) was mined; then the mined fee
    /// rates' median, low/middle/high as rate ×½, ×1, ×2, never below the
    /// minimum.
    pub fn estimate(&self, payload: &Payload, estimated_len: u64) -> Option<[u64; 3]> {
        let rates = self.mined_fee_rates.get(&payload_kind(payload))?;
        let mut sorted = rates.clone();
        sorted.sort_unstable();
        let median = *sorted.get(sorted.len() / 2)?;
        let floor = estimated_len.saturating_mul(self.min_fee_per_byte);
        let fee = |r: u64| r.saturating_mul(estimated_len).max(floor);
        Some([fee(median / 2), fee(median), fee(median.saturating_mul(2))])
    }

    /// Mines a block: every mempool transaction whose nonce is next for its
    /// sender, in nonce order, until the next one would not fit the
    /// [`MAX_BLOCK_LEN`] bytes (the real miner stops there too; the rest
    /// waits for the next block). Fees and nonces are taken even when the
    /// call fails, as on the real chain.
    pub fn mine(&mut self) -> usize {
        self.seal_tip();
        // The block being built: receipts carry its height.
        let building = self.height + 1;
        let mut txids = Vec::new();
        let mut mined = 0;
        let mut block_len = BLOCK_OVERHEAD;
        loop {
            let next = self
                .mempool
                .iter()
                .position(|t| self.account(&t.origin()).1 == t.auth.nonce);
            let Some(i) = next else { break };
            let tx_len = self.mempool[i].serialize().len();
            if block_len + tx_len > MAX_BLOCK_LEN {
                debug!("stacks block {building}: full at {block_len} bytes");
                break;
            }
            block_len += tx_len;
            let tx = self.mempool.remove(i);
            let origin = tx.origin();
            self.mempool_txids.remove(&tx.txid());
            let (balance, nonce) = self.account(&origin);
            let fee = u128::from(tx.auth.fee);
            if balance < fee {
                continue;
            }
            self.accounts.insert(origin, (balance - fee, nonce + 1));
            self.mined_txids.insert(tx.txid());
            let len = tx.serialize().len().max(1) as u64;
            self.mined_fee_rates
                .entry(payload_kind(&tx.payload))
                .or_default()
                .push(tx.auth.fee / len);
            let result = self.apply(&tx);
            debug!("stacks block {building}: {} -> {:?}", tx.txid(), result);
            txids.push(tx.txid());
            self.receipts.push(Receipt {
                tx,
                result,
                height: building,
            });
            mined += 1;
        }
        self.push_block(&txids);
        self.evict_states();
        mined
    }

    fn apply(&mut self, tx: &StacksTransaction) -> Result<Value, String> {
        let sender = PrincipalData::Standard(tx.origin());
        match &tx.payload {
            Payload::TokenTransfer {
                recipient, amount, ..
            } => {
                let (b, n) = self.account(&tx.origin());
                let amount = u128::from(*amount);
                if b < amount {
                    return Err("not enough STX".into());
                }
                self.accounts.insert(tx.origin(), (b - amount, n));
                self.fund(*recipient.address(), amount);
                Ok(Value::Ok(Box::new(Value::Bool(true))))
            }
            // The emulator runs only the sBTC model: other contracts are
            // recorded as deployed, never executed.
            Payload::SmartContract { .. } => Ok(Value::Ok(Box::new(Value::Bool(true)))),
            Payload::ContractCall {
                function_name,
                args,
                ..
            } => {
                let before = self.model.clone();
                let r = self.model.call(&sender, function_name, args);
                // An (err …) result rolls everything back; nothing moved, so
                // there is nothing for post conditions to judge.
                if matches!(r.result, Value::Err(_)) {
                    self.model = before;
                    return Ok(r.result);
                }
                if let Err(e) = check_post_conditions(tx, &sender, &r.sent, &self.contract_id) {
                    self.model = before;
                    return Err(e);
                }
                Ok(r.result)
            }
        }
    }
}

/// Checks fungible-token post conditions on the sBTC movements of a call.
fn check_post_conditions(
    tx: &StacksTransaction,
    sender: &PrincipalData,
    sent: &std::collections::HashMap<PrincipalData, u128>,
    contract: &ContractId,
) -> Result<(), String> {
    let mut covered = std::collections::HashSet::new();
    for pc in &tx.post_conditions {
        if let PostCondition::Fungible {
            principal,
            asset,
            code,
            amount,
        } = pc
        {
            if asset.contract != *contract || asset.asset_name != peg_ops::contract::SBTC_ASSET_NAME
            {
                continue;
            }
            let who = match principal {
                PostConditionPrincipal::Origin => sender.clone(),
                PostConditionPrincipal::Standard(a) => PrincipalData::Standard(*a),
                PostConditionPrincipal::Contract(c) => PrincipalData::Contract(c.clone()),
            };
            let actual = sent.get(&who).copied().unwrap_or(0);
            let want = u128::from(*amount);
            let holds = match code {
                FungibleConditionCode::SentEq => actual == want,
                FungibleConditionCode::SentGt => actual > want,
                FungibleConditionCode::SentGe => actual >= want,
                FungibleConditionCode::SentLt => actual < want,
                FungibleConditionCode::SentLe => actual <= want,
            };
            if !holds {
                return Err(format!(
                    "post condition failed: {who} sent {actual}, condition {code:?} {want}"
                ));
            }
            covered.insert(who);
        }
    }
    if tx.post_condition_mode == PostConditionMode::Deny {
        if let Some((who, n)) = sent.iter().find(|(w, n)| **n > 0 && !covered.contains(*w)) {
            return Err(format!(
                "post condition (deny mode): {who} sent {n} sBTC with no condition covering it"
            ));
        }
    }
    Ok(())
}

/// The stacks-node emulator's HTTP server.
pub type StacksEmulator = Emulator<StacksState>;

impl StacksEmulator {
    /// Serves `state` on `addr` (port 0 for a free one).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn start(addr: &str, state: StacksState) -> std::io::Result<Self> {
        Emulator::serve("stacks-emu", addr, state, handle)
    }
}

fn respond(req: Request, status: u16, ctype: &str, body: String) {
    let h = Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()).expect("ASCII header");
    let _ = req.respond(
        Response::from_string(body)
            .with_status_code(status)
            .with_header(h),
    );
}

fn json_reply(req: Request, status: u16, v: serde_json::Value) {
    respond(req, status, "application/json", v.to_string());
}

/// The read-only functions of the sBTC contract (call-read of anything
/// else is `RuntimeCheck(UndefinedFunction(…))`).
const READ_ONLY: &[&str] = &[
    "was-minted",
    "was-burned",
    "get-mint",
    "get-burn",
    "get-bitcoin-wallet-public-key",
    "get-coordinator-data",
    "get-balance",
    "get-total-supply",
    "get-num-signers",
    "get-num-keys",
    "get-threshold",
    "get-signer-data",
    "get-contract-owner",
    "get-trading-halted",
    "get-decimals",
    "get-name",
    "get-symbol",
    "get-token-uri",
];

fn text_400(req: Request, text: &str) {
    respond(req, 400, "text/plain", format!("Failed to decode: {text}"))
}

fn not_found(req: Request) {
    respond(req, 404, "text/plain", NOT_FOUND_TEXT.into())
}

fn content_type(req: &Request) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| {
            h.value
                .as_str()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn handle(mut req: Request, state: &Mutex<StacksState>) {
    let url = req.url().to_owned();
    let path = url.split('?').next().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut body = Vec::new();
    if req
        .as_reader()
        .take(2 << 20)
        .read_to_end(&mut body)
        .is_err()
    {
        return text_400(req, "unreadable body");
    }
    match (req.method().clone(), parts.as_slice()) {
        (Method::Get, ["v2", "info"]) => {
            let s = lock(state);
            let tip = s.tip();
            // As on the real node: pox_consensus is the tip's consensus hash.
            let v = json!({
                "peer_version": 4207599120u32,
                "pox_consensus": hex::encode(tip.consensus_hash),
                "burn_block_height": s.burn_height,
                "stable_pox_consensus": hex::encode(s.block(&tip.parent).map(|p| p.consensus_hash).unwrap_or_default()),
                "stable_burn_block_height": s.burn_height.saturating_sub(1),
                "server_version": "sbtc-devnet stacks-node emulator",
                "network_id": CHAIN_ID_TESTNET,
                "parent_network_id": 3669344250u32,
                "stacks_tip_height": s.height,
                "stacks_tip": hex::encode(tip.block_hash),
                "stacks_tip_consensus_hash": hex::encode(tip.consensus_hash),
                "genesis_chainstate_hash": hex::encode([0u8; 32]),
                "unanchored_tip": null,
                "unanchored_seq": null,
                "exit_at_block_height": null,
                "is_fully_synced": true,
                "node_public_key": null,
                "node_public_key_hash": null,
                "tenure_height": s.height,
                "last_pox_anchor": null,
                "stackerdbs": [],
            });
            drop(s);
            json_reply(req, 200, v)
        }
        (Method::Get, ["v2", "accounts", who]) => {
            let Ok(p) = who.parse::<PrincipalData>() else {
                return not_found(req);
            };
            let (balance, nonce) = lock(state).account(p.address());
            json_reply(
                req,
                200,
                json!({"balance": format!("0x{balance:032x}"), "locked": format!("0x{:032x}", 0), "unlock_height": 0, "nonce": nonce}),
            )
        }
        (Method::Post, ["v2", "transactions"]) => {
            let bytes = match content_type(&req).as_deref() {
                Some("application/json") => {
                    match serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| {
                            v.get("tx")
                                .and_then(|t| t.as_str())
                                .and_then(|t| hex::decode(t).ok())
                        }) {
                        Some(b) => b,
                        None => return text_400(req, "Failed to parse transaction JSON"),
                    }
                }
                Some("application/octet-stream") => body,
                _ => {
                    return text_400(
                        req,
                        "Wrong Content-Type for transaction; expected application/json or application/octet-stream",
                    )
                }
            };
            if bytes.is_empty() {
                return text_400(
                    req,
                    "Invalid Http request: expected non-zero-length body for PostTransaction",
                );
            }
            let txid = match StacksTransaction::deserialize(&bytes) {
                Ok(t) => t.txid().to_string(),
                Err(e) => {
                    return respond(
                        req,
                        400,
                        "text/plain",
                        format!("Failed to decode due to SIP-003 codec error: {e}"),
                    )
                }
            };
            let outcome = lock(state).admit(&bytes);
            match outcome {
                Ok(txid) => json_reply(req, 200, json!(txid)),
                Err((reason, data)) => {
                    let mut v =
                        json!({"txid": txid, "error": "transaction rejected", "reason": reason});
                    if !data.is_null() {
                        v["reason_data"] = data;
                    }
                    json_reply(req, 400, v)
                }
            }
        }
        (Method::Post, ["v2", "fees", "transaction"]) => {
            let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let payload = v
                .as_ref()
                .and_then(|v| v.get("transaction_payload"))
                .and_then(|p| p.as_str())
                .and_then(|h| hex::decode(h.trim_start_matches("0x")).ok())
                .and_then(|b| decode_payload(&b));
            let len = v
                .as_ref()
                .and_then(|v| v.get("estimated_len"))
                .and_then(|l| l.as_u64())
                .unwrap_or(0);
            let Some(payload) = payload else {
                return text_400(req, "Failed to parse transaction payload");
            };
            let estimate = lock(state).estimate(&payload, len.max(1));
            match estimate {
                Some([low, middle, high]) => json_reply(
                    req,
                    200,
                    json!({"estimations": [{"fee_rate": low as f64 / len.max(1) as f64, "fee": low}, {"fee_rate": middle as f64 / len.max(1) as f64, "fee": middle}, {"fee_rate": high as f64 / len.max(1) as f64, "fee": high}], "estimated_cost_scalar": 1, "cost_scalar_change_by_byte": 0.0}),
                ),
                None => json_reply(
                    req,
                    400,
                    json!({"error": "Estimation could not be performed", "reason": "NoEstimateAvailable", "reason_data": {"message": "No estimate available for the provided payload."}}),
                ),
            }
        }
        (Method::Post, ["v2", "contracts", "call-read", addr, name, function]) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let Some(sender) = v.get("sender").and_then(|s| s.as_str()) else {
                return text_400(req, "Failed to parse sender principal");
            };
            if sender.parse::<PrincipalData>().is_err() {
                return text_400(req, "Failed to parse sender principal");
            }
            let args: Option<Vec<Value>> = v
                .get("arguments")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().and_then(|h| Value::from_hex(h).ok()))
                        .collect()
                })
                .unwrap_or(Some(vec![]));
            let Some(args) = args else {
                return text_400(req, "Failed to deserialize argument value");
            };
            let s = lock(state);
            let at = match query_tip(&url) {
                None => Ok(None),
                Some(id) if id == boot_block_id() => {
                    // The boot block: no sBTC contract yet.
                    let cause = format!("RuntimeCheck(NoSuchContract(\"{addr}.{name}\"))");
                    drop(s);
                    return json_reply(req, 200, json!({"okay": false, "cause": cause}));
                }
                Some(id) => s.state_at(&id),
            };
            let at = match at {
                Ok(at) => at,
                Err(()) => {
                    drop(s);
                    return respond(req, 404, "text/plain", "Chain tip not found".into());
                }
            };
            let model = at.as_ref().map_or(&s.model, |st| &st.model);
            let contract_ok =
                s.contract_id.address.to_string() == *addr && s.contract_id.name.as_str() == *name;
            let reply = if !contract_ok {
                json!({"okay": false, "cause": format!("RuntimeCheck(NoSuchContract(\"{addr}.{name}\"))")})
            } else if !READ_ONLY.contains(function) {
                json!({"okay": false, "cause": format!("RuntimeCheck(UndefinedFunction(\"{function}\"))")})
            } else {
                match model.read(function, &args) {
                    Some(v) => json!({"okay": true, "result": v.to_hex()}),
                    None => {
                        let got: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
                        json!({"okay": false, "cause": format!("RuntimeCheck(TypeValueError(_, \"{}\"))", got.join(", "))})
                    }
                }
            };
            drop(s);
            json_reply(req, 200, reply)
        }
        (Method::Get, ["v2", "headers", n]) => {
            let Ok(n) = n.parse::<u64>() else {
                let text = format!("Invalid path parameters for '{path}'");
                return respond(req, 400, "text/plain", text);
            };
            if n > MAX_HEADERS {
                // Like the real node's, this text ends with a newline.
                let text = format!("Invalid request: requested more than {MAX_HEADERS} headers\n");
                return respond(req, 400, "text/plain", text);
            }
            let s = lock(state);
            let start = query_tip(&url).unwrap_or(s.tip().id);
            let Some(first) = s.block(&start).filter(|b| b.height > 0) else {
                drop(s);
                let text = format!("No such block {}\n", hex::encode(start));
                return respond(req, 404, "text/plain", text);
            };
            // The start block first, then its ancestors, down to block 1.
            let mut out = Vec::new();
            let mut b = Some(first);
            while let Some(block) = b.filter(|b| b.height > 0 && (out.len() as u64) < n) {
                out.push(json!({
                    "consensus_hash": hex::encode(block.consensus_hash),
                    "header": hex::encode(&block.header),
                    "parent_block_id": hex::encode(block.parent),
                }));
                b = s.block(&block.parent);
            }
            let tip_height = s.height;
            drop(s);
            let h = Header::from_bytes(
                &b"x-canonical-stacks-tip-height"[..],
                tip_height.to_string().as_bytes(),
            )
            .expect("ASCII header");
            let ct = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("ASCII header");
            let _ = req.respond(
                Response::from_string(serde_json::Value::Array(out).to_string())
                    .with_status_code(200)
                    .with_header(ct)
                    .with_header(h),
            );
        }
        (Method::Get, ["v2", "burn_ops", height, op]) => {
            let s = lock(state);
            if s.burn_ops_mode == BurnOpsMode::Absent {
                drop(s);
                return not_found(req);
            }
            let found = height
                .parse::<u64>()
                .ok()
                .filter(|h| *h <= s.burn_height)
                .map(|h| s.burn_ops.get(&h).cloned().unwrap_or_default());
            let reply = match (found, *op) {
                (Some((ins, _)), "peg_in") => Some(json!({ "peg_in": ins })),
                (Some((_, outs)), "peg_out_request") => Some(json!({ "peg_out_request": outs })),
                (Some(_), "peg_out_fulfill") => Some(json!({ "peg_out_fulfill": [] })),
                _ => None,
            };
            drop(s);
            match reply {
                Some(v) => json_reply(req, 200, v),
                None => respond(
                    req,
                    404,
                    "text/plain",
                    format!("No burn ops for {height}/{op}"),
                ),
            }
        }
        _ => not_found(req),
    }
}

/// The block a request's `?tip=` names, when it is well formed: 64 hex
/// digits, either case (the last `tip=` wins). Anything else (`0x…`, short,
/// `latest`) is ignored, as the real node (4.0.2) ignores it: the answer is
/// at the canonical tip.
fn query_tip(url: &str) -> Option<[u8; 32]> {
    let (_, query) = url.split_once('?')?;
    let tip = query.rsplit('&').find_map(|kv| kv.strip_prefix("tip="))?;
    if tip.len() != 64 {
        return None;
    }
    hex::decode(tip).ok()?.try_into().ok()
}

/// Decodes a bare payload (type byte first), as `/v2/fees/transaction`
/// receives it, by wrapping it in an unsigned transaction shell.
fn decode_payload(payload: &[u8]) -> Option<Payload> {
    // version, chain id, auth (standard p2pkh, signer, nonce, fee, key
    // encoding, signature), anchor mode, post-condition mode, no conditions.
    let mut raw = vec![0x80];
    raw.extend_from_slice(&CHAIN_ID_TESTNET.to_be_bytes());
    raw.extend_from_slice(&[0x04, 0x00]);
    raw.extend_from_slice(&[0u8; 20 + 8 + 8]);
    raw.push(0x00);
    raw.extend_from_slice(&[0u8; 65]);
    raw.extend_from_slice(&[0x03, 0x02, 0, 0, 0, 0]);
    raw.extend_from_slice(payload);
    StacksTransaction::deserialize(&raw).ok().map(|t| t.payload)
}
