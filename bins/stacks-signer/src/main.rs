//! `stacks-signer`: one FROST signer of the sBTC peg wallet.
//!
//! ```text
//! stacks-signer run --config conf/signer-1.toml       run the signer a per-signer file describes
//! stacks-signer run --config F --allow-rotation       ... and join a new DKG
//! stacks-signer private-key --out F                   write a new message key (mode 0600)
//! stacks-signer public-key --private-key-file F       print a key's public key (F `-`: stdin)
//! ```
//!
//! The per-signer file ([`config`]) names the shared signer set file, the
//! signer's id, key file and state folder, and the signer's **own**
//! bitcoind and stacks-node: every sign request is checked against them by
//! the guard (`signer_guard::Guard`) before a nonce is revealed. Without
//! node configuration the signer refuses to start.
//!
//! The private key comes from `--private-key-file`, else the file's
//! `private_key_file`, else the `SBTC_SIGNER_PRIVATE_KEY` environment
//! variable, else (demo files only) the `private_key` of the signer's entry
//! in the signer set file.
//!
//! The older form `stacks-signer --id N --config conf/signer.toml` (the
//! shared signer set file, no nodes) still parses, but runs only with
//! `--unguarded-test-only`: a signer that signs whatever the coordinator
//! asks, for tests of the relay protocol, never with funds.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::{rand, PublicKey, Secp256k1, SecretKey};
use bitcoin_node_client::UreqBitcoinNode;
use clap::{Args as ClapArgs, Parser, Subcommand};
use frost_net::{SignRequest, SignerFile};
use frost_signer::{AcceptAll, SignerNode, SignerOptions, Validator, ATTEST_INTERVAL};
use signer_guard::Guard;
use stacks_node_client::UreqStacksNode;

use config::SignerConfig;

