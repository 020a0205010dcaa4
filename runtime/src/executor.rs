//! The reference executor: runs any verified graph on the CPU in f32 and
//! complex f32, node by node, with a KV cache for incremental decoding.

use std::collections::HashMap;
use std::sync::Arc;

use fairyc_ir::{verify, verify_weights, DType, Dim, Graph, Op, WeightStore};
use num_complex::Complex32;
use rayon::prelude::*;

use crate::kernels::attention::{attention, AttentionShape};
use crate::kernels::{elementwise, layout, linear::linear, norm::rms_norm, rope::rope};
use crate::tensor::{Data, Tensor};
use crate::RuntimeError;

/// A graph bound to its weights, ready to run.
pub struct Executor {
    graph: Graph,
    /// Decoded weights, indexed by node.
    weights: HashMap<usize, Arc<Tensor>>,
    last_uses: Vec<usize>,
}

/// Per-sequence state: the keys and values each attention node has seen.
#[derive(Default)]
pub struct KvCache {
    entries: HashMap<usize, (Tensor, Tensor)>,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// How many positions are cached (0 for a fresh sequence).
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .next()
            .map(|(k, _)| k.shape[0])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl Executor {
    /// Verifies `graph`, checks it against `store`, and decodes every weight
    /// it references. `on_weight` is called after each weight (for progress).
    pub fn new(
        graph: Graph,
        store: &dyn WeightStore,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<Executor, RuntimeError> {
        verify(&graph)?;
        verify_weights(&graph, store)?;
        let refs: Vec<(usize, String, DType, Vec<usize>)> = graph
            .weights()
            .map(|(id, name, ty)| {
                let shape = ty.shape.concrete().ok_or_else(|| {
                    RuntimeError::new(format!(
                        "weight \"{name}\" has a symbolic shape {}",
                        ty.shape
                    ))
                })?;
                Ok((id.0, name.to_string(), ty.dtype, shape))
            })
            .collect::<Result<_, RuntimeError>>()?;
        let weights = refs
            .into_par_iter()
            .map(|(id, name, dtype, shape)| {
                let raw = store.read_f32(&name)?;
                let tensor = match dtype {
                    DType::F32 | DType::F16 | DType::BF16 => Tensor::f32(shape, raw),
                    DType::C64 => Tensor::c64(
                        shape,
                        raw.chunks_exact(2)
                            .map(|p| Complex32::new(p[0], p[1]))
                            .collect(),
                    ),
                    other => {
                        return Err(RuntimeError::new(format!(
                            "weight \"{name}\": the reference executor cannot load {other} tensors"
                        )))
                    }
                };
                on_weight(&name);
                Ok((id, Arc::new(tensor)))
            })
            .collect::<Result<HashMap<_, _>, RuntimeError>>()?;
        let last_uses = graph.last_uses();
        Ok(Executor {
            graph,
            weights,
            last_uses,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the graph on named inputs; returns the graph's outputs.
    /// Attention nodes append their keys and values to `cache` and attend
    /// over everything cached, so a sequence can be fed in pieces.
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        cache: &mut KvCache,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let bindings = self.bind(inputs)?;
        let mut values: Vec<Option<Arc<Tensor>>> = vec![None; self.graph.nodes.len()];
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let result = match &node.op {
                Op::Input { name } => Arc::new(inputs[name].clone()),
                Op::Weight { .. } => self.weights[&i].clone(),
                op => {
                    let args: Vec<&Tensor> = node
                        .operands
                        .iter()
                        .map(|v| values[v.0].as_deref().expect("operands are computed first"))
                        .collect();
                    let out = eval(op, &args, i, &bindings, cache)
                        .map_err(|e| RuntimeError::new(format!("%{i} = {}: {e}", op.mnemonic())))?;
                    Arc::new(out)
                }
            };
            values[i] = Some(result);
            // Free operands whose last reader this node was.
            for v in &node.operands {
                if self.last_uses[v.0] == i {
                    values[v.0] = None;
                }
            }
        }
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|v| {
                let t = values[v.0].as_ref().expect("outputs are kept");
                Arc::try_unwrap(t.clone()).unwrap_or_else(|t| (*t).clone())
            })
            .collect())
    }

    /// Binds symbolic dimensions (such as `seq`) from the inputs, checking
    /// that every input is present with its declared type.
    fn bind(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, usize>, RuntimeError> {
        let mut bindings = HashMap::new();
        for (_, name, ty) in self.graph.inputs() {
            let t = inputs
                .get(name)
                .ok_or_else(|| RuntimeError::new(format!("input \"{name}\" ({ty}) is missing")))?;
            let dtype_ok = matches!(
                (ty.dtype, &t.data),
                (DType::I32, Data::I32(_)) | (DType::C64, Data::C64(_))
            ) || (ty.dtype.is_real_float() && matches!(t.data, Data::F32(_)));
            if !dtype_ok || t.shape.len() != ty.shape.rank() {
                return Err(RuntimeError::new(format!(
                    "input \"{name}\" must be {ty}, got {} with shape {:?}",
                    t.dtype_name(),
                    t.shape
                )));
            }
            for (d, &n) in ty.shape.dims().iter().zip(&t.shape) {
                let ok = match d {
                    Dim::Fixed(k) => *k == n,
                    Dim::Sym(s) => *bindings.entry(s.clone()).or_insert(n) == n,
                };
                if !ok {
                    return Err(RuntimeError::new(format!(
                        "input \"{name}\" must be {ty}, got shape {:?}",
                        t.shape
                    )));
                }
            }
        }
        Ok(bindings)
    }
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32], String> {
    t.as_f32()
        .ok_or_else(|| format!("{what} must be f32, got {}", t.dtype_name()))
}

fn c64s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [Complex32], String> {
    t.as_c64()
        .ok_or_else(|| format!("{what} must be c64, got {}", t.dtype_name()))
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
            },
        }
    };
}

