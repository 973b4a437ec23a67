//! Doubles of every component, answering from a small simulated [`World`].
//!
//! The mockall doubles answer from the world (chain tip, Stacks nonce, what
//! the contract says was minted or burned, Bitcoin confirmations), so a test
//! scripts a situation and asserts what the loop did about it. The queue
//! double, [`MemQueue`], is an in-memory [`PegQueue`] shared with the test, so
//! a "restart" is a new loop over the same queue.
//!
//! Only for tests and the loop demo (feature `testing`); nothing here moves
//! real money.
#![allow(missing_docs, missing_debug_implementations)]
// A poisoned lock or a bad fixture is a bug in the test itself.
#![allow(clippy::unwrap_in_result)]

use crate::*;
use std::collections::HashMap;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::key::{Secp256k1, UntweakedPublicKey};
use bitcoin::secp256k1::{schnorr, SecretKey};
use bitcoin::{absolute, transaction, Address, Amount, BlockHash, TxIn, TxOut, Witness};
use bitcoin_node_client::{TxStatus, Utxo};
use fee_wallet::UnsignedFulfillment;
use peg_ops::contract;
use peg_ops::{peg_out_request_sighash, BtcAddress, MessageSignature, PegInOp, PegOutRequestOp};
use stacks_node_client::{AccountInfo, NodeInfo};
use stacks_wire::{StacksAddress, StacksTxid, Value};

pub use crate::source::MockOpSource;
pub use bitcoin_node_client::MockBitcoinNode;
pub use fee_wallet::{MockBitcoinWallet, MockStacksWallet};
pub use frost_coordinator::MockFrostCoordinator;
pub use stacks_node_client::MockStacksNode;

// ---------------------------------------------------------------- the queue double

#[derive(Default)]
pub struct MemInner {
    pub ops: BTreeMap<Txid, QueuedOp>,
    pub order: Vec<Txid>,
    pub scanned: Option<BurnHeight>,
    pub fail_next_set_state: bool,
    /// When each op was accepted (as the SQLite queue's `accepted_at`).
    pub accepted_at: HashMap<Txid, std::time::SystemTime>,
    /// Every state change, per op (as the SQLite queue's `op_events`).
    pub history: HashMap<Txid, Vec<peg_queue::OpEvent>>,
}

impl MemInner {
    fn record(&mut self, txid: &Txid, state: &OpState) {
        let events = self.history.entry(*txid).or_default();
        events.push(peg_queue::OpEvent {
            txid: *txid,
            seq: events.len() as u64 + 1,
            at_unix: 0,
            state: state.name().to_owned(),
            stacks_txid: state.stacks_txid(),
            bitcoin_txid: state.bitcoin_txid(),
            reason: state.reason().map(str::to_owned),
        });
    }
}

/// An in-memory queue, shared between the test and the loops it builds.
#[derive(Clone, Default)]
pub struct MemQueue(pub Arc<Mutex<MemInner>>);

impl MemQueue {
    pub fn state(&self, txid: &Txid) -> OpState {
        self.0.lock().unwrap().ops[txid].state.clone()
    }
    pub fn get_op(&self, txid: &Txid) -> QueuedOp {
        self.0.lock().unwrap().ops[txid].clone()
    }
    pub fn set(&self, txid: &Txid, state: OpState) {
        self.0.lock().unwrap().ops.get_mut(txid).unwrap().state = state;
    }
}

