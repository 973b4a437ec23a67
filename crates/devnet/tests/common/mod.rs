//! The peg fixture shared by the devnet's attack, red-team and refund
//! tests: a started peg with its key published and funded users, the
//! coordinator's keys in the test's hands (it signs relay messages with the
//! coordinator's message key and contract calls with its Stacks key), and
//! the helpers that read a signing round's refusals.
//!
//! Each test binary compiles its own copy and uses only part of it, hence
//! the `dead_code` allowances.

use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, Amount, FeeRate, Network, Txid};
use bitcoin_node_client::{BitcoinNode, Utxo};
use coordinator::HttpCoordinator;
use devnet::peg::MAGIC;
use devnet::{Peg, PegOptions, User};
use fee_wallet::{
    BitcoinFeePolicy, BitcoinWallet, FulfillmentInputs, PegWallet, StacksWallet,
    UnsignedFulfillment,
};
use frost_coordinator::{FrostCoordinator, SignItem, ToSign};
use peg_ops::{PegInOp, PegOutRequestOp};
use peg_queue::{OpState, PegQueue};
use peg_rules::SignPayload;
use stacks_node_client::StacksNode;
use stacks_wire::PrincipalData;

/// One bitcoin, in satoshis.
pub(crate) const BTC: u64 = 100_000_000;

/// One peg at a time: five signers doing FROST in a debug build are heavy,
/// and four pegs at once on a small machine make nodes time out.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This binary's turn to run a peg, held until dropped.
pub(crate) fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A started peg with its key published and `n` funded users.
pub(crate) struct Net {
    pub(crate) peg: Peg,
    _turn: std::sync::MutexGuard<'static, ()>,
    pub(crate) key: PublicKey,
    pub(crate) wallet: Address,
    pub(crate) users: Vec<User>,
    _dir: tempfile::TempDir,
}

/// Starts a peg (options as `edit` leaves them) with `n` funded users,
/// waiting its turn behind any other peg of this binary.
pub(crate) fn net(n: u8, edit: impl FnOnce(&mut PegOptions)) -> Net {
    let turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PegOptions::new(dir.path());
    opts.sign_timeout = Duration::from_secs(20);
    edit(&mut opts);
    let peg = Peg::start(opts).unwrap();
    let key = peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let users = peg.users(n);
    Net {
        peg,
        _turn: turn,
        key,
        wallet,
        users,
        _dir: dir,
    }
}

/// The peg wallet an honest coordinator builds with.
pub(crate) fn peg_wallet_builder() -> PegWallet {
    PegWallet::new(
        Network::Regtest,
        MAGIC,
        BitcoinFeePolicy {
            floor: FeeRate::from_sat_per_vb_u32(2),
            cap: FeeRate::from_sat_per_vb_u32(100),
            subsidy: Amount::ZERO,
        },
    )
}

/// The state of op `t` in `l`'s queue.
#[allow(dead_code)]
pub(crate) fn state(l: &HttpCoordinator, t: &Txid) -> Option<OpState> {
    l.components().queue.get(t).unwrap().map(|o| o.state)
}

impl Net {
    /// Mines `n` blocks on both chains.
    pub(crate) fn mine(&self, n: usize) {
        for _ in 0..n {
            self.peg.mine();
        }
    }

    /// The peg-in op `txid` as the Stacks node saw it in a block.
    pub(crate) fn peg_in_op(&self, txid: &Txid) -> PegInOp {
        self.peg
            .stacks
            .with(|s| {
                s.burn_ops
                    .values()
                    .flat_map(|(ins, _)| ins.iter())
                    .find(|o| o.txid == *txid)
                    .cloned()
            })
            .expect("the peg-in is in a block")
    }

    /// The peg-out request op `txid` as the Stacks node saw it in a block.
    #[allow(dead_code)]
    pub(crate) fn request_op(&self, txid: &Txid) -> PegOutRequestOp {
        self.peg
            .stacks
            .with(|s| {
                s.burn_ops
                    .values()
                    .flat_map(|(_, outs)| outs.iter())
                    .find(|o| o.txid == *txid)
                    .cloned()
            })
            .expect("the request is in a block")
    }

    /// Broadcasts a contract call signed with the coordinator's Stacks key
    /// and mines a Stacks block.
    pub(crate) fn submit(
        &self,
        build: impl FnOnce(&dyn StacksWallet, u64) -> peg_ops::SignedStacksTx,
    ) {
        let w = self.peg.stacks_wallet();
        let me: PrincipalData = w.address().into();
        let nonce = self.peg.stacks_client().get_account(&me).unwrap().nonce;
        let tx = build(&w, nonce);
        self.peg
            .stacks_client()
            .broadcast_transaction(&tx.raw)
            .unwrap();
        self.peg.stacks.with(|s| s.mine());
    }

    /// Mints the (mined) peg-in `t` with the coordinator's Stacks key.
    pub(crate) fn mint(&self, t: &Txid) {
        let op = self.peg_in_op(t);
        self.submit(|w, n| w.build_mint(&op, n, None).unwrap());
        assert_eq!(self.peg.contract_calls("mint!", t), (1, 0));
    }

    /// User `i` pegs `sats` in; mined, then minted with the coordinator's
    /// Stacks key.
    #[allow(dead_code)]
    pub(crate) fn peg_in_and_mint(&mut self, i: usize, sats: u64) -> Txid {
        let t = self.peg_in(i, sats);
        self.mint(&t);
        t
    }

