//! Fairy2i's `quant_linear` on int8 activations with integer dot products
//! (design (a) of ../shared/research/gpu-anchors.md): a byte of codes is
//! four codes, and a `prmt` byte permute turns four of them into the
//! signed bytes of their real parts (+1, 0, −1, 0 for +1, +i, −1, −i) or
//! of their imaginary parts; `dp4a` multiplies those with four int8
//! activations and adds. No floating-point work per weight: each stage's
//! four integer sums are scaled once per output.
//!
//! Codes `j` of a 32-bit word sit at bits `2j..2j+2`. Masking the word with
//! `0x33333333` leaves the even codes one to a nibble (`prmt`'s selectors),
//! the word shifted right by two the odd ones; so the activations of each
//! run of 16 inputs are stored in that order (in shared memory, quantized
//! by the block before the products: [`Gen::quant_linear_i8`]):
//! inputs 0 2 4 6 | 8 10 12 14 | 1 3 5 7 | 9 11 13 15, real parts in four
//! words, then the imaginary parts in four more: a run's eight words
//! together, run after run, so that a lane reads them in two 128-bit loads
//! ([`Gen::quantize_row`]; the lanes of a quarter-warp, 32 bytes apart, then
//! meet each bank twice).
//!
//! Each warp's loads of code words go out one task (an output row's step)
//! ahead of its products, the first before the block quantizes the row:
//! a product at decode is a chain of dependent reads, and this takes the
//! codes' latency out of it.

use super::*;

/// Complex inputs per run of one code word (16 codes of 2 bits).
pub const RUN: usize = 16;

/// Runs a lane takes per step of its loop (their loads in flight at once).
const RUNS_PER_STEP: u64 = 4;

/// The most complex inputs a row may have: its int8 words (two bytes an
/// input) and the block reductions' scratch fill at most the 48 KiB of
/// shared memory a launch gets without opting in.
pub const MAX_INPUTS: usize = (48 * 1024 - 4 * SCRATCH_WORDS as usize) / 2 / RUN * RUN;

/// Threads of [`Gen::quantize_rows_i8`]'s blocks: one block quantizes a
/// row alone, so more threads keep more of its loads in flight.
pub const QUANTIZE_THREADS: u32 = 512;

/// How many elements of the input row each thread of a product's block
/// loads at once (their latencies overlapping): `(for the row's
/// statistics, words of the quantized row it writes)`. Fewer where each
/// element is more loads (a gain, a prologue's operands): the warp's next
/// code words are held in registers meanwhile.
fn loads_per_thread(normed: bool, prologue: bool) -> (u64, u64) {
    match (normed, prologue) {
        (_, true) => (4, 1),
        (true, false) => (4, 2),
        (false, false) => (8, 4),
    }
}

/// Blocks of the int8 kernel per multiprocessor at most: each block
/// quantizes the input row again, so more blocks than run at once would
/// only repeat that work. (The products of rows quantized before keep the
/// cap: only copying a row, they were not measured with another.)
pub const BLOCKS_PER_MULTIPROCESSOR: usize = 2;

/// The int8 kernel's grid for `n` output rows of `rows` input rows on a
/// GPU of `multiprocessors`: across, a warp per output row up to the cap
/// (beyond it each warp takes several); down, the input rows split over
/// as many blocks as the cap leaves room for (a prompt's rows on a narrow
/// layer would otherwise leave most multiprocessors idle).
pub fn grid(n: usize, rows: usize, multiprocessors: usize) -> (u32, u32) {
    let cap = multiprocessors * BLOCKS_PER_MULTIPROCESSOR;
    let across = n.div_ceil(QUANT_ROWS_PER_BLOCK as usize).min(cap).max(1);
    let down = (cap / across).clamp(1, rows.max(1));
    (across as u32, down as u32)
}

/// The signed bytes `prmt` picks for codes 0..3 (+1, +i, −1, −i): real
/// parts (1, 0, −1, 0), imaginary parts (0, 1, 0, −1).
pub(super) const REAL_BYTES: u64 = 0x00FF_0001;
pub(super) const IMAGINARY_BYTES: u64 = 0xFF00_0100;

/// The most products one launch of the int8 kernel computes from one
/// input row (q, k and v read one row; gate and up another).
pub const MAX_PRODUCTS: usize = 4;

/// What an int8 product kernel is built for: [`Kernel::QuantLinearI8`]'s
/// fields.
#[derive(Clone, Copy)]
pub(super) struct Int8Kernel<'a> {
    pub stages: (usize, usize),
    pub paired: (bool, bool),
    pub normed: bool,
    pub products: usize,
    pub residual: bool,
    pub prologue: Option<&'a Expr>,
    /// Its input rows quantized by a kernel before
    /// ([`Gen::quantize_rows_i8`]): no pairing, norm or prologue of its
    /// own.
    pub quantized: bool,
}

/// The rows an int8 product quantizes: one operand's, or an elementwise
/// expression's over several operands of the same shape (the prologue).
pub(super) struct RowInput<'a, 'ctx> {
    pub operands: Vec<PointerValue<'ctx>>,
    pub expr: Option<&'a Expr>,
}

/// Where the quantized row's words hold which inputs (in shared memory,
/// and in global memory where a kernel of their own quantizes the rows).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum RowLayout {
    /// Run by run, in the order the code words' `prmt` selectors take
    /// their codes (the module docs): `quant_linear_i8`'s.
    Runs,
    /// Chunk by chunk of 32 inputs, real parts (eight words, four
    /// consecutive inputs each) then imaginary: `mma`'s B fragments
    /// ([`super::quant_mma`]).
    Chunks,
}

/// The pointers an int8 kernel that quantizes its rows takes for them: the
/// rows (or a prologue's operands), the pairing table, the norm's gain
/// ([`Gen::row_input_params`]); an error where the folds do not go
/// together.
fn row_input_pointers(paired_input: bool, normed: bool, prologue: Option<&Expr>) -> Built<usize> {
    if normed && !paired_input {
        return Err("a normed int8 row is a paired input".into());
    }
    if prologue.is_some() && (normed || !paired_input) {
        return Err("an int8 row's prologue reads a paired input, not normed".into());
    }
    let inputs = prologue.map_or(1, operand_count);
    Ok(inputs + usize::from(paired_input) + usize::from(normed))
}

