//! The alpha testers' library: what `sbtc` (and the devnet's demo users) do
//! with a user's keys and coins.
//!
//! - [`UserKey`]: one secp256k1 key, as a P2WPKH Bitcoin wallet and as a
//!   Stacks account; parsed from WIF or hex ([`UserKey::parse`]).
//! - Builders of signed transactions from the user's [`Coin`]s, in the wire
//!   format of [`peg_ops::wire`]: a peg-in ([`peg_in`]), a peg-out request
//!   ([`peg_out_request`], signed with the requester's Stacks key over
//!   [`peg_ops::peg_out_request_sighash`]), a plain payment ([`payment`]).
//!   Each returns the transaction unsigned and signed ([`Built`]).
//! - [`request_fee_output`]: the fee output a request carries, sized by
//!   [`peg_rules::required_fee_output`] from the fee rate estimate.
//! - Checks the peg itself would make, before the user pays
//!   ([`check_peg_in`], [`check_request`]).
//! - [`attest`]: whether a threshold of the user's signer set attested the
//!   peg wallet key the contract publishes, before paying into it.
//! - [`chain`]: reads from the user's nodes (the contract's peg wallet key and
//!   sBTC balances, the user's coins, the fee estimate).
//!
//! Nothing here panics on outside input; keys never appear in errors or logs.

pub mod attest;
pub mod chain;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, CompressedPublicKey, FeeRate, Network, OutPoint, Script, Transaction, TxIn,
    TxOut, Witness,
};
use peg_ops::{peg_out_request_sighash, wire, MessageSignature};
use peg_rules::Policy;
use stacks_wire::{PrincipalData, StacksAddress, StacksNetwork};

pub use attest::{check_attestations, parse_attestations};

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A key that could not be read (the key itself is never shown).
    #[error("bad key: {0}")]
    Key(String),
    /// The user's coins do not cover what the transaction pays.
    #[error(
        "not enough coins: {needed} needed ({outputs} paid plus a miner fee of about {fee}), \
         {available} spendable in {coins} coin(s) of {address}"
    )]
    InsufficientFunds {
        /// Outputs plus fee.
        needed: Amount,
        /// What the outputs pay.
        outputs: Amount,
        /// The miner fee with the coins that were tried.
        fee: Amount,
        /// The coins' total.
        available: Amount,
        /// How many coins.
        coins: usize,
        /// The address they pay.
        address: String,
    },
    /// The transaction could not be built (an OP_RETURN over its limit, …).
    #[error("cannot build the transaction: {0}")]
    Build(String),
    /// The peg would refuse the operation; the user's coins are not spent.
    #[error("refused: {rule}: {detail}")]
    Refused {
        /// The peg rule it breaks (`peg-in.allowlist`, `request.limit`, …).
        rule: &'static str,
        /// Why.
        detail: String,
    },
    /// Too few signers of the user's set attest the peg wallet key.
    #[error("{0}")]
    NotAttested(String),
    /// A node could not be asked or answered with an error.
    #[error("{what}: {detail}")]
    Node {
        /// What was asked, and of which node.
        what: String,
        /// The node's error.
        detail: String,
    },
    /// A node answered in a way the contract or protocol does not.
    #[error("unexpected answer: {0}")]
    Answer(String),
}

/// One secp256k1 key: a P2WPKH Bitcoin wallet and a Stacks account. Its
/// `Debug` output does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct UserKey {
    sk: SecretKey,
    pk: PublicKey,
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserKey({})", self.pk)
    }
}

impl UserKey {
    /// The key `sk`.
    pub fn new(sk: SecretKey) -> Self {
        let pk = sk.public_key(&Secp256k1::signing_only());
        UserKey { sk, pk }
    }

