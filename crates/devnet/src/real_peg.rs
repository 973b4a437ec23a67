//! A whole peg on real nodes: Bitcoin Core on regtest ([`RealBitcoind`]), a
//! stacks-node in mocknet ([`RealStacksNode`]) with the sBTC contract
//! deployed, the relay and the signers in this process — and everything a
//! coordinator needs to talk to them, in this process or (through
//! [`RealPeg::write_config`]) in a `coordinator-cli` process.
//!
//! Peg ops come from Bitcoin blocks (`op_source = "bitcoin"`: a released
//! stacks-node has no `/v2/burn_ops`). Core has no wallet: users sign their
//! own transactions ([`User::peg_in_with`]) and blocks are mined with
//! `generatetoaddress`. The stacks-node mines on its own timer.
//!
//! `coordinator-cli devnet --real-nodes` and the real-node tests build their
//! peg here. Nothing here is for real money.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, OutPoint, Transaction, Txid};
use bitcoin_node_client::{Auth, BitcoinNode, UreqBitcoinNode};
use coordinator::{
    Allowlist, BitcoinBlockSource, Components, HttpCoordinator, LoopSettings, StacksCoordinator,
};
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, ContractCallWallet, PegWallet, StacksFeePolicy,
};
use frost_coordinator::{
    RelayCoordinatorOptions, RelayFrostCoordinator, SignerFile, SignerInfo, SignerSet,
};
use frost_signer::{SignerNode, SignerOptions};
use peg_ops::BurnHeight;
use peg_queue::SqlitePegQueue;
use relay::{RelayConfig, RelayServer};
use serde_json::json;
use stacks_node_client::{StacksNode, UreqStacksNode};
use stacks_wire::{
    ContractId, Payload, PostConditionMode, PrincipalData, StacksAddress, StacksNetwork,
    StacksPrivateKey, StacksTransaction, Value,
};

use crate::bitcoin::Refusal;
use crate::bitcoind::Outcome;
use crate::peg::{allowlist_toml, devnet_policy, write_signer_file, DevnetGuard, MAGIC};
use crate::stacks_node::{RealNodeOptions, RealStacksNode};
use crate::Proxy;
use crate::{RealBitcoind, User};
use signer_guard::{BitcoinNodeConfig, Confirmations, GuardConfig, GuardStatus, StacksNodeConfig};

/// The mocknet deployer's key (funded in the node's genesis; test key only).
pub const DEPLOYER_KEY: &str = "6434e5463b4c7e8e399256b53dccb7e61496678781946b3bde2c271b66ad960e";
/// The coordinator's Stacks key (funded in the node's genesis; test key only).
pub const COORDINATOR_KEY: &str =
    "18c591a40a1c44b434056c88d46caa3fad24f8d586b105cc9f138258541de5e5";

/// How to start a real-node peg. The binaries are those `BITCOIND_EXE` and
/// `STACKS_NODE_EXE` name.
#[derive(Debug, Clone)]
pub struct RealPegOptions {
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
    /// The stacks-node's `commit_anchor_block_within`, ms.
    pub stacks_block_interval_ms: u64,
    /// Extra `bitcoind` arguments (for example `-txindex=0`; later ones win).
    pub bitcoind_args: Vec<String>,
    /// The seeds of the users on the signer file's allowlist (the demo
    /// users are 1–4; mallory, 4, is not allowed by default).
    pub allowlist: Vec<u8>,
    /// Bitcoin confirmations the signers want.
    pub bitcoin_confirmations: u32,
    /// Stacks confirmations the signers want.
    pub stacks_confirmations: u32,
    /// The signers (1-based ids) that read both nodes through a [`Proxy`]
    /// of their own ([`RealPeg::bitcoin_proxy`], [`RealPeg::stacks_proxy`]).
    pub proxied: Vec<u32>,
    /// How many signing rounds the coordinator keeps in flight at once.
    pub rounds_in_flight: usize,
    /// The most mints (or burns) one Stacks transaction carries.
    pub stacks_batch: usize,
}

impl RealPegOptions {
    /// Five signers, threshold three, state in `dir`, nodes from the
    /// environment.
    pub fn new(dir: &Path) -> Self {
        RealPegOptions {
            dir: dir.to_owned(),
            signers: 5,
            threshold: 3,
            sign_timeout: Duration::from_secs(10),
            signer_poll: Duration::from_millis(300),
            stacks_block_interval_ms: 300,
            bitcoind_args: Vec::new(),
            allowlist: vec![1, 2, 3],
            bitcoin_confirmations: 1,
            stacks_confirmations: 1,
            proxied: Vec::new(),
            rounds_in_flight: frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
            stacks_batch: coordinator::DEFAULT_STACKS_BATCH,
        }
    }
}

