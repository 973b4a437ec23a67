//! A whole peg on this machine: both emulated nodes, the relay, the signers,
//! and everything a coordinator needs to talk to them — in this process, or
//! (through [`Peg::write_config`]) in a `coordinator-cli` process.
//!
//! `coordinator-cli devnet`, the end-to-end tests and the benchmarks all
//! build their peg here, so they exercise the same setup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, ScriptBuf};
use bitcoin_node_client::{Auth, UreqBitcoinNode};
use coordinator::config::OpSourceKind;
use coordinator::{
    Allowlist, BitcoinBlockSource, Components, HttpCoordinator, LoopSettings, OpSource, PegChecks,
    StacksCoordinator, StacksNodeSource,
};
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy,
};
use frost_coordinator::{
    RelayCoordinatorOptions, RelayFrostCoordinator, SignerFile, SignerInfo, SignerSet,
};
use frost_net::SignRequest;
use frost_signer::{KeyHistory, SignerNode, SignerOptions, Validator};
use peg_ops::{BurnHeight, PegOp};
use peg_queue::SqlitePegQueue;
use peg_rules::PolicyFile;
use relay::{RelayConfig, RelayServer};
use signer_guard::{
    BitcoinNodeConfig, Confirmations, Guard, GuardConfig, GuardStatus, StacksNodeConfig,
};
use stacks_node_client::UreqStacksNode;
use stacks_wire::{ContractId, Payload, PrincipalData, StacksNetwork, StacksPrivateKey, Value};

use crate::latency::LatencyLink;
use crate::server::lock;
use crate::{BitcoinEmulator, BitcoinState, Proxy, StacksEmulator, StacksState, User};

/// The OP_RETURN magic bytes of the devnet (Bitcoin regtest's `id`).
pub const MAGIC: [u8; 2] = *b"id";

/// How big a peg to start.
#[derive(Debug, Clone)]
pub struct PegOptions {
    /// Where the queue, FROST and signer state and config files live.
    pub dir: PathBuf,
    /// Signers, one key each.
    pub signers: u32,
    /// Keys a signature needs.
    pub threshold: u32,
    /// How long the coordinator waits for a signing round.
    pub sign_timeout: Duration,
    /// How long signers long-poll the relay.
    pub signer_poll: Duration,
    /// Whether signers join a DKG while they hold a key (`--allow-rotation`).
    pub allow_rotation: bool,
    /// The seeds of the users (`User::new(_, seed)`, as [`Peg::users`]
    /// makes them) on the allowlist of the signer file's `[policy]`: what
    /// the signers' guards allow. The coordinator's own allowlist (in
    /// [`Peg::settings`]) may be stricter.
    pub allowlist: Vec<u8>,
    /// Bitcoin confirmations the signers (and the coordinator) want.
    pub bitcoin_confirmations: u32,
    /// Stacks confirmations the signers (and the coordinator) want: a value
    /// is final at the block `stacks_confirmations − 1` below the tip.
    pub stacks_confirmations: u32,
    /// The signers (1-based ids) that read both nodes through a [`Proxy`]
    /// of their own ([`Peg::bitcoin_proxy`], [`Peg::stacks_proxy`]), so a
    /// test can make their nodes lie; the others read the emulators.
    pub proxied: Vec<u32>,
    /// How many signing rounds the coordinator keeps in flight at once
    /// ([`Peg::frost`]; the benchmark compares 1 and more).
    pub rounds_in_flight: usize,
    /// The most mints (or burns) one Stacks transaction of the coordinator
    /// carries ([`Peg::settings`]; 1: one `mint!`/`burn!` per op).
    pub stacks_batch: usize,
    /// How far the relay is from the signers and the coordinator, each
    /// way: zero (the default) connects them straight to it; more puts a
    /// [`LatencyLink`] in between, as a relay across a real network.
    pub relay_latency: Duration,
}

impl PegOptions {
    /// Five signers, threshold three, state in `dir`, users 1–64 allowed,
    /// one confirmation on each chain, no proxies.
    pub fn new(dir: &Path) -> Self {
        PegOptions {
            dir: dir.to_owned(),
            signers: 5,
            threshold: 3,
            sign_timeout: Duration::from_secs(5),
            signer_poll: Duration::from_millis(300),
            allow_rotation: false,
            allowlist: (1..=64).collect(),
            bitcoin_confirmations: 1,
            stacks_confirmations: 1,
            proxied: Vec::new(),
            rounds_in_flight: frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
            stacks_batch: coordinator::DEFAULT_STACKS_BATCH,
            relay_latency: Duration::ZERO,
        }
    }
}

/// Both chains, shared with a miner thread. Lock order: Bitcoin, then Stacks.
#[derive(Clone)]
struct Chains {
    bitcoin: Arc<Mutex<BitcoinState>>,
    stacks: Arc<Mutex<StacksState>>,
}

