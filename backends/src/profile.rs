//! Time spent per op while a program runs: where a model's time goes.
//!
//! A program records when the environment variable `FAIRYC_PROFILE` is set
//! when it is compiled (timing every node costs two clock reads, and on a
//! GPU a wait for the node's kernels, so it is off by default); `fairyc
//! run`, `fairyc ppl` and `fairyc train` print the table. On a GPU,
//! `FAIRYC_PROFILE=host` times only the host's part of each node (its
//! launches, no wait): where a launch-bound step spends its time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Total time and calls by label (an op's mnemonic, with its output shape
/// for the ops whose cost depends most on it).
#[derive(Default)]
pub struct OpProfile {
    entries: Mutex<BTreeMap<String, (Duration, u64)>>,
    host_only: bool,
}

impl OpProfile {
    /// A profile when `FAIRYC_PROFILE` is set, else `None`.
    pub fn from_env() -> Option<OpProfile> {
        std::env::var_os("FAIRYC_PROFILE").map(|v| OpProfile {
            host_only: v == "host",
            ..OpProfile::default()
        })
    }

    /// Whether a device's nodes are timed without waiting for their work
    /// (`FAIRYC_PROFILE=host`).
    pub fn host_only(&self) -> bool {
        self.host_only
    }

    pub fn record(&self, label: String, time: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(label).or_default();
        entry.0 += time;
        entry.1 += 1;
    }

    /// Forgets what was recorded (a warm-up's one-time work, say).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The table, longest total first: label, total, share, calls, per call.
    pub fn report(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = entries.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        let total: Duration = rows.iter().map(|r| r.1 .0).sum();
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(2);
        let mut out = format!(
            "{:width$}  {:>10}  {:>6}  {:>8}  {:>10}\n",
            "op", "total ms", "share", "calls", "us/call"
        );
        for (label, (time, calls)) in rows {
            let ms = time.as_secs_f64() * 1e3;
            let _ = writeln!(
                out,
                "{label:width$}  {ms:>10.2}  {:>5.1}%  {calls:>8}  {:>10.2}",
                100.0 * time.as_secs_f64() / total.as_secs_f64().max(1e-12),
                ms * 1e3 / *calls as f64
            );
        }
        let _ = writeln!(out, "{:width$}  {:>10.2}", "all", total.as_secs_f64() * 1e3);
        out
    }
}

/// A node's line in the profile: the products and attention by output
/// shape (their cost depends on it most), every other op by name.
pub(crate) fn label(op: &fairyc_ir::Op, shape: &[usize]) -> String {
    use fairyc_ir::Op;
    match op {
        Op::QuantLinear { .. }
        | Op::Linear
        | Op::LinearWeightGrad
        | Op::Attention { .. }
        | Op::AttentionGrad { .. } => format!("{} {shape:?}", op.mnemonic()),
        _ => op.mnemonic().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_sums_calls_and_sorts_by_time() {
        let p = OpProfile::default();
        p.record("add".into(), Duration::from_micros(10));
        p.record("quant_linear [1, 8]".into(), Duration::from_micros(300));
        p.record("add".into(), Duration::from_micros(30));
        let report = p.report();
        let lines: Vec<&str> = report.lines().collect();
        assert!(lines[1].starts_with("quant_linear [1, 8]"), "{report}");
        assert!(
            lines[2].starts_with("add") && lines[2].contains(" 2 "),
            "{report}"
        );
        assert!(lines[2].contains("20.00"), "{report}");
        assert!(
            lines[3].starts_with("all") && lines[3].contains("0.34"),
            "{report}"
        );
    }
}
