//! The real `relay-server` binary as a child process: its peak memory stays
//! bounded while many clients read the whole log slowly, and SIGTERM stops
//! it cleanly. Linux only (`/proc`).
#![allow(clippy::print_stderr)] // tests report their measurements

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay::RelayClient;

const MIB: usize = 1 << 20;
/// `--max-bytes`: the log holds at most this.
const MAX_BYTES: usize = 32 * MIB;
/// `--max-answer-bytes`: one answer holds at most this of messages.
const ANSWER: usize = 4 * MIB;
/// Clients reading `GET after=0` slowly, at once.
const READERS: usize = 32;

/// Kills the child if the test fails half-way.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Starts the binary on a free port; returns it and its URL (from its log).
fn start(args: &[&str]) -> (Relay, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SBTC_RELAY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let relay = Relay(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line
                .split_once("relay listening on ")
                .and_then(|(_, rest)| rest.split([',', ' ']).next())
            {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("relay-server did not report its address");
    (relay, url)
}

#[test]
fn many_slow_full_reads_keep_the_relay_binary_within_its_memory_bound() {
    let (mut relay, url) = start(&[
        "--max-bytes",
        &MAX_BYTES.to_string(),
        "--max-message-bytes",
        &MIB.to_string(),
        "--max-answer-bytes",
        &ANSWER.to_string(),
    ]);
    let pid = relay.0.id();
    let addr = url.trim_start_matches("http://").to_owned();
    let c = RelayClient::new(&url, Duration::from_secs(20));
    // Junk just under the byte limit (distinct bytes, so nothing is shared
    // by accident).
    let post_junk = |n: usize, salt: u8| {
        for i in 0..n {
            let msg: Vec<u8> = (0..MIB - 64)
                .map(|j| (j as u8) ^ (i as u8) ^ salt)
                .collect();
            c.post(&msg).unwrap();
        }
    };
    post_junk(31, 0);
    let filled = status_kib(pid, "VmRSS:") * 1024;

    // READERS clients ask for everything and read 16 KiB every 50 ms; the
    // log is replaced meanwhile, so their answers hold evicted messages.
    let t = Instant::now();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /messages?after=0 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut buf = vec![0u8; 16 << 10];
                let mut got = 0;
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    post_junk(32, 0x5a);
    let read: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(read > 0);
    assert!(t.elapsed() < Duration::from_secs(30));

    let peak = status_kib(pid, "VmHWM:") * 1024;
    // The log (MAX_BYTES) plus, at worst, one answer's budget held by each
    // reader after the log moved on, plus 48 MiB for the process itself,
    // buffers and one message being posted. Copying the log into every
    // answer (as the relay once did) needs READERS × 31 MiB.
    let bound = MAX_BYTES + ANSWER * READERS + 48 * MIB;
    eprintln!(
        "relay-server: {} MiB with the log full, peak {} MiB, bound {} MiB",
        filled / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak {peak} above {bound}");

    // Still serving, then SIGTERM stops it promptly and cleanly.
    assert!(c.head().unwrap() > 63);
    let waiting = {
        let c = c.clone();
        let after = c.head().unwrap() - 1;
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = c.poll(after, Duration::from_secs(20));
            (r.map(|b| b.messages.len()), t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (polled, took) = waiting.join().unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(polled.unwrap_or(0) == 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "relay-server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn with_a_token_file_the_binary_wants_the_token_but_not_for_health() {
    let path = std::env::temp_dir().join(format!("relay-token-{}", std::process::id()));
    std::fs::write(&path, "  tok-123\n").unwrap();
    let (_relay, url) = start(&["--token-file", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let anonymous = RelayClient::new(&url, Duration::from_secs(5));
    assert!(matches!(
        anonymous.post(b"x"),
        Err(relay::RelayError::Http { status: 401, .. })
    ));
    let member = RelayClient::new(&url, Duration::from_secs(5)).with_token("tok-123");
    assert_eq!(member.post(b"x").unwrap(), 1);
    let health = ureq::get(format!("{url}/health")).call().unwrap();
    assert_eq!(health.status(), 200);
}
