//! Peg operations as they stand on Bitcoin, parsed and built.
//!
//! Each op is a transaction whose output 0 is `OP_RETURN magic(2) ‖ op(1) ‖ data`
//! (the magic is the stacks-node's `burnchain.magic_bytes`):
//!
//! - **peg-in** `<`: data = principal version (1) ‖ hash160 (20) ‖ contract
//!   name (up to 40 bytes, NUL-padded; absent for a standard principal) ‖
//!   memo (after byte 61). Output 1 pays the peg wallet; its value is the amount.
//! - **peg-out request** `>`: data = amount u64 BE (8) ‖ signature (65) ‖ memo.
//!   Output 1 pays the recipient (dust); output 2 pays the fulfilment fee to
//!   the peg wallet.
//! - **peg-out fulfilment** `!`: data = Stacks chain tip (32) ‖ memo. Input 0
//!   spends the request's output 2; output 1 pays the recipient.
//!
//! Parsing takes untrusted transactions: it never panics, and anything
//! malformed under our magic is reported, not guessed at.

use bitcoin::blockdata::opcodes::all::OP_RETURN;
use bitcoin::blockdata::script::Instruction;
use bitcoin::{
    Address, Amount, Block, BlockHash, Network, Script, ScriptBuf, Transaction, TxIn, TxOut,
};
use stacks_wire::{ContractId, ContractName, PrincipalData, StacksAddress};

use crate::{BurnHeight, MessageSignature, PegInOp, PegOp, PegOutFulfillOp, PegOutRequestOp};

/// The op byte of a peg-in.
pub const OP_PEG_IN: u8 = b'<';
/// The op byte of a peg-out request.
pub const OP_PEG_OUT_REQUEST: u8 = b'>';
/// The op byte of a peg-out fulfilment.
pub const OP_PEG_OUT_FULFILL: u8 = b'!';

/// Where a peg-in's contract name ends and its memo starts, in the data.
const PEG_IN_MEMO_START: usize = 61;
/// The longest contract name a peg-in can carry.
pub const PEG_IN_MAX_CONTRACT_NAME: usize = 40;

/// Why a transaction that carries our magic is not a valid op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The data is shorter than the op needs.
    #[error("{op} data has {len} bytes, needs at least {needed}")]
    TooShort {
        /// The op byte.
        op: char,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A required output is missing.
    #[error("output {0} is missing")]
    MissingOutput(usize),
    /// An output's script is no address on the network.
    #[error("output {0} pays no standard address")]
    NotAnAddress(usize),
    /// The peg-in recipient is not a valid principal.
    #[error("invalid recipient: {0}")]
    BadRecipient(String),
}

/// Where an op was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The block's height.
    pub height: BurnHeight,
    /// The block's hash.
    pub block_hash: BlockHash,
    /// The transaction's index in the block.
    pub vtxindex: u32,
}

/// Returns `(magic, op, data)` if `script` is `OP_RETURN <one push>` of at least 3 bytes.
pub fn parse_op_return(script: &Script) -> Option<([u8; 2], u8, &[u8])> {
    let mut ins = script.instructions();
    match ins.next()? {
        Ok(Instruction::Op(op)) if op == OP_RETURN => {}
        _ => return None,
    }
    let push = match ins.next()? {
        Ok(Instruction::PushBytes(b)) => b.as_bytes(),
        _ => return None,
    };
    if ins.next().is_some() || push.len() < 3 {
        return None;
    }
    Some(([push[0], push[1]], push[2], &push[3..]))
}

fn address_of(
    tx: &Transaction,
    index: usize,
    network: Network,
) -> Result<(Address, Amount), ParseError> {
    let out = tx
        .output
        .get(index)
        .ok_or(ParseError::MissingOutput(index))?;
    let addr = Address::from_script(&out.script_pubkey, network)
        .map_err(|_| ParseError::NotAnAddress(index))?;
    Ok((addr, out.value))
}

