//! fairyc's runtime: tensors, the reference executor with its KV cache,
//! sampling, and token generation.

pub mod executor;
pub mod generate;
pub mod kernels;
pub mod sampling;
pub mod tensor;

pub use executor::{Executor, KvCache};
pub use generate::{Session, StopReason};
pub use sampling::Sampler;
pub use tensor::{Data, Tensor};

/// An error while loading or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Verify(#[from] fairyc_ir::VerifyError),
    #[error(transparent)]
    Weight(#[from] fairyc_ir::WeightError),
    #[error("{0}")]
    Run(String),
}

impl RuntimeError {
    pub fn new(message: impl Into<String>) -> RuntimeError {
        RuntimeError::Run(message.into())
    }
}
