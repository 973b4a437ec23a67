//! Benchmark: `peg-coins`' record syncing a chain from an in-process node
//! (no RPC: what is measured is the record, with its SQLite file at
//! `synchronous=FULL`, one transaction per block), then answering
//! `unspent` for the peg wallet.
//!
//! `cargo run --release -p devnet --example coin_record_bench`
//! (`--blocks 2000 --coins 1000 --txs 100`: blocks, peg wallet deposits,
//! unrelated transactions of 3 inputs per block).
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::time::Instant;

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash as _;
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, FeeRate, OutPoint, Script,
    ScriptBuf, Transaction, TxIn, TxMerkleNode, TxOut, Txid,
};
use bitcoin_node_client::{BitcoinNode, Error, MempoolAcceptance, TxStatus, Utxo};
use peg_coins::{CoinRecord, Include};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

struct Chain {
    blocks: Vec<Block>,
    by_hash: HashMap<BlockHash, usize>,
}

fn nope<T>() -> Result<T, Error> {
    Err(Error::Rpc {
        code: -32601,
        message: "Method not found".into(),
    })
}

impl BitcoinNode for Chain {
    fn get_block_count(&self) -> Result<u64, Error> {
        Ok(self.blocks.len() as u64 - 1)
    }
    fn get_block_hash(&self, height: u64) -> Result<BlockHash, Error> {
        self.blocks
            .get(height as usize)
            .map(Block::block_hash)
            .ok_or(Error::Rpc {
                code: -8,
                message: "Block height out of range".into(),
            })
    }
    fn get_block(&self, hash: &BlockHash) -> Result<Block, Error> {
        self.by_hash
            .get(hash)
            .map(|i| self.blocks[*i].clone())
            .ok_or(Error::Rpc {
                code: -5,
                message: "Block not found".into(),
            })
    }
    fn get_raw_transaction(&self, _: &Txid) -> Result<Option<TxStatus>, Error> {
        nope()
    }
    fn send_raw_transaction(&self, _: &Transaction) -> Result<Txid, Error> {
        nope()
    }
    fn test_mempool_accept(&self, _: &Transaction) -> Result<MempoolAcceptance, Error> {
        nope()
    }
    fn estimate_smart_fee(&self, _: u16) -> Result<Option<FeeRate>, Error> {
        nope()
    }
    fn list_unspent(&self, _: &Script) -> Result<Vec<Utxo>, Error> {
        nope()
    }

    fn get_tx_out(&self, _: &OutPoint, _: bool) -> Result<Option<Utxo>, Error> {
        nope()
    }
}

fn tx(inputs: Vec<OutPoint>, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: inputs
            .into_iter()
            .map(|o| TxIn {
                previous_output: o,
                ..TxIn::default()
            })
            .collect(),
        output: outputs,
    }
}

fn out(to: &Script, sats: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: to.to_owned(),
    }
}

fn main() {
    let n_blocks = arg("--blocks", 2_000);
    let n_coins = arg("--coins", 1_000);
    let n_txs = arg("--txs", 100);
    let peg = ScriptBuf::from_bytes([vec![0x00, 0x20], vec![0xaa; 32]].concat());
    let other = ScriptBuf::from_bytes([vec![0x00, 0x14], vec![0x11; 20]].concat());
    let every = (n_blocks / n_coins.max(1)).max(1);

    let t = Instant::now();
    let mut blocks: Vec<Block> = Vec::new();
    let mut deposits: Vec<OutPoint> = Vec::new();
    let mut spent = 0u64;
    let mut counter = 0u64;
    for h in 0..=n_blocks {
        let mut txdata = vec![tx(vec![OutPoint::null()], vec![out(&other, 50)])];
        txdata[0].input[0].script_sig = ScriptBuf::from_bytes(h.to_le_bytes().to_vec());
        for _ in 0..n_txs {
            let inputs = (0..3)
                .map(|i| {
                    counter += 1;
                    OutPoint::new(
                        Txid::from_byte_array([(counter % 251) as u8; 32]),
                        (counter * 3 + i) as u32,
                    )
                })
                .collect();
            txdata.push(tx(inputs, vec![out(&other, 1_000), out(&other, 2_000)]));
        }
        if h > 0 && h % every == 0 && (deposits.len() as u64) < n_coins {
            counter += 1;
            let d = tx(
                vec![OutPoint::new(
                    Txid::from_byte_array([7; 32]),
                    counter as u32,
                )],
                vec![out(&peg, 10_000 + h), out(&other, 500)],
            );
            deposits.push(OutPoint::new(d.compute_txid(), 0));
            txdata.push(d);
        }
        // A sweep of an old deposit every tenth block.
        if h % 10 == 0 && (spent as usize) + 10 < deposits.len() {
            txdata.push(tx(vec![deposits[spent as usize]], vec![out(&other, 9_000)]));
            spent += 1;
        }
        let prev = blocks
            .last()
            .map(Block::block_hash)
            .unwrap_or_else(BlockHash::all_zeros);
        blocks.push(Block {
            header: Header {
                version: BlockVersion::TWO,
                prev_blockhash: prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time: h as u32,
                bits: CompactTarget::from_consensus(0x207f_ffff),
                nonce: 0,
            },
            txdata,
        });
    }
    let by_hash = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.block_hash(), i))
        .collect();
    let chain = Chain { blocks, by_hash };
    println!(
        "built {n_blocks} blocks ({} inputs each, {} deposits, {spent} sweeps) in {:.1?}",
        n_txs * 3,
        deposits.len(),
        t.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut record = CoinRecord::open(&dir.path().join("coins.sqlite"), 1).unwrap();
    record.watch(&peg, 1).unwrap();
    let t = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        if record.sync(&chain).unwrap().caught_up {
            break;
        }
    }
    let took = t.elapsed();
    println!(
        "sync: {n_blocks} blocks in {took:.2?} ({calls} calls): {:.0} blocks/s, {:.0} inputs/s",
        n_blocks as f64 / took.as_secs_f64(),
        (n_blocks * n_txs * 3) as f64 / took.as_secs_f64()
    );

    let rounds = 200;
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        n = record.unspent(&peg, Include::Confirmed).unwrap().len();
    }
    let per = t.elapsed() / rounds;
    println!("unspent: {n} coins in {per:.2?} per call (mean of {rounds})");
    assert_eq!(n as u64, deposits.len() as u64 - spent);
}
