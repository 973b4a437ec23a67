//! [`BitcoinNode`] over bitcoind's JSON-RPC, with ureq.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{
    Amount, Block, BlockHash, Denomination, FeeRate, OutPoint, Script, ScriptBuf, Transaction,
    TxOut, Txid,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{BitcoinNode, Error, MempoolAcceptance, TxStatus, Utxo};

/// The most a response body may hold (a full block is under 4 MB of hex ×2).
const MAX_BODY: u64 = 16 << 20;

/// bitcoind's "no such transaction" (RPC_INVALID_ADDRESS_OR_KEY).
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
/// "Transaction outputs already in utxo set" (RPC_VERIFY_ALREADY_IN_CHAIN;
/// older nodes said "Transaction already in block chain").
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
/// Transaction rejected (RPC_VERIFY_REJECTED); "txn-already-in-mempool" and
/// "txn-already-known" come with it from older nodes.
const RPC_VERIFY_REJECTED: i64 = -26;

/// How to authenticate.
#[derive(Clone)]
pub enum Auth {
    /// No authentication.
    None,
    /// User and password.
    UserPass(String, String),
    /// Bitcoin Core's cookie file, read at every call (it changes on restart).
    Cookie(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPass(u, _) => write!(f, "UserPass({u}, [redacted])"),
            Auth::Cookie(p) => write!(f, "Cookie({})", p.display()),
        }
    }
}

/// A bitcoind JSON-RPC client.
#[derive(Debug)]
pub struct UreqBitcoinNode {
    agent: ureq::Agent,
    url: String,
    auth: Auth,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct RpcReply {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<RpcErrorObject>,
}

#[derive(Deserialize)]
struct RpcErrorObject {
    code: i64,
    message: String,
}

/// Maps a ureq error; an unreachable node is named by its URL (without
/// any user and password in it).
///
/// A timeout names the node and the time waited since `started`.
fn transport(url: &str, started: std::time::Instant) -> impl Fn(ureq::Error) -> Error + '_ {
    move |e| match e {
        ureq::Error::Timeout(_) => Error::Timeout(format!(
            "no answer from {} after {:.1} s",
            if url.is_empty() {
                "the node".to_owned()
            } else {
                without_userinfo(url)
            },
            started.elapsed().as_secs_f64()
        )),
        ureq::Error::BodyExceedsLimit(n) => Error::Decode(format!("answer larger than {n} bytes")),
        other if url.is_empty() => Error::Transport(other.to_string()),
        other => Error::Transport(format!("{}: {other}", without_userinfo(url))),
    }
}

fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{host}{}", &rest[authority.len()..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// Converts a BTC decimal from JSON into an [`Amount`] through its decimal
/// text, never through floating-point arithmetic.
fn btc(v: &Value) -> Result<Amount, Error> {
    let n = v
        .as_f64()
        .ok_or_else(|| Error::Decode(format!("{v} is not a BTC amount")))?;
    Amount::from_str_in(&format!("{n}"), Denomination::Bitcoin)
        .map_err(|e| Error::Decode(format!("BTC amount {n}: {e}")))
}

/// The size of a connection's input and output buffers (and the most
/// the answer's status line and headers may take).
const CONNECTION_BUFFER: usize = 16 * 1024;

impl UreqBitcoinNode {
    /// Creates a client for `url` (e.g. `http://127.0.0.1:18443`, or a
    /// `/wallet/<name>` path) with a per-call `timeout`.
    pub fn new(url: &str, auth: Auth, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // No idle connection is kept: each call opens its own (≈ 0.1 ms
            // on loopback or a LAN). A node server that gives every open
            // connection a worker — tiny_http, under the devnet's emulators,
            // whose pool can leave a new connection queued behind idle ones
            // for as long as those stay open — then never holds a call
            // until the client's timeout (seen: 30 s stalls of the guards).
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            // Each connection allocates its buffers: ureq's 128 KiB each
            // way made every call grow and trim the heap (page faults,
            // TLB shootdowns: a fifth of a signer guard's check CPU in
            // peg_bench). A node's answer headers are far smaller; bodies
            // stream through the buffer whatever its size.
            .input_buffer_size(CONNECTION_BUFFER)
            .output_buffer_size(CONNECTION_BUFFER)
            .max_response_header_size(CONNECTION_BUFFER)
            .build();
        UreqBitcoinNode {
            agent: ureq::Agent::new_with_config(config),
            url: url.trim_end_matches('/').to_owned(),
            auth,
            next_id: AtomicU64::new(1),
        }
    }

