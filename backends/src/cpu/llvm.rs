//! The LLVM generator: emits a [`LutKernel`] as LLVM IR (inkwell, LLVM 19)
//! and JIT-compiles it for the host CPU, with the widest byte shuffle the
//! host has: `vpshufb` on 512-bit vectors (AVX-512BW, 64 rows a tile), on
//! 256-bit vectors (AVX2, 32 rows), or `pshufb` on 128-bit ones (SSSE3, 16
//! rows). The 16-byte tables are repeated into every 128-bit lane, since
//! the shuffle looks up within lanes.
//!
//! The loop nest and the sums are [`super::cranelift`]'s: per looked-up
//! vector `l` seen as 16-bit lanes, `S += l` and `H += l >> 8`; at the end
//! of a block `H` sums the odd rows and `S − (H << 8)` the even ones.

use inkwell::attributes::AttributeLoc;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::types::{FloatType, IntType, VectorType};
use inkwell::values::{BasicValue, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::{AddressSpace, IntPredicate, OptimizationLevel};

use super::kernel::{LutKernel, ENTRY_OFFSET, PAIR_TABLE_BYTES};
use super::KernelFn;

/// Rows per tile on this host: the byte width of its widest shuffle.
pub fn host_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return 64;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return 32;
        }
    }
    16
}

/// Whether the host runs the generated kernels (x86-64 with SSSE3).
pub fn host_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("ssse3");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Where the kernel runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// This x86-64 host (JIT), its CPU's features.
    Host,
    /// aarch64 with NEON (an object file for a harness).
    Aarch64,
}

/// The byte-shuffle intrinsic of a vector of `rows` bytes on `isa`.
fn shuffle_name(isa: Isa, rows: usize) -> Result<&'static str, String> {
    Ok(match (isa, rows) {
        (Isa::Host, 16) => "llvm.x86.ssse3.pshuf.b.128",
        (Isa::Host, 32) => "llvm.x86.avx2.pshuf.b",
        (Isa::Host, 64) => "llvm.x86.avx512.pshuf.b.512",
        (Isa::Aarch64, 16) => "llvm.aarch64.neon.tbl1",
        _ => return Err(format!("no byte shuffle of {rows} bytes")),
    })
}

/// The kernel of `desc` (16-row tiles: NEON `tbl` look-ups) as an aarch64
/// ELF object defining the C function `symbol`, for linking into a
/// harness run under emulation.
pub fn aarch64_object(desc: LutKernel, symbol: &str) -> Result<Vec<u8>, String> {
    Target::initialize_aarch64(&InitializationConfig::default());
    let triple = TargetTriple::create("aarch64-unknown-linux-gnu");
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    let machine = target
        .create_target_machine(
            &triple,
            "generic",
            "+neon",
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or("LLVM could not create an aarch64 target machine")?;
    let context: &'static Context = Box::leak(Box::new(Context::create()));
    let module = context.create_module("fairyc_lut");
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let gen = Gen {
        context,
        builder: context.create_builder(),
        module: &module,
    };
    gen.emit(desc, symbol, Isa::Aarch64)?;
    module.verify().map_err(|e| e.to_string())?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| e.to_string())?;
    let object = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| e.to_string())?;
    Ok(object.as_slice().to_vec())
}

const NAME: &str = "quant_linear_lut";

/// Compiles the kernel of `desc` ([`super::CodeGen::kernel`] keeps them).
pub(super) fn compile(desc: LutKernel) -> Result<KernelFn, String> {
    if !host_supported() {
        return Err("the LLVM kernels need an x86-64 host with SSSE3".into());
    }
    if desc.rows > host_rows() {
        return Err(format!(
            "this host has no byte shuffle of {} bytes",
            desc.rows
        ));
    }
    Target::initialize_native(&InitializationConfig::default())?;
    // The engine and its module live as long as the process: the kernel's
    // code is theirs.
    let context: &'static Context = Box::leak(Box::new(Context::create()));
    let module = context.create_module("fairyc_lut");
    let gen = Gen {
        context,
        builder: context.create_builder(),
        module: &module,
    };
    gen.emit(desc, NAME, Isa::Host)?;
    module.verify().map_err(|e| e.to_string())?;
    let engine: ExecutionEngine<'static> = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| e.to_string())?;
    let address = engine
        .get_function_address(NAME)
        .map_err(|e| e.to_string())?;
    std::mem::forget(engine);
    std::mem::forget(module);
    // SAFETY: `emit` built a function of exactly `KernelFn`'s signature
    // (the C calling convention, seven 64-bit arguments).
    Ok(unsafe { std::mem::transmute::<usize, KernelFn>(address) })
}

