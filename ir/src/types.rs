//! Element types, dimensions and tensor types.

use std::fmt;

/// Element type of a tensor.
///
/// `C64` is a complex number of two `f32` parts, a first-class type rather than
/// a pair of real tensors, so that passes can reason about complex data flow.
/// `Code2` is one element of the codebook {+1, -1, +i, -i}, stored packed four
/// to a byte; a code tensor always travels with its scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    C64,
    I32,
    Code2,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::C64,
        DType::I32,
        DType::Code2,
    ];

    /// The spelling used by the textual IR.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::C64 => "c64",
            DType::I32 => "i32",
            DType::Code2 => "code2",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Real floating-point types (the ones arithmetic ops accept besides `c64`).
    pub fn is_real_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Types that arithmetic ops accept.
    pub fn is_numeric(self) -> bool {
        self.is_real_float() || self == DType::C64
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a shape: a known size, or a named symbol such as `seq`
/// that is bound when the graph runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Sym(_) => None,
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(name: &str) -> Dim {
        Dim::sym(name)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A shape: a list of dimensions, outermost first (row-major).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn new(dims: impl IntoIterator<Item = impl Into<Dim>>) -> Shape {
        Shape(dims.into_iter().map(Into::into).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    pub fn last(&self) -> Option<&Dim> {
        self.0.last()
    }

    /// The shape with its last dimension replaced.
    pub fn with_last(&self, dim: Dim) -> Shape {
        let mut dims = self.0.clone();
        if let Some(last) = dims.last_mut() {
            *last = dim;
        }
        Shape(dims)
    }

    /// Element count as a product of a fixed part and a sorted list of
    /// symbols, so that shapes with symbols can be compared for reshapes.
    /// `None` if the fixed part overflows.
    pub fn symbolic_size(&self) -> Option<(usize, Vec<&str>)> {
        let mut fixed = 1usize;
        let mut syms = Vec::new();
        for d in &self.0 {
            match d {
                Dim::Fixed(n) => fixed = fixed.checked_mul(*n)?,
                Dim::Sym(s) => syms.push(s.as_str()),
            }
        }
        syms.sort_unstable();
        Some((fixed, syms))
    }

    /// Concrete sizes, if every dimension is fixed.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.clone().fixed()).collect()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of an SSA value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}
