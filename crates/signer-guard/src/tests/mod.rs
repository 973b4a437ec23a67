//! The guard against mock nodes that serve a small chain and a contract:
//! the happy paths, and every refusal rule (each test fails if its rule is
//! removed: it checks that the same request passes once the fault is gone,
//! or names the rule).

use super::*;

#[path = "../../tests/mock_fixture/mod.rs"]
mod mock_fixture;
use mock_fixture::*;

#[test]
fn a_valid_fulfilment_passes_and_is_recorded_before_check_returns() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (tx, prevouts) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx.clone(), prevouts);
    for item in &req.items {
        assert!(!g.will_sign(&item.key, &item.message.digest()));
    }
    g.check(&req).unwrap();
    for item in &req.items {
        assert!(g.will_sign(&item.key, &item.message.digest()));
    }
    assert!(!g.will_sign(&fx.key, &[0; 32]));
    assert_eq!(g.status().published_key_ours, Some(true));
    drop(g);
    // Durable: a restarted signer answers from the file.
    let g = fx.guard();
    for item in &req.items {
        assert!(g.will_sign(&item.key, &item.message.digest()));
    }
    let stored = g.store.fulfilments().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].txid, tx.compute_txid());
    assert_eq!(stored[0].amount, Amount::from_sat(AMOUNT));
    assert_eq!(stored[0].outflow, Amount::from_sat(AMOUNT + 1_000));
}

#[test]
fn a_replacement_of_the_same_request_passes_and_both_are_kept() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    let (bump, p) = fx.fulfilment(&fx.request, &[fx.peg_in_coin()], 2_000);
    g.check(&fulfilment_request(&fx, &fx.request, bump, p))
        .unwrap();
    assert_eq!(g.store.fulfilments().unwrap().len(), 2);
}

#[test]
fn a_garbage_payload_is_refused() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let mut req = fulfilment_request(&fx, &fx.request, fx.payout().0, fx.payout().1);
    req.payload = b"not a payload".to_vec();
    assert_eq!(refused(g.check(&req)), "payload.decode");
    for item in &req.items {
        assert!(!g.will_sign(&item.key, &item.message.digest()));
    }
}

#[test]
fn test_messages_pass_only_as_test_items_of_held_keys() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let test = |key: PublicKey, message: ToSign| SignRequest {
        id: 9,
        payload: SignPayload::Test.encode(),
        items: vec![SignItem { key, message }],
    };
    let text = ToSign::Test {
        text: "dkg test".into(),
    };
    g.check(&test(fx.key, text.clone())).unwrap();
    assert!(g.will_sign(&fx.key, &text.digest()));
    // Even when the contract publishes another key: the DKG test round
    // runs before its key is published.
    fx.stacks(|s| s.key = Some(public(99)));
    g.check(&test(fx.key, text.clone())).unwrap();
    // A sighash under a test payload would sign anything.
    let sighash = ToSign::Taproot { sighash: [5; 32] };
    assert_eq!(refused(g.check(&test(fx.key, sighash))), "items.mismatch");
    assert!(!g.will_sign(&fx.key, &[5; 32]));
    assert_eq!(refused(g.check(&test(public(98), text))), "items.mismatch");
}

#[test]
fn items_must_be_exactly_the_sighashes_with_their_keys() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (tx, prevouts) = fx.payout();
    let good = fulfilment_request(&fx, &fx.request, tx, prevouts);
    // One missing.
    let mut r = good.clone();
    r.items.pop();
    assert_eq!(refused(g.check(&r)), "items.mismatch");
    // One replaced by another digest: the attacker's sweep sighash.
    let mut r = good.clone();
    r.items[1].message = ToSign::Taproot { sighash: [3; 32] };
    assert_eq!(refused(g.check(&r)), "items.mismatch");
    assert!(!g.will_sign(&fx.key, &[3; 32]));
    // Another key.
    let mut r = good.clone();
    r.items[0].key = public(98);
    assert_eq!(refused(g.check(&r)), "items.mismatch");
    // A test item mixed in.
    let mut r = good.clone();
    r.items.push(SignItem {
        key: fx.key,
        message: ToSign::Test { text: "x".into() },
    });
    assert_eq!(refused(g.check(&r)), "items.mismatch");
    g.check(&good).unwrap();
}

