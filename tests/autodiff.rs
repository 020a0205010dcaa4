//! Reverse-mode autodiff (`fairyc_passes::autodiff`): every op's gradient
//! rule against central finite differences, the straight-through
//! quantizer gradients on hand-made cases, the whole gradient of a tiny
//! synthetic model (widely-linear and Fairy2i W2) against finite
//! differences, and a snapshot of its training graph.
//!
//! # Tolerances
//! The executor computes in f32. A central difference with step `h` has a
//! truncation error `O(h² f''')` and a rounding error about
//! `ε_f32 · |L| / h`. With O(1) inputs and losses, `h = 1e-2` makes both
//! about 1e-4 to 1e-5, so a gradient entry must match within
//! `2e-3 + 1e-2 · |g|`: a wrong rule (a missing conjugate, a transposed
//! index, a missing term) is off by O(|g|) and fails. Every case also
//! checks that the gradient is not zero, so a check cannot pass vacuously.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::TempDir;
use fairyc::train::TrainStore;
use fairyc::{compile, import};
use fairyc_backends::reference::{evaluate_constants, Executor};
use fairyc_backends::{Data, Tensor};
use fairyc_frontend::gguf::GgmlType;
use fairyc_frontend::synth::{write_gguf, SynthConfig};
use fairyc_ir::infer::infer_type;
use fairyc_ir::{
    text, Arithmetic, AttentionOperand, DType, Dim, Granularity, Graph, GraphBuilder, MemoryStore,
    Node, Op, RopeLayout, Scheme, Shape, TensorType, ValueId, WeightStore, WlPart,
};
use fairyc_passes::autodiff::{gradients, GradOptions, Ste};
use fairyc_passes::optimizer::{
    adamw_step, adamw_update, parameter_owners, sgd_step, step_state, AdamW, Replicas,
};
use fairyc_passes::pipeline::CompileOptions;
use fairyc_passes::quantize::Method;
use fairyc_passes::real_products::{fold_split_gradients, real_products};
use fairyc_passes::rebuild::rebuild;

/// A deterministic uniform(-1, 1) stream.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// An empty in-memory store (the trainer's: tensors set there shadow its
/// source).
fn empty_store() -> TrainStore {
    TrainStore::new(Arc::new(MemoryStore::default()))
}

/// A stored tensor, which the test knows is there.
trait Get {
    fn get(&self, name: &str) -> Vec<f32>;
}

impl Get for TrainStore {
    fn get(&self, name: &str) -> Vec<f32> {
        self.read_f32(name).unwrap()
    }
}

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::new(dims.iter().copied()))
}

fn elements(t: &TensorType) -> usize {
    let real: usize = t.shape.concrete().unwrap().iter().product();
    real * if t.dtype == DType::C64 { 2 } else { 1 }
}

/// A tensor as interleaved f32 (complex as re, im pairs).
fn flat(t: &Tensor) -> Vec<f32> {
    match &t.data {
        Data::F32(d) => d.clone(),
        Data::C64(d) => d.iter().flat_map(|z| [z.re, z.im]).collect(),
        _ => panic!("not a float tensor"),
    }
}

fn run(graph: &Graph, store: &TrainStore, inputs: &HashMap<String, Tensor>) -> Vec<Tensor> {
    let exec = Executor::new(graph.clone(), store, &|_| {}).unwrap();
    exec.run(inputs).unwrap()
}

fn loss_of(graph: &Graph, store: &TrainStore, inputs: &HashMap<String, Tensor>) -> f64 {
    run(graph, store, inputs)[0].as_f32().unwrap()[0] as f64
}

/// Central difference of the loss along `dir` over weight `name`.
fn directional(
    graph: &Graph,
    store: &TrainStore,
    inputs: &HashMap<String, Tensor>,
    name: &str,
    dir: &[f32],
    h: f32,
) -> f64 {
    let base = store.get(name);
    let t = store.tensor_type(name).unwrap();
    let at = |s: f32| {
        let mut st = store.clone();
        let w = base.iter().zip(dir).map(|(w, d)| w + s * d).collect();
        st.set(name, t.clone(), w);
        loss_of(graph, &st, inputs)
    };
    (at(h) - at(-h)) / (2.0 * h as f64)
}

/// Checks the gradient of `loss` (a value of `b`'s graph) with respect to
/// every weight in `params` against central differences, entry by entry.
/// Weights are filled with uniform(-1, 1) values.
fn grad_check(
    name: &str,
    b: GraphBuilder,
    loss: ValueId,
    params: &[ValueId],
    inputs: HashMap<String, Tensor>,
) {
    grad_check_at(name, b, loss, params, inputs, empty_store());
}

/// [`grad_check`] with the weights `preset` holds set to its values.
fn grad_check_at(
    name: &str,
    b: GraphBuilder,
    loss: ValueId,
    params: &[ValueId],
    inputs: HashMap<String, Tensor>,
    preset: TrainStore,
) {
    let graph = b.finish(&[loss]);
    let mut rng = Lcg(name.bytes().map(u64::from).sum());
    let mut store = preset;
    for (_, w, t) in graph.weights() {
        if store.tensor_type(w).is_none() {
            store.set(w, t.clone(), rng.vec(elements(t)));
        }
    }
    let grad = gradients(&graph, loss, params, &GradOptions::default()).unwrap();
    round_trip(&grad);
    let outs = run(&grad, &store, &inputs);
    let want_loss = loss_of(&graph, &store, &inputs);
    assert!((outs[0].as_f32().unwrap()[0] as f64 - want_loss).abs() < 1e-5);
    for (k, &p) in params.iter().enumerate() {
        let Op::Weight { name: w } = &graph.node(p).op else {
            panic!("parameters are weights")
        };
        let g = flat(&outs[k + 1]);
        assert!(
            g.iter().any(|v| v.abs() > 1e-3),
            "{name}: the gradient of {w} is zero"
        );
        for (j, &gj) in g.iter().enumerate() {
            let mut e = vec![0.0; g.len()];
            e[j] = 1.0;
            let fd = directional(&graph, &store, &inputs, w, &e, 1e-2);
            assert!(
                (fd - gj as f64).abs() <= 2e-3 + 1e-2 * (gj as f64).abs(),
                "{name}: d/d{w}[{j}]: autodiff {gj}, finite difference {fd}"
            );
        }
    }
}

/// The gradient ops print and parse back to themselves.
fn round_trip(graph: &Graph) {
    // The cases' names have spaces; graph names in the text form do not.
    let graph = Graph {
        name: "grad".into(),
        ..graph.clone()
    };
    let printed = text::print(&graph);
    assert_eq!(
        text::parse(&printed, "grad.fir").unwrap(),
        graph,
        "{printed}"
    );
}

/// `Σ c ∘ y` for a random weight `c` (real parts of complex `y` and `c`
/// paired with their imaginary parts through `unpack`): a scalar loss
/// whose gradient with respect to `y` is `c`, generic enough to exercise
/// every entry of `y`.
fn project(b: &mut GraphBuilder, y: ValueId) -> ValueId {
    let y = if b.ty(y).dtype == DType::C64 {
        b.push(Op::Unpack { block: 0 }, &[y]).unwrap()
    } else {
        y
    };
    let c = b.weight("c", b.ty(y).clone());
    let m = b.push(Op::Mul, &[y, c]).unwrap();
    b.push(
        Op::ReduceTo {
            shape: Shape::default(),
        },
        &[m],
    )
    .unwrap()
}

fn positions(n: usize) -> (TensorType, Tensor) {
    (
        ty(DType::I32, &[n]),
        Tensor::i32(vec![n], (0..n as i32).map(|p| 3 * p + 1).collect()),
    )
}

/// One op applied to weights of the given types, projected to a scalar.
fn check_op(name: &str, op: Op, operands: &[TensorType]) {
    let mut b = GraphBuilder::new(name);
    let params: Vec<ValueId> = operands
        .iter()
        .enumerate()
        .map(|(i, t)| b.weight(format!("p{i}"), t.clone()))
        .collect();
    let y = b.push(op, &params).unwrap();
    let loss = project(&mut b, y);
    grad_check(name, b, loss, &params, HashMap::new());
}

#[test]
fn linear_real_and_complex() {
    for dt in [DType::F32, DType::C64] {
        check_op(
            &format!("linear {dt}"),
            Op::Linear,
            &[ty(dt, &[3, 4]), ty(dt, &[5, 4])],
        );
    }
}

