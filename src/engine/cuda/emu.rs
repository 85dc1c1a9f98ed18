//! A [`Backend`] on the CPU for the tests: `kernels.cu` compiled by the host's C++ compiler with
//! `emu.h` (each block's threads as fibers), GEMMs as plain f32 loops, memory as host
//! allocations, a captured pass as the list of its launches (what a CUDA graph freezes). It runs the
//! GPU engine's host code and kernels end to end without a GPU; what it cannot check is the CUDA
//! driver, NVRTC and cuBLAS themselves, and the hardware's speed. Blocks run one at a time, except
//! in a cooperative launch, whose blocks each get an OS thread and run at once.

use super::args::Kernel;
use super::driver::{Backend, Gemm, Graph, Prec, Timed, SOURCE};
use crate::engine::device::DeviceError;
use std::alloc::Layout;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

type KernelFn = unsafe extern "C" fn(*const u8);
type LaunchFn = unsafe extern "C" fn(KernelFn, *const u8, u32, u32, u32, u32, u32) -> i32;
type SizeFn = unsafe extern "C" fn() -> u64;

/// One recorded operation of a captured pass.
enum Op {
    /// a launch; `true`: cooperative
    Launch(Kernel, [u32; 3], u32, u32, Vec<u8>, bool),
    Gemm(Gemm),
}

pub struct Emu {
    lib: *mut libc::c_void,
    /// Capturing: operations are recorded here instead of run.
    recording: Mutex<Option<Vec<Op>>>,
    /// recordings, and whether overlap was on when each was made
    graphs: Mutex<Vec<(Vec<Op>, bool)>>,
    /// How many recorded passes were replayed (tests check the graph path ran).
    pub replays: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    launch: LaunchFn,
    launch_coop: LaunchFn,
    kernels: Vec<KernelFn>,
    sizes: Vec<usize>,
    prec: Prec,
    memory: usize,
    /// live allocations: their layout, a [`REDZONE`] past the size the engine asked for
    allocs: Mutex<HashMap<u64, Layout>>,
    /// a profile: when the last operation ended, and the operations so far
    profiling: Mutex<Option<(std::time::Instant, Vec<Timed>)>>,
    /// Tests: profiles fail, as on a driver without events.
    pub no_profile: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tests: what [`Backend::set_overlap`] last set (launches run one after another anyway).
    pub overlap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tests: recordings made with overlap on fail to replay, as on a driver that records
    /// overlapping launches but will not run them.
    pub refuse_overlap_replays: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tests: a capture made with overlap on fails, as on a driver that will not record
    /// overlapping launches.
    pub refuse_overlap_capture: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tests: a capture holding a cooperative launch fails, as on a driver that will not record
    /// one in a graph.
    pub refuse_cooperative_capture: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Tests: how many of the [`GEMM_WAYS`] sum a row in an order that depends on where the row
    /// sits in the call (as stream-K kernels do); the first ones do.
    pub placement_dependent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Tests: blocks a cooperative launch may have ([`Backend::resident_blocks`]); none unless a
    /// test gives some (a device without cooperative launches: models load without timing the
    /// one-launch step, which emulated is slow).
    pub resident: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// How many cooperative launches ran (tests check the one-launch step ran).
    pub cooperative: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// each kernel's dynamic shared memory opted into ([`Backend::set_shared`]): a launch asking
    /// more than 48 KiB needs it, as on a GPU
    opt_in: Mutex<Vec<usize>>,
}


/// Ways the emulation offers to run a GEMM shape ([`Backend::gemm_ways`]).
pub const GEMM_WAYS: usize = 3;

// SAFETY: the library handle and function pointers are immutable after `new`; allocations are
// guarded by their mutex; the model calls the backend from one thread at a time.
unsafe impl Send for Emu {}

fn err(what: &str, detail: impl Into<String>) -> DeviceError {
    DeviceError::Cuda { device: "emulated GPU".into(), what: what.into(), detail: detail.into() }
}

/// Why there is no emulated GPU.
#[derive(Debug)]
pub enum EmuError {
    /// No C++ compiler on this machine (the tests that need one say they were skipped).
    NoCompiler(String),
    /// Anything else: the kernels do not compile, the library does not load.
    Failed(String),
}

