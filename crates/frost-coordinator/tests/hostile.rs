//! Hostile traffic: authentic but adversarial signers feeding the
//! coordinator (a proptest), and a relay in the middle (an HTTP proxy on
//! 127.0.0.1) rewriting, flipping and replaying packets of DKG and signing.
//! Nobody panics, altered packets are refused before decoding, and no key
//! is ever reported or stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bitcoin::key::Secp256k1;
use bitcoin::secp256k1::{PublicKey, SecretKey};
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignJob,
    SignerFile, SignerInfo, SignerSet, ToSign,
};
use frost_net::envelope::{peek, HEADER_LEN};
use frost_net::messages::{KeyStored, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, Kind, Sender};
use frost_signer::{SignerNode, SignerOptions};
use proptest::prelude::*;
use relay::{RelayClient, RelayConfig, RelayServer};
use wsts::curve::point::{Point, G};

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

fn file(url: &str, n: u32) -> SignerFile {
    let secp = Secp256k1::new();
    SignerFile {
        relay_url: url.to_owned(),
        coordinator_public_key: key(0xc0, 0).public_key(&secp),
        magic_bytes: None,
        policy: Default::default(),
        state_dir: None,
        network: Some("regtest".into()),
        contract: Some("ST1.sbtc".into()),
        set: SignerSet {
            threshold: 2,
            dkg_threshold: None,
            signers: (0..n)
                .map(|i| SignerInfo {
                    id: i + 1,
                    public_key: key(0x5e, i).public_key(&secp),
                    key_ids: vec![i + 1],
                    private_key: None,
                })
                .collect(),
        },
    }
}

fn coordinator(f: &SignerFile, url: &str, dir: &std::path::Path) -> RelayFrostCoordinator {
    let mut o = RelayCoordinatorOptions::from_file(f, key(0xc0, 0));
    o.relay_url = url.to_owned();
    o.dkg_timeout = Duration::from_millis(1500);
    o.sign_timeout = Duration::from_millis(1500);
    o.state_path = Some(dir.join("coordinator.json"));
    RelayFrostCoordinator::new(o).unwrap()
}

/// What a hostile signer sends in answer to each coordinator request.
#[derive(Debug, Clone)]
struct Plan {
    /// Per signer: (dkg id offset, failure kind, named signer, key-stored key).
    moves: Vec<(u8, u8, u32, bool)>,
}

