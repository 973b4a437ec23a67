//! `run`, `process-peg-in/out`, `status` and `queue`: wiring the real crates.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin_node_client::{Auth, BitcoinNode, UreqBitcoinNode};
use coordinator::bitcoin::Txid;
use coordinator::config::{BitcoinAuth, Config, OpSourceKind};
use coordinator::lock::DataDirLock;
use coordinator::metrics::{kind_name, StatusServer, StatusSnapshot, Watch, STATES};
use coordinator::retry::{retry_decision, ContractReader, RetryDecision};
use coordinator::source::NamedSource;
use coordinator::startup::{
    contract_signer_set, contract_wallet_key, ensure_wallet_key, rotate_key,
    signer_set_differences, StartupError,
};
use coordinator::{
    BitcoinBlockSource, Components, LoopSettings, OpSource, PegChecks, StacksCoordinator,
    StacksNodeSource,
};
use fee_wallet::{BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy};
use frost_coordinator::FrostCoordinator;
use peg_queue::peg_ops::{PegOp, PegOpKind};
use peg_queue::{OpState, PegQueue, SqlitePegQueue};
use stacks_node_client::UreqStacksNode;
use stacks_wire::PrincipalData;

fn bitcoin_node(c: &Config) -> UreqBitcoinNode {
    let auth = match &c.bitcoin_auth {
        BitcoinAuth::UserPass { user, password } => {
            Auth::UserPass(user.clone(), password.expose().clone())
        }
        BitcoinAuth::Cookie(p) => Auth::Cookie(p.clone()),
        BitcoinAuth::None => Auth::None,
    };
    UreqBitcoinNode::new(&c.bitcoin_node_url, auth, c.rpc_timeout)
}

fn source(c: &Config) -> Box<dyn OpSource> {
    match c.op_source {
        OpSourceKind::StacksNode => Box::new(NamedSource::new(
            StacksNodeSource::new(UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout)),
            &c.stacks_node_url,
        )),
        OpSourceKind::Bitcoin => Box::new(NamedSource::new(
            BitcoinBlockSource::new(bitcoin_node(c), c.magic_bytes, c.network),
            &c.bitcoin_node_url,
        )),
    }
}

pub(crate) fn queue(c: &Config) -> Result<SqlitePegQueue> {
    let path = c.data_dir.join("queue.sqlite");
    SqlitePegQueue::open(&path).with_context(|| format!("cannot open the queue {}", path.display()))
}

/// The queue of an existing data directory, for the commands that only
/// read or amend it (`status`, `queue`): a mistyped `data_dir` is named
/// instead of getting a new, empty queue.
pub(crate) fn existing_queue(c: &Config) -> Result<SqlitePegQueue> {
    if !c.data_dir.is_dir() {
        bail!(
            "the data directory {} does not exist (check data_dir in the configuration; `run` creates it)",
            c.data_dir.display()
        );
    }
    queue(c)
}

type Loop = coordinator::HttpCoordinator;

/// How often `run`'s watch checks the nodes and the relay.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// How often it reads the peg wallet's balance (a UTXO-set scan).
const BALANCE_EVERY: Duration = Duration::from_secs(30);
/// How often the status snapshot is refreshed from the queue.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Builds every component, checks the contract holds our key, returns the loop.
fn stacks_wallet(c: &Config, stacks: &UreqStacksNode) -> ContractCallWallet<UreqStacksNode> {
    ContractCallWallet::new(
        c.stacks_network,
        c.contract.clone(),
        *c.stacks_private_key.expose(),
        StacksFeePolicy {
            floor: c.fees.stacks_fee_floor,
            cap: c.fees.stacks_fee_cap,
        },
        stacks.clone(),
    )
}