#[test]
fn elementwise_with_broadcast() {
    for op in [Op::Add, Op::Sub, Op::Mul] {
        for dt in [DType::F32, DType::C64] {
            check_op(
                &format!("{} {dt}", op.mnemonic()),
                op.clone(),
                &[ty(dt, &[3, 4]), ty(dt, &[4])],
            );
        }
    }
    let t = ty(DType::F32, &[2, 3]);
    check_op("mul same shape", Op::Mul, &[t.clone(), t]);
    check_op("silu", Op::Silu, &[ty(DType::F32, &[3, 5])]);
    check_op("softmax", Op::Softmax, &[ty(DType::F32, &[3, 5])]);
    check_op(
        "scale",
        Op::Scale { factor: -1.5 },
        &[ty(DType::C64, &[2, 3])],
    );
    check_op("conj", Op::Conj, &[ty(DType::C64, &[2, 3])]);
    check_op(
        "reduce_to",
        Op::ReduceTo {
            shape: Shape::new([3]),
        },
        &[ty(DType::F32, &[2, 4, 3])],
    );
}

#[test]
fn rms_norm_both_operands() {
    check_op(
        "rms_norm",
        Op::RmsNorm { eps: 1e-5 },
        &[ty(DType::F32, &[3, 6]), ty(DType::F32, &[6])],
    );
}

#[test]
fn data_movement() {
    let t = ty(DType::F32, &[2, 3, 4]);
    check_op(
        "reshape",
        Op::Reshape {
            shape: Shape::new([6, 4]),
        },
        std::slice::from_ref(&t),
    );
    check_op(
        "transpose",
        Op::Transpose {
            perm: vec![2, 0, 1],
        },
        std::slice::from_ref(&t),
    );
    check_op(
        "slice",
        Op::Slice {
            axis: 1,
            start: 1,
            end: 2,
        },
        std::slice::from_ref(&t),
    );
    check_op(
        "pad",
        Op::Pad {
            axis: 2,
            before: 1,
            after: 2,
        },
        std::slice::from_ref(&t),
    );
    check_op(
        "concat",
        Op::Concat { axis: 1 },
        &[t.clone(), ty(DType::F32, &[2, 1, 4]), t],
    );
}

#[test]
fn pack_and_unpack_are_adjoint() {
    // Odd length: pack pads one zero channel, its adjoint drops it.
    for block in [0, 2] {
        let len = if block == 0 { 5 } else { 6 };
        check_op(
            &format!("pack {block}"),
            Op::Pack { block },
            &[ty(DType::F32, &[3, len])],
        );
        check_op(
            &format!("unpack {block}"),
            Op::Unpack { block },
            &[ty(DType::C64, &[3, 4])],
        );
    }
}

#[test]
fn widely_linear_parts() {
    for part in [WlPart::U, WlPart::W] {
        for (rows, cols, row_block, col_block) in [(5, 4, 0, 2), (4, 6, 2, 0)] {
            check_op(
                &format!("widely_linear {part:?} {rows}x{cols}"),
                Op::WidelyLinear {
                    part,
                    row_block,
                    col_block,
                    arithmetic: Arithmetic::F32,
                },
                &[ty(DType::F32, &[rows, cols])],
            );
        }
    }
}

#[test]
fn rope_real_and_complex() {
    for (dt, layout, width) in [
        (DType::F32, RopeLayout::Interleaved, 8),
        (DType::F32, RopeLayout::HalfSplit, 8),
        (DType::C64, RopeLayout::HalfSplit, 4),
    ] {
        let name = format!("rope {dt} {layout:?}");
        let mut b = GraphBuilder::new(&name);
        let (pt, pos) = positions(3);
        let p = b.input("positions", pt);
        let x = b.weight("x", ty(dt, &[3, width]));
        let op = Op::Rope {
            base: 10.0,
            layout,
            head_dim: 4,
        };
        let y = b.push(op, &[x, p]).unwrap();
        let loss = project(&mut b, y);
        grad_check(
            &name,
            b,
            loss,
            &[x],
            HashMap::from([("positions".to_string(), pos)]),
        );
    }
}

#[test]
fn attention_real_and_complex_grouped_causal() {
    for dt in [DType::F32, DType::C64] {
        // One sequence of 4 rows, and two sequences of 2 (segments).
        for (causal, segment) in [true, false]
            .into_iter()
            .flat_map(|c| [(c, None), (c, Some(2))])
        {
            let d = if dt == DType::C64 { 2 } else { 4 };
            check_op(
                &format!("attention {dt} causal {causal} segment {segment:?}"),
                Op::Attention {
                    heads: 2,
                    kv_heads: 1,
                    scale: 0.7,
                    causal,
                    segment,
                },
                &[ty(dt, &[4, 2 * d]), ty(dt, &[4, d]), ty(dt, &[4, d + 1])],
            );
        }
    }
}

#[test]
fn embed_and_cross_entropy() {
    let mut b = GraphBuilder::new("embed");
    let ids = b.input("ids", ty(DType::I32, &[4]));
    let table = b.weight("table", ty(DType::F32, &[6, 3]));
    let y = b.push(Op::Embed, &[ids, table]).unwrap();
    let loss = project(&mut b, y);
    let inputs = HashMap::from([("ids".to_string(), Tensor::i32(vec![4], vec![2, 5, 2, 0]))]);
    grad_check("embed", b, loss, &[table], inputs);

    let mut b = GraphBuilder::new("cross_entropy");
    let targets = b.input("targets", ty(DType::I32, &[2, 3]));
    let logits = b.weight("logits", ty(DType::F32, &[2, 3, 7]));
    let loss = b.push(Op::CrossEntropy, &[logits, targets]).unwrap();
    let t = Tensor::i32(vec![2, 3], vec![1, -1, 6, 0, 0, 3]);
    let inputs = HashMap::from([("targets".to_string(), t)]);
    grad_check("cross_entropy", b, loss, &[logits], inputs);
}

/// Distillation's KL divergence (for the student; the teacher logits are
/// a target) and the squared norm that clipping reads.
#[test]
fn kl_divergence_and_sum_of_squares() {
    let mut b = GraphBuilder::new("kl_div");
    let student = b.weight("student", ty(DType::F32, &[2, 3, 5]));
    let teacher = b.weight("teacher", ty(DType::F32, &[2, 3, 5]));
    let loss = b.push(Op::KlDiv, &[student, teacher]).unwrap();
    grad_check("kl_div", b, loss, &[student], HashMap::new());
    check_op("sum_squares", Op::SumSquares, &[ty(DType::F32, &[3, 4])]);

    // KL(p ‖ p) = 0; for rows [0, 0] against teacher [ln 3, 0]:
    // p = (3/4, 1/4), q = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2).
    let mut b = GraphBuilder::new("kl_value");
    let s = b.weight("s", ty(DType::F32, &[1, 2]));
    let t = b.weight("t", ty(DType::F32, &[1, 2]));
    let kl = b.push(Op::KlDiv, &[s, t]).unwrap();
    let graph = b.finish(&[kl]);
    let mut store = empty_store();
    store.set("s", ty(DType::F32, &[1, 2]), vec![0.0, 0.0]);
    store.set("t", ty(DType::F32, &[1, 2]), vec![3f32.ln(), 0.0]);
    let want = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
    assert!((loss_of(&graph, &store, &HashMap::new()) - want).abs() < 1e-6);
    store.set("s", ty(DType::F32, &[1, 2]), vec![3f32.ln() + 7.0, 7.0]);
    assert!(loss_of(&graph, &store, &HashMap::new()).abs() < 1e-6);
}

#[test]
fn cross_entropy_value_and_ignored_positions() {
    let mut b = GraphBuilder::new("ce");
    let targets = b.input("targets", ty(DType::I32, &[3]));
    let logits = b.weight("logits", ty(DType::F32, &[3, 2]));
    let loss = b.push(Op::CrossEntropy, &[logits, targets]).unwrap();
    let graph = b.finish(&[loss]);
    let mut store = empty_store();
    store.set(
        "logits",
        ty(DType::F32, &[3, 2]),
        vec![0.0, 0.0, 1.0, 3.0, 5.0, -5.0],
    );
    let loss_with = |t: Vec<i32>| {
        let inputs = HashMap::from([("targets".to_string(), Tensor::i32(vec![3], t))]);
        loss_of(&graph, &store, &inputs)
    };
    // Row 0: ln 2; row 1, target 0: ln(1 + e²); row 2 ignored.
    let want = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
    assert!((loss_with(vec![1, 0, -1]) - want).abs() < 1e-6);
    assert_eq!(loss_with(vec![-1, -1, -1]), 0.0);
    let exec = Executor::new(graph.clone(), &store, &|_| {}).unwrap();
    let bad = HashMap::from([("targets".to_string(), Tensor::i32(vec![3], vec![0, 2, 0]))]);
    let err = exec.run(&bad).unwrap_err().to_string();
    assert!(
        err.contains("target 2 is outside the vocabulary of 2"),
        "{err}"
    );
}