fn hostile_signers(f: &SignerFile, plan: Plan, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let codec = Codec::new(f);
    let relay = RelayClient::new(&f.relay_url, Duration::from_secs(5));
    let n = f.set.num_signers();
    std::thread::spawn(move || {
        let mut rng = wsts::util::create_rng();
        let parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], n, n, 2, &mut rng))
            .collect();
        let mut cursor = relay.head().unwrap().saturating_sub(1);
        while !stop.load(Ordering::SeqCst) {
            let Ok(b) = relay.poll_tags(cursor, Duration::from_millis(100), &["req"]) else {
                continue;
            };
            cursor = b.last_seq(cursor);
            for (_, bytes) in b.messages {
                let Ok(env) = codec.open(&bytes) else {
                    continue;
                };
                for i in 0..n {
                    let (off, fail, named, right_key) = plan.moves[i as usize % plan.moves.len()];
                    let named = named % (n + 2);
                    let sk = key(0x5e, i);
                    let mut out = vec![];
                    match &env.message {
                        Message::DkgBegin(m) => {
                            let comm = parties[i as usize].get_poly_commitment(&mut rng).unwrap();
                            out.push(Message::DkgPublicShares(w::DkgPublicShares {
                                dkg_id: m.dkg_id + u64::from(off % 2),
                                signer_id: i,
                                comms: vec![(i, comm)],
                            }));
                        }
                        Message::DkgPrivateBegin(m) => {
                            let shares = (1..=n)
                                .filter(|k| off % 3 != 0 || *k != named + 1)
                                .map(|k| (k, vec![7u8; 60]))
                                .collect();
                            out.push(Message::DkgPrivateShares(w::DkgPrivateShares {
                                dkg_id: m.dkg_id,
                                signer_id: i,
                                shares: vec![(i, shares)],
                            }));
                        }
                        Message::DkgEndBegin(m) => {
                            let set = [named].into_iter().collect();
                            let a = frost_net::scalar(&sk);
                            let bad =
                                frost_net::point(&key(0x5e, named).public_key(&Secp256k1::new()))
                                    .unwrap();
                            let status = match fail % 6 {
                                0 => w::DkgStatus::Success,
                                1 => w::DkgStatus::Failure(w::DkgFailure::BadPublicShares(set)),
                                2 => w::DkgStatus::Failure(w::DkgFailure::MissingPublicShares(set)),
                                3 => {
                                    w::DkgStatus::Failure(w::DkgFailure::MissingPrivateShares(set))
                                }
                                4 => w::DkgStatus::Failure(w::DkgFailure::BadPrivateShares(
                                    [(
                                        named,
                                        w::BadPrivateShare {
                                            shared_key: a * bad,
                                            tuple_proof: wsts::common::TupleProof::new(
                                                &a,
                                                &(a * G),
                                                &bad,
                                                &(a * bad),
                                                &mut rng,
                                            ),
                                        },
                                    )]
                                    .into_iter()
                                    .collect(),
                                )),
                                _ => w::DkgStatus::Failure(w::DkgFailure::Threshold),
                            };
                            out.push(Message::DkgEnd(w::DkgEnd {
                                dkg_id: m.dkg_id,
                                signer_id: i,
                                status,
                            }));
                            let agg = parties
                                .iter()
                                .map(|p| p.get_poly_commitment(&mut rng).unwrap().poly[0])
                                .fold(Point::default(), |s, p| s + p);
                            let k = if right_key {
                                frost_net::public_key(&agg).unwrap()
                            } else {
                                key(0x77, i).public_key(&Secp256k1::new())
                            };
                            out.push(Message::KeyStored(KeyStored {
                                dkg_id: m.dkg_id,
                                key: k,
                            }));
                        }
                        _ => {}
                    }
                    for m in out {
                        if let Ok(b) = codec.seal(Sender::Signer(i + 1), &sk, &m) {
                            let _ = relay.post_tagged(&b, m.kind().relay_tag());
                        }
                    }
                }
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]
    /// Authentic packets of hostile signers — wrong round ids, failure
    /// reports naming signers that sent nothing, private shares missing key
    /// ids, wrong KeyStored keys — never panic the coordinator, and no key
    /// comes out of the DKG.
    #[test]
    fn hostile_signers_never_panic_the_coordinator_or_make_a_key(
        moves in proptest::collection::vec((0u8..6, 0u8..6, 0u32..5, any::<bool>()), 1..4)
    ) {
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
        let f = file(&relay.url(), 3);
        let dir = tempfile::tempdir().unwrap();
        let mut coord = coordinator(&f, &relay.url(), dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let t = hostile_signers(&f, Plan { moves }, stop.clone());
        std::thread::sleep(Duration::from_millis(150));
        let r = coord.run_dkg_round();
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        prop_assert!(r.is_err(), "{r:?}");
        prop_assert_eq!(coord.aggregate_public_key(), None);
        prop_assert!(coord.keys().is_empty());
    }
}

/// How the proxy treats the packets parties post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    FlipByte,
    RewriteField,
    MoveIds,
    ReplayOlder,
}

struct Proxy {
    url: String,
    mode: Arc<Mutex<Mode>>,
    altered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn alter(mode: Mode, b: &[u8], older: &mut VecDeque<(Kind, Vec<u8>)>) -> Option<Vec<u8>> {
    let kind = peek(b)?.0;
    let text = String::from_utf8_lossy(b).into_owned();
    let out = match mode {
        Mode::Pass => return None,
        Mode::FlipByte => {
            let mut t = b.to_vec();
            let i = HEADER_LEN + (t.len() - HEADER_LEN) / 2;
            t[i] ^= 0x01;
            t
        }
        // Same length, another value: a round id, a status, a key id.
        Mode::RewriteField => text
            .replacen("\"dkg_id\":", "\"dkg_id\":9", 1)
            .replacen("Success", "BadState", 1)
            .into_bytes(),
        // Move ids between lists: swap the first two digits after an id list.
        Mode::MoveIds => {
            let t = text
                .replacen("\"signer_id\":0", "\"signer_id\":1", 1)
                .replacen("\"signer_ids\":[0,1", "\"signer_ids\":[1,0", 1)
                .replacen("\"key_ids\":[1,2", "\"key_ids\":[2,1", 1);
            t.into_bytes()
        }
        Mode::ReplayOlder => {
            let older_same = older
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, b)| b.clone());
            return Some(older_same.unwrap_or_else(|| b[..b.len() / 2].to_vec()));
        }
    };
    if out == b {
        // Nothing to rewrite in this one: flip its last byte instead.
        let mut v = out;
        let last = v.len() - 1;
        v[last] ^= 0x80;
        return Some(v);
    }
    Some(out)
}

