//! [`StacksNode`] over the stacks-node's RPC, with ureq.

use std::time::Duration;

use peg_ops::{BurnHeight, PegInOp, PegOutRequestOp};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use stacks_wire::transaction::sha512_256;
use stacks_wire::{ContractId, PrincipalData, StacksTxid, Value};

use crate::{AccountInfo, Error, FeeEstimates, NodeInfo, Rejection, StacksNode, MAX_HEADERS};

/// The most a response body may hold.
const MAX_BODY: u64 = 8 << 20;

/// A stacks-node RPC client.
#[derive(Debug, Clone)]
pub struct UreqStacksNode {
    agent: ureq::Agent,
    url: String,
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

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Decode(format!("{what}: {e}: {text:.120}")))
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32], Error> {
    let b = hex::decode(s.trim_start_matches("0x"))
        .map_err(|_| Error::Decode(format!("{what} is not hex")))?;
    b.try_into()
        .map_err(|_| Error::Decode(format!("{what} is not 32 bytes")))
}

/// The size of a connection's input and output buffers (and the most
/// the answer's status line and headers may take).
const CONNECTION_BUFFER: usize = 16 * 1024;

impl UreqStacksNode {
    /// Creates a client for the node at `url` (e.g. `http://127.0.0.1:20443`)
    /// with a per-call `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
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
        UreqStacksNode {
            agent: ureq::Agent::new_with_config(config),
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    fn read(
        resp: &mut ureq::http::Response<ureq::Body>,
        started: std::time::Instant,
    ) -> Result<(u16, String), Error> {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(transport("", started))?;
        Ok((status, text))
    }

    fn get(&self, path: &str) -> Result<(u16, String), Error> {
        let started = std::time::Instant::now();
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.url))
            .call()
            .map_err(transport(&self.url, started))?;
        Self::read(&mut resp, started)
    }

    fn post_json(&self, path: &str, body: &Json) -> Result<(u16, String), Error> {
        let started = std::time::Instant::now();
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(transport(&self.url, started))?;
        Self::read(&mut resp, started)
    }

    fn http(status: u16, text: &str) -> Error {
        Error::Http {
            status,
            body: text.chars().take(200).collect(),
        }
    }

    fn burn_ops<T: serde::de::DeserializeOwned>(
        &self,
        height: BurnHeight,
        op: &str,
    ) -> Result<Option<Vec<T>>, Error> {
        let (status, text) = self.get(&format!("/v2/burn_ops/{height}/{op}"))?;
        match status {
            200 => {
                let mut v: serde_json::Map<String, Json> = decode(op, &text)?;
                let ops = v
                    .remove(op)
                    .ok_or_else(|| Error::Decode(format!("no {op:?} key in {text:.120}")))?;
                serde_json::from_value(ops)
                    .map(Some)
                    .map_err(|e| Error::Decode(format!("{op}: {e}")))
            }
            // A plain-text 404. A 2023 sBTC alpha node answers so for a
            // height it has not processed yet, and a released stacks-node
            // (no such endpoint) for every height. Tell them apart by asking
            // how far the node got: a 404 for a height at or below its burn
            // height can only mean the endpoint is missing.
            404 => {
                let info = self.get_info()?;
                if info.burn_block_height >= height.0 {
                    log::error!("{}", crate::BURN_OPS_HINT);
                    Err(Error::BurnOpsUnsupported {
                        status,
                        body: text.chars().take(200).collect(),
                    })
                } else {
                    Ok(None)
                }
            }
            s => Err(Self::http(s, &text)),
        }
    }

    /// A 400 answer: the node's JSON rejection, or, when the body is not one
    /// (plain text: the request was malformed), a permanent
    /// [`Rejection::MALFORMED`] carrying the node's text.
    fn rejection(text: &str) -> Error {
        #[derive(Deserialize)]
        struct Rejected {
            reason: String,
            #[serde(default)]
            reason_data: Option<Json>,
        }
        match serde_json::from_str::<Rejected>(text) {
            Ok(r) => Error::Rejected(Rejection {
                reason: r.reason,
                reason_data: r.reason_data,
            }),
            Err(_) => Error::Rejected(Rejection {
                reason: Rejection::MALFORMED.to_owned(),
                reason_data: Some(json!({ "message": text.chars().take(500).collect::<String>() })),
            }),
        }
    }
}

/// One entry of `GET /v2/headers/{n}`: a Stacks 2.x block header (SIP-003
/// serialized, hex), its consensus hash, and its parent's index block hash.
#[derive(Deserialize)]
struct HeaderEntry {
    consensus_hash: String,
    header: String,
    parent_block_id: String,
}

