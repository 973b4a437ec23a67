//! The relay over real HTTP on 127.0.0.1: delivery, long polling, many
//! clients, retention, bad requests, shutdown. Every test is bounded.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use relay::{RelayClient, RelayConfig, RelayError, RelayServer};

fn start(config: RelayConfig) -> (RelayServer, RelayClient) {
    let server = RelayServer::start("127.0.0.1:0", config).unwrap();
    let client = RelayClient::new(&server.url(), Duration::from_secs(20));
    (server, client)
}

/// The load tests take turns: on two cores, running them side by side only
/// measures the scheduler.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn messages_get_sequence_numbers_and_come_back_in_order() {
    let (_s, c) = start(RelayConfig::default());
    assert_eq!(c.head().unwrap(), 1);
    for (i, m) in ["a", "bb", "ccc"].iter().enumerate() {
        assert_eq!(c.post(m.as_bytes()).unwrap(), i as u64 + 1);
    }
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert_eq!(
        b.messages,
        vec![
            (1, b"a".to_vec()),
            (2, b"bb".to_vec()),
            (3, b"ccc".to_vec())
        ]
    );
    assert_eq!((b.next, b.lowest), (4, 1));
    let b = c.poll(2, Duration::ZERO).unwrap();
    assert_eq!(b.messages, vec![(3, b"ccc".to_vec())]);
    assert_eq!(b.last_seq(2), 3);
    assert!(c.poll(3, Duration::ZERO).unwrap().messages.is_empty());
}

#[test]
fn a_long_poll_wakes_when_a_message_arrives() {
    let (_s, c) = start(RelayConfig::default());
    let c2 = c.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c2.post(b"late").unwrap()
    });
    let start = Instant::now();
    let b = c.poll(0, Duration::from_secs(5)).unwrap();
    assert_eq!(b.messages, vec![(1, b"late".to_vec())]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "woke at {:?}",
        start.elapsed()
    );
    poster.join().unwrap();
    // With nothing new, a poll returns empty after its wait.
    let start = Instant::now();
    assert!(c
        .poll(1, Duration::from_millis(150))
        .unwrap()
        .messages
        .is_empty());
    assert!(start.elapsed() >= Duration::from_millis(140));
}

#[test]
fn every_one_of_128_long_polling_clients_gets_every_message() {
    let _turn = heavy();
    const CLIENTS: usize = 128;
    const MESSAGES: usize = 20;
    let (_s, c) = start(RelayConfig::default());
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (c, ready) = (c.clone(), ready.clone());
            std::thread::spawn(move || {
                ready.wait();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut got = Vec::new();
                let mut after = 0;
                while got.len() < MESSAGES && Instant::now() < deadline {
                    let b = c.poll(after, Duration::from_secs(2)).unwrap();
                    after = b.last_seq(after);
                    got.extend(b.messages.into_iter().map(|(_, m)| m));
                }
                got
            })
        })
        .collect();
    ready.wait();
    for i in 0..MESSAGES {
        c.post(format!("msg-{i}").as_bytes()).unwrap();
    }
    let expected: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| format!("msg-{i}").into_bytes())
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), expected);
    }
}

#[test]
fn retention_by_count_bytes_and_age_reports_the_lowest_held() {
    let (_s, c) = start(RelayConfig {
        max_messages: 10,
        ..RelayConfig::default()
    });
    for i in 0..25 {
        c.post(format!("{i}").as_bytes()).unwrap();
    }
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert_eq!(
        b.lowest, 16,
        "a client asking for 1.. learns it missed 1..=15"
    );
    assert_eq!(b.messages.first().unwrap().0, 16);
    assert_eq!(b.messages.len(), 10);

    let (_s, c) = start(RelayConfig {
        max_bytes: 1000,
        ..RelayConfig::default()
    });
    for _ in 0..30 {
        c.post(&[7u8; 100]).unwrap();
    }
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert!(b.messages.iter().map(|(_, m)| m.len()).sum::<usize>() <= 1000);
    assert_eq!(b.messages.last().unwrap().0, 30);

    let (_s, c) = start(RelayConfig {
        max_age: Duration::from_millis(100),
        ..RelayConfig::default()
    });
    c.post(b"old").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.post(b"new").unwrap();
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert_eq!(b.messages, vec![(2, b"new".to_vec())]);
}

