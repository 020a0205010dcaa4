//! The Cranelift generator: emits a [`LutKernel`] as CLIF and JIT-compiles
//! it for the host (x86-64 with SSSE3: `pshufb` on 128-bit vectors).
//!
//! Loop nest: groups, then blocks of a group, then stages (unrolled), then
//! the block's pairs two at a time (one 16-byte load of codes gives both
//! nibbles). Per looked-up vector `l` (16 bytes, one per row, entries
//! `+128`) viewed as eight 16-bit lanes, the kernel adds `l` to `S` and
//! `l >> 8` to `H`: `H` sums the high bytes (odd rows) and `S − (H << 8)`
//! the low ones (even rows), both below 2¹⁶ for at most 128 pairs, so a
//! look-up costs three vector operations and no widening. At the end of a
//! block the sums lose their offsets, become f32 and are scaled by the
//! block's activation step and the stage's factors into `out`.

use cranelift_codegen::ir::{
    types, AbiParam, Endianness, InstBuilder, MemFlagsData, Type, UserFuncName, Value,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use super::kernel::{LutKernel, ENTRY_OFFSET, PAIR_TABLE_BYTES};
use super::KernelFn;

/// Rows per tile: Cranelift's x86-64 vectors are 128 bits, 16 bytes.
pub const ROWS: usize = 16;

/// Whether the host runs the generated kernels (x86-64 with SSSE3).
pub fn host_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("ssse3");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Compiles the kernel of `desc` ([`super::CodeGen::kernel`] keeps them).
pub(super) fn compile(desc: LutKernel) -> Result<KernelFn, String> {
    if desc.rows != ROWS {
        return Err(format!(
            "Cranelift emits tiles of {ROWS} rows, not {}",
            desc.rows
        ));
    }
    if !host_supported() {
        return Err("the Cranelift kernels need an x86-64 host with SSSE3".into());
    }
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
    let isa = cranelift_native::builder()?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())?;
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut ctx = module.make_context();
    for _ in 0..7 {
        ctx.func.signature.params.push(AbiParam::new(types::I64));
    }
    let id = module
        .declare_function("quant_linear_lut", Linkage::Local, &ctx.func.signature)
        .map_err(|e| e.to_string())?;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    let target = module.target_config();
    emit(
        desc,
        FunctionBuilder::new(&mut ctx.func, &mut fctx),
        target,
        Shuffle::Pshufb,
    );
    module
        .define_function(id, &mut ctx)
        .map_err(|e| format!("{e:?}"))?;
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let code = module.get_finalized_function(id);
    // The code must outlive every caller: the module is never freed.
    std::mem::forget(module);
    // SAFETY: `emit` built a function of exactly `KernelFn`'s signature.
    Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
}

/// A counted loop `for i in 0..count` whose body `body` emits; the loop's
/// variables are Cranelift variables, so the body may redefine them.
fn counted_loop(b: &mut FunctionBuilder, count: Value, body: impl FnOnce(&mut FunctionBuilder)) {
    let i = b.declare_var(types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(i, zero);
    let (head, body_block, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().jump(head, &[]);
    b.switch_to_block(head);
    let iv = b.use_var(i);
    let more = b.ins().icmp(
        cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan,
        iv,
        count,
    );
    b.ins().brif(more, body_block, &[], exit, &[]);
    b.switch_to_block(body_block);
    body(b);
    let iv = b.use_var(i);
    let next = b.ins().iadd_imm_s(iv, 1);
    b.def_var(i, next);
    b.ins().jump(head, &[]);
    b.switch_to_block(exit);
}

fn var(b: &mut FunctionBuilder, ty: Type, init: Value) -> Variable {
    let v = b.declare_var(ty);
    b.def_var(v, init);
    v
}

fn advance(b: &mut FunctionBuilder, v: Variable, bytes: usize) {
    let p = b.use_var(v);
    let next = b.ins().iadd_imm_s(p, bytes as i64);
    b.def_var(v, next);
}

/// The byte shuffle a target looks tables up with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shuffle {
    /// x86's `pshufb`.
    Pshufb,
    /// Cranelift's portable `swizzle` (aarch64's `tbl`; indices are
    /// nibbles, below 16, so its zeroing of larger ones never applies).
    Swizzle,
}

/// The kernel of `desc` as aarch64 machine code (NEON `tbl` look-ups, the
/// AAPCS64 calling convention), position-independent and without
/// relocations: for linking into a harness run under emulation.
pub fn aarch64_code(desc: LutKernel) -> Result<Vec<u8>, String> {
    if desc.rows != ROWS {
        return Err(format!(
            "Cranelift emits tiles of {ROWS} rows, not {}",
            desc.rows
        ));
    }
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
    let isa = cranelift_codegen::isa::lookup_by_name("aarch64")
        .map_err(|e| e.to_string())?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())?;
    let mut ctx = cranelift_codegen::Context::new();
    ctx.func.signature.call_conv = isa.default_call_conv();
    for _ in 0..7 {
        ctx.func.signature.params.push(AbiParam::new(types::I64));
    }
    let mut fctx = FunctionBuilderContext::new();
    emit(
        desc,
        FunctionBuilder::new(&mut ctx.func, &mut fctx),
        isa.frontend_config(),
        Shuffle::Swizzle,
    );
    let code = ctx
        .compile(&*isa, &mut Default::default())
        .map_err(|e| format!("{:?}", e.inner))?;
    if !code.buffer.relocs().is_empty() {
        return Err("the aarch64 kernel has relocations".into());
    }
    Ok(code.code_buffer().to_vec())
}

