//! A bitcoind emulator: real blocks (header, merkle root, proof of work at
//! regtest difficulty), a UTXO set and a mempool, behind the JSON-RPC methods
//! the coordinator uses with bitcoind's shapes and error codes. Every input
//! of every accepted transaction is checked with libbitcoinconsensus
//! (taproot rules, spent outputs); double spends, missing inputs, outputs
//! above inputs, fees under the minimum relay fee, dust and immature
//! coinbase spends are refused as bitcoind refuses them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::server::{lock, Emulator};
use bitcoin::block::{Header, Version};
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
    undo: Vec<Vec<(OutPoint, Coin)>>,
    utxos: HashMap<OutPoint, Coin>,
    mempool: Vec<Transaction>,
    /// Minimum relay fee rate.
    pub min_relay_fee: FeeRate,
}

impl Default for BitcoinState {
    fn default() -> Self {
        Self::new()
    }
}

impl BitcoinState {
    /// A regtest chain holding only the genesis block.
    pub fn new() -> Self {
        BitcoinState {
            blocks: vec![bitcoin::blockdata::constants::genesis_block(
                Network::Regtest,
            )],
            undo: vec![vec![]],
            utxos: HashMap::new(),
            mempool: Vec::new(),
            min_relay_fee: FeeRate::from_sat_per_vb(1).expect("1 sat/vB is representable"),
        }
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
        self.blocks
            .iter()
            .enumerate()
            .find(|(_, b)| b.block_hash() == *hash)
            .map(|(h, b)| (h as u64, b))
    }

    /// Where a transaction is: `Some(None)` in the mempool, `Some(Some(h))`
    /// confirmed at height `h`.
    pub fn locate(&self, txid: &Txid) -> Option<(Transaction, Option<u64>)> {
        if let Some(t) = self.mempool.iter().find(|t| t.compute_txid() == *txid) {
            return Some((t.clone(), None));
        }
        self.blocks.iter().enumerate().rev().find_map(|(h, b)| {
            b.txdata
                .iter()
                .find(|t| t.compute_txid() == *txid)
                .map(|t| (t.clone(), Some(h as u64)))
        })
    }

    /// Unspent confirmed outputs paying `script`: (outpoint, output, height).
    pub fn unspent(&self, script: &bitcoin::Script) -> Vec<(OutPoint, TxOut, u64)> {
        let spent_in_mempool: HashSet<OutPoint> = self
            .mempool
            .iter()
            .flat_map(|t| t.input.iter().map(|i| i.previous_output))
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
        if tx.is_coinbase() {
            return Err(refuse(-26, "coinbase"));
        }
        if tx.input.is_empty() || tx.output.is_empty() {
            return Err(refuse(-26, "bad-txns-vin-empty or vout-empty"));
        }
        let mempool_outputs: HashMap<OutPoint, TxOut> = self
            .mempool
            .iter()
            .flat_map(|t| {
                let txid = t.compute_txid();
                t.output
                    .iter()
                    .enumerate()
                    .map(move |(i, o)| (OutPoint::new(txid, i as u32), o.clone()))
            })
            .collect();
        let mempool_spent: HashSet<OutPoint> = self
            .mempool
            .iter()
            .flat_map(|t| t.input.iter().map(|i| i.previous_output))
            .collect();
        let mut seen = HashSet::new();
        let mut prevouts = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let o = input.previous_output;
            if !seen.insert(o) {
                return Err(refuse(-26, "bad-txns-inputs-duplicate"));
            }
            if mempool_spent.contains(&o) {
                return Err(refuse(-26, "txn-mempool-conflict"));
            }
            let out = match (self.utxos.get(&o), mempool_outputs.get(&o)) {
                (Some(c), _) => {
                    if c.coinbase && self.height() + 1 - c.height < COINBASE_MATURITY {
                        return Err(refuse(-26, "bad-txns-premature-spend-of-coinbase"));
                    }
                    c.txout.clone()
                }
                (None, Some(m)) => m.clone(),
                (None, None) => return Err(refuse(-25, "bad-txns-inputs-missingorspent")),
            };
            prevouts.push(out);
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
        fee_wallet::verify_spends(tx, &prevouts)
            .map_err(|e| refuse(-26, format!("mandatory-script-verify-flag-failed ({e})")))?;
        Ok(fee)
    }

    /// bitcoind's default package limits: a transaction with its in-mempool
    /// ancestors, or an in-mempool transaction with its descendants, counts
    /// at most [`MEMPOOL_CHAIN_LIMIT`] transactions.
    fn check_chain_limits(&self, tx: &Transaction) -> Result<(), Refusal> {
        let by_txid: HashMap<Txid, &Transaction> =
            self.mempool.iter().map(|t| (t.compute_txid(), t)).collect();
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
        let txid = tx.compute_txid();
        if self.mempool.iter().any(|t| t.compute_txid() == txid) {
            return Ok(txid);
        }
        if (0..tx.output.len()).any(|i| self.utxos.contains_key(&OutPoint::new(txid, i as u32))) {
            return Err(refuse(-27, "Transaction already in block chain"));
        }
        self.check(&tx)?;
        self.mempool.push(tx);
        Ok(txid)
    }

