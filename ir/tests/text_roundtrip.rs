//! The textual form prints and parses back to the same graph, and the
//! parser and verifier point at the offending place.

use fairyc_ir::text::{parse, print};
use fairyc_ir::{
    verify, Arithmetic, AttentionOperand, DType, Dim, Granularity, GraphBuilder, NormOperand, Op,
    RopeLayout, Scheme, Shape, TensorType, UnaryFn, WlPart,
};
use proptest::prelude::*;

fn t(dtype: DType, dims: &[Dim]) -> TensorType {
    TensorType::new(dtype, Shape(dims.to_vec()))
}

/// A graph that uses every op at least once.
fn every_op_graph() -> fairyc_ir::Graph {
    let seq = Dim::sym("seq");
    let mut b = GraphBuilder::new("every_op");
    b.meta("architecture", "test \"quoted\"\n");
    let tokens = b.input("tokens", t(DType::I32, std::slice::from_ref(&seq)));
    let pos = b.input("positions", t(DType::I32, std::slice::from_ref(&seq)));
    let table = b.weight("embed", t(DType::F32, &[32.into(), 8.into()]));
    let gain = b.weight("gain", t(DType::F32, &[8.into()]));
    let wq = b.weight("wq", t(DType::F32, &[8.into(), 8.into()]));
    let x = b.push(Op::Embed, &[tokens, table]).unwrap();
    let h = b.push(Op::RmsNorm { eps: 1e-5 }, &[x, gain]).unwrap();
    let q = b.push(Op::Linear, &[h, wq]).unwrap();
    let q = b
        .push(
            Op::Rope {
                base: 10000.0,
                layout: RopeLayout::HalfSplit,
                head_dim: 4,
            },
            &[q, pos],
        )
        .unwrap();
    let a = b
        .push(
            Op::Attention {
                heads: 2,
                kv_heads: 1,
                scale: 0.5,
                causal: true,
                segment: None,
            },
            &[q, h, h],
        )
        .unwrap_err();
    assert!(a.to_string().contains("head width"), "{a}");
    let k = b
        .push(
            Op::Slice {
                axis: 1,
                start: 0,
                end: 4,
            },
            &[h],
        )
        .unwrap();
    let a = b
        .push(
            Op::Attention {
                heads: 2,
                kv_heads: 1,
                scale: 0.5,
                causal: true,
                segment: None,
            },
            &[q, k, k],
        )
        .unwrap();
    let s = b.push(Op::Silu, &[a]).unwrap();
    let m = b.push(Op::Mul, &[s, gain]).unwrap();
    let y = b.push(Op::Add, &[m, x]).unwrap();
    let y = b.push(Op::Softmax, &[y]).unwrap();
    let r = b
        .push(
            Op::Reshape {
                shape: Shape(vec![seq.clone(), 2.into(), 4.into()]),
            },
            &[y],
        )
        .unwrap();
    let r = b
        .push(
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[r],
        )
        .unwrap();
    let r = b
        .push(
            Op::Transpose {
                perm: vec![1, 0, 2],
            },
            &[r],
        )
        .unwrap();
    let r = b
        .push(
            Op::Reshape {
                shape: Shape(vec![seq, 8.into()]),
            },
            &[r],
        )
        .unwrap();
    let c = b.push(Op::Concat { axis: 1 }, &[r, y]).unwrap();
    let z = b.push(Op::Pack { block: 0 }, &[c]).unwrap();
    let zc = b.push(Op::Conj, &[z]).unwrap();
    // A widely-linear layer with W2 PhaseQuant weights, and a deployed one.
    let wl = b.weight("wl", t(DType::F32, &[8.into(), 16.into()]));
    let u = b
        .push(
            Op::WidelyLinear {
                part: WlPart::U,
                row_block: 2,
                col_block: 0,
                arithmetic: Arithmetic::Bf16Exact,
            },
            &[wl],
        )
        .unwrap();
    let phase = Op::Quantize {
        scheme: Scheme::Phase,
        granularity: Granularity::Group(2),
        arithmetic: Arithmetic::F32,
    };
    let q0 = b.push(phase.clone(), &[u]).unwrap();
    let r1 = b.push(Op::Sub, &[u, q0]).unwrap();
    let q1 = b.push(phase, &[r1]).unwrap();
    let uq = b.push(Op::Add, &[q0, q1]).unwrap();
    let codes = b.weight("codes", t(DType::Code2, &[4.into(), 8.into()]));
    let scales = b.weight("scales", t(DType::F32, &[4.into(), 2.into()]));
    let deq = b
        .push(
            Op::Dequant {
                granularity: Granularity::Channel,
            },
            &[codes, scales],
        )
        .unwrap();
    let zl = b.push(Op::Linear, &[zc, uq]).unwrap();
    let zd = b.push(Op::Linear, &[zc, deq]).unwrap();
    let zs = b.push(Op::Add, &[zl, zd]).unwrap();
    let out = b.push(Op::Unpack { block: 2 }, &[zs]).unwrap();
    let wb = b
        .push(
            Op::Quantize {
                scheme: Scheme::Ternary,
                granularity: Granularity::Tensor,
                arithmetic: Arithmetic::F32,
            },
            &[wq],
        )
        .unwrap();
    let yb = b.push(Op::Linear, &[y, wb]).unwrap();
    // A loss and the gradient ops.
    let targets = b.input("targets", t(DType::I32, &[Dim::sym("seq")]));
    let loss = b.push(Op::CrossEntropy, &[yb, targets]).unwrap();
    let one = b.push(Op::Fill { value: 1.0 }, &[loss]).unwrap();
    let dy = b.push(Op::CrossEntropyGrad, &[yb, targets, one]).unwrap();
    let norm = |which| Op::RmsNormGrad { eps: 1e-5, which };
    let mut grads = vec![loss];
    for (op, operands) in [
        (Op::Scale { factor: -0.5 }, vec![dy]),
        (
            Op::ReduceTo {
                shape: Shape::new([8]),
            },
            vec![dy],
        ),
        (
            Op::Pad {
                axis: 1,
                before: 1,
                after: 2,
            },
            vec![dy],
        ),
        (Op::Unary { func: UnaryFn::Neg }, vec![pos]),
        (
            Op::Unary {
                func: UnaryFn::Sigmoid,
            },
            vec![dy],
        ),
        (Op::Div, vec![dy, dy]),
        (Op::CReluSquared, vec![zc]),
        (Op::ActQuant { bits: 8 }, vec![zc]),
        (
            Op::QuantLinear {
                u_stages: 1,
                w_stages: 1,
                granularity: Granularity::Channel,
            },
            vec![zc, codes, scales, codes, scales],
        ),
        (Op::LinearWeightGrad, vec![dy, y]),
        (Op::EmbedGrad { vocab: 32 }, vec![tokens, dy]),
        (Op::SiluGrad, vec![a, dy]),
        (Op::Crelu2Grad, vec![zc, zc]),
        (Op::SoftmaxGrad, vec![y, dy]),
        (norm(NormOperand::Input), vec![x, gain, dy]),
        (norm(NormOperand::Gain), vec![x, gain, dy]),
        (
            Op::AttentionGrad {
                which: AttentionOperand::K,
                heads: 2,
                kv_heads: 1,
                scale: 0.5,
                causal: true,
                // A batch of training windows of 2 rows each.
                segment: Some(2),
            },
            vec![q, k, k, dy],
        ),
        (
            Op::WidelyLinearGrad {
                part: WlPart::U,
                row_block: 2,
                col_block: 0,
            },
            vec![wl, uq],
        ),
        (
            Op::QuantizeGrad {
                scheme: Scheme::Phase,
                granularity: Granularity::Group(2),
                arithmetic: Arithmetic::F32,
            },
            vec![u, uq],
        ),
    ] {
        grads.push(b.push(op, &operands).unwrap());
    }
    // An optimizer update of a weight, with scalars for lr and the corrections.
    let m = b.weight("m", t(DType::F32, &[8.into(), 8.into()]));
    let v = b.weight("v", t(DType::F32, &[8.into(), 8.into()]));
    let adam = Op::AdamUpdate { eps: 1e-8 };
    grads.push(b.push(adam, &[wq, m, v, loss, loss, loss, loss]).unwrap());
    // Clipping by the global norm.
    let squares = b.push(Op::SumSquares, &[dy]).unwrap();
    let clip = Op::ClipFactor { max_norm: 2.0 };
    grads.push(b.push(clip, &[squares]).unwrap());
    // Data-parallel ranks adding a gradient.
    grads.push(b.push(Op::AllReduce, &[dy]).unwrap());
    grads.push(b.push(Op::BroadcastFrom { root: 1 }, &[dy]).unwrap());
    // Sharded masters: the owner's codes and scales of a stage, and the
    // placeholder another rank receives them into.
    let stage_codes = Op::PhaseCodes {
        arithmetic: Arithmetic::Bf16Exact,
    };
    let stage_codes = b.push(stage_codes, &[u]).unwrap();
    let stage_scales = Op::PhaseScales {
        granularity: Granularity::Group(3),
        arithmetic: Arithmetic::F32,
    };
    let stage_scales = b.push(stage_scales, &[u]).unwrap();
    let received = b.zeros(t(DType::Code2, &[4.into(), 8.into()]));
    let received = b.push(Op::BroadcastFrom { root: 1 }, &[received]).unwrap();
    grads.extend([stage_codes, stage_scales, received]);
    grads.push(b.zeros(t(DType::C64, &[5.into(), 3.into()])));
    // Distillation to a teacher's logits.
    let kl = b.push(Op::KlDiv, &[yb, yb]).unwrap();
    grads.push(kl);
    grads.push(b.push(Op::KlDivGrad, &[yb, yb, kl]).unwrap());
    // A token drawn from each row on the device.
    let draws = b.input("draws", t(DType::F32, &[Dim::sym("seq")]));
    let sample = Op::Sample { temperature: 0.7 };
    grads.push(b.push(sample, &[yb, draws]).unwrap());
    let mut outputs = vec![out, yb];
    outputs.extend(grads);
    b.finish(&outputs)
}

