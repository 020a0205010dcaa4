//! fairyc's passes: the Fairy2i method as rewrites of the IR.
//!
//! - [`autodiff`]: reverse-mode gradients of a scalar loss, as IR nodes;
//! - [`optimizer`]: training steps on them (SGD, AdamW), on one GPU or as
//!   one rank of several;
//! - [`egraph`]: the IR as an `egg` language, saturation, rule plumbing;
//! - [`lower`]: widely-linear lowering (section 3.1), on the e-graph;
//! - [`quantize`]: PhaseQuant with residual stages (3.2-3.3) and the real
//!   baselines, as a directed rewrite;
//! - [`simplify`]: identities that keep data complex (pack/unpack, conj,
//!   complex RoPE and attention) and Gauss's product, on the e-graph;
//! - [`legalize`]: quantized layers of a deployed graph as `quant_linear`
//!   on packed codes;
//! - [`real_products`]: a training graph's widely-linear products back as
//!   one real product each;
//! - [`shard`]: a data-parallel step's masters held one rank each, their
//!   quantized weights sent as codes and scales;
//! - [`rebuild`]: rebuilding graphs node by node, dead-code elimination;
//! - [`cost`]: the cost model extraction minimises;
//! - [`extract`]: the cheapest program of a saturated e-graph, as a graph;
//! - [`pipeline`]: the passes in order, verified after each.

pub mod autodiff;
pub mod cost;
pub mod egraph;
pub mod extract;
pub mod legalize;
pub mod lower;
pub mod optimizer;
pub mod pipeline;
pub mod quantize;
pub mod real_products;
pub mod rebuild;
pub mod shard;
pub mod simplify;