    fn authorization(&self) -> Result<Option<String>, Error> {
        let pair = match &self.auth {
            Auth::None => return Ok(None),
            Auth::UserPass(u, p) => format!("{u}:{p}"),
            Auth::Cookie(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::Transport(format!("cannot read cookie file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
        };
        Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )))
    }

    /// Calls `method` with `params`; returns the `result`.
    ///
    /// # Errors
    /// A JSON-RPC error object (whatever the HTTP status) is [`Error::Rpc`];
    /// a status without one is [`Error::Http`]; an unreadable body is
    /// [`Error::Decode`]; no answer is [`Error::Transport`] or [`Error::Timeout`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let started = std::time::Instant::now();
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(a) = self.authorization()? {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .send(body.to_string().as_bytes())
            .map_err(transport(&self.url, started))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(transport(&self.url, started))?;
        let reply: Option<RpcReply> = serde_json::from_str(&text).ok();
        match reply {
            Some(RpcReply { error: Some(e), .. }) => Err(Error::Rpc {
                code: e.code,
                message: e.message,
            }),
            Some(RpcReply {
                result,
                error: None,
            }) if status == 200 => Ok(result),
            _ if status != 200 => Err(Error::Http { status }),
            _ => Err(Error::Decode(format!(
                "{method}: answer is not JSON-RPC: {:.120}",
                text
            ))),
        }
    }
}

impl UreqBitcoinNode {
    /// Whether the node keeps a transaction index (`getindexinfo`): without
    /// `-txindex`, `getrawtransaction` finds confirmed transactions only with
    /// their block hash, and the coordinator looks fulfilments and one-off
    /// ops up by txid.
    ///
    /// # Errors
    /// When the node does not answer.
    pub fn has_txindex(&self) -> Result<bool, Error> {
        let info = self.call("getindexinfo", json!([]))?;
        Ok(info.get("txindex").is_some())
    }

