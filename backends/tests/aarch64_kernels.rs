//! The aarch64 look-up-table kernels of both generators (NEON `tbl`),
//! linked into a C harness with Debian's aarch64 cross toolchain and run
//! under qemu-aarch64, against the host's kernel on the same arguments:
//! the same integer sums and float operations in the same order, so the
//! outputs are equal bit for bit. Skipped (SKIPPED) where the cross tools
//! are missing, unless FAIRYC_REQUIRE_ASSETS=1 (as in `make test`, whose
//! set-up installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use fairyc_backends::cpu::kernel::LutKernel;
use fairyc_backends::cpu::{cranelift, llvm, CodeGen};

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairyc-aarch64-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cranelift's machine code as an assembly file defining `symbol`.
fn assembly(code: &[u8], symbol: &str, path: &Path) {
    let mut s =
        format!(".text\n.global {symbol}\n.type {symbol}, %function\n.p2align 4\n{symbol}:\n");
    for chunk in code.chunks(16) {
        let bytes: Vec<String> = chunk.iter().map(|b| format!("0x{b:02x}")).collect();
        s += &format!(".byte {}\n", bytes.join(","));
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn aarch64_kernels_match_the_host_kernel_under_qemu() {
    let (gcc, qemu) = ("aarch64-linux-gnu-gcc", "qemu-aarch64");
    if !tool(gcc) || !tool(qemu) {
        assert!(
            std::env::var_os("FAIRYC_REQUIRE_ASSETS").is_none(),
            "{gcc} and {qemu} are needed (scripts/install-packages.sh installs them)"
        );
        eprintln!("SKIPPED: no {gcc} or {qemu}");
        return;
    }
    if !cranelift::host_supported() {
        eprintln!("SKIPPED: the host kernel needs x86-64 with SSSE3");
        return;
    }
    let desc = LutKernel::new(3, 8, 16);
    let (groups, blocks_per_group) = (2u64, 3u64);
    let blocks = (groups * blocks_per_group) as usize;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Table entries are sums of two integers of at most 63, stored +128.
    let tables: Vec<u8> = (0..blocks * desc.block_pairs * 64)
        .map(|_| (2 + next() % 253) as u8)
        .collect();
    let mut float = |scale: f32| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
    let act: Vec<f32> = (0..blocks).map(|_| float(0.1).abs()).collect();
    let scales: Vec<f32> = (0..groups as usize * desc.scales_per_group())
        .map(|_| float(2.0))
        .collect();
    let out: Vec<f32> = (0..2 * desc.rows).map(|_| float(1.0)).collect();
    let codes: Vec<u8> = (0..blocks * desc.codes_per_block())
        .map(|_| next() as u8)
        .collect();

    let host = CodeGen::Cranelift.kernel(desc).unwrap();
    let mut want = out.clone();
    // SAFETY: the buffers have the sizes the calling convention names.
    unsafe {
        host(
            tables.as_ptr(),
            act.as_ptr(),
            codes.as_ptr(),
            scales.as_ptr(),
            want.as_mut_ptr(),
            groups,
            blocks_per_group,
        )
    };

    let dir = scratch();
    std::fs::write(
        dir.join("llvm.o"),
        llvm::aarch64_object(desc, "lut_llvm").unwrap(),
    )
    .unwrap();
    assembly(
        &cranelift::aarch64_code(desc).unwrap(),
        "lut_cranelift",
        &dir.join("cranelift.s"),
    );
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aarch64/harness.c");
    run(Command::new(gcc)
        .args(["-O1", "-static", "-o"])
        .arg(dir.join("harness"))
        .arg(harness)
        .arg(dir.join("llvm.o"))
        .arg(dir.join("cranelift.s")));

    let floats = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let mut input = Vec::new();
    let (act_b, scales_b, out_b) = (floats(&act), floats(&scales), floats(&out));
    for v in [
        groups,
        blocks_per_group,
        tables.len() as u64,
        act_b.len() as u64,
        codes.len() as u64,
        scales_b.len() as u64,
        out_b.len() as u64,
    ] {
        input.extend(v.to_le_bytes());
    }
    for part in [&tables, &act_b, &codes, &scales_b, &out_b] {
        input.extend_from_slice(part);
    }
    std::fs::write(dir.join("in.bin"), input).unwrap();
    run(Command::new(qemu)
        .arg(dir.join("harness"))
        .arg(dir.join("in.bin"))
        .arg(dir.join("out.bin")));
    let got: Vec<f32> = std::fs::read(dir.join("out.bin"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got.len(), 2 * want.len());
    let (from_llvm, from_cranelift) = got.split_at(want.len());
    assert!(
        want.iter().zip(&out).any(|(w, o)| w != o),
        "the kernel added nothing"
    );
    assert_eq!(from_llvm, want.as_slice(), "LLVM's aarch64 kernel");
    assert_eq!(
        from_cranelift,
        want.as_slice(),
        "Cranelift's aarch64 kernel"
    );
}