#[test]
fn an_input_no_held_key_pays_is_refused() {
    let mut fx = Fx::new();
    let mut g = fx.guard();
    let stranger = (
        fx.outside().previous_output,
        TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: peg_address(&public(50)).script_pubkey(),
        },
    );
    let (tx, prevouts) = fx.fulfilment(&fx.request, &[fx.peg_in_coin(), stranger], 1_000);
    let payload = SignPayload::Fulfilment {
        request: fx.request.compute_txid(),
        tx,
        prevouts,
    };
    // Items with the held key for every input: still refused.
    let req = sign_request(1, &payload, &fx.key);
    assert_eq!(refused(g.check(&req)), "input.not-peg-coin");
}

#[test]
fn an_input_that_is_no_coin_of_the_record_is_refused() {
    let mut fx = Fx::new();
    let mut g = fx.guard();
    // Pays the peg key's script, but never existed on the signer's chain.
    let fabricated = (
        fx.outside().previous_output,
        TxOut {
            value: Amount::from_sat(1_000_000),
            script_pubkey: peg_address(&fx.key).script_pubkey(),
        },
    );
    let (tx, p) = fx.fulfilment(&fx.request, &[fabricated], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "fulfilment.input"
    );
    // A real coin with a lie about its value.
    let (o, mut out) = fx.peg_in_coin();
    out.value = Amount::from_sat(PEG_IN * 10);
    let (tx, p) = fx.fulfilment(&fx.request, &[(o, out)], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "fulfilment.input"
    );
}

#[test]
fn another_requests_fee_output_is_no_coin_to_spend() {
    let mut fx = Fx::new();
    let other = fx.request_tx(11, 20_000, 4_000);
    fx.mine(vec![other.clone()]);
    let mut g = fx.guard();
    let fee_coin = (
        OutPoint::new(other.compute_txid(), 2),
        other.output[2].clone(),
    );
    let (tx, p) = fx.fulfilment(&fx.request, &[fx.peg_in_coin(), fee_coin], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "fulfilment.input"
    );
}

#[test]
fn a_published_key_not_ours_stops_every_payout_and_shows_in_status() {
    let fx = Fx::new();
    let mut g = fx.guard();
    assert_eq!(g.attest(), Some(fx.key));
    fx.stacks(|s| s.key = Some(public(66)));
    let (tx, p) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx, p);
    assert_eq!(refused(g.check(&req)), "key.not-ours");
    assert_eq!(g.status().published_key, Some(public(66)));
    assert_eq!(g.status().published_key_ours, Some(false));
    assert!(g
        .status()
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("key.not-ours"));
    assert_eq!(g.attest(), None);
    // No key published at all.
    fx.stacks(|s| s.key = None);
    assert_eq!(refused(g.check(&req)), "key.not-ours");
    // Back to ours: the same request passes.
    fx.stacks(|s| s.key = Some(fx.key));
    g.check(&req).unwrap();
    assert_eq!(g.attest(), Some(fx.key));
}

#[test]
fn a_key_change_not_final_yet_is_not_followed() {
    let mut fx = Fx::new();
    fx.confirmations.stacks = 2;
    // The new key is only at the tip: the final block still has ours.
    fx.stacks(|s| s.key = Some(public(66)));
    let mut g = fx.guard();
    assert_eq!(g.attest(), Some(fx.key));
    fx.stacks(|_| {});
    assert_eq!(g.attest(), None);
}

