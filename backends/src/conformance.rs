//! The conformance suite every backend instantiates: each op of the table
//! on several shapes (odd sizes and empty dimensions included), run on the
//! backend under test and on the reference backend, compared elementwise.
//!
//! A backend's test file instantiates it with one line:
//!
//! ```ignore
//! fairyc_backends::conformance_suite!(MyBackend::new());
//! ```
//!
//! Whole models (tiny llama, qwen2, iFairy, W1/W2/W3 artifacts) are checked
//! end to end by the top crate's `tests/conformance_models.rs`, which needs
//! the frontend and the passes.

use std::collections::{BTreeMap, HashMap};

use fairyc_ir::quant::{dequantize, unpack_code_rows, PhaseQuantized};
use fairyc_ir::{
    Arithmetic, AttentionOperand, DType, Granularity, Graph, GraphBuilder, NormOperand, Op,
    RopeLayout, Scheme, Shape, TensorType, UnaryFn, ValueId, WeightError, WeightStore, WlPart,
};
use num_complex::Complex32;

use crate::{compile, prepare, Backend, BackendError, Data, Reference, Tensor, Tolerance};

/// One graph with its inputs and stored weights.
pub struct Case {
    pub name: String,
    pub graph: Graph,
    pub inputs: HashMap<String, Tensor>,
    pub store: CaseStore,
}

/// Stored weights of a case: packed codes (which graph inputs cannot carry).
#[derive(Default)]
pub struct CaseStore {
    codes: BTreeMap<String, (TensorType, Vec<u8>)>,
}

impl WeightStore for CaseStore {
    fn names(&self) -> Vec<String> {
        self.codes.keys().cloned().collect()
    }
    fn tensor_type(&self, name: &str) -> Option<TensorType> {
        self.codes.get(name).map(|(t, _)| t.clone())
    }
    fn encoding(&self, name: &str) -> Option<String> {
        self.codes.get(name).map(|_| "code2".into())
    }
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        Err(WeightError {
            name: name.into(),
            message: "the case stores codes only".into(),
        })
    }
    fn read_codes(&self, name: &str) -> Result<Vec<u8>, WeightError> {
        self.codes
            .get(name)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| WeightError {
                name: name.into(),
                message: "not in the case".into(),
            })
    }
}

/// Builds one case: inputs with random values, named as they are added.
struct CaseBuilder {
    b: GraphBuilder,
    inputs: HashMap<String, Tensor>,
    store: CaseStore,
    rng: u64,
    /// Whether values are rounded to bf16 (for backends whose products
    /// round their operands so: then only their own roundings differ).
    bf16: bool,
}

