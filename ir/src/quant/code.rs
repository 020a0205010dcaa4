//! The 2-bit codebook `S = {+1, -1, +i, -i}` (section 3.2) and its packing.
//!
//! # Bit assignment
//! Bit 0 is the axis (0 real, 1 imaginary) and bit 1 the sign (0 positive,
//! 1 negative):
//!
//! | code | bits | value |
//! |------|------|-------|
//! | `+1` | `00` | 0     |
//! | `+i` | `01` | 1     |
//! | `-1` | `10` | 2     |
//! | `-i` | `11` | 3     |
//!
//! The value `k` is also the exponent in `b = i^k`, so multiplying by a code
//! is a rotation by `k` quarter turns. A multiplication-free kernel
//! (Algorithm 1) reads bit 0 to choose `x_re` or `x_im` (the swap for `±i`)
//! and bit 1 to choose add or subtract:
//! `b·x = (-1)^bit1 · (bit0 ? i·x : x)`.
//!
//! # Packing
//! Four codes per byte; code `k` of a group of four sits in bits `2k..2k+1`
//! (the first code in the least significant bits). A tail shorter than four
//! is padded with `+1` (`00`), so padding bits are zero. Padding codes decode
//! to `+s_re`: a kernel must stop at the true row length or multiply the
//! padding by zero activations.

use num_complex::Complex32;

use super::QuantError;

/// One 2-bit codeword; see the module docs for the bit assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// `+1`, bits `00`.
    PlusOne = 0b00,
    /// `+i`, bits `01`.
    PlusI = 0b01,
    /// `-1`, bits `10`.
    MinusOne = 0b10,
    /// `-i`, bits `11`.
    MinusI = 0b11,
}

impl Code {
    /// The code that padding uses.
    pub const PAD: Code = Code::PlusOne;

    /// The 2-bit value (`k` with `b = i^k`).
    #[inline]
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// The code of a 2-bit value; higher bits are ignored.
    #[inline]
    pub fn from_bits(bits: u8) -> Code {
        match bits & 0b11 {
            0b00 => Code::PlusOne,
            0b01 => Code::PlusI,
            0b10 => Code::MinusOne,
            _ => Code::MinusI,
        }
    }

    /// True for `±i`.
    #[inline]
    pub fn is_imag(self) -> bool {
        self.bits() & 1 != 0
    }

    /// True for `-1` and `-i`.
    #[inline]
    pub fn is_negative(self) -> bool {
        self.bits() & 2 != 0
    }

    /// `(b_re, b_im)` with entries in {-1, 0, +1} (eq. 12's `b = b_re + i b_im`).
    #[inline]
    pub fn parts(self) -> (f32, f32) {
        match self {
            Code::PlusOne => (1.0, 0.0),
            Code::MinusOne => (-1.0, 0.0),
            Code::PlusI => (0.0, 1.0),
            Code::MinusI => (0.0, -1.0),
        }
    }

    /// The dequantized weight `s_re b_re + i s_im b_im` (eq. 12): exactly
    /// `±s_re` or `±i s_im`.
    #[inline]
    pub fn scaled(self, s_re: f32, s_im: f32) -> Complex32 {
        match self {
            Code::PlusOne => Complex32::new(s_re, 0.0),
            Code::MinusOne => Complex32::new(-s_re, 0.0),
            Code::PlusI => Complex32::new(0.0, s_im),
            Code::MinusI => Complex32::new(0.0, -s_im),
        }
    }

    /// PhaseQuant's projection `b(w) = argmax_s Re(w conj(s))` (eq. 10) with
    /// the authors' half-open sectors (anchor, section 2): `+1` on
    /// `[-π/4, π/4)`, `+i` on `[π/4, 3π/4)`, `-1` on `[3π/4, π] ∪ [-π, -3π/4)`,
    /// `-i` on `[-3π/4, -π/4)`.
    ///
    /// Off the diagonals the larger of `|re|`, `|im|` wins. A tie
    /// (`|re| = |im| > 0`) goes to the counter-clockwise codeword: same signs
    /// to the imaginary axis, opposite signs to the real axis. Exact zero
    /// (either sign) and NaN give `+1` (`angle(0) = 0`).
    #[inline]
    pub fn nearest(re: f32, im: f32) -> Code {
        let (ar, ai) = (re.abs(), im.abs());
        let real_axis = |re: f32| {
            if re > 0.0 {
                Code::PlusOne
            } else {
                Code::MinusOne
            }
        };
        let imag_axis = |im: f32| if im > 0.0 { Code::PlusI } else { Code::MinusI };
        if ar > ai {
            real_axis(re)
        } else if ai > ar {
            imag_axis(im)
        } else if ar > 0.0 {
            if (re > 0.0) == (im > 0.0) {
                imag_axis(im)
            } else {
                real_axis(re)
            }
        } else {
            Code::PlusOne
        }
    }
}

