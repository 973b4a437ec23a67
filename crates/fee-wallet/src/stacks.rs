//! The Stacks half: contract calls to the sBTC alpha contract, signed with
//! the coordinator's key, fees from the node's estimate within a policy.

use std::collections::BTreeMap;

use bitcoin::secp256k1::PublicKey;
use peg_ops::{contract, PegInOp, PegOutRequestOp, SignedStacksTx};
use stacks_node_client::StacksNode;
use stacks_wire::{
    AssetInfo, ContractId, FungibleConditionCode, Payload, PostCondition, PostConditionMode,
    PostConditionPrincipal, PrincipalData, StacksAddress, StacksNetwork, StacksPrivateKey,
    StacksTransaction, Value,
};

use crate::{Error, StacksWallet};

/// Bounds on the fee of a contract call, µSTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StacksFeePolicy {
    /// Never pay less (also used when the node has no estimate).
    pub floor: u64,
    /// Never pay more.
    pub cap: u64,
}

/// Builds the coordinator's calls to the sBTC contract, signed with its key.
///
/// Fees come from the node's middle estimate for the call's payload and
/// length, kept within the policy's floor and cap.
pub struct ContractCallWallet<S> {
    network: StacksNetwork,
    contract: ContractId,
    key: StacksPrivateKey,
    fees: StacksFeePolicy,
    node: S,
}

impl<S> std::fmt::Debug for ContractCallWallet<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractCallWallet")
            .field("network", &self.network)
            .field("contract", &self.contract)
            .field("address", &self.key.address(self.network))
            .field("fees", &self.fees)
            .finish()
    }
}

impl<S: StacksNode> ContractCallWallet<S> {
    /// Creates the wallet.
    pub fn new(
        network: StacksNetwork,
        contract: ContractId,
        key: StacksPrivateKey,
        fees: StacksFeePolicy,
        node: S,
    ) -> Self {
        ContractCallWallet {
            network,
            contract,
            key,
            fees,
            node,
        }
    }

    /// Chooses the fee for a transaction: the node's middle estimate (the
    /// floor if it has none), at least `min_fee`, at least the node's minimum
    /// of 1 µSTX per serialized byte, within floor and cap. (The length does
    /// not depend on the fee: it is a fixed-width field.)
    fn fee_for(&self, unsigned: &StacksTransaction, min_fee: Option<u64>) -> Result<u64, Error> {
        let len = u64::try_from(unsigned.serialize().len()).unwrap_or(u64::MAX);
        let node_minimum = len.saturating_mul(stacks_node_client::MIN_FEE_PER_BYTE);
        let estimate = match self.node.estimate_fee(&unsigned.payload_bytes(), len) {
            Ok(e) => e.middle,
            Err(stacks_node_client::Error::NoEstimate) => self.fees.floor,
            Err(e) => return Err(Error::FeeEstimate(e.to_string())),
        };
        let wanted = estimate
            .max(min_fee.unwrap_or(0))
            .max(self.fees.floor)
            .max(node_minimum);
        if wanted > self.fees.cap {
            return Err(Error::FeeEstimate(format!(
                "the fee needed, {wanted} µSTX, is above the cap of {} µSTX",
                self.fees.cap
            )));
        }
        Ok(wanted)
    }

    fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        post_conditions: Vec<PostCondition>,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error> {
        let payload = Payload::ContractCall {
            contract: self.contract.clone(),
            function_name: function.to_owned(),
            args,
        };
        let build = |fee| {
            StacksTransaction::new(
                self.network,
                &self.key,
                nonce,
                fee,
                PostConditionMode::Deny,
                post_conditions.clone(),
                payload.clone(),
            )
            .map_err(|e| Error::Build(e.to_string()))
        };
        let fee = self.fee_for(&build(0)?, min_fee)?;
        let mut tx = build(fee)?;
        tx.sign(&self.key)
            .map_err(|e| Error::Build(e.to_string()))?;
        Ok(SignedStacksTx {
            txid: tx.txid(),
            nonce,
            fee,
            raw: tx.serialize(),
        })
    }
}

