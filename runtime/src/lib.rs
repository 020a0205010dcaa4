//! fairyc's runtime: sessions (one sequence with its KV cache), batches
//! (several sequences stepped together), lockstep decoding (many of one
//! length at one position), sampling and token generation, scoring
//! windows of tokens (their loss computed where the program runs),
//! on a program that a backend compiled (`fairyc_backends`).

pub mod batch;
pub mod generate;
pub mod lockstep;
pub mod sampling;
pub mod score;

pub use batch::{Batch, Feed, Rows};
pub use fairyc_backends::{BackendError, Data, Program, Tensor};
pub use generate::{Session, StopReason};
pub use lockstep::Lockstep;
pub use sampling::Sampler;
pub use score::WindowLoss;
