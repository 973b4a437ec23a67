//! A stacks-node emulator: the RPC endpoints the coordinator uses, with the
//! node's shapes and checks. Transactions are decoded with `stacks-wire`;
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
    /// Fees of mempool transactions per sender, for balance checks.
    mempool_fees: std::collections::HashMap<StacksAddress, u128>,
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
    /// The lowest fee admitted, µSTX.
    pub min_fee: u64,
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
            mempool_fees: std::collections::HashMap::new(),
            receipts: Vec::new(),
            height: 1,
            burn_height: 0,
            burn_ops: BTreeMap::new(),
            burn_hashes: BTreeMap::new(),
            min_fee: 180,
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
    /// (`reason`, `reason_data`).
    pub fn admit(&mut self, bytes: &[u8]) -> Result<String, (String, serde_json::Value)> {
        let reject = |r: &str, d: serde_json::Value| Err((r.to_owned(), d));
        let tx = match StacksTransaction::deserialize(bytes) {
            Ok(t) => t,
            Err(e) => return reject("Deserialization", json!({ "message": e.to_string() })),
        };
        if tx.network != StacksNetwork::Testnet || tx.chain_id != CHAIN_ID_TESTNET {
            return reject("BadTransactionVersion", json!({}));
        }
        if let Err(e) = tx.verify() {
            return reject("SignatureValidation", json!({ "message": e.to_string() }));
        }
        let txid = tx.txid().to_string();
        let origin = tx.origin();
        if self.mempool_txids.contains(&tx.txid()) {
            return Ok(txid);
        }
        let (balance, nonce) = self.account(&origin);
        if tx.auth.nonce < nonce {
            return reject(
                "BadNonce",
                json!({ "expected": nonce, "actual": tx.auth.nonce, "principal": origin.to_string(), "is_origin": true }),
            );
        }
        if self
            .mempool
            .iter()
            .any(|t| t.origin() == origin && t.auth.nonce == tx.auth.nonce)
        {
            return reject("ConflictingNonceInMempool", json!({}));
        }
        if tx.auth.fee < self.min_fee {
            return reject(
                "FeeTooLow",
                json!({ "expected": self.min_fee, "actual": tx.auth.fee }),
            );
        }
        let pending_fees: u128 = self
            .mempool
            .iter()
            .filter(|t| t.origin() == origin)
            .map(|t| u128::from(t.auth.fee))
            .sum();
        if balance < pending_fees + u128::from(tx.auth.fee) {
            return reject(
                "NotEnoughFunds",
                json!({ "expected": format!("0x{:x}", tx.auth.fee), "actual": format!("0x{balance:x}") }),
            );
        }
        match &tx.payload {
            Payload::ContractCall {
                contract,
                function_name,
                args,
            } => {
                if *contract != self.contract_id {
                    return reject("NoSuchContract", json!({ "message": contract.to_string() }));
                }
                match SbtcModel::check_args(function_name, args) {
                    Ok(()) => {}
                    Err(ArgError::NoSuchFunction(f)) => {
                        return reject("NoSuchPublicFunction", json!({ "message": f }))
                    }
                    Err(ArgError::BadArgument(m)) => {
                        return reject("BadFunctionArgument", json!({ "message": m }))
                    }
                }
            }
            Payload::TokenTransfer { amount, .. } => {
                if balance < pending_fees + u128::from(tx.auth.fee) + u128::from(*amount) {
                    return reject("NotEnoughFunds", json!({}));
                }
            }
        }
        *self.mempool_fees.entry(origin).or_insert(0) += u128::from(tx.auth.fee);
        self.mempool_txids.insert(tx.txid());
        self.mempool.push(tx);
        Ok(txid)
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
            if let Some(f) = self.mempool_fees.get_mut(&origin) {
                *f = f.saturating_sub(u128::from(tx.auth.fee));
            }
            let (balance, nonce) = self.account(&origin);
            let fee = u128::from(tx.auth.fee);
            if balance < fee {
                continue;
            }
            self.accounts.insert(origin, (balance - fee, nonce + 1));
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
        return respond(req, 400, "text/plain", "unreadable body".into());
    }
    match (req.method().clone(), parts.as_slice()) {
        (Method::Get, ["v2", "info"]) => {
            let s = lock(state);
            let v = json!({
                "peer_version": 4207599113u32,
                "burn_block_height": s.burn_height,
                "stacks_tip_height": s.height,
                "stacks_tip": hex::encode(s.tip_hash()),
                "stacks_tip_consensus_hash": hex::encode(&s.tip_hash()[..20]),
                "server_version": "sbtc-devnet stacks-node emulator",
                "network_id": CHAIN_ID_TESTNET,
            });
            drop(s);
            json_reply(req, 200, v)
        }
        (Method::Get, ["v2", "accounts", who]) => {
            let Ok(p) = who.parse::<PrincipalData>() else {
                return respond(req, 400, "text/plain", format!("Invalid principal: {who}"));
            };
            let (balance, nonce) = lock(state).account(p.address());
            json_reply(
                req,
                200,
                json!({"balance": format!("0x{balance:032x}"), "locked": format!("0x{:032x}", 0), "unlock_height": 0, "nonce": nonce}),
            )
        }
        (Method::Post, ["v2", "transactions"]) => {
            let bytes = if req
                .headers()
                .iter()
                .any(|h| h.value.as_str().starts_with("application/json"))
            {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("tx")
                            .and_then(|t| t.as_str())
                            .and_then(|t| hex::decode(t).ok())
                    })
                    .unwrap_or_default()
            } else {
                body
            };
            let txid = StacksTransaction::deserialize(&bytes)
                .map(|t| t.txid().to_string())
                .unwrap_or_default();
            let outcome = lock(state).admit(&bytes);
            match outcome {
                Ok(txid) => json_reply(req, 200, json!(txid)),
                Err((reason, data)) => json_reply(
                    req,
                    400,
                    json!({"txid": txid, "error": "transaction rejected", "reason": reason, "reason_data": data}),
                ),
            }
        }
        (Method::Post, ["v2", "fees", "transaction"]) => {
            let min = lock(state).min_fee;
            if serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("transaction_payload").cloned())
                .is_none()
            {
                return json_reply(
                    req,
                    400,
                    json!({"error": "bad request", "reason": "MissingPayload"}),
                );
            }
            json_reply(
                req,
                200,
                json!({"estimations": [{"fee_rate": 1.0, "fee": min}, {"fee_rate": 2.0, "fee": min * 2}, {"fee_rate": 4.0, "fee": min * 4}], "estimated_cost_scalar": 1, "cost_scalar_change_by_byte": 0.0}),
            )
        }
        (Method::Post, ["v2", "contracts", "call-read", addr, name, function]) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let args: Option<Vec<Value>> = v.get("arguments").and_then(|a| a.as_array()).map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().and_then(|h| Value::from_hex(h).ok()))
                    .collect()
            });
            let s = lock(state);
            let contract_ok =
                s.contract_id.address.to_string() == *addr && s.contract_id.name.as_str() == *name;
            let reply = match (contract_ok, args) {
                (false, _) => json!({"okay": false, "cause": "Unchecked(NoSuchContract)"}),
                (true, None) => {
                    json!({"okay": false, "cause": "arguments must be hex-serialized Clarity values"})
                }
                (true, Some(args)) => match s.model.read(function, &args) {
                    Some(v) => json!({"okay": true, "result": v.to_hex()}),
                    None => {
                        json!({"okay": false, "cause": format!("Unchecked(NoSuchPublicFunction(\"{function}\"))")})
                    }
                },
            };
            drop(s);
            json_reply(req, 200, reply)
        }
        (Method::Get, ["v2", "burn_ops", height, op]) => {
            let s = lock(state);
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
        _ => respond(req, 404, "text/plain", "Not found".into()),
    }
}
