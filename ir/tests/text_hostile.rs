//! Hostile IR text: sizes that cannot be allocated or multiplied parse
//! into numbers only and fail verification with a message, never a panic
//! or an allocation.

use fairyc_ir::{text, verify};

fn verify_error(src: &str) -> String {
    let graph = text::parse(src, "hostile.fir").expect("the text parses");
    verify(&graph).expect_err("verification fails").to_string()
}

#[test]
fn huge_dimensions_parse_and_their_product_is_an_error() {
    let err = verify_error(
        "graph @g {\n  %0 = input \"x\" : f32[99999999999999, 9999999]\n  return %0\n}\n",
    );
    assert!(
        err.contains("multiply to more than a size can hold"),
        "{err}"
    );
    assert!(err.contains("f32[99999999999999, 9999999]"), "{err}");
}

#[test]
fn attention_output_width_overflow_is_an_error() {
    // 2^32 heads of value width 2^32: the output width overflows.
    let err = verify_error(
        "graph @g {
  %0 = input \"q\" : f32[seq, 4294967296]
  %1 = input \"k\" : f32[seq, 1]
  %2 = input \"v\" : f32[seq, 4294967296]
  %3 = attention %0, %1, %2 {heads = 4294967296, kv_heads = 1, scale = 1.0, causal = true} : f32[seq, 1]
  return %3
}
",
    );
    assert!(err.contains("overflow a size"), "{err}");
}

#[test]
fn complex_rope_channel_overflow_is_an_error() {
    let err = verify_error(
        "graph @g {
  %0 = input \"x\" : c64[seq, 9223372036854775808]
  %1 = input \"positions\" : i32[seq]
  %2 = rope %0, %1 {base = 10000.0, layout = interleaved, head_dim = 2} : c64[seq, 9223372036854775808]
  return %2
}
",
    );
    assert!(err.contains("too many channels"), "{err}");
}

#[test]
fn complex_rms_norm_gain_overflow_is_an_error() {
    let err = verify_error(
        "graph @g {
  %0 = input \"x\" : c64[seq, 9223372036854775808]
  %1 = input \"gain\" : f32[4]
  %2 = rms_norm %0, %1 {eps = 1e-5} : c64[seq, 9223372036854775808]
  return %2
}
",
    );
    assert!(err.contains("too many channels"), "{err}");
}
