//! Benchmark: one guard check (`Validator::check` of a fresh, valid
//! fulfilment request) on a peg with N minted peg-ins and N paid peg-outs,
//! the guard reading the devnet's bitcoind and stacks-node emulators over
//! HTTP with its real clients and SQLite files (issue #16).
//!
//! `cargo run --release -p signer-guard --example guard_bench -- --n 1000`
//! (`--n`: peg-ins and peg-out requests; `--fresh 20`: requests left unpaid
//! and checked at the end, each once, under one tip).
//!
//! Prints the time per check (the paying phase, in steps of a tenth of N,
//! and the fresh checks), the time of each phase of a check
//! (`Guard::last_check_phases`) and the HTTP calls to each node per check.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::key::{Keypair, TapTweak as _};
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    Amount, Block, BlockHash, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Txid, Witness,
};
use bitcoin_node_client::{Auth, BitcoinNode, MempoolAcceptance, TxStatus, UreqBitcoinNode, Utxo};
use devnet::{BitcoinEmulator, BitcoinState, StacksEmulator, StacksState, User};
use frost_signer::Validator;
use peg_ops::BurnHeight;
use peg_rules::SignPayload;
use signer_guard::{Confirmations, Guard, PegParams};
use stacks_node_client::{AccountInfo, FeeEstimates, NodeInfo, StacksNode, UreqStacksNode};
use stacks_wire::{ContractId, PrincipalData, StacksTxid, Value};

// The guard tests' emulator fixture (keys, the contract, the signer set
// file, the fulfilment builder), shared without a public API for it.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
use common::{contract, fulfilment, key, request, secret, signer_file, MAGIC};

const PEG_SECRET: u8 = 7;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// Calls per method, shared by the two counting clients.
type Calls = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn count(calls: &Calls, what: &'static str) {
    *calls.lock().unwrap().entry(what).or_default() += 1;
}

struct CountingBitcoin(UreqBitcoinNode, Calls);

impl BitcoinNode for CountingBitcoin {
    fn get_block_count(&self) -> Result<u64, bitcoin_node_client::Error> {
        count(&self.1, "btc getblockcount");
        self.0.get_block_count()
    }
    fn get_block_hash(&self, height: u64) -> Result<BlockHash, bitcoin_node_client::Error> {
        count(&self.1, "btc getblockhash");
        self.0.get_block_hash(height)
    }
    fn get_best_block_hash(&self) -> Result<BlockHash, bitcoin_node_client::Error> {
        count(&self.1, "btc getbestblockhash");
        self.0.get_best_block_hash()
    }
    fn get_block(&self, hash: &BlockHash) -> Result<Block, bitcoin_node_client::Error> {
        count(&self.1, "btc getblock");
        self.0.get_block(hash)
    }
    fn get_raw_transaction(
        &self,
        txid: &Txid,
    ) -> Result<Option<TxStatus>, bitcoin_node_client::Error> {
        count(&self.1, "btc getrawtransaction");
        self.0.get_raw_transaction(txid)
    }
    fn get_raw_transaction_in_block(
        &self,
        txid: &Txid,
        block_hash: &BlockHash,
    ) -> Result<Option<TxStatus>, bitcoin_node_client::Error> {
        count(&self.1, "btc getrawtransaction (in block)");
        self.0.get_raw_transaction_in_block(txid, block_hash)
    }
    fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, bitcoin_node_client::Error> {
        count(&self.1, "btc sendrawtransaction");
        self.0.send_raw_transaction(tx)
    }
    fn test_mempool_accept(
        &self,
        tx: &Transaction,
    ) -> Result<MempoolAcceptance, bitcoin_node_client::Error> {
        count(&self.1, "btc testmempoolaccept");
        self.0.test_mempool_accept(tx)
    }
    fn estimate_smart_fee(
        &self,
        target_blocks: u16,
    ) -> Result<Option<FeeRate>, bitcoin_node_client::Error> {
        count(&self.1, "btc estimatesmartfee");
        self.0.estimate_smart_fee(target_blocks)
    }
    fn list_unspent(
        &self,
        script_pubkey: &bitcoin::Script,
    ) -> Result<Vec<Utxo>, bitcoin_node_client::Error> {
        count(&self.1, "btc scantxoutset");
        self.0.list_unspent(script_pubkey)
    }
    fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        include_mempool: bool,
    ) -> Result<Option<Utxo>, bitcoin_node_client::Error> {
        count(&self.1, "btc gettxout");
        self.0.get_tx_out(outpoint, include_mempool)
    }
}

struct CountingStacks(UreqStacksNode, Calls);

