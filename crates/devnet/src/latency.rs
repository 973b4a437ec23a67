//! A TCP link that delays every byte by a fixed time each way: the relay
//! as far away as a signer on another continent, on this machine.
//!
//! On loopback a relay round trip costs a fraction of a millisecond, so a
//! benchmark there cannot show what keeping several signing rounds in flight
//! hides on a real deployment: the network's latency between the signers,
//! the relay and the coordinator. [`LatencyLink`] puts that latency back,
//! the way `tc netem delay` would, but for one server's connections only
//! (the nodes each signer reads stay on its own machine: undelayed).
//!
//! Bytes keep their order and are never merged or dropped; each chunk read
//! from one side is written to the other once its delay has passed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Forwards connections made to [`LatencyLink::url`] to a target address,
/// each direction delayed by the same time.
#[derive(Debug)]
pub struct LatencyLink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl LatencyLink {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to
    /// `target`, every byte delayed by `one_way` in each direction (a round
    /// trip costs twice `one_way`).
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<LatencyLink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // The pipes' threads take this thread's name (Linux gives a new
        // thread its creator's), so a profile by thread name counts the link.
        let accept = std::thread::Builder::new()
            .name("latency-link".to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    pipe(client, s2, one_way);
                    pipe(server, c2, one_way);
                }
            })?;
        Ok(LatencyLink {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// Returns `http://ADDR`, the target as seen through the link.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LatencyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; ends
/// (shutting `to`'s write side) when `from` ends or either side fails.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (send, recv) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        for (due, bytes) in recv {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_whole_in_order_and_late_by_the_delay_each_way() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&got).unwrap();
        });
        let delay = Duration::from_millis(40);
        let link = LatencyLink::start(target, delay).unwrap();
        let addr: SocketAddr = link.url().trim_start_matches("http://").parse().unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let start = Instant::now();
        c.write_all(&sent).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        let took = start.elapsed();
        server.join().unwrap();
        assert_eq!(back, sent, "every byte back, in order");
        // There and back: at least two one-way delays (no upper bound is
        // asserted: the machine may be slow).
        assert!(took >= delay * 2, "took {took:?}, less than 2 × {delay:?}");
    }
}
