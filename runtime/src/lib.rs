//! fairyc's runtime: sessions (one sequence with its KV cache), sampling
//! and token generation, on a program that a backend compiled
//! (`fairyc_backends`).

pub mod generate;
pub mod sampling;

pub use fairyc_backends::{BackendError, Data, Program, Tensor};
pub use generate::{Session, StopReason};
pub use sampling::Sampler;
