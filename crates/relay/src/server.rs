//! The relay server: hyper 1 (HTTP/1.1) on a small tokio runtime of its own.
//!
//! Every resource an outsider can hold is bounded: connections (in total
//! and per client address), long polls (in total and per address), the time
//! to send a request's headers and its body, the time a write may make no
//! progress, the total time to send an answer (a minimum rate, with a cap),
//! the size of a message and of an answer, and the answer bytes in flight
//! (in total and per address). Answers share the logged message bytes
//! (`Bytes`), never copying them per client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info, warn};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::{frame_head, HEADER_INSTANCE, HEADER_LOWEST, HEADER_NEXT, MAX_ANSWER_BODY};

/// Limits of a relay.
///
/// The defaults suit a peg of tens of signers on their own addresses, and
/// in-process tests where up to 128 parties share 127.0.0.1.
#[derive(Clone)]
pub struct RelayConfig {
    /// Most messages held.
    pub max_messages: usize,
    /// Most bytes held.
    pub max_bytes: usize,
    /// Oldest message held.
    pub max_age: Duration,
    /// Largest single message (a bigger `POST` gets `413`).
    pub max_message_len: usize,
    /// Longest a GET may wait for new messages.
    pub max_wait: Duration,
    /// Most messages in one GET answer.
    pub max_batch: usize,
    /// Most message bytes in one GET answer (a single larger message still
    /// goes alone). At most [`MAX_ANSWER_BODY`] minus one frame header.
    pub max_answer_bytes: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Most GETs waiting for messages at once.
    pub max_long_polls: usize,
    /// Most GETs waiting for messages at once from one client address.
    pub max_long_polls_per_ip: usize,
    /// Longest a client may take to send a request's headers; also how long
    /// an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Longest a write to a client may make no progress.
    pub write_timeout: Duration,
    /// Slowest rate, in bytes per second, at which a client must take an
    /// answer: an answer of `n` bytes must be fully written within
    /// `max(write_timeout, n / min_write_rate)` (at most
    /// `max_answer_write_time`), else the connection is closed. Honest
    /// parties are on a LAN or loopback; the default 1 MiB/s sends a full
    /// 8 MiB answer in 8 s, within the 10 s write timeout.
    pub min_write_rate: u64,
    /// Cap on the time allowed for one answer by `min_write_rate` (the
    /// deadline is never below `write_timeout`).
    pub max_answer_write_time: Duration,
    /// Most message bytes held by answers being sent, in total. A new answer
    /// gets at most what is left as its byte budget (at least one message);
    /// with nothing left, `503`. The message bytes pinned by answers (kept
    /// alive after the log dropped them) never exceed this.
    pub max_answer_bytes_in_flight: usize,
    /// Most message bytes held by answers being sent to one client address
    /// (IPv6: one /64); with nothing left, `429`.
    pub max_answer_bytes_in_flight_per_ip: usize,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Threads of the relay's runtime.
    pub threads: usize,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("max_message_len", &self.max_message_len)
            .field("max_wait", &self.max_wait)
            .field("max_batch", &self.max_batch)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_long_polls", &self.max_long_polls)
            .field("max_long_polls_per_ip", &self.max_long_polls_per_ip)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("min_write_rate", &self.min_write_rate)
            .field("max_answer_write_time", &self.max_answer_write_time)
            .field(
                "max_answer_bytes_in_flight",
                &self.max_answer_bytes_in_flight,
            )
            .field(
                "max_answer_bytes_in_flight_per_ip",
                &self.max_answer_bytes_in_flight_per_ip,
            )
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("threads", &self.threads)
            .finish()
    }
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
            max_answer_bytes: 8 << 20,
            max_connections: 1024,
            max_connections_per_ip: 256,
            max_long_polls: 512,
            max_long_polls_per_ip: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            min_write_rate: 1 << 20,
            max_answer_write_time: Duration::from_secs(60),
            max_answer_bytes_in_flight: 256 << 20,
            max_answer_bytes_in_flight_per_ip: 64 << 20,
            token: None,
            threads: 2,
        }
    }
}

