//! Health, metrics, `status`, `queue list` and the operator page, through
//! the real `coordinator-cli run` on the devnet (emulated nodes, relay, five
//! signers), over real HTTP on 127.0.0.1:
//!
//! - `/health` answers 200 while everything answers; with bitcoind failing
//!   every request (the emulator's `ServerError` fault) it answers 503
//!   naming bitcoind within the configured `unhealthy_after_ms`,
//!   `sbtc_node_up{node="bitcoind"}` reads 0, its errors and the scan errors
//!   are counted, `status` exits non-zero naming it; with the node back all
//!   recover;
//! - `/metrics` shows every state, the tips, balances, supply, backing
//!   ratio, signers and `build_info`, and no `NaN`;
//! - `status` prints an aligned summary; `queue list` a header, amounts and
//!   ages, filters by state, says when nothing matches, and `--json` does
//!   not panic on a closed pipe;
//! - the operator page, loaded in headless Chromium (installed through
//!   `scripts/prereqs.sh`; skipped, saying why, when it cannot be), shows
//!   the queue's txids and amounts, and a mint made after it loaded appears
//!   without a reload; a screenshot is kept under `target/`.
//!
//! It prints what it measured (how fast `/health` saw the outage and the
//! recovery) and why it skipped the page, if it did.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::Amount;
use devnet::peg::MAGIC;
use devnet::{Fault, Peg, PegOptions};

mod common;
use common::{cli, config_from_next_block, http_get, spawn_run, start_peg, text};

/// Mines on both chains until `done` holds or `limit` passes.
fn mine_until(peg: &Peg, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        peg.mine();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (without mining) until `done` holds or `limit` passes; returns
/// how long it took.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn queue_json(config: &Path) -> Vec<serde_json::Value> {
    let o = cli(config, &["queue", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Debian's chromium, installed through `scripts/prereqs.sh` when missing;
/// `Err(why)` when it cannot be.
fn chromium() -> Result<PathBuf, String> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(n))
                    .find(|f| f.is_file())
            })
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new("bash")
        .arg("-c")
        .arg("source scripts/prereqs.sh && ensure_chromium")
        .current_dir(&root)
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    find().ok_or_else(|| {
        format!(
            "chromium is not installed and scripts/prereqs.sh could not install it: {}",
            text(&o).trim()
        )
    })
}

fn chromium_command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ])
    .stderr(Stdio::null());
    c
}