impl PegQueue for MemQueue {
    fn record_scanned_block(
        &self,
        height: BurnHeight,
        ops: &[PegOp],
    ) -> Result<(), peg_queue::Error> {
        for op in ops {
            self.insert_op(op)?;
        }
        self.0.lock().unwrap().scanned = Some(height);
        Ok(())
    }
    fn last_scanned_height(&self) -> Result<Option<BurnHeight>, peg_queue::Error> {
        Ok(self.0.lock().unwrap().scanned)
    }
    fn insert_op(&self, op: &PegOp) -> Result<bool, peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        if g.ops.contains_key(&op.txid()) {
            return Ok(false);
        }
        g.order.push(op.txid());
        g.record(&op.txid(), &OpState::Detected);
        g.ops.insert(
            op.txid(),
            QueuedOp {
                op: op.clone(),
                state: OpState::Detected,
                attempts: 0,
                last_error: None,
                waiting: None,
            },
        );
        Ok(true)
    }
    fn pending(&self) -> Result<Vec<QueuedOp>, peg_queue::Error> {
        let g = self.0.lock().unwrap();
        Ok(g.order
            .iter()
            .map(|t| g.ops[t].clone())
            .filter(|q| !q.state.is_terminal())
            .collect())
    }
    fn get(&self, txid: &Txid) -> Result<Option<QueuedOp>, peg_queue::Error> {
        Ok(self.0.lock().unwrap().ops.get(txid).cloned())
    }
    fn set_state(&self, txid: &Txid, state: &OpState) -> Result<(), peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        if std::mem::take(&mut g.fail_next_set_state) {
            return Err(peg_queue::Error::Storage("disk full".into()));
        }
        let q = g
            .ops
            .get_mut(txid)
            .ok_or(peg_queue::Error::UnknownOp(*txid))?;
        q.state = state.clone();
        q.last_error = None;
        q.waiting = None;
        g.record(txid, state);
        if matches!(state, OpState::Detected | OpState::Rejected { .. }) {
            g.accepted_at.remove(txid);
        } else {
            g.accepted_at
                .entry(*txid)
                .or_insert_with(std::time::SystemTime::now);
        }
        Ok(())
    }
    fn set_states(&self, moves: &[(Txid, OpState)]) -> Result<(), peg_queue::Error> {
        {
            let g = self.0.lock().unwrap();
            if let Some((t, _)) = moves.iter().find(|(t, _)| !g.ops.contains_key(t)) {
                return Err(peg_queue::Error::UnknownOp(*t));
            }
        }
        for (t, s) in moves {
            self.set_state(t, s)?;
        }
        Ok(())
    }

    fn record_failure(&self, txid: &Txid, error: &str) -> Result<u32, peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        let q = g
            .ops
            .get_mut(txid)
            .ok_or(peg_queue::Error::UnknownOp(*txid))?;
        q.attempts += 1;
        q.last_error = Some(error.to_owned());
        Ok(q.attempts)
    }
    fn remove_unacted(&self, txid: &Txid) -> Result<bool, peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        if g.ops.get(txid).is_some_and(|q| !q.state.has_acted()) {
            g.ops.remove(txid);
            g.order.retain(|t| t != txid);
            return Ok(true);
        }
        Ok(false)
    }

    fn rewind_scan(&self, height: Option<BurnHeight>) -> Result<(), peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        g.scanned = match (height, g.scanned) {
            (Some(h), Some(s)) => Some(h.min(s)),
            (Some(_), None) | (None, _) => None,
        };
        Ok(())
    }

    fn signature_used_by(
        &self,
        digest: &[u8; 32],
        except: &Txid,
    ) -> Result<Option<Txid>, peg_queue::Error> {
        let g = self.0.lock().unwrap();
        Ok(g.order.iter().copied().find(|t| {
            let q = &g.ops[t];
            *t != *except
                && !matches!(q.state, OpState::Detected | OpState::Rejected { .. })
                && matches!(&q.op, PegOp::PegOutRequest(r) if peg_rules::request_signature_digest(r) == *digest)
        }))
    }

    fn outflow_since(&self, since_unix: u64) -> Result<Amount, peg_queue::Error> {
        let g = self.0.lock().unwrap();
        let since = std::time::UNIX_EPOCH + Duration::from_secs(since_unix);
        Ok(g.ops
            .values()
            .filter(|q| q.op.kind() == peg_ops::PegOpKind::PegOutRequest)
            .filter(|q| g.accepted_at.get(&q.op.txid()).is_some_and(|t| *t >= since))
            .fold(Amount::ZERO, |sum, q| sum + q.op.amount()))
    }

    fn set_waiting(&self, txid: &Txid, why: Option<String>) -> Result<(), peg_queue::Error> {
        let mut g = self.0.lock().unwrap();
        let q = g
            .ops
            .get_mut(txid)
            .ok_or(peg_queue::Error::UnknownOp(*txid))?;
        q.waiting = why;
        Ok(())
    }

    fn history(&self, txid: &Txid) -> Result<Vec<peg_queue::OpEvent>, peg_queue::Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .history
            .get(txid)
            .cloned()
            .unwrap_or_default())
    }

    fn last_signed_stacks_nonce(&self) -> Result<Option<u64>, peg_queue::Error> {
        let g = self.0.lock().unwrap();
        Ok(g.ops
            .values()
            .filter_map(|q| match &q.state {
                OpState::StacksTxSigned { tx } | OpState::StacksTxBroadcast { tx } => {
                    Some(tx.nonce)
                }
                _ => None,
            })
            .max())
    }
}

