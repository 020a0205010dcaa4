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
    check_len("pack_rows input", x.len(), rows * cols)?;
    let k = cols.div_ceil(2);
    let table = p.table(2 * k)?;
    // The padded channel (index `cols` for odd `cols`) reads as zero.
    let at = |row: &[f32], c: usize| row.get(c).copied().unwrap_or(0.0);
    let mut out = Vec::with_capacity(rows * k);
    for row in x.chunks(cols.max(1)).take(rows) {
        out.extend(
            table
                .iter()
                .map(|&(re, im)| Complex32::new(at(row, re), at(row, im))),
        );
    }
    Ok(out)
}

/// The inverse of [`pack_rows`]: `[rows, ceil(cols / 2)]` complex to
/// `[rows, cols]` real, dropping the padded channel of an odd `cols`.
pub fn unpack_rows(
    c: &[Complex32],
    rows: usize,
    cols: usize,
    p: Pairing,
) -> Result<Vec<f32>, QuantError> {
    let k = cols.div_ceil(2);
    check_len("unpack_rows input", c.len(), rows * k)?;
    let inv = p.inverse_table(2 * k)?;
    let mut out = Vec::with_capacity(rows * cols);
    for row in c.chunks(k.max(1)).take(rows) {
        out.extend(
            inv[..cols]
                .iter()
                .map(|&(j, imag)| if imag { row[j].im } else { row[j].re }),
        );
    }
    Ok(out)
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
}
