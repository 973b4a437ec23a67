//! The relay server.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::{write_frame, HEADER_LOWEST, HEADER_NEXT};

/// Limits of a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most messages held.
    pub max_messages: usize,
    /// Most bytes held.
    pub max_bytes: usize,
    /// Oldest message held.
    pub max_age: Duration,
    /// Largest single message.
    pub max_message_len: usize,
    /// Longest a GET may wait for new messages.
    pub max_wait: Duration,
    /// Most messages in one GET answer.
    pub max_batch: usize,
    /// Requests served at once (each long poll holds one).
    pub workers: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_messages: 100_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(3600),
            max_message_len: 4 << 20,
            max_wait: Duration::from_secs(30),
            max_batch: 10_000,
            workers: 512,
        }
    }
}

struct Entry {
    seq: u64,
    at: Instant,
    tag: String,
    bytes: Arc<Vec<u8>>,
}

/// The longest routing tag.
const MAX_TAG_LEN: usize = 32;

struct Log {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
}

impl Log {
    fn lowest(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    fn evict(&mut self, config: &RelayConfig, now: Instant) {
        while let Some(front) = self.entries.front() {
            let too_old = now.duration_since(front.at) > config.max_age;
            if self.entries.len() > config.max_messages || self.bytes > config.max_bytes || too_old
            {
                self.bytes -= front.bytes.len();
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Messages after `after` tagged with one of `tags` (all when empty), at most `max`.
    fn after(&self, after: u64, max: usize, tags: &[&str]) -> Vec<(u64, Arc<Vec<u8>>)> {
        let lowest = self.lowest();
        let start =
            usize::try_from(after.saturating_add(1).saturating_sub(lowest)).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(start)
            .filter(|e| tags.is_empty() || tags.contains(&e.tag.as_str()))
            .take(max)
            .map(|e| (e.seq, e.bytes.clone()))
            .collect()
    }
}

struct Shared {
    config: RelayConfig,
    log: Mutex<Log>,
    arrived: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock means a handler panicked mid-update; the log itself
        // is still consistent (every update is a few plain field writes).
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running relay.
pub struct RelayServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RelayServer {
    /// Starts a relay listening on `addr` (e.g. `127.0.0.1:3000`, or port 0 for a free one).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn start(addr: &str, config: RelayConfig) -> std::io::Result<RelayServer> {
        let server =
            Server::from_listener(nodelay_listener(addr)?, None).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("relay is not listening on an IP address"))?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
            }),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            config,
        });
        let workers = (0..shared.config.workers.max(1))
            .map(|i| {
                let (server, shared) = (server.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("relay-{i}"))
                    .stack_size(256 << 10)
                    .spawn(move || worker(&server, &shared))
            })
            .collect::<Result<Vec<_>, _>>()?;
        info!("relay listening on http://{addr}");
        Ok(RelayServer {
            addr,
            shared,
            server,
            workers,
        })
    }

    /// Returns the address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, answers the waiting long polls, and waits
    /// for the workers to finish.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.arrived.notify_all();
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `addr` with TCP_NODELAY, which accepted connections inherit: the
/// server writes headers and body separately, and with Nagle's algorithm
/// each small answer would wait for a delayed ACK (~40 ms a hop). For any
/// tiny_http server (`Server::from_listener`).
///
/// # Errors
/// When `addr` does not resolve or cannot be bound.
pub fn nodelay_listener(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker(server: &Server, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        match server.recv() {
            Ok(req) => handle(req, shared),
            Err(_) if shared.stop.load(Ordering::SeqCst) => break,
            Err(e) => {
                warn!("relay: accepting a request failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn header(name: &str, value: impl ToString) -> Header {
    Header::from_bytes(name.as_bytes(), value.to_string().as_bytes()).expect("ASCII header")
}

fn error(req: Request, status: u16, message: &str) {
    debug!(
        "relay: {status} for {} {}: {message}",
        req.method(),
        req.url()
    );
    let body = serde_json::json!({ "error": message }).to_string();
    let resp = Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    let _ = req.respond(resp);
}

/// Returns the value of `key` in a query `a=1&b=2`.
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').filter(|p| !p.is_empty()).find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

fn query_u64(query: &str, key: &str) -> Result<Option<u64>, String> {
    query_value(query, key)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("{key}={v:?} is not a number"))
        })
        .transpose()
}

/// A routing tag: up to 32 of `[A-Za-z0-9_-]`.
fn valid_tag(t: &str) -> bool {
    t.len() <= MAX_TAG_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn handle(req: Request, shared: &Shared) {
    let url = req.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match (req.method(), path) {
        (Method::Post, "/messages") => {
            let tag = query_value(query, "tag").unwrap_or("").to_owned();
            if valid_tag(&tag) {
                post(req, shared, tag)
            } else {
                error(req, 400, "tag must be up to 32 letters, digits, - or _")
            }
        }
        (Method::Get, "/messages") => {
            let tags: Vec<&str> = query_value(query, "tags")
                .map(|t| t.split(',').filter(|t| !t.is_empty()).collect())
                .unwrap_or_default();
            if !tags.iter().all(|t| valid_tag(t)) {
                return error(req, 400, "tags must be a comma-separated list of tags");
            }
            match (
                query_u64(query, "after"),
                query_u64(query, "wait_ms"),
                query_u64(query, "max"),
            ) {
                (Ok(after), Ok(wait), Ok(max)) => get(
                    req,
                    shared,
                    after.unwrap_or(0),
                    wait.unwrap_or(0),
                    max,
                    &tags,
                ),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => error(req, 400, &e),
            }
        }
        (Method::Get, "/head") => {
            let (next, lowest) = {
                let log = shared.lock();
                (log.next_seq, log.lowest())
            };
            let body = serde_json::json!({ "next": next, "lowest": lowest }).to_string();
            let _ = req.respond(
                Response::from_string(body).with_header(header("Content-Type", "application/json")),
            );
        }
        (Method::Get, "/health") => {
            let _ = req.respond(Response::from_string("ok"));
        }
        (_, "/messages" | "/head" | "/health") => error(req, 405, "method not allowed"),
        _ => error(
            req,
            404,
            "no such endpoint: use /messages, /head or /health",
        ),
    }
}

fn post(mut req: Request, shared: &Shared, tag: String) {
    let limit = shared.config.max_message_len;
    if req.body_length().is_some_and(|n| n > limit) {
        return error(req, 413, &format!("message larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    let read = req
        .as_reader()
        .take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut body);
    if read.is_err() {
        return error(req, 400, "could not read the body");
    }
    if body.len() > limit {
        return error(req, 413, &format!("message larger than {limit} bytes"));
    }
    if body.is_empty() {
        return error(req, 400, "empty message");
    }
    let seq = {
        let mut log = shared.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        log.bytes += body.len();
        log.entries.push_back(Entry {
            seq,
            at: Instant::now(),
            tag,
            bytes: Arc::new(body),
        });
        log.evict(&shared.config, Instant::now());
        seq
    };
    shared.arrived.notify_all();
    let body = serde_json::json!({ "seq": seq }).to_string();
    let _ = req.respond(
        Response::from_string(body).with_header(header("Content-Type", "application/json")),
    );
}

fn get(req: Request, shared: &Shared, after: u64, wait_ms: u64, max: Option<u64>, tags: &[&str]) {
    let max = max
        .map_or(shared.config.max_batch, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        })
        .clamp(1, shared.config.max_batch);
    let deadline = Instant::now() + Duration::from_millis(wait_ms).min(shared.config.max_wait);
    let (messages, next, lowest) = {
        let mut log = shared.lock();
        loop {
            log.evict(&shared.config, Instant::now());
            let found = log.after(after, max, tags);
            let now = Instant::now();
            if !found.is_empty() || now >= deadline || shared.stop.load(Ordering::SeqCst) {
                break (found, log.next_seq, log.lowest());
            }
            log = shared
                .arrived
                .wait_timeout(log, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    };
    let mut body = Vec::with_capacity(messages.iter().map(|(_, b)| b.len() + 12).sum());
    for (seq, bytes) in &messages {
        write_frame(&mut body, *seq, bytes);
    }
    let resp = Response::from_data(body)
        .with_header(header("Content-Type", "application/octet-stream"))
        .with_header(header(HEADER_NEXT, next))
        .with_header(header(HEADER_LOWEST, lowest));
    let _ = req.respond(resp);
}
