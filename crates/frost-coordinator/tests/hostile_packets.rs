//! The coordinator's side of the property tests (the signer's are in
//! `frost-signer` `tests/rounds.rs`): authentic signers — they hold the
//! set's message keys, so every envelope verifies — answer the
//! coordinator's DKG and signing requests with arbitrary and mutated
//! packets: arbitrary bodies, wrong and foreign ids, `DkgFailure` reports
//! naming ids outside the set, nonce responses with foreign key ids,
//! signature share responses relabelled from an honest round. The
//! coordinator never panics, publishes no key, accepts no signature, and its
//! memory stays bounded; the honest key still signs afterwards.
//!
//! One test in this binary: the memory bound is read from the process's own
//! `VmRSS`, which a test running beside it would disturb.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::key::Secp256k1;
use bitcoin::secp256k1::{PublicKey, SecretKey};
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, SignerFile,
    SignerInfo, SignerSet, ToSign,
};
use frost_net::messages::{KeyStored, Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, Kind, Sender};
use frost_signer::{SignerNode, SignerOptions};
use proptest::prelude::*;
use relay::{RelayClient, RelayConfig, RelayServer};
use wsts::common::{PublicNonce, SignatureShare};
use wsts::curve::point::{Point, G};
use wsts::curve::scalar::Scalar;

const N: u32 = 3;
/// Every case's packets are bounded: at most this many per request and signer.
const MAX_COPIES: usize = 8;
/// Growth of the process's resident memory over all cases, at most.
const RSS_BOUND: u64 = 32 << 20;

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

fn file(url: &str) -> SignerFile {
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
            signers: (0..N)
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

fn coordinator(f: &SignerFile, state: &std::path::Path) -> RelayFrostCoordinator {
    let mut o = RelayCoordinatorOptions::from_file(f, key(0xc0, 0));
    o.dkg_timeout = Duration::from_millis(1200);
    o.sign_timeout = Duration::from_millis(1200);
    o.state_path = Some(state.to_owned());
    RelayFrostCoordinator::new(o).unwrap()
}

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// What every case starts from: a relay, an honest key in the
/// coordinator's state file, and the honest share responses of one round.
struct Fixture {
    _relay: RelayServer,
    file: SignerFile,
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    good: PublicKey,
    honest_shares: Vec<w::SignatureShareResponse>,
    rss_start: u64,
    case: AtomicU64,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
        let f = file(&relay.url());
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("coordinator.json");
        let stop = Arc::new(AtomicBool::new(false));
        let nodes: Vec<JoinHandle<()>> = (1..=N)
            .map(|id| {
                let mut node = SignerNode::new(SignerOptions {
                    id,
                    file: f.clone(),
                    private_key: key(0x5e, id - 1),
                    state_path: dir.path().join(format!("signer-{id}.json")),
                    poll_wait: Duration::from_millis(100),
                    allow_rotation: false,
                    attest_interval: frost_signer::ATTEST_INTERVAL,
                })
                .unwrap();
                let s = stop.clone();
                std::thread::spawn(move || node.run(&s))
            })
            .collect();
        let mut c = coordinator(&f, &state);
        let good = c.run_dkg_round().unwrap();
        let from = RelayClient::new(&f.relay_url, Duration::from_secs(5))
            .head()
            .unwrap();
        let item = SignItem {
            key: good,
            message: ToSign::Taproot { sighash: [3; 32] },
        };
        c.sign(b"honest", &[item]).unwrap();
        stop.store(true, Ordering::SeqCst);
        for n in nodes {
            n.join().unwrap();
        }
        drop(c);
        // The honest round's share responses, to relabel later.
        let codec = Codec::new(&f);
        let batch = RelayClient::new(&f.relay_url, Duration::from_secs(5))
            .poll_tags(from, Duration::ZERO, &[frost_net::TAG_RESPONSE])
            .unwrap();
        let honest_shares: Vec<_> = batch
            .messages
            .iter()
            .filter_map(|(_, b)| match codec.open(b).ok()?.message {
                Message::SignatureShareResponse(r) => Some(r.msg),
                _ => None,
            })
            .collect();
        assert!(honest_shares.len() >= 2, "{}", honest_shares.len());
        Fixture {
            _relay: relay,
            file: f,
            _dir: dir,
            state,
            good,
            honest_shares,
            rss_start: rss(),
            case: AtomicU64::new(0),
        }
    })
}

