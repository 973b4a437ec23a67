//! A real Bitcoin Core (regtest, no wallet) for tests, found through the
//! `BITCOIND_EXE` environment variable and never by a fixed path.
//!
//! [`RealBitcoind::start`] gives [`Outcome::Skipped`] when the variable is
//! unset (a test then prints why and returns) and an error when it names a
//! missing file or a node that does not come up. A started node has a fresh
//! temporary datadir, free ports on 127.0.0.1, and is killed with its datadir
//! removed when dropped, also when a test panics. [`RealBitcoind::stop`] and
//! [`RealBitcoind::restart`] keep the datadir, for "bitcoind went away and
//! came back" tests. The node's stdout and stderr go to [`RealBitcoind::log_path`].

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bitcoin_node_client::{Auth, UreqBitcoinNode};
use serde_json::Value as Json;

/// The variable naming the `bitcoind` executable.
pub const BITCOIND_EXE: &str = "BITCOIND_EXE";

/// What a test prints when it skips for want of a real node.
pub const SKIP_REASON: &str =
    "BITCOIND_EXE is not set (set it to a Bitcoin Core bitcoind to run this test)";

/// The RPC user the node is started with.
pub const RPC_USER: &str = "u";
/// The RPC password the node is started with.
pub const RPC_PASSWORD: &str = "p";

/// How long the node may take to answer RPC after launch or to stop.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a real node could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BitcoindError {
    /// `BITCOIND_EXE` is set but names nothing usable.
    #[error("BITCOIND_EXE is set to {0:?}, which is not an existing file")]
    Missing(PathBuf),
    /// The datadir, the log or a port could not be had, or the process
    /// could not be launched.
    #[error("cannot start bitcoind: {0}")]
    Io(#[from] std::io::Error),
    /// The process ended before it answered RPC.
    #[error("bitcoind exited with {status} before answering RPC; its output:\n{log}")]
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// The tail of its output.
        log: String,
    },
    /// The node did not answer `getblockchaininfo` within [`READY_TIMEOUT`].
    #[error("bitcoind did not answer RPC within {timeout:?} (last: {last}); its output:\n{log}")]
    NotReady {
        /// How long it was given.
        timeout: Duration,
        /// The last error seen.
        last: String,
        /// The tail of its output.
        log: String,
    },
    /// Core did not accept a block ([`RealBitcoind::submit_blocks`]).
    #[error("bitcoind refused block {height}: {reason}")]
    Refused {
        /// The block's height.
        height: u64,
        /// Core's answer to `submitblock`.
        reason: String,
    },
    /// An RPC call failed.
    #[error("bitcoind rpc: {0}")]
    Rpc(#[from] bitcoin_node_client::Error),
}

/// What [`RealBitcoind::start`] gives.
#[derive(Debug)]
pub enum Outcome {
    /// The node is up.
    Started(RealBitcoind),
    /// No node is configured: why (print it and skip the test).
    Skipped(&'static str),
}

/// A running (or stopped) Bitcoin Core on regtest.
#[derive(Debug)]
pub struct RealBitcoind {
    exe: PathBuf,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    rpc_port: u16,
    p2p_port: u16,
    child: Option<Child>,
}

/// Two free TCP ports on 127.0.0.1 (bound at once so they differ, then
/// released for the node).
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// The executable `BITCOIND_EXE` names: `Ok(None)` when it is unset.
///
/// # Errors
/// When it is set but is not an existing file.
pub fn bitcoind_exe() -> Result<Option<PathBuf>, BitcoindError> {
    exe_from(std::env::var_os(BITCOIND_EXE))
}

fn exe_from(value: Option<std::ffi::OsString>) -> Result<Option<PathBuf>, BitcoindError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let path = PathBuf::from(v);
    if !path.is_file() {
        return Err(BitcoindError::Missing(path));
    }
    Ok(Some(path))
}

impl RealBitcoind {
    /// Starts the node `BITCOIND_EXE` names with the project's arguments
    /// (`-regtest -txindex=1 -listen=0 -fallbackfee=0.0002 …`), and waits
    /// until it answers RPC.
    ///
    /// # Errors
    /// When `BITCOIND_EXE` names a missing file, or the node does not come up.
    pub fn start() -> Result<Outcome, BitcoindError> {
        Self::start_with_args(&[])
    }

    /// As [`RealBitcoind::start`], with extra `bitcoind` arguments
    /// (for example `-txindex=0`; later arguments win).
    ///
    /// # Errors
    /// As [`RealBitcoind::start`].
    pub fn start_with_args(extra: &[&str]) -> Result<Outcome, BitcoindError> {
        let Some(exe) = bitcoind_exe()? else {
            return Ok(Outcome::Skipped(SKIP_REASON));
        };
        let dir = tempfile::Builder::new().prefix("bitcoind-").tempdir()?;
        let (rpc_port, p2p_port) = free_ports()?;
        let mut node = RealBitcoind {
            exe,
            dir,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
            rpc_port,
            p2p_port,
            child: None,
        };
        node.launch()?;
        Ok(Outcome::Started(node))
    }

