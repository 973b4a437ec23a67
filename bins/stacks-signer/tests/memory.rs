//! The real `stacks-signer` under junk: 64 packets of 4 MiB tagged `req`
//! (envelope-looking headers over their size cap, bad signatures, plain JSON)
//! are all refused before decoding, and the signer's peak memory stays
//! bounded by what the relay hands out per poll, not by what was posted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::{RelayClient, RelayConfig, RelayServer};

/// Messages the in-process relay hands out per poll.
const MAX_BATCH: usize = 4;
const JUNK: usize = 4 << 20;

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn junk(i: usize) -> Vec<u8> {
    let mut b = vec![b'7'; JUNK];
    match i % 3 {
        // An envelope header from the coordinator claiming a 4 MiB nonce request.
        0 => {
            b[..4].copy_from_slice(b"SBTF");
            b[4] = 1;
            b[5] = 5;
            b[6..10].copy_from_slice(&0u32.to_be_bytes());
            let len = u32::try_from(JUNK - 14 - 64).unwrap();
            b[10..14].copy_from_slice(&len.to_be_bytes());
        }
        // A signer's DKG shares, length consistent, signature garbage.
        1 => {
            b[..4].copy_from_slice(b"SBTF");
            b[4] = 1;
            b[5] = 8;
            b[6..10].copy_from_slice(&2u32.to_be_bytes());
            b[10..14].copy_from_slice(&u32::try_from(JUNK - 78).unwrap().to_be_bytes());
        }
        // What the old packet format looked like: JSON, megabytes of it.
        _ => {
            let head =
                br#"{"msg":{"DkgPrivateShares":{"dkg_id":1,"signer_id":1,"shares":[[0,{"1":["#;
            b[..head.len()].copy_from_slice(head);
            for (j, c) in b[head.len()..JUNK - 8].iter_mut().enumerate() {
                *c = if j % 2 == 0 { b'1' } else { b',' };
            }
            let tail = b"1]}]]}}}";
            b[JUNK - 8..].copy_from_slice(tail);
        }
    }
    b
}

#[test]
fn junk_megabytes_are_refused_unread_and_memory_stays_bounded() {
    let relay = RelayServer::start(
        "127.0.0.1:0",
        RelayConfig {
            max_batch: MAX_BATCH,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/signer.toml");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(conf)
        .unwrap()
        .replace("http://127.0.0.1:3000", &relay.url())
        .replace("../data/signers", "signers");
    std::fs::write(dir.path().join("signer.toml"), text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stacks-signer"))
        .args(["--id", "1", "--unguarded-test-only", "--config"])
        .arg(dir.path().join("signer.toml"))
        .env("RUST_LOG", "info")
        .env_remove("SBTC_SIGNER_PRIVATE_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let refused = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let stderr = child.stderr.take().unwrap();
    let (r, up) = (refused.clone(), running.clone());
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("running") {
                up.fetch_add(1, Ordering::SeqCst);
            }
            if line.contains("refused:") {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the signer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let baseline = vm_hwm_kib(pid);
    let poster = RelayClient::new(&relay.url(), Duration::from_secs(30));
    for i in 0..64 {
        poster.post_tagged(&junk(i), "req").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused.load(Ordering::SeqCst) < 64 {
        assert!(
            Instant::now() < deadline,
            "only {} of 64 junk packets refused",
            refused.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = vm_hwm_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    // One poll answer is at most MAX_BATCH packets of 4 MiB (16 MiB); the
    // client holds the body and its frames (two copies, with Vec growth up to
    // a third), so the signer may grow by 3 answers over its baseline. Had
    // it decoded the JSON junk (4 MiB of digits into Vec<u8>s, or 64 MiB
    // posted in all), or held more than a poll, it would exceed this.
    let answer_kib = u64::try_from(MAX_BATCH * JUNK / 1024).unwrap();
    let bound = baseline + 3 * answer_kib + 8 * 1024;
    assert!(
        peak <= bound,
        "peak {peak} KiB over the bound {bound} KiB (baseline {baseline} KiB)"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 64);
}