    /// Reads a key written as WIF (compressed), or as 64 hex digits
    /// (optionally followed by `01`, the Stacks form of a compressed key).
    /// Surrounding white space is ignored.
    ///
    /// # Errors
    /// [`Error::Key`], saying which forms were tried (never the text).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::Key("empty".into()));
        }
        if let Ok(k) = bitcoin::PrivateKey::from_wif(t) {
            if !k.compressed {
                return Err(Error::Key(
                    "an uncompressed WIF key: P2WPKH needs a compressed key".into(),
                ));
            }
            return Ok(UserKey::new(k.inner));
        }
        let hex_part = match t.len() {
            64 => t,
            66 if t.ends_with("01") => &t[..64],
            n => {
                return Err(Error::Key(format!(
                    "neither WIF nor 64 hex digits (optionally + 01): {n} characters"
                )))
            }
        };
        let bytes =
            hex::decode(hex_part).map_err(|_| Error::Key("neither WIF nor hex digits".into()))?;
        SecretKey::from_slice(&bytes)
            .map(UserKey::new)
            .map_err(|_| Error::Key("not a valid secp256k1 secret key".into()))
    }

    /// The secret key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.sk
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.pk
    }

    /// The key's P2WPKH address on `network`.
    pub fn btc_address(&self, network: Network) -> Address {
        Address::p2wpkh(&CompressedPublicKey(self.pk), network)
    }

    /// The key's Stacks address (single-signature, compressed key).
    pub fn stacks_address(&self, network: StacksNetwork) -> StacksAddress {
        StacksAddress::p2pkh(network, &self.pk, true)
    }

    /// The key as WIF on `network`.
    pub fn wif(&self, network: Network) -> String {
        bitcoin::PrivateKey::new(self.sk, network).to_wif()
    }

    /// Signs input `index` of `tx`, which spends the key's P2WPKH output
    /// `prev`.
    ///
    /// # Errors
    /// When `index` is not an input of `tx`.
    pub fn sign_input(
        &self,
        tx: &mut Transaction,
        index: usize,
        prev: &TxOut,
    ) -> Result<(), Error> {
        let h = SighashCache::new(&*tx)
            .p2wpkh_signature_hash(
                index,
                &prev.script_pubkey,
                prev.value,
                EcdsaSighashType::All,
            )
            .map_err(|e| Error::Build(format!("signature hash of input {index}: {e}")))?;
        let secp = Secp256k1::signing_only();
        let sig = bitcoin::ecdsa::Signature::sighash_all(
            secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &self.sk),
        );
        let input = tx
            .input
            .get_mut(index)
            .ok_or_else(|| Error::Build(format!("no input {index}")))?;
        input.witness = Witness::p2wpkh(&sig, &self.pk);
        Ok(())
    }
}

/// The Stacks network of a Bitcoin network: mainnet for mainnet, testnet
/// for every other (testnet, signet, regtest devnets).
pub fn stacks_network(network: Network) -> StacksNetwork {
    match network {
        Network::Bitcoin => StacksNetwork::Mainnet,
        _ => StacksNetwork::Testnet,
    }
}

/// The default OP_RETURN magic of a network (the stacks-node's
/// `burnchain.magic_bytes`): `X2` mainnet, `id` regtest, `T2` otherwise.
pub fn default_magic(network: Network) -> [u8; 2] {
    match network {
        Network::Bitcoin => *b"X2",
        Network::Regtest => *b"id",
        _ => *b"T2",
    }
}

/// An output the user can spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    /// Where it is.
    pub outpoint: OutPoint,
    /// Its value and script.
    pub txout: TxOut,
}

/// The miner fee of the user's own transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinerFee {
    /// This rate times the signed transaction's vsize.
    Rate(FeeRate),
    /// This amount, whatever the size.
    Fixed(Amount),
}

/// A built transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Without witnesses (what another signer would sign).
    pub unsigned: Transaction,
    /// Signed, ready to broadcast.
    pub signed: Transaction,
    /// The coins it spends, in input order.
    pub spent: Vec<Coin>,
    /// Its change output back to the user, if it has one.
    pub change: Option<Coin>,
    /// Its miner fee.
    pub miner_fee: Amount,
}

impl Built {
    /// The signed transaction as hex.
    pub fn signed_hex(&self) -> String {
        bitcoin::consensus::encode::serialize_hex(&self.signed)
    }

    /// The unsigned transaction as hex.
    pub fn unsigned_hex(&self) -> String {
        bitcoin::consensus::encode::serialize_hex(&self.unsigned)
    }
}

/// The vsize of `tx` once every input carries a P2WPKH witness (a 72-byte
/// signature, the largest, and a 33-byte key).
fn p2wpkh_signed_vsize(tx: &Transaction) -> u64 {
    let mut t = tx.clone();
    for i in &mut t.input {
        i.witness = Witness::from_slice(&[vec![0u8; 72], vec![0u8; 33]]);
    }
    u64::try_from(t.vsize()).unwrap_or(u64::MAX)
}