impl RelayConfig {
    /// Checks that the limits fit together.
    ///
    /// # Errors
    /// `InvalidInput` naming the limit that does not fit.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        let most = MAX_ANSWER_BODY - 12;
        if self.max_answer_bytes > most || self.max_message_len > most {
            return bad(format!(
                "max_answer_bytes ({}) and max_message_len ({}) must be at most {most}: \
                 clients accept answers up to {MAX_ANSWER_BODY} bytes",
                self.max_answer_bytes, self.max_message_len
            ));
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_long_polls", self.max_long_polls),
            ("max_long_polls_per_ip", self.max_long_polls_per_ip),
            ("max_batch", self.max_batch),
            ("max_answer_bytes", self.max_answer_bytes),
            ("max_message_len", self.max_message_len),
            (
                "max_answer_bytes_in_flight",
                self.max_answer_bytes_in_flight,
            ),
            (
                "max_answer_bytes_in_flight_per_ip",
                self.max_answer_bytes_in_flight_per_ip,
            ),
            (
                "min_write_rate",
                usize::try_from(self.min_write_rate).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.header_timeout.is_zero()
            || self.body_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.max_answer_write_time.is_zero()
        {
            return bad("timeouts must be above zero".into());
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return bad("the token must not be empty".into());
        }
        Ok(())
    }
}

struct Entry {
    seq: u64,
    at: Instant,
    tag: String,
    /// The message's frame as answers carry it, `seq u64 BE ‖ len u32 BE ‖
    /// bytes`: encoded once when posted, shared (never copied) by every
    /// answer that carries it.
    frame: Bytes,
}

impl Entry {
    fn new(seq: u64, at: Instant, tag: String, bytes: &[u8]) -> Entry {
        let mut frame = Vec::with_capacity(12 + bytes.len());
        frame.extend_from_slice(&frame_head(seq, bytes.len()));
        frame.extend_from_slice(bytes);
        Entry {
            seq,
            at,
            tag,
            frame: Bytes::from(frame),
        }
    }

    /// The message's length (its frame less the header).
    fn len(&self) -> usize {
        self.frame.len().saturating_sub(12)
    }
}

/// The longest routing tag.
const MAX_TAG_LEN: usize = 32;
/// The most tags one GET may name.
const MAX_TAGS: usize = 16;

/// A client waiting for messages with one of `tags` (any when empty).
struct Waiter {
    tags: Vec<String>,
    notify: Arc<Notify>,
}

/// The waiting long polls, indexed by the tags they wait for, so that a
/// message wakes only the polls it is for (a waiting poll has nothing after
/// its cursor, so every new message it matches is one it wants), and the
/// work of a post is the number of polls it wakes, not of all the polls.
#[derive(Default)]
struct Waiters {
    all: HashMap<u64, Waiter>,
    /// Ids of the polls waiting for any message (no tags).
    any: HashSet<u64>,
    /// Ids of the polls waiting for each tag.
    by_tag: HashMap<String, HashSet<u64>>,
}

impl Waiters {
    fn insert(&mut self, id: u64, waiter: Waiter) {
        if waiter.tags.is_empty() {
            self.any.insert(id);
        }
        for t in &waiter.tags {
            self.by_tag.entry(t.clone()).or_default().insert(id);
        }
        self.all.insert(id, waiter);
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.all.remove(&id) else {
            return;
        };
        self.any.remove(&id);
        for t in &w.tags {
            if let Some(ids) = self.by_tag.get_mut(t) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
    }

    /// Wakes the polls waiting for a message tagged `tag`; returns how many.
    fn wake(&self, tag: &str) -> usize {
        let tagged = self.by_tag.get(tag).into_iter().flatten();
        let mut woken = 0;
        for id in self.any.iter().chain(tagged) {
            if let Some(w) = self.all.get(id) {
                w.notify.notify_one();
                woken += 1;
            }
        }
        woken
    }

    /// Wakes every waiting poll (at shutdown).
    fn wake_all(&self) {
        for w in self.all.values() {
            w.notify.notify_one();
        }
    }
}

struct Log {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
    waiters: Waiters,
    next_waiter: u64,
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
                self.bytes -= front.len();
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// The frames of the messages after `after` tagged with one of `tags`
    /// (all when empty), at most `max` of them and at most `budget` message
    /// bytes (but at least one), and their message bytes.
    fn after(&self, after: u64, max: usize, budget: usize, tags: &[String]) -> (Vec<Bytes>, usize) {
        let lowest = self.lowest();
        let start =
            usize::try_from(after.saturating_add(1).saturating_sub(lowest)).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self
            .entries
            .iter()
            .skip(start)
            .filter(|e| tags.is_empty() || tags.contains(&e.tag))
        {
            if out.len() >= max || (!out.is_empty() && bytes + e.len() > budget) {
                break;
            }
            bytes += e.len();
            out.push(e.frame.clone());
        }
        (out, bytes)
    }
}

/// Groups client addresses: IPv4 (and IPv4-mapped IPv6) by address, other
/// IPv6 by /64, the block one host usually has to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    V6Net([u8; 8]),
}

impl ClientKey {
    fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    let mut net = [0u8; 8];
                    net.copy_from_slice(o.get(..8).unwrap_or(&[0; 8]));
                    ClientKey::V6Net(net)
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ClientKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(o)),
            ClientKey::V6Net(n) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&n);
                write!(f, "{}/64", std::net::Ipv6Addr::from(o))
            }
        }
    }
}

