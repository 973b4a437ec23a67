//! Stacks addresses and principals.

use std::fmt;
use std::str::FromStr;

use bitcoin::hashes::{hash160, Hash};
use bitcoin::secp256k1::PublicKey;

use crate::{c32, Error};

/// Address version bytes used by Stacks.
pub mod version {
    /// Mainnet single-signature (`SP…`).
    pub const MAINNET_SINGLESIG: u8 = 22;
    /// Mainnet multi-signature (`SM…`).
    pub const MAINNET_MULTISIG: u8 = 20;
    /// Testnet single-signature (`ST…`).
    pub const TESTNET_SINGLESIG: u8 = 26;
    /// Testnet multi-signature (`SN…`).
    pub const TESTNET_MULTISIG: u8 = 21;
}

/// Which Stacks network a transaction or address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StacksNetwork {
    /// Stacks mainnet (transaction version 0x00, chain id 1).
    Mainnet,
    /// Stacks testnet (transaction version 0x80, chain id 0x80000000); also
    /// used by regtest and devnets.
    Testnet,
}

impl StacksNetwork {
    /// Returns the version byte of a single-signature address on this network.
    pub fn singlesig_version(self) -> u8 {
        match self {
            StacksNetwork::Mainnet => version::MAINNET_SINGLESIG,
            StacksNetwork::Testnet => version::TESTNET_SINGLESIG,
        }
    }

    /// Returns the network an address version byte belongs to, if it is one
    /// of the four versions Stacks uses.
    pub fn of_version(v: u8) -> Option<StacksNetwork> {
        match v {
            version::MAINNET_SINGLESIG | version::MAINNET_MULTISIG => Some(StacksNetwork::Mainnet),
            version::TESTNET_SINGLESIG | version::TESTNET_MULTISIG => Some(StacksNetwork::Testnet),
            _ => None,
        }
    }
}

/// A Stacks address: a version (below 32) and a hash160.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StacksAddress {
    version: u8,
    hash160: [u8; 20],
}

impl StacksAddress {
    /// Creates an address, failing if `version` is not below 32.
    pub fn new(version: u8, hash160: [u8; 20]) -> Result<Self, Error> {
        if version >= 32 {
            return Err(Error::InvalidVersion(version));
        }
        Ok(StacksAddress { version, hash160 })
    }

    /// Returns the single-signature (P2PKH) address of a public key on `network`.
    ///
    /// The key is hashed as it is encoded: compressed keys give a different
    /// address than the same key uncompressed.
    pub fn p2pkh(network: StacksNetwork, key: &PublicKey, compressed: bool) -> Self {
        let bytes: Vec<u8> = if compressed {
            key.serialize().to_vec()
        } else {
            key.serialize_uncompressed().to_vec()
        };
        StacksAddress {
            version: network.singlesig_version(),
            hash160: hash160::Hash::hash(&bytes).to_byte_array(),
        }
    }

    /// Returns the version byte.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Returns the hash160.
    pub fn hash160(&self) -> &[u8; 20] {
        &self.hash160
    }

    /// Returns the network of this address, if its version is a known one.
    pub fn network(&self) -> Option<StacksNetwork> {
        StacksNetwork::of_version(self.version)
    }
}

impl fmt::Display for StacksAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = c32::check_encode(self.version, &self.hash160).map_err(|_| fmt::Error)?;
        write!(f, "S{s}")
    }
}

impl fmt::Debug for StacksAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StacksAddress({self})")
    }
}

impl FromStr for StacksAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let rest = s
            .strip_prefix('S')
            .ok_or_else(|| Error::InvalidAddress(s.to_owned()))?;
        let (version, data) = c32::check_decode(rest)?;
        let hash160: [u8; 20] = data
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidLength {
                what: "address hash160",
                expected: 20,
                actual: data.len(),
            })?;
        StacksAddress::new(version, hash160)
    }
}

/// The name of a contract: 1 to 128 characters, a letter first, then letters,
/// digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractName(String);

/// The longest contract name a principal may carry.
pub const MAX_CONTRACT_NAME_LEN: usize = 128;

impl ContractName {
    /// Returns the name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContractName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_CONTRACT_NAME_LEN
            && bytes[0].is_ascii_alphabetic()
            && bytes
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
        if ok {
            Ok(ContractName(s.to_owned()))
        } else {
            Err(Error::InvalidContractName(s.to_owned()))
        }
    }
}