#[test]
fn a_burn_only_at_the_tip_is_not_final() {
    let mut fx = Fx::new();
    fx.confirmations.stacks = 2;
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx, p);
    // The burn is in the last Stacks block: depth 0 only.
    assert_eq!(refused(g.check(&req)), "burn.not-final");
    fx.stacks(|_| {});
    g.check(&req).unwrap();
}

#[test]
fn a_stacks_chain_shorter_than_the_depth_is_not_final() {
    let mut fx = Fx::new();
    fx.confirmations.stacks = 10;
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "stacks.not-final"
    );
}

#[test]
fn a_burn_of_another_amount_or_from_another_account_is_refused() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx, p);
    let rq = fx.request.compute_txid().to_string();
    let who = fx.alice.clone();
    let r = rq.clone();
    fx.stacks(move |s| {
        s.burns.insert(r, (u128::from(AMOUNT - 1), who));
    });
    assert_eq!(refused(g.check(&req)), "burn.mismatch");
    let mallory = PrincipalData::Standard(StacksAddress::p2pkh(
        StacksNetwork::Testnet,
        &public(44),
        true,
    ));
    let r = rq.clone();
    fx.stacks(move |s| {
        s.burns.insert(r, (u128::from(AMOUNT), mallory));
    });
    assert_eq!(refused(g.check(&req)), "burn.mismatch");
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.burns.insert(rq, (u128::from(AMOUNT), who));
    });
    g.check(&req).unwrap();
}

#[test]
fn a_request_that_does_not_exist_is_refused() {
    let mut fx = Fx::new();
    let mut g = fx.guard();
    // A request built but never mined: the coordinator says it exists.
    let ghost = fx.request_tx(11, AMOUNT, FEE_OUTPUT);
    let (tx, p) = fx.fulfilment(&ghost, &[fx.peg_in_coin()], 1_000);
    let rq = ghost.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.burns.insert(rq, (u128::from(AMOUNT), who));
    });
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &ghost, tx, p))),
        "request.unknown"
    );
}

#[test]
fn a_request_off_the_best_chain_is_refused() {
    let mut fx = Fx::new();
    let forked = fx.request_tx(11, AMOUNT, FEE_OUTPUT);
    {
        // The node reports it in a block that is not on its best chain.
        let mut c = fx.chain.lock().unwrap();
        let h = c.tip();
        let prev = c.blocks[h as usize - 1].block_hash();
        let b = block(prev, h + 1000, vec![forked.clone()]);
        c.stale.push((h, b));
    }
    let rq = forked.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.burns.insert(rq, (u128::from(AMOUNT), who));
        s.supply -= u128::from(AMOUNT);
    });
    let mut g = fx.guard();
    let (tx, p) = fx.fulfilment(&forked, &[fx.peg_in_coin()], 1_000);
    let e = g
        .check(&fulfilment_request(&fx, &forked, tx.clone(), p.clone()))
        .unwrap_err();
    assert!(e.starts_with("request.unknown"), "{e}");
    assert!(e.contains("best chain"), "{e}");
    // Mined on the best chain, it passes.
    fx.chain.lock().unwrap().stale.clear();
    fx.mine(vec![forked.clone()]);
    g.check(&fulfilment_request(&fx, &forked, tx, p)).unwrap();
}

#[test]
fn a_request_with_too_few_confirmations_waits() {
    let mut fx = Fx::new();
    fx.confirmations.bitcoin = 3;
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx, p);
    assert_eq!(refused(g.check(&req)), "request.not-final");
    fx.mine(vec![]);
    fx.mine(vec![]);
    g.check(&req).unwrap();
}

#[test]
fn a_replayed_request_is_refused_once_the_original_is_paid() {
    let mut fx = Fx::new();
    // The copy: the victim's OP_RETURN and recipient, new funding.
    let mut copy = fx.request.clone();
    copy.input = vec![fx.outside()];
    fx.mine(vec![copy.clone()]);
    let rq = copy.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.burns.insert(rq, (u128::from(AMOUNT), who));
        s.supply -= u128::from(AMOUNT);
    });
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    let (tx, p) = fx.fulfilment(&copy, &[fx.peg_in_coin()], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &copy, tx, p))),
        "request.replay"
    );
}

