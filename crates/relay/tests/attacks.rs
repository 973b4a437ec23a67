//! Red-team attacks on the relay over real HTTP on loopback. Tests named
//! `break_*` show a property that does not hold today (they fail until
//! fixed); `probe_*` tests tried an attack and found it stopped. Bounded in
//! time; every server is shut down.

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
/// Property: an answer must be taken at some minimum rate (or within a
/// total deadline); here a reader with a 4 KiB receive buffer taking
/// ~16 KiB every 125 ms (measured: ~390 KB in 8 s, ~50 KB/s, nearly three
/// minutes for the answer) must have been cut off by 8 × the 1 s write
/// timeout.
#[test]
fn break_a_trickling_reader_holds_its_answer_and_slot_indefinitely() {
    let config = RelayConfig {
        write_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    };
    let server = RelayServer::start("127.0.0.1:0", config).unwrap();
    let client = RelayClient::new(&server.url(), Duration::from_secs(10));
    let big = vec![0xabu8; 1 << 20];
    for _ in 0..10 {
        client.post_tagged(&big, "t").unwrap();
    }
    let mut s = connect_from("127.0.0.9", server.addr(), 4096).unwrap();
    s.write_all(b"GET /messages?after=0&wait_ms=0 HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut total = 0usize;
    let mut closed = false;
    let mut buf = vec![0u8; 16 << 10];
    while start.elapsed() < Duration::from_secs(8) {
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
        std::thread::sleep(Duration::from_millis(125));
    }
    eprintln!(
        "trickle: read {total} bytes in {:?}, closed: {closed}",
        start.elapsed()
    );
    server.shutdown();
    assert!(
        total < (8 << 20),
        "the reader got the whole answer: the trickle was too fast to test"
    );
    assert!(
        closed,
        "a reader taking {total} bytes in 8 s of an 8 MiB answer still holds its \
         connection and answer after 8 write timeouts"
    );
}