impl Chains {
    /// Tells the stacks-node what the Bitcoin chain holds: its burn height
    /// and the peg ops of every block (as `/v2/burn_ops` serves them).
    fn sync_burn_ops(b: &BitcoinState, s: &mut StacksState) {
        let height = b.height();
        s.burn_ops.retain(|h, _| *h <= height);
        s.burn_hashes.retain(|h, _| *h <= height);
        // Read the heights whose block is new or changed (a reorg).
        let mut h = height;
        while h > 0 {
            let Some(block) = b.block(h) else { break };
            let hash = block.block_hash();
            if s.burn_hashes.get(&h) == Some(&hash) {
                break;
            }
            let (ops, _) =
                peg_ops::wire::parse_block(block, BurnHeight(h), MAGIC, Network::Regtest);
            let (mut ins, mut outs) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    PegOp::PegIn(o) => ins.push(o),
                    PegOp::PegOutRequest(o) => outs.push(o),
                }
            }
            s.burn_ops.insert(h, (ins, outs));
            s.burn_hashes.insert(h, hash);
            h -= 1;
        }
        s.burn_height = height;
    }

    fn mine_bitcoin(&self) -> BlockHash {
        let mut b = lock(&self.bitcoin);
        let hash = b.mine(&burn_script());
        Self::sync_burn_ops(&b, &mut lock(&self.stacks));
        hash
    }

    fn mine_stacks(&self) -> usize {
        lock(&self.stacks).mine()
    }
}

/// Which chains [`Peg::run_until`] advances between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// A Bitcoin and a Stacks block.
    Both,
    /// A Stacks block only: Bitcoin stands still (a reorg test's pause).
    StacksOnly,
}

/// Where coinbases of blocks nobody owns go.
pub fn burn_script() -> ScriptBuf {
    ScriptBuf::new_op_return([0u8])
}

/// A background miner: a Bitcoin and a Stacks block every interval, until
/// dropped.
#[derive(Debug)]
pub struct Miner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct RunningSigner {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A signer's [`Guard`] as the devnet runs it: told the keys its signer
/// holds whenever the signer's key history file changes (after a DKG), and
/// sharing what it saw last ([`GuardStatus`]) with the test.
pub(crate) struct DevnetGuard {
    guard: Guard<UreqBitcoinNode, UreqStacksNode>,
    history: PathBuf,
    set: SignerSet,
    id: u32,
    seen: Option<(std::time::SystemTime, u64)>,
    status: Arc<Mutex<GuardStatus>>,
    /// CPU time this guard's checks took on their own thread, added to a
    /// total shared by the peg's guards (ns).
    cpu: Arc<AtomicU64>,
}

/// The CPU time the calling thread has used so far (Linux's
/// `/proc/thread-self/schedstat`, in ns), if readable.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

impl DevnetGuard {
    /// The guard of signer `id`, whose key history is the file `history`.
    ///
    /// # Errors
    /// When the guard's configuration does not fit or its files cannot be
    /// opened.
    pub(crate) fn open(
        config: &GuardConfig,
        file: &SignerFile,
        file_path: &Path,
        history: &Path,
        id: u32,
        status: Arc<Mutex<GuardStatus>>,
        cpu: Arc<AtomicU64>,
    ) -> Result<DevnetGuard> {
        let keys: Vec<PublicKey> = KeyHistory::load(history, &file.set, id)
            .map_err(|e| anyhow!("signer {id}'s key history: {e}"))?
            .keys
            .iter()
            .map(|k| k.aggregate_key)
            .collect();
        let guard = Guard::open(config, file, file_path, &keys)
            .with_context(|| format!("signer {id}'s guard"))?;
        let mut g = DevnetGuard {
            guard,
            history: history.to_owned(),
            set: file.set.clone(),
            id,
            seen: None,
            status,
            cpu,
        };
        g.seen = g.stamp();
        Ok(g)
    }

    fn stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(&self.history).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Tells the guard the keys of the signer's history when the file changed.
    fn refresh(&mut self) {
        let now = self.stamp();
        if now == self.seen {
            return;
        }
        match KeyHistory::load(&self.history, &self.set, self.id) {
            Ok(h) => {
                let keys: Vec<PublicKey> = h.keys.iter().map(|k| k.aggregate_key).collect();
                match self.guard.set_keys(&keys) {
                    Ok(()) => self.seen = now,
                    Err(e) => log::warn!("signer {}'s guard: keys not updated: {e}", self.id),
                }
            }
            Err(e) => log::warn!("signer {}'s key history: {e}", self.id),
        }
    }