fn build(c: &Config, start_height: Option<u64>) -> Result<Loop> {
    let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
    let stacks_wallet = stacks_wallet(c, &stacks);
    let bitcoin_wallet = PegWallet::new(
        c.network,
        c.magic_bytes,
        // The signers' policy, from the signer set file: the wallet builds
        // only what they will sign.
        BitcoinFeePolicy {
            floor: c.policy.fee_floor,
            cap: c.policy.fee_cap,
            subsidy: c.policy.subsidy,
        },
    );
    check_signer_set(&stacks, c)?;
    check_txindex(c)?;
    let mut frost = crate::frost::coordinator(c)?;
    let queue = queue(c)?;
    let key = ensure_wallet_key(
        &stacks,
        &stacks_wallet,
        &mut frost,
        &queue,
        &c.contract,
        Duration::from_secs(600),
        c.poll_interval,
    )
    .context("start-up check of the peg wallet key")?;
    log::info!(
        "peg wallet: {}",
        fee_wallet::peg_wallet_address(&key, c.network)
    );
    let mut settings = LoopSettings::from_config(c);
    if let Some(h) = start_height {
        settings.start_height = coordinator::bitcoin_height(h);
    }
    let mut l = StacksCoordinator::new(
        Components {
            queue,
            stacks,
            bitcoin: bitcoin_node(c),
            stacks_wallet,
            bitcoin_wallet,
            frost,
            source: source(c),
        },
        settings,
    );
    l.set_stacks_replace_after(c.fees.stacks_replace_after);
    let l = l.with_checks(PegChecks::from_config(c));
    let coins_path = c.data_dir.join("coins.sqlite");
    let first = c.start_height.0;
    let record = peg_coins::CoinRecord::open(&coins_path, first)
        .with_context(|| format!("cannot open the coin record {}", coins_path.display()))?;
    Ok(l.with_coin_record(record, first))
}

/// The coordinator looks confirmed transactions up by txid (fulfilments,
/// one-off ops): the node must keep a transaction index.
fn check_txindex(c: &Config) -> Result<()> {
    let has = bitcoin_node(c).has_txindex().with_context(|| {
        format!(
            "asking the Bitcoin node at {} for its indexes",
            c.bitcoin_node_url
        )
    })?;
    if !has {
        bail!(
            "the Bitcoin node at {} keeps no transaction index: restart bitcoind with -txindex=1",
            c.bitcoin_node_url
        );
    }
    Ok(())
}

/// The configured signer set must match the contract's, when it has one.
fn check_signer_set(stacks: &UreqStacksNode, c: &Config) -> Result<()> {
    let me = PrincipalData::Standard(c.stacks_address());
    match contract_signer_set(stacks, &c.contract, &me).with_context(|| {
        format!(
            "reading the contract's signer set from the stacks node at {}",
            c.stacks_node_url
        )
    })? {
        Some(theirs) => {
            let d = signer_set_differences(&c.signer_set, &theirs);
            if !d.is_empty() {
                return Err(StartupError::SignerSetMismatch(d).into());
            }
            log::info!(
                "the signer set matches the contract's ({} signers)",
                theirs.signers.len()
            );
        }
        None if c.signer_set_from_contract => return Err(StartupError::NoContractSigners.into()),
        None => log::info!("the contract publishes no signer set; using the signer file"),
    }
    Ok(())
}

/// Takes the data directory's lock for `command` (released on exit, also on
/// SIGKILL): one process drives a queue and its keys at a time.
pub(crate) fn lock(c: &Config, command: &str) -> Result<DataDirLock> {
    DataDirLock::acquire(&c.data_dir, command).map_err(anyhow::Error::from)
}

/// `dkg --rotate`: a new peg wallet key through the signers' gated DKG,
/// published in the contract; then the old key's coins are swept to it.
pub(crate) fn rotate(c: &Config) -> Result<()> {
    let _lock = lock(c, "dkg --rotate")?;
    let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
    check_signer_set(&stacks, c)?;
    let (old, new) = {
        let mut frost = crate::frost::coordinator(c)?;
        let queue = queue(c)?;
        rotate_key(
            &stacks,
            &stacks_wallet(c, &stacks),
            &mut frost,
            &queue,
            &c.contract,
            Duration::from_secs(600),
            c.poll_interval,
        )
        .context("key rotation")?
    };
    println!(
        "old peg wallet key: {old} ({})",
        fee_wallet::peg_wallet_address(&old, c.network)
    );
    println!(
        "new peg wallet key: {new} ({})",
        fee_wallet::peg_wallet_address(&new, c.network)
    );
    let mut l = build(c, None)?;
    let swept = l.sweep_old_keys()?;
    if swept.is_empty() {
        println!("no coins to sweep from old keys now; `run` keeps sweeping what arrives there");
    }
    for txid in swept {
        println!("swept old keys' coins to the new key: {txid}");
    }
    Ok(())
}