fn emit(desc: LutKernel, mut b: FunctionBuilder, target: TargetFrontendConfig, shuffle: Shuffle) {
    let mem = MemFlagsData::new().with_notrap();
    let lanes = MemFlagsData::new().with_endianness(Endianness::Little);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let p = b.block_params(entry).to_vec();
    let (tables, act, codes, scales, out) = (
        var(&mut b, types::I64, p[0]),
        var(&mut b, types::I64, p[1]),
        var(&mut b, types::I64, p[2]),
        var(&mut b, types::I64, p[3]),
        p[4],
    );
    let (groups, blocks_per_group) = (p[5], p[6]);
    let nibble = b.ins().iconst(types::I8, 0x0f);
    let nibble = b.ins().splat(types::I8X16, nibble);
    let offset = b
        .ins()
        .iconst(types::I16, (ENTRY_OFFSET * desc.block_pairs as i32) as i64);
    let offset = b.ins().splat(types::I16X8, offset);
    let zero16 = b.ins().iconst(types::I16, 0);
    let zero16 = b.ins().splat(types::I16X8, zero16);
    let block_table_bytes = desc.block_pairs * PAIR_TABLE_BYTES;

    counted_loop(&mut b, groups, |b| {
        counted_loop(b, blocks_per_group, |b| {
            let a = b.use_var(act);
            let a = b.ins().load(types::F32, mem, a, 0);
            let a = b.ins().splat(types::F32X4, a);
            for stage in 0..desc.stages {
                // S and H of the sums A, B, C, D.
                let sums: Vec<Variable> = (0..8).map(|_| var(b, types::I16X8, zero16)).collect();
                let block_tables = b.use_var(tables);
                let t = var(b, types::I64, block_tables);
                let half_pairs = b.ins().iconst(types::I64, (desc.block_pairs / 2) as i64);
                counted_loop(b, half_pairs, |b| {
                    let c = b.use_var(codes);
                    let v = b.ins().load(types::I8X16, mem, c, 0);
                    let lo = b.ins().band(v, nibble);
                    let v16 = b.ins().bitcast(types::I16X8, lanes, v);
                    let shifted = b.ins().ushr_imm_u(v16, 4);
                    let shifted = b.ins().bitcast(types::I8X16, lanes, shifted);
                    let hi = b.ins().band(shifted, nibble);
                    let tp = b.use_var(t);
                    for (pair, idx) in [lo, hi].into_iter().enumerate() {
                        for sum in 0..4 {
                            let at = (pair * PAIR_TABLE_BYTES + sum * 16) as i32;
                            let table = b.ins().load(types::I8X16, mem, tp, at);
                            let looked = match shuffle {
                                Shuffle::Pshufb => b.ins().x86_pshufb(table, idx),
                                Shuffle::Swizzle => b.ins().swizzle(table, idx),
                            };
                            let l = b.ins().bitcast(types::I16X8, lanes, looked);
                            let high = b.ins().ushr_imm_u(l, 8);
                            let (s, h) = (b.use_var(sums[2 * sum]), b.use_var(sums[2 * sum + 1]));
                            let s = b.ins().iadd(s, l);
                            let h = b.ins().iadd(h, high);
                            b.def_var(sums[2 * sum], s);
                            b.def_var(sums[2 * sum + 1], h);
                        }
                    }
                    advance(b, codes, ROWS);
                    advance(b, t, 2 * PAIR_TABLE_BYTES);
                });
                // Integer sums of the block, four f32x4 (lane order) each.
                let mut f = Vec::with_capacity(4);
                for sum in 0..4 {
                    let (s, h) = (b.use_var(sums[2 * sum]), b.use_var(sums[2 * sum + 1]));
                    let h8 = b.ins().ishl_imm_u(h, 8);
                    let even = b.ins().isub(s, h8);
                    let even = b.ins().isub(even, offset);
                    let odd = b.ins().isub(h, offset);
                    let mut v = Vec::with_capacity(4);
                    for x in [even, odd] {
                        for wide in [b.ins().swiden_low(x), b.ins().swiden_high(x)] {
                            v.push(b.ins().fcvt_from_sint(types::F32X4, wide));
                        }
                    }
                    f.push(v);
                }
                let sp = b.use_var(scales);
                let base = (stage * 4 * ROWS * 4) as i32;
                // Real part from A and B, imaginary part from C and D.
                for (part, sums) in f.chunks(2).enumerate() {
                    for (q, (f0, f1)) in sums[0].iter().zip(&sums[1]).enumerate() {
                        let factor = |b: &mut FunctionBuilder, sum: usize| {
                            let at = base + ((sum * ROWS + 4 * q) * 4) as i32;
                            b.ins().load(types::F32X4, mem, sp, at)
                        };
                        let (s0, s1) = (factor(b, 2 * part), factor(b, 2 * part + 1));
                        let x0 = b.ins().fmul(s0, *f0);
                        let x1 = b.ins().fmul(s1, *f1);
                        let x = b.ins().fadd(x0, x1);
                        let x = b.ins().fmul(x, a);
                        let at = ((part * ROWS + 4 * q) * 4) as i32;
                        let y = b.ins().load(types::F32X4, mem, out, at);
                        let y = b.ins().fadd(y, x);
                        b.ins().store(mem, y, out, at);
                    }
                }
            }
            advance(b, tables, block_table_bytes);
            advance(b, act, 4);
        });
        advance(b, scales, desc.scales_per_group() * 4);
    });
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(target);
}
