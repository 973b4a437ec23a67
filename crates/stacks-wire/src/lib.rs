//! The Stacks wire format, as SIP-005 and the stacks-node define it.
//!
//! `blockstack-lib` is not published on crates.io and the published Stacks
//! crates are GPL, so this workspace owns the few encodings it needs:
//!
//! - [`StacksAddress`], [`PrincipalData`] and [`ContractId`] with c32check text
//!   forms (`SP…`, `SP….contract`), checksums verified;
//! - Clarity [`Value`]s with their consensus serialization and hex form;
//! - [`StacksTransaction`]s: single-sig P2PKH, contract calls and token
//!   transfers, post conditions; signing, verification and txids.
//!
//! Everything that decodes takes untrusted bytes: lengths are bounded by the
//! input, trailing bytes are refused, and nothing panics. The encodings are
//! pinned by the published vectors of stacks-core and stacks.js.
//!
//! This crate never talks to a node.

pub mod address;
mod c32;
pub mod clarity;
mod codec;
pub mod transaction;

use std::fmt;
use std::str::FromStr;

pub use address::{ContractId, ContractName, PrincipalData, StacksAddress, StacksNetwork};
pub use clarity::Value;
pub use transaction::{
    AnchorMode, AssetInfo, ClarityVersion, FungibleConditionCode, Payload, PostCondition,
    PostConditionMode, PostConditionPrincipal, StacksPrivateKey, StacksTransaction,
};

/// Why text or bytes could not be read as a Stacks type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input was empty.
    #[error("empty input")]
    Empty,
    /// A character outside the c32 alphabet.
    #[error("invalid c32 character {0:?}")]
    InvalidC32Character(char),
    /// A c32check checksum did not match.
    #[error("c32check checksum mismatch")]
    BadChecksum,
    /// An address version of 32 or more.
    #[error("address version {0} is not below 32")]
    InvalidVersion(u8),
    /// Text that is not a Stacks address.
    #[error("{0:?} is not a stacks address (expected S followed by c32check text)")]
    InvalidAddress(String),
    /// A contract name outside the allowed characters or length.
    #[error("{0:?} is not a valid contract name")]
    InvalidContractName(String),
    /// Text that is not `ADDRESS.name`.
    #[error("{0:?} is not a contract id (expected ADDRESS.name)")]
    InvalidContractId(String),
    /// A field had the wrong length.
    #[error("{what} has {actual} bytes, expected {expected}")]
    InvalidLength {
        /// What was being read.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The input ended early.
    #[error("input ended: needed {needed} more bytes, {remaining} remain")]
    UnexpectedEnd {
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// Bytes were left after a complete value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// A length beyond the format's limits.
    #[error("length exceeds the format's limit")]
    LengthTooLarge,
    /// Values nested deeper than allowed.
    #[error("value nested deeper than {} levels", clarity::MAX_DEPTH)]
    TooDeep,
    /// An unknown Clarity type byte.
    #[error("unknown clarity type id {0:#04x}")]
    UnknownTypeId(u8),
    /// A `string-ascii` with a character Clarity refuses.
    #[error("string-ascii holds a non-printable or non-ascii character")]
    InvalidAscii,
    /// A `string-utf8` that is not UTF-8.
    #[error("string-utf8 is not valid utf-8")]
    InvalidUtf8,
    /// A tuple key that is not a Clarity name.
    #[error("{0:?} is not a valid clarity name")]
    InvalidClarityName(String),
    /// A tuple built with the same key twice.
    #[error("tuple key {0:?} appears twice")]
    DuplicateTupleKey(String),
    /// An encoding that is valid but not the canonical one.
    #[error("non-canonical encoding: {0}")]
    NonCanonical(&'static str),
    /// Text that is not hex.
    #[error("invalid hex")]
    InvalidHex,
    /// A valid encoding of something this crate does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A transaction signature that does not verify.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
}

/// A Stacks transaction id: SHA512/256 of the signed transaction, shown as
/// hex in byte order (no reversal, unlike Bitcoin txids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StacksTxid(pub [u8; 32]);

impl fmt::Display for StacksTxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StacksTxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StacksTxid({self})")
    }
}

impl FromStr for StacksTxid {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        let bytes = hex::decode(s).map_err(|_| Error::InvalidHex)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidLength {
                what: "stacks txid",
                expected: 32,
                actual: bytes.len(),
            })?;
        Ok(StacksTxid(arr))
    }
}

impl serde::Serialize for StacksTxid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StacksTxid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
