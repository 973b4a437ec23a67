//! `run`'s pieces end to end over real HTTP on 127.0.0.1: the relay, three
//! signers, the stacks-node emulator (which decodes, verifies and executes
//! every transaction), the bitcoind emulator (real blocks, every input
//! checked by libbitcoinconsensus), the SQLite queue. Start-up runs DKG and
//! publishes the peg wallet key; peg-ins are minted exactly once, to the
//! right principals, one off the allowlist is rejected; a peg-out is burned,
//! then paid on Bitcoin to the recipient's scriptPubKey, exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, BlockHash, Network, ScriptBuf, Txid};
use coordinator::source::StacksNodeSource;
use coordinator::startup::ensure_wallet_key;
use coordinator::{Allowlist, Components, LoopSettings, StacksCoordinator};
use devnet::{StacksEmulator, StacksState};
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy,
};
use frost_coordinator::{
    RelayCoordinatorOptions, RelayFrostCoordinator, SignerFile, SignerInfo, SignerSet,
};
use frost_signer::{SignerNode, SignerOptions};
use peg_ops::{BurnHeight, PegInOp};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};
use relay::{RelayConfig, RelayServer};
use stacks_node_client::UreqStacksNode;
use stacks_wire::{PrincipalData, StacksAddress, StacksNetwork, StacksPrivateKey, Value};

fn key(tag: u8, i: u32) -> SecretKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).unwrap()
}

fn user(i: u32) -> PrincipalData {
    let k = key(0x11, i).public_key(&Secp256k1::new());
    StacksAddress::p2pkh(StacksNetwork::Testnet, &k, true).into()
}

/// The relay, three signers, the stacks-node emulator (the coordinator
/// deployed the contract and is its coordinator), and a coordinator that ran
/// start-up: DKG, the peg wallet key published and shown by the contract.
/// Stops the signers when dropped.
struct Stack {
    _dir: tempfile::TempDir,
    _relay: RelayServer,
    stop: Arc<AtomicBool>,
    signers: Vec<std::thread::JoinHandle<()>>,
    stacks_em: StacksEmulator,
    stacks: UreqStacksNode,
    contract: stacks_wire::ContractId,
    agg: bitcoin::secp256k1::PublicKey,
    peg: bitcoin::Address,
}

