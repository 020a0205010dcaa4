//! Fairy2i's quantized layers on the GPU: the launch of `quant_linear`'s
//! kernels (the f32 one, or the int8 one with the widely-linear pairing
//! folded in), and the pairing tables those folded steps read
//! ([`super::fusion::fold_pairings`]).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};
use fairyc_ir::quant::Pairing;
use fairyc_ir::{Granularity, Graph, Op, ValueId};

use super::codegen::{quant_i8, Kernel, QUANT_ROWS_PER_BLOCK};
use super::{driver, pairing_index, scale_groups, CudaProgram, DeviceTensor, Step};
use crate::BackendError;

impl CudaProgram {
    /// `quant_linear` of `args` (the input, then each stage's codes and
    /// scales) into `out` by `kernel`, the f32 or the int8 one, the latter
    /// with its input or output paired through `paired`'s tables, and its
    /// input normed first with `norm`'s gain and eps.
    pub(super) fn quant_linear(
        &self,
        kernel: usize,
        args: &[&DeviceTensor],
        granularity: Granularity,
        out: &CudaSlice<u32>,
        paired: Option<&PairedTables>,
        norm: Option<(&DeviceTensor, f32)>,
    ) -> Result<(), BackendError> {
        let (x, codes) = (args[0], args[1]);
        let (n, m) = (codes.shape[0], codes.shape[1]);
        let input = paired.and_then(|p| p.input.as_deref());
        let output = paired.and_then(|p| p.output.as_deref());
        let row_len = input.map_or(m, |(_, words)| *words);
        let rows = x.len().checked_div(row_len).unwrap_or(0);
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let [groups_per_row, group_len, per_tensor] = scale_groups(granularity, m);
        if !matches!(self.kernels[kernel], Kernel::QuantLinearI8 { .. }) {
            let grid = n.div_ceil(QUANT_ROWS_PER_BLOCK as usize) as u32;
            let sizes = [
                rows as i64,
                n as i64,
                m as i64,
                groups_per_row,
                group_len,
                per_tensor,
            ];
            return self.launch(kernel, grid, 32 * QUANT_ROWS_PER_BLOCK, |b| {
                b.arg(out).arg(&*x.words);
                for a in &args[1..] {
                    b.arg(&*a.words);
                }
                for v in &sizes {
                    b.arg(v);
                }
            });
        }
        let grid = quant_i8::grid(n, self.multiprocessors);
        // The input row's int8 words live in shared memory.
        let shared = (m / 2 * 4) as u32;
        // rows, n, m, per_tensor, then each paired row's words.
        let sizes: Vec<i64> = [rows as i64, n as i64, m as i64, per_tensor]
            .into_iter()
            .chain(
                [input, output]
                    .into_iter()
                    .flatten()
                    .map(|(_, w)| *w as i64),
            )
            .collect();
        self.launch_with_shared(kernel, grid, 32 * QUANT_ROWS_PER_BLOCK, shared, |b| {
            b.arg(out).arg(&*x.words);
            for a in &args[1..] {
                b.arg(&*a.words);
            }
            for (table, _) in [input, output].into_iter().flatten() {
                b.arg(table);
            }
            if let Some((gain, _)) = &norm {
                b.arg(&*gain.words);
            }
            for v in &sizes {
                b.arg(v);
            }
            if let Some((_, eps)) = &norm {
                b.arg(eps);
            }
        })
    }
}

/// A paired `quant_linear`'s tables (device words, and the real row's
/// length): where each complex input part lies in the real input row, and
/// where each output part goes in the real output row. Steps whose pairing
/// and row length agree (every block's q, k and v) share one table.
pub(super) struct PairedTables {
    input: Option<Arc<PairingTable>>,
    output: Option<Arc<PairingTable>>,
}

/// A pairing's table on the device, and the real row's words.
type PairingTable = (CudaSlice<i32>, usize);

/// The tables of every [`Step::PairedQuantLinear`]: an input's is its
/// pack's gather table; an output's is the pairing's table over the
/// output's real row (where each part of each complex slot lies), which
/// inverts the unpack's gather.
pub(super) fn paired_tables(
    graph: &Graph,
    steps: &[Option<Step>],
    stream: &Arc<CudaStream>,
) -> Result<HashMap<usize, PairedTables>, BackendError> {
    let mut paired = HashMap::new();
    // By pairing block and real row length: the table, made once.
    let mut made: HashMap<(usize, usize), Arc<PairingTable>> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        let Some(Step::PairedQuantLinear { pack, unpack, .. }) = step else {
            continue;
        };
        let mut table = |v: usize, real_cols: usize| -> Result<Arc<PairingTable>, BackendError> {
            let (Op::Pack { block } | Op::Unpack { block }) = graph.nodes[v].op else {
                unreachable!("folded pairings are packs and unpacks")
            };
            if let Some(t) = made.get(&(block, real_cols)) {
                return Ok(t.clone());
            }
            let pack = Op::Pack { block };
            let (index, words) = pairing_index(&pack, Pairing::from_block(block), real_cols)
                .map_err(|e| BackendError::new(format!("%{v}: {e}")))?;
            let t = Arc::new((stream.clone_htod(&index).map_err(driver)?, words));
            made.insert((block, real_cols), t.clone());
            Ok(t)
        };
        // Fixed last dimensions: the fold checked them.
        let last = |v: ValueId| {
            graph
                .node(v)
                .ty
                .shape
                .dims()
                .last()
                .and_then(|d| d.clone().fixed())
                .expect("the fold checked a fixed row")
        };
        let input = match pack {
            Some(p) => Some(table(*p, last(graph.nodes[*p].operands[0]))?),
            None => None,
        };
        let output = match unpack {
            Some(u) => Some(table(*u, last(ValueId(*u)))?),
            None => None,
        };
        paired.insert(i, PairedTables { input, output });
    }
    Ok(paired)
}