/// `L = Σ c ∘ quantize(w)`: with the identity STE, `dL/dw = c` exactly.
/// With the scale-aware STE, each entry also gets
/// `sign(w_k) · Σ_{j in its set} c_j b_j / |set|` (see `quant::ste`).
#[test]
fn straight_through_quantizers() {
    // Phase, per tensor: w = [2+0.5i, -1+0.1i; 0.2+3i, 0.1-1i].
    // Codes +1, -1, +i, -i; S_re = {0, 1}, S_im = {2, 3}.
    let w = [2.0, 0.5, -1.0, 0.1, 0.2, 3.0, 0.1, -1.0];
    let c = [0.3, -0.7, 1.1, 0.4, -0.2, 0.9, 0.5, -0.6];
    let t = ty(DType::C64, &[2, 2]);
    let scheme = Scheme::Phase;
    let got = ste_grad(scheme, &t, &w, &c, Ste::Identity);
    assert_eq!(got, c.to_vec());
    let got = ste_grad(scheme, &t, &w, &c, Ste::ScaleAware);
    // Re: Σ Re(c_j) b_j over S_re = 0.3·1 + 1.1·(-1) = -0.8, /2 = -0.4,
    // times sign(Re w) = +1, -1. Im: 0.9·1 + (-0.6)·(-1) = 1.5, /2 = 0.75,
    // times sign(Im w) = +1, -1.
    let want = [
        0.3 - 0.4,
        -0.7,
        1.1 + 0.4,
        0.4,
        -0.2,
        0.9 + 0.75,
        0.5,
        -0.6 - 0.75,
    ];
    close(&got, &want);

    // Real binary and ternary, per channel (rows).
    let w = [0.9, -0.1, 0.4, -2.0, 0.05, 0.3];
    let c = [1.0, 2.0, -1.0, 0.5, 0.25, -3.0];
    let t = ty(DType::F32, &[2, 3]);
    let channel = |scheme| Op::Quantize {
        scheme,
        granularity: Granularity::Channel,
        arithmetic: Arithmetic::F32,
    };
    for scheme in [Scheme::Binary, Scheme::Ternary] {
        assert_eq!(
            ste_grad_op(channel(scheme), &t, &w, &c, Ste::Identity),
            c.to_vec()
        );
    }
    // Binary codes [1, -1, 1 | -1, 1, 1]: Σ c b / 3 = (1 - 2 - 1)/3 and
    // (-0.5 + 0.25 - 3)/3; each entry adds sign(w) times its row's sum.
    let (r0, r1) = (-2.0 / 3.0, -3.25 / 3.0);
    let want = [
        1.0 + r0,
        2.0 - r0,
        -1.0 + r0,
        0.5 - r1,
        0.25 + r1,
        -3.0 + r1,
    ];
    close(
        &ste_grad_op(channel(Scheme::Binary), &t, &w, &c, Ste::ScaleAware),
        &want,
    );
    // Ternary: γ = 1.4/3 and 2.35/3, codes [1, 0, 1 | -1, 0, 0]:
    // sums (1 - 1)/3 = 0 and (-0.5)/3.
    let r1 = -0.5 / 3.0;
    let want = [1.0, 2.0, -1.0, 0.5 - r1, 0.25 + r1, -3.0 + r1];
    close(
        &ste_grad_op(channel(Scheme::Ternary), &t, &w, &c, Ste::ScaleAware),
        &want,
    );
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "got {got:?}, want {want:?}");
    }
}

fn ste_grad(scheme: Scheme, t: &TensorType, w: &[f32], c: &[f32], ste: Ste) -> Vec<f32> {
    let op = Op::Quantize {
        scheme,
        granularity: Granularity::Tensor,
        arithmetic: Arithmetic::F32,
    };
    ste_grad_op(op, t, w, c, ste)
}

fn ste_grad_op(op: Op, t: &TensorType, w: &[f32], c: &[f32], ste: Ste) -> Vec<f32> {
    let (graph, loss, wv, store) = ste_problem(op, t, w, c);
    let grad = gradients(&graph, loss, &[wv], &GradOptions { ste }).unwrap();
    round_trip(&grad);
    flat(&run(&grad, &store, &HashMap::new())[1])
}

