//! `sbtc`: the alpha testers' command line. Peg BTC in (`deposit`), ask for
//! a peg-out (`withdraw`), see one's coins and sBTC (`balance`) and where an
//! op stands (`status`).
//!
//! Exit codes: 0 success, 1 a node or the coordinator failed, 2 bad usage or
//! configuration, 3 refused (the peg would refuse the op, or too few signers
//! attest the peg wallet key): nothing was paid.

mod config;
mod nodes;

/// Writes a line to stdout; a closed stdout (`sbtc … | head`) is an error,
/// never a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("writing to stdout: {e}"))
    };
}

/// Writes a line to stderr, for people; a closed stderr is ignored.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::{Address, Amount, FeeRate, Txid};
use bitcoin_node_client::{BitcoinNode, UreqBitcoinNode};
use clap::{Parser, Subcommand, ValueEnum};
use peg_user::{chain, Built, MinerFee, Request, UserKey};
use stacks_node_client::UreqStacksNode;
use stacks_wire::PrincipalData;

use config::Config;

/// Bad usage or configuration.
const EXIT_CONFIG: u8 = 2;
/// Refused: nothing was paid.
const EXIT_REFUSED: u8 = 3;

/// The sBTC alpha testers' command line: peg-ins, peg-out requests, balances, status.
///
/// Keys are never taken from the command line: give a file (`--btc-key-file`,
/// `--stacks-key-file`; `-` reads the key from stdin) or set `SBTC_BTC_KEY` /
/// `SBTC_STACKS_KEY`. A key is WIF or 64 hex digits.
#[derive(Debug, Parser)]
#[command(name = "sbtc", version, about, long_about = None)]
struct Cli {
    /// The configuration: network, nodes, coordinator, contract, signer set file.
    #[arg(short, long, default_value = "sbtc.toml", global = true)]
    config: PathBuf,

    #[command(flatten)]
    log: cli_log::LogArgs,

    #[command(subcommand)]
    command: Command,
}

/// Where the Bitcoin key is (the funding coins' key).
#[derive(Debug, clap::Args)]
struct BtcKeyArgs {
    /// A file holding the Bitcoin key (WIF or hex); `-` reads it from stdin.
    /// Default: the environment variable SBTC_BTC_KEY.
    #[arg(long, value_name = "FILE")]
    btc_key_file: Option<PathBuf>,
    /// Spend the coins this output descriptor finds (scantxoutset), signed
    /// with the Bitcoin key; default: the key's own P2WPKH address.
    #[arg(long)]
    descriptor: Option<String>,
}

