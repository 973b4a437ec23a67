//! Where peg operations come from: the stacks-node's `/v2/burn_ops`, or
//! Bitcoin blocks parsed by the coordinator.

use bitcoin::Network;
use bitcoin_node_client::BitcoinNode;
use log::warn;
use peg_ops::{BurnHeight, PegOp};
use stacks_node_client::StacksNode;

/// Why the op source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later may help.
    pub transient: bool,
}

/// A source of confirmed peg operations, block by block.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
pub trait OpSource {
    /// Returns the height of the Bitcoin chain tip the source has processed.
    fn tip_height(&self) -> Result<BurnHeight, SourceError>;

    /// Returns the peg-ins and peg-out requests in the block at `height`,
    /// ordered by position in the block, or `None` if the source has not
    /// processed that height yet.
    fn ops_at(&self, height: BurnHeight) -> Result<Option<Vec<PegOp>>, SourceError>;
}

impl<T: OpSource + ?Sized> OpSource for Box<T> {
    fn tip_height(&self) -> Result<BurnHeight, SourceError> {
        (**self).tip_height()
    }

    fn ops_at(&self, height: BurnHeight) -> Result<Option<Vec<PegOp>>, SourceError> {
        (**self).ops_at(height)
    }
}

/// An op source whose errors name the node's URL (a scan that fails says
/// where it looked).
#[derive(Debug)]
pub struct NamedSource<S> {
    inner: S,
    url: String,
}

impl<S: OpSource> NamedSource<S> {
    /// Wraps `inner`, which reads from the node at `url`.
    pub fn new(inner: S, url: &str) -> Self {
        NamedSource {
            inner,
            url: url.to_owned(),
        }
    }

    fn name(&self, mut e: SourceError) -> SourceError {
        if !e.message.contains(&self.url) {
            e.message = format!("{} (node at {})", e.message, self.url);
        }
        e
    }
}

impl<S: OpSource> OpSource for NamedSource<S> {
    fn tip_height(&self) -> Result<BurnHeight, SourceError> {
        self.inner.tip_height().map_err(|e| self.name(e))
    }

    fn ops_at(&self, height: BurnHeight) -> Result<Option<Vec<PegOp>>, SourceError> {
        self.inner.ops_at(height).map_err(|e| self.name(e))
    }
}

/// Reads ops from a stacks-node's `/v2/burn_ops` endpoint.
#[derive(Debug)]
pub struct StacksNodeSource<S> {
    node: S,
}

impl<S: StacksNode> StacksNodeSource<S> {
    /// Wraps a node client.
    pub fn new(node: S) -> Self {
        StacksNodeSource { node }
    }
}