/// One hostile answer: `op` picks the mutation, `a` and `b` its values.
#[derive(Debug, Clone, Copy)]
struct Move {
    op: u8,
    a: u32,
    b: u64,
    copies: usize,
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    proptest::collection::vec(
        (0u8..24, any::<u32>(), any::<u64>(), 1usize..=MAX_COPIES)
            .prop_map(|(op, a, b, copies)| Move { op, a, b, copies }),
        1..12,
    )
}

/// Ids that do and do not fit a 3-signer set: own, others', the edges.
fn some_id(a: u32) -> u32 {
    [0, 1, 2, 3, 4, N, u32::MAX, a][a as usize % 8]
}

/// Arbitrary bodies for `kind`: bytes, the body (JSON or binary) of another
/// kind, truncated, with a byte flipped or a length or count word set to
/// 2^32 - 1 (binary bodies), JSON of nothing.
fn junk_body(m: Move, kind: Kind, valid_body_of_other: &[u8]) -> Vec<u8> {
    let at = (m.a as usize) % valid_body_of_other.len().max(1);
    match m.b % 6 {
        0 => m.b.to_be_bytes().repeat(1 + (m.a as usize % 64)),
        1 => valid_body_of_other.to_vec(),
        2 => valid_body_of_other[..valid_body_of_other.len() / 2].to_vec(),
        3 => {
            let mut b = valid_body_of_other.to_vec();
            if let Some(x) = b.get_mut(at) {
                *x ^= 1 << (m.b % 8);
            }
            b
        }
        4 => {
            let mut b = valid_body_of_other.to_vec();
            let end = (at + 4).min(b.len());
            b[at..end].copy_from_slice(&u32::MAX.to_be_bytes()[..end - at]);
            b
        }
        _ => format!("{{\"kind\":{},\"x\":{}}}", kind as u8, m.a).into_bytes(),
    }
}

