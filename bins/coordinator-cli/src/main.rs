//! `coordinator-cli`: the sBTC coordinator's command line.
//!
//! This binary is glue: it parses the command line and the configuration,
//! wires the library crates together, and maps the outcome to an exit code:
//! 0 success, 1 runtime failure, 2 bad usage or configuration.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod devnet;
mod frost;
mod node;

use coordinator::bitcoin::Txid;
use coordinator::config::{Config, ConfigError};
use peg_queue::peg_ops::PegOpKind;

/// Exit code for bad usage or configuration.
const EXIT_CONFIG: u8 = 2;

/// Runs the sBTC alpha peg: mints for peg-ins, burns and pays out for peg-outs.
#[derive(Debug, Parser)]
#[command(name = "coordinator-cli", version, about, long_about = None)]
struct Cli {
    /// The coordinator's configuration file.
    #[arg(short, long, default_value = "conf/coordinator.toml", global = true)]
    config: PathBuf,

    /// The signer set file, instead of `relay.signer_config` in the configuration.
    #[arg(long, global = true)]
    signer_config: Option<PathBuf>,

    #[command(flatten)]
    log: cli_log::LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch Bitcoin for peg operations and process them until stopped (SIGINT/SIGTERM).
    Run {
        /// Rescan from this Bitcoin height (ops already in the queue are kept as they are).
        #[arg(long)]
        start_height: Option<u64>,
    },
    /// Run distributed key generation with the signers; print the aggregate key and peg wallet address.
    Dkg {
        /// Rotate the peg wallet key (with `run` stopped): a new key through DKG, published in
        /// the contract, and the old key's coins swept to it. The old key is kept: pending
        /// requests' fee outputs at its address are still signed with it. Signers must allow
        /// the rotation (`stacks-signer --allow-rotation`).
        #[arg(long)]
        rotate: bool,
        /// Gone: a new DKG never replaces the old key any more; use --rotate.
        #[arg(long, hide = true)]
        force: bool,
    },
    /// Run DKG (unless a key exists), then have the signers sign a test message and verify it.
    DkgSign {
        /// The text of the test message (signed as a tagged hash no transaction can have).
        #[arg(default_value = "sbtc-coordinator dkg-sign")]
        message: String,
    },
    /// Process one peg-in now, through the same checks as `run`.
    ProcessPegIn {
        /// The peg-in's Bitcoin txid.
        txid: Txid,
    },
    /// Process one peg-out request now, through the same checks as `run`.
    ProcessPegOut {
        /// The peg-out request's Bitcoin txid.
        txid: Txid,
    },
    /// Refund a rejected, never-minted peg-in: its BTC back to the script its input 0 spent,
    /// less the fee, signed by the signers after their own checks. Done here when `run` is
    /// stopped; recorded for the running loop otherwise.
    Refund {
        /// The peg-in's Bitcoin txid.
        txid: Txid,
        /// Why, for the log.
        #[arg(long, default_value = "operator's refund")]
        reason: String,
    },
    /// Show the queue, balances and the aggregate key.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or retry queued operations.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Repair the peg wallet's coin record from the node's `scantxoutset` (one-off, slow on
    /// mainnet: payouts read the record, never the scan).
    CoinsRepair,
    /// Run a whole peg on this machine (emulated nodes, relay, signers, coordinator) and check it.
    Devnet {
        /// Keep everything running after the scenario.
        #[arg(long)]
        serve: bool,
        /// Run on a real Bitcoin Core (regtest) and stacks-node (mocknet)
        /// instead of the emulators.
        #[arg(long)]
        real_nodes: bool,
        /// The bitcoind binary for --real-nodes.
        #[arg(long, value_name = "PATH", env = "BITCOIND_EXE")]
        bitcoind: Option<std::path::PathBuf>,
        /// The stacks-node binary for --real-nodes.
        #[arg(long, value_name = "PATH", env = "STACKS_NODE_EXE")]
        stacks_node: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List every operation and its state.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only ops in this state (`pending` for every non-final one); repeatable.
        #[arg(long, value_name = "STATE")]
        state: Vec<String>,
    },
    /// Show one operation in full: amount, recipient and every recorded state change
    /// (with the mint/burn Stacks txid and the payout's or refund's Bitcoin txid).
    Show {
        /// The operation's Bitcoin txid.
        txid: Txid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// End a stuck, non-terminal operation as `failed` (reason `operator: TEXT`), with `run`
    /// stopped; `queue retry` takes it up again.
    Fail {
        /// The operation's Bitcoin txid.
        txid: Txid,
        /// Why, for the record.
        #[arg(long)]
        reason: String,
    },
    /// Send a rejected op back to validation; a failed one on from what the chains show (reads
    /// the nodes): a final burn to `burn_confirmed` (never a second burn), a final mint to
    /// `done`, none to `accepted`.
    Retry {
        /// The operation's Bitcoin txid.
        txid: Txid,
    },
}

fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    Config::load(&cli.config, std::env::vars(), cli.signer_config.as_deref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli_log::init(&cli.log);

    if let Command::Devnet {
        serve,
        real_nodes,
        bitcoind,
        stacks_node,
    } = cli.command
    {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
                eprintln!("error: cannot install the handler for signal {signal}: {e}");
                return ExitCode::FAILURE;
            }
        }
        if !real_nodes {
            return exit(devnet::run(serve, &stop));
        }
        return exit(devnet::run_real(serve, bitcoind, stacks_node, &stop));
    }

    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    log::debug!("configuration: {config:?}");
    let secrets = coordinator::config::secret_fields_in_file(&cli.config);
    if !secrets.is_empty() {
        cli_log::warn_if_readable_by_others(&cli.config, &secrets.join(", "));
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: cannot install the handler for signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }

    match &cli.command {
        Command::Run { start_height } => exit(node::run(&config, *start_height, &stop)),
        Command::ProcessPegIn { txid } => {
            exit(node::process(&config, *txid, PegOpKind::PegIn, &stop))
        }
        Command::ProcessPegOut { txid } => exit(node::process(
            &config,
            *txid,
            PegOpKind::PegOutRequest,
            &stop,
        )),
        Command::Refund { txid, reason } => exit(node::refund(&config, *txid, reason, &stop)),
        Command::Status { json } => exit(node::status(&config, *json)),
        Command::Queue(q) => exit(node::queue_command(&config, q)),
        Command::CoinsRepair => exit(node::coins_repair(&config)),
        Command::Devnet { .. } => unreachable!("handled before the configuration is read"),
        Command::Dkg { force: true, .. } => {
            eprintln!("error: `dkg --force` is gone: it destroyed the old key, which coins at the old address need; `dkg --rotate` makes a new key and keeps the old one");
            ExitCode::from(2)
        }
        Command::Dkg { rotate: true, .. } => exit(node::rotate(&config)),
        Command::Dkg { .. } => {
            stop_on_signal(stop, "dkg");
            exit(frost::dkg(&config).map(|_| ()))
        }
        Command::DkgSign { message } => {
            stop_on_signal(stop, "dkg-sign");
            exit(frost::dkg_sign(&config, message))
        }
    }
}