fn parse_recipient(data: &[u8]) -> Result<PrincipalData, ParseError> {
    let version = data[0];
    let mut hash = [0u8; 20];
    hash.copy_from_slice(&data[1..21]);
    let address =
        StacksAddress::new(version, hash).map_err(|e| ParseError::BadRecipient(e.to_string()))?;
    let name_area = data
        .get(21..data.len().min(PEG_IN_MEMO_START))
        .unwrap_or(&[]);
    let name_len = name_area
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(name_area.len());
    if name_len == 0 {
        return Ok(PrincipalData::Standard(address));
    }
    let name = std::str::from_utf8(&name_area[..name_len])
        .map_err(|_| ParseError::BadRecipient("contract name is not utf-8".into()))?;
    let name: ContractName = name
        .parse()
        .map_err(|e: stacks_wire::Error| ParseError::BadRecipient(e.to_string()))?;
    Ok(PrincipalData::Contract(ContractId { address, name }))
}

/// Returns the op byte and data of `tx` if its output 0 is our OP_RETURN.
fn op_of(tx: &Transaction, magic: [u8; 2]) -> Option<(u8, &[u8])> {
    let (m, op, data) = parse_op_return(&tx.output.first()?.script_pubkey)?;
    (m == magic).then_some((op, data))
}

/// Parses one transaction: `Ok(None)` when it is not a peg-in or peg-out
/// request under `magic`, an error when it claims to be one but is malformed.
pub fn parse_transaction(
    tx: &Transaction,
    magic: [u8; 2],
    network: Network,
    at: Position,
) -> Result<Option<PegOp>, ParseError> {
    let Some((op, data)) = op_of(tx, magic) else {
        return Ok(None);
    };
    let txid = tx.compute_txid();
    match op {
        OP_PEG_IN => {
            if data.len() < 21 {
                return Err(ParseError::TooShort {
                    op: '<',
                    len: data.len(),
                    needed: 21,
                });
            }
            let recipient = parse_recipient(data)?;
            let (peg_wallet, amount) = address_of(tx, 1, network)?;
            Ok(Some(PegOp::PegIn(PegInOp {
                recipient,
                peg_wallet_address: peg_wallet.into(),
                amount,
                memo: data.get(PEG_IN_MEMO_START..).unwrap_or(&[]).to_vec(),
                txid,
                vtxindex: at.vtxindex,
                block_height: at.height,
                burn_header_hash: at.block_hash,
            })))
        }
        OP_PEG_OUT_REQUEST => {
            if data.len() < 73 {
                return Err(ParseError::TooShort {
                    op: '>',
                    len: data.len(),
                    needed: 73,
                });
            }
            let mut amount = [0u8; 8];
            amount.copy_from_slice(&data[..8]);
            let mut sig = [0u8; 65];
            sig.copy_from_slice(&data[8..73]);
            let (recipient, _) = address_of(tx, 1, network)?;
            let (peg_wallet, fee) = address_of(tx, 2, network)?;
            Ok(Some(PegOp::PegOutRequest(PegOutRequestOp {
                amount: Amount::from_sat(u64::from_be_bytes(amount)),
                recipient: recipient.into(),
                signature: MessageSignature(sig),
                peg_wallet_address: peg_wallet.into(),
                fulfillment_fee: fee,
                memo: data[73..].to_vec(),
                txid,
                vtxindex: at.vtxindex,
                block_height: at.height,
                burn_header_hash: at.block_hash,
            })))
        }
        _ => Ok(None),
    }
}

/// Parses a peg-out fulfilment, or `Ok(None)` if `tx` is not one under `magic`.
pub fn parse_fulfillment(
    tx: &Transaction,
    magic: [u8; 2],
    network: Network,
    at: Position,
) -> Result<Option<PegOutFulfillOp>, ParseError> {
    let Some((OP_PEG_OUT_FULFILL, data)) = op_of(tx, magic) else {
        return Ok(None);
    };
    if data.len() < 32 {
        return Err(ParseError::TooShort {
            op: '!',
            len: data.len(),
            needed: 32,
        });
    }
    let (recipient, amount) = address_of(tx, 1, network)?;
    let request = tx
        .input
        .first()
        .ok_or(ParseError::MissingOutput(0))?
        .previous_output;
    Ok(Some(PegOutFulfillOp {
        chain_tip: data[..32].to_vec(),
        amount,
        recipient: recipient.into(),
        request_ref: request.txid,
        memo: data[32..].to_vec(),
        txid: tx.compute_txid(),
        vtxindex: at.vtxindex,
        block_height: at.height,
        burn_header_hash: at.block_hash,
    }))
}

