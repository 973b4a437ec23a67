//! The sBTC alpha contract's interface, as the coordinator calls it: function
//! names, how a Bitcoin txid is passed, and how the records of `get-mint` /
//! `get-burn` are read.

use bitcoin::Txid;
use stacks_wire::{PrincipalData, Value};

/// The token's name in the contract (`define-fungible-token sbtc`).
pub const SBTC_ASSET_NAME: &str = "sbtc";

/// `(mint! (amount uint) (dst principal) (peg-in-txid (string-ascii 72)))`.
pub const MINT: &str = "mint!";
/// `(burn! (amount uint) (src principal) (peg-out-txid (string-ascii 72)))`.
pub const BURN: &str = "burn!";
/// `(mint-many! (mints (list 200 {amount: uint, dst: principal, peg-in-txid: (string-ascii 72)})))`
/// → `(ok (list 200 (response bool uint)))`: each element is a [`MINT`]
/// under the same per-txid guard and with the same error codes; a failed
/// element takes no effect and leaves the others standing.
pub const MINT_MANY: &str = "mint-many!";
/// `(burn-many! (burns (list 200 {amount: uint, src: principal, peg-out-txid: (string-ascii 72)})))`
/// → `(ok (list 200 (response bool uint)))`, each element a [`BURN`], as for
/// [`MINT_MANY`].
pub const BURN_MANY: &str = "burn-many!";
/// The most elements one [`MINT_MANY`] or [`BURN_MANY`] call takes (the
/// contract's list bound).
pub const MAX_BATCH: usize = 200;
/// `(set-bitcoin-wallet-public-key (public-key (buff 33)))`.
pub const SET_BITCOIN_WALLET_PUBLIC_KEY: &str = "set-bitcoin-wallet-public-key";
/// `(set-coordinator-data (data {addr: principal, key: (buff 33)}))`.
pub const SET_COORDINATOR_DATA: &str = "set-coordinator-data";
/// Read-only `(was-minted (peg-in-txid (string-ascii 72)))` → `bool`.
pub const WAS_MINTED: &str = "was-minted";
/// Read-only `(was-burned (peg-out-txid (string-ascii 72)))` → `bool`.
pub const WAS_BURNED: &str = "was-burned";
/// Read-only `(get-mint (peg-in-txid (string-ascii 72)))` →
/// `(optional {amount: uint, principal: principal})`, the principal being
/// the mint's `dst`. Decode with [`decode_record`].
pub const GET_MINT: &str = "get-mint";
/// Read-only `(get-burn (peg-out-txid (string-ascii 72)))` →
/// `(optional {amount: uint, principal: principal})`, the principal being
/// the burn's `src`. Decode with [`decode_record`].
pub const GET_BURN: &str = "get-burn";
/// Read-only `(get-bitcoin-wallet-public-key)` → `(optional (buff 33))`.
pub const GET_BITCOIN_WALLET_PUBLIC_KEY: &str = "get-bitcoin-wallet-public-key";

/// Read-only `(get-num-signers)` → `uint`.
pub const GET_NUM_SIGNERS: &str = "get-num-signers";
/// Read-only `(get-threshold)` → `uint`.
pub const GET_THRESHOLD: &str = "get-threshold";
/// Read-only `(get-signer-data (id uint))` → `(optional {addr, public-key, key-ids})`,
/// `id` being the 1-based signer id.
pub const GET_SIGNER_DATA: &str = "get-signer-data";

/// Returns the Clarity argument naming a Bitcoin transaction: its txid as
/// hex in Bitcoin's display order, as `string-ascii`.
pub fn txid_arg(txid: &Txid) -> Value {
    Value::StringAscii(txid.to_string())
}

/// What the contract recorded for a Bitcoin txid: a mint's amount and
/// recipient, or a burn's amount and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxidRecord {
    /// The amount, in sats.
    pub amount: u64,
    /// The principal minted to (`dst`) or burned from (`src`).
    pub principal: PrincipalData,
}

/// Why a `get-mint` / `get-burn` answer is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not `(optional {amount: uint, principal: principal})`: a node (or
    /// contract) answering something else. Carries the value, for the operator.
    #[error("not an (optional {{amount: uint, principal: principal}}): {0}")]
    Shape(String),
    /// The amount does not fit in 64 bits (no sat amount is that large: the
    /// contract caps the supply far below it).
    #[error("recorded amount {0} does not fit in 64 bits")]
    AmountOverflow(u128),
}

