//! The coordinator's configuration: a TOML file, overridden by environment
//! variables, checked field by field before anything starts.
//!
//! Reading is two-phase: the file and the environment are merged into a
//! [`RawConfig`] of plain values, then [`Config::from_raw`] parses every field
//! into a real type (URLs, keys, amounts, networks, the signer set and the
//! allowlist) and reports every bad field at once, each by name.
//!
//! An environment variable `SBTC_COORDINATOR__A__B` sets the field `b` of the
//! table `a`; its value is read as a TOML value (numbers, booleans) and
//! otherwise taken as a string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::Network;
use frost_coordinator::SignerSet;
use peg_ops::BurnHeight;
use serde::Deserialize;
use stacks_wire::{ContractId, StacksAddress, StacksNetwork, StacksPrivateKey};

use crate::secret::Secret;
use peg_rules::{Allowlist, Policy};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SBTC_COORDINATOR__";

/// The configuration file as written, before checking.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `mainnet`, `testnet`, `signet` or `regtest`; required (no default).
    pub network: Option<String>,
    /// The sBTC contract, `ADDRESS.name`.
    pub contract: Option<String>,
    /// The Stacks private key, hex (64 digits, or 66 ending in `01` for compressed).
    pub stacks_private_key: Option<String>,
    /// The stacks-node RPC URL.
    pub stacks_node_url: Option<String>,
    /// Where the queue and key material live.
    pub data_dir: Option<PathBuf>,
    /// `stacks-node` (the node's burn_ops endpoint) or `bitcoin` (parse blocks).
    pub op_source: Option<String>,
    /// The first Bitcoin height to scan when nothing has been scanned.
    pub start_height: Option<u64>,
    /// The two OP_RETURN magic bytes of peg operations (the stacks-node's
    /// `burnchain.magic_bytes`); default `X2` mainnet, `T2` testnet and
    /// signet, `id` regtest. Moved to the signer set file (`magic_bytes`):
    /// still accepted here when it agrees with it.
    pub magic_bytes: Option<String>,
    /// How long to wait between polls when idle, in milliseconds.
    pub poll_interval_ms: Option<u64>,
    /// The closed-alpha allowlist file. Moved to the signer set file's
    /// `[policy]`: still accepted here when it lists the same entries.
    pub allowlist_file: Option<PathBuf>,
    /// Failed attempts of a step that waiting cannot fix before the op ends
    /// in `failed` with the reason (default 10).
    pub max_attempts: Option<u32>,
    /// The most mints (or burns) one Stacks transaction carries
    /// (`mint-many!`, `burn-many!`): 1 to 200, default 100.
    pub stacks_batch: Option<u64>,
    /// Timeout of every node call, in milliseconds.
    pub rpc_timeout_ms: Option<u64>,
    /// Where `run` serves /health, /status and /metrics (default
    /// `127.0.0.1:9181`; `off` for none).
    pub status_listen: Option<String>,
    /// How long, in milliseconds, a node or the relay may stay unreachable
    /// (or no tick succeed) before `/health` answers 503 (default 60000).
    pub unhealthy_after_ms: Option<u64>,
    /// The bitcoind connection.
    #[serde(default)]
    pub bitcoin_node: RawBitcoinNode,
    /// The relay and the signers.
    #[serde(default)]
    pub relay: RawRelay,
    /// Confirmation depths.
    #[serde(default)]
    pub confirmations: RawConfirmations,
    /// Fee policy.
    #[serde(default)]
    pub fees: RawFees,
    /// How long `run` waits at start for its nodes and the relay to answer,
    /// in seconds (default: until they do, or until stopped).
    pub startup_wait_secs: Option<u64>,
    /// The fields an environment variable set (`fees.stacks_fee_cap` ->
    /// `SBTC_COORDINATOR__FEES__STACKS_FEE_CAP`): errors name the variable.
    #[serde(skip)]
    pub env_overrides: BTreeMap<String, String>,
}

/// `[bitcoin_node]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBitcoinNode {
    /// The JSON-RPC URL.
    pub url: Option<String>,
    /// RPC user (with `password`).
    pub user: Option<String>,
    /// RPC password (with `user`).
    pub password: Option<String>,
    /// Bitcoin Core's cookie file (instead of user and password).
    pub cookie_file: Option<PathBuf>,
}

/// `[relay]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// The relay's URL.
    pub url: Option<String>,
    /// The key that signs the coordinator's relay messages, hex.
    pub network_private_key: Option<String>,
    /// The signer set file (shared with the signers).
    pub signer_config: Option<PathBuf>,
    /// How long DKG may take, in milliseconds.
    pub dkg_timeout_ms: Option<u64>,
    /// How long one signing round may take, in milliseconds.
    pub sign_timeout_ms: Option<u64>,
    /// How many signing rounds may be in flight at once (default
    /// [`frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT`]).
    pub rounds_in_flight: Option<u64>,
    /// Require the signer set published in the contract (it must match the
    /// signer file). Without it, the contract's set is still compared when
    /// there is one.
    pub signer_set_from_contract: Option<bool>,
}

/// `[confirmations]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfirmations {
    /// Bitcoin confirmations before acting on a peg-in or peg-out request.
    pub ops: Option<u32>,
    /// Bitcoin confirmations before a fulfilment counts as done.
    pub fulfillment: Option<u32>,
    /// Stacks blocks a mint or burn must be deep before it counts (1: the
    /// tip; default 1 on regtest, 6 elsewhere).
    pub stacks: Option<u32>,
}

/// The lowest `fees.stacks_fee_cap` accepted, µSTX: a mint or burn is a few
/// hundred bytes, and the stacks-node asks 1 µSTX per byte.
pub const MIN_STACKS_FEE_CAP: u64 = 1_000;