fn source_error(e: stacks_node_client::Error) -> SourceError {
    SourceError {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

impl<S: StacksNode> OpSource for StacksNodeSource<S> {
    fn tip_height(&self) -> Result<BurnHeight, SourceError> {
        Ok(BurnHeight(
            self.node
                .get_info()
                .map_err(source_error)?
                .burn_block_height,
        ))
    }

    fn ops_at(&self, height: BurnHeight) -> Result<Option<Vec<PegOp>>, SourceError> {
        let Some(ins) = self.node.get_peg_in_ops(height).map_err(source_error)? else {
            return Ok(None);
        };
        let Some(outs) = self
            .node
            .get_peg_out_request_ops(height)
            .map_err(source_error)?
        else {
            return Ok(None);
        };
        let mut ops: Vec<(u32, PegOp)> = ins
            .into_iter()
            .map(|op| (op.vtxindex, PegOp::PegIn(op)))
            .chain(
                outs.into_iter()
                    .map(|op| (op.vtxindex, PegOp::PegOutRequest(op))),
            )
            .collect();
        ops.sort_by_key(|(i, _)| *i);
        Ok(Some(ops.into_iter().map(|(_, op)| op).collect()))
    }
}

/// Reads ops straight from Bitcoin blocks: the stacks-node's `/v2/burn_ops`
/// never shipped in a tagged release.
#[derive(Debug)]
pub struct BitcoinBlockSource<B> {
    node: B,
    magic: [u8; 2],
    network: Network,
}

impl<B: BitcoinNode> BitcoinBlockSource<B> {
    /// Reads blocks from `node`, taking ops under `magic` on `network`.
    pub fn new(node: B, magic: [u8; 2], network: Network) -> Self {
        BitcoinBlockSource {
            node,
            magic,
            network,
        }
    }
}

fn btc_error(e: bitcoin_node_client::Error) -> SourceError {
    SourceError {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

impl<B: BitcoinNode> OpSource for BitcoinBlockSource<B> {
    fn tip_height(&self) -> Result<BurnHeight, SourceError> {
        Ok(BurnHeight(self.node.get_block_count().map_err(btc_error)?))
    }

    fn ops_at(&self, height: BurnHeight) -> Result<Option<Vec<PegOp>>, SourceError> {
        if height.0 > self.node.get_block_count().map_err(btc_error)? {
            return Ok(None);
        }
        let hash = self.node.get_block_hash(height.0).map_err(btc_error)?;
        let block = self.node.get_block(&hash).map_err(btc_error)?;
        let (ops, malformed) = peg_ops::wire::parse_block(&block, height, self.magic, self.network);
        for (txid, e) in malformed {
            warn!("height {height}: transaction {txid} carries our magic but is no valid op: {e}");
        }
        Ok(Some(ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacks_node_client::{MockStacksNode, NodeInfo};

    #[test]
    fn a_height_the_node_lacks_is_not_there_yet() {
        let mut node = MockStacksNode::new();
        node.expect_get_peg_in_ops().returning(|_| Ok(None));
        node.expect_get_peg_out_request_ops().never();
        let src = StacksNodeSource::new(node);
        assert_eq!(src.ops_at(BurnHeight(7)).unwrap(), None);
    }

    #[test]
    fn blocks_are_parsed_for_ops_and_future_heights_wait() {
        use bitcoin::hashes::Hash;
        use bitcoin::{Amount, Block, TxIn};
        use bitcoin_node_client::MockBitcoinNode;
        use peg_ops::wire;
        use stacks_wire::PrincipalData;

        let who: PrincipalData = "ST2J6ZY48GV1EZ5V2V5RB9MP66SW86PYKKQYAC0RQ".parse().unwrap();
        let peg: bitcoin::Address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse::<bitcoin::Address<_>>()
            .unwrap()
            .assume_checked();
        let peg_in = wire::peg_in_transaction(
            vec![TxIn::default()],
            wire::peg_in_op_return(*b"id", &who, b"").unwrap(),
            &peg,
            Amount::from_sat(777),
            None,
        );
        let mut block: Block = bitcoin::blockdata::constants::genesis_block(Network::Regtest);
        block.txdata.push(peg_in.clone());
        let hash = block.block_hash();
        let mut node = MockBitcoinNode::new();
        node.expect_get_block_count().returning(|| Ok(5));
        node.expect_get_block_hash()
            .withf(|h| *h == 5)
            .returning(move |_| Ok(hash));
        node.expect_get_block()
            .returning(move |_| Ok(block.clone()));
        let src = BitcoinBlockSource::new(node, *b"id", Network::Regtest);
        assert_eq!(src.tip_height().unwrap(), BurnHeight(5));
        assert_eq!(src.ops_at(BurnHeight(6)).unwrap(), None);
        let ops = src.ops_at(BurnHeight(5)).unwrap().unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].txid(), peg_in.compute_txid());
        assert_eq!(ops[0].block_height(), BurnHeight(5));
        assert_eq!(ops[0].burn_header_hash(), hash);
        assert_eq!(ops[0].amount(), Amount::from_sat(777));
        let _ = bitcoin::Txid::all_zeros();
    }

    #[test]
    fn tip_and_errors_pass_through() {
        let mut node = MockStacksNode::new();
        node.expect_get_info().times(1).returning(|| {
            Ok(NodeInfo {
                burn_block_height: 42,
                stacks_tip_height: 7,
                stacks_tip: [0; 32],
            })
        });
        node.expect_get_info()
            .returning(|| Err(stacks_node_client::Error::Timeout("test".into())));
        let src = StacksNodeSource::new(node);
        assert_eq!(src.tip_height().unwrap(), BurnHeight(42));
        let e = src.tip_height().unwrap_err();
        assert!(e.transient);
    }
}
