//! Attacks on the peg (issue #13), on the devnet: emulated nodes over real
//! HTTP, real FROST signatures, every signer running its guard against its
//! own node URLs.
//!
//! Where the attacker holds the coordinator's keys, the test *is* the
//! coordinator: it signs relay messages with the coordinator's message key
//! (a `RelayFrostCoordinator` over the peg's relay) and contract calls with
//! its Stacks key. Each attack is preceded, in the same peg, by the honest
//! version of the same request being signed — so a refusal is the guard's
//! doing, not a broken setup.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Amount, OutPoint, Transaction, TxIn, TxOut, Txid};
use bitcoin_node_client::Utxo;
use coordinator::config::OpSourceKind;
use coordinator::HttpCoordinator;
use devnet::peg::{Blocks, MAGIC};
use devnet::proxy::{rpc_result, Answer, Lie};
use devnet::User;
use frost_coordinator::{SignItem, ToSign};
use peg_queue::OpState;
use peg_rules::SignPayload;
use stacks_wire::Value;

use common::{attacker, net, refusals, state, Net, BTC};

/// Every signer in `ids` refused, with a rule named `rule`: the refusals the
/// coordinator got (the round ends as soon as the threshold is out of
/// reach, so it may not hear from all) and each signer's own status (its
/// guard's last refusal, newer than `before`). `rule` may name
/// alternatives, `a|b`.
fn assert_refused_by(n: &Net, before: &[u64], refusals: &[(u32, String)], ids: &[u32], rule: &str) {
    let names = |text: &str| rule.split('|').any(|r| text.starts_with(&format!("{r}:")));
    // A signer that refused the request also refuses its nonce requests;
    // the coordinator names whichever refusal reached it first.
    for (id, text) in refusals {
        if ids.contains(id) {
            assert!(
                names(text) || text.starts_with("nonce.not-requested:"),
                "signer {id} refused with {text:?}, not {rule}"
            );
        }
    }
    assert!(!refusals.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for id in ids {
        loop {
            // A slow signer may still be refusing an older request (one
            // the others already signed): wait for this rule.
            let s = n.peg.signer_status(*id).unwrap();
            let last = s.last_refusal.clone().unwrap_or_default();
            // A guard whose own node did not answer in time (seen on a
            // loaded two-core machine) refuses too, naming the node: still
            // no signature, which `refusals` already asserted.
            if s.refused > before[*id as usize - 1] && (names(&last) || last.starts_with("node.")) {
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
/// (a) The coordinator's message key is stolen. The honest payout of a
/// burned request is signed; then a sweep of the whole peg wallet to the
/// attacker, a payout of a request that does not exist, and a second payout
/// of the paid request are each refused by every signer, naming the rule,
/// and no signature is produced.
#[test]
fn a_stolen_coordinator_message_key_cannot_sweep_invent_or_repeat_a_payout() {
    let mut n = net(1, |_| {});
    n.peg_in_and_mint(0, BTC);
    let op = n.request(0, 40_000_000, 20_000);
    n.burn(&op);
    n.mine(1);

    // The honest payout: signed by the guards, paid once.
    let honest = n.fulfilment(&op, &[]);
    n.pay(&op, &honest).expect("the honest payout is signed");
    assert_eq!(n.payouts(&op), vec![Amount::from_sat(40_000_000)]);
    let all: Vec<u32> = (1..=5).collect();

    // A sweep of every peg wallet coin to the attacker.
    let coins = n.wallet_coins();
    assert!(!coins.is_empty());
    let total: Amount = coins.iter().map(|c| c.txout.value).sum();
    let (_, thief) = attacker();
    let sweep = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: coins
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                ..TxIn::default()
            })
            .collect(),
        output: vec![TxOut {
            value: total - Amount::from_sat(10_000),
            script_pubkey: thief.script_pubkey(),
        }],
    };
    let prevouts: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
    let sighashes = peg_rules::payload::sighashes(&sweep, &prevouts).unwrap();
    let items: Vec<SignItem> = sighashes
        .iter()
        .map(|s| SignItem {
            key: n.key,
            message: ToSign::Taproot { sighash: *s },
        })
        .collect();
    let before = n.refused_so_far();
    let r = refusals(n.ask(
        &SignPayload::Sweep {
            tx: sweep,
            prevouts,
        },
        &items,
    ));
    assert_refused_by(&n, &before, &r, &all, "sweep.output");

    // A payout of a request that was never made: a fabricated op whose
    // "fee output" is a real peg wallet coin.
    let mut ghost = op.clone();
    ghost.txid = Txid::from_byte_array([0x77; 32]);
    ghost.recipient = thief.clone().into();
    let fake_fee = Utxo {
        outpoint: OutPoint::new(ghost.txid, 2),
        txout: TxOut {
            value: Amount::from_sat(20_000),
            script_pubkey: n.wallet.script_pubkey(),
        },
        confirmations: 3,
    };
    let u = n.fulfilment(&ghost, &[fake_fee]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&ghost, &u).map(|_| Vec::new()));
    assert_refused_by(&n, &before, &r, &all, "request.unknown");

    // A second payout of the paid request: its fee output is spent.
    let spent_fee = Utxo {
        outpoint: OutPoint::new(op.txid, 2),
        txout: honest.prevouts[0].clone(),
        confirmations: 3,
    };
    let again = n.fulfilment(&op, &[spent_fee]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&op, &again).map(|_| Vec::new()));
    assert_refused_by(&n, &before, &r, &all, "request.spent");
    assert_eq!(
        n.payouts(&op),
        vec![Amount::from_sat(40_000_000)],
        "paid exactly once"
    );
}