impl CaseBuilder {
    fn new(name: &str, seed: u64) -> CaseBuilder {
        CaseBuilder {
            b: GraphBuilder::new(name),
            inputs: HashMap::new(),
            store: CaseStore::default(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            bf16: false,
        }
    }

    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let x = ((self.rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        if self.bf16 {
            Arithmetic::Bf16Exact.round(x)
        } else {
            x
        }
    }

    fn input(&mut self, ty: TensorType, t: Tensor) -> ValueId {
        let name = format!("in{}", self.inputs.len());
        self.inputs.insert(name.clone(), t);
        self.b.input(name, ty)
    }

    fn real(&mut self, shape: &[usize]) -> ValueId {
        let data = (0..shape.iter().product()).map(|_| self.next()).collect();
        self.input(ty(DType::F32, shape), Tensor::f32(shape.to_vec(), data))
    }

    /// Real values in [0.5, 1.5): for square roots, reciprocals and norms.
    fn positive(&mut self, shape: &[usize]) -> ValueId {
        let data = (0..shape.iter().product())
            .map(|_| 1.0 + 0.5 * self.next())
            .collect();
        self.input(ty(DType::F32, shape), Tensor::f32(shape.to_vec(), data))
    }

    /// Real values in [0, 1): `sample`'s draws.
    fn uniform(&mut self, shape: &[usize]) -> ValueId {
        let data = (0..shape.iter().product())
            .map(|_| 0.5 * (self.next() + 1.0))
            .collect();
        self.input(ty(DType::F32, shape), Tensor::f32(shape.to_vec(), data))
    }

    fn complex(&mut self, shape: &[usize]) -> ValueId {
        let data = (0..shape.iter().product())
            .map(|_| Complex32::new(self.next(), self.next()))
            .collect();
        self.input(ty(DType::C64, shape), Tensor::c64(shape.to_vec(), data))
    }

    /// i32 values in `lo..hi`.
    fn ints(&mut self, shape: &[usize], lo: i32, hi: i32) -> ValueId {
        let span = (hi - lo) as f32;
        let data = (0..shape.iter().product())
            .map(|_| lo + (((self.next() + 1.0) / 2.0 * span) as i32).min(hi - lo - 1))
            .collect();
        self.input(ty(DType::I32, shape), Tensor::i32(shape.to_vec(), data))
    }

    /// A complex `[n, m]` weight for PhaseQuant: random entries, and among
    /// them the ties of its code choice (equal magnitudes of both parts,
    /// in every quadrant), zeros and pure real or imaginary entries; or
    /// all zeros.
    fn phase_weight(&mut self, n: usize, m: usize, all_zero: bool) -> ValueId {
        let data = (0..n * m)
            .map(|i| {
                let (a, b) = (self.next(), self.next());
                // Exact in bf16, so that both arithmetics see the tie.
                let t = Arithmetic::Bf16Exact.round(a);
                match (all_zero, i % 11) {
                    (true, _) => Complex32::new(0.0, 0.0),
                    (_, 0) => Complex32::new(t, t),
                    (_, 1) => Complex32::new(t, -t),
                    (_, 2) => Complex32::new(0.0, 0.0),
                    (_, 3) => Complex32::new(-0.0, t),
                    (_, 4) => Complex32::new(t, 0.0),
                    (_, 5) => Complex32::new(-t, t),
                    _ => Complex32::new(a, b),
                }
            })
            .collect();
        self.input(ty(DType::C64, &[n, m]), Tensor::c64(vec![n, m], data))
    }

    /// Random packed codes `code2[n, m]` as a stored weight.
    fn codes(&mut self, n: usize, m: usize) -> ValueId {
        let name = format!("codes{}", self.store.codes.len());
        let bytes = (0..n * m.div_ceil(4))
            .map(|_| ((self.next() + 1.0) * 128.0) as u8)
            .collect::<Vec<u8>>();
        // Padding codes past the row's end are `+1` (zero bits).
        let stride = m.div_ceil(4);
        let mut bytes = bytes;
        if !m.is_multiple_of(4) {
            let keep = (1u8 << (2 * (m % 4))) - 1;
            for row in 0..n {
                bytes[row * stride + stride - 1] &= keep;
            }
        }
        let t = ty(DType::Code2, &[n, m]);
        self.store.codes.insert(name.clone(), (t.clone(), bytes));
        self.b.weight(name, t)
    }

    fn push(&mut self, op: Op, operands: &[ValueId]) -> ValueId {
        self.b
            .push(op, operands)
            .unwrap_or_else(|e| panic!("a conformance case is ill-typed: {e}"))
    }

    fn finish(self, outputs: &[ValueId]) -> Case {
        let graph = self.b.finish(outputs);
        Case {
            name: graph.name.clone(),
            graph,
            inputs: self.inputs,
            store: self.store,
        }
    }
}

fn ty(dtype: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::new(shape.iter().copied()))
}

/// Adds a case per shape: `build` makes the graph's outputs for one shape.
fn cases_over<S: std::fmt::Debug + Copy>(
    out: &mut Vec<Case>,
    name: &str,
    shapes: &[S],
    build: impl Fn(&mut CaseBuilder, S) -> Vec<ValueId>,
) {
    for (k, &shape) in shapes.iter().enumerate() {
        let mut c = CaseBuilder::new(&format!("{name} {shape:?}"), (out.len() * 31 + k) as u64);
        let outputs = build(&mut c, shape);
        out.push(c.finish(&outputs));
    }
}

/// Fairy2i's `stages` residual stages of PhaseQuant on `z` as the quantize
/// pass writes them (eq. 13), which a backend may run as one fused step:
/// their sum.
fn phase_stages(
    c: &mut CaseBuilder,
    z: ValueId,
    granularity: Granularity,
    stages: usize,
) -> ValueId {
    let phase = Op::Quantize {
        scheme: Scheme::Phase,
        granularity,
        arithmetic: Arithmetic::F32,
    };
    let (mut residual, mut sum) = (z, None);
    for t in 0..stages {
        let q = c.push(phase.clone(), &[residual]);
        sum = Some(match sum {
            None => q,
            Some(s) => c.push(Op::Add, &[s, q]),
        });
        if t + 1 < stages {
            residual = c.push(Op::Sub, &[residual, q]);
        }
    }
    sum.expect("at least one stage")
}

/// Every case of the suite.
pub fn op_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let rows = [0usize, 1, 5];
    cases_over(&mut out, "embed", &rows, |c, s| {
        let ids = c.ints(&[s], 0, 7);
        let table = c.real(&[7, 5]);
        let ctable = c.complex(&[7, 3]);
        vec![
            c.push(Op::Embed, &[ids, table]),
            c.push(Op::Embed, &[ids, ctable]),
        ]
    });
    for (s, k, n) in [(0, 5, 3), (3, 5, 3), (2, 1, 7), (4, 9, 1), (3, 0, 2)] {
        cases_over(&mut out, "linear", &[(s, k, n)], |c, (s, k, n)| {
            let (x, w) = (c.real(&[s, k]), c.real(&[n, k]));
            let (zx, zw) = (c.complex(&[s, k]), c.complex(&[n, k]));
            vec![c.push(Op::Linear, &[x, w]), c.push(Op::Linear, &[zx, zw])]
        });
    }
    cases_over(&mut out, "rms_norm", &rows, |c, s| {
        let (x, g) = (c.real(&[s, 6]), c.real(&[6]));
        let (z, g2) = (c.complex(&[s, 3]), c.real(&[6]));
        let op = Op::RmsNorm { eps: 1e-5 };
        vec![c.push(op.clone(), &[x, g]), c.push(op, &[z, g2])]
    });
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        cases_over(&mut out, "rope", &rows, |c, s| {
            let (x, pos) = (c.real(&[s, 8]), c.ints(&[s], -3, 40));
            let z = c.complex(&[s, 4]);
            let op = Op::Rope {
                base: 10000.0,
                layout,
                head_dim: 4,
            };
            vec![c.push(op.clone(), &[x, pos]), c.push(op, &[z, pos])]
        });
    }
    for causal in [true, false] {
        // One sequence, and a batch of sequences of 3 rows (segments).
        for (name, segment, rows) in [
            ("attention", None, [1usize, 5]),
            ("attention_segments", Some(3), [3, 6]),
        ] {
            cases_over(&mut out, name, &rows, |c, s| {
                let (q, k, v) = (c.real(&[s, 8]), c.real(&[s, 4]), c.real(&[s, 6]));
                let (zq, zk, zv) = (c.complex(&[s, 8]), c.complex(&[s, 4]), c.complex(&[s, 6]));
                let op = Op::Attention {
                    heads: 2,
                    kv_heads: 1,
                    scale: 0.5,
                    causal,
                    segment,
                };
                vec![c.push(op.clone(), &[q, k, v]), c.push(op, &[zq, zk, zv])]
            });
        }
        // Heads wider than a vector with a tail, and a cache of past keys
        // longer than the queries (a decode step).
        cases_over(&mut out, "attention_past", &[1usize, 3], |c, s| {
            let (q, k, v) = (c.real(&[s, 60]), c.real(&[s + 3, 20]), c.real(&[s + 3, 24]));
            let (zq, zk, zv) = (
                c.complex(&[s, 60]),
                c.complex(&[s + 3, 20]),
                c.complex(&[s + 3, 24]),
            );
            let op = Op::Attention {
                heads: 3,
                kv_heads: 1,
                scale: 0.2,
                causal,
                segment: None,
            };
            vec![c.push(op.clone(), &[q, k, v]), c.push(op, &[zq, zk, zv])]
        });
        // A long cache for one or two queries: the GPU splits its keys
        // over blocks and merges their softmaxes.
        // (And none: a slot that sits a step out.)
        cases_over(&mut out, "attention_long_cache", &[0usize, 1, 2], |c, s| {
            let kv = 300 + s;
            let (q, k, v) = (c.real(&[s, 128]), c.real(&[kv, 64]), c.real(&[kv, 64]));
            let (zq, zk, zv) = (
                c.complex(&[s, 64]),
                c.complex(&[kv, 32]),
                c.complex(&[kv, 32]),
            );
            let op = Op::Attention {
                heads: 4,
                kv_heads: 2,
                scale: 0.125,
                causal,
                segment: None,
            };
            vec![c.push(op.clone(), &[q, k, v]), c.push(op, &[zq, zk, zv])]
        });
    }
    // A token drawn from each row (of a vocabulary wider than a block of
    // threads), at two temperatures and greedily.
    cases_over(&mut out, "sample", &rows, |c, s| {
        let (logits, draws) = (c.real(&[s, 1000]), c.uniform(&[s]));
        [1.0, 0.25, 0.0]
            .map(|temperature| c.push(Op::Sample { temperature }, &[logits, draws]))
            .to_vec()
    });
    cases_over(&mut out, "elementwise", &rows, |c, s| {
        let (x, p, y, row) = (
            c.real(&[s, 7]),
            c.positive(&[s, 7]),
            c.real(&[s, 7]),
            c.positive(&[7]),
        );
        let (z, w, zrow) = (c.complex(&[s, 7]), c.complex(&[s, 7]), c.complex(&[7]));
        let pos = c.ints(&[s], -5, 5);
        let mut outs = vec![c.push(Op::Silu, &[x]), c.push(Op::Softmax, &[x])];
        for func in [UnaryFn::Neg, UnaryFn::Exp, UnaryFn::Sigmoid] {
            outs.push(c.push(Op::Unary { func }, &[x]));
        }
        for func in [UnaryFn::Sqrt, UnaryFn::Recip] {
            outs.push(c.push(Op::Unary { func }, &[p]));
        }
        outs.push(c.push(Op::Unary { func: UnaryFn::Neg }, &[z]));
        outs.push(c.push(Op::Unary { func: UnaryFn::Neg }, &[pos]));
        for op in [Op::Add, Op::Sub, Op::Mul] {
            outs.push(c.push(op.clone(), &[x, y]));
            outs.push(c.push(op.clone(), &[x, row]));
            outs.push(c.push(op.clone(), &[z, w]));
            outs.push(c.push(op, &[z, zrow]));
        }
        outs.push(c.push(Op::Div, &[x, p]));
        outs.push(c.push(Op::Div, &[x, row]));
        outs.push(c.push(Op::Conj, &[z]));
        outs.push(c.push(Op::CReluSquared, &[z]));
        outs.push(c.push(Op::ActQuant { bits: 8 }, &[x]));
        outs.push(c.push(Op::ActQuant { bits: 4 }, &[z]));
        outs.push(c.push(Op::Fill { value: 0.25 }, &[z]));
        outs.push(c.push(Op::Scale { factor: -1.5 }, &[x]));
        outs.push(c.push(Op::Scale { factor: 2.0 }, &[z]));
        outs
    });
    cases_over(
        &mut out,
        "layout",
        &[(3usize, 5usize), (0, 4), (1, 1)],
        |c, (a, b)| {
            let x = c.real(&[a, b]);
            let y = c.real(&[a, 2]);
            let x3 = c.complex(&[2, a, b]);
            vec![
                c.push(
                    Op::Reshape {
                        shape: Shape::new([b, a]),
                    },
                    &[x],
                ),
                c.push(Op::Transpose { perm: vec![1, 0] }, &[x]),
                c.push(
                    Op::Transpose {
                        perm: vec![2, 0, 1],
                    },
                    &[x3],
                ),
                c.push(
                    Op::Slice {
                        axis: 1,
                        start: usize::from(b > 1),
                        end: b,
                    },
                    &[x],
                ),
                c.push(Op::Concat { axis: 1 }, &[x, y, x]),
                c.push(Op::Concat { axis: 0 }, &[x, x]),
                c.push(
                    Op::Pad {
                        axis: 1,
                        before: 1,
                        after: 2,
                    },
                    &[x],
                ),
            ]
        },
    );
    cases_over(&mut out, "pack", &rows, |c, s| {
        let (odd, even) = (c.real(&[s, 7]), c.real(&[s, 8]));
        let z = c.complex(&[s, 4]);
        vec![
            c.push(Op::Pack { block: 0 }, &[odd]),
            c.push(Op::Pack { block: 2 }, &[even]),
            c.push(Op::Pack { block: 4 }, &[even]),
            c.push(Op::Unpack { block: 0 }, &[z]),
            c.push(Op::Unpack { block: 2 }, &[z]),
        ]
    });
    for arithmetic in [Arithmetic::F32, Arithmetic::Bf16Exact] {
        cases_over(
            &mut out,
            "widely_linear",
            &[(6usize, 10usize), (5, 7)],
            |c, (r, k)| {
                let w = c.real(&[r, k]);
                let mut outs = Vec::new();
                for part in [WlPart::U, WlPart::W] {
                    for (row_block, col_block) in [(0, 0), (2, 2)] {
                        if row_block > 0 && (r % 2 == 1 || k % 2 == 1) {
                            continue;
                        }
                        let op = Op::WidelyLinear {
                            part,
                            row_block,
                            col_block,
                            arithmetic,
                        };
                        let u = c.push(op, &[w]);
                        let d = c.complex(&[r.div_ceil(2), k.div_ceil(2)]);
                        let grad = Op::WidelyLinearGrad {
                            part,
                            row_block,
                            col_block,
                        };
                        outs.push(u);
                        outs.push(c.push(grad, &[w, d]));
                    }
                }
                outs
            },
        );
    }
    for granularity in [
        Granularity::Tensor,
        Granularity::Channel,
        Granularity::Group(4),
    ] {
        // Each arithmetic and scheme a case of its own: a backend that runs
        // one of them is checked on it.
        for arithmetic in [Arithmetic::F32, Arithmetic::Bf16Exact] {
            let arithmetic_name = match arithmetic {
                Arithmetic::F32 => "f32",
                Arithmetic::Bf16Exact => "bf16",
            };
            cases_over(
                &mut out,
                &format!("quantize phase {arithmetic_name} {granularity:?}"),
                // 300 x 40: more entries than a block's threads, and
                // sums over several blocks.
                &[(5usize, 9usize), (1, 1), (300, 40)],
                |c, (n, m)| {
                    let z = c.complex(&[n, m]);
                    let phase = Op::Quantize {
                        scheme: Scheme::Phase,
                        granularity,
                        arithmetic,
                    };
                    vec![c.push(phase, &[z])]
                },
            );
            cases_over(
                &mut out,
                &format!("quantize_grad {arithmetic_name} {granularity:?}"),
                &[(5usize, 9usize), (1, 1)],
                |c, (n, m)| {
                    let (z, dz) = (c.complex(&[n, m]), c.complex(&[n, m]));
                    let grad = Op::QuantizeGrad {
                        scheme: Scheme::Phase,
                        granularity,
                        arithmetic,
                    };
                    vec![c.push(grad, &[z, dz])]
                },
            );
            // The two halves of the quantizer a sharded master's owner
            // sends (codes, scales), and what the others rebuild from them:
            // `dequant` of them is `quantize`, bit for bit, which the last
            // output (their difference, all zeros) checks on the backend
            // itself. Inputs with ties, zeros and an all-zero matrix; the
            // codes also pass through a broadcast (of a rank alone).
            let shapes = [
                (5usize, 9usize, false),
                (1, 1, false),
                (300, 40, false),
                (6, 10, false),
                (3, 7, true),
            ];
            for (what, halves) in [("phase_codes", 0), ("phase_scales", 1), ("phase halves", 2)] {
                cases_over(
                    &mut out,
                    &format!("{what} {arithmetic_name} {granularity:?}"),
                    &shapes,
                    |c, (n, m, all_zero)| {
                        let w = c.phase_weight(n, m, all_zero);
                        let codes = c.push(Op::PhaseCodes { arithmetic }, &[w]);
                        let scales = Op::PhaseScales {
                            granularity,
                            arithmetic,
                        };
                        let scales = c.push(scales, &[w]);
                        match halves {
                            0 => vec![codes],
                            1 => vec![scales],
                            _ => {
                                let sent = c.push(Op::BroadcastFrom { root: 0 }, &[codes]);
                                let rebuilt = c.push(Op::Dequant { granularity }, &[sent, scales]);
                                let phase = Op::Quantize {
                                    scheme: Scheme::Phase,
                                    granularity,
                                    arithmetic,
                                };
                                let quantized = c.push(phase, &[w]);
                                let difference = c.push(Op::Sub, &[rebuilt, quantized]);
                                vec![sent, rebuilt, quantized, difference]
                            }
                        }
                    },
                );
            }
        }
        cases_over(
            &mut out,
            &format!("quantize phase stages {granularity:?}"),
            &[
                (5usize, 9usize, 2usize),
                (1, 1, 2),
                (300, 40, 2),
                (300, 40, 3),
            ],
            |c, (n, m, stages)| {
                let z = c.complex(&[n, m]);
                vec![phase_stages(c, z, granularity, stages)]
            },
        );
        cases_over(
            &mut out,
            &format!("quantized master's real form {granularity:?}"),
            // (rows, columns, stages, pairing block): odd sizes pad, and
            // 300 x 80 spans many blocks of the sums passes.
            &[
                (6usize, 10usize, 1usize, 0usize),
                (5, 7, 2, 0),
                (8, 12, 2, 2),
                (300, 80, 2, 0),
                (64, 48, 3, 0),
            ],
            |c, (rows, cols, stages, block)| {
                // What `real_products` leaves a training step, which a
                // backend may run as one fused step.
                let r = c.real(&[rows, cols]);
                let mut adjoints = [WlPart::U, WlPart::W].map(|part| {
                    let split = Op::WidelyLinear {
                        part,
                        row_block: block,
                        col_block: block,
                        arithmetic: Arithmetic::F32,
                    };
                    let z = c.push(split, &[r]);
                    let quantized = phase_stages(c, z, granularity, stages);
                    let adjoint = Op::WidelyLinearGrad {
                        part,
                        row_block: block,
                        col_block: block,
                    };
                    c.push(adjoint, &[r, quantized])
                });
                if stages == 3 {
                    // The sum in the other order.
                    adjoints.reverse();
                }
                let sum = c.push(Op::Add, &adjoints);
                vec![c.push(Op::Scale { factor: 2.0 }, &[sum])]
            },
        );
        cases_over(
            &mut out,
            &format!("quantize baselines {granularity:?}"),
            // 300 × 40: groups that span many threads of a block.
            &[(5usize, 9usize), (1, 1), (300, 40)],
            |c, (n, m)| {
                let x = c.real(&[n, m]);
                [Scheme::Binary, Scheme::Ternary]
                    .into_iter()
                    .map(|scheme| {
                        let op = Op::Quantize {
                            scheme,
                            granularity,
                            arithmetic: Arithmetic::F32,
                        };
                        c.push(op, &[x])
                    })
                    .collect()
            },
        );
        if granularity == Granularity::Tensor {
            cases_over(
                &mut out,
                "quantize ifairy",
                &[(5usize, 9usize), (1, 1), (300, 40)],
                |c, (n, m)| {
                    let z = c.complex(&[n, m]);
                    let op = Op::Quantize {
                        scheme: Scheme::PhaseIfairy,
                        granularity,
                        arithmetic: Arithmetic::F32,
                    };
                    vec![c.push(op, &[z])]
                },
            );
        }
        for (u_stages, w_stages) in [(1usize, 1usize), (2, 2), (0, 1), (3, 0)] {
            cases_over(
                &mut out,
                "quant_linear",
                // 13 rows: enough for the CPU's multiply kernel; inputs a
                // multiple of 16 for the GPU's int8 kernel (640: more runs
                // of 16 than a warp has lanes).
                &[
                    (0usize, 5usize, 9usize),
                    (3, 5, 9),
                    (1, 2, 4),
                    (13, 70, 45),
                    (1, 37, 32),
                    (2, 3, 640),
                ],
                |c, (s, n, m)| {
                    let x = c.complex(&[s, m]);
                    let groups = match granularity {
                        Granularity::Tensor => vec![2],
                        Granularity::Channel => vec![n, 2],
                        Granularity::Group(g) => vec![n, m.div_ceil(g), 2],
                    };
                    let mut operands = vec![x];
                    let mut dense = Vec::new();
                    for _ in 0..u_stages + w_stages {
                        let codes = c.codes(n, m);
                        let scales = c.positive(&groups);
                        operands.extend([codes, scales]);
                        dense.push(c.push(Op::Dequant { granularity }, &[codes, scales]));
                    }
                    let op = Op::QuantLinear {
                        u_stages,
                        w_stages,
                        granularity,
                    };
                    let mut outs = vec![c.push(op, &operands)];
                    outs.extend(dense);
                    outs
                },
            );
        }
    }
    cases_over(&mut out, "losses", &[1usize, 6], |c, s| {
        let (logits, teacher) = (c.real(&[s, 7]), c.real(&[s, 7]));
        let targets = c.ints(&[s], -1, 7);
        let dloss = c.positive(&[]);
        vec![
            c.push(Op::CrossEntropy, &[logits, targets]),
            c.push(Op::CrossEntropyGrad, &[logits, targets, dloss]),
            c.push(Op::KlDiv, &[logits, teacher]),
            c.push(Op::KlDivGrad, &[logits, teacher, dloss]),
        ]
    });
    cases_over(
        &mut out,
        "optimizer",
        // The last: a squared norm of more words than one block sums.
        &[(4usize, 5usize), (1, 1), (300, 41)],
        |c, (a, b)| {
            let (p, m) = (c.real(&[a, b]), c.real(&[a, b]));
            let v = c.positive(&[a, b]);
            let scalars: Vec<ValueId> = (0..4).map(|_| c.positive(&[])).collect();
            let adam = Op::AdamUpdate { eps: 1e-8 };
            let squares = c.push(Op::SumSquares, &[p]);
            vec![
                c.push(
                    adam,
                    &[p, m, v, scalars[0], scalars[1], scalars[2], scalars[3]],
                ),
                squares,
                c.push(Op::ClipFactor { max_norm: 0.5 }, &[squares]),
                c.push(Op::ClipFactor { max_norm: 1e6 }, &[squares]),
                // A rank alone: its own sum, and its own root.
                c.push(Op::AllReduce, &[m]),
                c.push(Op::BroadcastFrom { root: 0 }, &[m]),
            ]
        },
    );
    cases_over(&mut out, "zeros", &rows, |c, s| {
        let x = c.real(&[s, 5]);
        let z = c.complex(&[2, s]);
        let zeros = |c: &mut CaseBuilder, dtype, shape: &[usize]| c.b.zeros(ty(dtype, shape));
        let (zx, zz) = (zeros(c, DType::F32, &[s, 5]), zeros(c, DType::C64, &[2, s]));
        let codes = zeros(c, DType::Code2, &[3, s + 2]);
        let scales = c.positive(&[3, 2]);
        vec![
            zx,
            zz,
            codes,
            zeros(c, DType::I32, &[s]),
            // Zeros that inputs meet, codes that are dequantized and
            // broadcast (by a rank alone).
            c.push(Op::Add, &[x, zx]),
            c.push(Op::Mul, &[z, zz]),
            c.push(
                Op::Dequant {
                    granularity: Granularity::Channel,
                },
                &[codes, scales],
            ),
            c.push(Op::BroadcastFrom { root: 0 }, &[codes]),
            c.push(Op::BroadcastFrom { root: 0 }, &[zz]),
        ]
    });
    cases_over(&mut out, "reductions", &rows, |c, s| {
        let x = c.real(&[2, s, 5]);
        let z = c.complex(&[s, 3]);
        vec![
            c.push(
                Op::ReduceTo {
                    shape: Shape::new([5]),
                },
                &[x],
            ),
            c.push(
                Op::ReduceTo {
                    shape: Shape::default(),
                },
                &[x],
            ),
            c.push(
                Op::ReduceTo {
                    shape: Shape::new([3]),
                },
                &[z],
            ),
        ]
    });
    cases_over(&mut out, "gradients", &rows, |c, s| {
        let (x, dy, dy3) = (c.real(&[s, 6]), c.real(&[s, 6]), c.real(&[s, 3]));
        let (z, dz, dz3) = (c.complex(&[s, 3]), c.complex(&[s, 3]), c.complex(&[s, 2]));
        let gain = c.positive(&[6]);
        let ids = c.ints(&[s], 0, 7);
        let y = c.push(Op::Softmax, &[x]);
        let mut outs = vec![
            c.push(Op::LinearWeightGrad, &[dy3, x]),
            c.push(Op::LinearWeightGrad, &[dz3, z]),
            c.push(Op::EmbedGrad { vocab: 7 }, &[ids, dy]),
            c.push(Op::SiluGrad, &[x, dy]),
            c.push(Op::Crelu2Grad, &[z, dz]),
            c.push(Op::SoftmaxGrad, &[y, dy]),
        ];
        for which in [NormOperand::Input, NormOperand::Gain] {
            let op = Op::RmsNormGrad { eps: 1e-5, which };
            outs.push(c.push(op.clone(), &[x, gain, dy]));
            outs.push(c.push(op, &[z, gain, dz]));
        }
        outs
    });
    for (causal, (name, segment, rows)) in [true, false].into_iter().flat_map(|causal| {
        [
            ("attention_grad", None, [1usize, 4]),
            ("attention_grad_segments", Some(2), [2, 6]),
        ]
        .map(|case| (causal, case))
    }) {
        cases_over(&mut out, name, &rows, |c, s| {
            let (q, k, v) = (c.real(&[s, 8]), c.real(&[s, 4]), c.real(&[s, 6]));
            let dout = c.real(&[s, 12]);
            let (zq, zk, zv) = (c.complex(&[s, 8]), c.complex(&[s, 4]), c.complex(&[s, 6]));
            let zdout = c.complex(&[s, 12]);
            let mut outs = Vec::new();
            for op in attention_grads((2, 1), 0.5, (causal, segment)) {
                outs.push(c.push(op.clone(), &[q, k, v, dout]));
                outs.push(c.push(op, &[zq, zk, zv, zdout]));
            }
            outs
        });
    }
    out
}

