//! Benchmark: wsts' own `Packet::verify` per packet kind, beside what our
//! envelope costs for the same message — `Codec::open` whole (header,
//! signature over the whole body, decode, id checks) and its signature
//! check alone (a packet with a flipped body bit, refused right after the
//! ECDSA verification) — for 15×1 and 15×10 signer sets (signers × keys).
//! Each figure is the fastest of 25 batches, robust to other load.
//!
//! `cargo run --release -p frost-coordinator --example packet_verify_bench`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    missing_docs
)]

use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use frost_coordinator::{SignerFile, SignerInfo, SignerSet};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{scalar, Codec, EnvelopeError, Sender};
use wsts::common::{PublicNonce, SignatureShare};
use wsts::curve::ecdsa;
use wsts::curve::point::G;
use wsts::curve::scalar::Scalar;
use wsts::net::{Packet, Signable as _};

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

fn file(n: u32, k: u32) -> SignerFile {
    let secp = Secp256k1::new();
    SignerFile {
        relay_url: String::new(),
        coordinator_public_key: key(0xc0, 0).public_key(&secp),
        state_dir: None,
        network: Some("regtest".into()),
        contract: Some("ST1.sbtc".into()),
        magic_bytes: None,
        policy: Default::default(),
        set: SignerSet {
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
        },
    }
}

