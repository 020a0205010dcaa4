//! Real dense products through cuBLASLt: each distinct product (its
//! transposes, sizes, leading dimensions and element types) is planned once
//! (descriptors, and the algorithm cuBLASLt's heuristic puts first for it
//! with a 32 MiB workspace) and the plan kept for the program's life; the
//! legacy `cublasGemmEx` leaves that choice to cuBLAS on every call. (On
//! the QAT step of docs/BENCHMARKS.md the two measured alike, and by Nsight
//! Compute the heuristic's kernels run within 7-21% of PyTorch's at the
//! step's shapes, the difference being the f32 result.) With
//! `FAIRYC_GEMM_TUNE` set, a plan times the first eight on its first
//! product and keeps the fastest: it gained nothing measurable there, so
//! it is not the default.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::driver;
use crate::cuda::GpuMatmul;
use crate::BackendError;

/// The workspace cuBLASLt's Hopper kernels are given.
const WORKSPACE_BYTES: usize = 32 << 20;

/// How many of cuBLASLt's heuristic choices a product considers.
const CANDIDATES: usize = 8;

/// `c(m×n) = op(a)(m×k) · op(b)(k×n)`, column-major, as cuBLAS takes it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) struct Product {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    /// bf16 operands (else f32); the result is f32 either way.
    pub bf16: bool,
    /// f32 operands on tensor cores rounded to TF32 or bf16 (cuBLAS's fast
    /// f32 compute types); f32 throughout otherwise.
    pub fast: Option<sys::cublasComputeType_t>,
}

/// The fast compute type of f32 operands that `matmul` asks for.
pub(super) fn fast_compute(matmul: GpuMatmul) -> Option<sys::cublasComputeType_t> {
    match matmul {
        GpuMatmul::F32 => None,
        GpuMatmul::Tf32 => Some(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32),
        GpuMatmul::Bf16 => Some(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF),
    }
}

/// One planned product: its descriptors, the algorithms cuBLASLt's
/// heuristic offers for it (its first choice first) and the one it runs.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each was created once, by `Plan::new` (a null one was
        // never made), and is destroyed once, here; a failure to destroy
        // leaks it, nothing more.
        unsafe {
            for layout in [self.a, self.b, self.c] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

fn blas(e: lt::CublasError) -> BackendError {
    BackendError::new(format!("cuBLASLt: {e:?}"))
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, p: &Product) -> Result<Plan, BackendError> {
        use sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F};
        let operands = if p.bf16 { CUDA_R_16BF } else { CUDA_R_32F };
        let compute = match (p.bf16, p.fast) {
            (false, Some(fast)) => fast,
            _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let layout = |ty, rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(blas)
        };
        let (a_rows, a_cols) = if p.transa { (p.k, p.m) } else { (p.m, p.k) };
        let (b_rows, b_cols) = if p.transb { (p.n, p.k) } else { (p.k, p.n) };
        let desc = lt::create_matmul_desc(compute, CUDA_R_32F).map_err(blas)?;
        // Each piece is owned by the plan as soon as it exists, so that an
        // error part way frees what was made.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            candidates: Vec::new(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        plan.a = layout(operands, a_rows, a_cols, p.lda)?;
        plan.b = layout(operands, b_rows, b_cols, p.ldb)?;
        plan.c = layout(CUDA_R_32F, p.m, p.n, p.ldc)?;
        // cuBLAS's cublasOperation_t, as the int32 the attribute holds.
        let op = |t: bool| {
            use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
            (if t { CUBLAS_OP_T } else { CUBLAS_OP_N }) as i32
        };
        for (attribute, t) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                op(p.transa),
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                op(p.transb),
            ),
        ] {
            // SAFETY: the attribute takes an int32, passed by pointer with
            // its size.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    attribute,
                    (&t as *const i32).cast(),
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(blas)?;
        }
        let preference = lt::create_matmul_pref().map_err(blas)?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: all zeros is a valid heuristic result (plain data).
        let mut offered: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
            unsafe { std::mem::zeroed() };
        let mut count = 0;
        // SAFETY: the attribute takes a u64, passed by pointer with its
        // size; the heuristic fills at most CANDIDATES results and says how
        // many; the preference is destroyed once, after its last use.
        unsafe {
            let asked = lt::set_matmul_pref_attribute(
                preference,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .and_then(|()| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    preference,
                    CANDIDATES as i32,
                    offered.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(preference);
            asked
        }
        .map_err(blas)?;
        plan.candidates = offered[..count.max(0) as usize]
            .iter()
            .filter(|h| h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|h| h.algo)
            .collect();
        plan.algo = *plan
            .candidates
            .first()
            .ok_or_else(|| BackendError::new(format!("cuBLASLt has no algorithm for {p:?}")))?;
        Ok(plan)
    }
}

