//! The reference executor: runs any verified graph on the CPU in f32 and
//! complex f32, node by node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use fairyc_ir::quant::{self, Pairing};
use fairyc_ir::{
    verify, verify_weights, Arithmetic, AttentionOperand, DType, Dim, Granularity, Graph,
    NormOperand, Op, Scheme, Shape, SharedBytes, TensorType, UnaryFn, WeightStore, WlPart,
};
use num_complex::Complex32;
use rayon::prelude::*;

use super::kernels::attention::{attention, AttentionShape};
use super::kernels::norm::{rms_norm_complex_into, rms_norm_into};
use super::kernels::quant_linear::{quant_linear, StageCodes};
use super::kernels::rope::{rope_complex_into, rope_into};
use super::kernels::{elementwise, grad, layout, linear::linear, sampling};
use crate::plan::MemoryPlan;
use crate::profile::{self, OpProfile};
use crate::tensor::{Data, Recycled, Tensor};
use crate::{BackendError, Program};

/// A graph bound to its weights, ready to run.
pub struct Executor {
    graph: Graph,
    /// Values that depend on weights alone (weights and weight expressions
    /// such as quantized weights), evaluated once at load, by node. Only
    /// those that input-dependent nodes read are kept.
    constants: HashMap<usize, Arc<Tensor>>,
    /// Which nodes depend on weights alone (`plan.resident`) and when each
    /// value dies (`plan.last_use`): values are freed after their last reader.
    plan: MemoryPlan,
    /// A backend's own kernels for some nodes ([`Kernels`]), by node.
    kernels: HashMap<usize, Box<dyn NodeKernel>>,
    profile: Option<OpProfile>,
    /// Tensors of dead values by plan slot, kept between runs so that a
    /// run allocates no values once warm: one arena per run in flight.
    arenas: Mutex<Vec<Arena>>,
    /// Its own threads, where it waits on other programs mid-run (a
    /// data-parallel rank's `all_reduce`): waiting on a worker of the
    /// shared pool could leave no worker for the rank it waits for.
    pool: Option<rayon::ThreadPool>,
}

/// Operands a node has on the stack (a quant_linear of four stages has 9).
const OPERANDS: usize = 12;

/// Dead values' tensors by the memory plan's slot ([`MemoryPlan::slot`]),
/// at most one per element type: the slot's next value is built in them.
/// Emptied tensors (whose data left as an output, or inputs') keep their
/// allocation for values that bring their own data (inputs, caches
/// appended in place); the value list is kept too.
#[derive(Default)]
struct Arena {
    slots: Vec<Vec<Arc<Tensor>>>,
    emptied: Vec<Arc<Tensor>>,
    values: Vec<Option<Arc<Tensor>>>,
}

impl Arena {
    /// A tensor of slot `slot` for a value of `dtype`: the one of that type
    /// if it has a buffer, else an emptied one (its buffers grow).
    fn take(&mut self, slot: usize, dtype: DType) -> Option<Arc<Tensor>> {
        let fits = |t: &Arc<Tensor>| {
            matches!(
                (&t.data, dtype),
                (Data::F32(_), DType::F32)
                    | (Data::C64(_), DType::C64)
                    | (Data::I32(_), DType::I32)
            )
        };
        let list = self.slots.get_mut(slot);
        match list.and_then(|l| l.iter().position(fits).map(|k| l.swap_remove(k))) {
            Some(t) => Some(t),
            None => self.emptied.pop(),
        }
    }

    /// `t` in an emptied tensor's allocation.
    fn wrap(&mut self, t: Tensor) -> Arc<Tensor> {
        match self.emptied.pop() {
            Some(mut a) => {
                *Arc::get_mut(&mut a).expect("emptied tensors are unshared") = t;
                a
            }
            None => Arc::new(t),
        }
    }

    /// Keeps a dead value's tensor (if nobody else holds it): for its slot,
    /// one per element type, the one with the larger buffer; the rest
    /// emptied.
    fn give(&mut self, slot: Option<usize>, mut t: Arc<Tensor>) {
        let Some(owned) = Arc::get_mut(&mut t) else {
            return;
        };
        let Some(slot) = slot.filter(|_| capacity(owned) > 0) else {
            drop(owned.take());
            self.emptied.push(t);
            return;
        };
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, Vec::new);
        }
        let list = &mut self.slots[slot];
        let kind = std::mem::discriminant(&t.data);
        let mut spare = match list
            .iter()
            .position(|u| std::mem::discriminant(&u.data) == kind)
        {
            Some(k) if capacity(&list[k]) < capacity(&t) => std::mem::replace(&mut list[k], t),
            Some(_) => t,
            None => {
                list.push(t);
                return;
            }
        };
        if let Some(owned) = Arc::get_mut(&mut spare) {
            drop(owned.take());
            self.emptied.push(spare);
        }
    }
}

/// Bytes a tensor's buffer holds (its capacity, not its length).
fn capacity(t: &Tensor) -> usize {
    match &t.data {
        Data::F32(v) => 4 * v.capacity(),
        Data::C64(v) => 8 * v.capacity(),
        Data::I32(v) => 4 * v.capacity(),
        Data::Codes(_) | Data::Device(_) => 0,
    }
}

/// Kernels a backend runs instead of the reference's for some ops: how a
/// faster backend reuses this executor for every other op.
pub trait Kernels: Sync {
    /// A kernel for a node of `op`, prepared at load from the operands
    /// known then (weights and weight expressions; `None` for the others),
    /// or `None` to run the reference kernel.
    fn prepare(
        &self,
        op: &Op,
        constants: &[Option<&Tensor>],
    ) -> Result<Option<Box<dyn NodeKernel>>, String>;
}

/// One node's kernel: its operands in, its value out. Operands known at
/// load that only such kernels read are not kept: they come as `None`.
pub trait NodeKernel: Send + Sync {
    /// The node's value, built in `out`'s buffers where it can.
    fn run(&self, args: &[Option<&Tensor>], out: &mut Recycled) -> Result<Tensor, String>;

    /// Bytes it holds (weights re-laid for it).
    fn bytes(&self) -> usize;
}