/// (b) The coordinator's Stacks key mints sBTC for a peg-in that never
/// happened; a valid-looking request burns it. The peg wallet holds more
/// than the unbacked mint in surplus (a peg-in by a user not on the
/// allowlist, never minted): still no payout, every signer refuses
/// (`backing`).
#[test]
fn sbtc_minted_without_btc_is_never_paid_whatever_the_surplus() {
    // User 2 is not on the signers' allowlist.
    let mut n = net(2, |o| o.allowlist = vec![1]);
    n.peg_in_and_mint(0, BTC);
    // The surplus: 0.5 BTC the peg wallet holds and owes (never minted).
    n.peg_in(1, BTC / 2);
    // The unbacked mint: 0.2 sBTC to user 1 for a txid that paid nothing.
    let small = n.peg_in(0, 1_000);
    let mut fake = n.peg_in_op(&small);
    fake.txid = Txid::from_byte_array([0x42; 32]);
    fake.amount = Amount::from_sat(20_000_000);
    n.submit(|w, k| w.build_mint(&fake, k, None).unwrap());
    assert_eq!(n.peg.contract_calls("mint!", &fake.txid), (1, 0));
    assert_eq!(
        n.peg.sbtc_balance(&n.users[0].stx),
        u128::from(BTC + 20_000_000)
    );
    // Burned by a valid request of the unbacked amount.
    let op = n.request(0, 20_000_000, 20_000);
    n.burn(&op);
    n.mine(1);
    let u = n.fulfilment(&op, &[]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&op, &u).map(|_| Vec::new()));
    assert_refused_by(&n, &before, &r, &[1, 2, 3, 4, 5], "backing");
    assert!(n.payouts(&op).is_empty());
}

/// (f) The coordinator's Stacks key publishes a peg wallet key the signers
/// do not hold: every signer refuses every payout with `key.not-ours`, its
/// status shows it, and it stops attesting.
#[test]
fn a_peg_wallet_key_not_ours_in_the_contract_stops_every_payout() {
    let mut n = net(1, |_| {});
    n.peg_in_and_mint(0, BTC);
    let op = n.request(0, 30_000_000, 20_000);
    n.burn(&op);
    n.mine(1);
    for id in 1..=5 {
        let s = n.peg.signer_status(id).unwrap();
        assert_ne!(s.published_key_ours, Some(false), "signer {id}: {s:?}");
    }
    let (sk, _) = attacker();
    let stolen = sk.public_key(&Secp256k1::new());
    n.submit(|w, k| w.build_set_wallet_public_key(&stolen, k).unwrap());
    n.mine(1);
    assert_eq!(
        n.peg.stacks.with(|s| s.model.wallet_key.clone()),
        Some(stolen.serialize().to_vec())
    );
    let u = n.fulfilment(&op, &[]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&op, &u).map(|_| Vec::new()));
    assert_refused_by(&n, &before, &r, &[1, 2, 3, 4, 5], "key.not-ours");
    for id in 1..=5 {
        let s = n.peg.signer_status(id).unwrap();
        assert_eq!(s.published_key, Some(stolen), "signer {id}: {s:?}");
        assert_eq!(s.published_key_ours, Some(false), "signer {id}: {s:?}");
    }
    assert!(n.payouts(&op).is_empty());
}

