//! Dense tensors the reference executor computes on.

use std::any::Any;
use std::sync::Arc;

use fairyc_ir::SharedBytes;
use num_complex::Complex32;

/// Element storage of a tensor. Half-precision weights are widened to f32
/// when they are loaded: the reference executor computes in f32.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    C64(Vec<Complex32>),
    I32(Vec<i32>),
    /// {+1, -1, +i, -i} codes, packed four to a byte, each row padded to a
    /// whole byte (the layout of `fairyc_ir::quant`), shared with the store
    /// they were read from (borrowed from its memory map where it has one).
    Codes(SharedBytes),
    /// Data in a device's memory (a GPU's), opaque to all but the backend
    /// that made it: a program returns its state outputs (a KV cache) this
    /// way so that its next run takes them back without a copy;
    /// [`crate::Program::fetch`] copies one to the host.
    Device(DeviceData),
}

/// A backend's handle to data in its device's memory.
#[derive(Clone)]
pub struct DeviceData(pub Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for DeviceData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceData(..)")
    }
}

impl PartialEq for DeviceData {
    fn eq(&self, other: &DeviceData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::F32(data),
        }
    }

    pub fn c64(shape: Vec<usize>, data: Vec<Complex32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::C64(data),
        }
    }

    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Data::I32(data),
        }
    }

    pub fn codes(shape: Vec<usize>, packed: SharedBytes) -> Tensor {
        Tensor {
            shape,
            data: Data::Codes(packed),
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an f32 tensor, moved out.
    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_c64(&self) -> Option<&[Complex32]> {
        match &self.data {
            Data::C64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            _ => None,
        }
    }

    /// Bytes the data takes in host memory (packed codes as packed;
    /// device data none).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::C64(d) => d.len() * 8,
            Data::I32(d) => d.len() * 4,
            Data::Codes(d) => d.len(),
            Data::Device(_) => 0,
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            Data::F32(_) => "f32",
            Data::C64(_) => "c64",
            Data::I32(_) => "i32",
            Data::Codes(_) => "code2",
            Data::Device(_) => "device",
        }
    }
}

impl Tensor {
    /// The tensor, moved out; what is left is a placeholder with no shape
    /// and no data (allocating nothing), to be overwritten, never read.
    pub fn take(&mut self) -> Tensor {
        std::mem::replace(
            self,
            Tensor {
                shape: Vec::new(),
                data: Data::F32(Vec::new()),
            },
        )
    }
}

/// The tensor of a value that died, handed to the kernel of a node that
/// takes its buffer slot of the memory plan ([`crate::plan`]) so that the
/// kernel builds its output in the dead value's buffers: once they are
/// large enough, a run allocates nothing for its values.
#[derive(Debug, Default)]
pub struct Recycled(Option<Tensor>);

impl Recycled {
    pub fn new(dead: Option<Tensor>) -> Recycled {
        Recycled(dead)
    }

    /// `n` f32 elements of unspecified value (the dead value's buffer where
    /// it was f32 and large enough, else new zeros, which the allocator
    /// hands out as untouched pages for large buffers).
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        match self.0.as_mut().map(|t| &mut t.data) {
            Some(Data::F32(v)) if v.capacity() >= n => sized(std::mem::take(v), n),
            _ => vec![0.0; n],
        }
    }

    /// `n` c64 elements of unspecified value (see [`Recycled::f32s`]).
    pub fn c64s(&mut self, n: usize) -> Vec<Complex32> {
        match self.0.as_mut().map(|t| &mut t.data) {
            Some(Data::C64(v)) if v.capacity() >= n => sized(std::mem::take(v), n),
            _ => vec![Complex32::new(0.0, 0.0); n],
        }
    }

    /// `dims` in the dead value's shape vector.
    pub fn shape(&mut self, dims: &[usize]) -> Vec<usize> {
        let mut shape = self
            .0
            .as_mut()
            .map(|t| std::mem::take(&mut t.shape))
            .unwrap_or_default();
        shape.clear();
        shape.extend_from_slice(dims);
        shape
    }

    /// An f32 tensor of `dims` whose every element `fill` writes.
    pub fn f32_tensor(&mut self, dims: &[usize], fill: impl FnOnce(&mut [f32])) -> Tensor {
        let mut data = self.f32s(dims.iter().product());
        fill(&mut data);
        Tensor::f32(self.shape(dims), data)
    }

    /// A c64 tensor of `dims` whose every element `fill` writes.
    pub fn c64_tensor(&mut self, dims: &[usize], fill: impl FnOnce(&mut [Complex32])) -> Tensor {
        let mut data = self.c64s(dims.iter().product());
        fill(&mut data);
        Tensor::c64(self.shape(dims), data)
    }
}

/// `v` at length `n` (within its capacity: no allocation), its elements
/// left as they were where it had them.
fn sized<T: Copy + Default>(mut v: Vec<T>, n: usize) -> Vec<T> {
    v.truncate(n);
    v.resize(n, T::default());
    v
}