/// Runs one FROST signer of the sBTC peg wallet.
#[derive(Debug, Parser)]
#[command(name = "stacks-signer", version, about)]
struct Args {
    /// Older form: this signer's id in the signer set file (1-based); needs
    /// --unguarded-test-only. Use `run --config conf/signer-N.toml`.
    #[arg(long)]
    id: Option<u32>,
    /// Older form: the shared signer set file.
    #[arg(long, default_value = "conf/signer.toml")]
    config: PathBuf,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    log: cli_log::LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags of both forms.
#[derive(Debug, Clone, ClapArgs)]
struct Common {
    /// A file holding this signer's private key (hex); overrides the
    /// per-signer file's private_key_file.
    #[arg(long)]
    private_key_file: Option<PathBuf>,
    /// Join a new DKG even though this signer already holds a key (a key
    /// rotation). The old key shares are kept; without this flag a signer
    /// that holds a key refuses every DKG.
    #[arg(long)]
    allow_rotation: bool,
    /// PROTOCOL TESTS ONLY: run without the guard, signing whatever the
    /// coordinator asks. Refused when the file configures nodes.
    #[arg(long)]
    unguarded_test_only: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the signer a per-signer configuration file describes.
    Run {
        /// The per-signer file (see conf/signer-1.toml).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write a new random private key (hex) to a new file only its owner
    /// can read (mode 0600); without --out, print it.
    PrivateKey {
        /// The file to create (an existing file is never replaced); `-`
        /// prints the key even when standard output is no terminal.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key of a private key (no key is taken on the
    /// command line: `ps` and shell history would show it).
    PublicKey {
        /// A file holding the private key (hex); `-` reads standard input.
        #[arg(long)]
        private_key_file: PathBuf,
    },
}

type Failure = (u8, String);

fn parse_key(text: &str) -> Result<SecretKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "the private key is not hex".to_owned())?;
    SecretKey::from_slice(&bytes)
        .map_err(|_| "the private key is not a valid secp256k1 key".to_owned())
}

fn read_key_file(path: &Path) -> Result<SecretKey, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
        return parse_key(&text).map_err(|e| format!("standard input: {e}"));
    }
    cli_log::warn_if_readable_by_others(path, "a signer's private key");
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_key(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The guard as the signer's validator; it also follows the key history.
struct Guarded(Guard<UreqBitcoinNode, UreqStacksNode>);

impl Validator for Guarded {
    fn check(&mut self, request: &SignRequest) -> Result<(), String> {
        self.0.check(request)
    }

    fn will_sign(&self, key: &PublicKey, digest: &[u8; 32]) -> bool {
        self.0.will_sign(key, digest)
    }

    fn attest(&mut self) -> Option<PublicKey> {
        self.0.attest()
    }

    fn held_keys(&mut self, keys: &[PublicKey]) {
        if let Err(e) = self.0.set_keys(keys) {
            // The guard then refuses payouts spending the new key's coins
            // (not in its record): safe, and loud.
            log::error!("the guard cannot watch the keys held: {e}");
        }
    }
}

fn private_key(
    id: u32,
    cli: Option<&Path>,
    configured: Option<&Path>,
    file: &SignerFile,
    set_path: &Path,
) -> Result<SecretKey, Failure> {
    if let Some(f) = cli.or(configured) {
        return read_key_file(f).map_err(|e| (2, e));
    }
    if let Ok(k) = std::env::var("SBTC_SIGNER_PRIVATE_KEY") {
        return parse_key(&k).map_err(|e| (2, format!("SBTC_SIGNER_PRIVATE_KEY: {e}")));
    }
    if let Some(k) = file.set.signer(id).and_then(|s| s.private_key.as_ref()) {
        log::warn!(
            "signer {id}: using the private key written in {} (demo only)",
            set_path.display()
        );
        return parse_key(k).map_err(|e| (2, e));
    }
    Err((
        2,
        format!(
            "no private key for signer {id}: set private_key_file, give --private-key-file or set SBTC_SIGNER_PRIVATE_KEY"
        ),
    ))
}

fn run_signer(mut cfg: SignerConfig, common: &Common) -> Result<(), Failure> {
    let id = cfg.id;
    let file = SignerFile::load(&cfg.signer_set).map_err(|e| (2, e))?;
    if file.set.signer(id).is_none() {
        return Err((
            2,
            format!("{}: no signer with id {id}", cfg.signer_set.display()),
        ));
    }
    match (&cfg.guard, common.unguarded_test_only) {
        (Some(_), true) => {
            return Err((
                2,
                format!(
                    "{}: --unguarded-test-only with node configuration: remove one (the flag is for protocol tests without nodes)",
                    cfg.path.display()
                ),
            ))
        }
        (None, false) => return Err((2, cfg.no_nodes_message())),
        _ => {}
    }
    let private_key = private_key(
        id,
        common.private_key_file.as_deref(),
        cfg.private_key_file.as_deref(),
        &file,
        &cfg.signer_set,
    )?;
    let secp = Secp256k1::signing_only();
    if let Some(me) = file
        .set
        .signer(id)
        .filter(|s| private_key.public_key(&secp) != s.public_key)
    {
        return Err((
            1,
            format!(
                "the private key does not belong to signer {id} (its public key is {})",
                me.public_key
            ),
        ));
    }
    let state_dir = cfg.state_dir.clone().unwrap_or_else(|| {
        let base = cfg.signer_set.parent().unwrap_or(Path::new("."));
        base.join(file.state_dir.clone().unwrap_or_else(|| "signers".into()))
    });
    let state_path = state_dir.join(format!("signer-{id}.json"));
    if cfg.data_dir_defaulted {
        let dir = cfg.default_data_dir(&state_dir);
        if let Some(g) = cfg.guard.as_mut() {
            g.data_dir = dir;
        }
    }
    let validator: Box<dyn Validator> = match (&cfg.guard, common.unguarded_test_only) {
        (None, _) => {
            for _ in 0..3 {
                log::warn!(
                    "signer {id}: --unguarded-test-only: NO GUARD. This signer signs whatever the coordinator asks. Protocol tests only, never with funds."
                );
            }
            Box::new(AcceptAll)
        }
        (Some(g), _) => {
            let guard = Guard::open(g, &file, &cfg.signer_set, &[])
                .map_err(|e| (2, format!("{}: {e}", cfg.path.display())))?;
            log::info!(
                "signer {id}: guarded by bitcoind {} and stacks-node {} (confirmations: bitcoin {}, stacks {})",
                g.bitcoin_node.url,
                g.stacks_node.url,
                g.confirmations.bitcoin,
                g.confirmations.stacks
            );
            Box::new(Guarded(guard))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| (1, format!("signal {sig}: {e}")))?;
    }
    if common.allow_rotation {
        log::warn!("signer {id}: --allow-rotation: this signer will join a new DKG although it may hold a key");
    }
    let mut node = SignerNode::new(SignerOptions {
        id,
        file,
        private_key,
        state_path,
        poll_wait: Duration::from_secs(5),
        allow_rotation: common.allow_rotation,
        attest_interval: cfg
            .attest_interval_secs
            .map_or(ATTEST_INTERVAL, Duration::from_secs),
    })
    .map_err(|e| (1, e.to_string()))?;
    node.set_validator(validator);
    node.run(&stop);
    Ok(())
}

fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Some(Command::PrivateKey { out }) => {
            let k = SecretKey::new(&mut rand::thread_rng());
            let text = format!("{}\n", hex::encode(k.secret_bytes()));
            match out {
                Some(path) if path == Path::new("-") => print!("{text}"),
                Some(path) => {
                    cli_log::write_new_secret_file(&path, text.as_bytes()).map_err(|e| {
                        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                            "it exists; a key file is never replaced".to_owned()
                        } else {
                            e.to_string()
                        };
                        (1, format!("cannot write {}: {why}", path.display()))
                    })?;
                    eprintln!(
                        "wrote a new private key to {} (mode 0600); its public key is {}",
                        path.display(),
                        k.public_key(&Secp256k1::signing_only())
                    );
                }
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        print!("{text}");
                    } else {
                        // `private-key > file` would make a file others may read.
                        return Err((
                            2,
                            "standard output is not a terminal (`> file` would make a key file others may read): write it with `private-key --out FILE` (mode 0600), or `--out -` to print it anyway".to_owned(),
                        ));
                    }
                }
            }
            Ok(())
        }
        Some(Command::PublicKey { private_key_file }) => {
            let k = read_key_file(&private_key_file).map_err(|e| (2, e))?;
            println!("{}", k.public_key(&Secp256k1::signing_only()));
            Ok(())
        }
        Some(Command::Run { config, common }) => {
            let cfg = SignerConfig::load(&config).map_err(|e| (2, e))?;
            if cfg
                .guard
                .as_ref()
                .is_some_and(|g| g.bitcoin_node.password.is_some())
            {
                cli_log::warn_if_readable_by_others(&cfg.path, "bitcoin_node.password");
            }
            run_signer(cfg, &common)
        }
        None => {
            // The older form: the signer set file and an id, no nodes.
            let id = args.id.ok_or((
                2,
                "give `run --config conf/signer-N.toml` (a per-signer file), or, older form, --id N --config conf/signer.toml --unguarded-test-only".to_owned(),
            ))?;
            if !args.common.unguarded_test_only {
                return Err((
                    2,
                    format!(
                        "{} is the shared signer set file and configures no node: a signer checks every request on its own bitcoind and stacks-node. Write a per-signer file (see conf/signer-1.toml) and run `stacks-signer run --config conf/signer-{id}.toml`; protocol tests only: add --unguarded-test-only",
                        args.config.display()
                    ),
                ));
            }
            let cfg = SignerConfig {
                path: args.config.clone(),
                signer_set: args.config,
                id,
                private_key_file: None,
                state_dir: None,
                attest_interval_secs: None,
                guard: None,
                data_dir_defaulted: true,
            };
            run_signer(cfg, &args.common)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli_log::init(&args.log);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn the_systemd_unit_runs_a_command_this_binary_accepts() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../contrib/systemd/sbtc-signer@.service");
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| w.replace("%i", "1"))
            .collect();
        assert!(words[0].ends_with("/stacks-signer"), "{words:?}");
        let args = Args::try_parse_from(&words).unwrap();
        assert!(
            matches!(args.command, Some(Command::Run { .. })),
            "{args:?}"
        );
    }
}
