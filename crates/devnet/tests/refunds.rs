//! Refunds of rejected peg-ins (issue #14) on the devnet: emulated nodes
//! over real HTTP, real FROST signatures, every signer's guard reading its
//! own node URLs and the signer set file's allowlist.
//!
//! The end-to-end test drives the library path `coordinator-cli refund`
//! takes (`request_refund`, then the loop); `bins/coordinator-cli/tests/
//! refund.rs` drives the binary itself. The attack test *is* a coordinator
//! whose message key and Stacks key are stolen: it asks the signers for
//! refunds they must refuse, naming the rule, and no BTC moves.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Transaction, Txid};
use bitcoin_node_client::{BitcoinNode, Utxo};
use coordinator::config::OpSourceKind;
use devnet::peg::{Blocks, MAGIC};
use devnet::User;
use fee_wallet::{BitcoinWallet, UnsignedFulfillment};
use peg_queue::{OpState, PegQueue};
use peg_rules::SignPayload;

use common::{peg_wallet_builder, refusals, state, Net, BTC};

/// A peg whose signers allow only user 1 (alice); users 2.. are not on
/// their allowlist.
fn net(n: u8) -> Net {
    common::net(n, |opts| opts.allowlist = vec![1])
}

impl Net {
    fn tx(&self, t: &Txid) -> Transaction {
        self.peg
            .with_bitcoin(|b| b.locate(t))
            .expect("a known transaction")
            .0
    }

    /// The peg-in's funding transaction (whose output its input 0 spends).
    fn funding(&self, peg_in: &Txid) -> Transaction {
        let spent = self.tx(peg_in).input[0].previous_output.txid;
        self.tx(&spent)
    }

    fn coin(&self, peg_in: &Txid) -> Utxo {
        self.peg
            .bitcoin_client()
            .get_tx_out(&OutPoint::new(*peg_in, 1), true)
            .unwrap()
            .expect("output 1 unspent")
    }

    /// The refund an honest coordinator builds, paying `to` instead of the
    /// depositor's script when given.
    fn refund(&self, peg_in: &Txid, to: Option<&Address>, rate: u64) -> UnsignedFulfillment {
        let depositor = peg_rules::refund_script(&self.tx(peg_in), &self.funding(peg_in)).unwrap();
        let to = to.map_or(depositor, Address::script_pubkey);
        peg_wallet_builder()
            .build_refund(&self.coin(peg_in), &to, FeeRate::from_sat_per_vb(rate))
            .unwrap()
    }

    /// Asks the signers, with the coordinator's message key, to sign the
    /// refund `u` of `peg_in` (carrying `funding`).
    fn ask_refund(
        &self,
        peg_in: &Txid,
        funding: Transaction,
        u: &UnsignedFulfillment,
    ) -> Result<Vec<bitcoin::secp256k1::schnorr::Signature>, frost_coordinator::Error> {
        let payload = SignPayload::Refund {
            peg_in: *peg_in,
            funding,
            tx: u.tx.clone(),
            prevouts: u.prevouts.clone(),
        };
        self.ask(&payload, &self.items(u))
    }

    fn held(&self) -> Amount {
        self.wallet_coins().iter().map(|u| u.txout.value).sum()
    }

    /// The transaction of the best chain spending `o`.
    fn spender(&self, o: OutPoint) -> Option<Transaction> {
        self.peg.bitcoind.with(|b| {
            (0..=b.height())
                .filter_map(|h| b.block(h))
                .flat_map(|blk| blk.txdata.iter())
                .find(|t| t.input.iter().any(|i| i.previous_output == o))
                .cloned()
        })
    }
}