struct Gen<'a> {
    context: &'static Context,
    builder: Builder<'static>,
    module: &'a Module<'static>,
}

type Built<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("LLVM: {e}")
}

impl Gen<'_> {
    fn i8(&self) -> IntType<'static> {
        self.context.i8_type()
    }
    fn i16(&self) -> IntType<'static> {
        self.context.i16_type()
    }
    fn i64(&self) -> IntType<'static> {
        self.context.i64_type()
    }
    fn f32(&self) -> FloatType<'static> {
        self.context.f32_type()
    }

    fn at(
        &self,
        base: PointerValue<'static>,
        bytes: IntValue<'static>,
    ) -> Built<PointerValue<'static>> {
        // SAFETY (of the IR): offsets stay inside the buffers the calling
        // convention describes.
        unsafe {
            self.builder
                .build_in_bounds_gep(self.i8(), base, &[bytes], "")
        }
        .map_err(err)
    }

    fn const_at(&self, base: PointerValue<'static>, bytes: usize) -> Built<PointerValue<'static>> {
        self.at(base, self.i64().const_int(bytes as u64, false))
    }

    /// An unaligned vector load.
    fn load(
        &self,
        ty: VectorType<'static>,
        ptr: PointerValue<'static>,
    ) -> Built<VectorValue<'static>> {
        let v = self.builder.build_load(ty, ptr, "").map_err(err)?;
        v.as_instruction_value()
            .expect("a load")
            .set_alignment(1)
            .map_err(err)?;
        Ok(v.into_vector_value())
    }

    fn store(&self, ptr: PointerValue<'static>, v: VectorValue<'static>) -> Built<()> {
        self.builder
            .build_store(ptr, v)
            .map_err(err)?
            .set_alignment(1)
            .map_err(err)
    }

    fn splat_int(&self, ty: IntType<'static>, lanes: u32, v: u64) -> VectorValue<'static> {
        VectorType::const_vector(&vec![ty.const_int(v, false); lanes as usize])
    }

    /// A counted loop `for i in 0..count` around `body`; `body` gets the
    /// index.
    fn counted_loop(
        &self,
        f: FunctionValue<'static>,
        count: IntValue<'static>,
        body: impl FnOnce(IntValue<'static>) -> Built<()>,
    ) -> Built<()> {
        let before = self.builder.get_insert_block().expect("positioned");
        let (head, inside, exit) = (
            self.context.append_basic_block(f, "loop"),
            self.context.append_basic_block(f, "body"),
            self.context.append_basic_block(f, "exit"),
        );
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(head);
        let i = self.builder.build_phi(self.i64(), "i").map_err(err)?;
        i.add_incoming(&[(&self.i64().const_zero(), before)]);
        let iv = i.as_basic_value().into_int_value();
        let more = self
            .builder
            .build_int_compare(IntPredicate::ULT, iv, count, "")
            .map_err(err)?;
        self.builder
            .build_conditional_branch(more, inside, exit)
            .map_err(err)?;
        self.builder.position_at_end(inside);
        body(iv)?;
        let next = self
            .builder
            .build_int_add(iv, self.i64().const_int(1, false), "")
            .map_err(err)?;
        let latch = self.builder.get_insert_block().expect("positioned");
        i.add_incoming(&[(&next, latch)]);
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(exit);
        Ok(())
    }

    fn emit(&self, desc: LutKernel, name: &str, isa: Isa) -> Built<()> {
        let rows = desc.rows as u32;
        let half = rows / 2;
        let ptr = self.context.ptr_type(AddressSpace::default());
        let i64t = self.i64();
        let fn_type = self.context.void_type().fn_type(
            &[
                ptr.into(),
                ptr.into(),
                ptr.into(),
                ptr.into(),
                ptr.into(),
                i64t.into(),
                i64t.into(),
            ],
            false,
        );
        let f = self.module.add_function(name, fn_type, None);
        if isa == Isa::Host {
            // Code for this CPU: the JIT otherwise targets a generic x86-64.
            let cpu = TargetMachine::get_host_cpu_name().to_string();
            let features = TargetMachine::get_host_cpu_features().to_string();
            for (key, value) in [
                ("target-cpu", cpu.as_str()),
                ("target-features", features.as_str()),
            ] {
                f.add_attribute(
                    AttributeLoc::Function,
                    self.context.create_string_attribute(key, value),
                );
            }
        }
        let entry = self.context.append_basic_block(f, "entry");
        self.builder.position_at_end(entry);
        let param = |k: u32| f.get_nth_param(k).expect("declared");
        let (tables0, act0, codes0, scales0, out) = (
            param(0).into_pointer_value(),
            param(1).into_pointer_value(),
            param(2).into_pointer_value(),
            param(3).into_pointer_value(),
            param(4).into_pointer_value(),
        );
        let (groups, blocks_per_group) = (param(5).into_int_value(), param(6).into_int_value());
        let bytes = self.i8().vec_type(rows);
        let table_type = self.i8().vec_type(16);
        let words = self.i16().vec_type(half);
        let floats = self.f32().vec_type(half);
        // aarch64's tbl is overloaded on its vector type; x86's are not.
        let overloads = match isa {
            Isa::Host => vec![],
            Isa::Aarch64 => vec![bytes.into()],
        };
        let shuffle = Intrinsic::find(shuffle_name(isa, desc.rows)?)
            .and_then(|i| i.get_declaration(self.module, &overloads))
            .ok_or("LLVM 19 lacks the byte shuffle intrinsic")?;
        // Repeats a 16-byte table into every 128-bit lane.
        let repeat = VectorType::const_vector(
            &(0..rows)
                .map(|b| self.context.i32_type().const_int((b % 16) as u64, false))
                .collect::<Vec<_>>(),
        );
        let nibble = self.splat_int(self.i8(), rows, 0x0f);
        let four = self.splat_int(self.i8(), rows, 4);
        let eight = self.splat_int(self.i16(), half, 8);
        let offset = self.splat_int(
            self.i16(),
            half,
            (ENTRY_OFFSET as usize * desc.block_pairs) as u64,
        );
        let block_table_bytes = desc.block_pairs * PAIR_TABLE_BYTES;
        let codes_per_block = desc.codes_per_block() as u64;
        let scales_per_group = (desc.scales_per_group() * 4) as u64;
        let mul = |a: IntValue<'static>, k: u64| {
            self.builder
                .build_int_mul(a, self.i64().const_int(k, false), "")
                .map_err(err)
        };
        let add = |a: IntValue<'static>, b: IntValue<'static>| {
            self.builder.build_int_add(a, b, "").map_err(err)
        };

        self.counted_loop(f, groups, |g| {
            let scales = self.at(scales0, mul(g, scales_per_group)?)?;
            self.counted_loop(f, blocks_per_group, |k| {
                let first = self
                    .builder
                    .build_int_mul(g, blocks_per_group, "")
                    .map_err(err)?;
                let block = add(first, k)?;
                let tables = self.at(tables0, mul(block, block_table_bytes as u64)?)?;
                let step = self
                    .builder
                    .build_load(self.f32(), self.at(act0, mul(block, 4)?)?, "")
                    .map_err(err)?
                    .into_float_value();
                let step = self
                    .builder
                    .build_insert_element(floats.get_undef(), step, self.i64().const_zero(), "")
                    .map_err(err)?;
                let step = self
                    .builder
                    .build_shuffle_vector(
                        step,
                        floats.get_undef(),
                        VectorType::const_vector(&vec![
                            self.context.i32_type().const_zero();
                            half as usize
                        ]),
                        "",
                    )
                    .map_err(err)?;
                let codes = self.at(codes0, mul(block, codes_per_block)?)?;
                for stage in 0..desc.stages {
                    // S and H of the sums A, B, C, D; the block's pairs are
                    // unrolled (at most 32), so the sums stay in registers.
                    let pairs = desc.block_pairs / 2;
                    let stage_codes = self.const_at(codes, stage * pairs * desc.rows)?;
                    let mut sums = [words.const_zero(); 8];
                    for p in 0..pairs {
                        let v = self.load(bytes, self.const_at(stage_codes, p * desc.rows)?)?;
                        let lo = self.builder.build_and(v, nibble, "").map_err(err)?;
                        let hi = self
                            .builder
                            .build_right_shift(v, four, false, "")
                            .map_err(err)?;
                        let hi = self.builder.build_and(hi, nibble, "").map_err(err)?;
                        for (pair, idx) in [lo, hi].into_iter().enumerate() {
                            for sum in 0..4 {
                                let at = (2 * p + pair) * PAIR_TABLE_BYTES + sum * 16;
                                let table = self.load(table_type, self.const_at(tables, at)?)?;
                                let table = self
                                    .builder
                                    .build_shuffle_vector(table, table_type.get_undef(), repeat, "")
                                    .map_err(err)?;
                                let looked = self
                                    .builder
                                    .build_call(shuffle, &[table.into(), idx.into()], "")
                                    .map_err(err)?;
                                let looked = match looked.try_as_basic_value() {
                                    inkwell::values::ValueKind::Basic(v) => v.into_vector_value(),
                                    inkwell::values::ValueKind::Instruction(_) => {
                                        return Err("the shuffle returns nothing".into())
                                    }
                                };
                                let l = self
                                    .builder
                                    .build_bit_cast(looked, words, "")
                                    .map_err(err)?
                                    .into_vector_value();
                                let high = self
                                    .builder
                                    .build_right_shift(l, eight, false, "")
                                    .map_err(err)?;
                                sums[2 * sum] = self
                                    .builder
                                    .build_int_add(sums[2 * sum], l, "")
                                    .map_err(err)?;
                                sums[2 * sum + 1] = self
                                    .builder
                                    .build_int_add(sums[2 * sum + 1], high, "")
                                    .map_err(err)?;
                            }
                        }
                    }
                    // Integer sums of the block as f32: even rows, odd rows.
                    let mut f32s = Vec::with_capacity(4);
                    for sum in 0..4 {
                        let (s, h) = (sums[2 * sum], sums[2 * sum + 1]);
                        let even = self
                            .builder
                            .build_int_sub(
                                s,
                                self.builder.build_left_shift(h, eight, "").map_err(err)?,
                                "",
                            )
                            .map_err(err)?;
                        let even = self.builder.build_int_sub(even, offset, "").map_err(err)?;
                        let odd = self.builder.build_int_sub(h, offset, "").map_err(err)?;
                        let convert = |x: VectorValue<'static>| {
                            self.builder
                                .build_signed_int_to_float(x, floats, "")
                                .map_err(err)
                        };
                        f32s.push([convert(even)?, convert(odd)?]);
                    }
                    let base = stage * 4 * desc.rows * 4;
                    // Real part from A and B, imaginary part from C and D.
                    for part in 0..2 {
                        for (h, lanes) in [0usize, half as usize].into_iter().enumerate() {
                            let factor = |sum: usize| {
                                self.load(
                                    floats,
                                    self.const_at(scales, base + (sum * desc.rows + lanes) * 4)?,
                                )
                            };
                            let x0 = self
                                .builder
                                .build_float_mul(factor(2 * part)?, f32s[2 * part][h], "")
                                .map_err(err)?;
                            let x1 = self
                                .builder
                                .build_float_mul(factor(2 * part + 1)?, f32s[2 * part + 1][h], "")
                                .map_err(err)?;
                            let x = self.builder.build_float_add(x0, x1, "").map_err(err)?;
                            let x = self.builder.build_float_mul(x, step, "").map_err(err)?;
                            let target = self.const_at(out, (part * desc.rows + lanes) * 4)?;
                            let y = self.load(floats, target)?;
                            self.store(
                                target,
                                self.builder.build_float_add(y, x, "").map_err(err)?,
                            )?;
                        }
                    }
                }
                Ok(())
            })
        })?;
        self.builder.build_return(None).map_err(err)?;
        Ok(())
    }
}