/// `L = Σ c ∘ quantize(w)` with `dL/dq = c` (interleaved for complex `q`):
/// the graph, its loss, `w`, and a store holding `w` and `c`.
fn ste_problem(
    op: Op,
    t: &TensorType,
    w: &[f32],
    c: &[f32],
) -> (Graph, ValueId, ValueId, TrainStore) {
    let mut b = GraphBuilder::new("ste");
    let wv = b.weight("w", t.clone());
    let q = b.push(op, &[wv]).unwrap();
    let loss = project(&mut b, q);
    let graph = b.finish(&[loss]);
    let mut store = empty_store();
    store.set("w", t.clone(), w.to_vec());
    // `project` unpacks a complex `q` with block 0: each row's real parts,
    // then its imaginary parts. Lay `c` out so that `dL/dq = c`.
    let c = if t.dtype == DType::C64 {
        let m = fixed_last(t);
        c.chunks(2 * m)
            .flat_map(|row| {
                let re = row.iter().step_by(2);
                re.chain(row.iter().skip(1).step_by(2))
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        c.to_vec()
    };
    store.set("c", store_type_of(&graph, "c"), c);
    (graph, loss, wv, store)
}

fn fixed_last(t: &TensorType) -> usize {
    t.shape.last().unwrap().clone().fixed().unwrap()
}

fn store_type_of(graph: &Graph, name: &str) -> TensorType {
    graph
        .weights()
        .find(|(_, n, _)| *n == name)
        .map(|(_, _, t)| t.clone())
        .unwrap()
}

#[test]
fn gradient_errors() {
    let mut b = GraphBuilder::new("bad");
    let w = b.weight("w", ty(DType::F32, &[2, 2]));
    let y = b.push(Op::Silu, &[w]).unwrap();
    let g = b.finish(&[y]);
    let err = gradients(&g, y, &[w], &GradOptions::default()).unwrap_err();
    assert!(err.to_string().contains("must be a scalar f32[]"), "{err}");
    let err = gradients(&g, ValueId(7), &[w], &GradOptions::default()).unwrap_err();
    assert!(err.to_string().contains("%7 is not a value"), "{err}");

    // Token ids have no gradient; a weight the loss ignores gets zeros.
    let mut b = GraphBuilder::new("ids");
    let ids = b.input("ids", ty(DType::I32, &[2]));
    let table = b.weight("table", ty(DType::F32, &[3, 2]));
    let unused = b.weight("unused", ty(DType::F32, &[2]));
    let y = b.push(Op::Embed, &[ids, table]).unwrap();
    let loss = project(&mut b, y);
    let g = b.finish(&[loss]);
    let err = gradients(&g, loss, &[ids], &GradOptions::default()).unwrap_err();
    assert!(err.to_string().contains("only real and complex"), "{err}");
    let grad = gradients(&g, loss, &[table, unused], &GradOptions::default()).unwrap();
    let mut store = empty_store();
    store.set("table", ty(DType::F32, &[3, 2]), vec![1.0; 6]);
    store.set("unused", ty(DType::F32, &[2]), vec![5.0; 2]);
    store.set("c", ty(DType::F32, &[2, 2]), vec![1.0, 2.0, 3.0, 4.0]);
    let ids = Tensor::i32(vec![2], vec![2, 2]);
    let outs = run(&grad, &store, &HashMap::from([("ids".to_string(), ids)]));
    assert_eq!(flat(&outs[1]), [0.0, 0.0, 0.0, 0.0, 4.0, 6.0]);
    assert_eq!(flat(&outs[2]), [0.0, 0.0]);
}

/// A tiny model, its logits scored against the next tokens.
fn tiny(dir: &TempDir) -> fairyc::Imported {
    let path = dir.path("tiny.gguf");
    write_gguf(&path, &SynthConfig::tiny(), GgmlType::F32).unwrap();
    import(&path).unwrap()
}

/// Appends `targets: i32[seq]` and the cross-entropy of the logits; returns
/// the loss.
fn with_loss(graph: &mut Graph) -> ValueId {
    let logits = graph.outputs[0];
    let lead = graph.ty(logits).shape.dims()[..1].to_vec();
    let tt = TensorType::new(DType::I32, Shape(lead));
    graph.nodes.push(Node {
        op: Op::Input {
            name: "targets".into(),
        },
        operands: Vec::new(),
        ty: tt,
    });
    let targets = ValueId(graph.nodes.len() - 1);
    let types = [graph.ty(logits), graph.ty(targets)];
    let lt = infer_type(&Op::CrossEntropy, &types).unwrap();
    graph.nodes.push(Node {
        op: Op::CrossEntropy,
        operands: vec![logits, targets],
        ty: lt,
    });
    let loss = ValueId(graph.nodes.len() - 1);
    graph.outputs = vec![loss];
    loss
}

fn model_inputs() -> HashMap<String, Tensor> {
    let ids = [40, 77, 104, 108, 108, 111];
    let n = ids.len();
    let mut targets: Vec<i32> = ids[1..].to_vec();
    targets.push(-1);
    HashMap::from([
        ("tokens".to_string(), Tensor::i32(vec![n], ids.to_vec())),
        (
            "positions".to_string(),
            Tensor::i32(vec![n], (0..n as i32).collect()),
        ),
        ("targets".to_string(), Tensor::i32(vec![n], targets)),
    ])
}

/// The gradient of every weight against a central difference along a
/// random direction (uniform(-1, 1) entries) over the whole tensor, for a
/// few weights: a sum over all entries gives a directional derivative well
/// above f32 noise, so the 2% tolerance tests every entry's contribution at
/// once. The step is 1e-3: a direction over thousands of entries moves the
/// weights by `h · ‖dir‖ ≈ h · 50`, and at `h = 1e-2` the quantized model's
/// third-order term alone is 20% (it converges to the autodiff value as
/// `h` shrinks: 2%, 0.2% and 0.1% at 3e-3, 1e-3, 3e-4); the f32 rounding
/// error at 1e-3 is about `1e-7 · |L| / h ≈ 1e-3`.
fn check_model(graph: &Graph, store: &TrainStore, surrogate: &Graph, names: &[&str]) {
    let loss = graph.outputs[0];
    let params: Vec<ValueId> = graph.weights().map(|(id, _, _)| id).collect();
    let grad = gradients(graph, loss, &params, &GradOptions::default()).unwrap();
    let inputs = model_inputs();
    let outs = run(&grad, store, &inputs);
    let l0 = loss_of(surrogate, store, &inputs);
    assert!((outs[0].as_f32().unwrap()[0] as f64 - l0).abs() < 1e-4);
    let mut rng = Lcg(7);
    for name in names {
        let k = params
            .iter()
            .position(|&p| {
                graph.node(p).op
                    == Op::Weight {
                        name: name.to_string(),
                    }
            })
            .unwrap_or_else(|| panic!("no weight {name}"));
        let g = flat(&outs[k + 1]);
        let dir = rng.vec(g.len());
        let want: f64 = g.iter().zip(&dir).map(|(a, b)| (a * b) as f64).sum();
        let fd = directional(surrogate, store, &inputs, name, &dir, 1e-3);
        assert!(
            want.abs() > 2e-2 && (fd - want).abs() <= 2e-2 * want.abs() + 2e-3,
            "{name}: autodiff {want}, finite difference {fd}"
        );
    }
}

const CHECKED: &[&str] = &[
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_v.weight",
    "blk.1.ffn_down.weight",
    "blk.1.attn_norm.weight",
    "output.weight",
];

fn compile_options(method: Option<Method>) -> CompileOptions {
    CompileOptions {
        widely_linear: true,
        method,
        ..CompileOptions::default()
    }
}

/// The tiny model compiled with `method`, and a store over its weights.
fn tiny_compiled(dir: &TempDir, method: Option<Method>) -> (Graph, TrainStore) {
    let imported = tiny(dir);
    let store = TrainStore::new(imported.weights.clone());
    let (compiled, _) = compile(imported, &compile_options(method)).unwrap();
    (compiled.graph, store)
}

#[test]
fn tiny_model_gradient_real_and_widely_linear() {
    let dir = TempDir::new("autodiff-wl");
    let imported = tiny(&dir);
    let store = TrainStore::new(imported.weights.clone());
    let mut plain = imported.graph.clone();
    with_loss(&mut plain);
    check_model(&plain, &store, &plain, CHECKED);
    let (compiled, _) = compile(imported, &compile_options(None)).unwrap();
    let mut g = compiled.graph;
    with_loss(&mut g);
    check_model(&g, &store, &g, CHECKED);
}

/// Fairy2i W2 with the identity STE: the quantized loss's STE gradient is
/// the exact gradient of the surrogate in which every `quantize(x)` is
/// `x + (quantize(x₀) − x₀)` with the offset frozen at the current weights
/// (same value, identity derivative), which finite differences can check.
/// The scale-aware STE changes only the quantized layers' weight gradients.
#[test]
fn tiny_model_gradient_fairy2i_w2() {
    let dir = TempDir::new("autodiff-w2");
    let (mut g, mut store) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    with_loss(&mut g);
    let quantized: Vec<ValueId> = g
        .ids()
        .filter(|&v| matches!(g.node(v).op, Op::Quantize { .. }))
        .collect();
    assert!(!quantized.is_empty());
    let mut wanted = quantized.clone();
    wanted.extend(quantized.iter().map(|&q| g.node(q).operands[0]));
    let values = evaluate_constants(&g, &store, &wanted).unwrap();
    let surrogate = rebuild(&g, |b, id, node, operands| {
        if !matches!(node.op, Op::Quantize { .. }) {
            return Ok(None);
        }
        let q = flat(&values[&id.0]);
        let x = flat(&values[&node.operands[0].0]);
        let name = format!("ste.offset.{}", id.0);
        let delta = q.iter().zip(&x).map(|(q, x)| q - x).collect();
        store.set(&name, node.ty.clone(), delta);
        let off = b.weight(name, node.ty.clone());
        Ok(Some(b.push(Op::Add, &[operands[0], off])?))
    })
    .unwrap();
    check_model(&g, &store, &surrogate, CHECKED);

    // The scale-aware STE runs through the same model: finite, and apart
    // from the identity's only by the scale terms of the quantized layers.
    let params: Vec<ValueId> = g.weights().map(|(id, _, _)| id).collect();
    let inputs = model_inputs();
    let grads = |ste| {
        let grad = gradients(&g, g.outputs[0], &params, &GradOptions { ste }).unwrap();
        run(&grad, &store, &inputs)
    };
    let (identity, scale_aware) = (grads(Ste::Identity), grads(Ste::ScaleAware));
    let mut differs = 0;
    for (k, &p) in params.iter().enumerate() {
        let (a, b) = (flat(&identity[k + 1]), flat(&scale_aware[k + 1]));
        assert!(b.iter().all(|v| v.is_finite()));
        if a != b {
            differs += 1;
            let consumers: Vec<&Op> = g
                .nodes
                .iter()
                .filter(|n| n.operands.contains(&p))
                .map(|n| &n.op)
                .collect();
            assert!(
                consumers
                    .iter()
                    .any(|op| matches!(op, Op::WidelyLinear { .. })),
                "{p}: only quantized layers' weights get scale terms"
            );
        }
    }
    assert!(differs > 0);
}

/// Training's real products (`real_products`): the tiny W2 model's loss and
/// every gradient are the complex form's, to f32 rounding, with no packing
/// or conjugate left on the activations; the rewritten graph is
/// snapshot-tested in the text form.
#[test]
fn real_products_keep_the_w2_loss_and_gradients() {
    let dir = TempDir::new("autodiff-real");
    let (mut g, store) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    // The source is a temporary path.
    g.meta.insert("source".into(), "<tmp>/tiny.gguf".into());
    with_loss(&mut g);
    let real = real_products(&g).unwrap();
    fairyc_ir::verify(&real).unwrap();
    // The pass's output in the text form, as every pass's is.
    let printed = text::print(&real);
    assert_eq!(text::parse(&printed, "real.fir").unwrap(), real);
    insta::assert_snapshot!("tiny_w2_real_products", printed);
    let count = |g: &Graph, f: fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
    assert!(count(&g, |op| matches!(op, Op::Pack { .. })) > 0);
    for (what, f) in [
        (
            "pack",
            (|op| matches!(op, Op::Pack { .. })) as fn(&Op) -> bool,
        ),
        ("conj", |op| matches!(op, Op::Conj)),
        ("unpack", |op| matches!(op, Op::Unpack { .. })),
    ] {
        assert_eq!(count(&real, f), 0, "{what} left in the real-product graph");
    }
    let inputs = model_inputs();
    let grads = |g: &Graph, fold: bool| {
        let params: Vec<ValueId> = g.weights().map(|(id, _, _)| id).collect();
        let names: Vec<String> = g.weights().map(|(_, n, _)| n.to_string()).collect();
        let mut grad = gradients(g, g.outputs[0], &params, &GradOptions::default()).unwrap();
        if fold {
            grad = fold_split_gradients(&grad).unwrap();
            fairyc_ir::verify(&grad).unwrap();
        }
        let out = run(&grad, &store, &inputs);
        let mut by_name: Vec<(String, Vec<f32>)> =
            names.into_iter().zip(out[1..].iter().map(flat)).collect();
        by_name.sort_by(|a, b| a.0.cmp(&b.0));
        (flat(&out[0])[0], by_name)
    };
    let ((loss, complex), (real_loss, real_grads)) = (grads(&g, false), grads(&real, false));
    let (folded_loss, folded_grads) = grads(&real, true);
    assert_eq!(real_loss, folded_loss);
    for (want, got) in [(loss, real_loss), (loss, folded_loss)] {
        assert!(
            (want - got).abs() <= 1e-5 * want.abs(),
            "loss {want} against {got}"
        );
    }
    assert_eq!(complex.len(), real_grads.len());
    assert_eq!(complex.len(), folded_grads.len());
    for ((name, a), ((_, b), (_, c))) in complex.iter().zip(real_grads.iter().zip(&folded_grads)) {
        let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (what, other) in [("real products", b), ("folded", c)] {
            let worst = a
                .iter()
                .zip(other)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{name} ({what}): worst difference {worst}, largest {scale}"
            );
        }
    }
}

/// With the identity straight-through estimator, the backward pass of a
/// W2 real product needs neither the split nor its adjoint: the folded
/// gradient graph keeps only the forward pass's two of each a layer,
/// while the scale-aware estimator (whose terms do not cancel) keeps them.
#[test]
fn identity_ste_folds_the_split_out_of_the_backward_pass() {
    let dir = TempDir::new("autodiff-fold");
    let (mut g, _) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    with_loss(&mut g);
    let real = real_products(&g).unwrap();
    let params: Vec<ValueId> = real.weights().map(|(id, _, _)| id).collect();
    let count = |g: &Graph, f: fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
    let split = |op: &Op| matches!(op, Op::WidelyLinear { .. });
    let adjoint = |op: &Op| matches!(op, Op::WidelyLinearGrad { .. });
    let layers = count(&real, adjoint) / 2;
    assert_eq!(layers, 14, "the tiny model's quantized layers");
    for (ste, kept) in [(Ste::Identity, 2 * layers), (Ste::ScaleAware, 4 * layers)] {
        let grad = gradients(&real, real.outputs[0], &params, &GradOptions { ste }).unwrap();
        assert_eq!(count(&grad, split), 4 * layers, "{ste:?} before folding");
        let folded = fold_split_gradients(&grad).unwrap();
        fairyc_ir::verify(&folded).unwrap();
        assert_eq!(count(&folded, split), kept, "{ste:?}: splits after folding");
        assert_eq!(
            count(&folded, adjoint),
            kept,
            "{ste:?}: adjoints after folding"
        );
    }
}

/// `widely_linear_grad` is linear in its gradient operand, and its
/// derivative is the split (its first operand only gives the shape).
#[test]
fn widely_linear_grad_derivative() {
    for part in [WlPart::U, WlPart::W] {
        let name = format!("widely_linear_grad {part:?}");
        let mut b = GraphBuilder::new(&name);
        let r = b.weight("r", ty(DType::F32, &[4, 6]));
        let d = b.weight("d", ty(DType::C64, &[2, 3]));
        let op = Op::WidelyLinearGrad {
            part,
            row_block: 0,
            col_block: 2,
        };
        let y = b.push(op, &[r, d]).unwrap();
        let loss = project(&mut b, y);
        grad_check(&name, b, loss, &[d], HashMap::new());
    }
}

/// Gauss's product in the training graph: `simplify` with a cost model
/// for long windows replaces the complex products of the forward and the
/// backward pass (`linear` by a weight expression, and the weight
/// gradients `linear_weight_grad`) by three real ones each; for single
/// rows the complex products stay. Either way the gradients are the same.
#[test]
fn gauss_product_in_the_training_graph() {
    use fairyc_passes::cost::CostModel;
    use fairyc_passes::egraph::Limits;
    use fairyc_passes::simplify::{simplify, SimplifyOptions};
    let dir = TempDir::new("autodiff-gauss");
    let (graph, store) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    let (g, loss, _, ids) = trainable(graph);
    let grad = gradients(&g, loss, &ids, &GradOptions::default()).unwrap();
    let complex_products = |g: &Graph| {
        let count = |op: fn(&Op) -> bool, dtype| {
            g.nodes
                .iter()
                .filter(|n| op(&n.op) && g.ty(n.operands[0]).dtype == dtype)
                .count()
        };
        let lwg = |op: &Op| matches!(op, Op::LinearWeightGrad);
        (count(lwg, DType::C64), count(lwg, DType::F32))
    };
    let (complex_before, real_before) = complex_products(&grad);
    assert!(complex_before > 0);
    let want = run(&grad, &store, &model_inputs());
    for (tokens, gauss) in [(4096.0, true), (1.0, false)] {
        let options = SimplifyOptions {
            identities: false,
            gauss: true,
            cost: CostModel {
                tokens,
                ..CostModel::default()
            },
        };
        let (simplified, _) = simplify(&grad, options, Limits::default());
        let (complex, real) = complex_products(&simplified);
        if gauss {
            assert_eq!(
                complex, 0,
                "Gauss's product for every complex weight gradient"
            );
            assert_eq!(real, real_before + 3 * complex_before);
        } else {
            assert_eq!((complex, real), (complex_before, real_before));
        }
        let got = run(&simplified, &store, &model_inputs());
        for (a, b) in got.iter().zip(&want) {
            let (a, b) = (flat(a), flat(b));
            let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * scale, "tokens {tokens}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn tiny_model_training_graph_snapshot() {
    let dir = TempDir::new("autodiff-snap");
    let imported = tiny(&dir);
    let (compiled, _) = compile(
        imported,
        &compile_options(Some(Method::Fairy2i { stages: 2 })),
    )
    .unwrap();
    let mut g = compiled.graph;
    // The source is a temporary path.
    g.meta.insert("source".into(), "<tmp>/tiny.gguf".into());
    let loss = with_loss(&mut g);
    let params: Vec<ValueId> = g.weights().map(|(id, _, _)| id).collect();
    let training = gradients(&g, loss, &params, &GradOptions::default()).unwrap();
    let printed = text::print(&training);
    assert_eq!(text::parse(&printed, "training.fir").unwrap(), training);
    assert!(training.nodes.iter().any(|n| matches!(
        n.op,
        Op::AttentionGrad {
            which: AttentionOperand::K,
            ..
        }
    )));
    assert_eq!(
        training.ty(training.outputs[0]).shape,
        Shape(Vec::<Dim>::new())
    );
    insta::assert_snapshot!("tiny_w2_training_graph", printed);
}

/// Plain SGD as IR on one short sequence: the loss of the tiny model falls
/// over 100 steps, full precision and Fairy2i W2 (identity STE, master
/// weights in f32) alike.
#[test]
fn sgd_lowers_the_loss_of_a_tiny_model() {
    let dir = TempDir::new("autodiff-sgd");
    for method in [None, Some(Method::Fairy2i { stages: 2 })] {
        let (graph, mut store) = tiny_compiled(&dir, method);
        let losses = train_sgd(graph, &mut store, 0.5, 100);
        let (first, last) = (losses[0], losses[99]);
        eprintln!("{method:?}: loss {first} -> {} -> {last}", losses[49]);
        assert!(
            losses.iter().all(|l| l.is_finite()) && last < 0.1 * first,
            "{method:?}: losses {losses:?}"
        );
    }
}

/// The scale-aware STE adds exactly the quantizer's true derivative: away
/// from sector and threshold boundaries the codes are locally constant, so
/// a finite difference of `Σ c ∘ quantize(w)` sees only the scales'
/// dependence on `w`, which must equal the scale-aware gradient minus the
/// identity's. Random O(1) entries lie far from every boundary compared
/// with the step 1e-3 (the f32 rounding error is about 1e-7 / 1e-3).
#[test]
fn scale_aware_ste_is_the_scales_derivative() {
    let cases = [
        (Scheme::Phase, DType::C64, Granularity::Tensor),
        (Scheme::Phase, DType::C64, Granularity::Channel),
        (Scheme::Phase, DType::C64, Granularity::Group(2)),
        (Scheme::Binary, DType::F32, Granularity::Tensor),
        (Scheme::Binary, DType::F32, Granularity::Group(2)),
        (Scheme::Ternary, DType::F32, Granularity::Channel),
    ];
    for (i, (scheme, dt, granularity)) in cases.into_iter().enumerate() {
        let t = ty(dt, &[3, 5]);
        let op = Op::Quantize {
            scheme,
            granularity,
            arithmetic: Arithmetic::F32,
        };
        let mut rng = Lcg(100 + i as u64);
        let w = rng.vec(elements(&t));
        let c = rng.vec(elements(&t));
        let scale_aware = ste_grad_op(op.clone(), &t, &w, &c, Ste::ScaleAware);
        let identity = ste_grad_op(op.clone(), &t, &w, &c, Ste::Identity);
        // The same loss, by finite differences.
        let (graph, _, _, store) = ste_problem(op, &t, &w, &c);
        let mut nonzero = false;
        for j in 0..w.len() {
            let mut e = vec![0.0; w.len()];
            e[j] = 1.0;
            let fd = directional(&graph, &store, &HashMap::new(), "w", &e, 1e-3);
            let want = (scale_aware[j] - identity[j]) as f64;
            nonzero |= want.abs() > 1e-2;
            assert!(
                (fd - want).abs() < 2e-3,
                "{scheme:?} {granularity:?} [{j}]: scale term {want}, finite difference {fd}"
            );
        }
        assert!(nonzero, "{scheme:?} {granularity:?}: no scale term");
    }
}

/// Activation quantization passes gradients straight through; the scale-
/// aware STE of iFairy's PhaseQuant is refused by name (not derived).
#[test]
fn activation_quantization_and_missing_rules() {
    let t = ty(DType::F32, &[2, 3]);
    let mut b = GraphBuilder::new("act");
    let x = b.weight("x", t.clone());
    let y = b.push(Op::ActQuant { bits: 4 }, &[x]).unwrap();
    let loss = project(&mut b, y);
    let g = b.finish(&[loss]);
    let grad = gradients(&g, loss, &[x], &GradOptions::default()).unwrap();
    let mut store = empty_store();
    store.set("x", t.clone(), vec![0.3, -1.0, 2.0, 0.1, 0.5, -0.7]);
    let c = vec![1.0, -2.0, 0.5, 3.0, 0.25, -1.5];
    store.set("c", t, c.clone());
    assert_eq!(flat(&run(&grad, &store, &HashMap::new())[1]), c);

    let mut b = GraphBuilder::new("ifairy");
    let z = b.weight("z", ty(DType::C64, &[2, 3]));
    let op = Op::Quantize {
        scheme: Scheme::PhaseIfairy,
        granularity: Granularity::Tensor,
        arithmetic: Arithmetic::F32,
    };
    let y = b.push(op, &[z]).unwrap();
    let loss = project(&mut b, y);
    let g = b.finish(&[loss]);
    gradients(&g, loss, &[z], &GradOptions::default()).unwrap();
    let scale_aware = GradOptions {
        ste: Ste::ScaleAware,
    };
    let err = gradients(&g, loss, &[z], &scale_aware).unwrap_err();
    assert!(err.to_string().contains("quantize lies between"), "{err}");
}

/// iFairy's ops: CReLU² (away from the third quadrant's edges, where it
/// jumps) and the complex RMSNorm (two real gains).
#[test]
fn ifairy_crelu2_and_complex_rms_norm() {
    let t = ty(DType::C64, &[2, 4]);
    let mut b = GraphBuilder::new("crelu2");
    let z = b.weight("z", t.clone());
    let y = b.push(Op::CReluSquared, &[z]).unwrap();
    let loss = project(&mut b, y);
    let mut preset = empty_store();
    // One entry per quadrant and sign pattern, each part at least 0.2 from 0.
    let values = [
        0.5, 0.7, -0.6, 0.3, -0.4, -0.9, 0.8, -0.2, 1.1, -0.5, -0.3, 0.6, -0.7, -0.4, 0.9, 0.25,
    ];
    preset.set("z", t, values.to_vec());
    grad_check_at("crelu2", b, loss, &[z], HashMap::new(), preset);
    check_op(
        "rms_norm c64",
        Op::RmsNorm { eps: 1e-5 },
        &[ty(DType::C64, &[3, 4]), ty(DType::F32, &[8])],
    );
}

/// The same for a natively complex iFairy model: gradients flow through
/// complex RMSNorm, complex RoPE and attention, CReLU², and iFairy's
/// weight and activation quantizers (identity STE) into the latent
/// `*_real` / `*_imag` weights.
#[test]
fn sgd_lowers_the_loss_of_a_tiny_ifairy_model() {
    use fairyc_frontend::synth::{write_ifairy_hf, IfairySynthConfig};
    let dir = TempDir::new("autodiff-ifairy");
    let path = dir.path("ifairy");
    write_ifairy_hf(&path, &IfairySynthConfig::tiny()).unwrap();
    let imported = fairyc::import(&path).unwrap();
    let mut store = TrainStore::new(imported.weights.clone());
    let losses = train_sgd(imported.graph, &mut store, 0.2, 150);
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("iFairy: loss {first} -> {} -> {last}", losses[75]);
    assert!(
        losses.iter().all(|l| l.is_finite()) && last < 0.5 * first,
        "losses {losses:?}"
    );
}

/// Trains every weight of a language-model graph on `model_inputs` with
/// plain SGD as IR for `steps` steps; returns the loss before each step.
fn train_sgd(g: Graph, store: &mut TrainStore, lr: f32, steps: usize) -> Vec<f32> {
    let (g, loss, params, ids) = trainable(g);
    let step = sgd_step(&g, loss, &ids, lr, &GradOptions::default()).unwrap();
    let inputs = model_inputs();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let outs = run(&step, store, &inputs);
        losses.push(outs[0].as_f32().unwrap()[0]);
        for ((_, name, t), new) in params.iter().zip(&outs[1..]) {
            store.set(name, t.clone(), flat(new));
        }
    }
    losses
}

/// The state inputs of an AdamW update (each parameter and its moments),
/// from `store`.
fn state_inputs(
    store: &TrainStore,
    params: &[(String, TensorType)],
    inputs: &mut HashMap<String, Tensor>,
) {
    for (name, ty) in params {
        let shape = ty.shape.concrete().unwrap();
        inputs.insert(
            format!("param.{name}"),
            Tensor::f32(shape.clone(), store.get(name)),
        );
        for moment in ["m", "v"] {
            let key = format!("adam.{moment}.{name}");
            inputs.insert(key.clone(), Tensor::f32(shape.clone(), store.get(&key)));
        }
    }
}

/// The scalar inputs of an AdamW update at step `t` (1-based).
fn adam_inputs(adam: &AdamW, t: i32, lr: f32, grad_scale: f32) -> HashMap<String, Tensor> {
    let scalar = |x: f32| Tensor::f32(vec![], vec![x]);
    HashMap::from([
        ("grad_scale".to_string(), scalar(grad_scale)),
        ("lr".to_string(), scalar(lr)),
        ("c1".to_string(), scalar(1.0 / (1.0 - adam.beta1.powi(t)))),
        ("c2".to_string(), scalar(1.0 / (1.0 - adam.beta2.powi(t)))),
        ("weight_decay".to_string(), scalar(0.0)),
    ])
}

/// AdamW as IR: the first step moves every weight by `lr · sign(g)` (with
/// zero moments, `m̂ = g` and `v̂ = g²`), and over 60 steps the tiny
/// model's loss falls, in full precision and at Fairy2i W2.
#[test]
fn adamw_update_follows_the_rule_and_trains() {
    let dir = TempDir::new("autodiff-adamw");
    for method in [None, Some(Method::Fairy2i { stages: 2 })] {
        let (graph, mut store) = tiny_compiled(&dir, method);
        let (g, loss, params, ids) = trainable(graph);
        let named: Vec<(String, TensorType)> = params
            .iter()
            .map(|(_, n, t)| (n.clone(), t.clone()))
            .collect();
        for (name, t) in &named {
            let n: usize = t.shape.concrete().unwrap().iter().product();
            store.set(&format!("adam.m.{name}"), t.clone(), vec![0.0; n]);
            store.set(&format!("adam.v.{name}"), t.clone(), vec![0.0; n]);
        }
        let adam = AdamW {
            clip: None,
            ..AdamW::default()
        };
        let update = adamw_update(&named, &adam).unwrap();
        round_trip(&update);
        let grads = gradients(&g, loss, &ids, &GradOptions::default()).unwrap();
        let lr = 1e-2f32;
        let mut losses = Vec::new();
        for t in 1..=60 {
            let outs = run(&grads, &store, &model_inputs());
            losses.push(outs[0].as_f32().unwrap()[0]);
            let mut inputs = adam_inputs(&adam, t, lr, 1.0);
            for ((name, _), d) in named.iter().zip(&outs[1..]) {
                inputs.insert(format!("grad.{name}"), d.clone());
            }
            let before: Vec<Vec<f32>> = named.iter().map(|(n, _)| store.get(n)).collect();
            state_inputs(&store, &named, &mut inputs);
            let new = run(&update, &store, &inputs);
            let k = named.len();
            for (i, (name, ty)) in named.iter().enumerate() {
                store.set(name, ty.clone(), flat(&new[1 + i]));
                store.set(&format!("adam.m.{name}"), ty.clone(), flat(&new[1 + k + i]));
                store.set(
                    &format!("adam.v.{name}"),
                    ty.clone(),
                    flat(&new[1 + 2 * k + i]),
                );
            }
            if t == 1 {
                for (i, (name, _)) in named.iter().enumerate() {
                    let after = store.get(name);
                    for ((a, b), d) in after.iter().zip(&before[i]).zip(flat(&outs[1 + i])) {
                        if d.abs() > 1e-4 {
                            let want = b - lr * d.signum();
                            assert!((a - want).abs() < 1e-4, "{name}: {a} vs {want}");
                        }
                    }
                }
            }
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("AdamW {method:?}: loss {first} -> {last}");
        assert!(
            losses.iter().all(|l| l.is_finite()) && last < 0.5 * first,
            "{losses:?}"
        );
    }
}

/// A sharded optimizer (ZeRO stage 1 by tensors) puts each parameter's
/// moments on one rank, the ranks' shares near equal, and every rank keeps
/// every master.
#[test]
fn sharded_optimizer_state_is_divided_among_the_ranks() {
    let ty = |n: usize| TensorType::new(DType::F32, Shape::new([n]));
    let params: Vec<(String, TensorType)> = [900, 500, 400, 300, 200, 100]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("w{i}"), ty(n)))
        .collect();
    let owners = parameter_owners(&params, 3);
    // Largest first, each to the least loaded rank (the lowest on a tie):
    // 900 | 500 + 200 + 100 | 400 + 300.
    assert_eq!(owners, [0, 1, 2, 2, 1, 1]);
    let mut moments = Vec::new();
    for rank in 0..3 {
        let state = step_state(
            &params,
            &Replicas::ShardedOptimizer {
                rank,
                owners: owners.clone(),
            },
        );
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..6],
            ["w0", "w1", "w2", "w3", "w4", "w5"],
            "every master"
        );
        moments.extend(names[6..].iter().map(|n| n.to_string()));
    }
    moments.sort();
    let mut want: Vec<String> = (0..6)
        .flat_map(|i| [format!("adam.m.w{i}"), format!("adam.v.w{i}")])
        .collect();
    want.sort();
    assert_eq!(moments, want, "each moment on exactly one rank");
}