/// What to do with the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Print {
    /// Print the transaction without witnesses, as hex, instead of broadcasting it.
    Unsigned,
    /// Print the signed transaction, as hex, instead of broadcasting it.
    Signed,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Peg BTC in: pay AMOUNT into the peg wallet for sBTC minted to RECIPIENT, only if a
    /// threshold of the signer set attests the peg wallet key the contract publishes.
    Deposit {
        /// Sats to peg in.
        #[arg(long)]
        amount: u64,
        /// The Stacks principal that receives the sBTC.
        #[arg(long)]
        recipient: PrincipalData,
        /// The miner fee rate of this transaction, sat/vB (default: the node's
        /// estimate within the peg's floor and cap).
        #[arg(long)]
        fee_rate: Option<u64>,
        #[command(flatten)]
        key: BtcKeyArgs,
        /// Print the transaction instead of broadcasting it.
        #[arg(long, value_enum)]
        print: Option<Print>,
    },
    /// Ask for a peg-out: AMOUNT of the Stacks key's sBTC burned and paid in BTC to TO.
    /// The request's fee output (toward the payout's miner fee) is sized by the peg's rules.
    Withdraw {
        /// Sats to peg out.
        #[arg(long)]
        amount: u64,
        /// The Bitcoin address that receives the BTC.
        #[arg(long)]
        to: String,
        /// A file holding the Stacks key whose sBTC is burned; `-` reads it
        /// from stdin. Default: the environment variable SBTC_STACKS_KEY.
        #[arg(long, value_name = "FILE")]
        stacks_key_file: Option<PathBuf>,
        /// The miner fee rate of this transaction, sat/vB (default: the node's
        /// estimate within the peg's floor and cap).
        #[arg(long)]
        fee_rate: Option<u64>,
        #[command(flatten)]
        key: BtcKeyArgs,
        /// Print the transaction instead of broadcasting it.
        #[arg(long, value_enum)]
        print: Option<Print>,
    },
    /// Show BTC coins and the sBTC balance.
    Balance {
        /// The Bitcoin address to show (default: the Bitcoin key's, if one is given).
        #[arg(long, conflicts_with = "descriptor")]
        address: Option<String>,
        /// The Stacks principal to show (default: the Stacks key's, else the Bitcoin key's).
        #[arg(long)]
        principal: Option<PrincipalData>,
        /// A file holding the Stacks key (for its principal); default SBTC_STACKS_KEY.
        #[arg(long, value_name = "FILE")]
        stacks_key_file: Option<PathBuf>,
        #[command(flatten)]
        key: BtcKeyArgs,
    },
    /// Show where an op stands, from the coordinator.
    Status {
        /// The op's Bitcoin txid.
        txid: Txid,
        /// Print the coordinator's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

/// An error that is the user's (exit 2) or a refusal (exit 3).
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit(EXIT_CONFIG, msg.into()))
}

/// Maps a library error: a refusal exits 3, a bad key 2, the rest 1.
fn lib(e: peg_user::Error) -> anyhow::Error {
    match e {
        peg_user::Error::Refused { .. } => {
            anyhow::Error::new(Exit(EXIT_REFUSED, format!("{e} (nothing paid)")))
        }
        peg_user::Error::NotAttested(_) => {
            anyhow::Error::new(Exit(EXIT_REFUSED, format!("refused: {e} (nothing paid)")))
        }
        peg_user::Error::InsufficientFunds { .. } => {
            anyhow::Error::new(Exit(EXIT_REFUSED, format!("{e} (nothing paid)")))
        }
        peg_user::Error::Key(_) => usage(e.to_string()),
        other => anyhow!(other),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli_log::init(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map_or(1, |x| x.0);
            tell!("sbtc: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| usage(format!("{e:#}")))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Status { txid, json } => {
            let c = load(&cli.config)?;
            status(&c, &txid, json)
        }
        Command::Deposit {
            amount,
            recipient,
            fee_rate,
            key,
            print,
        } => {
            let c = load(&cli.config)?;
            let btc_key = read_key(key.btc_key_file.as_deref(), "SBTC_BTC_KEY", "Bitcoin")?;
            deposit(
                &c,
                &btc_key,
                key.descriptor.as_deref(),
                amount,
                &recipient,
                fee_rate,
                print,
            )
        }
        Command::Withdraw {
            amount,
            to,
            stacks_key_file,
            fee_rate,
            key,
            print,
        } => {
            let c = load(&cli.config)?;
            if key.btc_key_file.as_deref() == Some(Path::new("-"))
                && stacks_key_file.as_deref() == Some(Path::new("-"))
            {
                return Err(usage(
                    "only one key can come from stdin: give the other in a file or the environment",
                ));
            }
            let btc_key = read_key(key.btc_key_file.as_deref(), "SBTC_BTC_KEY", "Bitcoin")?;
            let stacks_key = read_key(stacks_key_file.as_deref(), "SBTC_STACKS_KEY", "Stacks")?;
            let to = parse_address(&to, &c)?;
            withdraw(
                &c,
                &btc_key,
                &stacks_key,
                key.descriptor.as_deref(),
                amount,
                &to,
                fee_rate,
                print,
            )
        }
        Command::Balance {
            address,
            principal,
            stacks_key_file,
            key,
        } => {
            let c = load(&cli.config)?;
            let btc_key = optional_key(key.btc_key_file.as_deref(), "SBTC_BTC_KEY", "Bitcoin")?;
            let stacks_key = optional_key(stacks_key_file.as_deref(), "SBTC_STACKS_KEY", "Stacks")?;
            let scan = match (address, key.descriptor, &btc_key) {
                (Some(a), _, _) => Some(nodes::raw_descriptor(
                    &parse_address(&a, &c)?.script_pubkey(),
                )),
                (None, Some(d), _) => Some(d),
                (None, None, Some(k)) => Some(nodes::raw_descriptor(
                    &k.btc_address(c.network).script_pubkey(),
                )),
                (None, None, None) => None,
            };
            let principal = principal.or_else(|| {
                stacks_key
                    .as_ref()
                    .or(btc_key.as_ref())
                    .map(|k| k.stacks_address(peg_user::stacks_network(c.network)).into())
            });
            if scan.is_none() && principal.is_none() {
                return Err(usage(
                    "nothing to show: give --address, --descriptor or --principal, or a key \
                     (--btc-key-file / SBTC_BTC_KEY, --stacks-key-file / SBTC_STACKS_KEY)",
                ));
            }
            balance(&c, scan.as_deref(), principal.as_ref())
        }
    }
}

fn parse_address(text: &str, c: &Config) -> Result<Address> {
    text.parse::<Address<bitcoin::address::NetworkUnchecked>>()
        .map_err(|e| usage(format!("{text:?} is not a Bitcoin address: {e}")))?
        .require_network(c.network)
        .map_err(|_| usage(format!("{text} is not a {} address", c.network)))
}

/// Reads a key from `file` (`-`: stdin) or else the environment variable `env`.
fn optional_key(file: Option<&Path>, env: &str, what: &str) -> Result<Option<UserKey>> {
    let text = match file {
        Some(p) if p == Path::new("-") => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .with_context(|| format!("reading the {what} key from stdin"))?;
            line
        }
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            usage(format!(
                "cannot read the {what} key file {}: {e}",
                p.display()
            ))
        })?,
        None => match std::env::var(env) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
    };
    let from = match file {
        Some(p) if p == Path::new("-") => "stdin".to_owned(),
        Some(p) => p.display().to_string(),
        None => env.to_owned(),
    };
    UserKey::parse(&text)
        .map(Some)
        .map_err(|e| usage(format!("the {what} key from {from}: {e}")))
}