/// `run`: process operations until stopped.
pub(crate) fn run(c: &Config, start_height: Option<u64>, stop: &AtomicBool) -> Result<()> {
    let _lock = lock(c, "run")?;
    let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
    coordinator::startup::wait_for_services(&stacks, &bitcoin_node(c), c, stop)?;
    let mut l = build(c, start_height)?;
    if let Some(h) = start_height {
        l.rescan_from(coordinator::bitcoin_height(h));
    }
    let key = l.components().frost.aggregate_public_key();
    let snapshot = Arc::new(Mutex::new(StatusSnapshot {
        aggregate_key: key.map(|k| k.to_string()),
        peg_wallet_address: key.map(|k| fee_wallet::peg_wallet_address(&k, c.network).to_string()),
        stacks_address: c.stacks_address().to_string(),
        signer_ids: c.signer_set.signers.iter().map(|s| s.id).collect(),
        start_height: c.start_height.0,
        started_unix: Some(coordinator::metrics::unix_now()),
        unhealthy_after: Some(c.unhealthy_after),
        ..StatusSnapshot::default()
    }));
    // Checks the nodes and the relay on a thread of its own: `/health`
    // sees an outage even while the loop waits in a step.
    let _watch = c.status_listen.as_ref().map(|_| {
        Watch {
            bitcoin: bitcoin_node(c),
            bitcoin_url: c.bitcoin_node_url.clone(),
            stacks: UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout),
            stacks_url: c.stacks_node_url.clone(),
            relay_url: c.relay_url.clone(),
            contract: c.contract.clone(),
            sender: PrincipalData::Standard(c.stacks_address()),
            every: WATCH_EVERY
                .min(c.unhealthy_after / 3)
                .max(Duration::from_millis(200)),
            balance_every: BALANCE_EVERY.min(c.unhealthy_after),
        }
        .spawn(snapshot.clone())
    });
    let _endpoint = match &c.status_listen {
        Some(addr) => Some(
            // `/ops/{txid}` reads the queue through a connection of its own.
            StatusServer::start_with_queue(
                addr,
                l.metrics(),
                snapshot.clone(),
                Box::new(queue(c)?),
            )
            .with_context(|| format!("cannot serve the status endpoint on {addr}"))?,
        ),
        None => None,
    };
    let mut refreshed: Option<std::time::Instant> = None;
    let mut refresh_failing = false;
    l.run_observed(stop, |l| {
        // At most every REFRESH_EVERY: the ages read each pending op's history.
        if refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        refreshed = Some(std::time::Instant::now());
        let mut next = match snapshot.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        match next.refresh_from_queue(&l.components().queue) {
            Ok(()) => {
                refresh_failing = false;
                next.attestations = l.attestations().to_vec();
                if let Ok(mut s) = snapshot.lock() {
                    // The watch's fields may have moved meanwhile: copy ours.
                    s.ops = next.ops;
                    s.last_scanned_height = next.last_scanned_height;
                    s.waiting = next.waiting;
                    s.recent_events = next.recent_events;
                    s.recent_ops = next.recent_ops;
                    s.oldest_pending_age_seconds = next.oldest_pending_age_seconds;
                    s.attestations = next.attestations;
                }
            }
            // Once per spell, not every second.
            Err(e) if !refresh_failing => {
                refresh_failing = true;
                log::warn!("refreshing the status from the queue: {e}");
            }
            Err(_) => {}
        }
    })
    .context("the coordinator loop stopped")
}

