//! A Rust model of `contracts/sbtc-alpha.clar` (batches included): the same checks in the same
//! order, the same error codes. Cross-checked against the Clarity VM.

use std::collections::{BTreeMap, HashMap, HashSet};

use stacks_wire::{PrincipalData, StacksAddress, Value};

/// `MAX-SUPPLY`: 21,000,000 BTC in sats.
pub const MAX_SUPPLY: u128 = 2_100_000_000_000_000;

/// The contract's error codes.
pub mod err {
    /// Not the contract owner.
    pub const NOT_OWNER: u128 = 1001;
    /// Not the coordinator.
    pub const NOT_COORDINATOR: u128 = 1002;
    /// Zero amount.
    pub const INVALID_AMOUNT: u128 = 1003;
    /// Txid minted already.
    pub const ALREADY_MINTED: u128 = 1004;
    /// Txid burned already.
    pub const ALREADY_BURNED: u128 = 1005;
    /// Past the supply cap.
    pub const SUPPLY_CAP: u128 = 1006;
    /// Balance too low.
    pub const INSUFFICIENT_BALANCE: u128 = 1007;
    /// Transfer of someone else's tokens.
    pub const NOT_TOKEN_OWNER: u128 = 1008;
    /// Trading halted.
    pub const TRADING_HALTED: u128 = 1009;
    /// Empty txid.
    pub const INVALID_TXID: u128 = 1010;
}

/// The contract's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbtcModel {
    /// `contract-owner`.
    pub owner: PrincipalData,
    /// `coordinator`: address and key.
    pub coordinator: Option<(PrincipalData, Vec<u8>)>,
    /// `bitcoin-wallet-public-key`.
    pub wallet_key: Option<Vec<u8>>,
    /// `trading-halted`.
    pub halted: bool,
    /// Token balances.
    pub balances: HashMap<PrincipalData, u128>,
    /// Total supply.
    pub supply: u128,
    /// Txids minted, with the amount and the principal minted to.
    pub minted: BTreeMap<String, TxidRecord>,
    /// Txids burned, with the amount and the principal burned from.
    pub burned: BTreeMap<String, TxidRecord>,
    /// `num-signers`, `threshold`, signer data.
    pub num_signers: u128,
    /// `threshold`.
    pub threshold: u128,
    /// `signers` map.
    pub signers: BTreeMap<u128, Value>,
}

/// What the contract's `minted` / `burned` maps hold per Bitcoin txid, as
/// `get-mint` / `get-burn` answer it: `{amount: uint, principal: principal}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxidRecord {
    /// The amount minted or burned, in sats.
    pub amount: u128,
    /// The principal minted to (`dst`) or burned from (`src`).
    pub principal: PrincipalData,
}

impl TxidRecord {
    /// The Clarity tuple, as the contract stores and returns it.
    pub fn to_value(&self) -> Value {
        Value::tuple([
            ("amount", Value::UInt(self.amount)),
            ("principal", Value::Principal(self.principal.clone())),
        ])
        .expect("valid tuple names")
    }
}

/// A public call's outcome and the tokens it moved out of each principal
/// (for post-condition checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// `(ok …)` or `(err …)`.
    pub result: Value,
    /// Tokens sent or burned, per principal.
    pub sent: HashMap<PrincipalData, u128>,
}

fn ok_true() -> Value {
    Value::Ok(Box::new(Value::Bool(true)))
}

fn error(code: u128) -> Value {
    Value::Err(Box::new(Value::UInt(code)))
}

/// Why a call's arguments do not fit the function (the node refuses the
/// transaction with `BadFunctionArgument`, or `NoSuchPublicFunction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// No such function.
    NoSuchFunction(String),
    /// Wrong count or types.
    BadArgument(String),
}

fn txid_arg(v: &Value) -> Option<&str> {
    match v {
        Value::StringAscii(s) if s.len() <= 72 => Some(s),
        _ => None,
    }
}