    fn share_status(&self) {
        *lock(&self.status) = self.guard.status().clone();
    }
}

impl Validator for DevnetGuard {
    fn check(&mut self, request: &SignRequest) -> std::result::Result<(), String> {
        let before = thread_cpu_ns();
        self.refresh();
        let r = self.guard.check(request);
        self.share_status();
        if let (Some(a), Some(b)) = (before, thread_cpu_ns()) {
            self.cpu.fetch_add(b.saturating_sub(a), Ordering::Relaxed);
        }
        r
    }

    fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> bool {
        self.guard.will_sign(key, digest)
    }

    fn attest(&mut self) -> Option<PublicKey> {
        self.refresh();
        let r = self.guard.attest();
        self.share_status();
        r
    }

    fn held_keys(&mut self, keys: &[PublicKey]) {
        match self.guard.set_keys(keys) {
            Ok(()) => self.seen = self.stamp(),
            Err(e) => log::warn!("signer {}'s guard: keys not updated: {e}", self.id),
        }
    }
}

/// Writes the signers' copy of the signer file and its allowlist in
/// `dir/signers/`, returns the signer file's path.
pub(crate) fn write_signer_file(
    dir: &Path,
    file: &SignerFile,
    allowed: &[User],
) -> Result<PathBuf> {
    let d = dir.join("signers");
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    std::fs::write(d.join("allowlist.toml"), allowlist_toml(allowed.iter()))?;
    let path = d.join("signer.toml");
    std::fs::write(&path, toml::to_string(file).context("the signer file")?)?;
    Ok(path)
}

/// An allowlist file of `users`.
pub(crate) fn allowlist_toml<'a>(users: impl Iterator<Item = &'a User> + Clone) -> String {
    let list = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "stacks = [{}]\nbitcoin = [{}]\n",
        list(users.clone().map(|u| u.stx.to_string()).collect()),
        list(users.map(|u| u.btc.to_string()).collect()),
    )
}

/// The signer file's `[policy]` for the devnet: the fees the coordinator
/// uses (floor 2, cap 100 sat/vB, no subsidy), the allowlist next to it.
pub(crate) fn devnet_policy() -> PolicyFile {
    PolicyFile {
        allowlist_file: Some("allowlist.toml".into()),
        fee_rate_floor: 2,
        fee_rate_cap: 100,
        ..PolicyFile::default()
    }
}

/// The devnet: emulated bitcoind and stacks-node, the relay, the signers.
pub struct Peg {
    /// The emulated bitcoind.
    pub bitcoind: BitcoinEmulator,
    /// The emulated stacks-node, with the sBTC contract deployed.
    pub stacks: StacksEmulator,
    /// The relay signers and coordinator talk through.
    pub relay: RelayServer,
    /// The delay between the relay and its clients, when
    /// [`PegOptions::relay_latency`] asks for one (held to keep it running).
    _relay_link: Option<LatencyLink>,
    /// The sBTC contract.
    pub contract: ContractId,
    opts: PegOptions,
    file: SignerFile,
    file_path: PathBuf,
    signers: Vec<Option<RunningSigner>>,
    statuses: Vec<Arc<Mutex<GuardStatus>>>,
    validation_cpu: Arc<AtomicU64>,
    proxies: BTreeMap<u32, (Proxy, Proxy)>,
    guard_start: u64,
    stacks_key: StacksPrivateKey,
    coordinator_key: SecretKey,
}

impl std::fmt::Debug for Peg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peg")
            .field("bitcoind", &self.bitcoind.url())
            .field("stacks", &self.stacks.url())
            .field("relay", &self.relay.url())
            .field("signers", &self.opts.signers)
            .finish()
    }
}

fn key(tag: u8, i: u32) -> Result<SecretKey> {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).context("devnet key")
}

