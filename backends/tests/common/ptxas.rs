//! NVIDIA's PTX assembler run on generated PTX, on a machine without a GPU:
//! it rejects what the driver's JIT would reject (an instruction the
//! target lacks, a malformed operand) and reports each kernel's registers
//! and spills. `make test`'s set-up fetches it (scripts/fetch-ptxas.sh);
//! `FAIRYC_PTXAS` names another. Where it is missing the caller skips
//! (SKIPPED), unless FAIRYC_REQUIRE_ASSETS is set, as in `make test`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What ptxas reported of one kernel (`-v`).
#[derive(Debug, Default)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    /// Local memory per thread, where spilled registers go.
    pub stack_bytes: u32,
    /// Bytes of spill stores (spill loads are not kept).
    pub spill_bytes: u32,
}

fn ptxas() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAIRYC_PTXAS") {
        return Some(path.into());
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The workspace's root, from its own tests or from a member's.
    [manifest, manifest.parent()?]
        .iter()
        .map(|dir| dir.join("models/tools/ptxas"))
        .find(|path| path.is_file())
}

/// The number before `unit` in a ptxas line (`26 registers`).
fn count_before(line: &str, unit: &str) -> Option<u32> {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let at = words.windows(2).position(|w| w[1] == unit)?;
    words[at].parse().ok()
}

/// Assembles `ptx` for sm_90; `None` where no ptxas is found (the caller
/// prints SKIPPED). Panics with ptxas's messages if it rejects the PTX.
pub fn assemble_for_sm_90(ptx: &str, label: &str) -> Option<Vec<KernelReport>> {
    let Some(ptxas) = ptxas() else {
        assert!(
            std::env::var_os("FAIRYC_REQUIRE_ASSETS").is_none(),
            "ptxas is needed (scripts/fetch-ptxas.sh fetches it into models/tools/)"
        );
        eprintln!("SKIPPED: no ptxas (scripts/fetch-ptxas.sh)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("fairyc-ptxas-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join(format!("{label}.ptx"));
    std::fs::write(&source, ptx).unwrap();
    let out = Command::new(&ptxas)
        .args(["-arch=sm_90", "-v", "-o"])
        .arg(dir.join(format!("{label}.cubin")))
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", ptxas.display()));
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "ptxas rejected {label}:\n{log}");
    // Each entry's figures follow "Function properties for NAME"; a
    // function it calls would have its own.
    let mut kernels: Vec<KernelReport> = Vec::new();
    let mut current: Option<usize> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(KernelReport {
                name,
                ..KernelReport::default()
            });
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            current = kernels.iter().position(|k| k.name == name.trim());
        } else if let Some(kernel) = current.map(|i| &mut kernels[i]) {
            if line.contains("bytes stack frame") {
                kernel.stack_bytes = count_before(line, "bytes").unwrap_or(0);
                let stores = line.split("stack frame,").nth(1).unwrap_or_default();
                kernel.spill_bytes = count_before(stores, "bytes").unwrap_or(0);
            } else if let Some(registers) = count_before(line, "registers") {
                kernel.registers = registers;
            }
        }
    }
    Some(kernels)
}
