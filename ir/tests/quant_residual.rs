//! Recursive residual quantization (section 3.3, eq. 13).

mod common;

use common::{complex_error, Rng};
use fairyc_ir::quant::{
    dequantize, dequantize_sum, fairy2i_quantize, phase_quant, relative_error, residual_quant,
    Arithmetic, Fairy2iConfig, Granularity, QuantError,
};
use num_complex::Complex32;

const GRANULARITIES: [Granularity; 3] = [
    Granularity::Tensor,
    Granularity::Channel,
    Granularity::Group(16),
];

#[test]
fn error_decreases_with_stages() {
    let (n, m) = (24, 40);
    for seed in 0..4 {
        let w = Rng::new(seed).complex_normals(n * m);
        for g in GRANULARITIES {
            let errors: Vec<f64> = (1..=5)
                .map(|t| {
                    let stages = residual_quant(&w, n, m, t, g).unwrap();
                    let sum = dequantize_sum(&stages, n, m, g, Arithmetic::F32).unwrap();
                    complex_error(&w, &sum)
                })
                .collect();
            assert!(errors.windows(2).all(|e| e[1] < e[0]), "{g:?}: {errors:?}");
            // PhaseQuant of a Gaussian leaves about 60% of the norm; each stage
            // removes a good part of the rest.
            assert!(errors[0] < 0.7 && errors[1] < 0.45, "{g:?}: {errors:?}");
        }
    }
}

#[test]
fn one_stage_is_plain_phase_quant() {
    let (n, m) = (7, 13);
    let w = Rng::new(5).complex_normals(n * m);
    for g in GRANULARITIES {
        let stages = residual_quant(&w, n, m, 1, g).unwrap();
        assert_eq!(stages, vec![phase_quant(&w, n, m, g).unwrap()]);
    }
}

/// Stage t+1 quantizes exactly `W - Σ_{s<=t} Ŵ(s)` with fresh scales.
#[test]
fn each_stage_quantizes_the_running_residual() {
    let (n, m) = (9, 20);
    let w = Rng::new(6).complex_normals(n * m);
    for g in GRANULARITIES {
        let stages = residual_quant(&w, n, m, 3, g).unwrap();
        let mut residual = w.clone();
        for stage in &stages {
            assert_eq!(*stage, phase_quant(&residual, n, m, g).unwrap());
            let deq = dequantize(stage, n, m, g).unwrap();
            residual.iter_mut().zip(&deq).for_each(|(r, d)| *r -= d);
        }
        // Fresh scales: later stages have smaller ones.
        assert!(stages[1].scales[0] < stages[0].scales[0]);
    }
}

#[test]
fn stage_sum_is_the_sum_of_dequantized_stages() {
    let (n, m) = (6, 11);
    let w = Rng::new(7).complex_normals(n * m);
    for g in GRANULARITIES {
        let stages = residual_quant(&w, n, m, 3, g).unwrap();
        let mut want = vec![Complex32::new(0.0, 0.0); n * m];
        for stage in &stages {
            let deq = dequantize(stage, n, m, g).unwrap();
            want.iter_mut().zip(&deq).for_each(|(s, d)| *s += d);
        }
        assert_eq!(
            dequantize_sum(&stages, n, m, g, Arithmetic::F32).unwrap(),
            want
        );
    }
    assert_eq!(
        dequantize_sum(&[], 2, 3, Granularity::Tensor, Arithmetic::F32).unwrap(),
        vec![Complex32::new(0.0, 0.0); 6]
    );
}

#[test]
fn zero_stages_is_an_error() {
    let w = [Complex32::new(1.0, 0.0)];
    assert_eq!(
        residual_quant(&w, 1, 1, 0, Granularity::Tensor),
        Err(QuantError::NoStages)
    );
}

/// The real matrix `A_q` also gets closer to `R` with every stage, for every
/// granularity, and each stage holds 2 bits per complex entry of U and W,
/// i.e. T bits per real parameter (section 3.4).
#[test]
fn real_reconstruction_improves_with_stages() {
    let (rows, cols) = (48, 80);
    let r = Rng::new(8).normals(rows * cols);
    for granularity in GRANULARITIES {
        let mut last = f64::INFINITY;
        for stages in 1..=3 {
            let cfg = Fairy2iConfig {
                stages,
                granularity,
                ..Fairy2iConfig::default()
            };
            let q = fairy2i_quantize(&r, rows, cols, &cfg).unwrap();
            assert_eq!(q.u.len(), stages);
            let bits = 2 * (q.u.len() + q.w.len()) * q.n * q.m;
            assert_eq!(bits, stages * rows * cols);
            let err = relative_error(&r, &q.a_q);
            assert!(err < last, "{granularity:?} T={stages}: {err} >= {last}");
            last = err;
        }
    }
}
