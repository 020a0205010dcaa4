//! Scoring windows of tokens: a language-model graph with its
//! cross-entropy as the output, so that the loss is computed where the
//! program runs and only a number comes back (the logits of a 512-token
//! window of a 49,152-token vocabulary are 100 MB). Several windows run at
//! once as segments of one run, each attending only within itself. The
//! trainer's held-out evaluation and `fairyc ppl` both score this way.

use std::collections::HashMap;

use fairyc_backends::state::logit_rows;
use fairyc_backends::{Backend, BackendError, Program, Tensor};
use fairyc_ir::{BuildError, DType, Graph, Node, Op, Shape, TensorType, ValueId, WeightStore};

/// The input naming each row's next token (`i32[rows]`; `-1` is not
/// scored), added by [`with_cross_entropy`].
pub const TARGETS: &str = "targets";

/// Every attention of `graph` made to see only its own window's `rows`
/// rows, so that one run takes a batch of windows stacked.
pub fn segmented(graph: &Graph, rows: usize) -> Graph {
    let mut g = graph.clone();
    for node in &mut g.nodes {
        if let Op::Attention { segment, .. } = &mut node.op {
            *segment = Some(rows.max(1));
        }
    }
    g
}

/// Adds the input [`TARGETS`] and the mean cross-entropy of the logits
/// (the graph's first output) against them as the graph's only output,
/// which is returned beside the graph.
pub fn with_cross_entropy(graph: &Graph) -> Result<(Graph, ValueId), BuildError> {
    let (logits, rows) = logit_rows(graph, "cross_entropy")?;
    let mut g = graph.clone();
    let mut push = |op: Op, operands: Vec<ValueId>, ty: TensorType| {
        g.nodes.push(Node { op, operands, ty });
        ValueId(g.nodes.len() - 1)
    };
    let targets = push(
        Op::Input {
            name: TARGETS.into(),
        },
        vec![],
        TensorType::new(DType::I32, Shape(vec![rows])),
    );
    let scalar = TensorType::new(DType::F32, Shape(vec![]));
    let loss = push(Op::CrossEntropy, vec![logits, targets], scalar);
    g.outputs = vec![loss];
    fairyc_ir::verify(&g).map_err(|e| BuildError {
        graph: graph.name.clone(),
        op: "cross_entropy",
        message: e.to_string(),
    })?;
    Ok((g, loss))
}

/// The inputs of windows of `rows + 1` tokens each, stacked: the tokens
/// (all but a window's last), their positions within the window, and the
/// targets (all but its first).
pub fn window_inputs(windows: &[&[u32]], rows: usize) -> HashMap<String, Tensor> {
    let n = windows.len() * rows;
    let column = |f: &dyn Fn(&[u32]) -> Vec<i32>| -> Tensor {
        Tensor::i32(vec![n], windows.iter().flat_map(|w| f(w)).collect())
    };
    let ids = |part: &[u32]| part.iter().map(|&t| t as i32).collect();
    HashMap::from([
        ("tokens".to_string(), column(&|w| ids(&w[..rows]))),
        (
            "positions".to_string(),
            column(&|_| (0..rows as i32).collect()),
        ),
        (TARGETS.to_string(), column(&|w| ids(&w[1..=rows]))),
    ])
}

/// A language model compiled to score windows of `rows + 1` tokens: each
/// window's `rows` next-token predictions, `windows_per_run` windows a
/// run.
pub struct WindowLoss {
    program: Box<dyn Program>,
    rows: usize,
    windows_per_run: usize,
    /// The logits' width: every token id must be below it.
    vocab: usize,
}

impl WindowLoss {
    /// Compiles `graph` (whose first output is the logits of its
    /// `tokens` at their `positions`) with its cross-entropy on `backend`.
    /// One window a run keeps the graph's attention as it is (a backend's
    /// fastest kernel may not take segments); more run as segments.
    pub fn compile(
        backend: &dyn Backend,
        graph: &Graph,
        weights: &dyn WeightStore,
        rows: usize,
        windows_per_run: usize,
        on_weight: &(dyn Fn(&str) + Sync),
    ) -> Result<WindowLoss, BackendError> {
        let (rows, windows_per_run) = (rows.max(1), windows_per_run.max(1));
        let (graph, loss) = match windows_per_run {
            1 => with_cross_entropy(graph)?,
            _ => with_cross_entropy(&segmented(graph, rows))?,
        };
        let logits = graph.node(loss).operands[0];
        let vocab = graph.ty(logits).shape.dims()[1]
            .clone()
            .fixed()
            .ok_or_else(|| BackendError::new("the logits' width is not fixed"))?;
        Ok(WindowLoss {
            program: fairyc_backends::compile(backend, &graph, weights, on_weight)?,
            rows,
            windows_per_run,
            vocab,
        })
    }