/// Which coins to try, in order: every single coin that might cover
/// `needed` (the wallet's order), then the largest coins together.
fn selections(coins: &[Coin], needed: Amount) -> Vec<Vec<Coin>> {
    let mut out: Vec<Vec<Coin>> = coins
        .iter()
        .filter(|c| c.txout.value >= needed)
        .map(|c| vec![c.clone()])
        .collect();
    let mut by_value: Vec<Coin> = coins.to_vec();
    by_value.sort_by_key(|c| std::cmp::Reverse(c.txout.value));
    for n in 2..=by_value.len() {
        out.push(by_value[..n].to_vec());
    }
    out
}

/// Funds and signs the transaction `build` makes from inputs and an optional
/// change output, whose outputs other than change pay `outputs` in total.
fn fund(
    key: &UserKey,
    network: Network,
    coins: &[Coin],
    outputs: Amount,
    fee: MinerFee,
    build: impl Fn(Vec<TxIn>, Option<TxOut>) -> Transaction,
) -> Result<Built, Error> {
    let address = key.btc_address(network);
    let script = address.script_pubkey();
    let mine: Vec<Coin> = coins
        .iter()
        .filter(|c| c.txout.script_pubkey == script)
        .cloned()
        .collect();
    let dust = script.minimal_non_dust();
    let fee_of = |tx: &Transaction| match fee {
        MinerFee::Fixed(a) => a,
        MinerFee::Rate(r) => r.fee_vb(p2wpkh_signed_vsize(tx)).unwrap_or(Amount::MAX),
    };
    let mut last_fee = Amount::ZERO;
    for picked in selections(&mine, outputs) {
        let total = picked
            .iter()
            .try_fold(Amount::ZERO, |s, c| s.checked_add(c.txout.value))
            .ok_or_else(|| Error::Build("coin values overflow".into()))?;
        let inputs: Vec<TxIn> = picked
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                ..TxIn::default()
            })
            .collect();
        let change_out = |value| TxOut {
            value,
            script_pubkey: script.clone(),
        };
        // With change first; without when the change would be dust.
        let with_change = build(inputs.clone(), Some(change_out(Amount::ZERO)));
        let fee_with = fee_of(&with_change);
        last_fee = fee_with;
        let change = total
            .checked_sub(outputs)
            .and_then(|r| r.checked_sub(fee_with));
        let (tx, has_change) = match change {
            Some(c) if c >= dust => (build(inputs, Some(change_out(c))), true),
            _ => {
                let without = build(inputs.clone(), None);
                let fee_without = fee_of(&without);
                match total.checked_sub(outputs) {
                    Some(left) if left >= fee_without => (without, false),
                    _ => continue,
                }
            }
        };
        return sign(key, tx, picked, has_change);
    }
    let available = mine.iter().fold(Amount::ZERO, |s, c| {
        s.checked_add(c.txout.value).unwrap_or(Amount::MAX)
    });
    Err(Error::InsufficientFunds {
        needed: outputs.checked_add(last_fee).unwrap_or(Amount::MAX),
        outputs,
        fee: last_fee,
        available,
        coins: mine.len(),
        address: address.to_string(),
    })
}

/// Signs every input; the change, when `has_change`, is the last output
/// (every builder appends it).
fn sign(
    key: &UserKey,
    tx: Transaction,
    spent: Vec<Coin>,
    has_change: bool,
) -> Result<Built, Error> {
    let mut signed = tx.clone();
    for (i, c) in spent.iter().enumerate() {
        key.sign_input(&mut signed, i, &c.txout)?;
    }
    let paid_in = spent.iter().fold(Amount::ZERO, |s, c| {
        s.checked_add(c.txout.value).unwrap_or(Amount::MAX)
    });
    let paid_out = tx.output.iter().fold(Amount::ZERO, |s, o| {
        s.checked_add(o.value).unwrap_or(Amount::MAX)
    });
    let miner_fee = paid_in
        .checked_sub(paid_out)
        .ok_or_else(|| Error::Build("outputs exceed inputs".into()))?;
    let txid = tx.compute_txid();
    let change = tx
        .output
        .iter()
        .enumerate()
        .next_back()
        .filter(|_| has_change)
        .map(|(i, o)| Coin {
            outpoint: OutPoint::new(txid, u32::try_from(i).unwrap_or(u32::MAX)),
            txout: o.clone(),
        });
    Ok(Built {
        unsigned: tx,
        signed,
        spent,
        change,
        miner_fee,
    })
}