/// The update averages the summed gradients of the micro-batches
/// (`grad_scale`), reports the squared global norm, and clips the mean
/// gradient to `clip` before it enters the moments; a gradient inside the
/// norm passes unchanged. Weight decay is decoupled: `p · lr · wd` more.
#[test]
fn adamw_update_accumulates_clips_and_decays() {
    let t2 = ty(DType::F32, &[2]);
    let t3 = ty(DType::F32, &[3]);
    let params = vec![("a".to_string(), t2.clone()), ("b".to_string(), t3.clone())];
    let adam = AdamW {
        clip: Some(1.0),
        ..AdamW::default()
    };
    let update = adamw_update(&params, &adam).unwrap();
    let mut store = empty_store();
    store.set("a", t2.clone(), vec![1.0, -2.0]);
    store.set("b", t3.clone(), vec![0.5, 0.0, 3.0]);
    for (n, t) in [("a", &t2), ("b", &t3)] {
        let len = t.shape.concrete().unwrap()[0];
        store.set(&format!("adam.m.{n}"), t.clone(), vec![0.0; len]);
        store.set(&format!("adam.v.{n}"), t.clone(), vec![0.0; len]);
    }
    // Summed over 4 micro-batches: the mean is (3, 0) and (0, 4, 0), norm 5.
    let summed = |scale: f32| {
        let mut inputs = adam_inputs(&adam, 1, 0.1, 0.25);
        inputs.insert(
            "grad.a".into(),
            Tensor::f32(vec![2], vec![12.0 * scale, 0.0]),
        );
        inputs.insert(
            "grad.b".into(),
            Tensor::f32(vec![3], vec![0.0, 16.0 * scale, 0.0]),
        );
        state_inputs(&store, &params, &mut inputs);
        inputs
    };
    let outs = run(&update, &store, &summed(1.0));
    assert!((outs[0].as_f32().unwrap()[0] - 25.0).abs() < 1e-4);
    // m' = (1 - β1) · g · (1/5): the clipped mean.
    close(&flat(&outs[3]), &[0.1 * 3.0 / 5.0, 0.0]);
    close(&flat(&outs[4]), &[0.0, 0.1 * 4.0 / 5.0, 0.0]);
    // Inside the norm (0.1 of it): no clipping.
    let outs = run(&update, &store, &summed(0.1));
    close(&flat(&outs[3]), &[0.1 * 0.3, 0.0]);
    // Decoupled weight decay on a parameter without gradient.
    let mut inputs = summed(0.1);
    inputs.insert("weight_decay".into(), Tensor::f32(vec![], vec![0.5]));
    let outs = run(&update, &store, &inputs);
    close(
        &flat(&outs[1]),
        &[1.0 - 0.1 * (1.0 + 0.5), -2.0 * (1.0 - 0.05)],
    );
    close(
        &flat(&outs[2]),
        &[0.5 - 0.1 * 0.5 * 0.5, -0.1 * 1.0, 3.0 * (1.0 - 0.05)],
    );
}

