//! What the GPU engine asks of a device ([`Backend`]), and its CUDA implementation through
//! cudarc's thin `result`/`sys` layers: one context, one stream, NVRTC compilation of
//! `kernels.cu`, cuBLAS GEMMs, and CUDA graphs for decode steps.
//!
//! Everything is ordered on one stream; the only host waits are downloads. Device memory is plain
//! addresses (`u64`) owned by the caller, freed with [`Backend::free`]. The tests implement the
//! same trait on the CPU (`emu.rs`), running the kernels' source compiled for the host.

use super::args::{Kernel, KernelArgs, MatvecArgs, MvShape};
use crate::engine::device::{DeviceError, GpuInfo};
use cudarc::cublas::sys as blas;
use cudarc::driver::{result, sys};
use std::ffi::{c_void, CString};

/// The kernel source, compiled at run time.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Storage type of weights and GEMM inputs (the source's `LLM_WT` / `LLM_KT` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prec {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

impl Prec {
    pub fn bytes(self) -> usize {
        if self == Prec::F32 {
            4
        } else {
            2
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Prec::F32 => "f32",
            Prec::F16 => "f16",
            Prec::Bf16 => "bf16",
        }
    }
    fn cuda(self) -> blas::cudaDataType {
        match self {
            Prec::F32 => blas::cudaDataType::CUDA_R_32F,
            Prec::F16 => blas::cudaDataType::CUDA_R_16F,
            Prec::Bf16 => blas::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// What a module of the kernels is compiled for: the GPU architecture, the storage types of the
/// weights and of the KV cache, and the model's head size (0: every size; see
/// [`Kernel::compiled_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub arch: &'a str,
    pub w: Prec,
    pub k: Prec,
    pub head_dim: usize,
}

/// NVRTC options for the source compiled for `t`.
pub fn compile_options(t: Target) -> Vec<String> {
    vec![format!("--gpu-architecture={}", t.arch), "--std=c++17".into(), format!("-DLLM_WT={}", t.w as i32), format!("-DLLM_KT={}", t.k as i32), format!("-DLLM_HD={}", t.head_dim), "--fmad=true".into()]
}

/// Compiles [`SOURCE`] with NVRTC: CUBIN for a real architecture (`sm_90`), PTX for a virtual one
/// (`compute_90`). The error is NVRTC's log.
pub fn compile(t: Target) -> Result<Vec<u8>, String> {
    compile_with(t, &[]).map(|(image, _)| image)
}

/// NVRTC options that change how fast it compiles, never what: spread its optimisation and
/// code generation across the machine's cores (sm_90 bf16 on 2 cores: 28.2 → 16.0 s,
/// BENCHMARKS.md). An NVRTC that does not know them compiles without. Not part of a cached
/// image's name.
const SPEED_OPTIONS: &[&str] = &["--split-compile=0"];

/// [`compile`] with `extra` options (e.g. `--ptxas-options=-v`); also returns NVRTC's log.
pub fn compile_with(t: Target, extra: &[&str]) -> Result<(Vec<u8>, String), String> {
    compile_trying(t, extra, SPEED_OPTIONS)
}

/// [`compile_with`], first with `speed` options added, and without them where NVRTC calls an
/// option invalid.
pub(super) fn compile_trying(t: Target, extra: &[&str], speed: &[&str]) -> Result<(Vec<u8>, String), String> {
    let mut opts = compile_options(t);
    opts.extend(extra.iter().map(|o| o.to_string()));
    let fast: Vec<String> = opts.iter().cloned().chain(speed.iter().map(|o| o.to_string())).collect();
    match compile_once(t.arch, &fast) {
        Err((Some(cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION), _)) if !speed.is_empty() => compile_once(t.arch, &opts).map_err(|(_, e)| e),
        r => r.map_err(|(_, e)| e),
    }
}

/// One NVRTC compile of [`SOURCE`] with `opts`; an error carries NVRTC's code where the compile
/// itself failed.
fn compile_once(arch: &str, opts: &[String]) -> Result<(Vec<u8>, String), (Option<cudarc::nvrtc::sys::nvrtcResult>, String)> {
    use cudarc::nvrtc::{result as nv, sys as nvs};
    let src = CString::new(SOURCE).map_err(|e| (None, e.to_string()))?;
    let name = CString::new("kernels.cu").expect("no NUL");
    let prog = nv::create_program(&src, Some(&name)).map_err(|e| (None, format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: `prog` is a live program; it is destroyed below on every path.
    unsafe {
        let compiled = nv::compile_program(prog, opts);
        let log = nv::get_program_log(prog).map(|l| l.iter().map(|&c| c as u8 as char).collect::<String>()).unwrap_or_default();
        let log = log.trim_end_matches('\0').to_string();
        let r = match compiled {
            Err(e) => Err((Some(e.0), format!("NVRTC ({e:?}): {log}"))),
            Ok(()) if arch.starts_with("sm_") => {
                let mut n = 0usize;
                let st = nvs::nvrtcGetCUBINSize(prog, &mut n);
                if st == nvs::nvrtcResult::NVRTC_SUCCESS {
                    let mut code = vec![0u8; n];
                    let st = nvs::nvrtcGetCUBIN(prog, code.as_mut_ptr().cast());
                    if st == nvs::nvrtcResult::NVRTC_SUCCESS { Ok(code) } else { Err((None, format!("nvrtcGetCUBIN: {st:?}"))) }
                } else {
                    Err((None, format!("nvrtcGetCUBINSize: {st:?}")))
                }
            }
            Ok(()) => nv::get_ptx(prog).map(|p| p.iter().map(|&c| c as u8).collect()).map_err(|e| (None, format!("nvrtcGetPTX: {e:?}"))),
        };
        let _ = nv::destroy_program(prog);
        r.map(|image| (image, log))
    }
}

/// The NVRTC version, e.g. `13.0` (part of a cached image's name).
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters; NVRTC is loaded (cudarc panics otherwise, caught by `guarded`).
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    format!("{major}.{minor}")
}

/// A module image of the kernels, the parts that name it in the kernel cache, and where it came
/// from.
struct KernelImage {
    bytes: Vec<u8>,
    parts: Vec<Vec<u8>>,
    origin: super::cache::Origin,
}

/// The kernels for `t` as a CUBIN, or, from an NVRTC older than the GPU, PTX for the newest
/// architecture it knows (JIT-compiled by the driver, NUL-terminated); through the kernel cache in
/// `dir`.
fn kernel_image(t: Target, dir: Option<&std::path::Path>) -> Result<KernelImage, String> {
    let version = nvrtc_version();
    let parts = |t: Target| vec![SOURCE.as_bytes().to_vec(), compile_options(t).join(" ").into_bytes(), version.clone().into_bytes()];
    let native = parts(t);
    match super::cache::image(dir, &native, || compile(t)) {
        Ok((bytes, origin)) => Ok(KernelImage { bytes, parts: native, origin }),
        Err(_) => {
            let ptx = Target { arch: "compute_80", ..t };
            let ptx_parts = parts(ptx);
            let (bytes, origin) = super::cache::image(dir, &ptx_parts, || {
                let mut p = compile(ptx)?;
                p.push(0);
                Ok(p)
            })?;
            Ok(KernelImage { bytes, parts: ptx_parts, origin })
        }
    }
}

/// An on/off environment setting: `var` is `on` or `1`, `off` or `0`, or unset (or empty) for
/// `default`; anything else is an error naming the variable, with `fix`.
struct Switch {
    var: &'static str,
    default: bool,
    fix: &'static str,
}

impl Switch {
    fn parse(&self, value: Option<&str>) -> Result<bool, String> {
        match value.map(str::trim) {
            Some("on" | "1") => Ok(true),
            Some("off" | "0") => Ok(false),
            None | Some("") => Ok(self.default),
            Some(other) => Err(format!("{}={other:?} is neither on nor off ({})", self.var, self.fix)),
        }
    }

    /// The setting as the environment has it.
    fn read(&self) -> Result<bool, String> {
        self.parse(std::env::var(self.var).ok().as_deref())
    }
}

/// Whether kernels may overlap (see [`Backend::set_overlap`]). Off by default: on an H200, decode
/// at batch 1 ran 4 to 9% faster without it (BENCHMARKS.md).
const OVERLAP: Switch = Switch { var: "LLMEVAL_GPU_OVERLAP", default: false, fix: "set it to on to let each kernel start while the last finishes, or unset it" };

/// Whether decode steps may run in one cooperative launch (where loading times it faster): on by
/// default; `off` runs every step launch by launch (the device then holds no cooperative launch,
/// [`Backend::resident_blocks`]).
const ONE_LAUNCH: Switch = Switch { var: "LLMEVAL_GPU_ONE_LAUNCH", default: true, fix: "set it to off to run every decode step launch by launch, or unset it to let loading time both ways" };

/// A replayable recording of a decode step: a CUDA graph, or a backend's own recording (the
/// tests' emulation keeps a list of launches, numbered).
pub enum Graph {
    Cuda(sys::CUgraphExec),
    Recorded(usize),
}

// SAFETY: an instantiated graph is a handle usable from any thread of its context; the model
// launches it only under its mutex.
unsafe impl Send for Graph {}

/// One GEMM: `c[m × n] (+)= a[m × k] · w[n × k]ᵀ`, row-major, `a`/`w` in the model's storage type,
/// `c` f32. Rows of `a` are tokens; rows of `w` are output features.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub w: u64,
    pub c: u64,
    pub accumulate: bool,
    /// Which of the backend's ways to run this shape ([`Backend::gemm_ways`]; 0: the library's
    /// own choice).
    pub way: usize,
}

/// Rows of a GEMM call on a GPU: enough output tiles to fill an H100-class card on a 1B model's
/// narrowest product, and one call for the 512-token prompts of the benchmarks.
pub const GEMM_ROWS: usize = 512;

/// A device that runs the engine's kernels and GEMMs.
pub trait Backend: Send {
    /// `cuda:N (name)`
    fn label(&self) -> &str;
    /// Makes the device current on the calling thread.
    fn bind(&self) -> Result<(), DeviceError>;
    /// Free and total device memory in bytes.
    fn memory(&self) -> Result<(usize, usize), DeviceError>;
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<u64, DeviceError>;
    fn free(&self, p: u64);
    /// Copies `src` to `dst` (ordered after earlier work; `src` may be reused at once).
    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), DeviceError>;
    /// Waits for earlier work, then copies `src` into `dst`.
    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), DeviceError>;
    fn sync(&self) -> Result<(), DeviceError>;
    /// Allows a kernel up to `bytes` of dynamic shared memory.
    fn set_shared(&self, k: Kernel, bytes: usize) -> Result<(), DeviceError>;
    /// Launches `k` with its argument struct's bytes.
    fn launch_raw(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError>;
    /// How many blocks of `k` (`block` threads, `shared` bytes of dynamic shared memory) the
    /// device holds at once: the most a cooperative launch may have (0 where they are off).
    fn resident_blocks(&self, k: Kernel, block: u32, shared: u32) -> Result<u32, DeviceError>;
    /// Launches `k` on `blocks` blocks that all run at once (a cooperative launch: the driver
    /// refuses it rather than run them in turns), so they may wait for each other.
    fn launch_cooperative(&self, k: Kernel, blocks: u32, block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError>;
    fn gemm(&self, g: &Gemm) -> Result<(), DeviceError>;
    /// Rows of every [`Backend::gemm`] call the engine makes: a product of more rows runs in
    /// calls of this many (the last one padded). A GEMM library picks its algorithm, and with it
    /// each dot product's summation order, by the call's shape; with one shape per product a
    /// token's numbers do not depend on how many tokens share its pass.
    fn gemm_rows(&self) -> usize {
        GEMM_ROWS
    }
    /// How many ways this backend has to run GEMMs of `g`'s shape (`g.way` picks one; way 0, the
    /// library's own choice, always exists). Each may sum in its own order; the engine keeps the
    /// first whose rows come out the same wherever they sit in the call.
    fn gemm_ways(&self, _g: &Gemm) -> usize {
        1
    }
    /// What way `way` of `g`'s shape is, for reports.
    fn gemm_way_name(&self, _g: &Gemm, way: usize) -> String {
        format!("way {way}")
    }
    /// Launches kernels from now on so that each may start while the one before it finishes
    /// (programmatic dependent launch, where the device has it), or not; returns whether it was
    /// on. Recorded graphs keep the way their launches were made.
    fn set_overlap(&self, on: bool) -> bool;
    /// Records what `f` enqueues as a graph (nothing runs); `None` when the backend cannot (the
    /// caller then runs `f` directly, or tries again without overlap).
    fn capture(&self, f: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<Option<Graph>, DeviceError>;
    fn replay(&self, g: &Graph) -> Result<(), DeviceError>;
    fn drop_graph(&self, g: Graph);
    /// Starts a profile (`true`): from then on each [`Backend::mark`] times the operation
    /// enqueued before it. Stopping (`false`) waits for the work and returns each operation's
    /// label, weight elements and milliseconds, in order.
    fn profile(&self, on: bool) -> Result<Vec<Timed>, DeviceError>;
    /// Opens (`true`) or closes the range an external profiler started with
    /// `--profile-from-start off` (Nsight Compute) collects; nothing otherwise.
    fn profiler_range(&self, _on: bool) -> Result<(), DeviceError> {
        Ok(())
    }
    /// In a profile, ends the time of the operation just enqueued (`what`: its label and weight
    /// elements); otherwise nothing.
    fn mark(&self, what: &dyn Fn() -> (String, usize)) -> Result<(), DeviceError>;
}

/// One operation of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub label: String,
    /// weight elements read (0: none counted)
    pub weights: usize,
    pub ms: f64,
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: callers pass slices of plain numbers (i32, f32, f64, u8).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is a valid value of these types.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl dyn Backend {
    pub fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<(), DeviceError> {
        self.upload_bytes(dst, as_bytes(src))
    }
    pub fn download<T: Copy>(&self, src: u64, dst: &mut [T]) -> Result<(), DeviceError> {
        self.download_bytes(src, as_bytes_mut(dst))
    }
    pub fn launch<A: KernelArgs>(&self, grid: [u32; 3], block: u32, shared: u32, args: &A) -> Result<(), DeviceError> {
        self.launch_as(A::KERNEL, grid, block, shared, args)
    }
    /// [`launch`](Self::launch) of `k`, a kernel that takes `A`'s struct (one of attention's head
    /// sizes).
    pub fn launch_as<A: KernelArgs>(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &A) -> Result<(), DeviceError> {
        debug_assert_eq!(k.family(), A::KERNEL, "{} does not take {}", k.name(), A::STRUCT);
        self.launch_marked(k, grid, block, shared, args.bytes(), &|| (args.label(), args.weights()))
    }
    /// The decode product `args` on shape `s`, its inputs of `elem` bytes; a profile names the
    /// shape.
    pub fn launch_product(&self, s: MvShape, elem: usize, args: &MatvecArgs) -> Result<(), DeviceError> {
        let (m, n, k) = (args.m as usize, args.n as usize, args.k as usize);
        self.launch_marked(s.kernel, s.grid(m, n), s.threads(), s.shared(m, k, elem), args.bytes(), &|| (format!("{} ({})", args.label(), s.name()), args.weights()))
    }
    /// Launches `k` (nothing for an empty grid), then marks it for a profile as `what` says.
    fn launch_marked(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &[u8], what: &dyn Fn() -> (String, usize)) -> Result<(), DeviceError> {
        if grid.contains(&0) {
            return Ok(());
        }
        self.launch_raw(k, grid, block, shared, args)?;
        self.mark(what)
    }
    /// `g` as calls of [`Backend::gemm_rows`] rows each, marked for a profile as one operation:
    /// the last call reads and writes up to `gemm_rows − 1` rows past `g.m` (garbage rows, which
    /// `a` and `c` must have room for; no other row depends on them). `elem` is the byte size of
    /// `a`'s elements (`c` is f32).
    pub fn product(&self, g: &Gemm, elem: usize) -> Result<(), DeviceError> {
        let r = self.gemm_rows().max(1);
        let calls = g.m.div_ceil(r);
        for i in 0..calls {
            let (a, c) = (g.a + (i * r * g.k * elem) as u64, g.c + (i * r * g.n * 4) as u64);
            self.gemm(&Gemm { m: r, a, c, ..*g })?;
        }
        if calls > 0 {
            self.mark(&|| (format!("gemm {}×{}×{} ({calls} of {r} rows)", g.m, g.n, g.k), calls * g.n * g.k))?;
        }
        Ok(())
    }
}

/// Bytes of the GEMM libraries' workspace (cuBLAS's and cuBLASLt's, one stream).
const WORKSPACE: usize = 64 << 20;

/// A CUDA GPU.
pub struct Cuda {
    pub label: String,
    pub info: GpuInfo,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    blas: blas::cublasHandle_t,
    module: sys::CUmodule,
    /// each kernel's function, where the module holds it (see [`Kernel::compiled_for`])
    funcs: Vec<Option<sys::CUfunction>>,
    /// the head size the module was compiled for
    head_dim: usize,
    /// cooperative launches allowed (`LLMEVAL_GPU_ONE_LAUNCH`)
    one_launch: bool,
    workspace: u64,
    /// cuBLASLt's candidate algorithms per GEMM shape (the ways after way 0)
    lt: std::sync::Mutex<super::lt::Lt>,
    prec: Prec,
    exact: bool,
    /// a profile's start event and each marked operation's end event
    profiling: std::sync::Mutex<Option<(sys::CUevent, Vec<Marked>)>>,
    /// kernels are launched with programmatic dependent launch (see [`Backend::set_overlap`])
    pdl: std::sync::atomic::AtomicBool,
}

/// An operation of a profile in progress: label, weight elements, the event recorded after it.
type Marked = (String, usize, sys::CUevent);

// SAFETY: the handles are used from one thread at a time (the model keeps its backend behind a
// mutex) and the context is made current before each use.
unsafe impl Send for Cuda {}

fn err(label: &str, what: &str, detail: impl std::fmt::Debug) -> DeviceError {
    DeviceError::Cuda { device: label.to_string(), what: what.to_string(), detail: format!("{detail:?}") }
}

/// Runs a CUDA-calling closure, turning cudarc's panics (a symbol missing from an old driver) into
/// errors.
fn guarded<T>(label: &str, what: &str, f: impl FnOnce() -> Result<T, DeviceError>) -> Result<T, DeviceError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        Err(err(label, what, msg))
    })
}