/// Counts holders of a resource, in total and per client.
struct Limiter {
    what: &'static str,
    max_total: usize,
    max_per_client: usize,
    held: Mutex<(usize, HashMap<ClientKey, usize>)>,
}

/// Why a [`Limiter`] refused.
enum Refusal {
    /// The total is reached: 503.
    Total(String),
    /// This client's share is reached: 429.
    Client(String),
}

impl Refusal {
    fn status_and_message(self) -> (StatusCode, String) {
        match self {
            Refusal::Total(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Refusal::Client(m) => (StatusCode::TOO_MANY_REQUESTS, m),
        }
    }
}

/// One resource held by one client; released on drop.
struct Held {
    limiter: Arc<Limiter>,
    client: ClientKey,
}

impl Limiter {
    fn new(what: &'static str, max_total: usize, max_per_client: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            what,
            max_total,
            max_per_client,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (usize, HashMap<ClientKey, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(self: &Arc<Self>, client: ClientKey) -> Result<Held, Refusal> {
        let mut held = self.lock();
        let (total, per) = &mut *held;
        if *total >= self.max_total {
            return Err(Refusal::Total(format!(
                "too many {} ({}), try again later",
                self.what, self.max_total
            )));
        }
        let mine = per.entry(client).or_insert(0);
        if *mine >= self.max_per_client {
            return Err(Refusal::Client(format!(
                "too many {} from {client} ({})",
                self.what, self.max_per_client
            )));
        }
        *mine += 1;
        *total += 1;
        Ok(Held {
            limiter: self.clone(),
            client,
        })
    }

    fn total(&self) -> usize {
        self.lock().0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        let (total, per) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.client);
            }
        }
    }
}

/// Counts the message bytes held by answers being sent, in total and per
/// client, against [`RelayConfig::max_answer_bytes_in_flight`] (and per ip).
struct InFlight {
    max_total: usize,
    max_per_client: usize,
    held: Mutex<(usize, HashMap<ClientKey, usize>)>,
}

/// Bytes of answers held for one client; released when the last chunk of
/// the answer is dropped (written, or the connection died).
struct Reservation {
    in_flight: Arc<InFlight>,
    client: ClientKey,
    bytes: usize,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, (usize, HashMap<ClientKey, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes `client` may still reserve, or why none.
    fn left(&self, client: ClientKey) -> Result<usize, Refusal> {
        let held = self.lock();
        let total_left = self.max_total.saturating_sub(held.0);
        let mine_left = self
            .max_per_client
            .saturating_sub(held.1.get(&client).copied().unwrap_or(0));
        if total_left == 0 {
            Err(self.refusal_total())
        } else if mine_left == 0 {
            Err(self.refusal_client(client))
        } else {
            Ok(total_left.min(mine_left))
        }
    }

    fn refusal_total(&self) -> Refusal {
        Refusal::Total(format!(
            "answers being sent hold the most bytes allowed ({}), try again later",
            self.max_total
        ))
    }

    fn refusal_client(&self, client: ClientKey) -> Refusal {
        Refusal::Client(format!(
            "answers being sent to {client} hold the most bytes allowed ({}), \
             take them first",
            self.max_per_client
        ))
    }

    /// Reserves `bytes` for `client` if both limits allow.
    fn reserve(self: &Arc<Self>, client: ClientKey, bytes: usize) -> Result<Reservation, Refusal> {
        let mut held = self.lock();
        let (total, per) = &mut *held;
        if total.saturating_add(bytes) > self.max_total {
            return Err(self.refusal_total());
        }
        let mine = per.entry(client).or_insert(0);
        if mine.saturating_add(bytes) > self.max_per_client {
            if *mine == 0 {
                per.remove(&client);
            }
            return Err(self.refusal_client(client));
        }
        *mine += bytes;
        *total += bytes;
        Ok(Reservation {
            in_flight: self.clone(),
            client,
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.in_flight.lock();
        let (total, per) = &mut *held;
        *total = total.saturating_sub(self.bytes);
        if let Some(n) = per.get_mut(&self.client) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                per.remove(&self.client);
            }
        }
    }
}

/// A chunk of an answer: the logged bytes plus the answer's reservation,
/// so the reservation lasts as long as any of its bytes is referenced (by
/// the body or by hyper's write buffer).
struct Pinned {
    bytes: Bytes,
    _reservation: Arc<Reservation>,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The write deadline of a connection's current answer, shared between the
/// handler (which starts it) and [`WriteTimeout`] (which enforces it).
#[derive(Default)]
struct AnswerClock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    /// When the answers not yet written must be; `None` once written.
    deadline: Option<Instant>,
    /// Body bytes of the answers not yet written (headers are not counted,
    /// so this reaches zero no later than the last byte).
    pending: u64,
}

impl AnswerClock {
    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An answer of `len` body bytes is about to be written.
    fn begin(&self, config: &RelayConfig, len: u64) {
        let rate = config.min_write_rate.max(1);
        let by_rate =
            Duration::from_secs_f64(len as f64 / rate as f64).min(config.max_answer_write_time);
        let allowed = by_rate.max(config.write_timeout);
        let now = Instant::now();
        let mut st = self.lock();
        // A pipelined answer queues behind the unfinished one: its time
        // adds to what is left, and never restarts the clock.
        let from = match st.deadline {
            Some(d) if st.pending > 0 => d.max(now),
            _ => now,
        };
        st.deadline = Some(from + allowed);
        st.pending = st.pending.saturating_add(len);
    }

