//! Fairy2i's quantized layers on the GPU: the launch of `quant_linear`'s
//! kernels (the f32 one, or the int8 one with the widely-linear pairing
//! folded in), and the pairing tables those folded steps read
//! ([`super::fusion::fold_pairings`]).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, PushKernelArg};
use fairyc_ir::quant::Pairing;
use fairyc_ir::{Granularity, Graph, Op, ValueId};

use super::codegen::quant_i8::{self, QUANTIZE_THREADS};
use super::codegen::{quant_mma, Kernel, QUANT_ROWS_PER_BLOCK};
use super::{
    driver, fusion, pairing_index, scale_groups, CudaProgram, DeviceTensor, QuantizedRows, Step,
};
use crate::BackendError;

/// One product of a `quant_linear` launch: its weights (codes and scales
/// per stage), their scale granularity, where its outputs go, with a folded
/// unpack the pairing its outputs are written through, and the residual row
/// its epilogue adds.
pub(super) struct QuantLayer<'a> {
    pub weights: &'a [&'a DeviceTensor],
    pub granularity: Granularity,
    pub out: &'a CudaSlice<u32>,
    pub output: Option<&'a PairingTable>,
    pub residual: Option<&'a DeviceTensor>,
}

/// The input of a `quant_linear` launch: the rows (real where `table`
/// pairs them; several where a prologue computes the rows from them), and
/// the norm folded in (gain, eps).
pub(super) struct QuantInput<'a> {
    pub inputs: &'a [&'a DeviceTensor],
    pub table: Option<&'a PairingTable>,
    pub norm: Option<(&'a DeviceTensor, f32)>,
}

impl CudaProgram {
    /// `quant_linear` of `input` by each of `layers` (several only for the
    /// int8 kernel: the products of one input row, quantized once), by
    /// `kernel`, the f32 or the int8 one; or in two launches, the rows
    /// quantized first, where `quantized` is given and takes these rows.
    pub(super) fn quant_linear(
        &self,
        kernel: usize,
        quantized: Option<&QuantizedRows>,
        input: QuantInput,
        layers: &[QuantLayer],
    ) -> Result<(), BackendError> {
        let x = input.inputs[0];
        let m = layers[0].weights[0].shape[1];
        let outputs: usize = layers.iter().map(|l| l.weights[0].shape[0]).sum();
        let row_len = input.table.map_or(m, |(_, words)| *words);
        let rows = x.len().checked_div(row_len).unwrap_or(0);
        if rows == 0 || outputs == 0 {
            return Ok(());
        }
        let Kernel::QuantLinearI8 {
            residual,
            products,
            ref prologue,
            tensor_cores,
            ..
        } = self.kernels[kernel]
        else {
            let [layer] = layers else {
                unreachable!("the f32 kernel computes one product a launch")
            };
            let n = layer.weights[0].shape[0];
            let [groups_per_row, group_len, per_tensor] = scale_groups(layer.granularity, m);
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
                b.arg(layer.out).arg(&*x.words);
                for w in layer.weights {
                    b.arg(&*w.words);
                }
                for v in &sizes {
                    b.arg(v);
                }
            });
        };
        // What the launch passes must be what the kernel was built for.
        let inputs = prologue.as_ref().map_or(1, quant_i8::operand_count);
        if layers.len() != products
            || input.inputs.len() != inputs
            || layers.iter().any(|l| l.residual.is_some() != residual)
        {
            return Err(BackendError::new(format!(
                "an int8 launch of {} products on {} inputs, for a kernel of {products} on {inputs}",
                layers.len(),
                input.inputs.len()
            )));
        }
        // Per product: n, per_tensor, [out_words] (the kernels' order:
        // `quant_linear_i8`).
        let mut layer_sizes = Vec::new();
        for layer in layers {
            let [_, _, per_tensor] = scale_groups(layer.granularity, m);
            layer_sizes.extend([layer.weights[0].shape[0] as i64, per_tensor]);
            layer_sizes.extend(layer.output.map(|(_, words)| *words as i64));
        }
        // The input rows' int8 words live in shared memory: one row, or
        // with tensor cores the rows a block takes at once.
        let (grid, shared) = if tensor_cores {
            (
                quant_mma::grid(outputs, rows, m, self.multiprocessors),
                quant_mma::shared_bytes(rows, m),
            )
        } else {
            (
                quant_i8::grid(outputs, rows, self.multiprocessors),
                (m / 2 * 4) as u32,
            )
        };
        let block = 32 * QUANT_ROWS_PER_BLOCK;
        let once = |q: &&QuantizedRows| rows >= fusion::QUANTIZE_ONCE_ROWS || q.one_row;
        if let Some(q) = quantized.filter(once) {
            debug_assert!(matches!(
                self.kernels[q.product],
                Kernel::QuantLinearI8Rows { tensor_cores: rows_on_tensor_cores, .. }
                    if rows_on_tensor_cores == tensor_cores
            ));
            let words = self.alloc(rows * m / 2)?;
            let steps = self.alloc(rows)?;
            self.quantize_rows(q.quantize, &input, (rows, m), (&words, &steps))?;
            let sizes: Vec<i64> = [rows as i64, m as i64]
                .into_iter()
                .chain(layer_sizes)
                .collect();
            return self.launch_with_shared(q.product, grid, block, shared, |b| {
                b.arg(&words).arg(&steps);
                layer_args(b, layers);
                for v in &sizes {
                    b.arg(v);
                }
            });
        }
        // rows, m, [in_words], then the products' sizes; [eps].
        let mut sizes = row_sizes(&input, rows, m);
        sizes.extend(layer_sizes);
        self.launch_with_shared(kernel, grid, block, shared, |b| {
            input_args(b, &input);
            layer_args(b, layers);
            for v in &sizes {
                b.arg(v);
            }
            eps_arg(b, &input);
        })
    }

    /// Quantizes `rows` rows of `m` complex inputs of `input` (its pairing,
    /// norm and prologue) by [`Kernel::QuantizeRowsI8`] `kernel`, a block a
    /// row (each block takes the rows a grid apart past 65,535): their int8
    /// words into `words`, their steps into `steps`.
    fn quantize_rows(
        &self,
        kernel: usize,
        input: &QuantInput,
        (rows, m): (usize, usize),
        (words, steps): (&CudaSlice<u32>, &CudaSlice<u32>),
    ) -> Result<(), BackendError> {
        // x, [in_table], [gain], words, steps; rows, m, [in_words]; [eps].
        let sizes = row_sizes(input, rows, m);
        let blocks = rows.min(u16::MAX as usize) as u32;
        self.launch_with_shared(kernel, (blocks, 1), QUANTIZE_THREADS, 0, |b| {
            input_args(b, input);
            b.arg(words).arg(steps);
            for v in &sizes {
                b.arg(v);
            }
            eps_arg(b, input);
        })
    }
}

