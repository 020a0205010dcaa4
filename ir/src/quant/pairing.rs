//! Pairing of real channels into complex numbers (section 3.1: "we pair the
//! last dimension as real/imaginary components").
//!
//! A real vector of length `2k` becomes `k` complex numbers; slot `j` takes
//! its real part from channel `real_index(p, 2k, j).0` and its imaginary part
//! from channel `real_index(p, 2k, j).1`. A vector of odd length is padded
//! with one zero channel at the end before pairing (section 3.1, remark).

use num_complex::Complex32;

use super::{check_len, QuantError};

/// How a real vector of length `2k` maps to `k` complex numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pairing {
    /// Slot `j` = (channel `j`, channel `j + k`): real part is the first
    /// half, imaginary part the second. The paper's and the authors' choice.
    #[default]
    Halves,
    /// Slot `j` = (channel `2j`, channel `2j + 1`).
    Adjacent,
    /// Within each block of `head_dim` channels, (channel `i`, channel
    /// `i + head_dim / 2`): the pairs that Hugging Face's `rotate_half` RoPE
    /// rotates together.
    HeadHalves { head_dim: usize },
}

impl Pairing {
    /// The pairing of an IR `pack`/`unpack`/`widely_linear` block size:
    /// 0 pairs the halves of the whole dimension, 2 adjacent channels, and
    /// any other size the halves of each block of that size.
    pub fn from_block(block: usize) -> Pairing {
        match block {
            0 => Pairing::Halves,
            2 => Pairing::Adjacent,
            head_dim => Pairing::HeadHalves { head_dim },
        }
    }

    /// Checks that this pairing can pair a vector of even length `len2k`.
    pub fn validate(self, len2k: usize) -> Result<(), QuantError> {
        match self {
            Pairing::HeadHalves { head_dim } => {
                if head_dim == 0 || !head_dim.is_multiple_of(2) || !len2k.is_multiple_of(head_dim) {
                    Err(QuantError::HeadDim {
                        head_dim,
                        len: len2k,
                    })
                } else {
                    Ok(())
                }
            }
            Pairing::Halves | Pairing::Adjacent => Ok(()),
        }
    }

    /// For every complex slot of a vector of even length `len2k`, its real
    /// channels. Validated once, so callers can index freely.
    pub fn table(self, len2k: usize) -> Result<Vec<(usize, usize)>, QuantError> {
        self.validate(len2k)?;
        Ok((0..len2k / 2).map(|j| real_index(self, len2k, j)).collect())
    }

    /// The inverse of [`Pairing::table`]: for every real channel, its complex
    /// slot and whether it is the imaginary part.
    pub fn inverse_table(self, len2k: usize) -> Result<Vec<(usize, bool)>, QuantError> {
        let mut inv = vec![(0, false); len2k];
        for (j, (re, im)) in self.table(len2k)?.into_iter().enumerate() {
            inv[re] = (j, false);
            inv[im] = (j, true);
        }
        Ok(inv)
    }
}

/// The real channels `(re, im)` of complex slot `complex_j` in a vector of
/// even length `len2k`.
///
/// # Panics
/// If `len2k` is odd, `complex_j >= len2k / 2`, or `p` is a `HeadHalves`
/// that [`Pairing::validate`] rejects.
pub fn real_index(p: Pairing, len2k: usize, complex_j: usize) -> (usize, usize) {
    assert!(len2k.is_multiple_of(2), "real_index: odd length {len2k}");
    let k = len2k / 2;
    assert!(complex_j < k, "real_index: slot {complex_j} out of {k}");
    match p {
        Pairing::Halves => (complex_j, complex_j + k),
        Pairing::Adjacent => (2 * complex_j, 2 * complex_j + 1),
        Pairing::HeadHalves { head_dim } => {
            assert!(
                p.validate(len2k).is_ok(),
                "real_index: head_dim {head_dim} does not fit length {len2k}"
            );
            let half = head_dim / 2;
            let base = complex_j / half * head_dim + complex_j % half;
            (base, base + half)
        }
    }
}

/// Pairs a real vector into complex numbers, padding an odd length with one
/// zero channel at the end. Output length `ceil(len / 2)`.
pub fn pack(x: &[f32], p: Pairing) -> Result<Vec<Complex32>, QuantError> {
    pack_rows(x, 1, x.len(), p)
}

