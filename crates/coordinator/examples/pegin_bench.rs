//! Benchmark: peg-ins processed per second — validated, signed, stored in the
//! SQLite queue (WAL, synchronous=FULL) and broadcast over HTTP to the
//! stacks-node emulator, which decodes and verifies each transaction —
//! compared with this disk's fsync rate measured in the same run. A round of
//! steps is one queue transaction (one fsync), and a batch's signed
//! transaction is stored once for all its ops (queue schema 4), so the rate
//! may exceed one fsync per peg-in.
//!
//! `cargo run --release -p coordinator --features testing --example pegin_bench`
//! (`PEGIN_BENCH_BATCH=1` for one `mint!` per peg-in; default 100 per
//! `mint-many!`).
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::{Amount, BlockHash, Network, Txid};
use coordinator::testing::{aggregate_key, MockBitcoinNode, MockFrostCoordinator};
use coordinator::{Allowlist, Components, LoopSettings, StacksCoordinator, StacksNodeSource};
use devnet::{StacksEmulator, StacksState};
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy,
};
use peg_ops::{BurnHeight, PegInOp};
use peg_queue::{PegQueue, SqlitePegQueue};
use stacks_node_client::UreqStacksNode;
use stacks_wire::{PrincipalData, StacksNetwork, StacksPrivateKey};

const OPS: u32 = 1000;

/// fsyncs per second of 4 KiB appends, in `dir`.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync.probe")).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn main() {
    // Mints per Stacks transaction (`mint-many!` above 1): PEGIN_BENCH_BATCH.
    let batch: usize = std::env::var("PEGIN_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(coordinator::DEFAULT_STACKS_BATCH);
    let dir = tempfile::tempdir_in(".").unwrap();
    let fsyncs = fsync_rate(dir.path());

    let key = StacksPrivateKey {
        key: bitcoin::secp256k1::SecretKey::from_slice(&[0xaa; 32]).unwrap(),
        compressed: true,
    };
    let me = key.address(StacksNetwork::Testnet);
    let contract: stacks_wire::ContractId = format!("{me}.sbtc-alpha").parse().unwrap();
    let mut state = StacksState::new(contract.clone());
    state.fund(me, 1_000_000_000_000);
    state.model.coordinator = Some((me.into(), vec![2; 33]));
    let peg = peg_wallet_address(&aggregate_key(), Network::Regtest);
    let recipient: PrincipalData = me.into();
    let ops: Vec<PegInOp> = (0..OPS)
        .map(|i| {
            let mut t = [0u8; 32];
            t[..4].copy_from_slice(&i.to_be_bytes());
            PegInOp {
                recipient: recipient.clone(),
                peg_wallet_address: peg.clone().into(),
                amount: Amount::from_sat(10_000),
                memo: vec![],
                txid: Txid::from_byte_array(t),
                vtxindex: i,
                block_height: BurnHeight(5),
                burn_header_hash: BlockHash::from_byte_array([5; 32]),
            }
        })
        .collect();
    state.burn_ops.insert(5, (ops.clone(), vec![]));
    state.burn_height = 5;
    // Only a 2023-style node serves /v2/burn_ops: the emulator's explicit mode.
    state.burn_ops_mode = devnet::stacks::BurnOpsMode::Node2023;
    let emulator = StacksEmulator::start("127.0.0.1:0", state).unwrap();

    let stacks = UreqStacksNode::new(&emulator.url(), Duration::from_secs(5));
    let mut frost = MockFrostCoordinator::new();
    frost
        .expect_aggregate_public_key()
        .returning(|| Some(aggregate_key()));
    frost.expect_keys().returning(|| vec![aggregate_key()]);
    frost.expect_attestations().returning(Vec::new);
    // Every peg-in's output 1 is unspent (the mint rule asks the node).
    let mut bitcoin_node = MockBitcoinNode::new();
    bitcoin_node.expect_get_tx_out().returning(|o, _| {
        Ok(Some(bitcoin_node_client::Utxo {
            outpoint: *o,
            txout: bitcoin::TxOut {
                value: Amount::from_sat(10_000),
                script_pubkey: bitcoin::ScriptBuf::new(),
            },
            confirmations: 1,
        }))
    });
    let queue = SqlitePegQueue::open(&dir.path().join("queue.sqlite")).unwrap();
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks: stacks.clone(),
            bitcoin: bitcoin_node,
            stacks_wallet: ContractCallWallet::new(
                StacksNetwork::Testnet,
                contract.clone(),
                key,
                StacksFeePolicy {
                    floor: 200,
                    cap: 100_000,
                },
                stacks.clone(),
            ),
            bitcoin_wallet: PegWallet::new(
                Network::Regtest,
                *b"id",
                BitcoinFeePolicy {
                    floor: bitcoin::FeeRate::from_sat_per_vb(1).unwrap(),
                    cap: bitcoin::FeeRate::from_sat_per_vb(10).unwrap(),
                    subsidy: Amount::ZERO,
                },
            ),
            frost,
            source: StacksNodeSource::new(stacks),
        },
        LoopSettings {
            network: Network::Regtest,
            stacks_network: StacksNetwork::Testnet,
            contract,
            start_height: BurnHeight(5),
            op_confirmations: 1,
            fulfillment_confirmations: 1,
            poll_interval: Duration::from_millis(1),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(10),
            fee_target_blocks: 6,
            max_heights_per_tick: 100,
            allowlist: Allowlist::new([recipient], []),
            stx_low_balance_warning: 1,
            stacks_batch: batch,
        },
    );
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    // One tick scans the block and takes every op through validation,
    // signing and broadcast (it then waits for the chain).
    let report = l.tick(&stop).unwrap();
    let took = start.elapsed();
    let txs = emulator.with(|s| s.mempool.len());
    // The loop keeps at most 25 transactions pending: with one op per
    // transaction (PEGIN_BENCH_BATCH=1) only 25 peg-ins get through before
    // the chain moves; with batches, all of them.
    let broadcast = l
        .components()
        .queue
        .pending()
        .unwrap()
        .iter()
        .filter(|q| matches!(q.state, peg_queue::OpState::StacksTxBroadcast { .. }))
        .count();
    assert!(broadcast > 0, "{report:?}");
    assert_eq!(txs, broadcast.div_ceil(batch.max(1)), "{report:?}");
    let ops = u32::try_from(broadcast).unwrap();
    let rate = f64::from(ops) / took.as_secs_f64();
    // One transaction per round of steps, plus one per scanned height.
    let commits = report.rounds + usize::try_from(report.heights_scanned).unwrap();
    println!("fsync rate of this disk (4 KiB append + fdatasync): {fsyncs:.0}/s");
    println!(
        "peg-ins validated, signed, stored and broadcast over HTTP, {batch} per Stacks transaction: {ops} of {OPS} in {:.2} s = {rate:.0}/s in {txs} transactions ({} state changes in {commits} queue transactions)",
        took.as_secs_f64(),
        report.steps
    );
    println!(
        "one fsync per peg-in would allow {fsyncs:.0}/s; measured {:.2}x that, with {:.3} fsyncs per peg-in",
        rate / fsyncs,
        commits as f64 / f64::from(ops)
    );
    let _ = l.components().queue.last_scanned_height();
}
