//! What each step launches: a node's kernels (or cuBLAS's products, a
//! collective, a copy) with their launch sizes and arguments, by the op it
//! computes ([`CudaProgram::eval`]).

use super::*;

impl CudaProgram {
    /// Node `i`'s value, computed by its step from `args`, of type
    /// `out_ty`.
    pub(super) fn eval(
        &self,
        i: usize,
        step: &Step,
        args: &[&DeviceTensor],
        out_ty: &TensorType,
    ) -> Result<DeviceTensor, BackendError> {
        let node = &self.graph.nodes[i];
        let shape = out_ty.shape.concrete().expect("bound shapes");
        let elem = elem_of(out_ty.dtype).map_err(BackendError::new)?;
        if let Step::Alias = step {
            return Ok(DeviceTensor {
                shape,
                elem: args[0].elem,
                words: args[0].words.clone(),
                room: None,
            });
        }
        match (self.cache_slots.get(&i), step) {
            (Some(&slot), Step::Kernel(k)) => {
                return self.append_rows(k[0], slot, args, (shape, elem), None)
            }
            (Some(&slot), Step::Roped { kernel, rope, .. }) => {
                let (parts, positions) = args.split_at(2);
                let rope = self.rope_args(*rope, positions[0]);
                return self.append_rows(*kernel, slot, parts, (shape, elem), Some(rope));
            }
            _ => {}
        }
        let len: usize = shape.iter().product();
        // A value only bf16 products read, rounded by the kernel that
        // computes it (`fusion::round_in_producers`).
        let elem = if self.writes_bf16(step) {
            Elem::Bf16
        } else {
            elem
        };
        let mut out = self.alloc(word_count(&shape, elem))?;
        if let Step::Zeros = step {
            // All bits zero (codes `+1`), in the words it allocates.
            self.stream.memset_zeros(&mut out).map_err(driver)?;
            return Ok(DeviceTensor {
                shape,
                elem,
                words: Arc::new(out),
                room: None,
            });
        }
        let x = args[0];
        // A flash forward pass's statistics for its gradients' group, filed
        // with the output below.
        let mut kept_statistics = None;
        match (step, &node.op) {
            (Step::Gemm, Op::Linear) => self.linear(x, args[1], &mut out)?,
            (Step::GemmTransposedWeight { .. }, Op::Linear) => {
                self.linear_by_transpose(x, args[1], &mut out)?
            }
            (Step::Collective, op) => {
                let communicator = self
                    .communicator
                    .as_ref()
                    .expect("collective steps are chosen with a communicator");
                let done = match op {
                    // Its words, whatever they hold: two a complex
                    // element, four packed codes a byte.
                    Op::BroadcastFrom { root } => communicator.broadcast(
                        &self.stream,
                        *root,
                        &x.words,
                        &mut out,
                        x.word_count(),
                    )?,
                    _ => communicator.all_reduce(&self.stream, &x.words, &mut out, len)?,
                };
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(InFlight {
                        value: i,
                        done,
                        _operand: x.words.clone(),
                    });
            }
            // A block a row: the row, a second operand (the gain; the
            // draws) and one f32 (eps; the temperature).
            (
                Step::Kernel(k),
                Op::RmsNorm { eps: scalar }
                | Op::Sample {
                    temperature: scalar,
                },
            ) => {
                let cols = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(cols).unwrap_or(0);
                let cols = cols as i64;
                self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&*args[1].words);
                    b.arg(&cols).arg(scalar);
                })?;
            }
            (Step::Kernel(k), Op::ActQuant { bits }) => {
                let cols = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(cols).unwrap_or(0);
                let cols = cols as i64;
                let q = ((1u32 << (*bits as u32 - 1)) - 1) as f32;
                self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&cols).arg(&q);
                })?;
            }
            (Step::Kernel(k), Op::Softmax | Op::SoftmaxGrad) => {
                let cols = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(cols).unwrap_or(0);
                let cols = cols as i64;
                self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                    b.arg(&out);
                    for a in args {
                        b.arg(&*a.words);
                    }
                    b.arg(&cols);
                })?;
            }
            (Step::Kernel(k), Op::Embed) => {
                let table = args[1];
                let width = table.shape[1] * words_per(table.elem);
                let n = x.len() * width;
                let sizes = [n as i64, width as i64, table.shape[0] as i64];
                self.launch(k[0], Self::grid(n), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&*table.words);
                    b.arg(&sizes[0]).arg(&sizes[1]).arg(&sizes[2]);
                })?;
            }
            (Step::Kernel(k), Op::Rope { head_dim, .. }) => {
                let positions = args[1];
                let width = x.shape.last().copied().unwrap_or(1);
                let pairs = if elem == Elem::Complex {
                    x.len()
                } else {
                    x.len() / 2
                };
                let freqs = &self.rope_freqs[&i];
                let sizes = [pairs, width, positions.len().max(1), *head_dim].map(|v| v as i64);
                self.launch(k[0], Self::grid(pairs), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&*positions.words).arg(freqs);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (
                Step::Kernel(k),
                Op::Attention {
                    heads,
                    kv_heads,
                    scale,
                    causal,
                    segment: Some(segment),
                },
            ) => {
                let s = Segments::new(
                    x,
                    args[2],
                    (*heads, *kv_heads),
                    Some(*segment),
                    *scale,
                    *causal,
                )
                .map_err(|e| BackendError::new(format!("%{i} = attention: {e}")))?;
                if matches!(self.kernels[k[0]], Kernel::Flash { .. }) {
                    let group = self.flash_forward_groups.get(&i);
                    let statistics = match group {
                        Some(_) => Some(self.alloc(2 * s.segments * s.heads * s.seq)?),
                        None => None,
                    };
                    self.flash_attention(
                        k[0],
                        (x, args[1], args[2]),
                        s,
                        &mut out,
                        statistics.as_ref(),
                    )?;
                    kept_statistics = group.copied().zip(statistics);
                } else {
                    self.batched_attention(k[0], (x, args[1], args[2]), s, &mut out)?;
                }
            }
            (
                Step::Kernel(_) | Step::Roped { .. },
                Op::Attention {
                    heads,
                    kv_heads,
                    scale,
                    causal,
                    segment: None,
                },
            ) => {
                let s = Segments::new(x, args[2], (*heads, *kv_heads), None, *scale, *causal)
                    .map_err(|e| BackendError::new(format!("%{i} = attention: {e}")))?;
                let cache = self.cache_slots.get(&node.operands[1].0).copied();
                // Folded, the queries come before their rope (`fold_ropes`).
                let (kernel, rope) = match step {
                    Step::Roped { kernel, rope, .. } => {
                        (*kernel, Some(self.rope_args(*rope, args[3])))
                    }
                    Step::Kernel(k) => (k[0], None),
                    _ => unreachable!("matched above"),
                };
                let operands = (x, args[1], args[2]);
                self.cache_attention(kernel, operands, (cache, rope), s, &mut out)?;
            }
            (Step::Kernel(k), Op::Slice { axis, start, end }) => {
                let inner = x.shape[axis + 1..].iter().product::<usize>() * words_per(elem);
                let outer: usize = x.shape[..*axis].iter().product();
                let cols = (end - start) * inner;
                self.copy2d(
                    k[0],
                    &mut out,
                    x,
                    outer,
                    cols,
                    (cols, 0),
                    (x.shape[*axis] * inner, start * inner),
                )?;
            }
            (Step::Kernel(k), Op::Pad { axis, before, .. }) => {
                // Zeros, with the input copied in between.
                let inner = x.shape[axis + 1..].iter().product::<usize>() * words_per(elem);
                let outer: usize = x.shape[..*axis].iter().product();
                let cols = x.shape[*axis] * inner;
                self.stream.memset_zeros(&mut out).map_err(driver)?;
                self.copy2d(
                    k[0],
                    &mut out,
                    x,
                    outer,
                    cols,
                    (shape[*axis] * inner, before * inner),
                    (cols, 0),
                )?;
            }
            (Step::Kernel(k), Op::Concat { axis }) => {
                let inner = shape[axis + 1..].iter().product::<usize>() * words_per(elem);
                let outer: usize = shape[..*axis].iter().product();
                let total = shape[*axis] * inner;
                let mut offset = 0;
                for part in args {
                    let cols = part.shape[*axis] * inner;
                    self.copy2d(
                        k[0],
                        &mut out,
                        part,
                        outer,
                        cols,
                        (total, offset),
                        (cols, 0),
                    )?;
                    offset += cols;
                }
            }
            (Step::Kernel(k), Op::Transpose { perm }) => {
                let mut dims: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
                let mut source_strides = vec![0usize; x.shape.len()];
                let mut stride = words_per(elem);
                for a in (0..x.shape.len()).rev() {
                    source_strides[a] = stride;
                    stride *= x.shape[a];
                }
                let mut strides: Vec<usize> = perm.iter().map(|&p| source_strides[p]).collect();
                if elem == Elem::Complex {
                    dims.push(2);
                    strides.push(1);
                }
                if dims.len() > GATHER_RANK {
                    return Err(BackendError::new(format!(
                        "%{i} = transpose: rank {} is past the {GATHER_RANK} the GPU kernel handles",
                        dims.len()
                    )));
                }
                let pad = GATHER_RANK - dims.len();
                let dims: Vec<i64> = std::iter::repeat_n(1, pad)
                    .chain(dims)
                    .map(|v| v as i64)
                    .collect();
                let strides: Vec<i64> = std::iter::repeat_n(0, pad)
                    .chain(strides)
                    .map(|v| v as i64)
                    .collect();
                let n = len * words_per(elem);
                let count = n as i64;
                self.launch(k[0], Self::grid(n), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&count);
                    for v in dims.iter().chain(&strides) {
                        b.arg(v);
                    }
                })?;
            }
            (Step::WeightGrad, Op::LinearWeightGrad) => self.weight_grad(x, args[1], &mut out)?,
            (Step::Kernel(k), Op::SumSquares) => {
                let n = x.word_count();
                if n == 0 {
                    self.stream.memset_zeros(&mut out).map_err(driver)?;
                } else {
                    // Up to `SUM_RUNS` blocks, each with a few words a thread.
                    let run = n.div_ceil(SUM_RUNS).max(4 * ROW_THREADS as usize);
                    let runs = n.div_ceil(run);
                    let partials = self.alloc(runs)?;
                    let (slots, arrivals) = &self.sum_arrivals;
                    let slot = slots[&i];
                    let arrival = arrivals.slice(slot..slot + 1);
                    let sizes = [n as i64, run as i64];
                    self.launch(k[0], runs as u32, ROW_THREADS, |b| {
                        b.arg(&out).arg(&partials).arg(&arrival).arg(&*x.words);
                        b.arg(&sizes[0]).arg(&sizes[1]);
                    })?;
                }
            }
            (Step::Kernel(k), Op::ReduceTo { .. }) => {
                let cols = len * words_per(elem);
                let rows = x.word_count().checked_div(cols).unwrap_or(0);
                if cols == 1 && rows > SUM_RUNS {
                    // A real scalar from many words (a gradient's squared
                    // norm): runs summed by many blocks first, then those.
                    let run = rows.div_ceil(SUM_RUNS);
                    let runs = rows.div_ceil(run);
                    let mut partial = self.alloc(runs)?;
                    let sizes = [rows as i64, run as i64];
                    self.launch(k[1], runs as u32, ROW_THREADS, |b| {
                        b.arg(&mut partial).arg(&*x.words);
                        b.arg(&sizes[0]).arg(&sizes[1]);
                    })?;
                    self.column_sum(k[0], &mut out, &partial, runs, 1)?;
                } else {
                    self.column_sum(k[0], &mut out, &x.words, rows, cols)?;
                }
            }
            // Per-row losses (the second operand: targets or the teacher's
            // logits), summed and averaged over the scored rows.
            (Step::Kernel(k), Op::CrossEntropy | Op::KlDiv) => {
                let vocab = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(vocab).unwrap_or(0);
                let partial = self.alloc(2 * rows)?;
                let keep = self.kernels[k[0]] == Kernel::CrossEntropyRows { keep: true };
                let statistics = keep.then(|| self.alloc(2 * rows)).transpose()?;
                let vocab = vocab as i64;
                self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                    b.arg(&partial)
                        .arg(&*x.words)
                        .arg(&*args[1].words)
                        .arg(&vocab);
                    if let Some(statistics) = &statistics {
                        b.arg(statistics);
                    }
                })?;
                let mut sums = self.alloc(2)?;
                self.column_sum(k[1], &mut sums, &partial, rows, 2)?;
                self.launch(k[2], 1, 1, |b| {
                    b.arg(&out).arg(&sums);
                })?;
                if let Some(statistics) = statistics {
                    self.kept_losses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(i, (statistics, sums));
                }
            }
            (Step::Kernel(k), Op::CrossEntropyGrad | Op::KlDivGrad) => {
                let vocab = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(vocab).unwrap_or(0);
                let sizes = [rows as i64, vocab as i64];
                let kept = match self.loss_statistics.get(&i) {
                    Some(loss) => Some(
                        self.kept_losses
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(loss)
                            .ok_or_else(|| {
                                BackendError::new(format!(
                                    "%{i}: the statistics of its loss %{loss} were not kept"
                                ))
                            })?,
                    ),
                    None => None,
                };
                self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                    b.arg(&out)
                        .arg(&*x.words)
                        .arg(&*args[1].words)
                        .arg(&*args[2].words);
                    b.arg(&sizes[0]).arg(&sizes[1]);
                    if let Some((statistics, sums)) = &kept {
                        b.arg(statistics).arg(sums);
                    }
                })?;
            }
            (Step::Kernel(k), Op::RmsNormGrad { eps, which }) => {
                let (gain, dy) = (args[1], args[2]);
                let cols = x.shape.last().copied().unwrap_or(1);
                let rows = x.len().checked_div(cols).unwrap_or(0);
                let cols_arg = cols as i64;
                let run = |target: &CudaSlice<u32>| {
                    self.launch(k[0], rows as u32, ROW_THREADS, |b| {
                        b.arg(target)
                            .arg(&*x.words)
                            .arg(&*gain.words)
                            .arg(&*dy.words);
                        b.arg(&cols_arg).arg(eps);
                    })
                };
                if *which == NormOperand::Gain {
                    let terms = self.alloc(rows * gain.len())?;
                    run(&terms)?;
                    self.column_sum(k[1], &mut out, &terms, rows, gain.len())?;
                } else {
                    run(&out)?;
                }
            }
            (Step::Kernel(k), Op::EmbedGrad { .. }) => {
                let dy = args[1];
                let width = shape.last().copied().unwrap_or(1) * words_per(elem);
                let n = dy.word_count();
                self.stream.memset_zeros(&mut out).map_err(driver)?;
                let sizes = [n as i64, width as i64, shape[0] as i64];
                self.launch(k[0], Self::grid(n), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&*dy.words);
                    b.arg(&sizes[0]).arg(&sizes[1]).arg(&sizes[2]);
                })?;
            }
            (
                Step::Kernel(k),
                Op::AttentionGrad {
                    which,
                    heads,
                    kv_heads,
                    scale,
                    causal,
                    segment,
                },
            ) => {
                let s = Segments::new(x, args[2], (*heads, *kv_heads), *segment, *scale, *causal)
                    .map_err(|e| BackendError::new(format!("%{i} = attention_grad: {e}")))?;
                let operands = (x, args[1], args[2], args[3]);
                self.batched_attention_grad(i, k, *which, operands, s, &mut out)?;
            }
            (Step::Kernel(k), Op::WidelyLinearGrad { .. }) => {
                let d = args[1];
                let (rows, cols) = (shape[0], shape[1]);
                let (row_index, col_index) = &self.pairings[&i];
                let sizes = [rows, cols, d.shape[1]].map(|v| v as i64);
                self.launch(k[0], Self::grid(rows * cols), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*d.words).arg(row_index).arg(col_index);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (Step::Kernel(k), Op::WidelyLinear { .. }) => {
                let (row_slots, col_slots) = &self.pairings[&i];
                let sizes = [x.shape[0], x.shape[1], shape[0], shape[1]].map(|v| v as i64);
                self.launch(k[0], Self::grid(shape[0] * shape[1]), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(row_slots).arg(col_slots);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (Step::Kernel(k), Op::Pack { .. } | Op::Unpack { .. }) => {
                let (index, in_words) = &self.gathers[&i];
                let rows = (x.word_count()).checked_div(*in_words).unwrap_or(0);
                let out_words = index.len();
                let sizes = [rows, out_words, *in_words].map(|v| v as i64);
                self.launch(k[0], Self::grid(rows * out_words), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(index);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (Step::Kernel(k), Op::QuantLinear { granularity, .. }) => {
                let input = quant::QuantInput {
                    inputs: &args[..1],
                    table: None,
                    norm: None,
                };
                let layer = quant::QuantLayer {
                    weights: &args[1..],
                    granularity: *granularity,
                    out: &out,
                    output: None,
                    residual: None,
                };
                self.quant_linear(k[0], None, input, &[layer])?
            }
            (
                Step::PhaseStages {
                    kernels: k,
                    granularity,
                    split,
                    ..
                },
                _,
            ) => {
                let (sums_passes, last) = k.split_at(k.len() - 1);
                let passes = QuantizerPasses::Staged(sums_passes);
                let split = split.map(|_| &self.pairings[&i]);
                self.quantizer_passes(passes, last[0], x, *granularity, &out, split)?;
            }
            (Step::Kernel(k), Op::Quantize { granularity, .. })
            | (Step::Kernel(k), Op::PhaseScales { granularity, .. }) => {
                let passes = QuantizerPasses::One(k[0]);
                self.quantizer_passes(passes, k[1], x, *granularity, &out, None)?;
            }
            (Step::Kernel(k), Op::PhaseCodes { .. }) => {
                let words = word_count(&shape, Elem::Code2);
                let sizes = [x.shape[0], x.shape[1], words].map(|v| v as i64);
                self.launch(k[0], Self::grid(words), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (Step::Kernel(k), Op::Dequant { granularity }) => {
                let (n, m) = (x.shape[0], x.shape[1]);
                let [groups_per_row, group_len, per_tensor] = scale_groups(*granularity, m);
                let sizes = [n as i64, m as i64, groups_per_row, group_len, per_tensor];
                self.launch(k[0], Self::grid(n * m), MAP_THREADS, |b| {
                    b.arg(&out).arg(&*x.words).arg(&*args[1].words);
                    for v in &sizes {
                        b.arg(v);
                    }
                })?;
            }
            (Step::Kernel(k), _) => self.elementwise(k[0], args, &out, len)?,
            (Step::Fused { kernel, .. }, _) => self.elementwise(*kernel, args, &out, len)?,
            (_, op) => {
                return Err(BackendError::new(format!(
                    "%{i} = {}: no GPU step",
                    op.mnemonic()
                )))
            }
        }
        let value = DeviceTensor {
            shape,
            elem,
            words: Arc::new(out),
            room: None,
        };
        if let Some((group, statistics)) = kept_statistics {
            self.keep_forward(group, &value, statistics);
        }
        Ok(value)
    }
}
