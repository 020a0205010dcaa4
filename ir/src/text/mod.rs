//! The one textual form of the IR.
//!
//! ```text
//! graph @tiny {
//!   meta architecture = "llama"
//!   %0 = input "tokens" : i32[seq]
//!   %1 = weight "token_embd.weight" : f32[64, 16]
//!   %2 = embed %0, %1 : f32[seq, 16]
//!   return %2
//! }
//! ```
//! `print` and `parse` are inverses: `parse(print(g)) == g`.

mod lexer;
mod parse;
mod print;

pub use parse::{parse, ParseError};
pub use print::print;
