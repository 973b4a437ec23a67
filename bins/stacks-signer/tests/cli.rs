//! The signer binary's helper commands, its configuration file and its
//! start-up errors: no node configuration, no signer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn signer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(args)
        .env_remove("SBTC_SIGNER_PRIVATE_KEY")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conf")
        .join(name)
}

/// A URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A copy of conf/signer.toml in `dir` naming a peg the guard can check
/// (network, contract, magic bytes) and a relay that is not there, with the
/// sample per-signer files next to it.
fn peg_dir(dir: &Path) {
    let text = std::fs::read_to_string(conf("signer.toml")).unwrap();
    let text = text
        .replace("http://127.0.0.1:3000", &closed_url())
        .replace("../data/signers", "signers");
    let head = "network = \"regtest\"\ncontract = \"ST3Z0MHYA9ZHQQKX0XYZ6MJYJXDJYBFZEZCGP88N0.sbtc-alpha\"\nmagic_bytes = \"id\"\n";
    let mut text = if text.contains("\nnetwork =") {
        text
    } else {
        format!("{head}{text}")
    };
    if !text.contains("\n[policy]") {
        text.push_str("\n[policy]\nallowlist_file = \"allowlist.toml\"\n");
    }
    std::fs::copy(conf("allowlist.toml"), dir.join("allowlist.toml")).unwrap();
    std::fs::write(dir.join("signer.toml"), text).unwrap();
    for i in 1..=3 {
        let name = format!("signer-{i}.toml");
        std::fs::copy(conf(&name), dir.join(&name)).unwrap();
    }
}

fn signer_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(args)
        .env_remove("SBTC_SIGNER_PRIVATE_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn key_helpers_generate_and_show_keys() {
    let o = signer(&["private-key", "--out", "-"]);
    assert!(o.status.success());
    let k = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert_eq!(k.len(), 64);
    let known = "a8dadabee1d3c80558c3e95af6ccb6b0236882ce67d5eaaf16d9aaf14ffb150f";
    let o = signer_stdin(&["public-key", "--private-key-file", "-"], known);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "031401402f8a24b4d4267f2df5d5ba2e1168800a9229017e99839dfe9771c0cd39",
        "{}",
        stderr(&o)
    );
    let o = signer_stdin(&["public-key", "--private-key-file", "-"], "zz");
    assert_eq!(o.status.code(), Some(2));
}

/// No secret on the command line: `ps` and shell history would show it.
#[test]
fn no_key_is_taken_as_an_argument() {
    let known = "a8dadabee1d3c80558c3e95af6ccb6b0236882ce67d5eaaf16d9aaf14ffb150f";
    let o = signer(&["public-key", "--private-key", known]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("0314014"));
    let help = signer(&["--help"]);
    let sub = signer(&["public-key", "--help"]);
    for o in [&help, &sub] {
        assert!(!String::from_utf8_lossy(&o.stdout).contains("--private-key "));
    }
}

