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
