//! The real baselines: binary (sign · mean|w|) and BitNet b1.58 ternary.

use fairyc_ir::quant::{binary_quant, ternary_quant, Granularity, QuantError};

#[test]
fn binary_per_tensor() {
    let w = [0.5, -1.5, 0.0, 2.0, -0.0, -1.0];
    let q = binary_quant(&w, 2, 3, Granularity::Tensor).unwrap();
    // mean|w| = 5 / 6; zero (either sign) -> +1.
    let s = 5.0f32 / 6.0;
    assert_eq!(q.scales, vec![s]);
    assert_eq!(q.codes, vec![1, -1, 1, 1, 1, -1]);
    assert_eq!(q.values, vec![s, -s, s, s, s, -s]);
}

#[test]
fn binary_per_channel_and_group() {
    let w = [1.0, -3.0, 2.0, 0.0, -4.0, 4.0];
    let q = binary_quant(&w, 2, 3, Granularity::Channel).unwrap();
    assert_eq!(q.scales, vec![2.0, 8.0 / 3.0]);
    let q = binary_quant(&w, 2, 3, Granularity::Group(2)).unwrap();
    // Groups: [1, -3], [2], [0, -4], [4].
    assert_eq!(q.scales, vec![2.0, 2.0, 2.0, 4.0]);
    assert_eq!(q.values, vec![2.0, -2.0, 2.0, 2.0, -2.0, 4.0]);
}

#[test]
fn ternary_absmean() {
    // gamma = mean|w| = (0.1 + 0.6 + 2.0 + 0.3 + 1.0 + 0.0) / 6 = 0.6667.
    let w = [0.1, -0.6, 2.0, 0.3, -1.0, 0.0];
    let q = ternary_quant(&w, 1, 6, Granularity::Tensor).unwrap();
    let gamma = 4.0f32 / 6.0;
    assert!((q.scales[0] - gamma).abs() < 1e-7);
    // w / (gamma + 1e-5): 0.15 -> 0, -0.9 -> -1, 3.0 -> +1 (clamped),
    // 0.45 -> 0, -1.5 -> -1 (clamped), 0 -> 0.
    assert_eq!(q.codes, vec![0, -1, 1, 0, -1, 0]);
    let g = q.scales[0];
    assert_eq!(q.values, vec![0.0, -g, g, 0.0, -g, 0.0]);
}

#[test]
fn ternary_rounds_half_to_even() {
    // Built so that gamma = 1 exactly and w0 / (gamma + 1e-5) = 0.5 exactly:
    // torch.round gives 0 there, rounding half away from zero would give 1.
    let x = 1.0f32 + 1e-5;
    let w0 = x / 2.0;
    let v = 2.0 - w0;
    let w = [w0, v, -w0, -v];
    let q = ternary_quant(&w, 1, 4, Granularity::Tensor).unwrap();
    assert_eq!(q.scales, vec![1.0]);
    assert_eq!(w0 / (q.scales[0] + 1e-5), 0.5);
    assert_eq!(q.codes, vec![0, 1, 0, -1]);
}

#[test]
fn ternary_all_zero_is_finite() {
    let q = ternary_quant(&[0.0; 4], 2, 2, Granularity::Channel).unwrap();
    assert_eq!(q.scales, vec![0.0, 0.0]);
    assert_eq!(q.values, vec![0.0; 4]);
    assert_eq!(q.codes, vec![0; 4]);
}

#[test]
fn errors() {
    assert!(matches!(
        binary_quant(&[1.0; 5], 2, 3, Granularity::Tensor),
        Err(QuantError::Length { .. })
    ));
    assert_eq!(
        ternary_quant(&[1.0; 6], 2, 3, Granularity::Group(0)),
        Err(QuantError::GroupSize)
    );
}