impl StacksNode for CountingStacks {
    fn get_info(&self) -> Result<NodeInfo, stacks_node_client::Error> {
        count(&self.1, "stx info");
        self.0.get_info()
    }
    fn get_peg_in_ops(
        &self,
        height: BurnHeight,
    ) -> Result<Option<Vec<peg_ops::PegInOp>>, stacks_node_client::Error> {
        count(&self.1, "stx peg-in ops");
        self.0.get_peg_in_ops(height)
    }
    fn get_peg_out_request_ops(
        &self,
        height: BurnHeight,
    ) -> Result<Option<Vec<peg_ops::PegOutRequestOp>>, stacks_node_client::Error> {
        count(&self.1, "stx peg-out ops");
        self.0.get_peg_out_request_ops(height)
    }
    fn get_account(
        &self,
        principal: &PrincipalData,
    ) -> Result<AccountInfo, stacks_node_client::Error> {
        count(&self.1, "stx account");
        self.0.get_account(principal)
    }
    fn broadcast_transaction(&self, raw: &[u8]) -> Result<StacksTxid, stacks_node_client::Error> {
        count(&self.1, "stx broadcast");
        self.0.broadcast_transaction(raw)
    }
    fn estimate_fee(
        &self,
        payload: &[u8],
        estimated_len: u64,
    ) -> Result<FeeEstimates, stacks_node_client::Error> {
        count(&self.1, "stx fee");
        self.0.estimate_fee(payload, estimated_len)
    }
    fn call_read(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
    ) -> Result<Value, stacks_node_client::Error> {
        count(&self.1, "stx call-read (tip)");
        self.0.call_read(contract, function, args, sender)
    }
    fn block_at_depth(&self, depth: u32) -> Result<Option<[u8; 32]>, stacks_node_client::Error> {
        count(&self.1, "stx block_at_depth");
        self.0.block_at_depth(depth)
    }
    fn call_read_at(
        &self,
        contract: &ContractId,
        function: &str,
        args: &[Value],
        sender: &PrincipalData,
        tip: &[u8; 32],
    ) -> Result<Value, stacks_node_client::Error> {
        let what = match function {
            "get-burn" => "stx get-burn",
            "get-mint" => "stx get-mint",
            "get-total-supply" => "stx get-total-supply",
            "get-bitcoin-wallet-public-key" => "stx get-bitcoin-wallet-public-key",
            _ => "stx call-read (other)",
        };
        count(&self.1, what);
        self.0.call_read_at(contract, function, args, sender, tip)
    }
}

/// Signs every input of `tx` with the peg wallet key (what a threshold of
/// signers' shares aggregates to).
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