#[test]
fn a_request_whose_fee_output_is_spent_is_refused() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    let req = fulfilment_request(&fx, &fx.request, tx.clone(), p);
    // Someone's transaction spending output 2 confirmed (a fulfilment).
    let mut spend = tx;
    spend.output.truncate(2);
    fx.mine(vec![spend]);
    assert_eq!(refused(g.check(&req)), "request.spent");
}

#[test]
fn the_peg_rules_of_a_request_apply() {
    let mut fx = Fx::new();
    // Not on the allowlist.
    fx.policy.allowlist = Allowlist::new([fx.alice.clone()], []);
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "request.allowlist"
    );
}

#[test]
fn the_daily_outflow_counts_other_requests_signed() {
    let mut fx = Fx::new();
    fx.policy.max_daily_outflow = Some(Amount::from_sat(AMOUNT + 10_000));
    let other = fx.request_tx(11, 20_000, FEE_OUTPUT);
    fx.mine(vec![other.clone()]);
    let rq = other.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.burns.insert(rq, (20_000, who));
        s.supply -= 20_000;
    });
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    // A second minted peg-in funds the other payout.
    let coin2 = fx.peg_in_tx(&fx.key.clone(), 50_000, &fx.alice.clone());
    fx.mine(vec![coin2.clone()]);
    let mint = coin2.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.mints.insert(mint, (50_000, who));
        s.supply += 50_000;
    });
    let c2 = (
        OutPoint::new(coin2.compute_txid(), 1),
        coin2.output[1].clone(),
    );
    let (tx, p) = fx.fulfilment(&other, &[c2], 1_000);
    let req = fulfilment_request(&fx, &other, tx, p);
    assert_eq!(refused(g.check(&req)), "request.daily-limit");
    // With a higher limit, the same request passes.
    fx.policy.max_daily_outflow = Some(Amount::from_sat(AMOUNT + 20_000));
    let mut g = fx.guard();
    g.check(&req).unwrap();
}

#[test]
fn the_fulfilment_rules_apply() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let (mut tx, p) = fx.payout();
    // The recipient paid less, the rest to the change.
    tx.output[1].value -= Amount::from_sat(1);
    tx.output[2].value += Amount::from_sat(1);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p.clone()))),
        "fulfilment.recipient"
    );
    // The change to an attacker.
    let (mut tx, _) = fx.payout();
    tx.output[2].script_pubkey = peg_address(&public(66)).script_pubkey();
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "fulfilment.change"
    );
}

#[test]
fn an_unbacked_mint_is_never_paid_even_with_a_surplus_of_rejected_peg_ins() {
    let mut fx = Fx::new();
    // A rejected peg-in (never minted): BTC the wallet owes back.
    let mallory_key = 44;
    let mallory = PrincipalData::Standard(StacksAddress::p2pkh(
        StacksNetwork::Testnet,
        &public(mallory_key),
        true,
    ));
    let rejected = fx.peg_in_tx(&fx.key.clone(), 50_000, &mallory);
    // The coordinator's stolen Stacks key mints 30,000 to mallory without
    // a peg-in; mallory burns it with a valid-looking request.
    fx.policy.allowlist = Allowlist::new(
        [fx.alice.clone(), mallory.clone()],
        [fx.recipient.script_pubkey()],
    );
    let attack = fx.request_tx(mallory_key, 30_000, FEE_OUTPUT);
    fx.mine(vec![rejected, attack.clone()]);
    let rq = attack.compute_txid().to_string();
    let m = mallory.clone();
    fx.stacks(move |s| {
        s.supply += 30_000; // the unbacked mint
        s.burns.insert(rq, (30_000, m));
        s.supply -= 30_000;
    });
    let mut g = fx.guard();
    let (tx, p) = fx.fulfilment(&attack, &[fx.peg_in_coin()], 1_000);
    let req = fulfilment_request(&fx, &attack, tx, p);
    let e = g.check(&req).unwrap_err();
    assert!(e.starts_with("backing:"), "{e}");
    // Were the rejected peg-in not owed, the wallet's surplus would hide it.
    let rejected_txid = g
        .coins
        .confirmed_coins()
        .unwrap()
        .into_iter()
        .find(|c| c.txout.value == Amount::from_sat(50_000))
        .unwrap()
        .outpoint
        .txid;
    g.store.mark_minted(&rejected_txid).unwrap();
    g.check(&req).unwrap();
}

