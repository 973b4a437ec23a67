//! What the loop counts, and the operator's HTTP endpoint while `run` is
//! active: `/health`, `/status` (JSON, with the newest recorded state
//! changes), `/metrics` (Prometheus text), `/attestations` (JSON: each
//! signer's newest signed attestation of the peg wallet key, the envelope as
//! the signer sealed it, for users' tools to check a threshold of signers
//! before they pay into the key) and `/ops/{txid}` (JSON: one op, its amount,
//! recipient and history; see [`op_json`]) and `/` (the operator page:
//! plain HTML polling `/status`).
//!
//! Outages are seen by a [`Watch`]: a thread of its own that asks each node
//! and the relay for something cheap every few seconds, records whether it
//! answered ([`NodeStatus`]) with the tips and balances it read, so that
//! `/health` fails (503, naming the node) when one has been unreachable
//! longer than the configured time, or no tick has succeeded within it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bitcoin::Txid;
use bitcoin_node_client::BitcoinNode;
use log::{debug, info, warn};
use peg_ops::PegOp;
use peg_queue::{OpEvent, OpState, PegQueue, QueuedOp, SqlitePegQueue};
use stacks_node_client::StacksNode;
use stacks_wire::{ContractId, PrincipalData, Value};

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
    /// Signing requests completed (one per payout, sweep or refund: all
    /// its inputs' rounds).
    pub signing_rounds: AtomicU64,
    /// Wall time spent signing, microseconds: each signing call once (the
    /// rounds of its payouts overlap).
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
    /// Scans that failed (the op source did not answer or answered wrong).
    pub scan_errors: AtomicU64,
    /// Unix time of the last tick whose scan succeeded.
    pub last_good_tick_unix: AtomicU64,
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

    /// Records that a tick completed now; `scanned`: its scan reached the
    /// op source (a tick that could not scan did not succeed).
    pub fn tick(&self, scanned: bool) {
        let now = unix_now();
        self.last_tick_unix.store(now, Ordering::Relaxed);
        if scanned {
            self.last_good_tick_unix.store(now, Ordering::Relaxed);
        }
    }
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every state an op can be in, as stored: `sbtc_ops` shows each, 0 when
/// none is in it.
pub const STATES: [&str; 14] = [
    "detected",
    "accepted",
    "rejected",
    "stacks_tx_signed",
    "stacks_tx_broadcast",
    "burn_confirmed",
    "bitcoin_tx_signed",
    "bitcoin_tx_broadcast",
    "done",
    "refund_requested",
    "refund_signed",
    "refund_broadcast",
    "refunded",
    "failed",
];

/// The states that are not final (`sbtc_oldest_pending_op_age_seconds`).
pub fn pending_states() -> impl Iterator<Item = &'static str> {
    STATES
        .into_iter()
        .filter(|s| !matches!(*s, "rejected" | "done" | "refunded" | "failed"))
}

/// The watched nodes' names, as `/health`, `/status` and `sbtc_node_up`
/// name them.
pub const NODES: [&str; 3] = ["bitcoind", "stacks-node", "relay"];

/// How long a node may be unreachable, or no tick succeed, before `/health`
/// fails, unless configured (`unhealthy_after_ms`).
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

/// One node's (or the relay's) reachability, as the [`Watch`] last saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStatus {
    /// The URL asked.
    pub url: String,
    /// Whether it answered the last check.
    pub up: bool,
    /// Unix time of the last answer.
    pub last_success_unix: Option<u64>,
    /// Unix time of the last check.
    pub last_check_unix: Option<u64>,
    /// Checks it failed, since start.
    pub errors: u64,
    /// Why the last failed check failed (kept while it is down).
    pub last_error: Option<String>,
}

/// A signer's liveness: the time of its newest signed attestation (signers
/// send one every 60 s over the relay).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignerLiveness {
    /// The signer's (1-based) id.
    pub id: u32,
    /// The signer's clock in its newest attestation, Unix seconds; `None`
    /// when none was seen.
    pub last_heartbeat_unix: Option<u64>,
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
    /// The signer set's ids (liveness is shown for each).
    #[serde(skip)]
    pub signer_ids: Vec<u32>,
    /// The first height scanned when nothing is (for the scan lag before
    /// the first scan).
    pub start_height: u64,
    /// Unix time the endpoint's owner started (the baseline of `/health`
    /// before any success).
    pub started_unix: Option<u64>,
    /// How long a node may be unreachable before `/health` fails
    /// ([`DEFAULT_UNHEALTHY_AFTER`] when `None`).
    #[serde(skip)]
    pub unhealthy_after: Option<Duration>,
    /// The nodes and the relay by name ([`NODES`]), as the watch saw them.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// The Bitcoin node's tip height.
    pub bitcoin_tip: Option<u64>,
    /// The Stacks node's tip height.
    pub stacks_tip: Option<u64>,
    /// The Bitcoin height the Stacks node has processed.
    pub stacks_burn_height: Option<u64>,
    /// The BTC at the peg wallet address, sats (`scantxoutset`).
    pub peg_wallet_sats: Option<u64>,
    /// The coordinator's STX balance, µSTX.
    pub stx_balance: Option<u64>,
    /// The coordinator's confirmed Stacks nonce.
    pub stacks_nonce: Option<u64>,
    /// The sBTC supply (`get-total-supply`), sats.
    pub sbtc_supply_sats: Option<u64>,
    /// Per non-final state, the age in seconds of the op longest in it (0
    /// when none is).
    pub oldest_pending_age_seconds: BTreeMap<String, u64>,
    /// The ops of [`StatusSnapshot::recent_events`] by txid: kind, amount,
    /// recipient and state.
    pub recent_ops: BTreeMap<String, OpSummary>,
    /// Pending ops that failed a step or wait for something the operator
    /// should see, longest in their state first.
    pub stuck: Vec<StuckOp>,
}