/// The amount of request `i`.
fn amount(i: usize) -> u64 {
    30_000 + i as u64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-phase totals and call counts over several checks.
#[derive(Default)]
struct Tally {
    checks: u64,
    total: Duration,
    phases: Vec<(&'static str, Duration)>,
    calls: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(
        &mut self,
        took: Duration,
        phases: &[(&'static str, Duration)],
        calls: &BTreeMap<&'static str, u64>,
    ) {
        self.checks += 1;
        self.total += took;
        for (n, d) in phases {
            match self.phases.iter_mut().find(|(m, _)| m == n) {
                Some((_, t)) => *t += *d,
                None => self.phases.push((n, *d)),
            }
        }
        for (n, c) in calls {
            *self.calls.entry(n).or_default() += c;
        }
    }

    fn print(&self, title: &str) {
        let n = self.checks.max(1) as f64;
        println!(
            "{title}: {} checks, {:.2} ms per check",
            self.checks,
            ms(self.total) / n
        );
        for (name, d) in &self.phases {
            println!("  {name:<16} {:>9.3} ms", ms(*d) / n);
        }
        let all: u64 = self.calls.values().sum();
        println!("  HTTP calls per check: {:.1}", all as f64 / n);
        for (name, c) in &self.calls {
            println!("    {name:<36} {:>8.2}", *c as f64 / n);
        }
    }
}

fn main() {
    let n = arg("--n", 1000) as usize;
    let fresh = (arg("--fresh", 20) as usize).clamp(1, n);
    let peg_key = key(PEG_SECRET);
    let peg = peg_rules::peg_wallet_address(&peg_key, bitcoin::Network::Regtest);
    let peg_script = peg.script_pubkey();
    let burn = ScriptBuf::new_op_return([0u8]);

    // The Bitcoin side: N peg-ins of 100 000 sats, then N requests of
    // 30 000 + i sats (each its own signature: no replay), 5 000 sat fee
    // outputs, a block every 20 (the mempool's chain limit is 25).
    let setup = Instant::now();
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    alice.fund(&mut b, &burn);
    let start_height = b.height();
    let stx = alice.stx.clone();
    let mut peg_ins = Vec::with_capacity(n);
    for i in 0..n {
        peg_ins.push(
            alice
                .peg_in(&mut b, MAGIC, &peg, &stx, Amount::from_sat(100_000))
                .unwrap(),
        );
        if i % 20 == 19 {
            b.mine(&burn);
        }
    }
    b.mine(&burn);
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        requests.push(
            alice
                .peg_out(
                    &mut b,
                    MAGIC,
                    &peg,
                    Amount::from_sat(amount(i)),
                    Amount::from_sat(5_000),
                )
                .unwrap(),
        );
        if i % 20 == 19 {
            b.mine(&burn);
        }
    }
    b.mine(&burn);
    let peg_in_txs: Vec<Transaction> = peg_ins.iter().map(|t| b.locate(t).unwrap().0).collect();
    let request_txs: Vec<Transaction> = requests.iter().map(|t| b.locate(t).unwrap().0).collect();

    // The Stacks side: the key published, every peg-in minted, every
    // request burned, two blocks deep.
    let mut s = StacksState::new(contract());
    let owner = PrincipalData::Standard(contract().address);
    s.model.coordinator = Some((owner.clone(), key(9).serialize().to_vec()));
    s.model.wallet_key = Some(peg_key.serialize().to_vec());
    let txid = |t: &Txid| Value::StringAscii(t.to_string());
    for p in &peg_ins {
        let r = s.model.call(
            &owner,
            "mint!",
            &[Value::UInt(100_000), Value::Principal(stx.clone()), txid(p)],
        );
        assert_eq!(r.result, Value::Ok(Box::new(Value::Bool(true))));
    }
    for (i, r) in requests.iter().enumerate() {
        let r = s.model.call(
            &owner,
            "burn!",
            &[
                Value::UInt(u128::from(amount(i))),
                Value::Principal(stx.clone()),
                txid(r),
            ],
        );
        assert_eq!(r.result, Value::Ok(Box::new(Value::Bool(true))));
    }
    s.mine();
    s.mine();

    let btc = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let stacks = StacksEmulator::start("127.0.0.1:0", s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = signer_file(dir.path(), &alice);
    let params = PegParams::from_signer_file(&file, &path).unwrap();
    let calls: Calls = Arc::default();
    let timeout = Duration::from_secs(10);
    let mut guard = Guard::new(
        CountingBitcoin(
            UreqBitcoinNode::new(&btc.url(), Auth::None, timeout),
            calls.clone(),
        ),
        CountingStacks(UreqStacksNode::new(&stacks.url(), timeout), calls.clone()),
        params,
        Confirmations {
            bitcoin: 1,
            stacks: 2,
        },
        start_height,
        &dir.path().join("guard"),
        &[peg_key],
    )
    .unwrap();
    println!(
        "peg of {n} peg-ins and {n} requests built in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let to = alice.btc.script_pubkey();
    let check = |guard: &mut Guard<CountingBitcoin, CountingStacks>,
                 i: usize,
                 id: u64,
                 tally: &mut Tally|
     -> Transaction {
        let (mut tx, prevouts) = fulfilment(
            (requests[i], &request_txs[i], amount(i)),
            (
                OutPoint::new(peg_ins[i], 1),
                peg_in_txs[i].output[1].clone(),
            ),
            &to,
            &peg_script,
        );
        let payload = SignPayload::Fulfilment {
            request: requests[i],
            tx: tx.clone(),
            prevouts: prevouts.clone(),
        };
        let req = request(id, &payload, &peg_key);
        calls.lock().unwrap().clear();
        let started = Instant::now();
        guard
            .check(&req)
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let took = started.elapsed();
        let counted = calls.lock().unwrap().clone();
        tally.add(took, guard.last_check_phases(), &counted);
        sign_with_peg_key(&mut tx, &prevouts);
        tx
    };

    // Pay N - fresh requests through the guard, a block every 20
    // fulfilments: the peg grows to its size.
    let paid = n - fresh;
    let step = (paid / 10).max(1);
    let mut tally = Tally::default();
    let mut first_after_block = Tally::default();
    let mut id = 0;
    for i in 0..paid {
        id += 1;
        let mut t = Tally::default();
        let tx = check(&mut guard, i, id, &mut t);
        if i % 20 == 0 {
            first_after_block.add(t.total, &t.phases, &t.calls);
        }
        tally.add(t.total, &t.phases, &t.calls);
        btc.with(|b| b.send(tx)).unwrap();
        if i % 20 == 19 {
            btc.with(|b| b.mine(&burn));
        }
        if i % step == step - 1 {
            println!(
                "paid {:>5}: {:.2} ms per check over the last {step}",
                i + 1,
                ms(tally.total) / tally.checks as f64
            );
            tally = Tally::default();
        }
    }
    btc.with(|b| b.mine(&burn));
    first_after_block.print("paying: the first check after each block");

    // A block arrives: the first fresh check pays for it, the rest share
    // its tip.
    let mut first = Tally::default();
    id += 1;
    check(&mut guard, paid, id, &mut first);
    first.print(&format!(
        "fresh check, the first after a new block ({paid} paid)"
    ));
    let mut same_tip = Tally::default();
    for i in paid + 1..n {
        id += 1;
        check(&mut guard, i, id, &mut same_tip);
    }
    same_tip.print(&format!(
        "fresh checks under one tip ({paid} paid, {n} peg-ins)"
    ));
}