    /// `getrawtransaction TXID 1 [BLOCKHASH]`: verbosity explicit, so no
    /// node default matters. -5 (unknown transaction, or unknown block) is
    /// `None`.
    fn raw_transaction(
        &self,
        txid: &Txid,
        block: Option<&BlockHash>,
    ) -> Result<Option<TxStatus>, Error> {
        #[derive(Deserialize)]
        struct Raw {
            hex: String,
            #[serde(default)]
            confirmations: u32,
            #[serde(default)]
            blockhash: Option<BlockHash>,
            #[serde(default)]
            in_active_chain: Option<bool>,
        }
        let params = match block {
            None => json!([txid, 1]),
            Some(b) => json!([txid, 1, b]),
        };
        let raw: Raw = match self.call("getrawtransaction", params) {
            Ok(v) => decode("getrawtransaction", v)?,
            Err(Error::Rpc {
                code: RPC_INVALID_ADDRESS_OR_KEY,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tx: Transaction = deserialize_hex(&raw.hex)
            .map_err(|e| Error::Decode(format!("transaction {txid}: {e}")))?;
        if tx.compute_txid() != *txid {
            return Err(Error::Decode(format!(
                "asked for {txid}, got {}",
                tx.compute_txid()
            )));
        }
        // A block off the best chain: not confirmed.
        let (confirmations, block_hash) = if raw.in_active_chain == Some(false) {
            (0, None)
        } else {
            (raw.confirmations, raw.blockhash)
        };
        if let (Some(asked), Some(got)) = (block, block_hash.as_ref()) {
            if asked != got {
                return Err(Error::Decode(format!(
                    "asked for {txid} in block {asked}, got block {got}"
                )));
            }
        }
        Ok(Some(TxStatus {
            tx,
            confirmations,
            block_hash,
        }))
    }
}

impl BitcoinNode for UreqBitcoinNode {
    fn get_block_count(&self) -> Result<u64, Error> {
        decode("getblockcount", self.call("getblockcount", json!([]))?)
    }

    fn get_block_hash(&self, height: u64) -> Result<BlockHash, Error> {
        decode("getblockhash", self.call("getblockhash", json!([height]))?)
    }

    fn get_best_block_hash(&self) -> Result<BlockHash, Error> {
        decode(
            "getbestblockhash",
            self.call("getbestblockhash", json!([]))?,
        )
    }

    fn get_block(&self, hash: &BlockHash) -> Result<Block, Error> {
        let hex: String = decode("getblock", self.call("getblock", json!([hash, 0]))?)?;
        let block: Block =
            deserialize_hex(&hex).map_err(|e| Error::Decode(format!("block {hash}: {e}")))?;
        if block.block_hash() != *hash {
            return Err(Error::Decode(format!(
                "asked for block {hash}, got {}",
                block.block_hash()
            )));
        }
        Ok(block)
    }

    fn get_raw_transaction(&self, txid: &Txid) -> Result<Option<TxStatus>, Error> {
        self.raw_transaction(txid, None)
    }

    fn get_raw_transaction_in_block(
        &self,
        txid: &Txid,
        block_hash: &BlockHash,
    ) -> Result<Option<TxStatus>, Error> {
        self.raw_transaction(txid, Some(block_hash))
    }

    fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, Error> {
        let txid = tx.compute_txid();
        match self.call("sendrawtransaction", json!([serialize_hex(tx)])) {
            Ok(v) => {
                let got: Txid = decode("sendrawtransaction", v)?;
                if got != txid {
                    return Err(Error::Decode(format!("sent {txid}, node answered {got}")));
                }
                Ok(got)
            }
            Err(Error::Rpc {
                code: RPC_VERIFY_ALREADY_IN_CHAIN,
                ..
            }) => Ok(txid),
            Err(Error::Rpc {
                code: RPC_VERIFY_REJECTED,
                message,
            }) if message.contains("txn-already-in-mempool")
                || message.contains("txn-already-known") =>
            {
                Ok(txid)
            }
            Err(e) => Err(e),
        }
    }

    fn test_mempool_accept(&self, tx: &Transaction) -> Result<MempoolAcceptance, Error> {
        #[derive(Deserialize)]
        struct Verdict {
            allowed: bool,
            #[serde(rename = "reject-reason", default)]
            reject_reason: Option<String>,
        }
        let v: Vec<Verdict> = decode(
            "testmempoolaccept",
            self.call("testmempoolaccept", json!([[serialize_hex(tx)]]))?,
        )?;
        match v.into_iter().next() {
            Some(Verdict { allowed: true, .. }) => Ok(MempoolAcceptance::Allowed),
            Some(Verdict { reject_reason, .. }) => Ok(MempoolAcceptance::Rejected(
                reject_reason.unwrap_or_else(|| "unknown".into()),
            )),
            None => Err(Error::Decode("testmempoolaccept: empty answer".into())),
        }
    }

    fn estimate_smart_fee(&self, target_blocks: u16) -> Result<Option<FeeRate>, Error> {
        let v = self.call("estimatesmartfee", json!([target_blocks]))?;
        match v.get("feerate") {
            None | Some(Value::Null) => Ok(None),
            Some(rate) => {
                // BTC per kvB -> sat per kvB -> sat per 1000 weight units.
                let per_kvb = btc(rate)?;
                Ok(Some(FeeRate::from_sat_per_kwu(per_kvb.to_sat() / 4)))
            }
        }
    }

    fn list_unspent(&self, script_pubkey: &Script) -> Result<Vec<Utxo>, Error> {
        #[derive(Deserialize)]
        struct Unspent {
            txid: Txid,
            vout: u32,
            amount: Value,
            height: u64,
        }
        #[derive(Deserialize)]
        struct Scan {
            success: bool,
            height: u64,
            unspents: Vec<Unspent>,
        }
        let desc = format!("raw({})", script_pubkey.to_hex_string());
        let scan: Scan = decode(
            "scantxoutset",
            self.call("scantxoutset", json!(["start", [desc]]))?,
        )?;
        if !scan.success {
            return Err(Error::Decode("scantxoutset did not complete".into()));
        }
        scan.unspents
            .into_iter()
            .map(|u| {
                Ok(Utxo {
                    outpoint: OutPoint::new(u.txid, u.vout),
                    txout: TxOut {
                        value: btc(&u.amount)?,
                        script_pubkey: script_pubkey.to_owned(),
                    },
                    confirmations: u32::try_from(
                        scan.height.saturating_add(1).saturating_sub(u.height),
                    )
                    .unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        include_mempool: bool,
    ) -> Result<Option<Utxo>, Error> {
        #[derive(Deserialize)]
        struct Spk {
            hex: String,
        }
        #[derive(Deserialize)]
        struct Out {
            confirmations: u32,
            value: Value,
            #[serde(rename = "scriptPubKey")]
            script_pubkey: Spk,
        }
        let v = self.call(
            "gettxout",
            json!([outpoint.txid, outpoint.vout, include_mempool]),
        )?;
        // Core answers `null` for a spent or unknown output.
        if v.is_null() {
            return Ok(None);
        }
        let out: Out = decode("gettxout", v)?;
        let script = ScriptBuf::from_hex(&out.script_pubkey.hex)
            .map_err(|e| Error::Decode(format!("gettxout {outpoint}: scriptPubKey: {e}")))?;
        Ok(Some(Utxo {
            outpoint: *outpoint,
            txout: TxOut {
                value: btc(&out.value)?,
                script_pubkey: script,
            },
            confirmations: out.confirmations,
        }))
    }
}
