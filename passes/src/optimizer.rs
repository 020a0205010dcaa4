//! The optimizer as IR: a training step is the forward graph, its backward
//! nodes ([`crate::autodiff`]) and each parameter's update (plain SGD, or
//! AdamW with its moments as state), optionally as one rank of several
//! GPUs ([`Replicas`]: gradients summed in buckets, updates by each
//! parameter's owner, masters held one rank each through [`crate::shard`]).

use std::collections::{HashMap, HashSet};

use fairyc_ir::{verify, DType, Graph, GraphBuilder, Op, OpKind, TensorType, ValueId};

use crate::autodiff::{backward, finish, GradError, GradOptions};

/// One step of plain SGD as IR: the forward graph, its backward nodes, and
/// `p - lr · dp` for every parameter. Outputs are `[loss, p_0', p_1', ...]`
/// (the loss before the step); running it and storing each `p_i'` as the
/// new value of `params[i]` trains the model. A parameter the loss does
/// not depend on comes back unchanged.
pub fn sgd_step(
    graph: &Graph,
    loss: ValueId,
    params: &[ValueId],
    lr: f32,
    options: &GradOptions,
) -> Result<Graph, GradError> {
    let (mut b, grads) = backward(graph, loss, params, options)?;
    let mut outputs = vec![loss];
    for (&p, d) in params.iter().zip(grads) {
        outputs.push(match d {
            Some(d) => {
                let step = b.push(Op::Scale { factor: lr }, &[d])?;
                b.push(Op::Sub, &[p, step])?
            }
            None => p,
        });
    }
    finish(b, &outputs)
}

/// AdamW's hyper-parameters (the learning rate and the weight decay are
/// inputs per step, so that schedules can move them).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Clip the (mean) gradient to this global L2 norm; `None` never clips.
    pub clip: Option<f32>,
}

impl Default for AdamW {
    /// The Fairy2i authors' recipe: betas (0.9, 0.95), clipping at 2.0.
    fn default() -> AdamW {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: Some(2.0),
        }
    }
}

/// One AdamW update as IR, for the parameters `params` (by name and
/// type). All of its state comes in as inputs, so that a trainer moves its
/// tensors in and out without copies: for each parameter `p`, its value
/// `param.<name>`, its gradient `grad.<name>` (a sum over micro-batches)
/// and its moments `adam.m.<name>` and `adam.v.<name>`; and the `f32[]`
/// scalars `grad_scale` (`1/micro-batches`), `lr`, `c1 = 1/(1-β1^t)`,
/// `c2 = 1/(1-β2^t)` and `weight_decay`. The mean gradient is clipped to
/// `adam.clip` by its global norm.
/// Outputs: `[‖mean gradient‖², p_0', ..., m_0', ..., v_0', ...]`.
pub fn adamw_update(params: &[(String, TensorType)], adam: &AdamW) -> Result<Graph, GradError> {
    adamw_update_on(params, adam, &Replicas::One)
}

