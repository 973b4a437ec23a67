//! The guard against mock nodes that serve a small chain and a contract:
//! the happy paths, and every refusal rule (each test fails if its rule is
//! removed: it checks that the same request passes once the fault is gone,
//! or names the rule).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{
    absolute, transaction, Address, Block, CompactTarget, CompressedPublicKey, Sequence, TxIn,
    TxMerkleNode, Witness,
};
use bitcoin_node_client::{Error as NodeError, MockBitcoinNode, TxStatus, Utxo};
use frost_net::SignItem;
use peg_ops::wire;
use peg_ops::MessageSignature;
use peg_rules::Allowlist;
use stacks_node_client::{Error as StacksError, MockStacksNode};
use stacks_wire::StacksAddress;

use super::*;

const MAGIC: [u8; 2] = *b"id";

fn secret(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i; 32]).unwrap()
}

fn public(i: u8) -> PublicKey {
    secret(i).public_key(&Secp256k1::new())
}

fn peg_address(key: &PublicKey) -> Address {
    peg_rules::peg_wallet_address(key, Network::Regtest)
}

/// The Bitcoin chain the mock bitcoind serves.
#[derive(Default)]
struct Chain {
    blocks: Vec<Block>,
    /// Blocks the node wrongly reports a transaction in (not on its best chain).
    stale: Vec<(u64, Block)>,
}

impl Chain {
    fn tip(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    fn mine(&mut self, txs: Vec<Transaction>) {
        let height = self.blocks.len() as u64;
        let prev = self
            .blocks
            .last()
            .map(Block::block_hash)
            .unwrap_or_else(BlockHash::all_zeros);
        self.blocks.push(block(prev, height, txs));
    }

    fn find(&self, txid: &Txid) -> Option<(u64, &Block, &Transaction)> {
        let best = self.blocks.iter().enumerate().map(|(h, b)| (h as u64, b));
        let stale = self.stale.iter().map(|(h, b)| (*h, b));
        best.chain(stale).find_map(|(h, b)| {
            b.txdata
                .iter()
                .find(|t| t.compute_txid() == *txid)
                .map(|t| (h, b, t))
        })
    }

    fn unspent(&self, o: &OutPoint) -> Option<Utxo> {
        let spent = self
            .blocks
            .iter()
            .flat_map(|b| &b.txdata)
            .any(|t| t.input.iter().any(|i| i.previous_output == *o));
        if spent {
            return None;
        }
        self.blocks.iter().enumerate().find_map(|(h, b)| {
            let t = b.txdata.iter().find(|t| t.compute_txid() == o.txid)?;
            let out = t.output.get(o.vout as usize)?;
            Some(Utxo {
                outpoint: *o,
                txout: out.clone(),
                confirmations: (self.tip() + 1 - h as u64) as u32,
            })
        })
    }
}

fn block(prev: BlockHash, height: u64, txs: Vec<Transaction>) -> Block {
    let coinbase = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(height.to_le_bytes().to_vec()),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(50),
            script_pubkey: ScriptBuf::new_op_return([1u8]),
        }],
    };
    Block {
        header: Header {
            version: BlockVersion::TWO,
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time: height as u32,
            bits: CompactTarget::from_consensus(0x207fffff),
            nonce: height as u32,
        },
        txdata: std::iter::once(coinbase).chain(txs).collect(),
    }
}

/// The contract's state in one Stacks block.
#[derive(Clone, Default)]
struct StxState {
    key: Option<PublicKey>,
    burns: HashMap<String, (u128, PrincipalData)>,
    mints: HashMap<String, (u128, PrincipalData)>,
    supply: u128,
}

/// The Stacks chain the mock stacks-node serves: block `i` has id `[i+1; 32]`.
#[derive(Default)]
struct Stx {
    blocks: Vec<StxState>,
}

impl Stx {
    fn push(&mut self, f: impl FnOnce(&mut StxState)) {
        let mut s = self.blocks.last().cloned().unwrap_or_default();
        f(&mut s);
        self.blocks.push(s);
    }
}

