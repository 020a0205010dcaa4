//! The CUDA backend on a GPU: the conformance suite against the reference
//! backend. Where no GPU is (CI), it says SKIPPED and passes, unless
//! `FAIRYC_REQUIRE_GPU=1` (set on the GPU machine) makes a missing GPU a
//! failure.

use fairyc_backends::conformance;
use fairyc_backends::cuda::{Cuda, GpuAttention, GpuMatmul};

fn gpu_or_skip() -> bool {
    if Cuda::available() {
        return true;
    }
    assert!(
        std::env::var_os("FAIRYC_REQUIRE_GPU").is_none(),
        "FAIRYC_REQUIRE_GPU is set but no CUDA device is usable"
    );
    eprintln!("SKIPPED: no CUDA driver or device on this machine");
    false
}

#[test]
fn conformance_suite_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let report = conformance::run(&Cuda::default());
    let run = report.cases - report.unsupported.len();
    eprintln!(
        "{run} of {} cases run on the cuda backend; {} mismatches; not run (ops without a GPU kernel yet):",
        report.cases,
        report.failures.len()
    );
    for line in &report.unsupported {
        eprintln!("  {line}");
    }
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
    assert!(run > 0, "no case ran");
}

/// Attention with heads of 64 words on bf16 products: cuBLAS's around the
/// softmax, and the flash kernels.
#[test]
fn bf16_attention_on_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    // Both reports print before either is asserted: one GPU run tells
    // about both.
    let mut failures = Vec::new();
    for attention in [GpuAttention::Products, GpuAttention::Flash] {
        let cuda = Cuda {
            matmul: GpuMatmul::Bf16,
            attention,
            ..Cuda::default()
        };
        let report = conformance::run_cases(&cuda, conformance::bf16_attention_cases());
        eprintln!(
            "{attention:?}: {} bf16 attention cases on the cuda backend; {} mismatches",
            report.cases,
            report.failures.len()
        );
        for line in report.unsupported.iter().chain(&report.failures) {
            eprintln!("  {line}");
        }
        failures.extend(report.unsupported);
        failures.extend(report.failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
