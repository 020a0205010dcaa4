//! The conformance suite on the reference backend: as it is (every kernel
//! runs every case, empty dimensions included), and taking every composite
//! through its decomposition into primitives (the decompositions against
//! the composites' own kernels).

mod native {
    fairyc_backends::conformance_suite!(fairyc_backends::Reference::default());
}

mod decomposed {
    fairyc_backends::conformance_suite!(fairyc_backends::Reference::primitives_only());
}

/// The GPU's own case families (`tests/cuda.rs` runs them on a GPU) where
/// no GPU is: each graph verifies, and the reference through its
/// primitives matches the reference as it is, three runs each as the GPU
/// test makes.
#[test]
fn the_gpu_case_families_run_on_the_reference() {
    use fairyc_backends::conformance::{
        bf16_attention_cases, bf16_product_cases, run_cases_repeated,
    };
    let reference = fairyc_backends::Reference::primitives_only();
    for (family, cases) in [
        ("attention", bf16_attention_cases()),
        ("products", bf16_product_cases()),
    ] {
        let report = run_cases_repeated(&reference, cases, 3);
        assert!(report.cases > 0, "no bf16 {family} case");
        let problems: Vec<_> = report.failures.iter().chain(&report.unsupported).collect();
        assert!(problems.is_empty(), "bf16 {family} cases: {problems:?}");
    }
}
