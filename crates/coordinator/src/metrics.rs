//! What the loop counts, and the operator's HTTP endpoint while `run` is
//! active: `/health`, `/status` (JSON, with the newest recorded state
//! changes), `/metrics` (Prometheus text), `/attestations` (JSON: each
//! signer's newest signed attestation of the peg wallet key, the envelope as
//! the signer sealed it, for users' tools to check a threshold of signers
//! before they pay into the key) and `/ops/{txid}` (JSON: one op, its amount,
//! recipient and history; see [`op_json`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::Txid;
use log::{info, warn};
use peg_ops::PegOp;
use peg_queue::{OpEvent, OpState, PegQueue, QueuedOp};

/// Counters the loop updates; cheap to share between threads.
#[derive(Debug, Default)]
pub struct Metrics {
    /// State changes stored.
    pub steps: AtomicU64,
    /// Steps that failed and will be retried.
    pub step_failures: AtomicU64,
    /// Stacks broadcasts the node refused or that failed.
    pub stacks_broadcast_errors: AtomicU64,
    /// Bitcoin broadcasts the node refused or that failed.
    pub bitcoin_broadcast_errors: AtomicU64,
    /// Signing rounds completed.
    pub signing_rounds: AtomicU64,
    /// Total time of completed signing rounds, microseconds.
    pub signing_micros: AtomicU64,
    /// Unix time of the last completed tick.
    pub last_tick_unix: AtomicU64,
    /// Sweeps of old keys' coins broadcast.
    pub sweeps: AtomicU64,
    /// Our Stacks transactions pending (signed, not confirmed) when the loop
    /// last wanted to sign one.
    pub stacks_pending_transactions: AtomicU64,
    /// Times the loop waited instead of signing, at the pending limit.
    pub stacks_pending_limit_waits: AtomicU64,
    /// Stuck Stacks transactions replaced by a same-nonce, higher-fee one.
    pub stacks_replacements: AtomicU64,
}

impl Metrics {
    /// Records a completed signing round.
    pub fn signing_round(&self, took: Duration) {
        self.signing_rounds.fetch_add(1, Ordering::Relaxed);
        self.signing_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records that a tick completed now.
    pub fn tick(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_tick_unix.store(now, Ordering::Relaxed);
    }
}

/// What `/status` and `/metrics` show besides the counters; the loop's owner
/// refreshes it after each tick.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatusSnapshot {
    /// The last fully scanned Bitcoin height.
    pub last_scanned_height: Option<u64>,
    /// Operations per state.
    pub ops: BTreeMap<String, u64>,
    /// The peg wallet's aggregate key.
    pub aggregate_key: Option<String>,
    /// The peg wallet address.
    pub peg_wallet_address: Option<String>,
    /// The coordinator's Stacks address.
    pub stacks_address: String,
    /// Ops waiting for something the operator should see (a fee shortfall
    /// after the burn, a burn no longer final), by txid: why.
    pub waiting: BTreeMap<String, String>,
    /// The newest recorded state changes of all ops, newest first (at most
    /// [`RECENT_EVENTS`]).
    pub recent_events: Vec<OpEvent>,
    /// Each signer's newest attestation of the peg wallet key, served on
    /// `/attestations` (not in `/status`).
    #[serde(skip)]
    pub attestations: Vec<frost_coordinator::SignerAttestation>,
}

/// How many of the newest state changes `/status` shows.
pub const RECENT_EVENTS: usize = 50;

/// Returns the recipient of an op as text: a peg-in's Stacks principal, a
/// peg-out request's Bitcoin address.
pub fn recipient(op: &PegOp) -> String {
    match op {
        PegOp::PegIn(p) => p.recipient.to_string(),
        PegOp::PegOutRequest(r) => r.recipient.to_string(),
    }
}

