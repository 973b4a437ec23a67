//! Taproot FROST arithmetic without wsts' quadratic nonce hashing.
//!
//! wsts' v2 signer and aggregator find a round's aggregate nonce with
//! `compute::intermediate`, which hashes every listed nonce once per listed
//! party, compressing each point again every time (one field inversion per
//! point: 15 × 30 = 450 at 15 signers), and then makes one scalar
//! multiplication per party. [`aggregate_nonce`] compresses the nonces
//! once, hashes every binding value from those bytes (wsts'
//! `compute::binding_compressed`, the same hash) and makes one multi-scalar
//! multiplication — the same point. [`Aggregator`] is wsts' v2 aggregator
//! with that nonce: the same signature, and on any failure wsts' own path
//! (which names the bad shares).

use hashbrown::HashMap;
use wsts::common::{PolyCommitment, PublicNonce, SignatureShare};
use wsts::compute;
use wsts::curve::point::{Compressed, Point, G};
use wsts::curve::scalar::Scalar;
use wsts::errors::AggregatorError;
use wsts::taproot::SchnorrProof;

/// The aggregate nonce `Σ (D_i + ρ_i E_i)` of the parties `party_ids` with
/// `nonces` (one per party, in order) for `msg`, and the nonces compressed
/// (for the caller's own binding value); `None` when the lengths differ or
/// the sum is not a point.
pub fn aggregate_nonce(
    msg: &[u8],
    party_ids: &[u32],
    nonces: &[PublicNonce],
) -> Option<(Point, Vec<(Compressed, Compressed)>)> {
    let compressed: Vec<(Compressed, Compressed)> = nonces
        .iter()
        .map(|n| (n.D.compress(), n.E.compress()))
        .collect();
    let r = aggregate_nonce_compressed(msg, party_ids, nonces, &compressed)?;
    Some((r, compressed))
}

/// [`aggregate_nonce`] with the nonces' compressed encodings already known
/// (as a packet carried them: compressing a point costs a field inversion).
/// `compressed[i]` must be the encoding of `nonces[i]`'s `(D, E)`; `None`
/// when the lengths differ or the sum is not a point.
///
/// The `D_i` have coefficient one: they are added, and only the `E_i` go
/// through the multi-scalar multiplication (with the `D_i` in it too, each
/// cost a table of multiples for nothing: ≈ 30 % of the whole).
pub fn aggregate_nonce_compressed(
    msg: &[u8],
    party_ids: &[u32],
    nonces: &[PublicNonce],
    compressed: &[(Compressed, Compressed)],
) -> Option<Point> {
    if party_ids.len() != nonces.len() || nonces.is_empty() || compressed.len() != nonces.len() {
        return None;
    }
    let scalars: Vec<Scalar> = party_ids
        .iter()
        .map(|i| compute::binding_compressed(&compute::id(*i), compressed, msg))
        .collect();
    let points: Vec<Point> = nonces.iter().map(|n| n.E).collect();
    let mut r = Point::multimult(scalars, points).ok()?;
    for n in nonces {
        r += n.D;
    }
    Some(r)
}

/// wsts' v2 aggregator, with the aggregate nonce of [`aggregate_nonce`] for
/// taproot signatures; everything else is wsts'.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregator(wsts::v2::Aggregator);

impl Aggregator {
    /// The taproot signature of the shares, when it verifies.
    #[allow(non_snake_case)]
    fn fast_taproot(
        &self,
        msg: &[u8],
        nonces: &[PublicNonce],
        sig_shares: &[SignatureShare],
        merkle_root: Option<[u8; 32]>,
    ) -> Option<SchnorrProof> {
        let key = *self.0.poly.first()?;
        if nonces.len() != sig_shares.len() {
            return None;
        }
        let party_ids: Vec<u32> = sig_shares.iter().map(|s| s.id).collect();
        let (R, _) = aggregate_nonce(msg, &party_ids, nonces)?;
        // As wsts' `sign_with_tweak(.., Some(tweak))`.
        let tweak = compute::tweak(&key, merkle_root);
        let mut cx_sign = Scalar::from(1u32);
        let tweaked = if tweak != Scalar::from(0u32) {
            let k = Point::lift_x(&key.x()).ok()? + tweak * G;
            if !k.has_even_y() {
                cx_sign = -cx_sign;
            }
            k
        } else {
            key
        };
        let c = compute::challenge(&tweaked, &R, msg);
        let mut z = Scalar::from(0u32);
        for s in sig_shares {
            z += s.z_i;
        }
        z += cx_sign * c * tweak;
        let proof = SchnorrProof::new(&wsts::common::Signature { R, z });
        proof.verify(&tweaked.x(), msg).then_some(proof)
    }
}