impl fmt::Display for ContractName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A contract: the address that deployed it and its name (`ADDR.name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractId {
    /// The deployer.
    pub address: StacksAddress,
    /// The contract's name.
    pub name: ContractName,
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.address, self.name)
    }
}

impl FromStr for ContractId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (addr, name) = s
            .split_once('.')
            .ok_or_else(|| Error::InvalidContractId(s.to_owned()))?;
        Ok(ContractId {
            address: addr.parse()?,
            name: name.parse()?,
        })
    }
}

/// A principal: a standard account or a contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalData {
    /// A standard (account) principal.
    Standard(StacksAddress),
    /// A contract principal.
    Contract(ContractId),
}

impl PrincipalData {
    /// Returns the address part of the principal (the deployer for a contract).
    pub fn address(&self) -> &StacksAddress {
        match self {
            PrincipalData::Standard(a) => a,
            PrincipalData::Contract(c) => &c.address,
        }
    }
}

impl fmt::Display for PrincipalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalData::Standard(a) => a.fmt(f),
            PrincipalData::Contract(c) => c.fmt(f),
        }
    }
}

impl FromStr for PrincipalData {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.contains('.') {
            Ok(PrincipalData::Contract(s.parse()?))
        } else {
            Ok(PrincipalData::Standard(s.parse()?))
        }
    }
}

impl From<StacksAddress> for PrincipalData {
    fn from(a: StacksAddress) -> Self {
        PrincipalData::Standard(a)
    }
}

macro_rules! serde_via_str {
    ($t:ty, $what:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format_args!("invalid {}: {e}", $what)))
            }
        }
    };
}

serde_via_str!(StacksAddress, "stacks address");
serde_via_str!(PrincipalData, "principal");
serde_via_str!(ContractId, "contract id");

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> [u8; 20] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Vectors from stacks-common `address/c32.rs` (reference §1.4).
    #[test]
    fn published_address_vectors() {
        let hash = h("a46ff88886c2ef9762d970b4d2c63678835bd39d");
        let cases = [
            (22, hash, "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7"),
            (26, hash, "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ"),
            (22, [0u8; 20], "SP000000000000000000002Q6VF78"),
        ];
        for (v, hash, text) in cases {
            let addr = StacksAddress::new(v, hash).unwrap();
            assert_eq!(addr.to_string(), text);
            assert_eq!(text.parse::<StacksAddress>().unwrap(), addr);
        }
    }

    #[test]
    fn parses_the_burn_ops_doc_example_principal() {
        let p: PrincipalData = "S0000000000000000000002AA028H.awesome_contract"
            .parse()
            .unwrap();
        match &p {
            PrincipalData::Contract(c) => {
                assert_eq!(c.address.version(), 0);
                assert_eq!(c.name.as_str(), "awesome_contract");
            }
            other => panic!("expected a contract principal, got {other:?}"),
        }
        assert_eq!(
            p.to_string(),
            "S0000000000000000000002AA028H.awesome_contract"
        );
    }

    #[test]
    fn rejects_malformed_principals_with_clear_errors() {
        assert!(matches!(
            "XP000".parse::<StacksAddress>(),
            Err(Error::InvalidAddress(_))
        ));
        assert_eq!(
            "SP000000000000000000002Q6VF79".parse::<StacksAddress>(),
            Err(Error::BadChecksum)
        );
        assert!(matches!(
            "SP000000000000000000002Q6VF78.9bad".parse::<PrincipalData>(),
            Err(Error::InvalidContractName(_))
        ));
        assert!("SP000000000000000000002Q6VF78."
            .parse::<PrincipalData>()
            .is_err());
        assert!("".parse::<PrincipalData>().is_err());
    }

    #[test]
    fn network_of_versions() {
        let a: StacksAddress = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        assert_eq!(a.network(), Some(StacksNetwork::Testnet));
        assert_eq!(StacksAddress::new(0, [0; 20]).unwrap().network(), None);
        assert!(StacksAddress::new(32, [0; 20]).is_err());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let p: PrincipalData = "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7.sbtc"
            .parse()
            .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7.sbtc\"");
        assert_eq!(serde_json::from_str::<PrincipalData>(&json).unwrap(), p);
        assert!(serde_json::from_str::<PrincipalData>("\"nope\"").is_err());
    }
}
