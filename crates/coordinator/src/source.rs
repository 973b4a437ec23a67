//! Where peg operations come from: the stacks-node's `/v2/burn_ops`, or
//! Bitcoin blocks parsed by the coordinator.

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
            .returning(|| Err(stacks_node_client::Error::Timeout));
        let src = StacksNodeSource::new(node);
        assert_eq!(src.tip_height().unwrap(), BurnHeight(42));
        let e = src.tip_height().unwrap_err();
        assert!(e.transient);
    }
}