#[test]
fn every_op_round_trips_and_verifies() {
    let g = every_op_graph();
    verify(&g).unwrap();
    let text = print(&g);
    let back = parse(&text, "every_op.fir").unwrap();
    assert_eq!(back, g);
    assert_eq!(print(&back), text);
    insta::assert_snapshot!(text);
    // The graph covers the whole op table.
    let missing: Vec<&str> = Op::MNEMONICS
        .iter()
        .copied()
        .filter(|m| !g.nodes.iter().any(|n| n.op.mnemonic() == *m))
        .collect();
    assert!(missing.is_empty(), "the every-op graph lacks {missing:?}");
}

#[test]
fn custom_value_names_are_renumbered() {
    let text = "graph @g {\n  %tok = input \"t\" : i32[seq]\n  %tab = weight \"e\" : f32[4, 2]\n  %x = embed %tok, %tab : f32[seq, 2]\n  return %x\n}\n";
    let g = parse(text, "g.fir").unwrap();
    verify(&g).unwrap();
    assert!(print(&g).contains("%2 = embed %0, %1 : f32[seq, 2]"));
}

#[test]
fn parse_errors_name_file_line_and_column() {
    let cases = [
        (
            "graph @g {\n  %0 = input \"t\" : i32[seq]\n  return %1\n}",
            3,
            10,
            "used before",
        ),
        (
            "graph @g {\n  %0 = frobnicate %0 : f32[1]\n",
            2,
            19,
            "used before",
        ),
        (
            "graph @g {\n  %0 = frobnicate : f32[1]\n  return %0\n}",
            2,
            8,
            "unknown op `frobnicate`",
        ),
        (
            "graph @g {\n  %0 = input \"t\" : q8[seq]\n}",
            2,
            20,
            "unknown element type `q8`",
        ),
        (
            "graph @g {\n  %0 = rms_norm {eps = 1e-5, eps = 1.0} : f32[1]\n}",
            2,
            30,
            "given twice",
        ),
        (
            "graph @g {\n  %0 = input \"t\" : i32[seq]\n  %0 = input \"u\" : i32[seq]\n}",
            3,
            3,
            "defined twice",
        ),
        (
            "graph @g {\n  %0 = input \"t : i32[seq]\n}",
            2,
            14,
            "unterminated string",
        ),
        (
            "graph @g {\n  %0 = input \"t\" : i32[seq]\n  return %0\n} extra",
            4,
            3,
            "end of input",
        ),
        ("graph {", 1, 7, "graph name"),
        ("", 1, 1, "`graph`"),
    ];
    for (text, line, col, needle) in cases {
        let e = parse(text, "bad.fir").unwrap_err();
        assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
        assert!(e.message.contains(needle), "{text:?}: {e}");
        assert!(e
            .to_string()
            .starts_with(&format!("bad.fir:{line}:{col}: ")));
    }
}