/// Parses every peg-in and peg-out request of a block, in block order. The
/// second list holds the malformed ones (by txid), for the caller to log.
pub fn parse_block(
    block: &Block,
    height: BurnHeight,
    magic: [u8; 2],
    network: Network,
) -> (Vec<PegOp>, Vec<(bitcoin::Txid, ParseError)>) {
    let block_hash = block.block_hash();
    let mut ops = Vec::new();
    let mut bad = Vec::new();
    for (i, tx) in block.txdata.iter().enumerate() {
        let at = Position {
            height,
            block_hash,
            vtxindex: u32::try_from(i).unwrap_or(u32::MAX),
        };
        match parse_transaction(tx, magic, network, at) {
            Ok(Some(op)) => ops.push(op),
            Ok(None) => {}
            Err(e) => bad.push((tx.compute_txid(), e)),
        }
    }
    (ops, bad)
}

/// Returns the OP_RETURN output of a peg-in to `recipient`.
///
/// # Errors
/// When the memo does not fit the 80-byte OP_RETURN limit.
pub fn peg_in_op_return(
    magic: [u8; 2],
    recipient: &PrincipalData,
    memo: &[u8],
) -> Result<ScriptBuf, String> {
    let mut data = vec![magic[0], magic[1], OP_PEG_IN, recipient.address().version()];
    data.extend_from_slice(recipient.address().hash160());
    let name = match recipient {
        PrincipalData::Contract(c) => c.name.as_str().as_bytes(),
        PrincipalData::Standard(_) => &[],
    };
    if name.len() > PEG_IN_MAX_CONTRACT_NAME {
        return Err(format!(
            "contract name longer than {PEG_IN_MAX_CONTRACT_NAME} bytes"
        ));
    }
    if !name.is_empty() || !memo.is_empty() {
        let mut padded = [0u8; PEG_IN_MAX_CONTRACT_NAME];
        padded[..name.len()].copy_from_slice(name);
        data.extend_from_slice(&padded);
    }
    data.extend_from_slice(memo);
    op_return(data)
}

/// Returns the OP_RETURN output of a peg-out request.
///
/// # Errors
/// When the memo does not fit the 80-byte OP_RETURN limit.
pub fn peg_out_request_op_return(
    magic: [u8; 2],
    amount: Amount,
    signature: &MessageSignature,
    memo: &[u8],
) -> Result<ScriptBuf, String> {
    let mut data = vec![magic[0], magic[1], OP_PEG_OUT_REQUEST];
    data.extend_from_slice(&amount.to_sat().to_be_bytes());
    data.extend_from_slice(&signature.0);
    data.extend_from_slice(memo);
    op_return(data)
}

fn op_return(data: Vec<u8>) -> Result<ScriptBuf, String> {
    if data.len() > 80 {
        return Err(format!("OP_RETURN data of {} bytes exceeds 80", data.len()));
    }
    let push = bitcoin::script::PushBytesBuf::try_from(data).map_err(|e| e.to_string())?;
    Ok(ScriptBuf::new_op_return(push))
}

/// Builds an unsigned peg-in: output 0 the OP_RETURN, output 1 `amount` to
/// the peg wallet, then `change` if given.
pub fn peg_in_transaction(
    inputs: Vec<TxIn>,
    op_return: ScriptBuf,
    peg_wallet: &Address,
    amount: Amount,
    change: Option<TxOut>,
) -> Transaction {
    let mut output = vec![
        TxOut {
            value: Amount::ZERO,
            script_pubkey: op_return,
        },
        TxOut {
            value: amount,
            script_pubkey: peg_wallet.script_pubkey(),
        },
    ];
    output.extend(change);
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: inputs,
        output,
    }
}

