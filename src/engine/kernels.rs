//! CPU matmul kernels for the built-in engine (GGUF weight types; AVX2, AVX-VNNI or scalar, picked at run time).
//! Q4_0/Q4_1/Q8_0 follow llama.cpp's math (activations quantized once per call to Q8_0/Q8_1, integer dots) on "R8"
//! panels: 8 rows interleaved in 4-byte groups, so a SIMD lane owns an output row and each weight load serves a token
//! tile ([`pack`] builds them at load time, else per call). Other types go through f32; threads: a spin-then-park pool.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// Storage type of a weight matrix (GGUF/ggml block formats, plus the interleaved `*R8` forms made by [`pack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    /// [`pack`]ed Q4_0: panels of 8 rows; per 32-column block 8 f16 scales, 8 f16 mins (= -8·d, read only
    /// when dequantizing), 128 nibble bytes.
    Q4_0R8,
    /// [`pack`]ed Q4_1: same layout as `Q4_0R8` with the real mins.
    Q4_1R8,
    /// [`pack`]ed Q8_0: panels of 8 rows; per block 8 f16 scales, 256 quant bytes.
    Q8_0R8,
    /// [`pack`]ed Q5_1: the `Q8_0R8` layout of its values 0..31 with 8 f16 mins after the
    /// scales, so that the Q8_0 kernels plus a min term give llama.cpp's Q5_1 product.
    Q5_1R8,
}

impl WType {
    /// Number of weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q4K | WType::Q5K | WType::Q6K => 256,
            _ => 32,
        }
    }
    /// Bytes per block of one row (for `*R8`, the per-row share of an 8-row panel block).
    pub const fn block_bytes(self) -> usize {
        match self {
            WType::F32 => 4,
            WType::F16 | WType::BF16 => 2,
            WType::Q4_0 => 18,
            WType::Q4_1 => 20,
            WType::Q5_0 => 22,
            WType::Q5_1 => 24,
            WType::Q8_0 => 34,
            WType::Q4K => 144,
            WType::Q5K => 176,
            WType::Q6K => 210,
            WType::Q4_0R8 | WType::Q4_1R8 => R8_Q4_BLOCK / 8,
            WType::Q8_0R8 => R8_Q8_BLOCK / 8,
            WType::Q5_1R8 => R8_Q81_BLOCK / 8,
        }
    }
    /// True for the interleaved 8-row layouts produced by [`pack`].
    pub const fn is_packed(self) -> bool {
        matches!(self, WType::Q4_0R8 | WType::Q4_1R8 | WType::Q8_0R8 | WType::Q5_1R8)
    }
    /// Bytes of one row (`cols` must be a multiple of [`WType::block_elems`]).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }
    /// Bytes of a whole `rows × cols` matrix (packed types round rows up to a multiple of 8).
    pub const fn data_bytes(self, rows: usize, cols: usize) -> usize {
        let rows = if self.is_packed() {
            rows.div_ceil(8) * 8
        } else {
            rows
        };
        rows * self.row_bytes(cols)
    }
}

/// A weight matrix: `rows` output features × `cols` inputs, each row stored contiguously in `ty` blocks
/// (except the `*R8` types from [`pack`], stored as 8-row panels).
pub struct Weight<'a> {
    pub ty: WType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl Weight<'_> {
    fn check(&self) {
        let be = self.ty.block_elems();
        assert!(
            self.cols.is_multiple_of(be),
            "cols {} not a multiple of the {:?} block size {}",
            self.cols,
            self.ty,
            be
        );
        assert!(
            self.data.len() >= self.ty.data_bytes(self.rows, self.cols),
            "weight data too short: {} < {}",
            self.data.len(),
            self.ty.data_bytes(self.rows, self.cols)
        );
    }
    fn row(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.cols);
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Owned weights in an interleaved `*R8` layout (see [`pack`]).
pub struct PackedWeight {
    pub ty: WType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl PackedWeight {
    pub fn as_weight(&self) -> Weight<'_> {
        Weight {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }
}

/// Re-lays Q4_0 / Q4_1 / Q8_0 weights into the 8-row interleaved form (the same size for Q4_1 and Q8_0, 11% larger for Q4_0) that the
/// SIMD kernels read without per-call repacking: do it once at load time for ~2-3x faster decode.
/// Returns `None` for other types (use them as they are). `dequantize_row` and `matmul` accept the result.
pub fn pack(w: &Weight) -> Option<PackedWeight> {
    w.check();
    let ty = match w.ty {
        WType::Q4_0 => WType::Q4_0R8,
        WType::Q4_1 => WType::Q4_1R8,
        WType::Q8_0 => WType::Q8_0R8,
        WType::Q5_1 => WType::Q5_1R8,
        _ => return None,
    };
    let np = w.rows.div_ceil(8);
    let pb = panel_bytes(ty, w.cols);
    let mut data = vec![0u8; np * pb];
    let dp = OutPtr(data.as_mut_ptr() as *mut f32);
    let (ntasks, per) = split(np, 64, threads());
    run_tasks(ntasks, &|i| {
        for p in i * per..((i + 1) * per).min(np) {
            // SAFETY: each panel's bytes are written by one task only.
            let dst =
                unsafe { std::slice::from_raw_parts_mut((dp.get() as *mut u8).add(p * pb), pb) };
            pack_panel(w, p, dst);
        }
    });
    Some(PackedWeight {
        ty,
        rows: w.rows,
        cols: w.cols,
        data,
    })
}

const R8_Q4_BLOCK: usize = 160; // 16 B d + 16 B m + 128 B nibbles
const R8_Q8_BLOCK: usize = 272; // 16 B d + 256 B quants
const R8_Q81_BLOCK: usize = 288; // 16 B d + 16 B m + 256 B quants

fn panel_bytes(packed_ty: WType, cols: usize) -> usize {
    let nb = cols / 32;
    match packed_ty {
        WType::Q4_0R8 | WType::Q4_1R8 => nb * R8_Q4_BLOCK,
        WType::Q8_0R8 => nb * R8_Q8_BLOCK,
        WType::Q5_1R8 => nb * R8_Q81_BLOCK,
        _ => unreachable!(),
    }
}

/// Writes panel `p` (rows 8p..8p+8, zero rows past the end) of raw Q4_0/Q4_1/Q8_0 weights in R8 form.
fn pack_panel(w: &Weight, p: usize, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if (p + 1) * 8 <= w.rows && w.ty != WType::Q5_1 && Isa::Avx2.available() {
        assert!(dst.len() >= panel_bytes(packed_of(w.ty), w.cols));
        // SAFETY: all 8 rows exist (w.check() bounds the data) and dst holds a whole panel.
        return unsafe {
            avx2::pack_panel_full(
                w.ty,
                w.data.as_ptr(),
                w.ty.row_bytes(w.cols),
                p,
                w.cols / 32,
                dst.as_mut_ptr(),
            )
        };
    }
    pack_panel_scalar(w, p, dst)
}

fn packed_of(ty: WType) -> WType {
    match ty {
        WType::Q4_0 | WType::Q4_0R8 => WType::Q4_0R8,
        WType::Q4_1 | WType::Q4_1R8 => WType::Q4_1R8,
        WType::Q5_1 | WType::Q5_1R8 => WType::Q5_1R8,
        _ => WType::Q8_0R8,
    }
}

fn pack_panel_scalar(w: &Weight, p: usize, dst: &mut [u8]) {
    let nb = w.cols / 32;
    let bs = w.ty.block_bytes();
    match w.ty {
        WType::Q4_0 | WType::Q4_1 => {
            for l in 0..8 {
                let r = p * 8 + l;
                for b in 0..nb {
                    let o = b * R8_Q4_BLOCK;
                    if r >= w.rows {
                        dst[o + 2 * l..o + 2 * l + 2].fill(0);
                        dst[o + 16 + 2 * l..o + 18 + 2 * l].fill(0);
                        for g in 0..4 {
                            dst[o + 32 + 32 * g + 4 * l..o + 36 + 32 * g + 4 * l].fill(0);
                        }
                        continue;
                    }
                    let blk = &w.row(r)[b * bs..(b + 1) * bs];
                    let (m, qs) = if w.ty == WType::Q4_1 {
                        ([blk[2], blk[3]], &blk[4..20])
                    } else {
                        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        (f16::from_f32(-8.0 * d).to_le_bytes(), &blk[2..18])
                    };
                    dst[o + 2 * l..o + 2 * l + 2].copy_from_slice(&blk[0..2]);
                    dst[o + 16 + 2 * l..o + 18 + 2 * l].copy_from_slice(&m);
                    for g in 0..4 {
                        dst[o + 32 + 32 * g + 4 * l..o + 36 + 32 * g + 4 * l]
                            .copy_from_slice(&qs[4 * g..4 * g + 4]);
                    }
                }
            }
        }
        WType::Q5_1 => {
            for l in 0..8 {
                let r = p * 8 + l;
                for b in 0..nb {
                    let o = b * R8_Q81_BLOCK;
                    // a row past the end: zero scale, min and values
                    let blk = if r < w.rows { &w.row(r)[b * bs..(b + 1) * bs] } else { &[0u8; 24][..] };
                    dst[o + 2 * l..o + 2 * l + 2].copy_from_slice(&blk[0..2]);
                    dst[o + 16 + 2 * l..o + 18 + 2 * l].copy_from_slice(&blk[2..4]);
                    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    for j in 0..32 {
                        dst[o + 32 + 32 * (j / 4) + 4 * l + j % 4] = super::quant::q5_value(&blk[8..24], qh, j);
                    }
                }
            }
        }
        WType::Q8_0 => {
            for l in 0..8 {
                let r = p * 8 + l;
                for b in 0..nb {
                    let o = b * R8_Q8_BLOCK;
                    if r >= w.rows {
                        dst[o + 2 * l..o + 2 * l + 2].fill(0);
                        for j in 0..8 {
                            dst[o + 16 + 32 * j + 4 * l..o + 20 + 32 * j + 4 * l].fill(0);
                        }
                        continue;
                    }
                    let blk = &w.row(r)[b * bs..(b + 1) * bs];
                    dst[o + 2 * l..o + 2 * l + 2].copy_from_slice(&blk[0..2]);
                    for j in 0..8 {
                        dst[o + 16 + 32 * j + 4 * l..o + 20 + 32 * j + 4 * l]
                            .copy_from_slice(&blk[2 + 4 * j..6 + 4 * j]);
                    }
                }
            }
        }
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// Instruction-set selection and thread pool
// ---------------------------------------------------------------------------------------------

/// Kernel family. [`matmul`] uses [`detected_isa`]; the `*_isa` functions take one explicitly (tests, benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, same integer math as the SIMD paths.
    Scalar,
    /// AVX2 + FMA + F16C (maddubs-based int8 dot products).
    Avx2,
    /// AVX2 + AVX-VNNI (VEX `vpdpbusd`), e.g. Alder Lake and later, Sapphire Rapids.
    AvxVnni,
    /// AVX-512 VNNI + VL on 256-bit vectors (EVEX; 32 registers), e.g. Ice Lake / Cascade Lake servers.
    Avx512Vnni,
}

impl Isa {
    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let base = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => base,
                Isa::AvxVnni => base && is_x86_feature_detected!("avxvnni"),
                Isa::Avx512Vnni => {
                    base && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }
}

/// The best kernel family for this CPU (probed once). `LLMEVAL_ISA=scalar|avx2|avxvnni|avx512vnni` overrides it.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced =
            std::env::var("LLMEVAL_ISA")
                .ok()
                .and_then(|v| match v.to_ascii_lowercase().as_str() {
                    "scalar" => Some(Isa::Scalar),
                    "avx2" => Some(Isa::Avx2),
                    "avxvnni" => Some(Isa::AvxVnni),
                    "avx512vnni" => Some(Isa::Avx512Vnni),
                    _ => None,
                });
        if let Some(i) = forced.filter(|i| i.available()) {
            return i;
        }
        [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    })
}

/// Persistent worker threads (`threads - 1` of them; the calling thread takes part too). Workers spin
/// for a short while after each job before parking, because a decode step issues ~200 calls of a few µs
/// each and waking a parked thread (futex + IPI, worse in a VM) costs 10-30 µs.
struct Pool {
    shared: Arc<PoolShared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Held by the thread whose job is running; a concurrent caller runs its tasks inline instead.
    submit: Mutex<()>,
}

