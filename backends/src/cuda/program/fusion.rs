//! Elementwise fusion: a chain of elementwise nodes runs as one kernel.
//!
//! A node whose one kernel is a `Map` (an expression over suffix-broadcast
//! operands) is inlined into its readers when every reader is such a node
//! of the same shape and element type: the same flat index then addresses
//! the same elements of its operands, so substituting its expression is
//! exact. It is then never materialised, and its readers read its operands
//! instead. Decomposed composites (AdamW's update is about twenty
//! elementwise nodes per weight) go from one pass over memory per node to
//! one per chain. Values other kernels read (a product, a reduction), the
//! graph's outputs and weight expressions stay materialised.
//!
//! Likewise a `linear` whose weight is a 2-D `transpose` (the backward
//! pass's `dx = dy · w` reads `transpose(w)`) reads `w` and has cuBLAS
//! transpose it in the product; the transpose is then not computed.
//!
//! The widely-linear form pairs a real row into complex numbers (`pack`)
//! before each quantized layer and unpairs its output (`unpack`) after:
//! the int8 `quant_linear` reads the real row through the pack's table and
//! writes the real output through the unpack's, so neither is launched
//! ([`fold_pairings`]); on a decoding step they were a third of W2's
//! launches. The products that then read one row (q, k and v; gate and up)
//! are one launch ([`group_siblings`]).
//!
//! And Fairy2i's PhaseQuant with residual stages (eq. 13: `q₁ = Q(w)`,
//! `q₂ = Q(w − q₁)`, ..., summed), which the quantize pass writes as
//! `quantize`, `sub` and `add` nodes, runs as one step of `T + 1` passes
//! over `w` ([`fuse_phase_stages`]): one per stage for its sums, each
//! entry's residual rebuilt from the earlier stages' totals, then one for
//! the codes' sum. The residuals and partial sums are never materialised.
//! A training step's quantized weights go further ([`fuse_split_quantizers`]):
//! each master's widely-linear split, both halves' stages, their adjoints
//! and the real form they sum to are one such step on the master itself.

use fairyc_ir::{Arithmetic, DType, Granularity, Graph, Op, Scheme, ValueId, WlPart};

use super::{kernel_index, Kernel, QuantizedRows, Sibling, Step};
use crate::cuda::codegen::{quant_i8, quant_mma, Elem, Expr};
use crate::plan::MemoryPlan;

/// Operands an int8 product's prologue may read.
const MAX_PROLOGUE_OPERANDS: usize = 4;

/// Operands a fused kernel may read (each is a pointer and a length).
const MAX_OPERANDS: usize = 12;
/// Nodes a fused expression may hold (its code is straight-line).
const MAX_EXPR: usize = 256;

/// An elementwise node's expression over the values it reads (`leaves`).
#[derive(Clone)]
struct Built {
    expr: Expr,
    leaves: Vec<ValueId>,
    elems: Vec<Elem>,
}

fn size(expr: &Expr) -> usize {
    match expr {
        Expr::Operand(_) => 1,
        Expr::Apply(_, args) => 1 + args.iter().map(size).sum::<usize>(),
    }
}

/// `expr` with operand `k` read as `leaves[map[k]]`.
fn renumber(expr: &Expr, map: &[usize]) -> Expr {
    match expr {
        Expr::Operand(k) => Expr::Operand(map[*k]),
        Expr::Apply(op, args) => {
            Expr::Apply(op.clone(), args.iter().map(|a| renumber(a, map)).collect())
        }
    }
}

/// `expr` with each operand `k` replaced by `with[k]`.
fn substitute(expr: &Expr, with: &[Expr]) -> Expr {
    match expr {
        Expr::Operand(k) => with[*k].clone(),
        Expr::Apply(op, args) => Expr::Apply(
            op.clone(),
            args.iter().map(|a| substitute(a, with)).collect(),
        ),
    }
}

impl Built {
    /// Operand `v` (of element type `elem`), read as it is.
    fn leaf(&mut self, v: ValueId, elem: Elem) -> Expr {
        let k = match self.leaves.iter().position(|l| *l == v) {
            Some(k) => k,
            None => {
                self.leaves.push(v);
                self.elems.push(elem);
                self.leaves.len() - 1
            }
        };
        Expr::Operand(k)
    }

    /// `other`'s expression over this one's leaves, if they stay within
    /// [`MAX_OPERANDS`].
    fn adopt(&mut self, other: &Built) -> Option<Expr> {
        let new = other.leaves.iter().filter(|v| !self.leaves.contains(v));
        if self.leaves.len() + new.count() > MAX_OPERANDS {
            return None;
        }
        let map: Vec<usize> = other
            .leaves
            .iter()
            .zip(&other.elems)
            .map(|(v, e)| match self.leaf(*v, *e) {
                Expr::Operand(k) => k,
                Expr::Apply(..) => unreachable!("a leaf is an operand"),
            })
            .collect();
        Some(renumber(&other.expr, &map))
    }
}