/// Every signer refused, with `rule`: in the refusals the coordinator got,
/// and in each signer's own status (newer than `before`).
fn assert_refused_by_all(n: &Net, before: &[u64], refusals: &[(u32, String)], rule: &str) {
    assert!(!refusals.is_empty());
    for (id, text) in refusals {
        assert!(
            text.starts_with(&format!("{rule}:")) || text.starts_with("nonce.not-requested:"),
            "signer {id} refused with {text:?}, not {rule}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for id in 1..=n.peg.options().signers {
        loop {
            let s = n.peg.signer_status(id).unwrap();
            let last = s.last_refusal.clone().unwrap_or_default();
            if s.refused > before[id as usize - 1]
                && (last.starts_with(&format!("{rule}:")) || last.starts_with("node."))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "signer {id}'s guard did not refuse with {rule}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Mallory (not on the allowlist) pegs in 0.1 BTC: rejected. The operator's
/// refund (the library path of `coordinator-cli refund`) pays her back to
/// her own script less the fee; the op is `refunded`. A second refund is
/// refused, and a coordinator that now allows her, sent back to validation,
/// does not mint it (its output 1 is spent).
#[test]
fn a_rejected_peg_in_is_refunded_to_the_depositors_script_and_never_again() {
    let mut n = net(2);
    let stop = AtomicBool::new(false);
    let alice = n.users[0].clone();
    let mallory = n.users[1].clone();
    let mut l = n
        .peg
        .coordinator(n.peg.settings(&[&alice]), OpSourceKind::Bitcoin)
        .unwrap();
    let t = n.peg_in(1, BTC / 10);
    let rejected = n
        .peg
        .run_until(&mut l, Duration::from_secs(30), Blocks::Both, &stop, |l| {
            matches!(state(l, &t), Some(OpState::Rejected { .. }))
        })
        .unwrap();
    assert!(rejected, "{:?}", state(&l, &t));
    let held_before = n.held();

    l.request_refund(&t, "the refund test", "mallory is not on the allowlist")
        .unwrap();
    assert_eq!(state(&l, &t), Some(OpState::RefundRequested));
    let refunded = n
        .peg
        .run_until(&mut l, Duration::from_secs(60), Blocks::Both, &stop, |l| {
            state(l, &t) == Some(OpState::Refunded)
        })
        .unwrap();
    assert!(refunded, "{:?}", state(&l, &t));

    // Paid to exactly her script, the amount less a fee within the cap.
    let refund = n
        .spender(OutPoint::new(t, 1))
        .expect("the refund is on chain");
    assert_eq!(refund.input.len(), 1);
    assert_eq!(refund.output.len(), 1);
    assert_eq!(refund.output[0].script_pubkey, mallory.btc.script_pubkey());
    let fee = Amount::from_sat(BTC / 10) - refund.output[0].value;
    assert!(
        fee > Amount::ZERO && fee <= Amount::from_sat(100 * 200),
        "{fee}"
    );
    assert_eq!(
        n.held(),
        held_before - Amount::from_sat(BTC / 10),
        "only her coin left the wallet"
    );

    // Never again.
    let e = l
        .request_refund(&t, "the refund test", "twice")
        .unwrap_err();
    assert!(e.to_string().contains("refunded already"), "{e}");
    // A coordinator that allows her now still does not mint it: its
    // output 1 is spent (the mint rule), even when sent back to validation.
    drop(l);
    let mut l = n
        .peg
        .coordinator(n.peg.settings(&[&alice, &mallory]), OpSourceKind::Bitcoin)
        .unwrap();
    l.components()
        .queue
        .set_state(&t, &OpState::Detected)
        .unwrap();
    let again = n
        .peg
        .run_until(&mut l, Duration::from_secs(20), Blocks::Both, &stop, |l| {
            matches!(state(l, &t), Some(OpState::Rejected { .. }))
        })
        .unwrap();
    assert!(again);
    let Some(OpState::Rejected { reason }) = state(&l, &t) else {
        unreachable!()
    };
    assert!(reason.starts_with("peg-in.spent"), "{reason}");
    assert_eq!(n.peg.contract_calls("mint!", &t), (0, 0), "never minted");
    assert_eq!(n.peg.sbtc_balance(&mallory.stx), 0);
}

/// The coordinator's message key and Stacks key are stolen. Asked for a
/// refund to another script (or with a forged funding transaction), of a
/// peg-in minted by the stolen Stacks key, of an allowlisted (mintable)
/// peg-in, and a second refund of a refunded peg-in, every honest signer
/// refuses, naming the rule, and no BTC moves. The honest refund, asked in
/// between, is signed — the refusals are the rules', not a broken setup.
#[test]
fn a_stolen_coordinator_key_cannot_refund_elsewhere_twice_a_minted_or_a_mintable_peg_in() {
    let mut n = net(3);
    let (_, attacker) = {
        let secp = Secp256k1::new();
        let sk = SecretKey::from_slice(&[0x66; 32]).unwrap();
        (
            sk,
            Address::p2wpkh(
                &bitcoin::CompressedPublicKey(sk.public_key(&secp)),
                Network::Regtest,
            ),
        )
    };
    let alices = n.peg_in(0, BTC / 4);
    let mallorys = n.peg_in(1, BTC / 10);
    let eves = n.peg_in(2, BTC / 5);
    n.mint(&eves);
    n.mine(1);
    let held = n.held();

    // A refund of mallory's peg-in to the attacker's script.
    let before = n.refused_so_far();
    let u = n.refund(&mallorys, Some(&attacker), 2);
    let r = refusals(n.ask_refund(&mallorys, n.funding(&mallorys), &u));
    assert_refused_by_all(&n, &before, &r, "refund.destination");
    // The same with a funding transaction forged to name the attacker's
    // script: its txid is not what the peg-in's input 0 spends.
    let before = n.refused_so_far();
    let mut forged = n.funding(&mallorys);
    forged.output[0].script_pubkey = attacker.script_pubkey();
    let r = refusals(n.ask_refund(&mallorys, forged, &u));
    assert_refused_by_all(&n, &before, &r, "refund.funding");
    // Eve's peg-in, minted by the stolen Stacks key (she is not allowed).
    let before = n.refused_so_far();
    let u = n.refund(&eves, None, 2);
    let r = refusals(n.ask_refund(&eves, n.funding(&eves), &u));
    assert_refused_by_all(&n, &before, &r, "refund.minted");
    // Alice's peg-in: on the signers' allowlist, to be minted.
    let before = n.refused_so_far();
    let u = n.refund(&alices, None, 2);
    let r = refusals(n.ask_refund(&alices, n.funding(&alices), &u));
    assert_refused_by_all(&n, &before, &r, "refund.mintable");
    assert_eq!(n.held(), held, "no BTC moved");

    // The honest refund of mallory's peg-in is signed, and pays her.
    let u = n.refund(&mallorys, None, 2);
    let sigs = n
        .ask_refund(&mallorys, n.funding(&mallorys), &u)
        .expect("the honest refund is signed");
    let tx = peg_wallet_builder()
        .finalize_fulfillment(&u, &sigs)
        .unwrap();
    n.peg.with_bitcoin(|b| b.send(tx.clone())).unwrap();
    n.mine(2);
    assert_eq!(n.spender(OutPoint::new(mallorys, 1)), Some(tx.clone()));
    assert_eq!(tx.output[0].script_pubkey, n.users[1].btc.script_pubkey());
    let held = n.held();

    // A second refund of the refunded peg-in (a "replacement" built from
    // its old output at a higher fee): its output 1 is spent.
    let before = n.refused_so_far();
    let mut second = u.clone();
    second.tx.output[0].value -= Amount::from_sat(1_000);
    second.sighashes = SignPayload::Refund {
        peg_in: mallorys,
        funding: n.funding(&mallorys),
        tx: second.tx.clone(),
        prevouts: second.prevouts.clone(),
    }
    .sighashes()
    .unwrap();
    let r = refusals(n.ask_refund(&mallorys, n.funding(&mallorys), &second));
    assert_refused_by_all(&n, &before, &r, "refund.spent");
    assert_eq!(n.held(), held, "no BTC moved");
}

/// The same refund on real nodes: Bitcoin Core (regtest) and a stacks-node
/// (mocknet), five guarded signers. Skips, saying why, when `BITCOIND_EXE`
/// or `STACKS_NODE_EXE` is unset.
#[test]
#[allow(clippy::print_stdout)]
fn a_rejected_peg_in_is_refunded_on_real_nodes() {
    use devnet::real_peg::demo_users;
    use devnet::{RealPeg, RealPegOptions, RealPegStart};
    let _turn = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let peg = match RealPeg::start(RealPegOptions::new(dir.path())) {
        Ok(RealPegStart::Started(p)) => p,
        Ok(RealPegStart::Skipped(why)) => {
            println!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    };
    let stop = AtomicBool::new(false);
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    let mut users = demo_users();
    peg.fund_users(&mut users).unwrap();
    let from = peg.bitcoin_height().unwrap();
    let allowed: Vec<&User> = users.iter().take(3).collect();
    let mut l = peg.coordinator(peg.settings(&allowed).unwrap()).unwrap();
    let _miner = peg.miner(Duration::from_millis(200));
    // Mallory (demo user 4) is on neither allowlist.
    let mallory = &mut users[3];
    let to = mallory.stx.clone();
    let t = mallory
        .peg_in_with(
            |tx| peg.send(tx),
            MAGIC,
            &wallet,
            &to,
            Amount::from_sat(BTC / 10),
        )
        .unwrap();
    let rejected = peg.run_until(&mut l, Duration::from_secs(60), &stop, |l| {
        matches!(state(l, &t), Some(OpState::Rejected { .. }))
    });
    assert!(rejected, "{:?}\n{}", state(&l, &t), peg.log_tails());
    l.request_refund(&t, "the real-node refund test", "not on the allowlist")
        .unwrap();
    let refunded = peg.run_until(&mut l, Duration::from_secs(90), &stop, |l| {
        state(l, &t) == Some(OpState::Refunded)
    });
    assert!(refunded, "{:?}\n{}", state(&l, &t), peg.log_tails());
    // On Core: output 1 is spent, by a transaction paying her script only.
    let node = peg.bitcoin_client();
    assert!(node
        .get_tx_out(&OutPoint::new(t, 1), true)
        .unwrap()
        .is_none());
    let tip = peg.bitcoin_height().unwrap();
    let refund = (from..=tip)
        .rev()
        .find_map(|h| {
            let block = node.get_block(&node.get_block_hash(h).unwrap()).unwrap();
            block.txdata.into_iter().find(|tx| {
                tx.input
                    .iter()
                    .any(|i| i.previous_output == OutPoint::new(t, 1))
            })
        })
        .expect("the refund is in a block");
    assert_eq!(refund.output.len(), 1);
    assert_eq!(refund.output[0].script_pubkey, users[3].btc.script_pubkey());
    assert!(!peg.was_minted(&t).unwrap());
    let e = l
        .request_refund(&t, "the real-node refund test", "twice")
        .unwrap_err();
    assert!(e.to_string().contains("refunded already"), "{e}");
}
