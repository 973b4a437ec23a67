//! What the signer tests share: keys, a three-signer set, signers holding a
//! key from an in-memory DKG, and the coordinator's requests.
#![allow(dead_code)] // each test file uses its own part

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::{
    Codec, Domain, Envelope, Sender, ShareRequest, SignItem, SignRequest, SignerInfo, SignerSet,
    ToSign,
};
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

/// The coordinator's message key.
pub(crate) fn coordinator_key() -> PublicKey {
    sk(0xc0, 0).public_key(&Secp256k1::new())
}

/// The codec of a test peg with signer set `set`.
pub(crate) fn codec_of(set: &SignerSet) -> Codec {
    let c = coordinator_key();
    Codec::with_domain(Domain::new("test", "", set, &c), set.clone(), c)
}

/// The codec of the three-signer test peg.
pub(crate) fn codec() -> Codec {
    codec_of(&set())
}

/// A signer core of `set` with the test peg's codec installed.
pub(crate) fn core_of(
    id: u32,
    set: &SignerSet,
    path: std::path::PathBuf,
    allow_rotation: bool,
) -> Result<SignerCore, frost_signer::SignerError> {
    let mut c = SignerCore::new(id, set, &sk(0x5e, id - 1), path, allow_rotation)?;
    c.set_codec(codec_of(set))?;
    Ok(c)
}

/// A nonce response sealed by the signer it names (signer id + 1), under
/// `codec`: what that signer posts.
pub(crate) fn seal_nonce(codec: &Codec, key: PublicKey, n: &w::NonceResponse) -> Vec<u8> {
    codec
        .seal(
            Sender::Signer(n.signer_id + 1),
            &sk(0x5e, n.signer_id),
            &Message::NonceResponse(Keyed {
                key,
                msg: n.clone(),
            }),
        )
        .unwrap()
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
            core_of(id, &set, path, false).unwrap()
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

/// A share request listing `nonces`, each embedded as sealed by the signer
/// it is listed under (so every entry is "that signer's own").
pub(crate) fn share_request(key: PublicKey, nonces: Vec<w::NonceResponse>) -> Envelope {
    share_request_under(&codec(), key, nonces)
}

/// [`share_request`] with the envelopes sealed under `codec`.
pub(crate) fn share_request_under(
    codec: &Codec,
    key: PublicKey,
    nonces: Vec<w::NonceResponse>,
) -> Envelope {
    let sealed = nonces.iter().map(|n| seal_nonce(codec, key, n)).collect();
    share_request_with(key, nonces, sealed)
}

/// A share request listing `nonces` and embedding `nonce_envelopes` as given.
pub(crate) fn share_request_with(
    key: PublicKey,
    nonces: Vec<w::NonceResponse>,
    nonce_envelopes: Vec<Vec<u8>>,
) -> Envelope {
    let n = &nonces[0];
    from_coordinator(Message::SignatureShareRequest(ShareRequest {
        key,
        nonce_envelopes,
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