/// Fuses chains of elementwise nodes: each reader of inlined nodes gets a
/// [`Step::Fused`] kernel over the values it now reads, inlined nodes get
/// no step, and `kernels` keeps only those some step launches.
pub(super) fn fuse_elementwise(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let n = graph.nodes.len();
    // Each elementwise node's expression, operand types and output type.
    let maps: Vec<Option<(Expr, Vec<Elem>, Elem)>> = (0..n)
        .map(|i| match &steps[i] {
            Some(Step::Kernel(ks)) if ks.len() == 1 && !plan.resident[i] => match &kernels[ks[0]] {
                Kernel::Map {
                    expr,
                    operands,
                    out,
                } => Some((expr.clone(), operands.clone(), *out)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let readers = readers(graph, plan, steps);
    let mut output = vec![false; n];
    for v in &graph.outputs {
        output[v.0] = true;
    }
    let inlinable: Vec<bool> = (0..n)
        .map(|v| {
            let Some((_, _, out)) = &maps[v] else {
                return false;
            };
            let ty = &graph.nodes[v].ty;
            !output[v]
                && !readers[v].is_empty()
                && readers[v].iter().all(|&r| {
                    maps[r].as_ref().is_some_and(|(_, _, o)| o == out)
                        && graph.nodes[r].ty.shape == ty.shape
                })
        })
        .collect();
    let mut built: Vec<Option<Built>> = vec![None; n];
    let mut needed = vec![false; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some((expr, elems, _)) = &maps[i] else {
            continue;
        };
        let mut fused = Built {
            expr: Expr::Operand(0),
            leaves: Vec::new(),
            elems: Vec::new(),
        };
        let mut with = Vec::with_capacity(node.operands.len());
        for (v, elem) in node.operands.iter().zip(elems) {
            let inlined = match &built[v.0] {
                Some(b) if inlinable[v.0] => fused.adopt(b),
                _ => None,
            };
            with.push(inlined.unwrap_or_else(|| {
                needed[v.0] = true;
                fused.leaf(*v, *elem)
            }));
        }
        fused.expr = substitute(expr, &with);
        if size(&fused.expr) > MAX_EXPR || fused.leaves.len() > MAX_OPERANDS {
            // Too long, or its own operands on top of an adopted chain read
            // too many values: this node reads its operands as they are.
            for v in &node.operands {
                needed[v.0] = true;
            }
            fused = Built {
                expr: expr.clone(),
                leaves: node.operands.clone(),
                elems: elems.to_vec(),
            };
        }
        built[i] = Some(fused);
    }
    for i in 0..n {
        let Some(b) = &built[i] else {
            continue;
        };
        if inlinable[i] && !needed[i] {
            steps[i] = None;
        } else if b.leaves != graph.nodes[i].operands {
            let out = maps[i].as_ref().expect("built only for maps").2;
            let kernel = Kernel::Map {
                expr: b.expr.clone(),
                operands: b.elems.clone(),
                out,
            };
            let k = kernel_index(kernels, kernel);
            steps[i] = Some(Step::Fused {
                kernel: k,
                operands: b.leaves.clone(),
            });
        }
    }
    keep_launched(kernels, steps);
}

/// Fuses each chain of PhaseQuant's residual stages whose intermediate
/// values nothing else reads into a [`Step::PhaseStages`] on its sum;
/// the chain's other nodes get no step.
pub(super) fn fuse_phase_stages(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let readers = readers(graph, plan, steps);
    let mut fused_any = false;
    for i in 0..graph.nodes.len() {
        // No step: not computed here (an input, a value folded on the host)
        // or fused already, into a split quantizer.
        if steps[i].is_none() {
            continue;
        }
        let Some(chain) = residual_stages(graph, ValueId(i)).filter(|c| c.stages > 1) else {
            continue;
        };
        let step = || Step::PhaseStages {
            kernels: stage_kernels(kernels, chain.stages, false),
            operands: vec![chain.source],
            granularity: chain.granularity,
            split: None,
        };
        fused_any |= fuse_private(graph, plan, &readers, steps, (i, &chain.inner), step);
    }
    if fused_any {
        keep_launched(kernels, steps);
    }
}

/// Gives node `last` the fused `step` and its `inner` nodes none, where
/// `last` and the inner nodes are computed each run (not resident) and
/// only `last` is read from outside: whether it did.
fn fuse_private(
    graph: &Graph,
    plan: &MemoryPlan,
    readers: &[Vec<usize>],
    steps: &mut [Option<Step>],
    (last, inner): (usize, &[ValueId]),
    step: impl FnOnce() -> Step,
) -> bool {
    let within = |r: usize| r == last || inner.contains(&ValueId(r));
    let private = inner.iter().all(|v| {
        !plan.resident[v.0] && !graph.outputs.contains(v) && readers[v.0].iter().all(|&r| within(r))
    });
    if plan.resident[last] || !private {
        return false;
    }
    for v in inner {
        steps[v.0] = None;
    }
    steps[last] = Some(step());
    true
}

/// The kernels of a [`Step::PhaseStages`] of `stages` stages: each stage's
/// sums, then the dequantization.
fn stage_kernels(kernels: &mut Vec<Kernel>, stages: usize, split: bool) -> Vec<usize> {
    (0..stages)
        .map(|stage| Kernel::PhaseStageSums { stage, split })
        .chain([Kernel::PhaseStagesDequant {
            stages,
            split,
            bf16: false,
        }])
        .map(|kernel| kernel_index(kernels, kernel))
        .collect()
}

/// Fuses each quantized layer's whole weight quantizer, as
/// `passes::real_products` leaves it for training, into one split
/// [`Step::PhaseStages`] on its last node:
/// `scale{2}(add(widely_linear_grad_u(R, Q_u), widely_linear_grad_w(R, Q_w)))`
/// where `Q_u` and `Q_w` are PhaseQuant's stages of `widely_linear_u(R)` and
/// `widely_linear_w(R)`. Its sums passes compute both halves from the
/// master `R` as they read it, and its last pass writes the real form: the
/// halves, their stages and their adjoints never reach memory, and a W2
/// master takes three kernels and a zeroing instead of eleven and two.
pub(super) fn fuse_split_quantizers(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let readers = readers(graph, plan, steps);
    let mut fused_any = false;
    for i in 0..graph.nodes.len() {
        let Some(found) = split_quantizer(graph, ValueId(i)) else {
            continue;
        };
        let step = || Step::PhaseStages {
            kernels: stage_kernels(kernels, found.stages, true),
            operands: vec![found.master],
            granularity: found.granularity,
            split: Some(found.blocks),
        };
        fused_any |= fuse_private(graph, plan, &readers, steps, (i, &found.inner), step);
    }
    if fused_any {
        keep_launched(kernels, steps);
    }
}

/// A quantized master's whole quantizer (see [`fuse_split_quantizers`]).
struct SplitQuantizer {
    master: ValueId,
    stages: usize,
    granularity: Granularity,
    /// The pairings' `(row_block, col_block)`.
    blocks: (usize, usize),
    /// Its nodes other than the last.
    inner: Vec<ValueId>,
}

/// The quantizer whose real form is `v`, if it is one.
fn split_quantizer(graph: &Graph, v: ValueId) -> Option<SplitQuantizer> {
    let node = graph.node(v);
    let (Op::Scale { factor }, [sum]) = (&node.op, node.operands.as_slice()) else {
        return None;
    };
    let (Op::Add, [a, b]) = (&graph.node(*sum).op, graph.node(*sum).operands.as_slice()) else {
        return None;
    };
    if *factor != 2.0 {
        return None;
    }
    let adjoint_of = |x: ValueId| match (&graph.node(x).op, graph.node(x).operands.as_slice()) {
        (
            Op::WidelyLinearGrad {
                part,
                row_block,
                col_block,
            },
            [shape, d],
        ) => Some((x, *part, (*row_block, *col_block), *shape, *d)),
        _ => None,
    };
    let (first, second) = (adjoint_of(*a)?, adjoint_of(*b)?);
    let (u, w) = match (first.1, second.1) {
        (WlPart::U, WlPart::W) => (first, second),
        (WlPart::W, WlPart::U) => (second, first),
        _ => return None,
    };
    let blocks = u.2;
    // Each adjoint's operand: the stages of its own half of one master.
    let half =
        |(adjoint, part, _, shape, d): (ValueId, WlPart, (usize, usize), ValueId, ValueId)| {
            let chain = residual_stages(graph, d)?;
            let source = graph.node(chain.source);
            let master = match (&source.op, source.operands.as_slice()) {
                (
                    Op::WidelyLinear {
                        part: p,
                        row_block,
                        col_block,
                        arithmetic: Arithmetic::F32,
                    },
                    [r],
                ) if *p == part && (*row_block, *col_block) == blocks => *r,
                _ => return None,
            };
            // The result takes the adjoint's shape operand's type.
            if graph.node(shape).ty != graph.node(master).ty {
                return None;
            }
            let mut inner = chain.inner;
            inner.extend([d, chain.source, adjoint]);
            Some((master, chain.stages, chain.granularity, inner))
        };
    let (master, stages, granularity, mut inner) = half(u)?;
    let (w_master, w_stages, w_granularity, w_inner) = half(w)?;
    let same = (master, stages, granularity) == (w_master, w_stages, w_granularity)
        && w.2 == blocks
        && node.ty == graph.node(master).ty;
    if !same {
        return None;
    }
    inner.extend(w_inner);
    inner.push(*sum);
    Some(SplitQuantizer {
        master,
        stages,
        granularity,
        blocks,
        inner,
    })
}

/// A chain of PhaseQuant's residual stages ending at a sum.
struct ResidualStages {
    /// The weight the first stage quantizes.
    source: ValueId,
    stages: usize,
    granularity: Granularity,
    /// The chain's nodes other than its sum: each stage's `quantize`, the
    /// residuals, the partial sums.
    inner: Vec<ValueId>,
}

/// The chain whose sum is `sum`: `sum = add(add(q₁, q₂), q₃)...` with
/// `q₁ = quantize(w)` and `q_{t+1} = quantize(sub(r_t, q_t))` (`r₁ = w`),
/// every `quantize` Fairy2i's PhaseQuant in f32 with one granularity, on a
/// 2-D complex `w`: what the quantize pass writes (for one stage, `sum` is
/// `q₁`).
fn residual_stages(graph: &Graph, sum: ValueId) -> Option<ResidualStages> {
    let node = |v: ValueId| graph.node(v);
    // The partial sums, from the outermost down the left operands.
    let mut sums = Vec::new();
    let mut v = sum;
    while let (Op::Add, [left, _]) = (&node(v).op, node(v).operands.as_slice()) {
        sums.push(v);
        v = *left;
    }
    let first = v;
    let (stage_op, granularity) = match &node(first).op {
        op @ Op::Quantize {
            scheme: Scheme::Phase,
            arithmetic: Arithmetic::F32,
            granularity,
        } => (op.clone(), *granularity),
        _ => return None,
    };
    let source = node(first).operands[0];
    let ty = &node(source).ty;
    if ty.dtype != fairyc_ir::DType::C64 || ty.shape.dims().len() != 2 {
        return None;
    }
    if sums.is_empty() {
        return Some(ResidualStages {
            source,
            stages: 1,
            granularity,
            inner: Vec::new(),
        });
    }
    sums.reverse();
    let mut inner = vec![first];
    let (mut residual, mut stage, mut partial) = (source, first, first);
    for (k, &s) in sums.iter().enumerate() {
        let [left, next] = node(s).operands[..] else {
            return None;
        };
        let quantized = node(next);
        let r = *quantized.operands.first()?;
        let is_residual = matches!(
            (&node(r).op, node(r).operands.as_slice()),
            (Op::Sub, [a, b]) if *a == residual && *b == stage
        );
        if left != partial || quantized.op != stage_op || !is_residual {
            return None;
        }
        inner.extend([r, next]);
        if k + 1 < sums.len() {
            inner.push(s);
        }
        (residual, stage, partial) = (r, next, s);
    }
    Some(ResidualStages {
        source,
        stages: sums.len() + 1,
        granularity,
        inner,
    })
}

/// Drops the kernels no step launches, renumbering the steps'.
fn keep_launched(kernels: &mut Vec<Kernel>, steps: &mut [Option<Step>]) {
    let mut used = vec![false; kernels.len()];
    for step in steps.iter().flatten() {
        step.kernels().into_iter().for_each(|k| used[k] = true);
    }
    let mut index = vec![usize::MAX; kernels.len()];
    let mut kept = 0;
    for (k, &u) in used.iter().enumerate() {
        if u {
            index[k] = kept;
            kept += 1;
        }
    }
    let mut k = 0;
    kernels.retain(|_| {
        k += 1;
        used[k - 1]
    });
    for step in steps.iter_mut().flatten() {
        match step {
            Step::Kernel(ks) | Step::PhaseStages { kernels: ks, .. } => {
                ks.iter_mut().for_each(|k| *k = index[*k])
            }
            Step::Fused { kernel, .. } | Step::Roped { kernel, .. } => *kernel = index[*kernel],
            Step::PairedQuantLinear {
                kernel, quantized, ..
            } => {
                *kernel = index[*kernel];
                if let Some(q) = quantized {
                    q.quantize = index[q.quantize];
                    q.product = index[q.product];
                }
            }
            _ => {}
        }
    }
}

/// Folds each 2-D `transpose` a `linear` reads as its weight into that
/// product ([`Step::GemmTransposedWeight`]); a transpose no other step
/// reads is dropped, and its kernel if no step launches it.
pub(super) fn fold_transposed_weights(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let mut unfolded_readers: Vec<usize> =
        readers(graph, plan, steps).iter().map(Vec::len).collect();
    let mut folded = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if plan.resident[i] || !matches!(steps[i], Some(Step::Gemm)) {
            continue;
        }
        let (x, w) = (node.operands[0], node.operands[1]);
        let transpose = graph.node(w);
        let two_d = transpose.ty.shape.dims().len() == 2;
        if two_d
            && matches!(&transpose.op, Op::Transpose { perm } if perm[..] == [1, 0])
            && matches!(steps[w.0], Some(Step::Kernel(_)))
            && !plan.resident[w.0]
        {
            steps[i] = Some(Step::GemmTransposedWeight {
                operands: vec![x, transpose.operands[0]],
            });
            unfolded_readers[w.0] -= 1;
            folded.push(w);
        }
    }
    for w in folded {
        if unfolded_readers[w.0] == 0 && !graph.outputs.contains(&w) {
            steps[w.0] = None;
        }
    }
    keep_launched(kernels, steps);
}

/// Folds into each int8 `quant_linear` the `pack` its input comes from and
/// the `unpack` that is its one reader ([`Step::PairedQuantLinear`]),
/// where the pairing is a bijection (an even row of the paired length). A
/// pack no other step reads is dropped. With its unpack folded, the product
/// stands at the unpack's node and its own node computes nothing.
pub(super) fn fold_pairings(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let mut unfolded_readers: Vec<usize> = all_readers.iter().map(Vec::len).collect();
    // A pairing node `v`, launched, over a real row of twice `complex` words.
    let foldable = |v: usize, real: &fairyc_ir::TensorType, complex: usize| {
        !plan.resident[v]
            && matches!(steps[v], Some(Step::Kernel(_)))
            && real.shape.dims().last().and_then(|d| d.clone().fixed()) == Some(2 * complex)
    };
    let mut folds = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(Step::Kernel(k)) = &steps[i] else {
            continue;
        };
        let Kernel::QuantLinearI8 {
            u_stages, w_stages, ..
        } = kernels[k[0]]
        else {
            continue;
        };
        // The codes' `[n, m]`: complex outputs and inputs.
        let Some(&[n, m]) = graph.node(node.operands[1]).ty.shape.concrete().as_deref() else {
            continue;
        };
        let x = graph.node(node.operands[0]);
        let pack = (matches!(x.op, Op::Pack { .. })
            && foldable(node.operands[0].0, &graph.node(x.operands[0]).ty, m))
        .then_some(node.operands[0].0);
        let unpack = match sole_reader(graph, &all_readers, i) {
            Some(u)
                if matches!(graph.nodes[u].op, Op::Unpack { .. })
                    && foldable(u, &graph.nodes[u].ty, n) =>
            {
                Some(u)
            }
            _ => None,
        };
        if pack.is_some() || unpack.is_some() {
            folds.push((i, (u_stages, w_stages), pack, unpack));
        }
    }
    let mut dropped = Vec::new();
    for (i, (u_stages, w_stages), pack, unpack) in folds {
        let kernel = kernel_index(
            kernels,
            Kernel::QuantLinearI8 {
                u_stages,
                w_stages,
                paired_input: pack.is_some(),
                paired_output: unpack.is_some(),
                normed: false,
                products: 1,
                residual: false,
                prologue: None,
                tensor_cores: false,
            },
        );
        let mut operands = graph.nodes[i].operands.clone();
        if let Some(p) = pack {
            operands[0] = graph.nodes[p].operands[0];
            unfolded_readers[p] -= 1;
            dropped.push(p);
        }
        let step = Step::PairedQuantLinear {
            kernel,
            operands,
            node: i,
            pack,
            unpack,
            norm: None,
            siblings: Vec::new(),
            residual: None,
            prologue: None,
            quantized: None,
        };
        match unpack {
            Some(u) => {
                steps[u] = Some(step);
                steps[i] = None;
            }
            None => steps[i] = Some(step),
        }
    }
    for p in dropped {
        if unfolded_readers[p] == 0 && !graph.outputs.contains(&ValueId(p)) {
            steps[p] = None;
        }
    }
    keep_launched(kernels, steps);
}

/// Folds into paired int8 products the real `rms_norm` their packs read,
/// where every step that reads the norm's output is such a product (its
/// packs all folded, it is no graph output): the kernel reads the row before
/// the norm and normalises it as it quantizes it, so the norm is not
/// launched (q, k and v read one norm; gate and up another).
pub(super) fn fold_norms(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let is_paired_product = |i: usize, source: ValueId| {
        matches!(&steps[i], Some(Step::PairedQuantLinear { operands, pack: Some(_), norm: None, .. })
            if operands[0] == source)
    };
    let foldable = |v: ValueId| {
        let node = graph.node(v);
        matches!(node.op, Op::RmsNorm { .. })
            && !plan.resident[v.0]
            && !graph.outputs.contains(&v)
            && matches!(&steps[v.0], Some(Step::Kernel(k))
                if kernels[k[0]] == Kernel::RmsNorm { complex: false, bf16: false })
            && !all_readers[v.0].is_empty()
            && all_readers[v.0].iter().all(|&r| is_paired_product(r, v))
    };
    let folds: Vec<(usize, ValueId)> = (0..steps.len())
        .filter_map(|i| match &steps[i] {
            Some(Step::PairedQuantLinear {
                operands,
                pack: Some(_),
                norm: None,
                ..
            }) if foldable(operands[0]) => Some((i, operands[0])),
            _ => None,
        })
        .collect();
    for &(i, norm) in &folds {
        let Some(Step::PairedQuantLinear { kernel, .. }) = &steps[i] else {
            unreachable!("chosen above")
        };
        let Kernel::QuantLinearI8 {
            u_stages,
            w_stages,
            paired_output,
            ..
        } = kernels[*kernel]
        else {
            unreachable!("paired products are int8 products")
        };
        let normed = kernel_index(
            kernels,
            Kernel::QuantLinearI8 {
                u_stages,
                w_stages,
                paired_input: true,
                paired_output,
                normed: true,
                products: 1,
                residual: false,
                prologue: None,
                tensor_cores: false,
            },
        );
        let (input, gain) = (graph.node(norm).operands[0], graph.node(norm).operands[1]);
        if let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            norm: folded,
            ..
        }) = &mut steps[i]
        {
            *kernel = normed;
            operands[0] = input;
            operands.push(gain);
            *folded = Some(norm.0);
        }
    }
    for (_, norm) in folds {
        steps[norm.0] = None;
    }
    keep_launched(kernels, steps);
}

