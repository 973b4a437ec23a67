//! Set-up shared by the `coordinator-cli` integration tests: running the
//! real binary and reading what it printed, a plain HTTP GET, a guard that
//! kills a started `run`, and a started devnet peg with its config.
//!
//! Each test binary compiles its own copy and uses only part of it, hence
//! the `dead_code` allowances.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bitcoin::{Address, Amount, Txid};
use devnet::peg::MAGIC;
use devnet::{Peg, PegOptions, User};

/// Runs `coordinator-cli --config CONFIG ARGS…` to its end, logging errors only.
#[allow(dead_code)]
pub(crate) fn cli(config: &Path, args: &[&str]) -> Output {
    cli_logging(config, args, "error")
}

/// Runs `coordinator-cli --config CONFIG ARGS…` to its end with `RUST_LOG=level`.
#[allow(dead_code)]
pub(crate) fn cli_logging(config: &Path, args: &[&str], level: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", level)
        .output()
        .unwrap()
}

/// What a run printed: stdout, then stderr.
#[allow(dead_code)]
pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A GET over plain HTTP/1.0: (status code, body).
#[allow(dead_code)]
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap();
    (code, body)
}

/// Kills the `run` process when the test ends, also on a failed assertion
/// (only the child this test started, by its handle).
#[allow(dead_code)]
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `coordinator-cli --config CONFIG run` at INFO, its log going to
/// `log`; killed when the returned guard drops.
#[allow(dead_code)]
pub(crate) fn spawn_run(config: &Path, log: std::fs::File) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A started devnet peg with its aggregate key published, and its wallet.
#[allow(dead_code)]
pub(crate) fn start_peg(opts: PegOptions) -> (Peg, Address) {
    let peg = Peg::start(opts).unwrap();
    peg.publish_key().unwrap();
    let wallet = peg.peg_wallet().unwrap();
    (peg, wallet)
}

/// Writes the coordinator's config allowing `allowed`, scanning from the
/// next Bitcoin block.
#[allow(dead_code)]
pub(crate) fn config_from_next_block(peg: &Peg, allowed: &[&User]) -> PathBuf {
    peg.write_config(allowed, peg.bitcoind.with(|b| b.height()) + 1)
        .unwrap()
}

/// `user` requests a peg-out of `sats` to its own address, paying a 20,000
/// sat fee; the request's txid.
#[allow(dead_code)]
pub(crate) fn peg_out(peg: &Peg, user: &mut User, wallet: &Address, sats: u64) -> Txid {
    peg.with_bitcoin(|b| {
        user.peg_out(
            b,
            MAGIC,
            wallet,
            Amount::from_sat(sats),
            Amount::from_sat(20_000),
        )
    })
    .unwrap()
}
