//! `devnet`: a whole peg on this machine — emulated bitcoind and stacks-node
//! (or, with `--real-nodes`, Bitcoin Core and a stacks-node), the relay, five
//! signers and the coordinator — playing a scenario and checking its outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bitcoin::{Amount, Txid};
use coordinator::config::OpSourceKind;
use coordinator::metrics::{self, StatusServer, StatusSnapshot, Watch};
use coordinator::HttpCoordinator;
use devnet::peg::{burn_script, Blocks, MAGIC};
use devnet::real_peg::demo_users;
use devnet::{Peg, PegOptions, RealPeg, RealPegOptions, RealPegStart, User};
use fee_wallet::StacksWallet as _;
use peg_queue::{OpState, PegQueue, SqlitePegQueue};
use stacks_wire::PrincipalData;

const SIGNERS: u32 = 5;

fn btc(a: Amount) -> String {
    format!("{:.8} BTC", a.to_btc())
}

fn sbtc(sats: u128) -> String {
    format!("{}.{:08} sBTC", sats / 100_000_000, sats % 100_000_000)
}

/// Refreshes the status endpoint's snapshot from the loop's queue.
fn refresh(l: &HttpCoordinator, snapshot: &Mutex<StatusSnapshot>) {
    let Ok(mut s) = snapshot.lock() else {
        return;
    };
    if let Err(e) = s.refresh_from_queue(&l.components().queue) {
        eprintln!("warning: refreshing the status from the queue: {e}");
    }
    s.attestations = l.attestations().to_vec();
}

/// The users on the allowlist: all but mallory.
fn allowed_now(users: &[User]) -> Vec<&User> {
    users.iter().filter(|u| u.name != "mallory").collect()
}

