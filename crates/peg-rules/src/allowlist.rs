//! The closed-alpha allowlist: the only Stacks principals that may receive
//! peg-ins and the only Bitcoin addresses that may receive peg-outs.

use std::collections::HashSet;
use std::path::Path;

use bitcoin::{Network, ScriptBuf};
use peg_ops::BtcAddress;
use serde::Deserialize;
use stacks_wire::PrincipalData;

/// The allowlist, loaded from a TOML file:
///
/// ```toml
/// stacks = ["ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ"]
/// bitcoin = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    principals: HashSet<PrincipalData>,
    scripts: HashSet<ScriptBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowlistFile {
    #[serde(default)]
    stacks: Vec<String>,
    #[serde(default)]
    bitcoin: Vec<String>,
}

impl Allowlist {
    /// Builds an allowlist from already-parsed entries.
    pub fn new(
        principals: impl IntoIterator<Item = PrincipalData>,
        scripts: impl IntoIterator<Item = ScriptBuf>,
    ) -> Self {
        Allowlist {
            principals: principals.into_iter().collect(),
            scripts: scripts.into_iter().collect(),
        }
    }

    /// Reads and checks an allowlist file; every Bitcoin address must belong
    /// to `network`.
    ///
    /// # Errors
    /// A message naming the file and the bad entry.
    pub fn load(path: &Path, network: Network) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read allowlist {}: {e}", path.display()))?;
        Self::parse(&text, network).map_err(|e| format!("allowlist {}: {e}", path.display()))
    }

    /// Parses allowlist text.
    ///
    /// # Errors
    /// A message naming the bad entry.
    pub fn parse(text: &str, network: Network) -> Result<Self, String> {
        let file: AllowlistFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        // Every bad entry is named at once, not one per run.
        let mut bad = Vec::new();
        let mut principals = HashSet::new();
        for s in &file.stacks {
            match s.parse::<PrincipalData>() {
                Ok(p) => {
                    principals.insert(p);
                }
                Err(e) => bad.push(format!("stacks entry {s:?}: {e}")),
            }
        }
        let mut scripts = HashSet::new();
        for s in &file.bitcoin {
            match s.parse::<BtcAddress>().map(|a| a.require_network(network)) {
                Ok(Some(a)) => {
                    scripts.insert(a.script_pubkey());
                }
                Ok(None) => bad.push(format!("bitcoin entry {s:?} is not a {network} address")),
                Err(e) => bad.push(format!("bitcoin entry {s:?}: {e}")),
            }
        }
        if !bad.is_empty() {
            return Err(bad.join("; "));
        }
        Ok(Allowlist {
            principals,
            scripts,
        })
    }

    /// Returns whether `p` may receive sBTC.
    pub fn allows_principal(&self, p: &PrincipalData) -> bool {
        self.principals.contains(p)
    }

    /// Returns whether BTC may be paid to `script_pubkey`.
    pub fn allows_script(&self, script_pubkey: &bitcoin::Script) -> bool {
        self.scripts.contains(script_pubkey)
    }

    /// Returns the number of entries, Stacks and Bitcoin.
    pub fn len(&self) -> (usize, usize) {
        (self.principals.len(), self.scripts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_answers() {
        let a = Allowlist::parse(
            r#"stacks = ["ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ"]
               bitcoin = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]"#,
            Network::Regtest,
        )
        .unwrap();
        let ok: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let other: PrincipalData = "SP2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKNRV9EJ7".parse().unwrap();
        assert!(a.allows_principal(&ok));
        assert!(!a.allows_principal(&other));
        let addr: BtcAddress = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .unwrap();
        assert!(a.allows_script(&addr.script_pubkey()));
        assert_eq!(a.len(), (1, 1));
    }

    #[test]
    fn names_the_bad_entry() {
        let e = Allowlist::parse(r#"stacks = ["nope"]"#, Network::Regtest).unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
        let e = Allowlist::parse(
            r#"bitcoin = ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"]"#,
            Network::Regtest,
        )
        .unwrap_err();
        assert!(e.contains("not a regtest address"), "{e}");
        let e = Allowlist::parse(r#"stacs = []"#, Network::Regtest).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