#[test]
fn verifier_names_the_offending_value() {
    let text = "graph @g {\n  %0 = input \"t\" : i32[seq]\n  %1 = weight \"e\" : f32[4, 2]\n  %2 = embed %0, %1 : f32[seq, 3]\n  %3 = weight \"w\" : f32[5, 7]\n  %4 = linear %2, %3 : f32[seq, 5]\n  return %4\n}\n";
    let g = parse(text, "g.fir").unwrap();
    let e = verify(&g).unwrap_err();
    assert_eq!(e.diagnostics.len(), 2, "{e}");
    assert_eq!(e.diagnostics[0].value, Some(fairyc_ir::ValueId(2)));
    assert!(
        e.diagnostics[0]
            .message
            .contains("declared type f32[seq, 3]"),
        "{e}"
    );
    assert_eq!(e.diagnostics[1].value, Some(fairyc_ir::ValueId(4)));
    assert!(e.diagnostics[1].message.contains("in-features"), "{e}");
}

#[test]
fn zeros_and_the_phase_quantizer_halves_parse_and_verify() {
    let text = "graph @g {\n  %0 = input \"w\" : c64[4, 6]\n  %1 = phase_codes %0 {arithmetic = bf16} : code2[4, 6]\n  %2 = phase_scales %0 {granularity = group, group_size = 4, arithmetic = f32} : f32[4, 2, 2]\n  %3 = dequant %1, %2 {granularity = group, group_size = 4} : c64[4, 6]\n  %4 = zeros : code2[16, 16]\n  %5 = broadcast_from %4 {root = 1} : code2[16, 16]\n  %6 = zeros : i32[7]\n  return %3, %5, %6\n}\n";
    let g = parse(text, "g.fir").unwrap();
    verify(&g).unwrap();
    assert_eq!(g.node(fairyc_ir::ValueId(4)).op, Op::Zeros);
    assert_eq!(print(&g), text);
}

