//! The relay against hostile or unlucky clients, over real HTTP on loopback:
//! slow and idle clients from 127.0.0.2 (so per-address limits hit them, not
//! the honest parties on 127.0.0.1), slow-loris bodies and headers,
//! oversized bodies, per-address limits, a relay restart, the token. Every
//! test is bounded in time and stops its servers.
#![allow(clippy::print_stderr)] // tests report their measurements

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::{RelayClient, RelayConfig, RelayError, RelayServer, HEADER_INSTANCE};

/// The heavy tests take turns: on two cores, side by side they only measure
/// the scheduler.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("{from}:0").parse().map_err(std::io::Error::other)?;
    socket.bind(&src.into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until the end of the answer's head or EOF, within `within`;
/// returns the status (`None`: closed or timed out without one) and when
/// the read ended.
fn read_status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1)?.parse().ok()
}

/// Whether the peer closed the connection (EOF or reset) within `within`,
/// reading and discarding whatever comes first.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            return true;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn health_within(url: &str, limit: Duration) -> Result<Duration, String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(limit))
            .http_status_as_error(false)
            .build(),
    );
    let t = Instant::now();
    let resp = agent
        .get(format!("{url}/health"))
        .call()
        .map_err(|e| format!("/health failed after {:?}: {e}", t.elapsed()))?;
    let took = t.elapsed();
    if resp.status() != 200 {
        return Err(format!("/health answered {}", resp.status()));
    }
    Ok(took)
}

/// What one hostile client from 127.0.0.2 does.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Sends its headers, then a byte of a 10 KB body every 500 ms.
    SlowBody,
    /// Sends the request head a byte every 500 ms.
    SlowHead,
    /// Connects and sends nothing.
    Idle,
    /// A long poll for 30 s that never reads its answer.
    LongPoll,
}

