//! The binary as an operator meets it: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn conf(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conf")
        .join(file)
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let o = cli(&["--help"], &[]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for c in [
        "run",
        "dkg",
        "dkg-sign",
        "process-peg-in",
        "process-peg-out",
        "status",
    ] {
        assert!(out.contains(c), "{c} missing from help:\n{out}");
    }
}

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let o = cli(&["--config", "/nonexistent/coordinator.toml", "run"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/coordinator.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_field_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(conf("coordinator.toml"))
        .unwrap()
        .replace("http://127.0.0.1:20443", "not a url")
        .replace("\"signer.toml\"", &format!("{:?}", conf("signer.toml")))
        .replace(
            "\"allowlist.toml\"",
            &format!("{:?}", conf("allowlist.toml")),
        );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let o = cli(&["--config", path.to_str().unwrap(), "status"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("stacks_node_url") && e.contains("not an http"),
        "{e}"
    );
}

#[test]
fn an_environment_override_is_checked_like_the_file() {
    let o = cli(
        &[
            "--config",
            conf("coordinator.toml").to_str().unwrap(),
            "run",
        ],
        &[("SBTC_COORDINATOR__STACKS_PRIVATE_KEY", "zz")],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("stacks_private_key: is not hex"), "{e}");
    assert!(!e.contains("11468a462ac5b1df92ca"), "a secret leaked: {e}");
}

#[test]
fn commands_not_built_yet_say_so_and_exit_3() {
    let config = conf("coordinator.toml");
    for args in [vec!["run"], vec!["status", "--json"]] {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend(args.iter());
        let o = cli(&all, &[]);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("not available yet"), "{}", stderr(&o));
    }
}

#[test]
fn a_malformed_txid_is_a_usage_error() {
    let o = cli(&["process-peg-in", "not-a-txid"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not-a-txid"), "{}", stderr(&o));
}