/// `[fees]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFees {
    /// Lowest Stacks fee, µSTX.
    pub stacks_fee_floor: Option<u64>,
    /// Highest Stacks fee, µSTX.
    pub stacks_fee_cap: Option<u64>,
    /// Lowest Bitcoin fee rate, sat/vB. Moved to the signer set file's
    /// `[policy] fee_rate_floor`: accepted here only when equal.
    pub bitcoin_fee_rate_floor: Option<u64>,
    /// Highest Bitcoin fee rate, sat/vB. Moved to `[policy] fee_rate_cap`.
    pub bitcoin_fee_rate_cap: Option<u64>,
    /// Confirmation target for `estimatesmartfee`, blocks.
    pub bitcoin_fee_target_blocks: Option<u16>,
    /// How much of a fulfilment's miner fee the peg wallet may pay beyond the
    /// user's fulfilment fee, sats. Moved to `[policy] subsidy_sats`.
    pub fulfillment_subsidy_sats: Option<u64>,
    /// Warn when the coordinator's STX balance falls below this, µSTX.
    pub stx_low_balance_warning: Option<u64>,
    /// Replace a Stacks transaction that has been the next nonce to mine for
    /// this long by a same-nonce one with a higher fee, seconds.
    pub stacks_replace_after_secs: Option<u64>,
}

/// Where peg operations are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpSourceKind {
    /// The stacks-node's `/v2/burn_ops` endpoint.
    StacksNode,
    /// Bitcoin blocks, parsed by the coordinator.
    Bitcoin,
}

/// How the coordinator authenticates to bitcoind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitcoinAuth {
    /// User and password.
    UserPass {
        /// The user.
        user: String,
        /// The password.
        password: Secret<String>,
    },
    /// Bitcoin Core's cookie file, read at each connection.
    Cookie(PathBuf),
    /// No authentication (test nodes only).
    None,
}

/// The coordinator's own fee settings, checked. The Bitcoin fee policy
/// (floor, cap, subsidy) is the signers' too: it is [`Config::policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeePolicy {
    /// Lowest Stacks fee, µSTX.
    pub stacks_fee_floor: u64,
    /// Highest Stacks fee, µSTX.
    pub stacks_fee_cap: u64,
    /// `estimatesmartfee` target.
    pub bitcoin_fee_target_blocks: u16,
    /// STX balance warning threshold, µSTX.
    pub stx_low_balance_warning: u64,
    /// When a stuck Stacks transaction is replaced by fee.
    pub stacks_replace_after: Duration,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Bitcoin network.
    pub network: Network,
    /// The Stacks network (mainnet with Bitcoin mainnet, testnet otherwise).
    pub stacks_network: StacksNetwork,
    /// The sBTC contract.
    pub contract: ContractId,
    /// The coordinator's Stacks key.
    pub stacks_private_key: Secret<StacksPrivateKey>,
    /// The stacks-node RPC URL.
    pub stacks_node_url: String,
    /// The bitcoind JSON-RPC URL.
    pub bitcoin_node_url: String,
    /// bitcoind authentication.
    pub bitcoin_auth: BitcoinAuth,
    /// The relay URL.
    pub relay_url: String,
    /// The coordinator's relay message key.
    pub network_private_key: Secret<SecretKey>,
    /// The signer set.
    pub signer_set: SignerSet,
    /// The signer file's `network` and `contract`: part of the relay
    /// envelope's domain, which must be the signers'.
    pub signer_domain: (Option<String>, Option<String>),
    /// DKG time limit.
    pub dkg_timeout: Duration,
    /// Signing round time limit.
    pub sign_timeout: Duration,
    /// How many signing rounds may be in flight at once (at least 1).
    pub rounds_in_flight: usize,
    /// Whether the contract must publish the signer set.
    pub signer_set_from_contract: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where ops come from.
    pub op_source: OpSourceKind,
    /// OP_RETURN magic bytes of peg operations.
    pub magic_bytes: [u8; 2],
    /// First height to scan.
    pub start_height: BurnHeight,
    /// Idle poll interval.
    pub poll_interval: Duration,
    /// Node call timeout.
    pub rpc_timeout: Duration,
    /// The status endpoint's address, if any.
    pub status_listen: Option<String>,
    /// How long `run` waits at start for its nodes and the relay (`None`:
    /// until they answer or it is stopped).
    pub startup_wait: Option<Duration>,
    /// How long a node or the relay may be unreachable, or no tick succeed,
    /// before `/health` fails.
    pub unhealthy_after: Duration,
    /// Confirmations before acting on an op.
    pub op_confirmations: u32,
    /// Confirmations before a fulfilment is done.
    pub fulfillment_confirmations: u32,
    /// Stacks blocks a mint or burn must be deep before it counts.
    pub stacks_confirmations: u32,
    /// Failed attempts of a step before the op ends in `failed`.
    pub max_attempts: u32,
    /// The most mints (or burns) one Stacks transaction carries (1 to
    /// [`peg_ops::contract::MAX_BATCH`]).
    pub stacks_batch: usize,
    /// The coordinator's own fee settings.
    pub fees: FeePolicy,
    /// The peg's policy (fees, outflow limits, allowlist), from the signer
    /// set file's `[policy]` table: the signers check the same one.
    pub policy: Policy,
}

/// The magic bytes of `network` when no file sets them: `X2` mainnet, `id`
/// regtest, `T2` otherwise (the stacks-node's defaults).
pub fn default_magic_bytes(network: Network) -> [u8; 2] {
    match network {
        Network::Bitcoin => *b"X2",
        Network::Regtest => *b"id",
        _ => *b"T2",
    }
}

/// The default of `confirmations.stacks`: 1 (the tip) on regtest, where
/// nothing forks but the tests, 6 elsewhere.
pub fn default_stacks_confirmations(network: Network) -> u32 {
    match network {
        Network::Regtest => 1,
        _ => 6,
    }
}

impl Config {
    /// Returns the coordinator's Stacks address.
    pub fn stacks_address(&self) -> StacksAddress {
        let k = self.stacks_private_key.expose();
        let public = k.key.public_key(&Secp256k1::signing_only());
        StacksAddress::p2pkh(self.stacks_network, &public, k.compressed)
    }

