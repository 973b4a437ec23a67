//! The fixture shared by the binary-body and `open_for_signer` tests: the
//! message keys of a 15-signer set (one key each), its codec, and a share
//! request embedding the sealed nonce responses of the signers it lists.
//!
//! Each test binary compiles its own copy and uses only part of it, hence
//! the `dead_code` allowances.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Codec, Domain, Sender, ShareRequest, SignerInfo, SignerSet};
use wsts::common::{Nonce, PublicNonce};

/// The message key of signer `i` (0: the coordinator).
pub(crate) fn sk(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i + 1; 32]).unwrap()
}

/// The public key of `sk(i)`.
pub(crate) fn pk(i: u8) -> PublicKey {
    sk(i).public_key(&Secp256k1::new())
}

/// A 15-signer set with one key each (signer `i`'s message key sk(i)).
fn fifteen() -> SignerSet {
    SignerSet {
        threshold: 10,
        dkg_threshold: None,
        signers: (1..=15u8)
            .map(|i| SignerInfo {
                id: u32::from(i),
                public_key: pk(i),
                key_ids: vec![u32::from(i)],
                private_key: None,
            })
            .collect(),
    }
}

/// The codec of the 15-signer set, the coordinator's key `pk(0)`.
pub(crate) fn codec() -> Codec {
    let set = fifteen();
    Codec::with_domain(Domain::new("regtest", "ST1.sbtc", &set, &pk(0)), set, pk(0))
}

/// A fresh random public nonce.
fn nonce() -> PublicNonce {
    Nonce::random(&mut wsts::util::create_rng()).into()
}

/// The wsts ids (0..15) of every signer of the set.
#[allow(dead_code)]
pub(crate) fn every_signer() -> Vec<u32> {
    (0..15).collect()
}

/// A share request listing the (wsts) signers `listed`, each with its
/// sealed nonce response embedded.
pub(crate) fn share_request(c: &Codec, listed: &[u32]) -> ShareRequest {
    let key = pk(99);
    let responses: Vec<w::NonceResponse> = listed
        .iter()
        .map(|&i| w::NonceResponse {
            dkg_id: 1,
            sign_id: 7,
            sign_iter_id: 0,
            signer_id: i,
            key_ids: vec![i + 1],
            nonces: vec![nonce()],
            message: vec![0xab; 32],
        })
        .collect();
    let nonce_envelopes = responses
        .iter()
        .map(|n| {
            let id = n.signer_id + 1;
            c.seal(
                Sender::Signer(id),
                &sk(u8::try_from(id).unwrap()),
                &Message::NonceResponse(Keyed {
                    key,
                    msg: n.clone(),
                }),
            )
            .unwrap()
        })
        .collect();
    ShareRequest {
        key,
        msg: w::SignatureShareRequest {
            dkg_id: 1,
            sign_id: 7,
            sign_iter_id: 0,
            nonce_responses: responses,
            message: vec![0xab; 32],
            signature_type: w::SignatureType::Taproot(None),
        },
        nonce_envelopes,
    }
}