/// The height of the block holding `txid` on the node's best chain. The
/// confirmations and the tip are two reads: a block mined between them
/// would shift the height by one, so the block found there must be the one
/// the node says holds the transaction (else read both again).
fn confirmed_height(c: &Config, txid: &Txid) -> Result<u64> {
    let node = bitcoin_node(c);
    for _ in 0..5 {
        let status = node
            .get_raw_transaction(txid)
            .context("looking the transaction up on the Bitcoin node")?
            .ok_or_else(|| anyhow!("the Bitcoin node does not know transaction {txid}"))?;
        let Some(block) = status.block_hash.filter(|_| status.confirmations > 0) else {
            bail!("transaction {txid} is not confirmed yet");
        };
        let tip = node.get_block_count()?;
        let height = tip
            .saturating_add(1)
            .checked_sub(u64::from(status.confirmations))
            .ok_or_else(|| {
                anyhow!(
                    "the node reports {} confirmations at tip {tip}",
                    status.confirmations
                )
            })?;
        if node.get_block_hash(height)? == block {
            return Ok(height);
        }
    }
    bail!("the Bitcoin node's chain kept moving while transaction {txid}'s block was looked up; try again")
}

/// `process-peg-in` / `process-peg-out`: find one op (in the queue, else on
/// chain) and drive it as far as it goes now.
pub(crate) fn process(c: &Config, txid: Txid, kind: PegOpKind, stop: &AtomicBool) -> Result<()> {
    let _lock = lock(c, &format!("process-{kind}"))?;
    let mut l = build(c, None)?;
    let known = l.components().queue.get(&txid)?;
    if known.is_none() {
        let height = confirmed_height(c, &txid)?;
        let ops = l
            .components()
            .source
            .ops_at(coordinator::bitcoin_height(height))
            .map_err(|e| anyhow!("reading ops at height {height}: {e}"))?
            .ok_or_else(|| anyhow!("the op source has not processed height {height} yet"))?;
        let op = ops.into_iter().find(|o| o.txid() == txid).ok_or_else(|| {
            anyhow!("transaction {txid} at height {height} is no valid peg operation")
        })?;
        l.components().queue.insert_op(&op)?;
    }
    let op = l
        .components()
        .queue
        .get(&txid)?
        .ok_or_else(|| anyhow!("{txid} vanished from the queue"))?;
    if op.op.kind() != kind {
        bail!("{txid} is a {}, not a {kind}", op.op.kind());
    }
    let state = l.process_one(&txid, stop)?;
    println!("{kind} {txid}: {state}");
    Ok(())
}

