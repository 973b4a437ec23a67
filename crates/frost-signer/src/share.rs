//! A signer's taproot signature share, computed as wsts' `v2::Party`
//! computes it but without its quadratic cost.
//!
//! wsts' `sign_with_tweak` finds the aggregate nonce with
//! `compute::intermediate`, which hashes every listed nonce once per listed
//! party — compressing each point again every time, one field inversion per
//! point: 15 × 30 = 450 compressions in a 15-signer round — and then makes
//! one scalar multiplication per party. That was most of a signer's CPU per
//! share (and a 15×1 round runs 15 signers). Here the aggregate nonce is
//! [`frost_net::taproot::aggregate_nonce`] (the nonces compressed once, one
//! multi-scalar multiplication) and the own binding value is hashed from the
//! same compressed bytes. The share is the same scalar: the unit tests below
//! compare the two on random keys and nonces.

use wsts::common::{PublicNonce, SignatureShare};
use wsts::compute;
use wsts::curve::point::{Compressed, Point, G};
use wsts::curve::scalar::Scalar;
use wsts::traits::Signer as _;

/// The taproot signature share of `party` for `msg`, signed by the parties
/// `party_ids` with `key_ids` and `nonces` (one nonce per party, in the
/// listed order; `compressed` their encodings, as the share request carried
/// them), for the key-path tweak with `merkle_root`: equal to
/// `party.sign_taproot(..)`. Inputs that do not fit that shape go to wsts.
pub(crate) fn sign_taproot(
    party: &wsts::v2::Party,
    msg: &[u8],
    party_ids: &[u32],
    key_ids: &[u32],
    nonces: &[PublicNonce],
    compressed: &[(Compressed, Compressed)],
    merkle_root: Option<[u8; 32]>,
) -> Vec<SignatureShare> {
    match share(
        party,
        msg,
        party_ids,
        key_ids,
        nonces,
        compressed,
        merkle_root,
    ) {
        Some(s) => vec![s],
        None => party.sign_taproot(msg, party_ids, key_ids, nonces, merkle_root),
    }
}

#[allow(non_snake_case)]
fn share(
    party: &wsts::v2::Party,
    msg: &[u8],
    party_ids: &[u32],
    key_ids: &[u32],
    nonces: &[PublicNonce],
    compressed: &[(Compressed, Compressed)],
    merkle_root: Option<[u8; 32]>,
) -> Option<SignatureShare> {
    // The private values wsts keeps inside the party.
    let state = party.save();
    let [(_, own)] = state.parties.as_slice() else {
        return None;
    };
    let group_key = state.group_key;

    // As `sign_with_tweak(.., Some(tweak))`.
    let tweak = compute::tweak(&group_key, merkle_root);
    let mut cx_sign = Scalar::from(1u32);
    let tweaked_public_key = if tweak != Scalar::from(0u32) {
        let key = Point::lift_x(&group_key.x()).ok()? + tweak * G;
        if key.has_even_y() ^ group_key.has_even_y() {
            cx_sign = -cx_sign;
        }
        key
    } else {
        if !group_key.has_even_y() {
            cx_sign = -cx_sign;
        }
        group_key
    };

    // R = Σ (D_i + ρ_i E_i), each ρ_i over the nonces as the request
    // carried them compressed.
    let R = frost_net::taproot::aggregate_nonce_compressed(msg, party_ids, nonces, compressed)?;

    let c = compute::challenge(&tweaked_public_key, &R, msg);
    let rho = compute::binding_compressed(&compute::id(party.party_id), compressed, msg);
    let mut r = own.nonce.d + own.nonce.e * rho;
    if !R.has_even_y() {
        r = -r;
    }
    let mut cx = Scalar::from(0u32);
    for key_id in &party.key_ids {
        let private = own.private_keys.iter().find(|(k, _)| k == key_id)?.1;
        cx += c * private * compute::lambda(*key_id, key_ids);
    }
    cx = cx_sign * cx;
    Some(SignatureShare {
        id: party.party_id,
        z_i: r + cx,
        key_ids: party.key_ids.clone(),
    })
}

