//! Clarity values and their consensus serialization (SIP-005).
//!
//! Encoding rules, each enforced in both directions:
//! 1. One type byte, then the body; integers are big-endian.
//! 2. Tuple entries are written sorted by key, byte order; a decoded tuple
//!    whose keys are unsorted or repeated is rejected, because the node
//!    re-serializes what it reads and any other order breaks signatures.
//! 3. `string-ascii` holds printable ASCII and the ASCII white space
//!    characters only; `string-utf8` holds valid UTF-8.
//! 4. Nesting is at most [`MAX_DEPTH`] deep and a value at most
//!    [`MAX_VALUE_SIZE`] bytes.

use std::collections::BTreeMap;
use std::fmt;

use crate::address::{ContractId, ContractName, PrincipalData, StacksAddress};
use crate::codec::Reader;
use crate::Error;

/// The deepest nesting of lists, tuples, optionals and responses accepted.
pub const MAX_DEPTH: usize = 32;

/// The largest serialized value accepted, in bytes (Clarity's limit, 1 MiB).
pub const MAX_VALUE_SIZE: usize = 1 << 20;

/// The longest tuple key.
pub const MAX_CLARITY_NAME_LEN: usize = 128;

mod type_id {
    pub(super) const INT: u8 = 0x00;
    pub(super) const UINT: u8 = 0x01;
    pub(super) const BUFFER: u8 = 0x02;
    pub(super) const TRUE: u8 = 0x03;
    pub(super) const FALSE: u8 = 0x04;
    pub(super) const STANDARD_PRINCIPAL: u8 = 0x05;
    pub(super) const CONTRACT_PRINCIPAL: u8 = 0x06;
    pub(super) const OK: u8 = 0x07;
    pub(super) const ERR: u8 = 0x08;
    pub(super) const NONE: u8 = 0x09;
    pub(super) const SOME: u8 = 0x0a;
    pub(super) const LIST: u8 = 0x0b;
    pub(super) const TUPLE: u8 = 0x0c;
    pub(super) const STRING_ASCII: u8 = 0x0d;
    pub(super) const STRING_UTF8: u8 = 0x0e;
}

/// A Clarity value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `int`: a signed 128-bit integer.
    Int(i128),
    /// `uint`: an unsigned 128-bit integer.
    UInt(u128),
    /// `(buff n)`.
    Buffer(Vec<u8>),
    /// `bool`.
    Bool(bool),
    /// `principal`.
    Principal(PrincipalData),
    /// `(ok v)`.
    Ok(Box<Value>),
    /// `(err v)`.
    Err(Box<Value>),
    /// `none` or `(some v)`.
    Optional(Option<Box<Value>>),
    /// `(list …)`.
    List(Vec<Value>),
    /// A tuple; the map keeps keys sorted, which is the canonical order.
    Tuple(BTreeMap<String, Value>),
    /// `(string-ascii n)`.
    StringAscii(String),
    /// `(string-utf8 n)`.
    StringUtf8(String),
}

fn valid_ascii_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c.is_ascii_punctuation() || c.is_ascii_whitespace()
}

fn valid_clarity_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_CLARITY_NAME_LEN {
        return false;
    }
    let special = |c: u8| b"-_!?+<>=/*".contains(&c);
    (b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || special(*c)))
        || matches!(name, "-" | "+" | "=" | "/" | "*" | "<" | ">" | "<=" | ">=")
}

impl Value {
    /// Returns `(string-ascii …)` for `s`, failing on characters Clarity refuses.
    pub fn string_ascii(s: &str) -> Result<Value, Error> {
        if s.bytes().all(valid_ascii_char) {
            Ok(Value::StringAscii(s.to_owned()))
        } else {
            Err(Error::InvalidAscii)
        }
    }