    /// User `i` pegs `sats` in to their own principal (mined, not minted).
    pub(crate) fn peg_in(&mut self, i: usize, sats: u64) -> Txid {
        let (peg, users, wallet) = (&self.peg, &mut self.users, &self.wallet);
        let u = &mut users[i];
        let to = u.stx.clone();
        let t = peg
            .with_bitcoin(|b| u.peg_in(b, MAGIC, wallet, &to, Amount::from_sat(sats)))
            .unwrap();
        self.mine(1);
        t
    }

    /// User `i` requests a peg-out of `sats` paying `fee` (mined).
    #[allow(dead_code)]
    pub(crate) fn request(&mut self, i: usize, sats: u64, fee: u64) -> PegOutRequestOp {
        let (peg, users, wallet) = (&self.peg, &mut self.users, &self.wallet);
        let u = &mut users[i];
        let t = peg
            .with_bitcoin(|b| {
                u.peg_out(
                    b,
                    MAGIC,
                    wallet,
                    Amount::from_sat(sats),
                    Amount::from_sat(fee),
                )
            })
            .unwrap();
        self.mine(1);
        self.request_op(&t)
    }

    /// Burns the request's amount from its requester with the coordinator's
    /// Stacks key.
    #[allow(dead_code)]
    pub(crate) fn burn(&self, op: &PegOutRequestOp) {
        let requester = op.requester(stacks_wire::StacksNetwork::Testnet).unwrap();
        self.submit(|w, n| w.build_burn(op, &requester, n, None).unwrap());
        assert_eq!(self.peg.contract_calls("burn!", &op.txid), (1, 0));
    }

    /// The peg wallet's unspent coins.
    pub(crate) fn wallet_coins(&self) -> Vec<Utxo> {
        self.peg
            .bitcoin_client()
            .list_unspent(&self.wallet.script_pubkey())
            .unwrap()
    }

    /// The fulfilment of `op` an honest coordinator would build now.
    #[allow(dead_code)]
    pub(crate) fn fulfilment(&self, op: &PegOutRequestOp, extra: &[Utxo]) -> UnsignedFulfillment {
        let mut utxos = self.wallet_coins();
        utxos.extend(extra.iter().cloned());
        let tip = self.peg.stacks_client().get_info().unwrap().stacks_tip;
        peg_wallet_builder()
            .build_fulfillment(
                op,
                &self.key,
                &FulfillmentInputs {
                    utxos,
                    fee_rate: Some(FeeRate::from_sat_per_vb_u32(2)),
                    stacks_chain_tip: tip,
                    reserved: Vec::new(),
                },
            )
            .unwrap()
    }

    /// The items the signers sign for `u`: one Taproot sighash an input.
    pub(crate) fn items(&self, u: &UnsignedFulfillment) -> Vec<SignItem> {
        u.sighashes
            .iter()
            .map(|s| SignItem {
                key: self.key,
                message: ToSign::Taproot { sighash: *s },
            })
            .collect()
    }

    /// Asks the signers, with the coordinator's message key, to sign
    /// `payload`'s items. (A broken setup panics; the `Result` is the
    /// signers' answer.)
    #[allow(clippy::unwrap_in_result)]
    pub(crate) fn ask(
        &self,
        payload: &SignPayload,
        items: &[SignItem],
    ) -> Result<Vec<bitcoin::secp256k1::schnorr::Signature>, frost_coordinator::Error> {
        let mut frost = self.peg.frost().unwrap();
        frost.sign(&payload.encode(), items)
    }

    /// Asks for the fulfilment `u` of `op`; on success broadcasts and mines it.
    #[allow(clippy::unwrap_in_result, dead_code)]
    pub(crate) fn pay(
        &self,
        op: &PegOutRequestOp,
        u: &UnsignedFulfillment,
    ) -> Result<Txid, frost_coordinator::Error> {
        let payload = SignPayload::Fulfilment {
            request: op.txid,
            tx: u.tx.clone(),
            prevouts: u.prevouts.clone(),
        };
        let sigs = self.ask(&payload, &self.items(u))?;
        let tx = peg_wallet_builder().finalize_fulfillment(u, &sigs).unwrap();
        let t = self.peg.with_bitcoin(|b| b.send(tx)).unwrap();
        self.mine(1);
        Ok(t)
    }

    /// What the best chain paid `op`'s recipient for it.
    #[allow(dead_code)]
    pub(crate) fn payouts(&self, op: &PegOutRequestOp) -> Vec<Amount> {
        self.peg.payouts(&op.txid, &op.recipient.script_pubkey())
    }

    /// How many requests each signer's guard has refused so far.
    pub(crate) fn refused_so_far(&self) -> Vec<u64> {
        (1..=self.peg.options().signers)
            .map(|id| self.peg.signer_status(id).map_or(0, |s| s.refused))
            .collect()
    }
}

/// The refusals of a failed signing round, by signer id.
pub(crate) fn refusals(
    r: Result<Vec<bitcoin::secp256k1::schnorr::Signature>, frost_coordinator::Error>,
) -> Vec<(u32, String)> {
    match r {
        Err(frost_coordinator::Error::Refused { refusals }) => refusals,
        Err(e) => panic!("expected refusals, got another error: {e}"),
        Ok(s) => panic!("the signers signed ({} signatures)", s.len()),
    }
}

/// The attacker's key and its P2WPKH address.
#[allow(dead_code)]
pub(crate) fn attacker() -> (SecretKey, Address) {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[0x66; 32]).unwrap();
    let a = Address::p2wpkh(
        &bitcoin::CompressedPublicKey(sk.public_key(&secp)),
        Network::Regtest,
    );
    (sk, a)
}
