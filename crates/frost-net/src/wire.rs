//! The binary bodies of the signing-round kinds (envelope version 2).
//!
//! A signing round's packets — `NonceRequest`, `NonceResponse`,
//! `SignatureShareRequest` and `SignatureShareResponse` — are the ones on
//! every payout's critical path, and a share request embeds every listed
//! signer's sealed nonce response. As JSON a curve point is an array of 33
//! numbers and an embedded envelope a hex string, so a 15-signer share
//! request was ≈ 23 KB; in this encoding it is ≈ 7 KB, and each signer
//! checks an embedded nonce response by comparing bytes instead of decoding
//! it (see [`crate::Codec::check_listed_nonces`]). Every other kind keeps
//! its JSON body.
//!
//! ```text
//! u32, u64     big-endian
//! bytes        u32 length ‖ bytes
//! list of T    u32 count ‖ T…
//! key          33 bytes, a compressed secp256k1 public key
//! point        33 bytes, compressed (tag 2 or 3)
//! scalar       32 bytes, big-endian, below the group order
//! sig type     u8: 0 FROST, 1 Schnorr, 2 taproot, 3 taproot ‖ 32-byte merkle root
//! round        dkg id u64 ‖ sign id u64 ‖ sign iteration u64
//!
//! NonceRequest            key ‖ round ‖ message bytes ‖ sig type
//! nonce response          round ‖ signer id u32 ‖ list of key id u32
//!                         ‖ list of (point D ‖ point E) ‖ message bytes
//! NonceResponse           key ‖ nonce response
//! SignatureShareRequest   key ‖ round ‖ list of nonce response ‖ message bytes
//!                         ‖ sig type ‖ list of bytes (the sealed nonce responses)
//! SignatureShareResponse  key ‖ round ‖ signer id u32
//!                         ‖ list of (id u32 ‖ scalar ‖ list of key id u32)
//! ```
//!
//! The encoding is canonical: decoding refuses trailing bytes, points with
//! another tag byte, scalars at or above the group order, unknown signature
//! types, so two different bodies never decode to the same message (a
//! signer may compare a body's bytes with the encoding of what it expects).
//! Decoding never allocates more than the body's length: every count is
//! checked against the bytes left before anything is reserved. Bodies come
//! from the relay: nothing here panics on any input.

use bitcoin::secp256k1::PublicKey;
use wsts::common::{PublicNonce, SignatureShare};
use wsts::curve::point::{Compressed, Point};
use wsts::curve::scalar::Scalar;
use wsts::net as w;

use crate::messages::{Keyed, Kind, Message, ShareRequest};

/// Whether `kind` has a binary body.
pub(crate) fn is_binary(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::NonceRequest
            | Kind::NonceResponse
            | Kind::SignatureShareRequest
            | Kind::SignatureShareResponse
    )
}

/// The binary body of `m`, or `None` for a kind that keeps JSON.
pub(crate) fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut w = Writer(Vec::with_capacity(256));
    match m {
        Message::NonceRequest(r) => {
            w.key(&r.key);
            w.round(r.msg.dkg_id, r.msg.sign_id, r.msg.sign_iter_id);
            w.bytes(&r.msg.message);
            w.sig_type(&r.msg.signature_type);
        }
        Message::NonceResponse(r) => {
            w.key(&r.key);
            w.nonce_response(&r.msg);
        }
        Message::SignatureShareRequest(r) => {
            let m = &r.msg;
            let envelopes: usize = r.nonce_envelopes.iter().map(|e| e.len() + 4).sum();
            w.0.reserve(envelopes + m.nonce_responses.len() * 120 + 128);
            w.key(&r.key);
            w.round(m.dkg_id, m.sign_id, m.sign_iter_id);
            w.count(m.nonce_responses.len());
            for n in &m.nonce_responses {
                w.nonce_response(n);
            }
            w.bytes(&m.message);
            w.sig_type(&m.signature_type);
            w.count(r.nonce_envelopes.len());
            for e in &r.nonce_envelopes {
                w.bytes(e);
            }
        }
        Message::SignatureShareResponse(r) => {
            let m = &r.msg;
            w.key(&r.key);
            w.round(m.dkg_id, m.sign_id, m.sign_iter_id);
            w.u32(m.signer_id);
            w.count(m.signature_shares.len());
            for s in &m.signature_shares {
                w.u32(s.id);
                w.0.extend_from_slice(&s.z_i.to_bytes());
                w.u32_list(&s.key_ids);
            }
        }
        _ => return None,
    }
    Some(w.0)
}