/// `attention(q, k, v)` (unless `gradients_only`) and the gradients of Q, K
/// and V for `g` (the output's gradient), with bf16 attention's scale 1/8.
fn attention_and_gradients(
    c: &mut CaseBuilder,
    [q, k, v, g]: [ValueId; 4],
    (heads, kv_heads): (usize, usize),
    (causal, segment): (bool, Option<usize>),
    gradients_only: bool,
) -> Vec<ValueId> {
    let mut outs = Vec::new();
    if !gradients_only {
        let op = Op::Attention {
            heads,
            kv_heads,
            scale: 0.125,
            causal,
            segment,
        };
        outs.push(c.push(op, &[q, k, v]));
    }
    for op in attention_grads((heads, kv_heads), 0.125, (causal, segment)) {
        outs.push(c.push(op, &[q, k, v, g]));
    }
    outs
}

/// The gradients of an attention with respect to Q, K and V, in that order.
fn attention_grads(
    (heads, kv_heads): (usize, usize),
    scale: f32,
    (causal, segment): (bool, Option<usize>),
) -> [Op; 3] {
    [
        AttentionOperand::Q,
        AttentionOperand::K,
        AttentionOperand::V,
    ]
    .map(|which| Op::AttentionGrad {
        which,
        heads,
        kv_heads,
        scale,
        causal,
        segment,
    })
}