    /// Returns the coordinator's relay message public key.
    pub fn network_public_key(&self) -> PublicKey {
        self.network_private_key
            .expose()
            .public_key(&Secp256k1::signing_only())
    }
}

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as written in the file (`bitcoin_node.url`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
    /// The environment variable that set the field, when one did.
    pub env: Option<String>,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.env {
            Some(var) => write!(
                f,
                "{var} (environment, overriding {}): {}",
                self.field, self.problem
            ),
            None => write!(f, "{}: {}", self.field, self.problem),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML or has unknown fields or wrong types.
    #[error("config file {path}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// One or more fields are invalid.
    #[error("invalid configuration:{}", .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Invalid(Vec<FieldError>),
}

impl RawConfig {
    /// Reads `path`, then applies the environment overrides in `env`.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, env).map_err(|reason| ConfigError::Syntax {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses TOML text, then applies environment overrides.
    ///
    /// # Errors
    /// A message for invalid TOML, unknown fields or wrong types.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, String> {
        let mut table: toml::Table = text.parse().map_err(|e| syntax_message(text, &e))?;
        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(ENV_PREFIX)
                    .map(|k| (k.to_ascii_lowercase(), v))
            })
            .collect();
        let mut from_env = BTreeMap::new();
        for (key, value) in overrides {
            let var = format!("{ENV_PREFIX}{}", key.to_uppercase());
            let path: Vec<&str> = key.split("__").collect();
            set_path(&mut table, &path, env_value(&value)).map_err(|e| format!("{var}: {e}"))?;
            from_env.insert(path.join("."), var);
        }
        match RawConfig::deserialize(toml::Value::Table(table.clone())) {
            Ok(mut raw) => {
                raw.env_overrides = from_env;
                Ok(raw)
            }
            Err(first) => {
                let all = field_type_errors(&table, &from_env);
                if all.is_empty() {
                    Err(first.message().to_owned())
                } else {
                    Err(all.join("\n  "))
                }
            }
        }
    }
}

/// The secret fields (keys, a password) the file at `path` itself holds,
/// as written (`relay.network_private_key`); empty when it cannot be read
/// or holds none. The binary warns when such a file is readable by others.
pub fn secret_fields_in_file(path: &Path) -> Vec<&'static str> {
    let Ok(table) = std::fs::read_to_string(path).map(|t| t.parse::<toml::Table>()) else {
        return Vec::new();
    };
    let Ok(table) = table else {
        return Vec::new();
    };
    SECRET_FIELDS
        .iter()
        .copied()
        .filter(|f| {
            let mut v: Option<&toml::Value> = None;
            for (i, part) in f.split('.').enumerate() {
                v = if i == 0 {
                    table.get(part)
                } else {
                    v.and_then(|t| t.get(part))
                };
            }
            v.is_some()
        })
        .collect()
}

/// The fields whose values are secrets: an error about one never shows
/// its value.
const SECRET_FIELDS: &[&str] = &[
    "stacks_private_key",
    "relay.network_private_key",
    "bitcoin_node.password",
];

/// A TOML syntax error by line and column, without the line itself: the
/// line may hold a key.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let field = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        });
    let near = field.map(|k| format!(" (in {k})")).unwrap_or_default();
    format!(
        "TOML syntax error at line {line}, column {column}{near}: {}",
        e.message().trim()
    )
}

/// Every field whose value has the wrong type or is unknown, each named
/// (by its environment variable when one set it): each field is checked on
/// its own, so one run reports them all.
fn field_type_errors(table: &toml::Table, from_env: &BTreeMap<String, String>) -> Vec<String> {
    let check = |t: toml::Table| RawConfig::deserialize(toml::Value::Table(t)).err();
    let name = |field: &str| match from_env.get(field) {
        Some(var) => format!("{var} (environment, overriding {field})"),
        None => field.to_owned(),
    };
    let problem = |field: &str, e: toml::de::Error| {
        if SECRET_FIELDS.contains(&field) {
            format!("{}: must be a string (the value is not shown)", name(field))
        } else {
            format!("{}: {}", name(field), e.message().trim())
        }
    };
    let mut errors = Vec::new();
    for (key, value) in table {
        let Some(e) = check(toml::Table::from_iter([(key.clone(), value.clone())])) else {
            continue;
        };
        let sub = match value {
            toml::Value::Table(sub) if !sub.is_empty() => sub,
            _ => {
                errors.push(problem(key, e));
                continue;
            }
        };
        let before = errors.len();
        for (k, v) in sub {
            let one = toml::Table::from_iter([(k.clone(), v.clone())]);
            if let Some(e) = check(toml::Table::from_iter([(
                key.clone(),
                toml::Value::Table(one),
            )])) {
                errors.push(problem(&format!("{key}.{k}"), e));
            }
        }
        if errors.len() == before {
            errors.push(problem(key, e));
        }
    }
    errors
}

fn env_value(s: &str) -> toml::Value {
    match format!("v = {s}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            Some(v @ toml::Value::String(_)) if s.starts_with('"') || s.starts_with('\'') => v,
            _ => toml::Value::String(s.to_owned()),
        },
        Err(_) => toml::Value::String(s.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert((*last).to_owned(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a table")),
            }
        }
    }
}

/// Collects field errors while parsing.
struct Checker {
    errors: Vec<FieldError>,
    base_dir: PathBuf,
    env_overrides: BTreeMap<String, String>,
}

impl Checker {
    fn fail(&mut self, field: &str, problem: impl Into<String>) {
        // A field set by the environment is named by its variable; a
        // table's check names the variable that set one of its fields.
        let env = self.env_overrides.get(field).cloned().or_else(|| {
            let prefix = format!("{field}.");
            self.env_overrides
                .iter()
                .find(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.clone())
        });
        self.errors.push(FieldError {
            field: field.to_owned(),
            problem: problem.into(),
            env,
        });
    }

    fn required<'a, T>(&mut self, field: &str, v: &'a Option<T>) -> Option<&'a T> {
        if v.is_none() {
            self.fail(field, "is required");
        }
        v.as_ref()
    }

    fn url(&mut self, field: &str, v: &Option<String>) -> String {
        let Some(u) = self.required(field, v) else {
            return String::new();
        };
        let u = u.trim_end_matches('/').to_owned();
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => u,
            _ => {
                self.fail(field, format!("{u:?} is not an http:// or https:// URL"));
                String::new()
            }
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    fn positive_ms(&mut self, field: &str, v: Option<u64>, default: u64) -> Duration {
        let ms = v.unwrap_or(default);
        if ms == 0 {
            self.fail(field, "must be above 0");
        }
        Duration::from_millis(ms)
    }
}