/// Folds into paired int8 products the elementwise step whose value their
/// packs read (SiLU(gate)·up before down), where every step that reads it
/// is such a product (its pack folded, no norm), its operands are real rows
/// of its own type (no broadcast, at most [`MAX_PROLOGUE_OPERANDS`]), and it
/// is no graph output: the kernel computes the expression over the
/// operands as it quantizes the row, and the value is never written.
pub(super) fn fold_prologues(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let unfolded_product_of = |i: usize, source: ValueId| {
        matches!(&steps[i], Some(Step::PairedQuantLinear {
            operands, pack: Some(_), norm: None, prologue: None, ..
        }) if operands[0] == source)
    };
    // The expression and operands of an elementwise value that only such
    // products read.
    let elementwise = |v: ValueId| -> Option<(Expr, Vec<ValueId>)> {
        let node = graph.node(v);
        let readers = &all_readers[v.0];
        if plan.resident[v.0]
            || graph.outputs.contains(&v)
            || readers.is_empty()
            || !readers.iter().all(|&r| unfolded_product_of(r, v))
        {
            return None;
        }
        let (kernel, leaves) = match &steps[v.0] {
            Some(Step::Fused { kernel, operands }) => (*kernel, operands.clone()),
            Some(Step::Kernel(k)) if k.len() == 1 => (k[0], node.operands.clone()),
            _ => return None,
        };
        let Kernel::Map {
            expr,
            operands: elems,
            out: Elem::Real,
        } = &kernels[kernel]
        else {
            return None;
        };
        // The kernel reads as many operands as the expression names.
        let rows = leaves.iter().all(|l| graph.node(*l).ty == node.ty)
            && elems.iter().all(|e| *e == Elem::Real)
            && elems.len() == leaves.len()
            && quant_i8::operand_count(expr) == leaves.len()
            && leaves.len() <= MAX_PROLOGUE_OPERANDS;
        rows.then(|| (expr.clone(), leaves))
    };
    let folds: Vec<(usize, ValueId, Expr, Vec<ValueId>)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| match step {
            Some(Step::PairedQuantLinear {
                operands,
                pack: Some(_),
                norm: None,
                prologue: None,
                ..
            }) => {
                let (expr, leaves) = elementwise(operands[0])?;
                Some((i, operands[0], expr, leaves))
            }
            _ => None,
        })
        .collect();
    for (i, source, expr, leaves) in &folds {
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            prologue,
            ..
        }) = &mut steps[*i]
        else {
            unreachable!("chosen above")
        };
        *kernel = respecified(kernels, *kernel, |_, _, p| *p = Some(expr.clone()));
        operands.splice(0..1, leaves.iter().copied());
        *prologue = Some((source.0, leaves.len()));
    }
    for (_, source, _, _) in folds {
        steps[source.0] = None;
    }
    keep_launched(kernels, steps);
}

/// Folds into each paired int8 product with a folded unpack that unpack's
/// one reader where it adds a residual row of the same type (the residual
/// stream after o and down): the product adds the row as it writes its
/// outputs, stands at the add's node and writes its value.
pub(super) fn fold_residuals(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let mut folds = Vec::new();
    for (at, step) in steps.iter().enumerate() {
        let Some(Step::PairedQuantLinear {
            unpack: Some(_),
            residual: None,
            ..
        }) = step
        else {
            continue;
        };
        let Some(add) = sole_reader(graph, &all_readers, at) else {
            continue;
        };
        let node = &graph.nodes[add];
        let plain_add = matches!(&steps[add], Some(Step::Kernel(k))
            if matches!(kernels[k[0]], Kernel::Map { .. }));
        if plan.resident[add] || node.op != Op::Add || !plain_add {
            continue;
        }
        let residual = match node.operands[..] {
            [a, b] if a.0 == at && b.0 != at => b,
            [a, b] if b.0 == at && a.0 != at => a,
            _ => continue,
        };
        let ty = &graph.nodes[at].ty;
        // An add of two products' outputs takes in one of them.
        let taken = folds.iter().any(|&(_, claimed, _)| claimed == add);
        if graph.node(residual).ty == *ty && node.ty == *ty && !taken {
            folds.push((at, add, residual));
        }
    }
    for (at, add, row) in folds {
        let Some(Step::PairedQuantLinear {
            kernel,
            mut operands,
            node,
            pack,
            unpack,
            norm,
            siblings,
            prologue,
            ..
        }) = steps[at].take()
        else {
            unreachable!("chosen above")
        };
        operands.push(row);
        steps[add] = Some(Step::PairedQuantLinear {
            kernel: respecified(kernels, kernel, |_, residual, _| *residual = true),
            operands,
            node,
            pack,
            unpack,
            norm,
            siblings,
            residual: Some(add),
            prologue,
            quantized: None,
        });
    }
    keep_launched(kernels, steps);
}

/// `kernel`, an int8 product's, as `change` respecifies it: its index
/// among `kernels`.
fn respecified(
    kernels: &mut Vec<Kernel>,
    kernel: usize,
    change: impl FnOnce(&mut usize, &mut bool, &mut Option<Expr>),
) -> usize {
    let mut changed = kernels[kernel].clone();
    let Kernel::QuantLinearI8 {
        products,
        residual,
        prologue,
        ..
    } = &mut changed
    else {
        unreachable!("paired products are int8 products")
    };
    change(products, residual, prologue);
    kernel_index(kernels, changed)
}

/// Makes the paired int8 products that read one row one launch (the
/// siblings of a [`Step::PairedQuantLinear`]): q, k and v read one normed
/// row, gate and up another. The launch quantizes the row once, and its
/// warps take every product's outputs, so three short launches in a chain
/// become one three times as wide. The group stands at its earliest step;
/// the others become [`Step::Ahead`]. A product joins where its kernel, its
/// source, its pack's pairing, its norm and its inputs' length are the
/// first's, and where its weights are ready at the first's step (inputs,
/// weights evaluated at load, or values computed before it). Products with
/// a residual epilogue stay alone.
pub(super) fn group_siblings(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    // What must agree for two products to share a launch.
    let key = |step: &Option<Step>| match step {
        Some(Step::PairedQuantLinear {
            kernel,
            operands,
            node,
            pack,
            norm,
            siblings,
            residual: None,
            prologue,
            ..
        }) if siblings.is_empty() => {
            let inputs = graph.node(graph.nodes[*node].operands[1]).ty.shape.dims()[1].clone();
            let pairing = pack.map(|p| graph.nodes[p].op.clone());
            Some((*kernel, operands[0], pairing, *norm, *prologue, inputs))
        }
        _ => None,
    };
    for first in 0..steps.len() {
        if plan.resident[first] {
            continue;
        }
        let Some(wanted) = key(&steps[first]) else {
            continue;
        };
        // Computed by a step before the first's (a step that moved later
        // leaves its node without one), a weight evaluated at load, or an
        // input.
        let ready = |v: &ValueId| {
            (v.0 < first && steps[v.0].is_some())
                || plan.resident[v.0]
                || matches!(graph.node(*v).op, Op::Input { .. })
        };
        let joining: Vec<usize> = (first + 1..steps.len())
            .filter(|&j| !plan.resident[j] && key(&steps[j]).as_ref() == Some(&wanted))
            .filter(|&j| product_weights(&steps[j]).iter().all(ready))
            .take(quant_i8::MAX_PRODUCTS - 1)
            .collect();
        if joining.is_empty() {
            continue;
        }
        let mut joined = Vec::new();
        for &j in &joining {
            let weights = product_weights(&steps[j]).to_vec();
            let Some(Step::PairedQuantLinear { node, unpack, .. }) = steps[j].replace(Step::Ahead)
            else {
                unreachable!("chosen above")
            };
            joined.push((
                Sibling {
                    node,
                    at: j,
                    unpack,
                },
                weights,
            ));
        }
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            norm,
            siblings,
            ..
        }) = &mut steps[first]
        else {
            unreachable!("chosen above")
        };
        // The siblings' weights go after the first's, before a gain.
        let gain = norm.map(|_| operands.pop().expect("a normed product reads its gain"));
        for (sibling, weights) in joined {
            operands.extend(weights);
            siblings.push(sibling);
        }
        operands.extend(gain);
        let products = siblings.len() + 1;
        *kernel = respecified(kernels, *kernel, |n, _, _| *n = products);
    }
    keep_launched(kernels, steps);
}

/// Folds each real `rope` that only an attention over a KV cache reads
/// (its queries) or only a cache's append reads (its new keys) into that
/// reader ([`Step::Roped`]): the reader's kernel reads the rope's input and
/// positions and rotates them as it loads them, by the rope kernel's own
/// arithmetic. A decoding step has two such ropes a layer, each a launch.
pub(super) fn fold_ropes(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let mut folds = Vec::new();
    for (r, node) in graph.nodes.iter().enumerate() {
        let Op::Rope {
            layout, head_dim, ..
        } = node.op
        else {
            continue;
        };
        let real = node.ty.dtype == DType::F32;
        if !real || !matches!(steps[r], Some(Step::Kernel(_))) {
            continue;
        }
        let Some(reader) = sole_reader(graph, &all_readers, r) else {
            continue;
        };
        let Some(Step::Kernel(ks)) = &steps[reader] else {
            continue;
        };
        let operands = &graph.nodes[reader].operands;
        let only_at = |k: usize| {
            operands
                .iter()
                .enumerate()
                .all(|(i, v)| (v.0 == r) == (i == k))
        };
        let roped = match (&kernels[ks[0]], &graph.nodes[reader].op) {
            (
                &Kernel::Attention {
                    d,
                    dv,
                    group,
                    rope: None,
                },
                Op::Attention { segment: None, .. },
            ) if only_at(0) && d == head_dim => Kernel::Attention {
                d,
                dv,
                group,
                rope: Some(layout),
            },
            (Kernel::AppendRows { rope: None }, Op::Concat { .. })
                if operands.len() == 2 && only_at(1) =>
            {
                Kernel::AppendRows { rope: Some(layout) }
            }
            _ => continue,
        };
        folds.push((r, reader, roped));
    }
    for (r, reader, roped) in folds {
        let rope = &graph.nodes[r];
        let operands = graph.nodes[reader]
            .operands
            .iter()
            .map(|v| if v.0 == r { rope.operands[0] } else { *v })
            .chain([rope.operands[1]])
            .collect();
        steps[reader] = Some(Step::Roped {
            kernel: kernel_index(kernels, roped),
            operands,
            rope: r,
        });
        steps[r] = None;
    }
    keep_launched(kernels, steps);
}