struct PoolShared {
    epoch: AtomicUsize,
    job: Mutex<Option<Arc<Job>>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
}

struct Job {
    /// Lifetime-erased task function; valid until `done == ntasks` (the submitter waits for that).
    f: *const (dyn Fn(usize) + Sync + 'static),
    ntasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.ntasks {
                return;
            }
            // SAFETY: index i < ntasks was claimed exactly once, so the submitter is still waiting and f is alive.
            let f = unsafe { &*self.f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// How long an idle worker spins before parking.
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

thread_local! {
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(PoolShared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name(format!("llmeval-mm-{i}"))
                    .spawn(move || worker(&sh))
                    .expect("spawning a matmul worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    fn run(&self, ntasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.submit.try_lock() {
            Ok(g) if !IN_TASK.with(|c| c.get()) => g,
            _ => return (0..ntasks).for_each(f), // busy with another caller's job, or nested: run inline
        };
        // SAFETY: only the lifetime is erased; we do not return before every claimed task has finished.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            ntasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        *self.shared.job.lock().unwrap() = Some(job.clone());
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = self.shared.lock.lock().unwrap();
            self.shared.cv.notify_all();
        }
        IN_TASK.with(|c| c.set(true));
        job.work();
        IN_TASK.with(|c| c.set(false));
        while job.done.load(Ordering::Acquire) < ntasks {
            std::hint::spin_loop();
        }
        *self.shared.job.lock().unwrap() = None;
        drop(guard);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a matmul task panicked");
        }
    }
}

fn worker(sh: &PoolShared) {
    IN_TASK.with(|c| c.set(true));
    let mut seen = sh.epoch.load(Ordering::SeqCst);
    loop {
        let mut spins = 0u32;
        let mut since: Option<std::time::Instant> = None;
        loop {
            let g = sh.epoch.load(Ordering::SeqCst);
            if g != seen {
                seen = g;
                break;
            }
            if sh.shutdown.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(128)
                && since.get_or_insert_with(std::time::Instant::now).elapsed() > SPIN
            {
                let mut l = sh.lock.lock().unwrap();
                sh.sleepers.fetch_add(1, Ordering::SeqCst);
                while sh.epoch.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst)
                {
                    l = sh.cv.wait(l).unwrap();
                }
                sh.sleepers.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
                since = None;
            }
        }
        let job = sh.job.lock().unwrap().clone();
        if let Some(job) = job {
            job.work();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap();
            self.shared.cv.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

struct PoolState {
    threads: usize,
    pool: Option<Arc<Pool>>,
}

static POOL: RwLock<PoolState> = RwLock::new(PoolState {
    threads: 0,
    pool: None,
});

/// Number of threads used by the kernels, the calling thread included (default: available parallelism).
/// Keeps a persistent pool of `n - 1` workers; calling it again with the same count is free.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    let old = {
        let mut st = POOL.write().unwrap();
        if st.threads == n {
            return;
        }
        st.threads = n;
        std::mem::replace(&mut st.pool, (n > 1).then(|| Arc::new(Pool::new(n))))
    };
    drop(old); // joins the old workers once no call uses them any more
}

/// Current thread count of the kernels.
pub fn threads() -> usize {
    current_pool().0
}

fn current_pool() -> (usize, Option<Arc<Pool>>) {
    {
        let st = POOL.read().unwrap();
        if st.threads != 0 {
            return (st.threads, st.pool.clone());
        }
    }
    set_threads(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let st = POOL.read().unwrap();
    (st.threads, st.pool.clone())
}

/// Runs `f(i)` for every `i` in `0..ntasks` on the kernels' threads (the caller takes part; indices are
/// claimed dynamically; a call from inside a task runs inline). Use it for the engine's other parallel loops
/// (attention heads, norms) so that one pool owns the cores: a second pool (e.g. rayon's) would compete with
/// these workers while they spin between calls.
pub fn parallel_for(ntasks: usize, f: &(dyn Fn(usize) + Sync)) {
    run_tasks(ntasks, f)
}

/// Runs `f(0..ntasks)` on the pool; tasks are claimed dynamically (callers make them equal-sized).
fn run_tasks(ntasks: usize, f: &(dyn Fn(usize) + Sync)) {
    match current_pool().1 {
        Some(p) if ntasks > 1 => p.run(ntasks, f),
        _ => (0..ntasks).for_each(f),
    }
}

/// Splits `units` work units into equal task counts that are a multiple of the thread count when possible.
fn split(units: usize, max_per_task: usize, threads: usize) -> (usize, usize) {
    let units = units.max(1);
    let mut tasks = units.div_ceil(max_per_task.max(1));
    if threads > 1 {
        tasks = tasks.max(2 * threads).div_ceil(threads) * threads;
    }
    let tasks = tasks.min(units);
    let per = units.div_ceil(tasks);
    (units.div_ceil(per), per)
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static FSCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

// ---------------------------------------------------------------------------------------------
// Dequantization (scalar, all types)
// ---------------------------------------------------------------------------------------------

#[inline]
fn h16(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

#[inline]
fn kq_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one row of a non-packed type.
fn dequant_row_raw(ty: WType, src: &[u8], y: &mut [f32]) {
    match ty {
        WType::F32 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WType::F16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WType::BF16 => {
            for (o, c) in y.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
            let bs = ty.block_bytes();
            for (blk, y) in src.chunks_exact(bs).zip(y.chunks_exact_mut(32)) {
                let d = h16(blk, 0);
                match ty {
                    WType::Q4_0 => {
                        for j in 0..16 {
                            y[j] = ((blk[2 + j] & 15) as i32 - 8) as f32 * d;
                            y[j + 16] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
                        }
                    }
                    WType::Q4_1 => {
                        let m = h16(blk, 2);
                        for j in 0..16 {
                            y[j] = (blk[4 + j] & 15) as f32 * d + m;
                            y[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                        }
                    }
                    WType::Q5_0 | WType::Q5_1 => {
                        let (m, o) = if ty == WType::Q5_1 {
                            (h16(blk, 2), 4)
                        } else {
                            (0.0, 2)
                        };
                        let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                        let off = if ty == WType::Q5_0 { 16 } else { 0 };
                        for j in 0..16 {
                            let q = blk[o + 4 + j];
                            let lo = (q & 15) as i32 | ((((qh >> j) & 1) << 4) as i32);
                            let hi = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
                            y[j] = (lo - off) as f32 * d + m;
                            y[j + 16] = (hi - off) as f32 * d + m;
                        }
                    }
                    _ => {
                        for j in 0..32 {
                            y[j] = blk[2 + j] as i8 as f32 * d;
                        }
                    }
                }
            }
        }
        WType::Q4K | WType::Q5K => {
            let bs = ty.block_bytes();
            for (blk, y) in src.chunks_exact(bs).zip(y.chunks_exact_mut(256)) {
                let d = h16(blk, 0);
                let dmin = h16(blk, 2);
                let sc = &blk[4..16];
                let (qh, ql) = if ty == WType::Q5K {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&blk[0..0], &blk[16..144])
                };
                for c in 0..4 {
                    // 64 outputs per chunk: low nibbles of 32 bytes, then high nibbles
                    let (s1, m1) = kq_scale_min(2 * c, sc);
                    let (s2, m2) = kq_scale_min(2 * c + 1, sc);
                    let (d1, mm1, d2, mm2) = (
                        d * s1 as f32,
                        dmin * m1 as f32,
                        d * s2 as f32,
                        dmin * m2 as f32,
                    );
                    let q = &ql[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let (mut lo, mut hi) = ((q[l] & 15) as i32, (q[l] >> 4) as i32);
                        if ty == WType::Q5K {
                            lo += (((qh[l] >> (2 * c)) & 1) as i32) << 4;
                            hi += (((qh[l] >> (2 * c + 1)) & 1) as i32) << 4;
                        }
                        y[64 * c + l] = d1 * lo as f32 - mm1;
                        y[64 * c + 32 + l] = d2 * hi as f32 - mm2;
                    }
                }
            }
        }
        WType::Q6K => {
            for (blk, y) in src.chunks_exact(210).zip(y.chunks_exact_mut(256)) {
                let d = h16(blk, 208);
                for half in 0..2 {
                    let ql = &blk[64 * half..64 * half + 64];
                    let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &blk[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8 as f32) * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
                    }
                }
            }
        }
        WType::Q4_0R8 | WType::Q4_1R8 | WType::Q8_0R8 | WType::Q5_1R8 => unreachable!(),
    }
}

/// Dequantizes row `r` of `w` into `out[..w.cols]` (embedding lookup; works for every type incl. packed).
pub fn dequantize_row(w: &Weight, r: usize, out: &mut [f32]) {
    w.check();
    assert!(r < w.rows, "row {r} out of range ({} rows)", w.rows);
    let out = &mut out[..w.cols];
    if !w.ty.is_packed() {
        return dequant_fast(detected_isa(), w.ty, w.row(r), out);
    }
    let nb = w.cols / 32;
    let pb = panel_bytes(w.ty, w.cols);
    let panel = &w.data[(r / 8) * pb..(r / 8 + 1) * pb];
    let l = r % 8;
    for b in 0..nb {
        let y = &mut out[32 * b..32 * b + 32];
        if w.ty == WType::Q8_0R8 {
            let bp = &panel[b * R8_Q8_BLOCK..(b + 1) * R8_Q8_BLOCK];
            let d = h16(bp, 2 * l);
            for j in 0..8 {
                for i in 0..4 {
                    y[4 * j + i] = bp[16 + 32 * j + 4 * l + i] as i8 as f32 * d;
                }
            }
        } else if w.ty == WType::Q5_1R8 {
            let bp = &panel[b * R8_Q81_BLOCK..(b + 1) * R8_Q81_BLOCK];
            let (d, m) = (h16(bp, 2 * l), h16(bp, 16 + 2 * l));
            for j in 0..32 {
                y[j] = f32::from(bp[32 + 32 * (j / 4) + 4 * l + j % 4]) * d + m;
            }
        } else {
            let bp = &panel[b * R8_Q4_BLOCK..(b + 1) * R8_Q4_BLOCK];
            let (d, m) = (h16(bp, 2 * l), h16(bp, 16 + 2 * l));
            for g in 0..4 {
                for i in 0..4 {
                    let q = bp[32 + 32 * g + 4 * l + i];
                    y[4 * g + i] = (q & 15) as f32 * d + m;
                    y[16 + 4 * g + i] = (q >> 4) as f32 * d + m;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization (Q8_0 / Q8_1 semantics of llama.cpp: 32 values, f16-rounded scale)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum SumKind {
    /// `s = f16(d · Σq)` as in Q8_1 (used with Q4_1 weights).
    Q81,
    /// `s = d · Σq` unrounded; no kernel reads it (Q4_0 and Q8_0 have no min term).
    Exact,
}

/// Quantized activations of `n` tokens: per token `k` int8 values and per 32-block `[d, s]`.
struct QAct {
    nb: usize,
    k: usize,
    qs: Vec<i8>,
    ds: Vec<[f32; 2]>,
}

/// Quantizes one 32-value block; returns (amax-derived d, Σq). Both ISA paths give identical bytes.
#[inline]
fn quant_block_scalar(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (d, id) = block_scale(amax);
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *o = r as i8;
        sum += r;
    }
    (d, sum)
}

#[inline]
fn block_scale(amax: f32) -> (f32, f32) {
    let id = 127.0 / amax;
    if amax > 0.0 && id.is_finite() {
        (amax / 127.0, id)
    } else {
        (0.0, 0.0)
    }
}

fn quantize_acts(isa: Isa, x: &[f32], n: usize, k: usize, sk: SumKind) -> QAct {
    let nb = k / 32;
    let mut qa = QAct {
        nb,
        k,
        qs: vec![0i8; n * k],
        ds: vec![[0.0; 2]; n * nb],
    };
    let fill = |x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]]| {
        for b in 0..nb {
            let xb = &x[32 * b..32 * b + 32];
            let qb = &mut q[32 * b..32 * b + 32];
            let (d, sum) = match isa {
                Isa::Scalar => quant_block_scalar(xb, qb),
                #[cfg(target_arch = "x86_64")]
                _ => unsafe { avx2::quant_block(xb.as_ptr(), qb.as_mut_ptr()) },
                #[cfg(not(target_arch = "x86_64"))]
                _ => quant_block_scalar(xb, qb),
            };
            let dr = f16::from_f32(d).to_f32();
            let s = match sk {
                SumKind::Q81 => f16::from_f32(d * sum as f32).to_f32(),
                SumKind::Exact => dr * sum as f32,
            };
            ds[b] = [dr, s];
        }
    };
    if n >= 64 && k * n >= 1 << 16 {
        let (nt, per) = split(n, 32, threads());
        let qp = OutPtr(qa.qs.as_mut_ptr() as *mut f32);
        let dp = OutPtr(qa.ds.as_mut_ptr() as *mut f32);
        run_tasks(nt, &|i| {
            let (t0, t1) = (i * per, ((i + 1) * per).min(n));
            // SAFETY: tasks cover disjoint token ranges of the two buffers.
            let q = unsafe {
                std::slice::from_raw_parts_mut((qp.get() as *mut i8).add(t0 * k), (t1 - t0) * k)
            };
            let ds = unsafe {
                std::slice::from_raw_parts_mut(
                    (dp.get() as *mut [f32; 2]).add(t0 * nb),
                    (t1 - t0) * nb,
                )
            };
            for t in t0..t1 {
                fill(
                    &x[t * k..(t + 1) * k],
                    &mut q[(t - t0) * k..(t - t0 + 1) * k],
                    &mut ds[(t - t0) * nb..(t - t0 + 1) * nb],
                );
            }
        });
    } else {
        for t in 0..n {
            fill(
                &x[t * k..(t + 1) * k],
                &mut qa.qs[t * k..(t + 1) * k],
                &mut qa.ds[t * nb..(t + 1) * nb],
            );
        }
    }
    qa
}

// ---------------------------------------------------------------------------------------------
// Scalar kernels (reference math for every SIMD path)
// ---------------------------------------------------------------------------------------------

/// llama.cpp's `ggml_vec_dot_q4_1_q8_1` (AVX2) accumulation for one row × one token, bit for bit:
/// per 32-block, eight lanes (lane g: weights 4g..4g+3 of the block's first half, lane 4+g: the
/// same of its second half) each chain `fma(d·d_x, Σ, acc)`; the min terms `m·s_x` are summed
/// apart in f32; lanes are added in `hsum_float_8`'s order, then the min sum. With no min term
/// (m = 0) it is `ggml_vec_dot_q8_0_q8_0`'s, lane g being bytes 4g..4g+3 of the block.
#[derive(Default)]
struct Q4Acc {
    acc: [f32; 8],
    summs: f32,
}

impl Q4Acc {
    #[inline]
    fn block(&mut self, d: f32, m: f32, lanes: &[i32; 8], ds: [f32; 2]) {
        let dd = d * ds[0];
        for (a, &v) in self.acc.iter_mut().zip(lanes) {
            *a = dd.mul_add(v as f32, *a);
        }
        self.summs += m * ds[1];
    }

    #[inline]
    fn finish(&self) -> f32 {
        super::numerics::hsum8(&self.acc) + self.summs
    }
}

mod scalar {
    use super::*;

    /// llama.cpp's Q4_0 product on AVX2, where it repacks Q4_0 matrices of a multiple of 8 rows
    /// (`ggml_gemv/gemm_q4_0_8x8_q8_0`): per 32-block the exact integer Σ (q − 8)·x, then one
    /// accumulator per output chaining `fma(Σ, d·d_x, acc)` over the blocks, and no final sum.
    /// `value(b, j)` is weight j (0..32) of block b, `d(b)` its scale.
    pub fn q40_repacked(nb: usize, value: impl Fn(usize, usize) -> u8, d: impl Fn(usize) -> f32, xq: &[i8], ds: &[[f32; 2]]) -> f32 {
        let mut acc = 0f32;
        for b in 0..nb {
            let isum: i32 = (0..32).map(|j| (i32::from(value(b, j)) - 8) * i32::from(xq[32 * b + j])).sum();
            acc = (isum as f32).mul_add(d(b) * ds[b][0], acc);
        }
        acc
    }

    /// Raw Q4_0 / Q4_1 row × one quantized token.
    pub fn q4_row(ty: WType, row: &[u8], xq: &[i8], ds: &[[f32; 2]]) -> f32 {
        let q40 = ty == WType::Q4_0;
        if q40 {
            let nibble = |b: usize, j: usize| {
                let q = row[18 * b + 2 + j % 16];
                if j < 16 { q & 15 } else { q >> 4 }
            };
            return q40_repacked(row.len() / 18, nibble, |b| h16(&row[18 * b..], 0), xq, ds);
        }
        let (bs, qo) = if q40 { (18, 2) } else { (20, 4) };
        let mut acc = Q4Acc::default();
        for (b, blk) in row.chunks_exact(bs).enumerate() {
            let x = &xq[32 * b..32 * b + 32];
            // lane g: elements 4g..4g+3 (low nibbles of bytes 4g..), lane 4+g: their high nibbles
            let mut lanes = [0i32; 8];
            for (j, &q) in blk[qo..qo + 16].iter().enumerate() {
                lanes[j / 4] += (q & 15) as i32 * x[j] as i32;
                lanes[4 + j / 4] += (q >> 4) as i32 * x[j + 16] as i32;
            }
            let d = h16(blk, 0);
            let m = if q40 { -8.0 * d } else { h16(blk, 2) };
            acc.block(d, m, &lanes, ds[b]);
        }
        acc.finish()
    }

    /// Raw Q8_0 row × one quantized token (lane g: bytes 4g..4g+3 of each block; no min term).
    pub fn q8_row(row: &[u8], xq: &[i8], ds: &[[f32; 2]]) -> f32 {
        let mut acc = Q4Acc::default();
        for (b, blk) in row.chunks_exact(34).enumerate() {
            let x = &xq[32 * b..32 * b + 32];
            let mut lanes = [0i32; 8];
            for j in 0..32 {
                lanes[j / 4] += blk[2 + j] as i8 as i32 * x[j] as i32;
            }
            acc.block(h16(blk, 0), 0.0, &lanes, ds[b]);
        }
        acc.finish()
    }

    /// One lane (row `l`) of a packed R8 panel × one quantized token.
    pub fn r8_row(ty: WType, panel: &[u8], l: usize, xq: &[i8], ds: &[[f32; 2]]) -> f32 {
        let nb = ds.len();
        if ty == WType::Q4_0R8 {
            // weights 4g..4g+3 in the low nibbles of group g's four bytes for row l, 16+4g.. in the high
            let nibble = |b: usize, j: usize| {
                let q = panel[b * R8_Q4_BLOCK + 32 + 32 * (j % 16 / 4) + 4 * l + j % 4];
                if j < 16 { q & 15 } else { q >> 4 }
            };
            return q40_repacked(nb, nibble, |b| h16(&panel[b * R8_Q4_BLOCK..], 2 * l), xq, ds);
        }
        let mut q4 = Q4Acc::default();
        for b in 0..nb {
            let x = &xq[32 * b..32 * b + 32];
            if ty == WType::Q8_0R8 || ty == WType::Q5_1R8 {
                // Q5_1: its values 0..31 as Q8_0's, and the min term m·s (ggml_vec_dot_q5_1_q8_1)
                let (bp, q, m) = if ty == WType::Q8_0R8 {
                    (&panel[b * R8_Q8_BLOCK..], 16, 0.0)
                } else {
                    let bp = &panel[b * R8_Q81_BLOCK..];
                    (bp, 32, h16(bp, 16 + 2 * l))
                };
                let mut lanes = [0i32; 8];
                for (j, lane) in lanes.iter_mut().enumerate() {
                    for i in 0..4 {
                        *lane += bp[q + 32 * j + 4 * l + i] as i8 as i32 * x[4 * j + i] as i32;
                    }
                }
                q4.block(h16(bp, 2 * l), m, &lanes, ds[b]);
            } else {
                let bp = &panel[b * R8_Q4_BLOCK..];
                let mut lanes = [0i32; 8];
                for g in 0..4 {
                    for i in 0..4 {
                        let q = bp[32 + 32 * g + 4 * l + i];
                        lanes[g] += (q & 15) as i32 * x[4 * g + i] as i32;
                        lanes[4 + g] += (q >> 4) as i32 * x[16 + 4 * g + i] as i32;
                    }
                }
                q4.block(h16(bp, 2 * l), h16(bp, 16 + 2 * l), &lanes, ds[b]);
            }
        }
        q4.finish()
    }

    pub fn fdot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let n8 = a.len() / 8 * 8;
        for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
            for i in 0..8 {
                acc[i] = ca[i].mul_add(cb[i], acc[i]);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in n8..a.len() {
            s += a[i] * b[i];
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels, stamped out once per instruction-set variant
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
macro_rules! simd_impl {
    ($name:ident, $feat:literal, $vnni:expr, $dp:ident, $tq:literal, $tq4:literal, $tf:literal) => {
        #[allow(
            clippy::missing_safety_doc,
            clippy::too_many_arguments,
            unused_unsafe,
            dead_code
        )]
        mod $name {
            use super::*;
            use std::arch::x86_64::*;

            const VNNI: bool = $vnni;
            /// Token tile of the int8 panel kernels (Q8_0).
            pub const TQ: usize = $tq;
            /// Token tile of the Q4 panel kernel (eight accumulators per token).
            pub const TQ4: usize = $tq4;
            /// Token tile of the f32 panel kernel (16 rows).
            pub const TF: usize = $tf;

            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
            }

            /// The sum of eight int32 lanes (exact: the order does not matter).
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn hsum_i32(v: __m256i) -> i32 {
                let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
                _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
            }

            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn bcast4(p: *const u8) -> __m256i {
                unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
            }

            /// Quantizes 32 floats to int8 (round half to even); returns (d, Σq).
            #[target_feature(enable = $feat)]
            pub unsafe fn quant_block(x: *const f32, q: *mut i8) -> (f32, i32) {
                unsafe {
                    let v = [
                        _mm256_loadu_ps(x),
                        _mm256_loadu_ps(x.add(8)),
                        _mm256_loadu_ps(x.add(16)),
                        _mm256_loadu_ps(x.add(24)),
                    ];
                    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
                    let mut m = _mm256_max_ps(
                        _mm256_max_ps(_mm256_and_ps(v[0], mask), _mm256_and_ps(v[1], mask)),
                        _mm256_max_ps(_mm256_and_ps(v[2], mask), _mm256_and_ps(v[3], mask)),
                    );
                    m = _mm256_max_ps(m, _mm256_permute2f128_ps(m, m, 1));
                    m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0x4E));
                    m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0xB1));
                    let (d, id) = block_scale(_mm256_cvtss_f32(m));
                    let idv = _mm256_set1_ps(id);
                    let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], idv));
                    let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], idv));
                    let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], idv));
                    let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], idv));
                    let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
                    let s =
                        _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
                    let p =
                        _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
                    let p =
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                    _mm256_storeu_si256(q as *mut __m256i, p);
                    (d, _mm_cvtsi128_si32(s))
                }
            }

            /// 8×4 (Q4) or 8×8 (Q8) transpose of 32-bit groups: panel `p` of raw weights, all 8 rows present.
            #[target_feature(enable = $feat)]
            pub unsafe fn pack_panel_full(
                ty: WType,
                data: *const u8,
                rb: usize,
                p: usize,
                nb: usize,
                dst: *mut u8,
            ) {
                unsafe {
                    let bs = ty.block_bytes();
                    let row = |l: usize, b: usize| data.add((8 * p + l) * rb + b * bs);
                    for b in 0..nb {
                        if ty == WType::Q8_0 {
                            let o = dst.add(b * R8_Q8_BLOCK);
                            let y: [__m256i; 8] = std::array::from_fn(|l| {
                                _mm256_loadu_si256(row(l, b).add(2) as *const __m256i)
                            });
                            let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
                            let t1 = _mm256_unpackhi_epi32(y[0], y[1]);
                            let t2 = _mm256_unpacklo_epi32(y[2], y[3]);
                            let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
                            let t4 = _mm256_unpacklo_epi32(y[4], y[5]);
                            let t5 = _mm256_unpackhi_epi32(y[4], y[5]);
                            let t6 = _mm256_unpacklo_epi32(y[6], y[7]);
                            let t7 = _mm256_unpackhi_epi32(y[6], y[7]);
                            let u = [
                                _mm256_unpacklo_epi64(t0, t2),
                                _mm256_unpackhi_epi64(t0, t2),
                                _mm256_unpacklo_epi64(t1, t3),
                                _mm256_unpackhi_epi64(t1, t3),
                                _mm256_unpacklo_epi64(t4, t6),
                                _mm256_unpackhi_epi64(t4, t6),
                                _mm256_unpacklo_epi64(t5, t7),
                                _mm256_unpackhi_epi64(t5, t7),
                            ];
                            // u[j] lane-half 0 = rows 0-3 group j (j<4) / j+4 in half 1; u[j+4] the same for rows 4-7
                            for j in 0..4 {
                                let g = _mm256_permute2x128_si256(u[j], u[j + 4], 0x20);
                                let h = _mm256_permute2x128_si256(u[j], u[j + 4], 0x31);
                                _mm256_storeu_si256(o.add(16 + 32 * j) as *mut __m256i, g);
                                _mm256_storeu_si256(o.add(16 + 32 * (j + 4)) as *mut __m256i, h);
                            }
                            for l in 0..8 {
                                (o.add(2 * l) as *mut u16)
                                    .write_unaligned((row(l, b) as *const u16).read_unaligned());
                            }
                        } else {
                            let o = dst.add(b * R8_Q4_BLOCK);
                            let qo = if ty == WType::Q4_1 { 4 } else { 2 };
                            let y: [__m256i; 4] = std::array::from_fn(|l| {
                                _mm256_loadu2_m128i(
                                    row(l + 4, b).add(qo) as *const __m128i,
                                    row(l, b).add(qo) as *const __m128i,
                                )
                            });
                            let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
                            let t1 = _mm256_unpackhi_epi32(y[0], y[1]);
                            let t2 = _mm256_unpacklo_epi32(y[2], y[3]);
                            let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
                            _mm256_storeu_si256(
                                o.add(32) as *mut __m256i,
                                _mm256_unpacklo_epi64(t0, t2),
                            );
                            _mm256_storeu_si256(
                                o.add(64) as *mut __m256i,
                                _mm256_unpackhi_epi64(t0, t2),
                            );
                            _mm256_storeu_si256(
                                o.add(96) as *mut __m256i,
                                _mm256_unpacklo_epi64(t1, t3),
                            );
                            _mm256_storeu_si256(
                                o.add(128) as *mut __m256i,
                                _mm256_unpackhi_epi64(t1, t3),
                            );
                            let mut dv = [0u16; 8];
                            for l in 0..8 {
                                let r = row(l, b) as *const u16;
                                dv[l] = r.read_unaligned();
                                if ty == WType::Q4_1 {
                                    (o.add(16 + 2 * l) as *mut u16)
                                        .write_unaligned(r.add(1).read_unaligned());
                                }
                            }
                            let d = _mm_loadu_si128(dv.as_ptr() as *const __m128i);
                            _mm_storeu_si128(o as *mut __m128i, d);
                            if ty == WType::Q4_0 {
                                let m = _mm256_mul_ps(_mm256_cvtph_ps(d), _mm256_set1_ps(-8.0));
                                _mm_storeu_si128(
                                    o.add(16) as *mut __m128i,
                                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(m),
                                );
                            }
                        }
                    }
                }
            }

            /// Stores 32 signed bytes `q` as `q·a + b` floats (mul then add: bitwise equal to the scalar code).
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn store32_i8(q: __m256i, a: __m256, b: __m256, y: *mut f32) {
                unsafe {
                    let lo = _mm256_castsi256_si128(q);
                    let hi = _mm256_extracti128_si256(q, 1);
                    let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                    for (i, p) in parts.into_iter().enumerate() {
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p));
                        _mm256_storeu_ps(y.add(8 * i), _mm256_add_ps(_mm256_mul_ps(f, a), b));
                    }
                }
            }

            /// Like `store32_i8` for 16 values with a different scale/offset per 16 (Q6_K sub-blocks).
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn store16_i8(q: __m128i, a: __m256, b: __m256, y: *mut f32) {
                unsafe {
                    for (i, p) in [q, _mm_srli_si128(q, 8)].into_iter().enumerate() {
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p));
                        _mm256_storeu_ps(y.add(8 * i), _mm256_add_ps(_mm256_mul_ps(f, a), b));
                    }
                }
            }

            /// SIMD twin of `dequant_row_raw` for every non-packed type; identical results.
            #[target_feature(enable = $feat)]
            pub unsafe fn dequant_row(ty: WType, src: &[u8], y: &mut [f32]) {
                unsafe {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let zero = _mm256_setzero_ps();
                    let yp = y.as_mut_ptr();
                    let sp = src.as_ptr();
                    let n = y.len();
                    match ty {
                        WType::F16 | WType::BF16 | WType::F32 => {
                            let mut i = 0;
                            while i + 8 <= n {
                                let v = match ty {
                                    WType::F32 => _mm256_loadu_ps(sp.add(4 * i) as *const f32),
                                    WType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(
                                        sp.add(2 * i) as *const __m128i
                                    )),
                                    _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                                        _mm256_cvtepu16_epi32(_mm_loadu_si128(
                                            sp.add(2 * i) as *const __m128i
                                        )),
                                        16,
                                    )),
                                };
                                _mm256_storeu_ps(yp.add(i), v);
                                i += 8;
                            }
                            if i < n {
                                let eb = if ty == WType::F32 { 4 } else { 2 };
                                dequant_row_raw(ty, &src[i * eb..n * eb], &mut y[i..n]);
                            }
                        }
                        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
                            let bs = ty.block_bytes();
                            // bit j of a 32-bit word → byte j
                            let shuf = _mm256_setr_epi8(
                                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2,
                                2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                            );
                            let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                            for b in 0..n / 32 {
                                let blk = sp.add(b * bs);
                                let d = _mm256_set1_ps(h16(src, b * bs));
                                let y = yp.add(32 * b);
                                match ty {
                                    WType::Q8_0 => store32_i8(
                                        _mm256_loadu_si256(blk.add(2) as *const __m256i),
                                        d,
                                        zero,
                                        y,
                                    ),
                                    _ => {
                                        let qo = match ty {
                                            WType::Q4_0 => 2,
                                            WType::Q4_1 => 4,
                                            WType::Q5_0 => 6,
                                            _ => 8,
                                        };
                                        let q = _mm_loadu_si128(blk.add(qo) as *const __m128i);
                                        let mut v = _mm256_set_m128i(
                                            _mm_and_si128(
                                                _mm_srli_epi16(q, 4),
                                                _mm256_castsi256_si128(m4),
                                            ),
                                            _mm_and_si128(q, _mm256_castsi256_si128(m4)),
                                        );
                                        if matches!(ty, WType::Q5_0 | WType::Q5_1) {
                                            let qh =
                                                (blk.add(qo - 4) as *const i32).read_unaligned();
                                            let hb =
                                                _mm256_shuffle_epi8(_mm256_set1_epi32(qh), shuf);
                                            let hb =
                                                _mm256_cmpeq_epi8(_mm256_and_si256(hb, bits), bits);
                                            v = _mm256_or_si256(
                                                v,
                                                _mm256_and_si256(hb, _mm256_set1_epi8(0x10)),
                                            );
                                        }
                                        let (off, m) = match ty {
                                            WType::Q4_0 => (8, zero),
                                            WType::Q5_0 => (16, zero),
                                            WType::Q4_1 | WType::Q5_1 => {
                                                (0, _mm256_set1_ps(h16(src, b * bs + 2)))
                                            }
                                            _ => unreachable!(),
                                        };
                                        store32_i8(
                                            _mm256_sub_epi8(v, _mm256_set1_epi8(off)),
                                            d,
                                            m,
                                            y,
                                        );
                                    }
                                }
                            }
                        }
                        WType::Q4K | WType::Q5K => {
                            let bs = ty.block_bytes();
                            let one = _mm256_set1_epi8(1);
                            for b in 0..n / 256 {
                                let blk = &src[b * bs..(b + 1) * bs];
                                let d = h16(blk, 0);
                                let dmin = h16(blk, 2);
                                let sc = &blk[4..16];
                                let (qh, ql) = if ty == WType::Q5K {
                                    (blk.as_ptr().add(16), blk.as_ptr().add(48))
                                } else {
                                    (blk.as_ptr(), blk.as_ptr().add(16))
                                };
                                let qhv = _mm256_loadu_si256(qh as *const __m256i);
                                for c in 0..4 {
                                    let (s1, mn1) = kq_scale_min(2 * c, sc);
                                    let (s2, mn2) = kq_scale_min(2 * c + 1, sc);
                                    let q = _mm256_loadu_si256(ql.add(32 * c) as *const __m256i);
                                    let mut lo = _mm256_and_si256(q, m4);
                                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                                    if ty == WType::Q5K {
                                        let sh = _mm_cvtsi32_si128(2 * c as i32);
                                        let h1 = _mm256_and_si256(_mm256_srl_epi16(qhv, sh), one);
                                        let h2 = _mm256_and_si256(
                                            _mm256_srl_epi16(
                                                qhv,
                                                _mm_cvtsi32_si128(2 * c as i32 + 1),
                                            ),
                                            one,
                                        );
                                        lo = _mm256_or_si256(lo, _mm256_slli_epi16(h1, 4));
                                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(h2, 4));
                                    }
                                    let y = yp.add(256 * b + 64 * c);
                                    // y = d1·q − m1 as mul then add of −m1 (same rounding as the scalar sub)
                                    store32_i8(
                                        lo,
                                        _mm256_set1_ps(d * s1 as f32),
                                        _mm256_set1_ps(-(dmin * mn1 as f32)),
                                        y,
                                    );
                                    store32_i8(
                                        hi,
                                        _mm256_set1_ps(d * s2 as f32),
                                        _mm256_set1_ps(-(dmin * mn2 as f32)),
                                        y.add(32),
                                    );
                                }
                            }
                        }
                        WType::Q6K => {
                            let m3 = _mm256_set1_epi8(3);
                            let c32 = _mm256_set1_epi8(32);
                            for b in 0..n / 256 {
                                let blk = &src[b * 210..(b + 1) * 210];
                                let d = h16(blk, 208);
                                for half in 0..2 {
                                    let bp = blk.as_ptr();
                                    let a = _mm256_loadu_si256(bp.add(64 * half) as *const __m256i);
                                    let bq = _mm256_loadu_si256(
                                        bp.add(64 * half + 32) as *const __m256i
                                    );
                                    let h = _mm256_loadu_si256(
                                        bp.add(128 + 32 * half) as *const __m256i
                                    );
                                    let hb = |s: i32| -> __m256i {
                                        let v = match s {
                                            0 => h,
                                            2 => _mm256_srli_epi16(h, 2),
                                            4 => _mm256_srli_epi16(h, 4),
                                            _ => _mm256_srli_epi16(h, 6),
                                        };
                                        _mm256_slli_epi16(_mm256_and_si256(v, m3), 4)
                                    };
                                    let qs = [
                                        _mm256_sub_epi8(
                                            _mm256_or_si256(_mm256_and_si256(a, m4), hb(0)),
                                            c32,
                                        ),
                                        _mm256_sub_epi8(
                                            _mm256_or_si256(_mm256_and_si256(bq, m4), hb(2)),
                                            c32,
                                        ),
                                        _mm256_sub_epi8(
                                            _mm256_or_si256(
                                                _mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                                                hb(4),
                                            ),
                                            c32,
                                        ),
                                        _mm256_sub_epi8(
                                            _mm256_or_si256(
                                                _mm256_and_si256(_mm256_srli_epi16(bq, 4), m4),
                                                hb(6),
                                            ),
                                            c32,
                                        ),
                                    ];
                                    let sc = &blk[192 + 8 * half..200 + 8 * half];
                                    for (k, q) in qs.into_iter().enumerate() {
                                        let y = yp.add(256 * b + 128 * half + 32 * k);
                                        let s0 = _mm256_set1_ps(d * (sc[2 * k] as i8 as f32));
                                        let s1 = _mm256_set1_ps(d * (sc[2 * k + 1] as i8 as f32));
                                        store16_i8(_mm256_castsi256_si128(q), s0, zero, y);
                                        store16_i8(
                                            _mm256_extracti128_si256(q, 1),
                                            s1,
                                            zero,
                                            y.add(16),
                                        );
                                    }
                                }
                            }
                        }
                        _ => unreachable!(),
                    }
                }
            }

            // ---- R8 panel kernels: 8 rows (one per 32-bit lane) × T tokens ----

            /// Q4_1R8 panel × T tokens → `out[t*os .. +8]`, in llama.cpp's order (see `Q4Acc`):
            /// lane = row, and per row eight accumulators, one per 4-weight group.
            #[target_feature(enable = $feat)]
            pub unsafe fn q4r8<const T: usize>(
                p: *const u8,
                nb: usize,
                x: *const i8,
                xs: usize,
                ds: *const [f32; 2],
                out: *mut f32,
                os: usize,
            ) {
                unsafe {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let ones = _mm256_set1_epi16(1);
                    let zero = _mm256_setzero_si256();
                    let mut facc = [[_mm256_setzero_ps(); 8]; T];
                    let mut summs = [_mm256_setzero_ps(); T];
                    for b in 0..nb {
                        let bp = p.add(b * R8_Q4_BLOCK);
                        let dm = _mm256_loadu_si256(bp as *const __m256i);
                        let d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
                        let m = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
                        let mut dd = [_mm256_setzero_ps(); T];
                        for t in 0..T {
                            let s = *ds.add(t * nb + b);
                            dd[t] = _mm256_mul_ps(d, _mm256_set1_ps(s[0]));
                            summs[t] = _mm256_add_ps(summs[t], _mm256_mul_ps(m, _mm256_set1_ps(s[1])));
                        }
                        for g in 0..4 {
                            let v = _mm256_loadu_si256(bp.add(32 + 32 * g) as *const __m256i);
                            let w0 = _mm256_and_si256(v, m4);
                            let w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                            for t in 0..T {
                                let xp = x.add(t * xs + b * 32 + 4 * g) as *const u8;
                                let x0 = bcast4(xp);
                                let x1 = bcast4(xp.add(16));
                                let (l0, l1) = if VNNI {
                                    ($dp(zero, w0, x0), $dp(zero, w1, x1))
                                } else {
                                    (
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(w0, x0), ones),
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(w1, x1), ones),
                                    )
                                };
                                facc[t][g] = _mm256_fmadd_ps(dd[t], _mm256_cvtepi32_ps(l0), facc[t][g]);
                                facc[t][4 + g] = _mm256_fmadd_ps(dd[t], _mm256_cvtepi32_ps(l1), facc[t][4 + g]);
                            }
                        }
                    }
                    for t in 0..T {
                        let a = &facc[t];
                        // hsum_float_8's pairing: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), then + Σ m·s
                        let r0 = _mm256_add_ps(a[4], a[0]);
                        let r1 = _mm256_add_ps(a[5], a[1]);
                        let r2 = _mm256_add_ps(a[6], a[2]);
                        let r3 = _mm256_add_ps(a[7], a[3]);
                        let sum = _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3));
                        _mm256_storeu_ps(out.add(t * os), _mm256_add_ps(sum, summs[t]));
                    }
                }
            }

            /// Q4_0R8 panel × T tokens → `out[t*os .. +8]`, in the order of llama.cpp's repacked
            /// Q4_0 (`scalar::q40_repacked`): lane = row, per block the exact Σ (q − 8)·x over its
            /// 32 weights, one `fma(Σ, d·d_x, acc)` per block, no final sum.
            #[target_feature(enable = $feat)]
            pub unsafe fn q40r8<const T: usize>(
                p: *const u8,
                nb: usize,
                x: *const i8,
                xs: usize,
                ds: *const [f32; 2],
                out: *mut f32,
                os: usize,
            ) {
                unsafe {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let eight = _mm256_set1_epi8(8);
                    let ones = _mm256_set1_epi16(1);
                    let zero = _mm256_setzero_si256();
                    let mut facc = [_mm256_setzero_ps(); T];
                    for b in 0..nb {
                        let bp = p.add(b * R8_Q4_BLOCK);
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(bp as *const __m128i));
                        let mut isum = [zero; T];
                        for g in 0..4 {
                            let v = _mm256_loadu_si256(bp.add(32 + 32 * g) as *const __m256i);
                            let w0 = _mm256_sub_epi8(_mm256_and_si256(v, m4), eight);
                            let w1 = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), eight);
                            let (a0, a1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
                            for t in 0..T {
                                let xp = x.add(t * xs + b * 32 + 4 * g) as *const u8;
                                // |w| · (x with w's sign): exact sums of four products
                                let s0 = _mm256_sign_epi8(bcast4(xp), w0);
                                let s1 = _mm256_sign_epi8(bcast4(xp.add(16)), w1);
                                let (l0, l1) = if VNNI {
                                    ($dp(zero, a0, s0), $dp(zero, a1, s1))
                                } else {
                                    (_mm256_madd_epi16(_mm256_maddubs_epi16(a0, s0), ones), _mm256_madd_epi16(_mm256_maddubs_epi16(a1, s1), ones))
                                };
                                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(l0, l1));
                            }
                        }
                        for t in 0..T {
                            let dd = _mm256_mul_ps(d, _mm256_set1_ps((*ds.add(t * nb + b))[0]));
                            facc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), dd, facc[t]);
                        }
                    }
                    for t in 0..T {
                        _mm256_storeu_ps(out.add(t * os), facc[t]);
                    }
                }
            }

            /// Q8_0R8 (or, with `mins`, Q5_1R8) panel × T tokens → `out[t*os .. +8]`, in
            /// llama.cpp's order (`ggml_vec_dot_q8_0_q8_0`, `ggml_vec_dot_q5_1_q8_1` and tinyBLAS
            /// on AVX2): lane = row, and per row eight accumulators, one per 4-byte group of the
            /// block, each chaining `fma(d·d_x, Σ4 w·x, acc)`; then `hsum_float_8`'s pairing, and
            /// with `mins` the sum of `m·s_x` (each exact: two f16 values) over the blocks.
            #[target_feature(enable = $feat)]
            pub unsafe fn q8r8<const T: usize>(
                p: *const u8,
                nb: usize,
                x: *const i8,
                xs: usize,
                ds: *const [f32; 2],
                out: *mut f32,
                os: usize,
                mins: bool,
            ) {
                unsafe {
                    let ones = _mm256_set1_epi16(1);
                    let zero = _mm256_setzero_si256();
                    let (stride, qo) = if mins { (R8_Q81_BLOCK, 32) } else { (R8_Q8_BLOCK, 16) };
                    let mut facc = [[_mm256_setzero_ps(); 8]; T];
                    let mut summs = [_mm256_setzero_ps(); T];
                    for b in 0..nb {
                        let bp = p.add(b * stride);
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(bp as *const __m128i));
                        let mut dd = [_mm256_setzero_ps(); T];
                        for t in 0..T {
                            let s = *ds.add(t * nb + b);
                            dd[t] = _mm256_mul_ps(d, _mm256_set1_ps(s[0]));
                            if mins {
                                let m = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(16) as *const __m128i));
                                summs[t] = _mm256_add_ps(summs[t], _mm256_mul_ps(m, _mm256_set1_ps(s[1])));
                            }
                        }
                        for j in 0..8 {
                            let w = _mm256_loadu_si256(bp.add(qo + 32 * j) as *const __m256i);
                            let aw = _mm256_abs_epi8(w);
                            for t in 0..T {
                                // |w| · (x with w's sign): the exact Σ of the group's four products
                                let sx = _mm256_sign_epi8(bcast4(x.add(t * xs + b * 32 + 4 * j) as *const u8), w);
                                let l = if VNNI { $dp(zero, aw, sx) } else { _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones) };
                                facc[t][j] = _mm256_fmadd_ps(dd[t], _mm256_cvtepi32_ps(l), facc[t][j]);
                            }
                        }
                    }
                    for t in 0..T {
                        let a = &facc[t];
                        // hsum_float_8's pairing: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))
                        let r0 = _mm256_add_ps(a[4], a[0]);
                        let r1 = _mm256_add_ps(a[5], a[1]);
                        let r2 = _mm256_add_ps(a[6], a[2]);
                        let r3 = _mm256_add_ps(a[7], a[3]);
                        let sum = _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3));
                        _mm256_storeu_ps(out.add(t * os), if mins { _mm256_add_ps(sum, summs[t]) } else { sum });
                    }
                }
            }

            /// f32 panel (`[k][16]`) × T tokens → `out[t*os .. +16]`.
            #[target_feature(enable = $feat)]
            pub unsafe fn f32p<const T: usize>(
                p: *const f32,
                k: usize,
                x: *const f32,
                xs: usize,
                out: *mut f32,
                os: usize,
            ) {
                unsafe {
                    let mut a0 = [_mm256_setzero_ps(); T];
                    let mut a1 = [_mm256_setzero_ps(); T];
                    for kk in 0..k {
                        let w0 = _mm256_loadu_ps(p.add(16 * kk));
                        let w1 = _mm256_loadu_ps(p.add(16 * kk + 8));
                        for t in 0..T {
                            let xb = _mm256_set1_ps(*x.add(t * xs + kk));
                            a0[t] = _mm256_fmadd_ps(w0, xb, a0[t]);
                            a1[t] = _mm256_fmadd_ps(w1, xb, a1[t]);
                        }
                    }
                    for t in 0..T {
                        _mm256_storeu_ps(out.add(t * os), a0[t]);
                        _mm256_storeu_ps(out.add(t * os + 8), a1[t]);
                    }
                }
            }

            /// Runs a group of consecutive R8 panels over `nt` tokens, in token tiles of TQ.
            /// `out` points at (token 0, first row of the group); `valid` = rows of the group that exist.
            #[target_feature(enable = $feat)]
            pub unsafe fn r8_group(
                ty: WType,
                panels: *const u8,
                pb: usize,
                npan: usize,
                valid: usize,
                nb: usize,
                qa: &QAct,
                t0: usize,
                nt: usize,
                out: *mut f32,
                os: usize,
            ) {
                unsafe {
                    let k = qa.k;
                    let ds = qa.ds.as_ptr().add(t0 * nb);
                    let mut tmp = [0f32; 8 * $tq];
                    let mut t = 0;
                    // eight accumulators a row per token: the int8 kernels take TQ4 tokens at a
                    // time; repacked Q4_0's one accumulator a row takes TQ
                    let tmax = if ty == WType::Q4_0R8 { TQ } else { TQ4 };
                    while t < nt {
                        let tt = (nt - t).min(tmax);
                        for pi in 0..npan {
                            let full = (pi + 1) * 8 <= valid;
                            let (o, ost) = if full {
                                (out.add(t * os + pi * 8), os)
                            } else {
                                (tmp.as_mut_ptr(), 8)
                            };
                            let pp = panels.add(pi * pb);
                            let dst = ds.add(t * nb);
                            let xp = qa.qs.as_ptr().add((t0 + t) * k);
                            if ty == WType::Q8_0R8 || ty == WType::Q5_1R8 {
                                seq_tiles!(tt, TQ4, q8r8(pp, nb, xp, k, dst, o, ost, ty == WType::Q5_1R8));
                            } else if ty == WType::Q4_0R8 {
                                seq_tiles!(tt, TQ, q40r8(pp, nb, xp, k, dst, o, ost));
                            } else {
                                seq_tiles!(tt, TQ4, q4r8(pp, nb, xp, k, dst, o, ost));
                            }
                            if !full {
                                let vr = valid.saturating_sub(pi * 8).min(8);
                                for i in 0..tt {
                                    std::ptr::copy_nonoverlapping(
                                        tmp.as_ptr().add(8 * i),
                                        out.add((t + i) * os + pi * 8),
                                        vr,
                                    );
                                }
                            }
                        }
                        t += tt;
                    }
                }
            }

            /// f32 panels (16 rows each) over `nt` tokens.
            #[target_feature(enable = $feat)]
            pub unsafe fn f32_group(
                panels: *const f32,
                k: usize,
                npan: usize,
                valid: usize,
                x: *const f32,
                nt: usize,
                out: *mut f32,
                os: usize,
            ) {
                unsafe {
                    let mut tmp = [0f32; 16 * $tf];
                    let mut t = 0;
                    while t < nt {
                        let tt = (nt - t).min(TF);
                        for pi in 0..npan {
                            let full = (pi + 1) * 16 <= valid;
                            let (o, ost) = if full {
                                (out.add(t * os + pi * 16), os)
                            } else {
                                (tmp.as_mut_ptr(), 16)
                            };
                            let pp = panels.add(pi * 16 * k);
                            let xp = x.add(t * k);
                            seq_tiles!(tt, TF, f32p(pp, k, xp, k, o, ost));
                            if !full {
                                let vr = valid.saturating_sub(pi * 16).min(16);
                                for i in 0..tt {
                                    std::ptr::copy_nonoverlapping(
                                        tmp.as_ptr().add(16 * i),
                                        out.add((t + i) * os + pi * 16),
                                        vr,
                                    );
                                }
                            }
                        }
                        t += tt;
                    }
                }
            }

            // ---- direct kernels on the ggml row layout (decode, few tokens) ----

            /// R rows of raw Q4_0 (`Q40`) or Q4_1 × one quantized token.
            #[target_feature(enable = $feat)]
            pub unsafe fn q4_direct<const R: usize, const Q40: bool>(
                rows: &[*const u8; R],
                nb: usize,
                xq: *const i8,
                ds: *const [f32; 2],
                res: &mut [f32; R],
            ) {
                unsafe {
                    let (bs, qo) = if Q40 { (18, 2) } else { (20, 4) };
                    let m4 = _mm_set1_epi8(0x0F);
                    let ones = _mm256_set1_epi16(1);
                    let mut acc = [_mm256_setzero_ps(); R];
                    let mut mac = [_mm_setzero_ps(); R];
                    for b in 0..nb {
                        let xv = _mm256_loadu_si256(xq.add(32 * b) as *const __m256i);
                        let dsv = _mm_castsi128_ps(_mm_loadl_epi64(ds.add(b) as *const __m128i));
                        for i in 0..R {
                            let blk = rows[i].add(b * bs);
                            let q = _mm_loadu_si128(blk.add(qo) as *const __m128i);
                            let w = _mm256_set_m128i(
                                _mm_and_si128(_mm_srli_epi16(q, 4), m4),
                                _mm_and_si128(q, m4),
                            );
                            let isum = if VNNI {
                                $dp(_mm256_setzero_si256(), w, xv)
                            } else {
                                _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones)
                            };
                            if Q40 {
                                // llama.cpp's repacked order (scalar::q40_repacked): the block's
                                // exact Σ (q − 8)·x, one fma into lane 0
                                let w8 = _mm256_sub_epi8(w, _mm256_set1_epi8(8));
                                let sx = _mm256_sign_epi8(xv, w8);
                                let aw = _mm256_abs_epi8(w8);
                                let l = if VNNI { $dp(_mm256_setzero_si256(), aw, sx) } else { _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones) };
                                let isum = hsum_i32(l);
                                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16((blk as *const i16).read_unaligned())));
                                let dd = d * _mm_cvtss_f32(dsv);
                                acc[i] = _mm256_castps128_ps256(_mm_fmadd_ss(_mm_set_ss(isum as f32), _mm_set_ss(dd), _mm256_castps256_ps128(acc[i])));
                                continue;
                            }
                            let dm = if Q40 {
                                _mm_cvtph_ps(_mm_set1_epi16((blk as *const i16).read_unaligned()))
                            } else {
                                _mm_cvtph_ps(_mm_cvtsi32_si128(
                                    (blk as *const i32).read_unaligned(),
                                ))
                            };
                            let prod = _mm_mul_ps(dm, dsv);
                            acc[i] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(isum),
                                _mm256_broadcastss_ps(prod),
                                acc[i],
                            );
                            mac[i] = _mm_add_ps(mac[i], prod);
                        }
                    }
                    for i in 0..R {
                        let m = _mm_cvtss_f32(_mm_shuffle_ps(mac[i], mac[i], 1));
                        res[i] = if Q40 { _mm256_cvtss_f32(acc[i]) } else { hsum(acc[i]) + m };
                    }
                }
            }

            /// R rows of raw Q8_0 × one quantized token.
            #[target_feature(enable = $feat)]
            pub unsafe fn q8_direct<const R: usize>(
                rows: &[*const u8; R],
                nb: usize,
                xq: *const i8,
                ds: *const [f32; 2],
                res: &mut [f32; R],
            ) {
                unsafe {
                    let ones = _mm256_set1_epi16(1);
                    let mut acc = [_mm256_setzero_ps(); R];
                    for b in 0..nb {
                        let xv = _mm256_loadu_si256(xq.add(32 * b) as *const __m256i);
                        let dx = _mm_set_ss((*ds.add(b))[0]);
                        for i in 0..R {
                            let blk = rows[i].add(b * 34);
                            let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                            let aw = _mm256_abs_epi8(w);
                            let sx = _mm256_sign_epi8(xv, w);
                            let isum = if VNNI {
                                $dp(_mm256_setzero_si256(), aw, sx)
                            } else {
                                _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones)
                            };
                            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                                (blk as *const u16).read_unaligned() as i32,
                            ));
                            let dd = _mm_mul_ss(d, dx);
                            acc[i] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(isum),
                                _mm256_broadcastss_ps(dd),
                                acc[i],
                            );
                        }
                    }
                    for i in 0..R {
                        res[i] = hsum(acc[i]);
                    }
                }
            }

            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn load8<const TY: u8>(p: *const u8, i: usize) -> __m256 {
                unsafe {
                    match TY {
                        0 => _mm256_loadu_ps((p as *const f32).add(i)),
                        1 => _mm256_cvtph_ps(_mm_loadu_si128(
                            (p as *const u16).add(i) as *const __m128i
                        )),
                        _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                            _mm256_cvtepu16_epi32(_mm_loadu_si128(
                                (p as *const u16).add(i) as *const __m128i
                            )),
                            16,
                        )),
                    }
                }
            }

            /// R rows of f32 (TY=0) / f16 (1) / bf16 (2) data × one f32 token.
            #[target_feature(enable = $feat)]
            pub unsafe fn fdot<const R: usize, const TY: u8>(
                rows: &[*const u8; R],
                k: usize,
                x: *const f32,
                res: &mut [f32; R],
            ) {
                unsafe {
                    let mut a0 = [_mm256_setzero_ps(); R];
                    let mut a1 = [_mm256_setzero_ps(); R];
                    let mut kk = 0;
                    while kk + 16 <= k {
                        let x0 = _mm256_loadu_ps(x.add(kk));
                        let x1 = _mm256_loadu_ps(x.add(kk + 8));
                        for i in 0..R {
                            a0[i] = _mm256_fmadd_ps(load8::<TY>(rows[i], kk), x0, a0[i]);
                            a1[i] = _mm256_fmadd_ps(load8::<TY>(rows[i], kk + 8), x1, a1[i]);
                        }
                        kk += 16;
                    }
                    if kk + 8 <= k {
                        let x0 = _mm256_loadu_ps(x.add(kk));
                        for i in 0..R {
                            a0[i] = _mm256_fmadd_ps(load8::<TY>(rows[i], kk), x0, a0[i]);
                        }
                        kk += 8;
                    }
                    for i in 0..R {
                        let mut s = hsum(_mm256_add_ps(a0[i], a1[i]));
                        for j in kk..k {
                            let w = match TY {
                                0 => (rows[i] as *const f32).add(j).read_unaligned(),
                                1 => {
                                    f16::from_bits((rows[i] as *const u16).add(j).read_unaligned())
                                        .to_f32()
                                }
                                _ => half::bf16::from_bits(
                                    (rows[i] as *const u16).add(j).read_unaligned(),
                                )
                                .to_f32(),
                            };
                            s += w * *x.add(j);
                        }
                        res[i] = s;
                    }
                }
            }
        }
    };
}

