//! The `[policy]` table: checked field by field, every bad field named at once.

use std::path::Path;

use bitcoin::{Amount, FeeRate, Network};
use peg_rules::{Policy, PolicyFile};

const ALLOWLIST: &str = r#"stacks = ["ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ"]
bitcoin = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]
"#;

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("allowlist.toml"), ALLOWLIST).unwrap();
    d
}

fn file(text: &str) -> PolicyFile {
    toml::from_str(text).unwrap()
}

fn load(text: &str, base: &Path) -> Result<Policy, String> {
    Policy::from_file(&file(text), base, Network::Regtest)
}

#[test]
fn a_full_table_loads_with_its_allowlist_relative_to_the_base_dir() {
    let d = dir();
    let p = load(
        r#"allowlist_file = "allowlist.toml"
           fee_rate_floor = 2
           fee_rate_cap = 300
           subsidy_sats = 1000
           fee_margin_percent = 35
           max_request_sats = 100000000
           max_daily_outflow_sats = 500000000"#,
        d.path(),
    )
    .unwrap();
    assert_eq!(p.fee_floor, FeeRate::from_sat_per_vb(2).unwrap());
    assert_eq!(p.fee_cap, FeeRate::from_sat_per_vb(300).unwrap());
    assert_eq!(p.subsidy, Amount::from_sat(1_000));
    assert_eq!(p.fee_margin_percent, 35);
    assert_eq!(p.max_request, Some(Amount::from_sat(100_000_000)));
    assert_eq!(p.max_daily_outflow, Some(Amount::from_sat(500_000_000)));
    assert_eq!(p.allowlist.len(), (1, 1));
    assert_eq!(p.max_fee(200), Amount::from_sat(60_000));
}

#[test]
fn the_defaults_are_the_coordinators_fee_defaults() {
    let d = dir();
    let p = load(r#"allowlist_file = "allowlist.toml""#, d.path()).unwrap();
    assert_eq!(p.fee_floor, FeeRate::from_sat_per_vb(1).unwrap());
    assert_eq!(p.fee_cap, FeeRate::from_sat_per_vb(500).unwrap());
    assert_eq!(p.subsidy, Amount::ZERO);
    assert_eq!(p.fee_margin_percent, 20);
    assert_eq!((p.max_request, p.max_daily_outflow), (None, None));
    assert_eq!(PolicyFile::default(), file(""));
}

#[test]
fn every_bad_field_is_named_at_once() {
    let d = dir();
    let e = load(
        r#"fee_rate_floor = 0
           fee_margin_percent = 1001
           max_request_sats = 6
           max_daily_outflow_sats = 5"#,
        d.path(),
    )
    .unwrap_err();
    for field in [
        "policy.allowlist_file",
        "policy.fee_rate_floor",
        "policy.fee_margin_percent",
        "policy.max_request_sats",
    ] {
        assert!(e.contains(field), "{field} missing from {e}");
    }
    assert!(!e.contains("policy.fee_rate_cap"), "{e}");

    let e = load(
        r#"allowlist_file = "allowlist.toml"
           fee_rate_floor = 20
           fee_rate_cap = 10"#,
        d.path(),
    )
    .unwrap_err();
    assert!(e.starts_with("policy.fee_rate_cap:"), "{e}");
    let e = load(
        r#"allowlist_file = "allowlist.toml"
           fee_rate_cap = 9223372036854775807"#,
        d.path(),
    )
    .unwrap_err();
    assert!(e.contains("policy.fee_rate_cap"), "{e}");
    // The limits of the range are fine.
    load(
        r#"allowlist_file = "allowlist.toml"
           fee_rate_floor = 7
           fee_rate_cap = 7
           fee_margin_percent = 1000
           max_request_sats = 5
           max_daily_outflow_sats = 5"#,
        d.path(),
    )
    .unwrap();
}

#[test]
fn a_missing_or_bad_allowlist_is_named() {
    let d = dir();
    let e = load(r#"allowlist_file = "nope.toml""#, d.path()).unwrap_err();
    assert!(
        e.starts_with("policy.allowlist_file:") && e.contains("nope.toml"),
        "{e}"
    );
    // Relative to the base dir, not the working directory.
    let e = load(
        r#"allowlist_file = "allowlist.toml""#,
        Path::new("/nonexistent"),
    )
    .unwrap_err();
    assert!(e.contains("policy.allowlist_file"), "{e}");
    // Entries of another network.
    let e = Policy::from_file(
        &file(r#"allowlist_file = "allowlist.toml""#),
        d.path(),
        Network::Bitcoin,
    )
    .unwrap_err();
    assert!(
        e.contains("policy.allowlist_file") && e.contains("not a bitcoin address"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let e = toml::from_str::<PolicyFile>("fee_rate_flor = 2").unwrap_err();
    assert!(e.message().contains("unknown field"), "{e}");
}

#[test]
fn max_fee_saturates() {
    let d = dir();
    let p = load(r#"allowlist_file = "allowlist.toml""#, d.path()).unwrap();
    assert_eq!(p.max_fee(u64::MAX), Amount::MAX);
    assert_eq!(p.max_fee(0), Amount::ZERO);
}