fn amount_arg(sats: u64) -> Value {
    Value::UInt(u128::from(sats))
}

/// A batch is 1 to [`contract::MAX_BATCH`] elements, no txid twice (the
/// contract would refuse the second; it is a caller's mistake).
fn check_batch(txids: impl ExactSizeIterator<Item = bitcoin::Txid>) -> Result<(), Error> {
    let n = txids.len();
    if n == 0 || n > contract::MAX_BATCH {
        return Err(Error::Build(format!(
            "a batch of {n} calls (1 to {} allowed)",
            contract::MAX_BATCH
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    for t in txids {
        if !seen.insert(t) {
            return Err(Error::Build(format!("txid {t} twice in one batch")));
        }
    }
    Ok(())
}

fn key_arg(key: &PublicKey) -> Value {
    Value::Buffer(key.serialize().to_vec())
}

impl<S: StacksNode> StacksWallet for ContractCallWallet<S> {
    fn address(&self) -> StacksAddress {
        self.key.address(self.network)
    }

    fn build_mint(
        &self,
        op: &PegInOp,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error> {
        let args = vec![
            amount_arg(op.amount.to_sat()),
            Value::Principal(op.recipient.clone()),
            contract::txid_arg(&op.txid),
        ];
        // Minting moves nobody's tokens: deny mode with no post condition.
        self.call(contract::MINT, args, vec![], nonce, min_fee)
    }

    fn build_burn(
        &self,
        op: &PegOutRequestOp,
        requester: &StacksAddress,
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error> {
        let amount = op.amount.to_sat();
        let args = vec![
            amount_arg(amount),
            Value::Principal(PrincipalData::Standard(*requester)),
            contract::txid_arg(&op.txid),
        ];
        // Deny mode: the requester loses exactly `amount` sBTC, nothing else.
        let pc = PostCondition::Fungible {
            principal: PostConditionPrincipal::Standard(*requester),
            asset: AssetInfo {
                contract: self.contract.clone(),
                asset_name: contract::SBTC_ASSET_NAME.into(),
            },
            code: FungibleConditionCode::SentEq,
            amount,
        };
        self.call(contract::BURN, args, vec![pc], nonce, min_fee)
    }

    fn build_mint_many(
        &self,
        ops: &[PegInOp],
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error> {
        check_batch(ops.iter().map(|o| o.txid))?;
        let mints = ops
            .iter()
            .map(|op| {
                Value::Tuple(BTreeMap::from([
                    ("amount".to_owned(), amount_arg(op.amount.to_sat())),
                    ("dst".to_owned(), Value::Principal(op.recipient.clone())),
                    ("peg-in-txid".to_owned(), contract::txid_arg(&op.txid)),
                ]))
            })
            .collect();
        // Minting moves nobody's tokens: deny mode with no post condition.
        self.call(
            contract::MINT_MANY,
            vec![Value::List(mints)],
            vec![],
            nonce,
            min_fee,
        )
    }

    fn build_burn_many(
        &self,
        burns: &[(PegOutRequestOp, StacksAddress)],
        nonce: u64,
        min_fee: Option<u64>,
    ) -> Result<SignedStacksTx, Error> {
        check_batch(burns.iter().map(|(o, _)| o.txid))?;
        let mut per_requester: BTreeMap<String, (StacksAddress, u64)> = BTreeMap::new();
        let mut elements = Vec::with_capacity(burns.len());
        for (op, requester) in burns {
            let amount = op.amount.to_sat();
            let e = per_requester
                .entry(requester.to_string())
                .or_insert((*requester, 0));
            e.1 = e.1.checked_add(amount).ok_or_else(|| {
                Error::Build(format!("the burns of {requester} overflow 64 bits"))
            })?;
            elements.push(Value::Tuple(BTreeMap::from([
                ("amount".to_owned(), amount_arg(amount)),
                (
                    "src".to_owned(),
                    Value::Principal(PrincipalData::Standard(*requester)),
                ),
                ("peg-out-txid".to_owned(), contract::txid_arg(&op.txid)),
            ])));
        }
        // Deny mode: each requester loses at most the sum of its requests
        // (an element that fails burns nothing of it, so "at most", not
        // "exactly": one requester short of sBTC must not abort the others).
        let pcs = per_requester
            .into_values()
            .map(|(requester, amount)| PostCondition::Fungible {
                principal: PostConditionPrincipal::Standard(requester),
                asset: AssetInfo {
                    contract: self.contract.clone(),
                    asset_name: contract::SBTC_ASSET_NAME.into(),
                },
                code: FungibleConditionCode::SentLe,
                amount,
            })
            .collect();
        self.call(
            contract::BURN_MANY,
            vec![Value::List(elements)],
            pcs,
            nonce,
            min_fee,
        )
    }

    fn build_set_wallet_public_key(
        &self,
        key: &PublicKey,
        nonce: u64,
    ) -> Result<SignedStacksTx, Error> {
        self.call(
            contract::SET_BITCOIN_WALLET_PUBLIC_KEY,
            vec![key_arg(key)],
            vec![],
            nonce,
            None,
        )
    }

    fn build_set_coordinator_data(
        &self,
        coordinator: &StacksAddress,
        message_key: &PublicKey,
        nonce: u64,
    ) -> Result<SignedStacksTx, Error> {
        let data = Value::tuple([
            (
                "addr",
                Value::Principal(PrincipalData::Standard(*coordinator)),
            ),
            ("key", key_arg(message_key)),
        ])
        .map_err(|e| Error::Build(e.to_string()))?;
        self.call(
            contract::SET_COORDINATOR_DATA,
            vec![data],
            vec![],
            nonce,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use bitcoin::{Amount, BlockHash, Txid};
    use peg_ops::{peg_out_request_sighash, BurnHeight, MessageSignature};
    use stacks_node_client::{FeeEstimates, MockStacksNode};

    fn key() -> StacksPrivateKey {
        StacksPrivateKey {
            key: SecretKey::from_slice(&[9; 32]).unwrap(),
            compressed: true,
        }
    }

    fn contract_id() -> ContractId {
        format!("{}.sbtc-alpha", key().address(StacksNetwork::Testnet))
            .parse()
            .unwrap()
    }

    fn node_estimating(middle: Result<u64, stacks_node_client::Error>) -> MockStacksNode {
        let mut node = MockStacksNode::new();
        node.expect_estimate_fee().returning(move |payload, len| {
            // The payload is a contract call to our contract, the length a full tx.
            assert_eq!(payload[0], 0x02);
            assert!(len > payload.len() as u64);
            middle.clone().map(|m| FeeEstimates {
                low: m / 2,
                middle: m,
                high: m * 2,
            })
        });
        node
    }

    fn wallet(node: MockStacksNode) -> ContractCallWallet<MockStacksNode> {
        ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract_id(),
            key(),
            StacksFeePolicy {
                floor: 1_000,
                cap: 50_000,
            },
            node,
        )
    }

    fn peg_in() -> PegInOp {
        PegInOp {
            recipient: "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap(),
            peg_wallet_address: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
                .parse()
                .unwrap(),
            amount: Amount::from_sat(123_456),
            memo: vec![],
            txid: Txid::from_byte_array([4; 32]),
            vtxindex: 1,
            block_height: BurnHeight(10),
            burn_header_hash: BlockHash::all_zeros(),
        }
    }

    fn decode(tx: &SignedStacksTx) -> StacksTransaction {
        let t = StacksTransaction::deserialize(&tx.raw).unwrap();
        t.verify().unwrap();
        assert_eq!(t.txid(), tx.txid);
        assert_eq!(t.auth.nonce, tx.nonce);
        assert_eq!(t.auth.fee, tx.fee);
        t
    }

    fn call_of(t: &StacksTransaction) -> (&ContractId, &str, &[Value]) {
        match &t.payload {
            Payload::ContractCall {
                contract,
                function_name,
                args,
            } => (contract, function_name, args),
            other => panic!("not a contract call: {other:?}"),
        }
    }

    #[test]
    fn mint_calls_the_contract_with_amount_recipient_and_txid() {
        let w = wallet(node_estimating(Ok(2_500)));
        let op = peg_in();
        let tx = w.build_mint(&op, 7, None).unwrap();
        let t = decode(&tx);
        assert_eq!((tx.nonce, tx.fee), (7, 2_500));
        let (c, f, args) = call_of(&t);
        assert_eq!(c, &contract_id());
        assert_eq!(f, "mint!");
        assert_eq!(
            args,
            &[
                Value::UInt(123_456),
                Value::Principal(op.recipient.clone()),
                Value::StringAscii(op.txid.to_string()),
            ]
        );
        assert_eq!(t.origin(), w.address());
        assert!(t.post_conditions.is_empty());
    }

    #[test]
    fn burn_takes_exactly_the_amount_from_the_requester_in_deny_mode() {
        let requester_key = SecretKey::from_slice(&[5; 32]).unwrap();
        let recipient: peg_ops::BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap();
        let amount = Amount::from_sat(40_000);
        let op = PegOutRequestOp {
            amount,
            signature: MessageSignature::sign(
                peg_out_request_sighash(amount, &recipient.script_pubkey()),
                &requester_key,
            ),
            recipient: recipient.clone(),
            peg_wallet_address: recipient,
            fulfillment_fee: Amount::from_sat(1_000),
            memo: vec![],
            txid: Txid::from_byte_array([8; 32]),
            vtxindex: 2,
            block_height: BurnHeight(11),
            burn_header_hash: BlockHash::all_zeros(),
        };
        let requester = op.requester(StacksNetwork::Testnet).unwrap();
        assert_eq!(
            requester,
            StacksAddress::p2pkh(
                StacksNetwork::Testnet,
                &requester_key.public_key(&Secp256k1::new()),
                true
            )
        );
        let tx = wallet(node_estimating(Ok(3_000)))
            .build_burn(&op, &requester, 8, None)
            .unwrap();
        let t = decode(&tx);
        let (_, f, args) = call_of(&t);
        assert_eq!(f, "burn!");
        assert_eq!(args[0], Value::UInt(40_000));
        assert_eq!(
            args[1],
            Value::Principal(PrincipalData::Standard(requester))
        );
        assert_eq!(t.post_condition_mode, PostConditionMode::Deny);
        assert_eq!(
            t.post_conditions,
            vec![PostCondition::Fungible {
                principal: PostConditionPrincipal::Standard(requester),
                asset: AssetInfo {
                    contract: contract_id(),
                    asset_name: "sbtc".into()
                },
                code: FungibleConditionCode::SentEq,
                amount: 40_000,
            }]
        );
    }

    #[test]
    fn fees_stay_within_floor_and_cap() {
        // Below the floor: the floor.
        assert_eq!(
            wallet(node_estimating(Ok(10)))
                .build_mint(&peg_in(), 0, None)
                .unwrap()
                .fee,
            1_000
        );
        // No estimate: the floor.
        let no = Err(stacks_node_client::Error::NoEstimate);
        assert_eq!(
            wallet(node_estimating(no))
                .build_mint(&peg_in(), 0, None)
                .unwrap()
                .fee,
            1_000
        );
        // Above the cap: refused, clearly.
        let e = wallet(node_estimating(Ok(60_000)))
            .build_mint(&peg_in(), 0, None)
            .unwrap_err();
        assert!(
            matches!(&e, Error::FeeEstimate(m) if m.contains("above the cap")),
            "{e}"
        );
        assert!(e.is_transient());
        // An unreachable node: a transient error, not a guess.
        let down = Err(stacks_node_client::Error::Timeout("test".into()));
        assert!(wallet(node_estimating(down))
            .build_mint(&peg_in(), 0, None)
            .unwrap_err()
            .is_transient());
    }

    /// The real node refuses less than 1 µSTX per byte: a floor below the
    /// transaction's length is raised to it, never sent as is.
    #[test]
    fn the_fee_is_at_least_one_micro_stx_per_byte() {
        let w = ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract_id(),
            key(),
            StacksFeePolicy {
                floor: 1,
                cap: 50_000,
            },
            node_estimating(Err(stacks_node_client::Error::NoEstimate)),
        );
        let tx = w.build_mint(&peg_in(), 0, None).unwrap();
        assert_eq!(tx.fee, tx.raw.len() as u64, "fee = length × 1 µSTX");
        // An estimate below the length: raised too.
        let w = ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract_id(),
            key(),
            StacksFeePolicy {
                floor: 1,
                cap: 50_000,
            },
            node_estimating(Ok(3)),
        );
        let tx = w.build_mint(&peg_in(), 0, None).unwrap();
        assert_eq!(tx.fee, tx.raw.len() as u64);
        // And the cap still holds: a cap below the length is refused.
        let w = ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract_id(),
            key(),
            StacksFeePolicy { floor: 1, cap: 100 },
            node_estimating(Ok(3)),
        );
        assert!(w.build_mint(&peg_in(), 0, None).is_err());
    }

    #[test]
    fn a_fee_too_low_rejection_sets_the_minimum() {
        let tx = wallet(node_estimating(Ok(2_000)))
            .build_mint(&peg_in(), 3, Some(4_200))
            .unwrap();
        assert_eq!((tx.nonce, tx.fee), (3, 4_200));
        let e = wallet(node_estimating(Ok(2_000)))
            .build_mint(&peg_in(), 3, Some(90_000))
            .unwrap_err();
        assert!(matches!(e, Error::FeeEstimate(_)));
    }

    #[test]
    fn key_and_coordinator_calls() {
        let pk = SecretKey::from_slice(&[3; 32])
            .unwrap()
            .public_key(&Secp256k1::new());
        let w = wallet(node_estimating(Ok(1_500)));
        let t = decode(&w.build_set_wallet_public_key(&pk, 1).unwrap());
        let (_, f, args) = call_of(&t);
        assert_eq!(f, "set-bitcoin-wallet-public-key");
        assert_eq!(args, &[Value::Buffer(pk.serialize().to_vec())]);

        let t = decode(&w.build_set_coordinator_data(&w.address(), &pk, 2).unwrap());
        let (_, f, args) = call_of(&t);
        assert_eq!(f, "set-coordinator-data");
        assert_eq!(
            args[0].to_string(),
            format!(
                "(tuple (addr '{}) (key 0x{}))",
                w.address(),
                hex::encode(pk.serialize())
            )
        );
    }

    // --- batches -----------------------------------------------------------

    fn peg_in_n(n: u8, amount: u64, to: &str) -> PegInOp {
        PegInOp {
            recipient: to.parse().unwrap(),
            amount: Amount::from_sat(amount),
            txid: Txid::from_byte_array([n; 32]),
            ..peg_in()
        }
    }

    fn peg_out_n(n: u8, amount: u64) -> PegOutRequestOp {
        let recipient: peg_ops::BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap();
        let amount = Amount::from_sat(amount);
        PegOutRequestOp {
            amount,
            signature: MessageSignature::sign(
                peg_out_request_sighash(amount, &recipient.script_pubkey()),
                &SecretKey::from_slice(&[5; 32]).unwrap(),
            ),
            recipient: recipient.clone(),
            peg_wallet_address: recipient,
            fulfillment_fee: Amount::from_sat(1_000),
            memo: vec![],
            txid: Txid::from_byte_array([n; 32]),
            vtxindex: 2,
            block_height: BurnHeight(11),
            burn_header_hash: BlockHash::all_zeros(),
        }
    }

    fn requester(i: u8) -> StacksAddress {
        StacksAddress::new(26, [i; 20]).unwrap()
    }

    /// A wallet whose node must not be asked anything (a refused batch is
    /// refused before any fee estimate).
    fn silent_wallet() -> ContractCallWallet<MockStacksNode> {
        wallet(MockStacksNode::new())
    }

    const ALICE: &str = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ";
    const BOB: &str = "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG";

    #[test]
    fn mint_many_is_one_call_with_a_tuple_per_peg_in_in_order() {
        let ops = [
            peg_in_n(1, 10_000, ALICE),
            peg_in_n(2, 20_000, BOB),
            peg_in_n(3, 30_000, ALICE),
        ];
        let tx = wallet(node_estimating(Ok(4_000)))
            .build_mint_many(&ops, 9, None)
            .unwrap();
        let t = decode(&tx);
        assert_eq!((tx.nonce, tx.fee), (9, 4_000));
        let (c, f, args) = call_of(&t);
        assert_eq!((c, f), (&contract_id(), "mint-many!"));
        let [Value::List(elements)] = args else {
            panic!("one list argument: {args:?}")
        };
        assert_eq!(elements.len(), 3);
        for (e, op) in elements.iter().zip(&ops) {
            assert_eq!(
                e,
                &Value::tuple([
                    ("amount", Value::UInt(u128::from(op.amount.to_sat()))),
                    ("dst", Value::Principal(op.recipient.clone())),
                    ("peg-in-txid", Value::StringAscii(op.txid.to_string())),
                ])
                .unwrap()
            );
        }
        // Minting moves nobody's tokens: deny mode, no condition.
        assert_eq!(t.post_condition_mode, PostConditionMode::Deny);
        assert!(t.post_conditions.is_empty());
        assert_eq!(t.origin(), wallet(MockStacksNode::new()).address());
    }

    #[test]
    fn burn_many_limits_each_requester_to_the_sum_of_its_requests() {
        let burns = [
            (peg_out_n(1, 1_000), requester(1)),
            (peg_out_n(2, 2_000), requester(2)),
            (peg_out_n(3, 4_000), requester(1)),
            (peg_out_n(4, 8_000), requester(3)),
            (peg_out_n(5, 16_000), requester(1)),
        ];
        let tx = wallet(node_estimating(Ok(5_000)))
            .build_burn_many(&burns, 4, None)
            .unwrap();
        let t = decode(&tx);
        let (_, f, args) = call_of(&t);
        assert_eq!(f, "burn-many!");
        let [Value::List(elements)] = args else {
            panic!("one list argument: {args:?}")
        };
        // One element per request, in order, each its own amount and source.
        assert_eq!(elements.len(), burns.len());
        for (e, (op, who)) in elements.iter().zip(&burns) {
            assert_eq!(
                e,
                &Value::tuple([
                    ("amount", Value::UInt(u128::from(op.amount.to_sat()))),
                    ("src", Value::Principal(PrincipalData::Standard(*who))),
                    ("peg-out-txid", Value::StringAscii(op.txid.to_string())),
                ])
                .unwrap()
            );
        }
        // Deny mode, one SentLe per requester summing its requests: the
        // same requester three times is one condition of 21,000.
        assert_eq!(t.post_condition_mode, PostConditionMode::Deny);
        let mut got: Vec<_> = t
            .post_conditions
            .iter()
            .map(|pc| match pc {
                PostCondition::Fungible {
                    principal: PostConditionPrincipal::Standard(a),
                    asset,
                    code,
                    amount,
                } => {
                    assert_eq!(asset.contract, contract_id());
                    assert_eq!(asset.asset_name, "sbtc");
                    assert_eq!(*code, FungibleConditionCode::SentLe);
                    (*a, *amount)
                }
                other => panic!("not a fungible condition on a requester: {other:?}"),
            })
            .collect();
        got.sort_by_key(|(a, _)| a.to_string());
        let mut want = vec![
            (requester(1), 21_000),
            (requester(2), 2_000),
            (requester(3), 8_000),
        ];
        want.sort_by_key(|(a, _)| a.to_string());
        assert_eq!(got, want);
    }

    #[test]
    fn batches_of_exactly_max_batch_are_built() {
        let ops: Vec<_> = (0..contract::MAX_BATCH)
            .map(|i| PegInOp {
                txid: Txid::from_byte_array([u8::try_from(i % 256).unwrap(); 32]),
                ..peg_in()
            })
            .collect();
        // 200 distinct txids (the byte pattern repeats only past 256).
        let w = ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract_id(),
            key(),
            StacksFeePolicy {
                floor: 1_000,
                cap: 100_000,
            },
            node_estimating(Err(stacks_node_client::Error::NoEstimate)),
        );
        let tx = w.build_mint_many(&ops, 0, None).unwrap();
        let t = decode(&tx);
        let (_, _, args) = call_of(&t);
        assert!(matches!(&args[0], Value::List(l) if l.len() == contract::MAX_BATCH));
        // At least 1 µSTX per byte, the node's minimum.
        assert!(
            tx.fee >= tx.raw.len() as u64,
            "{} < {}",
            tx.fee,
            tx.raw.len()
        );
    }

    #[test]
    fn empty_oversized_and_duplicate_batches_are_refused() {
        let w = silent_wallet();
        let is_build = |e: Error, what: &str| {
            assert!(matches!(&e, Error::Build(m) if m.contains(what)), "{e}");
            assert!(
                !e.is_transient(),
                "a caller's mistake, not worth a retry: {e}"
            );
        };
        is_build(w.build_mint_many(&[], 0, None).unwrap_err(), "a batch of 0");
        is_build(w.build_burn_many(&[], 0, None).unwrap_err(), "a batch of 0");
        let over: Vec<_> = (0..=contract::MAX_BATCH)
            .map(|i| PegInOp {
                txid: Txid::from_byte_array({
                    let mut b = [0; 32];
                    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    b
                }),
                ..peg_in()
            })
            .collect();
        is_build(
            w.build_mint_many(&over, 0, None).unwrap_err(),
            "a batch of 201",
        );
        let over_burns: Vec<_> = over
            .iter()
            .map(|op| {
                (
                    PegOutRequestOp {
                        txid: op.txid,
                        ..peg_out_n(0, 1)
                    },
                    requester(1),
                )
            })
            .collect();
        is_build(
            w.build_burn_many(&over_burns, 0, None).unwrap_err(),
            "a batch of 201",
        );
        // The same txid twice: the contract would refuse the second.
        let twice = [
            peg_in_n(7, 1, ALICE),
            peg_in_n(8, 1, ALICE),
            peg_in_n(7, 2, BOB),
        ];
        is_build(w.build_mint_many(&twice, 0, None).unwrap_err(), "twice");
        let twice = [
            (peg_out_n(7, 1), requester(1)),
            (peg_out_n(7, 1), requester(2)),
        ];
        is_build(w.build_burn_many(&twice, 0, None).unwrap_err(), "twice");
    }

    #[test]
    fn a_requester_whose_burns_overflow_is_refused() {
        let burns = [
            (peg_out_n(1, u64::MAX / 2 + 1), requester(1)),
            (peg_out_n(2, u64::MAX / 2 + 1), requester(1)),
        ];
        let e = silent_wallet()
            .build_burn_many(&burns, 0, None)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Build(m) if m.contains("overflow")),
            "{e}"
        );
    }
}