/// `refund TXID`: asks for the refund of a rejected, never-minted peg-in
/// (the coordinator's checks in `StacksCoordinator::request_refund`, logged
/// with who asked and why). With the data directory free, this process then
/// builds the refund, has the signers sign it, stores and broadcasts it, as
/// `process-peg-in` does; while `run` holds the directory, only the request
/// is stored (a rejected op is terminal: the running loop never writes it,
/// and every other writer takes the lock) and the running loop does the rest.
pub(crate) fn refund(c: &Config, txid: Txid, reason: &str, stop: &AtomicBool) -> Result<()> {
    let who = format!(
        "{} (coordinator-cli refund, pid {})",
        std::env::var("USER").unwrap_or_else(|_| "operator".into()),
        std::process::id()
    );
    match DataDirLock::acquire(&c.data_dir, "refund") {
        Ok(_lock) => {
            let mut l = build(c, None)?;
            l.request_refund(&txid, &who, reason)?;
            let state = l.process_one(&txid, stop)?;
            println!("peg-in {txid}: {state}");
            if let Some(e) = l.components().queue.get(&txid)?.and_then(|o| o.last_error) {
                println!("last error: {e}");
            }
            if !state.is_terminal() {
                println!(
                    "`run` (or `process-peg-in {txid}`) takes it on from here ({})",
                    state.name()
                );
            }
            Ok(())
        }
        Err(coordinator::lock::LockError::Held { holder, .. }) => {
            let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
            // The running loop writes the queue: opening it may meet its
            // lock (the queue sets journal_mode before its busy timeout), so
            // try a few times, bounded.
            let mut opened = queue(c);
            for _ in 0..20 {
                match &opened {
                    Err(e) if format!("{e:#}").contains("locked") => {
                        std::thread::sleep(Duration::from_millis(100));
                        opened = queue(c);
                    }
                    _ => break,
                }
            }
            let mut l = StacksCoordinator::new(
                Components {
                    queue: opened?,
                    stacks_wallet: stacks_wallet(c, &stacks),
                    stacks,
                    bitcoin: bitcoin_node(c),
                    bitcoin_wallet: PegWallet::new(
                        c.network,
                        c.magic_bytes,
                        BitcoinFeePolicy::from_policy(&c.policy),
                    ),
                    frost: crate::frost::coordinator(c)?,
                    source: source(c),
                },
                LoopSettings::from_config(c),
            )
            .with_checks(PegChecks::from_config(c));
            l.request_refund(&txid, &who, reason)?;
            println!(
                "peg-in {txid}: refund_requested; the running coordinator ({holder}) builds, signs and broadcasts it"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `status`: an aligned summary (or `--json`) of the nodes, tips,
/// balances, supply, signers and the queue with its stuck ops, read from
/// the nodes and the queue now; exits non-zero (after printing) when a node
/// or the relay does not answer.
pub(crate) fn status(c: &Config, json: bool) -> Result<()> {
    let q = existing_queue(c)?;
    let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
    let me = PrincipalData::Standard(c.stacks_address());
    let key = contract_wallet_key(&stacks, &c.contract, &me);
    let peg = key
        .as_ref()
        .ok()
        .and_then(|k| *k)
        .map(|k| fee_wallet::peg_wallet_address(&k, c.network));
    let snapshot = Mutex::new(StatusSnapshot {
        aggregate_key: key.as_ref().ok().and_then(|k| k.map(|k| k.to_string())),
        peg_wallet_address: peg.as_ref().map(|a| a.to_string()),
        stacks_address: me.to_string(),
        signer_ids: c.signer_set.signers.iter().map(|s| s.id).collect(),
        start_height: c.start_height.0,
        unhealthy_after: Some(c.unhealthy_after),
        ..StatusSnapshot::default()
    });
    Watch {
        bitcoin: bitcoin_node(c),
        bitcoin_url: c.bitcoin_node_url.clone(),
        stacks,
        stacks_url: c.stacks_node_url.clone(),
        relay_url: c.relay_url.clone(),
        contract: c.contract.clone(),
        sender: me.clone(),
        every: c.rpc_timeout,
        balance_every: Duration::ZERO,
    }
    .check(&snapshot, true);
    let mut s = snapshot
        .into_inner()
        .map_err(|_| anyhow!("the status snapshot is poisoned"))?;
    s.refresh_from_queue(&q)
        .with_context(|| format!("reading the queue in {}", c.data_dir.display()))?;
    if let Some(b) = s.stx_balance {
        if b < c.fees.stx_low_balance_warning {
            log::warn!(
                "the coordinator's STX balance ({b} µSTX) is below the warning threshold of {} µSTX: top up {me}",
                c.fees.stx_low_balance_warning
            );
        }
    }
    let down: Vec<String> = s
        .nodes
        .iter()
        .filter(|(_, n)| !n.up)
        .map(|(name, n)| {
            format!(
                "{name} at {} does not answer: {}",
                n.url,
                n.last_error.as_deref().unwrap_or("no answer")
            )
        })
        .collect();
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["scan_lag"] = s.scan_lag().into();
        v["backing_ratio"] = s.backing_ratio().into();
        v["signer_threshold"] = c.signer_set.threshold.into();
        v["aggregate_key_error"] = key.as_ref().err().map(|e| e.to_string()).into();
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
    } else {
        write_stdout(&status_text(c, &s, &key))?;
    }
    if !down.is_empty() {
        bail!("{}", down.join("; "));
    }
    Ok(())
}

/// `status`'s text: one `name  value` line each, the names aligned.
fn status_text(
    c: &Config,
    s: &StatusSnapshot,
    key: &std::result::Result<Option<coordinator::bitcoin::secp256k1::PublicKey>, StartupError>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<22} {v}");
    };
    let unknown = || "unknown".to_owned();
    let btc = |sats: u64| format!("{}.{:08} BTC", sats / 100_000_000, sats % 100_000_000);
    for (name, n) in &s.nodes {
        line(
            name,
            if n.up {
                format!("up      {}", n.url)
            } else {
                format!(
                    "DOWN    {}: {}",
                    n.url,
                    n.last_error.as_deref().unwrap_or("no answer")
                )
            },
        );
    }
    line(
        "bitcoin tip",
        s.bitcoin_tip.map_or_else(unknown, |h| h.to_string()),
    );
    line(
        "stacks tip",
        s.stacks_tip.map_or_else(unknown, |h| {
            format!(
                "{h} (bitcoin height {})",
                s.stacks_burn_height.map_or_else(unknown, |b| b.to_string())
            )
        }),
    );
    line(
        "last scanned height",
        match s.last_scanned_height {
            Some(h) => format!(
                "{h} ({} behind the tip)",
                s.scan_lag().map_or_else(unknown, |l| l.to_string())
            ),
            None => format!("none yet (starts at {})", s.start_height),
        },
    );
    line("stacks address", s.stacks_address.clone());
    line(
        "STX balance",
        s.stx_balance.map_or_else(unknown, |b| {
            format!("{b} µSTX (nonce {})", s.stacks_nonce.unwrap_or(0))
        }),
    );
    line(
        "aggregate key",
        match key {
            Ok(Some(k)) => k.to_string(),
            Ok(None) => "none published in the contract".into(),
            Err(e) => format!("unknown: {e}"),
        },
    );
    line(
        "peg wallet",
        s.peg_wallet_address.clone().unwrap_or_else(unknown),
    );
    line(
        "peg wallet holds",
        s.peg_wallet_sats.map_or_else(unknown, btc),
    );
    line(
        "sBTC supply",
        s.sbtc_supply_sats.map_or_else(unknown, |v| {
            format!("{}.{:08} sBTC", v / 100_000_000, v % 100_000_000)
        }),
    );
    line(
        "backing ratio",
        s.backing_ratio()
            .map_or_else(unknown, |r| format!("{r:.4}")),
    );
    line(
        "signers",
        format!(
            "{} (threshold {}): ids {}",
            c.signer_set.signers.len(),
            c.signer_set.threshold,
            s.signer_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let ops: Vec<String> = s
        .ops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    line(
        "ops",
        if ops.is_empty() {
            "none".into()
        } else {
            ops.join(", ")
        },
    );
    line("stuck ops", s.stuck.len().to_string());
    for o in &s.stuck {
        let why = o
            .waiting
            .as_deref()
            .or(o.last_error.as_deref())
            .unwrap_or("");
        let _ = writeln!(
            out,
            "  {} {} {} sats in {} for {} (attempts {}): {why}",
            o.txid,
            o.kind,
            o.amount_sats,
            o.state,
            age_text(o.age_seconds),
            o.attempts
        );
    }
    out
}

/// `queue list|show|retry`.
pub(crate) fn queue_command(c: &Config, cmd: &crate::QueueCommand) -> Result<()> {
    let q = existing_queue(c)?;
    match cmd {
        crate::QueueCommand::List { json, state } => {
            for s in state {
                if s != "pending" && !STATES.contains(&s.as_str()) {
                    bail!("no state {s:?}: one of pending, {}", STATES.join(", "));
                }
            }
            let all: Vec<_> = q
                .all()?
                .into_iter()
                .filter(|o| {
                    state.is_empty()
                        || state.iter().any(|s| {
                            s == o.state.name() || (s == "pending" && !o.state.is_terminal())
                        })
                })
                .collect();
            let now = coordinator::metrics::unix_now();
            let mut rows = Vec::with_capacity(all.len());
            for o in &all {
                let since = q.history(&o.op.txid())?.last().map(|e| e.at_unix);
                rows.push((o, since.map(|t| now.saturating_sub(t))));
            }
            let text = if *json {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|(o, age)| serde_json::json!({"txid": o.op.txid().to_string(), "kind": kind_name(&o.op), "height": o.op.block_height().0, "state": o.state.name(), "amount_sats": o.op.amount().to_sat(), "recipient": coordinator::metrics::recipient(&o.op), "age_seconds": age, "attempts": o.attempts, "last_error": o.last_error, "waiting": o.waiting}))
                    .collect();
                format!("{}\n", serde_json::to_string_pretty(&rows)?)
            } else {
                list_text(&rows, state)
            };
            write_stdout(&text)?;
        }
        crate::QueueCommand::Show { txid, json } => {
            let o = q
                .get(txid)?
                .ok_or_else(|| anyhow!("no operation {txid} in the queue"))?;
            let history = q.history(txid)?;
            if *json {
                write_stdout(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&show_json(&o, &history)?)?
                ))?;
            } else {
                write_stdout(&show_text(&o, &history))?;
            }
        }
        crate::QueueCommand::Fail { txid, reason } => {
            let _lock = lock(c, "queue fail")?;
            let reason = reason.trim();
            if reason.is_empty() {
                bail!("say why: --reason TEXT is recorded with the op");
            }
            let o = q
                .get(txid)?
                .ok_or_else(|| anyhow!("no operation {txid} in the queue"))?;
            if o.state.is_terminal() {
                bail!(
                    "{txid} is {}: a terminal operation is not failed by hand",
                    o.state
                );
            }
            let next = OpState::Failed {
                reason: format!("operator: {reason}"),
            };
            q.set_state(txid, &next)?;
            log::warn!(
                "{} {txid}: {} -> {next} by the operator ({} sats, recipient {})",
                o.op.kind(),
                o.state.name(),
                o.op.amount().to_sat(),
                coordinator::metrics::recipient(&o.op)
            );
            println!("{txid}: {} -> {}", o.state.name(), next.name());
        }
        crate::QueueCommand::Retry { txid } => {
            let _lock = lock(c, "queue retry")?;
            let o = q
                .get(txid)?
                .ok_or_else(|| anyhow!("no operation {txid} in the queue"))?;
            let history = q.history(txid)?;
            let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
            let sender = PrincipalData::Standard(c.stacks_address());
            let reader = ContractReader {
                contract: &c.contract,
                sender: &sender,
                network: c.stacks_network,
            };
            let decision = retry_decision(
                &stacks,
                &bitcoin_node(c),
                &reader,
                c.stacks_confirmations,
                &o,
                &history,
            )
            .with_context(|| format!("reading what the chains show of {txid}"))?;
            let next = match decision {
                RetryDecision::To(next) => next,
                RetryDecision::Refused(why) => bail!("not retried: {why}"),
            };
            q.set_state(txid, &next)?;
            log::info!(
                "{} {txid}: {} -> {} by the operator's retry",
                o.op.kind(),
                o.state.name(),
                next.name()
            );
            coordinator::metrics::log_progress(&q, &o.op, &next);
            println!("{txid}: {} -> {}", o.state.name(), next.name());
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) is no error.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::from(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Seconds as `45s`, `12m`, `3h`, `2d`.
fn age_text(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `queue list`'s text: a header and one aligned row per op, or a line
/// saying there are none.
fn list_text(rows: &[(&peg_queue::QueuedOp, Option<u64>)], states: &[String]) -> String {
    use std::fmt::Write as _;
    if rows.is_empty() {
        return if states.is_empty() {
            "the queue holds no operations\n".to_owned()
        } else {
            format!("no operations in {}\n", states.join(" or "))
        };
    }
    let mut out = format!(
        "{:<64}  {:<15}  {:>8}  {:<20}  {:>16}  {:>5}  {:>8}  {}\n",
        "TXID", "KIND", "HEIGHT", "STATE", "AMOUNT (sats)", "AGE", "ATTEMPTS", "NOTE"
    );
    for (o, age) in rows {
        let note = o
            .waiting
            .as_deref()
            .map(|w| format!("waiting: {w}"))
            .or_else(|| o.state.reason().map(|r| format!("reason: {r}")))
            .or_else(|| o.last_error.as_deref().map(|e| format!("last error: {e}")))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<64}  {:<15}  {:>8}  {:<20}  {:>16}  {:>5}  {:>8}  {note}",
            o.op.txid(),
            kind_name(&o.op),
            o.op.block_height().0,
            o.state.name(),
            o.op.amount().to_sat(),
            age.map_or("?".into(), age_text),
            o.attempts,
        );
    }
    let _ = writeln!(out, "{} operation(s)", rows.len());
    out
}

/// `queue show --json`: the `/ops/{txid}` shape, its events in full (with
/// their sequence and reasons), and the op as stored.
fn show_json(o: &peg_queue::QueuedOp, history: &[peg_queue::OpEvent]) -> Result<serde_json::Value> {
    let mut v = coordinator::metrics::op_json(o, history);
    v["events"] = serde_json::to_value(history)?;
    v["op"] = match &o.op {
        PegOp::PegIn(p) => serde_json::to_value(p)?,
        PegOp::PegOutRequest(p) => serde_json::to_value(p)?,
    };
    v["state_data"] = serde_json::to_value(&o.state)?;
    v["attempts"] = o.attempts.into();
    v["last_error"] = o.last_error.clone().into();
    v["waiting"] = o.waiting.clone().into();
    Ok(v)
}

/// `queue show`: the op, its amount and recipient, and its history.
fn show_text(o: &peg_queue::QueuedOp, history: &[peg_queue::OpEvent]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<12} {v}");
    };
    line("txid", o.op.txid().to_string());
    line("kind", kind_name(&o.op).to_owned());
    line("state", o.state.to_string());
    line("amount", format!("{} sats", o.op.amount().to_sat()));
    line("recipient", coordinator::metrics::recipient(&o.op));
    if let PegOp::PegOutRequest(r) = &o.op {
        line("fee output", format!("{} sats", r.fulfillment_fee.to_sat()));
    }
    line(
        "block",
        format!(
            "{} (position {}, {})",
            o.op.block_height().0,
            match &o.op {
                PegOp::PegIn(p) => p.vtxindex,
                PegOp::PegOutRequest(r) => r.vtxindex,
            },
            o.op.burn_header_hash()
        ),
    );
    line("attempts", o.attempts.to_string());
    if let Some(e) = &o.last_error {
        line("last error", e.clone());
    }
    if let Some(w) = &o.waiting {
        line("waiting", w.clone());
    }
    let _ = writeln!(out, "history:");
    for e in history {
        let mut l = format!("  {:>3}  {}  {}", e.seq, utc(e.at_unix), e.state);
        if let Some(t) = e.stacks_txid {
            let _ = write!(l, "  stacks tx {t}");
        }
        if let Some(t) = e.bitcoin_txid {
            let _ = write!(l, "  bitcoin tx {t}");
        }
        if let Some(r) = &e.reason {
            let _ = write!(l, "  ({r})");
        }
        let _ = writeln!(out, "{l}");
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (days to civil date: Howard
/// Hinnant's algorithm).
fn utc(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `coins-repair`: makes the coin record agree with `scantxoutset` at every
/// key's address (the record is otherwise built from blocks alone).
pub(crate) fn coins_repair(c: &Config) -> Result<()> {
    let _lock = lock(c, "coins-repair")?;
    let frost = crate::frost::coordinator(c)?;
    let path = c.data_dir.join("coins.sqlite");
    let mut record = peg_coins::CoinRecord::open(&path, c.start_height.0)
        .with_context(|| format!("cannot open the coin record {}", path.display()))?;
    let node = bitcoin_node(c);
    for key in frost.keys() {
        let address = fee_wallet::peg_wallet_address(&key, c.network);
        let script = address.script_pubkey();
        record.watch(&script, c.start_height.0)?;
        let utxos = node
            .list_unspent(&script)
            .with_context(|| format!("scantxoutset of {address}"))?;
        let r = record.repair_from_scan(&script, &utxos)?;
        println!(
            "{address}: {} coins on the node; {} added, {} restored, {} removed",
            utxos.len(),
            r.added,
            r.restored,
            r.removed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