/// Attention and its gradients with heads of 64 words (real, and complex
/// of 32), in segments and whole, on bf16 values: the cases of backends
/// whose attention takes its products in bf16 (the cuda backend's flash
/// kernels), where the suite's narrow heads would not reach that path.
pub fn bf16_attention_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for causal in [true, false] {
        for (name, segment, rows) in [
            ("bf16 attention_segments", Some(100), 200usize),
            ("bf16 attention", None, 37),
        ] {
            cases_over(&mut out, name, &[rows], |c, s| {
                c.bf16 = true;
                let (heads, kv_heads) = (3, 1);
                let real = [c.real(&[s, 192]), c.real(&[s, 64]), c.real(&[s, 64])];
                let complex = [
                    c.complex(&[s, 96]),
                    c.complex(&[s, 32]),
                    c.complex(&[s, 32]),
                ];
                let (dout, zdout) = (c.real(&[s, 192]), c.complex(&[s, 96]));
                let mut outs = Vec::new();
                for ([q, k, v], g) in [(real, dout), (complex, zdout)] {
                    let mask = (causal, segment);
                    let heads = (heads, kv_heads);
                    outs.extend(attention_and_gradients(c, [q, k, v, g], heads, mask, false));
                }
                outs
            });
        }
    }
    // Other head widths (keys and values apart), groups of two query heads
    // a key head, and rows not a multiple of the flash kernels' 64-row
    // blocks, causal and not.
    for causal in [true, false] {
        let shapes = [
            (70usize, 4usize, 2usize, 48usize, 32usize),
            (37, 2, 1, 128, 128),
        ];
        cases_over(
            &mut out,
            "bf16 attention widths",
            &shapes,
            |c, (s, heads, kv_heads, d, dv)| {
                c.bf16 = true;
                let operands = [
                    c.real(&[s, heads * d]),
                    c.real(&[s, kv_heads * d]),
                    c.real(&[s, kv_heads * dv]),
                    c.real(&[s, heads * dv]),
                ];
                attention_and_gradients(c, operands, (heads, kv_heads), (causal, None), false)
            },
        );
    }
    // The gradients alone, without the forward pass whose statistics a
    // backend may keep for them (the cuda backend's flash kernels then run
    // the forward pass again for them).
    cases_over(&mut out, "bf16 attention_grad alone", &[200], |c, s| {
        c.bf16 = true;
        let operands = [
            c.real(&[s, 192]),
            c.real(&[s, 64]),
            c.real(&[s, 64]),
            c.real(&[s, 192]),
        ];
        attention_and_gradients(c, operands, (3, 1), (true, Some(100)), true)
    });
    out
}