/// Returns the JSON `/ops/{txid}` serves for an op and its history, exactly
/// `{"txid", "kind", "state", "reason"?, "amount_sats", "recipient",
/// "events": [{"at_unix", "state", "stacks_txid"?, "bitcoin_txid"?}]}`:
/// `kind` is `peg_in` or `peg_out_request`, `state` the state's name,
/// `reason` only for `rejected` and `failed`, `recipient` a peg-in's Stacks
/// principal or a request's Bitcoin address, the events oldest first with
/// the txids only where the state carried one (users' `sbtc status` reads
/// this shape).
pub fn op_json(q: &QueuedOp, events: &[OpEvent]) -> serde_json::Value {
    let mut v = serde_json::json!({
        "txid": q.op.txid().to_string(),
        "kind": q.op.kind(),
        "state": q.state.name(),
        "amount_sats": q.op.amount().to_sat(),
        "recipient": recipient(&q.op),
        "events": events.iter().map(|e| {
            let mut ev = serde_json::json!({"at_unix": e.at_unix, "state": e.state});
            if let Some(t) = e.stacks_txid {
                ev["stacks_txid"] = t.to_string().into();
            }
            if let Some(t) = e.bitcoin_txid {
                ev["bitcoin_txid"] = t.to_string().into();
            }
            ev
        }).collect::<Vec<_>>(),
    });
    if let Some(r) = q.state.reason() {
        v["reason"] = r.into();
    }
    v
}

/// Logs, at INFO, the txids and amounts of a step worth keeping in the log:
/// a signed mint, burn, fulfilment or refund, and an op reaching `done`
/// (with the Stacks and Bitcoin txids its history holds). Other states log
/// nothing here.
pub fn log_progress<Q: PegQueue + ?Sized>(queue: &Q, op: &PegOp, state: &OpState) {
    let (kind, txid, amount, to) = (op.kind(), op.txid(), op.amount().to_sat(), recipient(op));
    match state {
        OpState::StacksTxSigned { tx } => {
            let what = match op {
                PegOp::PegIn(_) => format!("mint of {amount} sats to {to}"),
                PegOp::PegOutRequest(_) => format!("burn of {amount} sats (paid out to {to})"),
            };
            info!(
                "{kind} {txid}: {what} signed: stacks tx {} (nonce {}, fee {} µSTX)",
                tx.txid, tx.nonce, tx.fee
            );
        }
        OpState::BitcoinTxSigned { tx } => info!(
            "{kind} {txid}: fulfilment of {amount} sats to {to} signed: bitcoin tx {}",
            tx.compute_txid()
        ),
        OpState::RefundSigned { tx } => info!(
            "{kind} {txid}: refund signed: bitcoin tx {} (pays {} sats)",
            tx.compute_txid(),
            tx.output.iter().map(|o| o.value.to_sat()).sum::<u64>()
        ),
        OpState::Done => {
            let history = queue.history(&txid).unwrap_or_else(|e| {
                warn!("{kind} {txid}: its history cannot be read: {e}");
                Vec::new()
            });
            let stacks = history.iter().rev().find_map(|e| e.stacks_txid);
            let bitcoin = history.iter().rev().find_map(|e| e.bitcoin_txid);
            let show = |t: Option<String>| t.unwrap_or_else(|| "unknown".into());
            match op {
                PegOp::PegIn(_) => info!(
                    "{kind} {txid} done: {amount} sats minted to {to}, mint stacks tx {}",
                    show(stacks.map(|t| t.to_string()))
                ),
                PegOp::PegOutRequest(_) => info!(
                    "{kind} {txid} done: {amount} sats burned and paid to {to}, burn stacks tx {}, payout bitcoin tx {}",
                    show(stacks.map(|t| t.to_string())),
                    show(bitcoin.map(|t| t.to_string()))
                ),
            }
        }
        _ => {}
    }
}

/// Answers `GET /ops/{txid}` from `queue`: the op's JSON ([`op_json`]), or a
/// 404 with `{"error"}` for a malformed or unknown txid (500 when the queue
/// fails).
fn op_answer(queue: &dyn PegQueue, path: &str) -> (u16, String) {
    let error = |code: u16, e: String| (code, serde_json::json!({ "error": e }).to_string());
    let raw = path.trim_start_matches("/ops/");
    let Ok(txid) = raw.parse::<Txid>() else {
        return error(
            404,
            format!("malformed txid {raw:?}: 64 hex digits expected"),
        );
    };
    match queue.get(&txid) {
        Ok(Some(q)) => match queue.history(&txid) {
            Ok(events) => (
                200,
                serde_json::to_string_pretty(&op_json(&q, &events)).unwrap_or_default(),
            ),
            Err(e) => error(500, e.to_string()),
        },
        Ok(None) => error(404, format!("no operation {txid}")),
        Err(e) => error(500, e.to_string()),
    }
}