// ---------------------------------------------------------------- the simulated world

/// What the doubles answer from.
#[derive(Default)]
pub struct World {
    pub tip: u64,
    pub blocks: BTreeMap<u64, Vec<PegOp>>,
    /// Heights whose ops_at fails transiently (once each).
    pub flaky_heights: HashSet<u64>,
    pub account_nonce: u64,
    /// Bitcoin txids the contract reports as minted or burned.
    pub processed: HashSet<Txid>,
    /// Mine each Stacks tx as it is broadcast.
    pub auto_mine: bool,
    /// Ops whose mint/burn fails on chain when mined (nonce used, no effect).
    pub fail_on_chain: HashSet<Txid>,
    /// Scripted answers to the next Stacks broadcasts.
    pub stacks_broadcast_script: VecDeque<Result<StacksTxid, stacks_node_client::Error>>,
    pub stacks_broadcasts: Vec<Vec<u8>>,
    pub signed: Vec<(Txid, u64, u64)>,
    /// Scripted failures of the next signing rounds.
    pub frost_failures: VecDeque<frost_coordinator::Error>,
    pub sign_calls: usize,
    /// The number of jobs of every `sign_many` call, in order.
    pub sign_many_calls: Vec<usize>,
    /// The op txids of every batched mint or burn built (`mint-many!`,
    /// `burn-many!`), with its nonce.
    pub batches: Vec<(Vec<Txid>, u64)>,
    /// What happened in the world, in order: `signed <stacks txid>` when a
    /// Stacks transaction is built, `stored` is not seen here (the queue
    /// tells), `broadcast <stacks txid>` when one reaches the node.
    pub stacks_log: Vec<String>,
    pub btc_broadcasts: Vec<Transaction>,
    pub btc_broadcast_script: VecDeque<bitcoin_node_client::Error>,
    /// Confirmations of Bitcoin txs the node knows.
    pub btc_known: HashMap<Txid, u32>,
    /// The wallet pays this script instead of the recipient (a bug to catch).
    pub evil_wallet_script: Option<ScriptBuf>,
    pub fulfillments_built: usize,
    /// The reserved outpoints passed to each fulfilment build.
    pub reserved_seen: Vec<Vec<OutPoint>>,
    /// Stacks transactions mined per op (a second one would be a second
    /// mint or burn attempt reaching the chain).
    pub mined: HashMap<Txid, u32>,
    /// Mints and burns visible at the Stacks tip but not yet at the final
    /// block (`confirmations.stacks − 1` deep).
    pub not_final: HashSet<Txid>,
    /// What get-mint / get-burn records for a txid instead of the op's own
    /// amount and principal (a mint or burn of something else).
    pub record_override: HashMap<Txid, (u64, PrincipalData)>,
    /// The Stacks chain is shorter than the final depth.
    pub stacks_too_short: bool,
    /// Outputs the Bitcoin node reports spent (gettxout: none).
    pub spent: HashSet<OutPoint>,
    /// The node's fee rate estimate, sat/vB.
    pub fee_rate: u64,
    /// The payload of every signing round.
    pub sign_payloads: Vec<Vec<u8>>,
    /// Fulfilments the wallet refuses with a fee shortfall (rate rose).
    pub fee_shortfall: bool,
    /// What the FROST coordinator holds of the signers' attestations.
    pub attestations: Vec<frost_coordinator::SignerAttestation>,
    /// Peg wallet coins besides [`peg_utxo`] (`listunspent` lists them
    /// after it; the wallet double spends the first one not reserved).
    pub extra_peg_utxos: Vec<Utxo>,
}