fn read_key(file: Option<&Path>, env: &str, what: &str) -> Result<UserKey> {
    let flag = if what == "Bitcoin" {
        "--btc-key-file"
    } else {
        "--stacks-key-file"
    };
    optional_key(file, env, what)?.ok_or_else(|| {
        usage(format!(
            "no {what} key: give {flag} FILE, {flag} - (stdin), or set {env} (never on the command line)"
        ))
    })
}

fn clients(c: &Config) -> (UreqBitcoinNode, UreqStacksNode) {
    (
        UreqBitcoinNode::new(&c.bitcoin_url, c.bitcoin_auth.clone(), c.timeout),
        UreqStacksNode::new(&c.stacks_node_url, c.timeout),
    )
}

/// The peg wallet key the contract publishes, checked against the signers'
/// attestations served by the coordinator; returns it with its address.
fn attested_peg_wallet(
    c: &Config,
    stacks: &UreqStacksNode,
    sender: &PrincipalData,
) -> Result<(bitcoin::secp256k1::PublicKey, Address)> {
    let key = chain::peg_wallet_key(stacks, &c.contract, sender)
        .map_err(|e| anyhow!("{e} (stacks-node {})", c.stacks_node_url))?
        .ok_or_else(|| {
            anyhow::Error::new(Exit(
                EXIT_REFUSED,
                format!(
                    "refused: the contract {} publishes no peg wallet key yet (no DKG; nothing paid)",
                    c.contract
                ),
            ))
        })?;
    let url = format!("{}/attestations", c.coordinator_url);
    let body = nodes::get(&url, c.timeout)?;
    let envelopes = match body {
        (200, text) => peg_user::parse_attestations(&text).map_err(|e| anyhow!("{url}: {e}"))?,
        (code, text) => bail!("{url} answered http {code}: {}", nodes::snippet(&text)),
    };
    let tally = peg_user::check_attestations(&c.signer_file, &key, &envelopes).map_err(|e| {
        lib(e).context(format!(
            "attestations from {url}, checked with {}",
            c.signer_file_path.display()
        ))
    })?;
    let address = peg_rules::peg_wallet_address(&key, c.network);
    log::info!(
        "peg wallet key {key} ({address}) attested by signers {:?} ({} key ids, {} needed)",
        tally.signers.keys().collect::<Vec<_>>(),
        tally.key_ids,
        c.signer_file.set.threshold
    );
    tell!(
        "peg wallet {address}: key attested by {} of {} signers ({} key ids; {} needed)",
        tally.signers.len(),
        c.signer_file.set.num_signers(),
        tally.key_ids,
        c.signer_file.set.threshold
    );
    Ok((key, address))
}

