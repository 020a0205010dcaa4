//! Training's attention in the manner of FlashAttention-2: the scores of a
//! warp's 16 rows against 64 keys at a time live in registers as
//! `mma.sync.m16n8k16` bf16 fragments (f32 sums), never in memory (fewer
//! keys a step where the registers would not hold 64: [`flash_step`]). A
//! block's four warps take 64 consecutive rows of one head; each step of
//! the loop, the block copies the step's rows of the operands it walks
//! (bf16 copies the program rounded once a run) into shared memory with
//! 16-byte loads, and each warp takes its fragments from there with
//! `ldmatrix` (`.trans` where a product reads the rows as columns), not
//! with a load a word from global memory. Four kernels ([`FlashPass`]):
//!
//! - `Forward`: `O = softmax(scale · Q Kᵀ) V` with the online softmax,
//!   and per row the log-sum-exp (base 2) of the scaled scores where the
//!   caller keeps it for the gradients;
//! - `Stats`: the same pass, keeping per row the log-sum-exp and
//!   `D = Σ dO ⊙ O`, which the gradients need, where the forward pass's
//!   were not kept (else `flash_delta` computes `D` from the kept `O`);
//! - `GradQ`: per warp of 16 queries, `P` again from the scores and the
//!   log-sum-exp, `dS = P ⊙ (dO Vᵀ − D)` and `dQ = scale · dS K`;
//! - `GradKv`: per warp of 16 keys of a key head, over the query heads
//!   that share it, `dV = Σ Pᵀ dO` and `dK = scale · Σ dSᵀ Q`.
//!
//! The fragment layouts (PTX ISA, `mma.m16n8k16`, lane = 4·g + t): A
//! (16×16, row) holds rows g and g+8 at columns 2t, 2t+1 and 2t+8, 2t+9;
//! B (16×8, col) column g at rows 2t, 2t+1 and 2t+8, 2t+9; C (16×8, f32)
//! rows g and g+8 at columns 2t, 2t+1. So the C fragments of two
//! neighbouring 8-column tiles are, as they stand, the A fragment of the
//! next product (the probabilities never leave the registers).

use super::*;

/// Which of the flash attention's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlashPass {
    Forward,
    Stats,
    GradQ,
    GradKv,
}

/// Rows of one warp's tile.
pub const FLASH_TILE: usize = 16;
/// Warps (tiles) per block.
pub const FLASH_WARPS: u32 = 4;
/// Keys (or queries) each step of a pass's loop takes: 64, or fewer where
/// the tile's fragments of that many would not fit the 255 registers a
/// thread has. GradKv keeps the most (K, V and the dK, dV sums); when its
/// operands came from global memory a word at a time, 64 spilled 216 bytes
/// at heads of 64. With the steps' rows in shared tiles no kernel spills at
/// these steps (`backends/tests/cuda_ptx.rs` holds them to none). (Eight
/// warps a block instead of four, before the tiles, ran the forward kernel
/// at 1,298 us against 891 on the QAT step of docs/BENCHMARKS.md: fewer
/// blocks fit a multiprocessor.)
fn flash_step(pass: FlashPass, d: usize, dv: usize) -> u64 {
    let wide = d.max(dv) > 64;
    match (pass, wide) {
        (FlashPass::GradKv, false) => 32,
        (FlashPass::GradKv, true) => 16,
        (_, false) => 64,
        (_, true) => 32,
    }
}

/// Whether the flash kernels take heads of `d` (queries, keys) and `dv`
/// (values) words: whole 16-word steps of the products, at most 128
/// (registers hold a tile's rows of each).
pub fn flash_applies(d: usize, dv: usize) -> bool {
    let fits = |w: usize| w > 0 && w.is_multiple_of(16) && w <= 128;
    fits(d) && fits(dv)
}

type AFrag<'ctx> = [IntValue<'ctx>; 4];
type BFrag<'ctx> = [IntValue<'ctx>; 2];
type CFrag<'ctx> = [FloatValue<'ctx>; 4];
/// A row's first element (0 for a row out of range) and whether it is in
/// range.
type Row<'ctx> = (IntValue<'ctx>, IntValue<'ctx>);

/// One head of a row-major `[segments·seq, heads·width]` operand, within
/// one segment: row `r`'s elements start at `base + r·stride`. The
/// elements are f32 words, or, for the operands of the products (`bf16`),
/// the same values rounded to bf16, two a word (by the program's `to_bf16`,
/// as `pack` would round them: the products are the same), so that a pair
/// of neighbours is one 32-bit load that is already a fragment's word.
#[derive(Clone, Copy)]
struct Head<'ctx> {
    ptr: PointerValue<'ctx>,
    base: IntValue<'ctx>,
    stride: IntValue<'ctx>,
    bf16: bool,
}

/// A step's rows of a bf16 operand in shared memory: `rows` rows of
/// `width` elements, each row padded by 8 (16 bytes) so that the eight
/// rows an `ldmatrix` phase reads start in different banks.
#[derive(Clone, Copy)]
struct Tile<'ctx> {
    ptr: PointerValue<'ctx>,
    rows: u64,
    width: u64,
}

impl Tile<'_> {
    fn stride(&self) -> u64 {
        self.width + 8
    }
}

/// What a gradient's step of queries reads beside its tiles: each query's
/// log-sum-exp and D (`stats[row + i]`, `stats[deltas + row + i]`), which
/// the block copies with the step into `shared` (the step's log-sum-exps,
/// then its Ds).
struct StepStatistics<'ctx> {
    shared: PointerValue<'ctx>,
    stats: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    deltas: IntValue<'ctx>,
}

/// What the forward pass does with its rows at the end: writes them (the
/// Forward kernel), or keeps their statistics (the Stats kernel: with dO,
/// the statistics buffer, the head's first statistic and where the Ds
/// start).
enum Ending<'ctx> {
    /// The output, and the statistics buffer (null: none) with the head's
    /// first statistic.
    Output(Head<'ctx>, (PointerValue<'ctx>, IntValue<'ctx>)),
    Stats(
        Head<'ctx>,
        (PointerValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    ),
}

/// What every flash kernel knows of its launch.
struct Launch<'ctx> {
    f: FunctionValue<'ctx>,
    /// The kernel's name (its shared tiles' names start with it).
    name: String,
    seq: IntValue<'ctx>,
    /// The thread's index in the block (0..128).
    tid: IntValue<'ctx>,
    /// The lane's `ldmatrix` row (0..8) and matrix (0..4).
    matrix_row: IntValue<'ctx>,
    matrix: IntValue<'ctx>,
    /// The block's first row (its warps take 16 each from there), and
    /// whether this warp's first row is inside the segment.
    first_row: IntValue<'ctx>,
    active: IntValue<'ctx>,
    /// The lane's group (`g`, 0..8) and its place in it (`t`, 0..4).
    g: IntValue<'ctx>,
    t: IntValue<'ctx>,
    not_causal: IntValue<'ctx>,
    /// `scale · log2 e`: scores in base 2.
    scale2: FloatValue<'ctx>,
    /// Keys (or queries) a step of the loop takes ([`flash_step`]).
    step: u64,
}