/// Cases whose one output is `unpack(quant_linear(pack(x)))` of a real `x`
/// (or of `rms_norm(x)`, which the cuda backend folds in too; one case
/// leaves the product's complex output unpaired): the widely-linear form
/// around a quantized layer, for each pairing (halves, adjacent, halves of
/// heads of 8), on several input rows, and
/// with more output rows than a GPU's int8 kernel has warps at its capped
/// grid, so that each warp takes several; and three products of one row. Backends that fold the pairing
/// into the product (cuda's int8 kernel) are compared with
/// [`relative_rms_difference`]: their int8 activations move each output
/// by about 0.4% RMS (docs/BENCHMARKS.md), which the suite's bounds for a
/// `quant_linear` output do not cover once the output is unpacked.
pub fn paired_quant_linear_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let pairings = [
        (0usize, false, true),
        (2, false, true),
        (8, false, true),
        (0, true, true),
        (8, true, true),
        (0, true, false),
    ];
    for (block, normed, unpacked) in pairings {
        let norm = if normed { ", normed" } else { "" };
        let output = if unpacked { "" } else { ", complex output" };
        cases_over(
            &mut out,
            &format!("paired quant_linear, block {block}{norm}{output}"),
            // Five rows: on tensor cores, a group of four and a group of one.
            &[(3usize, 2400usize, 32usize), (1, 8, 16), (5, 24, 32)],
            |c, (rows, n, m)| {
                let mut x = c.real(&[rows, 2 * m]);
                if normed {
                    let gain = c.positive(&[2 * m]);
                    x = c.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]);
                }
                let packed = c.push(Op::Pack { block }, &[x]);
                let mut operands = vec![packed];
                for _ in 0..2 {
                    let codes = c.codes(n, m);
                    operands.extend([codes, c.positive(&[2])]);
                }
                let op = Op::QuantLinear {
                    u_stages: 1,
                    w_stages: 1,
                    granularity: Granularity::Tensor,
                };
                let product = c.push(op, &operands);
                if !unpacked {
                    return vec![product];
                }
                vec![c.push(Op::Unpack { block }, &[product])]
            },
        );
    }
    // Products of one row (q, k and v; gate and up), which the cuda backend
    // computes in one launch: widths that end mid-warp, per-tensor and
    // per-channel scales side by side; and widths of whole 16-row tiles,
    // which its tensor-core kernel takes.
    for normed in [false, true] {
        let norm = if normed { ", normed" } else { "" };
        cases_over(
            &mut out,
            &format!("sibling paired quant_linears{norm}"),
            &[
                (3usize, [2400usize, 40, 8], 32usize),
                (1, [8, 24, 16], 16),
                (2, [64, 48, 16], 64),
            ],
            |c, (rows, widths, m)| {
                let mut x = c.real(&[rows, 2 * m]);
                if normed {
                    let gain = c.positive(&[2 * m]);
                    x = c.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]);
                }
                let packed = c.push(Op::Pack { block: 8 }, &[x]);
                widths
                    .iter()
                    .enumerate()
                    .map(|(k, &n)| {
                        let (granularity, scales) = if k % 2 == 0 {
                            (Granularity::Tensor, vec![2])
                        } else {
                            (Granularity::Channel, vec![n, 2])
                        };
                        let mut operands = vec![packed];
                        for _ in 0..2 {
                            let codes = c.codes(n, m);
                            operands.extend([codes, c.positive(&scales)]);
                        }
                        let op = Op::QuantLinear {
                            u_stages: 1,
                            w_stages: 1,
                            granularity,
                        };
                        let product = c.push(op, &operands);
                        c.push(Op::Unpack { block: 8 }, &[product])
                    })
                    .collect()
            },
        );
    }
    // The residual add the cuda backend folds into the product before it.
    cases_over(
        &mut out,
        "paired quant_linear, residual add",
        &[(3usize, 32usize), (1, 16)],
        |c, (rows, m)| {
            let x = c.real(&[rows, 2 * m]);
            let packed = c.push(Op::Pack { block: 0 }, &[x]);
            let mut operands = vec![packed];
            for _ in 0..2 {
                let codes = c.codes(m, m);
                operands.extend([codes, c.positive(&[2])]);
            }
            let op = Op::QuantLinear {
                u_stages: 1,
                w_stages: 1,
                granularity: Granularity::Tensor,
            };
            let product = c.push(op, &operands);
            let real = c.push(Op::Unpack { block: 0 }, &[product]);
            vec![c.push(Op::Add, &[x, real])]
        },
    );
    // The elementwise input the cuda backend folds into the product
    // (SiLU(gate)·up before down).
    cases_over(
        &mut out,
        "paired quant_linear, elementwise input",
        &[(3usize, 32usize), (1, 16)],
        |c, (rows, m)| {
            let (gate, up) = (c.real(&[rows, 2 * m]), c.real(&[rows, 2 * m]));
            let activated = c.push(Op::Silu, &[gate]);
            let gated = c.push(Op::Mul, &[activated, up]);
            let packed = c.push(Op::Pack { block: 0 }, &[gated]);
            let mut operands = vec![packed];
            for _ in 0..2 {
                let codes = c.codes(8, m);
                operands.extend([codes, c.positive(&[2])]);
            }
            let op = Op::QuantLinear {
                u_stages: 1,
                w_stages: 1,
                granularity: Granularity::Tensor,
            };
            let product = c.push(op, &operands);
            vec![c.push(Op::Unpack { block: 0 }, &[product])]
        },
    );
    out
}

