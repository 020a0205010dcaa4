//! PTX for the CUDA backend, generated through LLVM's NVPTX target.
//!
//! Each [`Kernel`] is one specialised kernel: an elementwise expression
//! over broadcast operands, a row reduction, a gather, attention. They are
//! emitted as LLVM IR with inkwell, optimised at `O3` and printed as PTX
//! for `sm_90`; the driver compiles that PTX when the module loads, so the
//! machine that generates it needs no CUDA toolkit.
//!
//! LLVM 19 turns an intrinsic name it does not know into a call to an
//! undefined external function without complaint, so every `llvm.nvvm.*`
//! name goes through [`Gen::intrinsic`], which fails on an unknown one.
//! Transcendentals use the PTX approximations (`ex2.approx`,
//! `sin.approx`, `cos.approx`): LLVM 19 cannot lower `llvm.exp.f32` or
//! `llvm.sin.f32` for NVPTX without libdevice.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::types::{BasicMetadataTypeEnum, BasicType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
    ValueKind,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate, OptimizationLevel};

use fairyc_ir::{RopeLayout, UnaryFn};

/// The GPU the PTX targets (the H100 and H200).
pub const SM: &str = "sm_90";
/// Threads per block of the row kernels (a whole number of warps).
pub const ROW_THREADS: u32 = 256;
/// Threads per block of the elementwise kernels.
pub const MAP_THREADS: u32 = 256;
/// Threads per block of the attention kernel.
pub const ATTENTION_THREADS: u32 = 128;

/// One elementwise operation of an [`Expr`].
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    Add,
    Sub,
    Mul,
    Div,
    Unary(UnaryFn),
    Silu,
    Scale(f32),
    /// Ignores its operand's value (its shape is the output's).
    Fill(f32),
    Conj,
    CReluSquared,
    /// `max_norm / sqrt(s)` where that is below 1, else 1 (`s` a squared norm).
    ClipFactor(f32),
}

/// An elementwise expression over the kernel's operands.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Operand(usize),
    Apply(MapOp, Vec<Expr>),
}

/// Element types of the data kernels read and write: f32, complex (an
/// interleaved pair of f32), i32, and 2-bit codes packed four to a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    Real,
    Complex,
    Int,
    Code2,
}

/// One kernel to generate.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// `out[i] = expr(operands[k][i mod len_k])`; operand `k` has element
    /// type `operands[k]` (a shorter operand repeats: suffix broadcasting).
    Map {
        expr: Expr,
        operands: Vec<Elem>,
        out: Elem,
    },
    /// RMSNorm of each row (one block a row); complex rows scale real parts
    /// by the first half of the gain and imaginary parts by the second.
    RmsNorm { complex: bool },
    /// Softmax of each row (one block a row).
    Softmax,
    /// `out[t, :] = table[ids[t], :]` (rows of `width` words).
    Embed,
    /// Rotary embedding; angles from a per-pair frequency table in f64.
    Rope { layout: RopeLayout, complex: bool },
    /// Scaled dot-product attention, one block per (query, head); complex
    /// operands are real ones of twice the width (`Re(q·conj k)` is the
    /// real dot product of the interleaved parts).
    Attention,
    /// `dst[r·dst_stride + dst_off + c] = src[r·src_stride + src_off + c]`
    /// on 32-bit words: slices and concatenations.
    Copy2d,
    /// A permutation of axes (up to [`GATHER_RANK`]) on 32-bit words.
    Permute,
    /// `out[r, c] = x[r, index[c]]` on 32-bit words, 0 where `index[c] < 0`:
    /// `pack` and `unpack` (pairings of real channels into complex slots).
    GatherColumns,
    /// `out[c] = Σ_r x[r·cols + c]` on f32 words, one block per column:
    /// `reduce_to` and the sums of the losses.
    ColumnSum,
    /// Per row of logits: `(logsumexp − logit[target], 1)` where the
    /// target is `>= 0`, else `(0, 0)`; one block a row.
    CrossEntropyRows,
    /// `out = sums[0] / sums[1]` (0 when nothing was scored).
    ScoredMean,
    /// `dloss · (softmax(row) − onehot(target)) / scored`; one block a row.
    CrossEntropyGrad,
    /// The gradient of RMSNorm with respect to its input (`gain: false`;
    /// one block a row) or the per-row terms `dy·x·r` of the gain's
    /// gradient (`gain: true`, summed by [`Kernel::ColumnSum`]).
    RmsNormGrad { complex: bool, gain: bool },
    /// `out[ids[t], :] += dy[t, :]` by atomic adds into a zeroed table.
    EmbedGrad,
    /// The gradient of attention with respect to one operand; one block
    /// per (query, head) as the forward pass; K and V accumulate by atomic
    /// adds into a zeroed output.
    AttentionGrad { which: fairyc_ir::AttentionOperand },
    /// The gradient of the real matrix from the gradient `d` of its `U` or
    /// `W` part (the adjoint of the split, eq. 7): each output element is
    /// ±½ of the real or imaginary part of one element of `d`, found
    /// through per-row and per-column pairing tables.
    WidelyLinearGrad { part: fairyc_ir::WlPart },
    /// Fairy2i's linear layer on packed 2-bit codes: `u_stages` stages
    /// applied to `x` and `w_stages` to `conj(x)`, one warp per output
    /// row, the codes decoded in registers.
    QuantLinear { u_stages: usize, w_stages: usize },
}

/// Output rows of [`Kernel::QuantLinear`] per block (one warp each).
pub const QUANT_ROWS_PER_BLOCK: u32 = 8;

/// Ranks [`Kernel::Permute`] handles (a complex tensor adds one).
pub const GATHER_RANK: usize = 8;

impl Kernel {
    /// The kernel's symbol: distinct kernels have distinct names.
    pub fn symbol(&self, index: usize) -> String {
        let base = match self {
            Kernel::Map { .. } => "map",
            Kernel::RmsNorm { complex: false } => "rms_norm",
            Kernel::RmsNorm { complex: true } => "rms_norm_complex",
            Kernel::Softmax => "softmax",
            Kernel::Embed => "embed",
            Kernel::Rope { complex: true, .. } => "rope_complex",
            Kernel::Rope {
                layout: RopeLayout::Interleaved,
                ..
            } => "rope_interleaved",
            Kernel::Rope {
                layout: RopeLayout::HalfSplit,
                ..
            } => "rope_half_split",
            Kernel::Attention => "attention",
            Kernel::Copy2d => "copy2d",
            Kernel::Permute => "permute",
            Kernel::QuantLinear { .. } => "quant_linear",
            Kernel::GatherColumns => "gather_columns",
            Kernel::ColumnSum => "column_sum",
            Kernel::CrossEntropyRows => "cross_entropy_rows",
            Kernel::ScoredMean => "scored_mean",
            Kernel::CrossEntropyGrad => "cross_entropy_grad",
            Kernel::RmsNormGrad { gain: false, .. } => "rms_norm_grad_input",
            Kernel::RmsNormGrad { gain: true, .. } => "rms_norm_grad_gain",
            Kernel::EmbedGrad => "embed_grad",
            Kernel::AttentionGrad { .. } => "attention_grad",
            Kernel::WidelyLinearGrad { .. } => "widely_linear_grad",
        };
        format!("{base}_{index}")
    }
}

/// PTX text of a module holding `kernels`, named by [`Kernel::symbol`] with
/// their position.
pub fn ptx(kernels: &[Kernel]) -> Result<String, String> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let context = Context::create();
    let module = context.create_module("fairyc");
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    let machine = target
        .create_target_machine(
            &triple,
            SM,
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or("LLVM could not create an NVPTX target machine")?;
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let gen = Gen {
        context: &context,
        module,
        builder: context.create_builder(),
    };
    for (i, kernel) in kernels.iter().enumerate() {
        gen.kernel(kernel, &kernel.symbol(i))?;
    }
    gen.module.verify().map_err(|e| e.to_string())?;
    gen.finish(&machine)
}

/// A pointer to global memory (address space 1).
const GLOBAL: u16 = 1;
/// Shared memory (address space 3).
const SHARED: u16 = 3;
/// LLVM's PTX-kernel calling convention.
const PTX_KERNEL: u32 = 71;

struct Gen<'ctx> {
    context: &'ctx Context,
    module: Module<'ctx>,
    builder: Builder<'ctx>,
}

/// A value of an expression: real, complex as (re, im), or i32.
#[derive(Clone, Copy)]
enum Val<'ctx> {
    Real(FloatValue<'ctx>),
    Complex(FloatValue<'ctx>, FloatValue<'ctx>),
    Int(IntValue<'ctx>),
}

type Built<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("LLVM: {e}")
}

