//! Stacks transactions (SIP-005): single-signature P2PKH authorization,
//! contract-call, token-transfer and (versioned) smart-contract payloads, STX and fungible-token post
//! conditions; build, sign, verify, serialize, deserialize, txid.
//!
//! Encoding rules:
//! 1. Integers are big-endian; names carry a u8 length, lists a u32 count.
//! 2. Signing hashes the transaction with a cleared authorization (nonce 0,
//!    fee 0, 65 zero signature bytes; hash mode, signer and key encoding
//!    kept) — the *initial sighash* — then SHA512/256(initial ‖ auth type ‖
//!    fee ‖ nonce) — the *presign sighash* — which is signed with recoverable
//!    ECDSA (RFC 6979, low-S) and stored as recovery id ‖ r ‖ s.
//! 3. The txid is SHA512/256 of the serialized signed transaction.
//! 4. Only what this workspace builds is decoded: standard (not sponsored)
//!    single-signature P2PKH authorization. Anything else is refused with
//!    [`Error::Unsupported`], never misread.

use bitcoin::hashes::{hash160, Hash};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use sha2::{Digest, Sha512_256};

use crate::address::{ContractId, ContractName, PrincipalData, StacksAddress, StacksNetwork};
use crate::clarity::{push_address, push_name_u8, read_address, read_contract_name, Value};
use crate::codec::Reader;
use crate::{Error, StacksTxid};

/// The largest transaction accepted, in bytes.
pub const MAX_TRANSACTION_LEN: usize = 1 << 20;

/// Chain id of Stacks mainnet.
pub const CHAIN_ID_MAINNET: u32 = 0x0000_0001;
/// Chain id of Stacks testnet.
pub const CHAIN_ID_TESTNET: u32 = 0x8000_0000;

const AUTH_STANDARD: u8 = 0x04;
const HASH_MODE_P2PKH: u8 = 0x00;
const PAYLOAD_TOKEN_TRANSFER: u8 = 0x00;
const PAYLOAD_CONTRACT_CALL: u8 = 0x02;
const PAYLOAD_SMART_CONTRACT: u8 = 0x01;
const PAYLOAD_VERSIONED_SMART_CONTRACT: u8 = 0x06;

/// The Clarity version a contract is deployed with (the version byte of a
/// versioned smart-contract payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClarityVersion {
    /// Clarity 1 (epoch 2.0).
    Clarity1,
    /// Clarity 2 (epoch 2.1 on).
    Clarity2,
    /// Clarity 3 (epoch 3.0 on).
    Clarity3,
}

impl ClarityVersion {
    /// The version byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            ClarityVersion::Clarity1 => 1,
            ClarityVersion::Clarity2 => 2,
            ClarityVersion::Clarity3 => 3,
        }
    }

    /// The version for a wire byte.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an unknown version.
    pub fn from_byte(b: u8) -> Result<Self, Error> {
        match b {
            1 => Ok(ClarityVersion::Clarity1),
            2 => Ok(ClarityVersion::Clarity2),
            3 => Ok(ClarityVersion::Clarity3),
            v => Err(Error::Unsupported(format!("clarity version {v}"))),
        }
    }
}

/// Whether every byte of a contract's code body is one the node accepts
/// (printable ASCII and ASCII white space).
fn valid_code_body(code: &str) -> bool {
    code.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation() || c.is_ascii_whitespace())
}

/// SHA512/256, the hash Stacks uses for sighashes and txids.
pub fn sha512_256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha512_256::digest(data));
    out
}

/// A private key and the encoding of its public key (which decides the address).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StacksPrivateKey {
    /// The secret key.
    pub key: SecretKey,
    /// Whether the public key is used compressed.
    pub compressed: bool,
}

impl std::fmt::Debug for StacksPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StacksPrivateKey([redacted])")
    }
}

impl StacksPrivateKey {
    /// Returns the public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key(&Secp256k1::signing_only())
    }

    /// Returns the single-sig address on `network`.
    pub fn address(&self, network: StacksNetwork) -> StacksAddress {
        StacksAddress::p2pkh(network, &self.public_key(), self.compressed)
    }
}

/// Whether the transaction must be anchored (mined in a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorMode {
    /// Only in an anchored block.
    OnChainOnly = 1,
    /// Only in a microblock.
    OffChainOnly = 2,
    /// Either.
    Any = 3,
}

/// What happens to asset transfers not covered by a post condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostConditionMode {
    /// Allowed.
    Allow = 1,
    /// The transaction aborts.
    Deny = 2,
}

