//! The conformance suite on the CPU backend (Cranelift look-up-table
//! kernels for `quant_linear`, within the bound its int activations imply).

fairyc_backends::conformance_suite!(fairyc_backends::Cranelift);
