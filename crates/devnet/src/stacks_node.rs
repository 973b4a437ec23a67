//! A real stacks-node (mocknet) for tests: [`RealStacksNode::start`] writes a
//! per-run configuration, starts the binary named by `STACKS_NODE_EXE`, waits
//! until its RPC answers, and on drop kills it and removes its folder.
//!
//! The configuration holds what a released stacks-node (4.0.2) needs to boot
//! in mocknet: a fresh `working_dir` (a restart on an old folder starts a new
//! chain anyway), free `rpc_bind`/`p2p_bind` ports on 127.0.0.1, the test
//! genesis chainstate, the complete epoch list (2.1 from burn height 2, every
//! later epoch parked about a million burn blocks out, so the node stays in
//! Clarity 2) and `[[ustx_balance]]` entries for the accounts a test needs.
//!
//! [`RealStacksNode::deploy_sbtc`] deploys `contracts/sip-010-trait.clar` then
//! `contracts/sbtc-alpha.clar` as Clarity 2 (versioned smart-contract
//! payloads) and waits until a read-only call answers.
//!
//! Nothing here is for real money; the node is a separate (GPL) process,
//! never linked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use stacks_node_client::{StacksNode, UreqStacksNode};
use stacks_wire::{
    ClarityVersion, ContractId, Payload, PostConditionMode, PrincipalData, StacksAddress,
    StacksNetwork, StacksPrivateKey, StacksTransaction,
};

/// The environment variable naming the stacks-node binary.
pub const STACKS_NODE_EXE: &str = "STACKS_NODE_EXE";

/// The SIP-010 trait the sBTC contract implements.
pub const SIP_010_TRAIT: &str = include_str!("../../../contracts/sip-010-trait.clar");
/// The sBTC alpha contract.
pub const SBTC_ALPHA: &str = include_str!("../../../contracts/sbtc-alpha.clar");

/// The burn height where the configuration starts epoch 2.1.
const EPOCH_2_1_HEIGHT: u64 = 2;

/// How long the node may take to answer `/v2/info` after launch (measured:
/// 0.3–0.4 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `STACKS_NODE_EXE` points, if it is set.
///
/// # Errors
/// When it is set but names no file: a test must then fail, not skip.
pub fn exe_from_env() -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(STACKS_NODE_EXE) {
        None => Ok(None),
        Some(p) if p.is_empty() => Ok(None),
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_file() {
                Ok(Some(p))
            } else {
                bail!("{STACKS_NODE_EXE}={} names no file", p.display())
            }
        }
    }
}

/// How to start the node.
#[derive(Debug, Clone)]
pub struct RealNodeOptions {
    /// Accounts funded at genesis, µSTX.
    pub balances: Vec<(StacksAddress, u64)>,
    /// `burnchain.commit_anchor_block_within`, ms: about the block interval
    /// (1000 gives a block every ~1 s).
    pub block_interval_ms: u64,
}

impl Default for RealNodeOptions {
    fn default() -> Self {
        RealNodeOptions {
            balances: Vec::new(),
            block_interval_ms: 1000,
        }
    }
}

/// A running stacks-node in mocknet, killed and cleaned up on drop.
#[derive(Debug)]
pub struct RealStacksNode {
    child: Child,
    dir: PathBuf,
    url: String,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "sbtc-stacks-node-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The configuration file for one run.
fn config(dir: &Path, rpc: u16, p2p: u16, o: &RealNodeOptions) -> String {
    let mut c = format!(
        "[node]\n\
         working_dir = \"{}\"\n\
         rpc_bind = \"127.0.0.1:{rpc}\"\n\
         p2p_bind = \"127.0.0.1:{p2p}\"\n\
         miner = true\n\
         mock_mining = true\n\
         seed = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
         use_test_genesis_chainstate = true\n\
         \n\
         [burnchain]\n\
         mode = \"mocknet\"\n\
         commit_anchor_block_within = {}\n",
        dir.join("chain").display(),
        o.block_interval_ms
    );
    // 4.0.2 boots mocknet only with a complete epoch list: 2.1 from burn
    // height 2, the rest parked far out (3.0 and 4.0 at offset 2 of a
    // 5-block reward cycle).
    for (name, height) in [
        ("1.0", 0),
        ("2.0", 0),
        ("2.05", 1),
        ("2.1", EPOCH_2_1_HEIGHT),
        ("2.2", 1_000_000),
        ("2.3", 1_000_000),
        ("2.4", 1_000_000),
        ("2.5", 1_000_000),
        ("3.0", 1_000_017),
        ("3.1", 1_000_100),
        ("3.2", 1_000_200),
        ("3.3", 1_000_300),
        ("3.4", 1_000_400),
        ("4.0", 1_000_502),
    ] {
        let _ = write!(
            c,
            "\n[[burnchain.epochs]]\nepoch_name = \"{name}\"\nstart_height = {height}\n"
        );
    }
    for (who, ustx) in &o.balances {
        let _ = write!(
            c,
            "\n[[ustx_balance]]\naddress = \"{who}\"\namount = {ustx}\n"
        );
    }
    c
}

impl RealStacksNode {
    /// Starts the binary named by `STACKS_NODE_EXE` and waits until it is in
    /// epoch 2.1 (a few seconds); `Ok(None)` when that is not set (the
    /// caller skips).
    ///
    /// # Errors
    /// When the variable names no file, the node does not start, or its RPC
    /// does not answer within a minute (the error holds its log's tail).
    pub fn start(options: &RealNodeOptions) -> anyhow::Result<Option<Self>> {
        let Some(exe) = exe_from_env()? else {
            return Ok(None);
        };
        Self::start_exe(&exe, options).map(Some)
    }