impl<'ctx> Gen<'ctx> {
    fn finish(self, machine: &TargetMachine) -> Result<String, String> {
        self.module
            .run_passes("default<O3>", machine, PassBuilderOptions::create())
            .map_err(|e| e.to_string())?;
        let buffer = machine
            .write_to_memory_buffer(&self.module, FileType::Assembly)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buffer.as_slice().to_vec()).map_err(|e| e.to_string())
    }

    fn f32(&self) -> inkwell::types::FloatType<'ctx> {
        self.context.f32_type()
    }
    fn f64(&self) -> inkwell::types::FloatType<'ctx> {
        self.context.f64_type()
    }
    fn i32(&self) -> inkwell::types::IntType<'ctx> {
        self.context.i32_type()
    }
    fn i64(&self) -> inkwell::types::IntType<'ctx> {
        self.context.i64_type()
    }
    fn global_ptr(&self) -> inkwell::types::PointerType<'ctx> {
        self.context.ptr_type(AddressSpace::from(GLOBAL))
    }

    /// Declares a kernel with parameters of the given kinds and positions
    /// the builder at its entry.
    fn declare(&self, name: &str, params: &[Param]) -> FunctionValue<'ctx> {
        let types: Vec<BasicMetadataTypeEnum> = params
            .iter()
            .map(|p| match p {
                Param::Ptr => self.global_ptr().into(),
                Param::I64 => self.i64().into(),
                Param::F32 => self.f32().into(),
            })
            .collect();
        let f =
            self.module
                .add_function(name, self.context.void_type().fn_type(&types, false), None);
        f.set_call_conventions(PTX_KERNEL);
        let entry = self.context.append_basic_block(f, "entry");
        self.builder.position_at_end(entry);
        f
    }

    /// The declaration of an intrinsic that must exist in this LLVM.
    fn intrinsic(
        &self,
        name: &str,
        types: &[inkwell::types::BasicTypeEnum<'ctx>],
    ) -> Built<FunctionValue<'ctx>> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.module, types))
            .ok_or_else(|| format!("LLVM 19 has no intrinsic `{name}`"))
    }

    fn call(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Built<BasicValueEnum<'ctx>> {
        match self
            .builder
            .build_call(f, args, "")
            .map_err(err)?
            .try_as_basic_value()
        {
            ValueKind::Basic(v) => Ok(v),
            ValueKind::Instruction(_) => Err("a void intrinsic used as a value".into()),
        }
    }

    fn call_void(
        &self,
        f: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Built<()> {
        self.builder.build_call(f, args, "").map_err(err)?;
        Ok(())
    }

    /// A special register (`tid.x`, `ctaid.x`, ...) as i64.
    fn sreg(&self, name: &str) -> Built<IntValue<'ctx>> {
        let f = self.intrinsic(&format!("llvm.nvvm.read.ptx.sreg.{name}"), &[])?;
        let v = self.call(f, &[])?.into_int_value();
        self.builder
            .build_int_z_extend(v, self.i64(), name)
            .map_err(err)
    }

    fn param_ptr(&self, f: FunctionValue<'ctx>, k: u32) -> PointerValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_pointer_value()
    }
    fn param_int(&self, f: FunctionValue<'ctx>, k: u32) -> IntValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_int_value()
    }
    fn param_float(&self, f: FunctionValue<'ctx>, k: u32) -> FloatValue<'ctx> {
        f.get_nth_param(k).expect("declared").into_float_value()
    }

    fn gep(
        &self,
        ty: impl BasicType<'ctx>,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Built<PointerValue<'ctx>> {
        // SAFETY (of the IR): callers index within the buffers the host
        // allocated for the launch's sizes.
        unsafe { self.builder.build_in_bounds_gep(ty, ptr, &[index], "") }.map_err(err)
    }

    fn load_f32(&self, ptr: PointerValue<'ctx>, index: IntValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let p = self.gep(self.f32(), ptr, index)?;
        Ok(self
            .builder
            .build_load(self.f32(), p, "")
            .map_err(err)?
            .into_float_value())
    }
    fn store_f32(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: FloatValue<'ctx>,
    ) -> Built<()> {
        let p = self.gep(self.f32(), ptr, index)?;
        self.builder.build_store(p, v).map_err(err)?;
        Ok(())
    }
    fn load_i32(&self, ptr: PointerValue<'ctx>, index: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        let p = self.gep(self.i32(), ptr, index)?;
        Ok(self
            .builder
            .build_load(self.i32(), p, "")
            .map_err(err)?
            .into_int_value())
    }
    fn store_i32(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: IntValue<'ctx>,
    ) -> Built<()> {
        let p = self.gep(self.i32(), ptr, index)?;
        self.builder.build_store(p, v).map_err(err)?;
        Ok(())
    }

    fn int(&self, v: u64) -> IntValue<'ctx> {
        self.i64().const_int(v, false)
    }
    fn float(&self, v: f32) -> FloatValue<'ctx> {
        self.f32().const_float(v as f64)
    }
    fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_add(a, b, "").map_err(err)
    }
    fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_mul(a, b, "").map_err(err)
    }
    fn udiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_unsigned_div(a, b, "").map_err(err)
    }
    fn urem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.builder.build_int_unsigned_rem(a, b, "").map_err(err)
    }
    fn fadd(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_add(a, b, "").map_err(err)
    }
    fn fsub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_sub(a, b, "").map_err(err)
    }
    fn fmul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_mul(a, b, "").map_err(err)
    }
    fn fdiv(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_div(a, b, "").map_err(err)
    }
    fn fneg(&self, a: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder.build_float_neg(a, "").map_err(err)
    }

    /// `e^x` as `2^(x·log2 e)` through `ex2.approx`.
    fn exp(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let ex2 = self.intrinsic("llvm.nvvm.ex2.approx.f", &[])?;
        let scaled = self.fmul(x, self.float(std::f32::consts::LOG2_E))?;
        Ok(self.call(ex2, &[scaled.into()])?.into_float_value())
    }

    fn sqrt(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.sqrt", &[self.f32().into()])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    fn fmax(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.maxnum", &[self.f32().into()])?;
        Ok(self.call(f, &[a.into(), b.into()])?.into_float_value())
    }

    /// Rounds to the nearest bf16 (ties to even) and back.
    fn round_bf16(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let half = self
            .builder
            .build_float_trunc(x, self.context.bf16_type(), "")
            .map_err(err)?;
        self.builder
            .build_float_ext(half, self.f32(), "")
            .map_err(err)
    }

    /// A loop over `i` in `start, start + step, ... < end`; `body` builds the
    /// loop's body at the builder's position.
    fn strided_loop(
        &self,
        f: FunctionValue<'ctx>,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let head = self.context.append_basic_block(f, "loop");
        let inside = self.context.append_basic_block(f, "body");
        let exit = self.context.append_basic_block(f, "exit");
        let before = self.builder.get_insert_block().expect("positioned");
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(head);
        let i = self.builder.build_phi(self.i64(), "i").map_err(err)?;
        i.add_incoming(&[(&start, before)]);
        let iv = i.as_basic_value().into_int_value();
        let more = self
            .builder
            .build_int_compare(IntPredicate::ULT, iv, end, "")
            .map_err(err)?;
        self.builder
            .build_conditional_branch(more, inside, exit)
            .map_err(err)?;
        self.builder.position_at_end(inside);
        body(iv)?;
        let next = self.add(iv, step)?;
        let latch = self.builder.get_insert_block().expect("positioned");
        i.add_incoming(&[(&next, latch)]);
        self.builder.build_unconditional_branch(head).map_err(err)?;
        self.builder.position_at_end(exit);
        Ok(())
    }

    /// A grid-stride loop over `0..n`.
    fn grid_loop(
        &self,
        f: FunctionValue<'ctx>,
        n: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let (tid, ntid, ctaid, nctaid) = (
            self.sreg("tid.x")?,
            self.sreg("ntid.x")?,
            self.sreg("ctaid.x")?,
            self.sreg("nctaid.x")?,
        );
        let start = self.add(self.mul(ctaid, ntid)?, tid)?;
        let step = self.mul(nctaid, ntid)?;
        self.strided_loop(f, start, n, step, body)
    }

    /// A float local, allocated in the entry block (where LLVM promotes it
    /// to a register; an alloca inside a loop would grow the stack).
    fn local(&self, init: FloatValue<'ctx>) -> Built<PointerValue<'ctx>> {
        let f = self
            .builder
            .get_insert_block()
            .and_then(|b| b.get_parent())
            .expect("in a function");
        let entry = f.get_first_basic_block().expect("has an entry");
        let at_entry = self.context.create_builder();
        match entry.get_first_instruction() {
            Some(first) => at_entry.position_before(&first),
            None => at_entry.position_at_end(entry),
        }
        let slot = at_entry.build_alloca(self.f32(), "local").map_err(err)?;
        self.builder.build_store(slot, init).map_err(err)?;
        Ok(slot)
    }

    fn get(&self, slot: PointerValue<'ctx>) -> Built<FloatValue<'ctx>> {
        Ok(self
            .builder
            .build_load(self.f32(), slot, "")
            .map_err(err)?
            .into_float_value())
    }

    fn set(&self, slot: PointerValue<'ctx>, v: FloatValue<'ctx>) -> Built<()> {
        self.builder.build_store(slot, v).map_err(err)?;
        Ok(())
    }

    fn ret(&self) -> Built<()> {
        self.builder.build_return(None).map_err(err)?;
        Ok(())
    }

    fn kernel(&self, kernel: &Kernel, name: &str) -> Built<()> {
        match kernel {
            Kernel::Map {
                expr,
                operands,
                out,
            } => self.map(name, expr, operands, *out),
            Kernel::RmsNorm { complex } => self.rms_norm(name, *complex),
            Kernel::Softmax => self.softmax(name),
            Kernel::Embed => self.embed(name),
            Kernel::Rope { layout, complex } => self.rope(name, *layout, *complex),
            Kernel::Attention => self.attention(name),
            Kernel::Copy2d => self.copy2d(name),
            Kernel::Permute => self.permute(name),
            Kernel::GatherColumns => self.gather_columns(name),
            Kernel::ColumnSum => self.column_sum(name),
            Kernel::CrossEntropyRows => self.cross_entropy_rows(name),
            Kernel::ScoredMean => self.scored_mean(name),
            Kernel::CrossEntropyGrad => self.cross_entropy_grad(name),
            Kernel::RmsNormGrad { complex, gain } => self.rms_norm_grad(name, *complex, *gain),
            Kernel::EmbedGrad => self.embed_grad(name),
            Kernel::AttentionGrad { which } => self.attention_grad(name, *which),
            Kernel::WidelyLinearGrad { part } => self.widely_linear_grad(name, *part),
            Kernel::QuantLinear { u_stages, w_stages } => {
                self.quant_linear(name, *u_stages, *w_stages)
            }
        }
    }

    /// `map(out, operands..., n, lens...)`: `n` output elements.
    fn map(&self, name: &str, expr: &Expr, operands: &[Elem], out: Elem) -> Built<()> {
        let k = operands.len() as u32;
        let mut params = vec![Param::Ptr; 1 + k as usize];
        params.extend(std::iter::repeat_n(Param::I64, 1 + k as usize));
        let f = self.declare(name, &params);
        let n = self.param_int(f, 1 + k);
        self.grid_loop(f, n, |i| {
            let mut values = Vec::new();
            for (j, elem) in operands.iter().enumerate() {
                let len = self.param_int(f, 2 + k + j as u32);
                let same = self
                    .builder
                    .build_int_compare(IntPredicate::EQ, len, n, "")
                    .map_err(err)?;
                let wrapped = self.urem(i, len)?;
                let at = self
                    .builder
                    .build_select(same, i, wrapped, "")
                    .map_err(err)?
                    .into_int_value();
                let ptr = self.param_ptr(f, 1 + j as u32);
                values.push(match elem {
                    Elem::Real => Val::Real(self.load_f32(ptr, at)?),
                    Elem::Complex => {
                        let at2 = self.mul(at, self.int(2))?;
                        let at2i = self.add(at2, self.int(1))?;
                        Val::Complex(self.load_f32(ptr, at2)?, self.load_f32(ptr, at2i)?)
                    }
                    Elem::Int => Val::Int(self.load_i32(ptr, at)?),
                    Elem::Code2 => return Err("elementwise kernels take no codes".into()),
                });
            }
            let result = self.eval(expr, &values, out)?;
            let dst = self.param_ptr(f, 0);
            match result {
                Val::Real(v) => self.store_f32(dst, i, v),
                Val::Complex(re, im) => {
                    let at2 = self.mul(i, self.int(2))?;
                    self.store_f32(dst, at2, re)?;
                    self.store_f32(dst, self.add(at2, self.int(1))?, im)
                }
                Val::Int(v) => self.store_i32(dst, i, v),
            }
        })?;
        self.ret()
    }

    fn eval(&self, expr: &Expr, operands: &[Val<'ctx>], out: Elem) -> Built<Val<'ctx>> {
        let (op, args) = match expr {
            Expr::Operand(k) => return Ok(operands[*k]),
            Expr::Apply(op, args) => (op, args),
        };
        let args = args
            .iter()
            .map(|a| self.eval(a, operands, out))
            .collect::<Built<Vec<_>>>()?;
        let both = |f: &dyn Fn(FloatValue<'ctx>) -> Built<FloatValue<'ctx>>,
                    v: Val<'ctx>|
         -> Built<Val<'ctx>> {
            Ok(match v {
                Val::Real(x) => Val::Real(f(x)?),
                Val::Complex(re, im) => Val::Complex(f(re)?, f(im)?),
                Val::Int(_) => return Err(format!("{op:?} takes floats")),
            })
        };
        let real = |v: Val<'ctx>| match v {
            Val::Real(x) => Ok(x),
            _ => Err(format!("{op:?} takes real operands")),
        };
        Ok(match (op, args.as_slice()) {
            (MapOp::Add | MapOp::Sub, [a, b]) => {
                let f = |x, y| {
                    if *op == MapOp::Add {
                        self.fadd(x, y)
                    } else {
                        self.fsub(x, y)
                    }
                };
                match (a, b) {
                    (Val::Real(x), Val::Real(y)) => Val::Real(f(*x, *y)?),
                    (Val::Complex(a, b), Val::Complex(c, d)) => {
                        Val::Complex(f(*a, *c)?, f(*b, *d)?)
                    }
                    _ => return Err("operands of one element type".into()),
                }
            }
            (MapOp::Mul, [a, b]) => match (a, b) {
                (Val::Real(x), Val::Real(y)) => Val::Real(self.fmul(*x, *y)?),
                (Val::Complex(a, b), Val::Complex(c, d)) => Val::Complex(
                    self.fsub(self.fmul(*a, *c)?, self.fmul(*b, *d)?)?,
                    self.fadd(self.fmul(*a, *d)?, self.fmul(*b, *c)?)?,
                ),
                _ => return Err("operands of one element type".into()),
            },
            (MapOp::Div, [a, b]) => Val::Real(self.fdiv(real(*a)?, real(*b)?)?),
            (MapOp::Unary(UnaryFn::Neg), [Val::Int(v)]) => {
                Val::Int(self.builder.build_int_neg(*v, "").map_err(err)?)
            }
            (MapOp::Unary(func), [a]) => match func {
                UnaryFn::Neg => both(&|x| self.fneg(x), *a)?,
                UnaryFn::RoundBf16 => both(&|x| self.round_bf16(x), *a)?,
                UnaryFn::Exp => Val::Real(self.exp(real(*a)?)?),
                UnaryFn::Sqrt => Val::Real(self.sqrt(real(*a)?)?),
                UnaryFn::Recip => Val::Real(self.fdiv(self.float(1.0), real(*a)?)?),
                UnaryFn::Sigmoid => {
                    let e = self.exp(self.fneg(real(*a)?)?)?;
                    Val::Real(self.fdiv(self.float(1.0), self.fadd(self.float(1.0), e)?)?)
                }
            },
            (MapOp::Silu, [a]) => {
                let x = real(*a)?;
                let e = self.exp(self.fneg(x)?)?;
                Val::Real(self.fdiv(x, self.fadd(self.float(1.0), e)?)?)
            }
            (MapOp::Scale(s), [a]) => both(&|x| self.fmul(x, self.float(*s)), *a)?,
            (MapOp::Fill(v), [_]) => match out {
                Elem::Complex => Val::Complex(self.float(*v), self.float(0.0)),
                _ => Val::Real(self.float(*v)),
            },
            (MapOp::Conj, [Val::Complex(re, im)]) => Val::Complex(*re, self.fneg(*im)?),
            (MapOp::ClipFactor(max_norm), [a]) => {
                let norm = self.sqrt(self.fmax(real(*a)?, self.float(0.0))?)?;
                let over = self
                    .builder
                    .build_float_compare(FloatPredicate::OGT, norm, self.float(*max_norm), "")
                    .map_err(err)?;
                let factor = self.fdiv(self.float(*max_norm), norm)?;
                Val::Real(
                    self.builder
                        .build_select(over, factor, self.float(1.0), "")
                        .map_err(err)?
                        .into_float_value(),
                )
            }
            (MapOp::CReluSquared, [Val::Complex(re, im)]) => {
                let zero = self.float(0.0);
                let neg_re = self
                    .builder
                    .build_float_compare(FloatPredicate::OLT, *re, zero, "")
                    .map_err(err)?;
                let neg_im = self
                    .builder
                    .build_float_compare(FloatPredicate::OLT, *im, zero, "")
                    .map_err(err)?;
                let third = self.builder.build_and(neg_re, neg_im, "").map_err(err)?;
                let pick = |v: FloatValue<'ctx>| -> Built<FloatValue<'ctx>> {
                    let sq = self.fmul(v, v)?;
                    Ok(self
                        .builder
                        .build_select(third, zero, sq, "")
                        .map_err(err)?
                        .into_float_value())
                };
                Val::Complex(pick(*re)?, pick(*im)?)
            }
            (op, args) => return Err(format!("{op:?} with {} operands", args.len())),
        })
    }

    /// Block-wide reductions: shared scratch of one float per warp (blocks
    /// of at most [`ROW_THREADS`] threads).
    fn shared_scratch(&self, name: &str) -> PointerValue<'ctx> {
        let ty = self.f32().array_type(ROW_THREADS / 32);
        let g = self.module.add_global(
            ty,
            Some(AddressSpace::from(SHARED)),
            &format!("{name}_scratch"),
        );
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.as_pointer_value()
    }

    /// Reduces `v` over the block (sum or max); every thread gets the result.
    fn block_reduce(
        &self,
        scratch: PointerValue<'ctx>,
        v: FloatValue<'ctx>,
        max: bool,
    ) -> Built<FloatValue<'ctx>> {
        let shfl = self.intrinsic("llvm.nvvm.shfl.sync.bfly.f32", &[])?;
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        let combine = |a, b| {
            if max {
                self.fmax(a, b)
            } else {
                self.fadd(a, b)
            }
        };
        let warp = |mut v: FloatValue<'ctx>| -> Built<FloatValue<'ctx>> {
            for delta in [16u64, 8, 4, 2, 1] {
                let other = self
                    .call(
                        shfl,
                        &[
                            self.i32().const_all_ones().into(),
                            v.into(),
                            self.i32().const_int(delta, false).into(),
                            self.i32().const_int(31, false).into(),
                        ],
                    )?
                    .into_float_value();
                v = combine(v, other)?;
            }
            Ok(v)
        };
        let v = warp(v)?;
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp_id = self.udiv(tid, self.int(32))?;
        let f = self
            .builder
            .get_insert_block()
            .and_then(|b| b.get_parent())
            .expect("in a function");
        let write = self.context.append_basic_block(f, "write");
        let after = self.context.append_basic_block(f, "written");
        let first = self
            .builder
            .build_int_compare(IntPredicate::EQ, lane, self.int(0), "")
            .map_err(err)?;
        self.builder
            .build_conditional_branch(first, write, after)
            .map_err(err)?;
        self.builder.position_at_end(write);
        let slot = unsafe {
            self.builder
                .build_in_bounds_gep(self.f32(), scratch, &[warp_id], "")
        }
        .map_err(err)?;
        self.builder.build_store(slot, v).map_err(err)?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(after);
        self.call_void(barrier, &[])?;
        // Every warp reads the per-warp partials (lanes past the warp count
        // take the identity) and reduces them the same way.
        let warps = self.udiv(self.sreg("ntid.x")?, self.int(32))?;
        let in_range = self
            .builder
            .build_int_compare(IntPredicate::ULT, lane, warps, "")
            .map_err(err)?;
        let safe_lane = self
            .builder
            .build_select(in_range, lane, self.int(0), "")
            .map_err(err)?
            .into_int_value();
        let slot = unsafe {
            self.builder
                .build_in_bounds_gep(self.f32(), scratch, &[safe_lane], "")
        }
        .map_err(err)?;
        let partial = self
            .builder
            .build_load(self.f32(), slot, "")
            .map_err(err)?
            .into_float_value();
        let identity = if max {
            self.float(f32::NEG_INFINITY)
        } else {
            self.float(0.0)
        };
        let partial = self
            .builder
            .build_select(in_range, partial, identity, "")
            .map_err(err)?
            .into_float_value();
        let total = warp(partial)?;
        // The scratch is reused by the next reduction.
        self.call_void(barrier, &[])?;
        Ok(total)
    }

    /// Sums `term(i)` over `i` in `0..n` by this thread's share, then over
    /// the block.
    fn row_sum(
        &self,
        f: FunctionValue<'ctx>,
        scratch: PointerValue<'ctx>,
        n: IntValue<'ctx>,
        max: bool,
        term: impl Fn(IntValue<'ctx>) -> Built<FloatValue<'ctx>>,
    ) -> Built<FloatValue<'ctx>> {
        let identity = if max {
            self.float(f32::NEG_INFINITY)
        } else {
            self.float(0.0)
        };
        let acc = self.local(identity)?;
        let tid = self.sreg("tid.x")?;
        let threads = self.sreg("ntid.x")?;
        self.strided_loop(f, tid, n, threads, |i| {
            let old = self.get(acc)?;
            let t = term(i)?;
            self.set(
                acc,
                if max {
                    self.fmax(old, t)?
                } else {
                    self.fadd(old, t)?
                },
            )
        })?;
        self.block_reduce(scratch, self.get(acc)?, max)
    }

    /// `rms_norm(out, x, gain, cols, eps)`: one block per row of `cols`
    /// elements (complex elements for the complex form).
    fn rms_norm(&self, name: &str, complex: bool) -> Built<()> {
        let f = self.declare(
            name,
            &[Param::Ptr, Param::Ptr, Param::Ptr, Param::I64, Param::F32],
        );
        let scratch = self.shared_scratch(name);
        let (out, x, gain, cols, eps) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_int(f, 3),
            self.param_float(f, 4),
        );
        let row = self.sreg("ctaid.x")?;
        let words = if complex {
            self.mul(cols, self.int(2))?
        } else {
            cols
        };
        let base = self.mul(row, words)?;
        let ss = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            self.fmul(v, v)
        })?;
        let cols_f = self
            .builder
            .build_unsigned_int_to_float(cols, self.f32(), "")
            .map_err(err)?;
        let mean = self.fadd(self.fdiv(ss, cols_f)?, eps)?;
        let inv = self.fdiv(self.float(1.0), self.sqrt(mean)?)?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, words, self.sreg("ntid.x")?, |i| {
            // Complex rows: word 2j is re_j (gain j), 2j+1 is im_j (gain cols + j).
            let g = if complex {
                let j = self.udiv(i, self.int(2))?;
                let odd = self.urem(i, self.int(2))?;
                self.add(j, self.mul(odd, cols)?)?
            } else {
                i
            };
            let v = self.load_f32(x, self.add(base, i)?)?;
            let y = self.fmul(self.fmul(v, inv)?, self.load_f32(gain, g)?)?;
            self.store_f32(out, self.add(base, i)?, y)
        })?;
        self.ret()
    }

    /// `softmax(out, x, cols)`: one block per row.
    fn softmax(&self, name: &str) -> Built<()> {
        let f = self.declare(name, &[Param::Ptr, Param::Ptr, Param::I64]);
        let scratch = self.shared_scratch(name);
        let (out, x, cols) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_int(f, 2),
        );
        let base = self.mul(self.sreg("ctaid.x")?, cols)?;
        let at = |i| self.add(base, i);
        let max = self.row_sum(f, scratch, cols, true, |i| self.load_f32(x, at(i)?))?;
        let total = self.row_sum(f, scratch, cols, false, |i| {
            self.exp(self.fsub(self.load_f32(x, at(i)?)?, max)?)
        })?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, cols, self.sreg("ntid.x")?, |i| {
            let e = self.exp(self.fsub(self.load_f32(x, at(i)?)?, max)?)?;
            self.store_f32(out, at(i)?, self.fdiv(e, total)?)
        })?;
        self.ret()
    }

    /// `embed(out, ids, table, n, width, vocab)`: `n` output words, rows
    /// of `width`; an id outside `0..vocab` gives a zero row (the host
    /// checks the ids it is given, so this only guards memory).
    fn embed(&self, name: &str) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
                Param::I64,
            ],
        );
        let (out, ids, table) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
        );
        let (n, width, vocab) = (
            self.param_int(f, 3),
            self.param_int(f, 4),
            self.param_int(f, 5),
        );
        self.grid_loop(f, n, |i| {
            let t = self.udiv(i, width)?;
            let c = self.urem(i, width)?;
            let (id, known) = self.token(ids, t, vocab)?;
            let at = self.add(self.mul(id, width)?, c)?;
            let v = self.load_i32(table, at)?;
            let v = self
                .builder
                .build_select(known, v, self.i32().const_zero(), "")
                .map_err(err)?
                .into_int_value();
            self.store_i32(out, i, v)
        })?;
        self.ret()
    }

    /// Token `t` of `ids` as a row index, 0 where it is outside
    /// `0..vocab`, and whether it was inside.
    fn token(
        &self,
        ids: PointerValue<'ctx>,
        t: IntValue<'ctx>,
        vocab: IntValue<'ctx>,
    ) -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
        let id = self.load_i32(ids, t)?;
        let id = self
            .builder
            .build_int_s_extend(id, self.i64(), "")
            .map_err(err)?;
        // Unsigned: a negative id compares as huge.
        let known = self
            .builder
            .build_int_compare(IntPredicate::ULT, id, vocab, "")
            .map_err(err)?;
        let safe = self
            .builder
            .build_select(known, id, self.int(0), "")
            .map_err(err)?
            .into_int_value();
        Ok((safe, known))
    }

    /// `rope(out, x, positions, freqs, pairs, width, seq, head_dim)`:
    /// `pairs` rotations; `width` and `head_dim` in elements (complex:
    /// complex elements, each its own pair).
    fn rope(&self, name: &str, layout: RopeLayout, complex: bool) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
                Param::I64,
                Param::I64,
            ],
        );
        let (out, x, positions, freqs) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_ptr(f, 3),
        );
        let (pairs, width, seq, head_dim) = (
            self.param_int(f, 4),
            self.param_int(f, 5),
            self.param_int(f, 6),
            self.param_int(f, 7),
        );
        let sin = self.intrinsic("llvm.nvvm.sin.approx.f", &[])?;
        let cos = self.intrinsic("llvm.nvvm.cos.approx.f", &[])?;
        let round = self.intrinsic("llvm.rint", &[self.f64().into()])?;
        self.grid_loop(f, pairs, |p| {
            let half = self.udiv(head_dim, self.int(2))?;
            // Pairs per row: width/2 for real rows, width for complex ones.
            let per_row = if complex {
                width
            } else {
                self.udiv(width, self.int(2))?
            };
            let row = self.udiv(p, per_row)?;
            let q = self.urem(p, per_row)?;
            let head = self.udiv(q, half)?;
            let j = self.urem(q, half)?;
            let pos = self.load_i32(positions, self.urem(row, seq)?)?;
            let pos = self
                .builder
                .build_signed_int_to_float(pos, self.f64(), "")
                .map_err(err)?;
            let fp = self.gep(self.f64(), freqs, j)?;
            let freq = self
                .builder
                .build_load(self.f64(), fp, "")
                .map_err(err)?
                .into_float_value();
            // The angle in f64, reduced to [-π, π] before the f32 sin/cos.
            let theta = self.builder.build_float_mul(pos, freq, "").map_err(err)?;
            let two_pi = self.f64().const_float(std::f64::consts::TAU);
            let turns = self
                .builder
                .build_float_div(theta, two_pi, "")
                .map_err(err)?;
            let turns = self.call(round, &[turns.into()])?.into_float_value();
            let reduced = self
                .builder
                .build_float_sub(
                    theta,
                    self.builder
                        .build_float_mul(turns, two_pi, "")
                        .map_err(err)?,
                    "",
                )
                .map_err(err)?;
            let r = self
                .builder
                .build_float_trunc(reduced, self.f32(), "")
                .map_err(err)?;
            let c = self.call(cos, &[r.into()])?.into_float_value();
            let s = self.call(sin, &[r.into()])?.into_float_value();
            let row_base = self.mul(
                row,
                if complex {
                    self.mul(width, self.int(2))?
                } else {
                    width
                },
            )?;
            let (a, b) = if complex {
                let at = self.add(row_base, self.mul(q, self.int(2))?)?;
                (at, self.add(at, self.int(1))?)
            } else {
                let head_base = self.add(row_base, self.mul(head, head_dim)?)?;
                match layout {
                    RopeLayout::Interleaved => {
                        let a = self.add(head_base, self.mul(j, self.int(2))?)?;
                        (a, self.add(a, self.int(1))?)
                    }
                    RopeLayout::HalfSplit => {
                        let a = self.add(head_base, j)?;
                        (a, self.add(a, half)?)
                    }
                }
            };
            let (x0, x1) = (self.load_f32(x, a)?, self.load_f32(x, b)?);
            self.store_f32(out, a, self.fsub(self.fmul(x0, c)?, self.fmul(x1, s)?)?)?;
            self.store_f32(out, b, self.fadd(self.fmul(x0, s)?, self.fmul(x1, c)?)?)
        })?;
        self.ret()
    }

    /// `attention(out, q, k, v, scores, seq, kv_len, heads, kv_heads, d,
    /// dv, scale, causal)`: block `b` is query `b / heads`, head `b % heads`;
    /// `scores` holds `kv_len` floats per block; `d`, `dv` in words.
    fn attention(&self, name: &str) -> Built<()> {
        let mut params = vec![Param::Ptr; 5];
        params.extend([Param::I64; 7]);
        params.push(Param::F32);
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let (out, q, k, v, scores) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_ptr(f, 3),
            self.param_ptr(f, 4),
        );
        let (seq, kv_len, heads, kv_heads, d, dv, causal) = (
            self.param_int(f, 5),
            self.param_int(f, 6),
            self.param_int(f, 7),
            self.param_int(f, 8),
            self.param_int(f, 9),
            self.param_int(f, 10),
            self.param_int(f, 11),
        );
        let scale = self.param_float(f, 12);
        let block = self.sreg("ctaid.x")?;
        let (i, h) = (self.udiv(block, heads)?, self.urem(block, heads)?);
        let group = self.udiv(heads, kv_heads)?;
        let kh = self.udiv(h, group)?;
        let past = self.builder.build_int_sub(kv_len, seq, "").map_err(err)?;
        let causal_visible = self.add(self.add(past, i)?, self.int(1))?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self
            .builder
            .build_select(is_causal, causal_visible, kv_len, "")
            .map_err(err)?
            .into_int_value();
        let q_base = self.add(self.mul(i, self.mul(heads, d)?)?, self.mul(h, d)?)?;
        let kw = self.mul(kv_heads, d)?;
        let vw = self.mul(kv_heads, dv)?;
        let s_base = self.mul(block, kv_len)?;
        let tid = self.sreg("tid.x")?;
        let step = self.sreg("ntid.x")?;
        // Scores, and their maximum.
        let acc = self.local(self.float(f32::NEG_INFINITY))?;
        let dot = self.local(self.float(0.0))?;
        self.strided_loop(f, tid, visible, step, |j| {
            let k_base = self.add(self.mul(j, kw)?, self.mul(kh, d)?)?;
            self.set(dot, self.float(0.0))?;
            self.strided_loop(f, self.int(0), d, self.int(1), |c| {
                let a = self.load_f32(q, self.add(q_base, c)?)?;
                let b = self.load_f32(k, self.add(k_base, c)?)?;
                self.set(dot, self.fadd(self.get(dot)?, self.fmul(a, b)?)?)
            })?;
            let s = self.fmul(self.get(dot)?, scale)?;
            self.store_f32(scores, self.add(s_base, j)?, s)?;
            self.set(acc, self.fmax(self.get(acc)?, s)?)
        })?;
        let max = self.block_reduce(scratch, self.get(acc)?, true)?;
        // Exponentials in place, and their sum (the block reduction's
        // barrier makes them visible to every thread).
        let total = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(s_base, j)?;
            let e = self.exp(self.fsub(self.load_f32(scores, at)?, max)?)?;
            self.store_f32(scores, at, e)?;
            Ok(e)
        })?;
        let o_base = self.add(self.mul(i, self.mul(heads, dv)?)?, self.mul(h, dv)?)?;
        let sum = self.local(self.float(0.0))?;
        self.strided_loop(f, tid, dv, step, |c| {
            self.set(sum, self.float(0.0))?;
            self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                let p = self.load_f32(scores, self.add(s_base, j)?)?;
                let x = self.load_f32(
                    v,
                    self.add(self.add(self.mul(j, vw)?, self.mul(kh, dv)?)?, c)?,
                )?;
                self.set(sum, self.fadd(self.get(sum)?, self.fmul(p, x)?)?)
            })?;
            self.store_f32(out, self.add(o_base, c)?, self.fdiv(self.get(sum)?, total)?)
        })?;
        self.ret()
    }

    /// `copy2d(dst, src, rows, cols, dst_stride, dst_off, src_stride, src_off)`.
    fn copy2d(&self, name: &str) -> Built<()> {
        let mut params = vec![Param::Ptr; 2];
        params.extend([Param::I64; 6]);
        let f = self.declare(name, &params);
        let (dst, src) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        let [rows, cols, dst_stride, dst_off, src_stride, src_off] =
            [2, 3, 4, 5, 6, 7].map(|k| self.param_int(f, k));
        let n = self.mul(rows, cols)?;
        self.grid_loop(f, n, |i| {
            let (r, c) = (self.udiv(i, cols)?, self.urem(i, cols)?);
            let from = self.add(self.add(self.mul(r, src_stride)?, src_off)?, c)?;
            let to = self.add(self.add(self.mul(r, dst_stride)?, dst_off)?, c)?;
            let v = self.load_i32(src, from)?;
            self.store_i32(dst, to, v)
        })?;
        self.ret()
    }

    /// `permute(dst, src, n, dims[8], strides[8])`: output element `i`,
    /// written as digits of the output's dims (outermost first, unused
    /// leading dims 1), reads the source at the digits' strides.
    fn permute(&self, name: &str) -> Built<()> {
        let mut params = vec![Param::Ptr; 2];
        params.extend(std::iter::repeat_n(Param::I64, 1 + 2 * GATHER_RANK));
        let f = self.declare(name, &params);
        let (dst, src, n) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_int(f, 2),
        );
        self.grid_loop(f, n, |i| {
            let mut rest = i;
            let mut from = self.int(0);
            for axis in (0..GATHER_RANK as u32).rev() {
                let dim = self.param_int(f, 3 + axis);
                let stride = self.param_int(f, 3 + GATHER_RANK as u32 + axis);
                let digit = self.urem(rest, dim)?;
                rest = self.udiv(rest, dim)?;
                from = self.add(from, self.mul(digit, stride)?)?;
            }
            let v = self.load_i32(src, from)?;
            self.store_i32(dst, i, v)
        })?;
        self.ret()
    }
}