/// How an amount compares in a post condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FungibleConditionCode {
    /// Sent exactly.
    SentEq = 1,
    /// Sent more than.
    SentGt = 2,
    /// Sent at least.
    SentGe = 3,
    /// Sent less than.
    SentLt = 4,
    /// Sent at most.
    SentLe = 5,
}

/// Whose assets a post condition is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostConditionPrincipal {
    /// The transaction's sender.
    Origin,
    /// A standard principal.
    Standard(StacksAddress),
    /// A contract.
    Contract(ContractId),
}

/// A fungible token: the contract defining it and its name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetInfo {
    /// The defining contract.
    pub contract: ContractId,
    /// The token's name (`define-fungible-token`).
    pub asset_name: String,
}

/// A post condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCondition {
    /// About STX.
    Stx {
        /// Whose STX.
        principal: PostConditionPrincipal,
        /// The comparison.
        code: FungibleConditionCode,
        /// µSTX.
        amount: u64,
    },
    /// About a fungible token.
    Fungible {
        /// Whose tokens.
        principal: PostConditionPrincipal,
        /// Which token.
        asset: AssetInfo,
        /// The comparison.
        code: FungibleConditionCode,
        /// Token units.
        amount: u64,
    },
}

/// What the transaction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Transfer STX.
    TokenTransfer {
        /// The recipient.
        recipient: PrincipalData,
        /// µSTX.
        amount: u64,
        /// 34 bytes of memo.
        memo: [u8; 34],
    },
    /// Deploy a contract: payload type 0x01 without a Clarity version (the
    /// epoch's default), 0x06 (versioned smart contract) with one. The
    /// layout is the type byte, the version byte (0x06 only), the contract
    /// name (u8 length + ASCII) and the code body (u32 length + ASCII).
    SmartContract {
        /// The contract's name (its id is `origin.name`).
        name: ContractName,
        /// The Clarity source, printable ASCII and white space only.
        code_body: String,
        /// The Clarity version, `None` for the unversioned payload.
        clarity_version: Option<ClarityVersion>,
    },
    /// Call a public contract function.
    ContractCall {
        /// The contract.
        contract: ContractId,
        /// The function.
        function_name: String,
        /// The arguments.
        args: Vec<Value>,
    },
}

/// The single-signature spending condition of a standard authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleSig {
    /// hash160 of the signer's public key, as encoded.
    pub signer: [u8; 20],
    /// The account nonce.
    pub nonce: u64,
    /// The fee, µSTX.
    pub fee: u64,
    /// Whether the public key is compressed.
    pub compressed: bool,
    /// recovery id ‖ r ‖ s.
    pub signature: [u8; 65],
}

/// A Stacks transaction with standard single-sig P2PKH authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StacksTransaction {
    /// Mainnet or testnet (the version byte).
    pub network: StacksNetwork,
    /// The chain id.
    pub chain_id: u32,
    /// The spending condition.
    pub auth: SingleSig,
    /// Anchor mode.
    pub anchor_mode: AnchorMode,
    /// Post-condition mode.
    pub post_condition_mode: PostConditionMode,
    /// Post conditions.
    pub post_conditions: Vec<PostCondition>,
    /// The payload.
    pub payload: Payload,
}

fn valid_name(s: &str) -> bool {
    Value::tuple([(s, Value::Bool(true))]).is_ok()
}

impl StacksTransaction {
    /// Builds an unsigned transaction for `key` on `network` (with that
    /// network's chain id), anchor mode `Any`.
    ///
    /// # Errors
    /// When a function or asset name is not a valid Clarity name.
    pub fn new(
        network: StacksNetwork,
        key: &StacksPrivateKey,
        nonce: u64,
        fee: u64,
        post_condition_mode: PostConditionMode,
        post_conditions: Vec<PostCondition>,
        payload: Payload,
    ) -> Result<Self, Error> {
        if let Payload::ContractCall { function_name, .. } = &payload {
            if !valid_name(function_name) {
                return Err(Error::InvalidClarityName(function_name.clone()));
            }
        }
        if let Payload::SmartContract { code_body, .. } = &payload {
            if !valid_code_body(code_body) {
                return Err(Error::InvalidAscii);
            }
        }
        for pc in &post_conditions {
            if let PostCondition::Fungible { asset, .. } = pc {
                if !valid_name(&asset.asset_name) {
                    return Err(Error::InvalidClarityName(asset.asset_name.clone()));
                }
            }
        }
        Ok(StacksTransaction {
            network,
            chain_id: match network {
                StacksNetwork::Mainnet => CHAIN_ID_MAINNET,
                StacksNetwork::Testnet => CHAIN_ID_TESTNET,
            },
            auth: SingleSig {
                signer: *key.address(network).hash160(),
                nonce,
                fee,
                compressed: key.compressed,
                signature: [0u8; 65],
            },
            anchor_mode: AnchorMode::Any,
            post_condition_mode,
            post_conditions,
            payload,
        })
    }