/// Runs one op on concrete tensors.
fn eval(
    op: &Op,
    args: &[&Tensor],
    node: usize,
    bindings: &HashMap<String, usize>,
    cache: &mut KvCache,
) -> Result<Tensor, String> {
    let x = args[0];
    Ok(match op {
        Op::Input { .. } | Op::Weight { .. } => unreachable!("leaves are bound, not evaluated"),
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
                Data::F32(t) => Tensor::f32(shape, layout::embed(t, width, ids).map_err(bad)?),
                Data::C64(t) => Tensor::c64(shape, layout::embed(t, width, ids).map_err(bad)?),
                Data::I32(_) => return Err("embedding table must be a float tensor".into()),
            }
        }
        Op::Linear => {
            let w = args[1];
            let (k, n) = (w.shape[1], w.shape[0]);
            let m = x.len() / k;
            let shape = with_last(&x.shape, n);
            match (&x.data, &w.data) {
                (Data::F32(a), Data::F32(b)) => Tensor::f32(shape, linear(a, b, m, k, n)),
                (Data::C64(a), Data::C64(b)) => Tensor::c64(shape, linear(a, b, m, k, n)),
                _ => return Err("input and weight must both be f32 or both c64".into()),
            }
        }
        Op::RmsNorm { eps } => Tensor::f32(
            x.shape.clone(),
            rms_norm(f32s(x, "input")?, f32s(args[1], "gain")?, *eps),
        ),
        Op::Rope {
            base,
            layout: l,
            head_dim,
        } => {
            let pos = args[1].as_i32().ok_or("positions must be i32")?;
            Tensor::f32(
                x.shape.clone(),
                rope(f32s(x, "input")?, pos, x.cols(), *head_dim, *base, *l),
            )
        }
        Op::Attention {
            heads,
            kv_heads,
            scale,
            causal,
        } => {
            let (q, k, v) = (x, args[1], args[2]);
            if q.shape.len() != 2 {
                return Err(format!(
                    "the reference executor runs attention on [seq, channels] only, got {:?}",
                    q.shape
                ));
            }
            let shape = AttentionShape {
                heads: *heads,
                kv_heads: *kv_heads,
                head_dim: q.cols() / heads,
                value_dim: v.cols() / kv_heads,
                scale: *scale,
                causal: *causal,
            };
            let (k, v) = append_cache(cache, node, k, v)?;
            let out_shape = vec![q.shape[0], heads * shape.value_dim];
            match (&q.data, &k.data, &v.data) {
                (Data::F32(q), Data::F32(k), Data::F32(v)) => {
                    Tensor::f32(out_shape, attention(q, k, v, shape))
                }
                (Data::C64(q), Data::C64(k), Data::C64(v)) => {
                    Tensor::c64(out_shape, attention(q, k, v, shape))
                }
                _ => return Err("queries, keys and values must share one element type".into()),
            }
        }
        Op::Silu => Tensor::f32(x.shape.clone(), elementwise::silu(f32s(x, "input")?)),
        Op::Add => binary(x, args[1], |a, b| a + b, |a, b| a + b)?,
        Op::Mul => binary(x, args[1], |a, b| a * b, |a, b| a * b)?,
        Op::Softmax => Tensor::f32(
            x.shape.clone(),
            elementwise::softmax(f32s(x, "input")?, x.cols()),
        ),
        Op::Reshape { shape } => {
            let dims = shape
                .dims()
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n),
                    Dim::Sym(s) => bindings
                        .get(s)
                        .copied()
                        .ok_or_else(|| format!("dimension `{s}` is not bound by any input")),
                })
                .collect::<Result<Vec<_>, _>>()?;
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
                Data::I32(_) => return Err("concat of i32 tensors is not supported".into()),
            }
        }
        Op::Pack => Tensor::c64(
            with_last(&x.shape, x.cols() / 2),
            elementwise::pack(f32s(x, "input")?, x.cols()),
        ),
        Op::Unpack => Tensor::f32(
            with_last(&x.shape, x.cols() * 2),
            elementwise::unpack(c64s(x, "input")?, x.cols()),
        ),
        Op::Conj => Tensor::c64(x.shape.clone(), elementwise::conj(c64s(x, "input")?)),
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
) -> Result<Tensor, String> {
    Ok(match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            Tensor::f32(a.shape.clone(), elementwise::broadcast(x, y, f))
        }
        (Data::C64(x), Data::C64(y)) => {
            Tensor::c64(a.shape.clone(), elementwise::broadcast(x, y, g))
        }
        _ => return Err("operands must both be f32 or both c64".into()),
    })
}