/// (e) Lying nodes, per signer. Signers 1 and 2 (fewer than the threshold
/// of 3) read their nodes through proxies that fabricate what the attacker
/// needs; signers 3–5 read the emulators. A coordinator with the stolen
/// message key asks for a payout of a request that never existed and whose
/// burn never happened: the honest three refuse, so no signature. The
/// correct payout of a real request is still signed by the honest three.
/// With three liars hiding the coins, the honest two cannot sign: the
/// payout waits (no signature), and is paid once the lies stop.
#[test]
fn lying_nodes_of_fewer_than_the_threshold_cannot_make_a_wrong_payout() {
    let mut n = net(2, |o| o.proxied = vec![1, 2, 3]);
    n.peg_in_and_mint(0, BTC);
    let real = n.request(0, 25_000_000, 20_000);
    n.burn(&real);
    n.mine(1);

    // The lie: a peg-out request of 0.5 BTC by user 2, signed but never
    // broadcast, in the liars' chain, and burned in their contract.
    let mut ghost_tx = None;
    let wallet = n.wallet.clone();
    n.users[1]
        .peg_out_with(
            |tx| {
                let t = tx.compute_txid();
                ghost_tx = Some(tx);
                Ok(t)
            },
            MAGIC,
            &wallet,
            Amount::from_sat(BTC / 2),
            Amount::from_sat(20_000),
        )
        .unwrap();
    let ghost_tx = ghost_tx.unwrap();
    let mut ghost = real.clone();
    ghost.txid = ghost_tx.compute_txid();
    ghost.amount = Amount::from_sat(BTC / 2);
    ghost.recipient = n.users[1].btc.clone().into();
    let ghost_fee = Utxo {
        outpoint: OutPoint::new(ghost.txid, 2),
        txout: ghost_tx.output[2].clone(),
        confirmations: 3,
    };
    let real_tx = ghost_tx.clone();
    let ghost_txid = ghost.txid;
    let burned = Value::Optional(Some(Box::new(Value::Tuple(
        [
            (
                "amount".to_owned(),
                Value::UInt(u128::from(ghost.amount.to_sat())),
            ),
            (
                "principal".to_owned(),
                Value::Principal(n.users[1].stx.clone()),
            ),
        ]
        .into_iter()
        .collect(),
    ))));
    for id in [1, 2] {
        let b = n.peg.bitcoin_proxy(id).unwrap();
        let tx_hex = bitcoin::consensus::encode::serialize_hex(&real_tx);
        b.set(Lie::rpc("getrawtransaction", move |call, real_reply| {
            if call.rpc_params.get(0).and_then(|v| v.as_str()) == Some(&ghost_txid.to_string()) {
                rpc_result(serde_json::json!({"hex": tx_hex, "confirmations": 6, "txid": ghost_txid.to_string()}))
            } else {
                real_reply
            }
        }));
        b.set(Lie::rpc("gettxout", move |call, real_reply| {
            if call.rpc_params.get(0).and_then(|v| v.as_str()) == Some(&ghost_txid.to_string()) {
                rpc_result(serde_json::json!({
                    "bestblock": "00".repeat(32), "confirmations": 6, "value": 0.0002,
                    "scriptPubKey": {"hex": "", "address": ""}, "coinbase": false
                }))
            } else {
                real_reply
            }
        }));
        let s = n.peg.stacks_proxy(id).unwrap();
        let v = burned.clone();
        s.set(Lie::path("/get-burn", move |_, _| Answer::call_read(&v)));
        s.set(Lie::path("/was-burned", |_, _| {
            Answer::call_read(&Value::Bool(true))
        }));
    }
    let u = n.fulfilment(&ghost, &[ghost_fee]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&ghost, &u).map(|_| Vec::new()));
    // The honest three (3 reads through a proxy that does not lie yet).
    assert_refused_by(&n, &before, &r, &[3, 4, 5], "request.unknown");
    assert!(n.payouts(&ghost).is_empty());

    // The real payout: the three honest signers (3, 4, 5) sign it.
    let u = n.fulfilment(&real, &[]);
    n.pay(&real, &u)
        .expect("the threshold of honest signers pays the real request");
    assert_eq!(n.payouts(&real), vec![Amount::from_sat(25_000_000)]);

    // Three liars now hide the peg wallet's coins (gettxout: spent) from
    // their signers: the honest two are below the threshold, so the next
    // real payout waits.
    let next = n.request(0, 10_000_000, 20_000);
    n.burn(&next);
    n.mine(1);
    for id in [1, 2, 3] {
        let b = n.peg.bitcoin_proxy(id).unwrap();
        b.clear();
        n.peg.stacks_proxy(id).unwrap().clear();
        b.set(Lie::rpc("gettxout", |_, _| {
            rpc_result(serde_json::Value::Null)
        }));
        b.set(Lie::rpc("listunspent", |_, _| {
            rpc_result(serde_json::json!([]))
        }));
        b.set(Lie::rpc("scantxoutset", |_, real| {
            let _ = real;
            rpc_result(serde_json::json!({"success": true, "unspents": [], "total_amount": 0}))
        }));
    }
    let u = n.fulfilment(&next, &[]);
    let r = n.pay(&next, &u);
    assert!(r.is_err(), "no signature with two honest signers");
    assert!(n.payouts(&next).is_empty());
    // The lies stop: the same payout is signed and paid once.
    for id in [1, 2, 3] {
        n.peg.bitcoin_proxy(id).unwrap().clear();
    }
    let u = n.fulfilment(&next, &[]);
    n.pay(&next, &u)
        .expect("paid once the nodes tell the truth");
    assert_eq!(n.payouts(&next), vec![Amount::from_sat(10_000_000)]);
}

