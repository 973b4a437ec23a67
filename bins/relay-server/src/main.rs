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
    /// Most message bytes in one answer (a client asks again for the rest).
    #[arg(long, default_value_t = 8 << 20)]
    max_answer_bytes: usize,
    /// Most open connections.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64).
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Most long polls waiting at once.
    #[arg(long, default_value_t = 512)]
    max_long_polls: usize,
    /// Most long polls waiting at once from one client address.
    #[arg(long, default_value_t = 128)]
    max_long_polls_per_ip: usize,
    /// Longest a client may take to send a request's headers (and the
    /// keep-alive idle timeout), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Longest a client may take to send a request's body, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    body_timeout_ms: u64,
    /// Longest a write to a client may make no progress, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    write_timeout_ms: u64,
    /// Slowest rate a client must take an answer at, in bytes per second:
    /// an answer of N bytes must be written within max(write timeout,
    /// N / rate), else the connection is closed.
    #[arg(long, default_value_t = 1 << 20)]
    min_write_rate: u64,
    /// Cap on the time the minimum rate allows one answer, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    max_answer_write_time_ms: u64,
    /// Most message bytes held by answers being sent, in total (beyond,
    /// answers shrink, then 503).
    #[arg(long, default_value_t = 256 << 20)]
    max_answer_bytes_in_flight: usize,
    /// Most message bytes held by answers being sent to one client address
    /// (beyond, answers shrink, then 429).
    #[arg(long, default_value_t = 64 << 20)]
    max_answer_bytes_in_flight_per_ip: usize,
    /// Threads serving requests.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// File holding a bearer token that every client must send (all but
    /// /health answer 401 without it). Defence in depth: it keeps strangers
    /// from filling the log; the packets' signed envelope protects keys.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// The bearer token itself, from the environment only (not a flag, so
    /// it does not show in `ps`).
    #[arg(skip = std::env::var("SBTC_RELAY_TOKEN").ok())]
    token_env: Option<String>,
    #[command(flatten)]
    log: cli_log::LogArgs,
}

/// The token from `--token-file` or `SBTC_RELAY_TOKEN`, trimmed; none when neither is set.
fn token(args: &Args) -> Result<Option<String>, String> {
    let token = match (&args.token_file, &args.token_env) {
        (Some(_), Some(_)) => {
            return Err("give the token by --token-file or SBTC_RELAY_TOKEN, not both".into())
        }
        (Some(path), None) => {
            cli_log::warn_if_readable_by_others(path, "the relay's bearer token");
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
        }
        (None, Some(t)) => t.clone(),
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(Some(token))
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli_log::init(&args.log);
    let token = match token(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = RelayConfig {
        max_messages: args.max_messages,
        max_bytes: args.max_bytes,
        max_age: Duration::from_secs(args.max_age_secs),
        max_message_len: args.max_message_bytes,
        max_answer_bytes: args.max_answer_bytes,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_long_polls: args.max_long_polls,
        max_long_polls_per_ip: args.max_long_polls_per_ip,
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        min_write_rate: args.min_write_rate,
        max_answer_write_time: Duration::from_millis(args.max_answer_write_time_ms),
        max_answer_bytes_in_flight: args.max_answer_bytes_in_flight,
        max_answer_bytes_in_flight_per_ip: args.max_answer_bytes_in_flight_per_ip,
        threads: args.threads,
        token,
        ..RelayConfig::default()
    };
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
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

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn the_systemd_unit_runs_a_command_this_binary_accepts() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../contrib/systemd/sbtc-relay.service");
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words[0].ends_with("/relay-server"), "{words:?}");
        let args = Args::try_parse_from(&words).unwrap();
        assert_eq!(args.listen, "127.0.0.1:3000");
    }
}
