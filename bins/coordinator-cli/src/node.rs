//! `run`, `process-peg-in/out`, `status` and `queue`: wiring the real crates.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin_node_client::{Auth, BitcoinNode, UreqBitcoinNode};
use coordinator::bitcoin::Txid;
use coordinator::config::{BitcoinAuth, Config, OpSourceKind};
use coordinator::lock::DataDirLock;
use coordinator::metrics::{StatusServer, StatusSnapshot};
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
use stacks_node_client::{StacksNode, UreqStacksNode};
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
        OpSourceKind::StacksNode => Box::new(StacksNodeSource::new(UreqStacksNode::new(
            &c.stacks_node_url,
            c.rpc_timeout,
        ))),
        OpSourceKind::Bitcoin => Box::new(BitcoinBlockSource::new(
            bitcoin_node(c),
            c.magic_bytes,
            c.network,
        )),
    }
}

pub(crate) fn queue(c: &Config) -> Result<SqlitePegQueue> {
    let path = c.data_dir.join("queue.sqlite");
    SqlitePegQueue::open(&path).with_context(|| format!("cannot open the queue {}", path.display()))
}

type Loop = coordinator::HttpCoordinator;

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
    let mut l = build(c, start_height)?;
    if let Some(h) = start_height {
        l.rescan_from(coordinator::bitcoin_height(h));
    }
    let key = l.components().frost.aggregate_public_key();
    let snapshot = Arc::new(Mutex::new(StatusSnapshot {
        aggregate_key: key.map(|k| k.to_string()),
        peg_wallet_address: key.map(|k| fee_wallet::peg_wallet_address(&k, c.network).to_string()),
        stacks_address: c.stacks_address().to_string(),
        ..StatusSnapshot::default()
    }));
    let _endpoint = match &c.status_listen {
        Some(addr) => Some(
            StatusServer::start(addr, l.metrics(), snapshot.clone())
                .with_context(|| format!("cannot serve the status endpoint on {addr}"))?,
        ),
        None => None,
    };
    l.run_observed(stop, |l| {
        let q = &l.components().queue;
        if let (Ok(ops), Ok(h), Ok(waiting), Ok(mut s)) = (
            q.counts(),
            q.last_scanned_height(),
            q.waiting(),
            snapshot.lock(),
        ) {
            s.ops = ops;
            s.last_scanned_height = h.map(|h| h.0);
            s.waiting = waiting;
            s.attestations = l.attestations().to_vec();
        }
    })
    .context("the coordinator loop stopped")
}

