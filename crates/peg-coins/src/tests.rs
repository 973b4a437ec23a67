//! The record against a small in-memory node: a best chain of blocks built
//! with rust-bitcoin, every block ever served kept (as Core keeps stale ones).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, FeeRate, OutPoint, Script,
    ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use bitcoin_node_client::{BitcoinNode, Error as NodeError, MempoolAcceptance, TxStatus};

use super::*;

#[derive(Default)]
struct Node {
    best: RefCell<Vec<Block>>,
    known: RefCell<HashMap<BlockHash, Block>>,
    /// Answers getblock with "not found" for this hash.
    missing: RefCell<Option<BlockHash>>,
    /// Claims a tip higher than the chain it serves.
    claimed_tip: Cell<Option<u64>>,
    /// Answers getblockhash for this height once with this stale hash.
    stale_once: Cell<Option<(u64, BlockHash)>>,
    salt: Cell<u32>,
}

fn unsupported<T>() -> Result<T, NodeError> {
    Err(NodeError::Rpc {
        code: -32601,
        message: "Method not found".into(),
    })
}

impl BitcoinNode for Node {
    fn get_block_count(&self) -> Result<u64, NodeError> {
        if let Some(t) = self.claimed_tip.get() {
            return Ok(t);
        }
        Ok(self.best.borrow().len() as u64 - 1)
    }
    fn get_block_hash(&self, height: u64) -> Result<BlockHash, NodeError> {
        if let Some((_, hash)) = self.stale_once.get().filter(|(h, _)| *h == height) {
            self.stale_once.set(None);
            return Ok(hash);
        }
        usize::try_from(height)
            .ok()
            .and_then(|h| self.best.borrow().get(h).map(Block::block_hash))
            .ok_or(NodeError::Rpc {
                code: -8,
                message: "Block height out of range".into(),
            })
    }
    fn get_block(&self, hash: &BlockHash) -> Result<Block, NodeError> {
        if self.missing.borrow().as_ref() == Some(hash) {
            return Err(NodeError::Rpc {
                code: -5,
                message: "Block not found".into(),
            });
        }
        self.known
            .borrow()
            .get(hash)
            .cloned()
            .ok_or(NodeError::Rpc {
                code: -5,
                message: "Block not found".into(),
            })
    }
    fn get_raw_transaction(&self, _: &Txid) -> Result<Option<TxStatus>, NodeError> {
        unsupported()
    }
    fn send_raw_transaction(&self, _: &Transaction) -> Result<Txid, NodeError> {
        unsupported()
    }
    fn test_mempool_accept(&self, _: &Transaction) -> Result<MempoolAcceptance, NodeError> {
        unsupported()
    }
    fn estimate_smart_fee(&self, _: u16) -> Result<Option<FeeRate>, NodeError> {
        unsupported()
    }
    fn list_unspent(&self, _: &Script) -> Result<Vec<Utxo>, NodeError> {
        unsupported()
    }

    fn get_tx_out(&self, _: &OutPoint, _: bool) -> Result<Option<Utxo>, NodeError> {
        unsupported()
    }
}

impl Node {
    fn new() -> Self {
        let n = Node::default();
        n.mine(vec![]);
        n
    }

    /// Mines a block on the best chain holding `txs` after a coinbase.
    fn mine(&self, txs: Vec<Transaction>) -> BlockHash {
        let salt = self.salt.get() + 1;
        self.salt.set(salt);
        let prev = self
            .best
            .borrow()
            .last()
            .map(Block::block_hash)
            .unwrap_or_else(BlockHash::all_zeros);
        let coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::from_bytes(salt.to_le_bytes().to_vec()),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(50),
                script_pubkey: ScriptBuf::new_op_return([1u8]),
            }],
        };
        let block = Block {
            header: Header {
                version: BlockVersion::TWO,
                prev_blockhash: prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time: salt,
                bits: CompactTarget::from_consensus(0x207fffff),
                nonce: salt,
            },
            txdata: std::iter::once(coinbase).chain(txs).collect(),
        };
        let hash = block.block_hash();
        self.known.borrow_mut().insert(hash, block.clone());
        self.best.borrow_mut().push(block);
        hash
    }

    /// Takes the top `n` blocks off the best chain (they stay known).
    fn invalidate(&self, n: usize) {
        let mut best = self.best.borrow_mut();
        let keep = best.len().saturating_sub(n).max(1);
        best.truncate(keep);
    }
}

