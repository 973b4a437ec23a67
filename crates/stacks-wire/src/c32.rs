//! Crockford-style base-32 ("c32") and c32check, as Stacks addresses use them.
//!
//! The encoding treats the input as one big-endian number written in base 32
//! with the alphabet [`ALPHABET`], and writes one `0` for every leading zero
//! byte of the input (the number itself would lose them). c32check appends the
//! first four bytes of `sha256d(version ‖ data)` to the data before encoding and
//! puts the version's digit in front.

use bitcoin::hashes::{sha256d, Hash};

use crate::Error;

/// The 32 digits, in value order.
pub(crate) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Returns the value of a c32 digit, accepting the lenient spellings
/// (lower case, `O` for 0, `L`/`I` for 1) that the reference decoders accept.
fn digit_value(c: u8) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        b'O' => b'0',
        b'L' | b'I' => b'1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|d| *d == c)
        .and_then(|p| u8::try_from(p).ok())
}

/// Encodes bytes as c32.
pub(crate) fn encode(input: &[u8]) -> String {
    // Digits come out least significant first.
    let mut digits: Vec<u8> = Vec::with_capacity(input.len() * 8 / 5 + 2);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for byte in input.iter().rev() {
        acc |= u32::from(*byte) << bits;
        bits += 8;
        while bits >= 5 {
            digits.push(ALPHABET[(acc & 31) as usize]);
            acc >>= 5;
            bits -= 5;
        }
    }
    if bits > 0 {
        digits.push(ALPHABET[(acc & 31) as usize]);
    }
    // The number has no leading zeros of its own ...
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    // ... but every leading zero byte of the input is written as one '0'.
    let zero_bytes = input.iter().take_while(|b| **b == 0).count();
    digits.extend(std::iter::repeat_n(b'0', zero_bytes));
    digits.reverse();
    String::from_utf8(digits).expect("the alphabet is ASCII")
}

/// Decodes c32 text into bytes.
pub(crate) fn decode(input: &str) -> Result<Vec<u8>, Error> {
    let values = input
        .bytes()
        .map(|c| digit_value(c).ok_or(Error::InvalidC32Character(char::from(c))))
        .collect::<Result<Vec<u8>, Error>>()?;
    let mut bytes: Vec<u8> = Vec::with_capacity(values.len() * 5 / 8 + 1);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for v in values.iter().rev() {
        acc |= u32::from(*v) << bits;
        bits += 5;
        if bits >= 8 {
            bytes.push((acc & 0xff) as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if acc != 0 {
        bytes.push((acc & 0xff) as u8);
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    let zero_digits = values.iter().take_while(|v| **v == 0).count();
    bytes.extend(std::iter::repeat_n(0u8, zero_digits));
    bytes.reverse();
    Ok(bytes)
}

fn checksum(version: u8, data: &[u8]) -> [u8; 4] {
    let mut buf = Vec::with_capacity(data.len() + 1);
    buf.push(version);
    buf.extend_from_slice(data);
    let hash = sha256d::Hash::hash(&buf);
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_byte_array()[..4]);
    out
}

/// c32check-encodes `data` under `version` (< 32): the version digit, then the
/// c32 encoding of `data ‖ checksum`.
pub(crate) fn check_encode(version: u8, data: &[u8]) -> Result<String, Error> {
    let digit = ALPHABET
        .get(usize::from(version))
        .ok_or(Error::InvalidVersion(version))?;
    let mut payload = data.to_vec();
    payload.extend_from_slice(&checksum(version, data));
    let mut out = String::with_capacity(payload.len() * 8 / 5 + 3);
    out.push(char::from(*digit));
    out.push_str(&encode(&payload));
    Ok(out)
}

/// Decodes c32check text into its version and data, verifying the checksum.
pub(crate) fn check_decode(input: &str) -> Result<(u8, Vec<u8>), Error> {
    let first = *input.as_bytes().first().ok_or(Error::Empty)?;
    let version = digit_value(first).ok_or(Error::InvalidC32Character(char::from(first)))?;
    let payload = decode(input.get(1..).ok_or(Error::Empty)?)?;
    if payload.len() < 4 {
        return Err(Error::InvalidLength {
            what: "c32check payload",
            expected: 4,
            actual: payload.len(),
        });
    }
    let (data, sum) = payload.split_at(payload.len() - 4);
    if checksum(version, data) != sum {
        return Err(Error::BadChecksum);
    }
    Ok((version, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn leading_zero_bytes_become_zero_digits() {
        assert_eq!(encode(&[0, 0, 1]), "001");
        assert_eq!(decode("001").unwrap(), vec![0, 0, 1]);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn lenient_digits_decode_like_their_canonical_forms() {
        assert_eq!(decode("oLi").unwrap(), decode("011").unwrap());
        assert!(matches!(decode("U"), Err(Error::InvalidC32Character('U'))));
    }

    #[test]
    fn check_decode_rejects_a_flipped_digit() {
        let s = check_encode(22, &[7u8; 20]).unwrap();
        let mut bad = s.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            check_decode(std::str::from_utf8(&bad).unwrap()),
            Err(Error::BadChecksum)
        );
        assert_eq!(check_decode(&s).unwrap(), (22, vec![7u8; 20]));
    }

    proptest! {
        #[test]
        fn c32_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn c32check_round_trips(version in 0u8..32, bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let s = check_encode(version, &bytes).unwrap();
            prop_assert_eq!(check_decode(&s).unwrap(), (version, bytes));
        }

        #[test]
        fn decoding_random_text_never_panics(s in "\\PC{0,60}") {
            let _ = check_decode(&s);
        }
    }
}
