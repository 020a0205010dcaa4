//! The IR's ops as an `egg` language, a graph loaded into an e-graph and
//! saturated ([`crate::extract`] takes the cheapest program back out), and
//! rewrite rules written as Rust functions.
//!
//! An e-node is an IR op (attributes included) over e-class children. The
//! analysis keeps each class's tensor type, inferred with the IR's own type
//! rules, and whether the class depends on weights alone (a weight
//! expression, evaluated once at load and free at run time).

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egg::{
    Analysis, DidMerge, EGraph, Id, Language, Rewrite, Runner, SearchMatches, Searcher, Subst, Var,
};
use fairyc_ir::infer::infer_type;

use fairyc_ir::{Graph, Op, TensorType};

/// One e-node: an IR op applied to e-classes.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// The declared type of `input` and `weight` leaves and of `zeros`.
    pub leaf_type: Option<TensorType>,
    pub children: Vec<Id>,
    /// The op with its attributes and leaf type, as text: what makes two
    /// nodes the same operation (f32 attributes compare by their text).
    key: String,
}

impl Node {
    pub fn new(op: Op, children: Vec<Id>) -> Node {
        Node::with_type(op, None, children)
    }

    fn with_type(op: Op, leaf_type: Option<TensorType>, children: Vec<Id>) -> Node {
        let attrs: Vec<String> = op.attrs().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = format!(
            "{} {:?} {} {}",
            op.mnemonic(),
            op.symbol(),
            attrs.join(","),
            leaf_type
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default()
        );
        Node {
            op,
            leaf_type,
            children,
            key,
        }
    }
}

impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        self.key == other.key && self.children == other.children
    }
}

impl Eq for Node {}

impl Hash for Node {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.children.hash(state);
    }
}

impl PartialOrd for Node {
    fn partial_cmp(&self, other: &Node) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Node {
    fn cmp(&self, other: &Node) -> std::cmp::Ordering {
        (&self.key, &self.children).cmp(&(&other.key, &other.children))
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op.mnemonic())
    }
}

impl Language for Node {
    type Discriminant = String;

    fn discriminant(&self) -> String {
        self.key.clone()
    }

    fn matches(&self, other: &Node) -> bool {
        self.key == other.key && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

/// What the analysis knows of an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassInfo {
    pub ty: TensorType,
    /// Depends on weights alone.
    pub constant: bool,
}

/// Types every class by the IR's type rules.
#[derive(Default)]
pub struct Types;

impl Analysis<Node> for Types {
    type Data = ClassInfo;

    fn make(egraph: &mut EGraph<Node, Types>, enode: &Node, _id: Id) -> ClassInfo {
        if let Some(ty) = &enode.leaf_type {
            return ClassInfo {
                ty: ty.clone(),
                constant: matches!(enode.op, Op::Weight { .. }),
            };
        }
        let types: Vec<&TensorType> = enode.children.iter().map(|c| &egraph[*c].data.ty).collect();
        // Rules only build well-typed nodes; a failure here is a bug in a rule.
        let ty = infer_type(&enode.op, &types).unwrap_or_else(|e| {
            panic!("rewrite built an ill-typed `{}`: {e}", enode.op.mnemonic())
        });
        ClassInfo {
            ty,
            constant: enode.children.iter().all(|c| egraph[*c].data.constant),
        }
    }

    fn merge(&mut self, a: &mut ClassInfo, b: ClassInfo) -> DidMerge {
        assert_eq!(a.ty, b.ty, "rewrite merged classes of different types");
        let constant = a.constant || b.constant;
        let changed = constant != a.constant;
        a.constant = constant;
        DidMerge(changed, constant != b.constant)
    }
}

pub type IrEGraph = EGraph<Node, Types>;

/// Adds a graph's nodes; returns the class of every node, in order.
pub fn from_graph(graph: &Graph, egraph: &mut IrEGraph) -> Vec<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let children = node.operands.iter().map(|v| ids[v.0]).collect();
        let leaf_type = match node.op {
            ref op if op.has_declared_type() => Some(node.ty.clone()),
            _ => None,
        };
        ids.push(egraph.add(Node::with_type(node.op.clone(), leaf_type, children)));
    }
    ids
}

/// One match of a rule: the classes its right-hand side is built from,
/// and any ops (with their attributes) it copies from the left-hand side.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub ids: Vec<Id>,
    pub ops: Vec<Op>,
}

impl Match {
    pub fn ids(ids: Vec<Id>) -> Match {
        Match { ids, ops: vec![] }
    }
}

/// Finds a rule's matches rooted at one e-node.
pub type FindFn = dyn Fn(&IrEGraph, &Node) -> Vec<Match> + Send + Sync;
/// Builds a rule's right-hand side for one match.
pub type BuildFn = dyn Fn(&mut IrEGraph, &Match) -> Id + Send + Sync;

/// A rewrite whose left side is a Rust predicate over e-nodes and whose
/// right side is Rust code that adds nodes: IR ops carry attributes that
/// rules must read and compare, which egg's string patterns cannot express.
struct RustRule {
    arity: usize,
    find: Arc<FindFn>,
    build: Arc<BuildFn>,
}

fn var(i: usize) -> Var {
    format!("?{i}").parse().expect("valid var")
}