/// The `n`th extra peg wallet coin (`World::extra_peg_utxos`).
pub fn extra_peg_utxo(n: u8) -> Utxo {
    Utxo {
        outpoint: OutPoint::new(txid(200), u32::from(n) + 1),
        ..peg_utxo()
    }
}

/// What the contract records for `op`'s mint or burn in the world.
fn record_of(w: &World, txid: &Txid) -> Value {
    let record = w.record_override.get(txid).cloned().or_else(|| {
        w.blocks
            .values()
            .flatten()
            .find(|o| o.txid() == *txid)
            .map(|o| match o {
                PegOp::PegIn(p) => (p.amount.to_sat(), p.recipient.clone()),
                PegOp::PegOutRequest(r) => (r.amount.to_sat(), allowed_principal()),
            })
    });
    match record {
        Some((amount, principal)) => Value::Optional(Some(Box::new(
            Value::tuple([
                ("amount", Value::UInt(u128::from(amount))),
                ("principal", Value::Principal(principal)),
            ])
            .unwrap(),
        ))),
        None => panic!("no op {txid} in the world's blocks"),
    }
}

/// The final Stacks block in the world.
pub const FINAL_BLOCK: [u8; 32] = [0xbb; 32];

pub type W = Arc<Mutex<World>>;

pub fn secp() -> Secp256k1<bitcoin::secp256k1::All> {
    Secp256k1::new()
}

pub fn aggregate_key() -> PublicKey {
    SecretKey::from_slice(&[3; 32]).unwrap().public_key(&secp())
}

pub fn peg_address() -> Address {
    let (xonly, _) = aggregate_key().x_only_public_key();
    Address::p2tr(
        &secp(),
        UntweakedPublicKey::from(xonly),
        None,
        Network::Regtest,
    )
}

pub fn wallet_address() -> StacksAddress {
    let k = SecretKey::from_slice(&[9; 32]).unwrap().public_key(&secp());
    StacksAddress::p2pkh(StacksNetwork::Testnet, &k, true)
}

pub fn allowed_principal() -> PrincipalData {
    let k = SecretKey::from_slice(&[5; 32]).unwrap().public_key(&secp());
    StacksAddress::p2pkh(StacksNetwork::Testnet, &k, true).into()
}

pub fn stranger_principal() -> PrincipalData {
    let k = SecretKey::from_slice(&[6; 32]).unwrap().public_key(&secp());
    StacksAddress::p2pkh(StacksNetwork::Testnet, &k, true).into()
}

pub const ALLOWED_BTC: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
pub const STRANGER_BTC: &str = "bcrt1q6rhpng9evdsfnn833a4f4vej0asu6dk5srld6x";

pub fn txid(n: u8) -> Txid {
    Txid::from_byte_array([n; 32])
}

pub fn peg_in(n: u8, height: u64, recipient: PrincipalData, amount: u64) -> PegOp {
    PegOp::PegIn(PegInOp {
        recipient,
        peg_wallet_address: peg_address().into(),
        amount: Amount::from_sat(amount),
        memo: vec![],
        txid: txid(n),
        vtxindex: u32::from(n),
        block_height: BurnHeight(height),
        burn_header_hash: BlockHash::all_zeros(),
    })
}

pub fn peg_out(n: u8, height: u64, recipient: &str, amount: u64) -> PegOp {
    let recipient: BtcAddress = recipient.parse().unwrap();
    let amount = Amount::from_sat(amount);
    let digest = peg_out_request_sighash(amount, &recipient.script_pubkey());
    let requester_key = SecretKey::from_slice(&[5; 32]).unwrap();
    PegOp::PegOutRequest(PegOutRequestOp {
        amount,
        recipient,
        signature: MessageSignature::sign(digest, &requester_key),
        peg_wallet_address: peg_address().into(),
        fulfillment_fee: Amount::from_sat(5_000),
        memo: vec![],
        txid: txid(n),
        vtxindex: u32::from(n),
        block_height: BurnHeight(height),
        burn_header_hash: BlockHash::all_zeros(),
    })
}

/// A signed Stacks tx whose bytes name the op, nonce and fee.
pub fn fake_stacks_tx(op: Txid, nonce: u64, fee: u64) -> SignedStacksTx {
    fake_stacks_batch(&[op], nonce, fee)
}