/// The `data-NAME="…"` attributes of the rows of `class` in `dom`.
fn rows(dom: &str, class: &str, attrs: &[&str]) -> Vec<Vec<String>> {
    dom.split(&format!("<tr class=\"{class}\""))
        .skip(1)
        .map(|row| {
            let head = row.split('>').next().unwrap_or_default();
            attrs
                .iter()
                .map(|a| {
                    head.split(&format!("data-{a}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

/// A TCP forwarder on a fixed port to `upstream`: the node as the
/// coordinator sees it, stopped (connections refused, open ones cut) and
/// started again on the same port.
struct Forwarder {
    port: u16,
    upstream: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(port: u16, upstream: &str) -> Forwarder {
        let mut f = Forwarder {
            port,
            upstream: upstream.trim_start_matches("http://").to_owned(),
            stop: Default::default(),
            open: Default::default(),
            thread: None,
        };
        f.resume();
        f
    }

    fn resume(&mut self) {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (stop, open, upstream) = (self.stop.clone(), self.open.clone(), self.upstream.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.push(down.try_clone().unwrap());
                open.push(up.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        }));
    }

    /// Stops listening and cuts every open connection.
    fn pause(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.pause();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn health_metrics_status_queue_and_the_operator_page_on_the_devnet() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (peg, wallet) = start_peg(PegOptions::new(dir.path()));
    let mut users = peg.users(2);
    let config = config_from_next_block(&peg, &[&users[0], &users[1]]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // The coordinator reaches the stacks-node through a forwarder the test
    // stops and starts.
    let mut stacks_fwd = Forwarder::start(free_port(), &peg.stacks.url());
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "status_listen = \"off\"",
            &format!("status_listen = \"{addr}\"\nunhealthy_after_ms = 2000"),
        )
        .replace(
            &format!("stacks_node_url = \"{}\"", peg.stacks.url()),
            &format!("stacks_node_url = \"http://127.0.0.1:{}\"", stacks_fwd.port),
        );
    assert!(
        toml.contains(&format!("127.0.0.1:{}", stacks_fwd.port)),
        "{toml}"
    );
    std::fs::write(&config, toml).unwrap();
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let mut run = spawn_run(&config, log);
    let run_log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the status endpoint", || {
        assert!(
            run.0.try_wait().unwrap().is_none(),
            "run exited: {}",
            run_log()
        );
        std::net::TcpStream::connect(&addr).is_ok()
    });
    wait_until(
        Duration::from_secs(10),
        "/health 200 with every node up",
        || {
            let (code, _) = http_get(&addr, "/health");
            let (_, m) = http_get(&addr, "/metrics");
            code == 200
                && ["bitcoind", "stacks-node", "relay"]
                    .iter()
                    .all(|n| metric(&m, &format!("sbtc_node_up{{node=\"{n}\"}}")) == Some(1.0))
        },
    );

    // A peg-in, minted.
    let alice_stx = users[0].stx.clone();
    let alice_in = peg
        .with_bitcoin(|b| {
            users[0].peg_in(b, MAGIC, &wallet, &alice_stx, Amount::from_sat(50_000_000))
        })
        .unwrap();
    let done = |config: &Path, t: &bitcoin::Txid| {
        queue_json(config)
            .iter()
            .any(|o| o["txid"] == t.to_string().as_str() && o["state"] == "done")
    };
    mine_until(&peg, Duration::from_secs(60), "alice's mint", || {
        done(&config, &alice_in)
    });

    // `/metrics`: every state, balances, no NaN.
    mine_until(
        &peg,
        Duration::from_secs(20),
        "the mint in /metrics",
        || {
            let m = http_get(&addr, "/metrics").1;
            metric(&m, "sbtc_supply_sats") == Some(50_000_000.0)
                && metric(&m, "sbtc_ops{state=\"done\"}") == Some(1.0)
        },
    );
    let (_, m) = http_get(&addr, "/metrics");
    assert!(!m.contains("NaN"), "{m}");
    for st in coordinator::metrics::STATES {
        assert!(
            metric(&m, &format!("sbtc_ops{{state=\"{st}\"}}")).is_some(),
            "{st} missing: {m}"
        );
    }
    assert_eq!(metric(&m, "sbtc_ops{state=\"done\"}"), Some(1.0), "{m}");
    for series in [
        "sbtc_bitcoin_tip_height",
        "sbtc_stacks_tip_height",
        "sbtc_scan_lag_blocks",
        "sbtc_stx_balance_microstx",
        "sbtc_last_good_tick_timestamp_seconds",
        "sbtc_signer_last_heartbeat_timestamp_seconds{signer=\"5\"}",
        "sbtc_oldest_pending_op_age_seconds{state=\"accepted\"}",
        "sbtc_healthy",
    ] {
        assert!(metric(&m, series).is_some(), "{series} missing: {m}");
    }
    wait_until(Duration::from_secs(40), "the peg wallet balance", || {
        metric(&http_get(&addr, "/metrics").1, "sbtc_backing_ratio").is_some_and(|r| r >= 1.0)
    });
    assert!(m.contains("sbtc_build_info{version=\""), "{m}");
    let (_, status) = http_get(&addr, "/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["health"]["ok"], true, "{v}");
    assert_eq!(v["sbtc_supply_sats"], 50_000_000, "{v}");
    assert_eq!(v["signers"].as_array().unwrap().len(), 5, "{v}");
    // Every signer's signed attestation is its heartbeat (sent every 60 s).
    wait_until(Duration::from_secs(75), "every signer's heartbeat", || {
        let m = http_get(&addr, "/metrics").1;
        (1..=5).all(|i| {
            metric(
                &m,
                &format!("sbtc_signer_last_heartbeat_timestamp_seconds{{signer=\"{i}\"}}"),
            )
            .is_some_and(|t| t > 0.0)
        })
    });
    assert_eq!(v["nodes"]["bitcoind"]["up"], true, "{v}");

    // `status`: aligned, every part named, exit 0.
    let o = cli(&config, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for key in [
        "bitcoind",
        "stacks-node",
        "relay",
        "bitcoin tip",
        "stacks tip",
        "STX balance",
        "peg wallet holds",
        "sBTC supply",
        "backing ratio",
        "signers",
        "stuck ops",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line in\n{out}"));
        assert_eq!(
            line.chars().nth(22),
            Some(' ').filter(|_| line.chars().nth(23) != Some(' ')),
            "values start in column 24: {line:?}\n{out}"
        );
    }
    assert!(
        out.contains("sBTC supply            0.50000000 sBTC"),
        "{out}"
    );
    assert!(out.contains("signers                5 (threshold"), "{out}");
    let o = cli(&config, &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sbtc_supply_sats"], 50_000_000);
    assert_eq!(v["ops"]["failed"], 0, "every state, 0 too");

    // `queue list`: header, amounts, ages, filters, empty, broken pipe.
    let o = cli(&config, &["queue", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("TXID") && header.contains("AMOUNT (sats)") && header.contains("AGE")
    );
    let row = lines
        .find(|l| l.starts_with(&alice_in.to_string()))
        .unwrap_or_else(|| panic!("alice's peg-in missing:\n{out}"));
    assert!(
        row.contains(" peg_in ") && row.contains(" done ") && row.contains(" 50000000 "),
        "{row}"
    );
    assert_eq!(
        queue_json(&config)[0]["kind"],
        "peg_in",
        "the same kind name in JSON"
    );
    let o = cli(&config, &["queue", "list", "--state", "refunded"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "no operations in refunded\n"
    );
    let o = cli(
        &config,
        &["queue", "list", "--state", "done", "--state", "pending"],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(&alice_in.to_string()));
    let o = cli(&config, &["queue", "list", "--state", "bogus"]);
    assert!(
        !o.status.success() && text(&o).contains("no state \"bogus\""),
        "{}",
        text(&o)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(&config)
        .args(["queue", "list", "--json"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before it writes: EPIPE
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "closed pipe: {}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        "data_dir = \".\"",
        &format!("data_dir = {:?}", empty.display().to_string()),
    );
    let empty_config = dir.path().join("empty.toml");
    std::fs::write(&empty_config, toml).unwrap();
    let o = cli(&empty_config, &["queue", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "the queue holds no operations\n",
        "{}",
        text(&o)
    );

    // The operator page in Chromium: the queue's rows, and a new mint
    // without a reload.
    match chromium() {
        Err(why) => eprintln!("SKIPPED the operator page in Chromium: {why}"),
        Ok(exe) => {
            let url = format!("http://{addr}/");
            // Virtual time runs ahead while the page idles and waits for
            // each poll's answer: 300 polls, some 20 s of real time here.
            let browser = chromium_command(&exe)
                .args(["--virtual-time-budget=600000", "--dump-dom", &url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_secs(4));
            let sent = unix_now();
            let bob_stx = users[1].stx.clone();
            let bob_in = peg
                .with_bitcoin(|b| {
                    users[1].peg_in(b, MAGIC, &wallet, &bob_stx, Amount::from_sat(25_000_000))
                })
                .unwrap();
            let minted_in = Instant::now();
            mine_until(&peg, Duration::from_secs(60), "bob's mint", || {
                done(&config, &bob_in)
            });
            eprintln!(
                "bob's peg-in done {:?} after it was sent",
                minted_in.elapsed()
            );
            let o = browser.wait_with_output().unwrap();
            eprintln!(
                "chromium ran {:?} in all",
                minted_in.elapsed() + Duration::from_secs(4)
            );
            let dom = String::from_utf8_lossy(&o.stdout).into_owned();
            let rendered: u64 = dom
                .split("data-rendered=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no data-rendered in\n{dom}"));
            assert!(
                rendered <= sent,
                "the page was loaded at {rendered}, after bob's peg-in was sent at {sent}: Chromium started too slowly to show an update"
            );
            let queue = queue_json(&config);
            let events = rows(&dom, "event", &["txid", "amount", "state"]);
            assert!(
                events
                    .iter()
                    .any(|r| r[0] == bob_in.to_string() && r[1] == "25000000" && r[2] == "done"),
                "bob's mint did not appear without a reload: {events:?}\n{dom}"
            );
            for r in &events {
                let op = queue
                    .iter()
                    .find(|o| o["txid"] == r[0].as_str())
                    .unwrap_or_else(|| panic!("{} on the page is not in the queue", r[0]));
                assert_eq!(op["amount_sats"].to_string(), r[1], "{r:?}");
            }
            for t in [&alice_in, &bob_in] {
                assert!(events.iter().any(|r| r[0] == t.to_string()), "{t} missing");
            }
            let states = rows(&dom, "state", &["state", "count"]);
            let done_n = queue.iter().filter(|o| o["state"] == "done").count();
            assert!(
                states.contains(&vec!["done".to_owned(), done_n.to_string()]),
                "{states:?}"
            );
            assert_eq!(
                states.len(),
                coordinator::metrics::STATES.len(),
                "{states:?}"
            );
            let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-page.png");
            let o = chromium_command(&exe)
                .arg(format!("--screenshot={}", shot.display()))
                .args([
                    "--window-size=1400,2000",
                    "--virtual-time-budget=3000",
                    &url,
                ])
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert!(
                o.status.success() && shot.is_file(),
                "no screenshot: {}",
                text(&o)
            );
            eprintln!("operator page screenshot: {}", shot.display());
        }
    }

    // Bitcoind fails every request: 503 naming it, up 0, errors counted.
    let (_, m) = http_get(&addr, "/metrics");
    let errors_before = metric(&m, "sbtc_node_errors_total{node=\"bitcoind\"}").unwrap();
    let scan_errors_before = metric(&m, "sbtc_scan_errors_total").unwrap();
    peg.bitcoind.set_fault(Some(Fault::ServerError));
    let mut body = String::new();
    // Under load the stalled ticks may fail /health a moment before the node
    // has been down past the limit: wait for the 503 that names it.
    let took = wait_until(
        Duration::from_secs(20),
        "/health 503 naming bitcoind",
        || {
            let (code, b) = http_get(&addr, "/health");
            body = b;
            code == 503 && body.contains("bitcoind at http://")
        },
    );
    eprintln!("/health went 503 {took:?} after bitcoind failed (limit 2 s):\n{body}");
    assert!(
        body.contains("bitcoind at http://") && body.contains("unreachable"),
        "{body}"
    );
    let (_, m) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&m, "sbtc_node_up{node=\"bitcoind\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sbtc_node_up{node=\"stacks-node\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sbtc_healthy"), Some(0.0), "{m}");
    assert!(metric(&m, "sbtc_node_errors_total{node=\"bitcoind\"}").unwrap() > errors_before);
    assert!(
        metric(&m, "sbtc_scan_errors_total").unwrap() > scan_errors_before,
        "{m}"
    );
    let o = cli(&config, &["status"]);
    assert!(
        !o.status.success(),
        "status with bitcoind failing: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("DOWN")
            && String::from_utf8_lossy(&o.stderr).contains("bitcoind at http://"),
        "{}",
        text(&o)
    );
    let (_, page) = http_get(&addr, "/?fragment");
    assert!(
        page.contains("data-node=\"bitcoind\" data-up=\"0\""),
        "{page}"
    );

    // Back: healthy again.
    peg.bitcoind.set_fault(None);
    let took = wait_until(Duration::from_secs(20), "/health 200 again", || {
        http_get(&addr, "/health").0 == 200
    });
    eprintln!("/health recovered {took:?} after bitcoind answered again");
    let (_, m) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&m, "sbtc_node_up{node=\"bitcoind\"}"),
        Some(1.0),
        "{m}"
    );

    // The stacks-node stops (connections refused) and starts again.
    let (_, m) = http_get(&addr, "/metrics");
    let errors_before = metric(&m, "sbtc_node_errors_total{node=\"stacks-node\"}").unwrap();
    stacks_fwd.pause();
    let took = wait_until(
        Duration::from_secs(20),
        "/health 503 naming the stacks-node",
        || {
            let (code, b) = http_get(&addr, "/health");
            body = b;
            code == 503 && body.contains("stacks-node at http://127.0.0.1:")
        },
    );
    eprintln!("/health went 503 {took:?} after the stacks-node stopped:\n{body}");
    let (_, m) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&m, "sbtc_node_up{node=\"stacks-node\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(metric(&m, "sbtc_node_errors_total{node=\"stacks-node\"}").unwrap() > errors_before);
    let o = cli(&config, &["status"]);
    assert!(
        !o.status.success() && text(&o).contains("stacks-node at http://"),
        "{}",
        text(&o)
    );
    stacks_fwd.resume();
    let took = wait_until(
        Duration::from_secs(20),
        "/health 200 after the restart",
        || http_get(&addr, "/health").0 == 200,
    );
    eprintln!("/health recovered {took:?} after the stacks-node started again");
    let (_, m) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&m, "sbtc_node_up{node=\"stacks-node\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(cli(&config, &["status"]).status.success());

    assert!(
        run.0.try_wait().unwrap().is_none(),
        "run exited: {}",
        run_log()
    );
    assert!(
        run_log().matches("bitcoind at http").count() <= 4,
        "the outage is logged once going down and once coming back:\n{}",
        run_log()
    );
    eprintln!("whole test: {:?}", started.elapsed());
}