    /// The predictions a window scores (one fewer than its tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The summed negative log-likelihood, in nats, of every window's
    /// `rows` next tokens; `on_run` sees the windows done after each run.
    pub fn total(
        &self,
        windows: &[&[u32]],
        on_run: &mut dyn FnMut(usize, f64),
    ) -> Result<f64, BackendError> {
        if let Some(w) = windows.iter().find(|w| w.len() != self.rows + 1) {
            return Err(BackendError::new(format!(
                "a window of {} tokens, where this program scores windows of {}",
                w.len(),
                self.rows + 1
            )));
        }
        if let Some(&t) = windows
            .iter()
            .flat_map(|w| w.iter())
            .find(|&&t| t as usize >= self.vocab)
        {
            return Err(BackendError::new(format!(
                "token id {t} is outside the model's vocabulary of {}",
                self.vocab
            )));
        }
        let (mut total, mut done) = (0.0, 0);
        for chunk in windows.chunks(self.windows_per_run) {
            let out = self.program.run(window_inputs(chunk, self.rows))?;
            let mean = out
                .first()
                .and_then(|t| t.as_f32())
                .and_then(|l| l.first().copied())
                .ok_or_else(|| BackendError::new("the scoring program returned no loss"))?;
            total += f64::from(mean) * (chunk.len() * self.rows) as f64;
            done += chunk.len();
            on_run(done, total);
        }
        Ok(total)
    }

    /// The compiled program (its profile, its resident weight bytes).
    pub fn program(&self) -> &dyn Program {
        self.program.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fairyc_backends::Reference;
    use fairyc_ir::{GraphBuilder, MemoryStore};

    const VOCAB: usize = 5;
    const WIDTH: usize = 3;

    /// `linear(embed(tokens, table), out)`: logits from each token alone,
    /// so that each row's loss can be written down here.
    fn bigram() -> (Graph, MemoryStore, Vec<f32>) {
        let mut b = GraphBuilder::new("bigram");
        let seq = Shape::new(["seq"]);
        let tokens = b.input("tokens", TensorType::new(DType::I32, seq));
        let matrix = || TensorType::new(DType::F32, Shape::new([VOCAB, WIDTH]));
        let (table, out) = (b.weight("table", matrix()), b.weight("out", matrix()));
        let hidden = b.push(Op::Embed, &[tokens, table]).unwrap();
        let logits = b.push(Op::Linear, &[hidden, out]).unwrap();
        let graph = b.finish(&[logits]);
        let values = |k: f32| -> Vec<f32> {
            (0..VOCAB * WIDTH)
                .map(|i| ((i as f32 * k).sin() * 2.0).round() / 2.0)
                .collect()
        };
        let (table, out) = (values(0.7), values(1.3));
        // logits[a][c] = table[a] · out[c]
        let logits: Vec<f32> = (0..VOCAB * VOCAB)
            .map(|i| {
                let (a, c) = (i / VOCAB, i % VOCAB);
                (0..WIDTH)
                    .map(|j| table[a * WIDTH + j] * out[c * WIDTH + j])
                    .sum()
            })
            .collect();
        let mut store = MemoryStore::default();
        store.insert("table", matrix(), table);
        store.insert("out", matrix(), out);
        (graph, store, logits)
    }

    fn nll(logits: &[f32], window: &[u32]) -> f64 {
        window
            .windows(2)
            .map(|pair| {
                let row = &logits[pair[0] as usize * VOCAB..][..VOCAB];
                let sum: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
                sum.ln() - row[pair[1] as usize] as f64
            })
            .sum()
    }

    #[test]
    fn windows_are_scored_where_the_program_runs() {
        let (graph, store, logits) = bigram();
        let windows: [&[u32]; 3] = [&[0, 1, 2, 3], &[4, 4, 0, 2], &[3, 1, 1, 0]];
        let want: f64 = windows.iter().map(|w| nll(&logits, w)).sum();
        for per_run in [1, 2, 3] {
            let scorer =
                WindowLoss::compile(&Reference::default(), &graph, &store, 3, per_run, &|_| {})
                    .unwrap();
            let mut runs = Vec::new();
            let total = scorer
                .total(&windows, &mut |done, _| runs.push(done))
                .unwrap();
            assert!(
                (total - want).abs() < 1e-5,
                "{per_run} a run: {total} vs {want}"
            );
            let expected: Vec<usize> = (1..=3usize.div_ceil(per_run))
                .map(|r| (r * per_run).min(3))
                .collect();
            assert_eq!(runs, expected);
        }
    }

    #[test]
    fn bad_windows_are_refused_by_name() {
        let (graph, store, _) = bigram();
        let scorer =
            WindowLoss::compile(&Reference::default(), &graph, &store, 3, 2, &|_| {}).unwrap();
        let short = scorer.total(&[&[0, 1, 2]], &mut |_, _| {}).unwrap_err();
        assert!(
            short.to_string().contains("a window of 3 tokens")
                && short.to_string().contains("windows of 4"),
            "{short}"
        );
        let outside = scorer.total(&[&[0, 1, 5, 2]], &mut |_, _| {}).unwrap_err();
        assert!(
            outside.to_string().contains("token id 5")
                && outside.to_string().contains("vocabulary of 5"),
            "{outside}"
        );
        let mut scalar = graph.clone();
        scalar.outputs.clear();
        let none = with_cross_entropy(&scalar).unwrap_err();
        assert!(none.to_string().contains("no logits"), "{none}");
    }
}