    /// Returns a tuple of the given entries, failing on an invalid or repeated key.
    pub fn tuple<I, K>(entries: I) -> Result<Value, Error>
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let k = k.into();
            if !valid_clarity_name(&k) {
                return Err(Error::InvalidClarityName(k));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(Error::DuplicateTupleKey(k));
            }
        }
        Ok(Value::Tuple(map))
    }

    /// Returns `(some v)`.
    pub fn some(v: Value) -> Value {
        Value::Optional(Some(Box::new(v)))
    }

    /// Returns `none`.
    pub fn none() -> Value {
        Value::Optional(None)
    }

    /// Appends the consensus serialization of this value to `out`.
    pub fn serialize_to(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(type_id::INT);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::UInt(u) => {
                out.push(type_id::UINT);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Value::Buffer(b) => {
                out.push(type_id::BUFFER);
                push_len_u32(out, b.len());
                out.extend_from_slice(b);
            }
            Value::Bool(true) => out.push(type_id::TRUE),
            Value::Bool(false) => out.push(type_id::FALSE),
            Value::Principal(PrincipalData::Standard(a)) => {
                out.push(type_id::STANDARD_PRINCIPAL);
                push_address(out, a);
            }
            Value::Principal(PrincipalData::Contract(c)) => {
                out.push(type_id::CONTRACT_PRINCIPAL);
                push_address(out, &c.address);
                push_name_u8(out, c.name.as_str());
            }
            Value::Ok(v) => {
                out.push(type_id::OK);
                v.serialize_to(out);
            }
            Value::Err(v) => {
                out.push(type_id::ERR);
                v.serialize_to(out);
            }
            Value::Optional(None) => out.push(type_id::NONE),
            Value::Optional(Some(v)) => {
                out.push(type_id::SOME);
                v.serialize_to(out);
            }
            Value::List(items) => {
                out.push(type_id::LIST);
                push_len_u32(out, items.len());
                for item in items {
                    item.serialize_to(out);
                }
            }
            Value::Tuple(map) => {
                out.push(type_id::TUPLE);
                push_len_u32(out, map.len());
                for (k, v) in map {
                    push_name_u8(out, k);
                    v.serialize_to(out);
                }
            }
            Value::StringAscii(s) => {
                out.push(type_id::STRING_ASCII);
                push_len_u32(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::StringUtf8(s) => {
                out.push(type_id::STRING_UTF8);
                push_len_u32(out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Returns the consensus serialization of this value.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.serialize_to(&mut out);
        out
    }

    /// Returns the serialization as `0x`-prefixed hex, the form the node's
    /// `call-read` endpoint takes and returns.
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.serialize()))
    }

    /// Decodes one value from untrusted bytes, failing on trailing bytes.
    pub fn deserialize(bytes: &[u8]) -> Result<Value, Error> {
        if bytes.len() > MAX_VALUE_SIZE {
            return Err(Error::LengthTooLarge);
        }
        let mut r = Reader::new(bytes);
        let v = Value::read(&mut r, 0)?;
        r.finish()?;
        Ok(v)
    }

    /// Decodes hex, with or without a `0x` prefix.
    pub fn from_hex(s: &str) -> Result<Value, Error> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        let bytes = hex::decode(s).map_err(|_| Error::InvalidHex)?;
        Value::deserialize(&bytes)
    }

    pub(crate) fn read(r: &mut Reader<'_>, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let ty = r.u8()?;
        Ok(match ty {
            type_id::INT => Value::Int(i128::from_be_bytes(r.array()?)),
            type_id::UINT => Value::UInt(r.u128()?),
            type_id::BUFFER => Value::Buffer(r.bytes_u32()?.to_vec()),
            type_id::TRUE => Value::Bool(true),
            type_id::FALSE => Value::Bool(false),
            type_id::STANDARD_PRINCIPAL => {
                Value::Principal(PrincipalData::Standard(read_address(r)?))
            }
            type_id::CONTRACT_PRINCIPAL => {
                let address = read_address(r)?;
                let name = read_contract_name(r)?;
                Value::Principal(PrincipalData::Contract(ContractId { address, name }))
            }
            type_id::OK => Value::Ok(Box::new(Value::read(r, depth + 1)?)),
            type_id::ERR => Value::Err(Box::new(Value::read(r, depth + 1)?)),
            type_id::NONE => Value::Optional(None),
            type_id::SOME => Value::some(Value::read(r, depth + 1)?),
            type_id::LIST => {
                let n = r.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(Value::read(r, depth + 1)?);
                }
                Value::List(items)
            }
            type_id::TUPLE => {
                let n = r.count(3)?;
                let mut map = BTreeMap::new();
                let mut last: Option<String> = None;
                for _ in 0..n {
                    let name = std::str::from_utf8(r.bytes_u8()?)
                        .map_err(|_| Error::InvalidClarityName("(not utf-8)".into()))?
                        .to_owned();
                    if !valid_clarity_name(&name) {
                        return Err(Error::InvalidClarityName(name));
                    }
                    if let Some(prev) = &last {
                        if prev.as_bytes() >= name.as_bytes() {
                            return Err(Error::NonCanonical("tuple keys are not sorted or repeat"));
                        }
                    }
                    let v = Value::read(r, depth + 1)?;
                    last = Some(name.clone());
                    map.insert(name, v);
                }
                Value::Tuple(map)
            }
            type_id::STRING_ASCII => {
                let b = r.bytes_u32()?;
                if !b.iter().all(|c| valid_ascii_char(*c)) {
                    return Err(Error::InvalidAscii);
                }
                Value::StringAscii(String::from_utf8(b.to_vec()).map_err(|_| Error::InvalidAscii)?)
            }
            type_id::STRING_UTF8 => {
                let b = r.bytes_u32()?;
                Value::StringUtf8(String::from_utf8(b.to_vec()).map_err(|_| Error::InvalidUtf8)?)
            }
            other => return Err(Error::UnknownTypeId(other)),
        })
    }
}

