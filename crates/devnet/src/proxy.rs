//! A lying HTTP proxy, for tests of what a signer does when its own node
//! lies to it.
//!
//! A [`Proxy`] listens on `127.0.0.1` (a free port), forwards every request
//! to an upstream node (bitcoind or stacks-node, real or emulated) and hands
//! the answer back — unless a test has set a [`Lie`] for the request: per
//! JSON-RPC method (bitcoind) or per path (stacks-node). Lies are switched
//! on and off while the proxy runs. The proxy answers one request at a time
//! on one thread, reads at most [`MAX_BODY`] bytes each way, waits at most
//! its timeout for the upstream, and stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tiny_http::{Header, Request, Response, Server};

use crate::server::lock;

/// The most a request or an answer may hold (a full block is under 4 MB, ×2
/// in hex).
pub const MAX_BODY: u64 = 16 << 20;

/// What the upstream answered (or what a lie answers instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// A `200 OK` JSON answer.
    pub fn json(body: &Json) -> Answer {
        Answer {
            status: 200,
            body: body.to_string(),
        }
    }

    /// A stacks-node `call-read` success whose result is `value`.
    pub fn call_read(value: &stacks_wire::Value) -> Answer {
        Answer::json(&json!({"okay": true, "result": value.to_hex()}))
    }

    /// The body parsed as JSON, `Null` when it is not JSON.
    pub fn body_json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The path, with its query (`/v2/contracts/call-read/…?tip=…`).
    pub path: String,
    /// The body, as sent.
    pub body: Vec<u8>,
    /// The JSON-RPC method, when the body is one JSON-RPC request.
    pub rpc_method: Option<String>,
    /// The JSON-RPC params (`Null` otherwise).
    pub rpc_params: Json,
}

/// A rewrite of JSON-RPC answers: given the call and the upstream's whole
/// reply (`{"result": …, "error": …, "id": …}`), returns the reply to send
/// (its `id` is set to the request's). See [`rpc_result`] and [`rpc_error`].
pub type RpcLie = Arc<dyn Fn(&Call, Json) -> Json + Send + Sync>;

/// A rewrite of any answer: given the call and what the upstream answered,
/// returns what to answer instead.
pub type PathLie = Arc<dyn Fn(&Call, Answer) -> Answer + Send + Sync>;

/// A rule of a [`Proxy`].
#[derive(Clone)]
pub enum Lie {
    /// Rewrites the reply to JSON-RPC method `method`.
    Rpc {
        /// The method (`getrawtransaction`, `getblock`, `gettxout`, …).
        method: String,
        /// The rewrite.
        lie: RpcLie,
    },
    /// Rewrites the answer to every request whose path (without its query)
    /// contains `pattern` (`/get-burn`, `/call-read/`, `/v2/info`).
    Path {
        /// The part of the path to match.
        pattern: String,
        /// The rewrite.
        lie: PathLie,
    },
}

impl std::fmt::Debug for Lie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lie::Rpc { method, .. } => write!(f, "Lie::Rpc({method})"),
            Lie::Path { pattern, .. } => write!(f, "Lie::Path({pattern})"),
        }
    }
}

impl Lie {
    /// Rewrites the reply to JSON-RPC `method` with `lie`.
    pub fn rpc(method: &str, lie: impl Fn(&Call, Json) -> Json + Send + Sync + 'static) -> Lie {
        Lie::Rpc {
            method: method.to_owned(),
            lie: Arc::new(lie),
        }
    }

    /// Rewrites answers to paths containing `pattern` with `lie`.
    pub fn path(
        pattern: &str,
        lie: impl Fn(&Call, Answer) -> Answer + Send + Sync + 'static,
    ) -> Lie {
        Lie::Path {
            pattern: pattern.to_owned(),
            lie: Arc::new(lie),
        }
    }

    fn key(&self) -> String {
        match self {
            Lie::Rpc { method, .. } => format!("rpc:{method}"),
            Lie::Path { pattern, .. } => format!("path:{pattern}"),
        }
    }

