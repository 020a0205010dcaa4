//! Identities that keep data in complex form through a block, and Gauss's
//! 3-multiplication complex product; extraction by the run-time cost model
//! decides which forms to keep.

use egg::{Id, Rewrite};
use fairyc_ir::{DType, Dim, Graph, Op, RopeLayout};

use crate::cost::{CostModel, RuntimeCost};
use crate::egraph::{rule, saturate, IrEGraph, Limits, Match, Node, PassStats, Types};

/// Nodes of class `id` with op `pred`, with their children.
fn nodes_where<'a>(
    eg: &'a IrEGraph,
    id: Id,
    pred: impl Fn(&Op) -> bool + 'a,
) -> impl Iterator<Item = &'a Node> + 'a {
    eg[id].nodes.iter().filter(move |n| pred(&n.op))
}

fn even_last(eg: &IrEGraph, id: Id) -> bool {
    matches!(eg[id].data.ty.shape.last(), Some(Dim::Fixed(n)) if n % 2 == 0)
}

/// `unpack(pack(x)) = x` with the same pairing (no padding involved),
/// `pack(unpack(z)) = z`, and `conj(conj(z)) = z`.
fn inverses() -> Vec<Rewrite<Node, Types>> {
    vec![
        rule(
            "unpack-pack",
            1,
            |eg, node| match node.op {
                Op::Unpack { block } => {
                    nodes_where(eg, node.children[0], |op| *op == Op::Pack { block })
                        .filter(|p| even_last(eg, p.children[0]))
                        .map(|p| Match::ids(vec![p.children[0]]))
                        .collect()
                }
                _ => vec![],
            },
            |_, m| m.ids[0],
        ),
        rule(
            "pack-unpack",
            1,
            |eg, node| match node.op {
                Op::Pack { block } => {
                    nodes_where(eg, node.children[0], |op| *op == Op::Unpack { block })
                        .map(|u| Match::ids(vec![u.children[0]]))
                        .collect()
                }
                _ => vec![],
            },
            |_, m| m.ids[0],
        ),
        rule(
            "conj-conj",
            1,
            |eg, node| match node.op {
                Op::Conj => nodes_where(eg, node.children[0], |op| *op == Op::Conj)
                    .map(|c| Match::ids(vec![c.children[0]]))
                    .collect(),
                _ => vec![],
            },
            |_, m| m.ids[0],
        ),
    ]
}

/// Whether a pairing block puts each RoPE pair into one complex number.
fn rope_pairs(block: usize, layout: RopeLayout, head_dim: usize) -> bool {
    match layout {
        RopeLayout::Interleaved => block == 2,
        RopeLayout::HalfSplit => block == head_dim,
    }
}

/// RoPE and attention in complex form: with the right pairing, real RoPE
/// on unpacked channels is multiplication by `e^{iθ}` on the complex
/// numbers, and real attention on unpacked heads is complex attention
/// with scores `Re(qᴴk)` (Fairy2i eq. 9).
fn complex_attention() -> Vec<Rewrite<Node, Types>> {
    vec![
        rule(
            "rope-complex",
            2,
            |eg, node| match node.op {
                Op::Rope {
                    layout, head_dim, ..
                } => {
                    let [x, pos] = node.children[..] else {
                        return vec![];
                    };
                    nodes_where(eg, x, |op| matches!(op, Op::Unpack { .. }))
                        .filter_map(|u| match u.op {
                            Op::Unpack { block } if rope_pairs(block, layout, head_dim) => {
                                Some(Match {
                                    ids: vec![u.children[0], pos],
                                    ops: vec![node.op.clone(), u.op.clone()],
                                })
                            }
                            _ => None,
                        })
                        .collect()
                }
                _ => vec![],
            },
            |eg, m| {
                let r = eg.add(Node::new(m.ops[0].clone(), vec![m.ids[0], m.ids[1]]));
                eg.add(Node::new(m.ops[1].clone(), vec![r]))
            },
        ),
        rule(
            "attention-complex",
            3,
            |eg, node| match node.op {
                Op::Attention {
                    heads, kv_heads, ..
                } => {
                    let [q, k, v] = node.children[..] else {
                        return vec![];
                    };
                    let unpacks = |id| -> Vec<(usize, Id)> {
                        nodes_where(eg, id, |op| matches!(op, Op::Unpack { .. }))
                            .filter_map(|n| match n.op {
                                Op::Unpack { block } => Some((block, n.children[0])),
                                _ => None,
                            })
                            .collect()
                    };
                    let head_width = |id: Id, h: usize| match eg[id].data.ty.shape.last() {
                        Some(Dim::Fixed(n)) => n / h,
                        _ => 0,
                    };
                    let (dq, dv) = (head_width(q, heads), head_width(v, kv_heads));
                    let mut out = vec![];
                    for (bq, zq) in unpacks(q) {
                        for (bk, zk) in unpacks(k) {
                            for (bv, zv) in unpacks(v) {
                                // Each head must own whole complex numbers.
                                let aligned =
                                    bq > 0 && bq == bk && bk == bv && dq % bq == 0 && dv % bq == 0;
                                if aligned {
                                    out.push(Match {
                                        ids: vec![zq, zk, zv],
                                        ops: vec![node.op.clone(), Op::Unpack { block: bq }],
                                    });
                                }
                            }
                        }
                    }
                    out
                }
                _ => vec![],
            },
            |eg, m| {
                let a = eg.add(Node::new(m.ops[0].clone(), m.ids.clone()));
                eg.add(Node::new(m.ops[1].clone(), vec![a]))
            },
        ),
    ]
}