/// A weight of a graph being trained: id, name, type.
type Param = (ValueId, String, TensorType);

/// `g` with its loss, the loss, and its weights (as params and as ids).
fn trainable(mut g: Graph) -> (Graph, ValueId, Vec<Param>, Vec<ValueId>) {
    let loss = with_loss(&mut g);
    let params: Vec<Param> = g
        .weights()
        .map(|(id, name, t)| (id, name.to_string(), t.clone()))
        .collect();
    let ids = params.iter().map(|p| p.0).collect();
    (g, loss, params, ids)
}

/// One training step's loss and gradients of the tiny model, full
/// precision and Fairy2i W2, on the GPU backend against the reference
/// (skipped where no GPU is, unless FAIRYC_REQUIRE_GPU=1). Both compute in
/// f32, so the tolerance is f32 summation-order noise: 1e-4 of each
/// gradient's largest entry.
#[test]
fn training_step_on_the_gpu_matches_the_cpu() {
    use fairyc_backends::{compile as compile_on, Backend, Cuda, Reference};
    if !common::gpu_or_skip() {
        return;
    }
    let dir = TempDir::new("autodiff-gpu");
    for method in [None, Some(Method::Fairy2i { stages: 2 })] {
        let (mut g, store) = tiny_compiled(&dir, method);
        let loss = with_loss(&mut g);
        let params: Vec<ValueId> = g.weights().map(|(id, _, _)| id).collect();
        let training = gradients(&g, loss, &params, &GradOptions::default()).unwrap();
        let outputs = |backend: &dyn Backend| {
            let program = compile_on(backend, &training, &store, &|_| {}).unwrap();
            program.run(model_inputs()).unwrap()
        };
        let want = outputs(&Reference::default());
        let got = outputs(&Cuda::default());
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let (a, b) = (flat(a), flat(b));
            let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "{method:?} output {k}: worst difference {worst} of scale {scale}"
            );
        }
        eprintln!(
            "{method:?}: loss {} on cuda, {} on the reference; {} gradients match",
            flat(&got[0])[0],
            flat(&want[0])[0],
            got.len() - 1
        );
    }
}