impl Executor {
    /// Verifies `graph`, checks it against `store`, decodes every weight it
    /// references and evaluates the weight expressions (the nodes that
    /// depend on weights alone) once. `on_weight` is called after each
    /// weight is decoded (for progress).
    pub fn new(
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Executor, BackendError> {
        Executor::with_kernels(graph, store, on_weight, None)
    }

    /// [`Executor::new`], running the nodes `kernels` prepares a kernel
    /// for with that kernel.
    pub fn with_kernels(
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
        kernels: Option<&dyn Kernels>,
    ) -> Result<Executor, BackendError> {
        let plan = MemoryPlan::new(&graph, 1);
        let constants = load_resident(&graph, store, on_weight, &plan)?;
        let mut prepared = HashMap::new();
        if let Some(kernels) = kernels {
            for (i, node) in graph.nodes.iter().enumerate() {
                if plan.resident[i] || matches!(node.op, Op::Input { .. }) {
                    continue;
                }
                let known: Vec<Option<&Tensor>> = node
                    .operands
                    .iter()
                    .map(|v| constants.get(&v.0).map(|t| t.as_ref()))
                    .collect();
                let kernel = kernels.prepare(&node.op, &known).map_err(|e| {
                    BackendError::new(format!("%{i} = {}: {e}", node.op.mnemonic()))
                })?;
                if let Some(k) = kernel {
                    prepared.insert(i, k);
                }
            }
        }
        // What only substituted kernels read they took at load (codes
        // re-laid for them): not kept twice.
        let mut read = vec![false; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            if !plan.resident[i] && !prepared.contains_key(&i) {
                for v in &node.operands {
                    read[v.0] = true;
                }
            }
        }
        for v in &graph.outputs {
            read[v.0] = true;
        }
        let mut constants = constants;
        constants.retain(|i, _| read[*i]);
        Ok(Executor {
            graph,
            constants,
            plan,
            kernels: prepared,
            profile: OpProfile::from_env(),
            arenas: Mutex::new(Vec::new()),
            pool: None,
        })
    }

    /// Runs on a pool of `threads` threads of its own (see `pool`).
    pub fn in_own_pool(mut self, threads: usize) -> Result<Executor, BackendError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| BackendError::new(format!("building the rank's thread pool: {e}")))?;
        self.pool = Some(pool);
        Ok(self)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Bytes held for weights and weight expressions.
    pub fn resident_weight_bytes(&self) -> usize {
        let kernels: usize = self.kernels.values().map(|k| k.bytes()).sum();
        kernels + self.constants.values().map(|t| t.bytes()).sum::<usize>()
    }

    /// Runs the graph on named inputs; returns the graph's outputs.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>, BackendError> {
        self.run_owned(inputs.clone())
    }

    /// [`Executor::run`] on inputs it may consume: large inputs (a
    /// trainer's parameters and gradients, a KV cache) are moved in, not
    /// copied; a cache is extended in place by the concatenation that reads
    /// it last; outputs no other value shares are moved out.
    pub fn run_owned(&self, inputs: HashMap<String, Tensor>) -> Result<Vec<Tensor>, BackendError> {
        if let Some(pool) = &self.pool {
            return pool.install(|| self.run_in_pool(inputs));
        }
        // The whole run on one of rayon's workers: the kernels' parallel
        // loops then start from inside the pool, where handing work out
        // costs no thread wake-up per node (hundreds per token otherwise).
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.run_in_pool(inputs));
        }
        self.run_in_pool(inputs)
    }

    fn run_in_pool(
        &self,
        mut inputs: HashMap<String, Tensor>,
    ) -> Result<Vec<Tensor>, BackendError> {
        let bindings = self.bind(&inputs)?;
        let mut arena = self
            .arenas
            .lock()
            .ok()
            .and_then(|mut a| a.pop())
            .unwrap_or_default();
        let mut values = std::mem::take(&mut arena.values);
        values.clear();
        values.resize(self.graph.nodes.len(), None);
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let started = self.profile.as_ref().map(|_| std::time::Instant::now());
            let result = match &node.op {
                // The verifier allows one `input` node per name.
                Op::Input { name } => arena.wrap(inputs.remove(name).expect("bound inputs")),
                // Weights and weight expressions were evaluated at load; those
                // that only other weight expressions read were dropped there.
                _ if self.plan.resident[i] => match self.constants.get(&i) {
                    Some(v) => v.clone(),
                    None => continue,
                },
                op => {
                    let error =
                        |e: String| BackendError::new(format!("%{i} = {}: {e}", op.mnemonic()));
                    let grown = self.take_for_append(node, i, &mut values, &mut arena);
                    // The node's value goes into the tensor (and its
                    // buffers) of the value that last held its plan slot;
                    // a cache appended in place needs the tensor alone.
                    // (Outputs, which leave with their buffers, have no
                    // slot: the plan keeps them out.)
                    let mut reused = match (&grown, self.plan.slot[i]) {
                        (None, Some(s)) => arena.take(s, node.ty.dtype),
                        _ => arena.emptied.pop(),
                    };
                    let mut out =
                        Recycled::new(reused.as_mut().and_then(Arc::get_mut).map(Tensor::take));
                    let value = if let Some(mut grown) = grown {
                        for v in &node.operands[1..] {
                            let rows = values[v.0].as_deref().expect("operands are computed first");
                            extend_rows(&mut grown, rows).map_err(error)?;
                        }
                        grown
                    } else if let Some(k) = self.kernels.get(&i) {
                        let args: SmallVec<[Option<&Tensor>; OPERANDS]> = node
                            .operands
                            .iter()
                            .map(|v| values[v.0].as_deref())
                            .collect();
                        k.run(&args, &mut out).map_err(error)?
                    } else {
                        let args: SmallVec<[&Tensor; OPERANDS]> = node
                            .operands
                            .iter()
                            .map(|v| values[v.0].as_deref().expect("operands are computed first"))
                            .collect();
                        eval(op, &node.ty, &args, &bindings, &mut out).map_err(error)?
                    };
                    match reused.as_mut().and_then(Arc::get_mut) {
                        Some(slot) => {
                            *slot = value;
                            reused.expect("taken above")
                        }
                        None => Arc::new(value),
                    }
                }
            };
            if let (Some(profile), Some(started)) = (&self.profile, started) {
                profile.record(profile::label(&node.op, &result.shape), started.elapsed());
            }
            values[i] = Some(result);
            // Operands whose last reader this node was leave their tensors
            // to the next value of their slot.
            for v in &node.operands {
                if self.plan.last_use[v.0] == i {
                    if let Some(t) = values[v.0].take() {
                        arena.give(self.plan.slot[v.0], t);
                    }
                }
            }
        }
        let outputs = &self.graph.outputs;
        let outputs = outputs
            .iter()
            .enumerate()
            .map(|(k, v)| {
                // The last mention of a value takes it; earlier ones copy.
                if outputs[k + 1..].contains(v) {
                    let t = values[v.0].clone().expect("outputs are kept");
                    return (*t).clone();
                }
                let mut t = values[v.0].take().expect("outputs are kept");
                match Arc::get_mut(&mut t) {
                    Some(owned) => {
                        let value = owned.take();
                        arena.give(None, t);
                        value
                    }
                    None => (*t).clone(),
                }
            })
            .collect();
        values.clear();
        arena.values = values;
        if let Ok(mut arenas) = self.arenas.lock() {
            arenas.push(arena);
        }
        Ok(outputs)
    }

    /// The first operand of a `concat` along axis 0 that this node reads
    /// last and nobody else holds (a KV cache moved in): taken, so that the
    /// concatenation appends to it in place instead of copying it.
    fn take_for_append(
        &self,
        node: &fairyc_ir::Node,
        i: usize,
        values: &mut [Option<Arc<Tensor>>],
        arena: &mut Arena,
    ) -> Option<Tensor> {
        if node.op != (Op::Concat { axis: 0 }) {
            return None;
        }
        let first = node.operands[0].0;
        if self.plan.last_use[first] != i || node.operands[1..].iter().any(|v| v.0 == first) {
            return None;
        }
        let slot = values[first].as_mut()?;
        let owned = Arc::get_mut(slot)?;
        if owned.shape.len() != 2 || matches!(owned.data, Data::Codes(_) | Data::Device(_)) {
            return None;
        }
        let taken = owned.take();
        arena
            .emptied
            .push(values[first].take().expect("checked above"));
        Some(taken)
    }

    fn bind(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, usize>, BackendError> {
        bind_inputs(&self.graph, inputs)
    }
}