#[test]
fn slow_and_idle_clients_from_one_address_do_not_starve_others() {
    let _turn = heavy();
    const HOSTILE: usize = 512;
    let server = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let addr = server.addr();
    let url = server.url();
    let test_start = Instant::now();

    // The hostile clients, all driven by one thread.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let driver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let kinds = [Kind::SlowBody, Kind::SlowHead, Kind::Idle, Kind::LongPoll];
            let mut socks: Vec<(Kind, TcpStream, usize)> = Vec::new();
            let mut failed_connects = 0;
            for i in 0..HOSTILE {
                let kind = kinds[i % kinds.len()];
                let Ok(mut s) = connect_from("127.0.0.2", addr) else {
                    failed_connects += 1;
                    continue;
                };
                let _ = s.set_nonblocking(true);
                if kind == Kind::SlowBody {
                    let _ = s.write_all(
                        b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n",
                    );
                }
                if kind == Kind::LongPoll {
                    let _ = s.write_all(
                        b"GET /messages?after=0&wait_ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n",
                    );
                }
                socks.push((kind, s, 0));
            }
            ready_tx.send(()).unwrap();
            let head = b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
            // Count those the relay refused or cut off: it answered or closed.
            let mut cut = 0;
            while !stop.load(Ordering::SeqCst) {
                for (kind, s, sent) in socks.iter_mut() {
                    let byte: &[u8] = match kind {
                        Kind::SlowBody => b"x",
                        Kind::SlowHead => &head[*sent % head.len()..][..1],
                        _ => continue,
                    };
                    if s.write(byte).is_ok() {
                        *sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut buf = [0u8; 512];
            for (_, s, _) in socks.iter_mut() {
                match s.read(&mut buf) {
                    Ok(_) => cut += 1, // an answer (503/429) or EOF
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => cut += 1, // reset
                }
            }
            (socks.len(), failed_connects, cut)
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    // Meanwhile the honest parties on 127.0.0.1.
    let result = (|| -> Result<(), String> {
        let mut worst = Duration::ZERO;
        for _ in 0..8 {
            worst = worst.max(health_within(&url, Duration::from_secs(1))?);
            std::thread::sleep(Duration::from_millis(200));
        }
        let reader = RelayClient::new(&url, Duration::from_secs(5));
        let writer = RelayClient::new(&url, Duration::from_secs(5));
        let after = reader.head().map_err(|e| e.to_string())? - 1;
        let poll = std::thread::spawn(move || {
            let t = Instant::now();
            let b = reader.poll(after, Duration::from_secs(5));
            (b, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        let seq = writer.post(b"honest").map_err(|e| e.to_string())?;
        let (b, took) = poll.join().map_err(|_| "poller panicked")?;
        let b = b.map_err(|e| e.to_string())?;
        if b.messages != vec![(seq, b"honest".to_vec())] || took > Duration::from_secs(2) {
            return Err(format!("exchange: {b:?} after {took:?}"));
        }
        eprintln!("slowest /health under the flood: {worst:?}");
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    let (connected, failed, cut) = driver.join().unwrap();
    eprintln!(
        "hostile: {connected} connected, {failed} could not, {cut} refused or cut off by the relay"
    );
    result.unwrap();
    assert_eq!(connected + failed, HOSTILE);
    // 512 from one address, beyond the 256 allowed per address and the 128
    // long polls: the relay refused some at once.
    assert!(cut >= 100, "only {cut} hostile clients were refused");
    drop(server);
    assert!(test_start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_slow_loris_is_cut_off_by_the_read_timeouts() {
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    // A body one byte every 200 ms.
    let mut s = connect_from("127.0.0.1", server.addr()).unwrap();
    s.write_all(b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let dribble = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..20 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    assert_eq!(read_status(&mut s, Duration::from_secs(4)), Some(408));
    assert!(closed_within(&mut s, Duration::from_secs(2)));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    dribble.join().unwrap();

    // Headers one byte every 200 ms.
    let mut s = connect_from("127.0.0.1", server.addr()).unwrap();
    let t = Instant::now();
    let dribble = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n" {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    assert!(closed_within(&mut s, Duration::from_secs(4)));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    dribble.join().unwrap();

    // An idle keep-alive connection is closed after the header timeout too.
    let mut s = connect_from("127.0.0.1", server.addr()).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)));

    // A long poll is not a slow client: it waits out its 2.5 s.
    let c = RelayClient::new(&server.url(), Duration::from_secs(5));
    let t = Instant::now();
    assert!(c
        .poll(0, Duration::from_millis(2500))
        .unwrap()
        .messages
        .is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.post(b"still serving").unwrap(), 1);
}

#[test]
fn an_oversized_body_gets_413_and_the_relay_keeps_serving() {
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            max_message_len: 1024,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let c = RelayClient::new(&server.url(), Duration::from_secs(5));
    let e = c.post(&[1u8; 4096]).unwrap_err();
    assert!(matches!(e, RelayError::Http { status: 413, .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("413 Payload Too Large: message larger than 1024 bytes"),
        "{e}"
    );
    // Without a length (chunked), cut off at the limit.
    let mut s = connect_from("127.0.0.1", server.addr()).unwrap();
    s.write_all(b"POST /messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        let _ = s.write_all(b"400\r\n");
        let _ = s.write_all(&[2u8; 0x400]);
        let _ = s.write_all(b"\r\n");
    }
    assert_eq!(read_status(&mut s, Duration::from_secs(3)), Some(413));
    // Exactly the limit is fine.
    assert_eq!(c.post(&[3u8; 1024]).unwrap(), 1);
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert_eq!(b.messages, vec![(1, vec![3u8; 1024])]);
}

#[test]
fn answers_hold_at_most_the_byte_budget_and_a_client_reads_on() {
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            max_answer_bytes: 10_000,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let c = RelayClient::new(&server.url(), Duration::from_secs(5));
    for i in 0..10u8 {
        c.post(&[i; 3000]).unwrap();
    }
    let mut after = 0;
    let mut sizes = vec![];
    while after < 10 {
        let b = c.poll(after, Duration::ZERO).unwrap();
        sizes.push(b.messages.len());
        after = b.last_seq(after);
    }
    assert_eq!(sizes, vec![3, 3, 3, 1]);
}

#[test]
fn per_address_long_poll_and_connection_limits_refuse_quickly_and_spare_others() {
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            max_long_polls_per_ip: 4,
            max_connections_per_ip: 8,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let addr = server.addr();
    let poll = b"GET /messages?after=0&wait_ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut waiting: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect_from("127.0.0.2", addr).unwrap();
            s.write_all(poll).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The fifth long poll from 127.0.0.2 is refused at once.
    let mut fifth = connect_from("127.0.0.2", addr).unwrap();
    let t = Instant::now();
    fifth.write_all(poll).unwrap();
    assert_eq!(read_status(&mut fifth, Duration::from_secs(2)), Some(429));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // 127.0.0.1 still long-polls, and is woken.
    let c = RelayClient::new(&server.url(), Duration::from_secs(5));
    let c2 = c.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.post(b"for everyone").unwrap()
    });
    let b = c.poll(0, Duration::from_secs(5)).unwrap();
    assert_eq!(b.messages, vec![(1, b"for everyone".to_vec())]);
    poster.join().unwrap();
    // The waiting ones from 127.0.0.2 got it too.
    for s in &mut waiting {
        assert_eq!(read_status(s, Duration::from_secs(2)), Some(200));
    }

    // Connections: 8 from 127.0.0.2 are held open; the ninth is refused.
    let idle: Vec<TcpStream> = (0..7)
        .map(|_| connect_from("127.0.0.2", addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ninth = connect_from("127.0.0.2", addr).unwrap();
    let t = Instant::now();
    let _ = ninth.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        matches!(
            read_status(&mut ninth, Duration::from_secs(2)),
            Some(429) | None
        ),
        "the ninth connection is refused"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(health_within(&server.url(), Duration::from_secs(1)).is_ok());
    drop(idle);

    // The client's error names the relay, the status and the reason.
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            max_long_polls_per_ip: 1,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let c = RelayClient::new(&server.url(), Duration::from_secs(5));
    let c2 = c.clone();
    let first = std::thread::spawn(move || c2.poll(0, Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(200));
    let e = c.poll(0, Duration::from_secs(2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "relay {}: 429 Too Many Requests: too many long polls from 127.0.0.1 (1)",
            server.url()
        )
    );
    drop(server);
    let _ = first.join().unwrap();
}

#[test]
fn a_restarted_relay_is_detected_and_read_from_its_first_message() {
    let a = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let addr = a.addr().to_string();
    let url = a.url();
    let a_instance = a.instance().to_owned();
    assert_eq!(a_instance.len(), 32);
    assert!(a_instance.bytes().all(|b| b.is_ascii_hexdigit()));
    let poster = RelayClient::new(&url, Duration::from_secs(5));
    let reader = RelayClient::new(&url, Duration::from_secs(5));
    let mut cursor = reader.head().unwrap() - 1;
    for i in 0..3 {
        poster.post(format!("a{i}").as_bytes()).unwrap();
    }
    let b = reader.poll(cursor, Duration::from_secs(1)).unwrap();
    assert!(!b.restarted);
    cursor = b.last_seq(cursor);
    assert_eq!(cursor, 3);
    assert_eq!(reader.instance().as_deref(), Some(a_instance.as_str()));

    // A poll waiting when A stops is answered (empty) or fails; B starts on
    // the same port.
    let waiting = {
        let reader = reader.clone();
        std::thread::spawn(move || reader.poll(cursor, Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(200));
    a.shutdown();
    let w = waiting.join().unwrap();
    assert!(w.map(|b| b.messages.is_empty()).unwrap_or(true));
    let b_relay = RelayServer::start(&addr, RelayConfig::default()).unwrap();
    assert_ne!(b_relay.instance(), a_instance);

    // B holds nothing yet: the reader learns of the restart at once (its
    // cursor is past B's head), without waiting out its poll.
    let t = Instant::now();
    let b = reader.poll(cursor, Duration::from_secs(5)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(b.restarted && b.messages.is_empty());
    cursor = b.last_seq(cursor);
    assert_eq!(cursor, 0);
    assert_eq!(reader.instance().as_deref(), Some(b_relay.instance()));

    // Restart again, and post to the new relay before the reader polls: the
    // message (seq 1, below the reader's cursor) still reaches it.
    cursor = 3; // as if it had read three messages of B
    b_relay.shutdown();
    let c_relay = RelayServer::start(&addr, RelayConfig::default()).unwrap();
    let poster = RelayClient::new(&url, Duration::from_secs(5));
    assert_eq!(poster.post_tagged(b"on C", "req").unwrap(), 1);
    let b = reader
        .poll_tags(cursor, Duration::from_secs(5), &["req"])
        .unwrap();
    assert!(b.restarted);
    assert_eq!(b.messages, vec![(1, b"on C".to_vec())]);
    cursor = b.last_seq(cursor);
    // From then on, as usual.
    let later = {
        let reader = reader.clone();
        std::thread::spawn(move || reader.poll_tags(cursor, Duration::from_secs(5), &["req"]))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(poster.post_tagged(b"next", "req").unwrap(), 2);
    let b = later.join().unwrap().unwrap();
    assert!(!b.restarted);
    assert_eq!(b.messages, vec![(2, b"next".to_vec())]);

    // /head reports the instance.
    let head: serde_json::Value = ureq::get(format!("{url}/head"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(head["instance"], c_relay.instance());
    assert_eq!(head["next"], 3);
}

#[test]
fn a_token_guards_every_endpoint_but_health() {
    let server = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            token: Some("s3cret-token".into()),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let url = server.url();
    let none = RelayClient::new(&url, Duration::from_secs(5));
    let wrong = RelayClient::new(&url, Duration::from_secs(5)).with_token("s3cret-tokeN");
    let right = RelayClient::new(&url, Duration::from_secs(5)).with_token("s3cret-token");
    for c in [&none, &wrong] {
        let e = c.post(b"x").unwrap_err();
        assert!(matches!(e, RelayError::Http { status: 401, .. }), "{e:?}");
        assert!(e.to_string().contains("401 Unauthorized"), "{e}");
        assert!(matches!(
            c.poll(0, Duration::ZERO),
            Err(RelayError::Http { status: 401, .. })
        ));
        assert!(matches!(
            c.head(),
            Err(RelayError::Http { status: 401, .. })
        ));
    }
    assert_eq!(right.post(b"x").unwrap(), 1);
    assert!(!format!(
        "{right:?} {:?}",
        RelayConfig {
            token: Some("s3cret-token".into()),
            ..RelayConfig::default()
        }
    )
    .contains("s3cret"));
    assert_eq!(right.head().unwrap(), 2);
    assert_eq!(
        right.poll(0, Duration::ZERO).unwrap().messages,
        vec![(1, b"x".to_vec())]
    );
    // /health is open, and every answer names the instance.
    let resp = ureq::get(format!("{url}/health")).call().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get(HEADER_INSTANCE)
            .unwrap()
            .to_str()
            .unwrap(),
        server.instance()
    );
    // Unknown paths are not revealed without the token either.
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    assert_eq!(
        agent.get(format!("{url}/nope")).call().unwrap().status(),
        401
    );
    let with = agent
        .get(format!("{url}/nope"))
        .header("Authorization", "Bearer s3cret-token")
        .call()
        .unwrap();
    assert_eq!(with.status(), 404);
}