/// What [`RealPeg::start`] gives.
#[derive(Debug)]
pub enum RealPegStart {
    /// Both nodes are up, the contract deployed, the signers running.
    Started(Box<RealPeg>),
    /// A node binary is not configured: why (print it and skip).
    Skipped(String),
}

struct RunningSigner {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A peg on Bitcoin Core and a stacks-node. Dropping it stops the signers
/// and kills both nodes.
pub struct RealPeg {
    /// Bitcoin Core (regtest, `-txindex=1`, RPC user and password).
    pub bitcoind: RealBitcoind,
    /// The stacks-node (mocknet), with the sBTC contract deployed.
    pub stacks: RealStacksNode,
    /// The relay signers and coordinator talk through.
    pub relay: RelayServer,
    /// The sBTC contract.
    pub contract: ContractId,
    opts: RealPegOptions,
    file: SignerFile,
    signers: Vec<RunningSigner>,
    statuses: Vec<Arc<Mutex<GuardStatus>>>,
    proxies: BTreeMap<u32, (Proxy, Proxy)>,
    stacks_key: StacksPrivateKey,
    coordinator_key: SecretKey,
    miner_address: Address,
}

impl std::fmt::Debug for RealPeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealPeg")
            .field("bitcoind", &self.bitcoind.rpc_url())
            .field("stacks", &self.stacks.url())
            .field("relay", &self.relay.url())
            .field("contract", &self.contract)
            .finish()
    }
}

fn key(tag: u8, i: u32) -> Result<SecretKey> {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&(i + 1).to_be_bytes());
    SecretKey::from_slice(&b).context("devnet key")
}

fn stacks_key(hex_key: &str) -> Result<StacksPrivateKey> {
    let bytes = hex::decode(hex_key).context("a test key")?;
    Ok(StacksPrivateKey {
        key: SecretKey::from_slice(&bytes).context("a test key")?,
        compressed: true,
    })
}

