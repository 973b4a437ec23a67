//! The relay binary's log flags: `--log-format json` writes one JSON object
//! a line with RFC 3339 UTC millisecond timestamps, like the other binaries;
//! a token file others can read is warned about.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn json_logs_and_a_warning_for_a_token_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--token-file",
        ])
        .arg(&token)
        .env_remove("RUST_LOG")
        .env_remove("SBTC_RELAY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(20)) {
        let listening = l.contains("relay listening on");
        lines.push(l);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("relay listening on")),
        "{lines:?}"
    );
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && &ts[10..11] == "T" && &ts[19..20] == "." && ts.ends_with('Z'),
            "{ts}"
        );
        assert!(!l.contains("s3cret-token"), "the token was logged: {l}");
    }
    #[cfg(unix)]
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("chmod 600")),
        "{lines:?}"
    );
}