    /// Returns the sender's address.
    pub fn origin(&self) -> StacksAddress {
        StacksAddress::new(self.network.singlesig_version(), self.auth.signer)
            .expect("single-sig versions are below 32")
    }

    /// Appends the serialization to `out`.
    pub fn serialize_to(&self, out: &mut Vec<u8>) {
        out.push(match self.network {
            StacksNetwork::Mainnet => 0x00,
            StacksNetwork::Testnet => 0x80,
        });
        out.extend_from_slice(&self.chain_id.to_be_bytes());
        out.push(AUTH_STANDARD);
        out.push(HASH_MODE_P2PKH);
        out.extend_from_slice(&self.auth.signer);
        out.extend_from_slice(&self.auth.nonce.to_be_bytes());
        out.extend_from_slice(&self.auth.fee.to_be_bytes());
        out.push(if self.auth.compressed { 0x00 } else { 0x01 });
        out.extend_from_slice(&self.auth.signature);
        out.push(self.anchor_mode as u8);
        out.push(self.post_condition_mode as u8);
        crate::clarity::push_len_u32(out, self.post_conditions.len());
        for pc in &self.post_conditions {
            write_post_condition(out, pc);
        }
        write_payload(out, &self.payload);
    }

    /// Returns the serialization.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.serialize_to(&mut out);
        out
    }

    /// Returns the serialized payload alone (what `/v2/fees/transaction` takes).
    pub fn payload_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_payload(&mut out, &self.payload);
        out
    }

    /// Returns the txid.
    pub fn txid(&self) -> StacksTxid {
        StacksTxid(sha512_256(&self.serialize()))
    }

    /// Returns the initial sighash (authorization cleared).
    pub fn initial_sighash(&self) -> [u8; 32] {
        let mut t = self.clone();
        t.auth.nonce = 0;
        t.auth.fee = 0;
        t.auth.signature = [0u8; 65];
        sha512_256(&t.serialize())
    }

    /// Returns the presign sighash: what the key signs.
    pub fn presign_sighash(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(49);
        buf.extend_from_slice(&self.initial_sighash());
        buf.push(AUTH_STANDARD);
        buf.extend_from_slice(&self.auth.fee.to_be_bytes());
        buf.extend_from_slice(&self.auth.nonce.to_be_bytes());
        sha512_256(&buf)
    }

    /// Signs the transaction with `key`, which must be the one it was built for.
    ///
    /// # Errors
    /// When `key` does not match the signer.
    pub fn sign(&mut self, key: &StacksPrivateKey) -> Result<(), Error> {
        if *key.address(self.network).hash160() != self.auth.signer
            || key.compressed != self.auth.compressed
        {
            return Err(Error::BadSignature(
                "the key is not this transaction's signer",
            ));
        }
        let digest = self.presign_sighash();
        let sig = Secp256k1::signing_only()
            .sign_ecdsa_recoverable(&Message::from_digest(digest), &key.key);
        let (recid, rs) = sig.serialize_compact();
        self.auth.signature[0] = u8::try_from(recid.to_i32())
            .map_err(|_| Error::BadSignature("recovery id out of range"))?;
        self.auth.signature[1..].copy_from_slice(&rs);
        Ok(())
    }

    /// Verifies the signature: the key recovered from it, encoded as the key
    /// encoding says, must hash to the signer. Returns that key.
    ///
    /// # Errors
    /// When the signature is malformed, high-S, or from another key.
    pub fn verify(&self) -> Result<PublicKey, Error> {
        let sig = &self.auth.signature;
        let recid = RecoveryId::from_i32(i32::from(sig[0]))
            .map_err(|_| Error::BadSignature("recovery id is not 0 to 3"))?;
        let rsig = RecoverableSignature::from_compact(&sig[1..], recid)
            .map_err(|_| Error::BadSignature("r and s are not a valid signature"))?;
        let mut normal = rsig.to_standard();
        let as_given = normal;
        normal.normalize_s();
        if normal != as_given {
            return Err(Error::BadSignature("signature is not low-S"));
        }
        let key = Secp256k1::verification_only()
            .recover_ecdsa(&Message::from_digest(self.presign_sighash()), &rsig)
            .map_err(|_| Error::BadSignature("no key recovers from the signature"))?;
        let encoded: Vec<u8> = if self.auth.compressed {
            key.serialize().to_vec()
        } else {
            key.serialize_uncompressed().to_vec()
        };
        if hash160::Hash::hash(&encoded).to_byte_array() != self.auth.signer {
            return Err(Error::BadSignature("signature is not from the signer"));
        }
        Ok(key)
    }

    /// Decodes a transaction from untrusted bytes, failing on trailing bytes.
    ///
    /// # Errors
    /// Any malformed, oversized, non-canonical or unsupported encoding.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_TRANSACTION_LEN {
            return Err(Error::LengthTooLarge);
        }
        let mut r = Reader::new(bytes);
        let network = match r.u8()? {
            0x00 => StacksNetwork::Mainnet,
            0x80 => StacksNetwork::Testnet,
            v => return Err(Error::Unsupported(format!("transaction version {v:#04x}"))),
        };
        let chain_id = r.u32()?;
        match r.u8()? {
            AUTH_STANDARD => {}
            0x05 => return Err(Error::Unsupported("sponsored authorization".into())),
            v => return Err(Error::Unsupported(format!("authorization type {v:#04x}"))),
        }
        match r.u8()? {
            HASH_MODE_P2PKH => {}
            v => return Err(Error::Unsupported(format!("hash mode {v:#04x}"))),
        }
        let signer = r.array::<20>()?;
        let nonce = u64::from_be_bytes(r.array()?);
        let fee = u64::from_be_bytes(r.array()?);
        let compressed = match r.u8()? {
            0x00 => true,
            0x01 => false,
            v => return Err(Error::Unsupported(format!("key encoding {v:#04x}"))),
        };
        let signature = r.array::<65>()?;
        let anchor_mode = match r.u8()? {
            1 => AnchorMode::OnChainOnly,
            2 => AnchorMode::OffChainOnly,
            3 => AnchorMode::Any,
            v => return Err(Error::Unsupported(format!("anchor mode {v}"))),
        };
        let post_condition_mode = match r.u8()? {
            1 => PostConditionMode::Allow,
            2 => PostConditionMode::Deny,
            v => return Err(Error::Unsupported(format!("post-condition mode {v}"))),
        };
        let n = r.count(11)?;
        let mut post_conditions = Vec::with_capacity(n);
        for _ in 0..n {
            post_conditions.push(read_post_condition(&mut r)?);
        }
        let payload = match r.u8()? {
            PAYLOAD_TOKEN_TRANSFER => {
                let recipient = match Value::read(&mut r, 0)? {
                    Value::Principal(p) => p,
                    _ => {
                        return Err(Error::Unsupported(
                            "token transfer to a non-principal".into(),
                        ))
                    }
                };
                let amount = u64::from_be_bytes(r.array()?);
                let memo = r.array::<34>()?;
                Payload::TokenTransfer {
                    recipient,
                    amount,
                    memo,
                }
            }
            PAYLOAD_CONTRACT_CALL => {
                let address = read_address(&mut r)?;
                let name = read_contract_name(&mut r)?;
                let function_name = std::str::from_utf8(r.bytes_u8()?)
                    .map_err(|_| Error::InvalidClarityName("(not utf-8)".into()))?
                    .to_owned();
                if !valid_name(&function_name) {
                    return Err(Error::InvalidClarityName(function_name));
                }
                let n = r.count(1)?;
                let mut args = Vec::with_capacity(n);
                for _ in 0..n {
                    args.push(Value::read(&mut r, 0)?);
                }
                Payload::ContractCall {
                    contract: ContractId { address, name },
                    function_name,
                    args,
                }
            }
            t @ (PAYLOAD_SMART_CONTRACT | PAYLOAD_VERSIONED_SMART_CONTRACT) => {
                let clarity_version = if t == PAYLOAD_VERSIONED_SMART_CONTRACT {
                    Some(ClarityVersion::from_byte(r.u8()?)?)
                } else {
                    None
                };
                let name = read_contract_name(&mut r)?;
                let code_body = std::str::from_utf8(r.bytes_u32()?)
                    .ok()
                    .filter(|c| valid_code_body(c))
                    .ok_or(Error::InvalidAscii)?
                    .to_owned();
                Payload::SmartContract {
                    name,
                    code_body,
                    clarity_version,
                }
            }
            v => return Err(Error::Unsupported(format!("payload type {v:#04x}"))),
        };
        r.finish()?;
        Ok(StacksTransaction {
            network,
            chain_id,
            auth: SingleSig {
                signer,
                nonce,
                fee,
                compressed,
                signature,
            },
            anchor_mode,
            post_condition_mode,
            post_conditions,
            payload,
        })
    }
}