impl Net {
    /// A coordinator loop in this process, `allowed` on its allowlist.
    fn coordinator(&self, allowed: &[usize]) -> HttpCoordinator {
        let users: Vec<&User> = allowed.iter().map(|i| &self.users[*i]).collect();
        self.peg
            .coordinator(self.peg.settings(&users), OpSourceKind::Bitcoin)
            .unwrap()
    }

    /// Ticks `l`, mining on both chains after each tick, until `done`.
    fn drive(
        &self,
        l: &mut HttpCoordinator,
        secs: u64,
        done: impl FnMut(&HttpCoordinator) -> bool,
    ) -> bool {
        self.peg
            .run_until(
                l,
                Duration::from_secs(secs),
                Blocks::Both,
                &AtomicBool::new(false),
                done,
            )
            .unwrap()
    }
}

fn is_done(l: &HttpCoordinator, t: &Txid) -> bool {
    state(l, t) == Some(OpState::Done)
}

fn refused_before_burn(l: &HttpCoordinator, t: &Txid) -> Option<String> {
    match state(l, t) {
        Some(OpState::Rejected { reason }) | Some(OpState::Failed { reason }) => Some(reason),
        _ => None,
    }
}

/// (c) A replay: another user copies the victim's OP_RETURN and recipient
/// output into a new transaction paying the fee output. No second burn,
/// the victim's balance unchanged. A request whose fee output cannot pay
/// its fulfilment, and one for a dust amount: rejected before any burn.
#[test]
fn replayed_and_unpayable_requests_are_rejected_before_any_burn() {
    let mut n = net(3, |_| {});
    // User 3, the copier, is not on the coordinator's allowlist.
    let mut l = n.coordinator(&[0, 1]);
    let victim_in = n.peg_in(0, 60_000_000);
    let other_in = n.peg_in(1, 30_000_000);
    assert!(n.drive(&mut l, 30, |l| is_done(l, &victim_in)
        && is_done(l, &other_in)));
    let victim = n.request(0, 20_000_000, 20_000);
    assert!(
        n.drive(&mut l, 60, |l| is_done(l, &victim.txid)),
        "{:?}",
        state(&l, &victim.txid)
    );
    assert_eq!(n.peg.sbtc_balance(&n.users[0].stx), 40_000_000);

    // The copy: the victim's outputs 0 and 1, the copier's funding.
    let vtx = n
        .peg
        .bitcoind
        .with(|b| b.locate(&victim.txid))
        .map(|(tx, _)| tx)
        .unwrap();
    let copier = n.users[2].clone();
    let (outpoint, prev) = copier.coins()[0].clone();
    let fee = Amount::from_sat(20_000);
    let mut copy = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: outpoint,
            ..TxIn::default()
        }],
        output: vec![
            vtx.output[0].clone(),
            vtx.output[1].clone(),
            TxOut {
                value: fee,
                script_pubkey: n.wallet.script_pubkey(),
            },
            TxOut {
                value: prev.value - fee - Amount::from_sat(20_000),
                script_pubkey: copier.btc.script_pubkey(),
            },
        ],
    };
    copier.sign_input(&mut copy, 0, &prev);
    let replay = n.peg.with_bitcoin(|b| b.send(copy)).unwrap();
    n.mine(1);

    // Unpayable: a 330-sat fee output, and a 100-sat (dust) amount.
    let small_fee = n.request(1, 10_000_000, 330);
    let dust = n.request(1, 100, 20_000);
    assert!(n.drive(&mut l, 60, |l| {
        [replay, small_fee.txid, dust.txid]
            .iter()
            .all(|t| refused_before_burn(l, t).is_some())
    }));
    let why = |t: &Txid| refused_before_burn(&l, t).unwrap();
    assert!(why(&replay).contains("request.replay"), "{}", why(&replay));
    assert!(
        why(&small_fee.txid).contains("request.fee"),
        "{}",
        why(&small_fee.txid)
    );
    assert!(
        why(&dust.txid).contains("request.dust"),
        "{}",
        why(&dust.txid)
    );
    for t in [replay, small_fee.txid, dust.txid] {
        assert_eq!(n.peg.contract_calls("burn!", &t), (0, 0), "no burn for {t}");
    }
    assert_eq!(n.peg.contract_calls("burn!", &victim.txid), (1, 0));
    assert_eq!(
        n.peg.sbtc_balance(&n.users[0].stx),
        40_000_000,
        "victim unchanged"
    );
    assert_eq!(n.peg.sbtc_balance(&n.users[1].stx), 30_000_000);
    assert_eq!(n.payouts(&victim), vec![Amount::from_sat(20_000_000)]);
}