fn miner_fee(c: &Config, fee_rate: Option<u64>, estimate: Option<FeeRate>) -> Result<MinerFee> {
    Ok(MinerFee::Rate(match fee_rate {
        Some(r) => FeeRate::from_sat_per_vb(r)
            .filter(|_| r >= 1)
            .ok_or_else(|| usage(format!("--fee-rate {r}: not a usable sat/vB rate")))?,
        None => peg_user::miner_fee_rate(&c.policy, estimate),
    }))
}

/// Prints or broadcasts a built transaction.
fn finish(
    c: &Config,
    bitcoin: &UreqBitcoinNode,
    built: &Built,
    print: Option<Print>,
    what: &str,
) -> Result<()> {
    match print {
        Some(Print::Unsigned) => say!("{}", built.unsigned_hex())?,
        Some(Print::Signed) => say!("{}", built.signed_hex())?,
        None => {
            let txid = bitcoin.send_raw_transaction(&built.signed).map_err(|e| {
                anyhow!(
                    "sendrawtransaction on the bitcoin node {}: {e}",
                    c.bitcoin_url
                )
            })?;
            say!("{txid}")?;
            tell!(
                "{what} {txid} broadcast (miner fee {}); follow it with: sbtc status {txid}",
                built.miner_fee
            );
        }
    }
    Ok(())
}

fn deposit(
    c: &Config,
    key: &UserKey,
    descriptor: Option<&str>,
    amount: u64,
    recipient: &PrincipalData,
    fee_rate: Option<u64>,
    print: Option<Print>,
) -> Result<()> {
    let amount = Amount::from_sat(amount);
    peg_user::check_peg_in(&c.policy, c.network, recipient, amount).map_err(lib)?;
    let (bitcoin, stacks) = clients(c);
    let (_, peg) = attested_peg_wallet(c, &stacks, recipient)?;
    let coins = nodes::coins(c, &bitcoin, key, descriptor)?;
    let estimate = chain::fee_estimate(&bitcoin).map_err(|e| anyhow!("{e} ({})", c.bitcoin_url))?;
    let fee = miner_fee(c, fee_rate, estimate)?;
    let built = peg_user::peg_in(
        key, c.network, &coins, c.magic, &peg, recipient, amount, fee,
    )
    .map_err(lib)?;
    finish(
        c,
        &bitcoin,
        &built,
        print,
        &format!("peg-in of {amount} to {recipient}"),
    )
}