/// Decodes a binary body of `kind`; `None` for a kind that keeps JSON.
pub(crate) fn decode(kind: Kind, body: &[u8]) -> Option<Result<Message, String>> {
    if !is_binary(kind) {
        return None;
    }
    let mut r = Reader(body);
    let m = (|| -> Result<Message, String> {
        let m = match kind {
            Kind::NonceRequest => {
                let key = r.key()?;
                let (dkg_id, sign_id, sign_iter_id) = r.round()?;
                let message = r.bytes()?.to_vec();
                let signature_type = r.sig_type()?;
                Message::NonceRequest(Keyed {
                    key,
                    msg: w::NonceRequest {
                        dkg_id,
                        sign_id,
                        sign_iter_id,
                        message,
                        signature_type,
                    },
                })
            }
            Kind::NonceResponse => {
                let key = r.key()?;
                let msg = r.nonce_response()?;
                Message::NonceResponse(Keyed { key, msg })
            }
            Kind::SignatureShareRequest => return share_request(&mut r).map(|(m, _)| m),
            Kind::SignatureShareResponse => {
                let key = r.key()?;
                let (dkg_id, sign_id, sign_iter_id) = r.round()?;
                let signer_id = r.u32()?;
                let n = r.count(4 + 32 + 4)?;
                let mut signature_shares = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.u32()?;
                    let z_i = r.scalar()?;
                    let key_ids = r.u32_list()?;
                    signature_shares.push(SignatureShare { id, z_i, key_ids });
                }
                Message::SignatureShareResponse(Keyed {
                    key,
                    msg: w::SignatureShareResponse {
                        dkg_id,
                        sign_id,
                        sign_iter_id,
                        signer_id,
                        signature_shares,
                    },
                })
            }
            _ => return Err(format!("{kind:?} has no binary body")),
        };
        if r.0.is_empty() {
            Ok(m)
        } else {
            Err(format!("{} trailing bytes", r.0.len()))
        }
    })();
    Some(m)
}

/// A share request's listed nonce responses as its body carried them: each
/// entry's encoding (what a `NonceResponse` body holds after the key) and
/// every listed nonce's two points compressed, in the listed order. With
/// them a signer checks the embedded nonce responses by comparing bytes and
/// hashes its binding values without compressing a point again (each
/// compression costs a field inversion).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedNonces {
    /// The entries as decoded from `entries` (what a request must list for
    /// this listing to be used with it).
    decoded: Vec<w::NonceResponse>,
    entries: Vec<Vec<u8>>,
    compressed: Vec<([u8; 33], [u8; 33])>,
}

impl ListedNonces {
    /// The listing of `r`, encoded from its decoded entries (what a share
    /// request built in memory, not read from a packet, needs).
    pub fn of(r: &ShareRequest) -> ListedNonces {
        let m = &r.msg;
        let mut entries = Vec::with_capacity(m.nonce_responses.len());
        let mut compressed = Vec::with_capacity(m.nonce_responses.len());
        for n in &m.nonce_responses {
            let mut w = Writer(Vec::with_capacity(160));
            w.nonce_response(n);
            entries.push(w.0);
            compressed.extend(
                n.nonces
                    .iter()
                    .map(|n| (n.D.compress().data, n.E.compress().data)),
            );
        }
        ListedNonces {
            decoded: m.nonce_responses.clone(),
            entries,
            compressed,
        }
    }

    /// Every listed nonce's `(D, E)` compressed, in the listed order (the
    /// entries' nonces one after another).
    pub fn compressed(&self) -> Vec<(Compressed, Compressed)> {
        self.compressed
            .iter()
            .map(|(d, e)| (Compressed::from(*d), Compressed::from(*e)))
            .collect()
    }