impl wsts::traits::Aggregator for Aggregator {
    fn new(num_keys: u32, threshold: u32) -> Self {
        Aggregator(wsts::v2::Aggregator::new(num_keys, threshold))
    }

    fn init(&mut self, poly_comms: &HashMap<u32, PolyCommitment>) -> Result<(), AggregatorError> {
        self.0.init(poly_comms)
    }

    fn sign(
        &mut self,
        msg: &[u8],
        nonces: &[PublicNonce],
        sig_shares: &[SignatureShare],
        key_ids: &[u32],
    ) -> Result<wsts::common::Signature, AggregatorError> {
        self.0.sign(msg, nonces, sig_shares, key_ids)
    }

    fn sign_schnorr(
        &mut self,
        msg: &[u8],
        nonces: &[PublicNonce],
        sig_shares: &[SignatureShare],
        key_ids: &[u32],
    ) -> Result<SchnorrProof, AggregatorError> {
        self.0.sign_schnorr(msg, nonces, sig_shares, key_ids)
    }

    fn sign_taproot(
        &mut self,
        msg: &[u8],
        nonces: &[PublicNonce],
        sig_shares: &[SignatureShare],
        key_ids: &[u32],
        merkle_root: Option<[u8; 32]>,
    ) -> Result<SchnorrProof, AggregatorError> {
        match self.fast_taproot(msg, nonces, sig_shares, merkle_root) {
            Some(proof) => Ok(proof),
            // Not a valid signature (or an odd shape): wsts' path, which
            // finds and names the bad shares.
            None => self
                .0
                .sign_taproot(msg, nonces, sig_shares, key_ids, merkle_root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsts::traits::Aggregator as _;
    use wsts::traits::Signer as _;

    #[test]
    fn the_aggregate_nonce_and_signature_are_wsts_own() {
        let mut rng = wsts::util::create_rng();
        let (n, k, t) = (5u32, 2u32, 7u32);
        let mut parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| {
                let ids: Vec<u32> = (i * k + 1..=i * k + k).collect();
                wsts::v2::Party::new(i, &ids, n, n * k, t, &mut rng)
            })
            .collect();
        let comms = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
        for root in [None, Some([3u8; 32])] {
            let msg = [9u8; 32];
            let party_ids: Vec<u32> = parties.iter().map(|p| p.party_id).collect();
            let key_ids: Vec<u32> = parties.iter().flat_map(|p| p.key_ids.clone()).collect();
            let nonces: Vec<PublicNonce> =
                parties.iter_mut().map(|p| p.gen_nonce(&mut rng)).collect();
            let (r, compressed) = aggregate_nonce(&msg, &party_ids, &nonces).unwrap();
            assert_eq!(r, compute::intermediate(&msg, &party_ids, &nonces).1);
            assert_eq!(
                aggregate_nonce_compressed(&msg, &party_ids, &nonces, &compressed),
                Some(r)
            );
            assert_eq!(
                aggregate_nonce_compressed(&msg, &party_ids, &nonces, &compressed[1..]),
                None
            );
            let shares: Vec<SignatureShare> = parties
                .iter()
                .flat_map(|p| p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, root))
                .collect();
            let mut ours = <Aggregator as wsts::traits::Aggregator>::new(n * k, t);
            ours.init(&comms).unwrap();
            let fast = ours.fast_taproot(&msg, &nonces, &shares, root).unwrap();
            let mut theirs = wsts::v2::Aggregator::new(n * k, t);
            theirs.init(&comms).unwrap();
            let slow = theirs
                .sign_taproot(&msg, &nonces, &shares, &key_ids, root)
                .unwrap();
            assert_eq!(fast.to_bytes(), slow.to_bytes());
            // A bad share: no fast signature, and wsts' error naming it.
            let mut bad = shares.clone();
            bad[2].z_i += Scalar::from(1u32);
            assert!(ours.fast_taproot(&msg, &nonces, &bad, root).is_none());
            let e = ours
                .sign_taproot(&msg, &nonces, &bad, &key_ids, root)
                .unwrap_err();
            assert_eq!(
                e,
                theirs
                    .sign_taproot(&msg, &nonces, &bad, &key_ids, root)
                    .unwrap_err()
            );
        }
    }
}