/// [`adamw_update`] as `replicas` runs it: with a sharded optimizer, only
/// the parameters this rank owns have moments here and are updated; every
/// new parameter is its owner's, broadcast (the outputs' moments are the
/// owned parameters', in order). With sharded masters the parameters it
/// does not own are not here at all.
fn adamw_update_on(
    params: &[(String, TensorType)],
    adam: &AdamW,
    replicas: &Replicas,
) -> Result<Graph, GradError> {
    let mut b = GraphBuilder::new("adamw_update");
    let scalar = TensorType::new(DType::F32, fairyc_ir::Shape(vec![]));
    let [grad_scale, lr, c1, c2, weight_decay] =
        ["grad_scale", "lr", "c1", "c2", "weight_decay"].map(|n| b.input(n, scalar.clone()));
    let mut grads = Vec::new();
    for (name, ty) in params {
        let summed = b.input(format!("grad.{name}"), ty.clone());
        grads.push(b.push(Op::Mul, &[summed, grad_scale])?);
    }
    let mut squares = None;
    for &g in &grads {
        let s = b.push(Op::SumSquares, &[g])?;
        squares = Some(match squares {
            None => s,
            Some(acc) => b.push(Op::Add, &[acc, s])?,
        });
    }
    let Some(squares) = squares else {
        return finish(b, &[]);
    };
    if let Some(max_norm) = adam.clip {
        let factor = b.push(Op::ClipFactor { max_norm }, &[squares])?;
        for g in &mut grads {
            *g = b.push(Op::Mul, &[*g, factor])?;
        }
    }
    let (mut new_p, mut new_m, mut new_v) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ((name, ty), g)) in params.iter().zip(grads).enumerate() {
        if !replicas.holds_master(i) {
            // Its owner alone holds and updates it.
            continue;
        }
        let p = b.input(format!("param.{name}"), ty.clone());
        let owner = replicas.owner(i);
        if !replicas.updates(i) {
            // Another rank's: its new value comes from there.
            let root = owner.expect("only a sharded optimizer leaves parameters to others");
            new_p.push(b.push(Op::BroadcastFrom { root }, &[p])?);
            continue;
        }
        let m = b.input(format!("adam.m.{name}"), ty.clone());
        let v = b.input(format!("adam.v.{name}"), ty.clone());
        let decay = |b: &mut GraphBuilder, x, beta: f32, y| -> Result<ValueId, GradError> {
            let kept = b.push(Op::Scale { factor: beta }, &[x])?;
            let added = b.push(Op::Scale { factor: 1.0 - beta }, &[y])?;
            Ok(b.push(Op::Add, &[kept, added])?)
        };
        let m2 = decay(&mut b, m, adam.beta1, g)?;
        let g2 = b.push(Op::Mul, &[g, g])?;
        let v2 = decay(&mut b, v, adam.beta2, g2)?;
        let update = Op::AdamUpdate { eps: adam.eps };
        let updated = b.push(update, &[p, m2, v2, lr, c1, c2, weight_decay])?;
        new_p.push(match owner {
            // The others take its new value from here.
            Some(root) => b.push(Op::BroadcastFrom { root }, &[updated])?,
            None => updated,
        });
        new_m.push(m2);
        new_v.push(v2);
    }
    let mut outputs = vec![squares];
    outputs.extend(new_p);
    outputs.extend(new_m);
    outputs.extend(new_v);
    finish(b, &outputs)
}