/// Renders the Prometheus text exposition.
pub fn render_metrics(m: &Metrics, s: &StatusSnapshot) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    gauge(
        "sbtc_last_scanned_height",
        "Last fully scanned Bitcoin height.",
        "gauge",
        s.last_scanned_height
            .map_or("NaN".into(), |h| h.to_string()),
    );
    gauge(
        "sbtc_steps_total",
        "Operation state changes stored.",
        "counter",
        get(&m.steps),
    );
    gauge(
        "sbtc_step_failures_total",
        "Steps that failed and will be retried.",
        "counter",
        get(&m.step_failures),
    );
    gauge(
        "sbtc_stacks_broadcast_errors_total",
        "Stacks broadcasts refused or failed.",
        "counter",
        get(&m.stacks_broadcast_errors),
    );
    gauge(
        "sbtc_stacks_pending_transactions",
        "The coordinator's Stacks transactions signed and not yet confirmed.",
        "gauge",
        get(&m.stacks_pending_transactions),
    );
    gauge(
        "sbtc_stacks_pending_limit_waits_total",
        "Times the loop waited for confirmations at the pending-transaction limit.",
        "counter",
        get(&m.stacks_pending_limit_waits),
    );
    gauge(
        "sbtc_stacks_replacements_total",
        "Stuck Stacks transactions replaced by a same-nonce, higher-fee one.",
        "counter",
        get(&m.stacks_replacements),
    );
    gauge(
        "sbtc_bitcoin_broadcast_errors_total",
        "Bitcoin broadcasts refused or failed.",
        "counter",
        get(&m.bitcoin_broadcast_errors),
    );
    gauge(
        "sbtc_signing_rounds_total",
        "FROST signing rounds completed.",
        "counter",
        get(&m.signing_rounds),
    );
    let secs = m.signing_micros.load(Ordering::Relaxed) as f64 / 1e6;
    gauge(
        "sbtc_signing_round_seconds_total",
        "Time spent in completed signing rounds.",
        "counter",
        format!("{secs}"),
    );
    gauge(
        "sbtc_sweeps_total",
        "Sweeps of coins at rotated-away keys' addresses broadcast.",
        "counter",
        get(&m.sweeps),
    );
    gauge(
        "sbtc_last_tick_timestamp_seconds",
        "Unix time of the last completed loop tick.",
        "gauge",
        get(&m.last_tick_unix),
    );
    let _ = writeln!(
        out,
        "# HELP sbtc_ops Operations per state.\n# TYPE sbtc_ops gauge"
    );
    for (state, n) in &s.ops {
        let _ = writeln!(out, "sbtc_ops{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP sbtc_ops_waiting Operations waiting with a reason shown in /status.\n# TYPE sbtc_ops_waiting gauge\nsbtc_ops_waiting {}",
        s.waiting.len()
    );
    let _ = writeln!(
        out,
        "# HELP sbtc_signer_attestations Signers whose attestation of the peg wallet key is served.\n# TYPE sbtc_signer_attestations gauge\nsbtc_signer_attestations {}",
        s.attestations.len()
    );
    out
}

