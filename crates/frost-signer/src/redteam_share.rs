//! Red team (issue #16): our taproot share against wsts' `sign_taproot` on
//! the shapes a hostile coordinator can list — ids unsorted, a party not
//! listed, key ids out of order or repeated or foreign, more nonces than
//! parties, several keys per signer, both parities of R and of the tweaked
//! key, no merkle root and a merkle root. A share that differs from wsts'
//! for any input is a leak of the key share (two different `z` for one
//! nonce), so every shape is compared, not only the honest one.

use super::{compressed_of, share, sign_taproot};
use wsts::common::PublicNonce;
use wsts::traits::Signer as _;

/// A small deterministic generator for the shapes (the keys and nonces
/// come from wsts' own RNG).
struct Shapes(u64);

impl Shapes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn parties(n: u32, k: u32, threshold: u32) -> Vec<wsts::v2::Party> {
    let mut rng = wsts::util::create_rng();
    let mut parties: Vec<wsts::v2::Party> = (0..n)
        .map(|i| {
            let ids: Vec<u32> = (i * k + 1..=i * k + k).collect();
            wsts::v2::Party::new(i, &ids, n, n * k, threshold, &mut rng)
        })
        .collect();
    wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
    parties
}

/// `rounds` rounds of hostile shapes over one DKG: ours equals wsts' in
/// every one (and is computed here, not by the wsts fallback, whenever
/// the lengths agree).
fn compare(n: u32, k: u32, threshold: u32, rounds: u32, seed: u64) {
    let mut rng = wsts::util::create_rng();
    let mut shapes = Shapes(seed);
    let mut parties = parties(n, k, threshold);
    let (mut even_r, mut odd_r) = (0, 0);
    for round in 0..rounds {
        let msg = [u8::try_from(round % 251).unwrap(); 32];
        let root = match round % 3 {
            0 => None,
            _ => Some([u8::try_from(round % 256).unwrap(); 32]),
        };
        // Which parties are listed, in which order.
        let mut listed: Vec<usize> = (0..parties.len()).collect();
        shapes.shuffle(&mut listed);
        let take = 1 + shapes.below(listed.len());
        listed.truncate(take);
        for p in parties.iter_mut() {
            p.gen_nonce(&mut rng);
        }
        let mut party_ids: Vec<u32> = listed.iter().map(|i| parties[*i].party_id).collect();
        let mut nonces: Vec<PublicNonce> = listed
            .iter()
            .map(|i| {
                let s = parties[*i].save();
                (&s.parties[0].1.nonce).into()
            })
            .collect();
        let mut key_ids: Vec<u32> = listed
            .iter()
            .flat_map(|i| parties[*i].key_ids.clone())
            .collect();
        match shapes.below(6) {
            0 => {}
            1 => shapes.shuffle(&mut key_ids),
            2 => {
                // A key id repeated and a foreign one.
                let first = key_ids[0];
                key_ids.push(first);
                key_ids.push(n * k + 7);
            }
            3 => {
                // A party listed twice (its nonce twice).
                party_ids.push(party_ids[0]);
                nonces.push(nonces[0].clone());
            }
            4 => {
                // One nonce more than parties listed.
                nonces.push(nonces[0].clone());
            }
            _ => key_ids.reverse(),
        }
        for p in &parties {
            let theirs = p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, root);
            let ours = sign_taproot(
                p,
                &msg,
                &party_ids,
                &key_ids,
                &nonces,
                &compressed_of(&nonces),
                root,
            );
            assert_eq!(
                ours, theirs,
                "party {} round {round}: ids {party_ids:?} keys {key_ids:?} {} nonces root {root:?}",
                p.party_id,
                nonces.len()
            );
            if party_ids.len() == nonces.len() {
                let direct = share(
                    p,
                    &msg,
                    &party_ids,
                    &key_ids,
                    &nonces,
                    &compressed_of(&nonces),
                    root,
                )
                .expect("equal lengths are computed here");
                assert_eq!(vec![direct], theirs, "party {} round {round}", p.party_id);
            }
        }
        if party_ids.len() == nonces.len() {
            let (r, _) = frost_net::taproot::aggregate_nonce(&msg, &party_ids, &nonces).unwrap();
            if r.has_even_y() {
                even_r += 1;
            } else {
                odd_r += 1;
            }
        }
    }
    assert!(even_r > 0 && odd_r > 0, "both parities of R came up");
}

#[test]
fn hostile_shapes_one_key_each_equal_wsts() {
    compare(5, 1, 3, 96, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn hostile_shapes_several_keys_each_equal_wsts() {
    compare(4, 3, 7, 64, 0xdead_beef_cafe_f00d);
}

#[test]
fn hostile_shapes_uneven_keys_equal_wsts() {
    // Parties of 1, 2 and 4 keys (ids not in party order).
    let mut rng = wsts::util::create_rng();
    let layout: [&[u32]; 3] = [&[4], &[7, 2], &[1, 3, 5, 6]];
    let mut parties: Vec<wsts::v2::Party> = layout
        .iter()
        .enumerate()
        .map(|(i, ids)| wsts::v2::Party::new(u32::try_from(i).unwrap(), ids, 3, 7, 4, &mut rng))
        .collect();
    wsts::v2::test_helpers::dkg(&mut parties, &mut rng).unwrap();
    let mut shapes = Shapes(42);
    for round in 0..48u8 {
        let mut order = vec![0usize, 1, 2];
        shapes.shuffle(&mut order);
        let nonces: Vec<PublicNonce> = order
            .iter()
            .map(|i| parties[*i].gen_nonce(&mut rng))
            .collect();
        let party_ids: Vec<u32> = order.iter().map(|i| parties[*i].party_id).collect();
        let key_ids: Vec<u32> = order
            .iter()
            .flat_map(|i| parties[*i].key_ids.clone())
            .collect();
        let root = (round % 2 == 1).then_some([round; 32]);
        for p in &parties {
            let theirs = p.sign_taproot(&[round; 32], &party_ids, &key_ids, &nonces, root);
            let ours = share(
                p,
                &[round; 32],
                &party_ids,
                &key_ids,
                &nonces,
                &compressed_of(&nonces),
                root,
            )
            .unwrap();
            assert_eq!(vec![ours], theirs, "party {} round {round}", p.party_id);
        }
    }
}
