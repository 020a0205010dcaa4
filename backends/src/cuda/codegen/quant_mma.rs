//! Fairy2i's `quant_linear` on int8 activations through tensor cores
//! (design (b) of ../shared/research/gpu-anchors.md): the codes become
//! signed bytes by the same `prmt` byte permutes as [`super::quant_i8`],
//! but the products are `mma.sync.m16n8k32` on them instead of `dp4a`. Per
//! 16 codes a lane spends five selector instructions, eight permutes and
//! two `mma`s (for up to four input rows at once); design (a) spends the
//! same selectors and permutes and sixteen `dp4a` for each input row.
//!
//! A warp's A operand is a tile of 16 output rows by a chunk of 32 inputs,
//! B up to four quantized input rows: columns `2j` and `2j + 1` row `j`'s
//! real and imaginary parts (zeros past the group's rows). The real-part
//! bytes of the codes give `Σ re(c)·xr` and `Σ re(c)·xi`, the
//! imaginary-part bytes `Σ im(c)·xr` and `Σ im(c)·xi`: each stage's four
//! integer sums, scaled once per output as in design (a).
//!
//! The codes are re-packed once ([`tile_codes`]) into the order the A
//! fragments read them: each lane's word holds its 16 codes of a chunk
//! (rows `g` and `g + 8` of the tile, inputs `4t..4t+4` and `16 + 4t..`,
//! lane `4g + t`), and a lane's words of four chunks follow one another,
//! so that one 128-bit load brings them.

use super::quant_i8::{Int8Kernel, Int8Signature, Layer, RowLayout, IMAGINARY_BYTES, REAL_BYTES};
use super::*;

/// Output rows of a tile: the rows of an `mma.m16n8k32` A operand.
pub const TILE_ROWS: usize = 16;
/// Complex inputs of a chunk: the `k` of one `mma.m16n8k32`.
pub const CHUNK: usize = 32;
/// Chunks of a task: the words of one 128-bit load a lane.
const CHUNKS_PER_TASK: usize = 4;
/// Warps of a block (the int8 kernels' launch): they split a tile's
/// chunks between them.
const WARPS: u64 = QUANT_ROWS_PER_BLOCK as u64;
/// A step of a block's loop as `(k, j)`: its `k`-th tile, and the warp's
/// `j`-th task of that tile (see [`Gen::quant_linear_mma`]).
type StepAt<'ctx> = (IntValue<'ctx>, IntValue<'ctx>);
/// Columns of B: four input rows' real and imaginary parts.
const COLUMNS: u32 = 8;
/// Input rows a block takes at once at most: B's columns hold two of each.
const MAX_ROWS_AT_ONCE: usize = COLUMNS as usize / 2;
/// Blocks of the kernel per multiprocessor: at most, in the grid (each
/// block quantizes the input row again, or, on rows quantized before,
/// copies them); at least, in the launch bounds ptxas is given, which holds
/// its registers to what two blocks leave (128 a thread).
pub const MMA_BLOCKS_PER_MULTIPROCESSOR: usize = 2;

/// Bytes of shared memory for the quantized rows: the 48 KiB a launch
/// gets without opting in, less the warps' partial outputs (two buffers)
/// and the block reductions' scratch.
const ROW_BYTES: usize =
    48 * 1024 - 4 * (2 * WARPS as usize * TILE_ROWS * COLUMNS as usize + SCRATCH_WORDS as usize);

/// Input rows a block takes at once: B's eight columns are four rows'
/// real and imaginary parts, and their int8 words (two bytes an input)
/// must fit [`ROW_BYTES`], so rows of `m` inputs go
/// `min(4, ROW_BYTES / 2m)` at a time. A prompt's rows then share the
/// decoding of each code word.
pub fn rows_at_once(m: usize) -> usize {
    (ROW_BYTES / (2 * m).max(1)).clamp(1, MAX_ROWS_AT_ONCE)
}