impl Program for Executor {
    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    fn run(&self, inputs: HashMap<String, Tensor>) -> Result<Vec<Tensor>, BackendError> {
        self.run_owned(inputs)
    }

    fn resident_weight_bytes(&self) -> usize {
        Executor::resident_weight_bytes(self)
    }

    fn profile(&self) -> Option<&OpProfile> {
        self.profile.as_ref()
    }
}

/// Binds a graph's symbolic dimensions (such as `seq`) from the inputs, checking
/// that every input is present with its declared type.
pub fn bind_inputs(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<String, usize>, BackendError> {
    let mut bindings = HashMap::new();
    for (_, name, ty) in graph.inputs() {
        let t = inputs
            .get(name)
            .ok_or_else(|| BackendError::new(format!("input \"{name}\" ({ty}) is missing")))?;
        let dtype_ok = matches!(
            (ty.dtype, &t.data),
            (DType::I32, Data::I32(_)) | (DType::C64, Data::C64(_))
        ) || (ty.dtype.is_real_float() && matches!(t.data, Data::F32(_)))
        // Device data is checked by the backend that owns it.
        || matches!(t.data, Data::Device(_));
        if !dtype_ok || t.shape.len() != ty.shape.rank() {
            return Err(BackendError::new(format!(
                "input \"{name}\" must be {ty}, got {} with shape {:?}",
                t.dtype_name(),
                t.shape
            )));
        }
        for (d, &n) in ty.shape.dims().iter().zip(&t.shape) {
            let ok = match d {
                Dim::Fixed(k) => *k == n,
                // Looked up first: a symbol's name is copied once a run.
                Dim::Sym(s) => match bindings.get(s) {
                    Some(&bound) => bound == n,
                    None => {
                        bindings.insert(s.clone(), n);
                        true
                    }
                },
            };
            if !ok {
                return Err(BackendError::new(format!(
                    "input \"{name}\" must be {ty}, got shape {:?}",
                    t.shape
                )));
            }
        }
    }
    Ok(bindings)
}

/// The sizes of `shape` with its symbols bound by the inputs.
pub fn bind_shape(shape: &Shape, bindings: &HashMap<String, usize>) -> Result<Vec<usize>, String> {
    shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Sym(s) => bindings
                .get(s)
                .copied()
                .ok_or_else(|| format!("dimension `{s}` is not bound by any input")),
        })
        .collect()
}

/// Verifies `graph` against `store`, decodes every weight it references
/// and evaluates the weight expressions once; returns those that
/// input-dependent nodes or the outputs read (what any backend holds
/// resident).
pub fn load_resident(
    graph: &Graph,
    store: &dyn WeightStore,
    on_weight: &(dyn Fn(&str) + Sync),
    plan: &MemoryPlan,
) -> Result<HashMap<usize, Arc<Tensor>>, BackendError> {
    verify(graph)?;
    verify_weights(graph, store)?;
    let weights = load_weights(graph, store, on_weight)?;
    let keep = vec![false; graph.nodes.len()];
    Ok(fold_constants(graph, weights, &plan.last_use, keep)?.0)
}

/// Evaluates every node that depends on weights alone, in order, freeing
/// each intermediate after its last use; returns the ones that
/// input-dependent nodes or the outputs read, and which nodes are constant.
type Folded = (HashMap<usize, Arc<Tensor>>, Vec<bool>);

fn fold_constants(
    graph: &Graph,
    mut values: HashMap<usize, Arc<Tensor>>,
    last_uses: &[usize],
    mut kept: Vec<bool>,
) -> Result<Folded, BackendError> {
    let constant = graph.weight_constants();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !constant[i] {
            for v in &node.operands {
                kept[v.0] |= constant[v.0];
            }
        }
    }
    for v in &graph.outputs {
        kept[v.0] |= constant[v.0];
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        if !constant[i] || matches!(node.op, Op::Weight { .. }) {
            continue;
        }
        let args: Vec<&Tensor> = node
            .operands
            .iter()
            .map(|v| values[&v.0].as_ref())
            .collect();
        let out = eval(
            &node.op,
            &node.ty,
            &args,
            &HashMap::new(),
            &mut Recycled::default(),
        )
        .map_err(|e| BackendError::new(format!("%{i} = {}: {e}", node.op.mnemonic())))?;
        values.insert(i, Arc::new(out));
        for v in &node.operands {
            if last_uses[v.0] <= i && !kept[v.0] {
                values.remove(&v.0);
            }
        }
    }
    values.retain(|i, _| kept[*i]);
    Ok((values, constant))
}

/// Decodes every weight the graph references, in parallel.
pub fn load_weights(
    graph: &Graph,
    store: &dyn WeightStore,
    on_weight: &(dyn Fn(&str) + Sync),
) -> Result<HashMap<usize, Arc<Tensor>>, BackendError> {
    let refs: Vec<(usize, String, DType, Vec<usize>)> = graph
        .weights()
        .map(|(id, name, ty)| {
            let shape = ty.shape.concrete().ok_or_else(|| {
                BackendError::new(format!(
                    "weight \"{name}\" has a symbolic shape {}",
                    ty.shape
                ))
            })?;
            Ok((id.0, name.to_string(), ty.dtype, shape))
        })
        .collect::<Result<_, BackendError>>()?;
    let weights = refs
        .into_par_iter()
        .map(|(id, name, dtype, shape)| {
            let tensor = match dtype {
                DType::F32 | DType::F16 | DType::BF16 => Tensor::f32(shape, store.read_f32(&name)?),
                DType::C64 => Tensor::c64(
                    shape,
                    store
                        .read_f32(&name)?
                        .chunks_exact(2)
                        .map(|p| Complex32::new(p[0], p[1]))
                        .collect(),
                ),
                DType::Code2 => Tensor::codes(shape, store.lend_codes(&name)?),
                DType::I32 => {
                    return Err(BackendError::new(format!(
                        "weight \"{name}\": the reference executor cannot load i32 weights"
                    )))
                }
            };
            on_weight(&name);
            Ok((id, Arc::new(tensor)))
        })
        .collect::<Result<HashMap<_, _>, BackendError>>()?;
    Ok(weights)
}