    fn matches(&self, call: &Call) -> bool {
        match self {
            Lie::Rpc { method, .. } => call.rpc_method.as_deref() == Some(method),
            Lie::Path { pattern, .. } => {
                let path = call.path.split('?').next().unwrap_or("");
                path.contains(pattern.as_str())
            }
        }
    }
}

/// A JSON-RPC reply whose result is `result`.
pub fn rpc_result(result: Json) -> Json {
    json!({"result": result, "error": null, "id": null})
}

/// A JSON-RPC error reply (`-5`: no such transaction or block).
pub fn rpc_error(code: i64, message: &str) -> Json {
    json!({"result": null, "error": {"code": code, "message": message}, "id": null})
}

#[derive(Default)]
struct Rules {
    lies: Vec<Lie>,
    /// Answers each lie gave, by [`Lie::key`].
    told: HashMap<String, usize>,
    /// Requests forwarded, lied about or not.
    calls: usize,
}

/// A proxy in front of one node; see the module documentation.
pub struct Proxy {
    rules: Arc<Mutex<Rules>>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
    upstream: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Proxy {
    /// Starts a proxy for `upstream` (`http://host:port`), waiting at most
    /// `timeout` for each upstream answer.
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(upstream: &str, timeout: Duration) -> std::io::Result<Proxy> {
        let server = Arc::new(
            Server::from_listener(relay::nodelay_listener("127.0.0.1:0")?, None)
                .map_err(std::io::Error::other)?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("no IP address"))?;
        let rules = Arc::new(Mutex::new(Rules::default()));
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let up = upstream.trim_end_matches('/').to_owned();
        let (s, r, u) = (server.clone(), rules.clone(), up.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                serve(req, &agent, &u, &r);
            }
        });
        Ok(Proxy {
            rules,
            server,
            thread: Some(thread),
            addr,
            upstream: up,
        })
    }

    /// Returns `http://ADDR`: give this to the client instead of the node's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets `lie`, replacing one for the same method or path pattern.
    pub fn set(&self, lie: Lie) {
        let mut r = lock(&self.rules);
        let key = lie.key();
        r.lies.retain(|l| l.key() != key);
        r.lies.push(lie);
    }

    /// Stops lying about JSON-RPC method `method`.
    pub fn clear_rpc(&self, method: &str) {
        let key = format!("rpc:{method}");
        lock(&self.rules).lies.retain(|l| l.key() != key);
    }

    /// Stops lying about paths containing `pattern`.
    pub fn clear_path(&self, pattern: &str) {
        let key = format!("path:{pattern}");
        lock(&self.rules).lies.retain(|l| l.key() != key);
    }

    /// Stops every lie: the proxy forwards faithfully again.
    pub fn clear(&self) {
        lock(&self.rules).lies.clear();
    }

    /// How many answers the lie for JSON-RPC `method` rewrote.
    pub fn told_rpc(&self, method: &str) -> usize {
        let key = format!("rpc:{method}");
        lock(&self.rules).told.get(&key).copied().unwrap_or(0)
    }

    /// How many answers the lie for paths containing `pattern` rewrote.
    pub fn told_path(&self, pattern: &str) -> usize {
        let key = format!("path:{pattern}");
        lock(&self.rules).told.get(&key).copied().unwrap_or(0)
    }

    /// How many requests the proxy has answered.
    pub fn calls(&self) -> usize {
        lock(&self.rules).calls
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(req: Request, a: Answer) {
    let json = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut resp = Response::from_string(a.body).with_status_code(a.status);
    if let Ok(h) = json {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
}

fn header(req: &Request, name: &'static str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
}

/// Forwards `call` upstream; a failure to reach it is a `502`.
fn forward(
    agent: &ureq::Agent,
    upstream: &str,
    method: &tiny_http::Method,
    call: &Call,
    headers: &[(&'static str, String)],
) -> Answer {
    let url = format!("{upstream}{}", call.path);
    let sent = match method {
        tiny_http::Method::Get => {
            let mut r = agent.get(&url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(&url);
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            r.send(&call.body[..])
        }
    };
    let read = sent.and_then(|mut resp| {
        let status = resp.status().as_u16();
        resp.body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map(|body| Answer { status, body })
    });
    read.unwrap_or_else(|e| Answer {
        status: 502,
        body: format!("proxy: upstream {upstream}: {e}"),
    })
}

fn serve(mut req: Request, agent: &ureq::Agent, upstream: &str, rules: &Mutex<Rules>) {
    let mut body = Vec::new();
    let read = std::io::Read::read_to_end(
        &mut std::io::Read::take(req.as_reader(), MAX_BODY + 1),
        &mut body,
    );
    if read.is_err() || body.len() as u64 > MAX_BODY {
        respond(
            req,
            Answer {
                status: 413,
                body: "proxy: request unreadable or too large".into(),
            },
        );
        return;
    }
    let parsed: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
    let call = Call {
        path: req.url().to_owned(),
        rpc_method: parsed
            .get("method")
            .and_then(Json::as_str)
            .map(str::to_owned),
        rpc_params: parsed.get("params").cloned().unwrap_or(Json::Null),
        body,
    };
    let headers: Vec<(&'static str, String)> = ["Content-Type", "Authorization"]
        .into_iter()
        .filter_map(|h| header(&req, h).map(|v| (h, v)))
        .collect();
    let method = req.method().clone();
    let upstream_answer = forward(agent, upstream, &method, &call, &headers);
    // The lie is looked up after the upstream answered, so a lie switched
    // meanwhile applies to this answer already.
    let lie = {
        let mut r = lock(rules);
        r.calls += 1;
        let lie = r.lies.iter().find(|l| l.matches(&call)).cloned();
        if let Some(l) = &lie {
            *r.told.entry(l.key()).or_default() += 1;
        }
        lie
    };
    let answer = match lie {
        None => upstream_answer,
        Some(Lie::Path { lie, .. }) => lie(&call, upstream_answer),
        Some(Lie::Rpc { lie, .. }) => {
            let reply = lie(&call, upstream_answer.body_json());
            let mut reply = match reply {
                Json::Object(m) => m,
                other => {
                    let mut m = serde_json::Map::new();
                    m.insert("result".into(), other);
                    m.insert("error".into(), Json::Null);
                    m
                }
            };
            reply.insert("id".into(), parsed.get("id").cloned().unwrap_or(Json::Null));
            // bitcoind answers an error with a 500 (JSON-RPC 1.0), a result with a 200.
            let failed = reply.get("error").is_some_and(|e| !e.is_null());
            Answer {
                status: if failed { 500 } else { 200 },
                body: Json::Object(reply).to_string(),
            }
        }
    };
    respond(req, answer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin_node_client::{Auth, BitcoinNode, UreqBitcoinNode};
    use stacks_node_client::{StacksNode, UreqStacksNode};

    use crate::{BitcoinEmulator, BitcoinState, StacksEmulator, StacksState};

    fn bitcoind() -> BitcoinEmulator {
        let mut s = BitcoinState::new();
        for _ in 0..3 {
            s.mine(&crate::peg::burn_script());
        }
        BitcoinEmulator::start("127.0.0.1:0", s).expect("emulator")
    }

    #[test]
    fn forwards_faithfully_until_told_to_lie_and_again_when_cleared() {
        let node = bitcoind();
        let proxy = Proxy::start(&node.url(), Duration::from_secs(2)).expect("proxy");
        let via = UreqBitcoinNode::new(&proxy.url(), Auth::None, Duration::from_secs(2));
        let direct = UreqBitcoinNode::new(&node.url(), Auth::None, Duration::from_secs(2));
        assert_eq!(via.get_block_count().ok(), direct.get_block_count().ok());
        assert_eq!(via.get_block_count().ok(), Some(3));

        proxy.set(Lie::rpc("getblockcount", |_, _| rpc_result(json!(900))));
        assert_eq!(via.get_block_count().ok(), Some(900));
        assert_eq!(
            direct.get_block_count().ok(),
            Some(3),
            "the node is untouched"
        );
        assert_eq!(proxy.told_rpc("getblockcount"), 1);
        // Other methods still pass through.
        assert_eq!(via.get_block_hash(2).ok(), direct.get_block_hash(2).ok());

        proxy.set(Lie::rpc("getblockcount", |_, _| {
            rpc_error(-28, "Loading block index")
        }));
        assert!(via.get_block_count().is_err(), "a lie can be an error");

        proxy.clear_rpc("getblockcount");
        assert_eq!(via.get_block_count().ok(), Some(3));
        assert_eq!(proxy.told_rpc("getblockcount"), 2);
        assert!(proxy.calls() >= 6);
    }

    #[test]
    fn an_rpc_lie_sees_the_params_and_the_real_reply() {
        let node = bitcoind();
        let proxy = Proxy::start(&node.url(), Duration::from_secs(2)).expect("proxy");
        let via = UreqBitcoinNode::new(&proxy.url(), Auth::None, Duration::from_secs(2));
        // Hides block 2 only: the lie reads the height asked and the real answer.
        proxy.set(Lie::rpc("getblockhash", |call, real| {
            if call.rpc_params.get(0) == Some(&json!(2)) {
                rpc_error(-8, "Block height out of range")
            } else {
                real
            }
        }));
        assert!(via.get_block_hash(1).is_ok());
        assert!(via.get_block_hash(2).is_err(), "block 2 hidden");
        assert!(via.get_block_hash(3).is_ok());
    }

    #[test]
    fn a_path_lie_rewrites_stacks_node_answers() {
        let contract: stacks_wire::ContractId = "ST000000000000000000002AMW42H.sbtc-alpha"
            .parse()
            .expect("id");
        let node = StacksEmulator::start("127.0.0.1:0", StacksState::new(contract.clone()))
            .expect("emulator");
        let proxy = Proxy::start(&node.url(), Duration::from_secs(2)).expect("proxy");
        let via = UreqStacksNode::new(&proxy.url(), Duration::from_secs(2));
        let sender: stacks_wire::PrincipalData = contract.address.into();
        let txid = <bitcoin::Txid as bitcoin::hashes::Hash>::from_byte_array([7; 32]);
        let arg = peg_ops::contract::txid_arg(&txid);
        let call = |f: &str| via.call_read(&contract, f, std::slice::from_ref(&arg), &sender);
        assert_eq!(
            call("was-burned").ok(),
            Some(stacks_wire::Value::Bool(false))
        );

        proxy.set(Lie::path("/was-burned", |_, _| {
            Answer::call_read(&stacks_wire::Value::Bool(true))
        }));
        assert_eq!(
            call("was-burned").ok(),
            Some(stacks_wire::Value::Bool(true))
        );
        assert_eq!(
            call("was-minted").ok(),
            Some(stacks_wire::Value::Bool(false)),
            "other functions pass"
        );
        assert_eq!(proxy.told_path("/was-burned"), 1);
        proxy.clear_path("/was-burned");
        assert_eq!(
            call("was-burned").ok(),
            Some(stacks_wire::Value::Bool(false))
        );
    }

    #[test]
    fn an_unreachable_upstream_is_a_502_and_drop_stops_the_proxy() {
        let node = bitcoind();
        let url = node.url();
        drop(node);
        let proxy = Proxy::start(&url, Duration::from_millis(500)).expect("proxy");
        let via = UreqBitcoinNode::new(&proxy.url(), Auth::None, Duration::from_secs(2));
        match via.get_block_count() {
            Err(bitcoin_node_client::Error::Http { status }) => assert_eq!(status, 502),
            other => panic!("expected a 502, got {other:?}"),
        }
        let purl = proxy.url();
        drop(proxy);
        let gone = UreqBitcoinNode::new(&purl, Auth::None, Duration::from_millis(500));
        assert!(
            gone.get_block_count().is_err(),
            "nothing listens after drop"
        );
    }
}