/// (d) With `confirmations.stacks = 3`: a burn seen only at the Stacks tip
/// is not final, so the guards refuse its payout (`burn.not-final`); a fork
/// drops it, and the payout is still refused. With the coordinator loop: a
/// mint dropped by a fork before it is deep enough is not `done` and is
/// minted again, once; a burn dropped by a fork is never paid twice.
#[test]
fn a_burn_or_mint_dropped_by_a_stacks_fork_before_it_is_final_is_never_paid() {
    let mut n = net(1, |o| o.stacks_confirmations = 3);
    // The signers' side, with a coordinator that does not wait.
    n.peg_in_and_mint(0, BTC);
    n.mine(3);
    let op = n.request(0, 30_000_000, 20_000);
    n.burn(&op);
    let u = n.fulfilment(&op, &[]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&op, &u).map(|_| Vec::new()));
    assert_refused_by(&n, &before, &r, &[1, 2, 3, 4, 5], "burn.not-final");
    n.peg
        .stacks
        .with(|s| s.drop_blocks(1, devnet::stacks::Orphaned::Discard))
        .unwrap();
    assert_eq!(
        n.peg.contract_calls("burn!", &op.txid),
        (0, 0),
        "forked away"
    );
    n.mine(3);
    let u = n.fulfilment(&op, &[]);
    let before = n.refused_so_far();
    let r = refusals(n.pay(&op, &u).map(|_| Vec::new()));
    assert_refused_by(
        &n,
        &before,
        &r,
        &[1, 2, 3, 4, 5],
        "burn.not-final|burn.mismatch",
    );
    assert!(n.payouts(&op).is_empty());
    assert_eq!(
        n.peg.sbtc_balance(&n.users[0].stx),
        u128::from(BTC),
        "not burned"
    );
}