/// Evaluates the weight expressions `wanted` (nodes that depend on
/// weights alone) of a verified graph, without building an executor: how
/// a compiler step reads derived weights (e.g. to store their codes).
pub fn evaluate_constants(
    graph: &Graph,
    store: &dyn WeightStore,
    wanted: &[fairyc_ir::ValueId],
) -> Result<HashMap<usize, Arc<Tensor>>, BackendError> {
    verify(graph)?;
    verify_weights(graph, store)?;
    let mut keep = vec![false; graph.nodes.len()];
    for v in wanted {
        keep[v.0] = true;
    }
    let weights = load_weights(graph, store, &|_| {})?;
    let (values, constant) = fold_constants(graph, weights, &graph.last_uses(), keep.clone())?;
    if let Some(v) = wanted.iter().find(|v| !constant[v.0]) {
        return Err(BackendError::new(format!(
            "{v} depends on graph inputs, not on weights alone"
        )));
    }
    Ok(values.into_iter().filter(|(i, _)| keep[*i]).collect())
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32], String> {
    t.as_f32()
        .ok_or_else(|| format!("{what} must be f32, got {}", t.dtype_name()))
}

fn c64s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [Complex32], String> {
    t.as_c64()
        .ok_or_else(|| format!("{what} must be c64, got {}", t.dtype_name()))
}

/// Zeros of `ty` (all bits zero; packed codes of `+1`, as
/// [`Data::Codes`] lays them out, rows padded to whole bytes).
fn zeros(
    ty: &TensorType,
    bindings: &HashMap<String, usize>,
    out: &mut Recycled,
) -> Result<Tensor, String> {
    let dims = bind_shape(&ty.shape, bindings)?;
    let len: usize = dims.iter().product();
    Ok(match ty.dtype {
        DType::F32 | DType::F16 | DType::BF16 => out.f32_tensor(&dims, |d| d.fill(0.0)),
        DType::C64 => out.c64_tensor(&dims, |d| d.fill(Complex32::new(0.0, 0.0))),
        DType::I32 => Tensor::i32(dims, vec![0; len]),
        DType::Code2 => {
            let (rows, cols) = match dims.split_last() {
                Some((cols, rows)) => (rows.iter().product::<usize>(), *cols),
                None => (1, 1),
            };
            let bytes = rows * cols.div_ceil(4);
            Tensor::codes(dims, SharedBytes::new(vec![0u8; bytes]))
        }
    })
}

/// Applies a data-movement kernel, generic over the element type, to
/// whichever element type `x` holds.
macro_rules! for_each_dtype {
    ($x:expr, $shape:expr, |$d:ident| $body:expr) => {
        Tensor {
            shape: $shape,
            data: match &$x.data {
                Data::F32($d) => Data::F32($body),
                Data::C64($d) => Data::C64($body),
                Data::I32($d) => Data::I32($body),
                Data::Codes(_) | Data::Device(_) => {
                    return Err("code and device tensors cannot be rearranged here".into())
                }
            },
        }
    };
}

