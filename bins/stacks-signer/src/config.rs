//! The per-signer configuration file (`conf/signer-1.toml`).
//!
//! ```toml
//! signer_set = "signer.toml"          # the shared signer set file, relative to this file
//! id = 1                              # this signer's 1-based id in it
//! private_key_file = "signer-1.key"   # optional: else SBTC_SIGNER_PRIVATE_KEY
//! state_dir = "../data/signers"       # optional: else the signer set file's state_dir
//! attest_interval_secs = 60           # optional: how often the key attestation is repeated
//!
//! # The guard (signer_guard::GuardConfig): the signer's own nodes.
//! start_height = 0                    # the peg wallet's first Bitcoin height
//! # data_dir = "…"                    # optional: else <state_dir>/signer-<id>-guard
//! [bitcoin_node]
//! url = "http://127.0.0.1:18443"
//! user = "devnet"                     # with password; or cookie_file
//! password = "devnet"
//! [stacks_node]
//! url = "http://127.0.0.1:20443"
//! [confirmations]
//! bitcoin = 1
//! stacks = 1
//! ```
//!
//! Relative paths are taken from the file's folder. Every key is checked:
//! a misspelt one is an error, not a silent default.

use std::path::{Path, PathBuf};

use signer_guard::GuardConfig;

/// What the guard needs, each a top-level key or table.
const GUARD_PARTS: [(&str, &str); 4] = [
    (
        "bitcoin_node",
        "[bitcoin_node] url = \"http://127.0.0.1:18443\" (and user/password or cookie_file)",
    ),
    (
        "stacks_node",
        "[stacks_node] url = \"http://127.0.0.1:20443\"",
    ),
    ("confirmations", "[confirmations] bitcoin = 1, stacks = 1"),
    (
        "start_height",
        "start_height = N (the peg wallet's first Bitcoin height)",
    ),
];

/// One signer's configuration, paths resolved.
#[derive(Debug, Clone)]
pub(crate) struct SignerConfig {
    /// Where the file was read from.
    pub(crate) path: PathBuf,
    /// The shared signer set file.
    pub(crate) signer_set: PathBuf,
    /// This signer's 1-based id.
    pub(crate) id: u32,
    /// The file holding this signer's private key, if given.
    pub(crate) private_key_file: Option<PathBuf>,
    /// The folder of the signer's key history, if given.
    pub(crate) state_dir: Option<PathBuf>,
    /// How often an unchanged attestation is repeated, if given.
    pub(crate) attest_interval_secs: Option<u64>,
    /// The guard's settings; `None` when the file configures no node at all.
    pub(crate) guard: Option<GuardConfig>,
    /// The file sets no `data_dir`: the guard's files go next to the key
    /// history ([`SignerConfig::default_data_dir`]) once its folder is known.
    pub(crate) data_dir_defaulted: bool,
}

fn take_string(t: &mut toml::Table, key: &str, path: &Path) -> Result<Option<String>, String> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
        Some(other) => Err(format!(
            "{}: {key} must be a non-empty string, not {}",
            path.display(),
            other.type_str()
        )),
    }
}

fn take_positive(t: &mut toml::Table, key: &str, path: &Path) -> Result<Option<u64>, String> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if i >= 1 => Ok(u64::try_from(i).ok()),
        Some(other) => Err(format!(
            "{}: {key} must be a positive integer, not {other}",
            path.display()
        )),
    }
}

/// The guard's part of the file, with the offending entry named on error
/// (the table is written out again so that the error has a place).
fn guard_config(t: &toml::Table) -> Result<GuardConfig, String> {
    let text = toml::to_string(t).map_err(|e| e.to_string())?;
    toml::from_str(&text).map_err(|e: toml::de::Error| {
        let message = e.message().trim().to_owned();
        let Some(span) = e.span() else {
            return message;
        };
        let before = text.get(..span.start).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = text
            .get(line_start..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or("")
            .trim();
        let table = before
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('['))
            .map(|l| format!(" in {}", l.trim()))
            .unwrap_or_default();
        if line.is_empty() {
            message
        } else {
            format!("{message}: `{line}`{table}")
        }
    })
}