#[test]
fn a_backed_peg_pays_with_unminted_peg_ins_owed() {
    let mut fx = Fx::new();
    // A peg-in not minted yet: owed, and backed by its own coin.
    let pending = fx.peg_in_tx(&fx.key.clone(), 40_000, &fx.alice.clone());
    fx.mine(vec![pending]);
    let mut g = fx.guard();
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
}

fn sweep_request(fx: &Fx, tx: Transaction, prevouts: Vec<TxOut>, key: &PublicKey) -> SignRequest {
    let _ = fx;
    sign_request(2, &SignPayload::Sweep { tx, prevouts }, key)
}

fn sweep_tx(coins: &[(OutPoint, TxOut)], to: &ScriptBuf, fee: u64) -> (Transaction, Vec<TxOut>) {
    let total: u64 = coins.iter().map(|(_, o)| o.value.to_sat()).sum();
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
            output: vec![TxOut {
                value: Amount::from_sat(total - fee),
                script_pubkey: to.clone(),
            }],
        },
        coins.iter().map(|(_, o)| o.clone()).collect(),
    )
}

#[test]
fn a_sweep_to_the_published_key_passes_and_one_to_an_attacker_does_not() {
    let mut fx = Fx::new();
    let old = fx.key;
    let new = public(8);
    fx.keys = vec![old, new];
    fx.stacks(|s| s.key = Some(new));
    let mut g = fx.guard();
    let new_script = peg_address(&new).script_pubkey();
    let (tx, p) = sweep_tx(&[fx.peg_in_coin()], &new_script, 500);
    // A sweep's fee comes out of the surplus, never the backing: with none,
    // it is refused ...
    assert_eq!(
        refused(g.check(&sweep_request(&fx, tx.clone(), p.clone(), &old))),
        "backing"
    );
    // ... and a plain payment by the operator pays for it.
    let top_up = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![fx.outside()],
        output: vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: peg_address(&old).script_pubkey(),
        }],
    };
    fx.mine(vec![top_up]);
    g.check(&sweep_request(&fx, tx, p, &old)).unwrap();
    let attacker = peg_address(&public(66)).script_pubkey();
    let (tx, p) = sweep_tx(&[fx.peg_in_coin()], &attacker, 500);
    assert_eq!(
        refused(g.check(&sweep_request(&fx, tx, p, &old))),
        "sweep.output"
    );
    // A pending request's fee output stays for its fulfilment.
    let fee_coin = (
        OutPoint::new(fx.request.compute_txid(), 2),
        fx.request.output[2].clone(),
    );
    let (tx, p) = sweep_tx(&[fx.peg_in_coin(), fee_coin], &new_script, 500);
    assert_eq!(
        refused(g.check(&sweep_request(&fx, tx, p, &old))),
        "sweep.input"
    );
}

#[test]
fn a_node_failure_refuses_and_shows_in_status() {
    let fx = Fx::new();
    let mut g = fx.guard();
    let mut failing = MockStacksNode::new();
    failing
        .expect_block_at_depth()
        .returning(|_| Err(StacksError::Timeout("test".into())));
    g.stacks = failing;
    let (tx, p) = fx.payout();
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &fx.request, tx, p))),
        "node.stacks"
    );
    assert!(g
        .status()
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("node.stacks"));
    assert_eq!(g.status().refused, 1);
}