struct Hostile {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Hostile {
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Signers 1..=3 with their real message keys but no key shares, answering
/// each coordinator request with the case's moves. Returns how many packets
/// they posted.
fn hostile(fx: &'static Fixture, plan: Vec<Move>) -> Hostile {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let codec = Codec::new(&fx.file);
        let relay = RelayClient::new(&fx.file.relay_url, Duration::from_secs(5));
        let mut rng = wsts::util::create_rng();
        let mut cursor = relay.head().unwrap().saturating_sub(1);
        let mut posted = 0u64;
        let mut step = 0usize;
        let other = key(0x77, 0).public_key(&Secp256k1::new());
        while !s.load(Ordering::SeqCst) {
            let Ok(batch) =
                relay.poll_tags(cursor, Duration::from_millis(50), &[frost_net::TAG_REQUEST])
            else {
                continue;
            };
            cursor = batch.last_seq(cursor);
            for (_, bytes) in batch.messages {
                let Ok(env) = codec.open(&bytes) else {
                    continue;
                };
                for i in 0..N {
                    let m = plan[step % plan.len()];
                    step += 1;
                    let sk = key(0x5e, i);
                    let me = Sender::Signer(i + 1);
                    let mut out: Vec<Message> = vec![];
                    let mut raw: Vec<(Kind, Vec<u8>)> = vec![];
                    match &env.message {
                        Message::DkgBegin(b) => {
                            let p = wsts::v2::Party::new(i, &[i + 1], N, N, 2, &mut rng);
                            let mut comm = p.get_poly_commitment(&mut rng).unwrap();
                            let mut party = i;
                            let mut dkg_id = b.dkg_id;
                            match m.op % 6 {
                                0 => party = some_id(m.a),
                                1 => dkg_id = m.b,
                                2 => comm.poly.truncate(m.a as usize % 2),
                                3 => comm.poly.push(rp()),
                                4 => comm.id.id = Scalar::from(some_id(m.a)),
                                _ => {}
                            }
                            out.push(Message::DkgPublicShares(w::DkgPublicShares {
                                dkg_id,
                                signer_id: if m.op % 7 == 6 { some_id(m.a) } else { i },
                                comms: vec![(party, comm)],
                            }));
                        }
                        Message::DkgPrivateBegin(b) => {
                            let shares = (0..=N + 1)
                                .filter(|k| !m.op.is_multiple_of(3) || *k != m.a % (N + 2))
                                .map(|k| (k, vec![7u8; 20 + (m.b % 300) as usize]))
                                .collect();
                            out.push(Message::DkgPrivateShares(w::DkgPrivateShares {
                                dkg_id: b.dkg_id,
                                signer_id: i,
                                shares: vec![(
                                    if m.op.is_multiple_of(2) {
                                        i
                                    } else {
                                        some_id(m.a)
                                    },
                                    shares,
                                )],
                            }));
                        }
                        Message::DkgEndBegin(b) => {
                            let named: hashbrown::HashSet<u32> =
                                [some_id(m.a), some_id(m.a.rotate_left(7))]
                                    .into_iter()
                                    .collect();
                            let x = Scalar::random(&mut rng);
                            let y = rp();
                            let status = match m.op % 7 {
                                0 => w::DkgStatus::Success,
                                1 => w::DkgStatus::Failure(w::DkgFailure::BadPublicShares(named)),
                                2 => {
                                    w::DkgStatus::Failure(w::DkgFailure::MissingPublicShares(named))
                                }
                                3 => w::DkgStatus::Failure(w::DkgFailure::MissingPrivateShares(
                                    named,
                                )),
                                4 => w::DkgStatus::Failure(w::DkgFailure::BadPrivateShares(
                                    named
                                        .into_iter()
                                        .map(|id| {
                                            (
                                                id,
                                                w::BadPrivateShare {
                                                    shared_key: x * y,
                                                    tuple_proof: wsts::common::TupleProof::new(
                                                        &x,
                                                        &(x * G),
                                                        &y,
                                                        &(x * y),
                                                        &mut rng,
                                                    ),
                                                },
                                            )
                                        })
                                        .collect(),
                                )),
                                5 => w::DkgStatus::Failure(w::DkgFailure::Threshold),
                                _ => w::DkgStatus::Failure(w::DkgFailure::BadState),
                            };
                            out.push(Message::DkgEnd(w::DkgEnd {
                                dkg_id: b.dkg_id,
                                signer_id: if m.op % 5 == 4 { some_id(m.a) } else { i },
                                status,
                            }));
                            out.push(Message::KeyStored(KeyStored {
                                dkg_id: b.dkg_id,
                                key: if m.op.is_multiple_of(2) {
                                    fx.good
                                } else {
                                    other
                                },
                            }));
                        }
                        Message::NonceRequest(r) => {
                            let q = &r.msg;
                            let mut n = w::NonceResponse {
                                dkg_id: q.dkg_id,
                                sign_id: q.sign_id,
                                sign_iter_id: q.sign_iter_id,
                                signer_id: i,
                                key_ids: vec![i + 1],
                                nonces: vec![PublicNonce { D: rp(), E: rp() }],
                                message: q.message.clone(),
                            };
                            let mut k = r.key;
                            match m.op % 12 {
                                // Well formed: FIRE goes on to ask for shares.
                                0..=3 => {}
                                4 => n.key_ids = vec![some_id(m.a)],
                                5 => n.key_ids.push(some_id(m.a)),
                                6 => n.signer_id = some_id(m.a),
                                7 => n.sign_iter_id = m.b,
                                8 => n.sign_id ^= 1 + m.b % 3,
                                9 => k = other,
                                10 => n.nonces[0].D = Point::default(),
                                _ => n.nonces.push(n.nonces[0].clone()),
                            }
                            out.push(Message::NonceResponse(Keyed { key: k, msg: n }));
                        }
                        Message::SignatureShareRequest(r) => {
                            let q = &r.msg;
                            let mut s = w::SignatureShareResponse {
                                dkg_id: q.dkg_id,
                                sign_id: q.sign_id,
                                sign_iter_id: q.sign_iter_id,
                                signer_id: i,
                                signature_shares: vec![SignatureShare {
                                    id: i,
                                    z_i: Scalar::random(&mut rng),
                                    key_ids: vec![i + 1],
                                }],
                            };
                            match m.op % 8 {
                                // An honest share of the earlier round, relabelled
                                // for this one (its own signer's, or another's).
                                0..=2 => {
                                    let h = &fx.honest_shares
                                        [(i as usize + m.a as usize) % fx.honest_shares.len()];
                                    s.signature_shares = h.signature_shares.clone();
                                    if m.op % 8 == 1 {
                                        s.signer_id = h.signer_id;
                                    }
                                }
                                3 => s.sign_iter_id = m.b,
                                4 => s.signature_shares[0].id = some_id(m.a),
                                5 => s.signature_shares[0].key_ids = vec![some_id(m.a)],
                                6 => s.signature_shares.clear(),
                                _ => {}
                            }
                            out.push(Message::SignatureShareResponse(Keyed {
                                key: r.key,
                                msg: s,
                            }));
                        }
                        Message::SignRequest(r) if m.op.is_multiple_of(4) => {
                            out.push(Message::Refusal(frost_net::messages::Refusal {
                                request: if m.a.is_multiple_of(2) {
                                    r.id
                                } else {
                                    u64::from(m.a)
                                },
                                rule: "x".repeat(m.a as usize % 2048),
                            }));
                        }
                        _ => {}
                    }
                    // Arbitrary bodies under a valid signature, of any signer kind.
                    if m.op >= 12 {
                        let kind = Kind::ALL[(m.a as usize) % Kind::ALL.len()];
                        let (own, template) = out
                            .first()
                            .map(|t| (t.kind(), t.encode_body()))
                            .unwrap_or_else(|| (kind, b"{}".to_vec()));
                        // A flipped byte or a huge count is sent as the
                        // template's own kind, to reach its decoder.
                        let kind = if matches!(m.b % 6, 3 | 4) { own } else { kind };
                        raw.push((kind, junk_body(m, kind, &template)));
                    }
                    for _ in 0..m.copies {
                        for msg in &out {
                            if let Ok(b) = codec.seal(me, &sk, msg) {
                                if relay.post_tagged(&b, msg.kind().relay_tag()).is_ok() {
                                    posted += 1;
                                }
                            }
                        }
                        for (kind, body) in &raw {
                            let b = codec.seal_raw(me, &sk, *kind, body);
                            if relay.post_tagged(&b, kind.relay_tag()).is_ok() {
                                posted += 1;
                            }
                        }
                    }
                }
            }
        }
        posted
    });
    Hostile {
        stop,
        thread: Some(thread),
    }
}