/// How many operands an elementwise expression reads (its highest operand
/// index, plus one).
pub(crate) fn operand_count(expr: &Expr) -> usize {
    match expr {
        Expr::Operand(k) => k + 1,
        Expr::Apply(_, args) => args.iter().map(operand_count).max().unwrap_or(0),
    }
}

/// One product's parameters in the int8 kernel: where its outputs go, its
/// stages' codes and scales, its outputs `n`, whether its scales are
/// per-tensor, with a paired output its table and real row length, and the
/// residual row its epilogue adds.
#[derive(Clone)]
pub(super) struct Layer<'ctx> {
    pub out: PointerValue<'ctx>,
    pub codes: Vec<PointerValue<'ctx>>,
    pub scales: Vec<PointerValue<'ctx>>,
    pub n: IntValue<'ctx>,
    pub per_tensor: IntValue<'ctx>,
    pub output: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
    pub residual: Option<PointerValue<'ctx>>,
}

/// Where an int8 product's blocks take their int8 input rows from.
pub(super) enum Int8Rows<'a, 'ctx> {
    /// Each block quantizes them ([`Gen::quantize_row`]): the rows, the
    /// pairing table of a paired input and its row's words, a folded
    /// norm's gain and eps.
    Quantize {
        x: RowInput<'a, 'ctx>,
        input: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
        norm: Option<(PointerValue<'ctx>, FloatValue<'ctx>)>,
    },
    /// A kernel before quantized them ([`Gen::quantize_rows_i8`]): `m / 2`
    /// words a row, and a step a row.
    Quantized {
        int8_rows: PointerValue<'ctx>,
        row_steps: PointerValue<'ctx>,
    },
}

/// An int8 product kernel's parameters ([`Gen::int8_signature`]): the
/// function, where its int8 rows come from, `rows` and `m`, each
/// product's parameters, and their output rows together.
pub(super) struct Int8Signature<'a, 'ctx> {
    pub f: FunctionValue<'ctx>,
    pub source: Int8Rows<'a, 'ctx>,
    pub rows: IntValue<'ctx>,
    pub m: IntValue<'ctx>,
    pub layers: Vec<Layer<'ctx>>,
    /// The products' output rows together.
    pub n: IntValue<'ctx>,
}

/// Where a warp keeps the loads of its next task (see
/// [`Gen::quant_linear_i8`]): code words by run and stage, and the row's
/// scales by stage.
struct TaskSlots<'ctx> {
    codes: Vec<Vec<PointerValue<'ctx>>>,
    scales: Vec<(PointerValue<'ctx>, PointerValue<'ctx>)>,
}

impl<'ctx> Gen<'ctx> {
    /// Declares an int8 kernel of `ptrs` pointers, then `ints` integers
    /// (the first two `rows` and `m`, returned with the function), then a
    /// norm's eps where `normed`.
    fn declare_int8(
        &self,
        name: &str,
        (ptrs, ints): (usize, usize),
        normed: bool,
    ) -> (FunctionValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>) {
        let mut params = vec![Param::Ptr; ptrs];
        params.extend(vec![Param::I64; ints]);
        if normed {
            params.push(Param::F32);
        }
        let f = self.declare(name, &params);
        let first_int = ptrs as u32;
        (
            f,
            self.param_int(f, first_int),
            self.param_int(f, first_int + 1),
        )
    }

    /// The parameters of rows an int8 kernel quantizes: the rows (or a
    /// prologue's operands) from pointer 0, then the pairing table and the
    /// norm's gain where there are; the table's row words after `rows` and
    /// `m` at `ints_at`, the norm's eps at `eps_at`
    /// ([`row_input_pointers`] counts the pointers).
    fn row_input_params<'a>(
        &self,
        f: FunctionValue<'ctx>,
        (paired_input, normed, prologue): (bool, bool, Option<&'a Expr>),
        (ints_at, eps_at): (u32, u32),
    ) -> Int8Rows<'a, 'ctx> {
        let inputs = prologue.map_or(1, operand_count) as u32;
        Int8Rows::Quantize {
            x: RowInput {
                operands: (0..inputs).map(|k| self.param_ptr(f, k)).collect(),
                expr: prologue,
            },
            input: paired_input
                .then(|| (self.param_ptr(f, inputs), self.param_int(f, ints_at + 2))),
            norm: normed.then(|| {
                let gain = self.param_ptr(f, inputs + u32::from(paired_input));
                (gain, self.param_float(f, eps_at))
            }),
        }
    }

