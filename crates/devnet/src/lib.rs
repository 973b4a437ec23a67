//! Emulated nodes for a local peg.
//!
//! [`stacks::StacksEmulator`] serves the stacks-node RPC the coordinator
//! uses, with the node's shapes and checks, and runs [`model::SbtcModel`], a
//! model of `contracts/sbtc-alpha.clar`. Nothing here is for real money.

pub mod bitcoin;
pub mod bitcoind;
pub mod latency;
pub mod model;
pub mod peg;
pub mod proxy;
pub mod real_peg;
mod server;
pub mod stacks;
pub mod stacks_node;
pub mod user;

pub use bitcoin::{BitcoinEmulator, BitcoinState};
pub use bitcoind::RealBitcoind;
pub use latency::LatencyLink;
pub use model::SbtcModel;
pub use peg::{Peg, PegOptions};
pub use proxy::{Lie, Proxy};
pub use real_peg::{RealPeg, RealPegOptions, RealPegStart};
pub use server::{Emulator, Fault};
pub use stacks::{StacksEmulator, StacksState};
pub use user::User;