/// `private-key --out FILE` writes a file only its owner reads, never
/// replaces one, and a redirect (`> file`) is refused rather than making a
/// key file others may read.
#[cfg(unix)]
#[test]
fn private_key_out_writes_mode_0600_and_never_replaces() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signer.key");
    let p = path.to_str().unwrap();
    let o = signer(&["private-key", "--out", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(!stderr(&o).contains(key.trim()), "the key was printed");
    let o = signer(&["private-key", "--out", p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key, "replaced");
    // Redirected standard output (not a terminal): refused, nothing printed.
    let o = signer(&["private-key"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
    // The public key of the file, and no warning: it is private.
    let o = signer(&["public-key", "--private-key-file", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("readable"), "{}", stderr(&o));
    // Made readable by others: the signer warns, naming the file and the fix.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = signer(&["public-key", "--private-key-file", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("WARN")
            && e.contains("readable by others")
            && e.contains("chmod 600")
            && e.contains(p),
        "{e}"
    );
}

/// `--log-format json`: one JSON object a line, RFC 3339 UTC timestamps
/// with milliseconds; the text format uses the same timestamps.
#[cfg(unix)]
#[test]
fn logs_are_json_or_text_with_one_timestamp_format() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.key");
    std::fs::write(
        &path,
        "a8dadabee1d3c80558c3e95af6ccb6b0236882ce67d5eaaf16d9aaf14ffb150f",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = path.to_str().unwrap();
    // A key file others may read: one WARN, then the public key.
    let o = signer(&[
        "public-key",
        "--private-key-file",
        p,
        "--log-format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let lines: Vec<serde_json::Value> = e
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{l}: {err}")))
        .collect();
    assert_eq!(lines.len(), 1, "{e}");
    let v = &lines[0];
    assert!(rfc3339_millis(v["ts"].as_str().unwrap()), "{v}");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["target"], "cli_log");
    assert!(v["msg"].as_str().unwrap().contains("chmod 600"), "{v}");
    // Text: the same timestamp first.
    let o = signer(&["public-key", "--private-key-file", p]);
    let e = stderr(&o);
    let ts = e.split_whitespace().next().unwrap_or_default();
    assert!(rfc3339_millis(ts), "{e}");
}

/// `2026-12-01T13:20:03.123Z`.
fn rfc3339_millis(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && ts.chars().filter(char::is_ascii_digit).count() == 17
}

#[test]
fn the_older_form_runs_only_unguarded_and_says_so() {
    let set = conf("signer.toml");
    let set = set.to_str().unwrap();
    let o = signer(&["--config", set]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("run --config"), "{}", stderr(&o));
    // The signer set file alone configures no node: refused.
    let o = signer(&["--id", "1", "--config", set]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("configures no node"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--unguarded-test-only"),
        "{}",
        stderr(&o)
    );
    let unguarded = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("--unguarded-test-only");
        signer(&a)
    };
    let o = unguarded(&["--id", "9", "--config", set]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no signer with id 9"), "{}", stderr(&o));
    let o = unguarded(&["--id", "1", "--config", "/nonexistent/signer.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/signer.toml"));
    // The wrong key for the id is refused before touching the relay.
    let o = Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(["--id", "1", "--config", set, "--unguarded-test-only"])
        .env(
            "SBTC_SIGNER_PRIVATE_KEY",
            "3d5740417385093d2eae10736f7b834066ab3a9191c729df6186aa3cb34df428",
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not belong to signer 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_signer_without_node_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    peg_dir(dir.path());
    let f = dir.path().join("bare.toml");
    std::fs::write(&f, "signer_set = \"signer.toml\"\nid = 1\n").unwrap();
    let o = signer(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for want in [
        "no node configuration",
        "[bitcoin_node]",
        "[stacks_node]",
        "[confirmations]",
        "start_height",
        "bare.toml",
    ] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    assert!(
        !dir.path().join("signers").exists(),
        "nothing written before the refusal"
    );
    // A partial guard configuration names what is missing.
    std::fs::write(
        &f,
        "signer_set = \"signer.toml\"\nid = 1\n[bitcoin_node]\nurl = \"http://127.0.0.1:18443\"\n",
    )
    .unwrap();
    let o = signer(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("incomplete") && e.contains("[stacks_node]"),
        "{e}"
    );
    assert!(
        !e.contains("add [bitcoin_node]"),
        "bitcoin_node is there: {e}"
    );

    // Explicitly unguarded (protocol tests): it runs, loudly, as far as the
    // (absent) relay.
    std::fs::write(&f, "signer_set = \"signer.toml\"\nid = 1\n").unwrap();
    let o = signer(&[
        "run",
        "--config",
        f.to_str().unwrap(),
        "--unguarded-test-only",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("NO GUARD"), "{e}");
    assert!(e.contains("relay"), "{e}");
}

#[test]
fn bad_configuration_files_are_named_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    peg_dir(dir.path());
    let sample = std::fs::read_to_string(dir.path().join("signer-1.toml")).unwrap();
    let cases = [
        (sample.replace("id = 1", "id = 7"), "no signer with id 7"),
        (
            sample.replace("id = 1", "id = \"one\""),
            "id must be a positive integer",
        ),
        (
            sample.replace("signer_set = \"signer.toml\"", ""),
            "signer_set is missing",
        ),
        (
            sample.replace("signer.toml", "missing.toml"),
            "missing.toml",
        ),
        (
            sample.replace("stacks = 1", "stacks = 1\nstack = 2"),
            "unknown field `stack`",
        ),
        (
            sample.replace("[stacks_node]", "[stacks-node]"),
            "[stacks_node]",
        ),
        (sample.replace("bitcoin = 1", "bitcoin = 0"), "at least 1"),
        (
            sample.replace(
                "password = \"devnet\"",
                "password = \"devnet\"\ncookie_file = \"c\"",
            ),
            "user and password, or cookie_file",
        ),
        (format!("{sample}\n[[signers]]\n"), "signer-bad.toml"),
        (
            sample.replace("start_height = 0", "start_height = -1"),
            "start_height",
        ),
    ];
    let f = dir.path().join("signer-bad.toml");
    for (text, want) in cases {
        std::fs::write(&f, &text).unwrap();
        let o = signer(&["run", "--config", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{want}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{want:?} not in {}", stderr(&o));
    }
    // Node configuration and the unguarded flag together: refused.
    let o = signer(&[
        "run",
        "--config",
        dir.path().join("signer-1.toml").to_str().unwrap(),
        "--unguarded-test-only",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("remove one"), "{}", stderr(&o));
    // A signer set file the guard cannot check against (no network): named.
    let set = std::fs::read_to_string(dir.path().join("signer.toml")).unwrap();
    std::fs::write(
        dir.path().join("signer.toml"),
        set.replace("network = \"regtest\"\n", ""),
    )
    .unwrap();
    let o = signer(&[
        "run",
        "--config",
        dir.path().join("signer-1.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("network"), "{}", stderr(&o));
}

#[test]
fn the_sample_files_start_a_guarded_signer_as_far_as_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    peg_dir(dir.path());
    for i in 1..=3 {
        let f = dir.path().join(format!("signer-{i}.toml"));
        let o = signer(&["run", "--config", f.to_str().unwrap()]);
        let e = stderr(&o);
        // Everything checked and opened; only the relay is not there.
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("relay"), "{e}");
        assert!(
            e.contains("guarded by bitcoind http://127.0.0.1:18443"),
            "{e}"
        );
        assert!(
            dir.path()
                .join(format!("signers/signer-{i}-guard/guard.sqlite"))
                .exists(),
            "the guard's store sits next to the key history"
        );
    }
}

/// Today a signer logged 5 WARNs a second while the relay was down; now
/// it backs off, and the repeated line is shown once with a count later.
#[test]
fn a_relay_outage_is_logged_a_few_times_not_five_a_second() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    peg_dir(dir.path());
    let relay = relay::RelayServer::start("127.0.0.1:0", relay::RelayConfig::default()).unwrap();
    let set = dir.path().join("signer.toml");
    let text = std::fs::read_to_string(&set).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("relay_url") || l.trim_start().starts_with("url") {
                format!(
                    "{} = {:?}",
                    l.split('=').next().unwrap().trim(),
                    relay.url()
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&set, text).unwrap();
    let log = dir.path().join("signer.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args([
            "--id",
            "1",
            "--config",
            set.to_str().unwrap(),
            "--unguarded-test-only",
        ])
        .env_remove("SBTC_SIGNER_PRIVATE_KEY")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let running = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("running") {
        assert!(
            running.elapsed() < std::time::Duration::from_secs(20),
            "the signer did not start: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        if let Some(s) = child.try_wait().unwrap() {
            panic!(
                "the signer exited ({s}): {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    relay.shutdown();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let warns = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("retrying"))
        .count();
    assert!(
        (1..=3).contains(&warns),
        "{warns} relay warnings in 4 s:\n{text}"
    );
}