/// (d), the coordinator's side: a mint and a burn each dropped by a fork
/// right after they were mined (at depth 1 of 3).
#[test]
fn the_coordinator_waits_for_stacks_depth_and_survives_forks() {
    let mut n = net(1, |o| o.stacks_confirmations = 3);
    let mut l = n.coordinator(&[0]);
    let pin = n.peg_in(0, BTC);
    let stop = AtomicBool::new(false);
    // Tick until the mint is mined; it is not done at depth 1.
    let mut mined = false;
    for _ in 0..200 {
        l.tick(&stop).unwrap();
        if n.peg.contract_calls("mint!", &pin).0 == 1 {
            mined = true;
            break;
        }
        n.peg.stacks.with(|s| s.mine());
    }
    assert!(mined, "{:?}", state(&l, &pin));
    l.tick(&stop).unwrap();
    assert_ne!(state(&l, &pin), Some(OpState::Done), "done at depth 1 of 3");
    n.peg
        .stacks
        .with(|s| s.drop_blocks(1, devnet::stacks::Orphaned::Discard))
        .unwrap();
    assert!(
        n.drive(&mut l, 60, |l| is_done(l, &pin)),
        "{:?}",
        state(&l, &pin)
    );
    assert_eq!(
        n.peg.contract_calls("mint!", &pin),
        (1, 0),
        "minted once on the final chain"
    );
    assert_eq!(n.peg.sbtc_balance(&n.users[0].stx), u128::from(BTC));

    let op = n.request(0, 30_000_000, 20_000);
    let mut burned = false;
    for _ in 0..200 {
        l.tick(&stop).unwrap();
        assert!(n.payouts(&op).is_empty(), "paid before the burn is final");
        if n.peg.contract_calls("burn!", &op.txid).0 == 1 {
            burned = true;
            break;
        }
        n.mine(1);
    }
    assert!(burned, "{:?}", state(&l, &op.txid));
    l.tick(&stop).unwrap();
    assert!(n.payouts(&op).is_empty(), "paid at depth 1 of 3");
    n.peg
        .stacks
        .with(|s| s.drop_blocks(1, devnet::stacks::Orphaned::Discard))
        .unwrap();
    assert!(
        n.drive(&mut l, 90, |l| is_done(l, &op.txid)),
        "{:?}",
        state(&l, &op.txid)
    );
    assert_eq!(
        n.payouts(&op),
        vec![Amount::from_sat(30_000_000)],
        "paid once"
    );
    assert_eq!(n.peg.contract_calls("burn!", &op.txid), (1, 0));
    assert_eq!(
        n.peg.sbtc_balance(&n.users[0].stx),
        u128::from(BTC - 30_000_000)
    );
}

/// Makes signer `id`'s nodes lie: every coin spent (`gettxout` null), no
/// burn recorded (`get-burn` none, `was-burned` false).
fn lie_nothing_is_there(n: &Net, id: u32) {
    let b = n.peg.bitcoin_proxy(id).unwrap();
    b.set(Lie::rpc("gettxout", |_, _| {
        rpc_result(serde_json::Value::Null)
    }));
    let s = n.peg.stacks_proxy(id).unwrap();
    s.set(Lie::path("/get-burn", |_, _| {
        Answer::call_read(&Value::Optional(None))
    }));
    s.set(Lie::path("/was-burned", |_, _| {
        Answer::call_read(&Value::Bool(false))
    }));
}

/// (e) with the coordinator loop: two of five signers' nodes hide coins and
/// burns — payouts still happen, once each, signed by the honest three;
/// with a third liar the next payout waits (neither paid nor failed) until
/// the nodes tell the truth again, then it is paid once.
#[test]
fn with_fewer_honest_signers_than_the_threshold_a_payout_waits_not_fails() {
    let mut n = net(1, |o| {
        o.proxied = vec![1, 2, 3];
        o.sign_timeout = Duration::from_secs(5);
    });
    let mut l = n.coordinator(&[0]);
    lie_nothing_is_there(&n, 1);
    lie_nothing_is_there(&n, 2);
    let pin = n.peg_in(0, BTC);
    assert!(n.drive(&mut l, 30, |l| is_done(l, &pin)));
    let a = n.request(0, 20_000_000, 20_000);
    assert!(
        n.drive(&mut l, 60, |l| is_done(l, &a.txid)),
        "{:?}",
        state(&l, &a.txid)
    );
    assert_eq!(n.payouts(&a), vec![Amount::from_sat(20_000_000)]);
    assert!(
        n.peg.bitcoin_proxy(1).unwrap().told_rpc("gettxout") > 0,
        "the liars were asked"
    );

    lie_nothing_is_there(&n, 3);
    let b = n.request(0, 10_000_000, 20_000);
    let ended = n.drive(&mut l, 20, |l| {
        is_done(l, &b.txid) || refused_before_burn(l, &b.txid).is_some()
    });
    assert!(!ended, "with two honest signers: {:?}", state(&l, &b.txid));
    assert!(n.payouts(&b).is_empty());
    for id in [1, 2, 3] {
        n.peg.bitcoin_proxy(id).unwrap().clear();
        n.peg.stacks_proxy(id).unwrap().clear();
    }
    assert!(
        n.drive(&mut l, 90, |l| is_done(l, &b.txid)),
        "{:?}",
        state(&l, &b.txid)
    );
    assert_eq!(n.payouts(&b), vec![Amount::from_sat(10_000_000)]);
    assert_eq!(
        n.payouts(&a),
        vec![Amount::from_sat(20_000_000)],
        "a paid once"
    );
    assert_eq!(n.peg.contract_calls("burn!", &b.txid), (1, 0));
}
