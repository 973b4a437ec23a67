//! Every id a message carries, checked against the signer set and bound to
//! the envelope's sender, before any wsts state machine sees it.
//!
//! wsts trusts the ids inside packets: FIRE indexes arrays with ids nested in
//! `DkgFailure`, a signer computes with whatever key ids a nonce response
//! lists. These checks make each message say only what its sender may say:
//! a signer speaks only for itself and its own key ids; the coordinator's id
//! lists name signers of the set with exactly their key ids. What depends on
//! the round (who was asked, which nonce a signer sent) is checked by the
//! signer and coordinator wrappers on top of this.

use std::collections::BTreeSet;

use wsts::curve::scalar::Scalar;
use wsts::net::{self as w, DkgFailure, DkgStatus};

use crate::envelope::Sender;
use crate::messages::{
    Message, ToSign, MAX_CONTRACT_LEN, MAX_SIGN_ITEMS, MAX_SIGN_PAYLOAD, MAX_TEST_TEXT,
};
use crate::SignerSet;

/// The longest encrypted DKG share accepted, bytes (wsts' are ~60).
const MAX_CIPHERTEXT: usize = 256;

type Check = Result<(), String>;

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

/// The set's key ids of the signer with wsts (0-based) id `wsts_id`.
fn key_ids_of(set: &SignerSet, wsts_id: u32) -> Option<BTreeSet<u32>> {
    set.signers
        .iter()
        .find(|s| s.wsts_id() == wsts_id)
        .map(|s| s.key_ids.iter().copied().collect())
}

fn distinct<T: Ord + Copy>(v: &[T]) -> Option<BTreeSet<T>> {
    let s: BTreeSet<T> = v.iter().copied().collect();
    (s.len() == v.len()).then_some(s)
}

/// The sender's wsts (0-based) id, which its message must carry.
fn own_id(sender: Sender, claimed: u32) -> Check {
    match sender {
        Sender::Signer(id) if id.checked_sub(1) == Some(claimed) => Ok(()),
        _ => Err(format!("carries signer id {claimed}, not its sender's")),
    }
}

/// A coordinator's list of participants: distinct signers of the set, and
/// exactly their key ids.
fn participants(set: &SignerSet, signer_ids: &[u32], key_ids: &[u32]) -> Check {
    let signers = distinct(signer_ids).ok_or("repeated signer ids")?;
    ensure(!signers.is_empty(), || "no signers".into())?;
    let keys = distinct(key_ids).ok_or("repeated key ids")?;
    let mut expected = BTreeSet::new();
    for s in &signers {
        expected.extend(key_ids_of(set, *s).ok_or_else(|| format!("unknown signer id {s}"))?);
    }
    ensure(keys == expected, || {
        "key ids are not exactly the listed signers' key ids".into()
    })
}

fn signed_message(message: &[u8], t: &w::SignatureType) -> Check {
    ensure(message.len() == 32, || {
        format!("signs {} bytes, not a 32-byte digest", message.len())
    })?;
    ensure(matches!(t, w::SignatureType::Taproot(None)), || {
        format!("signature type {t:?}: only taproot key-path spends are signed")
    })
}

/// A signer's nonce response, as its own message or inside a share request.
fn nonce_response(set: &SignerSet, r: &w::NonceResponse) -> Check {
    let own =
        key_ids_of(set, r.signer_id).ok_or_else(|| format!("unknown signer id {}", r.signer_id))?;
    let listed = distinct(&r.key_ids).ok_or("repeated key ids")?;
    ensure(listed == own, || {
        format!("key ids of signer {} are not its own", r.signer_id)
    })?;
    ensure(r.nonces.len() == 1, || {
        format!("{} nonces, not one per party", r.nonces.len())
    })?;
    ensure(r.nonces.iter().all(|n| n.is_valid()), || {
        "an invalid (identity) nonce".into()
    })?;
    ensure(r.message.len() == 32, || {
        "a message that is not a digest".into()
    })
}

fn failure_ids(set: &SignerSet, f: &DkgFailure) -> Check {
    let n = set.num_signers();
    let in_set = |ids: &mut dyn Iterator<Item = u32>| {
        let bad: Vec<u32> = ids.filter(|i| *i >= n).collect();
        ensure(bad.is_empty(), || format!("names unknown signers {bad:?}"))
    };
    match f {
        DkgFailure::Threshold | DkgFailure::BadState => Ok(()),
        DkgFailure::MissingPublicShares(s)
        | DkgFailure::BadPublicShares(s)
        | DkgFailure::MissingPrivateShares(s) => in_set(&mut s.iter().copied()),
        DkgFailure::BadPrivateShares(m) => in_set(&mut m.keys().copied()),
    }
}

