//! ggml tensor element types and their block geometry.

use std::fmt;

/// A ggml tensor element type, with the numeric id that GGUF files store.
///
/// Quantized types pack [`block_size`](Self::block_size) elements into
/// [`type_size`](Self::type_size) bytes; plain types have a block size of 1.
/// Ids that ggml retired (4, 5, 31..=33, 36..=38) are not representable.
#[allow(non_camel_case_types)] // ggml's own spelling, which users grep for
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

/// Elements in one K-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 34] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
    ];

    /// The type with ggml id `id`, or `None` for unknown or retired ids.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The ggml id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// llama.cpp's name for the type, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        self.geometry().0
    }

    /// Number of elements in one block (1 for unquantized types).
    pub fn block_size(self) -> usize {
        self.geometry().1
    }

    /// Number of bytes in one block.
    pub fn type_size(self) -> usize {
        self.geometry().2
    }

    /// (name, block size, type size), from the block structs of ggml-common.h.
    fn geometry(self) -> (&'static str, usize, usize) {
        match self {
            Self::F32 => ("F32", 1, 4),
            Self::F16 => ("F16", 1, 2),
            Self::Q4_0 => ("Q4_0", 32, 2 + 16),
            Self::Q4_1 => ("Q4_1", 32, 2 + 2 + 16),
            Self::Q5_0 => ("Q5_0", 32, 2 + 4 + 16),
            Self::Q5_1 => ("Q5_1", 32, 2 + 2 + 4 + 16),
            Self::Q8_0 => ("Q8_0", 32, 2 + 32),
            // gguf-py still says 40 bytes (old f32 fields); ggml's struct is 36.
            Self::Q8_1 => ("Q8_1", 32, 2 + 2 + 32),
            Self::Q2_K => ("Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
            Self::Q3_K => ("Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
            Self::Q4_K => ("Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
            Self::Q5_K => ("Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
            Self::Q6_K => ("Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
            Self::Q8_K => ("Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2),
            Self::IQ2_XXS => ("IQ2_XXS", QK_K, 2 + QK_K / 8 * 2),
            Self::IQ2_XS => ("IQ2_XS", QK_K, 2 + QK_K / 8 * 2 + QK_K / 32),
            Self::IQ3_XXS => ("IQ3_XXS", QK_K, 2 + 3 * QK_K / 8),
            Self::IQ1_S => ("IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
            Self::IQ4_NL => ("IQ4_NL", 32, 2 + 16),
            Self::IQ3_S => ("IQ3_S", QK_K, 2 + 13 * (QK_K / 32) + QK_K / 64),
            Self::IQ2_S => ("IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
            Self::IQ4_XS => ("IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2),
            Self::I8 => ("I8", 1, 1),
            Self::I16 => ("I16", 1, 2),
            Self::I32 => ("I32", 1, 4),
            Self::I64 => ("I64", 1, 8),
            Self::F64 => ("F64", 1, 8),
            Self::IQ1_M => ("IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
            Self::BF16 => ("BF16", 1, 2),
            Self::TQ1_0 => ("TQ1_0", QK_K, (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2),
            Self::TQ2_0 => ("TQ2_0", QK_K, QK_K / 4 + 2),
            Self::MXFP4 => ("MXFP4", 32, 1 + 16),
            Self::NVFP4 => ("NVFP4", 64, 4 + 32),
            Self::Q1_0 => ("Q1_0", 128, 2 + 16),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