fn parse_secret_key(s: &str) -> Result<(SecretKey, bool), String> {
    let bytes = hex::decode(s.trim()).map_err(|_| "is not hex".to_owned())?;
    let (key, compressed) = match bytes.len() {
        32 => (&bytes[..], false),
        33 if bytes[32] == 1 => (&bytes[..32], true),
        n => return Err(format!("has {n} bytes; expected 32, or 33 ending in 01")),
    };
    let key = SecretKey::from_slice(key).map_err(|_| "is not a valid secp256k1 key".to_owned())?;
    Ok((key, compressed))
}

impl Config {
    /// Checks every field of `raw`. Relative paths are taken from `base_dir`
    /// (the config file's folder). `signer_config` overrides `relay.signer_config`.
    ///
    /// # Errors
    /// Every invalid field, each named with its problem.
    pub fn from_raw(
        raw: &RawConfig,
        base_dir: &Path,
        signer_config: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut c = Checker {
            errors: Vec::new(),
            base_dir: base_dir.to_owned(),
            env_overrides: raw.env_overrides.clone(),
        };

        // No default: a file that forgets `network` must not silently run
        // on testnet (or anywhere).
        let network = match raw.network.as_deref() {
            None => {
                c.fail(
                    "network",
                    "is required: mainnet, testnet, signet or regtest (there is no default)",
                );
                Network::Testnet
            }
            Some("mainnet" | "bitcoin") => Network::Bitcoin,
            Some("testnet") => Network::Testnet,
            Some("signet") => Network::Signet,
            Some("regtest") => Network::Regtest,
            Some(other) => {
                c.fail(
                    "network",
                    format!("{other:?} is not one of mainnet, testnet, signet, regtest"),
                );
                Network::Testnet
            }
        };
        let stacks_network = if network == Network::Bitcoin {
            StacksNetwork::Mainnet
        } else {
            StacksNetwork::Testnet
        };

        let contract = match c
            .required("contract", &raw.contract)
            .map(|s| s.parse::<ContractId>())
        {
            Some(Ok(id)) => {
                if id.address.network() != Some(stacks_network) {
                    c.fail(
                        "contract",
                        format!("{id} is not a {stacks_network:?} address"),
                    );
                }
                Some(id)
            }
            Some(Err(e)) => {
                c.fail("contract", e.to_string());
                None
            }
            None => None,
        };

        let stacks_private_key = match c
            .required("stacks_private_key", &raw.stacks_private_key)
            .map(|s| parse_secret_key(s))
        {
            Some(Ok((key, compressed))) => Some(StacksPrivateKey { key, compressed }),
            Some(Err(e)) => {
                c.fail("stacks_private_key", e);
                None
            }
            None => None,
        };

        let stacks_node_url = c.url("stacks_node_url", &raw.stacks_node_url);
        let bitcoin_node_url = c.url("bitcoin_node.url", &raw.bitcoin_node.url);
        let b = &raw.bitcoin_node;
        let bitcoin_auth = match (&b.user, &b.password, &b.cookie_file) {
            (Some(user), Some(password), None) => BitcoinAuth::UserPass {
                user: user.clone(),
                password: Secret::new(password.clone()),
            },
            (None, None, Some(cookie)) => BitcoinAuth::Cookie(c.path(cookie)),
            (None, None, None) => BitcoinAuth::None,
            (Some(_), None, None) | (None, Some(_), None) => {
                c.fail("bitcoin_node", "user and password go together");
                BitcoinAuth::None
            }
            _ => {
                c.fail(
                    "bitcoin_node",
                    "give either user and password, or cookie_file, not both",
                );
                BitcoinAuth::None
            }
        };

        let relay_url = c.url("relay.url", &raw.relay.url);
        let network_private_key = match c
            .required("relay.network_private_key", &raw.relay.network_private_key)
            .map(|s| parse_secret_key(s))
        {
            Some(Ok((k, _))) => Some(k),
            Some(Err(e)) => {
                c.fail("relay.network_private_key", e);
                None
            }
            None => None,
        };

        let signer_path = signer_config
            .map(Path::to_owned)
            .or_else(|| raw.relay.signer_config.as_ref().map(|p| c.path(p)));
        let signer_set = match &signer_path {
            None => {
                c.fail(
                    "relay.signer_config",
                    "is required (or pass --signer-config)",
                );
                None
            }
            Some(p) => match load_signer_set(p, network_private_key.as_ref()) {
                Ok(f) => Some(f),
                Err(e) => {
                    c.fail("relay.signer_config", e);
                    None
                }
            },
        };
        let dkg_timeout = c.positive_ms("relay.dkg_timeout_ms", raw.relay.dkg_timeout_ms, 60_000);
        let sign_timeout =
            c.positive_ms("relay.sign_timeout_ms", raw.relay.sign_timeout_ms, 10_000);

        let data_dir = c
            .required("data_dir", &raw.data_dir)
            .map(|p| c.path(p))
            .unwrap_or_default();

        let op_source = match raw.op_source.as_deref().unwrap_or("stacks-node") {
            "stacks-node" => OpSourceKind::StacksNode,
            "bitcoin" => OpSourceKind::Bitcoin,
            other => {
                c.fail(
                    "op_source",
                    format!("{other:?} is not stacks-node or bitcoin"),
                );
                OpSourceKind::StacksNode
            }
        };
        let magic_raw = match raw.magic_bytes.as_deref() {
            None => None,
            Some(text) => match text.as_bytes() {
                [a, b] if a.is_ascii_graphic() && b.is_ascii_graphic() => Some([*a, *b]),
                _ => {
                    c.fail(
                        "magic_bytes",
                        format!("{text:?} is not two printable ASCII characters"),
                    );
                    None
                }
            },
        };
        let poll_interval = c.positive_ms("poll_interval_ms", raw.poll_interval_ms, 5_000);
        let rpc_timeout = c.positive_ms("rpc_timeout_ms", raw.rpc_timeout_ms, 10_000);
        let unhealthy_after = c.positive_ms("unhealthy_after_ms", raw.unhealthy_after_ms, 60_000);

        let default_depth = match network {
            Network::Bitcoin => 6,
            Network::Regtest => 1,
            _ => 3,
        };
        let op_confirmations = raw.confirmations.ops.unwrap_or(default_depth);
        if op_confirmations == 0 {
            c.fail("confirmations.ops", "must be at least 1");
        }
        let fulfillment_confirmations = raw.confirmations.fulfillment.unwrap_or(1);
        if fulfillment_confirmations == 0 {
            c.fail("confirmations.fulfillment", "must be at least 1");
        }
        let stacks_confirmations = raw
            .confirmations
            .stacks
            .unwrap_or_else(|| default_stacks_confirmations(network));
        if stacks_confirmations == 0 {
            c.fail(
                "confirmations.stacks",
                "must be at least 1 (1: a mint or burn counts at the Stacks tip)",
            );
        }
        let max_attempts = raw.max_attempts.unwrap_or(crate::DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            c.fail("max_attempts", "must be at least 1");
        }
        let max_batch = peg_ops::contract::MAX_BATCH;
        let stacks_batch = match raw.stacks_batch {
            None => crate::DEFAULT_STACKS_BATCH,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (1..=max_batch).contains(&n) => n,
                _ => {
                    c.fail(
                        "stacks_batch",
                        format!("must be 1 to {max_batch} (the contract's list bound)"),
                    );
                    1
                }
            },
        };
        let rounds_in_flight = match raw.relay.rounds_in_flight {
            None => frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    c.fail("relay.rounds_in_flight", "must be at least 1");
                    1
                }
            },
        };

        let f = &raw.fees;
        let stacks_fee_floor = f.stacks_fee_floor.unwrap_or(1_000);
        let stacks_fee_cap = f.stacks_fee_cap.unwrap_or(1_000_000);
        // The node's minimum is 1 µSTX per byte; the wallet pays at least
        // that whatever the floor, but a floor of 0 says the operator expects
        // free transactions, and a cap below what the smallest call costs
        // would refuse every one.
        if stacks_fee_floor == 0 {
            c.fail(
                "fees.stacks_fee_floor",
                "must be at least 1 µSTX (the stacks-node refuses less than 1 µSTX per byte)",
            );
        }
        if stacks_fee_floor > stacks_fee_cap {
            c.fail("fees.stacks_fee_floor", "is above fees.stacks_fee_cap");
        }
        if stacks_fee_cap < MIN_STACKS_FEE_CAP {
            c.fail(
                "fees.stacks_fee_cap",
                "is below what a mint or burn costs at the stacks-node's 1 µSTX per byte (at least 1000 µSTX)",
            );
        }
        let target = f.bitcoin_fee_target_blocks.unwrap_or(6);
        if !(1..=1008).contains(&target) {
            c.fail("fees.bitcoin_fee_target_blocks", "must be 1 to 1008");
        }
        let fees = FeePolicy {
            stacks_fee_floor,
            stacks_fee_cap,
            bitcoin_fee_target_blocks: target,
            stx_low_balance_warning: f.stx_low_balance_warning.unwrap_or(10_000_000),
            stacks_replace_after: Duration::from_secs(
                f.stacks_replace_after_secs
                    .unwrap_or(crate::DEFAULT_STACKS_REPLACE_AFTER.as_secs()),
            ),
        };
        if f.stacks_replace_after_secs == Some(0) {
            c.fail(
                "fees.stacks_replace_after_secs",
                "must be above 0 (0 would replace every transaction at once)",
            );
        }

        let (policy, magic_bytes) = match (&signer_set, &signer_path) {
            (Some(file), Some(path)) => {
                let policy = policy_from_signer_file(&mut c, raw, file, path, network);
                let magic = match file.magic() {
                    Err(e) => {
                        c.fail("relay.signer_config", format!("{}: {e}", path.display()));
                        None
                    }
                    Ok(Some(theirs)) => {
                        if let Some(ours) = magic_raw.filter(|m| *m != theirs) {
                            c.fail(
                                "magic_bytes",
                                format!(
                                    "{:?} disagrees with magic_bytes = {:?} in the signer set file {}: it moved there; remove it here",
                                    String::from_utf8_lossy(&ours),
                                    String::from_utf8_lossy(&theirs),
                                    path.display()
                                ),
                            );
                        }
                        Some(theirs)
                    }
                    Ok(None) => Some(magic_raw.unwrap_or_else(|| default_magic_bytes(network))),
                };
                (policy, magic)
            }
            _ => (None, None),
        };

        match (
            contract,
            stacks_private_key,
            network_private_key,
            signer_set,
            policy,
            magic_bytes,
        ) {
            (
                Some(contract),
                Some(sk),
                Some(nk),
                Some(signer_file),
                Some(policy),
                Some(magic_bytes),
            ) if c.errors.is_empty() => {
                let signer_domain = (signer_file.network.clone(), signer_file.contract.clone());
                let signer_set = signer_file.set;
                Ok(Config {
                    network,
                    stacks_network,
                    contract,
                    stacks_private_key: Secret::new(sk),
                    stacks_node_url,
                    bitcoin_node_url,
                    bitcoin_auth,
                    relay_url,
                    network_private_key: Secret::new(nk),
                    signer_set,
                    signer_domain,
                    dkg_timeout,
                    sign_timeout,
                    rounds_in_flight,
                    signer_set_from_contract: raw.relay.signer_set_from_contract.unwrap_or(false),
                    data_dir,
                    op_source,
                    magic_bytes,
                    start_height: BurnHeight(raw.start_height.unwrap_or(0)),
                    poll_interval,
                    rpc_timeout,
                    status_listen: match raw.status_listen.as_deref() {
                        Some("off" | "") => None,
                        Some(a) => Some(a.to_owned()),
                        None => Some("127.0.0.1:9181".to_owned()),
                    },
                    startup_wait: raw.startup_wait_secs.map(Duration::from_secs),
                    unhealthy_after,
                    op_confirmations,
                    fulfillment_confirmations,
                    stacks_confirmations,
                    max_attempts,
                    stacks_batch,
                    fees,
                    policy,
                })
            }
            _ => Err(ConfigError::Invalid(c.errors)),
        }
    }

    /// Reads, overrides from `env` and checks a configuration file.
    ///
    /// # Errors
    /// See [`RawConfig::load`] and [`Config::from_raw`].
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        signer_config: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw = RawConfig::load(path, env)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_raw(&raw, base, signer_config)
    }
}

