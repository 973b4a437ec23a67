//! `devnet`: a whole peg on this machine — emulated bitcoind and stacks-node,
//! the relay, five signers and the coordinator — playing a scenario and
//! checking its outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Amount, FeeRate, Network, OutPoint, ScriptBuf, Txid};
use bitcoin_node_client::{Auth, UreqBitcoinNode};
use coordinator::startup::ensure_wallet_key;
use coordinator::{Allowlist, BitcoinBlockSource, Components, LoopSettings, StacksCoordinator};
use devnet::{BitcoinEmulator, BitcoinState, StacksEmulator, StacksState, User};
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy,
};
use frost_coordinator::{
    RelayCoordinatorOptions, RelayFrostCoordinator, SignerFile, SignerInfo, SignerSet,
};
use frost_signer::{SignerNode, SignerOptions};
use peg_queue::peg_ops::BurnHeight;
use peg_queue::{OpState, PegQueue, SqlitePegQueue};
use relay::{RelayConfig, RelayServer};
use stacks_node_client::UreqStacksNode;
use stacks_wire::{PrincipalData, StacksNetwork, StacksPrivateKey};

const MAGIC: [u8; 2] = *b"id";
const SIGNERS: u32 = 5;

fn key(tag: u8, i: u32) -> Result<SecretKey> {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).context("devnet key")
}

fn btc(a: Amount) -> String {
    format!("{:.8} BTC", a.to_btc())
}

fn sbtc(sats: u128) -> String {
    format!("{}.{:08} sBTC", sats / 100_000_000, sats % 100_000_000)
}