fn write_payload(out: &mut Vec<u8>, payload: &Payload) {
    match payload {
        Payload::TokenTransfer {
            recipient,
            amount,
            memo,
        } => {
            out.push(PAYLOAD_TOKEN_TRANSFER);
            Value::Principal(recipient.clone()).serialize_to(out);
            out.extend_from_slice(&amount.to_be_bytes());
            out.extend_from_slice(memo);
        }
        Payload::SmartContract {
            name,
            code_body,
            clarity_version,
        } => {
            match clarity_version {
                Some(v) => {
                    out.push(PAYLOAD_VERSIONED_SMART_CONTRACT);
                    out.push(v.to_byte());
                }
                None => out.push(PAYLOAD_SMART_CONTRACT),
            }
            push_name_u8(out, name.as_str());
            crate::clarity::push_len_u32(out, code_body.len());
            out.extend_from_slice(code_body.as_bytes());
        }
        Payload::ContractCall {
            contract,
            function_name,
            args,
        } => {
            out.push(PAYLOAD_CONTRACT_CALL);
            push_address(out, &contract.address);
            push_name_u8(out, contract.name.as_str());
            push_name_u8(out, function_name);
            crate::clarity::push_len_u32(out, args.len());
            for a in args {
                a.serialize_to(out);
            }
        }
    }
}