impl Stack {
    fn start() -> (
        Stack,
        ContractCallWallet<UreqStacksNode>,
        RelayFrostCoordinator,
        SqlitePegQueue,
    ) {
        let secp = Secp256k1::new();
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default()).unwrap();
        let coordinator_msg_key = key(0xc0, 0);
        let set = SignerSet {
            threshold: 2,
            dkg_threshold: None,
            signers: (0..3)
                .map(|i| SignerInfo {
                    id: i + 1,
                    public_key: key(0x5e, i).public_key(&secp),
                    key_ids: vec![i + 1],
                    private_key: None,
                })
                .collect(),
        };
        let file = SignerFile {
            relay_url: relay.url(),
            coordinator_public_key: coordinator_msg_key.public_key(&secp),
            state_dir: None,
            set: set.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let signers = (1..=3)
            .map(|id| {
                let mut node = SignerNode::new(SignerOptions {
                    id,
                    file: file.clone(),
                    private_key: key(0x5e, id - 1),
                    state_path: dir.path().join(format!("signer-{id}.json")),
                    poll_wait: Duration::from_millis(300),
                })
                .unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || node.run(&stop))
            })
            .collect();
        let stacks_key = StacksPrivateKey {
            key: key(0xaa, 0),
            compressed: true,
        };
        let me = stacks_key.address(StacksNetwork::Testnet);
        let contract: stacks_wire::ContractId = format!("{me}.sbtc-alpha").parse().unwrap();
        let mut state = StacksState::new(contract.clone());
        state.fund(me, 100_000_000);
        state.model.coordinator = Some((
            me.into(),
            coordinator_msg_key.public_key(&secp).serialize().to_vec(),
        ));
        let stacks_em = StacksEmulator::start("127.0.0.1:0", state).unwrap();
        let stacks = UreqStacksNode::new(&stacks_em.url(), Duration::from_secs(5));
        let wallet = ContractCallWallet::new(
            StacksNetwork::Testnet,
            contract.clone(),
            stacks_key,
            StacksFeePolicy {
                floor: 200,
                cap: 100_000,
            },
            stacks.clone(),
        );
        let mut frost = RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set,
            private_key: coordinator_msg_key,
            relay_url: relay.url(),
            dkg_timeout: Duration::from_secs(15),
            sign_timeout: Duration::from_secs(5),
            state_path: Some(dir.path().join("frost.json")),
        })
        .unwrap();
        let queue = SqlitePegQueue::open(&dir.path().join("queue.sqlite")).unwrap();
        // The emulator mines while start-up waits for the key to show.
        let mining = AtomicBool::new(true);
        let agg = std::thread::scope(|s| {
            s.spawn(|| {
                while mining.load(Ordering::SeqCst) {
                    stacks_em.with(|st| st.mine());
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let k = ensure_wallet_key(
                &stacks,
                &wallet,
                &mut frost,
                &queue,
                &contract,
                Duration::from_secs(10),
                Duration::from_millis(20),
            )
            .unwrap();
            mining.store(false, Ordering::SeqCst);
            k
        });
        let peg = peg_wallet_address(&agg, Network::Regtest);
        let stack = Stack {
            _dir: dir,
            _relay: relay,
            stop,
            signers,
            stacks_em,
            stacks,
            contract,
            agg,
            peg,
        };
        (stack, wallet, frost, queue)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.signers.drain(..) {
            let _ = s.join();
        }
    }
}

/// Signs every input of `tx` spending P2WPKH outputs of `sk`.
fn sign_p2wpkh(tx: &mut bitcoin::Transaction, prevouts: &[bitcoin::TxOut], sk: &SecretKey) {
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    let secp = Secp256k1::new();
    let pk = bitcoin::CompressedPublicKey(sk.public_key(&secp));
    for (i, prev) in prevouts.iter().enumerate() {
        let h = SighashCache::new(&*tx)
            .p2wpkh_signature_hash(i, &prev.script_pubkey, prev.value, EcdsaSighashType::All)
            .unwrap();
        let sig = bitcoin::ecdsa::Signature::sighash_all(secp.sign_ecdsa(
            &bitcoin::secp256k1::Message::from_digest(h.to_byte_array()),
            sk,
        ));
        tx.input[i].witness = bitcoin::Witness::p2wpkh(&sig, &pk.0);
    }
}

#[test]
fn a_peg_in_then_a_peg_out_paid_on_bitcoin_through_real_http() {
    use bitcoin::{OutPoint, TxIn, TxOut};
    use coordinator::BitcoinBlockSource;
    use devnet::{BitcoinEmulator, BitcoinState};
    use peg_ops::wire;

    let secp = Secp256k1::new();
    let (stack, wallet, frost, queue) = Stack::start();
    let (stacks_em, stacks, contract, peg) = (
        &stack.stacks_em,
        stack.stacks.clone(),
        stack.contract.clone(),
        stack.peg.clone(),
    );

    // The user: one key for Bitcoin (P2WPKH) and Stacks (P2PKH), like a wallet would.
    let user_sk = key(0x11, 7);
    let user_pk = bitcoin::CompressedPublicKey(user_sk.public_key(&secp));
    let user_btc = bitcoin::Address::p2wpkh(&user_pk, Network::Regtest);
    let user_stx: PrincipalData =
        StacksAddress::p2pkh(StacksNetwork::Testnet, &user_sk.public_key(&secp), true).into();

    let bitcoind = BitcoinEmulator::start("127.0.0.1:0", BitcoinState::new()).unwrap();
    bitcoind.with(|b| {
        b.mine(&user_btc.script_pubkey());
        for _ in 0..100 {
            b.mine(&ScriptBuf::new_op_return([0u8]));
        }
    });

    // The user pegs in 1 BTC from the matured coinbase.
    let coinbase = bitcoind.with(|b| b.block(1).unwrap().txdata[0].clone());
    let prev = coinbase.output[0].clone();
    let mut peg_in_tx = wire::peg_in_transaction(
        vec![TxIn {
            previous_output: OutPoint::new(coinbase.compute_txid(), 0),
            ..TxIn::default()
        }],
        wire::peg_in_op_return(*b"id", &user_stx, b"").unwrap(),
        &peg,
        Amount::from_sat(100_000_000),
        Some(TxOut {
            value: prev.value - Amount::from_sat(100_000_000 + 5_000),
            script_pubkey: user_btc.script_pubkey(),
        }),
    );
    sign_p2wpkh(&mut peg_in_tx, std::slice::from_ref(&prev), &user_sk);
    bitcoind.with(|b| {
        b.send(peg_in_tx.clone()).unwrap();
        b.mine(&ScriptBuf::new_op_return([0u8]));
    });

    let settings = LoopSettings {
        network: Network::Regtest,
        stacks_network: StacksNetwork::Testnet,
        contract: contract.clone(),
        start_height: BurnHeight(101),
        op_confirmations: 1,
        fulfillment_confirmations: 1,
        poll_interval: Duration::from_millis(20),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        fee_target_blocks: 6,
        max_heights_per_tick: 100,
        allowlist: Allowlist::new([user_stx.clone()], [user_btc.script_pubkey()]),
        stx_low_balance_warning: 1,
    };
    let btc_client = || {
        bitcoin_node_client::UreqBitcoinNode::new(
            &bitcoind.url(),
            bitcoin_node_client::Auth::None,
            Duration::from_secs(5),
        )
    };
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks: stacks.clone(),
            bitcoin: btc_client(),
            stacks_wallet: wallet,
            bitcoin_wallet: PegWallet::new(
                Network::Regtest,
                *b"id",
                BitcoinFeePolicy {
                    floor: bitcoin::FeeRate::from_sat_per_vb(1).unwrap(),
                    cap: bitcoin::FeeRate::from_sat_per_vb(100).unwrap(),
                    subsidy: Amount::ZERO,
                },
            ),
            frost,
            source: BitcoinBlockSource::new(btc_client(), *b"id", Network::Regtest),
        },
        settings,
    );
    let no_stop = AtomicBool::new(false);
    let run_until = |l: &mut StacksCoordinator<_, _, _, _, _, _, _>, txid: Txid| {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            l.tick(&no_stop).unwrap();
            stacks_em.with(|st| st.mine());
            bitcoind.with(|b| {
                b.mine(&ScriptBuf::new_op_return([0u8]));
            });
            let q: &SqlitePegQueue = &l.components().queue;
            if let Some(o) = q.get(&txid).unwrap() {
                if o.state.is_terminal() {
                    return o.state;
                }
            }
            assert!(Instant::now() < deadline, "{txid} did not finish");
        }
    };
    assert_eq!(run_until(&mut l, peg_in_tx.compute_txid()), OpState::Done);
    stacks_em.with(|st| assert_eq!(st.model.balances.get(&user_stx), Some(&100_000_000)));

    // The user asks for 0.4 BTC back, paying the fulfilment fee from the peg-in's change.
    let change = OutPoint::new(peg_in_tx.compute_txid(), 2);
    let change_out = peg_in_tx.output[2].clone();
    let amount = Amount::from_sat(40_000_000);
    let sig = peg_ops::MessageSignature::sign(
        peg_ops::peg_out_request_sighash(amount, &user_btc.script_pubkey()),
        &user_sk,
    );
    let fee_to_peg = Amount::from_sat(20_000);
    let mut request = wire::peg_out_request_transaction(
        vec![TxIn {
            previous_output: change,
            ..TxIn::default()
        }],
        wire::peg_out_request_op_return(*b"id", amount, &sig, b"").unwrap(),
        &user_btc,
        &peg,
        fee_to_peg,
        Some(TxOut {
            value: change_out.value - fee_to_peg - Amount::from_sat(294 + 5_000),
            script_pubkey: user_btc.script_pubkey(),
        }),
    );
    sign_p2wpkh(&mut request, std::slice::from_ref(&change_out), &user_sk);
    bitcoind.with(|b| {
        b.send(request.clone()).unwrap();
        b.mine(&ScriptBuf::new_op_return([0u8]));
    });
    assert_eq!(run_until(&mut l, request.compute_txid()), OpState::Done);

    // Burned, and paid on Bitcoin: exactly the amount, to the user's scriptPubKey, once.
    stacks_em.with(|st| {
        assert_eq!(st.model.balances.get(&user_stx), Some(&60_000_000));
        assert_eq!(st.model.supply, 60_000_000);
    });
    bitcoind.with(|b| {
        let payouts: Vec<_> = (0..=b.height())
            .flat_map(|h| b.block(h).unwrap().txdata.clone())
            .filter(|t| {
                t.input.first().map(|i| i.previous_output)
                    == Some(OutPoint::new(request.compute_txid(), 2))
            })
            .collect();
        assert_eq!(payouts.len(), 1, "one fulfilment on chain");
        let f = &payouts[0];
        assert_eq!(f.output[1].script_pubkey, user_btc.script_pubkey());
        assert_eq!(f.output[1].value, amount);
        assert!(f.output[0].script_pubkey.is_op_return());
        // What is left in the peg wallet backs the remaining sBTC.
        let left: Amount = b
            .unspent(&peg.script_pubkey())
            .iter()
            .map(|(_, o, _)| o.value)
            .sum();
        assert!(left >= Amount::from_sat(60_000_000), "{left}");
    });
}