/// Appends this step's keys and values to the node's cache entry and
/// returns everything cached so far.
fn append_cache<'a>(
    cache: &'a mut KvCache,
    node: usize,
    k: &Tensor,
    v: &Tensor,
) -> Result<(&'a Tensor, &'a Tensor), String> {
    let entry = cache
        .entries
        .entry(node)
        .or_insert_with(|| (empty_like(k), empty_like(v)));
    extend_rows(&mut entry.0, k)?;
    extend_rows(&mut entry.1, v)?;
    Ok((&entry.0, &entry.1))
}

fn empty_like(t: &Tensor) -> Tensor {
    let shape = vec![0, t.cols()];
    match t.data {
        Data::F32(_) => Tensor::f32(shape, Vec::new()),
        Data::C64(_) => Tensor::c64(shape, Vec::new()),
        Data::I32(_) => Tensor::i32(shape, Vec::new()),
    }
}

fn extend_rows(dst: &mut Tensor, src: &Tensor) -> Result<(), String> {
    if dst.cols() != src.cols() {
        return Err("cached rows have another width".into());
    }
    match (&mut dst.data, &src.data) {
        (Data::F32(d), Data::F32(s)) => d.extend_from_slice(s),
        (Data::C64(d), Data::C64(s)) => d.extend_from_slice(s),
        _ => return Err("cached rows have another element type".into()),
    }
    dst.shape[0] += src.shape[0];
    Ok(())
}