impl HeaderEntry {
    /// The block's index block hash: SHA512/256(block hash ‖ consensus
    /// hash), the block hash being SHA512/256 of the serialized header.
    fn index_block_hash(&self) -> Result<[u8; 32], Error> {
        let header = hex::decode(&self.header)
            .map_err(|_| Error::Decode("/v2/headers: header is not hex".into()))?;
        let consensus = hex::decode(&self.consensus_hash)
            .ok()
            .filter(|b| b.len() == 20)
            .ok_or_else(|| {
                Error::Decode("/v2/headers: consensus_hash is not 20 bytes of hex".into())
            })?;
        Ok(index_block_hash(&sha512_256(&header), &consensus))
    }
}

/// SHA512/256(block hash ‖ consensus hash): the `StacksBlockId` of a Stacks
/// 2.x block (checked on stacks-node 4.0.2 against `/v2/info` and the
/// `parent_block_id`s of `/v2/headers`).
fn index_block_hash(block_hash: &[u8; 32], consensus_hash: &[u8]) -> [u8; 32] {
    let mut buf = block_hash.to_vec();
    buf.extend_from_slice(consensus_hash);
    sha512_256(&buf)
}

impl UreqStacksNode {
    /// `POST /v2/contracts/call-read/…`, at the node's tip or at `tip`.
    ///
    /// The tip goes out as 64 lower-case hex digits without `0x`: the node
    /// (4.0.2) silently answers at its canonical tip for a `tip` it cannot
    /// parse (`0x…`, short, `latest`), so only that form reads at the block
    /// asked for. A well-formed tip it does not know is its 404 ("Chain tip
    /// not found"): [`Error::UnknownTip`].
    fn call_read_tip(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
        tip: Option<&[u8; 32]>,
    ) -> Result<Value, Error> {
        #[derive(Deserialize)]
        struct CallRead {
            okay: bool,
            #[serde(default)]
            result: Option<String>,
            #[serde(default)]
            cause: Option<String>,
        }
        let body = json!({
            "sender": sender.to_string(),
            "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>(),
        });
        let mut path = format!(
            "/v2/contracts/call-read/{}/{}/{function}",
            contract.address, contract.name
        );
        if let Some(tip) = tip {
            path.push_str("?tip=");
            path.push_str(&hex::encode(tip));
        }
        let (status, text) = self.post_json(&path, &body)?;
        match (status, tip) {
            (200, _) => {}
            // Bad argument hex or sender: plain text, permanent.
            (400, _) => return Err(Self::rejection(&text)),
            (404, Some(tip)) => return Err(Error::UnknownTip(hex::encode(tip))),
            (s, _) => return Err(Self::http(s, &text)),
        }
        let r: CallRead = decode("call-read", &text)?;
        match (r.okay, r.result) {
            (true, Some(hex)) => {
                Value::from_hex(&hex).map_err(|e| Error::Decode(format!("call-read result: {e}")))
            }
            _ => Err(Error::CallReadFailed(
                r.cause.unwrap_or_else(|| "no cause given".into()),
            )),
        }
    }
}

impl StacksNode for UreqStacksNode {
    fn get_info(&self) -> Result<NodeInfo, Error> {
        #[derive(Deserialize)]
        struct Info {
            burn_block_height: u64,
            stacks_tip_height: u64,
            stacks_tip: String,
            stacks_tip_consensus_hash: String,
        }
        let (status, text) = self.get("/v2/info")?;
        if status != 200 {
            return Err(Self::http(status, &text));
        }
        let info: Info = decode("/v2/info", &text)?;
        let block_hash = hex32("stacks_tip", &info.stacks_tip)?;
        let consensus = hex::decode(info.stacks_tip_consensus_hash.trim_start_matches("0x"))
            .ok()
            .filter(|b| b.len() == 20)
            .ok_or_else(|| {
                Error::Decode("stacks_tip_consensus_hash is not 20 bytes of hex".into())
            })?;
        // The index block hash (StacksBlockId): SHA512/256(block hash ‖ consensus hash).
        Ok(NodeInfo {
            burn_block_height: info.burn_block_height,
            stacks_tip_height: info.stacks_tip_height,
            stacks_tip: index_block_hash(&block_hash, &consensus),
        })
    }

    fn get_peg_in_ops(&self, height: BurnHeight) -> Result<Option<Vec<PegInOp>>, Error> {
        self.burn_ops(height, "peg_in")
    }

    fn get_peg_out_request_ops(
        &self,
        height: BurnHeight,
    ) -> Result<Option<Vec<PegOutRequestOp>>, Error> {
        self.burn_ops(height, "peg_out_request")
    }

