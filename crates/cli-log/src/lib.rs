//! The log set-up every binary of the workspace shares, and the checks of
//! the files that hold keys.
//!
//! One line in a binary's `main` sets logging up the same way everywhere:
//!
//! ```no_run
//! # #[derive(clap::Parser)] struct Cli { #[command(flatten)] log: cli_log::LogArgs }
//! # let cli: Cli = clap::Parser::parse();
//! cli_log::init(&cli.log);
//! ```
//!
//! - `--log-format text|json` (or `SBTC_LOG_FORMAT`): a line of text, or one
//!   JSON object a line (`ts`, `level`, `target`, `msg`);
//! - one timestamp format: RFC 3339 in UTC with milliseconds
//!   (`2026-12-01T13:20:03.123Z`);
//! - `-v` shows this project's crates at debug, `-vv` at trace; HTTP-client
//!   and TLS internals (ureq, rustls, hyper, …) stay at warn (info at `-vv`,
//!   everything at `-vvv`). `RUST_LOG` replaces all of it when set;
//! - a warning or error repeated word for word from the same place is shown
//!   once per [`REPEAT_WINDOW`]; the next one shown says how many were not.
//!
//! It never reads or prints a key: [`warn_if_readable_by_others`] looks at a
//! file's mode only, and [`write_new_secret_file`] writes one it is given.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How long a repeated warning or error is held back after it was shown.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// Most distinct repeated lines remembered (older ones are forgotten first).
const MAX_REMEMBERED: usize = 4096;