/// A pending op that failed a step or waits with a reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StuckOp {
    /// Its Bitcoin txid.
    pub txid: String,
    /// `peg_in` or `peg_out_request`.
    pub kind: String,
    /// Its state's name.
    pub state: String,
    /// Its amount, sats.
    pub amount_sats: u64,
    /// Failed attempts of its current step.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// What it waits for.
    pub waiting: Option<String>,
    /// Seconds in its state.
    pub age_seconds: u64,
}

/// An op in short, for the operator page and `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpSummary {
    /// `peg_in` or `peg_out_request`.
    pub kind: String,
    /// Its state's name.
    pub state: String,
    /// Its amount, sats.
    pub amount_sats: u64,
    /// A peg-in's Stacks principal, a request's Bitcoin address.
    pub recipient: String,
}

impl StatusSnapshot {
    /// The peg wallet's BTC over the sBTC supply: 1 or more is fully backed;
    /// 1 with no supply; `None` while either is unknown.
    pub fn backing_ratio(&self) -> Option<f64> {
        let (held, supply) = (self.peg_wallet_sats?, self.sbtc_supply_sats?);
        Some(if supply == 0 {
            1.0
        } else {
            held as f64 / supply as f64
        })
    }

    /// Bitcoin blocks between the tip and the last scanned height (from
    /// the start height before the first scan); `None` without a tip.
    pub fn scan_lag(&self) -> Option<u64> {
        let tip = self.bitcoin_tip?;
        let scanned = match self.last_scanned_height {
            Some(h) => h,
            None => self.start_height.saturating_sub(1),
        };
        Some(tip.saturating_sub(scanned))
    }

    /// Each signer of the set (and any other that attested) with the time
    /// of its newest attestation.
    pub fn signers(&self) -> Vec<SignerLiveness> {
        let mut by_id: BTreeMap<u32, Option<u64>> =
            self.signer_ids.iter().map(|id| (*id, None)).collect();
        for a in &self.attestations {
            let e = by_id.entry(a.signer).or_default();
            *e = Some(e.map_or(a.time, |t| t.max(a.time)));
        }
        by_id
            .into_iter()
            .map(|(id, last_heartbeat_unix)| SignerLiveness {
                id,
                last_heartbeat_unix,
            })
            .collect()
    }

    /// Refreshes what the queue holds: ops per state (every state, 0 when
    /// empty), the last scanned height, waiting ops, the newest events and
    /// the age of the oldest op in each pending state.
    ///
    /// # Errors
    /// When the queue cannot be read.
    pub fn refresh_from_queue(&mut self, q: &SqlitePegQueue) -> Result<(), peg_queue::Error> {
        let mut ops: BTreeMap<String, u64> = STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
        ops.extend(q.counts()?);
        self.ops = ops;
        self.last_scanned_height = q.last_scanned_height()?.map(|h| h.0);
        self.waiting = q.waiting()?;
        self.recent_events = q.recent_events(RECENT_EVENTS)?;
        let mut recent_ops = BTreeMap::new();
        for e in &self.recent_events {
            let key = e.txid.to_string();
            if recent_ops.contains_key(&key) {
                continue;
            }
            if let Some(o) = q.get(&e.txid)? {
                recent_ops.insert(
                    key,
                    OpSummary {
                        kind: kind_name(&o.op).to_owned(),
                        state: o.state.name().to_owned(),
                        amount_sats: o.op.amount().to_sat(),
                        recipient: recipient(&o.op),
                    },
                );
            }
        }
        self.recent_ops = recent_ops;
        let now = unix_now();
        let mut oldest: BTreeMap<String, u64> =
            pending_states().map(|s| (s.to_owned(), 0)).collect();
        let mut stuck = Vec::new();
        for p in q.pending()? {
            let since = q.history(&p.op.txid())?.last().map_or(now, |e| e.at_unix);
            let age = now.saturating_sub(since);
            let e = oldest.entry(p.state.name().to_owned()).or_default();
            *e = (*e).max(age);
            if p.attempts > 0 || p.waiting.is_some() {
                stuck.push(StuckOp {
                    txid: p.op.txid().to_string(),
                    kind: kind_name(&p.op).to_owned(),
                    state: p.state.name().to_owned(),
                    amount_sats: p.op.amount().to_sat(),
                    attempts: p.attempts,
                    last_error: p.last_error.clone(),
                    waiting: p.waiting.clone(),
                    age_seconds: age,
                });
            }
        }
        stuck.sort_by_key(|s| std::cmp::Reverse(s.age_seconds));
        self.oldest_pending_age_seconds = oldest;
        self.stuck = stuck;
        Ok(())
    }
}

