//! What the coordinator asks of a Bitcoin node, as the [`BitcoinNode`] trait.
//!
//! Amounts are [`bitcoin::Amount`] and fee rates [`bitcoin::FeeRate`]: nothing
//! here does arithmetic on floating-point BTC. With the `mock` feature the
//! crate exports `MockBitcoinNode`, a mockall double for other crates' tests.

pub use bitcoin;
pub use rpc::{Auth, UreqBitcoinNode};

mod rpc;

use bitcoin::{Amount, Block, BlockHash, FeeRate, OutPoint, Transaction, TxOut, Txid};

/// What went wrong talking to the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The node could not be reached, or the connection broke.
    #[error("bitcoin node unreachable: {0}")]
    Transport(String),
    /// The node did not answer in time.
    #[error("bitcoin node timed out: {0}")]
    Timeout(String),
    /// The node answered with an HTTP status and no RPC error object.
    #[error("bitcoin node answered http {status}")]
    Http {
        /// The status code.
        status: u16,
    },
    /// The node answered with a JSON-RPC error.
    #[error("bitcoin node rpc error {code}: {message}")]
    Rpc {
        /// bitcoind's error code (for example -25, -26, -27).
        code: i64,
        /// bitcoind's message.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("bitcoin node answer could not be decoded: {0}")]
    Decode(String),
}

impl Error {
    /// Returns whether trying again later may succeed (unreachable node,
    /// timeout, 5xx, an undecodable answer from a node in a bad state).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) | Error::Timeout(_) | Error::Decode(_) => true,
            Error::Http { status } => *status >= 500 || *status == 429,
            // -28: still warming up; -9/-10: not connected / in initial download.
            Error::Rpc { code, .. } => matches!(code, -28 | -9 | -10),
        }
    }
}

/// A transaction as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxStatus {
    /// The transaction.
    pub tx: Transaction,
    /// Confirmations: 0 in the mempool, 1 in the tip block.
    pub confirmations: u32,
    /// The block holding it, if confirmed.
    pub block_hash: Option<BlockHash>,
}

/// An unspent output of the peg wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    /// Where it is.
    pub outpoint: OutPoint,
    /// Its value and script.
    pub txout: TxOut,
    /// Confirmations (0 for unconfirmed).
    pub confirmations: u32,
}

impl Utxo {
    /// Returns the output's value.
    pub fn amount(&self) -> Amount {
        self.txout.value
    }
}

/// The node's verdict on a transaction from `testmempoolaccept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MempoolAcceptance {
    /// It would be accepted.
    Allowed,
    /// It would be rejected, with bitcoind's reason.
    Rejected(String),
}

/// What the coordinator asks of a Bitcoin node.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait BitcoinNode {
    /// Returns the height of the best chain's tip (`getblockcount`).
    fn get_block_count(&self) -> Result<u64, Error>;

    /// Returns the hash of the best-chain block at `height` (`getblockhash`).
    fn get_block_hash(&self, height: u64) -> Result<BlockHash, Error>;

    /// Returns the hash of the best chain's tip (`getbestblockhash`): one
    /// call that tells whether the chain moved since a tip seen before.
    ///
    /// The default asks [`BitcoinNode::get_block_count`], then
    /// [`BitcoinNode::get_block_hash`] of that height (a block arriving in
    /// between makes it the new tip's ancestor, as if it came just after).
    fn get_best_block_hash(&self) -> Result<BlockHash, Error> {
        let height = self.get_block_count()?;
        self.get_block_hash(height)
    }

    /// Returns a block with its transactions (`getblock HASH 0`).
    fn get_block(&self, hash: &BlockHash) -> Result<Block, Error>;

    /// Returns a transaction and its confirmations, or `None` if the node
    /// does not know it (`getrawtransaction TXID 1`). For a confirmed
    /// transaction Bitcoin Core needs `-txindex=1` (without it, it answers
    /// "not found" here: use [`BitcoinNode::get_raw_transaction_in_block`]).
    fn get_raw_transaction(&self, txid: &Txid) -> Result<Option<TxStatus>, Error>;

    /// Returns a transaction looked up in the block `block_hash`, or `None`
    /// if that block does not hold it or the node does not know the block
    /// (`getrawtransaction TXID 1 BLOCKHASH`; works without `-txindex`).
    /// When that block is no longer on the best chain, the status has 0
    /// confirmations and no block hash.
    ///
    /// The default asks [`BitcoinNode::get_raw_transaction`] and keeps the
    /// answer only if the transaction is in `block_hash`.
    fn get_raw_transaction_in_block(
        &self,
        txid: &Txid,
        block_hash: &BlockHash,
    ) -> Result<Option<TxStatus>, Error> {
        Ok(self
            .get_raw_transaction(txid)?
            .filter(|s| s.block_hash.as_ref() == Some(block_hash)))
    }

    /// Broadcasts a transaction (`sendrawtransaction`). A transaction already
    /// in the mempool, or confirmed with an output still unspent (-27), is a
    /// success with the same txid. Core answers a confirmed transaction
    /// whose outputs are all spent like a double spend (-25
    /// `bad-txns-inputs-missingorspent`): [`BitcoinNode::get_raw_transaction`]
    /// tells the two apart.
    fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, Error>;

    /// Asks whether the mempool would accept a transaction (`testmempoolaccept`).
    fn test_mempool_accept(&self, tx: &Transaction) -> Result<MempoolAcceptance, Error>;

    /// Returns the fee rate for confirmation within `target_blocks`, or `None`
    /// when the node has no estimate (`estimatesmartfee`).
    fn estimate_smart_fee(&self, target_blocks: u16) -> Result<Option<FeeRate>, Error>;

    /// Returns the unspent outputs paying `script_pubkey` (the peg wallet).
    fn list_unspent(&self, script_pubkey: &bitcoin::Script) -> Result<Vec<Utxo>, Error>;

    /// Returns an unspent output (`gettxout TXID N include_mempool`), or
    /// `None` when it is spent or never existed. With `include_mempool`, an
    /// output spent by a mempool transaction is spent, and a mempool
    /// transaction's output is unspent with 0 confirmations.
    fn get_tx_out(
        &self,
        outpoint: &bitcoin::OutPoint,
        include_mempool: bool,
    ) -> Result<Option<Utxo>, Error>;
}
