//! `relay-server`: the HTTP relay between the coordinator and the signers.
//! See `docs/relay-protocol.md`.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use relay::{RelayConfig, RelayServer};

/// Relays signed FROST packets between the coordinator and the signers.
#[derive(Debug, Parser)]
#[command(name = "relay-server", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000", env = "RELAY_LISTEN")]
    listen: String,
    /// Most messages held.
    #[arg(long, default_value_t = 100_000)]
    max_messages: usize,
    /// Most bytes held.
    #[arg(long, default_value_t = 256 << 20)]
    max_bytes: usize,
    /// Oldest message held, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_age_secs: u64,
    /// Largest single message, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_message_bytes: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = RelayConfig {
        max_messages: args.max_messages,
        max_bytes: args.max_bytes,
        max_age: Duration::from_secs(args.max_age_secs),
        max_message_len: args.max_message_bytes,
        ..RelayConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("error: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let server = match RelayServer::start(&args.listen, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("stopping");
    server.shutdown();
    ExitCode::SUCCESS
}