/// One `{amount, <who>, <txid>}` element of a `mint-many!` / `burn-many!`
/// list, if it has exactly the contract's type.
fn batch_element<'a>(
    v: &'a Value,
    who: &str,
    txid: &str,
) -> Option<(u128, &'a PrincipalData, &'a str)> {
    let Value::Tuple(t) = v else { return None };
    if t.len() != 3 {
        return None;
    }
    match (t.get("amount"), t.get(who), t.get(txid).and_then(txid_arg)) {
        (Some(Value::UInt(a)), Some(Value::Principal(p)), Some(id)) => Some((*a, p, id)),
        _ => None,
    }
}

/// The argument of `mint-many!` / `burn-many!`: `(list 200 {amount: uint,
/// <who>: principal, <txid>: (string-ascii 72)})`, a tuple with exactly
/// those fields (the node's type check admits no more, no fewer).
fn batch_arg(xs: &[Value], who: &str, txid: &str) -> bool {
    xs.len() <= peg_ops::contract::MAX_BATCH
        && xs.iter().all(|x| batch_element(x, who, txid).is_some())
}

impl SbtcModel {
    /// A freshly deployed contract owned by `owner`.
    pub fn new(owner: PrincipalData) -> Self {
        SbtcModel {
            owner,
            coordinator: None,
            wallet_key: None,
            halted: false,
            balances: HashMap::new(),
            supply: 0,
            minted: BTreeMap::new(),
            burned: BTreeMap::new(),
            num_signers: 0,
            threshold: 0,
            signers: BTreeMap::new(),
        }
    }

    fn is_coordinator(&self, sender: &PrincipalData) -> bool {
        self.coordinator.as_ref().is_some_and(|(a, _)| a == sender)
    }

    /// `mint!` past its coordinator check (and one element of
    /// `mint-many!`): the contract's checks in its order, then the write.
    fn mint_one(&mut self, amount: u128, dst: &PrincipalData, txid: &str) -> Value {
        if amount == 0 {
            error(err::INVALID_AMOUNT)
        } else if txid.is_empty() {
            error(err::INVALID_TXID)
        } else if amount > MAX_SUPPLY - self.supply {
            error(err::SUPPLY_CAP)
        } else if self.minted.contains_key(txid) {
            error(err::ALREADY_MINTED)
        } else {
            self.minted.insert(
                txid.to_owned(),
                TxidRecord {
                    amount,
                    principal: dst.clone(),
                },
            );
            *self.balances.entry(dst.clone()).or_insert(0) += amount;
            self.supply += amount;
            ok_true()
        }
    }

    /// `burn!` past its coordinator check (and one element of
    /// `burn-many!`); what it burns is added to `sent`.
    fn burn_one(
        &mut self,
        amount: u128,
        src: &PrincipalData,
        txid: &str,
        sent: &mut HashMap<PrincipalData, u128>,
    ) -> Value {
        let balance = self.balances.get(src).copied().unwrap_or(0);
        if amount == 0 {
            error(err::INVALID_AMOUNT)
        } else if txid.is_empty() {
            error(err::INVALID_TXID)
        } else if self.burned.contains_key(txid) {
            error(err::ALREADY_BURNED)
        } else if balance < amount {
            error(err::INSUFFICIENT_BALANCE)
        } else {
            self.burned.insert(
                txid.to_owned(),
                TxidRecord {
                    amount,
                    principal: src.clone(),
                },
            );
            self.balances.insert(src.clone(), balance - amount);
            self.supply -= amount;
            *sent.entry(src.clone()).or_insert(0) += amount;
            ok_true()
        }
    }