/// Checks and loads the signer set file's `[policy]`, and that the keys of
/// coordinator.toml that moved there (`allowlist_file`,
/// `fees.bitcoin_fee_rate_floor`, `fees.bitcoin_fee_rate_cap`,
/// `fees.fulfillment_subsidy_sats`) agree with it when they are still given.
fn policy_from_signer_file(
    c: &mut Checker,
    raw: &RawConfig,
    file: &frost_coordinator::SignerFile,
    path: &Path,
    network: Network,
) -> Option<Policy> {
    let signer = path.display();
    if file.policy.allowlist_file.is_none() {
        match &raw.allowlist_file {
            Some(ours) => c.fail(
                "allowlist_file",
                format!(
                    "the allowlist moved to the signer set file, which the signers read too: add allowlist_file = {:?} under [policy] in {signer} (relative to that file) and remove allowlist_file here",
                    ours.display()
                ),
            ),
            None => c.fail(
                "relay.signer_config",
                format!("{signer}: [policy] has no allowlist_file; the closed alpha needs one"),
            ),
        }
        return None;
    }
    let policy = match file.policy(path, network) {
        Ok(p) => p,
        Err(e) => {
            c.fail("relay.signer_config", e);
            return None;
        }
    };
    if let Some(ours) = &raw.allowlist_file {
        match Allowlist::load(&c.path(ours), network) {
            Ok(a) if a == policy.allowlist => {}
            Ok(_) => c.fail(
                "allowlist_file",
                format!(
                    "{} disagrees with [policy] allowlist_file = {:?} of the signer set file {signer}: the allowlist moved there; remove allowlist_file here",
                    c.path(ours).display(),
                    file.policy.allowlist_file.as_deref().unwrap_or_default()
                ),
            ),
            Err(e) => c.fail("allowlist_file", e),
        }
    }
    let f = &raw.fees;
    let moved = [
        (
            "fees.bitcoin_fee_rate_floor",
            f.bitcoin_fee_rate_floor,
            "fee_rate_floor",
            file.policy.fee_rate_floor,
        ),
        (
            "fees.bitcoin_fee_rate_cap",
            f.bitcoin_fee_rate_cap,
            "fee_rate_cap",
            file.policy.fee_rate_cap,
        ),
        (
            "fees.fulfillment_subsidy_sats",
            f.fulfillment_subsidy_sats,
            "subsidy_sats",
            file.policy.subsidy_sats,
        ),
    ];
    for (field, ours, theirs_name, theirs) in moved {
        if let Some(ours) = ours.filter(|v| *v != theirs) {
            c.fail(
                field,
                format!(
                    "{ours} disagrees with [policy] {theirs_name} = {theirs} of the signer set file {signer}: the fee policy moved there (the signers check it); remove {field} here"
                ),
            );
        }
    }
    Some(policy)
}