/// Packs codes four per byte (code `k` of a group in bits `2k..2k+1`), the
/// last byte padded with [`Code::PAD`]. Output length `ceil(len / 4)`.
pub fn pack_codes(codes: &[Code]) -> Vec<u8> {
    codes
        .chunks(4)
        .map(|group| {
            group
                .iter()
                .enumerate()
                .fold(0u8, |byte, (k, c)| byte | (c.bits() << (2 * k)))
        })
        .collect()
}

/// The first `n` codes of a packed stream.
///
/// # Panics
/// If `bytes` holds fewer than `n` codes.
pub fn unpack_codes(bytes: &[u8], n: usize) -> Vec<Code> {
    assert!(
        4 * bytes.len() >= n,
        "unpack_codes: {n} codes need {} bytes",
        n.div_ceil(4)
    );
    (0..n)
        .map(|i| Code::from_bits(bytes[i / 4] >> (2 * (i % 4))))
        .collect()
}

/// Packs a row-major `[rows, cols]` code matrix row by row: each row starts
/// on a byte boundary and takes `ceil(cols / 4)` bytes, its tail padded with
/// [`Code::PAD`].
pub fn pack_code_rows(codes: &[Code], rows: usize, cols: usize) -> Result<Vec<u8>, QuantError> {
    super::check_len("pack_code_rows input", codes.len(), rows * cols)?;
    if cols == 0 {
        return Ok(Vec::new());
    }
    Ok(codes.chunks(cols).flat_map(pack_codes).collect())
}

/// The inverse of [`pack_code_rows`].
pub fn unpack_code_rows(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<Code>, QuantError> {
    let stride = cols.div_ceil(4);
    if bytes.len() != rows * stride {
        return Err(QuantError::Mismatch {
            what: "packed code rows (bytes)",
            expected: rows * stride,
            got: bytes.len(),
        });
    }
    if stride == 0 {
        return Ok(Vec::new());
    }
    Ok(bytes
        .chunks(stride)
        .flat_map(|row| unpack_codes(row, cols))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_powers_of_i() {
        for (k, c) in [Code::PlusOne, Code::PlusI, Code::MinusOne, Code::MinusI]
            .into_iter()
            .enumerate()
        {
            assert_eq!(c.bits() as usize, k);
            assert_eq!(Code::from_bits(c.bits()), c);
            // i^k: cos(kπ/2) + i sin(kπ/2).
            let angle = k as f32 * std::f32::consts::FRAC_PI_2;
            let (re, im) = c.parts();
            assert!((re - angle.cos()).abs() < 1e-6 && (im - angle.sin()).abs() < 1e-6);
            assert_eq!(c.is_imag(), im != 0.0);
            assert_eq!(c.is_negative(), re < 0.0 || im < 0.0);
        }
    }

    #[test]
    fn byte_layout() {
        use Code::*;
        // Bits 0-1: +i (01), 2-3: -1 (10), 4-5: -i (11), 6-7: +1 (00).
        assert_eq!(
            pack_codes(&[PlusI, MinusOne, MinusI, PlusOne]),
            vec![0b00_11_10_01]
        );
        assert_eq!(pack_codes(&[MinusI]), vec![0b11]);
        assert_eq!(pack_codes(&[]), Vec::<u8>::new());
    }

    #[test]
    fn rows_start_on_bytes() {
        use Code::*;
        let codes = [
            MinusI, MinusI, MinusI, MinusI, MinusI, PlusI, PlusI, PlusI, PlusI, PlusI,
        ];
        let bytes = pack_code_rows(&codes, 2, 5).unwrap();
        assert_eq!(bytes, vec![0xff, 0b11, 0b0101_0101, 0b01]);
        assert_eq!(unpack_code_rows(&bytes, 2, 5).unwrap(), codes);
        assert!(unpack_code_rows(&bytes, 2, 9).is_err());
    }
}