/// A signed Stacks tx of several ops (a `mint-many!` or `burn-many!`):
/// its bytes name the ops, nonce and fee.
pub fn fake_stacks_batch(ops: &[Txid], nonce: u64, fee: u64) -> SignedStacksTx {
    let ops: Vec<String> = ops.iter().map(Txid::to_string).collect();
    let raw = format!("{}:{nonce}:{fee}", ops.join(",")).into_bytes();
    SignedStacksTx {
        txid: StacksTxid(sha256::Hash::hash(&raw).to_byte_array()),
        nonce,
        fee,
        raw,
    }
}

/// The first op a fake Stacks tx names, and its nonce.
pub fn parse_fake(raw: &[u8]) -> (Txid, u64) {
    let (ops, nonce) = parse_fake_many(raw);
    (ops[0], nonce)
}

/// The ops a fake Stacks tx names, and its nonce.
pub fn parse_fake_many(raw: &[u8]) -> (Vec<Txid>, u64) {
    let s = std::str::from_utf8(raw).unwrap();
    let mut parts = s.split(':');
    (
        parts
            .next()
            .unwrap()
            .split(',')
            .map(|t| t.parse().unwrap())
            .collect(),
        parts.next().unwrap().parse().unwrap(),
    )
}

/// Mines a fake Stacks tx in the world: the nonce advances, each op's
/// effect happens unless the op is set to fail on chain (a failed element
/// of a batch takes no effect; the others stand).
pub fn mine(w: &mut World, raw: &[u8]) {
    let (ops, nonce) = parse_fake_many(raw);
    if nonce == w.account_nonce {
        w.account_nonce += 1;
        for op in ops {
            *w.mined.entry(op).or_insert(0) += 1;
            if !w.fail_on_chain.contains(&op) {
                w.processed.insert(op);
            }
        }
    }
}

pub fn stacks_node(w: &W) -> MockStacksNode {
    let mut m = MockStacksNode::new();
    let w1 = w.clone();
    m.expect_get_account().returning(move |p| {
        assert_eq!(*p, PrincipalData::Standard(wallet_address()));
        Ok(AccountInfo {
            balance: 1_000_000_000,
            nonce: w1.lock().unwrap().account_nonce,
        })
    });
    let w2 = w.clone();
    m.expect_broadcast_transaction().returning(move |raw| {
        let mut g = w2.lock().unwrap();
        g.stacks_broadcasts.push(raw.to_vec());
        let id = StacksTxid(sha256::Hash::hash(raw).to_byte_array());
        g.stacks_log.push(format!("broadcast {id}"));
        if let Some(r) = g.stacks_broadcast_script.pop_front() {
            return r;
        }
        if g.auto_mine {
            mine(&mut g, raw);
        }
        Ok(StacksTxid(sha256::Hash::hash(raw).to_byte_array()))
    });
    let txid_of = |c: &ContractId, f: &str, args: &[Value]| -> Txid {
        assert_eq!(c.to_string(), contract_id().to_string());
        assert!(f == contract::GET_MINT || f == contract::GET_BURN, "{f}");
        let Value::StringAscii(t) = &args[0] else {
            panic!("txid arg is a string-ascii")
        };
        t.parse::<Txid>().unwrap()
    };
    let w3 = w.clone();
    m.expect_call_read().returning(move |c, f, args, _| {
        let t = txid_of(c, f, args);
        let g = w3.lock().unwrap();
        Ok(if g.processed.contains(&t) {
            record_of(&g, &t)
        } else {
            Value::Optional(None)
        })
    });
    let w4 = w.clone();
    m.expect_call_read_at()
        .returning(move |c, f, args, _, tip| {
            let t = txid_of(c, f, args);
            assert_eq!(*tip, FINAL_BLOCK, "read at the final block");
            let g = w4.lock().unwrap();
            Ok(if g.processed.contains(&t) && !g.not_final.contains(&t) {
                record_of(&g, &t)
            } else {
                Value::Optional(None)
            })
        });
    let w5 = w.clone();
    m.expect_block_at_depth()
        .returning(move |_| Ok((!w5.lock().unwrap().stacks_too_short).then_some(FINAL_BLOCK)));
    m.expect_get_info().returning(|| {
        Ok(NodeInfo {
            burn_block_height: 0,
            stacks_tip_height: 10,
            stacks_tip: [0xaa; 32],
        })
    });
    m
}