/// The RMS of `backend`'s outputs' differences from the reference
/// backend's on `case`, relative to the RMS of the reference's (all
/// outputs together, real or complex).
pub fn relative_rms_difference(backend: &dyn Backend, case: &Case) -> Result<f32, String> {
    let run = |b: &dyn Backend| {
        compile(b, &case.graph, &case.store, &|_| {})
            .and_then(|p| p.run(case.inputs.clone()))
            .map_err(|e| e.to_string())
    };
    let (want, got) = (run(&Reference::default())?, run(backend)?);
    let (mut difference, mut size) = (0.0f64, 0.0f64);
    for (w, g) in want.iter().zip(&got) {
        // Complex values as their real and imaginary parts.
        let parts = |t: &Tensor| -> Option<Vec<f32>> {
            t.as_f32().map(<[f32]>::to_vec).or_else(|| {
                t.as_c64()
                    .map(|z| z.iter().flat_map(|z| [z.re, z.im]).collect())
            })
        };
        let (Some(w), Some(g)) = (parts(w), parts(g)) else {
            return Err("outputs must be f32 or c64".into());
        };
        if w.len() != g.len() {
            return Err(format!("{} values, not {}", g.len(), w.len()));
        }
        for (a, b) in w.iter().zip(&g) {
            difference += f64::from(a - b).powi(2);
            size += f64::from(*a).powi(2);
        }
    }
    Ok((difference / size.max(f64::MIN_POSITIVE)).sqrt() as f32)
}

