//! cuBLASLt's candidate algorithms for a GEMM shape: the ways other than `cublasGemmEx`'s own
//! choice that [`Cuda`](super::driver::Cuda) offers through [`Backend::gemm_ways`].
//!
//! Design decision: we do not pick an algorithm by its advertised configuration (tile, split-K,
//! reduction scheme); cuBLASLt does not say which of them sum a row in an order that depends on
//! where the row sits (stream-K kernels do). The engine tries the ways on its own GEMM shapes when
//! a model loads and keeps the first whose rows come out the same bits wherever they sit; this
//! module only lists the heuristic's candidates, fastest first, and runs the one asked for.
//!
//! [`Backend::gemm_ways`]: super::driver::Backend::gemm_ways

use super::driver::{Gemm, Prec};
use cudarc::cublaslt::sys as lt;
use std::collections::HashMap;
use std::ffi::c_void;

/// Candidates asked of the heuristic per shape.
const CANDIDATES: usize = 16;

/// One GEMM shape's descriptors and candidate algorithms. cuBLASLt is column-major; as with
/// `cublasGemmEx`, the call is cᵀ[n × m] = op(w)[n × k] · aᵀ[k × m], `w` stored k × n (op T).
struct Shape {
    desc: lt::cublasLtMatmulDesc_t,
    w: lt::cublasLtMatrixLayout_t,
    a: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    algos: Vec<lt::cublasLtMatmulAlgo_t>,
}

/// The cuBLASLt handle (made on first use) and each shape asked about; a shape whose candidates
/// could not be listed has none (and `why` says what failed, for reports).
pub struct Lt {
    handle: Option<lt::cublasLtHandle_t>,
    shapes: HashMap<(usize, usize, usize), Shape>,
    pub why: Option<String>,
}

fn check(what: &str, s: lt::cublasStatus_t) -> Result<(), String> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {s:?}"))
    }
}

fn data_type(p: Prec) -> lt::cudaDataType {
    match p {
        Prec::F32 => lt::cudaDataType::CUDA_R_32F,
        Prec::F16 => lt::cudaDataType::CUDA_R_16F,
        Prec::Bf16 => lt::cudaDataType::CUDA_R_16BF,
    }
}

impl Lt {
    pub fn new() -> Lt {
        Lt { handle: None, shapes: HashMap::new(), why: None }
    }

    /// How many candidates `g`'s shape has, listing them on first ask (`workspace` bytes at most).
    /// Errors leave the shape without candidates. The caller guards against cudarc's panic on a
    /// missing library.
    pub fn count(&mut self, g: &Gemm, prec: Prec, exact: bool, workspace: usize) -> usize {
        let key = (g.m, g.n, g.k);
        if !self.shapes.contains_key(&key) {
            match self.list(g, prec, exact, workspace) {
                Ok(s) => {
                    self.shapes.insert(key, s);
                }
                Err(e) => {
                    self.why = Some(e);
                    return 0;
                }
            }
        }
        self.shapes.get(&key).map_or(0, |s| s.algos.len())
    }