pub fn stacks_wallet(w: &W) -> MockStacksWallet {
    let mut m = MockStacksWallet::new();
    m.expect_address().returning(wallet_address);
    let w1 = w.clone();
    m.expect_build_mint().returning(move |op, nonce, min_fee| {
        let fee = min_fee.unwrap_or(1_000);
        let tx = fake_stacks_tx(op.txid, nonce, fee);
        let mut g = w1.lock().unwrap();
        g.signed.push((op.txid, nonce, fee));
        g.stacks_log.push(format!("signed {}", tx.txid));
        Ok(tx)
    });
    let w2 = w.clone();
    m.expect_build_burn()
        .returning(move |op, requester, nonce, min_fee| {
            assert_eq!(PrincipalData::Standard(*requester), allowed_principal());
            let fee = min_fee.unwrap_or(1_000);
            let tx = fake_stacks_tx(op.txid, nonce, fee);
            let mut g = w2.lock().unwrap();
            g.signed.push((op.txid, nonce, fee));
            g.stacks_log.push(format!("signed {}", tx.txid));
            Ok(tx)
        });
    // A batch: every op signed once with the batch's nonce and fee (fee
    // per op: a batch of n pays n times a single call's).
    let batch = |w: &W, ops: Vec<Txid>, nonce: u64, min_fee: Option<u64>| {
        assert!(ops.len() >= 2, "a batch of one is a plain call");
        assert!(ops.len() <= contract::MAX_BATCH);
        let fee = min_fee.unwrap_or(1_000 * ops.len() as u64);
        let tx = fake_stacks_batch(&ops, nonce, fee);
        let mut g = w.lock().unwrap();
        for t in &ops {
            g.signed.push((*t, nonce, fee));
        }
        g.batches.push((ops, nonce));
        g.stacks_log.push(format!("signed {}", tx.txid));
        Ok(tx)
    };
    let w3 = w.clone();
    m.expect_build_mint_many()
        .returning(move |ops, nonce, min_fee| {
            batch(&w3, ops.iter().map(|o| o.txid).collect(), nonce, min_fee)
        });
    let w4 = w.clone();
    m.expect_build_burn_many()
        .returning(move |burns, nonce, min_fee| {
            for (_, requester) in burns {
                assert_eq!(PrincipalData::Standard(*requester), allowed_principal());
            }
            batch(
                &w4,
                burns.iter().map(|(o, _)| o.txid).collect(),
                nonce,
                min_fee,
            )
        });
    m
}

pub fn peg_utxo() -> Utxo {
    Utxo {
        outpoint: OutPoint::new(txid(200), 0),
        txout: TxOut {
            value: Amount::from_sat(10_000_000),
            script_pubkey: peg_address().script_pubkey(),
        },
        confirmations: 10,
    }
}

