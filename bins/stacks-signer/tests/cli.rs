//! The signer binary's helper commands and its start-up errors.

use std::path::Path;
use std::process::Command;

fn signer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(args)
        .env_remove("SBTC_SIGNER_PRIVATE_KEY")
        .output()
        .unwrap()
}

#[test]
fn key_helpers_generate_and_show_keys() {
    let o = signer(&["private-key"]);
    assert!(o.status.success());
    let k = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert_eq!(k.len(), 64);
    let o = signer(&[
        "public-key",
        "--private-key",
        "a8dadabee1d3c80558c3e95af6ccb6b0236882ce67d5eaaf16d9aaf14ffb150f",
    ]);
    assert_eq!(
        String::from_utf8(o.stdout).unwrap().trim(),
        "031401402f8a24b4d4267f2df5d5ba2e1168800a9229017e99839dfe9771c0cd39"
    );
    let o = signer(&["public-key", "--private-key", "zz"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn start_up_errors_are_clear() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/signer.toml");
    let conf = conf.to_str().unwrap();
    let o = signer(&["--config", conf]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--id"));
    let o = signer(&["--id", "9", "--config", conf]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no signer with id 9"));
    let o = signer(&["--id", "1", "--config", "/nonexistent/signer.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/signer.toml"));
    // The wrong key for the id is refused before touching the relay.
    let o = Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(["--id", "1", "--config", conf])
        .env(
            "SBTC_SIGNER_PRIVATE_KEY",
            "3d5740417385093d2eae10736f7b834066ab3a9191c729df6186aa3cb34df428",
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not belong to signer 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