    /// `n` bytes were written; the deadline if an answer is still unfinished.
    fn wrote(&self, n: usize) -> Option<Instant> {
        let mut st = self.lock();
        st.pending = st.pending.saturating_sub(n as u64);
        if st.pending == 0 {
            st.deadline = None;
        }
        st.deadline
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }
}

struct Shared {
    config: RelayConfig,
    instance: String,
    instance_header: HeaderValue,
    /// SHA-256 of the token, compared in constant time.
    token_digest: Option<[u8; 32]>,
    log: Mutex<Log>,
    stop: AtomicBool,
    connections: Arc<Limiter>,
    long_polls: Arc<Limiter>,
    /// Message bytes held by answers being sent.
    in_flight: Arc<InFlight>,
    /// Bumped when a connection ends, for shutdown to wait on.
    ended: Notify,
    served: AtomicU64,
    /// Long polls woken by new messages, for monitoring and tests.
    wakeups: AtomicU64,
    /// Connections accepted (admitted or refused), for monitoring and tests.
    accepted: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock means a handler panicked mid-update; the log itself
        // is still consistent (every update is a few plain field writes).
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiting GET (they see `stop` and answer).
    fn wake_all(&self) {
        self.lock().waiters.wake_all();
    }
}

/// A running relay. Dropping it stops it, like [`RelayServer::shutdown`].
pub struct RelayServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("addr", &self.addr)
            .field("instance", &self.shared.instance)
            .finish()
    }
}

/// A fresh random 128-bit id, as 32 lowercase hex digits.
fn random_instance() -> io::Result<String> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id)
        .map_err(|e| io::Error::other(format!("no randomness for the instance id: {e}")))?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

impl RelayServer {
    /// Starts a relay listening on `addr` (e.g. `127.0.0.1:3000`, or port 0
    /// for a free one), served by its own runtime thread(s).
    ///
    /// # Errors
    /// When the address cannot be bound, the runtime cannot start, or the
    /// limits do not fit together ([`RelayConfig::validate`]).
    pub fn start(addr: &str, config: RelayConfig) -> io::Result<RelayServer> {
        config.validate()?;
        let listener = nodelay_listener(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("relay")
            .enable_all()
            .build()?;
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let instance = random_instance()?;
        let instance_header = HeaderValue::from_str(&instance).map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                waiters: Waiters::default(),
                next_waiter: 0,
            }),
            stop: AtomicBool::new(false),
            connections: Limiter::new(
                "connections",
                config.max_connections,
                config.max_connections_per_ip,
            ),
            long_polls: Limiter::new(
                "long polls",
                config.max_long_polls,
                config.max_long_polls_per_ip,
            ),
            token_digest: config
                .token
                .as_ref()
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            in_flight: Arc::new(InFlight {
                max_total: config.max_answer_bytes_in_flight,
                max_per_client: config.max_answer_bytes_in_flight_per_ip,
                held: Mutex::new((0, HashMap::new())),
            }),
            ended: Notify::new(),
            served: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            instance,
            instance_header,
            config,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("relay-main".into())
                .spawn(move || {
                    runtime.block_on(serve(listener, shared.clone(), stop_rx));
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    debug!(
                        "relay: stopped after {} requests",
                        shared.served.load(Ordering::Relaxed)
                    );
                })?
        };
        info!(
            "relay listening on http://{addr}, instance {}",
            shared.instance
        );
        Ok(RelayServer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
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

    /// Returns this relay's instance id (32 hex digits, random at start),
    /// sent with every answer as `X-Relay-Instance`.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Returns the message bytes currently held by answers being sent (at
    /// most [`RelayConfig::max_answer_bytes_in_flight`]); for monitoring and
    /// tests.
    pub fn answer_bytes_in_flight(&self) -> usize {
        self.shared.in_flight.lock().0
    }

    /// Returns how many waiting long polls new messages have woken so far (a
    /// message wakes only the polls it is for); for monitoring and tests.
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// Returns how many TCP connections the relay has accepted so far
    /// (kept-alive connections count once); for monitoring and tests.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Returns how many GETs are waiting for messages now (at most
    /// [`RelayConfig::max_long_polls`]); for monitoring and tests.
    pub fn long_polls_waiting(&self) -> usize {
        self.shared.long_polls.total()
    }

    /// Stops accepting connections, answers the waiting long polls at once,
    /// lets the answers in progress finish (a few seconds at most), and
    /// waits for the relay's threads to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.shared.wake_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `addr` with TCP_NODELAY, which accepted connections inherit: with
/// Nagle's algorithm each small answer written in two parts would wait for a
/// delayed ACK (~40 ms a hop). Also for tiny_http servers
/// (`Server::from_listener`).
///
/// # Errors
/// When `addr` does not resolve or cannot be bound.
pub fn nodelay_listener(addr: &str) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr} resolves to no address")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts connections until `stop`, then waits (bounded) for them to end.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, &shared, stop.clone()),
                Err(e) => {
                    // Out of file descriptors, mostly: let some close.
                    warn!("relay: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while shared.connections.total() > 0 {
        let ended = shared.ended.notified();
        if shared.connections.total() == 0
            || tokio::time::timeout_at(deadline, ended).await.is_err()
        {
            break;
        }
    }
}