    /// Whether this is the listing of `r`: its entries decode to exactly
    /// what `r` lists (a point comparison is a point subtraction, not a
    /// compression). A listing of another request is never used, neither to
    /// check nonces nor to hash binding values; the caller makes `r`'s own
    /// ([`ListedNonces::of`]).
    pub fn fits(&self, r: &ShareRequest) -> bool {
        self.decoded == r.msg.nonce_responses
    }

    /// Whether `body` is the `NonceResponse` body of `key` and listed entry
    /// `index`, byte for byte.
    pub(crate) fn is_body_of(&self, index: usize, key: &PublicKey, body: &[u8]) -> bool {
        let Some(entry) = self.entries.get(index) else {
            return false;
        };
        body.len() == 33 + entry.len() && body[..33] == key.serialize() && body[33..] == entry[..]
    }
}

/// Decodes a `SignatureShareRequest` body with its listing.
pub(crate) fn decode_share_request(body: &[u8]) -> Result<(Message, ListedNonces), String> {
    share_request(&mut Reader(body))
}

/// The round of a `SignatureShareRequest` body that does not list the signer
/// with wsts id `me`, read without decoding a point (beyond the key); `None`
/// when it lists `me` or does not parse (then the whole body is decoded, and
/// refused with a reason if it is bad).
pub(crate) fn share_request_without(body: &[u8], me: u32) -> Option<(PublicKey, u64, u64, u64)> {
    let mut r = Reader(body);
    let key = r.key().ok()?;
    let (dkg_id, sign_id, sign_iter_id) = r.round().ok()?;
    let n = r.count(40).ok()?;
    for _ in 0..n {
        r.round().ok()?;
        if r.u32().ok()? == me {
            return None;
        }
        let k = r.count(4).ok()?;
        r.take(4 * k).ok()?;
        let k = r.count(66).ok()?;
        r.take(66 * k).ok()?;
        r.bytes().ok()?;
    }
    Some((key, dkg_id, sign_id, sign_iter_id))
}