impl<'ctx> Gen<'ctx> {
    /// `flash(out0, out1, q, k, v, dout, stats, segments, seq, heads,
    /// kv_heads, causal, scale)`; `d`, `dv` are the head widths in words.
    /// Forward writes `O` to `out0` and, unless `stats` is null, `lse₂` to
    /// the first half of `stats`; Stats writes `[lse₂ | D]` (each
    /// `[segments, heads, seq]`) to `stats`; GradQ writes `dQ` to `out0`;
    /// GradKv writes `dK` to `out0` and `dV` to `out1`. A block takes 64
    /// rows of one segment and (query or key) head, warp `w` its rows `16w..16w+16`.
    pub(super) fn flash(&self, name: &str, pass: FlashPass, d: usize, dv: usize) -> Built<()> {
        let (
            f,
            [out0, out1, q, k, v, dout, stats],
            [segments, seq, heads, kv_heads, causal],
            scale,
        ) = self.declare_kernel_f32(name);
        let tid = self.sreg("tid.x")?;
        let lane = self.urem(tid, self.int(32))?;
        let warp = self.udiv(tid, self.int(32))?;
        let not_causal = self.eq_int(causal, self.int(0))?;
        let tile_heads = if pass == FlashPass::GradKv {
            kv_heads
        } else {
            heads
        };
        // Block b: 64 rows of segment and (query or key) head.
        let block_rows = FLASH_TILE as u64 * FLASH_WARPS as u64;
        let blocks_per = self.udiv(
            self.add(seq, self.int(block_rows - 1))?,
            self.int(block_rows),
        )?;
        let block = self.sreg("ctaid.x")?;
        let first_row = self.mul(self.urem(block, blocks_per)?, self.int(block_rows))?;
        let r0 = self.add(first_row, self.mul(warp, self.int(FLASH_TILE as u64))?)?;
        let at = Launch {
            f,
            name: name.to_string(),
            seq,
            tid,
            matrix_row: self.urem(lane, self.int(8))?,
            matrix: self.udiv(lane, self.int(8))?,
            first_row,
            active: self.ult(r0, seq)?,
            g: self.udiv(lane, self.int(4))?,
            t: self.urem(lane, self.int(4))?,
            not_causal,
            scale2: self.fmul(scale, self.float(std::f32::consts::LOG2_E))?,
            step: flash_step(pass, d, dv),
        };
        let segment = self.udiv(block, self.mul(tile_heads, blocks_per)?)?;
        let head = self.urem(self.udiv(block, blocks_per)?, tile_heads)?;
        let group = self.udiv(heads, kv_heads)?;
        let first = self.mul(segment, seq)?;
        // One head of an operand of `heads` heads of `width` words; Q,
        // K, V and (but for the statistics kernel, which sums it with O
        // in f32) dO come in bf16.
        let bf16 = |ptr: PointerValue<'ctx>| {
            [q, k, v].contains(&ptr) || (ptr == dout && pass != FlashPass::Stats)
        };
        let head_of = |ptr, heads: IntValue<'ctx>, head, width: usize| -> Built<Head<'ctx>> {
            let stride = self.mul(heads, self.int(width as u64))?;
            Ok(Head {
                bf16: bf16(ptr),
                ptr,
                base: self.add(
                    self.mul(first, stride)?,
                    self.mul(head, self.int(width as u64))?,
                )?,
                stride,
            })
        };
        // Query head `h`'s first statistic.
        let stat_row_of = |h| self.mul(self.add(self.mul(segment, heads)?, h)?, seq);
        let stat_row = stat_row_of(head)?;
        let deltas = self.mul(self.mul(segments, heads)?, seq)?;
        // The query head's Q, and K and V of its key head.
        let kh = || self.udiv(head, group);
        let qkv = |kh| -> Built<[Head<'ctx>; 3]> {
            Ok([
                head_of(q, heads, head, d)?,
                head_of(k, kv_heads, kh, d)?,
                head_of(v, kv_heads, kh, dv)?,
            ])
        };
        match pass {
            FlashPass::Forward | FlashPass::Stats => {
                let kh = kh()?;
                let o = head_of(out0, heads, head, dv)?;
                let stats_at = (stats, stat_row, deltas);
                self.flash_forward(
                    &at,
                    qkv(kh)?,
                    (d, dv),
                    r0,
                    match pass {
                        FlashPass::Forward => Ending::Output(o, (stats, stat_row)),
                        _ => Ending::Stats(head_of(dout, heads, head, dv)?, stats_at),
                    },
                )
            }
            FlashPass::GradQ => {
                let [qh, kh, vh] = qkv(kh()?)?;
                self.flash_grad_q(
                    &at,
                    [
                        qh,
                        kh,
                        vh,
                        head_of(dout, heads, head, dv)?,
                        head_of(out0, heads, head, d)?,
                    ],
                    (d, dv),
                    r0,
                    (stats, stat_row, deltas),
                    scale,
                )
            }
            FlashPass::GradKv => {
                // Query head `h` of the group and its statistics.
                let per_head = |h: IntValue<'ctx>| -> Built<([Head<'ctx>; 2], IntValue<'ctx>)> {
                    Ok((
                        [head_of(q, heads, h, d)?, head_of(dout, heads, h, dv)?],
                        stat_row_of(h)?,
                    ))
                };
                self.flash_grad_kv(
                    &at,
                    [
                        head_of(k, kv_heads, head, d)?,
                        head_of(v, kv_heads, head, dv)?,
                        head_of(out0, kv_heads, head, d)?,
                        head_of(out1, kv_heads, head, dv)?,
                    ],
                    (d, dv),
                    r0,
                    (self.mul(head, group)?, group),
                    &per_head,
                    (stats, deltas),
                    scale,
                )
            }
        }?;
        self.ret()
    }

    /// `flash_delta(stats, o, dout, n, heads, seq, dv, deltas)`: the
    /// gradients' `D = Σ dO ⊙ O` from the forward pass's kept `O`, for
    /// each of the `n` (row, head) pairs `i = row·heads + head` of the
    /// row-major `O` and `dO` (`heads·dv` words a row, so the pair's words
    /// start at `i·dv`), into `stats[deltas + (segment·heads + head)·seq +
    /// r]` where `row = segment·seq + r` ([`FlashPass::Stats`]' layout).
    pub(super) fn flash_delta(&self, name: &str) -> Built<()> {
        let (f, [stats, o, dout], [n, heads, seq, dv, deltas]) = self.declare_kernel(name);
        self.grid_loop(f, n, |i| {
            let sum = self.local(self.float(0.0))?;
            let first = self.mul(i, dv)?;
            self.strided_loop(f, self.int(0), dv, self.int(1), |c| {
                let at = self.add(first, c)?;
                let term = self.fmul(self.load_f32(o, at)?, self.load_f32(dout, at)?)?;
                self.set(sum, self.fadd(self.get(sum)?, term)?)
            })?;
            let row = self.udiv(i, heads)?;
            let head = self.urem(i, heads)?;
            let (segment, r) = (self.udiv(row, seq)?, self.urem(row, seq)?);
            let stat = self.add(
                self.mul(self.add(self.mul(segment, heads)?, head)?, seq)?,
                r,
            )?;
            self.store_f32(stats, self.add(deltas, stat)?, self.get(sum)?)
        })?;
        self.ret()
    }

    /// Forward or Stats (as `ending` says) for the warp's rows `r0..r0+16`.
    fn flash_forward(
        &self,
        at: &Launch<'ctx>,
        [q, k, v]: [Head<'ctx>; 3],
        (d, dv): (usize, usize),
        r0: IntValue<'ctx>,
        ending: Ending<'ctx>,
    ) -> Built<()> {
        let rows = self.tile_rows(at, r0)?;
        let qf = self.a_frags(at, q, rows, d)?;
        let m = [
            self.local(self.float(f32::NEG_INFINITY))?,
            self.local(self.float(f32::NEG_INFINITY))?,
        ];
        let l = [self.local(self.float(0.0))?, self.local(self.float(0.0))?];
        let o = self.c_slots(dv / 8)?;
        self.walk_keys(at, r0, [k, v], (d, dv), |j0, kt, vt| {
            let s = self.scores(at, &qf, kt)?;
            let x = self.masked(
                at,
                &s,
                rows,
                r0,
                j0,
                |_, x| self.fmul(x, at.scale2),
                f32::NEG_INFINITY,
            )?;
            let mut p = Vec::new();
            let mut alpha = [self.float(0.0); 2];
            let mut base = [self.float(0.0); 2];
            for half in 0..2 {
                let mut top = self.float(f32::NEG_INFINITY);
                for c in &x {
                    top = self.fmax(top, self.fmax(c[2 * half], c[2 * half + 1])?)?;
                }
                let top = self.quad(top, true)?;
                let old = self.get(m[half])?;
                let new = self.fmax(old, top)?;
                self.set(m[half], new)?;
                // A row that has seen only masked keys keeps -inf; 0 stands
                // in so that its terms are exp2(-inf) = 0, not NaN.
                base[half] = self.finite_or_zero(new)?;
                alpha[half] = self.ex2(self.fsub(old, base[half])?)?;
            }
            for c in &x {
                let mut e = [self.float(0.0); 4];
                for i in 0..4 {
                    e[i] = self.ex2(self.fsub(c[i], base[i / 2])?)?;
                }
                p.push(e);
            }
            for half in 0..2 {
                let mut sum = self.fmul(self.get(l[half])?, alpha[half])?;
                for e in &p {
                    sum = self.fadd(sum, self.fadd(e[2 * half], e[2 * half + 1])?)?;
                }
                self.set(l[half], sum)?;
            }
            let mut acc = self.load_c(&o)?;
            for c in &mut acc {
                for i in 0..4 {
                    c[i] = self.fmul(c[i], alpha[i / 2])?;
                }
            }
            self.accumulate(at, &mut acc, &p, vt)?;
            self.store_c(&o, &acc)
        })?;
        let acc = self.load_c(&o)?;
        let mut inv = [self.float(0.0); 2];
        for half in 0..2 {
            let total = self.quad(self.get(l[half])?, false)?;
            self.set(l[half], total)?;
            inv[half] = self.fdiv(self.float(1.0), total)?;
        }
        // The log-sum-exp of a half's row (base 2), and whether this lane
        // writes the row's statistics (the first of its quad, in range).
        let lse = |half: usize| {
            self.fadd(
                self.finite_or_zero(self.get(m[half])?)?,
                self.lg2(self.get(l[half])?)?,
            )
        };
        let writes = |half: usize| -> Built<(IntValue<'ctx>, IntValue<'ctx>)> {
            let (r, ok) = self.row_index(at, r0, half)?;
            let first_lane = self.eq_int(at.t, self.int(0))?;
            Ok((r, self.builder.build_and(ok, first_lane, "").map_err(err)?))
        };
        match ending {
            Ending::Output(o, (stats, row)) => {
                self.store_tile(at, o, rows, &acc, |i| Ok(inv[i / 2]))?;
                let kept = self.builder.build_is_not_null(stats, "").map_err(err)?;
                self.when(at.f, kept, || {
                    for half in 0..2 {
                        let lse = lse(half)?;
                        let (r, write) = writes(half)?;
                        self.when(at.f, write, || {
                            self.store_f32(stats, self.add(row, r)?, lse)
                        })?;
                    }
                    Ok(())
                })
            }
            Ending::Stats(dout, (stats, row, deltas)) => {
                for half in 0..2 {
                    let mut sum = self.float(0.0);
                    for (nt, c) in acc.iter().enumerate() {
                        let col =
                            self.add(self.int(8 * nt as u64), self.mul(at.t, self.int(2))?)?;
                        let g = self.pair_f32(dout, self.row_of(dout, rows[half])?, col)?;
                        for j in 0..2 {
                            let y = self.fmul(c[2 * half + j], inv[half])?;
                            sum = self.fadd(sum, self.fmul(y, g[j])?)?;
                        }
                    }
                    let delta = self.quad(sum, false)?;
                    let lse = lse(half)?;
                    let (r, write) = writes(half)?;
                    self.when(at.f, write, || {
                        let i = self.add(row, r)?;
                        self.store_f32(stats, i, lse)?;
                        self.store_f32(stats, self.add(deltas, i)?, delta)
                    })?;
                }
                Ok(())
            }
        }
    }

    /// `dQ = scale · dS K` for the warp's queries `r0..r0+16` into `heads[4]`
    /// (heads: Q, K, V, dO, dQ).
    #[allow(clippy::too_many_arguments)]
    fn flash_grad_q(
        &self,
        at: &Launch<'ctx>,
        [q, k, v, dout, dq]: [Head<'ctx>; 5],
        (d, dv): (usize, usize),
        r0: IntValue<'ctx>,
        (stats, row, deltas): (PointerValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        scale: FloatValue<'ctx>,
    ) -> Built<()> {
        let rows = self.tile_rows(at, r0)?;
        let qf = self.a_frags(at, q, rows, d)?;
        let gf = self.a_frags(at, dout, rows, dv)?;
        let mut lse = [self.float(0.0); 2];
        let mut delta = [self.float(0.0); 2];
        for half in 0..2 {
            let (r, ok) = self.row_index(at, r0, half)?;
            let i = self.select(ok, self.add(row, r)?, self.int(0))?;
            lse[half] = self.load_f32(stats, i)?;
            delta[half] = self.load_f32(stats, self.add(deltas, i)?)?;
        }
        let acc_slots = self.c_slots(d / 8)?;
        self.walk_keys(at, r0, [k, v], (d, dv), |j0, kt, vt| {
            let s = self.scores(at, &qf, kt)?;
            let p = self.masked(
                at,
                &s,
                rows,
                r0,
                j0,
                |i, x| self.ex2(self.fsub(self.fmul(x, at.scale2)?, lse[i / 2])?),
                0.0,
            )?;
            let dp = self.scores(at, &gf, vt)?;
            let ds = self.score_grads(&p, &dp, |i| delta[i / 2])?;
            let mut acc = self.load_c(&acc_slots)?;
            self.accumulate(at, &mut acc, &ds, kt)?;
            self.store_c(&acc_slots, &acc)
        })?;
        let acc = self.load_c(&acc_slots)?;
        self.store_tile(at, dq, rows, &acc, |_| Ok(scale))
    }

    /// `dK = scale · Σ dSᵀ Q` and `dV = Σ Pᵀ dO` for the warp's keys
    /// `r0..r0+16` of one key head, over the query heads `first..first +
    /// count` (`per_head` gives a query head's Q, dO and first statistic).
    #[allow(clippy::too_many_arguments)]
    fn flash_grad_kv(
        &self,
        at: &Launch<'ctx>,
        [k, v, dk, dvh]: [Head<'ctx>; 4],
        (d, dv): (usize, usize),
        r0: IntValue<'ctx>,
        (first, count): (IntValue<'ctx>, IntValue<'ctx>),
        per_head: &dyn Fn(IntValue<'ctx>) -> Built<([Head<'ctx>; 2], IntValue<'ctx>)>,
        (stats, deltas): (PointerValue<'ctx>, IntValue<'ctx>),
        scale: FloatValue<'ctx>,
    ) -> Built<()> {
        let keys = self.tile_rows(at, r0)?;
        let kf = self.a_frags(at, k, keys, d)?;
        let vf = self.a_frags(at, v, keys, dv)?;
        let dk_slots = self.c_slots(d / 8)?;
        let dv_slots = self.c_slots(dv / 8)?;
        let (qt, gt) = (
            self.shared_tile(at, "q", d)?,
            self.shared_tile(at, "g", dv)?,
        );
        let statistics = self.shared_statistics(at)?;
        // Causal: only queries from the block's first key on see its keys,
        // and from the warp's first key on its own.
        let start = self.select(at.not_causal, self.int(0), at.first_row)?;
        let reach_own = |i0| {
            let reaches = self.ult(r0, self.add(i0, self.int(at.step))?)?;
            self.builder
                .build_or(at.not_causal, reaches, "")
                .map_err(err)
        };
        self.strided_loop(at.f, self.int(0), count, self.int(1), |hh| {
            let ([q, dout], row) = per_head(self.add(first, hh)?)?;
            let tiles = [(qt, q), (gt, dout)];
            let rows = (start, at.seq);
            let step_statistics = StepStatistics {
                shared: statistics,
                stats,
                row,
                deltas,
            };
            self.walk(at, &tiles, Some(step_statistics), rows, reach_own, |i0| {
                // Sᵀ: the tile's keys against a step's queries.
                let s = self.scores(at, &kf, qt)?;
                // Each element's query's log-sum-exp and D (the step's
                // copies in shared memory).
                let mut lse = Vec::new();
                let mut delta = Vec::new();
                for nt in 0..s.len() {
                    let mut l = [self.float(0.0); 4];
                    let mut dl = [self.float(0.0); 4];
                    for j in 0..2 {
                        let local = self.column(at, self.int(0), nt, j as u64)?;
                        let at_d = self.add(local, self.int(at.step))?;
                        let (lj, dj) = (
                            self.load_f32(statistics, local)?,
                            self.load_f32(statistics, at_d)?,
                        );
                        for half in 0..2 {
                            l[2 * half + j] = lj;
                            dl[2 * half + j] = dj;
                        }
                    }
                    lse.push(l);
                    delta.push(dl);
                }
                let exponent = |c: &CFrag<'ctx>, l: &CFrag<'ctx>, i: usize| {
                    self.ex2(self.fsub(self.fmul(c[i], at.scale2)?, l[i])?)
                };
                let whole = || -> Built<Vec<CFrag<'ctx>>> {
                    s.iter()
                        .zip(&lse)
                        .map(|(c, l)| {
                            let mut e = [self.float(0.0); 4];
                            for (i, e) in e.iter_mut().enumerate() {
                                *e = exponent(c, l, i)?;
                            }
                            Ok(e)
                        })
                        .collect()
                };
                let masked = || -> Built<Vec<CFrag<'ctx>>> {
                    let mut p = Vec::new();
                    for (nt, (c, l)) in s.iter().zip(&lse).enumerate() {
                        let mut e = [self.float(0.0); 4];
                        for j in 0..2 {
                            let query = self.column(at, i0, nt, j as u64)?;
                            let seen = self.ult(query, at.seq)?;
                            for (half, &(key, key_inside)) in keys.iter().enumerate() {
                                let visible = self.visible(at, key, query)?;
                                let ok = self.builder.build_and(visible, seen, "").map_err(err)?;
                                let ok = self.builder.build_and(ok, key_inside, "").map_err(err)?;
                                let i = 2 * half + j;
                                e[i] = self.select(ok, exponent(c, l, i)?, self.float(0.0))?;
                            }
                        }
                        p.push(e);
                    }
                    Ok(p)
                };
                let all_see = self.queries_all_see(at, r0, i0)?;
                let p = self.unless_all_visible(at, s.len(), all_see, whole, masked)?;
                let mut acc = self.load_c(&dv_slots)?;
                self.accumulate(at, &mut acc, &p, gt)?;
                self.store_c(&dv_slots, &acc)?;
                let dp = self.scores(at, &vf, gt)?;
                let mut ds = Vec::new();
                for ((p, dp), dl) in p.iter().zip(&dp).zip(&delta) {
                    let mut e = [self.float(0.0); 4];
                    for i in 0..4 {
                        e[i] = self.fmul(p[i], self.fsub(dp[i], dl[i])?)?;
                    }
                    ds.push(e);
                }
                let mut acc = self.load_c(&dk_slots)?;
                self.accumulate(at, &mut acc, &ds, qt)?;
                self.store_c(&dk_slots, &acc)
            })
        })?;
        self.store_tile(at, dk, keys, &self.load_c(&dk_slots)?, |_| Ok(scale))?;
        self.store_tile(at, dvh, keys, &self.load_c(&dv_slots)?, |_| {
            Ok(self.float(1.0))
        })
    }

    /// The lane's two rows of the tile at `r0` (g and g+8), each as its
    /// index and whether it is inside the segment.
    fn tile_rows(&self, at: &Launch<'ctx>, r0: IntValue<'ctx>) -> Built<[Row<'ctx>; 2]> {
        Ok([self.row_index(at, r0, 0)?, self.row_index(at, r0, 1)?])
    }

    /// Row `r0 + g + 8·half` and whether it is below `seq`.
    fn row_index(&self, at: &Launch<'ctx>, r0: IntValue<'ctx>, half: usize) -> Built<Row<'ctx>> {
        let r = self.add(self.add(r0, at.g)?, self.int(8 * half as u64))?;
        let ok = self.ult(r, at.seq)?;
        Ok((r, ok))
    }

    /// How many keys the tile's queries see: to the tile's last row with a
    /// causal mask, all of the segment without.
    fn keys_seen(&self, at: &Launch<'ctx>, r0: IntValue<'ctx>) -> Built<IntValue<'ctx>> {
        let last = self.add(r0, self.int(16))?;
        let causal_end = self.select(self.ult(last, at.seq)?, last, at.seq)?;
        self.select(at.not_causal, at.seq, causal_end)
    }

    /// How many keys the block's queries see (its last warp's).
    fn block_keys_seen(&self, at: &Launch<'ctx>) -> Built<IntValue<'ctx>> {
        let last_warp = FLASH_TILE as u64 * (FLASH_WARPS as u64 - 1);
        self.keys_seen(at, self.add(at.first_row, self.int(last_warp))?)
    }

    /// Column `n0 + 8·nt + 2t + j` of a C fragment.
    fn column(
        &self,
        at: &Launch<'ctx>,
        n0: IntValue<'ctx>,
        nt: usize,
        j: u64,
    ) -> Built<IntValue<'ctx>> {
        let col = self.add(self.mul(at.t, self.int(2))?, self.int(8 * nt as u64 + j))?;
        self.add(n0, col)
    }

    /// Whether query `query` sees key `key`.
    fn visible(
        &self,
        at: &Launch<'ctx>,
        key: IntValue<'ctx>,
        query: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let before = self
            .builder
            .build_int_compare(IntPredicate::ULE, key, query, "")
            .map_err(err)?;
        self.builder
            .build_or(before, at.not_causal, "")
            .map_err(err)
    }

    /// Whether every row of the warp's tile at `r0` sees every key of the
    /// step from `j0`: the keys are inside the segment and, with a causal
    /// mask, none comes after the tile's first row. All but a warp's last
    /// step or two are so, and they skip the mask's per-element compares
    /// and selects (about six instructions a score).
    fn keys_all_visible(
        &self,
        at: &Launch<'ctx>,
        r0: IntValue<'ctx>,
        j0: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let last_key = self.add(j0, self.int(at.step - 1))?;
        let inside = self.ult(last_key, at.seq)?;
        let seen = self.visible(at, last_key, r0)?;
        self.builder.build_and(inside, seen, "").map_err(err)
    }

    /// Whether every query of the step from `i0` sees every key of the
    /// warp's tile at `r0` (the gradients of K and V): the queries and the
    /// keys are inside the segment and, with a causal mask, the tile's last
    /// key comes no later than the step's first query.
    fn queries_all_see(
        &self,
        at: &Launch<'ctx>,
        r0: IntValue<'ctx>,
        i0: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        let last_query = self.add(i0, self.int(at.step - 1))?;
        let last_key = self.add(r0, self.int(FLASH_TILE as u64 - 1))?;
        let inside = self
            .builder
            .build_and(
                self.ult(last_query, at.seq)?,
                self.ult(last_key, at.seq)?,
                "",
            )
            .map_err(err)?;
        let seen = self.visible(at, last_key, i0)?;
        self.builder.build_and(inside, seen, "").map_err(err)
    }

    /// `n` fragments computed by `whole` where `all_visible` holds (the
    /// same for the whole warp), else by `masked`.
    fn unless_all_visible(
        &self,
        at: &Launch<'ctx>,
        n: usize,
        all_visible: IntValue<'ctx>,
        whole: impl FnOnce() -> Built<Vec<CFrag<'ctx>>>,
        masked: impl FnOnce() -> Built<Vec<CFrag<'ctx>>>,
    ) -> Built<Vec<CFrag<'ctx>>> {
        // Entry-block slots, which LLVM promotes to registers (phis).
        let slots = self.c_slots(n)?;
        self.when_else(
            at.f,
            all_visible,
            || self.store_c(&slots, &whole()?),
            || self.store_c(&slots, &masked()?),
        )?;
        self.load_c(&slots)
    }

    /// The scores' fragments (rows: the tile's, from `r0`; columns: a
    /// step's keys from `j0`) through `f` (given each element's place in
    /// its fragment) where the key is in the segment and visible to the
    /// row, `outside` elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn masked(
        &self,
        at: &Launch<'ctx>,
        s: &[CFrag<'ctx>],
        rows: [Row<'ctx>; 2],
        r0: IntValue<'ctx>,
        j0: IntValue<'ctx>,
        f: impl Fn(usize, FloatValue<'ctx>) -> Built<FloatValue<'ctx>>,
        outside: f32,
    ) -> Built<Vec<CFrag<'ctx>>> {
        let whole = || -> Built<Vec<CFrag<'ctx>>> {
            s.iter()
                .map(|c| {
                    let mut e = [self.float(0.0); 4];
                    for i in 0..4 {
                        e[i] = f(i, c[i])?;
                    }
                    Ok(e)
                })
                .collect()
        };
        let masked = || -> Built<Vec<CFrag<'ctx>>> {
            let mut out = Vec::new();
            for (nt, c) in s.iter().enumerate() {
                let mut e = [self.float(0.0); 4];
                for i in 0..4 {
                    let key = self.column(at, j0, nt, i as u64 % 2)?;
                    let inside = self.ult(key, at.seq)?;
                    let ok = self
                        .builder
                        .build_and(inside, self.visible(at, key, rows[i / 2].0)?, "")
                        .map_err(err)?;
                    e[i] = self.select(ok, f(i, c[i])?, self.float(outside))?;
                }
                out.push(e);
            }
            Ok(out)
        };
        let all_visible = self.keys_all_visible(at, r0, j0)?;
        self.unless_all_visible(at, s.len(), all_visible, whole, masked)
    }

    /// `dS = P ⊙ (dP − D)` elementwise (`delta(i)`: element `i`'s row's D).
    fn score_grads(
        &self,
        p: &[CFrag<'ctx>],
        dp: &[CFrag<'ctx>],
        delta: impl Fn(usize) -> FloatValue<'ctx>,
    ) -> Built<Vec<CFrag<'ctx>>> {
        p.iter()
            .zip(dp)
            .map(|(p, dp)| {
                let mut e = [self.float(0.0); 4];
                for i in 0..4 {
                    e[i] = self.fmul(p[i], self.fsub(dp[i], delta(i))?)?;
                }
                Ok(e)
            })
            .collect()
    }

    /// The tile's rows of `m` as A fragments, one per 16 of its `width`
    /// words.
    fn a_frags(
        &self,
        at: &Launch<'ctx>,
        m: Head<'ctx>,
        rows: [Row<'ctx>; 2],
        width: usize,
    ) -> Built<Vec<AFrag<'ctx>>> {
        let rows = [self.row_of(m, rows[0])?, self.row_of(m, rows[1])?];
        (0..width / 16)
            .map(|kk| {
                let col = |plus: u64| -> Built<IntValue<'ctx>> {
                    self.add(
                        self.mul(at.t, self.int(2))?,
                        self.int(16 * kk as u64 + plus),
                    )
                };
                Ok([
                    self.pair(m, rows[0], col(0)?)?,
                    self.pair(m, rows[1], col(0)?)?,
                    self.pair(m, rows[0], col(8)?)?,
                    self.pair(m, rows[1], col(8)?)?,
                ])
            })
            .collect()
    }

    /// `A · Tᵀ` for a step's rows in tile `t`: a C fragment per 8 rows, the
    /// A fragments spanning the tile's width.
    fn scores(
        &self,
        at: &Launch<'ctx>,
        a: &[AFrag<'ctx>],
        t: Tile<'ctx>,
    ) -> Built<Vec<CFrag<'ctx>>> {
        let mut out = Vec::new();
        for pair in 0..t.rows / 16 {
            let mut c = [[self.float(0.0); 4]; 2];
            for (kk, a) in a.iter().enumerate() {
                let b = self.ldmatrix(at, t, 16 * pair, 16 * kk as u64, false)?;
                c[0] = self.mma(*a, [b[0], b[1]], c[0])?;
                c[1] = self.mma(*a, [b[2], b[3]], c[1])?;
            }
            out.extend(c);
        }
        Ok(out)
    }

    /// `acc += P · T` (P: a C fragment per 8 of the step's rows, taken as A
    /// fragments; `acc`: one C fragment per 8 of the tile's columns).
    fn accumulate(
        &self,
        at: &Launch<'ctx>,
        acc: &mut [CFrag<'ctx>],
        p: &[CFrag<'ctx>],
        t: Tile<'ctx>,
    ) -> Built<()> {
        for ks in 0..t.rows as usize / 16 {
            let a = [
                self.pack(p[2 * ks][0], p[2 * ks][1])?,
                self.pack(p[2 * ks][2], p[2 * ks][3])?,
                self.pack(p[2 * ks + 1][0], p[2 * ks + 1][1])?,
                self.pack(p[2 * ks + 1][2], p[2 * ks + 1][3])?,
            ];
            for (pair, c) in acc.chunks_mut(2).enumerate() {
                let b = self.ldmatrix(at, t, 16 * ks as u64, 16 * pair as u64, true)?;
                c[0] = self.mma(a, [b[0], b[1]], c[0])?;
                c[1] = self.mma(a, [b[2], b[3]], c[1])?;
            }
        }
        Ok(())
    }

    /// Four 8×8 matrices of tile `t` by `ldmatrix`, as the B fragments of
    /// two neighbouring 8-column tiles of a product. Without `trans` (the
    /// tile's rows are the product's columns: `A · Tᵀ`) the rows
    /// `row..row+16` at columns `col..col+16`, fragments of rows `row..+8`
    /// and `row+8..+16`; with `trans` (`P · T`) the rows `row..row+16` at
    /// columns `col..col+16`, fragments of columns `col..+8` and `col+8..+16`.
    fn ldmatrix(
        &self,
        at: &Launch<'ctx>,
        t: Tile<'ctx>,
        row: u64,
        col: u64,
        trans: bool,
    ) -> Built<[IntValue<'ctx>; 4]> {
        // Lane 8m + r gives the address of row r of matrix m: matrices 0, 1
        // are the first fragment's two halves (along the 16 of the sum),
        // 2, 3 the second's.
        let along = self.mul(self.urem(at.matrix, self.int(2))?, self.int(8))?;
        let across = self.mul(self.udiv(at.matrix, self.int(2))?, self.int(8))?;
        let (lane_row, lane_col) = if trans {
            (self.add(along, at.matrix_row)?, across)
        } else {
            (self.add(across, at.matrix_row)?, along)
        };
        let r = self.add(lane_row, self.int(row))?;
        let at_element = self.add(
            self.mul(r, self.int(t.stride()))?,
            self.add(lane_col, self.int(col))?,
        )?;
        let p = self.gep(self.context.i16_type(), t.ptr, at_element)?;
        let name = if trans {
            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.trans.b16"
        } else {
            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.b16"
        };
        let f = self.intrinsic(name, &[t.ptr.get_type().into()])?;
        let out = self.call(f, &[p.into()])?.into_struct_value();
        Ok(self.fields::<4>(out)?.map(|w| w.into_int_value()))
    }

    /// A step's tile of `width` columns of a bf16 operand in shared memory.
    fn shared_tile(&self, at: &Launch<'ctx>, which: &str, width: usize) -> Built<Tile<'ctx>> {
        let (rows, width) = (at.step, width as u64);
        let ty = self
            .context
            .i16_type()
            .array_type((rows * (width + 8)) as u32);
        let g = self.shared_array(ty, &format!("{}_{which}", at.name));
        g.set_alignment(16);
        Ok(Tile {
            ptr: g.as_pointer_value(),
            rows,
            width,
        })
    }

    /// A step's log-sum-exps and Ds in shared memory.
    fn shared_statistics(&self, at: &Launch<'ctx>) -> Built<PointerValue<'ctx>> {
        let ty = self.f32().array_type(2 * at.step as u32);
        let g = self.shared_array(ty, &format!("{}_statistics", at.name));
        g.set_alignment(16);
        Ok(g.as_pointer_value())
    }

    /// The block's walk over the keys its queries see, K and V (of `d` and
    /// `dv` columns) in shared tiles: `body(j0, K's tile, V's tile)` runs on
    /// each warp while its own rows (from `r0`) see keys from `j0`.
    fn walk_keys(
        &self,
        at: &Launch<'ctx>,
        r0: IntValue<'ctx>,
        [k, v]: [Head<'ctx>; 2],
        (d, dv): (usize, usize),
        body: impl FnOnce(IntValue<'ctx>, Tile<'ctx>, Tile<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let (kt, vt) = (
            self.shared_tile(at, "k", d)?,
            self.shared_tile(at, "v", dv)?,
        );
        let own_end = self.keys_seen(at, r0)?;
        let keys = (self.int(0), self.block_keys_seen(at)?);
        let below_own_end = |j0| self.ult(j0, own_end);
        self.walk(at, &[(kt, k), (vt, v)], None, keys, below_own_end, |j0| {
            body(j0, kt, vt)
        })
    }

    /// The block's loop over rows `start..end` of the operands the `tiles`
    /// hold, a step at a time: the block copies the step's rows into the
    /// tiles (and its statistics, where given), then `body(n0)` runs on the
    /// warps inside the segment where `computes(n0)` holds. Every thread
    /// meets the copy's barriers.
    fn walk(
        &self,
        at: &Launch<'ctx>,
        tiles: &[(Tile<'ctx>, Head<'ctx>)],
        statistics: Option<StepStatistics<'ctx>>,
        (start, end): (IntValue<'ctx>, IntValue<'ctx>),
        computes: impl Fn(IntValue<'ctx>) -> Built<IntValue<'ctx>>,
        body: impl FnOnce(IntValue<'ctx>) -> Built<()>,
    ) -> Built<()> {
        let barrier = self.intrinsic("llvm.nvvm.barrier0", &[])?;
        self.strided_loop(at.f, start, end, self.int(at.step), |n0| {
            // The warps are done with the last step's tiles.
            self.call_void(barrier, &[])?;
            for &(t, m) in tiles {
                self.fill_tile(at, t, m, n0)?;
            }
            if let Some(s) = &statistics {
                let inside = self.ult(at.tid, self.int(at.step))?;
                self.when(at.f, inside, || {
                    let i = self.add(n0, at.tid)?;
                    let seen = self.ult(i, at.seq)?;
                    let at_stat = self.select(seen, self.add(s.row, i)?, self.int(0))?;
                    let zero = self.float(0.0);
                    let lse = self.select(seen, self.load_f32(s.stats, at_stat)?, zero)?;
                    let d = self.load_f32(s.stats, self.add(s.deltas, at_stat)?)?;
                    let d = self.select(seen, d, zero)?;
                    self.store_f32(s.shared, at.tid, lse)?;
                    self.store_f32(s.shared, self.add(at.tid, self.int(at.step))?, d)
                })?;
            }
            self.call_void(barrier, &[])?;
            let computes = self
                .builder
                .build_and(at.active, computes(n0)?, "")
                .map_err(err)?;
            self.when(at.f, computes, || body(n0))
        })
    }

    /// Copies rows `n0..n0 + t.rows` of `m` into tile `t` (zeros for rows
    /// past the segment), 16 bytes a thread at a time.
    fn fill_tile(
        &self,
        at: &Launch<'ctx>,
        t: Tile<'ctx>,
        m: Head<'ctx>,
        n0: IntValue<'ctx>,
    ) -> Built<()> {
        if !m.bf16 {
            return Err("the flash kernels' tiles take bf16 operands".into());
        }
        let threads = 32 * FLASH_WARPS as u64;
        let per_row = t.width / 8;
        let chunks = t.rows * per_row;
        let chunk_ty = self.i32().vec_type(4);
        for i in 0..chunks.div_ceil(threads) {
            let c = self.add(at.tid, self.int(i * threads))?;
            let copy = || -> Built<()> {
                let (row, part) = (
                    self.udiv(c, self.int(per_row))?,
                    self.urem(c, self.int(per_row))?,
                );
                let r = self.add(n0, row)?;
                let (start, ok) = self.row_of(m, (r, self.ult(r, at.seq)?))?;
                let from = self.gep(
                    self.context.i16_type(),
                    m.ptr,
                    self.add(start, self.mul(part, self.int(8))?)?,
                )?;
                let words = self.builder.build_load(chunk_ty, from, "").map_err(err)?;
                // Rows start at multiples of 8 elements (even heads of
                // multiples of 16), and the buffer is aligned.
                inkwell::values::BasicValue::as_instruction_value(&words)
                    .expect("a load")
                    .set_alignment(16)
                    .map_err(err)?;
                let words = self
                    .builder
                    .build_select(ok, words.into_vector_value(), chunk_ty.const_zero(), "")
                    .map_err(err)?;
                let to_element = self.add(
                    self.mul(row, self.int(t.stride()))?,
                    self.mul(part, self.int(8))?,
                )?;
                let to = self.gep(self.context.i16_type(), t.ptr, to_element)?;
                let store = self.builder.build_store(to, words).map_err(err)?;
                store.set_alignment(16).map_err(err)?;
                Ok(())
            };
            if (i + 1) * threads <= chunks {
                copy()?;
            } else {
                let inside = self.ult(c, self.int(chunks))?;
                self.when(at.f, inside, copy)?;
            }
        }
        Ok(())
    }

    /// Writes C fragments (one per 8 columns) to the tile's rows of `m`,
    /// each element times `factor(i)` (`i`: its place in the fragment).
    fn store_tile(
        &self,
        at: &Launch<'ctx>,
        m: Head<'ctx>,
        rows: [Row<'ctx>; 2],
        acc: &[CFrag<'ctx>],
        factor: impl Fn(usize) -> Built<FloatValue<'ctx>>,
    ) -> Built<()> {
        for half in 0..2 {
            let (start, ok) = self.row_of(m, rows[half])?;
            self.when(at.f, ok, || {
                for (nt, c) in acc.iter().enumerate() {
                    let col = self.add(self.mul(at.t, self.int(2))?, self.int(8 * nt as u64))?;
                    let i = self.add(start, col)?;
                    for j in 0..2 {
                        let y = self.fmul(c[2 * half + j], factor(2 * half + j)?)?;
                        self.store_f32(m.ptr, self.add(i, self.int(j as u64))?, y)?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Row `r`'s first word in `m` (0 where out of range).
    fn row_of(&self, m: Head<'ctx>, (r, ok): Row<'ctx>) -> Built<Row<'ctx>> {
        let start = self.add(m.base, self.mul(r, m.stride)?)?;
        Ok((self.select(ok, start, self.int(0))?, ok))
    }

    /// Two neighbouring words of a row as f32 (0 out of range).
    fn pair_f32(
        &self,
        m: Head<'ctx>,
        (start, ok): Row<'ctx>,
        col: IntValue<'ctx>,
    ) -> Built<[FloatValue<'ctx>; 2]> {
        let ty = self.f32().vec_type(2);
        let p = self.gep(self.f32(), m.ptr, self.add(start, col)?)?;
        let load = self.builder.build_load(ty, p, "").map_err(err)?;
        // Heads and columns are even: the pair is 8-byte aligned.
        inkwell::values::BasicValue::as_instruction_value(&load)
            .expect("a load")
            .set_alignment(8)
            .map_err(err)?;
        let pair = load.into_vector_value();
        let mut out = [self.float(0.0); 2];
        for (j, o) in out.iter_mut().enumerate() {
            let x = self
                .builder
                .build_extract_element(pair, self.i32().const_int(j as u64, false), "")
                .map_err(err)?
                .into_float_value();
            *o = self.select(ok, x, self.float(0.0))?;
        }
        Ok(out)
    }

    /// Two neighbouring elements of a row packed as bf16 (0 out of range).
    fn pair(
        &self,
        m: Head<'ctx>,
        (start, ok): Row<'ctx>,
        col: IntValue<'ctx>,
    ) -> Built<IntValue<'ctx>> {
        if !m.bf16 {
            return Err("the flash kernels' products take bf16 operands".into());
        }
        // Heads and columns are even: the pair is 4-byte aligned.
        let p = self.gep(self.context.i16_type(), m.ptr, self.add(start, col)?)?;
        let word = self.builder.build_load(self.i32(), p, "").map_err(err)?;
        inkwell::values::BasicValue::as_instruction_value(&word)
            .expect("a load")
            .set_alignment(4)
            .map_err(err)?;
        self.select(ok, word.into_int_value(), self.i32().const_zero())
    }

    /// Two f32 rounded to bf16 in one word, `lo` in the low half.
    pub(super) fn pack(&self, lo: FloatValue<'ctx>, hi: FloatValue<'ctx>) -> Built<IntValue<'ctx>> {
        let ty = self.f32().vec_type(2);
        let mut v = ty.get_undef();
        for (j, x) in [lo, hi].into_iter().enumerate() {
            v = self
                .builder
                .build_insert_element(v, x, self.i32().const_int(j as u64, false), "")
                .map_err(err)?;
        }
        let half = self
            .builder
            .build_float_trunc(v, self.context.bf16_type().vec_type(2), "")
            .map_err(err)?;
        Ok(self
            .builder
            .build_bit_cast(half, self.i32(), "")
            .map_err(err)?
            .into_int_value())
    }

    /// `c + a · b` by `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`.
    fn mma(&self, a: AFrag<'ctx>, b: BFrag<'ctx>, c: CFrag<'ctx>) -> Built<CFrag<'ctx>> {
        let f = self.intrinsic("llvm.nvvm.mma.m16n8k16.row.col.bf16", &[])?;
        let args: Vec<BasicMetadataValueEnum> = a
            .iter()
            .chain(&b)
            .map(|&v| v.into())
            .chain(c.iter().map(|&v| v.into()))
            .collect();
        let out = self.call(f, &args)?.into_struct_value();
        Ok(self.fields::<4>(out)?.map(|x| x.into_float_value()))
    }

    /// The `N` fields of an intrinsic's struct result, in order.
    fn fields<const N: usize>(
        &self,
        s: inkwell::values::StructValue<'ctx>,
    ) -> Built<[inkwell::values::BasicValueEnum<'ctx>; N]> {
        let mut out = Vec::with_capacity(N);
        for i in 0..N {
            out.push(
                self.builder
                    .build_extract_value(s, i as u32, "")
                    .map_err(err)?,
            );
        }
        Ok(out.try_into().expect("N fields"))
    }

    /// Reduces over the lane's group of four (the lanes holding one row of
    /// a C fragment): max or sum.
    fn quad(&self, v: FloatValue<'ctx>, max: bool) -> Built<FloatValue<'ctx>> {
        self.butterfly(v, &[1, 2], max)
    }

    /// Accumulator slots (C fragments) starting at 0.
    fn c_slots(&self, n: usize) -> Built<Vec<[PointerValue<'ctx>; 4]>> {
        (0..n)
            .map(|_| {
                Ok([
                    self.local(self.float(0.0))?,
                    self.local(self.float(0.0))?,
                    self.local(self.float(0.0))?,
                    self.local(self.float(0.0))?,
                ])
            })
            .collect()
    }

    fn load_c(&self, slots: &[[PointerValue<'ctx>; 4]]) -> Built<Vec<CFrag<'ctx>>> {
        slots
            .iter()
            .map(|s| {
                Ok([
                    self.get(s[0])?,
                    self.get(s[1])?,
                    self.get(s[2])?,
                    self.get(s[3])?,
                ])
            })
            .collect()
    }

    fn store_c(&self, slots: &[[PointerValue<'ctx>; 4]], c: &[CFrag<'ctx>]) -> Built<()> {
        for (s, c) in slots.iter().zip(c) {
            for i in 0..4 {
                self.set(s[i], c[i])?;
            }
        }
        Ok(())
    }

    /// `2^x` (`ex2.approx`).
    pub(super) fn ex2(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.nvvm.ex2.approx.f", &[])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    /// `log2 x` (`lg2.approx`).
    fn lg2(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let f = self.intrinsic("llvm.nvvm.lg2.approx.f", &[])?;
        Ok(self.call(f, &[x.into()])?.into_float_value())
    }

    /// `x`, or 0 where `x` is `-inf`.
    pub(super) fn finite_or_zero(&self, x: FloatValue<'ctx>) -> Built<FloatValue<'ctx>> {
        let none = self
            .builder
            .build_float_compare(FloatPredicate::OEQ, x, self.float(f32::NEG_INFINITY), "")
            .map_err(err)?;
        self.select(none, self.float(0.0), x)
    }
}