/// Reads the shared signer file and checks that its coordinator key is ours:
/// otherwise every signer would drop every packet we send.
fn load_signer_set(
    path: &Path,
    ours: Option<&SecretKey>,
) -> Result<frost_coordinator::SignerFile, String> {
    let file = frost_coordinator::SignerFile::load(path)?;
    if let Some(k) = ours {
        let ours = k.public_key(&Secp256k1::signing_only());
        if file.coordinator_public_key != ours {
            return Err(format!(
                "{}: coordinator_public_key {} is not the public key of relay.network_private_key ({ours})",
                path.display(),
                file.coordinator_public_key
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf")
    }

    fn sample() -> String {
        std::fs::read_to_string(conf_dir().join("coordinator.toml")).unwrap()
    }

    fn check(text: &str, env: Vec<(&str, &str)>) -> Result<Config, ConfigError> {
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
        let raw = RawConfig::parse(text, env).map_err(|reason| ConfigError::Syntax {
            path: "test".into(),
            reason,
        })?;
        Config::from_raw(&raw, &conf_dir(), None)
    }

    fn problems(r: Result<Config, ConfigError>) -> Vec<FieldError> {
        match r {
            Err(ConfigError::Invalid(v)) => v,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn the_sample_config_loads() {
        let c = Config::load(&conf_dir().join("coordinator.toml"), vec![], None).unwrap();
        assert_eq!(c.network, Network::Regtest);
        assert_eq!(c.stacks_network, StacksNetwork::Testnet);
        assert_eq!(
            c.contract.to_string(),
            "ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0.sbtc-alpha"
        );
        // The sample's contract is deployed by the coordinator's own key.
        assert_eq!(c.stacks_address(), c.contract.address);
        assert_eq!(c.signer_set.num_signers(), 3);
        assert_eq!(c.signer_set.threshold, 2);
        assert_eq!(c.op_confirmations, 1);
        assert_eq!(c.policy.allowlist.len(), (2, 1));
        assert_eq!(c.stacks_confirmations, 1);
        assert_eq!(c.max_attempts, 10);
        assert_eq!(c.stacks_batch, 100);
        assert_eq!(c.rounds_in_flight, 8);
        let unset = sample()
            .replace("stacks_batch = 100", "")
            .replace("rounds_in_flight = 8", "");
        let d = check(&unset, vec![]).unwrap();
        assert_eq!(d.stacks_batch, crate::DEFAULT_STACKS_BATCH);
        assert_eq!(
            d.rounds_in_flight,
            frost_coordinator::DEFAULT_ROUNDS_IN_FLIGHT
        );
        assert_eq!(c.op_source, OpSourceKind::Bitcoin);
        assert_eq!(&c.magic_bytes, b"id");
        assert_eq!(c.status_listen.as_deref(), Some("127.0.0.1:9181"));
        let off = check(&sample(), vec![("SBTC_COORDINATOR__STATUS_LISTEN", "off")]).unwrap();
        assert_eq!(off.status_listen, None);
        assert!(c.data_dir.ends_with("conf/../data"));
    }

    #[test]
    fn a_missing_network_is_an_error_not_testnet() {
        let text = sample().replace("network = \"regtest\"", "");
        let p = problems(check(&text, vec![]));
        assert!(
            p.iter()
                .any(|e| e.field == "network" && e.problem.contains("required")),
            "{p:?}"
        );
    }

    #[test]
    fn every_wrong_type_is_reported_in_one_run_and_env_ones_by_variable() {
        let text = sample()
            .replace("ops = 1", "ops = \"one\"")
            .replace("poll_interval_ms = 5000", "poll_interval_ms = true")
            .replace("stacks_fee_cap = 1000000 ", "stacks_fee_cap = \"x\" ");
        let r = check(
            &text,
            vec![("SBTC_COORDINATOR__RELAY__DKG_TIMEOUT_MS", "soon")],
        );
        let Err(ConfigError::Syntax { reason, .. }) = r else {
            panic!("expected type errors, got {r:?}")
        };
        for f in [
            "confirmations.ops",
            "poll_interval_ms",
            "fees.stacks_fee_cap",
            "SBTC_COORDINATOR__RELAY__DKG_TIMEOUT_MS",
        ] {
            assert!(reason.contains(f), "{f} not named in {reason}");
        }
    }

    #[test]
    fn a_secret_never_shows_in_a_syntax_or_type_error() {
        let key = "11468a462ac5b1df92cacf04a65179ecd02f514196909f7dbc63abae88ba05c6";
        // An unterminated string on the key's line.
        let text = sample().replace(&format!("{key}01\""), &format!("{key}01"));
        let r = check(&text, vec![]);
        let Err(ConfigError::Syntax { reason, .. }) = r else {
            panic!("expected a syntax error, got {r:?}")
        };
        assert!(!reason.contains(&key[..16]), "{reason}");
        assert!(
            reason.contains("line ") && reason.contains("stacks_private_key"),
            "{reason}"
        );
        let text = sample().replace(&format!("\"{key}01\""), "1146846210");
        let r = check(&text, vec![]);
        let Err(ConfigError::Syntax { reason, .. }) = r else {
            panic!("expected a type error, got {r:?}")
        };
        assert!(!reason.contains("1146846210"), "{reason}");
        assert!(reason.contains("stacks_private_key"), "{reason}");
    }

    #[test]
    fn a_bad_value_from_the_environment_names_the_variable() {
        let p = problems(check(
            &sample(),
            vec![("SBTC_COORDINATOR__STACKS_NODE_URL", "nowhere")],
        ));
        let e = p.iter().find(|e| e.field == "stacks_node_url").unwrap();
        assert_eq!(e.env.as_deref(), Some("SBTC_COORDINATOR__STACKS_NODE_URL"));
        assert!(e
            .to_string()
            .starts_with("SBTC_COORDINATOR__STACKS_NODE_URL"));
        let from_file = problems(check(
            &sample().replace("http://127.0.0.1:20443", "x"),
            vec![],
        ));
        assert!(from_file.iter().all(|e| e.env.is_none()), "{from_file:?}");
    }

    #[test]
    fn missing_fields_are_each_named() {
        let p = problems(check("", vec![]));
        let fields: Vec<&str> = p.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "contract",
            "stacks_private_key",
            "stacks_node_url",
            "bitcoin_node.url",
            "relay.url",
            "relay.network_private_key",
            "relay.signer_config",
            "data_dir",
        ] {
            assert!(fields.contains(&f), "{f} not reported in {fields:?}");
        }
    }

    #[test]
    fn bad_values_are_named_with_their_problem() {
        let cases = [
            (
                "network = \"regtest\"",
                "network = \"mainnett\"",
                "network",
                "not one of",
            ),
            (
                "http://127.0.0.1:20443",
                "127.0.0.1:20443",
                "stacks_node_url",
                "not an http",
            ),
            (".sbtc-alpha", ".9bad", "contract", "contract name"),
            (
                "ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0",
                "SP3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0",
                "contract",
                "",
            ),
            (
                "abae88ba05c601\"",
                "abae88ba05c6zz\"",
                "stacks_private_key",
                "not hex",
            ),
            (
                "abae88ba05c601\"",
                "abae88ba05c6aa01\"",
                "stacks_private_key",
                "34 bytes",
            ),
            (
                "abae88ba05c601\"",
                "abae88ba05c699\"",
                "stacks_private_key",
                "33 ending in 01",
            ),
            (
                "poll_interval_ms = 5000",
                "poll_interval_ms = 0",
                "poll_interval_ms",
                "above 0",
            ),
            ("ops = 1", "ops = 0", "confirmations.ops", "at least 1"),
            (
                "stacks = 1",
                "stacks = 0",
                "confirmations.stacks",
                "at least 1",
            ),
            (
                "max_attempts = 10",
                "max_attempts = 0",
                "max_attempts",
                "at least 1",
            ),
            (
                "stacks_batch = 100",
                "stacks_batch = 0",
                "stacks_batch",
                "1 to 200",
            ),
            (
                "stacks_batch = 100",
                "stacks_batch = 201",
                "stacks_batch",
                "1 to 200",
            ),
            (
                "rounds_in_flight = 8",
                "rounds_in_flight = 0",
                "relay.rounds_in_flight",
                "at least 1",
            ),
            (
                "stacks_fee_floor = 1000 ",
                "stacks_fee_floor = 0 ",
                "fees.stacks_fee_floor",
                "at least 1",
            ),
            (
                "stacks_fee_floor = 1000 ",
                "stacks_fee_floor = 2000000 ",
                "fees.stacks_fee_floor",
                "above fees.stacks_fee_cap",
            ),
            (
                "stacks_fee_cap = 1000000 ",
                "stacks_fee_cap = 999 ",
                "fees.stacks_fee_cap",
                "1 µSTX per byte",
            ),
            (
                "signer.toml",
                "missing.toml",
                "relay.signer_config",
                "cannot read",
            ),
            (
                "password = \"devnet\"",
                "cookie_file = \"x\"",
                "bitcoin_node",
                "not both",
            ),
        ];
        for (from, to, field, problem) in cases {
            let text = sample().replacen(from, to, 1);
            assert_ne!(text, sample(), "case {to} did not change the sample");
            let p = problems(check(&text, vec![]));
            assert!(
                p.iter()
                    .any(|e| e.field == field && e.problem.contains(problem)),
                "{to}: expected {field} / {problem}, got {p:?}"
            );
        }
    }

    /// The keys that moved to the signer set file are accepted when they say
    /// what it says, and each named with both places when they do not.
    #[test]
    fn moved_keys_must_agree_with_the_signer_set_file() {
        let agreeing = check(
            &sample(),
            vec![
                ("SBTC_COORDINATOR__ALLOWLIST_FILE", "allowlist.toml"),
                ("SBTC_COORDINATOR__MAGIC_BYTES", "id"),
                ("SBTC_COORDINATOR__FEES__BITCOIN_FEE_RATE_FLOOR", "1"),
                ("SBTC_COORDINATOR__FEES__BITCOIN_FEE_RATE_CAP", "500"),
                ("SBTC_COORDINATOR__FEES__FULFILLMENT_SUBSIDY_SATS", "0"),
            ],
        )
        .unwrap();
        assert_eq!(agreeing.policy.allowlist.len(), (2, 1));
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "stacks = []\nbitcoin = []\n").unwrap();
        for (var, value, field) in [
            (
                "SBTC_COORDINATOR__FEES__BITCOIN_FEE_RATE_FLOOR",
                "2",
                "fees.bitcoin_fee_rate_floor",
            ),
            (
                "SBTC_COORDINATOR__FEES__BITCOIN_FEE_RATE_CAP",
                "100",
                "fees.bitcoin_fee_rate_cap",
            ),
            (
                "SBTC_COORDINATOR__FEES__FULFILLMENT_SUBSIDY_SATS",
                "7",
                "fees.fulfillment_subsidy_sats",
            ),
            ("SBTC_COORDINATOR__MAGIC_BYTES", "T2", "magic_bytes"),
            (
                "SBTC_COORDINATOR__ALLOWLIST_FILE",
                other.to_str().unwrap(),
                "allowlist_file",
            ),
        ] {
            let p = problems(check(&sample(), vec![(var, value)]));
            assert!(
                p.iter().any(|e| e.field == field
                    && e.problem.contains("disagrees")
                    && e.problem.contains("signer.toml")),
                "{var}={value}: {p:?}"
            );
        }
    }

    #[test]
    fn an_allowlist_left_behind_says_to_move_it() {
        let dir = tempfile::tempdir().unwrap();
        let signer = std::fs::read_to_string(conf_dir().join("signer.toml"))
            .unwrap()
            .replace("[policy]\nallowlist_file = \"allowlist.toml\"", "");
        let path = dir.path().join("signers.toml");
        std::fs::write(&path, signer).unwrap();
        let without = sample().replace(
            "signer_config = \"signer.toml\"",
            &format!("signer_config = {:?}", path.display().to_string()),
        );
        // A top-level key goes before the first table.
        let text = format!("allowlist_file = \"allowlist.toml\"\n{without}");
        let p = problems(check(&text, vec![]));
        assert!(
            p.iter().any(|e| e.field == "allowlist_file"
                && e.problem.contains("moved")
                && e.problem.contains("[policy]")),
            "{p:?}"
        );
        // Neither has one: the closed alpha needs it.
        let p = problems(check(&without, vec![]));
        assert!(
            p.iter()
                .any(|e| e.field == "relay.signer_config" && e.problem.contains("allowlist_file")),
            "{p:?}"
        );
    }

    #[test]
    fn a_contract_on_the_wrong_network_is_refused() {
        // A mainnet (SP) deployer in a regtest config.
        let text = sample().replace(
            "ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0.sbtc-alpha",
            "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7.sbtc-alpha",
        );
        let p = problems(check(&text, vec![]));
        assert!(
            p.iter()
                .any(|e| e.field == "contract" && e.problem.contains("Testnet")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_syntax_errors() {
        for text in [
            format!("{}\nstacks_privte_key = \"x\"", sample()),
            sample().replace("ops = 1", "ops = \"one\""),
        ] {
            match check(&text, vec![]) {
                Err(ConfigError::Syntax { reason, .. }) => {
                    assert!(
                        reason.contains("unknown field") || reason.contains("invalid type"),
                        "{reason}"
                    )
                }
                other => panic!("expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn environment_overrides_fields_and_tables() {
        let key = "3d5740417385093d2eae10736f7b834066ab3a9191c729df6186aa3cb34df428";
        let c = check(
            &sample(),
            vec![
                ("SBTC_COORDINATOR__STACKS_PRIVATE_KEY", key),
                ("SBTC_COORDINATOR__BITCOIN_NODE__PASSWORD", "from-env"),
                ("SBTC_COORDINATOR__CONFIRMATIONS__OPS", "4"),
                ("SBTC_COORDINATOR__POLL_INTERVAL_MS", "250"),
                ("UNRELATED", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(
            hex::encode(c.stacks_private_key.expose().key.secret_bytes()),
            key
        );
        assert!(!c.stacks_private_key.expose().compressed);
        assert!(
            matches!(&c.bitcoin_auth, BitcoinAuth::UserPass { password, .. } if password.expose() == "from-env")
        );
        assert_eq!(c.op_confirmations, 4);
        assert_eq!(c.poll_interval, Duration::from_millis(250));

        let bad = check(&sample(), vec![("SBTC_COORDINATOR__NETWORK__X", "1")]);
        assert!(
            matches!(bad, Err(ConfigError::Syntax { reason, .. }) if reason.contains("NETWORK__X"))
        );
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let c = check(
            &sample(),
            vec![("SBTC_COORDINATOR__BITCOIN_NODE__PASSWORD", "pw-s3cret")],
        )
        .unwrap();
        let dump = format!("{c:?}");
        for secret in [
            "11468a462ac5b1df92cacf04a65179ecd02f514196909f7dbc63abae88ba05c6",
            "3fc28575885bcd10113f8fd6338d18ae5f56756686a1b38868aa86f0eaec2502",
            "pw-s3cret",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
        assert!(dump.contains("[redacted]"));
    }
}
