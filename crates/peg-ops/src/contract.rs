//! The sBTC alpha contract's interface, as the coordinator calls it: function
//! names and how a Bitcoin txid is passed.

use bitcoin::Txid;
use stacks_wire::Value;

/// The token's name in the contract (`define-fungible-token sbtc`).
pub const SBTC_ASSET_NAME: &str = "sbtc";

/// `(mint! (amount uint) (dst principal) (peg-in-txid (string-ascii 72)))`.
pub const MINT: &str = "mint!";
/// `(burn! (amount uint) (src principal) (peg-out-txid (string-ascii 72)))`.
pub const BURN: &str = "burn!";
/// `(set-bitcoin-wallet-public-key (public-key (buff 33)))`.
pub const SET_BITCOIN_WALLET_PUBLIC_KEY: &str = "set-bitcoin-wallet-public-key";
/// `(set-coordinator-data (data {addr: principal, key: (buff 33)}))`.
pub const SET_COORDINATOR_DATA: &str = "set-coordinator-data";
/// Read-only `(was-minted (peg-in-txid (string-ascii 72)))` → `bool`.
pub const WAS_MINTED: &str = "was-minted";
/// Read-only `(was-burned (peg-out-txid (string-ascii 72)))` → `bool`.
pub const WAS_BURNED: &str = "was-burned";
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

#[cfg(test)]
mod tests {
    use super::*;

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