/// `process-peg-in` / `process-peg-out`: find one op (in the queue, else on
/// chain) and drive it as far as it goes now.
pub(crate) fn process(c: &Config, txid: Txid, kind: PegOpKind, stop: &AtomicBool) -> Result<()> {
    let _lock = lock(c, &format!("process-{kind}"))?;
    let mut l = build(c, None)?;
    let known = l.components().queue.get(&txid)?;
    if known.is_none() {
        let status = bitcoin_node(c)
            .get_raw_transaction(&txid)
            .context("looking the transaction up on the Bitcoin node")?
            .ok_or_else(|| anyhow!("the Bitcoin node does not know transaction {txid}"))?;
        if status.confirmations == 0 {
            bail!("transaction {txid} is not confirmed yet");
        }
        let tip = bitcoin_node(c).get_block_count()?;
        let height = tip
            .saturating_add(1)
            .checked_sub(u64::from(status.confirmations))
            .ok_or_else(|| {
                anyhow!(
                    "the node reports {} confirmations at tip {tip}",
                    status.confirmations
                )
            })?;
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

/// `status`: queue, balances and key; a failing node shows as an error field.
pub(crate) fn status(c: &Config, json: bool) -> Result<()> {
    let q = queue(c)?;
    let stacks = UreqStacksNode::new(&c.stacks_node_url, c.rpc_timeout);
    let me = PrincipalData::Standard(c.stacks_address());
    let account = stacks.get_account(&me);
    if let Ok(a) = &account {
        if a.balance < u128::from(c.fees.stx_low_balance_warning) {
            log::warn!(
                "the coordinator's STX balance ({} µSTX) is below the warning threshold",
                a.balance
            );
        }
    }
    let key = contract_wallet_key(&stacks, &c.contract, &me);
    let peg = key
        .as_ref()
        .ok()
        .and_then(|k| *k)
        .map(|k| fee_wallet::peg_wallet_address(&k, c.network));
    let peg_balance = peg.as_ref().map(|a| {
        bitcoin_node(c)
            .list_unspent(&a.script_pubkey())
            .map(|u| u.iter().map(|u| u.txout.value.to_sat()).sum::<u64>())
    });
    let err = |e: &dyn std::fmt::Display| serde_json::json!({ "error": e.to_string() });
    let v = serde_json::json!({
        "last_scanned_height": q.last_scanned_height()?.map(|h| h.0),
        "ops": q.counts()?,
        "waiting": q.waiting()?,
        "stacks_address": me.to_string(),
        "stx_balance": account.as_ref().map(|a| serde_json::json!(a.balance.to_string())).unwrap_or_else(|e| err(e)),
        "stacks_nonce": account.as_ref().map(|a| serde_json::json!(a.nonce)).unwrap_or_else(|e| err(e)),
        "aggregate_key": key.as_ref().map(|k| serde_json::json!(k.map(|k| k.to_string()))).unwrap_or_else(|e| err(e)),
        "peg_wallet_address": peg.as_ref().map(|a| a.to_string()),
        "peg_wallet_sats": match peg_balance {
            None => serde_json::Value::Null,
            Some(Ok(s)) => serde_json::json!(s),
            Some(Err(e)) => err(&e),
        },
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (k, val) in v.as_object().into_iter().flatten() {
            println!("{k:<20} {val}");
        }
    }
    Ok(())
}

/// `queue list|show|retry`.
pub(crate) fn queue_command(c: &Config, cmd: &crate::QueueCommand) -> Result<()> {
    let q = queue(c)?;
    match cmd {
        crate::QueueCommand::List { json } => {
            let all = q.all()?;
            if *json {
                let rows: Vec<_> = all
                    .iter()
                    .map(|o| serde_json::json!({"txid": o.op.txid().to_string(), "kind": o.op.kind(), "height": o.op.block_height().0, "state": o.state.name(), "attempts": o.attempts, "last_error": o.last_error, "waiting": o.waiting}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for o in all {
                    println!(
                        "{}  {:<8} {:>8}  {}  attempts {}{}",
                        o.op.txid(),
                        o.op.kind().to_string(),
                        o.op.block_height().0,
                        o.state,
                        o.attempts,
                        o.waiting
                            .as_deref()
                            .map(|w| format!("  waiting: {w}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        crate::QueueCommand::Show { txid } => {
            let o = q
                .get(txid)?
                .ok_or_else(|| anyhow!("no operation {txid} in the queue"))?;
            let op = match &o.op {
                PegOp::PegIn(p) => serde_json::to_value(p)?,
                PegOp::PegOutRequest(p) => serde_json::to_value(p)?,
            };
            let v = serde_json::json!({"kind": o.op.kind(), "op": op, "state": o.state, "attempts": o.attempts, "last_error": o.last_error, "waiting": o.waiting});
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        crate::QueueCommand::Retry { txid } => {
            let _lock = lock(c, "queue retry")?;
            let o = q
                .get(txid)?
                .ok_or_else(|| anyhow!("no operation {txid} in the queue"))?;
            let next = match o.state {
                // Nothing happened on chain: validate again.
                OpState::Rejected { .. } => OpState::Detected,
                // A mint or burn was mined without effect: sign a new one (the
                // contract refuses a second effect for the same Bitcoin txid).
                OpState::Failed { .. } => OpState::Accepted,
                OpState::Refunded => {
                    bail!("{txid} is refunded: terminal, never retried nor minted")
                }
                other => bail!(
                    "{txid} is {other}; only rejected or failed operations are retried by hand"
                ),
            };
            q.set_state(txid, &next)?;
            println!("{txid}: {} -> {}", o.state.name(), next.name());
        }
    }
    Ok(())
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