/// Runs one op on concrete tensors; `ty` is the node's type (which
/// `zeros`, having no operands, takes its own from).
fn eval(
    op: &Op,
    ty: &TensorType,
    args: &[&Tensor],
    bindings: &HashMap<String, usize>,
    out: &mut Recycled,
) -> Result<Tensor, String> {
    if let Op::Zeros = op {
        return zeros(ty, bindings, out);
    }
    let x = args[0];
    Ok(match op {
        Op::Input { .. } | Op::Weight { .. } => unreachable!("leaves are bound, not evaluated"),
        Op::Zeros => unreachable!("zeros are made above"),
        Op::Embed => {
            let ids = x.as_i32().ok_or("token ids must be i32")?;
            let table = args[1];
            let width = table.cols();
            let mut shape = x.shape.clone();
            shape.push(width);
            let bad = |id| {
                format!(
                    "token id {id} is outside the vocabulary of {}",
                    table.shape[0]
                )
            };
            match &table.data {
                Data::F32(t) => {
                    let mut y = out.f32s(ids.len() * width);
                    layout::embed_into(t, width, ids, &mut y).map_err(bad)?;
                    Tensor::f32(out.shape(&shape), y)
                }
                Data::C64(t) => {
                    let mut y = out.c64s(ids.len() * width);
                    layout::embed_into(t, width, ids, &mut y).map_err(bad)?;
                    Tensor::c64(out.shape(&shape), y)
                }
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("embedding table must be a float tensor".into())
                }
            }
        }
        Op::Linear => {
            let w = args[1];
            let (k, n) = (w.shape[1], w.shape[0]);
            let m = x.shape[..x.shape.len() - 1].iter().product();
            let shape = with_last(&x.shape, n);
            match (&x.data, &w.data) {
                (Data::F32(a), Data::F32(b)) => Tensor::f32(shape, linear(a, b, m, k, n)),
                (Data::C64(a), Data::C64(b)) => Tensor::c64(shape, linear(a, b, m, k, n)),
                _ => return Err("input and weight must both be f32 or both c64".into()),
            }
        }
        Op::RmsNorm { eps } => {
            let gain = f32s(args[1], "gain")?;
            match &x.data {
                Data::C64(z) => {
                    out.c64_tensor(&x.shape, |y| rms_norm_complex_into(z, gain, *eps, y))
                }
                _ => {
                    let v = f32s(x, "input")?;
                    out.f32_tensor(&x.shape, |y| rms_norm_into(v, gain, *eps, y))
                }
            }
        }
        Op::CReluSquared => Tensor::c64(
            x.shape.clone(),
            elementwise::crelu_squared(c64s(x, "input")?),
        ),
        Op::ActQuant { bits } => {
            let bits = *bits as u32;
            match &x.data {
                Data::F32(v) => {
                    Tensor::f32(x.shape.clone(), quant::ifairy::act_quant(v, x.cols(), bits))
                }
                Data::C64(z) => {
                    let re: Vec<f32> = z.iter().map(|c| c.re).collect();
                    let im: Vec<f32> = z.iter().map(|c| c.im).collect();
                    let (re, im) = (
                        quant::ifairy::act_quant(&re, x.cols(), bits),
                        quant::ifairy::act_quant(&im, x.cols(), bits),
                    );
                    Tensor::c64(
                        x.shape.clone(),
                        re.into_iter()
                            .zip(im)
                            .map(|(r, i)| Complex32::new(r, i))
                            .collect(),
                    )
                }
                _ => return Err("act_quant takes f32 or c64".into()),
            }
        }
        Op::Rope {
            base,
            layout: l,
            head_dim,
        } => {
            let pos = args[1].as_i32().ok_or("positions must be i32")?;
            let width = x.cols();
            match &x.data {
                Data::F32(d) => out.f32_tensor(&x.shape, |y| {
                    rope_into(d, pos, width, *head_dim, *base, *l, y)
                }),
                Data::C64(d) => out.c64_tensor(&x.shape, |y| {
                    rope_complex_into(d, pos, width, *head_dim, *base, y)
                }),
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("rope needs a float input".into())
                }
            }
        }
        Op::Attention {
            heads,
            kv_heads,
            scale,
            causal,
            segment,
        } => {
            let (q, k, v) = (x, args[1], args[2]);
            let shape = attention_shape(q, v, *heads, *kv_heads, *scale, *causal)?;
            let out_shape = vec![q.shape[0], heads * shape.value_dim];
            let rows = q.shape[0];
            match (&q.data, &k.data, &v.data) {
                (Data::F32(q), Data::F32(k), Data::F32(v)) => {
                    let run = |[q, k, v]: [&[_]; 3]| attention(q, k, v, shape);
                    Tensor::f32(out_shape, by_segment(*segment, rows, [q, k, v], run)?)
                }
                (Data::C64(q), Data::C64(k), Data::C64(v)) => {
                    let run = |[q, k, v]: [&[_]; 3]| attention(q, k, v, shape);
                    Tensor::c64(out_shape, by_segment(*segment, rows, [q, k, v], run)?)
                }
                _ => return Err("queries, keys and values must share one element type".into()),
            }
        }
        Op::Silu => {
            let v = f32s(x, "input")?;
            out.f32_tensor(&x.shape, |y| elementwise::silu_into(v, y))
        }
        Op::Unary {
            func: UnaryFn::RoundBf16,
        } => {
            let r = |v: f32| Arithmetic::Bf16Exact.round(v);
            match &x.data {
                Data::F32(v) => Tensor::f32(x.shape.clone(), v.iter().map(|&a| r(a)).collect()),
                Data::C64(v) => Tensor::c64(
                    x.shape.clone(),
                    v.iter().map(|a| Complex32::new(r(a.re), r(a.im))).collect(),
                ),
                _ => return Err("round_bf16 takes real or complex floats".into()),
            }
        }
        Op::Unary { func } => match (&x.data, func) {
            (Data::I32(d), UnaryFn::Neg) => Tensor::i32(
                x.shape.clone(),
                d.iter().map(|v| v.wrapping_neg()).collect(),
            ),
            (Data::C64(d), UnaryFn::Neg) => {
                Tensor::c64(x.shape.clone(), d.iter().map(|v| -v).collect())
            }
            (Data::F32(d), f) => Tensor::f32(x.shape.clone(), elementwise::unary(d, *f)),
            _ => return Err(format!("`{}` takes a real input", x.dtype_name())),
        },
        Op::Div => binary(x, args[1], |a, b| a / b, |a, b| a / b, out)?,
        Op::QuantLinear {
            u_stages,
            granularity,
            ..
        } => {
            let xs = c64s(x, "input")?;
            let codes = args[1..]
                .chunks_exact(2)
                .map(|pair| {
                    let Data::Codes(packed) = &pair[0].data else {
                        return Err(format!("codes must be code2, got {}", pair[0].dtype_name()));
                    };
                    Ok(StageCodes {
                        packed,
                        scales: f32s(pair[1], "scales")?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let (n, m) = (args[1].shape[0], args[1].shape[1]);
            let (u, w) = codes.split_at(*u_stages);
            Tensor::c64(
                with_last(&x.shape, n),
                quant_linear(xs, m, n, u, w, *granularity)?,
            )
        }
        Op::Add => binary(x, args[1], |a, b| a + b, |a, b| a + b, out)?,
        Op::Mul => binary(x, args[1], |a, b| a * b, |a, b| a * b, out)?,
        Op::Softmax => Tensor::f32(
            x.shape.clone(),
            elementwise::softmax(f32s(x, "input")?, x.cols()),
        ),
        Op::Reshape { shape } => {
            let dims = bind_shape(shape, bindings)?;
            if dims.iter().product::<usize>() != x.len() {
                return Err(format!("cannot reshape {:?} to {dims:?}", x.shape));
            }
            Tensor {
                shape: dims,
                data: x.data.clone(),
            }
        }
        Op::Transpose { perm } => {
            let shape = perm.iter().map(|&p| x.shape[p]).collect();
            for_each_dtype!(x, shape, |d| layout::transpose(d, &x.shape, perm))
        }
        Op::Slice { axis, start, end } => {
            let mut shape = x.shape.clone();
            shape[*axis] = end - start;
            for_each_dtype!(x, shape, |d| layout::slice(
                d, &x.shape, *axis, *start, *end
            ))
        }
        Op::Concat { axis } => {
            let mut shape = x.shape.clone();
            shape[*axis] = args.iter().map(|t| t.shape[*axis]).sum();
            match &x.data {
                Data::F32(_) => {
                    let parts = args
                        .iter()
                        .map(|t| Ok((f32s(t, "operand")?, t.shape.as_slice())))
                        .collect::<Result<Vec<_>, String>>()?;
                    Tensor::f32(shape, layout::concat(&parts, *axis))
                }
                Data::C64(_) => {
                    let parts = args
                        .iter()
                        .map(|t| Ok((c64s(t, "operand")?, t.shape.as_slice())))
                        .collect::<Result<Vec<_>, String>>()?;
                    Tensor::c64(shape, layout::concat(&parts, *axis))
                }
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("concat takes f32 or c64 tensors".into())
                }
            }
        }
        Op::Pack { block } => {
            let (rows, cols) = (x.len() / x.cols().max(1), x.cols());
            let mut z = out.c64s(rows * cols.div_ceil(2));
            quant::pack_rows_into(
                f32s(x, "input")?,
                rows,
                cols,
                Pairing::from_block(*block),
                &mut z,
            )
            .map_err(|e| e.to_string())?;
            let shape = out.shape(&x.shape);
            Tensor::c64(set_last(shape, cols.div_ceil(2)), z)
        }
        Op::Unpack { block } => {
            let (rows, m) = (x.len() / x.cols().max(1), x.cols());
            let mut y = out.f32s(rows * 2 * m);
            quant::unpack_rows_into(
                c64s(x, "input")?,
                rows,
                2 * m,
                Pairing::from_block(*block),
                &mut y,
            )
            .map_err(|e| e.to_string())?;
            let shape = out.shape(&x.shape);
            Tensor::f32(set_last(shape, 2 * m), y)
        }
        Op::WidelyLinear {
            part,
            row_block,
            col_block,
            arithmetic,
        } => {
            let (rows, cols) = (x.shape[0], x.shape[1]);
            let (u, w, n, m) = quant::widely_linear_with(
                f32s(x, "weight")?,
                rows,
                cols,
                Pairing::from_block(*row_block),
                Pairing::from_block(*col_block),
                *arithmetic,
            )
            .map_err(|e| e.to_string())?;
            Tensor::c64(vec![n, m], if *part == WlPart::U { u } else { w })
        }
        Op::Quantize {
            scheme,
            granularity,
            arithmetic,
        } => {
            let (n, m) = (x.shape[0], x.shape[1]);
            let g = *granularity;
            match scheme {
                Scheme::Phase => {
                    let w = c64s(x, "weight")?;
                    let q = quant::phase_quant_with(w, n, m, g, *arithmetic)
                        .map_err(|e| e.to_string())?;
                    Tensor::c64(
                        x.shape.clone(),
                        quant::dequantize(&q, n, m, g).map_err(|e| e.to_string())?,
                    )
                }
                Scheme::PhaseIfairy => {
                    let w = c64s(x, "weight")?;
                    let q =
                        quant::ifairy::phase_quant_ifairy(w, n, m).map_err(|e| e.to_string())?;
                    if q.empty_sector {
                        tracing::warn!("iFairy PhaseQuant: no weight of a [{n}, {m}] matrix fell on one axis; its scale is the 1e-5 floor (the authors' code gives NaN)");
                    }
                    Tensor::c64(
                        x.shape.clone(),
                        quant::dequantize(&q.quantized, n, m, g).map_err(|e| e.to_string())?,
                    )
                }
                Scheme::Binary | Scheme::Ternary => {
                    let w = f32s(x, "weight")?;
                    let q = if *scheme == Scheme::Binary {
                        quant::binary_quant(w, n, m, g)
                    } else {
                        quant::ternary_quant(w, n, m, g)
                    }
                    .map_err(|e| e.to_string())?;
                    Tensor::f32(x.shape.clone(), q.values)
                }
            }
        }
        Op::PhaseCodes { arithmetic } => {
            let (n, m) = (x.shape[0], x.shape[1]);
            let w = c64s(x, "weight")?;
            // Any granularity: the codes do not depend on it.
            let q = quant::phase_quant_with(w, n, m, Granularity::Tensor, *arithmetic)
                .map_err(|e| e.to_string())?;
            let packed = quant::pack_code_rows(&q.codes, n, m).map_err(|e| e.to_string())?;
            Tensor::codes(x.shape.clone(), SharedBytes::new(packed))
        }
        Op::PhaseScales {
            granularity,
            arithmetic,
        } => {
            let (n, m) = (x.shape[0], x.shape[1]);
            let w = c64s(x, "weight")?;
            let q = quant::phase_quant_with(w, n, m, *granularity, *arithmetic)
                .map_err(|e| e.to_string())?;
            let shape = fairyc_ir::infer::scale_shape(*granularity, n, m);
            Tensor::f32(shape.concrete().expect("fixed sizes"), q.scales)
        }
        Op::Dequant { granularity } => {
            let (n, m) = (x.shape[0], x.shape[1]);
            let Data::Codes(packed) = &x.data else {
                return Err(format!("codes must be code2, got {}", x.dtype_name()));
            };
            let q = quant::PhaseQuantized {
                codes: quant::unpack_code_rows(packed, n, m).map_err(|e| e.to_string())?,
                scales: f32s(args[1], "scales")?.to_vec(),
            };
            Tensor::c64(
                x.shape.clone(),
                quant::dequantize(&q, n, m, *granularity).map_err(|e| e.to_string())?,
            )
        }
        Op::Sub => binary(x, args[1], |a, b| a - b, |a, b| a - b, out)?,
        Op::Conj => Tensor::c64(x.shape.clone(), elementwise::conj(c64s(x, "input")?)),
        Op::CrossEntropy => {
            let targets = args[1].as_i32().ok_or("targets must be i32")?;
            let loss = grad::cross_entropy(f32s(x, "logits")?, targets, x.cols())?;
            Tensor::f32(Vec::new(), vec![loss])
        }
        Op::CrossEntropyGrad => {
            let targets = args[1].as_i32().ok_or("targets must be i32")?;
            let dloss = f32s(args[2], "loss gradient")?[0];
            Tensor::f32(
                x.shape.clone(),
                grad::cross_entropy_grad(f32s(x, "logits")?, targets, x.cols(), dloss)?,
            )
        }
        Op::Sample { temperature } => {
            let draws = f32s(args[1], "draws")?;
            let ids = sampling::sample_rows(f32s(x, "logits")?, x.cols(), draws, *temperature);
            Tensor::i32(args[1].shape.clone(), ids)
        }
        Op::KlDiv => {
            let kl = grad::kl_div(f32s(x, "student")?, f32s(args[1], "teacher")?, x.cols());
            Tensor::f32(Vec::new(), vec![kl])
        }
        Op::KlDivGrad => {
            let dloss = f32s(args[2], "loss gradient")?[0];
            Tensor::f32(
                x.shape.clone(),
                grad::kl_div_grad(
                    f32s(x, "student")?,
                    f32s(args[1], "teacher")?,
                    x.cols(),
                    dloss,
                ),
            )
        }
        Op::Fill { value } => match &x.data {
            Data::F32(d) => Tensor::f32(x.shape.clone(), vec![*value; d.len()]),
            Data::C64(d) => {
                Tensor::c64(x.shape.clone(), vec![Complex32::new(*value, 0.0); d.len()])
            }
            Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                return Err("fill takes an f32 or c64 template".into())
            }
        },
        Op::AdamUpdate { eps } => {
            let scalar = |t: &Tensor, what| -> Result<f32, String> {
                f32s(t, what)?
                    .first()
                    .copied()
                    .ok_or_else(|| format!("{what} is empty"))
            };
            let (lr, c1, c2, weight_decay) = (
                scalar(args[3], "lr")?,
                scalar(args[4], "c1")?,
                scalar(args[5], "c2")?,
                scalar(args[6], "weight_decay")?,
            );
            let (p, m, v) = (
                f32s(x, "parameter")?,
                f32s(args[1], "m")?,
                f32s(args[2], "v")?,
            );
            let out = p
                .par_iter()
                .zip(m.par_iter().zip(v.par_iter()))
                .map(|(&p, (&m, &v))| {
                    p - lr * (m * c1 / ((v * c2).sqrt() + eps) + weight_decay * p)
                })
                .collect();
            Tensor::f32(x.shape.clone(), out)
        }
        Op::SumSquares => {
            // f64 partial sums: a 100M-element gradient loses digits in f32.
            let sum: f64 = f32s(x, "input")?
                .par_iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum();
            Tensor::f32(vec![], vec![sum as f32])
        }
        Op::BroadcastFrom { root } if *root != 0 => {
            return Err(format!(
                "a broadcast from rank {root} where this is the only rank"
            ))
        }
        // A rank alone (ranks in a group run `Reference::rank`'s kernel).
        Op::BroadcastFrom { .. } if x.as_f32().is_none() => x.clone(),
        Op::AllReduce | Op::BroadcastFrom { .. } => {
            let data = f32s(x, "input")?;
            let mut sum = out.f32s(data.len());
            sum.copy_from_slice(data);
            Tensor::f32(out.shape(&x.shape), sum)
        }
        Op::ClipFactor { max_norm } => {
            let s = f32s(x, "squared norm")?.first().copied().unwrap_or(0.0);
            let norm = s.max(0.0).sqrt();
            let factor = if norm > *max_norm {
                max_norm / norm
            } else {
                1.0
            };
            Tensor::f32(vec![], vec![factor])
        }
        Op::Scale { factor } => match &x.data {
            Data::F32(d) => Tensor::f32(x.shape.clone(), d.iter().map(|v| v * factor).collect()),
            Data::C64(d) => Tensor::c64(x.shape.clone(), d.iter().map(|v| v * factor).collect()),
            Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                return Err("scale takes f32 or c64".into())
            }
        },
        Op::ReduceTo { shape } => {
            let shape = x.shape[x.shape.len() - shape.rank()..].to_vec();
            let n = shape.iter().product();
            match &x.data {
                Data::F32(d) => Tensor::f32(shape, grad::reduce_to(d, n)),
                Data::C64(d) => Tensor::c64(shape, grad::reduce_to(d, n)),
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("reduce_to takes f32 or c64".into())
                }
            }
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let mut shape = x.shape.clone();
            shape[*axis] += before + after;
            match &x.data {
                Data::F32(d) => Tensor::f32(shape, grad::pad(d, &x.shape, *axis, *before, *after)),
                Data::C64(d) => Tensor::c64(shape, grad::pad(d, &x.shape, *axis, *before, *after)),
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("pad takes f32 or c64".into())
                }
            }
        }
        Op::LinearWeightGrad => {
            let dy = x;
            let xin = args[1];
            let (n, k) = (dy.cols(), xin.cols());
            let m = dy.len() / n.max(1);
            let shape = vec![n, k];
            // Σ_rows dyᵀ x = dyᵀ[n, m] · (xᵀ[k, m])ᵀ.
            match (&dy.data, &xin.data) {
                (Data::F32(a), Data::F32(b)) => Tensor::f32(
                    shape,
                    linear(
                        &layout::transpose(a, &[m, n], &[1, 0]),
                        &layout::transpose(b, &[m, k], &[1, 0]),
                        n,
                        m,
                        k,
                    ),
                ),
                (Data::C64(a), Data::C64(b)) => Tensor::c64(
                    shape,
                    linear(
                        &layout::transpose(a, &[m, n], &[1, 0]),
                        &layout::transpose(b, &[m, k], &[1, 0]),
                        n,
                        m,
                        k,
                    ),
                ),
                _ => return Err("gradient and input must both be f32 or both c64".into()),
            }
        }
        Op::EmbedGrad { vocab } => {
            let ids = x.as_i32().ok_or("token ids must be i32")?;
            let dy = args[1];
            let width = dy.cols();
            let bad = |id| format!("token id {id} is outside the vocabulary of {vocab}");
            let shape = vec![*vocab, width];
            match &dy.data {
                Data::F32(d) => {
                    Tensor::f32(shape, grad::embed_grad(ids, d, *vocab, width).map_err(bad)?)
                }
                Data::C64(d) => {
                    Tensor::c64(shape, grad::embed_grad(ids, d, *vocab, width).map_err(bad)?)
                }
                Data::I32(_) | Data::Codes(_) | Data::Device(_) => {
                    return Err("embed_grad takes a float gradient".into())
                }
            }
        }
        Op::SiluGrad => Tensor::f32(
            x.shape.clone(),
            grad::silu_grad(f32s(x, "input")?, f32s(args[1], "gradient")?),
        ),
        Op::SoftmaxGrad => Tensor::f32(
            x.shape.clone(),
            grad::softmax_grad(f32s(x, "output")?, f32s(args[1], "gradient")?, x.cols()),
        ),
        Op::RmsNormGrad { eps, which } => {
            let gain = f32s(args[1], "gain")?;
            let shape = match which {
                NormOperand::Input => x.shape.clone(),
                NormOperand::Gain => args[1].shape.clone(),
            };
            match (&x.data, &args[2].data) {
                (Data::F32(v), Data::F32(g)) => Tensor::f32(
                    shape,
                    grad::rms_norm_grad(v, gain, g, *eps, *which, gain.len()),
                ),
                (Data::C64(v), Data::C64(g)) => {
                    // Rows of real parts then imaginary parts, as the gains.
                    let n = x.cols();
                    let halves = |z: &[Complex32]| {
                        quant::unpack_rows(z, z.len() / n, 2 * n, Pairing::Halves)
                    };
                    let (v, g) = (
                        halves(v).map_err(|e| e.to_string())?,
                        halves(g).map_err(|e| e.to_string())?,
                    );
                    let d = grad::rms_norm_grad(&v, gain, &g, *eps, *which, n);
                    match which {
                        NormOperand::Gain => Tensor::f32(shape, d),
                        NormOperand::Input => Tensor::c64(
                            shape,
                            quant::pack_rows(&d, d.len() / (2 * n), 2 * n, Pairing::Halves)
                                .map_err(|e| e.to_string())?,
                        ),
                    }
                }
                _ => return Err("input and gradient must both be f32 or both c64".into()),
            }
        }
        Op::Crelu2Grad => Tensor::c64(
            x.shape.clone(),
            grad::crelu_squared_grad(c64s(x, "input")?, c64s(args[1], "gradient")?),
        ),
        Op::AttentionGrad {
            which,
            heads,
            kv_heads,
            scale,
            causal,
            segment,
        } => {
            let (q, k, v, dout) = (x, args[1], args[2], args[3]);
            let s = attention_shape(q, v, *heads, *kv_heads, *scale, *causal)?;
            let shape = match which {
                AttentionOperand::Q => q.shape.clone(),
                AttentionOperand::K => k.shape.clone(),
                AttentionOperand::V => v.shape.clone(),
            };
            let rows = q.shape[0];
            match (&q.data, &k.data, &v.data, &dout.data) {
                (Data::F32(q), Data::F32(k), Data::F32(v), Data::F32(g)) => {
                    let run = |[q, k, v, g]: [&[_]; 4]| grad::attention_grad(q, k, v, g, s, *which);
                    Tensor::f32(shape, by_segment(*segment, rows, [q, k, v, g], run)?)
                }
                (Data::C64(q), Data::C64(k), Data::C64(v), Data::C64(g)) => {
                    let run = |[q, k, v, g]: [&[_]; 4]| grad::attention_grad(q, k, v, g, s, *which);
                    Tensor::c64(shape, by_segment(*segment, rows, [q, k, v, g], run)?)
                }
                _ => return Err("attention operands must share one element type".into()),
            }
        }
        Op::WidelyLinearGrad {
            part,
            row_block,
            col_block,
        } => {
            let (rows, cols) = (x.shape[0], x.shape[1]);
            let d = args[1];
            let (n, m) = (d.shape[0], d.shape[1]);
            // The split is linear; its adjoint under Re<a, b> is half of
            // the inverse (eq. 7) applied to the gradient of one part.
            let half: Vec<Complex32> = c64s(d, "gradient")?.iter().map(|z| z * 0.5).collect();
            let zero = vec![Complex32::new(0.0, 0.0); n * m];
            let (u, w) = match part {
                WlPart::U => (&half, &zero),
                WlPart::W => (&zero, &half),
            };
            let r = quant::widely_linear_inverse(
                u,
                w,
                n,
                m,
                rows,
                cols,
                Pairing::from_block(*row_block),
                Pairing::from_block(*col_block),
            )
            .map_err(|e| e.to_string())?;
            Tensor::f32(x.shape.clone(), r)
        }
        Op::QuantizeGrad {
            scheme,
            granularity,
            arithmetic,
        } => {
            let (n, m) = (x.shape[0], x.shape[1]);
            let d = args[1];
            match scheme {
                Scheme::Phase => Tensor::c64(
                    x.shape.clone(),
                    quant::ste::phase_quant_grad(
                        c64s(x, "weight")?,
                        c64s(d, "gradient")?,
                        n,
                        m,
                        *granularity,
                        *arithmetic,
                    )
                    .map_err(|e| e.to_string())?,
                ),
                Scheme::PhaseIfairy => {
                    return Err("no scale-aware gradient for phase_ifairy".into())
                }
                Scheme::Binary | Scheme::Ternary => Tensor::f32(
                    x.shape.clone(),
                    quant::ste::real_quant_grad(
                        f32s(x, "weight")?,
                        f32s(d, "gradient")?,
                        n,
                        m,
                        *granularity,
                        *scheme == Scheme::Ternary,
                    )
                    .map_err(|e| e.to_string())?,
                ),
            }
        }
    })
}