/// Serves a connection if its client is within the limits; otherwise
/// answers `503`/`429` at once (if the socket takes it) and closes.
fn admit(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, stop: watch::Receiver<bool>) {
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let client = ClientKey::of(peer.ip());
    let held = match shared.connections.acquire(client) {
        Ok(h) => h,
        Err(refusal) => {
            let (status, message) = refusal.status_and_message();
            debug!("relay: refusing a connection from {peer}: {message}");
            let body = serde_json::json!({ "error": message }).to_string();
            let answer = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Retry-After: 1\r\n{HEADER_INSTANCE}: {}\r\nConnection: close\r\n\r\n{body}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body.len(),
                shared.instance,
            );
            let _ = stream.try_write(answer.as_bytes());
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    tokio::spawn(async move {
        connection(stream, peer, client, &shared, stop).await;
        drop(held);
        shared.ended.notify_waiters();
    });
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    client: ClientKey,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Arc::new(AnswerClock::default());
    let io = TokioIo::new(WriteTimeout::new(
        stream,
        shared.config.write_timeout,
        clock.clone(),
    ));
    let svc = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let clock = clock.clone();
            async move {
                let resp = handle(req, &shared, client).await;
                clock.begin(&shared.config, resp.body().len);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .keep_alive(true)
        .max_headers(64)
        .max_buf_size(64 << 10);
    let conn = http.serve_connection(io, svc);
    tokio::pin!(conn);
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        debug!("relay: connection from {peer} ended: {e}");
    }
}

/// A TCP stream whose writes fail with `TimedOut` once they have made no
/// progress for `timeout` (a client that stops reading), or once the
/// current answer's deadline ([`AnswerClock`]) has passed with the answer
/// unfinished (a client that reads too slowly).
struct WriteTimeout {
    inner: TcpStream,
    timeout: Duration,
    clock: Arc<AnswerClock>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

fn too_slow() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took an answer too slowly (past its deadline)",
    )
}