fn write_pc_principal(out: &mut Vec<u8>, p: &PostConditionPrincipal) {
    match p {
        PostConditionPrincipal::Origin => out.push(0x01),
        PostConditionPrincipal::Standard(a) => {
            out.push(0x02);
            push_address(out, a);
        }
        PostConditionPrincipal::Contract(c) => {
            out.push(0x03);
            push_address(out, &c.address);
            push_name_u8(out, c.name.as_str());
        }
    }
}

fn write_post_condition(out: &mut Vec<u8>, pc: &PostCondition) {
    match pc {
        PostCondition::Stx {
            principal,
            code,
            amount,
        } => {
            out.push(0x00);
            write_pc_principal(out, principal);
            out.push(*code as u8);
            out.extend_from_slice(&amount.to_be_bytes());
        }
        PostCondition::Fungible {
            principal,
            asset,
            code,
            amount,
        } => {
            out.push(0x01);
            write_pc_principal(out, principal);
            push_address(out, &asset.contract.address);
            push_name_u8(out, asset.contract.name.as_str());
            push_name_u8(out, &asset.asset_name);
            out.push(*code as u8);
            out.extend_from_slice(&amount.to_be_bytes());
        }
    }
}

fn read_pc_principal(r: &mut Reader<'_>) -> Result<PostConditionPrincipal, Error> {
    Ok(match r.u8()? {
        0x01 => PostConditionPrincipal::Origin,
        0x02 => PostConditionPrincipal::Standard(read_address(r)?),
        0x03 => {
            let address = read_address(r)?;
            let name: ContractName = read_contract_name(r)?;
            PostConditionPrincipal::Contract(ContractId { address, name })
        }
        v => {
            return Err(Error::Unsupported(format!(
                "post-condition principal {v:#04x}"
            )))
        }
    })
}

fn read_code(r: &mut Reader<'_>) -> Result<FungibleConditionCode, Error> {
    Ok(match r.u8()? {
        1 => FungibleConditionCode::SentEq,
        2 => FungibleConditionCode::SentGt,
        3 => FungibleConditionCode::SentGe,
        4 => FungibleConditionCode::SentLt,
        5 => FungibleConditionCode::SentLe,
        v => return Err(Error::Unsupported(format!("condition code {v}"))),
    })
}

fn read_post_condition(r: &mut Reader<'_>) -> Result<PostCondition, Error> {
    Ok(match r.u8()? {
        0x00 => {
            let principal = read_pc_principal(r)?;
            let code = read_code(r)?;
            PostCondition::Stx {
                principal,
                code,
                amount: u64::from_be_bytes(r.array()?),
            }
        }
        0x01 => {
            let principal = read_pc_principal(r)?;
            let address = read_address(r)?;
            let name = read_contract_name(r)?;
            let asset_name = std::str::from_utf8(r.bytes_u8()?)
                .map_err(|_| Error::InvalidClarityName("(not utf-8)".into()))?
                .to_owned();
            if !valid_name(&asset_name) {
                return Err(Error::InvalidClarityName(asset_name));
            }
            let code = read_code(r)?;
            PostCondition::Fungible {
                principal,
                asset: AssetInfo {
                    contract: ContractId { address, name },
                    asset_name,
                },
                code,
                amount: u64::from_be_bytes(r.array()?),
            }
        }
        v => return Err(Error::Unsupported(format!("post-condition type {v:#04x}"))),
    })
}