/// The kernel's grid for `n` output rows of `rows` input rows of `m`
/// inputs: across, a block a tile up to the cap (beyond it each block
/// takes several tiles); down, the groups of input rows
/// ([`rows_at_once`]) over what the cap leaves.
pub fn grid(n: usize, rows: usize, m: usize, multiprocessors: usize) -> (u32, u32) {
    let cap = multiprocessors * MMA_BLOCKS_PER_MULTIPROCESSOR;
    let across = n.div_ceil(TILE_ROWS).min(cap).max(1);
    let groups = rows.div_ceil(rows_at_once(m));
    let down = (cap / across).clamp(1, groups.max(1));
    (across as u32, down as u32)
}

/// Bytes of dynamic shared memory a launch for `rows` input rows of `m`
/// inputs needs: the int8 words of the rows a block takes at once.
pub fn shared_bytes(rows: usize, m: usize) -> u32 {
    (rows.clamp(1, rows_at_once(m)) * m / 2 * 4) as u32
}

/// Whether products of `n` outputs each (several: one launch) of `m`
/// inputs suit the kernel: `m` whole chunks, a row within [`ROW_BYTES`], and
/// with several products each one's rows whole tiles.
pub fn applies(n: &[usize], m: usize) -> bool {
    m > 0
        && !n.is_empty()
        && m.is_multiple_of(CHUNK)
        && 2 * m <= ROW_BYTES
        && (n.len() == 1 || n.iter().all(|rows| rows.is_multiple_of(TILE_ROWS)))
}

/// Words of one stage's re-packed codes for `n` outputs of `m` inputs.
pub fn tile_words(n: usize, m: usize) -> usize {
    n.div_ceil(TILE_ROWS) * m.div_ceil(CHUNK * CHUNKS_PER_TASK) * 32 * CHUNKS_PER_TASK
}

/// Re-packs one stage's code words (row after row, 16 codes of consecutive
/// inputs a word, code `j` at bits `2j..2j+2`) for `n` outputs of `m`
/// inputs into the order the kernel's lanes read them: tile by tile (16
/// rows), task by task (4 chunks of 32 inputs), lane by lane, a word a
/// chunk. Rows and inputs past the layer's are code 0; the kernel's
/// activations there are zeros.
pub fn tile_codes(words: &[u32], n: usize, m: usize) -> Vec<u32> {
    use rayon::prelude::*;
    assert!(
        m.is_multiple_of(16) && words.len() >= n * m / 16,
        "{n} x {m} codes in {} words",
        words.len()
    );
    let row_words = m / 16;
    let code = |row: usize, k: usize| -> u32 {
        if row < n && k < m {
            (words[row * row_words + k / 16] >> (2 * (k % 16))) & 3
        } else {
            0
        }
    };
    let tasks = m.div_ceil(CHUNK * CHUNKS_PER_TASK);
    let tile_len = tasks * 32 * CHUNKS_PER_TASK;
    let mut out = vec![0; tile_words(n, m)];
    // A 7B model's codes are 400M words: its tiles on every core.
    out.par_chunks_mut(tile_len.max(1))
        .enumerate()
        .for_each(|(tile, words)| {
            for (at, word) in words.iter_mut().enumerate() {
                let (c, lane, task) = (at % CHUNKS_PER_TASK, at / CHUNKS_PER_TASK % 32, at / 128);
                let chunk = task * CHUNKS_PER_TASK + c;
                *word = (0..16).fold(0, |word, slot| {
                    let (row, k) = slot_place(slot, lane / 4, lane % 4);
                    word | code(TILE_ROWS * tile + row, CHUNK * chunk + k) << (2 * slot)
                });
            }
        });
    out
}

/// The row within the tile and the input within the chunk of code slot
/// `slot` of lane `4g + t`'s word. The selectors take the even slots'
/// codes to A's registers 0 and 2 (row `g`), the odd slots' to 1 and 3
/// (row `g + 8`); slots 0..8 to inputs `4t..4t+4`, 8..16 to `16 + 4t..`.
fn slot_place(slot: usize, g: usize, t: usize) -> (usize, usize) {
    let row = g + 8 * (slot % 2);
    let k = 16 * (slot / 8) + 4 * t + (slot % 8) / 2;
    (row, k)
}