/// The PTX the GPU backend generates for the tiny model's whole W2
/// training step as the trainer builds it (needs no GPU): the forward and
/// backward passes (quantized layers as real products), the
/// quantizer on the masters (inputs, as the trainer keeps them on the
/// device) and AdamW. Every op of the step has a kernel, ptxas assembles
/// them for sm_90, and a change to one shows in review as a change to this
/// snapshot.
#[test]
fn tiny_w2_training_step_ptx() {
    let dir = TempDir::new("autodiff-ptx");
    let (mut g, _) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    g.meta.insert("source".into(), "<tmp>/tiny.gguf".into());
    with_loss(&mut g);
    // As the trainer runs it: each quantized layer one real product.
    let g = real_products(&g).unwrap();
    let step = training_step(&g, g.outputs[0], &Replicas::One);
    assert!(
        step.weights().next().is_none(),
        "every weight is a master the step reads as an input"
    );
    let prepared = fairyc_backends::prepare(&fairyc_backends::Cuda::default(), &step).unwrap();
    let ptx =
        fairyc_backends::cuda::program::graph_ptx(&prepared, &fairyc_backends::Cuda::default())
            .unwrap();
    common::ptxas::assemble_for_sm_90(&ptx, "tiny_w2_training_step");
    insta::assert_snapshot!("tiny_w2_training_step_ptx", ptx);
}