impl Peg {
    /// Starts both emulators, the relay and every signer. The coordinator's
    /// Stacks account deployed the contract, is its coordinator, and holds
    /// 1,000 STX for fees.
    ///
    /// # Errors
    /// When a server cannot bind or a signer cannot start.
    pub fn start(opts: PegOptions) -> Result<Peg> {
        let secp = Secp256k1::new();
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let bitcoind = BitcoinEmulator::start("127.0.0.1:0", BitcoinState::new())?;
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default())?;
        let relay_link = if opts.relay_latency.is_zero() {
            None
        } else {
            Some(LatencyLink::start(relay.addr(), opts.relay_latency)?)
        };
        let relay_url = relay_link
            .as_ref()
            .map_or_else(|| relay.url(), LatencyLink::url);
        let coordinator_key = key(0xc0, 0)?;
        let set = SignerSet {
            threshold: opts.threshold,
            dkg_threshold: None,
            signers: (0..opts.signers)
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
        let stacks_key = StacksPrivateKey {
            key: key(0xaa, 0)?,
            compressed: true,
        };
        let me = stacks_key.address(StacksNetwork::Testnet);
        let contract: ContractId = format!("{me}.sbtc-alpha").parse()?;
        let file = SignerFile {
            relay_url: relay_url.clone(),
            coordinator_public_key: coordinator_key.public_key(&secp),
            state_dir: None,
            network: Some("regtest".into()),
            contract: Some(contract.to_string()),
            magic_bytes: Some(String::from_utf8_lossy(&MAGIC).into_owned()),
            policy: devnet_policy(),
            set,
        };
        let allowed: Vec<User> = opts
            .allowlist
            .iter()
            .map(|i| User::new(&format!("user-{i}"), *i))
            .collect();
        let file_path = write_signer_file(&opts.dir, &file, &allowed)?;
        let mut state = StacksState::new(contract.clone());
        state.fund(me, 1_000_000_000);
        state.model.coordinator = Some((
            me.into(),
            coordinator_key.public_key(&secp).serialize().to_vec(),
        ));
        let stacks = StacksEmulator::start("127.0.0.1:0", state)?;
        let mut proxies = BTreeMap::new();
        for id in &opts.proxied {
            let b = Proxy::start(&bitcoind.url(), Duration::from_secs(30))?;
            let s = Proxy::start(&stacks.url(), Duration::from_secs(30))?;
            proxies.insert(*id, (b, s));
        }
        let guard_start = bitcoind.with(|b| b.height()) + 1;
        let mut peg = Peg {
            bitcoind,
            stacks,
            relay,
            _relay_link: relay_link,
            contract,
            signers: (0..opts.signers).map(|_| None).collect(),
            statuses: (0..opts.signers).map(|_| Arc::default()).collect(),
            validation_cpu: Arc::default(),
            proxies,
            guard_start,
            opts,
            file,
            file_path,
            stacks_key,
            coordinator_key,
        };
        for id in 1..=peg.opts.signers {
            peg.start_signer(id)?;
        }
        Ok(peg)
    }