impl<'ctx> Gen<'ctx> {
    /// `quant_linear_mma`: [`Gen::quant_linear_i8`] (the same parameters
    /// and folds) on codes re-packed by [`tile_codes`], where [`applies`]:
    /// `m` a multiple of [`CHUNK`] with a row's words within [`ROW_BYTES`],
    /// and with several products each one's rows a multiple of
    /// [`TILE_ROWS`] (a tile is one product's).
    ///
    /// The grid's rows of blocks take the groups of input rows in turn
    /// ([`grid`], [`rows_at_once`]). A block quantizes a group's rows into
    /// shared memory (chunk by chunk: B's fragments), then takes tiles a
    /// grid apart; its eight warps split each tile's tasks (a warp a task,
    /// eight tasks apart), each lane's code words loaded a task ahead.
    /// At a tile's end each warp scales its
    /// sums, and the block adds the warps' partial outputs in shared
    /// memory and writes them (through the output's table, with the
    /// residual, where those are folded in).
    pub(super) fn quant_linear_mma(&self, name: &str, kernel: Int8Kernel) -> Built<()> {
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
        self.launch_bounds(
            f,
            32 * QUANT_ROWS_PER_BLOCK,
            MMA_BLOCKS_PER_MULTIPROCESSOR as u32,
        )?;
        let scratch = self.shared_scratch(name);
        let xq = self.dynamic_shared_words();
        // Two buffers of the warps' partial outputs (real and imaginary of
        // 16 rows of each input row at once), alternate tiles: one barrier
        // a tile suffices.
        let partials = self
            .shared_array(
                self.f32()
                    .array_type(2 * WARPS as u32 * TILE_ROWS as u32 * COLUMNS),
                &format!("{name}_partials"),
            )
            .as_pointer_value();
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp = self.udiv(tid, self.int(32))?;
        let (g, t) = (self.udiv(lane, self.int(4))?, self.urem(lane, self.int(4))?);
        let tile_rows = self.int(TILE_ROWS as u64);
        let tiles = self.udiv(self.add(n, self.int(TILE_ROWS as u64 - 1))?, tile_rows)?;
        let chunks = self.udiv(m, self.int(CHUNK as u64))?;
        let per_task = CHUNKS_PER_TASK as u64;
        let tasks = self.udiv(
            self.add(chunks, self.int(per_task - 1))?,
            self.int(per_task),
        )?;
        // Each warp takes the same number of tasks of every tile (those
        // past the tile's add zeros), so that all reach its barrier.
        let warp_tasks = self.udiv(self.add(tasks, self.int(WARPS - 1))?, self.int(WARPS))?;
        let block = self.sreg("ctaid.x")?;
        let blocks = self.sreg("nctaid.x")?;
        let block_tiles = self.select(
            self.ult(block, tiles)?,
            self.udiv(
                self.add(self.sub(tiles, block)?, self.sub(blocks, self.int(1))?)?,
                blocks,
            )?,
            self.int(0),
        )?;
        let steps = self.mul(block_tiles, warp_tasks)?;
        let ahead: Vec<PointerValue> = (0..stages)
            .map(|_| self.entry_slot(self.i32().vec_type(4).into()))
            .collect::<Built<_>>()?;
        // Per stage, the C fragments of the real-part and imaginary-part
        // bytes' products.
        let sums: Vec<[[PointerValue; 4]; 2]> = (0..stages)
            .map(|_| {
                let frag = || -> Built<[PointerValue; 4]> {
                    Ok([
                        self.local_int()?,
                        self.local_int()?,
                        self.local_int()?,
                        self.local_int()?,
                    ])
                };
                Ok([frag()?, frag()?])
            })
            .collect::<Built<_>>()?;
        let (zero, one) = (self.i32().const_zero(), self.i32().const_int(1, false));
        let zero_sums = || -> Built<()> {
            for slot in sums.iter().flatten().flatten() {
                self.builder.build_store(*slot, zero).map_err(err)?;
            }
            Ok(())
        };
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        // Step `s` of the block is its `k`-th tile, `k = s / warp_tasks`
        // (the launch's tile `block + blocks·k`), and this warp's task
        // `warp + 8·j` of it, `j = s mod warp_tasks`. The loop counts `(k,
        // j)` along, in 32 bits, rather than dividing: a division by a
        // value the launch gives costs tens of instructions a step.
        let task_of = |(k, j): StepAt<'ctx>| -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
            let tile = self.add(block, self.mul(blocks, self.widen(k)?)?)?;
            let task = self.add(warp, self.mul(self.int(WARPS), self.widen(j)?)?)?;
            Ok((tile, task))
        };
        let warp_tasks_32 = self
            .builder
            .build_int_truncate(warp_tasks, self.i32(), "")
            .map_err(err)?;
        // The step after `(k, j)`, and whether `(k, j)` ends its tile.
        let step_after = |(k, j): StepAt<'ctx>| -> Built<(StepAt<'ctx>, IntValue<'ctx>)> {
            let tile_done = self.eq_int(self.add(j, one)?, warp_tasks_32)?;
            let next = (
                self.select(tile_done, self.add(k, one)?, k)?,
                self.select(tile_done, zero, self.add(j, one)?)?,
            );
            Ok((next, tile_done))
        };
        let load_step = |at: StepAt<'ctx>| -> Built<()> {
            let (tile, task) = task_of(at)?;
            let (layer, first_row) = self.layer_of_row(&layers, self.mul(tile, tile_rows)?)?;
            // A task past the row's tasks reads task 0's words, unused.
            let task = self.select(self.ult(task, tasks)?, task, self.int(0))?;
            let tile = self.udiv(first_row, tile_rows)?;
            let at = self.mul(
                self.add(
                    self.mul(self.add(self.mul(tile, tasks)?, task)?, self.int(32))?,
                    lane,
                )?,
                self.int(per_task),
            )?;
            for (&stage_codes, &slot) in layer.codes.iter().zip(&ahead) {
                let p = self.gep(self.i32(), stage_codes, at)?;
                let load = self
                    .builder
                    .build_load(self.i32().vec_type(4), p, "")
                    .map_err(err)?;
                load.as_instruction_value()
                    .expect("a load")
                    .set_alignment(16)
                    .map_err(err)?;
                self.builder.build_store(slot, load).map_err(err)?;
            }
            Ok(())
        };
        // The rows of a group: `min(4, ROW_BYTES / 2m)` ([`rows_at_once`]),
        // their quantized words one row after another.
        let at_once = self.udiv(self.int(ROW_BYTES as u64), self.mul(m, self.int(2))?)?;
        let most = self.int(MAX_ROWS_AT_ONCE as u64);
        let at_once = self.umin(at_once, most)?;
        let at_once = self.select(self.ult(at_once, self.int(1))?, self.int(1), at_once)?;
        let row_words = self.udiv(m, self.int(2))?;
        let x_steps: Vec<PointerValue> = (0..MAX_ROWS_AT_ONCE)
            .map(|_| self.local(self.float(0.0)))
            .collect::<Built<_>>()?;
        let (first_group, groups_down) = (self.sreg("ctaid.y")?, self.sreg("nctaid.y")?);
        let (first_input, stride) = (
            self.mul(first_group, at_once)?,
            self.mul(groups_down, at_once)?,
        );
        self.strided_loop(f, first_input, rows, stride, |r| {
            let first_step = (zero, zero);
            self.when(f, self.ult(self.int(0), steps)?, || load_step(first_step))?;
            // Each group of rows counts its steps from `(0, 0)`, and each
            // tile's sums start from zero: set here and at each tile's end,
            // rather than chosen at every step.
            let (k_slot, j_slot) = (self.local_int()?, self.local_int()?);
            for slot in [k_slot, j_slot] {
                self.builder.build_store(slot, zero).map_err(err)?;
            }
            zero_sums()?;
            let left = self.sub(rows, r)?;
            let group = self.umin(left, at_once)?;
            for (j, &slot) in x_steps.iter().enumerate() {
                let j = self.int(j as u64);
                self.set(slot, self.float(0.0))?;
                self.when(f, self.ult(j, group)?, || {
                    let words = self.gep(self.i32(), xq, self.mul(j, row_words)?)?;
                    let row = self.add(r, j)?;
                    let at = (scratch, words);
                    let step = self.row_into_shared(f, &source, at, (row, m), RowLayout::Chunks)?;
                    self.set(slot, step)
                })?;
            }
            // Lane `4g + t` scales row `t`'s sums.
            let mut x_step = self.get(x_steps[0])?;
            for (j, &slot) in x_steps.iter().enumerate().skip(1) {
                let mine = self.eq_int(t, self.int(j as u64))?;
                x_step = self.select(mine, self.get(slot)?, x_step)?;
            }
            self.call_void(barrier, &[])?;
            self.strided_loop(f, self.int(0), steps, self.int(1), |s| {
                let words = ahead
                    .iter()
                    .map(|&slot| {
                        Ok(self
                            .builder
                            .build_load(self.i32().vec_type(4), slot, "")
                            .map_err(err)?
                            .into_vector_value())
                    })
                    .collect::<Built<Vec<_>>>()?;
                let here = (self.get_int(k_slot)?, self.get_int(j_slot)?);
                let ((next_k, next_j), last) = step_after(here)?;
                self.builder.build_store(k_slot, next_k).map_err(err)?;
                self.builder.build_store(j_slot, next_j).map_err(err)?;
                let more = self.ult(self.add(s, self.int(1))?, steps)?;
                load_step((
                    self.select(more, next_k, here.0)?,
                    self.select(more, next_j, here.1)?,
                ))?;
                let (tile, task) = task_of(here)?;
                // A task past the row's (a narrow row leaves warps idle)
                // adds nothing: skipped, the warp's branch.
                self.when(f, self.ult(task, tasks)?, || {
                    for c in 0..per_task {
                        let chunk = self.add(self.mul(task, self.int(per_task))?, self.int(c))?;
                        let b = self.b_fragment(xq, (chunk, chunks), (row_words, group), (g, t))?;
                        for (stage_words, stage_sums) in words.iter().zip(&sums) {
                            let word = self
                                .builder
                                .build_extract_element(
                                    *stage_words,
                                    self.i32().const_int(c, false),
                                    "",
                                )
                                .map_err(err)?
                                .into_int_value();
                            self.accumulate_chunk(word, b, stage_sums)?;
                        }
                    }
                    Ok(())
                })?;
                self.when(f, last, || {
                    let buffer = self.urem(self.widen(here.0)?, self.int(2))?;
                    let (layer, first_row) =
                        self.layer_of_row(&layers, self.mul(tile, tile_rows)?)?;
                    self.tile_partials(
                        (partials, buffer, warp),
                        (&sums, &layer, u_stages),
                        (first_row, (g, t)),
                        x_step,
                    )?;
                    zero_sums()?;
                    self.call_void(barrier, &[])?;
                    // Threads 0..128 add the warps' partials: output row
                    // `tid / 8` of input row `(tid / 2) mod 4`, part
                    // `tid mod 2`.
                    let columns = self.int(u64::from(COLUMNS));
                    let tile_values = self.int(TILE_ROWS as u64 * u64::from(COLUMNS));
                    self.when(f, self.ult(tid, tile_values)?, || {
                        let mut total = self.float(0.0);
                        for w in 0..WARPS {
                            let at = self.add(
                                self.mul(
                                    self.add(self.mul(buffer, self.int(WARPS))?, self.int(w))?,
                                    tile_values,
                                )?,
                                tid,
                            )?;
                            total = self.fadd(total, self.load_f32(partials, at)?)?;
                        }
                        let row = self.add(first_row, self.udiv(tid, columns)?)?;
                        let j = self.udiv(self.urem(tid, columns)?, self.int(2))?;
                        let imaginary = self.is_set(self.urem(tid, self.int(2))?)?;
                        let written = self
                            .builder
                            .build_and(self.ult(row, layer.n)?, self.ult(j, group)?, "")
                            .map_err(err)?;
                        self.when(f, written, || {
                            let [(re_at, re_residual), (im_at, im_residual)] =
                                self.output_places(&layer, (self.add(r, j)?, row))?;
                            let at = self.select(imaginary, im_at, re_at)?;
                            let total = match (re_residual, im_residual) {
                                (Some(re), Some(im)) => {
                                    self.fadd(total, self.select(imaginary, im, re)?)?
                                }
                                _ => total,
                            };
                            self.store_f32(layer.out, at, total)
                        })
                    })
                })
            })?;
            // The next rows' quantization overwrites the shared words.
            self.call_void(barrier, &[])
        })?;
        self.ret()
    }

    /// Lane `4g + t`'s B fragment of chunk `chunk` of the group's
    /// quantized rows (`row_words` words each, `group` of them): column `g`
    /// is row `g / 2`'s real parts (`g` even) or imaginary parts (`g` odd),
    /// inputs `4t..4t+4` and `16 + 4t..`; zeros past the group's rows and
    /// the row's chunks.
    fn b_fragment(
        &self,
        xq: PointerValue<'ctx>,
        (chunk, chunks): (IntValue<'ctx>, IntValue<'ctx>),
        (row_words, group): (IntValue<'ctx>, IntValue<'ctx>),
        (g, t): (IntValue<'ctx>, IntValue<'ctx>),
    ) -> Built<[IntValue<'ctx>; 2]> {
        let row = self.udiv(g, self.int(2))?;
        let (row_used, chunk_used) = (self.ult(row, group)?, self.ult(chunk, chunks)?);
        let used = self
            .builder
            .build_and(chunk_used, row_used, "")
            .map_err(err)?;
        // A row past the group reads row 0's word (a broadcast with the
        // lanes that use it), a chunk past the row chunk 0's.
        let (row, chunk) = (
            self.select(row_used, row, self.int(0))?,
            self.select(chunk_used, chunk, self.int(0))?,
        );
        let part = self.urem(g, self.int(2))?;
        let base = self.add(
            self.add(
                self.mul(row, row_words)?,
                self.add(self.mul(chunk, self.int(16))?, self.mul(part, self.int(8))?)?,
            )?,
            t,
        )?;
        let word = |at| -> Built<IntValue<'ctx>> {
            let v = self.load_i32(xq, at)?;
            self.select(used, v, self.i32().const_zero())
        };
        Ok([word(base)?, word(self.add(base, self.int(4))?)?])
    }

    /// Adds one code word's products into a stage's two C fragments: the
    /// A fragments of the codes' real-part and imaginary-part bytes, each
    /// by B.
    fn accumulate_chunk(
        &self,
        word: IntValue<'ctx>,
        b: [IntValue<'ctx>; 2],
        sums: &[[PointerValue<'ctx>; 4]; 2],
    ) -> Built<()> {
        let prmt = self.intrinsic("llvm.nvvm.prmt", &[])?;
        let mma = self.intrinsic("llvm.nvvm.mma.m16n8k32.row.col.s8", &[])?;
        // The selectors in A's register order (see [`slot_place`]): even
        // slots 0..8, odd 0..8, even 8..16, odd 8..16.
        let [even, even_high, odd, odd_high] = self.code_selectors(word)?;
        for (table, frag) in [REAL_BYTES, IMAGINARY_BYTES].into_iter().zip(sums) {
            let mut args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(10);
            for selector in [even, odd, even_high, odd_high] {
                let a = self.call(
                    prmt,
                    &[
                        self.i32().const_int(table, false).into(),
                        self.i32().const_zero().into(),
                        selector.into(),
                    ],
                )?;
                args.push(a.into());
            }
            args.extend(b.map(BasicMetadataValueEnum::from));
            for slot in frag {
                args.push(self.get_int(*slot)?.into());
            }
            let d = self.call(mma, &args)?.into_struct_value();
            for (k, slot) in frag.iter().enumerate() {
                let v = self
                    .builder
                    .build_extract_value(d, k as u32, "")
                    .map_err(err)?;
                self.builder.build_store(*slot, v).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Writes a warp's partial outputs of a tile into `partials` (buffer
    /// `buffer`): lane `4g + t` holds columns `2t` and `2t + 1` (input row
    /// `t`'s real and imaginary sums) of rows `g` and `g + 8` (of `layer`,
    /// from `first_row`), scaled by their stages' scales and row `t`'s
    /// step.
    #[allow(clippy::type_complexity)]
    fn tile_partials(
        &self,
        (partials, buffer, warp): (PointerValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        (sums, layer, u_stages): (&[[[PointerValue<'ctx>; 4]; 2]], &Layer<'ctx>, usize),
        (first_row, (g, t)): (IntValue<'ctx>, (IntValue<'ctx>, IntValue<'ctx>)),
        x_step: FloatValue<'ctx>,
    ) -> Built<()> {
        let tensor = self.is_set(layer.per_tensor)?;
        for half in 0..2u64 {
            let local = self.add(g, self.int(8 * half))?;
            let row = self.add(first_row, local)?;
            // Rows past the layer's: row 0's scales, never written.
            let row = self.select(self.ult(row, layer.n)?, row, self.int(0))?;
            let at = self.select(tensor, self.int(0), self.mul(row, self.int(2))?)?;
            let stage_scales = layer
                .scales
                .iter()
                .map(|&p| {
                    Ok((
                        self.load_f32(p, at)?,
                        self.load_f32(p, self.add(at, self.int(1))?)?,
                    ))
                })
                .collect::<Built<Vec<_>>>()?;
            // combine_stages' order: Σre·xr, Σim·xi, Σim·xr, Σre·xi.
            let k = 2 * half as usize;
            let row_sums: Vec<[PointerValue; 4]> = sums
                .iter()
                .map(|[re, im]| [re[k], im[k + 1], im[k], re[k + 1]])
                .collect();
            let (re, im) = self.combine_stages(&row_sums, &stage_scales, u_stages)?;
            let at = self.add(
                self.mul(
                    self.add(
                        self.mul(
                            self.add(self.mul(buffer, self.int(WARPS))?, warp)?,
                            self.int(TILE_ROWS as u64),
                        )?,
                        local,
                    )?,
                    self.int(u64::from(COLUMNS)),
                )?,
                self.mul(t, self.int(2))?,
            )?;
            self.store_f32(partials, at, self.fmul(re, x_step)?)?;
            self.store_f32(partials, self.add(at, self.int(1))?, self.fmul(im, x_step)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        grid, rows_at_once, shared_bytes, slot_place, tile_codes, tile_words, CHUNK, TILE_ROWS,
    };

    #[test]
    fn each_lane_word_holds_the_codes_its_a_fragments_read() {
        let (n, m) = (40, 160);
        // Code (row, k) = (row + 3k) mod 4, in the layer's own order.
        let words: Vec<u32> = (0..n)
            .flat_map(|row| {
                (0..m / 16).map(move |w| {
                    (0..16).fold(0u32, |word, j| {
                        word | (((row + 3 * (16 * w + j)) % 4) as u32) << (2 * j)
                    })
                })
            })
            .collect();
        let tiled = tile_codes(&words, n, m);
        assert_eq!(tiled.len(), tile_words(n, m));
        let tasks = m.div_ceil(4 * CHUNK);
        for (at, word) in tiled.iter().enumerate() {
            let (c, lane) = (at % 4, at / 4 % 32);
            let (task, tile) = (at / 128 % tasks, at / 128 / tasks);
            for slot in 0..16 {
                let (row, k) = slot_place(slot, lane / 4, lane % 4);
                let (row, k) = (TILE_ROWS * tile + row, CHUNK * (4 * task + c) + k);
                let want = if row < n && k < m {
                    (row + 3 * k) % 4
                } else {
                    0
                };
                assert_eq!(
                    (word >> (2 * slot)) & 3,
                    want as u32,
                    "tile {tile} lane {lane} slot {slot}"
                );
            }
        }
        // Every (row, input) of the layer is in some word once.
        let places: std::collections::HashSet<_> = (0..32)
            .flat_map(|lane| (0..16).map(move |s| slot_place(s, lane / 4, lane % 4)))
            .collect();
        assert_eq!(places.len(), TILE_ROWS * CHUNK);
    }

    #[test]
    fn a_wide_layer_takes_every_multiprocessor_and_a_prompt_goes_four_rows_at_once() {
        assert_eq!(grid(16000, 1, 2048, 132), (264, 1));
        assert_eq!(grid(2048, 1, 2048, 132), (128, 1));
        // A prompt: four rows a block at once, 129 groups, two rows of
        // blocks down the room the cap leaves.
        assert_eq!(grid(2048, 513, 2048, 132), (128, 2));
        // As many rows at once as fit beside the partial outputs: four of
        // 2,048 inputs, three of 5,504; and the launch's bytes for them.
        assert_eq!((rows_at_once(2048), rows_at_once(5504)), (4, 3));
        assert_eq!(shared_bytes(1, 2048), 4096);
        assert_eq!(shared_bytes(513, 5504), 33_024);
    }
}