/// Moves the paired int8 products onto tensor cores
/// ([`crate::cuda::Int8Products::TensorCores`]) where their codes are
/// weights the program holds (evaluated at load) and only that product
/// reads, so that they can be re-packed into fragment order once at load
/// ([`tensor_core_codes`]), and where the shapes suit the kernel
/// ([`quant_mma::applies`]).
pub(super) fn use_tensor_cores(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let all_readers = readers(graph, plan, steps);
    let suits = |i: usize, step: &Option<Step>| -> Option<usize> {
        let Some(Step::PairedQuantLinear { kernel, .. }) = step else {
            return None;
        };
        let codes = product_codes(graph, step)?;
        // Each product's rows (its stages' codes are alike).
        let Kernel::QuantLinearI8 {
            u_stages, w_stages, ..
        } = kernels[*kernel]
        else {
            return None;
        };
        let stages = u_stages + w_stages;
        let &(_, [_, m]) = codes.first()?;
        let products: Vec<usize> = codes
            .iter()
            .step_by(stages.max(1))
            .map(|(_, [n, _])| *n)
            .collect();
        // Re-packed in place: no other step, nor the caller, reads them.
        let held = codes.iter().all(|(c, _)| {
            plan.resident[c.0] && all_readers[c.0] == [i] && !graph.outputs.contains(c)
        });
        (stages > 0 && held && quant_mma::applies(&products, m)).then_some(*kernel)
    };
    let chosen: Vec<(usize, usize)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| Some((i, suits(i, step)?)))
        .collect();
    for (i, kernel) in chosen {
        let mut changed = kernels[kernel].clone();
        if let Kernel::QuantLinearI8 { tensor_cores, .. } = &mut changed {
            *tensor_cores = true;
        }
        let index = kernel_index(kernels, changed);
        if let Some(Step::PairedQuantLinear { kernel, .. }) = &mut steps[i] {
            *kernel = index;
        }
    }
    keep_launched(kernels, steps);
}

/// Complex inputs from which a single row (a decoding step's) is
/// quantized once by a kernel of its own ([`quantize_rows_once`]) rather
/// than by every block of its product. At LLaMA-7B's widths a product has
/// hundreds of blocks, each of which would read the whole row (and
/// evaluate a prologue over it) again; at SmolLM2's it has a few dozen,
/// and a launch more would cost more than it saves.
pub const QUANTIZE_ONCE_INPUTS: usize = 1024;

/// Input rows from which a launch quantizes them once at every width: a
/// prompt's. Fewer (a `serve` batch's decoding step) keep one launch at
/// narrow widths, as a single row does. Not tuned: 513 rows were measured,
/// and 1.
pub const QUANTIZE_ONCE_ROWS: usize = 16;

/// Gives each paired int8 product (`dp4a` or tensor-core) a second way to
/// run ([`QuantizedRows`]): its input rows quantized once by a kernel of
/// their own, then the products on those int8 rows. A prompt's rows take it
/// (every block across a layer would otherwise quantize each of them, from
/// [`QUANTIZE_ONCE_ROWS`]); fewer rows take it from [`QUANTIZE_ONCE_INPUTS`]
/// inputs, or always with `every_width`.
pub(super) fn quantize_rows_once(
    graph: &Graph,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
    every_width: bool,
) {
    for step in steps.iter_mut() {
        let Some(m) = product_codes(graph, step).and_then(|c| c.first().map(|(_, [_, m])| *m))
        else {
            continue;
        };
        let Some(Step::PairedQuantLinear {
            kernel, quantized, ..
        }) = step
        else {
            continue;
        };
        let Kernel::QuantLinearI8 {
            u_stages,
            w_stages,
            paired_input,
            paired_output,
            normed,
            products,
            residual,
            ref prologue,
            tensor_cores,
        } = kernels[*kernel]
        else {
            continue;
        };
        let quantize = Kernel::QuantizeRowsI8 {
            paired_input,
            normed,
            prologue: prologue.clone(),
            tensor_cores,
        };
        let product = Kernel::QuantLinearI8Rows {
            u_stages,
            w_stages,
            paired_output,
            products,
            residual,
            tensor_cores,
        };
        *quantized = Some(QuantizedRows {
            quantize: kernel_index(kernels, quantize),
            product: kernel_index(kernels, product),
            one_row: every_width || m >= QUANTIZE_ONCE_INPUTS,
        });
    }
}

/// The codes the tensor-core products read, to re-pack at load: each
/// value's `[n, m]` ([`product_codes`]); an error names a product whose
/// codes are not (which [`use_tensor_cores`] does not choose).
pub(super) fn tensor_core_codes(
    graph: &Graph,
    kernels: &[Kernel],
    steps: &[Option<Step>],
) -> Result<Vec<(ValueId, [usize; 2])>, String> {
    let mut codes = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let Some(Step::PairedQuantLinear { kernel, .. }) = step else {
            continue;
        };
        if matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                tensor_cores: true,
                ..
            }
        ) {
            let product = product_codes(graph, step)
                .ok_or_else(|| format!("%{i}: tensor-core codes of no concrete [n, m]"))?;
            codes.extend(product);
        }
    }
    Ok(codes)
}

/// A paired product's codes (every stage's, product after product) and
/// their `[n, m]`, where every one's shape is concrete and 2-D.
fn product_codes(graph: &Graph, step: &Option<Step>) -> Option<Vec<(ValueId, [usize; 2])>> {
    product_weights(step)
        .iter()
        .step_by(2)
        .map(|c| match graph.node(*c).ty.shape.concrete().as_deref() {
            Some(&[n, m]) => Some((*c, [n, m])),
            _ => None,
        })
        .collect()
}

/// A paired product's weights: its operands after the input, less a norm's
/// gain and a residual row.
fn product_weights(step: &Option<Step>) -> &[ValueId] {
    match step {
        Some(Step::PairedQuantLinear {
            operands,
            norm,
            residual,
            prologue,
            ..
        }) => {
            let inputs = prologue.map_or(1, |(_, operands)| operands);
            let extras = usize::from(norm.is_some()) + usize::from(residual.is_some());
            &operands[inputs..operands.len() - extras]
        }
        _ => &[],
    }
}

/// Gives each cross-entropy gradient the softmax statistics of its loss:
/// where the graph computes a `cross_entropy` and, later, its gradient on
/// the same logits and targets (a training step), the loss's kernel keeps
/// each row's maximum and exponentials' sum and the gradient's reads them
/// and the loss's scored count, so the logits (a vocabulary a row) are read
/// twice in all rather than three times.
pub(super) fn keep_loss_statistics(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    for g in 0..graph.nodes.len() {
        let Some(f) = loss_of_gradient(graph, g) else {
            continue;
        };
        let keepable = !plan.resident[f]
            && !plan.resident[g]
            && matches!(&steps[f], Some(Step::Kernel(ks))
                if kernels[ks[0]] == Kernel::CrossEntropyRows { keep: false });
        let Some(Step::Kernel(grad)) = &mut steps[g] else {
            continue;
        };
        let Kernel::CrossEntropyGrad { bf16, kept: false } = kernels[grad[0]] else {
            continue;
        };
        if !keepable {
            continue;
        }
        grad[0] = kernel_index(kernels, Kernel::CrossEntropyGrad { bf16, kept: true });
        if let Some(Step::Kernel(rows)) = &mut steps[f] {
            rows[0] = kernel_index(kernels, Kernel::CrossEntropyRows { keep: true });
        }
    }
    keep_launched(kernels, steps);
}

/// The `cross_entropy` node before node `g`, a `cross_entropy_grad`, on the
/// same logits and targets: the loss whose gradient `g` is.
pub(super) fn loss_of_gradient(graph: &Graph, g: usize) -> Option<usize> {
    let node = &graph.nodes[g];
    if node.op != Op::CrossEntropyGrad {
        return None;
    }
    (0..g).find(|&f| {
        let loss = &graph.nodes[f];
        loss.op == Op::CrossEntropy && loss.operands[..] == node.operands[..2]
    })
}

/// Rounds each value that only bf16 products read in the kernel that
/// computes it ([`Elem::Bf16`]): an elementwise kernel, a norm, a rotary
/// embedding, a loss's gradient, a quantized master's real form. The
/// products then read it as it is, where a `to_bf16` launch would read the
/// f32 value again and write it rounded: half the bytes written, and one
/// launch and one pass over the value less (a training step's normed rows,
/// MLP inputs and their gradients, the queries' and keys' gradients, the
/// logits' gradient, every quantized weight). Run last, on the steps' final
/// readers, and only where the products round their operands.
pub(super) fn round_in_producers(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &mut Vec<Kernel>,
    steps: &mut [Option<Step>],
) {
    let readers = readers(graph, plan, steps);
    for (i, readers) in readers.iter().enumerate() {
        let products_alone = !readers.is_empty()
            && !plan.resident[i]
            && !graph.outputs.contains(&ValueId(i))
            && readers.iter().all(|&r| {
                matches!(
                    steps[r],
                    Some(Step::Gemm | Step::WeightGrad | Step::GemmTransposedWeight { .. })
                )
            });
        if !products_alone {
            continue;
        }
        // The kernel that writes the value.
        let writer = match &mut steps[i] {
            Some(Step::Kernel(ks)) if ks.len() == 1 => &mut ks[0],
            Some(Step::PhaseStages { kernels: ks, .. }) => ks.last_mut().expect("a last pass"),
            Some(Step::Fused { kernel, .. }) => kernel,
            _ => continue,
        };
        let rounded = match &kernels[*writer] {
            Kernel::Map {
                expr,
                operands,
                out: Elem::Real,
            } => Kernel::Map {
                expr: expr.clone(),
                operands: operands.clone(),
                out: Elem::Bf16,
            },
            Kernel::RmsNorm {
                complex: false,
                bf16: false,
            } => Kernel::RmsNorm {
                complex: false,
                bf16: true,
            },
            &Kernel::Rope {
                layout,
                complex: false,
                bf16: false,
            } => Kernel::Rope {
                layout,
                complex: false,
                bf16: true,
            },
            &Kernel::CrossEntropyGrad { bf16: false, kept } => {
                Kernel::CrossEntropyGrad { bf16: true, kept }
            }
            Kernel::KlDivGrad { bf16: false } => Kernel::KlDivGrad { bf16: true },
            &Kernel::PhaseStagesDequant {
                stages,
                split: true,
                bf16: false,
            } => Kernel::PhaseStagesDequant {
                stages,
                split: true,
                bf16: true,
            },
            _ => continue,
        };
        *writer = kernel_index(kernels, rounded);
    }
    keep_launched(kernels, steps);
}

/// The steps that read each value, in order (steps of resident values, run
/// at load, aside).
fn readers(graph: &Graph, plan: &MemoryPlan, steps: &[Option<Step>]) -> Vec<Vec<usize>> {
    let mut readers = vec![Vec::new(); graph.nodes.len()];
    for i in 0..graph.nodes.len() {
        if steps[i].is_some() && !plan.resident[i] {
            for v in reads(graph, steps, i) {
                readers[v.0].push(i);
            }
        }
    }
    readers
}