/// `f` on each segment's rows of `operands` (all `rows` rows long), the
/// results stacked in segment order; without a segment, `f` on the whole.
fn by_segment<T: Copy, const N: usize>(
    segment: Option<usize>,
    rows: usize,
    operands: [&[T]; N],
    f: impl Fn([&[T]; N]) -> Vec<T>,
) -> Result<Vec<T>, String> {
    let Some(n) = segment else {
        return Ok(f(operands));
    };
    if !rows.is_multiple_of(n) {
        return Err(format!("{rows} rows are not whole segments of {n}"));
    }
    let mut out = Vec::new();
    for k in 0..rows / n {
        out.extend(f(operands.map(|a| {
            let width = a.len() / rows;
            &a[k * n * width..(k + 1) * n * width]
        })));
    }
    Ok(out)
}

/// The shapes of an attention (or attention gradient) call on
/// `[seq, channels]` operands.
fn attention_shape(
    q: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    scale: f32,
    causal: bool,
) -> Result<AttentionShape, String> {
    if q.shape.len() != 2 {
        return Err(format!(
            "the reference executor runs attention on [seq, channels] only, got {:?}",
            q.shape
        ));
    }
    Ok(AttentionShape {
        heads,
        kv_heads,
        head_dim: q.cols() / heads,
        value_dim: v.cols() / kv_heads,
        scale,
        causal,
    })
}

