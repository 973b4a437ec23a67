//! Red-team attacks on the relay over real HTTP on loopback. Tests named
//! `break_*` show a property that does not hold today (they fail until
//! fixed); `probe_*` tests tried an attack and found it stopped; the others
//! were breaks, now fixed, and name the property that holds. Bounded in
//! time; every server is shut down.
#![allow(clippy::print_stderr)] // tests report their measurements

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use relay::{RelayClient, RelayConfig, RelayServer};

fn connect_from(from: &str, addr: SocketAddr, rcvbuf: usize) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_recv_buffer_size(rcvbuf)?;
    let src: SocketAddr = format!("{from}:0").parse().map_err(std::io::Error::other)?;
    socket.bind(&src.into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Attack (keyless client): ask for a full answer (8 MiB by default) and
/// take it a trickle at a time, fast enough that every write makes progress
/// within `write_timeout`, but never finishing. The write timeout only
/// measures stalls, so the connection, its slot and the answer it pins
/// (message bytes kept alive after the log dropped them) live as long as
/// the attacker likes: with 1024 connections (4 loopback addresses × 256)
/// that is 8 GiB of pinned answers plus every connection slot, for ever.
///
/// Property (fixed by the answer deadline): an answer must be fully written
/// within `max(write_timeout, len / min_write_rate)`; here a reader with a
/// 64 KiB receive buffer taking up to 64 KiB every 90 ms (at most ~730 KB/s, ~550
/// measured, under the 1 MiB/s asked, never stalling the relay's writes
/// for the 5 s write timeout) must be cut off, by a reset, at the 8 s
/// deadline of its 8 MiB answer, well before it could finish (over 11 s). Without the deadline (and the reset: a FIN would queue
/// behind the megabytes in the kernel's send buffer) it is not cut off.
#[test]
fn a_trickling_reader_is_cut_off_by_the_answer_deadline() {
    let config = RelayConfig {
        write_timeout: Duration::from_secs(5),
        min_write_rate: 1 << 20,
        ..RelayConfig::default()
    };
    let server = RelayServer::start("127.0.0.1:0", config).unwrap();
    let client = RelayClient::new(&server.url(), Duration::from_secs(10));
    let big = vec![0xabu8; 1 << 20];
    for _ in 0..10 {
        client.post_tagged(&big, "t").unwrap();
    }
    let mut s = connect_from("127.0.0.9", server.addr(), 64 << 10).unwrap();
    s.write_all(b"GET /messages?after=0&wait_ms=0 HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut total = 0usize;
    let mut closed = false;
    let mut buf = vec![0u8; 64 << 10];
    while start.elapsed() < Duration::from_secs(11) {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => total += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(90));
    }
    let took = start.elapsed();
    eprintln!("trickle: read {total} bytes in {took:?}, closed: {closed}");
    server.shutdown();
    assert!(
        total < (8 << 20),
        "the reader got the whole answer: the trickle was too fast to test"
    );
    assert!(
        closed,
        "a reader taking {total} bytes in 11 s of an 8 MiB answer still holds its \
         connection and answer 3 s past its deadline"
    );
    assert!(
        took > Duration::from_millis(7500) && took < Duration::from_secs(10),
        "cut off after {took:?}, not at the 8 s deadline"
    );
}

/// Attack (keyless client): many connections from 127.0.0.2 ask for full
/// answers and never read them, to pin as many answer bytes as they can.
///
/// Property (fixed by the in-flight bound): the message bytes held by
/// answers being sent never exceed `max_answer_bytes_in_flight_per_ip` for
/// one address (nor the total cap): later answers shrink, then get `429`
/// at once; an honest reader on 127.0.0.1 still gets every message; the
/// reservations are released when the connections die.
#[test]
fn slow_readers_cannot_pin_more_than_the_answer_bytes_in_flight_cap() {
    const MSG: usize = 1 << 20;
    const PER_IP: usize = 12 << 20;
    const TOTAL: usize = 16 << 20;
    let config = RelayConfig {
        max_answer_bytes: 8 << 20,
        max_answer_bytes_in_flight: TOTAL,
        max_answer_bytes_in_flight_per_ip: PER_IP,
        write_timeout: Duration::from_secs(20),
        ..RelayConfig::default()
    };
    let server = RelayServer::start("127.0.0.1:0", config).unwrap();
    let client = RelayClient::new(&server.url(), Duration::from_secs(10));
    let msg = vec![0x5au8; MSG];
    for _ in 0..12 {
        client.post(&msg).unwrap();
    }
    let mut attackers = Vec::new();
    let mut refused = 0;
    let mut most = 0usize;
    for _ in 0..16 {
        let mut s = connect_from("127.0.0.2", server.addr(), 4096).unwrap();
        s.write_all(b"GET /messages?after=0&wait_ms=0 HTTP/1.1\r\nHost: relay\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        if &head == b"HTTP/1.1 429" {
            refused += 1;
        } else {
            assert_eq!(&head, b"HTTP/1.1 200", "unexpected answer");
        }
        most = most.max(server.answer_bytes_in_flight());
        attackers.push(s);
    }
    let pinned = server.answer_bytes_in_flight();
    eprintln!("in flight: {pinned} bytes (most seen {most}), {refused} of 16 refused");
    assert!(
        most <= PER_IP,
        "one address pins {most} bytes, above {PER_IP}"
    );
    assert!(
        pinned > 0,
        "the attack pinned nothing: the test is not testing"
    );
    assert!(
        refused >= 12,
        "only {refused} of 16 full answers were refused"
    );

    // An honest reader on 127.0.0.1 goes on, within the total cap.
    let honest = RelayClient::new(&server.url(), Duration::from_secs(10));
    let mut after = 0;
    let mut got = 0;
    let start = Instant::now();
    while got < 12 && start.elapsed() < Duration::from_secs(10) {
        match honest.poll(after, Duration::from_millis(0)) {
            Ok(b) => {
                got += b.messages.len();
                after = b.last_seq(after);
            }
            Err(e) => eprintln!("honest poll: {e}"),
        }
        let now = server.answer_bytes_in_flight();
        assert!(now <= TOTAL, "{now} answer bytes in flight, above {TOTAL}");
    }
    assert_eq!(got, 12, "the honest reader got {got} of 12 messages");

    // The reservations die with the connections.
    drop(attackers);
    let start = Instant::now();
    while server.answer_bytes_in_flight() > 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = server.answer_bytes_in_flight();
    server.shutdown();
    assert_eq!(
        left, 0,
        "{left} bytes still reserved after the readers left"
    );
}