    /// Checks a public call's function name and argument types, as the node
    /// does when admitting the transaction.
    pub fn check_args(function: &str, args: &[Value]) -> Result<(), ArgError> {
        let bad =
            || ArgError::BadArgument(format!("{function}: arguments do not match the signature"));
        let ok = match (function, args) {
            ("mint!" | "burn!", [Value::UInt(_), Value::Principal(_), t]) => txid_arg(t).is_some(),
            ("mint-many!", [Value::List(xs)]) => batch_arg(xs, "dst", "peg-in-txid"),
            ("burn-many!", [Value::List(xs)]) => batch_arg(xs, "src", "peg-out-txid"),
            ("set-bitcoin-wallet-public-key", [Value::Buffer(b)]) => b.len() <= 33,
            ("set-coordinator-data", [Value::Tuple(t)]) => {
                t.len() == 2
                    && matches!(t.get("addr"), Some(Value::Principal(_)))
                    && matches!(t.get("key"), Some(Value::Buffer(b)) if b.len() <= 33)
            }
            ("set-trading-halted", [Value::Bool(_)]) => true,
            ("set-contract-owner", [Value::Principal(_)]) => true,
            ("set-num-keys" | "set-num-signers" | "set-threshold", [Value::UInt(_)]) => true,
            ("set-signer-data", [Value::UInt(_), Value::Tuple(_)]) => true,
            (
                "transfer",
                [Value::UInt(_), Value::Principal(_), Value::Principal(_), Value::Optional(_)],
            ) => true,
            (
                "mint!"
                | "burn!"
                | "mint-many!"
                | "burn-many!"
                | "set-bitcoin-wallet-public-key"
                | "set-coordinator-data"
                | "set-trading-halted"
                | "set-contract-owner"
                | "set-num-keys"
                | "set-num-signers"
                | "set-threshold"
                | "set-signer-data"
                | "transfer",
                _,
            ) => false,
            (other, _) => return Err(ArgError::NoSuchFunction(other.to_owned())),
        };
        if ok {
            Ok(())
        } else {
            Err(bad())
        }
    }