fn script(tag: u8) -> ScriptBuf {
    // A P2WSH-shaped script, distinct per tag.
    let mut b = vec![0x00, 0x20];
    b.extend([tag; 32]);
    ScriptBuf::from_bytes(b)
}

fn peg() -> ScriptBuf {
    script(0xaa)
}

fn out(to: &Script, sats: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: to.to_owned(),
    }
}

/// A transaction spending `inputs` to `outputs`.
fn tx(inputs: &[OutPoint], outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: inputs
            .iter()
            .map(|o| TxIn {
                previous_output: *o,
                ..TxIn::default()
            })
            .collect(),
        output: outputs,
    }
}

/// A deposit of `sats` to `to` from someone else's coin (`salt` makes it unique).
fn deposit(to: &Script, sats: u64, salt: u8) -> Transaction {
    let from = OutPoint::new(Txid::from_byte_array([salt; 32]), 0);
    tx(&[from], vec![out(to, sats), out(&script(0x01), 1_000)])
}

fn op(t: &Transaction, vout: u32) -> OutPoint {
    OutPoint::new(t.compute_txid(), vout)
}

fn open(dir: &tempfile::TempDir) -> CoinRecord {
    CoinRecord::open(&dir.path().join("coins.sqlite"), 1).unwrap()
}

fn synced(dir: &tempfile::TempDir, node: &Node) -> CoinRecord {
    let mut r = open(dir);
    r.watch(&peg(), 1).unwrap();
    let rep = r.sync(node).unwrap();
    assert!(rep.caught_up);
    r
}

/// (outpoint, sats, confirmations) at `s`.
fn coins(r: &CoinRecord, s: &Script, include: Include) -> Vec<(OutPoint, u64, u32)> {
    let mut v: Vec<_> = r
        .unspent(s, include)
        .unwrap()
        .into_iter()
        .map(|u| {
            assert_eq!(u.txout.script_pubkey, *s);
            (u.outpoint, u.txout.value.to_sat(), u.confirmations)
        })
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(OutPoint, u64, u32)>) -> Vec<(OutPoint, u64, u32)> {
    v.sort();
    v
}

#[test]
fn coins_appear_and_spends_remove_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d1 = deposit(&peg(), 10_000, 1);
    let d2 = deposit(&peg(), 20_000, 2);
    node.mine(vec![d1.clone(), d2.clone()]);
    let mut r = open(&dir);
    assert!(r.watch(&peg(), 1).unwrap());
    assert!(
        !r.watch(&peg(), 1).unwrap(),
        "watching again changes nothing"
    );
    let rep = r.sync(&node).unwrap();
    assert_eq!(
        (rep.blocks_applied, rep.coins_added, rep.tip),
        (1, 2, Some(1))
    );
    assert!(rep.caught_up);
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        sorted(vec![(op(&d1, 0), 10_000, 1), (op(&d2, 0), 20_000, 1)])
    );
    assert!(
        coins(&r, &script(0x01), Include::Confirmed).is_empty(),
        "unwatched"
    );

    node.mine(vec![]);
    node.mine(vec![tx(&[op(&d1, 0)], vec![out(&script(0x02), 9_000)])]);
    let rep = r.sync(&node).unwrap();
    assert_eq!(
        (rep.blocks_applied, rep.coins_spent, rep.coins_added),
        (2, 1, 0)
    );
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d2, 0), 20_000, 3)]
    );
    assert_eq!(r.synced_tip().unwrap().map(|t| t.0), Some(3));
    assert_eq!(
        r.synced_tip().unwrap().map(|t| t.1),
        node.get_block_hash(3).ok()
    );
}

