//! Red team (issue #16's guard caches): a fact the guard stores or caches
//! outliving what made it true. Real HTTP against the devnet's emulators,
//! real signatures, a real SQLite file. Each test is an attack; it passes
//! when the guard holds.

use bitcoin::hashes::Hash as _;
use bitcoin::key::{Keypair, TapTweak as _};
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    absolute, transaction, Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Txid, Witness,
};
use devnet::{BitcoinEmulator, BitcoinState, StacksEmulator, User};
use frost_signer::Validator;
use peg_rules::SignPayload;

mod common;
use common::{find, guard_on_emulators, key, request, secret, stacks_state, EmulatorGuard, MAGIC};

const PEG_SECRET: u8 = 7;

/// Signs every input of `tx` with the peg wallet key (what a threshold of
/// signers' shares would aggregate to): the key-path signature.
fn sign_with_peg_key(tx: &mut Transaction, prevouts: &[TxOut]) {
    let secp = Secp256k1::new();
    let keypair = Keypair::from_secret_key(&secp, &secret(PEG_SECRET)).tap_tweak(&secp, None);
    for i in 0..tx.input.len() {
        let sighash = SighashCache::new(&*tx)
            .taproot_key_spend_signature_hash(i, &Prevouts::All(prevouts), TapSighashType::Default)
            .unwrap();
        let sig = secp.sign_schnorr_no_aux_rand(
            &Message::from_digest(sighash.to_raw_hash().to_byte_array()),
            &keypair.to_keypair(),
        );
        tx.input[i].witness = Witness::from_slice(&[sig.as_ref().to_vec()]);
    }
}

fn spend(coins: &[(OutPoint, TxOut)], output: Vec<TxOut>) -> (Transaction, Vec<TxOut>) {
    (
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: coins
                .iter()
                .map(|(o, _)| TxIn {
                    previous_output: *o,
                    ..TxIn::default()
                })
                .collect(),
            output,
        },
        coins.iter().map(|(_, o)| o.clone()).collect(),
    )
}

/// The devnet peg of the attacks: alice (allowlisted) pegged in 100 000
/// sats, minted, and asked for 30 000 back (burned); alice also paid 60 000
/// sats into the peg wallet (a surplus: what fee leftovers and plain
/// payments leave); mallory (not allowlisted) pegged in 50 000 sats,
/// rejected and never minted.
struct Peg {
    btc: BitcoinEmulator,
    _stacks: StacksEmulator,
    guard: EmulatorGuard,
    peg: bitcoin::Address,
    alice: User,
    request: Txid,
    surplus: Txid,
    rejected: Txid,
    _dir: tempfile::TempDir,
}

fn burn_script() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

fn peg() -> Peg {
    let peg_key = key(PEG_SECRET);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let burn = burn_script();
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    let mut mallory = User::new("mallory", 2);
    alice.fund(&mut b, &burn);
    mallory.fund(&mut b, &burn);
    let start_height = b.height();
    let stx = alice.stx.clone();
    let peg_in = alice
        .peg_in(&mut b, MAGIC, &peg, &stx, Amount::from_sat(100_000))
        .unwrap();
    b.mine(&burn);
    let surplus = alice
        .pay(&mut b, &peg.script_pubkey(), Amount::from_sat(60_000))
        .unwrap();
    let mstx = mallory.stx.clone();
    let rejected = mallory
        .peg_in(&mut b, MAGIC, &peg, &mstx, Amount::from_sat(50_000))
        .unwrap();
    b.mine(&burn);
    let req = alice
        .peg_out(
            &mut b,
            MAGIC,
            &peg,
            Amount::from_sat(30_000),
            Amount::from_sat(5_000),
        )
        .unwrap();
    b.mine(&burn);

    let s = stacks_state(&peg_key, &stx, &peg_in, &req);

    let (btc, stacks, mut guard, dir) = guard_on_emulators(b, s, start_height, &alice, &[peg_key]);
    assert_eq!(guard.attest(), Some(peg_key));
    Peg {
        btc,
        _stacks: stacks,
        guard,
        peg,
        alice,
        request: req,
        surplus,
        rejected,
        _dir: dir,
    }
}

impl Peg {
    fn tx(&self, txid: &Txid) -> Transaction {
        self.btc.with(|b| find(b, txid))
    }

    fn coin(&self, txid: &Txid, vout: u32) -> (OutPoint, TxOut) {
        let tx = self.tx(txid);
        (OutPoint::new(*txid, vout), tx.output[vout as usize].clone())
    }

    /// The surplus payment's coin (alice's `pay` puts the payment first).
    fn surplus_coin(&self) -> (OutPoint, TxOut) {
        self.coin(&self.surplus, 0)
    }