fn entry(e: &(u128, PrincipalData)) -> Value {
    Value::some(
        Value::tuple([
            ("amount", Value::UInt(e.0)),
            ("principal", Value::Principal(e.1.clone())),
        ])
        .unwrap(),
    )
}

fn bitcoin_mock(chain: Arc<Mutex<Chain>>) -> MockBitcoinNode {
    let mut m = MockBitcoinNode::new();
    let c = chain.clone();
    m.expect_get_block_count()
        .returning(move || Ok(c.lock().unwrap().tip()));
    let c = chain.clone();
    m.expect_get_block_hash().returning(move |h| {
        c.lock()
            .unwrap()
            .blocks
            .get(h as usize)
            .map(Block::block_hash)
            .ok_or(NodeError::Rpc {
                code: -8,
                message: "Block height out of range".into(),
            })
    });
    let c = chain.clone();
    m.expect_get_block().returning(move |hash| {
        let c = c.lock().unwrap();
        c.blocks
            .iter()
            .chain(c.stale.iter().map(|(_, b)| b))
            .find(|b| b.block_hash() == *hash)
            .cloned()
            .ok_or(NodeError::Rpc {
                code: -5,
                message: "Block not found".into(),
            })
    });
    let c = chain.clone();
    m.expect_get_raw_transaction().returning(move |txid| {
        let c = c.lock().unwrap();
        Ok(c.find(txid).map(|(h, b, t)| TxStatus {
            tx: t.clone(),
            confirmations: (c.tip() + 1).saturating_sub(h) as u32,
            block_hash: Some(b.block_hash()),
        }))
    });
    let c = chain;
    m.expect_get_tx_out()
        .returning(move |o, _| Ok(c.lock().unwrap().unspent(o)));
    m
}

fn stacks_mock(stx: Arc<Mutex<Stx>>) -> MockStacksNode {
    let mut m = MockStacksNode::new();
    let s = stx.clone();
    m.expect_block_at_depth().returning(move |d| {
        let n = s.lock().unwrap().blocks.len();
        Ok(n.checked_sub(d as usize + 1).map(|i| [i as u8 + 1; 32]))
    });
    let s = stx.clone();
    m.expect_call_read().returning(move |_, function, args, _| {
        let stx = s.lock().unwrap();
        let Some(state) = stx.blocks.last() else {
            return Err(StacksError::UnknownTip("no blocks".into()));
        };
        let arg = || match args.first() {
            Some(Value::StringAscii(t)) => t.clone(),
            _ => panic!("no txid argument"),
        };
        Ok(match function {
            GET_MINT => state.mints.get(&arg()).map_or(Value::none(), entry),
            GET_BURN => state.burns.get(&arg()).map_or(Value::none(), entry),
            other => panic!("unexpected read at the tip {other}"),
        })
    });
    let s = stx;
    m.expect_call_read_at()
        .returning(move |_, function, args, _, tip| {
            let stx = s.lock().unwrap();
            let i = tip[0] as usize;
            let Some(state) = i.checked_sub(1).and_then(|i| stx.blocks.get(i)) else {
                return Err(StacksError::UnknownTip(hex::encode(tip)));
            };
            let arg = || match args.first() {
                Some(Value::StringAscii(t)) => t.clone(),
                _ => panic!("no txid argument"),
            };
            Ok(match function {
                contract::GET_BITCOIN_WALLET_PUBLIC_KEY => match state.key {
                    Some(k) => Value::some(Value::Buffer(k.serialize().to_vec())),
                    None => Value::none(),
                },
                GET_BURN => state.burns.get(&arg()).map_or(Value::none(), entry),
                GET_MINT => state.mints.get(&arg()).map_or(Value::none(), entry),
                GET_TOTAL_SUPPLY => Value::Ok(Box::new(Value::UInt(state.supply))),
                other => panic!("unexpected read {other}"),
            })
        });
    m
}