/// The rest of a share request body after nothing was read, to its end.
fn share_request(r: &mut Reader<'_>) -> Result<(Message, ListedNonces), String> {
    let key = r.key()?;
    let (dkg_id, sign_id, sign_iter_id) = r.round()?;
    // A nonce response is at least 24 + 4 + 4 + 4 + 4 bytes.
    let n = r.count(40)?;
    let mut nonce_responses = Vec::with_capacity(n);
    let mut entries = Vec::with_capacity(n);
    let mut compressed = Vec::with_capacity(n);
    for _ in 0..n {
        let before = r.0;
        nonce_responses.push(r.nonce_response_into(&mut compressed)?);
        entries.push(before[..before.len() - r.0.len()].to_vec());
    }
    let message = r.bytes()?.to_vec();
    let signature_type = r.sig_type()?;
    let n = r.count(4)?;
    let mut nonce_envelopes = Vec::with_capacity(n);
    for _ in 0..n {
        nonce_envelopes.push(r.bytes()?.to_vec());
    }
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    let listed = ListedNonces {
        decoded: nonce_responses.clone(),
        entries,
        compressed,
    };
    let m = Message::SignatureShareRequest(ShareRequest {
        key,
        msg: w::SignatureShareRequest {
            dkg_id,
            sign_id,
            sign_iter_id,
            nonce_responses,
            message,
            signature_type,
        },
        nonce_envelopes,
    });
    Ok((m, listed))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    /// A length or count; nothing we encode comes near 4 GiB (the caps are
    /// far below), so saturating cannot happen in practice and would only
    /// make the body undecodable, never another message.
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.0.extend_from_slice(b);
    }

    fn u32_list(&mut self, v: &[u32]) {
        self.count(v.len());
        for x in v {
            self.u32(*x);
        }
    }

    fn key(&mut self, k: &PublicKey) {
        self.0.extend_from_slice(&k.serialize());
    }

    fn point(&mut self, p: &Point) {
        self.0.extend_from_slice(p.compress().as_bytes());
    }

    fn round(&mut self, dkg_id: u64, sign_id: u64, sign_iter_id: u64) {
        self.u64(dkg_id);
        self.u64(sign_id);
        self.u64(sign_iter_id);
    }

    fn sig_type(&mut self, t: &w::SignatureType) {
        match t {
            w::SignatureType::Frost => self.0.push(0),
            w::SignatureType::Schnorr => self.0.push(1),
            w::SignatureType::Taproot(None) => self.0.push(2),
            w::SignatureType::Taproot(Some(root)) => {
                self.0.push(3);
                self.0.extend_from_slice(root);
            }
        }
    }

    fn nonce_response(&mut self, r: &w::NonceResponse) {
        self.round(r.dkg_id, r.sign_id, r.sign_iter_id);
        self.u32(r.signer_id);
        self.u32_list(&r.key_ids);
        self.count(r.nonces.len());
        for n in &r.nonces {
            self.point(&n.D);
            self.point(&n.E);
        }
        self.bytes(&r.message);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.u32()?).map_err(|_| "a length beyond this machine's".to_string())
    }

    /// A count of elements of at least `min` bytes each, refused when the
    /// bytes left cannot hold that many (so nothing over-reserves).
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let n = self.len()?;
        if n.saturating_mul(min.max(1)) > self.0.len() {
            return Err(format!(
                "a count of {n} does not fit in the {} bytes left",
                self.0.len()
            ));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }

    fn u32_list(&mut self) -> Result<Vec<u32>, String> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }

    fn key(&mut self) -> Result<PublicKey, String> {
        let b = self.take(33)?;
        if b[0] != 2 && b[0] != 3 {
            return Err(format!("a key with tag byte {}", b[0]));
        }
        PublicKey::from_slice(b).map_err(|e| format!("bad key: {e}"))
    }

    /// A point and its encoding.
    fn point_compressed(&mut self) -> Result<(Point, Compressed), String> {
        let b: [u8; 33] = self.array()?;
        if b[0] != 2 && b[0] != 3 {
            return Err(format!("a point with tag byte {}", b[0]));
        }
        let c = Compressed::from(b);
        let p = Point::try_from(&c).map_err(|e| format!("bad point: {e:?}"))?;
        Ok((p, c))
    }

    fn scalar(&mut self) -> Result<Scalar, String> {
        let b: [u8; 32] = self.array()?;
        let s = Scalar::from(b);
        // `Scalar::from` reduces modulo the order: only the reduced form
        // is accepted, so each scalar has one encoding.
        if s.to_bytes() != b {
            return Err("a scalar not below the group order".into());
        }
        Ok(s)
    }

    fn round(&mut self) -> Result<(u64, u64, u64), String> {
        Ok((self.u64()?, self.u64()?, self.u64()?))
    }

    fn sig_type(&mut self) -> Result<w::SignatureType, String> {
        Ok(match self.u8()? {
            0 => w::SignatureType::Frost,
            1 => w::SignatureType::Schnorr,
            2 => w::SignatureType::Taproot(None),
            3 => w::SignatureType::Taproot(Some(self.array()?)),
            t => return Err(format!("unknown signature type {t}")),
        })
    }

    fn nonce_response(&mut self) -> Result<w::NonceResponse, String> {
        self.nonce_response_into(&mut Vec::new())
    }

    /// A nonce response, its nonces' encodings appended to `compressed`.
    fn nonce_response_into(
        &mut self,
        compressed: &mut Vec<([u8; 33], [u8; 33])>,
    ) -> Result<w::NonceResponse, String> {
        let (dkg_id, sign_id, sign_iter_id) = self.round()?;
        let signer_id = self.u32()?;
        let key_ids = self.u32_list()?;
        let n = self.count(66)?;
        let mut nonces = Vec::with_capacity(n);
        compressed.reserve(n);
        for _ in 0..n {
            let (d, dc) = self.point_compressed()?;
            let (e, ec) = self.point_compressed()?;
            nonces.push(PublicNonce { D: d, E: e });
            compressed.push((dc.data, ec.data));
        }
        let message = self.bytes()?.to_vec();
        Ok(w::NonceResponse {
            dkg_id,
            sign_id,
            sign_iter_id,
            signer_id,
            key_ids,
            nonces,
            message,
        })
    }
}