impl WriteTimeout {
    fn new(inner: TcpStream, timeout: Duration, clock: Arc<AnswerClock>) -> Self {
        WriteTimeout {
            inner,
            timeout,
            clock,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// Whether the unfinished answer is past its deadline.
    fn late(&self) -> bool {
        self.clock.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// The write is pending: start the clock (the stall timeout, or the
    /// answer's deadline if sooner), or fail if it ran out.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            let mut deadline = tokio::time::Instant::now() + self.timeout;
            if let Some(d) = self.clock.deadline() {
                deadline = deadline.min(d.into());
            }
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.reset_on_close();
                Poll::Ready(Err(if self.late() {
                    too_slow()
                } else {
                    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A client cut off for slowness gets a reset, not a FIN queued behind
    /// the kernel's send buffer (which it could drain slowly for minutes):
    /// the buffer is dropped with the socket.
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
    }

    /// Before a write: fail if the answer is already past its deadline.
    fn check(&self) -> io::Result<()> {
        if self.late() {
            self.reset_on_close();
            Err(too_slow())
        } else {
            Ok(())
        }
    }

    fn progress<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }

    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = r {
            self.clock.wrote(n);
        }
        self.progress(cx, r)
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, r)
    }
}

/// An answer body: a few chunks, message bytes shared with the log.
#[derive(Default)]
struct Chunks {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl Chunks {
    fn one(bytes: impl Into<Bytes>) -> Self {
        let mut c = Chunks::default();
        c.push(bytes.into());
        c
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len() as u64;
            self.chunks.push_back(b);
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.chunks.pop_front() {
            Some(b) => {
                this.len -= b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

type Answer = Response<Chunks>;

fn answer(status: StatusCode, content_type: &'static str, body: Chunks) -> Answer {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    answer(
        status,
        "application/json",
        Chunks::one(value.to_string().into_bytes()),
    )
}

fn error(status: StatusCode, message: &str) -> Answer {
    let mut resp = json(status, &serde_json::json!({ "error": message }));
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
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

/// Whether the request carries the right bearer token (or none is needed).
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(want) = &shared.token_digest else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let given: [u8; 32] = Sha256::digest(given).into();
    given.ct_eq(want).into()
}

async fn handle(req: Request<Incoming>, shared: &Arc<Shared>, client: ClientKey) -> Answer {
    shared.served.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = route(req, shared, client).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        debug!(
            "relay: {} for {method} {path} from {client}",
            resp.status().as_u16()
        );
    }
    resp.headers_mut()
        .insert(HEADER_INSTANCE, shared.instance_header.clone());
    resp
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>, client: ClientKey) -> Answer {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if (path, req.method()) == ("/health", &Method::GET) {
        return answer(StatusCode::OK, "text/plain", Chunks::one(&b"ok"[..]));
    }
    if !authorized(shared, &req) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    match (req.method(), path) {
        (&Method::POST, "/messages") => {
            let tag = query_value(query, "tag").unwrap_or("").to_owned();
            if valid_tag(&tag) {
                post(req, shared, tag).await
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    "tag must be up to 32 letters, digits, - or _",
                )
            }
        }
        (&Method::GET, "/messages") => {
            let tags: Vec<String> = query_value(query, "tags")
                .map(|t| {
                    t.split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if tags.len() > MAX_TAGS || !tags.iter().all(|t| valid_tag(t)) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "tags must be a comma-separated list of up to 16 tags",
                );
            }
            match (
                query_u64(query, "after"),
                query_u64(query, "wait_ms"),
                query_u64(query, "max"),
            ) {
                (Ok(after), Ok(wait), Ok(max)) => {
                    get(
                        shared,
                        client,
                        after.unwrap_or(0),
                        wait.unwrap_or(0),
                        max,
                        tags,
                    )
                    .await
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    error(StatusCode::BAD_REQUEST, &e)
                }
            }
        }
        (&Method::GET, "/head") => {
            let (next, lowest) = {
                let log = shared.lock();
                (log.next_seq, log.lowest())
            };
            json(
                StatusCode::OK,
                &serde_json::json!({ "next": next, "lowest": lowest, "instance": shared.instance }),
            )
        }
        (_, "/messages" | "/head" | "/health") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint: use /messages, /head or /health",
        ),
    }
}

async fn post(req: Request<Incoming>, shared: &Shared, tag: String) -> Answer {
    let limit = shared.config.max_message_len;
    let too_large = || {
        let mut resp = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("message larger than {limit} bytes"),
        );
        // The rest of the body is not read: this connection cannot go on.
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let read = tokio::time::timeout(
        shared.config.body_timeout,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await;
    let body = match read {
        Err(_) => {
            let mut resp = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body took longer than {:?} to arrive",
                    shared.config.body_timeout
                ),
            );
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the body: {e}"),
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    if body.is_empty() {
        return error(StatusCode::BAD_REQUEST, "empty message");
    }
    let seq = {
        let mut log = shared.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        log.bytes += body.len();
        let woken = log.waiters.wake(&tag);
        shared.wakeups.fetch_add(woken as u64, Ordering::Relaxed);
        log.entries
            .push_back(Entry::new(seq, Instant::now(), tag, &body));
        log.evict(&shared.config, Instant::now());
        seq
    };
    json(StatusCode::OK, &serde_json::json!({ "seq": seq }))
}

/// A registered waiter, removed from the log on drop (unless the answer
/// already removed it under the lock it held).
struct Waiting<'a> {
    shared: &'a Shared,
    id: u64,
    notify: Arc<Notify>,
    registered: bool,
    _slot: Held,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.shared.lock().waiters.remove(self.id);
        }
    }
}

async fn get(
    shared: &Arc<Shared>,
    client: ClientKey,
    after: u64,
    wait_ms: u64,
    max: Option<u64>,
    tags: Vec<String>,
) -> Answer {
    let config = &shared.config;
    let max = max
        .map_or(config.max_batch, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        })
        .clamp(1, config.max_batch);
    let deadline = Instant::now() + Duration::from_millis(wait_ms).min(config.max_wait);
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        let notify = {
            let mut log = shared.lock();
            let now = Instant::now();
            log.evict(config, now);
            let left = match shared.in_flight.left(client) {
                Ok(left) => left,
                Err(refusal) => {
                    drop(log);
                    let (status, message) = refusal.status_and_message();
                    return error(status, &message);
                }
            };
            let (found, bytes) = log.after(after, max, config.max_answer_bytes.min(left), &tags);
            // A cursor at or past the head is answered at once: it comes
            // from an earlier relay (this one restarted), and the client
            // learns so from the instance header.
            if !found.is_empty()
                || now >= deadline
                || shared.stop.load(Ordering::SeqCst)
                || after >= log.next_seq
            {
                let (next, lowest) = (log.next_seq, log.lowest());
                if let Some(w) = waiting.as_mut() {
                    log.waiters.remove(w.id);
                    w.registered = false;
                }
                drop(log);
                drop(waiting);
                let reservation = if found.is_empty() {
                    None
                } else {
                    // A first message larger than what is left is refused
                    // too: the bound holds whatever clients do.
                    match shared.in_flight.reserve(client, bytes) {
                        Ok(r) => Some(Arc::new(r)),
                        Err(refusal) => {
                            let (status, message) = refusal.status_and_message();
                            return error(status, &message);
                        }
                    }
                };
                return batch(found, next, lowest, reservation.as_ref());
            }
            match &waiting {
                Some(w) => w.notify.clone(),
                None => {
                    let slot = match shared.long_polls.acquire(client) {
                        Ok(s) => s,
                        Err(refusal) => {
                            drop(log);
                            let (status, message) = refusal.status_and_message();
                            return error(status, &message);
                        }
                    };
                    let id = log.next_waiter;
                    log.next_waiter += 1;
                    let notify = Arc::new(Notify::new());
                    log.waiters.insert(
                        id,
                        Waiter {
                            tags: tags.clone(),
                            notify: notify.clone(),
                        },
                    );
                    waiting = Some(Waiting {
                        shared,
                        id,
                        notify: notify.clone(),
                        registered: true,
                        _slot: slot,
                    });
                    notify
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), notify.notified()).await;
    }
}

