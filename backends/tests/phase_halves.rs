//! The halves of PhaseQuant that sharded masters send (`phase_codes`,
//! `phase_scales`) on the reference backend: `dequant` of them is
//! `quantize`, bit for bit, and a group of ranks (threads) broadcasts the
//! owner's codes and scales into the others' `zeros`.

use std::collections::HashMap;

use fairyc_backends::{compile, Data, Rank, Reference, Tensor};
use fairyc_ir::quant::{pack_code_rows, phase_quant_with};
use fairyc_ir::{
    Arithmetic, DType, Granularity, Graph, GraphBuilder, MemoryStore, Op, Shape, TensorType,
    ValueId,
};
use num_complex::Complex32;
use rand::{rngs::StdRng, RngExt, SeedableRng};

#[path = "common/halves.rs"]
mod halves;
use halves::halves_graph;

fn ty(dtype: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::new(shape.iter().copied()))
}

/// Random complex entries, a third of them ties of the code choice (equal
/// magnitudes in every quadrant), zeros (of either sign) or on an axis.
fn weights(rng: &mut StdRng, n: usize, m: usize) -> Vec<Complex32> {
    (0..n * m)
        .map(|_| {
            let (a, b) = (
                rng.random::<f32>() * 2.0 - 1.0,
                rng.random::<f32>() * 2.0 - 1.0,
            );
            // Exact in bf16: the tie survives its rounding.
            let t = Arithmetic::Bf16Exact.round(a);
            match rng.random_range(0..12) {
                0 => Complex32::new(t, t),
                1 => Complex32::new(-t, t),
                2 => Complex32::new(t, -t),
                3 => Complex32::new(-t, -t),
                4 => Complex32::new(0.0, 0.0),
                5 => Complex32::new(-0.0, -0.0),
                6 => Complex32::new(0.0, t),
                7 => Complex32::new(t, 0.0),
                _ => Complex32::new(a, b),
            }
        })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    match &t.data {
        Data::C64(d) => d
            .iter()
            .flat_map(|z| [z.re.to_bits(), z.im.to_bits()])
            .collect(),
        Data::F32(d) => d.iter().map(|x| x.to_bits()).collect(),
        other => panic!("not a float tensor: {other:?}"),
    }
}

fn run(graph: &Graph, w: Vec<Complex32>, n: usize, m: usize) -> Vec<Tensor> {
    let program = compile(
        &Reference::default(),
        graph,
        &MemoryStore::default(),
        &|_| {},
    )
    .unwrap();
    let inputs = HashMap::from([("w".to_string(), Tensor::c64(vec![n, m], w))]);
    program.run(inputs).unwrap()
}

#[test]
fn dequant_of_the_halves_is_quantize_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(7);
    let granularities = [
        Granularity::Tensor,
        Granularity::Channel,
        Granularity::Group(4),
        Granularity::Group(3),
        Granularity::Group(64),
    ];
    // m not a multiple of the groups; one entry; a tall matrix.
    let shapes = [(5usize, 10usize), (1, 1), (7, 13), (64, 37)];
    for granularity in granularities {
        for arithmetic in [Arithmetic::F32, Arithmetic::Bf16Exact] {
            for (n, m) in shapes {
                for all_zero in [false, true] {
                    let w = if all_zero {
                        vec![Complex32::new(0.0, 0.0); n * m]
                    } else {
                        weights(&mut rng, n, m)
                    };
                    let graph = halves_graph(n, m, granularity, arithmetic);
                    let out = run(&graph, w.clone(), n, m);
                    let what = format!("{granularity:?} {arithmetic:?} [{n}, {m}] zero {all_zero}");
                    assert_eq!(bits(&out[2]), bits(&out[3]), "{what}");
                    // The halves are the quantizer's own codes and scales.
                    let q = phase_quant_with(&w, n, m, granularity, arithmetic).unwrap();
                    let Data::Codes(codes) = &out[0].data else {
                        panic!("codes are code2")
                    };
                    assert_eq!(**codes, *pack_code_rows(&q.codes, n, m).unwrap(), "{what}");
                    assert_eq!(out[1].as_f32().unwrap(), q.scales, "{what}");
                    let groups = match granularity {
                        Granularity::Tensor => vec![2],
                        Granularity::Channel => vec![n, 2],
                        Granularity::Group(g) => vec![n, m.div_ceil(g), 2],
                    };
                    assert_eq!(out[1].shape, groups, "{what}");
                }
            }
        }
    }
}

/// A sharded master on a group of three ranks: rank `owner` holds `w` and
/// sends its codes and scales; every rank rebuilds the quantized weight.
#[test]
fn ranks_rebuild_the_owners_quantized_weight() {
    let (n, m, ranks, owner) = (6usize, 9usize, 3usize, 1usize);
    let granularity = Granularity::Group(4);
    let arithmetic = Arithmetic::F32;
    let w = weights(&mut StdRng::seed_from_u64(3), n, m);
    let scale_shape = [n, m.div_ceil(4), 2];
    let graph = |rank: usize| {
        let mut b = GraphBuilder::new("shard");
        let x = b.input("w", ty(DType::C64, &[n, m]));
        let (codes, scales): (ValueId, ValueId) = if rank == owner {
            let codes = b.push(Op::PhaseCodes { arithmetic }, &[x]).unwrap();
            let scales = Op::PhaseScales {
                granularity,
                arithmetic,
            };
            (codes, b.push(scales, &[x]).unwrap())
        } else {
            (
                b.zeros(ty(DType::Code2, &[n, m])),
                b.zeros(ty(DType::F32, &scale_shape)),
            )
        };
        let root = Op::BroadcastFrom { root: owner };
        let codes = b.push(root.clone(), &[codes]).unwrap();
        let scales = b.push(root, &[scales]).unwrap();
        let rebuilt = b
            .push(Op::Dequant { granularity }, &[codes, scales])
            .unwrap();
        b.finish(&[codes, rebuilt])
    };
    let want = {
        let q = phase_quant_with(&w, n, m, granularity, arithmetic).unwrap();
        let rebuilt = fairyc_ir::quant::dequantize(&q, n, m, granularity).unwrap();
        (pack_code_rows(&q.codes, n, m).unwrap(), rebuilt)
    };
    let group = Rank::group(ranks);
    let results: Vec<Vec<Tensor>> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .iter()
            .map(|rank| {
                let (graph, w) = (graph(rank.index()), w.clone());
                scope.spawn(move || {
                    let backend = Reference::rank(rank.clone());
                    let program =
                        compile(&backend, &graph, &MemoryStore::default(), &|_| {}).unwrap();
                    // Only the owner's master matters: the others' are noise.
                    let mine = if rank.index() == owner {
                        w
                    } else {
                        vec![Complex32::new(rank.index() as f32, 1.0); n * m]
                    };
                    let inputs = HashMap::from([("w".to_string(), Tensor::c64(vec![n, m], mine))]);
                    program.run(inputs).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, out) in results.iter().enumerate() {
        let Data::Codes(codes) = &out[0].data else {
            panic!("rank {rank}: codes are code2")
        };
        assert_eq!(**codes, *want.0, "rank {rank}");
        assert_eq!(
            bits(&out[1]),
            bits(&Tensor::c64(vec![n, m], want.1.clone())),
            "rank {rank}"
        );
    }
}