#[test]
fn the_config_is_strict_and_open_builds_real_clients() {
    let text = r#"
start_height = 101
data_dir = "DIR"
[bitcoin_node]
url = "http://127.0.0.1:1"
user = "u"
password = "p"
[stacks_node]
url = "http://127.0.0.1:2"
[confirmations]
bitcoin = 1
stacks = 2
"#;
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace("DIR", &dir.path().join("g").display().to_string());
    let config: GuardConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        config.confirmations,
        Confirmations {
            bitcoin: 1,
            stacks: 2
        }
    );
    assert!(
        !format!("{config:?}").contains("\"p\""),
        "password redacted"
    );
    assert!(toml::from_str::<GuardConfig>(&format!("{text}\nextra = 1")).is_err());
    std::fs::write(dir.path().join("allow.toml"), "stacks = []\nbitcoin = []\n").unwrap();
    let signer_file = format!(
        r#"
relay_url = "http://127.0.0.1:3"
coordinator_public_key = "{}"
network = "regtest"
contract = "ST000000000000000000002AMW42H.sbtc-alpha"
magic_bytes = "id"
threshold = 1
[policy]
allowlist_file = "allow.toml"
[[signers]]
id = 1
public_key = "{}"
key_ids = [1]
"#,
        public(1),
        public(2)
    );
    let path = dir.path().join("signer.toml");
    std::fs::write(&path, &signer_file).unwrap();
    let file = SignerFile::load(&path).unwrap();
    let g = Guard::open(&config, &file, &path, &[public(7)]).unwrap();
    assert_eq!(g.status(), &GuardStatus::default());
    // No magic bytes: the guard cannot tell a peg op from another.
    let mut no_magic = file.clone();
    no_magic.magic_bytes = None;
    let e = Guard::open(&config, &no_magic, &path, &[]).unwrap_err();
    assert!(e.to_string().contains("magic_bytes"), "{e}");
}

#[test]
fn an_unbacked_burn_is_not_paid_out_of_a_pending_requests_btc() {
    let mut fx = Fx::new();
    // Alice's request is burned and not paid yet. Mallory's sBTC was
    // minted by the stolen Stacks key without a peg-in, then burned.
    let mallory_key = 44;
    let mallory = PrincipalData::Standard(StacksAddress::p2pkh(
        StacksNetwork::Testnet,
        &public(mallory_key),
        true,
    ));
    let attack = fx.request_tx(mallory_key, 30_000, FEE_OUTPUT);
    fx.mine(vec![attack.clone()]);
    let rq = attack.compute_txid().to_string();
    let m = mallory;
    fx.stacks(move |s| {
        s.burns.insert(rq, (30_000, m));
    });
    let mut g = fx.guard();
    let (tx, p) = fx.fulfilment(&attack, &[fx.peg_in_coin()], 1_000);
    let e = g
        .check(&fulfilment_request(&fx, &attack, tx, p))
        .unwrap_err();
    assert!(e.starts_with("backing:"), "{e}");
    // The peg is unbacked: the breaker stops Alice's payout too ...
    let (tx, p) = fx.payout();
    let alice = fulfilment_request(&fx, &fx.request, tx, p);
    assert_eq!(refused(g.check(&alice)), "backing");
    // The way out: the operator burns as much sBTC of its own under a txid
    // that is no request (a recovery burn): the supply is what the peg-ins
    // back again and Alice is paid. (Mallory's burned request stays a
    // valid-looking request: docs/SECURITY.md, "Not yet defended".)
    fx.stacks(|s| s.supply -= 30_000);
    g.check(&alice).unwrap();
}