/// A peg-in of `amount` to `recipient`, paid into `peg_wallet` from the
/// user's coins (those paying `key`'s P2WPKH script; others are ignored),
/// change back to the user: output 0 the OP_RETURN, output 1 the peg wallet.
///
/// # Errors
/// [`Error::InsufficientFunds`], or [`Error::Build`] for a recipient that
/// does not fit the OP_RETURN.
#[allow(clippy::too_many_arguments)]
pub fn peg_in(
    key: &UserKey,
    network: Network,
    coins: &[Coin],
    magic: [u8; 2],
    peg_wallet: &Address,
    recipient: &PrincipalData,
    amount: Amount,
    fee: MinerFee,
) -> Result<Built, Error> {
    let op_return = wire::peg_in_op_return(magic, recipient, b"").map_err(Error::Build)?;
    fund(key, network, coins, amount, fee, |inputs, change| {
        wire::peg_in_transaction(inputs, op_return.clone(), peg_wallet, amount, change)
    })
}

/// What a peg-out request asks.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The sBTC to burn and BTC to pay out.
    pub amount: Amount,
    /// Who receives the BTC.
    pub recipient: &'a Address,
    /// The Stacks key whose sBTC is burned: it signs the request.
    pub requester: &'a SecretKey,
    /// The peg wallet, which output 2 pays.
    pub peg_wallet: &'a Address,
    /// What output 2 carries toward the fulfilment's fee
    /// ([`request_fee_output`]).
    pub fee_output: Amount,
    /// Extra entropy for the request's signature nonce (RFC 6979 with
    /// additional data). `None` signs deterministically: two requests of the
    /// same amount to the same recipient then carry the same signature, and
    /// the peg pays only the first (it refuses copies,
    /// [`peg_rules::request_signature_digest`]). `sbtc` passes fresh random
    /// bytes, so a tester may repeat a request.
    pub nonce_data: Option<[u8; 32]>,
}

/// Signs a request's digest in Stacks' recoverable layout, with `nonce_data`
/// mixed into the nonce when given.
fn sign_request(
    digest: [u8; 32],
    key: &SecretKey,
    nonce_data: Option<&[u8; 32]>,
) -> MessageSignature {
    let Some(extra) = nonce_data else {
        return MessageSignature::sign(digest, key);
    };
    let secp = Secp256k1::signing_only();
    let sig = secp.sign_ecdsa_recoverable_with_noncedata(&Message::from_digest(digest), key, extra);
    let (recid, rs) = sig.serialize_compact();
    let mut out = [0u8; 65];
    // Recovery ids are 0 to 3.
    out[0] = u8::try_from(recid.to_i32()).unwrap_or(0);
    out[1..].copy_from_slice(&rs);
    MessageSignature(out)
}

/// A peg-out request, funded from `key`'s coins: output 0 the OP_RETURN
/// with `amount` and the requester's signature over
/// [`peg_out_request_sighash`]`(amount, recipient script)`, output 1 a dust
/// payment to the recipient, output 2 the fee output to the peg wallet.
///
/// # Errors
/// [`Error::InsufficientFunds`], or [`Error::Build`].
pub fn peg_out_request(
    key: &UserKey,
    network: Network,
    coins: &[Coin],
    magic: [u8; 2],
    request: &Request<'_>,
    fee: MinerFee,
) -> Result<Built, Error> {
    let recipient_script = request.recipient.script_pubkey();
    let sig = sign_request(
        peg_out_request_sighash(request.amount, &recipient_script),
        request.requester,
        request.nonce_data.as_ref(),
    );
    let op_return =
        wire::peg_out_request_op_return(magic, request.amount, &sig, b"").map_err(Error::Build)?;
    let outputs = recipient_script
        .minimal_non_dust()
        .checked_add(request.fee_output)
        .ok_or_else(|| Error::Build("fee output overflows".into()))?;
    fund(key, network, coins, outputs, fee, |inputs, change| {
        wire::peg_out_request_transaction(
            inputs,
            op_return.clone(),
            request.recipient,
            request.peg_wallet,
            request.fee_output,
            change,
        )
    })
}