#[test]
fn a_two_block_reorg_moves_a_deposit_and_a_shorter_chain_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d = deposit(&peg(), 10_000, 1);
    node.mine(vec![]);
    node.mine(vec![d.clone()]);
    node.mine(vec![]);
    let mut r = synced(&dir, &node);
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d, 0), 10_000, 2)]
    );

    // Blocks 2 and 3 replaced by three others; the deposit now at 3.
    node.invalidate(2);
    node.mine(vec![]);
    node.mine(vec![d.clone()]);
    node.mine(vec![]);
    let rep = r.sync(&node).unwrap();
    assert_eq!(rep.blocks_rolled_back, 2);
    assert_eq!(rep.blocks_applied, 3);
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d, 0), 10_000, 2)],
        "at height 3 of tip 4"
    );

    // The node now answers a lower tip without the deposit.
    node.invalidate(2);
    let rep = r.sync(&node).unwrap();
    assert_eq!((rep.blocks_rolled_back, rep.tip), (2, Some(2)));
    assert!(coins(&r, &peg(), Include::Confirmed).is_empty());
    assert_eq!(
        r.synced_tip().unwrap().map(|t| t.1),
        node.get_block_hash(2).ok()
    );
}

#[test]
fn a_replaced_tip_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    node.mine(vec![]);
    let mut r = synced(&dir, &node);
    let d = deposit(&peg(), 5_000, 3);
    node.invalidate(1);
    node.mine(vec![d.clone()]);
    node.mine(vec![]);
    let rep = r.sync(&node).unwrap();
    assert_eq!((rep.blocks_rolled_back, rep.blocks_applied), (1, 2));
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d, 0), 5_000, 2)]
    );
}

#[test]
fn a_reorg_between_the_tip_check_and_the_next_block_is_caught_by_its_prev_hash() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let a1 = node.mine(vec![deposit(&peg(), 1_000, 1)]);
    let mut r = synced(&dir, &node);
    let d = deposit(&peg(), 5_000, 3);
    node.invalidate(1);
    node.mine(vec![d.clone()]);
    node.mine(vec![]);
    // Our tip check still sees the old block 1; block 2 does not connect.
    node.stale_once.set(Some((1, a1)));
    let rep = r.sync(&node).unwrap();
    assert_eq!((rep.blocks_rolled_back, rep.blocks_applied), (1, 2));
    assert!(node.stale_once.get().is_none(), "the stale answer was used");
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d, 0), 5_000, 2)]
    );
}

#[test]
fn our_spend_reserves_its_inputs_and_its_change_is_offered_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d1 = deposit(&peg(), 10_000, 1);
    let d2 = deposit(&peg(), 20_000, 2);
    node.mine(vec![d1.clone(), d2.clone()]);
    let mut r = synced(&dir, &node);
    // A payout from d1 with change back to the peg wallet.
    let s = tx(
        &[op(&d1, 0)],
        vec![out(&script(0x03), 4_000), out(&peg(), 5_000)],
    );
    assert_eq!(r.record_own_spend(&s).unwrap(), vec![]);
    assert_eq!(r.record_own_spend(&s).unwrap(), vec![], "idempotent");
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d2, 0), 20_000, 1)],
        "d1 reserved, change unconfirmed"
    );
    assert_eq!(
        coins(&r, &peg(), Include::OwnUnconfirmed),
        sorted(vec![(op(&d2, 0), 20_000, 1), (op(&s, 1), 5_000, 0)])
    );
    // A second payout spending the change, then the first is refused for
    // good: both are forgotten, d1 is offered again.
    let s2 = tx(&[op(&s, 1)], vec![out(&script(0x04), 4_000)]);
    r.record_own_spend(&s2).unwrap();
    assert_eq!(r.pending_own_spends().unwrap(), vec![s.clone(), s2.clone()]);
    let mut gone = r.forget_own_spend(&s.compute_txid()).unwrap();
    gone.sort();
    let mut want = vec![s.compute_txid(), s2.compute_txid()];
    want.sort();
    assert_eq!(gone, want);
    assert!(r.pending_own_spends().unwrap().is_empty());
    assert_eq!(
        coins(&r, &peg(), Include::OwnUnconfirmed),
        sorted(vec![(op(&d1, 0), 10_000, 1), (op(&d2, 0), 20_000, 1)])
    );

    // Recorded again and mined: confirmed, change confirmed.
    r.record_own_spend(&s).unwrap();
    node.mine(vec![s.clone()]);
    let rep = r.sync(&node).unwrap();
    assert_eq!(rep.coins_spent, 1);
    assert_eq!(rep.coins_added, 0, "the change was known");
    assert!(r.pending_own_spends().unwrap().is_empty());
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        sorted(vec![(op(&d2, 0), 20_000, 2), (op(&s, 1), 5_000, 1)])
    );
    assert!(matches!(
        r.forget_own_spend(&s.compute_txid()),
        Err(Error::OwnSpendConfirmed(_))
    ));
    // Spending d1 again is refused: a block spent it.
    let again = tx(&[op(&d1, 0)], vec![out(&script(0x05), 9_000)]);
    assert!(matches!(
        r.record_own_spend(&again),
        Err(Error::AlreadySpent { by, .. }) if by == s.compute_txid()
    ));
    assert_eq!(r.pending_own_spends().unwrap(), vec![], "nothing recorded");
}