#[test]
fn a_payout_signed_and_not_confirmed_yet_is_no_longer_held() {
    let mut fx = Fx::new();
    let mut g = fx.guard();
    // Alice's payout is signed (not confirmed yet: its fee output unspent).
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx, p))
        .unwrap();
    // Then an unbacked burn: the BTC Alice is being paid must not count as
    // still held.
    let mallory = PrincipalData::Standard(StacksAddress::p2pkh(
        StacksNetwork::Testnet,
        &public(44),
        true,
    ));
    let attack = fx.request_tx(44, 30_000, FEE_OUTPUT);
    fx.mine(vec![attack.clone()]);
    let rq = attack.compute_txid().to_string();
    fx.stacks(move |s| {
        s.burns.insert(rq, (30_000, mallory));
    });
    let (tx, p) = fx.fulfilment(&attack, &[fx.peg_in_coin()], 1_000);
    assert_eq!(
        refused(g.check(&fulfilment_request(&fx, &attack, tx, p))),
        "backing"
    );
}

mod refunds;

/// The caches of a check (issue #16) follow the chain: a Bitcoin reorg
/// under the same final Stacks block takes a coin out of the wallet for
/// the very next check.
#[test]
fn a_reorg_under_the_same_stacks_block_is_seen_by_the_next_check() {
    let mut fx = Fx::new();
    let second = fx.peg_in_tx(&fx.key.clone(), PEG_IN, &fx.alice.clone());
    let txid = second.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.mints.insert(txid, (u128::from(PEG_IN), who));
        s.supply += u128::from(PEG_IN);
    });
    fx.mine(vec![second.clone()]);
    let mut g = fx.guard();
    let coin = (
        OutPoint::new(second.compute_txid(), 1),
        second.output[1].clone(),
    );
    let (tx, p) = fx.fulfilment(&fx.request, &[coin], 1_000);
    g.check(&fulfilment_request(&fx, &fx.request, tx.clone(), p.clone()))
        .unwrap();
    // The block holding the second peg-in is replaced by a longer chain
    // without it; the Stacks chain does not move.
    {
        let mut c = fx.chain.lock().unwrap();
        let gone = c.blocks.pop().unwrap();
        let height = c.blocks.len() as u64;
        // The fixture's block hash is its header's: another nonce.
        let mut other = block(gone.header.prev_blockhash, height, vec![]);
        other.header.nonce += 1_000;
        c.blocks.push(other);
        c.mine(vec![]);
    }
    let mut again = fulfilment_request(&fx, &fx.request, tx, p);
    again.id = 2;
    let e = refused(g.check(&again));
    assert_eq!(
        e,
        "fulfilment.input",
        "{}",
        g.status().last_refusal.clone().unwrap_or_default()
    );
    // Its mint now has no BTC behind it: the books say so too.
    let (tx, p) = fx.payout();
    let mut req = fulfilment_request(&fx, &fx.request, tx, p);
    req.id = 3;
    assert_eq!(refused(g.check(&req)), "backing");
}

/// At a steady tip a check reads the tip once (`getbestblockhash`): no
/// coin record sync, no `getblockcount` bracket, the request's block hash
/// from the first check's read; a new block is synced by the next check.
#[test]
fn at_a_steady_tip_a_check_reads_the_tip_once_and_a_new_block_is_synced() {
    let mut fx = Fx::new();
    let calls = Calls::default();
    let mut g = fx.guard_counting(calls.clone());
    let (tx, p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, tx.clone(), p.clone()))
        .unwrap();
    calls.lock().unwrap().clear();
    let mut again = fulfilment_request(&fx, &fx.request, tx, p);
    again.id = 2;
    g.check(&again).unwrap();
    let seen = calls.lock().unwrap().clone();
    let want: HashMap<&str, usize> = [
        ("getbestblockhash", 1),
        ("getrawtransaction", 1),
        ("gettxout", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want, "the node calls of a check at the same tip");
    // A new block with a peg-in: the next check syncs it, and its coin pays.
    let second = fx.peg_in_tx(&fx.key.clone(), PEG_IN, &fx.alice.clone());
    let txid = second.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.mints.insert(txid, (u128::from(PEG_IN), who));
        s.supply += u128::from(PEG_IN);
    });
    fx.mine(vec![second.clone()]);
    let coin = (
        OutPoint::new(second.compute_txid(), 1),
        second.output[1].clone(),
    );
    let (tx, p) = fx.fulfilment(&fx.request, &[coin], 1_000);
    let mut third = fulfilment_request(&fx, &fx.request, tx, p);
    third.id = 3;
    calls.lock().unwrap().clear();
    g.check(&third).unwrap();
    assert!(
        calls.lock().unwrap().get("getblock").copied().unwrap_or(0) >= 1,
        "the new block was read by the coin record's sync"
    );
}