    /// Mines a block paying the coinbase to `to`, with every mempool transaction.
    pub fn mine(&mut self, to: &ScriptBuf) -> BlockHash {
        let height = self.height() + 1;
        let mut script_sig = bitcoin::script::Builder::new()
            .push_int(height as i64)
            .into_script()
            .into_bytes();
        script_sig.push(0x00);
        let coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(script_sig),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(50 * 100_000_000),
                script_pubkey: to.clone(),
            }],
        };
        let mut txdata = vec![coinbase];
        txdata.append(&mut self.mempool);
        let prev = self.blocks.last().expect("genesis is always there");
        let mut header = Header {
            version: Version::TWO,
            prev_blockhash: prev.block_hash(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: prev.header.time + 1,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: 0,
        };
        let mut block = Block { header, txdata };
        header.merkle_root = block.compute_merkle_root().expect("a block has a coinbase");
        while header.validate_pow(header.target()).is_err() {
            header.nonce += 1;
        }
        block.header = header;
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
        self.blocks.push(block);
        self.undo.push(undo);
        hash
    }

    /// Empties the mempool, returning what it held (to mine blocks without it).
    pub fn take_mempool(&mut self) -> Vec<Transaction> {
        std::mem::take(&mut self.mempool)
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
        let block = self.blocks.pop().expect("checked above");
        let undo = self.undo.pop().unwrap_or_default();
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for v in 0..tx.output.len() {
                self.utxos.remove(&OutPoint::new(txid, v as u32));
            }
        }
        for (o, c) in undo {
            self.utxos.insert(o, c);
        }
        let old = std::mem::take(&mut self.mempool);
        for tx in block.txdata.into_iter().skip(1).chain(old) {
            let _ = self.send(tx);
        }
    }
}

fn btc(a: Amount) -> Json {
    json!(a.to_btc())
}

fn rpc(state: &mut BitcoinState, method: &str, params: &[Json]) -> Result<Json, Refusal> {
    let p = |i: usize| params.get(i).cloned().unwrap_or(Json::Null);
    let bad = || refuse(-1, format!("{method}: bad parameters"));
    match method {
        "getblockcount" => Ok(json!(state.height())),
        "getblockhash" => {
            let h = p(0).as_u64().ok_or_else(bad)?;
            state
                .block(h)
                .map(|b| json!(b.block_hash().to_string()))
                .ok_or_else(|| refuse(-8, "Block height out of range"))
        }
        "getblock" => {
            let hash: BlockHash = p(0).as_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let (_, b) = state
                .find_block(&hash)
                .ok_or_else(|| refuse(-5, "Block not found"))?;
            Ok(json!(serialize_hex(b)))
        }
        "getrawtransaction" => {
            let txid: Txid = p(0).as_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let (tx, height) = state
                .locate(&txid)
                .ok_or_else(|| refuse(-5, "No such mempool or blockchain transaction"))?;
            let mut v = json!({"hex": serialize_hex(&tx), "txid": txid.to_string()});
            if let Some(h) = height {
                v["confirmations"] = json!(state.height() + 1 - h);
                v["blockhash"] = json!(state.block(h).map(|b| b.block_hash().to_string()));
            }
            Ok(v)
        }
        "sendrawtransaction" => {
            let tx: Transaction = p(0)
                .as_str()
                .and_then(|s| deserialize_hex(s).ok())
                .ok_or_else(|| refuse(-22, "TX decode failed"))?;
            state.send(tx).map(|t| json!(t.to_string()))
        }
        "testmempoolaccept" => {
            let hex = p(0)
                .as_array()
                .and_then(|a| a.first().cloned())
                .and_then(|h| h.as_str().map(str::to_owned))
                .ok_or_else(bad)?;
            let tx: Transaction =
                deserialize_hex(&hex).map_err(|_| refuse(-22, "TX decode failed"))?;
            Ok(match state.check(&tx) {
                Ok(_) => {
                    json!([{"txid": tx.compute_txid().to_string(), "allowed": true, "vsize": tx.vsize()}])
                }
                Err(r) => {
                    json!([{"txid": tx.compute_txid().to_string(), "allowed": false, "reject-reason": r.message}])
                }
            })
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
        "getblockchaininfo" => Ok(
            json!({"chain": "regtest", "blocks": state.height(), "bestblockhash": state.blocks.last().map(|b| b.block_hash().to_string())}),
        ),
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
        Emulator::serve(addr, state, handle)
    }
}
