//! A devnet user: one secp256k1 key used as a Bitcoin P2WPKH wallet and a
//! Stacks account, able to peg in and request peg-outs with real, signed
//! Bitcoin transactions.
//!
//! A thin wrapper over the testers' library, [`peg_user`]: the demo users
//! build and sign exactly what `sbtc` does; this only remembers their coins
//! and hands transactions to the emulator (or to a real bitcoind).

use bitcoin::secp256k1::SecretKey;
use bitcoin::{Address, Amount, Network, OutPoint, Transaction, TxOut, Txid};
use peg_user::{Built, Coin, MinerFee, Request, UserKey};
use stacks_wire::{PrincipalData, StacksNetwork};

use crate::bitcoin::{BitcoinState, Refusal};

/// A user.
#[derive(Debug, Clone)]
pub struct User {
    /// A name for summaries.
    pub name: String,
    key: UserKey,
    /// The user's Bitcoin address (P2WPKH, regtest).
    pub btc: Address,
    /// The user's Stacks principal.
    pub stx: PrincipalData,
    coins: Vec<(OutPoint, TxOut)>,
}

/// Miner fee the user pays on its own transactions.
const USER_FEE: Amount = Amount::from_sat(5_000);

fn refusal(name: &str, e: &peg_user::Error) -> Refusal {
    let code = match e {
        peg_user::Error::InsufficientFunds { .. } => -6,
        _ => -1,
    };
    Refusal {
        code,
        message: format!("{name}: {e}"),
    }
}

impl User {
    /// A user whose key is derived from `seed`.
    pub fn new(name: &str, seed: u8) -> Self {
        let mut b = [seed; 32];
        b[0] = 0x42;
        let sk = SecretKey::from_slice(&b).expect("a fixed valid key");
        let key = UserKey::new(sk);
        User {
            name: name.to_owned(),
            btc: key.btc_address(Network::Regtest),
            stx: key.stacks_address(StacksNetwork::Testnet).into(),
            key,
            coins: Vec::new(),
        }
    }

    /// The user's key, as the testers' library holds it.
    pub fn key(&self) -> &UserKey {
        &self.key
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

    fn wallet_coins(&self) -> Vec<Coin> {
        self.coins
            .iter()
            .map(|(outpoint, txout)| Coin {
                outpoint: *outpoint,
                txout: txout.clone(),
            })
            .collect()
    }

    /// Hands a transaction the library built to `send`; on success the
    /// coins it spent are gone and its change is the user's.
    fn send_built(
        &mut self,
        built: Result<Built, peg_user::Error>,
        send: impl FnOnce(Transaction) -> Result<Txid, Refusal>,
    ) -> Result<Txid, Refusal> {
        let built = built.map_err(|e| refusal(&self.name, &e))?;
        // Refused: the coins are still ours.
        let txid = send(built.signed.clone())?;
        self.coins
            .retain(|(o, _)| !built.spent.iter().any(|c| c.outpoint == *o));
        if let Some(c) = built.change {
            self.coins
                .push((OutPoint::new(txid, c.outpoint.vout), c.txout));
        }
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
        let built = peg_user::payment(
            &self.key,
            Network::Regtest,
            &self.wallet_coins(),
            to,
            amount,
            MinerFee::Fixed(USER_FEE),
        );
        self.send_built(built, |tx| b.send(tx))
    }

    /// Signs input `index` of `tx`, which spends the user's P2WPKH output `prev`.
    pub fn sign_input(&self, tx: &mut Transaction, index: usize, prev: &TxOut) {
        if let Err(e) = self.key.sign_input(tx, index, prev) {
            log::warn!("{}: input {index} not signed: {e}", self.name);
        }
    }

    /// The user's key as regtest WIF, for driving the devnet by hand with
    /// other Bitcoin tools. A devnet key: never for real funds.
    pub fn wif(&self) -> String {
        self.key.wif(Network::Regtest)
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
        let built = peg_user::peg_in(
            &self.key,
            Network::Regtest,
            &self.wallet_coins(),
            magic,
            peg,
            recipient,
            amount,
            MinerFee::Fixed(USER_FEE),
        );
        self.send_built(built, send)
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
        let to = self.btc.clone();
        let built = peg_user::peg_out_request(
            &self.key,
            Network::Regtest,
            &self.wallet_coins(),
            magic,
            &Request {
                amount,
                recipient: &to,
                requester: self.key.secret_key(),
                peg_wallet: peg,
                fee_output: fee,
                nonce_data: None,
            },
            MinerFee::Fixed(USER_FEE),
        );
        self.send_built(built, send)
    }
}

/// Writes `sbtc.toml` in the peg's folder for the testers' command line
/// (`sbtc --config FILE …`) against this peg: its nodes, its contract, the
/// coordinator's status endpoint at `coordinator_url` (`/attestations`,
/// `/ops/TXID`), and the signers' own signer set file (with their
/// allowlist). Returns its path.
///
/// # Errors
/// When the file cannot be written.
pub fn write_sbtc_config(
    peg: &crate::Peg,
    coordinator_url: &str,
) -> anyhow::Result<std::path::PathBuf> {
    write_sbtc_toml(&SbtcToml {
        dir: &peg.options().dir,
        contract: &peg.contract,
        stacks_node_url: &peg.stacks.url(),
        bitcoind_url: &peg.bitcoind.url(),
        bitcoind_auth: None,
        coordinator_url,
    })
}

/// What `sbtc.toml` names, for [`write_sbtc_toml`].
#[derive(Debug, Clone)]
pub struct SbtcToml<'a> {
    /// The peg's folder: the file goes there, next to `signers/signer.toml`.
    pub dir: &'a std::path::Path,
    /// The sBTC contract.
    pub contract: &'a stacks_wire::ContractId,
    /// The stacks-node's RPC.
    pub stacks_node_url: &'a str,
    /// The bitcoind's JSON-RPC.
    pub bitcoind_url: &'a str,
    /// Its user and password, if it needs them.
    pub bitcoind_auth: Option<(&'a str, &'a str)>,
    /// The coordinator's status endpoint.
    pub coordinator_url: &'a str,
}

/// Writes `DIR/sbtc.toml` (see [`write_sbtc_config`]); returns its path.
///
/// # Errors
/// When the file cannot be written.
pub fn write_sbtc_toml(t: &SbtcToml<'_>) -> anyhow::Result<std::path::PathBuf> {
    let path = t.dir.join("sbtc.toml");
    let auth = t.bitcoind_auth.map_or(String::new(), |(u, p)| {
        format!("user = \"{u}\"\npassword = \"{p}\"\n")
    });
    let text = format!(
        r#"# Written by the devnet for `sbtc --config {path}`.
network = "regtest"
contract = "{contract}"
# The signers' signer set file (with its [policy] and allowlist), relative to this file.
signer_set_file = "signers/signer.toml"
coordinator_url = "{coordinator_url}"
stacks_node_url = "{stacks}"

[bitcoin_node]
url = "{bitcoind}"
{auth}"#,
        path = path.display(),
        contract = t.contract,
        coordinator_url = t.coordinator_url,
        stacks = t.stacks_node_url,
        bitcoind = t.bitcoind_url,
    );
    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(path)
}
