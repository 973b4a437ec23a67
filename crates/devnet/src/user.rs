//! A devnet user: one secp256k1 key used as a Bitcoin P2WPKH wallet and a
//! Stacks account, able to peg in and request peg-outs with real, signed
//! Bitcoin transactions.

use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use peg_ops::{peg_out_request_sighash, wire, MessageSignature};
use stacks_wire::{PrincipalData, StacksAddress, StacksNetwork};

use crate::bitcoin::{BitcoinState, Refusal};

/// A user.
#[derive(Debug, Clone)]
pub struct User {
    /// A name for summaries.
    pub name: String,
    sk: SecretKey,
    /// The user's Bitcoin address (P2WPKH, regtest).
    pub btc: Address,
    /// The user's Stacks principal.
    pub stx: PrincipalData,
    coins: Vec<(OutPoint, TxOut)>,
}

/// Miner fee the user pays on its own transactions.
const USER_FEE: Amount = Amount::from_sat(5_000);

impl User {
    /// A user whose key is derived from `seed`.
    pub fn new(name: &str, seed: u8) -> Self {
        let mut b = [seed; 32];
        b[0] = 0x42;
        let sk = SecretKey::from_slice(&b).expect("a fixed valid key");
        let secp = Secp256k1::signing_only();
        let pk = sk.public_key(&secp);
        User {
            name: name.to_owned(),
            sk,
            btc: Address::p2wpkh(&CompressedPublicKey(pk), Network::Regtest),
            stx: StacksAddress::p2pkh(StacksNetwork::Testnet, &pk, true).into(),
            coins: Vec::new(),
        }
    }

    /// Mines a block paying the user, then 100 more so the coinbase matures.
    pub fn fund(&mut self, b: &mut BitcoinState, burn: &bitcoin::ScriptBuf) {
        self.mine_coinbase(b);
        for _ in 0..100 {
            b.mine(burn);
        }
    }

    /// Mines a block whose coinbase pays the user (spendable after 100 more
    /// blocks): [`User::fund`] without the maturing blocks, for funding many
    /// users before one maturity wait (the regtest subsidy halves every 150
    /// blocks, so 100 blocks per user would leave later users with little).
    pub fn mine_coinbase(&mut self, b: &mut BitcoinState) {
        b.mine(&self.btc.script_pubkey());
        let h = b.height();
        let cb = b.block(h).expect("just mined").txdata[0].clone();
        self.coins
            .push((OutPoint::new(cb.compute_txid(), 0), cb.output[0].clone()));
    }

    /// Remembers a coin the user can spend (for example a matured coinbase
    /// paying [`User::btc`] on a real bitcoind).
    pub fn add_coin(&mut self, outpoint: OutPoint, output: TxOut) {
        self.coins.push((outpoint, output));
    }

    fn spend(
        &mut self,
        needed: Amount,
        build: impl FnOnce(Vec<TxIn>, TxOut) -> Transaction,
        b: &mut BitcoinState,
    ) -> Result<Txid, Refusal> {
        self.spend_with(needed, build, |tx| b.send(tx))
    }

