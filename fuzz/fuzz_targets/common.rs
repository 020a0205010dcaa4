//! A scratch file per fuzzing process: the readers take paths.

use std::path::PathBuf;

/// Writes `data` to this process's scratch file named `name` and returns
/// its path.
pub fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairyc-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the temp folder is writable");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("the scratch file is writable");
    path
}