/// The answer carrying the frames `found` (shared with the log, one chunk
/// each); every chunk holds `reservation` (if any) until dropped.
fn batch(
    found: Vec<Bytes>,
    next: u64,
    lowest: u64,
    reservation: Option<&Arc<Reservation>>,
) -> Answer {
    let pin = |bytes: Bytes| match reservation {
        Some(r) => Bytes::from_owner(Pinned {
            bytes,
            _reservation: r.clone(),
        }),
        None => bytes,
    };
    let mut body = Chunks::default();
    for frame in found {
        body.push(pin(frame));
    }
    let mut resp = answer(StatusCode::OK, "application/octet-stream", body);
    let h = resp.headers_mut();
    h.insert(HEADER_NEXT, HeaderValue::from(next));
    h.insert(HEADER_LOWEST, HeaderValue::from(lowest));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4));
        assert_eq!(ClientKey::of(v4).to_string(), "127.0.0.2");
        assert_eq!(ClientKey::of(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn answers_respect_count_and_byte_budget_but_carry_at_least_one() {
        let mut log = Log {
            entries: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            waiters: Waiters::default(),
            next_waiter: 0,
        };
        for (i, len) in [10usize, 10, 10, 50, 10].iter().enumerate() {
            let seq = i as u64 + 1;
            log.entries.push_back(Entry::new(
                seq,
                Instant::now(),
                String::new(),
                &vec![0u8; *len],
            ));
            log.next_seq += 1;
        }
        let seqs = |(v, _): (Vec<Bytes>, usize)| {
            v.into_iter()
                .map(|f| crate::read_frames(&f).unwrap().first().unwrap().0)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(log.after(0, 100, 25, &[])), vec![1, 2]);
        assert_eq!(seqs(log.after(0, 2, 1000, &[])), vec![1, 2]);
        assert_eq!(
            seqs(log.after(3, 100, 25, &[])),
            vec![4],
            "one too big goes alone"
        );
        assert_eq!(seqs(log.after(4, 100, 25, &[])), vec![5]);
        assert_eq!(log.after(0, 100, 25, &[]).1, 20, "message bytes counted");
        assert!(log.after(5, 100, 25, &[]).0.is_empty());
        assert!(log.after(u64::MAX, 100, 25, &[]).0.is_empty());
    }

    #[test]
    fn a_post_wakes_only_the_polls_waiting_for_its_tag_and_removed_ones_never() {
        let mut w = Waiters::default();
        let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut notifies = vec![];
        for (id, t) in [
            (1, tags(&["x"])),
            (2, tags(&["y"])),
            (3, tags(&["x", "y"])),
            (4, vec![]),
        ] {
            let notify = Arc::new(Notify::new());
            notifies.push(notify.clone());
            w.insert(id, Waiter { tags: t, notify });
        }
        assert_eq!(w.wake("x"), 3, "1, 3 and the untagged 4");
        assert_eq!(w.wake("y"), 3, "2, 3 and 4");
        assert_eq!(w.wake("z"), 1, "only the untagged");
        assert_eq!(w.wake(""), 1, "an untagged post: only the untagged");
        w.remove(3);
        w.remove(4);
        w.remove(4);
        assert_eq!(w.wake("x"), 1);
        assert_eq!(w.wake("z"), 0);
        w.remove(1);
        w.remove(2);
        assert!(w.all.is_empty() && w.any.is_empty() && w.by_tag.is_empty());
    }

    #[test]
    fn answer_deadline_follows_the_rate_within_write_timeout_and_cap() {
        let config = RelayConfig {
            write_timeout: Duration::from_secs(1),
            min_write_rate: 1 << 20,
            max_answer_write_time: Duration::from_secs(5),
            ..RelayConfig::default()
        };
        let left = |clock: &AnswerClock| {
            clock
                .deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
        };
        let clock = AnswerClock::default();
        clock.begin(&config, 10);
        assert!(left(&clock).unwrap() <= Duration::from_secs(1));
        assert_eq!(clock.wrote(200), None, "written: no deadline left");
        clock.begin(&config, 3 << 20);
        let d = left(&clock).unwrap();
        assert!(d > Duration::from_millis(2900) && d <= Duration::from_secs(3));
        // A pipelined answer adds its time to the unfinished one's.
        clock.begin(&config, 10);
        let d = left(&clock).unwrap();
        assert!(d > Duration::from_millis(3900) && d <= Duration::from_secs(4));
        assert!(clock.wrote(1 << 20).is_some());
        assert_eq!(clock.wrote(usize::MAX), None);
        clock.begin(&config, 1 << 30);
        assert!(left(&clock).unwrap() <= Duration::from_secs(5), "capped");
    }

    #[test]
    fn answer_bytes_in_flight_shrink_then_refuse_and_are_released() {
        let in_flight = Arc::new(InFlight {
            max_total: 100,
            max_per_client: 60,
            held: Mutex::new((0, HashMap::new())),
        });
        let a = ClientKey::of("127.0.0.2".parse().unwrap());
        let b = ClientKey::of("127.0.0.3".parse().unwrap());
        assert_eq!(in_flight.left(a).ok(), Some(60));
        let r1 = in_flight.reserve(a, 50).ok().unwrap();
        assert_eq!(in_flight.left(a).ok(), Some(10), "shrunk to what is left");
        assert!(matches!(in_flight.reserve(a, 11), Err(Refusal::Client(_))));
        let r2 = in_flight.reserve(a, 10).ok().unwrap();
        assert!(matches!(in_flight.left(a), Err(Refusal::Client(_))));
        assert_eq!(in_flight.left(b).ok(), Some(40));
        let r3 = in_flight.reserve(b, 40).ok().unwrap();
        assert!(matches!(in_flight.left(b), Err(Refusal::Total(_))));
        drop((r1, r2, r3));
        assert_eq!(in_flight.lock().0, 0);
        assert!(in_flight.lock().1.is_empty());
    }

    #[test]
    fn config_validation_names_the_bad_limit() {
        assert!(RelayConfig::default().validate().is_ok());
        let e = RelayConfig {
            max_answer_bytes: 64 << 20,
            ..RelayConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("max_answer_bytes"), "{e}");
        let e = RelayConfig {
            max_long_polls_per_ip: 0,
            ..RelayConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("max_long_polls_per_ip"), "{e}");
        let e = RelayConfig {
            max_answer_bytes_in_flight_per_ip: 0,
            ..RelayConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().contains("max_answer_bytes_in_flight_per_ip"),
            "{e}"
        );
    }
}
