//! CPU of the parts of a 15×1 signing round that issue #16 cut, old way
//! beside new, in one process (so the load of a shared machine hits both
//! alike): per signer, opening the share request and checking the 14 other
//! embedded nonce responses (JSON bodies, each embedded envelope opened and
//! decoded, against binary bodies compared byte for byte); and the aggregate
//! nonce each signer and the coordinator compute (wsts'
//! `compute::intermediate` against `frost_net::taproot::aggregate_nonce`).
//! Each figure is the fastest of 400 calls (on a loaded machine a single
//! call is the likeliest to run uninterrupted).
//!
//! `cargo run --release -p frost-net --example share_phase_cpu`
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{ecdsa, Message as SecpMessage, PublicKey, Secp256k1, SecretKey};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, Domain, Sender, ShareRequest, SignerInfo, SignerSet};
use wsts::common::{Nonce, PublicNonce};

fn sk(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i + 1; 32]).unwrap()
}

fn fastest(mut f: impl FnMut()) -> Duration {
    (0..400)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// The version 1 envelope of a JSON body (as sealed before this change).
fn seal_json(domain: &[u8; 32], kind: u8, sender: u32, key: &SecretKey, body: &[u8]) -> Vec<u8> {
    let mut out = b"SBTF\x01".to_vec();
    out.push(kind);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    let mut e = sha256::Hash::engine();
    e.input(domain);
    e.input(&out);
    e.input(body);
    let d = SecpMessage::from_digest(sha256::Hash::from_engine(e).to_byte_array());
    let sig = Secp256k1::new().sign_ecdsa(&d, key);
    out.extend_from_slice(body);
    out.extend_from_slice(&sig.serialize_compact());
    out
}

/// Opens a version 1 envelope as the old `Codec::open` did: signature over
/// the whole packet, then the JSON body decoded.
fn open_json<T: serde::de::DeserializeOwned>(
    secp: &Secp256k1<bitcoin::secp256k1::All>,
    domain: &[u8; 32],
    key: &PublicKey,
    bytes: &[u8],
) -> T {
    let body = &bytes[14..bytes.len() - 64];
    let mut e = sha256::Hash::engine();
    e.input(domain);
    e.input(&bytes[..14]);
    e.input(body);
    let d = SecpMessage::from_digest(sha256::Hash::from_engine(e).to_byte_array());
    let sig = ecdsa::Signature::from_compact(&bytes[bytes.len() - 64..]).unwrap();
    secp.verify_ecdsa(&d, &sig, key).unwrap();
    serde_json::from_slice(body).unwrap()
}

fn main() {
    let secp = Secp256k1::new();
    let set = SignerSet {
        threshold: 10,
        dkg_threshold: None,
        signers: (1..=15u8)
            .map(|i| SignerInfo {
                id: u32::from(i),
                public_key: sk(i).public_key(&secp),
                key_ids: vec![u32::from(i)],
                private_key: None,
            })
            .collect(),
    };
    let coordinator = sk(0).public_key(&secp);
    let codec = Codec::with_domain(
        Domain::new("", "", &set, &coordinator),
        set.clone(),
        coordinator,
    );
    let domain = [7u8; 32];
    let key = sk(99).public_key(&secp);
    let mut rng = wsts::util::create_rng();
    let responses: Vec<w::NonceResponse> = (0..15u32)
        .map(|i| w::NonceResponse {
            dkg_id: 1,
            sign_id: 7,
            sign_iter_id: 0,
            signer_id: i,
            key_ids: vec![i + 1],
            nonces: vec![Nonce::random(&mut rng).into()],
            message: vec![0xab; 32],
        })
        .collect();
    let keyed = |n: &w::NonceResponse| Keyed {
        key,
        msg: n.clone(),
    };
    let signer_key = |n: &w::NonceResponse| sk(u8::try_from(n.signer_id + 1).unwrap());
    let new_envelopes: Vec<Vec<u8>> = responses
        .iter()
        .map(|n| {
            codec
                .seal(
                    Sender::Signer(n.signer_id + 1),
                    &signer_key(n),
                    &Message::NonceResponse(keyed(n)),
                )
                .unwrap()
        })
        .collect();
    let old_envelopes: Vec<Vec<u8>> = responses
        .iter()
        .map(|n| {
            let body = serde_json::to_vec(&keyed(n)).unwrap();
            seal_json(&domain, 11, n.signer_id + 1, &signer_key(n), &body)
        })
        .collect();
    let request = |envelopes: Vec<Vec<u8>>| ShareRequest {
        key,
        msg: w::SignatureShareRequest {
            dkg_id: 1,
            sign_id: 7,
            sign_iter_id: 0,
            nonce_responses: responses.clone(),
            message: vec![0xab; 32],
            signature_type: w::SignatureType::Taproot(None),
        },
        nonce_envelopes: envelopes,
    };
    let new_sealed = codec
        .seal(
            Sender::Coordinator,
            &sk(0),
            &Message::SignatureShareRequest(request(new_envelopes)),
        )
        .unwrap();
    let old_body = serde_json::to_vec(&request(old_envelopes)).unwrap();
    let old_sealed = seal_json(&domain, 6, 0, &sk(0), &old_body);

    // Signer 1 (wsts id 0): open the request, check the other 14.
    let old = fastest(|| {
        let r: ShareRequest = open_json(&secp, &domain, &coordinator, &old_sealed);
        for (i, e) in r.nonce_envelopes.iter().enumerate().skip(1) {
            let n: Keyed<w::NonceResponse> =
                open_json(&secp, &domain, &set.signers[i].public_key, e);
            assert!(n.msg.nonces == r.msg.nonce_responses[i].nonces);
        }
    });
    let new = fastest(|| {
        let Message::SignatureShareRequest(r) = codec.open(&new_sealed).unwrap().message else {
            unreachable!()
        };
        codec.check_listed_nonces(&r, 0).unwrap();
    });
    println!(
        "| 15×1, per signer | JSON bodies, embedded envelopes decoded | binary bodies, compared | "
    );
    println!("|---|---|---|");
    println!(
        "| share request: open and check 14 embedded nonce responses | {:.0} µs ({} bytes) | {:.0} µs ({} bytes) |",
        old.as_secs_f64() * 1e6,
        old_sealed.len(),
        new.as_secs_f64() * 1e6,
        new_sealed.len()
    );

    let ids: Vec<u32> = (0..15).collect();
    let nonces: Vec<PublicNonce> = responses.iter().map(|n| n.nonces[0].clone()).collect();
    let msg = [0xab; 32];
    let old = fastest(|| {
        let _ = wsts::compute::intermediate(&msg, &ids, &nonces);
    });
    let new = fastest(|| {
        let _ = frost_net::taproot::aggregate_nonce(&msg, &ids, &nonces).unwrap();
    });
    println!(
        "| aggregate nonce (each signer's share; the coordinator's signature) | {:.0} µs (`compute::intermediate`) | {:.0} µs (`taproot::aggregate_nonce`) |",
        old.as_secs_f64() * 1e6,
        new.as_secs_f64() * 1e6
    );
}