pub(crate) fn push_len_u32(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("values are bounded far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
}

pub(crate) fn push_name_u8(out: &mut Vec<u8>, name: &str) {
    let len = u8::try_from(name.len()).expect("names are validated to at most 128 bytes");
    out.push(len);
    out.extend_from_slice(name.as_bytes());
}

pub(crate) fn push_address(out: &mut Vec<u8>, a: &StacksAddress) {
    out.push(a.version());
    out.extend_from_slice(a.hash160());
}

pub(crate) fn read_address(r: &mut Reader<'_>) -> Result<StacksAddress, Error> {
    let version = r.u8()?;
    let hash = r.array::<20>()?;
    StacksAddress::new(version, hash)
}

pub(crate) fn read_contract_name(r: &mut Reader<'_>) -> Result<ContractName, Error> {
    let name = std::str::from_utf8(r.bytes_u8()?)
        .map_err(|_| Error::InvalidContractName("(not utf-8)".into()))?;
    name.parse()
}

impl fmt::Display for Value {
    /// Writes the value in Clarity syntax: `u5`, `'SP….name`, `(ok true)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "u{u}"),
            Value::Buffer(b) => write!(f, "0x{}", hex::encode(b)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Principal(p) => write!(f, "'{p}"),
            Value::Ok(v) => write!(f, "(ok {v})"),
            Value::Err(v) => write!(f, "(err {v})"),
            Value::Optional(None) => f.write_str("none"),
            Value::Optional(Some(v)) => write!(f, "(some {v})"),
            Value::List(items) => {
                f.write_str("(list")?;
                for item in items {
                    write!(f, " {item}")?;
                }
                f.write_str(")")
            }
            Value::Tuple(map) => {
                f.write_str("(tuple")?;
                for (k, v) in map {
                    write!(f, " ({k} {v})")?;
                }
                f.write_str(")")
            }
            Value::StringAscii(s) => write!(f, "{s:?}"),
            Value::StringUtf8(s) => write!(f, "u{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vectors from stacks.js `tests/clarity.test.ts` (reference §1.2).
    #[test]
    fn published_value_vectors() {
        let cases = [
            (Value::UInt(1), "0100000000000000000000000000000001"),
            (Value::Int(-1), "00ffffffffffffffffffffffffffffffff"),
            (
                Value::tuple([("foobar", Value::Bool(true)), ("baz", Value::none())]).unwrap(),
                "0c000000020362617a0906666f6f62617203",
            ),
            (
                Value::string_ascii("hello world").unwrap(),
                "0d0000000b68656c6c6f20776f726c64",
            ),
        ];
        for (value, hex) in cases {
            assert_eq!(hex::encode(value.serialize()), hex, "{value}");
            assert_eq!(Value::from_hex(hex).unwrap(), value);
        }
    }

    #[test]
    fn unsorted_tuple_is_rejected() {
        // {foobar: true, baz: none} written in insertion order.
        let bad = "0c0000000206666f6f626172030362617a09";
        assert!(matches!(Value::from_hex(bad), Err(Error::NonCanonical(_))));
    }

    #[test]
    fn display_uses_clarity_syntax() {
        let p: PrincipalData = "SP000000000000000000002Q6VF78.sbtc".parse().unwrap();
        let v = Value::Ok(Box::new(Value::List(vec![
            Value::UInt(5),
            Value::Int(-2),
            Value::Principal(p),
            Value::some(Value::Buffer(vec![0xab])),
            Value::StringUtf8("é".into()),
        ])));
        assert_eq!(
            v.to_string(),
            "(ok (list u5 -2 'SP000000000000000000002Q6VF78.sbtc (some 0xab) u\"é\"))"
        );
    }

    #[test]
    fn depth_limit_holds() {
        let mut bytes = vec![type_id::SOME; MAX_DEPTH + 2];
        bytes.push(type_id::TRUE);
        assert_eq!(Value::deserialize(&bytes), Err(Error::TooDeep));
    }

    #[test]
    fn bad_ascii_and_utf8_rejected() {
        assert_eq!(Value::string_ascii("a\u{7f}"), Err(Error::InvalidAscii));
        assert_eq!(Value::from_hex("0d0000000100"), Err(Error::InvalidAscii));
        assert_eq!(Value::from_hex("0e00000001ff"), Err(Error::InvalidUtf8));
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let address =
            (0u8..32, any::<[u8; 20]>()).prop_map(|(v, h)| StacksAddress::new(v, h).unwrap());
        let principal = prop_oneof![
            address.clone().prop_map(PrincipalData::Standard),
            (address, "[a-z][a-z0-9-]{0,20}").prop_map(|(address, name)| {
                PrincipalData::Contract(ContractId {
                    address,
                    name: name.parse().unwrap(),
                })
            }),
        ];
        let leaf = prop_oneof![
            any::<i128>().prop_map(Value::Int),
            any::<u128>().prop_map(Value::UInt),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Buffer),
            any::<bool>().prop_map(Value::Bool),
            principal.prop_map(Value::Principal),
            "[ -~]{0,30}".prop_map(|s| Value::string_ascii(&s).unwrap()),
            "\\PC{0,20}".prop_map(Value::StringUtf8),
            Just(Value::none()),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                inner.clone().prop_map(|v| Value::Ok(Box::new(v))),
                inner.clone().prop_map(|v| Value::Err(Box::new(v))),
                inner.clone().prop_map(Value::some),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                proptest::collection::btree_map("[a-z][a-z0-9-]{0,8}", inner, 0..6)
                    .prop_map(Value::Tuple),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_decode_encode_is_identity(v in arb_value()) {
            let bytes = v.serialize();
            let back = Value::deserialize(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(back.serialize(), bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = Value::deserialize(&bytes) {
                prop_assert_eq!(v.serialize(), bytes);
            }
        }
    }
}
