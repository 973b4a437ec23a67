//! Start-up, retries, signals and logs of the real binary, as an operator
//! meets them: `run` waits for a stacks-node that comes up late, a failing
//! scan backs off instead of warning every poll, Ctrl-C stops `dkg`, `-v`
//! shows this project's lines and not the HTTP client's. Every wait is
//! bounded.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devnet::{Lie, Peg, PegOptions, Proxy, User};

fn spawn(config: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits up to `within` for `needle` in the log.
fn wait_for(log: &Path, needle: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if read(log).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

/// SIGTERM, then the exit status within 10 s (SIGKILL and a failure beyond).
fn stop(mut child: Child) -> std::process::ExitStatus {
    signal(&child, "TERM");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the process did not stop within 10 s of SIGTERM");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP forwarder from `port` to `upstream`, started late: until then
/// nothing listens there (connection refused, as with a node that is down).
struct Forwarder {
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(port: u16, upstream: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Forwarder { stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// A devnet peg with its key published and a coordinator config for it.
fn peg(dir: &Path) -> (Peg, PathBuf) {
    let peg = Peg::start(PegOptions::new(dir)).unwrap();
    peg.publish_key().unwrap();
    let users = peg.users(1);
    let allowed: Vec<&User> = users.iter().collect();
    let start = peg.bitcoind.with(|b| b.height()) + 1;
    let config = peg.write_config(&allowed, start).unwrap();
    (peg, config)
}

/// Today's code exited within 35 ms when the stacks-node was down; now
/// `run` waits with backoff, naming the URL, and goes on when it answers.
#[test]
fn run_waits_for_a_stacks_node_that_comes_up_late_then_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let (peg, config) = peg(dir.path());
    let port = free_port();
    let late = format!("http://127.0.0.1:{port}");
    let text = read(&config).replace(&peg.stacks.url(), &late);
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("run.log");
    let mut child = spawn(&config, &["run"], &log);

    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited while the stacks-node was down: {}",
        read(&log)
    );
    let waiting = format!("waiting for the stacks-node at {late}");
    let lines = read(&log).lines().filter(|l| l.contains(&waiting)).count();
    // Backoff 0.25 s, 0.5 s, 1 s, 2 s: a handful of lines in 3 s, not one per poll.
    assert!((1..=6).contains(&lines), "{lines} lines: {}", read(&log));
    assert!(read(&log).contains("waited "), "{}", read(&log));

    let _up = Forwarder::start(port, addr_of(&peg.stacks.url()));
    assert!(
        wait_for(&log, "coordinator loop started", Duration::from_secs(30)),
        "run did not proceed once the stacks-node answered: {}",
        read(&log)
    );
    assert!(read(&log).contains(&format!("the stacks-node at {late} answers")));
    let status = stop(child);
    assert!(status.success(), "{status:?}: {}", read(&log));
}

/// Today a failing scan repeated its WARN every poll (1,342 lines in 30 s
/// on the devnet, whose poll is 20 ms), without the URL. Now a failure is
/// logged once per scan backoff (1 s, 2 s, …), repeats are held back for
/// 30 s, and the line names the node.
#[test]
fn a_failing_scan_backs_off_and_names_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (peg, config) = peg(dir.path());
    let proxy = Proxy::start(&peg.bitcoind.url(), Duration::from_secs(2)).unwrap();
    let text = read(&config).replace(&peg.bitcoind.url(), &proxy.url());
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("run.log");
    let child = spawn(&config, &["run"], &log);
    assert!(
        wait_for(&log, "coordinator loop started", Duration::from_secs(30)),
        "{}",
        read(&log)
    );
    proxy.set(Lie::rpc("getblockcount", |_, _| {
        devnet::proxy::rpc_error(-1, "bitcoind broke")
    }));
    std::thread::sleep(Duration::from_secs(4));
    let asked = proxy.told_rpc("getblockcount");
    proxy.clear();
    let status = stop(child);
    assert!(status.success(), "{status:?}: {}", read(&log));
    // The tip is still read every poll (pending ops need it); the failure is
    // logged once per backoff (1 s, 2 s, …), and a repeat at most every 30 s.
    assert!(asked >= 1, "the proxy saw no getblockcount");
    let text = read(&log);
    let scans: Vec<&str> = text.lines().filter(|l| l.contains("scanning:")).collect();
    assert!(
        (1..=3).contains(&scans.len()),
        "{} scan warnings in 4 s:\n{}",
        scans.len(),
        scans.join("\n")
    );
    assert!(
        scans
            .iter()
            .all(|l| l.contains(&proxy.url()) && l.contains("bitcoind broke")),
        "{scans:?}"
    );
}

/// Ctrl-C during `dkg` (here: a relay with no signer, so the round would
/// wait for its 60 s limit) stops it at once with a message; no key is
/// left behind.
#[test]
fn ctrl_c_stops_dkg_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay::RelayServer::start("127.0.0.1:0", relay::RelayConfig::default()).unwrap();
    let config = dead_config(dir.path(), &relay.url());
    let log = dir.path().join("dkg.log");
    let mut child = spawn(&config, &["dkg"], &log);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "dkg ended early: {}",
        read(&log)
    );
    let sent = Instant::now();
    signal(&child, "INT");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "dkg still runs 3 s after Ctrl-C: {}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{}", read(&log));
    assert!(read(&log).contains("stopped by a signal"), "{}", read(&log));
    let state = dir.path().join("data/frost-coordinator.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        let v: serde_json::Value = serde_json::from_str(&text).expect("whole JSON");
        assert_eq!(v["keys"], serde_json::json!([]), "{v}");
    }
    relay.shutdown();
}

