//! Relay delivery latency to many long-polling clients, beside a bare
//! fan-out baseline measured in the same run: the relay figures of
//! `docs/PERFORMANCE.md` ("Relay fan-out against a bare baseline").
//!
//! ```sh
//! cargo run --release -p relay --example relay_bench [CLIENTS] [MESSAGES] [GROUPS] [REPEATS]
//! ```
//!
//! `CLIENTS` (128) threads long-poll one in-process relay on 127.0.0.1;
//! `MESSAGES` (50) of 512 bytes are posted 20 ms apart; the time from each
//! `POST` to each client holding the message is reported as p50/p99/max.
//!
//! The *bare* baseline is the floor: a minimal server on tokio TCP (two
//! worker threads, as the relay; no HTTP framework, no routing, no limits)
//! holding the same number of waiting loopback connections; a message
//! arrives over one loopback connection and the server writes one prebuilt
//! answer, byte for byte the shape of the relay's (its headers captured from
//! a real relay answer, the same frame body), to every waiting connection
//! it is for, one nonblocking write each from the task that read the
//! message. Its clients (plain std TCP, one thread each) time it the same
//! way.
//!
//! *Tagged* runs split the clients into `GROUPS` (8) tags, as signers and the
//! coordinator poll different tags; message `i` is tagged for group
//! `i % GROUPS`, so only `CLIENTS / GROUPS` clients are addressed by each.
//! The relay's wakeup counter shows how many long polls each message woke.
//!
//! Each of the four runs (relay, bare, relay tagged, bare tagged) is done
//! `REPEATS` (1) times, interleaved, and medians are printed with the ratio.
//! `RELAY_BENCH_ONLY=relay` runs the untagged relay alone (for a profiler).
#![allow(
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use relay::{nodelay_listener, RelayClient, RelayConfig, RelayServer};

const MESSAGE_LEN: usize = 512;

/// p50, p99, max in milliseconds; CPU time of the whole process (server
/// and clients) per message, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    cpu: f64,
}

/// CPU time this process has used so far (user and system), in
/// milliseconds, at the kernel's 10 ms tick.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) * 10.0
}

fn stats((mut all, cpu): (Vec<Duration>, f64)) -> Stats {
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Stats {
        p50: at(0.5).as_secs_f64() * 1e3,
        p99: at(0.99).as_secs_f64() * 1e3,
        max: all[all.len() - 1].as_secs_f64() * 1e3,
        cpu,
    }
}

/// The tag of group `g` of `groups` ("" when there is only one group).
fn tag(groups: usize, g: usize) -> String {
    if groups <= 1 {
        String::new()
    } else {
        format!("g{g}")
    }
}

/// How many of messages `1..=messages` are for client `c`.
fn expected(messages: usize, groups: usize, c: usize) -> usize {
    (1..=messages)
        .filter(|i| groups <= 1 || i % groups == c % groups)
        .count()
}