impl<'ctx> Gen<'ctx> {
    /// `*ptr += v` for f32 in global memory, as one `red.global.add.f32`
    /// (inkwell's atomicrmw builder takes integers only).
    fn atomic_add(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        v: FloatValue<'ctx>,
    ) -> Built<()> {
        let p = self.gep(self.f32(), ptr, index)?;
        let fn_type = self
            .context
            .void_type()
            .fn_type(&[self.global_ptr().into(), self.f32().into()], false);
        let asm = self.context.create_inline_asm(
            fn_type,
            "red.global.add.f32 [$0], $1;".into(),
            "l,f,~{memory}".into(),
            true,
            false,
            None,
            false,
        );
        self.builder
            .build_indirect_call(fn_type, asm, &[p.into(), v.into()], "")
            .map_err(err)?;
        Ok(())
    }

    fn i64_to_f32(&self, v: IntValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder
            .build_unsigned_int_to_float(v, self.f32(), "")
            .map_err(err)
    }

    /// A branch: `body` runs where `condition` holds.
    fn when(
        &self,
        f: FunctionValue<'ctx>,
        condition: IntValue<'ctx>,
        body: impl FnOnce() -> Built<()>,
    ) -> Built<()> {
        let then = self.context.append_basic_block(f, "then");
        let after = self.context.append_basic_block(f, "after");
        self.builder
            .build_conditional_branch(condition, then, after)
            .map_err(err)?;
        self.builder.position_at_end(then);
        body()?;
        self.builder
            .build_unconditional_branch(after)
            .map_err(err)?;
        self.builder.position_at_end(after);
        Ok(())
    }

