//! What the user's tools read from the user's own nodes.

use bitcoin::secp256k1::PublicKey;
use bitcoin::FeeRate;
use bitcoin_node_client::BitcoinNode;
use peg_ops::contract;
use stacks_node_client::StacksNode;
use stacks_wire::{ContractId, PrincipalData, Value};

use crate::{Coin, Error};

/// The confirmation target of fee estimates: the coordinator's default.
pub const FEE_TARGET_BLOCKS: u16 = 6;

/// The peg wallet key the contract publishes
/// (`get-bitcoin-wallet-public-key`), `None` before the first DKG.
///
/// # Errors
/// [`Error::Node`] when the stacks-node cannot answer, [`Error::Answer`]
/// when the answer is no key.
pub fn peg_wallet_key<S: StacksNode>(
    stacks: &S,
    contract_id: &ContractId,
    sender: &PrincipalData,
) -> Result<Option<PublicKey>, Error> {
    let v = stacks
        .call_read(
            contract_id,
            contract::GET_BITCOIN_WALLET_PUBLIC_KEY,
            &[],
            sender,
        )
        .map_err(|e| Error::Node {
            what: format!(
                "reading {contract_id}.{} from the stacks-node",
                contract::GET_BITCOIN_WALLET_PUBLIC_KEY
            ),
            detail: e.to_string(),
        })?;
    match v {
        Value::Optional(None) => Ok(None),
        Value::Optional(Some(b)) => match *b {
            Value::Buffer(bytes) => PublicKey::from_slice(&bytes).map(Some).map_err(|_| {
                Error::Answer(format!(
                    "the contract's peg wallet key 0x{} is not a public key",
                    hex::encode(&bytes)
                ))
            }),
            other => Err(Error::Answer(format!(
                "the contract's peg wallet key is {other}, not a buffer"
            ))),
        },
        other => Err(Error::Answer(format!(
            "the contract's peg wallet key is {other}, not an optional buffer"
        ))),
    }
}

/// `who`'s sBTC balance in sats (`get-balance`).
///
/// # Errors
/// [`Error::Node`], or [`Error::Answer`] for an answer that is not `(ok uint)`.
pub fn sbtc_balance<S: StacksNode>(
    stacks: &S,
    contract_id: &ContractId,
    who: &PrincipalData,
) -> Result<u128, Error> {
    let v = stacks
        .call_read(
            contract_id,
            "get-balance",
            &[Value::Principal(who.clone())],
            who,
        )
        .map_err(|e| Error::Node {
            what: format!("reading {contract_id}.get-balance of {who} from the stacks-node"),
            detail: e.to_string(),
        })?;
    match v {
        Value::Ok(b) => match *b {
            Value::UInt(n) => Ok(n),
            other => Err(Error::Answer(format!("get-balance returned (ok {other})"))),
        },
        other => Err(Error::Answer(format!("get-balance returned {other}"))),
    }
}

/// The node's fee rate estimate for [`FEE_TARGET_BLOCKS`]; `None` when it
/// has none, or when it cannot estimate at all (an RPC error: the caller
/// falls back to the policy's floor, and is told so through the log).
///
/// # Errors
/// [`Error::Node`] when the node cannot be reached.
pub fn fee_estimate<B: BitcoinNode>(bitcoin: &B) -> Result<Option<FeeRate>, Error> {
    match bitcoin.estimate_smart_fee(FEE_TARGET_BLOCKS) {
        Ok(r) => Ok(r),
        Err(e @ bitcoin_node_client::Error::Rpc { .. }) => {
            log::warn!("estimatesmartfee: {e}; using the policy's fee floor");
            Ok(None)
        }
        Err(e) => Err(Error::Node {
            what: "estimatesmartfee on the bitcoin node".into(),
            detail: e.to_string(),
        }),
    }
}

/// The coins among `coins` that no transaction in the node's mempool spends
/// yet (`gettxout … include_mempool`), so two commands in a row do not
/// spend the same coin.
///
/// # Errors
/// [`Error::Node`] when the node cannot answer.
pub fn unspent_now<B: BitcoinNode>(bitcoin: &B, coins: Vec<Coin>) -> Result<Vec<Coin>, Error> {
    let mut out = Vec::with_capacity(coins.len());
    for c in coins {
        let u = bitcoin
            .get_tx_out(&c.outpoint, true)
            .map_err(|e| Error::Node {
                what: format!("gettxout {} on the bitcoin node", c.outpoint),
                detail: e.to_string(),
            })?;
        if u.is_some() {
            out.push(c);
        }
    }
    Ok(out)
}