/// Builds an unsigned peg-out request: output 0 the OP_RETURN, output 1 a
/// dust payment to the recipient, output 2 the fulfilment fee to the peg
/// wallet, then `change` if given.
pub fn peg_out_request_transaction(
    inputs: Vec<TxIn>,
    op_return: ScriptBuf,
    recipient: &Address,
    peg_wallet: &Address,
    fulfillment_fee: Amount,
    change: Option<TxOut>,
) -> Transaction {
    let recipient_script = recipient.script_pubkey();
    let dust = recipient_script.minimal_non_dust();
    let mut output = vec![
        TxOut {
            value: Amount::ZERO,
            script_pubkey: op_return,
        },
        TxOut {
            value: dust,
            script_pubkey: recipient_script,
        },
        TxOut {
            value: fulfillment_fee,
            script_pubkey: peg_wallet.script_pubkey(),
        },
    ];
    output.extend(change);
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: inputs,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peg_out_request_sighash;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::SecretKey;
    use proptest::prelude::*;
    use stacks_wire::StacksNetwork;

    const MAGIC: [u8; 2] = *b"T2";

    fn peg() -> Address {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let (xonly, _) = SecretKey::from_slice(&[3; 32])
            .unwrap()
            .public_key(&secp)
            .x_only_public_key();
        Address::p2tr(&secp, xonly, None, Network::Regtest)
    }

    fn recipient_btc() -> Address {
        "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse::<Address<_>>()
            .unwrap()
            .assume_checked()
    }

    fn at() -> Position {
        Position {
            height: BurnHeight(7),
            block_hash: BlockHash::all_zeros(),
            vtxindex: 3,
        }
    }

    #[test]
    fn peg_in_to_a_standard_principal_round_trips() {
        let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let tx = peg_in_transaction(
            vec![TxIn::default()],
            peg_in_op_return(MAGIC, &who, b"").unwrap(),
            &peg(),
            Amount::from_sat(5000),
            None,
        );
        let Some(PegOp::PegIn(op)) = parse_transaction(&tx, MAGIC, Network::Regtest, at()).unwrap()
        else {
            panic!()
        };
        assert_eq!(op.recipient, who);
        assert_eq!(op.amount, Amount::from_sat(5000));
        assert_eq!(op.peg_wallet_address.script_pubkey(), peg().script_pubkey());
        assert_eq!((op.vtxindex, op.block_height), (3, BurnHeight(7)));
        assert_eq!(op.txid, tx.compute_txid());
        assert!(op.memo.is_empty());
    }

    #[test]
    fn peg_in_to_a_contract_with_memo_round_trips() {
        let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ.my-vault_2"
            .parse()
            .unwrap();
        let tx = peg_in_transaction(
            vec![],
            peg_in_op_return(MAGIC, &who, b"hi").unwrap(),
            &peg(),
            Amount::from_sat(1),
            None,
        );
        let Some(PegOp::PegIn(op)) = parse_transaction(&tx, MAGIC, Network::Regtest, at()).unwrap()
        else {
            panic!()
        };
        assert_eq!(op.recipient, who);
        assert_eq!(op.memo, b"hi");
        // A standard principal with a memo keeps the padding, so the memo is not read as a name.
        let std: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let tx = peg_in_transaction(
            vec![],
            peg_in_op_return(MAGIC, &std, b"memo").unwrap(),
            &peg(),
            Amount::from_sat(1),
            None,
        );
        let Some(PegOp::PegIn(op)) = parse_transaction(&tx, MAGIC, Network::Regtest, at()).unwrap()
        else {
            panic!()
        };
        assert_eq!((op.recipient, op.memo), (std, b"memo".to_vec()));
    }

    #[test]
    fn peg_out_request_round_trips_and_recovers_the_requester() {
        let key = SecretKey::from_slice(&[5; 32]).unwrap();
        let amount = Amount::from_sat(42_000);
        let sig = MessageSignature::sign(
            peg_out_request_sighash(amount, &recipient_btc().script_pubkey()),
            &key,
        );
        let tx = peg_out_request_transaction(
            vec![TxIn::default()],
            peg_out_request_op_return(MAGIC, amount, &sig, b"").unwrap(),
            &recipient_btc(),
            &peg(),
            Amount::from_sat(3_000),
            None,
        );
        let Some(PegOp::PegOutRequest(op)) =
            parse_transaction(&tx, MAGIC, Network::Regtest, at()).unwrap()
        else {
            panic!()
        };
        assert_eq!(op.amount, amount);
        assert_eq!(
            op.recipient.script_pubkey(),
            recipient_btc().script_pubkey()
        );
        assert_eq!(op.fulfillment_fee, Amount::from_sat(3_000));
        assert_eq!(op.peg_wallet_address.script_pubkey(), peg().script_pubkey());
        let expected = StacksAddress::p2pkh(
            StacksNetwork::Testnet,
            &key.public_key(&bitcoin::secp256k1::Secp256k1::new()),
            true,
        );
        assert_eq!(op.requester(StacksNetwork::Testnet).unwrap(), expected);
    }

    #[test]
    fn other_magic_and_plain_transactions_are_not_ops() {
        let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let tx = peg_in_transaction(
            vec![],
            peg_in_op_return(*b"X2", &who, b"").unwrap(),
            &peg(),
            Amount::from_sat(1),
            None,
        );
        assert_eq!(
            parse_transaction(&tx, MAGIC, Network::Regtest, at()),
            Ok(None)
        );
        let plain = Transaction {
            output: vec![TxOut {
                value: Amount::ONE_BTC,
                script_pubkey: peg().script_pubkey(),
            }],
            ..tx.clone()
        };
        assert_eq!(
            parse_transaction(&plain, MAGIC, Network::Regtest, at()),
            Ok(None)
        );
        let empty = Transaction {
            output: vec![],
            ..tx
        };
        assert_eq!(
            parse_transaction(&empty, MAGIC, Network::Regtest, at()),
            Ok(None)
        );
    }

    #[test]
    fn malformed_ops_are_reported() {
        let short = ScriptBuf::new_op_return(*b"T2<\x1a");
        let tx = peg_in_transaction(vec![], short, &peg(), Amount::from_sat(1), None);
        assert!(matches!(
            parse_transaction(&tx, MAGIC, Network::Regtest, at()),
            Err(ParseError::TooShort { op: '<', .. })
        ));
        let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let mut no_output = peg_in_transaction(
            vec![],
            peg_in_op_return(MAGIC, &who, b"").unwrap(),
            &peg(),
            Amount::from_sat(1),
            None,
        );
        no_output.output.truncate(1);
        assert_eq!(
            parse_transaction(&no_output, MAGIC, Network::Regtest, at()),
            Err(ParseError::MissingOutput(1))
        );
        let mut bad_name = vec![b'T', b'2', b'<', 26];
        bad_name.extend_from_slice(&[7; 20]);
        bad_name.extend_from_slice(b"9starts-with-digit");
        let tx = peg_in_transaction(
            vec![],
            op_return(bad_name).unwrap(),
            &peg(),
            Amount::from_sat(1),
            None,
        );
        assert!(matches!(
            parse_transaction(&tx, MAGIC, Network::Regtest, at()),
            Err(ParseError::BadRecipient(_))
        ));
    }

    #[test]
    fn fulfilment_parses_request_ref_and_chain_tip() {
        let request = bitcoin::Txid::from_byte_array([9; 32]);
        let mut data = b"T2!".to_vec();
        data.extend_from_slice(&[0xaa; 32]);
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: bitcoin::OutPoint::new(request, 2),
                ..TxIn::default()
            }],
            output: vec![
                TxOut {
                    value: Amount::ZERO,
                    script_pubkey: op_return(data).unwrap(),
                },
                TxOut {
                    value: Amount::from_sat(900),
                    script_pubkey: recipient_btc().script_pubkey(),
                },
            ],
        };
        let op = parse_fulfillment(&tx, MAGIC, Network::Regtest, at())
            .unwrap()
            .unwrap();
        assert_eq!(op.request_ref, request);
        assert_eq!(op.chain_tip, vec![0xaa; 32]);
        assert_eq!(op.amount, Amount::from_sat(900));
        assert_eq!(
            parse_transaction(&tx, MAGIC, Network::Regtest, at()),
            Ok(None)
        );
    }

    fn arb_script() -> impl Strategy<Value = ScriptBuf> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..90).prop_map(ScriptBuf::from_bytes),
            (
                proptest::collection::vec(any::<u8>(), 0..77),
                prop_oneof![Just(b'<'), Just(b'>'), Just(b'!'), any::<u8>()]
            )
                .prop_map(|(rest, op)| {
                    let mut d = vec![b'T', b'2', op];
                    d.extend(rest);
                    op_return(d).unwrap()
                }),
        ]
    }

    proptest! {
        #[test]
        fn random_scripts_and_outputs_never_panic(
            scripts in proptest::collection::vec(arb_script(), 0..5),
            values in proptest::collection::vec(any::<u64>(), 0..5),
        ) {
            let tx = Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: bitcoin::absolute::LockTime::ZERO,
                input: vec![],
                output: scripts.into_iter().zip(values.into_iter().chain(std::iter::repeat(0)))
                    .map(|(script_pubkey, v)| TxOut { value: Amount::from_sat(v), script_pubkey }).collect(),
            };
            let _ = parse_transaction(&tx, MAGIC, Network::Regtest, at());
            let _ = parse_fulfillment(&tx, MAGIC, Network::Regtest, at());
        }
    }
}