/// Calls `$f::<T>(args)` for a runtime tile size `$tt` in 1..=$max (max ≤ 8).
#[cfg(target_arch = "x86_64")]
macro_rules! seq_tiles {
    ($tt:expr, $max:expr, $f:ident($($a:expr),*)) => {
        match $tt {
            1 => $f::<1>($($a),*),
            2 if $max >= 2 => $f::<{ if $max >= 2 { 2 } else { 1 } }>($($a),*),
            3 if $max >= 3 => $f::<{ if $max >= 3 { 3 } else { 1 } }>($($a),*),
            4 if $max >= 4 => $f::<{ if $max >= 4 { 4 } else { 1 } }>($($a),*),
            5 if $max >= 5 => $f::<{ if $max >= 5 { 5 } else { 1 } }>($($a),*),
            6 if $max >= 6 => $f::<{ if $max >= 6 { 6 } else { 1 } }>($($a),*),
            7 if $max >= 7 => $f::<{ if $max >= 7 { 7 } else { 1 } }>($($a),*),
            8 if $max >= 8 => $f::<{ if $max >= 8 { 8 } else { 1 } }>($($a),*),
            _ => unreachable!(),
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_impl!(avx2, "avx2,fma,f16c", false, _mm256_dpbusd_avx_epi32, 6, 1, 6);
#[cfg(target_arch = "x86_64")]
simd_impl!(
    avxvnni,
    "avx2,fma,f16c,avxvnni",
    true,
    _mm256_dpbusd_avx_epi32,
    6,
    1,
    6
);
#[cfg(target_arch = "x86_64")]
simd_impl!(
    avx512vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    true,
    _mm256_dpbusd_epi32,
    8,
    2,
    6
);

/// Binds `$m` to the SIMD module of `$isa` (never called with `Isa::Scalar`).
#[cfg(target_arch = "x86_64")]
macro_rules! with_simd {
    ($isa:expr, $m:ident => $body:expr) => {
        match $isa {
            Isa::Avx2 => {
                use avx2 as $m;
                $body
            }
            Isa::AvxVnni => {
                use avxvnni as $m;
                $body
            }
            Isa::Avx512Vnni => {
                use avx512vnni as $m;
                $body
            }
            Isa::Scalar => unreachable!(),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

/// Float / dequantized weights use f32 panels from this many tokens on.
const F32_PANEL_MIN_N: usize = 4;
/// Panel bytes one task keeps hot (L2-sized share).
const TASK_PANEL_BYTES: usize = 96 * 1024;

/// out[t][r] = dot(w.row(r), x[t]) for t in 0..n; x is n×cols row-major f32, out is n×rows.
/// Q4_0/Q4_1/Q8_0 (and packed) weights use int8-quantized activations like llama.cpp.
pub fn matmul(w: &Weight, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_isa(detected_isa(), false, w, x, n, out)
}

/// Like [`matmul`] but with unquantized f32 activations and dequantized weights (f32 accumulation).
pub fn matmul_f32_exact(w: &Weight, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_isa(detected_isa(), true, w, x, n, out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// int8 activations: Q4_0, Q4_1, Q8_0 and their R8 forms.
    Quant,
    /// f32 activations: float types, the rarer quant types and the exact path.
    Float,
}

fn path_of(ty: WType, exact: bool) -> Path {
    match ty {
        WType::Q4_0 | WType::Q4_1 | WType::Q8_0 | WType::Q4_0R8 | WType::Q4_1R8 | WType::Q8_0R8 | WType::Q5_1R8
            if !exact =>
        {
            Path::Quant
        }
        _ => Path::Float,
    }
}

fn sum_kind(ty: WType) -> SumKind {
    match ty {
        WType::Q4_1 | WType::Q4_1R8 | WType::Q5_1R8 => SumKind::Q81,
        _ => SumKind::Exact,
    }
}

/// [`matmul`] with an explicit kernel family and exactness (tests, benchmarks). Panics if `isa` is unavailable.
pub fn matmul_isa(isa: Isa, exact: bool, w: &Weight, x: &[f32], n: usize, out: &mut [f32]) {
    w.check();
    assert!(isa.available(), "{isa:?} is not supported by this CPU");
    assert!(x.len() >= n * w.cols, "x too short");
    assert!(out.len() >= n * w.rows, "out too short");
    if n == 0 || w.rows == 0 {
        return;
    }
    if w.cols == 0 {
        out[..n * w.rows].fill(0.0);
        return;
    }
    let out = &mut out[..n * w.rows];
    let path = path_of(w.ty, exact);
    if path == Path::Quant {
        let qa = quantize_acts(isa, x, n, w.cols, sum_kind(w.ty));
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // R8 panels (repacked per call for raw weights): faster than the row-layout kernels from n = 1 on
            return r8_path(isa, w, &qa, n, out);
        }
        rows_generic(isa, exact, w, x, Some(&qa), n, out)
    } else {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && n >= F32_PANEL_MIN_N {
            return f32_panel_path(isa, w, x, n, out);
        }
        rows_generic(isa, exact, w, x, None, n, out)
    }
}

/// Row-parallel evaluation, token loop inside (decode; also every scalar case).
fn rows_generic(
    isa: Isa,
    exact: bool,
    w: &Weight,
    x: &[f32],
    qa: Option<&QAct>,
    n: usize,
    out: &mut [f32],
) {
    let rows = w.rows;
    let group = if w.ty.is_packed() { 8 } else { 4 };
    // up to 8 equal tasks per thread (claimed dynamically), each with at least ~32 KiB of weights
    let units = rows.div_ceil(group);
    let min_units = (32768 / (w.ty.row_bytes(w.cols) * group).max(1)).max(1);
    let th = threads();
    let mut tasks = if th > 1 {
        (8 * th).min((units / min_units).max(1))
    } else {
        1
    };
    if tasks > th {
        tasks = tasks / th * th;
    }
    let per = units.div_ceil(tasks) * group;
    let ntasks = rows.div_ceil(per);
    let op = OutPtr(out.as_mut_ptr());
    run_tasks(ntasks, &|i| {
        let (r0, r1) = (i * per, ((i + 1) * per).min(rows));
        // SAFETY: each task writes only out[t*rows + r] for r in its own row range.
        unsafe { rows_task(isa, exact, w, x, qa, n, r0, r1, op) }
    });
}

#[allow(clippy::too_many_arguments)]
unsafe fn rows_task(
    isa: Isa,
    exact: bool,
    w: &Weight,
    x: &[f32],
    qa: Option<&QAct>,
    n: usize,
    r0: usize,
    r1: usize,
    op: OutPtr,
) {
    let rows = w.rows;
    let k = w.cols;
    let put = |t: usize, r: usize, v: f32| unsafe { *op.get().add(t * rows + r) = v };
    if let Some(qa) = qa {
        // quantized activations reach here only on the scalar path (SIMD uses r8_path)
        let nb = qa.nb;
        let pb = if w.ty.is_packed() {
            panel_bytes(w.ty, k)
        } else {
            0
        };
        for r in r0..r1 {
            for t in 0..n {
                let (xq, ds) = (&qa.qs[t * k..(t + 1) * k], &qa.ds[t * nb..(t + 1) * nb]);
                let v = match w.ty {
                    WType::Q8_0 => scalar::q8_row(w.row(r), xq, ds),
                    WType::Q4_0 | WType::Q4_1 => scalar::q4_row(w.ty, w.row(r), xq, ds),
                    _ => {
                        scalar::r8_row(w.ty, &w.data[(r / 8) * pb..(r / 8 + 1) * pb], r % 8, xq, ds)
                    }
                };
                put(t, r, v);
            }
        }
        return;
    }
    // f32 activations
    let direct_ty: Option<u8> = match w.ty {
        WType::F32 => Some(0),
        WType::F16 => Some(1),
        WType::BF16 => Some(2),
        _ => None,
    };
    FSCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 4 * k {
            s.resize(4 * k, 0.0);
        }
        let mut r = r0;
        while r < r1 {
            let cnt = (r1 - r).min(4);
            #[cfg(target_arch = "x86_64")]
            if isa != Isa::Scalar {
                let (ptrs, ty): ([*const u8; 4], u8) = match direct_ty {
                    Some(ty) => (
                        [0, 1, 2, 3]
                            .map(|i| w.data[w.ty.row_bytes(k) * (r + i.min(cnt - 1))..].as_ptr()),
                        ty,
                    ),
                    None => {
                        for i in 0..cnt {
                            dequant_any(isa, w, r + i, &mut s[i * k..(i + 1) * k]);
                        }
                        (
                            [0, 1, 2, 3].map(|i| s[k * i.min(cnt - 1)..].as_ptr() as *const u8),
                            0,
                        )
                    }
                };
                with_simd!(isa, m => {
                    for t in 0..n {
                        let xp = x[t * k..].as_ptr();
                        let mut res = [0f32; 4];
                        unsafe {
                            match ty {
                                0 => m::fdot::<4, 0>(&ptrs, k, xp, &mut res),
                                1 => m::fdot::<4, 1>(&ptrs, k, xp, &mut res),
                                _ => m::fdot::<4, 2>(&ptrs, k, xp, &mut res),
                            }
                        }
                        for (i, &v) in res.iter().enumerate().take(cnt) {
                            put(t, r + i, v);
                        }
                    }
                });
                r += cnt;
                continue;
            }
            let _ = (direct_ty, exact);
            for i in 0..cnt {
                dequant_any(isa, w, r + i, &mut s[i * k..(i + 1) * k]);
                for t in 0..n {
                    put(
                        t,
                        r + i,
                        scalar::fdot(&s[i * k..(i + 1) * k], &x[t * k..(t + 1) * k]),
                    );
                }
            }
            r += cnt;
        }
    });
}

fn dequant_any(isa: Isa, w: &Weight, r: usize, y: &mut [f32]) {
    if w.ty.is_packed() {
        dequantize_row(w, r, y)
    } else {
        dequant_fast(isa, w.ty, w.row(r), y)
    }
}

fn dequant_fast(isa: Isa, ty: WType, src: &[u8], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: isa != Scalar implies AVX2/FMA/F16C; src holds y.len() weights (checked by the callers).
        return unsafe { avx2::dequant_row(ty, src, y) };
    }
    let _ = isa;
    dequant_row_raw(ty, src, y)
}

/// Tasks over (row groups of R8 panels) × (token ranges).
#[cfg(target_arch = "x86_64")]
fn r8_path(isa: Isa, w: &Weight, qa: &QAct, n: usize, out: &mut [f32]) {
    let rows = w.rows;
    let packed = w.ty.is_packed();
    let pty = packed_of(w.ty);
    let nb = w.cols / 32;
    let pb = panel_bytes(pty, w.cols);
    let np = rows.div_ceil(8);
    let th = threads();
    let (ngroups, ppt) = split(np, (TASK_PANEL_BYTES / pb).max(1), th);
    // too few row groups for the threads: also split the tokens
    let tq = with_simd!(isa, m => m::TQ);
    let tok_split = if ngroups >= 2 * th || th == 1 {
        1
    } else {
        (2 * th).div_ceil(ngroups).min(n.div_ceil(4 * tq)).max(1)
    };
    let tper = n.div_ceil(tok_split);
    let tsplit = n.div_ceil(tper);
    let op = OutPtr(out.as_mut_ptr());
    run_tasks(ngroups * tsplit, &|i| {
        let (g, ts) = (i / tsplit, i % tsplit);
        let (p0, p1) = (g * ppt, ((g + 1) * ppt).min(np));
        let (t0, t1) = (ts * tper, ((ts + 1) * tper).min(n));
        let valid = rows - p0 * 8;
        let run = |panels: *const u8| {
            // SAFETY: writes out[t][8·p0 .. 8·p1 ∩ rows] for t in t0..t1 only.
            unsafe {
                with_simd!(isa, m => m::r8_group(pty, panels, pb, p1 - p0, valid, nb, qa, t0, t1 - t0, op.get().add(t0 * rows + p0 * 8), rows))
            }
        };
        if packed {
            run(w.data[p0 * pb..].as_ptr());
        } else {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < (p1 - p0) * pb {
                    s.resize((p1 - p0) * pb, 0);
                }
                for p in p0..p1 {
                    pack_panel(w, p, &mut s[(p - p0) * pb..(p - p0 + 1) * pb]);
                }
                run(s.as_ptr());
            });
        }
    });
}

/// f32 panels of 16 rows × token tiles, for float / dequantized weights.
#[cfg(target_arch = "x86_64")]
fn f32_panel_path(isa: Isa, w: &Weight, x: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.rows;
    let k = w.cols;
    let np = rows.div_ceil(16);
    let pbf = 16 * k; // floats per panel
    let th = threads();
    let (ngroups, ppt) = split(np, (2 * TASK_PANEL_BYTES / (4 * pbf)).max(1), th);
    let tok_split = if ngroups >= 2 * th || th == 1 {
        1
    } else {
        (2 * th).div_ceil(ngroups).min(n.div_ceil(24)).max(1)
    };
    let tper = n.div_ceil(tok_split);
    let tsplit = n.div_ceil(tper);
    let op = OutPtr(out.as_mut_ptr());
    run_tasks(ngroups * tsplit, &|i| {
        let (g, ts) = (i / tsplit, i % tsplit);
        let (p0, p1) = (g * ppt, ((g + 1) * ppt).min(np));
        let (t0, t1) = (ts * tper, ((ts + 1) * tper).min(n));
        FSCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = (p1 - p0) * pbf + 16 * k;
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let (pan, row) = s.split_at_mut((p1 - p0) * pbf);
            for p in p0..p1 {
                let dst = &mut pan[(p - p0) * pbf..(p - p0 + 1) * pbf];
                for l in 0..16 {
                    let r = p * 16 + l;
                    if r < rows {
                        dequant_any(isa, w, r, &mut row[..k]);
                        for kk in 0..k {
                            dst[kk * 16 + l] = row[kk];
                        }
                    } else {
                        for kk in 0..k {
                            dst[kk * 16 + l] = 0.0;
                        }
                    }
                }
            }
            // SAFETY: writes out[t][16·p0 .. 16·p1 ∩ rows] for t in t0..t1 only.
            unsafe {
                with_simd!(isa, m => m::f32_group(pan.as_ptr(), k, p1 - p0, rows - p0 * 16, x[t0 * k..].as_ptr(), t1 - t0, op.get().add(t0 * rows + p0 * 16), rows))
            }
        });
    });
}

