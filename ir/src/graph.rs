//! Graphs in SSA form: each node defines one value, operands refer to
//! earlier nodes, so the node order is a topological order.

use std::collections::BTreeMap;
use std::fmt;

use crate::infer::infer_type;
use crate::op::Op;
use crate::types::TensorType;

/// The value a node defines; its index in `Graph::nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One operation applied to earlier values, with the type of its result.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub operands: Vec<ValueId>,
    pub ty: TensorType,
}

/// A tensor program: nodes in topological order and the values it returns.
/// `meta` holds free-form facts about where the graph came from (source
/// file, architecture), printed with the graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub meta: BTreeMap<String, String>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<ValueId>,
}

/// The meta key of the model's context length in tokens, where its source
/// says.
pub const CONTEXT_LENGTH_META: &str = "context_length";

impl Graph {
    /// The model's context length ([`CONTEXT_LENGTH_META`]), if it says.
    pub fn context_length(&self) -> Option<usize> {
        self.meta.get(CONTEXT_LENGTH_META)?.parse().ok()
    }

    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.nodes[id.0].ty
    }

    pub fn ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.nodes.len()).map(ValueId)
    }

    /// Nodes that read graph inputs, in order.
    pub fn inputs(&self) -> impl Iterator<Item = (ValueId, &str, &TensorType)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name } => Some((ValueId(i), name.as_str(), &n.ty)),
                _ => None,
            })
    }

    /// Nodes that reference the weight store, in order.
    pub fn weights(&self) -> impl Iterator<Item = (ValueId, &str, &TensorType)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Weight { name } => Some((ValueId(i), name.as_str(), &n.ty)),
                _ => None,
            })
    }

    /// For each value, the index of the last node that reads it (outputs
    /// count as read at the end), so executors can free values early.
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.operands {
                last[v.0] = i;
            }
        }
        for v in &self.outputs {
            last[v.0] = usize::MAX;
        }
        last
    }

    /// For each value, whether it is a constant of the weights: a weight,
    /// or a node of such constants alone, which a backend may compute once
    /// at load. Inputs are not, and neither is an op that runs each time
    /// ([`Op::runs_each_time`]: what another rank sends is not known at
    /// load; zeros are cheaper to write each run than to hold).
    pub fn weight_constants(&self) -> Vec<bool> {
        let mut constant = vec![false; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            constant[i] = match node.op {
                Op::Weight { .. } => true,
                Op::Input { .. } => false,
                ref op if op.runs_each_time() => false,
                _ => node.operands.iter().all(|v| constant[v.0]),
            };
        }
        constant
    }
}

/// An error found while building a graph.
#[derive(Debug, thiserror::Error)]
#[error("cannot add `{op}` to graph @{graph}: {message}")]
pub struct BuildError {
    pub graph: String,
    pub op: &'static str,
    pub message: String,
}

/// Builds a graph node by node, typing each node by the rules of `infer`.
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            graph: Graph {
                name: name.into(),
                ..Graph::default()
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.graph.name
    }

    pub fn meta(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.graph.meta.insert(key.into(), value.into());
    }

    pub fn input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        self.leaf(Op::Input { name: name.into() }, ty)
    }

    pub fn weight(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        self.leaf(Op::Weight { name: name.into() }, ty)
    }

    /// A `zeros` node of the declared type `ty` (computed, not bound).
    pub fn zeros(&mut self, ty: TensorType) -> ValueId {
        self.leaf(Op::Zeros, ty)
    }

    /// A copy of `node` (of another graph) on `operands`, the new values of
    /// its operands: a node of a declared type ([`Op::has_declared_type`])
    /// with that type, any other applied to `operands`.
    pub fn copy(&mut self, node: &Node, operands: &[ValueId]) -> Result<ValueId, BuildError> {
        if node.op.has_declared_type() {
            Ok(self.leaf(node.op.clone(), node.ty.clone()))
        } else {
            self.push(node.op.clone(), operands)
        }
    }

    fn leaf(&mut self, op: Op, ty: TensorType) -> ValueId {
        self.graph.nodes.push(Node {
            op,
            operands: Vec::new(),
            ty,
        });
        ValueId(self.graph.nodes.len() - 1)
    }

    /// Appends `op` applied to `operands`, with its inferred type.
    pub fn push(&mut self, op: Op, operands: &[ValueId]) -> Result<ValueId, BuildError> {
        let err = |message: String| BuildError {
            graph: self.graph.name.clone(),
            op: op.mnemonic(),
            message,
        };
        let mut types = Vec::with_capacity(operands.len());
        for v in operands {
            match self.graph.nodes.get(v.0) {
                Some(n) => types.push(&n.ty),
                None => return Err(err(format!("operand {v} is not defined"))),
            }
        }
        let ty = infer_type(&op, &types).map_err(err)?;
        self.graph.nodes.push(Node {
            op,
            operands: operands.to_vec(),
            ty,
        });
        Ok(ValueId(self.graph.nodes.len() - 1))
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        self.graph.ty(id)
    }

    /// An empty graph of `graph`'s name and meta, for a pass that rebuilds
    /// it node by node.
    pub fn like(graph: &Graph) -> GraphBuilder {
        let mut b = GraphBuilder::new(graph.name.clone());
        for (k, v) in &graph.meta {
            b.meta(k.clone(), v.clone());
        }
        b
    }

    /// Copies `graph`'s nodes into this graph in order and returns each
    /// one's new value. `substitute` sees each node (its id in `graph`, the
    /// node, and the new values of the nodes before it) and may stand a
    /// value of its own for it; otherwise the node is copied
    /// ([`GraphBuilder::copy`]). Composing graphs (a
    /// student and its teacher, a gradient graph and its optimizer) and
    /// rewriting one node by node are both this.
    pub fn inline<E: From<BuildError>>(
        &mut self,
        graph: &Graph,
        mut substitute: impl FnMut(
            &mut GraphBuilder,
            ValueId,
            &Node,
            &[ValueId],
        ) -> Result<Option<ValueId>, E>,
    ) -> Result<Vec<ValueId>, E> {
        let mut map: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
        for (i, node) in graph.nodes.iter().enumerate() {
            let value = match substitute(self, ValueId(i), node, &map)? {
                Some(v) => v,
                None => {
                    let operands: Vec<ValueId> = node.operands.iter().map(|v| map[v.0]).collect();
                    self.copy(node, &operands)?
                }
            };
            map.push(value);
        }
        Ok(map)
    }

    pub fn finish(mut self, outputs: &[ValueId]) -> Graph {
        self.graph.outputs = outputs.to_vec();
        self.graph
    }
}