    /// The honest refund of mallory's peg-in: her own script, 1 000 sats fee.
    fn honest_refund(&self) -> (SignPayload, Transaction, Vec<TxOut>) {
        let peg_in = self.tx(&self.rejected);
        let funding = self.tx(&peg_in.input[0].previous_output.txid);
        let to = funding.output[peg_in.input[0].previous_output.vout as usize]
            .script_pubkey
            .clone();
        let coin = self.coin(&self.rejected, 1);
        let (tx, prevouts) = spend(
            std::slice::from_ref(&coin),
            vec![TxOut {
                value: coin.1.value - Amount::from_sat(1_000),
                script_pubkey: to,
            }],
        );
        (
            SignPayload::Refund {
                peg_in: self.rejected,
                funding,
                tx: tx.clone(),
                prevouts: prevouts.clone(),
            },
            tx,
            prevouts,
        )
    }

    /// Alice's payout: her request's fee output and the surplus coin, 30 000
    /// sats to her, 1 000 sats fee, the rest back to the peg wallet.
    fn payout(&self) -> SignPayload {
        let coins = [self.coin(&self.request, 2), self.surplus_coin()];
        let total: u64 = coins.iter().map(|(_, o)| o.value.to_sat()).sum();
        let (tx, prevouts) = spend(
            &coins,
            vec![
                TxOut {
                    value: Amount::ZERO,
                    script_pubkey: peg_rules::fulfilment_op_return(MAGIC, &[0; 32]),
                },
                TxOut {
                    value: Amount::from_sat(30_000),
                    script_pubkey: self.alice.btc.script_pubkey(),
                },
                TxOut {
                    value: Amount::from_sat(total - 30_000 - 1_000),
                    script_pubkey: self.peg.script_pubkey(),
                },
            ],
        );
        SignPayload::Fulfilment {
            request: self.request,
            tx,
            prevouts,
        }
    }

    fn broadcast_and_mine(&self, mut tx: Transaction, prevouts: &[TxOut]) -> Txid {
        sign_with_peg_key(&mut tx, prevouts);
        self.btc.with(|b| {
            let txid = b.send(tx).unwrap();
            b.mine(&burn_script());
            txid
        })
    }
}

/// A Bitcoin reorg removes the block that confirmed mallory's refund (the
/// refund this guard signed), and the new chain does not carry it (yet):
/// her peg-in's output 1 is unspent again and still owed to her. Between
/// the refund's confirmation and the reorg the guard checked a request and
/// marked the peg-in "refunded" (its output 1 seen spent while a refund of
/// it was signed). A payout that now spends her coin must be refused as it
/// is before the refund confirms (`fulfilment.input`): signed, it makes her
/// refund unconfirmable forever and hands her 50 000 sats to the peg wallet
/// as a surplus — a theft from the depositor by whoever holds the
/// coordinator's keys, at the price of one stale block.
#[test]
fn a_refund_reorged_out_leaves_its_peg_in_owed() {
    let mut p = peg();
    let peg_key = key(PEG_SECRET);
    let (refund, refund_tx, refund_prevouts) = p.honest_refund();
    p.guard.check(&request(1, &refund, &peg_key)).unwrap();
    p.broadcast_and_mine(refund_tx, &refund_prevouts);
    // Any check now sees the refund's spend confirmed (and the honest
    // payout passes, as without a reorg).
    p.guard.check(&request(2, &p.payout(), &peg_key)).unwrap();
    // The reorg: the refund's block goes stale, the refund is not mined
    // again (dropped from the mempool: out-fee'd, or a miner's choice), and
    // the new chain is longer.
    p.btc.with(|b| {
        b.invalidate_tip();
        let dropped = b.take_mempool();
        assert!(!dropped.is_empty(), "the refund went back to the mempool");
        b.mine(&burn_script());
        b.mine(&burn_script());
    });
    assert!(
        p.btc.with(|b| {
            b.unspent(&p.peg.script_pubkey())
                .iter()
                .any(|(o, _, _)| *o == OutPoint::new(p.rejected, 1))
        }),
        "mallory's peg-in output 1 is unspent again"
    );
    let coins = [p.coin(&p.request, 2), p.coin(&p.rejected, 1)];
    let total: u64 = coins.iter().map(|(_, o)| o.value.to_sat()).sum();
    let (tx, prevouts) = spend(
        &coins,
        vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: peg_rules::fulfilment_op_return(MAGIC, &[0; 32]),
            },
            TxOut {
                value: Amount::from_sat(30_000),
                script_pubkey: p.alice.btc.script_pubkey(),
            },
            TxOut {
                value: Amount::from_sat(total - 30_000 - 1_000),
                script_pubkey: p.peg.script_pubkey(),
            },
        ],
    );
    let e = p
        .guard
        .check(&request(
            3,
            &SignPayload::Fulfilment {
                request: p.request,
                tx,
                prevouts,
            },
            &peg_key,
        ))
        .expect_err("a payout spending a peg-in owed to its depositor passed");
    assert!(e.starts_with("fulfilment.input"), "{e}");
}
