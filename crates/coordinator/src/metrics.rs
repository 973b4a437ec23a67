//! What the loop counts, and the operator's HTTP endpoint while `run` is
//! active: `/health`, `/status` (JSON), `/metrics` (Prometheus text) and
//! `/attestations` (JSON: each signer's newest signed attestation of the peg
//! wallet key, the envelope as the signer sealed it, for users' tools to
//! check a threshold of signers before they pay into the key).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};

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
    /// Each signer's newest attestation of the peg wallet key, served on
    /// `/attestations` (not in `/status`).
    #[serde(skip)]
    pub attestations: Vec<frost_coordinator::SignerAttestation>,
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
        let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("status endpoint is not on an IP address"))?;
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let snapshot = status.lock().map(|g| g.clone()).unwrap_or_default();
                let (code, ctype, body) = match (req.method(), req.url()) {
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
                    _ => (
                        404,
                        "text/plain",
                        "try /health, /status, /metrics or /attestations\n".to_owned(),
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
        info!("status endpoint on http://{addr} (/health, /status, /metrics, /attestations)");
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
}
