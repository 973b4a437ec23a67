//! `sbtc.toml`: which peg, which nodes, which signer set.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::Network;
use bitcoin_node_client::Auth;
use frost_net::SignerFile;
use peg_rules::Policy;
use serde::Deserialize;
use stacks_wire::ContractId;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    network: String,
    contract: String,
    signer_set_file: String,
    coordinator_url: String,
    stacks_node_url: String,
    #[serde(default)]
    magic_bytes: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    bitcoin_node: BitcoinNodeFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BitcoinNodeFile {
    url: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    cookie_file: Option<String>,
}

/// The configuration, checked, with the signer set file and its policy loaded.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) network: Network,
    pub(crate) contract: ContractId,
    pub(crate) coordinator_url: String,
    pub(crate) stacks_node_url: String,
    pub(crate) bitcoin_url: String,
    pub(crate) bitcoin_auth: Auth,
    pub(crate) magic: [u8; 2],
    pub(crate) timeout: std::time::Duration,
    pub(crate) signer_file: SignerFile,
    pub(crate) signer_file_path: PathBuf,
    pub(crate) policy: Policy,
}

fn parse_network(name: &str) -> Result<Network> {
    Ok(match name {
        "mainnet" | "bitcoin" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => bail!("network: {other:?} is not mainnet, testnet, signet or regtest"),
    })
}

fn url(field: &str, v: &str) -> Result<String> {
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        bail!("{field}: {v:?} is not an http:// or https:// URL");
    }
    Ok(v.trim_end_matches('/').to_owned())
}

impl Config {
    /// Reads `path`; relative file names in it are relative to its folder.
    /// `SBTC_BITCOIN_NODE_PASSWORD` overrides the node's password.
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the configuration {} (give --config FILE; conf/sbtc.toml is a sample)",
                path.display()
            )
        })?;
        let f: File =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
        let at = |e: anyhow::Error| anyhow!("{}: {e}", path.display());
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        let network = parse_network(&f.network).map_err(at)?;
        let contract: ContractId = f
            .contract
            .parse()
            .map_err(|e| anyhow!("{}: contract: {:?}: {e}", path.display(), f.contract))?;
        let signer_file_path = base.join(&f.signer_set_file);
        let signer_file = SignerFile::load(&signer_file_path)
            .map_err(|e| anyhow!("{}: signer_set_file: {e}", path.display()))?;
        if signer_file.contract.as_deref() != Some(&f.contract) {
            bail!(
                "{}: contract {} is not the contract of the signer set file {} ({}): the signers \
                 attest another peg",
                path.display(),
                f.contract,
                signer_file_path.display(),
                signer_file.contract.as_deref().unwrap_or("none named")
            );
        }
        if let Some(n) = signer_file.network.as_deref() {
            if parse_network(n).ok() != Some(network) {
                bail!(
                    "{}: network {} is not the signer set file's ({n})",
                    path.display(),
                    f.network
                );
            }
        }
        let policy = signer_file
            .policy(&signer_file_path, network)
            .map_err(|e| anyhow!("the signer set file's [policy]: {e}"))?;
        let magic = match f.magic_bytes.as_deref() {
            Some(m) => match m.as_bytes() {
                [a, b] if a.is_ascii_graphic() && b.is_ascii_graphic() => [*a, *b],
                _ => bail!(
                    "{}: magic_bytes: {m:?} is not two ASCII characters",
                    path.display()
                ),
            },
            None => signer_file
                .magic()
                .map_err(|e| anyhow!("{}: {e}", signer_file_path.display()))?
                .unwrap_or_else(|| peg_user::default_magic(network)),
        };
        let b = &f.bitcoin_node;
        let password = std::env::var("SBTC_BITCOIN_NODE_PASSWORD")
            .ok()
            .or_else(|| b.password.clone());
        let bitcoin_auth = match (&b.user, password, &b.cookie_file) {
            (_, _, Some(c)) => Auth::Cookie(base.join(c)),
            (Some(u), Some(p), None) => Auth::UserPass(u.clone(), p),
            (None, None, None) => Auth::None,
            _ => bail!(
                "{}: bitcoin_node: give user and password together (or cookie_file)",
                path.display()
            ),
        };
        Ok(Config {
            network,
            contract,
            coordinator_url: url("coordinator_url", &f.coordinator_url).map_err(at)?,
            stacks_node_url: url("stacks_node_url", &f.stacks_node_url).map_err(at)?,
            bitcoin_url: url("bitcoin_node.url", &b.url).map_err(at)?,
            bitcoin_auth,
            magic,
            timeout: std::time::Duration::from_millis(f.timeout_ms.unwrap_or(15_000)),
            signer_file,
            signer_file_path,
            policy,
        })
    }
}