/// A data-parallel step sums its gradients over the ranks in buckets (up
/// to `BUCKET_ELEMENTS` each, from the last parameter, whose gradient the
/// backward pass computes first), and each bucket's `all_reduce` comes as
/// soon as its gradients are computed: before the backward pass reaches
/// the first layer.
#[test]
fn data_parallel_gradients_are_summed_in_buckets_as_the_backward_pass_goes() {
    // 2M, 2M, 1M and 1M elements: from the last, 1M + 1M + 2M fill a
    // bucket (4M), and the first layer's 2M starts another.
    let (g, loss) = linear_chain(&[[2048, 1024], [1024, 2048], [1024, 1024], [1024, 1024]]);
    let step = training_step(&g, loss, &Replicas::DataParallel);
    let position = |want: &dyn Fn(&Op, &TensorType) -> bool| -> Vec<usize> {
        step.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| want(&n.op, &n.ty))
            .map(|(i, _)| i)
            .collect()
    };
    let sums = position(&|op, _| matches!(op, Op::AllReduce));
    let sizes: Vec<Vec<usize>> = sums
        .iter()
        .map(|&i| step.nodes[i].ty.shape.concrete().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [vec![], vec![4 << 20], vec![2 << 20]],
        "the loss, then two buckets"
    );
    let first_layer_grad = position(&|op, ty| {
        matches!(op, Op::LinearWeightGrad) && ty.shape.concrete().unwrap() == [2048, 1024]
    });
    assert_eq!(first_layer_grad.len(), 1);
    assert!(
        sums[1] < first_layer_grad[0],
        "the last layers' bucket (node {}) goes out before the first layer's gradient (node {})",
        sums[1],
        first_layer_grad[0]
    );
}

/// `Σ h²` of `h = x · w0ᵀ · w1ᵀ ...` for `x: f32[4, 1024]` and weights
/// `w<i>` of `shapes` (each `[out, in]`): the graph and its loss.
fn linear_chain(shapes: &[[usize; 2]]) -> (Graph, ValueId) {
    let f32s = |dims: &[usize]| TensorType::new(DType::F32, Shape::new(dims.to_vec()));
    let mut b = GraphBuilder::new("chain");
    let mut h = b.input("x", f32s(&[4, 1024]));
    for (i, shape) in shapes.iter().enumerate() {
        let w = b.weight(format!("w{i}"), f32s(shape));
        h = b.push(Op::Linear, &[h, w]).unwrap();
    }
    let loss = b.push(Op::SumSquares, &[h]).unwrap();
    (b.finish(&[loss]), loss)
}

/// The AdamW step graph of `g` (every weight trained) on the gradient of
/// `loss`, as `replicas` run it.
fn training_step(g: &Graph, loss: ValueId, replicas: &Replicas) -> Graph {
    let params: Vec<ValueId> = g.weights().map(|(id, _, _)| id).collect();
    let typed: Vec<(String, TensorType)> = g
        .weights()
        .map(|(_, n, t)| (n.to_string(), t.clone()))
        .collect();
    // As the trainer builds it: the quantized layers' splits folded out of
    // the backward pass.
    let training = gradients(g, loss, &params, &GradOptions::default()).unwrap();
    let training = fold_split_gradients(&training).unwrap();
    adamw_step(&training, &typed, &AdamW::default(), replicas).unwrap()
}

/// Every rank of a data-parallel step makes the same collectives in the
/// same order (NCCL pairs them by order: ranks that disagree wait for
/// each other forever): with the optimizer replicated or sharded, or the
/// masters sharded, the sequence of (op, root, length) of each rank's
/// graph is rank 0's.
#[test]
fn every_rank_makes_the_same_collectives_in_the_same_order() {
    let (g, loss) = linear_chain(&[[2048, 1024], [1024, 2048], [1024, 1024], [8, 1024]]);
    let typed: Vec<(String, TensorType)> = g
        .weights()
        .map(|(_, n, t)| (n.to_string(), t.clone()))
        .collect();
    let collectives = |step: &Graph| -> Vec<String> {
        step.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::AllReduce | Op::BroadcastFrom { .. }))
            .map(|n| format!("{:?} {}", n.op, n.ty))
            .collect()
    };
    let ranks = 3;
    let owners = parameter_owners(&typed, ranks);
    let sharded_optimizer = |rank| Replicas::ShardedOptimizer {
        rank,
        owners: owners.clone(),
    };
    let sharded_masters = |rank| Replicas::ShardedMasters {
        rank,
        owners: owners.clone(),
    };
    for replicas in [
        &sharded_optimizer as &dyn Fn(usize) -> Replicas,
        &sharded_masters,
    ] {
        let sharded: Vec<Vec<String>> = (0..ranks)
            .map(|rank| collectives(&training_step(&g, loss, &replicas(rank))))
            .collect();
        assert!(sharded[0].iter().any(|c| c.starts_with("BroadcastFrom")));
        for (rank, sequence) in sharded.iter().enumerate() {
            assert_eq!(sequence, &sharded[0], "rank {rank} against rank 0");
        }
    }
    let replicated = collectives(&training_step(&g, loss, &Replicas::DataParallel));
    assert!(replicated.iter().all(|c| c.starts_with("AllReduce")));
}

/// Sharded masters (ZeRO stage 3 by tensors) on the tiny W2 model over
/// three ranks: every rank makes the same broadcasts in the same order; a
/// rank reads no master it does not own (its step has no input for one);
/// and a quantized master reaches the others as its PhaseQuant stages'
/// codes and scales (four `code2` broadcasts a layer: two halves, two
/// stages), never whole, while the unquantized ones (the embedding, the
/// norms' gains) go whole.
#[test]
fn sharded_masters_send_quantized_weights_as_codes_and_scales() {
    let dir = TempDir::new("shard-masters");
    let (mut g, _) = tiny_compiled(&dir, Some(Method::Fairy2i { stages: 2 }));
    let loss = with_loss(&mut g);
    let typed: Vec<(String, TensorType)> = g
        .weights()
        .map(|(_, n, t)| (n.to_string(), t.clone()))
        .collect();
    // The masters split and quantized: those a `widely_linear` reads.
    let quantized: Vec<&str> = g
        .weights()
        .filter(|(id, _, _)| {
            g.nodes
                .iter()
                .any(|n| matches!(n.op, Op::WidelyLinear { .. }) && n.operands[0] == *id)
        })
        .map(|(_, n, _)| n)
        .collect();
    assert_eq!(quantized.len(), 14, "two blocks of seven layers");
    let ranks = 3;
    let owners = parameter_owners(&typed, ranks);
    let broadcasts = |step: &Graph| -> Vec<String> {
        step.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BroadcastFrom { .. }))
            .map(|n| format!("{:?} {}", n.op, n.ty))
            .collect()
    };
    let steps: Vec<Graph> = (0..ranks)
        .map(|rank| {
            let replicas = Replicas::ShardedMasters {
                rank,
                owners: owners.clone(),
            };
            training_step(&g, loss, &replicas)
        })
        .collect();
    let sent = broadcasts(&steps[0]);
    for (rank, step) in steps.iter().enumerate() {
        assert_eq!(broadcasts(step), sent, "rank {rank} against rank 0");
        let inputs: Vec<&str> = step.inputs().map(|(_, n, _)| n).collect();
        for ((name, _), &owner) in typed.iter().zip(&owners) {
            assert_eq!(
                inputs.contains(&name.as_str()),
                owner == rank,
                "rank {rank}, master {name} (owner {owner})"
            );
        }
    }
    let codes = sent.iter().filter(|s| s.contains("code2")).count();
    assert_eq!(codes, 4 * quantized.len(), "{sent:#?}");
    for (name, ty) in &typed {
        let whole = sent.iter().any(|s| s.ends_with(&format!(" {ty}")));
        let unquantized = !quantized.contains(&name.as_str());
        // Types may coincide (two unquantized gains of one width): check
        // the quantized ones are never sent whole.
        assert!(unquantized || !whole, "{name}: {ty} sent whole");
        assert!(!unquantized || whole, "{name}: {ty} not sent");
    }
    // Nothing else goes whole: no split half, no conjugate.
    let whole = sent.iter().filter(|s| !s.contains("code2")).count();
    let scales = 4 * quantized.len();
    assert_eq!(whole, scales + typed.len() - quantized.len(), "{sent:#?}");
}
