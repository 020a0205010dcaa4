//! Packing of 2-bit codes, four per byte (section 3.4, storage).

use fairyc_ir::quant::{
    pack_code_rows, pack_codes, phase_quant, unpack_code_rows, unpack_codes, Code, Granularity,
};
use num_complex::Complex32;
use proptest::prelude::*;

fn code() -> impl Strategy<Value = Code> {
    (0u8..4).prop_map(Code::from_bits)
}

#[test]
fn lengths_not_a_multiple_of_four() {
    use Code::*;
    let all = [MinusI, PlusI, MinusOne, MinusI, PlusI, MinusOne, MinusI];
    for len in 0..=all.len() {
        let bytes = pack_codes(&all[..len]);
        assert_eq!(bytes.len(), len.div_ceil(4));
        assert_eq!(unpack_codes(&bytes, len), &all[..len]);
        // The padding is Code::PAD (+1), i.e. zero bits.
        if len % 4 != 0 {
            let last = *bytes.last().unwrap();
            assert_eq!(last >> (2 * (len % 4)), 0);
            assert_eq!(unpack_codes(&bytes, 4 * bytes.len())[len], Code::PAD);
        }
    }
}

#[test]
fn a_quantized_matrix_survives_packing() {
    let (n, m) = (3, 7);
    let w: Vec<Complex32> = (0..n * m)
        .map(|i| Complex32::new((i as f32 * 0.7).sin(), (i as f32 * 1.3).cos()))
        .collect();
    let q = phase_quant(&w, n, m, Granularity::Tensor).unwrap();
    let rows = pack_code_rows(&q.codes, n, m).unwrap();
    assert_eq!(rows.len(), n * 2);
    assert_eq!(unpack_code_rows(&rows, n, m).unwrap(), q.codes);
    let flat = pack_codes(&q.codes);
    assert_eq!(flat.len(), 6);
    assert_eq!(unpack_codes(&flat, n * m), q.codes);
}

proptest! {
    #[test]
    fn flat_round_trip(codes in prop::collection::vec(code(), 0..64)) {
        let bytes = pack_codes(&codes);
        prop_assert_eq!(bytes.len(), codes.len().div_ceil(4));
        prop_assert_eq!(unpack_codes(&bytes, codes.len()), codes);
    }

    #[test]
    fn row_round_trip(rows in 0usize..6, cols in 0usize..11, seed in any::<u64>()) {
        let codes: Vec<Code> = (0..rows * cols)
            .map(|i| Code::from_bits((seed >> (2 * (i % 32))) as u8))
            .collect();
        let bytes = pack_code_rows(&codes, rows, cols).unwrap();
        prop_assert_eq!(bytes.len(), rows * cols.div_ceil(4));
        prop_assert_eq!(unpack_code_rows(&bytes, rows, cols).unwrap(), codes);
    }

    #[test]
    fn code_k_sits_in_bits_2k(codes in prop::collection::vec(code(), 1..40)) {
        let bytes = pack_codes(&codes);
        for (i, c) in codes.iter().enumerate() {
            prop_assert_eq!((bytes[i / 4] >> (2 * (i % 4))) & 0b11, c.bits());
        }
    }
}