/// A random curve point (a well-formed nonce or commitment nobody can use).
fn rp() -> Point {
    Scalar::random(&mut wsts::util::create_rng()) * G
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Arbitrary and mutated authentic packets fed into the coordinator's
    /// DKG and signing-response paths: no panic, no key, no signature,
    /// bounded memory; the honest key is all the coordinator holds.
    #[test]
    fn arbitrary_and_mutated_packets_never_panic_publish_a_key_or_pass_a_signature(
        plan in moves()
    ) {
        let fx = fixture();
        let case = fx.case.fetch_add(1, Ordering::SeqCst);
        let state = fx.state.with_extension(format!("case{case}.json"));
        std::fs::copy(&fx.state, &state).unwrap();
        let mut c = coordinator(&fx.file, &state);
        let h = hostile(fx, plan);
        let began = Instant::now();
        let item = SignItem {
            key: fx.good,
            message: ToSign::Taproot { sighash: [case as u8; 32] },
        };
        let signed = c.sign(b"hostile", &[item]);
        let dkg = c.run_dkg_round();
        let posted = h.finish();
        prop_assert!(signed.is_err(), "a signature passed: {signed:?}");
        prop_assert!(dkg.is_err(), "a key came out: {dkg:?}");
        prop_assert_eq!(c.keys(), vec![fx.good]);
        prop_assert_eq!(c.aggregate_public_key(), Some(fx.good));
        // Bounded in time: each call ends by its own deadline.
        prop_assert!(began.elapsed() < Duration::from_secs(10), "{:?}", began.elapsed());
        // Everything the hostile signers posted was refused, dropped or
        // failed the round; nothing accumulates.
        prop_assert!(posted > 0);
        prop_assert!(
            c.rejected() + c.refused_packets() > 0,
            "the coordinator saw none of the {posted} hostile packets"
        );
        let grown = rss().saturating_sub(fx.rss_start);
        prop_assert!(grown < RSS_BOUND, "resident memory grew {grown} bytes");
        // The state file still loads, with the honest key only.
        drop(c);
        let again = coordinator(&fx.file, &state);
        prop_assert_eq!(again.keys(), vec![fx.good]);
    }
}
