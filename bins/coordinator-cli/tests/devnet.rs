//! The README's first command: `coordinator-cli devnet` plays a whole peg on
//! emulated nodes and exits 0 only if every check holds.

use std::process::Command;

#[test]
fn the_devnet_scenario_passes_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("devnet")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    for line in [
        "[ok] alice paid exactly 0.40000000 BTC once, to their scriptPubKey",
        "[ok] mallory's peg-in rejected: not on the allowlist",
        "[ok] one mint per allowed peg-in, one burn per peg-out, none failed",
    ] {
        assert!(stdout.contains(line), "{line} missing from\n{stdout}");
    }
}