/// `p` relative to `base` unless absolute.
fn resolve(base: &Path, p: impl AsRef<Path>) -> PathBuf {
    let p = p.as_ref();
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl SignerConfig {
    /// Reads and checks a per-signer file.
    ///
    /// # Errors
    /// A message naming the file and every problem found in it.
    pub(crate) fn load(path: &Path) -> Result<SignerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        SignerConfig::parse(&text, path)
    }

    /// Parses the text of a per-signer file read from `path`.
    ///
    /// # Errors
    /// As [`SignerConfig::load`].
    pub(crate) fn parse(text: &str, path: &Path) -> Result<SignerConfig, String> {
        let mut t: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        if t.contains_key("signers") || t.contains_key("coordinator_public_key") {
            return Err(format!(
                "{} is a signer set file, not a per-signer file: write one that names it \
                 (signer_set = \"signer.toml\", id = N; see conf/signer-1.toml)",
                path.display()
            ));
        }
        let signer_set = take_string(&mut t, "signer_set", path)?.ok_or_else(|| {
            format!(
                "{}: signer_set is missing: the shared signer set file, e.g. signer_set = \"signer.toml\"",
                path.display()
            )
        })?;
        let id = take_positive(&mut t, "id", path)?.ok_or_else(|| {
            format!(
                "{}: id is missing: this signer's 1-based id",
                path.display()
            )
        })?;
        let id = u32::try_from(id)
            .map_err(|_| format!("{}: id {id} is out of range", path.display()))?;
        let private_key_file = take_string(&mut t, "private_key_file", path)?;
        let state_dir = take_string(&mut t, "state_dir", path)?;
        let attest_interval_secs = take_positive(&mut t, "attest_interval_secs", path)?;
        let state_dir = state_dir.map(|d| resolve(base, d));
        let data_dir_defaulted = !t.contains_key("data_dir");
        let guard = if t.is_empty() {
            None
        } else {
            let missing: Vec<&str> = GUARD_PARTS
                .iter()
                .filter(|(k, _)| !t.contains_key(*k))
                .map(|(_, how)| *how)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: the guard's node configuration is incomplete; add {}",
                    path.display(),
                    missing.join("; ")
                ));
            }
            if data_dir_defaulted {
                // Replaced by default_data_dir once the state folder is known.
                t.insert("data_dir".into(), toml::Value::String(".".into()));
            }
            let mut g = guard_config(&t).map_err(|e| format!("{}: {e}", path.display()))?;
            g.data_dir = resolve(base, &g.data_dir);
            if let Some(c) = &g.bitcoin_node.cookie_file {
                g.bitcoin_node.cookie_file = Some(resolve(base, c));
            }
            let creds = (
                g.bitcoin_node.user.is_some(),
                g.bitcoin_node.password.is_some(),
                g.bitcoin_node.cookie_file.is_some(),
            );
            if !matches!(
                creds,
                (true, true, false) | (false, false, true) | (false, false, false)
            ) {
                return Err(format!(
                    "{}: bitcoin_node: give user and password, or cookie_file, not a mix",
                    path.display()
                ));
            }
            if g.confirmations.bitcoin == 0 || g.confirmations.stacks == 0 {
                return Err(format!(
                    "{}: confirmations.bitcoin and confirmations.stacks must be at least 1 \
                     (1: the tip counts)",
                    path.display()
                ));
            }
            Some(g)
        };
        Ok(SignerConfig {
            path: path.to_path_buf(),
            signer_set: resolve(base, signer_set),
            id,
            private_key_file: private_key_file.map(|f| resolve(base, f)),
            state_dir,
            attest_interval_secs,
            guard,
            data_dir_defaulted,
        })
    }

    /// Where the guard keeps its files when the file does not say: next to
    /// the key history, `<state folder>/signer-<id>-guard`.
    pub(crate) fn default_data_dir(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("signer-{}-guard", self.id))
    }

    /// The message of a start-up refused for want of node configuration.
    pub(crate) fn no_nodes_message(&self) -> String {
        format!(
            "{}: no node configuration. A signer checks every sign request against its own \
             bitcoind and stacks-node before it reveals a nonce, and will not run without them: \
             add {} (see conf/signer-1.toml). Protocol tests only: --unguarded-test-only signs \
             whatever the coordinator asks.",
            self.path.display(),
            GUARD_PARTS
                .iter()
                .map(|(_, how)| *how)
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
signer_set = "signer.toml"
id = 2
private_key_file = "keys/signer-2.key"
state_dir = "../data/signers"
attest_interval_secs = 30
start_height = 101
[bitcoin_node]
url = "http://127.0.0.1:18443"
cookie_file = "regtest/.cookie"
[stacks_node]
url = "http://127.0.0.1:20443"
[confirmations]
bitcoin = 2
stacks = 3
"#;

    fn parse(text: &str) -> Result<SignerConfig, String> {
        SignerConfig::parse(text, Path::new("/etc/sbtc/signer-2.toml"))
    }

    #[test]
    fn a_full_file_resolves_its_paths_from_its_folder() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.signer_set, Path::new("/etc/sbtc/signer.toml"));
        assert_eq!(c.id, 2);
        assert_eq!(
            c.private_key_file.as_deref(),
            Some(Path::new("/etc/sbtc/keys/signer-2.key"))
        );
        assert_eq!(
            c.state_dir.as_deref(),
            Some(Path::new("/etc/sbtc/../data/signers"))
        );
        assert_eq!(c.attest_interval_secs, Some(30));
        let g = c.guard.clone().unwrap();
        assert_eq!(g.start_height, 101);
        assert_eq!((g.confirmations.bitcoin, g.confirmations.stacks), (2, 3));
        assert_eq!(g.stacks_node.url, "http://127.0.0.1:20443");
        assert_eq!(
            g.bitcoin_node.cookie_file.as_deref(),
            Some(Path::new("/etc/sbtc/regtest/.cookie"))
        );
        assert!(c.data_dir_defaulted);
        assert_eq!(
            c.default_data_dir(Path::new("/var/sbtc")),
            Path::new("/var/sbtc/signer-2-guard"),
            "the guard's files default into the state folder"
        );
        let c = parse(&FULL.replace("start_height", "data_dir = \"guard\"\nstart_height")).unwrap();
        assert!(!c.data_dir_defaulted);
        assert_eq!(c.guard.unwrap().data_dir, Path::new("/etc/sbtc/guard"));
    }

    #[test]
    fn no_node_table_at_all_means_no_guard() {
        let c = parse("signer_set = \"signer.toml\"\nid = 1\n").unwrap();
        assert!(c.guard.is_none());
        assert!(c.no_nodes_message().contains("[bitcoin_node]"));
        assert!(c.no_nodes_message().contains("--unguarded-test-only"));
    }

    #[test]
    fn bad_files_are_named_with_the_field() {
        let cases: Vec<(String, &str)> = vec![
            ("id = 1\n".into(), "signer_set is missing"),
            ("signer_set = \"s.toml\"\n".into(), "id is missing"),
            (
                "signer_set = \"s.toml\"\nid = 0\n".into(),
                "id must be a positive integer",
            ),
            (
                "signer_set = 3\nid = 1\n".into(),
                "signer_set must be a non-empty string",
            ),
            (
                "signer_set = \"s.toml\"\nid = 1\nstart_height = 1\n".into(),
                "[bitcoin_node]",
            ),
            (
                FULL.replace("[stacks_node]\nurl = \"http://127.0.0.1:20443\"\n", ""),
                "[stacks_node]",
            ),
            (FULL.replace("stacks = 3", "stacks = 0"), "at least 1"),
            (
                FULL.replace("bitcoin = 2", "bitcoin = 2\nbitcion = 3"),
                "unknown field `bitcion`",
            ),
            (
                FULL.replace("start_height = 101", "start_height = 101\nrelay = 1"),
                "unknown field `relay`",
            ),
            (
                FULL.replace("cookie_file", "user = \"u\"\ncookie_file"),
                "not a mix",
            ),
            (
                "threshold = 2\n[[signers]]\nid = 1\n".into(),
                "is a signer set file",
            ),
            ("signer_set = \n".into(), "signer-2.toml"),
            (
                FULL.replace("bitcoin = 2", "bitcoin = -2"),
                "`bitcoin = -2` in [confirmations]",
            ),
            (
                FULL.replace("start_height = 101", "start_height = \"x\""),
                "start_height",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
            assert!(e.contains("/etc/sbtc/signer-2.toml"), "names the file: {e}");
        }
    }
}