/// Time of one `f`: the fastest of 25 batches of about 10 ms each (the
/// minimum, because other builds share these cores).
fn time(mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..25 {
        let start = Instant::now();
        let mut runs = 0u32;
        while runs < 5 || start.elapsed() < Duration::from_millis(10) {
            f();
            runs += 1;
        }
        best = best.min(start.elapsed() / runs);
    }
    best
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// One message of every wsts kind, as a real round of a set of `n` signers
/// of `k` keys each would carry it, from signer 1 (wsts id 0) or the
/// coordinator.
fn messages(f: &SignerFile) -> Vec<(w::Message, Message)> {
    let set = &f.set;
    let n = set.num_signers();
    let nk = set.num_keys();
    let t = set.threshold;
    let key = key(0x77, 0).public_key(&Secp256k1::new());
    let mut rng = wsts::util::create_rng();
    let own: Vec<u32> = set.signers[0].key_ids.clone();
    let all_signers: Vec<u32> = (0..n).collect();
    let all_keys: Vec<u32> = (1..=nk).collect();
    let party = wsts::v2::Party::new(0, &own, n, nk, t, &mut rng);
    let comm = party.get_poly_commitment(&mut rng).unwrap();
    let nonce = |rng: &mut _| PublicNonce {
        D: Scalar::random(rng) * G,
        E: Scalar::random(rng) * G,
    };
    let digest = vec![9u8; 32];
    let nonce_response = |signer: u32, rng: &mut _| w::NonceResponse {
        dkg_id: 1,
        sign_id: 2,
        sign_iter_id: 1,
        signer_id: signer,
        key_ids: set.signers[signer as usize].key_ids.clone(),
        nonces: vec![nonce(rng)],
        message: digest.clone(),
    };
    let ty = w::SignatureType::Taproot(None);
    let begin = w::DkgBegin { dkg_id: 1 };
    let private_begin = w::DkgPrivateBegin {
        dkg_id: 1,
        signer_ids: all_signers.clone(),
        key_ids: all_keys.clone(),
    };
    let end_begin = w::DkgEndBegin {
        dkg_id: 1,
        signer_ids: all_signers,
        key_ids: all_keys.clone(),
    };
    let public = w::DkgPublicShares {
        dkg_id: 1,
        signer_id: 0,
        comms: vec![(0, comm)],
    };
    let private = w::DkgPrivateShares {
        dkg_id: 1,
        signer_id: 0,
        // wsts' ciphertexts are 60 bytes (nonce, share, tag).
        shares: vec![(0, all_keys.iter().map(|k| (*k, vec![5u8; 60])).collect())],
    };
    let end = w::DkgEnd {
        dkg_id: 1,
        signer_id: 0,
        status: w::DkgStatus::Success,
    };
    let nonce_request = w::NonceRequest {
        dkg_id: 1,
        sign_id: 2,
        sign_iter_id: 1,
        message: digest.clone(),
        signature_type: ty,
    };
    let nonce_resp = nonce_response(0, &mut rng);
    let share_request = w::SignatureShareRequest {
        dkg_id: 1,
        sign_id: 2,
        sign_iter_id: 1,
        nonce_responses: (0..n).map(|s| nonce_response(s, &mut rng)).collect(),
        message: digest.clone(),
        signature_type: ty,
    };
    let share_response = w::SignatureShareResponse {
        dkg_id: 1,
        sign_id: 2,
        sign_iter_id: 1,
        signer_id: 0,
        signature_shares: vec![SignatureShare {
            id: 0,
            z_i: Scalar::random(&mut rng),
            key_ids: own,
        }],
    };
    let keyed = |msg| Keyed { key, msg };
    vec![
        (
            w::Message::DkgBegin(begin.clone()),
            Message::DkgBegin(begin),
        ),
        (
            w::Message::DkgPrivateBegin(private_begin.clone()),
            Message::DkgPrivateBegin(private_begin),
        ),
        (
            w::Message::DkgEndBegin(end_begin.clone()),
            Message::DkgEndBegin(end_begin),
        ),
        (
            w::Message::DkgPublicShares(public.clone()),
            Message::DkgPublicShares(public),
        ),
        (
            w::Message::DkgPrivateShares(private.clone()),
            Message::DkgPrivateShares(private),
        ),
        (w::Message::DkgEnd(end.clone()), Message::DkgEnd(end)),
        (
            w::Message::NonceRequest(nonce_request.clone()),
            Message::NonceRequest(keyed(nonce_request)),
        ),
        (
            w::Message::NonceResponse(nonce_resp.clone()),
            Message::NonceResponse(Keyed {
                key,
                msg: nonce_resp,
            }),
        ),
        (
            w::Message::SignatureShareRequest(share_request.clone()),
            // Without the embedded sealed nonce responses (a signer opens
            // those separately, one `NonceResponse` open each).
            Message::SignatureShareRequest(frost_net::ShareRequest {
                key,
                msg: share_request,
                nonce_envelopes: vec![],
            }),
        ),
        (
            w::Message::SignatureShareResponse(share_response.clone()),
            Message::SignatureShareResponse(Keyed {
                key,
                msg: share_response,
            }),
        ),
    ]
}

fn main() {
    let ctx = time(|| {
        std::hint::black_box(Secp256k1::verification_only());
    });
    println!("a libsecp256k1 verification context, made: {} µs", us(ctx));
    for (n, k) in [(15u32, 1u32), (15, 10)] {
        let f = file(n, k);
        let codec = Codec::new(&f);
        let public_keys = f.set.wsts_public_keys().unwrap();
        let ckey = key(0xc0, 0);
        let coordinator = ecdsa::PublicKey::new(&scalar(&ckey)).unwrap();
        println!("\n{n}×{k} (threshold {})", f.set.threshold);
        println!(
            "| kind | body bytes | wsts `Packet::verify` µs | envelope signature check µs | `Codec::open` (verify, decode, id checks) µs |"
        );
        println!("|---|---|---|---|---|");
        for (wm, m) in messages(&f) {
            let kind = m.kind();
            let (sender, sk) = if kind.from_coordinator() {
                (Sender::Coordinator, ckey)
            } else {
                (Sender::Signer(1), key(0x5e, 0))
            };
            let packet = Packet {
                sig: wm.sign(&scalar(&sk)).unwrap(),
                msg: wm,
            };
            assert!(packet.verify(&public_keys, &coordinator), "{kind:?}");
            let sealed = codec.seal(sender, &sk, &m).unwrap();
            codec.open(&sealed).unwrap();
            let mut flipped = sealed.clone();
            let mid = frost_net::envelope::HEADER_LEN + (sealed.len() - 78) / 2;
            flipped[mid] ^= 1;
            assert!(matches!(
                codec.open(&flipped),
                Err(EnvelopeError::BadSignature { .. })
            ));
            let wsts_verify = time(|| {
                assert!(packet.verify(&public_keys, &coordinator));
            });
            let sig_only = time(|| {
                assert!(codec.open(&flipped).is_err());
            });
            let open = time(|| {
                assert!(codec.open(&sealed).is_ok());
            });
            println!(
                "| {kind:?} | {} | {} | {} | {} |",
                sealed.len() - 78,
                us(wsts_verify),
                us(sig_only),
                us(open)
            );
        }
    }
}