    fn launch(&mut self) -> Result<(), BitcoindError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.exe)
            .arg("-regtest")
            .arg(format!("-datadir={}", self.dir.path().display()))
            .arg("-txindex=1")
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={RPC_PASSWORD}"))
            .arg(format!("-rpcport={}", self.rpc_port))
            .arg(format!("-port={}", self.p2p_port))
            .arg("-listen=0")
            .arg("-fallbackfee=0.0002")
            .arg("-daemon=0")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        log::debug!(
            "bitcoind started (pid {}), rpc {}",
            child.id(),
            self.rpc_url()
        );
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), BitcoindError> {
        let client = self.client_with_timeout(Duration::from_secs(2));
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(BitcoindError::Exited {
                        status,
                        log: self.log_tail(),
                    });
                }
            }
            match client.call("getblockchaininfo", Json::Array(vec![])) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(BitcoindError::NotReady {
            timeout: READY_TIMEOUT,
            last,
            log: self.log_tail(),
        })
    }

    /// `http://127.0.0.1:PORT`, the node's RPC address.
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    /// The RPC user.
    pub fn rpc_user(&self) -> &str {
        RPC_USER
    }

    /// The RPC password.
    pub fn rpc_password(&self) -> &str {
        RPC_PASSWORD
    }

    /// The node's P2P port (it does not listen: `-listen=0`).
    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    /// The datadir (regtest's chain is in its `regtest` folder).
    pub fn datadir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the node's stdout and stderr go, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("bitcoind.out")
    }

    /// The last 4 kB of the node's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let from = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// A client of the node (10 s per call).
    pub fn client(&self) -> UreqBitcoinNode {
        self.client_with_timeout(Duration::from_secs(10))
    }

    fn client_with_timeout(&self, timeout: Duration) -> UreqBitcoinNode {
        UreqBitcoinNode::new(
            &self.rpc_url(),
            Auth::UserPass(RPC_USER.into(), RPC_PASSWORD.into()),
            timeout,
        )
    }

    /// Calls `method` with `params` on the node.
    ///
    /// # Errors
    /// As [`UreqBitcoinNode::call`].
    pub fn call(&self, method: &str, params: Json) -> Result<Json, bitcoin_node_client::Error> {
        self.client().call(method, params)
    }

    /// Submits the emulator's best-chain blocks `from..=tip` in order
    /// (`submitblock`), so this node follows the emulated chain.
    ///
    /// # Errors
    /// [`BitcoindError::Refused`] with Core's reason for the first block it
    /// does not accept; an RPC failure.
    pub fn submit_blocks(
        &self,
        chain: &crate::BitcoinState,
        from: u64,
    ) -> Result<(), BitcoindError> {
        let client = self.client();
        for height in from..=chain.height() {
            let Some(block) = chain.block(height) else {
                break;
            };
            let hex = bitcoin::consensus::encode::serialize_hex(block);
            let answer = client.call("submitblock", Json::Array(vec![Json::String(hex)]))?;
            if !answer.is_null() {
                return Err(BitcoindError::Refused {
                    height,
                    reason: answer.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Stops the node cleanly (RPC `stop`), waiting for it to exit; kills it
    /// if it has not within [`READY_TIMEOUT`]. The datadir stays.
    ///
    /// # Errors
    /// When waiting for the process fails.
    pub fn stop(&mut self) -> Result<(), BitcoindError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = self.client().call("stop", Json::Array(vec![]));
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log::warn!("bitcoind did not stop within {READY_TIMEOUT:?}: killed");
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Stops the node if it runs, then starts it again on the same datadir
    /// and ports, and waits until it answers RPC.
    ///
    /// # Errors
    /// As [`RealBitcoind::start`].
    pub fn restart(&mut self) -> Result<(), BitcoindError> {
        self.stop()?;
        self.launch()
    }

    /// Kills the process at once (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RealBitcoind {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_variable_skips_and_a_missing_file_fails() {
        assert!(matches!(exe_from(None), Ok(None)));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-bitcoind");
        assert!(matches!(
            exe_from(Some(missing.clone().into())),
            Err(BitcoindError::Missing(p)) if p == missing
        ));
        assert!(matches!(
            exe_from(Some("".into())),
            Err(BitcoindError::Missing(_))
        ));
        // A folder is not an executable either.
        assert!(matches!(
            exe_from(Some(dir.path().into())),
            Err(BitcoindError::Missing(_))
        ));
        let file = dir.path().join("bitcoind");
        std::fs::write(&file, "").unwrap();
        assert_eq!(exe_from(Some(file.clone().into())).unwrap(), Some(file));
    }
}
