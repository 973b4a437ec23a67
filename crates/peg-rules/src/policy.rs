//! The peg's policy, shared by the coordinator and every signer: the
//! `[policy]` table of the signer set file.
//!
//! ```toml
//! [policy]
//! allowlist_file = "allowlist.toml"   # relative to the signer set file
//! fee_rate_floor = 1                  # sat/vB
//! fee_rate_cap = 500                  # sat/vB
//! subsidy_sats = 0                    # most the peg adds to one fulfilment's fee
//! fee_margin_percent = 20             # a request's fee output covers the fee plus this
//! max_request_sats = 100000000        # optional: the largest peg-out
//! max_daily_outflow_sats = 500000000  # optional: peg-outs accepted per rolling 24 h
//! ```

use std::path::Path;

use bitcoin::{Amount, FeeRate, Network};
use serde::{Deserialize, Serialize};

use crate::Allowlist;

/// The `[policy]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The closed-alpha allowlist, relative to the signer set file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowlist_file: Option<String>,
    /// Lowest fee rate, sat/vB (also used without an estimate).
    #[serde(default = "default_floor")]
    pub fee_rate_floor: u64,
    /// Highest fee rate, sat/vB.
    #[serde(default = "default_cap")]
    pub fee_rate_cap: u64,
    /// Most the peg wallet adds to one fulfilment's fee beyond the request's.
    #[serde(default)]
    pub subsidy_sats: u64,
    /// How much above the estimated fulfilment fee a request's fee output
    /// must be, in percent.
    #[serde(default = "default_margin")]
    pub fee_margin_percent: u32,
    /// The largest peg-out amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_sats: Option<u64>,
    /// The most peg-outs accepted in any 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_daily_outflow_sats: Option<u64>,
}

/// The largest `fee_margin_percent`.
pub const MAX_MARGIN_PERCENT: u32 = 1000;

fn default_floor() -> u64 {
    1
}
fn default_cap() -> u64 {
    500
}
fn default_margin() -> u32 {
    20
}

impl Default for PolicyFile {
    fn default() -> Self {
        PolicyFile {
            allowlist_file: None,
            fee_rate_floor: default_floor(),
            fee_rate_cap: default_cap(),
            subsidy_sats: 0,
            fee_margin_percent: default_margin(),
            max_request_sats: None,
            max_daily_outflow_sats: None,
        }
    }
}

/// The policy, checked and with its allowlist loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Who may receive peg-ins and peg-outs.
    pub allowlist: Allowlist,
    /// Lowest fee rate.
    pub fee_floor: FeeRate,
    /// Highest fee rate.
    pub fee_cap: FeeRate,
    /// Most the peg adds to one fulfilment's fee.
    pub subsidy: Amount,
    /// Margin over the estimated fulfilment fee, percent.
    pub fee_margin_percent: u32,
    /// The largest peg-out.
    pub max_request: Option<Amount>,
    /// The most peg-outs per rolling 24 hours.
    pub max_daily_outflow: Option<Amount>,
}

impl Policy {
    /// Checks a `[policy]` table and loads its allowlist (relative to
    /// `base_dir`, the signer set file's folder; every Bitcoin entry must be
    /// on `network`). No `allowlist_file` is an error: the alpha is closed.
    ///
    /// # Errors
    /// Every bad field, by name.
    pub fn from_file(
        file: &PolicyFile,
        base_dir: &Path,
        network: Network,
    ) -> Result<Policy, String> {
        let mut bad: Vec<String> = Vec::new();
        if file.fee_rate_floor < 1 {
            bad.push(format!(
                "policy.fee_rate_floor: {} must be at least 1 sat/vB",
                file.fee_rate_floor
            ));
        }
        if file.fee_rate_floor > file.fee_rate_cap {
            bad.push(format!(
                "policy.fee_rate_cap: {} is below fee_rate_floor {}",
                file.fee_rate_cap, file.fee_rate_floor
            ));
        }
        let floor = FeeRate::from_sat_per_vb(file.fee_rate_floor);
        if floor.is_none() {
            bad.push(format!(
                "policy.fee_rate_floor: {} sat/vB is too large",
                file.fee_rate_floor
            ));
        }
        let cap = FeeRate::from_sat_per_vb(file.fee_rate_cap);
        if cap.is_none() {
            bad.push(format!(
                "policy.fee_rate_cap: {} sat/vB is too large",
                file.fee_rate_cap
            ));
        }
        if file.fee_margin_percent > MAX_MARGIN_PERCENT {
            bad.push(format!(
                "policy.fee_margin_percent: {} is above {MAX_MARGIN_PERCENT}",
                file.fee_margin_percent
            ));
        }
        if let (Some(request), Some(daily)) = (file.max_request_sats, file.max_daily_outflow_sats) {
            if request > daily {
                bad.push(format!(
                    "policy.max_request_sats: {request} is above max_daily_outflow_sats {daily}"
                ));
            }
        }
        let allowlist = match &file.allowlist_file {
            None => {
                bad.push(
                    "policy.allowlist_file: missing (the alpha is closed: name the allowlist)"
                        .to_owned(),
                );
                None
            }
            Some(name) => match Allowlist::load(&base_dir.join(name), network) {
                Ok(a) => Some(a),
                Err(e) => {
                    bad.push(format!("policy.allowlist_file: {e}"));
                    None
                }
            },
        };
        match (allowlist, floor, cap) {
            (Some(allowlist), Some(fee_floor), Some(fee_cap)) if bad.is_empty() => Ok(Policy {
                allowlist,
                fee_floor,
                fee_cap,
                subsidy: Amount::from_sat(file.subsidy_sats),
                fee_margin_percent: file.fee_margin_percent,
                max_request: file.max_request_sats.map(Amount::from_sat),
                max_daily_outflow: file.max_daily_outflow_sats.map(Amount::from_sat),
            }),
            _ => Err(bad.join("; ")),
        }
    }

    /// The most fee a transaction of `vsize` may pay: `vsize × fee_cap`.
    pub fn max_fee(&self, vsize: u64) -> Amount {
        self.fee_cap.fee_vb(vsize).unwrap_or(Amount::MAX)
    }
}