    /// `column_sum(out, x, rows, cols)`.
    fn column_sum(&self, name: &str) -> Built<()> {
        let f = self.declare(name, &[Param::Ptr, Param::Ptr, Param::I64, Param::I64]);
        let scratch = self.shared_scratch(name);
        let (out, x, rows, cols) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_int(f, 2),
            self.param_int(f, 3),
        );
        let c = self.sreg("ctaid.x")?;
        let total = self.row_sum(f, scratch, rows, false, |r| {
            self.load_f32(x, self.add(self.mul(r, cols)?, c)?)
        })?;
        let first = self
            .builder
            .build_int_compare(IntPredicate::EQ, self.sreg("tid.x")?, self.int(0), "")
            .map_err(err)?;
        self.when(f, first, || self.store_f32(out, c, total))?;
        self.ret()
    }

    /// `cross_entropy_rows(out, logits, targets, vocab)`: `out[2r..2r+2]`.
    fn cross_entropy_rows(&self, name: &str) -> Built<()> {
        let f = self.declare(name, &[Param::Ptr, Param::Ptr, Param::Ptr, Param::I64]);
        let scratch = self.shared_scratch(name);
        let (out, logits, targets, vocab) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_int(f, 3),
        );
        let r = self.sreg("ctaid.x")?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let max = self.row_sum(f, scratch, vocab, true, |i| self.load_f32(logits, at(i)?))?;
        let total = self.row_sum(f, scratch, vocab, false, |i| {
            self.exp(self.fsub(self.load_f32(logits, at(i)?)?, max)?)
        })?;
        let t = self.load_i32(targets, r)?;
        let scored = self
            .builder
            .build_int_compare(IntPredicate::SGE, t, self.i32().const_zero(), "")
            .map_err(err)?;
        let t = self
            .builder
            .build_int_s_extend(t, self.i64(), "")
            .map_err(err)?;
        let safe = self
            .builder
            .build_select(scored, t, self.int(0), "")
            .map_err(err)?
            .into_int_value();
        let log2 = self.intrinsic("llvm.nvvm.lg2.approx.f", &[])?;
        let lg = self.call(log2, &[total.into()])?.into_float_value();
        let lse = self.fadd(max, self.fmul(lg, self.float(std::f32::consts::LN_2))?)?;
        let loss = self.fsub(lse, self.load_f32(logits, at(safe)?)?)?;
        let zero = self.float(0.0);
        let loss = self
            .builder
            .build_select(scored, loss, zero, "")
            .map_err(err)?
            .into_float_value();
        let flag = self
            .builder
            .build_select(scored, self.float(1.0), zero, "")
            .map_err(err)?
            .into_float_value();
        let first = self
            .builder
            .build_int_compare(IntPredicate::EQ, self.sreg("tid.x")?, self.int(0), "")
            .map_err(err)?;
        self.when(f, first, || {
            let at = self.mul(r, self.int(2))?;
            self.store_f32(out, at, loss)?;
            self.store_f32(out, self.add(at, self.int(1))?, flag)
        })?;
        self.ret()
    }

    /// `scored_mean(out, sums)`: one thread.
    fn scored_mean(&self, name: &str) -> Built<()> {
        let f = self.declare(name, &[Param::Ptr, Param::Ptr]);
        let (out, sums) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        let total = self.load_f32(sums, self.int(0))?;
        let count = self.load_f32(sums, self.int(1))?;
        let any = self
            .builder
            .build_float_compare(FloatPredicate::OGT, count, self.float(0.0), "")
            .map_err(err)?;
        let mean = self.fdiv(total, count)?;
        let mean = self
            .builder
            .build_select(any, mean, self.float(0.0), "")
            .map_err(err)?
            .into_float_value();
        self.store_f32(out, self.int(0), mean)?;
        self.ret()
    }

    /// `cross_entropy_grad(out, logits, targets, dloss, rows, vocab)`.
    fn cross_entropy_grad(&self, name: &str) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
            ],
        );
        let scratch = self.shared_scratch(name);
        let (out, logits, targets, dloss) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_ptr(f, 3),
        );
        let (rows, vocab) = (self.param_int(f, 4), self.param_int(f, 5));
        let r = self.sreg("ctaid.x")?;
        // Every block counts the scored rows (the targets are few).
        let count = self.row_sum(f, scratch, rows, false, |k| {
            let t = self.load_i32(targets, k)?;
            let scored = self
                .builder
                .build_int_compare(IntPredicate::SGE, t, self.i32().const_zero(), "")
                .map_err(err)?;
            Ok(self
                .builder
                .build_select(scored, self.float(1.0), self.float(0.0), "")
                .map_err(err)?
                .into_float_value())
        })?;
        let scale = self.fdiv(
            self.load_f32(dloss, self.int(0))?,
            self.fmax(count, self.float(1.0))?,
        )?;
        let base = self.mul(r, vocab)?;
        let at = |i| self.add(base, i);
        let max = self.row_sum(f, scratch, vocab, true, |i| self.load_f32(logits, at(i)?))?;
        let total = self.row_sum(f, scratch, vocab, false, |i| {
            self.exp(self.fsub(self.load_f32(logits, at(i)?)?, max)?)
        })?;
        let t = self.load_i32(targets, r)?;
        let scored = self
            .builder
            .build_int_compare(IntPredicate::SGE, t, self.i32().const_zero(), "")
            .map_err(err)?;
        let t = self
            .builder
            .build_int_s_extend(t, self.i64(), "")
            .map_err(err)?;
        let tid = self.sreg("tid.x")?;
        self.strided_loop(f, tid, vocab, self.sreg("ntid.x")?, |i| {
            let p = self.fdiv(
                self.exp(self.fsub(self.load_f32(logits, at(i)?)?, max)?)?,
                total,
            )?;
            let hit = self
                .builder
                .build_int_compare(IntPredicate::EQ, i, t, "")
                .map_err(err)?;
            let p = self
                .builder
                .build_select(hit, self.fsub(p, self.float(1.0))?, p, "")
                .map_err(err)?
                .into_float_value();
            let d = self.fmul(p, scale)?;
            let d = self
                .builder
                .build_select(scored, d, self.float(0.0), "")
                .map_err(err)?
                .into_float_value();
            self.store_f32(out, at(i)?, d)
        })?;
        self.ret()
    }

    /// `rms_norm_grad(out, x, gain, dy, cols, eps)`: rows of `cols`
    /// elements (complex: complex elements, the gain's first half for real
    /// parts). Input: `dx = r g dy − x r³ Σ(g dy x) / cols`; gain: the
    /// terms `dy x r` at the gain's index, `[rows, gain.len()]`.
    fn rms_norm_grad(&self, name: &str, complex: bool, gain_part: bool) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::F32,
            ],
        );
        let scratch = self.shared_scratch(name);
        let (out, x, gain, dy) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
            self.param_ptr(f, 3),
        );
        let (cols, eps) = (self.param_int(f, 4), self.param_float(f, 5));
        let row = self.sreg("ctaid.x")?;
        let words = if complex {
            self.mul(cols, self.int(2))?
        } else {
            cols
        };
        let base = self.mul(row, words)?;
        let gain_at = |i: IntValue<'ctx>| -> Built<IntValue<'ctx>> {
            if complex {
                let j = self.udiv(i, self.int(2))?;
                let odd = self.urem(i, self.int(2))?;
                self.add(j, self.mul(odd, cols)?)
            } else {
                Ok(i)
            }
        };
        let ss = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            self.fmul(v, v)
        })?;
        let n = self.i64_to_f32(cols)?;
        let r = self.fdiv(
            self.float(1.0),
            self.sqrt(self.fadd(self.fdiv(ss, n)?, eps)?)?,
        )?;
        let tid = self.sreg("tid.x")?;
        let threads = self.sreg("ntid.x")?;
        if gain_part {
            self.strided_loop(f, tid, words, threads, |i| {
                let v = self.load_f32(x, self.add(base, i)?)?;
                let g = self.load_f32(dy, self.add(base, i)?)?;
                self.store_f32(
                    out,
                    self.add(base, gain_at(i)?)?,
                    self.fmul(self.fmul(g, v)?, r)?,
                )
            })?;
            return self.ret();
        }
        let dot = self.row_sum(f, scratch, words, false, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            let g = self.load_f32(dy, self.add(base, i)?)?;
            self.fmul(self.fmul(g, v)?, self.load_f32(gain, gain_at(i)?)?)
        })?;
        let r3 = self.fmul(self.fmul(r, r)?, r)?;
        let coefficient = self.fdiv(self.fmul(r3, dot)?, n)?;
        self.strided_loop(f, tid, words, threads, |i| {
            let v = self.load_f32(x, self.add(base, i)?)?;
            let g = self.load_f32(dy, self.add(base, i)?)?;
            let w = self.load_f32(gain, gain_at(i)?)?;
            let d = self.fsub(self.fmul(self.fmul(r, w)?, g)?, self.fmul(v, coefficient)?)?;
            self.store_f32(out, self.add(base, i)?, d)
        })?;
        self.ret()
    }

    /// `embed_grad(out, ids, dy, n, width, vocab)`: `n` words of `dy`,
    /// rows of `width` words; ids outside `0..vocab` add nothing.
    fn embed_grad(&self, name: &str) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
                Param::I64,
            ],
        );
        let (out, ids, dy) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
        );
        let (n, width, vocab) = (
            self.param_int(f, 3),
            self.param_int(f, 4),
            self.param_int(f, 5),
        );
        self.grid_loop(f, n, |i| {
            let t = self.udiv(i, width)?;
            let c = self.urem(i, width)?;
            let (id, known) = self.token(ids, t, vocab)?;
            self.when(
                self.builder
                    .get_insert_block()
                    .and_then(|b| b.get_parent())
                    .expect("in a function"),
                known,
                || {
                    self.atomic_add(
                        out,
                        self.add(self.mul(id, width)?, c)?,
                        self.load_f32(dy, i)?,
                    )
                },
            )
        })?;
        self.ret()
    }

    /// `attention_grad(out, q, k, v, dout, scratch, seq, heads, kv_heads, d,
    /// dv, scale, causal)`: as the reference (no past keys: `kv_len =
    /// seq`); `scratch` holds `2·seq` floats per block; `d`, `dv` in words.
    fn attention_grad(&self, name: &str, which: fairyc_ir::AttentionOperand) -> Built<()> {
        use fairyc_ir::AttentionOperand;
        let mut params = vec![Param::Ptr; 6];
        params.extend([Param::I64; 5]);
        params.extend([Param::F32, Param::I64]);
        let f = self.declare(name, &params);
        let scratch = self.shared_scratch(name);
        let [out, q, k, v, dout, work] = [0, 1, 2, 3, 4, 5].map(|i| self.param_ptr(f, i));
        let [seq, heads, kv_heads, d, dv] = [6, 7, 8, 9, 10].map(|i| self.param_int(f, i));
        let (scale, causal) = (self.param_float(f, 11), self.param_int(f, 12));
        let block = self.sreg("ctaid.x")?;
        let (i, h) = (self.udiv(block, heads)?, self.urem(block, heads)?);
        let kh = self.udiv(h, self.udiv(heads, kv_heads)?)?;
        let is_causal = self
            .builder
            .build_int_compare(IntPredicate::NE, causal, self.int(0), "")
            .map_err(err)?;
        let visible = self
            .builder
            .build_select(is_causal, self.add(i, self.int(1))?, seq, "")
            .map_err(err)?
            .into_int_value();
        let q_base = self.add(self.mul(i, self.mul(heads, d)?)?, self.mul(h, d)?)?;
        let o_base = self.add(self.mul(i, self.mul(heads, dv)?)?, self.mul(h, dv)?)?;
        let (kw, vw) = (self.mul(kv_heads, d)?, self.mul(kv_heads, dv)?);
        let k_at = |j| self.add(self.mul(j, kw)?, self.mul(kh, d)?);
        let v_at = |j| self.add(self.mul(j, vw)?, self.mul(kh, dv)?);
        let p_base = self.mul(block, self.mul(seq, self.int(2))?)?;
        let dp_base = self.add(p_base, seq)?;
        let tid = self.sreg("tid.x")?;
        let step = self.sreg("ntid.x")?;
        let dot = self.local(self.float(0.0))?;
        let row_dot = |a: PointerValue<'ctx>,
                       a_base: IntValue<'ctx>,
                       b: PointerValue<'ctx>,
                       b_base: IntValue<'ctx>,
                       len: IntValue<'ctx>|
         -> Built<FloatValue<'ctx>> {
            self.set(dot, self.float(0.0))?;
            self.strided_loop(f, self.int(0), len, self.int(1), |c| {
                let x = self.load_f32(a, self.add(a_base, c)?)?;
                let y = self.load_f32(b, self.add(b_base, c)?)?;
                self.set(dot, self.fadd(self.get(dot)?, self.fmul(x, y)?)?)
            })?;
            self.get(dot)
        };
        // Scores and their maximum.
        let max = self.row_sum(f, scratch, visible, true, |j| {
            let s = self.fmul(row_dot(q, q_base, k, k_at(j)?, d)?, scale)?;
            self.store_f32(work, self.add(p_base, j)?, s)?;
            Ok(s)
        })?;
        let total = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(p_base, j)?;
            let e = self.exp(self.fsub(self.load_f32(work, at)?, max)?)?;
            self.store_f32(work, at, e)?;
            Ok(e)
        })?;
        // p_j, and for Q and K the terms dp_j = dout_i · v_j.
        let mean = self.row_sum(f, scratch, visible, false, |j| {
            let at = self.add(p_base, j)?;
            let p = self.fdiv(self.load_f32(work, at)?, total)?;
            self.store_f32(work, at, p)?;
            if which == AttentionOperand::V {
                return Ok(self.float(0.0));
            }
            let dp = row_dot(dout, o_base, v, v_at(j)?, dv)?;
            self.store_f32(work, self.add(dp_base, j)?, dp)?;
            self.fmul(p, dp)
        })?;
        // The row sums' barriers made p and dp visible to the block.
        match which {
            AttentionOperand::V => {
                self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                    let p = self.load_f32(work, self.add(p_base, j)?)?;
                    self.strided_loop(f, tid, dv, step, |c| {
                        let g = self.load_f32(dout, self.add(o_base, c)?)?;
                        self.atomic_add(out, self.add(v_at(j)?, c)?, self.fmul(p, g)?)
                    })
                })?;
            }
            AttentionOperand::Q => {
                let acc = self.local(self.float(0.0))?;
                self.strided_loop(f, tid, d, step, |c| {
                    self.set(acc, self.float(0.0))?;
                    self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                        let p = self.load_f32(work, self.add(p_base, j)?)?;
                        let dp = self.load_f32(work, self.add(dp_base, j)?)?;
                        let ds = self.fmul(scale, self.fmul(p, self.fsub(dp, mean)?)?)?;
                        let kv = self.load_f32(k, self.add(k_at(j)?, c)?)?;
                        self.set(acc, self.fadd(self.get(acc)?, self.fmul(ds, kv)?)?)
                    })?;
                    self.store_f32(out, self.add(q_base, c)?, self.get(acc)?)
                })?;
            }
            AttentionOperand::K => {
                self.strided_loop(f, self.int(0), visible, self.int(1), |j| {
                    let p = self.load_f32(work, self.add(p_base, j)?)?;
                    let dp = self.load_f32(work, self.add(dp_base, j)?)?;
                    let ds = self.fmul(scale, self.fmul(p, self.fsub(dp, mean)?)?)?;
                    self.strided_loop(f, tid, d, step, |c| {
                        let qv = self.load_f32(q, self.add(q_base, c)?)?;
                        self.atomic_add(out, self.add(k_at(j)?, c)?, self.fmul(ds, qv)?)
                    })
                })?;
            }
        }
        self.ret()
    }

    /// `widely_linear_grad(out, d, row_index, col_index, rows, cols, m)`:
    /// `row_index[r] = 2a + (r is an imaginary channel of slot a)`, likewise
    /// for columns; `d` is `[n, m]` complex.
    fn widely_linear_grad(&self, name: &str, part: fairyc_ir::WlPart) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
                Param::I64,
            ],
        );
        let [out, d, row_index, col_index] = [0, 1, 2, 3].map(|k| self.param_ptr(f, k));
        let [rows, cols, m] = [4, 5, 6].map(|k| self.param_int(f, k));
        self.grid_loop(f, self.mul(rows, cols)?, |i| {
            let (r, c) = (self.udiv(i, cols)?, self.urem(i, cols)?);
            let widen = |v: IntValue<'ctx>| {
                self.builder
                    .build_int_s_extend(v, self.i64(), "")
                    .map_err(err)
            };
            let ra = widen(self.load_i32(row_index, r)?)?;
            let cb = widen(self.load_i32(col_index, c)?)?;
            let (a, row_im) = (self.udiv(ra, self.int(2))?, self.urem(ra, self.int(2))?);
            let (b, col_im) = (self.udiv(cb, self.int(2))?, self.urem(cb, self.int(2))?);
            let mixed = self
                .builder
                .build_int_compare(IntPredicate::NE, row_im, col_im, "")
                .map_err(err)?;
            let imag_word = self
                .builder
                .build_int_z_extend(mixed, self.i64(), "")
                .map_err(err)?;
            let word = self.add(
                self.mul(self.add(self.mul(a, m)?, b)?, self.int(2))?,
                imag_word,
            )?;
            let v = self.fmul(self.load_f32(d, word)?, self.float(0.5))?;
            // U: R12 = −Im; W: R22 = −Re.
            let (neg_row, neg_col) = match part {
                fairyc_ir::WlPart::U => (0, 1),
                fairyc_ir::WlPart::W => (1, 1),
            };
            let is = |x: IntValue<'ctx>, want: u64| {
                self.builder
                    .build_int_compare(IntPredicate::EQ, x, self.int(want), "")
                    .map_err(err)
            };
            let negative = self
                .builder
                .build_and(is(row_im, neg_row)?, is(col_im, neg_col)?, "")
                .map_err(err)?;
            let v = self
                .builder
                .build_select(negative, self.fneg(v)?, v, "")
                .map_err(err)?
                .into_float_value();
            self.store_f32(out, i, v)
        })?;
        self.ret()
    }

    /// `gather_columns(out, x, index, rows, out_cols, in_cols)`.
    fn gather_columns(&self, name: &str) -> Built<()> {
        let f = self.declare(
            name,
            &[
                Param::Ptr,
                Param::Ptr,
                Param::Ptr,
                Param::I64,
                Param::I64,
                Param::I64,
            ],
        );
        let (out, x, index) = (
            self.param_ptr(f, 0),
            self.param_ptr(f, 1),
            self.param_ptr(f, 2),
        );
        let (rows, out_cols, in_cols) = (
            self.param_int(f, 3),
            self.param_int(f, 4),
            self.param_int(f, 5),
        );
        self.grid_loop(f, self.mul(rows, out_cols)?, |i| {
            let (r, c) = (self.udiv(i, out_cols)?, self.urem(i, out_cols)?);
            let from = self.load_i32(index, c)?;
            let missing = self
                .builder
                .build_int_compare(IntPredicate::SLT, from, self.i32().const_zero(), "")
                .map_err(err)?;
            let from = self
                .builder
                .build_int_s_extend(from, self.i64(), "")
                .map_err(err)?;
            let safe = self
                .builder
                .build_select(missing, self.int(0), from, "")
                .map_err(err)?
                .into_int_value();
            let v = self.load_i32(x, self.add(self.mul(r, in_cols)?, safe)?)?;
            let v = self
                .builder
                .build_select(missing, self.i32().const_zero(), v, "")
                .map_err(err)?
                .into_int_value();
            self.store_i32(out, i, v)
        })?;
        self.ret()
    }

    /// `quant_linear(out, x, (codes, scales) per stage..., rows, n, m,
    /// groups_per_row, group_len, per_tensor)`: `x[rows, m]` complex,
    /// `out[rows, n]` complex; codes `[n, ceil(m/4)]` bytes, code `b` of a
    /// byte in bits `2b..2b+2` (0: +1, 1: +i, 2: −1, 3: −i); each group's
    /// scales `(s_re, s_im)` at `2·(i·groups_per_row + g)`, or at 0 for a
    /// per-tensor scale.
    fn quant_linear(&self, name: &str, u_stages: usize, w_stages: usize) -> Built<()> {
        let stages = u_stages + w_stages;
        let mut params = vec![Param::Ptr; 2 + 2 * stages];
        params.extend([Param::I64; 6]);
        let f = self.declare(name, &params);
        let (out, x) = (self.param_ptr(f, 0), self.param_ptr(f, 1));
        let base = 2 + 2 * stages as u32;
        let [rows, n, m, groups_per_row, group_len, per_tensor] =
            [0, 1, 2, 3, 4, 5].map(|k| self.param_int(f, base + k));
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp = self.udiv(tid, self.int(32))?;
        let row = self.add(
            self.mul(self.sreg("ctaid.x")?, self.int(QUANT_ROWS_PER_BLOCK as u64))?,
            warp,
        )?;
        // Whole warps leave together: no barrier follows.
        let work = self.context.append_basic_block(f, "work");
        let done = self.context.append_basic_block(f, "done");
        let inside = self
            .builder
            .build_int_compare(IntPredicate::ULT, row, n, "")
            .map_err(err)?;
        self.builder
            .build_conditional_branch(inside, work, done)
            .map_err(err)?;
        self.builder.position_at_end(work);
        let stride = self.udiv(self.add(m, self.int(3))?, self.int(4))?;
        let tensor = self
            .builder
            .build_int_compare(IntPredicate::NE, per_tensor, self.int(0), "")
            .map_err(err)?;
        let (acc_re, acc_im) = (self.local(self.float(0.0))?, self.local(self.float(0.0))?);
        let shfl = self.intrinsic("llvm.nvvm.shfl.sync.bfly.f32", &[])?;
        self.strided_loop(f, self.int(0), rows, self.int(1), |r| {
            self.set(acc_re, self.float(0.0))?;
            self.set(acc_im, self.float(0.0))?;
            let x_base = self.mul(self.mul(r, m)?, self.int(2))?;
            self.strided_loop(f, lane, m, self.int(32), |j| {
                let xr = self.load_f32(x, self.add(x_base, self.mul(j, self.int(2))?)?)?;
                let xi = self.load_f32(
                    x,
                    self.add(x_base, self.add(self.mul(j, self.int(2))?, self.int(1))?)?,
                )?;
                let g = self.udiv(j, group_len)?;
                let group_at =
                    self.mul(self.add(self.mul(row, groups_per_row)?, g)?, self.int(2))?;
                let scale_at = self
                    .builder
                    .build_select(tensor, self.int(0), group_at, "")
                    .map_err(err)?
                    .into_int_value();
                let byte_at = self.add(self.mul(row, stride)?, self.udiv(j, self.int(4))?)?;
                let shift = self.mul(self.urem(j, self.int(4))?, self.int(2))?;
                let shift = self
                    .builder
                    .build_int_truncate(shift, self.context.i8_type(), "")
                    .map_err(err)?;
                for s in 0..stages {
                    let codes = self.param_ptr(f, 2 + 2 * s as u32);
                    let scales = self.param_ptr(f, 3 + 2 * s as u32);
                    let p = self.gep(self.context.i8_type(), codes, byte_at)?;
                    let byte = self
                        .builder
                        .build_load(self.context.i8_type(), p, "")
                        .map_err(err)?
                        .into_int_value();
                    let code = self
                        .builder
                        .build_right_shift(byte, shift, false, "")
                        .map_err(err)?;
                    let code = self
                        .builder
                        .build_and(code, self.context.i8_type().const_int(3, false), "")
                        .map_err(err)?;
                    let s_re = self.load_f32(scales, scale_at)?;
                    let s_im = self.load_f32(scales, self.add(scale_at, self.int(1))?)?;
                    // conj(x) for the W stages.
                    let xi = if s >= u_stages { self.fneg(xi)? } else { xi };
                    // Codes 0..3 are +1, +i, −1, −i: the product with x is
                    // ±s_re·(xr, xi) or ±s_im·(−xi, xr).
                    let imaginary = self
                        .builder
                        .build_and(code, self.context.i8_type().const_int(1, false), "")
                        .map_err(err)?;
                    let imaginary = self
                        .builder
                        .build_int_compare(
                            IntPredicate::NE,
                            imaginary,
                            self.context.i8_type().const_int(0, false),
                            "",
                        )
                        .map_err(err)?;
                    let negative = self
                        .builder
                        .build_int_compare(
                            IntPredicate::UGE,
                            code,
                            self.context.i8_type().const_int(2, false),
                            "",
                        )
                        .map_err(err)?;
                    let scale = self
                        .builder
                        .build_select(imaginary, s_im, s_re, "")
                        .map_err(err)?
                        .into_float_value();
                    let scale = self
                        .builder
                        .build_select(negative, self.fneg(scale)?, scale, "")
                        .map_err(err)?
                        .into_float_value();
                    let a = self
                        .builder
                        .build_select(imaginary, self.fneg(xi)?, xr, "")
                        .map_err(err)?
                        .into_float_value();
                    let b = self
                        .builder
                        .build_select(imaginary, xr, xi, "")
                        .map_err(err)?
                        .into_float_value();
                    self.set(acc_re, self.fadd(self.get(acc_re)?, self.fmul(scale, a)?)?)?;
                    self.set(acc_im, self.fadd(self.get(acc_im)?, self.fmul(scale, b)?)?)?;
                }
                Ok(())
            })?;
            let mut re = self.get(acc_re)?;
            let mut im = self.get(acc_im)?;
            for delta in [16u64, 8, 4, 2, 1] {
                let mask = self.i32().const_all_ones().into();
                let d = self.i32().const_int(delta, false).into();
                let c = self.i32().const_int(31, false).into();
                re = self.fadd(
                    re,
                    self.call(shfl, &[mask, re.into(), d, c])?
                        .into_float_value(),
                )?;
                im = self.fadd(
                    im,
                    self.call(shfl, &[mask, im.into(), d, c])?
                        .into_float_value(),
                )?;
            }
            let first = self.context.append_basic_block(f, "first_lane");
            let next = self.context.append_basic_block(f, "next_row");
            let is_first = self
                .builder
                .build_int_compare(IntPredicate::EQ, lane, self.int(0), "")
                .map_err(err)?;
            self.builder
                .build_conditional_branch(is_first, first, next)
                .map_err(err)?;
            self.builder.position_at_end(first);
            let at = self.mul(self.add(self.mul(r, n)?, row)?, self.int(2))?;
            self.store_f32(out, at, re)?;
            self.store_f32(out, self.add(at, self.int(1))?, im)?;
            self.builder.build_unconditional_branch(next).map_err(err)?;
            self.builder.position_at_end(next);
            Ok(())
        })?;
        self.builder.build_unconditional_branch(done).map_err(err)?;
        self.builder.position_at_end(done);
        self.ret()
    }
}

#[derive(Clone, Copy)]
enum Param {
    Ptr,
    I64,
    F32,
}