/// A plain payment of `amount` to `to` from the user's coins, change back.
///
/// # Errors
/// [`Error::InsufficientFunds`].
pub fn payment(
    key: &UserKey,
    network: Network,
    coins: &[Coin],
    to: &Script,
    amount: Amount,
    fee: MinerFee,
) -> Result<Built, Error> {
    fund(key, network, coins, amount, fee, |input, change| {
        let mut output = vec![TxOut {
            value: amount,
            script_pubkey: to.to_owned(),
        }];
        output.extend(change);
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input,
            output,
        }
    })
}

/// The fee output a peg-out request to `recipient` must carry for the peg
/// to pay it at the fee rate `estimate` (the user's node's estimate; `None`:
/// the policy's floor): [`peg_rules::required_fee_output`].
pub fn request_fee_output(
    policy: &Policy,
    estimate: Option<FeeRate>,
    recipient: &Script,
) -> Amount {
    peg_rules::required_fee_output(policy, estimate, recipient)
}

/// The fee rate of the user's own transaction when none is given: the
/// estimate within the policy's floor and cap ([`peg_rules::clamp_fee_rate`]).
pub fn miner_fee_rate(policy: &Policy, estimate: Option<FeeRate>) -> FeeRate {
    peg_rules::clamp_fee_rate(policy, estimate)
}

/// The peg's own checks of a peg-in that the user can make first: a
/// non-zero amount, a recipient on the peg's Stacks network and on the
/// allowlist (a refused peg-in's BTC stays in the peg wallet until refunded).
///
/// # Errors
/// [`Error::Refused`] naming the rule.
pub fn check_peg_in(
    policy: &Policy,
    network: Network,
    recipient: &PrincipalData,
    amount: Amount,
) -> Result<(), Error> {
    if amount == Amount::ZERO {
        return Err(Error::Refused {
            rule: "peg-in.amount",
            detail: "the amount is zero".into(),
        });
    }
    let want = stacks_network(network);
    if recipient.address().network() != Some(want) {
        return Err(Error::Refused {
            rule: "peg-in.network",
            detail: format!("recipient {recipient} is not a {want:?} principal"),
        });
    }
    if !policy.allowlist.allows_principal(recipient) {
        return Err(Error::Refused {
            rule: "peg-in.allowlist",
            detail: format!(
                "recipient {recipient} is not on the peg's allowlist: the peg would not mint"
            ),
        });
    }
    Ok(())
}

/// The peg's own checks of a peg-out request that the user can make first:
/// recipient on the allowlist, amount non-zero, above the recipient's dust
/// limit and within the largest peg-out; `balance` (the requester's sBTC,
/// when known) covers it.
///
/// # Errors
/// [`Error::Refused`] naming the rule.
pub fn check_request(
    policy: &Policy,
    recipient: &Address,
    amount: Amount,
    balance: Option<u128>,
) -> Result<(), Error> {
    let script = recipient.script_pubkey();
    if !policy.allowlist.allows_script(&script) {
        return Err(Error::Refused {
            rule: "request.allowlist",
            detail: format!("recipient {recipient} is not on the peg's allowlist"),
        });
    }
    if amount == Amount::ZERO {
        return Err(Error::Refused {
            rule: "request.amount",
            detail: "the amount is zero".into(),
        });
    }
    let dust = script.minimal_non_dust();
    if amount < dust {
        return Err(Error::Refused {
            rule: "request.dust",
            detail: format!("amount {amount} is below the recipient script's dust limit {dust}"),
        });
    }
    if let Some(max) = policy.max_request {
        if amount > max {
            return Err(Error::Refused {
                rule: "request.limit",
                detail: format!("amount {amount} is above the largest peg-out, {max}"),
            });
        }
    }
    if let Some(b) = balance {
        if b < u128::from(amount.to_sat()) {
            return Err(Error::Refused {
                rule: "request.balance",
                detail: format!(
                    "the requester holds {b} sats of sBTC, less than the {} requested: the contract would refuse the burn",
                    amount.to_sat()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