/// The request's block hash kept from one check is never used at another
/// tip: a reorg that replaces the request's block at the same height (the
/// tip's height unchanged, its hash not) refuses the next check.
#[test]
fn a_reorg_of_the_requests_block_at_the_same_height_refuses_the_next_check() {
    for extend in [false, true] {
        let fx = Fx::new();
        let mut g = fx.guard();
        let (tx, p) = fx.payout();
        g.check(&fulfilment_request(&fx, &fx.request, tx.clone(), p.clone()))
            .unwrap();
        {
            // The tip (the request's block) goes stale; the node still
            // reports the request in it. Another block takes its height.
            let mut c = fx.chain.lock().unwrap();
            let gone = c.blocks.pop().unwrap();
            let height = c.blocks.len() as u64;
            let mut other = block(gone.header.prev_blockhash, height, vec![]);
            other.header.nonce += 1_000;
            c.blocks.push(other);
            c.stale.push((height, gone));
            if extend {
                c.mine(vec![]);
            }
        }
        let mut again = fulfilment_request(&fx, &fx.request, tx, p);
        again.id = 2;
        let e = g.check(&again).unwrap_err();
        assert!(e.starts_with("request.unknown"), "extend {extend}: {e}");
        assert!(e.contains("best chain"), "extend {extend}: {e}");
    }
}

/// The wallet kept from one check is read again at another final Stacks
/// block, the Bitcoin chain unchanged: a peg-in owed at one block (its
/// coin not spendable) is minted at the next, and its coin pays.
#[test]
fn the_wallet_kept_between_checks_follows_the_final_stacks_block() {
    let mut fx = Fx::new();
    let second = fx.peg_in_tx(&fx.key.clone(), PEG_IN, &fx.alice.clone());
    fx.mine(vec![second.clone()]);
    let coin = (
        OutPoint::new(second.compute_txid(), 1),
        second.output[1].clone(),
    );
    let mut g = fx.guard();
    // The standard payout passes (the books read, the burn marked).
    let (ok_tx, ok_p) = fx.payout();
    g.check(&fulfilment_request(&fx, &fx.request, ok_tx, ok_p))
        .unwrap();
    // Not minted yet: owed to its depositor, no input of a payout (the
    // wallet is the one kept from the first check).
    let (tx, p) = fx.fulfilment(&fx.request, &[coin], 1_000);
    let mut owed = fulfilment_request(&fx, &fx.request, tx.clone(), p.clone());
    owed.id = 2;
    assert_eq!(refused(g.check(&owed)), "fulfilment.input");
    // Minted at the next Stacks block; Bitcoin does not move.
    let txid = second.compute_txid().to_string();
    let who = fx.alice.clone();
    fx.stacks(move |s| {
        s.mints.insert(txid, (u128::from(PEG_IN), who));
        s.supply += u128::from(PEG_IN);
    });
    let mut again = fulfilment_request(&fx, &fx.request, tx, p);
    again.id = 3;
    g.check(&again).unwrap();
}
