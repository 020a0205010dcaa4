//! Tests that need assets outside the repository (the SmolLM2 model in
//! `models/`, `../shared`): one rule for all of them. Under `make test`
//! (`FAIRYC_REQUIRE_ASSETS=1`) a missing asset fails the test; otherwise the
//! test is skipped and says so on the terminal (past the test harness's
//! output capture), so that a test that could not run never reads as one
//! that passed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable that makes missing assets an error.
pub const REQUIRE_ASSETS: &str = "FAIRYC_REQUIRE_ASSETS";

/// The workspace root: the nearest folder above this crate with a Cargo.lock.
pub fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// `FAIRYC_MODEL`, or SmolLM2-135M-Instruct's Q4_1 GGUF in `models/`.
pub fn smollm2_path() -> PathBuf {
    std::env::var_os("FAIRYC_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// `FAIRYC_SHARED`, or `../shared` beside the workspace.
pub fn shared_path() -> PathBuf {
    std::env::var_os("FAIRYC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
}

/// Whether missing assets fail tests (`FAIRYC_REQUIRE_ASSETS` set, not `0`).
pub fn assets_required() -> bool {
    std::env::var_os(REQUIRE_ASSETS).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `path` if it exists. If not, `test` cannot run: with `required` it
/// panics, naming the asset; otherwise it prints `SKIPPED` and returns
/// `None`, and the test returns without checking anything.
pub fn asset_or_skip(test: &str, what: &str, path: PathBuf, required: bool) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{test}: needs {what} at {} (`make model` fetches the model; FAIRYC_MODEL and FAIRYC_SHARED override the paths)",
        path.display()
    );
    if required {
        panic!("{message}; {REQUIRE_ASSETS} is set, so a missing asset is an error");
    }
    // Straight to the terminal: `eprintln!` would be captured and hidden.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {message}");
    None
}

/// The SmolLM2 model, or `None` after saying `test` is skipped.
pub fn smollm2_or_skip(test: &str) -> Option<PathBuf> {
    asset_or_skip(test, "the SmolLM2 model", smollm2_path(), assets_required())
}

/// `../shared/<sub>`, or `None` after saying `test` is skipped.
pub fn shared_or_skip(test: &str, sub: &str) -> Option<PathBuf> {
    asset_or_skip(
        test,
        &format!("../shared/{sub}"),
        shared_path().join(sub),
        assets_required(),
    )
}