#[test]
fn a_reorg_that_drops_our_spend_keeps_it_reserved_until_a_conflict_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d = deposit(&peg(), 10_000, 1);
    node.mine(vec![d.clone()]);
    let mut r = synced(&dir, &node);
    let s = tx(
        &[op(&d, 0)],
        vec![out(&script(0x03), 4_000), out(&peg(), 5_000)],
    );
    r.record_own_spend(&s).unwrap();
    node.mine(vec![s.clone()]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&s, 1), 5_000, 1)]
    );

    // The block holding our spend is replaced by two without it.
    node.invalidate(1);
    node.mine(vec![]);
    node.mine(vec![]);
    let rep = r.sync(&node).unwrap();
    assert_eq!(rep.blocks_rolled_back, 1);
    assert!(
        coins(&r, &peg(), Include::Confirmed).is_empty(),
        "d stays reserved; the change is unconfirmed again"
    );
    assert_eq!(
        coins(&r, &peg(), Include::OwnUnconfirmed),
        vec![(op(&s, 1), 5_000, 0)]
    );
    assert_eq!(
        r.pending_own_spends().unwrap(),
        vec![s.clone()],
        "to rebroadcast"
    );

    // Someone else's spend of d confirms instead: ours is dropped.
    let other = tx(&[op(&d, 0)], vec![out(&script(0x06), 9_000)]);
    node.mine(vec![other]);
    let rep = r.sync(&node).unwrap();
    assert_eq!(rep.own_spends_dropped, vec![s.compute_txid()]);
    assert!(coins(&r, &peg(), Include::OwnUnconfirmed).is_empty());
    assert!(r.pending_own_spends().unwrap().is_empty());

    // And if that block goes too, d is unspent again (nothing of ours holds it).
    node.invalidate(1);
    node.mine(vec![]);
    node.mine(vec![]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&d, 0), 10_000, 5)]
    );
}

#[test]
fn a_spend_recorded_before_its_coin_is_mined_holds_it() {
    // A reorg removes a deposit our pending sweep spends; the deposit is
    // mined again at another height: it comes back reserved.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d = deposit(&peg(), 10_000, 1);
    node.mine(vec![d.clone()]);
    let mut r = synced(&dir, &node);
    let sweep = tx(&[op(&d, 0)], vec![out(&peg(), 9_000)]);
    r.record_own_spend(&sweep).unwrap();
    node.invalidate(1);
    node.mine(vec![]);
    node.mine(vec![d.clone()]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::OwnUnconfirmed),
        vec![(op(&sweep, 0), 9_000, 0)],
        "d is reserved by the sweep"
    );
    node.mine(vec![sweep.clone()]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&sweep, 0), 9_000, 1)]
    );
}

