//! The rule for tests that need the model or ../shared
//! (tests/common/assets.rs): skipped and saying so outside `make test`,
//! failing inside it.

mod common;

use std::path::PathBuf;

use common::assets::{asset_or_skip, workspace, REQUIRE_ASSETS};

#[test]
fn a_missing_asset_is_skipped_or_fails_as_make_test_asks() {
    let missing = PathBuf::from("/nonexistent/fairyc-asset.gguf");
    assert_eq!(asset_or_skip("t", "an asset", missing.clone(), false), None);
    let failed = std::panic::catch_unwind(|| asset_or_skip("t", "an asset", missing, true));
    assert!(
        failed.is_err(),
        "a required asset that is missing must fail"
    );
    let present = workspace().join("Cargo.toml");
    assert_eq!(
        asset_or_skip("t", "an asset", present.clone(), true),
        Some(present)
    );
    // `make test` requires them.
    let makefile = std::fs::read_to_string(workspace().join("Makefile")).unwrap();
    assert!(
        makefile.contains(&format!("{REQUIRE_ASSETS}=1 cargo test")),
        "the Makefile's test target must set {REQUIRE_ASSETS}=1"
    );
}