/// Exit code after SIGINT/SIGTERM stopped a command (128 + SIGINT).
const EXIT_STOPPED: i32 = 130;

/// Ends the process when `stop` is set (SIGINT/SIGTERM) while `what` runs
/// a round with the signers, which has no stop of its own. Nothing is left
/// half-written: the FROST state is replaced atomically (a DKG that did not
/// finish stored no key, spent round ids were stored before their request
/// went out), and the data directory's lock goes with the process.
fn stop_on_signal(stop: Arc<AtomicBool>, what: &'static str) {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!(
            "{what}: stopped by a signal; the FROST state on disk is whole (a DKG that had not finished stored no key)"
        );
        std::process::exit(EXIT_STOPPED);
    });
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ExecStart=` line of a unit in `contrib/systemd/`, split in words.
    fn exec_start(unit: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../contrib/systemd")
            .join(unit);
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        line.split_whitespace()
            .map(|w| w.replace("%i", "1"))
            .collect()
    }

    #[test]
    fn the_systemd_unit_runs_a_command_this_binary_accepts() {
        let words = exec_start("sbtc-coordinator.service");
        assert!(words[0].ends_with("/coordinator-cli"), "{words:?}");
        let cli = Cli::try_parse_from(&words).unwrap();
        assert!(matches!(cli.command, Command::Run { .. }), "{cli:?}");
    }
}