/// The one step that reads node `v`'s value, where the graph does not
/// output it too: a value a fold may take into its reader.
fn sole_reader(graph: &Graph, readers: &[Vec<usize>], v: usize) -> Option<usize> {
    match readers[v][..] {
        [reader] if !graph.outputs.contains(&ValueId(v)) => Some(reader),
        _ => None,
    }
}

/// The values node `i`'s step reads.
pub(super) fn reads<'a>(graph: &'a Graph, steps: &'a [Option<Step>], i: usize) -> &'a [ValueId] {
    match &steps[i] {
        Some(
            Step::Fused { operands, .. }
            | Step::GemmTransposedWeight { operands }
            | Step::PhaseStages { operands, .. }
            | Step::PairedQuantLinear { operands, .. }
            | Step::Roped { operands, .. },
        ) => operands,
        // Its value was computed by an earlier step.
        Some(Step::Ahead) => &[],
        _ => &graph.nodes[i].operands,
    }
}

/// Checks what every fusion pass must leave true, as the program will run
/// the steps (values evaluated at load first, then node by node, a grouped
/// product's siblings with it): each step's kernels exist, and each value a
/// step reads is there when it runs (an input, a value evaluated at load,
/// or the value of a step that ran before), as is each graph output at the
/// end. A pass that breaks this would otherwise make the run panic or read
/// a buffer never written.
pub(super) fn check_plan(
    graph: &Graph,
    plan: &MemoryPlan,
    kernels: &[Kernel],
    steps: &[Option<Step>],
) -> Result<(), String> {
    let input = |v: usize| matches!(graph.nodes[v].op, Op::Input { .. });
    let mut computed: Vec<bool> = (0..graph.nodes.len())
        .map(|v| plan.resident[v] || input(v))
        .collect();
    for (i, step) in steps.iter().enumerate() {
        let Some(step) = step else { continue };
        let name = || format!("%{i} = {}", graph.nodes[i].op.mnemonic());
        if let Some(k) = step.kernels().into_iter().find(|&k| k >= kernels.len()) {
            return Err(format!("{}: kernel {k} of {}", name(), kernels.len()));
        }
        // What the run skips: inputs, values evaluated at load (which read
        // only such values), and values a sibling's step computed.
        if input(i) || plan.resident[i] || matches!(step, Step::Ahead) {
            continue;
        }
        if let Some(v) = reads(graph, steps, i).iter().find(|v| !computed[v.0]) {
            return Err(format!(
                "{} reads %{}, which no step computed before it",
                name(),
                v.0
            ));
        }
        computed[i] = true;
        if let Step::PairedQuantLinear { siblings, .. } = step {
            siblings.iter().for_each(|s| computed[s.at] = true);
        }
    }
    match graph.outputs.iter().find(|v| !computed[v.0]) {
        Some(v) => Err(format!("the output %{} is computed by no step", v.0)),
        None => Ok(()),
    }
}

/// The node after which each value is dead, over the operands each step
/// reads (fused steps read other values than their nodes' operands);
/// `usize::MAX` for outputs, the value's own node for a value no step reads.
pub(super) fn last_uses(graph: &Graph, plan: &MemoryPlan, steps: &[Option<Step>]) -> Vec<usize> {
    let mut last: Vec<usize> = (0..graph.nodes.len()).collect();
    for i in 0..graph.nodes.len() {
        if plan.resident[i] {
            continue;
        }
        if steps[i].is_none() {
            continue;
        }
        for v in reads(graph, steps, i) {
            last[v.0] = i;
        }
    }
    for v in &graph.outputs {
        last[v.0] = usize::MAX;
    }
    last
}

#[cfg(test)]
mod tests {
    use fairyc_ir::{DType, GraphBuilder, Op, Shape, TensorType, ValueId};

    use super::super::{default_selection, Step};
    use super::MAX_OPERANDS;
    use crate::cuda::GpuActivations;

    /// The backend's options with `activations` and `dp4a` products (the
    /// tests that want tensor cores say so), the rest by default.
    fn on(activations: GpuActivations) -> crate::cuda::Cuda {
        crate::cuda::Cuda {
            activations,
            int8_products: crate::cuda::Int8Products::Dp4a,
            ..Default::default()
        }
    }

    fn ty(dims: &[usize]) -> TensorType {
        TensorType::new(DType::F32, Shape::new(dims.iter().copied()))
    }

    fn steps(graph: &fairyc_ir::Graph) -> Vec<Option<Step>> {
        default_selection(graph, &on(GpuActivations::F32))
            .unwrap()
            .1
    }

    /// The weights of a `quant_linear` with one U and one W stage of
    /// `[n, m]` codes: each stage's codes and per-tensor scales, inputs
    /// named after `name`.
    fn stage_weights(b: &mut GraphBuilder, name: &str, [n, m]: [usize; 2]) -> Vec<ValueId> {
        let codes = TensorType::new(DType::Code2, Shape::new([n, m]));
        ["u", "w"]
            .into_iter()
            .flat_map(|stage| {
                [
                    b.input(format!("{name}.{stage}.codes"), codes.clone()),
                    b.input(format!("{name}.{stage}.scales"), ty(&[2])),
                ]
            })
            .collect()
    }

    /// That `quant_linear` of the complex `x`, by `weights`.
    fn quant_linear(b: &mut GraphBuilder, x: ValueId, weights: &[ValueId]) -> ValueId {
        let op = Op::QuantLinear {
            u_stages: 1,
            w_stages: 1,
            granularity: fairyc_ir::Granularity::Tensor,
        };
        b.push(op, &[&[x], weights].concat()).unwrap()
    }

    /// The plan check after each pass: it holds for what the passes make
    /// (every test here goes through it), and names the node where a step
    /// reads a value no step computed or one computed after it, launches a
    /// kernel that is not there, or leaves an output uncomputed.
    #[test]
    fn the_plan_check_finds_a_value_read_before_it_is_computed() {
        use super::super::Kernel;
        use super::check_plan;
        use crate::plan::MemoryPlan;

        let mut b = GraphBuilder::new("plan");
        let x = b.input("x", ty(&[4, 8]));
        let w = b.input("w", ty(&[8, 8]));
        let scaled = b.push(Op::Scale { factor: 0.5 }, &[x]).unwrap();
        let y = b.push(Op::Linear, &[scaled, w]).unwrap();
        let graph = b.finish(&[y]);
        let plan = MemoryPlan::new(&graph, 1);
        let (kernels, chosen) = default_selection(&graph, &on(GpuActivations::F32)).unwrap();
        assert_eq!(check_plan(&graph, &plan, &kernels, &chosen), Ok(()));
        // The scale's kernel; the product is cuBLAS's.
        assert!(matches!(kernels[..], [Kernel::Map { .. }]));

        let mut unread = steps(&graph);
        unread[scaled.0] = None;
        let error = check_plan(&graph, &plan, &kernels, &unread).unwrap_err();
        assert!(
            error.contains(&format!("%{} = linear reads %{}", y.0, scaled.0)),
            "{error}"
        );

        // A step that reads a value computed after it.
        let mut early = steps(&graph);
        early[scaled.0] = Some(Step::Fused {
            kernel: 0,
            operands: vec![y],
        });
        let error = check_plan(&graph, &plan, &kernels, &early).unwrap_err();
        assert!(
            error.contains(&format!("%{} = scale reads %{}", scaled.0, y.0)),
            "{error}"
        );

        let mut missing = steps(&graph);
        missing[scaled.0] = Some(Step::Kernel(vec![kernels.len()]));
        let error = check_plan(&graph, &plan, &kernels, &missing).unwrap_err();
        assert!(error.contains("kernel 1 of 1"), "{error}");

        let mut no_output = steps(&graph);
        no_output[y.0] = None;
        let error = check_plan(&graph, &plan, &kernels, &no_output).unwrap_err();
        assert!(error.contains(&format!("the output %{}", y.0)), "{error}");
    }

    /// `c = 0.5·(x·s + y)`: one kernel reading x, s and y; with a product
    /// reading `x·s + y` too, that sum stays materialised (fused with
    /// `x·s`) and `c` reads it.
    #[test]
    fn a_chain_of_elementwise_nodes_runs_as_one_kernel() {
        let chain = |with_product: bool| {
            let mut b = GraphBuilder::new("chain");
            let x = b.input("x", ty(&[4, 8]));
            let y = b.input("y", ty(&[4, 8]));
            let s = b.input("s", ty(&[]));
            let a = b.push(Op::Mul, &[x, s]).unwrap();
            let sum = b.push(Op::Add, &[a, y]).unwrap();
            let c = b.push(Op::Scale { factor: 0.5 }, &[sum]).unwrap();
            let mut outputs = vec![c];
            if with_product {
                let w = b.input("w", ty(&[8, 8]));
                outputs.push(b.push(Op::Linear, &[sum, w]).unwrap());
            }
            (steps(&b.finish(&outputs)), [x, y, s, a, sum, c])
        };
        let (fused, [x, y, s, a, sum, c]) = chain(false);
        assert!(fused[a.0].is_none() && fused[sum.0].is_none());
        assert!(
            matches!(&fused[c.0], Some(Step::Fused { operands, .. }) if *operands == [x, s, y])
        );

        let (kept, _) = chain(true);
        assert!(kept[a.0].is_none());
        assert!(
            matches!(&kept[sum.0], Some(Step::Fused { operands, .. }) if *operands == [x, s, y])
        );
        assert!(matches!(&kept[c.0], Some(Step::Kernel(_))));
    }

    /// PhaseQuant's residual stages as the quantize pass writes them, with
    /// a product reading their sum: two and three stages run as one step
    /// of three and four passes over the weight; a stage another node
    /// reads keeps the chain unfused.
    #[test]
    fn residual_phase_quant_stages_run_as_one_step() {
        use fairyc_ir::{Arithmetic, Granularity, Scheme};

        use super::super::Kernel;

        let quantize = Op::Quantize {
            scheme: Scheme::Phase,
            granularity: Granularity::Channel,
            arithmetic: Arithmetic::F32,
        };
        let graph = |stages: usize, read_first_stage: bool| {
            let mut b = GraphBuilder::new("stages");
            let complex = TensorType::new(DType::C64, Shape::new([6, 4]));
            let w = b.input("w", complex.clone());
            let x = b.input("x", TensorType::new(DType::C64, Shape::new([3, 4])));
            let (mut residual, mut sum, mut inner) = (w, None, Vec::new());
            let mut first = None;
            for t in 0..stages {
                let q = b.push(quantize.clone(), &[residual]).unwrap();
                first.get_or_insert(q);
                inner.push(q);
                sum = Some(match sum {
                    None => q,
                    Some(s) => {
                        if !inner.contains(&s) {
                            inner.push(s);
                        }
                        b.push(Op::Add, &[s, q]).unwrap()
                    }
                });
                if t + 1 < stages {
                    residual = b.push(Op::Sub, &[residual, q]).unwrap();
                    inner.push(residual);
                }
            }
            let sum = sum.unwrap();
            inner.retain(|v| *v != sum);
            let mut outputs = vec![b.push(Op::Linear, &[x, sum]).unwrap()];
            if read_first_stage {
                outputs.push(
                    b.push(Op::Scale { factor: 2.0 }, &[first.unwrap()])
                        .unwrap(),
                );
            }
            let graph = b.finish(&outputs);
            let (kernels, steps) = default_selection(&graph, &on(GpuActivations::F32)).unwrap();
            (kernels, steps, w, sum, inner)
        };
        for stages in [2, 3] {
            let (kernels, steps, w, sum, inner) = graph(stages, false);
            let Some(Step::PhaseStages {
                kernels: ks,
                operands,
                granularity,
                split: None,
            }) = &steps[sum.0]
            else {
                panic!("{stages} stages: not fused");
            };
            assert_eq!(*operands, [w]);
            assert_eq!(*granularity, Granularity::Channel);
            let launched: Vec<&Kernel> = ks.iter().map(|&k| &kernels[k]).collect();
            let want: Vec<Kernel> = (0..stages)
                .map(|stage| Kernel::PhaseStageSums {
                    stage,
                    split: false,
                })
                .chain([Kernel::PhaseStagesDequant {
                    stages,
                    split: false,
                    bf16: false,
                }])
                .collect();
            assert_eq!(launched, want.iter().collect::<Vec<_>>());
            // Each stage's quantize and residual, and the partial sums.
            assert_eq!(inner.len(), 3 * stages - 3);
            assert!(
                inner.iter().all(|v| steps[v.0].is_none()),
                "{stages} stages"
            );
            assert!(
                !kernels
                    .iter()
                    .any(|k| matches!(k, Kernel::PhaseSums { .. })),
                "no unfused stage is left"
            );
        }
        let (_, steps, _, sum, inner) = graph(2, true);
        assert!(matches!(
            &steps[sum.0],
            Some(Step::Fused { .. } | Step::Kernel(_))
        ));
        assert!(inner.iter().all(|v| steps[v.0].is_some()));
    }

