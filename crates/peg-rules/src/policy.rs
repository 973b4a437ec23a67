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
        let _ = (file, base_dir, network);
        todo!("H1")
    }

    /// The most fee a transaction of `vsize` may pay: `vsize × fee_cap`.
    pub fn max_fee(&self, vsize: u64) -> Amount {
        let _ = vsize;
        todo!("H1")
    }
}