#[test]
fn the_record_survives_a_reopen_mid_sync() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let mut deposits = Vec::new();
    for i in 0..20u8 {
        let d = deposit(&peg(), 1_000 + u64::from(i), i);
        deposits.push(d.clone());
        node.mine(vec![d]);
    }
    // Spend a few.
    node.mine(vec![tx(
        &[op(&deposits[0], 0), op(&deposits[5], 0)],
        vec![out(&script(0x09), 1_500)],
    )]);
    let mut r = open(&dir);
    r.watch(&peg(), 1).unwrap();
    let rep = r.sync_at_most(&node, 7).unwrap();
    assert_eq!(
        (rep.blocks_applied, rep.caught_up, rep.tip),
        (7, false, Some(7))
    );
    let own = tx(&[op(&deposits[1], 0)], vec![out(&peg(), 900)]);
    r.record_own_spend(&own).unwrap();
    drop(r);

    let mut r = open(&dir);
    assert_eq!(r.synced_tip().unwrap().map(|t| t.0), Some(7));
    let rep = r.sync(&node).unwrap();
    assert_eq!((rep.blocks_applied, rep.caught_up), (14, true));
    assert_eq!(r.pending_own_spends().unwrap(), vec![own.clone()]);

    // A record synced in one go agrees (without the own spend).
    let other = tempfile::tempdir().unwrap();
    let mut fresh = synced(&other, &node);
    fresh.record_own_spend(&own).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::OwnUnconfirmed),
        coins(&fresh, &peg(), Include::OwnUnconfirmed)
    );
    assert_eq!(coins(&r, &peg(), Include::Confirmed).len(), 17);

    // Another first height for the same file is refused.
    drop(r);
    assert!(matches!(
        CoinRecord::open(&dir.path().join("coins.sqlite"), 2),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_script_watched_late_is_rescanned_from_its_height() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let old = script(0xbb);
    let early = deposit(&old, 1_111, 1); // height 1: before old's from-height
    node.mine(vec![early]);
    let d = deposit(&old, 2_222, 2); // height 2
    node.mine(vec![d.clone()]);
    let spent = deposit(&old, 3_333, 3); // height 3, spent at 4
    node.mine(vec![spent.clone()]);
    node.mine(vec![tx(&[op(&spent, 0)], vec![out(&script(0x07), 3_000)])]);
    let p = deposit(&peg(), 4_444, 4);
    node.mine(vec![p.clone()]); // height 5
    let mut r = synced(&dir, &node);
    assert!(coins(&r, &old, Include::Confirmed).is_empty());
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(op(&p, 0), 4_444, 1)]
    );

    assert!(r.watch(&old, 2).unwrap());
    // Bounded: two blocks of rescan per call.
    let rep = r.sync_at_most(&node, 2).unwrap();
    assert_eq!((rep.blocks_rescanned, rep.blocks_applied), (2, 0));
    assert!(!rep.caught_up);
    let d_later = deposit(&old, 5_555, 5);
    node.mine(vec![d_later.clone()]); // height 6
    let rep = r.sync(&node).unwrap();
    assert_eq!((rep.blocks_rescanned, rep.blocks_applied), (2, 1));
    assert_eq!(
        coins(&r, &old, Include::Confirmed),
        sorted(vec![(op(&d, 0), 2_222, 5), (op(&d_later, 0), 5_555, 1)]),
        "from height 2 on, the spent one gone"
    );
    assert_eq!(coins(&r, &peg(), Include::Confirmed).len(), 1);
    // Lowering its height rescans again.
    assert!(r.watch(&old, 1).unwrap());
    r.sync(&node).unwrap();
    assert_eq!(coins(&r, &old, Include::Confirmed).len(), 3);
    // A height in the future waits for it.
    let future = script(0xcc);
    r.watch(&future, 8).unwrap();
    node.mine(vec![deposit(&future, 6_000, 7)]); // 7: too early
    let at8 = deposit(&future, 7_000, 8);
    node.mine(vec![at8.clone()]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &future, Include::Confirmed),
        vec![(op(&at8, 0), 7_000, 1)]
    );
    assert!(matches!(
        r.watch(&script(0xdd), 0),
        Err(Error::BelowFirstHeight { .. })
    ));
    assert!(matches!(
        r.watch(&ScriptBuf::new_op_return([0u8]), 1),
        Err(Error::Unspendable)
    ));
}

#[test]
fn node_failures_are_errors_and_leave_the_record_whole() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d = deposit(&peg(), 10_000, 1);
    node.mine(vec![d.clone()]);
    let mut r = synced(&dir, &node);
    let h2 = node.mine(vec![deposit(&peg(), 1, 2)]);
    node.mine(vec![]);
    *node.missing.borrow_mut() = Some(h2);
    let e = r.sync(&node).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("Block not found"), "{e}");
    assert_eq!(r.synced_tip().unwrap().map(|t| t.0), Some(1));
    *node.missing.borrow_mut() = None;

    // A tip claimed near u64::MAX that the node cannot serve.
    node.claimed_tip.set(Some(u64::MAX));
    let e = r.sync(&node).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        r.synced_tip().unwrap().map(|t| t.0),
        Some(3),
        "what it served"
    );
    node.claimed_tip.set(None);
    assert!(r.sync(&node).unwrap().caught_up);
    assert_eq!(coins(&r, &peg(), Include::Confirmed).len(), 2);
    // Heights SQLite cannot hold are refused, not wrapped.
    assert!(r.watch(&script(0xee), u64::MAX).is_err());
}