/// A whole optimizer step as one graph, for a trainer whose master
/// weights and moments stay where the graph runs (on a GPU, in its
/// memory): `grads` (from [`crate::autodiff::gradients`]: outputs `[loss, d(p_0), ...]` for
/// the weights `params`, in that order) with each of those weights read
/// from an input of the same name instead, the master; then
/// [`adamw_update`] on its gradients. So the weights the masters derive
/// (the quantized ones) are computed once a step, in the step.
///
/// Inputs: `grads`'s own, the masters `<name>`, the moments `adam.m.<name>`
/// and `adam.v.<name>`, and [`adamw_update`]'s scalars. Outputs: `[loss,
/// ‖mean gradient‖², p_0', ..., m_0', ..., v_0', ...]`: the last ones are the
/// next step's masters and moments, in the order [`step_state`] names them.
///
/// `Replicas::DataParallel` makes it the step of one of several ranks, each
/// running it on its own windows with identical masters and moments: the
/// loss and each gradient are weighted by the input [`RANK_SHARE`]
/// (the rank's fraction of the step's windows) and summed over the ranks
/// (`all_reduce`) before the update, so every rank updates alike.
/// `Replicas::ShardedOptimizer` does the same, but each parameter is
/// updated by its owner alone, which broadcasts it, and the graph's
/// moments (inputs and outputs) are the owned parameters' alone.
/// `Replicas::ShardedMasters` keeps the masters there too: the step reads
/// the others' quantized weights from their owners' broadcasts
/// ([`crate::shard::shard_masters`]), and its state is the owned masters
/// and their moments.
pub fn adamw_step(
    grads: &Graph,
    params: &[(String, TensorType)],
    adam: &AdamW,
    replicas: &Replicas,
) -> Result<Graph, GradError> {
    if grads.outputs.len() != params.len() + 1 {
        return Err(GradError::Step(format!(
            "the gradient graph has {} outputs for {} parameters (expected the loss and one gradient each)",
            grads.outputs.len(),
            params.len()
        )));
    }
    replicas.check(params.len())?;
    let sharded;
    let grads = match replicas {
        Replicas::ShardedMasters { rank, owners } => {
            let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
            sharded = crate::shard::shard_masters(grads, &names, *rank, owners)?;
            &sharded
        }
        _ => grads,
    };
    let update = adamw_update_on(params, adam, replicas)?;
    let mut b = GraphBuilder::new(format!("{}_step", grads.name));
    for (k, v) in &grads.meta {
        b.meta(k.clone(), v.clone());
    }
    let trained: HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let map = b.inline(grads, |b, _, node, _| {
        Ok::<_, GradError>(match &node.op {
            Op::Weight { name } if trained.contains(name.as_str()) => {
                Some(b.input(name.clone(), node.ty.clone()))
            }
            _ => None,
        })
    })?;
    let masters: HashMap<&str, ValueId> = grads
        .weights()
        .filter(|(_, name, _)| trained.contains(name))
        .map(|(id, name, _)| (name, map[id.0]))
        .collect();
    let mut loss = map[grads.outputs[0].0];
    let mut gradient: HashMap<String, ValueId> = params
        .iter()
        .zip(&grads.outputs[1..])
        .map(|((name, _), d)| (format!("grad.{name}"), map[d.0]))
        .collect();
    if *replicas != Replicas::One {
        let share = b.input(
            RANK_SHARE,
            TensorType::new(DType::F32, fairyc_ir::Shape(vec![])),
        );
        let weighted = b.push(Op::Mul, &[loss, share])?;
        loss = b.push(Op::AllReduce, &[weighted])?;
        let grads: Vec<ValueId> = params
            .iter()
            .map(|(name, _)| gradient[&format!("grad.{name}")])
            .collect();
        let summed = all_reduce_in_buckets(&mut b, &grads, share)?;
        for ((name, _), d) in params.iter().zip(summed) {
            gradient.insert(format!("grad.{name}"), d);
        }
    }
    let inlined = b.inline(&update, |b, _, node, _| {
        let Op::Input { name } = &node.op else {
            return Ok::<_, GradError>(None);
        };
        Ok(match (gradient.get(name), name.strip_prefix("param.")) {
            (Some(&d), _) => Some(d),
            (None, Some(p)) => Some(match masters.get(p) {
                Some(&m) => m,
                // A parameter the graph does not read is still trained.
                None => b.input(p, node.ty.clone()),
            }),
            (None, None) => None,
        })
    })?;
    let mut outputs = vec![loss];
    outputs.extend(update.outputs.iter().map(|v| inlined[v.0]));
    let step = finish(b, &outputs)?;
    Ok(match replicas {
        Replicas::One => step,
        _ => {
            let hoisted = hoist_collectives(&step)?;
            verify(&hoisted)?;
            hoisted
        }
    })
}

/// The most gradient elements one `all_reduce` carries (16 MiB of f32, as
/// PyTorch's DDP buckets): a step makes a few large collectives, not one
/// per parameter, and each can start before the whole backward is done.
pub const BUCKET_ELEMENTS: usize = 1 << 22;