    /// A quantized layer's weight as `real_products` leaves it for
    /// training (the split, each half's PhaseQuant stages, their adjoints,
    /// their sum doubled) runs as one split step on the master: one sums
    /// pass a stage for both halves, then the real form. A half another
    /// node reads, or a sum scaled by other than 2, keeps it unfused.
    #[test]
    fn a_masters_split_quantizer_runs_as_one_step() {
        use fairyc_ir::{Arithmetic, Granularity, Scheme, WlPart};

        use super::super::Kernel;

        let build = |stages: usize, read_a_half: bool, factor: f32| {
            let mut b = GraphBuilder::new("master");
            let r = b.input("r", ty(&[6, 10]));
            let x = b.input("x", ty(&[3, 10]));
            let mut halves = Vec::new();
            let adjoints = [WlPart::U, WlPart::W].map(|part| {
                let split = Op::WidelyLinear {
                    part,
                    row_block: 2,
                    col_block: 0,
                    arithmetic: Arithmetic::F32,
                };
                let z = b.push(split, &[r]).unwrap();
                halves.push(z);
                let quantize = Op::Quantize {
                    scheme: Scheme::Phase,
                    granularity: Granularity::Group(4),
                    arithmetic: Arithmetic::F32,
                };
                let (mut residual, mut sum) = (z, None);
                for t in 0..stages {
                    let q = b.push(quantize.clone(), &[residual]).unwrap();
                    sum = Some(match sum {
                        None => q,
                        Some(s) => b.push(Op::Add, &[s, q]).unwrap(),
                    });
                    if t + 1 < stages {
                        residual = b.push(Op::Sub, &[residual, q]).unwrap();
                    }
                }
                let adjoint = Op::WidelyLinearGrad {
                    part,
                    row_block: 2,
                    col_block: 0,
                };
                b.push(adjoint, &[r, sum.unwrap()]).unwrap()
            });
            let sum = b.push(Op::Add, &adjoints).unwrap();
            let real = b.push(Op::Scale { factor }, &[sum]).unwrap();
            let mut outputs = vec![b.push(Op::Linear, &[x, real]).unwrap()];
            if read_a_half {
                outputs.push(b.push(Op::Conj, &[halves[1]]).unwrap());
            }
            (b.finish(&outputs), r, real)
        };
        let graph = |stages: usize, read_a_half: bool, factor: f32| {
            let (graph, r, real) = build(stages, read_a_half, factor);
            let (kernels, steps) = default_selection(&graph, &on(GpuActivations::F32)).unwrap();
            (kernels, steps, r, real)
        };
        for stages in [1, 2, 3] {
            let (kernels, steps, r, real) = graph(stages, false, 2.0);
            let Some(Step::PhaseStages {
                kernels: ks,
                operands,
                granularity: Granularity::Group(4),
                split: Some((2, 0)),
            }) = &steps[real.0]
            else {
                panic!("{stages} stages: not fused");
            };
            assert_eq!(*operands, [r]);
            let launched: Vec<&Kernel> = ks.iter().map(|&k| &kernels[k]).collect();
            let want: Vec<Kernel> = (0..stages)
                .map(|stage| Kernel::PhaseStageSums { stage, split: true })
                .chain([Kernel::PhaseStagesDequant {
                    stages,
                    split: true,
                    bf16: false,
                }])
                .collect();
            assert_eq!(launched, want.iter().collect::<Vec<_>>());
            // Only the master's quantizer and the product are left.
            let left = steps.iter().flatten().count();
            assert_eq!(left, 2, "{stages} stages");
            assert!(!kernels.iter().any(|k| matches!(
                k,
                Kernel::WidelyLinear { .. } | Kernel::WidelyLinearGrad { .. }
            )));
        }
        // With bf16 products, the product's operand is written rounded.
        let (kernels, steps, _, real) = graph(2, false, 2.0);
        let bf16 = crate::cuda::Cuda {
            matmul: crate::cuda::GpuMatmul::Bf16,
            ..on(GpuActivations::F32)
        };
        let Some(Step::PhaseStages { kernels: ks, .. }) = &steps[real.0] else {
            panic!("not fused");
        };
        assert!(!kernels[ks[2]].writes_bf16());
        let (kernels, steps) = default_selection(&build(2, false, 2.0).0, &bf16).unwrap();
        let Some(Step::PhaseStages { kernels: ks, .. }) = &steps[real.0] else {
            panic!("not fused with bf16 products");
        };
        assert_eq!(
            kernels[ks[2]],
            Kernel::PhaseStagesDequant {
                stages: 2,
                split: true,
                bf16: true
            }
        );
        for (read_a_half, factor) in [(true, 2.0), (false, 3.0)] {
            let (_, steps, _, real) = graph(2, read_a_half, factor);
            assert!(!matches!(
                &steps[real.0],
                Some(Step::PhaseStages { split: Some(_), .. })
            ));
        }
    }

    /// A cross-entropy's gradient on the same logits and targets as a loss
    /// before it reads that loss's kept statistics; one on other targets
    /// computes its own.
    #[test]
    fn a_losss_gradient_reads_the_losss_statistics() {
        use super::super::Kernel;

        let mut b = GraphBuilder::new("loss");
        let logits = b.input("logits", ty(&[4, 10]));
        let ids = || TensorType::new(DType::I32, Shape::new([4]));
        let (targets, others) = (b.input("targets", ids()), b.input("others", ids()));
        let dloss = b.input("dloss", ty(&[]));
        let loss = b.push(Op::CrossEntropy, &[logits, targets]).unwrap();
        let grad =
            |b: &mut GraphBuilder, t| b.push(Op::CrossEntropyGrad, &[logits, t, dloss]).unwrap();
        let (own, other) = (grad(&mut b, targets), grad(&mut b, others));
        let graph = b.finish(&[loss, own, other]);
        let (kernels, steps) = default_selection(&graph, &on(GpuActivations::F32)).unwrap();
        let kernel = |v: ValueId| match &steps[v.0] {
            Some(Step::Kernel(ks)) => kernels[ks[0]].clone(),
            _ => panic!("{v:?}: not a kernel step"),
        };
        assert_eq!(kernel(loss), Kernel::CrossEntropyRows { keep: true });
        assert_eq!(
            kernel(own),
            Kernel::CrossEntropyGrad {
                bf16: false,
                kept: true
            }
        );
        assert_eq!(
            kernel(other),
            Kernel::CrossEntropyGrad {
                bf16: false,
                kept: false
            }
        );
        assert_eq!(super::loss_of_gradient(&graph, own.0), Some(loss.0));
        assert_eq!(super::loss_of_gradient(&graph, other.0), None);
    }

    /// With bf16 products, a value only products read is written rounded
    /// by the kernel that computes it (an elementwise chain, a norm, a
    /// rotation, the logits' gradient, a master's quantized real form); one that is an output too,
    /// or that an elementwise node reads, stays f32 (and `to_bf16` rounds
    /// it for its products). With f32 products nothing is rounded.
    #[test]
    fn values_only_bf16_products_read_are_rounded_where_computed() {
        use super::super::Kernel;
        use crate::cuda::GpuMatmul;

        let bf16 = crate::cuda::Cuda {
            matmul: GpuMatmul::Bf16,
            ..on(GpuActivations::F32)
        };
        let graph = |also: Option<&str>| {
            let mut b = GraphBuilder::new("mlp");
            let gate = b.input("gate", ty(&[4, 8]));
            let up = b.input("up", ty(&[4, 8]));
            let w = b.input("w", ty(&[3, 8]));
            let silu = b.push(Op::Silu, &[gate]).unwrap();
            let h = b.push(Op::Mul, &[silu, up]).unwrap();
            let y = b.push(Op::Linear, &[h, w]).unwrap();
            let targets = b.input("targets", TensorType::new(DType::I32, Shape::new([4])));
            let dloss = b.input("dloss", ty(&[]));
            let dy = b.push(Op::CrossEntropyGrad, &[y, targets, dloss]).unwrap();
            let dw = b.push(Op::LinearWeightGrad, &[dy, h]).unwrap();
            let gain = b.input("gain", ty(&[8]));
            let normed = b.push(Op::RmsNorm { eps: 1e-5 }, &[gate, gain]).unwrap();
            let scores = b.push(Op::Linear, &[normed, w]).unwrap();
            let positions = b.input("positions", TensorType::new(DType::I32, Shape::new([4])));
            let rope = Op::Rope {
                base: 10000.0,
                layout: fairyc_ir::RopeLayout::HalfSplit,
                head_dim: 4,
            };
            let rotated = b.push(rope, &[up, positions]).unwrap();
            let turned = b.push(Op::Linear, &[rotated, w]).unwrap();
            let mut outputs = vec![y, dw, scores, turned];
            match also {
                Some("output") => outputs.push(h),
                Some("elementwise") => outputs.push(b.push(Op::Add, &[h, up]).unwrap()),
                _ => {}
            }
            (b.finish(&outputs), [h, dy, normed, rotated])
        };
        let writes_bf16 = |graph: &fairyc_ir::Graph, options: &crate::cuda::Cuda, v: ValueId| {
            let (kernels, steps) = default_selection(graph, options).unwrap();
            match &steps[v.0] {
                Some(Step::Fused { kernel: k, .. }) => kernels[*k].writes_bf16(),
                Some(Step::Kernel(ks)) => kernels[ks[0]].writes_bf16(),
                other => panic!("{v:?}: {}", other.is_some()),
            }
        };
        let (g, [h, dy, normed, rotated]) = graph(None);
        assert!(writes_bf16(&g, &bf16, h), "SiLU(gate)·up");
        assert!(writes_bf16(&g, &bf16, normed), "a normed row");
        assert!(writes_bf16(&g, &bf16, rotated), "a rotated row");
        assert!(writes_bf16(&g, &bf16, dy), "the logits' gradient");
        assert!(
            !writes_bf16(&g, &on(GpuActivations::F32), h),
            "f32 products"
        );
        for also in ["output", "elementwise"] {
            let (g, [h, dy, ..]) = graph(Some(also));
            assert!(!writes_bf16(&g, &bf16, h), "{also}");
            assert!(writes_bf16(&g, &bf16, dy), "{also}");
        }
        let (kernels, _) = default_selection(&graph(None).0, &bf16).unwrap();
        assert!(
            !kernels.contains(&Kernel::CrossEntropyGrad {
                bf16: false,
                kept: false
            }),
            "the f32 kernel is not kept"
        );
    }

