//! `run`'s pieces end to end over real HTTP on 127.0.0.1: the relay, three
//! signers, the stacks-node emulator (which decodes, verifies and executes
//! every transaction), the SQLite queue. Start-up runs DKG and publishes the
//! peg wallet key; then peg-ins are minted exactly once, to the right
//! principals, and one off the allowlist is rejected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, BlockHash, Network, Txid};
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

#[test]
fn peg_ins_are_minted_once_through_real_http() {
    let secp = Secp256k1::new();
    let dir = tempfile::tempdir().unwrap();

    // Relay and three signers.
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
    let signers: Vec<_> = (1..=3)
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

    // The stacks-node emulator: the coordinator deployed the contract and is its coordinator.
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
    let emulator = StacksEmulator::start("127.0.0.1:0", state).unwrap();
    let stacks = UreqStacksNode::new(&emulator.url(), Duration::from_secs(5));
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

    // Start-up: DKG, publish the key, wait for the contract to show it. The
    // emulator mines while we wait.
    let mining = AtomicBool::new(true);
    let agg = std::thread::scope(|s| {
        s.spawn(|| {
            while mining.load(Ordering::SeqCst) {
                emulator.with(|st| st.mine());
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

    stop.store(true, Ordering::SeqCst);
    for s in signers {
        s.join().unwrap();
    }
}
