//! The seed's "How to Run a DKG Signing Round", with our binaries: a relay,
//! three `stacks-signer --id N --config signer.toml` processes and
//! `coordinator-cli --config coordinator.toml --signer-config signer.toml
//! dkg-sign`, on 127.0.0.1 with a free port, bounded in time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The sibling binaries, built on demand when this test runs alone.
fn sibling(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--all-features", "--bins"])
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building relay-server and stacks-signer failed"
        );
    }
    path
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_relay(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the relay did not come up at {url}");
}

#[test]
fn the_seed_four_terminal_dkg_signing_round() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let signer_toml = std::fs::read_to_string(conf.join("signer.toml"))
        .unwrap()
        .replace("http://127.0.0.1:3000", &url)
        .replace("../data/signers", "signers");
    std::fs::write(dir.path().join("signer.toml"), signer_toml).unwrap();
    // The signer set file's [policy] names it, relative to that file.
    std::fs::copy(
        conf.join("allowlist.toml"),
        dir.path().join("allowlist.toml"),
    )
    .unwrap();
    let coordinator_toml = std::fs::read_to_string(conf.join("coordinator.toml"))
        .unwrap()
        .replace("http://127.0.0.1:3000", &url)
        .replace("\"../data\"", "\"data\"")
        .replace(
            "\"allowlist.toml\"",
            &format!("{:?}", conf.join("allowlist.toml")),
        )
        .replace("dkg_timeout_ms = 60000", "dkg_timeout_ms = 20000");
    std::fs::write(dir.path().join("coordinator.toml"), coordinator_toml).unwrap();

    let mut children = Kill(vec![]);
    children.0.push(
        Command::new(sibling("relay-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_relay(&url);
    for id in ["3", "2", "1"] {
        children.0.push(
            Command::new(sibling("stacks-signer"))
                .args(["--id", id, "--unguarded-test-only", "--config"])
                .arg(dir.path().join("signer.toml"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(500));

    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(dir.path().join("coordinator.toml"))
        .arg("--signer-config")
        .arg(dir.path().join("signer.toml"))
        .args(["dkg-sign", "hello from the seed"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("aggregate public key: 0"), "{stdout}");
    assert!(stdout.contains("peg wallet address:   bcrt1p"), "{stdout}");
    assert!(
        stdout.contains("verified against the BIP-341 tweaked key"),
        "{stdout}"
    );
    for id in 1..=3 {
        assert!(
            dir.path()
                .join(format!("signers/signer-{id}.json"))
                .exists(),
            "signer {id} saved its share"
        );
    }

    // `dkg` again keeps the existing key unless forced.
    let again = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(dir.path().join("coordinator.toml"))
        .arg("dkg")
        .output()
        .unwrap();
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(again_out.contains("exists already"), "{again_out}");
    let first_key = stdout
        .lines()
        .find(|l| l.starts_with("aggregate public key"))
        .unwrap();
    assert!(again_out.contains(first_key), "{again_out}");

    // `--force` is gone: it destroyed the old key. It says what replaced it.
    let forced = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(dir.path().join("coordinator.toml"))
        .args(["dkg", "--force"])
        .output()
        .unwrap();
    assert_eq!(forced.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&forced.stderr).contains("dkg --rotate"));

    // One process per data directory: while another holds it (here, this
    // test), commands that touch the keys refuse and name the holder.
    let held =
        coordinator::lock::DataDirLock::acquire(&dir.path().join("data"), "run (test)").unwrap();
    let locked = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(dir.path().join("coordinator.toml"))
        .args(["dkg-sign", "while locked"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&locked.stderr);
    assert_eq!(locked.status.code(), Some(1), "{e}");
    assert!(
        e.contains("another coordinator process holds") && e.contains("run (test)"),
        "{e}"
    );
    drop(held);
}

#[test]
fn dkg_without_a_relay_fails_clearly() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(conf.join("coordinator.toml"))
        .unwrap()
        .replace("http://127.0.0.1:3000", &url)
        .replace("\"../data\"", "\"data\"")
        .replace(
            "\"allowlist.toml\"",
            &format!("{:?}", conf.join("allowlist.toml")),
        )
        .replace(
            "\"signer.toml\"",
            &format!("{:?}", conf.join("signer.toml")),
        );
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator-cli"))
        .arg("--config")
        .arg(dir.path().join("c.toml"))
        .arg("dkg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("relay") && e.contains(&url), "{e}");
}