impl Cuda {
    /// Opens the GPU, compiles the kernels for it (weights in `prec`, heads of `head_dim`; `exact`:
    /// f32 GEMMs without reduced-precision shortcuts) and creates the cuBLAS handle.
    pub fn open(info: &GpuInfo, prec: Prec, kv: Prec, head_dim: usize, exact: bool) -> Result<Cuda, DeviceError> {
        let label = info.label();
        let setting = |s: Switch| s.read().map_err(|e| DeviceError::Cuda { device: label.clone(), what: "starting the GPU".into(), detail: e });
        let overlap = setting(OVERLAP)?;
        let one_launch = setting(ONE_LAUNCH)?;
        let l = label.clone();
        guarded(&label, "starting the GPU", move || {
            result::init().map_err(|e| err(&l, "cuInit", e))?;
            let dev = result::device::get(info.ordinal as i32).map_err(|e| err(&l, "cuDeviceGet", e))?;
            // SAFETY: `dev` is a valid device; the context is released in Drop.
            let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| err(&l, "cuDevicePrimaryCtxRetain", e))?;
            // SAFETY: `ctx` was just retained.
            unsafe { result::ctx::set_current(ctx) }.map_err(|e| err(&l, "cuCtxSetCurrent", e))?;
            let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| err(&l, "cuStreamCreate", e))?;
            let arch = format!("sm_{}{}", info.capability.0, info.capability.1);
            // SAFETY: `image` is a CUBIN or a NUL-terminated PTX text that outlives the call.
            let load = |image: &[u8]| unsafe { result::module::load_data(image.as_ptr().cast()) };
            let cache_dir = super::cache::dir();
            let target = Target { arch: &arch, w: prec, k: kv, head_dim };
            let image = kernel_image(target, cache_dir.as_deref()).map_err(|e| err(&l, "compiling the kernels", e))?;
            let module = match load(&image.bytes) {
                Ok(m) => m,
                // a cached image the driver refuses: forgotten, and compiled afresh
                Err(_) if image.origin == super::cache::Origin::Cache => {
                    super::cache::forget(cache_dir.as_deref(), &image.parts);
                    let fresh = kernel_image(target, None).map_err(|e| err(&l, "compiling the kernels", e))?;
                    load(&fresh.bytes).map_err(|e| err(&l, "cuModuleLoadData", e))?
                }
                Err(e) => return Err(err(&l, "cuModuleLoadData", e)),
            };
            let mut funcs = Vec::new();
            for k in Kernel::ALL.iter().copied() {
                // SAFETY: `module` is loaded.
                let f = || unsafe { result::module::get_function(module, CString::new(k.name()).expect("no NUL")) }.map_err(|e| err(&l, &format!("kernel {}", k.name()), e));
                funcs.push(if k.compiled_for(head_dim) { Some(f()?) } else { None });
            }
            let handle = cudarc::cublas::result::create_handle().map_err(|e| err(&l, "cublasCreate", e))?;
            let mut gpu = Cuda { label: l.clone(), info: info.clone(), dev, ctx, stream, blas: handle, module, funcs, head_dim, one_launch, workspace: 0, lt: std::sync::Mutex::new(super::lt::Lt::new()), prec, exact, profiling: std::sync::Mutex::new(None), pdl: false.into() };
            gpu.set_overlap(overlap);
            // SAFETY: handle and stream are live; the workspace lives as long as the handle.
            unsafe {
                cudarc::cublas::result::set_stream(handle, stream.cast()).map_err(|e| err(&l, "cublasSetStream", e))?;
                gpu.workspace = gpu.alloc(WORKSPACE)?;
                blas::cublasSetWorkspace_v2(handle, gpu.workspace as *mut c_void, WORKSPACE).result().map_err(|e| err(&l, "cublasSetWorkspace", e))?;
                let mode = if exact { blas::cublasMath_t::CUBLAS_PEDANTIC_MATH } else { blas::cublasMath_t::CUBLAS_DEFAULT_MATH };
                blas::cublasSetMathMode(handle, mode).result().map_err(|e| err(&l, "cublasSetMathMode", e))?;
            }
            Ok(gpu)
        })
    }

    /// `k`'s function in the module: an error for a kernel compiled only for another head size.
    fn func(&self, k: Kernel) -> Result<sys::CUfunction, DeviceError> {
        self.funcs[k as usize].ok_or_else(|| err(&self.label, &format!("kernel {}", k.name()), format!("not compiled: the kernels were compiled for heads of {}", self.head_dim)))
    }

    fn current(&self) -> Result<(), DeviceError> {
        // SAFETY: the context lives until Drop.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| err(&self.label, "cuCtxSetCurrent", e))
    }
}