/// This workspace's crates (module path prefixes), shown at debug with `-v`.
pub const OUR_CRATES: &[&str] = &[
    "bitcoin_node_client",
    "cli_log",
    "coordinator",
    "coordinator_cli",
    "devnet",
    "fee_wallet",
    "frost_coordinator",
    "frost_net",
    "frost_signer",
    "http_fixture",
    "peg_coins",
    "peg_ops",
    "peg_queue",
    "peg_rules",
    "peg_user",
    "relay",
    "relay_server",
    "sbtc",
    "signer_guard",
    "stacks_node_client",
    "stacks_signer",
    "stacks_wire",
];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-01T13:20:03.123Z INFO  coordinator: message`.
    #[default]
    Text,
    /// `{"ts":"2026-12-01T13:20:03.123Z","level":"INFO","target":"coordinator","msg":"message"}`.
    Json,
}

/// The log flags every binary takes (flatten them into its parser).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log lines as `text` or `json` (one object a line).
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SBTC_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    /// More log output: -v this project's debug lines, -vv trace (HTTP
    /// internals stay quiet); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Sets the process's logger up from the flags; a second call does nothing.
pub fn init(args: &LogArgs) {
    init_with(args.log_format, args.verbose);
}

/// Sets the process's logger up; a second call does nothing.
pub fn init_with(format: LogFormat, verbose: u8) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| filter_spec(verbose));
    let mut b = env_logger::Builder::new();
    b.parse_filters(&spec);
    b.format(move |buf, record| {
        let ts = buf.timestamp_millis().to_string();
        match format {
            LogFormat::Text => writeln!(
                buf,
                "{ts} {:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            ),
            LogFormat::Json => {
                let line = serde_json::json!({
                    "ts": ts,
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            }
        }
    });
    let inner = b.build();
    let max = inner.filter();
    let logger = RateLimited {
        inner,
        limiter: Mutex::new(Limiter::new(REPEAT_WINDOW)),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// The filter used without `RUST_LOG`, by the number of `-v`.
pub fn filter_spec(verbose: u8) -> String {
    let (ours, others) = match verbose {
        0 => (LevelFilter::Info, LevelFilter::Warn),
        1 => (LevelFilter::Debug, LevelFilter::Warn),
        2 => (LevelFilter::Trace, LevelFilter::Info),
        _ => return "trace".to_owned(),
    };
    let mut spec = others.to_string().to_lowercase();
    for c in OUR_CRATES {
        spec.push_str(&format!(",{c}={}", ours.to_string().to_lowercase()));
    }
    spec
}

/// Decides which repeats of a line are shown.
#[derive(Debug)]
struct Limiter {
    window: Duration,
    /// Per line: when it was last shown, and how many were held back since.
    seen: HashMap<String, (Instant, u64)>,
}

impl Limiter {
    fn new(window: Duration) -> Self {
        Limiter {
            window,
            seen: HashMap::new(),
        }
    }

    /// Returns `None` to hold the line back, else `Some(n)`: show it, `n`
    /// repeats having been held back since it was last shown.
    fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some((shown, held)) = self.seen.get_mut(key) {
            if now.duration_since(*shown) < self.window {
                *held += 1;
                return None;
            }
            let n = *held;
            *shown = now;
            *held = 0;
            return Some(n);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            let window = self.window;
            self.seen
                .retain(|_, (t, _)| now.duration_since(*t) < window);
            if self.seen.len() >= MAX_REMEMBERED {
                self.seen.clear();
            }
        }
        self.seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

/// env_logger's filter and format, with repeats of warnings and errors
/// held back.
struct RateLimited {
    inner: env_logger::Logger,
    limiter: Mutex<Limiter>,
}

impl Log for RateLimited {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if record.level() > Level::Warn {
            self.inner.log(record);
            return;
        }
        let msg = record.args().to_string();
        let key = format!(
            "{}|{}|{}|{}|{msg}",
            record.level(),
            record.target(),
            record.file().unwrap_or_default(),
            record.line().unwrap_or_default()
        );
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&key, Instant::now());
        match admitted {
            None => {}
            Some(0) => self.inner.log(record),
            Some(n) => self.inner.log(
                &Record::builder()
                    .args(format_args!(
                        "{msg} [{n} more like this in the last {}s not shown]",
                        REPEAT_WINDOW.as_secs()
                    ))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Logs a warning when `path` (a file holding `what`, a key or a
/// password) can be read by its group or by others; returns whether it
/// warned. Only the mode is read, never the file. On systems without Unix
/// modes it does nothing.
pub fn warn_if_readable_by_others(path: &Path, what: &str) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                log::warn!(
                    "{} holds {what} and is readable by {} (mode {mode:03o}): `chmod 600 {}`",
                    path.display(),
                    if mode & 0o007 != 0 {
                        "others"
                    } else {
                        "its group"
                    },
                    path.display()
                );
                return true;
            }
        }
        false
    }
    #[cfg(not(unix))]
    {
        let _ = (path, what);
        false
    }
}

/// Writes `contents` to a new file at `path` that only its owner can read
/// and write (mode 0600 on Unix), refusing to replace an existing file.
///
/// # Errors
/// When the file exists (`AlreadyExists`) or cannot be written; a file
/// that was created but not fully written is removed.
pub fn write_new_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_held_back_for_the_window_then_shown_with_its_count() {
        let mut l = Limiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.admit("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.admit("b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(l.admit("a", t0 + Duration::from_secs(31)), Some(5));
        assert_eq!(l.admit("a", t0 + Duration::from_secs(32)), None);
        assert_eq!(l.admit("a", t0 + Duration::from_secs(62)), Some(1));
    }

    #[test]
    fn the_memory_of_repeats_is_bounded() {
        let mut l = Limiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..(MAX_REMEMBERED * 2) {
            assert_eq!(l.admit(&i.to_string(), t0), Some(0));
        }
        assert!(l.seen.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn verbose_raises_our_crates_only() {
        let s = filter_spec(1);
        assert!(s.starts_with("warn,"), "{s}");
        assert!(s.contains("coordinator=debug") && s.contains("stacks_signer=debug"));
        assert!(!s.contains("ureq") && !s.contains("rustls") && !s.contains("hyper"));
        assert!(filter_spec(0).contains("relay=info"));
        assert_eq!(filter_spec(3), "trace");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_is_private_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_new_secret_file(&p, b"abc\n").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!warn_if_readable_by_others(&p, "a key"));
        let e = write_new_secret_file(&p, b"other").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"abc\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(warn_if_readable_by_others(&p, "a key"));
    }
}
