//! Benchmark: DKG and one taproot signing round through the relay (real HTTP
//! on 127.0.0.1, one thread per signer) against the same rounds run in one
//! thread with no network (every packet still sealed in its envelope and
//! opened by each party that processes it), for 5×1, 15×1 and 15×10 (signers × keys each);
//! and relay delivery latency to 128 long-polling clients.
//!
//! `cargo run --release -p frost-coordinator --example frost_bench [-- 15x1 … --rounds=N --relay-only]`
//!
//! `-- inflight [5x1 15x1 …] [jobs=200]`: `sign_many` of that many jobs of
//! two items (like payouts) through the relay with 1, 4, 8 and 16 rounds in
//! flight, beside the in-process CPU floor of the same rounds (all parties'
//! CPU in one thread, over the cores).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    missing_docs
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignJob, SignerFile,
    SignerInfo, SignerSet,
};
use frost_net::envelope::peek;
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{scalar, Codec, ForSigner, Sender, ShareRequest, SignItem, SignRequest, ToSign};
use frost_signer::{SignerCore, SignerNode, SignerOptions};
use relay::{RelayClient, RelayConfig, RelayServer};
use wsts::net::{Packet, SignatureType};
use wsts::state_machine::coordinator::{fire, Config, Coordinator as _};
use wsts::state_machine::OperationResult;

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

fn signer_set(n: u32, k: u32) -> SignerSet {
    let secp = Secp256k1::new();
    SignerSet {
        threshold: n * k * 7 / 10,
        dkg_threshold: None,
        signers: (0..n)
            .map(|i| SignerInfo {
                id: i + 1,
                public_key: key(0x5e, i).public_key(&secp),
                key_ids: (i * k + 1..=i * k + k).collect(),
                private_key: None,
            })
            .collect(),
    }
}