/// Gauss's product: for `x = a + ib`, `w = c + id`,
/// `Re = ac - bd`, `Im = (a + b)(c + d) - ac - bd`: three real products
/// instead of four. It applies to `linear` with a weight expression (whose
/// parts are derived once) and to `linear_weight_grad` (the weight
/// gradient `Σ dyᵀ x`, bilinear too) in training graphs.
fn gauss() -> Rewrite<Node, Types> {
    rule(
        "gauss",
        2,
        |eg, node| {
            let [x, w] = node.children[..] else {
                return vec![];
            };
            let complex = |c: Id| eg[c].data.ty.dtype == DType::C64;
            let applies = match node.op {
                Op::Linear => complex(x) && eg[w].data.constant && !eg[x].data.constant,
                Op::LinearWeightGrad => complex(x) && complex(w),
                _ => false,
            };
            if applies {
                vec![Match {
                    ids: vec![x, w],
                    ops: vec![node.op.clone()],
                }]
            } else {
                vec![]
            }
        },
        |eg, m| {
            let (x, w) = (m.ids[0], m.ids[1]);
            let product = m.ops[0].clone();
            let parts = |eg: &mut IrEGraph, z: Id| {
                let m = match eg[z].data.ty.shape.last() {
                    Some(Dim::Fixed(m)) => *m,
                    _ => unreachable!("complex tensors have a fixed last dimension"),
                };
                let axis = eg[z].data.ty.shape.rank() - 1;
                let flat = eg.add(Node::new(Op::Unpack { block: 0 }, vec![z]));
                let re = eg.add(Node::new(
                    Op::Slice {
                        axis,
                        start: 0,
                        end: m,
                    },
                    vec![flat],
                ));
                let im = eg.add(Node::new(
                    Op::Slice {
                        axis,
                        start: m,
                        end: 2 * m,
                    },
                    vec![flat],
                ));
                (re, im)
            };
            let (a, b) = parts(eg, x);
            let (c, d) = parts(eg, w);
            let ab = eg.add(Node::new(Op::Add, vec![a, b]));
            let cd = eg.add(Node::new(Op::Add, vec![c, d]));
            let ac = eg.add(Node::new(product.clone(), vec![a, c]));
            let bd = eg.add(Node::new(product.clone(), vec![b, d]));
            let abcd = eg.add(Node::new(product, vec![ab, cd]));
            let re = eg.add(Node::new(Op::Sub, vec![ac, bd]));
            let t = eg.add(Node::new(Op::Sub, vec![abcd, ac]));
            let im = eg.add(Node::new(Op::Sub, vec![t, bd]));
            let axis = eg[re].data.ty.shape.rank() - 1;
            let cat = eg.add(Node::new(Op::Concat { axis }, vec![re, im]));
            eg.add(Node::new(Op::Pack { block: 0 }, vec![cat]))
        },
    )
}

/// Which rewrites `simplify` may use.
#[derive(Clone, Debug)]
pub struct SimplifyOptions {
    /// The identities (inverse pairs, complex RoPE and attention). Training
    /// graphs are built from simplified forward graphs and leave them out:
    /// on backward passes the inverse pairs close cycles that make
    /// extraction fall back to whole-subtree costs, which is slow.
    pub identities: bool,
    /// Offer Gauss's product; the cost model decides where it pays.
    pub gauss: bool,
    pub cost: CostModel,
}

impl Default for SimplifyOptions {
    fn default() -> SimplifyOptions {
        SimplifyOptions {
            identities: true,
            gauss: true,
            cost: CostModel::default(),
        }
    }
}

/// Saturates with the identities (and Gauss's product) and extracts the
/// cheapest program.
pub fn simplify(graph: &Graph, options: SimplifyOptions, limits: Limits) -> (Graph, PassStats) {
    let mut rules = Vec::new();
    if options.identities {
        rules.extend(inverses());
        rules.extend(complex_attention());
    }
    if options.gauss {
        rules.push(gauss());
    }
    let sat = saturate("simplify", graph, &rules, limits);
    let cost = |anchors| RuntimeCost {
        egraph: &sat.egraph,
        model: options.cost.clone(),
        anchors,
    };
    (sat.extract(cost, graph), sat.stats.clone())
}