fn conf(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conf")
        .join(file)
}

/// The sample config with its data in `dir`, nodes at a closed port, the
/// relay at `relay`.
fn dead_config(dir: &Path, relay: &str) -> PathBuf {
    let dead = "http://127.0.0.1:9";
    let text = std::fs::read_to_string(conf("coordinator.toml"))
        .unwrap()
        .replace("\"../data\"", &format!("{:?}", dir.join("data")))
        .replace("http://127.0.0.1:20443", dead)
        .replace("http://127.0.0.1:18443", dead)
        .replace("http://127.0.0.1:3000", relay)
        .replace("rpc_timeout_ms = 10000", "rpc_timeout_ms = 500")
        .replace("\"signer.toml\"", &format!("{:?}", conf("signer.toml")));
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `-v` shows this project's debug lines, never the HTTP client's (today
/// `-v` set every crate to debug); `--log-format json` writes one object a
/// line with the same RFC 3339 millisecond timestamps.
#[test]
fn verbose_shows_our_debug_lines_not_http_internals_and_json_parses() {
    let dir = tempfile::tempdir().unwrap();
    let config = dead_config(dir.path(), "http://127.0.0.1:9");
    let o = cli(&config, &["-v", "status"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("DEBUG coordinator_cli: configuration"), "{e}");
    for internal in ["ureq", "rustls", "hyper"] {
        assert!(
            !e.lines().any(|l| l.contains(&format!(" {internal}"))),
            "{internal} lines with -v:\n{e}"
        );
    }
    let o = cli(&config, &["--log-format", "json", "-v", "status"]);
    let e = String::from_utf8_lossy(&o.stderr);
    let mut n = 0;
    for l in e.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && &ts[19..20] == ".",
            "{ts}"
        );
        n += 1;
    }
    assert!(n >= 1, "no JSON line: {e}");
}

/// A config file holding keys that others can read gets a warning naming
/// the fields and the fix; a private one does not.
#[cfg(unix)]
#[test]
fn a_config_file_with_keys_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dead_config(dir.path(), "http://127.0.0.1:9");
    let o = cli(&config, &["queue", "list"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.contains("chmod"), "{e}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = cli(&config, &["queue", "list"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("WARN")
            && e.contains("stacks_private_key")
            && e.contains("relay.network_private_key")
            && e.contains("readable by others")
            && e.contains("chmod 600"),
        "{e}"
    );
    let mut buf = String::new();
    let _ = std::fs::File::open(&config)
        .unwrap()
        .read_to_string(&mut buf);
    let key = "11468a462ac5b1df92cacf04a65179ecd02f514196909f7dbc63abae88ba05c6";
    assert!(
        buf.contains(key) && !e.contains(key),
        "a key reached the log"
    );
}

/// With every signer down, `dkg-sign` named none of them (today:
/// `signing: MissingMessageNonceInfo`); now it names the silent signers
/// and the time it waited.
#[test]
fn signing_with_every_signer_down_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.sign_timeout = Duration::from_secs(2);
    let mut peg = Peg::start(opts).unwrap();
    peg.publish_key().unwrap();
    let users = peg.users(1);
    let allowed: Vec<&User> = users.iter().collect();
    let config = peg.write_config(&allowed, 1).unwrap();
    for id in 1..=5 {
        peg.stop_signer(id);
    }
    let began = Instant::now();
    let o = cli(&config, &["dkg-sign"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(began.elapsed() < Duration::from_secs(20), "{e}");
    assert!(!e.contains("MissingMessageNonceInfo"), "{e}");
    assert!(
        e.contains("signing timed out after")
            && e.contains("no answer from signers [1, 2, 3, 4, 5]"),
        "{e}"
    );
}