    /// Starts `exe` (a stacks-node binary).
    ///
    /// # Errors
    /// As [`RealStacksNode::start`].
    pub fn start_exe(exe: &Path, options: &RealNodeOptions) -> anyhow::Result<Self> {
        // stacks-node 4.0.2 sometimes aborts at boot with its own SQLite
        // "database is locked" (opening the cost estimator while another of
        // its threads holds the file), more often on a loaded machine: a
        // fresh start is the node's own remedy. Any other failure is final.
        let mut attempt = 1;
        loop {
            match Self::start_once(exe, options) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("database is locked") => {
                    log::warn!(
                        "stacks-node aborted at boot on its own SQLite lock (attempt {attempt}); starting it again"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(exe: &Path, options: &RealNodeOptions) -> anyhow::Result<Self> {
        let dir = fresh_dir()?;
        let child = match Self::spawn(exe, &dir, options) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let (child, rpc) = child;
        // From here on, drop kills the node and removes the folder.
        let mut node = RealStacksNode {
            child,
            dir,
            url: format!("http://127.0.0.1:{rpc}"),
        };
        node.wait_for_rpc()?;
        Ok(node)
    }

    fn spawn(exe: &Path, dir: &Path, options: &RealNodeOptions) -> anyhow::Result<(Child, u16)> {
        let (rpc, p2p) = (free_port()?, free_port()?);
        let conf = dir.join("stacks-node.toml");
        std::fs::write(&conf, config(dir, rpc, p2p, options))
            .with_context(|| format!("writing {}", conf.display()))?;
        let log = std::fs::File::create(dir.join("node.log")).context("creating node.log")?;
        let child = Command::new(exe)
            .arg("start")
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok((child, rpc))
    }

    fn wait_for_rpc(&mut self) -> anyhow::Result<()> {
        let client = self.client();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "stacks-node exited with {status} before its RPC answered; log:\n{}",
                    self.log_tail(40)
                );
            }
            // Epoch 2.1 (Clarity 2) starts at burn height 2; before it the
            // node refuses Clarity 2 deploys (as `SignatureValidation`).
            if client
                .get_info()
                .is_ok_and(|i| i.burn_block_height > EPOCH_2_1_HEIGHT)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "stacks-node RPC did not answer within {BOOT_TIMEOUT:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The RPC's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client of the node's RPC.
    pub fn client(&self) -> UreqStacksNode {
        UreqStacksNode::new(&self.url, Duration::from_secs(10))
    }

    /// The last `lines` lines of the node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `who`'s confirmed nonce reaches `nonce`.
    ///
    /// # Errors
    /// When it does not within `timeout`.
    pub fn wait_for_nonce(
        &self,
        who: &StacksAddress,
        nonce: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = self.client();
        let me = PrincipalData::Standard(*who);
        let deadline = Instant::now() + timeout;
        loop {
            match client.get_account(&me) {
                Ok(a) if a.nonce >= nonce => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("{who}'s nonce did not reach {nonce} within {timeout:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Deploys `sip-010-trait` then `sbtc-alpha` as Clarity 2 from
    /// `deployer` (nonces 0 and 1, 1 µSTX per byte plus a margin), and waits
    /// until `get-threshold` answers. Returns the sBTC contract's id.
    ///
    /// # Errors
    /// When a broadcast is refused or the contract is not callable within a
    /// minute (the error holds the node's log tail).
    pub fn deploy_sbtc(&self, deployer: &StacksPrivateKey) -> anyhow::Result<ContractId> {
        let client = self.client();
        let owner = deployer.address(StacksNetwork::Testnet);
        let start = client
            .get_account(&PrincipalData::Standard(owner))
            .map_err(|e| anyhow!("deployer account: {e}"))?
            .nonce;
        for (i, (name, code)) in [("sip-010-trait", SIP_010_TRAIT), ("sbtc-alpha", SBTC_ALPHA)]
            .into_iter()
            .enumerate()
        {
            let tx = deploy_tx(deployer, name, code, start + i as u64)?;
            client
                .broadcast_transaction(&tx.serialize())
                .map_err(|e| anyhow!("deploying {name}: {e}; log:\n{}", self.log_tail(20)))?;
        }
        let id: ContractId = format!("{owner}.sbtc-alpha")
            .parse()
            .map_err(|e| anyhow!("contract id: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.call_read(&id, "get-threshold", &[], &PrincipalData::Standard(owner)) {
                Ok(_) => return Ok(id),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "sbtc-alpha not callable within a minute: {e}; log:\n{}",
                        self.log_tail(30)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// A signed Clarity 2 deploy of `code` as `name`, paying 1 µSTX per byte
/// plus a margin.
///
/// # Errors
/// When the code is not printable ASCII or the name is invalid.
pub fn deploy_tx(
    key: &StacksPrivateKey,
    name: &str,
    code: &str,
    nonce: u64,
) -> anyhow::Result<StacksTransaction> {
    let payload = Payload::SmartContract {
        name: name.parse().map_err(|e| anyhow!("{name}: {e}"))?,
        code_body: code.to_owned(),
        clarity_version: Some(ClarityVersion::Clarity2),
    };
    let build = |fee| {
        StacksTransaction::new(
            StacksNetwork::Testnet,
            key,
            nonce,
            fee,
            PostConditionMode::Allow,
            vec![],
            payload.clone(),
        )
        .map_err(|e| anyhow!("deploy of {name}: {e}"))
    };
    let len = build(0)?.serialize().len() as u64;
    let mut tx = build(len + 1000)?;
    tx.sign(key).map_err(|e| anyhow!("signing: {e}"))?;
    Ok(tx)
}

impl Drop for RealStacksNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            log::error!(
                "stacks-node at {} (folder {}), last log lines:\n{}",
                self.url,
                self.dir.display(),
                self.log_tail(30)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