    /// `dy · transpose(w)` reads `w` and has cuBLAS transpose it; the
    /// transpose is computed only while another step reads it.
    #[test]
    fn a_transposed_weight_is_folded_into_its_product() {
        let graph = |also_read: bool| {
            let mut b = GraphBuilder::new("dx");
            let dy = b.input("dy", ty(&[4, 8]));
            let w = b.input("w", ty(&[8, 6]));
            let t = b.push(Op::Transpose { perm: vec![1, 0] }, &[w]).unwrap();
            let dx = b.push(Op::Linear, &[dy, t]).unwrap();
            let mut outputs = vec![dx];
            if also_read {
                outputs.push(b.push(Op::Scale { factor: 2.0 }, &[t]).unwrap());
            }
            (steps(&b.finish(&outputs)), [dy, w, t, dx])
        };
        let (folded, [dy, w, t, dx]) = graph(false);
        assert!(
            matches!(&folded[dx.0], Some(Step::GemmTransposedWeight { operands }) if *operands == [dy, w])
        );
        assert!(folded[t.0].is_none(), "the transpose is not computed");
        let (kept, [_, _, t, dx]) = graph(true);
        assert!(matches!(
            &kept[dx.0],
            Some(Step::GemmTransposedWeight { .. })
        ));
        assert!(matches!(&kept[t.0], Some(Step::Kernel(_))));
    }

    /// A value every reader of which is elementwise is recomputed in each
    /// (never materialised); a graph output is materialised and read.
    #[test]
    fn shared_producers_are_recomputed_and_outputs_kept() {
        let mut b = GraphBuilder::new("shared");
        let x = b.input("x", ty(&[4, 8]));
        let y = b.input("y", ty(&[4, 8]));
        let s = b.input("s", ty(&[]));
        let a = b.push(Op::Mul, &[x, s]).unwrap();
        let sum = b.push(Op::Add, &[a, y]).unwrap();
        let difference = b.push(Op::Sub, &[a, y]).unwrap();
        let graph = b.finish(&[sum, difference]);
        let shared = steps(&graph);
        assert!(shared[a.0].is_none());
        for v in [sum, difference] {
            assert!(
                matches!(&shared[v.0], Some(Step::Fused { operands, .. }) if *operands == [x, s, y])
            );
        }
        let mut b = GraphBuilder::new("output");
        let x = b.input("x", ty(&[4, 8]));
        let y = b.input("y", ty(&[4, 8]));
        let a = b.push(Op::Scale { factor: 2.0 }, &[x]).unwrap();
        let sum = b.push(Op::Add, &[a, y]).unwrap();
        let kept = steps(&b.finish(&[a, sum]));
        assert!(matches!(&kept[a.0], Some(Step::Kernel(_))));
        assert!(matches!(&kept[sum.0], Some(Step::Kernel(_))));
    }

    /// A chain over more values than a kernel may read is cut: no step
    /// reads more than [`MAX_OPERANDS`], and what a reader could not adopt
    /// is materialised.
    #[test]
    fn a_chain_over_many_values_is_cut_at_the_operand_limit() {
        let mut b = GraphBuilder::new("wide");
        let inputs: Vec<_> = (0..2 * MAX_OPERANDS)
            .map(|k| b.input(format!("x{k}"), ty(&[4, 8])))
            .collect();
        let mut sums = vec![inputs[0]];
        for &x in &inputs[1..] {
            let last = *sums.last().unwrap();
            sums.push(b.push(Op::Add, &[last, x]).unwrap());
        }
        let total = *sums.last().unwrap();
        let steps = steps(&b.finish(&[total]));
        let reads = |i: usize| match &steps[i] {
            Some(Step::Fused { operands, .. }) => operands.len(),
            Some(_) => 2,
            None => 0,
        };
        assert!((0..steps.len()).all(|i| reads(i) <= MAX_OPERANDS));
        assert!(steps[total.0].is_some());
        let materialised = sums[1..].iter().filter(|v| steps[v.0].is_some()).count();
        assert!(materialised >= 2, "{materialised} sums materialised");
    }

    /// A value of another shape than its reader (a scalar broadcast over a
    /// matrix) is computed once, not once per element.
    #[test]
    fn a_broadcast_operand_is_not_inlined() {
        let mut b = GraphBuilder::new("broadcast");
        let x = b.input("x", ty(&[4, 8]));
        let s = b.input("s", ty(&[]));
        let half = b.push(Op::Scale { factor: 0.5 }, &[s]).unwrap();
        let out = b.push(Op::Mul, &[x, half]).unwrap();
        let steps = steps(&b.finish(&[out]));
        assert!(matches!(&steps[half.0], Some(Step::Kernel(_))));
        assert!(matches!(&steps[out.0], Some(Step::Kernel(_))));
    }