    fn list(&mut self, g: &Gemm, prec: Prec, exact: bool, workspace: usize) -> Result<Shape, String> {
        let handle = match self.handle {
            Some(h) => h,
            None => {
                let h = cudarc::cublaslt::result::create_handle().map_err(|e| format!("cublasLtCreate: {e}"))?;
                self.handle = Some(h);
                h
            }
        };
        let compute = if exact { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC } else { lt::cublasComputeType_t::CUBLAS_COMPUTE_32F };
        let (t, f32t) = (data_type(prec), lt::cudaDataType::CUDA_R_32F);
        let desc = cudarc::cublaslt::result::create_matmul_desc(compute, f32t).map_err(|e| format!("cublasLtMatmulDescCreate: {e}"))?;
        let mut shape = Shape { desc, w: std::ptr::null_mut(), a: std::ptr::null_mut(), c: std::ptr::null_mut(), algos: Vec::new() };
        // SAFETY: the descriptor and layouts are live; attribute buffers are the documented types
        // (cublasOperation_t and uint64_t).
        let listed = unsafe {
            let op_t: i32 = 1; // CUBLAS_OP_T
            let set = lt::cublasLtMatmulDescSetAttribute(desc, lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, (&op_t as *const i32).cast(), 4);
            check("cublasLtMatmulDescSetAttribute(TRANSA)", set).and_then(|()| {
                let layout = |t, rows: usize, cols: usize| cudarc::cublaslt::result::create_matrix_layout(t, rows as u64, cols as u64, rows as i64).map_err(|e| format!("cublasLtMatrixLayoutCreate: {e}"));
                shape.w = layout(t, g.k, g.n)?;
                shape.a = layout(t, g.k, g.m)?;
                shape.c = layout(f32t, g.n, g.m)?;
                let pref = cudarc::cublaslt::result::create_matmul_pref().map_err(|e| format!("cublasLtMatmulPreferenceCreate: {e}"))?;
                let ws = workspace as u64;
                let r = check(
                    "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)",
                    lt::cublasLtMatmulPreferenceSetAttribute(pref, lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&ws as *const u64).cast(), 8),
                )
                .and_then(|()| {
                    let mut found: [lt::cublasLtMatmulHeuristicResult_t; CANDIDATES] = std::mem::zeroed();
                    let mut n = 0i32;
                    check(
                        "cublasLtMatmulAlgoGetHeuristic",
                        lt::cublasLtMatmulAlgoGetHeuristic(handle, desc, shape.w, shape.a, shape.c, shape.c, pref, CANDIDATES as i32, found.as_mut_ptr(), &mut n),
                    )?;
                    let usable = found.iter().take(n.max(0) as usize).filter(|h| h.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS && h.workspaceSize <= workspace);
                    Ok(usable.map(|h| h.algo).collect())
                });
                let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
                r
            })
        };
        match listed {
            Ok(algos) => {
                shape.algos = algos;
                Ok(shape)
            }
            Err(e) => {
                destroy(&shape);
                Err(e)
            }
        }
    }

    /// Candidate `i` of `g`'s shape, described by its configuration.
    pub fn name(&self, g: &Gemm, i: usize) -> String {
        let Some(algo) = self.shapes.get(&(g.m, g.n, g.k)).and_then(|s| s.algos.get(i)) else { return format!("cuBLASLt candidate {i} (not listed)") };
        let get = |attr| {
            let mut v = 0u32;
            let mut written = 0usize;
            // SAFETY: `algo` came from the heuristic; these attributes are 32-bit integers.
            let s = unsafe { lt::cublasLtMatmulAlgoConfigGetAttribute(algo, attr, (&mut v as *mut u32).cast(), 4, &mut written) };
            if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS { v.to_string() } else { "?".into() }
        };
        use lt::cublasLtMatmulAlgoConfigAttributes_t as A;
        format!(
            "cuBLASLt candidate {i} (algorithm {}, tile {}, split-k {}, reduction {})",
            get(A::CUBLASLT_ALGO_CONFIG_ID),
            get(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
            get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
            get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME)
        )
    }

    /// Runs `g` on candidate `i` of its shape (listed by [`Lt::count`]) on `stream`.
    pub fn run(&self, g: &Gemm, i: usize, stream: *mut c_void, workspace: (u64, usize)) -> Result<(), String> {
        let (Some(handle), Some(s)) = (self.handle, self.shapes.get(&(g.m, g.n, g.k))) else { return Err("the shape's candidates were not listed".into()) };
        let algo = s.algos.get(i).ok_or_else(|| format!("no candidate {i}"))?;
        let (alpha, beta) = (1f32, if g.accumulate { 1f32 } else { 0f32 });
        // SAFETY: the addresses are live device buffers of the shapes the layouts describe; the
        // workspace is the handle's and as large as the heuristic was told.
        let s = unsafe {
            lt::cublasLtMatmul(
                handle,
                s.desc,
                (&alpha as *const f32).cast(),
                g.w as *const c_void,
                s.w,
                g.a as *const c_void,
                s.a,
                (&beta as *const f32).cast(),
                g.c as *const c_void,
                s.c,
                g.c as *mut c_void,
                s.c,
                algo,
                workspace.0 as *mut c_void,
                workspace.1,
                stream.cast(),
            )
        };
        check(&format!("cublasLtMatmul {}×{}×{}", g.m, g.n, g.k), s)
    }
}

fn destroy(s: &Shape) {
    // SAFETY: each handle was created by `list` and is destroyed once; null ones were not made.
    unsafe {
        for l in [s.w, s.a, s.c] {
            if !l.is_null() {
                let _ = lt::cublasLtMatrixLayoutDestroy(l);
            }
        }
        let _ = lt::cublasLtMatmulDescDestroy(s.desc);
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        for s in self.shapes.values() {
            destroy(s);
        }
        if let Some(h) = self.handle {
            // SAFETY: created in `list`, destroyed once.
            unsafe {
                let _ = lt::cublasLtDestroy(h);
            }
        }
    }
}
