//! What the signer tests share: keys, a three-signer set, signers holding a
//! key from an in-memory DKG, and the coordinator's requests.
#![allow(dead_code)] // each test file uses its own part

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{Envelope, Sender, SignItem, SignRequest, SignerInfo, SignerSet, ToSign};
use frost_signer::{KeyEntry, KeyHistory, SignerCore};

pub(crate) fn sk(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

pub(crate) fn set() -> SignerSet {
    let secp = Secp256k1::new();
    SignerSet {
        threshold: 2,
        dkg_threshold: None,
        signers: (0..3)
            .map(|i| SignerInfo {
                id: i + 1,
                public_key: sk(0x5e, i).public_key(&secp),
                key_ids: vec![i + 1],
                private_key: None,
            })
            .collect(),
    }
}

/// A DKG run in memory with wsts' helper; every signer's state file written,
/// its key `accepted` by the coordinator or still pending.
pub(crate) fn keyed_cores(dir: &std::path::Path, accepted: bool) -> (Vec<SignerCore>, PublicKey) {
    let set = set();
    let mut rng = wsts::util::create_rng();
    let mut parties: Vec<wsts::v2::Party> = (0..3u32)
        .map(|i| wsts::v2::Party::new(i, &[i + 1], 3, 3, 2, &mut rng))
        .collect();
    let comms = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
    let comms: Vec<_> = comms.into_iter().collect();
    let mut key = None;
    let cores = parties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = u32::try_from(i).unwrap() + 1;
            let mut entry = KeyEntry::from_dkg(1, id, p, comms.clone(), &set).unwrap();
            entry.accepted = accepted;
            key = Some(entry.aggregate_key);
            let mut h = KeyHistory::empty(id);
            h.keys.push(entry);
            let path = dir.join(format!("s{id}.json"));
            h.save(&path).unwrap();
            SignerCore::new(id, &set, &sk(0x5e, id - 1), path, false).unwrap()
        })
        .collect();
    (cores, key.unwrap())
}

pub(crate) fn from_coordinator(message: Message) -> Envelope {
    Envelope {
        sender: Sender::Coordinator,
        message,
    }
}

pub(crate) fn sign_request(key: PublicKey, sighash: [u8; 32]) -> Envelope {
    from_coordinator(Message::SignRequest(SignRequest {
        id: 1,
        payload: vec![],
        items: vec![SignItem {
            key,
            message: ToSign::Taproot { sighash },
        }],
    }))
}

pub(crate) fn nonce_request(
    key: PublicKey,
    sign_id: u64,
    iter: u64,
    sighash: [u8; 32],
) -> Envelope {
    from_coordinator(Message::NonceRequest(Keyed {
        key,
        msg: w::NonceRequest {
            dkg_id: 1,
            sign_id,
            sign_iter_id: iter,
            message: sighash.to_vec(),
            signature_type: w::SignatureType::Taproot(None),
        },
    }))
}

pub(crate) fn share_request(key: PublicKey, nonces: Vec<w::NonceResponse>) -> Envelope {
    let n = &nonces[0];
    from_coordinator(Message::SignatureShareRequest(Keyed {
        key,
        msg: w::SignatureShareRequest {
            dkg_id: n.dkg_id,
            sign_id: n.sign_id,
            sign_iter_id: n.sign_iter_id,
            message: n.message.clone(),
            nonce_responses: nonces.clone(),
            signature_type: w::SignatureType::Taproot(None),
        },
    }))
}

pub(crate) fn nonce_of(out: &[Message]) -> w::NonceResponse {
    match out {
        [Message::NonceResponse(r)] => r.msg.clone(),
        other => panic!("expected one nonce response, got {other:?}"),
    }
}

pub(crate) fn is_share(out: &[Message]) -> bool {
    matches!(out, [Message::SignatureShareResponse(_)])
}