    /// The widely-linear form around an int8 `quant_linear`: the `pack`
    /// of a normed row that two products read, and the `unpack` of each
    /// product's output, fold into the products; an output that another
    /// node reads too keeps its own step and its unpack.
    #[test]
    fn pack_and_unpack_fold_into_int8_products() {
        use super::super::Kernel;

        let mut b = GraphBuilder::new("paired");
        let x = b.input("x", ty(&[3, 32]));
        let packed = b.push(Op::Pack { block: 0 }, &[x]).unwrap();
        let product = |b: &mut GraphBuilder, name: &str| {
            let weights = stage_weights(b, name, [8, 16]);
            quant_linear(b, packed, &weights)
        };
        let (q, k) = (product(&mut b, "q"), product(&mut b, "k"));
        let q_real = b.push(Op::Unpack { block: 0 }, &[q]).unwrap();
        let k_real = b.push(Op::Unpack { block: 0 }, &[k]).unwrap();
        let k_twice = b.push(Op::Scale { factor: 2.0 }, &[k]).unwrap();
        let graph = b.finish(&[q_real, k_real, k_twice]);
        let (kernels, steps) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
        assert!(steps[packed.0].is_none(), "the pack is folded away");
        assert!(steps[q.0].is_none(), "q is computed at its unpack");
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            node,
            pack,
            unpack,
            ..
        }) = &steps[q_real.0]
        else {
            panic!("q's unpack is not the paired product");
        };
        assert_eq!(
            (*node, *pack, *unpack),
            (q.0, Some(packed.0), Some(q_real.0))
        );
        assert_eq!(operands[0], x);
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                paired_input: true,
                paired_output: true,
                ..
            }
        ));
        let Some(Step::PairedQuantLinear { kernel, unpack, .. }) = &steps[k.0] else {
            panic!("k is not paired on its input");
        };
        assert_eq!(*unpack, None);
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                paired_input: true,
                paired_output: false,
                ..
            }
        ));
        assert!(matches!(&steps[k_real.0], Some(Step::Kernel(_))));
    }

    /// The RMS norm that the paired products' pack reads folds into them
    /// (the kernel reads the row before it, and its gain), unless another
    /// step reads the normed row too.
    #[test]
    fn an_rms_norm_folds_into_the_products_that_read_it() {
        use super::super::Kernel;

        let graph = |also_read: bool| {
            let mut b = GraphBuilder::new("normed");
            let x = b.input("x", ty(&[3, 32]));
            let gain = b.input("gain", ty(&[32]));
            let normed = b.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]).unwrap();
            let packed = b.push(Op::Pack { block: 0 }, &[normed]).unwrap();
            let weights = stage_weights(&mut b, "w", [8, 16]);
            let product = quant_linear(&mut b, packed, &weights);
            let real = b.push(Op::Unpack { block: 0 }, &[product]).unwrap();
            let mut outputs = vec![real];
            if also_read {
                outputs.push(b.push(Op::Scale { factor: 2.0 }, &[normed]).unwrap());
            }
            let graph = b.finish(&outputs);
            let (kernels, steps) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
            (kernels, steps, [x, gain, normed, real])
        };
        let (kernels, steps, [x, gain, normed, real]) = graph(false);
        assert!(steps[normed.0].is_none(), "the norm is folded away");
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            norm,
            ..
        }) = &steps[real.0]
        else {
            panic!("the unpack is not the paired product");
        };
        assert_eq!(*norm, Some(normed.0));
        assert_eq!((operands[0], operands.last()), (x, Some(&gain)));
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                normed: true,
                paired_input: true,
                paired_output: true,
                ..
            }
        ));
        let (_, steps, [_, _, normed, real]) = graph(true);
        assert!(matches!(&steps[normed.0], Some(Step::Kernel(_))));
        assert!(matches!(
            &steps[real.0],
            Some(Step::PairedQuantLinear { norm: None, .. })
        ));
    }

    /// A paired product moves to tensor cores where its codes are weights
    /// (held at load, re-packed there) and its shapes suit the kernel;
    /// codes the step reads as inputs, and inputs not whole chunks, keep
    /// `dp4a`.
    #[test]
    fn held_codes_of_whole_chunks_take_tensor_cores() {
        use super::super::Kernel;
        use crate::cuda::{Cuda, Int8Products};

        let options = Cuda {
            int8_products: Int8Products::TensorCores,
            ..Cuda::default()
        };
        let mut b = GraphBuilder::new("tensor cores");
        let mut outputs = Vec::new();
        // Codes as weights, 32 and 16 complex inputs; codes as inputs.
        for (name, m, held) in [("held", 32, true), ("narrow", 16, true), ("fed", 32, false)] {
            let x = b.input(format!("{name}.x"), ty(&[3, 2 * m]));
            let packed = b.push(Op::Pack { block: 0 }, &[x]).unwrap();
            let mut weights = stage_weights(&mut b, name, [24, m]);
            if held {
                let codes = TensorType::new(DType::Code2, Shape::new([24, m]));
                weights[0] = b.weight(format!("{name}.u.codes"), codes.clone());
                weights[2] = b.weight(format!("{name}.w.codes"), codes);
            }
            let product = quant_linear(&mut b, packed, &weights);
            outputs.push(b.push(Op::Unpack { block: 0 }, &[product]).unwrap());
        }
        let graph = b.finish(&outputs);
        let (kernels, steps) = default_selection(&graph, &options).unwrap();
        let on_tensor_cores: Vec<bool> = outputs
            .iter()
            .map(|v| match &steps[v.0] {
                Some(Step::PairedQuantLinear { kernel, .. }) => matches!(
                    kernels[*kernel],
                    Kernel::QuantLinearI8 {
                        tensor_cores: true,
                        ..
                    }
                ),
                _ => panic!("%{} is not a paired product", v.0),
            })
            .collect();
        assert_eq!(on_tensor_cores, [true, false, false]);
        let codes = super::tensor_core_codes(&graph, &kernels, &steps).unwrap();
        assert_eq!(codes.len(), 2, "the held product's two stages");
        assert!(codes.iter().all(|(_, shape)| *shape == [24, 32]));
        // By default, none.
        let (kernels, _) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
        assert!(!kernels.iter().any(|k| matches!(
            k,
            Kernel::QuantLinearI8 {
                tensor_cores: true,
                ..
            }
        )));
    }

    /// Each paired `dp4a` product gets a way to run on rows quantized once,
    /// with the folds its own kernel has (here the norm) moved into the
    /// quantizer: prompts take it at every width, a single row only from
    /// `QUANTIZE_ONCE_INPUTS` inputs (or always, with
    /// `RowQuantization::Once`); `RowQuantization::InEachBlock` gives none.
    #[test]
    fn rows_are_quantized_once_where_it_pays() {
        use super::super::Kernel;
        use crate::cuda::RowQuantization;

        let narrow = 32;
        let wide = super::QUANTIZE_ONCE_INPUTS;
        let mut b = GraphBuilder::new("rows_once");
        let mut outputs = Vec::new();
        for m in [narrow, wide] {
            let x = b.input(format!("x{m}"), ty(&[3, 2 * m]));
            let gain = b.input(format!("gain{m}"), ty(&[2 * m]));
            let normed = b.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]).unwrap();
            let packed = b.push(Op::Pack { block: 0 }, &[normed]).unwrap();
            let weights = stage_weights(&mut b, &format!("p{m}"), [8, m]);
            let product = quant_linear(&mut b, packed, &weights);
            outputs.push(b.push(Op::Unpack { block: 0 }, &[product]).unwrap());
        }
        let graph = b.finish(&outputs);
        let quantized = |rows: RowQuantization| {
            let options = crate::cuda::Cuda {
                row_quantization: rows,
                ..on(GpuActivations::Int8)
            };
            let (kernels, steps) = default_selection(&graph, &options).unwrap();
            outputs
                .iter()
                .map(|v| match &steps[v.0] {
                    Some(Step::PairedQuantLinear { quantized, .. }) => quantized.map(|q| {
                        assert_eq!(
                            kernels[q.quantize],
                            Kernel::QuantizeRowsI8 {
                                paired_input: true,
                                normed: true,
                                prologue: None,
                                tensor_cores: false,
                            }
                        );
                        assert!(matches!(
                            kernels[q.product],
                            Kernel::QuantLinearI8Rows {
                                paired_output: true,
                                products: 1,
                                tensor_cores: false,
                                ..
                            }
                        ));
                        q.one_row
                    }),
                    _ => panic!("%{} is not a paired product", v.0),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            quantized(RowQuantization::ByWidth),
            [Some(false), Some(true)]
        );
        assert_eq!(quantized(RowQuantization::Once), [Some(true), Some(true)]);
        assert_eq!(quantized(RowQuantization::InEachBlock), [None, None]);
    }

    /// A decoding step's RoPEs run inside their readers: the queries' in
    /// the attention over the cache, the keys' in the cache's append; the
    /// values' append stays plain, and a rope with a second reader (here an
    /// output) is left alone.
    #[test]
    fn ropes_fold_into_the_cache_attention_and_the_keys_append() {
        use super::super::Kernel;
        use fairyc_ir::{Dim, RopeLayout};

        let rows = |width: usize| {
            TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::Fixed(width)]))
        };
        let mut b = GraphBuilder::new("roped");
        let (q, k, v) = (
            b.input("q", rows(16)),
            b.input("k", rows(8)),
            b.input("v", rows(8)),
        );
        let positions = b.input(
            "positions",
            TensorType::new(DType::I32, Shape(vec![Dim::sym("seq")])),
        );
        let rope = Op::Rope {
            base: 10000.0,
            layout: RopeLayout::HalfSplit,
            head_dim: 4,
        };
        let roped_q = b.push(rope.clone(), &[q, positions]).unwrap();
        let roped_k = b.push(rope.clone(), &[k, positions]).unwrap();
        let attention = Op::Attention {
            heads: 4,
            kv_heads: 2,
            scale: 0.5,
            causal: true,
            segment: None,
        };
        let out = b.push(attention.clone(), &[roped_q, roped_k, v]).unwrap();
        let graph = crate::state::expose_kv_cache(&b.finish(&[out])).unwrap();
        let (kernels, steps) = default_selection(&graph, &on(GpuActivations::F32)).unwrap();
        let node = |op: &dyn Fn(&Op) -> bool| {
            (0..graph.nodes.len())
                .filter(|&i| op(&graph.nodes[i].op))
                .collect::<Vec<_>>()
        };
        for r in node(&|op| matches!(op, Op::Rope { .. })) {
            assert!(steps[r].is_none(), "%{r}, a rope, still runs");
        }
        let [attend] = node(&|op| matches!(op, Op::Attention { .. }))[..] else {
            panic!("one attention");
        };
        let Some(Step::Roped {
            kernel, operands, ..
        }) = &steps[attend]
        else {
            panic!(
                "the attention reads the queries unrotated: {:?}",
                steps[attend].is_some()
            );
        };
        assert!(matches!(
            kernels[*kernel],
            Kernel::Attention {
                d: 4,
                rope: Some(RopeLayout::HalfSplit),
                ..
            }
        ));
        assert_eq!((operands[0], operands[3]), (q, positions));
        let appends = node(&|op| matches!(op, Op::Concat { .. }));
        let kinds: Vec<_> = appends
            .iter()
            .map(|&c| match &steps[c] {
                Some(Step::Roped {
                    kernel, operands, ..
                }) => {
                    assert_eq!(operands[1..], [k, positions]);
                    kernels[*kernel].clone()
                }
                Some(Step::Kernel(ks)) => kernels[ks[0]].clone(),
                _ => panic!("%{c} has no kernel"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                Kernel::AppendRows {
                    rope: Some(RopeLayout::HalfSplit)
                },
                Kernel::AppendRows { rope: None }
            ]
        );

        // The queries' rope also an output: it runs as itself.
        let mut kept = graph.clone();
        let query_rope = graph.node(graph.nodes[attend].operands[0]);
        assert!(matches!(query_rope.op, Op::Rope { .. }));
        kept.outputs.push(graph.nodes[attend].operands[0]);
        let (_, steps) = default_selection(&kept, &on(GpuActivations::F32)).unwrap();
        assert!(matches!(steps[attend], Some(Step::Kernel(_))));
        assert!(steps[graph.nodes[attend].operands[0].0].is_some());
    }

    /// The paired products of one normed row are one launch, at the first
    /// one's step, with the others' weights after its own; a product whose
    /// weights are computed after that step stays a launch of its own.
    #[test]
    fn products_of_one_row_are_one_launch() {
        use super::super::{Kernel, Sibling};

        let mut b = GraphBuilder::new("siblings");
        let x = b.input("x", ty(&[3, 32]));
        let gain = b.input("gain", ty(&[32]));
        let normed = b.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]).unwrap();
        let packed = b.push(Op::Pack { block: 0 }, &[normed]).unwrap();
        let mut outputs = Vec::new();
        let mut all_weights = Vec::new();
        for name in ["q", "k", "v"] {
            let w = stage_weights(&mut b, name, [8, 16]);
            let product = quant_linear(&mut b, packed, &w);
            outputs.push((
                product,
                b.push(Op::Unpack { block: 0 }, &[product]).unwrap(),
            ));
            all_weights.push(w);
        }
        // Scales computed after q's step: not ready there.
        let mut late = stage_weights(&mut b, "late", [8, 16]);
        late[1] = b.push(Op::Scale { factor: 2.0 }, &[late[1]]).unwrap();
        let late_product = quant_linear(&mut b, packed, &late);
        let late_real = b.push(Op::Unpack { block: 0 }, &[late_product]).unwrap();
        let graph = b.finish(&[outputs[0].1, outputs[1].1, outputs[2].1, late_real]);
        let (kernels, steps) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            siblings,
            ..
        }) = &steps[outputs[0].1 .0]
        else {
            panic!("q's unpack is not the paired product");
        };
        let expected: Vec<Sibling> = outputs[1..]
            .iter()
            .map(|&(product, real)| Sibling {
                node: product.0,
                at: real.0,
                unpack: Some(real.0),
            })
            .collect();
        assert_eq!(siblings, &expected);
        let expected_operands = [vec![x], all_weights.concat(), vec![gain]].concat();
        assert_eq!(operands, &expected_operands);
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                products: 3,
                residual: false,
                prologue: None,
                normed: true,
                ..
            }
        ));
        for (_, real) in &outputs[1..] {
            assert!(matches!(steps[real.0], Some(Step::Ahead)));
        }
        assert!(matches!(
            &steps[late_real.0],
            Some(Step::PairedQuantLinear { siblings, .. }) if siblings.is_empty()
        ));
    }

    /// The add of a residual row folds into the product before it; a
    /// product so folded does not join another's launch.
    #[test]
    fn a_residual_add_folds_into_the_product() {
        use super::super::Kernel;

        let mut b = GraphBuilder::new("residual");
        let x = b.input("x", ty(&[3, 32]));
        let packed = b.push(Op::Pack { block: 0 }, &[x]).unwrap();
        let product = |b: &mut GraphBuilder, name: &str| {
            let weights = stage_weights(b, name, [16, 16]);
            let product = quant_linear(b, packed, &weights);
            b.push(Op::Unpack { block: 0 }, &[product]).unwrap()
        };
        let o = product(&mut b, "o");
        let sum = b.push(Op::Add, &[x, o]).unwrap();
        let other = product(&mut b, "other");
        let graph = b.finish(&[sum, other]);
        let (kernels, steps) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
        assert!(steps[o.0].is_none(), "the product moves to the add");
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            residual,
            siblings,
            ..
        }) = &steps[sum.0]
        else {
            panic!("the residual add is not the paired product");
        };
        assert_eq!((*residual, operands.last()), (Some(sum.0), Some(&x)));
        assert!(siblings.is_empty());
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                residual: true,
                prologue: None,
                products: 1,
                ..
            }
        ));
        assert!(matches!(
            &steps[other.0],
            Some(Step::PairedQuantLinear { residual: None, siblings, .. }) if siblings.is_empty()
        ));
    }

    /// The elementwise SiLU(gate)·up that the product's pack reads folds
    /// into the product (the kernel computes it as it quantizes the row);
    /// one that another step reads too stays a kernel.
    #[test]
    fn an_elementwise_input_folds_into_the_product() {
        use super::super::Kernel;

        let graph = |also_read: bool| {
            let mut b = GraphBuilder::new("prologue");
            let (gate, up) = (b.input("gate", ty(&[3, 32])), b.input("up", ty(&[3, 32])));
            let activated = b.push(Op::Silu, &[gate]).unwrap();
            let gated = b.push(Op::Mul, &[activated, up]).unwrap();
            let packed = b.push(Op::Pack { block: 0 }, &[gated]).unwrap();
            let weights = stage_weights(&mut b, "down", [8, 16]);
            let product = quant_linear(&mut b, packed, &weights);
            let mut outputs = vec![b.push(Op::Unpack { block: 0 }, &[product]).unwrap()];
            if also_read {
                outputs.push(b.push(Op::Scale { factor: 2.0 }, &[gated]).unwrap());
            }
            let graph = b.finish(&outputs);
            let (kernels, steps) = default_selection(&graph, &on(GpuActivations::Int8)).unwrap();
            (kernels, steps, [gate, up, gated, outputs[0]])
        };
        let (kernels, steps, [gate, up, gated, real]) = graph(false);
        assert!(
            steps[gated.0].is_none(),
            "the elementwise step is folded away"
        );
        let Some(Step::PairedQuantLinear {
            kernel,
            operands,
            prologue,
            ..
        }) = &steps[real.0]
        else {
            panic!("the unpack is not the paired product");
        };
        assert_eq!(*prologue, Some((gated.0, 2)));
        assert_eq!(operands[..2], [gate, up]);
        assert_eq!(operands.len(), 6);
        assert!(matches!(
            kernels[*kernel],
            Kernel::QuantLinearI8 {
                prologue: Some(_),
                ..
            }
        ));
        let (_, steps, [_, _, gated, real]) = graph(true);
        assert!(steps[gated.0].is_some());
        assert!(matches!(
            &steps[real.0],
            Some(Step::PairedQuantLinear { prologue: None, .. })
        ));
    }
}