/// Runs the devnet scenario; with `serve`, keeps everything running after it.
pub(crate) fn run(serve: bool, stop: &AtomicBool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sbtc-devnet-{}", std::process::id()));
    println!("== sBTC devnet: emulated bitcoind and stacks-node, relay, {SIGNERS} signers, coordinator ==");
    let mut opts = PegOptions::new(&dir);
    opts.signers = SIGNERS;
    opts.threshold = 3;
    opts.signer_poll = Duration::from_millis(500);
    opts.sign_timeout = Duration::from_secs(10);
    // The signers' allowlist: alice, bob and carol; mallory (4) is not on it.
    opts.allowlist = vec![1, 2, 3];
    let peg_net = Peg::start(opts)?;
    println!("bitcoind emulator   {}", peg_net.bitcoind.url());
    println!("stacks-node emulator {}", peg_net.stacks.url());
    println!("relay               {}", peg_net.relay.url());

    println!("-- DKG with {SIGNERS} signers, publishing the peg wallet key in the contract");
    let agg = peg_net.publish_key()?;
    let peg = peg_net.peg_wallet()?;
    println!("aggregate key {agg}\npeg wallet    {peg}");
    let (bitcoind, stacks_em) = (&peg_net.bitcoind, &peg_net.stacks);

    let mut users: Vec<User> = ["alice", "bob", "carol", "mallory"]
        .iter()
        .zip(1u8..)
        .map(|(n, i)| User::new(n, i))
        .collect();
    peg_net.with_bitcoin(|b| {
        for u in &mut users {
            u.fund(b, &burn_script());
        }
    });
    let allowed: Vec<&User> = users.iter().take(3).collect();
    let mut settings = peg_net.settings(&allowed);
    settings.poll_interval = Duration::from_millis(50);
    settings.backoff_base = Duration::from_millis(50);
    settings.backoff_max = Duration::from_secs(1);
    let mut l = peg_net.coordinator(settings, OpSourceKind::Bitcoin)?;

    let mut names: BTreeMap<Txid, String> = BTreeMap::new();
    // Runs the loop until every op in `ops` is final, printing their steps as they move.
    let drive = |l: &mut HttpCoordinator, ops: &[Txid], names: &BTreeMap<Txid, String>| {
        let mut last = String::new();
        let finished = peg_net.run_until(l, Duration::from_secs(60), Blocks::Both, stop, |l| {
            let states: Vec<Option<OpState>> = ops
                .iter()
                .map(|t| l.components().queue.get(t).ok().flatten().map(|o| o.state))
                .collect();
            let line: String = ops
                .iter()
                .zip(&states)
                .map(|(t, s)| {
                    format!(
                        "  {}: {}",
                        names.get(t).map(String::as_str).unwrap_or("?"),
                        s.as_ref().map_or("unseen", OpState::name)
                    )
                })
                .collect();
            if line != last {
                println!("  ·{line}");
                last = line;
            }
            states
                .iter()
                .all(|s| s.as_ref().is_some_and(OpState::is_terminal))
        })?;
        match finished {
            true => Ok(()),
            false if stop.load(Ordering::SeqCst) => bail!("stopped"),
            false => bail!("the scenario did not finish within 60 s"),
        }
    };

    println!("-- peg-ins: alice 1.0, bob 0.5, carol 0.25, mallory 0.1 (not on the allowlist)");
    let amounts = [100_000_000u64, 50_000_000, 25_000_000, 10_000_000];
    let mut peg_ins = Vec::new();
    peg_net.with_bitcoin(|b| -> Result<()> {
        for (u, sats) in users.iter_mut().zip(amounts) {
            let recipient = u.stx.clone();
            let t = u
                .peg_in(b, MAGIC, &peg, &recipient, Amount::from_sat(sats))
                .map_err(|r| anyhow!("{}: {}", u.name, r.message))?;
            names.insert(t, format!("{} peg-in", u.name));
            peg_ins.push(t);
        }
        Ok(())
    })?;
    peg_net.mine();
    drive(&mut l, &peg_ins, &names)?;

    println!("-- peg-outs: alice 0.4, bob 0.2");
    let outs = [(0usize, 40_000_000u64), (1, 20_000_000)];
    let mut peg_outs = Vec::new();
    peg_net.with_bitcoin(|b| -> Result<()> {
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
        Ok(())
    })?;
    peg_net.mine();
    drive(&mut l, &peg_outs, &names)?;

    // Summary and checks.
    println!("== summary ==");
    let q: &SqlitePegQueue = &l.components().queue;
    let mut checks: Vec<(String, bool)> = Vec::new();
    let balance = |p: &PrincipalData| peg_net.sbtc_balance(p);
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
        let paid = peg_net.payouts(t, &u.btc.script_pubkey());
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
    let mints: Vec<_> = peg_ins
        .iter()
        .map(|t| peg_net.contract_calls("mint!", t))
        .collect();
    let burns: Vec<_> = peg_outs
        .iter()
        .map(|t| peg_net.contract_calls("burn!", t))
        .collect();
    checks.push((
        "one mint per allowed peg-in, one burn per peg-out, none failed".into(),
        mints == [(1, 0), (1, 0), (1, 0), (0, 0)]
            && burns == [(1, 0), (1, 0)]
            && peg_net.failed_contract_calls().is_empty(),
    ));
    let mut ok = true;
    for (what, holds) in &checks {
        println!("   [{}] {what}", if *holds { "ok" } else { "FAIL" });
        ok &= holds;
    }
    if serve {
        let start = peg_net.bitcoind.with(|b| b.height());
        let config = peg_net.write_config(&allowed_now(&users), start)?;
        // The status endpoint and operator page, as `run` serves them
        // (testers' `sbtc` checks the signers' attestations on
        // `/attestations` and follows its ops on `/ops/{txid}`).
        let snapshot = Arc::new(Mutex::new(StatusSnapshot {
            aggregate_key: Some(agg.to_string()),
            peg_wallet_address: Some(peg.to_string()),
            stacks_address: l.components().stacks_wallet.address().to_string(),
            signer_ids: (1..=SIGNERS).collect(),
            start_height: 0,
            started_unix: Some(metrics::unix_now()),
            ..StatusSnapshot::default()
        }));
        let _watch = Watch {
            bitcoin: peg_net.bitcoin_client(),
            bitcoin_url: bitcoind.url(),
            stacks: peg_net.stacks_client(),
            stacks_url: stacks_em.url(),
            relay_url: peg_net.relay.url(),
            contract: peg_net.contract.clone(),
            sender: PrincipalData::Standard(l.components().stacks_wallet.address()),
            every: Duration::from_secs(2),
            balance_every: Duration::from_secs(5),
        }
        .spawn(snapshot.clone());
        let endpoint = StatusServer::start_with_queue(
            "127.0.0.1:0",
            l.metrics(),
            snapshot.clone(),
            Box::new(SqlitePegQueue::open(&peg_net.queue_path())?),
        )?;
        refresh(&l, &snapshot);
        let coordinator_url = format!("http://{}", endpoint.addr());
        let sbtc_config = devnet::user::write_sbtc_config(&peg_net, &coordinator_url)?;
        println!(
            "-- serving until Ctrl-C; a block on each chain every second; state in {}",
            dir.display()
        );
        println!("   coordinator         {coordinator_url}  (the operator page; /status, /metrics, /health, /attestations, /ops/{{txid}})");
        println!(
            "   testers' sbtc       cargo run -p sbtc -- --config {} balance --address ADDRESS",
            sbtc_config.display()
        );
        println!("   bitcoind JSON-RPC   {}  (no auth; getblockcount, getblock, sendrawtransaction, generatetoaddress, …)", bitcoind.url());
        println!(
            "   stacks-node RPC     {}/v2/info, /v2/accounts/…, /v2/burn_ops/H/peg_in, …",
            stacks_em.url()
        );
        println!("   relay               {}", peg_net.relay.url());
        println!("   contract            {}", peg_net.contract);
        println!("   peg wallet          {peg}");
        for u in &users {
            println!("   {:<8} {}  {}  key {}", u.name, u.btc, u.stx, u.wif());
        }
        println!("   inspect it (the running coordinator's queue and nodes):");
        println!(
            "     cargo run -p coordinator-cli -- --config {} status",
            config.display()
        );
        println!(
            "     cargo run -p coordinator-cli -- --config {} queue list",
            config.display()
        );
        while !stop.load(Ordering::SeqCst) {
            l.tick(stop)?;
            refresh(&l, &snapshot);
            peg_net.mine();
            std::thread::sleep(Duration::from_secs(1));
        }
        drop(endpoint);
    }
    drop(l);
    drop(peg_net);
    if !serve {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !ok {
        bail!("some devnet checks failed");
    }
    Ok(())
}

/// The devnet scenario on a real Bitcoin Core (regtest) and a real
/// stacks-node (mocknet), the binaries given or named by `BITCOIND_EXE` and
/// `STACKS_NODE_EXE`; with `serve`, keeps everything running after it.
pub(crate) fn run_real(
    serve: bool,
    bitcoind: Option<PathBuf>,
    stacks_node: Option<PathBuf>,
    stop: &AtomicBool,
) -> Result<()> {
    let (Some(bitcoind), Some(stacks_node)) = (bitcoind, stacks_node) else {
        bail!(
            "--real-nodes needs a bitcoind and a stacks-node: give --bitcoind PATH and \
             --stacks-node PATH, or set BITCOIND_EXE and STACKS_NODE_EXE"
        );
    };
    for (what, p) in [("bitcoind", &bitcoind), ("stacks-node", &stacks_node)] {
        if !p.is_file() {
            bail!("{what} {} is not a file", p.display());
        }
    }
    // The harness starts the binaries these name (this process is still
    // single-threaded here).
    std::env::set_var(devnet::bitcoind::BITCOIND_EXE, &bitcoind);
    std::env::set_var(devnet::stacks_node::STACKS_NODE_EXE, &stacks_node);
    let dir = std::env::temp_dir().join(format!("sbtc-devnet-real-{}", std::process::id()));
    println!(
        "== sBTC devnet on real nodes: Bitcoin Core {}, stacks-node {}, relay, {SIGNERS} signers, coordinator ==",
        bitcoind.display(),
        stacks_node.display()
    );
    let mut opts = RealPegOptions::new(&dir);
    opts.signers = SIGNERS;
    opts.threshold = 3;
    let peg_net = match RealPeg::start(opts)? {
        RealPegStart::Started(p) => p,
        RealPegStart::Skipped(why) => bail!("{why}"),
    };
    println!("bitcoind (Core)     {}", peg_net.bitcoind.rpc_url());
    println!("stacks-node         {}", peg_net.stacks.url());
    println!("relay               {}", peg_net.relay.url());
    println!("contract            {}", peg_net.contract);
    let mut users = demo_users();
    let summary = peg_net.play(&mut users, Duration::from_secs(90), stop, &mut |l| {
        println!("{l}")
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", peg_net.log_tails());
            return Err(e);
        }
    };
    println!("== summary ==");
    for l in &summary.lines {
        println!("{l}");
    }
    for (what, holds) in &summary.checks {
        println!("   [{}] {what}", if *holds { "ok" } else { "FAIL" });
    }
    if !summary.ok() {
        eprintln!("{}", peg_net.log_tails());
    }
    if serve {
        let start = peg_net.bitcoin_height()? + 1;
        let allowed = allowed_now(&users);
        let config = peg_net.write_config(&allowed, start)?;
        let peg = peg_net.peg_wallet()?;
        let settings = peg_net.settings(&allowed)?;
        let mut l = peg_net.coordinator(settings)?;
        // The coordinator's status endpoint, as `run` serves it: testers'
        // `sbtc` checks the signers' attestations on `/attestations`.
        let snapshot = Arc::new(Mutex::new(StatusSnapshot {
            peg_wallet_address: Some(peg.to_string()),
            ..StatusSnapshot::default()
        }));
        refresh(&l, &snapshot);
        let endpoint = StatusServer::start_with_queue(
            "127.0.0.1:0",
            l.metrics(),
            snapshot.clone(),
            Box::new(SqlitePegQueue::open(&peg_net.queue_path())?),
        )?;
        let coordinator_url = format!("http://{}", endpoint.addr());
        let sbtc_config = devnet::user::write_sbtc_toml(&devnet::user::SbtcToml {
            dir: &dir,
            contract: &peg_net.contract,
            stacks_node_url: peg_net.stacks.url(),
            bitcoind_url: &peg_net.bitcoind.rpc_url(),
            bitcoind_auth: Some((peg_net.bitcoind.rpc_user(), peg_net.bitcoind.rpc_password())),
            coordinator_url: &coordinator_url,
        })?;
        println!(
            "-- serving until Ctrl-C; a Bitcoin block every second (the stacks-node mines on its own); state in {}",
            dir.display()
        );
        println!(
            "   coordinator         {coordinator_url}  (/status, /attestations, /ops/{{txid}})"
        );
        println!(
            "   testers' sbtc       cargo run -p sbtc -- --config {} balance --address ADDRESS",
            sbtc_config.display()
        );
        println!(
            "   bitcoind JSON-RPC   {}  (user {}, password {}; no wallet: sign your own, generatetoaddress mines)",
            peg_net.bitcoind.rpc_url(),
            peg_net.bitcoind.rpc_user(),
            peg_net.bitcoind.rpc_password()
        );
        println!(
            "   stacks-node RPC     {}/v2/info, /v2/accounts/…",
            peg_net.stacks.url()
        );
        println!("   relay               {}", peg_net.relay.url());
        println!("   contract            {}", peg_net.contract);
        println!("   peg wallet          {peg}");
        for u in &users {
            println!("   {:<8} {}  {}  key {}", u.name, u.btc, u.stx, u.wif());
        }
        println!("   inspect it (the running coordinator's queue and nodes):");
        println!(
            "     cargo run -p coordinator-cli -- --config {} status",
            config.display()
        );
        let _miner = peg_net.miner(Duration::from_secs(1));
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = l.tick(stop) {
                eprintln!("warning: a coordinator tick: {e}");
            }
            refresh(&l, &snapshot);
            std::thread::sleep(Duration::from_millis(500));
        }
        drop(endpoint);
    }
    let ok = summary.ok();
    drop(peg_net);
    if !serve {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !ok {
        bail!("some devnet checks failed");
    }
    Ok(())
}