impl Searcher<Node, Types> for RustRule {
    fn search_eclass_with_limit(
        &self,
        egraph: &IrEGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, Node>> {
        let mut substs = Vec::new();
        for node in &egraph[eclass].nodes {
            for m in (self.find)(egraph, node) {
                let mut s = Subst::with_capacity(self.arity);
                for (i, id) in m.ids.into_iter().enumerate() {
                    s.insert(var(i), id);
                }
                substs.push(s);
                if substs.len() >= limit {
                    break;
                }
            }
        }
        (!substs.is_empty()).then_some(SearchMatches {
            eclass,
            substs,
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        (0..self.arity).map(var).collect()
    }
}

impl egg::Applier<Node, Types> for RustRule {
    fn apply_one(
        &self,
        egraph: &mut IrEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&egg::PatternAst<Node>>,
        _rule: egg::Symbol,
    ) -> Vec<Id> {
        let bound: Vec<Id> = (0..self.arity)
            .map(|i| egraph.find(subst[var(i)]))
            .collect();
        // Find the match again to recover the ops it carries; classes merged
        // since the search are compared by their canonical ids.
        let eclass = egraph.find(eclass);
        let found = egraph[eclass].nodes.iter().find_map(|n| {
            (self.find)(egraph, n).into_iter().find(|m| {
                m.ids
                    .iter()
                    .map(|&id| egraph.find(id))
                    .eq(bound.iter().copied())
            })
        });
        let Some(m) = found else { return vec![] };
        let new = (self.build)(egraph, &m);
        if egraph.union(eclass, new) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// A named rewrite whose matches bind `arity` classes.
pub fn rule(
    name: &str,
    arity: usize,
    find: impl Fn(&IrEGraph, &Node) -> Vec<Match> + Send + Sync + 'static,
    build: impl Fn(&mut IrEGraph, &Match) -> Id + Send + Sync + 'static,
) -> Rewrite<Node, Types> {
    let find: Arc<FindFn> = Arc::new(find);
    let build: Arc<BuildFn> = Arc::new(build);
    let searcher = RustRule {
        arity,
        find: find.clone(),
        build: build.clone(),
    };
    Rewrite::new(name, searcher, RustRule { arity, find, build }).expect("rule vars are bound")
}

/// Bounds on one saturation run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            iterations: 16,
            nodes: 200_000,
            time: Duration::from_secs(20),
        }
    }
}

/// What one e-graph pass did.
#[derive(Clone, Debug)]
pub struct PassStats {
    pub name: String,
    pub iterations: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub stop_reason: String,
    pub elapsed: Duration,
}

impl fmt::Display for PassStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {:>8.1} ms  {:>3} iterations  {:>7} e-nodes  {:>7} e-classes  ({})",
            self.name,
            self.elapsed.as_secs_f64() * 1e3,
            self.iterations,
            self.egraph_nodes,
            self.egraph_classes,
            self.stop_reason
        )
    }
}

/// A graph loaded into an e-graph and saturated.
pub struct Saturated {
    pub egraph: IrEGraph,
    /// The classes of the graph's outputs.
    pub roots: Vec<Id>,
    /// Classes every extracted program computes: the input program's
    /// leaves, embeddings, norms and real sums (the residual stream), and
    /// in training graphs the adjoints' results, which no rule rewrites
    /// away. Costs stop there (see `cost`), which keeps the sets a cost
    /// carries small.
    pub anchors: HashSet<Id>,
    pub stats: PassStats,
}

/// Loads `graph` into an e-graph and saturates it with `rules` within
/// `limits`; extract the result with [`Saturated::extract`].
pub fn saturate(
    name: &str,
    graph: &Graph,
    rules: &[Rewrite<Node, Types>],
    limits: Limits,
) -> Saturated {
    let start = Instant::now();
    let mut egraph = IrEGraph::default();
    let ids = from_graph(graph, &mut egraph);
    let roots: Vec<Id> = graph.outputs.iter().map(|v| ids[v.0]).collect();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(limits.time)
        .run(rules);
    let stats = PassStats {
        name: name.to_string(),
        iterations: runner.iterations.len(),
        egraph_nodes: runner.egraph.total_number_of_nodes(),
        egraph_classes: runner.egraph.number_of_classes(),
        stop_reason: runner
            .stop_reason
            .as_ref()
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|| "done".into()),
        elapsed: start.elapsed(),
    };
    let anchors = graph
        .nodes
        .iter()
        .zip(&ids)
        .filter(|(n, _)| match n.op {
            Op::Input { .. }
            | Op::Weight { .. }
            | Op::Embed
            | Op::RmsNorm { .. }
            | Op::CrossEntropyGrad
            | Op::KlDivGrad
            | Op::RmsNormGrad { .. }
            | Op::AttentionGrad { .. }
            | Op::SoftmaxGrad
            | Op::SiluGrad
            | Op::Crelu2Grad
            | Op::EmbedGrad { .. }
            | Op::LinearWeightGrad
            | Op::WidelyLinearGrad { .. }
            | Op::QuantizeGrad { .. } => true,
            Op::Add => n.ty.dtype != fairyc_ir::DType::C64,
            _ => false,
        })
        .map(|(_, &id)| runner.egraph.find(id))
        .collect();
    Saturated {
        egraph: runner.egraph,
        roots,
        anchors,
        stats,
    }
}