/// Dense products on bf16 values: `linear`, `linear` by a transposed
/// weight (the backward pass's form) and `linear_weight_grad`, at odd and
/// even sizes: the cases of backends that round products' operands to
/// bf16 (the cuda backend's bf16 products), exact there on bf16 values.
pub fn bf16_product_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for shape in [(37, 64, 48), (5, 33, 7), (1, 9, 3)] {
        cases_over(&mut out, "bf16 products", &[shape], |c, (s, k, n)| {
            c.bf16 = true;
            let (x, w, wt, dy) = (
                c.real(&[s, k]),
                c.real(&[n, k]),
                c.real(&[k, n]),
                c.real(&[s, n]),
            );
            let transposed = c.push(Op::Transpose { perm: vec![1, 0] }, &[wt]);
            vec![
                c.push(Op::Linear, &[x, w]),
                c.push(Op::Linear, &[x, transposed]),
                c.push(Op::LinearWeightGrad, &[dy, x]),
            ]
        });
    }
    out
}

/// What one backend did on the suite.
pub struct Report {
    /// Cases run.
    pub cases: usize,
    /// Ops the cases exercised (mnemonics).
    pub ops: Vec<&'static str>,
    /// One line per mismatch or error, naming the case and output.
    pub failures: Vec<String>,
    /// Cases not run because the backend does not run one of their ops
    /// (and has no decomposition for it): case name and the error.
    pub unsupported: Vec<String>,
}

/// Within `rel` of the reference value's size, plus `bound` (absolute).
fn close(a: f32, b: f32, rel: f32, bound: f32) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0) + bound || (a.is_nan() && b.is_nan())
}

