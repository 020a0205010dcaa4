//! fairyc's tensor IR: a typed, complex-aware graph in SSA form.
//!
//! - [`types`]: element types (real, complex, packed codes) and shapes with
//!   named symbolic dimensions;
//! - [`op`]: the operations, declared once in one table; [`infer`]: their
//!   type rules; [`decompose`]: composites as graphs of primitives;
//! - [`graph`]: graphs and the builder; [`verify`]: the verifier;
//! - [`text`]: the one textual form (print and parse); [`dot`]: Graphviz;
//! - [`quant`]: the reference semantics of the Fairy2i ops (widely-linear
//!   split, PhaseQuant, the code2 encoding) and the real baselines;
//! - [`cost`]: the prices a target puts on ops, for extraction;
//! - [`roles`]: what each projection weight is for (q, k, ..., lm_head);
//! - [`weights`]: the store that `weight` nodes refer to by name.

pub mod atomic;
pub mod cost;
pub mod decompose;
pub mod dot;
pub mod graph;
pub mod infer;
pub mod op;
pub mod quant;
pub mod roles;
pub mod text;
pub mod types;
pub mod verify;
pub mod weights;

pub use graph::{BuildError, Graph, GraphBuilder, Node, ValueId, CONTEXT_LENGTH_META};
pub use op::{
    Arithmetic, AttentionOperand, Attr, Granularity, NormOperand, Op, OpKind, RopeLayout, Scheme,
    UnaryFn, WlPart,
};
pub use types::{DType, Dim, Shape, TensorType};
pub use verify::{verify, verify_weights, VerifyError};
pub use weights::{MemoryStore, SharedBytes, WeightError, WeightStore};