    /// Runs a public function as `sender`. Arguments must have passed
    /// [`SbtcModel::check_args`]. An `(err …)` result leaves the state as it was.
    pub fn call(&mut self, sender: &PrincipalData, function: &str, args: &[Value]) -> CallResult {
        let mut sent = HashMap::new();
        let result = match (function, args) {
            ("mint!", [Value::UInt(amount), Value::Principal(dst), t]) => {
                if self.is_coordinator(sender) {
                    self.mint_one(*amount, dst, txid_arg(t).unwrap_or_default())
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            ("burn!", [Value::UInt(amount), Value::Principal(src), t]) => {
                if self.is_coordinator(sender) {
                    self.burn_one(*amount, src, txid_arg(t).unwrap_or_default(), &mut sent)
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            // One response per element, each element a `mint!` / `burn!`
            // past the coordinator check; a failed element changes nothing.
            ("mint-many!", [Value::List(mints)]) => {
                if self.is_coordinator(sender) {
                    let results = mints
                        .iter()
                        .map(|m| match batch_element(m, "dst", "peg-in-txid") {
                            Some((amount, dst, txid)) => self.mint_one(amount, dst, txid),
                            // Refused by check_args; never reached.
                            None => Value::Err(Box::new(Value::UInt(0))),
                        })
                        .collect();
                    Value::Ok(Box::new(Value::List(results)))
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            ("burn-many!", [Value::List(burns)]) => {
                if self.is_coordinator(sender) {
                    let results = burns
                        .iter()
                        .map(|b| match batch_element(b, "src", "peg-out-txid") {
                            Some((amount, src, txid)) => {
                                self.burn_one(amount, src, txid, &mut sent)
                            }
                            None => Value::Err(Box::new(Value::UInt(0))),
                        })
                        .collect();
                    Value::Ok(Box::new(Value::List(results)))
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            ("set-bitcoin-wallet-public-key", [Value::Buffer(k)]) => {
                if self.is_coordinator(sender) {
                    self.wallet_key = Some(k.clone());
                    ok_true()
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            ("set-trading-halted", [Value::Bool(b)]) => {
                if self.is_coordinator(sender) {
                    self.halted = *b;
                    ok_true()
                } else {
                    error(err::NOT_COORDINATOR)
                }
            }
            ("set-coordinator-data", [Value::Tuple(t)]) => match (t.get("addr"), t.get("key")) {
                (Some(Value::Principal(a)), Some(Value::Buffer(k))) if *sender == self.owner => {
                    self.coordinator = Some((a.clone(), k.clone()));
                    ok_true()
                }
                _ => error(err::NOT_OWNER),
            },
            ("set-contract-owner", [Value::Principal(p)]) if *sender == self.owner => {
                self.owner = p.clone();
                ok_true()
            }
            ("set-num-signers", [Value::UInt(n)]) if *sender == self.owner => {
                self.num_signers = *n;
                ok_true()
            }
            ("set-threshold", [Value::UInt(n)]) if *sender == self.owner => {
                self.threshold = *n;
                ok_true()
            }
            ("set-num-keys", [Value::UInt(_)]) if *sender == self.owner => ok_true(),
            ("set-signer-data", [Value::UInt(id), data]) if *sender == self.owner => {
                self.signers.insert(*id, data.clone());
                ok_true()
            }
            (
                "set-contract-owner" | "set-num-signers" | "set-threshold" | "set-num-keys"
                | "set-signer-data",
                _,
            ) => error(err::NOT_OWNER),
            (
                "transfer",
                [Value::UInt(amount), Value::Principal(from), Value::Principal(to), _],
            ) => {
                let balance = self.balances.get(from).copied().unwrap_or(0);
                if self.halted {
                    error(err::TRADING_HALTED)
                } else if sender != from {
                    error(err::NOT_TOKEN_OWNER)
                } else if *amount == 0 {
                    error(err::INVALID_AMOUNT)
                } else if balance < *amount || from == to {
                    error(err::INSUFFICIENT_BALANCE)
                } else {
                    self.balances.insert(from.clone(), balance - amount);
                    *self.balances.entry(to.clone()).or_insert(0) += amount;
                    sent.insert(from.clone(), *amount);
                    ok_true()
                }
            }
            _ => Value::Err(Box::new(Value::UInt(0))),
        };
        CallResult { result, sent }
    }

    /// Runs a read-only function.
    pub fn read(&self, function: &str, args: &[Value]) -> Option<Value> {
        Some(match (function, args) {
            ("was-minted", [t]) => {
                Value::Bool(txid_arg(t).is_some_and(|t| self.minted.contains_key(t)))
            }
            ("was-burned", [t]) => {
                Value::Bool(txid_arg(t).is_some_and(|t| self.burned.contains_key(t)))
            }
            // A wrong argument type is the VM's type error (`None`), not `none`.
            ("get-mint", [t]) if txid_arg(t).is_some() => Value::Optional(
                txid_arg(t)
                    .and_then(|t| self.minted.get(t))
                    .map(|r| Box::new(r.to_value())),
            ),
            ("get-burn", [t]) if txid_arg(t).is_some() => Value::Optional(
                txid_arg(t)
                    .and_then(|t| self.burned.get(t))
                    .map(|r| Box::new(r.to_value())),
            ),
            ("get-bitcoin-wallet-public-key", []) => {
                Value::Optional(self.wallet_key.clone().map(|k| Box::new(Value::Buffer(k))))
            }
            ("get-coordinator-data", []) => {
                Value::Optional(self.coordinator.as_ref().map(|(a, k)| {
                    Box::new(
                        Value::tuple([
                            ("addr", Value::Principal(a.clone())),
                            ("key", Value::Buffer(k.clone())),
                        ])
                        .expect("valid names"),
                    )
                }))
            }
            ("get-balance", [Value::Principal(p)]) => Value::Ok(Box::new(Value::UInt(
                self.balances.get(p).copied().unwrap_or(0),
            ))),
            ("get-total-supply", []) => Value::Ok(Box::new(Value::UInt(self.supply))),
            ("get-num-signers", []) => Value::UInt(self.num_signers),
            ("get-threshold", []) => Value::UInt(self.threshold),
            ("get-signer-data", [Value::UInt(id)]) => {
                Value::Optional(self.signers.get(id).map(|v| Box::new(v.clone())))
            }
            ("get-contract-owner", []) => Value::Principal(self.owner.clone()),
            ("get-trading-halted", []) => Value::Bool(self.halted),
            ("get-decimals", []) => Value::Ok(Box::new(Value::UInt(8))),
            _ => return None,
        })
    }

    /// Returns the principals holding tokens, for summaries.
    pub fn holders(&self) -> HashSet<&PrincipalData> {
        self.balances
            .iter()
            .filter(|(_, b)| **b > 0)
            .map(|(p, _)| p)
            .collect()
    }
}

/// Returns a standard principal.
pub fn principal(a: StacksAddress) -> PrincipalData {
    PrincipalData::Standard(a)
}
