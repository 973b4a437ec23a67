//! `process-peg-in` / `process-peg-out` as an operator runs them: the real
//! binary against the devnet. The op is found on chain, taken through the
//! same checks as `run`, and done exactly once however often the command
//! is repeated; wrong txids get clear refusals.

use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::{Amount, Txid};
use devnet::peg::MAGIC;
use devnet::{PegOptions, User};

mod common;
use common::{cli, config_from_next_block, peg_out, start_peg, text};

/// Runs `command TXID` until it reports `done` (the Stacks and Bitcoin
/// chains need blocks between steps; an unconfirmed op is refused until mined); returns how many runs it took.
fn until_done(config: &Path, command: &str, t: &Txid) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    for runs in 1.. {
        let o = cli(config, &[command, &t.to_string()]);
        let waiting = !o.status.success() && text(&o).contains("not confirmed yet");
        assert!(o.status.success() || waiting, "{command}: {}", text(&o));
        if text(&o).contains(": done") {
            return runs;
        }
        assert!(Instant::now() < deadline, "{command} {t}: {}", text(&o));
        std::thread::sleep(Duration::from_millis(150));
    }
    unreachable!()
}

#[test]
fn process_peg_in_and_peg_out_by_txid_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (peg, wallet) = start_peg(PegOptions::new(dir.path()));
    let mut users = peg.users(2);
    let allowed: Vec<&User> = users.iter().take(1).collect();
    let config = config_from_next_block(&peg, &allowed);
    let _miner = peg.miner(Duration::from_millis(100));
    let (alice, rest) = users.split_first_mut().unwrap();
    let mallory = &mut rest[0];

    // Not yet on chain, then a payment that is no peg operation.
    let alice_stx = alice.stx.clone();
    let pending = peg
        .with_bitcoin(|b| alice.peg_in(b, MAGIC, &wallet, &alice_stx, Amount::from_sat(50_000_000)))
        .unwrap();
    let o = cli(&config, &["process-peg-in", &pending.to_string()]);
    // The miner may have confirmed it already; if not, the refusal is clear.
    if !o.status.success() {
        assert!(text(&o).contains("not confirmed yet"), "{}", text(&o));
    }
    let payment = peg
        .with_bitcoin(|b| alice.pay(b, &mallory.btc.script_pubkey(), Amount::from_sat(10_000)))
        .unwrap();
    let unknown = Txid::from_raw_hash(bitcoin::hashes::Hash::all_zeros());
    let o = cli(&config, &["process-peg-in", &unknown.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("does not know transaction"),
        "{}",
        text(&o)
    );

    // The peg-in, processed by hand, repeatedly: minted once.
    until_done(&config, "process-peg-in", &pending);
    let o = cli(&config, &["process-peg-in", &pending.to_string()]);
    assert!(
        o.status.success() && text(&o).contains(": done"),
        "{}",
        text(&o)
    );
    assert_eq!(peg.contract_calls("mint!", &pending), (1, 0));
    assert_eq!(peg.sbtc_balance(&alice.stx), 50_000_000);

    // Wrong kinds and non-ops are refused by name.
    let deadline = Instant::now() + Duration::from_secs(10);
    while peg
        .bitcoind
        .with(|b| b.locate(&payment).and_then(|(_, h)| h))
        .is_none()
    {
        assert!(Instant::now() < deadline, "the payment is not mined");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = cli(&config, &["process-peg-in", &payment.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("is no valid peg operation"),
        "{}",
        text(&o)
    );
    let o = cli(&config, &["process-peg-out", &pending.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a peg-out"), "{}", text(&o));

    // A peg-out request: burned, paid once, to alice's scriptPubKey.
    let request = peg_out(&peg, alice, &wallet, 20_000_000);
    until_done(&config, "process-peg-out", &request);
    until_done(&config, "process-peg-out", &request);
    assert_eq!(peg.contract_calls("burn!", &request), (1, 0));
    assert_eq!(
        peg.payouts(&request, &alice.btc.script_pubkey()),
        vec![Amount::from_sat(20_000_000)]
    );
    assert_eq!(peg.sbtc_balance(&alice.stx), 30_000_000);

    // Mallory is not on the allowlist: her peg-in is rejected, not minted.
    let mallory_stx = mallory.stx.clone();
    let refused = peg
        .with_bitcoin(|b| {
            mallory.peg_in(
                b,
                MAGIC,
                &wallet,
                &mallory_stx,
                Amount::from_sat(10_000_000),
            )
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = cli(&config, &["process-peg-in", &refused.to_string()]);
        if o.status.success() {
            assert!(
                text(&o).contains("rejected") && text(&o).contains("allowlist"),
                "{}",
                text(&o)
            );
            break;
        }
        assert!(text(&o).contains("not confirmed yet"), "{}", text(&o));
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(peg.contract_calls("mint!", &refused), (0, 0));
    assert!(peg.failed_contract_calls().is_empty());
}