/// Decodes the answer of [`GET_MINT`] or [`GET_BURN`]: `Ok(None)` for
/// `none` (never minted / burned), the record for `(some {…})`. Anything
/// else, a tuple with missing, extra or mistyped fields included, is an
/// error; this never panics.
///
/// # Errors
/// [`RecordError::Shape`] for another shape, [`RecordError::AmountOverflow`]
/// for an amount above `u64::MAX`.
pub fn decode_record(v: &Value) -> Result<Option<TxidRecord>, RecordError> {
    let shape = || RecordError::Shape(v.to_string());
    let inner = match v {
        Value::Optional(None) => return Ok(None),
        Value::Optional(Some(inner)) => inner,
        _ => return Err(shape()),
    };
    let Value::Tuple(fields) = inner.as_ref() else {
        return Err(shape());
    };
    if fields.len() != 2 {
        return Err(shape());
    }
    match (fields.get("amount"), fields.get("principal")) {
        (Some(Value::UInt(amount)), Some(Value::Principal(principal))) => Ok(Some(TxidRecord {
            amount: u64::try_from(*amount).map_err(|_| RecordError::AmountOverflow(*amount))?,
            principal: principal.clone(),
        })),
        _ => Err(shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(amount: u128, principal: &str) -> Value {
        Value::Optional(Some(Box::new(
            Value::tuple([
                ("amount", Value::UInt(amount)),
                ("principal", Value::Principal(principal.parse().unwrap())),
            ])
            .unwrap(),
        )))
    }

    const WHO: &str = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ";

    #[test]
    fn records_decode_with_their_principal() {
        assert_eq!(decode_record(&Value::Optional(None)), Ok(None));
        assert_eq!(
            decode_record(&record(150_000, WHO)),
            Ok(Some(TxidRecord {
                amount: 150_000,
                principal: WHO.parse().unwrap(),
            }))
        );
        let contract = format!("{WHO}.sbtc-alpha");
        assert_eq!(
            decode_record(&record(7, &contract))
                .unwrap()
                .unwrap()
                .principal,
            contract.parse::<PrincipalData>().unwrap()
        );
        // The hex a node answers decodes to the same record.
        let hex = record(u128::from(u64::MAX), WHO).to_hex();
        let back = Value::from_hex(&hex).unwrap();
        assert_eq!(decode_record(&back).unwrap().unwrap().amount, u64::MAX);
    }

    #[test]
    fn other_shapes_and_huge_amounts_are_errors() {
        assert_eq!(
            decode_record(&record(u128::from(u64::MAX) + 1, WHO)),
            Err(RecordError::AmountOverflow(u128::from(u64::MAX) + 1))
        );
        let p = || Value::Principal(WHO.parse().unwrap());
        let some = |v: Value| Value::Optional(Some(Box::new(v)));
        let bad = [
            Value::Bool(true),
            Value::UInt(5),
            Value::Ok(Box::new(Value::Optional(None))),
            some(Value::UInt(5)),
            some(Value::tuple([("amount", Value::UInt(1))]).unwrap()),
            some(Value::tuple([("amount", Value::Int(1)), ("principal", p())]).unwrap()),
            some(
                Value::tuple([("amount", Value::UInt(1)), ("principal", Value::UInt(1))]).unwrap(),
            ),
            some(
                Value::tuple([
                    ("amount", Value::UInt(1)),
                    ("principal", p()),
                    ("extra", Value::Bool(true)),
                ])
                .unwrap(),
            ),
            some(Value::tuple([("amt", Value::UInt(1)), ("principal", p())]).unwrap()),
        ];
        for v in bad {
            assert!(
                matches!(decode_record(&v), Err(RecordError::Shape(_))),
                "{v}"
            );
        }
    }

    #[test]
    fn txid_argument_is_display_hex() {
        let txid: Txid = "d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771"
            .parse()
            .unwrap();
        assert_eq!(
            txid_arg(&txid).to_string(),
            "\"d81bec73a0ea0bdcf9bc011f567944eb1eae5889bf002bf7ae641d7096157771\""
        );
    }
}
