//! The guard's mock-node fixture, shared by its unit tests
//! (`src/tests/mod.rs`, through `#[path]`, the crate naming itself
//! `signer_guard` in test builds) and the red-team tests (`tests/redteam.rs`):
//! a small Bitcoin chain and a Stacks contract served by the mockall
//! doubles, a peg with one peg-in minted and one request burned, and a
//! guard over them. Only the crate's public API is used.
//!
//! Each test binary uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) use std::collections::HashMap;
pub(crate) use std::sync::{Arc, Mutex};

pub(crate) use bitcoin::block::{Header, Version as BlockVersion};
pub(crate) use bitcoin::hashes::Hash as _;
pub(crate) use bitcoin::secp256k1::{Secp256k1, SecretKey};
pub(crate) use bitcoin::{
    absolute, transaction, Address, Block, CompactTarget, CompressedPublicKey, Sequence, TxIn,
    TxMerkleNode, Witness,
};
pub(crate) use bitcoin_node_client::{Error as NodeError, MockBitcoinNode, TxStatus, Utxo};
pub(crate) use frost_net::SignItem;
pub(crate) use peg_ops::wire;
pub(crate) use peg_ops::MessageSignature;
pub(crate) use peg_rules::Allowlist;
pub(crate) use stacks_node_client::{Error as StacksError, MockStacksNode};
pub(crate) use stacks_wire::StacksAddress;

pub(crate) use bitcoin::secp256k1::PublicKey;
pub(crate) use bitcoin::{
    Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid,
};
pub(crate) use frost_net::{SignRequest, ToSign};
pub(crate) use frost_signer::Validator;
pub(crate) use peg_ops::contract;
pub(crate) use peg_rules::{Networks, Policy, SignPayload};
pub(crate) use signer_guard::{
    Confirmations, Guard, PegParams, GET_BURN, GET_MINT, GET_TOTAL_SUPPLY,
};
pub(crate) use stacks_wire::{PrincipalData, StacksNetwork, Value};

pub(crate) const MAGIC: [u8; 2] = *b"id";

pub(crate) fn secret(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i; 32]).unwrap()
}

pub(crate) fn public(i: u8) -> PublicKey {
    secret(i).public_key(&Secp256k1::new())
}

pub(crate) fn peg_address(key: &PublicKey) -> Address {
    peg_rules::peg_wallet_address(key, Network::Regtest)
}

/// The Bitcoin chain the mock bitcoind serves.
#[derive(Default)]
pub(crate) struct Chain {
    pub(crate) blocks: Vec<Block>,
    /// Blocks the node wrongly reports a transaction in (not on its best chain).
    pub(crate) stale: Vec<(u64, Block)>,
}

