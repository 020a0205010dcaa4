//! The pieces of the `fairyc` command line that are more than a match arm
//! of `run`: the shared flags, and the commands with options of their own.

pub(crate) mod options;
pub(crate) mod plot;
pub(crate) mod train;
