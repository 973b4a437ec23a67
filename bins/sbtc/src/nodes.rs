//! Talking to the outside: the coordinator's HTTP endpoint, the bitcoind's
//! `scantxoutset`, and how a status answer is shown.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::{Amount, Denomination, OutPoint, Script, ScriptBuf, TxOut, Txid};
use bitcoin_node_client::UreqBitcoinNode;
use peg_user::{Coin, UserKey};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;

/// The most a coordinator answer may hold.
const MAX_BODY: u64 = 4 << 20;

/// Coinbase outputs mature after this many confirmations.
const COINBASE_MATURITY: u32 = 100;

/// `GET url`: the status and body.
///
/// # Errors
/// When nothing answers, naming the URL.
pub(crate) fn get(url: &str, timeout: Duration) -> Result<(u16, String)> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    );
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    let code = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| anyhow!("GET {url}: reading the answer: {e}"))?;
    Ok((code, text))
}

/// The start of an answer, for an error message.
pub(crate) fn snippet(text: &str) -> String {
    let t: String = text.trim().chars().take(200).collect();
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

/// The `raw(HEX)` descriptor of a script (what every bitcoind, and the
/// devnet's emulator, scans).
pub(crate) fn raw_descriptor(script: &Script) -> String {
    format!("raw({})", script.to_hex_string())
}

/// A coin `scantxoutset` found.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) coin: Coin,
    pub(crate) confirmations: u32,
    pub(crate) immature: bool,
}

fn btc(v: &Value) -> Result<Amount> {
    let n = v
        .as_f64()
        .ok_or_else(|| anyhow!("{v} is not a BTC amount"))?;
    Amount::from_str_in(&format!("{n}"), Denomination::Bitcoin)
        .map_err(|e| anyhow!("BTC amount {n}: {e}"))
}

/// Every unspent output `descriptor` describes, from `scantxoutset`.
pub(crate) fn scan(c: &Config, bitcoin: &UreqBitcoinNode, descriptor: &str) -> Result<Vec<Found>> {
    #[derive(Deserialize)]
    struct Unspent {
        txid: Txid,
        vout: u32,
        #[serde(rename = "scriptPubKey")]
        script_pubkey: String,
        amount: Value,
        height: u64,
        #[serde(default)]
        coinbase: bool,
    }
    #[derive(Deserialize)]
    struct Scan {
        success: bool,
        height: u64,
        unspents: Vec<Unspent>,
    }
    let v = bitcoin
        .call("scantxoutset", json!(["start", [descriptor]]))
        .map_err(|e| {
            anyhow!(
                "scantxoutset {descriptor} on the bitcoin node {}: {e}",
                c.bitcoin_url
            )
        })?;
    let s: Scan = serde_json::from_value(v)
        .map_err(|e| anyhow!("scantxoutset on {}: unexpected answer: {e}", c.bitcoin_url))?;
    if !s.success {
        bail!("scantxoutset on {} did not complete", c.bitcoin_url);
    }
    s.unspents
        .into_iter()
        .map(|u| {
            let confirmations = u32::try_from(s.height.saturating_add(1).saturating_sub(u.height))
                .unwrap_or(u32::MAX);
            Ok(Found {
                coin: Coin {
                    outpoint: OutPoint::new(u.txid, u.vout),
                    txout: TxOut {
                        value: btc(&u.amount)
                            .with_context(|| format!("coin {}:{}", u.txid, u.vout))?,
                        script_pubkey: ScriptBuf::from_hex(&u.script_pubkey).map_err(|e| {
                            anyhow!("coin {}:{}: scriptPubKey: {e}", u.txid, u.vout)
                        })?,
                    },
                },
                confirmations,
                immature: u.coinbase && confirmations < COINBASE_MATURITY,
            })
        })
        .collect()
}

/// The coins `key` can spend now: found by `descriptor` (default: the key's
/// P2WPKH address), paying the key's script, mature, and not spent by a
/// mempool transaction.
pub(crate) fn coins(
    c: &Config,
    bitcoin: &UreqBitcoinNode,
    key: &UserKey,
    descriptor: Option<&str>,
) -> Result<Vec<Coin>> {
    let script = key.btc_address(c.network).script_pubkey();
    let desc = descriptor.map_or_else(|| raw_descriptor(&script), str::to_owned);
    let found = scan(c, bitcoin, &desc)?;
    let all = found.len();
    let mine: Vec<Coin> = found
        .into_iter()
        .filter(|f| f.coin.txout.script_pubkey == script && !f.immature)
        .map(|f| f.coin)
        .collect();
    if mine.len() < all {
        let _ = writeln!(
            std::io::stderr().lock(),
            "note: {} of the {all} coin(s) {desc} finds are immature or not the key's P2WPKH \
             output ({}); they are not spent",
            all - mine.len(),
            key.btc_address(c.network)
        );
    }
    peg_user::chain::unspent_now(bitcoin, mine).map_err(|e| anyhow!("{e} ({})", c.bitcoin_url))
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The coordinator's `/ops/TXID` answer for people: every field that is
/// there, none required.
pub(crate) fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    for (field, label) in [
        ("txid", "txid"),
        ("kind", "kind"),
        ("state", "state"),
        ("reason", "reason"),
        ("amount_sats", "amount (sats)"),
        ("recipient", "recipient"),
    ] {
        if let Some(x) = v.get(field).filter(|x| !x.is_null()) {
            let _ = writeln!(out, "{label:<14} {}", text(x));
        }
    }
    if let Some(events) = v.get("events").and_then(Value::as_array) {
        let _ = writeln!(out, "events:");
        for e in events {
            let at = e
                .get("at_unix")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), utc);
            let _ = write!(out, "  {at}  {}", e.get("state").map_or("?".into(), text));
            for (k, label) in [("stacks_txid", "stacks tx"), ("bitcoin_txid", "bitcoin tx")] {
                if let Some(x) = e.get(k).filter(|x| !x.is_null()) {
                    let _ = write!(out, "  {label} {}", text(x));
                }
            }
            let _ = writeln!(out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_083_199), "2026-11-30 23:59:59 UTC");
    }

    #[test]
    fn a_status_shows_what_is_there_and_skips_what_is_not() {
        let v = json!({"txid": "ab", "state": "done", "amount_sats": 5,
            "events": [{"at_unix": 0, "state": "accepted"},
                       {"state": "stacks_tx_signed", "stacks_txid": "cd"}, {}]});
        let s = render_status(&v);
        assert!(s.contains("txid           ab\n"), "{s}");
        assert!(s.contains("amount (sats)  5\n"), "{s}");
        assert!(!s.contains("reason"), "{s}");
        assert!(s.contains("1970-01-01 00:00:00 UTC  accepted\n"), "{s}");
        assert!(s.contains("?  stacks_tx_signed  stacks tx cd\n"), "{s}");
        assert!(s.contains("  ?  ?\n"), "{s}");
        assert_eq!(render_status(&json!([1, 2])), "");
    }
}