/// Runs the devnet scenario; with `serve`, keeps everything running after it.
pub(crate) fn run(serve: bool, stop: &AtomicBool) -> Result<()> {
    let secp = Secp256k1::new();
    let dir = std::env::temp_dir().join(format!("sbtc-devnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let burn = ScriptBuf::new_op_return([0u8]);
    println!("== sBTC devnet: emulated bitcoind and stacks-node, relay, {SIGNERS} signers, coordinator ==");

    let bitcoind = BitcoinEmulator::start("127.0.0.1:0", BitcoinState::new())?;
    let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default())?;
    let coordinator_msg_key = key(0xc0, 0)?;
    let set = SignerSet {
        threshold: 3,
        dkg_threshold: None,
        signers: (0..SIGNERS)
            .map(|i| {
                Ok(SignerInfo {
                    id: i + 1,
                    public_key: key(0x5e, i)?.public_key(&secp),
                    key_ids: vec![i + 1],
                    private_key: None,
                })
            })
            .collect::<Result<_>>()?,
    };
    let file = SignerFile {
        relay_url: relay.url(),
        coordinator_public_key: coordinator_msg_key.public_key(&secp),
        state_dir: None,
        set: set.clone(),
    };
    let signer_stop = Arc::new(AtomicBool::new(false));
    let mut signers = Vec::new();
    for id in 1..=SIGNERS {
        let mut node = SignerNode::new(SignerOptions {
            id,
            file: file.clone(),
            private_key: key(0x5e, id - 1)?,
            state_path: dir.join(format!("signer-{id}.json")),
            poll_wait: Duration::from_millis(500),
        })?;
        let s = signer_stop.clone();
        signers.push(std::thread::spawn(move || node.run(&s)));
    }

    let stacks_key = StacksPrivateKey {
        key: key(0xaa, 0)?,
        compressed: true,
    };
    let me = stacks_key.address(StacksNetwork::Testnet);
    let contract: stacks_wire::ContractId = format!("{me}.sbtc-alpha").parse()?;
    let mut state = StacksState::new(contract.clone());
    state.fund(me, 1_000_000_000);
    state.model.coordinator = Some((
        me.into(),
        coordinator_msg_key.public_key(&secp).serialize().to_vec(),
    ));
    let stacks_em = StacksEmulator::start("127.0.0.1:0", state)?;
    println!("bitcoind emulator   {}", bitcoind.url());
    println!("stacks-node emulator {}", stacks_em.url());
    println!("relay               {}", relay.url());

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
        dkg_timeout: Duration::from_secs(30),
        sign_timeout: Duration::from_secs(10),
        state_path: Some(dir.join("frost-coordinator.json")),
    })?;
    let queue = SqlitePegQueue::open(&dir.join("queue.sqlite"))?;

    println!("-- DKG with {SIGNERS} signers, publishing the peg wallet key in the contract");
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
            Duration::from_secs(30),
            Duration::from_millis(20),
        )
        .map_err(|e| anyhow!("{e}"));
        mining.store(false, Ordering::SeqCst);
        k
    })?;
    let peg = peg_wallet_address(&agg, Network::Regtest);
    println!("aggregate key {agg}\npeg wallet    {peg}");

    let mut users: Vec<User> = ["alice", "bob", "carol", "mallory"]
        .iter()
        .zip(1u8..)
        .map(|(n, i)| User::new(n, i))
        .collect();
    bitcoind.with(|b| {
        for u in &mut users {
            u.fund(b, &burn);
        }
    });
    let start_height = bitcoind.with(|b| b.height()) + 1;
    let allowed: Vec<&User> = users.iter().take(3).collect();
    let settings = LoopSettings {
        network: Network::Regtest,
        stacks_network: StacksNetwork::Testnet,
        contract: contract.clone(),
        start_height: BurnHeight(start_height),
        op_confirmations: 1,
        fulfillment_confirmations: 1,
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        fee_target_blocks: 6,
        max_heights_per_tick: 100,
        allowlist: Allowlist::new(
            allowed.iter().map(|u| u.stx.clone()),
            allowed.iter().map(|u| u.btc.script_pubkey()),
        ),
        stx_low_balance_warning: 1,
    };
    let client = || UreqBitcoinNode::new(&bitcoind.url(), Auth::None, Duration::from_secs(5));
    let fees = BitcoinFeePolicy {
        floor: FeeRate::from_sat_per_vb(2).ok_or_else(|| anyhow!("fee rate"))?,
        cap: FeeRate::from_sat_per_vb(100).ok_or_else(|| anyhow!("fee rate"))?,
        subsidy: Amount::ZERO,
    };
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks: stacks.clone(),
            bitcoin: client(),
            stacks_wallet: wallet,
            bitcoin_wallet: PegWallet::new(Network::Regtest, MAGIC, fees),
            frost,
            source: BitcoinBlockSource::new(client(), MAGIC, Network::Regtest),
        },
        settings,
    );

    let mut names: BTreeMap<Txid, String> = BTreeMap::new();
    let drive = |l: &mut StacksCoordinator<_, _, _, _, _, _, _>,
                 ops: &[Txid],
                 names: &BTreeMap<Txid, String>|
     -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            l.tick(stop)?;
            stacks_em.with(|st| st.mine());
            bitcoind.with(|b| {
                b.mine(&ScriptBuf::new_op_return([0u8]));
            });
            let q: &SqlitePegQueue = &l.components().queue;
            let mut line = String::new();
            let mut all_done = true;
            for t in ops {
                let state = q.get(t)?.map(|o| o.state.name()).unwrap_or("unseen");
                all_done &= q.get(t)?.is_some_and(|o| o.state.is_terminal());
                line.push_str(&format!(
                    "  {}: {state}",
                    names.get(t).map(String::as_str).unwrap_or("?")
                ));
            }
            if line != last {
                println!("  ·{line}");
                last = line;
            }
            if all_done {
                return Ok(());
            }
            if stop.load(Ordering::SeqCst) {
                bail!("stopped");
            }
            if Instant::now() > deadline {
                bail!("the scenario did not finish within 60 s");
            }
        }
    };

    println!("-- peg-ins: alice 1.0, bob 0.5, carol 0.25, mallory 0.1 (not on the allowlist)");
    let amounts = [100_000_000u64, 50_000_000, 25_000_000, 10_000_000];
    let mut peg_ins = Vec::new();
    bitcoind.with(|b| -> Result<()> {
        for (u, sats) in users.iter_mut().zip(amounts) {
            let recipient = u.stx.clone();
            let t = u
                .peg_in(b, MAGIC, &peg, &recipient, Amount::from_sat(sats))
                .map_err(|r| anyhow!("{}: {}", u.name, r.message))?;
            names.insert(t, format!("{} peg-in", u.name));
            peg_ins.push(t);
        }
        b.mine(&ScriptBuf::new_op_return([0u8]));
        Ok(())
    })?;
    drive(&mut l, &peg_ins, &names)?;

    println!("-- peg-outs: alice 0.4, bob 0.2");
    let outs = [(0usize, 40_000_000u64), (1, 20_000_000)];
    let mut peg_outs = Vec::new();
    bitcoind.with(|b| -> Result<()> {
        for (i, sats) in outs {
            let u = &mut users[i];
            let t = u
                .peg_out(
                    b,
                    MAGIC,
                    &peg,
                    Amount::from_sat(sats),
                    Amount::from_sat(20_000),
                )
                .map_err(|r| anyhow!("{}: {}", u.name, r.message))?;
            names.insert(t, format!("{} peg-out", u.name));
            peg_outs.push(t);
        }
        b.mine(&ScriptBuf::new_op_return([0u8]));
        Ok(())
    })?;
    drive(&mut l, &peg_outs, &names)?;

    // Summary and checks.
    println!("== summary ==");
    let q: &SqlitePegQueue = &l.components().queue;
    let mut checks: Vec<(String, bool)> = Vec::new();
    let balance =
        |p: &PrincipalData| stacks_em.with(|st| st.model.balances.get(p).copied().unwrap_or(0));
    let supply = stacks_em.with(|st| st.model.supply);
    let peg_btc: Amount = bitcoind.with(|b| {
        b.unspent(&peg.script_pubkey())
            .iter()
            .map(|(_, o, _)| o.value)
            .sum()
    });
    println!("peg wallet holds   {}", btc(peg_btc));
    println!("sBTC supply        {}", sbtc(supply));
    let expected = [60_000_000u128, 30_000_000, 25_000_000, 0];
    for (u, want) in users.iter().zip(expected) {
        let got = balance(&u.stx);
        println!("  {:<8} {}  ({})", u.name, sbtc(got), u.stx);
        checks.push((format!("{} holds {}", u.name, sbtc(want)), got == want));
    }
    checks.push((
        "sBTC supply = pegged in (1.75) − pegged out (0.6)".into(),
        supply == 115_000_000,
    ));
    checks.push((
        "the peg wallet backs the supply".into(),
        u128::from(peg_btc.to_sat()) >= supply,
    ));
    for (t, (i, sats)) in peg_outs.iter().zip(outs) {
        let u = &users[i];
        let paid: Vec<Amount> = bitcoind.with(|b| {
            (0..=b.height())
                .filter_map(|h| b.block(h))
                .flat_map(|blk| blk.txdata.iter())
                .filter(|tx| {
                    tx.input.first().map(|i| i.previous_output) == Some(OutPoint::new(*t, 2))
                })
                .filter_map(|tx| {
                    tx.output
                        .get(1)
                        .filter(|o| o.script_pubkey == u.btc.script_pubkey())
                        .map(|o| o.value)
                })
                .collect()
        });
        println!(
            "  {} paid {:?} to {}",
            u.name,
            paid.iter().map(|a| btc(*a)).collect::<Vec<_>>(),
            u.btc
        );
        checks.push((
            format!(
                "{} paid exactly {} once, to their scriptPubKey",
                u.name,
                btc(Amount::from_sat(sats))
            ),
            paid == vec![Amount::from_sat(sats)],
        ));
    }
    for t in peg_ins.iter().chain(&peg_outs) {
        if let Some(o) = q.get(t)? {
            if let OpState::Rejected { reason } | OpState::Failed { reason } = &o.state {
                println!("  {} {}: {reason}", names[t], o.state.name());
            }
        }
    }
    let mallory = q.get(&peg_ins[3])?.map(|o| o.state);
    checks.push((
        "mallory's peg-in rejected: not on the allowlist".into(),
        matches!(&mallory, Some(OpState::Rejected { reason }) if reason.contains("allowlist")),
    ));
    let mints = stacks_em.with(|st| st.receipts.iter().filter(|r| matches!(&r.tx.payload, stacks_wire::Payload::ContractCall { function_name, .. } if function_name == "mint!")).count());
    let burns = stacks_em.with(|st| st.receipts.iter().filter(|r| matches!(&r.tx.payload, stacks_wire::Payload::ContractCall { function_name, .. } if function_name == "burn!")).count());
    checks.push((
        "3 mints and 2 burns reached the chain, no more".into(),
        mints == 3 && burns == 2,
    ));
    let mut ok = true;
    for (what, holds) in &checks {
        println!("   [{}] {what}", if *holds { "ok" } else { "FAIL" });
        ok &= holds;
    }
    if serve {
        println!(
            "-- serving until Ctrl-C (bitcoind {}, stacks-node {}, relay {}); state in {}",
            bitcoind.url(),
            stacks_em.url(),
            relay.url(),
            dir.display()
        );
        while !stop.load(Ordering::SeqCst) {
            l.tick(stop)?;
            stacks_em.with(|st| st.mine());
            bitcoind.with(|b| {
                b.mine(&ScriptBuf::new_op_return([0u8]));
            });
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    signer_stop.store(true, Ordering::SeqCst);
    for s in signers {
        let _ = s.join();
    }
    if !serve {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !ok {
        bail!("some devnet checks failed");
    }
    Ok(())
}