impl Backend for Cuda {
    fn label(&self) -> &str {
        &self.label
    }
    fn bind(&self) -> Result<(), DeviceError> {
        self.current()
    }

    fn memory(&self) -> Result<(usize, usize), DeviceError> {
        self.current()?;
        result::mem_get_info().map_err(|e| err(&self.label, "cuMemGetInfo", e))
    }

    fn alloc(&self, bytes: usize) -> Result<u64, DeviceError> {
        self.current()?;
        // SAFETY: plain allocation; zeroed below before any use.
        unsafe {
            let p = result::malloc_sync(bytes.max(256)).map_err(|e| err(&self.label, &format!("allocating {} MiB", bytes >> 20), e))?;
            result::memset_d8_async(p, 0, bytes.max(256), self.stream).map_err(|e| err(&self.label, "cuMemsetD8", e))?;
            Ok(p)
        }
    }

    fn free(&self, p: u64) {
        if p != 0 {
            // SAFETY: `p` came from `alloc` and is freed once (callers own their addresses).
            unsafe {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::free_sync(p);
            }
        }
    }

    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), DeviceError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller sized `dst` for `src`; pageable copies are staged before returning.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }.map_err(|e| err(&self.label, "cuMemcpyHtoDAsync", e))
    }

    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), DeviceError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller sized `src` for `dst`; the stream is synchronised before reading.
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.stream).map_err(|e| err(&self.label, "cuMemcpyDtoHAsync", e))?;
            result::stream::synchronize(self.stream).map_err(|e| err(&self.label, "running the kernels", e))
        }
    }

    fn sync(&self) -> Result<(), DeviceError> {
        // SAFETY: the stream is live.
        unsafe { result::stream::synchronize(self.stream) }.map_err(|e| err(&self.label, "running the kernels", e))
    }

    fn set_shared(&self, k: Kernel, bytes: usize) -> Result<(), DeviceError> {
        // SAFETY: the function handle is live.
        unsafe { sys::cuFuncSetAttribute(self.func(k)?, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32) }.result().map_err(|e| err(&self.label, "cuFuncSetAttribute", e))
    }

    fn launch_raw(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError> {
        let mut params = [args.as_ptr() as *mut c_void];
        let f = self.func(k)?;
        if self.pdl.load(std::sync::atomic::Ordering::Relaxed) {
            // may start while the kernel before it finishes: the kernel waits for it (pdl_wait);
            // a driver without cuLaunchKernelEx or that refuses the attribute: plain launches
            // from then on
            let attr = |a: &mut sys::CUlaunchAttribute| {
                a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                a.value.programmaticStreamSerializationAllowed = 1;
            };
            match self.launch_ex(f, grid, block, shared, args, attr) {
                Some(sys::CUresult::CUDA_SUCCESS) => return Ok(()),
                _ => self.pdl.store(false, std::sync::atomic::Ordering::Relaxed),
            }
        }
        // SAFETY: the struct matches the kernel's parameter (checked against the source by a
        // test) and every address in it is live device memory sized by the caller.
        unsafe { result::launch_kernel(f, (grid[0], grid[1], grid[2]), (block, 1, 1), shared, self.stream, &mut params) }.map_err(|e| err(&self.label, &format!("launching {}", k.name()), e))
    }

    fn resident_blocks(&self, k: Kernel, block: u32, shared: u32) -> Result<u32, DeviceError> {
        if !self.one_launch {
            return Ok(0);
        }
        self.current()?;
        let mut per_sm = 0i32;
        // SAFETY: the function handle is live; `per_sm` is written by the call.
        unsafe { sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut per_sm, self.func(k)?, block as i32, shared as usize) }.result().map_err(|e| err(&self.label, "cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
        // SAFETY: `dev` is a valid device.
        let sms = unsafe { result::device::get_attribute(self.dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) }.map_err(|e| err(&self.label, "cuDeviceGetAttribute", e))?;
        Ok((per_sm.max(0) * sms.max(0)) as u32)
    }

    fn launch_cooperative(&self, k: Kernel, blocks: u32, block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError> {
        let attr = |a: &mut sys::CUlaunchAttribute| {
            a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            a.value.cooperative = 1;
        };
        let what = format!("launching {} cooperatively", k.name());
        match self.launch_ex(self.func(k)?, [blocks, 1, 1], block, shared, args, attr) {
            Some(r) => r.result().map_err(|e| err(&self.label, &what, e)),
            None => Err(err(&self.label, &what, "the driver has no cuLaunchKernelEx")),
        }
    }

    fn set_overlap(&self, on: bool) -> bool {
        let can = self.info.capability.0 >= 9;
        self.pdl.swap(on && can, std::sync::atomic::Ordering::Relaxed)
    }

    /// Way 0 is `cublasGemmEx`'s own choice; the others are cuBLASLt's heuristic candidates,
    /// fastest first (none where cuBLASLt cannot be loaded).
    fn gemm_ways(&self, g: &Gemm) -> usize {
        let mut lt = self.lt.lock().unwrap_or_else(|e| e.into_inner());
        let listed = guarded(&self.label, "listing cuBLASLt algorithms", || Ok(lt.count(g, self.prec, self.exact, WORKSPACE)));
        match listed {
            Ok(n) => 1 + n,
            // cudarc panics where libcublasLt cannot be loaded
            Err(e) => {
                lt.why = Some(e.to_string());
                1
            }
        }
    }

    fn gemm_way_name(&self, g: &Gemm, way: usize) -> String {
        match way {
            0 => match &self.lt.lock().unwrap_or_else(|e| e.into_inner()).why {
                Some(why) => format!("cublasGemmEx's own choice (no cuBLASLt candidates: {why})"),
                None => "cublasGemmEx's own choice".into(),
            },
            w => self.lt.lock().unwrap_or_else(|e| e.into_inner()).name(g, w - 1),
        }
    }

    fn gemm(&self, g: &Gemm) -> Result<(), DeviceError> {
        if g.m == 0 {
            return Ok(());
        }
        if g.way > 0 {
            let lt = self.lt.lock().unwrap_or_else(|e| e.into_inner());
            return lt.run(g, g.way - 1, self.stream.cast(), (self.workspace, WORKSPACE)).map_err(|e| err(&self.label, "cuBLASLt", e));
        }
        let (alpha, beta) = (1f32, if g.accumulate { 1f32 } else { 0f32 });
        let t = self.prec.cuda();
        let compute = if self.exact { blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC } else { blas::cublasComputeType_t::CUBLAS_COMPUTE_32F };
        // Column-major view: cᵀ[n × m] = w[n × k] · aᵀ[k × m], with w stored as k × n (op T).
        // SAFETY: the addresses are live device buffers of the shapes given.
        unsafe {
            blas::cublasGemmEx(
                self.blas,
                blas::cublasOperation_t::CUBLAS_OP_T,
                blas::cublasOperation_t::CUBLAS_OP_N,
                g.n as i32,
                g.m as i32,
                g.k as i32,
                (&alpha as *const f32).cast(),
                g.w as *const c_void,
                t,
                g.k as i32,
                g.a as *const c_void,
                t,
                g.k as i32,
                (&beta as *const f32).cast(),
                g.c as *mut c_void,
                blas::cudaDataType::CUDA_R_32F,
                g.n as i32,
                compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .result()
        .map_err(|e| err(&self.label, &format!("cublasGemmEx {}×{}×{}", g.m, g.n, g.k), e))
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<Option<Graph>, DeviceError> {
        self.current()?;
        // a driver without the graph calls (cudarc panics on a missing symbol): no graphs
        Ok(guarded(&self.label, "capturing a graph", || Ok(self.capture_graph(f))).unwrap_or(None))
    }

    fn replay(&self, g: &Graph) -> Result<(), DeviceError> {
        let Graph::Cuda(exec) = g else { return Err(err(&self.label, "cuGraphLaunch", "not a CUDA graph")) };
        // SAFETY: the graph was instantiated on this context and its buffers are still live.
        unsafe { result::graph::launch(*exec, self.stream) }.map_err(|e| err(&self.label, "cuGraphLaunch", e))
    }

    fn profile(&self, on: bool) -> Result<Vec<Timed>, DeviceError> {
        self.current()?;
        guarded(&self.label, "profiling", || self.profile_events(on))
    }

    fn profiler_range(&self, on: bool) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: plain driver calls on the current context; without a profiler they do nothing.
        let r = unsafe { if on { sys::cuProfilerStart() } else { sys::cuProfilerStop() } };
        r.result().map_err(|e| err(&self.label, if on { "cuProfilerStart" } else { "cuProfilerStop" }, e))
    }

    fn mark(&self, what: &dyn Fn() -> (String, usize)) -> Result<(), DeviceError> {
        let mut p = self.profiling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, marks)) = p.as_mut() {
            guarded(&self.label, "profiling", || {
                let e = self.record_event()?;
                let (label, weights) = what();
                marks.push((label, weights, e));
                Ok(())
            })?;
        }
        Ok(())
    }

    fn drop_graph(&self, g: Graph) {
        if let Graph::Cuda(exec) = g {
            // SAFETY: instantiated by `capture`, destroyed once.
            unsafe {
                let _ = result::graph::exec_destroy(exec);
            }
        }
    }
}

impl Cuda {
    /// Launches `f` with `cuLaunchKernelEx` and the one attribute `set` fills in; `None` where the
    /// driver has no cuLaunchKernelEx (cudarc panics).
    fn launch_ex(&self, f: sys::CUfunction, grid: [u32; 3], block: u32, shared: u32, args: &[u8], set: impl Fn(&mut sys::CUlaunchAttribute)) -> Option<sys::CUresult> {
        let mut params = [args.as_ptr() as *mut c_void];
        // SAFETY: a plain C struct (an id and a union of integers) for which zero is valid.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        set(&mut attr);
        let config = sys::CUlaunchConfig { gridDimX: grid[0], gridDimY: grid[1], gridDimZ: grid[2], blockDimX: block, blockDimY: 1, blockDimZ: 1, sharedMemBytes: shared, hStream: self.stream, attrs: &mut attr, numAttrs: 1 };
        // SAFETY: the struct matches the kernel's parameter (checked against the source by a
        // test), every address in it is live device memory sized by the caller, and `config`,
        // `attr` and `params` outlive the call.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()) })).ok()
    }

    /// Records what `f` enqueues as an instantiated graph; `None` where capture fails.
    fn capture_graph(&self, f: &mut dyn FnMut() -> Result<(), DeviceError>) -> Option<Graph> {
        // SAFETY: the stream is live; capture is ended on every path.
        unsafe {
            if result::stream::begin_capture(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).is_err() {
                return None;
            }
            let recorded = f();
            let graph = result::stream::end_capture(self.stream);
            match (recorded, graph) {
                (Ok(()), Ok(g)) if !g.is_null() => {
                    let exec = result::graph::instantiate(g, sys::CUgraphInstantiate_flags(0));
                    let _ = result::graph::destroy(g);
                    exec.ok().map(Graph::Cuda)
                }
                (_, Ok(g)) => {
                    if !g.is_null() {
                        let _ = result::graph::destroy(g);
                    }
                    None
                }
                _ => None,
            }
        }
    }

    /// A new event, recorded on the stream after the work enqueued so far.
    fn record_event(&self) -> Result<sys::CUevent, DeviceError> {
        let e = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(|e| err(&self.label, "cuEventCreate", e))?;
        // SAFETY: a live event on this context's stream.
        unsafe { result::event::record(e, self.stream) }.map_err(|e| err(&self.label, "cuEventRecord", e))?;
        Ok(e)
    }

    /// [`Backend::profile`]'s CUDA calls.
    fn profile_events(&self, on: bool) -> Result<Vec<Timed>, DeviceError> {
        let mut p = self.profiling.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        if let Some((start, marks)) = p.take() {
            self.sync()?;
            let mut prev = start;
            for (label, weights, e) in &marks {
                // SAFETY: both events were recorded on this stream, which is idle now.
                let ms = unsafe { result::event::elapsed(prev, *e) }.map_err(|e| err(&self.label, "cuEventElapsedTime", e))?;
                out.push(Timed { label: label.clone(), weights: *weights, ms: f64::from(ms) });
                prev = *e;
            }
            for e in std::iter::once(start).chain(marks.into_iter().map(|m| m.2)) {
                // SAFETY: each event is destroyed once; the stream is done with them.
                unsafe {
                    let _ = result::event::destroy(e);
                }
            }
        }
        if on {
            *p = Some((self.record_event()?, Vec::new()));
        }
        Ok(out)
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // SAFETY: every handle was created in `open` and is released once, in reverse order.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::stream::synchronize(self.stream);
            let _ = cudarc::cublas::result::destroy_handle(self.blas);
            drop(std::mem::replace(self.lt.get_mut().unwrap_or_else(|e| e.into_inner()), super::lt::Lt::new()));
            if self.workspace != 0 {
                let _ = result::free_sync(self.workspace);
            }
            let _ = result::module::unload(self.module);
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Without a GPU (or without libcublasLt), listing cuBLASLt's candidates is an error or
    /// none, never a panic that escapes: the engine then keeps cublasGemmEx's own choice.
    #[test]
    fn listing_cublaslt_candidates_without_a_gpu_fails_cleanly() {
        let mut lt = super::super::lt::Lt::new();
        let g = super::Gemm { m: 512, n: 256, k: 128, a: 0, w: 0, c: 0, accumulate: false, way: 1 };
        let listed = super::guarded("test", "listing cuBLASLt algorithms", || Ok(lt.count(&g, super::Prec::Bf16, false, super::WORKSPACE)));
        assert!(matches!(listed, Err(_) | Ok(0)), "{listed:?}");
        assert!(lt.run(&g, 0, std::ptr::null_mut(), (0, 0)).is_err(), "nothing listed, nothing runs");
    }

    #[test]
    fn the_gpu_switches_are_on_off_or_an_error_naming_the_variable() {
        let o = |v| super::OVERLAP.parse(v);
        assert_eq!([o(None), o(Some("")), o(Some("on")), o(Some(" 1 ")), o(Some(" off ")), o(Some("0"))], [Ok(false), Ok(false), Ok(true), Ok(true), Ok(false), Ok(false)]);
        let e = o(Some("false")).unwrap_err();
        assert!(e.starts_with("LLMEVAL_GPU_OVERLAP=\"false\" is neither on nor off (set it to on"), "{e}");
        let l = |v| super::ONE_LAUNCH.parse(v);
        assert_eq!([l(None), l(Some(" ")), l(Some("on")), l(Some("off")), l(Some("0"))], [Ok(true), Ok(true), Ok(true), Ok(false), Ok(false)]);
        let e = l(Some("never")).unwrap_err();
        assert!(e.starts_with("LLMEVAL_GPU_ONE_LAUNCH=\"never\" is neither on nor off (set it to off"), "{e}");
    }
}