/// A background Bitcoin miner (`generatetoaddress` every interval), until
/// dropped. Errors (a stopped node) are ignored: it mines again when the
/// node answers.
#[derive(Debug)]
pub struct RealMiner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RealMiner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RealPeg {
    /// Starts Bitcoin Core and the stacks-node (deployer and coordinator
    /// funded), deploys the sBTC contract and makes the coordinator's account
    /// its coordinator, then starts the relay and every signer.
    ///
    /// # Errors
    /// When a configured binary is missing, a node does not come up, the
    /// contract is not deployed, or a signer cannot start.
    pub fn start(opts: RealPegOptions) -> Result<RealPegStart> {
        let secp = Secp256k1::new();
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        // Both variables are checked before either skips: a set variable
        // naming no file fails.
        let bitcoind_exe = crate::bitcoind::bitcoind_exe()?;
        let stacks_exe = crate::stacks_node::exe_from_env()?;
        if bitcoind_exe.is_none() {
            return Ok(RealPegStart::Skipped(
                "BITCOIND_EXE is not set (point it at a Bitcoin Core bitcoind binary)".into(),
            ));
        }
        let Some(stacks_exe) = stacks_exe else {
            return Ok(RealPegStart::Skipped(
                "STACKS_NODE_EXE is not set (point it at a stacks-node 4.x binary)".into(),
            ));
        };
        let args: Vec<&str> = opts.bitcoind_args.iter().map(String::as_str).collect();
        let bitcoind = match RealBitcoind::start_with_args(&args)? {
            Outcome::Started(n) => n,
            Outcome::Skipped(why) => return Ok(RealPegStart::Skipped(why.into())),
        };
        let deployer = stacks_key(DEPLOYER_KEY)?;
        let stacks_key = stacks_key(COORDINATOR_KEY)?;
        let me = stacks_key.address(StacksNetwork::Testnet);
        let stacks = RealStacksNode::start_exe(
            &stacks_exe,
            &RealNodeOptions {
                balances: vec![
                    (deployer.address(StacksNetwork::Testnet), 100_000_000_000),
                    (me, 100_000_000_000),
                ],
                block_interval_ms: opts.stacks_block_interval_ms,
            },
        )?;
        let contract = stacks.deploy_sbtc(&deployer)?;
        let coordinator_key = key(0xc0, 0)?;
        set_coordinator(
            &stacks,
            &deployer,
            &contract,
            me,
            &coordinator_key.public_key(&secp),
        )?;
        let relay = RelayServer::start("127.0.0.1:0", RelayConfig::default())?;
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
        let file = SignerFile {
            relay_url: relay.url(),
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
        let mut proxies = BTreeMap::new();
        for id in &opts.proxied {
            let b = Proxy::start(&bitcoind.rpc_url(), Duration::from_secs(30))?;
            let s = Proxy::start(stacks.url(), Duration::from_secs(30))?;
            proxies.insert(*id, (b, s));
        }
        let guard_start = {
            let c = UreqBitcoinNode::new(
                &bitcoind.rpc_url(),
                Auth::UserPass(bitcoind.rpc_user().into(), bitcoind.rpc_password().into()),
                Duration::from_secs(5),
            );
            c.get_block_count()
                .map_err(|e| anyhow!("getblockcount: {e}"))?
                + 1
        };
        let miner_address = Address::p2wpkh(
            &bitcoin::CompressedPublicKey(key(0x3b, 0)?.public_key(&secp)),
            Network::Regtest,
        );
        let mut peg = RealPeg {
            bitcoind,
            stacks,
            relay,
            contract,
            opts,
            file,
            signers: Vec::new(),
            statuses: Vec::new(),
            proxies,
            stacks_key,
            coordinator_key,
            miner_address,
        };
        for id in 1..=peg.opts.signers {
            let state_path = peg.opts.dir.join(format!("signer-{id}.json"));
            // A proxy forwards the RPC user and password.
            let (url, stacks_url) = match peg.proxies.get(&id) {
                Some((b, s)) => (b.url(), s.url()),
                None => (peg.bitcoind.rpc_url(), peg.stacks.url().to_owned()),
            };
            let config = GuardConfig {
                bitcoin_node: BitcoinNodeConfig {
                    url,
                    user: Some(peg.bitcoind.rpc_user().to_owned()),
                    password: Some(peg.bitcoind.rpc_password().to_owned()),
                    cookie_file: None,
                },
                stacks_node: StacksNodeConfig { url: stacks_url },
                confirmations: Confirmations {
                    bitcoin: peg.opts.bitcoin_confirmations,
                    stacks: peg.opts.stacks_confirmations,
                },
                start_height: guard_start,
                data_dir: peg.opts.dir.join(format!("guard-{id}")),
                rpc_timeout_ms: 5_000,
            };
            let status: Arc<Mutex<GuardStatus>> = Arc::default();
            let guard = DevnetGuard::open(
                &config,
                &peg.file,
                &file_path,
                &state_path,
                id,
                status.clone(),
                Arc::default(),
            )?;
            peg.statuses.push(status);
            let mut node = SignerNode::new(SignerOptions {
                id,
                file: peg.file.clone(),
                private_key: key(0x5e, id - 1)?,
                state_path,
                poll_wait: peg.opts.signer_poll,
                allow_rotation: false,
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
            peg.signers.push(RunningSigner { stop, thread });
        }
        Ok(RealPegStart::Started(Box::new(peg)))
    }

    /// What signer `id`'s guard saw last (its status).
    pub fn signer_status(&self, id: u32) -> Option<GuardStatus> {
        let i = id.checked_sub(1)? as usize;
        self.statuses.get(i).map(|s| crate::server::lock(s).clone())
    }

    /// The proxy in front of signer `id`'s bitcoind, when proxied.
    pub fn bitcoin_proxy(&self, id: u32) -> Option<&Proxy> {
        self.proxies.get(&id).map(|(b, _)| b)
    }

    /// The proxy in front of signer `id`'s stacks-node, when proxied.
    pub fn stacks_proxy(&self, id: u32) -> Option<&Proxy> {
        self.proxies.get(&id).map(|(_, s)| s)
    }

    /// A client of Bitcoin Core (user and password, 5 s per call).
    pub fn bitcoin_client(&self) -> UreqBitcoinNode {
        UreqBitcoinNode::new(
            &self.bitcoind.rpc_url(),
            Auth::UserPass(
                self.bitcoind.rpc_user().into(),
                self.bitcoind.rpc_password().into(),
            ),
            Duration::from_secs(5),
        )
    }

    /// A client of the stacks-node.
    pub fn stacks_client(&self) -> UreqStacksNode {
        UreqStacksNode::new(self.stacks.url(), Duration::from_secs(5))
    }

    /// The coordinator's Stacks address (the contract's coordinator).
    pub fn coordinator_address(&self) -> StacksAddress {
        self.stacks_key.address(StacksNetwork::Testnet)
    }

    /// The coordinator's Stacks wallet.
    pub fn stacks_wallet(&self) -> ContractCallWallet<UreqStacksNode> {
        ContractCallWallet::new(
            StacksNetwork::Testnet,
            self.contract.clone(),
            self.stacks_key,
            StacksFeePolicy {
                floor: 1_000,
                cap: 100_000,
            },
            self.stacks_client(),
        )
    }

    /// The coordinator's FROST side, its state in the peg's folder.
    ///
    /// # Errors
    /// When the saved state cannot be read.
    pub fn frost(&self) -> Result<RelayFrostCoordinator> {
        Ok(RelayFrostCoordinator::new(RelayCoordinatorOptions {
            set: self.file.set.clone(),
            private_key: self.coordinator_key,
            relay_url: self.relay.url(),
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

    /// DKG with the signers and the key published through the stacks-node
    /// (`coordinator::startup::ensure_wallet_key`). Returns the aggregate key.
    ///
    /// # Errors
    /// When DKG fails or the key does not show within 60 s.
    pub fn publish_key(&self) -> Result<PublicKey> {
        let mut frost = self.frost()?;
        let queue = SqlitePegQueue::open(&self.queue_path())?;
        coordinator::startup::ensure_wallet_key(
            &self.stacks_client(),
            &self.stacks_wallet(),
            &mut frost,
            &queue,
            &self.contract,
            Duration::from_secs(60),
            Duration::from_millis(200),
        )
        .map_err(|e| anyhow!("start-up: {e}"))
    }

    /// The peg wallet (the key the contract holds), once published.
    ///
    /// # Errors
    /// Before the key is published, or when the node does not answer.
    pub fn peg_wallet(&self) -> Result<Address> {
        let v = self.read("get-bitcoin-wallet-public-key", &[])?;
        let key = match v {
            Value::Optional(Some(b)) => match *b {
                Value::Buffer(k) => k,
                other => bail!("get-bitcoin-wallet-public-key returned {other}"),
            },
            other => bail!("no peg wallet key in the contract yet ({other})"),
        };
        let key = PublicKey::from_slice(&key).context("the contract's peg wallet key")?;
        Ok(peg_wallet_address(&key, Network::Regtest))
    }

    fn read(&self, function: &str, args: &[Value]) -> Result<Value> {
        self.stacks_client()
            .call_read(
                &self.contract,
                function,
                args,
                &PrincipalData::Standard(self.coordinator_address()),
            )
            .map_err(|e| anyhow!("{function}: {e}"))
    }

    fn read_uint(&self, function: &str, args: &[Value]) -> Result<u128> {
        match self.read(function, args)? {
            Value::Ok(v) => match *v {
                Value::UInt(n) => Ok(n),
                other => bail!("{function} returned (ok {other})"),
            },
            other => bail!("{function} returned {other}"),
        }
    }

    /// `who`'s sBTC balance, read from the contract (`get-balance`).
    ///
    /// # Errors
    /// When the node does not answer as the contract does.
    pub fn sbtc_balance(&self, who: &PrincipalData) -> Result<u128> {
        self.read_uint("get-balance", &[Value::Principal(who.clone())])
    }

    /// The sBTC supply, read from the contract (`get-total-supply`).
    ///
    /// # Errors
    /// When the node does not answer as the contract does.
    pub fn sbtc_supply(&self) -> Result<u128> {
        self.read_uint("get-total-supply", &[])
    }

    /// Whether the contract recorded a mint for peg-in `txid` (`was-minted`).
    ///
    /// # Errors
    /// When the node does not answer.
    pub fn was_minted(&self, txid: &Txid) -> Result<bool> {
        let v = self.read("was-minted", &[peg_ops::contract::txid_arg(txid)])?;
        Ok(matches!(v, Value::Bool(true)))
    }

    /// The coordinator's confirmed Stacks nonce: how many of its
    /// transactions were mined.
    ///
    /// # Errors
    /// When the node does not answer.
    pub fn coordinator_nonce(&self) -> Result<u64> {
        self.stacks_client()
            .get_account(&PrincipalData::Standard(self.coordinator_address()))
            .map(|a| a.nonce)
            .map_err(|e| anyhow!("coordinator account: {e}"))
    }

    /// Mines `n` blocks paying `to` on Core (`generatetoaddress`).
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn generate(&self, n: u64, to: &Address) -> Result<Vec<BlockHash>> {
        let v = self
            .bitcoind
            .client()
            .call("generatetoaddress", json!([n, to.to_string()]))
            .map_err(|e| anyhow!("generatetoaddress: {e}"))?;
        v.as_array()
            .ok_or_else(|| anyhow!("generatetoaddress returned {v}"))?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("generatetoaddress returned {v}"))
            })
            .collect()
    }

    /// Mines `n` blocks nobody here spends from.
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn mine(&self, n: u64) -> Result<()> {
        self.generate(n, &self.miner_address).map(|_| ())
    }

    /// A Bitcoin block every `every` on a thread, until the miner is dropped.
    pub fn miner(&self, every: Duration) -> RealMiner {
        let client = UreqBitcoinNode::new(
            &self.bitcoind.rpc_url(),
            Auth::UserPass(
                self.bitcoind.rpc_user().into(),
                self.bitcoind.rpc_password().into(),
            ),
            Duration::from_secs(2),
        );
        let to = self.miner_address.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Err(e) = client.call("generatetoaddress", json!([1, to])) {
                    log::debug!("miner: {e}");
                }
                std::thread::sleep(every);
            }
        });
        RealMiner {
            stop,
            thread: Some(thread),
        }
    }

    /// Funds each user with a coinbase on Core (one block paying them), then
    /// mines 100 blocks so the coinbases mature.
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn fund_users(&self, users: &mut [User]) -> Result<()> {
        let client = self.bitcoin_client();
        for u in users.iter_mut() {
            let hash = self
                .generate(1, &u.btc)?
                .pop()
                .ok_or_else(|| anyhow!("generatetoaddress mined nothing"))?;
            let block = client
                .get_block(&hash)
                .map_err(|e| anyhow!("getblock {hash}: {e}"))?;
            let cb = block
                .txdata
                .first()
                .ok_or_else(|| anyhow!("block {hash} has no coinbase"))?;
            let out = cb
                .output
                .first()
                .ok_or_else(|| anyhow!("coinbase of {hash} has no output"))?;
            u.add_coin(OutPoint::new(cb.compute_txid(), 0), out.clone());
        }
        self.mine(100)
    }

    /// Sends a signed transaction to Core (`sendrawtransaction`).
    ///
    /// # Errors
    /// Core's refusal.
    pub fn send(&self, tx: Transaction) -> Result<Txid, Refusal> {
        self.bitcoin_client()
            .send_raw_transaction(&tx)
            .map_err(|e| Refusal {
                code: -26,
                message: e.to_string(),
            })
    }

    /// What transactions spending output 2 of peg-out request `request`
    /// paid to `script`, over Core's best chain from height `from`.
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn payouts(
        &self,
        request: &Txid,
        script: &bitcoin::Script,
        from: u64,
    ) -> Result<Vec<Amount>> {
        let client = self.bitcoin_client();
        let spent = OutPoint::new(*request, 2);
        let tip = client
            .get_block_count()
            .map_err(|e| anyhow!("getblockcount: {e}"))?;
        let mut paid = Vec::new();
        for h in from..=tip {
            let hash = client
                .get_block_hash(h)
                .map_err(|e| anyhow!("getblockhash {h}: {e}"))?;
            let block = client
                .get_block(&hash)
                .map_err(|e| anyhow!("getblock {hash}: {e}"))?;
            for tx in &block.txdata {
                if tx.input.iter().any(|i| i.previous_output == spent) {
                    paid.extend(
                        tx.output
                            .iter()
                            .filter(|o| o.script_pubkey == *script)
                            .map(|o| o.value),
                    );
                }
            }
        }
        Ok(paid)
    }

    /// What the peg wallet holds on Core (`scantxoutset`, confirmed coins).
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn peg_balance(&self, peg: &Address) -> Result<Amount> {
        Ok(self
            .bitcoin_client()
            .list_unspent(&peg.script_pubkey())
            .map_err(|e| anyhow!("scantxoutset: {e}"))?
            .iter()
            .map(|u| u.txout.value)
            .sum())
    }

    /// Core's block count.
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn bitcoin_height(&self) -> Result<u64> {
        self.bitcoin_client()
            .get_block_count()
            .map_err(|e| anyhow!("getblockcount: {e}"))
    }

    /// Loop settings: regtest, one confirmation, quick polls, scanning from
    /// the next Bitcoin block, `allowed` on the allowlist.
    ///
    /// # Errors
    /// When Core does not answer.
    pub fn settings(&self, allowed: &[&User]) -> Result<LoopSettings> {
        Ok(LoopSettings {
            network: Network::Regtest,
            stacks_network: StacksNetwork::Testnet,
            contract: self.contract.clone(),
            start_height: BurnHeight(self.bitcoin_height()? + 1),
            op_confirmations: 1,
            fulfillment_confirmations: 1,
            poll_interval: Duration::from_millis(100),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            fee_target_blocks: 6,
            max_heights_per_tick: 100,
            allowlist: Allowlist::new(
                allowed.iter().map(|u| u.stx.clone()),
                allowed.iter().map(|u| u.btc.script_pubkey()),
            ),
            stx_low_balance_warning: 1,
            stacks_batch: self.opts.stacks_batch,
        })
    }

    fn bitcoin_fees() -> BitcoinFeePolicy {
        BitcoinFeePolicy {
            floor: FeeRate::from_sat_per_vb_u32(2),
            cap: FeeRate::from_sat_per_vb_u32(100),
            subsidy: Amount::ZERO,
        }
    }

    /// A coordinator loop in this process: Core for Bitcoin (ops from its
    /// blocks), the stacks-node for Stacks. Run [`RealPeg::publish_key`]
    /// first.
    ///
    /// # Errors
    /// When the queue or the FROST state cannot be opened.
    pub fn coordinator(&self, settings: LoopSettings) -> Result<HttpCoordinator> {
        Ok(StacksCoordinator::new(
            Components {
                queue: SqlitePegQueue::open(&self.queue_path())?,
                stacks: self.stacks_client(),
                bitcoin: self.bitcoin_client(),
                stacks_wallet: self.stacks_wallet(),
                bitcoin_wallet: PegWallet::new(Network::Regtest, MAGIC, Self::bitcoin_fees()),
                frost: self.frost()?,
                source: Box::new(BitcoinBlockSource::new(
                    self.bitcoin_client(),
                    MAGIC,
                    Network::Regtest,
                )),
            },
            settings,
        ))
    }

    /// Ticks `l` until `done` holds (true), or `limit` has passed or `stop`
    /// is set (false). Blocks come from the nodes (run a [`RealPeg::miner`]).
    /// A failing tick is logged and retried.
    pub fn run_until(
        &self,
        l: &mut HttpCoordinator,
        limit: Duration,
        stop: &AtomicBool,
        mut done: impl FnMut(&HttpCoordinator) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            if let Err(e) = l.tick(stop) {
                log::warn!("a coordinator tick: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            if done(l) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
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
        std::fs::write(
            dir.join("allowlist.toml"),
            allowlist_toml(allowed.iter().copied()),
        )?;
        let config = format!(
            r#"# Written by the devnet for a coordinator-cli process on real nodes.
network = "regtest"
contract = "{contract}"
stacks_private_key = "{stacks_key}01"
stacks_node_url = "{stacks}"
data_dir = "."
op_source = "bitcoin"
magic_bytes = "id"
start_height = {start_height}
stacks_batch = {stacks_batch}
poll_interval_ms = 100
rpc_timeout_ms = 5000
status_listen = "off"
allowlist_file = "allowlist.toml"

[bitcoin_node]
url = "{bitcoind}"
user = "{user}"
password = "{password}"

[relay]
url = "{relay}"
network_private_key = "{msg_key}"
signer_config = "signer.toml"
dkg_timeout_ms = 30000
sign_timeout_ms = {sign_timeout}
rounds_in_flight = {rounds_in_flight}

[confirmations]
ops = 1
fulfillment = 1

[fees]
stacks_fee_floor = 1000
stacks_fee_cap = 100000
bitcoin_fee_rate_floor = 2
bitcoin_fee_rate_cap = 100
stx_low_balance_warning = 1
"#,
            contract = self.contract,
            stacks_key = hex::encode(self.stacks_key.key.secret_bytes()),
            stacks = self.stacks.url(),
            bitcoind = self.bitcoind.rpc_url(),
            user = self.bitcoind.rpc_user(),
            password = self.bitcoind.rpc_password(),
            relay = self.relay.url(),
            msg_key = hex::encode(self.coordinator_key.secret_bytes()),
            sign_timeout = self.opts.sign_timeout.as_millis(),
            rounds_in_flight = self.opts.rounds_in_flight,
            stacks_batch = self.opts.stacks_batch,
        );
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// Both nodes' last log lines, for failure messages.
    pub fn log_tails(&self) -> String {
        format!(
            "--- bitcoind ({}) ---\n{}\n--- stacks-node ({}) ---\n{}",
            self.bitcoind.rpc_url(),
            self.bitcoind.log_tail(),
            self.stacks.url(),
            self.stacks.log_tail(40)
        )
    }
}

/// Makes `coordinator` (with relay key `key`) the contract's coordinator:
/// `set-coordinator-data` from the contract owner, waited for.
fn set_coordinator(
    node: &RealStacksNode,
    owner: &StacksPrivateKey,
    contract: &ContractId,
    coordinator: StacksAddress,
    key: &PublicKey,
) -> Result<()> {
    let client = node.client();
    let me = owner.address(StacksNetwork::Testnet);
    let nonce = client
        .get_account(&PrincipalData::Standard(me))
        .map_err(|e| anyhow!("deployer account: {e}"))?
        .nonce;
    // The deploys may still be pending: the next nonce is after them.
    let nonce = nonce.max(2);
    let data = Value::Tuple(
        [
            (
                "addr".to_owned(),
                Value::Principal(PrincipalData::Standard(coordinator)),
            ),
            ("key".to_owned(), Value::Buffer(key.serialize().to_vec())),
        ]
        .into_iter()
        .collect(),
    );
    let mut tx = StacksTransaction::new(
        StacksNetwork::Testnet,
        owner,
        nonce,
        10_000,
        PostConditionMode::Deny,
        vec![],
        Payload::ContractCall {
            contract: contract.clone(),
            function_name: "set-coordinator-data".into(),
            args: vec![data],
        },
    )
    .map_err(|e| anyhow!("set-coordinator-data: {e}"))?;
    tx.sign(owner).map_err(|e| anyhow!("signing: {e}"))?;
    client
        .broadcast_transaction(&tx.serialize())
        .map_err(|e| anyhow!("set-coordinator-data: {e}"))?;
    node.wait_for_nonce(&me, nonce + 1, Duration::from_secs(60))?;
    let got = client
        .call_read(
            contract,
            "get-coordinator-data",
            &[],
            &PrincipalData::Standard(me),
        )
        .map_err(|e| anyhow!("get-coordinator-data: {e}"))?;
    if matches!(got, Value::Optional(None)) {
        bail!("set-coordinator-data did not take effect");
    }
    Ok(())
}

impl Drop for RealPeg {
    fn drop(&mut self) {
        for s in &self.signers {
            s.stop.store(true, Ordering::SeqCst);
        }
        for s in self.signers.drain(..) {
            let _ = s.thread.join();
        }
    }
}

/// What [`RealPeg::play`] found: lines to show and checks that must hold.
#[derive(Debug, Default)]
pub struct Summary {
    /// Human-readable lines (balances, payouts, rejections).
    pub lines: Vec<String>,
    /// Each check and whether it held.
    pub checks: Vec<(String, bool)>,
    /// The peg-ins, in user order (alice, bob, carol, mallory).
    pub peg_ins: Vec<Txid>,
    /// The peg-outs (alice, bob).
    pub peg_outs: Vec<Txid>,
}

impl Summary {
    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|(_, ok)| *ok)
    }
}

fn btc(a: Amount) -> String {
    format!("{:.8} BTC", a.to_btc())
}

fn sbtc(sats: u128) -> String {
    format!("{}.{:08} sBTC", sats / 100_000_000, sats % 100_000_000)
}

/// The demo users: alice, bob, carol and mallory (not on the allowlist).
pub fn demo_users() -> Vec<User> {
    ["alice", "bob", "carol", "mallory"]
        .iter()
        .zip(1u8..)
        .map(|(n, i)| User::new(n, i))
        .collect()
}

impl RealPeg {
    /// Drives `l` until every op in `ops` is final (true), reporting each
    /// change of their states through `progress`; false on `limit` or `stop`.
    pub fn drive(
        &self,
        l: &mut HttpCoordinator,
        ops: &[(Txid, String)],
        limit: Duration,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&str),
    ) -> bool {
        let mut last = String::new();
        self.run_until(l, limit, stop, |l| {
            let states: Vec<Option<peg_queue::OpState>> = ops
                .iter()
                .map(|(t, _)| {
                    peg_queue::PegQueue::get(&l.components().queue, t)
                        .ok()
                        .flatten()
                        .map(|o| o.state)
                })
                .collect();
            let line: String = ops
                .iter()
                .zip(&states)
                .map(|((_, name), s)| {
                    format!(
                        "  {name}: {}",
                        s.as_ref().map_or("unseen", peg_queue::OpState::name)
                    )
                })
                .collect();
            if line != last {
                progress(&format!("  ·{line}"));
                last = line;
            }
            states
                .iter()
                .all(|s| s.as_ref().is_some_and(peg_queue::OpState::is_terminal))
        })
    }

    /// The devnet scenario on real nodes: DKG and the key published, the
    /// demo users funded on Core, peg-ins of alice 1.0, bob 0.5, carol 0.25
    /// and mallory 0.1 (not allowed), peg-outs of alice 0.4 and bob 0.2 —
    /// with a coordinator loop in this process and a miner thread on Core
    /// (a block every 200 ms). Each phase may take `limit`.
    ///
    /// # Errors
    /// When a node fails at set-up or a phase does not finish in time (the
    /// checks then name what did not happen).
    pub fn play(
        &self,
        users: &mut [User],
        limit: Duration,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Summary> {
        if users.len() < 4 {
            bail!("the scenario needs four users");
        }
        progress("-- DKG with the signers, publishing the peg wallet key through the stacks-node");
        let agg = self.publish_key()?;
        let peg = self.peg_wallet()?;
        progress(&format!("aggregate key {agg}\npeg wallet    {peg}"));
        progress("-- funding the users on Bitcoin Core (a coinbase each, 100 blocks to mature)");
        self.fund_users(users)?;
        let from = self.bitcoin_height()?;
        let nonce_before = self.coordinator_nonce()?;
        let allowed: Vec<&User> = users.iter().take(3).collect();
        let mut l = self.coordinator(self.settings(&allowed)?)?;
        let _miner = self.miner(Duration::from_millis(200));

        progress("-- peg-ins: alice 1.0, bob 0.5, carol 0.25, mallory 0.1 (not on the allowlist)");
        let amounts = [100_000_000u64, 50_000_000, 25_000_000, 10_000_000];
        let mut summary = Summary::default();
        let mut ops = Vec::new();
        for (u, sats) in users.iter_mut().zip(amounts) {
            let recipient = u.stx.clone();
            let t = u
                .peg_in_with(
                    |tx| self.send(tx),
                    MAGIC,
                    &peg,
                    &recipient,
                    Amount::from_sat(sats),
                )
                .map_err(|r| anyhow!("{}: {}", u.name, r.message))?;
            ops.push((t, format!("{} peg-in", u.name)));
            summary.peg_ins.push(t);
        }
        if !self.drive(&mut l, &ops, limit, stop, progress) {
            summary
                .checks
                .push(("the peg-ins finished in time".into(), false));
        }

        progress("-- peg-outs: alice 0.4, bob 0.2");
        let outs = [(0usize, 40_000_000u64), (1, 20_000_000)];
        let mut ops = Vec::new();
        for (i, sats) in outs {
            let u = &mut users[i];
            let t = u
                .peg_out_with(
                    |tx| self.send(tx),
                    MAGIC,
                    &peg,
                    Amount::from_sat(sats),
                    Amount::from_sat(20_000),
                )
                .map_err(|r| anyhow!("{}: {}", u.name, r.message))?;
            ops.push((t, format!("{} peg-out", u.name)));
            summary.peg_outs.push(t);
        }
        if !self.drive(&mut l, &ops, limit, stop, progress) {
            summary
                .checks
                .push(("the peg-outs finished in time".into(), false));
        }
        drop(_miner);

        let q: &SqlitePegQueue = &l.components().queue;
        let supply = self.sbtc_supply()?;
        let peg_btc = self.peg_balance(&peg)?;
        summary
            .lines
            .push(format!("peg wallet holds   {}", btc(peg_btc)));
        summary
            .lines
            .push(format!("sBTC supply        {}", sbtc(supply)));
        let expected = [60_000_000u128, 30_000_000, 25_000_000, 0];
        for (u, want) in users.iter().zip(expected) {
            let got = self.sbtc_balance(&u.stx)?;
            summary
                .lines
                .push(format!("  {:<8} {}  ({})", u.name, sbtc(got), u.stx));
            summary
                .checks
                .push((format!("{} holds {}", u.name, sbtc(want)), got == want));
        }
        summary.checks.push((
            "sBTC supply = pegged in (1.75) − pegged out (0.6)".into(),
            supply == 115_000_000,
        ));
        summary.checks.push((
            "the peg wallet backs the supply".into(),
            u128::from(peg_btc.to_sat()) >= supply,
        ));
        for (t, (i, sats)) in summary.peg_outs.clone().iter().zip(outs) {
            let u = &users[i];
            let paid = self.payouts(t, &u.btc.script_pubkey(), from)?;
            summary.lines.push(format!(
                "  {} paid {:?} to {}",
                u.name,
                paid.iter().map(|a| btc(*a)).collect::<Vec<_>>(),
                u.btc
            ));
            summary.checks.push((
                format!(
                    "{} paid exactly {} once, to their scriptPubKey",
                    u.name,
                    btc(Amount::from_sat(sats))
                ),
                paid == vec![Amount::from_sat(sats)],
            ));
        }
        for t in summary.peg_ins.iter().chain(&summary.peg_outs) {
            if let Some(o) = peg_queue::PegQueue::get(q, t)? {
                if let peg_queue::OpState::Rejected { reason }
                | peg_queue::OpState::Failed { reason } = &o.state
                {
                    summary
                        .lines
                        .push(format!("  {t} {}: {reason}", o.state.name()));
                }
            }
        }
        let mallory = peg_queue::PegQueue::get(q, &summary.peg_ins[3])?.map(|o| o.state);
        summary.checks.push((
            "mallory's peg-in rejected: not on the allowlist".into(),
            matches!(&mallory, Some(peg_queue::OpState::Rejected { reason }) if reason.contains("allowlist"))
                && !self.was_minted(&summary.peg_ins[3])?,
        ));
        // Every mined coordinator transaction moved the nonce: exactly one
        // per mint or burn transaction the ops ended with (a batch's
        // `mint-many!` / `burn-many!` counts once for all its ops) means no
        // call was repeated.
        let calls = self.coordinator_nonce()? - nonce_before;
        let mut minted = 0;
        for t in &summary.peg_ins[..3] {
            minted += usize::from(self.was_minted(t)?);
        }
        let mut final_txs = std::collections::BTreeSet::new();
        for t in summary.peg_ins[..3].iter().chain(&summary.peg_outs) {
            let last = peg_queue::PegQueue::history(q, t)?
                .into_iter()
                .rev()
                .find(|e| e.state == "stacks_tx_broadcast")
                .and_then(|e| e.stacks_txid);
            if let Some(tx) = last {
                final_txs.insert(tx);
            }
        }
        summary.lines.push(format!(
            "coordinator transactions mined: {calls} ({} mint and burn transactions for 3 mints + 2 burns expected)",
            final_txs.len()
        ));
        summary.checks.push((
            "one mint per allowed peg-in, one burn per peg-out, nothing repeated".into(),
            minted == 3 && calls == final_txs.len() as u64 && (2..=5).contains(&calls),
        ));
        Ok(summary)
    }
}