/// Runs `clients` threads, each made by `make(c)` (a blocking poll after a
/// cursor that returns the sequence numbers it got), posts `messages` with
/// `post(i, tag)` 20 ms apart and returns every delivery latency and the
/// CPU time used per message from the first post to the last delivery.
fn measure<P, M>(
    clients: usize,
    messages: usize,
    groups: usize,
    make: M,
    mut post: impl FnMut(&str),
) -> (Vec<Duration>, f64)
where
    P: FnMut(u64) -> Vec<u64> + Send + 'static,
    M: Fn(usize) -> P,
{
    let ready = Arc::new(Barrier::new(clients + 1));
    let sent_at = Arc::new(Mutex::new(vec![None::<Instant>; messages + 1]));
    let readers: Vec<_> = (0..clients)
        .map(|c| {
            let (ready, sent_at) = (ready.clone(), sent_at.clone());
            let mut poll = make(c);
            let want = expected(messages, groups, c);
            std::thread::spawn(move || {
                ready.wait();
                let mut lat = Vec::with_capacity(want);
                let mut after = 0;
                while lat.len() < want {
                    let seqs = poll(after);
                    let now = Instant::now();
                    for seq in seqs {
                        after = after.max(seq);
                        let sent = sent_at.lock().expect("lock")[seq as usize];
                        lat.push(now - sent.unwrap_or(now));
                    }
                }
                lat
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_ms();
    for i in 1..=messages {
        sent_at.lock().expect("lock")[i] = Some(Instant::now());
        post(&tag(groups, i % groups.max(1)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let lat = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();
    (lat, (cpu_ms() - cpu) / messages as f64)
}

/// One run through the relay; also returns the long polls woken per message
/// and the connections it accepted.
fn relay_run(clients: usize, messages: usize, groups: usize) -> (Stats, f64, u64) {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).expect("relay starts");
    let poster = RelayClient::new(&relay.url(), Duration::from_secs(5));
    let woken_before = relay.wakeups();
    let lat = measure(
        clients,
        messages,
        groups,
        |c| {
            let client = poster.clone();
            let t = tag(groups, c % groups.max(1));
            move |after| {
                let tags: Vec<&str> = if t.is_empty() { vec![] } else { vec![&t] };
                let b = client
                    .poll_tags(after, Duration::from_secs(5), &tags)
                    .expect("poll");
                b.messages.into_iter().map(|(s, _)| s).collect()
            }
        },
        |t| {
            poster.post_tagged(&[0u8; MESSAGE_LEN], t).expect("post");
        },
    );
    let woken = (relay.wakeups() - woken_before) as f64 / messages as f64;
    let accepted = relay.connections_accepted();
    relay.shutdown();
    (stats(lat), woken, accepted)
}

/// Reads one HTTP/1.1 head (up to the blank line) and its body of
/// `Content-Length` bytes; `None` at end of stream.
fn read_http(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// The head of a real relay answer carrying one message (captured from a
/// scratch relay), so the bare server writes the same bytes.
fn captured_head() -> String {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).expect("relay starts");
    RelayClient::new(&relay.url(), Duration::from_secs(5))
        .post(&[0u8; MESSAGE_LEN])
        .expect("post");
    let mut s = TcpStream::connect(relay.addr()).expect("connect");
    write!(
        s,
        "GET /messages?after=0 HTTP/1.1\r\nHost: {}\r\n\r\n",
        relay.addr()
    )
    .expect("write");
    let (head, body) = read_http(&mut BufReader::new(s)).expect("an answer");
    assert_eq!(body.len(), 12 + MESSAGE_LEN);
    head
}

/// The relay answer's head with `next`, `lowest` and the length set.
fn head_for(template: &str, next: u64, lowest: u64, len: usize) -> String {
    template
        .split_inclusive("\r\n")
        .map(|line| {
            let name = line.split_once(':').map(|(k, _)| k.to_ascii_lowercase());
            match name.as_deref() {
                Some("x-relay-next") => format!("x-relay-next: {next}\r\n"),
                Some("x-relay-lowest") => format!("x-relay-lowest: {lowest}\r\n"),
                Some("content-length") => format!("content-length: {len}\r\n"),
                _ => line.to_owned(),
            }
        })
        .collect()
}

/// The value of `key` in the request line's query.
fn query<'a>(head: &'a str, key: &str) -> &'a str {
    let target = head.split(' ').nth(1).unwrap_or("");
    let q = target.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

#[derive(Default)]
struct BareState {
    /// `(tag, message)`; message `i + 1` at index `i`.
    log: Vec<(String, Vec<u8>)>,
    /// `(tags, stream)` of the connections waiting.
    waiting: Vec<(String, Arc<tokio::net::TcpStream>)>,
}

fn wants(tags: &str, tag: &str) -> bool {
    tags.is_empty() || tags.split(',').any(|t| t == tag)
}

/// The whole answer (head and frames) for `msgs`.
fn bare_answer(template: &str, next: u64, msgs: &[(u64, &[u8])]) -> Vec<u8> {
    let len: usize = msgs.iter().map(|(_, m)| 12 + m.len()).sum();
    let mut out = head_for(template, next, 1, len).into_bytes();
    for (seq, m) in msgs {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// Writes all of `bytes` to `s`.
async fn write_all(s: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads from `s` into `buf` until `done(buf)` says how much to take.
async fn read_until(
    s: &tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<Vec<u8>> {
    loop {
        if let Some(n) = done(buf) {
            return Some(buf.drain(..n).collect());
        }
        s.readable().await.ok()?;
        let mut chunk = [0u8; 4096];
        match s.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// One bare client connection: reads a request head, answers at once from
/// the log or waits (registered) for the poster to answer.
async fn bare_connection(
    s: Arc<tokio::net::TcpStream>,
    state: Arc<Mutex<BareState>>,
    template: Arc<String>,
) {
    let mut buf = Vec::new();
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    while let Some(head) = read_until(&s, &mut buf, head_end).await {
        let head = String::from_utf8_lossy(&head).into_owned();
        let after: u64 = query(&head, "after").parse().unwrap_or(0);
        let tags = query(&head, "tags").to_owned();
        let answer = {
            let mut st = state.lock().expect("lock");
            let found: Vec<(u64, &[u8])> = st
                .log
                .iter()
                .enumerate()
                .skip(after as usize)
                .filter(|(_, (t, _))| wants(&tags, t))
                .map(|(i, (_, m))| (i as u64 + 1, m.as_slice()))
                .collect();
            if found.is_empty() {
                st.waiting.push((tags, s.clone()));
                None
            } else {
                Some(bare_answer(&template, st.log.len() as u64 + 1, &found))
            }
        };
        if let Some(answer) = answer {
            if write_all(&s, &answer).await.is_err() {
                break;
            }
        }
    }
}

/// The poster's connection: frames `tag_len u8 ‖ tag ‖ len u32 BE ‖
/// bytes`; each message is logged and one answer built for it is written
/// to every addressed waiting connection.
async fn bare_poster(
    s: tokio::net::TcpStream,
    state: Arc<Mutex<BareState>>,
    template: Arc<String>,
) {
    let mut buf = Vec::new();
    let frame_len = |b: &[u8]| {
        let t = usize::from(*b.first()?);
        let len = b.get(1 + t..5 + t)?;
        let n = 5 + t + u32::from_be_bytes(len.try_into().ok()?) as usize;
        (b.len() >= n).then_some(n)
    };
    while let Some(frame) = read_until(&s, &mut buf, frame_len).await {
        let t = usize::from(frame[0]);
        let tag = String::from_utf8_lossy(&frame[1..1 + t]).into_owned();
        let msg = frame[5 + t..].to_vec();
        let (answer, go) = {
            let mut st = state.lock().expect("lock");
            let seq = st.log.len() as u64 + 1;
            let answer = bare_answer(&template, seq + 1, &[(seq, &msg)]);
            st.log.push((tag.clone(), msg));
            let (go, stay): (Vec<_>, Vec<_>) = st
                .waiting
                .drain(..)
                .partition(|(tags, _)| wants(tags, &tag));
            st.waiting = stay;
            (answer, go)
        };
        // One nonblocking write each into an empty socket buffer, in
        // batches of 16 connections spread over the runtime's workers (as
        // the relay's answers are); a connection that cannot take it all at
        // once finishes on its own.
        let answer = Arc::new(answer);
        let mut go = go.into_iter().map(|(_, c)| c).peekable();
        while go.peek().is_some() {
            let batch: Vec<_> = go.by_ref().take(16).collect();
            let answer = answer.clone();
            tokio::spawn(async move {
                for c in batch {
                    match c.try_write(&answer) {
                        Ok(n) if n == answer.len() => {}
                        Ok(n) => {
                            let answer = answer.clone();
                            tokio::spawn(async move { write_all(&c, &answer[n..]).await });
                        }
                        Err(_) => {
                            let answer = answer.clone();
                            tokio::spawn(async move { write_all(&c, &answer).await });
                        }
                    }
                }
            });
        }
    }
}

/// Starts the bare server on its own tokio runtime of two worker threads
/// (as the relay's); returns the runtime, its client address and its
/// posting address.
fn bare_server(template: String) -> (tokio::runtime::Runtime, SocketAddr, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RelayConfig::default().threads)
        .enable_all()
        .build()
        .expect("runtime");
    let state = Arc::new(Mutex::new(BareState::default()));
    let template = Arc::new(template);
    let clients = nodelay_listener("127.0.0.1:0").expect("bind");
    let posts = nodelay_listener("127.0.0.1:0").expect("bind");
    let (addr, post_addr) = (clients.local_addr().unwrap(), posts.local_addr().unwrap());
    clients.set_nonblocking(true).expect("nonblocking");
    posts.set_nonblocking(true).expect("nonblocking");
    let _in = runtime.enter();
    let clients = tokio::net::TcpListener::from_std(clients).expect("listener");
    let posts = tokio::net::TcpListener::from_std(posts).expect("listener");
    {
        let (state, template) = (state.clone(), template.clone());
        runtime.spawn(async move {
            while let Ok((c, _)) = clients.accept().await {
                let _ = c.set_nodelay(true);
                tokio::spawn(bare_connection(
                    Arc::new(c),
                    state.clone(),
                    template.clone(),
                ));
            }
        });
    }
    runtime.spawn(async move {
        if let Ok((c, _)) = posts.accept().await {
            let _ = c.set_nodelay(true);
            bare_poster(c, state, template).await;
        }
    });
    drop(_in);
    (runtime, addr, post_addr)
}

fn bare_run(template: &str, clients: usize, messages: usize, groups: usize) -> Stats {
    let (runtime, addr, post_addr) = bare_server(template.to_owned());
    let mut poster = TcpStream::connect(post_addr).expect("connect");
    poster.set_nodelay(true).expect("nodelay");
    let lat = measure(
        clients,
        messages,
        groups,
        |c| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let t = tag(groups, c % groups.max(1));
            move |after| {
                write!(
                    w,
                    "GET /messages?after={after}&wait_ms=5000&tags={t} HTTP/1.1\r\n\
                     host: {addr}\r\nuser-agent: ureq\r\naccept: */*\r\n\r\n"
                )
                .expect("request");
                let (_, body) = read_http(&mut r).expect("answer");
                let mut seqs = vec![];
                let mut rest = &body[..];
                while rest.len() >= 12 {
                    let seq = u64::from_be_bytes(rest[..8].try_into().unwrap());
                    let len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
                    seqs.push(seq);
                    rest = &rest[12 + len..];
                }
                seqs
            }
        },
        |t| {
            let mut frame = vec![t.len() as u8];
            frame.extend_from_slice(t.as_bytes());
            frame.extend_from_slice(&(MESSAGE_LEN as u32).to_be_bytes());
            frame.extend_from_slice(&[0u8; MESSAGE_LEN]);
            poster.write_all(&frame).expect("post");
        },
    );
    runtime.shutdown_background();
    stats(lat)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let groups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8).max(2);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let template = captured_head();
    println!(
        "{clients} long pollers, {messages} messages of {MESSAGE_LEN} bytes 20 ms apart; \
         tagged: {groups} tags; load average {}",
        loadavg()
    );
    let show = |name: &str, s: Stats| {
        println!(
            "  {name:<14} p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms  CPU {:5.2} ms/message",
            s.p50, s.p99, s.max, s.cpu
        );
    };
    let mut runs: Vec<(&str, Vec<Stats>)> = ["relay", "bare", "relay tagged", "bare tagged"]
        .into_iter()
        .map(|n| (n, vec![]))
        .collect();
    let mut woken = (vec![], vec![]);
    for r in 1..=repeats {
        println!("run {r} (load average {})", loadavg());
        if std::env::var("RELAY_BENCH_ONLY").is_ok_and(|m| m == "relay") {
            // For a profiler: the untagged relay run alone.
            show("relay", relay_run(clients, messages, 1).0);
            continue;
        }
        let (s, w, a) = relay_run(clients, messages, 1);
        show("relay", s);
        println!("    long polls woken per message: {w:.1}; connections accepted: {a}");
        runs[0].1.push(s);
        woken.0.push(w);
        let s = bare_run(&template, clients, messages, 1);
        show("bare", s);
        runs[1].1.push(s);
        let (s, w, a) = relay_run(clients, messages, groups);
        show("relay tagged", s);
        println!("    long polls woken per message: {w:.1}; connections accepted: {a}");
        runs[2].1.push(s);
        woken.1.push(w);
        let s = bare_run(&template, clients, messages, groups);
        show("bare tagged", s);
        runs[3].1.push(s);
    }
    if runs[0].1.is_empty() {
        return;
    }
    let med = |v: &[Stats]| Stats {
        p50: median(v.iter().map(|s| s.p50).collect()),
        p99: median(v.iter().map(|s| s.p99).collect()),
        max: median(v.iter().map(|s| s.max).collect()),
        cpu: median(v.iter().map(|s| s.cpu).collect()),
    };
    println!("medians of {repeats} run(s) (load average {}):", loadavg());
    for (name, v) in &runs {
        show(name, med(v));
    }
    let ratio = |a: usize, b: usize| {
        let (r, f) = (med(&runs[a].1), med(&runs[b].1));
        format!(
            "p50 {:.2}x  p99 {:.2}x  CPU {:.2}x",
            r.p50 / f.p50,
            r.p99 / f.p99,
            r.cpu / f.cpu
        )
    };
    println!("  relay / bare:               {}", ratio(0, 1));
    println!("  relay tagged / bare tagged: {}", ratio(2, 3));
    println!(
        "  long polls woken per message: {:.1} untagged, {:.1} tagged",
        median(woken.0),
        median(woken.1)
    );
}