/// The nonces' encodings, as a share request carries them (tests).
#[cfg(test)]
fn compressed_of(nonces: &[PublicNonce]) -> Vec<(Compressed, Compressed)> {
    nonces
        .iter()
        .map(|n| (n.D.compress(), n.E.compress()))
        .collect()
}

#[cfg(test)]
#[path = "redteam_share.rs"]
mod redteam_share;

#[cfg(test)]
mod tests {
    use super::*;
    use wsts::common::Nonce;
    use wsts::traits::Aggregator as _;

    /// A DKG among `n` parties with `k` keys each, as wsts' own helpers run
    /// it; then, for random messages and signer subsets, the share here is
    /// wsts' share, and the shares aggregate to a valid taproot signature.
    fn same_shares_as_wsts(n: u32, k: u32, threshold: u32) {
        let mut rng = wsts::util::create_rng();
        let total = n * k;
        let mut parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| {
                let ids: Vec<u32> = (i * k + 1..=i * k + k).collect();
                wsts::v2::Party::new(i, &ids, n, total, threshold, &mut rng)
            })
            .collect();
        let comms = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
        // Sixteen rounds: both parities of the aggregate nonce and of the
        // tweaked key come up (each is a coin flip per round).
        let roots = (0..16u8).map(|i| (i % 3 == 1).then_some([i; 32]));
        for (round, root) in roots.enumerate() {
            let msg = [u8::try_from(round).unwrap(); 32];
            // Every party but one (the first round: all of them).
            let signers: Vec<&mut wsts::v2::Party> = parties
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| round == 0 || *i != round)
                .map(|(_, p)| p)
                .collect();
            let party_ids: Vec<u32> = signers.iter().map(|p| p.party_id).collect();
            let key_ids: Vec<u32> = signers.iter().flat_map(|p| p.key_ids.clone()).collect();
            let nonces: Vec<PublicNonce> =
                signers.into_iter().map(|p| p.gen_nonce(&mut rng)).collect();
            let mut shares = vec![];
            for p in parties.iter().filter(|p| party_ids.contains(&p.party_id)) {
                let ours = share(
                    p,
                    &msg,
                    &party_ids,
                    &key_ids,
                    &nonces,
                    &compressed_of(&nonces),
                    root,
                )
                .expect("this shape is computed here, not by wsts");
                let theirs = p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, root);
                assert_eq!(vec![ours], theirs, "party {}, round {round}", p.party_id);
                shares.extend(theirs);
            }
            let mut agg = wsts::v2::Aggregator::new(total, threshold);
            agg.init(&comms).unwrap();
            agg.sign_taproot(&msg, &nonces, &shares, &key_ids, root)
                .unwrap();
        }
    }

    #[test]
    fn shares_equal_wsts_shares_one_key_each() {
        same_shares_as_wsts(5, 1, 3);
    }

    #[test]
    fn shares_equal_wsts_shares_several_keys_each() {
        same_shares_as_wsts(4, 3, 8);
    }

    /// Shapes this does not handle are wsts' to sign, unchanged.
    #[test]
    fn other_shapes_fall_back_to_wsts() {
        let mut rng = wsts::util::create_rng();
        let mut parties: Vec<wsts::v2::Party> = (0..3)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], 3, 3, 2, &mut rng))
            .collect();
        wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
        let nonce: PublicNonce = Nonce::random(&mut rng).into();
        let p = &parties[0];
        // Two parties listed, one nonce.
        assert!(share(
            p,
            &[1; 32],
            &[0, 1],
            &[1, 2],
            std::slice::from_ref(&nonce),
            &compressed_of(std::slice::from_ref(&nonce)),
            None
        )
        .is_none());
        let ours = sign_taproot(
            p,
            &[1; 32],
            &[0, 1],
            &[1, 2],
            std::slice::from_ref(&nonce),
            &compressed_of(std::slice::from_ref(&nonce)),
            None,
        );
        let theirs = p.sign_taproot(&[1; 32], &[0, 1], &[1, 2], &[nonce], None);
        assert_eq!(ours, theirs);
    }
}
