//! The two halves of PhaseQuant (`phase_codes`, `phase_scales`) beside
//! the quantizer, for the tests of the identity that sharded masters rely
//! on: `dequant` of the halves is `quantize`, bit for bit.

use fairyc_ir::{
    Arithmetic, DType, Granularity, Graph, GraphBuilder, Op, Scheme, Shape, TensorType,
};

/// `[codes, scales, dequant(codes, scales), quantize(w)]` of an input
/// `w: c64[n, m]`.
pub fn halves_graph(n: usize, m: usize, granularity: Granularity, arithmetic: Arithmetic) -> Graph {
    let mut b = GraphBuilder::new("halves");
    let w = b.input("w", TensorType::new(DType::C64, Shape::new([n, m])));
    let codes = b.push(Op::PhaseCodes { arithmetic }, &[w]).unwrap();
    let scales = Op::PhaseScales {
        granularity,
        arithmetic,
    };
    let scales = b.push(scales, &[w]).unwrap();
    let rebuilt = b
        .push(Op::Dequant { granularity }, &[codes, scales])
        .unwrap();
    let phase = Op::Quantize {
        scheme: Scheme::Phase,
        granularity,
        arithmetic,
    };
    let quantized = b.push(phase, &[w]).unwrap();
    b.finish(&[codes, scales, rebuilt, quantized])
}