/// out[t][i] = dot(w.row(rows[i]), x[t]): only the listed output rows (e.g. a few vocabulary entries).
/// Same arithmetic as [`matmul`] for n < 3 (quantized activations for Q4_0/Q4_1/Q8_0); out is n × rows.len().
pub fn matmul_rows(w: &Weight, rows: &[usize], x: &[f32], n: usize, out: &mut [f32]) {
    w.check();
    assert!(x.len() >= n * w.cols && out.len() >= n * rows.len());
    let isa = detected_isa();
    let k = w.cols;
    let nr = rows.len();
    if n == 0 || nr == 0 {
        return;
    }
    let qa = (path_of(w.ty, false) == Path::Quant)
        .then(|| quantize_acts(isa, x, n, k, sum_kind(w.ty)));
    let op = OutPtr(out.as_mut_ptr());
    let (ntasks, per) = split(nr, 64, threads());
    run_tasks(ntasks, &|i| {
        let mut row = vec![0f32; k];
        for (j, &r) in rows
            .iter()
            .enumerate()
            .take(((i + 1) * per).min(nr))
            .skip(i * per)
        {
            assert!(r < w.rows, "row {r} out of range");
            for t in 0..n {
                let v = match &qa {
                    Some(qa) => {
                        let (xq, ds) = (
                            &qa.qs[t * k..(t + 1) * k],
                            &qa.ds[t * qa.nb..(t + 1) * qa.nb],
                        );
                        match w.ty {
                            WType::Q4_0 | WType::Q4_1 => scalar_or_simd_q4(isa, w, r, xq, ds),
                            WType::Q8_0 => scalar_or_simd_q8(isa, w, r, xq, ds),
                            _ => {
                                let pb = panel_bytes(w.ty, k);
                                scalar::r8_row(
                                    w.ty,
                                    &w.data[(r / 8) * pb..(r / 8 + 1) * pb],
                                    r % 8,
                                    xq,
                                    ds,
                                )
                            }
                        }
                    }
                    None => {
                        if t == 0 {
                            dequant_any(isa, w, r, &mut row);
                        }
                        scalar::fdot(&row, &x[t * k..(t + 1) * k])
                    }
                };
                // SAFETY: each (t, j) is written by exactly one task.
                unsafe { *op.get().add(t * nr + j) = v };
            }
        }
    });
}

