//! `stacks-signer`: one FROST signer of the sBTC peg wallet.
//!
//! ```text
//! stacks-signer --id 1 --config conf/signer.toml     run signer 1
//! stacks-signer --id 1 --allow-rotation              ... and join a new DKG
//! stacks-signer private-key                          print a new message key
//! stacks-signer public-key --private-key-file F      print a key's public key
//! ```
//!
//! The signer's private key comes from `--private-key-file`, else the
//! `SBTC_SIGNER_PRIVATE_KEY` environment variable, else (demo files only)
//! the `private_key` of its entry in the signer file.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
use clap::{Parser, Subcommand};
use frost_net::SignerFile;
use frost_signer::{SignerNode, SignerOptions};

/// Runs one FROST signer of the sBTC peg wallet.
#[derive(Debug, Parser)]
#[command(name = "stacks-signer", version, about)]
struct Args {
    /// This signer's id in the signer file (1-based).
    #[arg(long)]
    id: Option<u32>,
    /// The shared signer file.
    #[arg(long, default_value = "conf/signer.toml")]
    config: PathBuf,
    /// A file holding this signer's private key (hex).
    #[arg(long)]
    private_key_file: Option<PathBuf>,
    /// Join a new DKG even though this signer already holds a key (a key
    /// rotation). The old key shares are kept; without this flag a signer
    /// that holds a key refuses every DKG.
    #[arg(long)]
    allow_rotation: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a new random private key (hex).
    PrivateKey,
    /// Print the public key of a private key.
    PublicKey {
        /// The private key, hex.
        #[arg(long, conflicts_with = "private_key_file")]
        private_key: Option<String>,
        /// A file holding it.
        #[arg(long)]
        private_key_file: Option<PathBuf>,
    },
}

fn parse_key(text: &str) -> Result<SecretKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "the private key is not hex".to_owned())?;
    SecretKey::from_slice(&bytes)
        .map_err(|_| "the private key is not a valid secp256k1 key".to_owned())
}

fn read_key_file(path: &Path) -> Result<SecretKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_key(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(args: Args) -> Result<(), (u8, String)> {
    match args.command {
        Some(Command::PrivateKey) => {
            let k = SecretKey::new(&mut rand::thread_rng());
            println!("{}", hex::encode(k.secret_bytes()));
            return Ok(());
        }
        Some(Command::PublicKey {
            private_key,
            private_key_file,
        }) => {
            let k = match (private_key, private_key_file) {
                (Some(k), _) => parse_key(&k),
                (None, Some(f)) => read_key_file(&f),
                (None, None) => Err("give --private-key or --private-key-file".into()),
            }
            .map_err(|e| (2, e))?;
            println!("{}", k.public_key(&Secp256k1::signing_only()));
            return Ok(());
        }
        None => {}
    }
    let id = args.id.ok_or((
        2,
        "give --id N (the signer's 1-based id in the signer file)".to_owned(),
    ))?;
    let file = SignerFile::load(&args.config).map_err(|e| (2, e))?;
    let entry = file.set.signer(id).ok_or((
        2,
        format!("{}: no signer with id {id}", args.config.display()),
    ))?;
    let private_key = if let Some(f) = &args.private_key_file {
        read_key_file(f).map_err(|e| (2, e))?
    } else if let Ok(k) = std::env::var("SBTC_SIGNER_PRIVATE_KEY") {
        parse_key(&k).map_err(|e| (2, format!("SBTC_SIGNER_PRIVATE_KEY: {e}")))?
    } else if let Some(k) = &entry.private_key {
        log::warn!(
            "signer {id}: using the private key written in {} (demo only)",
            args.config.display()
        );
        parse_key(k).map_err(|e| (2, e))?
    } else {
        return Err((2, format!("no private key for signer {id}: give --private-key-file or set SBTC_SIGNER_PRIVATE_KEY")));
    };
    let base = args.config.parent().unwrap_or(Path::new("."));
    let state_dir = base.join(file.state_dir.clone().unwrap_or_else(|| "signers".into()));
    let state_path = state_dir.join(format!("signer-{id}.json"));
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| (1, format!("signal {sig}: {e}")))?;
    }
    if args.allow_rotation {
        log::warn!("signer {id}: --allow-rotation: this signer will join a new DKG although it may hold a key");
    }
    let mut node = SignerNode::new(SignerOptions {
        id,
        file,
        private_key,
        state_path,
        poll_wait: Duration::from_secs(5),
        allow_rotation: args.allow_rotation,
    })
    .map_err(|e| (1, e.to_string()))?;
    node.run(&stop);
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