/// The running endpoint; stops when dropped.
pub struct StatusServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl StatusServer {
    /// Serves `/health`, `/status`, `/metrics` and `/attestations` on `addr`.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub fn start(
        addr: &str,
        metrics: Arc<Metrics>,
        status: Arc<Mutex<StatusSnapshot>>,
    ) -> std::io::Result<StatusServer> {
        Self::serve(addr, metrics, status, None)
    }

    /// Serves what [`StatusServer::start`] does and `/ops/{txid}`, read from
    /// `queue` (a connection of the server's own: reading is safe while the
    /// loop writes).
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub fn start_with_queue(
        addr: &str,
        metrics: Arc<Metrics>,
        status: Arc<Mutex<StatusSnapshot>>,
        queue: Box<dyn PegQueue + Send>,
    ) -> std::io::Result<StatusServer> {
        Self::serve(addr, metrics, status, Some(queue))
    }

    fn serve(
        addr: &str,
        metrics: Arc<Metrics>,
        status: Arc<Mutex<StatusSnapshot>>,
        queue: Option<Box<dyn PegQueue + Send>>,
    ) -> std::io::Result<StatusServer> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("status endpoint is not on an IP address"))?;
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let snapshot = status.lock().map(|g| g.clone()).unwrap_or_default();
                let path = req.url().split('?').next().unwrap_or_default().to_owned();
                let (code, ctype, body) = match (req.method(), path.as_str()) {
                    (tiny_http::Method::Get, "/health") => (200, "text/plain", "ok\n".to_owned()),
                    (tiny_http::Method::Get, "/status") => (
                        200,
                        "application/json",
                        serde_json::to_string_pretty(&snapshot).unwrap_or_default(),
                    ),
                    (tiny_http::Method::Get, "/metrics") => (
                        200,
                        "text/plain; version=0.0.4",
                        render_metrics(&metrics, &snapshot),
                    ),
                    (tiny_http::Method::Get, "/attestations") => (
                        200,
                        "application/json",
                        serde_json::to_string_pretty(&snapshot.attestations).unwrap_or_default(),
                    ),
                    (tiny_http::Method::Get, p) if p.starts_with("/ops/") => match &queue {
                        Some(q) => {
                            let (code, body) = op_answer(q.as_ref(), p);
                            (code, "application/json", body)
                        }
                        None => (
                            404,
                            "application/json",
                            serde_json::json!({"error": "this endpoint serves no ops"}).to_string(),
                        ),
                    },
                    _ => (
                        404,
                        "text/plain",
                        "try /health, /status, /metrics, /attestations or /ops/{txid}\n".to_owned(),
                    ),
                };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    .expect("ASCII header");
                if let Err(e) = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header),
                ) {
                    warn!("status endpoint: {e}");
                }
            }
        });
        info!(
            "status endpoint on http://{addr} (/health, /status, /metrics, /attestations, /ops/{{txid}})"
        );
        Ok(StatusServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Returns the address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_and_metrics_are_prometheus_text() {
        let m = Arc::new(Metrics::default());
        m.steps.fetch_add(3, Ordering::Relaxed);
        m.signing_round(Duration::from_millis(1500));
        let status = Arc::new(Mutex::new(StatusSnapshot {
            last_scanned_height: Some(812),
            ops: [("done".to_owned(), 2u64), ("rejected".to_owned(), 1)]
                .into_iter()
                .collect(),
            waiting: [("ab".to_owned(), "fee shortfall".to_owned())]
                .into_iter()
                .collect(),
            attestations: vec![frost_coordinator::SignerAttestation {
                signer: 2,
                contract: "ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0.sbtc-alpha".into(),
                key: bitcoin::secp256k1::SecretKey::from_slice(&[3; 32])
                    .unwrap()
                    .public_key(&bitcoin::secp256k1::Secp256k1::new()),
                time: 1_700_000_000,
                envelope: vec![0xde, 0xad],
            }],
            ..StatusSnapshot::default()
        }));
        let s = StatusServer::start("127.0.0.1:0", m, status).unwrap();
        let get = |path: &str| {
            let mut r = ureq::get(format!("http://{}{path}", s.addr()))
                .call()
                .unwrap();
            r.body_mut().read_to_string().unwrap()
        };
        assert_eq!(get("/health"), "ok\n");
        let v: serde_json::Value = serde_json::from_str(&get("/status")).unwrap();
        assert_eq!(v["last_scanned_height"], 812);
        assert_eq!(v["ops"]["done"], 2);
        assert_eq!(v["waiting"]["ab"], "fee shortfall");
        assert!(
            v.get("attestations").is_none(),
            "envelopes only on /attestations"
        );
        let a: serde_json::Value = serde_json::from_str(&get("/attestations")).unwrap();
        assert_eq!(a[0]["signer"], 2);
        assert_eq!(a[0]["envelope"], "dead", "the raw envelope, hex");
        assert_eq!(a[0]["time"], 1_700_000_000);
        let metrics = get("/metrics");
        for line in [
            "sbtc_last_scanned_height 812",
            "sbtc_steps_total 3",
            "sbtc_signing_rounds_total 1",
            "sbtc_signing_round_seconds_total 1.5",
            "sbtc_ops{state=\"done\"} 2",
            "sbtc_ops{state=\"rejected\"} 1",
            "sbtc_ops_waiting 1",
            "sbtc_signer_attestations 1",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{line} missing from\n{metrics}"
            );
        }
        assert!(ureq::get(format!("http://{}/nope", s.addr()))
            .call()
            .is_err());
    }

    #[test]
    fn ops_endpoint_serves_the_op_and_its_history_or_a_json_404() {
        use crate::testing::{peg_out, txid, ALLOWED_BTC};
        let op = peg_out(1, 5, ALLOWED_BTC, 20_000_000);
        let id = op.txid();
        let payout = txid(9);
        let stacks = stacks_wire::StacksTxid([7; 32]);
        let mut q = peg_queue::MockPegQueue::new();
        q.expect_get().returning(move |t| {
            Ok((*t == id).then(|| QueuedOp {
                op: op.clone(),
                state: OpState::Failed {
                    reason: "operator: stuck".into(),
                },
                attempts: 2,
                last_error: None,
                waiting: None,
            }))
        });
        q.expect_history().returning(move |t| {
            let e = |seq, state: &str, s, b| OpEvent {
                txid: *t,
                seq,
                at_unix: 1_700_000_000 + seq,
                state: state.into(),
                stacks_txid: s,
                bitcoin_txid: b,
                reason: None,
            };
            Ok(vec![
                e(1, "detected", None, None),
                e(2, "stacks_tx_broadcast", Some(stacks), None),
                e(3, "bitcoin_tx_signed", None, Some(payout)),
                e(4, "failed", None, None),
            ])
        });
        let s = StatusServer::start_with_queue(
            "127.0.0.1:0",
            Arc::new(Metrics::default()),
            Arc::new(Mutex::new(StatusSnapshot::default())),
            Box::new(q),
        )
        .unwrap();
        let get = |path: &str| {
            let r = ureq::get(format!("http://{}{path}", s.addr()))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .unwrap();
            let code = r.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
            (code, body)
        };
        let (code, v) = get(&format!("/ops/{id}"));
        assert_eq!(code, 200);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "amount_sats",
                "events",
                "kind",
                "reason",
                "recipient",
                "state",
                "txid"
            ]
        );
        assert_eq!(v["txid"], id.to_string());
        assert_eq!(v["kind"], "peg_out_request");
        assert_eq!(v["state"], "failed");
        assert_eq!(v["reason"], "operator: stuck");
        assert_eq!(v["amount_sats"], 20_000_000);
        assert_eq!(v["recipient"], ALLOWED_BTC);
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0],
            serde_json::json!({"at_unix": 1_700_000_001u64, "state": "detected"})
        );
        assert_eq!(
            events[1],
            serde_json::json!({"at_unix": 1_700_000_002u64, "state": "stacks_tx_broadcast", "stacks_txid": stacks.to_string()})
        );
        assert_eq!(events[2]["bitcoin_txid"], payout.to_string());
        // With a query string too.
        assert_eq!(get(&format!("/ops/{id}?x=1")).0, 200);
        let (code, v) = get(&format!("/ops/{}", txid(3)));
        assert_eq!(code, 404);
        assert!(v["error"].as_str().unwrap().contains("no operation"), "{v}");
        let (code, v) = get("/ops/not-a-txid");
        assert_eq!(code, 404);
        assert!(v["error"].as_str().unwrap().contains("malformed"), "{v}");
    }

    #[test]
    fn status_carries_the_recent_events() {
        let e = OpEvent {
            txid: crate::testing::txid(4),
            seq: 9,
            at_unix: 1_700_000_000,
            state: "done".into(),
            stacks_txid: None,
            bitcoin_txid: Some(crate::testing::txid(5)),
            reason: None,
        };
        let s = StatusServer::start(
            "127.0.0.1:0",
            Arc::new(Metrics::default()),
            Arc::new(Mutex::new(StatusSnapshot {
                recent_events: vec![e.clone()],
                ..StatusSnapshot::default()
            })),
        )
        .unwrap();
        let body = ureq::get(format!("http://{}/status", s.addr()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["recent_events"][0]["state"], "done");
        assert_eq!(v["recent_events"][0]["txid"], e.txid.to_string());
        assert_eq!(
            v["recent_events"][0]["bitcoin_txid"],
            crate::testing::txid(5).to_string()
        );
        assert!(v["recent_events"][0].get("stacks_txid").is_none());
        // Without a queue there are no ops to serve.
        let r = ureq::get(format!("http://{}/ops/{}", s.addr(), e.txid)).call();
        assert!(r.is_err());
    }
}