#[test]
fn peg_ins_are_minted_once_through_real_http() {
    let (stack, wallet, frost, queue) = Stack::start();
    let (emulator, stacks, contract, agg, peg) = (
        &stack.stacks_em,
        stack.stacks.clone(),
        stack.contract.clone(),
        stack.agg,
        stack.peg.clone(),
    );

    // Three peg-ins at burn height 5: two allowlisted users, one stranger.
    let peg_in = |n: u8, who: PrincipalData, sats: u64| PegInOp {
        recipient: who,
        peg_wallet_address: peg.clone().into(),
        amount: Amount::from_sat(sats),
        memo: vec![],
        txid: Txid::from_byte_array([n; 32]),
        vtxindex: u32::from(n),
        block_height: BurnHeight(5),
        burn_header_hash: BlockHash::from_byte_array([5; 32]),
    };
    let ins = vec![
        peg_in(1, user(1), 150_000),
        peg_in(2, user(2), 250_000),
        peg_in(3, user(3), 99_000),
    ];
    emulator.with(|st| {
        st.burn_ops.insert(5, (ins.clone(), vec![]));
        st.burn_height = 6;
    });

    let settings = LoopSettings {
        network: Network::Regtest,
        stacks_network: StacksNetwork::Testnet,
        contract: contract.clone(),
        start_height: BurnHeight(4),
        op_confirmations: 1,
        fulfillment_confirmations: 1,
        poll_interval: Duration::from_millis(20),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        fee_target_blocks: 6,
        max_heights_per_tick: 100,
        allowlist: Allowlist::new([user(1), user(2)], []),
        stx_low_balance_warning: 1,
    };
    let bitcoin = bitcoin_node_client::UreqBitcoinNode::new(
        "http://127.0.0.1:9",
        bitcoin_node_client::Auth::None,
        Duration::from_millis(200),
    );
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks: stacks.clone(),
            bitcoin,
            stacks_wallet: wallet,
            bitcoin_wallet: PegWallet::new(
                Network::Regtest,
                *b"id",
                BitcoinFeePolicy {
                    floor: bitcoin::FeeRate::from_sat_per_vb(1).unwrap(),
                    cap: bitcoin::FeeRate::from_sat_per_vb(100).unwrap(),
                    subsidy: Amount::ZERO,
                },
            ),
            frost,
            source: StacksNodeSource::new(stacks),
        },
        settings,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let no_stop = AtomicBool::new(false);
    loop {
        l.tick(&no_stop).unwrap();
        emulator.with(|st| st.mine());
        let q = &l.components().queue;
        let states: Vec<OpState> = ins
            .iter()
            .map(|o| q.get(&o.txid).unwrap().unwrap().state)
            .collect();
        if states.iter().all(|s| s.is_terminal()) {
            break;
        }
        assert!(Instant::now() < deadline, "not finished: {states:?}");
        std::thread::sleep(Duration::from_millis(10));
    }

    let q = &l.components().queue;
    assert_eq!(q.get(&ins[0].txid).unwrap().unwrap().state, OpState::Done);
    assert_eq!(q.get(&ins[1].txid).unwrap().unwrap().state, OpState::Done);
    assert!(
        matches!(q.get(&ins[2].txid).unwrap().unwrap().state, OpState::Rejected { reason } if reason.contains("allowlist"))
    );
    emulator.with(|st| {
        assert_eq!(st.model.balances.get(&user(1)), Some(&150_000));
        assert_eq!(st.model.balances.get(&user(2)), Some(&250_000));
        assert_eq!(st.model.balances.get(&user(3)), None);
        assert_eq!(st.model.supply, 400_000);
        // Exactly one mint per peg-in reached the chain, all succeeded.
        let mints: Vec<_> = st
            .receipts
            .iter()
            .filter(|r| matches!(&r.tx.payload, stacks_wire::Payload::ContractCall { function_name, .. } if function_name == "mint!"))
            .collect();
        assert_eq!(mints.len(), 2);
        assert!(mints.iter().all(|r| r.result == Ok(Value::Ok(Box::new(Value::Bool(true))))));
        assert_eq!(st.model.wallet_key.as_deref(), Some(&agg.serialize()[..]));
    });
}