/// Why `/health` fails now, one line per cause; empty when healthy. A node
/// down since longer than the threshold (whole seconds, so more than the
/// threshold has passed when it fails) (since start when it never
/// answered), and no successful tick within it (the baseline is
/// [`StatusSnapshot::started_unix`]; without one, only the nodes count).
pub fn health_problems(m: &Metrics, s: &StatusSnapshot, now: u64) -> Vec<String> {
    let limit = s
        .unhealthy_after
        .unwrap_or(DEFAULT_UNHEALTHY_AFTER)
        .as_secs()
        .max(1);
    let mut out = Vec::new();
    for (name, n) in &s.nodes {
        if n.up {
            continue;
        }
        let Some(since) = n.last_success_unix.or(s.started_unix) else {
            continue;
        };
        let down = now.saturating_sub(since);
        if down > limit {
            out.push(format!(
                "{name} at {} unreachable for {down} s (limit {limit} s): {}",
                n.url,
                n.last_error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    let good = m.last_good_tick_unix.load(Ordering::Relaxed);
    let since = if good > 0 { Some(good) } else { s.started_unix };
    if let Some(since) = since {
        let ago = now.saturating_sub(since);
        if ago > limit {
            out.push(format!(
                "no tick has succeeded for {ago} s (limit {limit} s; {} scan errors)",
                m.scan_errors.load(Ordering::Relaxed)
            ));
        }
    }
    out
}

/// The JSON `/status` serves: the snapshot, with the health, the tick
/// times, the scan lag, the backing ratio and the signers' liveness.
pub fn status_json(m: &Metrics, s: &StatusSnapshot, now: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    let problems = health_problems(m, s, now);
    v["health"] = serde_json::json!({"ok": problems.is_empty(), "problems": problems});
    v["now_unix"] = now.into();
    v["last_tick_unix"] = m.last_tick_unix.load(Ordering::Relaxed).into();
    v["last_good_tick_unix"] = m.last_good_tick_unix.load(Ordering::Relaxed).into();
    v["scan_errors"] = m.scan_errors.load(Ordering::Relaxed).into();
    v["scan_lag"] = s.scan_lag().into();
    v["backing_ratio"] = s.backing_ratio().into();
    v["signers"] = serde_json::to_value(s.signers()).unwrap_or_default();
    v["build_version"] = env!("CARGO_PKG_VERSION").into();
    v
}

/// How many of the newest state changes `/status` shows.
pub const RECENT_EVENTS: usize = 50;

/// An op's kind as JSON names it, and text too: `peg_in` or
/// `peg_out_request`.
pub fn kind_name(op: &PegOp) -> &'static str {
    match op {
        PegOp::PegIn(_) => "peg_in",
        PegOp::PegOutRequest(_) => "peg_out_request",
    }
}

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
        "Last fully scanned Bitcoin height (the start height - 1 before the first scan).",
        "gauge",
        s.last_scanned_height
            .unwrap_or(s.start_height.saturating_sub(1))
            .to_string(),
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
        "Wall time spent signing (each signing call once; its payouts' rounds overlap).",
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
    gauge(
        "sbtc_scan_errors_total",
        "Scans of new blocks that failed.",
        "counter",
        get(&m.scan_errors),
    );
    gauge(
        "sbtc_last_good_tick_timestamp_seconds",
        "Unix time of the last loop tick whose scan succeeded (0: none yet).",
        "gauge",
        get(&m.last_good_tick_unix),
    );
    let now = unix_now();
    let problems = health_problems(m, s, now);
    gauge(
        "sbtc_healthy",
        "1 when /health answers 200, 0 when it answers 503.",
        "gauge",
        u8::from(problems.is_empty()).to_string(),
    );
    let mut labelled = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let node = |f: &dyn Fn(&NodeStatus) -> String| -> Vec<(String, String)> {
        NODES
            .iter()
            .filter_map(|n| s.nodes.get(*n).map(|st| (format!("node=\"{n}\""), f(st))))
            .collect()
    };
    labelled(
        "sbtc_node_up",
        "1 when the node (bitcoind, stacks-node, relay) answered its last check.",
        "gauge",
        node(&|n| u8::from(n.up).to_string()),
    );
    labelled(
        "sbtc_node_last_success_timestamp_seconds",
        "Unix time the node last answered (0: never).",
        "gauge",
        node(&|n| n.last_success_unix.unwrap_or(0).to_string()),
    );
    labelled(
        "sbtc_node_errors_total",
        "Checks of the node that failed.",
        "counter",
        node(&|n| n.errors.to_string()),
    );
    labelled(
        "sbtc_ops",
        "Operations per state (every state, 0 when empty).",
        "gauge",
        STATES
            .iter()
            .map(|st| {
                (
                    format!("state=\"{st}\""),
                    s.ops.get(*st).copied().unwrap_or(0).to_string(),
                )
            })
            .chain(
                s.ops
                    .iter()
                    .filter(|(k, _)| !STATES.contains(&k.as_str()))
                    .map(|(k, n)| (format!("state=\"{k}\""), n.to_string())),
            )
            .collect(),
    );
    labelled(
        "sbtc_oldest_pending_op_age_seconds",
        "Per non-final state, how long the op longest in it has been there (0: none).",
        "gauge",
        pending_states()
            .map(|st| {
                (
                    format!("state=\"{st}\""),
                    s.oldest_pending_age_seconds
                        .get(st)
                        .copied()
                        .unwrap_or(0)
                        .to_string(),
                )
            })
            .collect(),
    );
    labelled(
        "sbtc_signer_last_heartbeat_timestamp_seconds",
        "Per signer, the time of its newest signed attestation (0: none seen).",
        "gauge",
        s.signers()
            .iter()
            .map(|l| {
                (
                    format!("signer=\"{}\"", l.id),
                    l.last_heartbeat_unix.unwrap_or(0).to_string(),
                )
            })
            .collect(),
    );
    labelled(
        "sbtc_build_info",
        "The coordinator's version.",
        "gauge",
        vec![(
            format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            "1".into(),
        )],
    );
    let mut known = |name: &str, help: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    };
    known(
        "sbtc_bitcoin_tip_height",
        "The Bitcoin node's tip height.",
        s.bitcoin_tip.map(|v| v.to_string()),
    );
    known(
        "sbtc_stacks_tip_height",
        "The Stacks node's tip height.",
        s.stacks_tip.map(|v| v.to_string()),
    );
    known(
        "sbtc_scan_lag_blocks",
        "Bitcoin blocks between the tip and the last scanned height.",
        s.scan_lag().map(|v| v.to_string()),
    );
    known(
        "sbtc_peg_wallet_sats",
        "BTC at the peg wallet address, sats.",
        s.peg_wallet_sats.map(|v| v.to_string()),
    );
    known(
        "sbtc_stx_balance_microstx",
        "The coordinator's STX balance, µSTX.",
        s.stx_balance.map(|v| v.to_string()),
    );
    known(
        "sbtc_supply_sats",
        "The sBTC supply, sats.",
        s.sbtc_supply_sats.map(|v| v.to_string()),
    );
    known(
        "sbtc_backing_ratio",
        "Peg wallet BTC over the sBTC supply (1 with no supply).",
        s.backing_ratio().map(|v| format!("{v}")),
    );
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

/// Escapes text for HTML.
fn esc(t: &str) -> String {
    let mut o = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn btc(sats: u64) -> String {
    format!("{}.{:08}", sats / 100_000_000, sats % 100_000_000)
}

fn ago(now: u64, t: Option<u64>) -> String {
    match t {
        None | Some(0) => "never".into(),
        Some(t) => format!("{} s ago", now.saturating_sub(t)),
    }
}

/// The operator page's body: health, nodes, balances, ops by state,
/// signers and the newest events, as tables (`GET /?fragment` serves this
/// alone; the page's script swaps it in every 2 s).
pub fn operator_fragment(m: &Metrics, s: &StatusSnapshot, now: u64) -> String {
    let mut o = String::new();
    let problems = health_problems(m, s, now);
    if problems.is_empty() {
        let _ = writeln!(o, "<p id=\"health\" class=\"ok\">healthy</p>");
    } else {
        let _ = writeln!(o, "<div id=\"health\" class=\"bad\"><b>unhealthy</b><ul>");
        for p in &problems {
            let _ = writeln!(o, "<li>{}</li>", esc(p));
        }
        let _ = writeln!(o, "</ul></div>");
    }
    let _ = writeln!(o, "<h2>Nodes</h2><table id=\"nodes\"><tr><th>node</th><th>url</th><th>up</th><th>last answer</th><th>errors</th><th>last error</th></tr>");
    for (name, n) in &s.nodes {
        let _ = writeln!(
            o,
            "<tr class=\"node\" data-node=\"{}\" data-up=\"{}\"><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(name), u8::from(n.up), esc(name), esc(&n.url),
            if n.up { "ok" } else { "bad" }, if n.up { "up" } else { "DOWN" },
            ago(now, n.last_success_unix), n.errors,
            esc(n.last_error.as_deref().unwrap_or(""))
        );
    }
    let _ = writeln!(o, "</table>");
    let opt = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
    let _ = writeln!(o, "<h2>Balances and chains</h2><table id=\"balances\">");
    let mut row = |k: &str, id: &str, v: String| {
        let _ = writeln!(
            o,
            "<tr><th>{k}</th><td id=\"{id}\" class=\"num\">{}</td></tr>",
            esc(&v)
        );
    };
    row(
        "peg wallet",
        "peg-wallet",
        s.peg_wallet_sats
            .map_or("unknown".into(), |v| format!("{} BTC", btc(v))),
    );
    row(
        "sBTC supply",
        "supply",
        s.sbtc_supply_sats
            .map_or("unknown".into(), |v| format!("{} sBTC", btc(v))),
    );
    row(
        "backing ratio",
        "backing",
        s.backing_ratio()
            .map_or("unknown".into(), |r| format!("{r:.4}")),
    );
    row(
        "STX balance",
        "stx",
        s.stx_balance
            .map_or("unknown".into(), |v| format!("{v} µSTX")),
    );
    row("bitcoin tip", "bitcoin-tip", opt(s.bitcoin_tip));
    row("stacks tip", "stacks-tip", opt(s.stacks_tip));
    row("last scanned", "scanned", opt(s.last_scanned_height));
    row("scan lag", "scan-lag", opt(s.scan_lag()));
    row(
        "peg wallet address",
        "address",
        s.peg_wallet_address.clone().unwrap_or_default(),
    );
    let _ = writeln!(o, "</table>");
    let _ = writeln!(o, "<h2>Operations by state</h2><table id=\"ops\"><tr><th>state</th><th>ops</th><th>oldest</th></tr>");
    let ordered = STATES
        .iter()
        .map(|st| ((*st).to_owned(), s.ops.get(*st).copied().unwrap_or(0)))
        .chain(
            s.ops
                .iter()
                .filter(|(k, _)| !STATES.contains(&k.as_str()))
                .map(|(k, n)| (k.clone(), *n)),
        );
    for (state, n) in ordered {
        let state = &state;
        let oldest = s
            .oldest_pending_age_seconds
            .get(state)
            .filter(|a| **a > 0 && n > 0);
        let _ = writeln!(
            o,
            "<tr class=\"state\" data-state=\"{}\" data-count=\"{n}\"><td>{}</td><td class=\"num\">{n}</td><td class=\"num\">{}</td></tr>",
            esc(state), esc(state), oldest.map(|a| format!("{a} s")).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "</table>");
    if !s.stuck.is_empty() {
        let _ = writeln!(o, "<h2>Stuck operations</h2><table id=\"stuck\"><tr><th>op</th><th>kind</th><th>state</th><th>amount (sats)</th><th>in state</th><th>attempts</th><th>why</th></tr>");
        for st in &s.stuck {
            let why = st
                .waiting
                .as_deref()
                .or(st.last_error.as_deref())
                .unwrap_or("");
            let _ = writeln!(
                o,
                "<tr class=\"stuck\" data-txid=\"{}\"><td class=\"txid\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{} s</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&st.txid), esc(&st.txid), esc(&st.kind), esc(&st.state), st.amount_sats, st.age_seconds, st.attempts, esc(why)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    let _ = writeln!(
        o,
        "<h2>Signers</h2><table id=\"signers\"><tr><th>signer</th><th>last heartbeat</th></tr>"
    );
    for l in s.signers() {
        let _ = writeln!(
            o,
            "<tr class=\"signer\" data-signer=\"{}\"><td>{}</td><td>{}</td></tr>",
            l.id,
            l.id,
            ago(now, l.last_heartbeat_unix)
        );
    }
    let _ = writeln!(o, "</table>");
    let _ = writeln!(o, "<h2>Recent mints and payouts</h2><table id=\"events\"><tr><th>when</th><th>op</th><th>kind</th><th>amount (sats)</th><th>state</th><th>stacks tx</th><th>bitcoin tx</th></tr>");
    for e in &s.recent_events {
        let id = e.txid.to_string();
        let op = s.recent_ops.get(&id);
        let _ = writeln!(
            o,
            "<tr class=\"event\" data-txid=\"{id}\" data-state=\"{}\" data-amount=\"{}\"><td>{}</td><td class=\"txid\">{id}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"txid\">{}</td><td class=\"txid\">{}</td></tr>",
            esc(&e.state),
            op.map_or(String::new(), |o| o.amount_sats.to_string()),
            ago(now, Some(e.at_unix)),
            op.map_or("", |o| o.kind.as_str()),
            op.map_or(String::new(), |o| o.amount_sats.to_string()),
            esc(&e.state),
            e.stacks_txid.map(|t| t.to_string()).unwrap_or_default(),
            e.bitcoin_txid.map(|t| t.to_string()).unwrap_or_default(),
        );
    }
    let _ = writeln!(o, "</table>");
    let _ = writeln!(
        o,
        "<p class=\"foot\">updated {now} (Unix time); coordinator {}</p>",
        env!("CARGO_PKG_VERSION")
    );
    o
}

/// The operator page (`GET /`): [`operator_fragment`] in a plain page with
/// no external resources, and a script that fetches `/?fragment` every 2 s
/// and swaps it in (no reload).
pub fn operator_page(m: &Metrics, s: &StatusSnapshot, now: u64) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sBTC coordinator</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.txid {{ font-family: monospace; font-size: 85%; }}
.ok {{ color: #070; }} .bad {{ color: #b00; }} .foot {{ color: #777; font-size: 85%; }}
</style></head>
<body data-rendered="{now}"><h1>sBTC coordinator</h1>
<p>Stacks address {addr}; <a href="/status">/status</a> · <a href="/metrics">/metrics</a> · <a href="/health">/health</a></p>
<div id="live">
{body}</div>
<script>
(function () {{
  var live = document.getElementById('live');
  function poll() {{
    fetch('/?fragment', {{ cache: 'no-store' }})
      .then(function (r) {{ if (!r.ok) throw new Error('HTTP ' + r.status); return r.text(); }})
      .then(function (t) {{ live.innerHTML = t; }})
      .catch(function (e) {{ document.title = 'sBTC coordinator (not answering: ' + e + ')'; }});
  }}
  setInterval(poll, 2000);
}})();
</script>
</body></html>
"#,
        addr = esc(&s.stacks_address),
        body = operator_fragment(m, s, now),
        now = now
    )
}

/// What the [`Watch`] asks: the nodes' clients, the relay's URL, and whom
/// balances are read for.
pub struct Watch<B, S> {
    /// The Bitcoin node (`getblockcount`, `scantxoutset` of the peg wallet).
    pub bitcoin: B,
    /// Its URL, for messages.
    pub bitcoin_url: String,
    /// The Stacks node (`/v2/info`, the account, `get-total-supply`).
    pub stacks: S,
    /// Its URL, for messages.
    pub stacks_url: String,
    /// The relay's base URL (`GET /health`).
    pub relay_url: String,
    /// The sBTC contract.
    pub contract: ContractId,
    /// The coordinator's Stacks address (balance; sender of reads).
    pub sender: PrincipalData,
    /// Time between checks.
    pub every: Duration,
    /// Time between peg wallet balance reads (a UTXO-set scan).
    pub balance_every: Duration,
}

impl<B, S> std::fmt::Debug for Watch<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("bitcoin_url", &self.bitcoin_url)
            .field("stacks_url", &self.stacks_url)
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

/// The running watch; stops (and joins its thread) when dropped.
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Records one check's outcome; logs a node going down or coming back
/// once, not every check.
fn record(s: &mut StatusSnapshot, name: &str, url: &str, r: Result<(), String>, now: u64) {
    let n = s.nodes.entry(name.to_owned()).or_default();
    n.url = url.to_owned();
    n.last_check_unix = Some(now);
    match r {
        Ok(()) => {
            if !n.up && n.last_error.is_some() {
                let since = n.last_success_unix.or(s.started_unix).unwrap_or(now);
                info!(
                    "{name} at {url} answers again (unreachable for {} s)",
                    now.saturating_sub(since)
                );
            }
            n.up = true;
            n.last_success_unix = Some(now);
            n.last_error = None;
        }
        Err(e) => {
            if n.up || n.last_error.is_none() {
                warn!("{name} at {url} does not answer: {e}");
            } else {
                debug!("{name} at {url} still does not answer: {e}");
            }
            n.up = false;
            n.errors += 1;
            n.last_error = Some(e);
        }
    }
}

fn uint_u64(v: &Value) -> Option<u64> {
    match v {
        Value::UInt(n) => u64::try_from(*n).ok(),
        Value::Ok(inner) => uint_u64(inner),
        _ => None,
    }
}

impl<B, S> Watch<B, S>
where
    B: BitcoinNode + Send + 'static,
    S: StacksNode + Send + 'static,
{
    /// Checks each node and the relay once, and writes the outcome, tips
    /// and balances into `status`. `with_balance`: also scan the peg
    /// wallet's coins.
    pub fn check(&self, status: &Mutex<StatusSnapshot>, with_balance: bool) {
        let bitcoin = self.bitcoin.get_block_count().map_err(|e| e.to_string());
        let info = self.stacks.get_info().map_err(|e| e.to_string());
        let account = info
            .as_ref()
            .ok()
            .map(|_| self.stacks.get_account(&self.sender));
        let supply = info.as_ref().ok().map(|_| {
            self.stacks
                .call_read(&self.contract, "get-total-supply", &[], &self.sender)
        });
        let relay = relay_health(&self.relay_url, self.every.max(Duration::from_secs(2)));
        let peg_script = status
            .lock()
            .ok()
            .and_then(|s| s.peg_wallet_address.clone())
            .and_then(|a| a.parse::<bitcoin::Address<_>>().ok())
            .map(|a| a.assume_checked().script_pubkey());
        let peg_sats = match (&bitcoin, peg_script) {
            (Ok(_), Some(script)) if with_balance => Some(
                self.bitcoin
                    .list_unspent(&script)
                    .map(|u| u.iter().map(|u| u.txout.value.to_sat()).sum::<u64>()),
            ),
            _ => None,
        };
        let now = unix_now();
        let Ok(mut s) = status.lock() else {
            return;
        };
        if let Ok(h) = &bitcoin {
            s.bitcoin_tip = Some(*h);
        }
        if let Ok(i) = &info {
            s.stacks_tip = Some(i.stacks_tip_height);
            s.stacks_burn_height = Some(i.burn_block_height);
        }
        match account {
            Some(Ok(a)) => {
                s.stx_balance = Some(u64::try_from(a.balance).unwrap_or(u64::MAX));
                s.stacks_nonce = Some(a.nonce);
            }
            Some(Err(e)) => debug!("reading the coordinator's STX balance: {e}"),
            None => {}
        }
        match supply {
            Some(Ok(v)) => match uint_u64(&v) {
                Some(n) => s.sbtc_supply_sats = Some(n),
                None => debug!("get-total-supply returned {v}"),
            },
            Some(Err(e)) => debug!("reading the sBTC supply: {e}"),
            None => {}
        }
        match peg_sats {
            Some(Ok(n)) => s.peg_wallet_sats = Some(n),
            Some(Err(e)) => debug!("reading the peg wallet's balance: {e}"),
            None => {}
        }
        record(
            &mut s,
            "bitcoind",
            &self.bitcoin_url,
            bitcoin.map(|_| ()),
            now,
        );
        record(
            &mut s,
            "stacks-node",
            &self.stacks_url,
            info.map(|_| ()),
            now,
        );
        record(&mut s, "relay", &self.relay_url, relay, now);
    }

    /// Checks every [`Watch::every`] on a thread of its own until the
    /// handle is dropped (the first check at once).
    pub fn spawn(self, status: Arc<Mutex<StatusSnapshot>>) -> WatchHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last_balance: Option<Instant> = None;
            while !flag.load(Ordering::SeqCst) {
                let with_balance = last_balance.is_none_or(|t| t.elapsed() >= self.balance_every);
                if with_balance {
                    last_balance = Some(Instant::now());
                }
                self.check(&status, with_balance);
                let until = Instant::now() + self.every;
                while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        WatchHandle {
            stop,
            thread: Some(thread),
        }
    }
}

/// `GET {relay}/health` (answers without a token).
fn relay_health(base: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("{}/health", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
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
    /// Serves `/`, `/health`, `/status`, `/metrics` and `/attestations` on `addr`.
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
                    (tiny_http::Method::Get, "/health") => {
                        let problems = health_problems(&metrics, &snapshot, unix_now());
                        if problems.is_empty() {
                            (200, "text/plain", "ok\n".to_owned())
                        } else {
                            (
                                503,
                                "text/plain",
                                format!("unhealthy:\n{}\n", problems.join("\n")),
                            )
                        }
                    }
                    (tiny_http::Method::Get, "/status") => (
                        200,
                        "application/json",
                        serde_json::to_string_pretty(&status_json(&metrics, &snapshot, unix_now()))
                            .unwrap_or_default(),
                    ),
                    (tiny_http::Method::Get, "/") => (
                        200,
                        "text/html; charset=utf-8",
                        if req.url().contains("?fragment") {
                            operator_fragment(&metrics, &snapshot, unix_now())
                        } else {
                            operator_page(&metrics, &snapshot, unix_now())
                        },
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
                        "try /, /health, /status, /metrics, /attestations or /ops/{txid}\n"
                            .to_owned(),
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
            "status endpoint on http://{addr} (/ operator page, /health, /status, /metrics, /attestations, /ops/{{txid}})"
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
    fn health_fails_naming_a_node_down_past_the_limit_and_a_missing_good_tick() {
        let m = Metrics::default();
        let now = 1_700_000_100;
        let mut s = StatusSnapshot {
            started_unix: Some(now - 5),
            unhealthy_after: Some(Duration::from_secs(30)),
            ..StatusSnapshot::default()
        };
        m.last_good_tick_unix.store(now - 1, Ordering::Relaxed);
        record(&mut s, "bitcoind", "http://b", Ok(()), now - 40);
        record(&mut s, "relay", "http://r", Ok(()), now - 1);
        assert!(health_problems(&m, &s, now).is_empty());
        record(
            &mut s,
            "bitcoind",
            "http://b",
            Err("refused".into()),
            now - 20,
        );
        let mut s2 = s.clone();
        // Down, but its last answer is within the limit: still healthy.
        s2.nodes.get_mut("bitcoind").unwrap().last_success_unix = Some(now - 29);
        assert!(health_problems(&m, &s2, now).is_empty());
        // Its last answer 40 s ago: past the limit.
        let p = health_problems(&m, &s, now);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("bitcoind at http://b unreachable for 40 s") && p[0].contains("refused"),
            "{p:?}"
        );
        let s2 = s;
        m.last_good_tick_unix.store(now - 45, Ordering::Relaxed);
        let p = health_problems(&m, &s2, now);
        assert!(
            p.iter()
                .any(|l| l.contains("no tick has succeeded for 45 s")),
            "{p:?}"
        );
        let metrics = render_metrics(&m, &s2);
        assert!(
            metrics.contains("sbtc_node_up{node=\"bitcoind\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("sbtc_node_errors_total{node=\"bitcoind\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("sbtc_healthy 0"), "{metrics}");
    }

    #[test]
    fn metrics_show_every_state_and_no_nan_before_the_first_scan() {
        let s = StatusSnapshot {
            start_height: 100,
            signer_ids: vec![1, 2],
            ..StatusSnapshot::default()
        };
        let text = render_metrics(&Metrics::default(), &s);
        assert!(!text.contains("NaN"), "{text}");
        assert!(
            text.lines().any(|l| l == "sbtc_last_scanned_height 99"),
            "{text}"
        );
        for st in STATES {
            assert!(
                text.contains(&format!("sbtc_ops{{state=\"{st}\"}} 0")),
                "{st}: {text}"
            );
        }
        assert!(text.contains("sbtc_oldest_pending_op_age_seconds{state=\"accepted\"} 0"));
        assert!(text.contains("sbtc_signer_last_heartbeat_timestamp_seconds{signer=\"2\"} 0"));
        assert!(text.contains("sbtc_build_info{version=\""));
        let backed = StatusSnapshot {
            peg_wallet_sats: Some(150),
            sbtc_supply_sats: Some(100),
            ..StatusSnapshot::default()
        };
        assert_eq!(backed.backing_ratio(), Some(1.5));
    }

    #[test]
    fn the_snapshot_from_a_real_queue_counts_every_state_and_lists_stuck_ops() {
        use crate::testing::{peg_out, ALLOWED_BTC};
        let dir = tempfile::tempdir().unwrap();
        let q = SqlitePegQueue::open(&dir.path().join("queue.sqlite")).unwrap();
        let op = peg_out(1, 5, ALLOWED_BTC, 20_000_000);
        q.insert_op(&op).unwrap();
        q.record_failure(&op.txid(), "bitcoind: connection refused")
            .unwrap();
        let mut s = StatusSnapshot::default();
        s.refresh_from_queue(&q).unwrap();
        assert_eq!(s.ops.len(), STATES.len(), "{:?}", s.ops);
        assert_eq!(s.ops["detected"], 1);
        assert_eq!(s.ops["done"], 0);
        assert_eq!(s.stuck.len(), 1);
        let st = &s.stuck[0];
        assert_eq!(
            (
                st.kind.as_str(),
                st.state.as_str(),
                st.amount_sats,
                st.attempts
            ),
            ("peg_out_request", "detected", 20_000_000, 1)
        );
        assert_eq!(
            st.last_error.as_deref(),
            Some("bitcoind: connection refused")
        );
        assert_eq!(s.recent_ops[&op.txid().to_string()].amount_sats, 20_000_000);
        let page = operator_fragment(&Metrics::default(), &s, unix_now());
        assert!(
            page.contains(&format!("<tr class=\"stuck\" data-txid=\"{}\"", op.txid())),
            "{page}"
        );
        assert!(page.contains("connection refused"), "{page}");
    }

    #[test]
    fn every_metric_the_alert_rules_name_is_rendered() {
        let rules = include_str!("../../../contrib/prometheus/alerts.yml");
        let mut s = StatusSnapshot {
            signer_ids: vec![1],
            bitcoin_tip: Some(1),
            stacks_tip: Some(1),
            peg_wallet_sats: Some(1),
            stx_balance: Some(1),
            sbtc_supply_sats: Some(1),
            ..StatusSnapshot::default()
        };
        for n in NODES {
            record(&mut s, n, "http://x", Ok(()), 1);
        }
        let text = render_metrics(&Metrics::default(), &s);
        let mut named = 0;
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("sbtc_") {
                named += 1;
                assert!(
                    text.contains(&format!("# TYPE {word} ")),
                    "alerts.yml names {word}, which /metrics does not serve"
                );
            }
        }
        assert!(named >= 10, "{named}");
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