/// `grads` weighted by `share` and summed over the ranks, in buckets: the
/// gradients laid end to end, at most [`BUCKET_ELEMENTS`] a bucket (a
/// larger one alone), each bucket one `all_reduce`, then cut apart again.
/// The buckets take the parameters from the last, whose gradients the
/// backward pass computes first, so that the first bucket fills first;
/// [`hoist_collectives`] then moves each to where its gradients are done.
fn all_reduce_in_buckets(
    b: &mut GraphBuilder,
    grads: &[ValueId],
    share: ValueId,
) -> Result<Vec<ValueId>, GradError> {
    let sizes = grads
        .iter()
        .map(|&v| {
            let ty = b.ty(v);
            let dims = ty.shape.concrete().ok_or_else(|| {
                GradError::Step(format!(
                    "a data-parallel step needs gradients of fixed shapes, not {ty}"
                ))
            })?;
            Ok(dims.iter().product::<usize>())
        })
        .collect::<Result<Vec<usize>, GradError>>()?;
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for i in (0..grads.len()).rev() {
        if buckets.is_empty() || filled + sizes[i] > BUCKET_ELEMENTS {
            buckets.push(Vec::new());
            filled = 0;
        }
        buckets.last_mut().expect("a bucket was opened").push(i);
        filled += sizes[i];
    }
    let mut summed = vec![None; grads.len()];
    for bucket in buckets {
        let flat = bucket
            .iter()
            .map(|&i| {
                let shape = fairyc_ir::Shape::new([sizes[i]]);
                b.push(Op::Reshape { shape }, &[grads[i]])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let joined = match flat[..] {
            [one] => one,
            _ => b.push(Op::Concat { axis: 0 }, &flat)?,
        };
        let weighted = b.push(Op::Mul, &[joined, share])?;
        let reduced = b.push(Op::AllReduce, &[weighted])?;
        let mut start = 0;
        for &i in &bucket {
            let end = start + sizes[i];
            let part = match bucket.len() {
                1 => reduced,
                _ => b.push(
                    Op::Slice {
                        axis: 0,
                        start,
                        end,
                    },
                    &[reduced],
                )?,
            };
            let shape = b.ty(grads[i]).shape.clone();
            summed[i] = Some(b.push(Op::Reshape { shape }, &[part])?);
            start = end;
        }
    }
    Ok(summed
        .into_iter()
        .map(|d| d.expect("every gradient is in a bucket"))
        .collect())
}

/// `graph` with its `all_reduce`s (and the nodes that only prepare their
/// operands: the buckets' reshapes, joins and weights) moved as early as
/// their operands allow, the other nodes in their order: an `all_reduce`
/// of the last layers' gradients goes out while the backward pass goes on
/// through the first layers, which a backend that runs collectives on a
/// stream of their own overlaps.
pub fn hoist_collectives(graph: &Graph) -> Result<Graph, GradError> {
    let n = graph.nodes.len();
    let mut users = vec![Vec::new(); n];
    for (i, node) in graph.nodes.iter().enumerate() {
        for v in &node.operands {
            users[v.0].push(i);
        }
    }
    // The sums, and what feeds only them through reshapes, joins and
    // products. Every rank must make its collectives in the same order:
    // the sums depend on the forward and backward passes alone, which are
    // the same graph on every rank, so they land alike; a sharded
    // optimizer's broadcasts (whose operands differ between the owner and
    // the others) stay where they are.
    let mut early = vec![false; n];
    for i in (0..n).rev() {
        let node = &graph.nodes[i];
        early[i] = matches!(node.op, Op::AllReduce)
            || (matches!(node.op, Op::Reshape { .. } | Op::Concat { .. } | Op::Mul)
                && !users[i].is_empty()
                && users[i].iter().all(|&u| early[u]));
    }
    // The bound leaves (inputs such as the ranks' shares) first: they are
    // free. (Not `zeros`, which allocates: it stays by its reader.)
    let mut order: Vec<usize> = (0..n)
        .filter(|&i| graph.nodes[i].op.kind() == OpKind::Leaf)
        .collect();
    let mut placed = vec![false; n];
    for &i in &order {
        placed[i] = true;
    }
    let mut waiting: Vec<usize> = (0..n).filter(|&i| early[i] && !placed[i]).collect();
    // Each early node as soon as it can go, in their own order.
    let place_ready = |order: &mut Vec<usize>, placed: &mut Vec<bool>, waiting: &mut Vec<usize>| {
        let ready = |placed: &[bool], i: usize| graph.nodes[i].operands.iter().all(|v| placed[v.0]);
        while let Some(k) = waiting.iter().position(|&w| ready(placed, w)) {
            let w = waiting.remove(k);
            order.push(w);
            placed[w] = true;
        }
    };
    place_ready(&mut order, &mut placed, &mut waiting);
    for i in 0..n {
        if placed[i] || early[i] {
            continue;
        }
        order.push(i);
        placed[i] = true;
        place_ready(&mut order, &mut placed, &mut waiting);
    }
    if let Some(&w) = waiting.first() {
        return Err(GradError::Step(format!(
            "%{w} = {}: an operand comes after it",
            graph.nodes[w].op.mnemonic()
        )));
    }
    let mut new_id = vec![0; n];
    for (k, &i) in order.iter().enumerate() {
        new_id[i] = k;
    }
    let remap = |v: &ValueId| ValueId(new_id[v.0]);
    let mut g = graph.clone();
    g.nodes = order
        .iter()
        .map(|&i| {
            let node = &graph.nodes[i];
            fairyc_ir::Node {
                op: node.op.clone(),
                operands: node.operands.iter().map(remap).collect(),
                ty: node.ty.clone(),
            }
        })
        .collect();
    g.outputs = graph.outputs.iter().map(remap).collect();
    Ok(g)
}

/// The data-parallel step's input of a rank's share of the step's
/// windows (`f32[]`), by which it weights its loss and gradients.
pub const RANK_SHARE: &str = "rank_share";

/// Who runs an [`adamw_step`]: one rank on all of the step's windows, or
/// each of several data-parallel ranks on its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replicas {
    One,
    /// Every rank holds all of the optimizer's state and updates every
    /// parameter alike.
    DataParallel,
    /// ZeRO stage 1 by tensors: parameter `i`'s moments live on rank
    /// `owners[i]` alone, which updates it and broadcasts the new value to
    /// the others; this graph is rank `rank`'s.
    ShardedOptimizer {
        rank: usize,
        owners: Vec<usize>,
    },
    /// ZeRO stage 3 by tensors: parameter `i`'s master and moments live on
    /// rank `owners[i]` alone, which updates it; before the forward pass it
    /// broadcasts what the others' steps read of it, a quantized weight as
    /// its 2-bit codes and scales ([`crate::shard`]). This graph is rank
    /// `rank`'s.
    ShardedMasters {
        rank: usize,
        owners: Vec<usize>,
    },
}

impl Replicas {
    /// The rank that updates parameter `i` and broadcasts its new value,
    /// where the optimizer alone is sharded. (With sharded masters nothing
    /// is sent after the update: the next step's broadcasts carry it.)
    fn owner(&self, i: usize) -> Option<usize> {
        match self {
            Replicas::ShardedOptimizer { owners, .. } => Some(owners[i]),
            _ => None,
        }
    }

    /// Whether this graph's rank updates parameter `i` (and keeps its
    /// moments).
    fn updates(&self, i: usize) -> bool {
        match self {
            Replicas::ShardedOptimizer { rank, owners }
            | Replicas::ShardedMasters { rank, owners } => owners[i] == *rank,
            _ => true,
        }
    }

    /// Whether this graph's rank holds parameter `i`'s master.
    fn holds_master(&self, i: usize) -> bool {
        match self {
            Replicas::ShardedMasters { rank, owners } => owners[i] == *rank,
            _ => true,
        }
    }

    /// An error unless a sharded optimizer names an owner for each of
    /// `params` parameters.
    fn check(&self, params: usize) -> Result<(), GradError> {
        match self {
            Replicas::ShardedOptimizer { owners, .. } | Replicas::ShardedMasters { owners, .. }
                if owners.len() != params =>
            {
                Err(GradError::Step(format!(
                    "sharded ranks name the owners of {} parameters, not {params}",
                    owners.len()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Each parameter's owner among `ranks` ranks, for
/// [`Replicas::ShardedOptimizer`] and [`Replicas::ShardedMasters`]: the
/// largest first, each to the rank that owns the fewest elements so far
/// (the lowest on a tie), so that the ranks' shares of the moments (and
/// masters) are near equal.
pub fn parameter_owners(params: &[(String, TensorType)], ranks: usize) -> Vec<usize> {
    let size = |ty: &TensorType| {
        ty.shape
            .concrete()
            .map_or(0, |d| d.iter().product::<usize>())
    };
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&params[i].1)));
    let mut load = vec![0usize; ranks.max(1)];
    let mut owners = vec![0; params.len()];
    for i in order {
        let rank = (0..load.len())
            .min_by_key(|&r| (load[r], r))
            .expect("a rank");
        load[rank] += size(&params[i].1);
        owners[i] = rank;
    }
    owners
}

/// [`adamw_step`]'s state inputs (name and type), in the order of its last
/// outputs: the masters, then the first moments, then the second (with a
/// sharded optimizer, of the parameters this rank owns; with sharded
/// masters, the masters too).
pub fn step_state(
    params: &[(String, TensorType)],
    replicas: &Replicas,
) -> Vec<(String, TensorType)> {
    let masters = params
        .iter()
        .enumerate()
        .filter(|(i, _)| replicas.holds_master(*i))
        .map(|(_, (n, ty))| (n.clone(), ty.clone()));
    let owned: Vec<&(String, TensorType)> = params
        .iter()
        .enumerate()
        .filter(|(i, _)| replicas.updates(*i))
        .map(|(_, p)| p)
        .collect();
    let moments = ["adam.m.", "adam.v."].into_iter().flat_map(|prefix| {
        owned
            .iter()
            .map(move |(n, ty)| (format!("{prefix}{n}"), ty.clone()))
    });
    masters.chain(moments).collect()
}