fn proxy(upstream: String) -> Proxy {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let mode = Arc::new(Mutex::new(Mode::Pass));
    let altered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, a, s) = (mode.clone(), altered.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let server = Arc::new(server);
        let older = Arc::new(Mutex::new(VecDeque::<(Kind, Vec<u8>)>::new()));
        let mut workers = vec![];
        for _ in 0..48 {
            let (server, m, a, s, older, upstream) = (
                server.clone(),
                m.clone(),
                a.clone(),
                s.clone(),
                older.clone(),
                upstream.clone(),
            );
            workers.push(std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build(),
                );
                let relay = RelayClient::new(&upstream, Duration::from_secs(5));
                while !s.load(Ordering::SeqCst) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let url = req.url().to_owned();
                    if *req.method() == tiny_http::Method::Post {
                        let mut body = vec![];
                        let _ = req.as_reader().read_to_end(&mut body);
                        let tag = url.split("tag=").nth(1).unwrap_or("").to_owned();
                        let mode = *m.lock().unwrap();
                        let sent = {
                            let mut o = older.lock().unwrap();
                            let sent = alter(mode, &body, &mut o);
                            if let Some((k, _)) = peek(&body) {
                                o.push_back((k, body.clone()));
                            }
                            sent
                        };
                        let bytes = match sent {
                            Some(b) => {
                                a.fetch_add(1, Ordering::SeqCst);
                                b
                            }
                            None => body,
                        };
                        let resp = match relay.post_tagged(&bytes, &tag) {
                            Ok(seq) => {
                                tiny_http::Response::from_string(format!("{{\"seq\":{seq}}}"))
                            }
                            Err(e) => tiny_http::Response::from_string(e.to_string())
                                .with_status_code(500),
                        };
                        let _ = req.respond(resp);
                    } else {
                        let r = agent.get(format!("{upstream}{url}")).call();
                        let Ok(mut r) = r else {
                            let _ = req.respond(tiny_http::Response::empty(502));
                            continue;
                        };
                        let status = r.status().as_u16();
                        let headers: Vec<tiny_http::Header> = r
                            .headers()
                            .iter()
                            .filter(|(k, _)| {
                                k.as_str().starts_with("x-relay") || k.as_str() == "content-type"
                            })
                            .filter_map(|(k, v)| {
                                tiny_http::Header::from_bytes(k.as_str().as_bytes(), v.as_bytes())
                                    .ok()
                            })
                            .collect();
                        let body = r
                            .body_mut()
                            .with_config()
                            .limit(64 << 20)
                            .read_to_vec()
                            .unwrap_or_default();
                        let mut resp =
                            tiny_http::Response::from_data(body).with_status_code(status);
                        for h in headers {
                            resp.add_header(h);
                        }
                        let _ = req.respond(resp);
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.join();
        }
    });
    Proxy {
        url,
        mode,
        altered,
        stop,
        thread: Some(thread),
    }
}

struct Signers(Vec<(Arc<AtomicBool>, JoinHandle<SignerNode>)>);