/// A program's cuBLASLt handle, workspace and plans.
pub(super) struct Products {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// Held through each product, so that one product at a time uses the
    /// handle and the workspace.
    plans: Mutex<HashMap<Product, Plan>>,
    /// Whether a new plan times the heuristic's candidates on its first
    /// product and keeps the fastest (`FAIRYC_GEMM_TUNE` set), or takes the
    /// heuristic's first.
    tune: bool,
}

// SAFETY: the handle and the plans' descriptors are used only under the
// `plans` lock (one product at a time); raw pointers are what keep them
// from being Send and Sync on their own.
unsafe impl Send for Products {}
unsafe impl Sync for Products {}

impl Drop for Products {
    fn drop(&mut self) {
        self.plans
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // SAFETY: the handle was created once, by `Products::new`.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Products {
    pub(super) fn new(stream: &Arc<CudaStream>) -> Result<Products, BackendError> {
        let handle = lt::create_handle().map_err(blas)?;
        // SAFETY: cuBLASLt writes the workspace before it reads it.
        let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above, used by nothing yet.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(driver(e));
            }
        };
        Ok(Products {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
            tune: std::env::var_os("FAIRYC_GEMM_TUNE").is_some(),
        })
    }

    /// `c = op(a) · op(b)` (`p` says how) on `stream`.
    ///
    /// # Safety
    /// `a`, `b` and `c` hold the matrices `p` describes: for each, at least
    /// `ld · (columns − 1) + rows` elements (bf16 ones two a word).
    pub(super) unsafe fn run(
        &self,
        stream: &Arc<CudaStream>,
        p: Product,
        a: &CudaSlice<u32>,
        b: &CudaSlice<u32>,
        c: &mut CudaSlice<u32>,
    ) -> Result<(), BackendError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pc, _rc) = c.device_ptr_mut(stream);
        let buffers = Buffers {
            a: pa,
            b: pb,
            c: pc,
        };
        let plan = match plans.entry(p) {
            std::collections::hash_map::Entry::Occupied(planned) => planned.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let mut plan = Plan::new(self.handle, &p)?;
                if self.tune && plan.candidates.len() > 1 {
                    plan.algo = self.fastest(stream, &plan, buffers)?;
                }
                new.insert(plan)
            }
        };
        self.enqueue(stream, plan, &plan.algo, buffers)
    }

    /// The plan's candidate that runs its product fastest on `buffers`,
    /// each timed by events over a few runs after one to warm it.
    fn fastest(
        &self,
        stream: &Arc<CudaStream>,
        plan: &Plan,
        buffers: Buffers,
    ) -> Result<sys::cublasLtMatmulAlgo_t, BackendError> {
        const RUNS: usize = 3;
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut best = (f32::INFINITY, plan.candidates[0]);
        for algo in &plan.candidates {
            // A candidate the library refuses at run time is passed over.
            if self.enqueue(stream, plan, algo, buffers).is_err() {
                continue;
            }
            let start = stream.record_event(timing).map_err(driver)?;
            for _ in 0..RUNS {
                self.enqueue(stream, plan, algo, buffers)?;
            }
            let end = stream.record_event(timing).map_err(driver)?;
            end.synchronize().map_err(driver)?;
            let ms = start.elapsed_ms(&end).map_err(driver)?;
            if ms < best.0 {
                best = (ms, *algo);
            }
        }
        Ok(best.1)
    }

    /// Enqueues `c = op(a) · op(b)` by `algo` on `stream`.
    fn enqueue(
        &self,
        stream: &Arc<CudaStream>,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        buffers: Buffers,
    ) -> Result<(), BackendError> {
        let (one, zero) = (1.0f32, 0.0f32);
        let (pw, _rw) = self.workspace.device_ptr(stream);
        // SAFETY: the callers pass the matrices' true sizes and leading
        // dimensions, which the plan's layouts hold; the buffers hold them;
        // the scalars are f32, the plan's scale type; the workspace is the
        // size the algorithm was chosen for.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&one as *const f32).cast(),
                (&zero as *const f32).cast(),
                buffers.a as *const c_void,
                plan.a,
                buffers.b as *const c_void,
                plan.b,
                buffers.c as *const c_void,
                plan.c,
                buffers.c as *mut c_void,
                plan.c,
                algo,
                pw as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(blas)
    }
}

/// A product's operands and result on the device.
#[derive(Clone, Copy)]
struct Buffers {
    a: cudarc::driver::sys::CUdeviceptr,
    b: cudarc::driver::sys::CUdeviceptr,
    c: cudarc::driver::sys::CUdeviceptr,
}