/// A peg with one peg-in minted and one peg-out request burned.
struct Fx {
    chain: Arc<Mutex<Chain>>,
    stx: Arc<Mutex<Stx>>,
    dir: tempfile::TempDir,
    key: PublicKey,
    keys: Vec<PublicKey>,
    alice: PrincipalData,
    recipient: Address,
    peg_in: Transaction,
    request: Transaction,
    policy: Policy,
    confirmations: Confirmations,
    outside: u8,
}

const PEG_IN: u64 = 100_000;
const AMOUNT: u64 = 30_000;
const FEE_OUTPUT: u64 = 5_000;

impl Fx {
    fn new() -> Fx {
        let key = public(7);
        let alice_key = public(11);
        let alice = PrincipalData::Standard(StacksAddress::p2pkh(
            StacksNetwork::Testnet,
            &alice_key,
            true,
        ));
        let recipient = Address::p2wpkh(&CompressedPublicKey(public(12)), Network::Regtest);
        let policy = Policy {
            allowlist: Allowlist::new([alice.clone()], [recipient.script_pubkey()]),
            fee_floor: bitcoin::FeeRate::from_sat_per_vb(1).unwrap(),
            fee_cap: bitcoin::FeeRate::from_sat_per_vb(100).unwrap(),
            subsidy: Amount::ZERO,
            fee_margin_percent: 20,
            max_request: None,
            max_daily_outflow: None,
        };
        let mut fx = Fx {
            chain: Arc::default(),
            stx: Arc::default(),
            dir: tempfile::tempdir().unwrap(),
            key,
            keys: vec![key],
            alice: alice.clone(),
            recipient,
            peg_in: Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![],
                output: vec![],
            },
            request: Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![],
                output: vec![],
            },
            policy,
            confirmations: Confirmations {
                bitcoin: 1,
                stacks: 1,
            },
            outside: 0,
        };
        fx.chain.lock().unwrap().mine(vec![]);
        fx.peg_in = fx.peg_in_tx(&key, PEG_IN, &alice);
        fx.request = fx.request_tx(11, AMOUNT, FEE_OUTPUT);
        let (pi, rq) = (fx.peg_in.clone(), fx.request.clone());
        fx.mine(vec![pi]);
        fx.mine(vec![rq]);
        let peg_in = fx.peg_in.compute_txid().to_string();
        let request = fx.request.compute_txid().to_string();
        let who = alice;
        fx.stacks(|s| {
            s.key = Some(key);
            s.mints.insert(peg_in, (u128::from(PEG_IN), who.clone()));
            s.supply = u128::from(PEG_IN);
        });
        fx.stacks(|s| {
            s.burns.insert(request, (u128::from(AMOUNT), who));
            s.supply -= u128::from(AMOUNT);
        });
        fx
    }

    fn mine(&self, txs: Vec<Transaction>) {
        self.chain.lock().unwrap().mine(txs);
    }

    fn stacks(&self, f: impl FnOnce(&mut StxState)) {
        self.stx.lock().unwrap().push(f);
    }

    /// An input from outside the peg wallet, unique per call.
    fn outside(&mut self) -> TxIn {
        self.outside += 1;
        TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([self.outside; 32]), 0),
            ..TxIn::default()
        }
    }

    fn peg_in_tx(&mut self, key: &PublicKey, sats: u64, to: &PrincipalData) -> Transaction {
        let input = self.outside();
        wire::peg_in_transaction(
            vec![input],
            wire::peg_in_op_return(MAGIC, to, b"").unwrap(),
            &peg_address(key),
            Amount::from_sat(sats),
            None,
        )
    }

    /// A peg-out request signed by the Stacks key `signer`.
    fn request_tx(&mut self, signer: u8, amount: u64, fee: u64) -> Transaction {
        let amount = Amount::from_sat(amount);
        let sig = MessageSignature::sign(
            peg_ops::peg_out_request_sighash(amount, &self.recipient.script_pubkey()),
            &secret(signer),
        );
        let input = self.outside();
        let recipient = self.recipient.clone();
        wire::peg_out_request_transaction(
            vec![input],
            wire::peg_out_request_op_return(MAGIC, amount, &sig, b"").unwrap(),
            &recipient,
            &peg_address(&self.key),
            Amount::from_sat(fee),
            None,
        )
    }

    fn guard(&self) -> Guard<MockBitcoinNode, MockStacksNode> {
        Guard::new(
            bitcoin_mock(self.chain.clone()),
            stacks_mock(self.stx.clone()),
            PegParams {
                policy: self.policy.clone(),
                networks: Networks {
                    bitcoin: Network::Regtest,
                    stacks: StacksNetwork::Testnet,
                },
                magic: MAGIC,
                contract: "ST000000000000000000002AMW42H.sbtc-alpha".parse().unwrap(),
            },
            self.confirmations,
            1,
            self.dir.path(),
            &self.keys,
        )
        .unwrap()
    }

    /// The fulfilment of `request` spending its fee output and `coins`,
    /// paying `fee`, change to the key.
    fn fulfilment(
        &self,
        request: &Transaction,
        coins: &[(OutPoint, TxOut)],
        fee: u64,
    ) -> (Transaction, Vec<TxOut>) {
        let fee_out = OutPoint::new(request.compute_txid(), 2);
        let mut prevouts = vec![request.output[2].clone()];
        let mut input = vec![TxIn {
            previous_output: fee_out,
            ..TxIn::default()
        }];
        for (o, out) in coins {
            input.push(TxIn {
                previous_output: *o,
                ..TxIn::default()
            });
            prevouts.push(out.clone());
        }
        let total: u64 = prevouts.iter().map(|p| p.value.to_sat()).sum();
        let amount_asked = self.amount_of(request);
        let tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input,
            output: vec![
                TxOut {
                    value: Amount::ZERO,
                    script_pubkey: peg_rules::fulfilment_op_return(MAGIC, &[0; 32]),
                },
                TxOut {
                    value: Amount::from_sat(amount_asked),
                    script_pubkey: self.recipient.script_pubkey(),
                },
                TxOut {
                    value: Amount::from_sat(total - amount_asked - fee),
                    script_pubkey: peg_address(&self.key).script_pubkey(),
                },
            ],
        };
        (tx, prevouts)
    }

    fn amount_of(&self, request: &Transaction) -> u64 {
        let (_, _, data) = wire::parse_op_return(&request.output[0].script_pubkey).unwrap();
        u64::from_be_bytes(data[..8].try_into().unwrap())
    }

    fn peg_in_coin(&self) -> (OutPoint, TxOut) {
        (
            OutPoint::new(self.peg_in.compute_txid(), 1),
            self.peg_in.output[1].clone(),
        )
    }

    /// The standard payout of the fixture's request.
    fn payout(&self) -> (Transaction, Vec<TxOut>) {
        self.fulfilment(&self.request, &[self.peg_in_coin()], 1_000)
    }
}

fn sign_request(id: u64, payload: &SignPayload, key: &PublicKey) -> SignRequest {
    let items = payload
        .sighashes()
        .unwrap()
        .into_iter()
        .map(|sighash| SignItem {
            key: *key,
            message: ToSign::Taproot { sighash },
        })
        .collect();
    SignRequest {
        id,
        payload: payload.encode(),
        items,
    }
}

fn fulfilment_request(
    fx: &Fx,
    request: &Transaction,
    tx: Transaction,
    prevouts: Vec<TxOut>,
) -> SignRequest {
    let payload = SignPayload::Fulfilment {
        request: request.compute_txid(),
        tx,
        prevouts,
    };
    sign_request(1, &payload, &fx.key)
}

/// The rule name a refusal starts with.
fn refused(r: Result<(), String>) -> String {
    let e = r.expect_err("expected a refusal");
    e.split(':').next().unwrap().to_owned()
}

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