    fn get_account(&self, principal: &PrincipalData) -> Result<AccountInfo, Error> {
        #[derive(Deserialize)]
        struct Account {
            balance: String,
            nonce: u64,
        }
        let (status, text) = self.get(&format!("/v2/accounts/{principal}?proof=0"))?;
        if status != 200 {
            return Err(Self::http(status, &text));
        }
        let a: Account = decode("/v2/accounts", &text)?;
        let balance = u128::from_str_radix(a.balance.trim_start_matches("0x"), 16)
            .map_err(|_| Error::Decode(format!("balance {:?} is not hex", a.balance)))?;
        Ok(AccountInfo {
            balance,
            nonce: a.nonce,
        })
    }

    fn broadcast_transaction(&self, raw: &[u8]) -> Result<StacksTxid, Error> {
        let started = std::time::Instant::now();
        let mut resp = self
            .agent
            .post(format!("{}/v2/transactions", self.url))
            .header("Content-Type", "application/octet-stream")
            .send(raw)
            .map_err(transport(&self.url, started))?;
        let (status, text) = Self::read(&mut resp, started)?;
        match status {
            200 => {
                let txid: String = decode("/v2/transactions", &text)?;
                txid.parse()
                    .map_err(|e| Error::Decode(format!("txid {txid:?}: {e}")))
            }
            400 => Err(Self::rejection(&text)),
            s => Err(Self::http(s, &text)),
        }
    }

    fn estimate_fee(&self, payload: &[u8], estimated_len: u64) -> Result<FeeEstimates, Error> {
        #[derive(Deserialize)]
        struct Estimate {
            fee: u64,
        }
        #[derive(Deserialize)]
        struct Estimates {
            estimations: Vec<Estimate>,
        }
        let body =
            json!({"transaction_payload": hex::encode(payload), "estimated_len": estimated_len});
        let (status, text) = self.post_json("/v2/fees/transaction", &body)?;
        match status {
            200 => {
                let e: Estimates = decode("/v2/fees/transaction", &text)?;
                match e.estimations.as_slice() {
                    [low, middle, high] => Ok(FeeEstimates {
                        low: low.fee,
                        middle: middle.fee,
                        high: high.fee,
                    }),
                    other => Err(Error::Decode(format!(
                        "{} fee estimations, expected 3",
                        other.len()
                    ))),
                }
            }
            400 if text.contains("NoEstimateAvailable") => Err(Error::NoEstimate),
            s => Err(Self::http(s, &text)),
        }
    }

    fn call_read(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
    ) -> Result<Value, Error> {
        self.call_read_tip(contract, function, args, sender, None)
    }

    fn block_at_depth(&self, depth: u32) -> Result<Option<[u8; 32]>, Error> {
        if depth == 0 {
            return self.get_info().map(|i| Some(i.stacks_tip));
        }
        if depth > MAX_HEADERS {
            return Err(Error::Rejected(Rejection {
                reason: Rejection::MALFORMED.to_owned(),
                reason_data: Some(json!({
                    "message": format!("depth {depth} is beyond the {MAX_HEADERS} headers a stacks-node serves at once")
                })),
            }));
        }
        let (status, text) = self.get(&format!("/v2/headers/{depth}"))?;
        match status {
            200 => {}
            // The node's limit or a bad path: plain text, permanent.
            400 => return Err(Self::rejection(&text)),
            s => return Err(Self::http(s, &text)),
        }
        let headers: Vec<HeaderEntry> = decode("/v2/headers", &text)?;
        let want = depth as usize;
        if headers.len() < want {
            // Fewer headers than asked: the chain is not that long.
            return Ok(None);
        }
        if headers.len() > want {
            return Err(Error::Decode(format!(
                "/v2/headers/{depth} answered {} headers",
                headers.len()
            )));
        }
        // Newest first, each one's parent the next one: a list that does not
        // chain is a broken answer, never a block id to read at.
        let mut ids = Vec::with_capacity(headers.len());
        for h in &headers {
            ids.push((
                h.index_block_hash()?,
                hex32("parent_block_id", &h.parent_block_id)?,
            ));
        }
        for pair in ids.windows(2) {
            if pair[0].1 != pair[1].0 {
                return Err(Error::Decode(format!(
                    "/v2/headers/{depth}: header {} is not the parent of {}",
                    hex::encode(pair[1].0),
                    hex::encode(pair[0].0)
                )));
            }
        }
        Ok(ids.last().map(|(_, parent)| *parent))
    }

    fn call_read_at(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
        tip: &[u8; 32],
    ) -> Result<Value, Error> {
        self.call_read_tip(contract, function, args, sender, Some(tip))
    }
}