pub fn bitcoin_wallet(w: &W) -> MockBitcoinWallet {
    let mut m = MockBitcoinWallet::new();
    m.expect_peg_wallet_address().returning(|k| {
        assert_eq!(*k, aggregate_key());
        peg_address()
    });
    let w1 = w.clone();
    m.expect_build_fulfillment()
        .returning(move |op, _, inputs| {
            let mut g = w1.lock().unwrap();
            g.fulfillments_built += 1;
            g.reserved_seen.push(inputs.reserved.clone());
            assert_eq!(inputs.stacks_chain_tip, [0xaa; 32]);
            if g.fee_shortfall {
                return Err(fee_wallet::Error::FeeShortfall {
                    offered: op.fulfillment_fee,
                    required: op.fulfillment_fee + Amount::from_sat(1),
                });
            }
            let pay_to = g
                .evil_wallet_script
                .clone()
                .unwrap_or_else(|| op.recipient.script_pubkey());
            // What the real wallet builds: the request's fee output and one
            // peg coin in, OP_RETURN, recipient, change; a 3,000-sat fee.
            // The coin: the first one listed and not reserved (else the
            // first, which the loop's own checks then refuse).
            let coin = inputs
                .utxos
                .iter()
                .find(|u| {
                    u.txout.script_pubkey == peg_address().script_pubkey()
                        && !inputs.reserved.contains(&u.outpoint)
                })
                .cloned()
                .unwrap_or_else(peg_utxo);
            let tx = Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: [OutPoint::new(op.txid, 2), coin.outpoint]
                    .into_iter()
                    .map(|previous_output| TxIn {
                        previous_output,
                        ..Default::default()
                    })
                    .collect(),
                output: vec![
                    TxOut {
                        value: Amount::ZERO,
                        script_pubkey: peg_rules::fulfilment_op_return(
                            *b"id",
                            &inputs.stacks_chain_tip,
                        ),
                    },
                    TxOut {
                        value: op.amount,
                        script_pubkey: pay_to,
                    },
                    TxOut {
                        value: coin.txout.value + op.fulfillment_fee
                            - op.amount
                            - Amount::from_sat(3_000),
                        script_pubkey: peg_address().script_pubkey(),
                    },
                ],
            };
            let prevouts = vec![
                TxOut {
                    value: op.fulfillment_fee,
                    script_pubkey: op.peg_wallet_address.script_pubkey(),
                },
                coin.txout,
            ];
            Ok(UnsignedFulfillment {
                tx,
                prevouts,
                sighashes: vec![[1; 32], [2; 32]],
            })
        });
    m.expect_finalize_fulfillment().returning(|u, sigs| {
        assert_eq!(sigs.len(), u.sighashes.len());
        let mut tx = u.tx.clone();
        for (i, s) in tx.input.iter_mut().zip(sigs) {
            i.witness = Witness::from_slice(&[s.as_ref().to_vec()]);
        }
        Ok(tx)
    });
    m
}

pub fn bitcoin_node(w: &W) -> MockBitcoinNode {
    let mut m = MockBitcoinNode::new();
    let w4 = w.clone();
    m.expect_list_unspent().returning(move |s| {
        assert_eq!(*s, *peg_address().script_pubkey());
        let mut coins = vec![peg_utxo()];
        coins.extend(w4.lock().unwrap().extra_peg_utxos.iter().cloned());
        Ok(coins)
    });
    let w0 = w.clone();
    m.expect_estimate_smart_fee().returning(move |_| {
        Ok(bitcoin::FeeRate::from_sat_per_vb(
            w0.lock().unwrap().fee_rate,
        ))
    });
    let w3 = w.clone();
    m.expect_get_tx_out().returning(move |o, mempool| {
        assert!(
            mempool,
            "a request's fee output spent in the mempool is spent"
        );
        let g = w3.lock().unwrap();
        Ok((!g.spent.contains(o)).then(|| Utxo {
            outpoint: *o,
            txout: TxOut {
                value: Amount::from_sat(5_000),
                script_pubkey: peg_address().script_pubkey(),
            },
            confirmations: 1,
        }))
    });
    let w1 = w.clone();
    m.expect_send_raw_transaction().returning(move |tx| {
        let mut g = w1.lock().unwrap();
        if let Some(e) = g.btc_broadcast_script.pop_front() {
            return Err(e);
        }
        g.btc_broadcasts.push(tx.clone());
        g.btc_known.entry(tx.compute_txid()).or_insert(0);
        Ok(tx.compute_txid())
    });
    let w2 = w.clone();
    m.expect_get_raw_transaction().returning(move |t| {
        let g = w2.lock().unwrap();
        Ok(g.btc_known.get(t).map(|c| TxStatus {
            tx: g
                .btc_broadcasts
                .iter()
                .find(|x| x.compute_txid() == *t)
                .cloned()
                .unwrap(),
            confirmations: *c,
            block_hash: None,
        }))
    });
    m
}

pub fn frost(w: &W) -> MockFrostCoordinator {
    let mut m = MockFrostCoordinator::new();
    m.expect_aggregate_public_key()
        .returning(|| Some(aggregate_key()));
    let w1 = w.clone();
    m.expect_keys().returning(|| vec![aggregate_key()]);
    let w2 = w.clone();
    m.expect_attestations()
        .returning(move || w2.lock().unwrap().attestations.clone());
    sign_with(&mut m, w, move |payload, items| {
        let mut g = w1.lock().unwrap();
        g.sign_payloads.push(payload.to_vec());
        let mut sigs = Vec::with_capacity(items.len());
        for _ in items {
            g.sign_calls += 1;
            if let Some(e) = g.frost_failures.pop_front() {
                return Err(e);
            }
            sigs.push(schnorr::Signature::from_slice(&[7; 64]).unwrap());
        }
        Ok(sigs)
    });
    m
}

