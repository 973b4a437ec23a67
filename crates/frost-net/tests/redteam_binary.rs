//! Red team (issue #16): the binary bodies' canonical form at the field
//! level. A compressed point or key whose x coordinate is written as
//! `x + p` (there is room: p is 2^256 − 2^32 − 977) names the same point
//! as `x`; if the decoder reduced it, one message would have two bodies,
//! and a signer comparing bytes with its own encoding would disagree with
//! one that decodes. Each test is an attack; it passes when the decoder
//! holds.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::messages::{Keyed, Message};
use frost_net::wsts::net as w;
use frost_net::Kind;
use wsts::common::PublicNonce;
use wsts::curve::point::{Compressed, Point};

/// The field prime of secp256k1, big-endian.
const P: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[27] = 0xfe;
    p[28] = 0xff;
    p[29] = 0xff;
    p[30] = 0xfc;
    p[31] = 0x2f;
    p
};

/// `x + p` for a small `x` (below 2^32 + 977, so it fits in 32 bytes).
fn plus_p(x: u32) -> [u8; 32] {
    let mut out = P;
    let mut carry = u64::from(x);
    for b in out.iter_mut().rev() {
        let s = u64::from(*b) + (carry & 0xff);
        *b = u8::try_from(s & 0xff).unwrap();
        carry = (carry >> 8) + (s >> 8);
    }
    assert_eq!(carry, 0, "x + p fits in 256 bits");
    out
}

/// A small x on the curve, with the tag of one of its two points.
fn small_point() -> (u32, [u8; 33], Point) {
    for x in 1u32..1_000 {
        let mut c = [0u8; 33];
        c[0] = 2;
        c[29..].copy_from_slice(&x.to_be_bytes());
        if let Ok(p) = Point::try_from(&Compressed::from(c)) {
            return (x, c, p);
        }
    }
    unreachable!("a small x on secp256k1")
}

fn key() -> PublicKey {
    SecretKey::from_slice(&[9; 32])
        .unwrap()
        .public_key(&Secp256k1::new())
}

fn nonce_response(d: Point) -> Message {
    Message::NonceResponse(Keyed {
        key: key(),
        msg: w::NonceResponse {
            dkg_id: 1,
            sign_id: 2,
            sign_iter_id: 0,
            signer_id: 0,
            key_ids: vec![1],
            nonces: vec![PublicNonce { D: d, E: d }],
            message: vec![7; 32],
        },
    })
}

#[test]
fn a_nonce_point_written_as_x_plus_p_is_refused() {
    let (x, c, point) = small_point();
    // The arithmetic: 1 + p ends ...fffffc30.
    assert_eq!(plus_p(1)[28..], [0xff, 0xff, 0xfc, 0x30]);
    let honest = nonce_response(point).encode_body();
    // key (33) ‖ round (24) ‖ signer id (4) ‖ key ids (4 + 4) ‖ count (4) ‖ D.
    let d = 33 + 24 + 4 + 8 + 4;
    assert_eq!(&honest[d..d + 33], &c[..], "the point as encoded");
    assert!(Message::decode_body(Kind::NonceResponse, &honest).is_ok());
    let mut forged = honest.clone();
    forged[d + 1..d + 33].copy_from_slice(&plus_p(x));
    assert_ne!(forged, honest);
    match Message::decode_body(Kind::NonceResponse, &forged) {
        Err(_) => {}
        Ok(m) => panic!(
            "a second body of one message decoded (canonical: {})",
            m.encode_body() == forged
        ),
    }
}

#[test]
fn a_key_written_as_x_plus_p_is_refused() {
    let (x, _, point) = small_point();
    let honest = nonce_response(point).encode_body();
    // The request's key, if it had a small x: forge one at x + p, tag 2
    // and 3 (a real key with x < 2^32 is not at hand, so both tags are
    // tried; neither may decode).
    for tag in [2u8, 3] {
        let mut forged = honest.clone();
        forged[0] = tag;
        forged[1..33].copy_from_slice(&plus_p(x));
        assert!(
            Message::decode_body(Kind::NonceResponse, &forged).is_err(),
            "a key at x + p decoded (tag {tag})"
        );
    }
}