#[test]
fn a_bounded_flood_keeps_memory_bounded_and_the_relay_serving() {
    let _turn = heavy();
    let (_s, c) = start(RelayConfig {
        max_messages: 500,
        ..RelayConfig::default()
    });
    let posters: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    c.post(format!("{t}-{i}").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let b = c.poll(0, Duration::ZERO).unwrap();
    assert_eq!(b.next, 2001);
    assert_eq!(b.messages.len(), 500);
    assert_eq!(b.lowest, 1501);
    assert_eq!(c.post(b"still here").unwrap(), 2001);
}

#[test]
fn bad_requests_get_4xx_and_the_relay_keeps_serving() {
    let (s, c) = start(RelayConfig {
        max_message_len: 1024,
        ..RelayConfig::default()
    });
    assert!(matches!(
        c.post(&[1u8; 2048]),
        Err(RelayError::Http { status: 413, .. })
    ));
    assert!(matches!(
        c.post(b""),
        Err(RelayError::Http { status: 400, .. })
    ));
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let status =
        |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| r.unwrap().status().as_u16();
    assert_eq!(
        status(agent.get(format!("{}/messages?after=abc", s.url())).call()),
        400
    );
    assert_eq!(status(agent.get(format!("{}/nope", s.url())).call()), 404);
    assert_eq!(
        status(agent.delete(format!("{}/messages", s.url())).call()),
        405
    );
    assert_eq!(status(agent.get(format!("{}/health", s.url())).call()), 200);
    // Raw garbage on the socket.
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    raw.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    drop(raw);
    assert_eq!(c.post(b"ok").unwrap(), 1);
}

#[test]
fn shutdown_answers_waiting_polls_promptly() {
    let (s, c) = start(RelayConfig::default());
    let waiting = std::thread::spawn(move || {
        let start = Instant::now();
        let r = c.poll(0, Duration::from_secs(20));
        (r, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    s.shutdown();
    let (r, took) = waiting.join().unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(r.map(|b| b.messages.is_empty()).unwrap_or(true));
}

#[test]
fn tagged_polls_wake_only_for_their_tags() {
    let (_s, c) = start(RelayConfig::default());
    c.post_tagged(b"response", "resp").unwrap();
    c.post_tagged(b"request", "req").unwrap();
    c.post(b"untagged").unwrap();
    let b = c.poll_tags(0, Duration::ZERO, &["req", "dkg"]).unwrap();
    assert_eq!(b.messages, vec![(2, b"request".to_vec())]);
    assert_eq!(
        c.poll(0, Duration::ZERO).unwrap().messages.len(),
        3,
        "no filter: everything"
    );
    // A long poll for `req` sleeps through a `resp`, wakes for a `req`.
    let c2 = c.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c2.post_tagged(b"r2", "resp").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        c2.post_tagged(b"q2", "req").unwrap();
    });
    let t = Instant::now();
    let b = c.poll_tags(3, Duration::from_secs(5), &["req"]).unwrap();
    assert_eq!(b.messages, vec![(5, b"q2".to_vec())]);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "woke early: {:?}",
        t.elapsed()
    );
    poster.join().unwrap();
    assert!(matches!(
        c.post_tagged(b"x", "bad.tag"),
        Err(RelayError::Http { status: 400, .. })
    ));
}

/// Waits (at most 10 s) until exactly `n` GETs wait at the relay.
fn until_waiting(s: &RelayServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.long_polls_waiting() != n {
        assert!(
            Instant::now() < deadline,
            "{} long polls waiting, expected {n}",
            s.long_polls_waiting()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_message_tagged_x_wakes_no_poller_of_tag_y() {
    let (s, c) = start(RelayConfig::default());
    // One-shot long polls: 4 for `x`, 4 for `y`, 2 for anything.
    let spawn = |tags: &'static [&'static str]| {
        let c = c.clone();
        std::thread::spawn(move || c.poll_tags(0, Duration::from_secs(20), tags).unwrap())
    };
    let xs: Vec<_> = (0..4).map(|_| spawn(&["x"])).collect();
    let ys: Vec<_> = (0..4).map(|_| spawn(&["y", "w"])).collect();
    let anys: Vec<_> = (0..2).map(|_| spawn(&[])).collect();
    until_waiting(&s, 10);
    assert_eq!(s.wakeups(), 0);

    c.post_tagged(b"for x", "x").unwrap();
    for h in xs.into_iter().chain(anys) {
        assert_eq!(h.join().unwrap().messages, vec![(1, b"for x".to_vec())]);
    }
    until_waiting(&s, 4);
    assert_eq!(s.wakeups(), 6, "the x and the untagged polls only");

    // Neither an untagged message nor another tag wakes the `y` polls.
    c.post(b"untagged").unwrap();
    c.post_tagged(b"for z", "z").unwrap();
    assert_eq!(s.wakeups(), 6);
    assert_eq!(s.long_polls_waiting(), 4);

    c.post_tagged(b"for y", "y").unwrap();
    for h in ys {
        assert_eq!(h.join().unwrap().messages, vec![(4, b"for y".to_vec())]);
    }
    assert_eq!(s.wakeups(), 10, "each y poll once");
    until_waiting(&s, 0);
}

#[test]
fn polls_and_posts_reuse_kept_alive_connections() {
    let _turn = heavy();
    let (s, c) = start(RelayConfig::default());
    for i in 1..=20u64 {
        assert_eq!(c.post(b"m").unwrap(), i);
        assert_eq!(c.poll(i - 1, Duration::ZERO).unwrap().last_seq(i - 1), i);
    }
    assert_eq!(
        s.connections_accepted(),
        1,
        "one connection for 40 requests"
    );

    // 32 clones of one client long-poll 10 rounds at once, all idle together
    // between rounds: the pool keeps every connection (ureq's default kept 3
    // per host and closed the others, so every round opened ~29 new ones).
    const POLLERS: usize = 32;
    const ROUNDS: u64 = 10;
    let idle = Arc::new(Barrier::new(POLLERS + 1));
    let readers: Vec<_> = (0..POLLERS)
        .map(|_| {
            let (c, idle) = (c.clone(), idle.clone());
            std::thread::spawn(move || {
                for after in 20..20 + ROUNDS {
                    idle.wait();
                    let b = c.poll(after, Duration::from_secs(20)).unwrap();
                    assert_eq!(b.last_seq(after), after + 1);
                }
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        idle.wait();
        until_waiting(&s, POLLERS);
        assert_eq!(c.post(b"r").unwrap(), 20 + round);
    }
    for r in readers {
        r.join().unwrap();
    }
    let accepted = s.connections_accepted();
    assert!(
        accepted <= 1 + POLLERS as u64,
        "{accepted} connections for {} requests",
        POLLERS as u64 * ROUNDS + ROUNDS
    );
}
