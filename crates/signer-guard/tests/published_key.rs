//! A new key counts for a signer only once its own stacks-node shows the
//! contract publishing it, at the final block (issue #11): the coordinator
//! has made key B (every signer holds a share) and published it, but this
//! signer's node still shows key A. Until B is final there, the signer's
//! guard refuses a sweep to B and a payout whose change goes to B, attests
//! A, and pays with change to A; once its node shows B final, it follows B.
//! Real HTTP to the devnet's bitcoind and stacks-node emulators, a real
//! signer file and allowlist, real SQLite files.

use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Txid};
use frost_signer::Validator;
use peg_rules::SignPayload;

mod common;
use common::{
    alice_pegged_in_and_out, find, fulfilment, guard_on_emulators, key, request, stacks_state,
};

#[test]
fn a_key_published_by_the_coordinator_counts_only_once_the_signers_own_node_shows_it_final() {
    let peg_key = key(7);
    let new_key = key(8);
    let new_peg = peg_rules::peg_wallet_address(&new_key, bitcoin::Network::Regtest);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let burn = ScriptBuf::new_op_return([0u8]);
    let (mut b, mut alice, start_height, peg_in, req) = alice_pegged_in_and_out(&peg);
    let stx = alice.stx.clone();
    // The operator's float (a plain payment, no peg-in): a sweep's fee is
    // paid from the surplus, never from the backing.
    alice
        .pay(&mut b, &peg.script_pubkey(), Amount::from_sat(20_000))
        .unwrap();
    b.mine(&burn);
    let peg_in_tx = find(&b, &peg_in);
    let req_tx = find(&b, &req);

    let s = stacks_state(&peg_key, &stx, &peg_in, &req);

    // The signer holds both keys: the new one passed the DKG gate.
    let (_btc, stacks, mut guard, _dir) =
        guard_on_emulators(b, s, start_height, &alice, &[peg_key, new_key]);
    assert_eq!(guard.attest(), Some(peg_key));

    let coins = [
        (OutPoint::new(req, 2), req_tx.output[2].clone()),
        (OutPoint::new(peg_in, 1), peg_in_tx.output[1].clone()),
    ];
    let prevouts: Vec<TxOut> = coins.iter().map(|(_, o)| o.clone()).collect();
    let payout_with_change_to = |change: &ScriptBuf, id: u64| {
        let (tx, prevouts) = fulfilment(
            (req, &req_tx, 30_000),
            (OutPoint::new(peg_in, 1), peg_in_tx.output[1].clone()),
            &alice.btc.script_pubkey(),
            change,
        );
        request(
            id,
            &SignPayload::Fulfilment {
                request: req,
                tx,
                prevouts,
            },
            &peg_key,
        )
    };
    let sweep_to_new = |id: u64| {
        let tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(peg_in, 1),
                ..TxIn::default()
            }],
            output: vec![TxOut {
                value: Amount::from_sat(99_000),
                script_pubkey: new_peg.script_pubkey(),
            }],
        };
        request(
            id,
            &SignPayload::Sweep {
                tx,
                prevouts: vec![prevouts[1].clone()],
            },
            &peg_key,
        )
    };

    // The coordinator published B, but this signer's node shows it only at
    // the tip (one block of the two `confirmations.stacks` asks for).
    // (The emulator's live state is its tip's; `mine` seals it into that
    // block and starts the next.)
    stacks.with(|s| {
        s.mine();
        s.model.wallet_key = Some(new_key.serialize().to_vec());
    });
    assert_eq!(
        stacks.with(|s| s.model.wallet_key.clone()),
        Some(new_key.serialize().to_vec()),
        "the node's tip shows B"
    );
    for round in 0..2 {
        let e = guard.check(&sweep_to_new(10 + round)).unwrap_err();
        assert!(e.starts_with("sweep.output"), "{e}");
        let e = guard
            .check(&payout_with_change_to(&new_peg.script_pubkey(), 20 + round))
            .unwrap_err();
        assert!(e.starts_with("fulfilment.change"), "{e}");
        assert_eq!(guard.attest(), Some(peg_key), "A is still the current key");
        assert_eq!(guard.status().published_key, Some(peg_key));
        // Nothing of B's was recorded as will-sign.
        let r = sweep_to_new(10 + round);
        assert!(r
            .items
            .iter()
            .all(|i| !guard.will_sign(&i.key, &i.message.digest())));
    }
    // With A current, the payout with change to A passes.
    let to_a = payout_with_change_to(&peg.script_pubkey(), 30);
    guard.check(&to_a).unwrap();

    // Once B is final on this signer's own node, B is current.
    stacks.with(|s| s.mine());
    assert_eq!(guard.attest(), Some(new_key));
    let e = guard
        .check(&payout_with_change_to(&peg.script_pubkey(), 40))
        .unwrap_err();
    assert!(
        e.starts_with("fulfilment.change"),
        "change to the old key now: {e}"
    );
    // The same payout with its change to B (a replacement of the one above).
    guard
        .check(&payout_with_change_to(&new_peg.script_pubkey(), 41))
        .unwrap();
    // And the sweep of A's coin to B passes.
    guard.check(&sweep_to_new(42)).unwrap();
    let _ = (Duration::ZERO, Txid::all_zeros());
}