    /// Declares an int8 product kernel for `kernel` (the parameters of
    /// [`Gen::quant_linear_i8`], shared by [`Gen::quant_linear_mma`]) and
    /// names its parameters.
    pub(super) fn int8_signature<'a>(
        &self,
        name: &str,
        kernel: Int8Kernel<'a>,
    ) -> Built<Int8Signature<'a, 'ctx>> {
        let Int8Kernel {
            stages: (u_stages, w_stages),
            paired: (paired_input, paired_output),
            normed,
            products,
            residual,
            prologue,
            quantized,
        } = kernel;
        if quantized && (paired_input || normed || prologue.is_some()) {
            return Err("an int8 product of quantized rows reads them as they are".into());
        }
        // Quantized rows: their words and steps.
        let shared_ptrs = if quantized {
            2
        } else {
            row_input_pointers(paired_input, normed, prologue)?
        };
        if residual && !paired_output {
            return Err("an int8 product's residual epilogue writes a paired output".into());
        }
        if !(1..=MAX_PRODUCTS).contains(&products) {
            return Err(format!(
                "an int8 launch computes 1 to {MAX_PRODUCTS} products"
            ));
        }
        let stages = u_stages + w_stages;
        let layer_ptrs = 1 + 2 * stages + usize::from(paired_output) + usize::from(residual);
        let ptrs = shared_ptrs + products * layer_ptrs;
        let layer_ints = 2 + usize::from(paired_output);
        let shared_ints = 2 + usize::from(paired_input);
        let ints = shared_ints + products * layer_ints;
        let (f, rows, m) = self.declare_int8(name, (ptrs, ints), normed);
        let first_int = ptrs as u32;
        let source = if quantized {
            Int8Rows::Quantized {
                int8_rows: self.param_ptr(f, 0),
                row_steps: self.param_ptr(f, 1),
            }
        } else {
            let input = (paired_input, normed, prologue);
            self.row_input_params(f, input, (first_int, (ptrs + ints) as u32))
        };
        let layers: Vec<Layer> = (0..products)
            .map(|l| {
                let ptr = (shared_ptrs + l * layer_ptrs) as u32;
                let int = first_int + (shared_ints + l * layer_ints) as u32;
                let after_table = ptr + 1 + 2 * stages as u32 + u32::from(paired_output);
                Layer {
                    out: self.param_ptr(f, ptr),
                    codes: (0..stages as u32)
                        .map(|s| self.param_ptr(f, ptr + 1 + 2 * s))
                        .collect(),
                    scales: (0..stages as u32)
                        .map(|s| self.param_ptr(f, ptr + 2 + 2 * s))
                        .collect(),
                    n: self.param_int(f, int),
                    per_tensor: self.param_int(f, int + 1),
                    output: paired_output.then(|| {
                        (
                            self.param_ptr(f, ptr + 1 + 2 * stages as u32),
                            self.param_int(f, int + 2),
                        )
                    }),
                    residual: residual.then(|| self.param_ptr(f, after_table)),
                }
            })
            .collect();
        // The products' rows follow one another.
        let mut n = layers[0].n;
        for layer in &layers[1..] {
            n = self.add(n, layer.n)?;
        }
        Ok(Int8Signature {
            f,
            source,
            rows,
            m,
            layers,
            n,
        })
    }

    /// `quant_linear_i8`: [`Gen::quant_linear`] with each row of `x`
    /// quantized to int8 first, `m` a multiple of 16 (at most
    /// [`MAX_INPUTS`]), per-tensor or per-channel scales (`(s_re, s_im)` at
    /// 0, or at `2·row`), for `products` products of the same input row at
    /// once (their output rows one after another: the warp of a row picks
    /// its product's pointers by selects). Parameters: `x` (or a prologue's
    /// operands, below), `[in_table]`,
    /// `[gain]`, then per product `out`, `(codes, scales)` per stage,
    /// `[out_table]`, `[residual]`; `rows`, `m`, `[in_words]`, then per
    /// product `n`, `per_tensor`, `[out_words]`; `[eps]`.
    ///
    /// The grid's rows of blocks take the input rows in turn ([`grid`]). A
    /// block of [`QUANT_ROWS_PER_BLOCK`] warps first quantizes its input
    /// row into shared memory (`m / 2` words, dynamic: the launch gives their
    /// bytes); then each warp takes output rows in turn, a grid of warps
    /// apart (the launch caps the grid at a few blocks a multiprocessor, so
    /// that few blocks quantize the same row), each lane [`RUNS_PER_STEP`]
    /// runs of 16 inputs, 32 runs apart, a step: one code word per run and
    /// stage, loaded a step ahead (the module docs).
    ///
    /// Paired (`paired_input`, `paired_output`), part `p` of complex input
    /// `j` is `x[r·in_words + in_table[2j + p]]`, and part `p` of output `o`
    /// goes to `out[r·out_words + out_table[2o + p]]`.
    ///
    /// `normed` (paired input only): `x` is the row before an RMS norm with
    /// `gain` and `eps`; the row's norm is summed beside its maximum, and
    /// each part is scaled by its channel's gain as it is quantized. The
    /// norm's own scale is a factor of the whole row, so it only scales the
    /// step.
    ///
    /// `residual` (paired output only) is an epilogue, the folded reader of
    /// a product's real output: a residual row added to it.
    ///
    /// With a `prologue` (paired input, not normed), the row is that
    /// elementwise expression over the first `operand_count` parameters,
    /// rows of one shape: the producer of the product's input folded in
    /// (SiLU(gate)·up before down).
    ///
    /// `quantized`: the parameters start with the rows' int8 words and
    /// steps ([`Gen::quantize_rows_i8`]) instead of the rows, and each
    /// block copies its row's words into shared memory.
    pub(super) fn quant_linear_i8(&self, name: &str, kernel: Int8Kernel) -> Built<()> {
        let Int8Signature {
            f,
            source,
            rows,
            m,
            layers,
            n,
        } = self.int8_signature(name, kernel)?;
        let (u_stages, w_stages) = kernel.stages;
        let stages = u_stages + w_stages;
        let scratch = self.shared_scratch(name);
        let xq = self.dynamic_shared_words();
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let first_row = self.add(
            self.mul(self.sreg("ctaid.x")?, self.int(QUANT_ROWS_PER_BLOCK as u64))?,
            self.udiv(tid, self.int(32))?,
        )?;
        let grid_warps = self.mul(
            self.sreg("nctaid.x")?,
            self.int(QUANT_ROWS_PER_BLOCK as u64),
        )?;
        let runs = self.udiv(m, self.int(RUN as u64))?;
        // Per stage: Σ re(c)·xr, Σ im(c)·xi, Σ im(c)·xr, Σ re(c)·xi.
        let sums: Vec<[PointerValue<'ctx>; 4]> = (0..stages)
            .map(|_| {
                Ok([
                    self.local_int()?,
                    self.local_int()?,
                    self.local_int()?,
                    self.local_int()?,
                ])
            })
            .collect::<Built<_>>()?;
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        // A warp's work is a sequence of tasks: the steps of its output rows
        // (each [`RUNS_PER_STEP`] runs a lane), rows a grid of warps apart.
        // The loads of a task go out one task ahead, into these slots: the
        // memory's latency then overlaps the step before (for the first
        // task, the block's quantization of the input row).
        let steps = self.udiv(
            self.add(runs, self.int(32 * RUNS_PER_STEP - 1))?,
            self.int(32 * RUNS_PER_STEP),
        )?;
        let ahead = TaskSlots {
            codes: (0..RUNS_PER_STEP)
                .map(|_| (0..stages).map(|_| self.local_int()).collect())
                .collect::<Built<_>>()?,
            scales: (0..stages)
                .map(|_| Ok((self.local(self.float(0.0))?, self.local(self.float(0.0))?)))
                .collect::<Built<_>>()?,
        };
        let row_slot = self.local_i64(first_row)?;
        let step_slot = self.local_i64(self.int(0))?;
        let has_rows = self.ult(first_row, n)?;
        let warp_rows = self.select(
            has_rows,
            self.add(
                self.udiv(self.sub(self.sub(n, first_row)?, self.int(1))?, grid_warps)?,
                self.int(1),
            )?,
            self.int(0),
        )?;
        let tasks = self.mul(warp_rows, steps)?;
        let (first_input_row, blocks_down) = (self.sreg("ctaid.y")?, self.sreg("nctaid.y")?);
        self.strided_loop(f, first_input_row, rows, blocks_down, |r| {
            // Quantized rows leave the loop over rows so little else that
            // LLVM would hoist the first task's twenty addresses out of
            // it, held in registers throughout.
            let first_row = if kernel.quantized {
                self.loop_variant(first_row, r)?
            } else {
                first_row
            };
            self.set_i64(row_slot, first_row)?;
            self.set_i64(step_slot, self.int(0))?;
            self.when(f, has_rows, || {
                self.load_task(&layers, (first_row, self.int(0)), (lane, runs), &ahead)
            })?;
            let x_step =
                self.row_into_shared(f, &source, (scratch, xq), (r, m), RowLayout::Runs)?;
            self.call_void(barrier, &[])?;
            self.strided_loop(f, self.int(0), tasks, self.int(1), |_| {
                let (row, at_step) = (self.get_i64(row_slot)?, self.get_i64(step_slot)?);
                let codes = ahead
                    .codes
                    .iter()
                    .map(|run| run.iter().map(|&slot| self.get_int(slot)).collect())
                    .collect::<Built<Vec<Vec<_>>>>()?;
                let stage_scales = ahead
                    .scales
                    .iter()
                    .map(|&(re, im)| Ok((self.get(re)?, self.get(im)?)))
                    .collect::<Built<Vec<_>>>()?;
                // The next task: this row's next step, or the warp's next
                // row; past the warp's last, this task again (its loads
                // are then cache hits, and unused).
                let last_step = self.eq_int(self.add(at_step, self.int(1))?, steps)?;
                let next_row = self.select(last_step, self.add(row, grid_warps)?, row)?;
                let next_step =
                    self.select(last_step, self.int(0), self.add(at_step, self.int(1))?)?;
                self.set_i64(row_slot, next_row)?;
                self.set_i64(step_slot, next_step)?;
                let more = self.ult(next_row, n)?;
                let next = (
                    self.select(more, next_row, row)?,
                    self.select(more, next_step, at_step)?,
                );
                self.load_task(&layers, next, (lane, runs), &ahead)?;
                // Where the row's outputs go, and their residuals: read
                // now, so that their latency overlaps the products.
                let (layer, local_row) = self.layer_of_row(&layers, row)?;
                let output = self.output_places(&layer, (r, local_row))?;
                let first_step = self.eq_int(at_step, self.int(0))?;
                for sum in sums.iter().flatten() {
                    let kept =
                        self.select(first_step, self.i32().const_zero(), self.get_int(*sum)?)?;
                    self.builder.build_store(*sum, kept).map_err(err)?;
                }
                let first_run = self.add(self.mul(at_step, self.int(32 * RUNS_PER_STEP))?, lane)?;
                for (j, run_codes) in codes.iter().enumerate() {
                    let this = self.add(first_run, self.int(32 * j as u64))?;
                    // A run past the row read run 0's codes and adds
                    // nothing: its activations count as zeros.
                    let inside = self.ult(this, runs)?;
                    let at = self.select(inside, this, self.int(0))?;
                    let words = self
                        .run_words(xq, at)?
                        .into_iter()
                        .map(|w| self.select(inside, w, self.i32().const_zero()))
                        .collect::<Built<Vec<_>>>()?;
                    for (word, sum) in run_codes.iter().zip(&sums) {
                        self.accumulate_run(*word, &words, sum)?;
                    }
                }
                self.when(f, last_step, || {
                    let (re, im) = self.combine_stages(&sums, &stage_scales, u_stages)?;
                    let re = self.warp_sum(self.fmul(re, x_step)?)?;
                    let im = self.warp_sum(self.fmul(im, x_step)?)?;
                    let first = self.eq_int(lane, self.int(0))?;
                    self.when(f, first, || {
                        for ((at, residual), v) in output.iter().zip([re, im]) {
                            let v = match residual {
                                Some(residual) => self.fadd(v, *residual)?,
                                None => v,
                            };
                            self.store_f32(layer.out, *at, v)?;
                        }
                        Ok(())
                    })
                })
            })?;
            // The next row's quantization overwrites the shared words.
            self.call_void(barrier, &[])
        })?;
        self.ret()
    }

    /// `quantize_rows_i8`: the input rows of an int8 product quantized
    /// once, for all the blocks of the [`Gen::quant_linear_i8`] that reads
    /// them (each would otherwise quantize every row it takes). Parameters:
    /// `x` (or a prologue's operands), `[in_table]`, `[gain]`, `words`,
    /// `steps`; `rows`, `m`, `[in_words]`; `[eps]`, as the product's
    /// (`paired_input`, `normed` and `prologue` mean what they mean
    /// there). Block `b` of [`QUANTIZE_THREADS`] threads takes rows `b`,
    /// `b + blocks`, ...: row `r`'s `m / 2` words go to `words[r·m/2..]` in
    /// `layout`, the order the product reads them, its step to `steps[r]`.
    pub(super) fn quantize_rows_i8(
        &self,
        name: &str,
        (paired_input, normed): (bool, bool),
        prologue: Option<&Expr>,
        layout: RowLayout,
    ) -> Built<()> {
        let shared_ptrs = row_input_pointers(paired_input, normed, prologue)?;
        let ptrs = shared_ptrs + 2;
        let ints = 2 + usize::from(paired_input);
        let (f, rows, m) = self.declare_int8(name, (ptrs, ints), normed);
        let first_int = ptrs as u32;
        let input = (paired_input, normed, prologue);
        let Int8Rows::Quantize { x, input, norm } =
            self.row_input_params(f, input, (first_int, (ptrs + ints) as u32))
        else {
            unreachable!("the rows before quantization")
        };
        let (words, steps) = (
            self.param_ptr(f, shared_ptrs as u32),
            self.param_ptr(f, shared_ptrs as u32 + 1),
        );
        let scratch = self
            .shared_array(
                self.f32().array_type(QUANTIZE_THREADS / 32),
                &format!("{name}_scratch"),
            )
            .as_pointer_value();
        let row_words = self.udiv(m, self.int(2))?;
        let first = self.eq_int(self.sreg("tid.x")?, self.int(0))?;
        // A block alone on its row, with registers to spare: more loads in
        // flight than a product's block keeps beside its code words.
        let loads = (8, 4);
        let (block, blocks) = (self.sreg("ctaid.x")?, self.sreg("nctaid.x")?);
        self.strided_loop(f, block, rows, blocks, |r| {
            let row = self.gep(self.i32(), words, self.mul(r, row_words)?)?;
            let input = (&x, input, norm);
            let step = self.quantize_row(f, (scratch, row), input, (r, m), layout, loads)?;
            self.when(f, first, || self.store_f32(steps, r, step))
        })?;
        self.ret()
    }

    /// Row `r` of a product's int8 rows into `xq` (shared) in `layout`,
    /// the block together: quantized there, or copied where a kernel before
    /// quantized it. Returns the row's step.
    pub(super) fn row_into_shared(
        &self,
        f: FunctionValue<'ctx>,
        source: &Int8Rows<'_, 'ctx>,
        (scratch, xq): (PointerValue<'ctx>, PointerValue<'ctx>),
        (r, m): (IntValue<'ctx>, IntValue<'ctx>),
        layout: RowLayout,
    ) -> Built<FloatValue<'ctx>> {
        match source {
            Int8Rows::Quantize { x, input, norm } => {
                let loads = loads_per_thread(norm.is_some(), x.expr.is_some());
                let input = (x, *input, *norm);
                self.quantize_row(f, (scratch, xq), input, (r, m), layout, loads)
            }
            Int8Rows::Quantized {
                int8_rows,
                row_steps,
            } => {
                self.copy_row(f, (*int8_rows, xq), (r, m))?;
                self.load_f32(*row_steps, r)
            }
        }
    }

    /// Copies row `r`'s `m / 2` int8 words, quantized before, from `words`
    /// (global) into `xq` (shared), the block together, four words a load.
    fn copy_row(
        &self,
        f: FunctionValue<'ctx>,
        (words, xq): (PointerValue<'ctx>, PointerValue<'ctx>),
        (r, m): (IntValue<'ctx>, IntValue<'ctx>),
    ) -> Built<()> {
        let quad = self.i32().vec_type(4);
        let quads = self.udiv(m, self.int(8))?;
        let base = self.mul(r, quads)?;
        let aligned = |inst: Option<inkwell::values::InstructionValue<'ctx>>| -> Built<()> {
            inst.expect("a memory access")
                .set_alignment(16)
                .map_err(err)
        };
        let load = |inside, safe: IntValue<'ctx>, at| -> Built<_> {
            let p = self.gep(
                self.i32(),
                words,
                self.mul(self.add(base, safe)?, self.int(4))?,
            )?;
            let v = self.builder.build_load(quad, p, "").map_err(err)?;
            aligned(v.as_instruction_value())?;
            Ok((inside, at, v))
        };
        self.block_loop_by(f, quads, 2, load, |loaded| {
            for (inside, at, v) in loaded {
                self.when(f, inside, || {
                    let p = self.gep(self.i32(), xq, self.mul(at, self.int(4))?)?;
                    let store = self.builder.build_store(p, v).map_err(err)?;
                    aligned(Some(store))
                })?;
            }
            Ok(())
        })
    }

    /// Loads task `(row, step)` of a warp into `slots`: each lane's code
    /// words of its [`RUNS_PER_STEP`] runs of the step (a run past the row
    /// reads run 0), and the row's scales (per-tensor: the first pair).
    fn load_task(
        &self,
        layers: &[Layer<'ctx>],
        (row, step): (IntValue<'ctx>, IntValue<'ctx>),
        (lane, runs): (IntValue<'ctx>, IntValue<'ctx>),
        slots: &TaskSlots<'ctx>,
    ) -> Built<()> {
        let (layer, row) = self.layer_of_row(layers, row)?;
        let row_words = self.mul(row, runs)?;
        let first_run = self.add(self.mul(step, self.int(32 * RUNS_PER_STEP))?, lane)?;
        for (j, run_slots) in slots.codes.iter().enumerate() {
            let this = self.add(first_run, self.int(32 * j as u64))?;
            let at = self.select(self.ult(this, runs)?, this, self.int(0))?;
            for (&codes, &slot) in layer.codes.iter().zip(run_slots) {
                let word = self.load_i32(codes, self.add(row_words, at)?)?;
                self.builder.build_store(slot, word).map_err(err)?;
            }
        }
        let tensor = self.is_set(layer.per_tensor)?;
        let scale_at = self.select(tensor, self.int(0), self.mul(row, self.int(2))?)?;
        for (&scales, &(re, im)) in layer.scales.iter().zip(&slots.scales) {
            self.set(re, self.load_f32(scales, scale_at)?)?;
            self.set(im, self.load_f32(scales, self.add(scale_at, self.int(1))?)?)?;
        }
        Ok(())
    }

    /// Where the real and imaginary parts of output `row` of input row `r`
    /// go (`2·(r·n + row)` and the next word, or paired: through the
    /// layer's table), and the residual each adds.
    #[allow(clippy::type_complexity)]
    pub(super) fn output_places(
        &self,
        layer: &Layer<'ctx>,
        (r, row): (IntValue<'ctx>, IntValue<'ctx>),
    ) -> Built<[(IntValue<'ctx>, Option<FloatValue<'ctx>>); 2]> {
        let Some((table, words)) = layer.output else {
            let at = self.mul(self.add(self.mul(r, layer.n)?, row)?, self.int(2))?;
            return Ok([(at, None), (self.add(at, self.int(1))?, None)]);
        };
        let row_base = self.mul(r, words)?;
        let place = |part: u64| -> Built<(IntValue<'ctx>, Option<FloatValue<'ctx>>)> {
            let slot = self.add(self.mul(row, self.int(2))?, self.int(part))?;
            let at = self.add(row_base, self.widen(self.load_i32(table, slot)?)?)?;
            let residual = layer
                .residual
                .map(|residual| self.load_f32(residual, at))
                .transpose()?;
            Ok((at, residual))
        };
        Ok([place(0)?, place(1)?])
    }

    /// The product that output row `row` of a launch belongs to (the
    /// products' rows follow one another), and the row within it: the
    /// product's parameters chosen by selects, which cost a few
    /// instructions a row where a branch would split the warp's code.
    pub(super) fn layer_of_row(
        &self,
        layers: &[Layer<'ctx>],
        row: IntValue<'ctx>,
    ) -> Built<(Layer<'ctx>, IntValue<'ctx>)> {
        let mut picked = layers[0].clone();
        let mut local = row;
        let mut start = layers[0].n;
        for layer in &layers[1..] {
            let past = self
                .builder
                .build_int_compare(IntPredicate::UGE, row, start, "")
                .map_err(err)?;
            local = self.select(past, self.sub(row, start)?, local)?;
            let ptr = |a: PointerValue<'ctx>, b: PointerValue<'ctx>| self.select(past, a, b);
            picked.out = ptr(layer.out, picked.out)?;
            for (mine, theirs) in picked.codes.iter_mut().zip(&layer.codes) {
                *mine = ptr(*theirs, *mine)?;
            }
            for (mine, theirs) in picked.scales.iter_mut().zip(&layer.scales) {
                *mine = ptr(*theirs, *mine)?;
            }
            picked.n = self.select(past, layer.n, picked.n)?;
            picked.per_tensor = self.select(past, layer.per_tensor, picked.per_tensor)?;
            if let (Some(mine), Some(theirs)) = (&mut picked.output, layer.output) {
                *mine = (ptr(theirs.0, mine.0)?, self.select(past, theirs.1, mine.1)?);
            }
            if let (Some(mine), Some(theirs)) = (&mut picked.residual, layer.residual) {
                *mine = ptr(theirs, *mine)?;
            }
            start = self.add(start, layer.n)?;
        }
        Ok((picked, local))
    }

    /// The eight int8 words of run `run` of the quantized row (shared): two
    /// 128-bit loads, real parts then imaginary.
    fn run_words(&self, xq: PointerValue<'ctx>, run: IntValue<'ctx>) -> Built<Vec<IntValue<'ctx>>> {
        let quad = self.i32().vec_type(4);
        let mut words = Vec::with_capacity(8);
        for half in 0..2 {
            let at = self.add(self.mul(run, self.int(8))?, self.int(4 * half))?;
            let p = self.gep(self.i32(), xq, at)?;
            let load = self.builder.build_load(quad, p, "").map_err(err)?;
            load.as_instruction_value()
                .expect("a load")
                .set_alignment(16)
                .map_err(err)?;
            let v = load.into_vector_value();
            for k in 0..4 {
                let word = self
                    .builder
                    .build_extract_element(v, self.i32().const_int(k, false), "")
                    .map_err(err)?;
                words.push(word.into_int_value());
            }
        }
        Ok(words)
    }

    /// Quantizes complex row `r` of `x[rows, m]` into `xq` (shared memory,
    /// or global where a kernel of their own quantizes the rows), the
    /// block together, in `layout`: by runs, word `k` of run `run` (the
    /// order of the module docs) at `8·run + k`, so that a lane reads a
    /// run's words in two 128-bit loads ([`Gen::run_words`]); by chunks,
    /// as the tensor-core kernel's B fragments read them
    /// ([`super::quant_mma`]). Returns the row's step,
    /// `max |part| / 127` (an all-zero row: zeros).
    ///
    /// With a paired input `(table, in_words)`, the row is real, of
    /// `in_words` words, and the table gives each part's word in it (the
    /// pairing is a bijection: its maximum is the whole row's).
    ///
    /// With a norm `(gain, eps)`, each word of the real row is scaled by its
    /// gain first, and the step by the row's `1/sqrt(mean(x²) + eps)`.
    ///
    /// Each thread loads `loads.0` elements at once for the statistics and
    /// quantizes `loads.1` words at once.
    #[allow(clippy::type_complexity)]
    pub(super) fn quantize_row(
        &self,
        f: FunctionValue<'ctx>,
        (scratch, xq): (PointerValue<'ctx>, PointerValue<'ctx>),
        (x, paired, norm): (
            &RowInput<'_, 'ctx>,
            Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
            Option<(PointerValue<'ctx>, FloatValue<'ctx>)>,
        ),
        (r, m): (IntValue<'ctx>, IntValue<'ctx>),
        layout: RowLayout,
        loads: (u64, u64),
    ) -> Built<FloatValue<'ctx>> {
        let parts = self.mul(m, self.int(2))?;
        let row_words = match paired {
            Some((_, words)) => words,
            None => parts,
        };
        let base = self.mul(r, row_words)?;
        let gain = norm.map(|(g, _)| g);
        if let Some((table, _)) = paired {
            // The table's lines into L1 while the row's statistics are
            // summed: the quantization reads its entries before the inputs.
            let lines = self.udiv(self.add(m, self.int(15))?, self.int(16))?;
            let tid = self.sreg("tid.x")?;
            self.strided_loop(f, tid, lines, self.sreg("ntid.x")?, |line| {
                self.prefetch_i32(table, self.mul(line, self.int(32))?)
            })?;
        }
        let (largest, squares) =
            self.row_statistics(f, scratch, (x, gain), (base, row_words), loads.0)?;
        let inverse = self.fdiv(self.float(127.0), self.fmax(largest, self.float(1e-30))?)?;
        let words = self.udiv(m, self.int(2))?;
        let per_thread = loads.1;
        // In phases: every word's table entries, then every input, then the
        // levels; so that each phase's loads are in flight together.
        let place = |inside, safe, w| Ok((inside, w, self.word_slots(safe, paired, layout)?));
        self.block_loop_by(f, words, per_thread, place, |placed| {
            let inputs = placed
                .iter()
                .map(|(_, _, slots)| {
                    slots
                        .iter()
                        .map(|&slot| {
                            let v = self.row_input(x, self.add(base, slot)?)?;
                            match gain {
                                Some(gain) => self.fmul(v, self.load_f32(gain, slot)?),
                                None => Ok(v),
                            }
                        })
                        .collect::<Built<Vec<_>>>()
                })
                .collect::<Built<Vec<_>>>()?;
            for ((inside, w, _), values) in placed.into_iter().zip(inputs) {
                let word = self.int8_word(&values, inverse)?;
                self.when(f, inside, || self.store_i32(xq, w, word))?;
            }
            Ok(())
        })?;
        let step = self.fdiv(largest, self.float(127.0))?;
        match (norm, squares) {
            (Some((_, eps)), Some(squares)) => {
                let words = self
                    .builder
                    .build_unsigned_int_to_float(row_words, self.f32(), "")
                    .map_err(err)?;
                let mean = self.fadd(self.fdiv(squares, words)?, eps)?;
                self.fdiv(step, self.sqrt(mean)?)
            }
            _ => Ok(step),
        }
    }

    /// Where word `w` of the quantized row in `layout` (by runs, word
    /// `k = w mod 8` of run `w / 8`; by chunks, [`RowLayout::Chunks`])
    /// takes its four inputs: their slots in the row (through the pairing
    /// table, if any).
    fn word_slots(
        &self,
        w: IntValue<'ctx>,
        paired: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
        layout: RowLayout,
    ) -> Built<Vec<IntValue<'ctx>>> {
        let slot_of = |j: IntValue<'ctx>, part: IntValue<'ctx>| {
            let slot = self.add(self.mul(j, self.int(2))?, part)?;
            match paired {
                Some((table, _)) => self.widen(self.load_i32(table, slot)?),
                None => Ok(slot),
            }
        };
        if layout == RowLayout::Chunks {
            // Word `w`: chunk `w / 16`, part `(w mod 16) / 8`, inputs
            // `4·(w mod 8)` to three after it within the chunk.
            let part = self.udiv(self.urem(w, self.int(16))?, self.int(8))?;
            let first = self.add(
                self.mul(self.udiv(w, self.int(16))?, self.int(32))?,
                self.mul(self.urem(w, self.int(8))?, self.int(4))?,
            )?;
            return (0..4u64)
                .map(|b| slot_of(self.add(first, self.int(b))?, part))
                .collect();
        }
        let k = self.urem(w, self.int(8))?;
        let run = self.udiv(w, self.int(8))?;
        let part = self.udiv(k, self.int(4))?;
        let sub = self.urem(k, self.int(4))?;
        // The word's first input in its run: 0, 8, 1, 9 for words 0..3 of
        // each part (8·(sub mod 2) + sub / 2), the next three of the same
        // parity after it.
        let first = self.add(
            self.mul(self.urem(sub, self.int(2))?, self.int(8))?,
            self.udiv(sub, self.int(2))?,
        )?;
        let first = self.add(self.mul(run, self.int(RUN as u64))?, first)?;
        (0..4u64)
            .map(|b| slot_of(self.add(first, self.int(2 * b))?, part))
            .collect()
    }

    /// Four values as the signed bytes of an int8 word, each rounded to
    /// its level of `1 / inverse` (clamped to ±127), the first lowest.
    fn int8_word(
        &self,
        values: &[FloatValue<'ctx>],
        inverse: FloatValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let mut word = self.i32().const_zero();
        for (b, &v) in values.iter().enumerate() {
            let level = self.round_even(self.fmul(v, inverse)?)?;
            let level = self.fmin(self.fmax(level, self.float(-127.0))?, self.float(127.0))?;
            let level = self
                .builder
                .build_float_to_signed_int(level, self.i32(), "")
                .map_err(err)?;
            let byte = self
                .builder
                .build_and(level, self.i32().const_int(0xFF, false), "")
                .map_err(err)?;
            let byte = self
                .builder
                .build_left_shift(byte, self.i32().const_int(8 * b as u64, false), "")
                .map_err(err)?;
            word = self.builder.build_or(word, byte, "").map_err(err)?;
        }
        Ok(word)
    }

    /// Element `at` of the rows `x` reads: its operand's, or its
    /// expression's over its operands' elements `at`.
    fn row_input(&self, x: &RowInput<'_, 'ctx>, at: IntValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let Some(expr) = x.expr else {
            return self.load_f32(x.operands[0], at);
        };
        let values = x
            .operands
            .iter()
            .map(|&p| Ok(Val::Real(self.load_f32(p, at)?)))
            .collect::<Built<Vec<_>>>()?;
        match self.eval(expr, &values, Elem::Real)? {
            Val::Real(v) => Ok(v),
            _ => Err("an int8 product's prologue gives real values".into()),
        }
    }

    /// A loop of the block over `0..len`, `per_thread` indices a
    /// thread a step (`i + threads·k`, so that their loads are in flight
    /// together): `each` starts the work of an index, given `(inside,
    /// clamped, index)` (the clamped one 0 past `len`, an index every
    /// caller may read), and `body` finishes the step's.
    fn block_loop_by<T>(
        &self,
        f: FunctionValue<'ctx>,
        len: IntValue<'ctx>,
        per_thread: u64,
        each: impl Fn(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>) -> Built<T>,
        body: impl FnOnce(Vec<T>) -> Built<()>,
    ) -> Built<()> {
        let tid = self.sreg("tid.x")?;
        let threads = self.sreg("ntid.x")?;
        let stride = self.mul(threads, self.int(per_thread))?;
        self.strided_loop(f, tid, len, stride, |i| {
            let started = (0..per_thread)
                .map(|k| {
                    let at = self.add(i, self.mul(threads, self.int(k))?)?;
                    let inside = self.ult(at, len)?;
                    each(inside, self.select(inside, at, self.int(0))?, at)
                })
                .collect::<Built<Vec<_>>>()?;
            body(started)
        })
    }

    /// The block's `max |x[base + i]·gain[i]|` over `i < len` (`len > 0`;
    /// a gain of 1 where there is none) and, with a gain, `Σ x[base + i]²`:
    /// each thread loads `per_thread` elements a step, all before it
    /// compares them, so that the loads' latencies overlap.
    fn row_statistics(
        &self,
        f: FunctionValue<'ctx>,
        scratch: PointerValue<'ctx>,
        (x, gain): (&RowInput<'_, 'ctx>, Option<PointerValue<'ctx>>),
        (base, len): (IntValue<'ctx>, IntValue<'ctx>),
        per_thread: u64,
    ) -> Built<(FloatValue<'ctx>, Option<FloatValue<'ctx>>)> {
        let largest = self.local(self.float(0.0))?;
        let squares = self.local(self.float(0.0))?;
        // Outside the row: element 0 of it, which the maximum counts
        // anyway (and the sum of squares leaves out).
        let load = |inside, at, _| {
            let v = self.row_input(x, self.add(base, at)?)?;
            let scaled = match gain {
                Some(g) => self.fmul(v, self.load_f32(g, at)?)?,
                None => v,
            };
            Ok((inside, v, scaled))
        };
        self.block_loop_by(f, len, per_thread, load, |loaded| {
            let mut most = self.get(largest)?;
            let mut sum = self.get(squares)?;
            for (inside, v, scaled) in loaded {
                most = self.fmax(most, self.fabs(scaled)?)?;
                if gain.is_some() {
                    let square = self.select(inside, self.fmul(v, v)?, self.float(0.0))?;
                    sum = self.fadd(sum, square)?;
                }
            }
            self.set(largest, most)?;
            self.set(squares, sum)
        })?;
        let most = self.block_reduce(scratch, self.get(largest)?, true)?;
        let sum = match gain {
            Some(_) => Some(self.block_reduce(scratch, self.get(squares)?, false)?),
            None => None,
        };
        Ok((most, sum))
    }

    /// Adds one code word's 16 products per stage into `sum`: its four
    /// selectors, the signed bytes `prmt` picks for each, and `dp4a` with
    /// the run's activation words (real parts in `x[0..4]`, imaginary in
    /// `x[4..8]`).
    fn accumulate_run(
        &self,
        word: IntValue<'ctx>,
        x: &[IntValue<'ctx>],
        sum: &[PointerValue<'ctx>; 4],
    ) -> Built<()> {
        let prmt = self.intrinsic("llvm.nvvm.prmt", &[])?;
        for (k, selector) in self.code_selectors(word)?.into_iter().enumerate() {
            let pick = |table: u64| -> Built<IntValue<'ctx>> {
                Ok(self
                    .call(
                        prmt,
                        &[
                            self.i32().const_int(table, false).into(),
                            self.i32().const_zero().into(),
                            selector.into(),
                        ],
                    )?
                    .into_int_value())
            };
            let (re, im) = (pick(REAL_BYTES)?, pick(IMAGINARY_BYTES)?);
            let (xr, xi) = (x[k], x[4 + k]);
            for (slot, (c, v)) in sum.iter().zip([(re, xr), (im, xi), (im, xr), (re, xi)]) {
                let old = self.get_int(*slot)?;
                self.builder
                    .build_store(*slot, self.dp4a(c, v, old)?)
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// The lane's output from its integer sums: `re += s_re·Σre·xr ∓
    /// s_im·Σim·xi`, `im += ±s_re·Σre·xi + s_im·Σim·xr` (upper signs for the
    /// U stages on x, lower for the W stages on conj x).
    pub(super) fn combine_stages(
        &self,
        sums: &[[PointerValue<'ctx>; 4]],
        scales: &[(FloatValue<'ctx>, FloatValue<'ctx>)],
        u_stages: usize,
    ) -> Built<(FloatValue<'ctx>, FloatValue<'ctx>)> {
        let mut re = self.float(0.0);
        let mut im = self.float(0.0);
        for (s, (sum, &(s_re, s_im))) in sums.iter().zip(scales).enumerate() {
            let [re_xr, im_xi, im_xr, re_xi] = sum.map(|slot| self.int_to_float(slot));
            let (re_xr, im_xi, im_xr, re_xi) = (re_xr?, im_xi?, im_xr?, re_xi?);
            let cross = self.fmul(s_im, im_xi)?;
            let along = self.fmul(s_re, re_xi)?;
            re = self.fadd(re, self.fmul(s_re, re_xr)?)?;
            im = self.fadd(im, self.fmul(s_im, im_xr)?)?;
            if s >= u_stages {
                re = self.fadd(re, cross)?;
                im = self.fsub(im, along)?;
            } else {
                re = self.fsub(re, cross)?;
                im = self.fadd(im, along)?;
            }
        }
        Ok((re, im))
    }

    /// The kernel's dynamic shared memory as 32-bit words (`extern
    /// .shared`; its size is the launch's).
    pub(super) fn dynamic_shared_words(&self) -> PointerValue<'ctx> {
        const NAME: &str = "fairyc_dynamic_shared";
        let global = self.module.get_global(NAME).unwrap_or_else(|| {
            let g = self.module.add_global(
                self.i32().array_type(0),
                Some(AddressSpace::from(SHARED)),
                NAME,
            );
            g.set_linkage(Linkage::External);
            g.set_alignment(16);
            g
        });
        global.as_pointer_value()
    }

    /// The four `prmt` selectors of a word of 16 codes: codes 0 2 4 6, 8 10
    /// 12 14, 1 3 5 7, 9 11 13 15, one to a nibble of the low 16 bits.
    pub(super) fn code_selectors(&self, word: IntValue<'ctx>) -> Built<[IntValue<'ctx>; 4]> {
        let mask = self.i32().const_int(0x3333_3333, false);
        let even = self.builder.build_and(word, mask, "").map_err(err)?;
        let odd = self
            .builder
            .build_right_shift(word, self.i32().const_int(2, false), false, "")
            .map_err(err)?;
        let odd = self.builder.build_and(odd, mask, "").map_err(err)?;
        let high = |v| {
            self.builder
                .build_right_shift(v, self.i32().const_int(16, false), false, "")
                .map_err(err)
        };
        Ok([even, high(even)?, odd, high(odd)?])
    }

    /// `dp4a.s32.s32`: `acc` plus the dot product of the four signed bytes
    /// of `a` and of `b` (LLVM 19 has no intrinsic for it: inline PTX).
    fn dp4a(
        &self,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
        acc: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        self.asm_int("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", &[a, b, acc])
    }

    pub(super) fn get_int(&self, slot: PointerValue<'ctx>) -> Built<IntValue<'ctx>> {
        self.load_int(self.i32(), slot)
    }

    fn int_to_float(&self, slot: PointerValue<'ctx>) -> Built<FloatValue<'ctx>> {
        self.builder
            .build_signed_int_to_float(self.get_int(slot)?, self.f32(), "")
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn a_prompt_on_a_narrow_layer_splits_its_rows_down_the_grid() {
        // Decode: one input row, a block per eight output rows.
        assert_eq!(grid(288, 1, 132), (36, 1));
        // A 513-row prompt on the same layer: the room the cap leaves.
        assert_eq!(grid(288, 513, 132), (36, 7));
        // Fewer rows than that room: a row of blocks each.
        assert_eq!(grid(288, 3, 132), (36, 3));
        // A wide layer fills the cap across: one row of blocks.
        assert_eq!(grid(5504, 513, 132), (264, 1));
    }
}
