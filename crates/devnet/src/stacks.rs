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
//! [`SbtcModel`] when mined, and post conditions are enforced.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;

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
    /// Stacks tip height.
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
    /// for fee estimates.
    mined_fee_rates: std::collections::HashMap<String, Vec<u64>>,
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
        StacksState {
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
        }
    }

    /// Credits `ustx` to `who`.
    pub fn fund(&mut self, who: StacksAddress, ustx: u128) {
        self.accounts.entry(who).or_insert((0, 0)).0 += ustx;
    }

    fn account(&self, who: &StacksAddress) -> (u128, u64) {
        self.accounts.get(who).copied().unwrap_or((0, 0))
    }

    fn tip_hash(&self) -> [u8; 32] {
        sha512_256(&self.height.to_be_bytes())
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
    /// sender, in nonce order. Fees and nonces are taken even when the call
    /// fails, as on the real chain.
    pub fn mine(&mut self) -> usize {
        self.height += 1;
        let mut mined = 0;
        loop {
            let next = self
                .mempool
                .iter()
                .position(|t| self.account(&t.origin()).1 == t.auth.nonce);
            let Some(i) = next else { break };
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
            debug!(
                "stacks block {}: {} -> {:?}",
                self.height,
                tx.txid(),
                result
            );
            self.receipts.push(Receipt {
                tx,
                result,
                height: self.height,
            });
            mined += 1;
        }
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
        Emulator::serve(addr, state, handle)
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
            let tip = s.tip_hash();
            let v = json!({
                "peer_version": 4207599120u32,
                "pox_consensus": hex::encode(&tip[..20]),
                "burn_block_height": s.burn_height,
                "stable_pox_consensus": hex::encode(&tip[..20]),
                "stable_burn_block_height": s.burn_height.saturating_sub(1),
                "server_version": "sbtc-devnet stacks-node emulator",
                "network_id": CHAIN_ID_TESTNET,
                "parent_network_id": 3669344250u32,
                "stacks_tip_height": s.height,
                "stacks_tip": hex::encode(tip),
                "stacks_tip_consensus_hash": hex::encode(&tip[..20]),
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
            let contract_ok =
                s.contract_id.address.to_string() == *addr && s.contract_id.name.as_str() == *name;
            let reply = if !contract_ok {
                json!({"okay": false, "cause": format!("RuntimeCheck(NoSuchContract(\"{addr}.{name}\"))")})
            } else if !READ_ONLY.contains(function) {
                json!({"okay": false, "cause": format!("RuntimeCheck(UndefinedFunction(\"{function}\"))")})
            } else {
                match s.model.read(function, &args) {
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