impl Chain {
    pub(crate) fn tip(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    pub(crate) fn mine(&mut self, txs: Vec<Transaction>) {
        let height = self.blocks.len() as u64;
        let prev = self
            .blocks
            .last()
            .map(Block::block_hash)
            .unwrap_or_else(BlockHash::all_zeros);
        self.blocks.push(block(prev, height, txs));
    }

    pub(crate) fn find(&self, txid: &Txid) -> Option<(u64, &Block, &Transaction)> {
        let best = self.blocks.iter().enumerate().map(|(h, b)| (h as u64, b));
        let stale = self.stale.iter().map(|(h, b)| (*h, b));
        best.chain(stale).find_map(|(h, b)| {
            b.txdata
                .iter()
                .find(|t| t.compute_txid() == *txid)
                .map(|t| (h, b, t))
        })
    }

    pub(crate) fn unspent(&self, o: &OutPoint) -> Option<Utxo> {
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

pub(crate) fn block(prev: BlockHash, height: u64, txs: Vec<Transaction>) -> Block {
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
pub(crate) struct StxState {
    pub(crate) key: Option<PublicKey>,
    pub(crate) burns: HashMap<String, (u128, PrincipalData)>,
    pub(crate) mints: HashMap<String, (u128, PrincipalData)>,
    pub(crate) supply: u128,
}

/// The Stacks chain the mock stacks-node serves: block `i` has id `[i+1; 32]`.
#[derive(Default)]
pub(crate) struct Stx {
    pub(crate) blocks: Vec<StxState>,
}

impl Stx {
    pub(crate) fn push(&mut self, f: impl FnOnce(&mut StxState)) {
        let mut s = self.blocks.last().cloned().unwrap_or_default();
        f(&mut s);
        self.blocks.push(s);
    }
}

pub(crate) fn entry(e: &(u128, PrincipalData)) -> Value {
    Value::some(
        Value::tuple([
            ("amount", Value::UInt(e.0)),
            ("principal", Value::Principal(e.1.clone())),
        ])
        .unwrap(),
    )
}

/// Bitcoin node calls per method, counted by [`bitcoin_mock_counting`].
pub(crate) type Calls = Arc<Mutex<HashMap<&'static str, usize>>>;

fn count(calls: &Calls, what: &'static str) {
    *calls.lock().unwrap().entry(what).or_default() += 1;
}

pub(crate) fn bitcoin_mock(chain: Arc<Mutex<Chain>>) -> MockBitcoinNode {
    bitcoin_mock_counting(chain, Calls::default())
}

/// [`bitcoin_mock`], counting each call in `calls`.
pub(crate) fn bitcoin_mock_counting(chain: Arc<Mutex<Chain>>, calls: Calls) -> MockBitcoinNode {
    let mut m = MockBitcoinNode::new();
    let c = chain.clone();
    let n = calls.clone();
    m.expect_get_block_count().returning(move || {
        count(&n, "getblockcount");
        Ok(c.lock().unwrap().tip())
    });
    let c = chain.clone();
    let n = calls.clone();
    m.expect_get_block_hash().returning(move |h| {
        count(&n, "getblockhash");
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
    let n = calls.clone();
    m.expect_get_best_block_hash().returning(move || {
        count(&n, "getbestblockhash");
        let c = c.lock().unwrap();
        Ok(c.blocks
            .last()
            .map(Block::block_hash)
            .unwrap_or_else(BlockHash::all_zeros))
    });
    let c = chain.clone();
    let n = calls.clone();
    m.expect_get_block().returning(move |hash| {
        count(&n, "getblock");
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
    let n = calls.clone();
    m.expect_get_raw_transaction().returning(move |txid| {
        count(&n, "getrawtransaction");
        let c = c.lock().unwrap();
        Ok(c.find(txid).map(|(h, b, t)| TxStatus {
            tx: t.clone(),
            confirmations: (c.tip() + 1).saturating_sub(h) as u32,
            block_hash: Some(b.block_hash()),
        }))
    });
    let c = chain;
    m.expect_get_tx_out().returning(move |o, _| {
        count(&calls, "gettxout");
        Ok(c.lock().unwrap().unspent(o))
    });
    m
}

pub(crate) fn stacks_mock(stx: Arc<Mutex<Stx>>) -> MockStacksNode {
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
pub(crate) struct Fx {
    pub(crate) chain: Arc<Mutex<Chain>>,
    pub(crate) stx: Arc<Mutex<Stx>>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: PublicKey,
    pub(crate) keys: Vec<PublicKey>,
    pub(crate) alice: PrincipalData,
    pub(crate) recipient: Address,
    pub(crate) peg_in: Transaction,
    pub(crate) request: Transaction,
    pub(crate) policy: Policy,
    pub(crate) confirmations: Confirmations,
    pub(crate) outside: u8,
}

pub(crate) const PEG_IN: u64 = 100_000;
pub(crate) const AMOUNT: u64 = 30_000;
pub(crate) const FEE_OUTPUT: u64 = 5_000;

impl Fx {
    pub(crate) fn new() -> Fx {
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

    pub(crate) fn mine(&self, txs: Vec<Transaction>) {
        self.chain.lock().unwrap().mine(txs);
    }

    pub(crate) fn stacks(&self, f: impl FnOnce(&mut StxState)) {
        self.stx.lock().unwrap().push(f);
    }

    /// An input from outside the peg wallet, unique per call.
    pub(crate) fn outside(&mut self) -> TxIn {
        self.outside += 1;
        TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([self.outside; 32]), 0),
            ..TxIn::default()
        }
    }

    pub(crate) fn peg_in_tx(
        &mut self,
        key: &PublicKey,
        sats: u64,
        to: &PrincipalData,
    ) -> Transaction {
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
    pub(crate) fn request_tx(&mut self, signer: u8, amount: u64, fee: u64) -> Transaction {
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

    pub(crate) fn guard(&self) -> Guard<MockBitcoinNode, MockStacksNode> {
        self.guard_counting(Calls::default())
    }

    /// [`Fx::guard`], its Bitcoin node's calls counted in `calls`.
    pub(crate) fn guard_counting(&self, calls: Calls) -> Guard<MockBitcoinNode, MockStacksNode> {
        self.guard_in(self.dir.path(), calls)
    }

    /// A guard on the fixture's nodes with its files in `dir` (a copy of
    /// the fixture's, for a guard whose writes must not reach the others').
    #[allow(dead_code)]
    pub(crate) fn guard_in(
        &self,
        dir: &std::path::Path,
        calls: Calls,
    ) -> Guard<MockBitcoinNode, MockStacksNode> {
        Guard::new(
            bitcoin_mock_counting(self.chain.clone(), calls),
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
            dir,
            &self.keys,
        )
        .unwrap()
    }

    /// The fulfilment of `request` spending its fee output and `coins`,
    /// paying `fee`, change to the key.
    pub(crate) fn fulfilment(
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

    pub(crate) fn amount_of(&self, request: &Transaction) -> u64 {
        let (_, _, data) = wire::parse_op_return(&request.output[0].script_pubkey).unwrap();
        u64::from_be_bytes(data[..8].try_into().unwrap())
    }

    pub(crate) fn peg_in_coin(&self) -> (OutPoint, TxOut) {
        (
            OutPoint::new(self.peg_in.compute_txid(), 1),
            self.peg_in.output[1].clone(),
        )
    }

    /// The standard payout of the fixture's request.
    pub(crate) fn payout(&self) -> (Transaction, Vec<TxOut>) {
        self.fulfilment(&self.request, &[self.peg_in_coin()], 1_000)
    }
}

pub(crate) fn sign_request(id: u64, payload: &SignPayload, key: &PublicKey) -> SignRequest {
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

pub(crate) fn fulfilment_request(
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
pub(crate) fn refused(r: Result<(), String>) -> String {
    let e = r.expect_err("expected a refusal");
    e.split(':').next().unwrap().to_owned()
}