/// Compares elementwise; `bounds` are extra absolute bounds per element
/// (for a complex element, per part).
fn compare(got: &Tensor, want: &Tensor, rel: f32, bounds: Option<&[f32]>) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, want {:?}", got.shape, want.shape));
    }
    let bound = |i: usize| bounds.and_then(|b| b.get(i)).copied().unwrap_or(0.0);
    let worst = match (&got.data, &want.data) {
        (Data::F32(a), Data::F32(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(i, (a, b))| !close(**a, **b, rel, bound(*i)))
            .map(|(i, (a, b))| format!("element {i}: {a} vs {b}")),
        (Data::C64(a), Data::C64(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(i, (a, b))| {
                !(close(a.re, b.re, rel, bound(*i)) && close(a.im, b.im, rel, bound(*i)))
            })
            .map(|(i, (a, b))| format!("element {i}: {a} vs {b} (bound {})", bound(i))),
        (Data::I32(a), Data::I32(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("element {i}: {a} vs {b}")),
        // Packed codes (rows padded to whole bytes), byte for byte.
        (Data::Codes(a), Data::Codes(b)) if a.len() != b.len() => {
            Some(format!("{} bytes of codes, want {}", a.len(), b.len()))
        }
        (Data::Codes(a), Data::Codes(b)) => a
            .iter()
            .zip(b.iter())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("code byte {i}: {a:#04x} vs {b:#04x}")),
        _ => Some(format!(
            "element type {}, want {}",
            got.dtype_name(),
            want.dtype_name()
        )),
    };
    worst.map_or(Ok(()), Err)
}

/// The error bound of a `quant_linear` output of `case` on quantized
/// activations (see [`Tolerance::QuantizedActivations`]): per output,
/// `Σ_t Σ_j |ŵ_t[i, j]| · step_j / 2`. Its operands are the case's inputs
/// and stored codes.
fn quant_linear_bounds(
    case: &Case,
    inputs: &HashMap<String, Tensor>,
    output: ValueId,
    step: fn(usize, Granularity, &[Complex32]) -> Vec<f32>,
    weight_error: fn(usize, usize, Granularity, &[&[f32]]) -> f32,
) -> Result<Vec<f32>, String> {
    let node = case.graph.node(output);
    let Op::QuantLinear {
        granularity,
        u_stages,
        ..
    } = node.op
    else {
        return Err("not a quant_linear".into());
    };
    let input = |v: ValueId| match &case.graph.node(v).op {
        Op::Input { name } => inputs.get(name).ok_or(format!("no input {name}")),
        op => Err(format!("operand {v} is a {}, not an input", op.mnemonic())),
    };
    let x = input(node.operands[0])?.as_c64().ok_or("x must be c64")?;
    let mut magnitude: Vec<f32> = Vec::new();
    let mut scales: Vec<&[f32]> = Vec::new();
    let mut m = 0;
    for pair in node.operands[1..].chunks_exact(2) {
        let Op::Weight { name } = &case.graph.node(pair[0]).op else {
            return Err("codes must be stored".into());
        };
        let (ty, bytes) = &case.store.codes[name];
        let dims = ty.shape.concrete().ok_or("symbolic codes")?;
        let n = dims[0];
        m = dims[1];
        let stage_scales = input(pair[1])?.as_f32().ok_or("scales must be f32")?;
        scales.push(stage_scales);
        let q = PhaseQuantized {
            codes: unpack_code_rows(bytes, n, m).map_err(|e| e.to_string())?,
            scales: stage_scales.to_vec(),
        };
        let w = dequantize(&q, n, m, granularity).map_err(|e| e.to_string())?;
        magnitude.resize(n * m, 0.0);
        for (a, w) in magnitude.iter_mut().zip(&w) {
            *a += w.norm();
        }
    }
    let rows = x.len().checked_div(m).unwrap_or(0);
    let weight_error = weight_error(rows, u_stages, granularity, &scales);
    let mut bounds = Vec::new();
    for row in x.chunks(m.max(1)).filter(|_| m > 0) {
        let steps = step(m, granularity, row);
        let weight_part: f32 = row
            .iter()
            .zip(&steps)
            .map(|(v, s)| weight_error * (v.re.abs() + v.im.abs() + s))
            .sum();
        for weights in magnitude.chunks(m) {
            let activation_part: f32 = weights.iter().zip(&steps).map(|(w, s)| w * s / 2.0).sum();
            bounds.push(activation_part + weight_part);
        }
    }
    Ok(bounds)
}

/// Runs the suite on `backend` against the reference backend.
pub fn run(backend: &dyn Backend) -> Report {
    run_cases(backend, op_cases())
}

/// [`run`] on `cases`.
pub fn run_cases(backend: &dyn Backend, cases: Vec<Case>) -> Report {
    run_cases_repeated(backend, cases, 1)
}

/// [`run_cases`] with each case's program run `runs` times, run `k` (from
/// 0) on the case's f32 inputs scaled by `2^-k` (values exact in bf16 stay
/// so, and softmax's inputs only soften, so the cases' tolerances hold)
/// and checked against the reference on the same: a backend that keeps
/// something between runs (a captured CUDA graph, from the second run on)
/// must still compute each.
pub fn run_cases_repeated(backend: &dyn Backend, cases: Vec<Case>, runs: usize) -> Report {
    let mut ops: Vec<&'static str> = cases
        .iter()
        .flat_map(|c| c.graph.nodes.iter().map(|n| n.op.mnemonic()))
        .collect();
    ops.sort_unstable();
    ops.dedup();
    let mut failures = Vec::new();
    let mut unsupported = Vec::new();
    for case in &cases {
        if let Err(e @ BackendError::Unsupported { .. }) = prepare(backend, &case.graph) {
            unsupported.push(format!("{}: {e}", case.name));
            continue;
        }
        let program = |b: &dyn Backend| {
            compile(b, &case.graph, &case.store, &|_| {}).map_err(|e| e.to_string())
        };
        let (reference, tested) = match (program(&Reference::default()), program(backend)) {
            (Ok(r), Ok(t)) => (r, t),
            (Err(e), _) => {
                failures.push(format!("{}: the reference fails: {e}", case.name));
                continue;
            }
            (_, Err(e)) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        for run in 0..runs {
            let inputs = scaled(&case.inputs, 0.5f32.powi(run as i32));
            let which = if runs > 1 {
                format!("{} (run {})", case.name, run + 1)
            } else {
                case.name.clone()
            };
            let want = match reference.run(inputs.clone()) {
                Ok(w) => w,
                Err(e) => {
                    failures.push(format!("{which}: the reference fails: {e}"));
                    break;
                }
            };
            let got = match tested.run(inputs.clone()) {
                Ok(got) => got,
                Err(e) => {
                    failures.push(format!("{which}: {e}"));
                    break;
                }
            };
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let output = case.graph.outputs[k];
                let op = &case.graph.node(output).op;
                let checked = match backend.tolerance(op) {
                    Tolerance::Relative(rel) => compare(g, w, rel, None),
                    Tolerance::QuantizedActivations {
                        rel,
                        step,
                        weight_error,
                    } => quant_linear_bounds(case, &inputs, output, step, weight_error)
                        .and_then(|b| compare(g, w, rel, Some(&b))),
                };
                if let Err(e) = checked {
                    let op = op.mnemonic();
                    failures.push(format!("{which}: output {k} ({op}): {e}"));
                }
            }
        }
    }
    Report {
        cases: cases.len(),
        ops,
        failures,
        unsupported,
    }
}

/// `inputs` with every f32 element multiplied by `factor`.
fn scaled(inputs: &HashMap<String, Tensor>, factor: f32) -> HashMap<String, Tensor> {
    if factor == 1.0 {
        return inputs.clone();
    }
    inputs
        .iter()
        .map(|(name, t)| {
            let t = match t.as_f32() {
                Some(v) => Tensor::f32(t.shape.clone(), v.iter().map(|x| x * factor).collect()),
                None => t.clone(),
            };
            (name.clone(), t)
        })
        .collect()
}

/// Ops of the table the suite has no case for (leaves aside).
pub fn uncovered(report: &Report) -> Vec<&'static str> {
    Op::MNEMONICS
        .iter()
        .copied()
        .filter(|m| !report.ops.contains(m))
        .filter(|m| !matches!(*m, "input" | "weight"))
        .collect()
}

/// Instantiates the suite for a backend: a test that runs every case on it
/// against the reference backend and fails with every mismatch listed.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        #[test]
        fn conformance_suite_against_the_reference() {
            let backend = $backend;
            let report = $crate::conformance::run(&backend);
            eprintln!(
                "{} cases over {} ops on the {} backend; {} mismatches",
                report.cases,
                report.ops.len(),
                $crate::Backend::name(&backend),
                report.failures.len()
            );
            assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
            assert!(
                report.unsupported.is_empty(),
                "{}",
                report.unsupported.join("\n")
            );
            let missing = $crate::conformance::uncovered(&report);
            assert!(missing.is_empty(), "ops without a case: {missing:?}");
        }
    };
}