/// What a double signs one job with.
pub type SignFn = dyn Fn(
        &[u8],
        &[frost_coordinator::SignItem],
    ) -> Result<Vec<schnorr::Signature>, frost_coordinator::Error>
    + Send
    + Sync;

/// Makes `m` sign with `f`, both one job at a time (`sign`) and several
/// (`sign_many`, each job through `f`, its call recorded in
/// [`World::sign_many_calls`]).
pub fn sign_with(
    m: &mut MockFrostCoordinator,
    w: &W,
    f: impl Fn(
            &[u8],
            &[frost_coordinator::SignItem],
        ) -> Result<Vec<schnorr::Signature>, frost_coordinator::Error>
        + Send
        + Sync
        + 'static,
) {
    let f: Arc<SignFn> = Arc::new(f);
    let one = f.clone();
    m.expect_sign()
        .returning(move |payload, items| one(payload, items));
    let w = w.clone();
    m.expect_sign_many().returning(move |jobs| {
        w.lock().unwrap().sign_many_calls.push(jobs.len());
        jobs.iter().map(|j| f(&j.payload, &j.items)).collect()
    });
}

pub fn source(w: &W) -> MockOpSource {
    let mut m = MockOpSource::new();
    let w1 = w.clone();
    m.expect_tip_height()
        .returning(move || Ok(BurnHeight(w1.lock().unwrap().tip)));
    let w2 = w.clone();
    m.expect_ops_at().returning(move |h| {
        let mut g = w2.lock().unwrap();
        if g.flaky_heights.remove(&h.0) {
            return Err(SourceError {
                message: "node 503".into(),
                transient: true,
            });
        }
        if h.0 > g.tip {
            return Ok(None);
        }
        Ok(Some(g.blocks.get(&h.0).cloned().unwrap_or_default()))
    });
    m
}

pub fn contract_id() -> ContractId {
    format!("{}.sbtc-alpha", wallet_address()).parse().unwrap()
}

pub fn settings() -> LoopSettings {
    LoopSettings {
        network: Network::Regtest,
        stacks_network: StacksNetwork::Testnet,
        contract: contract_id(),
        start_height: BurnHeight(1),
        op_confirmations: 1,
        fulfillment_confirmations: 1,
        poll_interval: Duration::from_millis(1),
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        fee_target_blocks: 6,
        max_heights_per_tick: 100,
        allowlist: Allowlist::new(
            [allowed_principal()],
            [ALLOWED_BTC.parse::<BtcAddress>().unwrap().script_pubkey()],
        ),
        stx_low_balance_warning: 1,
        stacks_batch: crate::DEFAULT_STACKS_BATCH,
    }
}

pub type Loop = StacksCoordinator<
    MemQueue,
    MockStacksNode,
    MockBitcoinNode,
    MockStacksWallet,
    MockBitcoinWallet,
    MockFrostCoordinator,
    MockOpSource,
>;

pub fn coordinator(w: &W, q: &MemQueue, settings: LoopSettings) -> Loop {
    StacksCoordinator::new(
        Components {
            queue: q.clone(),
            stacks: stacks_node(w),
            bitcoin: bitcoin_node(w),
            stacks_wallet: stacks_wallet(w),
            bitcoin_wallet: bitcoin_wallet(w),
            frost: frost(w),
            source: source(w),
        },
        settings,
    )
}

pub fn world(tip: u64, blocks: Vec<(u64, Vec<PegOp>)>) -> W {
    Arc::new(Mutex::new(World {
        tip,
        blocks: blocks.into_iter().collect(),
        auto_mine: true,
        fee_rate: 2,
        ..World::default()
    }))
}

pub fn no_stop() -> AtomicBool {
    AtomicBool::new(false)
}

pub fn run_ticks(l: &mut Loop, n: usize) {
    for _ in 0..n {
        l.tick(&no_stop()).unwrap();
    }
}