fn scalar_or_simd_q4(isa: Isa, w: &Weight, r: usize, xq: &[i8], ds: &[[f32; 2]]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let mut res = [0f32];
        let rp = [w.row(r).as_ptr()];
        with_simd!(isa, m => unsafe {
            if w.ty == WType::Q4_0 {
                m::q4_direct::<1, true>(&rp, ds.len(), xq.as_ptr(), ds.as_ptr(), &mut res)
            } else {
                m::q4_direct::<1, false>(&rp, ds.len(), xq.as_ptr(), ds.as_ptr(), &mut res)
            }
        });
        return res[0];
    }
    let _ = isa;
    scalar::q4_row(w.ty, w.row(r), xq, ds)
}

fn scalar_or_simd_q8(isa: Isa, w: &Weight, r: usize, xq: &[i8], ds: &[[f32; 2]]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let mut res = [0f32];
        with_simd!(isa, m => unsafe { m::q8_direct::<1>(&[w.row(r).as_ptr()], ds.len(), xq.as_ptr(), ds.as_ptr(), &mut res) });
        return res[0];
    }
    let _ = isa;
    scalar::q8_row(w.row(r), xq, ds)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn byte(&mut self) -> u8 {
            (self.next() >> 32) as u8
        }
    }

    const ALL: [WType; 11] = [
        WType::F32,
        WType::F16,
        WType::BF16,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q8_0,
        WType::Q4K,
        WType::Q5K,
        WType::Q6K,
    ];

    fn put_h(b: &mut [u8], v: f32) {
        b[..2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }

    /// Random but well-formed weights of type `ty` (values of order 0.1).
    fn random_weight(ty: WType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let mut d = vec![0u8; ty.data_bytes(rows, cols)];
        match ty {
            WType::F32 => d
                .chunks_exact_mut(4)
                .for_each(|c| c.copy_from_slice(&(0.1 * rng.f()).to_le_bytes())),
            WType::F16 => d
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&f16::from_f32(0.1 * rng.f()).to_le_bytes())),
            WType::BF16 => d
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&bf16::from_f32(0.1 * rng.f()).to_le_bytes())),
            _ => {
                d.iter_mut().for_each(|b| *b = rng.byte());
                for blk in d.chunks_exact_mut(ty.block_bytes()) {
                    match ty {
                        WType::Q4_0 | WType::Q5_0 => put_h(blk, 0.02 * (1.0 + rng.f())),
                        WType::Q8_0 => {
                            put_h(blk, 0.001 * (1.0 + rng.f()));
                            blk[2..].iter_mut().for_each(|v| {
                                if *v == 0x80 {
                                    *v = 0x81
                                }
                            });
                        }
                        WType::Q4_1 | WType::Q5_1 => {
                            put_h(blk, 0.01 * (1.0 + rng.f()));
                            put_h(&mut blk[2..], 0.1 * rng.f());
                        }
                        WType::Q4K | WType::Q5K => {
                            put_h(blk, 0.001 * (1.0 + rng.f()));
                            put_h(&mut blk[2..], 0.001 * (1.0 + rng.f()));
                        }
                        WType::Q6K => put_h(&mut blk[208..], 0.0002 * (1.0 + rng.f())),
                        _ => unreachable!(),
                    }
                }
            }
        }
        d
    }

    fn random_x(n: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
        // mixed magnitudes per block, like real activations
        (0..n * k)
            .map(|i| rng.f() * if (i / 32) % 3 == 0 { 4.0 } else { 0.5 })
            .collect()
    }

    /// Reference: dequantize + f64 dot; also returns Σ|w·x| and the activation-quantization error scale.
    fn reference(w: &Weight, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let k = w.cols;
        let mut row = vec![0f32; k];
        let (mut r, mut a, mut q) = (
            vec![0.0; n * w.rows],
            vec![0.0; n * w.rows],
            vec![0.0; n * w.rows],
        );
        for rr in 0..w.rows {
            dequantize_row(w, rr, &mut row);
            for t in 0..n {
                let xt = &x[t * k..(t + 1) * k];
                let (mut s, mut sa, mut sq) = (0f64, 0f64, 0f64);
                for i in 0..k {
                    s += row[i] as f64 * xt[i] as f64;
                    sa += (row[i] as f64 * xt[i] as f64).abs();
                    let amax = xt[i / 32 * 32..(i / 32 * 32 + 32).min(k)]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs())) as f64;
                    sq += (row[i] as f64 * amax / 254.0).powi(2);
                }
                r[t * w.rows + rr] = s;
                a[t * w.rows + rr] = sa;
                q[t * w.rows + rr] = sq.sqrt();
            }
        }
        (r, a, q)
    }

    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    fn check_type(ty: WType, rows: usize, cols: usize, ns: &[usize], seed: u64) {
        let mut rng = Rng(seed);
        let data = random_weight(ty, rows, cols, &mut rng);
        let raw = Weight {
            ty,
            rows,
            cols,
            data: &data,
        };
        let packed = pack(&raw);
        for &n in ns {
            let x = random_x(n, cols, &mut rng);
            let (rf, ra, rq) = reference(&raw, &x, n);
            for isa in isas() {
                let mut weights = vec![(
                    raw.ty,
                    Weight {
                        ty,
                        rows,
                        cols,
                        data: &data,
                    },
                )];
                if let Some(p) = &packed {
                    weights.push((p.ty, p.as_weight()));
                }
                for (wty, w) in &weights {
                    // the scalar path on the same layout: the arithmetic every kernel reproduces
                    let mut scalar_q = vec![0f32; n * rows];
                    matmul_isa(Isa::Scalar, false, w, &x, n, &mut scalar_q);
                    for exact in [false, true] {
                        let mut o = vec![f32::NAN; n * rows];
                        matmul_isa(isa, exact, w, &x, n, &mut o);
                        let quant = !exact && path_of(*wty, false) == Path::Quant;
                        for i in 0..n * rows {
                            let err = (o[i] as f64 - rf[i]).abs();
                            let tol = if quant {
                                4.0 * rq[i] + 2e-3 * ra[i] + 1e-6
                            } else {
                                1e-5 * ra[i] + 1e-6
                            };
                            assert!(
                                err <= tol,
                                "{ty:?}/{wty:?} {isa:?} exact={exact} n={n} rows={rows} cols={cols} i={i}: got {} want {} (tol {tol})",
                                o[i],
                                rf[i]
                            );
                            if quant && matches!(ty, WType::Q4_0 | WType::Q4_1 | WType::Q5_1 | WType::Q8_0) {
                                // llama.cpp's Q4_0 / Q4_1 / Q5_1 / Q8_0 order in every kernel: the same bits as the scalar path
                                assert_eq!(
                                    o[i].to_bits(),
                                    scalar_q[i].to_bits(),
                                    "{ty:?}/{wty:?} {isa:?} n={n} i={i}: {} vs scalar {}",
                                    o[i],
                                    scalar_q[i]
                                );
                            } else if quant {
                                // same integer math as the scalar path: only float summation order differs
                                let d = (o[i] - scalar_q[i]).abs() as f64;
                                assert!(
                                    d <= 2e-6 * ra[i] + 1e-6,
                                    "{ty:?}/{wty:?} {isa:?} n={n} i={i}: {} vs scalar {}",
                                    o[i],
                                    scalar_q[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_types_match_reference() {
        for (i, ty) in [WType::Q4_0, WType::Q4_1, WType::Q5_1, WType::Q8_0]
            .into_iter()
            .enumerate()
        {
            check_type(ty, 37, 96, &[1, 2, 3, 5, 13], 11 + i as u64);
            check_type(ty, 64, 576, &[1, 4, 9], 21 + i as u64);
            check_type(ty, 5, 32, &[1, 2], 31 + i as u64); // one block, a partial panel only
            check_type(ty, 37, 64, &[100], 41 + i as u64); // few panels, many tokens: token split
        }
        check_type(WType::F16, 21, 64, &[100], 51);
    }

    #[test]
    fn other_types_match_reference() {
        for (i, ty) in ALL.into_iter().enumerate() {
            let cols = if ty.block_elems() == 256 { 512 } else { 64 };
            check_type(ty, 21, cols, &[1, 3, 7], 100 + i as u64);
        }
        check_type(WType::F32, 19, 45, &[1, 2, 6, 11], 7); // odd cols: f32 tails
        check_type(WType::F16, 33, 23, &[1, 5], 8);
    }

    #[test]
    fn activation_quantizer_scalar_equals_simd() {
        let mut rng = Rng(5);
        let x = random_x(9, 256, &mut rng);
        let a = quantize_acts(Isa::Scalar, &x, 9, 256, SumKind::Q81);
        for isa in isas() {
            let b = quantize_acts(isa, &x, 9, 256, SumKind::Q81);
            assert_eq!(a.qs, b.qs, "{isa:?}");
            assert_eq!(a.ds, b.ds, "{isa:?}");
        }
        let z = vec![0f32; 64];
        let q = quantize_acts(Isa::Scalar, &z, 1, 64, SumKind::Exact);
        assert!(q.qs.iter().all(|&v| v == 0) && q.ds.iter().all(|d| d[0] == 0.0));
    }

    #[test]
    fn packed_rows_dequantize_identically() {
        let mut rng = Rng(9);
        for ty in [WType::Q4_0, WType::Q4_1, WType::Q5_1, WType::Q8_0] {
            let rows = 19;
            let data = random_weight(ty, rows, 128, &mut rng);
            let w = Weight {
                ty,
                rows,
                cols: 128,
                data: &data,
            };
            let p = pack(&w).unwrap();
            assert_eq!(p.data.len(), p.ty.data_bytes(rows, 128));
            let (mut a, mut b) = (vec![0f32; 128], vec![0f32; 128]);
            for r in 0..rows {
                dequantize_row(&w, r, &mut a);
                dequantize_row(&p.as_weight(), r, &mut b);
                assert_eq!(a, b, "{ty:?} row {r}");
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let mut rng = Rng(3);
        for ty in [WType::Q4_0, WType::Q4_1, WType::Q5_1, WType::Q8_0, WType::F16, WType::Q6K] {
            let (rows, cols) = (200, 512);
            let data = random_weight(ty, rows, cols, &mut rng);
            let w = Weight {
                ty,
                rows,
                cols,
                data: &data,
            };
            for n in [1, 2, 7, 70] {
                let x = random_x(n, cols, &mut rng);
                let mut base = vec![0f32; n * rows];
                matmul(&w, &x, n, &mut base);
                for th in [1, 3, 2] {
                    set_threads(th);
                    let mut o = vec![0f32; n * rows];
                    matmul(&w, &x, n, &mut o);
                    assert_eq!(o, base, "{ty:?} n={n} threads={th}");
                }
            }
        }
    }

    #[test]
    fn selected_rows_match_full_matmul() {
        let mut rng = Rng(4);
        for ty in [
            WType::Q4_0,
            WType::Q4_1,
            WType::Q8_0,
            WType::F32,
            WType::Q5K,
        ] {
            let (rows, cols) = (50, 256);
            let data = random_weight(ty, rows, cols, &mut rng);
            let w = Weight {
                ty,
                rows,
                cols,
                data: &data,
            };
            let x = random_x(2, cols, &mut rng);
            let mut full = vec![0f32; 2 * rows];
            matmul(&w, &x, 2, &mut full);
            let sel = [49, 0, 7, 7, 31];
            let mut o = vec![0f32; 2 * sel.len()];
            matmul_rows(&w, &sel, &x, 2, &mut o);
            for t in 0..2 {
                for (j, &r) in sel.iter().enumerate() {
                    let (a, b) = (o[t * sel.len() + j], full[t * rows + r]);
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{ty:?} t={t} row {r}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_dequant_equals_scalar() {
        let mut rng = Rng(12);
        for ty in ALL {
            let cols = if ty.block_elems() == 256 { 512 } else { 96 }
                + if ty.block_elems() == 1 { 5 } else { 0 };
            let data = random_weight(ty, 3, cols, &mut rng);
            let w = Weight {
                ty,
                rows: 3,
                cols,
                data: &data,
            };
            for isa in isas() {
                for r in 0..3 {
                    let (mut a, mut b) = (vec![0f32; cols], vec![1f32; cols]);
                    dequant_row_raw(ty, w.row(r), &mut a);
                    dequant_fast(isa, ty, w.row(r), &mut b);
                    assert_eq!(a, b, "{ty:?} {isa:?} row {r}");
                }
            }
        }
    }

    #[test]
    fn parallel_for_runs_every_index_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(1000, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            // nested use runs inline
            parallel_for(2, &|_| {});
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn q4k_known_block() {
        // d = 1, dmin = 0.5; sub-block 0 scale 3 / min 2; all nibbles 5 → 1·3·5 − 0.5·2 = 14
        let mut blk = vec![0u8; 144];
        put_h(&mut blk, 1.0);
        put_h(&mut blk[2..], 0.5);
        blk[4] = 3;
        blk[8] = 2;
        blk[16..144].fill(0x55);
        let w = Weight {
            ty: WType::Q4K,
            rows: 1,
            cols: 256,
            data: &blk,
        };
        let mut y = vec![0f32; 256];
        dequantize_row(&w, 0, &mut y);
        assert!(y[..32].iter().all(|&v| v == 14.0), "{:?}", &y[..4]);
        assert!(y[32..].iter().all(|&v| v == 0.0));
    }
}