/// All parties in one thread; every packet sealed in its envelope and
/// opened (verified, decoded, id-checked) by each party that processes it.
fn in_process(n: u32, k: u32, rounds: usize) -> (Duration, Vec<Duration>) {
    let set = signer_set(n, k);
    let secp = Secp256k1::new();
    let ckey = key(0xc0, 0);
    let file = SignerFile {
        relay_url: String::new(),
        coordinator_public_key: ckey.public_key(&secp),
        state_dir: None,
        network: None,
        contract: None,
        magic_bytes: None,
        policy: Default::default(),
        set: set.clone(),
    };
    let codec = Codec::new(&file);
    let config = Config::with_timeouts(
        n,
        n * k,
        set.threshold,
        set.dkg_threshold(),
        scalar(&ckey),
        None,
        None,
        None,
        None,
        None,
        set.wsts_key_ids(),
        set.wsts_signer_points().unwrap(),
    );
    let mut coord = fire::Coordinator::<wsts::v2::Aggregator>::new(config);
    let dir = tempfile::tempdir().unwrap();
    let mut signers: Vec<(u32, SignerCore, SecretKey)> = set
        .signers
        .iter()
        .map(|s| {
            let sk = key(0x5e, s.id - 1);
            let core = SignerCore::new(
                s.id,
                &set,
                &sk,
                dir.path().join(format!("s{}.json", s.id)),
                false,
            )
            .unwrap();
            let mut core = core;
            core.set_codec(codec.clone()).unwrap();
            (s.id, core, sk)
        })
        .collect();
    let agg_key = std::cell::Cell::new(None::<bitcoin::secp256k1::PublicKey>);
    // The sealed nonce responses by (sign id, iteration, wsts signer id):
    // a share request embeds those of the signers it lists.
    let sealed_nonces =
        std::cell::RefCell::new(std::collections::HashMap::<(u64, u64, u32), Vec<u8>>::new());
    let key_ids_of = |ids: &[u32]| -> Vec<u32> {
        let mut k: Vec<u32> = ids
            .iter()
            .filter_map(|i| set.signer(i + 1))
            .flat_map(|s| s.key_ids.iter().copied())
            .collect();
        k.sort_unstable();
        k
    };
    let wrap = |p: Packet| -> Message {
        match p.msg {
            w::Message::DkgBegin(m) => Message::DkgBegin(m),
            // FIRE leaves key_ids empty; the envelope's checks want them.
            w::Message::DkgPrivateBegin(mut m) => {
                m.key_ids = key_ids_of(&m.signer_ids);
                Message::DkgPrivateBegin(m)
            }
            w::Message::DkgEndBegin(mut m) => {
                m.key_ids = key_ids_of(&m.signer_ids);
                Message::DkgEndBegin(m)
            }
            w::Message::NonceRequest(msg) => Message::NonceRequest(Keyed {
                key: agg_key.get().unwrap(),
                msg,
            }),
            w::Message::SignatureShareRequest(msg) => {
                let sealed = sealed_nonces.borrow();
                let nonce_envelopes = msg
                    .nonce_responses
                    .iter()
                    .map(|n| sealed[&(n.sign_id, n.sign_iter_id, n.signer_id)].clone())
                    .collect();
                Message::SignatureShareRequest(ShareRequest {
                    key: agg_key.get().unwrap(),
                    msg,
                    nonce_envelopes,
                })
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut run = |first: Vec<Message>,
                   coord: &mut fire::Coordinator<wsts::v2::Aggregator>|
     -> OperationResult {
        // What every signer reads next: the coordinator's requests and the
        // other signers' broadcasts, as the relay would deliver them.
        let mut to_signers: Vec<Vec<u8>> = first
            .iter()
            .map(|m| codec.seal(Sender::Coordinator, &ckey, m).unwrap())
            .collect();
        loop {
            let mut produced = Vec::new();
            for (id, s, sk) in signers.iter_mut() {
                for bytes in &to_signers {
                    if peek(bytes).is_some_and(|(k, _)| !k.for_signers()) {
                        continue;
                    }
                    // As a `SignerNode` opens them: a share request with its
                    // listing, one not listing the signer stops there.
                    let me = *id - 1;
                    let (env, listed) = match codec.open_for_signer(bytes, me).unwrap() {
                        ForSigner::Open(env, listed) => (env, listed),
                        ForSigner::NotListed(round) => {
                            s.passed_over(&round);
                            continue;
                        }
                    };
                    for out in s.handle_listed(&env, listed.as_ref()).unwrap() {
                        produced.push(codec.seal(Sender::Signer(*id), sk, &out).unwrap());
                    }
                }
            }
            let inbound: Vec<Packet> = produced
                .iter()
                .filter_map(|b| {
                    let msg = match codec.open(b).unwrap().message {
                        Message::DkgPublicShares(m) => w::Message::DkgPublicShares(m),
                        Message::DkgPrivateShares(m) => w::Message::DkgPrivateShares(m),
                        Message::DkgEnd(m) => w::Message::DkgEnd(m),
                        Message::NonceResponse(r) => {
                            sealed_nonces.borrow_mut().insert(
                                (r.msg.sign_id, r.msg.sign_iter_id, r.msg.signer_id),
                                b.clone(),
                            );
                            w::Message::NonceResponse(r.msg)
                        }
                        Message::SignatureShareResponse(r) => {
                            w::Message::SignatureShareResponse(r.msg)
                        }
                        _ => return None,
                    };
                    Some(Packet { msg, sig: vec![] })
                })
                .collect();
            let (out, results) = coord.process_inbound_messages(&inbound).unwrap();
            for p in out {
                produced.push(codec.seal(Sender::Coordinator, &ckey, &wrap(p)).unwrap());
            }
            if let Some(r) = results.into_iter().next() {
                return r;
            }
            to_signers = produced;
        }
    };
    let t = Instant::now();
    let start = coord.start_dkg_round().unwrap();
    let OperationResult::Dkg(point) = run(vec![wrap(start)], &mut coord) else {
        panic!("dkg failed");
    };
    agg_key.set(Some(frost_net::public_key(&point).unwrap()));
    let dkg = t.elapsed();
    let mut signs = vec![];
    for i in 0..rounds {
        let t = Instant::now();
        let request = Message::SignRequest(SignRequest {
            id: 1000 + i as u64,
            payload: vec![],
            items: vec![SignItem {
                key: agg_key.get().unwrap(),
                message: ToSign::Taproot {
                    sighash: round_sighash(i),
                },
            }],
        });
        let start = coord
            .start_signing_round(&round_sighash(i), SignatureType::Taproot(None))
            .unwrap();
        assert!(matches!(
            run(vec![request, wrap(start)], &mut coord),
            OperationResult::SignTaproot(_)
        ));
        signs.push(t.elapsed());
    }
    (dkg, signs)
}

/// Relay server, one thread per signer, the coordinator: real HTTP on 127.0.0.1.
fn through_relay(n: u32, k: u32, rounds: usize) -> (Duration, Vec<Duration>) {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let set = signer_set(n, k);
    let secp = Secp256k1::new();
    let ckey = key(0xc0, 0);
    let dir = tempfile::tempdir().unwrap();
    let file = SignerFile {
        relay_url: relay.url(),
        coordinator_public_key: ckey.public_key(&secp),
        state_dir: None,
        network: None,
        contract: None,
        magic_bytes: None,
        policy: Default::default(),
        set: set.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (1..=n)
        .map(|id| {
            let mut node = SignerNode::new(SignerOptions {
                id,
                file: file.clone(),
                private_key: key(0x5e, id - 1),
                state_path: dir.path().join(format!("s{id}.json")),
                poll_wait: Duration::from_millis(500),
                allow_rotation: false,
                attest_interval: frost_signer::ATTEST_INTERVAL,
            })
            .unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || node.run(&stop))
        })
        .collect();
    let mut coord = RelayFrostCoordinator::new(RelayCoordinatorOptions {
        set,
        private_key: ckey,
        relay_url: relay.url(),
        dkg_timeout: Duration::from_secs(120),
        sign_timeout: Duration::from_secs(30),
        state_path: None,
        network: None,
        contract: None,
        rounds_in_flight: frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
    })
    .unwrap();
    let t = Instant::now();
    let agg = coord.run_dkg_round().unwrap();
    let dkg = t.elapsed();
    let mut signs = vec![];
    for i in 0..rounds {
        let t = Instant::now();
        let item = SignItem {
            key: agg,
            message: ToSign::Taproot {
                sighash: [i as u8; 32],
            },
        };
        coord.sign(&[], &[item]).unwrap();
        signs.push(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    (dkg, signs)
}

/// A distinct sighash per round.
fn round_sighash(i: usize) -> [u8; 32] {
    let mut h = [0x5a; 32];
    h[..8].copy_from_slice(&(i as u64).to_be_bytes());
    h
}

/// `sign_many` of `jobs` jobs of two items through the relay, once per
/// entry of `in_flight` (one cluster and key for all): the time of each.
fn through_relay_many(n: u32, k: u32, jobs: usize, in_flight: &[usize]) -> Vec<Duration> {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let set = signer_set(n, k);
    let secp = Secp256k1::new();
    let ckey = key(0xc0, 0);
    let dir = tempfile::tempdir().unwrap();
    let file = SignerFile {
        relay_url: relay.url(),
        coordinator_public_key: ckey.public_key(&secp),
        state_dir: None,
        network: None,
        contract: None,
        magic_bytes: None,
        policy: Default::default(),
        set: set.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (1..=n)
        .map(|id| {
            let mut node = SignerNode::new(SignerOptions {
                id,
                file: file.clone(),
                private_key: key(0x5e, id - 1),
                state_path: dir.path().join(format!("s{id}.json")),
                poll_wait: Duration::from_millis(500),
                allow_rotation: false,
                attest_interval: frost_signer::ATTEST_INTERVAL,
            })
            .unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || node.run(&stop))
        })
        .collect();
    let coordinator = |rounds_in_flight: usize| {
        RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set: set.clone(),
            private_key: ckey,
            relay_url: relay.url(),
            dkg_timeout: Duration::from_secs(120),
            sign_timeout: Duration::from_secs(60),
            state_path: Some(dir.path().join("coordinator.json")),
            network: None,
            contract: None,
            rounds_in_flight,
        })
        .unwrap()
    };
    let agg = coordinator(1).run_dkg_round().unwrap();
    let mut times = vec![];
    for (run, &f) in in_flight.iter().enumerate() {
        let mut coord = coordinator(f);
        let batch: Vec<SignJob> = (0..jobs)
            .map(|j| SignJob {
                payload: vec![],
                items: (0..2)
                    .map(|i| SignItem {
                        key: agg,
                        message: ToSign::Taproot {
                            sighash: round_sighash((run * jobs + j) * 2 + i),
                        },
                    })
                    .collect(),
            })
            .collect();
        let t = Instant::now();
        let out = coord.sign_many(&batch);
        times.push(t.elapsed());
        assert!(out.iter().all(Result::is_ok), "every job signed");
        assert_eq!(coord.most_rounds_in_flight(), f.min(2 * jobs));
        eprintln!("{n}x{k}: {f} in flight done");
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    times
}

/// `-- inflight`: rounds/s with 1, 4, 8, 16 rounds in flight, and the floor.
fn inflight(args: &[String]) {
    let jobs: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("jobs=")?.parse().ok())
        .unwrap_or(200);
    let mut sizes: Vec<(u32, u32)> = args
        .iter()
        .filter_map(|a| {
            let (n, k) = a.split_once('x')?;
            Some((n.parse().ok()?, k.parse().ok()?))
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![(5, 1), (15, 1)];
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let rounds = 2 * jobs;
    let in_flight = [1, 4, 8, 16];
    println!(
        "{jobs} jobs of 2 items ({rounds} rounds) through the relay, {cores} cores; \
         floor = in-process CPU of the same rounds (all parties, one thread) / {cores}"
    );
    println!("| signers × keys | rounds in flight | time | rounds/s | vs 1 in flight | vs floor |");
    println!("|---|---|---|---|---|---|");
    for (n, k) in sizes {
        let (_, signs) = in_process(n, k, rounds);
        let cpu: Duration = signs.iter().sum();
        let floor = cpu / u32::try_from(cores).unwrap_or(1);
        eprintln!("{n}x{k} in-process done");
        let times = through_relay_many(n, k, jobs, &in_flight);
        println!(
            "| {n}×{k} | floor | {:.2} s | {:.0} | | |",
            floor.as_secs_f64(),
            rounds as f64 / floor.as_secs_f64()
        );
        for (f, t) in in_flight.iter().zip(&times) {
            println!(
                "| {n}×{k} | {f} | {:.2} s | {:.0} | {:.2}× | {:.2}× |",
                t.as_secs_f64(),
                rounds as f64 / t.as_secs_f64(),
                times[0].as_secs_f64() / t.as_secs_f64(),
                t.as_secs_f64() / floor.as_secs_f64()
            );
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn relay_latency(clients: usize, messages: usize) -> (Duration, Duration, Duration) {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let poster = RelayClient::new(&relay.url(), Duration::from_secs(5));
    let ready = Arc::new(Barrier::new(clients + 1));
    let start_times = Arc::new(std::sync::Mutex::new(vec![None; messages + 1]));
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let c = poster.clone();
            let ready = ready.clone();
            let starts = start_times.clone();
            std::thread::spawn(move || {
                ready.wait();
                let mut lat = vec![];
                let mut after = 0;
                while lat.len() < messages {
                    let b = c.poll(after, Duration::from_secs(5)).unwrap();
                    let now = Instant::now();
                    after = b.last_seq(after);
                    for (seq, _) in b.messages {
                        let sent: Option<Instant> = starts.lock().unwrap()[seq as usize];
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
        start_times.lock().unwrap()[i] = Some(Instant::now());
        poster.post(&[0u8; 512]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut all: Vec<Duration> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    all.sort();
    (
        all[all.len() / 2],
        all[all.len() * 99 / 100],
        *all.last().unwrap(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "inflight") {
        inflight(&args[1..]);
        return;
    }
    // `--rounds=N` signs N rounds per size (default 10), e.g. to profile
    // signing rather than the DKG.
    let rounds = std::env::args()
        .find_map(|a| a.strip_prefix("--rounds=")?.parse().ok())
        .unwrap_or(10usize);
    println!("FROST rounds (wsts v2 + FIRE), median of {rounds} signing rounds");
    println!("| signers × keys | path | DKG | signing round (median) |");
    println!("|---|---|---|---|");
    // `-- 15x1 5x1` runs only those sizes (and not the relay latency).
    let only: Vec<(u32, u32)> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            let (n, k) = a.split_once('x')?;
            Some((n.parse().ok()?, k.parse().ok()?))
        })
        .collect();
    let sizes = if only.is_empty() {
        vec![(5, 1), (15, 1), (15, 10)]
    } else {
        only.clone()
    };
    // `--relay-only` skips the in-process rounds (to profile the relay path).
    let relay_only = std::env::args().any(|a| a == "--relay-only");
    for (n, k) in sizes {
        let (d_in, s_in) = if relay_only {
            (Duration::from_nanos(1), vec![Duration::from_nanos(1)])
        } else {
            in_process(n, k, rounds)
        };
        eprintln!("{n}x{k} in-process done");
        let (d_relay, s_relay) = through_relay(n, k, rounds);
        eprintln!("{n}x{k} relay done");
        let (m_in, m_relay) = (median(s_in), median(s_relay));
        println!(
            "| {n}×{k} | in-process | {:.0} ms | {:.1} ms |",
            d_in.as_secs_f64() * 1e3,
            m_in.as_secs_f64() * 1e3
        );
        println!(
            "| {n}×{k} | relay | {:.0} ms ({:.2}×) | {:.1} ms ({:.2}×) |",
            d_relay.as_secs_f64() * 1e3,
            d_relay.as_secs_f64() / d_in.as_secs_f64(),
            m_relay.as_secs_f64() * 1e3,
            m_relay.as_secs_f64() / m_in.as_secs_f64()
        );
    }
    if !only.is_empty() {
        return;
    }
    let (p50, p99, max) = relay_latency(128, 50);
    println!();
    println!(
        "relay delivery to 128 long-polling clients (50 messages of 512 bytes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}