/// The inverse of [`pack`]: `2 * c.len()` real channels (drop the last one
/// if the original length was odd).
pub fn unpack(c: &[Complex32], p: Pairing) -> Result<Vec<f32>, QuantError> {
    unpack_rows(c, 1, 2 * c.len(), p)
}

/// [`pack`] applied to every row of a row-major `[rows, cols]` matrix;
/// output `[rows, ceil(cols / 2)]`.
pub fn pack_rows(
    x: &[f32],
    rows: usize,
    cols: usize,
    p: Pairing,
) -> Result<Vec<Complex32>, QuantError> {
    let mut out = vec![Complex32::new(0.0, 0.0); rows * cols.div_ceil(2)];
    pack_rows_into(x, rows, cols, p, &mut out)?;
    Ok(out)
}

/// [`pack_rows`] into `out` (`rows · ceil(cols / 2)` elements, every one
/// written).
pub fn pack_rows_into(
    x: &[f32],
    rows: usize,
    cols: usize,
    p: Pairing,
    out: &mut [Complex32],
) -> Result<(), QuantError> {
    check_len("pack_rows input", x.len(), rows * cols)?;
    let k = cols.div_ceil(2);
    check_len("pack_rows output", out.len(), rows * k)?;
    let runs = p.runs(2 * k)?;
    // An odd row is copied into a buffer with its zero padding channel.
    let mut padded = vec![0.0f32; if cols % 2 == 1 { 2 * k } else { 0 }];
    for (row, z) in x.chunks(cols.max(1)).zip(out.chunks_mut(k.max(1))) {
        let row = if padded.is_empty() {
            row
        } else {
            padded[..cols].copy_from_slice(row);
            &padded[..]
        };
        for run in runs.iter() {
            run.pack(row, z);
        }
    }
    Ok(())
}

/// The inverse of [`pack_rows`]: `[rows, ceil(cols / 2)]` complex to
/// `[rows, cols]` real, dropping the padded channel of an odd `cols`.
pub fn unpack_rows(
    c: &[Complex32],
    rows: usize,
    cols: usize,
    p: Pairing,
) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0.0; rows * cols];
    unpack_rows_into(c, rows, cols, p, &mut out)?;
    Ok(out)
}

/// [`unpack_rows`] into `out` (`rows · cols` elements, every one written).
pub fn unpack_rows_into(
    c: &[Complex32],
    rows: usize,
    cols: usize,
    p: Pairing,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let k = cols.div_ceil(2);
    check_len("unpack_rows input", c.len(), rows * k)?;
    check_len("unpack_rows output", out.len(), rows * cols)?;
    let runs = p.runs(2 * k)?;
    let mut padded = vec![0.0f32; if cols % 2 == 1 { 2 * k } else { 0 }];
    for (z, row) in c.chunks(k.max(1)).zip(out.chunks_mut(cols.max(1))) {
        if padded.is_empty() {
            for run in runs.iter() {
                run.unpack(z, row);
            }
        } else {
            for run in runs.iter() {
                run.unpack(z, &mut padded);
            }
            row.copy_from_slice(&padded[..cols]);
        }
    }
    Ok(())
}

/// Consecutive complex slots whose real channels are consecutive and whose
/// imaginary channels are too (`stride` 1), or interleaved (`stride` 2:
/// adjacent pairs): how [`pack_rows`] moves whole slices, not channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    slot: usize,
    re: usize,
    im: usize,
    len: usize,
    stride: usize,
}

impl Run {
    fn pack(&self, row: &[f32], z: &mut [Complex32]) {
        let z = &mut z[self.slot..][..self.len];
        if self.stride == 2 {
            for (z, pair) in z.iter_mut().zip(row[self.re..].chunks_exact(2)) {
                *z = Complex32::new(pair[0], pair[1]);
            }
        } else {
            let (re, im) = (&row[self.re..][..self.len], &row[self.im..][..self.len]);
            for ((z, &re), &im) in z.iter_mut().zip(re).zip(im) {
                *z = Complex32::new(re, im);
            }
        }
    }

    fn unpack(&self, z: &[Complex32], row: &mut [f32]) {
        let z = &z[self.slot..][..self.len];
        if self.stride == 2 {
            for (pair, z) in row[self.re..].chunks_exact_mut(2).zip(z) {
                pair[0] = z.re;
                pair[1] = z.im;
            }
        } else {
            for (out, z) in row[self.re..][..self.len].iter_mut().zip(z) {
                *out = z.re;
            }
            for (out, z) in row[self.im..][..self.len].iter_mut().zip(z) {
                *out = z.im;
            }
        }
    }
}