    /// Builds, signs and hands to `send` a transaction spending one of the
    /// user's coins; the coin stays the user's if `send` refuses it.
    fn spend_with(
        &mut self,
        needed: Amount,
        build: impl FnOnce(Vec<TxIn>, TxOut) -> Transaction,
        send: impl FnOnce(Transaction) -> Result<Txid, Refusal>,
    ) -> Result<Txid, Refusal> {
        let i = self
            .coins
            .iter()
            .position(|(_, o)| o.value >= needed + USER_FEE + Amount::from_sat(1_000))
            .ok_or(Refusal {
                code: -6,
                message: format!("{} has no coin of {needed}", self.name),
            })?;
        let (outpoint, prev) = self.coins.remove(i);
        let change = TxOut {
            value: prev.value - needed - USER_FEE,
            script_pubkey: self.btc.script_pubkey(),
        };
        let mut tx = build(
            vec![TxIn {
                previous_output: outpoint,
                ..TxIn::default()
            }],
            change,
        );
        let secp = Secp256k1::signing_only();
        let h = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &prev.script_pubkey, prev.value, EcdsaSighashType::All)
            .map_err(|e| Refusal {
                code: -1,
                message: e.to_string(),
            })?;
        let sig = bitcoin::ecdsa::Signature::sighash_all(
            secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &self.sk),
        );
        tx.input[0].witness = Witness::p2wpkh(&sig, &self.sk.public_key(&secp));
        let txid = match send(tx.clone()) {
            Ok(t) => t,
            Err(r) => {
                // Refused: the coin is still ours.
                self.coins.insert(i, (outpoint, prev));
                return Err(r);
            }
        };
        let last = tx.output.len() - 1;
        self.coins
            .push((OutPoint::new(txid, last as u32), tx.output[last].clone()));
        Ok(txid)
    }

    /// Pays `amount` to `to` (change back to the user).
    ///
    /// # Errors
    /// When the user lacks a coin or the node refuses the transaction.
    pub fn pay(
        &mut self,
        b: &mut BitcoinState,
        to: &bitcoin::Script,
        amount: Amount,
    ) -> Result<Txid, Refusal> {
        let out = TxOut {
            value: amount,
            script_pubkey: to.to_owned(),
        };
        self.spend(
            amount,
            |input, change| Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: bitcoin::absolute::LockTime::ZERO,
                input,
                output: vec![out, change],
            },
            b,
        )
    }

    /// Signs input `index` of `tx`, which spends the user's P2WPKH output `prev`.
    pub fn sign_input(&self, tx: &mut Transaction, index: usize, prev: &TxOut) {
        let secp = Secp256k1::signing_only();
        if let Ok(h) = SighashCache::new(&*tx).p2wpkh_signature_hash(
            index,
            &prev.script_pubkey,
            prev.value,
            EcdsaSighashType::All,
        ) {
            let sig = bitcoin::ecdsa::Signature::sighash_all(
                secp.sign_ecdsa(&Message::from_digest(h.to_byte_array()), &self.sk),
            );
            if let Some(i) = tx.input.get_mut(index) {
                i.witness = Witness::p2wpkh(&sig, &self.sk.public_key(&secp));
            }
        }
    }

    /// The user's key as regtest WIF, for driving the devnet by hand with
    /// other Bitcoin tools. A devnet key: never for real funds.
    pub fn wif(&self) -> String {
        bitcoin::PrivateKey::new(self.sk, Network::Regtest).to_wif()
    }

    /// The user's spendable coins, as the wallet tracks them.
    pub fn coins(&self) -> &[(OutPoint, TxOut)] {
        &self.coins
    }

    /// Pegs `amount` in to `recipient` (usually the user's own principal).
    ///
    /// # Errors
    /// When the user lacks a coin or the node refuses the transaction.
    pub fn peg_in(
        &mut self,
        b: &mut BitcoinState,
        magic: [u8; 2],
        peg: &Address,
        recipient: &PrincipalData,
        amount: Amount,
    ) -> Result<Txid, Refusal> {
        self.peg_in_with(|tx| b.send(tx), magic, peg, recipient, amount)
    }

    /// As [`User::peg_in`], handing the signed transaction to `send` (for
    /// example `sendrawtransaction` on a real bitcoind).
    ///
    /// # Errors
    /// When the user lacks a coin or `send` refuses the transaction.
    pub fn peg_in_with(
        &mut self,
        send: impl FnOnce(Transaction) -> Result<Txid, Refusal>,
        magic: [u8; 2],
        peg: &Address,
        recipient: &PrincipalData,
        amount: Amount,
    ) -> Result<Txid, Refusal> {
        let op_return = wire::peg_in_op_return(magic, recipient, b"").map_err(|m| Refusal {
            code: -1,
            message: m,
        })?;
        self.spend_with(
            amount,
            |inputs, change| wire::peg_in_transaction(inputs, op_return, peg, amount, Some(change)),
            send,
        )
    }

    /// Requests a peg-out of `amount` to the user's Bitcoin address, paying
    /// `fee` toward the fulfilment.
    ///
    /// # Errors
    /// When the user lacks a coin or the node refuses the transaction.
    pub fn peg_out(
        &mut self,
        b: &mut BitcoinState,
        magic: [u8; 2],
        peg: &Address,
        amount: Amount,
        fee: Amount,
    ) -> Result<Txid, Refusal> {
        self.peg_out_with(|tx| b.send(tx), magic, peg, amount, fee)
    }

    /// As [`User::peg_out`], handing the signed transaction to `send`.
    ///
    /// # Errors
    /// When the user lacks a coin or `send` refuses the transaction.
    pub fn peg_out_with(
        &mut self,
        send: impl FnOnce(Transaction) -> Result<Txid, Refusal>,
        magic: [u8; 2],
        peg: &Address,
        amount: Amount,
        fee: Amount,
    ) -> Result<Txid, Refusal> {
        let sig = MessageSignature::sign(
            peg_out_request_sighash(amount, &self.btc.script_pubkey()),
            &self.sk,
        );
        let op_return =
            wire::peg_out_request_op_return(magic, amount, &sig, b"").map_err(|m| Refusal {
                code: -1,
                message: m,
            })?;
        let dust = self.btc.script_pubkey().minimal_non_dust();
        let to = self.btc.clone();
        self.spend_with(
            fee + dust,
            |inputs, change| {
                wire::peg_out_request_transaction(inputs, op_return, &to, peg, fee, Some(change))
            },
            send,
        )
    }
}

use bitcoin::hashes::Hash as _;