fn with_last(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(last) = s.last_mut() {
        *last = n;
    }
    s
}

fn binary(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
    g: impl Fn(Complex32, Complex32) -> Complex32 + Sync,
    out: &mut Recycled,
) -> Result<Tensor, String> {
    Ok(match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            out.f32_tensor(&a.shape, |z| elementwise::broadcast_into(x, y, f, z))
        }
        (Data::C64(x), Data::C64(y)) => {
            out.c64_tensor(&a.shape, |z| elementwise::broadcast_into(x, y, g, z))
        }
        _ => return Err("operands must both be f32 or both c64".into()),
    })
}

/// `shape` with its last dimension set to `n`.
fn set_last(mut shape: Vec<usize>, n: usize) -> Vec<usize> {
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    shape
}

/// Rows by which a cache appended in place grows: one reallocation per
/// this many decoded tokens, not a doubling's copy at unforeseen steps.
const CACHE_ROWS: usize = 256;

fn append_rows<T: Copy>(dst: &mut Vec<T>, src: &[T], width: usize) {
    let len = dst.len() + src.len();
    if len > dst.capacity() {
        let rows = len.div_ceil(width.max(1)).next_multiple_of(CACHE_ROWS);
        dst.reserve_exact(rows * width.max(1) - dst.len());
    }
    dst.extend_from_slice(src);
}

/// Appends the rows of `src` to `dst` (both `[rows, width]`).
fn extend_rows(dst: &mut Tensor, src: &Tensor) -> Result<(), String> {
    if dst.shape.len() != 2 || src.shape.len() != 2 || dst.cols() != src.cols() {
        return Err(format!(
            "cannot append rows {:?} to {:?}",
            src.shape, dst.shape
        ));
    }
    let width = dst.cols();
    match (&mut dst.data, &src.data) {
        (Data::F32(d), Data::F32(s)) => append_rows(d, s, width),
        (Data::C64(d), Data::C64(s)) => append_rows(d, s, width),
        (Data::I32(d), Data::I32(s)) => append_rows(d, s, width),
        _ => return Err("appended rows have another element type".into()),
    }
    dst.shape[0] += src.shape[0];
    Ok(())
}
