//! The guard over real HTTP: its real clients against the devnet's bitcoind
//! and stacks-node emulators, a real signer set file and allowlist, real
//! SQLite files. One payout passes; a sweep to an attacker and everything
//! after the contract's key is changed are refused.

use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::{absolute, transaction, Amount, OutPoint, Transaction, TxIn, TxOut, Txid};
use frost_signer::Validator;
use peg_rules::SignPayload;

mod common;
use common::{
    alice_pegged_in_and_out, find, fulfilment, guard_on_emulators, key, request, stacks_state,
};

#[test]
fn the_guard_checks_a_payout_on_the_emulators_over_http() {
    let peg_key = key(7);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let (b, alice, start_height, peg_in, req) = alice_pegged_in_and_out(&peg);
    let stx = alice.stx.clone();
    let peg_in_tx = find(&b, &peg_in);
    let req_tx = find(&b, &req);

    let s = stacks_state(&peg_key, &stx, &peg_in, &req);

    let (_btc, stacks, mut guard, _dir) =
        guard_on_emulators(b, s, start_height, &alice, &[peg_key]);
    assert_eq!(guard.attest(), Some(peg_key));

    // The payout: the request's fee output and the peg-in's coin.
    let (tx, prevouts) = fulfilment(
        (req, &req_tx, 30_000),
        (OutPoint::new(peg_in, 1), peg_in_tx.output[1].clone()),
        &alice.btc.script_pubkey(),
        &peg.script_pubkey(),
    );
    let payout = request(
        1,
        &SignPayload::Fulfilment {
            request: req,
            tx,
            prevouts: prevouts.clone(),
        },
        &peg_key,
    );
    guard.check(&payout).unwrap();
    for item in &payout.items {
        assert!(guard.will_sign(&item.key, &item.message.digest()));
    }

    // A sweep of the peg-in's coin to an attacker.
    let attacker = peg_rules::peg_wallet_address(&key(66), bitcoin::Network::Regtest);
    let sweep = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(peg_in, 1),
            ..TxIn::default()
        }],
        output: vec![TxOut {
            value: Amount::from_sat(99_000),
            script_pubkey: attacker.script_pubkey(),
        }],
    };
    let e = guard
        .check(&request(
            2,
            &SignPayload::Sweep {
                tx: sweep,
                prevouts: vec![prevouts[1].clone()],
            },
            &peg_key,
        ))
        .unwrap_err();
    assert!(e.starts_with("sweep.output"), "{e}");

    // The coordinator's Stacks key publishes another key: once final,
    // every payout is refused, and the status says so.
    stacks.with(|s| {
        s.model.wallet_key = Some(key(66).serialize().to_vec());
        s.mine();
        s.mine();
    });
    let e = guard.check(&payout).unwrap_err();
    assert!(e.starts_with("key.not-ours"), "{e}");
    assert_eq!(guard.status().published_key_ours, Some(false));
    assert_eq!(guard.attest(), None);
    let _ = (Duration::ZERO, Txid::all_zeros());
}