/// Where the emulation library for `prec` is built (once per test process).
fn build(prec: Prec) -> Result<PathBuf, EmuError> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let failed = |e: std::io::Error| EmuError::Failed(e.to_string());
    let dir = std::env::temp_dir().join(format!("llmeval-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let lib = dir.join(format!("kernels-{}.so", prec.name()));
    if lib.exists() {
        return Ok(lib);
    }
    let header = dir.join("emu.h");
    std::fs::write(&header, include_str!("emu.h")).map_err(failed)?;
    let src = dir.join("kernels.cu");
    std::fs::write(&src, SOURCE).map_err(failed)?;
    let tmp = dir.join(format!("kernels-{}.so.tmp", prec.name()));
    let out = std::process::Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
        .args(["-O2", "-std=c++17", "-shared", "-fPIC", "-pthread", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-function"])
        .arg(format!("-DLLM_WT={}", prec as i32))
        .arg(format!("-DLLM_KT={}", prec as i32))
        .arg("-include")
        .arg(&header)
        .args(["-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| EmuError::NoCompiler(format!("cannot run a C++ compiler (c++, or $CXX): {e}")))?;
    if !out.status.success() {
        return Err(EmuError::Failed(format!("the C++ compiler rejected kernels.cu:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    std::fs::rename(&tmp, &lib).map_err(failed)?;
    Ok(lib)
}

impl Emu {
    /// Compiles the kernels for `prec` with the host's C++ compiler.
    pub fn new(prec: Prec, memory: usize) -> Result<Emu, EmuError> {
        let path = build(prec)?;
        let c = std::ffi::CString::new(path.to_string_lossy().into_owned()).map_err(|e| EmuError::Failed(e.to_string()))?;
        // SAFETY: a library we just built; RTLD_LOCAL keeps each precision's symbols apart.
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(EmuError::Failed(format!("cannot load {}", path.display())));
        }
        let sym = |name: &str| -> Result<*mut libc::c_void, EmuError> {
            let n = std::ffi::CString::new(name).expect("no NUL");
            // SAFETY: `lib` is a live handle.
            let p = unsafe { libc::dlsym(lib, n.as_ptr()) };
            if p.is_null() { Err(EmuError::Failed(format!("{name} is missing from the emulation library"))) } else { Ok(p) }
        };
        // SAFETY: the symbols have these C signatures (emu.h).
        unsafe {
            let launch: LaunchFn = std::mem::transmute(sym("emu_launch")?);
            let launch_coop: LaunchFn = std::mem::transmute(sym("emu_launch_coop")?);
            let mut kernels = Vec::new();
            let mut sizes = Vec::new();
            for k in Kernel::ALL {
                kernels.push(std::mem::transmute::<*mut libc::c_void, KernelFn>(sym(k.name())?));
                let size: SizeFn = std::mem::transmute(sym(&format!("{}_args_size", k.name()))?);
                sizes.push(size() as usize);
            }
            Ok(Emu { lib, recording: Mutex::new(None), graphs: Mutex::new(Vec::new()), replays: Default::default(), launch, launch_coop, kernels, sizes, prec, memory, allocs: Mutex::new(HashMap::new()), profiling: Mutex::new(None), no_profile: Default::default(), overlap: Default::default(), refuse_overlap_replays: Default::default(), refuse_overlap_capture: Default::default(), refuse_cooperative_capture: Default::default(), placement_dependent: Default::default(), resident: Default::default(), cooperative: Default::default(), opt_in: Mutex::new(vec![0; Kernel::ALL.len()]) })
        }
    }

    /// `sizeof` of each kernel's argument struct as the C++ compiler laid it out.
    pub fn arg_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Runs (or records) a launch: its blocks one after another, or all at once (`coop`).
    fn run_launch(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &[u8], coop: bool) -> Result<(), DeviceError> {
        if let Some(ops) = self.recording.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            ops.push(Op::Launch(k, grid, block, shared, args.to_vec(), coop));
            return Ok(());
        }
        if args.len() != self.sizes[k as usize] {
            return Err(err(k.name(), format!("argument struct of {} bytes, the kernel's is {}", args.len(), self.sizes[k as usize])));
        }
        let opted = self.opt_in.lock().unwrap_or_else(|e| e.into_inner())[k as usize];
        if shared as usize > 48 << 10 && shared as usize > opted {
            return Err(err(k.name(), format!("{shared} bytes of dynamic shared memory, past the 48 KiB a block has without opting in to more (set_shared: {opted})")));
        }
        let launch = if coop { self.launch_coop } else { self.launch };
        if coop {
            // (checked as it runs, as a driver checks a recorded one when it replays)
            let most = self.resident.load(std::sync::atomic::Ordering::Relaxed);
            if grid[0] > most {
                return Err(err(k.name(), format!("a cooperative launch of {} blocks, more than the {most} the device holds at once", grid[0])));
            }
            self.cooperative.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: the kernel reads its argument struct and the device addresses in it, all live
        // allocations of this backend sized by the engine.
        let rc = unsafe { launch(self.kernels[k as usize], args.as_ptr(), grid[0], grid[1], grid[2], block, shared) };
        match rc {
            0 => {}
            2 => return Err(err(k.name(), format!("a block wrote past its {shared} bytes of dynamic shared memory"))),
            _ => return Err(err(k.name(), "a block's threads stopped at different barriers (or a bad block size)")),
        }
        Ok(())
    }

    fn read(&self, p: u64, i: usize) -> f32 {
        // SAFETY: `p` is an allocation of ours holding at least i + 1 elements of the storage type.
        unsafe {
            match self.prec {
                Prec::F32 => *(p as *const f32).add(i),
                Prec::F16 => half::f16::from_bits(*(p as *const u16).add(i)).to_f32(),
                Prec::Bf16 => half::bf16::from_bits(*(p as *const u16).add(i)).to_f32(),
            }
        }
    }
}

/// Bytes after each allocation that nothing may write (a write past an allocation's end, which a
/// GPU may let pass into another buffer, fails the next copy from the device: every pass ends with
/// one), and their value.
const REDZONE: usize = 256;
const RED: u8 = 0xa5;

impl Emu {
    /// Every live allocation's redzone as written.
    fn redzones_intact(&self) -> Result<(), DeviceError> {
        for (&p, layout) in self.allocs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let size = layout.size() - REDZONE;
            // SAFETY: the redzone lies inside the live allocation at `p`.
            let zone = unsafe { std::slice::from_raw_parts((p as *const u8).add(size), REDZONE) };
            if let Some(at) = zone.iter().position(|&b| b != RED) {
                return Err(err("memory", format!("a write past the end of the {size}-byte allocation at {p:#x} (at byte {})", size + at)));
            }
        }
        Ok(())
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        for (p, layout) in self.allocs.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            // SAFETY: allocated in `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
        // SAFETY: the handle came from dlopen; nothing of the library is used after this.
        unsafe { libc::dlclose(self.lib) };
    }
}

impl Backend for Emu {
    fn label(&self) -> &str {
        "emulated GPU"
    }
    fn bind(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn memory(&self) -> Result<(usize, usize), DeviceError> {
        Ok((self.memory, self.memory))
    }
    fn alloc(&self, bytes: usize) -> Result<u64, DeviceError> {
        // (at least 256 bytes, as the CUDA backend asks)
        let size = bytes.max(256);
        let layout = Layout::from_size_align(size + REDZONE, 256).map_err(|e| err("alloc", e.to_string()))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(err("alloc", format!("{bytes} bytes")));
        }
        // SAFETY: the redzone lies inside the allocation.
        unsafe { std::ptr::write_bytes(p.add(size), RED, REDZONE) };
        self.allocs.lock().unwrap_or_else(|e| e.into_inner()).insert(p as u64, layout);
        Ok(p as u64)
    }
    fn free(&self, p: u64) {
        if let Some(layout) = self.allocs.lock().unwrap_or_else(|e| e.into_inner()).remove(&p) {
            // SAFETY: allocated in `alloc` with this layout, freed once.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
    }
    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), DeviceError> {
        // SAFETY: the engine sizes `dst` for `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), DeviceError> {
        // SAFETY: the engine sizes `src` for `dst`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        self.redzones_intact()
    }
    fn sync(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn set_shared(&self, k: Kernel, bytes: usize) -> Result<(), DeviceError> {
        self.opt_in.lock().unwrap_or_else(|e| e.into_inner())[k as usize] = bytes;
        Ok(())
    }
    fn launch_raw(&self, k: Kernel, grid: [u32; 3], block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError> {
        self.run_launch(k, grid, block, shared, args, false)
    }
    fn resident_blocks(&self, _k: Kernel, _block: u32, _shared: u32) -> Result<u32, DeviceError> {
        Ok(self.resident.load(std::sync::atomic::Ordering::Relaxed))
    }
    fn launch_cooperative(&self, k: Kernel, blocks: u32, block: u32, shared: u32, args: &[u8]) -> Result<(), DeviceError> {
        self.run_launch(k, [blocks, 1, 1], block, shared, args, true)
    }
    /// Fewer rows than a GPU's, and not a divisor of the pass buffers' rows, so the tests' small
    /// passes take several calls and the padded last one needs the buffers' spare rows.
    fn gemm_rows(&self) -> usize {
        6
    }
    /// Launches run one after another here whatever is set.
    fn set_overlap(&self, on: bool) -> bool {
        self.overlap.swap(on, std::sync::atomic::Ordering::Relaxed)
    }
    fn gemm_ways(&self, _g: &Gemm) -> usize {
        GEMM_WAYS
    }
    fn gemm_way_name(&self, _g: &Gemm, way: usize) -> String {
        let by_place = way < self.placement_dependent.load(std::sync::atomic::Ordering::Relaxed);
        format!("emulated way {way}{}", if by_place { " (sums by the row's place)" } else { "" })
    }
    fn gemm(&self, g: &Gemm) -> Result<(), DeviceError> {
        if let Some(ops) = self.recording.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            ops.push(Op::Gemm(*g));
            return Ok(());
        }
        if g.way >= GEMM_WAYS {
            return Err(err("gemm", format!("no way {}", g.way)));
        }
        // c[m × n] (+)= a[m × k] · w[n × k]ᵀ. As a GEMM library picks its algorithm by the call's
        // shape, each dot product here sums k in 1 to 3 parts by m (so a caller that lets m
        // vary with the batch gets results that vary with it), the same for every row — except
        // on a way that depends on the row's place, where the parts also follow the row's tile
        // of 4 rows.
        let by_place = g.way < self.placement_dependent.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..g.m {
            let parts = 1 + (g.m + if by_place { i / 4 + g.way } else { 0 }) % 3;
            let part = g.k.div_ceil(parts).max(1);
            for j in 0..g.n {
                let mut acc = 0f32;
                for p0 in (0..g.k).step_by(part) {
                    let mut s = 0f32;
                    for x in p0..(p0 + part).min(g.k) {
                        s += self.read(g.a, i * g.k + x) * self.read(g.w, j * g.k + x);
                    }
                    acc += s;
                }
                // SAFETY: `c` holds m × n f32.
                unsafe {
                    let c = (g.c as *mut f32).add(i * g.n + j);
                    *c = if g.accumulate { *c + acc } else { acc };
                }
            }
        }
        Ok(())
    }
    /// Records the launches and GEMMs of `f` with their arguments, as a CUDA graph does.
    fn capture(&self, f: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<Option<Graph>, DeviceError> {
        *self.recording.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        let r = f();
        let ops = self.recording.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        r?;
        let overlap = self.overlap.load(std::sync::atomic::Ordering::Relaxed);
        if self.refuse_cooperative_capture.load(std::sync::atomic::Ordering::Relaxed) && ops.iter().any(|op| matches!(op, Op::Launch(.., true))) {
            return Ok(None);
        }
        if overlap && self.refuse_overlap_capture.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs.push((ops, overlap));
        Ok(Some(Graph::Recorded(graphs.len() - 1)))
    }
    fn replay(&self, g: &Graph) -> Result<(), DeviceError> {
        let Graph::Recorded(i) = g else { return Err(err("replay", "not a recording of this backend")) };
        let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let (ops, overlapping) = &graphs[*i];
        if *overlapping && self.refuse_overlap_replays.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(err("replay", "a recording of overlapping launches"));
        }
        for op in ops {
            match op {
                Op::Launch(k, grid, block, shared, args, coop) => self.run_launch(*k, *grid, *block, *shared, args, *coop)?,
                Op::Gemm(g) => self.gemm(g)?,
            }
        }
        self.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn drop_graph(&self, _g: Graph) {}
    /// Times on the host's clock (the emulation has no device clock).
    fn profile(&self, on: bool) -> Result<Vec<Timed>, DeviceError> {
        if self.no_profile.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(err("profile", "no events on this device"));
        }
        let mut p = self.profiling.lock().unwrap_or_else(|e| e.into_inner());
        let out = p.take().map(|(_, marks)| marks).unwrap_or_default();
        if on {
            *p = Some((std::time::Instant::now(), Vec::new()));
        }
        Ok(out)
    }
    fn mark(&self, what: &dyn Fn() -> (String, usize)) -> Result<(), DeviceError> {
        if self.recording.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        if let Some((last, marks)) = self.profiling.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let (label, weights) = what();
            marks.push(Timed { label, weights, ms: last.elapsed().as_secs_f64() * 1e3 });
            *last = std::time::Instant::now();
        }
        Ok(())
    }
}