    /// Starts signer `id` (1-based) if it is not running; it resumes from
    /// its saved state.
    ///
    /// # Errors
    /// When `id` is unknown or its state cannot be read.
    pub fn start_signer(&mut self, id: u32) -> Result<()> {
        let running = id
            .checked_sub(1)
            .and_then(|i| self.signers.get(i as usize))
            .ok_or_else(|| anyhow!("no signer {id}"))?;
        if running.is_some() {
            return Ok(());
        }
        let state_path = self.opts.dir.join(format!("signer-{id}.json"));
        let (bitcoin_url, stacks_url) = match self.proxies.get(&id) {
            Some((b, s)) => (b.url(), s.url()),
            None => (self.bitcoind.url(), self.stacks.url()),
        };
        let config = GuardConfig {
            bitcoin_node: BitcoinNodeConfig {
                url: bitcoin_url,
                user: None,
                password: None,
                cookie_file: None,
            },
            stacks_node: StacksNodeConfig { url: stacks_url },
            confirmations: Confirmations {
                bitcoin: self.opts.bitcoin_confirmations,
                stacks: self.opts.stacks_confirmations,
            },
            start_height: self.guard_start,
            data_dir: self.opts.dir.join(format!("guard-{id}")),
            rpc_timeout_ms: 30_000,
        };
        let status = self
            .statuses
            .get(id as usize - 1)
            .cloned()
            .ok_or_else(|| anyhow!("no signer {id}"))?;
        let guard = DevnetGuard::open(
            &config,
            &self.file,
            &self.file_path,
            &state_path,
            id,
            status,
            self.validation_cpu.clone(),
        )?;
        let mut node = SignerNode::new(SignerOptions {
            id,
            file: self.file.clone(),
            private_key: key(0x5e, id - 1)?,
            state_path,
            poll_wait: self.opts.signer_poll,
            allow_rotation: self.opts.allow_rotation,
            attest_interval: frost_signer::ATTEST_INTERVAL,
        })
        .with_context(|| format!("starting signer {id}"))?;
        node.set_validator(Box::new(guard));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("signer-{id}"))
            .spawn(move || node.run(&s))
            .with_context(|| format!("starting signer {id}'s thread"))?;
        if let Some(slot) = self.signers.get_mut(id as usize - 1) {
            *slot = Some(RunningSigner { stop, thread });
        }
        Ok(())
    }

    /// The CPU time every signer's guard has spent checking sign requests
    /// so far, summed over the signers (each measured on its own thread;
    /// what the nodes spent answering it is not included).
    pub fn validation_cpu(&self) -> Duration {
        Duration::from_nanos(self.validation_cpu.load(Ordering::Relaxed))
    }

    /// Stops signer `id` (1-based): it no longer answers the relay.
    pub fn stop_signer(&mut self, id: u32) {
        let slot = id
            .checked_sub(1)
            .and_then(|i| self.signers.get_mut(i as usize));
        if let Some(s) = slot.and_then(Option::take) {
            s.stop.store(true, Ordering::SeqCst);
            let _ = s.thread.join();
        }
    }

    /// What signer `id`'s guard saw last (its status): the published key
    /// and whether it is ours, its last refusal and node error.
    pub fn signer_status(&self, id: u32) -> Option<GuardStatus> {
        let i = id.checked_sub(1)? as usize;
        self.statuses.get(i).map(|s| lock(s).clone())
    }

    /// The proxy in front of the bitcoind of signer `id`, when
    /// [`PegOptions::proxied`] names it.
    pub fn bitcoin_proxy(&self, id: u32) -> Option<&Proxy> {
        self.proxies.get(&id).map(|(b, _)| b)
    }

    /// The proxy in front of the stacks-node of signer `id`, when
    /// [`PegOptions::proxied`] names it.
    pub fn stacks_proxy(&self, id: u32) -> Option<&Proxy> {
        self.proxies.get(&id).map(|(_, s)| s)
    }

    /// The coordinator's relay message key: what an attacker who stole it
    /// holds (attack tests sign with it).
    pub fn coordinator_message_key(&self) -> SecretKey {
        self.coordinator_key
    }

    /// The coordinator's Stacks key (the contract's coordinator): what an
    /// attacker who stole it holds.
    pub fn coordinator_stacks_key(&self) -> StacksPrivateKey {
        self.stacks_key
    }

    /// The signer set file the signers read, with its `[policy]`.
    pub fn signer_file(&self) -> &SignerFile {
        &self.file
    }

    /// The options the peg was started with.
    pub fn options(&self) -> &PegOptions {
        &self.opts
    }

    fn chains(&self) -> Chains {
        Chains {
            bitcoin: self.bitcoind.shared(),
            stacks: self.stacks.shared(),
        }
    }

    /// Mines one Bitcoin block (the stacks-node learns its peg ops) and one
    /// Stacks block.
    pub fn mine(&self) {
        let c = self.chains();
        c.mine_bitcoin();
        c.mine_stacks();
    }

    /// Ticks `l` until `done` holds (true), or `limit` has passed or `stop`
    /// is set (false), mining after each tick a block on the chains `blocks`
    /// says.
    ///
    /// # Errors
    /// When a tick fails (only a failing queue fails one).
    pub fn run_until(
        &self,
        l: &mut HttpCoordinator,
        limit: Duration,
        blocks: Blocks,
        stop: &AtomicBool,
        mut done: impl FnMut(&HttpCoordinator) -> bool,
    ) -> Result<bool> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            l.tick(stop).context("a coordinator tick")?;
            if done(l) {
                return Ok(true);
            }
            match blocks {
                Blocks::Both => self.mine(),
                Blocks::StacksOnly => {
                    self.stacks.with(|s| s.mine());
                }
            }
        }
        Ok(false)
    }

    /// Mines a Bitcoin and a Stacks block every `every` on a thread, until
    /// the returned miner is dropped.
    pub fn miner(&self, every: Duration) -> Miner {
        let c = self.chains();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                c.mine_bitcoin();
                c.mine_stacks();
                std::thread::sleep(every);
            }
        });
        Miner {
            stop,
            thread: Some(thread),
        }
    }

    /// Replaces the top `depth` Bitcoin blocks by `depth + 1` empty ones
    /// (their transactions wait in the mempool), as a competing miner would.
    pub fn reorg(&self, depth: u64) {
        let c = self.chains();
        let mut b = lock(&c.bitcoin);
        for _ in 0..depth {
            b.invalidate_tip();
        }
        let held = b.take_mempool();
        for _ in 0..=depth {
            b.mine(&ScriptBuf::new_op_return([1u8]));
        }
        b.restore_mempool(held);
        Chains::sync_burn_ops(&b, &mut lock(&c.stacks));
    }

    /// Runs `f` on the Bitcoin chain, then tells the stacks-node what changed.
    pub fn with_bitcoin<R>(&self, f: impl FnOnce(&mut BitcoinState) -> R) -> R {
        let c = self.chains();
        let mut b = lock(&c.bitcoin);
        let r = f(&mut b);
        Chains::sync_burn_ops(&b, &mut lock(&c.stacks));
        r
    }

    /// `n` users named `user-1`…, each funded with a matured 50 BTC coinbase.
    pub fn users(&self, n: u8) -> Vec<User> {
        let burn = burn_script();
        self.with_bitcoin(|b| {
            let users: Vec<User> = (1..=n)
                .map(|i| {
                    let mut u = User::new(&format!("user-{i}"), i);
                    u.mine_coinbase(b);
                    u
                })
                .collect();
            // One maturity wait for all: every coinbase stays near 50 BTC.
            for _ in 0..100 {
                b.mine(&burn);
            }
            users
        })
    }

    /// Mined calls of contract function `function` (`mint!`, `burn!`) for
    /// Bitcoin transaction `txid`: how many succeeded, how many failed. The
    /// elements of `mint-many!` (`burn-many!`) count as `mint!` (`burn!`)
    /// calls: each by its own response in the batch's list (a batch that
    /// failed as a whole fails each of its elements).
    pub fn contract_calls(&self, function: &str, txid: &bitcoin::Txid) -> (usize, usize) {
        let arg = peg_ops::contract::txid_arg(txid);
        let (many, key) = match function {
            peg_ops::contract::MINT => (peg_ops::contract::MINT_MANY, "peg-in-txid"),
            peg_ops::contract::BURN => (peg_ops::contract::BURN_MANY, "peg-out-txid"),
            _ => ("", ""),
        };
        self.stacks.with(|s| {
            s.receipts
                .iter()
                .filter_map(|r| {
                    let Payload::ContractCall {
                        function_name,
                        args,
                        ..
                    } = &r.tx.payload
                    else {
                        return None;
                    };
                    let whole_ok = r.result.as_ref().is_ok_and(|v| matches!(v, Value::Ok(_)));
                    if function_name == function && args.contains(&arg) {
                        return Some(whole_ok);
                    }
                    if function_name != many {
                        return None;
                    }
                    let Some(Value::List(elements)) = args.first() else {
                        return None;
                    };
                    let i = elements
                        .iter()
                        .position(|e| matches!(e, Value::Tuple(m) if m.get(key) == Some(&arg)))?;
                    Some(match &r.result {
                        Ok(Value::Ok(list)) => match list.as_ref() {
                            Value::List(results) => {
                                matches!(results.get(i), Some(Value::Ok(_)))
                            }
                            _ => false,
                        },
                        _ => false,
                    })
                })
                .fold((0, 0), |(ok, err), succeeded| {
                    if succeeded {
                        (ok + 1, err)
                    } else {
                        (ok, err + 1)
                    }
                })
        })
    }

    /// The elements of each mined `mint-many!` / `burn-many!` call named
    /// `function`, in mining order, with the Stacks height that mined it.
    pub fn batch_sizes(&self, function: &str) -> Vec<(u64, usize)> {
        self.stacks.with(|s| {
            s.receipts
                .iter()
                .filter_map(|r| match &r.tx.payload {
                    Payload::ContractCall {
                        function_name,
                        args,
                        ..
                    } if function_name == function => match args.first() {
                        Some(Value::List(v)) => Some((r.height, v.len())),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
    }

    /// Mined contract calls whose result was an error or a runtime failure.
    /// A failed element of a `mint-many!` / `burn-many!` that succeeded
    /// counts too (`element i of …`).
    pub fn failed_contract_calls(&self) -> Vec<String> {
        self.stacks.with(|s| {
            let mut failed = Vec::new();
            for r in &s.receipts {
                match &r.result {
                    Ok(Value::Ok(v)) => {
                        let batch = matches!(&r.tx.payload, Payload::ContractCall { function_name, .. }
                            if function_name == peg_ops::contract::MINT_MANY
                                || function_name == peg_ops::contract::BURN_MANY);
                        if let (true, Value::List(results)) = (batch, v.as_ref()) {
                            for (i, e) in results.iter().enumerate() {
                                if !matches!(e, Value::Ok(_)) {
                                    failed.push(format!(
                                        "element {i} of {} at Stacks height {}: {e:?}",
                                        r.tx.txid(),
                                        r.height
                                    ));
                                }
                            }
                        }
                    }
                    other => failed.push(format!(
                        "{} at Stacks height {}: {other:?}",
                        r.tx.txid(),
                        r.height
                    )),
                }
            }
            failed
        })
    }

    /// The sBTC balance of `who`.
    pub fn sbtc_balance(&self, who: &PrincipalData) -> u128 {
        self.stacks
            .with(|s| s.model.balances.get(who).copied().unwrap_or(0))
    }

    /// What fulfilments of peg-out request `request` (input 0 spends its
    /// output 2) paid to `script`, over every block of the best chain.
    pub fn payouts(&self, request: &bitcoin::Txid, script: &bitcoin::Script) -> Vec<Amount> {
        let from = bitcoin::OutPoint::new(*request, 2);
        self.bitcoind.with(|b| {
            (0..=b.height())
                .filter_map(|h| b.block(h))
                .flat_map(|blk| blk.txdata.iter())
                .filter(|tx| tx.input.first().map(|i| i.previous_output) == Some(from))
                .flat_map(|tx| tx.output.iter())
                .filter(|o| o.script_pubkey == *script)
                .map(|o| o.value)
                .collect()
        })
    }

    /// A client of the emulated stacks-node.
    pub fn stacks_client(&self) -> UreqStacksNode {
        UreqStacksNode::new(&self.stacks.url(), Duration::from_secs(2))
    }

    /// A client of the emulated bitcoind.
    pub fn bitcoin_client(&self) -> UreqBitcoinNode {
        UreqBitcoinNode::new(&self.bitcoind.url(), Auth::None, Duration::from_secs(2))
    }

    /// The coordinator's Stacks wallet.
    pub fn stacks_wallet(&self) -> ContractCallWallet<UreqStacksNode> {
        ContractCallWallet::new(
            StacksNetwork::Testnet,
            self.contract.clone(),
            self.stacks_key,
            StacksFeePolicy {
                floor: 200,
                cap: 100_000,
            },
            self.stacks_client(),
        )
    }

    /// The coordinator's FROST side, its state in the peg's folder (where
    /// `coordinator-cli` keeps it too).
    ///
    /// # Errors
    /// When the saved state cannot be read.
    pub fn frost(&self) -> Result<RelayFrostCoordinator> {
        Ok(RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set: self.file.set.clone(),
            private_key: self.coordinator_key,
            relay_url: self.file.relay_url.clone(),
            dkg_timeout: Duration::from_secs(30),
            sign_timeout: self.opts.sign_timeout,
            state_path: Some(self.opts.dir.join("frost-coordinator.json")),
            network: self.file.network.clone(),
            contract: self.file.contract.clone(),
            rounds_in_flight: self.opts.rounds_in_flight,
        })?)
    }

    /// The queue file.
    pub fn queue_path(&self) -> PathBuf {
        self.opts.dir.join("queue.sqlite")
    }

    /// Runs the coordinator's start-up: DKG with the signers, the key
    /// published in the contract and seen there. Returns the aggregate key.
    ///
    /// # Errors
    /// When DKG fails or the key does not show within 30 s.
    pub fn publish_key(&self) -> Result<PublicKey> {
        let mut frost = self.frost()?;
        let queue = SqlitePegQueue::open(&self.queue_path())?;
        let _miner = self.miner(Duration::from_millis(20));
        coordinator::startup::ensure_wallet_key(
            &self.stacks_client(),
            &self.stacks_wallet(),
            &mut frost,
            &queue,
            &self.contract,
            Duration::from_secs(30),
            Duration::from_millis(20),
        )
        .map_err(|e| anyhow!("start-up: {e}"))
    }

    /// Rotates the peg wallet key as `coordinator-cli dkg --rotate` does: a
    /// new key through the signers' gated DKG (they must allow rotations),
    /// published and seen in the contract. Returns (old key, new key).
    ///
    /// # Errors
    /// When DKG fails or the key does not show within 30 s.
    pub fn rotate_key(&self) -> Result<(PublicKey, PublicKey)> {
        let mut frost = self.frost()?;
        let queue = SqlitePegQueue::open(&self.queue_path())?;
        let _miner = self.miner(Duration::from_millis(20));
        coordinator::startup::rotate_key(
            &self.stacks_client(),
            &self.stacks_wallet(),
            &mut frost,
            &queue,
            &self.contract,
            Duration::from_secs(30),
            Duration::from_millis(20),
        )
        .map_err(|e| anyhow!("rotation: {e}"))
    }

    /// The peg wallet (the key the contract holds), once published.
    ///
    /// # Errors
    /// Before the key is published.
    pub fn peg_wallet(&self) -> Result<Address> {
        let key = self
            .stacks
            .with(|s| s.model.wallet_key.clone())
            .ok_or_else(|| anyhow!("no peg wallet key in the contract yet"))?;
        let key = PublicKey::from_slice(&key).context("the contract's peg wallet key")?;
        Ok(peg_wallet_address(&key, Network::Regtest))
    }

    /// Loop settings for this peg: regtest, one confirmation, quick polls,
    /// scanning from the next Bitcoin block.
    pub fn settings(&self, allowed: &[&User]) -> LoopSettings {
        LoopSettings {
            network: Network::Regtest,
            stacks_network: StacksNetwork::Testnet,
            contract: self.contract.clone(),
            start_height: BurnHeight(self.bitcoind.with(|b| b.height()) + 1),
            op_confirmations: self.opts.bitcoin_confirmations,
            fulfillment_confirmations: 1,
            poll_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            fee_target_blocks: 6,
            max_heights_per_tick: 100,
            allowlist: Allowlist::new(
                allowed.iter().map(|u| u.stx.clone()),
                allowed.iter().map(|u| u.btc.script_pubkey()),
            ),
            stx_low_balance_warning: 1,
            stacks_batch: self.opts.stacks_batch,
        }
    }

    fn bitcoin_fees() -> BitcoinFeePolicy {
        BitcoinFeePolicy {
            floor: FeeRate::from_sat_per_vb_u32(2),
            cap: FeeRate::from_sat_per_vb_u32(100),
            subsidy: Amount::ZERO,
        }
    }

    /// A coordinator loop in this process, over HTTP, with the queue in the
    /// peg's folder, reading peg ops from `source` (Bitcoin blocks, or the
    /// stacks-node's `/v2/burn_ops`). Run [`Peg::publish_key`] first.
    ///
    /// # Errors
    /// When the queue or the FROST state cannot be opened.
    pub fn coordinator(
        &self,
        settings: LoopSettings,
        source: OpSourceKind,
    ) -> Result<HttpCoordinator> {
        let source: Box<dyn OpSource> = match source {
            OpSourceKind::Bitcoin => Box::new(BitcoinBlockSource::new(
                self.bitcoin_client(),
                MAGIC,
                Network::Regtest,
            )),
            // Only a 2023-style node serves /v2/burn_ops: the emulator's explicit mode.
            OpSourceKind::StacksNode => {
                (self.stacks).with(|s| s.burn_ops_mode = crate::stacks::BurnOpsMode::Node2023);
                Box::new(StacksNodeSource::new(self.stacks_client()))
            }
        };
        // The peg wallet's coins from our own record, as `coordinator-cli`
        // keeps them (one file per first height: it is fixed per file).
        let first = settings.start_height.0;
        let coins = peg_coins::CoinRecord::open(
            &self.opts.dir.join(format!("coins-{first}.sqlite")),
            first,
        )?;
        // The signers' policy (fees, limits), with the coordinator's own
        // allowlist (it may be stricter), and the peg's Stacks depth.
        let mut checks = PegChecks::defaults_for(&settings);
        let mut policy = self
            .file
            .policy(&self.file_path, Network::Regtest)
            .map_err(|e| anyhow!(e))?;
        policy.allowlist = settings.allowlist.clone();
        checks.policy = policy;
        checks.magic = MAGIC;
        checks.stacks_confirmations = self.opts.stacks_confirmations;
        Ok(StacksCoordinator::new(
            Components {
                queue: SqlitePegQueue::open(&self.queue_path())?,
                stacks: self.stacks_client(),
                bitcoin: self.bitcoin_client(),
                stacks_wallet: self.stacks_wallet(),
                bitcoin_wallet: PegWallet::new(Network::Regtest, MAGIC, Self::bitcoin_fees()),
                frost: self.frost()?,
                source,
            },
            settings,
        )
        .with_checks(checks)
        .with_coin_record(coins, first))
    }

    /// Writes `coordinator.toml` (with `signer.toml` and `allowlist.toml`)
    /// for a `coordinator-cli` process that shares this peg's folder, queue
    /// and FROST state; returns its path.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write_config(&self, allowed: &[&User], start_height: u64) -> Result<PathBuf> {
        let dir = &self.opts.dir;
        let signers = toml::to_string(&self.file).context("the signer file")?;
        std::fs::write(dir.join("signer.toml"), signers)?;
        // The coordinator's allowlist: the signer file next to it names it,
        // so both read the same one (the signers' own copy is in `signers/`).
        std::fs::write(
            dir.join("allowlist.toml"),
            allowlist_toml(allowed.iter().copied()),
        )?;
        let config = format!(
            r#"# Written by the devnet for a coordinator-cli process.
network = "regtest"
contract = "{contract}"
stacks_private_key = "{stacks_key}01"
stacks_node_url = "{stacks}"
data_dir = "."
op_source = "bitcoin"
magic_bytes = "id"
start_height = {start_height}
stacks_batch = {stacks_batch}
poll_interval_ms = 20
rpc_timeout_ms = 2000
status_listen = "off"
allowlist_file = "allowlist.toml"

[bitcoin_node]
url = "{bitcoind}"

[relay]
url = "{relay}"
network_private_key = "{msg_key}"
signer_config = "signer.toml"
dkg_timeout_ms = 30000
sign_timeout_ms = {sign_timeout}
rounds_in_flight = {rounds_in_flight}

[confirmations]
ops = {ops}
fulfillment = 1
stacks = {stacks_depth}

[fees]
stacks_fee_floor = 200
stacks_fee_cap = 100000
bitcoin_fee_rate_floor = 2
bitcoin_fee_rate_cap = 100
stx_low_balance_warning = 1
"#,
            contract = self.contract,
            stacks_key = hex::encode(self.stacks_key.key.secret_bytes()),
            stacks = self.stacks.url(),
            bitcoind = self.bitcoind.url(),
            relay = self.file.relay_url,
            msg_key = hex::encode(self.coordinator_key.secret_bytes()),
            sign_timeout = self.opts.sign_timeout.as_millis(),
            rounds_in_flight = self.opts.rounds_in_flight,
            stacks_batch = self.opts.stacks_batch,
            ops = self.opts.bitcoin_confirmations,
            stacks_depth = self.opts.stacks_confirmations,
        );
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, config)?;
        Ok(path)
    }
}

impl Drop for Peg {
    fn drop(&mut self) {
        for id in 1..=self.opts.signers {
            self.stop_signer(id);
        }
    }
}
