//! Which entries of a row-major `[n, m]` matrix share a scale.
//!
//! Groups are numbered row-major: `Tensor` has one group; `Channel` has one
//! per row (group `i` is row `i`); `Group(g)` cuts every row into
//! `ceil(m / g)` runs of `g` consecutive entries, the last run of a row
//! holding the remaining `m mod g` entries when `g` does not divide `m`, and
//! group `i * ceil(m / g) + j / g` holds entry `(i, j)`. Groups never span two
//! rows.

use rayon::prelude::*;

use super::QuantError;

/// Scale granularity. The paper uses `Tensor` (section 3.2, footnote 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale set for the whole matrix.
    #[default]
    Tensor,
    /// One scale set per output row.
    Channel,
    /// One scale set per run of this many consecutive entries within a row;
    /// the last run of a row may be shorter.
    Group(usize),
}

impl Granularity {
    /// Rejects `Group(0)`.
    pub fn validate(self) -> Result<(), QuantError> {
        match self {
            Granularity::Group(0) => Err(QuantError::GroupSize),
            _ => Ok(()),
        }
    }

    /// How many groups an `[n, m]` matrix has.
    pub fn num_groups(self, n: usize, m: usize) -> Result<usize, QuantError> {
        self.validate()?;
        Ok(match self {
            Granularity::Tensor => 1,
            Granularity::Channel => n,
            Granularity::Group(g) => n * m.div_ceil(g),
        })
    }

    /// The group of entry `(i, j)` of an `[n, m]` matrix.
    pub fn group_of(self, i: usize, j: usize, m: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Channel => i,
            Granularity::Group(g) => i * m.div_ceil(g) + j / g,
        }
    }

    /// `(runs per row, run length)`: the stretches of a row of length `m`
    /// that share one group (the last run of a row may be shorter). Call
    /// after [`Granularity::validate`].
    pub(crate) fn runs(self, m: usize) -> (usize, usize) {
        match self {
            Granularity::Group(g) => (m.div_ceil(g), g),
            Granularity::Tensor | Granularity::Channel => (1, m),
        }
    }

    /// The group of run `r` of row `i`, with `runs` runs per row.
    pub(crate) fn run_group(self, i: usize, r: usize, runs: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Channel => i,
            Granularity::Group(_) => i * runs + r,
        }
    }

    /// Folds every entry of an `[n, m]` matrix into its group's accumulator:
    /// `visit(acc, flat_index)`; returns one accumulator per group. Rows run
    /// in parallel; each row, and then the rows of `Tensor`, are folded in
    /// order, so the result does not depend on the thread count. Call after
    /// [`Granularity::validate`].
    pub(crate) fn accumulate<A, V, M>(self, n: usize, m: usize, visit: V, merge: M) -> Vec<A>
    where
        A: Default + Send,
        V: Fn(&mut A, usize) + Sync,
        M: Fn(A, A) -> A,
    {
        let (runs, len) = self.runs(m);
        let visit = &visit;
        let per_run: Vec<A> = (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                (0..runs).map(move |r| {
                    let mut acc = A::default();
                    let start = i * m + r * len;
                    let end = i * m + ((r + 1) * len).min(m);
                    for idx in start..end {
                        visit(&mut acc, idx);
                    }
                    acc
                })
            })
            .collect();
        match self {
            Granularity::Tensor => vec![per_run.into_iter().fold(A::default(), merge)],
            Granularity::Channel | Granularity::Group(_) => per_run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_indices() {
        assert_eq!(Granularity::Tensor.num_groups(3, 5), Ok(1));
        assert_eq!(Granularity::Channel.num_groups(3, 5), Ok(3));
        assert_eq!(Granularity::Group(2).num_groups(3, 5), Ok(9));
        assert_eq!(
            Granularity::Group(0).num_groups(3, 5),
            Err(QuantError::GroupSize)
        );
        // Row 1 of a 5-wide matrix with groups of 2: groups 3, 3, 4, 4, 5.
        let g: Vec<_> = (0..5)
            .map(|j| Granularity::Group(2).group_of(1, j, 5))
            .collect();
        assert_eq!(g, vec![3, 3, 4, 4, 5]);
        assert_eq!(Granularity::Channel.group_of(2, 4, 5), 2);
    }
}