#[test]
fn a_block_that_is_not_the_one_asked_for_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let mut r = synced(&dir, &node);
    let real = node.mine(vec![]);
    let fake = node.best.borrow()[0].clone();
    node.known.borrow_mut().insert(real, fake);
    assert!(matches!(r.sync(&node), Err(Error::BadNodeData(_))));
    assert_eq!(r.synced_tip().unwrap(), None, "nothing applied");
}

#[test]
fn repair_from_scan_makes_the_record_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d1 = deposit(&peg(), 10_000, 1);
    let d2 = deposit(&peg(), 20_000, 2);
    node.mine(vec![d1.clone(), d2.clone()]);
    node.mine(vec![]);
    let mut r = synced(&dir, &node);
    // The node says: d1 gone, d2 there, and a coin we never saw (2 confs).
    let unseen = OutPoint::new(Txid::from_byte_array([7; 32]), 3);
    let utxo = |o: OutPoint, sats: u64, confirmations: u32| Utxo {
        outpoint: o,
        txout: out(&peg(), sats),
        confirmations,
    };
    let scan = vec![utxo(op(&d2, 0), 20_000, 2), utxo(unseen, 777, 2)];
    let rep = r.repair_from_scan(&peg(), &scan).unwrap();
    assert_eq!(
        rep,
        RepairReport {
            added: 1,
            restored: 0,
            removed: 1
        }
    );
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        sorted(vec![(op(&d2, 0), 20_000, 2), (unseen, 777, 2)])
    );
    assert_eq!(
        r.repair_from_scan(&peg(), &scan).unwrap(),
        RepairReport::default(),
        "a second repair changes nothing"
    );
    assert!(matches!(
        r.repair_from_scan(&script(0x01), &[]),
        Err(Error::NotWatched(_))
    ));
    assert!(matches!(
        r.repair_from_scan(&peg(), &[utxo(unseen, 777, 9)]),
        Err(Error::BadNodeData(_))
    ));
    assert!(matches!(
        r.repair_from_scan(
            &peg(),
            &[Utxo {
                txout: out(&script(0x02), 1),
                ..utxo(unseen, 1, 1)
            }]
        ),
        Err(Error::BadNodeData(_))
    ));

    // The record has d2 spent in a block; the node says it is unspent.
    node.mine(vec![tx(&[op(&d2, 0)], vec![out(&script(0x02), 19_000)])]);
    r.sync(&node).unwrap();
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        vec![(unseen, 777, 3)]
    );
    let scan = vec![utxo(op(&d2, 0), 20_000, 3), utxo(unseen, 777, 3)];
    let rep = r.repair_from_scan(&peg(), &scan).unwrap();
    assert_eq!((rep.added, rep.restored, rep.removed), (0, 1, 0));
    assert_eq!(
        coins(&r, &peg(), Include::Confirmed),
        sorted(vec![(op(&d2, 0), 20_000, 3), (unseen, 777, 3)])
    );
}

#[test]
fn confirmed_coins_lists_spent_and_unspent_but_not_own_change() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let d1 = deposit(&peg(), 10_000, 1);
    let d2 = deposit(&peg(), 20_000, 2);
    node.mine(vec![d1.clone()]);
    node.mine(vec![d2.clone()]);
    let spend = tx(&[op(&d1, 0)], vec![out(&script(0x02), 9_000)]);
    node.mine(vec![spend]);
    let mut r = synced(&dir, &node);
    let own = tx(&[op(&d2, 0)], vec![out(&peg(), 19_000)]);
    r.record_own_spend(&own).unwrap();
    let all = r.confirmed_coins().unwrap();
    let seen: Vec<_> = all
        .iter()
        .map(|c| {
            (
                c.outpoint,
                c.txout.value.to_sat(),
                c.height,
                c.spent_in_block,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (op(&d1, 0), 10_000, 1, true),
            // Reserved by our own pending spend, but no block spent it.
            (op(&d2, 0), 20_000, 2, false),
        ]
    );
    assert!(all.iter().all(|c| c.txout.script_pubkey == peg()));
}