impl Signers {
    fn start(f: &SignerFile, dir: &std::path::Path) -> Signers {
        Signers(
            (1..=f.set.num_signers())
                .map(|id| {
                    let mut node = SignerNode::new(SignerOptions {
                        id,
                        file: f.clone(),
                        private_key: key(0x5e, id - 1),
                        state_path: dir.join(format!("signer-{id}.json")),
                        poll_wait: Duration::from_millis(200),
                        allow_rotation: true,
                        attest_interval: frost_signer::ATTEST_INTERVAL,
                    })
                    .unwrap();
                    let stop = Arc::new(AtomicBool::new(false));
                    let s = stop.clone();
                    (
                        stop,
                        std::thread::spawn(move || {
                            node.run(&s);
                            node
                        }),
                    )
                })
                .collect(),
        )
    }

    fn stop(self) -> Vec<SignerNode> {
        self.0
            .into_iter()
            .map(|(s, t)| {
                s.store(true, Ordering::SeqCst);
                t.join().unwrap()
            })
            .collect()
    }
}

/// A relay in the middle of every party: rewriting fields, moving ids,
/// flipping bytes, replaying older packets. Each altered packet is refused
/// before it is decoded, nobody panics, and neither a DKG nor a signature
/// comes out; the key from before stays the coordinator's.
#[test]
fn a_relay_in_the_middle_gets_nothing_through() {
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
    let p = proxy(relay.url());
    let f = file(&p.url, 3);
    let dir = tempfile::tempdir().unwrap();
    // A first, honest DKG and signature through the (passing) proxy.
    let signers = Signers::start(&f, dir.path());
    let mut coord = coordinator(&f, &p.url, dir.path());
    let good = coord.run_dkg_round().unwrap();
    let item = SignItem {
        key: good,
        message: ToSign::Taproot { sighash: [1; 32] },
    };
    coord.sign(b"x", std::slice::from_ref(&item)).unwrap();
    for mode in [
        Mode::FlipByte,
        Mode::RewriteField,
        Mode::MoveIds,
        Mode::ReplayOlder,
    ] {
        *p.mode.lock().unwrap() = mode;
        let before = p.altered.load(Ordering::SeqCst);
        let r = coord.run_dkg_round();
        assert!(r.is_err(), "{mode:?}: DKG through the proxy: {r:?}");
        let r = coord.sign(b"x", std::slice::from_ref(&item));
        assert!(r.is_err(), "{mode:?}: signing through the proxy: {r:?}");
        // Several rounds in flight together: the proxy mixes (and, replaying
        // older packets, substitutes) packets of concurrent rounds.
        for r in coord.sign_many(&jobs(good, 4)) {
            assert!(
                r.is_err(),
                "{mode:?}: concurrent rounds through the proxy: {r:?}"
            );
        }
        assert!(
            p.altered.load(Ordering::SeqCst) > before,
            "{mode:?}: the proxy altered packets"
        );
        assert_eq!(coord.aggregate_public_key(), Some(good), "{mode:?}");
        assert_eq!(coord.keys(), vec![good], "{mode:?}");
    }
    let nodes = signers.stop();
    let refused: u64 =
        nodes.iter().map(SignerNode::refused_packets).sum::<u64>() + coord.refused_packets();
    assert!(
        refused > 20,
        "altered packets refused before decoding: {refused}"
    );
    for n in &nodes {
        assert_eq!(
            n.core().history().aggregate_keys(),
            vec![good],
            "no signer stored a key the proxy made"
        );
    }
    // Through an honest relay again, everything works with the old key.
    *p.mode.lock().unwrap() = Mode::Pass;
    let _signers = Signers::start(&f, dir.path());
    let sig = coord.sign(b"x", std::slice::from_ref(&item)).unwrap();
    assert_eq!(sig.len(), 1);
    for r in coord.sign_many(&jobs(good, 4)) {
        assert_eq!(r.unwrap().len(), 2);
    }
    assert!(coord.most_rounds_in_flight() >= 8);
}

/// `n` jobs of two items each for `key`.
fn jobs(key: PublicKey, n: u8) -> Vec<SignJob> {
    (0..n)
        .map(|j| SignJob {
            payload: b"x".to_vec(),
            items: (0..2u8)
                .map(|i| SignItem {
                    key,
                    message: ToSign::Taproot {
                        sighash: [0x40 + j * 2 + i; 32],
                    },
                })
                .collect(),
        })
        .collect()
}