/// Checks `message` from `sender` against `set`.
///
/// # Errors
/// The first id that does not fit, in words for the log.
pub fn check(set: &SignerSet, sender: Sender, message: &Message) -> Check {
    let k = set.num_keys();
    match message {
        Message::DkgBegin(_) | Message::KeyStored(_) | Message::KeyAccepted(_) => Ok(()),
        Message::DkgPrivateBegin(m) => participants(set, &m.signer_ids, &m.key_ids),
        Message::DkgEndBegin(m) => participants(set, &m.signer_ids, &m.key_ids),
        Message::SignRequest(r) => {
            ensure(r.payload.len() <= MAX_SIGN_PAYLOAD, || {
                "payload too large".into()
            })?;
            ensure(
                !r.items.is_empty() && r.items.len() <= MAX_SIGN_ITEMS,
                || format!("{} items", r.items.len()),
            )?;
            ensure(
                r.items.iter().all(|i| match &i.message {
                    ToSign::Taproot { .. } => true,
                    ToSign::Test { text } => text.len() <= MAX_TEST_TEXT,
                }),
                || "test message too long".into(),
            )
        }
        Message::NonceRequest(r) => signed_message(&r.msg.message, &r.msg.signature_type),
        Message::SignatureShareRequest(r) => {
            let m = &r.msg;
            signed_message(&m.message, &m.signature_type)?;
            ensure(!m.nonce_responses.is_empty(), || {
                "no nonce responses".into()
            })?;
            let ids: Vec<u32> = m.nonce_responses.iter().map(|n| n.signer_id).collect();
            distinct(&ids).ok_or("a signer listed twice")?;
            ensure(r.nonce_envelopes.len() <= ids.len(), || {
                format!(
                    "{} embedded nonce responses for {} listed signers",
                    r.nonce_envelopes.len(),
                    ids.len()
                )
            })?;
            for n in &m.nonce_responses {
                nonce_response(set, n)?;
                ensure(
                    (n.dkg_id, n.sign_id, n.sign_iter_id) == (m.dkg_id, m.sign_id, m.sign_iter_id)
                        && n.message == m.message,
                    || {
                        format!(
                            "nonce response of signer {} is of another round",
                            n.signer_id
                        )
                    },
                )?;
            }
            Ok(())
        }
        Message::DkgPublicShares(m) => {
            own_id(sender, m.signer_id)?;
            ensure(m.comms.len() == 1, || {
                format!("{} commitments, not one", m.comms.len())
            })?;
            let (party, comm) = &m.comms[0];
            ensure(*party == m.signer_id, || {
                format!("commitment of party {party}")
            })?;
            ensure(comm.id.id == Scalar::from(m.signer_id), || {
                "the commitment's proof is for another party".into()
            })?;
            ensure(
                comm.poly.len() == usize::try_from(set.threshold).unwrap_or(0),
                || {
                    format!(
                        "a polynomial of {} terms, not {}",
                        comm.poly.len(),
                        set.threshold
                    )
                },
            )?;
            ensure(comm.verify(), || {
                "the commitment's proof does not verify".into()
            })
        }
        Message::DkgPrivateShares(m) => {
            own_id(sender, m.signer_id)?;
            ensure(m.shares.len() == 1, || {
                format!("{} share sets, not one", m.shares.len())
            })?;
            let (src, shares) = &m.shares[0];
            ensure(*src == m.signer_id, || format!("shares of party {src}"))?;
            ensure(
                shares
                    .iter()
                    .all(|(dst, c)| (1..=k).contains(dst) && c.len() <= MAX_CIPHERTEXT),
                || "a share for an unknown key id, or an oversized one".into(),
            )
        }
        Message::DkgEnd(m) => {
            own_id(sender, m.signer_id)?;
            match &m.status {
                DkgStatus::Success => Ok(()),
                DkgStatus::Failure(f) => failure_ids(set, f),
            }
        }
        Message::NonceResponse(r) => {
            own_id(sender, r.msg.signer_id)?;
            nonce_response(set, &r.msg)
        }
        Message::SignatureShareResponse(r) => {
            let m = &r.msg;
            own_id(sender, m.signer_id)?;
            ensure(m.signature_shares.len() == 1, || {
                format!("{} shares, not one per party", m.signature_shares.len())
            })?;
            let s = &m.signature_shares[0];
            ensure(s.id == m.signer_id, || format!("a share of party {}", s.id))?;
            let own = key_ids_of(set, m.signer_id).ok_or("unknown signer")?;
            ensure(distinct(&s.key_ids) == Some(own), || {
                "a share for key ids that are not the signer's".into()
            })
        }
        Message::Refusal(r) => ensure(r.rule.len() <= 1024, || "refusal text too long".into()),
        Message::Heartbeat(h) => ensure(h.keys.len() <= 64, || "too many keys".into()),
        Message::Attestation(a) => ensure(a.contract.len() <= MAX_CONTRACT_LEN, || {
            "contract name too long".into()
        }),
    }
}
