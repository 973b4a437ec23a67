//! Relay delivery latency to many long-polling clients: the relay figure of
//! `docs/PERFORMANCE.md` (frost_bench's `relay_latency`), for the relay
//! alone so it builds quickly.
//!
//! ```sh
//! cargo run --release -p relay --example relay_bench [CLIENTS] [MESSAGES]
//! ```
//!
//! `CLIENTS` (128) threads long-poll one in-process relay on 127.0.0.1;
//! `MESSAGES` (50) of 512 bytes are posted 20 ms apart; the time from each
//! `POST` to each client holding the message is reported as p50/p99/max.
#![allow(clippy::print_stdout, clippy::indexing_slicing, missing_docs)]

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use relay::{RelayClient, RelayConfig, RelayServer};

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).expect("relay starts");
    let poster = RelayClient::new(&relay.url(), Duration::from_secs(5));
    let ready = Arc::new(Barrier::new(clients + 1));
    let sent_at = Arc::new(Mutex::new(vec![None::<Instant>; messages + 1]));
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let (c, ready, sent_at) = (poster.clone(), ready.clone(), sent_at.clone());
            std::thread::spawn(move || {
                ready.wait();
                let mut lat = vec![];
                let mut after = 0;
                while lat.len() < messages {
                    let b = c.poll(after, Duration::from_secs(5)).expect("poll");
                    let now = Instant::now();
                    after = b.last_seq(after);
                    for (seq, _) in b.messages {
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
    for i in 1..=messages {
        sent_at.lock().expect("lock")[i] = Some(Instant::now());
        poster.post(&[0u8; 512]).expect("post");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut all: Vec<Duration> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "relay delivery to {clients} long pollers, {messages} messages of 512 bytes: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        all[all.len() - 1].as_secs_f64() * 1e3
    );
}