#[test]
fn the_verifier_checks_the_phase_quantizer_halves_and_zeros() {
    let check = |body: &str, value: usize, want: &str| {
        let text = format!("graph @g {{\n{body}  return %{value}\n}}\n");
        let g = parse(&text, "g.fir").unwrap();
        let e = verify(&g).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e}");
        assert_eq!(
            e.diagnostics[0].value,
            Some(fairyc_ir::ValueId(value)),
            "{e}"
        );
        assert!(e.diagnostics[0].message.contains(want), "{e}");
    };
    // Codes of a real tensor.
    check(
        "  %0 = input \"w\" : f32[4, 6]\n  %1 = phase_codes %0 {arithmetic = f32} : code2[4, 6]\n",
        1,
        "must be a c64 tensor",
    );
    // Scales declared in the wrong element type.
    check(
        "  %0 = input \"w\" : c64[4, 6]\n  %1 = phase_scales %0 {granularity = channel, arithmetic = f32} : c64[4, 2]\n",
        1,
        "declared type c64[4, 2] but the op gives f32[4, 2]",
    );
    // Codes declared in the wrong element type.
    check(
        "  %0 = input \"w\" : c64[4, 6]\n  %1 = phase_codes %0 {arithmetic = f32} : f32[4, 6]\n",
        1,
        "but the op gives code2[4, 6]",
    );
    // `zeros` takes no operands.
    check(
        "  %0 = input \"w\" : c64[4, 6]\n  %1 = zeros %0 : c64[4, 6]\n",
        1,
        "`zeros` takes no operands",
    );
    // Nor a shape that only a run binds (it is a constant).
    check(
        "  %0 = zeros : f32[seq, 2]\n",
        0,
        "`zeros` must have a fixed shape",
    );
    // `zeros` has no rule to infer its type from.
    let err = fairyc_ir::infer::infer_type(&Op::Zeros, &[]).unwrap_err();
    assert!(err.contains("declared type"), "{err}");
    // A builder cannot push it: it has a declared type.
    let mut b = GraphBuilder::new("g");
    assert!(b.push(Op::Zeros, &[]).is_err());
}

#[test]
fn dot_export_has_every_node_and_edge() {
    let g = every_op_graph();
    let dot = fairyc_ir::dot::to_dot(&g);
    assert!(dot.starts_with("digraph \"every_op\""));
    let edges = g.nodes.iter().map(|n| n.operands.len()).sum::<usize>();
    assert_eq!(dot.matches(" -> ").count(), edges);
    assert_eq!(dot.matches("[ label = \"%").count(), g.nodes.len());
}

fn arb_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z_][a-z0-9_.]{0,8}").unwrap()
}

proptest! {
    /// Arbitrary meta strings, weight names, float attributes and shapes
    /// survive a print/parse round trip.
    #[test]
    fn random_graphs_round_trip(
        meta in ".*",
        wname in ".*",
        eps in proptest::num::f32::ANY,
        dims in proptest::collection::vec(1usize..100, 1..4),
        sym in arb_name(),
    ) {
        let mut b = GraphBuilder::new("p");
        b.meta("note", meta);
        let mut shape: Vec<Dim> = dims.iter().map(|&d| Dim::Fixed(d)).collect();
        shape.insert(0, Dim::Sym(sym));
        let last = *dims.last().unwrap();
        let x = b.input("x", TensorType::new(DType::F32, Shape(shape)));
        let g = b.weight(wname, TensorType::new(DType::F32, Shape::new([last])));
        let y = b.push(Op::RmsNorm { eps: eps.abs() }, &[x, g]);
        let graph = match y {
            Ok(y) => b.finish(&[y]),
            Err(_) => b.finish(&[x]),
        };
        let text = print(&graph);
        let back = parse(&text, "p.fir").unwrap();
        // NaN attributes compare unequal; compare the text instead.
        prop_assert_eq!(print(&back), text);
    }
}