#[allow(clippy::too_many_arguments)]
fn withdraw(
    c: &Config,
    btc_key: &UserKey,
    stacks_key: &UserKey,
    descriptor: Option<&str>,
    amount: u64,
    to: &Address,
    fee_rate: Option<u64>,
    print: Option<Print>,
) -> Result<()> {
    let amount = Amount::from_sat(amount);
    let (bitcoin, stacks) = clients(c);
    let requester: PrincipalData = stacks_key
        .stacks_address(peg_user::stacks_network(c.network))
        .into();
    let held = chain::sbtc_balance(&stacks, &c.contract, &requester)
        .map_err(|e| anyhow!("{e} (stacks-node {})", c.stacks_node_url))?;
    peg_user::check_request(&c.policy, to, amount, Some(held)).map_err(lib)?;
    let (_, peg) = attested_peg_wallet(c, &stacks, &requester)?;
    let estimate = chain::fee_estimate(&bitcoin).map_err(|e| anyhow!("{e} ({})", c.bitcoin_url))?;
    let fee_output = peg_user::request_fee_output(&c.policy, estimate, &to.script_pubkey());
    tell!(
        "fee output {fee_output} toward the payout's miner fee (at {} sat/vB{})",
        peg_user::miner_fee_rate(&c.policy, estimate).to_sat_per_vb_ceil(),
        if estimate.is_none() {
            ", the peg's floor: the node has no estimate"
        } else {
            ""
        }
    );
    let coins = nodes::coins(c, &bitcoin, btc_key, descriptor)?;
    let fee = miner_fee(c, fee_rate, estimate)?;
    let built = peg_user::peg_out_request(
        btc_key,
        c.network,
        &coins,
        c.magic,
        &Request {
            amount,
            recipient: to,
            requester: stacks_key.secret_key(),
            peg_wallet: &peg,
            fee_output,
            // A fresh signature each time: repeating a request is not a copy.
            nonce_data: Some(bitcoin::secp256k1::rand::random()),
        },
        fee,
    )
    .map_err(lib)?;
    finish(
        c,
        &bitcoin,
        &built,
        print,
        &format!("peg-out request of {amount} from {requester} to {to}"),
    )
}

fn balance(c: &Config, scan: Option<&str>, principal: Option<&PrincipalData>) -> Result<()> {
    let (bitcoin, stacks) = clients(c);
    if let Some(desc) = scan {
        let found = nodes::scan(c, &bitcoin, desc)?;
        let total = found.iter().fold(Amount::ZERO, |s, f| {
            s.checked_add(f.coin.txout.value).unwrap_or(Amount::MAX)
        });
        say!(
            "BTC  {} sats in {} coin(s)  ({desc})",
            total.to_sat(),
            found.len()
        )?;
        for f in &found {
            say!(
                "  {}  {} sats  {} confirmation(s){}",
                f.coin.outpoint,
                f.coin.txout.value.to_sat(),
                f.confirmations,
                if f.immature {
                    "  (immature coinbase)"
                } else {
                    ""
                }
            )?;
        }
    }
    if let Some(p) = principal {
        let sats = chain::sbtc_balance(&stacks, &c.contract, p)
            .map_err(|e| anyhow!("{e} (stacks-node {})", c.stacks_node_url))?;
        say!("sBTC {sats} sats  ({p})")?;
    }
    Ok(())
}

fn status(c: &Config, txid: &Txid, json: bool) -> Result<()> {
    let url = format!("{}/ops/{txid}", c.coordinator_url);
    let (code, text) = nodes::get(&url, c.timeout)?;
    match code {
        200 => {}
        // The endpoint's own 404 is JSON; another 404 is a coordinator
        // without the endpoint.
        404 if serde_json::from_str::<serde_json::Value>(&text).is_ok() => {
            bail!(
                "{url}: the coordinator knows no op {txid} (not a peg op, or not confirmed and \
                 scanned yet)"
            )
        }
        404 => bail!(
            "{url}: this coordinator does not serve /ops/TXID (answered 404: {})",
            nodes::snippet(&text)
        ),
        code => bail!("{url} answered http {code}: {}", nodes::snippet(&text)),
    }
    if json {
        say!("{text}")?;
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{url}: not JSON: {e}"))?;
    write!(std::io::stdout().lock(), "{}", nodes::render_status(&v))
        .map_err(|e| anyhow!("writing to stdout: {e}"))?;
    Ok(())
}