/// An int8 launch's pointers of each product: its output, its stages'
/// codes and scales, its output's pairing table, its residual row.
fn layer_args<'a>(b: &mut LaunchArgs<'a>, layers: &'a [QuantLayer]) {
    for layer in layers {
        b.arg(layer.out);
        for w in layer.weights {
            b.arg(&*w.words);
        }
        if let Some((table, _)) = layer.output {
            b.arg(table);
        }
        if let Some(row) = layer.residual {
            b.arg(&*row.words);
        }
    }
}

/// The sizes of the rows an int8 launch quantizes: `rows`, `m`, and the
/// real row's words where a table pairs it.
fn row_sizes(input: &QuantInput, rows: usize, m: usize) -> Vec<i64> {
    let mut sizes = vec![rows as i64, m as i64];
    sizes.extend(input.table.map(|(_, words)| *words as i64));
    sizes
}

/// A folded norm's eps, the last parameter of an int8 launch that
/// quantizes its rows.
fn eps_arg<'a>(b: &mut LaunchArgs<'a>, input: &'a QuantInput<'a>) {
    if let Some((_, eps)) = &input.norm {
        b.arg(eps);
    }
}

/// An int8 launch's input pointers: the rows (or a prologue's operands),
/// the pairing table, the norm's gain.
fn input_args<'a>(b: &mut LaunchArgs<'a>, input: &QuantInput<'a>) {
    for x in input.inputs {
        b.arg(&*x.words);
    }
    if let Some((table, _)) = input.table {
        b.arg(table);
    }
    if let Some((gain, _)) = &input.norm {
        b.arg(&*gain.words);
    }
}

impl CudaProgram {
    /// Replaces the codes that tensor-core products read by the same codes
    /// in the order their fragments take them ([`quant_mma::tile_codes`]):
    /// those products alone read them ([`fusion::use_tensor_cores`]).
    /// Returns the words the tiles' padding adds.
    pub(super) fn tile_tensor_core_codes(&mut self) -> Result<usize, BackendError> {
        let mut padding = 0;
        let codes = fusion::tensor_core_codes(&self.graph, &self.kernels, &self.steps)
            .map_err(BackendError::new)?;
        for (v, [n, m]) in codes {
            let codes = self.constants.get(&v.0).ok_or_else(|| {
                BackendError::new(format!("%{}: tensor-core codes not held at load", v.0))
            })?;
            let words = self.stream.clone_dtoh(&*codes.words).map_err(driver)?;
            let tiled = self
                .stream
                .clone_htod(&quant_mma::tile_codes(&words, n, m))
                .map_err(driver)?;
            padding += tiled.len() - codes.word_count();
            let tiled = DeviceTensor {
                words: Arc::new(tiled),
                ..codes.clone()
            };
            self.constants.insert(v.0, tiled);
        }
        Ok(padding)
    }
}

/// A paired `quant_linear`'s tables (device words, and the real row's
/// length): where each complex input part lies in the real input row, and
/// where each output part goes in the real output row. Steps whose pairing
/// and row length agree (every block's q, k and v) share one table.
pub(super) struct PairedTables {
    pub input: Option<Arc<PairingTable>>,
    /// The product's, then each sibling's ([`Step::PairedQuantLinear`]).
    pub outputs: Vec<Arc<PairingTable>>,
}

/// A pairing's table on the device, and the real row's words.
pub(super) type PairingTable = (CudaSlice<i32>, usize);

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
        let Some(Step::PairedQuantLinear {
            pack,
            unpack,
            siblings,
            ..
        }) = step
        else {
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
        let outputs = std::iter::once(*unpack)
            .chain(siblings.iter().map(|s| s.unpack))
            .flatten()
            .map(|u| table(u, last(ValueId(u))))
            .collect::<Result<_, _>>()?;
        paired.insert(i, PairedTables { input, outputs });
    }
    Ok(paired)
}