impl Pairing {
    /// The pairing of a vector of even length `len2k` as [`Run`]s.
    fn runs(self, len2k: usize) -> Result<Runs, QuantError> {
        self.validate(len2k)?;
        let count = match self {
            Pairing::Halves | Pairing::Adjacent => 1,
            Pairing::HeadHalves { head_dim } => len2k / head_dim,
        };
        Ok(Runs {
            pairing: self,
            k: len2k / 2,
            count,
        })
    }
}

/// A pairing's runs, made as they are walked (a call of `pack_rows` or
/// `unpack_rows` allocates none).
#[derive(Clone, Copy)]
struct Runs {
    pairing: Pairing,
    k: usize,
    count: usize,
}

impl Runs {
    fn iter(self) -> impl Iterator<Item = Run> {
        let run = |slot, re, im, len, stride| Run {
            slot,
            re,
            im,
            len,
            stride,
        };
        (0..self.count).map(move |h| match self.pairing {
            Pairing::Halves => run(0, 0, self.k, self.k, 1),
            Pairing::Adjacent => run(0, 0, 1, self.k, 2),
            Pairing::HeadHalves { head_dim } => {
                let half = head_dim / 2;
                run(h * half, h * head_dim, h * head_dim + half, half, 1)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_of_each_pairing() {
        assert_eq!(real_index(Pairing::Halves, 8, 1), (1, 5));
        assert_eq!(real_index(Pairing::Adjacent, 8, 1), (2, 3));
        let hh = Pairing::HeadHalves { head_dim: 4 };
        let all: Vec<_> = (0..4).map(|j| real_index(hh, 8, j)).collect();
        assert_eq!(all, vec![(0, 2), (1, 3), (4, 6), (5, 7)]);
    }

    #[test]
    fn head_dim_is_validated() {
        for head_dim in [0, 3, 6] {
            let p = Pairing::HeadHalves { head_dim };
            assert_eq!(
                pack(&[0.0; 8], p),
                Err(QuantError::HeadDim { head_dim, len: 8 })
            );
        }
    }

    #[test]
    fn odd_length_pads_one_zero() {
        let c = pack(&[1.0, 2.0, 3.0], Pairing::Halves).unwrap();
        assert_eq!(c, vec![Complex32::new(1.0, 3.0), Complex32::new(2.0, 0.0)]);
        let c = pack(&[1.0, 2.0, 3.0], Pairing::Adjacent).unwrap();
        assert_eq!(c, vec![Complex32::new(1.0, 2.0), Complex32::new(3.0, 0.0)]);
        assert_eq!(
            unpack_rows(&c, 1, 3, Pairing::Adjacent).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn rows_round_trip() {
        let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
        for p in [
            Pairing::Halves,
            Pairing::Adjacent,
            Pairing::HeadHalves { head_dim: 4 },
        ] {
            let c = pack_rows(&x, 3, 8, p).unwrap();
            assert_eq!(c.len(), 12);
            assert_eq!(unpack_rows(&c, 3, 8, p).unwrap(), x);
            assert_eq!(unpack(&pack(&x[..8], p).unwrap(), p).unwrap(), &x[..8]);
        }
    }

    #[test]
    fn rows_follow_real_index() {
        for (p, cols) in [
            (Pairing::Halves, 10usize),
            (Pairing::Halves, 9),
            (Pairing::Adjacent, 10),
            (Pairing::Adjacent, 7),
            (Pairing::HeadHalves { head_dim: 4 }, 12),
        ] {
            let x: Vec<f32> = (0..2 * cols).map(|i| i as f32 + 1.0).collect();
            let k = cols.div_ceil(2);
            let c = pack_rows(&x, 2, cols, p).unwrap();
            for (row, z) in x.chunks(cols).zip(c.chunks(k)) {
                for (j, z) in z.iter().enumerate() {
                    let (re, im) = real_index(p, 2 * k, j);
                    let at = |c: usize| row.get(c).copied().unwrap_or(0.0);
                    assert_eq!(*z, Complex32::new(at(re), at(im)), "{p:?} slot {j}");
                }
            }
            assert_eq!(unpack_rows(&c, 2, cols, p).unwrap(), x, "{p:?}");
        }
    }
}
