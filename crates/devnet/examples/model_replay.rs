//! Replays a sequence of contract calls on the Rust model of
//! `contracts/sbtc-alpha.clar` and prints, after each call, its result and
//! every balance and the supply (as `get-balance` / `get-total-supply`
//! answer them), batches (`mint-many!` / `burn-many!`) included, their result
//! carrying every element's response. `tests/js/model-crosscheck.test.mjs` runs the same sequence
//! on the real Clarity VM and requires identical output.
//!
//! Input (a file named by the first argument):
//! `{"owner": P, "principals": [P…], "txids": [T…], "steps": [{"sender": P, "function": F, "args": [hex…]}]}`
//! Output: `[{"result": hex, "balances": {P: hex}, "supply": hex, "mints": {T: hex}, "burns": {T: hex}}…]`,
//! `mints`/`burns` being what `get-mint`/`get-burn` answer for each of `txids`.
#![allow(clippy::print_stdout, missing_docs)]

use anyhow::{anyhow, bail, Context, Result};
use devnet::SbtcModel;
use serde::Deserialize;
use stacks_wire::{PrincipalData, Value};

#[derive(Deserialize)]
struct Step {
    sender: String,
    function: String,
    args: Vec<String>,
}

#[derive(Deserialize)]
struct Sequence {
    owner: String,
    principals: Vec<String>,
    #[serde(default)]
    txids: Vec<String>,
    steps: Vec<Step>,
}

fn principal(s: &str) -> Result<PrincipalData> {
    s.parse().map_err(|e| anyhow!("principal {s}: {e:?}"))
}

/// Serialized as `serializeCV` prints it: hex without `0x`.
fn hex(v: &Value) -> String {
    v.to_hex().trim_start_matches("0x").to_owned()
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: model_replay SEQUENCE.json")?;
    let seq: Sequence = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?,
    )
    .with_context(|| format!("parsing {path}"))?;
    let mut model = SbtcModel::new(principal(&seq.owner)?);
    let principals = seq
        .principals
        .iter()
        .map(|p| principal(p))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(seq.steps.len());
    for (i, step) in seq.steps.iter().enumerate() {
        let args = step
            .args
            .iter()
            .map(|h| Value::from_hex(h).map_err(|e| anyhow!("step {i}: argument {h}: {e:?}")))
            .collect::<Result<Vec<_>>>()?;
        if let Err(e) = SbtcModel::check_args(&step.function, &args) {
            bail!("step {i}: {} refuses these arguments: {e:?}", step.function);
        }
        let r = model.call(&principal(&step.sender)?, &step.function, &args);
        let balance = |p: &PrincipalData| {
            model
                .read("get-balance", &[Value::Principal(p.clone())])
                .map(|v| hex(&v))
                .unwrap_or_default()
        };
        let balances: serde_json::Map<String, serde_json::Value> = principals
            .iter()
            .map(|p| (p.to_string(), serde_json::Value::String(balance(p))))
            .collect();
        let records = |function: &str| -> serde_json::Map<String, serde_json::Value> {
            seq.txids
                .iter()
                .map(|t| {
                    let v = model
                        .read(function, &[Value::StringAscii(t.clone())])
                        .map(|v| hex(&v))
                        .unwrap_or_default();
                    (t.clone(), serde_json::Value::String(v))
                })
                .collect()
        };
        out.push(serde_json::json!({
            "result": hex(&r.result),
            "balances": balances,
            "mints": records("get-mint"),
            "burns": records("get-burn"),
            "supply": model.read("get-total-supply", &[]).map(|v| hex(&v)).unwrap_or_default(),
        }));
    }
    println!("{}", serde_json::Value::Array(out));
    Ok(())
}
